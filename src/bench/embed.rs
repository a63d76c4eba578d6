//! `clusterwatch bench embed`: every embedder's speed and cluster quality in one invocation.
//!
//! Speed: sentences/s with 1 and 2 worker threads (or `--threads`). Each worker embeds its own
//! batches of real requests (CLINC150 test texts, cycled) for `--seconds`; intra-op threading is
//! pinned to one thread per worker (`RAYON_NUM_THREADS=1`, set before any model runs), so
//! "2 threads" means two workers on two cores, the layout that scaled best on the 2-core machine.
//! `hashing` is the baseline in the same run.
//!
//! Quality: the CLINC150 test set (150 intents, out-of-scope left out) and the Banking77 test set
//! (77 intents) embedded by each embedder and streamed through the same online clusterer as
//! `eval clustering` (`eval/online.rs`), scored at the topic level (AMI, NMI), next to batch
//! k-means (k = number of intents) on the same vectors. The transformer's k-means row is the
//! reference the issue names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{EmbedderKind, Settings};
use crate::embed::Embedder;
use crate::eval::kmeans::kmeans;
use crate::eval::metrics::score;
use crate::eval::online::cluster_online;

/// What to run; see `clusterwatch bench embed --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbedBenchArgs {
    /// Embedder kinds to measure, in order (names as in `embedder.kind`, plus `onnx-fp32`: the
    /// `onnx` kind on the fp32 graph; `hashing` is the baseline; one whose model files are
    /// absent is skipped with a note).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "hashing,static,transformer,onnx,onnx-fp32,multilingual"
    )]
    pub embedders: Vec<String>,
    /// Worker thread counts to measure speed at.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Seconds each speed measurement runs.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Texts per `embed_batch` call.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// CLINC150 test set (`{"text", "label"}` JSONL); its texts are also the speed workload.
    #[arg(long, default_value = "tests/fixtures/traffic/clinc150_test.jsonl")]
    pub clinc150: PathBuf,
    /// Banking77 test set (`{"text", "label"}` JSONL).
    #[arg(long, default_value = "tests/fixtures/traffic/banking77_test.jsonl")]
    pub banking77: PathBuf,
    /// Labels left out of the quality sets (CLINC150's out-of-scope class is not a topic).
    #[arg(long, value_delimiter = ',', default_value = "oos")]
    pub exclude_labels: Vec<String>,
    /// Speed only: skip the quality sets.
    #[arg(long)]
    pub no_quality: bool,
    /// Seed of the online arrival order and of k-means.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TOML settings (model paths, max_tokens, cluster settings); the kind is set per row, and
    /// each kind's own join threshold applies unless the file sets `cluster.join_threshold`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep the quality sets' embeddings here and reuse them (shared with `eval clustering`).
    #[arg(long, default_value = ".cache/eval")]
    pub vector_cache: PathBuf,
    /// Also write the figures as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// One embedder's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EmbedderFigures {
    pub kind: String,
    pub embedder_id: String,
    pub dimension: usize,
    /// (worker threads, sentences/s).
    pub sentences_per_second: Vec<(usize, f64)>,
    /// Per quality set.
    pub quality: Vec<QualityFigures>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QualityFigures {
    pub set: String,
    pub texts: usize,
    pub labels: usize,
    pub join_threshold: f32,
    pub topics: usize,
    pub topic_ami: f64,
    pub topic_nmi: f64,
    pub kmeans_ami: f64,
    pub kmeans_nmi: f64,
}

#[derive(Debug, serde::Serialize)]
struct Report<'a> {
    embedders: &'a [EmbedderFigures],
    skipped: &'a [(String, String)],
}

pub fn run(args: &EmbedBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.seconds > 0.0, "--seconds must be positive");
    anyhow::ensure!(
        args.threads.iter().all(|t| *t > 0),
        "--threads must be positive"
    );
    // One intra-op thread per worker, before any model has started a thread pool.
    std::env::set_var("RAYON_NUM_THREADS", "1");
    let base = Settings::load(args.config.as_deref())?;
    let workload = crate::eval::clustering::read_labelled(&args.clinc150, &[])?.texts;
    let sets = if args.no_quality {
        Vec::new()
    } else {
        vec![("CLINC150", &args.clinc150), ("Banking77", &args.banking77)]
    };
    let mut figures = Vec::new();
    let mut skipped = Vec::new();
    for name in &args.embedders {
        // `onnx-fp32`: the `onnx` kind on the fp32 graph, to price the int8 quantisation.
        let (kind_name, fp32_graph) = match name.as_str() {
            "onnx-fp32" => ("onnx", true),
            other => (other, false),
        };
        let kind = match serde_json::from_value::<EmbedderKind>(serde_json::Value::String(
            kind_name.to_string(),
        )) {
            Ok(EmbedderKind::Http) => {
                skipped.push((name.clone(), "needs an embedding service".to_string()));
                continue;
            }
            Ok(kind) => kind,
            Err(_) => anyhow::bail!("unknown embedder kind {name:?}"),
        };
        let mut settings = crate::eval::multilingual::settings_for_kind(&base, kind);
        if fp32_graph {
            settings.embedder.onnx_model = settings.embedder.model_dir.join("model.onnx");
        }
        let embedder: Arc<dyn Embedder> =
            match crate::embed::from_settings(&settings.embedder, &crate::export::Metrics::new()) {
                Ok(e) => Arc::from(e),
                Err(e) => {
                    eprintln!("bench embed: skipping {name}: {e}");
                    skipped.push((name.clone(), e.to_string()));
                    continue;
                }
            };
        let mut speeds = Vec::new();
        for &threads in &args.threads {
            // ONNX Runtime spreads a lone caller's batch over every idle session: give it one
            // session per worker, so "1 thread" is one core.
            let embedder = if kind == EmbedderKind::Onnx {
                let mut pinned = settings.embedder.clone();
                pinned.onnx_sessions = threads;
                Arc::from(crate::embed::from_settings(
                    &pinned,
                    &crate::export::Metrics::new(),
                )?)
            } else {
                Arc::clone(&embedder)
            };
            let rate = sentences_per_second(&embedder, &workload, threads, args)?;
            eprintln!("bench embed: {name}: {rate:.0} sentences/s with {threads} thread(s)");
            speeds.push((threads, rate));
        }
        let mut quality = Vec::new();
        for (set, path) in &sets {
            let set_texts = crate::eval::clustering::read_labelled(path, &args.exclude_labels)?;
            let (texts, labels, label_count) =
                (set_texts.texts, set_texts.labels, set_texts.label_count);
            let vectors = crate::eval::clustering::embed_cached(
                embedder.as_ref(),
                &texts,
                path,
                &args.vector_cache,
            )?;
            let dimension = embedder.dimension();
            let online = cluster_online(
                &settings.cluster,
                embedder.id(),
                &vectors,
                dimension,
                args.seed,
            )?;
            let topics = score(&labels, &online.topic_labels()?)?;
            let batch = kmeans(&vectors, dimension, label_count, args.seed, 3, 100)?;
            let batch = score(&labels, &batch)?;
            quality.push(QualityFigures {
                set: set.to_string(),
                texts: texts.len(),
                labels: label_count,
                join_threshold: settings.cluster.join_threshold,
                topics: topics.clusters,
                topic_ami: topics.ami,
                topic_nmi: topics.nmi,
                kmeans_ami: batch.ami,
                kmeans_nmi: batch.nmi,
            });
        }
        figures.push(EmbedderFigures {
            kind: name.clone(),
            embedder_id: embedder.id().to_string(),
            dimension: embedder.dimension(),
            sentences_per_second: speeds,
            quality,
        });
    }
    print_report(args, &figures, &skipped);
    if let Some(path) = &args.json_out {
        std::fs::write(
            path,
            serde_json::to_string_pretty(&Report {
                embedders: &figures,
                skipped: &skipped,
            })?,
        )?;
    }
    Ok(())
}

/// Sentences/s of `threads` workers, each embedding batches of `workload` (cycled, each worker
/// from its own offset) until `args.seconds` have passed.
fn sentences_per_second(
    embedder: &Arc<dyn Embedder>,
    workload: &[String],
    threads: usize,
    args: &EmbedBenchArgs,
) -> anyhow::Result<f64> {
    anyhow::ensure!(!workload.is_empty(), "the speed workload is empty");
    let batch = args.batch.max(1);
    // A first batch outside the clock: lazy initialisation is not throughput.
    embedder.embed_batch(&workload[..batch.min(workload.len())])?;
    let budget = Duration::from_secs_f64(args.seconds);
    let started = Instant::now();
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let embedder = Arc::clone(embedder);
                scope.spawn(move || -> anyhow::Result<usize> {
                    let mut done = 0usize;
                    let mut at = (worker * workload.len() / threads) % workload.len();
                    while started.elapsed() < budget {
                        let texts: Vec<String> = (0..batch)
                            .map(|i| workload[(at + i) % workload.len()].clone())
                            .collect();
                        at = (at + batch) % workload.len();
                        done += embedder.embed_batch(&texts)?.len();
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect::<anyhow::Result<Vec<usize>>>()
    })?;
    let elapsed = started.elapsed().as_secs_f64().max(1e-9);
    Ok(counts.iter().sum::<usize>() as f64 / elapsed)
}

fn print_report(args: &EmbedBenchArgs, figures: &[EmbedderFigures], skipped: &[(String, String)]) {
    let baseline = figures
        .iter()
        .find(|f| f.kind == "hashing")
        .and_then(|f| f.sentences_per_second.first().map(|(_, r)| *r));
    println!(
        "bench embed: {} s per speed measurement, batches of {}, CLINC150 test texts cycled; \
         RAYON_NUM_THREADS=1 per worker",
        args.seconds, args.batch
    );
    let mut header = format!("{:<14} {:>5}", "embedder", "dims");
    for t in &args.threads {
        header.push_str(&format!(" {:>16}", format!("{t} thread(s) /s")));
    }
    header.push_str(&format!(" {:>14}", "vs hashing (1)"));
    println!("{header}");
    for f in figures {
        let mut line = format!("{:<14} {:>5}", f.kind, f.dimension);
        for (_, rate) in &f.sentences_per_second {
            line.push_str(&format!(" {rate:>16.0}"));
        }
        if let (Some(base), Some((_, rate))) = (baseline, f.sentences_per_second.first()) {
            line.push_str(&format!(" {:>14.4}", rate / base));
        }
        println!("{line}");
    }
    if figures.iter().any(|f| !f.quality.is_empty()) {
        println!(
            "{:<14} {:<10} {:>6} {:>6} {:>7} {:>10} {:>10} {:>10} {:>10}",
            "embedder",
            "set",
            "texts",
            "join",
            "topics",
            "topic AMI",
            "topic NMI",
            "k-means AMI",
            "k-means NMI"
        );
        for f in figures {
            for q in &f.quality {
                println!(
                    "{:<14} {:<10} {:>6} {:>6.2} {:>7} {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
                    f.kind,
                    q.set,
                    q.texts,
                    q.join_threshold,
                    q.topics,
                    q.topic_ami,
                    q.topic_nmi,
                    q.kmeans_ami,
                    q.kmeans_nmi
                );
            }
        }
        if let Some(reference) = figures.iter().find(|f| f.kind == "transformer") {
            for f in figures.iter().filter(|f| f.kind != "transformer") {
                for (q, r) in f.quality.iter().zip(&reference.quality) {
                    println!(
                        "{:<14} {:<10} topic AMI {:+.4} against the transformer's (goal for the default: within 0.03)",
                        f.kind,
                        q.set,
                        q.topic_ami - r.topic_ami
                    );
                }
            }
        }
    }
    for (name, reason) in skipped {
        println!("{name:<14} skipped: {reason}");
    }
}
