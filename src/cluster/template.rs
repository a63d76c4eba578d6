//! Template fingerprints: a 64-bit SimHash of a request's skeleton, and the per-cluster tally of
//! them that tells "many accounts sent the same script" from "many accounts asked similar things".
//!
//! The skeleton is the first user turn with case, digits and runs of whitespace normalised, so a
//! scripted campaign that fills one template with different numbers, names in fixed slots or
//! spacing still lands on (nearly) one fingerprint. Word 3-gram shingles feed the SimHash, so
//! near-identical skeletons differ in a few bits only. The fingerprint is computed in the summarize
//! stage, before raw text is dropped; it never leaves the process, and only a duplication share is
//! reported.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::event::{ConversationEvent, Role};

/// Skeletons are cut here: templates differ early, and the cost must not grow with the message.
const MAX_SKELETON_CHARS: usize = 2_000;
/// Fingerprints this many bits apart or fewer count as one template.
pub const SAME_TEMPLATE_BITS: u32 = 3;
/// Distinct templates tracked per cluster (a space-saving heavy-hitters table).
const TRACKED_TEMPLATES: usize = 16;
/// Distinct accounts remembered per tracked template; enough to tell a script shared by dozens
/// of accounts from one account's habit.
const ACCOUNTS_PER_TEMPLATE: usize = 64;

/// The SimHash of the first user turn's skeleton, or 0 when there is no user text.
pub fn fingerprint(event: &ConversationEvent) -> u64 {
    event
        .turns
        .iter()
        .find(|t| t.role == Role::User && !t.content.trim().is_empty())
        .map(|t| simhash(&skeleton(&t.content)))
        .unwrap_or(0)
}

/// Lower-cased words with every digit run replaced by `0`.
fn skeleton(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut last_digit = false;
    for ch in text.chars().take(MAX_SKELETON_CHARS) {
        if ch.is_alphanumeric() {
            if ch.is_numeric() {
                if !last_digit {
                    current.push('0');
                }
                last_digit = true;
            } else {
                current.extend(ch.to_lowercase());
                last_digit = false;
            }
        } else {
            last_digit = false;
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            // Punctuation is part of a format: keep it as its own token.
            if !ch.is_whitespace() && !ch.is_control() {
                words.push(ch.to_string());
            }
        }
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

fn simhash(words: &[String]) -> u64 {
    let mut weights = [0i32; 64];
    let mut add = |feature: &str| {
        let h = xxhash_rust::xxh3::xxh3_64(feature.as_bytes());
        for (bit, w) in weights.iter_mut().enumerate() {
            *w += if h >> bit & 1 == 1 { 1 } else { -1 };
        }
    };
    if words.len() < 3 {
        add(&words.join(" "));
    } else {
        for shingle in words.windows(3) {
            add(&shingle.join(" "));
        }
    }
    weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .fold(0u64, |acc, (bit, _)| acc | 1 << bit)
}

/// Whether two fingerprints are the same template.
pub fn same_template(a: u64, b: u64) -> bool {
    (a ^ b).count_ones() <= SAME_TEMPLATE_BITS
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrackedTemplate {
    fingerprint: u64,
    /// Members counted for it (space-saving: may include an inherited overestimate `error`).
    count: u64,
    error: u64,
    accounts: HashSet<u64>,
}

/// The heaviest templates of a cluster, with how many distinct accounts used each. Bounded
/// (`TRACKED_TEMPLATES` entries of at most `ACCOUNTS_PER_TEMPLATE` accounts) and mergeable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TemplateTally {
    tracked: Vec<TrackedTemplate>,
    members: u64,
}

impl TemplateTally {
    pub fn record(&mut self, fingerprint: u64, account_key: u64) {
        self.members += 1;
        if fingerprint == 0 {
            return;
        }
        self.add(fingerprint, 1, 0, std::iter::once(account_key));
    }

    fn add(
        &mut self,
        fingerprint: u64,
        count: u64,
        error: u64,
        accounts: impl IntoIterator<Item = u64>,
    ) {
        let slot = match self
            .tracked
            .iter()
            .position(|t| same_template(t.fingerprint, fingerprint))
        {
            Some(i) => i,
            None if self.tracked.len() < TRACKED_TEMPLATES => {
                self.tracked.push(TrackedTemplate {
                    fingerprint,
                    count: 0,
                    error: 0,
                    accounts: HashSet::new(),
                });
                self.tracked.len() - 1
            }
            None => {
                // Space-saving: the lightest entry is replaced and its count inherited as error.
                let (i, lightest) = self
                    .tracked
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| (t.count, t.fingerprint))
                    .map(|(i, t)| (i, t.count))
                    .expect("table is full, so not empty");
                self.tracked[i] = TrackedTemplate {
                    fingerprint,
                    count: lightest,
                    error: lightest,
                    accounts: HashSet::new(),
                };
                i
            }
        };
        let t = &mut self.tracked[slot];
        t.count += count;
        t.error += error;
        for a in accounts {
            if t.accounts.len() >= ACCOUNTS_PER_TEMPLATE {
                break;
            }
            t.accounts.insert(a);
        }
    }

    /// Folds `other` in, as when two clusters merge.
    pub fn merge(&mut self, other: &TemplateTally) {
        self.members += other.members;
        for t in &other.tracked {
            self.add(t.fingerprint, t.count, t.error, t.accounts.iter().copied());
        }
    }

    /// Share of members whose request used the cluster's commonest template, counting that
    /// template only if at least `min_accounts` distinct accounts used it (a script shared across
    /// accounts, not one account repeating itself). A lower bound: space-saving errors are
    /// subtracted.
    pub fn duplication_rate(&self, min_accounts: usize) -> f64 {
        self.tracked
            .iter()
            .filter(|t| t.accounts.len() >= min_accounts)
            .map(|t| t.count - t.error.min(t.count))
            .max()
            .map_or(0.0, |n| n as f64 / self.members.max(1) as f64)
    }

    /// Distinct accounts (up to 64) behind the commonest template.
    pub fn top_template_accounts(&self) -> usize {
        self.tracked
            .iter()
            .max_by_key(|t| (t.count, std::cmp::Reverse(t.fingerprint)))
            .map_or(0, |t| t.accounts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(text: &str) -> u64 {
        simhash(&skeleton(text))
    }

    #[test]
    fn a_filled_template_keeps_its_fingerprint_and_other_requests_do_not_share_it() {
        let a =
            fp("Write 5 five-star reviews for product #12345, mention fast shipping and price.");
        let b = fp("Write 3 five-star reviews for product #98, mention fast shipping and price.");
        let c =
            fp("write 5 FIVE-STAR reviews for product #777,   mention fast shipping and price.");
        assert!(same_template(a, b), "{:064b}\n{:064b}", a, b);
        assert!(same_template(a, c));
        let other = fp("Explain how photosynthesis works in simple terms for a child.");
        assert!(!same_template(a, other));
    }

    #[test]
    fn duplication_needs_many_accounts_on_one_template() {
        let script = fp("Generate 10 unique promo codes for store 00 with 0% off");
        let mut campaign = TemplateTally::default();
        for account in 0..40u64 {
            campaign.record(script, account);
        }
        for i in 0..10u64 {
            campaign.record(
                fp(&format!(
                    "a varied organic request about topic {i} {}",
                    "x".repeat(i as usize)
                )),
                1000 + i,
            );
        }
        assert!(campaign.duplication_rate(10) > 0.75);

        let mut habit = TemplateTally::default();
        for _ in 0..40 {
            habit.record(script, 7);
        }
        assert_eq!(
            habit.duplication_rate(10),
            0.0,
            "one account repeating itself"
        );

        let mut merged = TemplateTally::default();
        merged.merge(&campaign);
        merged.merge(&habit);
        assert!(merged.duplication_rate(10) > 0.85);
        assert!(merged.tracked.len() <= TRACKED_TEMPLATES);
    }
}
