//! Calls to remote services (an LLM, an embedding service) that are allowed to be flaky.
//!
//! Every remote call in clusterwatch goes through [`RemoteService`], which owns the policy that
//! keeps a slow or failing dependency from becoming our outage: a concurrency limit, a per-request
//! timeout, retries with jittered exponential backoff that honour `Retry-After`, and a circuit
//! breaker that stops calling a service that keeps failing. The caller decides what happens when a
//! call finally fails: the summarizer falls back to the offline one, the embedder makes the stage
//! wait. Wire formats live with their callers (`llm/`, `embed/http.rs`); this module knows only
//! HTTP and JSON.
//!
//! Wall-clock time is right here, unlike everywhere else in the pipeline: the health of a remote
//! service is a property of now, not of event time, and nothing it decides changes a cluster.

pub mod backoff;
pub mod breaker;
pub mod service;

pub use service::{RemoteError, RemoteService};

use serde::{Deserialize, Serialize};

/// How one remote service is called. Embedded as `remote` in the LLM and HTTP-embedder settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemoteSettings {
    /// Requests in flight at once, across every caller of the service. 8.
    pub max_concurrency: usize,
    /// Per-request timeout (connect, send and reading the whole body), in milliseconds. 30000.
    pub timeout_ms: u64,
    /// Attempts per call, the first included; 1 turns retries off. 4.
    pub max_attempts: u32,
    /// First backoff before a retry, in milliseconds; it doubles per attempt, with full jitter. 200.
    pub backoff_initial_ms: u64,
    /// Longest backoff, in milliseconds. 10000.
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` honoured, in milliseconds; a server asking for more gets this. 60000.
    pub retry_after_max_ms: u64,
    /// The circuit breaker watches this many most recent attempts. 20.
    pub breaker_window: usize,
    /// It opens when this share of a full window failed. 0.8: a service failing a steady 30% of
    /// calls stays in use (retries absorb it); an outage trips it within one window.
    pub breaker_failure_ratio: f64,
    /// How long the breaker stays open before one probe request may test the service, in
    /// milliseconds. 30000.
    pub breaker_open_ms: u64,
}

impl Default for RemoteSettings {
    fn default() -> Self {
        RemoteSettings {
            max_concurrency: 8,
            timeout_ms: 30_000,
            max_attempts: 4,
            backoff_initial_ms: 200,
            backoff_max_ms: 10_000,
            retry_after_max_ms: 60_000,
            breaker_window: 20,
            breaker_failure_ratio: 0.8,
            breaker_open_ms: 30_000,
        }
    }
}

/// Why a remote attempt failed; the `reason` label of `clusterwatch_remote_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// 429: the service asked us to slow down.
    RateLimited,
    /// 5xx.
    ServerError,
    /// No complete answer within the timeout.
    Timeout,
    /// Connection refused, reset, or the body was cut off.
    Transport,
    /// A 2xx whose body is not what the protocol promises: malformed JSON, a missing field, the
    /// wrong number or dimension of vectors, an answer that fails validation.
    BadResponse,
    /// 4xx other than 429: our request is wrong; retrying the same request cannot help.
    Rejected,
    /// The circuit breaker is open; no request was sent.
    BreakerOpen,
}

impl FailureClass {
    pub const ALL: [FailureClass; 7] = [
        FailureClass::RateLimited,
        FailureClass::ServerError,
        FailureClass::Timeout,
        FailureClass::Transport,
        FailureClass::BadResponse,
        FailureClass::Rejected,
        FailureClass::BreakerOpen,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::RateLimited => "rate_limited",
            FailureClass::ServerError => "server_error",
            FailureClass::Timeout => "timeout",
            FailureClass::Transport => "transport",
            FailureClass::BadResponse => "bad_response",
            FailureClass::Rejected => "rejected",
            FailureClass::BreakerOpen => "breaker_open",
        }
    }

    /// Whether another attempt at the same request may succeed.
    pub fn retriable(self) -> bool {
        !matches!(self, FailureClass::Rejected | FailureClass::BreakerOpen)
    }
}

/// Reads an API key from the environment variable `var` (empty `var`: no key). Keys never live
/// in config files, so a config can be committed and shared.
pub fn api_key_from_env(var: &str) -> anyhow::Result<Option<String>> {
    if var.is_empty() {
        return Ok(None);
    }
    match std::env::var(var) {
        Ok(key) if !key.is_empty() => Ok(Some(key)),
        _ => anyhow::bail!("the API key variable {var} is not set (set it, or set api_key_env = \"\" for a service without keys)"),
    }
}
