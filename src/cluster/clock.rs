//! The event-time clock of the cluster stage.
//!
//! Kafka orders messages only within a partition, and a consumer with a backlog may read one
//! partition to its end before it starts the next. Taking the latest event time seen as "now"
//! would age out the windows of events still queued in the other partitions. So, as in Flink and
//! Beam, the clock is the minimum over partitions of each partition's latest event time: it claims
//! a moment has passed only once every partition has passed it.
//!
//! Three refinements make that work in a consumer group:
//! - **Owned partitions are awaited.** When the source says which partitions this instance owns,
//!   one not yet heard from keeps the clock from moving: it may hold the earliest events of all.
//!   Without this, a partition whose first batch arrives late would pull the clock backwards and
//!   a detector would see one campaign withdraw and reappear.
//! - **Idle partitions are not awaited.** When the source reports that a partition has nothing
//!   left to read (its high watermark is reached) and the stage has processed all it delivered,
//!   the partition stops holding the clock until it delivers again. An empty or quiet partition
//!   cannot hold events that do not exist.
//! - **Monotonic.** The clock never goes back; an event behind it is late and is clustered
//!   without reopening windows.
//!
//! With one partition (replay) it is simply the latest event time.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EventClock {
    latest_by_partition: BTreeMap<i32, i64>,
    /// `Some` once the source has said which partitions this instance owns.
    owned: Option<BTreeSet<i32>>,
    idle: BTreeSet<i32>,
    now_ms: i64,
}

impl Default for EventClock {
    fn default() -> Self {
        EventClock {
            latest_by_partition: BTreeMap::new(),
            owned: None,
            idle: BTreeSet::new(),
            now_ms: i64::MIN,
        }
    }
}

impl EventClock {
    /// Records that `partition` delivered an event at `event_time_ms`.
    pub fn observe(&mut self, partition: i32, event_time_ms: i64) {
        if let Some(owned) = &self.owned {
            if !owned.contains(&partition) {
                // Still in flight from a partition the group has moved away: the event counts,
                // but the clock must not wait for a partition this instance lost.
                return;
            }
        }
        self.idle.remove(&partition);
        let latest = self
            .latest_by_partition
            .entry(partition)
            .or_insert(event_time_ms);
        *latest = (*latest).max(event_time_ms);
        self.advance();
    }

    /// The partitions this instance now owns; others stop holding the clock back.
    /// The clock as restored from a snapshot: times are kept, but which partitions this process
    /// owns, and which of them are idle, is learned afresh from the source.
    pub fn restored(mut self) -> Self {
        self.owned = None;
        self.idle.clear();
        self
    }

    pub fn set_owned(&mut self, owned: BTreeSet<i32>) {
        self.latest_by_partition.retain(|p, _| owned.contains(p));
        self.idle.retain(|p| owned.contains(p));
        self.owned = Some(owned);
        self.advance();
    }

    /// `partition` has delivered everything it had; it holds the clock again once it delivers.
    pub fn mark_idle(&mut self, partition: i32) {
        self.idle.insert(partition);
        self.advance();
    }

    fn advance(&mut self) {
        let mut slowest: Option<i64> = None;
        let mut consider = |t: i64| slowest = Some(slowest.map_or(t, |s| s.min(t)));
        match &self.owned {
            Some(owned) => {
                for p in owned.iter().filter(|p| !self.idle.contains(p)) {
                    match self.latest_by_partition.get(p) {
                        Some(&t) => consider(t),
                        // Not heard from and not known to be empty: wait for it.
                        None => return,
                    }
                }
            }
            None => {
                for (p, &t) in &self.latest_by_partition {
                    if !self.idle.contains(p) {
                        consider(t);
                    }
                }
            }
        }
        // Every partition idle: nothing older can arrive, so the latest event seen is "now".
        if let Some(t) = slowest.or_else(|| self.latest_by_partition.values().copied().max()) {
            self.now_ms = self.now_ms.max(t);
        }
    }

    /// Event time every live partition has reached; `i64::MIN` before that is known.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Latest event time seen on any partition.
    pub fn max_seen_ms(&self) -> i64 {
        self.latest_by_partition
            .values()
            .copied()
            .max()
            .unwrap_or(self.now_ms)
            .max(self.now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owning(partitions: &[i32]) -> EventClock {
        let mut c = EventClock::default();
        c.set_owned(partitions.iter().copied().collect());
        c
    }

    #[test]
    fn the_clock_follows_the_slowest_partition() {
        let mut c = EventClock::default();
        assert_eq!(c.now_ms(), i64::MIN);
        c.observe(0, 1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.observe(1, 2_000);
        assert_eq!(c.now_ms(), 1_000);
        c.observe(0, 9_000);
        assert_eq!(c.now_ms(), 2_000);
        assert_eq!(c.max_seen_ms(), 9_000);
        c.observe(1, 1_500);
        assert_eq!(c.now_ms(), 2_000, "time never goes back");
        c.observe(1, 5_000);
        assert_eq!(c.now_ms(), 5_000);
    }

    #[test]
    fn an_owned_partition_not_yet_heard_from_holds_the_clock_however_far_the_others_run() {
        let mut c = owning(&[0, 1]);
        c.observe(0, 10_000);
        c.observe(0, 10_000_000);
        assert_eq!(
            c.now_ms(),
            i64::MIN,
            "partition 1 may still hold the earliest events"
        );
        c.observe(1, 8_000);
        assert_eq!(c.now_ms(), 8_000);
        c.observe(1, 20_000_000);
        assert_eq!(c.now_ms(), 10_000_000);
    }

    #[test]
    fn an_idle_partition_stops_holding_the_clock_until_it_delivers_again() {
        let mut c = owning(&[0, 1]);
        c.observe(0, 10_000);
        c.mark_idle(1);
        assert_eq!(c.now_ms(), 10_000, "partition 1 turned out to be empty");
        c.observe(1, 12_000);
        c.observe(0, 30_000);
        assert_eq!(
            c.now_ms(),
            12_000,
            "partition 1 delivers again, so it is awaited again"
        );
        c.mark_idle(0);
        c.mark_idle(1);
        assert_eq!(c.now_ms(), 30_000, "all idle: the latest event is now");
        c.observe(1, 20_000);
        assert_eq!(
            c.now_ms(),
            30_000,
            "a late event never pulls the clock back"
        );
    }

    #[test]
    fn revoked_partitions_stop_holding_the_clock_and_in_flight_events_do_not_revive_them() {
        let mut c = owning(&[0, 1]);
        c.observe(0, 5_000);
        c.observe(1, 1_000);
        assert_eq!(c.now_ms(), 1_000);
        c.set_owned([0].into_iter().collect());
        assert_eq!(c.now_ms(), 5_000);
        c.observe(1, 2_000);
        c.observe(0, 6_000);
        assert_eq!(c.now_ms(), 6_000);
    }
}
