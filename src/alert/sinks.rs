//! Alert sinks: where alert state changes go. Each sink sees every record, in order.
//!
//! `StdoutSink` prints for the demo and `JsonlSink` writes the `--alerts-out` contract. The network
//! sinks — [`super::alertmanager`], [`super::slack`], [`super::pagerduty`] and [`super::kafka`] —
//! queue records in a spool and deliver them from a worker task (`delivery.rs`), so `deliver`
//! returns once the record is queued, never waiting on the network.

use std::io::Write;
use std::path::Path;

use super::{AlertRecord, AlertStats, AlertStatus};

/// Receives alert state changes. Delivery failures are the sink's to retry and count; a sink
/// never fails the pipeline.
#[async_trait::async_trait]
pub trait AlertSink: Send {
    async fn deliver(&mut self, record: &AlertRecord);
    /// Flushes and stops; called once after the last record.
    async fn close(&mut self) {}
}

/// Prints a human-readable line per state change.
pub struct StdoutSink;

#[async_trait::async_trait]
impl AlertSink for StdoutSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        println!("{}", describe(record));
    }
}

/// A one-line description for terminals and chat: counts and the audited label only.
pub fn describe(r: &AlertRecord) -> String {
    let marker = match r.status {
        AlertStatus::Pending => "PENDING ",
        AlertStatus::Firing => "FIRING  ",
        AlertStatus::Resolved => "RESOLVED",
    };
    let evidence = match &r.stats {
        AlertStats::Cluster(c) => format!(
            "{accounts} accounts / {convs} conversations, {wacc} accounts in window, \
             {apm:.1} accounts/min, tightness {tight:.3} (z={z:.1}), duplication {dup:.2}, \
             template {template:.2}, \
             growth x{growth:.1}, top account share {top:.2}, fresh accounts {fresh:.2}, \
             concern {concern:.1}, \
             refusals {refusal:.2}, classifier flags {flags:.2}, surfaces {surfaces:?}, \
             languages {languages:?}",
            accounts = c.accounts,
            convs = c.conversations,
            wacc = c.window_accounts,
            apm = c.accounts_per_minute,
            tight = c.tightness,
            z = c.tightness_z,
            dup = c.duplication_rate,
            template = c.template_share,
            growth = c.growth,
            top = c.top_account_share,
            fresh = c.fresh_account_share,
            concern = c.mean_concern,
            refusal = c.refusal_rate,
            flags = c.classifier_flag_rate,
            surfaces = c.surfaces,
            languages = c.languages,
        ),
        AlertStats::Surface(s) => format!(
            "launched {launch}, {n} conversations in window against {b} in the {base} baseline, \
             JS divergence {js:.3}, concern {c:.2} (baseline {bc:.2}), refusals {r:.2} \
             (baseline {br:.2}), {new} new clusters",
            launch = s.launch_time,
            n = s.window_conversations,
            b = s.baseline_conversations,
            base = s.baseline,
            js = s.js_divergence,
            c = s.concern_rate,
            bc = s.baseline_concern_rate,
            r = s.refusal_rate,
            br = s.baseline_refusal_rate,
            new = s.new_clusters,
        ),
    };
    format!(
        "[{marker}] {kind} severity={sev} cluster={cluster} surface={surface} at {time} \
         (window from {start}): {evidence}, label \"{label}\"",
        kind = r.kind.as_str(),
        sev = r.severity.as_str(),
        cluster = r
            .cluster_id
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        surface = r.surface.as_deref().unwrap_or("-"),
        time = r.event_time,
        start = r.window_start,
        label = r.label,
    )
}

/// Writes one JSON object per line: the `--alerts-out` contract.
pub struct JsonlSink {
    writer: std::io::BufWriter<std::fs::File>,
    path: String,
}

impl JsonlSink {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
        Ok(JsonlSink {
            writer: std::io::BufWriter::new(file),
            path: path.display().to_string(),
        })
    }
}

#[async_trait::async_trait]
impl AlertSink for JsonlSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        let line = match serde_json::to_string(record) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "alert record not serialisable");
                return;
            }
        };
        if let Err(e) = writeln!(self.writer, "{line}") {
            tracing::error!(path = %self.path, error = %e, "cannot write alert record");
        }
    }

    async fn close(&mut self) {
        if let Err(e) = self.writer.flush() {
            tracing::error!(path = %self.path, error = %e, "cannot flush alert records");
        }
    }
}
