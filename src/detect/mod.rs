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

pub use launch::HIGH_CONCERN;

use crate::alert::{AlertKind, AlertRecord, AlertStats, Severity, SurfaceEvidence};
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
    /// Alert records emitted so far; the last one's [`AlertRecord::sequence`].
    emitted: u64,
}

/// What the detectors remember between events: open alerts with their lifecycle, the launch
/// windows, the tightness population and the record sequence. A snapshot carries it beside the
/// cluster state, so after a crash the replayed events walk the same alerts through the same
/// transitions, and sinks recognise the records they already have by their sequence.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct DetectorSnapshot {
    coordinated: coordinated::CoordinatedMemory,
    launch: Vec<launch::Watch>,
    book: AlertBook,
    labels_refused: u64,
    emitted: u64,
}

impl std::fmt::Debug for DetectorSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DetectorSnapshot")
            .field("open_alerts", &self.book.len())
            .field("launch_watches", &self.launch.len())
            .field("emitted", &self.emitted)
            .finish()
    }
}

impl Detectors {
    /// Fails on an invalid launch configuration.
    pub fn new(settings: &DetectSettings, gate: PrivacyGate) -> anyhow::Result<Self> {
        let per_template = crate::cluster::template::ACCOUNTS_PER_TEMPLATE;
        anyhow::ensure!(
            settings.coordinated.duplication_min_accounts <= per_template,
            "detect.coordinated.duplication_min_accounts = {} exceeds the {per_template} accounts \
             a cluster remembers per template, so the script route could never fire",
            settings.coordinated.duplication_min_accounts
        );
        Ok(Detectors {
            coordinated: CoordinatedDetector::new(settings.coordinated.clone(), gate.clone()),
            launch: LaunchMonitor::new(settings.launch.clone(), gate.clone())?,
            enforcement: EnforcementDetector::new(settings.enforcement.clone(), gate),
            book: AlertBook::default(),
            labels_refused: 0,
            emitted: 0,
        })
    }

    /// The detectors' memory, for a snapshot.
    pub fn snapshot(&self) -> DetectorSnapshot {
        DetectorSnapshot {
            coordinated: self.coordinated.memory(),
            launch: self.launch.memory(),
            book: self.book.clone(),
            labels_refused: self.labels_refused,
            emitted: self.emitted,
        }
    }

    /// Continues from a snapshot's memory (the settings stay this process's).
    pub fn restore(&mut self, snapshot: DetectorSnapshot) {
        self.coordinated.restore(snapshot.coordinated);
        self.launch.restore(snapshot.launch);
        self.book = snapshot.book;
        self.labels_refused = snapshot.labels_refused;
        self.emitted = snapshot.emitted;
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

    /// Each launched surface's latest drift figures.
    pub fn launch_figures(&self) -> impl Iterator<Item = (&str, &SurfaceEvidence)> + '_ {
        self.launch.latest()
    }

    /// Firing alerts' kind, severity and latest evidence (for the aggregate gauges).
    pub fn firing(&self) -> impl Iterator<Item = (AlertKind, Severity, &AlertStats)> + '_ {
        self.book.firing()
    }

    /// Alert records emitted so far (the sequence of the latest).
    pub fn emitted(&self) -> u64 {
        self.emitted
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
        if let Some(mut record) = self
            .book
            .step(kind, &subject, finding, now_ms, timing, label)
        {
            self.emitted += 1;
            record.sequence = self.emitted;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertStatus;
    use crate::config::{ClusterSettings, LaunchSurface, PrivacySettings};
    use crate::embed::{hashing::HashingEmbedder, Embedder};
    use crate::event::{identity_key, EventMeta};
    use crate::summarize::Summary;

    /// Cluster state and detectors fed with hand-made events (a hashing embedder: the same words
    /// give the same vector).
    struct Bench {
        state: ClusterState,
        detectors: Detectors,
        embedder: HashingEmbedder,
        records: Vec<AlertRecord>,
        n: u64,
    }

    struct Event<'a> {
        account: String,
        text: &'a str,
        t_secs: i64,
        surface: &'a str,
        concern: u8,
        refused: bool,
        flagged: bool,
    }

    impl Bench {
        fn new(settings: DetectSettings) -> Self {
            let embedder = HashingEmbedder::new(512);
            Bench {
                state: ClusterState::new(
                    ClusterSettings {
                        join_threshold: 0.3,
                        ..Default::default()
                    },
                    512,
                    embedder.id(),
                ),
                detectors: Detectors::new(&settings, PrivacyGate::new(PrivacySettings::default()))
                    .unwrap(),
                embedder,
                records: Vec::new(),
                n: 0,
            }
        }

        fn send(&mut self, e: Event<'_>) {
            self.n += 1;
            let conv = format!("c{}", self.n);
            let meta = EventMeta {
                conversation_id: conv.clone(),
                conversation_key: identity_key("conversation", &conv),
                account_key: identity_key("account", &e.account),
                org_key: None,
                event_time_ms: e.t_secs * 1000,
                surface: e.surface.into(),
                classifier_flagged: e.flagged,
                template: 0,
                restricted_account: None,
            };
            let summary = Summary {
                request: e.text.into(),
                task: "other".into(),
                language: "en".into(),
                concern: e.concern,
                refused: e.refused,
            };
            let v = self.embedder.embed_batch(&[e.text.to_string()]).unwrap();
            let a = self.state.assign(0, &meta, &summary, &v[0]).unwrap();
            let clock = self.state.clock_ms();
            let observed = a.cluster_id().map(|cluster| Observed {
                cluster,
                surface: e.surface,
                event_time_ms: meta.event_time_ms,
                concern: e.concern,
                refused: e.refused,
            });
            let records = self.detectors.observe(&mut self.state, observed, clock);
            self.records.extend(records);
        }

        /// `n` conversations about `text` from `accounts` accounts, one every `every` seconds.
        #[allow(clippy::too_many_arguments)]
        fn topic(
            &mut self,
            text: &str,
            accounts: usize,
            n: usize,
            from_secs: i64,
            every: i64,
            surface: &str,
            concern: u8,
            refused: bool,
            flagged_every: usize,
        ) {
            for i in 0..n {
                self.send(Event {
                    account: format!("{text}-{}", i % accounts),
                    text,
                    t_secs: from_secs + i as i64 * every,
                    surface,
                    concern,
                    refused,
                    flagged: flagged_every > 0 && i % flagged_every == 0,
                });
            }
        }

        fn firing(&self, kind: AlertKind) -> Vec<&AlertRecord> {
            self.records
                .iter()
                .filter(|r| r.kind == kind && r.status == AlertStatus::Firing)
                .collect()
        }
    }

    /// A snapshot cut mid-alert (cluster state and detector memory, through the real snapshot
    /// encoding) continues with exactly the records the uninterrupted detectors make.
    #[test]
    fn a_restored_snapshot_continues_exactly_where_the_original_would() {
        let mut settings = DetectSettings::default();
        settings.launch.surfaces = vec![LaunchSurface {
            name: "computer_use".into(),
            launch_time: "1970-01-01T00:30:00Z".into(),
        }];
        settings.launch.min_window_conversations = 30;
        let events: Vec<(String, &str, i64, &str, u8)> = (0..400)
            .map(|i| {
                let (text, surface, concern) = match i % 4 {
                    0 | 1 => (
                        "write ransomware that encrypts a hospital network",
                        "api",
                        4,
                    ),
                    2 => ("book a table for two tonight", "chat", 1),
                    _ => ("click through the checkout page for me", "computer_use", 2),
                };
                (
                    format!("acct-{}", i % 70),
                    text,
                    i as i64 * 10,
                    surface,
                    concern,
                )
            })
            .collect();
        let send = |b: &mut Bench, e: &(String, &str, i64, &str, u8)| {
            b.send(Event {
                account: e.0.clone(),
                text: e.1,
                t_secs: e.2,
                surface: e.3,
                concern: e.4,
                refused: false,
                flagged: false,
            })
        };
        let mut original = Bench::new(settings.clone());
        let split = 280;
        for e in &events[..split] {
            send(&mut original, e);
        }
        assert!(
            original.detectors.counts(AlertKind::UnderEnforcement) != (0, 0),
            "an alert is open at the cut: {:#?}",
            original.records
        );
        let mut body = original.state.to_snapshot("t", Default::default());
        body.detector = Some(original.detectors.snapshot());
        let bytes = crate::cluster::snapshot::encode(&body);
        let mut decoded =
            crate::cluster::snapshot::decode(&bytes, std::path::Path::new("x")).unwrap();
        let memory = decoded.detector.take().expect("detector memory");
        let mut restored = Bench::new(settings);
        restored.state = ClusterState::from_snapshot(
            ClusterSettings {
                join_threshold: 0.3,
                ..Default::default()
            },
            decoded,
            512,
            restored.embedder.id(),
        )
        .unwrap();
        restored.detectors.restore(memory);
        restored.n = original.n;
        let before = original.records.len();
        for e in &events[split..] {
            send(&mut original, e);
            send(&mut restored, e);
        }
        assert!(original.records.len() > before, "records after the cut");
        assert_eq!(original.records[before..], restored.records[..]);
        let sequences: Vec<u64> = original.records.iter().map(|r| r.sequence).collect();
        assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());
    }

    #[test]
    fn unflagged_high_concern_is_under_enforcement_and_flagged_is_not() {
        let mut b = Bench::new(DetectSettings::default());
        // 150 conversations over 50 minutes from 60 accounts, concern 4, none flagged.
        b.topic(
            "write ransomware that encrypts a hospital network",
            60,
            150,
            0,
            20,
            "api",
            4,
            false,
            0,
        );
        let fired = b.firing(AlertKind::UnderEnforcement);
        assert_eq!(fired.len(), 1, "{:#?}", b.records);
        assert_eq!(fired[0].severity, crate::alert::Severity::Critical);
        let evidence = fired[0].stats.cluster().unwrap();
        assert!(evidence.conversations >= 100 && evidence.classifier_flag_rate <= 0.1);

        // The same with every other conversation flagged upstream: enforcement works.
        let mut b = Bench::new(DetectSettings::default());
        b.topic(
            "write ransomware that encrypts a hospital network",
            60,
            150,
            0,
            20,
            "api",
            4,
            false,
            2,
        );
        assert!(b.firing(AlertKind::UnderEnforcement).is_empty());
    }

    #[test]
    fn benign_refusals_are_over_refusal_but_only_with_support() {
        let mut b = Bench::new(DetectSettings::default());
        b.topic(
            "how do i kill a python process on linux",
            60,
            150,
            0,
            20,
            "code",
            1,
            true,
            0,
        );
        assert_eq!(
            b.firing(AlertKind::OverRefusal).len(),
            1,
            "{:#?}",
            b.records
        );
        assert!(b.firing(AlertKind::UnderEnforcement).is_empty());

        // 90 conversations: below min_conversations, never fires however long it runs.
        let mut b = Bench::new(DetectSettings::default());
        b.topic(
            "how do i kill a python process on linux",
            60,
            90,
            0,
            60,
            "code",
            1,
            true,
            0,
        );
        assert!(b.records.is_empty(), "{:#?}", b.records);
    }

    #[test]
    fn a_launched_surface_reports_its_new_cluster_and_its_drift() {
        let mut settings = DetectSettings::default();
        settings.launch.surfaces = vec![LaunchSurface {
            name: "computer_use".into(),
            launch_time: "1970-01-01T02:00:00Z".into(),
        }];
        settings.launch.min_window_conversations = 60;
        let mut b = Bench::new(settings);
        let chat_topics = [
            "what is the weather tomorrow in paris",
            "translate good morning into spanish",
            "recipe for a quick vegetable soup",
            "explain photosynthesis for a school project",
        ];
        // Four hours of chat traffic over four topics; computer_use launches at two hours.
        for i in 0..1440 {
            let text = chat_topics[i % 4];
            b.send(Event {
                account: format!("user-{}", i % 200),
                text,
                t_secs: i as i64 * 10,
                surface: "chat",
                concern: 1,
                refused: false,
                flagged: false,
            });
            // From launch, computer_use does something chat never did.
            if i >= 720 && i % 4 == 0 {
                b.send(Event {
                    account: format!("cu-{}", i % 90),
                    text: "open the spreadsheet app and fill column b with totals",
                    t_secs: i as i64 * 10 + 5,
                    surface: "computer_use",
                    concern: 1,
                    refused: false,
                    flagged: false,
                });
            }
        }
        let new = b.firing(AlertKind::LaunchNewCluster);
        assert_eq!(new.len(), 1, "{:#?}", b.records);
        assert_eq!(new[0].surface.as_deref(), Some("computer_use"));
        let drift = b.firing(AlertKind::LaunchDrift);
        assert_eq!(drift.len(), 1, "{:#?}", b.records);
        let evidence = drift[0].stats.surface().unwrap();
        assert_eq!(
            evidence.baseline, "rest",
            "no traffic before launch: compared with the rest"
        );
        assert!(evidence.js_divergence > 0.5, "{evidence:?}");
        assert_eq!(drift[0].cluster_id, None);
        assert_eq!(drift[0].label, "surface computer_use");
    }
}
