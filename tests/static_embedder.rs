//! The static embedder distilled from all-MiniLM-L6-v2: the distilled file is well formed, the
//! fast tokenizer agrees with the Hugging Face one, vectors are deterministic, unit-length and
//! semantically sane, and k-means over them recovers CLINC150 intents about as the transformer does.
//!
//! It uses `models/all-MiniLM-L6-v2/static-256.safetensors` when `scripts/setup.sh` has distilled
//! it, and otherwise distils it here once (about a minute on 2 cores). An ignored test measures
//! throughput: `RAYON_NUM_THREADS=1 cargo test --release --test static_embedder -- --ignored --nocapture`.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Instant;

use clusterwatch::embed::distill::{distill, DistillOptions};
use clusterwatch::embed::static_model::{self, StaticEmbedder};
use clusterwatch::embed::Embedder;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

/// The distilled model, distilled here when setup has not done it (or it is stale).
fn embedder() -> &'static StaticEmbedder {
    static EMBEDDER: OnceLock<StaticEmbedder> = OnceLock::new();
    EMBEDDER.get_or_init(|| {
        let options = DistillOptions::new(&model_dir());
        let report = distill(&options).unwrap_or_else(|e| {
            panic!(
                "{e}\nThe static embedder is distilled from the real model: run scripts/setup.sh"
            )
        });
        assert_eq!(report.manifest.dims, 256);
        StaticEmbedder::load(&options.output).expect("load the distilled model")
    })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|s| s.to_string()).collect()
}

/// CLINC150 test texts and labels (out-of-scope left out), from the copy bundled in the repo
/// (tests/fixtures/traffic/README.md).
fn clinc() -> (Vec<String>, Vec<String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traffic/clinc150_test.jsonl");
    let raw = std::fs::read_to_string(path).expect("the bundled CLINC150 test set");
    let mut texts = Vec::new();
    let mut labels = Vec::new();
    for line in raw.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("CLINC150 line");
        let label = v["label"].as_str().unwrap_or_default().to_string();
        if label == "oos" {
            continue;
        }
        texts.push(v["text"].as_str().unwrap_or_default().to_string());
        labels.push(label);
    }
    (texts, labels)
}

#[test]
fn manifest_describes_the_distillation() {
    let e = embedder();
    let path = model_dir().join(static_model::DEFAULT_FILE_NAME);
    let manifest: static_model::Manifest = serde_json::from_slice(
        &std::fs::read(static_model::manifest_path(&path)).expect("manifest beside the vectors"),
    )
    .expect("manifest parses");
    assert_eq!(manifest.source_model, "all-MiniLM-L6-v2");
    assert_eq!(manifest.source_dims, 384);
    assert_eq!(manifest.dims, e.dimension());
    assert_eq!(manifest.vocab_size, 30522);
    assert!(manifest.distilled_tokens > 29_000 && manifest.distilled_tokens < 30_522);
    assert_eq!(manifest.weighting.kind, "sif-zipf");
    assert_eq!(
        manifest.source_checksum,
        clusterwatch::embed::distill::source_checksum(&model_dir()).unwrap()
    );
    // A second distill finds it up to date rather than redoing it.
    let again = distill(&DistillOptions::new(&model_dir())).unwrap();
    assert!(again.up_to_date);
}

#[test]
fn dimension_identity_and_unit_norm() {
    let e = embedder();
    assert_eq!(e.dimension(), 256);
    assert!(e.id().starts_with("static256-"), "{}", e.id());
    let transformer_like = "all-MiniLM-L6-v2-";
    assert!(!e.id().starts_with(transformer_like));
    let vs = e
        .embed_batch(&strings(&[
            "How do I reset my password?",
            "",
            "   ",
            "Ünïcödé façade 東京",
        ]))
        .unwrap();
    for v in &vs {
        assert_eq!(v.len(), 256);
        assert!((dot(v, v) - 1.0).abs() < 1e-4);
        assert!(v.iter().all(|x| x.is_finite()));
    }
    // Texts without a known token all get the same (empty-input) vector.
    assert!(dot(&vs[1], &vs[2]) > 0.9999);
}

#[test]
fn deterministic() {
    let e = embedder();
    let texts = strings(&["book a flight to boston", "what is my balance", "hi"]);
    let a = e.embed_batch(&texts).unwrap();
    let b = e.embed_batch(&texts).unwrap();
    assert_eq!(a, b);
    // And a text embeds the same alone as in a batch.
    let alone = e.embed_batch(&texts[1..2]).unwrap();
    assert_eq!(alone[0], a[1]);
}

#[test]
fn distillation_is_deterministic() {
    // Two distillations of the first 600 tokens give byte-identical files.
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let mut options = DistillOptions::new(&model_dir());
        options.output = dir.path().join(name);
        options.limit = Some(600);
        options.dims = 64;
        distill(&options).unwrap();
        std::fs::read(&options.output).unwrap()
    };
    let a = run("a.safetensors");
    let b = run("b.safetensors");
    assert!(a == b, "two distillations differ");
}

#[test]
fn paraphrases_are_closer_than_unrelated_sentences() {
    let e = embedder();
    let vs = e
        .embed_batch(&strings(&[
            "How do I reset my password?",
            "I forgot my password and need to change it",
            "What's a good recipe for banana bread?",
            "book me a flight to new york next friday",
            "I need a plane ticket to NYC on Friday",
        ]))
        .unwrap();
    assert!(dot(&vs[0], &vs[1]) > dot(&vs[0], &vs[2]) + 0.1);
    assert!(dot(&vs[3], &vs[4]) > dot(&vs[3], &vs[2]) + 0.1);
    assert!(dot(&vs[3], &vs[4]) > dot(&vs[0], &vs[3]));
}

#[test]
fn fast_tokenizer_matches_the_reference() {
    let e = embedder();
    let mut texts = strings(&[
        "Hello, World!! It's 3:45pm -- what's up?",
        "unaffable xyzzyq qwertyuiopasdfgh",
        "tabs\tand\nnewlines\r\nand\u{1}controls",
        "a [CLS] literal and [brackets]",
        "naïve café résumé",
        "東京 to paris",
        &"longword".repeat(20),
    ]);
    texts.extend(clinc().0.into_iter().step_by(7));
    let mut ids = Vec::new();
    for t in &texts {
        ids.clear();
        e.token_ids(t, &mut ids).unwrap();
        assert_eq!(ids, e.reference_token_ids(t).unwrap(), "{t:?}");
    }
}

#[test]
fn clinc_subset_clusters_sanely() {
    let (texts, labels) = clinc();
    // The first 20 intents: 600 texts, enough to tell a sane embedding from a broken one.
    let mut names: Vec<&String> = Vec::new();
    let mut subset = Vec::new();
    let mut truth = Vec::new();
    for (t, l) in texts.iter().zip(&labels) {
        let id = match names.iter().position(|n| *n == l) {
            Some(id) => id,
            None if names.len() < 20 => {
                names.push(l);
                names.len() - 1
            }
            None => continue,
        };
        subset.push(t.clone());
        truth.push(id as u32);
    }
    let e = embedder();
    let vectors: Vec<f32> = e.embed_batch(&subset).unwrap().concat();
    let predicted =
        clusterwatch::eval::kmeans::kmeans(&vectors, e.dimension(), names.len(), 1, 3, 100)
            .unwrap();
    let s = clusterwatch::eval::metrics::score(&truth, &predicted).unwrap();
    // MiniLM gets ~0.85 on this subset; a broken distillation (no PCA centring, wrong rows)
    // falls far below.
    assert!(s.ami > 0.7, "AMI {:.3} on {} texts", s.ami, subset.len());
}

/// Sentences/s on one thread for the static embedder (with the tokenizer and the lookup timed
/// apart) and for the transformer, over CLINC150 test texts.
#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn throughput() {
    let (texts, _) = clinc();
    let e = embedder();
    let rounds = 20;
    let n = texts.len() * rounds;
    let mut out = vec![0f32; e.dimension()];
    let mut ids = Vec::with_capacity(64);
    let started = Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            e.embed_into(t, &mut out, &mut ids).unwrap();
        }
    }
    let whole = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut total_ids = 0usize;
    for _ in 0..rounds {
        for t in &texts {
            ids.clear();
            e.token_ids(t, &mut ids).unwrap();
            total_ids += ids.len();
        }
    }
    let tokenize = started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..rounds {
        for t in &texts {
            std::hint::black_box(e.reference_token_ids(t).unwrap());
        }
    }
    let reference = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let batch = e.embed_batch(&texts).unwrap();
    let batch_secs = started.elapsed().as_secs_f64();
    std::hint::black_box(batch);
    println!(
        "static: {:.0} sentences/s on one thread ({n} CLINC150 texts, {:.1} tokens each); fast tokenizer alone {:.0}/s, Hugging Face tokenizer alone {:.0}/s; embed_batch {:.0}/s",
        n as f64 / whole,
        total_ids as f64 / n as f64,
        n as f64 / tokenize,
        n as f64 / reference,
        texts.len() as f64 / batch_secs
    );

    let minilm = clusterwatch::embed::minilm::MiniLmEmbedder::load(&model_dir(), 128).unwrap();
    let sample: Vec<String> = texts.iter().take(1000).cloned().collect();
    let started = Instant::now();
    for chunk in sample.chunks(64) {
        std::hint::black_box(minilm.embed_batch(chunk).unwrap());
    }
    println!(
        "transformer: {:.0} sentences/s ({} texts, batches of 64, RAYON_NUM_THREADS={})",
        sample.len() as f64 / started.elapsed().as_secs_f64(),
        sample.len(),
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "unset".into())
    );
}

#[test]
fn static_kind_gets_its_own_join_threshold_unless_one_is_set() {
    use clusterwatch::config::{EmbedderKind, Settings, STATIC_JOIN_THRESHOLD};
    let dir = tempfile::tempdir().unwrap();
    let load = |toml: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Settings::load(Some(&path)).unwrap()
    };
    let s = load("[embedder]\nkind = \"static\"\n");
    assert_eq!(s.embedder.kind, EmbedderKind::Static);
    assert_eq!(s.cluster.join_threshold, STATIC_JOIN_THRESHOLD);
    let s = load("[embedder]\nkind = \"static\"\n[cluster]\njoin_threshold = 0.7\n");
    assert_eq!(s.cluster.join_threshold, 0.7);
    // `minilm` stays accepted for the transformer, which keeps the cluster default.
    let s = load("[embedder]\nkind = \"minilm\"\n");
    assert_eq!(s.embedder.kind, EmbedderKind::Transformer);
    assert_eq!(
        s.cluster.join_threshold,
        Settings::default().cluster.join_threshold
    );
}

/// The int8 screen in front of the exact scan (`cluster/index/screen.rs`), and its prefix pass,
/// must not change a single assignment: CLINC150 through the online clusterer at the static
/// kind's threshold (~1,900 micro-clusters, well past the rows from which queries are screened),
/// with both, with the screen alone and with neither, gives the same micro-cluster for every
/// text and the same topics. The static vectors are principal components, so this is the
/// prefix pass on the vectors it is built for.
#[test]
fn the_exact_scans_int8_screen_changes_no_assignment_on_real_vectors() {
    use clusterwatch::config::{ClusterSettings, STATIC_JOIN_THRESHOLD};
    use clusterwatch::eval::online::cluster_online;
    let (texts, _) = clinc();
    let e = embedder();
    let vectors: Vec<f32> = e.embed_batch(&texts).unwrap().concat();
    let run = |screen: bool, prefix: bool| {
        let settings = ClusterSettings {
            join_threshold: STATIC_JOIN_THRESHOLD,
            exact_screen: screen,
            exact_prefix: prefix,
            ..Default::default()
        };
        cluster_online(&settings, e.id(), &vectors, e.dimension(), 7).unwrap()
    };
    let plain = run(false, false);
    for (screened, what) in [(run(true, false), "screen"), (run(true, true), "prefix")] {
        let clusters = screened.state.live_clusters();
        assert!(clusters > 1000, "only {clusters} micro-clusters");
        assert_eq!(screened.micro_labels(), plain.micro_labels(), "{what}");
        assert_eq!(
            screened.topic_labels().unwrap(),
            plain.topic_labels().unwrap(),
            "{what}"
        );
    }
}
