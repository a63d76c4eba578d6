//! The two wire protocols: Anthropic Messages and OpenAI-compatible chat completions.
//!
//! Only the parts clusterwatch uses are modelled; unknown response fields are ignored, since both
//! APIs add fields over time, while a missing required field is a malformed answer.

use serde::{Deserialize, Serialize};

use super::{LlmSettings, Prompt};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// `POST /v1/messages` with `x-api-key` and `anthropic-version`.
    #[default]
    Anthropic,
    /// `POST /v1/chat/completions` with a bearer token.
    Openai,
}

/// The model's answer and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The full answer: the prefill followed by the model's continuation.
    pub text: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// The model stopped at the token limit, so the answer is incomplete.
    pub truncated: bool,
}

pub fn url(settings: &LlmSettings) -> String {
    let base = settings.endpoint.trim_end_matches('/');
    match settings.protocol {
        Protocol::Anthropic => format!("{base}/v1/messages"),
        Protocol::Openai => format!("{base}/v1/chat/completions"),
    }
}

pub fn authorize(
    settings: &LlmSettings,
    api_key: Option<&str>,
    request: reqwest::RequestBuilder,
) -> reqwest::RequestBuilder {
    match settings.protocol {
        Protocol::Anthropic => {
            let request = request.header("anthropic-version", &settings.anthropic_version);
            match api_key {
                Some(key) => request.header("x-api-key", key),
                None => request,
            }
        }
        Protocol::Openai => match api_key {
            Some(key) => request.bearer_auth(key),
            None => request,
        },
    }
}

pub fn request_body(settings: &LlmSettings, prompt: &Prompt) -> serde_json::Value {
    match settings.protocol {
        Protocol::Anthropic => serde_json::json!({
            "model": settings.model,
            "max_tokens": settings.max_output_tokens,
            "temperature": settings.temperature,
            "system": prompt.system,
            "messages": [
                {"role": "user", "content": prompt.user},
                {"role": "assistant", "content": prompt.prefill},
            ],
        }),
        Protocol::Openai => serde_json::json!({
            "model": settings.model,
            "max_tokens": settings.max_output_tokens,
            "temperature": settings.temperature,
            "messages": [
                {"role": "system", "content": prompt.system},
                {"role": "user", "content": format!(
                    "{}\n\nBegin your answer with exactly this text and continue it:\n{}",
                    prompt.user, prompt.prefill
                )},
            ],
        }),
    }
}

#[derive(Deserialize)]
struct AnthropicResponse {
    content: Vec<AnthropicBlock>,
    #[serde(default)]
    stop_reason: Option<String>,
    #[serde(default)]
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct AnthropicBlock {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
}

#[derive(Deserialize)]
struct OpenaiResponse {
    choices: Vec<OpenaiChoice>,
    #[serde(default)]
    usage: Option<OpenaiUsage>,
}

#[derive(Deserialize)]
struct OpenaiChoice {
    message: OpenaiMessage,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct OpenaiMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct OpenaiUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// Parses a 2xx body. The error names what was wrong, never the body (it may echo the prompt).
pub fn parse_reply(protocol: Protocol, body: &[u8], prompt: &Prompt) -> Result<Reply, String> {
    match protocol {
        Protocol::Anthropic => {
            let r: AnthropicResponse = serde_json::from_slice(body)
                .map_err(|e| format!("malformed Messages response: {}", e.classify_str()))?;
            let continuation: String = r
                .content
                .iter()
                .filter(|b| b.kind == "text")
                .filter_map(|b| b.text.as_deref())
                .collect();
            let usage = r.usage.unwrap_or(AnthropicUsage {
                input_tokens: 0,
                output_tokens: 0,
            });
            Ok(Reply {
                text: format!("{}{}", prompt.prefill, continuation),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                truncated: r.stop_reason.as_deref() == Some("max_tokens"),
            })
        }
        Protocol::Openai => {
            let r: OpenaiResponse = serde_json::from_slice(body)
                .map_err(|e| format!("malformed chat completion: {}", e.classify_str()))?;
            let choice = r
                .choices
                .into_iter()
                .next()
                .ok_or("chat completion without choices")?;
            let content = choice.message.content.unwrap_or_default();
            // Servers that honour the instruction repeat the prefill; others (and those that
            // continue a trailing assistant turn) start after it.
            let trimmed = content.trim_start();
            let complete = trimmed.starts_with(prompt.prefill.trim_start())
                || trimmed.starts_with('{')
                || trimmed.starts_with("```");
            let text = if complete {
                trimmed.to_string()
            } else {
                format!("{}{}", prompt.prefill, content)
            };
            let usage = r.usage.unwrap_or(OpenaiUsage {
                prompt_tokens: 0,
                completion_tokens: 0,
            });
            Ok(Reply {
                text,
                input_tokens: usage.prompt_tokens,
                output_tokens: usage.completion_tokens,
                truncated: choice.finish_reason.as_deref() == Some("length"),
            })
        }
    }
}

/// A serde_json error's category and position, without the offending text.
trait ClassifyStr {
    fn classify_str(&self) -> String;
}

impl ClassifyStr for serde_json::Error {
    fn classify_str(&self) -> String {
        format!(
            "{:?} error at line {} column {}",
            self.classify(),
            self.line(),
            self.column()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt() -> Prompt {
        Prompt {
            system: "s".into(),
            user: "u".into(),
            prefill: "{\"a\": \"The".into(),
        }
    }

    #[test]
    fn anthropic_replies_continue_the_prefill_and_report_usage() {
        let body = br#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":" end\"}"}],"stop_reason":"end_turn","usage":{"input_tokens":12,"output_tokens":3}}"#;
        let r = parse_reply(Protocol::Anthropic, body, &prompt()).unwrap();
        assert_eq!(r.text, "{\"a\": \"The end\"}");
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.truncated),
            (12, 3, false)
        );
        let cut = br#"{"content":[{"type":"text","text":" en"}],"stop_reason":"max_tokens"}"#;
        assert!(
            parse_reply(Protocol::Anthropic, cut, &prompt())
                .unwrap()
                .truncated
        );
        assert!(parse_reply(Protocol::Anthropic, b"{\"content\": [", &prompt()).is_err());
    }

    #[test]
    fn openai_replies_with_or_without_the_prefill_repeated() {
        let repeated = br#"{"choices":[{"message":{"role":"assistant","content":"{\"a\": \"The end\"}"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#;
        let r = parse_reply(Protocol::Openai, repeated, &prompt()).unwrap();
        assert_eq!(r.text, "{\"a\": \"The end\"}");
        assert_eq!((r.input_tokens, r.output_tokens), (5, 2));
        let continued =
            br#"{"choices":[{"message":{"content":" end\"}"},"finish_reason":"length"}]}"#;
        let r = parse_reply(Protocol::Openai, continued, &prompt()).unwrap();
        assert_eq!(r.text, "{\"a\": \"The end\"}");
        assert!(r.truncated);
        assert!(parse_reply(Protocol::Openai, br#"{"choices":[]}"#, &prompt()).is_err());
    }
}
