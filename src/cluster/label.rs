//! Offline cluster labels: the words most of a cluster's sampled summaries share, and that several
//! distinct accounts used, so a label never carries one person's words.
//!
//! Labels are only candidates; [`crate::privacy::audit_label`] decides whether one is shown.

use std::collections::{BTreeMap, BTreeSet};

use super::micro::Reservoir;

/// Distinct accounts that must have used a word before it may appear in a label.
const MIN_ACCOUNTS_PER_WORD: usize = 3;
const MAX_WORDS: usize = 4;

const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "get", "got", "had",
    "has", "have", "how", "i", "if", "in", "into", "is", "it", "its", "just", "me", "my", "need",
    "no", "not", "now", "of", "on", "or", "our", "please", "so", "some", "tell", "than", "that",
    "the", "their", "them", "then", "there", "these", "they", "this", "to", "u", "ur", "up", "us",
    "want", "was", "we", "what", "when", "where", "which", "who", "why", "will", "with", "would",
    "you", "your", "im", "i'm", "let", "know", "there's", "what's", "it's", "don't", "can't", "is",
];

/// Up to four keywords ordered by how many sampled summaries contain them, e.g. `reply · call ·
/// offer`. Empty when no word clears the account floor.
pub fn keyword_label(reservoir: &Reservoir) -> String {
    // word -> (documents containing it, accounts that used it)
    let mut stats: BTreeMap<String, (usize, BTreeSet<u64>)> = BTreeMap::new();
    for item in reservoir.items() {
        let words: BTreeSet<String> = item
            .request
            .split(|c: char| !(c.is_alphanumeric() || c == '\''))
            .map(|w| w.trim_matches('\'').to_lowercase())
            .filter(|w| w.chars().count() >= 3 && w.chars().all(|c| c.is_alphabetic()))
            .filter(|w| !STOPWORDS.contains(&w.as_str()))
            .collect();
        for w in words {
            let entry = stats.entry(w).or_default();
            entry.0 += 1;
            entry.1.insert(item.account_key);
        }
    }
    let mut ranked: Vec<(&String, usize)> = stats
        .iter()
        .filter(|(_, (_, accounts))| accounts.len() >= MIN_ACCOUNTS_PER_WORD)
        .map(|(w, (docs, _))| (w, *docs))
        .collect();
    // Most common first; ties alphabetical so the label is deterministic.
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    ranked
        .into_iter()
        .take(MAX_WORDS)
        .map(|(w, _)| w.as_str())
        .collect::<Vec<_>>()
        .join(" · ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_use_shared_words_of_several_accounts_only() {
        let mut r = Reservoir::new(10);
        let texts = [
            (1, "claim your free camcorder offer, reply now"),
            (2, "free camcorder offer: call to claim"),
            (3, "claim the camcorder offer today Zebulon"),
            (3, "Zebulon camcorder"),
        ];
        for (i, (account, text)) in texts.iter().enumerate() {
            r.offer(i as u64, *account, text, i as u64 + 1);
        }
        let label = keyword_label(&r);
        assert_eq!(label, "camcorder · claim · offer");
        assert!(
            !label.contains("zebulon"),
            "a word of one account never labels"
        );
    }
}
