//! `run --role cluster`: one cluster pipeline per partition (shard) of the internal topic that the
//! consumer group gives this instance.
//!
//! A router reads the source and hands each record to its shard's pipeline, opening the shard on
//! its first record: it restores the shard's snapshot (`<group>.shard-<p>` in the shared snapshot
//! directory), and records below the snapshot's offset are acknowledged and skipped, since their
//! effect is already in it. When the group revokes a partition, the router closes its shard: the
//! pipeline drains, writes its final snapshot and acknowledges everything; the source waits for
//! exactly that before committing and giving the partition up (`source/kafka.rs`). The next owner,
//! here or on another instance, opens the shard from that snapshot. After a crash the next owner
//! opens the last snapshot instead, and the records after it are read again — once.
//!
//! Every shard has its own cluster state (with its own id range, so ids stay unique), detectors,
//! snapshot and alert spool (`<spool_dir>/shard-<p>`); rows and gauges are combined across the
//! shards of the process (`export/view.rs`, `export/gauges.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::codebook::Codebook;
use super::{role_group, PrecomputedVectors, Role};
use crate::cluster::{snapshot, ClusterState};
use crate::config::Settings;
use crate::embed::Embedder;
use crate::export::http::Health;
use crate::export::view::ClusterView;
use crate::export::Metrics;
use crate::pipeline::{Pipeline, PipelineInput, PipelineReport};
use crate::run::{
    build_summarizer, configured_alert_sinks, restore_snapshot, start_http, RunOptions,
};
use crate::shutdown::ShutdownTrigger;
use crate::source::kafka::{KafkaDeadLetter, KafkaSource};
use crate::source::{DeadLetterSink, OffsetAcker, PartitionAssignment, RawMessage};
use crate::summarize::Summarizer;

/// How often the router looks for revoked shards to close when no record arrives.
const REVOCATION_CHECK: Duration = Duration::from_millis(50);

/// Cluster ids of shard `p` start at `(p + 1) << SHARD_ID_SHIFT`: 2^40 ids per shard, and ids
/// stay below 2^53 for 8191 shards, so the explorer's JavaScript numbers hold them exactly.
const SHARD_ID_SHIFT: u32 = 40;

/// The first cluster id of `shard`.
pub fn shard_id_base(shard: i32) -> u64 {
    (shard.max(0) as u64 + 1) << SHARD_ID_SHIFT
}

/// The snapshot file of `shard` for consumer group `group` (the cluster role's group).
pub fn shard_snapshot_path(dir: &Path, group: &str, shard: i32) -> std::path::PathBuf {
    snapshot::snapshot_path(dir, &format!("{group}.shard-{shard}"))
}

/// What a cluster-role run did.
#[derive(Debug, Default, Clone)]
pub struct ClusterRoleReport {
    /// Shards opened (a shard handed back and forth counts each time).
    pub shards_opened: usize,
    /// Records skipped because the restored snapshot already held them.
    pub skipped_in_snapshot: u64,
}

/// Consumes the internal topic until `shutdown` fires, then closes every shard and commits.
pub async fn run_cluster(
    settings: Settings,
    shutdown: ShutdownTrigger,
    options: RunOptions,
) -> anyhow::Result<ClusterRoleReport> {
    let metrics = options.metrics.clone();
    let health = Arc::new(Health::default());
    let view = Arc::new(ClusterView::default());
    let http_task = start_http(
        &settings,
        &metrics,
        &health,
        &view,
        &shutdown,
        options.on_listen,
    )
    .await?;

    let codebook_path = settings.scale.codebook_path(&settings.embedder);
    let codebook = Codebook::load(&codebook_path)?;
    let vectors: Arc<dyn Embedder> = Arc::new(PrecomputedVectors::new(
        &codebook.embedder_id,
        codebook.dimension,
    ));
    let mut kafka = settings.kafka.clone();
    kafka.group_id = role_group(&kafka.group_id, Role::Cluster);
    kafka.topic = settings.scale.enriched_topic.clone();
    let source = KafkaSource::new(
        &kafka,
        settings.limits.max_message_bytes,
        Some(metrics.kafka_consumer_lag.clone()),
    )?;
    let mut shards = Shards {
        group: kafka.group_id.clone(),
        topic: kafka.topic.clone(),
        summarizer: build_summarizer(&settings, None, &metrics)?,
        dead_letter: Arc::new(KafkaDeadLetter::new(&kafka)?),
        acker: source.acker(metrics.clone()),
        assignment: source.assignment(),
        settings,
        vectors,
        metrics: metrics.clone(),
        view: view.clone(),
        open: BTreeMap::new(),
        closing: BTreeMap::new(),
        report: ClusterRoleReport::default(),
    };
    tracing::info!(
        topic = %kafka.topic,
        group = %kafka.group_id,
        vector_space = %codebook.embedder_id,
        "cluster role: one shard per partition of the internal topic"
    );

    let (tx, mut rx) =
        mpsc::channel::<RawMessage>(shards.settings.pipeline.channel_capacity.max(1));
    health.set_running();
    let source = Arc::new(source);
    let reader = {
        let source = source.clone();
        let metrics = metrics.clone();
        let stop = shutdown.subscribe();
        tokio::spawn(async move { source.run(tx, stop, metrics).await })
    };
    let mut check = tokio::time::interval(REVOCATION_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let routed: anyhow::Result<()> = async {
        loop {
            tokio::select! {
                message = rx.recv() => match message {
                    Some(message) => shards.route(message).await?,
                    None => return Ok(()),
                },
                _ = check.tick() => shards.close_revoked().await?,
            }
        }
    }
    .await;
    // The router only stops early on failure; make sure the reader stops too.
    shutdown.trigger();
    drop(rx);
    let closed = shards.close_all().await;
    let read_result = reader
        .await
        .map_err(|e| anyhow::anyhow!("source task panicked: {e}"))?;
    let commit_result = source.commit();
    health.set_stopped();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    routed?;
    closed?;
    read_result?;
    commit_result?;
    tracing::info!(
        shards_opened = shards.report.shards_opened,
        skipped_in_snapshot = shards.report.skipped_in_snapshot,
        "cluster role drained and committed"
    );
    Ok(shards.report)
}

/// A shard this process is running.
struct OpenShard {
    input: mpsc::Sender<RawMessage>,
    /// Records below this offset are in the restored snapshot.
    resume_at: i64,
    pipeline: JoinHandle<anyhow::Result<PipelineReport>>,
}

struct Shards {
    settings: Settings,
    group: String,
    topic: String,
    vectors: Arc<dyn Embedder>,
    summarizer: Arc<dyn Summarizer>,
    dead_letter: Arc<dyn DeadLetterSink>,
    acker: Arc<dyn OffsetAcker>,
    assignment: Arc<PartitionAssignment>,
    metrics: Metrics,
    view: Arc<ClusterView>,
    open: BTreeMap<i32, OpenShard>,
    /// Shards being closed: their pipelines are draining and writing their final snapshots.
    closing: BTreeMap<i32, JoinHandle<anyhow::Result<PipelineReport>>>,
    report: ClusterRoleReport,
}

impl Shards {
    async fn route(&mut self, message: RawMessage) -> anyhow::Result<()> {
        let position = message.position;
        if !self.open.contains_key(&position.partition) {
            self.open_shard(position.partition).await?;
        }
        let Some(shard) = self.open.get(&position.partition) else {
            anyhow::bail!("shard {} did not open", position.partition);
        };
        if position.offset < shard.resume_at {
            // Its effect is in the snapshot the shard was restored from.
            self.acker.ack(position);
            self.report.skipped_in_snapshot += 1;
            return Ok(());
        }
        if shard.input.send(message).await.is_err() {
            // The pipeline ended on its own: that is a failure; surface its error.
            let shard = self.open.remove(&position.partition);
            if let Some(shard) = shard {
                finished(position.partition, shard.pipeline.await)?;
            }
            anyhow::bail!("shard {} stopped", position.partition);
        }
        Ok(())
    }

    /// Closes the shards whose partitions the group took away.
    async fn close_revoked(&mut self) -> anyhow::Result<()> {
        let owned = self.assignment.owned();
        let revoked: Vec<i32> = self
            .open
            .keys()
            .copied()
            .filter(|p| !owned.contains(p))
            .collect();
        for shard in revoked {
            if let Some(open) = self.open.remove(&shard) {
                tracing::info!(shard, "partition revoked; closing its shard");
                drop(open.input);
                self.closing.insert(shard, open.pipeline);
            }
        }
        let done: Vec<i32> = self
            .closing
            .iter()
            .filter(|(_, pipeline)| pipeline.is_finished())
            .map(|(shard, _)| *shard)
            .collect();
        for shard in done {
            if let Some(pipeline) = self.closing.remove(&shard) {
                self.retire(shard, pipeline.await)?;
            }
        }
        Ok(())
    }

    async fn close_all(&mut self) -> anyhow::Result<()> {
        let open = std::mem::take(&mut self.open);
        for (shard, open) in open {
            drop(open.input);
            self.closing.insert(shard, open.pipeline);
        }
        let mut first_error = Ok(());
        for (shard, pipeline) in std::mem::take(&mut self.closing) {
            if let Err(e) = self.retire(shard, pipeline.await) {
                tracing::error!(shard, error = %e, "shard failed");
                if first_error.is_ok() {
                    first_error = Err(e);
                }
            }
        }
        first_error
    }

    /// A closed shard's pipeline has finished: its rows and gauges leave this process.
    fn retire(
        &self,
        shard: i32,
        result: Result<anyhow::Result<PipelineReport>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        self.view.forget_shard(shard);
        self.metrics.gauge_board.forget(shard, &self.metrics);
        finished(shard, result)
    }

    async fn open_shard(&mut self, shard: i32) -> anyhow::Result<()> {
        // A shard handed away and back again must first finish closing: its final snapshot is
        // what this opening restores.
        if let Some(pipeline) = self.closing.remove(&shard) {
            self.retire(shard, pipeline.await)?;
        }
        let mut settings = self.settings.clone();
        if !settings.alerts.spool_dir.is_empty() {
            settings.alerts.spool_dir = Path::new(&settings.alerts.spool_dir)
                .join(format!("shard-{shard}"))
                .display()
                .to_string();
        }
        let (snapshots, state) = if settings.snapshot.dir.is_empty() {
            (None, None)
        } else {
            let path = shard_snapshot_path(Path::new(&settings.snapshot.dir), &self.group, shard);
            let (plan, state) =
                restore_snapshot(path, &self.topic, &settings, self.vectors.as_ref())?;
            (Some(plan), state)
        };
        let restored = state.is_some();
        let state = state
            .unwrap_or_else(|| {
                ClusterState::new(
                    settings.cluster.clone(),
                    self.vectors.dimension(),
                    self.vectors.id(),
                )
            })
            .with_id_base(shard_id_base(shard));
        let resume_at = snapshots
            .as_ref()
            .and_then(|plan| plan.resumed.get(&shard).copied())
            .unwrap_or(0);
        let alert_sinks = configured_alert_sinks(&settings, &self.metrics)?;
        let pipeline = Pipeline {
            summarizer: self.summarizer.clone(),
            embedder: self.vectors.clone(),
            dead_letter: self.dead_letter.clone(),
            acker: self.acker.clone(),
            initial_state: Some(state),
            snapshots,
            // One partition per shard: its event clock needs no waiting on others.
            partitions: None,
            assignments: None,
            lifecycle: None,
            alert_sinks,
            metrics: self.metrics.clone(),
            view: Some(self.view.clone()),
            investigation: None,
            namer: None,
            deterministic_batches: false,
            input: PipelineInput::Enriched,
            shard: Some(shard),
            settings,
        };
        let (input, rx) = mpsc::channel(self.settings.pipeline.channel_capacity.max(1));
        let pipeline = tokio::spawn(pipeline.run(rx));
        tracing::info!(shard, restored, resume_at, "shard opened");
        self.report.shards_opened += 1;
        self.open.insert(
            shard,
            OpenShard {
                input,
                resume_at,
                pipeline,
            },
        );
        Ok(())
    }
}

fn finished(
    shard: i32,
    result: Result<anyhow::Result<PipelineReport>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    let report = result.map_err(|e| anyhow::anyhow!("shard {shard} panicked: {e}"))??;
    tracing::info!(
        shard,
        clustered = report.state.clustered_events(),
        live_clusters = report.state.live_clusters(),
        "shard closed"
    );
    Ok(())
}
