//! kill -9 anywhere: a fixed stream of 20,000 events goes through `clusterwatch run` against
//! the real broker twice — once uninterrupted, once killed with SIGKILL at 10 seeded random
//! points and restarted each time. The final cluster tables (ids, counts, distinct accounts) and
//! the alert records on the alerts topic must be identical, with no alert fired twice.
//!
//! What makes it possible: a snapshot holds the cluster state, the detectors' memory and the
//! offsets it covers; offsets are committed only once their snapshot is on disk; a conversation id
//! read again is recognised; and alert records carry a sequence number that sinks use to skip the
//! ones they already have. One partition, because across partitions the interleaving of events is
//! the broker's, not the stream's: two uninterrupted runs over two partitions could already
//! differ.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clusterwatch::alert::{AlertRecord, AlertStatus};
use clusterwatch::cluster::snapshot;
use clusterwatch::demo::traffic::{self, CampaignSpec, TrafficSpec};
use common::process::{free_port, metric, sigkill, sigterm_and_wait, start_run};
use common::*;
use rand::{Rng, SeedableRng};

const KILLS: usize = 10;
const SEED: u64 = 20_000;

/// Everything one run of the stream needs: its own group, snapshot dir, spool and alerts topic.
struct Run {
    dir: PathBuf,
    config: PathBuf,
    port: u16,
    group: String,
    alerts_topic: String,
}

fn prepare_run(name: &str, bootstrap: &str, topic: &str, dead_letter: &str) -> Run {
    let dir = std::env::temp_dir().join(unique(&format!("crash-{name}")));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let group = unique(&format!("crash-{name}-group"));
    let alerts_topic = unique(&format!("crash-{name}-alerts"));
    let config = dir.join("clusterwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\n\
             dead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
             [embedder]\n{embedder}\n\
             [http]\nlisten = \"127.0.0.1:{port}\"\n\
             [limits]\nmax_message_bytes = 65536\n[snapshot]\ndir = \"{snapshots}\"\ninterval_secs = 1\nevery_events = 700\n\
             [alerts]\nspool_dir = \"{spool}\"\n[alerts.kafka]\ntopic = \"{alerts_topic}\"\n",
            embedder = embedder_config(),
            snapshots = dir.join("snapshots").display(),
            spool = dir.join("spool").display(),
        ),
    )
    .unwrap();
    Run {
        dir,
        config,
        port,
        group,
        alerts_topic,
    }
}

/// The distilled static embedder (`scripts/setup.sh` makes it): deterministic per sentence like
/// the transformer, and fast enough that eleven starts over 20,000 events stay cheap in CI.
fn embedder_config() -> String {
    let model = repo_root().join("models/all-MiniLM-L6-v2");
    format!("kind = \"static\"\nmodel_dir = \"{}\"", model.display())
}

/// Waits until the group has committed every message of the topic (the process is idle and
/// its last snapshot is on disk), then stops the process cleanly.
fn finish(run: &Run, child: std::process::Child, bootstrap: &str, topic: &str) {
    let started = Instant::now();
    loop {
        let (committed, end) = committed_and_end(bootstrap, &run.group, topic, 1);
        if committed == end {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "committed {committed} of {end} after 15 min; log: {}",
            run.dir.join("clusterwatch.log").display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let code = sigterm_and_wait(child, Duration::from_secs(120));
    assert_eq!(code, 0, "clean exit after the stream");
}

/// (cluster id → (conversations, distinct accounts)), the clustered-event total and the
/// detectors' record count, from the final snapshot.
fn cluster_table(run: &Run) -> (BTreeMap<u64, (u64, usize)>, u64) {
    let path = snapshot::snapshot_path(&run.dir.join("snapshots"), &run.group);
    let body = snapshot::load(&path)
        .expect("snapshot readable")
        .expect("a final snapshot");
    let table = body
        .clusters
        .iter()
        .map(|c| (c.id, (c.count, c.accounts.count())))
        .collect();
    (table, body.clustered_events)
}

/// Every record on an alerts topic, in order.
fn alert_records(bootstrap: &str, topic: &str) -> Vec<AlertRecord> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("crash-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap_or((0, 0));
    let mut out = Vec::new();
    if end == 0 {
        return out;
    }
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    while (out.len() as i64) < end {
        assert!(Instant::now() < deadline, "alerts topic {topic} not read");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("read alerts");
            out.push(serde_json::from_slice(m.payload().unwrap_or_default()).expect("a record"));
        }
    }
    out
}

/// A plain test with its own runtime for the async helpers: the polling below uses blocking HTTP,
/// which must not run on a runtime thread.
#[test]
fn sigkill_at_ten_random_points_changes_no_cluster_and_no_alert() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topic = unique("crash-conversations");
    let dead_letter = unique("crash-dead-letter");
    rt.block_on(create_topics(&bootstrap, &[(&topic, 1), (&dead_letter, 1)]));

    // 20,000 messages over six hours of event time: organic traffic, a campaign that fires an
    // alert, redeliveries of conversation ids and invalid messages.
    let messages = traffic::generate(&TrafficSpec {
        seed: SEED,
        organic_events: 19_500,
        duration_secs: 6 * 3600,
        campaign: Some(CampaignSpec {
            offset_secs: 2 * 3600,
            ..Default::default()
        }),
        invalid_events: 50,
        duplicate_events: 150,
        // The oversized invalid message must still fit the broker's own limit (1 MB).
        max_message_bytes: 64 * 1024,
        ..Default::default()
    });
    let produced = messages.len();
    rt.block_on(produce(&bootstrap, &topic, &messages));

    // Uninterrupted.
    let calm = prepare_run("calm", &bootstrap, &topic, &dead_letter);
    let log = calm.dir.join("clusterwatch.log");
    let child = start_run(&calm.config, &log);
    finish(&calm, child, &bootstrap, &topic);
    let (calm_table, calm_clustered) = cluster_table(&calm);

    // Killed at ten seeded points of progress (messages consumed by the current incarnation's
    // pipeline, counted from the offset it resumed at), restarted each time.
    let crashed = prepare_run("crashed", &bootstrap, &topic, &dead_letter);
    let log = crashed.dir.join("clusterwatch.log");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED);
    let mut kill_points: Vec<usize> = (0..KILLS)
        .map(|_| rng.gen_range(200..produced - 200))
        .collect();
    kill_points.sort_unstable();
    let mut killed_at = Vec::new();
    for point in &kill_points {
        let (base, _) = committed_and_end(&bootstrap, &crashed.group, &topic, 1);
        let base = base.max(0) as usize;
        // Every incarnation makes some progress, even when a restart resumed past the point.
        let needed = point.saturating_sub(base).max(50) as f64;
        let child = start_run(&crashed.config, &log);
        let started = Instant::now();
        loop {
            let consumed =
                metric(crashed.port, "clusterwatch_events_consumed_total").unwrap_or(0.0);
            if consumed >= needed {
                killed_at.push((base, consumed as u64));
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "no progress to {point}; log: {}",
                log.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sigkill(child);
    }
    let child = start_run(&crashed.config, &log);
    finish(&crashed, child, &bootstrap, &topic);
    let (crashed_table, crashed_clustered) = cluster_table(&crashed);

    let calm_alerts = alert_records(&bootstrap, &calm.alerts_topic);
    let crashed_alerts = alert_records(&bootstrap, &crashed.alerts_topic);
    // A record sent to the broker just before a kill, but not yet marked done in the spool, is
    // sent again at restart (at-least-once); its sequence number identifies the copy.
    let mut seen = BTreeSet::new();
    let mut redelivered = 0;
    let mut deduplicated = Vec::new();
    for r in &crashed_alerts {
        if seen.insert(r.sequence) {
            deduplicated.push(r.clone());
        } else {
            redelivered += 1;
        }
    }
    deduplicated.sort_by_key(|r| r.sequence);
    let firing: Vec<(String, String)> = deduplicated
        .iter()
        .filter(|r| r.status == AlertStatus::Firing)
        .map(|r| (r.alert_id.clone(), r.severity.as_str().to_string()))
        .collect();
    let distinct_firing: BTreeSet<_> = firing.iter().collect();

    let calm_conversations: u64 = calm_table.values().map(|(n, _)| n).sum();
    let crashed_conversations: u64 = crashed_table.values().map(|(n, _)| n).sum();
    println!(
        "crash exactness: produced {produced} messages; killed at (committed offset, consumed by \
         that incarnation) {killed_at:?}"
    );
    println!(
        "  uninterrupted: {calm_clustered} clustered events, {} live clusters, {calm_conversations} \
         conversations in them, {} alert records",
        calm_table.len(),
        calm_alerts.len()
    );
    println!(
        "  killed x{KILLS}:  {crashed_clustered} clustered events, {} live clusters, \
         {crashed_conversations} conversations in them, {} alert records ({} distinct sequences, \
         {redelivered} redelivered copies), lost {}, duplicated {}",
        crashed_table.len(),
        crashed_alerts.len(),
        deduplicated.len(),
        calm_clustered.saturating_sub(crashed_clustered),
        crashed_clustered.saturating_sub(calm_clustered),
    );

    assert!(!calm_alerts.is_empty(), "the campaign fires an alert");
    assert_eq!(killed_at.len(), KILLS);
    assert_eq!(crashed_clustered, calm_clustered, "clustered events");
    assert_eq!(
        crashed_table, calm_table,
        "cluster ids, counts and accounts"
    );
    assert_eq!(
        deduplicated, calm_alerts,
        "the same alert records in the same order"
    );
    assert_eq!(
        firing.len(),
        distinct_firing.len(),
        "no alert fired twice at one severity"
    );
    for run in [&calm, &crashed] {
        let _ = std::fs::remove_dir_all(&run.dir);
    }
}
