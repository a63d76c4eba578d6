//! End to end against a real Apache Kafka broker (KRaft, started by `scripts/kafka.sh`), with the
//! real embedding model: every valid event clustered once, every invalid one dead-lettered with
//! its reason, committed offsets equal to end offsets, one alert for the injected campaign and
//! none for organic traffic, and a restart that resumes without double counting.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use clusterwatch::alert::{AlertKind, AlertStatus};
use clusterwatch::demo::traffic::{self, MessageKind, TrafficSpec};
use clusterwatch::export::Metrics;
use clusterwatch::run::{run_kafka, RunOptions};
use common::*;

const PARTITIONS: i32 = 4;

struct Setup {
    bootstrap: String,
    topic: String,
    dead_letter: String,
    group: String,
    settings: clusterwatch::config::Settings,
}

async fn setup(name: &str) -> Setup {
    let bootstrap = kafka_bootstrap();
    let topic = unique(&format!("{name}-conversations"));
    let dead_letter = unique(&format!("{name}-dead-letter"));
    let group = unique(&format!("{name}-group"));
    create_topics(&bootstrap, &[(&topic, PARTITIONS), (&dead_letter, 1)]).await;
    let mut settings = test_settings();
    settings.kafka.bootstrap_servers = bootstrap.clone();
    settings.kafka.topic = topic.clone();
    settings.kafka.dead_letter_topic = dead_letter.clone();
    settings.kafka.group_id = group.clone();
    settings.limits.max_message_bytes = 64 * 1024;
    Setup {
        bootstrap,
        topic,
        dead_letter,
        group,
        settings,
    }
}

/// Runs the pipeline until `stop_after` positions are acknowledged, then shuts it down.
async fn run_until(
    setup: &Setup,
    stop_after: u64,
) -> (
    clusterwatch::pipeline::PipelineReport,
    Metrics,
    CaptureAlerts,
    CaptureAssignments,
) {
    run_until_metrics(setup, move |m| m.offsets_stored.get() >= stop_after).await
}

/// Runs the pipeline until `done` holds for its metrics, then shuts it down.
async fn run_until_metrics(
    setup: &Setup,
    done: impl Fn(&Metrics) -> bool + Send + Sync + 'static,
) -> (
    clusterwatch::pipeline::PipelineReport,
    Metrics,
    CaptureAlerts,
    CaptureAssignments,
) {
    let metrics = Metrics::new();
    let alerts = CaptureAlerts::default();
    let assignments = CaptureAssignments::default();
    let (trigger, _) = clusterwatch::shutdown::channel();
    let watcher = {
        let metrics = metrics.clone();
        let trigger = trigger.clone();
        tokio::spawn(async move {
            wait_for(
                "the pipeline to get through the stream",
                Duration::from_secs(400),
                || done(&metrics),
            )
            .await;
            trigger.trigger();
        })
    };
    let options = RunOptions {
        metrics: metrics.clone(),
        extra_alert_sinks: vec![Box::new(alerts.clone())],
        embedder: Some(model()),
        assignments: Some(Box::new(assignments.clone())),
        ..Default::default()
    };
    let report = run_kafka(setup.settings.clone(), trigger, options)
        .await
        .expect("pipeline runs");
    watcher.await.expect("watcher");
    (report, metrics, alerts, assignments)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_events_are_clustered_once_invalid_ones_dead_lettered_and_offsets_committed() {
    let s = setup("e2e").await;
    let spec = TrafficSpec {
        seed: 11,
        organic_events: 4950,
        duration_secs: 3 * 3600,
        invalid_events: 50,
        duplicate_events: 25,
        max_message_bytes: s.settings.limits.max_message_bytes,
        ..Default::default()
    };
    let mut messages = traffic::generate(&spec);
    // Exactly 5,000 valid events: trim the organic tail to make room for the campaign.
    let mut valid = messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Organic | MessageKind::Campaign))
        .count();
    while valid > 5000 {
        let last_organic = messages
            .iter()
            .rposition(|m| m.kind == MessageKind::Organic)
            .expect("organic events");
        let removed = messages.remove(last_organic);
        // Its redeliveries must go too, or they would count as first deliveries.
        messages.retain(|m| !(m.kind == MessageKind::Duplicate && m.key == removed.key));
        valid -= 1;
    }
    let duplicates = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Duplicate)
        .count();
    let campaign_ids: BTreeSet<String> = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Campaign)
        .map(|m| m.key.clone())
        .collect();
    let valid = messages
        .iter()
        .filter(|m| matches!(m.kind, MessageKind::Organic | MessageKind::Campaign))
        .count();
    let mut expected_reasons: HashMap<String, &'static str> = HashMap::new();
    for m in &messages {
        if let MessageKind::Invalid(reason) = m.kind {
            expected_reasons.insert(m.key.clone(), reason);
        }
    }
    assert_eq!(valid, 5000);
    assert_eq!(expected_reasons.len(), 50);
    produce(&s.bootstrap, &s.topic, &messages).await;

    let (report, metrics, alerts, assignments) = run_until(&s, messages.len() as u64).await;

    // Every valid event clustered exactly once; redeliveries recognised.
    let assigned = assignments.0.lock().unwrap().clone();
    let assigned_ids: BTreeSet<&str> = assigned
        .iter()
        .map(|a| a.conversation_id.as_str())
        .collect();
    assert_eq!(assigned.len(), valid, "one assignment per valid event");
    assert_eq!(assigned_ids.len(), valid, "no conversation assigned twice");
    assert_eq!(report.state.clustered_events(), valid as u64);
    assert_eq!(metrics.events_duplicate.get(), duplicates as u64);
    assert_eq!(metrics.events_consumed.get(), messages.len() as u64);

    // Every invalid event in the dead-letter topic, with its own reason in a header.
    assert_eq!(Metrics::counter_sum(&metrics.events_rejected), 50);
    let dead = read_all(&s.bootstrap, &s.dead_letter, 50).await;
    assert_eq!(dead.len(), 50);
    let mut by_reason: BTreeMap<String, usize> = BTreeMap::new();
    for message in &dead {
        let key = message.key.as_deref().expect("dead letter keeps the key");
        let reason = message
            .headers
            .iter()
            .find(|(k, _)| k == "clusterwatch-reject-reason")
            .map(|(_, v)| v.clone())
            .expect("reason header");
        assert_eq!(
            expected_reasons.get(key).copied(),
            Some(reason.as_str()),
            "{key}"
        );
        *by_reason.entry(reason).or_default() += 1;
    }
    assert_eq!(
        by_reason.len(),
        7,
        "every reject reason exercised: {by_reason:?}"
    );
    for (reason, n) in &by_reason {
        assert_eq!(
            metrics
                .events_rejected
                .with_label_values(&[reason.as_str()])
                .get(),
            *n as u64,
            "rejected_total{{reason={reason}}}"
        );
    }

    // Committed offsets reached the end of every partition.
    let (committed, end) = committed_and_end(&s.bootstrap, &s.group, &s.topic, PARTITIONS);
    assert_eq!(committed, end, "committed offsets equal end offsets");
    assert_eq!(end, messages.len() as i64);

    // Exactly one coordinated-cluster alert fired, and it is the campaign's cluster.
    let alerts = alerts.0.lock().unwrap().clone();
    // One alert id as well as one cluster: the event clock waits for every owned partition, so a
    // partition whose first batch arrives late cannot make the campaign withdraw and reopen.
    let firing_ids: BTreeSet<&str> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::CoordinatedCluster && a.status == AlertStatus::Firing)
        .map(|a| a.alert_id.as_str())
        .collect();
    assert_eq!(firing_ids.len(), 1, "exactly one alert id: {alerts:#?}");
    let firing: BTreeSet<String> = alerts
        .iter()
        .filter(|a| a.kind == AlertKind::CoordinatedCluster && a.status == AlertStatus::Firing)
        .map(|a| a.dedup_key())
        .collect();
    assert_eq!(firing.len(), 1, "exactly one cluster alerted: {alerts:#?}");
    let alert = alerts
        .iter()
        .find(|a| a.status == AlertStatus::Firing)
        .unwrap();
    let cluster_of: HashMap<&str, u64> = assigned
        .iter()
        .map(|a| (a.conversation_id.as_str(), a.cluster_id))
        .collect();
    let campaign_in_alerted = campaign_ids
        .iter()
        .filter(|id| cluster_of.get(id.as_str()) == Some(&alert.cluster_id.unwrap()))
        .count();
    assert!(
        campaign_in_alerted * 10 >= campaign_ids.len() * 8,
        "the alerted cluster holds the campaign: {campaign_in_alerted} of {}",
        campaign_ids.len()
    );
    let evidence = alert.stats.cluster().expect("cluster evidence");
    assert!(evidence.accounts >= 25 && evidence.window_accounts >= 20);
    println!(
        "e2e: {} messages, {valid} clustered into {} clusters, {} rejected, 1 alert: {}",
        messages.len(),
        report.state.live_clusters(),
        dead.len(),
        clusterwatch::alert::sinks::describe(alert)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn organic_traffic_alone_fires_no_alert() {
    let s = setup("organic").await;
    let spec = TrafficSpec {
        seed: 23,
        organic_events: 3000,
        duration_secs: 2 * 3600,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    produce(&s.bootstrap, &s.topic, &messages).await;
    let (report, _, alerts, _) = run_until(&s, messages.len() as u64).await;
    assert_eq!(report.state.clustered_events(), 3000);
    let alerts = alerts.0.lock().unwrap().clone();
    assert!(
        alerts.iter().all(|a| a.status != AlertStatus::Firing),
        "organic traffic fired: {alerts:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_resumes_from_committed_offsets_without_double_counting() {
    let mut s = setup("restart").await;
    // Small channels, so the first run stops with most of the stream still unread.
    s.settings.pipeline.channel_capacity = 32;
    let spec = TrafficSpec {
        seed: 31,
        organic_events: 2400,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    produce(&s.bootstrap, &s.topic, &messages).await;

    let (first, _, _, first_assignments) = run_until(&s, 600).await;
    let (committed_after_first, end) =
        committed_and_end(&s.bootstrap, &s.group, &s.topic, PARTITIONS);
    assert!(
        committed_after_first >= 600 && committed_after_first < end,
        "first run committed {committed_after_first} of {end}"
    );
    let first_ids = first_assignments.ids();
    assert_eq!(first_ids.len() as u64, first.state.clustered_events());
    assert_eq!(
        first_ids.len() as i64,
        committed_after_first,
        "every committed offset is in state, and only those"
    );

    let remaining = end - committed_after_first;
    let (second, _, _, second_assignments) = run_until(&s, remaining as u64).await;
    let second_ids = second_assignments.ids();
    assert!(
        first_ids.is_disjoint(&second_ids),
        "an event was counted by both runs"
    );
    assert_eq!(first_ids.len() + second_ids.len(), messages.len());
    assert_eq!(second.state.clustered_events(), remaining as u64);
    let (committed, end) = committed_and_end(&s.bootstrap, &s.group, &s.topic, PARTITIONS);
    assert_eq!(committed, end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_clusters_and_offsets_from_the_snapshot() {
    let mut s = setup("snapshot").await;
    let snapshots = tempfile::tempdir().unwrap();
    s.settings.snapshot.dir = snapshots.path().display().to_string();
    s.settings.snapshot.every_events = 200;
    s.settings.pipeline.channel_capacity = 32;
    let spec = TrafficSpec {
        seed: 37,
        organic_events: 1600,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    produce(&s.bootstrap, &s.topic, &messages).await;
    let clustered = |m: &Metrics| Metrics::counter_sum(&m.events_clustered);

    let (first, _, _, first_assignments) =
        run_until_metrics(&s, move |m| clustered(m) >= 500).await;
    let path = clusterwatch::cluster::snapshot::snapshot_path(snapshots.path(), &s.group);
    let body = clusterwatch::cluster::snapshot::load(&path)
        .expect("snapshot readable")
        .expect("snapshot written at shutdown");
    let in_snapshot: i64 = body.offsets.values().sum();
    let first_count = first_assignments.0.lock().unwrap().len();
    assert_eq!(body.clustered_events, first.state.clustered_events());
    assert_eq!(
        in_snapshot as usize, first_count,
        "snapshot offsets = events in it"
    );
    let (committed, end) = committed_and_end(&s.bootstrap, &s.group, &s.topic, PARTITIONS);
    assert_eq!(
        committed, in_snapshot,
        "offsets are committed only up to the snapshot"
    );
    assert!(
        committed < end,
        "the first run stopped early ({committed} of {end})"
    );
    let first_clusters: BTreeSet<u64> = first.state.clusters().map(|c| c.id).collect();

    // A new consumer group has no committed offsets: it would read from the start. Given the
    // snapshot, it must skip everything the snapshot holds and count only the rest.
    s.settings.kafka.group_id = unique("snapshot-group-2");
    std::fs::copy(
        &path,
        clusterwatch::cluster::snapshot::snapshot_path(
            snapshots.path(),
            &s.settings.kafka.group_id,
        ),
    )
    .unwrap();
    let remaining = messages.len() - first_count;
    let (second, _, _, second_assignments) =
        run_until_metrics(&s, move |m| clustered(m) >= remaining as u64).await;
    let first_ids = first_assignments.ids();
    let second_ids = second_assignments.ids();
    assert!(
        first_ids.is_disjoint(&second_ids),
        "an event was counted twice"
    );
    assert_eq!(first_ids.len() + second_ids.len(), messages.len());
    assert_eq!(second.state.clustered_events(), messages.len() as u64);
    let total: u64 = second.state.clusters().map(|c| c.count).sum();
    assert_eq!(
        total,
        messages.len() as u64,
        "cluster counts hold every event once"
    );
    let kept = first_clusters
        .iter()
        .filter(|id| second.state.cluster(**id).is_some())
        .count();
    assert!(
        kept * 10 >= first_clusters.len() * 9,
        "cluster ids survive the restart: {kept} of {}",
        first_clusters.len()
    );
    let (committed, end) = committed_and_end(
        &s.bootstrap,
        &s.settings.kafka.group_id,
        &s.topic,
        PARTITIONS,
    );
    assert_eq!(committed, end);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opt_in_investigation_topic_carries_flagged_members_and_no_other_output_does() {
    let mut s = setup("investigation").await;
    let investigation_topic = unique("investigation-restricted");
    create_topics(&s.bootstrap, &[(&investigation_topic, 1)]).await;
    s.settings.investigation.enabled = true;
    s.settings.investigation.topic = investigation_topic.clone();
    let spec = TrafficSpec {
        seed: 31,
        organic_events: 1500,
        duration_secs: 3600,
        campaign: Some(traffic::CampaignSpec {
            offset_secs: 20 * 60,
            ..Default::default()
        }),
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    let account_of = |m: &traffic::GeneratedMessage| {
        serde_json::from_slice::<serde_json::Value>(&m.payload).unwrap()["account_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let campaign_accounts: BTreeSet<String> = messages
        .iter()
        .filter(|m| m.kind == MessageKind::Campaign)
        .map(account_of)
        .collect();
    let all_accounts: BTreeSet<String> = messages.iter().map(account_of).collect();
    produce(&s.bootstrap, &s.topic, &messages).await;
    let (report, metrics, alerts, _) = run_until(&s, messages.len() as u64).await;
    let alerts = alerts.0.lock().unwrap().clone();
    let firing: Vec<_> = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "the campaign fires once: {alerts:#?}");
    let written = metrics.investigation_records.get() as usize;
    assert!(written > 0, "records were delivered");
    let records: Vec<serde_json::Value> = read_all(&s.bootstrap, &investigation_topic, written)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).expect("JSON record"))
        .collect();
    let flagged = firing[0].cluster_id.unwrap();
    let mut members = BTreeSet::new();
    for r in &records {
        assert_eq!(r["alert_id"], firing[0].alert_id.as_str());
        assert_eq!(r["cluster_id"], flagged);
        members.insert(r["account_id"].as_str().unwrap().to_string());
    }
    let from_campaign = members.intersection(&campaign_accounts).count();
    eprintln!(
        "investigation: {written} records, {} distinct accounts, {from_campaign} of {} campaign accounts",
        members.len(),
        campaign_accounts.len()
    );
    assert!(
        from_campaign * 10 >= campaign_accounts.len() * 9,
        "at least 90% of the campaign's accounts are named"
    );
    // The ids go nowhere else: not to metrics, alerts or the cluster table.
    let elsewhere = format!(
        "{}{}{}",
        metrics.render(),
        serde_json::to_string(&alerts).unwrap(),
        serde_json::to_string(&clusterwatch::export::clusters::ClusterTable::build(
            &report.state,
            &report.gate
        ))
        .unwrap()
    );
    for account in &all_accounts {
        assert!(
            !elsewhere.contains(&format!("\"{account}\"")) && !elsewhere.contains(account.as_str()),
            "{account} leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_embedder_is_refused_until_the_clusters_are_reset() {
    let mut s = setup("embedder-change").await;
    let snapshots = tempfile::tempdir().unwrap();
    s.settings.snapshot.dir = snapshots.path().display().to_string();
    let spec = TrafficSpec {
        seed: 41,
        organic_events: 200,
        duration_secs: 600,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    produce(&s.bootstrap, &s.topic, &messages).await;
    // MiniLM builds the state and its snapshot…
    // (The final snapshot is written as the run drains.)
    let (report, _, _, _) =
        run_until_metrics(&s, |m| Metrics::counter_sum(&m.events_clustered) >= 200).await;
    assert_eq!(report.state.clustered_events(), 200);

    // …then the deployment switches to an embedding service.
    let mock = common::mock_ai::MockAi::start(1, 384).await;
    let mut changed = s.settings.clone();
    changed.embedder.kind = clusterwatch::config::EmbedderKind::Http;
    changed.embedder.http.endpoint = mock.url();
    changed.embedder.http.model = "another-model".into();
    changed.embedder.http.dimension = 384;
    let (trigger, _) = clusterwatch::shutdown::channel();
    let refused = run_kafka(changed.clone(), trigger, RunOptions::default()).await;
    let error = format!(
        "{:#}",
        refused.err().expect("a different embedder is refused")
    );
    assert!(
        error.contains("--reset-clusters") && error.contains("http-openai:another-model:384"),
        "the error says why and what to do: {error}"
    );

    // With --reset-clusters the old state is set aside and the new embedder starts afresh.
    let (trigger, _) = clusterwatch::shutdown::channel();
    let stopper = {
        let trigger = trigger.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            trigger.trigger();
        })
    };
    let report = run_kafka(
        changed,
        trigger,
        RunOptions {
            reset_clusters: true,
            ..Default::default()
        },
    )
    .await
    .expect("starts after the reset");
    stopper.await.unwrap();
    assert_eq!(report.state.clustered_events(), 0, "nothing new to read");
    let set_aside = std::fs::read_dir(snapshots.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().contains(".reset-"));
    assert!(set_aside, "the old snapshot is kept aside, not deleted");
}
