//! Detect stage: reads per-cluster and per-surface statistics after each assignment and decides,
//! in event time, which alerts open, fire and resolve. Produces alert state changes, never text.
//!
//! [`Detectors`] runs every detector over the cluster an event just joined, over every subject
//! with an open alert (so an idle cluster's alert still ages out as the clock advances), and over
//! each launched surface once a minute, and hands their findings to one [`book::AlertBook`].

pub mod book;
pub mod coordinated;
pub mod enforcement;
pub mod launch;
pub mod lifecycle;
pub mod robust;

use book::{AlertBook, Finding, Subject, Timing};
pub use coordinated::CoordinatedDetector;
use enforcement::EnforcementDetector;
use launch::LaunchMonitor;

use crate::alert::{AlertKind, AlertRecord};
use crate::cluster::{ClusterId, ClusterState};
use crate::config::DetectSettings;
use crate::privacy::{LabelVerdict, PrivacyGate};

/// What the detectors need to know about the event just clustered.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    pub cluster: ClusterId,
    pub surface: &'a str,
    pub event_time_ms: i64,
    pub concern: u8,
    pub refused: bool,
}

pub struct Detectors {
    coordinated: CoordinatedDetector,
    launch: LaunchMonitor,
    enforcement: EnforcementDetector,
    book: AlertBook,
    labels_refused: u64,
}

impl Detectors {
    /// Fails on an invalid launch configuration.
    pub fn new(settings: &DetectSettings, gate: PrivacyGate) -> anyhow::Result<Self> {
        Ok(Detectors {
            coordinated: CoordinatedDetector::new(settings.coordinated.clone(), gate.clone()),
            launch: LaunchMonitor::new(settings.launch.clone(), gate.clone())?,
            enforcement: EnforcementDetector::new(settings.enforcement.clone(), gate),
            book: AlertBook::default(),
            labels_refused: 0,
        })
    }

    /// Runs the detectors after `event` (if any) at event time `clock_ms` (the stage's
    /// [`crate::cluster::clock::EventClock`]). Each cluster is judged at the later of the clock and
    /// its own latest join, so a cluster fed by a partition that runs ahead is judged on its own
    /// timeline. Returns the alert state changes, in a deterministic order.
    pub fn observe(
        &mut self,
        state: &mut ClusterState,
        event: Option<Observed<'_>>,
        clock_ms: i64,
    ) -> Vec<AlertRecord> {
        if let Some(e) = &event {
            self.launch
                .record(e.cluster, e.surface, e.event_time_ms, e.concern, e.refused);
        }
        self.coordinated.refresh(state, clock_ms);
        let touched = event.map(|e| e.cluster);
        let mut records = Vec::new();

        let coordinated = self.coordinated.timing();
        for id in self.cluster_subjects(AlertKind::CoordinatedCluster, touched) {
            let now = judged_at(state, id, clock_ms);
            let finding = self.coordinated.evaluate(state, id, now);
            // A cluster judged with its neighbours files the finding under the group's anchor;
            // an alert it had under its own id then sees its condition lapse.
            let subject = finding
                .as_ref()
                .map_or(Subject::Cluster(id), |f| f.subject.clone());
            if subject != Subject::Cluster(id) {
                self.step(
                    state,
                    None,
                    AlertKind::CoordinatedCluster,
                    Subject::Cluster(id),
                    now,
                    coordinated,
                    &mut records,
                );
            }
            self.step(
                state,
                finding,
                AlertKind::CoordinatedCluster,
                subject,
                now,
                coordinated,
                &mut records,
            );
        }

        let enforcement = self.enforcement.timing();
        let mut ids = self.cluster_subjects(AlertKind::UnderEnforcement, touched);
        ids.extend(self.cluster_subjects(AlertKind::OverRefusal, None));
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let now = judged_at(state, id, clock_ms);
            let mut findings = self.enforcement.evaluate(state, id);
            for kind in [AlertKind::UnderEnforcement, AlertKind::OverRefusal] {
                let pos = findings.iter().position(|f| f.kind == kind);
                let finding = pos.map(|p| findings.swap_remove(p));
                self.step(
                    state,
                    finding,
                    kind,
                    Subject::Cluster(id),
                    now,
                    enforcement,
                    &mut records,
                );
            }
        }

        if self.launch.is_active() {
            let launch = self.launch.timing();
            for id in self.cluster_subjects(AlertKind::LaunchNewCluster, touched) {
                let now = judged_at(state, id, clock_ms);
                let finding = self.launch.evaluate_cluster(state, id, now);
                self.step(
                    state,
                    finding,
                    AlertKind::LaunchNewCluster,
                    Subject::Cluster(id),
                    now,
                    launch,
                    &mut records,
                );
            }
            for surface in self.launch.due_surfaces(clock_ms) {
                let finding = self.launch.evaluate_drift(state, &surface, clock_ms);
                self.step(
                    state,
                    finding,
                    AlertKind::LaunchDrift,
                    Subject::Surface(surface),
                    clock_ms,
                    launch,
                    &mut records,
                );
            }
        }
        records
    }

    /// Cluster `absorbed` merged into `survivor`: its open alerts move with it.
    pub fn follow_merge(&mut self, absorbed: ClusterId, survivor: ClusterId) {
        self.book.follow_merge(absorbed, survivor);
    }

    /// Open alerts of `kind`: (pending, firing).
    pub fn counts(&self, kind: AlertKind) -> (usize, usize) {
        self.book.counts(kind)
    }

    /// Labels the auditor refused so far (they were replaced by the generic label).
    pub fn labels_refused(&self) -> u64 {
        self.labels_refused
    }

    /// The clusters with an open alert of `kind`, plus `touched`, in id order.
    fn cluster_subjects(&self, kind: AlertKind, touched: Option<ClusterId>) -> Vec<ClusterId> {
        let mut ids: Vec<ClusterId> = self
            .book
            .open_subjects(kind)
            .iter()
            .filter_map(Subject::cluster_id)
            .collect();
        if let Some(id) = touched {
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        ids
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        state: &ClusterState,
        finding: Option<Finding>,
        kind: AlertKind,
        subject: Subject,
        now_ms: i64,
        timing: Timing,
        records: &mut Vec<AlertRecord>,
    ) {
        // Nothing to do for a subject without an alert whose condition does not hold.
        if !finding.as_ref().is_some_and(|f| f.enter) && !self.book.is_open(kind, &subject) {
            return;
        }
        let labels_refused = &mut self.labels_refused;
        let label = || match &subject {
            Subject::Cluster(id) => match state.cluster(*id) {
                Some(c) => {
                    let (label, _, verdict) = state.shown_label_of(c);
                    if verdict != LabelVerdict::Pass {
                        *labels_refused += 1;
                    }
                    label
                }
                None => crate::privacy::GENERIC_LABEL.to_string(),
            },
            // Surface names come from the config, not from users.
            Subject::Surface(name) => format!("surface {name}"),
        };
        if let Some(record) = self
            .book
            .step(kind, &subject, finding, now_ms, timing, label)
        {
            records.push(record);
        }
    }
}

/// The later of the clock and the cluster's own latest join.
fn judged_at(state: &ClusterState, id: ClusterId, clock_ms: i64) -> i64 {
    state
        .cluster(id)
        .map_or(clock_ms, |c| c.last_seen_ms.max(clock_ms))
}
