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
        /// Which part of the pipeline this process runs: `all` (default), `enrich` (decode,
        /// summarize, embed → the internal topic) or `cluster` (one shard per partition of the
        /// internal topic). See `[scale]` in the config and ARCHITECTURE "Scaling".
        #[arg(long, value_enum, default_value_t = crate::scale::Role::All)]
        role: crate::scale::Role,
    },
    /// Run the pipeline over a JSONL file of v1 events, in event time, as fast as possible.
    Replay(ReplayArgs),
    /// Print performance figures (build with --release).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Measure quality against labelled data.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Work on the local embedding model.
    #[command(subcommand)]
    Model(ModelCommand),
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Distil the static embedder (kind `static`) from the transformer, model2vec-style: every
    /// vocabulary token through the model once, PCA, Zipf/SIF weighting. Skips the work when the
    /// output is up to date with the source model.
    Distill(DistillArgs),
    /// Make the codebook that `run --role enrich` partitions vectors by (k-means over the bundled
    /// CLINC150 and Banking77 requests, seeded), for the configured embedder.
    Codebook(CodebookArgs),
}

#[derive(Debug, clap::Args)]
pub struct CodebookArgs {
    /// TOML settings file naming the embedder (defaults: the transformer).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Cells; a multiple of the internal topic's partition count keeps shards balanced.
    #[arg(long, default_value_t = 16)]
    pub cells: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Output file (default: `scale.codebook`, or `config/codebook-<embedder kind>.json`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DistillArgs {
    /// The transformer's directory.
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,
    /// Output vectors (safetensors; the manifest goes beside it as .json). Default:
    /// static-256.safetensors in the model directory (where `kind = "static"` looks).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// PCA components (0: no PCA; the model's 384 or more: rotate only).
    #[arg(long, default_value_t = 256)]
    pub dims: usize,
    /// SIF coefficient of the Zipf weighting; 0 turns weighting off.
    #[arg(long, default_value_t = crate::embed::distill::DEFAULT_SIF_COEFFICIENT)]
    pub sif: f64,
    /// Tokens per forward pass.
    #[arg(long, default_value_t = 512)]
    pub batch_size: usize,
    /// Distil even when the output is up to date.
    #[arg(long)]
    pub force: bool,
    /// How each token is run through the transformer.
    #[arg(long, value_enum, default_value = "cls-sep")]
    pub token_input: crate::embed::distill::TokenInput,
    /// Keep the transformer's raw token outputs in this file and reuse them (for trying variants).
    #[arg(long)]
    pub raw_cache: Option<PathBuf>,
    /// Partial whitening after PCA: component j scaled by (λ_j/λ_1)^-power; 0 (model2vec): none.
    #[arg(long, default_value_t = crate::embed::distill::DEFAULT_WHITEN_POWER)]
    pub whiten_power: f64,
}

#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// NMI/AMI/ARI/purity of the online clusterer per hierarchy level, next to batch k-means.
    Clustering(crate::eval::clustering::ClusteringEvalArgs),
    /// Recall, precision and time to detect of every detector on organic traffic with injected
    /// campaigns and hard negatives.
    Detection(crate::eval::detection::DetectionEvalArgs),
    /// How often `run --role cluster`'s sharding splits what one process keeps in one cluster:
    /// near-duplicates on different shards, campaign spread, shard balance.
    Sharding(crate::eval::sharding::ShardingEvalArgs),
    /// Intent AMI and language NMI of k-means (and the online clusterer) on xSID per embedder:
    /// do requests in any language cluster by intent?
    Multilingual(crate::eval::multilingual::MultilingualEvalArgs),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Events/s of the cluster stage per index at 1k/10k/20k live clusters, BERTopic online on
    /// the same vectors, and peak RSS over long streams.
    Clustering(crate::bench::clustering::ClusteringBenchArgs),
    /// Sentences/s of every embedder with 1 and 2 worker threads, and its CLINC150/Banking77
    /// topic AMI/NMI through the online clusterer next to batch k-means on the same vectors.
    Embed(crate::bench::embed::EmbedBenchArgs),
    /// End to end from a real Kafka broker to alerts, per embedder: events/s sustained, p50/p99
    /// event→cluster latency, stage time shares, peak RSS of a `clusterwatch run` child.
    Pipeline(crate::bench::pipeline::PipelineBenchArgs),
    /// Minutes of load against a real Kafka broker: RSS and lag over time, latency, lost events.
    Soak(crate::bench::soak::SoakArgs),
    /// Conversations/s of the offline summarizer and of its steps (PII scrub, language) on one
    /// core, over the bundled demo traffic, with the scrub's every-pass baseline in the same run.
    Summarize(crate::bench::summarize::SummarizeBenchArgs),
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
    // Colour only on a terminal: logs collected from files or pipes stay plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            role,
        } => run(config, reset_clusters, role).await,
        Command::Replay(args) => replay(args).await,
        Command::Eval(EvalCommand::Clustering(args)) => {
            tokio::task::spawn_blocking(move || crate::eval::clustering::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("eval panicked: {e}")))
        }
        Command::Eval(EvalCommand::Detection(args)) => crate::eval::detection::run(args).await,
        Command::Eval(EvalCommand::Sharding(args)) => crate::eval::sharding::run(args).await,
        Command::Eval(EvalCommand::Multilingual(args)) => {
            tokio::task::spawn_blocking(move || crate::eval::multilingual::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("eval panicked: {e}")))
        }
        Command::Model(ModelCommand::Distill(args)) => {
            tokio::task::spawn_blocking(move || distill(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("distill panicked: {e}")))
        }
        Command::Model(ModelCommand::Codebook(args)) => codebook(args).await,
        Command::Bench(BenchCommand::Clustering(args)) => {
            tokio::task::spawn_blocking(move || crate::bench::clustering::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("bench panicked: {e}")))
        }
        Command::Bench(BenchCommand::Embed(args)) => {
            tokio::task::spawn_blocking(move || crate::bench::embed::run(&args))
                .await
                .unwrap_or_else(|e| Err(anyhow::anyhow!("bench panicked: {e}")))
        }
        Command::Bench(BenchCommand::Pipeline(args)) => crate::bench::pipeline::run(&args).await,
        Command::Bench(BenchCommand::Soak(args)) => crate::bench::soak::run(&args).await,
        Command::Bench(BenchCommand::Summarize(args)) => {
            tokio::task::spawn_blocking(move || crate::bench::summarize::run(&args))
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

async fn run(
    config: PathBuf,
    reset_clusters: bool,
    role: crate::scale::Role,
) -> anyhow::Result<()> {
    use crate::scale::Role;
    let settings = Settings::load(Some(&config))?;
    let (trigger, _) = crate::shutdown::channel();
    tokio::spawn(crate::shutdown::on_signal(trigger.clone()));
    let options = crate::run::RunOptions {
        reset_clusters,
        ..Default::default()
    };
    // Lives until `run` returns; dropping it stops and joins the thread.
    let _trimmer =
        crate::heap::HeapTrimmer::start(&settings.memory, options.metrics.heap_trims.clone());
    if reset_clusters && role != Role::All {
        anyhow::bail!("--reset-clusters applies to --role all; remove the shard snapshots instead");
    }
    match role {
        Role::All => {
            crate::run::run_kafka(settings, trigger, options).await?;
        }
        Role::Enrich => {
            crate::scale::enrich::run_enrich(settings, trigger, options).await?;
        }
        Role::Cluster => {
            crate::scale::shards::run_cluster(settings, trigger, options).await?;
        }
    }
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

async fn codebook(args: CodebookArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    let metrics = Metrics::new();
    let embedder = crate::run::build_embedder(&settings, &metrics).await?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| settings.scale.codebook_path(&settings.embedder));
    let started = std::time::Instant::now();
    let (codebook, shares) = tokio::task::spawn_blocking(move || {
        crate::scale::codebook::train_on_bundled_requests(embedder.as_ref(), args.cells, args.seed)
    })
    .await
    .map_err(|e| anyhow::anyhow!("codebook training panicked: {e}"))??;
    codebook.save(&out)?;
    let largest = shares.iter().copied().fold(0.0, f64::max);
    let smallest = shares.iter().copied().fold(1.0, f64::min);
    println!(
        "codebook: {} cells for {} ({} dims) in {:.1} s; cell shares of the bundled requests {:.1}% to {:.1}%; wrote {}",
        codebook.cells.len(),
        codebook.embedder_id,
        codebook.dimension,
        started.elapsed().as_secs_f64(),
        smallest * 100.0,
        largest * 100.0,
        out.display()
    );
    Ok(())
}

fn distill(args: &DistillArgs) -> anyhow::Result<()> {
    use crate::embed::distill::{distill, DistillOptions};
    let mut options = DistillOptions::new(&args.model_dir);
    if let Some(output) = &args.output {
        options.output = output.clone();
    }
    options.dims = args.dims;
    options.sif_coefficient = (args.sif > 0.0).then_some(args.sif);
    options.batch_size = args.batch_size;
    options.force = args.force;
    options.token_input = args.token_input;
    options.raw_cache = args.raw_cache.clone();
    options.whiten_power = args.whiten_power;
    let report = distill(&options)?;
    let m = &report.manifest;
    if report.up_to_date {
        println!(
            "distill: {} is up to date (source {} checksum {}, {} dims); --force to redo",
            options.output.display(),
            m.source_model,
            m.source_checksum,
            m.dims
        );
        return Ok(());
    }
    if report.raw_from_cache {
        println!("distill: the transformer's outputs come from the raw cache");
    }
    println!(
        "distill: {} tokens of {} through {} in {:.1} s ({:.0} tokens/s), PCA {} -> {} ({:.1}% of the variance) in {:.1} s, weighting {}; {:.1} s in all",
        m.distilled_tokens,
        m.vocab_size,
        m.source_model,
        report.forward_seconds,
        m.distilled_tokens as f64 / report.forward_seconds.max(1e-9),
        m.source_dims,
        m.dims,
        m.pca.explained_variance_ratio * 100.0,
        report.pca_seconds,
        m.weighting.kind,
        m.distill_seconds
    );
    println!(
        "distill: wrote {} and {}",
        options.output.display(),
        crate::embed::static_model::manifest_path(&options.output).display()
    );
    Ok(())
}
