//! Privacy gates and the label auditor (DESIGN §4).
//!
//! A cluster is shown anywhere — metrics, alerts, cluster tables, the demo — only once it holds at
//! least `min_accounts` distinct accounts and `min_conversations` conversations. Below that, only
//! totals appear. A label is shown only if the auditors pass it ([`audit`], and with an LLM
//! [`llm_auditor`]); otherwise a generic label stands in. The thresholds themselves are never
//! exported.

pub mod audit;
pub mod llm_auditor;

use crate::cluster::micro::MicroCluster;
use crate::config::PrivacySettings;

/// Decides what may be shown.
#[derive(Debug, Clone)]
pub struct PrivacyGate {
    settings: PrivacySettings,
}

impl PrivacyGate {
    pub fn new(settings: PrivacySettings) -> Self {
        PrivacyGate { settings }
    }

    /// True when `cluster` is k-anonymous enough to be shown.
    pub fn admits(&self, cluster: &MicroCluster) -> bool {
        self.admits_counts(cluster.accounts.count(), cluster.count)
    }

    /// The same test on counts (for a cluster that has already left the state).
    pub fn admits_counts(&self, accounts: usize, conversations: u64) -> bool {
        accounts >= self.settings.min_accounts && conversations >= self.settings.min_conversations
    }

    /// A lifecycle event as it may be shown: counts only for a cluster above the gate.
    pub fn redact_lifecycle(
        &self,
        event: &crate::cluster::lifecycle::LifecycleEvent,
    ) -> crate::cluster::lifecycle::LifecycleEvent {
        match (event.accounts, event.conversations) {
            (Some(a), Some(c)) if self.admits_counts(a, c) => event.clone(),
            _ => event.clone().without_counts(),
        }
    }
}

pub use audit::{audit_label, audit_name, shown_label, LabelVerdict, GENERIC_LABEL};
