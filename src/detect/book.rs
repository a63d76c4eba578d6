//! The alert book: every open alert, keyed by what it is about, walked through its lifecycle.
//!
//! Detectors only say, at an event time, whether their condition holds for a subject (a cluster
//! or a surface) and with what evidence — a [`Finding`]. The book turns findings into alert state
//! changes, so every detector gets the same semantics:
//! - one alert per dedup key (kind, subject): a subject that keeps meeting the condition keeps
//!   one alert id, and a re-evaluation never opens a second one;
//! - pending → firing after the kind's hold time, resolved after its quiet time ([`Lifecycle`]);
//! - entry and stay conditions differ (the detector computes both), which is the hysteresis that
//!   keeps an alert at its threshold from flapping;
//! - a firing alert whose severity rises is re-notified; one whose severity falls keeps the
//!   highest it reached, so an incident is never silently downgraded;
//! - an alert on a cluster that merges into another moves to the survivor, so one campaign is one
//!   page.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::lifecycle::{Lifecycle, Transition};
use crate::alert::{format_event_time, AlertKind, AlertRecord, AlertStats, AlertStatus, Severity};
use crate::cluster::ClusterId;

/// What an alert is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Subject {
    Cluster(ClusterId),
    Surface(String),
}

impl Subject {
    pub fn cluster_id(&self) -> Option<ClusterId> {
        match self {
            Subject::Cluster(id) => Some(*id),
            Subject::Surface(_) => None,
        }
    }
}

/// One detector's verdict on one subject at one event time.
#[derive(Debug, Clone)]
pub struct Finding {
    pub kind: AlertKind,
    pub subject: Subject,
    /// The condition to open an alert holds.
    pub enter: bool,
    /// The (looser) condition to keep an open alert holds.
    pub stay: bool,
    pub severity: Severity,
    /// The surface that dominates the evidence (or the subject surface).
    pub surface: Option<String>,
    pub window_start_ms: i64,
    pub stats: AlertStats,
}

/// Hold and quiet times of one kind, in event seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub hold_secs: i64,
    pub quiet_secs: i64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Track {
    lifecycle: Lifecycle,
    alert_id: String,
    window_start_ms: i64,
    severity: Severity,
    surface: Option<String>,
    /// The evidence last seen, reported on the resolve when no fresh finding exists.
    stats: AlertStats,
}

type Key = (AlertKind, Subject);

/// Open alerts by dedup key. A snapshot keeps the book as a list: postcard maps need keys it can
/// encode, and a list of pairs is the plainest form.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(from = "Vec<(Key, Track)>", into = "Vec<(Key, Track)>")]
pub struct AlertBook {
    tracks: BTreeMap<Key, Track>,
}

impl From<Vec<(Key, Track)>> for AlertBook {
    fn from(tracks: Vec<(Key, Track)>) -> Self {
        AlertBook {
            tracks: tracks.into_iter().collect(),
        }
    }
}

impl From<AlertBook> for Vec<(Key, Track)> {
    fn from(book: AlertBook) -> Self {
        book.tracks.into_iter().collect()
    }
}

impl AlertBook {
    /// Open alerts, all kinds.
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Subjects with an open alert of `kind`, in key order.
    pub fn open_subjects(&self, kind: AlertKind) -> Vec<Subject> {
        self.tracks
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| s.clone())
            .collect()
    }

    pub fn is_open(&self, kind: AlertKind, subject: &Subject) -> bool {
        self.tracks.contains_key(&(kind, subject.clone()))
    }

    /// Steps the alert of `kind` on `subject` with this evaluation (`None`: the subject is gone
    /// or could not be evaluated, which counts as the condition not holding). `label` names the
    /// subject for a record and is only called when a record is made.
    pub fn step(
        &mut self,
        kind: AlertKind,
        subject: &Subject,
        finding: Option<Finding>,
        now_ms: i64,
        timing: Timing,
        label: impl FnOnce() -> String,
    ) -> Option<AlertRecord> {
        let key = (kind, subject.clone());
        let transition = match self.tracks.get_mut(&key) {
            Some(track) => {
                let stay = finding.as_ref().is_some_and(|f| f.stay);
                let t = track.lifecycle.step(stay, now_ms);
                if let Some(f) = &finding {
                    track.stats = f.stats.clone();
                    if f.surface.is_some() {
                        track.surface = f.surface.clone();
                    }
                }
                match (t, &finding) {
                    (Transition::None, Some(f))
                        if f.stay && track.lifecycle.is_firing() && f.severity > track.severity =>
                    {
                        track.severity = f.severity;
                        Transition::To(AlertStatus::Firing)
                    }
                    (Transition::None, Some(f)) if f.stay && f.severity > track.severity => {
                        // Still pending: the page, when it comes, carries the higher severity.
                        track.severity = f.severity;
                        Transition::None
                    }
                    _ => t,
                }
            }
            None => {
                let f = finding.as_ref().filter(|f| f.enter)?;
                let (lifecycle, t) = Lifecycle::open(now_ms, timing.hold_secs, timing.quiet_secs);
                let subject_part = match subject {
                    Subject::Cluster(id) => id.to_string(),
                    Subject::Surface(s) => s.clone(),
                };
                self.tracks.insert(
                    key.clone(),
                    Track {
                        lifecycle,
                        alert_id: format!("{}-{subject_part}-{}", kind.as_str(), f.window_start_ms),
                        window_start_ms: f.window_start_ms,
                        severity: f.severity,
                        surface: f.surface.clone(),
                        stats: f.stats.clone(),
                    },
                );
                t
            }
        };
        let Transition::To(status) = transition else {
            return None;
        };
        let track = self.tracks.get(&key)?;
        let record = AlertRecord {
            sequence: 0,
            alert_id: track.alert_id.clone(),
            kind,
            status,
            severity: track.severity,
            cluster_id: subject.cluster_id(),
            surface: track.surface.clone(),
            window_start: format_event_time(track.window_start_ms),
            event_time: format_event_time(now_ms),
            stats: track.stats.clone(),
            label: label(),
        };
        if status == AlertStatus::Resolved {
            self.tracks.remove(&key);
        }
        Some(record)
    }

    /// Cluster `absorbed` merged into `survivor`: each of its open alerts moves to the survivor,
    /// keeping its alert id, unless the survivor already has one of that kind — then the firing
    /// one (else the survivor's) is kept and the other is dropped without a record, because
    /// both describe what is now one cluster.
    pub fn follow_merge(&mut self, absorbed: ClusterId, survivor: ClusterId) {
        for kind in AlertKind::ALL {
            let Some(moved) = self.tracks.remove(&(kind, Subject::Cluster(absorbed))) else {
                continue;
            };
            let key = (kind, Subject::Cluster(survivor));
            let keep_moved = match self.tracks.get(&key) {
                None => true,
                Some(existing) => moved.lifecycle.is_firing() && !existing.lifecycle.is_firing(),
            };
            if keep_moved {
                self.tracks.insert(key, moved);
            }
        }
    }

    /// Open alerts of `kind`: (pending, firing).
    /// Firing alerts' kind, severity and latest evidence, in key order.
    pub fn firing(&self) -> impl Iterator<Item = (AlertKind, Severity, &AlertStats)> + '_ {
        self.tracks
            .iter()
            .filter(|(_, t)| t.lifecycle.is_firing())
            .map(|((kind, _), t)| (*kind, t.severity, &t.stats))
    }

    pub fn counts(&self, kind: AlertKind) -> (usize, usize) {
        let mut pending = 0;
        let mut firing = 0;
        for ((k, _), t) in &self.tracks {
            if *k == kind {
                if t.lifecycle.is_firing() {
                    firing += 1;
                } else {
                    pending += 1;
                }
            }
        }
        (pending, firing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::SurfaceEvidence;

    fn finding(enter: bool, stay: bool, severity: Severity) -> Finding {
        Finding {
            kind: AlertKind::LaunchDrift,
            subject: Subject::Surface("computer_use".into()),
            enter,
            stay,
            severity,
            surface: Some("computer_use".into()),
            window_start_ms: 0,
            stats: AlertStats::Surface(SurfaceEvidence {
                launch_time: "2026-11-27T10:00:00Z".into(),
                baseline: "rest".into(),
                window_conversations: 0,
                baseline_conversations: 0,
                js_divergence: 0.0,
                concern_rate: 0.0,
                baseline_concern_rate: 0.0,
                refusal_rate: 0.0,
                baseline_refusal_rate: 0.0,
                new_clusters: 0,
            }),
        }
    }

    const TIMING: Timing = Timing {
        hold_secs: 60,
        quiet_secs: 300,
    };

    fn step(book: &mut AlertBook, f: Finding, at_secs: i64) -> Option<AlertStatus> {
        let subject = f.subject.clone();
        book.step(
            AlertKind::LaunchDrift,
            &subject,
            Some(f),
            at_secs * 1000,
            TIMING,
            || "surface".into(),
        )
        .map(|r| r.status)
    }

    #[test]
    fn escalation_re_notifies_and_a_stay_condition_keeps_the_alert() {
        let mut book = AlertBook::default();
        assert_eq!(
            step(&mut book, finding(false, true, Severity::Warning), 0),
            None,
            "the stay condition alone never opens an alert"
        );
        assert_eq!(
            step(&mut book, finding(true, true, Severity::Warning), 0),
            Some(AlertStatus::Pending)
        );
        assert_eq!(
            step(&mut book, finding(false, true, Severity::Warning), 60),
            Some(AlertStatus::Firing)
        );
        assert_eq!(
            step(&mut book, finding(true, true, Severity::Critical), 90),
            Some(AlertStatus::Firing),
            "escalation is re-notified"
        );
        assert_eq!(
            step(&mut book, finding(true, true, Severity::Warning), 100),
            None,
            "a lower severity is not a new page"
        );
        assert_eq!(
            step(&mut book, finding(false, false, Severity::Info), 200),
            None
        );
        assert_eq!(
            step(&mut book, finding(false, false, Severity::Info), 400),
            Some(AlertStatus::Resolved)
        );
        assert_eq!(book.counts(AlertKind::LaunchDrift), (0, 0));
    }

    #[test]
    fn alerts_follow_merges_and_never_double() {
        let mut book = AlertBook::default();
        let mut on = |id: ClusterId, at: i64| {
            let mut f = finding(true, true, Severity::Warning);
            f.kind = AlertKind::CoordinatedCluster;
            f.subject = Subject::Cluster(id);
            book.step(
                AlertKind::CoordinatedCluster,
                &Subject::Cluster(id),
                Some(f),
                at * 1000,
                TIMING,
                || "x".into(),
            )
        };
        on(1, 0);
        on(1, 60);
        on(2, 70);
        let (_, firing) = {
            let b = &mut book;
            b.follow_merge(1, 2);
            b.counts(AlertKind::CoordinatedCluster)
        };
        assert_eq!(firing, 1, "the firing alert moved onto the survivor");
        assert_eq!(
            book.counts(AlertKind::CoordinatedCluster),
            (0, 1),
            "the survivor's pending alert was dropped"
        );
        assert!(book.is_open(AlertKind::CoordinatedCluster, &Subject::Cluster(2)));
        assert!(!book.is_open(AlertKind::CoordinatedCluster, &Subject::Cluster(1)));
    }
}
