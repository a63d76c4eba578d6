//! Nearest-centroid search behind the [`CentroidIndex`] trait.
//!
//! [`ExactScanIndex`] keeps centroids in one contiguous row-major `Vec<f32>`, so a query is a
//! linear pass of dot products the compiler vectorises. It is exact, which makes it the reference
//! the approximate indexes are tested against.

use std::collections::HashMap;

use super::ClusterId;

/// Finds the live cluster whose centroid is most similar (cosine) to a unit query vector.
pub trait CentroidIndex: Send {
    /// The most similar centroid and its cosine similarity, or `None` when empty.
    fn nearest(&self, query: &[f32]) -> Option<(ClusterId, f32)>;
    /// Adds or replaces the centroid of `id`.
    fn upsert(&mut self, id: ClusterId, centroid: &[f32]);
    /// Forgets `id`; unknown ids are ignored.
    fn remove(&mut self, id: ClusterId);
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Exact linear scan over contiguous rows.
pub struct ExactScanIndex {
    dimension: usize,
    rows: Vec<f32>,
    ids: Vec<ClusterId>,
    row_of: HashMap<ClusterId, usize>,
}

impl ExactScanIndex {
    pub fn new(dimension: usize) -> Self {
        ExactScanIndex {
            dimension,
            rows: Vec::new(),
            ids: Vec::new(),
            row_of: HashMap::new(),
        }
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

impl CentroidIndex for ExactScanIndex {
    fn nearest(&self, query: &[f32]) -> Option<(ClusterId, f32)> {
        let mut best: Option<(ClusterId, f32)> = None;
        for (row, id) in self.rows.chunks_exact(self.dimension).zip(&self.ids) {
            let sim = dot(row, query);
            // Ties go to the older (smaller) id so results do not depend on row order.
            let better = match best {
                None => true,
                Some((best_id, best_sim)) => sim > best_sim || (sim == best_sim && *id < best_id),
            };
            if better {
                best = Some((*id, sim));
            }
        }
        best
    }

    fn upsert(&mut self, id: ClusterId, centroid: &[f32]) {
        debug_assert_eq!(centroid.len(), self.dimension);
        match self.row_of.get(&id) {
            Some(&row) => self.rows[row * self.dimension..(row + 1) * self.dimension]
                .copy_from_slice(centroid),
            None => {
                self.row_of.insert(id, self.ids.len());
                self.ids.push(id);
                self.rows.extend_from_slice(centroid);
            }
        }
    }

    fn remove(&mut self, id: ClusterId) {
        let Some(row) = self.row_of.remove(&id) else {
            return;
        };
        // Swap the last row into the hole so the rows stay contiguous.
        let last = self.ids.len() - 1;
        if row != last {
            let moved = self.ids[last];
            let (head, tail) = self.rows.split_at_mut(last * self.dimension);
            head[row * self.dimension..(row + 1) * self.dimension]
                .copy_from_slice(&tail[..self.dimension]);
            self.ids[row] = moved;
            self.row_of.insert(moved, row);
        }
        self.ids.pop();
        self.rows.truncate(last * self.dimension);
    }

    fn len(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn finds_the_most_similar_centroid_and_survives_removal() {
        let mut idx = ExactScanIndex::new(3);
        assert!(idx.nearest(&[1.0, 0.0, 0.0]).is_none());
        idx.upsert(1, &unit(&[1.0, 0.0, 0.0]));
        idx.upsert(2, &unit(&[0.0, 1.0, 0.0]));
        idx.upsert(3, &unit(&[0.0, 0.0, 1.0]));
        let (id, sim) = idx.nearest(&unit(&[0.1, 0.9, 0.0])).unwrap();
        assert_eq!(id, 2);
        assert!(sim > 0.9);
        idx.remove(1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.nearest(&unit(&[0.0, 0.1, 1.0])).unwrap().0, 3);
        idx.upsert(3, &unit(&[1.0, 0.0, 0.0]));
        assert_eq!(idx.nearest(&unit(&[1.0, 0.0, 0.1])).unwrap().0, 3);
        idx.remove(42);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn dot_matches_naive_for_odd_lengths() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.05).collect();
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-4);
    }
}
