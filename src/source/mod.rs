//! Sources: where raw messages come from, and the two things the pipeline hands back to them —
//! acknowledgements of positions now in cluster state, and dead-letter records of rejects.
//!
//! [`kafka`] is the production source (a consumer group); [`file`] reads a JSONL file for
//! `replay`. Both yield [`RawMessage`]s carrying their [`SourcePosition`].

pub mod assignment;
pub mod file;
pub mod kafka;

pub use assignment::PartitionAssignment;

/// Where a message sits in its source: a Kafka partition and offset, or line 0/N of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourcePosition {
    pub partition: i32,
    pub offset: i64,
}

/// A message as read, before decoding.
#[derive(Debug, Clone)]
pub struct RawMessage {
    /// The bytes; empty when the message was over the size limit (it is never copied whole).
    pub payload: Vec<u8>,
    /// Size of the message as the source saw it.
    pub original_len: usize,
    /// The Kafka message key, if any (the contract puts `conversation_id` there).
    pub key: Option<Vec<u8>>,
    pub position: SourcePosition,
    /// The Kafka message timestamp (Unix ms; the producer's create time unless the topic logs
    /// append time); `None` for files. Only the event→cluster latency metric reads it.
    pub produced_at_ms: Option<i64>,
}

/// Why a message went to the dead letter. `reason` is a bounded label.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
}

/// Where rejected messages go. A write that returns `Ok` must be durable: the position is
/// acknowledged right after.
#[async_trait::async_trait]
pub trait DeadLetterSink: Send + Sync {
    async fn write(&self, message: &RawMessage, rejection: &Rejection) -> anyhow::Result<()>;
}

/// Told, in source order, that a position's effect is in cluster state.
pub trait OffsetAcker: Send + Sync {
    fn ack(&self, position: SourcePosition);
    /// Sends what has been acknowledged to the source now rather than at its next periodic
    /// commit. The snapshotter calls it once a snapshot's positions are acknowledged: until the
    /// commit lands, another group member taking a partition over would read again events the
    /// snapshot already holds, and a restart from that snapshot would count them twice.
    fn commit_now(&self) {}
}

/// An acker for sources with nothing to commit.
pub struct NoAck;

impl OffsetAcker for NoAck {
    fn ack(&self, _position: SourcePosition) {}
}
