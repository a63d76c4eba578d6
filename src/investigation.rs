//! The restricted investigation output: for Trust & Safety, the conversation and account ids of
//! the members of flagged clusters, on a separate Kafka topic. Off by default; explicitly opt-in.
//!
//! Everything else in clusterwatch exists so no one sees individuals; this output exists so the
//! team entitled to act on coordinated abuse can. It is kept apart accordingly: the raw account id
//! travels past the summarize stage only when this output is on, inside [`RestrictedId`] (whose
//! `Debug` hides it and which cannot be serialized anywhere but here), and ids never reach a
//! metric, a log line, an alert, the API or a snapshot — only this topic, whose access control is
//! the deployment's to set.
//!
//! What is written: when an alert on a cluster starts firing, one record per member that joined
//! the cluster within `window_secs` of event time before it (a bounded buffer per cluster); then
//! one record per member that joins while the alert fires. Buffers hold only that window, so
//! memory grows with the event rate times the window, not with the stream.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::alert::{format_event_time, AlertKind, AlertRecord, AlertStatus};
use crate::cluster::lifecycle::{LifecycleEvent, LifecycleKind};
use crate::cluster::ClusterId;
use crate::event::EventMeta;
use crate::pipeline::RecordSink;

/// `[investigation]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct InvestigationSettings {
    /// Write flagged clusters' member ids to `topic`. false.
    pub enabled: bool,
    /// The restricted topic (on the `[kafka]` cluster). Grant it to Trust & Safety only.
    pub topic: String,
    /// Members who joined this long (event time) before an alert fires are included. 3600.
    pub window_secs: i64,
    /// Members buffered per cluster at most (the oldest go first). 2000.
    pub max_members_per_cluster: usize,
}

impl Default for InvestigationSettings {
    fn default() -> Self {
        InvestigationSettings {
            enabled: false,
            topic: "clusterwatch.investigation".into(),
            window_secs: 3600,
            max_members_per_cluster: 2000,
        }
    }
}

/// A raw account id on its way to the investigation topic. Its `Debug` prints no id, and it has
/// no `Serialize`, so it cannot slip into a log line or another output by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct RestrictedId(String);

impl RestrictedId {
    pub fn new(id: &str) -> Self {
        RestrictedId(id.to_string())
    }
}

impl std::fmt::Debug for RestrictedId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestrictedId(..)")
    }
}

/// One line of the investigation topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvestigationRecord {
    pub alert_id: String,
    pub kind: AlertKind,
    pub cluster_id: ClusterId,
    pub conversation_id: String,
    pub account_id: String,
    /// RFC 3339 event time the member joined.
    pub joined: String,
    /// `window` (joined before the alert fired) or `while_firing`.
    pub reason: String,
}

/// Where investigation records go (the restricted Kafka topic; a file in replay).
pub type InvestigationSink = dyn RecordSink<InvestigationRecord>;

struct Member {
    joined_ms: i64,
    conversation_id: String,
    account_id: RestrictedId,
}

/// Recent members per cluster, and which clusters are flagged now.
pub struct InvestigationTracker {
    window_ms: i64,
    cap: usize,
    members: HashMap<ClusterId, VecDeque<Member>>,
    /// Firing alerts by cluster: their alert id and kind.
    firing: HashMap<ClusterId, (String, AlertKind)>,
}

impl InvestigationTracker {
    pub fn new(settings: &InvestigationSettings) -> Self {
        InvestigationTracker {
            window_ms: settings.window_secs.max(0).saturating_mul(1000),
            cap: settings.max_members_per_cluster.max(1),
            members: HashMap::new(),
            firing: HashMap::new(),
        }
    }

    /// An event joined `cluster`; returns its record if the cluster is flagged.
    pub fn joined(&mut self, cluster: ClusterId, meta: &EventMeta) -> Option<InvestigationRecord> {
        let account = meta.restricted_account.clone()?;
        let member = Member {
            joined_ms: meta.event_time_ms,
            conversation_id: meta.conversation_id.clone(),
            account_id: account,
        };
        if let Some((alert_id, kind)) = self.firing.get(&cluster) {
            return Some(record(alert_id, *kind, cluster, &member, "while_firing"));
        }
        let buffer = self.members.entry(cluster).or_default();
        buffer.push_back(member);
        let horizon = meta.event_time_ms - self.window_ms;
        while buffer
            .front()
            .is_some_and(|m| m.joined_ms < horizon || buffer.len() > self.cap)
        {
            buffer.pop_front();
        }
        None
    }

    /// An alert changed state; a newly firing one releases its cluster's buffered members.
    pub fn alert(&mut self, alert: &AlertRecord) -> Vec<InvestigationRecord> {
        let Some(cluster) = alert.cluster_id else {
            return Vec::new();
        };
        match alert.status {
            AlertStatus::Firing => {
                if self.firing.contains_key(&cluster) {
                    return Vec::new();
                }
                self.firing
                    .insert(cluster, (alert.alert_id.clone(), alert.kind));
                let members = self.members.remove(&cluster).unwrap_or_default();
                members
                    .iter()
                    .map(|m| record(&alert.alert_id, alert.kind, cluster, m, "window"))
                    .collect()
            }
            AlertStatus::Resolved => {
                self.firing.remove(&cluster);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Follows lifecycle changes: a dead cluster's buffer goes, a merged one's joins the survivor.
    pub fn lifecycle(&mut self, event: &LifecycleEvent) {
        match (event.event, event.into) {
            (LifecycleKind::Died, _) => {
                self.members.remove(&event.cluster_id);
                self.firing.remove(&event.cluster_id);
            }
            (LifecycleKind::Merged, Some(into)) => {
                if let Some(moved) = self.members.remove(&event.cluster_id) {
                    self.members.entry(into).or_default().extend(moved);
                }
                if let Some(flag) = self.firing.remove(&event.cluster_id) {
                    self.firing.entry(into).or_insert(flag);
                }
            }
            _ => {}
        }
    }

    /// Members buffered over all clusters (for tests and memory checks).
    pub fn buffered(&self) -> usize {
        self.members.values().map(VecDeque::len).sum()
    }
}

fn record(
    alert_id: &str,
    kind: AlertKind,
    cluster: ClusterId,
    m: &Member,
    reason: &str,
) -> InvestigationRecord {
    InvestigationRecord {
        alert_id: alert_id.to_string(),
        kind,
        cluster_id: cluster,
        conversation_id: m.conversation_id.clone(),
        account_id: m.account_id.0.clone(),
        joined: format_event_time(m.joined_ms),
        reason: reason.to_string(),
    }
}

/// Writes investigation records to the restricted Kafka topic, keyed by alert id. Deliveries are
/// awaited at every flush (the cluster stage flushes at maintenance points and at the end); a
/// failed delivery is counted and logged, without ids.
pub struct KafkaInvestigationSink {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    pending: Vec<rdkafka::producer::DeliveryFuture>,
    metrics: crate::export::Metrics,
}

/// Deliveries awaited at once at most before `write` flushes on its own.
const MAX_PENDING: usize = 1000;

impl KafkaInvestigationSink {
    pub fn new(
        kafka: &crate::config::KafkaSettings,
        settings: &InvestigationSettings,
        metrics: crate::export::Metrics,
    ) -> anyhow::Result<Self> {
        Ok(KafkaInvestigationSink {
            producer: crate::source::kafka::idempotent_producer(kafka)
                .create()
                .map_err(|e| anyhow::anyhow!("cannot create investigation producer: {e}"))?,
            topic: settings.topic.clone(),
            pending: Vec::new(),
            metrics,
        })
    }
}

impl RecordSink<InvestigationRecord> for KafkaInvestigationSink {
    fn write(&mut self, record: &InvestigationRecord) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(record)?;
        let topic = self.topic.clone();
        let mut message = rdkafka::producer::FutureRecord::to(&topic)
            .key(&record.alert_id)
            .payload(&payload);
        loop {
            match self.producer.send_result(message) {
                Ok(delivery) => {
                    self.pending.push(delivery);
                    break;
                }
                Err((e, returned)) => {
                    // The local queue is full: wait for what is in flight, then try again.
                    tracing::debug!(error = %e, "investigation producer queue full; flushing");
                    message = returned;
                    self.flush()?;
                }
            }
        }
        if self.pending.len() >= MAX_PENDING {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        for delivery in self.pending.drain(..) {
            match futures::executor::block_on(delivery) {
                Ok(Ok(_)) => self.metrics.investigation_records.inc(),
                Ok(Err((e, _))) => {
                    self.metrics
                        .stage_errors
                        .with_label_values(&["investigation"])
                        .inc();
                    tracing::error!(error = %e, topic = %self.topic, "investigation record not delivered");
                }
                Err(_) => tracing::error!(topic = %self.topic, "investigation delivery cancelled"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restricted_ids_do_not_print() {
        assert_eq!(
            format!("{:?}", RestrictedId::new("acct-secret")),
            "RestrictedId(..)"
        );
    }
}
