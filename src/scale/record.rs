//! The record the enrich role writes to the internal topic and the cluster role reads: what the
//! cluster stage needs of one conversation, and nothing more.
//!
//! It carries the scrubbed summary, the facets, the vector and the hashed identities, never the
//! conversation's text or a raw account id (the restricted investigation output, which needs raw
//! ids, runs only with `--role all`). It is postcard-encoded behind a version byte: a vector of
//! 384 floats is ~1.5 kB that way, against ~4 kB as JSON, and the topic carries every event.

use serde::{Deserialize, Serialize};

use crate::event::EventMeta;
use crate::summarize::Summary;

/// The first byte of every encoded record.
pub const RECORD_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrichedRecord {
    /// The vector space the vector lives in; the cluster role refuses others.
    pub embedder_id: String,
    pub conversation_id: String,
    pub conversation_key: u64,
    pub account_key: u64,
    pub org_key: Option<u64>,
    pub event_time_ms: i64,
    pub surface: String,
    pub classifier_flagged: bool,
    pub template: u64,
    pub summary: Summary,
    pub vector: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("record version {0} is not {RECORD_VERSION}")]
    Version(u8),
    #[error("record does not decode: {0}")]
    Malformed(String),
    #[error("record was embedded by {found:?}, this cluster role expects {expected:?}")]
    WrongEmbedder { found: String, expected: String },
    #[error("vector has {found} dimensions, expected {expected}")]
    WrongDimension { found: usize, expected: usize },
}

impl RecordError {
    /// A bounded metric label (the `reason` of `clusterwatch_events_rejected_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            RecordError::Empty | RecordError::Version(_) | RecordError::Malformed(_) => {
                "malformed_record"
            }
            RecordError::WrongEmbedder { .. } | RecordError::WrongDimension { .. } => {
                "wrong_vector_space"
            }
        }
    }
}

impl EnrichedRecord {
    pub fn new(embedder_id: &str, meta: &EventMeta, summary: &Summary, vector: &[f32]) -> Self {
        EnrichedRecord {
            embedder_id: embedder_id.to_string(),
            conversation_id: meta.conversation_id.clone(),
            conversation_key: meta.conversation_key,
            account_key: meta.account_key,
            org_key: meta.org_key,
            event_time_ms: meta.event_time_ms,
            surface: meta.surface.clone(),
            classifier_flagged: meta.classifier_flagged,
            template: meta.template,
            summary: summary.clone(),
            vector: vector.to_vec(),
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, RecordError> {
        let mut out = vec![RECORD_VERSION];
        out.extend(postcard::to_allocvec(self).map_err(|e| RecordError::Malformed(e.to_string()))?);
        Ok(out)
    }

    /// Decodes and checks the record against the vector space the cluster role runs in.
    pub fn decode(bytes: &[u8], embedder_id: &str, dimension: usize) -> Result<Self, RecordError> {
        let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
        if version != RECORD_VERSION {
            return Err(RecordError::Version(version));
        }
        let record: EnrichedRecord =
            postcard::from_bytes(body).map_err(|e| RecordError::Malformed(e.to_string()))?;
        if record.embedder_id != embedder_id {
            return Err(RecordError::WrongEmbedder {
                found: record.embedder_id,
                expected: embedder_id.to_string(),
            });
        }
        if record.vector.len() != dimension {
            return Err(RecordError::WrongDimension {
                found: record.vector.len(),
                expected: dimension,
            });
        }
        Ok(record)
    }

    /// The event's metadata and summary as the cluster stage takes them.
    pub fn into_parts(self) -> (EventMeta, Summary, Vec<f32>) {
        let meta = EventMeta {
            conversation_id: self.conversation_id,
            conversation_key: self.conversation_key,
            account_key: self.account_key,
            org_key: self.org_key,
            event_time_ms: self.event_time_ms,
            surface: self.surface,
            classifier_flagged: self.classifier_flagged,
            template: self.template,
            restricted_account: None,
        };
        (meta, self.summary, self.vector)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EnrichedRecord {
        EnrichedRecord {
            embedder_id: "static:test".into(),
            conversation_id: "c-1".into(),
            conversation_key: 11,
            account_key: 22,
            org_key: Some(33),
            event_time_ms: 1_700_000_000_000,
            surface: "chat".into(),
            classifier_flagged: true,
            template: 44,
            summary: Summary {
                request: "book a flight".into(),
                task: "travel".into(),
                language: "en".into(),
                concern: 2,
                refused: false,
            },
            vector: vec![0.6, 0.8, 0.0],
        }
    }

    #[test]
    fn a_record_round_trips_and_is_checked_against_the_vector_space() {
        let bytes = record().encode().unwrap();
        assert_eq!(
            EnrichedRecord::decode(&bytes, "static:test", 3).unwrap(),
            record()
        );
        assert!(matches!(
            EnrichedRecord::decode(&bytes, "transformer:x", 3),
            Err(RecordError::WrongEmbedder { .. })
        ));
        assert!(matches!(
            EnrichedRecord::decode(&bytes, "static:test", 4),
            Err(RecordError::WrongDimension { .. })
        ));
    }

    #[test]
    fn garbage_is_a_rejection_not_a_panic() {
        for bytes in [
            &b""[..],
            &[9, 1, 2][..],
            &[RECORD_VERSION, 0xff, 0xff, 0xff][..],
        ] {
            let error = EnrichedRecord::decode(bytes, "static:test", 3).unwrap_err();
            assert_eq!(error.reason(), "malformed_record");
        }
    }
}
