//! The input event, contract v1 (DESIGN §2), and the privacy-safe metadata that replaces it once
//! the conversation has been summarized.
//!
//! `ConversationEvent` carries raw text and raw account ids: it lives only inside the decode and
//! summarize stages. Everything after them works on `EventMeta`, where accounts and orgs are keyed
//! hashes, so a cluster's statistics can count distinct accounts without ever holding one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Who wrote a turn. Unknown roles are rejected by the decoder, not guessed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
    System,
    Tool,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Turn {
    pub role: Role,
    pub content: String,
}

/// Verdicts of upstream classifiers, passed through as facets.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Signals {
    #[serde(default)]
    pub refused: Option<bool>,
    #[serde(default)]
    pub classifier_flags: Vec<String>,
}

/// A validated v1 event. Built only by [`crate::decode`].
#[derive(Debug, Clone)]
pub struct ConversationEvent {
    pub conversation_id: String,
    pub account_id: String,
    pub org_id: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub surface: String,
    pub model: Option<String>,
    pub turns: Vec<Turn>,
    pub signals: Signals,
}

/// What survives of an event past the summarize stage: ids needed for assignment output and
/// de-duplication, hashed identities, event time and facets. No text.
#[derive(Debug, Clone)]
pub struct EventMeta {
    /// Written to `--assignments-out` (the contract needs it) and used for de-duplication; never
    /// logged and never a metric label.
    pub conversation_id: String,
    pub conversation_key: u64,
    pub account_key: u64,
    pub org_key: Option<u64>,
    /// Event time, in milliseconds since the Unix epoch.
    pub event_time_ms: i64,
    pub surface: String,
    pub classifier_flagged: bool,
    /// MinHash fingerprint of the first user turn's skeleton ([`crate::cluster::template`]); 0 when unknown.
    pub template: u64,
    /// The raw account id, kept only when the restricted investigation output is on
    /// ([`crate::investigation`]); `None` otherwise.
    pub restricted_account: Option<crate::investigation::RestrictedId>,
}

impl EventMeta {
    /// Drops the raw parts of `event`, keeping only what downstream stages may see.
    pub fn from_event(event: &ConversationEvent) -> Self {
        EventMeta {
            conversation_id: event.conversation_id.clone(),
            conversation_key: identity_key("conversation", &event.conversation_id),
            account_key: identity_key("account", &event.account_id),
            org_key: event.org_id.as_deref().map(|o| identity_key("org", o)),
            event_time_ms: event.timestamp.timestamp_millis(),
            surface: event.surface.clone(),
            classifier_flagged: !event.signals.classifier_flags.is_empty(),
            template: crate::cluster::template::fingerprint(event),
            restricted_account: None,
        }
    }
}

/// A stable 64-bit key for an identifier. Domain-separated so an account and a conversation with
/// the same string never share a key, and fixed-seeded so replays are byte-identical.
///
/// This is pseudonymisation for counting distinct members, not anonymisation: the keys never leave
/// the process except inside snapshots, which hold no mapping back to the ids.
pub fn identity_key(domain: &str, id: &str) -> u64 {
    let mut buf = Vec::with_capacity(domain.len() + 1 + id.len());
    buf.extend_from_slice(domain.as_bytes());
    buf.push(0);
    buf.extend_from_slice(id.as_bytes());
    xxhash_rust::xxh3::xxh3_64_with_seed(&buf, 0x636c_7573_7465_7277)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_keys_are_domain_separated_and_stable() {
        assert_ne!(identity_key("account", "x"), identity_key("org", "x"));
        assert_eq!(
            identity_key("account", "a-1"),
            identity_key("account", "a-1")
        );
    }
}
