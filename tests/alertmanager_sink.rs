//! Alerts pushed to a real Alertmanager (Debian's `prometheus-alertmanager`, started by
//! `scripts/alertmanager.sh` with `deploy/alertmanager/test-alertmanager.yml`) reach a webhook
//! receiver through its route: first the firing notification, then the resolve.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use clusterwatch::alert::alertmanager::AlertmanagerSink;
use clusterwatch::alert::sinks::AlertSink;
use clusterwatch::alert::AlertStatus;
use clusterwatch::demo::traffic::{self, CampaignSpec, TrafficSpec};
use clusterwatch::export::Metrics;
use common::*;

/// The webhook address `test-alertmanager.yml` routes every alert to.
const WEBHOOK_ADDR: &str = "127.0.0.1:19194";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_alert_reaches_the_webhook_through_alertmanager_and_then_resolves() {
    let alertmanager = std::env::var("ALERTMANAGER_URL").unwrap_or_else(|_| {
        panic!("ALERTMANAGER_URL is not set: run the tests through scripts/test.sh")
    });
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let app = {
        let received = received.clone();
        Router::new().route(
            "/hook",
            post(move |body: axum::Json<serde_json::Value>| {
                let received = received.clone();
                async move {
                    received.lock().unwrap().push(body.0);
                    "ok"
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind(WEBHOOK_ADDR)
        .await
        .expect("webhook port 19194 free");
    tokio::spawn(async move { axum::serve(listener, app).await });

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
