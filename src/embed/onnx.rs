//! all-MiniLM-L6-v2 through ONNX Runtime, with int8 weights: the fast path of quality mode.
//!
//! candle runs the transformer at ~80-130 sentences/s per core here; ONNX Runtime's int8 matrix
//! kernels and graph fusions do several times better on the same CPU. The graph is written by
//! `scripts/export_onnx.py` from the same `model.safetensors` (no ONNX file ships in a wheel we
//! can fetch offline), and quantised there with ONNX Runtime's dynamic quantiser; pooling and L2
//! normalisation are inside the graph. The tokenizer is the candle path's ([`BertTokenizer`]), so
//! both feed the model the same ids.
//!
//! ONNX Runtime itself is loaded at run time (`ort`'s `load-dynamic`) from the shared library in
//! the pinned `onnxruntime` PyPI wheel that `scripts/fetch-onnx.sh` unpacks: `ort`'s default
//! build downloads binaries at build time, which an offline build cannot do, and loading at run
//! time keeps the library out of every build that does not use this embedder.
//!
//! Threading: `onnx_sessions` sessions, each with `onnx_threads` intra-op threads (defaults: one
//! session per core, one thread each). A call takes a free session, so concurrent callers (the
//! embed stage's workers, `bench embed`'s threads) run on separate cores without sharing a
//! thread pool.

use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::Tensor;
use tokenizers::{Encoding, PaddingParams, Tokenizer};

use super::minilm::BertTokenizer;
use super::{EmbedError, Embedder};

/// Sub-batch limits, as the candle path's (see `minilm.rs`): sorted by length, padded per
/// sub-batch.
const MAX_SUB_BATCH: usize = 32;
const SUB_BATCH_TOKENS: usize = 256;

/// The process's ONNX Runtime environment: the library can be loaded, and an environment built,
/// only once per process. A failed attempt is not remembered, so a corrected path works later.
static RUNTIME: OnceLock<ort::environment::Environment> = OnceLock::new();
static RUNTIME_INIT: Mutex<()> = Mutex::new(());

fn runtime(library: &Path) -> Result<&'static ort::environment::Environment, EmbedError> {
    let missing = |reason: String| EmbedError::ModelMissing {
        path: library.display().to_string(),
        reason,
    };
    if !library.exists() {
        return Err(missing(
            "ONNX Runtime library not found; run scripts/fetch-onnx.sh (or set \
             embedder.onnx_runtime)"
                .into(),
        ));
    }
    let _only_one = RUNTIME_INIT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(environment) = RUNTIME.get() {
        return Ok(environment);
    }
    let environment = ort::init_from(library)
        .map_err(|e| missing(format!("cannot load ONNX Runtime: {e}")))?
        .with_name("clusterwatch")
        .build()
        .map_err(|e| missing(format!("cannot start ONNX Runtime: {e}")))?;
    Ok(RUNTIME.get_or_init(|| environment))
}

/// The transformer as an ONNX graph run by ONNX Runtime.
pub struct OnnxEmbedder {
    sessions: Vec<Mutex<Session>>,
    tokenizer: Tokenizer,
    padding: PaddingParams,
    id: String,
    dims: usize,
}

/// How to load an [`OnnxEmbedder`].
pub struct OnnxOptions<'a> {
    /// `tokenizer.json` and `config.json` (the transformer's directory).
    pub model_dir: &'a Path,
    /// The graph: `model-int8.onnx` or `model.onnx`.
    pub graph: &'a Path,
    /// `libonnxruntime.so`.
    pub library: &'a Path,
    pub max_tokens: usize,
    /// Sessions; 0: one per available core.
    pub sessions: usize,
    /// Intra-op threads per session (at least 1).
    pub threads: usize,
}

impl OnnxEmbedder {
    pub fn load(options: &OnnxOptions<'_>) -> Result<Self, EmbedError> {
        let BertTokenizer {
            tokenizer,
            padding,
            config,
            config_bytes,
            tokenizer_bytes,
        } = BertTokenizer::load(options.model_dir, options.max_tokens)?;
        let graph_bytes = std::fs::read(options.graph).map_err(|e| EmbedError::ModelMissing {
            path: options.graph.display().to_string(),
            reason: format!("{e}; run scripts/fetch-onnx.sh"),
        })?;
        let environment = runtime(options.library)?;
        let count = match options.sessions {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let inference = |e: ort::Error| EmbedError::Inference(format!("ONNX Runtime: {e}"));
        let sessions = (0..count)
            .map(|_| {
                Session::builder(environment)
                    .map_err(inference)?
                    .with_optimization_level(GraphOptimizationLevel::All)
                    .map_err(|e| inference(e.into()))?
                    .with_intra_threads(options.threads.max(1))
                    .map_err(|e| inference(e.into()))?
                    .commit_from_memory(&graph_bytes)
                    .map(Mutex::new)
                    .map_err(|e| EmbedError::ModelMissing {
                        path: options.graph.display().to_string(),
                        reason: format!("ONNX Runtime cannot load the graph: {e}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;

        // The graph, tokenizer, config and truncation decide the vectors; quantised graphs get
        // their own id, as their vectors differ from the fp32 model's.
        let mut h = super::minilm::ContentHash::new();
        for part in [
            &graph_bytes[..],
            &config_bytes[..],
            &tokenizer_bytes[..],
            &(options.max_tokens as u64).to_le_bytes()[..],
        ] {
            h.update(part);
        }
        Ok(OnnxEmbedder {
            sessions,
            tokenizer,
            padding,
            id: format!("all-MiniLM-L6-v2-onnx-{:08x}", h.finish32()),
            dims: config.hidden_size,
        })
    }

    /// Runs one padded sub-batch on `session`.
    fn forward_padded(
        &self,
        session: &mut Session,
        encodings: &[Encoding],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inference = |e: ort::Error| EmbedError::Inference(format!("ONNX Runtime: {e}"));
        let batch = encodings.len();
        let seq = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for e in encodings {
            if e.len() != seq {
                return Err(EmbedError::Tokenizer(format!(
                    "padding produced ragged batch ({} vs {seq})",
                    e.len()
                )));
            }
            ids.extend(e.get_ids().iter().map(|&x| i64::from(x)));
            mask.extend(e.get_attention_mask().iter().map(|&x| i64::from(x)));
        }
        let ids = Tensor::from_array(([batch, seq], ids)).map_err(inference)?;
        let mask = Tensor::from_array(([batch, seq], mask)).map_err(inference)?;
        let outputs = session
            .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask])
            .map_err(inference)?;
        let (shape, values) = outputs["sentence_embedding"]
            .try_extract_tensor::<f32>()
            .map_err(inference)?;
        if shape.len() != 2 || shape[0] as usize != batch || shape[1] as usize != self.dims {
            return Err(EmbedError::Inference(format!(
                "the graph returned shape {shape:?} for {batch} texts of {} dimensions",
                self.dims
            )));
        }
        Ok(values
            .chunks_exact(self.dims)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Embeds `encodings` in length-sorted, padded sub-batches on `session`.
    fn embed_on(
        &self,
        session: &mut Session,
        encodings: Vec<Encoding>,
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        super::minilm::embed_padded(
            encodings,
            &self.padding,
            SUB_BATCH_TOKENS,
            MAX_SUB_BATCH,
            |sub| self.forward_padded(session, sub),
        )
    }

    /// A session no other caller holds, or (all busy) the first one, waited for.
    fn free_session(&self) -> std::sync::MutexGuard<'_, Session> {
        for session in &self.sessions {
            if let Ok(guard) = session.try_lock() {
                return guard;
            }
        }
        self.sessions[0]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Embedder for OnnxEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dims
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = super::minilm::encode_texts(&self.tokenizer, texts)?;
        // This call's session, and every other session idle right now: a lone caller (the
        // pipeline's embed stage) spreads its batch over the cores, while concurrent callers
        // (one per core) each keep to their own session.
        let mut held = vec![self.free_session()];
        if encodings.len() > MAX_SUB_BATCH {
            held.extend(self.sessions.iter().filter_map(|s| s.try_lock().ok()));
        }
        if held.len() == 1 {
            return self.embed_on(&mut held[0], encodings);
        }
        // Deal the texts out by length, so every share pads alike.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].len()));
        let shares = held.len();
        let mut indices: Vec<Vec<usize>> = vec![Vec::new(); shares];
        let mut parts: Vec<Vec<Encoding>> = vec![Vec::new(); shares];
        let mut encodings: Vec<Option<Encoding>> = encodings.into_iter().map(Some).collect();
        for (rank, &i) in order.iter().enumerate() {
            indices[rank % shares].push(i);
            parts[rank % shares].push(encodings[i].take().unwrap_or_default());
        }
        let results: Vec<Result<Vec<Vec<f32>>, EmbedError>> = std::thread::scope(|scope| {
            let workers: Vec<_> = held
                .iter_mut()
                .map(|guard| &mut **guard)
                .zip(parts)
                .map(|(session, part)| scope.spawn(move || self.embed_on(session, part)))
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        let mut out = vec![Vec::new(); texts.len()];
        for (share, vectors) in indices.iter().zip(results) {
            for (&i, v) in share.iter().zip(vectors?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}
