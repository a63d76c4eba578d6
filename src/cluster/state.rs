//! The live cluster state: micro-clusters, their centroid index, and the de-duplication set.
//!
//! One task owns it (no locks on the hot path); outputs read copies it hands out. Every decision
//! is a function of the events and their event times, so replays reproduce ids exactly.
//!
//! Identity is stable: an id is born once, and changes only through a recorded lifecycle event.
//! Every `maintenance_every_events` clustered events (a count, so replays agree) the state archives
//! clusters whose decayed weight fell below `archive_weight`, merges clusters whose centroids
//! converged past `merge_threshold` into the older of the two, and splits a cluster whose members
//! formed two groups too far apart to join each other. Memory follows live clusters.

use std::collections::{BTreeMap, BTreeSet};

use super::clock::EventClock;
use super::ctfidf::{ClassTerms, TermWeights};
use super::dedup::SeenConversations;
use super::hierarchy::{HierarchyBuild, HierarchyInputs, HierarchyMember, LevelItem, TopicTracker};
use super::hierarchy_job::PendingHierarchy;
use super::index::{better_of, dot, CentroidIndex, ExactScanIndex, HnswIndex};
use super::label_cache::KeywordLabels;
use super::lifecycle::{LifecycleEvent, LifecycleKind};
use super::micro::{MicroCluster, ReservoirItem};
use super::names::{
    GroupName, Level, NameBook, NameKey, NamingRequest, NamingResult, CONTRAST_GROUPS,
    SAMPLE_SUMMARIES,
};
use super::ClusterId;
use crate::config::{ClusterSettings, IndexKind};
use crate::event::EventMeta;
use crate::privacy::{audit_name, LabelVerdict, GENERIC_LABEL};
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
    /// Which accounts are fresh (first seen within the last period or two).
    account_history: super::accounts::AccountHistory,
    clock: EventClock,
    clustered_events: u64,
    topics: TopicTracker,
    /// Groups of topics, with ids tracked across rebuilds like topics.
    domains: TopicTracker,
    /// c-TF-IDF weights fitted at the last hierarchy rebuild, and the labels they gave.
    term_weights: TermWeights,
    topic_labels: BTreeMap<u64, String>,
    domain_labels: BTreeMap<u64, String>,
    /// Lifecycle events not yet taken by [`ClusterState::drain_lifecycle`] (bounded: the cluster
    /// stage drains them at every maintenance point).
    lifecycle: Vec<LifecycleEvent>,
    /// Lifecycle events so far, by kind (index of [`LifecycleKind::ALL`]).
    lifecycle_totals: [u64; 4],
    /// Clusters whose centroid moved since the last merge check.
    moved: BTreeSet<ClusterId>,
    prefetch: Prefetch,
    /// How much event time of joins each cluster keeps for the detectors' sliding windows.
    join_window_ms: i64,
    /// Audited LLM names of clusters, topics and domains (see `names.rs`).
    names: NameBook,
    /// Labels are shown only once an LLM has named or audited them ([`Self::with_llm_labels`]).
    llm_labels: bool,
    /// A hierarchy rebuild running beside the cluster stage, applied at a fixed later event
    /// count (see `hierarchy_job.rs`).
    pending_hierarchy: Option<PendingHierarchy>,
    /// Shown keyword labels, kept while their inputs are unchanged (see `label_cache.rs`).
    keyword_labels: KeywordLabels,
}

/// Joins kept for detection windows unless the pipeline says otherwise: an hour.
const DEFAULT_JOIN_WINDOW_MS: i64 = 3_600_000;

/// Below this many centroids the rows stay in cache anyway and rescoring the clusters changed
/// within a batch costs more than the shared pass saves (`bench clustering`: batch 64 measured
/// 10% slower than one at a time at 1k clusters, 2.1x faster at 10k).
const PREFETCH_MIN_CENTROIDS: usize = 4096;

/// Candidates per event to prefetch: the best unchanged one among them is exact unless all of
/// them changed meanwhile (then the event falls back to a full query).
const PREFETCH_K: usize = 4;

/// Nearest-centroid candidates computed in one batched pass for events waiting in the cluster
/// stage's queue ([`ClusterState::prefetch`]), and the clusters changed since that pass.
///
/// Exactness: an event's true nearest centroid is either one that changed since the pass (scored
/// afresh against its current centroid) or one that did not, whose prefetched score is still
/// exact; the best unchanged one is in the prefetched top-k unless all k changed.
struct Prefetch {
    lists: std::collections::VecDeque<Vec<(ClusterId, f32)>>,
    changed: std::collections::HashSet<ClusterId>,
    /// Prefetching starts at this many centroids ([`PREFETCH_MIN_CENTROIDS`]; tests lower it).
    min_centroids: usize,
}

impl Default for Prefetch {
    fn default() -> Self {
        Prefetch {
            lists: Default::default(),
            changed: Default::default(),
            min_centroids: PREFETCH_MIN_CENTROIDS,
        }
    }
}

impl Prefetch {
    fn note_changed(&mut self, id: ClusterId) {
        if !self.lists.is_empty() {
            self.changed.insert(id);
        }
    }

    fn resolve(
        &self,
        candidates: &[(ClusterId, f32)],
        vector: &[f32],
        clusters: &BTreeMap<ClusterId, MicroCluster>,
        index: &mut dyn CentroidIndex,
        floor: f32,
    ) -> Option<(ClusterId, f32)> {
        resolve_candidates(
            &Candidates {
                listed: candidates,
                k: PREFETCH_K,
                exclude: None,
                floor,
            },
            &self.changed,
            vector,
            clusters,
            index,
        )
    }
}

/// Neighbours looked up per moved cluster in a merge pass (itself, plus spares for merges made
/// earlier in the same pass).
const MERGE_CANDIDATES: usize = 4;

/// A query's candidates from a batched pass ([`CentroidIndex::top_k_batch_reaching`]).
struct Candidates<'a> {
    /// The `k` best that reached `floor`, best first.
    listed: &'a [(ClusterId, f32)],
    k: usize,
    exclude: Option<ClusterId>,
    floor: f32,
}

/// The exact nearest centroid to `vector` (other than `exclude`), when it reaches the floor,
/// given its top-`k` candidates from a batched pass and the clusters `changed` since that pass:
/// the best unchanged candidate, or a changed cluster rescored now if better; a full query when
/// every candidate is unusable. A result below the floor may come back; callers compare with
/// their threshold anyway.
///
/// A list shorter than `k` holds every centroid that reached the floor at the pass, so an
/// unchanged centroid missing from it is below the floor and cannot decide anything.
fn resolve_candidates(
    candidates: &Candidates<'_>,
    changed: &std::collections::HashSet<ClusterId>,
    vector: &[f32],
    clusters: &BTreeMap<ClusterId, MicroCluster>,
    index: &mut dyn CentroidIndex,
) -> Option<(ClusterId, f32)> {
    let exclude = candidates.exclude;
    let unchanged = candidates
        .listed
        .iter()
        .find(|(id, _)| Some(*id) != exclude && !changed.contains(id))
        .copied();
    if unchanged.is_none() && candidates.listed.len() == candidates.k {
        return index.nearest_reaching(vector, exclude, candidates.floor);
    }
    changed
        .iter()
        .filter(|id| Some(**id) != exclude)
        .filter_map(|id| clusters.get(id).map(|c| (*id, dot(&c.centroid, vector))))
        .fold(unchanged, better_of)
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
        IndexKind::Exact => Box::new(
            ExactScanIndex::new(dimension)
                .with_screen(settings.exact_screen)
                .with_prefix(settings.exact_prefix),
        ),
        IndexKind::Hnsw => Box::new(HnswIndex::new(dimension, settings.hnsw, deterministic)),
    }
}

impl ClusterState {
    pub fn new(settings: ClusterSettings, dimension: usize, embedder_id: &str) -> Self {
        ClusterState {
            seen: SeenConversations::new(settings.dedup_window_secs),
            account_history: super::accounts::AccountHistory::new(settings.fresh_account_secs),
            index: new_index(&settings, dimension, true),
            settings,
            dimension,
            embedder_id: embedder_id.to_string(),
            clusters: BTreeMap::new(),
            next_id: 1,
            clock: EventClock::default(),
            clustered_events: 0,
            topics: TopicTracker::default(),
            domains: TopicTracker::default(),
            term_weights: TermWeights::default(),
            topic_labels: BTreeMap::new(),
            domain_labels: BTreeMap::new(),
            lifecycle: Vec::new(),
            lifecycle_totals: [0; 4],
            moved: BTreeSet::new(),
            prefetch: Prefetch::default(),
            join_window_ms: DEFAULT_JOIN_WINDOW_MS,
            names: NameBook::default(),
            llm_labels: false,
            pending_hierarchy: None,
            keyword_labels: KeywordLabels::default(),
        }
    }

    /// Show a group's label only once the LLM namer (or LLM auditor) has passed it; until then,
    /// the generic label. The pipeline sets this when an LLM is configured for labels.
    pub fn with_llm_labels(mut self) -> Self {
        self.llm_labels = true;
        self
    }

    /// New clusters get ids from `base` on (if the state has not passed it already): each shard
    /// of `run --role cluster` has its own id range, so ids stay unique across shards and alert
    /// dedup keys never collide.
    pub fn with_id_base(mut self, base: ClusterId) -> Self {
        self.next_id = self.next_id.max(base);
        self
    }

    /// Keep joins for detection windows of `secs` (the pipeline passes the detector's window).
    pub fn with_join_window(mut self, secs: i64) -> Self {
        self.join_window_ms = secs.max(1).saturating_mul(1000);
        self
    }

    /// Computes nearest-centroid candidates for the next `vectors.len()` calls of
    /// [`Self::assign`], in one pass over the index when it has a batched path. The caller must
    /// then assign exactly these vectors, in this order. Results are identical to assigning
    /// without prefetching; only the memory traffic is shared.
    pub fn prefetch(&mut self, vectors: &[&[f32]]) {
        if !self.prefetch.lists.is_empty()
            || vectors.len() < 2
            || self.index.len() < self.prefetch.min_centroids
        {
            return;
        }
        if vectors.iter().any(|v| v.len() != self.dimension) {
            return;
        }
        let floor = self.settings.join_threshold;
        if let Some(lists) = self.index.top_k_batch_reaching(vectors, PREFETCH_K, floor) {
            self.prefetch.changed.clear();
            self.prefetch.lists.extend(lists);
        }
    }

    /// The state as a snapshot body reflecting source `offsets` (next offset per partition).
    pub fn to_snapshot(
        &self,
        source_topic: &str,
        offsets: std::collections::BTreeMap<i32, i64>,
    ) -> super::snapshot::SnapshotBody {
        super::snapshot::SnapshotBody {
            embedder_id: self.embedder_id.clone(),
            dimension: self.dimension,
            next_id: self.next_id,
            clustered_events: self.clustered_events,
            clusters: self.clusters.values().cloned().collect(),
            seen: self.seen.clone(),
            clock: self.clock.clone(),
            topics: self.topics.clone(),
            domains: self.domains.clone(),
            term_weights: self.term_weights.clone(),
            topic_labels: self.topic_labels.clone(),
            domain_labels: self.domain_labels.clone(),
            lifecycle_totals: self.lifecycle_totals,
            moved: self.moved.iter().copied().collect(),
            account_history: self.account_history.clone(),
            pending_lifecycle: self.lifecycle.clone(),
            pending_hierarchy: self
                .pending_hierarchy
                .as_ref()
                .map(PendingHierarchy::to_snapshot),
            detector: None,
            source_topic: source_topic.to_string(),
            offsets,
        }
    }

    /// Continues from a snapshot. Refuses one taken with another embedder or dimension: mixing
    /// vector spaces would silently corrupt every centroid.
    pub fn from_snapshot(
        settings: ClusterSettings,
        body: super::snapshot::SnapshotBody,
        dimension: usize,
        embedder_id: &str,
    ) -> anyhow::Result<Self> {
        if body.embedder_id != embedder_id || body.dimension != dimension {
            anyhow::bail!(
                "the snapshot was taken with embedder {} ({} dimensions) but this process embeds \
                 with {} ({} dimensions); start with --reset-clusters to discard the old state",
                body.embedder_id,
                body.dimension,
                embedder_id,
                dimension
            );
        }
        let mut state = ClusterState::new(settings, dimension, embedder_id);
        for cluster in body.clusters {
            state.index.upsert(cluster.id, &cluster.centroid);
            state.clusters.insert(cluster.id, cluster);
        }
        state.next_id = body.next_id;
        state.clustered_events = body.clustered_events;
        state.seen = body.seen;
        state.clock = body.clock.restored();
        state.topics = body.topics;
        state.domains = body.domains;
        state.term_weights = body.term_weights;
        state.topic_labels = body.topic_labels;
        state.domain_labels = body.domain_labels;
        state.lifecycle_totals = body.lifecycle_totals;
        state.moved = body.moved.into_iter().collect();
        state.account_history = body.account_history;
        state.lifecycle = body.pending_lifecycle;
        state.pending_hierarchy = body.pending_hierarchy.map(PendingHierarchy::restored);
        Ok(state)
    }

    fn half_life_ms(&self) -> i64 {
        self.settings.decay_half_life_secs.saturating_mul(1000)
    }

    fn record(&mut self, event: LifecycleEvent) {
        let kind = LifecycleKind::ALL
            .iter()
            .position(|k| *k == event.event)
            .expect("every kind is listed");
        self.lifecycle_totals[kind] += 1;
        self.lifecycle.push(event);
    }

    fn lifecycle_event(kind: LifecycleKind, cluster: &MicroCluster, at_ms: i64) -> LifecycleEvent {
        LifecycleEvent {
            event: kind,
            cluster_id: cluster.id,
            into: None,
            from: None,
            event_time_ms: at_ms,
            born_ms: cluster.born_ms,
            last_seen_ms: cluster.last_seen_ms,
            conversations: Some(cluster.count),
            accounts: Some(cluster.accounts.count()),
            similarity: None,
        }
    }

    /// Lets the HNSW index rebuild on a background thread and swap the graph in when ready (live
    /// mode). Off by default: builds then run inline at points fixed by the input, so a replay
    /// reproduces its clusters exactly. Call before the first event.
    pub fn with_background_index_builds(mut self) -> Self {
        self.index = new_index(&self.settings, self.dimension, false);
        for cluster in self.clusters.values() {
            self.index.upsert(cluster.id, &cluster.centroid);
        }
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
        // Every assign consumes its prefetched candidates, if any, so the queue stays aligned.
        let prefetched = self.prefetch.lists.pop_front();
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
        let fresh = self
            .account_history
            .observe(meta.account_key, meta.event_time_ms);
        // Only a cluster the event can join matters, so the index may skip every centroid
        // that provably falls short of the join threshold.
        let floor = self.settings.join_threshold;
        let nearest = match prefetched {
            Some(candidates) => self.prefetch.resolve(
                &candidates,
                vector,
                &self.clusters,
                self.index.as_mut(),
                floor,
            ),
            None => self.index.nearest_reaching(vector, None, floor),
        };
        Ok(match nearest {
            Some((id, similarity)) if similarity >= self.settings.join_threshold => {
                let half_life_ms = self.half_life_ms();
                let probe_from = u64::from(self.settings.split_min_members);
                if let Some(cluster) = self.clusters.get_mut(&id) {
                    cluster.absorb(meta, summary, vector, similarity, half_life_ms, fresh);
                    cluster.probe_for_split(probe_from);
                    self.index.upsert(id, &cluster.centroid);
                    self.prefetch.note_changed(id);
                    self.moved.insert(id);
                    return Ok(Assignment::Joined {
                        cluster_id: id,
                        similarity,
                    });
                }
                // The index and the map disagree; heal by founding a fresh cluster.
                tracing::error!("centroid index referenced a missing cluster; removing it");
                self.index.remove(id);
                self.prefetch.note_changed(id);
                self.found(meta, summary, vector, fresh)
            }
            _ => self.found(meta, summary, vector, fresh),
        })
    }

    fn found(
        &mut self,
        meta: &EventMeta,
        summary: &Summary,
        vector: &[f32],
        fresh: bool,
    ) -> Assignment {
        let id = self.next_id;
        self.next_id += 1;
        let cluster = MicroCluster::found(
            id,
            meta,
            summary,
            vector,
            self.settings.distinct_cap,
            self.settings.reservoir_size,
            fresh,
        );
        self.index.upsert(id, &cluster.centroid);
        self.prefetch.note_changed(id);
        self.record(Self::lifecycle_event(
            LifecycleKind::Born,
            &cluster,
            meta.event_time_ms,
        ));
        self.clusters.insert(id, cluster);
        Assignment::Founded { cluster_id: id }
    }

    /// Whether `clustered_events` has reached the next maintenance point.
    pub fn maintenance_due(&self) -> bool {
        let every = self.settings.maintenance_every_events.max(1);
        self.clustered_events > 0 && self.clustered_events % every == 0
    }

    /// Archives faded clusters, merges converged ones, splits diverged ones. Returns the lifecycle events since
    /// the last call (births included), in the order they happened.
    pub fn maintain(&mut self) -> Vec<LifecycleEvent> {
        self.archive_faded();
        self.merge_converged();
        self.split_diverged();
        let clusters = &self.clusters;
        self.names
            .retain(|k| k.level != Level::Cluster || clusters.contains_key(&k.id));
        self.keyword_labels
            .retain_clusters(|id| clusters.contains_key(&id));
        self.drain_lifecycle()
    }

    /// Lifecycle events recorded since the last drain.
    pub fn drain_lifecycle(&mut self) -> Vec<LifecycleEvent> {
        std::mem::take(&mut self.lifecycle)
    }

    /// Removes clusters whose decayed weight, at the event clock, is below `archive_weight`.
    /// Their `died` event is the archive record.
    fn archive_faded(&mut self) {
        let now = self.clock.now_ms();
        if now == i64::MIN {
            // The clock has not started (a partition has not reported yet): nothing has aged.
            return;
        }
        // Detection windows of clusters nobody touched lately are trimmed here, so a quiet
        // cluster does not keep its last burst of joins in memory.
        let cutoff = now.saturating_sub(self.join_window_ms);
        for c in self.clusters.values_mut() {
            c.recent.expire_before(cutoff);
        }
        let half_life_ms = self.half_life_ms();
        if half_life_ms <= 0 {
            return;
        }
        let floor = self.settings.archive_weight;
        let faded: Vec<ClusterId> = self
            .clusters
            .values()
            .filter(|c| c.weight_at(now, half_life_ms) < floor)
            .map(|c| c.id)
            .collect();
        for id in faded {
            if let Some(cluster) = self.clusters.remove(&id) {
                self.index.remove(id);
                self.prefetch.note_changed(id);
                self.moved.remove(&id);
                self.record(Self::lifecycle_event(LifecycleKind::Died, &cluster, now));
            }
        }
    }

    /// Merges every moved cluster whose nearest other centroid is at least `merge_threshold`
    /// similar into the older of the two. Ascending ids, so replays merge identically; a
    /// survivor whose centroid moved is checked again at the next maintenance.
    fn merge_converged(&mut self) {
        let threshold = self.settings.merge_threshold;
        if threshold > 1.0 {
            return;
        }
        let half_life_ms = self.half_life_ms();
        let now = self.clock.now_ms();
        let moved: Vec<ClusterId> = std::mem::take(&mut self.moved)
            .into_iter()
            .filter(|id| self.clusters.contains_key(id))
            .collect();
        // Every moved cluster's neighbours in one batched pass; a merge in this pass changes
        // (or removes) two clusters, which are then rescored, as for prefetched events.
        let batched = {
            let centroids: Vec<&[f32]> = moved
                .iter()
                .map(|id| self.clusters[id].centroid.as_slice())
                .collect();
            self.index
                .top_k_batch_reaching(&centroids, MERGE_CANDIDATES, threshold)
        };
        let mut changed: std::collections::HashSet<ClusterId> = Default::default();
        for (i, &id) in moved.iter().enumerate() {
            let Some(centroid) = self.clusters.get(&id).map(|c| c.centroid.clone()) else {
                continue;
            };
            let nearest = match &batched {
                Some(lists) if !changed.contains(&id) => resolve_candidates(
                    &Candidates {
                        listed: &lists[i],
                        k: MERGE_CANDIDATES,
                        exclude: Some(id),
                        floor: threshold,
                    },
                    &changed,
                    &centroid,
                    &self.clusters,
                    self.index.as_mut(),
                ),
                _ => self.index.nearest_reaching(&centroid, Some(id), threshold),
            };
            let Some((other, similarity)) = nearest else {
                continue;
            };
            if similarity < threshold {
                continue;
            }
            let (survivor, absorbed) = (id.min(other), id.max(other));
            let Some(gone) = self.clusters.remove(&absorbed) else {
                self.index.remove(absorbed);
                self.prefetch.note_changed(absorbed);
                continue;
            };
            self.index.remove(absorbed);
            self.prefetch.note_changed(absorbed);
            self.moved.remove(&absorbed);
            let Some(kept) = self.clusters.get_mut(&survivor) else {
                // Unreachable while index and map agree; put the cluster back rather than lose it.
                self.index.upsert(absorbed, &gone.centroid);
                self.prefetch.note_changed(absorbed);
                self.clusters.insert(absorbed, gone);
                continue;
            };
            kept.merge(&gone, half_life_ms);
            self.index.upsert(survivor, &kept.centroid);
            self.prefetch.note_changed(survivor);
            changed.extend([survivor, absorbed]);
            let mut event = Self::lifecycle_event(LifecycleKind::Merged, &gone, now);
            event.into = Some(survivor);
            event.similarity = Some(similarity);
            self.record(event);
            self.moved.insert(survivor);
        }
    }

    /// Lifecycle events so far by kind, in [`LifecycleKind::ALL`] order.
    pub fn lifecycle_totals(&self) -> [(LifecycleKind, u64); 4] {
        let t = self.lifecycle_totals;
        [
            (LifecycleKind::Born, t[0]),
            (LifecycleKind::Merged, t[1]),
            (LifecycleKind::Split, t[2]),
            (LifecycleKind::Died, t[3]),
        ]
    }

    /// Splits every cluster whose split probe found two halves that drifted apart: the smaller
    /// half becomes a new cluster (`split` event, `from` the parent), the parent keeps its id,
    /// its history and the larger half's direction.
    fn split_diverged(&mut self) {
        let min = self.settings.split_min_members;
        if min == 0 {
            return;
        }
        let max_cosine = self.settings.join_threshold;
        let now = self.clock.now_ms();
        let candidates: Vec<ClusterId> = self.clusters.keys().copied().collect();
        for parent_id in candidates {
            let Some(parent) = self.clusters.get_mut(&parent_id) else {
                continue;
            };
            let Some((centroid, members)) = parent.take_split(min, max_cosine) else {
                continue;
            };
            self.index.upsert(parent_id, &parent.centroid);
            self.prefetch.note_changed(parent_id);
            let id = self.next_id;
            self.next_id += 1;
            let at = now.max(parent.last_seen_ms);
            let child = MicroCluster::split_off(id, centroid, f64::from(members), at, parent);
            self.index.upsert(id, &child.centroid);
            self.prefetch.note_changed(id);
            let mut event = Self::lifecycle_event(LifecycleKind::Split, &child, at);
            event.from = Some(parent_id);
            self.record(event);
            self.clusters.insert(id, child);
            self.moved.insert(parent_id);
        }
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

    /// Rebuilds the levels above micro-clusters now, on this thread: topics (groups of
    /// micro-clusters) and domains (groups of topics), each carrying its ids over from the
    /// previous rebuild, then the c-TF-IDF term weights and labels. For batch evaluation; the
    /// live cluster stage uses [`Self::start_hierarchy_rebuild`].
    pub fn rebuild_hierarchy(&mut self) {
        if let Some(pending) = self.pending_hierarchy.take() {
            self.apply_hierarchy(pending.finish());
        }
        let build = self.hierarchy_inputs().build();
        self.apply_hierarchy(build);
    }

    /// Starts the rebuild due at this event count (see [`Self::topics_due`]) on a thread of its
    /// own; [`Self::apply_due_hierarchy`] applies it `apply_after_events` events later. With
    /// `apply_after_events = 0` it is built and applied here. Returns the build's duration in
    /// seconds if it was applied now.
    pub fn start_hierarchy_rebuild(&mut self) -> Option<f64> {
        if self.pending_hierarchy.is_some() {
            // Already started at this count (the event was a duplicate and did not advance it).
            return None;
        }
        let delay = self.settings.hierarchy.apply_after_events;
        let inputs = self.hierarchy_inputs();
        if delay == 0 {
            let build = inputs.build();
            let took = build.took_secs;
            self.apply_hierarchy(build);
            return Some(took);
        }
        self.pending_hierarchy = Some(PendingHierarchy::start(
            inputs,
            self.clustered_events + delay,
        ));
        None
    }

    /// Applies the background rebuild if this event count is its application point, waiting for
    /// it to finish if it has not. Returns the build's duration in seconds if one was applied.
    pub fn apply_due_hierarchy(&mut self) -> Option<f64> {
        let due = self
            .pending_hierarchy
            .as_ref()
            .is_some_and(|p| p.apply_at() <= self.clustered_events);
        if !due {
            return None;
        }
        let build = self.pending_hierarchy.take()?.finish();
        let took = build.took_secs;
        self.apply_hierarchy(build);
        Some(took)
    }

    /// Whether a background rebuild is still running: a snapshot now would wait for it, so the
    /// periodic snapshot waits for the next event instead.
    pub fn hierarchy_in_flight(&self) -> bool {
        self.pending_hierarchy
            .as_ref()
            .is_some_and(PendingHierarchy::in_flight)
    }

    /// What a rebuild reads, copied out of the state.
    fn hierarchy_inputs(&self) -> HierarchyInputs {
        let members = self
            .hierarchy_vectors()
            .into_iter()
            .map(|(id, vector, weight)| HierarchyMember {
                id,
                vector,
                weight,
                reservoir: self.clusters[&id].reservoir.items().to_vec(),
            })
            .collect();
        HierarchyInputs {
            settings: self.settings.hierarchy.clone(),
            dimension: self.dimension,
            members,
            topics: self.topics.clone(),
            domains: self.domains.clone(),
        }
    }

    fn apply_hierarchy(&mut self, build: HierarchyBuild) {
        self.topics = build.topics;
        self.domains = build.domains;
        self.term_weights = build.term_weights;
        self.topic_labels = build.topic_labels;
        self.domain_labels = build.domain_labels;
        self.keyword_labels.clear();
        let (topics, domains) = (&self.topic_labels, &self.domain_labels);
        self.names.retain(|k| match k.level {
            Level::Cluster => true,
            Level::Topic => topics.contains_key(&k.id),
            Level::Domain => domains.contains_key(&k.id),
        });
    }

    /// Requests to name (or rename) up to `max` groups that pass `gate` — micro-clusters first,
    /// then topics and domains with a visible member — skipping those in `skip`. Largest
    /// groups first, so a small budget goes where analysts look.
    pub fn naming_requests(
        &self,
        gate: &crate::privacy::PrivacyGate,
        skip: &std::collections::HashSet<NameKey>,
        max: usize,
    ) -> Vec<NamingRequest> {
        let mut out = Vec::new();
        for level in [Level::Cluster, Level::Topic, Level::Domain] {
            if out.len() >= max {
                break;
            }
            let groups = self.naming_groups(level);
            let mut wanted: Vec<(u64, u64)> = groups
                .iter()
                .filter(|(_, members)| members.iter().any(|c| gate.admits(c)))
                .map(|(id, members)| (*id, members.iter().map(|c| c.count).sum::<u64>()))
                .filter(|(id, count)| {
                    let key = NameKey { level, id: *id };
                    !skip.contains(&key) && self.names.wants(key, *count)
                })
                .collect();
            wanted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            wanted.truncate(max - out.len());
            if wanted.is_empty() {
                continue;
            }
            let centroids: Vec<(u64, Vec<f32>)> = groups
                .iter()
                .map(|(id, members)| (*id, group_centroid(members, self.dimension)))
                .collect();
            for (id, count) in wanted {
                let members = &groups[&id];
                let own = &centroids.iter().find(|(g, _)| *g == id).expect("listed").1;
                let mut nearest: Vec<(f32, u64)> = centroids
                    .iter()
                    .filter(|(g, _)| *g != id)
                    .map(|(g, c)| (super::index::dot(own, c), *g))
                    .collect();
                nearest.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                let neighbours: Vec<&MicroCluster> = nearest
                    .iter()
                    .take(CONTRAST_GROUPS)
                    .flat_map(|(_, g)| groups[g].iter().copied())
                    .collect();
                let inside_items = sample_items(members);
                let keyword_label = match level {
                    Level::Cluster => self.label_of(members[0]),
                    Level::Topic => self.topic_label(id).unwrap_or_default().to_string(),
                    Level::Domain => self.domain_label(id).unwrap_or_default().to_string(),
                };
                out.push(NamingRequest {
                    key: NameKey { level, id },
                    count,
                    inside: inside_items.iter().map(|i| i.request.clone()).collect(),
                    outside: sample_items(&neighbours)
                        .iter()
                        .map(|i| i.request.clone())
                        .collect(),
                    keyword_label,
                    vocabulary: ClassTerms::of(inside_items.iter().copied())
                        .common_words(super::ctfidf::MIN_ACCOUNTS_PER_WORD),
                });
            }
        }
        out
    }

    /// Groups of a level and their member micro-clusters.
    fn naming_groups(&self, level: Level) -> BTreeMap<u64, Vec<&MicroCluster>> {
        let mut groups: BTreeMap<u64, Vec<&MicroCluster>> = BTreeMap::new();
        for c in self.clusters.values() {
            let group = match level {
                Level::Cluster => Some(c.id),
                Level::Topic => self.topic_of(c.id),
                Level::Domain => self.domain_of(c.id),
            };
            if let Some(g) = group {
                groups.entry(g).or_default().push(c);
            }
        }
        groups
    }

    /// Stores what the namer found.
    pub fn record_name(&mut self, result: &NamingResult) {
        self.names.record(result);
    }

    /// The label to show for `cluster`, its description, and the rule auditor's verdict (not
    /// `Pass` only when a candidate label was refused now). With LLM labels, a cluster not yet
    /// named shows the generic label.
    pub fn shown_label_of(&self, cluster: &MicroCluster) -> (String, Option<String>, LabelVerdict) {
        self.shown_group_label(
            NameKey {
                level: Level::Cluster,
                id: cluster.id,
            },
            cluster.reservoir.revision(),
            || self.label_of(cluster),
        )
    }

    /// The label to show for topic `topic` (`None` before the first rebuild or for an unknown id).
    pub fn shown_topic_label(&self, topic: u64) -> Option<String> {
        let keyword = self.topic_label(topic)?.to_string();
        let key = NameKey {
            level: Level::Topic,
            id: topic,
        };
        Some(self.shown_group_label(key, 0, || keyword).0)
    }

    /// The label to show for domain `domain`.
    pub fn shown_domain_label(&self, domain: u64) -> Option<String> {
        let keyword = self.domain_label(domain)?.to_string();
        let key = NameKey {
            level: Level::Domain,
            id: domain,
        };
        Some(self.shown_group_label(key, 0, || keyword).0)
    }

    /// `revision` identifies the inputs of `keyword` (a cluster's reservoir revision; 0 for
    /// topics and domains, whose keyword labels change only at a rebuild).
    fn shown_group_label(
        &self,
        key: NameKey,
        revision: u64,
        keyword: impl FnOnce() -> String,
    ) -> (String, Option<String>, LabelVerdict) {
        let generic = || GENERIC_LABEL.to_string();
        match self.names.get(key) {
            Some(GroupName {
                name: Some(name),
                description,
                ..
            }) => {
                // Audited with the cluster's vocabulary when it was made; the pattern rules run
                // again here as a last line.
                match audit_name(name, &|_| true) {
                    LabelVerdict::Pass => (name.clone(), description.clone(), LabelVerdict::Pass),
                    verdict => (generic(), None, verdict),
                }
            }
            Some(GroupName { name: None, .. }) => (generic(), None, LabelVerdict::Pass),
            None if self.llm_labels => (generic(), None, LabelVerdict::Pass),
            None => {
                let (label, verdict) = self.keyword_labels.shown(key, revision, keyword);
                (label, None, verdict)
            }
        }
    }

    /// The micro-cluster centroids the hierarchy groups, with their weights (conversations).
    /// With `hierarchy.center` the conversation-weighted mean centroid is subtracted first and
    /// the rest renormalised: sentence embeddings share a common direction, so every raw centroid
    /// is ~0.3 similar to the mean of many, and a group's centroid drifts into a catch-all.
    pub fn hierarchy_vectors(&self) -> Vec<(ClusterId, Vec<f32>, f64)> {
        let mut mean = vec![0f64; self.dimension];
        if self.settings.hierarchy.center {
            for c in self.clusters.values() {
                for (m, x) in mean.iter_mut().zip(&c.centroid) {
                    *m += c.count as f64 * f64::from(*x);
                }
            }
            let total: f64 = self.clusters.values().map(|c| c.count as f64).sum();
            mean.iter_mut().for_each(|m| *m /= total.max(1.0));
        }
        self.clusters
            .values()
            .map(|c| {
                let shifted: Vec<f64> = c
                    .centroid
                    .iter()
                    .zip(&mean)
                    .map(|(x, m)| f64::from(*x) - m)
                    .collect();
                (c.id, super::hierarchy::unit(&shifted), c.count as f64)
            })
            .collect()
    }

    /// The domain (third level) of micro-cluster `id` as of the last rebuild.
    pub fn domain_of(&self, id: ClusterId) -> Option<u64> {
        self.domains.topic_of(self.topics.topic_of(id)?)
    }

    pub fn domain_count(&self) -> usize {
        self.domains.topics()
    }

    /// The c-TF-IDF label of a micro-cluster (from its current sample, with the term weights of
    /// the last rebuild). Only a candidate: the privacy auditor decides whether it is shown.
    pub fn label_of(&self, cluster: &MicroCluster) -> String {
        self.term_weights
            .label(&ClassTerms::of(cluster.reservoir.items()))
    }

    /// The label of topic `topic` as of the last rebuild (a candidate, as [`Self::label_of`]).
    pub fn topic_label(&self, topic: u64) -> Option<&str> {
        self.topic_labels.get(&topic).map(String::as_str)
    }

    /// The label of domain `domain` as of the last rebuild.
    pub fn domain_label(&self, domain: u64) -> Option<&str> {
        self.domain_labels.get(&domain).map(String::as_str)
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

/// Up to [`SAMPLE_SUMMARIES`] reservoir items, taken round-robin across `members` so one big
/// member cannot fill the sample.
fn sample_items<'a>(members: &[&'a MicroCluster]) -> Vec<&'a ReservoirItem> {
    let mut out = Vec::new();
    let mut round = 0;
    loop {
        let mut any = false;
        for m in members {
            if let Some(item) = m.reservoir.items().get(round) {
                any = true;
                out.push(item);
                if out.len() == SAMPLE_SUMMARIES {
                    return out;
                }
            }
        }
        if !any {
            return out;
        }
        round += 1;
    }
}

/// The conversation-weighted mean centroid of `members`, normalised.
fn group_centroid(members: &[&MicroCluster], dimension: usize) -> Vec<f32> {
    let mut sum = vec![0f64; dimension];
    for c in members {
        for (s, x) in sum.iter_mut().zip(&c.centroid) {
            *s += c.count as f64 * f64::from(*x);
        }
    }
    super::hierarchy::unit(&sum)
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
            template: 0,
            restricted_account: None,
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
                    // Three 2-d points: centring would be all distortion.
                    center: false,
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
        s.rebuild_hierarchy();
        let (ta, tb, tc) = (s.topic_of(1), s.topic_of(2), s.topic_of(3));
        assert!(ta.is_some() && tb.is_some());
        assert_eq!(ta, tc, "near micro-clusters share a topic");
        assert_ne!(ta, tb);
        s.rebuild_hierarchy();
        assert_eq!(
            (s.topic_of(1), s.topic_of(2)),
            (ta, tb),
            "ids survive a rebuild"
        );
        assert_eq!(s.topic_count(), 2);
        // The third level groups topics; every clustered micro-cluster has a domain.
        assert!(s.domain_of(1).is_some() && s.domain_of(2).is_some());
        assert!((1..=2).contains(&s.domain_count()));
        assert!(s.topic_label(ta.unwrap()).is_some());
    }

    fn unit2(x: f32, y: f32) -> Vec<f32> {
        let n = (x * x + y * y).sqrt();
        vec![x / n, y / n]
    }

    #[test]
    fn faded_clusters_are_archived_in_event_time_with_a_died_record() {
        let settings = ClusterSettings {
            decay_half_life_secs: 3600,
            maintenance_every_events: 1,
            ..ClusterSettings::default()
        };
        let mut s = ClusterState::new(settings, 2, "test");
        s.assign(0, &meta("c1", "a1", 0), &summary("a"), &unit2(1.0, 0.0))
            .unwrap();
        assert!(s.maintenance_due());
        let events = s.maintain();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event, LifecycleKind::Born);
        // 5 hours later the first cluster's weight is 2^-5 < 0.05: archived.
        s.assign(
            0,
            &meta("c2", "a1", 5 * 3_600_000),
            &summary("b"),
            &unit2(0.0, 1.0),
        )
        .unwrap();
        let events = s.maintain();
        let kinds: Vec<_> = events.iter().map(|e| (e.event, e.cluster_id)).collect();
        assert_eq!(
            kinds,
            vec![(LifecycleKind::Born, 2), (LifecycleKind::Died, 1)]
        );
        assert_eq!(events[1].conversations, Some(1));
        assert_eq!(s.live_clusters(), 1);
        assert_eq!(s.lifecycle_totals()[3], (LifecycleKind::Died, 1));
    }

    #[test]
    fn converging_clusters_merge_into_the_older_id() {
        let settings = ClusterSettings {
            join_threshold: 0.9,
            merge_threshold: 0.95,
            maintenance_every_events: 1_000_000,
            ..ClusterSettings::default()
        };
        let mut s = ClusterState::new(settings, 2, "test");
        // Two clusters 30 degrees apart (cos 0.866 < 0.9: separate) ...
        let a = unit2(1.0, 0.0);
        let b = unit2(0.866, 0.5);
        s.assign(0, &meta("c1", "a1", 0), &summary("a"), &a)
            .unwrap();
        s.assign(0, &meta("c2", "a2", 1), &summary("b"), &b)
            .unwrap();
        assert_eq!(s.live_clusters(), 2);
        // ... each pulled towards the middle by members only it is nearest to.
        let mid_a = unit2(0.990, 0.139); // 8 degrees
        let mid_b = unit2(0.927, 0.375); // 22 degrees
        for i in 0..20 {
            s.assign(
                0,
                &meta(&format!("a{i}"), &format!("x{i}"), 10 + i),
                &summary("a"),
                &mid_a,
            )
            .unwrap();
            s.assign(
                0,
                &meta(&format!("b{i}"), &format!("y{i}"), 10 + i),
                &summary("b"),
                &mid_b,
            )
            .unwrap();
        }
        assert_eq!(s.live_clusters(), 2);
        let events = s.maintain();
        let merged: Vec<_> = events
            .iter()
            .filter(|e| e.event == LifecycleKind::Merged)
            .collect();
        assert_eq!(merged.len(), 1, "{events:?}");
        assert_eq!((merged[0].cluster_id, merged[0].into), (2, Some(1)));
        assert_eq!(s.live_clusters(), 1);
        let survivor = s.cluster(1).unwrap();
        assert_eq!(survivor.count, 42);
        assert_eq!(survivor.accounts.count(), 42);
        // The merged cluster is found under the surviving id.
        let next = s
            .assign(0, &meta("c-next", "z", 100), &summary("b"), &mid_b)
            .unwrap();
        assert_eq!(next.cluster_id(), Some(1));
    }

    #[test]
    fn a_state_restored_from_a_snapshot_continues_exactly_like_the_original() {
        let e = HashingEmbedder::new(64);
        let settings = ClusterSettings {
            maintenance_every_events: 7,
            ..ClusterSettings::default()
        };
        let texts: Vec<String> = (0..120)
            .map(|i| format!("request about topic {} variant {}", i % 9, i % 4))
            .collect();
        let vectors = e.embed_batch(&texts).unwrap();
        let feed = |s: &mut ClusterState, range: std::ops::Range<usize>| -> Vec<Option<u64>> {
            range
                .map(|i| {
                    let a = s
                        .assign(
                            (i % 3) as i32,
                            &meta(&format!("c{i}"), &format!("a{}", i % 17), i as i64 * 60_000),
                            &summary(&texts[i]),
                            &vectors[i],
                        )
                        .unwrap();
                    if s.maintenance_due() {
                        s.maintain();
                    }
                    a.cluster_id()
                })
                .collect()
        };
        let mut original = ClusterState::new(settings.clone(), 64, e.id());
        feed(&mut original, 0..60);
        let offsets = std::collections::BTreeMap::from([(0, 20), (1, 20), (2, 20)]);
        let bytes = crate::cluster::snapshot::encode(&original.to_snapshot("t", offsets));
        let body = crate::cluster::snapshot::decode(&bytes, std::path::Path::new("s")).unwrap();
        let mut restored = ClusterState::from_snapshot(settings.clone(), body, 64, e.id()).unwrap();
        assert_eq!(feed(&mut original, 60..120), feed(&mut restored, 60..120));
        let ids = |s: &ClusterState| s.clusters().map(|c| (c.id, c.count)).collect::<Vec<_>>();
        assert_eq!(ids(&original), ids(&restored));
        // Redelivered conversations are still recognised after the restore.
        assert_eq!(
            feed(&mut restored, 0..5),
            vec![None; 5],
            "duplicates after restore"
        );
        let body = original.to_snapshot("t", Default::default());
        let err = ClusterState::from_snapshot(settings, body, 64, "another-embedder")
            .err()
            .unwrap();
        assert!(err.to_string().contains("--reset-clusters"), "{err}");
    }

    #[test]
    fn a_background_rebuild_applies_at_its_event_count_and_survives_a_snapshot_between() {
        let e = HashingEmbedder::new(64);
        let settings = |apply_after_events| ClusterSettings {
            join_threshold: 0.8,
            maintenance_every_events: 7,
            hierarchy: crate::config::HierarchySettings {
                topic_threshold: 0.3,
                rebuild_every_events: 40,
                apply_after_events,
                ..Default::default()
            },
            ..ClusterSettings::default()
        };
        let texts: Vec<String> = (0..200)
            .map(|i| format!("ask about subject {} in style {}", i % 13, i % 5))
            .collect();
        let vectors = e.embed_batch(&texts).unwrap();
        // What the cluster stage does per event; returns the topic of every live cluster after it.
        let step = |s: &mut ClusterState, i: usize| -> Vec<(ClusterId, Option<u64>)> {
            s.assign(
                (i % 2) as i32,
                &meta(&format!("c{i}"), &format!("a{}", i % 23), i as i64 * 60_000),
                &summary(&texts[i]),
                &vectors[i],
            )
            .unwrap();
            s.apply_due_hierarchy();
            if s.topics_due() {
                s.start_hierarchy_rebuild();
            }
            if s.maintenance_due() {
                s.maintain();
            }
            s.clusters().map(|c| (c.id, s.topic_of(c.id))).collect()
        };
        let run = |s: &mut ClusterState, range: std::ops::Range<usize>| {
            range.map(|i| step(s, i)).collect::<Vec<_>>()
        };

        // Started at 40, nothing changes until 40 + 15 = 55; the rebuild then applied equals the
        // one an inline rebuild made at 40.
        let mut background = ClusterState::new(settings(15), 64, e.id());
        let mut inline = ClusterState::new(settings(0), 64, e.id());
        let before = run(&mut background, 0..54);
        run(&mut inline, 0..40);
        assert!(
            before[53].iter().all(|(_, t)| t.is_none()),
            "not applied before 55"
        );
        assert!(background.pending_hierarchy.is_some());
        let applied = step(&mut background, 54);
        assert!(background.pending_hierarchy.is_none());
        for (id, topic) in &applied {
            if inline.clusters.contains_key(id) {
                assert_eq!(*topic, inline.topic_of(*id), "cluster {id}");
            }
        }
        assert!(applied.iter().any(|(_, t)| t.is_some()));
        assert_eq!(background.topic_labels, inline.topic_labels);
        assert_eq!(background.domain_labels, inline.domain_labels);

        // A snapshot cut while the rebuild started at 80 is pending carries it: the restored
        // state applies it at 95 exactly like the original.
        let mut original = ClusterState::new(settings(15), 64, e.id());
        run(&mut original, 0..85);
        assert!(original.pending_hierarchy.is_some());
        let bytes =
            crate::cluster::snapshot::encode(&original.to_snapshot("t", Default::default()));
        let body = crate::cluster::snapshot::decode(&bytes, std::path::Path::new("s")).unwrap();
        assert!(body.pending_hierarchy.is_some());
        let mut restored = ClusterState::from_snapshot(settings(15), body, 64, e.id()).unwrap();
        for s in [&mut original, &mut restored] {
            run(s, 85..94);
            assert_eq!(
                s.topics.rebuilds(),
                1,
                "the one started at 80 is not applied yet"
            );
            step(s, 94);
            assert_eq!(s.topics.rebuilds(), 2, "applied at 95");
        }
        assert_eq!(run(&mut original, 95..200), run(&mut restored, 95..200));
        assert_eq!(original.topic_labels, restored.topic_labels);
    }

    #[test]
    fn prefetched_batches_assign_exactly_as_one_at_a_time() {
        let e = HashingEmbedder::new(64);
        let settings = ClusterSettings {
            join_threshold: 0.6,
            merge_threshold: 0.75,
            maintenance_every_events: 13,
            ..ClusterSettings::default()
        };
        let texts: Vec<String> = (0..400)
            .map(|i| format!("w{} x{} y{}", i % 7, i % 11, i % 5))
            .collect();
        let vectors = e.embed_batch(&texts).unwrap();
        let run = |batch: usize| -> (Vec<Option<u64>>, Vec<(u64, u64)>) {
            let mut s = ClusterState::new(settings.clone(), 64, e.id());
            s.prefetch.min_centroids = 0;
            let mut out = Vec::new();
            for start in (0..texts.len()).step_by(batch) {
                let end = (start + batch).min(texts.len());
                let refs: Vec<&[f32]> = vectors[start..end].iter().map(|v| v.as_slice()).collect();
                s.prefetch(&refs);
                for i in start..end {
                    let m = meta(&format!("c{}", i % 390), &format!("a{i}"), i as i64 * 1000);
                    out.push(
                        s.assign(0, &m, &summary(&texts[i]), &vectors[i])
                            .unwrap()
                            .cluster_id(),
                    );
                    if s.maintenance_due() {
                        s.maintain();
                    }
                }
            }
            (out, s.clusters().map(|c| (c.id, c.count)).collect())
        };
        let single = run(1);
        assert!(single.1.len() > 5, "several clusters form");
        assert_eq!(single, run(8));
        assert_eq!(single, run(64));
    }

    #[test]
    fn a_cluster_whose_members_form_two_groups_splits_and_the_parent_keeps_its_id() {
        let settings = ClusterSettings {
            join_threshold: 0.62,
            split_min_members: 10,
            maintenance_every_events: 1_000_000,
            ..ClusterSettings::default()
        };
        let mut s = ClusterState::new(settings, 2, "test");
        // Founder at 0 degrees; then members at -30 and +30 degrees (one in three left): each is
        // within the join threshold of the centroid, but the groups are 60 degrees apart
        // (cos 0.5), too far to join each other.
        s.assign(0, &meta("c0", "a0", 0), &summary("x"), &unit2(1.0, 0.0))
            .unwrap();
        let (left, right) = (unit2(0.866, -0.5), unit2(0.866, 0.5));
        for i in 0..60 {
            let v = if i % 3 == 0 { &left } else { &right };
            let a = s
                .assign(
                    0,
                    &meta(&format!("c{}", i + 1), &format!("a{i}"), i + 1),
                    &summary("x"),
                    v,
                )
                .unwrap();
            assert_eq!(a.cluster_id(), Some(1), "everything joins the one cluster");
        }
        let events = s.maintain();
        let split: Vec<_> = events
            .iter()
            .filter(|e| e.event == LifecycleKind::Split)
            .collect();
        assert_eq!(split.len(), 1, "{events:?}");
        assert_eq!((split[0].cluster_id, split[0].from), (2, Some(1)));
        assert_eq!(s.live_clusters(), 2);
        // Nothing is counted twice: the parent keeps its history, the new cluster starts empty.
        assert_eq!(s.cluster(1).unwrap().count, 61);
        assert_eq!(s.cluster(2).unwrap().count, 0);
        // The parent now stands for the larger (right) group, the new cluster for the left.
        let next_left = s
            .assign(0, &meta("n1", "z1", 100), &summary("x"), &left)
            .unwrap();
        let next_right = s
            .assign(0, &meta("n2", "z2", 101), &summary("x"), &right)
            .unwrap();
        assert_eq!(
            (next_left.cluster_id(), next_right.cluster_id()),
            (Some(2), Some(1))
        );
    }

    #[test]
    fn snapshots_hold_no_account_or_conversation_id() {
        let e = HashingEmbedder::new(64);
        let mut s = ClusterState::new(ClusterSettings::default(), 64, e.id());
        let v = e.embed_batch(&["a request".to_string()]).unwrap();
        for i in 0..30 {
            s.assign(
                0,
                &meta(&format!("conv-canary-{i}"), &format!("acct-canary-{i}"), i),
                &summary("a request"),
                &v[0],
            )
            .unwrap();
        }
        s.rebuild_hierarchy();
        let bytes = crate::cluster::snapshot::encode(&s.to_snapshot("t", Default::default()));
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("canary"), "an id reached the snapshot");
    }
}
