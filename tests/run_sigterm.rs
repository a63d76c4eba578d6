//! `clusterwatch run` as a real process against the real broker: it serves `/metrics` and
//! `/healthz`, and on SIGTERM it drains, commits and exits 0 — also when stopped mid-stream.
//! With snapshots on, a snapshot's offsets reach the broker at once, not at the next periodic
//! commit.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::process::{free_port, metric, sigterm_and_wait, start_run};
use common::*;

const PARTITIONS: i32 = 2;

/// Starts `clusterwatch run`; its log goes to a file beside the config (a pipe nobody drains
/// while the process runs could fill and block it).
fn start(config: &std::path::Path) -> Child {
    start_run(config, &log_path(config))
}

fn log_path(config: &std::path::Path) -> std::path::PathBuf {
    config.with_file_name("clusterwatch.log")
}

/// SIGTERM, the exit code, and everything the process logged.
fn stop(child: Child, config: &std::path::Path, within: Duration) -> (i32, String) {
    let code = sigterm_and_wait(child, within);
    (
        code,
        std::fs::read_to_string(log_path(config)).unwrap_or_default(),
    )
}

async fn prepared(
    name: &str,
    events: usize,
    extra_config: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    u16,
    String,
    String,
    usize,
) {
    let bootstrap = kafka_bootstrap();
    let topic = unique(&format!("{name}-conversations"));
    let dead_letter = unique(&format!("{name}-dead-letter"));
    let group = unique(&format!("{name}-group"));
    create_topics(&bootstrap, &[(&topic, PARTITIONS), (&dead_letter, 1)]).await;
    let messages = traffic::generate(&TrafficSpec {
        seed: 77,
        organic_events: events,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    });
    produce(&bootstrap, &topic, &messages).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clusterwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\ndead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
             [embedder]\nmodel_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{extra_config}",
            repo_root().join("models/all-MiniLM-L6-v2").display()
        ),
    )
    .unwrap();
    (dir, config, port, topic, group, messages.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_stream_commits_everything_and_exits_zero() {
    let (_dir, config, port, topic, group, total) = prepared("sigterm-end", 400, "").await;
    let child = start(&config);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while metric(port, "clusterwatch_offsets_stored_total").unwrap_or(0.0) < total as f64 {
            assert!(
                Instant::now() < deadline,
                "the stream was not processed in time"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let health = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).unwrap();
        assert_eq!(health.status(), 200);
        let api = reqwest::blocking::get(format!("http://127.0.0.1:{port}/api/clusters"))
            .unwrap()
            .text()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&api).expect("JSON");
        assert!(parsed["clusters"].is_array(), "{api}");
        assert!(
            !api.contains("acct-") && !api.contains("conv-"),
            "ids never reach the API"
        );
        let (code, logs) = stop(child, &config, Duration::from_secs(60));
        assert_eq!(code, 0, "exit code; logs:\n{logs}");
        assert!(logs.contains("SIGTERM received"), "{logs}");
        assert!(logs.contains("drained and committed"), "{logs}");
        let (committed, end) = committed_and_end(&kafka_bootstrap(), &group, &topic, PARTITIONS);
        assert_eq!(end, total as i64);
        assert_eq!(committed, end);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_what_was_read_and_exits_zero() {
    let (_dir, config, port, topic, group, total) = prepared("sigterm-mid", 4000, "").await;
    let child = start(&config);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while metric(port, "clusterwatch_offsets_stored_total").unwrap_or(0.0) < 200.0 {
            assert!(Instant::now() < deadline, "nothing was processed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, logs) = stop(child, &config, Duration::from_secs(90));
        assert_eq!(code, 0, "exit code; logs:\n{logs}");
        let (committed, end) = committed_and_end(&kafka_bootstrap(), &group, &topic, PARTITIONS);
        assert_eq!(end, total as i64);
        assert!(
            committed >= 200,
            "what was processed is committed: {committed}"
        );
        assert!(committed < end, "the stop really was mid-stream");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshots_offsets_are_committed_at_once_not_at_the_next_periodic_commit() {
    let snapshots = tempfile::tempdir().unwrap();
    // The periodic commit is ten minutes away, so only the commit that follows each snapshot
    // can put these offsets on the broker in time. A snapshot is due after every event (or at
    // the next idle tick while the writer is busy), so the last one covers the whole stream.
    let extra = format!(
        "[snapshot]\ndir = \"{}\"\ninterval_secs = 3600\nevery_events = 1\n",
        snapshots.path().display()
    );
    let (dir, config, port, topic, group, total) = prepared("commit-now", 300, &extra).await;
    // prepared() wrote [kafka] first; the interval goes there.
    let written = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        written.replacen("[kafka]\n", "[kafka]\ncommit_interval_ms = 600000\n", 1),
    )
    .unwrap();
    let child = start(&config);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        let committed = loop {
            let (committed, end) =
                committed_and_end(&kafka_bootstrap(), &group, &topic, PARTITIONS);
            assert_eq!(end, total as i64);
            if committed == end || Instant::now() > deadline {
                break committed;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(
            metric(port, "clusterwatch_snapshot_last_success_timestamp_seconds").unwrap_or(0.0)
                > 0.0,
            "a snapshot was written"
        );
        assert_eq!(
            committed, total as i64,
            "the snapshots' offsets reached the broker while the process runs"
        );
        let (code, logs) = stop(child, &config, Duration::from_secs(60));
        assert_eq!(code, 0, "exit code; logs:\n{logs}");
        drop(dir);
    })
    .await
    .unwrap();
}
