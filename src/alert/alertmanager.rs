//! Pushes alerts to Alertmanager's v2 API (`POST /api/v2/alerts`), so Alertmanager can route them
//! to Slack or PagerDuty and apply its silences and inhibitions.
//!
//! Records go through the sink's spool and delivery worker (`delivery.rs`): an Alertmanager
//! outage, even one spanning a restart, delays alerts instead of losing them. The spool keeps only
//! the latest record per dedup key, because Alertmanager keeps only an alert's latest state;
//! up to 64 queued alerts go in one post. Pending records are skipped (Alertmanager has no
//! pending), and so is the resolve of an alert it was never told about.
//!
//! Firing alerts are re-sent every `alertmanager_resend_secs`, because Alertmanager resolves an
//! alert it has not heard of for `resolve_timeout`. The re-send set is the alerts this process
//! delivered as firing and has not resolved; it is not persisted, like the detector's state, so an
//! alert left firing by an earlier process times out in Alertmanager unless the detector fires it
//! again. Alertmanager's `startsAt`/`endsAt` are wall-clock times (it compares them with its own
//! clock): the time the record was queued, so an alert delivered late still says when it changed;
//! the alert's event times travel as annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::delivery::{self, AdmitAnnounced, DeliveryError, QueuedSink, SpoolInfo, Transport};
use super::sinks::AlertSink;
use super::spool::{Entry, Policy};
use super::{AlertRecord, AlertStatus, Severity};
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

/// RFC 3339 with milliseconds, the format Alertmanager writes.
fn wall_clock(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Alerts posted at most in one request.
const MAX_BATCH: usize = 64;

/// The Alertmanager sink: a [`QueuedSink`] with the Alertmanager transport.
pub struct AlertmanagerSink(QueuedSink);

impl AlertmanagerSink {
    pub fn new(settings: &AlertSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let transport = AlertmanagerTransport {
            client: delivery::http_client(settings.alertmanager_timeout_ms)?,
            url: format!(
                "{}/api/v2/alerts",
                settings.alertmanager_url.trim_end_matches('/')
            ),
            generator_url: settings.generator_url.clone(),
            resend_every: Duration::from_secs(settings.alertmanager_resend_secs.max(1)),
            active: BTreeMap::new(),
            metrics: metrics.clone(),
        };
        Ok(AlertmanagerSink(QueuedSink::start(
            transport,
            AdmitAnnounced::new(Severity::Info),
            Policy::LatestPerKey,
            settings,
            metrics,
        )?))
    }

    /// Records waiting for delivery.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }
}

#[async_trait::async_trait]
impl AlertSink for AlertmanagerSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        self.0.deliver(record).await;
    }

    async fn close(&mut self) {
        self.0.close().await;
    }
}

/// A firing alert as last delivered, with the wall-clock time it started.
struct Active {
    record: AlertRecord,
    starts_at: String,
}

struct AlertmanagerTransport {
    client: reqwest::Client,
    url: String,
    generator_url: String,
    resend_every: Duration,
    /// Alerts this process delivered as firing, by dedup key: the re-send set.
    active: BTreeMap<String, Active>,
    metrics: Metrics,
}

impl AlertmanagerTransport {
    fn starts_at(&self, entry: &Entry) -> String {
        self.active
            .get(&entry.record.dedup_key())
            .map(|a| a.starts_at.clone())
            .unwrap_or_else(|| wall_clock(entry.queued_ms))
    }
}

#[async_trait::async_trait]
impl Transport for AlertmanagerTransport {
    fn name(&self) -> &'static str {
        SINK
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn send(&mut self, batch: &[Entry], spool: &SpoolInfo) -> Result<(), DeliveryError> {
        let alerts: Vec<PostableAlert> = batch
            .iter()
            .map(|entry| {
                let ends_at = (entry.record.status == AlertStatus::Resolved)
                    .then(|| wall_clock(entry.queued_ms));
                to_postable(
                    &entry.record,
                    &self.starts_at(entry),
                    ends_at.as_deref(),
                    &self.generator_url,
                )
            })
            .collect();
        let result =
            delivery::post_json(&self.client, &self.url, &alerts, |s| s.is_success()).await;
        for entry in batch {
            let key = entry.record.dedup_key();
            match (&result, entry.record.status) {
                (Ok(()), AlertStatus::Firing) if !spool.from_earlier_run(entry) => {
                    let starts_at = self.starts_at(entry);
                    self.active.insert(
                        key,
                        Active {
                            record: entry.record.clone(),
                            starts_at,
                        },
                    );
                }
                // A resolve that was delivered, or refused for good, ends the re-sends.
                (Ok(()) | Err(DeliveryError::Permanent { .. }), AlertStatus::Resolved) => {
                    self.active.remove(&key);
                }
                _ => {}
            }
        }
        result
    }

    fn tick_every(&self) -> Option<Duration> {
        Some(self.resend_every)
    }

    async fn tick(&mut self) {
        if self.active.is_empty() {
            return;
        }
        let alerts: Vec<PostableAlert> = self
            .active
            .values()
            .map(|a| to_postable(&a.record, &a.starts_at, None, &self.generator_url))
            .collect();
        // One attempt: the next tick is the retry.
        if let Err(e) =
            delivery::post_json(&self.client, &self.url, &alerts, |s| s.is_success()).await
        {
            self.metrics
                .alert_delivery_failures
                .with_label_values(&[SINK])
                .inc();
            tracing::warn!(
                sink = SINK,
                error = ?e,
                alerts = alerts.len(),
                "re-sending firing alerts to Alertmanager failed; trying again next interval"
            );
        }
    }
}
