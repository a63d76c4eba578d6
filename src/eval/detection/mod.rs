//! `clusterwatch eval detection`: does the detector page for campaigns and stay quiet for
//! organic traffic?
//!
//! It generates a labelled stream ([`scenario`]), replays it through the real pipeline (the
//! configured summarizer and embedder, the online clusterer, every detector, the alert book) in
//! event time, and scores the alert records against the labels:
//! - an alert on a cluster is attributed to the injection (campaign or hard negative) that
//!   contributed most of the cluster's conversations during the alert's evidence window,
//!   following merges, and to organic traffic when organic conversations were the majority;
//! - a `launch_drift` alert is attributed to a launch campaign active on its surface (until the
//!   campaign's end plus the quiet time), else to organic traffic;
//! - recall: campaigns with at least one firing `coordinated_cluster` or `launch_new_cluster`
//!   alert attributed to them;
//! - precision: firing alerts attributed to campaigns over all firing alerts, per detector;
//! - time to detect: first firing minus the campaign's first message, and minus its 20th
//!   account's first message (the earliest a 20-account threshold can see it);
//! - false alerts per million organic events.
//!
//! The replay uses the production defaults with two documented changes: the privacy gate is
//! lowered to 20 accounts and 20 conversations (with the default 25/50 gate a 20-account campaign
//! cannot be shown, by design, so it cannot alert), and `computer_use` is configured as a launched
//! surface. `--config` layers a file over that.

pub mod scenario;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use scenario::{Scenario, ScenarioSpec, Shape, Truth};

use crate::alert::{AlertKind, AlertRecord, AlertStatus, Severity};
use crate::cluster::lifecycle::{LifecycleEvent, LifecycleKind};
use crate::cluster::ClusterId;
use crate::config::{LaunchSurface, Settings};
use crate::embed::{EmbedError, Embedder};
use crate::export::Metrics;
use crate::pipeline::AssignmentRecord;
use crate::replay::{replay, ReplayOutputs};

#[derive(Debug, clap::Args)]
pub struct DetectionEvalArgs {
    /// `small` (about 45k events, for CI) or `full` (about 260k events).
    #[arg(long, default_value = "small", value_parser = ["small", "full"])]
    pub size: String,
    /// Seed of the generated stream.
    #[arg(long, default_value_t = 17)]
    pub seed: u64,
    /// TOML settings layered over the evaluation's defaults (see the module docs).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the generated events and the alert records in this directory.
    #[arg(long)]
    pub keep: Option<PathBuf>,
    /// Exit non-zero when a goal is missed.
    #[arg(long)]
    pub check: bool,
}

/// Goals from the issue that introduced this evaluation.
const GOAL_RECALL: f64 = 0.95;
const GOAL_PRECISION: f64 = 0.95;
const GOAL_MEDIAN_TTD_AFTER_20TH_SECS: f64 = 60.0;
/// Recall is judged on campaigns of at least this many accounts.
const RECALL_MIN_ACCOUNTS: usize = 20;

/// Remembers vectors by text: the stream repeats its organic requests, and the evaluation's cost
/// should be the detector's, not the model's.
struct MemoEmbedder {
    inner: Arc<dyn Embedder>,
    memo: Mutex<HashMap<String, Vec<f32>>>,
}

impl Embedder for MemoEmbedder {
    fn id(&self) -> &str {
        self.inner.id()
    }

    fn dimension(&self) -> usize {
        self.inner.dimension()
    }

    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let missing: Vec<String> = {
            let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            let mut m: Vec<String> = texts
                .iter()
                .filter(|t| !memo.contains_key(*t))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let vectors = self.inner.embed_batch(&missing)?;
            let mut memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
            for (t, v) in missing.into_iter().zip(vectors) {
                memo.insert(t, v);
            }
        }
        let memo = self.memo.lock().unwrap_or_else(|e| e.into_inner());
        texts
            .iter()
            .map(|t| {
                memo.get(t)
                    .cloned()
                    .ok_or_else(|| EmbedError::Unavailable("memo lost a vector".into()))
            })
            .collect()
    }
}

/// The settings the evaluation runs with (see the module docs).
pub fn eval_settings(config: Option<&std::path::Path>, launch_ms: i64) -> anyhow::Result<Settings> {
    let mut settings = Settings::load(None)?;
    settings.privacy.min_accounts = 20;
    settings.privacy.min_conversations = 20;
    settings.detect.launch.surfaces = vec![LaunchSurface {
        name: scenario::LAUNCH_SURFACE.to_string(),
        launch_time: crate::alert::format_event_time(launch_ms),
    }];
    settings.alerts.print = false;
    settings.alerts.alertmanager_url.clear();
    settings.http.listen.clear();
    if let Some(path) = config {
        let overlay = Settings::load(Some(path))?;
        // Only the sections a detection evaluation is about are taken from the file.
        settings.detect = overlay.detect;
        settings.privacy = overlay.privacy;
        settings.cluster = overlay.cluster;
        settings.embedder = overlay.embedder;
        settings.summarizer = overlay.summarizer;
        settings.llm = overlay.llm;
        if settings.detect.launch.surfaces.is_empty() {
            settings.detect.launch.surfaces = vec![LaunchSurface {
                name: scenario::LAUNCH_SURFACE.to_string(),
                launch_time: crate::alert::format_event_time(launch_ms),
            }];
        }
    }
    Ok(settings)
}

/// One firing alert, attributed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoredAlert {
    pub alert_id: String,
    pub kind: AlertKind,
    pub severity: Severity,
    pub fired_ms: i64,
    /// Index of the injection it is attributed to, or `None` for organic traffic.
    pub injection: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InjectionResult {
    pub shape: &'static str,
    pub negative: bool,
    pub accounts: usize,
    pub conversations: usize,
    pub detected_by: Vec<&'static str>,
    pub max_severity: Option<Severity>,
    pub ttd_from_start_secs: Option<f64>,
    pub ttd_from_20th_account_secs: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DetectorResult {
    pub kind: &'static str,
    pub firing_alerts: usize,
    pub on_campaigns: usize,
    pub on_hard_negatives: usize,
    pub on_organic: usize,
    pub precision: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub size: String,
    pub seed: u64,
    pub events: usize,
    pub organic_events: usize,
    pub injections: Vec<InjectionResult>,
    pub detectors: Vec<DetectorResult>,
    pub recall_at_20: f64,
    pub campaigns_at_20: usize,
    pub precision: f64,
    pub median_ttd_from_start_secs: Option<f64>,
    pub median_ttd_from_20th_account_secs: Option<f64>,
    pub false_alerts_per_million_organic: f64,
    pub critical_on_hard_negatives: usize,
    pub goals_met: bool,
}

pub async fn run(args: DetectionEvalArgs) -> anyhow::Result<()> {
    let spec = match args.size.as_str() {
        "full" => ScenarioSpec::full(args.seed),
        _ => ScenarioSpec::small(args.seed),
    };
    let settings = eval_settings(args.config.as_deref(), spec.launch_ms())?;
    let started = std::time::Instant::now();
    let scenario = scenario::generate(&spec);
    eprintln!(
        "eval detection: {} events ({} organic, {} injections), seed {}",
        scenario.events.len(),
        scenario.organic_events,
        scenario.injections.len(),
        args.seed
    );
    let report = evaluate(
        &settings,
        &scenario,
        &args.size,
        args.seed,
        args.keep.as_deref(),
    )
    .await?;
    print_report(&report, &scenario);
    eprintln!(
        "eval detection took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if args.check && !report.goals_met {
        anyhow::bail!("detection goals missed (see the table above)");
    }
    Ok(())
}

/// Replays `scenario` with `settings` and scores the alerts.
pub async fn evaluate(
    settings: &Settings,
    scenario: &Scenario,
    size: &str,
    seed: u64,
    keep: Option<&std::path::Path>,
) -> anyhow::Result<Report> {
    let dir = match keep {
        Some(d) => d.to_path_buf(),
        None => std::env::temp_dir().join(format!(
            "clusterwatch-eval-detection-{}-{seed}",
            std::process::id()
        )),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let input = dir.join("events.jsonl");
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&input)?);
        for e in &scenario.events {
            w.write_all(&e.payload)?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let outputs = ReplayOutputs {
        alerts: Some(dir.join("alerts.jsonl")),
        assignments: Some(dir.join("assignments.jsonl")),
        lifecycle: Some(dir.join("lifecycle.jsonl")),
        ..Default::default()
    };
    let metrics = Metrics::new();
    let embedder = crate::run::build_embedder(settings, &metrics).await?;
    let memo: Arc<dyn Embedder> = Arc::new(MemoEmbedder {
        inner: embedder,
        memo: Mutex::new(HashMap::new()),
    });
    replay(
        settings.clone(),
        &input,
        &outputs,
        metrics,
        Some(memo),
        Vec::new(),
    )
    .await?;
    let alerts: Vec<AlertRecord> = read_jsonl(&dir.join("alerts.jsonl"))?;
    let assignments: Vec<AssignmentRecord> = read_jsonl(&dir.join("assignments.jsonl"))?;
    let lifecycle: Vec<LifecycleEvent> = read_jsonl(&dir.join("lifecycle.jsonl"))?;
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(score(
        settings,
        scenario,
        &alerts,
        &assignments,
        &lifecycle,
        size,
        seed,
    ))
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())))
        .collect()
}

fn parse_time(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s).map_or(0, |t| t.timestamp_millis())
}

/// Scores the alert records against the scenario's labels (see the module docs).
pub fn score(
    settings: &Settings,
    scenario: &Scenario,
    alerts: &[AlertRecord],
    assignments: &[AssignmentRecord],
    lifecycle: &[LifecycleEvent],
    size: &str,
    seed: u64,
) -> Report {
    // Conversations by the cluster they joined, with their time and truth.
    let by_id: HashMap<&str, (i64, Truth)> = scenario
        .events
        .iter()
        .map(|e| (e.conversation_id.as_str(), (e.event_time_ms, e.truth)))
        .collect();
    let mut members: HashMap<ClusterId, Vec<(i64, Truth)>> = HashMap::new();
    for a in assignments {
        if let Some(m) = by_id.get(a.conversation_id.as_str()) {
            members.entry(a.cluster_id).or_default().push(*m);
        }
    }
    // Merges, to follow an absorbed cluster's members into its survivor.
    let mut absorbed_into: HashMap<ClusterId, Vec<(ClusterId, i64)>> = HashMap::new();
    for e in lifecycle {
        if e.event == LifecycleKind::Merged {
            if let Some(into) = e.into {
                absorbed_into
                    .entry(into)
                    .or_default()
                    .push((e.cluster_id, e.event_time_ms));
            }
        }
    }
    let attribute_cluster = |cluster: ClusterId, from_ms: i64, to_ms: i64| -> Option<usize> {
        let mut tally: BTreeMap<Option<usize>, usize> = BTreeMap::new();
        let mut stack = vec![(cluster, i64::MAX)];
        let mut seen = std::collections::HashSet::new();
        while let Some((c, until)) = stack.pop() {
            if !seen.insert(c) {
                continue;
            }
            for (t, truth) in members.get(&c).into_iter().flatten() {
                if *t >= from_ms && *t <= to_ms.min(until) {
                    let key = match truth {
                        Truth::Organic => None,
                        Truth::Injected(i) => Some(*i),
                    };
                    *tally.entry(key).or_default() += 1;
                }
            }
            for (absorbed, at) in absorbed_into.get(&c).into_iter().flatten() {
                if *at <= to_ms {
                    stack.push((*absorbed, *at));
                }
            }
        }
        tally
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
            .and_then(|(k, _)| k)
    };
    let quiet_ms = settings.detect.launch.quiet_secs * 1000;

    // The first firing record of each alert id.
    let mut scored: Vec<ScoredAlert> = Vec::new();
    let mut seen_ids = std::collections::HashSet::new();
    for r in alerts.iter().filter(|r| r.status == AlertStatus::Firing) {
        if !seen_ids.insert(r.alert_id.clone()) {
            // A re-notification: keep the highest severity on the first record.
            if let Some(s) = scored.iter_mut().find(|s| s.alert_id == r.alert_id) {
                s.severity = s.severity.max(r.severity);
            }
            continue;
        }
        let fired_ms = parse_time(&r.event_time);
        let injection = match (r.cluster_id, r.kind) {
            (Some(c), _) => {
                let window_start = parse_time(&r.window_start);
                attribute_cluster(c, window_start, fired_ms)
            }
            (None, AlertKind::LaunchDrift) => scenario.injections.iter().position(|i| {
                i.shape == Shape::Launch
                    && Some(&i.surface) == r.surface.as_ref()
                    && fired_ms >= i.start_ms
                    && fired_ms <= i.end_ms + quiet_ms
            }),
            (None, _) => None,
        };
        scored.push(ScoredAlert {
            alert_id: r.alert_id.clone(),
            kind: r.kind,
            severity: r.severity,
            fired_ms,
            injection,
        });
    }

    let detects = |a: &ScoredAlert| {
        matches!(
            a.kind,
            AlertKind::CoordinatedCluster | AlertKind::LaunchNewCluster
        )
    };
    let mut injections = Vec::new();
    for (i, inj) in scenario.injections.iter().enumerate() {
        let mine: Vec<&ScoredAlert> = scored.iter().filter(|a| a.injection == Some(i)).collect();
        let mut detected_by: Vec<&'static str> = mine.iter().map(|a| a.kind.as_str()).collect();
        detected_by.sort_unstable();
        detected_by.dedup();
        let first = mine.iter().filter(|a| detects(a)).map(|a| a.fired_ms).min();
        injections.push(InjectionResult {
            shape: inj.shape.as_str(),
            negative: inj.shape.is_negative(),
            accounts: inj.accounts,
            conversations: inj.conversations,
            detected_by,
            max_severity: mine.iter().map(|a| a.severity).max(),
            ttd_from_start_secs: first.map(|t| (t - inj.start_ms) as f64 / 1000.0),
            ttd_from_20th_account_secs: first
                .zip(inj.twentieth_account_ms)
                .map(|(t, twentieth)| (t - twentieth) as f64 / 1000.0),
        });
    }

    let mut detectors = Vec::new();
    for kind in AlertKind::ALL {
        let of_kind: Vec<&ScoredAlert> = scored.iter().filter(|a| a.kind == kind).collect();
        let on = |negative: bool| {
            of_kind
                .iter()
                .filter(|a| {
                    a.injection
                        .is_some_and(|i| scenario.injections[i].shape.is_negative() == negative)
                })
                .count()
        };
        let on_campaigns = on(false);
        detectors.push(DetectorResult {
            kind: kind.as_str(),
            firing_alerts: of_kind.len(),
            on_campaigns,
            on_hard_negatives: on(true),
            on_organic: of_kind.iter().filter(|a| a.injection.is_none()).count(),
            precision: (!of_kind.is_empty()).then(|| on_campaigns as f64 / of_kind.len() as f64),
        });
    }

    let campaigns_at_20: Vec<&InjectionResult> = injections
        .iter()
        .filter(|r| !r.negative && r.accounts >= RECALL_MIN_ACCOUNTS)
        .collect();
    let recall_at_20 = campaigns_at_20
        .iter()
        .filter(|r| r.ttd_from_start_secs.is_some())
        .count() as f64
        / campaigns_at_20.len().max(1) as f64;
    // Precision over the detectors that page for campaigns.
    let paging: Vec<&ScoredAlert> = scored.iter().filter(|a| detects(a)).collect();
    let on_campaigns = paging
        .iter()
        .filter(|a| {
            a.injection
                .is_some_and(|i| !scenario.injections[i].shape.is_negative())
        })
        .count();
    let precision = on_campaigns as f64 / paging.len().max(1) as f64;
    let false_alerts = paging.len() - on_campaigns;
    let median = |mut v: Vec<f64>| -> Option<f64> {
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.total_cmp(b));
        Some(if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        })
    };
    let median_ttd_from_start_secs = median(
        campaigns_at_20
            .iter()
            .filter_map(|r| r.ttd_from_start_secs)
            .collect(),
    );
    let median_ttd_from_20th_account_secs = median(
        campaigns_at_20
            .iter()
            .filter_map(|r| r.ttd_from_20th_account_secs)
            .collect(),
    );
    let critical_on_hard_negatives = scored
        .iter()
        .filter(|a| {
            a.severity == Severity::Critical
                && a.injection
                    .is_some_and(|i| scenario.injections[i].shape.is_negative())
        })
        .count();
    let campaigns_at_20 = campaigns_at_20.len();
    let goals_met = recall_at_20 >= GOAL_RECALL
        && precision >= GOAL_PRECISION
        && median_ttd_from_20th_account_secs.is_some_and(|m| m <= GOAL_MEDIAN_TTD_AFTER_20TH_SECS)
        && critical_on_hard_negatives == 0;
    Report {
        size: size.to_string(),
        seed,
        events: scenario.events.len(),
        organic_events: scenario.organic_events,
        injections,
        detectors,
        recall_at_20,
        campaigns_at_20,
        precision,
        median_ttd_from_start_secs,
        median_ttd_from_20th_account_secs,
        false_alerts_per_million_organic: false_alerts as f64 * 1e6
            / scenario.organic_events.max(1) as f64,
        critical_on_hard_negatives,
        goals_met,
    }
}

pub fn print_report(r: &Report, scenario: &Scenario) {
    let secs = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.0}"));
    println!(
        "clusterwatch eval detection — size {}, seed {}, {} events ({} organic)",
        r.size, r.seed, r.events, r.organic_events
    );
    println!();
    println!("per injection");
    println!(
        "  {:<3} {:<14} {:>8} {:>6} {:>9} {:<44} {:>9} {:>9}",
        "#", "shape", "accounts", "convs", "severity", "detected by", "ttd_start", "ttd_20th"
    );
    for (i, inj) in r.injections.iter().enumerate() {
        let start = scenario.injections[i].start_ms - scenario.start_ms;
        println!(
            "  {:<3} {:<14} {:>8} {:>6} {:>9} {:<44} {:>9} {:>9}   (at +{:.1} h{})",
            i,
            inj.shape,
            inj.accounts,
            inj.conversations,
            inj.max_severity.map_or("-", |s| s.as_str()),
            if inj.detected_by.is_empty() {
                "-".to_string()
            } else {
                inj.detected_by.join(",")
            },
            secs(inj.ttd_from_start_secs),
            secs(inj.ttd_from_20th_account_secs),
            start as f64 / 3_600_000.0,
            if inj.negative { ", hard negative" } else { "" },
        );
    }
    println!();
    println!("per detector (firing alerts)");
    println!(
        "  {:<20} {:>7} {:>10} {:>15} {:>8} {:>10}",
        "kind", "firing", "campaigns", "hard negatives", "organic", "precision"
    );
    for d in &r.detectors {
        println!(
            "  {:<20} {:>7} {:>10} {:>15} {:>8} {:>10}",
            d.kind,
            d.firing_alerts,
            d.on_campaigns,
            d.on_hard_negatives,
            d.on_organic,
            d.precision.map_or("-".to_string(), |p| format!("{p:.3}"))
        );
    }
    println!();
    let mark = |ok: bool| if ok { "ok" } else { "MISSED" };
    println!(
        "recall (campaigns >= {RECALL_MIN_ACCOUNTS} accounts)  {:.3}  of {}   goal >= {GOAL_RECALL}  {}",
        r.recall_at_20,
        r.campaigns_at_20,
        mark(r.recall_at_20 >= GOAL_RECALL)
    );
    println!(
        "precision (coordinated_cluster + launch_new_cluster)  {:.3}   goal >= {GOAL_PRECISION}  {}",
        r.precision,
        mark(r.precision >= GOAL_PRECISION)
    );
    println!(
        "median time to detect  {} s after start, {} s after the 20th account   goal <= {GOAL_MEDIAN_TTD_AFTER_20TH_SECS} s  {}",
        secs(r.median_ttd_from_start_secs),
        secs(r.median_ttd_from_20th_account_secs),
        mark(r
            .median_ttd_from_20th_account_secs
            .is_some_and(|m| m <= GOAL_MEDIAN_TTD_AFTER_20TH_SECS))
    );
    println!(
        "false alerts per million organic events  {:.1}",
        r.false_alerts_per_million_organic
    );
    println!(
        "critical alerts on hard negatives  {}   goal 0  {}",
        r.critical_on_hard_negatives,
        mark(r.critical_on_hard_negatives == 0)
    );
    println!("goals {}", if r.goals_met { "met" } else { "MISSED" });
}
