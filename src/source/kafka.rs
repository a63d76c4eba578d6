//! The Kafka source: a consumer-group `StreamConsumer`, its offset acknowledgements, and the
//! dead-letter producer.
//!
//! Offsets follow the at-least-once discipline: `enable.auto.offset.store` is off, and an offset
//! is stored only when the cluster stage acknowledges that the message's effect is in cluster
//! state. librdkafka's auto-commit then commits stored offsets periodically, and shutdown commits
//! synchronously. A crash can therefore redeliver, never skip; redeliveries are dropped by
//! conversation id in the cluster state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::{
    DeadLetterSink, OffsetAcker, PartitionAssignment, RawMessage, Rejection, SourcePosition,
};
use crate::config::KafkaSettings;
use crate::export::Metrics;
use crate::shutdown::Shutdown;

/// How often the brokers' high watermarks are compared with what was read, so that partitions
/// with nothing left stop holding the event clock.
const READ_TO_END_CHECK: Duration = Duration::from_secs(1);

/// Header naming the reject reason on dead-letter records.
pub const REJECT_REASON_HEADER: &str = "clusterwatch-reject-reason";

/// Logs rebalances so an operator can correlate lag jumps with group changes, and keeps the
/// shared [`PartitionAssignment`] the cluster stage's event clock follows.
pub struct SourceContext {
    topic: String,
    assignment: Arc<PartitionAssignment>,
}

impl SourceContext {
    fn partitions_of(&self, tpl: &rdkafka::TopicPartitionList) -> Vec<i32> {
        tpl.elements()
            .iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect()
    }
}

impl ClientContext for SourceContext {}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &Rebalance,
    ) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions_of(tpl);
                tracing::info!(?partitions, "partitions assigned");
                self.assignment.assign(partitions);
            }
            Rebalance::Revoke(tpl) => {
                let partitions = self.partitions_of(tpl);
                tracing::info!(?partitions, "partitions revoked");
                self.assignment.revoke(partitions);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }
}

pub type SourceConsumer = StreamConsumer<SourceContext>;

/// A consumer-group source over one topic.
pub struct KafkaSource {
    consumer: Arc<SourceConsumer>,
    topic: String,
    max_message_bytes: usize,
    assignment: Arc<PartitionAssignment>,
    /// Per partition, the first offset not yet in the loaded snapshot: anything below it is
    /// already in cluster state and is skipped (after one seek past it).
    resume: std::sync::Mutex<BTreeMap<i32, i64>>,
}

impl KafkaSource {
    pub fn new(settings: &KafkaSettings, max_message_bytes: usize) -> anyhow::Result<Self> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                settings.commit_interval_ms.to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", &settings.auto_offset_reset)
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // Small per-partition fetches interleave partitions finely, which keeps the event-time
            // skew between partitions (and so how far the cluster clock lags) small.
            .set("max.partition.fetch.bytes", "262144");
        for (k, v) in &settings.extra {
            config.set(k, v);
        }
        let assignment = Arc::new(PartitionAssignment::default());
        let context = SourceContext {
            topic: settings.topic.clone(),
            assignment: assignment.clone(),
        };
        let consumer: SourceConsumer = config
            .create_with_context(context)
            .map_err(|e| anyhow::anyhow!("cannot create Kafka consumer: {e}"))?;
        consumer
            .subscribe(&[settings.topic.as_str()])
            .map_err(|e| anyhow::anyhow!("cannot subscribe to {}: {e}", settings.topic))?;
        Ok(KafkaSource {
            consumer: Arc::new(consumer),
            topic: settings.topic.clone(),
            max_message_bytes,
            assignment,
            resume: Default::default(),
        })
    }

    /// Resume each partition at `offsets` (next to read, from the loaded snapshot) instead of
    /// the committed offset, which may be older: offsets are committed only after a snapshot is
    /// written, and the commit can lag it.
    pub fn resume_from(&self, offsets: BTreeMap<i32, i64>) {
        *self.resume.lock().unwrap_or_else(|p| p.into_inner()) = offsets;
    }

    /// Whether a message at `offset` of `partition` is already in the loaded snapshot. The first
    /// such message of a partition triggers a seek to the snapshot's offset, so the rest of the
    /// gap is not even fetched.
    fn already_in_snapshot(&self, partition: i32, offset: i64) -> bool {
        let mut resume = self.resume.lock().unwrap_or_else(|p| p.into_inner());
        let Some(&next) = resume.get(&partition) else {
            return false;
        };
        if offset >= next {
            // Past the snapshot: nothing more to skip on this partition.
            resume.remove(&partition);
            return false;
        }
        tracing::info!(
            partition,
            from = offset,
            to = next,
            "skipping messages already in the snapshot"
        );
        if let Err(e) = self.consumer.seek(
            &self.topic,
            partition,
            rdkafka::Offset::Offset(next),
            Duration::from_secs(1),
        ) {
            tracing::debug!(partition, error = %e, "seek failed; skipping message by message");
        }
        true
    }

    /// The acknowledger that stores offsets on this consumer.
    pub fn acker(&self, metrics: Metrics) -> Arc<dyn OffsetAcker> {
        Arc::new(KafkaAcker {
            consumer: self.consumer.clone(),
            topic: self.topic.clone(),
            metrics,
        })
    }

    /// The partitions the group currently gives this instance.
    pub fn assignment(&self) -> Arc<PartitionAssignment> {
        self.assignment.clone()
    }

    pub fn consumer(&self) -> Arc<SourceConsumer> {
        self.consumer.clone()
    }

    /// Reads messages into `output` until shutdown. Blocks (awaits) when the pipeline is full.
    pub async fn run(
        &self,
        output: mpsc::Sender<RawMessage>,
        mut shutdown: Shutdown,
        metrics: Metrics,
    ) -> anyhow::Result<()> {
        let mut consecutive_errors = 0u32;
        // Last offset read, and last offset handed to the pipeline, per partition: the read-to-end
        // reports the event clock needs.
        let mut read: BTreeMap<i32, i64> = BTreeMap::new();
        let mut forwarded: BTreeMap<i32, i64> = BTreeMap::new();
        let mut end_check = tokio::time::interval(READ_TO_END_CHECK);
        end_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.recv() => return Ok(()),
                _ = end_check.tick() => {
                    self.report_partitions_read_to_end(&read, &forwarded).await;
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself; back off so a broker outage is not a
                    // hot loop, and keep going.
                    consecutive_errors += 1;
                    metrics.stage_errors.with_label_values(&["source"]).inc();
                    tracing::warn!(error = %e, consecutive_errors, "Kafka consume error");
                    tokio::time::sleep(Duration::from_millis(
                        (100 * u64::from(consecutive_errors)).min(5_000),
                    ))
                    .await;
                    continue;
                }
            };
            consecutive_errors = 0;
            read.insert(message.partition(), message.offset());
            if self.already_in_snapshot(message.partition(), message.offset()) {
                continue;
            }
            forwarded.insert(message.partition(), message.offset());
            metrics.events_consumed.inc();
            let payload = message.payload().unwrap_or_default();
            let raw = RawMessage {
                original_len: payload.len(),
                payload: if payload.len() > self.max_message_bytes {
                    Vec::new()
                } else {
                    payload.to_vec()
                },
                key: message.key().map(|k| k.to_vec()),
                position: SourcePosition {
                    partition: message.partition(),
                    offset: message.offset(),
                },
            };
            drop(message);
            tokio::select! {
                biased;
                sent = output.send(raw) => if sent.is_err() {
                    anyhow::bail!("pipeline stopped while the source was still reading");
                },
                // A full pipeline must not hold shutdown hostage; the unsent message was never
                // acknowledged, so it is redelivered after restart.
                _ = shutdown.recv() => return Ok(()),
            }
        }
    }

    /// Reports each owned partition whose high watermark is at or below what was read (or
    /// committed, for a partition not read since this instance got it).
    async fn report_partitions_read_to_end(
        &self,
        read: &BTreeMap<i32, i64>,
        forwarded: &BTreeMap<i32, i64>,
    ) {
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let owned = self.assignment.owned();
        if owned.is_empty() {
            return;
        }
        let read = read.clone();
        let forwarded = forwarded.clone();
        let check = move || -> KafkaResult<Vec<(i32, i64)>> {
            // Only partitions this instance has not read from need the committed offsets.
            let committed = if owned.iter().all(|p| read.contains_key(p)) {
                None
            } else {
                Some(consumer.committed(Duration::from_secs(2))?)
            };
            let mut at_end = Vec::new();
            for partition in owned {
                let Some((low, high)) = cached_watermarks(&consumer, &topic, partition) else {
                    continue;
                };
                let last_read = read.get(&partition).copied();
                let next_to_read = match (last_read, &committed) {
                    (Some(offset), _) => offset + 1,
                    (None, Some(committed)) => match committed
                        .find_partition(&topic, partition)
                        .map(|e| e.offset())
                    {
                        Some(rdkafka::Offset::Offset(o)) => o,
                        _ => low,
                    },
                    (None, None) => low,
                };
                if next_to_read >= high {
                    // The cluster stage must have processed what was handed to it; skipped
                    // messages never reach it.
                    at_end.push((partition, forwarded.get(&partition).copied().unwrap_or(-1)));
                }
            }
            Ok(at_end)
        };
        match tokio::task::spawn_blocking(check).await {
            Ok(Ok(at_end)) => {
                for (partition, last_read) in at_end {
                    self.assignment.read_to_end(partition, last_read);
                }
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "cannot read committed offsets"),
            Err(e) => tracing::warn!(error = %e, "read-to-end check failed"),
        }
    }

    /// Commits stored offsets synchronously. Call after the pipeline has drained.
    pub fn commit(&self) -> anyhow::Result<()> {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("final offset commit failed: {e}")),
        }
    }
}

/// The low and high watermarks librdkafka cached from its latest fetch response for `partition`;
/// `None` before the first one. A network query (`fetch_watermarks`) would be fresher but waits
/// behind the consumer's own long-polling fetches (seconds on a busy consumer), and the fetcher
/// refreshes this cache at least every `fetch.wait.max.ms` anyway.
fn cached_watermarks(consumer: &SourceConsumer, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer lives as long as `consumer`; librdkafka only reads `topic`
    // (a valid NUL-terminated string) and writes the two out-parameters.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low.max(0), high))
}

struct KafkaAcker {
    consumer: Arc<SourceConsumer>,
    topic: String,
    metrics: Metrics,
}

impl OffsetAcker for KafkaAcker {
    fn ack(&self, position: SourcePosition) {
        // `store_offset` wraps librdkafka's `rd_kafka_offset_store`, which takes the offset of
        // the processed message and commits offset + 1 (the next one to read) itself.
        match self
            .consumer
            .store_offset(&self.topic, position.partition, position.offset)
        {
            Ok(()) => self.metrics.offsets_stored.inc(),
            Err(e) => {
                // Typically the partition was revoked while the message was in flight; its new
                // owner will redeliver it.
                self.metrics.offset_store_failures.inc();
                tracing::warn!(partition = position.partition, offset = position.offset, error = %e, "offset not stored");
            }
        }
    }
}

/// Writes rejected messages to the dead-letter topic, reason in a header, and waits for the
/// broker's acknowledgement before reporting success.
pub struct KafkaDeadLetter {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
}

/// A producer on the `[kafka]` cluster: idempotent (a retried send is not written twice), with
/// the deployment's extra properties (security settings) applied.
pub fn idempotent_producer(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.bootstrap_servers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    for (k, v) in &settings.extra {
        config.set(k, v);
    }
    config
}

impl KafkaDeadLetter {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let producer: FutureProducer = idempotent_producer(settings)
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create dead-letter producer: {e}"))?;
        Ok(KafkaDeadLetter {
            producer,
            topic: settings.dead_letter_topic.clone(),
            source_topic: settings.topic.clone(),
        })
    }
}

#[async_trait::async_trait]
impl DeadLetterSink for KafkaDeadLetter {
    async fn write(&self, message: &RawMessage, rejection: &Rejection) -> anyhow::Result<()> {
        let partition = message.position.partition.to_string();
        let offset = message.position.offset.to_string();
        let size = message.original_len.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: REJECT_REASON_HEADER,
                value: Some(rejection.reason),
            })
            .insert(Header {
                key: "clusterwatch-error",
                value: Some(rejection.detail.as_str()),
            })
            .insert(Header {
                key: "clusterwatch-source-topic",
                value: Some(self.source_topic.as_str()),
            })
            .insert(Header {
                key: "clusterwatch-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "clusterwatch-source-offset",
                value: Some(offset.as_str()),
            })
            .insert(Header {
                key: "clusterwatch-original-bytes",
                value: Some(size.as_str()),
            });
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic)
            .payload(message.payload.as_slice())
            .headers(headers);
        if let Some(key) = message.key.as_deref() {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| anyhow::anyhow!("dead-letter produce failed: {e}"))
    }
}
