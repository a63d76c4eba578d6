//! `clusterwatch model distill`: turns the shipped transformer into the static model that
//! [`super::static_model`] serves, the model2vec way, without any data set.
//!
//! 1. Every vocabulary token (except `[unused*]` and the special tokens, which text never
//!    produces) runs through the transformer once as `[CLS] token [SEP]`, and the three outputs
//!    are mean-pooled, as the transformer pools a sentence.
//! 2. PCA reduces the outputs (256 dims by default); it also decorrelates them, which model2vec
//!    found helps even at full size.
//! 3. Partial whitening (our addition, measured): component j is scaled by (λ_j/λ_1)^-0.25, so
//!    the few dominant directions, shared by most tokens, weigh less in a sentence's mean.
//! 4. SIF weighting with Zipf-estimated frequencies: the WordPiece vocabulary is ordered roughly
//!    by frequency, so the token at rank r (among the distilled tokens) gets
//!    p(r) = (1/(r+2)) / Σ 1/(i+2) and weight a / (a + p(r)), a = 1e-4: frequent, uninformative
//!    tokens count less in the mean.
//!
//! The vectors go to a safetensors file beside the model with a JSON manifest naming the source
//! and its checksum, so setup can skip a distill that is up to date. Everything is deterministic
//! for a given machine: fixed token order, fixed batches, a Jacobi eigen-solver with a sign rule.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::minilm::MiniLmEmbedder;
use super::pca::Pca;
use super::static_model::{self, Manifest, PcaInfo, WeightingInfo, EMPTY_TENSOR, VECTORS_TENSOR};
use super::EmbedError;

/// The manifest's `format`; bump it when the file layout or the recipe changes meaning.
pub const FORMAT: &str = "clusterwatch-static-v1";

/// model2vec's default SIF coefficient.
pub const DEFAULT_SIF_COEFFICIENT: f64 = 1e-4;

/// Partial whitening after PCA. Not in model2vec; measured here on CLINC150/Banking77 (README
/// "Embedders"): 0.25 raised online topic AMI by 0.01/0.05 over none, 0.5 was worse than 0.25.
pub const DEFAULT_WHITEN_POWER: f64 = 0.25;

#[derive(Debug, Clone)]
pub struct DistillOptions {
    /// The transformer's directory (model.safetensors, tokenizer.json, config.json).
    pub model_dir: PathBuf,
    /// Where the vectors go; the manifest goes beside it with a `.json` extension.
    pub output: PathBuf,
    /// PCA components; 0 turns PCA off, and anything at or above the model's size only rotates.
    pub dims: usize,
    /// SIF coefficient of the Zipf weighting; `None` turns weighting off.
    pub sif_coefficient: Option<f64>,
    /// Tokens per forward pass.
    pub batch_size: usize,
    /// Distil only the first this many tokens (tests); the rest are zero rows.
    pub limit: Option<usize>,
    /// Distil even when the output is up to date.
    pub force: bool,
    /// How each token is presented to the transformer.
    pub token_input: TokenInput,
    /// Partial whitening: component j is scaled by (λ_j / λ_1)^-power after PCA, so the few
    /// dominant directions count less in a sentence's mean. 0 (model2vec) leaves them as they are;
    /// the default is [`DEFAULT_WHITEN_POWER`].
    pub whiten_power: f64,
    /// Keep the transformer's raw per-token outputs here and reuse them when the source and the
    /// token input match: trying PCA and weighting variants then takes seconds, not minutes.
    pub raw_cache: Option<PathBuf>,
}

/// The sequence each vocabulary token is run as; all its outputs are mean-pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenInput {
    /// `[CLS] token [SEP]`, as the token would appear alone in a sentence.
    ClsSep,
    /// `[SEP] token [CLS]`, which model2vec reports works better on its benchmarks.
    SepCls,
}

impl TokenInput {
    fn describe(self) -> &'static str {
        match self {
            TokenInput::ClsSep => "[CLS] token [SEP], mean of the three outputs",
            TokenInput::SepCls => "[SEP] token [CLS], mean of the three outputs",
        }
    }
}

impl DistillOptions {
    /// The defaults for the model in `model_dir`: 256 dims, SIF 1e-4, output beside the model.
    pub fn new(model_dir: &Path) -> Self {
        Self {
            model_dir: model_dir.to_path_buf(),
            output: model_dir.join(static_model::DEFAULT_FILE_NAME),
            dims: 256,
            sif_coefficient: Some(DEFAULT_SIF_COEFFICIENT),
            batch_size: 512,
            limit: None,
            force: false,
            token_input: TokenInput::ClsSep,
            raw_cache: None,
            whiten_power: DEFAULT_WHITEN_POWER,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DistillReport {
    pub manifest: Manifest,
    /// True when nothing was done because the output matched the source and the options.
    pub up_to_date: bool,
    pub forward_seconds: f64,
    pub pca_seconds: f64,
    /// The transformer's outputs came from `raw_cache`, so `forward_seconds` timed no model.
    pub raw_from_cache: bool,
}

/// xxh3-64 over the transformer's files, as the manifest records it.
pub fn source_checksum(model_dir: &Path) -> Result<String, EmbedError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for file in ["model.safetensors", "config.json", "tokenizer.json"] {
        let path = model_dir.join(file);
        let bytes = std::fs::read(&path).map_err(|e| EmbedError::ModelMissing {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        h.update(&(bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(format!("{:016x}", h.digest()))
}

/// Whether a token gets a distilled vector: text never produces `[unused*]` or special tokens.
fn distillable(token: &str) -> bool {
    let unused = token.starts_with("[unused") && token.ends_with(']');
    let special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"].contains(&token);
    !unused && !special
}

fn weighting_info(sif: Option<f64>) -> WeightingInfo {
    match sif {
        Some(a) => WeightingInfo {
            kind: "sif-zipf".into(),
            sif_coefficient: a,
        },
        None => WeightingInfo {
            kind: "none".into(),
            sif_coefficient: 0.0,
        },
    }
}

/// The existing manifest when it was made from this source with these options and its vectors
/// are intact.
fn up_to_date(options: &DistillOptions, checksum: &str) -> Option<Manifest> {
    let text = std::fs::read(static_model::manifest_path(&options.output)).ok()?;
    let manifest: Manifest = serde_json::from_slice(&text).ok()?;
    let vectors = std::fs::read(&options.output).ok()?;
    let fresh = manifest.format == FORMAT
        && manifest.source_checksum == checksum
        && manifest.weighting == weighting_info(options.sif_coefficient)
        && (manifest.pca.components == options.dims.min(manifest.source_dims))
        && options.limit.is_none()
        && manifest.token_input == options.token_input.describe()
        && manifest.pca.whiten_power == options.whiten_power
        && manifest.vectors_checksum == format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&vectors));
    fresh.then_some(manifest)
}

/// Distils the static model (or finds it up to date). Progress goes to stderr.
pub fn distill(options: &DistillOptions) -> Result<DistillReport, EmbedError> {
    let started = Instant::now();
    let checksum = source_checksum(&options.model_dir)?;
    if !options.force {
        if let Some(manifest) = up_to_date(options, &checksum) {
            return Ok(DistillReport {
                manifest,
                up_to_date: true,
                forward_seconds: 0.0,
                pca_seconds: 0.0,
                raw_from_cache: false,
            });
        }
    }
    if options.batch_size == 0 {
        return Err(EmbedError::Config("batch size must be positive".into()));
    }
    let model = MiniLmEmbedder::load(&options.model_dir, super::minilm::DEFAULT_MAX_TOKENS)?;
    let vocab = static_model::vocabulary(model.tokenizer());
    let id_of = |t: &str| {
        model
            .tokenizer()
            .token_to_id(t)
            .ok_or_else(|| EmbedError::Tokenizer(format!("the tokenizer has no {t}")))
    };
    let (cls, sep) = (id_of("[CLS]")?, id_of("[SEP]")?);
    let source_dims = model.hidden_size();

    let mut kept: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| distillable(&vocab[id as usize]))
        .collect();
    if let Some(limit) = options.limit {
        kept.truncate(limit);
    }
    if kept.len() < 2 {
        return Err(EmbedError::Config("fewer than two tokens to distil".into()));
    }

    // 1. One forward pass per token (or the cached outputs of an earlier one).
    let forward_started = Instant::now();
    let (first, last) = match options.token_input {
        TokenInput::ClsSep => (cls, sep),
        TokenInput::SepCls => (sep, cls),
    };
    let cache_key = format!("{checksum}-{:?}-{}", options.token_input, kept.len());
    let cached = options
        .raw_cache
        .as_deref()
        .and_then(|p| read_raw_cache(p, &cache_key, (kept.len() + 1) * source_dims));
    let raw_from_cache = cached.is_some();
    let mut raw = match cached {
        Some(raw) => raw,
        None => {
            let mut raw = Vec::with_capacity((kept.len() + 1) * source_dims);
            for (n, chunk) in kept.chunks(options.batch_size).enumerate() {
                let ids: Vec<u32> = chunk.iter().flat_map(|&t| [first, t, last]).collect();
                raw.extend(model.mean_pooled_ids(ids, chunk.len(), 3)?);
                if n % 10 == 9 {
                    eprintln!(
                        "distill: {} / {} tokens, {:.1} s",
                        raw.len() / source_dims,
                        kept.len(),
                        forward_started.elapsed().as_secs_f64()
                    );
                }
            }
            raw.extend(model.mean_pooled_ids(vec![cls, sep], 1, 2)?);
            if let Some(path) = &options.raw_cache {
                write_raw_cache(path, &cache_key, &raw)?;
            }
            raw
        }
    };
    let empty_raw = raw.split_off(kept.len() * source_dims);
    let forward_seconds = forward_started.elapsed().as_secs_f64();

    // 2. PCA.
    let pca_started = Instant::now();
    let components = options.dims.min(source_dims);
    let (reduced, empty, explained) = if components == 0 {
        (raw, empty_raw, 1.0)
    } else {
        let pca = Pca::fit(&raw, source_dims, components)?;
        let mut reduced = pca.transform(&raw)?;
        let mut empty = pca.transform(&empty_raw)?;
        if options.whiten_power != 0.0 {
            let top = pca.eigenvalues[0].max(f64::MIN_POSITIVE);
            let scale: Vec<f32> = pca.eigenvalues[..components]
                .iter()
                .map(|&l| (l.max(f64::MIN_POSITIVE) / top).powf(-options.whiten_power) as f32)
                .collect();
            for row in reduced
                .chunks_exact_mut(components)
                .chain(std::iter::once(&mut empty[..]))
            {
                for (x, s) in row.iter_mut().zip(&scale) {
                    *x *= s;
                }
            }
        }
        (reduced, empty, pca.explained_variance_ratio())
    };
    let pca_seconds = pca_started.elapsed().as_secs_f64();
    let dims = if components == 0 {
        source_dims
    } else {
        components
    };

    // 3. SIF weighting by Zipf rank, into the full vocabulary-sized matrix.
    let weights = sif_weights(kept.len(), options.sif_coefficient);
    let mut matrix = vec![0f32; vocab.len() * dims];
    for (rank, (&id, row)) in kept.iter().zip(reduced.chunks_exact(dims)).enumerate() {
        let out = &mut matrix[id as usize * dims..(id as usize + 1) * dims];
        for (o, &x) in out.iter_mut().zip(row) {
            *o = x * weights[rank];
        }
    }

    let bytes = serialize(&matrix, vocab.len(), dims, &empty)?;
    write_atomically(&options.output, &bytes)?;
    let manifest = Manifest {
        format: FORMAT.into(),
        source_model: options
            .model_dir
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        source_checksum: checksum,
        source_dims,
        dims,
        vocab_size: vocab.len(),
        distilled_tokens: kept.len(),
        token_input: options.token_input.describe().into(),
        pca: PcaInfo {
            components,
            explained_variance_ratio: explained,
            whiten_power: options.whiten_power,
        },
        weighting: weighting_info(options.sif_coefficient),
        vectors_checksum: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes)),
        distill_seconds: started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| EmbedError::Config(format!("manifest: {e}")))?;
    write_atomically(&static_model::manifest_path(&options.output), &json)?;
    Ok(DistillReport {
        manifest,
        up_to_date: false,
        forward_seconds,
        pca_seconds,
        raw_from_cache,
    })
}

/// The raw outputs from `path` when it holds `len` floats made under `key`.
fn read_raw_cache(path: &Path, key: &str, len: usize) -> Option<Vec<f32>> {
    let bytes = std::fs::read(path).ok()?;
    let header = format!("{key}\n");
    let body = bytes.strip_prefix(header.as_bytes())?;
    (body.len() == len * 4).then(|| {
        body.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    })
}

fn write_raw_cache(path: &Path, key: &str, raw: &[f32]) -> Result<(), EmbedError> {
    let mut bytes = format!("{key}\n").into_bytes();
    bytes.extend(raw.iter().flat_map(|x| x.to_le_bytes()));
    write_atomically(path, &bytes)
}

/// model2vec's SIF weights for `n` tokens in frequency order, or all ones.
pub fn sif_weights(n: usize, coefficient: Option<f64>) -> Vec<f32> {
    let Some(a) = coefficient else {
        return vec![1.0; n];
    };
    let total: f64 = (0..n).map(|r| 1.0 / (r as f64 + 2.0)).sum();
    (0..n)
        .map(|r| {
            let p = 1.0 / (r as f64 + 2.0) / total;
            (a / (a + p)) as f32
        })
        .collect()
}

fn serialize(
    matrix: &[f32],
    vocab: usize,
    dims: usize,
    empty: &[f32],
) -> Result<Vec<u8>, EmbedError> {
    let err = |e: candle_core::Error| EmbedError::Inference(format!("serialise: {e}"));
    let mut tensors = HashMap::new();
    tensors.insert(
        VECTORS_TENSOR.to_string(),
        Tensor::from_slice(matrix, (vocab, dims), &Device::Cpu).map_err(err)?,
    );
    tensors.insert(
        EMPTY_TENSOR.to_string(),
        Tensor::from_slice(empty, dims, &Device::Cpu).map_err(err)?,
    );
    safetensors::serialize(&tensors, None)
        .map_err(|e| EmbedError::Inference(format!("serialise: {e}")))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EmbedError> {
    let io =
        |e: std::io::Error| EmbedError::Config(format!("cannot write {}: {e}", path.display()));
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sif_weights_grow_with_rank() {
        let w = sif_weights(1000, Some(1e-4));
        assert!(w.windows(2).all(|p| p[0] < p[1]));
        assert!(w[0] < 0.01 && w[999] > 0.3, "{} {}", w[0], w[999]);
        assert_eq!(sif_weights(3, None), vec![1.0; 3]);
    }

    #[test]
    fn unused_and_special_tokens_are_not_distilled() {
        assert!(!distillable("[unused17]"));
        assert!(!distillable("[CLS]"));
        assert!(distillable("the"));
        assert!(distillable("##ing"));
        assert!(distillable("["));
    }
}
