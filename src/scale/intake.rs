//! The cluster role's front stage: decodes the enrich role's records from the internal topic and
//! hands them to the cluster stage as if this process had summarized and embedded them.
//!
//! A record that does not decode, or whose vector is from another embedder, is rejected like a
//! malformed conversation: counted, logged without content, dead-lettered, and its position
//! acknowledged in order so one bad record never stalls a shard.

use std::time::Instant;

use tokio::sync::mpsc;

use super::record::EnrichedRecord;
use crate::export::Metrics;
use crate::pipeline::{deliver_dead_letter, Embedded, Work};
use crate::source::{DeadLetterSink, RawMessage, Rejection};

pub(crate) async fn enriched_stage(
    mut input: mpsc::Receiver<RawMessage>,
    output: mpsc::Sender<Embedded>,
    embedder_id: String,
    dimension: usize,
    max_message_bytes: usize,
    dead_letter: std::sync::Arc<dyn DeadLetterSink>,
    metrics: Metrics,
) -> anyhow::Result<()> {
    while let Some(message) = input.recv().await {
        let position = message.position;
        let started = Instant::now();
        let decoded = if message.original_len > max_message_bytes {
            Err(Rejection {
                reason: "oversized",
                detail: format!(
                    "record is {} bytes, over the {max_message_bytes}-byte limit",
                    message.original_len
                ),
            })
        } else {
            EnrichedRecord::decode(&message.payload, &embedder_id, dimension).map_err(|e| {
                Rejection {
                    reason: e.reason(),
                    detail: e.to_string(),
                }
            })
        };
        metrics.observe_stage("decode", started.elapsed().as_secs_f64());
        let embedded = match decoded {
            Ok(record) => {
                let (meta, summary, vector) = record.into_parts();
                Embedded {
                    work: Work::Summarized {
                        meta,
                        summary,
                        position,
                        // The enrich role stamps its record with the conversation's own
                        // produce time, so the latency runs from the original message.
                        produced_at_ms: message.produced_at_ms,
                    },
                    vector: Some(vector),
                }
            }
            Err(rejection) => {
                metrics
                    .events_rejected
                    .with_label_values(&[rejection.reason])
                    .inc();
                tracing::warn!(
                    partition = position.partition,
                    offset = position.offset,
                    reason = rejection.reason,
                    error = %rejection.detail,
                    "rejected internal record sent to dead letter"
                );
                deliver_dead_letter(dead_letter.as_ref(), &message, &rejection, &metrics).await?;
                Embedded {
                    work: Work::Skip { position },
                    vector: None,
                }
            }
        };
        if output.send(embedded).await.is_err() {
            anyhow::bail!("cluster stage stopped early");
        }
    }
    Ok(())
}
