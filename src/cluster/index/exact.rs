//! The exact index: every centroid in one contiguous row-major `Vec<f32>`, so a query is a linear
//! pass of dot products the compiler vectorises. It is exact, which makes it the reference the
//! approximate index is tested against, and it is the fastest choice up to a few thousand
//! clusters.

use std::collections::HashMap;

use super::{better_of, dot, dot4, push_top_k, CentroidIndex};

/// Rows scanned per block of a batched query: 256 rows of 384 floats are 384 KiB, which stay in
/// L2 while every waiting query passes over them.
const BLOCK_ROWS: usize = 256;
use crate::cluster::ClusterId;

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

impl ExactScanIndex {
    /// The exact nearest centroid; `&self`, so other indexes can use it as their exact part.
    pub fn scan(&self, query: &[f32], exclude: Option<ClusterId>) -> Option<(ClusterId, f32)> {
        let mut best: Option<(ClusterId, f32)> = None;
        for (row, id) in self.rows.chunks_exact(self.dimension).zip(&self.ids) {
            if Some(*id) != exclude {
                best = better_of(best, (*id, dot(row, query)));
            }
        }
        best
    }

    /// The current centroid of `id`.
    pub fn centroid(&self, id: ClusterId) -> Option<&[f32]> {
        let row = *self.row_of.get(&id)?;
        Some(&self.rows[row * self.dimension..(row + 1) * self.dimension])
    }

    /// Every (id, centroid) pair, in row order.
    pub fn rows(&self) -> impl Iterator<Item = (ClusterId, &[f32])> {
        self.ids
            .iter()
            .copied()
            .zip(self.rows.chunks_exact(self.dimension))
    }

    pub fn contains(&self, id: ClusterId) -> bool {
        self.row_of.contains_key(&id)
    }
}

impl CentroidIndex for ExactScanIndex {
    fn nearest_excluding(
        &mut self,
        query: &[f32],
        exclude: Option<ClusterId>,
    ) -> Option<(ClusterId, f32)> {
        self.scan(query, exclude)
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

    fn top_k_batch(&self, queries: &[&[f32]], k: usize) -> Option<Vec<Vec<(ClusterId, f32)>>> {
        let k = k.max(1);
        let mut best: Vec<Vec<(ClusterId, f32)>> = vec![Vec::with_capacity(k + 1); queries.len()];
        let block = BLOCK_ROWS * self.dimension;
        for (b, rows) in self.rows.chunks(block).enumerate() {
            let ids = &self.ids[b * BLOCK_ROWS..];
            let mut q = 0;
            while q + 4 <= queries.len() {
                let four = [queries[q], queries[q + 1], queries[q + 2], queries[q + 3]];
                for (row, id) in rows.chunks_exact(self.dimension).zip(ids) {
                    let sims = dot4(row, four);
                    for (j, sim) in sims.into_iter().enumerate() {
                        push_top_k(&mut best[q + j], (*id, sim), k);
                    }
                }
                q += 4;
            }
            for (query, top) in queries[q..].iter().zip(best[q..].iter_mut()) {
                for (row, id) in rows.chunks_exact(self.dimension).zip(ids) {
                    push_top_k(top, (*id, dot(row, query)), k);
                }
            }
        }
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::cluster::index::tests::unit;

    #[test]
    fn batched_top_k_agrees_with_single_scans() {
        let dim = 16;
        let mut idx = ExactScanIndex::new(dim);
        let vector = |seed: u64| -> Vec<f32> {
            let raw: Vec<f32> = (0..dim as u64)
                .map(|i| ((seed * 31 + i * 17) % 23) as f32 - 11.0)
                .collect();
            unit(&raw)
        };
        for id in 1..=700u64 {
            idx.upsert(id, &vector(id));
        }
        let queries: Vec<Vec<f32>> = (1000..1040).map(vector).collect();
        let refs: Vec<&[f32]> = queries.iter().map(|q| q.as_slice()).collect();
        let top = idx.top_k_batch(&refs, 3).unwrap();
        for (q, top) in queries.iter().zip(&top) {
            assert_eq!(top.len(), 3);
            assert_eq!(Some(top[0]), idx.scan(q, None));
            assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
            assert_eq!(Some(top[1]), idx.scan(q, Some(top[0].0)));
        }
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
}
