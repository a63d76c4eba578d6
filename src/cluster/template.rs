//! Template fingerprints, and the per-cluster tally of them that tells "many accounts sent the
//! same script" from "many accounts asked similar things".
//!
//! A fingerprint is a MinHash sketch of the request's skeleton: eight bands, each the low byte of
//! the minimum of one seeded hash over the skeleton's word 3-gram shingles, packed into a u64.
//! - The skeleton is the first user turn lower-cased, with every digit run replaced by `0` and
//!   punctuation kept as tokens, so a script pasted with different numbers or spacing has one
//!   fingerprint. Two requests with equal fingerprints are the same **script**.
//! - A template with slots filled in ("Write a 5-star review for the {product} from {shop}…")
//!   changes the shingles that touch a slot and keeps the rest. Each band keeps its value with
//!   probability equal to the shingle Jaccard similarity, so fills of one template share most
//!   **band keys** while unrelated requests share one only by chance (1 in 256 per band). A
//!   single SimHash cannot do this: filling four slots moves it as far as an unrelated request.
//!
//! The fingerprint is computed in the summarize stage, before raw text is dropped. It never
//! leaves the process, and only duplication shares are reported.

use serde::{Deserialize, Serialize};

use crate::event::{ConversationEvent, Role};

/// Skeletons are cut here: templates differ early, and the cost must not grow with the message.
const MAX_SKELETON_CHARS: usize = 2_000;
/// MinHash bands per fingerprint, one byte each.
pub const BANDS: usize = 8;
/// Distinct keys tracked per cluster (a space-saving heavy-hitters table). A template occupies
/// up to [`BANDS`] band keys, so the band tally tracks a few templates' worth.
const TRACKED_KEYS: usize = 24;
/// Distinct accounts remembered per tracked key; enough to tell a script shared by dozens of
/// accounts from one account's habit. `detect.coordinated.duplication_min_accounts` must not
/// exceed it.
pub const ACCOUNTS_PER_TEMPLATE: usize = 64;

/// The fingerprint of the first user turn's skeleton, or 0 when there is no user text.
pub fn fingerprint(event: &ConversationEvent) -> u64 {
    event
        .turns
        .iter()
        .find(|t| t.role == Role::User && !t.content.trim().is_empty())
        .map(|t| minhash(&skeleton(&t.content)))
        .unwrap_or(0)
}

/// The band keys of a fingerprint, each tagged with its band so equal bytes of different bands
/// stay apart; none for 0 (no fingerprint).
pub fn band_keys(fingerprint: u64) -> impl Iterator<Item = u64> {
    let bands = if fingerprint == 0 { 0 } else { BANDS };
    (0..bands).map(move |band| ((band as u64) << 8) | (fingerprint >> (8 * band) & 0xff))
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

fn minhash(words: &[String]) -> u64 {
    let single;
    let shingles: Vec<&[String]> = if words.len() < 3 {
        single = [words];
        single.to_vec()
    } else {
        words.windows(3).collect()
    };
    let mut minima = [u64::MAX; BANDS];
    for shingle in shingles {
        let text = shingle.join(" ");
        for (band, min) in minima.iter_mut().enumerate() {
            *min = (*min).min(xxhash_rust::xxh3::xxh3_64_with_seed(
                text.as_bytes(),
                band as u64,
            ));
        }
    }
    let packed = minima
        .iter()
        .enumerate()
        .fold(0u64, |acc, (band, min)| acc | (min & 0xff) << (8 * band));
    // 0 means "no fingerprint"; an all-zero sketch (1 in 2^64) is nudged off it.
    packed.max(1)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TrackedKey {
    key: u64,
    /// Members counted for it (space-saving: may include an inherited overestimate `error`).
    count: u64,
    error: u64,
    /// Distinct account keys, at most `ACCOUNTS_PER_TEMPLATE`, in arrival order. A plain vector
    /// searched linearly: 48 of these per cluster, and a hash set of 64 keys takes more than
    /// twice the memory (a soak's state grew by that much as clusters' tallies filled up). It
    /// serialises exactly like the set it replaced, so older snapshots load.
    accounts: Vec<u64>,
}

/// The heaviest keys of a cluster's members, with how many distinct accounts used each. Keyed by
/// whole fingerprints it measures scripts; keyed by [`band_keys`] it measures templates. Bounded
/// (`TRACKED_KEYS` entries of at most `ACCOUNTS_PER_TEMPLATE` accounts) and mergeable.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TemplateTally {
    tracked: Vec<TrackedKey>,
    members: u64,
}

impl TemplateTally {
    /// Counts one member whose request has `keys` (none when it had no fingerprint).
    pub fn record(&mut self, keys: impl IntoIterator<Item = u64>, account_key: u64) {
        self.members += 1;
        for key in keys {
            self.add(key, 1, 0, std::iter::once(account_key));
        }
    }

    fn add(&mut self, key: u64, count: u64, error: u64, accounts: impl IntoIterator<Item = u64>) {
        let slot = match self.tracked.iter().position(|t| t.key == key) {
            Some(i) => i,
            None if self.tracked.len() < TRACKED_KEYS => {
                self.tracked.push(TrackedKey {
                    key,
                    count: 0,
                    error: 0,
                    accounts: Vec::new(),
                });
                self.tracked.len() - 1
            }
            None => {
                // Space-saving: the lightest entry is replaced and its count inherited as error.
                let (i, lightest) = self
                    .tracked
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, t)| (t.count, t.key))
                    .map(|(i, t)| (i, t.count))
                    .expect("table is full, so not empty");
                self.tracked[i] = TrackedKey {
                    key,
                    count: lightest,
                    error: lightest,
                    accounts: Vec::new(),
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
            if !t.accounts.contains(&a) {
                t.accounts.push(a);
            }
        }
    }

    /// Folds `other` in, as when two clusters merge.
    pub fn merge(&mut self, other: &TemplateTally) {
        self.members += other.members;
        for t in &other.tracked {
            self.add(t.key, t.count, t.error, t.accounts.iter().copied());
        }
    }

    /// Share of members whose request had the commonest key, counting a key only if at least
    /// `min_accounts` distinct accounts used it (a script shared across accounts, not one account
    /// repeating itself). A lower bound: space-saving errors are subtracted.
    pub fn duplication_rate(&self, min_accounts: usize) -> f64 {
        self.tracked
            .iter()
            .filter(|t| t.accounts.len() >= min_accounts)
            .map(|t| t.count - t.error.min(t.count))
            .max()
            .map_or(0.0, |n| n as f64 / self.members.max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(text: &str) -> u64 {
        minhash(&skeleton(text))
    }

    fn shared_bands(a: u64, b: u64) -> usize {
        band_keys(a)
            .zip(band_keys(b))
            .filter(|(x, y)| x == y)
            .count()
    }

    #[test]
    fn a_pasted_script_keeps_its_fingerprint_and_other_requests_do_not_share_it() {
        let a =
            fp("Write 5 five-star reviews for product #12345, mention fast shipping and price.");
        let b = fp("Write 3 five-star reviews for product #98, mention fast shipping and price.");
        let c =
            fp("write 5 FIVE-STAR reviews for product #777,   mention fast shipping and price.");
        assert_eq!(a, b);
        assert_eq!(a, c);
        let other = fp("Explain how photosynthesis works in simple terms for a child.");
        assert_ne!(a, other);
        assert!(shared_bands(a, other) <= 1);
    }

    #[test]
    fn fills_of_one_template_share_band_keys_that_unrelated_requests_do_not() {
        let template = "Write a 5-star review for the {p} from {s}. Say the {f} is amazing and \
                        delivery took 3 days.";
        let fills: Vec<u64> = [
            ("blender", "megastore", "motor"),
            ("air fryer", "dealhub", "price"),
            ("yoga mat", "cheapo", "build quality"),
            ("kettle", "shopnow", "design"),
            ("smart watch", "valuemart", "screen"),
            ("backpack", "buyhere", "packaging"),
        ]
        .iter()
        .map(|(p, s, f)| {
            fp(&template
                .replace("{p}", p)
                .replace("{s}", s)
                .replace("{f}", f))
        })
        .collect();
        // The commonest band key is shared by most fills.
        let mut tally = TemplateTally::default();
        for (account, f) in fills.iter().enumerate() {
            tally.record(band_keys(*f), account as u64);
        }
        assert!(tally.duplication_rate(4) >= 0.5, "{fills:x?}");
        // ... while their whole fingerprints differ.
        let mut scripts = TemplateTally::default();
        for (account, f) in fills.iter().enumerate() {
            scripts.record([*f], account as u64);
        }
        assert!(scripts.duplication_rate(2) < 0.5);

        let organic = [
            "what is the weather like in paris today",
            "how do I reset my online banking password",
            "translate good morning into spanish please",
            "set a timer for ten minutes",
            "what's my credit score right now",
            "recommend a good book about history",
        ];
        let mut diffuse = TemplateTally::default();
        for (account, text) in organic.iter().enumerate() {
            diffuse.record(band_keys(fp(text)), account as u64);
        }
        assert_eq!(diffuse.duplication_rate(2), 0.0);
    }

    #[test]
    fn duplication_needs_many_accounts_on_one_key() {
        let script = fp("Generate 10 unique promo codes for store 00 with 0% off");
        let mut campaign = TemplateTally::default();
        for account in 0..40u64 {
            campaign.record([script], account);
        }
        for i in 0..10u64 {
            campaign.record(
                [fp(&format!(
                    "a varied organic request about topic {i} {}",
                    "x".repeat(i as usize)
                ))],
                1000 + i,
            );
        }
        assert!(campaign.duplication_rate(10) > 0.75);

        let mut habit = TemplateTally::default();
        for _ in 0..40 {
            habit.record([script], 7);
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
        assert!(merged.tracked.len() <= TRACKED_KEYS);
    }

    #[test]
    fn account_lists_stay_distinct_and_capped_and_older_snapshots_load() {
        let script = fp("Generate 10 unique promo codes for store 00 with 0% off");
        let mut tally = TemplateTally::default();
        for _round in 0..3 {
            for account in 0..2 * ACCOUNTS_PER_TEMPLATE as u64 {
                tally.record([script], account);
            }
        }
        let accounts = &tally.tracked[0].accounts;
        assert_eq!(accounts.len(), ACCOUNTS_PER_TEMPLATE);
        let mut distinct = accounts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), ACCOUNTS_PER_TEMPLATE);

        // Snapshots written before the list held the accounts in a hash set: the same shape.
        #[derive(Serialize)]
        struct SetTrackedKey {
            key: u64,
            count: u64,
            error: u64,
            accounts: std::collections::HashSet<u64>,
        }
        #[derive(Serialize)]
        struct SetTally {
            tracked: Vec<SetTrackedKey>,
            members: u64,
        }
        let older = SetTally {
            tracked: vec![SetTrackedKey {
                key: script,
                count: 3,
                error: 0,
                accounts: [1, 2, 3].into_iter().collect(),
            }],
            members: 3,
        };
        let back: TemplateTally =
            postcard::from_bytes(&postcard::to_stdvec(&older).unwrap()).unwrap();
        assert_eq!(back.duplication_rate(3), 1.0);
        assert_eq!(back.duplication_rate(4), 0.0);
    }
}
