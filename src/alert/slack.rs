//! Posts alerts to a Slack channel through an incoming webhook, for teams that want alerts in
//! chat without routing them through Alertmanager.
//!
//! Each firing, escalation and resolve is one message: `text` (the notification and fallback
//! line) and Block Kit `blocks` — a header with the state and kind, a section with the headline
//! and fields (kind, severity, status, cluster/surface, label, key figures), and a context line
//! with the event time and dedup key. Pending records are not posted, nor the resolve of an alert
//! the channel never saw fire. Only aggregates and the audited label are posted.
//!
//! The webhook URL is a credential (anyone holding it can post to the channel), so it is read from
//! the environment variable named by `alerts.slack.webhook_url_env`, is never written to config,
//! the spool, logs or errors, and the sink is off while that setting is empty.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::delivery::{
    self, truncate_chars, AdmitAnnounced, DeliveryError, QueuedSink, SpoolInfo, Transport,
};
use super::sinks::AlertSink;
use super::spool::{Entry, Policy};
use super::{AlertRecord, AlertStats, AlertStatus, Severity};
use crate::config::AlertSettings;
use crate::export::Metrics;

const SINK: &str = "slack";

/// `[alerts.slack]`: the Slack incoming-webhook sink.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SlackSettings {
    /// Name of the environment variable holding the webhook URL
    /// (`https://hooks.slack.com/services/...`); empty turns the sink off. "".
    pub webhook_url_env: String,
    /// Per-request timeout (connect, send and answer), in milliseconds. 10000.
    pub timeout_ms: u64,
}

impl Default for SlackSettings {
    fn default() -> Self {
        SlackSettings {
            webhook_url_env: String::new(),
            timeout_ms: 10_000,
        }
    }
}

impl SlackSettings {
    pub fn enabled(&self) -> bool {
        !self.webhook_url_env.is_empty()
    }
}

/// The Slack sink: a [`QueuedSink`] posting Block Kit messages.
pub struct SlackSink(QueuedSink);

impl SlackSink {
    /// Reads the webhook URL from `alerts.slack.webhook_url_env`; fails if it is not set.
    pub fn new(settings: &AlertSettings, metrics: Metrics) -> anyhow::Result<Self> {
        let var = &settings.slack.webhook_url_env;
        let url = match std::env::var(var) {
            Ok(url) if !url.trim().is_empty() => url.trim().to_string(),
            _ => anyhow::bail!(
                "alerts.slack.webhook_url_env names {var}, which is not set (set it to the \
                 incoming-webhook URL, or set webhook_url_env = \"\" to turn the Slack sink off)"
            ),
        };
        Self::with_webhook_url(url, settings, metrics)
    }

    /// A sink posting to `url` (tests; `new` is the configured path).
    pub fn with_webhook_url(
        url: String,
        settings: &AlertSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let transport = SlackTransport {
            client: delivery::http_client(settings.slack.timeout_ms)?,
            url,
        };
        Ok(SlackSink(QueuedSink::start(
            transport,
            AdmitAnnounced::new(Severity::Info),
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
impl AlertSink for SlackSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        self.0.deliver(record).await;
    }

    async fn close(&mut self) {
        self.0.close().await;
    }
}

struct SlackTransport {
    client: reqwest::Client,
    url: String,
}

#[async_trait::async_trait]
impl Transport for SlackTransport {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn send(&mut self, batch: &[Entry], _spool: &SpoolInfo) -> Result<(), DeliveryError> {
        for entry in batch {
            let message = message(&entry.record, entry.renotified);
            delivery::post_json(&self.client, &self.url, &message, |s| s.is_success()).await?;
        }
        Ok(())
    }
}

/// Block Kit limits: header text 150 characters, section text 3000, a field 2000, 10 fields.
const HEADER_MAX: usize = 150;
const SECTION_MAX: usize = 3000;
const FIELD_MAX: usize = 2000;

/// The webhook body for one record.
pub fn message(record: &AlertRecord, renotified: bool) -> Value {
    let state = match (record.status, renotified) {
        (AlertStatus::Firing, true) => "ESCALATED",
        (AlertStatus::Firing, false) => "FIRING",
        (AlertStatus::Resolved, _) => "RESOLVED",
        (AlertStatus::Pending, _) => "PENDING",
    };
    let headline = record.headline();
    let subject = match (record.cluster_id, &record.surface) {
        (Some(id), Some(s)) => format!("cluster {id} / {s}"),
        (Some(id), None) => format!("cluster {id}"),
        (None, Some(s)) => format!("surface {s}"),
        (None, None) => "all traffic".into(),
    };
    let field = |title: &str, value: &str| {
        json!({
            "type": "mrkdwn",
            "text": truncate_chars(&format!("*{title}*\n{}", escape(value)), FIELD_MAX),
        })
    };
    json!({
        "text": format!("[{state}] {headline}"),
        "blocks": [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate_chars(&format!("{state}: {}", record.kind.title()), HEADER_MAX),
                    "emoji": false,
                },
            },
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": truncate_chars(&escape(&headline), SECTION_MAX)},
                "fields": [
                    field("Kind", record.kind.as_str()),
                    field("Severity", record.severity.as_str()),
                    field("Status", record.status.as_str()),
                    field("Cluster / surface", &subject),
                    field("Label", &record.label),
                    field("Key figures", &key_figures(record).join("\n")),
                ],
            },
            {
                "type": "context",
                "elements": [{
                    "type": "mrkdwn",
                    "text": escape(&format!(
                        "event time {} · window from {} · dedup key {} · alert {}",
                        record.event_time,
                        record.window_start,
                        record.dedup_key(),
                        record.alert_id
                    )),
                }],
            },
        ],
    })
}

/// The evidence figures worth reading in a notification, one per line (aggregates only).
pub fn key_figures(record: &AlertRecord) -> Vec<String> {
    match &record.stats {
        AlertStats::Cluster(c) => vec![
            format!(
                "{} accounts in window ({} total), {:.1} accounts/min",
                c.window_accounts, c.accounts, c.accounts_per_minute
            ),
            format!(
                "{} conversations in window ({} total), {} orgs",
                c.window_conversations, c.conversations, c.orgs
            ),
            format!(
                "tightness {:.3} (z={:.1}), duplication {:.2}, template {:.2}, growth x{:.1}",
                c.tightness, c.tightness_z, c.duplication_rate, c.template_share, c.growth
            ),
            format!(
                "top account share {:.2}, concern {:.1}, refusals {:.2}, classifier flags {:.2}",
                c.top_account_share, c.mean_concern, c.refusal_rate, c.classifier_flag_rate
            ),
        ],
        AlertStats::Surface(s) => vec![
            format!(
                "JS divergence {:.3} from the {} baseline",
                s.js_divergence, s.baseline
            ),
            format!(
                "{} conversations in window, {} in the baseline",
                s.window_conversations, s.baseline_conversations
            ),
            format!(
                "concern {:.2} (baseline {:.2}), refusals {:.2} (baseline {:.2})",
                s.concern_rate, s.baseline_concern_rate, s.refusal_rate, s.baseline_refusal_rate
            ),
            format!(
                "{} new clusters since launch {}",
                s.new_clusters, s.launch_time
            ),
        ],
    }
}

/// Slack's mrkdwn treats `&`, `<` and `>` as control characters (links, mentions).
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mentions_and_links_in_a_label_are_escaped() {
        assert_eq!(
            escape("<!channel> & <http://x|y>"),
            "&lt;!channel&gt; &amp; &lt;http://x|y&gt;"
        );
    }
}
