//! `clusterwatch bench clustering`: how fast the cluster stage assigns events, per index, at a
//! given number of live clusters, with the embedder excluded (vectors are given).
//!
//! Each run primes a fresh `ClusterState` with one event per topic (so the live cluster count is
//! the topic count), then times `ClusterState::assign` — nearest-centroid search plus every
//! statistic a join updates — on one thread. The HNSW index rebuilds on a background thread as in
//! production; the figures say so. Optionally it also streams a labelled set through both
//! clusterwatch and BERTopic's online mode (`scripts/bertopic_online.py`) and prints the speed
//! ratio and both NMIs, and it can measure peak RSS over a long stream whose topics churn.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;

use super::synthetic::TopicSpace;
use crate::cluster::index::{CentroidIndex, ExactScanIndex, HnswIndex};
use crate::cluster::lifecycle::LifecycleKind;
use crate::cluster::{Assignment, ClusterState};
use crate::config::{ClusterSettings, IndexKind};
use crate::event::EventMeta;
use crate::summarize::Summary;

/// What to run; see `clusterwatch bench clustering --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusteringBenchArgs {
    /// Live cluster counts to measure at.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,20000")]
    pub clusters: Vec<usize>,
    /// Indexes to measure: `exact-plain` is the exact scan without its int8 screen
    /// (`cluster.exact_screen = false`), the baseline for `exact`; `exact-noprefix` is the
    /// screen without its prefix pass (`cluster.exact_prefix = false`).
    #[arg(long, value_delimiter = ',', default_value = "exact-plain,exact,hnsw")]
    pub indexes: Vec<String>,
    /// Vector dimension (all-MiniLM-L6-v2 gives 384).
    #[arg(long, default_value_t = 384)]
    pub dimension: usize,
    /// Events handed to the cluster state together (the pipeline takes up to 64 waiting events
    /// at once); 1 measures one query per event. Each size is measured for each batch.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub batch: Vec<usize>,
    /// Minimum time spent measuring each (index, size) cell.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Also compare with BERTopic online on this many labelled events (0 skips it). Needs
    /// `scripts/bertopic-venv.sh` to have been run.
    #[arg(long, default_value_t = 20_000)]
    pub bertopic_events: usize,
    /// Topics (labels) in the BERTopic comparison set.
    #[arg(long, default_value_t = 200)]
    pub bertopic_topics: usize,
    /// Python interpreter with BERTopic installed.
    #[arg(long, default_value = ".cache/bertopic-venv/bin/python")]
    pub python: PathBuf,
    /// Stream lengths after which to report peak RSS (topics churn so live clusters plateau;
    /// empty skips it). E.g. `1000000,10000000`.
    #[arg(long, value_delimiter = ',')]
    pub rss_events: Vec<u64>,
    /// Also time the topic grouping of a hierarchy rebuild over that many micro-clusters, per
    /// `--clusters` size, with the int8 screen against the plain scan (same groups required).
    #[arg(long)]
    pub hierarchy: bool,
    /// Also run the exact index's plain, screened and prefix-screened paths over this many demo
    /// conversations summarized and embedded by the static embedder (0 skips it; needs the
    /// distilled model from `scripts/setup.sh`).
    #[arg(long, default_value_t = 0)]
    pub traffic_events: usize,
}

/// Cosine of a synthetic member to its topic centre: members of one topic then sit at about
/// 0.72 from each other, above the default join threshold 0.62, and topics at about 0.
const MEMBER_COSINE: f32 = 0.85;
/// Goal from issue 3.
const GOAL_EVENTS_PER_SEC: f64 = 100_000.0;

pub fn run(args: &ClusteringBenchArgs) -> anyhow::Result<()> {
    println!(
        "clustering bench: dimension {}, assignment + statistics on one thread, vectors given \
         (embedder excluded); HNSW rebuilds run on a background thread",
        args.dimension
    );
    println!(
        "{:<14} {:>5} {:>13} {:>9} {:>8} {:>11} {:>10} {:>12}",
        "index", "batch", "live_clusters", "events", "seconds", "events/s", "recall@1", "to 100k/s"
    );
    for &clusters in &args.clusters {
        for (name, kind, screen, prefix) in INDEXES {
            if !args.indexes.iter().any(|i| i == name) {
                continue;
            }
            for &batch in &args.batch {
                if batch > 1 && kind == IndexKind::Hnsw {
                    // No batched path: it would measure the same as batch 1.
                    continue;
                }
                let settings = ClusterSettings {
                    index: kind,
                    exact_screen: screen,
                    exact_prefix: prefix,
                    ..Default::default()
                };
                let cell = measure_speed(settings, clusters, args.dimension, args.seconds, batch)?;
                println!(
                    "{:<14} {:>5} {:>13} {:>9} {:>8.2} {:>11.0} {:>10} {:>11.1}x",
                    name,
                    batch,
                    cell.live_clusters,
                    cell.events,
                    cell.seconds,
                    cell.events_per_sec(),
                    cell.recall
                        .map_or_else(|| "exact".to_string(), |r| format!("{r:.4}")),
                    GOAL_EVENTS_PER_SEC / cell.events_per_sec()
                );
            }
        }
    }
    if args.hierarchy {
        time_hierarchy_grouping(&args.clusters, args.dimension)?;
    }
    if args.traffic_events > 0 {
        super::traffic_index::compare_on_traffic(args.traffic_events)?;
    }
    if args.bertopic_events > 0 {
        compare_with_bertopic(args)?;
    }
    if let Some(&longest) = args.rss_events.iter().max() {
        rss_over_stream(longest, &args.rss_events, args.dimension)?;
    }
    Ok(())
}

/// Times the agglomeration a hierarchy rebuild runs over `n` micro-clusters (one per row of
/// `clusters`), screened and plain, on vectors drawn from n/4 synthetic topics: a background
/// thread's work every `rebuild_every_events`, which competes with the pipeline for the cores.
fn time_hierarchy_grouping(clusters: &[usize], dimension: usize) -> anyhow::Result<()> {
    use crate::cluster::hierarchy::{agglomerate_with, LevelItem};
    let settings = crate::config::HierarchySettings::default();
    println!(
        "hierarchy grouping (topic threshold {}, {} refinement rounds, one thread):",
        settings.topic_threshold, settings.refine_rounds
    );
    println!(
        "{:>13} {:>7} {:>13} {:>15} {:>8}",
        "micro-clusters", "topics", "plain s", "screened s", "ratio"
    );
    for &n in clusters {
        let drawn = TopicSpace::new((n / 4).max(1), dimension, 0.55, 3).level_items(n, 7);
        let items: Vec<LevelItem<'_>> = drawn.iter().map(|i| i.as_level_item()).collect();
        let time = |screen: bool| {
            let start = Instant::now();
            let grouping = agglomerate_with(
                &items,
                settings.topic_threshold,
                settings.refine_rounds,
                screen,
            );
            (grouping, start.elapsed().as_secs_f64())
        };
        let (plain, plain_secs) = time(false);
        let (screened, screened_secs) = time(true);
        anyhow::ensure!(
            plain.group_of == screened.group_of,
            "the screened grouping differs from the plain one at {n} micro-clusters"
        );
        println!(
            "{:>13} {:>7} {:>13.3} {:>15.3} {:>7.2}x",
            n,
            plain.centroids.len(),
            plain_secs,
            screened_secs,
            plain_secs / screened_secs.max(1e-9)
        );
    }
    Ok(())
}

/// The `--indexes` names: (name, index, int8 screen in front of the exact scan, its prefix
/// pass).
const INDEXES: [(&str, IndexKind, bool, bool); 4] = [
    ("exact-plain", IndexKind::Exact, false, false),
    ("exact-noprefix", IndexKind::Exact, true, false),
    ("exact", IndexKind::Exact, true, true),
    ("hnsw", IndexKind::Hnsw, true, true),
];

struct SpeedCell {
    live_clusters: usize,
    events: u64,
    seconds: f64,
    recall: Option<f64>,
}

impl SpeedCell {
    fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }
}

/// A synthetic event: one account in 50,000, one conversation each, 10 ms apart in event time.
struct EventMaker {
    next: u64,
    start_ms: i64,
    summary: Summary,
}

impl EventMaker {
    fn new() -> Self {
        EventMaker {
            next: 0,
            start_ms: 1_800_000_000_000,
            summary: Summary {
                request: "help me write a short message to a colleague".into(),
                task: "writing".into(),
                language: "en".into(),
                concern: 1,
                refused: false,
            },
        }
    }

    fn meta(&mut self, account: u64) -> EventMeta {
        self.next += 1;
        EventMeta {
            conversation_id: String::new(),
            conversation_key: self.next,
            account_key: account,
            org_key: None,
            event_time_ms: self.start_ms + self.next as i64 * 10,
            surface: "chat".into(),
            classifier_flagged: false,
            template: 0,
            restricted_account: None,
        }
    }
}

fn measure_speed(
    settings: ClusterSettings,
    topics: usize,
    dimension: usize,
    min_seconds: f64,
    batch: usize,
) -> anyhow::Result<SpeedCell> {
    let mut space = TopicSpace::new(topics, dimension, MEMBER_COSINE, 42);
    let kind = settings.index;
    let mut state = ClusterState::new(settings, dimension, "bench").with_background_index_builds();
    let mut events = EventMaker::new();
    // One founding member per topic, loaded in prefetched batches (not timed).
    for first in (0..topics).step_by(64) {
        let members: Vec<Vec<f32>> = (first..(first + 64).min(topics))
            .map(|topic| space.member(topic))
            .collect();
        let refs: Vec<&[f32]> = members.iter().map(|v| v.as_slice()).collect();
        state.prefetch(&refs);
        for (offset, v) in members.iter().enumerate() {
            let meta = events.meta((first + offset) as u64 % 50_000);
            state.assign(0, &meta, &events.summary, v)?;
        }
    }
    // Measure the steady state, not the first graph builds after a cold start.
    state.settle_index();
    // Pre-generate the measured vectors so generating them is not timed.
    const CHUNK: usize = 2_000;
    let chunk: Vec<(EventMeta, Vec<f32>)> = (0..CHUNK)
        .map(|_| {
            let topic = space.random_topic();
            let account = space.rng().gen_range(0..50_000u64);
            (events.meta(account), space.member(topic))
        })
        .collect();
    let mut measured = 0u64;
    let started = Instant::now();
    let budget = Duration::from_secs_f64(min_seconds);
    let mut round = 0i64;
    while started.elapsed() < budget || measured == 0 {
        for group in chunk.chunks(batch.max(1)) {
            let vectors: Vec<&[f32]> = group.iter().map(|(_, v)| v.as_slice()).collect();
            state.prefetch(&vectors);
            for (meta, v) in group {
                let mut meta = meta.clone();
                // Each round re-sends the chunk as new conversations, later in event time.
                meta.conversation_key += (round as u64 + 1) << 40;
                meta.event_time_ms += round * CHUNK as i64 * 10;
                state.assign(0, &meta, &events.summary, v)?;
                // Archive and merge passes, as the pipeline runs them.
                if state.maintenance_due() {
                    state.maintain();
                }
                measured += 1;
            }
        }
        round += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let recall = match kind {
        IndexKind::Exact => None,
        IndexKind::Hnsw => Some(recall_at_1(&mut space, &state, dimension)),
    };
    Ok(SpeedCell {
        live_clusters: state.live_clusters(),
        events: measured,
        seconds,
        recall,
    })
}

/// Recall@1 of a deterministic HNSW index over the state's centroids against the exact scan, on
/// fresh members of random topics.
fn recall_at_1(space: &mut TopicSpace, state: &ClusterState, dimension: usize) -> f64 {
    let mut exact = ExactScanIndex::new(dimension);
    // No graph while loading (that would rebuild over and over); one build at the end.
    let mut hnsw = HnswIndex::new(
        dimension,
        crate::cluster::index::hnsw::HnswSettings {
            min_graph_size: usize::MAX,
            ..ClusterSettings::default().hnsw
        },
        true,
    );
    for c in state.clusters() {
        exact.upsert(c.id, &c.centroid);
        hnsw.upsert(c.id, &c.centroid);
    }
    hnsw.rebuild_now();
    let queries = 2_000;
    let mut agree = 0;
    for _ in 0..queries {
        let topic = space.random_topic();
        let q = space.member(topic);
        agree += usize::from(exact.nearest(&q).map(|x| x.0) == hnsw.nearest(&q).map(|x| x.0));
    }
    agree as f64 / queries as f64
}

/// Streams one labelled set through clusterwatch and through BERTopic online, same vectors.
fn compare_with_bertopic(args: &ClusteringBenchArgs) -> anyhow::Result<()> {
    let n = args.bertopic_events;
    let dimension = args.dimension;
    let mut space = TopicSpace::new(args.bertopic_topics, dimension, MEMBER_COSINE, 7);
    let mut vectors = Vec::with_capacity(n * dimension);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let topic = space.random_topic();
        vectors.extend(space.member(topic));
        labels.push(topic as u32);
    }

    let mut state = ClusterState::new(ClusterSettings::default(), dimension, "bench")
        .with_background_index_builds();
    let mut events = EventMaker::new();
    let mut predicted = Vec::with_capacity(n);
    let started = Instant::now();
    // As the pipeline runs: waiting events prefetched 64 at a time, maintenance (merges,
    // splits, archive) at its fixed points; merged or split ids are resolved afterwards.
    let mut merged_into: std::collections::HashMap<u64, u64> = Default::default();
    for (b, batch) in vectors.chunks(dimension * 64).enumerate() {
        let refs: Vec<&[f32]> = batch.chunks_exact(dimension).collect();
        state.prefetch(&refs);
        for (j, v) in refs.iter().enumerate() {
            let meta = events.meta((b * 64 + j) as u64 % 50_000);
            let id = match state.assign(0, &meta, &events.summary, v)? {
                Assignment::Founded { cluster_id } | Assignment::Joined { cluster_id, .. } => {
                    cluster_id
                }
                Assignment::Duplicate => anyhow::bail!("synthetic conversation ids are unique"),
            };
            predicted.push(id);
            if state.maintenance_due() {
                for e in state.maintain() {
                    if let (LifecycleKind::Merged, Some(into)) = (e.event, e.into) {
                        merged_into.insert(e.cluster_id, into);
                    }
                }
            }
        }
    }
    let ours_seconds = started.elapsed().as_secs_f64();
    let predicted: Vec<u32> = predicted
        .into_iter()
        .map(|mut id| {
            while let Some(next) = merged_into.get(&id) {
                id = *next;
            }
            id as u32
        })
        .collect();
    let ours = crate::eval::metrics::score(&labels, &predicted)?;

    let dir = tempfile_dir()?;
    let vectors_path = dir.join("vectors.f32");
    let docs_path = dir.join("docs.txt");
    let labels_path = dir.join("labels.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&vectors_path)?);
        for x in &vectors {
            f.write_all(&x.to_le_bytes())?;
        }
        let mut d = std::io::BufWriter::new(std::fs::File::create(&docs_path)?);
        let mut l = std::io::BufWriter::new(std::fs::File::create(&labels_path)?);
        for (i, label) in labels.iter().enumerate() {
            // BERTopic needs text for its topic words; give it a skeleton per topic.
            writeln!(d, "request about subject {label} variant {}", i % 7)?;
            writeln!(l, "{label}")?;
        }
    }
    println!(
        "\nonline clustering of {n} labelled events ({} topics, dimension {dimension}), same vectors:",
        args.bertopic_topics
    );
    println!(
        "{:<22} {:>10} {:>8} {:>8} {:>8}",
        "system", "events/s", "NMI", "AMI", "clusters"
    );
    let ours_rate = n as f64 / ours_seconds;
    println!(
        "{:<22} {:>10.0} {:>8.4} {:>8.4} {:>8}",
        format!(
            "clusterwatch ({})",
            match ClusterSettings::default().index {
                IndexKind::Exact => "exact",
                IndexKind::Hnsw => "hnsw",
            }
        ),
        ours_rate,
        ours.nmi,
        ours.ami,
        ours.clusters
    );
    let result = run_bertopic(args, &vectors_path, &docs_path, &labels_path, dimension);
    let _ = std::fs::remove_dir_all(&dir);
    match result {
        Ok(theirs) => {
            println!(
                "{:<22} {:>10.0} {:>8.4} {:>8.4} {:>8}",
                format!("bertopic {} online", theirs.version),
                theirs.events_per_sec,
                theirs.nmi,
                theirs.ami,
                theirs.topics
            );
            println!(
                "speed ratio clusterwatch / bertopic: {:.1}x (goal 50x); NMI {:.4} vs {:.4} ({})",
                ours_rate / theirs.events_per_sec,
                ours.nmi,
                theirs.nmi,
                if ours.nmi >= theirs.nmi {
                    "at or above"
                } else {
                    "below"
                }
            );
        }
        Err(e) => println!("bertopic: not measured: {e:#} (run scripts/bertopic-venv.sh first)"),
    }
    Ok(())
}

struct BertopicResult {
    version: String,
    events_per_sec: f64,
    nmi: f64,
    ami: f64,
    topics: u64,
}

fn run_bertopic(
    args: &ClusteringBenchArgs,
    vectors: &Path,
    docs: &Path,
    labels: &Path,
    dimension: usize,
) -> anyhow::Result<BertopicResult> {
    let script = Path::new("scripts/bertopic_online.py");
    anyhow::ensure!(args.python.exists(), "{} not found", args.python.display());
    let output = std::process::Command::new(&args.python)
        .arg(script)
        .arg("--vectors")
        .arg(vectors)
        .arg("--dim")
        .arg(dimension.to_string())
        .arg("--docs")
        .arg(docs)
        .arg("--labels")
        .arg(labels)
        .arg("--batch")
        .arg("1000")
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "bertopic_online.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );
    let line = String::from_utf8_lossy(&output.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())?;
    let number = |k: &str| v.get(k).and_then(|x| x.as_f64()).unwrap_or(f64::NAN);
    Ok(BertopicResult {
        version: v
            .get("bertopic_version")
            .and_then(|x| x.as_str())
            .unwrap_or("?")
            .to_string(),
        events_per_sec: number("events_per_sec"),
        nmi: number("nmi"),
        ami: number("ami"),
        topics: v.get("topics").and_then(|x| x.as_u64()).unwrap_or(0),
    })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("clusterwatch-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Decay half-life of the RSS stream, in event seconds: events are 10 ms apart, so this is
/// 60,000 events, and a cluster whose topic stopped dies about 4–15 half-lives later.
const RSS_HALF_LIFE_SECS: i64 = 600;

/// Topics active at any time in the RSS stream; every 100,000 events a tenth of them is replaced
/// by new ones, so clusters keep being born and dying and the live count plateaus.
const RSS_ACTIVE_TOPICS: usize = 1_000;

/// Streams `events` synthetic events whose topics churn, with decay, archiving and merging as
/// the pipeline runs them (prefetched in batches of 64), and prints peak and current RSS and the
/// live cluster count every million events and at each of `checkpoints`.
fn rss_over_stream(events: u64, checkpoints: &[u64], dimension: usize) -> anyhow::Result<()> {
    const BATCH: u64 = 64;
    let mut space = TopicSpace::new(RSS_ACTIVE_TOPICS * 4, dimension, MEMBER_COSINE, 11);
    let settings = ClusterSettings {
        decay_half_life_secs: RSS_HALF_LIFE_SECS,
        ..ClusterSettings::default()
    };
    let mut state = ClusterState::new(settings, dimension, "bench");
    let mut maker = EventMaker::new();
    let mut first_topic = 0usize;
    let started = Instant::now();
    println!(
        "RSS over a churning stream ({RSS_ACTIVE_TOPICS} active topics, a tenth replaced every \
         100,000 events; events 10 ms apart; decay half-life {RSS_HALF_LIFE_SECS} s of event \
         time; archive and merge on):"
    );
    println!(
        "{:>11} {:>14} {:>14} {:>14} {:>9}",
        "events", "peak RSS MB", "RSS now MB", "live clusters", "seconds"
    );
    let mut done = 0u64;
    while done < events {
        let n = BATCH.min(events - done);
        let mut batch = Vec::with_capacity(n as usize);
        for i in done..done + n {
            if i > 0 && i % 100_000 == 0 {
                first_topic = (first_topic + RSS_ACTIVE_TOPICS / 10) % (RSS_ACTIVE_TOPICS * 3);
            }
            let topic = first_topic + space.rng().gen_range(0..RSS_ACTIVE_TOPICS);
            let account = space.rng().gen_range(0..50_000u64);
            batch.push((maker.meta(account), space.member(topic)));
        }
        let refs: Vec<&[f32]> = batch.iter().map(|(_, v)| v.as_slice()).collect();
        state.prefetch(&refs);
        for (meta, v) in &batch {
            state.assign(0, meta, &maker.summary, v)?;
            if state.maintenance_due() {
                state.maintain();
            }
            done += 1;
            if done % 1_000_000 == 0 || checkpoints.contains(&done) {
                let (peak, now) = rss_kb();
                println!(
                    "{:>11} {:>14.1} {:>14.1} {:>14} {:>9.0}",
                    done,
                    peak as f64 / 1024.0,
                    now as f64 / 1024.0,
                    state.live_clusters(),
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(())
}

/// (VmHWM, VmRSS) in kB from /proc/self/status (Linux); zeros elsewhere.
fn rss_kb() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}
