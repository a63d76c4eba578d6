//! Alerts pushed to a real Alertmanager (Debian's `prometheus-alertmanager`, started by
//! `scripts/alertmanager.sh` with `deploy/alertmanager/test-alertmanager.yml`) reach a webhook
//! receiver through its route: first the firing notification, then the resolve. Its inhibit rule
//! (critical mutes warning of the same alertname) holds back the warning.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use clusterwatch::alert::alertmanager::AlertmanagerSink;
use clusterwatch::alert::sinks::AlertSink;
use clusterwatch::alert::{
    AlertKind, AlertRecord, AlertStats, AlertStatus, ClusterEvidence, Severity,
};
use clusterwatch::demo::traffic::{self, CampaignSpec, TrafficSpec};
use clusterwatch::export::Metrics;
use common::*;
use serde_json::Value;

/// The webhook address `test-alertmanager.yml` routes every alert to.
const WEBHOOK_ADDR: &str = "127.0.0.1:19194";

/// Notifications Alertmanager posted to the webhook. One server serves every test in this file
/// (they run in parallel and the port is fixed), on its own thread and runtime so it outlives
/// any one test's runtime.
fn webhook() -> Arc<Mutex<Vec<Value>>> {
    static RECEIVED: OnceLock<Arc<Mutex<Vec<Value>>>> = OnceLock::new();
    RECEIVED
        .get_or_init(|| {
            let received: Arc<Mutex<Vec<Value>>> = Arc::default();
            let listener =
                std::net::TcpListener::bind(WEBHOOK_ADDR).expect("webhook port 19194 free");
            listener.set_nonblocking(true).expect("non-blocking");
            let app = {
                let received = received.clone();
                Router::new().route(
                    "/hook",
                    post(move |body: axum::Json<Value>| {
                        let received = received.clone();
                        async move {
                            received.lock().unwrap().push(body.0);
                            "ok"
                        }
                    }),
                )
            };
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("webhook runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("webhook listener");
                    axum::serve(listener, app).await
                })
            });
            received
        })
        .clone()
}

fn alertmanager_url() -> String {
    std::env::var("ALERTMANAGER_URL").unwrap_or_else(|_| {
        panic!("ALERTMANAGER_URL is not set: run the tests through scripts/test.sh")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_alert_reaches_the_webhook_through_alertmanager_and_then_resolves() {
    let alertmanager = alertmanager_url();
    let received = webhook();

    // A campaign 20 minutes in, then an hour of organic traffic so the alert resolves.
    let dir = tempfile::tempdir().unwrap();
    let spec = TrafficSpec {
        seed: 41,
        organic_events: 900,
        duration_secs: 80 * 60,
        campaign: Some(CampaignSpec {
            offset_secs: 20 * 60,
            ..Default::default()
        }),
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let input = dir.path().join("events.jsonl");
    let mut bytes = Vec::new();
    for m in traffic::generate(&spec) {
        bytes.extend_from_slice(&m.payload);
        bytes.push(b'\n');
    }
    std::fs::write(&input, bytes).unwrap();

    // The replay decides the alerts; the sink then delivers them one state change at a time, as a
    // live run would (a replay is so fast that firing and resolve would reach Alertmanager inside
    // one group_wait, and Alertmanager rightly never notifies about an alert it saw only resolved).
    let report = clusterwatch::replay::replay(
        test_settings(),
        &input,
        &Default::default(),
        Metrics::new(),
        Some(model()),
        Vec::new(),
    )
    .await
    .expect("replay");
    let firing = report
        .alerts
        .iter()
        .find(|a| a.status == AlertStatus::Firing)
        .cloned()
        .expect("the campaign fired");
    let resolved = report
        .alerts
        .iter()
        .find(|a| a.status == AlertStatus::Resolved && a.alert_id == firing.alert_id)
        .cloned()
        .expect("the campaign's alert resolved after the quiet time");

    let mut settings = test_settings();
    settings.alerts.alertmanager_url = alertmanager;
    let metrics = Metrics::new();
    let mut sink = AlertmanagerSink::new(&settings.alerts, metrics.clone()).expect("sink");

    let has = |status: &str| {
        received.lock().unwrap().iter().any(|n| {
            n["status"] == status
                && n["alerts"].as_array().is_some_and(|alerts| {
                    alerts.iter().any(|a| {
                        a["labels"]["alertname"] == "ClusterwatchCoordinatedCluster"
                            && a["labels"]["service"] == "clusterwatch"
                            && a["status"] == status
                    })
                })
        })
    };
    // Alertmanager batches by group_wait/group_interval (1 s in the test config).
    sink.deliver(&firing).await;
    wait_for("the firing notification", Duration::from_secs(30), || {
        has("firing")
    })
    .await;
    sink.deliver(&resolved).await;
    wait_for("the resolved notification", Duration::from_secs(30), || {
        has("resolved")
    })
    .await;
    sink.close().await;
    assert_eq!(
        metrics
            .alerts_delivered
            .with_label_values(&["alertmanager"])
            .get(),
        2,
        "firing and resolved were both accepted by Alertmanager"
    );
    let notifications = received.lock().unwrap().clone();
    let text = serde_json::to_string(&notifications).unwrap();
    assert!(
        !text.contains("acct-"),
        "no account id reaches the incident channel"
    );
}

/// A record of `kind` about `cluster`, evidence made up (only the labels matter to Alertmanager).
fn cluster_alert(
    kind: AlertKind,
    cluster: u64,
    status: AlertStatus,
    severity: Severity,
    label: &str,
) -> AlertRecord {
    AlertRecord {
        sequence: 0,
        alert_id: format!("{}-{cluster}", kind.as_str()),
        kind,
        status,
        severity,
        cluster_id: Some(cluster),
        surface: Some("chat".into()),
        window_start: "2026-11-27T10:00:00Z".into(),
        event_time: "2026-11-27T10:10:00Z".into(),
        stats: AlertStats::Cluster(ClusterEvidence {
            conversations: 300,
            accounts: 120,
            orgs: 4,
            window_conversations: 200,
            window_accounts: 110,
            accounts_per_minute: 11.0,
            tightness: 0.9,
            tightness_z: 3.0,
            duplication_rate: 0.5,
            template_share: 0.5,
            growth: 5.0,
            top_account_share: 0.02,
            fresh_account_share: 1.0,
            clusters: 1,
            refusal_rate: 0.05,
            mean_concern: 4.1,
            classifier_flag_rate: 0.02,
            surfaces: BTreeMap::from([("chat".to_string(), 300)]),
            languages: BTreeMap::from([("en".to_string(), 300)]),
        }),
        label: label.to_string(),
    }
}

/// Whether a notification carried an alert with this `cluster_id` label in this `status`.
fn notified(received: &Mutex<Vec<Value>>, cluster: u64, status: &str) -> bool {
    received.lock().unwrap().iter().any(|n| {
        n["alerts"].as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["cluster_id"].as_str() == Some(cluster.to_string().as_str())
                    && a["status"] == status
            })
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_alert_inhibits_the_warning_of_the_same_alertname() {
    let alertmanager = alertmanager_url();
    let received = webhook();
    // Cluster ids no earlier run used, so a leftover alert of an earlier run cannot be mistaken
    // for this run's; a different alertname from the other test in this file (under_enforcement),
    // so neither inhibits the other.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
        * 2;
    let (critical_cluster, warning_cluster) = (base, base + 1);
    let label = unique("inhibition");
    let kind = AlertKind::UnderEnforcement;
    let critical = cluster_alert(
        kind,
        critical_cluster,
        AlertStatus::Firing,
        Severity::Critical,
        &label,
    );
    let warning = cluster_alert(
        kind,
        warning_cluster,
        AlertStatus::Firing,
        Severity::Warning,
        &label,
    );

    let mut settings = test_settings();
    settings.alerts.alertmanager_url = alertmanager.clone();
    let mut sink = AlertmanagerSink::new(&settings.alerts, Metrics::new()).expect("sink");
    sink.deliver(&critical).await;
    sink.deliver(&warning).await;

    wait_for(
        "the critical alert's notification",
        Duration::from_secs(30),
        || notified(&received, critical_cluster, "firing"),
    )
    .await;

    // Alertmanager's own view: the warning is active but inhibited by the critical alert.
    let client = reqwest::Client::new();
    let url = format!("{}/api/v2/alerts", alertmanager.trim_end_matches('/'));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (critical_fingerprint, inhibited_by) = loop {
        let alerts: Vec<Value> = client
            .get(&url)
            .send()
            .await
            .expect("GET /api/v2/alerts")
            .json()
            .await
            .expect("alerts JSON");
        let find = |cluster: u64| {
            alerts
                .iter()
                .find(|a| a["labels"]["cluster_id"].as_str() == Some(cluster.to_string().as_str()))
                .cloned()
        };
        if let (Some(c), Some(w)) = (find(critical_cluster), find(warning_cluster)) {
            let by: Vec<String> = w["status"]["inhibitedBy"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !by.is_empty() {
                assert_eq!(w["status"]["state"], "suppressed");
                break (c["fingerprint"].as_str().unwrap().to_string(), by);
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the warning was never shown as inhibited: {alerts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        inhibited_by.contains(&critical_fingerprint),
        "inhibited by this run's critical alert: {inhibited_by:?} vs {critical_fingerprint}"
    );

    // Several group intervals (1 s) later the warning still has not been notified.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !notified(&received, warning_cluster, "firing"),
        "an inhibited warning reached the webhook"
    );

    // Clean up: the warning resolves no later than its inhibitor, so it never shows unmuted.
    sink.deliver(&AlertRecord {
        status: AlertStatus::Resolved,
        ..warning
    })
    .await;
    sink.deliver(&AlertRecord {
        status: AlertStatus::Resolved,
        ..critical
    })
    .await;
    sink.close().await;
    wait_for(
        "the critical alert's resolve",
        Duration::from_secs(30),
        || notified(&received, critical_cluster, "resolved"),
    )
    .await;
    assert!(
        !notified(&received, warning_cluster, "firing")
            && !notified(&received, warning_cluster, "resolved"),
        "the inhibited warning never reached the webhook"
    );
}
