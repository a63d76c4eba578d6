//! `clusterwatch eval sharding`: what the scale-out's sharding costs in cluster quality.
//!
//! With `--role cluster`, each partition of the internal topic is a shard with its own cluster
//! state, and the enrich role picks the partition from the vector's nearest codebook cell. Events
//! that one process would put in one cluster can land on different shards when they straddle a
//! cell boundary; there they found separate clusters. This command replays the demo's traffic
//! (bundled CLINC150 and Banking77 requests with an injected campaign) through one cluster state,
//! as `--role all` would, and counts how often that happens:
//!
//! - near-duplicates: events that joined an existing cluster (cosine at or above the join
//!   threshold), and how many of them map to another shard than the event that founded it;
//! - events outside their cluster's majority shard;
//! - the campaign's share on its majority shard (a campaign split across shards is seen by each
//!   shard's detectors as a smaller one);
//! - each shard's share of the events (balance).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use crate::cluster::{Assignment, ClusterId, ClusterState};
use crate::config::Settings;
use crate::demo::traffic::{self, MessageKind, TrafficSpec};
use crate::event::EventMeta;
use crate::export::Metrics;
use crate::scale::codebook::Codebook;

#[derive(Debug, clap::Args)]
pub struct ShardingEvalArgs {
    /// TOML settings file naming the embedder (defaults: the transformer).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Codebook (default: `scale.codebook`, or `config/codebook-<embedder kind>.json`).
    #[arg(long)]
    pub codebook: Option<PathBuf>,
    /// Partitions of the internal topic: the shard count.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Organic events of the generated traffic (a campaign is injected as in the demo).
    #[arg(long, default_value_t = 8000)]
    pub organic_events: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The figures the command prints.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardingReport {
    pub events: usize,
    pub partitions: i32,
    pub cells: usize,
    /// Events that joined an existing cluster.
    pub near_duplicates: usize,
    /// ... and mapped to another shard than their cluster's founding event.
    pub near_duplicates_split: usize,
    /// Events not on their (single-process) cluster's majority shard.
    pub outside_majority_shard: usize,
    pub campaign_events: usize,
    pub campaign_on_majority_shard: usize,
    /// Share of the events per shard.
    pub shard_shares: Vec<f64>,
}

/// Measures `events` (meta, summary, vector) in order through one cluster state.
pub fn measure(
    settings: &Settings,
    codebook: &Codebook,
    partitions: i32,
    events: &[(EventMeta, crate::summarize::Summary, Vec<f32>, bool)],
) -> anyhow::Result<ShardingReport> {
    let mut state = ClusterState::new(
        settings.cluster.clone(),
        codebook.dimension,
        &codebook.embedder_id,
    );
    let shards = partitions.max(1) as usize;
    let mut founder_shard: HashMap<ClusterId, usize> = HashMap::new();
    let mut members: HashMap<ClusterId, Vec<usize>> = HashMap::new();
    let mut report = ShardingReport {
        events: 0,
        partitions,
        cells: codebook.cells.len(),
        near_duplicates: 0,
        near_duplicates_split: 0,
        outside_majority_shard: 0,
        campaign_events: 0,
        campaign_on_majority_shard: 0,
        shard_shares: vec![0.0; shards],
    };
    let mut campaign = vec![0usize; shards];
    let mut per_shard = vec![0usize; shards];
    for (meta, summary, vector, is_campaign) in events {
        let shard = codebook.partition(vector, partitions) as usize;
        let cluster = match state.assign(0, meta, summary, vector)? {
            Assignment::Duplicate => continue,
            Assignment::Founded { cluster_id } => {
                founder_shard.insert(cluster_id, shard);
                cluster_id
            }
            Assignment::Joined { cluster_id, .. } => {
                report.near_duplicates += 1;
                if founder_shard.get(&cluster_id) != Some(&shard) {
                    report.near_duplicates_split += 1;
                }
                cluster_id
            }
        };
        report.events += 1;
        per_shard[shard] += 1;
        members.entry(cluster).or_insert_with(|| vec![0; shards])[shard] += 1;
        if *is_campaign {
            campaign[shard] += 1;
        }
        if state.maintenance_due() {
            state.maintain();
        }
    }
    report.outside_majority_shard = members
        .values()
        .map(|counts| counts.iter().sum::<usize>() - counts.iter().max().copied().unwrap_or(0))
        .sum();
    report.campaign_events = campaign.iter().sum();
    report.campaign_on_majority_shard = campaign.iter().max().copied().unwrap_or(0);
    report.shard_shares = per_shard
        .iter()
        .map(|&n| n as f64 / report.events.max(1) as f64)
        .collect();
    Ok(report)
}

pub async fn run(args: ShardingEvalArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    let metrics = Metrics::new();
    let embedder = crate::run::build_embedder(&settings, &metrics).await?;
    let codebook_path = args
        .codebook
        .clone()
        .unwrap_or_else(|| settings.scale.codebook_path(&settings.embedder));
    let codebook = Codebook::load(&codebook_path)?;
    codebook.check_embedder(embedder.id(), embedder.dimension())?;
    let summarizer = crate::run::build_summarizer(&settings, None, &metrics)?;
    let messages = traffic::generate(&TrafficSpec {
        seed: args.seed,
        organic_events: args.organic_events,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    });
    let mut summarized = Vec::with_capacity(messages.len());
    for message in &messages {
        let decoded = crate::decode::decode(&message.payload, &settings.limits)?;
        let summary = summarizer.summarize(&decoded.event).await?;
        let meta = EventMeta::from_event(&decoded.event);
        summarized.push((meta, summary, matches!(message.kind, MessageKind::Campaign)));
    }
    let partitions = args.partitions;
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<ShardingReport> {
        let mut events = Vec::with_capacity(summarized.len());
        for chunk in summarized.chunks(64) {
            let texts: Vec<String> = chunk.iter().map(|(_, s, _)| s.request.clone()).collect();
            let vectors = embedder.embed_batch(&texts)?;
            for ((meta, summary, is_campaign), vector) in chunk.iter().zip(vectors) {
                events.push((meta.clone(), summary.clone(), vector, *is_campaign));
            }
        }
        measure(&settings, &codebook, partitions, &events)
    })
    .await
    .map_err(|e| anyhow::anyhow!("sharding eval panicked: {e}"))??;
    print(&report);
    Ok(())
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn print(r: &ShardingReport) {
    let shares: BTreeMap<usize, String> = r
        .shard_shares
        .iter()
        .enumerate()
        .map(|(i, s)| (i, format!("{:.1}%", s * 100.0)))
        .collect();
    println!(
        "sharding: {} events over {} shards ({} codebook cells)",
        r.events, r.partitions, r.cells
    );
    println!(
        "  near-duplicates (joined an existing cluster): {}; on another shard than their cluster's founder: {} ({:.1}%)",
        r.near_duplicates,
        r.near_duplicates_split,
        pct(r.near_duplicates_split, r.near_duplicates)
    );
    println!(
        "  events outside their cluster's majority shard: {} ({:.1}%)",
        r.outside_majority_shard,
        pct(r.outside_majority_shard, r.events)
    );
    println!(
        "  campaign events on the campaign's majority shard: {} of {} ({:.1}%)",
        r.campaign_on_majority_shard,
        r.campaign_events,
        pct(r.campaign_on_majority_shard, r.campaign_events)
    );
    println!("  shard shares: {shares:?}");
}
