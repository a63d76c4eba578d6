//! Scale-out on the real broker: two `run --role enrich` and two `run --role cluster` processes
//! over four partitions, one cluster process killed with SIGKILL mid-stream. Its shards must fail
//! over to the other, which restores their snapshots from the shared snapshot directory, and the
//! result must equal a single-process `run` of the same stream: every valid event counted exactly
//! once, by exactly one shard. The cluster count differs by the documented effect of sharding
//! (clusters straddling a codebook cell boundary are split); the test prints both.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterwatch::cluster::snapshot;
use clusterwatch::demo::traffic::{self, TrafficSpec};
use clusterwatch::scale::shards::shard_snapshot_path;
use common::process::{free_port, metric, sigkill, sigterm_and_wait};
use common::*;

const PARTITIONS: i32 = 4;
const ORGANIC: usize = 3_000;
const INVALID: usize = 8;
/// Messages produced per second: the kill must land mid-stream.
const RATE: usize = 300;

struct Topics {
    conversations: String,
    enriched: String,
    dead_letter: String,
}

/// One process's config: the shared parts plus its own `/metrics` port. The dedup window outlasts
/// the stream's event time, so the snapshots' seen keys are every event's.
fn write_config(
    dir: &Path,
    name: &str,
    group: &str,
    topics: &Topics,
    extra: &str,
) -> (PathBuf, u16) {
    let port = free_port();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{conversations}\"\n\
             dead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
             [embedder]\nkind = \"static\"\nmodel_dir = \"{model}\"\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\
             [limits]\nmax_message_bytes = 65536\n\
             [cluster]\ndedup_window_secs = 86400\n{extra}",
            bootstrap = kafka_bootstrap(),
            conversations = topics.conversations,
            dead_letter = topics.dead_letter,
            model = repo_root().join("models/all-MiniLM-L6-v2").display(),
        ),
    )
    .unwrap();
    (path, port)
}

fn start(config: &Path, role: &str, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["run", "--role", role, "--config"])
        .arg(config)
        .env("CLUSTERWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start clusterwatch run")
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(40).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

fn wait_until(what: &str, logs: &[&Path], f: &dyn Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        if started.elapsed() > Duration::from_secs(400) {
            let tails: Vec<String> = logs
                .iter()
                .map(|l| format!("--- {}\n{}", l.display(), tail(l)))
                .collect();
            panic!("timed out: {what}\n{}", tails.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn committed_all(group: &str, topic: &str) -> bool {
    try_committed_and_end(&kafka_bootstrap(), group, topic, PARTITIONS)
        .is_ok_and(|(committed, end)| end > 0 && committed == end)
}

#[test]
fn two_enrich_and_two_cluster_processes_equal_one_process_through_a_cluster_failover() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topics = Topics {
        conversations: unique("scale-conversations"),
        enriched: unique("scale-enriched"),
        dead_letter: unique("scale-dead-letter"),
    };
    rt.block_on(create_topics(
        &bootstrap,
        &[
            (&topics.conversations, PARTITIONS),
            (&topics.enriched, PARTITIONS),
            (&topics.dead_letter, 1),
        ],
    ));
    let messages = traffic::generate(&TrafficSpec {
        seed: 4_2,
        organic_events: ORGANIC,
        invalid_events: INVALID,
        duplicate_events: 0,
        max_message_bytes: 64 * 1024,
        ..Default::default()
    });
    let produced = messages.len();
    let expected = (produced - INVALID) as u64;
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();

    // The codebook, made once for this embedder and shared by both enrich processes.
    let codebook = dir.join("codebook.json");
    let (codebook_config, _) = write_config(dir, "codebook", "unused", &topics, "");
    let status = Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["model", "codebook", "--cells", "8", "--config"])
        .arg(&codebook_config)
        .arg("--out")
        .arg(&codebook)
        .status()
        .expect("run model codebook");
    assert!(status.success(), "clusterwatch model codebook");

    // Sharded: enrich x2 and cluster x2 in one group name, one shared snapshot directory.
    let group = unique("scale-group");
    let shared = format!(
        "[snapshot]\ndir = \"{}\"\ninterval_secs = 1\n[alerts]\nspool_dir = \"{}\"\n\
         [scale]\nenriched_topic = \"{}\"\ncodebook = \"{}\"\n",
        dir.join("shard-snapshots").display(),
        dir.join("spool").display(),
        topics.enriched,
        codebook.display()
    );
    let process = |name: &str| {
        let (config, port) = write_config(dir, name, &group, &topics, &shared);
        (config, port, dir.join(format!("{name}.log")))
    };
    let (e1_config, _, e1_log) = process("enrich-1");
    let (e2_config, _, e2_log) = process("enrich-2");
    let (c1_config, c1_port, c1_log) = process("cluster-1");
    let (c2_config, c2_port, c2_log) = process("cluster-2");
    let logs = [
        e1_log.as_path(),
        e2_log.as_path(),
        c1_log.as_path(),
        c2_log.as_path(),
    ];
    let e1 = start(&e1_config, "enrich", &e1_log);
    let e2 = start(&e2_config, "enrich", &e2_log);
    let c1 = start(&c1_config, "cluster", &c1_log);
    let c2 = start(&c2_config, "cluster", &c2_log);

    let producer = {
        let bootstrap = bootstrap.clone();
        let topic = topics.conversations.clone();
        let messages = messages.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().expect("producer runtime");
            for chunk in messages.chunks(RATE / 10) {
                let started = Instant::now();
                rt.block_on(produce(&bootstrap, &topic, chunk));
                std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed()));
            }
        })
    };
    let consumed = |port: u16| metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0);
    // Kill cluster-1 once it has clustered a good share and snapshotted it.
    wait_until("cluster-1 consuming", &logs, &|| {
        consumed(c1_port) >= (expected / 6) as f64
    });
    std::thread::sleep(Duration::from_secs(2));
    let c1_consumed = consumed(c1_port);
    let c1_shards: BTreeSet<String> = std::fs::read_to_string(&c1_log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("shard opened"))
        .filter_map(|l| {
            l.split("shard=")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .collect();
    sigkill(c1);
    let killed_at = Instant::now();
    producer.join().expect("producer");

    wait_until("the enrich group committed everything", &logs, &|| {
        committed_all(&role_group(&group, "enrich"), &topics.conversations)
    });
    wait_until("the cluster group committed everything", &logs, &|| {
        committed_all(&role_group(&group, "cluster"), &topics.enriched)
    });
    let failover = killed_at.elapsed();
    let c2_consumed = consumed(c2_port);
    for child in [c2, e1, e2] {
        assert_eq!(sigterm_and_wait(child, Duration::from_secs(120)), 0);
    }

    // Every shard's final snapshot; together they hold each valid event exactly once.
    let mut clustered = 0;
    let mut clusters = 0;
    let mut keys_total = 0;
    let mut union = BTreeSet::new();
    let mut per_shard = Vec::new();
    for shard in 0..PARTITIONS {
        let path = shard_snapshot_path(
            &dir.join("shard-snapshots"),
            &role_group(&group, "cluster"),
            shard,
        );
        let body = snapshot::load(&path)
            .unwrap()
            .unwrap_or_else(|| panic!("no snapshot for shard {shard}"));
        clustered += body.clustered_events;
        clusters += body.clusters.len();
        let keys: Vec<u64> = body.seen.keys().collect();
        keys_total += keys.len();
        union.extend(keys);
        per_shard.push(body.clustered_events);
    }
    let c2_text = std::fs::read_to_string(&c2_log).unwrap_or_default();
    let restored_by_c2: BTreeSet<String> = c2_text
        .lines()
        .filter(|l| l.contains("shard opened") && l.contains("restored=true"))
        .filter_map(|l| {
            l.split("shard=")
                .nth(1)?
                .split(' ')
                .next()
                .map(str::to_string)
        })
        .collect();

    // The single-process reference over the same stream.
    let reference_group = unique("scale-reference");
    let (reference_config, _) = write_config(
        dir,
        "reference",
        &reference_group,
        &topics,
        &format!(
            "[snapshot]\ndir = \"{}\"\ninterval_secs = 1\n",
            dir.join("reference-snapshots").display()
        ),
    );
    let reference_log = dir.join("reference.log");
    let reference = start(&reference_config, "all", &reference_log);
    wait_until(
        "the reference committed everything",
        &[&reference_log],
        &|| committed_all(&reference_group, &topics.conversations),
    );
    assert_eq!(sigterm_and_wait(reference, Duration::from_secs(120)), 0);
    let body = snapshot::load(&snapshot::snapshot_path(
        &dir.join("reference-snapshots"),
        &reference_group,
    ))
    .unwrap()
    .expect("reference snapshot");
    let (_, dead_lettered) =
        committed_and_end(&bootstrap, &unique("dl-reader"), &topics.dead_letter, 1);

    println!(
        "scale-out: produced {produced} ({} valid, {INVALID} invalid) over {PARTITIONS} partitions; \
         2 enrich + 2 cluster processes; cluster-1 (shards {c1_shards:?}) killed with SIGKILL after \
         consuming {c1_consumed}; cluster-2 restored shards {restored_by_c2:?} and consumed \
         {c2_consumed}; all committed {failover:.1?} after the kill",
        expected
    );
    println!(
        "  sharded: clustered {clustered} (per shard {per_shard:?}), counted twice {}, lost {}, \
         {clusters} live clusters; single process: clustered {}, {} live clusters ({:+.1}% \
         clusters from sharding); dead-lettered {dead_lettered} (both runs)",
        keys_total - union.len(),
        expected.saturating_sub(union.len() as u64),
        body.clustered_events,
        body.clusters.len(),
        100.0 * (clusters as f64 - body.clusters.len() as f64) / body.clusters.len().max(1) as f64,
    );
    assert_eq!(
        body.clustered_events, expected,
        "the reference counts every valid event"
    );
    assert_eq!(keys_total, union.len(), "no event counted by two shards");
    assert_eq!(
        union.len() as u64,
        expected,
        "every valid event counted by a shard"
    );
    assert_eq!(
        clustered, expected,
        "shard totals add up to the single-process total"
    );
    assert!(
        !c1_shards.is_empty() && c1_shards.iter().all(|s| restored_by_c2.contains(s)),
        "cluster-2 restored every shard cluster-1 had ({c1_shards:?}) from its snapshot ({restored_by_c2:?})"
    );
    // Enrich rejects each invalid message once; the reference run rejects them again.
    assert_eq!(dead_lettered as usize, 2 * INVALID);
}

fn role_group(group: &str, role: &str) -> String {
    format!("{group}.{role}")
}

/// Throughput of each role alone on the real broker, next to `--role all` on the same stream in
/// the same invocation (the baseline). Not a pass/fail test: run it in release and read the
/// figures (ARCHITECTURE "Scaling" quotes them):
/// `cargo test --release --test scale_out -- --ignored --nocapture role_throughput`.
/// `SCALE_BENCH_EVENTS` sets the stream size (default 20000), `SCALE_BENCH_EMBEDDER` the embedder
/// kind (default `static`).
#[test]
#[ignore]
fn role_throughput() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let events: usize = std::env::var("SCALE_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let kind = std::env::var("SCALE_BENCH_EMBEDDER").unwrap_or_else(|_| "static".into());
    let bootstrap = kafka_bootstrap();
    let topics = Topics {
        conversations: unique("bench-conversations"),
        enriched: unique("bench-enriched"),
        dead_letter: unique("bench-dead-letter"),
    };
    rt.block_on(create_topics(
        &bootstrap,
        &[
            (&topics.conversations, PARTITIONS),
            (&topics.enriched, PARTITIONS),
            (&topics.dead_letter, 1),
        ],
    ));
    let messages = traffic::generate(&TrafficSpec {
        seed: 7,
        organic_events: events,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    });
    rt.block_on(produce(&bootstrap, &topics.conversations, &messages));
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let codebook = dir.join("codebook.json");
    let embedder = format!("[embedder]\nkind = \"{kind}\"\n");
    let (codebook_config, _) = write_config(dir, "codebook", "unused", &topics, "");
    let text = std::fs::read_to_string(&codebook_config).unwrap();
    std::fs::write(
        &codebook_config,
        text.replace("[embedder]\nkind = \"static\"\n", &embedder),
    )
    .unwrap();
    assert!(Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["model", "codebook", "--config"])
        .arg(&codebook_config)
        .arg("--out")
        .arg(&codebook)
        .status()
        .expect("model codebook")
        .success());
    let group = unique("bench-group");
    let extra = format!(
        "[scale]\nenriched_topic = \"{}\"\ncodebook = \"{}\"\n",
        topics.enriched,
        codebook.display()
    );
    // Each role alone, timed from start to everything committed (model loading included).
    let timed = |name: &str, role: &str, group: &str, topic: &str| {
        let (config, _) = write_config(dir, name, group, &topics, &extra);
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("[embedder]\nkind = \"static\"\n", &embedder),
        )
        .unwrap();
        let log = dir.join(format!("{name}.log"));
        let started = Instant::now();
        let child = start(&config, role, &log);
        let committed_group = match role {
            "all" => group.to_string(),
            role => role_group(group, role),
        };
        wait_until(name, &[&log], &|| committed_all(&committed_group, topic));
        let elapsed = started.elapsed();
        assert_eq!(sigterm_and_wait(child, Duration::from_secs(120)), 0);
        elapsed
    };
    let all = timed("all", "all", &unique("bench-all"), &topics.conversations);
    let enrich = timed("enrich", "enrich", &group, &topics.conversations);
    let cluster = timed("cluster", "cluster", &group, &topics.enriched);
    let rate = |d: Duration| events as f64 / d.as_secs_f64();
    println!(
        "role throughput, {events} events, embedder {kind}, {PARTITIONS} partitions, one process \
         each, start to all committed:\n  --role all     {:>8.1?}  {:>8.0} events/s (baseline)\n  \
         --role enrich  {:>8.1?}  {:>8.0} events/s ({:.2}x the baseline)\n  --role cluster \
         {:>8.1?}  {:>8.0} events/s ({:.2}x the baseline)",
        all,
        rate(all),
        enrich,
        rate(enrich),
        rate(enrich) / rate(all),
        cluster,
        rate(cluster),
        rate(cluster) / rate(all),
    );
}
