//! Rebalance: two `clusterwatch run` processes share a consumer group over four partitions while
//! traffic streams in; a third joins, then one of the first two leaves. Every valid event must end
//! up counted by exactly one process, and every invalid one dead-lettered exactly once.
//!
//! What makes it exact is the hand-over (src/source/kafka.rs): a revoked partition is given up
//! only after the cluster stage has snapshotted everything read from it and its offsets are
//! committed, so the next owner starts exactly where the previous owner's state ends. Each
//! process keeps its own snapshot, whose set of seen conversation keys is compared here: the sets
//! must be disjoint and together hold every valid event.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use clusterwatch::cluster::snapshot;
use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::process::{free_port, metric, sigterm_and_wait, start_run};
use common::*;

const PARTITIONS: i32 = 4;
const ORGANIC: usize = 6_000;
const INVALID: usize = 12;
/// Messages produced per second: slow enough that the joins and the leave happen mid-stream.
const RATE: usize = 400;

struct Instance {
    name: &'static str,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Instance {
    fn new(name: &'static str, root: &Path, topic: &str, dead_letter: &str, group: &str) -> Self {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let config = dir.join("clusterwatch.toml");
        std::fs::write(
            &config,
            format!(
                "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n\
                 dead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
                 [embedder]\nkind = \"static\"\nmodel_dir = \"{model}\"\n\
                 [http]\nlisten = \"127.0.0.1:{port}\"\n\
                 [limits]\nmax_message_bytes = 65536\n\
                 [snapshot]\ndir = \"{snapshots}\"\ninterval_secs = 2\n\
                 [cluster]\ndedup_window_secs = 86400\n",
                bootstrap = kafka_bootstrap(),
                model = repo_root().join("models/all-MiniLM-L6-v2").display(),
                snapshots = dir.join("snapshots").display(),
            ),
        )
        .unwrap();
        Instance {
            name,
            log: dir.join("clusterwatch.log"),
            dir,
            config,
            port,
        }
    }

    fn start(&self) -> Child {
        start_run(&self.config, &self.log)
    }

    fn consumed(&self) -> f64 {
        metric(self.port, "clusterwatch_events_consumed_total").unwrap_or(0.0)
    }

    fn handovers(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("revoked partitions drained, committed and handed over")
            .count()
    }

    /// (clustered events, seen conversation keys) from the process's final snapshot. The dedup
    /// window is set longer than the stream's event time, so no key has expired.
    fn final_state(&self, group: &str) -> (u64, BTreeSet<u64>) {
        let body = snapshot::load(&snapshot::snapshot_path(&self.dir.join("snapshots"), group))
            .unwrap()
            .unwrap_or_else(|| panic!("{} left no snapshot; log: {}", self.name, tail(&self.log)));
        (body.clustered_events, body.seen.keys().collect())
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(40).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn wait_until(what: &str, within: Duration, f: &dyn Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plain test with its own runtime: the polling below uses blocking HTTP.
#[test]
fn a_member_joining_and_one_leaving_count_every_event_exactly_once() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topic = unique("rebalance-conversations");
    let dead_letter = unique("rebalance-dead-letter");
    let group = unique("rebalance-group");
    rt.block_on(create_topics(
        &bootstrap,
        &[(&topic, PARTITIONS), (&dead_letter, 1)],
    ));
    let messages = traffic::generate(&TrafficSpec {
        seed: 2_3_2,
        organic_events: ORGANIC,
        campaign: None,
        invalid_events: INVALID,
        // Re-sent ids would be recognised only by the process that saw the first copy, which a
        // rebalance may not be: that is sharding, not the hand-over this test is about.
        duplicate_events: 0,
        max_message_bytes: 64 * 1024,
        ..Default::default()
    });
    let produced = messages.len();

    let root = tempfile::tempdir().unwrap();
    let a = Instance::new("a", root.path(), &topic, &dead_letter, &group);
    let b = Instance::new("b", root.path(), &topic, &dead_letter, &group);
    let c = Instance::new("c", root.path(), &topic, &dead_letter, &group);
    let child_a = a.start();
    let child_b = b.start();

    // The stream arrives over ~15 s while the group changes under it.
    let producer = {
        let bootstrap = bootstrap.clone();
        let topic = topic.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("producer runtime");
            for chunk in messages.chunks(RATE / 10) {
                let started = Instant::now();
                rt.block_on(produce(&bootstrap, &topic, chunk));
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        })
    };
    let within = Duration::from_secs(300);
    let total = |instances: &[&Instance]| instances.iter().map(|i| i.consumed()).sum::<f64>();
    wait_until("a and b consuming a third", within, &|| {
        total(&[&a, &b]) >= (produced / 3) as f64
    });
    let child_c = c.start();
    wait_until("c taking partitions", within, &|| c.consumed() > 0.0);
    let consumed_at_join = total(&[&a, &b, &c]);
    wait_until("two thirds consumed", within, &|| {
        total(&[&a, &b, &c]) >= (2 * produced / 3) as f64
    });
    let consumed_at_leave = total(&[&a, &b, &c]);
    let consumed_by_b = b.consumed();
    let code = sigterm_and_wait(child_b, Duration::from_secs(120));
    assert_eq!(code, 0, "b leaves cleanly; log: {}", tail(&b.log));
    producer.join().expect("producer");

    wait_until("the group committed everything", within, &|| {
        try_committed_and_end(&bootstrap, &group, &topic, PARTITIONS)
            .is_ok_and(|(committed, end)| committed == end)
    });
    let consumed_by_a = a.consumed();
    let consumed_by_c = c.consumed();
    assert_eq!(sigterm_and_wait(child_a, Duration::from_secs(120)), 0);
    assert_eq!(sigterm_and_wait(child_c, Duration::from_secs(120)), 0);

    let expected = (produced - INVALID) as u64;
    let states: Vec<(&str, u64, BTreeSet<u64>)> = [&a, &b, &c]
        .iter()
        .map(|i| {
            let (clustered, keys) = i.final_state(&group);
            (i.name, clustered, keys)
        })
        .collect();
    let clustered: u64 = states.iter().map(|(_, n, _)| n).sum();
    let union: BTreeSet<u64> = states
        .iter()
        .flat_map(|(_, _, k)| k.iter().copied())
        .collect();
    let key_total: usize = states.iter().map(|(_, _, k)| k.len()).sum();
    let (_, dead_lettered) = committed_and_end(&bootstrap, &unique("dl-reader"), &dead_letter, 1);
    let consumed = consumed_by_a + consumed_by_b + consumed_by_c;
    println!(
        "rebalance: produced {produced} ({ORGANIC} valid, {INVALID} invalid) over {PARTITIONS} \
         partitions; c joined at {consumed_at_join} consumed, b left at {consumed_at_leave}; \
         consumed {consumed} (a={consumed_by_a} b>={consumed_by_b} c={consumed_by_c}); clustered {} \
         (a={}, b={}, c={}), expected {expected}; counted twice {}, lost {}; dead-lettered \
         {dead_lettered}; hand-overs a={} b={} c={}",
        clustered,
        states[0].1,
        states[1].1,
        states[2].1,
        key_total - union.len(),
        expected.saturating_sub(union.len() as u64),
        a.handovers(),
        b.handovers(),
        c.handovers(),
    );
    assert!(
        a.handovers() >= 1 && c.handovers() >= 1,
        "the group rebalanced through the hand-over (a and c each gave partitions up at least once)"
    );
    assert_eq!(
        key_total,
        union.len(),
        "no conversation counted by two processes"
    );
    assert_eq!(union.len() as u64, expected, "every valid event counted");
    assert_eq!(clustered, expected, "clustered totals add up to the stream");
    assert_eq!(
        dead_lettered as usize, INVALID,
        "each invalid message dead-lettered once"
    );
}
