//! Decides when the cluster stage snapshots, writes snapshots off the hot path, and acknowledges
//! source offsets only once a snapshot holding their events is durable.
//!
//! The cluster stage encodes the state itself (a consistent cut needs the state to stand still),
//! then hands the bytes to one writer thread through a one-slot channel. If the writer is still
//! busy with the previous snapshot, the stage simply tries again later, so a slow disk delays
//! snapshots, never events. A failed write is logged and counted and its offsets stay
//! unacknowledged: after a crash those events are read again, never lost. Acknowledged offsets
//! are committed at once, not at the next periodic commit, so the span in which the broker's
//! committed offsets trail the newest snapshot is one commit round trip.
//!
//! A snapshot also waits until every alert record the detectors emitted has been handed to the
//! sinks (network sinks fsync it in their spool first). Otherwise a crash right after the
//! snapshot would lose the records still in the channel: the restored detectors remember making
//! them and would not make them again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::snapshot::{encode, write_atomically};
use super::ClusterState;
use crate::detect::Detectors;
use crate::export::Metrics;
use crate::source::{OffsetAcker, SourcePosition};

/// How long the final snapshot waits for the alert stage to hand its last records to the sinks.
const FINAL_ALERTS_WAIT: Duration = Duration::from_secs(30);

struct Job {
    bytes: Vec<u8>,
    /// The last processed position per partition this snapshot covers.
    covers: Vec<SourcePosition>,
}

pub struct Snapshotter {
    path: PathBuf,
    source_topic: String,
    interval: Duration,
    every_events: u64,
    /// Last processed offset per partition (including rejected messages).
    processed: BTreeMap<i32, i64>,
    since_last: u64,
    last_taken: Instant,
    writer: Option<(SyncSender<Job>, std::thread::JoinHandle<()>)>,
    /// The highest alert sequence the alert stage has handed to every sink.
    alerts_handed_over: Arc<AtomicU64>,
    metrics: Metrics,
}

impl Snapshotter {
    /// `resumed` are the offsets (next to read) of the snapshot the state was loaded from, so
    /// partitions without new messages keep their place in the next snapshot.
    pub fn new(
        path: PathBuf,
        source_topic: &str,
        settings: &crate::config::SnapshotSettings,
        resumed: &BTreeMap<i32, i64>,
        acker: Arc<dyn OffsetAcker>,
        alerts_handed_over: Arc<AtomicU64>,
        metrics: Metrics,
    ) -> Self {
        let (tx, rx) = sync_channel::<Job>(1);
        let writer_path = path.clone();
        let writer_metrics = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                for job in rx {
                    let started = Instant::now();
                    match write_atomically(&writer_path, &job.bytes) {
                        Ok(()) => {
                            for position in job.covers {
                                acker.ack(position);
                            }
                            acker.commit_now();
                            writer_metrics
                                .observe_stage("snapshot", started.elapsed().as_secs_f64());
                            writer_metrics.snapshot_bytes.set(job.bytes.len() as i64);
                            writer_metrics.snapshot_last_success.set(
                                std::time::SystemTime::now()
                                    .duration_since(std::time::UNIX_EPOCH)
                                    .map_or(0.0, |d| d.as_secs_f64()),
                            );
                        }
                        Err(e) => {
                            writer_metrics
                                .stage_errors
                                .with_label_values(&["snapshot"])
                                .inc();
                            tracing::error!(path = %writer_path.display(), error = %e, "snapshot write failed; offsets stay unacknowledged");
                        }
                    }
                }
            })
            .expect("spawning the snapshot writer thread");
        Snapshotter {
            path,
            source_topic: source_topic.to_string(),
            interval: Duration::from_secs(settings.interval_secs.max(1)),
            every_events: settings.every_events.max(1),
            processed: resumed.iter().map(|(p, next)| (*p, next - 1)).collect(),
            since_last: 0,
            last_taken: Instant::now(),
            writer: Some((tx, handle)),
            alerts_handed_over,
            metrics,
        }
    }

    /// Records that `position` is processed (its effect is in `state`, or it was rejected).
    pub fn processed(&mut self, position: SourcePosition) {
        let last = self.processed.entry(position.partition).or_insert(-1);
        *last = (*last).max(position.offset);
        self.since_last += 1;
    }

    /// Takes a snapshot if one is due and the writer is free.
    pub fn maybe_snapshot(&mut self, state: &ClusterState, detector: &Detectors) {
        if self.since_last < self.every_events && self.last_taken.elapsed() < self.interval {
            return;
        }
        // The snapshot would wait for the background rebuild to carry it: try at a later event.
        if state.hierarchy_in_flight() {
            return;
        }
        self.snapshot_now(state, detector);
    }

    /// Takes a snapshot of anything processed since the last one, without waiting for the
    /// interval, if the writer is free (a rebalance hands partitions over this way).
    pub fn snapshot_now(&mut self, state: &ClusterState, detector: &Detectors) {
        if self.since_last == 0 || !self.alerts_delivered(detector) {
            return;
        }
        let job = self.job(state, detector);
        let Some((tx, _)) = &self.writer else { return };
        match tx.try_send(job) {
            Ok(()) => {
                self.since_last = 0;
                self.last_taken = Instant::now();
            }
            // Busy: try again at the next event.
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {
                tracing::error!("snapshot writer stopped; no further snapshots");
                self.writer = None;
            }
        }
    }

    /// Whether every alert record the detectors emitted is in the sinks. A snapshot counting a
    /// record still in the channel would, after a crash, neither hold it nor make it again.
    fn alerts_delivered(&self, detector: &Detectors) -> bool {
        self.alerts_handed_over.load(Ordering::Acquire) >= detector.emitted()
    }

    fn job(&self, state: &ClusterState, detector: &Detectors) -> Job {
        let started = Instant::now();
        let offsets = self.processed.iter().map(|(p, o)| (*p, o + 1)).collect();
        let mut body = state.to_snapshot(&self.source_topic, offsets);
        body.detector = Some(detector.snapshot());
        let bytes = encode(&body);
        self.metrics
            .observe_stage("snapshot_encode", started.elapsed().as_secs_f64());
        Job {
            bytes,
            covers: self
                .processed
                .iter()
                .filter(|(_, o)| **o >= 0)
                .map(|(p, o)| SourcePosition {
                    partition: *p,
                    offset: *o,
                })
                .collect(),
        }
    }

    /// Writes a final snapshot (if anything changed) and waits for the writer to finish, so
    /// every acknowledgement is made before the source commits.
    pub fn finish(mut self, state: &ClusterState, detector: &Detectors) {
        // The alert stage is still draining its channel; give it the time sinks get to close.
        let deadline = Instant::now() + FINAL_ALERTS_WAIT;
        while !self.alerts_delivered(detector) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.alerts_delivered(detector) {
            tracing::error!(
                "alert records still undelivered at shutdown; no final snapshot, so their events \
                 are read again at the next start"
            );
            self.since_last = 0;
        }
        let job = (self.since_last > 0).then(|| self.job(state, detector));
        if let Some((tx, handle)) = self.writer.take() {
            if let Some(job) = job {
                if tx.send(job).is_err() {
                    tracing::error!(path = %self.path.display(), "snapshot writer stopped before the final snapshot");
                }
            }
            drop(tx);
            let _ = handle.join();
        }
    }
}
