//! The snapshot directory stops being writable (a full or read-only disk): `clusterwatch run`
//! logs and counts each failed snapshot, keeps consuming and serving, does not exit, and its
//! last-success timestamp goes stale — so a real Prometheus evaluating the production
//! `ClusterwatchSnapshotStale` rule (with its durations shortened for the test) fires it. Once the
//! directory is writable again, snapshots and offset commits resume.
//!
//! Permissions cannot make a directory unwritable for root (CI runs as root), so the test puts a
//! regular file where the directory was: every write then fails with "not a directory", exactly
//! as a failing disk would fail it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::process::{
    free_port, metric, prometheus_binary, run_config, sigterm_and_wait, spawn, start_run, RunTopics,
};
use common::*;

fn errors(port: u16) -> f64 {
    metric(port, "clusterwatch_stage_errors_total{stage=\"snapshot\"}").unwrap_or(0.0)
}

/// The production rule with its time thresholds shortened: stale after 3 s instead of 10 min,
/// rates over 10 s, no `for`. Everything else — the expression's shape, labels, annotations — is
/// the file Prometheus loads in production.
fn shortened_rules() -> String {
    let text =
        std::fs::read_to_string(repo_root().join("deploy/prometheus/rules/clusterwatch.rules.yml"))
            .unwrap();
    let rules: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    let rule = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .find(|r| r["alert"].as_str() == Some("ClusterwatchSnapshotStale"))
        .expect("the SnapshotStale rule")
        .clone();
    let mut rule = rule;
    let expr = rule["expr"].as_str().unwrap();
    assert!(expr.contains("> 600") && expr.contains("[5m]"), "{expr}");
    rule["expr"] = expr.replace("> 600", "> 3").replace("[5m]", "[10s]").into();
    rule["for"] = "0s".into();
    let group = serde_yaml::Mapping::from_iter([
        ("name".into(), "snapshot-stale-test".into()),
        ("rules".into(), serde_yaml::Value::Sequence(vec![rule])),
    ]);
    serde_yaml::to_string(&serde_yaml::Mapping::from_iter([(
        "groups".into(),
        serde_yaml::Value::Sequence(vec![group.into()]),
    )]))
    .unwrap()
}

/// A plain test with its own runtime for the async helpers: the polling below uses blocking HTTP,
/// which must not run on a runtime thread.
#[test]
fn an_unwritable_snapshot_directory_is_counted_alerted_on_and_survived() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topic = unique("snapfail-conversations");
    let dead_letter = unique("snapfail-dead-letter");
    let group = unique("snapfail-group");
    rt.block_on(create_topics(&bootstrap, &[(&topic, 1), (&dead_letter, 1)]));
    let batch = |seed: u64| {
        traffic::generate(&TrafficSpec {
            seed,
            organic_events: 400,
            campaign: None,
            invalid_events: 0,
            duplicate_events: 0,
            ..Default::default()
        })
    };

    let dir = tempfile::tempdir().unwrap();
    let snapshots = dir.path().join("snapshots");
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
                "[snapshot]\ndir = \"{}\"\ninterval_secs = 1\n",
                snapshots.display()
            ),
        ),
    )
    .unwrap();

    let prom_port = free_port();
    std::fs::write(dir.path().join("rules.yml"), shortened_rules()).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [\"{rules}\"]\n\
             scrape_configs:\n  - job_name: clusterwatch\n    static_configs:\n      - targets: [\"127.0.0.1:{port}\"]\n",
            rules = dir.path().join("rules.yml").display()
        ),
    )
    .unwrap();
    let mut prom_cmd = Command::new(prometheus_binary());
    prom_cmd
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"));
    let mut prometheus = spawn("prometheus", prom_cmd, dir.path().join("prometheus.log"));

    let log = dir.path().join("clusterwatch.log");
    let mut child = start_run(&config, &log);
    let wait_until = |what: &str, limit_secs: u64, f: &mut dyn FnMut() -> bool| {
        let started = Instant::now();
        while !f() {
            assert!(
                started.elapsed() < Duration::from_secs(limit_secs),
                "{what}; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    rt.block_on(produce(&bootstrap, &topic, &batch(1)));
    wait_until("a first snapshot", 300, &mut || {
        metric(port, "clusterwatch_snapshot_last_success_timestamp_seconds").unwrap_or(0.0) > 0.0
    });

    // The directory becomes a file: every snapshot write fails from now on.
    std::fs::rename(&snapshots, dir.path().join("snapshots.moved")).unwrap();
    std::fs::write(&snapshots, b"not a directory").unwrap();
    let last_success =
        metric(port, "clusterwatch_snapshot_last_success_timestamp_seconds").unwrap();
    let errors_before = errors(port);
    let consumed_before = metric(port, "clusterwatch_events_consumed_total").unwrap();
    rt.block_on(produce(&bootstrap, &topic, &batch(2)));
    wait_until("failed snapshots counted", 300, &mut || {
        errors(port) >= errors_before + 2.0
    });
    wait_until("still consuming", 300, &mut || {
        metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0) >= consumed_before + 400.0
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "clusterwatch is still running"
    );
    let health = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).unwrap();
    assert!(health.status().is_success(), "still serving /healthz");
    assert_eq!(
        metric(port, "clusterwatch_snapshot_last_success_timestamp_seconds").unwrap(),
        last_success,
        "the last-success timestamp stays where it was"
    );
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("snapshot write failed"),
        "each failure is logged"
    );

    // Prometheus, evaluating the production rule, fires SnapshotStale.
    let client = reqwest::blocking::Client::new();
    let started = Instant::now();
    let fired = loop {
        prometheus.assert_running();
        let alerts: serde_json::Value = match client
            .get(format!("http://127.0.0.1:{prom_port}/api/v1/alerts"))
            .send()
        {
            Ok(r) => r.json().unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        };
        let firing = alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| {
                a["labels"]["alertname"] == "ClusterwatchSnapshotStale" && a["state"] == "firing"
            })
            .cloned();
        if let Some(a) = firing {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "SnapshotStale never fired: {alerts}\n{}",
            prometheus.log_tail()
        );
        // Keep the consumption rate above zero, as live traffic would.
        rt.block_on(produce(
            &bootstrap,
            &topic,
            &batch(started.elapsed().as_secs() + 10),
        ));
        std::thread::sleep(Duration::from_secs(2));
    };

    // The disk comes back: snapshots and commits resume.
    std::fs::remove_file(&snapshots).unwrap();
    std::fs::rename(dir.path().join("snapshots.moved"), &snapshots).unwrap();
    wait_until("snapshots resume", 120, &mut || {
        metric(port, "clusterwatch_snapshot_last_success_timestamp_seconds").unwrap_or(0.0)
            > last_success
    });
    wait_until("offsets committed again", 300, &mut || {
        let (committed, end) = committed_and_end(&bootstrap, &group, &topic, 1);
        committed == end
    });
    println!(
        "snapshot failure: {} failed snapshots counted and logged, process alive and serving; \
         SnapshotStale fired in Prometheus ({}); snapshots resumed once the directory came back",
        errors(port) - errors_before,
        fired["labels"]
    );
    let code = sigterm_and_wait(child, Duration::from_secs(60));
    assert_eq!(code, 0);
}
