//! The static embedder: one distilled vector per WordPiece token, a sentence is the normalised
//! mean of its tokens' vectors (model2vec's inference).
//!
//! The transformer embeds a few hundred sentences per second per core, which caps how much traffic
//! one machine can watch. `clusterwatch model distill` ([`super::distill`]) runs every vocabulary
//! token through the transformer once and stores the reduced, Zipf-weighted outputs beside the
//! model; this module only looks rows up, so it is two orders of magnitude faster.
//!
//! Tokenisation dominates the cost, and the Hugging Face WordPiece allocates a string for every
//! candidate sub-word. [`FastWordPiece`] reproduces the BERT normaliser, pre-tokeniser and
//! WordPiece for plain ASCII text without allocating, and the Hugging Face tokenizer handles
//! everything else (accents, CJK, literal special tokens), so both paths give the same ids
//! (checked against each other in the tests and in `tests/static_embedder.rs`).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use super::{EmbedError, Embedder};

/// The static model's default file name inside the transformer's directory.
pub const DEFAULT_FILE_NAME: &str = "static-256.safetensors";

/// Name of the vectors tensor (vocabulary x dims) inside the safetensors file.
pub const VECTORS_TENSOR: &str = "embeddings";
/// Name of the vector for a text with no known token (the transformer's `[CLS] [SEP]`, reduced).
pub const EMPTY_TENSOR: &str = "empty";

/// Tokens beyond this many are ignored. The mean of 512 token vectors is settled; the cap only
/// bounds the work a pathological input can cause.
pub const MAX_TOKENS: usize = 512;

/// The manifest written beside the vectors (`<stem>.json`): what they were distilled from and how.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub format: String,
    pub source_model: String,
    /// xxh3-64 of the transformer's model.safetensors, config.json and tokenizer.json, in that
    /// order; a distill whose source checksum matches is up to date.
    pub source_checksum: String,
    pub source_dims: usize,
    pub dims: usize,
    pub vocab_size: usize,
    /// Tokens that got a vector (the rest, `[unused*]` and special tokens, are zero rows).
    pub distilled_tokens: usize,
    /// How each token was run: the input sequence and the pooling of the outputs.
    pub token_input: String,
    pub pca: PcaInfo,
    pub weighting: WeightingInfo,
    /// xxh3-64 of the vectors file.
    pub vectors_checksum: String,
    pub distill_seconds: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PcaInfo {
    /// Components kept; equal to `source_dims` when the output is only rotated, 0 when PCA is off.
    pub components: usize,
    pub explained_variance_ratio: f64,
    /// Partial whitening after PCA (component j scaled by (λ_j/λ_1)^-power); 0: none.
    #[serde(default)]
    pub whiten_power: f64,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WeightingInfo {
    /// `sif-zipf` (model2vec: w = a / (a + p(rank)), p Zipfian over the vocabulary order) or `none`.
    pub kind: String,
    pub sif_coefficient: f64,
}

/// Where the manifest of a vectors file lives: same stem, `.json`.
pub fn manifest_path(vectors: &Path) -> PathBuf {
    vectors.with_extension("json")
}

/// Static token vectors plus the tokenizer they are indexed by.
pub struct StaticEmbedder {
    /// Row-major, `vocab x dims`.
    vectors: Vec<f32>,
    empty: Vec<f32>,
    dims: usize,
    fast: FastWordPiece,
    tokenizer: Tokenizer,
    id: String,
}

impl StaticEmbedder {
    /// Loads the vectors at `path` and `tokenizer.json` from the same directory.
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        let missing = |p: &Path, reason: String| EmbedError::ModelMissing {
            path: p.display().to_string(),
            reason: format!("{reason} (run `clusterwatch model distill`)"),
        };
        let bytes = std::fs::read(path).map_err(|e| missing(path, e.to_string()))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu)
            .map_err(|e| missing(path, format!("not a safetensors file: {e}")))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| missing(path, format!("no `{name}` tensor")))
        };
        let matrix = get(VECTORS_TENSOR)?;
        let (vocab, dims) = matrix
            .dims2()
            .map_err(|e| missing(path, format!("`{VECTORS_TENSOR}` is not a matrix: {e}")))?;
        let vectors = matrix
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| missing(path, format!("`{VECTORS_TENSOR}` is not f32: {e}")))?;
        let mut empty = get(EMPTY_TENSOR)?
            .to_vec1::<f32>()
            .map_err(|e| missing(path, format!("`{EMPTY_TENSOR}` is not an f32 vector: {e}")))?;
        if empty.len() != dims {
            return Err(missing(
                path,
                format!("`{EMPTY_TENSOR}` has {} dims, not {dims}", empty.len()),
            ));
        }
        normalize(&mut empty);

        let tokenizer_path = path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("tokenizer.json");
        let tokenizer_bytes =
            std::fs::read(&tokenizer_path).map_err(|e| missing(&tokenizer_path, e.to_string()))?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_bytes)
            .map_err(|e| missing(&tokenizer_path, format!("cannot parse tokenizer: {e}")))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let vocab_list = vocabulary(&tokenizer);
        if vocab_list.len() != vocab {
            return Err(missing(
                path,
                format!(
                    "{vocab} rows but the tokenizer beside it has {} tokens: distilled from another model",
                    vocab_list.len()
                ),
            ));
        }
        let unk = tokenizer
            .token_to_id("[UNK]")
            .ok_or_else(|| missing(&tokenizer_path, "no [UNK] token".into()))?;
        let fast = FastWordPiece::new(&vocab_list, unk);

        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&bytes);
        h.update(&tokenizer_bytes);
        let id = format!("static{dims}-{:016x}", h.digest());
        Ok(Self {
            vectors,
            empty,
            dims,
            fast,
            tokenizer,
            id,
        })
    }

    /// Writes the unit vector of `text` into `out` (`dims` long), reusing `scratch` for token ids.
    pub fn embed_into(
        &self,
        text: &str,
        out: &mut [f32],
        scratch: &mut Vec<u32>,
    ) -> Result<(), EmbedError> {
        scratch.clear();
        self.token_ids(text, scratch)?;
        self.pool(scratch, out);
        Ok(())
    }

    /// The WordPiece ids of `text` without special tokens, at most [`MAX_TOKENS`], appended to `ids`.
    pub fn token_ids(&self, text: &str, ids: &mut Vec<u32>) -> Result<(), EmbedError> {
        if !self.fast.tokenize(text, ids) {
            let encoding = self
                .tokenizer
                .encode_fast(text, false)
                .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
            ids.extend(encoding.get_ids().iter().take(MAX_TOKENS));
        }
        Ok(())
    }

    /// The reference ids from the Hugging Face tokenizer (for tests and the tokenizer benchmark).
    pub fn reference_token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(encoding
            .get_ids()
            .iter()
            .take(MAX_TOKENS)
            .copied()
            .collect())
    }

    /// Mean of the rows of `ids`, L2-normalised. Dividing by the count does not change the
    /// direction, so the sum is normalised directly; zero rows (`[UNK]`, `[unused*]`, special
    /// tokens) add nothing, as model2vec drops unknown tokens.
    pub fn pool(&self, ids: &[u32], out: &mut [f32]) {
        pool_rows(&self.vectors, self.dims, ids, out);
        if !normalize(out) {
            out.copy_from_slice(&self.empty);
        }
    }
}

/// Sums the rows `ids` of the row-major `vectors` (`dims` wide) into `out`; ids outside the
/// matrix are skipped.
pub fn pool_rows(vectors: &[f32], dims: usize, ids: &[u32], out: &mut [f32]) {
    out.fill(0.0);
    for &id in ids {
        let start = id as usize * dims;
        if let Some(row) = vectors.get(start..start + dims) {
            for (o, r) in out.iter_mut().zip(row) {
                *o += r;
            }
        }
    }
}

/// Scales `v` to unit length; false (and `v` untouched) when it is (almost) zero.
pub fn normalize(v: &mut [f32]) -> bool {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm < 1e-12 {
        return false;
    }
    for x in v.iter_mut() {
        *x /= norm;
    }
    true
}

/// The tokenizer's vocabulary as a list indexed by id (added tokens included).
pub fn vocabulary(tokenizer: &Tokenizer) -> Vec<String> {
    let map = tokenizer.get_vocab(true);
    let size = map.values().map(|&id| id as usize + 1).max().unwrap_or(0);
    let mut list = vec![String::new(); size];
    for (token, id) in map {
        list[id as usize] = token;
    }
    list
}

impl Embedder for StaticEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dims
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let mut scratch = Vec::with_capacity(64);
        texts
            .iter()
            .map(|t| {
                let mut v = vec![0f32; self.dims];
                self.embed_into(t, &mut v, &mut scratch)?;
                Ok(v)
            })
            .collect()
    }
}

/// FxHash-style multiplicative hasher: vocabulary lookups hash short byte strings, where SipHash
/// would cost more than the rest of the lookup.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(K);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write(&(n as u64).to_le_bytes());
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type FxMap = HashMap<Box<[u8]>, u32, BuildHasherDefault<FxHasher>>;

/// BERT's uncased tokenisation (clean text, lowercase, split on whitespace and punctuation,
/// greedy longest-match WordPiece with `##` continuations, `[UNK]` for words over 100 chars or
/// with no split) for ASCII text, without allocating per call.
pub struct FastWordPiece {
    /// Word-initial pieces.
    starts: FxMap,
    /// Continuation pieces, keyed without their `##`.
    continues: FxMap,
    unk: u32,
    /// Longest piece in bytes: the greedy match never tries a longer substring.
    longest: usize,
}

/// Matches the WordPiece model's `max_input_chars_per_word`.
const MAX_WORD_CHARS: usize = 100;
/// Added tokens the Hugging Face tokenizer matches in raw text before normalising.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

impl FastWordPiece {
    pub fn new(vocab: &[String], unk: u32) -> Self {
        let mut starts = FxMap::default();
        let mut continues = FxMap::default();
        let mut longest = 1;
        for (id, token) in vocab.iter().enumerate() {
            let (map, piece) = match token.strip_prefix("##") {
                Some(rest) if !rest.is_empty() => (&mut continues, rest),
                _ => (&mut starts, token.as_str()),
            };
            longest = longest.max(piece.len());
            map.entry(piece.as_bytes().into()).or_insert(id as u32);
        }
        Self {
            starts,
            continues,
            unk,
            longest,
        }
    }

    /// Appends the ids of `text` to `ids` (at most [`MAX_TOKENS`] in all) and returns true, or
    /// returns false without touching `ids` when the text needs the full tokenizer (non-ASCII, or
    /// a literal special token).
    pub fn tokenize(&self, text: &str, ids: &mut Vec<u32>) -> bool {
        let bytes = text.as_bytes();
        if !text.is_ascii()
            || (bytes.contains(&b'[') && SPECIAL_TOKENS.iter().any(|s| text.contains(s)))
        {
            return false;
        }
        let base = ids.len();
        let mut word = [0u8; MAX_WORD_CHARS + 1];
        let mut len = 0usize;
        for &b in bytes {
            if ids.len() - base >= MAX_TOKENS {
                break;
            }
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => {
                    self.word(&word[..len.min(MAX_WORD_CHARS + 1)], len, ids);
                    len = 0;
                }
                // Control characters are removed, so the letters around them join.
                0..=0x1f | 0x7f => {}
                _ if b.is_ascii_punctuation() => {
                    self.word(&word[..len.min(MAX_WORD_CHARS + 1)], len, ids);
                    len = 0;
                    self.word(&[b], 1, ids);
                }
                _ => {
                    if len < word.len() {
                        word[len] = b.to_ascii_lowercase();
                    }
                    len += 1;
                }
            }
        }
        self.word(&word[..len.min(MAX_WORD_CHARS + 1)], len, ids);
        ids.truncate(base + MAX_TOKENS);
        true
    }

    /// WordPiece of one pre-tokenised, lowercased word of `len` bytes (`word` holds its first
    /// bytes, enough to know it is too long).
    fn word(&self, word: &[u8], len: usize, ids: &mut Vec<u32>) {
        if len == 0 {
            return;
        }
        if len > MAX_WORD_CHARS {
            ids.push(self.unk);
            return;
        }
        if let Some(&id) = self.starts.get(word) {
            ids.push(id);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < len {
            let mut end = len.min(start + self.longest);
            let map = if start == 0 {
                &self.starts
            } else {
                &self.continues
            };
            let found = loop {
                if end <= start {
                    break None;
                }
                if let Some(&id) = map.get(&word[start..end]) {
                    break Some(id);
                }
                end -= 1;
            };
            match found {
                Some(id) => {
                    ids.push(id);
                    start = end;
                }
                None => {
                    ids.truncate(first);
                    ids.push(self.unk);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(tokens: &[&str]) -> Vec<String> {
        tokens.iter().map(|t| t.to_string()).collect()
    }

    #[test]
    fn wordpiece_greedy_longest_match_and_unknowns() {
        let v = vocab(&[
            "[UNK]", "un", "##aff", "##able", "unaff", "hello", "!", "?", "##a", "a",
        ]);
        let wp = FastWordPiece::new(&v, 0);
        let mut ids = Vec::new();
        assert!(wp.tokenize("Unaffable HELLO!?", &mut ids));
        // "unaffable" -> unaff ##able (longest first piece), hello, !, ?
        assert_eq!(ids, vec![4, 3, 5, 6, 7]);
        ids.clear();
        // A word with an unmatchable tail becomes one [UNK]; control characters vanish.
        assert!(wp.tokenize("unx a\u{1}a", &mut ids));
        assert_eq!(ids, vec![0, 9, 8]);
        ids.clear();
        assert!(wp.tokenize(&"a".repeat(101), &mut ids));
        assert_eq!(ids, vec![0]);
        ids.clear();
        assert!(!wp.tokenize("café", &mut ids));
        assert!(!wp.tokenize("a [CLS] b", &mut ids));
        assert!(ids.is_empty());
    }

    #[test]
    fn token_cap_applies() {
        let v = vocab(&["[UNK]", "a"]);
        let wp = FastWordPiece::new(&v, 0);
        let mut ids = Vec::new();
        assert!(wp.tokenize(&"a ".repeat(MAX_TOKENS + 50), &mut ids));
        assert_eq!(ids.len(), MAX_TOKENS);
    }

    #[test]
    fn pooling_is_the_normalised_mean_of_rows() {
        // 3 tokens x 2 dims; row 0 is a zero row (like [UNK]) and adds nothing.
        let vectors = [0.0, 0.0, 3.0, 0.0, 1.0, 4.0];
        let mut out = [0f32; 2];
        pool_rows(&vectors, 2, &[0, 1, 2, 99], &mut out);
        assert_eq!(out, [4.0, 4.0]);
        assert!(normalize(&mut out));
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((out[0] - s).abs() < 1e-6 && (out[1] - s).abs() < 1e-6);
        let mut zero = [0f32; 2];
        pool_rows(&vectors, 2, &[0], &mut zero);
        assert!(!normalize(&mut zero));
        assert_eq!(zero, [0.0, 0.0]);
    }

    #[test]
    fn normalize_gives_unit_length() {
        let mut v = [3.0f32, 4.0, 0.0];
        assert!(normalize(&mut v));
        assert_eq!(v, [0.6, 0.8, 0.0]);
    }
}
