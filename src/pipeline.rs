//! Wires the stages together: decode + summarize → embed → cluster + detect → alert sinks, joined
//! by bounded channels.
//!
//! Order is preserved end to end: every message, valid or not, travels the whole pipeline as
//! [`Work`], so the cluster stage acknowledges source positions in the order they were read. A
//! position is acknowledged only once its event is in cluster state (or its rejection is in the
//! dead-letter sink), which is what makes a committed offset a promise. A full channel blocks the
//! stage before it, and ultimately the source: that is the backpressure.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::alert::sinks::AlertSink;
use crate::alert::AlertRecord;
use crate::cluster::lifecycle::{LifecycleEvent, LifecycleKind};
use crate::cluster::partitions::PartitionFeed;
use crate::cluster::snapshotter::Snapshotter;
use crate::cluster::{Assignment, ClusterId, ClusterState};
use crate::config::Settings;
use crate::decode::{self, DecodeError};
use crate::detect::{Detectors, Observed};
use crate::embed::{EmbedError, Embedder};
use crate::event::EventMeta;
use crate::export::Metrics;
use crate::privacy::PrivacyGate;
use crate::source::{
    DeadLetterSink, OffsetAcker, PartitionAssignment, RawMessage, Rejection, SourcePosition,
};
use crate::summarize::{Summarizer, Summary};

/// At most this many waiting events share one pass over the centroid index.
const PREFETCH_BATCH: usize = 64;

/// One message on its way through the stages.
// Almost every message is `Summarized`; boxing it would add an allocation per event to save
// memory only on the rare rejected one.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Work {
    /// Rejected and dead-lettered: only its position remains, to be acknowledged in order.
    Skip { position: SourcePosition },
    Summarized {
        meta: EventMeta,
        summary: Summary,
        position: SourcePosition,
        /// [`RawMessage::produced_at_ms`], for the event→cluster latency metric.
        produced_at_ms: Option<i64>,
    },
}

impl Work {
    pub(crate) fn position(&self) -> SourcePosition {
        match self {
            Work::Skip { position } | Work::Summarized { position, .. } => *position,
        }
    }
}

pub(crate) struct Embedded {
    pub(crate) work: Work,
    pub(crate) vector: Option<Vec<f32>>,
}

/// One line of `--assignments-out`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AssignmentRecord {
    pub conversation_id: String,
    pub cluster_id: ClusterId,
    /// The topic (second hierarchy level) of the cluster as of the last topic rebuild; null
    /// before the first rebuild and for clusters born since.
    pub topic_id: Option<u64>,
    /// The domain (third level) of that topic, as of the same rebuild.
    pub domain_id: Option<u64>,
}

/// Receives records in order (assignments, lifecycle events); called from the cluster stage's
/// thread.
pub trait RecordSink<T>: Send {
    fn write(&mut self, record: &T) -> anyhow::Result<()>;
    fn flush(&mut self) -> anyhow::Result<()>;
}

/// Where `--assignments-out` lines go.
pub type AssignmentSink = dyn RecordSink<AssignmentRecord>;
/// Where `--lifecycle-out` lines go (already redacted by the privacy gate).
pub type LifecycleSink = dyn RecordSink<LifecycleEvent>;

/// Everything a pipeline run needs besides its input.
pub struct Pipeline {
    pub settings: Settings,
    pub summarizer: Arc<dyn Summarizer>,
    pub embedder: Arc<dyn Embedder>,
    pub dead_letter: Arc<dyn DeadLetterSink>,
    pub acker: Arc<dyn OffsetAcker>,
    /// State to continue from (a loaded snapshot); `None` starts empty.
    pub initial_state: Option<ClusterState>,
    /// Snapshot the state as it goes; offsets are then acknowledged only once in a snapshot.
    pub snapshots: Option<SnapshotPlan>,
    /// The partitions the source owns, when it is a consumer group; the event clock waits for
    /// each of them. `None` for single-stream sources.
    pub partitions: Option<Arc<PartitionAssignment>>,
    pub assignments: Option<Box<AssignmentSink>>,
    pub lifecycle: Option<Box<LifecycleSink>>,
    pub alert_sinks: Vec<Box<dyn AlertSink>>,
    pub metrics: Metrics,
    /// Where the cluster stage publishes the k-anonymous cluster view, if anyone reads it.
    pub view: Option<Arc<crate::export::view::ClusterView>>,
    /// The restricted investigation output (member ids of flagged clusters), when opted in.
    pub investigation: Option<Box<crate::investigation::InvestigationSink>>,
    /// Names and audits labels with the LLM, when one is configured for that; labels then show
    /// only once it has passed them.
    pub namer: Option<crate::naming::Namer>,
    /// Replay mode: embed batches are always filled to `embed_batch_size` (or end of input), so
    /// batch composition — and with it every float — is independent of timing.
    pub deterministic_batches: bool,
    /// What the input messages are: conversations, or the enrich role's records.
    pub input: PipelineInput,
    /// The cluster shard this pipeline owns (`run --role cluster`): its rows and gauges are
    /// combined with the other shards' of this process. `None` for a whole-stream pipeline.
    pub shard: Option<i32>,
}

/// What arrives on a pipeline's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PipelineInput {
    /// v1 conversation events: decode, summarize and embed them here.
    #[default]
    Conversations,
    /// Records of the enrich role (`src/scale/record.rs`), already summarized and embedded; the
    /// pipeline's embedder only names the vector space they must be in.
    Enriched,
}

/// Where and how often the cluster stage snapshots.
pub struct SnapshotPlan {
    pub path: std::path::PathBuf,
    pub source_topic: String,
    pub settings: crate::config::SnapshotSettings,
    /// The offsets (next to read) of the snapshot `initial_state` came from.
    pub resumed: std::collections::BTreeMap<i32, i64>,
    /// The detectors' memory from the same snapshot.
    pub detector: Option<crate::detect::DetectorSnapshot>,
}

/// What a finished run leaves behind, for summaries and `--clusters-out`.
pub struct PipelineReport {
    pub state: ClusterState,
    pub detector: Detectors,
    pub gate: PrivacyGate,
    /// The most recent alert state changes (at most [`KEPT_ALERTS`]).
    pub alerts: std::collections::VecDeque<AlertRecord>,
}

/// Alert records kept in memory for the end-of-run report.
pub const KEPT_ALERTS: usize = 10_000;

impl Pipeline {
    /// Runs until `input` closes and every stage has drained.
    pub async fn run(
        mut self,
        input: mpsc::Receiver<RawMessage>,
    ) -> anyhow::Result<PipelineReport> {
        self.settings.validate()?;
        let capacity = self.settings.pipeline.channel_capacity.max(1);
        let (summarized_tx, summarized_rx) = mpsc::channel::<Work>(capacity);
        let (embedded_tx, embedded_rx) = mpsc::channel::<Embedded>(capacity);
        let (alert_tx, alert_rx) = mpsc::channel::<AlertRecord>(capacity);

        let (summarize, embed) = match self.input {
            PipelineInput::Conversations => (
                tokio::spawn(summarize_stage(
                    input,
                    summarized_tx,
                    self.investigation.is_some(),
                    self.settings.clone(),
                    self.summarizer.clone(),
                    self.dead_letter.clone(),
                    self.metrics.clone(),
                )),
                tokio::spawn(embed_stage(
                    summarized_rx,
                    embedded_tx,
                    self.embedder.clone(),
                    self.settings.pipeline.embed_batch_size.max(1),
                    Duration::from_millis(self.settings.pipeline.embed_linger_ms),
                    self.deterministic_batches,
                    self.dead_letter.clone(),
                    self.metrics.clone(),
                )),
            ),
            PipelineInput::Enriched => {
                drop((summarized_tx, summarized_rx));
                (
                    tokio::spawn(crate::scale::intake::enriched_stage(
                        input,
                        embedded_tx,
                        self.embedder.id().to_string(),
                        self.embedder.dimension(),
                        self.settings.limits.max_message_bytes,
                        self.dead_letter.clone(),
                        self.metrics.clone(),
                    )),
                    tokio::spawn(async { anyhow::Ok(()) }),
                )
            }
        };
        let gate = PrivacyGate::new(self.settings.privacy.clone());
        let mut state = match self.initial_state {
            Some(state) => state,
            None => ClusterState::new(
                self.settings.cluster.clone(),
                self.embedder.dimension(),
                self.embedder.id(),
            ),
        };
        if !self.deterministic_batches {
            state = state.with_background_index_builds();
        }
        state = state.with_join_window(self.settings.detect.coordinated.window_secs);
        let (namer, namer_task) = match self.namer {
            Some(namer) => {
                state = state.with_llm_labels();
                let (handle, task) = namer.spawn();
                (Some(NamerLink::new(handle)), Some(task))
            }
            None => (None, None),
        };
        let mut detector = Detectors::new(&self.settings.detect, gate.clone())?;
        if let Some(memory) = self
            .snapshots
            .as_mut()
            .and_then(|plan| plan.detector.take())
        {
            detector.restore(memory);
        }
        // The highest alert sequence every sink has taken; a snapshot waits for it (see
        // `Snapshotter`). Records before a restored snapshot were all handed over.
        let alerts_handed_over = Arc::new(AtomicU64::new(detector.emitted()));
        let cluster = {
            let metrics = self.metrics.clone();
            let completion = match self.snapshots {
                Some(plan) => Completion::Snapshots(Box::new(Snapshotter::new(
                    plan.path,
                    &plan.source_topic,
                    &plan.settings,
                    &plan.resumed,
                    self.acker.clone(),
                    alerts_handed_over.clone(),
                    self.metrics.clone(),
                ))),
                None => Completion::PerEvent(self.acker.clone()),
            };
            let partitions = self.partitions.clone();
            let shard = self.shard;
            let outputs = ClusterOutputs {
                assignments: self.assignments,
                lifecycle: self.lifecycle,
                view: self.view.clone(),
                namer,
                investigation: self.investigation.map(|sink| {
                    (
                        crate::investigation::InvestigationTracker::new(
                            &self.settings.investigation,
                        ),
                        sink,
                    )
                }),
            };
            let gate = gate.clone();
            tokio::task::spawn_blocking(move || {
                cluster_stage(
                    embedded_rx,
                    alert_tx,
                    state,
                    detector,
                    gate,
                    completion,
                    partitions,
                    outputs,
                    shard,
                    metrics,
                )
            })
        };
        let alerts = tokio::spawn(alert_stage(
            alert_rx,
            self.alert_sinks,
            self.view.clone(),
            alerts_handed_over,
            self.metrics.clone(),
        ));

        // Join in pipeline order; an upstream failure closes channels so downstream still drains.
        let summarize_result = summarize.await;
        let embed_result = embed.await;
        let cluster_result = cluster.await;
        let alerts_result = alerts.await;
        if let Some(task) = namer_task {
            // The cluster stage dropped its request sender, so the namer is finishing.
            let _ = task.await;
        }

        summarize_result.map_err(|e| anyhow::anyhow!("summarize stage panicked: {e}"))??;
        embed_result.map_err(|e| anyhow::anyhow!("embed stage panicked: {e}"))??;
        let (state, detector) =
            cluster_result.map_err(|e| anyhow::anyhow!("cluster stage panicked: {e}"))??;
        let alerts = alerts_result.map_err(|e| anyhow::anyhow!("alert stage panicked: {e}"))?;
        Ok(PipelineReport {
            state,
            detector,
            gate,
            alerts,
        })
    }
}

/// Decodes and summarizes, `summarize_concurrency` messages at a time, emitting in input order.
pub(crate) async fn summarize_stage(
    input: mpsc::Receiver<RawMessage>,
    output: mpsc::Sender<Work>,
    keep_account_ids: bool,
    settings: Settings,
    summarizer: Arc<dyn Summarizer>,
    dead_letter: Arc<dyn DeadLetterSink>,
    metrics: Metrics,
) -> anyhow::Result<()> {
    let concurrency = settings.pipeline.summarize_concurrency.max(1);
    let limits = settings.limits.clone();
    let mut results = tokio_stream_from(input)
        .map(|message| {
            let summarizer = summarizer.clone();
            let dead_letter = dead_letter.clone();
            let metrics = metrics.clone();
            let limits = limits.clone();
            async move {
                process_message(
                    message,
                    keep_account_ids,
                    &limits,
                    summarizer.as_ref(),
                    dead_letter.as_ref(),
                    &metrics,
                )
                .await
            }
        })
        .buffered(concurrency);
    while let Some(result) = results.next().await {
        let work = result?;
        if output.send(work).await.is_err() {
            anyhow::bail!("embed stage stopped early");
        }
    }
    Ok(())
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn process_message(
    message: RawMessage,
    keep_account_ids: bool,
    limits: &crate::config::DecodeLimits,
    summarizer: &dyn Summarizer,
    dead_letter: &dyn DeadLetterSink,
    metrics: &Metrics,
) -> anyhow::Result<Work> {
    let position = message.position;
    let started = Instant::now();
    let decoded = if message.original_len > limits.max_message_bytes {
        Err(DecodeError::Oversized {
            size: message.original_len,
            limit: limits.max_message_bytes,
        })
    } else {
        decode::decode(&message.payload, limits)
    };
    metrics.observe_stage("decode", started.elapsed().as_secs_f64());
    let decoded = match decoded {
        Ok(d) => d,
        Err(error) => {
            metrics
                .events_rejected
                .with_label_values(&[error.reason()])
                .inc();
            tracing::warn!(
                partition = position.partition,
                offset = position.offset,
                reason = error.reason(),
                error = %error,
                "rejected message sent to dead letter"
            );
            let rejection = Rejection {
                reason: error.reason(),
                detail: error.to_string(),
            };
            deliver_dead_letter(dead_letter, &message, &rejection, metrics).await?;
            return Ok(Work::Skip { position });
        }
    };
    if decoded.turns_capped {
        metrics.turns_capped.inc();
    }
    let started = Instant::now();
    let summary = summarizer.summarize(&decoded.event).await;
    metrics.observe_stage("summarize", started.elapsed().as_secs_f64());
    match summary {
        Ok(summary) => {
            if summarizer.is_offline() {
                metrics.summaries.with_label_values(&["offline"]).inc();
            }
            let mut meta = EventMeta::from_event(&decoded.event);
            if keep_account_ids {
                meta.restricted_account = Some(crate::investigation::RestrictedId::new(
                    &decoded.event.account_id,
                ));
            }
            // `decoded` (the raw turns) is dropped here: nothing downstream sees text but the
            // scrubbed summary.
            drop(decoded);
            Ok(Work::Summarized {
                meta,
                summary,
                position,
                produced_at_ms: message.produced_at_ms,
            })
        }
        Err(error) => {
            metrics.stage_errors.with_label_values(&["summarize"]).inc();
            metrics
                .events_rejected
                .with_label_values(&["summarize_failed"])
                .inc();
            tracing::warn!(partition = position.partition, offset = position.offset, error = %error, "summarize failed; message sent to dead letter");
            let rejection = Rejection {
                reason: "summarize_failed",
                detail: error.to_string(),
            };
            deliver_dead_letter(dead_letter, &message, &rejection, metrics).await?;
            Ok(Work::Skip { position })
        }
    }
}

/// Writes a dead-letter record, retrying with exponential backoff. If the sink stays down the
/// stage fails, so the position is never acknowledged and the message is redelivered later —
/// a rejected message is never silently lost.
pub(crate) async fn deliver_dead_letter(
    sink: &dyn DeadLetterSink,
    message: &RawMessage,
    rejection: &Rejection,
    metrics: &Metrics,
) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 8;
    let mut delay = Duration::from_millis(100);
    for attempt in 1..=ATTEMPTS {
        let started = Instant::now();
        match sink.write(message, rejection).await {
            Ok(()) => {
                metrics.observe_stage("dead_letter", started.elapsed().as_secs_f64());
                metrics.dead_letter_written.inc();
                return Ok(());
            }
            Err(e) if attempt < ATTEMPTS => {
                metrics.dead_letter_retries.inc();
                metrics
                    .stage_errors
                    .with_label_values(&["dead_letter"])
                    .inc();
                tracing::warn!(error = %e, attempt, "dead-letter write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                metrics
                    .stage_errors
                    .with_label_values(&["dead_letter"])
                    .inc();
                anyhow::bail!(
                    "dead-letter sink unavailable after {ATTEMPTS} attempts ({e}); stopping without acknowledging partition {} offset {}",
                    message.position.partition,
                    message.position.offset
                );
            }
        }
    }
    unreachable!("the loop returns on the last attempt")
}

/// Collects batches and embeds them off the async runtime.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn embed_stage(
    mut input: mpsc::Receiver<Work>,
    output: mpsc::Sender<Embedded>,
    embedder: Arc<dyn Embedder>,
    batch_size: usize,
    linger: Duration,
    deterministic: bool,
    dead_letter: Arc<dyn DeadLetterSink>,
    metrics: Metrics,
) -> anyhow::Result<()> {
    loop {
        let Some(first) = input.recv().await else {
            return Ok(());
        };
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < batch_size {
            let next = if deterministic {
                input.recv().await
            } else {
                match tokio::time::timeout_at(deadline, input.recv()).await {
                    Ok(item) => item,
                    Err(_) => break,
                }
            };
            match next {
                Some(work) => batch.push(work),
                None => break,
            }
        }
        let texts: Vec<String> = batch
            .iter()
            .filter_map(|w| match w {
                Work::Summarized { summary, .. } => Some(summary.request.clone()),
                Work::Skip { .. } => None,
            })
            .collect();
        let vectors = if texts.is_empty() {
            Vec::new()
        } else {
            embed_with_isolation(embedder.clone(), texts, &metrics).await
        };
        let mut vectors = vectors.into_iter();
        for work in batch {
            let embedded = match work {
                Work::Skip { .. } => Embedded { work, vector: None },
                Work::Summarized { ref position, .. } => match vectors.next().flatten() {
                    Some(vector) => Embedded {
                        work,
                        vector: Some(vector),
                    },
                    None => {
                        // The model failed on this input alone. The raw text is gone by now, so
                        // the dead-letter record carries the position and reason, not the payload.
                        let marker = RawMessage {
                            payload: Vec::new(),
                            original_len: 0,
                            key: None,
                            position: *position,
                            produced_at_ms: None,
                        };
                        metrics
                            .events_rejected
                            .with_label_values(&["embed_failed"])
                            .inc();
                        let rejection = Rejection {
                            reason: "embed_failed",
                            detail: "the embedding model failed on this summary".into(),
                        };
                        deliver_dead_letter(dead_letter.as_ref(), &marker, &rejection, &metrics)
                            .await?;
                        Embedded {
                            work: Work::Skip {
                                position: *position,
                            },
                            vector: None,
                        }
                    }
                },
            };
            if output.send(embedded).await.is_err() {
                anyhow::bail!("cluster stage stopped early");
            }
        }
    }
}

/// Embeds a batch; if the batch fails, retries each text alone so one bad input cannot sink its
/// neighbours. `None` marks a text the model could not embed.
async fn embed_with_isolation(
    embedder: Arc<dyn Embedder>,
    texts: Vec<String>,
    metrics: &Metrics,
) -> Vec<Option<Vec<f32>>> {
    let n = texts.len();
    let started = Instant::now();
    let result = embed_when_available(embedder.clone(), texts.clone(), metrics).await;
    let per_item = started.elapsed().as_secs_f64() / n as f64;
    match result {
        Ok(Ok(vectors)) if vectors.len() == n => {
            for _ in 0..n {
                metrics.observe_stage("embed", per_item);
            }
            vectors.into_iter().map(Some).collect()
        }
        other => {
            metrics.stage_errors.with_label_values(&["embed"]).inc();
            match other {
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "batch embedding failed; retrying one by one")
                }
                Ok(Ok(v)) => tracing::error!(
                    got = v.len(),
                    want = n,
                    "embedder returned the wrong number of vectors"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "embedding task panicked; retrying one by one")
                }
            }
            let mut out = Vec::with_capacity(n);
            for text in texts {
                let one = embed_when_available(embedder.clone(), vec![text], metrics).await;
                out.push(match one {
                    Ok(Ok(mut v)) if v.len() == 1 => v.pop(),
                    _ => None,
                });
            }
            out
        }
    }
}

/// Longest wait between tries while the embedding service is unavailable.
const EMBED_UNAVAILABLE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Runs the embedder off the async runtime. While it reports [`EmbedError::Unavailable`] (a remote
/// service down, its breaker open) the batch is held and tried again with growing waits: the
/// events are delayed, never dropped, and the held batch backs the source up through the bounded
/// channels, so nothing is acknowledged meanwhile.
async fn embed_when_available(
    embedder: Arc<dyn Embedder>,
    texts: Vec<String>,
    metrics: &Metrics,
) -> Result<Result<Vec<Vec<f32>>, EmbedError>, tokio::task::JoinError> {
    let mut wait = Duration::from_millis(250);
    loop {
        let result = {
            let embedder = embedder.clone();
            let texts = texts.clone();
            tokio::task::spawn_blocking(move || embedder.embed_batch(&texts)).await
        };
        match result {
            Ok(Err(EmbedError::Unavailable(detail))) => {
                metrics.stage_errors.with_label_values(&["embed"]).inc();
                tracing::warn!(
                    error = %detail,
                    retry_in_ms = wait.as_millis() as u64,
                    texts = texts.len(),
                    "embedding service unavailable; holding the batch (nothing is dropped)"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(EMBED_UNAVAILABLE_MAX_WAIT);
            }
            other => return other,
        }
    }
}

/// What the cluster stage writes besides alerts.
struct ClusterOutputs {
    assignments: Option<Box<AssignmentSink>>,
    lifecycle: Option<Box<LifecycleSink>>,
    /// Where the k-anonymous cluster view is published, if anyone reads it.
    view: Option<Arc<crate::export::view::ClusterView>>,
    namer: Option<NamerLink>,
    investigation: Option<(
        crate::investigation::InvestigationTracker,
        Box<crate::investigation::InvestigationSink>,
    )>,
}

/// Groups named per maintenance pass at most (each costs one or two model calls).
const NAMING_PER_PASS: usize = 32;

/// How long a finishing cluster stage waits for names still being made.
const NAMING_DRAIN: Duration = Duration::from_secs(120);

/// The cluster stage's link to the namer task.
struct NamerLink {
    handle: crate::naming::NamerHandle,
    in_flight: std::collections::HashSet<crate::cluster::names::NameKey>,
    /// Groups whose last request found the model or the auditor unavailable. The next
    /// maintenance pass asks again; the end-of-input drain does not, so a model that is down does
    /// not hold up shutdown.
    unavailable: std::collections::HashSet<crate::cluster::names::NameKey>,
}

impl NamerLink {
    fn new(handle: crate::naming::NamerHandle) -> Self {
        NamerLink {
            handle,
            in_flight: Default::default(),
            unavailable: Default::default(),
        }
    }

    /// Stores the names that have come back.
    fn collect(&mut self, state: &mut ClusterState) {
        while let Ok(result) = self.handle.results.try_recv() {
            self.in_flight.remove(&result.key);
            if matches!(
                result.outcome,
                crate::cluster::names::NamingOutcome::Unavailable
            ) {
                self.unavailable.insert(result.key);
            }
            state.record_name(&result);
        }
    }

    /// Asks for names of up to `max` groups that want one (at a maintenance pass, `retry` also
    /// asks again about groups the model was unavailable for); never blocks: a full queue means
    /// the rest are asked for at a later pass.
    fn request(&mut self, state: &ClusterState, gate: &PrivacyGate, max: usize, retry: bool) {
        if retry {
            self.unavailable.clear();
        }
        let skip: std::collections::HashSet<_> =
            self.in_flight.union(&self.unavailable).copied().collect();
        for request in state.naming_requests(gate, &skip, max) {
            let key = request.key;
            match self.handle.requests.try_send(request) {
                Ok(()) => {
                    self.in_flight.insert(key);
                }
                Err(_) => break,
            }
        }
    }

    /// At the end of input: asks for every remaining name and waits (bounded) for the answers,
    /// so a replay's final table carries them.
    fn finish(&mut self, state: &mut ClusterState, gate: &PrivacyGate) {
        let deadline = Instant::now() + NAMING_DRAIN;
        loop {
            self.collect(state);
            self.request(state, gate, crate::naming::QUEUE, false);
            if self.in_flight.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    waiting = self.in_flight.len(),
                    "stopping with cluster names still being made"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl ClusterOutputs {
    /// Counts lifecycle events, moves alerts off merged-away clusters, and writes the events
    /// (redacted below the privacy gate) to `--lifecycle-out`.
    fn lifecycle(
        &mut self,
        events: Vec<LifecycleEvent>,
        detector: &mut Detectors,
        gate: &PrivacyGate,
        metrics: &Metrics,
    ) -> anyhow::Result<()> {
        for event in events {
            metrics
                .cluster_lifecycle
                .with_label_values(&[event.event.as_str()])
                .inc();
            if let (LifecycleKind::Merged, Some(into)) = (event.event, event.into) {
                detector.follow_merge(event.cluster_id, into);
            }
            if let Some((tracker, _)) = self.investigation.as_mut() {
                tracker.lifecycle(&event);
            }
            if let Some(sink) = self.lifecycle.as_mut() {
                sink.write(&gate.redact_lifecycle(&event))?;
            }
        }
        Ok(())
    }

    /// Records a join for the investigation output; writes it if the cluster is flagged.
    fn investigation_join(&mut self, cluster: ClusterId, meta: &EventMeta) -> anyhow::Result<()> {
        if let Some((tracker, sink)) = self.investigation.as_mut() {
            if let Some(record) = tracker.joined(cluster, meta) {
                sink.write(&record)?;
            }
        }
        Ok(())
    }

    /// An alert changed state: a newly flagged cluster's recent members go to the output.
    fn investigation_alert(&mut self, alert: &AlertRecord) -> anyhow::Result<()> {
        if let Some((tracker, sink)) = self.investigation.as_mut() {
            for record in tracker.alert(alert) {
                sink.write(&record)?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if let Some((_, sink)) = self.investigation.as_mut() {
            sink.flush()?;
        }
        if let Some(sink) = self.assignments.as_mut() {
            sink.flush()?;
        }
        if let Some(sink) = self.lifecycle.as_mut() {
            sink.flush()?;
        }
        Ok(())
    }
}

/// How a processed position is acknowledged to the source.
enum Completion {
    /// At once: the effect is in cluster state (memory), which is what the source may commit.
    PerEvent(Arc<dyn OffsetAcker>),
    /// Once a snapshot holding the effect is on disk, so a restart from that snapshot and the
    /// committed offsets neither loses nor repeats an event.
    Snapshots(Box<Snapshotter>),
}

impl Completion {
    fn done(&mut self, position: SourcePosition, state: &ClusterState, detector: &Detectors) {
        match self {
            Completion::PerEvent(acker) => acker.ack(position),
            Completion::Snapshots(snapshotter) => {
                snapshotter.processed(position);
                snapshotter.maybe_snapshot(state, detector);
            }
        }
    }

    /// The source is handing partitions over: make everything processed durable now.
    fn flush(&mut self, state: &ClusterState, detector: &Detectors) {
        if let Completion::Snapshots(snapshotter) = self {
            snapshotter.snapshot_now(state, detector);
        }
    }

    /// Nothing arrived for a while: take a snapshot if one is due, so the tail of a stream that
    /// stopped is made durable and its offsets committed (otherwise its lag never drains).
    fn idle(&mut self, state: &ClusterState, detector: &Detectors) {
        if let Completion::Snapshots(snapshotter) = self {
            snapshotter.maybe_snapshot(state, detector);
        }
    }

    fn finish(self, state: &ClusterState, detector: &Detectors) {
        if let Completion::Snapshots(snapshotter) = self {
            snapshotter.finish(state, detector);
        }
    }
}

/// How long the cluster stage waits for an event before doing its idle work: a due snapshot and
/// the gauges.
const IDLE_TICK: Duration = Duration::from_secs(1);

enum Next<T> {
    Item(T),
    Idle,
    Closed,
}

/// The next item, or `Idle` after [`IDLE_TICK`] without one. The stage runs on a blocking
/// thread of the runtime, so it can wait on the runtime's timer.
fn next_or_idle<T>(input: &mut mpsc::Receiver<T>) -> Next<T> {
    let received = match tokio::runtime::Handle::try_current() {
        Ok(handle) => match handle.block_on(tokio::time::timeout(IDLE_TICK, input.recv())) {
            Ok(received) => received,
            Err(_) => return Next::Idle,
        },
        Err(_) => input.blocking_recv(),
    };
    received.map_or(Next::Closed, Next::Item)
}

/// Owns cluster state and the detector; runs on a blocking thread (it is CPU work).
#[allow(clippy::too_many_arguments)]
fn cluster_stage(
    mut input: mpsc::Receiver<Embedded>,
    alerts: mpsc::Sender<AlertRecord>,
    mut state: ClusterState,
    mut detector: Detectors,
    gate: PrivacyGate,
    mut completion: Completion,
    partitions: Option<Arc<PartitionAssignment>>,
    mut outputs: ClusterOutputs,
    shard: Option<i32>,
    metrics: Metrics,
) -> anyhow::Result<(ClusterState, Detectors)> {
    let mut view_cadence = ViewCadence::new(shard);
    let shard = shard.unwrap_or(crate::export::gauges::WHOLE_STREAM);
    let mut labels_refused_seen = 0u64;
    // The source raises a flush request while it hands revoked partitions over.
    let handover = partitions.clone();
    let mut partitions = partitions.map(PartitionFeed::new);
    let mut previous: Option<SourcePosition> = None;
    // Events already waiting are taken together, so the index can find their nearest
    // centroids in one pass (see `ClusterState::prefetch`); they are still applied one by one.
    let mut waiting: std::collections::VecDeque<Embedded> = Default::default();
    loop {
        if waiting.is_empty()
            && input.is_empty()
            && handover.as_ref().is_some_and(|h| h.flush_requested())
        {
            completion.flush(&state, &detector);
        }
        if waiting.is_empty() {
            let first = match next_or_idle(&mut input) {
                Next::Item(first) => first,
                Next::Closed => break,
                Next::Idle => {
                    completion.idle(&state, &detector);
                    update_gauges(shard, &state, &detector, &gate, &metrics);
                    view_cadence.when_idle(outputs.view.as_deref(), &state, &gate);
                    continue;
                }
            };
            waiting.push_back(first);
            while waiting.len() < PREFETCH_BATCH {
                match input.try_recv() {
                    Ok(next) => waiting.push_back(next),
                    Err(_) => break,
                }
            }
            let vectors: Vec<&[f32]> = waiting
                .iter()
                .filter_map(|e| match (&e.work, &e.vector) {
                    (Work::Summarized { .. }, Some(v)) => Some(v.as_slice()),
                    _ => None,
                })
                .collect();
            state.prefetch(&vectors);
        }
        let Some(embedded) = waiting.pop_front() else {
            break;
        };
        if let Some(namer) = outputs.namer.as_mut() {
            namer.collect(&mut state);
        }
        if let Some(feed) = partitions.as_mut() {
            // Every path below either finishes the event or ends the stage, so the previous
            // event is behind the stage by now.
            feed.before_event(previous.take(), &mut state);
        }
        previous = Some(embedded.work.position());
        let produced_at_ms = match &embedded.work {
            Work::Summarized { produced_at_ms, .. } => *produced_at_ms,
            Work::Skip { .. } => None,
        };
        let (meta, summary, position) = match embedded.work {
            Work::Skip { position } => {
                completion.done(position, &state, &detector);
                continue;
            }
            Work::Summarized {
                meta,
                summary,
                position,
                ..
            } => (meta, summary, position),
        };
        let Some(vector) = embedded.vector else {
            completion.done(position, &state, &detector);
            continue;
        };
        let started = Instant::now();
        let assignment = match state.assign(position.partition, &meta, &summary, &vector) {
            Ok(a) => a,
            Err(e) => {
                metrics.stage_errors.with_label_values(&["cluster"]).inc();
                anyhow::bail!("cluster stage cannot continue: {e}");
            }
        };
        metrics.observe_stage("cluster", started.elapsed().as_secs_f64());
        let touched = match assignment {
            Assignment::Duplicate => {
                metrics.events_duplicate.inc();
                completion.done(position, &state, &detector);
                continue;
            }
            Assignment::Founded { cluster_id } => cluster_id,
            Assignment::Joined { cluster_id, .. } => cluster_id,
        };
        let surface_label = [Metrics::surface_label(&meta.surface)];
        metrics
            .events_clustered
            .with_label_values(&surface_label)
            .inc();
        if summary.concern >= crate::detect::HIGH_CONCERN {
            metrics
                .surface_high_concern
                .with_label_values(&surface_label)
                .inc();
        }
        if summary.refused {
            metrics
                .surface_refusals
                .with_label_values(&surface_label)
                .inc();
        }
        outputs.investigation_join(touched, &meta)?;
        metrics
            .event_time_watermark
            .set(state.watermark_ms() as f64 / 1000.0);

        let started = Instant::now();
        let clock = state.clock_ms();
        let observed = Observed {
            cluster: touched,
            surface: &meta.surface,
            event_time_ms: meta.event_time_ms,
            concern: summary.concern,
            refused: summary.refused,
        };
        let records = detector.observe(&mut state, Some(observed), clock);
        metrics.observe_stage("detect", started.elapsed().as_secs_f64());
        if !records.is_empty() {
            // The dashboards show an alert when its page goes out, not at the next maintenance.
            update_gauges(shard, &state, &detector, &gate, &metrics);
        }
        for record in records {
            outputs.investigation_alert(&record)?;
            if alerts.blocking_send(record).is_err() {
                anyhow::bail!("alert stage stopped early");
            }
        }
        if detector.labels_refused() > labels_refused_seen {
            metrics
                .labels_refused
                .inc_by(detector.labels_refused() - labels_refused_seen);
            labels_refused_seen = detector.labels_refused();
        }

        // A rebuild applied at this count first, so one due at the same count starts from it.
        if let Some(took) = state.apply_due_hierarchy() {
            metrics.observe_stage("hierarchy", took);
            update_gauges(shard, &state, &detector, &gate, &metrics);
        }
        if state.topics_due() {
            if let Some(took) = state.start_hierarchy_rebuild() {
                metrics.observe_stage("hierarchy", took);
                update_gauges(shard, &state, &detector, &gate, &metrics);
            }
        }
        if let Some(sink) = outputs.assignments.as_mut() {
            sink.write(&AssignmentRecord {
                conversation_id: meta.conversation_id.clone(),
                cluster_id: touched,
                topic_id: state.topic_of(touched),
                domain_id: state.domain_of(touched),
            })?;
        }
        // Maintenance due after this event is part of its effect: a snapshot cut between the
        // two would skip the pass on restore (it is scheduled by event count).
        if state.maintenance_due() {
            let started = Instant::now();
            let events = state.maintain();
            metrics.observe_stage("maintain", started.elapsed().as_secs_f64());
            outputs.lifecycle(events, &mut detector, &gate, &metrics)?;
            if let Some(namer) = outputs.namer.as_mut() {
                namer.request(&state, &gate, NAMING_PER_PASS, true);
            }
            if let Some((_, sink)) = outputs.investigation.as_mut() {
                sink.flush()?;
            }
            update_gauges(shard, &state, &detector, &gate, &metrics);
            view_cadence.at_maintenance(outputs.view.as_deref(), &state, &gate);
        }
        // Only now is the event's effect in cluster state (and its outputs handed on).
        metrics.observe_event_cluster_latency(produced_at_ms);
        completion.done(position, &state, &detector);
    }
    let events = state.drain_lifecycle();
    outputs.lifecycle(events, &mut detector, &gate, &metrics)?;
    if let Some(mut namer) = outputs.namer.take() {
        namer.finish(&mut state, &gate);
    }
    update_gauges(shard, &state, &detector, &gate, &metrics);
    view_cadence.publish(outputs.view.as_deref(), &state, &gate);
    outputs.flush()?;
    completion.finish(&state, &detector);
    Ok((state, detector))
}

fn publish_view(
    view: Option<&crate::export::view::ClusterView>,
    shard: Option<i32>,
    state: &ClusterState,
    gate: &PrivacyGate,
) {
    if let Some(view) = view {
        let table = crate::export::clusters::ClusterTable::build(state, gate);
        match shard {
            Some(shard) => view.publish_shard(shard, &table),
            None => view.publish(&table),
        }
    }
}

/// Shortest event time between two tables published to `/api/clusters` at maintenance passes.
/// A pass comes every `maintenance_every_events` events, which at 2,500 events/s is 2.5 tables
/// a second: building one (labels, audit, map positions for thousands of clusters) took 21 % of
/// the process's CPU in a soak. Event time, so a replay publishes at the same passes.
const VIEW_MIN_INTERVAL_MS: i64 = 2_000;

/// Shortest wall-clock time between two tables published at maintenance passes. In production
/// event time runs with the wall clock and [`VIEW_MIN_INTERVAL_MS`] alone decides. A replay or a
/// benchmark whose event time runs thousands of times faster (`bench soak` stamps an hour of
/// traffic every second) would otherwise rebuild the table at every pass: 12 % of the cluster
/// stage in a soak profile, for a page no one reloads that often. The table is a read model: it
/// changes no cluster, alert or snapshot, and the idle publish below still shows the final state,
/// so replays end with the same table.
const VIEW_MIN_WALL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2_000);

/// When the cluster stage republishes the explorer's table: at a maintenance pass once
/// [`VIEW_MIN_INTERVAL_MS`] of event time and [`VIEW_MIN_WALL_INTERVAL`] of wall-clock time have
/// passed since the last, and whenever the input goes idle with changes unpublished, so a quiet
/// stream still shows its latest state.
struct ViewCadence {
    shard: Option<i32>,
    last_ms: Option<i64>,
    last_wall: Option<std::time::Instant>,
    unpublished: bool,
}

impl ViewCadence {
    fn new(shard: Option<i32>) -> Self {
        ViewCadence {
            shard,
            last_ms: None,
            last_wall: None,
            unpublished: false,
        }
    }

    fn at_maintenance(
        &mut self,
        view: Option<&crate::export::view::ClusterView>,
        state: &ClusterState,
        gate: &PrivacyGate,
    ) {
        if !self.due(state.clock_ms(), std::time::Instant::now()) {
            self.unpublished = true;
            return;
        }
        self.publish(view, state, gate);
    }

    /// Whether a maintenance pass at event time `now_ms` and wall-clock `wall` may publish.
    fn due(&self, now_ms: i64, wall: std::time::Instant) -> bool {
        let event_time_passed = self
            .last_ms
            .is_none_or(|last| now_ms.saturating_sub(last) >= VIEW_MIN_INTERVAL_MS);
        let wall_time_passed = self
            .last_wall
            .is_none_or(|last| wall.saturating_duration_since(last) >= VIEW_MIN_WALL_INTERVAL);
        event_time_passed && wall_time_passed
    }

    fn when_idle(
        &mut self,
        view: Option<&crate::export::view::ClusterView>,
        state: &ClusterState,
        gate: &PrivacyGate,
    ) {
        if self.unpublished {
            self.publish(view, state, gate);
        }
    }

    fn publish(
        &mut self,
        view: Option<&crate::export::view::ClusterView>,
        state: &ClusterState,
        gate: &PrivacyGate,
    ) {
        publish_view(view, self.shard, state, gate);
        self.last_ms = Some(state.clock_ms());
        self.last_wall = Some(std::time::Instant::now());
        self.unpublished = false;
    }
}

fn update_gauges(
    shard: i32,
    state: &ClusterState,
    detector: &Detectors,
    gate: &PrivacyGate,
    metrics: &Metrics,
) {
    let reading = crate::export::gauges::GaugeReading::read(state, detector, gate);
    metrics.gauge_board.update(shard, reading, metrics);
}

/// Counts alert state changes and hands them to every sink, in order, and to the view behind
/// `/api/alerts` (before the sinks, so a slow sink never delays what the explorer shows).
async fn alert_stage(
    mut input: mpsc::Receiver<AlertRecord>,
    mut sinks: Vec<Box<dyn AlertSink>>,
    view: Option<Arc<crate::export::view::ClusterView>>,
    handed_over: Arc<AtomicU64>,
    metrics: Metrics,
) -> std::collections::VecDeque<AlertRecord> {
    let mut all = std::collections::VecDeque::new();
    while let Some(record) = input.recv().await {
        if let Some(view) = &view {
            view.record_alert(&record);
        }
        metrics
            .alerts
            .with_label_values(&[
                record.kind.as_str(),
                record.severity.as_str(),
                record.status.as_str(),
            ])
            .inc();
        for sink in sinks.iter_mut() {
            sink.deliver(&record).await;
        }
        // Every sink has it now (a network sink: fsynced in its spool), so a snapshot that
        // counts this record as emitted may be taken.
        handed_over.fetch_max(record.sequence, Ordering::Release);
        if all.len() == KEPT_ALERTS {
            all.pop_front();
        }
        all.push_back(record);
    }
    for sink in sinks.iter_mut() {
        sink.close().await;
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_view_waits_for_both_clocks_at_maintenance_passes() {
        let mut cadence = ViewCadence::new(None);
        let start = Instant::now();
        assert!(cadence.due(0, start), "the first pass always publishes");
        cadence.last_ms = Some(0);
        cadence.last_wall = Some(start);

        // A replay: an hour of event time within a few milliseconds of wall-clock time.
        assert!(!cadence.due(3_600_000, start + Duration::from_millis(5)));
        // Production: the wall clock has moved on, event time has not.
        assert!(!cadence.due(1_000, start + VIEW_MIN_WALL_INTERVAL * 3));
        // Both have.
        assert!(cadence.due(VIEW_MIN_INTERVAL_MS, start + VIEW_MIN_WALL_INTERVAL));
        // A clock that reads earlier than the last publish is not a reason to publish.
        assert!(!cadence.due(-5, start));
    }
}
