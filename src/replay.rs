//! `clusterwatch replay`: the same pipeline minus Kafka, over a JSONL file of v1 events, as fast as
//! possible in event time.
//!
//! Determinism is a feature here: the same input gives byte-identical assignments, alerts and
//! cluster table. The pipeline already decides everything from event time; replay additionally
//! fixes the embed batch composition (full batches only) so no float depends on timing.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::alert::sinks::{AlertSink, JsonlSink};
use crate::config::Settings;
use crate::embed::Embedder;
use crate::export::clusters::ClusterTable;
use crate::export::Metrics;
use crate::pipeline::{AssignmentSink, LifecycleSink, Pipeline, PipelineReport, RecordSink};
use crate::source::file::{read_lines, FileDeadLetter};
use crate::source::NoAck;

/// Where replay writes its outputs. Each is optional.
#[derive(Debug, Clone, Default)]
pub struct ReplayOutputs {
    pub alerts: Option<PathBuf>,
    pub assignments: Option<PathBuf>,
    pub clusters: Option<PathBuf>,
    pub lifecycle: Option<PathBuf>,
    pub dead_letter: Option<PathBuf>,
    /// Restricted: member ids of flagged clusters (`--investigation-out`). Opt-in.
    pub investigation: Option<PathBuf>,
}

/// Writes one JSON line per record (`--assignments-out`, `--lifecycle-out`).
pub struct JsonlRecords {
    writer: std::io::BufWriter<std::fs::File>,
}

impl JsonlRecords {
    pub fn create(path: &Path) -> anyhow::Result<Self> {
        Ok(JsonlRecords {
            writer: std::io::BufWriter::new(
                std::fs::File::create(path)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?,
            ),
        })
    }
}

impl<T: serde::Serialize> RecordSink<T> for JsonlRecords {
    fn write(&mut self, record: &T) -> anyhow::Result<()> {
        serde_json::to_writer(&mut self.writer, record)?;
        self.writer.write_all(b"\n")?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush()?;
        Ok(())
    }
}

/// Replays `input` through the pipeline and writes the requested outputs.
pub async fn replay(
    settings: Settings,
    input: &Path,
    outputs: &ReplayOutputs,
    metrics: Metrics,
    embedder: Option<Arc<dyn Embedder>>,
    extra_alert_sinks: Vec<Box<dyn AlertSink>>,
) -> anyhow::Result<PipelineReport> {
    if !input.exists() {
        anyhow::bail!("input file {} does not exist", input.display());
    }
    let llm = crate::run::build_llm(&settings, &metrics)?;
    let embedder = match embedder {
        Some(e) => e,
        None => crate::run::build_embedder(&settings, &metrics).await?,
    };
    let mut alert_sinks = crate::run::configured_alert_sinks(&settings, &metrics)?;
    if let Some(path) = &outputs.alerts {
        alert_sinks.push(Box::new(JsonlSink::create(path)?));
    }
    alert_sinks.extend(extra_alert_sinks);
    let assignments: Option<Box<AssignmentSink>> = match &outputs.assignments {
        Some(path) => Some(Box::new(JsonlRecords::create(path)?)),
        None => None,
    };
    let lifecycle: Option<Box<LifecycleSink>> = match &outputs.lifecycle {
        Some(path) => Some(Box::new(JsonlRecords::create(path)?)),
        None => None,
    };
    let pipeline = Pipeline {
        summarizer: crate::run::build_summarizer(&settings, llm.as_ref(), &metrics)?,
        embedder,
        dead_letter: Arc::new(FileDeadLetter::create(outputs.dead_letter.as_deref())?),
        acker: Arc::new(NoAck),
        initial_state: None,
        snapshots: None,
        partitions: None,
        assignments,
        lifecycle,
        view: None,
        alert_sinks,
        metrics: metrics.clone(),
        investigation: match &outputs.investigation {
            Some(path) => Some(Box::new(JsonlRecords::create(path)?)),
            None => None,
        },
        namer: llm
            .as_ref()
            .and_then(|client| crate::naming::Namer::new(client.clone(), metrics.clone())),
        deterministic_batches: true,
        input: crate::pipeline::PipelineInput::Conversations,
        shard: None,
        settings: settings.clone(),
    };
    let (tx, rx) = mpsc::channel(settings.pipeline.channel_capacity.max(1));
    let reader = tokio::spawn(read_lines(
        input.to_path_buf(),
        tx,
        settings.limits.max_message_bytes,
        metrics.clone(),
    ));
    let report = pipeline.run(rx).await;
    let read = reader
        .await
        .map_err(|e| anyhow::anyhow!("reader panicked: {e}"))?;
    let report = report?;
    read?;
    if let Some(path) = &outputs.clusters {
        let table = ClusterTable::build(&report.state, &report.gate);
        let json = serde_json::to_string_pretty(&table)?;
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    Ok(report)
}
