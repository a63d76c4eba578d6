//! The Kafka source: a consumer-group `StreamConsumer`, its offset acknowledgements, and the
//! dead-letter producer.
//!
//! Offsets follow the at-least-once discipline: `enable.auto.offset.store` is off, and an offset
//! is stored only when the cluster stage acknowledges that the message's effect is in cluster
//! state. librdkafka's auto-commit then commits stored offsets periodically, and shutdown commits
//! synchronously. A crash can therefore redeliver, never skip; redeliveries are dropped by
//! conversation id in the cluster state.
//!
//! A rebalance hands partitions over exactly: the revoke callback does not give the partitions
//! up at once. The source stops forwarding, asks the cluster stage to make everything it
//! processed durable (a snapshot now, acknowledging its offsets), waits until the acknowledged
//! offsets reach what it forwarded, commits them, and only then unassigns. The next owner starts
//! exactly where this instance's state ends, so no event is counted by both.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
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

/// How long a revocation waits for the cluster stage to make the revoked partitions' events
/// durable before it gives them up anyway (well inside the group's rebalance timeout,
/// `max.poll.interval.ms`). Giving up means the next owner may count those events again.
const REVOCATION_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How often librdkafka reports statistics (consumer lag per partition); `kafka.extra` may
/// override `statistics.interval.ms`.
const STATISTICS_INTERVAL_MS: &str = "5000";

/// Logs rebalances so an operator can correlate lag jumps with group changes, keeps the shared
/// [`PartitionAssignment`] the cluster stage's event clock follows, and exports consumer lag.
pub struct SourceContext {
    topic: String,
    assignment: Arc<PartitionAssignment>,
    /// `clusterwatch_kafka_consumer_lag{partition}`, when metrics are exported.
    lag: Option<prometheus::IntGaugeVec>,
    /// Partitions revoked by the group but not yet given up: the source drains and commits
    /// them, then unassigns (see the module doc).
    revoking: std::sync::Mutex<Option<Vec<i32>>>,
    /// Set once the pipeline has drained for good: from then on revocations (the consumer's
    /// close makes one) are given up at once, as nothing is left to hand over.
    closing: std::sync::atomic::AtomicBool,
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

impl ClientContext for SourceContext {
    /// Lag per assigned partition: the high watermark minus the committed offset, as librdkafka
    /// reports it. Partitions no longer assigned drop their series, so a rebalance does not leave
    /// a stale lag behind for the `ClusterwatchConsumerLagGrowing` alert.
    fn stats(&self, statistics: rdkafka::Statistics) {
        let Some(lag) = &self.lag else {
            return;
        };
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (id, partition) in &topic.partitions {
            if *id < 0 {
                continue; // librdkafka's internal "unassigned" partition
            }
            let label = id.to_string();
            if partition.desired && partition.consumer_lag >= 0 {
                lag.with_label_values(&[&label]).set(partition.consumer_lag);
            } else {
                let _ = lag.remove_label_values(&[&label]);
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    /// Assignments take effect at once. A revocation is only recorded here: the partitions are
    /// given up by [`KafkaSource::hand_over_revoked`] once their events are durable and
    /// committed; librdkafka holds the rebalance until then.
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut rdkafka::TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr;
        let partitions = self.partitions_of(tpl);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                tracing::info!(?partitions, "partitions assigned");
                self.assignment.assign(partitions);
                let assigned = match consumer.rebalance_protocol() {
                    RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
                    _ => consumer.assign(tpl),
                };
                if let Err(e) = assigned {
                    tracing::error!(error = %e, "cannot take the assigned partitions");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.assignment.revoke(partitions.iter().copied());
                if self.closing.load(std::sync::atomic::Ordering::Acquire) {
                    give_up(consumer, tpl);
                    return;
                }
                if consumer.assignment_lost() {
                    // The group already gave them away (a session timed out): nothing can be
                    // committed for them any more; re-reads are recognised by conversation id.
                    tracing::warn!(?partitions, "partitions lost");
                    give_up(consumer, tpl);
                    return;
                }
                tracing::info!(
                    ?partitions,
                    "partitions revoked; handing them over once drained"
                );
                self.assignment.request_flush();
                self.revoking
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(Vec::new)
                    .extend(partitions);
            }
            other => {
                tracing::warn!(error = ?other, "rebalance error");
                give_up(consumer, tpl);
            }
        }
    }
}

/// Unassigns `tpl` (cooperative) or everything (eager), as the default rebalance would.
fn give_up<C: ConsumerContext, K: Consumer<C> + ?Sized>(
    consumer: &K,
    tpl: &rdkafka::TopicPartitionList,
) {
    let result = match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
        _ => consumer.unassign(),
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "cannot give up the revoked partitions");
    }
}

/// Pause after a consume error (librdkafka paces its own reconnects).
const CONSUME_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// During a run of errors, one is logged this often (all are counted).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// `lag` receives consumer lag per partition from librdkafka's statistics.
    pub fn new(
        settings: &KafkaSettings,
        max_message_bytes: usize,
        lag: Option<prometheus::IntGaugeVec>,
    ) -> anyhow::Result<Self> {
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
            .set("max.partition.fetch.bytes", "262144")
            .set("statistics.interval.ms", STATISTICS_INTERVAL_MS);
        for (k, v) in &settings.extra {
            config.set(k, v);
        }
        let assignment = Arc::new(PartitionAssignment::default());
        let context = SourceContext {
            topic: settings.topic.clone(),
            assignment: assignment.clone(),
            lag,
            revoking: Default::default(),
            closing: Default::default(),
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
            assignment: self.assignment.clone(),
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
        let mut last_error_log = std::time::Instant::now();
        // Last offset read, and last offset handed to the pipeline, per partition: the read-to-end
        // reports the event clock needs.
        let mut read: BTreeMap<i32, i64> = BTreeMap::new();
        let mut forwarded: BTreeMap<i32, i64> = BTreeMap::new();
        // Partitions in a run of re-read messages (to log each run once).
        let mut rereads: std::collections::BTreeSet<i32> = Default::default();
        // The partitions owned, refreshed when the assignment's generation moves.
        let mut owned_generation = u64::MAX;
        let mut owned = std::collections::BTreeSet::new();
        let mut end_check = tokio::time::interval(READ_TO_END_CHECK);
        end_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let message = tokio::select! {
                biased;
                _ = shutdown.recv() => return Ok(()),
                _ = end_check.tick() => {
                    if self.hand_over_revoked(&forwarded, &metrics, &mut shutdown).await {
                        return Ok(());
                    }
                    self.report_partitions_read_to_end(&read, &forwarded).await;
                    continue;
                }
                m = self.consumer.recv() => m,
            };
            // The revoke callback ran inside `recv`; nothing more is forwarded until the
            // revoked partitions are handed over.
            if self
                .hand_over_revoked(&forwarded, &metrics, &mut shutdown)
                .await
            {
                return Ok(());
            }
            if owned_generation != self.assignment.generation() {
                owned_generation = self.assignment.generation();
                owned = self.assignment.owned();
            }
            if matches!(&message, Ok(m) if !owned.contains(&m.partition())) {
                // Read before the revocation from a partition now given up: its next owner
                // reads it from the committed offset.
                continue;
            }
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    // librdkafka reconnects by itself and reports each failed attempt here. A
                    // short fixed pause keeps an outage from being a hot loop; a pause that
                    // grew per error would fall behind the errors queued during the outage and
                    // keep the consumer from polling long after the broker is back.
                    consecutive_errors += 1;
                    metrics.stage_errors.with_label_values(&["source"]).inc();
                    if consecutive_errors == 1 || last_error_log.elapsed() >= ERROR_LOG_EVERY {
                        tracing::warn!(error = %e, consecutive_errors, "Kafka consume error");
                        last_error_log = std::time::Instant::now();
                    }
                    tokio::time::sleep(CONSUME_ERROR_PAUSE).await;
                    continue;
                }
            };
            if consecutive_errors > 0 {
                tracing::info!(consecutive_errors, "consuming again after Kafka errors");
            }
            consecutive_errors = 0;
            // The source's duration runs until the pipeline took the message: under backpressure
            // it is the wait for the stages behind it, which is what saturation looks like here.
            let started = std::time::Instant::now();
            read.insert(message.partition(), message.offset());
            if self.already_in_snapshot(message.partition(), message.offset()) {
                continue;
            }
            // Read again after a rebalance gave this instance back a partition it had (a session
            // that timed out in a broker outage does that): the consumer resumes at the committed
            // offset, but everything up to the last message forwarded is already in this
            // process's pipeline. Forwarding it again would count nothing twice (conversation
            // ids are recognised) but would dead-letter a rejected message twice.
            if forwarded
                .get(&message.partition())
                .is_some_and(|&last| message.offset() <= last)
            {
                if rereads.insert(message.partition()) {
                    tracing::info!(
                        partition = message.partition(),
                        from = message.offset(),
                        "skipping messages this process already forwarded (re-read after a rebalance)"
                    );
                }
                continue;
            }
            rereads.remove(&message.partition());
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
                produced_at_ms: message.timestamp().to_millis(),
            };
            drop(message);
            tokio::select! {
                biased;
                sent = output.send(raw) => {
                    if sent.is_err() {
                        anyhow::bail!("pipeline stopped while the source was still reading");
                    }
                    metrics.observe_stage("source", started.elapsed().as_secs_f64());
                },
                // A full pipeline must not hold shutdown hostage; the unsent message was never
                // acknowledged, so it is redelivered after restart.
                _ = shutdown.recv() => return Ok(()),
            }
        }
    }

    /// Finishes a pending revocation: waits until every revoked partition's forwarded messages
    /// are acknowledged (the cluster stage snapshots at once while the flush request is up),
    /// commits, and unassigns. Returns true if shutdown came first.
    async fn hand_over_revoked(
        &self,
        forwarded: &BTreeMap<i32, i64>,
        metrics: &Metrics,
        shutdown: &mut Shutdown,
    ) -> bool {
        let revoked = self
            .consumer
            .context()
            .revoking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(revoked) = revoked else {
            return false;
        };
        let started = std::time::Instant::now();
        let behind = |p: &i32| {
            forwarded.get(p).is_some_and(|&last| {
                self.assignment
                    .acknowledged_through(*p)
                    .is_none_or(|acked| acked < last)
            })
        };
        let mut stopped = false;
        while revoked.iter().any(behind) {
            if started.elapsed() >= REVOCATION_DRAIN_TIMEOUT {
                let waiting: Vec<i32> = revoked.iter().copied().filter(behind).collect();
                metrics.stage_errors.with_label_values(&["source"]).inc();
                tracing::error!(
                    partitions = ?waiting,
                    "revoked partitions not drained in time; giving them up: their next owner may count their latest events again"
                );
                break;
            }
            tokio::select! {
                _ = shutdown.recv() => { stopped = true; break; }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
        self.assignment.flush_done();
        let consumer = self.consumer.clone();
        let topic = self.topic.clone();
        let partitions = revoked.clone();
        let handed = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => {
                    tracing::error!(error = %e, "commit before handing over partitions failed")
                }
            }
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&topic, *p);
            }
            give_up(consumer.as_ref(), &tpl);
        })
        .await;
        if let Err(e) = handed {
            tracing::error!(error = %e, "handing over revoked partitions failed");
        }
        tracing::info!(
            partitions = ?revoked,
            drained_ms = started.elapsed().as_millis() as u64,
            "revoked partitions drained, committed and handed over"
        );
        stopped
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

    /// Commits stored offsets synchronously. Call after the pipeline has drained: it also gives
    /// up any revocation still pending, since everything processed is acknowledged by then.
    pub fn commit(&self) -> anyhow::Result<()> {
        let context = self.consumer.context();
        context
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let result = match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => Ok(()),
            // Nothing stored since the last commit.
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("final offset commit failed: {e}")),
        };
        let pending = context
            .revoking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(partitions) = pending {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in &partitions {
                tpl.add_partition(&self.topic, *p);
            }
            give_up(self.consumer.as_ref(), &tpl);
        }
        result
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
    /// Learns every stored offset, which a revocation waits for.
    assignment: Arc<PartitionAssignment>,
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
            Ok(()) => {
                self.metrics.offsets_stored.inc();
                self.assignment
                    .acknowledged(position.partition, position.offset);
            }
            Err(e) => {
                // Typically the partition was revoked while the message was in flight; its new
                // owner will redeliver it.
                self.metrics.offset_store_failures.inc();
                tracing::warn!(partition = position.partition, offset = position.offset, error = %e, "offset not stored");
            }
        }
    }

    fn commit_now(&self) {
        // Asynchronous: the snapshot writer does not wait on the broker. A commit that fails
        // (broker away, a rebalance in progress) leaves the offsets stored, and the periodic
        // auto-commit sends them again.
        match self.consumer.commit_consumer_state(CommitMode::Async) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::debug!(error = %e, "immediate offset commit not sent"),
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
