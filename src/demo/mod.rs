//! `clusterwatch demo`: the production job on an embedded default, with no services and no
//! network.
//!
//! It starts librdkafka's in-process Kafka-protocol broker (`MockCluster`), produces the bundled
//! real traffic with an injected SMS-spam campaign into it, and runs the same [`run_kafka`] path
//! as `clusterwatch run` — consumer group, dead-letter topic, offsets, `/metrics` — printing
//! alerts as they fire and a k-anonymous cluster summary at the end.

pub mod traffic;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::cli::DemoArgs;
use crate::config::Settings;
use crate::decode::DecodeError;
use crate::export::clusters::ClusterTable;
use crate::export::Metrics;
use crate::run::{run_kafka, RunOptions};

/// The demo must finish well inside three minutes even on a slow two-core machine.
const DEMO_DEADLINE: Duration = Duration::from_secs(170);

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut settings = Settings::load(args.config.as_deref())?;
    settings.alerts.print = true;
    settings.http.listen = args.listen.clone();

    let mock = MockCluster::new(1)
        .map_err(|e| anyhow::anyhow!("cannot start the in-process broker: {e}"))?;
    mock.create_topic(&settings.kafka.topic, 4, 1)
        .map_err(|e| anyhow::anyhow!("cannot create topic: {e}"))?;
    mock.create_topic(&settings.kafka.dead_letter_topic, 1, 1)
        .map_err(|e| anyhow::anyhow!("cannot create dead-letter topic: {e}"))?;
    settings.kafka.bootstrap_servers = mock.bootstrap_servers();
    settings.kafka.group_id = "clusterwatch-demo".into();

    let spec = traffic::TrafficSpec {
        seed: args.seed,
        organic_events: args.organic_events,
        max_message_bytes: settings.limits.max_message_bytes,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    let campaign = messages
        .iter()
        .filter(|m| m.kind == traffic::MessageKind::Campaign)
        .count();
    let total = messages.len() as u64;
    println!("clusterwatch demo");
    println!(
        "  in-process Kafka broker at {}; topic `{}` (4 partitions), dead letter `{}`",
        settings.kafka.bootstrap_servers, settings.kafka.topic, settings.kafka.dead_letter_topic
    );
    println!(
        "  traffic: {} messages = {} organic (CLINC150 + Banking77), {} campaign (SMS spam `{}` from {} fresh accounts in {} min), {} redeliveries, {} invalid",
        total,
        spec.organic_events,
        campaign,
        traffic::DEMO_CAMPAIGN_KEY,
        spec.campaign.as_ref().map(|c| c.accounts).unwrap_or(0),
        spec.campaign.as_ref().map(|c| c.duration_secs / 60).unwrap_or(0),
        spec.duplicate_events,
        spec.invalid_events
    );

    let metrics = Metrics::new();
    let _trimmer = crate::heap::HeapTrimmer::start(&settings.memory, metrics.heap_trims.clone());
    let (trigger, _) = crate::shutdown::channel();
    tokio::spawn(crate::shutdown::on_signal(trigger.clone()));

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.bootstrap_servers)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "5")
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create demo producer: {e}"))?;
    let topic = settings.kafka.topic.clone();
    let producing = tokio::spawn(async move {
        for m in messages {
            let record = FutureRecord::to(&topic).key(&m.key).payload(&m.payload);
            if let Err((e, _)) = producer
                .send(record, Timeout::After(Duration::from_secs(30)))
                .await
            {
                return Err(anyhow::anyhow!("demo producer failed: {e}"));
            }
        }
        Ok::<(), anyhow::Error>(())
    });

    // Stop once every produced message has been acknowledged end to end (or at the deadline).
    let watcher = {
        let metrics = metrics.clone();
        let trigger = trigger.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if metrics.offsets_stored.get() >= total {
                    break;
                }
                if started.elapsed() > DEMO_DEADLINE {
                    eprintln!("demo deadline reached before all messages were processed");
                    break;
                }
            }
            trigger.trigger();
        })
    };

    let options = RunOptions {
        metrics: metrics.clone(),
        on_listen: Some(Box::new(move |addr| {
            println!("  metrics: http://{addr}/metrics   health: http://{addr}/healthz   clusters: http://{addr}/api/clusters");
            println!("  explorer: http://{addr}/explorer");
        })),
        ..Default::default()
    };
    println!("  loading all-MiniLM-L6-v2 and consuming; alerts print as they change state:\n");
    let report = run_kafka(settings.clone(), trigger.clone(), options).await?;
    producing
        .await
        .map_err(|e| anyhow::anyhow!("producer task panicked: {e}"))??;
    watcher.abort();

    let table = ClusterTable::build(&report.state, &report.gate);
    let fired = report
        .alerts
        .iter()
        .filter(|a| a.status == crate::alert::AlertStatus::Firing)
        .count();
    println!("\nsummary after {:.1} s", started.elapsed().as_secs_f64());
    println!("  events consumed      {}", metrics.events_consumed.get());
    let rejected: Vec<String> = DecodeError::REASONS
        .iter()
        .map(|r| (r, metrics.events_rejected.with_label_values(&[r]).get()))
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r}={n}"))
        .collect();
    println!(
        "  rejected             {} ({}), all in the dead-letter topic: {}",
        Metrics::counter_sum(&metrics.events_rejected),
        rejected.join(", "),
        metrics.dead_letter_written.get()
    );
    println!("  duplicates dropped   {}", metrics.events_duplicate.get());
    println!("  events clustered     {}", report.state.clustered_events());
    println!(
        "  live clusters        {} ({} pass the privacy gate; {} conversations sit in clusters too small to show)",
        table.totals.live_clusters,
        table.totals.visible_clusters,
        table.totals.conversations_in_hidden_clusters
    );
    println!(
        "  alerts               {} firing, {} state changes in all",
        fired,
        report.alerts.len()
    );
    println!("  offsets committed    {}", metrics.offsets_stored.get());
    println!(
        "\nk-anonymous clusters (largest {}):",
        table.clusters.len().min(10)
    );
    println!(
        "  {:>7}  {:>13}  {:>8}  {:>9}  {:>8}  label",
        "cluster", "conversations", "accounts", "tightness", "refusals"
    );
    for row in table.clusters.iter().take(10) {
        println!(
            "  {:>7}  {:>13}  {:>8}  {:>9.3}  {:>7.0}%  {}",
            row.cluster_id,
            row.conversations,
            row.accounts,
            row.tightness,
            row.refusal_rate * 100.0,
            row.label
        );
    }
    // The broker lives until the pipeline has committed; only now may it go.
    drop(mock);
    Ok(())
}
