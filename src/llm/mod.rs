//! The LLM client: one configured language model, spoken to over either of two wire protocols,
//! shared by the summarizer, the label auditor and the cluster namer.
//!
//! clusterwatch asks the model for strict JSON and validates every answer; an answer that does not
//! validate counts as a failed attempt and is retried like a 5xx, because a model that rambles once
//! usually answers properly the next time. Resilience (limits, retries, breaker) is
//! [`crate::remote::RemoteService`]'s; this module only knows the two protocols ([`protocol`]).

pub mod protocol;

use serde::{Deserialize, Serialize};

use crate::export::Metrics;
use crate::remote::{RemoteError, RemoteService, RemoteSettings};

pub use protocol::Protocol;

/// The `[llm]` section. With `endpoint` empty no LLM is configured: summaries are offline, labels
/// are the offline keyword labels, and only the rule auditor runs.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// `anthropic` (Messages API, `POST /v1/messages`) or `openai` (chat completions,
    /// `POST /v1/chat/completions`: OpenAI, vLLM, Ollama, llama.cpp server, gateways).
    pub protocol: Protocol,
    /// Base URL without the API path, e.g. `https://api.anthropic.com` or
    /// `http://127.0.0.1:8000`. Empty: no LLM.
    pub endpoint: String,
    /// Model name sent with every request.
    pub model: String,
    /// Environment variable holding the API key (`x-api-key` for anthropic, a bearer token for
    /// openai). Empty for servers without keys. Keys are never read from config files.
    pub api_key_env: String,
    /// `anthropic-version` header. "2023-06-01".
    pub anthropic_version: String,
    /// Completion budget per request. 512.
    pub max_output_tokens: u32,
    /// Sampling temperature; 0 keeps answers as repeatable as the model allows.
    pub temperature: f32,
    /// The transcript shown to the model is cut to this many characters (the request is at the
    /// start). 12000.
    pub max_transcript_chars: usize,
    /// Run the offline scrubber over the transcript before it leaves the process, so the model
    /// (and its provider's logs) see placeholders instead of e-mails, numbers and names. The
    /// summary is scrubbed again on the way back either way. true.
    pub scrub_transcript: bool,
    /// Summaries remembered by conversation, so a redelivered conversation costs no request.
    /// 65536.
    pub cache_entries: usize,
    /// With an LLM, labels and names also pass the LLM privacy auditor (Clio's 1–5 scale). true.
    pub audit_labels: bool,
    /// With an LLM, gate-passing clusters and every hierarchy level get contrastive LLM names.
    /// true.
    pub name_clusters: bool,
    pub remote: RemoteSettings,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings {
            protocol: Protocol::Anthropic,
            endpoint: String::new(),
            model: "claude-3-5-haiku-latest".into(),
            api_key_env: "ANTHROPIC_API_KEY".into(),
            anthropic_version: "2023-06-01".into(),
            max_output_tokens: 512,
            temperature: 0.0,
            max_transcript_chars: 12_000,
            scrub_transcript: true,
            cache_entries: 65_536,
            audit_labels: true,
            name_clusters: true,
            remote: RemoteSettings::default(),
        }
    }
}

impl LlmSettings {
    pub fn configured(&self) -> bool {
        !self.endpoint.trim().is_empty()
    }
}

/// One request: a system prompt, the user message, and the start of the answer.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub system: String,
    pub user: String,
    /// The answer's opening, which the model continues (Anthropic prefill). With the OpenAI
    /// protocol, which has no portable prefill, the user message asks the model to start with it.
    pub prefill: String,
}

/// The configured model behind its protocol and resilience policy.
pub struct LlmClient {
    settings: LlmSettings,
    api_key: Option<String>,
    service: RemoteService,
    metrics: Metrics,
}

impl LlmClient {
    pub fn new(settings: &LlmSettings, metrics: Metrics) -> anyhow::Result<Self> {
        if !settings.configured() {
            anyhow::bail!("no LLM configured: set llm.endpoint");
        }
        let api_key = crate::remote::api_key_from_env(&settings.api_key_env)?;
        Ok(LlmClient {
            service: RemoteService::new("llm", settings.remote.clone(), metrics.clone())?,
            settings: settings.clone(),
            api_key,
            metrics,
        })
    }

    pub fn settings(&self) -> &LlmSettings {
        &self.settings
    }

    /// Asks `prompt` and validates the answer's text (prefill included) with `validate`; an
    /// answer that fails validation is retried like a server error.
    pub async fn ask<T>(
        &self,
        stage: &'static str,
        prompt: &Prompt,
        validate: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, RemoteError> {
        let body = protocol::request_body(&self.settings, prompt);
        let url = protocol::url(&self.settings);
        self.service
            .call(
                stage,
                |http| {
                    protocol::authorize(&self.settings, self.api_key.as_deref(), http.post(&url))
                        .json(&body)
                },
                |bytes| {
                    let reply = protocol::parse_reply(self.settings.protocol, bytes, prompt)?;
                    self.metrics
                        .llm_input_tokens
                        .with_label_values(&[stage])
                        .inc_by(reply.input_tokens);
                    self.metrics
                        .llm_output_tokens
                        .with_label_values(&[stage])
                        .inc_by(reply.output_tokens);
                    if reply.truncated {
                        return Err("the answer hit the token limit".into());
                    }
                    validate(&reply.text)
                },
            )
            .await
    }

    pub fn breaker_state(&self) -> crate::remote::breaker::BreakerState {
        self.service.breaker_state()
    }
}

/// The JSON object in a model's answer: code fences and text around the outermost braces are
/// ignored, since models add them even when told not to; what is inside must parse strictly.
pub fn json_object(text: &str) -> Result<&str, String> {
    let start = text.find('{').ok_or("the answer holds no JSON object")?;
    let end = text
        .rfind('}')
        .ok_or("the answer's JSON object is not closed")?;
    if end < start {
        return Err("the answer holds no JSON object".into());
    }
    Ok(&text[start..=end])
}
