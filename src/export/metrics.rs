//! Every Prometheus metric clusterwatch exports, registered in one place.
//!
//! We use the `prometheus` crate (the design card's choice; it has mature histogram and text
//! encoding support and is what most Rust services already run). Metrics live in a per-pipeline
//! [`Registry`] rather than the global default, so tests can run several pipelines in one process.
//!
//! Labels are bounded by construction: `stage`, `reason`, `surface`, `kind`, `severity`,
//! `status`, `state`. Surfaces outside the known set are folded into `other`. No cluster id,
//! account id or text is ever a label value.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::decode::DecodeError;

/// Surfaces that get their own label value; anything else is `other`.
pub const KNOWN_SURFACES: &[&str] = &["chat", "api", "computer_use", "code", "unknown"];

/// Reject reasons raised after decoding (the decoder's own are [`DecodeError::REASONS`]), and
/// the cluster role's for records on the internal topic (`src/scale/record.rs`).
pub const LATE_REJECT_REASONS: &[&str] = &[
    "summarize_failed",
    "embed_failed",
    "malformed_record",
    "wrong_vector_space",
];

/// Pipeline stages, the values of the `stage` label.
pub const STAGES: &[&str] = &[
    "source",
    "decode",
    "summarize",
    "embed",
    "cluster",
    "detect",
    "hierarchy",
    "maintain",
    "dead_letter",
    "snapshot",
    "investigation",
];

/// Values of `clusterwatch_summaries_total{kind}`.
pub const SUMMARY_KINDS: &[&str] = &["llm", "cached", "fallback", "offline"];

/// Values of `clusterwatch_live_clusters{kind}`.
pub const CLUSTER_LEVELS: &[&str] = &["micro", "topic", "domain"];

/// Every label name a clusterwatch metric may carry. Each is bounded: a fixed vocabulary (`state`
/// is the allocator's `in_use` or `free`), or (`partition`) the input topic's partition count, or
/// (`version`) one value per build. A cluster
/// id, account id or text can never be one; `tests` below holds the registry to this list.
pub const ALLOWED_LABELS: &[&str] = &[
    "stage",
    "reason",
    "surface",
    "kind",
    "severity",
    "status",
    "partition",
    "version",
    "state",
];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub events_consumed: IntCounter,
    pub events_rejected: IntCounterVec,
    pub events_clustered: IntCounterVec,
    pub events_duplicate: IntCounter,
    pub turns_capped: IntCounter,
    pub dead_letter_written: IntCounter,
    pub dead_letter_retries: IntCounter,
    pub stage_errors: IntCounterVec,
    pub stage_duration: HistogramVec,
    /// Wall-clock seconds from a Kafka message's produce timestamp to the moment the cluster
    /// stage has applied its event (measurement only: event time drives every window).
    pub event_cluster_latency: Histogram,
    pub alerts: IntCounterVec,
    pub alerts_delivered: IntCounterVec,
    pub alert_delivery_failures: IntCounterVec,
    /// Alert records a sink's endpoint refused for good (4xx other than 408/429), by `sink`.
    pub alert_deliveries_rejected: IntCounterVec,
    /// Records waiting in each sink's spool (on disk, or in memory without `alerts.spool_dir`).
    pub alert_spool_records: IntGaugeVec,
    /// Oldest records dropped because a spool reached `alerts.spool_max_records`, by `sink`.
    pub alert_spool_dropped: IntCounterVec,
    /// Spool trouble by `sink` and `reason`: `corrupt_line` (skipped on load), `write_failed`.
    pub alert_spool_errors: IntCounterVec,
    /// Records a sink's spool skipped because it already had their sequence, by `sink`.
    pub alert_records_replayed: IntCounterVec,
    /// Cluster lifecycle events by `event`: born, merged, died.
    pub cluster_lifecycle: IntCounterVec,
    /// Live clusters by `kind`: micro, topic, domain.
    pub live_clusters: IntGaugeVec,
    /// Evidence of firing alerts by `kind` and `severity` (no cluster label: privacy).
    pub open_alert_window_accounts: IntGaugeVec,
    pub open_alert_accounts_per_minute: GaugeVec,
    /// Consumer lag per assigned `partition` (bounded by the topic's partition count).
    pub kafka_consumer_lag: IntGaugeVec,
    pub surface_high_concern: IntCounterVec,
    pub surface_refusals: IntCounterVec,
    /// The launch monitor's latest judgement per watched `surface`.
    pub launch_divergence: GaugeVec,
    pub launch_new_clusters: IntGaugeVec,
    pub launch_concern_ratio: GaugeVec,
    pub launch_baseline_concern_ratio: GaugeVec,
    pub launch_refusal_ratio: GaugeVec,
    pub launch_baseline_refusal_ratio: GaugeVec,
    pub visible_clusters: IntGauge,
    pub open_alerts: IntGaugeVec,
    pub labels_refused: IntCounter,
    pub event_time_watermark: prometheus::Gauge,
    /// Unix time of the last durable snapshot (0 before the first).
    pub snapshot_last_success: prometheus::Gauge,
    pub snapshot_bytes: IntGauge,
    pub offsets_stored: IntCounter,
    pub offset_store_failures: IntCounter,
    /// Remote calls (LLM, embedding service) by `stage` and `status` (ok, failed).
    pub remote_requests: IntCounterVec,
    /// Failed remote attempts by `stage` and `reason` ([`crate::remote::FailureClass`]).
    pub remote_failures: IntCounterVec,
    pub remote_retries: IntCounterVec,
    pub remote_duration: HistogramVec,
    /// 0 closed, 1 half-open, 2 open; `stage` is the service: `llm` or `embed`.
    pub remote_breaker_state: IntGaugeVec,
    /// LLM tokens by `stage` (summarize, audit, name): input and output.
    pub llm_input_tokens: IntCounterVec,
    pub llm_output_tokens: IntCounterVec,
    /// LLM summaries by `kind`: llm, cached, fallback (offline after the LLM failed).
    pub summaries: IntCounterVec,
    /// Summaries that fell back to the offline summarizer, by `reason`.
    pub summarizer_fallbacks: IntCounterVec,
    /// Labels refused by an auditor, by `reason`.
    pub labels_audit_refused: IntCounterVec,
    /// Cluster names produced by the LLM namer, by `status` (named, failed, refused).
    pub cluster_names: IntCounterVec,
    /// Investigation records written to the restricted topic.
    pub investigation_records: IntCounter,
    /// What the heap trimmer did (`crate::heap`).
    pub heap_trims: crate::heap::TrimCounters,
    /// Per-shard readings behind the cluster-state gauges (see `export/gauges.rs`).
    pub gauge_board: super::gauges::GaugeBoard,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let stage_buckets = vec![
            0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            0.25, 0.5, 1.0, 2.5, 5.0,
        ];
        let metrics = Metrics {
            events_consumed: reg!(IntCounter::new(
                "clusterwatch_events_consumed_total",
                "Messages read from the source, valid or not."
            )),
            events_rejected: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_events_rejected_total",
                    "Messages rejected by the decoder, by reason; each went to the dead-letter topic."
                ),
                &["reason"]
            )),
            events_clustered: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_events_clustered_total",
                    "Events assigned to a cluster, by surface."
                ),
                &["surface"]
            )),
            events_duplicate: reg!(IntCounter::new(
                "clusterwatch_events_duplicate_total",
                "Redelivered conversations recognised and not counted again."
            )),
            turns_capped: reg!(IntCounter::new(
                "clusterwatch_events_turns_capped_total",
                "Events whose turn list was cut to the configured maximum."
            )),
            dead_letter_written: reg!(IntCounter::new(
                "clusterwatch_dead_letter_written_total",
                "Rejected messages delivered to the dead-letter sink."
            )),
            dead_letter_retries: reg!(IntCounter::new(
                "clusterwatch_dead_letter_retries_total",
                "Dead-letter deliveries that failed and were retried."
            )),
            stage_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_stage_errors_total",
                    "Errors inside a pipeline stage, by stage."
                ),
                &["stage"]
            )),
            stage_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "clusterwatch_stage_duration_seconds",
                    "Time spent per event in each pipeline stage (embed: per batch member)."
                )
                .buckets(stage_buckets),
                &["stage"]
            )),
            event_cluster_latency: reg!(Histogram::with_opts(
                HistogramOpts::new(
                    "clusterwatch_event_cluster_latency_seconds",
                    "Wall-clock time from a Kafka message's produce timestamp to its event being \
                     applied to cluster state (clustered events only)."
                )
                .buckets(vec![
                    0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75,
                    1.0, 1.5, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0
                ])
            )),
            alerts: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alerts_total",
                    "Alert state changes, by kind, severity and status."
                ),
                &["kind", "severity", "status"]
            )),
            alerts_delivered: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_deliveries_total",
                    "Alert records delivered, by sink."
                ),
                &["kind"]
            )),
            alert_delivery_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_delivery_failures_total",
                    "Failed alert delivery attempts, by sink."
                ),
                &["kind"]
            )),
            alert_deliveries_rejected: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_deliveries_rejected_total",
                    "Alert records dropped because the sink's endpoint refused them for good \
                     (4xx other than 408/429), by sink."
                ),
                &["kind"]
            )),
            alert_spool_records: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_alert_spool_records",
                    "Alert records queued for delivery, by sink."
                ),
                &["kind"]
            )),
            alert_spool_dropped: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_spool_dropped_total",
                    "Oldest alert records dropped undelivered because the sink's spool was full, \
                     by sink."
                ),
                &["kind"]
            )),
            alert_records_replayed: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_records_replayed_total",
                    "Alert records a sink skipped because it already had their sequence number: \
                     state changes the detectors made again while re-reading events after a \
                     restart from a snapshot. By sink."
                ),
                &["kind"]
            )),
            alert_spool_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_alert_spool_errors_total",
                    "Alert spool problems, by sink and reason: corrupt_line (skipped on load), \
                     write_failed (the record stays queued in memory)."
                ),
                &["kind", "reason"]
            )),
            cluster_lifecycle: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_cluster_lifecycle_events_total",
                    "Micro-cluster lifecycle events by kind: born, merged (into an older cluster), \
                     split, died (archived after its decayed weight faded)."
                ),
                &["kind"]
            )),
            live_clusters: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_live_clusters",
                    "Live clusters by level (kind): micro (held in memory), topic and domain (at \
                     the last hierarchy rebuild)."
                ),
                &["kind"]
            )),
            open_alert_window_accounts: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_open_alert_window_accounts",
                    "Distinct accounts in the detector window, summed over firing alerts, by kind \
                     and severity."
                ),
                &["kind", "severity"]
            )),
            open_alert_accounts_per_minute: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_open_alert_accounts_per_minute",
                    "Accounts per minute of the fastest firing alert, by kind and severity."
                ),
                &["kind", "severity"]
            )),
            kafka_consumer_lag: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_kafka_consumer_lag",
                    "Messages between the consumer's position and the high watermark, per \
                     assigned partition, from librdkafka statistics."
                ),
                &["partition"]
            )),
            surface_high_concern: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_surface_high_concern_total",
                    "Clustered events with a concern score of 3 or more, by surface."
                ),
                &["surface"]
            )),
            surface_refusals: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_surface_refusals_total",
                    "Clustered events the assistant refused, by surface."
                ),
                &["surface"]
            )),
            launch_divergence: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_divergence",
                    "Jensen-Shannon divergence (bits) of a launched surface's topic mix from its \
                     baseline, at the last evaluation."
                ),
                &["surface"]
            )),
            launch_new_clusters: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_new_clusters",
                    "Live clusters born on a launched surface since its launch."
                ),
                &["surface"]
            )),
            launch_concern_ratio: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_concern_ratio",
                    "Share of a launched surface's window with concern 3 or more."
                ),
                &["surface"]
            )),
            launch_baseline_concern_ratio: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_baseline_concern_ratio",
                    "The same share in the surface's baseline."
                ),
                &["surface"]
            )),
            launch_refusal_ratio: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_refusal_ratio",
                    "Share of a launched surface's window the assistant refused."
                ),
                &["surface"]
            )),
            launch_baseline_refusal_ratio: reg!(GaugeVec::new(
                Opts::new(
                    "clusterwatch_launch_baseline_refusal_ratio",
                    "The same share in the surface's baseline."
                ),
                &["surface"]
            )),
            visible_clusters: reg!(IntGauge::new(
                "clusterwatch_visible_clusters",
                "Live micro-clusters that pass the privacy gate."
            )),
            open_alerts: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_open_alerts",
                    "Alerts currently pending or firing, by kind and status."
                ),
                &["kind", "status"]
            )),
            labels_refused: reg!(IntCounter::new(
                "clusterwatch_labels_refused_total",
                "Cluster labels the privacy auditor refused and replaced with a generic label."
            )),
            snapshot_last_success: reg!(prometheus::Gauge::new(
                "clusterwatch_snapshot_last_success_timestamp_seconds",
                "Unix time of the last snapshot written to disk (0 before the first)."
            )),
            snapshot_bytes: reg!(IntGauge::new(
                "clusterwatch_snapshot_size_bytes",
                "Size of the last snapshot written."
            )),
            event_time_watermark: reg!(prometheus::Gauge::new(
                "clusterwatch_event_time_watermark_seconds",
                "Latest event time seen by the cluster stage, as a Unix timestamp."
            )),
            offsets_stored: reg!(IntCounter::new(
                "clusterwatch_offsets_stored_total",
                "Source offsets stored for commit after their event reached cluster state."
            )),
            offset_store_failures: reg!(IntCounter::new(
                "clusterwatch_offset_store_failures_total",
                "Offsets that could not be stored (e.g. the partition was revoked meanwhile)."
            )),
            remote_requests: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_remote_requests_total",
                    "Requests to remote services (LLM, embedding service), by stage and status."
                ),
                &["stage", "status"]
            )),
            remote_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_remote_failures_total",
                    "Failed remote attempts by stage and reason (rate_limited, server_error, \
                     timeout, transport, bad_response, rejected, breaker_open)."
                ),
                &["stage", "reason"]
            )),
            remote_retries: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_remote_retries_total",
                    "Remote attempts retried after a backoff, by stage."
                ),
                &["stage"]
            )),
            remote_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "clusterwatch_remote_request_duration_seconds",
                    "Latency of remote requests, by stage."
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
                ]),
                &["stage"]
            )),
            remote_breaker_state: reg!(IntGaugeVec::new(
                Opts::new(
                    "clusterwatch_remote_breaker_state",
                    "Circuit breaker per remote service (stage llm or embed): 0 closed, 1 \
                     half-open, 2 open."
                ),
                &["stage"]
            )),
            llm_input_tokens: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_llm_input_tokens_total",
                    "Prompt tokens sent to the LLM, by stage, as the API reports them."
                ),
                &["stage"]
            )),
            llm_output_tokens: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_llm_output_tokens_total",
                    "Completion tokens received from the LLM, by stage, as the API reports them."
                ),
                &["stage"]
            )),
            summaries: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_summaries_total",
                    "Conversations summarized, by kind: llm, cached (a redelivery), fallback \
                     (offline after the LLM failed), offline (no LLM configured)."
                ),
                &["kind"]
            )),
            summarizer_fallbacks: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_summarizer_fallbacks_total",
                    "Summaries made by the offline summarizer because the LLM could not, by \
                     reason (the last failure's class)."
                ),
                &["reason"]
            )),
            labels_audit_refused: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_label_audit_refusals_total",
                    "Labels and names refused by an auditor and replaced with a generic label, by \
                     reason."
                ),
                &["reason"]
            )),
            cluster_names: reg!(IntCounterVec::new(
                Opts::new(
                    "clusterwatch_cluster_names_total",
                    "LLM cluster naming attempts, by status: named, failed, refused (by the \
                     auditor)."
                ),
                &["status"]
            )),
            investigation_records: reg!(IntCounter::new(
                "clusterwatch_investigation_records_total",
                "Records written to the restricted investigation topic (ids never leave it)."
            )),
            heap_trims: crate::heap::TrimCounters {
                trims: reg!(IntCounter::new(
                    "clusterwatch_allocator_trims_total",
                    "Times the heap trimmer handed freed memory back to the kernel (malloc_trim) \
                     after RSS grew by memory.trim_after_growth_mib."
                )),
                seconds: reg!(prometheus::Counter::new(
                    "clusterwatch_allocator_trim_seconds_total",
                    "Wall time spent in malloc_trim."
                )),
            },
            gauge_board: Default::default(),
            registry,
        };
        let build_info = IntGaugeVec::new(
            Opts::new(
                "clusterwatch_build_info",
                "Build information; the value is always 1.",
            ),
            &["version"],
        )
        .expect("valid");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        metrics
            .registry
            .register(Box::new(build_info))
            .expect("unique");
        metrics
            .registry
            .register(Box::new(super::allocator::AllocatorCollector::new()))
            .expect("unique");
        // Pre-create every bounded label value so dashboards and rate() see zeros, not gaps.
        for reason in DecodeError::REASONS.iter().chain(LATE_REJECT_REASONS) {
            metrics.events_rejected.with_label_values(&[reason]);
        }
        for stage in STAGES {
            metrics.stage_errors.with_label_values(&[stage]);
        }
        for kind in crate::cluster::lifecycle::LifecycleKind::ALL {
            metrics
                .cluster_lifecycle
                .with_label_values(&[kind.as_str()]);
        }
        for kind in SUMMARY_KINDS {
            metrics.summaries.with_label_values(&[kind]);
        }
        for surface in KNOWN_SURFACES.iter().chain(&["other"]) {
            metrics.events_clustered.with_label_values(&[surface]);
            metrics.surface_high_concern.with_label_values(&[surface]);
            metrics.surface_refusals.with_label_values(&[surface]);
        }
        for kind in CLUSTER_LEVELS {
            metrics.live_clusters.with_label_values(&[kind]);
        }
        for kind in crate::alert::AlertKind::ALL {
            for status in ["pending", "firing"] {
                metrics
                    .open_alerts
                    .with_label_values(&[kind.as_str(), status]);
            }
        }
        metrics
    }

    /// The `surface` label value for a surface string.
    pub fn surface_label(surface: &str) -> &str {
        KNOWN_SURFACES
            .iter()
            .find(|s| **s == surface)
            .copied()
            .unwrap_or("other")
    }

    pub fn observe_stage(&self, stage: &str, seconds: f64) {
        self.stage_duration
            .with_label_values(&[stage])
            .observe(seconds);
    }

    /// Observes the event→cluster latency of an event produced at `produced_at_ms` (Unix ms, the
    /// Kafka message timestamp); `None` (a file source) observes nothing. A producer clock ahead
    /// of ours counts as zero rather than a negative latency.
    pub fn observe_event_cluster_latency(&self, produced_at_ms: Option<i64>) {
        let Some(produced_at_ms) = produced_at_ms else {
            return;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let seconds = (now_ms - produced_at_ms).max(0) as f64 / 1000.0;
        self.event_cluster_latency.observe(seconds);
    }

    /// The metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Reads a counter's current value, for summaries and tests.
    pub fn counter_sum(vec: &IntCounterVec) -> u64 {
        use prometheus::core::Collector;
        vec.collect()
            .iter()
            .flat_map(|mf| {
                mf.get_metric()
                    .iter()
                    .map(|m| m.get_counter().get_value() as u64)
            })
            .sum()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reject_reason_is_exported_as_zero_from_the_start() {
        let m = Metrics::new();
        let text = m.render();
        for reason in DecodeError::REASONS {
            assert!(
                text.contains(&format!(
                    "clusterwatch_events_rejected_total{{reason=\"{reason}\"}} 0"
                )),
                "{reason} missing"
            );
        }
        assert!(text.contains("clusterwatch_build_info{version="));
    }

    #[test]
    fn every_metric_has_the_prefix_and_only_bounded_labels() {
        let m = Metrics::new();
        m.kafka_consumer_lag.with_label_values(&["0"]).set(3);
        for family in m.registry.gather() {
            assert!(family.name().starts_with("clusterwatch_"));
            for metric in family.get_metric() {
                for label in metric.get_label() {
                    assert!(
                        ALLOWED_LABELS.contains(&label.name()),
                        "{} has label {}",
                        family.name(),
                        label.name()
                    );
                }
            }
        }
    }

    #[test]
    fn event_cluster_latency_is_observed_from_the_produce_timestamp() {
        let m = Metrics::new();
        m.observe_event_cluster_latency(None);
        assert_eq!(m.event_cluster_latency.get_sample_count(), 0);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        m.observe_event_cluster_latency(Some(now_ms - 1_500));
        // A producer clock ahead of ours is no negative latency.
        m.observe_event_cluster_latency(Some(now_ms + 60_000));
        assert_eq!(m.event_cluster_latency.get_sample_count(), 2);
        let sum = m.event_cluster_latency.get_sample_sum();
        assert!((1.5..2.5).contains(&sum), "sum {sum}");
        assert!(m
            .render()
            .contains("clusterwatch_event_cluster_latency_seconds_count 2"));
    }

    #[test]
    fn unknown_surfaces_fold_into_other() {
        assert_eq!(Metrics::surface_label("computer_use"), "computer_use");
        assert_eq!(Metrics::surface_label("a-new-thing"), "other");
    }
}
