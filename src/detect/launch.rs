//! The launch monitor: what a newly launched surface (say `computer_use`) is used for, against
//! what it was used for before, or against everything else when it has no history.
//!
//! For each configured surface it keeps, in event time:
//! - the surface's own baseline: its topic mix, high-concern and refusal counts over
//!   `baseline_secs` before launch, frozen at launch;
//! - two sliding windows after launch, in `bucket_secs` buckets: the surface's traffic over
//!   `window_secs`, and the rest of the traffic over the longer `rest_window_secs` (so one burst
//!   on another surface does not read as drift on this one).
//!
//! Two kinds of alert come out of it:
//! - `launch_drift`: the surface's recent topic mix diverges from the baseline (Jensen–Shannon,
//!   bits) by more than sampling noise explains, or its high-concern or refusal rate rose by
//!   `min_rate_increase`. Two finite samples of one distribution diverge too: for K categories
//!   and N₁, N₂ samples the expected JS is about (K−1)(1/N₁ + 1/N₂)/(8 ln 2), so the threshold
//!   applies to the divergence above that floor, and a quiet surface does not alert on noise.
//! - `launch_new_cluster`: a cluster born after launch whose conversations come mostly
//!   (`min_surface_share`) from the surface, once it passes the privacy gate — a use that did not
//!   exist before.
//!
//! Topics are the hierarchy's current topic ids, looked up when a mix is judged (a cluster not
//! yet in a topic counts as its own category), so the mix is over "what people ask for", not over individual micro-clusters.
//! Memory is bounded by the buckets of one window and the categories seen in it.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::book::{Finding, Subject, Timing};
use super::coordinated::cluster_evidence;
use crate::alert::{format_event_time, round4, AlertKind, AlertStats, Severity, SurfaceEvidence};
use crate::cluster::{ClusterId, ClusterState};
use crate::config::LaunchSettings;
use crate::privacy::PrivacyGate;

/// Concern scores from here up count as "high concern" in the rates.
pub const HIGH_CONCERN: u8 = 3;
/// Hysteresis: an open alert stays while its figures are at least this share of the entry ones.
const STAY_SHARE: f64 = 0.5;
/// A new cluster's alert stays while its surface share is within this of the entry share.
const STAY_SURFACE_MARGIN: f64 = 0.1;

/// A topic-mix category.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
enum Category {
    Topic(u64),
    Cluster(ClusterId),
}

/// Counts of one stretch of traffic.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Mix {
    #[serde(with = "category_pairs")]
    categories: HashMap<Category, u64>,
    conversations: u64,
    high_concern: u64,
    refused: u64,
}

impl Mix {
    fn add(&mut self, category: Category, concern: u8, refused: bool) {
        *self.categories.entry(category).or_default() += 1;
        self.conversations += 1;
        self.high_concern += u64::from(concern >= HIGH_CONCERN);
        self.refused += u64::from(refused);
    }

    fn absorb(&mut self, other: &Mix) {
        for (c, n) in &other.categories {
            *self.categories.entry(*c).or_default() += n;
        }
        self.conversations += other.conversations;
        self.high_concern += other.high_concern;
        self.refused += other.refused;
    }

    /// The same counts over the hierarchy's current topics (a cluster in no topic stays itself).
    fn by_topic(&self, state: &ClusterState) -> Mix {
        let mut m = Mix {
            categories: HashMap::new(),
            ..self.clone()
        };
        for (c, n) in &self.categories {
            let category = match c {
                Category::Cluster(id) => state.topic_of(*id).map_or(*c, Category::Topic),
                Category::Topic(_) => *c,
            };
            *m.categories.entry(category).or_default() += n;
        }
        m
    }

    fn rate(n: u64, of: u64) -> f64 {
        n as f64 / of.max(1) as f64
    }
}

/// Category counts as a sorted list of pairs: JSON map keys must be strings, and a sorted list
/// makes the snapshot's bytes independent of hash order.
mod category_pairs {
    use super::Category;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::HashMap;

    pub fn serialize<S: Serializer>(map: &HashMap<Category, u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut pairs: Vec<(&Category, &u64)> = map.iter().collect();
        pairs.sort_unstable();
        pairs.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<HashMap<Category, u64>, D::Error> {
        Ok(Vec::<(Category, u64)>::deserialize(d)?
            .into_iter()
            .collect())
    }
}

/// A sliding window of mixes in fixed buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    buckets: VecDeque<(i64, Mix)>,
}

impl Window {
    fn add(&mut self, at_ms: i64, bucket_ms: i64, category: Category, concern: u8, refused: bool) {
        let start = at_ms - at_ms.rem_euclid(bucket_ms);
        let pos = self.buckets.partition_point(|(s, _)| *s < start);
        if !matches!(self.buckets.get(pos), Some((s, _)) if *s == start) {
            self.buckets.insert(pos, (start, Mix::default()));
        }
        self.buckets[pos].1.add(category, concern, refused);
    }

    fn expire(&mut self, before_ms: i64) {
        while matches!(self.buckets.front(), Some((s, _)) if *s < before_ms) {
            self.buckets.pop_front();
        }
    }

    fn total(&self) -> Mix {
        let mut m = Mix::default();
        for (_, b) in &self.buckets {
            m.absorb(b);
        }
        m
    }
}

/// One watched surface; also what a snapshot keeps of it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Watch {
    name: String,
    launch_ms: i64,
    launch_time: String,
    baseline: Mix,
    own: Window,
    rest: Window,
    next_evaluation_ms: i64,
    /// The figures of the latest drift evaluation, for the gauges.
    latest: Option<SurfaceEvidence>,
}

/// Jensen–Shannon divergence in bits between two count vectors over the union of categories.
fn js_divergence(p: &Mix, q: &Mix) -> f64 {
    let (np, nq) = (p.conversations.max(1) as f64, q.conversations.max(1) as f64);
    let mut keys: Vec<&Category> = p.categories.keys().chain(q.categories.keys()).collect();
    keys.sort_unstable();
    keys.dedup();
    let mut js = 0.0;
    for k in keys {
        let a = *p.categories.get(k).unwrap_or(&0) as f64 / np;
        let b = *q.categories.get(k).unwrap_or(&0) as f64 / nq;
        let m = (a + b) / 2.0;
        if a > 0.0 {
            js += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            js += 0.5 * b * (b / m).log2();
        }
    }
    js.clamp(0.0, 1.0)
}

/// Draws for the noise floor.
const NULL_DRAWS: usize = 5;

/// The divergence a sample of `n` conversations drawn from `baseline` itself shows against it:
/// the mean over a few seeded draws (a parametric bootstrap). Sparse mixes — many topics, few
/// conversations each — diverge a lot by chance alone, far more than the asymptotic
/// (K−1)(1/N₁+1/N₂)/(8 ln 2), so the floor is measured rather than assumed. The seed comes from
/// the evaluation time, so a replay draws the same samples.
fn js_noise_floor(baseline: &Mix, n: u64, seed: u64) -> f64 {
    use rand::{Rng, SeedableRng};
    let mut categories: Vec<(&Category, &u64)> = baseline.categories.iter().collect();
    categories.sort_unstable();
    let mut cumulative = Vec::with_capacity(categories.len());
    let mut acc = 0u64;
    for (_, count) in &categories {
        acc += **count;
        cumulative.push(acc);
    }
    if acc == 0 || n == 0 {
        return 0.0;
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut total = 0.0;
    for _ in 0..NULL_DRAWS {
        let mut sample = Mix::default();
        for _ in 0..n {
            let x = rng.gen_range(0..acc);
            let i = cumulative.partition_point(|c| *c <= x);
            sample.add(*categories[i].0, 1, false);
        }
        total += js_divergence(&sample, baseline);
    }
    total / NULL_DRAWS as f64
}

pub struct LaunchMonitor {
    settings: LaunchSettings,
    gate: PrivacyGate,
    watches: Vec<Watch>,
}

impl LaunchMonitor {
    /// Fails on a launch time that is not RFC 3339.
    pub fn new(settings: LaunchSettings, gate: PrivacyGate) -> anyhow::Result<Self> {
        let mut watches = Vec::new();
        for surface in &settings.surfaces {
            let launch =
                chrono::DateTime::parse_from_rfc3339(&surface.launch_time).map_err(|e| {
                    anyhow::anyhow!(
                    "detect.launch.surfaces: launch_time {:?} of surface {:?} is not RFC 3339: {e}",
                    surface.launch_time,
                    surface.name
                )
                })?;
            if surface.name.is_empty() {
                anyhow::bail!("detect.launch.surfaces: a surface has an empty name");
            }
            watches.push(Watch {
                name: surface.name.clone(),
                launch_ms: launch.timestamp_millis(),
                launch_time: format_event_time(launch.timestamp_millis()),
                baseline: Mix::default(),
                own: Window::default(),
                rest: Window::default(),
                next_evaluation_ms: i64::MIN,
                latest: None,
            });
        }
        Ok(LaunchMonitor {
            settings,
            gate,
            watches,
        })
    }

    /// What the monitor remembers between events, for snapshots.
    pub fn memory(&self) -> Vec<Watch> {
        self.watches.clone()
    }

    /// Takes back the windows of the surfaces a snapshot watched. A surface whose launch time
    /// changed in the config since starts afresh; one no longer configured is dropped.
    pub fn restore(&mut self, remembered: Vec<Watch>) {
        for old in remembered {
            if let Some(w) = self
                .watches
                .iter_mut()
                .find(|w| w.name == old.name && w.launch_ms == old.launch_ms)
            {
                *w = old;
            }
        }
    }

    /// Each watched surface's latest drift figures (none before its first evaluation).
    pub fn latest(&self) -> impl Iterator<Item = (&str, &SurfaceEvidence)> + '_ {
        self.watches
            .iter()
            .filter_map(|w| w.latest.as_ref().map(|e| (w.name.as_str(), e)))
    }

    pub fn is_active(&self) -> bool {
        !self.watches.is_empty()
    }

    pub fn timing(&self) -> Timing {
        Timing {
            hold_secs: self.settings.hold_secs,
            quiet_secs: self.settings.quiet_secs,
        }
    }

    /// Counts one clustered event into every watch.
    pub fn record(
        &mut self,
        cluster: ClusterId,
        surface: &str,
        at_ms: i64,
        concern: u8,
        refused: bool,
    ) {
        if self.watches.is_empty() {
            return;
        }
        // Topics are looked up when the mix is judged, not now: topic ids appear with each
        // hierarchy rebuild, and both sides of a comparison must use the same map.
        let category = Category::Cluster(cluster);
        let bucket_ms = self.settings.bucket_secs.max(1) * 1000;
        let baseline_ms = self.settings.baseline_secs.max(0) * 1000;
        for w in &mut self.watches {
            if surface != w.name {
                // The rest of the traffic, before launch too, so the comparison window is full.
                w.rest.add(at_ms, bucket_ms, category, concern, refused);
            } else if at_ms < w.launch_ms {
                if at_ms >= w.launch_ms - baseline_ms {
                    w.baseline.add(category, concern, refused);
                }
            } else {
                w.own.add(at_ms, bucket_ms, category, concern, refused);
            }
        }
        if let Some(latest) = self.watches.first().and_then(|w| w.rest.buckets.back()) {
            // Keep memory to the rest window even while no evaluation is due (before launch).
            let horizon = latest.0
                - self
                    .settings
                    .rest_window_secs
                    .max(self.settings.window_secs)
                    * 1000;
            for w in &mut self.watches {
                w.rest.expire(horizon);
            }
        }
    }

    /// Surfaces whose drift is due for evaluation at `now_ms` (at most once per
    /// `evaluate_every_secs` each).
    pub fn due_surfaces(&mut self, now_ms: i64) -> Vec<String> {
        let every = self.settings.evaluate_every_secs.max(1) * 1000;
        let mut due = Vec::new();
        for w in &mut self.watches {
            if now_ms >= w.launch_ms && now_ms >= w.next_evaluation_ms {
                w.next_evaluation_ms = now_ms + every;
                due.push(w.name.clone());
            }
        }
        due
    }

    /// The drift verdict on `surface` at `now_ms`; `None` when it is not watched.
    pub fn evaluate_drift(
        &mut self,
        state: &ClusterState,
        surface: &str,
        now_ms: i64,
    ) -> Option<Finding> {
        let s = &self.settings;
        let window_ms = s.window_secs.max(1) * 1000;
        let w = self.watches.iter_mut().find(|w| w.name == surface)?;
        w.own.expire(now_ms - window_ms);
        w.rest
            .expire(now_ms - s.rest_window_secs.max(s.window_secs).max(1) * 1000);
        let own = w.own.total().by_topic(state);
        let (baseline, kind) = if w.baseline.conversations >= s.min_baseline_conversations {
            (w.baseline.by_topic(state), "own")
        } else {
            (w.rest.total().by_topic(state), "rest")
        };
        let judged = own.conversations >= s.min_window_conversations && baseline.conversations > 0;
        let js = if judged {
            js_divergence(&own, &baseline)
        } else {
            0.0
        };
        let excess = if judged {
            js - js_noise_floor(&baseline, own.conversations, now_ms as u64)
        } else {
            0.0
        };
        let concern = Mix::rate(own.high_concern, own.conversations);
        let base_concern = Mix::rate(baseline.high_concern, baseline.conversations);
        let refusal = Mix::rate(own.refused, own.conversations);
        let base_refusal = Mix::rate(baseline.refused, baseline.conversations);
        let holds = |share: f64| {
            judged
                && (excess >= s.min_excess_divergence * share
                    || concern - base_concern >= s.min_rate_increase * share
                    || refusal - base_refusal >= s.min_rate_increase * share)
        };
        let launch_ms = w.launch_ms;
        let new_clusters = state
            .clusters()
            .filter(|c| self.is_surface_cluster(c, surface, launch_ms, now_ms, 0.0))
            .count() as u64;
        let w = self.watches.iter_mut().find(|w| w.name == surface)?;
        let evidence = SurfaceEvidence {
            launch_time: w.launch_time.clone(),
            baseline: kind.to_string(),
            window_conversations: own.conversations,
            baseline_conversations: baseline.conversations,
            js_divergence: round4(js),
            concern_rate: round4(concern),
            baseline_concern_rate: round4(base_concern),
            refusal_rate: round4(refusal),
            baseline_refusal_rate: round4(base_refusal),
            new_clusters,
        };
        w.latest = Some(evidence.clone());
        Some(Finding {
            kind: AlertKind::LaunchDrift,
            subject: Subject::Surface(surface.to_string()),
            enter: holds(1.0),
            stay: holds(STAY_SHARE),
            severity: if concern - base_concern >= s.min_rate_increase {
                Severity::Warning
            } else {
                Severity::Info
            },
            surface: Some(surface.to_string()),
            window_start_ms: (now_ms - window_ms).max(launch_ms),
            stats: AlertStats::Surface(evidence),
        })
    }

    /// The new-cluster verdict on cluster `id` for every watched surface it could belong to.
    pub fn evaluate_cluster(
        &self,
        state: &ClusterState,
        id: ClusterId,
        now_ms: i64,
    ) -> Option<Finding> {
        let cluster = state.cluster(id)?;
        // The surface with most of the cluster's conversations among the watched ones.
        let (surface, launch_ms) = self
            .watches
            .iter()
            .map(|w| (w, cluster.surfaces.get(&w.name).copied().unwrap_or(0)))
            .filter(|(_, n)| *n > 0)
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.name.cmp(&a.0.name)))
            .map(|(w, _)| (w.name.clone(), w.launch_ms))?;
        let enter = self.is_surface_cluster(cluster, &surface, launch_ms, now_ms, 0.0);
        let stay =
            self.is_surface_cluster(cluster, &surface, launch_ms, now_ms, STAY_SURFACE_MARGIN);
        let severity = if cluster.mean_concern() >= f64::from(HIGH_CONCERN) {
            Severity::Warning
        } else {
            Severity::Info
        };
        Some(Finding {
            kind: AlertKind::LaunchNewCluster,
            subject: Subject::Cluster(id),
            enter,
            stay,
            severity,
            surface: Some(surface),
            window_start_ms: cluster.born_ms,
            stats: AlertStats::Cluster(cluster_evidence(cluster)),
        })
    }

    /// Born on or after launch, still new, still active, mostly from `surface`, and shown.
    fn is_surface_cluster(
        &self,
        cluster: &crate::cluster::MicroCluster,
        surface: &str,
        launch_ms: i64,
        now_ms: i64,
        margin: f64,
    ) -> bool {
        let s = &self.settings;
        let share = cluster.surfaces.get(surface).copied().unwrap_or(0) as f64
            / cluster.count.max(1) as f64;
        cluster.born_ms >= launch_ms
            && now_ms - cluster.born_ms <= s.new_cluster_secs * 1000
            && now_ms - cluster.last_seen_ms <= s.window_secs * 1000
            && share >= s.min_surface_share - margin
            && self.gate.admits(cluster)
    }

    /// Watched surfaces and their launch times, for logs.
    pub fn surfaces(&self) -> BTreeMap<String, String> {
        self.watches
            .iter()
            .map(|w| (w.name.clone(), w.launch_time.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(counts: &[(u64, u64)]) -> Mix {
        let mut m = Mix::default();
        for (topic, n) in counts {
            for _ in 0..*n {
                m.add(Category::Topic(*topic), 1, false);
            }
        }
        m
    }

    #[test]
    fn js_divergence_is_zero_for_equal_mixes_and_one_for_disjoint() {
        let a = mix(&[(1, 10), (2, 30)]);
        let b = mix(&[(1, 20), (2, 60)]);
        assert!(js_divergence(&a, &b).abs() < 1e-12);
        let c = mix(&[(3, 5)]);
        assert!((js_divergence(&a, &c) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_noise_floor_explains_sampling_divergence_but_not_a_shift() {
        use rand::{Rng, SeedableRng};
        // Samples of one sparse 200-topic distribution: their JS is mostly noise.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut draw = |n: usize, topics: std::ops::Range<u64>| {
            let mut m = Mix::default();
            for _ in 0..n {
                m.add(Category::Topic(rng.gen_range(topics.clone())), 1, false);
            }
            m
        };
        let (a, b) = (draw(300, 0..200), draw(3000, 0..200));
        let js = js_divergence(&a, &b);
        let floor = js_noise_floor(&b, a.conversations, 1);
        assert!(js > 0.1, "sparse samples diverge: {js}");
        assert!((js - floor).abs() < 0.05, "js {js} floor {floor}");
        // Half the surface's traffic on topics the baseline never saw.
        let mut shifted = draw(150, 0..200);
        shifted.absorb(&draw(150, 500..510));
        let js = js_divergence(&shifted, &b);
        assert!(js - js_noise_floor(&b, 300, 1) > 0.2, "{js}");
    }
}
