//! Pages through PagerDuty's Events API v2 (`POST /v2/enqueue`), for on-call rotations that
//! should be woken by a coordinated campaign directly, without Alertmanager in between.
//!
//! A firing record at or above `min_severity` is a `trigger` event; its resolve is a `resolve`
//! event with the same `dedup_key` (the record's [`AlertRecord::dedup_key`]), so PagerDuty folds an
//! escalation into the open incident and closes it on resolve. Pending records and the resolve of
//! an alert that was never triggered are not sent. PagerDuty answers 202 when it accepted an
//! event; 429 and 5xx are retried, 400 (an invalid event) is dropped.
//!
//! The routing key is a credential: it is read from the environment variable named by
//! `alerts.pagerduty.routing_key_env`, added to each request at send time, and never written to
//! config, the spool or logs. The sink is off while that setting is empty.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::delivery::{
    self, truncate_chars, AdmitAnnounced, DeliveryError, QueuedSink, SpoolInfo, Transport,
};
use super::sinks::AlertSink;
use super::spool::{Entry, Policy};
use super::{AlertRecord, AlertStatus, Severity};
use crate::config::AlertSettings;
use crate::export::Metrics;

const SINK: &str = "pagerduty";

/// `[alerts.pagerduty]`: the PagerDuty Events v2 sink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PagerDutySettings {
    /// Name of the environment variable holding the integration's routing key; empty turns the
    /// sink off. "".
    pub routing_key_env: String,
    /// Events API v2 endpoint. `https://events.pagerduty.com/v2/enqueue` (EU accounts:
    /// `https://events.eu.pagerduty.com/v2/enqueue`).
    pub endpoint: String,
    /// Firing alerts below this severity do not page: `info`, `warning` or `critical`. critical.
    pub min_severity: Severity,
    /// Per-request timeout (connect, send and answer), in milliseconds. 10000.
    pub timeout_ms: u64,
}

impl Default for PagerDutySettings {
    fn default() -> Self {
        PagerDutySettings {
            routing_key_env: String::new(),
            endpoint: "https://events.pagerduty.com/v2/enqueue".into(),
            min_severity: Severity::Critical,
            timeout_ms: 10_000,
        }
    }
}

impl PagerDutySettings {
    pub fn enabled(&self) -> bool {
        !self.routing_key_env.is_empty()
    }
}

/// The PagerDuty sink: a [`QueuedSink`] sending Events v2.
pub struct PagerDutySink(QueuedSink);

impl PagerDutySink {
    /// Reads the routing key from `alerts.pagerduty.routing_key_env`; fails if it is not set.
    pub fn new(settings: &AlertSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let var = &settings.pagerduty.routing_key_env;
        let routing_key = match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => key.trim().to_string(),
            _ => anyhow::bail!(
                "alerts.pagerduty.routing_key_env names {var}, which is not set (set it to the \
                 Events v2 integration key, or set routing_key_env = \"\" to turn PagerDuty off)"
            ),
        };
        let transport = PagerDutyTransport {
            client: delivery::http_client(settings.pagerduty.timeout_ms)?,
            endpoint: settings.pagerduty.endpoint.clone(),
            routing_key,
            client_url: settings.generator_url.clone(),
        };
        Ok(PagerDutySink(QueuedSink::start(
            transport,
            AdmitAnnounced::new(settings.pagerduty.min_severity),
            Policy::KeepAll,
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
impl AlertSink for PagerDutySink {
    async fn deliver(&mut self, record: &AlertRecord) {
        self.0.deliver(record).await;
    }

    async fn close(&mut self) {
        self.0.close().await;
    }
}

struct PagerDutyTransport {
    client: reqwest::Client,
    endpoint: String,
    routing_key: String,
    client_url: String,
}

#[async_trait::async_trait]
impl Transport for PagerDutyTransport {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn send(&mut self, batch: &[Entry], _spool: &SpoolInfo) -> Result<(), DeliveryError> {
        for entry in batch {
            let Some(event) = event(&entry.record, &self.routing_key, &self.client_url) else {
                continue;
            };
            delivery::post_json(&self.client, &self.endpoint, &event, |s| {
                s == reqwest::StatusCode::ACCEPTED
            })
            .await?;
        }
        Ok(())
    }
}

/// PagerDuty's limit on `payload.summary`.
const SUMMARY_MAX: usize = 1024;

/// The Events v2 body for one record; `None` for a pending record (nothing to send).
pub fn event(record: &AlertRecord, routing_key: &str, client_url: &str) -> Option<Value> {
    let action = match record.status {
        AlertStatus::Firing => "trigger",
        AlertStatus::Resolved => "resolve",
        AlertStatus::Pending => return None,
    };
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": action,
        "dedup_key": record.dedup_key(),
    });
    if record.status == AlertStatus::Firing {
        let mut details = match serde_json::to_value(&record.stats) {
            Ok(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        details.insert("label".into(), record.label.clone().into());
        details.insert("alert_id".into(), record.alert_id.clone().into());
        details.insert("window_start".into(), record.window_start.clone().into());
        let component = match (record.cluster_id, &record.surface) {
            (Some(id), _) => format!("cluster {id}"),
            (None, Some(s)) => format!("surface {s}"),
            (None, None) => "all traffic".into(),
        };
        event["payload"] = json!({
            "summary": truncate_chars(&record.headline(), SUMMARY_MAX),
            "source": "clusterwatch",
            "severity": record.severity.as_str(),
            "timestamp": record.event_time,
            "component": component,
            "group": record.surface.as_deref().unwrap_or("all"),
            "class": record.kind.as_str(),
            "custom_details": details,
        });
        event["client"] = "clusterwatch".into();
        if !client_url.is_empty() {
            event["client_url"] = client_url.into();
        }
    }
    Some(event)
}
