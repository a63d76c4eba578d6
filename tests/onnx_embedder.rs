//! The `onnx` embedder: all-MiniLM-L6-v2 as the ONNX graph `scripts/export_onnx.py` writes, run by
//! the ONNX Runtime library `scripts/fetch-onnx.sh` unpacks (both run by `scripts/setup.sh`).
//!
//! The fp32 graph must give the candle transformer's vectors (same tokenizer, same weights, same
//! pooling), the int8 graph vectors close to them, each its own embedder id; concurrent callers
//! get the same vectors as one caller; a missing library or graph is a clear error naming the
//! script that provides it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clusterwatch::embed::minilm::MiniLmEmbedder;
use clusterwatch::embed::onnx::{OnnxEmbedder, OnnxOptions};
use clusterwatch::embed::{EmbedError, Embedder};

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2")
}

fn library() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/onnxruntime/libonnxruntime.so")
}

fn load(graph: &str, library: &Path) -> Result<OnnxEmbedder, EmbedError> {
    OnnxEmbedder::load(&OnnxOptions {
        model_dir: &model_dir(),
        graph: &model_dir().join(graph),
        library,
        max_tokens: 128,
        sessions: 2,
        threads: 1,
    })
}

fn onnx(graph: &str) -> OnnxEmbedder {
    load(graph, &library()).unwrap_or_else(|e| {
        panic!("{e}\nThe ONNX graphs and runtime come from scripts/fetch-onnx.sh (run by scripts/setup.sh)")
    })
}

/// Real requests of several lengths, and the edge cases the tokenizer treats specially.
fn texts() -> Vec<String> {
    // The CLINC150 test set bundled in the repo (tests/fixtures/traffic/README.md).
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/traffic/clinc150_test.jsonl");
    let raw = std::fs::read_to_string(path).expect("CLINC150 test set");
    let mut texts: Vec<String> = raw
        .lines()
        .step_by(55)
        .take(100)
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            v["text"].as_str().unwrap().to_string()
        })
        .collect();
    texts.extend(
        [
            "",
            "a",
            "Wie spät ist es in Tokyo?",
            "résumé café naïve",
            &"very long request about the billing of my account ".repeat(40),
        ]
        .map(String::from),
    );
    texts
}

fn cosines(a: &[Vec<f32>], b: &[Vec<f32>]) -> Vec<f32> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p * q).sum())
        .collect()
}

#[test]
fn the_fp32_graph_gives_the_candle_transformer_s_vectors_and_int8_stays_close() {
    let texts = texts();
    let candle = MiniLmEmbedder::load(&model_dir(), 128).expect("the transformer");
    let reference = candle.embed_batch(&texts).unwrap();
    let fp32 = onnx("model.onnx");
    let int8 = onnx("model-int8.onnx");
    assert_eq!((fp32.dimension(), int8.dimension()), (384, 384));

    let fp32_cos = cosines(&fp32.embed_batch(&texts).unwrap(), &reference);
    let worst = fp32_cos.iter().copied().fold(f32::MAX, f32::min);
    println!(
        "fp32 graph vs candle over {} texts: lowest cosine {worst:.6}",
        texts.len()
    );
    assert!(worst > 0.9999, "fp32 graph differs from candle: {worst}");

    let int8_vectors = int8.embed_batch(&texts).unwrap();
    for v in &int8_vectors {
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "unit length, got {norm}");
    }
    let int8_cos = cosines(&int8_vectors, &reference);
    let mean = int8_cos.iter().sum::<f32>() / int8_cos.len() as f32;
    let worst = int8_cos.iter().copied().fold(f32::MAX, f32::min);
    println!("int8 graph vs candle: mean cosine {mean:.4}, lowest {worst:.4}");
    assert!(
        mean > 0.97 && worst > 0.90,
        "int8 drifted: mean {mean}, lowest {worst}"
    );

    // Three vector spaces, three ids: state built in one is refused under another.
    let ids = [candle.id(), fp32.id(), int8.id()];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
}

#[test]
fn concurrent_callers_get_the_vectors_one_caller_gets() {
    let texts = texts();
    let embedder = Arc::new(onnx("model.onnx"));
    let alone = embedder.embed_batch(&texts).unwrap();
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let embedder = Arc::clone(&embedder);
                let texts = texts.clone();
                scope.spawn(move || embedder.embed_batch(&texts).unwrap())
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for vectors in together {
        let worst = cosines(&vectors, &alone)
            .into_iter()
            .fold(f32::MAX, f32::min);
        assert!(worst > 0.99999, "{worst}");
    }
}

#[test]
fn a_missing_library_or_graph_is_a_clear_error() {
    let err = load(
        "model-int8.onnx",
        Path::new("/nonexistent/libonnxruntime.so"),
    )
    .err()
    .expect("no library, no embedder");
    assert!(matches!(err, EmbedError::ModelMissing { .. }), "{err}");
    assert!(err.to_string().contains("fetch-onnx.sh"), "{err}");
    let err = load("no-such-graph.onnx", &library())
        .err()
        .expect("no graph, no embedder");
    assert!(err.to_string().contains("fetch-onnx.sh"), "{err}");
}
