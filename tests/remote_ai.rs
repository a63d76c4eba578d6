//! The LLM summarizer and the HTTP embedder against a test server that speaks their real wire
//! formats and injects faults on command (see `common/mock_ai.rs`): no event is dropped or
//! duplicated however the services fail, and the circuit breaker opens and recovers.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clusterwatch::config::{EmbedderKind, Settings, SummarizerKind};
use clusterwatch::demo::traffic::{self, TrafficSpec};
use clusterwatch::embed::http::EmbeddingProtocol;
use clusterwatch::export::Metrics;
use clusterwatch::llm::{LlmClient, Protocol};
use clusterwatch::remote::breaker::BreakerState;
use clusterwatch::remote::RemoteSettings;
use clusterwatch::summarize::Summarizer;
use common::mock_ai::{MockAi, MOCK_KEY};
use common::*;

const KEY_VAR: &str = "CLUSTERWATCH_TEST_MOCK_AI_KEY";
const DIMENSION: usize = 128;

/// Short timeouts and backoffs, so a fault costs milliseconds, not seconds.
fn fast_remote() -> RemoteSettings {
    RemoteSettings {
        max_concurrency: 16,
        timeout_ms: 400,
        max_attempts: 4,
        backoff_initial_ms: 20,
        backoff_max_ms: 200,
        retry_after_max_ms: 1_000,
        breaker_window: 20,
        breaker_failure_ratio: 0.8,
        breaker_open_ms: 300,
    }
}

/// Settings pointing the summarizer and the embedder at `mock`.
pub fn remote_settings(mock: &MockAi, llm: Protocol, embed: EmbeddingProtocol) -> Settings {
    std::env::set_var(KEY_VAR, MOCK_KEY);
    let mut s = test_settings();
    s.summarizer.kind = SummarizerKind::Llm;
    s.llm.protocol = llm;
    s.llm.endpoint = mock.url();
    s.llm.model = "mock-model".into();
    s.llm.api_key_env = KEY_VAR.into();
    s.llm.remote = fast_remote();
    s.llm.name_clusters = false;
    s.llm.audit_labels = false;
    s.pipeline.summarize_concurrency = 16;
    s.embedder.kind = EmbedderKind::Http;
    s.embedder.http.protocol = embed;
    s.embedder.http.endpoint = mock.url();
    s.embedder.http.model = "mock-hash".into();
    s.embedder.http.dimension = DIMENSION;
    s.embedder.http.api_key_env = KEY_VAR.into();
    s.embedder.http.remote = fast_remote();
    s
}

fn organic(n: usize, seed: u64, path: &Path) -> BTreeSet<String> {
    let spec = TrafficSpec {
        seed,
        organic_events: n,
        duration_secs: 3600,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    let messages = traffic::generate(&spec);
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    for m in &messages {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        ids.insert(v["conversation_id"].as_str().unwrap().to_string());
        out.extend_from_slice(&m.payload);
        out.push(b'\n');
    }
    std::fs::write(path, out).unwrap();
    assert_eq!(ids.len(), n, "generated ids are unique");
    ids
}

fn assigned_ids(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["conversation_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// Replays `input` with the services named in `settings` (built by the replay itself, as `run`
/// builds them); returns the run's metrics.
async fn replay_with_services(
    settings: Settings,
    input: &Path,
    outputs: &clusterwatch::replay::ReplayOutputs,
) -> Metrics {
    let metrics = Metrics::new();
    clusterwatch::replay::replay(settings, input, outputs, metrics.clone(), None, Vec::new())
        .await
        .expect("the replay completes whatever the services do");
    metrics
}

/// Replays `n` organic events through both services at `failure_rate` and checks every event
/// came out exactly once. Returns (llm, fallback) summary counts.
async fn replay_through_faults(
    llm: Protocol,
    embed: EmbeddingProtocol,
    n: usize,
    failure_rate: f64,
) -> (u64, u64) {
    let mock = MockAi::start(11, DIMENSION).await;
    mock.set_failure_rate(failure_rate);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let ids = organic(n, 21, &input);
    let outputs = clusterwatch::replay::ReplayOutputs {
        assignments: Some(dir.path().join("assignments.jsonl")),
        dead_letter: Some(dir.path().join("dead.jsonl")),
        ..Default::default()
    };
    let settings = remote_settings(&mock, llm, embed);
    let metrics = replay_with_services(settings, &input, &outputs).await;

    let assigned = assigned_ids(&dir.path().join("assignments.jsonl"));
    let unique: BTreeSet<String> = assigned.iter().cloned().collect();
    let dead = std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap();
    let by_llm = metrics.summaries.with_label_values(&["llm"]).get();
    let by_fallback = metrics.summaries.with_label_values(&["fallback"]).get();
    let stats = mock.stats();
    let injected: u64 = stats.faults.values().sum();
    eprintln!(
        "{llm:?}+{embed:?} at {:.0}% faults: events in {n}, summarized by LLM {by_llm}, by fallback {by_fallback}, \
         clustered {} (unique {}), dropped {}, duplicated {}, dead-lettered {}; server: {:?} requests, {injected} faults injected {:?}, \
         fallback reasons: {}",
        failure_rate * 100.0,
        assigned.len(),
        unique.len(),
        n - unique.len(),
        assigned.len() - unique.len(),
        dead.lines().count(),
        stats.requests,
        stats.faults,
        ["rate_limited", "server_error", "timeout", "transport", "bad_response", "rejected", "breaker_open"]
            .iter()
            .map(|r| format!("{r}={}", metrics.summarizer_fallbacks.with_label_values(&[r]).get()))
            .collect::<Vec<_>>()
            .join(" "),
    );
    assert_eq!(dead.lines().count(), 0, "nothing dead-lettered");
    assert_eq!(assigned.len(), n, "every event clustered once, none twice");
    assert_eq!(unique, ids, "exactly the input's conversations");
    assert_eq!(
        by_llm + by_fallback,
        n as u64,
        "every event summarized once"
    );
    assert_eq!(
        stats.unauthorized, 0,
        "credentials sent in the protocol's way"
    );
    if failure_rate > 0.0 {
        assert!(injected > 0);
        for fault in common::mock_ai::ALL_FAULTS {
            assert!(
                stats.faults.get(&fault).copied().unwrap_or(0) > 0,
                "{fault:?} was injected"
            );
        }
        assert!(
            metrics.remote_retries.with_label_values(&["embed"]).get() > 0
                && metrics
                    .remote_retries
                    .with_label_values(&["summarize"])
                    .get()
                    > 0,
            "both services were retried"
        );
    }
    assert!(
        metrics
            .llm_input_tokens
            .with_label_values(&["summarize"])
            .get()
            > 0
    );
    let text = metrics.render();
    assert!(text.contains("clusterwatch_remote_request_duration_seconds_bucket"));
    (by_llm, by_fallback)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_faults_drop_and_duplicate_nothing_anthropic_and_openai_embeddings() {
    let (by_llm, by_fallback) =
        replay_through_faults(Protocol::Anthropic, EmbeddingProtocol::Openai, 2000, 0.3).await;
    assert!(by_fallback > 0, "some events went through the fallback");
    assert!(
        by_llm > by_fallback,
        "most events were summarized by the LLM"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thirty_percent_faults_drop_and_duplicate_nothing_openai_chat_and_tei() {
    let (by_llm, _) =
        replay_through_faults(Protocol::Openai, EmbeddingProtocol::Tei, 600, 0.3).await;
    assert!(by_llm > 0);
}

fn event(i: usize) -> clusterwatch::event::ConversationEvent {
    let json = serde_json::json!({
        "conversation_id": format!("conv-breaker-{i}"),
        "account_id": format!("acct-{i}"),
        "timestamp": "2026-11-27T08:00:00Z",
        "surface": "chat",
        "turns": [{"role": "user", "content": format!("Please translate sentence number {i} into French")}],
    });
    clusterwatch::decode::decode(json.to_string().as_bytes(), &Default::default())
        .unwrap()
        .event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_on_an_outage_and_recovers_through_a_probe() {
    let mock = MockAi::start(3, DIMENSION).await;
    let mut settings = remote_settings(&mock, Protocol::Anthropic, EmbeddingProtocol::Openai);
    settings.llm.remote.max_attempts = 1;
    settings.llm.remote.breaker_window = 3;
    settings.llm.remote.breaker_failure_ratio = 1.0;
    settings.llm.remote.breaker_open_ms = 500;
    let metrics = Metrics::new();
    let client = Arc::new(LlmClient::new(&settings.llm, metrics.clone()).unwrap());
    let summarizer = clusterwatch::summarize::llm::LlmSummarizer::new(
        client.clone(),
        clusterwatch::summarize::offline::OfflineSummarizer::default(),
        metrics.clone(),
    );

    mock.set_outage(true);
    for i in 0..3 {
        summarizer.summarize(&event(i)).await.expect("falls back");
    }
    assert_eq!(client.breaker_state(), BreakerState::Open);
    let sent = mock.stats().requests["/v1/messages"];
    for i in 3..10 {
        summarizer.summarize(&event(i)).await.expect("falls back");
    }
    assert_eq!(
        mock.stats().requests["/v1/messages"],
        sent,
        "an open breaker sends nothing"
    );
    assert_eq!(
        metrics
            .summarizer_fallbacks
            .with_label_values(&["breaker_open"])
            .get(),
        7
    );
    assert_eq!(
        metrics
            .summarizer_fallbacks
            .with_label_values(&["server_error"])
            .get(),
        3
    );
    assert!(metrics
        .render()
        .contains("clusterwatch_remote_breaker_state{stage=\"llm\"} 2"));

    // After the open time one probe goes through; while the service is still out it reopens.
    tokio::time::sleep(Duration::from_millis(550)).await;
    summarizer.summarize(&event(10)).await.unwrap();
    assert_eq!(
        client.breaker_state(),
        BreakerState::Open,
        "failed probe reopens"
    );

    mock.set_outage(false);
    tokio::time::sleep(Duration::from_millis(550)).await;
    summarizer.summarize(&event(11)).await.unwrap();
    assert_eq!(
        client.breaker_state(),
        BreakerState::Closed,
        "a good probe closes it"
    );
    summarizer.summarize(&event(12)).await.unwrap();
    assert_eq!(metrics.summaries.with_label_values(&["llm"]).get(), 2);

    // A redelivered conversation is answered from the cache: no request.
    let sent = mock.stats().requests["/v1/messages"];
    summarizer.summarize(&event(12)).await.unwrap();
    assert_eq!(mock.stats().requests["/v1/messages"], sent);
    assert_eq!(metrics.summaries.with_label_values(&["cached"]).get(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_embedding_outage_holds_events_until_the_service_returns() {
    let mock = Arc::new(MockAi::start(5, DIMENSION).await);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let ids = organic(300, 8, &input);
    let outputs = clusterwatch::replay::ReplayOutputs {
        assignments: Some(dir.path().join("assignments.jsonl")),
        dead_letter: Some(dir.path().join("dead.jsonl")),
        ..Default::default()
    };
    let mut settings = remote_settings(&mock, Protocol::Anthropic, EmbeddingProtocol::Tei);
    settings.summarizer.kind = SummarizerKind::Offline;
    settings.embedder.http.remote.breaker_window = 2;
    settings.embedder.http.remote.breaker_failure_ratio = 1.0;
    mock.set_outage(true);
    let restore = {
        let mock = mock.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            mock.set_outage(false);
        })
    };
    let metrics = replay_with_services(settings, &input, &outputs).await;
    restore.await.unwrap();
    let assigned = assigned_ids(&dir.path().join("assignments.jsonl"));
    assert_eq!(assigned.len(), 300);
    assert_eq!(assigned.into_iter().collect::<BTreeSet<_>>(), ids);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dead.jsonl")).unwrap(),
        ""
    );
    assert!(
        metrics
            .remote_failures
            .with_label_values(&["embed", "breaker_open"])
            .get()
            > 0,
        "the embedder's breaker opened during the outage"
    );
    assert!(
        metrics
            .remote_failures
            .with_label_values(&["embed", "server_error"])
            .get()
            > 0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clusters_topics_and_domains_get_contrastive_llm_names_that_passed_both_auditors() {
    let mock = MockAi::start(13, DIMENSION).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    let spec = TrafficSpec {
        seed: 4,
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
    let mut lines = Vec::new();
    for m in traffic::generate(&spec) {
        lines.extend_from_slice(&m.payload);
        lines.push(b'\n');
    }
    std::fs::write(&input, lines).unwrap();
    let mut settings = remote_settings(&mock, Protocol::Anthropic, EmbeddingProtocol::Openai);
    settings.llm.name_clusters = true;
    settings.llm.audit_labels = true;
    settings.cluster.hierarchy.rebuild_every_events = 500;
    settings.cluster.hierarchy.apply_after_events = 100;
    // Small gates so the organic clusters of this short stream are visible too.
    settings.privacy.min_accounts = 5;
    settings.privacy.min_conversations = 5;
    let outputs = clusterwatch::replay::ReplayOutputs {
        clusters: Some(dir.path().join("clusters.json")),
        ..Default::default()
    };
    let metrics = replay_with_services(settings, &input, &outputs).await;
    let table: clusterwatch::export::clusters::ClusterTable =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("clusters.json")).unwrap())
            .unwrap();
    let generic = clusterwatch::privacy::GENERIC_LABEL;
    assert!(
        table.clusters.len() >= 3,
        "visible clusters: {}",
        table.clusters.len()
    );
    let named: Vec<_> = table
        .clusters
        .iter()
        .filter(|r| r.description.is_some())
        .collect();
    eprintln!(
        "{} visible clusters, {} with LLM names; names made {}, refused {}, failed {}",
        table.clusters.len(),
        named.len(),
        metrics.cluster_names.with_label_values(&["named"]).get(),
        metrics.cluster_names.with_label_values(&["refused"]).get(),
        metrics.cluster_names.with_label_values(&["failed"]).get(),
    );
    assert!(!named.is_empty(), "some clusters carry LLM names");
    for row in &table.clusters {
        // With an LLM, a label is a name that passed both auditors, or the generic label — never
        // an unaudited keyword label.
        assert!(
            row.label == generic || row.description.is_some(),
            "unaudited label shown: {row:?}"
        );
        assert!(row.label.split_whitespace().count() <= 10);
    }
    assert!(
        table.clusters.iter().any(|r| r
            .topic_label
            .as_deref()
            .is_some_and(|l| l != generic && !l.contains('·'))),
        "topics are named by the LLM"
    );
    assert!(
        table.clusters.iter().any(|r| r
            .domain_label
            .as_deref()
            .is_some_and(|l| l != generic && !l.contains('·'))),
        "domains are named by the LLM"
    );
    assert!(metrics.llm_input_tokens.with_label_values(&["name"]).get() > 0);
    assert!(metrics.llm_input_tokens.with_label_values(&["audit"]).get() > 0);
    let prompts = mock.prompts.lock().unwrap().clone();
    let naming: Vec<&String> = prompts
        .iter()
        .filter(|p| p.contains("<cluster_statements>"))
        .collect();
    assert!(!naming.is_empty());
    for p in naming {
        let section = |tag: &str| {
            p.split(&format!("<{tag}>"))
                .nth(1)
                .and_then(|s| s.split(&format!("</{tag}>")).next())
                .unwrap()
                .lines()
                .filter(|l| l.starts_with("- "))
                .count()
        };
        assert!((1..=50).contains(&section("cluster_statements")));
        assert!((1..=50).contains(&section("contrastive_statements")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auditors_refuse_identifying_names_and_count_them() {
    use clusterwatch::cluster::names::{Level, NameKey, NamingOutcome, NamingRequest};
    let mock = MockAi::start(17, DIMENSION).await;
    let mut settings = remote_settings(&mock, Protocol::Openai, EmbeddingProtocol::Openai);
    settings.llm.name_clusters = true;
    settings.llm.audit_labels = true;
    let metrics = Metrics::new();
    let client = Arc::new(LlmClient::new(&settings.llm, metrics.clone()).unwrap());
    let namer = clusterwatch::naming::Namer::new(client, metrics.clone()).unwrap();
    let request = |id: u64, first: &str, vocabulary: &[&str]| NamingRequest {
        key: NameKey {
            level: Level::Cluster,
            id,
        },
        count: 60,
        inside: vec![first.to_string(), "another summary".into()],
        outside: vec!["something else".into()],
        keyword_label: "prize · notice".into(),
        vocabulary: vocabulary.iter().map(|w| w.to_string()).collect(),
    };
    // The name the mock makes carries a proper noun the cluster's accounts did not use.
    let r = namer
        .name(request(
            1,
            "send prize notices from Quellmoor to customers",
            &[],
        ))
        .await;
    assert!(matches!(
        r.outcome,
        NamingOutcome::Refused(clusterwatch::privacy::LabelVerdict::RareProperNoun)
    ));
    // Common in the cluster, so the rules pass it; the LLM auditor rates it 2.
    let r = namer
        .name(request(
            2,
            "send prize notices from Zorblax to customers",
            &["zorblax"],
        ))
        .await;
    assert!(matches!(
        r.outcome,
        NamingOutcome::Refused(clusterwatch::privacy::LabelVerdict::LlmAuditor)
    ));
    let r = namer
        .name(request(3, "plan a birthday party for children", &[]))
        .await;
    match r.outcome {
        NamingOutcome::Named { name, description } => {
            assert_eq!(name, "plan a birthday party for children");
            assert!(description.unwrap().starts_with("Users asked"));
        }
        other => panic!("expected a name, got {other:?}"),
    }
    let refused = |reason: &str| {
        metrics
            .labels_audit_refused
            .with_label_values(&[reason])
            .get()
    };
    assert_eq!(
        (refused("rare_proper_noun"), refused("llm_auditor")),
        (1, 1)
    );
    assert_eq!(metrics.cluster_names.with_label_values(&["named"]).get(), 1);

    // The model down: no name, asked again later; nothing is shown meanwhile.
    mock.set_outage(true);
    let r = namer.name(request(4, "plan a trip", &[])).await;
    assert!(matches!(r.outcome, NamingOutcome::Unavailable));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_model_down_labels_stay_generic_and_the_run_ends_without_waiting_for_names() {
    let mock = MockAi::start(19, DIMENSION).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("events.jsonl");
    organic(400, 6, &input);
    let mut settings = remote_settings(&mock, Protocol::Anthropic, EmbeddingProtocol::Openai);
    settings.llm.name_clusters = true;
    settings.llm.audit_labels = true;
    settings.llm.remote.max_attempts = 1;
    // The embedder has its own endpoint settings; only the model is down.
    settings.embedder.http.endpoint = MockAi::start(20, DIMENSION).await.url();
    settings.privacy.min_accounts = 3;
    settings.privacy.min_conversations = 3;
    mock.set_outage(true);
    let outputs = clusterwatch::replay::ReplayOutputs {
        clusters: Some(dir.path().join("clusters.json")),
        ..Default::default()
    };
    // Well inside the 120 s the end-of-input drain would wait for names still being made.
    let metrics = tokio::time::timeout(
        Duration::from_secs(60),
        replay_with_services(settings, &input, &outputs),
    )
    .await
    .expect("a model that is down does not hold up the end of the run");
    assert_eq!(
        metrics.summaries.with_label_values(&["fallback"]).get(),
        400
    );
    assert!(metrics.cluster_names.with_label_values(&["failed"]).get() > 0);
    let table: clusterwatch::export::clusters::ClusterTable =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("clusters.json")).unwrap())
            .unwrap();
    assert!(!table.clusters.is_empty());
    assert!(table
        .clusters
        .iter()
        .all(|r| r.label == clusterwatch::privacy::GENERIC_LABEL && r.description.is_none()));
}
