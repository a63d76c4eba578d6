//! One micro-cluster and the statistics the detectors and outputs read.
//!
//! Everything here is a count, a vector, a sketch or a scrubbed summary: no raw text and no account
//! id. The recent-join window and the decay run in event time so detection replays identically.
//!
//! Every statistic is mergeable ([`MicroCluster::merge`]), because two clusters whose centroids
//! converge become one, and the survivor must describe both.
//!
//! Decay: the centroid's vector sum, the cluster's weight and its tightness sum all decay with the
//! configured half-life of event time, so a cluster follows what its members ask now, and one that
//! goes quiet fades until the state archives it. `count` (conversations) never decays: the privacy
//! gate counts real conversations.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::distinct::DistinctCounter;
use super::index::normalised;
use super::template::{band_keys, TemplateTally};
use super::ClusterId;
use crate::event::EventMeta;
use crate::summarize::Summary;

/// `2^(-elapsed / half_life)`: how much of a weight survives `elapsed_ms` of event time.
pub fn decay_factor(elapsed_ms: i64, half_life_ms: i64) -> f64 {
    if elapsed_ms <= 0 || half_life_ms <= 0 {
        return 1.0;
    }
    (-(elapsed_ms as f64) / half_life_ms as f64).exp2()
}

/// Joins remembered for the sliding window, at most this many (a burst beyond it still shows up
/// as a full window; the oldest entries go first).
const MAX_RECENT_JOINS: usize = 20_000;

/// Members a cluster needs to count as established (see [`MicroCluster::established_ms`]).
pub const ESTABLISHED_MEMBERS: u64 = 5;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MicroCluster {
    pub id: ClusterId,
    pub born_ms: i64,
    /// When the cluster reached [`ESTABLISHED_MEMBERS`] members. A cluster that held a stray
    /// request or two for hours and then fills up is new where it matters (the coordinated
    /// detector's slow scale counts its age from here); `None` while it is smaller.
    pub established_ms: Option<i64>,
    pub last_seen_ms: i64,
    /// Conversations clustered here (merges add up; never decays).
    pub count: u64,
    /// Decayed member weight as of `decayed_at_ms`: each member adds 1, halving every half-life.
    weight: f64,
    decayed_at_ms: i64,
    /// Decayed sum of member vectors; the centroid is its normalisation.
    sum: Vec<f32>,
    pub centroid: Vec<f32>,
    /// Decayed sum over members of their similarity to the centroid at the time they joined (the
    /// founder counts 1). `similarity_sum / weight` is the cluster's (recent) tightness.
    similarity_sum: f64,
    pub accounts: DistinctCounter,
    pub orgs: DistinctCounter,
    pub surfaces: BTreeMap<String, u64>,
    pub languages: BTreeMap<String, u64>,
    pub tasks: BTreeMap<String, u64>,
    pub refused: u64,
    pub classifier_flagged: u64,
    /// Members whose account was fresh when they joined (see `cluster::accounts`).
    pub fresh_joins: u64,
    /// Concern scores 1..=5 at index 0..=4.
    pub concern_histogram: [u64; 5],
    pub recent: RecentJoins,
    pub reservoir: Reservoir,
    /// Lifetime tallies of whole fingerprints (scripts) and of band keys (templates).
    pub scripts: TemplateTally,
    pub templates: TemplateTally,
    /// Two running sub-centroids (online 2-means over recent members), allocated only once the
    /// cluster is big enough to be worth splitting; see [`SplitProbe`].
    probe: Option<SplitProbe>,
}

/// Watches whether a cluster's members form two groups that have drifted apart under one
/// centroid. Members are assigned to the nearer of two running sums; the first member, and the
/// first one after it that is not near it, seed them. When both halves are populated and their
/// centroids would not even join each other, the cluster splits.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SplitProbe {
    sums: [Vec<f32>; 2],
    members: [u32; 2],
}

/// A second seed must be less similar than this to the first.
const SPLIT_SEED_MAX_COSINE: f32 = 0.9;

impl SplitProbe {
    fn new(dimension: usize) -> Self {
        SplitProbe {
            sums: [vec![0.0; dimension], vec![0.0; dimension]],
            members: [0, 0],
        }
    }

    fn add(&mut self, vector: &[f32]) {
        let side = if self.members[0] == 0 {
            0
        } else {
            let near0 = cosine_to_sum(&self.sums[0], vector);
            if self.members[1] == 0 {
                usize::from(near0 < SPLIT_SEED_MAX_COSINE)
            } else {
                usize::from(cosine_to_sum(&self.sums[1], vector) > near0)
            }
        };
        for (s, v) in self.sums[side].iter_mut().zip(vector) {
            *s += v;
        }
        self.members[side] += 1;
    }
}

fn cosine_to_sum(sum: &[f32], unit: &[f32]) -> f32 {
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        0.0
    } else {
        crate::cluster::index::dot(sum, unit) / norm
    }
}

impl MicroCluster {
    pub fn found(
        id: ClusterId,
        meta: &EventMeta,
        summary: &Summary,
        vector: &[f32],
        distinct_cap: usize,
        reservoir_size: usize,
        fresh_account: bool,
    ) -> Self {
        let mut c = MicroCluster::empty(
            id,
            meta.event_time_ms,
            vector.to_vec(),
            distinct_cap,
            reservoir_size,
        );
        c.absorb(meta, summary, vector, 1.0, 0, fresh_account);
        c
    }

    /// A cluster with no members yet, pointing at `centroid`.
    fn empty(
        id: ClusterId,
        at_ms: i64,
        centroid: Vec<f32>,
        distinct_cap: usize,
        reservoir_size: usize,
    ) -> Self {
        MicroCluster {
            id,
            born_ms: at_ms,
            established_ms: None,
            last_seen_ms: at_ms,
            count: 0,
            weight: 0.0,
            decayed_at_ms: at_ms,
            sum: vec![0.0; centroid.len()],
            centroid,
            similarity_sum: 0.0,
            accounts: DistinctCounter::new(distinct_cap),
            orgs: DistinctCounter::new(distinct_cap),
            surfaces: BTreeMap::new(),
            languages: BTreeMap::new(),
            tasks: BTreeMap::new(),
            refused: 0,
            classifier_flagged: 0,
            fresh_joins: 0,
            concern_histogram: [0; 5],
            recent: RecentJoins::default(),
            reservoir: Reservoir::new(reservoir_size),
            scripts: TemplateTally::default(),
            templates: TemplateTally::default(),
            probe: None,
        }
    }

    /// Starts watching for a split once the cluster has `from_members` members (0: never).
    pub fn probe_for_split(&mut self, from_members: u64) {
        if self.probe.is_none() && from_members > 0 && self.count >= from_members {
            self.probe = Some(SplitProbe::new(self.centroid.len()));
        }
    }

    /// If the probe found two halves of at least `min_members` each whose centroids are below
    /// `max_cosine` apart, moves this cluster's centroid to the larger half and returns the
    /// smaller half's centroid and member count (the caller founds the new cluster). The probe
    /// restarts either way once it has decided.
    pub fn take_split(&mut self, min_members: u32, max_cosine: f32) -> Option<(Vec<f32>, u32)> {
        let probe = self.probe.as_ref()?;
        if probe.members.iter().any(|n| *n < min_members) {
            return None;
        }
        let halves = [
            normalised(probe.sums[0].clone()),
            normalised(probe.sums[1].clone()),
        ];
        let members = probe.members;
        self.probe = Some(SplitProbe::new(self.centroid.len()));
        if crate::cluster::index::dot(&halves[0], &halves[1]) >= max_cosine {
            return None;
        }
        let (stay, leave) = if members[0] >= members[1] {
            (0, 1)
        } else {
            (1, 0)
        };
        // The remaining half keeps the cluster's weight; its pull is now that half's direction.
        let norm = self.sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        self.sum = halves[stay].iter().map(|x| x * norm).collect();
        self.renormalise();
        Some((halves[leave].clone(), members[leave]))
    }

    /// A cluster split off `parent`: its centroid and decayed weight come from the parent's
    /// probe; its statistics start empty (the members it was split from stay counted in the
    /// parent, so nothing is counted twice).
    pub fn split_off(
        id: ClusterId,
        centroid: Vec<f32>,
        weight: f64,
        at_ms: i64,
        parent: &MicroCluster,
    ) -> Self {
        let mut c = MicroCluster::empty(
            id,
            at_ms,
            centroid,
            parent.accounts.cap(),
            parent.reservoir.capacity,
        );
        c.weight = weight;
        c.sum = c.centroid.iter().map(|x| x * weight as f32).collect();
        c
    }

    /// Brings the decayed sums forward to `at_ms` (never backwards).
    fn decay_to(&mut self, at_ms: i64, half_life_ms: i64) {
        if at_ms <= self.decayed_at_ms {
            return;
        }
        let f = decay_factor(at_ms - self.decayed_at_ms, half_life_ms);
        self.decayed_at_ms = at_ms;
        if f == 1.0 {
            return;
        }
        self.weight *= f;
        self.similarity_sum *= f;
        let f = f as f32;
        self.sum.iter_mut().for_each(|s| *s *= f);
    }

    fn renormalise(&mut self) {
        let norm = self.sum.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            for (c, s) in self.centroid.iter_mut().zip(&self.sum) {
                *c = s / norm;
            }
        }
    }

    /// Adds a member that matched with `similarity` to the current centroid. `half_life_ms` of 0
    /// turns decay off. A member older than the cluster's decay point counts with its own decay.
    pub fn absorb(
        &mut self,
        meta: &EventMeta,
        summary: &Summary,
        vector: &[f32],
        similarity: f32,
        half_life_ms: i64,
        fresh_account: bool,
    ) {
        self.count += 1;
        if self.established_ms.is_none() && self.count >= ESTABLISHED_MEMBERS {
            self.established_ms = Some(meta.event_time_ms);
        }
        self.last_seen_ms = self.last_seen_ms.max(meta.event_time_ms);
        self.decay_to(meta.event_time_ms, half_life_ms);
        let own = decay_factor(self.decayed_at_ms - meta.event_time_ms, half_life_ms);
        self.weight += own;
        self.similarity_sum += own * f64::from(similarity);
        let own = own as f32;
        for (s, v) in self.sum.iter_mut().zip(vector) {
            *s += own * v;
        }
        self.renormalise();
        if let Some(probe) = self.probe.as_mut() {
            probe.add(vector);
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
        self.fresh_joins += u64::from(fresh_account);
        let bucket = usize::from(summary.concern.clamp(1, 5) - 1);
        self.concern_histogram[bucket] += 1;
        self.recent.push(
            meta.event_time_ms,
            meta.account_key,
            meta.org_key,
            similarity,
            meta.template,
            fresh_account,
        );
        self.scripts.record(
            (meta.template != 0).then_some(meta.template),
            meta.account_key,
        );
        self.templates
            .record(band_keys(meta.template), meta.account_key);
        self.reservoir.offer(
            meta.conversation_key,
            meta.account_key,
            &summary.request,
            self.count,
        );
    }

    /// Folds `other` into this cluster (the older id survives a merge; the caller picks). Sums
    /// are decayed to a common time first. Tightness becomes the weighted mean of both, which
    /// slightly flatters the merged cluster: `other`'s members were close to its own centroid,
    /// which the merge threshold keeps close to this one.
    pub fn merge(&mut self, other: &MicroCluster, half_life_ms: i64) {
        let at = self.decayed_at_ms.max(other.decayed_at_ms);
        self.decay_to(at, half_life_ms);
        let f = decay_factor(at - other.decayed_at_ms, half_life_ms);
        self.weight += other.weight * f;
        self.similarity_sum += other.similarity_sum * f;
        let f = f as f32;
        for (s, o) in self.sum.iter_mut().zip(&other.sum) {
            *s += f * o;
        }
        self.renormalise();
        self.reservoir
            .merge(&other.reservoir, self.count, other.count);
        self.count += other.count;
        self.born_ms = self.born_ms.min(other.born_ms);
        self.established_ms = match (self.established_ms, other.established_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        self.accounts.merge(&other.accounts);
        self.orgs.merge(&other.orgs);
        for (mine, theirs) in [
            (&mut self.surfaces, &other.surfaces),
            (&mut self.languages, &other.languages),
            (&mut self.tasks, &other.tasks),
        ] {
            for (k, n) in theirs {
                *mine.entry(k.clone()).or_default() += n;
            }
        }
        self.refused += other.refused;
        self.classifier_flagged += other.classifier_flagged;
        self.fresh_joins += other.fresh_joins;
        for (mine, theirs) in self
            .concern_histogram
            .iter_mut()
            .zip(other.concern_histogram)
        {
            *mine += theirs;
        }
        self.recent.merge(&other.recent);
        self.scripts.merge(&other.scripts);
        self.templates.merge(&other.templates);
        // The halves watched so far describe only one side of the merged cluster: start over.
        if self.probe.is_some() || other.probe.is_some() {
            self.probe = Some(SplitProbe::new(self.centroid.len()));
        }
    }

    /// Decayed weight at event time `at_ms`: about how many members it would take to rebuild the
    /// cluster's pull now. The state archives clusters whose weight falls below a floor.
    pub fn weight_at(&self, at_ms: i64, half_life_ms: i64) -> f64 {
        self.weight * decay_factor(at_ms.saturating_sub(self.decayed_at_ms), half_life_ms)
    }

    /// Mean similarity of (recent, by decay) members to the centroid when they joined, in
    /// [-1, 1].
    pub fn tightness(&self) -> f64 {
        if self.weight <= 0.0 {
            0.0
        } else {
            self.similarity_sum / self.weight
        }
    }

    pub fn refusal_rate(&self) -> f64 {
        self.refused as f64 / self.count.max(1) as f64
    }

    /// Share of members an upstream classifier flagged.
    pub fn classifier_flag_rate(&self) -> f64 {
        self.classifier_flagged as f64 / self.count.max(1) as f64
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

/// One join in the detection window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Join {
    event_time_ms: i64,
    account: u64,
    org: Option<u64>,
    /// Similarity to the centroid when the member joined.
    similarity: f32,
    /// Template fingerprint (0: none).
    template: u64,
    /// The account was fresh (see `cluster::accounts`) when it joined.
    fresh: bool,
}

/// How one template is used inside the window: joins and joins per distinct account.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TemplateUse {
    joins: u32,
    per_account: HashMap<u64, u32>,
}

impl TemplateUse {
    fn count_up(uses: &mut HashMap<u64, TemplateUse>, key: u64, account: u64) {
        let used = uses.entry(key).or_default();
        used.joins += 1;
        *used.per_account.entry(account).or_default() += 1;
    }

    fn count_down(uses: &mut HashMap<u64, TemplateUse>, key: u64, account: u64) {
        if let Some(used) = uses.get_mut(&key) {
            used.joins -= 1;
            count_down(&mut used.per_account, account);
            if used.joins == 0 {
                uses.remove(&key);
            }
        }
    }

    /// Share of `joins` on the commonest key that at least `min_accounts` accounts used.
    fn top_share(uses: &HashMap<u64, TemplateUse>, joins: usize, min_accounts: usize) -> f64 {
        uses.values()
            .filter(|t| t.per_account.len() >= min_accounts)
            .map(|t| t.joins)
            .max()
            .map_or(0.0, |n| f64::from(n) / joins.max(1) as f64)
    }
}

/// Joins within the detection window, oldest first, with exact distinct accounts and orgs, the
/// members' similarity to the centroid and which accounts used which request template — what the
/// coordinated detector reads. Bounded by the window (and `MAX_RECENT_JOINS`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RecentJoins {
    joins: VecDeque<Join>,
    per_account: HashMap<u64, u32>,
    per_org: HashMap<u64, u32>,
    /// By whole fingerprint (scripts) and by band key (templates).
    per_script: HashMap<u64, TemplateUse>,
    per_band: HashMap<u64, TemplateUse>,
    /// Fresh joins per account.
    fresh_accounts: HashMap<u64, u32>,
    similarity_sum: f64,
}

fn count_down(map: &mut HashMap<u64, u32>, key: u64) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl RecentJoins {
    fn push(
        &mut self,
        event_time_ms: i64,
        account: u64,
        org: Option<u64>,
        similarity: f32,
        template: u64,
        fresh: bool,
    ) {
        // Keep the deque ordered by time even if events arrive slightly out of order.
        let pos = self
            .joins
            .partition_point(|j| j.event_time_ms <= event_time_ms);
        self.joins.insert(
            pos,
            Join {
                event_time_ms,
                account,
                org,
                similarity,
                template,
                fresh,
            },
        );
        if fresh {
            *self.fresh_accounts.entry(account).or_default() += 1;
        }
        *self.per_account.entry(account).or_default() += 1;
        if let Some(org) = org {
            *self.per_org.entry(org).or_default() += 1;
        }
        if template != 0 {
            TemplateUse::count_up(&mut self.per_script, template, account);
        }
        for key in band_keys(template) {
            TemplateUse::count_up(&mut self.per_band, key, account);
        }
        self.similarity_sum += f64::from(similarity);
        while self.joins.len() > MAX_RECENT_JOINS {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(join) = self.joins.pop_front() {
            count_down(&mut self.per_account, join.account);
            if let Some(org) = join.org {
                count_down(&mut self.per_org, org);
            }
            TemplateUse::count_down(&mut self.per_script, join.template, join.account);
            for key in band_keys(join.template) {
                TemplateUse::count_down(&mut self.per_band, key, join.account);
            }
            if join.fresh {
                count_down(&mut self.fresh_accounts, join.account);
            }
            self.similarity_sum -= f64::from(join.similarity);
            if self.joins.is_empty() {
                // Re-anchor the running sum so float error cannot accumulate across windows.
                self.similarity_sum = 0.0;
            }
        }
    }

    /// Interleaves `other`'s joins by time (a merge), keeping the newest within the bound.
    fn merge(&mut self, other: &RecentJoins) {
        for join in &other.joins {
            self.push(
                join.event_time_ms,
                join.account,
                join.org,
                join.similarity,
                join.template,
                join.fresh,
            );
        }
    }

    /// Drops joins at or before `cutoff_ms`.
    pub fn expire_before(&mut self, cutoff_ms: i64) {
        while matches!(self.joins.front(), Some(j) if j.event_time_ms <= cutoff_ms) {
            self.pop_front();
        }
    }

    pub fn joins(&self) -> usize {
        self.joins.len()
    }

    pub fn distinct_accounts(&self) -> usize {
        self.per_account.len()
    }

    pub fn distinct_orgs(&self) -> usize {
        self.per_org.len()
    }

    /// Share of the window's joins made by its busiest account.
    pub fn top_account_share(&self) -> f64 {
        let top = self.per_account.values().copied().max().unwrap_or(0);
        top as f64 / self.joins.len().max(1) as f64
    }

    /// Joins per distinct account in the window.
    pub fn account_counts(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.per_account.iter().map(|(a, n)| (*a, *n))
    }

    /// Accounts with at least one fresh join in the window.
    pub fn fresh_account_keys(&self) -> impl Iterator<Item = u64> + '_ {
        self.fresh_accounts.keys().copied()
    }

    /// Share of the window's distinct accounts that were fresh when they joined.
    pub fn fresh_account_share(&self) -> f64 {
        self.fresh_accounts.len() as f64 / self.per_account.len().max(1) as f64
    }

    /// Mean similarity of the window's members to the centroid when they joined.
    pub fn tightness(&self) -> f64 {
        if self.joins.is_empty() {
            0.0
        } else {
            self.similarity_sum / self.joins.len() as f64
        }
    }

    /// Share of the window's joins that pasted its commonest script (the whole fingerprint),
    /// counting a script only when at least `min_accounts` distinct accounts used it in the
    /// window: one script shared across accounts, not one account repeating itself, and not a
    /// handful of people who happen to type the same short request.
    pub fn duplication_rate(&self, min_accounts: usize) -> f64 {
        if self.per_account.len() < min_accounts {
            return 0.0;
        }
        TemplateUse::top_share(&self.per_script, self.joins.len(), min_accounts)
    }

    /// Band keys used in the window: (key, joins, accounts that used it).
    pub fn band_uses(&self) -> impl Iterator<Item = (u64, u32, impl Iterator<Item = u64> + '_)> {
        self.per_band
            .iter()
            .map(|(key, used)| (*key, used.joins, used.per_account.keys().copied()))
    }

    /// The same for templates: the share of joins on the commonest band key, so fills of one
    /// template with different slot values count together.
    pub fn template_share(&self, min_accounts: usize) -> f64 {
        if self.per_account.len() < min_accounts {
            return 0.0;
        }
        TemplateUse::top_share(&self.per_band, self.joins.len(), min_accounts)
    }

    pub fn first_time_ms(&self) -> Option<i64> {
        self.joins.front().map(|j| j.event_time_ms)
    }

    pub fn last_time_ms(&self) -> Option<i64> {
        self.joins.back().map(|j| j.event_time_ms)
    }
}

/// A fixed-size uniform sample of scrubbed summaries, for labels. Replacement decisions hash the
/// conversation key instead of drawing from an RNG, so replays keep the same sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reservoir {
    capacity: usize,
    items: Vec<ReservoirItem>,
    /// Bumped whenever `items` changes, so a label computed from them knows when it is stale.
    /// Not serialised: a restored state starts with an empty label memo.
    #[serde(skip)]
    revision: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReservoirItem {
    pub account_key: u64,
    pub request: String,
}

impl Reservoir {
    pub(crate) fn new(capacity: usize) -> Self {
        Reservoir {
            capacity,
            items: Vec::new(),
            revision: 0,
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
            self.revision += 1;
            return;
        }
        let slot = xxhash_rust::xxh3::xxh3_64(&conversation_key.to_le_bytes()) % seen.max(1);
        if let Some(existing) = self.items.get_mut(slot as usize) {
            *existing = item;
            self.revision += 1;
        }
    }

    pub fn items(&self) -> &[ReservoirItem] {
        &self.items
    }

    /// Changes whenever [`Self::items`] does.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Combines two samples of populations of `mine` and `theirs` members into one sample of
    /// the union: each side keeps a share of the slots proportional to its population.
    pub(crate) fn merge(&mut self, other: &Reservoir, mine: u64, theirs: u64) {
        let total = (mine + theirs).max(1);
        let from_other = ((self.capacity as u64 * theirs + total / 2) / total) as usize;
        let from_other = from_other.min(other.items.len());
        let keep = self
            .capacity
            .saturating_sub(from_other)
            .min(self.items.len());
        self.items.truncate(keep);
        self.items
            .extend(other.items.iter().take(self.capacity - keep).cloned());
        self.revision += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_window_counts_and_expires() {
        let mut r = RecentJoins::default();
        r.push(1000, 1, Some(10), 0.9, 7, true);
        r.push(3000, 2, None, 0.7, 7, false);
        r.push(2000, 1, Some(11), 0.8, 0, false);
        assert!((r.fresh_account_share() - 0.5).abs() < 1e-9);
        assert_eq!(r.distinct_orgs(), 2);
        assert_eq!(r.joins(), 3);
        assert_eq!(r.distinct_accounts(), 2);
        assert!((r.top_account_share() - 2.0 / 3.0).abs() < 1e-9);
        assert!((r.tightness() - 0.8).abs() < 1e-6);
        assert!((r.duplication_rate(2) - 2.0 / 3.0).abs() < 1e-9);
        assert_eq!(r.duplication_rate(3), 0.0);
        r.expire_before(2000);
        assert_eq!(r.duplication_rate(1), 1.0);
        assert!((r.tightness() - 0.7).abs() < 1e-6);
        assert_eq!(r.joins(), 1);
        assert_eq!(r.distinct_accounts(), 1);
        assert_eq!(r.first_time_ms(), Some(3000));
        assert_eq!(r.distinct_orgs(), 0);
    }

    #[test]
    fn decay_halves_per_half_life_and_merge_keeps_every_statistic() {
        use crate::cluster::state::tests::{meta, summary};
        let day = 86_400_000;
        let v = [1.0f32, 0.0];
        let mut a = MicroCluster::found(1, &meta("c1", "a1", 0), &summary("x"), &v, 100, 4, true);
        assert!((a.weight_at(day, day) - 0.5).abs() < 1e-9);
        assert!((a.weight_at(2 * day, day) - 0.25).abs() < 1e-9);
        a.absorb(&meta("c2", "a2", day), &summary("y"), &v, 0.9, day, true);
        assert!((a.weight_at(day, day) - 1.5).abs() < 1e-9);
        let w = [0.0f32, 1.0];
        let mut b =
            MicroCluster::found(2, &meta("c3", "a2", day), &summary("z"), &w, 100, 4, false);
        b.absorb(&meta("c4", "a3", day), &summary("z"), &w, 0.8, day, false);
        a.merge(&b, day);
        assert_eq!(a.count, 4);
        assert_eq!(a.accounts.count(), 3);
        assert_eq!(a.recent.joins(), 4);
        assert_eq!(a.born_ms, 0);
        assert!((a.weight_at(day, day) - 3.5).abs() < 1e-9);
        // The merged centroid leans to the heavier side: (0.5+1, 2) normalised.
        assert!(a.centroid[1] > a.centroid[0]);
        assert_eq!(a.reservoir.items().len(), 4);
        let bytes = postcard::to_stdvec(&a).unwrap();
        let back: MicroCluster = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back.count, 4);
        assert_eq!(back.centroid, a.centroid);
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
