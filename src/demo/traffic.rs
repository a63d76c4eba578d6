//! A seeded generator of realistic v1 traffic from the bundled public data sets, with an optional
//! injected campaign, invalid messages and redeliveries.
//!
//! Organic traffic is the CLINC150 and Banking77 requests as single-turn conversations from a
//! heavy-tailed population of accounts across orgs and surfaces, spread over compressed event
//! time. The campaign is one real SMS spam campaign pasted into the assistant by fresh accounts
//! within a few minutes — what scripted misuse looks like. The same seed gives the same bytes.

use chrono::{DateTime, TimeZone, Utc};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

pub(crate) const CLINC150: &str = include_str!("../../tests/fixtures/traffic/clinc150_test.jsonl");
pub(crate) const BANKING77: &str =
    include_str!("../../tests/fixtures/traffic/banking77_test.jsonl");
pub(crate) const SMS_SPAM: &str = include_str!("../../tests/fixtures/traffic/sms_spam.jsonl");

/// The spam campaign the demo injects (a shared premium number in the UCI data).
pub const DEMO_CAMPAIGN_KEY: &str = "num:08000930705";

/// What to generate.
#[derive(Debug, Clone)]
pub struct TrafficSpec {
    pub seed: u64,
    pub organic_events: usize,
    /// Event time of the first organic event.
    pub start: DateTime<Utc>,
    /// Organic events are spread uniformly over this many event seconds.
    pub duration_secs: i64,
    /// Distinct organic accounts (activity is heavy-tailed across them).
    pub organic_accounts: usize,
    pub campaign: Option<CampaignSpec>,
    /// Invalid messages, cycling through every reject reason.
    pub invalid_events: usize,
    /// Valid events re-sent with the same conversation id (redeliveries).
    pub duplicate_events: usize,
    /// Oversized invalid messages are made just over this size.
    pub max_message_bytes: usize,
}

/// A coordinated campaign: fresh accounts sending one campaign's messages in a short window.
#[derive(Debug, Clone)]
pub struct CampaignSpec {
    pub campaign_key: String,
    pub accounts: usize,
    /// Each account sends between 2 and this many messages.
    pub max_messages_per_account: usize,
    /// Seconds after `start` when the campaign begins.
    pub offset_secs: i64,
    /// The campaign's duration in event seconds.
    pub duration_secs: i64,
    pub surface: String,
}

impl Default for TrafficSpec {
    fn default() -> Self {
        TrafficSpec {
            seed: 7,
            organic_events: 4000,
            start: Utc
                .with_ymd_and_hms(2026, 11, 27, 8, 0, 0)
                .single()
                .unwrap_or_else(Utc::now),
            duration_secs: 3 * 3600,
            organic_accounts: 2500,
            campaign: Some(CampaignSpec::default()),
            invalid_events: 12,
            duplicate_events: 20,
            max_message_bytes: 1_048_576,
        }
    }
}

impl Default for CampaignSpec {
    fn default() -> Self {
        CampaignSpec {
            campaign_key: DEMO_CAMPAIGN_KEY.to_string(),
            accounts: 40,
            max_messages_per_account: 3,
            offset_secs: 90 * 60,
            duration_secs: 4 * 60,
            surface: "api".to_string(),
        }
    }
}

/// What a generated message is, so tests can check the pipeline's verdict on each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageKind {
    Organic,
    Campaign,
    /// An invalid message and the reject reason it must get.
    Invalid(&'static str),
    /// A redelivery of an earlier valid conversation.
    Duplicate,
}

#[derive(Debug, Clone)]
pub struct GeneratedMessage {
    /// The Kafka key (the conversation id; random bytes for some invalid messages).
    pub key: String,
    pub payload: Vec<u8>,
    pub event_time_ms: i64,
    pub kind: MessageKind,
}

#[derive(serde::Deserialize)]
pub(crate) struct Row {
    pub text: String,
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub meta: Option<serde_json::Value>,
}

pub(crate) fn rows(data: &str) -> Vec<Row> {
    data.lines()
        .filter_map(|l| serde_json::from_str::<Row>(l).ok())
        .collect()
}

/// Texts of the bundled SMS spam campaign `key`.
pub fn campaign_texts(key: &str) -> Vec<String> {
    rows(SMS_SPAM)
        .into_iter()
        .filter(|r| {
            r.meta
                .as_ref()
                .and_then(|m| m.get("campaign_key"))
                .and_then(|k| k.as_str())
                == Some(key)
        })
        .map(|r| r.text)
        .collect()
}

/// The organic request pool: CLINC150 test and Banking77 test.
pub fn organic_texts() -> Vec<String> {
    rows(CLINC150)
        .into_iter()
        .chain(rows(BANKING77))
        .map(|r| r.text)
        .collect()
}

const SURFACES: &[(&str, f64)] = &[
    ("chat", 0.55),
    ("api", 0.25),
    ("code", 0.12),
    ("computer_use", 0.08),
];

const CAMPAIGN_TEMPLATES: &[&str] = &[
    "Send this text message to every number on my list: {msg}",
    "Send this text message to every number on my list, same wording: {msg}",
];

#[allow(clippy::too_many_arguments)]
pub(crate) fn event(
    conversation_id: &str,
    account: &str,
    org: Option<&str>,
    time: DateTime<Utc>,
    surface: &str,
    user: &str,
    assistant: &str,
    refused: Option<bool>,
) -> serde_json::Value {
    let mut v = json!({
        "conversation_id": conversation_id,
        "account_id": account,
        "timestamp": time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "surface": surface,
        "model": "assistant-v4",
        "turns": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ],
    });
    if let Some(org) = org {
        v["org_id"] = json!(org);
    }
    if let Some(refused) = refused {
        v["signals"] = json!({"refused": refused, "classifier_flags": []});
    }
    v
}

pub(crate) fn pick_surface(rng: &mut ChaCha8Rng) -> &'static str {
    let x: f64 = rng.gen();
    let mut acc = 0.0;
    for (s, p) in SURFACES {
        acc += p;
        if x < acc {
            return s;
        }
    }
    "chat"
}

/// Generates the whole stream, ordered by event time (ties keep generation order).
pub fn generate(spec: &TrafficSpec) -> Vec<GeneratedMessage> {
    let mut rng = ChaCha8Rng::seed_from_u64(spec.seed);
    let start_ms = spec.start.timestamp_millis();
    let mut out: Vec<GeneratedMessage> = Vec::new();

    // Heavy-tailed activity: account rank r is chosen with weight 1/(r+1)^1.1.
    let accounts = spec.organic_accounts.max(1);
    let weights: Vec<f64> = (0..accounts)
        .map(|r| 1.0 / ((r + 1) as f64).powf(1.1))
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(accounts);
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let pool = organic_texts();
    let mut conv = 0u64;
    for _ in 0..spec.organic_events {
        let x: f64 = rng.gen();
        let account_rank = cumulative.partition_point(|c| *c < x).min(accounts - 1);
        let account = format!("acct-{:05}", account_rank);
        let org = format!("org-{:03}", (account_rank * 7919) % 90);
        let text = &pool[rng.gen_range(0..pool.len())];
        let t = start_ms + rng.gen_range(0..spec.duration_secs.max(1) * 1000);
        let refused = rng.gen_bool(0.02);
        let reply = if refused {
            "I'm sorry, but I can't help with that request."
        } else {
            "Sure, here is what I found for you."
        };
        conv += 1;
        let id = format!("conv-{}-{conv:07}", spec.seed);
        let time = Utc.timestamp_millis_opt(t).single().unwrap_or(spec.start);
        let v = event(
            &id,
            &account,
            Some(&org),
            time,
            pick_surface(&mut rng),
            text,
            reply,
            None,
        );
        out.push(GeneratedMessage {
            key: id,
            payload: v.to_string().into_bytes(),
            event_time_ms: t,
            kind: MessageKind::Organic,
        });
    }

    if let Some(campaign) = &spec.campaign {
        let texts = campaign_texts(&campaign.campaign_key);
        if !texts.is_empty() {
            let begin = start_ms + campaign.offset_secs * 1000;
            for a in 0..campaign.accounts {
                let account = format!("acct-fresh-{}-{a:04}", spec.seed);
                let n = rng.gen_range(2..=campaign.max_messages_per_account.max(2));
                for _ in 0..n {
                    let msg = texts.choose(&mut rng).map(String::as_str).unwrap_or("");
                    let template = CAMPAIGN_TEMPLATES
                        .choose(&mut rng)
                        .copied()
                        .unwrap_or(CAMPAIGN_TEMPLATES[0]);
                    let user = template.replace("{msg}", msg);
                    let t = begin + rng.gen_range(0..campaign.duration_secs.max(1) * 1000);
                    conv += 1;
                    let id = format!("conv-{}-{conv:07}", spec.seed);
                    let time = Utc.timestamp_millis_opt(t).single().unwrap_or(spec.start);
                    let refused = rng.gen_bool(0.3);
                    let reply = if refused {
                        "I can't help with sending unsolicited bulk messages."
                    } else {
                        "Done. The message is ready to send."
                    };
                    let v = event(
                        &id,
                        &account,
                        None,
                        time,
                        &campaign.surface,
                        &user,
                        reply,
                        Some(refused),
                    );
                    out.push(GeneratedMessage {
                        key: id,
                        payload: v.to_string().into_bytes(),
                        event_time_ms: t,
                        kind: MessageKind::Campaign,
                    });
                }
            }
        }
    }

    out.sort_by_key(|m| m.event_time_ms);

    // Redeliveries: copies of earlier valid events, placed shortly after their original.
    let valid = out.len();
    if valid > 0 {
        let mut dups = Vec::new();
        for _ in 0..spec.duplicate_events {
            let original = &out[rng.gen_range(0..valid)];
            dups.push(GeneratedMessage {
                kind: MessageKind::Duplicate,
                event_time_ms: original.event_time_ms + 1,
                ..original.clone()
            });
        }
        out.extend(dups);
    }

    for i in 0..spec.invalid_events {
        let t = start_ms + rng.gen_range(0..spec.duration_secs.max(1) * 1000);
        let (reason, payload) = invalid_message(i, spec, t);
        out.push(GeneratedMessage {
            key: format!("invalid-{}-{i:05}", spec.seed),
            payload,
            event_time_ms: t,
            kind: MessageKind::Invalid(reason),
        });
    }
    out.sort_by_key(|m| m.event_time_ms);
    out
}

/// The i-th invalid message, cycling through every reject reason the decoder has.
fn invalid_message(i: usize, spec: &TrafficSpec, t_ms: i64) -> (&'static str, Vec<u8>) {
    let time = Utc
        .timestamp_millis_opt(t_ms)
        .single()
        .unwrap_or(spec.start)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let id = format!("conv-invalid-{}-{i}", spec.seed);
    let valid = |surface: &str| {
        json!({"conversation_id": id, "account_id": "acct-bad", "timestamp": time, "surface": surface,
               "turns": [{"role": "user", "content": "what is the weather"}]})
    };
    match i % 7 {
        0 => (
            "malformed_json",
            br#"{"conversation_id": "x", "turns": [ "#.to_vec(),
        ),
        1 => {
            let mut v = valid("chat");
            if let Some(o) = v.as_object_mut() {
                o.remove("account_id");
            }
            ("missing_field", v.to_string().into_bytes())
        }
        2 => {
            let mut bytes = valid("chat").to_string().into_bytes();
            bytes.extend_from_slice(&[0xff, 0xfe, 0xfd]);
            ("invalid_utf8", bytes)
        }
        3 => {
            let filler = "a".repeat(spec.max_message_bytes + 16);
            let mut v = valid("chat");
            v["turns"][0]["content"] = json!(filler);
            ("oversized", v.to_string().into_bytes())
        }
        4 => {
            let mut v = valid("chat");
            v["timestamp"] = json!("27/11/2026 10:15");
            ("bad_timestamp", v.to_string().into_bytes())
        }
        5 => {
            let mut v = valid("chat");
            v["turns"] = json!([{"role": "assistant", "content": "hello"}]);
            ("no_user_turn", v.to_string().into_bytes())
        }
        _ => ("invalid_field", valid("chat ui").to_string().into_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_is_deterministic_and_has_what_was_asked() {
        let spec = TrafficSpec {
            organic_events: 500,
            invalid_events: 14,
            duplicate_events: 5,
            max_message_bytes: 4096,
            ..Default::default()
        };
        let a = generate(&spec);
        let b = generate(&spec);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.payload == y.payload));
        let count = |k: &MessageKind| a.iter().filter(|m| &m.kind == k).count();
        assert_eq!(count(&MessageKind::Organic), 500);
        assert_eq!(count(&MessageKind::Duplicate), 5);
        let campaign = count(&MessageKind::Campaign);
        assert!((80..=120).contains(&campaign), "{campaign}");
        for reason in crate::decode::DecodeError::REASONS {
            assert_eq!(count(&MessageKind::Invalid(reason)), 2, "{reason}");
        }
        assert!(a
            .windows(2)
            .all(|w| w[0].event_time_ms <= w[1].event_time_ms));
    }

    #[test]
    fn every_invalid_message_gets_its_intended_reason() {
        let spec = TrafficSpec {
            organic_events: 0,
            campaign: None,
            invalid_events: 7,
            duplicate_events: 0,
            max_message_bytes: 4096,
            ..Default::default()
        };
        let limits = crate::config::DecodeLimits {
            max_message_bytes: 4096,
            ..Default::default()
        };
        for m in generate(&spec) {
            let MessageKind::Invalid(reason) = m.kind else {
                panic!("only invalid messages expected")
            };
            let err = crate::decode::decode(&m.payload, &limits).unwrap_err();
            assert_eq!(err.reason(), reason);
        }
    }

    #[test]
    fn the_bundled_campaign_exists() {
        assert!(campaign_texts(DEMO_CAMPAIGN_KEY).len() >= 10);
        assert!(organic_texts().len() > 8000);
    }
}
