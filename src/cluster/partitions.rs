//! Feeds the consumer group's view of its partitions into the cluster state's event clock.
//!
//! The source publishes two things through [`PartitionAssignment`]: the partitions this instance
//! owns, and partitions it has read to their end (with the last offset read). This type applies
//! ownership changes before the next event is clustered, and marks a partition idle in the clock
//! once the stage has processed everything the source read from it: from then on it holds no
//! event the clock must wait for, until it delivers again.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::ClusterState;
use crate::source::{PartitionAssignment, SourcePosition};

pub struct PartitionFeed {
    shared: Arc<PartitionAssignment>,
    generation: Option<u64>,
    processed: BTreeMap<i32, i64>,
    /// Read to the end at these offsets, not yet all processed.
    read_to_end: BTreeMap<i32, i64>,
}

impl PartitionFeed {
    pub fn new(shared: Arc<PartitionAssignment>) -> Self {
        PartitionFeed {
            shared,
            generation: None,
            processed: BTreeMap::new(),
            read_to_end: BTreeMap::new(),
        }
    }

    /// Call before clustering each event, with the position of the event finished before it
    /// (clustered, skipped or rejected). The rebalance callback runs before the source reads a
    /// newly assigned partition, so what this applies is never older than the event in hand.
    pub fn before_event(&mut self, finished: Option<SourcePosition>, state: &mut ClusterState) {
        if let Some(position) = finished {
            let last = self.processed.entry(position.partition).or_insert(i64::MIN);
            *last = (*last).max(position.offset);
        }
        let generation = self.shared.generation();
        if self.generation != Some(generation) {
            self.generation = Some(generation);
            state.set_owned_partitions(self.shared.owned());
            self.read_to_end.extend(self.shared.take_read_to_end());
        }
        self.mark_drained_partitions_idle(state);
    }

    fn mark_drained_partitions_idle(&mut self, state: &mut ClusterState) {
        let processed = &self.processed;
        self.read_to_end.retain(|partition, last_read| {
            let drained = *last_read < 0
                || processed
                    .get(partition)
                    .is_some_and(|done| done >= last_read);
            if drained {
                state.partition_idle(*partition);
            }
            !drained
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::state::tests::{meta, summary};
    use crate::config::ClusterSettings;

    fn clustered(state: &mut ClusterState, partition: i32, key: u64, t: i64) {
        let meta = meta(&format!("c{key}"), &format!("a{key}"), t);
        state
            .assign(partition, &meta, &summary("a request"), &[1.0, 0.0])
            .unwrap();
    }

    #[test]
    fn a_partition_read_to_its_end_releases_the_clock_once_its_events_are_processed() {
        let shared = Arc::new(PartitionAssignment::default());
        let mut feed = PartitionFeed::new(shared.clone());
        let mut state = ClusterState::new(ClusterSettings::default(), 2, "test");
        shared.assign([0, 1, 2]);
        feed.before_event(None, &mut state);
        clustered(&mut state, 0, 1, 1_000);
        feed.before_event(
            Some(SourcePosition {
                partition: 0,
                offset: 0,
            }),
            &mut state,
        );
        clustered(&mut state, 0, 2, 5_000);
        assert_eq!(
            state.clock_ms(),
            i64::MIN,
            "partitions 1 and 2 not heard from"
        );
        // Partition 2 is empty; partition 1 was read to its end at offset 7, not yet processed.
        shared.read_to_end(2, -1);
        shared.read_to_end(1, 7);
        feed.before_event(
            Some(SourcePosition {
                partition: 0,
                offset: 1,
            }),
            &mut state,
        );
        assert_eq!(state.clock_ms(), i64::MIN);
        clustered(&mut state, 1, 3, 3_000);
        feed.before_event(
            Some(SourcePosition {
                partition: 1,
                offset: 7,
            }),
            &mut state,
        );
        assert_eq!(
            state.clock_ms(),
            5_000,
            "partition 1 is drained; partition 0 leads"
        );
    }
}
