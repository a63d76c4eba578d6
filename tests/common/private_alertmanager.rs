//! A private Alertmanager rig for the sink fault tests: a real `prometheus-alertmanager` started
//! by `scripts/alertmanager.sh` under its own instance name, port and config (so a test may keep
//! it down or stop it without touching the shared one on 19193), the webhook receiver its route
//! notifies, and a recording proxy in front of its API.
//!
//! Alertmanager merges re-posts of an alert by label set, so its API cannot show whether a sender
//! posted an alert twice. The proxy can: it counts every alert clusterwatch posted, by dedup key,
//! before forwarding the request unchanged and answering with Alertmanager's own status and body.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use serde_json::Value;

/// A private Alertmanager: configured at construction, started and stopped by the test, stopped
/// (and its state directory removed) when dropped.
pub struct PrivateAlertmanager {
    instance: String,
    port: u16,
    config: PathBuf,
}

impl PrivateAlertmanager {
    /// Writes a config under `dir` that routes every alert, one group per dedup key, to
    /// `webhook_url`, sending resolves too. A 1 s group wait and interval let a test see each
    /// notification quickly; the repeat interval is an hour so that the only repeated
    /// notifications a test could see come from what the sender posted, not from Alertmanager's
    /// own reminders.
    pub fn configure(instance: &str, port: u16, webhook_url: &str, dir: &Path) -> Self {
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  resolve_timeout: 5m\n\
                 route:\n  receiver: webhook\n  group_by: ['dedup_key']\n  group_wait: 1s\n  \
                 group_interval: 1s\n  repeat_interval: 1h\n\
                 receivers:\n  - name: webhook\n    webhook_configs:\n      - url: '{webhook_url}'\n        \
                 send_resolved: true\n"
            ),
        )
        .expect("write the private Alertmanager config");
        PrivateAlertmanager {
            instance: instance.to_string(),
            port,
            config,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it and waits until `/-/ready` answers (the script wipes its state first).
    pub fn start(&self) {
        self.script("start");
    }

    pub fn stop(&self) {
        self.script("stop");
    }

    fn script(&self, command: &str) {
        let status = Command::new("bash")
            .arg(super::repo_root().join("scripts/alertmanager.sh"))
            .arg(command)
            .env("ALERTMANAGER_INSTANCE", &self.instance)
            .env("ALERTMANAGER_PORT", self.port.to_string())
            .env("ALERTMANAGER_CONFIG", &self.config)
            .status()
            .expect("run scripts/alertmanager.sh");
        assert!(status.success(), "scripts/alertmanager.sh {command} failed");
    }

    /// The alerts Alertmanager holds (`GET /api/v2/alerts`): active, silenced and inhibited.
    pub fn alerts(&self) -> Vec<Value> {
        reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client")
            .get(format!("{}/api/v2/alerts", self.url()))
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .expect("GET /api/v2/alerts")
    }
}

impl Drop for PrivateAlertmanager {
    fn drop(&mut self) {
        self.stop();
        let dir = super::repo_root().join(format!(".cache/alertmanager-{}", self.instance));
        if std::thread::panicking() {
            eprintln!(
                "the private Alertmanager's log is kept in {}",
                dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs `app` on `port` on its own thread and runtime, so it outlives any one test's runtime.
fn serve(port: u16, app: Router) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("bind 127.0.0.1:{port}: {e}"));
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            axum::serve(listener, app).await
        })
    });
}

/// Serves `POST /hook` on `port`, keeping every notification body (Alertmanager's webhook
/// payload, version 4).
pub fn serve_webhook(port: u16) -> Arc<Mutex<Vec<Value>>> {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(received): State<Arc<Mutex<Vec<Value>>>>, body: axum::Json<Value>| async move {
                    received.lock().unwrap().push(body.0);
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    serve(port, app);
    received
}

/// The dedup keys of the firing alerts in webhook notifications, with how many notifications
/// named each.
pub fn notified_firing(notifications: &[Value]) -> BTreeMap<String, usize> {
    let mut keys = BTreeMap::new();
    for n in notifications {
        for alert in n["alerts"].as_array().into_iter().flatten() {
            if alert["status"] == "firing" {
                if let Some(key) = alert["labels"]["dedup_key"].as_str() {
                    *keys.entry(key.to_string()).or_insert(0) += 1;
                }
            }
        }
    }
    keys
}

/// One alert a sender posted through the proxy.
#[derive(Debug, Clone)]
pub struct Posted {
    pub dedup_key: String,
    /// Whether it carried `endsAt` (a resolve).
    pub resolved: bool,
    /// Alertmanager's answer to the request it came in.
    pub status: u16,
}

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    posted: Arc<Mutex<Vec<Posted>>>,
}

/// Serves `POST /api/v2/alerts` on `port`, forwarding each request to `upstream` (an
/// Alertmanager base URL) and recording every alert in it.
pub fn serve_recording_proxy(port: u16, upstream: &str) -> Arc<Mutex<Vec<Posted>>> {
    let proxy = Proxy {
        upstream: format!("{}/api/v2/alerts", upstream.trim_end_matches('/')),
        client: reqwest::Client::new(),
        posted: Arc::default(),
    };
    let posted = proxy.posted.clone();
    serve(
        port,
        Router::new()
            .route("/api/v2/alerts", post(forward))
            .with_state(proxy),
    );
    posted
}

async fn forward(State(proxy): State<Proxy>, body: Bytes) -> (StatusCode, Bytes) {
    let answer = proxy
        .client
        .post(&proxy.upstream)
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await;
    let (status, reply) = match answer {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.bytes().await.unwrap_or_default())
        }
        Err(_) => (StatusCode::BAD_GATEWAY.as_u16(), Bytes::new()),
    };
    let alerts: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
    proxy
        .posted
        .lock()
        .unwrap()
        .extend(alerts.iter().map(|a| Posted {
            dedup_key: a["labels"]["dedup_key"].as_str().unwrap_or("").to_string(),
            resolved: a.get("endsAt").is_some(),
            status,
        }));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        reply,
    )
}
