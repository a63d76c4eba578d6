//! The k-anonymous cluster table: what `--clusters-out` writes and the demo prints.
//!
//! Only clusters that pass the privacy gate appear, with counts, facet breakdowns and an audited
//! label. Everything below the gate is folded into totals.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::alert::{format_event_time, round4};
use crate::cluster::{ClusterId, ClusterState};
use crate::privacy::PrivacyGate;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterTable {
    /// Event time the table reflects.
    pub event_time: String,
    pub totals: Totals,
    /// Gate-passing clusters, largest first.
    pub clusters: Vec<ClusterRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    pub events_clustered: u64,
    pub live_clusters: usize,
    pub visible_clusters: usize,
    pub hidden_clusters: usize,
    pub conversations_in_hidden_clusters: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterRow {
    pub cluster_id: ClusterId,
    /// The audited label: an LLM name when one is configured, c-TF-IDF keywords otherwise.
    pub label: String,
    /// The LLM's two-sentence description, when the cluster has an audited LLM name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The cluster's topic and domain as of the last hierarchy rebuild, with their audited
    /// c-TF-IDF labels (null before the first rebuild).
    pub topic_id: Option<u64>,
    pub topic_label: Option<String>,
    pub domain_id: Option<u64>,
    pub domain_label: Option<String>,
    pub conversations: u64,
    pub accounts: usize,
    pub orgs: usize,
    pub tightness: f64,
    pub born: String,
    pub last_seen: String,
    pub refusal_rate: f64,
    pub mean_concern: f64,
    pub classifier_flag_rate: f64,
    pub surfaces: BTreeMap<String, u64>,
    pub languages: BTreeMap<String, u64>,
    pub tasks: BTreeMap<String, u64>,
}

impl ClusterTable {
    pub fn build(state: &ClusterState, gate: &PrivacyGate) -> Self {
        let mut rows = Vec::new();
        let mut hidden = 0usize;
        let mut hidden_conversations = 0u64;
        for c in state.clusters() {
            if !gate.admits(c) {
                hidden += 1;
                hidden_conversations += c.count;
                continue;
            }
            let (label, description, _) = state.shown_label_of(c);
            let topic_id = state.topic_of(c.id);
            let domain_id = state.domain_of(c.id);
            rows.push(ClusterRow {
                cluster_id: c.id,
                label,
                description,
                topic_id,
                topic_label: topic_id.and_then(|t| state.shown_topic_label(t)),
                domain_id,
                domain_label: domain_id.and_then(|d| state.shown_domain_label(d)),
                conversations: c.count,
                accounts: c.accounts.count(),
                orgs: c.orgs.count(),
                tightness: round4(c.tightness()),
                born: format_event_time(c.born_ms),
                last_seen: format_event_time(c.last_seen_ms),
                refusal_rate: round4(c.refusal_rate()),
                mean_concern: round4(c.mean_concern()),
                classifier_flag_rate: round4(c.classifier_flagged as f64 / c.count.max(1) as f64),
                surfaces: c.surfaces.clone(),
                languages: c.languages.clone(),
                tasks: c.tasks.clone(),
            });
        }
        rows.sort_by(|a, b| {
            b.conversations
                .cmp(&a.conversations)
                .then(a.cluster_id.cmp(&b.cluster_id))
        });
        ClusterTable {
            event_time: format_event_time(state.watermark_ms().max(0)),
            totals: Totals {
                events_clustered: state.clustered_events(),
                live_clusters: state.live_clusters(),
                visible_clusters: rows.len(),
                hidden_clusters: hidden,
                conversations_in_hidden_clusters: hidden_conversations,
            },
            clusters: rows,
        }
    }
}
