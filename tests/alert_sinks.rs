//! The network alert sinks against endpoints that speak the real wire formats: in-process axum
//! servers that validate requests the way Slack's incoming webhooks, PagerDuty's Events API v2
//! and Alertmanager's v2 API do, and a real Kafka broker for the alerts topic.
//!
//! Beyond payload shapes, these tests hold the sinks to their delivery promise: during an outage
//! (the endpoint answers 503, or nothing listens) alerts pile up in the on-disk spool; once the
//! endpoint is back every state change arrives exactly once and in order, also when the sink was
//! dropped mid-outage and a new one started on the same spool directory.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use clusterwatch::alert::alertmanager::AlertmanagerSink;
use clusterwatch::alert::kafka::KafkaAlertSink;
use clusterwatch::alert::pagerduty::PagerDutySink;
use clusterwatch::alert::sinks::AlertSink;
use clusterwatch::alert::slack::SlackSink;
use clusterwatch::alert::{
    spool, AlertKind, AlertRecord, AlertStats, AlertStatus, ClusterEvidence, Severity,
    SurfaceEvidence,
};
use clusterwatch::config::AlertSettings;
use clusterwatch::export::Metrics;
use common::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Records and settings

fn cluster_record(
    kind: AlertKind,
    cluster: u64,
    status: AlertStatus,
    severity: Severity,
) -> AlertRecord {
    AlertRecord {
        sequence: 0,
        alert_id: format!("{}-{cluster}-1700000000", kind.as_str()),
        kind,
        status,
        severity,
        cluster_id: Some(cluster),
        surface: Some("chat".into()),
        window_start: "2026-11-27T10:00:00Z".into(),
        event_time: "2026-11-27T10:10:00Z".into(),
        stats: AlertStats::Cluster(ClusterEvidence {
            conversations: 120,
            accounts: 41,
            orgs: 3,
            window_conversations: 90,
            window_accounts: 40,
            accounts_per_minute: 9.5,
            tightness: 0.91,
            tightness_z: 4.2,
            duplication_rate: 0.8,
            template_share: 0.8,
            growth: 12.0,
            top_account_share: 0.05,
            fresh_account_share: 1.0,
            clusters: 1,
            refusal_rate: 0.1,
            mean_concern: 3.5,
            classifier_flag_rate: 0.4,
            surfaces: BTreeMap::from([("chat".to_string(), 120)]),
            languages: BTreeMap::from([("en".to_string(), 120)]),
        }),
        // Audited labels may carry Slack control characters; they must arrive escaped.
        label: "bulk sms verification codes <urgent>".into(),
    }
}

fn coordinated(cluster: u64, status: AlertStatus, severity: Severity) -> AlertRecord {
    cluster_record(AlertKind::CoordinatedCluster, cluster, status, severity)
}

fn surface_record(status: AlertStatus, severity: Severity) -> AlertRecord {
    AlertRecord {
        sequence: 0,
        alert_id: "launch_drift-computer_use-1700000000".into(),
        kind: AlertKind::LaunchDrift,
        status,
        severity,
        cluster_id: None,
        surface: Some("computer_use".into()),
        window_start: "2026-11-27T09:00:00Z".into(),
        event_time: "2026-11-27T10:00:00Z".into(),
        stats: AlertStats::Surface(SurfaceEvidence {
            launch_time: "2026-11-27T08:00:00Z".into(),
            baseline: "own".into(),
            window_conversations: 800,
            baseline_conversations: 5000,
            js_divergence: 0.41,
            concern_rate: 0.2,
            baseline_concern_rate: 0.05,
            refusal_rate: 0.1,
            baseline_refusal_rate: 0.08,
            new_clusters: 4,
        }),
        label: "surface topic mix".into(),
    }
}

/// Fast retries so outages in tests last seconds.
fn settings(spool_dir: Option<&Path>) -> AlertSettings {
    AlertSettings {
        spool_dir: spool_dir
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
        backoff_initial_ms: 20,
        backoff_max_ms: 200,
        close_timeout_ms: 5_000,
        ..AlertSettings::default()
    }
}

fn spool_gauge(metrics: &Metrics, sink: &str) -> i64 {
    metrics.alert_spool_records.with_label_values(&[sink]).get()
}

fn failures(metrics: &Metrics, sink: &str) -> u64 {
    metrics
        .alert_delivery_failures
        .with_label_values(&[sink])
        .get()
}

/// Sets a uniquely named variable (tests share the process environment) and returns its name.
fn secret_env(prefix: &str, value: &str) -> String {
    let name = unique(prefix).replace('-', "_").to_uppercase();
    std::env::set_var(&name, value);
    name
}

/// No account id or raw text in anything a sink sent.
fn assert_no_identities(payloads: &[Value]) {
    let text = serde_json::to_string(payloads).unwrap();
    for needle in ["acct-", "account_id", "conversation_id", "org_id", "turns"] {
        assert!(!text.contains(needle), "{needle} in a sink payload");
    }
}

// ---------------------------------------------------------------------------------------------
// Mock endpoints

/// How a mock answers right now.
#[derive(Clone, Debug)]
enum Mode {
    Up,
    /// Every request gets this status (with `Retry-After` when set).
    Failing(u16, Option<u64>),
    /// The next request gets 429 with `Retry-After: 1`, then the mock is up.
    RateLimitOnce,
}

/// Requests a mock received: accepted payloads in arrival order, and the time of every attempt.
#[derive(Clone)]
struct Mock {
    mode: Arc<Mutex<Mode>>,
    accepted: Arc<Mutex<Vec<Value>>>,
    attempts: Arc<Mutex<Vec<Instant>>>,
    /// Payloads whose `dedup_key` is in here are refused with 400 (a permanent failure).
    refuse_keys: Arc<Mutex<Vec<String>>>,
    validator: fn(&HeaderMap, &Value) -> Result<(), String>,
    success: fn(&Value) -> Response,
}

impl Mock {
    fn new(
        validator: fn(&HeaderMap, &Value) -> Result<(), String>,
        success: fn(&Value) -> Response,
    ) -> Self {
        Mock {
            mode: Arc::new(Mutex::new(Mode::Up)),
            accepted: Arc::default(),
            attempts: Arc::default(),
            refuse_keys: Arc::default(),
            validator,
            success,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn accepted(&self) -> Vec<Value> {
        self.accepted.lock().unwrap().clone()
    }

    fn attempts(&self) -> usize {
        self.attempts.lock().unwrap().len()
    }

    /// Serves `path` on `addr` (port 0: any) on this test's runtime.
    async fn serve(&self, addr: &str, path: &str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind mock");
        let bound = listener.local_addr().unwrap();
        let app = Router::new()
            .route(path, post(handle))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        bound
    }
}

async fn handle(State(mock): State<Mock>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    mock.attempts.lock().unwrap().push(Instant::now());
    let mode = mock.mode.lock().unwrap().clone();
    match mode {
        Mode::Up => {}
        Mode::Failing(code, retry_after) => {
            let mut response =
                (StatusCode::from_u16(code).unwrap(), "rollup_error").into_response();
            if let Some(secs) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", secs.to_string().parse().unwrap());
            }
            return response;
        }
        Mode::RateLimitOnce => {
            mock.set(Mode::Up);
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                "rate_limited",
            )
                .into_response();
        }
    }
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "invalid_payload").into_response();
    };
    if let Err(e) = (mock.validator)(&headers, &value) {
        return (StatusCode::BAD_REQUEST, e).into_response();
    }
    let key = value["dedup_key"].as_str().unwrap_or_default().to_string();
    if mock.refuse_keys.lock().unwrap().contains(&key) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"status": "invalid event", "message": "Event object is invalid"})),
        )
            .into_response();
    }
    mock.accepted.lock().unwrap().push(value.clone());
    (mock.success)(&value)
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
}

fn chars(v: &Value) -> usize {
    v.as_str().map(|s| s.chars().count()).unwrap_or(usize::MAX)
}

/// What Slack checks of an incoming-webhook message (Block Kit limits); errors are Slack's codes.
fn slack_validate(headers: &HeaderMap, body: &Value) -> Result<(), String> {
    if !is_json(headers) {
        return Err("invalid_payload".into());
    }
    if !body["text"].is_string() || chars(&body["text"]) == 0 {
        return Err("no_text".into());
    }
    let blocks = body["blocks"].as_array().ok_or("invalid_blocks")?;
    if blocks.is_empty() || blocks.len() > 50 {
        return Err("invalid_blocks".into());
    }
    let text_object = |t: &Value, max: usize| {
        matches!(t["type"].as_str(), Some("plain_text" | "mrkdwn")) && chars(&t["text"]) <= max
    };
    for block in blocks {
        let ok = match block["type"].as_str() {
            Some("header") => {
                block["text"]["type"] == "plain_text" && chars(&block["text"]["text"]) <= 150
            }
            Some("section") => {
                let text_ok = block.get("text").is_none_or(|t| text_object(t, 3000));
                let fields_ok = block.get("fields").is_none_or(|f| {
                    f.as_array().is_some_and(|f| {
                        f.len() <= 10 && f.iter().all(|field| text_object(field, 2000))
                    })
                });
                (block.get("text").is_some() || block.get("fields").is_some())
                    && text_ok
                    && fields_ok
            }
            Some("context") => block["elements"].as_array().is_some_and(|e| {
                !e.is_empty() && e.len() <= 10 && e.iter().all(|el| text_object(el, 3000))
            }),
            Some("divider") => true,
            _ => false,
        };
        if !ok {
            return Err("invalid_blocks".into());
        }
    }
    Ok(())
}

fn slack_ok(_: &Value) -> Response {
    (StatusCode::OK, "ok").into_response()
}

const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";

/// What PagerDuty's Events API v2 checks of an event.
fn pagerduty_validate(headers: &HeaderMap, body: &Value) -> Result<(), String> {
    if !is_json(headers) {
        return Err("Unsupported content type".into());
    }
    if body["routing_key"].as_str().map(str::len) != Some(32) {
        return Err("Length of 'routing_key' is incorrect (should be 32 characters)".into());
    }
    let action = body["event_action"].as_str().unwrap_or_default();
    if !matches!(action, "trigger" | "acknowledge" | "resolve") {
        return Err("'event_action' is invalid".into());
    }
    let dedup = chars(&body["dedup_key"]);
    if action != "trigger" && (dedup == 0 || dedup == usize::MAX) {
        return Err("'dedup_key' is missing".into());
    }
    if dedup != usize::MAX && dedup > 255 {
        return Err("'dedup_key' is too long".into());
    }
    if action == "trigger" {
        let p = &body["payload"];
        if chars(&p["summary"]) == 0 || chars(&p["summary"]) > 1024 {
            return Err("'payload.summary' is missing or too long".into());
        }
        if chars(&p["source"]) == 0 || chars(&p["source"]) > 255 {
            return Err("'payload.source' is missing".into());
        }
        if !matches!(
            p["severity"].as_str(),
            Some("critical" | "error" | "warning" | "info")
        ) {
            return Err("'payload.severity' is invalid".into());
        }
    }
    Ok(())
}

fn pagerduty_ok(body: &Value) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "status": "success",
            "message": "Event processed",
            "dedup_key": body["dedup_key"],
        })),
    )
        .into_response()
}

/// Alertmanager accepts an array of postable alerts with labels.
fn alertmanager_validate(headers: &HeaderMap, body: &Value) -> Result<(), String> {
    if !is_json(headers) {
        return Err("content type".into());
    }
    let alerts = body.as_array().ok_or("body is not an array")?;
    if alerts.iter().all(|a| a["labels"]["alertname"].is_string()) {
        Ok(())
    } else {
        Err("labels.alertname missing".into())
    }
}

fn alertmanager_ok(_: &Value) -> Response {
    StatusCode::OK.into_response()
}

fn slack_sink(url: &str, settings: &AlertSettings, metrics: &Metrics) -> SlackSink {
    let mut s = settings.clone();
    s.slack.webhook_url_env = secret_env("CW_TEST_SLACK_URL", url);
    SlackSink::new(&s, metrics.clone()).expect("slack sink")
}

fn pagerduty_sink(
    endpoint: &str,
    settings: &AlertSettings,
    min_severity: Severity,
    metrics: &Metrics,
) -> PagerDutySink {
    let mut s = settings.clone();
    s.pagerduty.routing_key_env = secret_env("CW_TEST_PD_KEY", ROUTING_KEY);
    s.pagerduty.endpoint = endpoint.to_string();
    s.pagerduty.min_severity = min_severity;
    PagerDutySink::new(&s, metrics.clone()).expect("pagerduty sink")
}

/// `(kind, cluster, status, severity)` of each Slack message, read back from its fields.
fn slack_summary(message: &Value) -> (String, String, String) {
    let fields = message["blocks"][1]["fields"].as_array().unwrap();
    let value = |i: usize| {
        fields[i]["text"]
            .as_str()
            .unwrap()
            .split_once('\n')
            .unwrap()
            .1
            .to_string()
    };
    (value(3), value(2), value(1))
}

// ---------------------------------------------------------------------------------------------
// Slack

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_posts_block_kit_messages_for_firing_escalation_and_resolve_but_not_pending() {
    let mock = Mock::new(slack_validate, slack_ok);
    let addr = mock.serve("127.0.0.1:0", "/services/T000/B000/XXXX").await;
    let metrics = Metrics::new();
    let mut sink = slack_sink(
        &format!("http://{addr}/services/T000/B000/XXXX"),
        &settings(None),
        &metrics,
    );

    let sent = [
        coordinated(7, AlertStatus::Pending, Severity::Warning),
        coordinated(7, AlertStatus::Firing, Severity::Warning),
        coordinated(7, AlertStatus::Firing, Severity::Critical),
        // A pending alert that was withdrawn: nobody saw it fire, so no resolve either.
        coordinated(8, AlertStatus::Pending, Severity::Warning),
        coordinated(8, AlertStatus::Resolved, Severity::Warning),
        coordinated(7, AlertStatus::Resolved, Severity::Critical),
        surface_record(AlertStatus::Firing, Severity::Warning),
    ];
    for r in &sent {
        sink.deliver(r).await;
    }
    sink.close().await;

    let got = mock.accepted();
    assert_eq!(got.len(), 4, "{got:#?}");
    let headers: Vec<&str> = got
        .iter()
        .map(|m| m["blocks"][0]["text"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(
        headers,
        [
            "FIRING: Coordinated cluster",
            "ESCALATED: Coordinated cluster",
            "RESOLVED: Coordinated cluster",
            "FIRING: Launch surface drift",
        ]
    );
    for (message, record) in got.iter().zip([&sent[1], &sent[2], &sent[5], &sent[6]]) {
        assert!(
            message["text"]
                .as_str()
                .unwrap()
                .ends_with(&record.headline()),
            "text is the headline"
        );
        let blocks = message["blocks"].as_array().unwrap();
        let types: Vec<&str> = blocks.iter().map(|b| b["type"].as_str().unwrap()).collect();
        assert_eq!(types, ["header", "section", "context"]);
        let titles: Vec<&str> = blocks[1]["fields"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["text"].as_str().unwrap().split('\n').next().unwrap())
            .collect();
        assert_eq!(
            titles,
            [
                "*Kind*",
                "*Severity*",
                "*Status*",
                "*Cluster / surface*",
                "*Label*",
                "*Key figures*"
            ]
        );
        let context = blocks[2]["elements"][0]["text"].as_str().unwrap();
        assert!(context.contains(&record.event_time));
        assert!(context.contains(&record.dedup_key()));
    }
    let (subject, status, severity) = slack_summary(&got[1]);
    assert_eq!(
        (subject.as_str(), status.as_str(), severity.as_str()),
        ("cluster 7 / chat", "firing", "critical")
    );
    let section = serde_json::to_string(&got[0]["blocks"][1]).unwrap();
    assert!(
        section.contains("40 accounts in window (41 total), 9.5 accounts/min"),
        "key figures from the evidence: {section}"
    );
    assert!(
        section.contains("&lt;urgent&gt;") && !section.contains("<urgent>"),
        "mrkdwn control characters in the label are escaped"
    );
    assert_eq!(
        metrics.alerts_delivered.with_label_values(&["slack"]).get(),
        4
    );
    assert_no_identities(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_outage_with_503_spools_on_disk_then_delivers_each_state_change_once_in_order() {
    let mock = Mock::new(slack_validate, slack_ok);
    let addr = mock.serve("127.0.0.1:0", "/hook").await;
    mock.set(Mode::Failing(503, None));
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut sink = slack_sink(
        &format!("http://{addr}/hook"),
        &settings(Some(dir.path())),
        &metrics,
    );

    let sent = [
        coordinated(1, AlertStatus::Firing, Severity::Warning),
        coordinated(2, AlertStatus::Firing, Severity::Warning),
        coordinated(1, AlertStatus::Firing, Severity::Critical),
        coordinated(2, AlertStatus::Resolved, Severity::Warning),
        coordinated(3, AlertStatus::Firing, Severity::Critical),
        coordinated(1, AlertStatus::Resolved, Severity::Critical),
    ];
    for r in &sent {
        sink.deliver(r).await;
    }
    wait_for("retries against the 503", Duration::from_secs(10), || {
        mock.attempts() >= 3
    })
    .await;
    assert!(mock.accepted().is_empty());
    assert_eq!(spool_gauge(&metrics, "slack"), 6);
    let on_disk = spool::inspect(&dir.path().join("slack")).unwrap();
    assert_eq!(
        on_disk.iter().map(|e| e.record.clone()).collect::<Vec<_>>(),
        sent,
        "every state change is on disk, in order"
    );
    assert!(failures(&metrics, "slack") >= 3);

    mock.set(Mode::Up);
    wait_for("delivery after the outage", Duration::from_secs(10), || {
        mock.accepted().len() >= 6
    })
    .await;
    sink.close().await;
    let got: Vec<(String, String, String)> = mock.accepted().iter().map(slack_summary).collect();
    let expected: Vec<(String, String, String)> = sent
        .iter()
        .map(|r| {
            (
                format!("cluster {} / chat", r.cluster_id.unwrap()),
                r.status.as_str().to_string(),
                r.severity.as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "each state change exactly once, in order");
    assert_eq!(spool_gauge(&metrics, "slack"), 0);
    assert!(spool::inspect(&dir.path().join("slack"))
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_honours_retry_after_on_429() {
    let mock = Mock::new(slack_validate, slack_ok);
    let addr = mock.serve("127.0.0.1:0", "/hook").await;
    mock.set(Mode::RateLimitOnce);
    let metrics = Metrics::new();
    let mut sink = slack_sink(&format!("http://{addr}/hook"), &settings(None), &metrics);
    sink.deliver(&coordinated(1, AlertStatus::Firing, Severity::Critical))
        .await;
    wait_for("delivery after the 429", Duration::from_secs(10), || {
        mock.accepted().len() == 1
    })
    .await;
    sink.close().await;
    let attempts = mock.attempts.lock().unwrap().clone();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[1] - attempts[0] >= Duration::from_millis(950),
        "Retry-After: 1 is a floor under the 20 ms backoff, waited {:?}",
        attempts[1] - attempts[0]
    );
}

// ---------------------------------------------------------------------------------------------
// PagerDuty

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_triggers_then_resolves_with_one_dedup_key_and_maps_severity() {
    let mock = Mock::new(pagerduty_validate, pagerduty_ok);
    let addr = mock.serve("127.0.0.1:0", "/v2/enqueue").await;
    let endpoint = format!("http://{addr}/v2/enqueue");
    let metrics = Metrics::new();
    let mut sink = pagerduty_sink(&endpoint, &settings(None), Severity::Warning, &metrics);

    let sent = [
        // Below min_severity: no page, and so no resolve.
        coordinated(1, AlertStatus::Firing, Severity::Info),
        coordinated(2, AlertStatus::Pending, Severity::Warning),
        coordinated(2, AlertStatus::Firing, Severity::Warning),
        coordinated(2, AlertStatus::Firing, Severity::Critical),
        surface_record(AlertStatus::Firing, Severity::Critical),
        coordinated(1, AlertStatus::Resolved, Severity::Info),
        coordinated(2, AlertStatus::Resolved, Severity::Critical),
    ];
    for r in &sent {
        sink.deliver(r).await;
    }
    sink.close().await;

    let got = mock.accepted();
    let actions: Vec<(&str, &str, &str)> = got
        .iter()
        .map(|e| {
            (
                e["event_action"].as_str().unwrap(),
                e["dedup_key"].as_str().unwrap(),
                e["payload"]["severity"].as_str().unwrap_or("-"),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("trigger", "coordinated_cluster:cluster:2", "warning"),
            ("trigger", "coordinated_cluster:cluster:2", "critical"),
            ("trigger", "launch_drift:surface:computer_use", "critical"),
            ("resolve", "coordinated_cluster:cluster:2", "-"),
        ]
    );
    let trigger = &got[1];
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    let payload = &trigger["payload"];
    assert_eq!(payload["summary"], sent[3].headline());
    assert_eq!(payload["source"], "clusterwatch");
    assert_eq!(payload["class"], "coordinated_cluster");
    assert_eq!(payload["component"], "cluster 2");
    assert_eq!(payload["group"], "chat");
    assert_eq!(payload["timestamp"], sent[3].event_time);
    let details = &payload["custom_details"];
    assert_eq!(details["alert_id"], sent[3].alert_id);
    assert_eq!(details["label"], sent[3].label);
    assert_eq!(details["scope"], "cluster");
    assert_eq!(details["window_accounts"], 40);
    assert_eq!(got[2]["payload"]["custom_details"]["js_divergence"], 0.41);
    assert_eq!(got[2]["payload"]["component"], "surface computer_use");
    assert_eq!(
        metrics
            .alerts_delivered
            .with_label_values(&["pagerduty"])
            .get(),
        4
    );
    assert_no_identities(&got);

    // The default min_severity (critical): warnings do not page.
    let mock = Mock::new(pagerduty_validate, pagerduty_ok);
    let addr = mock.serve("127.0.0.1:0", "/v2/enqueue").await;
    let defaults = AlertSettings::default().pagerduty.min_severity;
    let mut sink = pagerduty_sink(
        &format!("http://{addr}/v2/enqueue"),
        &settings(None),
        defaults,
        &Metrics::new(),
    );
    sink.deliver(&coordinated(5, AlertStatus::Firing, Severity::Warning))
        .await;
    sink.deliver(&coordinated(5, AlertStatus::Resolved, Severity::Warning))
        .await;
    sink.deliver(&coordinated(6, AlertStatus::Firing, Severity::Critical))
        .await;
    sink.close().await;
    let got = mock.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["dedup_key"], "coordinated_cluster:cluster:6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pagerduty_unreachable_keeps_alerts_on_disk_until_it_listens() {
    // A port nothing listens on (yet): connection refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let metrics = Metrics::new();
    let mut sink = pagerduty_sink(
        &format!("http://{addr}/v2/enqueue"),
        &settings(Some(dir.path())),
        Severity::Warning,
        &metrics,
    );
    let sent = [
        coordinated(11, AlertStatus::Firing, Severity::Warning),
        coordinated(12, AlertStatus::Firing, Severity::Critical),
        coordinated(11, AlertStatus::Resolved, Severity::Warning),
        coordinated(12, AlertStatus::Resolved, Severity::Critical),
    ];
    for r in &sent {
        sink.deliver(r).await;
    }
    wait_for("failed connects", Duration::from_secs(10), || {
        failures(&metrics, "pagerduty") >= 3
    })
    .await;
    assert_eq!(spool_gauge(&metrics, "pagerduty"), 4);
    assert_eq!(
        spool::inspect(&dir.path().join("pagerduty")).unwrap().len(),
        4
    );

    let mock = Mock::new(pagerduty_validate, pagerduty_ok);
    mock.serve(&addr.to_string(), "/v2/enqueue").await;
    wait_for("delivery once it listens", Duration::from_secs(10), || {
        mock.accepted().len() >= 4
    })
    .await;
    sink.close().await;
    let got: Vec<(String, String)> = mock
        .accepted()
        .iter()
        .map(|e| {
            (
                e["event_action"].as_str().unwrap().to_string(),
                e["dedup_key"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let key = |c: u64| format!("coordinated_cluster:cluster:{c}");
    assert_eq!(
        got,
        [
            ("trigger".to_string(), key(11)),
            ("trigger".to_string(), key(12)),
            ("resolve".to_string(), key(11)),
            ("resolve".to_string(), key(12)),
        ]
    );
    assert_eq!(spool_gauge(&metrics, "pagerduty"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_is_dropped_and_counted_and_the_rest_still_arrive() {
    let mock = Mock::new(pagerduty_validate, pagerduty_ok);
    let addr = mock.serve("127.0.0.1:0", "/v2/enqueue").await;
    mock.refuse_keys
        .lock()
        .unwrap()
        .push("coordinated_cluster:cluster:21".into());
    let metrics = Metrics::new();
    let mut sink = pagerduty_sink(
        &format!("http://{addr}/v2/enqueue"),
        &settings(None),
        Severity::Warning,
        &metrics,
    );
    sink.deliver(&coordinated(21, AlertStatus::Firing, Severity::Critical))
        .await;
    sink.deliver(&coordinated(22, AlertStatus::Firing, Severity::Critical))
        .await;
    sink.close().await;
    let got = mock.accepted();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["dedup_key"], "coordinated_cluster:cluster:22");
    assert_eq!(mock.attempts(), 2, "a 400 is not retried");
    assert_eq!(
        metrics
            .alert_deliveries_rejected
            .with_label_values(&["pagerduty"])
            .get(),
        1
    );
}

// ---------------------------------------------------------------------------------------------
// Restart and shutdown

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_dropped_mid_outage_is_replaced_by_one_on_the_same_spool_that_delivers_everything() {
    let mock = Mock::new(slack_validate, slack_ok);
    let addr = mock.serve("127.0.0.1:0", "/hook").await;
    mock.set(Mode::Failing(503, None));
    let url = format!("http://{addr}/hook");
    let dir = tempfile::tempdir().unwrap();
    let before = [
        coordinated(31, AlertStatus::Firing, Severity::Warning),
        coordinated(32, AlertStatus::Firing, Severity::Warning),
        coordinated(31, AlertStatus::Resolved, Severity::Warning),
        coordinated(33, AlertStatus::Firing, Severity::Critical),
    ];
    {
        let metrics = Metrics::new();
        let mut sink = slack_sink(&url, &settings(Some(dir.path())), &metrics);
        for r in &before {
            sink.deliver(r).await;
        }
        wait_for("retries against the 503", Duration::from_secs(10), || {
            mock.attempts() >= 2
        })
        .await;
        assert_eq!(spool_gauge(&metrics, "slack"), 4);
        // Dropped without close, as a crashing process would.
    }
    assert_eq!(spool::inspect(&dir.path().join("slack")).unwrap().len(), 4);

    mock.set(Mode::Up);
    let metrics = Metrics::new();
    let mut sink = slack_sink(&url, &settings(Some(dir.path())), &metrics);
    let after = [
        coordinated(34, AlertStatus::Firing, Severity::Warning),
        coordinated(34, AlertStatus::Resolved, Severity::Warning),
    ];
    for r in &after {
        sink.deliver(r).await;
    }
    wait_for(
        "delivery after the restart",
        Duration::from_secs(10),
        || mock.accepted().len() >= 6,
    )
    .await;
    sink.close().await;
    let got: Vec<(String, String)> = mock
        .accepted()
        .iter()
        .map(|m| {
            let (subject, status, _) = slack_summary(m);
            (subject, status)
        })
        .collect();
    let expected: Vec<(String, String)> = before
        .iter()
        .chain(&after)
        .map(|r| {
            (
                format!("cluster {} / chat", r.cluster_id.unwrap()),
                r.status.as_str().to_string(),
            )
        })
        .collect();
    assert_eq!(got, expected, "the old spool first, in order, each once");
    assert_eq!(spool_gauge(&metrics, "slack"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_gives_up_at_its_timeout_and_leaves_the_rest_on_disk() {
    let mock = Mock::new(pagerduty_validate, pagerduty_ok);
    let addr = mock.serve("127.0.0.1:0", "/v2/enqueue").await;
    mock.set(Mode::Failing(500, None));
    let endpoint = format!("http://{addr}/v2/enqueue");
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Some(dir.path()));
    s.close_timeout_ms = 300;
    let mut sink = pagerduty_sink(&endpoint, &s, Severity::Warning, &Metrics::new());
    sink.deliver(&coordinated(41, AlertStatus::Firing, Severity::Critical))
        .await;
    sink.deliver(&coordinated(42, AlertStatus::Firing, Severity::Critical))
        .await;
    let started = Instant::now();
    sink.close().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        started.elapsed()
    );
    assert_eq!(
        spool::inspect(&dir.path().join("pagerduty")).unwrap().len(),
        2
    );

    mock.set(Mode::Up);
    let mut sink = pagerduty_sink(&endpoint, &s, Severity::Warning, &Metrics::new());
    sink.close().await;
    assert_eq!(mock.accepted().len(), 2, "the next start delivered them");
    assert!(spool::inspect(&dir.path().join("pagerduty"))
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------------------------------------
// Alertmanager (the real one is in tests/alertmanager_sink.rs; this mock can fail on demand)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alertmanager_after_an_outage_hears_each_alerts_latest_state_once_and_re_sends_firing() {
    let mock = Mock::new(alertmanager_validate, alertmanager_ok);
    let addr = mock.serve("127.0.0.1:0", "/api/v2/alerts").await;
    mock.set(Mode::Failing(503, None));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Some(dir.path()));
    s.alertmanager_url = format!("http://{addr}");
    s.alertmanager_resend_secs = 1;
    let metrics = Metrics::new();
    let mut sink = AlertmanagerSink::new(&s, metrics.clone()).expect("sink");
    for r in [
        coordinated(51, AlertStatus::Pending, Severity::Warning),
        coordinated(51, AlertStatus::Firing, Severity::Warning),
        coordinated(52, AlertStatus::Firing, Severity::Warning),
        coordinated(51, AlertStatus::Firing, Severity::Critical),
        coordinated(52, AlertStatus::Resolved, Severity::Warning),
    ] {
        sink.deliver(&r).await;
    }
    assert_eq!(
        spool_gauge(&metrics, "alertmanager"),
        2,
        "only the latest state per alert is kept for Alertmanager"
    );
    wait_for("retries against the 503", Duration::from_secs(10), || {
        mock.attempts() >= 2
    })
    .await;
    mock.set(Mode::Up);
    wait_for("the post and a re-send", Duration::from_secs(10), || {
        mock.accepted().len() >= 2
    })
    .await;
    sink.close().await;

    let posts = mock.accepted();
    let first: Vec<(String, String, bool)> = posts[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["cluster_id"].as_str().unwrap().to_string(),
                a["labels"]["severity"].as_str().unwrap().to_string(),
                a.get("endsAt").is_some(),
            )
        })
        .collect();
    assert_eq!(
        first,
        [
            ("51".to_string(), "critical".to_string(), false),
            ("52".to_string(), "warning".to_string(), true),
        ],
        "one post with the latest state of each alert"
    );
    let labels = &posts[0][0]["labels"];
    for name in [
        "alertname",
        "kind",
        "severity",
        "service",
        "dedup_key",
        "cluster_id",
        "surface",
    ] {
        assert!(labels[name].is_string(), "label {name}");
    }
    let resend: Vec<&str> = posts[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["cluster_id"].as_str().unwrap())
        .collect();
    assert_eq!(resend, ["51"], "only the firing alert is re-sent");
    assert_eq!(
        posts[1][0]["startsAt"], posts[0][0]["startsAt"],
        "a re-send keeps startsAt"
    );
    assert_eq!(
        metrics
            .alerts_delivered
            .with_label_values(&["alertmanager"])
            .get(),
        2
    );
    assert_no_identities(&posts);
}

// ---------------------------------------------------------------------------------------------
// Kafka alerts topic (real broker)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_records_reach_the_kafka_topic_keyed_by_dedup_key_in_order() {
    let bootstrap = kafka_bootstrap();
    let topic = unique("alerts");
    create_topics(&bootstrap, &[(&topic, 3)]).await;
    let mut kafka = test_settings().kafka;
    kafka.bootstrap_servers = bootstrap.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(Some(dir.path()));
    s.kafka.topic = topic.clone();
    let metrics = Metrics::new();
    let mut sink = KafkaAlertSink::new(&kafka, &s, metrics.clone()).expect("sink");
    let sent = [
        coordinated(61, AlertStatus::Pending, Severity::Warning),
        coordinated(62, AlertStatus::Pending, Severity::Warning),
        coordinated(61, AlertStatus::Firing, Severity::Warning),
        coordinated(62, AlertStatus::Resolved, Severity::Warning),
        coordinated(61, AlertStatus::Firing, Severity::Critical),
        surface_record(AlertStatus::Firing, Severity::Warning),
        coordinated(61, AlertStatus::Resolved, Severity::Critical),
    ];
    for r in &sent {
        sink.deliver(r).await;
    }
    sink.close().await;
    assert_eq!(
        metrics.alerts_delivered.with_label_values(&["kafka"]).get(),
        sent.len() as u64
    );
    assert_eq!(spool_gauge(&metrics, "kafka"), 0);

    let messages = read_all(&bootstrap, &topic, sent.len()).await;
    let mut by_key: BTreeMap<String, Vec<AlertRecord>> = BTreeMap::new();
    let mut payloads = Vec::new();
    for m in &messages {
        let record: AlertRecord = serde_json::from_slice(&m.payload).expect("the record's JSON");
        assert_eq!(m.key.as_deref(), Some(record.dedup_key().as_str()));
        payloads.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        by_key.entry(record.dedup_key()).or_default().push(record);
    }
    for (key, got) in &by_key {
        let expected: Vec<AlertRecord> = sent
            .iter()
            .filter(|r| &r.dedup_key() == key)
            .cloned()
            .collect();
        assert_eq!(got, &expected, "{key}: every state change, once, in order");
    }
    assert_eq!(by_key.len(), 3);
    assert_no_identities(&payloads);
}
