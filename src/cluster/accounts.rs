//! Which accounts are new: a bounded memory of accounts seen before, in event time.
//!
//! Spam networks and scripted misuse run on throwaway accounts; an organic wave (everyone asking
//! for the weather during a storm) comes from the existing user base. So the coordinated detector
//! asks, for each join, whether its account is fresh — not seen before the current period. Keeping
//! every account id would grow with traffic, so two Bloom filters stand in for it: `recent` holds
//! accounts seen in the current period (`period_ms` of event time), `established` everything seen
//! in earlier periods. At each period boundary `recent` is folded into `established` and cleared.
//! A join is fresh when its account is not in `established`: first seen within the last one to
//! two periods.
//!
//! Until the history covers one whole period, nothing is fresh: at start-up every account is new
//! to the process, not to the product, and calling them all fresh would page for organic traffic.
//!
//! Errors go one way: a false positive of the filter calls a fresh account established, which can
//! only make the detector more cautious. With 2^24 bits and 3 hashes per filter (4 MiB for both),
//! one million established accounts give about a 3.5% false-positive rate; the filter never
//! resets, so at several million accounts the fresh signal fades rather than fails.

use serde::{Deserialize, Serialize};

const BITS_LOG2: u32 = 24;
const WORDS: usize = (1usize << BITS_LOG2) / 64;
const HASHES: u64 = 3;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Bloom {
    words: Vec<u64>,
}

impl Bloom {
    fn new() -> Self {
        Bloom {
            words: vec![0; WORDS],
        }
    }

    fn positions(key: u64) -> impl Iterator<Item = usize> {
        // Double hashing over a 64-bit mix of the (already hashed) account key.
        let h1 = xxhash_rust::xxh3::xxh3_64(&key.to_le_bytes());
        let h2 = h1.rotate_left(32) | 1;
        (0..HASHES).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) >> (64 - BITS_LOG2)) as usize)
    }

    fn contains(&self, key: u64) -> bool {
        Self::positions(key).all(|p| self.words[p / 64] >> (p % 64) & 1 == 1)
    }

    fn insert(&mut self, key: u64) {
        for p in Self::positions(key) {
            self.words[p / 64] |= 1 << (p % 64);
        }
    }

    fn absorb(&mut self, other: &Bloom) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountHistory {
    established: Bloom,
    recent: Bloom,
    period_ms: i64,
    /// Start of the current period; `None` before the first event.
    period_start_ms: Option<i64>,
    /// Whether a whole period has been seen (until then nothing is fresh).
    mature: bool,
}

impl AccountHistory {
    pub fn new(period_secs: i64) -> Self {
        AccountHistory {
            established: Bloom::new(),
            recent: Bloom::new(),
            period_ms: period_secs.max(1).saturating_mul(1000),
            period_start_ms: None,
            mature: false,
        }
    }

    /// Records that `account_key` was active at `at_ms` (the event's time; an event older than
    /// the current period simply counts in it) and returns whether it is fresh.
    pub fn observe(&mut self, account_key: u64, at_ms: i64) -> bool {
        let start = *self.period_start_ms.get_or_insert(at_ms);
        if at_ms.saturating_sub(start) >= self.period_ms {
            self.established.absorb(&self.recent);
            self.recent.clear();
            let periods = (at_ms - start) / self.period_ms;
            self.period_start_ms = Some(start + periods * self.period_ms);
            self.mature = true;
        }
        let fresh = self.mature && !self.established.contains(account_key);
        self.recent.insert(account_key);
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_stay_fresh_for_a_period_and_are_established_after() {
        let mut h = AccountHistory::new(3600);
        assert!(
            !h.observe(1, 0),
            "nothing is fresh before a whole period was seen"
        );
        assert!(!h.observe(2, 3_000_000));
        assert!(!h.observe(1, 3_700_000), "a period later: established");
        assert!(h.observe(3, 3_700_000), "a new account is fresh");
        assert!(h.observe(3, 4_000_000), "same period: still fresh");
        assert!(!h.observe(3, 7_300_000), "established a period later");
        let fresh = (1000..2000u64)
            .filter(|k| h.observe(*k * 7919, 7_400_000))
            .count();
        assert!(
            fresh >= 995,
            "few false positives on an almost empty filter: {fresh}"
        );
    }
}
