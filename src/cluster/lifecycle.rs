//! Cluster lifecycle events: born, merged into another, split from another, died (archived).
//!
//! On-call engineers follow a cluster by its id over days, so every change of identity is an
//! explicit, replayable event rather than a silent renumbering. The state records them in event
//! order; the cluster stage counts them (`clusterwatch_cluster_lifecycle_events_total{event}`) and
//! replay writes them to `--lifecycle-out`. A `died` event is the cluster's archive record: its
//! final aggregate statistics, after which nothing of it stays in memory.

use serde::{Deserialize, Serialize};

use super::ClusterId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleKind {
    Born,
    /// The cluster's centroid converged with an older cluster's, which absorbed it.
    Merged,
    /// The cluster was split off another whose members had formed two groups (`from`).
    Split,
    /// The cluster's decayed weight fell below the floor; it was archived.
    Died,
}

impl LifecycleKind {
    pub const ALL: [LifecycleKind; 4] = [
        LifecycleKind::Born,
        LifecycleKind::Merged,
        LifecycleKind::Split,
        LifecycleKind::Died,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleKind::Born => "born",
            LifecycleKind::Merged => "merged",
            LifecycleKind::Split => "split",
            LifecycleKind::Died => "died",
        }
    }
}

/// One lifecycle event. Aggregates only: counts, times and ids, never members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleEvent {
    pub event: LifecycleKind,
    pub cluster_id: ClusterId,
    /// For `merged`: the surviving (older) cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub into: Option<ClusterId>,
    /// For `split`: the cluster it was split from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<ClusterId>,
    /// Event time of the change, in milliseconds since the epoch.
    pub event_time_ms: i64,
    pub born_ms: i64,
    pub last_seen_ms: i64,
    /// Conversations and distinct accounts at the time; outputs blank them below the privacy
    /// gate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub conversations: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<usize>,
    /// For `merged`: cosine similarity of the two centroids when they merged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub similarity: Option<f32>,
}

impl LifecycleEvent {
    /// Removes the counts (for clusters below the privacy gate).
    pub fn without_counts(mut self) -> Self {
        self.conversations = None;
        self.accounts = None;
        self
    }
}
