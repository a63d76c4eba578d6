//! The command line (DESIGN §3, a contract): `demo`, `run`, `replay`.
//!
//! Every command takes `--config FILE`; every setting can also come from `CLUSTERWATCH_*`
//! environment variables (see [`crate::config`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Settings;
use crate::export::Metrics;
use crate::replay::ReplayOutputs;

#[derive(Debug, Parser)]
#[command(
    name = "clusterwatch",
    version,
    about = "Clusters live AI-assistant traffic by what people ask for and alerts on coordinated abuse.",
    long_about = None
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything embedded: an in-process Kafka-protocol broker, bundled real traffic with an
    /// injected campaign, the full pipeline, /metrics, and alerts printed as they fire.
    Demo(DemoArgs),
    /// Production: consume Kafka, export metrics, push alerts. Stops cleanly on SIGTERM/SIGINT.
    Run {
        /// TOML settings file (defaults apply for anything it leaves out).
        #[arg(long)]
        config: PathBuf,
        /// Move an existing snapshot aside (`.reset-<unix time>`) and start from empty cluster
        /// state, e.g. after changing the embedder.
        #[arg(long)]
        reset_clusters: bool,
    },
    /// Run the pipeline over a JSONL file of v1 events, in event time, as fast as possible.
    Replay(ReplayArgs),
    /// Print performance figures (build with --release).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Measure quality against labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// NMI/AMI/ARI/purity of the online clusterer per hierarchy level, next to batch k-means.
    Clustering(crate::eval::clustering::ClusteringEvalArgs),
    /// Recall, precision and time to detect of every detector on organic traffic with injected
    /// campaigns and hard negatives.
    Detection(crate::eval::detection::DetectionEvalArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Events/s of the cluster stage per index at 1k/10k/20k live clusters, BERTopic online on
    /// the same vectors, and peak RSS over long streams.
    Clustering(crate::bench::clustering::ClusteringBenchArgs),
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// TOML settings file layered over the demo defaults.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Organic conversations to generate.
    #[arg(long, default_value_t = 4000)]
    pub organic_events: usize,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Address for /metrics and /healthz (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: String,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// JSONL file, one v1 event per line.
    #[arg(long)]
    pub input: PathBuf,
    /// TOML settings file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Write one JSON line per alert state change.
    #[arg(long)]
    pub alerts_out: Option<PathBuf>,
    /// Write one JSON line per accepted event: conversation_id, cluster_id, topic_id.
    #[arg(long)]
    pub assignments_out: Option<PathBuf>,
    /// Write the k-anonymous cluster table as JSON.
    #[arg(long)]
    pub clusters_out: Option<PathBuf>,
    /// Write one JSON line per cluster lifecycle event (born, merged, died); counts only for
    /// clusters above the privacy gate. `died` lines are the archive of dead clusters.
    #[arg(long)]
    pub lifecycle_out: Option<PathBuf>,
    /// Write one JSON line per rejected input line (line number and reason; never its text).
    #[arg(long)]
    pub dead_letter_out: Option<PathBuf>,
    /// RESTRICTED, opt-in: write the conversation and account ids of flagged clusters' members
    /// (the investigation output for Trust & Safety; see `investigation` in the config).
    #[arg(long)]
    pub investigation_out: Option<PathBuf>,
}

pub fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLUSTERWATCH_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) is harmless.
    let _ = result;
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    let result = match cli.command {
        Command::Demo(args) => crate::demo::run(args).await,
        Command::Run {
            config,
            reset_clusters,
        } => run(config, reset_clusters).await,
        Command::Replay(args) => replay(args).await,
        Command::Eval(EvalCommand::Clustering(args)) => {
            tokio::task::spawn_blocking(move || crate::eval::clustering::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("eval panicked: {e}")))
        }
        Command::Eval(EvalCommand::Detection(args)) => crate::eval::detection::run(args).await,
        Command::Bench(BenchCommand::Clustering(args)) => {
            tokio::task::spawn_blocking(move || crate::bench::clustering::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("bench panicked: {e}")))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("clusterwatch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: PathBuf, reset_clusters: bool) -> anyhow::Result<()> {
    let settings = Settings::load(Some(&config))?;
    let (trigger, _) = crate::shutdown::channel();
    tokio::spawn(crate::shutdown::on_signal(trigger.clone()));
    let options = crate::run::RunOptions {
        reset_clusters,
        ..Default::default()
    };
    crate::run::run_kafka(settings, trigger, options).await?;
    Ok(())
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    let outputs = ReplayOutputs {
        alerts: args.alerts_out,
        assignments: args.assignments_out,
        clusters: args.clusters_out,
        lifecycle: args.lifecycle_out,
        dead_letter: args.dead_letter_out,
        investigation: args.investigation_out,
    };
    let metrics = Metrics::new();
    let report = crate::replay::replay(
        settings,
        &args.input,
        &outputs,
        metrics.clone(),
        None,
        Vec::new(),
    )
    .await?;
    eprintln!(
        "replayed: {} lines read, {} rejected, {} duplicates, {} clustered into {} live clusters, {} alert state changes",
        metrics.events_consumed.get(),
        Metrics::counter_sum(&metrics.events_rejected),
        metrics.events_duplicate.get(),
        report.state.clustered_events(),
        report.state.live_clusters(),
        report.alerts.len()
    );
    Ok(())
}
