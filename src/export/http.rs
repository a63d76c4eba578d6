//! The HTTP endpoint: `/metrics` in Prometheus text format, `/healthz`, and `/api/clusters`
//! (the k-anonymous cluster view).
//!
//! `/healthz` answers 200 while the pipeline runs and 503 once it has stopped or failed, so a
//! Kubernetes liveness probe restarts a wedged process instead of leaving it silently stalled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::view::ClusterView;
use super::Metrics;
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

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
}

/// Binds `listen` and serves until `shutdown`. Returns the bound address (useful with port 0).
pub async fn serve(
    listen: &str,
    metrics: Metrics,
    health: Arc<Health>,
    view: Arc<ClusterView>,
    mut shutdown: Shutdown,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/api/clusters", get(clusters_handler))
        .with_state(AppState {
            metrics,
            health,
            view,
        });
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
    axum::Json(serde_json::json!({ "clusters": state.view.rows() }))
}

async fn health_handler(State(state): State<AppState>) -> impl IntoResponse {
    state.health.describe()
}
