//! The coarse quantiser that decides which shard a vector belongs to.
//!
//! The enrich role sends each event to the internal topic's partition of its nearest codebook
//! cell, so that events close in vector space — the ones that can join one cluster — meet in one
//! cluster-role shard. The codebook is fixed and stored with the config (`config/codebook-*.json`):
//! a vector must land in the same cell on every enrich instance and after every restart, or one
//! cluster would be split across shards. It is made once per embedder by `clusterwatch model
//! codebook` (k-means over the bundled CLINC150 and Banking77 requests) and names the embedder it
//! was made for; a mismatch is refused at start.
//!
//! Cells map to partitions by `cell % partitions`, so a topic may have fewer partitions than the
//! codebook has cells; more cells than partitions keeps that mapping balanced.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Codebook {
    /// The embedder whose vector space the cells live in.
    pub embedder_id: String,
    pub dimension: usize,
    /// Unit-norm cell centroids.
    pub cells: Vec<Vec<f32>>,
}

impl Codebook {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            anyhow::anyhow!(
                "codebook {} unreadable: {e} (make one with `clusterwatch model codebook`)",
                path.display()
            )
        })?;
        let codebook: Codebook = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("codebook {} is not valid: {e}", path.display()))?;
        codebook.check()?;
        Ok(codebook)
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        self.check()?;
        std::fs::write(path, serde_json::to_string(self)? + "\n")?;
        Ok(())
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.cells.is_empty() {
            anyhow::bail!("codebook has no cells");
        }
        if let Some(bad) = self.cells.iter().find(|c| c.len() != self.dimension) {
            anyhow::bail!(
                "codebook cell has {} dimensions, the codebook says {}",
                bad.len(),
                self.dimension
            );
        }
        Ok(())
    }

    /// Refuses to partition vectors of another embedder.
    pub fn check_embedder(&self, embedder_id: &str, dimension: usize) -> anyhow::Result<()> {
        if self.embedder_id != embedder_id || self.dimension != dimension {
            anyhow::bail!(
                "the codebook was made for {:?} ({} dims), the embedder is {embedder_id:?} ({dimension} dims): \
                 make one with `clusterwatch model codebook`",
                self.embedder_id,
                self.dimension
            );
        }
        Ok(())
    }

    /// The nearest cell (largest dot product; vectors and cells are unit-norm). Ties go to the
    /// lower index, so the choice never depends on anything but the vector.
    pub fn cell(&self, vector: &[f32]) -> usize {
        let mut best = (0, f32::NEG_INFINITY);
        for (i, cell) in self.cells.iter().enumerate() {
            let dot: f32 = cell.iter().zip(vector).map(|(a, b)| a * b).sum();
            if dot > best.1 {
                best = (i, dot);
            }
        }
        best.0
    }

    /// The partition of a topic with `partitions` partitions that `vector` goes to.
    pub fn partition(&self, vector: &[f32], partitions: i32) -> i32 {
        (self.cell(vector) % partitions.max(1) as usize) as i32
    }

    /// Fits `cells` centroids to `vectors` (unit-norm rows) with seeded k-means, so the same
    /// input always gives the same codebook.
    pub fn train(
        embedder_id: &str,
        dimension: usize,
        vectors: &[Vec<f32>],
        cells: usize,
        seed: u64,
    ) -> anyhow::Result<Self> {
        let flat: Vec<f32> = vectors.iter().flatten().copied().collect();
        let labels = crate::eval::kmeans::kmeans(&flat, dimension, cells, seed, 3, 100)?;
        let mut sums = vec![vec![0f32; dimension]; cells];
        for (vector, label) in vectors.iter().zip(&labels) {
            for (s, v) in sums[*label as usize].iter_mut().zip(vector) {
                *s += v;
            }
        }
        for sum in &mut sums {
            let norm = sum
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
                .max(f32::EPSILON);
            sum.iter_mut().for_each(|v| *v /= norm);
        }
        let codebook = Codebook {
            embedder_id: embedder_id.to_string(),
            dimension,
            cells: sums,
        };
        codebook.check()?;
        Ok(codebook)
    }
}

/// Trains a codebook for `embedder` on the bundled CLINC150 and Banking77 requests (the demo's
/// organic traffic), `cells` cells, seeded. Returns it with the share of the texts in each cell.
pub fn train_on_bundled_requests(
    embedder: &dyn crate::embed::Embedder,
    cells: usize,
    seed: u64,
) -> anyhow::Result<(Codebook, Vec<f64>)> {
    let texts = crate::demo::traffic::organic_texts();
    let mut vectors = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        vectors.extend(embedder.embed_batch(chunk)?);
    }
    let codebook = Codebook::train(embedder.id(), embedder.dimension(), &vectors, cells, seed)?;
    let mut counts = vec![0usize; cells];
    for vector in &vectors {
        counts[codebook.cell(vector)] += 1;
    }
    let shares = counts
        .iter()
        .map(|&n| n as f64 / vectors.len().max(1) as f64)
        .collect();
    Ok((codebook, shares))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter().map(|x| x / n).collect()
    }

    #[test]
    fn vectors_go_to_their_nearest_cell_and_cells_wrap_onto_partitions() {
        let codebook = Codebook {
            embedder_id: "e".into(),
            dimension: 2,
            cells: vec![unit(&[1.0, 0.0]), unit(&[0.0, 1.0]), unit(&[-1.0, 0.0])],
        };
        assert_eq!(codebook.cell(&unit(&[0.9, 0.1])), 0);
        assert_eq!(codebook.cell(&unit(&[0.1, 0.9])), 1);
        assert_eq!(codebook.cell(&unit(&[-0.9, 0.2])), 2);
        assert_eq!(codebook.partition(&unit(&[-0.9, 0.2]), 2), 0);
        assert_eq!(codebook.partition(&unit(&[0.1, 0.9]), 2), 1);
        assert!(codebook.check_embedder("e", 2).is_ok());
        assert!(codebook.check_embedder("other", 2).is_err());
    }

    #[test]
    fn training_is_deterministic_and_separates_obvious_groups() {
        let mut vectors = Vec::new();
        for i in 0..20 {
            let jitter = i as f32 * 0.001;
            vectors.push(unit(&[1.0, jitter, 0.0]));
            vectors.push(unit(&[0.0, 1.0, jitter]));
        }
        let a = Codebook::train("e", 3, &vectors, 2, 7).unwrap();
        let b = Codebook::train("e", 3, &vectors, 2, 7).unwrap();
        assert_eq!(a, b);
        assert_ne!(a.cell(&vectors[0]), a.cell(&vectors[1]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("codebook.json");
        a.save(&path).unwrap();
        assert_eq!(Codebook::load(&path).unwrap(), a);
    }
}
