//! Distinct counting of hashed identities (accounts, orgs) per cluster.
//!
//! Exact up to a cap, because the privacy gate and the detector compare these counts with small
//! thresholds (25 accounts) where an estimate would be wrong in the cases that matter. Past the cap
//! the set stops growing so memory stays bounded per cluster; the count is then a lower bound.

use std::collections::HashSet;

#[derive(Debug, Clone)]
pub struct DistinctCounter {
    members: HashSet<u64>,
    cap: usize,
    saturated: bool,
}

impl DistinctCounter {
    pub fn new(cap: usize) -> Self {
        DistinctCounter {
            members: HashSet::new(),
            cap: cap.max(1),
            saturated: false,
        }
    }

    pub fn insert(&mut self, key: u64) {
        if self.members.len() < self.cap {
            self.members.insert(key);
        } else if !self.members.contains(&key) {
            self.saturated = true;
        }
    }

    /// Distinct members seen (a lower bound once saturated).
    pub fn count(&self) -> usize {
        self.members.len()
    }

    pub fn is_saturated(&self) -> bool {
        self.saturated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_exactly_until_the_cap() {
        let mut c = DistinctCounter::new(3);
        for k in [1, 2, 2, 1, 3] {
            c.insert(k);
        }
        assert_eq!(c.count(), 3);
        assert!(!c.is_saturated());
        c.insert(4);
        assert_eq!(c.count(), 3);
        assert!(c.is_saturated());
    }
}
