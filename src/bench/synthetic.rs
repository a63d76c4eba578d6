//! Synthetic labelled vectors for the clustering benchmark: unit vectors scattered around random
//! "topic" centres, the way paraphrases of one request scatter around its meaning.
//!
//! The embedder is excluded from the benchmark on purpose (its speed is measured on its own), so
//! the vectors only need the geometry that matters to the index: well-separated centres in the
//! embedding's dimension, and members close enough to join their centre's cluster.

use crate::cluster::index::normalised;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub struct TopicSpace {
    dimension: usize,
    centres: Vec<f32>,
    /// Standard deviation of each coordinate of the noise, relative to a unit centre.
    noise: f32,
    rng: ChaCha8Rng,
}

impl TopicSpace {
    /// `topics` random unit centres in `dimension` dimensions. `member_cosine` is the typical
    /// cosine between a member and its centre.
    pub fn new(topics: usize, dimension: usize, member_cosine: f32, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut centres = Vec::with_capacity(topics * dimension);
        for _ in 0..topics {
            let v: Vec<f32> = (0..dimension).map(|_| gaussian(&mut rng)).collect();
            centres.extend(normalised(v));
        }
        // A member is c + e with |e|² ≈ noise² · dimension · (1/dimension)·dimension; for a
        // cosine of m, |e| = sqrt(1/m² − 1).
        let noise_norm = (1.0 / (member_cosine * member_cosine) - 1.0)
            .max(0.0)
            .sqrt();
        TopicSpace {
            dimension,
            centres,
            noise: noise_norm / (dimension as f32).sqrt(),
            rng,
        }
    }

    pub fn topics(&self) -> usize {
        self.centres.len() / self.dimension
    }

    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// A fresh member of `topic`, unit norm.
    pub fn member(&mut self, topic: usize) -> Vec<f32> {
        let centre = &self.centres[topic * self.dimension..(topic + 1) * self.dimension];
        let noise = self.noise;
        let rng = &mut self.rng;
        let v: Vec<f32> = centre.iter().map(|c| c + noise * gaussian(rng)).collect();
        normalised(v)
    }

    /// A uniformly random topic.
    pub fn random_topic(&mut self) -> usize {
        let topics = self.topics();
        self.rng.gen_range(0..topics)
    }

    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// `n` members of uniformly random topics, as hierarchy items with ids 0.. and weights
    /// cycling through 1..=`weight_cycle` (so equal weights, and ties, occur).
    pub fn level_items(&mut self, n: usize, weight_cycle: usize) -> Vec<HierarchyItem> {
        (0..n)
            .map(|i| {
                let topic = self.random_topic();
                HierarchyItem {
                    id: i as u64,
                    centroid: self.member(topic),
                    weight: (1 + i % weight_cycle.max(1)) as f64,
                }
            })
            .collect()
    }
}

/// An owned [`crate::cluster::hierarchy::LevelItem`]: what [`TopicSpace::level_items`] draws.
pub struct HierarchyItem {
    pub id: u64,
    pub centroid: Vec<f32>,
    pub weight: f64,
}

impl HierarchyItem {
    /// Borrowed as the hierarchy takes it.
    pub fn as_level_item(&self) -> crate::cluster::hierarchy::LevelItem<'_> {
        crate::cluster::hierarchy::LevelItem {
            id: self.id,
            centroid: &self.centroid,
            weight: self.weight,
        }
    }
}

/// A standard normal sample (Box–Muller), so no distribution crate is needed for one function.
fn gaussian(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::index::dot;

    #[test]
    fn members_sit_near_their_centre_and_centres_far_apart() {
        let mut space = TopicSpace::new(20, 384, 0.8, 3);
        let a1 = space.member(1);
        let a2 = space.member(1);
        let b = space.member(2);
        let same = dot(&a1, &a2);
        let different = dot(&a1, &b);
        assert!(
            same > 0.55 && same < 0.75,
            "two members of one topic: {same}"
        );
        assert!(different.abs() < 0.2, "members of two topics: {different}");
    }
}
