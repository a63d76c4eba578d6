//! The HTTP embedder: an embedding service behind the [`Embedder`] trait, speaking either the
//! OpenAI-compatible `POST /v1/embeddings` or Hugging Face text-embeddings-inference `POST /embed`.
//!
//! Calls go through [`RemoteService`] (concurrency limit, timeouts, jittered retries honouring
//! `Retry-After`, circuit breaker). An answer with the wrong number of vectors, the wrong dimension
//! or a non-finite value is a malformed response and is retried; it never reaches the index. There
//! is no offline fallback for vectors — another model's vectors would live in another space — so a
//! call that finally fails returns [`EmbedError::Unavailable`], and the embed stage waits and tries
//! again rather than drop the events (see `pipeline.rs`).
//!
//! The trait is synchronous (the in-process models are CPU work on the blocking pool), so requests
//! are driven on the runtime the embedder was built in, via `Handle::block_on` from the blocking
//! thread; outside any runtime (the `eval` command) the embedder brings a small one of its own.

use serde::{Deserialize, Serialize};

use super::{EmbedError, Embedder};
use crate::export::Metrics;
use crate::remote::{RemoteService, RemoteSettings};

/// `[embedder.http]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpEmbedderSettings {
    /// `openai` (`POST /v1/embeddings`) or `tei` (`POST /embed`).
    pub protocol: EmbeddingProtocol,
    /// Base URL without the API path, e.g. `http://127.0.0.1:8080`.
    pub endpoint: String,
    /// Model name: sent to OpenAI-compatible services, and part of the embedder id that cluster
    /// state records, so a model change is never silently mixed into old clusters.
    pub model: String,
    /// Vector dimension the model produces; every answer is checked against it. Required.
    pub dimension: usize,
    /// Environment variable holding a bearer token; empty for services without one.
    pub api_key_env: String,
    /// Most texts per request (batches from the pipeline are split to fit). 64.
    pub max_batch: usize,
    pub remote: RemoteSettings,
}

impl Default for HttpEmbedderSettings {
    fn default() -> Self {
        HttpEmbedderSettings {
            protocol: EmbeddingProtocol::Openai,
            endpoint: String::new(),
            model: String::new(),
            dimension: 0,
            api_key_env: String::new(),
            max_batch: 64,
            remote: RemoteSettings::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmbeddingProtocol {
    #[default]
    Openai,
    Tei,
}

/// Where the embedder's requests run.
enum Driver {
    /// The runtime the embedder was built in; `embed_batch` is called from its blocking pool.
    Shared(tokio::runtime::Handle),
    /// A runtime of its own, for callers outside any runtime.
    Own(tokio::runtime::Runtime),
}

pub struct HttpEmbedder {
    settings: HttpEmbedderSettings,
    api_key: Option<String>,
    service: RemoteService,
    driver: Driver,
    id: String,
}

impl HttpEmbedder {
    pub fn new(settings: &HttpEmbedderSettings, metrics: Metrics) -> Result<Self, EmbedError> {
        let config = |reason: String| EmbedError::Config(reason);
        if settings.endpoint.trim().is_empty() {
            return Err(config("embedder.http.endpoint is empty".into()));
        }
        if settings.model.trim().is_empty() {
            return Err(config(
                "embedder.http.model is empty (it names the vector space in cluster state)".into(),
            ));
        }
        if settings.dimension == 0 {
            return Err(config(
                "embedder.http.dimension is 0: set the model's vector dimension".into(),
            ));
        }
        let api_key = crate::remote::api_key_from_env(&settings.api_key_env)
            .map_err(|e| config(e.to_string()))?;
        let driver = match tokio::runtime::Handle::try_current() {
            Ok(handle) => Driver::Shared(handle),
            Err(_) => Driver::Own(
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .map_err(|e| config(format!("cannot start the HTTP runtime: {e}")))?,
            ),
        };
        let service = RemoteService::new("embed", settings.remote.clone(), metrics)
            .map_err(|e| config(e.to_string()))?;
        let protocol = match settings.protocol {
            EmbeddingProtocol::Openai => "openai",
            EmbeddingProtocol::Tei => "tei",
        };
        Ok(HttpEmbedder {
            id: format!("http-{protocol}:{}:{}", settings.model, settings.dimension),
            settings: settings.clone(),
            api_key,
            service,
            driver,
        })
    }

    fn url(&self) -> String {
        let base = self.settings.endpoint.trim_end_matches('/');
        match self.settings.protocol {
            EmbeddingProtocol::Openai => format!("{base}/v1/embeddings"),
            EmbeddingProtocol::Tei => format!("{base}/embed"),
        }
    }

    fn body(&self, texts: &[String]) -> serde_json::Value {
        match self.settings.protocol {
            EmbeddingProtocol::Openai => serde_json::json!({
                "model": self.settings.model,
                "input": texts,
                "encoding_format": "float",
            }),
            EmbeddingProtocol::Tei => serde_json::json!({
                "inputs": texts,
                "normalize": true,
                "truncate": true,
            }),
        }
    }

    async fn embed_chunk(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let url = self.url();
        let body = self.body(texts);
        self.service
            .call(
                "embed",
                |http| {
                    let request = http.post(&url).json(&body);
                    match &self.api_key {
                        Some(key) => request.bearer_auth(key),
                        None => request,
                    }
                },
                |bytes| {
                    parse(
                        self.settings.protocol,
                        bytes,
                        texts.len(),
                        self.settings.dimension,
                    )
                },
            )
            .await
            .map_err(|e| match e.class {
                crate::remote::FailureClass::Rejected => EmbedError::Inference(e.to_string()),
                _ => EmbedError::Unavailable(e.to_string()),
            })
    }
}

impl Embedder for HttpEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.settings.dimension
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let work = async {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in texts.chunks(self.settings.max_batch.max(1)) {
                out.extend(self.embed_chunk(chunk).await?);
            }
            Ok(out)
        };
        match &self.driver {
            Driver::Shared(handle) => handle.block_on(work),
            Driver::Own(runtime) => runtime.block_on(work),
        }
    }
}

#[derive(Deserialize)]
struct OpenaiEmbeddings {
    data: Vec<OpenaiEmbedding>,
}

#[derive(Deserialize)]
struct OpenaiEmbedding {
    index: usize,
    embedding: Vec<f32>,
}

/// Parses and checks an answer: one finite vector of `dimension` per input, normalised to unit
/// length (cosine is a dot product downstream; services differ on whether they normalise).
pub fn parse(
    protocol: EmbeddingProtocol,
    body: &[u8],
    count: usize,
    dimension: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let vectors: Vec<Vec<f32>> = match protocol {
        EmbeddingProtocol::Openai => {
            let r: OpenaiEmbeddings = serde_json::from_slice(body)
                .map_err(|e| format!("malformed embeddings response ({:?} error)", e.classify()))?;
            let mut slots: Vec<Option<Vec<f32>>> = vec![None; count];
            for item in r.data {
                let slot = slots
                    .get_mut(item.index)
                    .ok_or_else(|| format!("embedding index {} out of range", item.index))?;
                if slot.replace(item.embedding).is_some() {
                    return Err(format!("embedding index {} repeated", item.index));
                }
            }
            slots
                .into_iter()
                .collect::<Option<Vec<_>>>()
                .ok_or("an input got no embedding")?
        }
        EmbeddingProtocol::Tei => serde_json::from_slice(body)
            .map_err(|e| format!("malformed /embed response ({:?} error)", e.classify()))?,
    };
    if vectors.len() != count {
        return Err(format!("{} vectors for {count} inputs", vectors.len()));
    }
    vectors
        .into_iter()
        .map(|v| {
            if v.len() != dimension {
                return Err(format!(
                    "vector of dimension {} where the index expects {dimension}",
                    v.len()
                ));
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err("vector holds a non-finite value".into());
            }
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err("zero vector".into());
            }
            Ok(v.into_iter().map(|x| x / norm).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_parse_into_unit_vectors_in_input_order() {
        let openai = br#"{"object":"list","data":[{"object":"embedding","index":1,"embedding":[0,2]},{"object":"embedding","index":0,"embedding":[3,4]}],"model":"m","usage":{"prompt_tokens":4,"total_tokens":4}}"#;
        let v = parse(EmbeddingProtocol::Openai, openai, 2, 2).unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
        let tei = b"[[3,4],[0,2]]";
        let v = parse(EmbeddingProtocol::Tei, tei, 2, 2).unwrap();
        assert_eq!(v, vec![vec![0.6, 0.8], vec![0.0, 1.0]]);
    }

    #[test]
    fn wrong_counts_dimensions_and_values_are_malformed() {
        assert!(parse(EmbeddingProtocol::Tei, b"[[1,0]]", 2, 2).is_err());
        assert!(parse(EmbeddingProtocol::Tei, b"[[1,0,0]]", 1, 2).is_err());
        assert!(parse(EmbeddingProtocol::Tei, b"[[0,0]]", 1, 2).is_err());
        assert!(parse(EmbeddingProtocol::Tei, b"[[1,0]", 1, 2).is_err());
        let repeated = br#"{"data":[{"index":0,"embedding":[1,0]},{"index":0,"embedding":[1,0]}]}"#;
        assert!(parse(EmbeddingProtocol::Openai, repeated, 2, 2).is_err());
    }
}
