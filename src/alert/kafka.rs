//! Writes every alert state change to a Kafka topic, for consumers that want the alert stream
//! itself (ticketing, a data warehouse, another detector) rather than a notification.
//!
//! The message is the `--alerts-out` contract — the record's JSON, pending records included —
//! keyed by the record's dedup key, so all state changes of one alert land on one partition in
//! order. It goes through the idempotent producer on the `[kafka]` cluster (same bootstrap servers
//! and extra librdkafka properties as the source), behind the sink's spool and delivery worker:
//! a broker outage delays alerts instead of losing them, and each record is awaited before the
//! next, so a retry cannot reorder them. The sink is off while `alerts.kafka.topic` is empty.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};

use super::delivery::{AdmitAll, DeliveryError, QueuedSink, SpoolInfo, Transport};
use super::sinks::AlertSink;
use super::spool::{Entry, Policy};
use super::AlertRecord;
use crate::config::{AlertSettings, KafkaSettings};
use crate::export::Metrics;

const SINK: &str = "kafka";

/// `[alerts.kafka]`: the alerts topic.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaAlertSettings {
    /// Topic on the `[kafka]` cluster for alert records; empty turns the sink off. "".
    pub topic: String,
}

impl KafkaAlertSettings {
    pub fn enabled(&self) -> bool {
        !self.topic.is_empty()
    }
}

/// The Kafka alerts-topic sink: a [`QueuedSink`] producing to `alerts.kafka.topic`.
pub struct KafkaAlertSink(QueuedSink);

impl KafkaAlertSink {
    pub fn new(
        kafka: &KafkaSettings,
        settings: &AlertSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let producer: FutureProducer = crate::source::kafka::idempotent_producer(kafka)
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the alerts-topic producer: {e}"))?;
        let transport = KafkaTransport {
            producer,
            topic: settings.kafka.topic.clone(),
        };
        Ok(KafkaAlertSink(QueuedSink::start(
            transport,
            AdmitAll,
            Policy::KeepAll,
            settings,
            metrics,
        )?))
    }

    /// Records waiting for delivery.
    pub fn queued(&self) -> usize {
        self.0.queued()
    }
}

#[async_trait::async_trait]
impl AlertSink for KafkaAlertSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        self.0.deliver(record).await;
    }

    async fn close(&mut self) {
        self.0.close().await;
    }
}

struct KafkaTransport {
    producer: FutureProducer,
    topic: String,
}

#[async_trait::async_trait]
impl Transport for KafkaTransport {
    fn name(&self) -> &'static str {
        SINK
    }

    async fn send(&mut self, batch: &[Entry], _spool: &SpoolInfo) -> Result<(), DeliveryError> {
        for entry in batch {
            let payload =
                serde_json::to_vec(&entry.record).map_err(|e| DeliveryError::Permanent {
                    reason: format!("record not serialisable: {e}"),
                })?;
            let key = entry.record.dedup_key();
            let message = FutureRecord::to(&self.topic).key(&key).payload(&payload);
            // librdkafka retries inside `message.timeout.ms`; what comes back here is final for
            // this attempt.
            self.producer
                .send(message, Timeout::After(Duration::from_secs(30)))
                .await
                .map_err(|(e, _)| classify(e))?;
        }
        Ok(())
    }
}

/// Errors no retry can fix (the message or our rights are wrong) are permanent; the rest
/// (broker down, leader moving, timeouts, a topic still being created) are retried.
fn classify(e: KafkaError) -> DeliveryError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::InvalidTopic
        )
    );
    let reason = format!("produce failed: {e}");
    if permanent {
        DeliveryError::Permanent { reason }
    } else {
        DeliveryError::Retryable {
            reason,
            retry_after: None,
        }
    }
}
