//! Cluster stage: online micro-clustering of summary vectors.
//!
//! Each event joins its nearest live cluster when the cosine similarity reaches the join
//! threshold, and founds a new cluster otherwise. The state owns the per-cluster statistics the
//! detectors read, and the de-duplication set that makes redelivery harmless.

pub mod accounts;
pub mod clock;
pub mod ctfidf;
pub mod dedup;
pub mod distinct;
pub mod hierarchy;
pub mod hierarchy_job;
pub mod index;
pub mod label_cache;
pub mod lifecycle;
pub mod micro;
pub mod names;
pub mod partitions;
pub mod snapshot;
pub mod snapshotter;
pub mod state;
pub mod template;

/// A cluster's stable id. Assigned in arrival order, so a replay of the same input reproduces it.
pub type ClusterId = u64;

pub use micro::MicroCluster;
pub use state::{Assignment, ClusterState};
