//! The event-time clock of the cluster stage.
//!
//! Kafka orders messages only within a partition, and a consumer with a backlog can read one
//! partition far ahead of another. Taking the latest event time seen as "now" would then age out
//! the windows of events still queued in the lagging partitions. So, as in Flink and Beam, the
//! clock is the minimum over partitions of each partition's latest event time: it only claims that
//! a moment has passed once every partition has passed it. With one partition (replay) it is
//! simply the latest event time.

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default)]
pub struct EventClock {
    latest_by_partition: BTreeMap<i32, i64>,
}

impl EventClock {
    /// Records that `partition` delivered an event at `event_time_ms`.
    pub fn observe(&mut self, partition: i32, event_time_ms: i64) {
        let latest = self
            .latest_by_partition
            .entry(partition)
            .or_insert(event_time_ms);
        *latest = (*latest).max(event_time_ms);
    }

    /// Event time every partition has reached; `i64::MIN` before any event.
    pub fn now_ms(&self) -> i64 {
        self.latest_by_partition
            .values()
            .copied()
            .min()
            .unwrap_or(i64::MIN)
    }

    /// Latest event time seen on any partition.
    pub fn max_seen_ms(&self) -> i64 {
        self.latest_by_partition
            .values()
            .copied()
            .max()
            .unwrap_or(i64::MIN)
    }

    /// Forgets a partition (after it is revoked), so it no longer holds the clock back.
    pub fn forget(&mut self, partition: i32) {
        self.latest_by_partition.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_follows_the_slowest_partition() {
        let mut c = EventClock::default();
        assert_eq!(c.now_ms(), i64::MIN);
        c.observe(0, 1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.observe(0, 9_000);
        c.observe(1, 2_000);
        assert_eq!(c.now_ms(), 2_000);
        assert_eq!(c.max_seen_ms(), 9_000);
        c.observe(1, 1_500);
        assert_eq!(c.now_ms(), 2_000, "time never goes back");
        c.forget(1);
        assert_eq!(c.now_ms(), 9_000);
    }
}
