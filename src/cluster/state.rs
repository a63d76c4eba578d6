//! The live cluster state: micro-clusters, their centroid index, and the de-duplication set.
//!
//! One task owns it (no locks on the hot path); outputs read copies it hands out. Every decision
//! is a function of the events and their event times, so replays reproduce ids exactly.

use std::collections::BTreeMap;

use super::clock::EventClock;
use super::dedup::SeenConversations;
use super::hierarchy::{LevelItem, TopicTracker};
use super::index::{CentroidIndex, ExactScanIndex, HnswIndex};
use super::micro::MicroCluster;
use super::ClusterId;
use crate::config::{ClusterSettings, IndexKind};
use crate::event::EventMeta;
use crate::summarize::Summary;

/// What happened to one event.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Assignment {
    Joined {
        cluster_id: ClusterId,
        similarity: f32,
    },
    Founded {
        cluster_id: ClusterId,
    },
    /// The conversation id was already in state: nothing changed.
    Duplicate,
}

impl Assignment {
    pub fn cluster_id(&self) -> Option<ClusterId> {
        match self {
            Assignment::Joined { cluster_id, .. } | Assignment::Founded { cluster_id } => {
                Some(*cluster_id)
            }
            Assignment::Duplicate => None,
        }
    }
}

/// A vector whose dimension differs from the state's: a wiring bug, never bad input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("vector has {got} dimensions, cluster state expects {expected}")]
pub struct DimensionMismatch {
    pub expected: usize,
    pub got: usize,
}

pub struct ClusterState {
    settings: ClusterSettings,
    dimension: usize,
    embedder_id: String,
    index: Box<dyn CentroidIndex>,
    clusters: BTreeMap<ClusterId, MicroCluster>,
    next_id: ClusterId,
    seen: SeenConversations,
    clock: EventClock,
    clustered_events: u64,
    expired_clusters: u64,
    topics: TopicTracker,
}

/// The live micro-clusters as items of the level above them, weighted by conversations.
pub fn micro_level<'a>(clusters: impl Iterator<Item = &'a MicroCluster>) -> Vec<LevelItem<'a>> {
    clusters
        .map(|c| LevelItem {
            id: c.id,
            centroid: &c.centroid,
            weight: c.count as f64,
        })
        .collect()
}

fn new_index(
    settings: &ClusterSettings,
    dimension: usize,
    deterministic: bool,
) -> Box<dyn CentroidIndex> {
    match settings.index {
        IndexKind::Exact => Box::new(ExactScanIndex::new(dimension)),
        IndexKind::Hnsw => Box::new(HnswIndex::new(dimension, settings.hnsw, deterministic)),
    }
}

impl ClusterState {
    pub fn new(settings: ClusterSettings, dimension: usize, embedder_id: &str) -> Self {
        ClusterState {
            seen: SeenConversations::new(settings.dedup_window_secs),
            index: new_index(&settings, dimension, true),
            settings,
            dimension,
            embedder_id: embedder_id.to_string(),
            clusters: BTreeMap::new(),
            next_id: 1,
            clock: EventClock::default(),
            clustered_events: 0,
            expired_clusters: 0,
            topics: TopicTracker::default(),
        }
    }

    /// Lets the HNSW index rebuild on a background thread and swap the graph in when ready (live
    /// mode). Off by default: builds then run inline at points fixed by the input, so a replay
    /// reproduces its clusters exactly. Call before the first event.
    pub fn with_background_index_builds(mut self) -> Self {
        self.index = new_index(&self.settings, self.dimension, false);
        self
    }

    /// Waits for background index work to catch up (benchmarks; see `CentroidIndex::settle`).
    pub fn settle_index(&mut self) {
        self.index.settle();
    }

    /// Assigns one summarized, embedded event read from source `partition`. `vector` must be
    /// unit-norm of the state's dimension.
    pub fn assign(
        &mut self,
        partition: i32,
        meta: &EventMeta,
        summary: &Summary,
        vector: &[f32],
    ) -> Result<Assignment, DimensionMismatch> {
        if vector.len() != self.dimension {
            // Refusing the event is safer than corrupting every centroid it would touch.
            return Err(DimensionMismatch {
                expected: self.dimension,
                got: vector.len(),
            });
        }
        if !self
            .seen
            .first_sighting(meta.conversation_key, meta.event_time_ms)
        {
            return Ok(Assignment::Duplicate);
        }
        let before = self.clock.now_ms();
        self.clock.observe(partition, meta.event_time_ms);
        if self.clock.now_ms() > before {
            self.seen.expire(self.clock.now_ms());
        }
        self.clustered_events += 1;
        let nearest = self.index.nearest(vector);
        Ok(match nearest {
            Some((id, similarity)) if similarity >= self.settings.join_threshold => {
                if let Some(cluster) = self.clusters.get_mut(&id) {
                    cluster.absorb(meta, summary, vector, similarity);
                    self.index.upsert(id, &cluster.centroid);
                    return Ok(Assignment::Joined {
                        cluster_id: id,
                        similarity,
                    });
                }
                // The index and the map disagree; heal by founding a fresh cluster.
                tracing::error!("centroid index referenced a missing cluster; removing it");
                self.index.remove(id);
                self.found(meta, summary, vector)
            }
            _ => self.found(meta, summary, vector),
        })
    }

    fn found(&mut self, meta: &EventMeta, summary: &Summary, vector: &[f32]) -> Assignment {
        let id = self.next_id;
        self.next_id += 1;
        let cluster = MicroCluster::found(
            id,
            meta,
            summary,
            vector,
            self.settings.distinct_cap,
            self.settings.reservoir_size,
        );
        self.index.upsert(id, &cluster.centroid);
        self.clusters.insert(id, cluster);
        Assignment::Founded { cluster_id: id }
    }

    /// Removes clusters that saw no event for `idle_secs` of event time, so memory follows live
    /// clusters rather than history. Returns how many were removed.
    pub fn expire_idle(&mut self, idle_secs: i64) -> usize {
        let cutoff = self
            .clock
            .now_ms()
            .saturating_sub(idle_secs.saturating_mul(1000));
        let dead: Vec<ClusterId> = self
            .clusters
            .values()
            .filter(|c| c.last_seen_ms < cutoff)
            .map(|c| c.id)
            .collect();
        for id in &dead {
            self.clusters.remove(id);
            self.index.remove(*id);
        }
        self.expired_clusters += dead.len() as u64;
        dead.len()
    }

    pub fn cluster(&self, id: ClusterId) -> Option<&MicroCluster> {
        self.clusters.get(&id)
    }

    pub fn cluster_mut(&mut self, id: ClusterId) -> Option<&mut MicroCluster> {
        self.clusters.get_mut(&id)
    }

    /// Live clusters in id order.
    pub fn clusters(&self) -> impl Iterator<Item = &MicroCluster> {
        self.clusters.values()
    }

    pub fn live_clusters(&self) -> usize {
        self.clusters.len()
    }

    /// Event time every source partition has reached (see [`EventClock`]).
    pub fn clock_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Latest event time seen on any partition.
    pub fn watermark_ms(&self) -> i64 {
        self.clock.max_seen_ms()
    }

    /// The source partitions this instance owns now (after a rebalance): the clock waits for
    /// each of them and no longer for any other.
    pub fn set_owned_partitions(&mut self, owned: std::collections::BTreeSet<i32>) {
        self.clock.set_owned(owned);
    }

    /// Regroups the live micro-clusters into topics, carrying topic ids over.
    pub fn rebuild_topics(&mut self) {
        let items = micro_level(self.clusters.values());
        let h = &self.settings.hierarchy;
        self.topics
            .rebuild(&items, h.topic_threshold, h.refine_rounds);
    }

    /// Whether `clustered_events` has reached the next topic rebuild point.
    pub fn topics_due(&self) -> bool {
        let every = self.settings.hierarchy.rebuild_every_events.max(1);
        self.clustered_events > 0 && self.clustered_events % every == 0
    }

    /// The topic of micro-cluster `id` as of the last rebuild.
    pub fn topic_of(&self, id: ClusterId) -> Option<u64> {
        self.topics.topic_of(id)
    }

    pub fn topic_count(&self) -> usize {
        self.topics.topics()
    }

    /// Source `partition` has delivered everything it had and all of it is clustered: it stops
    /// holding the clock back until it delivers again.
    pub fn partition_idle(&mut self, partition: i32) {
        let before = self.clock.now_ms();
        self.clock.mark_idle(partition);
        if self.clock.now_ms() > before {
            self.seen.expire(self.clock.now_ms());
        }
    }

    pub fn clustered_events(&self) -> u64 {
        self.clustered_events
    }

    pub fn expired_clusters(&self) -> u64 {
        self.expired_clusters
    }

    pub fn remembered_conversations(&self) -> usize {
        self.seen.len()
    }

    pub fn embedder_id(&self) -> &str {
        &self.embedder_id
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::embed::{hashing::HashingEmbedder, Embedder};

    pub(crate) fn meta(conv: &str, account: &str, t: i64) -> EventMeta {
        EventMeta {
            conversation_id: conv.into(),
            conversation_key: crate::event::identity_key("conversation", conv),
            account_key: crate::event::identity_key("account", account),
            org_key: None,
            event_time_ms: t,
            surface: "chat".into(),
            classifier_flagged: false,
        }
    }

    pub(crate) fn summary(text: &str) -> Summary {
        Summary {
            request: text.into(),
            task: "other".into(),
            language: "en".into(),
            concern: 1,
            refused: false,
        }
    }

    #[test]
    fn similar_requests_join_and_different_ones_found_new_clusters() {
        let e = HashingEmbedder::new(256);
        let mut s = ClusterState::new(
            ClusterSettings {
                join_threshold: 0.5,
                ..Default::default()
            },
            256,
            e.id(),
        );
        let texts = [
            "what is the weather in paris today",
            "what is the weather in paris tomorrow",
            "transfer money to my savings account now",
        ];
        let vecs = e
            .embed_batch(&texts.iter().map(|t| t.to_string()).collect::<Vec<_>>())
            .unwrap();
        let a = s
            .assign(0, &meta("c1", "a1", 1), &summary(texts[0]), &vecs[0])
            .unwrap();
        let b = s
            .assign(0, &meta("c2", "a2", 2), &summary(texts[1]), &vecs[1])
            .unwrap();
        let c = s
            .assign(0, &meta("c3", "a3", 3), &summary(texts[2]), &vecs[2])
            .unwrap();
        assert_eq!(a, Assignment::Founded { cluster_id: 1 });
        assert!(matches!(b, Assignment::Joined { cluster_id: 1, .. }));
        assert_eq!(c, Assignment::Founded { cluster_id: 2 });
        let c1 = s.cluster(1).unwrap();
        assert_eq!(c1.count, 2);
        assert_eq!(c1.accounts.count(), 2);
        assert!(c1.tightness() > 0.5 && c1.tightness() <= 1.0);
    }

    #[test]
    fn a_redelivered_conversation_is_not_counted_twice() {
        let e = HashingEmbedder::new(64);
        let mut s = ClusterState::new(ClusterSettings::default(), 64, e.id());
        let v = e.embed_batch(&["hello world".to_string()]).unwrap();
        assert!(s
            .assign(0, &meta("c1", "a1", 1), &summary("hello world"), &v[0])
            .unwrap()
            .cluster_id()
            .is_some());
        assert_eq!(
            s.assign(0, &meta("c1", "a1", 1), &summary("hello world"), &v[0])
                .unwrap(),
            Assignment::Duplicate
        );
        assert_eq!(s.clustered_events(), 1);
        assert_eq!(s.cluster(1).unwrap().count, 1);
    }

    #[test]
    fn topics_are_rebuilt_on_an_event_count_and_keep_their_ids() {
        let mut s = ClusterState::new(
            ClusterSettings {
                join_threshold: 0.99,
                hierarchy: crate::config::HierarchySettings {
                    topic_threshold: 0.9,
                    rebuild_every_events: 3,
                    ..Default::default()
                },
                ..Default::default()
            },
            2,
            "test",
        );
        let near_a = crate::cluster::index::tests::unit(&[1.0, 0.3]);
        let a = [1.0, 0.0];
        let b = [0.0, 1.0];
        s.assign(0, &meta("c1", "a1", 1), &summary("x"), &a)
            .unwrap();
        s.assign(0, &meta("c2", "a2", 2), &summary("x"), &b)
            .unwrap();
        assert!(!s.topics_due());
        s.assign(0, &meta("c3", "a3", 3), &summary("x"), &near_a)
            .unwrap();
        assert!(s.topics_due());
        s.rebuild_topics();
        let (ta, tb, tc) = (s.topic_of(1), s.topic_of(2), s.topic_of(3));
        assert!(ta.is_some() && tb.is_some());
        assert_eq!(ta, tc, "near micro-clusters share a topic");
        assert_ne!(ta, tb);
        s.rebuild_topics();
        assert_eq!(
            (s.topic_of(1), s.topic_of(2)),
            (ta, tb),
            "ids survive a rebuild"
        );
        assert_eq!(s.topic_count(), 2);
    }

    #[test]
    fn idle_clusters_expire_by_event_time() {
        let e = HashingEmbedder::new(64);
        let mut s = ClusterState::new(ClusterSettings::default(), 64, e.id());
        let v = e
            .embed_batch(&["alpha beta".to_string(), "gamma delta".to_string()])
            .unwrap();
        s.assign(0, &meta("c1", "a1", 0), &summary("alpha beta"), &v[0])
            .unwrap();
        s.assign(
            0,
            &meta("c2", "a1", 10_000_000),
            &summary("gamma delta"),
            &v[1],
        )
        .unwrap();
        assert_eq!(s.expire_idle(3600), 1);
        assert_eq!(s.live_clusters(), 1);
    }
}
