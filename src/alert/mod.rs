//! Alert records (contract, DESIGN §6) and the sinks that deliver them.
//!
//! A record is one state change of one alert. It carries counts, rates and an audited label —
//! never members, account ids or text.

pub mod alertmanager;
pub mod delivery;
pub mod kafka;
pub mod pagerduty;
pub mod sinks;
pub mod slack;
pub mod spool;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::cluster::ClusterId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

    /// Human title for headlines.
    pub fn title(&self) -> &'static str {
        match self {
            AlertKind::CoordinatedCluster => "Coordinated cluster",
            AlertKind::LaunchNewCluster => "New cluster on a launch surface",
            AlertKind::LaunchDrift => "Launch surface drift",
            AlertKind::UnderEnforcement => "Possible under-enforcement",
            AlertKind::OverRefusal => "Possible over-refusal",
        }
    }

    pub const ALL: [AlertKind; 5] = [
        AlertKind::CoordinatedCluster,
        AlertKind::LaunchNewCluster,
        AlertKind::LaunchDrift,
        AlertKind::UnderEnforcement,
        AlertKind::OverRefusal,
    ];
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
    pub const ALL: [Severity; 3] = [Severity::Info, Severity::Warning, Severity::Critical];

    pub fn as_str(&self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Evidence about one cluster: counts, rates and breakdowns, never members. Carried by
/// `coordinated_cluster`, `launch_new_cluster`, `under_enforcement` and `over_refusal` alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterEvidence {
    pub conversations: u64,
    pub accounts: usize,
    pub orgs: usize,
    /// Conversations and distinct accounts inside the detector's sliding window.
    pub window_conversations: usize,
    pub window_accounts: usize,
    pub accounts_per_minute: f64,
    /// Mean similarity of members to the centroid, and its robust z against clusters of similar
    /// size.
    pub tightness: f64,
    pub tightness_z: f64,
    /// Share of the window's members that pasted one script (the same request up to numbers,
    /// case and spacing) shared across accounts.
    pub duplication_rate: f64,
    /// Share of the window's members that filled in one template (slots varying) shared across
    /// accounts; at least the duplication rate.
    pub template_share: f64,
    /// Window joins over what the cluster's own history predicts for a window (a new cluster
    /// counts its whole history as growth).
    pub growth: f64,
    pub top_account_share: f64,
    /// Share of the accounts that were fresh (first seen within `cluster.fresh_account_secs`).
    pub fresh_account_share: f64,
    /// Micro-clusters the window figures cover: more than one when a campaign's variants (a
    /// template with slots) landed in neighbouring clusters and were judged together.
    pub clusters: usize,
    pub refusal_rate: f64,
    pub mean_concern: f64,
    /// Share of members an upstream classifier flagged.
    pub classifier_flag_rate: f64,
    pub surfaces: BTreeMap<String, u64>,
    pub languages: BTreeMap<String, u64>,
}

/// Evidence about one surface's traffic against its baseline (`launch_drift`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SurfaceEvidence {
    /// RFC 3339 launch time from the config.
    pub launch_time: String,
    /// `own` (the surface's pre-launch window) or `rest` (the other surfaces' traffic, when the
    /// surface had too little history).
    pub baseline: String,
    pub window_conversations: u64,
    pub baseline_conversations: u64,
    /// Jensen–Shannon divergence (base 2, in [0, 1]) of the surface's topic mix from the baseline.
    pub js_divergence: f64,
    pub concern_rate: f64,
    pub baseline_concern_rate: f64,
    pub refusal_rate: f64,
    pub baseline_refusal_rate: f64,
    /// Clusters born on the surface since launch that passed the privacy gate.
    pub new_clusters: u64,
}

/// What an alert carries as evidence, tagged by what it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum AlertStats {
    Cluster(ClusterEvidence),
    Surface(SurfaceEvidence),
}

impl AlertStats {
    pub fn cluster(&self) -> Option<&ClusterEvidence> {
        match self {
            AlertStats::Cluster(c) => Some(c),
            AlertStats::Surface(_) => None,
        }
    }

    pub fn surface(&self) -> Option<&SurfaceEvidence> {
        match self {
            AlertStats::Surface(s) => Some(s),
            AlertStats::Cluster(_) => None,
        }
    }
}

/// One alert state change — the contract written by `--alerts-out` and sent to every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Position of this state change in the deployment's alert stream: 1, 2, 3… in event-time
    /// order, carried across restarts by the snapshot. A record replayed after a crash has the
    /// sequence it had the first time, which is how sinks (and consumers of the alerts topic)
    /// recognise one they already have. 0 on records made outside the detectors.
    #[serde(default)]
    pub sequence: u64,
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
    pub stats: AlertStats,
    pub label: String,
}

impl AlertRecord {
    /// One short sentence for a page title or chat headline: kind, subject and the key figure.
    /// Aggregates and the audited label only.
    pub fn headline(&self) -> String {
        let subject = match (self.cluster_id, &self.surface) {
            (Some(id), _) => format!("cluster {id}"),
            (None, Some(s)) => format!("surface {s}"),
            (None, None) => "all traffic".to_string(),
        };
        let figures = match &self.stats {
            AlertStats::Cluster(c) => match self.kind {
                AlertKind::UnderEnforcement => format!(
                    "mean concern {:.1}, classifier flag rate {:.0}% over {} conversations",
                    c.mean_concern,
                    c.classifier_flag_rate * 100.0,
                    c.conversations
                ),
                AlertKind::OverRefusal => format!(
                    "refusal rate {:.0}% at mean concern {:.1} over {} conversations",
                    c.refusal_rate * 100.0,
                    c.mean_concern,
                    c.conversations
                ),
                _ => format!(
                    "{} accounts in window, {:.1} accounts/min",
                    c.window_accounts, c.accounts_per_minute
                ),
            },
            AlertStats::Surface(s) => format!(
                "topic-mix divergence {:.2} from its {} baseline",
                s.js_divergence, s.baseline
            ),
        };
        format!(
            "{} ({}) on {subject}: {figures} — \"{}\"",
            self.kind.title(),
            self.severity.as_str(),
            self.label
        )
    }

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
