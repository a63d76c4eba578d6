//! `clusterwatch replay` through the real binary and the real model: the same input gives
//! byte-identical outputs, and personal data in conversations never reaches any output.

mod common;

use std::path::Path;
use std::process::Command;

use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::*;
use serde_json::json;

fn write_jsonl(path: &Path, payloads: impl Iterator<Item = Vec<u8>>) {
    let mut out = Vec::new();
    for p in payloads {
        out.extend_from_slice(&p);
        out.push(b'\n');
    }
    std::fs::write(path, out).expect("write input");
}

/// Runs the binary's replay; returns stderr (the logs).
fn replay_binary(input: &Path, out_dir: &Path, tag: &str, log_level: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["replay", "--input"])
        // As in `test_settings`: the stream is compressed, account history matures in 10 minutes.
        .env("CLUSTERWATCH_CLUSTER__FRESH_ACCOUNT_SECS", "600")
        .arg(input)
        .arg("--alerts-out")
        .arg(out_dir.join(format!("alerts-{tag}.jsonl")))
        .arg("--assignments-out")
        .arg(out_dir.join(format!("assignments-{tag}.jsonl")))
        .arg("--clusters-out")
        .arg(out_dir.join(format!("clusters-{tag}.json")))
        .arg("--dead-letter-out")
        .arg(out_dir.join(format!("dead-letter-{tag}.jsonl")))
        .arg("--lifecycle-out")
        .arg(out_dir.join(format!("lifecycle-{tag}.jsonl")))
        .env(
            "CLUSTERWATCH_EMBEDDER__MODEL_DIR",
            repo_root().join("models/all-MiniLM-L6-v2"),
        )
        .env("CLUSTERWATCH_LOG", log_level)
        .output()
        .expect("run clusterwatch replay");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "replay failed:\n{stderr}");
    stderr
}

#[test]
fn replay_is_deterministic_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TrafficSpec {
        seed: 5,
        organic_events: 1200,
        duration_secs: 3600,
        campaign: Some(traffic::CampaignSpec {
            offset_secs: 20 * 60,
            ..Default::default()
        }),
        invalid_events: 14,
        duplicate_events: 10,
        ..Default::default()
    };
    let input = dir.path().join("events.jsonl");
    write_jsonl(
        &input,
        traffic::generate(&spec).into_iter().map(|m| m.payload),
    );
    replay_binary(&input, dir.path(), "a", "info");
    replay_binary(&input, dir.path(), "b", "info");
    for name in ["alerts", "assignments", "dead-letter", "lifecycle"] {
        let a = std::fs::read(dir.path().join(format!("{name}-a.jsonl"))).unwrap();
        let b = std::fs::read(dir.path().join(format!("{name}-b.jsonl"))).unwrap();
        assert!(!a.is_empty(), "{name} output is empty");
        assert_eq!(a, b, "{name} differ between identical replays");
    }
    let a = std::fs::read(dir.path().join("clusters-a.json")).unwrap();
    let b = std::fs::read(dir.path().join("clusters-b.json")).unwrap();
    assert_eq!(a, b, "cluster tables differ");

    let assignments = std::fs::read_to_string(dir.path().join("assignments-a.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = assignments
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let campaign = spec.campaign.as_ref().unwrap();
    assert!(lines.len() >= 1200 + campaign.accounts * 2);
    for l in &lines {
        let keys: Vec<&str> = l.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["cluster_id", "conversation_id", "domain_id", "topic_id"],
            "ids only"
        );
    }
    // Every cluster in the table was born on the record; a newborn cluster (one conversation)
    // is below the privacy gate, so its line carries no counts.
    let lifecycle = std::fs::read_to_string(dir.path().join("lifecycle-a.jsonl")).unwrap();
    let born: Vec<serde_json::Value> = lifecycle
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|l| l["event"] == "born")
        .collect();
    assert!(born.len() >= 10, "born events recorded");
    assert!(born
        .iter()
        .all(|l| l.get("conversations").is_none() && l.get("accounts").is_none()));
    let alerts = std::fs::read_to_string(dir.path().join("alerts-a.jsonl")).unwrap();
    assert!(
        alerts.contains("\"status\":\"firing\""),
        "the campaign fired:\n{alerts}"
    );
    let dead = std::fs::read_to_string(dir.path().join("dead-letter-a.jsonl")).unwrap();
    assert_eq!(dead.lines().count(), 14);
}

/// Events whose user text carries unique email and phone canaries, sent as a campaign by many
/// accounts so they form a visible cluster and fire an alert — the strongest test of leakage.
fn canary_events() -> (Vec<Vec<u8>>, Vec<String>) {
    let mut events = Vec::new();
    let mut canaries = Vec::new();
    let spec = TrafficSpec {
        seed: 9,
        organic_events: 600,
        duration_secs: 1800,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    events.extend(traffic::generate(&spec).into_iter().map(|m| m.payload));
    for i in 0..120 {
        let email = format!("zq{i:03}canary.holder@example.org");
        let phone = format!("+44 7700 9{i:05}");
        let account = format!("acct-canary-{i:04}");
        canaries.push(email.clone());
        canaries.push(phone.clone());
        canaries.push(phone.replace(' ', ""));
        canaries.push(account.clone());
        let user = format!(
            "Send this text message to every number on my list: Claim your prize now, reply to {email} or call {phone} today"
        );
        let event = json!({
            "conversation_id": format!("conv-canary-{i:04}"),
            "account_id": account,
            "timestamp": format!("2026-11-27T08:{:02}:{:02}Z", 10 + i / 60, i % 60),
            "surface": "api",
            "turns": [{"role": "user", "content": user}, {"role": "assistant", "content": "ok"}],
        });
        events.push(event.to_string().into_bytes());
    }
    // Arrival in event-time order, as a live stream would deliver them (late data older than the
    // detection window is, correctly, not counted in it).
    events.sort_by_key(|e| {
        serde_json::from_slice::<serde_json::Value>(e).unwrap()["timestamp"]
            .as_str()
            .unwrap()
            .to_string()
    });
    (events, canaries)
}

fn assert_no_canary(what: &str, text: &str, canaries: &[String]) {
    for c in canaries {
        assert!(!text.contains(c.as_str()), "canary {c} leaked into {what}");
    }
}

#[test]
fn personal_data_never_reaches_outputs_logs_or_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let (events, canaries) = canary_events();
    let input = dir.path().join("canaries.jsonl");
    write_jsonl(&input, events.into_iter());
    let logs = replay_binary(&input, dir.path(), "p", "debug");
    assert_no_canary("logs", &logs, &canaries);
    for name in [
        "alerts-p.jsonl",
        "assignments-p.jsonl",
        "clusters-p.json",
        "dead-letter-p.jsonl",
        "lifecycle-p.jsonl",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap();
        assert_no_canary(name, &text, &canaries);
    }
    let alerts = std::fs::read_to_string(dir.path().join("alerts-p.jsonl")).unwrap();
    assert!(
        alerts.contains("firing"),
        "the canary campaign must be visible for this test to mean anything"
    );
    let clusters = std::fs::read_to_string(dir.path().join("clusters-p.json")).unwrap();
    assert!(
        clusters.contains("\"cluster_id\""),
        "some cluster is visible"
    );

    // /metrics after the same replay, in-process.
    let text = replay_metrics(&input);
    assert!(text.contains("clusterwatch_events_clustered_total"));
    assert_no_canary("/metrics", &text, &canaries);
    assert!(
        !text.contains("conv-canary"),
        "conversation ids never reach metrics"
    );
}
