//! Alert records (contract, DESIGN §6) and the sinks that deliver them.
//!
//! A record is one state change of one alert. It carries counts, rates and an audited label —
//! never members, account ids or text.

pub mod alertmanager;
pub mod sinks;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    CoordinatedCluster,
    LaunchNewCluster,
    LaunchDrift,
    UnderEnforcement,
    OverRefusal,
}

impl AlertKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertKind::CoordinatedCluster => "coordinated_cluster",
            AlertKind::LaunchNewCluster => "launch_new_cluster",
            AlertKind::LaunchDrift => "launch_drift",
            AlertKind::UnderEnforcement => "under_enforcement",
            AlertKind::OverRefusal => "over_refusal",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    Pending,
    Firing,
    Resolved,
}

impl AlertStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            AlertStatus::Pending => "pending",
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Evidence for a coordinated-cluster alert. Aggregates only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoordinatedStats {
    pub conversations: u64,
    pub accounts: usize,
    pub orgs: usize,
    pub window_conversations: usize,
    pub window_accounts: usize,
    pub accounts_per_minute: f64,
    pub tightness: f64,
    pub tightness_z: f64,
    pub top_account_share: f64,
    pub refusal_rate: f64,
    pub mean_concern: f64,
    pub surfaces: std::collections::BTreeMap<String, u64>,
    pub languages: std::collections::BTreeMap<String, u64>,
}

/// One alert state change — the contract written by `--alerts-out` and sent to every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub alert_id: String,
    pub kind: AlertKind,
    pub status: AlertStatus,
    pub severity: Severity,
    pub cluster_id: Option<ClusterId>,
    pub surface: Option<String>,
    /// RFC 3339 event time at which the alert's evidence window starts.
    pub window_start: String,
    /// RFC 3339 event time of this state change.
    pub event_time: String,
    pub stats: CoordinatedStats,
    pub label: String,
}

impl AlertRecord {
    /// The key that identifies "the same alert" across its state changes and re-sends.
    pub fn dedup_key(&self) -> String {
        match self.cluster_id {
            Some(id) => format!("{}:cluster:{id}", self.kind.as_str()),
            None => format!(
                "{}:surface:{}",
                self.kind.as_str(),
                self.surface.as_deref().unwrap_or("all")
            ),
        }
    }
}

/// RFC 3339 with second precision in UTC, the format of every time in alert records.
pub fn format_event_time(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

/// Rounded to four decimals so records are byte-stable across platforms' last-bit float
/// differences.
pub fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}
