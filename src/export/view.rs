//! The live, k-anonymous view behind `/api/*`: the cluster rows the cluster stage publishes and
//! the alert records the alert stage passes on.
//!
//! The cluster stage owns the state and publishes gate-passing rows here periodically; HTTP
//! handlers read concurrently. A `DashMap` lets the two sides work without one lock for the whole
//! table, so a slow API client never stalls clustering. Alerts arrive one state change at a time;
//! the view keeps each open alert's latest record and a bounded tail of resolved ones, because an
//! on-call reader wants what is happening now and what just ended, not the whole history.
//!
//! With `run --role cluster` every shard of the process publishes its own table; each shard's
//! publication replaces only its own rows, and the totals are summed over the shards.
//!
//! Everything here already passed the privacy gate (rows by `ClusterTable::build`, alerts by the
//! detector, which fires only for gate-passing clusters). Lookups by id answer `None` alike for a
//! cluster below the gate and one that never existed, so the API cannot tell them apart.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, RwLock};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::clusters::{ClusterRow, ClusterTable, Totals};
use crate::alert::{AlertKind, AlertRecord, AlertStatus, Severity};
use crate::cluster::ClusterId;

/// Resolved alerts kept for `/api/alerts` (newest first); older ones are in the sinks' history.
pub const RESOLVED_ALERTS_KEPT: usize = 200;

#[derive(Debug, Default)]
pub struct ClusterView {
    /// Rows with the shard that published them.
    rows: DashMap<ClusterId, (i32, ClusterRow)>,
    /// Per publishing shard, event time and totals of its last table.
    summary: RwLock<BTreeMap<i32, (String, Totals)>>,
    alerts: Mutex<AlertLog>,
}

#[derive(Debug, Default)]
struct AlertLog {
    /// Latest record of each pending or firing alert, by alert id.
    open: BTreeMap<String, AlertRecord>,
    /// Most recent resolutions first.
    resolved: VecDeque<AlertRecord>,
}

/// A row's most pressing open alert, enough to colour a map circle and badge a list entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertBadge {
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub status: AlertStatus,
}

/// A cluster row as the API serves it: the table row and its open alert, if any.
#[derive(Debug, Clone, Serialize)]
pub struct ViewRow {
    #[serde(flatten)]
    pub row: ClusterRow,
    pub alert: Option<AlertBadge>,
}

/// `GET /api/clusters`.
#[derive(Debug, Clone, Serialize)]
pub struct ClustersAnswer {
    /// Event time of the last published table; null before the first publication.
    pub event_time: Option<String>,
    pub totals: Option<Totals>,
    /// Gate-passing clusters, largest first.
    pub clusters: Vec<ViewRow>,
}

/// `GET /api/clusters/{id}`.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterDetail {
    pub cluster: ViewRow,
    /// The cluster's open alerts, then its recently resolved ones (newest first).
    pub alerts: Vec<AlertRecord>,
}

/// `GET /api/alerts`.
#[derive(Debug, Clone, Serialize)]
pub struct AlertsAnswer {
    /// Pending and firing alerts: firing first, then by severity, newest first.
    pub open: Vec<AlertRecord>,
    /// The last [`RESOLVED_ALERTS_KEPT`] resolutions, newest first.
    pub resolved: Vec<AlertRecord>,
}

impl ClusterView {
    /// Replaces the view with `table`'s rows (which already passed the privacy gate).
    pub fn publish(&self, table: &ClusterTable) {
        self.publish_shard(crate::export::gauges::WHOLE_STREAM, table);
    }

    /// Replaces `shard`'s rows with `table`'s, leaving other shards' rows alone.
    pub fn publish_shard(&self, shard: i32, table: &ClusterTable) {
        let keep: std::collections::HashSet<ClusterId> =
            table.clusters.iter().map(|r| r.cluster_id).collect();
        self.rows
            .retain(|id, (owner, _)| *owner != shard || keep.contains(id));
        for row in &table.clusters {
            self.rows.insert(row.cluster_id, (shard, row.clone()));
        }
        self.summary
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(shard, (table.event_time.clone(), table.totals.clone()));
    }

    /// A shard handed over: its rows and totals leave the view (its next owner publishes them).
    pub fn forget_shard(&self, shard: i32) {
        self.rows.retain(|_, (owner, _)| *owner != shard);
        self.summary
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&shard);
    }

    /// Takes in one alert state change (the alert stage calls this for every record).
    pub fn record_alert(&self, record: &AlertRecord) {
        let mut log = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        match record.status {
            AlertStatus::Pending | AlertStatus::Firing => {
                log.open.insert(record.alert_id.clone(), record.clone());
            }
            AlertStatus::Resolved => {
                log.open.remove(&record.alert_id);
                log.resolved.push_front(record.clone());
                log.resolved.truncate(RESOLVED_ALERTS_KEPT);
            }
        }
    }

    /// Rows, largest cluster first.
    pub fn rows(&self) -> Vec<ClusterRow> {
        let mut rows: Vec<ClusterRow> = self.rows.iter().map(|r| r.value().1.clone()).collect();
        rows.sort_by(|a, b| {
            b.conversations
                .cmp(&a.conversations)
                .then(a.cluster_id.cmp(&b.cluster_id))
        });
        rows
    }

    /// What `GET /api/clusters` answers.
    pub fn clusters(&self) -> ClustersAnswer {
        let badges = self.badges();
        let (event_time, totals) = {
            let summary = self.summary.read().unwrap_or_else(|e| e.into_inner());
            // The latest event time of any shard (RFC 3339 in one format sorts as time does).
            let event_time = summary.values().map(|(t, _)| t.clone()).max();
            let totals = (!summary.is_empty()).then(|| {
                summary.values().fold(Totals::default(), |mut sum, (_, t)| {
                    sum.events_clustered += t.events_clustered;
                    sum.live_clusters += t.live_clusters;
                    sum.visible_clusters += t.visible_clusters;
                    sum.hidden_clusters += t.hidden_clusters;
                    sum.conversations_in_hidden_clusters += t.conversations_in_hidden_clusters;
                    sum
                })
            });
            (event_time, totals)
        };
        ClustersAnswer {
            event_time,
            totals,
            clusters: self
                .rows()
                .into_iter()
                .map(|row| ViewRow {
                    alert: badges.get(&row.cluster_id).cloned(),
                    row,
                })
                .collect(),
        }
    }

    /// One visible cluster with its alerts; `None` when it is not visible, whether below the gate
    /// or unknown.
    pub fn cluster(&self, id: ClusterId) -> Option<ClusterDetail> {
        let row = self.rows.get(&id)?.value().1.clone();
        let log = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let mut open: Vec<AlertRecord> = log
            .open
            .values()
            .filter(|a| a.cluster_id == Some(id))
            .cloned()
            .collect();
        sort_open(&mut open);
        let alerts: Vec<AlertRecord> = open
            .into_iter()
            .chain(
                log.resolved
                    .iter()
                    .filter(|a| a.cluster_id == Some(id))
                    .cloned(),
            )
            .collect();
        drop(log);
        let alert = Self::badge_of(alerts.iter());
        Some(ClusterDetail {
            cluster: ViewRow { row, alert },
            alerts,
        })
    }

    /// What `GET /api/alerts` answers.
    pub fn alerts(&self) -> AlertsAnswer {
        let log = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let mut open: Vec<AlertRecord> = log.open.values().cloned().collect();
        sort_open(&mut open);
        AlertsAnswer {
            open,
            resolved: log.resolved.iter().cloned().collect(),
        }
    }

    /// Each cluster's most pressing open alert.
    fn badges(&self) -> HashMap<ClusterId, AlertBadge> {
        let log = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let mut by_cluster: HashMap<ClusterId, Vec<&AlertRecord>> = HashMap::new();
        for record in log.open.values() {
            if let Some(id) = record.cluster_id {
                by_cluster.entry(id).or_default().push(record);
            }
        }
        by_cluster
            .into_iter()
            .filter_map(|(id, records)| Some((id, Self::badge_of(records.into_iter())?)))
            .collect()
    }

    fn badge_of<'a>(records: impl Iterator<Item = &'a AlertRecord>) -> Option<AlertBadge> {
        records
            .filter(|a| a.status != AlertStatus::Resolved)
            .max_by(|a, b| {
                urgency(a)
                    .cmp(&urgency(b))
                    // Ties resolve to one alert whatever the map's order.
                    .then_with(|| b.alert_id.cmp(&a.alert_id))
            })
            .map(|a| AlertBadge {
                alert_id: a.alert_id.clone(),
                kind: a.kind,
                severity: a.severity,
                status: a.status,
            })
    }
}

/// Firing beats pending, then higher severity.
fn urgency(record: &AlertRecord) -> (bool, Severity) {
    (record.status == AlertStatus::Firing, record.severity)
}

fn sort_open(open: &mut [AlertRecord]) {
    open.sort_by(|a, b| {
        urgency(b)
            .cmp(&urgency(a))
            .then_with(|| b.event_time.cmp(&a.event_time))
            .then_with(|| a.alert_id.cmp(&b.alert_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertStats, SurfaceEvidence};

    fn record(
        id: &str,
        cluster: Option<ClusterId>,
        status: AlertStatus,
        severity: Severity,
    ) -> AlertRecord {
        AlertRecord {
            sequence: 0,
            alert_id: id.into(),
            kind: AlertKind::CoordinatedCluster,
            status,
            severity,
            cluster_id: cluster,
            surface: None,
            window_start: "2025-01-01T00:00:00Z".into(),
            event_time: "2025-01-01T00:10:00Z".into(),
            stats: AlertStats::Surface(SurfaceEvidence {
                launch_time: String::new(),
                baseline: "own".into(),
                window_conversations: 0,
                baseline_conversations: 0,
                js_divergence: 0.0,
                concern_rate: 0.0,
                baseline_concern_rate: 0.0,
                refusal_rate: 0.0,
                baseline_refusal_rate: 0.0,
                new_clusters: 0,
            }),
            label: "label".into(),
        }
    }

    #[test]
    fn open_alerts_follow_state_changes_and_resolved_ones_are_bounded() {
        let view = ClusterView::default();
        view.record_alert(&record(
            "a",
            Some(1),
            AlertStatus::Pending,
            Severity::Warning,
        ));
        view.record_alert(&record("b", Some(1), AlertStatus::Firing, Severity::Info));
        view.record_alert(&record(
            "a",
            Some(1),
            AlertStatus::Firing,
            Severity::Critical,
        ));
        let alerts = view.alerts();
        assert_eq!(alerts.open.len(), 2);
        assert_eq!(alerts.open[0].alert_id, "a", "firing critical first");
        assert_eq!(
            ClusterView::badge_of(alerts.open.iter()).map(|b| b.severity),
            Some(Severity::Critical)
        );

        view.record_alert(&record(
            "a",
            Some(1),
            AlertStatus::Resolved,
            Severity::Critical,
        ));
        let alerts = view.alerts();
        assert_eq!(alerts.open.len(), 1);
        assert_eq!(alerts.resolved.len(), 1);

        for i in 0..RESOLVED_ALERTS_KEPT + 5 {
            view.record_alert(&record(
                &format!("r{i}"),
                None,
                AlertStatus::Resolved,
                Severity::Info,
            ));
        }
        let alerts = view.alerts();
        assert_eq!(alerts.resolved.len(), RESOLVED_ALERTS_KEPT);
        assert_eq!(
            alerts.resolved[0].alert_id,
            format!("r{}", RESOLVED_ALERTS_KEPT + 4),
            "newest first"
        );
    }

    #[test]
    fn an_invisible_cluster_is_not_found_even_with_alerts() {
        let view = ClusterView::default();
        view.record_alert(&record(
            "a",
            Some(7),
            AlertStatus::Firing,
            Severity::Warning,
        ));
        assert!(view.cluster(7).is_none());
        assert!(view.cluster(8).is_none());
    }
}
