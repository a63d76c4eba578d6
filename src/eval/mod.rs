//! Offline clustering quality: how close a clustering comes to a known ground truth.
//!
//! The live pipeline clusters traffic online, one event at a time, and nothing in it says
//! whether those clusters are any good. This module answers that offline, for the
//! `clusterwatch eval clustering` command: [`metrics`] scores a predicted labeling against a
//! ground-truth labeling with the same numbers scikit-learn reports (NMI, AMI, ARI) plus purity,
//! so results can be compared with published topic-clustering baselines; [`kmeans`] is a plain
//! batch k-means, the reference an online clusterer is expected to approach.
//!
//! Both are pure Rust and single-threaded, so a run is deterministic for a given seed.

pub mod clustering;
pub mod detection;
pub mod kmeans;
pub mod metrics;
pub mod multilingual;
pub mod online;
pub mod sharding;
