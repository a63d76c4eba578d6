//! `clusterwatch bench …`: throughput and memory figures printed by the binary itself, so they
//! are measured in a release build on the machine at hand, with a baseline in the same run.

pub mod clustering;
pub mod embed;
pub mod kafka_run;
pub mod pipeline;
pub mod soak;
pub mod summarize;
pub mod synthetic;
pub mod traffic_index;
