//! `clusterwatch bench pipeline` and `clusterwatch bench soak` on tiny inputs against the real
//! Kafka broker, `clusterwatch bench embed` on a slice of the quality sets, and `bench summarize`
//! and `bench clustering --hierarchy` on small sizes, so the commands behind the published
//! figures cannot rot: each runs
//! the real binary (which runs a real `clusterwatch run` child), and the figures it writes are
//! checked for consistency — every produced event processed and committed, latency observed
//! through the pipeline's own histogram, samples taken. Speed itself is never asserted.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str], json_out: &std::path::Path) -> serde_json::Value {
    let bootstrap = kafka_bootstrap();
    let mut with_broker = args.to_vec();
    with_broker.extend(["--bootstrap", bootstrap.as_str()]);
    bench_offline(&with_broker, json_out)
}

/// Runs `clusterwatch bench <args> --json-out <json_out>` and returns the JSON it wrote.
fn bench_offline(args: &[&str], json_out: &std::path::Path) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .arg("bench")
        .args(args)
        .arg("--json-out")
        .arg(json_out)
        .env("CLUSTERWATCH_LOG", "warn")
        .output()
        .expect("run clusterwatch bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "clusterwatch bench {args:?} failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(json_out).expect("the --json-out file");
    serde_json::from_str(&text).expect("JSON figures")
}

fn u(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

#[test]
fn bench_pipeline_measures_the_real_path_and_skips_embedders_without_model_files() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("pipeline.json");
    let no_models = dir.path().join("no-models");
    let report = bench(
        &[
            "pipeline",
            "--embedders",
            "hashing,static",
            "--events",
            "500",
            "--latency-seconds",
            "2",
            "--model-dir",
            no_models.to_str().unwrap(),
        ],
        &json,
    );
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(skipped[0][0], "static");
    assert!(skipped[0][1].as_str().unwrap().contains("missing"));

    let figures = report["figures"].as_array().unwrap();
    assert_eq!(figures.len(), 1);
    let hashing = &figures[0];
    assert_eq!(hashing["embedder"], "hashing");
    let produced = u(&hashing["produced"]);
    assert!(produced > 500, "the latency phase produced too: {produced}");
    assert_eq!(u(&hashing["processed"]), produced, "every event processed");
    assert_eq!(
        u(&hashing["consumed"]),
        produced,
        "every event consumed once"
    );
    assert_eq!(
        u(&hashing["committed"]),
        u(&hashing["end_offsets"]),
        "offsets committed to the end"
    );
    assert_eq!(u(&hashing["end_offsets"]), produced);
    assert!(f(&hashing["throughput"]["events_per_second"]) > 0.0);
    // The latency phase's events were all observed by the event→cluster histogram.
    let warm_up = u(&hashing["throughput"]["warm_up_events"]);
    assert!(warm_up > 0, "the clock starts after a warm-up");
    assert_eq!(u(&hashing["latency_events"]), produced - 500 - warm_up);
    let (p50, p99) = (f(&hashing["p50_seconds"]), f(&hashing["p99_seconds"]));
    assert!(p50 > 0.0 && p50 <= p99, "p50 {p50} p99 {p99}");
    assert!(
        f(&hashing["peak_rss_mib"]) > 10.0,
        "the child's VmHWM was read"
    );
    let shares = hashing["throughput"]["stage_share"].as_array().unwrap();
    let stages: Vec<&str> = shares.iter().map(|s| s[0].as_str().unwrap()).collect();
    for stage in ["decode", "summarize", "embed", "cluster", "detect"] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }
    assert!(!stages.contains(&"source"), "the source's wait is not work");
    let total: f64 = shares.iter().map(|s| f(&s[1])).sum();
    assert!((total - 1.0).abs() < 1e-6, "shares sum to {total}");
}

#[test]
fn bench_soak_samples_over_time_and_drains_without_losing_events() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("soak.json");
    // No --rate: the calibration path (a throughput measurement first) runs too.
    let report = bench(
        &[
            "soak",
            "--embedder",
            "hashing",
            "--minutes",
            "0.15",
            "--calibration-events",
            "400",
            "--rate-multiplier",
            "0.25",
            "--sample-secs",
            "2",
        ],
        &json,
    );
    let calibrated = f(&report["calibrated_events_per_second"]);
    assert!(calibrated > 0.0);
    assert!((f(&report["rate"]) - 0.25 * calibrated).abs() < 1e-6);
    let produced = u(&report["produced"]);
    assert!(
        produced > 200,
        "more than the warm-up was produced: {produced}"
    );
    assert_eq!(u(&report["processed"]), produced, "nothing lost");
    assert_eq!(u(&report["consumed"]), produced);
    assert_eq!(u(&report["committed"]), u(&report["end_offsets"]));
    assert_eq!(report["drained"], true);
    let samples = report["samples"].as_array().unwrap();
    assert!(samples.len() >= 3, "{} samples", samples.len());
    assert!(samples.iter().any(|s| s["producing"] == true));
    let last = samples.last().unwrap();
    assert_eq!(last["producing"], false);
    assert_eq!(last["backlog"], 0);
    assert!(samples.iter().all(|s| f(&s["rss_mib"]) > 10.0));
    let seconds: Vec<f64> = samples.iter().map(|s| f(&s["seconds"])).collect();
    assert!(
        seconds.windows(2).all(|w| w[0] < w[1]),
        "samples in time order"
    );
    assert!(u(&report["latency_events"]) > 0);
    assert!(f(&report["p50_seconds"]) <= f(&report["p99_seconds"]));
}

#[test]
fn bench_embed_measures_speed_per_thread_count_and_quality_per_set() {
    let dir = tempfile::tempdir().unwrap();
    // Slices of the real sets (the full ones are the published figures' job).
    let slice = |name: &str, source: &str| {
        let text =
            std::fs::read_to_string(repo_root().join(source)).expect("the bundled quality set");
        let path = dir.path().join(name);
        let lines: Vec<&str> = text.lines().take(300).collect();
        std::fs::write(&path, lines.join("\n")).unwrap();
        path
    };
    let clinc = slice("clinc.jsonl", "tests/fixtures/traffic/clinc150_test.jsonl");
    let banking = slice(
        "banking.jsonl",
        "tests/fixtures/traffic/banking77_test.jsonl",
    );
    let json = dir.path().join("embed.json");
    let cache = dir.path().join("vectors");
    let report = bench_offline(
        &[
            "embed",
            "--embedders",
            "hashing,static,http",
            "--seconds",
            "0.3",
            "--clinc150",
            clinc.to_str().unwrap(),
            "--banking77",
            banking.to_str().unwrap(),
            "--vector-cache",
            cache.to_str().unwrap(),
        ],
        &json,
    );
    let embedders = report["embedders"].as_array().unwrap();
    let kinds: Vec<&str> = embedders
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["hashing", "static"]);
    assert_eq!(report["skipped"][0][0], "http", "no service to embed with");
    for e in embedders {
        let speeds = e["sentences_per_second"].as_array().unwrap();
        assert_eq!(
            speeds.iter().map(|s| u(&s[0])).collect::<Vec<_>>(),
            [1, 2],
            "{e}"
        );
        assert!(speeds.iter().all(|s| f(&s[1]) > 0.0), "{e}");
        let quality = e["quality"].as_array().unwrap();
        let sets: Vec<&str> = quality.iter().map(|q| q["set"].as_str().unwrap()).collect();
        assert_eq!(sets, ["CLINC150", "Banking77"]);
        for q in quality {
            assert_eq!(u(&q["texts"]), 300, "{q}");
            for key in ["topic_ami", "topic_nmi", "kmeans_ami", "kmeans_nmi"] {
                let v = f(&q[key]);
                assert!((-1.0..=1.0).contains(&v), "{key} {v}");
            }
            assert!(u(&q["topics"]) > 1, "{q}");
        }
    }
    // The distilled model knows what words mean; feature hashing only which words occur.
    let clinc_ami = |i: usize| f(&embedders[i]["quality"][0]["topic_ami"]);
    assert!(
        clinc_ami(1) > clinc_ami(0),
        "static {} vs hashing {}",
        clinc_ami(1),
        clinc_ami(0)
    );
}

/// Runs `clusterwatch bench <args>` (no broker, no JSON) and returns what it printed.
fn bench_stdout(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .arg("bench")
        .args(args)
        .env("CLUSTERWATCH_LOG", "warn")
        .output()
        .expect("run clusterwatch bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    assert!(
        out.status.success(),
        "clusterwatch bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_summarize_checks_the_scrub_against_every_pass_and_prints_each_step() {
    let out = bench_stdout(&["summarize", "--events", "300", "--seconds", "0.05"]);
    let checked = out
        .lines()
        .find(|l| l.contains("scrub with skips == every pass on"))
        .expect("the equality line");
    let counts: Vec<&str> = checked
        .rsplit("on ")
        .next()
        .unwrap()
        .split(" of ")
        .collect();
    assert_eq!(counts[0], counts[1], "{checked}");
    for step in [
        "scrub, every pass (baseline)",
        "scrub ",
        "language",
        "summarize",
    ] {
        assert!(out.lines().any(|l| l.starts_with(step)), "no {step:?} row");
    }
    assert!(out.contains("scrub speed-up over every pass:"));
}

/// `bench clustering` at `clusters` live clusters, kept short (one small exact cell, no
/// BERTopic), plus `extra`.
fn small_bench_clustering(clusters: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "clustering",
        "--clusters",
        clusters,
        "--indexes",
        "exact",
        "--batch",
        "1",
        "--dimension",
        "32",
        "--seconds",
        "0.1",
        "--bertopic-events",
        "0",
    ];
    args.extend_from_slice(extra);
    bench_stdout(&args)
}

#[test]
fn bench_clustering_times_the_hierarchy_grouping_screened_and_plain() {
    let out = small_bench_clustering("700", &["--hierarchy"]);
    let header = out
        .lines()
        .position(|l| l.starts_with("hierarchy grouping"))
        .expect("the hierarchy table");
    let row: Vec<&str> = out
        .lines()
        .nth(header + 2)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "700", "{row:?}");
    assert!(row[4].ends_with('x'), "{row:?}");
}

/// The three exact-index paths over real static vectors: the command itself fails if any path
/// assigns differently from the plain scan, so a success means equal assignments.
#[test]
fn bench_clustering_runs_the_exact_index_paths_on_demo_traffic() {
    let out = small_bench_clustering("600", &["--traffic-events", "3000"]);
    let header = out
        .lines()
        .position(|l| l.starts_with("exact index on demo traffic"))
        .expect("the demo-traffic table");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(header + 2)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[1]).collect();
    assert_eq!(
        names,
        ["exact-plain", "exact-noprefix", "exact"].repeat(2),
        "{out}"
    );
    // Every path ends with the same live clusters.
    assert!(rows.iter().all(|r| r[4] == rows[0][4]), "{out}");
}
