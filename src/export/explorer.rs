//! The cluster explorer page (`/explorer`): static HTML, JavaScript and CSS compiled into the
//! binary, plus the small configuration it reads from `/api/config`.
//!
//! The page is a plain client of the JSON API, so it can only ever show what the API shows:
//! k-anonymous clusters and their alerts. Script and style are separate files, never inline,
//! so the server's Content-Security-Policy (`script-src 'self'`) holds, and the script builds
//! every label with `textContent`, never as HTML: labels come from user traffic. Embedding the
//! files keeps the binary self-contained (no asset directory to deploy) and the page offline
//! (no CDN).

use axum::http::header;
use axum::response::IntoResponse;

use crate::alert::AlertKind;

const INDEX_HTML: &str = include_str!("explorer/index.html");
const APP_JS: &str = include_str!("explorer/app.js");
const APP_CSS: &str = include_str!("explorer/app.css");

/// Grafana dashboard uids (see `grafana/dashboards/`) an alert of each kind links to: the
/// coordinated-abuse board for cluster alerts, the launch monitor for launch alerts.
pub const ABUSE_DASHBOARD_UID: &str = "clusterwatch-abuse";
pub const LAUNCH_DASHBOARD_UID: &str = "clusterwatch-launch";

pub fn dashboard_for(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::LaunchNewCluster | AlertKind::LaunchDrift => LAUNCH_DASHBOARD_UID,
        AlertKind::CoordinatedCluster | AlertKind::UnderEnforcement | AlertKind::OverRefusal => {
            ABUSE_DASHBOARD_UID
        }
    }
}

/// What `/api/config` answers: where alert links go. Behind the token like the rest of the API,
/// since it names internal hosts.
pub fn page_config(grafana_url: Option<&str>) -> serde_json::Value {
    let dashboards: serde_json::Map<String, serde_json::Value> = AlertKind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), dashboard_for(*k).into()))
        .collect();
    let titles: serde_json::Map<String, serde_json::Value> = AlertKind::ALL
        .iter()
        .map(|k| (k.as_str().to_string(), k.title().into()))
        .collect();
    serde_json::json!({
        "grafana_url": grafana_url,
        "dashboards": dashboards,
        "alert_titles": titles,
    })
}

pub async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_has_no_inline_code_and_the_script_never_writes_html() {
        // The CSP would block inline script anyway; this catches it before a browser does.
        for (i, _) in INDEX_HTML.match_indices("<script") {
            let tag = &INDEX_HTML[i..i + INDEX_HTML[i..].find('>').unwrap()];
            assert!(tag.contains("src="), "inline script in index.html: {tag}");
        }
        assert!(!INDEX_HTML.contains("<style"), "inline style in index.html");
        assert!(
            !INDEX_HTML.contains(" style="),
            "style attribute in index.html"
        );
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        // Labels come from user traffic: no API that parses a string as markup or code.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "setAttribute('style'",
        ] {
            assert!(!APP_JS.contains(sink), "app.js uses {sink}");
        }
    }

    #[test]
    fn every_alert_kind_links_to_a_dashboard() {
        let config = page_config(Some("https://grafana.example"));
        for kind in AlertKind::ALL {
            assert!(config["dashboards"][kind.as_str()]
                .as_str()
                .is_some_and(|uid| uid.starts_with("clusterwatch-")));
        }
    }
}
