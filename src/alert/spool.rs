//! The bounded queue in front of every network alert sink, on disk so that an outage of
//! Alertmanager, Slack, PagerDuty or Kafka — even one that spans a restart of clusterwatch — does
//! not lose alerts.
//!
//! Each sink owns one directory (`alerts.spool_dir/<sink>/`) holding `queue.jsonl`, an
//! append-only log of `push` lines (a record and its sequence number) and `done` lines (the
//! sequence number of a record that was delivered, superseded, refused or dropped). A record is
//! appended and fsynced before `deliver` returns, and a `done` line is written only once the sink
//! has confirmed delivery, so a record is delivered at least once. Opening the directory replays
//! the log: what was pushed and never done is queued again, in its original order. `done` lines
//! are not fsynced: after a power failure a record may be delivered twice, never zero times. The
//! log is rewritten compactly on open and whenever done lines outnumber queued records, always
//! through a temporary file and a rename, so a crash leaves either the old or the new log.
//!
//! A line that does not parse (a torn write at a crash, a disk error) is skipped, counted in
//! `clusterwatch_alert_spool_errors_total{reason="corrupt_line"}` and logged by line number only.
//!
//! Compaction policy: Alertmanager keeps only the latest state of an alert, so its spool is
//! [`Policy::LatestPerKey`] — a new record replaces any queued record with the same dedup key
//! (after an outage Alertmanager hears the current state once, not the history). Slack, PagerDuty
//! and the Kafka topic are read by people and consumers who must see each trigger, escalation
//! and resolve, so their spools are [`Policy::KeepAll`]. Either way the spool holds at most
//! `alerts.spool_max_records`; beyond that the oldest record is dropped, counted in
//! `clusterwatch_alert_spool_dropped_total{kind}` and logged as an error — an outage long enough
//! to fill the spool should page through some other path, and the newest state is the one worth
//! keeping.
//!
//! Without a directory the same queue lives in memory (same bound, same policy); the sink warns at
//! startup that an outage spanning a restart then loses alerts.
//!
//! Replays after a crash: the detectors' memory is snapshotted with the cluster state, so events
//! read again after a restart produce the same alert records with the same
//! [`AlertRecord::sequence`]. The spool remembers the highest sequence it ever queued (in the
//! push lines, and in a `mark` line that heads a compacted log) and skips a record at or below
//! it, counting it in `clusterwatch_alert_records_replayed_total` — so a crash neither loses a
//! state change nor sends it twice.
//!
//! One process per directory: two processes appending to one log would interleave sequence
//! numbers.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::AlertRecord;
use crate::export::Metrics;

/// The log file inside a sink's spool directory.
pub const QUEUE_FILE: &str = "queue.jsonl";

/// Which queued records a new record replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Every record is delivered.
    KeepAll,
    /// A new record replaces queued records with the same [`AlertRecord::dedup_key`].
    LatestPerKey,
}

/// One queued record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the sink's log; increases by one per push, across restarts.
    pub seq: u64,
    /// Wall-clock time (Unix ms) the record was queued: Alertmanager's `startsAt`/`endsAt` come
    /// from it, so an alert delivered after an outage still carries the time it changed state.
    pub queued_ms: i64,
    /// A firing record for an alert this sink already announced as firing (an escalation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub renotified: bool,
    pub record: AlertRecord,
}

/// One line of `queue.jsonl`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Line {
    Push(Box<Entry>),
    Done {
        seq: u64,
    },
    /// The highest [`AlertRecord::sequence`] this sink ever queued; the first line of a
    /// compacted log, so the mark survives the push lines it replaces.
    Mark {
        record_sequence: u64,
    },
}

struct Log {
    dir: PathBuf,
    file: File,
    /// Lines in the file, to decide when to compact.
    lines: usize,
    /// A write failed, so the file may end in a torn line: rewrite it before appending again.
    broken: bool,
}

/// A sink's bounded queue; on disk when it has a directory.
pub struct Spool {
    sink: &'static str,
    policy: Policy,
    max_records: usize,
    entries: VecDeque<Entry>,
    next_seq: u64,
    /// The first sequence number pushed by this process; lower ones were replayed from disk.
    first_seq_this_run: u64,
    /// The highest record sequence ever queued here (across restarts, when on disk). A record
    /// at or below it was made again by detectors re-reading events after a crash: skipped.
    record_high_water: u64,
    log: Option<Log>,
    metrics: Metrics,
}

impl Spool {
    /// Opens (creating it if needed) the spool in `dir`, or an in-memory one for `None`, and
    /// queues again what an earlier process left undelivered.
    pub fn open(
        dir: Option<&Path>,
        sink: &'static str,
        policy: Policy,
        max_records: usize,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let mut spool = Spool {
            sink,
            policy,
            max_records: max_records.max(1),
            entries: VecDeque::new(),
            next_seq: 1,
            first_seq_this_run: 1,
            record_high_water: 0,
            log: None,
            metrics,
        };
        if let Some(dir) = dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create alert spool {}: {e}", dir.display()))?;
            let loaded = read_log(&dir.join(QUEUE_FILE))?;
            if loaded.corrupt_lines > 0 {
                spool
                    .metrics
                    .alert_spool_errors
                    .with_label_values(&[sink, "corrupt_line"])
                    .inc_by(loaded.corrupt_lines as u64);
            }
            for line in &loaded.corrupt_line_numbers {
                tracing::warn!(sink, line, "skipping a corrupt line in the alert spool");
            }
            spool.next_seq = loaded.max_seq + 1;
            spool.first_seq_this_run = spool.next_seq;
            spool.record_high_water = loaded.record_high_water;
            for entry in loaded.entries.into_values() {
                spool.enqueue(entry);
            }
            spool.log = Some(Log {
                dir: dir.to_path_buf(),
                file: rewrite(dir, &spool.entries, spool.record_high_water)?,
                lines: spool.entries.len(),
                broken: false,
            });
            if !spool.entries.is_empty() {
                tracing::info!(
                    sink,
                    records = spool.entries.len(),
                    "undelivered alerts found in the spool; delivering them first"
                );
            }
        }
        spool.update_gauge();
        Ok(spool)
    }

    /// Queues `record`; on disk, the record is fsynced before this returns. A write failure is
    /// logged and counted, and the record stays queued in memory.
    pub fn push(&mut self, record: AlertRecord, renotified: bool, queued_ms: i64) {
        if record.sequence != 0 {
            if record.sequence <= self.record_high_water {
                self.metrics
                    .alert_records_replayed
                    .with_label_values(&[self.sink])
                    .inc();
                tracing::debug!(
                    sink = self.sink,
                    sequence = record.sequence,
                    "alert record already queued before a restart; skipped"
                );
                return;
            }
            self.record_high_water = record.sequence;
        }
        let entry = Entry {
            seq: self.next_seq,
            queued_ms,
            renotified,
            record,
        };
        self.next_seq += 1;
        let mut lines = vec![Line::Push(Box::new(entry.clone()))];
        let removed = self.enqueue(entry);
        lines.extend(removed.into_iter().map(|seq| Line::Done { seq }));
        self.append(&lines, true);
        self.update_gauge();
    }

    /// Adds `entry` under the policy and the bound; returns the sequence numbers it displaced.
    fn enqueue(&mut self, entry: Entry) -> Vec<u64> {
        let mut removed = Vec::new();
        if self.policy == Policy::LatestPerKey {
            let key = entry.record.dedup_key();
            self.entries.retain(|e| {
                let keep = e.record.dedup_key() != key;
                if !keep {
                    removed.push(e.seq);
                }
                keep
            });
        }
        self.entries.push_back(entry);
        while self.entries.len() > self.max_records {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            removed.push(oldest.seq);
            self.metrics
                .alert_spool_dropped
                .with_label_values(&[self.sink])
                .inc();
            tracing::error!(
                sink = self.sink,
                dedup_key = %oldest.record.dedup_key(),
                status = oldest.record.status.as_str(),
                max_records = self.max_records,
                "alert spool full: dropping the oldest undelivered alert"
            );
        }
        removed
    }

    /// The first `n` queued records, oldest first.
    pub fn head(&self, n: usize) -> Vec<Entry> {
        self.entries.iter().take(n).cloned().collect()
    }

    /// Marks records as finished (delivered, refused or superseded): they are not delivered again,
    /// in this process or after a restart. Unknown sequence numbers are ignored.
    pub fn done(&mut self, seqs: &[u64]) {
        let before = self.entries.len();
        self.entries.retain(|e| !seqs.contains(&e.seq));
        if self.entries.len() == before {
            return;
        }
        let lines: Vec<Line> = seqs.iter().map(|&seq| Line::Done { seq }).collect();
        // No fsync: losing a done line costs a duplicate delivery, and alerts are rare enough
        // that one fsync per push is the budget.
        self.append(&lines, false);
        self.update_gauge();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether the spool survives a restart.
    pub fn is_durable(&self) -> bool {
        self.log.is_some()
    }

    /// Whether `entry` was queued by an earlier process and replayed from disk.
    pub fn from_earlier_run(&self, entry: &Entry) -> bool {
        entry.seq < self.first_seq_this_run
    }

    /// The first sequence number of this process; lower ones were replayed from disk.
    pub fn first_seq_this_run(&self) -> u64 {
        self.first_seq_this_run
    }

    fn append(&mut self, lines: &[Line], sync: bool) {
        let Some(log) = self.log.as_mut() else {
            return;
        };
        let result = if log.broken {
            rewrite(&log.dir, &self.entries, self.record_high_water).map(|file| {
                log.file = file;
                log.lines = self.entries.len();
                log.broken = false;
            })
        } else {
            append_lines(&mut log.file, lines, sync).map(|()| log.lines += lines.len())
        };
        if let Err(e) = result {
            log.broken = true;
            self.metrics
                .alert_spool_errors
                .with_label_values(&[self.sink, "write_failed"])
                .inc();
            tracing::error!(
                sink = self.sink,
                dir = %log.dir.display(),
                error = %e,
                "cannot write the alert spool; queued alerts are kept in memory until it works again"
            );
            return;
        }
        // Compact when finished records dominate the log; keeps replay and disk use bounded.
        if log.lines > 2 * self.entries.len() + 64 {
            match rewrite(&log.dir, &self.entries, self.record_high_water) {
                Ok(file) => {
                    log.file = file;
                    log.lines = self.entries.len();
                }
                Err(e) => {
                    log.broken = true;
                    self.metrics
                        .alert_spool_errors
                        .with_label_values(&[self.sink, "write_failed"])
                        .inc();
                    tracing::error!(sink = self.sink, error = %e, "cannot compact the alert spool");
                }
            }
        }
    }

    fn update_gauge(&self) {
        self.metrics
            .alert_spool_records
            .with_label_values(&[self.sink])
            .set(self.entries.len() as i64);
    }
}

/// The records queued in a spool directory, without changing it (for tests and operators).
pub fn inspect(dir: &Path) -> anyhow::Result<Vec<Entry>> {
    Ok(read_log(&dir.join(QUEUE_FILE))?
        .entries
        .into_values()
        .collect())
}

struct Loaded {
    entries: BTreeMap<u64, Entry>,
    max_seq: u64,
    record_high_water: u64,
    corrupt_lines: usize,
    /// The first few corrupt line numbers, for the log.
    corrupt_line_numbers: Vec<usize>,
}

fn read_log(path: &Path) -> anyhow::Result<Loaded> {
    let mut loaded = Loaded {
        entries: BTreeMap::new(),
        max_seq: 0,
        record_high_water: 0,
        corrupt_lines: 0,
        corrupt_line_numbers: Vec::new(),
    };
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(loaded),
        Err(e) => anyhow::bail!("cannot read alert spool {}: {e}", path.display()),
    };
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        let read = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| anyhow::anyhow!("cannot read alert spool {}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        number += 1;
        let text = buf.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<Line>(text) {
            Ok(Line::Push(entry)) => {
                loaded.max_seq = loaded.max_seq.max(entry.seq);
                loaded.record_high_water = loaded.record_high_water.max(entry.record.sequence);
                loaded.entries.insert(entry.seq, *entry);
            }
            Ok(Line::Done { seq }) => {
                loaded.max_seq = loaded.max_seq.max(seq);
                loaded.entries.remove(&seq);
            }
            Ok(Line::Mark { record_sequence }) => {
                loaded.record_high_water = loaded.record_high_water.max(record_sequence);
            }
            Err(_) => {
                loaded.corrupt_lines += 1;
                if loaded.corrupt_line_numbers.len() < 10 {
                    loaded.corrupt_line_numbers.push(number);
                }
            }
        }
    }
    Ok(loaded)
}

fn append_lines(file: &mut File, lines: &[Line], sync: bool) -> std::io::Result<()> {
    let mut bytes = Vec::new();
    for line in lines {
        serde_json::to_writer(&mut bytes, line)?;
        bytes.push(b'\n');
    }
    // One write per call, so a crash tears at most the last line (skipped as corrupt on load).
    file.write_all(&bytes)?;
    if sync {
        file.sync_data()?;
    }
    Ok(())
}

/// Writes the queued records to a fresh log, atomically replacing the old one; returns the new
/// log opened for appending.
fn rewrite(dir: &Path, entries: &VecDeque<Entry>, record_high_water: u64) -> std::io::Result<File> {
    let path = dir.join(QUEUE_FILE);
    let tmp = dir.join(format!("{QUEUE_FILE}.tmp"));
    {
        let mut file = File::create(&tmp)?;
        let lines: Vec<Line> = (record_high_water > 0)
            .then_some(Line::Mark {
                record_sequence: record_high_water,
            })
            .into_iter()
            .chain(entries.iter().map(|e| Line::Push(Box::new(e.clone()))))
            .collect();
        append_lines(&mut file, &lines, false)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    // The rename is durable only once the directory entry is.
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(&path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertKind, AlertStats, AlertStatus, Severity, SurfaceEvidence};

    fn record(cluster: u64, status: AlertStatus) -> AlertRecord {
        AlertRecord {
            sequence: 0,
            alert_id: format!("a-{cluster}"),
            kind: AlertKind::CoordinatedCluster,
            status,
            severity: Severity::Warning,
            cluster_id: Some(cluster),
            surface: None,
            window_start: "2026-01-01T00:00:00Z".into(),
            event_time: "2026-01-01T00:10:00Z".into(),
            stats: AlertStats::Surface(SurfaceEvidence {
                launch_time: "2026-01-01T00:00:00Z".into(),
                baseline: "own".into(),
                window_conversations: 1,
                baseline_conversations: 1,
                js_divergence: 0.5,
                concern_rate: 0.0,
                baseline_concern_rate: 0.0,
                refusal_rate: 0.0,
                baseline_refusal_rate: 0.0,
                new_clusters: 0,
            }),
            label: "label".into(),
        }
    }

    fn ids(spool: &Spool) -> Vec<(u64, AlertStatus)> {
        spool
            .head(usize::MAX)
            .iter()
            .map(|e| (e.record.cluster_id.unwrap(), e.record.status))
            .collect()
    }

    fn gauge(m: &Metrics, sink: &str) -> i64 {
        m.alert_spool_records.with_label_values(&[sink]).get()
    }

    #[test]
    fn the_bound_drops_the_oldest_and_counts_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let mut spool =
            Spool::open(Some(dir.path()), "slack", Policy::KeepAll, 3, m.clone()).expect("opens");
        for c in 1..=5 {
            spool.push(record(c, AlertStatus::Firing), false, 0);
        }
        assert_eq!(
            ids(&spool),
            vec![
                (3, AlertStatus::Firing),
                (4, AlertStatus::Firing),
                (5, AlertStatus::Firing)
            ]
        );
        assert_eq!(m.alert_spool_dropped.with_label_values(&["slack"]).get(), 2);
        assert_eq!(gauge(&m, "slack"), 3);
        assert_eq!(
            inspect(dir.path()).unwrap().len(),
            3,
            "the drops are on disk too"
        );

        let mut memory = Spool::open(None, "kafka", Policy::KeepAll, 2, m.clone()).unwrap();
        for c in 1..=3 {
            memory.push(record(c, AlertStatus::Firing), false, 0);
        }
        assert_eq!(memory.len(), 2);
        assert!(!memory.is_durable());
        assert_eq!(m.alert_spool_dropped.with_label_values(&["kafka"]).get(), 1);
    }

    #[test]
    fn a_new_spool_on_the_same_directory_replays_what_was_not_done_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        {
            let mut spool = Spool::open(
                Some(dir.path()),
                "pagerduty",
                Policy::KeepAll,
                100,
                m.clone(),
            )
            .unwrap();
            spool.push(record(1, AlertStatus::Firing), false, 10);
            spool.push(record(2, AlertStatus::Firing), false, 20);
            spool.push(record(1, AlertStatus::Resolved), false, 30);
            spool.push(record(2, AlertStatus::Firing), true, 40);
            let first = spool.head(1);
            spool.done(&[first[0].seq]);
        }
        let spool = Spool::open(
            Some(dir.path()),
            "pagerduty",
            Policy::KeepAll,
            100,
            m.clone(),
        )
        .unwrap();
        assert_eq!(
            ids(&spool),
            vec![
                (2, AlertStatus::Firing),
                (1, AlertStatus::Resolved),
                (2, AlertStatus::Firing)
            ]
        );
        let head = spool.head(3);
        assert_eq!(head[0].queued_ms, 20, "queue times survive");
        assert!(head[2].renotified);
        assert!(head.iter().all(|e| spool.from_earlier_run(e)));
        assert_eq!(gauge(&m, "pagerduty"), 3);

        // New pushes continue the sequence and are this run's.
        let mut spool = spool;
        spool.push(record(3, AlertStatus::Firing), false, 50);
        let last = spool.head(4).pop().unwrap();
        assert_eq!(last.seq, 5);
        assert!(!spool.from_earlier_run(&last));
    }

    #[test]
    fn records_replayed_after_a_restart_are_skipped_by_sequence_even_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        let numbered = |c: u64, sequence: u64| AlertRecord {
            sequence,
            ..record(c, AlertStatus::Firing)
        };
        {
            let mut spool =
                Spool::open(Some(dir.path()), "kafka", Policy::KeepAll, 100, m.clone()).unwrap();
            for s in 1..=3 {
                spool.push(numbered(s, s), false, 0);
            }
            // All delivered, then compacted away: only the mark remembers sequence 3.
            let seqs: Vec<u64> = spool.head(10).iter().map(|e| e.seq).collect();
            spool.done(&seqs);
            drop(spool);
            let mut reopened =
                Spool::open(Some(dir.path()), "kafka", Policy::KeepAll, 100, m.clone()).unwrap();
            assert!(reopened.is_empty());
            // The detectors, restored from an older snapshot, make records 2 and 3 again.
            reopened.push(numbered(2, 2), false, 0);
            reopened.push(numbered(3, 3), false, 0);
            assert!(reopened.is_empty(), "replayed records are not queued twice");
            reopened.push(numbered(4, 4), false, 0);
            // Records made outside the detectors carry no sequence and are always queued.
            reopened.push(numbered(5, 0), false, 0);
            assert_eq!(reopened.len(), 2);
        }
        assert_eq!(
            m.alert_records_replayed.with_label_values(&["kafka"]).get(),
            2
        );
    }

    #[test]
    fn latest_per_key_keeps_one_record_per_alert() {
        let m = Metrics::new();
        let mut spool = Spool::open(None, "alertmanager", Policy::LatestPerKey, 10, m).unwrap();
        spool.push(record(1, AlertStatus::Firing), false, 0);
        spool.push(record(2, AlertStatus::Firing), false, 0);
        spool.push(record(1, AlertStatus::Resolved), false, 0);
        assert_eq!(
            ids(&spool),
            vec![(2, AlertStatus::Firing), (1, AlertStatus::Resolved)]
        );
    }

    #[test]
    fn corrupt_and_torn_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metrics::new();
        {
            let mut spool =
                Spool::open(Some(dir.path()), "slack", Policy::KeepAll, 100, m.clone()).unwrap();
            spool.push(record(1, AlertStatus::Firing), false, 0);
            spool.push(record(2, AlertStatus::Firing), false, 0);
        }
        let path = dir.path().join(QUEUE_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        let good = text.lines().last().unwrap().to_string();
        text.push_str("this is not json\n");
        text.push_str("{\"op\":\"push\",\"seq\":9}\n");
        text.push_str("\u{0}\u{1}binary\n");
        // A push torn by a crash: no newline, cut mid-record.
        text.push_str(&good.replace("\"seq\":2", "\"seq\":3")[..good.len() / 2]);
        std::fs::write(&path, text).unwrap();

        let spool = Spool::open(Some(dir.path()), "slack", Policy::KeepAll, 100, m.clone())
            .expect("corrupt lines never fail the open");
        assert_eq!(
            ids(&spool),
            vec![(1, AlertStatus::Firing), (2, AlertStatus::Firing)]
        );
        assert_eq!(
            m.alert_spool_errors
                .with_label_values(&["slack", "corrupt_line"])
                .get(),
            4
        );
        drop(spool);
        // The open rewrote the log, so the same lines are not reported again.
        let _again =
            Spool::open(Some(dir.path()), "slack", Policy::KeepAll, 100, m.clone()).unwrap();
        assert_eq!(
            m.alert_spool_errors
                .with_label_values(&["slack", "corrupt_line"])
                .get(),
            4
        );
    }

    #[test]
    fn the_log_is_compacted_as_records_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(
            Some(dir.path()),
            "kafka",
            Policy::KeepAll,
            1000,
            Metrics::new(),
        )
        .unwrap();
        for c in 0..500 {
            spool.push(record(c, AlertStatus::Firing), false, 0);
            let head = spool.head(1);
            spool.done(&[head[0].seq]);
        }
        let lines = std::fs::read_to_string(dir.path().join(QUEUE_FILE))
            .unwrap()
            .lines()
            .count();
        assert!(lines <= 2 * 64 + 2, "{lines} lines for an empty queue");
        assert!(spool.is_empty());
    }
}
