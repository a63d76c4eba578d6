//! Embed stage: a summary's request text becomes a unit vector, in batches.
//!
//! The default is all-MiniLM-L6-v2 run in-process with candle ([`minilm`]), loaded only from a
//! local directory. [`http`] calls an embedding service. [`hashing`] is a dependency-free feature-hashing embedder for unit tests.

pub mod hashing;
pub mod http;
pub mod minilm;

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
        EmbedderKind::Minilm => Ok(Box::new(minilm::MiniLmEmbedder::load(
            &settings.model_dir,
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
