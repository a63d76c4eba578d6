//! What the consumer tells the cluster stage's event clock: which partitions this instance owns,
//! and which of them have nothing left to read.
//!
//! The rebalance callback writes the owned set; the clock waits for every owned partition (one
//! whose first message is still queued must not let time run past it) and stops waiting for
//! partitions the group moved elsewhere. The source also checks the brokers' high watermarks
//! now and then, and reports each partition it has read to the end, with the last offset it read
//! there; once the cluster stage has processed that far, the partition stops holding the clock
//! until it delivers again. That keeps an empty or quiet partition from freezing every window.
//! A generation counter lets the cluster stage notice any change with one atomic load per event.
//!
//! It also carries the hand-over of a rebalance: while partitions are being revoked, the source
//! raises a flush request (take a snapshot now, do not wait for the interval) and waits until the
//! acknowledged offsets of every revoked partition reach what it forwarded, so that it can commit
//! them before the group hands the partitions to someone else.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Debug, Default)]
pub struct PartitionAssignment {
    owned: Mutex<BTreeSet<i32>>,
    /// Partitions read to their end, with the last offset read there (-1: none read).
    idle: Mutex<BTreeMap<i32, i64>>,
    generation: AtomicU64,
    /// Per partition, the last offset acknowledged to the consumer (its effect is durable).
    acknowledged: Mutex<BTreeMap<i32, i64>>,
    /// Raised while a revocation waits for the cluster stage to make its effects durable.
    flush_requested: AtomicBool,
}

impl PartitionAssignment {
    /// Partitions handed to this instance (eager protocols hand the whole set, cooperative ones
    /// the increment; both are additions).
    pub fn assign(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        owned.extend(partitions);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Partitions taken away from this instance.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut owned = self.owned.lock().unwrap_or_else(|p| p.into_inner());
        for p in partitions {
            owned.remove(&p);
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The source has read `partition` to its end; `last_read` is the last offset it read there
    /// (-1 when it read none).
    pub fn read_to_end(&self, partition: i32, last_read: i64) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partition, last_read);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Partitions reported read to their end since the last call.
    pub fn take_read_to_end(&self) -> BTreeMap<i32, i64> {
        std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Bumped on every change; compare with a remembered value to skip the lock.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn owned(&self) -> BTreeSet<i32> {
        self.owned.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The source's acknowledger records each offset it stored.
    pub fn acknowledged(&self, partition: i32, offset: i64) {
        let mut acknowledged = self.acknowledged.lock().unwrap_or_else(|p| p.into_inner());
        let last = acknowledged.entry(partition).or_insert(offset);
        *last = (*last).max(offset);
    }

    /// The last offset acknowledged on `partition` by this process, if any.
    pub fn acknowledged_through(&self, partition: i32) -> Option<i64> {
        self.acknowledged
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&partition)
            .copied()
    }

    /// Asks the cluster stage to make everything it processed durable now (snapshot and
    /// acknowledge) instead of at its next interval; stays raised until [`Self::flush_done`].
    pub fn request_flush(&self) {
        self.flush_requested.store(true, Ordering::Release);
    }

    pub fn flush_done(&self) {
        self.flush_requested.store(false, Ordering::Release);
    }

    pub fn flush_requested(&self) -> bool {
        self.flush_requested.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_offsets_only_move_forward_and_the_flush_request_is_level_triggered() {
        let a = PartitionAssignment::default();
        assert_eq!(a.acknowledged_through(3), None);
        a.acknowledged(3, 10);
        a.acknowledged(3, 7);
        assert_eq!(a.acknowledged_through(3), Some(10));
        assert!(!a.flush_requested());
        a.request_flush();
        assert!(a.flush_requested());
        assert!(a.flush_requested(), "reading the request does not clear it");
        a.flush_done();
        assert!(!a.flush_requested());
    }

    #[test]
    fn assignment_tracks_adds_and_removals_with_a_generation() {
        let a = PartitionAssignment::default();
        let g0 = a.generation();
        a.assign([0, 1, 2]);
        assert!(a.generation() > g0);
        a.revoke([1]);
        a.assign([5]);
        assert_eq!(a.owned().into_iter().collect::<Vec<_>>(), vec![0, 2, 5]);
    }
}
