//! `clusterwatch eval clustering`: how well the online clusterer recovers human labels.
//!
//! It embeds a labelled JSONL set (`{"text": …, "label": …}`) with the configured embedder,
//! streams the vectors through a fresh `ClusterState` in shuffled order (as events would arrive),
//! builds the topic and domain levels over the final micro-clusters, and prints NMI, AMI (NMI alone
//! rewards over-splitting), ARI, purity and cluster counts per level, next to batch k-means on the
//! same vectors with k = number of labels (and k = number of domains when a domain map is given),
//! in the same run. It also prints the HNSW index's recall@1 against the exact scan on these real
//! vectors.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use super::kmeans::kmeans;
use super::metrics::{score, ClusteringScores};
use super::online::cluster_online;
use crate::cluster::hierarchy::agglomerate;
use crate::cluster::index::{CentroidIndex, ExactScanIndex, HnswIndex};
use crate::cluster::ClusterState;
use crate::config::Settings;

#[derive(Debug, Clone, clap::Args)]
pub struct ClusteringEvalArgs {
    /// Labelled JSONL: one `{"text": ..., "label": ...}` per line.
    #[arg(long)]
    pub input: PathBuf,
    /// JSON object mapping each label to a domain (e.g. CLINC150's intent_to_domain.json).
    #[arg(long)]
    pub domains: Option<PathBuf>,
    /// Labels to leave out (CLINC150's out-of-scope class is not a topic).
    #[arg(long, value_delimiter = ',', default_value = "oos")]
    pub exclude_labels: Vec<String>,
    /// Seed of the arrival order and of k-means.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// TOML settings (embedder, cluster thresholds).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Also print the topic level at these topic thresholds (a sweep for tuning).
    #[arg(long, value_delimiter = ',')]
    pub sweep_topic_thresholds: Vec<f32>,
    /// Keep the embeddings in this directory and reuse them on the next run of the same input.
    #[arg(long, default_value = ".cache/eval")]
    pub vector_cache: PathBuf,
}

#[derive(serde::Deserialize)]
struct LabelledLine {
    text: String,
    label: String,
}

pub fn run(args: &ClusteringEvalArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    let LabelledTexts {
        texts,
        labels,
        label_names,
        label_count,
    } = read_labelled(&args.input, &args.exclude_labels)?;
    let domains = match &args.domains {
        Some(path) => Some(domain_labels(path, &label_names)?),
        None => None,
    };

    let embedder = crate::embed::from_settings(&settings.embedder, &crate::export::Metrics::new())?;
    let dimension = embedder.dimension();
    let vectors = embed_cached(&*embedder, &texts, &args.input, &args.vector_cache)?;

    let run = cluster_online(
        &settings.cluster,
        embedder.id(),
        &vectors,
        dimension,
        args.seed,
    )?;
    let (online_seconds, merges) = (run.online_seconds, run.merges);
    let micro = &run.micro;
    let state = &run.state;

    // Topic and domain levels, built by the state as the pipeline builds them.
    let hierarchy = &settings.cluster.hierarchy;
    let hierarchy_vectors = state.hierarchy_vectors();
    let micro_items: Vec<crate::cluster::hierarchy::LevelItem<'_>> = hierarchy_vectors
        .iter()
        .map(|(id, v, w)| crate::cluster::hierarchy::LevelItem {
            id: *id,
            centroid: v,
            weight: *w,
        })
        .collect();
    let micro_labels = run.micro_labels();
    let topic_labels = run.topic_labels()?;
    let domain_level = run.domain_labels()?;

    let started = Instant::now();
    let batch = kmeans(&vectors, dimension, label_count, args.seed, 3, 100)?;
    let kmeans_seconds = started.elapsed().as_secs_f64();

    println!(
        "eval clustering: {} ({} texts, {} labels{}), arrival order shuffled with seed {}, {}",
        args.input.display(),
        texts.len(),
        label_count,
        domains
            .as_ref()
            .map_or(String::new(), |(_, n)| format!(", {n} domains")),
        args.seed,
        embedder.id()
    );
    println!(
        "join threshold {}, merge threshold {} ({merges} merges), topic threshold {}, domain threshold {}; online pass {:.2} s, k-means {:.2} s",
        settings.cluster.join_threshold,
        settings.cluster.merge_threshold,
        hierarchy.topic_threshold,
        hierarchy.domain_threshold,
        online_seconds,
        kmeans_seconds
    );
    println!(
        "{:<34} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "level (vs labels)", "clusters", "NMI", "AMI", "ARI", "purity"
    );
    let print = |name: &str, s: &ClusteringScores| {
        println!(
            "{:<34} {:>8} {:>7.4} {:>7.4} {:>7.4} {:>7.4}",
            name, s.clusters, s.nmi, s.ami, s.ari, s.purity
        );
    };
    print("online micro-clusters", &score(&labels, &micro_labels)?);
    print("online topics", &score(&labels, &topic_labels)?);
    print(
        &format!("batch k-means k={}", label_count),
        &score(&labels, &batch)?,
    );
    if let Some((domain, n)) = &domains {
        print(
            "online domains (vs domains)",
            &score(domain, &domain_level)?,
        );
        print("online topics (vs domains)", &score(domain, &topic_labels)?);
        let batch_domains = kmeans(&vectors, dimension, *n, args.seed, 3, 100)?;
        print(
            &format!("batch k-means k={n} (vs domains)"),
            &score(domain, &batch_domains)?,
        );
    }
    for &threshold in &args.sweep_topic_thresholds {
        let swept = agglomerate(&micro_items, threshold, hierarchy.refine_rounds);
        let swept_labels: Vec<u32> = micro.iter().map(|id| swept.group_of[id]).collect();
        print(
            &format!("online topics at threshold {threshold}"),
            &score(&labels, &swept_labels)?,
        );
    }
    println!(
        "HNSW recall@1 against the exact scan on these vectors (queries vs final micro-centroids): {:.4}",
        hnsw_recall(state, &vectors, dimension, &settings)
    );
    Ok(())
}

/// A labelled JSONL set: texts, and per text its label as a dense id and as a name.
pub struct LabelledTexts {
    pub texts: Vec<String>,
    pub labels: Vec<u32>,
    pub label_names: Vec<String>,
    pub label_count: usize,
}

/// Reads `{"text": ..., "label": ...}` lines, leaving out `exclude_labels`; label ids follow the
/// labels' sorted order.
pub fn read_labelled(
    path: &std::path::Path,
    exclude_labels: &[String],
) -> anyhow::Result<LabelledTexts> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let mut texts = Vec::new();
    let mut label_names = Vec::new();
    for (n, line) in raw.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: LabelledLine = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?;
        if exclude_labels.contains(&item.label) {
            continue;
        }
        texts.push(item.text);
        label_names.push(item.label);
    }
    anyhow::ensure!(!texts.is_empty(), "no labelled lines in {}", path.display());
    let mut label_ids: BTreeMap<&str, u32> = BTreeMap::new();
    for name in &label_names {
        let next = label_ids.len() as u32;
        label_ids.entry(name.as_str()).or_insert(next);
    }
    let labels = label_names.iter().map(|n| label_ids[n.as_str()]).collect();
    let label_count = label_ids.len();
    Ok(LabelledTexts {
        texts,
        labels,
        label_names,
        label_count,
    })
}

/// Embeds `texts`, or reads the vectors a previous run of the same input and embedder stored.
pub(crate) fn embed_cached(
    embedder: &dyn crate::embed::Embedder,
    texts: &[String],
    input: &std::path::Path,
    cache_dir: &std::path::Path,
) -> anyhow::Result<Vec<f32>> {
    let dimension = embedder.dimension();
    let key = xxhash_rust::xxh3::xxh3_64(texts.join("\n").as_bytes());
    let stem = input
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("input");
    let path = cache_dir.join(format!("{stem}-{}-{key:016x}.f32", embedder.id()));
    if let Ok(bytes) = std::fs::read(&path) {
        if bytes.len() == texts.len() * dimension * 4 {
            eprintln!("vectors from {}", path.display());
            return Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect());
        }
    }
    eprintln!("embedding {} texts with {} ...", texts.len(), embedder.id());
    let started = Instant::now();
    let mut vectors: Vec<f32> = Vec::with_capacity(texts.len() * dimension);
    for batch in texts.chunks(64) {
        for v in embedder.embed_batch(batch)? {
            vectors.extend(v);
        }
    }
    eprintln!("embedded in {:.1} s", started.elapsed().as_secs_f64());
    let bytes: Vec<u8> = vectors.iter().flat_map(|x| x.to_le_bytes()).collect();
    if std::fs::create_dir_all(cache_dir).is_ok() {
        // A cache that cannot be written only costs the next run time.
        let _ = std::fs::write(&path, bytes);
    }
    Ok(vectors)
}

/// Per-text domain ids from a label → domain JSON map, and the number of domains.
fn domain_labels(path: &PathBuf, label_names: &[String]) -> anyhow::Result<(Vec<u32>, usize)> {
    let map: HashMap<String, String> = serde_json::from_str(&std::fs::read_to_string(path)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut ids: BTreeMap<&str, u32> = BTreeMap::new();
    let mut out = Vec::with_capacity(label_names.len());
    for name in label_names {
        let domain = map
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("label {name:?} has no domain in {}", path.display()))?;
        let next = ids.len() as u32;
        out.push(*ids.entry(domain.as_str()).or_insert(next));
    }
    Ok((out, ids.len()))
}

fn hnsw_recall(
    state: &ClusterState,
    vectors: &[f32],
    dimension: usize,
    settings: &Settings,
) -> f64 {
    let mut exact = ExactScanIndex::new(dimension);
    let mut hnsw = HnswIndex::new(
        dimension,
        crate::cluster::index::hnsw::HnswSettings {
            // No graph while loading (that would rebuild over and over); one build at the end.
            min_graph_size: usize::MAX,
            ..settings.cluster.hnsw
        },
        true,
    );
    for c in state.clusters() {
        exact.upsert(c.id, &c.centroid);
        hnsw.upsert(c.id, &c.centroid);
    }
    hnsw.rebuild_now();
    let mut agree = 0usize;
    let n = vectors.len() / dimension;
    for q in vectors.chunks_exact(dimension) {
        agree += usize::from(exact.nearest(q).map(|x| x.0) == hnsw.nearest(q).map(|x| x.0));
    }
    agree as f64 / n.max(1) as f64
}
