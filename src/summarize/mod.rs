//! Summarize stage: a conversation becomes a short, scrubbed [`Summary`] of what the user asked
//! for, plus facets (task, language, concern, refusal).
//!
//! This is the privacy boundary: raw turns enter, and only the summary and the hashed
//! [`crate::event::EventMeta`] leave. The offline summarizer is the default; an LLM summarizer
//! will implement the same trait.

pub mod facets;
pub mod language;
pub mod llm;
pub mod offline;
pub mod refusal;
pub mod scrub;

use serde::{Deserialize, Serialize};

use crate::event::ConversationEvent;

/// What clusterwatch keeps of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The user's request, scrubbed of personal data and truncated.
    pub request: String,
    /// Coarse task taxonomy (see [`facets::classify_task`]).
    pub task: String,
    /// ISO 639-1 code, or `unknown`.
    pub language: String,
    /// 1 (benign) to 5 (severe).
    pub concern: u8,
    /// Whether the assistant refused.
    pub refused: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SummarizeError {
    #[error("conversation has no user text to summarize")]
    NoUserText,
    #[error("summarizer backend failed: {0}")]
    Backend(String),
}

/// Turns a conversation into a [`Summary`]. Implementations must not keep the raw text.
#[async_trait::async_trait]
pub trait Summarizer: Send + Sync {
    /// Stable identifier, recorded with cluster state.
    fn id(&self) -> &str;
    /// The offline summarizer counts as `clusterwatch_summaries_total{kind="offline"}` in the
    /// pipeline; an LLM summarizer counts its own kinds (llm, cached, fallback).
    fn is_offline(&self) -> bool {
        false
    }
    async fn summarize(&self, event: &ConversationEvent) -> Result<Summary, SummarizeError>;
}
