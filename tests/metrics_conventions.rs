//! `/metrics` follows Prometheus conventions, checked on real output: a replay of traffic with a
//! campaign (so alerts, clusters and rejects all have samples) through the real model, then
//! - `promtool check metrics` (Debian's `prometheus` package, installed by
//!   `scripts/alertmanager.sh install`) prints nothing;
//! - every label name is one of the bounded set, so a cluster id, account id or text can never
//!   become a label, and no label value carries an identifier;
//! - the families the dashboards and alert rules query exist.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use clusterwatch::export::metrics::ALLOWED_LABELS;
use common::*;

fn replayed_metrics() -> String {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    write_campaign_traffic(&input, 11, 20 * 60, 14);
    replay_metrics(&input)
}

/// `(family, labels)` of every sample line.
fn samples(text: &str) -> Vec<(String, Vec<(String, String)>)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = line[..name_end].to_string();
            let mut labels = Vec::new();
            if line[name_end..].starts_with('{') {
                let body = &line[name_end + 1..line.find('}').expect("closing brace")];
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').expect("label pair");
                    labels.push((k.to_string(), v.trim_matches('"').to_string()));
                }
            }
            (name, labels)
        })
        .collect()
}

#[test]
fn metrics_pass_promtool_and_carry_only_bounded_labels() {
    let text = replayed_metrics();

    let promtool = which("promtool").unwrap_or_else(|| {
        panic!("promtool is not installed: run `sudo bash scripts/alertmanager.sh install`")
    });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check metrics: {printed}");
    assert_eq!(printed.trim(), "", "promtool check metrics prints nothing");
    println!(
        "promtool check metrics: no findings on {} lines",
        text.lines().count()
    );

    let samples = samples(&text);
    for (name, labels) in &samples {
        assert!(name.starts_with("clusterwatch_"), "{name}: prefix");
        for (key, value) in labels {
            let allowed = ALLOWED_LABELS.contains(&key.as_str()) || key == "le";
            assert!(allowed, "{name} carries label {key:?}");
            if key == "version" {
                assert_eq!(
                    name, "clusterwatch_build_info",
                    "version only on build_info"
                );
            }
            if key == "partition" {
                assert!(value.parse::<i32>().is_ok(), "{name}: partition {value:?}");
            }
            // Bounded values are short vocabulary words, never ids or text.
            assert!(
                value.len() <= 32 && !value.contains(' '),
                "{name}{{{key}={value:?}}} looks unbounded"
            );
        }
    }

    // What the dashboards and rules read (the lag gauge needs a Kafka consumer: see
    // tests/dashboards.rs).
    for family in [
        "clusterwatch_build_info",
        "clusterwatch_events_consumed_total",
        "clusterwatch_events_rejected_total",
        "clusterwatch_events_clustered_total",
        "clusterwatch_stage_duration_seconds_bucket",
        // No samples from a file replay (no produce timestamps), but always exported.
        "clusterwatch_event_cluster_latency_seconds_count",
        "clusterwatch_stage_errors_total",
        "clusterwatch_summaries_total",
        "clusterwatch_live_clusters",
        "clusterwatch_visible_clusters",
        "clusterwatch_cluster_lifecycle_events_total",
        "clusterwatch_alerts_total",
        "clusterwatch_open_alerts",
        "clusterwatch_open_alert_window_accounts",
        "clusterwatch_open_alert_accounts_per_minute",
        "clusterwatch_surface_high_concern_total",
        "clusterwatch_surface_refusals_total",
        "clusterwatch_snapshot_last_success_timestamp_seconds",
        "clusterwatch_event_time_watermark_seconds",
    ] {
        assert!(
            samples.iter().any(|(name, _)| name == family),
            "{family} missing"
        );
    }
    for stage in [
        "source",
        "decode",
        "summarize",
        "embed",
        "cluster",
        "detect",
    ] {
        assert!(
            text.contains(&format!(
                "clusterwatch_stage_duration_seconds_count{{stage=\"{stage}\"}}"
            )),
            "RED duration for stage {stage}"
        );
    }
    assert!(
        text.contains("clusterwatch_alerts_total{kind=\"coordinated_cluster\""),
        "the campaign's alert is counted"
    );
    assert!(
        text.contains("clusterwatch_summaries_total{kind=\"offline\"}"),
        "offline summaries are counted"
    );
}

fn which(binary: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(binary))
            .find(|p| p.is_file())
    })
}
