//! A feature-hashing embedder: word unigrams and bigrams hashed into a fixed number of signed
//! buckets, L2-normalised.
//!
//! It has no model to load, so unit tests of the clustering and detection stages run without the
//! model files. It captures lexical overlap only; the demo and integration tests use MiniLM.

use super::{EmbedError, Embedder};

pub struct HashingEmbedder {
    dimension: usize,
    id: String,
}

impl HashingEmbedder {
    pub fn new(dimension: usize) -> Self {
        let dimension = dimension.max(8);
        HashingEmbedder {
            dimension,
            id: format!("feature-hashing-{dimension}"),
        }
    }

    fn embed_one(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0f32; self.dimension];
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.to_lowercase())
            .collect();
        let mut add = |feature: &str, weight: f32| {
            let h = xxhash_rust::xxh3::xxh3_64(feature.as_bytes());
            let bucket = (h % self.dimension as u64) as usize;
            let sign = if (h >> 63) == 1 { -1.0 } else { 1.0 };
            v[bucket] += sign * weight;
        };
        for w in &words {
            add(w, 1.0);
        }
        for pair in words.windows(2) {
            add(&format!("{} {}", pair[0], pair[1]), 0.5);
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        } else {
            // An empty text still needs a unit vector; a fixed bucket keeps it deterministic.
            v[0] = 1.0;
        }
        v
    }
}

impl Embedder for HashingEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        Ok(texts.iter().map(|t| self.embed_one(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cos(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_and_lexically_meaningful() {
        let e = HashingEmbedder::new(256);
        let v = e
            .embed_batch(&[
                "what is the weather today".into(),
                "what is the weather tomorrow".into(),
                "transfer money to my savings account".into(),
                String::new(),
            ])
            .unwrap();
        for x in &v {
            assert!((cos(x, x) - 1.0).abs() < 1e-5);
        }
        assert!(cos(&v[0], &v[1]) > cos(&v[0], &v[2]));
    }
}
