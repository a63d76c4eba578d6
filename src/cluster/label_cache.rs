//! Memo of shown keyword labels, so the cluster table does not redo c-TF-IDF and the privacy
//! audit for every visible cluster at every maintenance pass.
//!
//! A keyword label is a pure function of a cluster's reservoir sample and of the term weights
//! fitted at the last hierarchy rebuild; a topic's or domain's is fixed between rebuilds. Each
//! entry remembers the reservoir revision it was computed at, and the whole memo is dropped
//! whenever the term weights change, so a hit is exactly what a recomputation would give.
//!
//! Profiled under `bench soak` with ~3,770 live micro-clusters, rebuilding the table's labels
//! took 29 % of the process's CPU (c-TF-IDF 7 %, the regex audit of the same strings the rest);
//! most labels had not changed since the previous pass.
//!
//! It lives inside `ClusterState` (never serialised): a restored state starts with an empty memo.
//! It holds at most one entry per live cluster, topic and domain: `ClusterState::maintain` drops
//! the entries of clusters that are gone.

use std::collections::HashMap;
use std::sync::Mutex;

use super::names::{Level, NameKey};
use crate::privacy::audit::{shown_label, LabelVerdict};

#[derive(Default)]
pub struct KeywordLabels {
    /// A mutex because labels are read through `&ClusterState`; only the cluster stage's thread
    /// touches it, so it is never contended.
    entries: Mutex<HashMap<NameKey, Entry>>,
}

struct Entry {
    revision: u64,
    label: String,
    verdict: LabelVerdict,
}

impl KeywordLabels {
    /// The audited label of `key` at `revision`, from the memo when it holds that revision;
    /// otherwise `keyword()` is audited and remembered.
    pub fn shown(
        &self,
        key: NameKey,
        revision: u64,
        keyword: impl FnOnce() -> String,
    ) -> (String, LabelVerdict) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = entries.get(&key).filter(|e| e.revision == revision) {
            return (hit.label.clone(), hit.verdict);
        }
        let (label, verdict) = shown_label(&keyword());
        entries.insert(
            key,
            Entry {
                revision,
                label: label.clone(),
                verdict,
            },
        );
        (label, verdict)
    }

    /// Forgets everything: the term weights (or the topic and domain labels) changed.
    pub fn clear(&mut self) {
        self.entries
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Forgets the clusters for which `live` is false.
    pub fn retain_clusters(&mut self, live: impl Fn(u64) -> bool) {
        self.entries
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| k.level != Level::Cluster || live(k.id));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(id: u64) -> NameKey {
        NameKey {
            level: Level::Cluster,
            id,
        }
    }

    #[test]
    fn a_hit_needs_the_same_revision_and_a_clear_forgets_all() {
        let mut memo = KeywordLabels::default();
        let calls = std::cell::Cell::new(0);
        let label = |text: &'static str| {
            let calls = &calls;
            move || {
                calls.set(calls.get() + 1);
                text.to_string()
            }
        };
        assert_eq!(
            memo.shown(cluster(1), 3, label("refund · card")).0,
            "refund · card"
        );
        assert_eq!(
            memo.shown(cluster(1), 3, label("ignored")).0,
            "refund · card"
        );
        assert_eq!(calls.get(), 1);
        // A new reservoir revision recomputes, and the audit still runs on the new text.
        let (shown, verdict) = memo.shown(cluster(1), 4, label("mail jane@example.com"));
        assert_eq!(verdict, LabelVerdict::PersonalData);
        assert_ne!(shown, "mail jane@example.com");
        assert_eq!(calls.get(), 2);
        memo.clear();
        assert!(memo.is_empty());
        memo.shown(cluster(1), 4, label("weather"));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn only_dead_clusters_are_forgotten() {
        let mut memo = KeywordLabels::default();
        memo.shown(cluster(1), 0, || "a".into());
        memo.shown(cluster(2), 0, || "b".into());
        let topic = NameKey {
            level: Level::Topic,
            id: 2,
        };
        memo.shown(topic, 0, || "c".into());
        memo.retain_clusters(|id| id == 1);
        assert_eq!(memo.len(), 2);
        assert_eq!(memo.shown(topic, 0, || "other".into()).0, "c");
    }
}
