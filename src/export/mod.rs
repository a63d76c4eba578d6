//! Export: Prometheus metrics, the HTTP endpoint serving them, and the k-anonymous cluster table.

pub mod clusters;
pub mod http;
pub mod metrics;
pub mod view;

pub use metrics::Metrics;
