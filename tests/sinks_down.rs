//! Sinks down (issue 7, item 4): Alertmanager is unreachable while `clusterwatch run` consumes a
//! stream with two campaigns from the real broker. Alerts queue in the bounded on-disk spool,
//! survive a SIGKILL of clusterwatch, and once Alertmanager is back each one is delivered exactly
//! once: nothing lost, nothing posted twice.
//!
//! The Alertmanager is private (`scripts/alertmanager.sh` with `ALERTMANAGER_INSTANCE`, its own
//! port and config), so keeping it down disturbs nobody. Its route notifies a webhook the test
//! serves, and clusterwatch reaches it through a recording proxy the test starts only together
//! with it: while Alertmanager is down, nothing listens at the address clusterwatch posts to
//! (connection refused, the real failure). The proxy counts what clusterwatch posted per dedup
//! key, which Alertmanager's own API cannot show (it merges re-posts by label set).
//!
//! The alerts topic (`[alerts.kafka]`, on the broker that stays up) is the reference for what the
//! detectors emitted. Alertmanager keeps only an alert's latest state, and so does the sink's
//! spool: an alert that fired and resolved during the outage reaches it once, resolved (and is
//! then rightly neither listed nor notified); one still firing reaches it once, firing, and is
//! notified.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use clusterwatch::alert::{spool, AlertRecord, AlertStatus};
use clusterwatch::cluster::snapshot;
use clusterwatch::demo::traffic::{self, CampaignSpec, GeneratedMessage, TrafficSpec};
use common::private_alertmanager::{
    notified_firing, serve_recording_proxy, serve_webhook, PrivateAlertmanager,
};
use common::process::{
    free_port, metric, run_config, sigkill, sigterm_and_wait, start_run, RunTopics,
};
use common::*;

const SINK: &str = "alertmanager";

/// Two campaigns, 10 event minutes apart, in 40 minutes of organic traffic, in event-time order.
/// The stream ends 14 minutes after the second campaign, too soon for its alert to resolve (the
/// campaign window has to empty and then stay quiet for `quiet_secs`).
fn traffic() -> Vec<GeneratedMessage> {
    let first = TrafficSpec {
        seed: 4401,
        organic_events: 800,
        duration_secs: 40 * 60,
        campaign: Some(CampaignSpec {
            offset_secs: 12 * 60,
            ..Default::default()
        }),
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let second = TrafficSpec {
        seed: 4402,
        organic_events: 100,
        campaign: Some(CampaignSpec {
            campaign_key: "num:86688".into(),
            offset_secs: SECOND_CAMPAIGN_SECS,
            ..Default::default()
        }),
        ..first.clone()
    };
    let mut all = traffic::generate(&first);
    all.extend(traffic::generate(&second));
    all.sort_by_key(|m| m.event_time_ms);
    all
}

/// Event seconds (from the stream's start) of the second campaign.
const SECOND_CAMPAIGN_SECS: i64 = 22 * 60;

/// A `clusterwatch run` config with the static embedder, the Alertmanager sink pointing at
/// `alertmanager_url`, the spool in `dir`, and the alerts topic as the reference stream. No
/// periodic snapshot: a process killed mid-test restarts from the beginning of the topic, so its
/// detectors make the first incarnation's alert records again and the spool has to recognise them.
fn config(
    dir: &Path,
    topics: &RunTopics<'_>,
    port: u16,
    alertmanager_url: &str,
    alerts_topic: &str,
    spool_bound: usize,
) -> std::path::PathBuf {
    let extra = format!(
        "[cluster]\nfresh_account_secs = 600\n\
         [snapshot]\ndir = \"{snapshots}\"\ninterval_secs = 3600\n\
         [alerts]\nalertmanager_url = \"{alertmanager_url}\"\n\
         # Re-sends of firing alerts would be legitimate repeat posts; keep them out of the count.\n\
         alertmanager_resend_secs = 3600\nalertmanager_timeout_ms = 1000\n\
         spool_dir = \"{spool}\"\nspool_max_records = {spool_bound}\n\
         backoff_initial_ms = 100\nbackoff_max_ms = 1000\nclose_timeout_ms = 3000\n\
         [alerts.kafka]\ntopic = \"{alerts_topic}\"\n",
        snapshots = dir.join("snapshots").display(),
        spool = dir.join("spool").display(),
    );
    // The static embedder (scripts/setup.sh distils it), as the other fault tests use: these
    // tests are about delivery, not embedding quality, and must stay fast in CI.
    let text = run_config(topics, port, &extra).replacen(
        "[embedder]\n",
        "[embedder]\nkind = \"static\"\n",
        1,
    );
    let path = dir.join("clusterwatch.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn sink_metric(port: u16, name: &str) -> f64 {
    metric(port, &format!("{name}{{kind=\"{SINK}\"}}")).unwrap_or(-1.0)
}

fn wait_until(what: &str, log: &Path, limit: Duration, f: impl Fn() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out: {what}; log: {}",
            log_tail(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every record on the alerts topic, each sequence once (a record sent just before a kill and
/// not yet marked done is sent again at restart), in sequence order.
fn reference_records(bootstrap: &str, topic: &str) -> Vec<AlertRecord> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::Message;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("sinks-down-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let (_, end) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .unwrap_or((0, 0));
    let mut out: BTreeMap<u64, AlertRecord> = BTreeMap::new();
    let mut read = 0;
    if end > 0 {
        consumer.subscribe(&[topic]).expect("subscribe");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while read < end {
        assert!(Instant::now() < deadline, "alerts topic {topic} not read");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("read alerts");
            let record: AlertRecord =
                serde_json::from_slice(m.payload().unwrap_or_default()).expect("a record");
            out.insert(record.sequence, record);
            read += 1;
        }
    }
    out.into_values().collect()
}

/// The records the Alertmanager sink admits (firing, and resolves of alerts it announced), in
/// order: what it queues.
fn admitted(records: &[AlertRecord]) -> Vec<&AlertRecord> {
    let mut open = BTreeSet::new();
    records
        .iter()
        .filter(|r| match r.status {
            AlertStatus::Pending => false,
            AlertStatus::Firing => {
                open.insert(r.dedup_key());
                true
            }
            AlertStatus::Resolved => open.remove(&r.dedup_key()),
        })
        .collect()
}

/// A plain test with its own runtime for the async helpers: the polling below uses blocking HTTP,
/// which must not run on a runtime thread.
#[test]
fn alerts_wait_out_an_alertmanager_outage_and_a_sigkill_on_disk_then_arrive_once_each() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topic = unique("sinks-down-conversations");
    let dead_letter = unique("sinks-down-dead-letter");
    let alerts_topic = unique("sinks-down-alerts");
    let group = unique("sinks-down-group");
    rt.block_on(create_topics(
        &bootstrap,
        &[(&topic, 1), (&dead_letter, 1), (&alerts_topic, 1)],
    ));
    // The SIGKILL comes after the first campaign, before the second.
    let messages = traffic();
    let split_ms = messages[0].event_time_ms + (SECOND_CAMPAIGN_SECS - 4 * 60) * 1000;
    let (before_kill, after_kill): (Vec<_>, Vec<_>) = messages
        .into_iter()
        .partition(|m| m.event_time_ms < split_ms);
    let produced = before_kill.len() + after_kill.len();

    let dir = tempfile::tempdir().unwrap();
    let webhook_port = free_port();
    let alertmanager_port = free_port();
    let proxy_port = free_port();
    let notifications = serve_webhook(webhook_port);
    let alertmanager = PrivateAlertmanager::configure(
        &format!("sinks-down-{}", std::process::id()),
        alertmanager_port,
        &format!("http://127.0.0.1:{webhook_port}/hook"),
        dir.path(),
    );
    let port = free_port();
    let spool_bound = 16;
    let config = config(
        dir.path(),
        &RunTopics {
            bootstrap: &bootstrap,
            topic: &topic,
            dead_letter: &dead_letter,
            group: &group,
        },
        port,
        &format!("http://127.0.0.1:{proxy_port}"),
        &alerts_topic,
        spool_bound,
    );
    let log = dir.path().join("clusterwatch.log");
    let spool_dir = dir.path().join("spool").join(SINK);

    // Alertmanager down from the start. The first campaign's alert queues.
    rt.block_on(produce(&bootstrap, &topic, &before_kill));
    let child = start_run(&config, &log);
    let limit = Duration::from_secs(120);
    wait_until("the first part consumed", &log, limit, || {
        metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0)
            >= before_kill.len() as f64
    });
    wait_until(
        "an alert queued and its delivery failing",
        &log,
        limit,
        || {
            sink_metric(port, "clusterwatch_alert_spool_records") >= 1.0
                && sink_metric(port, "clusterwatch_alert_delivery_failures_total") >= 1.0
        },
    );
    let queued_before_kill = sink_metric(port, "clusterwatch_alert_spool_records") as usize;
    let failures_before_kill = sink_metric(port, "clusterwatch_alert_delivery_failures_total");
    let on_disk_before_kill = spool::inspect(&spool_dir).expect("spool readable");
    assert_eq!(
        on_disk_before_kill.len(),
        queued_before_kill,
        "the queue is on disk"
    );

    // SIGKILL while Alertmanager is still down: the spool survives it.
    sigkill(child);
    let on_disk_after_kill = spool::inspect(&spool_dir).expect("spool readable");
    assert_eq!(
        on_disk_after_kill, on_disk_before_kill,
        "the spool survives a SIGKILL unchanged"
    );

    // Restarted (no snapshot: it reads the topic from the start again), with the rest of the
    // stream. The first incarnation's records are made again and recognised by sequence.
    let child = start_run(&config, &log);
    wait_until("the restarted process's spool open", &log, limit, || {
        sink_metric(port, "clusterwatch_alert_spool_records") >= 0.0
    });
    assert!(
        sink_metric(port, "clusterwatch_alert_spool_records") >= queued_before_kill as f64,
        "the restarted process queues what the killed one left"
    );
    rt.block_on(produce(&bootstrap, &topic, &after_kill));
    wait_until("the whole topic consumed again", &log, limit, || {
        metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0) >= produced as f64
    });
    wait_until("the re-made records recognised", &log, limit, || {
        sink_metric(port, "clusterwatch_alert_records_replayed_total") >= queued_before_kill as f64
    });
    // Let the alert stage finish what the last events decided, then read the queue.
    std::thread::sleep(Duration::from_secs(2));
    let queued_while_down = sink_metric(port, "clusterwatch_alert_spool_records") as usize;
    let failures_while_down = sink_metric(port, "clusterwatch_alert_delivery_failures_total");
    let replayed = sink_metric(port, "clusterwatch_alert_records_replayed_total");
    let dropped = sink_metric(port, "clusterwatch_alert_spool_dropped_total");
    let queued: BTreeMap<String, AlertStatus> = spool::inspect(&spool_dir)
        .expect("spool readable")
        .iter()
        .map(|e| (e.record.dedup_key(), e.record.status))
        .collect();
    let queued_firing: BTreeSet<&String> = queued
        .iter()
        .filter(|(_, s)| **s == AlertStatus::Firing)
        .map(|(k, _)| k)
        .collect();

    // Alertmanager (and the proxy in front of it) back.
    alertmanager.start();
    let posted = serve_recording_proxy(proxy_port, &alertmanager.url());
    let back = Instant::now();
    wait_until("the spool drained", &log, limit, || {
        sink_metric(port, "clusterwatch_alert_spool_records") == 0.0
    });
    let drained_after = back.elapsed();
    let delivered = sink_metric(port, "clusterwatch_alert_deliveries_total");
    // Alertmanager notifies after its 1 s group wait; give it a generous while, and let the
    // assertions below say what is missing.
    let notify_limit = Instant::now() + Duration::from_secs(30);
    while Instant::now() < notify_limit
        && !queued_firing
            .iter()
            .all(|k| notified_firing(&notifications.lock().unwrap()).contains_key(*k))
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let in_alertmanager: BTreeSet<String> = alertmanager
        .alerts()
        .iter()
        .filter(|a| a["labels"]["service"] == "clusterwatch")
        .filter_map(|a| a["labels"]["dedup_key"].as_str().map(str::to_string))
        .collect();
    let code = sigterm_and_wait(child, Duration::from_secs(60));
    assert_eq!(code, 0, "clean exit; log: {}", log_tail(&log));

    // What the detectors emitted, and what Alertmanager should therefore hold.
    let records = reference_records(&bootstrap, &alerts_topic);
    let admitted = admitted(&records);
    // Each alert's latest admitted state: what Alertmanager should hear, once.
    let latest: BTreeMap<String, AlertStatus> =
        admitted.iter().map(|r| (r.dedup_key(), r.status)).collect();
    let expected: BTreeSet<String> = latest.keys().cloned().collect();
    let expected_firing: BTreeSet<String> = latest
        .iter()
        .filter(|(_, s)| **s == AlertStatus::Firing)
        .map(|(k, _)| k.clone())
        .collect();
    let posted = posted.lock().unwrap().clone();
    let mut posts_per_key: BTreeMap<String, usize> = BTreeMap::new();
    for p in &posted {
        *posts_per_key.entry(p.dedup_key.clone()).or_insert(0) += 1;
    }
    let notified = notified_firing(&notifications.lock().unwrap());
    let clustered = snapshot::load(&snapshot::snapshot_path(
        &dir.path().join("snapshots"),
        &group,
    ))
    .expect("snapshot readable")
    .expect("a final snapshot")
    .clustered_events;
    // Lost: an alert whose latest state Alertmanager did not hear.
    let lost = latest
        .iter()
        .filter(|(key, status)| {
            !posted
                .iter()
                .any(|p| &&p.dedup_key == key && p.resolved == (**status == AlertStatus::Resolved))
        })
        .count();
    let duplicated = posted.len() - posts_per_key.len();
    println!(
        "sinks down: produced {produced} events ({} before the SIGKILL), clustered {clustered}; \
         alert records emitted {} ({} admitted to Alertmanager, {} distinct alerts, {} still \
         firing at the end)",
        before_kill.len(),
        records.len(),
        admitted.len(),
        expected.len(),
        expected_firing.len()
    );
    println!(
        "  Alertmanager down: queued {queued_before_kill} before the SIGKILL ({failures_before_kill} \
         failed deliveries), {queued_while_down} after the restart and the rest of the stream \
         (bound {spool_bound}, dropped {dropped}, {replayed} re-made records recognised, \
         {failures_while_down} failed deliveries)"
    );
    println!(
        "  Alertmanager back: drained in {drained_after:.1?}; delivered {delivered}, posted {} \
         alerts for {} keys, {} in Alertmanager, webhook notified {:?}; lost {lost}, duplicated \
         {duplicated}",
        posted.len(),
        posts_per_key.len(),
        in_alertmanager.len(),
        notified.values().collect::<Vec<_>>(),
    );

    assert_eq!(clustered, produced as u64, "every event clustered once");
    assert!(
        expected.len() >= 2,
        "both campaigns fire an alert: {expected:?}"
    );
    assert!(
        !expected_firing.is_empty(),
        "an alert still firing at the end"
    );
    assert!(queued_before_kill >= 1 && queued_before_kill < expected.len());
    assert_eq!(
        queued, latest,
        "each alert's latest state queued while down"
    );
    assert_eq!(
        queued_while_down,
        expected.len(),
        "one queued record per alert"
    );
    assert!(queued_while_down <= spool_bound);
    assert_eq!(dropped, 0.0, "nothing dropped under the bound");
    assert!(
        failures_while_down >= 1.0,
        "the restarted process failed delivering too"
    );
    assert!(posted.iter().all(|p| p.status == 200), "{posted:?}");
    assert_eq!(lost, 0, "every alert's latest state posted: {posted:?}");
    assert_eq!(
        in_alertmanager, expected_firing,
        "Alertmanager lists the firing alerts"
    );
    assert_eq!(
        posts_per_key.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "clusterwatch posted every alert"
    );
    assert_eq!(duplicated, 0, "no alert posted twice: {posts_per_key:?}");
    assert_eq!(delivered, expected.len() as f64, "delivered counter");
    assert!(
        expected_firing.iter().all(|k| notified.contains_key(k)),
        "the webhook was notified of each firing alert: {notified:?}"
    );
}

/// A spool bound of one: with Alertmanager down for the whole stream, each new alert drops the
/// one queued before it (the oldest goes, as `spool.rs` documents), every drop is counted, and
/// the single survivor on disk is the newest record.
#[test]
fn a_full_spool_drops_the_oldest_alert_and_counts_it() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let bootstrap = kafka_bootstrap();
    let topic = unique("sinks-bound-conversations");
    let dead_letter = unique("sinks-bound-dead-letter");
    let alerts_topic = unique("sinks-bound-alerts");
    let group = unique("sinks-bound-group");
    rt.block_on(create_topics(
        &bootstrap,
        &[(&topic, 1), (&dead_letter, 1), (&alerts_topic, 1)],
    ));
    let messages = traffic();
    rt.block_on(produce(&bootstrap, &topic, &messages));

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing will ever listen there.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let config = config(
        dir.path(),
        &RunTopics {
            bootstrap: &bootstrap,
            topic: &topic,
            dead_letter: &dead_letter,
            group: &group,
        },
        port,
        &nowhere,
        &alerts_topic,
        1,
    );
    let log = dir.path().join("clusterwatch.log");
    let child = start_run(&config, &log);
    let limit = Duration::from_secs(120);
    wait_until("the stream consumed", &log, limit, || {
        metric(port, "clusterwatch_events_consumed_total").unwrap_or(0.0) >= messages.len() as f64
    });
    // Let the alert stage finish what the last events decided.
    std::thread::sleep(Duration::from_secs(2));
    let dropped = sink_metric(port, "clusterwatch_alert_spool_dropped_total");
    let queued = sink_metric(port, "clusterwatch_alert_spool_records");
    let code = sigterm_and_wait(child, Duration::from_secs(60));
    assert_eq!(code, 0, "clean exit; log: {}", log_tail(&log));
    let records = reference_records(&bootstrap, &alerts_topic);
    let admitted = admitted(&records);
    let on_disk = spool::inspect(&dir.path().join("spool").join(SINK)).expect("spool readable");
    // With room for one, a record displaces the queued one: superseded when it is the same
    // alert, dropped (and counted) when it is another.
    let expected_drops = admitted
        .windows(2)
        .filter(|w| w[0].dedup_key() != w[1].dedup_key())
        .count();
    println!(
        "spool bound 1: {} alert records emitted, {} admitted to Alertmanager over {} alerts; \
         dropped {dropped} (expected {expected_drops}), {queued} queued, {} left on disk after \
         exit",
        records.len(),
        admitted.len(),
        admitted
            .iter()
            .map(|r| r.dedup_key())
            .collect::<BTreeSet<_>>()
            .len(),
        on_disk.len()
    );
    assert!(expected_drops >= 1, "two alerts compete for one place");
    assert_eq!(dropped, expected_drops as f64, "every drop counted");
    assert_eq!(queued, 1.0, "the bound holds in memory");
    assert_eq!(on_disk.len(), 1, "the bound holds on disk");
    let newest = admitted.last().expect("an admitted record");
    assert_eq!(&on_disk[0].record, *newest, "the newest record survives");
}
