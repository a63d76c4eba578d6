//! The namer: a task beside the pipeline that turns [`NamingRequest`]s into audited names.
//!
//! For each request it asks the LLM for a contrastive name (when `llm.name_clusters`), or takes
//! the offline keyword label (when only the LLM auditor is on), then runs the rule auditor with
//! the group's vocabulary and, when `llm.audit_labels`, the LLM auditor. A refusal becomes the
//! generic label and is counted; an unreachable model leaves the group unnamed, to be asked about
//! again at a later maintenance point. The cluster stage never waits on any of it: requests go
//! out with `try_send` and results come back on a channel it drains between events.

pub mod prompt;

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::cluster::names::{NamingOutcome, NamingRequest, NamingResult};
use crate::export::Metrics;
use crate::llm::LlmClient;
use crate::privacy::llm_auditor::LlmAuditor;
use crate::privacy::{audit_name, LabelVerdict};

/// Requests queued for the namer; beyond this the cluster stage asks again next time.
pub const QUEUE: usize = 256;
/// Requests the namer works on at once (each is one or two model calls).
const CONCURRENCY: usize = 4;

/// The cluster stage's end of the namer.
pub struct NamerHandle {
    pub requests: mpsc::Sender<NamingRequest>,
    pub results: mpsc::Receiver<NamingResult>,
}

/// What the namer does with a request.
#[derive(Clone)]
pub struct Namer {
    client: Arc<LlmClient>,
    auditor: Option<Arc<LlmAuditor>>,
    name_with_llm: bool,
    metrics: Metrics,
}

impl Namer {
    /// `None` when the LLM is configured for neither names nor audits.
    pub fn new(client: Arc<LlmClient>, metrics: Metrics) -> Option<Self> {
        let settings = client.settings().clone();
        if !settings.name_clusters && !settings.audit_labels {
            return None;
        }
        Some(Namer {
            auditor: settings
                .audit_labels
                .then(|| Arc::new(LlmAuditor::new(client.clone()))),
            name_with_llm: settings.name_clusters,
            client,
            metrics,
        })
    }

    /// Starts the namer on the current runtime; it stops when the request sender is dropped.
    pub fn spawn(self) -> (NamerHandle, tokio::task::JoinHandle<()>) {
        let (request_tx, request_rx) = mpsc::channel::<NamingRequest>(QUEUE);
        let (result_tx, result_rx) = mpsc::channel::<NamingResult>(QUEUE);
        let task = tokio::spawn(async move {
            let mut results = futures::stream::poll_fn({
                let mut rx = request_rx;
                move |cx| rx.poll_recv(cx)
            })
            .map(|request| {
                let namer = self.clone();
                async move { namer.name(request).await }
            })
            .buffer_unordered(CONCURRENCY);
            while let Some(result) = results.next().await {
                if result_tx.send(result).await.is_err() {
                    break;
                }
            }
        });
        (
            NamerHandle {
                requests: request_tx,
                results: result_rx,
            },
            task,
        )
    }

    /// Names and audits one group.
    pub async fn name(&self, request: NamingRequest) -> NamingResult {
        let outcome = self.outcome(&request).await;
        let status = match &outcome {
            NamingOutcome::Named { .. } => "named",
            NamingOutcome::Refused(verdict) => {
                self.metrics
                    .labels_audit_refused
                    .with_label_values(&[verdict.as_str()])
                    .inc();
                "refused"
            }
            NamingOutcome::Unavailable => "failed",
        };
        self.metrics
            .cluster_names
            .with_label_values(&[status])
            .inc();
        NamingResult {
            key: request.key,
            count: request.count,
            outcome,
        }
    }

    async fn outcome(&self, request: &NamingRequest) -> NamingOutcome {
        let (name, description) = if self.name_with_llm {
            match self
                .client
                .ask("name", &prompt::prompt(request), prompt::validate)
                .await
            {
                Ok((name, description)) => (name, Some(description)),
                Err(e) => {
                    tracing::debug!(
                        reason = e.class.as_str(),
                        "cluster naming failed; will ask again"
                    );
                    return NamingOutcome::Unavailable;
                }
            }
        } else {
            (request.keyword_label.clone(), None)
        };
        let common = |w: &str| request.vocabulary.contains(w);
        for text in std::iter::once(&name).chain(description.as_ref()) {
            let verdict = audit_name(text, &common);
            if verdict != LabelVerdict::Pass {
                return NamingOutcome::Refused(verdict);
            }
        }
        if let Some(auditor) = &self.auditor {
            let shown = match &description {
                Some(d) => format!("{name}\n{d}"),
                None => name.clone(),
            };
            match auditor.passes(&shown).await {
                Ok(true) => {}
                Ok(false) => return NamingOutcome::Refused(LabelVerdict::LlmAuditor),
                Err(e) => {
                    tracing::debug!(
                        reason = e.class.as_str(),
                        "LLM auditor unavailable; the label waits"
                    );
                    return NamingOutcome::Unavailable;
                }
            }
        }
        NamingOutcome::Named { name, description }
    }
}
