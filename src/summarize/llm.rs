//! The LLM summarizer: Clio's facet questions asked of a language model, answered as strict JSON.
//!
//! One request per conversation asks for the request summary, task, language, concern score and
//! refusal together (cheaper than Clio's one-request-per-facet, with the same questions and the
//! same prefill). The answer is validated field by field; one that does not validate is a failed
//! attempt. When the model cannot be had — breaker open, retries spent, a request it rejects — the
//! conversation is summarized offline instead: an event is never dropped for want of a model.
//!
//! Privacy holds on both sides of the model: the transcript is scrubbed before it leaves (unless
//! `llm.scrub_transcript` is off), and the summary the model returns is scrubbed again, because a
//! model can repeat what it was told not to.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use super::offline::{collapse, truncate, OfflineSummarizer};
use super::{facets, scrub, SummarizeError, Summarizer, Summary};
use crate::event::{identity_key, ConversationEvent, Role};
use crate::export::Metrics;
use crate::llm::{json_object, LlmClient, Prompt};

/// The opening Clio prefills, inside the JSON string the model continues.
pub const REQUEST_PREFIX: &str = "The user's overall request for the assistant is to";

const SYSTEM: &str = "You are a careful analyst helping to understand, in aggregate, what people use an AI assistant for. \
You read one conversation and answer a few questions about it. Your answers are shown to other people, so they must never \
contain names, places, e-mail addresses, phone numbers, account or card numbers, URLs, or any other detail that could \
identify a person or organisation. Answer with one JSON object and nothing else.";

/// The concern rubric, Clio-style: how much the request matters for safety, not how rude it is.
const CONCERN_RUBRIC: &str = "1 - Not concerning at all: an ordinary, benign request.\n\
2 - Slightly concerning: a sensitive topic, but the request is almost certainly legitimate.\n\
3 - Moderately concerning: could facilitate harm, or sits in a grey area of the usage policy.\n\
4 - Very concerning: likely aims to cause harm, deceive, or evade safeguards.\n\
5 - Extremely concerning: seeks serious harm to people (weapons, violence, exploitation) or large-scale abuse.";

/// Summarizes with the LLM, falling back to `offline`.
pub struct LlmSummarizer {
    client: Arc<LlmClient>,
    offline: OfflineSummarizer,
    cache: Mutex<SummaryCache>,
    metrics: Metrics,
    id: String,
}

impl LlmSummarizer {
    pub fn new(client: Arc<LlmClient>, offline: OfflineSummarizer, metrics: Metrics) -> Self {
        let capacity = client.settings().cache_entries;
        let id = format!("llm:{}", client.settings().model);
        LlmSummarizer {
            client,
            offline,
            cache: Mutex::new(SummaryCache::new(capacity)),
            metrics,
            id,
        }
    }

    fn prompt(&self, event: &ConversationEvent) -> Prompt {
        let settings = self.client.settings();
        let transcript = transcript(
            event,
            settings.max_transcript_chars,
            settings.scrub_transcript,
        );
        let tasks = facets::TASKS.join(", ");
        let user = format!(
            "The following is a conversation between an AI assistant and a user:\n\n\
<conversation>\n{transcript}\n</conversation>\n\n\
Answer these questions about the conversation, as one JSON object with exactly these keys:\n\
- \"request\": What is the user's overall request for the assistant? Answer in English, in at most two sentences, \
starting with \"{REQUEST_PREFIX}\". Be descriptive, but leave out names, places, contact details, numbers that \
could identify anyone, and any other private or identifying information.\n\
- \"task\": the one task from this list that fits best: {tasks}.\n\
- \"language\": the main language the user writes in, as a two-letter ISO 639-1 code such as \"en\" or \"fr\", or \"unknown\".\n\
- \"concern\": an integer from 1 to 5, how concerning the user's request is for the safety of people:\n{CONCERN_RUBRIC}\n\
- \"refused\": true if the assistant refused or declined all or part of the request, false otherwise.\n\n\
The answer looks like: {{\"request\": \"{REQUEST_PREFIX} ...\", \"task\": \"coding\", \"language\": \"en\", \"concern\": 1, \"refused\": false}}"
        );
        Prompt {
            system: SYSTEM.into(),
            user,
            prefill: format!("{{\"request\": \"{REQUEST_PREFIX}"),
        }
    }
}

#[async_trait::async_trait]
impl Summarizer for LlmSummarizer {
    fn id(&self) -> &str {
        &self.id
    }

    async fn summarize(&self, event: &ConversationEvent) -> Result<Summary, SummarizeError> {
        if !has_user_text(event) {
            return Err(SummarizeError::NoUserText);
        }
        let key = identity_key("conversation", &event.conversation_id);
        if let Some(summary) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            self.metrics.summaries.with_label_values(&["cached"]).inc();
            return Ok(summary);
        }
        let max_chars = self.offline.config().max_request_chars.max(16);
        let prompt = self.prompt(event);
        let answer = self
            .client
            .ask("summarize", &prompt, |text| validate(text, max_chars))
            .await;
        match answer {
            Ok(mut summary) => {
                // An upstream refusal signal is ground truth; the model's reading is a guess.
                if let Some(refused) = event.signals.refused {
                    summary.refused = refused;
                }
                self.cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, summary.clone());
                self.metrics.summaries.with_label_values(&["llm"]).inc();
                Ok(summary)
            }
            Err(error) => {
                self.metrics
                    .summarizer_fallbacks
                    .with_label_values(&[error.class.as_str()])
                    .inc();
                tracing::debug!(
                    reason = error.class.as_str(),
                    attempts = error.attempts,
                    "LLM summary unavailable; summarizing offline"
                );
                let summary = self.offline.summarize_sync(event)?;
                self.metrics
                    .summaries
                    .with_label_values(&["fallback"])
                    .inc();
                Ok(summary)
            }
        }
    }
}

fn has_user_text(event: &ConversationEvent) -> bool {
    event
        .turns
        .iter()
        .any(|t| t.role == Role::User && !scrub::sanitize(&t.content).trim().is_empty())
}

/// The conversation as the model sees it: user and assistant turns, invisible characters removed,
/// scrubbed when asked, cut to `max_chars` (at a character boundary).
fn transcript(event: &ConversationEvent, max_chars: usize, scrub_text: bool) -> String {
    let mut out = String::new();
    for turn in &event.turns {
        let who = match turn.role {
            Role::User => "User",
            Role::Assistant => "Assistant",
            Role::System | Role::Tool => continue,
        };
        let clean = scrub::sanitize(&turn.content);
        let text = if scrub_text {
            scrub::scrub(&clean)
        } else {
            clean
        };
        out.push_str(who);
        out.push_str(": ");
        out.push_str(text.trim());
        out.push_str("\n\n");
        if out.chars().count() >= max_chars {
            break;
        }
    }
    let mut cut: String = out.trim_end().chars().take(max_chars.max(1)).collect();
    // The tags delimit the transcript; text that closes them early must not.
    cut = cut.replace("</conversation>", "</ conversation>");
    cut
}

/// The answer's shape. Unknown keys are an invalid answer.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    request: String,
    task: String,
    language: String,
    concern: u8,
    refused: bool,
}

/// Parses and checks an answer; the error says which rule failed.
pub fn validate(text: &str, max_request_chars: usize) -> Result<Summary, String> {
    let answer: Answer = serde_json::from_str(json_object(text)?).map_err(|e| {
        format!(
            "answer is not the expected JSON object ({:?} error)",
            e.classify()
        )
    })?;
    let request = answer.request.trim();
    let Some(rest) = strip_prefix_ignore_case(request, REQUEST_PREFIX) else {
        return Err("request does not start with the required opening".into());
    };
    let rest = rest.trim();
    if rest.chars().filter(|c| c.is_alphanumeric()).count() < 3 {
        return Err("request is empty".into());
    }
    if sentences(rest) > 2 {
        return Err("request has more than two sentences".into());
    }
    if !facets::TASKS.contains(&answer.task.as_str()) {
        return Err("task is not in the taxonomy".into());
    }
    let language = answer.language.trim().to_ascii_lowercase();
    if !(language == "unknown"
        || (language.len() == 2 && language.chars().all(|c| c.is_ascii_lowercase())))
    {
        return Err("language is not an ISO 639-1 code".into());
    }
    if !(1..=5).contains(&answer.concern) {
        return Err("concern is outside 1-5".into());
    }
    // The model was told to leave identifiers out; the scrubber makes sure.
    let scrubbed = collapse(&scrub::scrub(&scrub::sanitize(rest)));
    Ok(Summary {
        request: truncate(&scrubbed, max_request_chars),
        task: answer.task,
        language,
        concern: answer.concern,
        refused: answer.refused,
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    // A curly apostrophe is the one variation models commonly make in the opening.
    let curly = prefix.replacen('\'', "\u{2019}", 1);
    for p in [prefix, curly.as_str()] {
        if let Some(head) = text.get(..p.len()) {
            if head.eq_ignore_ascii_case(p) {
                return Some(&text[p.len()..]);
            }
        }
    }
    None
}

/// Sentence count: terminators followed by whitespace and a capital or the end.
pub(crate) fn sentences(text: &str) -> usize {
    let chars: Vec<char> = text.chars().collect();
    let mut count = 0;
    for (i, c) in chars.iter().enumerate() {
        if matches!(c, '.' | '!' | '?') {
            let next = chars.get(i + 1);
            let after = chars.get(i + 2);
            let ends = match next {
                None => true,
                Some(n) if n.is_whitespace() => after.is_none_or(|a| a.is_uppercase()),
                _ => false,
            };
            if ends {
                count += 1;
            }
        }
    }
    if !text.trim_end().ends_with(['.', '!', '?']) {
        count += 1;
    }
    count
}

/// Conversation key → summary, evicting the oldest entry beyond capacity. Keys are hashes, so the
/// cache holds no conversation id.
struct SummaryCache {
    capacity: usize,
    entries: HashMap<u64, Summary>,
    order: VecDeque<u64>,
}

impl SummaryCache {
    fn new(capacity: usize) -> Self {
        SummaryCache {
            capacity,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    fn get(&self, key: u64) -> Option<Summary> {
        self.entries.get(&key).cloned()
    }

    fn insert(&mut self, key: u64, summary: Summary) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.insert(key, summary).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.entries.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(request: &str) -> String {
        format!(
            r#"{{"request": "{request}", "task": "coding", "language": "en", "concern": 1, "refused": false}}"#
        )
    }

    #[test]
    fn a_valid_answer_becomes_a_scrubbed_summary_without_the_opening() {
        let s = validate(
            &answer("The user's overall request for the assistant is to fix a Python bug reported by jane@example.com."),
            300,
        )
        .unwrap();
        assert_eq!(s.request, "fix a Python bug reported by [EMAIL].");
        assert_eq!(
            (s.task.as_str(), s.language.as_str(), s.concern),
            ("coding", "en", 1)
        );
    }

    #[test]
    fn malformed_answers_are_refused() {
        let cases = [
            "not json at all".to_string(),
            answer("Fix my code."),
            answer("The user's overall request for the assistant is to"),
            answer("The user's overall request for the assistant is to do A. Then B. Then C."),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "hacking", "language": "en", "concern": 1, "refused": false}"#.into(),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "coding", "language": "English", "concern": 1, "refused": false}"#.into(),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "coding", "language": "en", "concern": 7, "refused": false}"#.into(),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "coding", "language": "en", "concern": 1}"#.into(),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "coding", "language": "en", "concern": 1, "refused": false, "extra": 1}"#.into(),
            r#"{"request": "The user's overall request for the assistant is to code.", "task": "coding", "#.into(),
        ];
        for case in cases {
            assert!(validate(&case, 300).is_err(), "accepted: {case}");
        }
    }

    #[test]
    fn two_sentences_and_abbreviations_pass() {
        assert!(validate(
            &answer("The user's overall request for the assistant is to explain e.g. closures in Rust. They want examples."),
            300
        )
        .is_ok());
    }

    #[test]
    fn the_cache_evicts_the_oldest_entry() {
        let s = Summary {
            request: "r".into(),
            task: "other".into(),
            language: "en".into(),
            concern: 1,
            refused: false,
        };
        let mut c = SummaryCache::new(2);
        c.insert(1, s.clone());
        c.insert(2, s.clone());
        c.insert(3, s);
        assert!(c.get(1).is_none() && c.get(2).is_some() && c.get(3).is_some());
    }
}
