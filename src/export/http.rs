//! The HTTP endpoint: `/metrics` in Prometheus text format, `/healthz`, the k-anonymous JSON API
//! (`/api/clusters`, `/api/clusters/{id}`, `/api/alerts`, `/api/config`) and the cluster explorer
//! page (`/explorer`) that reads it.
//!
//! `/healthz` answers 200 while the pipeline runs and 503 once it has stopped or failed, so a
//! Kubernetes liveness probe restarts a wedged process instead of leaving it silently stalled.
//!
//! With a bearer token configured (`[http] api_token_file`), every `/api/*` request must present
//! it; `/metrics` and `/healthz` stay open because Prometheus and the kubelet scrape them, and they
//! carry no per-cluster data. The page itself is static and holds no data, so it is open too: it
//! asks for the token and sends it to the API. Every response carries security headers (a strict
//! Content-Security-Policy among them), because the page shows labels derived from user traffic
//! and must never let one run as code.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};

use super::explorer;
use super::view::ClusterView;
use super::Metrics;
use crate::config::HttpSettings;
use crate::shutdown::Shutdown;

/// Coarse pipeline health shared with the HTTP server.
#[derive(Debug, Default)]
pub struct Health {
    state: AtomicU8,
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

impl Health {
    pub fn set_running(&self) {
        self.state.store(RUNNING, Ordering::SeqCst);
    }
    pub fn set_stopped(&self) {
        self.state.store(STOPPED, Ordering::SeqCst);
    }
    fn describe(&self) -> (StatusCode, &'static str) {
        match self.state.load(Ordering::SeqCst) {
            RUNNING => (StatusCode::OK, "ok\n"),
            STARTING => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
            _ => (StatusCode::SERVICE_UNAVAILABLE, "stopped\n"),
        }
    }
}

/// Who may read `/api/*`, and what the page links to.
#[derive(Clone, Default)]
pub struct ApiAccess {
    /// The bearer token `/api/*` requires; `None` leaves the API open.
    token: Option<Arc<str>>,
    /// Grafana's base URL (no trailing slash), for the page's alert links.
    grafana_url: Option<String>,
}

// By hand, so the token never reaches a log line through `{:?}`.
impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("grafana_url", &self.grafana_url)
            .finish()
    }
}

impl ApiAccess {
    /// `token`: required on `/api/*` when given (and non-empty). `grafana_url`: an `http(s)` base
    /// URL for the page's alert links.
    pub fn new(token: Option<&str>, grafana_url: Option<&str>) -> anyhow::Result<Self> {
        let grafana_url = match grafana_url.map(str::trim).filter(|u| !u.is_empty()) {
            None => None,
            Some(url) => {
                let lower = url.to_ascii_lowercase();
                // The page turns it into links: anything but http(s) (`javascript:`, `data:`)
                // would be a way to run code in the page.
                if !(lower.starts_with("https://") || lower.starts_with("http://")) {
                    anyhow::bail!("[http] grafana_url must be an http:// or https:// URL");
                }
                Some(url.trim_end_matches('/').to_string())
            }
        };
        Ok(ApiAccess {
            token: token
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(Arc::from),
            grafana_url,
        })
    }

    /// Reads the token from `api_token_file`, if one is configured. A configured file that is
    /// missing, unreadable or empty is an error rather than an open API: a typo in a path must
    /// not silently publish the cluster view.
    pub fn from_settings(settings: &HttpSettings) -> anyhow::Result<Self> {
        let token = if settings.api_token_file.trim().is_empty() {
            None
        } else {
            let path = settings.api_token_file.trim();
            let content = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read [http] api_token_file {path}: {e}"))?;
            if content.trim().is_empty() {
                anyhow::bail!("[http] api_token_file {path} is empty");
            }
            Some(content)
        };
        Self::new(token.as_deref(), Some(&settings.grafana_url))
    }

    pub fn requires_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `authorization` (the header's value) presents the token. Open when none is set.
    fn admits(&self, authorization: Option<&HeaderValue>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(given) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
        else {
            return false;
        };
        constant_time_eq(token.as_bytes(), given.as_bytes())
    }
}

/// Compares in time that depends only on the expected token's length, so response timing does
/// not reveal how many leading bytes of a guess were right.
fn constant_time_eq(expected: &[u8], given: &[u8]) -> bool {
    let mut diff = u8::from(expected.len() != given.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= e ^ given.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
    access: Arc<ApiAccess>,
}

/// Binds `listen` and serves until `shutdown`, with the API open (tests and the demo). Returns
/// the bound address (useful with port 0).
pub async fn serve(
    listen: &str,
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
    shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with_access(
        listen,
        metrics,
        health,
        view,
        ApiAccess::default(),
        shutdown,
    )
    .await
}

/// Binds `listen` and serves until `shutdown`, guarding `/api/*` with `access`.
pub async fn serve_with_access(
    listen: &str,
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
    access: ApiAccess,
    mut shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    if !access.requires_token() && !addr.ip().is_loopback() {
        tracing::warn!(
            %addr,
            "the cluster API is open on a non-loopback address: set [http] api_token_file"
        );
    }
    let app = router(metrics, health, view, access);
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.recv().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    Ok((addr, handle))
}

/// The whole HTTP surface as an in-process `Router`: what `serve_with_access` binds, and what the
/// API fuzz target (fuzz/fuzz_targets/http_api.rs) drives with `oneshot` without a socket, so the
/// fuzzer exercises exactly the routes, auth and headers production serves.
pub fn router(
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
    access: ApiAccess,
) -> Router {
    let access = Arc::new(access);
    let state = AppState {
        metrics,
        health,
        view,
        access,
    };
    let api = Router::new()
        .route("/api/clusters", get(clusters_handler))
        .route("/api/clusters/{id}", get(cluster_handler))
        .route("/api/alerts", get(alerts_handler))
        .route("/api/config", get(config_handler))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/explorer", get(explorer::page))
        // Relative, so it also works behind a reverse proxy that mounts us under a prefix.
        .route(
            "/explorer/",
            get(|| async { Redirect::permanent("../explorer") }),
        )
        .route("/explorer/app.js", get(explorer::script))
        .route("/explorer/app.css", get(explorer::style))
        .merge(api)
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// The page's policy: its own script and style files only, no inline code, no framing, no
/// requests anywhere but back here. Harmless on the other responses, so it goes on all of them.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

async fn security_headers(request: Request, next: Next) -> Response {
    let is_api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if is_api {
        // Cluster data must not linger in browser or proxy caches after the tab is closed.
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if state
        .access
        .admits(request.headers().get(header::AUTHORIZATION))
    {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"clusterwatch\""),
        )],
        Json(serde_json::json!({ "error": "unauthorized: send Authorization: Bearer <token>" })),
    )
        .into_response()
}

async fn metrics_handler(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}

async fn clusters_handler(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.view.clusters())
}

/// One visible cluster. A hidden id, an unknown one and one that is not a number all get the same
/// 404, so the answer never confirms that a cluster below the privacy gate exists.
async fn cluster_handler(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    match id.parse().ok().and_then(|id| state.view.cluster(id)) {
        Some(detail) => Json(detail).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({ "error": "no such cluster" })),
        )
            .into_response(),
    }
}

async fn alerts_handler(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.view.alerts())
}

async fn config_handler(State(state): State<AppState>) -> impl IntoResponse {
    Json(explorer::page_config(state.access.grafana_url.as_deref()))
}

async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    state.health.describe()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let access = ApiAccess::new(Some(" s3cret\n"), None).unwrap();
        let admits = |v: &str| access.admits(Some(&HeaderValue::from_str(v).unwrap()));
        assert!(admits("Bearer s3cret"));
        assert!(admits("bearer s3cret"));
        assert!(!admits("Bearer s3cre"));
        assert!(!admits("Bearer s3cret2"));
        assert!(!admits("Basic s3cret"));
        assert!(!admits("s3cret"));
        assert!(!access.admits(None));
        assert!(ApiAccess::new(None, None).unwrap().admits(None));
        assert!(ApiAccess::new(Some("  "), None).unwrap().admits(None));
        assert!(!format!("{access:?}").contains("s3cret"));
    }

    #[test]
    fn grafana_url_must_be_http() {
        assert!(ApiAccess::new(None, Some("javascript:alert(1)")).is_err());
        let access = ApiAccess::new(None, Some("https://grafana.example/")).unwrap();
        assert_eq!(
            access.grafana_url.as_deref(),
            Some("https://grafana.example")
        );
        assert_eq!(ApiAccess::new(None, Some("")).unwrap().grafana_url, None);
    }

    #[test]
    fn a_configured_but_empty_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "\n").unwrap();
        let mut settings = HttpSettings {
            api_token_file: path.display().to_string(),
            ..Default::default()
        };
        assert!(ApiAccess::from_settings(&settings).is_err());
        std::fs::write(&path, "abc\n").unwrap();
        assert!(ApiAccess::from_settings(&settings)
            .unwrap()
            .requires_token());
        settings.api_token_file = dir.path().join("missing").display().to_string();
        assert!(ApiAccess::from_settings(&settings).is_err());
    }
}
