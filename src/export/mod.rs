//! Export: Prometheus metrics, the HTTP endpoint serving them, the k-anonymous cluster table, and
//! the cluster explorer page with the JSON API it reads.

pub mod allocator;
pub mod clusters;
pub mod explorer;
pub mod gauges;
pub mod http;
pub mod metrics;
pub mod view;

pub use metrics::Metrics;
