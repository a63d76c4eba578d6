//! Remembers which conversation ids are already in cluster state, so a redelivered message (after
//! a crash, a rebalance or a producer retry) is acknowledged without being counted again.
//!
//! Memory is bounded by event time: ids are kept in hourly buckets and a bucket is dropped once it
//! is older than the retention window behind the watermark. A redelivery older than the window
//! would be counted again; Kafka redelivers within seconds to minutes (after a restart, from the
//! last committed offset, which trails the snapshot by at most one snapshot interval), so the
//! default window is an hour: memory is about 10 bytes × event rate × 1–2 windows (36 MB at
//! 1,000 events/s). Keys are 64-bit hashes, so two ids collide with probability ~n²/2⁶⁵ (~3·10⁻⁶ at 10M).

use std::collections::{HashSet, VecDeque};

const BUCKET_MS: i64 = 3_600_000;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SeenConversations {
    retention_ms: i64,
    /// (bucket start, keys first seen in that bucket), oldest first.
    buckets: VecDeque<(i64, HashSet<u64>)>,
}

impl SeenConversations {
    pub fn new(retention_secs: i64) -> Self {
        SeenConversations {
            retention_ms: retention_secs.max(1) * 1000,
            buckets: VecDeque::new(),
        }
    }

    /// Records `key` at `event_time_ms`; returns false if it was already recorded.
    pub fn first_sighting(&mut self, key: u64, event_time_ms: i64) -> bool {
        if self.buckets.iter().any(|(_, keys)| keys.contains(&key)) {
            return false;
        }
        let bucket = event_time_ms.div_euclid(BUCKET_MS) * BUCKET_MS;
        match self.buckets.iter_mut().find(|(start, _)| *start == bucket) {
            Some((_, keys)) => {
                keys.insert(key);
            }
            None => {
                let pos = self.buckets.partition_point(|(start, _)| *start < bucket);
                self.buckets.insert(pos, (bucket, HashSet::from([key])));
            }
        }
        true
    }

    /// Drops buckets wholly older than the retention window behind `watermark_ms`.
    pub fn expire(&mut self, watermark_ms: i64) {
        while let Some((start, _)) = self.buckets.front() {
            if start + BUCKET_MS < watermark_ms - self.retention_ms {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Every key remembered (hashed conversation ids, never the ids themselves).
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.buckets
            .iter()
            .flat_map(|(_, keys)| keys.iter().copied())
    }

    pub fn len(&self) -> usize {
        self.buckets.iter().map(|(_, k)| k.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redelivery_is_detected_and_old_ids_expire() {
        let mut s = SeenConversations::new(2 * 3600);
        assert!(s.first_sighting(7, 0));
        assert!(!s.first_sighting(7, 10));
        assert!(s.first_sighting(8, 5 * BUCKET_MS));
        // Out-of-order arrival lands in its own bucket and is still found.
        assert!(s.first_sighting(9, BUCKET_MS));
        assert!(!s.first_sighting(9, 6 * BUCKET_MS));
        s.expire(5 * BUCKET_MS);
        assert!(
            s.first_sighting(7, 5 * BUCKET_MS),
            "expired after retention"
        );
        assert_eq!(s.len(), 2, "the 1h bucket expired with key 9");
    }
}
