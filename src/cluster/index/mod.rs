//! Nearest-centroid search behind the [`CentroidIndex`] trait.
//!
//! Two implementations, chosen by `cluster.index`:
//! - [`exact::ExactScanIndex`]: a contiguous linear scan; exact, and fastest for small states.
//! - [`hnsw::HnswIndex`]: an instant-distance HNSW graph over a snapshot of the centroids, plus an
//!   exact delta of new and moved centroids, rebuilt in the background and swapped in whole.
//!
//! Both answer "which live cluster is most similar to this unit vector"; the cluster state does
//! not know which one it has.

pub mod exact;
pub mod hnsw;

use super::ClusterId;

pub use exact::ExactScanIndex;
pub use hnsw::HnswIndex;

/// Finds the live cluster whose centroid is most similar (cosine) to a unit query vector.
pub trait CentroidIndex: Send {
    /// The most similar centroid and its cosine similarity, or `None` when empty. `&mut` so an
    /// index can reuse search buffers and pick up a finished background build.
    fn nearest(&mut self, query: &[f32]) -> Option<(ClusterId, f32)> {
        self.nearest_excluding(query, None)
    }
    /// As [`CentroidIndex::nearest`], ignoring `exclude` (a cluster looking for its nearest
    /// neighbour, for merges).
    fn nearest_excluding(
        &mut self,
        query: &[f32],
        exclude: Option<ClusterId>,
    ) -> Option<(ClusterId, f32)>;
    /// Adds or replaces the centroid of `id`.
    fn upsert(&mut self, id: ClusterId, centroid: &[f32]);
    /// Forgets `id`; unknown ids are ignored.
    fn remove(&mut self, id: ClusterId);
    fn len(&self) -> usize;
    /// The `k` best candidates of each query, best first, computed in one pass over the index
    /// (queries that are waiting together share the memory traffic). `None` when the index has
    /// no batched path; callers then query one by one.
    fn top_k_batch(&self, _queries: &[&[f32]], _k: usize) -> Option<Vec<Vec<(ClusterId, f32)>>> {
        None
    }
    /// Blocks until background work (an index rebuild) has caught up with every change so far.
    /// Benchmarks call it after loading, so they measure the steady state.
    fn settle(&mut self) {}
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Dot product in four independent lanes so the loop vectorises without `unsafe`.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks_a = a.chunks_exact(8);
    let chunks_b = b.chunks_exact(8);
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in chunks_a.zip(chunks_b) {
        for i in 0..8 {
            acc[i] += ca[i] * cb[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Inserts `candidate` into `best` (sorted best first, at most `k` long) if it belongs there.
#[inline]
pub(crate) fn push_top_k(best: &mut Vec<(ClusterId, f32)>, candidate: (ClusterId, f32), k: usize) {
    if best.len() == k {
        let worst = best[k - 1];
        if better_of(Some(worst), candidate) == Some(worst) {
            return;
        }
        best.pop();
    }
    let pos = best
        .iter()
        .position(|b| better_of(Some(*b), candidate) != Some(*b))
        .unwrap_or(best.len());
    best.insert(pos, candidate);
}

/// The better of two candidates: higher similarity, ties to the older (smaller) id, so results
/// never depend on storage order.
#[inline]
pub(crate) fn better_of(
    best: Option<(ClusterId, f32)>,
    candidate: (ClusterId, f32),
) -> Option<(ClusterId, f32)> {
    match best {
        Some((id, sim)) if sim > candidate.1 || (sim == candidate.1 && id < candidate.0) => best,
        _ => Some(candidate),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.05).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }

    #[test]
    fn ties_go_to_the_older_id() {
        assert_eq!(better_of(Some((5, 0.5)), (3, 0.5)), Some((3, 0.5)));
        assert_eq!(better_of(Some((3, 0.5)), (5, 0.5)), Some((3, 0.5)));
        assert_eq!(better_of(Some((3, 0.5)), (5, 0.6)), Some((5, 0.6)));
    }
}
