//! The gauges that describe cluster state (live clusters, open alerts, launch figures), combined
//! over every cluster shard the process owns.
//!
//! With `--role all` a process has one state and the board holds one reading. With
//! `--role cluster` each shard is its own state; if every shard set the gauges directly, the last
//! one to update would win and the dashboards would flicker between shards. Each shard therefore
//! files its reading here and the gauges show the combination: counts are summed, speeds take the
//! fastest, and a surface's launch figures are those of the shard where its topic mix diverges
//! most (the shard most likely to be paging about it). A shard that is handed over files no more
//! readings and is forgotten, so its clusters leave the totals with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::alert::{AlertKind, Severity};
use crate::cluster::ClusterState;
use crate::detect::Detectors;
use crate::export::Metrics;
use crate::privacy::PrivacyGate;

/// One shard's figures, read from its state and detectors.
#[derive(Debug, Clone, Default)]
pub struct GaugeReading {
    micro_clusters: i64,
    topics: i64,
    domains: i64,
    visible: i64,
    /// (kind, status) → open alerts.
    open: BTreeMap<(AlertKind, &'static str), i64>,
    /// (kind, severity) → (accounts in firing alerts' windows, fastest accounts per minute).
    accounts: BTreeMap<(AlertKind, Severity), (i64, f64)>,
    /// Surface label → launch figures.
    launch: BTreeMap<String, LaunchReading>,
}

#[derive(Debug, Clone, Copy, Default)]
struct LaunchReading {
    divergence: f64,
    concern: f64,
    baseline_concern: f64,
    refusal: f64,
    baseline_refusal: f64,
    new_clusters: i64,
}

impl GaugeReading {
    pub fn read(state: &ClusterState, detector: &Detectors, gate: &PrivacyGate) -> Self {
        let mut reading = GaugeReading {
            micro_clusters: state.live_clusters() as i64,
            topics: state.topic_count() as i64,
            domains: state.domain_count() as i64,
            visible: state.clusters().filter(|c| gate.admits(c)).count() as i64,
            ..Default::default()
        };
        for kind in AlertKind::ALL {
            let (pending, firing) = detector.counts(kind);
            reading.open.insert((kind, "firing"), firing as i64);
            reading.open.insert((kind, "pending"), pending as i64);
            for severity in Severity::ALL {
                reading.accounts.insert((kind, severity), (0, 0.0));
            }
        }
        // Firing alerts' evidence, aggregated to bounded labels: Prometheus never sees a
        // cluster id.
        for (kind, severity, stats) in detector.firing() {
            if let Some(c) = stats.cluster() {
                let entry = reading.accounts.entry((kind, severity)).or_default();
                entry.0 += c.window_accounts as i64;
                entry.1 = entry.1.max(c.accounts_per_minute);
            }
        }
        for (surface, figures) in detector.launch_figures() {
            reading.launch.insert(
                Metrics::surface_label(surface).to_string(),
                LaunchReading {
                    divergence: figures.js_divergence,
                    concern: figures.concern_rate,
                    baseline_concern: figures.baseline_concern_rate,
                    refusal: figures.refusal_rate,
                    baseline_refusal: figures.baseline_refusal_rate,
                    new_clusters: figures.new_clusters as i64,
                },
            );
        }
        reading
    }

    /// Folds `other` (another shard's reading) into this one.
    fn combine(&mut self, other: &GaugeReading) {
        self.micro_clusters += other.micro_clusters;
        self.topics += other.topics;
        self.domains += other.domains;
        self.visible += other.visible;
        for (key, n) in &other.open {
            *self.open.entry(*key).or_default() += n;
        }
        for (key, (sum, fastest)) in &other.accounts {
            let entry = self.accounts.entry(*key).or_default();
            entry.0 += sum;
            entry.1 = entry.1.max(*fastest);
        }
        for (surface, figures) in &other.launch {
            match self.launch.get(surface) {
                Some(kept) if kept.divergence >= figures.divergence => {}
                _ => {
                    self.launch.insert(surface.clone(), *figures);
                }
            }
        }
    }

    fn apply(&self, metrics: &Metrics) {
        let live = &metrics.live_clusters;
        live.with_label_values(&["micro"]).set(self.micro_clusters);
        live.with_label_values(&["topic"]).set(self.topics);
        live.with_label_values(&["domain"]).set(self.domains);
        metrics.visible_clusters.set(self.visible);
        for ((kind, status), n) in &self.open {
            metrics
                .open_alerts
                .with_label_values(&[kind.as_str(), status])
                .set(*n);
        }
        for ((kind, severity), (sum, fastest)) in &self.accounts {
            let labels = [kind.as_str(), severity.as_str()];
            metrics
                .open_alert_window_accounts
                .with_label_values(&labels)
                .set(*sum);
            metrics
                .open_alert_accounts_per_minute
                .with_label_values(&labels)
                .set(*fastest);
        }
        for (surface, f) in &self.launch {
            let surface = [surface.as_str()];
            let set = |gauge: &prometheus::GaugeVec, value: f64| {
                gauge.with_label_values(&surface).set(value);
            };
            set(&metrics.launch_divergence, f.divergence);
            set(&metrics.launch_concern_ratio, f.concern);
            set(&metrics.launch_baseline_concern_ratio, f.baseline_concern);
            set(&metrics.launch_refusal_ratio, f.refusal);
            set(&metrics.launch_baseline_refusal_ratio, f.baseline_refusal);
            metrics
                .launch_new_clusters
                .with_label_values(&surface)
                .set(f.new_clusters);
        }
    }
}

/// The latest reading of every shard of this process. Clones share the board.
#[derive(Debug, Clone, Default)]
pub struct GaugeBoard {
    readings: Arc<Mutex<BTreeMap<i32, GaugeReading>>>,
}

/// The board key of a whole-stream pipeline (`--role all`, replay, demo).
pub const WHOLE_STREAM: i32 = -1;

impl GaugeBoard {
    /// Files `shard`'s reading and sets the gauges to the combination of all shards.
    pub fn update(&self, shard: i32, reading: GaugeReading, metrics: &Metrics) {
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        readings.insert(shard, reading);
        Self::combined(&readings).apply(metrics);
    }

    /// A shard handed over: its figures leave the totals.
    pub fn forget(&self, shard: i32, metrics: &Metrics) {
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        if readings.remove(&shard).is_some() {
            Self::combined(&readings).apply(metrics);
        }
    }

    fn combined(readings: &BTreeMap<i32, GaugeReading>) -> GaugeReading {
        let mut total = GaugeReading::default();
        for reading in readings.values() {
            total.combine(reading);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(micro: i64, firing: i64, fastest: f64, divergence: f64) -> GaugeReading {
        let mut r = GaugeReading {
            micro_clusters: micro,
            visible: micro / 2,
            ..Default::default()
        };
        r.open.insert((AlertKind::ALL[0], "firing"), firing);
        r.accounts.insert(
            (AlertKind::ALL[0], Severity::ALL[0]),
            (firing * 10, fastest),
        );
        r.launch.insert(
            "computer_use".into(),
            LaunchReading {
                divergence,
                new_clusters: micro,
                ..Default::default()
            },
        );
        r
    }

    #[test]
    fn shards_are_summed_speeds_take_the_fastest_and_a_forgotten_shard_leaves_the_totals() {
        let metrics = Metrics::new();
        let board = GaugeBoard::default();
        board.update(0, reading(10, 1, 3.0, 0.2), &metrics);
        board.update(1, reading(30, 2, 9.0, 0.5), &metrics);
        let micro = || metrics.live_clusters.with_label_values(&["micro"]).get();
        assert_eq!(micro(), 40);
        assert_eq!(metrics.visible_clusters.get(), 20);
        let kind = AlertKind::ALL[0].as_str();
        let severity = Severity::ALL[0].as_str();
        assert_eq!(
            metrics
                .open_alerts
                .with_label_values(&[kind, "firing"])
                .get(),
            3
        );
        assert_eq!(
            metrics
                .open_alert_accounts_per_minute
                .with_label_values(&[kind, severity])
                .get(),
            9.0
        );
        let divergence = || {
            metrics
                .launch_divergence
                .with_label_values(&["computer_use"])
                .get()
        };
        assert_eq!(
            divergence(),
            0.5,
            "the most divergent shard's launch figures"
        );
        board.update(1, reading(30, 2, 9.0, 0.1), &metrics);
        assert_eq!(divergence(), 0.2);
        board.forget(0, &metrics);
        assert_eq!(micro(), 30);
        assert_eq!(
            metrics
                .open_alerts
                .with_label_values(&[kind, "firing"])
                .get(),
            2
        );
    }
}
