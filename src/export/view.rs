//! The live, k-anonymous cluster view served at `/api/clusters`.
//!
//! The cluster stage owns the state and publishes gate-passing rows here periodically; HTTP
//! handlers read concurrently. A `DashMap` lets the two sides work without one lock for the whole
//! table, so a slow API client never stalls clustering.

use dashmap::DashMap;

use super::clusters::{ClusterRow, ClusterTable};
use crate::cluster::ClusterId;

#[derive(Debug, Default)]
pub struct ClusterView {
    rows: DashMap<ClusterId, ClusterRow>,
}

impl ClusterView {
    /// Replaces the view with `table`'s rows (which already passed the privacy gate).
    pub fn publish(&self, table: &ClusterTable) {
        let keep: std::collections::HashSet<ClusterId> =
            table.clusters.iter().map(|r| r.cluster_id).collect();
        self.rows.retain(|id, _| keep.contains(id));
        for row in &table.clusters {
            self.rows.insert(row.cluster_id, row.clone());
        }
    }

    /// Rows, largest cluster first.
    pub fn rows(&self) -> Vec<ClusterRow> {
        let mut rows: Vec<ClusterRow> = self.rows.iter().map(|r| r.value().clone()).collect();
        rows.sort_by(|a, b| {
            b.conversations
                .cmp(&a.conversations)
                .then(a.cluster_id.cmp(&b.cluster_id))
        });
        rows
    }
}
