//! One micro-cluster and the statistics the detectors and outputs read.
//!
//! Everything here is a count, a vector or a scrubbed summary: no raw text and no account id. The
//! recent-join window is kept in event time so detection replays identically.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::distinct::DistinctCounter;
use super::ClusterId;
use crate::event::EventMeta;
use crate::summarize::Summary;

/// Joins remembered for the sliding window, at most this many (a burst beyond it still shows up
/// as a full window; the oldest entries go first).
const MAX_RECENT_JOINS: usize = 20_000;

#[derive(Debug, Clone)]
pub struct MicroCluster {
    pub id: ClusterId,
    pub born_ms: i64,
    pub last_seen_ms: i64,
    pub count: u64,
    /// Sum of member vectors; the centroid is its normalisation.
    sum: Vec<f32>,
    pub centroid: Vec<f32>,
    /// Sum over members of their similarity to the centroid at the time they joined (the founder
    /// counts 1). `similarity_sum / count` is the cluster's tightness.
    similarity_sum: f64,
    pub accounts: DistinctCounter,
    pub orgs: DistinctCounter,
    pub surfaces: BTreeMap<String, u64>,
    pub languages: BTreeMap<String, u64>,
    pub tasks: BTreeMap<String, u64>,
    pub refused: u64,
    pub classifier_flagged: u64,
    /// Concern scores 1..=5 at index 0..=4.
    pub concern_histogram: [u64; 5],
    pub recent: RecentJoins,
    pub reservoir: Reservoir,
}

impl MicroCluster {
    pub fn found(
        id: ClusterId,
        meta: &EventMeta,
        summary: &Summary,
        vector: &[f32],
        distinct_cap: usize,
        reservoir_size: usize,
    ) -> Self {
        let mut c = MicroCluster {
            id,
            born_ms: meta.event_time_ms,
            last_seen_ms: meta.event_time_ms,
            count: 0,
            sum: vec![0.0; vector.len()],
            centroid: vector.to_vec(),
            similarity_sum: 0.0,
            accounts: DistinctCounter::new(distinct_cap),
            orgs: DistinctCounter::new(distinct_cap),
            surfaces: BTreeMap::new(),
            languages: BTreeMap::new(),
            tasks: BTreeMap::new(),
            refused: 0,
            classifier_flagged: 0,
            concern_histogram: [0; 5],
            recent: RecentJoins::default(),
            reservoir: Reservoir::new(reservoir_size),
        };
        c.absorb(meta, summary, vector, 1.0);
        c
    }

    /// Adds a member that matched with `similarity` to the current centroid.
    pub fn absorb(&mut self, meta: &EventMeta, summary: &Summary, vector: &[f32], similarity: f32) {
        self.count += 1;
        self.last_seen_ms = self.last_seen_ms.max(meta.event_time_ms);
        self.similarity_sum += f64::from(similarity);
        for (s, v) in self.sum.iter_mut().zip(vector) {
            *s += v;
        }
        let norm = self.sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (c, s) in self.centroid.iter_mut().zip(&self.sum) {
                *c = s / norm;
            }
        }
        self.accounts.insert(meta.account_key);
        if let Some(org) = meta.org_key {
            self.orgs.insert(org);
        }
        *self.surfaces.entry(meta.surface.clone()).or_default() += 1;
        *self.languages.entry(summary.language.clone()).or_default() += 1;
        *self.tasks.entry(summary.task.clone()).or_default() += 1;
        if summary.refused {
            self.refused += 1;
        }
        if meta.classifier_flagged {
            self.classifier_flagged += 1;
        }
        let bucket = usize::from(summary.concern.clamp(1, 5) - 1);
        self.concern_histogram[bucket] += 1;
        self.recent.push(meta.event_time_ms, meta.account_key);
        self.reservoir.offer(
            meta.conversation_key,
            meta.account_key,
            &summary.request,
            self.count,
        );
    }

    /// Mean similarity of members to the centroid when they joined, in [-1, 1].
    pub fn tightness(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.similarity_sum / self.count as f64
        }
    }

    pub fn refusal_rate(&self) -> f64 {
        self.refused as f64 / self.count.max(1) as f64
    }

    pub fn mean_concern(&self) -> f64 {
        let total: u64 = self.concern_histogram.iter().sum();
        let weighted: u64 = self
            .concern_histogram
            .iter()
            .enumerate()
            .map(|(i, n)| (i as u64 + 1) * n)
            .sum();
        weighted as f64 / total.max(1) as f64
    }
}

/// Joins within the detection window: event time and account key, oldest first.
#[derive(Debug, Clone, Default)]
pub struct RecentJoins {
    joins: VecDeque<(i64, u64)>,
    per_account: HashMap<u64, u32>,
}

impl RecentJoins {
    fn push(&mut self, event_time_ms: i64, account: u64) {
        // Keep the deque ordered by time even if events arrive slightly out of order.
        let pos = self.joins.partition_point(|(t, _)| *t <= event_time_ms);
        self.joins.insert(pos, (event_time_ms, account));
        *self.per_account.entry(account).or_default() += 1;
        while self.joins.len() > MAX_RECENT_JOINS {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, account)) = self.joins.pop_front() {
            if let Some(n) = self.per_account.get_mut(&account) {
                *n -= 1;
                if *n == 0 {
                    self.per_account.remove(&account);
                }
            }
        }
    }

    /// Drops joins at or before `cutoff_ms`.
    pub fn expire_before(&mut self, cutoff_ms: i64) {
        while matches!(self.joins.front(), Some((t, _)) if *t <= cutoff_ms) {
            self.pop_front();
        }
    }

    pub fn joins(&self) -> usize {
        self.joins.len()
    }

    pub fn distinct_accounts(&self) -> usize {
        self.per_account.len()
    }

    /// Share of the window's joins made by its busiest account.
    pub fn top_account_share(&self) -> f64 {
        let top = self.per_account.values().copied().max().unwrap_or(0);
        top as f64 / self.joins.len().max(1) as f64
    }

    pub fn first_time_ms(&self) -> Option<i64> {
        self.joins.front().map(|(t, _)| *t)
    }

    pub fn last_time_ms(&self) -> Option<i64> {
        self.joins.back().map(|(t, _)| *t)
    }
}

/// A fixed-size uniform sample of scrubbed summaries, for labels. Replacement decisions hash the
/// conversation key instead of drawing from an RNG, so replays keep the same sample.
#[derive(Debug, Clone)]
pub struct Reservoir {
    capacity: usize,
    items: Vec<ReservoirItem>,
}

#[derive(Debug, Clone)]
pub struct ReservoirItem {
    pub account_key: u64,
    pub request: String,
}

impl Reservoir {
    pub(crate) fn new(capacity: usize) -> Self {
        Reservoir {
            capacity,
            items: Vec::new(),
        }
    }

    /// Algorithm R with a hash in place of the random draw. `seen` counts this item.
    pub(crate) fn offer(
        &mut self,
        conversation_key: u64,
        account_key: u64,
        request: &str,
        seen: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let item = ReservoirItem {
            account_key,
            request: request.to_string(),
        };
        if self.items.len() < self.capacity {
            self.items.push(item);
            return;
        }
        let slot = xxhash_rust::xxh3::xxh3_64(&conversation_key.to_le_bytes()) % seen.max(1);
        if let Some(existing) = self.items.get_mut(slot as usize) {
            *existing = item;
        }
    }

    pub fn items(&self) -> &[ReservoirItem] {
        &self.items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_window_counts_and_expires() {
        let mut r = RecentJoins::default();
        r.push(1000, 1);
        r.push(3000, 2);
        r.push(2000, 1);
        assert_eq!(r.joins(), 3);
        assert_eq!(r.distinct_accounts(), 2);
        assert!((r.top_account_share() - 2.0 / 3.0).abs() < 1e-9);
        r.expire_before(2000);
        assert_eq!(r.joins(), 1);
        assert_eq!(r.distinct_accounts(), 1);
        assert_eq!(r.first_time_ms(), Some(3000));
    }

    #[test]
    fn reservoir_is_bounded() {
        let mut r = Reservoir::new(3);
        for i in 0..100u64 {
            r.offer(i, i, &format!("request {i}"), i + 1);
        }
        assert_eq!(r.items().len(), 3);
    }
}
