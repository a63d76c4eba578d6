//! The online clusterer as the evaluations run it: vectors streamed through a fresh
//! `ClusterState` in seeded shuffled order, maintenance (merges) as the pipeline runs it, then
//! one hierarchy rebuild over the final micro-clusters.
//!
//! `eval clustering`, `eval multilingual` and `bench embed` all score this same path, so their
//! figures are comparable with each other.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cluster::lifecycle::{LifecycleEvent, LifecycleKind};
use crate::cluster::{Assignment, ClusterState};
use crate::config::ClusterSettings;
use crate::event::EventMeta;
use crate::summarize::Summary;

/// Where every text ended up.
pub struct OnlineRun {
    /// The state after the stream and the rebuild (topics, domains, the index).
    pub state: ClusterState,
    /// Per text (in input order): its micro-cluster after merges.
    pub micro: Vec<u64>,
    pub merges: usize,
    /// Seconds of the streaming pass alone (no rebuild).
    pub online_seconds: f64,
}

impl OnlineRun {
    /// Per text: its micro-cluster as a label.
    pub fn micro_labels(&self) -> Vec<u32> {
        self.micro.iter().map(|&id| id as u32).collect()
    }

    /// Per text: its topic.
    pub fn topic_labels(&self) -> anyhow::Result<Vec<u32>> {
        self.level(|id| self.state.topic_of(id))
    }

    /// Per text: its domain.
    pub fn domain_labels(&self) -> anyhow::Result<Vec<u32>> {
        self.level(|id| self.state.domain_of(id))
    }

    fn level(&self, group_of: impl Fn(u64) -> Option<u64>) -> anyhow::Result<Vec<u32>> {
        self.micro
            .iter()
            .map(|&id| {
                group_of(id)
                    .map(|g| g as u32)
                    .ok_or_else(|| anyhow::anyhow!("cluster {id} has no group after the rebuild"))
            })
            .collect()
    }
}

/// Streams `vectors` (rows of `dimension`) through the online clusterer in an order shuffled
/// with `seed`; every text is its own account and conversation, a second apart in event time.
pub fn cluster_online(
    settings: &ClusterSettings,
    embedder_id: &str,
    vectors: &[f32],
    dimension: usize,
    seed: u64,
) -> anyhow::Result<OnlineRun> {
    let n = vectors.len() / dimension.max(1);
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut state = ClusterState::new(settings.clone(), dimension, embedder_id);
    let summary = Summary {
        request: String::new(),
        task: "other".into(),
        language: "en".into(),
        concern: 1,
        refused: false,
    };
    let mut micro = vec![0u64; n];
    let mut merged_into: HashMap<u64, u64> = HashMap::new();
    let mut note_merges = |events: Vec<LifecycleEvent>| {
        for event in events {
            if let (LifecycleKind::Merged, Some(into)) = (event.event, event.into) {
                merged_into.insert(event.cluster_id, into);
            }
        }
    };
    let started = std::time::Instant::now();
    for (arrival, &i) in order.iter().enumerate() {
        let meta = EventMeta {
            conversation_id: String::new(),
            conversation_key: arrival as u64 + 1,
            account_key: arrival as u64 + 1,
            org_key: None,
            event_time_ms: 1_800_000_000_000 + arrival as i64 * 1000,
            surface: "chat".into(),
            classifier_flagged: false,
            template: 0,
            restricted_account: None,
        };
        let row = &vectors[i * dimension..(i + 1) * dimension];
        micro[i] = match state.assign(0, &meta, &summary, row)? {
            Assignment::Founded { cluster_id } | Assignment::Joined { cluster_id, .. } => {
                cluster_id
            }
            Assignment::Duplicate => anyhow::bail!("eval conversation keys are unique"),
        };
        // Maintenance as the pipeline runs it: merges of converged clusters (and archiving,
        // which the eval's hours of event time never trigger).
        if state.maintenance_due() {
            note_merges(state.maintain());
        }
    }
    let online_seconds = started.elapsed().as_secs_f64();
    note_merges(state.maintain());
    // Each text's cluster is where its first cluster ended up after merges.
    for id in micro.iter_mut() {
        while let Some(next) = merged_into.get(id) {
            *id = *next;
        }
    }
    state.rebuild_hierarchy();
    Ok(OnlineRun {
        state,
        micro,
        merges: merged_into.len(),
        online_seconds,
    })
}
