//! Distinct counting of hashed identities (accounts, orgs) per cluster: an exact set up to a cap,
//! then a HyperLogLog++ sketch.
//!
//! Exact below the cap because the privacy gate and the detector compare these counts with small
//! thresholds (25 accounts) where an estimate would be wrong in the cases that matter. Past the cap
//! the set is folded into a sketch (precision 12: ~1.6% standard error, a few KiB), so memory per
//! cluster stays bounded however popular it gets. Both forms merge, so two clusters that merge keep
//! a correct union count.

use std::cell::RefCell;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

/// Sketch precision: 2^12 registers.
const PRECISION: u8 = 12;

/// Keys are already 64-bit hashes of identities; this finishes them with xxh3 so the sketch sees
/// well-mixed bits whatever the key's origin. Stateless, so a sketch restored from a snapshot hashes
/// exactly as before.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct KeyHasherBuilder;

#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher::default()
    }
}

type Sketch = HyperLogLogPlus<u64, KeyHasherBuilder>;

fn new_sketch() -> Sketch {
    HyperLogLogPlus::new(PRECISION, KeyHasherBuilder).expect("precision 12 is within 4..=18")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DistinctCounter {
    cap: usize,
    members: HashSet<u64>,
    /// Present once the exact set passed the cap; then it holds every key ever inserted and
    /// `members` is empty. A `RefCell` because the crate's estimate needs `&mut` (it folds its
    /// sparse buffer), while readers of a cluster hold `&`.
    sketch: Option<RefCell<Sketch>>,
}

impl DistinctCounter {
    pub fn new(cap: usize) -> Self {
        DistinctCounter {
            cap: cap.max(1),
            members: HashSet::new(),
            sketch: None,
        }
    }

    pub fn insert(&mut self, key: u64) {
        match &mut self.sketch {
            Some(sketch) => sketch.get_mut().insert(&key),
            None => {
                self.members.insert(key);
                if self.members.len() > self.cap {
                    self.fold_into_sketch();
                }
            }
        }
    }

    fn fold_into_sketch(&mut self) {
        let mut sketch = new_sketch();
        for key in self.members.drain() {
            sketch.insert(&key);
        }
        self.members.shrink_to_fit();
        self.sketch = Some(RefCell::new(sketch));
    }

    /// Adds every key `other` has seen (the union), as when two clusters merge.
    pub fn merge(&mut self, other: &DistinctCounter) {
        match (&mut self.sketch, &other.sketch) {
            (_, None) => {
                for key in &other.members {
                    self.insert(*key);
                }
            }
            (None, Some(theirs)) => {
                let mut sketch = theirs.borrow().clone();
                for key in self.members.drain() {
                    sketch.insert(&key);
                }
                self.sketch = Some(RefCell::new(sketch));
            }
            (Some(mine), Some(theirs)) => {
                mine.get_mut()
                    .merge(&*theirs.borrow())
                    .expect("sketches share one precision");
            }
        }
    }

    /// Distinct keys seen: exact up to the cap, a HyperLogLog++ estimate beyond it (never
    /// reported below the cap, which the exact phase proved).
    pub fn count(&self) -> usize {
        match &self.sketch {
            None => self.members.len(),
            Some(sketch) => (sketch.borrow_mut().count().round() as usize).max(self.cap + 1),
        }
    }

    /// The exact-set cap this counter was made with.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Whether the count is an estimate.
    pub fn is_estimate(&self) -> bool {
        self.sketch.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_until_the_cap_then_estimates() {
        let mut c = DistinctCounter::new(100);
        for k in [1, 2, 2, 1, 3] {
            c.insert(k);
        }
        assert_eq!(c.count(), 3);
        assert!(!c.is_estimate());
        for k in 0..20_000u64 {
            c.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        }
        assert!(c.is_estimate());
        let n = c.count() as f64;
        assert!((n - 20_003.0).abs() / 20_003.0 < 0.05, "estimate {n}");
    }

    #[test]
    fn merging_counts_the_union_in_every_form() {
        let keys = |from: u64, to: u64| (from..to).map(|k| k.wrapping_mul(0x2545_F491_4F6C_DD1D));
        // exact + exact, staying exact
        let (mut a, mut b) = (DistinctCounter::new(100), DistinctCounter::new(100));
        keys(0, 30).for_each(|k| a.insert(k));
        keys(20, 50).for_each(|k| b.insert(k));
        a.merge(&b);
        assert_eq!(a.count(), 50);
        assert!(!a.is_estimate());
        // exact + sketch, and sketch + sketch
        let mut big = DistinctCounter::new(100);
        keys(0, 5_000).for_each(|k| big.insert(k));
        let mut small = DistinctCounter::new(100);
        keys(4_990, 5_050).for_each(|k| small.insert(k));
        small.merge(&big);
        let n = small.count() as f64;
        assert!((n - 5_050.0).abs() / 5_050.0 < 0.05, "exact+sketch {n}");
        let mut other = DistinctCounter::new(100);
        keys(5_000, 10_000).for_each(|k| other.insert(k));
        big.merge(&other);
        let n = big.count() as f64;
        assert!((n - 10_000.0).abs() / 10_000.0 < 0.05, "sketch+sketch {n}");
    }

    #[test]
    fn survives_a_serde_round_trip() {
        let mut c = DistinctCounter::new(10);
        (0..1_000u64).for_each(|k| c.insert(k));
        let bytes = postcard::to_stdvec(&c).unwrap();
        let back: DistinctCounter = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.count(), c.count());
    }
}
