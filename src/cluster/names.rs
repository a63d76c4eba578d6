//! LLM names for clusters, topics and domains: what the cluster stage asks for, and what it keeps.
//!
//! Naming is slow (a model call) and the cluster stage must never wait on it, so the stage only
//! *asks*: at maintenance points it builds [`NamingRequest`]s for gate-passing groups that have no
//! name yet, or have doubled in size since they were named, and hands them to the namer task
//! (`crate::naming`). Results come back on a channel and land in the [`NameBook`]. A request
//! carries only scrubbed summaries already held in the clusters' reservoirs: Clio's contrastive
//! naming shows up to 50 from inside the group and up to 50 from its nearest neighbours.
//!
//! Names are presentation only: they never change an assignment, a statistic or an alert
//! decision, so replays still agree on everything but the words shown. They are not snapshotted;
//! after a restart groups are named again.

use std::collections::{BTreeSet, HashMap};

use crate::privacy::LabelVerdict;

/// Summaries shown from inside the group, and from outside it (Clio: up to 50 each).
pub const SAMPLE_SUMMARIES: usize = 50;

/// The neighbouring groups contrastive summaries are drawn from.
pub const CONTRAST_GROUPS: usize = 8;

/// Which level of the hierarchy a name belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Cluster,
    Topic,
    Domain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameKey {
    pub level: Level,
    pub id: u64,
}

/// A request to name one group.
#[derive(Debug, Clone)]
pub struct NamingRequest {
    pub key: NameKey,
    /// Conversations in the group when asked; a name is refreshed once the group doubles.
    pub count: u64,
    /// Scrubbed summaries from the group.
    pub inside: Vec<String>,
    /// Scrubbed summaries from the nearest other groups of the same level.
    pub outside: Vec<String>,
    /// The offline c-TF-IDF label: what is audited when names are off but the LLM auditor is on.
    pub keyword_label: String,
    /// Words used by enough distinct accounts in the group that a capitalised one is not a rare
    /// proper noun (see `privacy::audit`).
    pub vocabulary: BTreeSet<String>,
}

/// What came of a request.
#[derive(Debug, Clone)]
pub enum NamingOutcome {
    Named {
        name: String,
        description: Option<String>,
    },
    /// An auditor refused the name: the generic label is shown for the group.
    Refused(LabelVerdict),
    /// The model or the auditor could not be asked; the group is asked about again later.
    Unavailable,
}

#[derive(Debug, Clone)]
pub struct NamingResult {
    pub key: NameKey,
    pub count: u64,
    pub outcome: NamingOutcome,
}

/// A group's audited name.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupName {
    /// `None`: refused by an auditor; show the generic label.
    pub name: Option<String>,
    pub description: Option<String>,
    pub named_at_count: u64,
}

/// The names received so far.
#[derive(Debug, Default)]
pub struct NameBook {
    names: HashMap<NameKey, GroupName>,
}

impl NameBook {
    pub fn get(&self, key: NameKey) -> Option<&GroupName> {
        self.names.get(&key)
    }

    /// Whether a group of `count` conversations should be (re)named.
    pub fn wants(&self, key: NameKey, count: u64) -> bool {
        match self.names.get(&key) {
            None => true,
            Some(n) => count >= n.named_at_count.saturating_mul(2),
        }
    }

    /// Records a result; `Unavailable` leaves the book as it was.
    pub fn record(&mut self, result: &NamingResult) {
        let name = match &result.outcome {
            NamingOutcome::Named { name, description } => GroupName {
                name: Some(name.clone()),
                description: description.clone(),
                named_at_count: result.count,
            },
            NamingOutcome::Refused(_) => GroupName {
                name: None,
                description: None,
                named_at_count: result.count,
            },
            NamingOutcome::Unavailable => return,
        };
        self.names.insert(result.key, name);
    }

    /// Forgets names of groups that no longer exist.
    pub fn retain(&mut self, live: impl Fn(&NameKey) -> bool) {
        self.names.retain(|k, _| live(k));
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_is_renamed_once_it_doubles_and_unavailable_changes_nothing() {
        let key = NameKey {
            level: Level::Cluster,
            id: 7,
        };
        let mut book = NameBook::default();
        assert!(book.wants(key, 50));
        book.record(&NamingResult {
            key,
            count: 50,
            outcome: NamingOutcome::Unavailable,
        });
        assert!(book.wants(key, 50));
        book.record(&NamingResult {
            key,
            count: 50,
            outcome: NamingOutcome::Named {
                name: "Plan a trip".into(),
                description: None,
            },
        });
        assert!(!book.wants(key, 99));
        assert!(book.wants(key, 100));
        book.retain(|k| k.id != 7);
        assert!(book.is_empty());
    }
}
