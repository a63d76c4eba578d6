//! `clusterwatch bench soak`: load held for minutes against the real Kafka broker, to show that
//! memory stays flat, lag stays bounded and drains, and nothing is lost (issue 7, "Load").
//!
//! A `clusterwatch run` child consumes a fresh topic while this process produces the demo traffic
//! at `--rate` (default: `--rate-multiplier` times the throughput `bench pipeline` measures for
//! the embedder, measured first on its own topic). Every `--sample-secs` it records the child's
//! RSS, the allocator's live and kept-free heap, consumer lag and progress, and the size of its
//! state (live micro-clusters and the last snapshot, written as in production), so that memory
//! growth can be told apart from state growth and from memory the allocator did not give back; when production ends it waits for the lag to drain, then
//! prints the samples, event→cluster latency, produced against processed, and verdicts.
//!
//! Not part of CI: it is sized in minutes. `scripts/soak.sh` wraps it.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::kafka_run::{
    latency_between, BenchTopics, ChildSpec, RunChild, Scrape, TrafficProducer, WorkDir,
};
use super::pipeline::ms;

/// How long, once every event is processed, the committed offsets may take to catch up: one
/// snapshot interval (the child's default) plus the commit and statistics cadences.
const COMMIT_WAIT: Duration =
    Duration::from_secs(crate::config::SnapshotSettings::DEFAULT_INTERVAL_SECS + 15);

const MIB: f64 = 1024.0 * 1024.0;

/// Events produced and processed before the timed production starts.
const WARM_UP_EVENTS: u64 = 200;

/// The backlog is bounded when its fitted growth over the second half of production is at most
/// this fraction of the produce rate.
const LAG_SLOPE_TOLERANCE: f64 = 0.1;

/// What to run; see `clusterwatch bench soak --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Kafka bootstrap servers of the real broker.
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:19092")]
    pub bootstrap: String,
    /// The embedder the child runs: hashing, static, transformer or onnx.
    #[arg(long, default_value = "static")]
    pub embedder: String,
    /// How long to produce.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Produce rate in events/s; without it, `--rate-multiplier` times the measured throughput.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 2.0)]
    pub rate_multiplier: f64,
    /// Messages drained to measure the throughput the rate is derived from.
    #[arg(long, default_value_t = 20_000)]
    pub calibration_events: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    pub sample_secs: f64,
    /// Partitions of the soak topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// The transformer's directory (the static model is read from beside it).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Longest wait for the lag to drain after production ends.
    #[arg(long, default_value_t = 3600)]
    pub drain_timeout_secs: u64,
    /// RSS is called flat when its fitted growth over the second half of production is at most
    /// this fraction of its mean there.
    #[arg(long, default_value_t = 0.05)]
    pub rss_tolerance: f64,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 11)]
    pub seed: u64,
    /// Keep the soak topics (they are deleted by default: a soak writes gigabytes).
    #[arg(long)]
    pub keep_topics: bool,
    /// Also write the samples and verdicts as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// One row of the table over time.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakSample {
    pub seconds: f64,
    pub producing: bool,
    pub produced: u64,
    pub consumed: u64,
    pub processed: u64,
    /// librdkafka's consumer lag summed over partitions (end offset minus committed).
    pub lag: i64,
    /// Produced and acknowledged by the broker, not yet processed by the child.
    pub backlog: i64,
    pub rss_mib: f64,
    /// The allocator's live heap and the freed memory it keeps (0 without glibc): whether RSS
    /// grows with live data or with memory the allocator did not give back.
    pub heap_in_use_mib: f64,
    pub heap_free_mib: f64,
    /// Live micro-clusters: what the state is allowed to grow with.
    pub micro_clusters: u64,
    /// Size of the child's last snapshot, the serialised state, in MiB.
    pub snapshot_mib: f64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    pub embedder: String,
    pub rate: f64,
    pub calibrated_events_per_second: Option<f64>,
    pub produce_seconds: f64,
    pub drain_seconds: f64,
    pub samples: Vec<SoakSample>,
    pub produced: u64,
    pub consumed: u64,
    pub processed: u64,
    pub committed: i64,
    pub end_offsets: i64,
    pub p50_seconds: Option<f64>,
    pub p99_seconds: Option<f64>,
    pub latency_events: u64,
    pub peak_rss_mib: f64,
    /// Least-squares RSS slope over the second half of production, MiB per minute.
    pub rss_slope_mib_per_min: f64,
    pub rss_second_half_mean_mib: f64,
    pub rss_flat: bool,
    /// Least-squares backlog slope over the second half of production, events per second.
    pub lag_slope_per_second: f64,
    /// Most events produced and not yet processed at a sample.
    pub max_backlog: i64,
    /// Most events past the committed offsets at a sample: with snapshots on, offsets are
    /// committed once a snapshot holds their events, so this trails by up to one interval.
    pub max_committed_lag: i64,
    /// Live micro-clusters and the last snapshot's size at the end: what the memory is for.
    pub final_micro_clusters: u64,
    pub final_snapshot_mib: f64,
    /// The allocator at the end: live heap and freed memory kept (MiB), and the heap trimmer's
    /// trims and their total wall time.
    pub final_heap_in_use_mib: f64,
    pub final_heap_free_mib: f64,
    pub heap_trims: u64,
    pub heap_trim_seconds: f64,
    pub lag_bounded: bool,
    pub drained: bool,
    pub alerts_fired: u64,
}

impl SoakReport {
    pub fn lost(&self) -> i64 {
        self.produced as i64 - self.processed as i64
    }
}

/// Least-squares slope of y over x; 0 with fewer than two points.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mean_x) * (y - mean_y);
        sxx += (x - mean_x) * (x - mean_x);
    }
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx
    }
}

fn sample(
    started: Instant,
    producing: bool,
    produced: u64,
    scrape: &Scrape,
    child: &RunChild,
) -> SoakSample {
    let processed = scrape.processed();
    SoakSample {
        seconds: started.elapsed().as_secs_f64(),
        producing,
        produced,
        consumed: scrape.consumed(),
        processed,
        lag: scrape.lag(),
        backlog: produced as i64 - processed as i64,
        rss_mib: child.memory_mib().0,
        heap_in_use_mib: scrape.allocator_bytes("in_use") as f64 / MIB,
        heap_free_mib: scrape.allocator_bytes("free") as f64 / MIB,
        micro_clusters: scrape.micro_clusters(),
        snapshot_mib: scrape.snapshot_bytes() as f64 / MIB,
    }
}

fn print_sample(s: &SoakSample) {
    println!(
        "{:>7.0} {:>9} {:>11} {:>11} {:>11} {:>9} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8} {:>8.1}",
        s.seconds,
        if s.producing { "producing" } else { "draining" },
        s.produced,
        s.consumed,
        s.processed,
        s.lag,
        s.backlog,
        s.rss_mib,
        s.heap_in_use_mib,
        s.heap_free_mib,
        s.micro_clusters,
        s.snapshot_mib
    );
}

fn print_header() {
    println!(
        "{:>7} {:>9} {:>11} {:>11} {:>11} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "t (s)",
        "phase",
        "produced",
        "consumed",
        "processed",
        "lag",
        "backlog",
        "RSS MiB",
        "heap MiB",
        "free MiB",
        "clusters",
        "snap MiB"
    );
}

pub async fn run(args: &SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.minutes > 0.0, "--minutes must be positive");
    anyhow::ensure!(args.sample_secs > 0.0, "--sample-secs must be positive");
    let mut work_dir = WorkDir::new("clusterwatch-bench-soak")?;
    // Snapshots on, as deployed: their size tracks the state, next to RSS in the table.
    let spec = ChildSpec {
        embedder: args.embedder.clone(),
        model_dir: args.model_dir.clone(),
        alertmanager_url: None,
        snapshot_dir: Some(work_dir.path.join("snapshots")),
    };
    if let Some(missing) = spec.missing_files() {
        anyhow::bail!(
            "the {} embedder cannot run here: missing {missing}",
            args.embedder
        );
    }
    let result = soak(args, &spec, &work_dir.path).await;
    match result {
        Ok(report) => {
            print_report(&report, args);
            if let Some(path) = &args.json_out {
                std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
            }
            anyhow::ensure!(
                report.lost() == 0,
                "events were lost: produced and processed differ"
            );
            Ok(())
        }
        Err(e) => {
            work_dir.keep = true;
            anyhow::bail!("{e:#} (child logs in {})", work_dir.path.display())
        }
    }
}

async fn calibrate(
    args: &SoakArgs,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
) -> anyhow::Result<f64> {
    let topics =
        BenchTopics::create(&args.bootstrap, "bench-soak-calibration", args.partitions).await?;
    let measured = super::pipeline::measure_throughput(
        &topics,
        spec,
        work_dir,
        args.calibration_events,
        args.seed.wrapping_add(1),
        Duration::from_secs(args.drain_timeout_secs),
    )
    .await;
    let result = match measured {
        Ok((child, _, throughput)) => {
            child.stop(Duration::from_secs(120)).await?;
            Ok(throughput.events_per_second)
        }
        Err(e) => Err(e),
    };
    if !args.keep_topics {
        let _ = topics.delete().await;
    }
    result
}

async fn soak(
    args: &SoakArgs,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
) -> anyhow::Result<SoakReport> {
    let (rate, calibrated) = match args.rate {
        Some(rate) => (rate, None),
        None => {
            eprintln!(
                "bench soak: measuring {}'s throughput on {} events first",
                args.embedder, args.calibration_events
            );
            let measured = calibrate(args, spec, work_dir).await?;
            eprintln!("bench soak: measured {measured:.0} events/s");
            (measured * args.rate_multiplier, Some(measured))
        }
    };
    anyhow::ensure!(rate > 0.0, "the soak rate must be positive");
    let topics = BenchTopics::create(&args.bootstrap, "bench-soak", args.partitions).await?;
    let result = soak_on(args, spec, work_dir, &topics, rate, calibrated).await;
    if !args.keep_topics {
        if let Err(e) = topics.delete().await {
            eprintln!("bench soak: could not delete the soak topics: {e:#}");
        }
    }
    result
}

async fn soak_on(
    args: &SoakArgs,
    spec: &ChildSpec,
    work_dir: &std::path::Path,
    topics: &BenchTopics,
    rate: f64,
    calibrated: Option<f64>,
) -> anyhow::Result<SoakReport> {
    let mut child = RunChild::start(topics, spec, work_dir)?;
    child.wait_ready(Duration::from_secs(300)).await?;
    // A warm-up batch first: timed production starts once the embedder is loaded and the child
    // is consuming, so the first samples are load, not model loading.
    let mut producer = TrafficProducer::new(&topics.bootstrap, &topics.topic, args.seed)?;
    producer.produce_count(WARM_UP_EVENTS).await?;
    child
        .wait_until("the warm-up events", Duration::from_secs(300), |s| {
            s.applied() >= WARM_UP_EVENTS
        })
        .await?;
    let before = child.scrape().await?;
    let produced = producer.produced_counter();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    println!(
        "bench soak: {} embedder, producing {:.0} events/s for {:.1} min to {} ({} partitions); a sample every {:.0} s",
        args.embedder, rate, args.minutes, args.bootstrap, args.partitions, args.sample_secs
    );
    print_header();
    let started = Instant::now();
    let mut producing = tokio::spawn(async move {
        let result = producer.produce_at_rate(rate, duration).await;
        (result, producer)
    });
    let mut samples = Vec::new();
    let interval = Duration::from_secs_f64(args.sample_secs);
    let mut next_sample = started + interval;
    let mut produce_seconds = None;
    loop {
        tokio::select! {
            joined = &mut producing, if produce_seconds.is_none() => {
                let (result, _) = joined.map_err(|e| anyhow::anyhow!("producer task panicked: {e}"))?;
                result?;
                produce_seconds = Some(started.elapsed().as_secs_f64());
            }
            _ = tokio::time::sleep_until(next_sample.into()) => {
                next_sample += interval;
                child.check_running()?;
                let scrape = child.scrape().await?;
                let s = sample(started, produce_seconds.is_none(), produced.load(Ordering::Relaxed), &scrape, &child);
                print_sample(&s);
                samples.push(s);
            }
        }
        if produce_seconds.is_some() {
            break;
        }
    }
    let produce_seconds = produce_seconds.unwrap_or(duration.as_secs_f64());
    let total = produced.load(Ordering::Relaxed);

    // Drain: every produced event processed, then the committed offsets catch up (the lag
    // gauge is refreshed every 5 s, after the auto-commit each second).
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout_secs);
    let mut drained = false;
    let mut caught_up_at: Option<Instant> = None;
    while Instant::now() < drain_deadline {
        tokio::time::sleep_until(
            next_sample
                .min(Instant::now() + Duration::from_secs(1))
                .into(),
        )
        .await;
        child.check_running()?;
        let scrape = child.scrape().await?;
        if scrape.applied() >= total && caught_up_at.is_none() {
            caught_up_at = Some(Instant::now());
        }
        let lag_clear = scrape.lag() == 0;
        if Instant::now() >= next_sample || (caught_up_at.is_some() && lag_clear) {
            next_sample = Instant::now() + interval;
            let s = sample(started, false, total, &scrape, &child);
            print_sample(&s);
            samples.push(s);
        }
        if let Some(at) = caught_up_at {
            // Offsets are acknowledged at the next snapshot (at most one interval after the
            // last event), committed within a second, and librdkafka's lag figure follows
            // within 5 s.
            if lag_clear || at.elapsed() > COMMIT_WAIT {
                drained = lag_clear;
                break;
            }
        }
    }
    let drain_seconds = started.elapsed().as_secs_f64() - produce_seconds;
    let last = child.scrape().await?;
    let latency = latency_between(&before, &last);
    let (_, peak_rss_mib) = child.memory_mib();
    child.stop(Duration::from_secs(120)).await?;
    let (committed, end_offsets) = topics.committed_and_end().await?;

    let second_half: Vec<&SoakSample> = samples
        .iter()
        .filter(|s| s.producing && s.seconds >= produce_seconds / 2.0)
        .collect();
    let rss_points: Vec<(f64, f64)> = second_half
        .iter()
        .map(|s| (s.seconds / 60.0, s.rss_mib))
        .collect();
    let rss_slope = slope(&rss_points);
    let rss_mean = if rss_points.is_empty() {
        0.0
    } else {
        rss_points.iter().map(|p| p.1).sum::<f64>() / rss_points.len() as f64
    };
    let half_minutes = produce_seconds / 120.0;
    let lag_points: Vec<(f64, f64)> = second_half
        .iter()
        .map(|s| (s.seconds, s.backlog as f64))
        .collect();
    let lag_slope = slope(&lag_points);
    let (heap_trims, heap_trim_seconds) = last.heap_trims();
    Ok(SoakReport {
        embedder: args.embedder.clone(),
        rate,
        calibrated_events_per_second: calibrated,
        produce_seconds,
        drain_seconds,
        produced: total,
        consumed: last.consumed(),
        processed: last.processed(),
        committed,
        end_offsets,
        p50_seconds: latency.quantile(0.5),
        p99_seconds: latency.quantile(0.99),
        latency_events: latency.count(),
        peak_rss_mib,
        rss_slope_mib_per_min: rss_slope,
        rss_second_half_mean_mib: rss_mean,
        rss_flat: rss_slope * half_minutes <= args.rss_tolerance * rss_mean,
        lag_slope_per_second: lag_slope,
        max_backlog: samples.iter().map(|s| s.backlog).max().unwrap_or(0),
        max_committed_lag: samples.iter().map(|s| s.lag).max().unwrap_or(0),
        final_micro_clusters: last.micro_clusters(),
        final_snapshot_mib: last.snapshot_bytes() as f64 / MIB,
        final_heap_in_use_mib: last.allocator_bytes("in_use") as f64 / MIB,
        final_heap_free_mib: last.allocator_bytes("free") as f64 / MIB,
        heap_trims,
        heap_trim_seconds,
        // A consumer that cannot keep up grows the backlog by (rate - capacity) per second; a
        // pause it recovers from (a hierarchy rebuild stalls the cluster stage for seconds)
        // tilts a short run's fit by a few percent of the rate. 10% tells them apart.
        lag_bounded: lag_slope <= LAG_SLOPE_TOLERANCE * rate,
        drained,
        alerts_fired: last.alerts_fired(),
        samples,
    })
}

fn print_report(r: &SoakReport, args: &SoakArgs) {
    println!();
    println!("bench soak: summary ({} embedder)", r.embedder);
    if let Some(measured) = r.calibrated_events_per_second {
        println!(
            "  rate               {:.0} events/s = {:.1} x the {:.0} events/s measured first",
            r.rate, args.rate_multiplier, measured
        );
    } else {
        println!("  rate               {:.0} events/s (given)", r.rate);
    }
    println!(
        "  produced {} in {:.0} s; drained {:.0} s later",
        r.produced, r.produce_seconds, r.drain_seconds
    );
    println!(
        "  produced {}  consumed {}  processed {}  lost {}  committed offsets {} of {}",
        r.produced,
        r.consumed,
        r.processed,
        r.lost(),
        r.committed,
        r.end_offsets
    );
    println!(
        "  event->cluster latency over {} events: p50 {} ms, p99 {} ms",
        r.latency_events,
        ms(r.p50_seconds),
        ms(r.p99_seconds)
    );
    println!(
        "  RSS: peak {:.0} MiB; second half of production mean {:.0} MiB, slope {:+.2} MiB/min -> {}",
        r.peak_rss_mib,
        r.rss_second_half_mean_mib,
        r.rss_slope_mib_per_min,
        if r.rss_flat { "FLAT" } else { "GROWING" }
    );
    println!(
        "  heap: {:.0} MiB in use, {:.0} MiB freed and kept by the allocator; {} trims took {:.3} s",
        r.final_heap_in_use_mib, r.final_heap_free_mib, r.heap_trims, r.heap_trim_seconds
    );
    println!(
        "  state: {} live micro-clusters, last snapshot {:.1} MiB ({:.1} KiB per cluster)",
        r.final_micro_clusters,
        r.final_snapshot_mib,
        r.final_snapshot_mib * 1024.0 / r.final_micro_clusters.max(1) as f64
    );
    println!(
        "  backlog: max {} events (committed lag max {}, offsets commit at each snapshot); second-half slope {:+.1} events/s -> {}; {}",
        r.max_backlog,
        r.max_committed_lag,
        r.lag_slope_per_second,
        if r.lag_bounded {
            "BOUNDED"
        } else {
            "GROWING (the rate is above what the pipeline sustains)"
        },
        if r.drained {
            "drained to 0"
        } else {
            "did NOT drain"
        }
    );
    println!("  alerts fired       {}", r.alerts_fired);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_fits_a_line_and_ignores_too_few_points() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 3.0 * x as f64 + 1.0)).collect();
        assert!((slope(&line) - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10).map(|x| (x as f64, 7.0)).collect();
        assert_eq!(slope(&flat), 0.0);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
    }
}
