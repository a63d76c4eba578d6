//! libFuzzer target for the HTTP API (`/api/*`, `/metrics`, `/healthz`, `/explorer`), driven
//! in-process through the production `Router` with `tower::ServiceExt::oneshot`: no socket, so
//! millions of requests per minute reach the routing, auth middleware, path extraction and
//! handlers exactly as hyper would hand them over.
//!
//! The input is a raw, HTTP/1-like request so the corpus stays readable and easy to seed:
//!
//! ```text
//! METHOD TARGET            (TARGET: path and optional ?query)
//! Name: value              (zero or more header lines, e.g. Authorization: Bearer fuzz-token)
//!                          (blank line)
//! body bytes...
//! ```
//!
//! Inputs the `http` crate refuses to build (a bad method, URI or header) are skipped: hyper
//! refuses them before axum sees them. Beyond "no panic", every response must carry the security
//! headers, and `/api/*` without the bearer token must never answer 2xx or leak cluster data.

#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Request};
use axum::Router;
use clusterwatch::export::clusters::ClusterTable;
use clusterwatch::export::http::{router, ApiAccess, Health};
use clusterwatch::export::view::ClusterView;
use clusterwatch::export::Metrics;
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const TOKEN: &str = "fuzz-token";
/// The label of the published cluster: a secret only an authorised caller may see, and markup
/// that must come back JSON-escaped, never as HTML.
const LABEL: &str = "secret-label <img src=x onerror=alert(1)>";

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let health = Arc::new(Health::default());
        health.set_running();
        let view = Arc::new(ClusterView::default());
        view.publish(&sample_table());
        let access = ApiAccess::new(Some(TOKEN), Some("https://grafana.example")).expect("access");
        let app = router(Metrics::new(), health, view, access);
        Harness { runtime, app }
    })
}

/// Two visible clusters, so `/api/clusters/{id}` has hits as well as misses.
fn sample_table() -> ClusterTable {
    let row = |id: u64, label: &str| {
        serde_json::json!({
            "cluster_id": id, "label": label, "description": "d",
            "topic_id": 3, "topic_label": "t", "domain_id": null, "domain_label": null,
            "conversations": 40, "accounts": 30, "orgs": 5, "tightness": 0.8,
            "born": "2026-11-27T10:00:00Z", "last_seen": "2026-11-27T10:30:00Z",
            "refusal_rate": 0.1, "mean_concern": 1.5, "classifier_flag_rate": 0.0,
            "surfaces": {"api": 40}, "languages": {"en": 40}, "tasks": {"coding": 40},
            "x": 0.5, "y": -0.5
        })
    };
    serde_json::from_value(serde_json::json!({
        "event_time": "2026-11-27T10:30:00Z",
        "totals": {"events_clustered": 100, "live_clusters": 4, "visible_clusters": 2,
                   "hidden_clusters": 2, "conversations_in_hidden_clusters": 20},
        "clusters": [row(1, LABEL), row(42, "second")]
    }))
    .expect("sample table")
}

/// Splits the raw input into a request; `None` when it is not one hyper would pass on.
fn parse(data: &[u8]) -> Option<Request<Body>> {
    let (head, body) = match find(data, b"\n\n") {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|&b| b == b'\n');
    let request_line = lines.next()?;
    let space = request_line.iter().position(|&b| b == b' ')?;
    let mut builder = Request::builder()
        .method(&request_line[..space])
        .uri(&request_line[space + 1..]);
    for line in lines {
        let colon = line.iter().position(|&b| b == b':')?;
        let value = line[colon + 1..]
            .strip_prefix(b" ")
            .unwrap_or(&line[colon + 1..]);
        builder = builder.header(&line[..colon], value);
    }
    builder.body(Body::from(body.to_vec())).ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn admitted(request: &Request<Body>) -> bool {
    request
        .headers()
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(|v| {
            v.to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .is_some_and(|(scheme, t)| {
                    scheme.eq_ignore_ascii_case("bearer") && t.trim() == TOKEN
                })
        })
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = parse(data) else {
        return;
    };
    let h = harness();
    let is_api = request.uri().path().starts_with("/api/");
    let admitted = admitted(&request);
    let app = h.app.clone();
    let (parts, body) = h.runtime.block_on(async move {
        let response = app.oneshot(request).await.expect("router is infallible");
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("body");
        (parts, body)
    });
    for name in [
        header::X_CONTENT_TYPE_OPTIONS,
        header::X_FRAME_OPTIONS,
        header::CONTENT_SECURITY_POLICY,
        header::REFERRER_POLICY,
    ] {
        assert!(parts.headers.contains_key(&name), "missing {name}");
    }
    if is_api && !admitted {
        assert!(
            !parts.status.is_success(),
            "unauthorised /api answered {}",
            parts.status
        );
        assert!(
            find(&body, b"secret-label").is_none(),
            "unauthorised /api leaked a label"
        );
    }
    // A label may only leave inside JSON (served as such, with nosniff), never in a page that a
    // browser would parse as HTML.
    if find(&body, b"<img src=x").is_some() {
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        assert!(
            content_type.is_some_and(|v| v.as_bytes().starts_with(b"application/json")),
            "label served as {content_type:?}"
        );
    }
});
