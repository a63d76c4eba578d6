//! `run --role enrich`: decode, summarize and embed `conversations`, and write each event as an
//! [`EnrichedRecord`] to the internal topic, on the partition (shard) its vector's codebook cell
//! maps to.
//!
//! The role keeps no state, so instances come and go freely in their consumer group. Delivery is
//! acknowledged end to end: a conversation's offset is stored only once the broker has confirmed
//! its record (or its rejection is in the dead-letter topic), in source order, with at most
//! `scale.max_in_flight` records awaiting confirmation. A crash therefore re-sends, never drops;
//! the cluster role recognises a re-sent conversation by its id, and the same vector always goes
//! to the same shard, where that id was seen.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::mpsc;

use super::codebook::Codebook;
use super::record::EnrichedRecord;
use super::{role_group, Role};
use crate::config::Settings;
use crate::export::http::Health;
use crate::pipeline::{embed_stage, summarize_stage, Embedded, Work};
use crate::run::{build_embedder, build_llm, build_summarizer, start_http, RunOptions};
use crate::shutdown::ShutdownTrigger;
use crate::source::kafka::{idempotent_producer, KafkaDeadLetter, KafkaSource};
use crate::source::{DeadLetterSink, OffsetAcker, SourcePosition};

/// What an enrich run did, for its closing log line and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct EnrichReport {
    /// Records the broker confirmed on the internal topic.
    pub records: u64,
    /// Messages acknowledged without a record (rejected and dead-lettered).
    pub skipped: u64,
}

/// Consumes `conversations` until `shutdown` fires, then drains, commits and returns.
pub async fn run_enrich(
    settings: Settings,
    shutdown: ShutdownTrigger,
    options: RunOptions,
) -> anyhow::Result<EnrichReport> {
    let metrics = options.metrics.clone();
    let health = Arc::new(Health::default());
    // The enrich role holds no clusters: its API answers with an empty view.
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
    let codebook_path = settings.scale.codebook_path(&settings.embedder);
    let codebook = Codebook::load(&codebook_path)?;
    codebook.check_embedder(embedder.id(), embedder.dimension())?;

    let mut kafka = settings.kafka.clone();
    kafka.group_id = role_group(&kafka.group_id, Role::Enrich);
    let source = KafkaSource::new(
        &kafka,
        settings.limits.max_message_bytes,
        Some(metrics.kafka_consumer_lag.clone()),
    )?;
    let dead_letter: Arc<dyn DeadLetterSink> = Arc::new(KafkaDeadLetter::new(&kafka)?);
    let producer: FutureProducer = idempotent_producer(&kafka)
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create the internal-topic producer: {e}"))?;
    let topic = settings.scale.enriched_topic.clone();
    let partitions = partition_count(&producer, &topic)?;
    tracing::info!(
        topic = %topic,
        partitions,
        codebook = %codebook_path.display(),
        cells = codebook.cells.len(),
        group = %kafka.group_id,
        "enrich role: records go to the shard of their codebook cell"
    );

    let capacity = settings.pipeline.channel_capacity.max(1);
    let (raw_tx, raw_rx) = mpsc::channel(capacity);
    let (work_tx, work_rx) = mpsc::channel::<Work>(capacity);
    let (embedded_tx, embedded_rx) = mpsc::channel::<Embedded>(capacity);
    let summarize = tokio::spawn(summarize_stage(
        raw_rx,
        work_tx,
        false,
        settings.clone(),
        build_summarizer(&settings, llm.as_ref(), &metrics)?,
        dead_letter.clone(),
        metrics.clone(),
    ));
    let embed = tokio::spawn(embed_stage(
        work_rx,
        embedded_tx,
        embedder.clone(),
        settings.pipeline.embed_batch_size.max(1),
        Duration::from_millis(settings.pipeline.embed_linger_ms),
        false,
        dead_letter,
        metrics.clone(),
    ));
    let forward = tokio::spawn(forward_stage(
        embedded_rx,
        Forwarding {
            producer,
            topic,
            partitions,
            codebook,
            embedder_id: embedder.id().to_string(),
            acker: source.acker(metrics.clone()),
            max_in_flight: settings.scale.max_in_flight.max(1),
            metrics: metrics.clone(),
        },
    ));
    health.set_running();
    let source = Arc::new(source);
    let reader = {
        let source = source.clone();
        let metrics = metrics.clone();
        let stop = shutdown.subscribe();
        tokio::spawn(async move { source.run(raw_tx, stop, metrics).await })
    };

    let summarize_result = summarize.await;
    let embed_result = embed.await;
    let forward_result = forward.await;
    // The stages only end early on failure; make sure the reader stops too.
    shutdown.trigger();
    let read_result = reader
        .await
        .map_err(|e| anyhow::anyhow!("source task panicked: {e}"))?;
    summarize_result.map_err(|e| anyhow::anyhow!("summarize stage panicked: {e}"))??;
    embed_result.map_err(|e| anyhow::anyhow!("embed stage panicked: {e}"))??;
    let report = forward_result.map_err(|e| anyhow::anyhow!("forward stage panicked: {e}"))??;
    let commit_result = source.commit();
    health.set_stopped();
    if let Some(task) = http_task {
        let _ = task.await;
    }
    read_result?;
    commit_result?;
    tracing::info!(
        records = report.records,
        skipped = report.skipped,
        "enrich role drained and committed"
    );
    Ok(report)
}

/// The internal topic's partition count: one shard per partition.
fn partition_count(producer: &FutureProducer, topic: &str) -> anyhow::Result<i32> {
    let metadata = producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| anyhow::anyhow!("cannot read metadata of {topic}: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    if partitions == 0 {
        anyhow::bail!(
            "internal topic {topic} does not exist: create it with one partition per cluster shard"
        );
    }
    Ok(partitions as i32)
}

struct Forwarding {
    producer: FutureProducer,
    topic: String,
    partitions: i32,
    codebook: Codebook,
    embedder_id: String,
    acker: Arc<dyn OffsetAcker>,
    max_in_flight: usize,
    metrics: crate::export::Metrics,
}

/// A position waiting for its record's delivery (or ready at once when it has none).
type Pending = Pin<Box<dyn Future<Output = anyhow::Result<(SourcePosition, bool)>> + Send>>;

/// Sends each event's record and acknowledges positions in order, as deliveries confirm.
async fn forward_stage(
    mut input: mpsc::Receiver<Embedded>,
    f: Forwarding,
) -> anyhow::Result<EnrichReport> {
    let mut in_flight: FuturesOrdered<Pending> = FuturesOrdered::new();
    let mut report = EnrichReport::default();
    let mut settle = |done: anyhow::Result<(SourcePosition, bool)>| -> anyhow::Result<()> {
        let (position, sent) = done?;
        f.acker.ack(position);
        if sent {
            report.records += 1;
        } else {
            report.skipped += 1;
        }
        Ok(())
    };
    loop {
        while in_flight.len() >= f.max_in_flight {
            if let Some(done) = in_flight.next().await {
                settle(done)?;
            }
        }
        let embedded = tokio::select! {
            biased;
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                settle(done)?;
                continue;
            }
            item = input.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let position = embedded.work.position();
        let (
            Work::Summarized {
                meta,
                summary,
                produced_at_ms,
                ..
            },
            Some(vector),
        ) = (embedded.work, embedded.vector)
        else {
            // Rejected and dead-lettered upstream: nothing to send.
            in_flight.push_back(Box::pin(async move { Ok((position, false)) }));
            continue;
        };
        let record = EnrichedRecord::new(&f.embedder_id, &meta, &summary, &vector).encode()?;
        let partition = f.codebook.partition(&vector, f.partitions);
        let started = Instant::now();
        let delivery = loop {
            let mut attempt = FutureRecord::to(&f.topic)
                .partition(partition)
                .key(meta.conversation_id.as_bytes())
                .payload(&record);
            // The conversation's produce time travels on, for the cluster role's
            // event→cluster latency.
            if let Some(produced_at_ms) = produced_at_ms {
                attempt = attempt.timestamp(produced_at_ms);
            }
            match f.producer.send_result(attempt) {
                Ok(delivery) => break delivery,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // librdkafka's queue is full: wait for the oldest delivery, then retry.
                    match in_flight.next().await {
                        Some(done) => settle(done)?,
                        None => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                Err((e, _)) => anyhow::bail!("cannot send to {}: {e}", f.topic),
            }
        };
        let metrics = f.metrics.clone();
        let topic = f.topic.clone();
        in_flight.push_back(Box::pin(async move {
            match delivery.await {
                Ok(Ok(_)) => {
                    metrics.observe_stage("forward", started.elapsed().as_secs_f64());
                    Ok((position, true))
                }
                Ok(Err((e, _))) => {
                    metrics.stage_errors.with_label_values(&["forward"]).inc();
                    // Not acknowledged: after the restart this failure causes, the
                    // conversation is read and sent again.
                    anyhow::bail!(
                        "delivery to {topic} failed after the producer's retries: {e}; stopping without acknowledging partition {} offset {}",
                        position.partition,
                        position.offset
                    )
                }
                Err(_) => anyhow::bail!("the producer was dropped with deliveries pending"),
            }
        }));
    }
    while let Some(done) = in_flight.next().await {
        settle(done)?;
    }
    Ok(report)
}
