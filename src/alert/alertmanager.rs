//! Pushes alerts to Alertmanager's v2 API (`POST /api/v2/alerts`), so Alertmanager can route them
//! to Slack or PagerDuty.
//!
//! Delivery runs on its own task behind a bounded queue, so a slow Alertmanager slows the
//! pipeline rather than losing alerts. Each post is retried with exponential backoff. Firing
//! alerts are re-sent every `alertmanager_resend_secs`, because Alertmanager resolves an alert it
//! has not heard of for `resolve_timeout`, and a re-send also repairs any post that was given up
//! on. Alertmanager's `startsAt`/`endsAt` are wall-clock times (it compares them with its own
//! clock); the alert's event times travel as annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use super::sinks::AlertSink;
use super::{AlertRecord, AlertStatus};
use crate::config::AlertSettings;
use crate::export::Metrics;

const SINK: &str = "alertmanager";

/// One alert in Alertmanager's v2 `postableAlert` shape.
#[derive(Debug, Clone, Serialize)]
pub struct PostableAlert {
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: String,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<String>,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// Converts an alert record into Alertmanager's shape. `starts_at`/`ends_at` are wall-clock.
pub fn to_postable(
    record: &AlertRecord,
    starts_at: &str,
    ends_at: Option<&str>,
    generator_url: &str,
) -> PostableAlert {
    let mut labels = BTreeMap::new();
    labels.insert("alertname".into(), alert_name(record));
    labels.insert("kind".into(), record.kind.as_str().into());
    labels.insert("severity".into(), record.severity.as_str().into());
    labels.insert("service".into(), "clusterwatch".into());
    labels.insert("dedup_key".into(), record.dedup_key());
    if let Some(id) = record.cluster_id {
        labels.insert("cluster_id".into(), id.to_string());
    }
    if let Some(surface) = &record.surface {
        labels.insert("surface".into(), surface.clone());
    }
    let mut annotations = BTreeMap::new();
    annotations.insert("summary".into(), record.headline());
    annotations.insert("description".into(), super::sinks::describe(record));
    annotations.insert("label".into(), record.label.clone());
    annotations.insert("alert_id".into(), record.alert_id.clone());
    annotations.insert("window_start".into(), record.window_start.clone());
    annotations.insert("event_time".into(), record.event_time.clone());
    annotations.insert(
        "stats".into(),
        serde_json::to_string(&record.stats).unwrap_or_default(),
    );
    PostableAlert {
        labels,
        annotations,
        starts_at: starts_at.to_string(),
        ends_at: ends_at.map(str::to_string),
        generator_url: generator_url.to_string(),
    }
}

/// `coordinated_cluster` → `ClusterwatchCoordinatedCluster` (monitoring-mixin CamelCase).
fn alert_name(record: &AlertRecord) -> String {
    let mut name = String::from("Clusterwatch");
    for part in record.kind.as_str().split('_') {
        let mut chars = part.chars();
        if let Some(first) = chars.next() {
            name.extend(first.to_uppercase());
            name.push_str(chars.as_str());
        }
    }
    name
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

pub struct AlertmanagerSink {
    queue: Option<mpsc::Sender<AlertRecord>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl AlertmanagerSink {
    pub fn new(settings: &AlertSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.alertmanager_timeout_ms))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build HTTP client: {e}"))?;
        let url = format!(
            "{}/api/v2/alerts",
            settings.alertmanager_url.trim_end_matches('/')
        );
        let (tx, rx) = mpsc::channel(1024);
        let worker = tokio::spawn(worker(rx, client, url, settings.clone(), metrics));
        Ok(AlertmanagerSink {
            queue: Some(tx),
            worker: Some(worker),
        })
    }
}

#[async_trait::async_trait]
impl AlertSink for AlertmanagerSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        if let Some(queue) = &self.queue {
            if queue.send(record.clone()).await.is_err() {
                tracing::error!("Alertmanager worker stopped; alert not queued");
            }
        }
    }

    async fn close(&mut self) {
        self.queue.take();
        if let Some(worker) = self.worker.take() {
            let _ = worker.await;
        }
    }
}

/// Firing alerts as last posted, by dedup key, with the wall-clock time they started.
struct Active {
    record: AlertRecord,
    starts_at: String,
}

async fn worker(
    mut queue: mpsc::Receiver<AlertRecord>,
    client: reqwest::Client,
    url: String,
    settings: AlertSettings,
    metrics: Metrics,
) {
    let mut active: BTreeMap<String, Active> = BTreeMap::new();
    let mut resend = tokio::time::interval(Duration::from_secs(
        settings.alertmanager_resend_secs.max(1),
    ));
    resend.tick().await;
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some(record) = next else { break };
                let key = record.dedup_key();
                let alert = match record.status {
                    // Alertmanager has no notion of pending.
                    AlertStatus::Pending => continue,
                    AlertStatus::Firing => {
                        let starts_at = active
                            .get(&key)
                            .map(|a| a.starts_at.clone())
                            .unwrap_or_else(now_rfc3339);
                        let alert = to_postable(&record, &starts_at, None, &settings.generator_url);
                        active.insert(key, Active { record, starts_at });
                        alert
                    }
                    AlertStatus::Resolved => match active.remove(&key) {
                        Some(a) => to_postable(&record, &a.starts_at, Some(&now_rfc3339()), &settings.generator_url),
                        // Withdrawn while pending: Alertmanager never heard of it.
                        None => continue,
                    },
                };
                post_with_retry(&client, &url, &[alert], &settings, &metrics).await;
            }
            _ = resend.tick() => {
                if active.is_empty() {
                    continue;
                }
                let alerts: Vec<PostableAlert> = active
                    .values()
                    .map(|a| to_postable(&a.record, &a.starts_at, None, &settings.generator_url))
                    .collect();
                post_with_retry(&client, &url, &alerts, &settings, &metrics).await;
            }
        }
    }
}

async fn post_with_retry(
    client: &reqwest::Client,
    url: &str,
    alerts: &[PostableAlert],
    settings: &AlertSettings,
    metrics: &Metrics,
) {
    let mut delay = Duration::from_millis(200);
    let attempts = settings.alertmanager_max_attempts.max(1);
    for attempt in 1..=attempts {
        let result = client.post(url).json(alerts).send().await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                metrics
                    .alerts_delivered
                    .with_label_values(&[SINK])
                    .inc_by(alerts.len() as u64);
                return;
            }
            Ok(resp) => {
                metrics
                    .alert_delivery_failures
                    .with_label_values(&[SINK])
                    .inc();
                tracing::warn!(status = %resp.status(), attempt, "Alertmanager refused alerts");
            }
            Err(e) => {
                metrics
                    .alert_delivery_failures
                    .with_label_values(&[SINK])
                    .inc();
                tracing::warn!(error = %e, attempt, "Alertmanager unreachable");
            }
        }
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
    tracing::error!(
        alerts = alerts.len(),
        "giving up on this Alertmanager post; firing alerts are re-sent on the next resend tick"
    );
}
