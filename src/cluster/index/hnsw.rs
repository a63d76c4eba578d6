//! The approximate index: an instant-distance HNSW graph, kept fresh without ever making a query
//! wait for a build.
//!
//! instant-distance builds a static graph, while centroids are born, move and die on every event.
//! So the index has three parts:
//! - a **built graph** over a snapshot of the centroids. Its candidates are re-scored against the
//!   *current* centroids, so a centroid that drifted a little since the snapshot still scores
//!   exactly;
//! - an exact **delta**: centroids born since the snapshot, and those that drifted more than
//!   `drift_tolerance` from their snapshot position (the graph may no longer lead to them);
//! - a **rebuild**, started when the delta outgrows a share of the graph, that runs on its own
//!   thread and is swapped in whole by the next query that finds it finished. Changes made while
//!   it ran are replayed into the new delta at the swap.
//!
//! In deterministic mode (replay) the rebuild runs inline, on one thread, at a point fixed by the
//! event count, so a replay reproduces its clusters exactly.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;

use instant_distance::{Builder, HnswMap, Point, Search};

use super::{better_of, dot, CentroidIndex, ExactScanIndex};
use crate::cluster::ClusterId;

/// Tuning of the HNSW index. Defaults beside each field.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HnswSettings {
    /// Candidates examined per query in the graph's bottom layer (instant-distance `ef`). 64.
    pub ef_search: usize,
    /// Candidates examined per insertion while building. 100.
    pub ef_construction: usize,
    /// Build the first graph once this many centroids exist (below it the delta is the index). 512.
    pub min_graph_size: usize,
    /// Rebuild when the delta exceeds this share of the graph (and `min_rebuild_delta`). 0.1.
    pub rebuild_fraction: f32,
    /// ... but never for a delta smaller than this, which an exact scan handles cheaply. 256.
    pub min_rebuild_delta: usize,
    /// A centroid whose cosine to its snapshot position falls below `1 - drift_tolerance` is
    /// searched exactly until the next build. 0.1: candidates are re-scored against current
    /// centroids anyway, so only large moves can hide a cluster from the graph.
    pub drift_tolerance: f32,
}

impl Default for HnswSettings {
    fn default() -> Self {
        HnswSettings {
            ef_search: 64,
            ef_construction: 100,
            min_graph_size: 512,
            rebuild_fraction: 0.1,
            min_rebuild_delta: 256,
            drift_tolerance: 0.1,
        }
    }
}

/// A unit vector as instant-distance sees it: distance is 1 − cosine.
#[derive(Clone)]
struct UnitPoint(Box<[f32]>);

impl Point for UnitPoint {
    fn distance(&self, other: &Self) -> f32 {
        1.0 - dot(&self.0, &other.0)
    }
}

/// A finished build: the graph, and where each of its clusters sat when the snapshot was taken.
struct BuiltGraph {
    map: HnswMap<UnitPoint, ClusterId>,
    snapshot: HashMap<ClusterId, Box<[f32]>>,
}

pub struct HnswIndex {
    settings: HnswSettings,
    dimension: usize,
    /// Every live centroid as it is now; the truth candidates are re-scored against.
    current: ExactScanIndex,
    graph: Option<BuiltGraph>,
    /// Born since the snapshot, or drifted beyond tolerance.
    delta: ExactScanIndex,
    /// In the graph but no longer live.
    removed: HashSet<ClusterId>,
    /// A build in flight, and the ids changed since its snapshot was taken.
    pending: Option<mpsc::Receiver<BuiltGraph>>,
    changed_since_snapshot: HashSet<ClusterId>,
    search: Search,
    deterministic: bool,
    builds: u64,
}

impl HnswIndex {
    pub fn new(dimension: usize, settings: HnswSettings, deterministic: bool) -> Self {
        HnswIndex {
            settings,
            dimension,
            current: ExactScanIndex::new(dimension),
            graph: None,
            delta: ExactScanIndex::new(dimension),
            removed: HashSet::new(),
            pending: None,
            changed_since_snapshot: HashSet::new(),
            search: Search::default(),
            deterministic,
            builds: 0,
        }
    }

    /// Graphs built and swapped in so far.
    pub fn builds(&self) -> u64 {
        self.builds
    }

    /// Builds a graph over every current centroid now, on this thread (tests and recall
    /// measurements, which want the graph alone, not the exact delta).
    pub fn rebuild_now(&mut self) {
        self.pending = None;
        let deterministic = std::mem::replace(&mut self.deterministic, true);
        self.start_rebuild();
        self.deterministic = deterministic;
    }

    /// Centroids currently searched exactly.
    pub fn delta_len(&self) -> usize {
        self.delta.len()
    }

    fn graph_len(&self) -> usize {
        self.graph.as_ref().map_or(0, |g| g.snapshot.len())
    }

    fn wants_rebuild(&self) -> bool {
        let graph = self.graph_len();
        if graph == 0 {
            return self.current.len() >= self.settings.min_graph_size;
        }
        let limit = (graph as f32 * self.settings.rebuild_fraction)
            .max(self.settings.min_rebuild_delta as f32);
        self.delta.len() as f32 > limit || self.removed.len() as f32 > limit
    }

    fn build(settings: HnswSettings, ids: Vec<ClusterId>, rows: Vec<Box<[f32]>>) -> BuiltGraph {
        let snapshot: HashMap<ClusterId, Box<[f32]>> =
            ids.iter().copied().zip(rows.iter().cloned()).collect();
        let points: Vec<UnitPoint> = rows.into_iter().map(UnitPoint).collect();
        let builder = Builder::default()
            .ef_construction(settings.ef_construction)
            .ef_search(settings.ef_search)
            .seed(0x636c_7573_7465_7277);
        // One thread: a background build must not take the cores the pipeline runs on, and a
        // single-threaded insertion order is what makes the graph reproducible.
        let map = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
            Ok(pool) => pool.install(|| builder.build(points, ids)),
            Err(_) => builder.build(points, ids),
        };
        BuiltGraph { map, snapshot }
    }

    fn start_rebuild(&mut self) {
        let (ids, rows): (Vec<ClusterId>, Vec<Box<[f32]>>) = self
            .current
            .rows()
            .map(|(id, row)| (id, row.to_vec().into_boxed_slice()))
            .unzip();
        self.changed_since_snapshot.clear();
        let settings = self.settings;
        if self.deterministic {
            let built = Self::build(settings, ids, rows);
            self.swap_in(built);
            return;
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("hnsw-build".into())
            .spawn(move || {
                // The receiver is gone only when the index was dropped.
                let _ = tx.send(Self::build(settings, ids, rows));
            });
        match spawned {
            Ok(_) => self.pending = Some(rx),
            Err(e) => tracing::warn!(error = %e, "cannot start the HNSW rebuild; staying exact"),
        }
    }

    fn collect_finished_build(&mut self) {
        let Some(rx) = &self.pending else {
            return;
        };
        match rx.try_recv() {
            Ok(built) => {
                self.pending = None;
                self.swap_in(built);
            }
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => {
                tracing::warn!("HNSW rebuild thread ended without a graph");
                self.pending = None;
            }
        }
    }

    /// Replaces the graph, and rebuilds the delta from what changed since its snapshot.
    fn swap_in(&mut self, built: BuiltGraph) {
        self.delta = ExactScanIndex::new(self.dimension);
        self.removed.clear();
        for id in std::mem::take(&mut self.changed_since_snapshot) {
            match self.current.centroid(id) {
                Some(now) => {
                    let drifted = built
                        .snapshot
                        .get(&id)
                        .is_none_or(|then| dot(then, now) < 1.0 - self.settings.drift_tolerance);
                    if drifted {
                        self.delta.upsert(id, now);
                    }
                }
                None => {
                    if built.snapshot.contains_key(&id) {
                        self.removed.insert(id);
                    }
                }
            }
        }
        self.graph = Some(built);
        self.builds += 1;
    }
}

impl CentroidIndex for HnswIndex {
    fn nearest_excluding(
        &mut self,
        query: &[f32],
        exclude: Option<ClusterId>,
    ) -> Option<(ClusterId, f32)> {
        self.collect_finished_build();
        let mut best = self.delta.scan(query, exclude);
        let Some(graph) = &self.graph else {
            return best;
        };
        let point = UnitPoint(query.to_vec().into_boxed_slice());
        for item in graph.map.search(&point, &mut self.search) {
            let id = *item.value;
            if Some(id) == exclude || self.removed.contains(&id) || self.delta.contains(id) {
                continue;
            }
            if let Some(now) = self.current.centroid(id) {
                best = better_of(best, (id, dot(now, query)));
            }
        }
        best
    }

    fn upsert(&mut self, id: ClusterId, centroid: &[f32]) {
        self.current.upsert(id, centroid);
        if self.pending.is_some() {
            self.changed_since_snapshot.insert(id);
        }
        let drifted = match self.graph.as_ref().and_then(|g| g.snapshot.get(&id)) {
            Some(then) => dot(then, centroid) < 1.0 - self.settings.drift_tolerance,
            None => true,
        };
        if drifted || self.delta.contains(id) {
            self.delta.upsert(id, centroid);
        }
        if self.pending.is_none() && self.wants_rebuild() {
            self.start_rebuild();
        }
    }

    fn remove(&mut self, id: ClusterId) {
        self.current.remove(id);
        self.delta.remove(id);
        if self.pending.is_some() {
            self.changed_since_snapshot.insert(id);
        }
        if self
            .graph
            .as_ref()
            .is_some_and(|g| g.snapshot.contains_key(&id))
        {
            self.removed.insert(id);
        }
    }

    fn len(&self) -> usize {
        self.current.len()
    }

    fn settle(&mut self) {
        loop {
            if let Some(rx) = self.pending.take() {
                match rx.recv() {
                    Ok(built) => self.swap_in(built),
                    Err(_) => return,
                }
            }
            if !self.wants_rebuild() {
                return;
            }
            self.start_rebuild();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Unit vectors around `centres` random centres, like embeddings of paraphrases.
    fn clustered_vectors(n: usize, centres: usize, dim: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let centre: Vec<Vec<f32>> = (0..centres)
            .map(|_| (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
            .collect();
        (0..n)
            .map(|i| {
                let c = &centre[i % centres];
                let v: Vec<f32> = c.iter().map(|x| x + rng.gen_range(-0.4f32..0.4)).collect();
                crate::cluster::index::tests::unit(&v)
            })
            .collect()
    }

    fn small_settings() -> HnswSettings {
        HnswSettings {
            min_graph_size: 64,
            min_rebuild_delta: 32,
            ..Default::default()
        }
    }

    #[test]
    fn agrees_with_the_exact_scan_while_centroids_are_born_move_and_die() {
        let dim = 32;
        let vectors = clustered_vectors(3000, 400, dim, 1);
        let mut exact = ExactScanIndex::new(dim);
        let mut hnsw = HnswIndex::new(dim, small_settings(), true);
        let mut agree = 0;
        let mut queries = 0;
        for (i, v) in vectors.iter().enumerate() {
            let id = (i % 700) as ClusterId;
            if i > 200 {
                queries += 1;
                let want = exact.nearest(v).map(|(id, _)| id);
                let got = hnsw.nearest(v).map(|(id, _)| id);
                agree += usize::from(want == got);
            }
            exact.upsert(id, v);
            hnsw.upsert(id, v);
            if i % 97 == 0 {
                exact.remove(id + 1);
                hnsw.remove(id + 1);
            }
        }
        assert!(hnsw.builds() >= 2, "rebuilt as the delta grew");
        assert_eq!(hnsw.len(), exact.len());
        let recall = agree as f64 / queries as f64;
        assert!(recall >= 0.99, "recall@1 {recall}");
    }

    #[test]
    fn a_background_build_is_swapped_in_without_losing_changes_made_meanwhile() {
        let dim = 16;
        let vectors = clustered_vectors(2000, 300, dim, 2);
        let mut exact = ExactScanIndex::new(dim);
        let mut hnsw = HnswIndex::new(dim, small_settings(), false);
        for (i, v) in vectors.iter().enumerate() {
            let id = i as ClusterId;
            exact.upsert(id, v);
            hnsw.upsert(id, v);
            if i % 5 == 0 && i > 0 {
                exact.remove(id - 1);
                hnsw.remove(id - 1);
            }
        }
        // Let the last build finish, then every live centroid must still be findable.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while hnsw.pending.is_some() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
            hnsw.collect_finished_build();
        }
        assert!(hnsw.builds() >= 1);
        for (id, row) in exact.rows() {
            let (found, sim) = hnsw.nearest(row).expect("non-empty");
            assert!(sim > 0.999, "centroid {id} found as {found} at {sim}");
        }
    }
}
