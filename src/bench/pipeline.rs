//! `clusterwatch bench pipeline`: the whole pipeline end to end, from a real Kafka broker to
//! alerts, once per embedder, with the hashing embedder as the baseline in the same invocation.
//!
//! Per embedder, on fresh topics, a `clusterwatch run` child (see [`super::kafka_run`]) is
//! measured in two phases, because one load cannot show both figures honestly:
//! 1. **Throughput**: after a warm-up batch has been applied (group joined, model loaded),
//!    `--events` messages are produced in one burst; the sustained rate is the events the child
//!    applied per second until the burst is drained. Stage time shares come from the child's
//!    `clusterwatch_stage_duration_seconds` sums over the same window.
//! 2. **Latency**: traffic is produced at `--latency-load` times that rate for
//!    `--latency-seconds`, so the pipeline keeps up, and p50/p99 come from the child's
//!    `clusterwatch_event_cluster_latency_seconds` histogram over this phase alone (a backlog's
//!    latency is only its queueing time).
//!
//! Peak RSS is the child's VmHWM at the end; alerts are the firing transitions it counted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::kafka_run::{
    latency_between, BenchTopics, ChildSpec, RunChild, Scrape, TrafficProducer, WorkDir,
};

/// What to run; see `clusterwatch bench pipeline --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct PipelineBenchArgs {
    /// Kafka bootstrap servers of the real broker.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    pub bootstrap: String,
    /// Embedders to measure (`hashing` is the baseline; one whose model files are absent is
    /// skipped with a note).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hashing,static,transformer,onnx"
    )]
    pub embedders: Vec<String>,
    /// Messages in the throughput phase.
    #[arg(long, default_value_t = 20_000)]
    pub events: u64,
    /// Partitions of each bench topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The latency phase produces at this fraction of the measured throughput.
    #[arg(long, default_value_t = 0.5)]
    pub latency_load: f64,
    /// Length of the latency phase.
    #[arg(long, default_value_t = 15.0)]
    pub latency_seconds: f64,
    /// The transformer's directory (the static model is read from beside it).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Also deliver alerts to this Alertmanager (e.g. the one `scripts/services.sh` starts).
    #[arg(long)]
    pub alertmanager_url: Option<String>,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Give up on one phase after this long.
    #[arg(long, default_value_t = 1800)]
    pub timeout_secs: u64,
    /// Keep the bench topics (they are deleted by default).
    #[arg(long)]
    pub keep_topics: bool,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// The throughput phase's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub events: u64,
    /// Events applied before the clock started (see [`THROUGHPUT_WARM_UP_EVENTS`]).
    pub warm_up_events: u64,
    pub events_per_second: f64,
    /// Stage → share of the summed stage time (the source's time is its wait on a full
    /// pipeline, so it is left out).
    pub stage_share: Vec<(String, f64)>,
}

/// One embedder's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineFigures {
    pub embedder: String,
    pub throughput: Throughput,
    /// Produce rate of the latency phase, events/s.
    pub latency_rate: f64,
    pub latency_events: u64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub peak_rss_mib: f64,
    pub alerts_fired: u64,
    pub produced: u64,
    pub consumed: u64,
    pub processed: u64,
    /// Sum of the group's committed offsets after the child stopped, and of the end offsets.
    pub committed: i64,
    pub end_offsets: i64,
}

impl PipelineFigures {
    pub fn lost(&self) -> i64 {
        self.produced as i64 - self.processed as i64
    }
}

#[derive(Debug, serde::Serialize)]
struct Report {
    figures: Vec<PipelineFigures>,
    skipped: Vec<(String, String)>,
}

/// Stages whose time is work (the source's is waiting on the stages behind it).
fn stage_share(before: &Scrape, after: &Scrape) -> Vec<(String, f64)> {
    let earlier = before.stage_seconds();
    let spent: Vec<(String, f64)> = after
        .stage_seconds()
        .into_iter()
        .filter(|(stage, _)| stage != "source")
        .map(|(stage, seconds)| {
            let previous = earlier
                .iter()
                .find(|(s, _)| *s == stage)
                .map_or(0.0, |(_, v)| *v);
            (stage, (seconds - previous).max(0.0))
        })
        .collect();
    let total: f64 = spent.iter().map(|(_, s)| s).sum();
    let mut share: Vec<(String, f64)> = spent
        .into_iter()
        .filter(|(_, s)| *s > 0.0)
        .map(|(stage, s)| (stage, if total > 0.0 { s / total } else { 0.0 }))
        .collect();
    share.sort_by(|a, b| b.1.total_cmp(&a.1));
    share
}

/// Events produced and drained before the throughput clock starts: the child has then joined
/// its group, loaded its embedder and applied at least one event, so the measured window holds
/// only steady work, and every measured event is decoded inside it (stage shares cover all
/// stages even when the machine is fast enough to drain a small batch between two scrapes).
pub const THROUGHPUT_WARM_UP_EVENTS: u64 = 100;

/// Starts the child, warms it up, then produces `events` messages and times how fast it applies
/// them. Returns the running child (for a following phase), the producer and the figures.
pub async fn measure_throughput(
    topics: &BenchTopics,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
    events: u64,
    seed: u64,
    timeout: Duration,
) -> anyhow::Result<(RunChild, TrafficProducer, Throughput)> {
    let mut producer = TrafficProducer::new(&topics.bootstrap, &topics.topic, seed)?;
    let mut child = RunChild::start(topics, spec, work_dir)?;
    child.wait_ready(Duration::from_secs(300)).await?;
    producer.produce_count(THROUGHPUT_WARM_UP_EVENTS).await?;
    let first = child
        .wait_until("the warm-up events to be processed", timeout, |s| {
            s.applied() >= THROUGHPUT_WARM_UP_EVENTS
        })
        .await?;
    // The clock includes producing the batch: a real broker takes it far faster than any
    // embedder applies it, and starting the clock later would credit the child with work it
    // did while the batch was being written.
    let started = Instant::now();
    producer.produce_count(events).await?;
    let target = first.applied() + events;
    let last = child
        .wait_until("the batch to drain", timeout, |s| s.applied() >= target)
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    let drained = last.applied().saturating_sub(first.applied());
    let throughput = Throughput {
        events,
        warm_up_events: THROUGHPUT_WARM_UP_EVENTS,
        events_per_second: drained as f64 / seconds.max(1e-3),
        stage_share: stage_share(&first, &last),
    };
    Ok((child, producer, throughput))
}

async fn measure(
    args: &PipelineBenchArgs,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
) -> anyhow::Result<PipelineFigures> {
    let topics = BenchTopics::create(
        &args.bootstrap,
        &format!("bench-pipeline-{}", spec.embedder),
        args.partitions,
    )
    .await?;
    let result = measure_on(args, spec, work_dir, &topics).await;
    if !args.keep_topics {
        if let Err(e) = topics.delete().await {
            eprintln!("bench pipeline: could not delete the bench topics: {e:#}");
        }
    }
    result
}

async fn measure_on(
    args: &PipelineBenchArgs,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
    topics: &BenchTopics,
) -> anyhow::Result<PipelineFigures> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let (mut child, mut producer, throughput) =
        measure_throughput(topics, spec, work_dir, args.events, args.seed, timeout).await?;
    eprintln!(
        "bench pipeline: {}: {:.0} events/s draining {} events; latency phase next",
        spec.embedder, throughput.events_per_second, args.events
    );

    let latency_rate = (throughput.events_per_second * args.latency_load).max(1.0);
    let before = child.scrape().await?;
    producer
        .produce_at_rate(latency_rate, Duration::from_secs_f64(args.latency_seconds))
        .await?;
    let produced = producer.produced();
    let after = child
        .wait_until("the latency phase to be processed", timeout, |s| {
            s.applied() >= produced
        })
        .await?;
    let latency = latency_between(&before, &after);
    let (_, peak_rss_mib) = child.memory_mib();
    child.stop(Duration::from_secs(120)).await?;
    let (committed, end_offsets) = topics.committed_and_end().await?;
    Ok(PipelineFigures {
        embedder: spec.embedder.clone(),
        throughput,
        latency_rate,
        latency_events: latency.count(),
        p50_seconds: latency.quantile(0.5),
        p99_seconds: latency.quantile(0.99),
        peak_rss_mib,
        alerts_fired: after.alerts_fired(),
        produced,
        consumed: after.consumed(),
        processed: after.processed(),
        committed,
        end_offsets,
    })
}

/// Milliseconds, or a dash without observations.
pub fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
}

pub async fn run(args: &PipelineBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.events > 0, "--events must be positive");
    anyhow::ensure!(
        args.latency_load > 0.0 && args.latency_seconds > 0.0,
        "--latency-load and --latency-seconds must be positive"
    );
    let mut work_dir = WorkDir::new("clusterwatch-bench-pipeline")?;
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    for embedder in &args.embedders {
        let spec = ChildSpec {
            embedder: embedder.clone(),
            model_dir: args.model_dir.clone(),
            alertmanager_url: args.alertmanager_url.clone(),
            snapshot_dir: None,
        };
        let why_not = match embedder.as_str() {
            "hashing" | "static" | "transformer" | "onnx" => {
                spec.missing_files().map(|m| format!("missing {m}"))
            }
            "http" => Some("needs an embedding service; not benchmarked here".into()),
            other => Some(format!("unknown embedder {other:?}")),
        };
        if let Some(reason) = why_not {
            eprintln!("bench pipeline: skipping {embedder}: {reason}");
            skipped.push((embedder.clone(), reason));
            continue;
        }
        eprintln!(
            "bench pipeline: {embedder}: producing {} events to a fresh topic",
            args.events
        );
        match measure(args, &spec, &work_dir.path).await {
            Ok(f) => figures.push(f),
            Err(e) => {
                // Keep the child's log for the post-mortem.
                work_dir.keep = true;
                let log = work_dir.path.join(format!("{embedder}.log"));
                anyhow::bail!("{embedder}: {e:#} (child log: {})", log.display());
            }
        }
    }
    print_report(args, &figures, &skipped);
    if let Some(path) = &args.json_out {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&Report {
                figures: figures.clone(),
                skipped,
            })?,
        )?;
    }
    anyhow::ensure!(
        figures.iter().all(|f| f.lost() == 0),
        "events were lost: produced and processed differ"
    );
    Ok(())
}

fn print_report(
    args: &PipelineBenchArgs,
    figures: &[PipelineFigures],
    skipped: &[(String, String)],
) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "bench pipeline: real Kafka at {}, {} partitions, {} events drained per embedder, then {:.0} s at {:.0}% of that rate for latency; {} cores",
        args.bootstrap,
        args.partitions,
        args.events,
        args.latency_seconds,
        args.latency_load * 100.0,
        cores
    );
    println!(
        "{:<12} {:>10} {:>12} {:>9} {:>9} {:>10} {:>7} {:>9} {:>5}",
        "embedder",
        "events/s",
        "lat. rate/s",
        "p50 ms",
        "p99 ms",
        "peak RSS",
        "alerts",
        "produced",
        "lost"
    );
    for f in figures {
        println!(
            "{:<12} {:>10.0} {:>12.0} {:>9} {:>9} {:>7.0} MiB {:>7} {:>9} {:>5}",
            f.embedder,
            f.throughput.events_per_second,
            f.latency_rate,
            ms(f.p50_seconds),
            ms(f.p99_seconds),
            f.peak_rss_mib,
            f.alerts_fired,
            f.produced,
            f.lost()
        );
    }
    println!("stage time share (throughput phase; source excluded: its time is the wait on the stages behind it)");
    for f in figures {
        let shares: Vec<String> = f
            .throughput
            .stage_share
            .iter()
            .map(|(stage, share)| format!("{stage} {:.1}%", share * 100.0))
            .collect();
        println!("{:<12} {}", f.embedder, shares.join("  "));
    }
    for f in figures {
        if f.committed != f.end_offsets {
            println!(
                "{}: committed offsets {} of {} at the end",
                f.embedder, f.committed, f.end_offsets
            );
        }
    }
    for (embedder, reason) in skipped {
        println!("{embedder:<12} skipped: {reason}");
    }
}
