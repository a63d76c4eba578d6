//! [`RemoteService`]: one remote dependency, called with a concurrency limit, timeouts, retries
//! and a circuit breaker, and measured.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::breaker::{CircuitBreaker, TripPolicy};
use super::{backoff, FailureClass, RemoteSettings};
use crate::export::Metrics;

/// A call that failed for good: the last attempt's class and detail.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} after {attempts} attempt(s): {detail}", class.as_str())]
pub struct RemoteError {
    pub class: FailureClass,
    pub detail: String,
    pub attempts: u32,
}

/// One remote service (an LLM endpoint, an embedding endpoint). Cheap to share behind an `Arc`.
pub struct RemoteService {
    /// The `stage` label of the breaker gauge: `llm` or `embed`.
    name: &'static str,
    http: reqwest::Client,
    settings: RemoteSettings,
    permits: Arc<Semaphore>,
    breaker: CircuitBreaker,
    metrics: Metrics,
}

/// What one attempt produced, before parsing.
struct Answer {
    status: reqwest::StatusCode,
    retry_after: Option<Duration>,
    body: Vec<u8>,
}

impl RemoteService {
    pub fn new(
        name: &'static str,
        settings: RemoteSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(settings.timeout_ms.clamp(1, 10_000)))
            .user_agent(concat!("clusterwatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let breaker = CircuitBreaker::new(TripPolicy {
            window: settings.breaker_window,
            failure_ratio: settings.breaker_failure_ratio,
            open_for: Duration::from_millis(settings.breaker_open_ms),
        });
        metrics
            .remote_breaker_state
            .with_label_values(&[name])
            .set(0);
        Ok(RemoteService {
            name,
            http,
            permits: Arc::new(Semaphore::new(settings.max_concurrency.max(1))),
            settings,
            breaker,
            metrics,
        })
    }

    /// Sends the request `build` makes (called again for each attempt) and parses a 2xx body with
    /// `parse`; a parse error is a [`FailureClass::BadResponse`] and is retried like a 5xx.
    /// `stage` labels the metrics: `summarize`, `audit`, `name` or `embed`.
    pub async fn call<T>(
        &self,
        stage: &'static str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, RemoteError> {
        let attempts = self.settings.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (class, detail, retry_after) = match self.attempt(stage, &build, &parse).await {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            self.metrics
                .remote_failures
                .with_label_values(&[stage, class.as_str()])
                .inc();
            tracing::debug!(stage, reason = class.as_str(), attempt, %detail, "remote attempt failed");
            if !class.retriable() || attempt >= attempts {
                return Err(RemoteError {
                    class,
                    detail,
                    attempts: attempt,
                });
            }
            self.metrics
                .remote_retries
                .with_label_values(&[stage])
                .inc();
            tokio::time::sleep(backoff::delay(&self.settings, attempt, retry_after)).await;
        }
    }

    /// One attempt: breaker, permit, request, classification.
    async fn attempt<T>(
        &self,
        stage: &'static str,
        build: &impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: &impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, (FailureClass, String, Option<Duration>)> {
        let Some(admission) = self.breaker.admit() else {
            self.set_breaker_gauge();
            return Err((
                FailureClass::BreakerOpen,
                "circuit breaker open".into(),
                None,
            ));
        };
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| (FailureClass::Transport, "service closed".to_string(), None))?;
        let started = Instant::now();
        let answer = tokio::time::timeout(
            Duration::from_millis(self.settings.timeout_ms.max(1)),
            self.send(build(&self.http)),
        )
        .await;
        self.metrics
            .remote_duration
            .with_label_values(&[stage])
            .observe(started.elapsed().as_secs_f64());
        let result = match answer {
            Err(_) => Err((
                FailureClass::Timeout,
                format!("no answer within {} ms", self.settings.timeout_ms),
                None,
            )),
            Ok(Err(e)) if e.is_timeout() => Err((FailureClass::Timeout, e.to_string(), None)),
            Ok(Err(e)) => Err((FailureClass::Transport, transport_detail(&e), None)),
            Ok(Ok(answer)) => classify(answer, parse),
        };
        // A 4xx means the service is up and answering; only its health moves the breaker.
        let healthy = match &result {
            Ok(_) => true,
            Err((class, _, _)) => *class == FailureClass::Rejected,
        };
        self.breaker.record(admission, healthy);
        self.set_breaker_gauge();
        self.metrics
            .remote_requests
            .with_label_values(&[stage, if result.is_ok() { "ok" } else { "failed" }])
            .inc();
        result
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
        let response = request.send().await?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| backoff::parse_retry_after(v, chrono::Utc::now()));
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    fn set_breaker_gauge(&self) {
        self.metrics
            .remote_breaker_state
            .with_label_values(&[self.name])
            .set(self.breaker.state().gauge_value());
    }

    /// The breaker's position (for tests and logs).
    pub fn breaker_state(&self) -> super::breaker::BreakerState {
        self.breaker.state()
    }
}

fn classify<T>(
    answer: Answer,
    parse: &impl Fn(&[u8]) -> Result<T, String>,
) -> Result<T, (FailureClass, String, Option<Duration>)> {
    let status = answer.status;
    if status.is_success() {
        return parse(&answer.body).map_err(|e| (FailureClass::BadResponse, e, None));
    }
    // Error bodies can echo our request (and so conversation text): never keep more than the
    // status line in a detail that may be logged.
    let detail = format!("HTTP {status}");
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Err((FailureClass::RateLimited, detail, answer.retry_after))
    } else if status.is_server_error() {
        Err((FailureClass::ServerError, detail, answer.retry_after))
    } else if status == reqwest::StatusCode::REQUEST_TIMEOUT {
        Err((FailureClass::Timeout, detail, None))
    } else {
        Err((FailureClass::Rejected, detail, None))
    }
}

/// A transport error's description. Keys travel in headers, never in URLs, so the URL may show.
fn transport_detail(e: &reqwest::Error) -> String {
    let kind = if e.is_connect() {
        "connect failed"
    } else if e.is_body() || e.is_decode() {
        "body cut off"
    } else if e.is_request() {
        "request failed"
    } else {
        "transport error"
    };
    format!("{kind}: {e}")
}
