//! The coordinated-cluster detector.
//!
//! Normal use is diffuse: a topic gathers accounts slowly and its members say different things.
//! A campaign is many distinct accounts saying nearly the same thing within minutes. So a cluster
//! is a candidate when, over a sliding event-time window:
//! - many distinct accounts joined it (`min_window_accounts`),
//! - no single account dominates the window (one heavy user is not a campaign),
//! - it is tighter than typical clusters, by a robust z-score of tightness against the live
//!   population (median/MAD), falling back to a fixed floor only while the population is small,
//! - and it passes the privacy gate, since an alert shows the cluster.
//!
//! A candidate becomes an alert through [`Lifecycle`]: pending, firing after the hold time,
//! resolved after the quiet time.

use std::collections::BTreeMap;

use super::lifecycle::{Lifecycle, Transition};
use super::robust::RobustStats;
use crate::alert::{
    format_event_time, round4, AlertKind, AlertRecord, AlertStats, AlertStatus, ClusterEvidence, Severity,
};
use crate::cluster::{ClusterId, ClusterState};
use crate::config::CoordinatedSettings;
use crate::privacy::{LabelVerdict, PrivacyGate};

/// Clusters smaller than this are too noisy to describe "typical" tightness.
const POPULATION_MIN_COUNT: u64 = 5;
/// The population statistics are refreshed at most this often in event time.
const POPULATION_REFRESH_MS: i64 = 60_000;
/// Floor on the tightness scale so a very uniform population does not inflate z-scores.
const MIN_TIGHTNESS_SCALE: f64 = 0.02;
/// Hysteresis: once an alert is open, the cluster keeps it while its tightness z stays within this
/// much of the entry threshold and its window keeps at least this share of the entry accounts.
/// Without it a campaign whose z hovers at the threshold opens, withdraws and reopens its alert
/// with every member that joins.
const STAY_Z_MARGIN: f64 = 1.0;
const STAY_ACCOUNT_SHARE: f64 = 0.5;

struct Track {
    lifecycle: Lifecycle,
    alert_id: String,
    window_start_ms: i64,
    severity: Severity,
}

/// Result of evaluating one cluster.
struct Evaluation {
    /// Meets the entry condition.
    candidate: bool,
    /// Meets the (looser) condition to keep an open alert.
    sustained: bool,
    stats: ClusterEvidence,
    window_start_ms: i64,
}

pub struct CoordinatedDetector {
    settings: CoordinatedSettings,
    gate: PrivacyGate,
    tracks: BTreeMap<ClusterId, Track>,
    population: Option<RobustStats>,
    population_refreshed_ms: i64,
    labels_refused: u64,
}

impl CoordinatedDetector {
    pub fn new(settings: CoordinatedSettings, gate: PrivacyGate) -> Self {
        CoordinatedDetector {
            settings,
            gate,
            tracks: BTreeMap::new(),
            population: None,
            population_refreshed_ms: i64::MIN,
            labels_refused: 0,
        }
    }

    /// Evaluates `touched` (the cluster an event just joined) and every cluster with an open
    /// alert, at event time `clock_ms` (the stage's [`crate::cluster::clock::EventClock`]).
    /// Each cluster is evaluated at the later of the clock and its own latest join, so a cluster
    /// fed by a partition that runs ahead is judged on its own timeline, and an idle cluster's
    /// alert still ages out as the clock advances. Returns the state changes in cluster-id order.
    pub fn observe(
        &mut self,
        state: &mut ClusterState,
        touched: Option<ClusterId>,
        clock_ms: i64,
    ) -> Vec<AlertRecord> {
        self.refresh_population(state, clock_ms);
        let mut ids: Vec<ClusterId> = self.tracks.keys().copied().collect();
        if let Some(id) = touched {
            if !self.tracks.contains_key(&id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut records = Vec::new();
        for id in ids {
            let now_ms = state
                .cluster(id)
                .map_or(clock_ms, |c| c.last_seen_ms.max(clock_ms));
            if let Some(record) = self.evaluate_and_step(state, id, now_ms) {
                records.push(record);
            }
        }
        records
    }

    /// Cluster `absorbed` merged into `survivor`: an open alert moves with it, keeping its alert
    /// id, so the campaign is not reported twice. When both had one, the firing (else the
    /// survivor's) alert is kept and the other is dropped without a record.
    pub fn follow_merge(&mut self, absorbed: ClusterId, survivor: ClusterId) {
        let Some(moved) = self.tracks.remove(&absorbed) else {
            return;
        };
        let keep_moved = match self.tracks.get(&survivor) {
            None => true,
            Some(existing) => moved.lifecycle.is_firing() && !existing.lifecycle.is_firing(),
        };
        if keep_moved {
            self.tracks.insert(survivor, moved);
        }
    }

    /// Alerts currently pending or firing.
    pub fn open_alerts(&self) -> usize {
        self.tracks.len()
    }

    pub fn firing_alerts(&self) -> usize {
        self.tracks
            .values()
            .filter(|t| t.lifecycle.is_firing())
            .count()
    }

    /// Labels the auditor refused so far (they were replaced by the generic label).
    pub fn labels_refused(&self) -> u64 {
        self.labels_refused
    }

    fn refresh_population(&mut self, state: &ClusterState, now_ms: i64) {
        if self.population.is_some()
            && now_ms.saturating_sub(self.population_refreshed_ms) < POPULATION_REFRESH_MS
        {
            return;
        }
        let tightness: Vec<f64> = state
            .clusters()
            .filter(|c| c.count >= POPULATION_MIN_COUNT)
            .map(|c| c.tightness())
            .collect();
        self.population = RobustStats::of(&tightness);
        self.population_refreshed_ms = now_ms;
    }

    fn evaluate_and_step(
        &mut self,
        state: &mut ClusterState,
        id: ClusterId,
        now_ms: i64,
    ) -> Option<AlertRecord> {
        let evaluation = self.evaluate(state, id, now_ms);
        let candidate = evaluation.as_ref().is_some_and(|e| e.candidate);
        let sustained = evaluation.as_ref().is_some_and(|e| e.sustained);
        let transition = match self.tracks.get_mut(&id) {
            Some(track) => {
                let t = track.lifecycle.step(sustained, now_ms);
                if let (Some(e), Transition::None) = (&evaluation, t) {
                    // Re-notify when severity escalates while firing.
                    let severity = severity_for(&self.settings, &e.stats);
                    if track.lifecycle.is_firing() && severity > track.severity {
                        track.severity = severity;
                        Transition::To(AlertStatus::Firing)
                    } else {
                        Transition::None
                    }
                } else {
                    t
                }
            }
            None if candidate => {
                let e = evaluation.as_ref()?;
                let (lifecycle, t) =
                    Lifecycle::open(now_ms, self.settings.hold_secs, self.settings.quiet_secs);
                self.tracks.insert(
                    id,
                    Track {
                        lifecycle,
                        alert_id: format!("coordinated_cluster-{id}-{}", e.window_start_ms),
                        window_start_ms: e.window_start_ms,
                        severity: self.severity_for(&e.stats),
                    },
                );
                t
            }
            None => Transition::None,
        };
        let Transition::To(status) = transition else {
            return None;
        };
        let track = self.tracks.get(&id)?;
        let stats = evaluation.map(|e| e.stats).unwrap_or_else(empty_stats);
        let label = match state.cluster(id) {
            Some(c) => {
                let (label, _, verdict) = state.shown_label_of(c);
                if verdict != LabelVerdict::Pass {
                    self.labels_refused += 1;
                }
                label
            }
            None => crate::privacy::GENERIC_LABEL.to_string(),
        };
        let surface = stats
            .surfaces
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(s, _)| s.clone());
        let record = AlertRecord {
            alert_id: track.alert_id.clone(),
            kind: AlertKind::CoordinatedCluster,
            status,
            severity: track.severity,
            cluster_id: Some(id),
            surface,
            window_start: format_event_time(track.window_start_ms),
            event_time: format_event_time(now_ms),
            stats: AlertStats::Cluster(stats),
            label,
        };
        if status == AlertStatus::Resolved {
            self.tracks.remove(&id);
        }
        Some(record)
    }

    fn evaluate(&self, state: &mut ClusterState, id: ClusterId, now_ms: i64) -> Option<Evaluation> {
        let window_ms = self.settings.window_secs * 1000;
        let cluster = state.cluster_mut(id)?;
        cluster.recent.expire_before(now_ms - window_ms);
        let window_accounts = cluster.recent.distinct_accounts();
        let window_conversations = cluster.recent.joins();
        let first = cluster.recent.first_time_ms().unwrap_or(now_ms);
        let last = cluster.recent.last_time_ms().unwrap_or(now_ms);
        // A burst inside one minute still counts as one minute, so the rate stays finite.
        let span_minutes = ((last - first) as f64 / 60_000.0).max(1.0);
        let tightness = cluster.tightness();
        let tightness_z = self
            .population
            .filter(|p| p.n >= self.settings.min_population)
            .map(|p| p.z(tightness, MIN_TIGHTNESS_SCALE));
        let tight_enough = |margin: f64| match tightness_z {
            Some(z) => z >= self.settings.min_tightness_z - margin,
            None => {
                tightness >= self.settings.fallback_min_tightness - margin * MIN_TIGHTNESS_SCALE
            }
        };
        let top_account_share = cluster.recent.top_account_share();
        let shared =
            self.gate.admits(cluster) && top_account_share <= self.settings.max_top_account_share;
        let candidate =
            shared && window_accounts >= self.settings.min_window_accounts && tight_enough(0.0);
        let sustained = shared
            && window_accounts as f64
                >= self.settings.min_window_accounts as f64 * STAY_ACCOUNT_SHARE
            && tight_enough(STAY_Z_MARGIN);
        Some(Evaluation {
            candidate,
            sustained,
            window_start_ms: first,
            stats: ClusterEvidence {
                conversations: cluster.count,
                accounts: cluster.accounts.count(),
                orgs: cluster.orgs.count(),
                window_conversations,
                window_accounts,
                accounts_per_minute: round4(window_accounts as f64 / span_minutes),
                tightness: round4(tightness),
                tightness_z: round4(tightness_z.unwrap_or(0.0)),
                duplication_rate: 0.0,
                growth: 0.0,
                top_account_share: round4(top_account_share),
                refusal_rate: round4(cluster.refusal_rate()),
                mean_concern: round4(cluster.mean_concern()),
                classifier_flag_rate: 0.0,
                surfaces: cluster.surfaces.clone(),
                languages: cluster.languages.clone(),
            },
        })
    }

    fn severity_for(&self, stats: &ClusterEvidence) -> Severity {
        severity_for(&self.settings, stats)
    }
}

/// Critical from `critical_accounts` distinct accounts in the window, warning below.
fn severity_for(settings: &CoordinatedSettings, stats: &ClusterEvidence) -> Severity {
    if stats.window_accounts >= settings.critical_accounts {
        Severity::Critical
    } else {
        Severity::Warning
    }
}

fn empty_stats() -> ClusterEvidence {
    ClusterEvidence {
        conversations: 0,
        accounts: 0,
        orgs: 0,
        window_conversations: 0,
        window_accounts: 0,
        accounts_per_minute: 0.0,
        tightness: 0.0,
        tightness_z: 0.0,
        duplication_rate: 0.0,
        growth: 0.0,
        top_account_share: 0.0,
        refusal_rate: 0.0,
        mean_concern: 0.0,
        classifier_flag_rate: 0.0,
        surfaces: BTreeMap::new(),
        languages: BTreeMap::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClusterSettings, PrivacySettings};
    use crate::embed::{hashing::HashingEmbedder, Embedder};
    use crate::event::{identity_key, EventMeta};
    use crate::summarize::Summary;

    struct World {
        state: ClusterState,
        detector: CoordinatedDetector,
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
                detector: CoordinatedDetector::new(
                    CoordinatedSettings::default(),
                    PrivacyGate::new(PrivacySettings::default()),
                ),
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
            self.records.extend(
                self.detector
                    .observe(&mut self.state, a.cluster_id(), clock),
            );
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
        w.organic(3840, 3840 + 1800, 2);
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
