//! Class-based TF-IDF keywords (c-TF-IDF, as BERTopic labels its topics) for every level of the
//! hierarchy.
//!
//! Each group (a micro-cluster, a topic, a domain) is one "class document": the scrubbed summaries
//! sampled from its members. A word scores `tf(word, class) · ln(1 + A / f(word))`, where `A` is
//! the mean number of words per class and `f` the word's frequency over all classes, so a label
//! says what sets a group apart rather than what every request says ("help", "write"). The
//! weights are fitted over the topic level at each hierarchy rebuild and reused for every level.
//!
//! Privacy: a word may label a group only if at least [`MIN_ACCOUNTS_PER_WORD`] distinct
//! accounts used it there, so a label never carries one person's words; the label auditor still
//! decides whether it is shown.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use super::micro::ReservoirItem;

/// Distinct accounts that must have used a word in a group before it may label the group.
pub const MIN_ACCOUNTS_PER_WORD: usize = 3;
/// Words in a label.
pub const LABEL_WORDS: usize = 4;

const STOPWORDS: &[&str] = &[
    "a",
    "about",
    "after",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "been",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "for",
    "from",
    "get",
    "got",
    "had",
    "has",
    "have",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "just",
    "me",
    "my",
    "need",
    "no",
    "not",
    "now",
    "of",
    "on",
    "or",
    "our",
    "please",
    "so",
    "some",
    "tell",
    "than",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "to",
    "u",
    "ur",
    "up",
    "us",
    "want",
    "was",
    "we",
    "what",
    "when",
    "where",
    "which",
    "who",
    "why",
    "will",
    "with",
    "would",
    "you",
    "your",
    "im",
    "i'm",
    "let",
    "know",
    "there's",
    "what's",
    "it's",
    "don't",
    "can't",
    "user",
    "users",
    "request",
    "requests",
    "asks",
    "asking",
    "assistant",
];

/// The label words of a summary: lower-case alphabetic words of 3+ characters, no stopwords.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\'').to_lowercase())
        .filter(|w| w.chars().count() >= 3 && w.chars().all(|c| c.is_alphabetic()))
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
}

/// Word counts of one class, with the accounts that used each word.
#[derive(Debug, Default)]
pub struct ClassTerms {
    counts: BTreeMap<String, (u32, BTreeSet<u64>)>,
    total: u64,
}

impl ClassTerms {
    pub fn of<'a>(items: impl IntoIterator<Item = &'a ReservoirItem>) -> Self {
        let mut terms = ClassTerms::default();
        for item in items {
            terms.add(item);
        }
        terms
    }

    /// Words at least `min_accounts` distinct accounts used in this class.
    pub fn common_words(&self, min_accounts: usize) -> BTreeSet<String> {
        self.counts
            .iter()
            .filter(|(_, (_, accounts))| accounts.len() >= min_accounts)
            .map(|(w, _)| w.clone())
            .collect()
    }

    pub fn add(&mut self, item: &ReservoirItem) {
        for w in words(&item.request) {
            let entry = self.counts.entry(w).or_default();
            entry.0 += 1;
            entry.1.insert(item.account_key);
            self.total += 1;
        }
    }
}

/// The fitted inverse class frequencies.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TermWeights {
    frequency: HashMap<String, u64>,
    mean_class_words: f64,
}

impl TermWeights {
    /// Fits on `classes` (one [`ClassTerms`] per group of a level).
    pub fn fit(classes: &[ClassTerms]) -> Self {
        let mut frequency: HashMap<String, u64> = HashMap::new();
        let mut total = 0u64;
        for class in classes {
            total += class.total;
            for (w, (n, _)) in &class.counts {
                *frequency.entry(w.clone()).or_default() += u64::from(*n);
            }
        }
        TermWeights {
            frequency,
            mean_class_words: total as f64 / classes.len().max(1) as f64,
        }
    }

    fn idf(&self, word: &str, in_class: u32) -> f64 {
        // A word never seen at fitting time is as rare as its own count makes it.
        let f = self
            .frequency
            .get(word)
            .copied()
            .unwrap_or(u64::from(in_class))
            .max(1);
        (1.0 + self.mean_class_words.max(1.0) / f as f64).ln()
    }

    /// Up to [`LABEL_WORDS`] words of `class` by c-TF-IDF, e.g. `refund · card · declined`;
    /// empty when no word clears the account floor. Ties break alphabetically, so labels are
    /// deterministic.
    pub fn label(&self, class: &ClassTerms) -> String {
        let mut ranked: Vec<(&String, f64)> = class
            .counts
            .iter()
            .filter(|(_, (_, accounts))| accounts.len() >= MIN_ACCOUNTS_PER_WORD)
            .map(|(w, (n, _))| {
                let tf = f64::from(*n) / class.total.max(1) as f64;
                (w, tf * self.idf(w, *n))
            })
            .collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        ranked
            .into_iter()
            .take(LABEL_WORDS)
            .map(|(w, _)| w.as_str())
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(account: u64, text: &str) -> ReservoirItem {
        ReservoirItem {
            account_key: account,
            request: text.to_string(),
        }
    }

    #[test]
    fn labels_prefer_distinctive_words_shared_by_several_accounts() {
        let refunds = [
            item(1, "help with a refund for a declined card payment"),
            item(2, "help me get a refund, card was declined"),
            item(3, "refund for declined card, help"),
            item(3, "Zebulon refund"),
        ];
        let poems = [
            item(4, "help write a poem about autumn"),
            item(5, "help with a poem about autumn leaves"),
            item(6, "help me write an autumn poem"),
        ];
        let classes = [ClassTerms::of(&refunds), ClassTerms::of(&poems)];
        let weights = TermWeights::fit(&classes);
        let label = weights.label(&classes[0]);
        // "help" is as common here as "card", but every class uses it: it ranks last.
        assert_eq!(label, "refund · card · declined · help");
        assert!(
            !label.contains("zebulon"),
            "one account's word never labels"
        );
        assert!(weights.label(&classes[1]).contains("poem"));
    }
}
