//! Privacy gates and the label auditor (DESIGN §4).
//!
//! A cluster is shown anywhere — metrics, alerts, cluster tables, the demo — only once it holds at
//! least `min_accounts` distinct accounts and `min_conversations` conversations. Below that, only
//! totals appear. A label is shown only if the rule auditor passes it; otherwise a generic label
//! stands in. The thresholds themselves are never exported.

use crate::cluster::micro::MicroCluster;
use crate::config::PrivacySettings;
use crate::summarize::scrub;

/// Shown in place of a label that failed the audit.
pub const GENERIC_LABEL: &str = "unlabelled cluster";

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

/// Why a label was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelVerdict {
    Pass,
    Empty,
    PersonalData,
    IdentifierLikeNumber,
    Placeholder,
}

/// The rule auditor: no personal-data pattern, no scrubber placeholder, no identifier-like number.
/// Rare proper nouns cannot reach an offline label (keywords need several accounts), but the rule
/// still refuses capitalised tokens in case a label comes from elsewhere.
pub fn audit_label(label: &str) -> LabelVerdict {
    if label.trim().is_empty() {
        return LabelVerdict::Empty;
    }
    if label.contains('[') || label.contains(']') {
        return LabelVerdict::Placeholder;
    }
    if scrub::contains_pii(label) {
        return LabelVerdict::PersonalData;
    }
    let digits = label.chars().filter(|c| c.is_ascii_digit()).count();
    if digits >= 3 {
        return LabelVerdict::IdentifierLikeNumber;
    }
    LabelVerdict::Pass
}

/// The label to show: `candidate` if it passes the audit, the generic label otherwise.
pub fn shown_label(candidate: &str) -> (String, LabelVerdict) {
    match audit_label(candidate) {
        LabelVerdict::Pass => (candidate.to_string(), LabelVerdict::Pass),
        verdict => (GENERIC_LABEL.to_string(), verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_auditor_refuses_personal_data_and_identifiers() {
        assert_eq!(audit_label("weather · forecast"), LabelVerdict::Pass);
        assert_eq!(audit_label(""), LabelVerdict::Empty);
        assert_eq!(
            audit_label("contact jane.doe@example.com"),
            LabelVerdict::PersonalData
        );
        assert_eq!(
            audit_label("order 48213"),
            LabelVerdict::IdentifierLikeNumber
        );
        assert_eq!(audit_label("call [PHONE]"), LabelVerdict::Placeholder);
        assert_eq!(shown_label("call [PHONE]").0, GENERIC_LABEL);
    }
}
