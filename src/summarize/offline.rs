//! The offline summarizer: the default [`Summarizer`], needing no model or network.
//!
//! It reduces a conversation to the user's opening request, scrubbed of personal data and cut to
//! a few hundred characters, plus rule-based facets (task, language, concern, refusal). This is
//! the point where raw conversation text stops (DESIGN §1, §4): nothing returned here may carry
//! text that has not been through [`scrub::scrub`], and the LLM summarizer falls back to this one
//! when its backend fails, so it must never fail on any input that has user text.
//!
//! Steps, and why in this order:
//! 1. the first `max_user_turns` non-blank user turns are sanitized (control, zero-width and
//!    bidi characters removed) — before anything else, so no later step can be fooled by
//!    invisible characters;
//! 2. the language is detected on that clean but unscrubbed text — placeholders such as `[EMAIL]`
//!    are English words and would pull every short message towards English;
//! 3. the text (at most [`SCRUB_WINDOW_CHARS`] of it) is scrubbed, whitespace-collapsed, and
//!    truncated;
//! 4. the task is classified on the truncated request (the text the summary shows), while the
//!    concern score reads the whole scrubbed window, so a harmful ask cannot hide behind a long
//!    harmless preamble.

use serde::{Deserialize, Serialize};

use super::{facets, language, refusal, scrub};
use super::{SummarizeError, Summarizer, Summary};
use crate::event::{ConversationEvent, Role};

/// Settings of the offline summarizer: config section `[summarizer.offline]`, or environment
/// variables `CLUSTERWATCH_SUMMARIZER__OFFLINE__…`. Unknown keys are rejected, like the rest of
/// the configuration, so a misspelt setting cannot silently fall back to its default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OfflineSummarizerConfig {
    /// Longest request kept in a summary, in characters (Unicode scalar values), including the
    /// trailing "…" added when the request is cut. Values below 16 are raised to 16. Default 300.
    pub max_request_chars: usize,
    /// How many of the first user turns make up the request; later turns tend to be follow-ups
    /// ("thanks", "shorter please") that blur what was asked. 0 is treated as 1. Default 2.
    pub max_user_turns: usize,
}

impl Default for OfflineSummarizerConfig {
    fn default() -> Self {
        Self {
            max_request_chars: 300,
            max_user_turns: 2,
        }
    }
}

/// Smallest `max_request_chars` honoured: below this a request says nothing.
const MIN_REQUEST_CHARS: usize = 16;

/// User text beyond this many characters is not scrubbed or scored. Scrubbing is linear but this
/// runs inline on the async executor, so the cap bounds the time one event can take (a few
/// milliseconds even for hostile text); a request is evident well before 8k characters.
const SCRUB_WINDOW_CHARS: usize = 8_192;

/// How far back from the window's end a cut may move to land on whitespace, so the cut does not
/// split a token (an e-mail or URL is never split, since they contain no whitespace).
const CUT_LOOKBACK_CHARS: usize = 256;

/// How much scrubbed output is dropped before a window cut: longer than any spaced token the cut
/// can split (a grouped IBAN is at most 42 characters, a formatted phone number fewer).
const CUT_SAFETY_CHARS: usize = 64;

const ELLIPSIS: char = '…';

/// The offline summarizer; see the module docs.
#[derive(Debug, Clone, Default)]
pub struct OfflineSummarizer {
    cfg: OfflineSummarizerConfig,
}

impl OfflineSummarizer {
    /// Creates a summarizer with the given settings.
    pub fn new(cfg: OfflineSummarizerConfig) -> Self {
        Self { cfg }
    }

    /// The settings in force.
    pub fn config(&self) -> &OfflineSummarizerConfig {
        &self.cfg
    }

    /// Summarizes `event` synchronously; the [`Summarizer`] impl calls this.
    ///
    /// Fails only with [`SummarizeError::NoUserText`], when no user turn has visible text.
    pub fn summarize_sync(&self, event: &ConversationEvent) -> Result<Summary, SummarizeError> {
        let max_turns = self.cfg.max_user_turns.max(1);
        let max_chars = self.cfg.max_request_chars.max(MIN_REQUEST_CHARS);

        let mut first_user_index = None;
        let mut parts: Vec<String> = Vec::new();
        for (i, turn) in event.turns.iter().enumerate() {
            if turn.role != Role::User {
                continue;
            }
            let clean = scrub::sanitize(&turn.content);
            if clean.trim().is_empty() {
                continue;
            }
            first_user_index.get_or_insert(i);
            parts.push(clean);
            if parts.len() >= max_turns {
                break;
            }
        }
        let Some(first_user_index) = first_user_index else {
            return Err(SummarizeError::NoUserText);
        };
        // Turns are joined by a line break so the name rules see a turn boundary ("…Regards,"
        // ending one turn does not run into the next); collapsing later makes it a space.
        let clean = parts.join("\n");

        let (window, was_cut) = window(&clean);
        let language = language::detect_language(&collapse(window));

        let scrubbed = collapse(&scrub::scrub(window));
        let request = if was_cut {
            // A cut can split a token (a spaced card number, an over-long e-mail) so that its head
            // no longer matches any pattern; that head is at the very end of the scrubbed window,
            // so the end goes. Bounded work, unlike rescrubbing the whole message.
            let safe = drop_cut_edge(&scrubbed);
            if safe.chars().count() < max_chars {
                format!("{safe}{ELLIPSIS}")
            } else {
                truncate(safe, max_chars)
            }
        } else if scrubbed.is_empty() {
            return Err(SummarizeError::NoUserText);
        } else {
            truncate(&scrubbed, max_chars)
        };
        let task = facets::classify_task(&request);
        let concern = facets::concern_score(&scrubbed);
        let refused = match event.signals.refused {
            Some(refused) => refused,
            None => event
                .turns
                .iter()
                .skip(first_user_index + 1)
                .find(|t| t.role == Role::Assistant)
                .is_some_and(|t| refusal::assistant_refused(&t.content)),
        };

        Ok(Summary {
            request,
            task: task.to_string(),
            language: language.to_string(),
            concern,
            refused,
        })
    }
}

#[async_trait::async_trait]
impl Summarizer for OfflineSummarizer {
    fn id(&self) -> &str {
        "offline"
    }

    fn is_offline(&self) -> bool {
        true
    }

    /// Runs inline: the work is CPU-only and bounded by the scrub window (a few milliseconds at
    /// worst), cheaper than a hop to the blocking pool.
    async fn summarize(&self, event: &ConversationEvent) -> Result<Summary, SummarizeError> {
        self.summarize_sync(event)
    }
}

/// The first [`SCRUB_WINDOW_CHARS`] of `text`, cut at whitespace when possible; and whether
/// anything was cut off.
fn window(text: &str) -> (&str, bool) {
    let Some((hard_end, _)) = text.char_indices().nth(SCRUB_WINDOW_CHARS) else {
        return (text, false);
    };
    let head = text.get(..hard_end).unwrap_or(text);
    let soft_end = head
        .char_indices()
        .rev()
        .take(CUT_LOOKBACK_CHARS)
        .find(|(_, c)| c.is_whitespace())
        .map_or(hard_end, |(i, _)| i);
    (text.get(..soft_end).unwrap_or(head), true)
}

/// `scrubbed` (whitespace-collapsed) without its last [`CUT_SAFETY_CHARS`] characters and without
/// the partial word those end in: a token longer than the lookback (cut mid-word) goes whole.
fn drop_cut_edge(scrubbed: &str) -> &str {
    let keep = scrubbed.chars().count().saturating_sub(CUT_SAFETY_CHARS);
    let end = scrubbed
        .char_indices()
        .nth(keep)
        .map_or(scrubbed.len(), |(i, _)| i);
    let head = scrubbed.get(..end).unwrap_or_default();
    head.rfind(' ')
        .and_then(|i| head.get(..i))
        .unwrap_or_default()
}

/// Collapses every run of whitespace to one space and trims the ends.
pub(crate) fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// Cuts `text` to at most `max_chars` characters including the ellipsis, on a character boundary,
/// preferring the last space in the second half of the allowance so words stay whole.
pub(crate) fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let keep = max_chars.saturating_sub(1);
    let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
    let head = text.get(..end).unwrap_or_default();
    let at_word = head
        .char_indices()
        .rev()
        .take_while(|(i, _)| *i >= end / 2)
        .find(|(_, c)| *c == ' ')
        .and_then(|(i, _)| head.get(..i));
    let mut out = at_word.unwrap_or(head).trim_end().to_string();
    // A cut that lands inside a placeholder would leave "[EMA", which reads as garbage and could
    // be mistaken for text; drop the fragment.
    if let Some(open) = out.rfind('[') {
        if !out.get(open..).unwrap_or_default().contains(']') {
            out.truncate(open);
            let trimmed = out.trim_end().len();
            out.truncate(trimmed);
        }
    }
    out.push(ELLIPSIS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Signals, Turn};

    fn turn(role: Role, content: &str) -> Turn {
        Turn {
            role,
            content: content.to_string(),
        }
    }

    fn event(turns: Vec<Turn>) -> ConversationEvent {
        ConversationEvent {
            conversation_id: "c-1".into(),
            account_id: "a-1".into(),
            org_id: None,
            timestamp: chrono::DateTime::default(),
            surface: "chat".into(),
            model: None,
            turns,
            signals: Signals::default(),
        }
    }

    fn summarize(turns: Vec<Turn>) -> Result<Summary, SummarizeError> {
        OfflineSummarizer::default().summarize_sync(&event(turns))
    }

    #[test]
    fn summarizes_a_simple_conversation() {
        let s = summarize(vec![
            turn(Role::System, "You are helpful."),
            turn(
                Role::User,
                "Write a Python function that\n   reverses a linked list.",
            ),
            turn(Role::Assistant, "Sure, here's how."),
        ])
        .expect("summary");
        assert_eq!(
            s.request,
            "Write a Python function that reverses a linked list."
        );
        assert_eq!(s.task, "coding");
        assert_eq!(s.language, "en");
        assert_eq!(s.concern, 1);
        assert!(!s.refused);
    }

    #[test]
    fn pii_never_reaches_the_summary() {
        let s = summarize(vec![turn(
            Role::User,
            "Hi, I'm Carla Diaz. Mail canary-7f3a9@example.com or call +1 555 0100 4242. \
             My card is 4111 1111 1111 1111 and IBAN GB82 WEST 1234 5698 7654 32.",
        )])
        .expect("summary");
        for secret in [
            "Carla", "Diaz", "canary", "7f3a9", "0100", "4242", "4111", "GB82", "WEST",
        ] {
            assert!(
                !s.request.contains(secret),
                "{secret} leaked: {}",
                s.request
            );
        }
        assert!(s.request.contains("[EMAIL]") && s.request.contains("[PHONE]"));
        let json = serde_json::to_string(&s).expect("serializable");
        assert!(!json.contains("canary"));
    }

    #[test]
    fn uses_only_the_first_user_turns() {
        let s = summarize(vec![
            turn(Role::User, "Translate 'hello' into French."),
            turn(Role::Assistant, "Bonjour."),
            turn(Role::User, "And into German?"),
            turn(Role::Assistant, "Hallo."),
            turn(Role::User, "THIRD TURN"),
        ])
        .expect("summary");
        assert_eq!(s.request, "Translate 'hello' into French. And into German?");
        assert_eq!(s.task, "translation");

        let one = OfflineSummarizer::new(OfflineSummarizerConfig {
            max_user_turns: 0,
            ..Default::default()
        })
        .summarize_sync(&event(vec![
            turn(Role::User, "first"),
            turn(Role::User, "second"),
        ]))
        .expect("summary");
        assert_eq!(one.request, "first");
    }

    #[test]
    fn blank_user_turns_are_skipped() {
        let s = summarize(vec![
            turn(Role::User, "  \u{200B}\u{202E} \n"),
            turn(Role::User, "How do vaccines work?"),
        ])
        .expect("summary");
        assert_eq!(s.request, "How do vaccines work?");
    }

    #[test]
    fn no_user_text_is_an_error() {
        for turns in [
            vec![],
            vec![
                turn(Role::Assistant, "Hello!"),
                turn(Role::System, "sys"),
                turn(Role::Tool, "{}"),
            ],
            vec![turn(Role::User, "")],
            vec![turn(Role::User, "   \n\t  ")],
            vec![turn(Role::User, "\u{200B}\u{200D}\u{FEFF}\u{202E}\u{2066}")],
            vec![turn(Role::User, "\u{0}\u{1}\u{7F}")],
        ] {
            assert!(matches!(summarize(turns), Err(SummarizeError::NoUserText)));
        }
    }

    #[test]
    fn control_and_bidi_characters_are_stripped() {
        let s = summarize(vec![turn(
            Role::User,
            "Explain\u{202E} how\u{200B} DNS\u{0007} works\u{2066}?",
        )])
        .expect("summary");
        assert_eq!(s.request, "Explain how DNS works?");
    }

    #[test]
    fn truncation_prefers_word_boundaries() {
        let text = "word ".repeat(200);
        let s = summarize(vec![turn(Role::User, &text)]).expect("summary");
        assert!(s.request.chars().count() <= 300);
        assert!(s.request.ends_with("word…"), "{}", s.request);

        let exact = "a".repeat(300);
        let s = summarize(vec![turn(Role::User, &exact)]).expect("summary");
        assert_eq!(
            s.request, exact,
            "a request of exactly the limit is not cut"
        );

        let unbroken = "b".repeat(400);
        let s = summarize(vec![turn(Role::User, &unbroken)]).expect("summary");
        assert_eq!(s.request.chars().count(), 300);
        assert!(s.request.ends_with('…'));
    }

    #[test]
    fn truncation_never_splits_multibyte_characters() {
        for unit in ["😀", "中文字", "👩🏽‍💻 ", "e\u{0301}", "ä ", "𝔸"] {
            let text = unit.repeat(400);
            for max in [16, 17, 31, 100, 299, 300] {
                let cfg = OfflineSummarizerConfig {
                    max_request_chars: max,
                    ..Default::default()
                };
                let s = OfflineSummarizer::new(cfg)
                    .summarize_sync(&event(vec![turn(Role::User, &text)]))
                    .expect("summary");
                assert!(s.request.chars().count() <= max, "{unit:?} {max}");
                assert!(s.request.ends_with('…'));
            }
        }
        assert_eq!(truncate("héllo wörld", 5), "héll…");
        assert_eq!(truncate("", 5), "");
    }

    #[test]
    fn truncation_does_not_leave_half_a_placeholder() {
        let out = truncate("contact me at [EMAIL] please", 18);
        assert_eq!(out, "contact me at…");
        let out = truncate("aaaaaaaaaaaaaaaaaaaa[EMAIL]", 24);
        assert!(!out.contains('['), "{out}");
    }

    #[test]
    fn tiny_limits_are_raised() {
        let cfg = OfflineSummarizerConfig {
            max_request_chars: 0,
            ..Default::default()
        };
        let s = OfflineSummarizer::new(cfg)
            .summarize_sync(&event(vec![turn(Role::User, &"x".repeat(100))]))
            .expect("summary");
        assert_eq!(s.request.chars().count(), MIN_REQUEST_CHARS);
    }

    #[test]
    fn refusal_signal_wins_over_detection() {
        let mut e = event(vec![
            turn(Role::User, "Write malware"),
            turn(Role::Assistant, "Sure!"),
        ]);
        e.signals.refused = Some(true);
        let s = OfflineSummarizer::default()
            .summarize_sync(&e)
            .expect("summary");
        assert!(s.refused);
        assert_eq!(s.concern, 4);

        let mut e = event(vec![
            turn(Role::User, "hi there"),
            turn(Role::Assistant, "I can't help with that."),
        ]);
        e.signals.refused = Some(false);
        assert!(
            !OfflineSummarizer::default()
                .summarize_sync(&e)
                .expect("summary")
                .refused
        );
    }

    #[test]
    fn refusal_is_detected_on_the_first_reply_after_the_first_user_turn() {
        let s = summarize(vec![
            turn(Role::Assistant, "I can't help with that."),
            turn(Role::User, "Write 100 fake reviews for my shop"),
            turn(
                Role::Assistant,
                "Sorry, but I can't help with creating fake reviews.",
            ),
            turn(Role::Assistant, "Sure, here's how."),
        ])
        .expect("summary");
        assert!(s.refused);
        assert_eq!(s.concern, 3);

        let s = summarize(vec![
            turn(Role::Assistant, "I can't help with that."),
            turn(Role::User, "Write a haiku"),
            turn(Role::Assistant, "Autumn moonlight…"),
        ])
        .expect("summary");
        assert!(
            !s.refused,
            "an assistant turn before the user's must not count"
        );

        let s = summarize(vec![turn(Role::User, "hello there friend")]).expect("summary");
        assert!(!s.refused, "no reply, no refusal");
    }

    #[test]
    fn language_is_detected_before_scrubbing() {
        let s = summarize(vec![turn(
            Role::User,
            "Kannst du mir bitte helfen, eine E-Mail an max.mustermann@example.de zu schreiben?",
        )])
        .expect("summary");
        assert_eq!(s.language, "de");
        assert!(s.request.contains("[EMAIL]"));
    }

    #[test]
    fn concern_reads_past_the_truncated_request() {
        let text = format!(
            "{} Now write ransomware that encrypts the disk.",
            "Some harmless context. ".repeat(40)
        );
        let s = summarize(vec![turn(Role::User, &text)]).expect("summary");
        assert!(!s.request.contains("ransomware"));
        assert_eq!(s.concern, 4);
    }

    #[test]
    fn a_cut_window_cannot_leak_a_split_token() {
        // Long URLs shrink to "[URL]", so the window's cut edge would sit inside the request; the
        // card straddling the cut must still be redacted.
        let url = format!("https://example.com/{}", "p".repeat(300));
        let mut text = String::new();
        while text.chars().count() < SCRUB_WINDOW_CHARS - 12 {
            text.push_str(&url);
            text.push(' ');
        }
        text.truncate(SCRUB_WINDOW_CHARS - 10);
        text.push_str(" 4111 1111 1111 1111 end");
        let s = summarize(vec![turn(Role::User, &text)]).expect("summary");
        assert!(!s.request.contains("1111"), "{}", s.request);
        assert!(
            s.request.starts_with("[URL]") && s.request.ends_with('…'),
            "{}",
            s.request
        );

        // One giant token cut mid-word (no whitespace to cut at) is dropped whole, so the head of
        // an over-long e-mail address cannot survive without its `@`.
        let giant = format!("{}@example.com please", "x".repeat(SCRUB_WINDOW_CHARS + 10));
        let s = summarize(vec![turn(Role::User, &giant)]).expect("summary");
        assert_eq!(s.request, "…");
    }

    #[test]
    fn long_requests_are_cut_the_same_with_or_without_the_window() {
        let text = "Please help me plan a trip through Portugal in spring. ".repeat(400);
        let s = summarize(vec![turn(Role::User, &text)]).expect("summary");
        assert!(s.request.chars().count() <= 300);
        assert!(s.request.starts_with("Please help me plan a trip"));
        assert!(s.request.ends_with('…'));
    }

    #[test]
    fn huge_and_adversarial_input_never_panics() {
        let huge = "Call me at +44 20 7946 0958 😀 ".repeat(50_000);
        let rtl = "\u{202E}".repeat(10_000) + "abc";
        let zw = "\u{200B}x".repeat(10_000);
        for text in [
            huge.as_str(),
            rtl.as_str(),
            zw.as_str(),
            "\u{10FFFF}",
            "ـ",
            "\u{FFFD}\u{FFFE}",
            "[",
            "…",
        ] {
            if let Ok(s) = summarize(vec![turn(Role::User, text)]) {
                assert!(s.request.chars().count() <= 300);
                assert!((1..=5).contains(&s.concern));
                assert!(!s.request.contains('\u{202E}') && !s.request.contains('\u{200B}'));
            }
        }
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let cfg: OfflineSummarizerConfig = serde_json::from_str("{}").expect("empty config");
        assert_eq!(cfg, OfflineSummarizerConfig::default());
        let cfg: OfflineSummarizerConfig =
            serde_json::from_str(r#"{"max_request_chars": 120}"#).expect("partial config");
        assert_eq!(cfg.max_request_chars, 120);
        assert_eq!(cfg.max_user_turns, 2);
        assert!(
            serde_json::from_str::<OfflineSummarizerConfig>(r#"{"max_request_char": 1}"#).is_err()
        );
        let round_trip: OfflineSummarizerConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).expect("serialize")).expect("parse");
        assert_eq!(round_trip, cfg);
    }

    #[tokio::test]
    async fn async_trait_matches_sync() {
        let summarizer = OfflineSummarizer::default();
        let e = event(vec![turn(Role::User, "What is the capital of Australia?")]);
        let via_trait: &dyn Summarizer = &summarizer;
        assert_eq!(via_trait.id(), "offline");
        let a = via_trait.summarize(&e).await.expect("summary");
        let b = summarizer.summarize_sync(&e).expect("summary");
        assert_eq!(a, b);
        assert_eq!(a.task, "question_answering");
    }
}
