//! `bench clustering --traffic-events N`: the exact index's three search paths on real vectors.
//!
//! The synthetic topics of the rest of `bench clustering` spread their variance evenly over the
//! dimensions; the static embedder's do not (its dimensions are principal components), and the
//! screen's prefix pass is built on that. So this runs the cluster stage alone over the demo
//! traffic as the pipeline sees it (summarized offline, embedded by the static embedder, at its
//! join threshold): the plain scan, the int8 screen, and the screen with its prefix pass, each
//! over the same vectors in the same order, for two rounds, and fails if any assignment differs.

use crate::config::{ClusterSettings, EmbedderSettings, STATIC_JOIN_THRESHOLD};
use crate::embed::static_model::StaticEmbedder;
use crate::embed::Embedder;
use crate::eval::online::cluster_online;
use crate::summarize::offline::OfflineSummarizer;

/// The three paths: (name, `cluster.exact_screen`, `cluster.exact_prefix`).
const PATHS: [(&str, bool, bool); 3] = [
    ("exact-plain", false, false),
    ("exact-noprefix", true, false),
    ("exact", true, true),
];

const ROUNDS: usize = 2;

/// Prints events/s of each path over `events` demo conversations (plus the campaign).
pub fn compare_on_traffic(events: usize) -> anyhow::Result<()> {
    let summarizer = OfflineSummarizer::default();
    let requests: Vec<String> = super::summarize::demo_conversations(7, events)?
        .iter()
        .filter_map(|event| summarizer.summarize_sync(event).ok())
        .map(|summary| summary.request)
        .collect();
    let embedder = StaticEmbedder::load(&EmbedderSettings::default().static_model_path())?;
    let vectors: Vec<f32> = embedder.embed_batch(&requests)?.concat();
    println!(
        "exact index on demo traffic: {} requests, static embedder ({} dimensions), join \
         threshold {STATIC_JOIN_THRESHOLD}, one thread",
        requests.len(),
        embedder.dimension()
    );
    println!(
        "{:<6} {:<15} {:>9} {:>11} {:>14}",
        "round", "index", "seconds", "events/s", "live_clusters"
    );
    let mut reference: Option<Vec<u32>> = None;
    for round in 1..=ROUNDS {
        for (name, screen, prefix) in PATHS {
            let settings = ClusterSettings {
                join_threshold: STATIC_JOIN_THRESHOLD,
                exact_screen: screen,
                exact_prefix: prefix,
                ..Default::default()
            };
            let run = cluster_online(&settings, embedder.id(), &vectors, embedder.dimension(), 7)?;
            let labels = run.micro_labels();
            match &reference {
                None => reference = Some(labels),
                Some(want) => anyhow::ensure!(
                    *want == labels,
                    "{name} assigned differently from the plain scan"
                ),
            }
            println!(
                "{:<6} {:<15} {:>9.2} {:>11.0} {:>14}",
                round,
                name,
                run.online_seconds,
                requests.len() as f64 / run.online_seconds.max(1e-9),
                run.state.live_clusters()
            );
        }
    }
    Ok(())
}
