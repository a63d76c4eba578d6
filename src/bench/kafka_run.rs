//! What `bench pipeline` and `bench soak` share: fresh topics on a real Kafka broker, the bundled
//! demo traffic produced into them (as fast as the broker takes it, or at a set rate), and a
//! `clusterwatch run` child consuming them, measured from outside through its `/metrics` and
//! `/proc/<pid>/status`. The process measured is the production binary on the production path
//! (`run_kafka`), with nothing of the benchmark's own in its memory.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::TimeZone;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::demo::traffic::{self, CampaignSpec, GeneratedMessage, TrafficSpec};

/// Organic events per generated chunk of traffic; each chunk has its own seed, so conversation
/// ids never repeat however long a run is.
const CHUNK_EVENTS: usize = 10_000;
/// Event time one chunk spans (the demo's density: a few thousand conversations an hour).
const CHUNK_EVENT_SECS: i64 = 3 * 3600;
/// One chunk in this many carries the demo's coordinated campaign, so alerts fire now and then.
const CAMPAIGN_EVERY_CHUNKS: u64 = 10;
/// Messages produced before their deliveries are awaited, at full speed.
const PRODUCE_BATCH: usize = 5_000;

/// A unique name on the shared broker: benchmarks never meet each other's topics or groups.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Unix time in milliseconds.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fresh input topic, its dead-letter topic and a consumer group, made for one measurement.
pub struct BenchTopics {
    pub bootstrap: String,
    pub topic: String,
    pub dead_letter: String,
    pub group: String,
    pub partitions: i32,
}

impl BenchTopics {
    pub async fn create(bootstrap: &str, prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
        let topics = BenchTopics {
            bootstrap: bootstrap.to_string(),
            topic: unique_name(&format!("{prefix}-conversations")),
            dead_letter: unique_name(&format!("{prefix}-dead-letter")),
            group: unique_name(&format!("{prefix}-group")),
            partitions,
        };
        let admin = admin_client(bootstrap)?;
        let new = [
            NewTopic::new(&topics.topic, partitions, TopicReplication::Fixed(1)),
            NewTopic::new(&topics.dead_letter, 1, TopicReplication::Fixed(1)),
        ];
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin.create_topics(&new, &options).await? {
            result.map_err(|(topic, e)| anyhow::anyhow!("cannot create topic {topic}: {e}"))?;
        }
        Ok(topics)
    }

    /// Deletes both topics (a soak writes gigabytes into them).
    pub async fn delete(&self) -> anyhow::Result<()> {
        use rdkafka::admin::AdminOptions;
        let admin = admin_client(&self.bootstrap)?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        for result in admin
            .delete_topics(&[self.topic.as_str(), self.dead_letter.as_str()], &options)
            .await?
        {
            result.map_err(|(topic, e)| anyhow::anyhow!("cannot delete topic {topic}: {e}"))?;
        }
        Ok(())
    }

    /// Sum over partitions of (the group's committed offset, the end offset), from the broker.
    pub async fn committed_and_end(&self) -> anyhow::Result<(i64, i64)> {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::{Offset, TopicPartitionList};
        let bootstrap = self.bootstrap.clone();
        let group = self.group.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        let query = move || -> anyhow::Result<(i64, i64)> {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", &group)
                .create()?;
            let mut list = TopicPartitionList::new();
            for p in 0..partitions {
                list.add_partition(&topic, p);
            }
            let committed = consumer.committed_offsets(list, Duration::from_secs(10))?;
            let (mut committed_sum, mut end_sum) = (0, 0);
            for p in 0..partitions {
                if let Some(Offset::Offset(o)) =
                    committed.find_partition(&topic, p).map(|e| e.offset())
                {
                    committed_sum += o;
                }
                let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
                end_sum += high;
            }
            Ok((committed_sum, end_sum))
        };
        tokio::task::spawn_blocking(query)
            .await
            .map_err(|e| anyhow::anyhow!("offset query panicked: {e}"))?
    }
}

fn admin_client(
    bootstrap: &str,
) -> anyhow::Result<rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create Kafka admin client: {e}"))
}

/// An endless stream of the demo's traffic: organic CLINC150/Banking77 requests, a coordinated
/// campaign now and then, in event-time order chunk after chunk. No invalid messages and no
/// redeliveries: the benchmark measures the path every valid event takes.
pub struct TrafficStream {
    seed: u64,
    chunk: u64,
    start_ms: i64,
    buffered: VecDeque<GeneratedMessage>,
}

impl TrafficStream {
    pub fn new(seed: u64) -> Self {
        let spec = TrafficSpec::default();
        TrafficStream {
            seed,
            chunk: 0,
            start_ms: spec.start.timestamp_millis(),
            buffered: VecDeque::new(),
        }
    }

    pub fn next_message(&mut self) -> GeneratedMessage {
        loop {
            if let Some(message) = self.buffered.pop_front() {
                return message;
            }
            self.generate_chunk();
        }
    }

    fn generate_chunk(&mut self) {
        let start = chrono::Utc
            .timestamp_millis_opt(self.start_ms + self.chunk as i64 * CHUNK_EVENT_SECS * 1000)
            .single()
            .unwrap_or_else(chrono::Utc::now);
        let spec = TrafficSpec {
            // Distinct per chunk: conversation and campaign account ids carry the seed.
            seed: self.seed.wrapping_mul(1_000_003).wrapping_add(self.chunk),
            organic_events: CHUNK_EVENTS,
            start,
            duration_secs: CHUNK_EVENT_SECS,
            campaign: (self.chunk % CAMPAIGN_EVERY_CHUNKS == 0).then(CampaignSpec::default),
            invalid_events: 0,
            duplicate_events: 0,
            ..TrafficSpec::default()
        };
        self.buffered.extend(traffic::generate(&spec));
        self.chunk += 1;
    }
}

/// Produces a [`TrafficStream`] into a topic. Each message's Kafka timestamp is the moment it is
/// handed to the producer, which is where the event→cluster latency starts.
pub struct TrafficProducer {
    producer: FutureProducer,
    topic: String,
    stream: TrafficStream,
    /// Messages the broker has acknowledged.
    produced: std::sync::Arc<AtomicU64>,
}

impl TrafficProducer {
    pub fn new(bootstrap: &str, topic: &str, seed: u64) -> anyhow::Result<Self> {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "2")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .map_err(|e| anyhow::anyhow!("cannot create the benchmark producer: {e}"))?;
        Ok(TrafficProducer {
            producer,
            topic: topic.to_string(),
            stream: TrafficStream::new(seed),
            produced: Default::default(),
        })
    }

    /// Messages acknowledged by the broker so far (shared, for samplers).
    pub fn produced_counter(&self) -> std::sync::Arc<AtomicU64> {
        self.produced.clone()
    }

    pub fn produced(&self) -> u64 {
        self.produced.load(Ordering::Relaxed)
    }

    /// Produces `count` messages as fast as the broker acknowledges them.
    pub async fn produce_count(&mut self, count: u64) -> anyhow::Result<()> {
        let mut left = count;
        while left > 0 {
            let n = left.min(PRODUCE_BATCH as u64);
            self.produce_batch(n as usize).await?;
            left -= n;
        }
        Ok(())
    }

    /// Produces at `rate` messages per second for `duration`, in small bursts paced against the
    /// clock: a burst that took long is caught up by the next one, so the average rate holds.
    pub async fn produce_at_rate(&mut self, rate: f64, duration: Duration) -> anyhow::Result<()> {
        anyhow::ensure!(rate > 0.0, "the produce rate must be positive");
        let started = Instant::now();
        let base = self.produced();
        let total = (rate * duration.as_secs_f64()).round() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let elapsed = started.elapsed().as_secs_f64();
            let due = ((rate * elapsed) as u64).min(total);
            let done = self.produced() - base;
            if done >= total {
                return Ok(());
            }
            if due > done {
                let n = (due - done).min(PRODUCE_BATCH as u64);
                self.produce_batch(n as usize).await?;
            }
        }
    }

    async fn produce_batch(&mut self, n: usize) -> anyhow::Result<()> {
        let messages: Vec<GeneratedMessage> = (0..n).map(|_| self.stream.next_message()).collect();
        let sends = messages.iter().map(|m| {
            let record = FutureRecord::to(&self.topic)
                .key(&m.key)
                .payload(&m.payload)
                .timestamp(now_ms());
            self.producer
                .send(record, Timeout::After(Duration::from_secs(60)))
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| anyhow::anyhow!("benchmark produce failed: {e}"))?;
            self.produced.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// How the child is configured beyond its topics.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// `hashing`, `static`, `transformer` or `onnx` (the `embedder.kind`).
    pub embedder: String,
    pub model_dir: PathBuf,
    /// Alerts also go to this Alertmanager, when given.
    pub alertmanager_url: Option<String>,
    /// Snapshots go to this directory, as in production, when given; without one the child
    /// acknowledges each event's offset as soon as it is applied.
    pub snapshot_dir: Option<PathBuf>,
}

impl ChildSpec {
    /// Why this embedder cannot run here (its model files are missing), if it cannot.
    pub fn missing_files(&self) -> Option<String> {
        let needed: Vec<PathBuf> = match self.embedder.as_str() {
            "transformer" | "minilm" => ["model.safetensors", "tokenizer.json", "config.json"]
                .iter()
                .map(|f| self.model_dir.join(f))
                .collect(),
            "static" => vec![
                self.model_dir
                    .join(crate::embed::static_model::DEFAULT_FILE_NAME),
                self.model_dir.join("tokenizer.json"),
            ],
            // The runtime library at its default place, relative to the working directory.
            "onnx" => vec![
                self.model_dir.join("model-int8.onnx"),
                self.model_dir.join("tokenizer.json"),
                self.model_dir.join("config.json"),
                crate::config::EmbedderSettings::default().onnx_runtime,
            ],
            _ => Vec::new(),
        };
        let missing: Vec<String> = needed
            .iter()
            .filter(|p| !p.is_file())
            .map(|p| p.display().to_string())
            .collect();
        (!missing.is_empty()).then(|| missing.join(", "))
    }
}

/// A `clusterwatch run` child on a bench topic; killed when dropped.
pub struct RunChild {
    child: Child,
    port: u16,
    log: PathBuf,
    http: reqwest::Client,
}

impl RunChild {
    /// Writes the config into `work_dir` and starts `clusterwatch run` on it.
    pub fn start(topics: &BenchTopics, spec: &ChildSpec, work_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(work_dir)?;
        let port = free_port()?;
        let model_dir =
            std::fs::canonicalize(&spec.model_dir).unwrap_or_else(|_| spec.model_dir.clone());
        let mut config = format!(
            "[kafka]\nbootstrap_servers = {:?}\ntopic = {:?}\ndead_letter_topic = {:?}\n\
             group_id = {:?}\n[embedder]\nkind = {:?}\nmodel_dir = {:?}\n[http]\n\
             listen = \"127.0.0.1:{port}\"\n",
            topics.bootstrap,
            topics.topic,
            topics.dead_letter,
            topics.group,
            spec.embedder,
            model_dir.display().to_string(),
        );
        if let Some(url) = &spec.alertmanager_url {
            config.push_str(&format!("[alerts]\nalertmanager_url = {url:?}\n"));
        }
        if let Some(dir) = &spec.snapshot_dir {
            config.push_str(&format!(
                "[snapshot]\ndir = {:?}\n",
                dir.display().to_string()
            ));
        }
        let config_path = work_dir.join(format!("{}.toml", spec.embedder));
        std::fs::write(&config_path, config)?;
        let log = work_dir.join(format!("{}.log", spec.embedder));
        let log_file = std::fs::File::create(&log)?;
        let exe = std::env::current_exe()?;
        let child = Command::new(exe)
            .args(["run", "--config"])
            .arg(&config_path)
            .env("CLUSTERWATCH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start clusterwatch run: {e}"))?;
        Ok(RunChild {
            child,
            port,
            log,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
        })
    }

    /// Where the child's log goes.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Fails with the log's tail if the child has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "clusterwatch run exited ({status}); its log {}:\n{}",
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until `/metrics` answers. The server starts before the embedder loads, so this is
    /// not yet consumption: callers time from the first processed event.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if self.scrape().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("clusterwatch run did not serve /metrics within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn scrape(&self) -> anyhow::Result<Scrape> {
        let body = self
            .http
            .get(format!("http://127.0.0.1:{}/metrics", self.port))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        Ok(Scrape::parse(&body))
    }

    /// Polls until `done` holds for a scrape; returns that scrape.
    pub async fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Scrape) -> bool,
    ) -> anyhow::Result<Scrape> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if let Ok(scrape) = self.scrape().await {
                if done(&scrape) {
                    return Ok(scrape);
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// (VmRSS, VmHWM) of the child in MiB.
    pub fn memory_mib(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1024.0
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// SIGTERM (drain and commit, as in production), waiting up to `within` for the exit.
    pub async fn stop(mut self, within: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "cannot signal clusterwatch run");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(
                    status.success(),
                    "clusterwatch run exited with {status}; its log {}:\n{}",
                    self.log.display(),
                    log_tail(&self.log)
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("clusterwatch run did not stop within {within:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RunChild {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// One `/metrics` page, parsed into samples.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    samples: Vec<Sample>,
}

#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// The histogram of event→cluster latency.
pub const LATENCY_METRIC: &str = "clusterwatch_event_cluster_latency_seconds";

impl Scrape {
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().ok()?,
                };
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => {
                        let body = rest.trim_end_matches('}');
                        let labels = body
                            .split("\",")
                            .filter(|p| !p.is_empty())
                            .filter_map(|pair| {
                                let (k, v) = pair.split_once('=')?;
                                Some((k.to_string(), v.trim_matches('"').to_string()))
                            })
                            .collect();
                        (name.to_string(), labels)
                    }
                    None => (series.to_string(), Vec::new()),
                };
                Some(Sample {
                    name,
                    labels,
                    value,
                })
            })
            .collect();
        Scrape { samples }
    }

    /// Sum of every series of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Sum of the series of `name` whose `label` is `value`.
    pub fn sum_where(&self, name: &str, label: &str, value: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name && s.labels.iter().any(|(k, v)| k == label && v == value))
            .map(|s| s.value)
            .sum()
    }

    /// Messages whose processing is finished: clustered, recognised as redelivered, or rejected.
    pub fn processed(&self) -> u64 {
        (self.sum("clusterwatch_events_clustered_total")
            + self.sum("clusterwatch_events_duplicate_total")
            + self.sum("clusterwatch_events_rejected_total")) as u64
    }

    /// Messages whose effect is complete, counted so that a scrape taken once it reaches `n`
    /// holds the latency observations of all `n`: the cluster stage counts a clustered event
    /// before it observes its latency.
    pub fn applied(&self) -> u64 {
        let observed = self.sum(&format!("{LATENCY_METRIC}_count"))
            + self.sum("clusterwatch_events_duplicate_total")
            + self.sum("clusterwatch_events_rejected_total");
        self.processed().min(observed as u64)
    }

    pub fn consumed(&self) -> u64 {
        self.sum("clusterwatch_events_consumed_total") as u64
    }

    /// Consumer lag summed over partitions (librdkafka's figure, refreshed every 5 s).
    pub fn lag(&self) -> i64 {
        self.sum("clusterwatch_kafka_consumer_lag") as i64
    }

    /// Live micro-clusters held in memory.
    pub fn micro_clusters(&self) -> u64 {
        self.sum_where("clusterwatch_live_clusters", "kind", "micro") as u64
    }

    /// Heap bytes the allocator counts as `state` (`in_use` or `free`); 0 where it cannot say.
    pub fn allocator_bytes(&self, state: &str) -> u64 {
        self.sum_where("clusterwatch_allocator_bytes", "state", state) as u64
    }

    /// Heap trims so far, and the seconds they took (`crate::heap`).
    pub fn heap_trims(&self) -> (u64, f64) {
        (
            self.sum("clusterwatch_allocator_trims_total") as u64,
            self.sum("clusterwatch_allocator_trim_seconds_total"),
        )
    }

    /// Size of the last snapshot written, in bytes (0 before the first).
    pub fn snapshot_bytes(&self) -> u64 {
        self.sum("clusterwatch_snapshot_size_bytes") as u64
    }

    /// Alert state changes to firing.
    pub fn alerts_fired(&self) -> u64 {
        self.sum_where("clusterwatch_alerts_total", "status", "firing") as u64
    }

    /// Seconds spent per stage (`clusterwatch_stage_duration_seconds_sum`).
    pub fn stage_seconds(&self) -> Vec<(String, f64)> {
        self.samples
            .iter()
            .filter(|s| s.name == "clusterwatch_stage_duration_seconds_sum")
            .filter_map(|s| {
                let stage = s.labels.iter().find(|(k, _)| k == "stage")?;
                Some((stage.1.clone(), s.value))
            })
            .collect()
    }

    /// The cumulative buckets `(le, count)` of the latency histogram, in `le` order.
    pub fn latency_buckets(&self) -> Vec<(f64, f64)> {
        let name = format!("{LATENCY_METRIC}_bucket");
        let mut buckets: Vec<(f64, f64)> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| {
                let le = s.labels.iter().find(|(k, _)| k == "le")?;
                let le = match le.1.as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().ok()?,
                };
                Some((le, s.value))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        buckets
    }
}

/// The latency histogram between two scrapes: what happened in between.
pub fn latency_between(before: &Scrape, after: &Scrape) -> LatencyHistogram {
    let earlier = before.latency_buckets();
    let buckets = after
        .latency_buckets()
        .into_iter()
        .map(|(le, count)| {
            let previous = earlier
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0.0, |(_, c)| *c);
            (le, (count - previous).max(0.0))
        })
        .collect();
    LatencyHistogram { buckets }
}

/// Cumulative histogram buckets, as Prometheus exposes them.
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<(f64, f64)>,
}

impl LatencyHistogram {
    pub fn count(&self) -> u64 {
        self.buckets.last().map_or(0.0, |(_, c)| *c) as u64
    }

    /// The `q` quantile, interpolated linearly inside its bucket the way Prometheus'
    /// `histogram_quantile` does; `None` without observations. Past the last finite bucket it is
    /// that bucket's bound (a lower bound of the truth).
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower.1) / in_bucket
                } else {
                    1.0
                };
                return Some(lower.0 + (le - lower.0) * fraction);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

/// A temporary directory for child configs and logs, removed on drop unless kept.
pub struct WorkDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl WorkDir {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(unique_name(prefix));
        std::fs::create_dir_all(&path)?;
        Ok(WorkDir { path, keep: false })
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn histogram(buckets: &[(f64, f64)]) -> LatencyHistogram {
        LatencyHistogram {
            buckets: buckets.to_vec(),
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_like_prometheus() {
        // 10 observations in (0, 0.1], 90 in (0.1, 0.2].
        let h = histogram(&[(0.1, 10.0), (0.2, 100.0), (f64::INFINITY, 100.0)]);
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - (0.1 + 0.1 * 40.0 / 90.0)).abs() < 1e-9, "{p50}");
        let p05 = h.quantile(0.05).unwrap();
        assert!((p05 - 0.05).abs() < 1e-9, "{p05}");
        assert_eq!(h.count(), 100);
        assert_eq!(
            histogram(&[(0.1, 0.0), (f64::INFINITY, 0.0)]).quantile(0.5),
            None
        );
        // Everything past the last finite bound: its bound, not infinity.
        assert_eq!(
            histogram(&[(0.1, 0.0), (f64::INFINITY, 5.0)]).quantile(0.99),
            Some(0.1)
        );
    }

    #[test]
    fn scrapes_are_parsed_and_differenced() {
        let before = Scrape::parse(
            "# HELP x\n\
             clusterwatch_event_cluster_latency_seconds_bucket{le=\"0.1\"} 5\n\
             clusterwatch_event_cluster_latency_seconds_bucket{le=\"+Inf\"} 5\n\
             clusterwatch_events_clustered_total{surface=\"chat\"} 7\n\
             clusterwatch_events_clustered_total{surface=\"api\"} 3\n\
             clusterwatch_alerts_total{kind=\"coordinated_cluster\",severity=\"page\",status=\"firing\"} 2\n\
             clusterwatch_alerts_total{kind=\"coordinated_cluster\",severity=\"page\",status=\"resolved\"} 1\n",
        );
        assert_eq!(before.processed(), 10);
        assert_eq!(before.alerts_fired(), 2);
        let after = Scrape::parse(
            "clusterwatch_event_cluster_latency_seconds_bucket{le=\"0.1\"} 5\n\
             clusterwatch_event_cluster_latency_seconds_bucket{le=\"+Inf\"} 9\n",
        );
        let between = latency_between(&before, &after);
        assert_eq!(between.count(), 4);
        assert_eq!(between.quantile(0.5), Some(0.1));
    }

    #[test]
    fn traffic_stream_never_repeats_a_conversation_id() {
        let mut stream = TrafficStream::new(3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(CHUNK_EVENTS + 500) {
            let m = stream.next_message();
            assert!(seen.insert(m.key), "repeated conversation id");
        }
        assert!(stream.chunk >= 2, "the stream went on into a second chunk");
    }
}
