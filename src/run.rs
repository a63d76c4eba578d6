//! The production job: Kafka in, clusters, alerts and metrics out. `clusterwatch run` and the
//! demo both go through [`run_kafka`], so the demo exercises the real path.

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::alert::alertmanager::AlertmanagerSink;
use crate::alert::kafka::KafkaAlertSink;
use crate::alert::pagerduty::PagerDutySink;
use crate::alert::sinks::{AlertSink, StdoutSink};
use crate::alert::slack::SlackSink;
use crate::cluster::{snapshot, ClusterState};
use crate::config::{Settings, SummarizerKind};
use crate::embed::{self, Embedder};
use crate::export::http::Health;
use crate::export::Metrics;
use crate::llm::LlmClient;
use crate::pipeline::{AssignmentSink, Pipeline, PipelineReport, SnapshotPlan};
use crate::shutdown::ShutdownTrigger;
use crate::source::kafka::{KafkaDeadLetter, KafkaSource};
use crate::summarize::llm::LlmSummarizer;
use crate::summarize::offline::OfflineSummarizer;
use crate::summarize::Summarizer;

/// The configured LLM client, shared by the summarizer, the auditor and the namer; `None` when
/// `llm.endpoint` is empty.
pub fn build_llm(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Option<Arc<LlmClient>>> {
    if !settings.llm.configured() {
        if settings.summarizer.kind == SummarizerKind::Llm {
            anyhow::bail!("summarizer.kind = \"llm\" needs an LLM: set llm.endpoint");
        }
        return Ok(None);
    }
    let client = LlmClient::new(&settings.llm, metrics.clone())?;
    tracing::info!(
        protocol = ?settings.llm.protocol,
        model = %settings.llm.model,
        "LLM configured"
    );
    Ok(Some(Arc::new(client)))
}

/// Builds the configured summarizer.
pub fn build_summarizer(
    settings: &Settings,
    llm: Option<&Arc<LlmClient>>,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn Summarizer>> {
    let offline = OfflineSummarizer::new(settings.summarizer.offline.clone());
    Ok(match (settings.summarizer.kind, llm) {
        (SummarizerKind::Offline, _) => Arc::new(offline),
        (SummarizerKind::Llm, Some(client)) => {
            Arc::new(LlmSummarizer::new(client.clone(), offline, metrics.clone()))
        }
        (SummarizerKind::Llm, None) => {
            anyhow::bail!("summarizer.kind = \"llm\" needs an LLM: set llm.endpoint")
        }
    })
}

/// Loads the configured embedder off the async runtime (model loading reads ~90 MB).
pub async fn build_embedder(
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<Arc<dyn Embedder>> {
    let embedder_settings = settings.embedder.clone();
    let metrics = metrics.clone();
    let embedder =
        tokio::task::spawn_blocking(move || embed::from_settings(&embedder_settings, &metrics))
            .await
            .map_err(|e| anyhow::anyhow!("embedder loading panicked: {e}"))??;
    tracing::info!(
        embedder = embedder.id(),
        dimension = embedder.dimension(),
        "embedder ready"
    );
    Ok(Arc::from(embedder))
}

/// Alert sinks named by the settings: stdout when `print`, Alertmanager when a URL is set, Slack
/// and PagerDuty when their secret's variable is named, the alerts topic when it is named. A sink
/// that is configured but cannot start (its variable unset, its spool unwritable) is an error, not
/// a silently missing pager.
pub fn configured_alert_sinks(
    settings: &Settings,
    metrics: &Metrics,
) -> anyhow::Result<Vec<Box<dyn AlertSink>>> {
    let alerts = &settings.alerts;
    let mut sinks: Vec<Box<dyn AlertSink>> = Vec::new();
    if alerts.print {
        sinks.push(Box::new(StdoutSink));
    }
    if !alerts.alertmanager_url.is_empty() {
        sinks.push(Box::new(AlertmanagerSink::new(alerts, metrics.clone())?));
    }
    if alerts.slack.enabled() {
        sinks.push(Box::new(SlackSink::new(alerts, metrics.clone())?));
    }
    if alerts.pagerduty.enabled() {
        sinks.push(Box::new(PagerDutySink::new(alerts, metrics.clone())?));
    }
    if alerts.kafka.enabled() {
        sinks.push(Box::new(KafkaAlertSink::new(
            &settings.kafka,
            alerts,
            metrics.clone(),
        )?));
    }
    Ok(sinks)
}

/// Options the caller of [`run_kafka`] controls beyond the settings.
#[derive(Default)]
pub struct RunOptions {
    pub metrics: Metrics,
    /// Sinks in addition to the configured ones (tests and the demo capture alerts here).
    pub extra_alert_sinks: Vec<Box<dyn AlertSink>>,
    /// A pre-loaded embedder, so a caller running several pipelines loads the model once.
    pub embedder: Option<Arc<dyn Embedder>>,
    /// Called with the HTTP server's bound address once it listens.
    pub on_listen: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
    /// Receives every assignment (tests use it to check exactly-once counting).
    pub assignments: Option<Box<AssignmentSink>>,
    /// Set the snapshot aside and start from empty state (`run --reset-clusters`).
    pub reset_clusters: bool,
}

/// The snapshot plan for `settings`, and the state and offsets to resume from, if any.
fn resume_from_snapshot(
    settings: &Settings,
    embedder: &dyn Embedder,
    reset: bool,
) -> anyhow::Result<(Option<SnapshotPlan>, Option<ClusterState>)> {
    if settings.snapshot.dir.is_empty() {
        if reset {
            tracing::warn!("--reset-clusters has no effect: snapshots are off (snapshot.dir)");
        }
        return Ok((None, None));
    }
    let path = snapshot::snapshot_path(
        std::path::Path::new(&settings.snapshot.dir),
        &settings.kafka.group_id,
    );
    if reset && path.exists() {
        let aside = path.with_extension(format!(
            "reset-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        ));
        std::fs::rename(&path, &aside)?;
        tracing::warn!(moved_to = %aside.display(), "--reset-clusters: previous snapshot set aside");
    }
    let (plan, state) = restore_snapshot(path, &settings.kafka.topic, settings, embedder)?;
    Ok((Some(plan), state))
}

/// Loads the snapshot at `path` (if there is one) for a pipeline reading `source_topic`: the plan
/// to keep snapshotting there, with the offsets and detector memory to resume from, and the
/// cluster state.
pub(crate) fn restore_snapshot(
    path: std::path::PathBuf,
    source_topic: &str,
    settings: &Settings,
    embedder: &dyn Embedder,
) -> anyhow::Result<(SnapshotPlan, Option<ClusterState>)> {
    let mut plan = SnapshotPlan {
        path: path.clone(),
        source_topic: source_topic.to_string(),
        settings: settings.snapshot.clone(),
        resumed: Default::default(),
        detector: None,
    };
    let Some(mut body) = snapshot::load(&path)? else {
        tracing::info!(path = %path.display(), "no snapshot; starting from empty cluster state");
        return Ok((plan, None));
    };
    if body.source_topic != source_topic {
        anyhow::bail!(
            "snapshot {} was taken from topic {:?}, not {:?}; use --reset-clusters to discard it",
            path.display(),
            body.source_topic,
            source_topic
        );
    }
    plan.resumed = body.offsets.clone();
    plan.detector = body.detector.take();
    let clusters = body.clusters.len();
    let state = ClusterState::from_snapshot(
        settings.cluster.clone(),
        body,
        embedder.dimension(),
        embedder.id(),
    )?;
    tracing::info!(path = %path.display(), clusters, offsets = ?plan.resumed, "resuming from snapshot");
    Ok((plan, Some(state)))
}

/// Starts `/metrics`, `/healthz`, `/api` and `/explorer` when `http.listen` is set.
pub(crate) async fn start_http(
    settings: &Settings,
    metrics: &Metrics,
    health: &Arc<Health>,
    view: &Arc<crate::export::view::ClusterView>,
    shutdown: &ShutdownTrigger,
    on_listen: Option<Box<dyn FnOnce(std::net::SocketAddr) + Send>>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if settings.http.listen.is_empty() {
        return Ok(None);
    }
    let access = crate::export::http::ApiAccess::from_settings(&settings.http)?;
    let (addr, task) = crate::export::http::serve_with_access(
        &settings.http.listen,
        metrics.clone(),
        health.clone(),
        view.clone(),
        access,
        shutdown.subscribe(),
    )
    .await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /api and /explorer");
    if let Some(cb) = on_listen {
        cb(addr);
    }
    Ok(Some(task))
}

/// Consumes the configured topic until `shutdown` fires, then drains the pipeline, commits the
/// stored offsets and returns the final state.
pub async fn run_kafka(
    settings: Settings,
    shutdown: ShutdownTrigger,
    options: RunOptions,
) -> anyhow::Result<PipelineReport> {
    let metrics = options.metrics.clone();
    let health = Arc::new(Health::default());
    let view = Arc::new(crate::export::view::ClusterView::default());
    let http_task = start_http(
        &settings,
        &metrics,
        &health,
        &view,
        &shutdown,
        options.on_listen,
    )
    .await?;

    let llm = build_llm(&settings, &metrics)?;
    let embedder = match options.embedder {
        Some(e) => e,
        None => build_embedder(&settings, &metrics).await?,
    };
    let (snapshots, initial_state) =
        resume_from_snapshot(&settings, embedder.as_ref(), options.reset_clusters)?;
    let source = KafkaSource::new(
        &settings.kafka,
        settings.limits.max_message_bytes,
        Some(metrics.kafka_consumer_lag.clone()),
    )?;
    if let Some(plan) = &snapshots {
        source.resume_from(plan.resumed.clone());
    }
    let dead_letter = Arc::new(KafkaDeadLetter::new(&settings.kafka)?);
    let mut alert_sinks = configured_alert_sinks(&settings, &metrics)?;
    alert_sinks.extend(options.extra_alert_sinks);

    let pipeline = Pipeline {
        summarizer: build_summarizer(&settings, llm.as_ref(), &metrics)?,
        embedder,
        dead_letter,
        acker: source.acker(metrics.clone()),
        initial_state,
        snapshots,
        partitions: Some(source.assignment()),
        assignments: options.assignments,
        lifecycle: None,
        view: Some(view),
        alert_sinks,
        metrics: metrics.clone(),
        investigation: if settings.investigation.enabled {
            tracing::warn!(
                topic = %settings.investigation.topic,
                "restricted investigation output is ON: member ids of flagged clusters go to this topic"
            );
            Some(Box::new(crate::investigation::KafkaInvestigationSink::new(
                &settings.kafka,
                &settings.investigation,
                metrics.clone(),
            )?))
        } else {
            None
        },
        namer: llm
            .as_ref()
            .and_then(|client| crate::naming::Namer::new(client.clone(), metrics.clone())),
        deterministic_batches: false,
        input: crate::pipeline::PipelineInput::Conversations,
        shard: None,
        settings: settings.clone(),
    };
    let (tx, rx) = mpsc::channel(settings.pipeline.channel_capacity.max(1));
    health.set_running();
    tracing::info!(
        topic = %settings.kafka.topic,
        group = %settings.kafka.group_id,
        "consuming"
    );
    let source = Arc::new(source);
    let reader = {
        let source = source.clone();
        let metrics = metrics.clone();
        let stop = shutdown.subscribe();
        tokio::spawn(async move { source.run(tx, stop, metrics).await })
    };
    let report = pipeline.run(rx).await;
    // The pipeline only ends early on failure; make sure the reader stops too.
    shutdown.trigger();
    let read_result = reader
        .await
        .map_err(|e| anyhow::anyhow!("source task panicked: {e}"))?;
    let commit_result = source.commit();
    health.set_stopped();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    let report = report?;
    read_result?;
    commit_result?;
    tracing::info!(
        clustered = report.state.clustered_events(),
        live_clusters = report.state.live_clusters(),
        "drained and committed"
    );
    Ok(report)
}
