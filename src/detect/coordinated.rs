//! The coordinated-cluster detector.
//!
//! Normal use is diffuse: a topic gathers accounts slowly and its members say different things.
//! A campaign is many distinct accounts saying nearly the same thing in a short time. The
//! detector reads only per-cluster statistics and judges a cluster on two time scales:
//! - **the sliding window** (`window_secs`, 10 minutes): distinct accounts in the window,
//!   accounts per minute, the busiest account's share, window growth against the cluster's own
//!   history, and how much of the window used one request template shared across accounts;
//! - **the slow scale**: a cluster established (five members) less than `slow_window_secs` ago
//!   is also judged over its whole life, which is how a campaign too slow to fill one window (a
//!   few accounts an hour) is seen. Age counts from establishment, not birth: a campaign that
//!   fills a cluster which held two stray requests for hours is still a new cluster. Only
//!   clusters established `warmup_secs` after the detector started qualify: at start-up every
//!   cluster is young because the process is, not because its topic is new. The slow scale
//!   takes throwaway (fresh) accounts on every route.
//!
//! On either scale a cluster is a candidate when
//! - volume: at least `min_window_accounts` distinct accounts, none holding more than
//!   `max_top_account_share` of the joins (one heavy user is not a campaign);
//! - novelty: growth of at least `min_growth` over what the cluster's own history predicts (a topic
//!   that is always this busy is not news);
//! - coordination, by either of two routes:
//!   - a script: at least `min_duplication` of the joins used one request template that
//!     `duplication_min_accounts` accounts shared — a message pasted by many accounts, even
//!     inside a busy organic topic where it leaves tightness alone;
//!   - a throwaway burst: at least `min_fresh_share` of the accounts are fresh (first seen within
//!     `cluster.fresh_account_secs`) and the cluster is no looser than usual for its size — a
//!     robust z-score of tightness (median/MAD over live clusters of similar size) of at least
//!     `min_tightness_z`. Spam networks and scripted misuse run on throwaway accounts. A wave of
//!     existing users asking for the weather is as tight as any campaign (it is one question;
//!     measured z above 5 in `eval detection`) but established and unscripted, so it is neither;
//! - and it passes the privacy gate, since an alert shows the cluster.
//!
//! Severity grows with accounts and speed: `critical` from `critical_accounts` window accounts
//! arriving at `critical_accounts_per_minute`, `info` for slow-scale-only campaigns, `warning`
//! otherwise. The [`AlertBook`](super::book::AlertBook) turns findings into alerts.

use std::collections::BTreeMap;

use super::book::{Finding, Subject, Timing};
use super::robust::RobustStats;
use crate::alert::{round4, AlertKind, AlertStats, ClusterEvidence, Severity};
use crate::cluster::{ClusterId, ClusterState, MicroCluster};
use crate::config::CoordinatedSettings;
use crate::privacy::PrivacyGate;

/// Clusters smaller than this are too noisy to describe "typical" tightness.
const POPULATION_MIN_COUNT: u64 = 5;
/// The population statistics are refreshed at most this often in event time.
const POPULATION_REFRESH_MS: i64 = 60_000;
/// Floor on the tightness scale so a very uniform population does not inflate z-scores.
const MIN_TIGHTNESS_SCALE: f64 = 0.02;
/// Hysteresis: an open alert stays while its z is within this of the entry threshold, its
/// duplication within this share of the entry one, and its window keeps this share of the entry
/// accounts. Without it a campaign whose figures hover at a threshold opens, withdraws and
/// reopens its alert with every member that joins.
const STAY_Z_MARGIN: f64 = 1.0;
const STAY_SHARE: f64 = 0.5;
const STAY_FRESH_MARGIN: f64 = 0.2;
/// A cluster looks for neighbouring bursts once its own window has this many accounts.
const NEIGHBOURHOOD_MIN_ACCOUNTS: usize = 3;
/// The slow scale judges a cluster only while its latest join is at most this many windows old.
const SLOW_ACTIVE_WINDOWS: i64 = 2;

/// Tightness of the live clusters, by size class (`floor(log2(count))`), refreshed each minute.
#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct Population {
    classes: BTreeMap<u32, Vec<f64>>,
    refreshed_ms: Option<i64>,
    /// [`Population::similar_to`]'s answers since the last refresh, by (size class, minimum).
    /// Between refreshes the classes do not change, and every cluster judged in that time asks
    /// again; sorting thousands of tightness values for each was a tenth of the cluster stage
    /// in `bench soak` profiles. Derived, so not saved: an empty memo is refilled on demand.
    #[serde(skip)]
    pooled: BTreeMap<(u32, usize), Option<RobustStats>>,
}

fn size_class(count: u64) -> u32 {
    63 - count.max(1).leading_zeros()
}

impl Population {
    fn refresh(&mut self, state: &ClusterState, now_ms: i64) {
        if self
            .refreshed_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < POPULATION_REFRESH_MS)
        {
            return;
        }
        self.classes.clear();
        self.pooled.clear();
        for c in state.clusters().filter(|c| c.count >= POPULATION_MIN_COUNT) {
            self.classes
                .entry(size_class(c.count))
                .or_default()
                .push(c.tightness());
        }
        self.refreshed_ms = Some(now_ms);
    }

    /// Robust statistics of the clusters of `count`'s size class, pooling the nearest classes
    /// until at least `min` clusters are in; `None` while the whole population is smaller.
    fn similar_to(&mut self, count: u64, min: usize) -> Option<RobustStats> {
        let centre = size_class(count.max(POPULATION_MIN_COUNT));
        if let Some(known) = self.pooled.get(&(centre, min)) {
            return *known;
        }
        let stats = self.pool(centre, min);
        self.pooled.insert((centre, min), stats);
        stats
    }

    fn pool(&self, centre: u32, min: usize) -> Option<RobustStats> {
        let mut pooled: Vec<f64> = Vec::new();
        let (mut lo, mut hi) = (centre, centre);
        pooled.extend(self.classes.get(&centre).into_iter().flatten());
        let max_class = self.classes.keys().next_back().copied().unwrap_or(0);
        let min_class = self.classes.keys().next().copied().unwrap_or(0);
        while pooled.len() < min.max(1) && (lo > min_class || hi < max_class) {
            if lo > min_class {
                lo -= 1;
                pooled.extend(self.classes.get(&lo).into_iter().flatten());
            }
            if hi < max_class {
                hi += 1;
                pooled.extend(self.classes.get(&hi).into_iter().flatten());
            }
        }
        if pooled.len() < min.max(1) {
            return None;
        }
        RobustStats::of(&pooled)
    }
}

/// The figures of one scale (window or whole life).
struct Scale {
    accounts: usize,
    conversations: usize,
    accounts_per_minute: f64,
    top_account_share: f64,
    /// Share of joins on one script (whole fingerprint) / one template (band key), each shared
    /// by at least `duplication_min_accounts` accounts.
    duplication: f64,
    template_share: f64,
    growth: f64,
    /// Share of the accounts that were fresh when they joined.
    fresh_share: f64,
    start_ms: i64,
    /// Clusters the figures cover.
    clusters: usize,
}

pub struct CoordinatedDetector {
    settings: CoordinatedSettings,
    gate: PrivacyGate,
    population: Population,
    /// Event time of the first evaluation (the slow scale's warm-up starts here).
    started_ms: Option<i64>,
}

/// What the coordinated detector remembers between events, for snapshots.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct CoordinatedMemory {
    population: Population,
    started_ms: Option<i64>,
}

impl CoordinatedDetector {
    pub fn memory(&self) -> CoordinatedMemory {
        CoordinatedMemory {
            population: self.population.clone(),
            started_ms: self.started_ms,
        }
    }

    pub fn restore(&mut self, memory: CoordinatedMemory) {
        self.population = memory.population;
        self.started_ms = memory.started_ms;
    }

    pub fn new(settings: CoordinatedSettings, gate: PrivacyGate) -> Self {
        CoordinatedDetector {
            settings,
            gate,
            population: Population::default(),
            started_ms: None,
        }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            hold_secs: self.settings.hold_secs,
            quiet_secs: self.settings.quiet_secs,
        }
    }

    /// Refreshes the tightness population (at most once a minute of event time).
    pub fn refresh(&mut self, state: &ClusterState, now_ms: i64) {
        self.started_ms.get_or_insert(now_ms);
        self.population.refresh(state, now_ms);
    }

    /// Judges cluster `id` at `now_ms`; `None` when it no longer exists.
    pub fn evaluate(
        &mut self,
        state: &mut ClusterState,
        id: ClusterId,
        now_ms: i64,
    ) -> Option<Finding> {
        let s = &self.settings;
        let window_ms = s.window_secs.max(1) * 1000;
        let cluster = state.cluster_mut(id)?;
        cluster.recent.expire_before(now_ms - window_ms);
        let mut window = window_scale(cluster, now_ms, window_ms, s.duplication_min_accounts);
        let mut subject = id;
        if window.accounts < s.min_window_accounts
            && window.accounts >= NEIGHBOURHOOD_MIN_ACCOUNTS
            && window.fresh_share >= s.min_fresh_share
        {
            if let Some((anchor, joint)) = self.neighbourhood(state, id, now_ms, window_ms) {
                subject = anchor;
                window = joint;
            }
        }
        let cluster: &MicroCluster = state.cluster(id)?;
        let warmed_up = self
            .started_ms
            .zip(cluster.established_ms)
            .is_some_and(|(t, established)| established >= t + s.warmup_secs * 1000);
        // ... and only while it is still being joined: a burst that ended must not stay "slow".
        let active = now_ms - cluster.last_seen_ms <= SLOW_ACTIVE_WINDOWS * window_ms;
        let slow = (s.slow_window_secs > 0
            && warmed_up
            && active
            && cluster
                .established_ms
                .is_some_and(|t| now_ms - t <= s.slow_window_secs * 1000))
        .then(|| lifetime_scale(cluster, &window, now_ms, s.duplication_min_accounts));

        let tightness = cluster.tightness();
        let tightness_z = self
            .population
            .similar_to(cluster.count, s.min_population)
            .map(|p| p.z(tightness, MIN_TIGHTNESS_SCALE));
        // A burst of throwaway accounts, no looser than is usual for its size.
        let throwaway = |margin: f64, fresh_share: f64| {
            fresh_share >= s.min_fresh_share - margin * STAY_FRESH_MARGIN
                && match tightness_z {
                    Some(z) => z >= s.min_tightness_z - margin,
                    None => tightness >= s.fallback_min_tightness - margin * MIN_TIGHTNESS_SCALE,
                }
        };
        // A burst of throwaway accounts filling in one template, however loose the slot values
        // make the cluster. Established accounts need the stricter script route: organic
        // phrasings of one intent ("add milk to my shopping list") share template keys too.
        let templated = |scale: &Scale, share: f64, margin: f64| {
            scale.fresh_share >= s.min_fresh_share - margin * STAY_FRESH_MARGIN
                && scale.template_share >= s.min_duplication * share
        };
        let shown = self.gate.admits(cluster);
        // Over hours, established users asking one common question add up to a script-like
        // cluster by popularity alone (measured: 20 accounts from 19 orgs, one request, over
        // five hours). So the slow scale takes throwaway accounts on every route.
        let holds = |scale: &Scale, share: f64, z_margin: f64, slow: bool| {
            let fresh = scale.fresh_share >= s.min_fresh_share - z_margin * STAY_FRESH_MARGIN;
            shown
                && scale.accounts as f64 >= s.min_window_accounts as f64 * share
                && scale.top_account_share <= s.max_top_account_share
                && scale.growth >= s.min_growth * share
                && (throwaway(z_margin, scale.fresh_share)
                    || templated(scale, share, z_margin)
                    || (scale.duplication >= s.min_duplication * share && (fresh || !slow)))
        };
        if window.accounts >= s.min_window_accounts / 2 {
            // Operators tuning thresholds read these at trace level; figures only, no members.
            tracing::trace!(
                target: "clusterwatch::detect::figures",
                cluster = id,
                at_ms = now_ms,
                accounts = window.accounts,
                joins = window.conversations,
                growth = window.growth,
                top_share = window.top_account_share,
                fresh_share = window.fresh_share,
                duplication = window.duplication,
                template_share = window.template_share,
                tightness,
                z = tightness_z.unwrap_or(f64::NAN),
                shown,
                "window figures"
            );
        }
        let window_enter = holds(&window, 1.0, 0.0, false);
        let slow_enter = slow.as_ref().is_some_and(|l| holds(l, 1.0, 0.0, true));
        let window_stay = holds(&window, STAY_SHARE, STAY_Z_MARGIN, false);
        let slow_stay = slow
            .as_ref()
            .is_some_and(|l| holds(l, STAY_SHARE, STAY_Z_MARGIN, true));

        // The evidence describes the scale that holds, the window when both do.
        let shown_scale = if window_enter || window_stay || slow.is_none() {
            &window
        } else {
            slow.as_ref().unwrap_or(&window)
        };
        let severity = if window_enter || window_stay {
            if window.accounts >= s.critical_accounts
                && window.accounts_per_minute >= s.critical_accounts_per_minute
            {
                Severity::Critical
            } else {
                Severity::Warning
            }
        } else {
            Severity::Info
        };
        let surface = cluster
            .surfaces
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(s, _)| s.clone());
        Some(Finding {
            kind: AlertKind::CoordinatedCluster,
            subject: Subject::Cluster(subject),
            enter: window_enter || slow_enter,
            stay: window_stay || slow_stay,
            severity,
            surface,
            window_start_ms: shown_scale.start_ms,
            stats: AlertStats::Cluster(evidence(
                cluster,
                shown_scale,
                tightness,
                tightness_z.unwrap_or(0.0),
            )),
        })
    }
}

impl CoordinatedDetector {
    /// The window figures of `id` together with its neighbours that are bursts of fresh accounts
    /// too (centroid cosine at least `neighbourhood_cosine`, joined within the window), and the
    /// lowest id among them — the anchor an alert on the group is filed under, so the group
    /// pages once. `None` when `id` has no such neighbour.
    fn neighbourhood(
        &self,
        state: &mut ClusterState,
        id: ClusterId,
        now_ms: i64,
        window_ms: i64,
    ) -> Option<(ClusterId, Scale)> {
        let s = &self.settings;
        let centroid = state.cluster(id)?.centroid.clone();
        let candidates: Vec<ClusterId> = state
            .clusters()
            .filter(|c| {
                c.id != id
                    && c.last_seen_ms >= now_ms - window_ms
                    && crate::cluster::index::dot(&c.centroid, &centroid) >= s.neighbourhood_cosine
            })
            .map(|c| c.id)
            .collect();
        // Neighbours with two or more accounts join the group outright. Single-account ones (a
        // template's rarer fills) join only if the group then shares one template across
        // `duplication_min_accounts` accounts: that evidence cannot come from stray neighbours.
        let mut members = vec![id];
        let mut singles = Vec::new();
        for other in candidates {
            let Some(c) = state.cluster_mut(other) else {
                continue;
            };
            c.recent.expire_before(now_ms - window_ms);
            if c.recent.fresh_account_share() >= s.min_fresh_share {
                match c.recent.distinct_accounts() {
                    0 => {}
                    1 => singles.push(other),
                    _ => members.push(other),
                }
            }
        }
        let mut with_singles = members.clone();
        with_singles.extend(&singles);
        let (share, joins_with_singles) = joint_template_share(state, &with_singles, s);
        let template_share = if share > 0.0 {
            members = with_singles;
            share
        } else {
            0.0
        };
        debug_assert!(share == 0.0 || joins_with_singles > 0);
        if members.len() < 2 {
            return None;
        }
        members.sort_unstable();
        let mut accounts: std::collections::HashMap<u64, u32> = Default::default();
        let mut fresh: std::collections::HashSet<u64> = Default::default();
        let (mut joins, mut expected) = (0usize, 0.0f64);
        let (mut first, mut last) = (i64::MAX, i64::MIN);
        for m in &members {
            let c = state.cluster(*m)?;
            for (a, n) in c.recent.account_counts() {
                *accounts.entry(a).or_default() += n;
            }
            fresh.extend(c.recent.fresh_account_keys());
            let scale = window_scale(c, now_ms, window_ms, usize::MAX);
            joins += scale.conversations;
            expected += scale.conversations as f64 / scale.growth.max(f64::MIN_POSITIVE);
            first = first.min(c.recent.first_time_ms().unwrap_or(now_ms));
            last = last.max(c.recent.last_time_ms().unwrap_or(now_ms));
        }
        let top = accounts.values().copied().max().unwrap_or(0);
        Some((
            members[0],
            Scale {
                accounts: accounts.len(),
                conversations: joins,
                accounts_per_minute: accounts.len() as f64 / span_minutes(first, last),
                top_account_share: f64::from(top) / joins.max(1) as f64,
                duplication: 0.0,
                template_share,
                growth: joins as f64 / expected.max(1.0),
                fresh_share: fresh.len() as f64 / accounts.len().max(1) as f64,
                start_ms: first,
                clusters: members.len(),
            },
        ))
    }
}

/// The share of the group's window joins on its commonest template (band key), counting a key
/// only when `duplication_min_accounts` distinct accounts across the group used it; with the
/// group's window joins.
fn joint_template_share(
    state: &ClusterState,
    group: &[ClusterId],
    s: &CoordinatedSettings,
) -> (f64, usize) {
    let mut keys: std::collections::HashMap<u64, (u32, std::collections::HashSet<u64>)> =
        Default::default();
    let mut joins = 0usize;
    for c in group.iter().filter_map(|id| state.cluster(*id)) {
        joins += c.recent.joins();
        for (key, n, accounts) in c.recent.band_uses() {
            let entry = keys.entry(key).or_default();
            entry.0 += n;
            entry.1.extend(accounts);
        }
    }
    let top = keys
        .values()
        .filter(|(_, accounts)| accounts.len() >= s.duplication_min_accounts)
        .map(|(n, _)| *n)
        .max()
        .unwrap_or(0);
    (f64::from(top) / joins.max(1) as f64, joins)
}

fn window_scale(cluster: &MicroCluster, now_ms: i64, window_ms: i64, dup_accounts: usize) -> Scale {
    let recent = &cluster.recent;
    let first = recent.first_time_ms().unwrap_or(now_ms);
    let last = recent.last_time_ms().unwrap_or(now_ms);
    let joins = recent.joins();
    // What the cluster's history before the window predicts for one window.
    let before = cluster.count.saturating_sub(joins as u64) as f64;
    let history_windows = ((first - cluster.born_ms) as f64 / window_ms as f64).max(1.0);
    let expected = (before / history_windows).max(1.0);
    Scale {
        accounts: recent.distinct_accounts(),
        conversations: joins,
        accounts_per_minute: recent.distinct_accounts() as f64 / span_minutes(first, last),
        top_account_share: recent.top_account_share(),
        duplication: recent.duplication_rate(dup_accounts),
        template_share: recent.template_share(dup_accounts),
        growth: joins as f64 / expected,
        fresh_share: recent.fresh_account_share(),
        clusters: 1,
        start_ms: first,
    }
}

/// The whole life of a young cluster as one window, from when it was established (the few
/// members before that are counted too). Its growth is its size: it had no history.
fn lifetime_scale(
    cluster: &MicroCluster,
    window: &Scale,
    now_ms: i64,
    dup_accounts: usize,
) -> Scale {
    let accounts = cluster.accounts.count();
    let start_ms = cluster.established_ms.unwrap_or(cluster.born_ms);
    Scale {
        accounts,
        conversations: cluster.count as usize,
        accounts_per_minute: accounts as f64
            / span_minutes(start_ms, cluster.last_seen_ms.max(now_ms)),
        // Per-account counts are kept for the window only: its busiest account stands in (one
        // heavy user dominates every window it is active in).
        top_account_share: window.top_account_share,
        duplication: cluster.scripts.duplication_rate(dup_accounts),
        template_share: cluster.templates.duplication_rate(dup_accounts),
        growth: cluster.count as f64,
        // By joins, not accounts: a fresh account's later joins count as fresh too.
        fresh_share: cluster.fresh_joins as f64 / cluster.count.max(1) as f64,
        clusters: 1,
        start_ms,
    }
}

/// A burst inside one minute still counts as one minute, so rates stay finite.
fn span_minutes(first_ms: i64, last_ms: i64) -> f64 {
    ((last_ms - first_ms) as f64 / 60_000.0).max(1.0)
}

fn evidence(cluster: &MicroCluster, scale: &Scale, tightness: f64, z: f64) -> ClusterEvidence {
    ClusterEvidence {
        conversations: cluster.count,
        accounts: cluster.accounts.count(),
        orgs: cluster.orgs.count(),
        window_conversations: scale.conversations,
        window_accounts: scale.accounts,
        accounts_per_minute: round4(scale.accounts_per_minute),
        tightness: round4(tightness),
        tightness_z: round4(z),
        duplication_rate: round4(scale.duplication),
        template_share: round4(scale.template_share.max(scale.duplication)),
        growth: round4(scale.growth),
        top_account_share: round4(scale.top_account_share),
        fresh_account_share: round4(scale.fresh_share),
        clusters: scale.clusters,
        refusal_rate: round4(cluster.refusal_rate()),
        mean_concern: round4(cluster.mean_concern()),
        classifier_flag_rate: round4(cluster.classifier_flag_rate()),
        surfaces: cluster.surfaces.clone(),
        languages: cluster.languages.clone(),
    }
}

/// Cluster evidence for the other cluster-level detectors (no window figures of their own).
pub(crate) fn cluster_evidence(cluster: &MicroCluster) -> ClusterEvidence {
    let scale = window_scale(cluster, cluster.last_seen_ms, i64::MAX / 4, usize::MAX);
    evidence(cluster, &scale, cluster.tightness(), 0.0)
}

#[cfg(test)]
mod tests {
    use crate::alert::{AlertKind, AlertRecord, AlertStatus, Severity};
    use crate::cluster::ClusterState;
    use crate::config::{ClusterSettings, DetectSettings, PrivacySettings};
    use crate::detect::{Detectors, Observed};
    use crate::embed::{hashing::HashingEmbedder, Embedder};
    use crate::event::{identity_key, EventMeta};
    use crate::privacy::PrivacyGate;
    use crate::summarize::Summary;

    struct World {
        state: ClusterState,
        detector: Detectors,
        embedder: HashingEmbedder,
        records: Vec<AlertRecord>,
        n: u64,
    }

    impl World {
        fn new() -> Self {
            let embedder = HashingEmbedder::new(512);
            World {
                state: ClusterState::new(
                    ClusterSettings {
                        join_threshold: 0.3,
                        ..Default::default()
                    },
                    512,
                    embedder.id(),
                ),
                detector: Detectors::new(
                    &DetectSettings::default(),
                    PrivacyGate::new(PrivacySettings::default()),
                )
                .unwrap(),
                embedder,
                records: Vec::new(),
                n: 0,
            }
        }

        fn send(&mut self, account: &str, text: &str, t_secs: i64) {
            self.n += 1;
            let conv = format!("c{}", self.n);
            let meta = EventMeta {
                conversation_id: conv.clone(),
                conversation_key: identity_key("conversation", &conv),
                account_key: identity_key("account", account),
                org_key: None,
                event_time_ms: t_secs * 1000,
                surface: "chat".into(),
                classifier_flagged: false,
                template: 0,
                restricted_account: None,
            };
            let summary = Summary {
                request: text.into(),
                task: "other".into(),
                language: "en".into(),
                concern: 1,
                refused: false,
            };
            let v = self.embedder.embed_batch(&[text.to_string()]).unwrap();
            let a = self.state.assign(0, &meta, &summary, &v[0]).unwrap();
            let clock = self.state.clock_ms();
            let observed = a.cluster_id().map(|cluster| Observed {
                cluster,
                surface: "chat",
                event_time_ms: meta.event_time_ms,
                concern: 1,
                refused: false,
            });
            self.records
                .extend(self.detector.observe(&mut self.state, observed, clock));
        }

        /// Diffuse organic traffic: 300 topics, each message 3 of its topic's 4 words plus two
        /// random filler words, from 900 accounts.
        fn organic(&mut self, from_secs: i64, to_secs: i64, every_secs: i64) {
            use rand::seq::SliceRandom;
            use rand::{Rng, SeedableRng};
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(from_secs as u64);
            let mut t = from_secs;
            while t < to_secs {
                let topic = rng.gen_range(0..300);
                let words: Vec<String> = (0..4).map(|k| format!("t{topic}w{k}")).collect();
                let mut text: Vec<String> = words.choose_multiple(&mut rng, 3).cloned().collect();
                for _ in 0..2 {
                    text.push(format!("filler{}", rng.gen_range(0..2000)));
                }
                let account = format!("organic-{}", rng.gen_range(0..900));
                self.send(&account, &text.join(" "), t);
                t += every_secs;
            }
        }

        fn firing(&self) -> usize {
            self.records
                .iter()
                .filter(|r| r.status == AlertStatus::Firing)
                .count()
        }
    }

    #[test]
    fn pooled_statistics_are_remembered_until_the_next_refresh_and_not_saved() {
        let mut population = super::Population::default();
        population.classes.insert(2, vec![0.5, 0.6, 0.7]);
        population.classes.insert(3, vec![0.1, 0.9]);
        population.classes.insert(6, vec![0.3; 5]);
        for count in [1, 5, 9, 40, 100, 1 << 20] {
            for min in [1, 3, 6, 11] {
                let fresh = population.pool(super::size_class(count.max(5)), min);
                assert_eq!(
                    population.similar_to(count, min),
                    fresh,
                    "count {count} min {min}"
                );
                assert_eq!(population.similar_to(count, min), fresh, "remembered");
            }
        }
        assert!(!population.pooled.is_empty());
        let saved = postcard::to_allocvec(&population).unwrap();
        let loaded: super::Population = postcard::from_bytes(&saved).unwrap();
        assert!(loaded.pooled.is_empty(), "the memo is derived, not saved");
        assert_eq!(loaded.classes, population.classes);

        let mut world = World::new();
        world.organic(0, 600, 30);
        population.refresh(&world.state, 10_000_000);
        assert!(population.pooled.is_empty(), "a refresh forgets the memo");
    }

    #[test]
    fn a_campaign_of_fresh_accounts_fires_once_and_resolves_after_quiet_time() {
        let mut w = World::new();
        w.organic(0, 3600, 2);
        assert_eq!(w.firing(), 0, "organic traffic is diffuse");
        // 40 accounts, 2 messages each, within 4 minutes.
        for i in 0..80 {
            w.send(
                &format!("fresh-{}", i % 40),
                "claim your free camcorder now reply or call for delivery",
                3600 + i * 3,
            );
        }
        w.organic(3840, 3840 + 3600, 2);
        let statuses: Vec<AlertStatus> = w.records.iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            vec![
                AlertStatus::Pending,
                AlertStatus::Firing,
                AlertStatus::Resolved
            ],
            "{:#?}",
            w.records
        );
        let firing = &w.records[1];
        assert_eq!(firing.kind, AlertKind::CoordinatedCluster);
        assert!(firing.stats.cluster().unwrap().window_accounts >= 25);
        assert!(firing.stats.cluster().unwrap().tightness > 0.9);
        assert_eq!(firing.severity, Severity::Warning);
        assert_eq!(
            firing.alert_id, w.records[2].alert_id,
            "one alert id across its lifecycle"
        );
        assert!(!firing.label.is_empty());
    }

    #[test]
    fn one_heavy_account_is_not_a_campaign() {
        let mut w = World::new();
        w.organic(0, 3600, 2);
        for i in 0..200 {
            // 190 from one account, a few others join in.
            let account = if i % 20 == 0 {
                format!("other-{i}")
            } else {
                "heavy".into()
            };
            w.send(
                &account,
                "claim your free camcorder now reply or call for delivery",
                3600 + i,
            );
        }
        assert_eq!(w.firing(), 0, "{:#?}", w.records);
    }

    #[test]
    fn the_same_request_spread_over_days_is_not_a_campaign() {
        let mut w = World::new();
        w.organic(0, 3600, 2);
        // 60 accounts, one every 20 minutes: never 20 in a 10-minute window.
        for i in 0..60 {
            w.send(
                &format!("slow-{i}"),
                "what is the weather like today",
                3600 + i * 1200,
            );
        }
        assert_eq!(w.firing(), 0, "{:#?}", w.records);
    }

    #[test]
    fn a_cluster_below_the_privacy_gate_never_alerts() {
        let mut w = World::new();
        w.organic(0, 3600, 2);
        // 24 accounts x 3 messages: enough in the window, but under min_accounts = 25.
        for i in 0..72 {
            w.send(
                &format!("few-{}", i % 24),
                "buy cheap followers here now",
                3600 + i * 2,
            );
        }
        assert_eq!(w.firing(), 0, "{:#?}", w.records);
        assert!(w.records.is_empty(), "not even pending below the gate");
    }
}
