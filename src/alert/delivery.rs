//! Delivery of spooled alerts to a network sink: one worker task per sink, the retry policy, and
//! the [`QueuedSink`] handle the pipeline's alert stage talks to.
//!
//! The alert stage must never wait on Slack or PagerDuty, and an outage must not lose alerts, so
//! `deliver` only decides whether the sink wants the record ([`Admission`]) and appends it to the
//! sink's [`Spool`]; the worker takes the spool's head, hands it to the sink's [`Transport`], and
//! removes it only once the endpoint confirmed. A retryable failure (connect error, timeout, 408,
//! 429, 5xx) keeps the record and backs off with full jitter, honouring `Retry-After`; a permanent
//! one (any other 4xx: the request itself is wrong, resending cannot help) drops the record with
//! an error log and `clusterwatch_alert_deliveries_rejected_total{kind}`. The worker delivers
//! strictly in queue order and waits for each delivery before the next, so the order of every
//! alert's state changes is kept (a head-of-line block during an outage costs nothing: the
//! records behind it go to the same endpoint).
//!
//! `close` gives the worker `alerts.close_timeout_ms` to empty the queue and leaves the rest in
//! the spool for the next start.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::sinks::AlertSink;
use super::spool::{Entry, Policy, Spool};
use super::{AlertRecord, AlertStatus};
use crate::config::AlertSettings;
use crate::export::Metrics;
use crate::remote::{backoff, RemoteSettings};

/// Why a delivery attempt failed. Reasons are short and never carry record content, URLs or
/// response bodies (a Slack webhook URL is a secret; a body can echo the request).
#[derive(Debug, Clone, PartialEq)]
pub enum DeliveryError {
    /// Try the same record again after a backoff (at least `retry_after`, when the server said).
    Retryable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The endpoint refused the record for good: drop it.
    Permanent { reason: String },
}

/// The wire side of one sink.
#[async_trait::async_trait]
pub trait Transport: Send + 'static {
    /// The sink's name: its spool directory and the `sink` label of its metrics.
    fn name(&self) -> &'static str;

    /// Records sent in one request at most.
    fn max_batch(&self) -> usize {
        1
    }

    /// Sends `batch` (oldest first); `Ok` means the endpoint confirmed all of it.
    async fn send(&mut self, batch: &[Entry], spool: &SpoolInfo) -> Result<(), DeliveryError>;

    /// Interval of [`Transport::tick`], for sinks that must repeat themselves.
    fn tick_every(&self) -> Option<Duration> {
        None
    }

    /// Periodic work between deliveries (Alertmanager's re-send of firing alerts).
    async fn tick(&mut self) {}
}

/// What a transport may ask about the spool its batch came from.
pub struct SpoolInfo {
    first_seq_this_run: u64,
}

impl SpoolInfo {
    /// Whether `entry` was queued by an earlier process and replayed from disk.
    pub fn from_earlier_run(&self, entry: &Entry) -> bool {
        entry.seq < self.first_seq_this_run
    }
}

/// Decides which records a sink delivers; runs in `deliver`, in record order.
pub trait Admission: Send + 'static {
    /// `None` skips the record; `Some(renotified)` queues it.
    fn admit(&mut self, record: &AlertRecord) -> Option<bool>;
}

/// Every record.
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&mut self, _record: &AlertRecord) -> Option<bool> {
        Some(false)
    }
}

/// Firing and resolved records of alerts this sink announced: pending is skipped, a resolve is
/// delivered only if the sink took the alert's firing record (a pending alert that was withdrawn
/// also ends in a resolved record, and nobody saw it fire), and a firing record for an open alert
/// at a higher severity is marked as a re-notification (an escalation). `min_severity` skips
/// firing records below it; an alert that escalates past it is announced then.
///
/// The set of open alerts lives in memory, like the detector's state (which is not snapshotted):
/// after a restart nothing resolves an alert opened before it, so there is nothing to remember.
/// Records already in the spool are delivered regardless. Should the detector ever be
/// snapshotted, this set has to be too.
pub struct AdmitAnnounced {
    min_severity: super::Severity,
    /// Severity last announced, by dedup key of each open alert.
    open: HashMap<String, super::Severity>,
}

impl AdmitAnnounced {
    pub fn new(min_severity: super::Severity) -> Self {
        AdmitAnnounced {
            min_severity,
            open: HashMap::new(),
        }
    }
}

impl Admission for AdmitAnnounced {
    fn admit(&mut self, record: &AlertRecord) -> Option<bool> {
        match record.status {
            AlertStatus::Pending => None,
            AlertStatus::Firing => {
                if record.severity < self.min_severity {
                    return None;
                }
                let before = self.open.insert(record.dedup_key(), record.severity);
                Some(before.is_some_and(|s| record.severity > s))
            }
            AlertStatus::Resolved => self.open.remove(&record.dedup_key()).map(|_| false),
        }
    }
}

/// The spool directory of sink `name` under `settings.spool_dir`, or `None` for memory.
pub fn spool_dir(settings: &AlertSettings, name: &str) -> Option<PathBuf> {
    (!settings.spool_dir.is_empty()).then(|| PathBuf::from(&settings.spool_dir).join(name))
}

/// An alert sink that spools records and delivers them from a worker task.
pub struct QueuedSink {
    name: &'static str,
    admission: Box<dyn Admission>,
    spool: Arc<Mutex<Spool>>,
    wake: Arc<Notify>,
    closing: watch::Sender<Option<Instant>>,
    worker: Option<JoinHandle<()>>,
    close_timeout: Duration,
}

impl QueuedSink {
    /// Opens the sink's spool (replaying what an earlier process left) and starts its worker.
    pub fn start(
        transport: impl Transport,
        admission: impl Admission,
        policy: Policy,
        settings: &AlertSettings,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let name = transport.name();
        // Zeros from the start, so dashboards and rate() see the sink before its first failure.
        metrics.alerts_delivered.with_label_values(&[name]);
        metrics.alert_delivery_failures.with_label_values(&[name]);
        metrics.alert_deliveries_rejected.with_label_values(&[name]);
        metrics.alert_spool_dropped.with_label_values(&[name]);
        let dir = spool_dir(settings, name);
        if dir.is_none() {
            tracing::warn!(
                sink = name,
                "alerts.spool_dir is empty: this sink queues alerts in memory, so alerts waiting \
                 out an outage that spans a restart are lost"
            );
        }
        let spool = Spool::open(
            dir.as_deref(),
            name,
            policy,
            settings.spool_max_records,
            metrics.clone(),
        )?;
        let info = SpoolInfo {
            first_seq_this_run: spool.first_seq_this_run(),
        };
        let spool = Arc::new(Mutex::new(spool));
        let wake = Arc::new(Notify::new());
        let (closing, closing_rx) = watch::channel(None);
        let backoff = RemoteSettings {
            backoff_initial_ms: settings.backoff_initial_ms,
            backoff_max_ms: settings.backoff_max_ms,
            retry_after_max_ms: settings.retry_after_max_ms,
            ..RemoteSettings::default()
        };
        let worker = tokio::spawn(worker(
            transport,
            Worker {
                spool: spool.clone(),
                info,
                wake: wake.clone(),
                closing: closing_rx,
                backoff,
                metrics,
            },
        ));
        Ok(QueuedSink {
            name,
            admission: Box::new(admission),
            spool,
            wake,
            closing,
            worker: Some(worker),
            close_timeout: Duration::from_millis(settings.close_timeout_ms),
        })
    }

    /// Records waiting for delivery.
    pub fn queued(&self) -> usize {
        lock(&self.spool).len()
    }
}

#[async_trait::async_trait]
impl AlertSink for QueuedSink {
    async fn deliver(&mut self, record: &AlertRecord) {
        let Some(renotified) = self.admission.admit(record) else {
            return;
        };
        let record = record.clone();
        let queued_ms = chrono::Utc::now().timestamp_millis();
        let pushed = on_spool(&self.spool, move |s| s.push(record, renotified, queued_ms)).await;
        if pushed.is_none() {
            tracing::error!(
                sink = self.name,
                "alert spool task failed; alert not queued"
            );
        }
        self.wake.notify_one();
    }

    async fn close(&mut self) {
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        let deadline = Instant::now() + self.close_timeout;
        let _ = self.closing.send(Some(deadline));
        // The worker stops at the deadline by itself; the grace covers a request in flight.
        if tokio::time::timeout_at(deadline + Duration::from_secs(1), &mut worker)
            .await
            .is_err()
        {
            worker.abort();
        }
        let (left, durable) = {
            let spool = lock(&self.spool);
            (spool.len(), spool.is_durable())
        };
        if left > 0 && durable {
            tracing::warn!(
                sink = self.name,
                records = left,
                "alerts not delivered before shutdown stay in the spool for the next start"
            );
        } else if left > 0 {
            tracing::error!(
                sink = self.name,
                records = left,
                "alerts not delivered before shutdown are lost (in-memory queue: set alerts.spool_dir)"
            );
        }
    }
}

impl Drop for QueuedSink {
    fn drop(&mut self) {
        // Dropped without close (a failing pipeline): stop delivering; the spool keeps the rest.
        if let Some(worker) = self.worker.take() {
            worker.abort();
        }
    }
}

fn lock(spool: &Mutex<Spool>) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` on the spool off the async runtime (it may write and fsync); `None` if it panicked.
async fn on_spool<R: Send + 'static>(
    spool: &Arc<Mutex<Spool>>,
    f: impl FnOnce(&mut Spool) -> R + Send + 'static,
) -> Option<R> {
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || f(&mut lock(&spool)))
        .await
        .ok()
}

struct Worker {
    spool: Arc<Mutex<Spool>>,
    info: SpoolInfo,
    wake: Arc<Notify>,
    closing: watch::Receiver<Option<Instant>>,
    backoff: RemoteSettings,
    metrics: Metrics,
}

async fn worker(mut transport: impl Transport, mut w: Worker) {
    let name = transport.name();
    let tick_every = transport.tick_every();
    let mut next_tick = tick_every.map(|every| Instant::now() + every);
    let mut retry: u32 = 0;
    // After a batch is refused, its records are retried one by one so one bad record does not
    // take the others with it.
    let mut isolate = 0usize;
    loop {
        let deadline = *w.closing.borrow();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if let (Some(every), Some(at)) = (tick_every, next_tick) {
            if deadline.is_none() && Instant::now() >= at {
                transport.tick().await;
                next_tick = Some(Instant::now() + every);
            }
        }
        let max = if isolate > 0 {
            1
        } else {
            transport.max_batch().max(1)
        };
        // Off the runtime: a push may hold the lock through its fsync.
        let batch = on_spool(&w.spool, move |s| s.head(max))
            .await
            .unwrap_or_default();
        if batch.is_empty() {
            if deadline.is_some() {
                break;
            }
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                _ = w.wake.notified() => {}
                changed = w.closing.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = tokio::time::sleep_until(next_tick.unwrap_or(far)) => {}
            }
            continue;
        }
        let seqs: Vec<u64> = batch.iter().map(|e| e.seq).collect();
        let sent = match deadline {
            None => transport.send(&batch, &w.info).await,
            Some(d) => match tokio::time::timeout_at(d, transport.send(&batch, &w.info)).await {
                Ok(result) => result,
                // Cut off by shutdown: the records stay queued (they may arrive twice).
                Err(_) => break,
            },
        };
        match sent {
            Ok(()) => {
                retry = 0;
                isolate = isolate.saturating_sub(batch.len());
                w.metrics
                    .alerts_delivered
                    .with_label_values(&[name])
                    .inc_by(batch.len() as u64);
                on_spool(&w.spool, move |s| s.done(&seqs)).await;
            }
            Err(DeliveryError::Permanent { reason }) if batch.len() > 1 => {
                w.metrics
                    .alert_delivery_failures
                    .with_label_values(&[name])
                    .inc();
                tracing::warn!(
                    sink = name,
                    records = batch.len(),
                    %reason,
                    "alert batch refused; retrying its records one by one"
                );
                isolate = batch.len();
            }
            Err(DeliveryError::Permanent { reason }) => {
                retry = 0;
                isolate = isolate.saturating_sub(1);
                w.metrics
                    .alert_delivery_failures
                    .with_label_values(&[name])
                    .inc();
                w.metrics
                    .alert_deliveries_rejected
                    .with_label_values(&[name])
                    .inc();
                for entry in &batch {
                    tracing::error!(
                        sink = name,
                        %reason,
                        dedup_key = %entry.record.dedup_key(),
                        status = entry.record.status.as_str(),
                        "alert refused by the sink's endpoint; dropping it"
                    );
                }
                on_spool(&w.spool, move |s| s.done(&seqs)).await;
            }
            Err(DeliveryError::Retryable {
                reason,
                retry_after,
            }) => {
                retry = retry.saturating_add(1);
                w.metrics
                    .alert_delivery_failures
                    .with_label_values(&[name])
                    .inc();
                let delay = backoff::delay(&w.backoff, retry, retry_after);
                let queued = on_spool(&w.spool, |s| s.len()).await.unwrap_or(batch.len());
                tracing::warn!(
                    sink = name,
                    %reason,
                    attempt = retry,
                    retry_in_ms = delay.as_millis() as u64,
                    queued,
                    "alert delivery failed; keeping the alerts and retrying"
                );
                let mut until = Instant::now() + delay;
                // Sleep out the backoff, but never past a shutdown deadline.
                loop {
                    if let Some(d) = *w.closing.borrow() {
                        until = until.min(d);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => break,
                        changed = w.closing.changed() => {
                            if changed.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Posts JSON and classifies the answer: `is_success` says which statuses confirm delivery;
/// 408, 429 and 5xx are retryable (with the server's `Retry-After`), anything else permanent.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &impl serde::Serialize,
    is_success: impl Fn(reqwest::StatusCode) -> bool,
) -> Result<(), DeliveryError> {
    let response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect failed"
            } else {
                "transport error"
            };
            // Without the URL: a Slack webhook URL is a credential. The causes below it (connect,
            // DNS, TLS errors) name no path.
            let e = e.without_url();
            let mut reason = format!("{kind}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            return Err(DeliveryError::Retryable {
                reason,
                retry_after: None,
            });
        }
    };
    let status = response.status();
    if is_success(status) {
        return Ok(());
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| backoff::parse_retry_after(v, chrono::Utc::now()));
    let body = response.text().await.unwrap_or_default();
    // Slack answers errors with a short code (`invalid_payload`, `no_service`); show it when the
    // body is exactly such a code, never other bodies (they can echo the request).
    let code = body.trim();
    let reason = if !code.is_empty()
        && code.len() <= 40
        && code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    {
        format!("HTTP {status} {code}")
    } else {
        format!("HTTP {status}")
    };
    let retryable = status == reqwest::StatusCode::REQUEST_TIMEOUT
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error();
    Err(if retryable {
        DeliveryError::Retryable {
            reason,
            retry_after,
        }
    } else {
        DeliveryError::Permanent { reason }
    })
}

/// An HTTP client for a sink: its timeout covers connect, send and the whole answer.
pub fn http_client(timeout_ms: u64) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms.max(1)))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build HTTP client: {e}"))
}

/// Cuts `text` to at most `max` characters, ending in `…` when cut (Slack and PagerDuty reject
/// over-long fields rather than truncating them).
pub fn truncate_chars(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_characters() {
        assert_eq!(truncate_chars("abc", 3), "abc");
        assert_eq!(truncate_chars("äöüß", 3), "äö…");
        assert_eq!(truncate_chars("äöüß", 3).chars().count(), 3);
    }
}
