//! Enforcement-gap detectors: where the assistant's own judgement and the upstream safeguards
//! disagree about a cluster.
//!
//! - `under_enforcement`: members' requests score a high mean concern, yet the upstream
//!   classifiers flagged few of them — a kind of misuse the classifiers do not know yet.
//! - `over_refusal`: the assistant refuses most of a cluster whose requests are benign — a
//!   refusal pattern that hurts legitimate users.
//!
//! Both are lifetime rates of a cluster, so both need minimum support (`min_conversations`, and
//! the privacy gate): a handful of conversations can show any rate. Entry and stay thresholds
//! differ by a margin so a cluster at the threshold does not flap.

use super::book::{Finding, Subject, Timing};
use super::coordinated::cluster_evidence;
use crate::alert::{AlertKind, AlertStats, Severity};
use crate::cluster::{ClusterId, ClusterState};
use crate::config::EnforcementSettings;
use crate::privacy::PrivacyGate;

/// Hysteresis on the rates: a firing alert stays until its rate is this far back past the
/// threshold.
const STAY_MARGIN: f64 = 0.05;
/// Hysteresis on concern, in score points.
const STAY_CONCERN_MARGIN: f64 = 0.25;

pub struct EnforcementDetector {
    settings: EnforcementSettings,
    gate: PrivacyGate,
}

impl EnforcementDetector {
    pub fn new(settings: EnforcementSettings, gate: PrivacyGate) -> Self {
        EnforcementDetector { settings, gate }
    }

    pub fn timing(&self) -> Timing {
        Timing {
            hold_secs: self.settings.hold_secs,
            quiet_secs: self.settings.quiet_secs,
        }
    }

    /// Both verdicts on cluster `id`; empty when it no longer exists.
    pub fn evaluate(&self, state: &ClusterState, id: ClusterId) -> Vec<Finding> {
        let s = &self.settings;
        let Some(cluster) = state.cluster(id) else {
            return Vec::new();
        };
        let supported = self.gate.admits(cluster) && cluster.count >= s.min_conversations;
        let concern = cluster.mean_concern();
        let flags = cluster.classifier_flag_rate();
        let refusals = cluster.refusal_rate();
        let under = |m: f64, cm: f64| {
            supported
                && concern >= s.under_min_mean_concern - cm
                && flags <= s.under_max_flag_rate + m
        };
        let over = |m: f64, cm: f64| {
            supported
                && refusals >= s.over_min_refusal_rate - m
                && concern <= s.over_max_mean_concern + cm
        };
        let surface = cluster
            .surfaces
            .iter()
            .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(s, _)| s.clone());
        let stats = AlertStats::Cluster(cluster_evidence(cluster));
        let finding = |kind, enter, stay, severity| Finding {
            kind,
            subject: Subject::Cluster(id),
            enter,
            stay,
            severity,
            surface: surface.clone(),
            window_start_ms: cluster.born_ms,
            stats: stats.clone(),
        };
        // Unflagged requests scoring 4+ (malware, credential theft) are a gap in safeguards that
        // someone should look at now: critical; a 3+ mean is a warning. Over-refusal costs users,
        // not safety: info.
        let under_severity = if concern >= 4.0 {
            Severity::Critical
        } else {
            Severity::Warning
        };
        vec![
            finding(
                AlertKind::UnderEnforcement,
                under(0.0, 0.0),
                under(STAY_MARGIN, STAY_CONCERN_MARGIN),
                under_severity,
            ),
            finding(
                AlertKind::OverRefusal,
                over(0.0, 0.0),
                over(STAY_MARGIN, STAY_CONCERN_MARGIN),
                Severity::Info,
            ),
        ]
    }
}
