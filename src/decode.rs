//! Decode and validate v1 events (DESIGN §2), turning bytes into a [`ConversationEvent`] or a
//! typed [`DecodeError`].
//!
//! Each reject reason is its own variant with its own `reason` label, so the on-call engineer can
//! tell a producer sending oversized blobs from one sending bad timestamps. Error messages never
//! quote the input: they go to logs and dead-letter headers, and the input is raw user text.

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::DecodeLimits;
use crate::event::{ConversationEvent, Role, Signals, Turn};

/// Why a message was rejected. `reason()` is the metric label and dead-letter header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {size} bytes, over the {limit}-byte limit")]
    Oversized { size: usize, limit: usize },
    #[error("message is not valid UTF-8 (first bad byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("message is not a JSON object: {category} error at line {line}, column {column}")]
    MalformedJson {
        category: &'static str,
        line: usize,
        column: usize,
    },
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` is invalid: {why}")]
    InvalidField { field: &'static str, why: String },
    #[error("field `timestamp` is not an RFC 3339 date-time")]
    BadTimestamp,
    #[error("conversation has no user turn with text")]
    NoUserTurn,
}

impl DecodeError {
    /// Every value this returns is a bounded metric label.
    pub const REASONS: [&'static str; 7] = [
        "oversized",
        "invalid_utf8",
        "malformed_json",
        "missing_field",
        "invalid_field",
        "bad_timestamp",
        "no_user_turn",
    ];

    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::InvalidUtf8 { .. } => "invalid_utf8",
            DecodeError::MalformedJson { .. } => "malformed_json",
            DecodeError::MissingField(_) => "missing_field",
            DecodeError::InvalidField { .. } => "invalid_field",
            DecodeError::BadTimestamp => "bad_timestamp",
            DecodeError::NoUserTurn => "no_user_turn",
        }
    }
}

/// The wire shape, with every field optional so a missing field gets its own typed error instead
/// of serde's generic one. Unknown fields are ignored, as the contract says.
#[derive(Deserialize)]
struct WireEvent {
    conversation_id: Option<serde_json::Value>,
    account_id: Option<serde_json::Value>,
    org_id: Option<serde_json::Value>,
    timestamp: Option<serde_json::Value>,
    surface: Option<serde_json::Value>,
    model: Option<serde_json::Value>,
    turns: Option<serde_json::Value>,
    signals: Option<serde_json::Value>,
}

/// Decodes one message. `payload_len` is checked before the bytes are looked at.
pub fn decode(payload: &[u8], limits: &DecodeLimits) -> Result<DecodedEvent, DecodeError> {
    if payload.len() > limits.max_message_bytes {
        return Err(DecodeError::Oversized {
            size: payload.len(),
            limit: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(payload).map_err(|e| DecodeError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })?;
    check_nesting(text)?;
    let wire: WireEvent = serde_json::from_str(text).map_err(|e| DecodeError::MalformedJson {
        category: match e.classify() {
            serde_json::error::Category::Io => "io",
            serde_json::error::Category::Syntax => "syntax",
            serde_json::error::Category::Data => "shape",
            serde_json::error::Category::Eof => "truncated",
        },
        line: e.line(),
        column: e.column(),
    })?;

    let conversation_id = required_id(wire.conversation_id, "conversation_id", limits)?;
    let account_id = required_id(wire.account_id, "account_id", limits)?;
    let org_id = optional_string(wire.org_id, "org_id", limits.max_id_chars)?;
    let timestamp = parse_timestamp(wire.timestamp)?;
    let surface = match optional_string(wire.surface, "surface", 64)? {
        None => "unknown".to_string(),
        Some(s) => validate_surface(&s)?,
    };
    let model = optional_string(wire.model, "model", 128)?;
    let (turns, turns_capped) = parse_turns(wire.turns, limits.max_turns)?;
    let signals = match wire.signals {
        None | Some(serde_json::Value::Null) => Signals::default(),
        Some(v) => serde_json::from_value::<Signals>(v).map_err(|_| DecodeError::InvalidField {
            field: "signals",
            why: "expected {\"refused\": bool, \"classifier_flags\": [string]}".into(),
        })?,
    };
    if !turns
        .iter()
        .any(|t| t.role == Role::User && !t.content.trim().is_empty())
    {
        return Err(DecodeError::NoUserTurn);
    }
    Ok(DecodedEvent {
        event: ConversationEvent {
            conversation_id,
            account_id,
            org_id,
            timestamp,
            surface,
            model,
            turns,
            signals,
        },
        turns_capped,
    })
}

/// Deepest nesting of arrays and objects accepted anywhere in a message. serde_json stops at 128
/// levels in the fields decode reads, but skips unknown fields at any depth; a real v1 event nests
/// three deep, so a message past this is hostile wherever the nesting sits, and is rejected alike.
pub const MAX_NESTING: usize = 128;

/// Rejects nesting deeper than [`MAX_NESTING`] with a linear scan (no recursion, no allocation);
/// everything else about the syntax is left to serde_json.
fn check_nesting(text: &str) -> Result<(), DecodeError> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    let (mut line, mut column) = (1usize, 0usize);
    for &b in text.as_bytes() {
        column += 1;
        if b == b'\n' {
            line += 1;
            column = 0;
        }
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(DecodeError::MalformedJson {
                        category: "nesting",
                        line,
                        column,
                    });
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// A decoded event plus what the decoder had to cap on the way.
#[derive(Debug)]
pub struct DecodedEvent {
    pub event: ConversationEvent,
    /// More turns than `max_turns` arrived; the rest were dropped.
    pub turns_capped: bool,
}

fn required_id(
    value: Option<serde_json::Value>,
    field: &'static str,
    limits: &DecodeLimits,
) -> Result<String, DecodeError> {
    match optional_string(value, field, limits.max_id_chars)? {
        None => Err(DecodeError::MissingField(field)),
        Some(s) if s.trim().is_empty() => Err(DecodeError::InvalidField {
            field,
            why: "must not be empty".into(),
        }),
        Some(s) => Ok(s),
    }
}

fn optional_string(
    value: Option<serde_json::Value>,
    field: &'static str,
    max_chars: usize,
) -> Result<Option<String>, DecodeError> {
    match value {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => {
            let chars = s.chars().count();
            if chars > max_chars {
                Err(DecodeError::InvalidField {
                    field,
                    why: format!("{chars} characters, over the limit of {max_chars}"),
                })
            } else {
                Ok(Some(s))
            }
        }
        Some(_) => Err(DecodeError::InvalidField {
            field,
            why: "expected a string".into(),
        }),
    }
}

fn parse_timestamp(value: Option<serde_json::Value>) -> Result<DateTime<Utc>, DecodeError> {
    match value {
        None | Some(serde_json::Value::Null) => Err(DecodeError::MissingField("timestamp")),
        Some(serde_json::Value::String(s)) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| DecodeError::BadTimestamp),
        Some(_) => Err(DecodeError::BadTimestamp),
    }
}

/// Surfaces become metric labels downstream, so they must be short identifiers.
fn validate_surface(surface: &str) -> Result<String, DecodeError> {
    let ok = !surface.is_empty()
        && surface.len() <= 64
        && surface
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    if ok {
        Ok(surface.to_ascii_lowercase())
    } else {
        Err(DecodeError::InvalidField {
            field: "surface",
            why: "expected an identifier of [A-Za-z0-9_.-], at most 64 characters".into(),
        })
    }
}

fn parse_turns(
    value: Option<serde_json::Value>,
    max_turns: usize,
) -> Result<(Vec<Turn>, bool), DecodeError> {
    let items = match value {
        None | Some(serde_json::Value::Null) => return Err(DecodeError::MissingField("turns")),
        Some(serde_json::Value::Array(items)) => items,
        Some(_) => {
            return Err(DecodeError::InvalidField {
                field: "turns",
                why: "expected an array of {role, content}".into(),
            })
        }
    };
    let capped = items.len() > max_turns;
    let mut turns = Vec::with_capacity(items.len().min(max_turns));
    for item in items.into_iter().take(max_turns) {
        let turn: Turn = serde_json::from_value(item).map_err(|_| DecodeError::InvalidField {
            field: "turns",
            why: "each turn needs `role` (user|assistant|system|tool) and string `content`".into(),
        })?;
        turns.push(turn);
    }
    Ok((turns, capped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> DecodeLimits {
        DecodeLimits::default()
    }

    const VALID: &str = r#"{"conversation_id":"c-1","account_id":"a-1","org_id":"o-1",
        "timestamp":"2026-11-27T10:15:02Z","surface":"computer_use","model":"m",
        "turns":[{"role":"user","content":"hello there"},{"role":"assistant","content":"hi"}],
        "signals":{"refused":false,"classifier_flags":["spam"]},"unknown_field":42}"#;

    #[test]
    fn a_valid_event_decodes_with_all_fields() {
        let d = decode(VALID.as_bytes(), &limits()).expect("valid");
        assert_eq!(d.event.conversation_id, "c-1");
        assert_eq!(d.event.org_id.as_deref(), Some("o-1"));
        assert_eq!(d.event.surface, "computer_use");
        assert_eq!(d.event.turns.len(), 2);
        assert_eq!(d.event.signals.classifier_flags, vec!["spam".to_string()]);
        assert_eq!(d.event.timestamp.timestamp(), 1_795_774_502);
        assert!(!d.turns_capped);
    }

    #[test]
    fn optional_fields_default() {
        let d = decode(
            br#"{"conversation_id":"c","account_id":"a","timestamp":"2026-11-27T10:15:02+01:00","turns":[{"role":"user","content":"x"}]}"#,
            &limits(),
        )
        .expect("valid");
        assert_eq!(d.event.surface, "unknown");
        assert!(d.event.org_id.is_none());
        assert!(d.event.signals.refused.is_none());
    }

    #[test]
    fn malformed_json_is_rejected_without_quoting_input() {
        let err = decode(br#"{"conversation_id": "secret text"#, &limits()).unwrap_err();
        assert_eq!(err.reason(), "malformed_json");
        assert!(!err.to_string().contains("secret"));
        let err = decode(b"[1,2,3]", &limits()).unwrap_err();
        assert_eq!(err.reason(), "malformed_json");
    }

    #[test]
    fn each_missing_required_field_is_named() {
        for field in ["conversation_id", "account_id", "timestamp", "turns"] {
            let mut v: serde_json::Value = serde_json::from_str(VALID).unwrap();
            v.as_object_mut().unwrap().remove(field);
            let err = decode(v.to_string().as_bytes(), &limits()).unwrap_err();
            assert_eq!(err, DecodeError::MissingField(field), "field {field}");
            assert_eq!(err.reason(), "missing_field");
        }
    }

    #[test]
    fn invalid_utf8_is_rejected() {
        let mut bytes = VALID.as_bytes().to_vec();
        bytes[30] = 0xff;
        let err = decode(&bytes, &limits()).unwrap_err();
        assert_eq!(err.reason(), "invalid_utf8");
    }

    #[test]
    fn oversized_messages_are_rejected_before_parsing() {
        let l = DecodeLimits {
            max_message_bytes: 64,
            ..limits()
        };
        let err = decode(VALID.as_bytes(), &l).unwrap_err();
        assert!(matches!(err, DecodeError::Oversized { limit: 64, .. }));
        assert_eq!(err.reason(), "oversized");
    }

    #[test]
    fn bad_timestamps_are_rejected() {
        for ts in [
            r#""yesterday""#,
            r#""2026-13-01T00:00:00Z""#,
            r#""2026-11-27 10:15:02""#,
            "12345",
        ] {
            let s = VALID.replace(r#""2026-11-27T10:15:02Z""#, ts);
            let err = decode(s.as_bytes(), &limits()).unwrap_err();
            assert_eq!(err, DecodeError::BadTimestamp, "timestamp {ts}");
        }
    }

    #[test]
    fn ids_are_bounded_and_non_empty() {
        let long = "x".repeat(129);
        let s = VALID.replace(r#""c-1""#, &format!("\"{long}\""));
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
        let s = VALID.replace(r#""a-1""#, r#""  ""#);
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
        let s = VALID.replace(r#""c-1""#, "17");
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
    }

    #[test]
    fn a_conversation_needs_user_text() {
        let s = VALID.replace(
            r#""role":"user","content":"hello there""#,
            r#""role":"assistant","content":"x""#,
        );
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err(),
            DecodeError::NoUserTurn
        );
        let s = VALID.replace("hello there", "   ");
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err(),
            DecodeError::NoUserTurn
        );
    }

    #[test]
    fn bad_roles_and_surfaces_are_invalid_fields() {
        let s = VALID.replace(r#""role":"assistant""#, r#""role":"robot""#);
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
        let s = VALID.replace("computer_use", "computer use<script>");
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
    }

    #[test]
    fn turn_count_is_capped_not_rejected() {
        let turns: Vec<String> = (0..50)
            .map(|i| format!(r#"{{"role":"user","content":"turn {i}"}}"#))
            .collect();
        let s = format!(
            r#"{{"conversation_id":"c","account_id":"a","timestamp":"2026-11-27T10:15:02Z","turns":[{}]}}"#,
            turns.join(",")
        );
        let l = DecodeLimits {
            max_turns: 10,
            ..limits()
        };
        let d = decode(s.as_bytes(), &l).expect("capped");
        assert_eq!(d.event.turns.len(), 10);
        assert!(d.turns_capped);
    }

    #[test]
    fn deeply_nested_json_is_rejected_not_overflowing_the_stack() {
        let s = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "malformed_json"
        );
    }
    #[test]
    fn deep_nesting_is_rejected_even_in_an_unknown_field() {
        let deep = |n: usize| {
            VALID.replace(
                r#""unknown_field":42"#,
                &format!(r#""unknown_field":{}1{}"#, "[".repeat(n), "]".repeat(n)),
            )
        };
        // serde_json skips unknown fields without a depth limit, so this is decode's own check.
        let err = decode(deep(5_000).as_bytes(), &limits()).unwrap_err();
        assert_eq!(err.reason(), "malformed_json");
        assert!(err.to_string().contains("nesting"), "{err}");
        assert!(decode(deep(MAX_NESTING - 1).as_bytes(), &limits()).is_ok());
        // Brackets inside strings (escaped quotes included) are text, not nesting.
        let text = format!(r#"\"{}"#, "[{".repeat(200));
        let s = VALID.replace("hello there", &text);
        assert!(decode(s.as_bytes(), &limits()).is_ok());
    }

    #[test]
    fn a_100_mb_payload_is_refused_from_its_length_alone() {
        // Zeroed pages the kernel has not backed: nothing here reads them, and neither may
        // decode. All-zero bytes would otherwise be a `malformed_json`, so the reason shows that
        // the size check came first.
        let payload = vec![0u8; 100 * 1024 * 1024];
        let err = decode(&payload, &limits()).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Oversized {
                size: 100 * 1024 * 1024,
                limit: limits().max_message_bytes
            }
        );
    }

    #[test]
    fn ten_thousand_turns_are_capped_at_max_turns() {
        let turns: Vec<String> = (0..10_000)
            .map(|i| format!(r#"{{"role":"user","content":"turn {i}"}}"#))
            .collect();
        let s = format!(
            r#"{{"conversation_id":"c","account_id":"a","timestamp":"2026-11-27T10:15:02Z","turns":[{}]}}"#,
            turns.join(",")
        );
        let d = decode(s.as_bytes(), &limits()).expect("capped, not rejected");
        assert_eq!(d.event.turns.len(), limits().max_turns);
        assert_eq!(d.event.turns[199].content, "turn 199");
        assert!(d.turns_capped);
    }

    #[test]
    fn lone_surrogate_escapes_are_malformed_json() {
        for escaped in [r"\ud800", r"\udfff", r"\udc00\ud800", r"\ud800\u0041"] {
            let s = VALID.replace("hello there", escaped);
            assert_eq!(
                decode(s.as_bytes(), &limits()).unwrap_err().reason(),
                "malformed_json",
                "{escaped}"
            );
        }
        // A correctly paired surrogate is an ordinary character.
        let s = VALID.replace("hello there", r"\ud83d\ude00");
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap().event.turns[0].content,
            "\u{1F600}"
        );
    }

    #[test]
    fn surrogates_and_overlong_forms_in_raw_bytes_are_invalid_utf8() {
        for bad in [
            &b"\xed\xa0\x80"[..],
            b"\xc0\xaf",
            b"\xf4\x90\x80\x80",
            b"\xe2\x80",
        ] {
            let mut bytes = VALID.as_bytes().to_vec();
            let at = VALID.find("hello").unwrap();
            bytes.splice(at..at, bad.iter().copied());
            let err = decode(&bytes, &limits()).unwrap_err();
            assert_eq!(err, DecodeError::InvalidUtf8 { valid_up_to: at }, "{bad:?}");
        }
    }

    /// Decode keeps text verbatim, hostile or not: it is what the user sent. Characters that hide
    /// or reorder text are removed by the summarize stage (`summarize::scrub::sanitize`), before
    /// anything derived from the text is kept or exported; ids and surfaces are checked here.
    #[test]
    fn hiding_characters_pass_decode_verbatim_but_not_into_identifiers() {
        let text = "a\u{202E}b\u{200B}c\u{200D}d\u{FEFF}e";
        let s = VALID.replace("hello there", text);
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap().event.turns[0].content,
            text
        );
        let s = VALID.replace("computer_use", "computer\u{202E}_use");
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap_err().reason(),
            "invalid_field"
        );
        let flood = format!("e{}", "\u{0301}".repeat(100_000));
        let s = VALID.replace("hello there", &flood);
        assert_eq!(
            decode(s.as_bytes(), &limits()).unwrap().event.turns[0].content,
            flood
        );
    }
}
