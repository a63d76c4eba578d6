//! The broker goes away mid-stream and comes back: `clusterwatch run` keeps running through the
//! outage, loses nothing, counts nothing twice, and its consumer lag drains afterwards.
//!
//! The test starts its own broker (`scripts/kafka.sh` with `KAFKA_INSTANCE`, on other ports and
//! its own data directory), so stopping it does not disturb the shared broker other tests use.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use clusterwatch::cluster::snapshot;
use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::process::{free_port, metric, run_config, sigterm_and_wait, start_run, RunTopics};
use common::*;

const INSTANCE: &str = "outage";
const PORT: u16 = 19292;
const CONTROLLER_PORT: u16 = 19293;
const PARTITIONS: i32 = 2;

fn kafka_sh(command: &str) {
    let status = Command::new("bash")
        .arg(repo_root().join("scripts/kafka.sh"))
        .arg(command)
        .env("KAFKA_INSTANCE", INSTANCE)
        .env("KAFKA_PORT", PORT.to_string())
        .env("KAFKA_CONTROLLER_PORT", CONTROLLER_PORT.to_string())
        // This broker is ours, whatever the shared one is.
        .env_remove("KAFKA_BOOTSTRAP")
        .status()
        .expect("run scripts/kafka.sh");
    assert!(status.success(), "scripts/kafka.sh {command} failed");
}

/// Stops the private broker however the test ends.
struct PrivateBroker;

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        kafka_sh("stop");
    }
}

fn lag(port: u16) -> Option<f64> {
    let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .ok()?
        .text()
        .ok()?;
    let series: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with("clusterwatch_kafka_consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!series.is_empty()).then(|| series.iter().sum())
}

/// A plain test with its own runtime for the async helpers: the polling below uses blocking HTTP,
/// which must not run on a runtime thread.
#[test]
fn a_broker_restart_mid_stream_loses_nothing_and_the_lag_drains() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    kafka_sh("start");
    let _broker = PrivateBroker;
    let bootstrap = format!("127.0.0.1:{PORT}");
    let topic = unique("outage-conversations");
    let dead_letter = unique("outage-dead-letter");
    let group = unique("outage-group");
    rt.block_on(create_topics(
        &bootstrap,
        &[(&topic, PARTITIONS), (&dead_letter, 1)],
    ));
    let (organic, invalid, duplicates) = (3_000, 20, 40);
    let messages = traffic::generate(&TrafficSpec {
        seed: 404,
        organic_events: organic,
        campaign: None,
        invalid_events: invalid,
        duplicate_events: duplicates,
        // The oversized invalid message must still fit the broker's own limit (1 MB).
        max_message_bytes: 64 * 1024,
        ..Default::default()
    });
    let produced = messages.len();
    rt.block_on(produce(&bootstrap, &topic, &messages));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("clusterwatch.toml");
    std::fs::write(
        &config,
        run_config(
            &RunTopics {
                bootstrap: &bootstrap,
                topic: &topic,
                dead_letter: &dead_letter,
                group: &group,
            },
            port,
            &format!(
                "[limits]\nmax_message_bytes = 65536\n[snapshot]\ndir = \"{}\"\ninterval_secs = 2\n",
                dir.path().join("snapshots").display()
            ),
        ),
    )
    .unwrap();
    let log = dir.path().join("clusterwatch.log");
    let child = start_run(&config, &log);

    // A third of the way in, the broker goes down for 10 s.
    let wait_until = |what: &str, f: &dyn Fn() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "{what}; log: {}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_until("consuming", &|| {
        metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0) >= (produced / 3) as f64
    });
    let consumed_at_outage = metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0);
    kafka_sh("stop");
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        metric(port, "clusterwatch_events_consumed_total").is_some(),
        "clusterwatch keeps serving while the broker is down"
    );
    kafka_sh("restart");
    let back = Instant::now();

    // Everything is committed eventually, and the lag the consumer reports drains to 0.
    wait_until("all committed", &|| {
        try_committed_and_end(&bootstrap, &group, &topic, PARTITIONS)
            .is_ok_and(|(committed, end)| committed == end)
    });
    let committed_after = back.elapsed();
    wait_until("lag drained", &|| lag(port) == Some(0.0));
    let drained_after = back.elapsed();
    let consumed = metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0) as usize;
    let code = sigterm_and_wait(child, Duration::from_secs(120));
    assert_eq!(code, 0, "clean exit; log: {}", read_log(&log));

    let body = snapshot::load(&snapshot::snapshot_path(
        &dir.path().join("snapshots"),
        &group,
    ))
    .unwrap()
    .expect("final snapshot");
    let expected = (produced - invalid - duplicates) as u64;
    // The dead-letter topic's end offset: every record ever written there, copies included.
    let (_, dead_lettered) = committed_and_end(&bootstrap, &unique("dl-reader"), &dead_letter, 1);
    let dead_lettered = dead_lettered as usize;
    println!(
        "broker restart: produced {produced} ({organic} organic + campaign-free, {invalid} invalid, \
         {duplicates} redelivered ids); broker down for 10 s after {consumed_at_outage} consumed; \
         consumed {consumed} in all, clustered {} (expected {expected}), dead-lettered \
         {dead_lettered}, lost {}, duplicated {}; after the broker came back: all committed in \
         {committed_after:.1?}, reported lag 0 in {drained_after:.1?}",
        body.clustered_events,
        expected.saturating_sub(body.clustered_events),
        body.clustered_events.saturating_sub(expected),
    );
    assert_eq!(body.clustered_events, expected, "every valid event once");
    assert_eq!(dead_lettered, invalid);
}

fn read_log(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(40).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}
