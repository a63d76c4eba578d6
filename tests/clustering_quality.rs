//! The clustering engine on real data: HNSW recall against the exact scan on real
//! all-MiniLM-L6-v2 embeddings, the online clusterer and its topic level against CLINC150 labels,
//! and the `eval clustering` command end to end.

mod common;

use std::process::Command;

use clusterwatch::cluster::index::hnsw::HnswSettings;
use clusterwatch::cluster::index::{CentroidIndex, ExactScanIndex, HnswIndex};

/// The first `n` CLINC150 test texts of the bundled fixture, in file order, with their labels.
fn clinc150(n: usize) -> (Vec<String>, Vec<String>) {
    let raw = std::fs::read_to_string(
        common::repo_root().join("tests/fixtures/traffic/clinc150_test.jsonl"),
    )
    .expect("fixture");
    raw.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["label"] != "oos")
        // Every third line, so many intents are present.
        .step_by(3)
        .take(n)
        .map(|v| {
            (
                v["text"].as_str().unwrap_or_default().to_string(),
                v["label"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unzip()
}

#[test]
fn hnsw_recall_at_1_on_real_embeddings_is_at_least_0_99() {
    let (texts, _) = clinc150(1500);
    let model = common::model();
    let vectors: Vec<Vec<f32>> = texts
        .chunks(64)
        .flat_map(|batch| model.embed_batch(batch).expect("embed"))
        .collect();
    let dim = model.dimension();
    // The first 1,000 texts are the "centroids"; the other 500 and the centroids themselves are
    // the queries.
    let mut exact = ExactScanIndex::new(dim);
    let mut hnsw = HnswIndex::new(
        dim,
        HnswSettings {
            min_graph_size: usize::MAX,
            ..Default::default()
        },
        true,
    );
    for (id, v) in vectors.iter().take(1000).enumerate() {
        exact.upsert(id as u64, v);
        hnsw.upsert(id as u64, v);
    }
    hnsw.rebuild_now();
    assert_eq!(hnsw.delta_len(), 0, "the graph alone answers");
    let agree = vectors
        .iter()
        .filter(|q| exact.nearest(q).map(|x| x.0) == hnsw.nearest(q).map(|x| x.0))
        .count();
    let recall = agree as f64 / vectors.len() as f64;
    println!(
        "HNSW recall@1 on {} real queries: {recall:.4}",
        vectors.len()
    );
    assert!(recall >= 0.99, "recall@1 {recall}");
}

#[test]
fn eval_clustering_prints_every_level_next_to_k_means() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("labelled.jsonl");
    let (texts, labels) = clinc150(600);
    let lines: Vec<String> = texts
        .iter()
        .zip(&labels)
        .map(|(t, l)| serde_json::json!({"text": t, "label": l}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).expect("write input");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[embedder]\nmodel_dir = {:?}\n",
            common::repo_root().join("models/all-MiniLM-L6-v2")
        ),
    )
    .expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["eval", "clustering", "--input"])
        .arg(&input)
        .arg("--domains")
        .arg(common::repo_root().join("tests/fixtures/traffic/clinc150_intent_to_domain.json"))
        .arg("--config")
        .arg(&config)
        .arg("--vector-cache")
        .arg(dir.path().join("cache"))
        .output()
        .expect("run clusterwatch");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    let row = |name: &str| -> Vec<f64> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name:?} row in\n{stdout}"));
        line[name.len()..]
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect()
    };
    // clusters, NMI, AMI, ARI, purity
    let topics = row("online topics ");
    let kmeans = row("batch k-means k=");
    assert_eq!(topics.len(), 5);
    assert!(kmeans.len() >= 5);
    assert!(
        topics[2] > 0.5,
        "topic-level AMI on real CLINC150 text: {}",
        topics[2]
    );
    assert!(kmeans[kmeans.len() - 3] > 0.5);
    assert!(stdout.contains("online domains (vs domains)"));
    assert!(stdout.contains("HNSW recall@1"));
}
