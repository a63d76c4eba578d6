//! Shared helpers for the integration tests: the real embedding model (loaded once per test
//! binary), a real Kafka broker's address, topic setup, producing generated traffic, and sinks
//! that capture what the pipeline emits.

#![allow(dead_code)]

pub mod mock_ai;
pub mod private_alertmanager;
pub mod process;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clusterwatch::alert::sinks::AlertSink;
use clusterwatch::alert::AlertRecord;
use clusterwatch::demo::traffic::GeneratedMessage;
use clusterwatch::embed::Embedder;
use clusterwatch::pipeline::{AssignmentRecord, RecordSink};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The real all-MiniLM-L6-v2, loaded once. Fails loudly if `scripts/fetch-model.sh` was not run:
/// these tests exist to exercise the real model.
pub fn model() -> Arc<dyn Embedder> {
    static MODEL: OnceLock<Arc<dyn Embedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = repo_root().join("models/all-MiniLM-L6-v2");
            let e = clusterwatch::embed::minilm::MiniLmEmbedder::load(&dir, 128).unwrap_or_else(
                |e| panic!("{e}\nThe integration tests need the real model: run scripts/fetch-model.sh"),
            );
            Arc::new(e)
        })
        .clone()
}

/// Settings for tests: the model from the repo, no HTTP server unless a test asks.
pub fn test_settings() -> clusterwatch::config::Settings {
    let mut s = clusterwatch::config::Settings::default();
    s.embedder.model_dir = repo_root().join("models/all-MiniLM-L6-v2");
    s.http.listen = String::new();
    // The tests' streams compress hours into minutes and inject campaigns 20 minutes in: account
    // history matures (and fresh accounts become visible) after 10 event minutes, not an hour.
    s.cluster.fresh_account_secs = 600;
    s
}

/// Address of the real broker started by `scripts/kafka.sh start` (see `scripts/test.sh`).
pub fn kafka_bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP is not set: run the tests through scripts/test.sh, which starts a real Kafka broker")
    })
}

/// A name unique to this test run, so tests never see each other's topics or groups.
pub fn unique(prefix: &str) -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

pub async fn create_topics(bootstrap: &str, topics: &[(&str, i32)]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .expect("create_topics request");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

pub async fn produce(bootstrap: &str, topic: &str, messages: &[GeneratedMessage]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.max.bytes", "10000000")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let sends = messages.iter().map(|m| {
        let record = FutureRecord::to(topic).key(&m.key).payload(&m.payload);
        producer.send(record, Duration::from_secs(30))
    });
    for r in futures::future::join_all(sends).await {
        r.map_err(|(e, _)| e).expect("produce");
    }
}

/// Sum over partitions of (committed offset of `group`, end offset).
pub fn committed_and_end(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> (i64, i64) {
    try_committed_and_end(bootstrap, group, topic, partitions)
        .unwrap_or_else(|e| panic!("committed offsets of {group} on {topic}: {e}"))
}

/// [`committed_and_end`], with the broker's error instead of a panic (a broker that just
/// restarted answers "not coordinator" for a while).
pub fn try_committed_and_end(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Result<(i64, i64), rdkafka::error::KafkaError> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer.committed_offsets(tpl, Duration::from_secs(10))?;
    let mut total_committed = 0;
    let mut total_end = 0;
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        total_end += high;
        if let Some(Offset::Offset(o)) = committed.find_partition(topic, p).map(|e| e.offset()) {
            total_committed += o;
        }
    }
    Ok((total_committed, total_end))
}

/// One message read back from a topic.
pub struct ReadMessage {
    pub key: Option<String>,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Reads `expected` messages of a topic from the beginning.
pub async fn read_all(bootstrap: &str, topic: &str, expected: usize) -> Vec<ReadMessage> {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::{Headers, Message};
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < expected {
        let m = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected} messages in {topic}", out.len()))
            .expect("recv");
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ReadMessage {
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            headers,
            payload: m.payload().unwrap_or_default().to_vec(),
        });
    }
    out
}

/// Captures alert records.
#[derive(Clone, Default)]
pub struct CaptureAlerts(pub Arc<Mutex<Vec<AlertRecord>>>);

#[async_trait::async_trait]
impl AlertSink for CaptureAlerts {
    async fn deliver(&mut self, record: &AlertRecord) {
        self.0.lock().unwrap().push(record.clone());
    }
}

/// Captures assignment records.
#[derive(Clone, Default)]
pub struct CaptureAssignments(pub Arc<Mutex<Vec<AssignmentRecord>>>);

impl CaptureAssignments {
    /// The conversation ids captured so far.
    pub fn ids(&self) -> std::collections::BTreeSet<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.conversation_id.clone())
            .collect()
    }
}

impl RecordSink<AssignmentRecord> for CaptureAssignments {
    fn write(&mut self, record: &AssignmentRecord) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(record.clone());
        Ok(())
    }
    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Waits until `f` is true, polling; panics with `what` after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !f() {
        if std::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One hour of bundled organic traffic (1200 conversations) with a campaign `campaign_at_secs`
/// in and `invalid` bad messages and as many redeliveries, written as JSONL to `path`.
pub fn write_campaign_traffic(
    path: &std::path::Path,
    seed: u64,
    campaign_at_secs: i64,
    invalid: usize,
) {
    use clusterwatch::demo::traffic::{generate, CampaignSpec, TrafficSpec};
    let spec = TrafficSpec {
        seed,
        organic_events: 1200,
        duration_secs: 3600,
        campaign: Some(CampaignSpec {
            offset_secs: campaign_at_secs,
            ..Default::default()
        }),
        invalid_events: invalid,
        duplicate_events: invalid,
        ..Default::default()
    };
    let mut out = Vec::new();
    for m in generate(&spec) {
        out.extend_from_slice(&m.payload);
        out.push(b'\n');
    }
    std::fs::write(path, out).expect("write traffic");
}

/// Replays `input` in-process through the real model with the test settings; returns what
/// `/metrics` would serve afterwards.
pub fn replay_metrics(input: &std::path::Path) -> String {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let metrics = clusterwatch::export::Metrics::new();
    let outputs = clusterwatch::replay::ReplayOutputs::default();
    rt.block_on(clusterwatch::replay::replay(
        test_settings(),
        input,
        &outputs,
        metrics.clone(),
        Some(model()),
        Vec::new(),
    ))
    .expect("replay");
    metrics.render()
}
