//! The k-anonymity gate holds on every output: a cluster of 24 distinct accounts is invisible in
//! every output; at 25 it appears.
//!
//! DESIGN §4 promises that a cluster is shown anywhere — alerts, the cluster table, the HTTP API,
//! metrics, lifecycle counts — only once it holds `privacy.min_accounts` (25) distinct accounts and
//! `privacy.min_conversations` (50) conversations. Unit tests check `PrivacyGate` on counts; this
//! test checks the promise end to end, where a leak would actually happen: each output path builds
//! its own view of the state, and one that forgot the gate would show a small cluster.
//!
//! The input is organic background traffic plus two tight campaigns — near-identical scam requests
//! from exactly N accounts, three conversations each, within five event minutes — which the
//! coordinated detector would flag if the gate let it. The first ("archived") campaign is followed
//! by twelve quiet days, so a maintenance pass archives it and its `died` lifecycle record (the one
//! lifecycle line that carries final counts) is on the record; the second ("live") campaign ends
//! the input, so it is live in the final table, API and metrics. The input is replayed in-process
//! through the real pipeline and the real MiniLM model with N = 24 (72 conversations per campaign,
//! so only the account gate hides them) and with N = 25. Each campaign's cluster id is taken from
//! `--assignments-out` (the contract output that maps every conversation id to its cluster; not a
//! display output). With 24 accounts neither cluster is in the `--clusters-out` table (only counted
//! in the hidden totals), in any alert record, in lifecycle counts, in `/metrics` labels or the
//! visible-clusters gauge, or in `/api/clusters` served by the real HTTP server; with 25 the live
//! one is in the table and the API, the archived one's `died` record carries its counts, and the
//! coordinated alert names both.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use clusterwatch::cluster::ClusterId;
use clusterwatch::demo::traffic::{self, TrafficSpec};
use clusterwatch::export::clusters::{ClusterRow, ClusterTable};
use clusterwatch::export::http::Health;
use clusterwatch::export::view::ClusterView;
use clusterwatch::export::Metrics;
use clusterwatch::replay::{replay, ReplayOutputs};
use common::{model, test_settings};
use serde_json::{json, Value};

/// Conversations each campaign account starts.
const ROUNDS: usize = 3;
/// Event seconds between consecutive campaign conversations (72–75 of them: under five minutes).
const CAMPAIGN_STEP_SECS: usize = 4;
const DAY0_ORGANIC_EVENTS: usize = 400;
const DAY12_ORGANIC_EVENTS: usize = 150;
/// Maintenance (archive, merge, split) every this many clustered events instead of the default
/// 1000, so that a pass falls in the day-12 traffic of a ~700-event input and archives the day-0
/// clusters (a weight of 75 halves twelve times in twelve days: below `archive_weight` 0.05).
const MAINTENANCE_EVERY_EVENTS: u64 = 200;

const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// A campaign: one request template, sent by every account `ROUNDS` times in five minutes.
struct Campaign {
    tag: &'static str,
    date: &'static str,
    /// Seconds after 08:00 of `date` when it starts.
    start_secs: usize,
    text: fn(&str) -> String,
}

/// Day 0, archived by day 12.
const ARCHIVED: Campaign = Campaign {
    tag: "archived",
    date: "2026-11-27",
    start_secs: 10 * 60,
    text: |day| {
        format!(
            "Send this text message to every number on my list, same wording: congratulations, \
             your mobile number won the weekly prize draw. Text the word CLAIM back and pay the \
             small release fee before {day} to collect your prize."
        )
    },
};

/// Day 12, the end of the input.
const LIVE: Campaign = Campaign {
    tag: "live",
    date: "2026-12-09",
    start_secs: 40 * 60,
    text: |day| {
        format!(
            "Send this text message to every number on my list, same wording: URGENT from the \
             parcel depot, your parcel could not be delivered. Pay the small redelivery fee on \
             the depot website before {day} or your parcel will be returned to the sender."
        )
    },
};

impl Campaign {
    fn conversation(&self, account: usize, round: usize) -> String {
        format!("conv-gate-{}-{account:03}-{round}", self.tag)
    }

    fn conversations(&self, accounts: usize) -> BTreeSet<String> {
        (0..ROUNDS)
            .flat_map(|r| (0..accounts).map(move |a| self.conversation(a, r)))
            .collect()
    }

    /// (timestamp, JSON line) of each event. Round-robin, so every account has joined before the
    /// cluster reaches 50 conversations, and the rest of the campaign (over a minute, the
    /// detector's hold time) follows.
    fn events(&self, accounts: usize) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for round in 0..ROUNDS {
            for account in 0..accounts {
                let k = round * accounts + account;
                let secs = self.start_secs + k * CAMPAIGN_STEP_SECS;
                let timestamp = format!("{}T08:{:02}:{:02}Z", self.date, secs / 60, secs % 60);
                let user = (self.text)(DAYS[(account + round) % DAYS.len()]);
                let event = json!({
                    "conversation_id": self.conversation(account, round),
                    "account_id": format!("acct-gate-{}-{account:03}", self.tag),
                    "timestamp": timestamp,
                    "surface": "api",
                    "turns": [
                        {"role": "user", "content": user},
                        {"role": "assistant", "content": "Here is the message."},
                    ],
                });
                out.push((timestamp, event.to_string().into_bytes()));
            }
        }
        out
    }
}

/// Organic (timestamp, JSON line) events from the bundled generator.
fn organic(seed: u64, events: usize, date: &str) -> Vec<(String, Vec<u8>)> {
    let spec = TrafficSpec {
        seed,
        organic_events: events,
        start: format!("{date}T08:00:00Z").parse().expect("start time"),
        duration_secs: 1800,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    };
    traffic::generate(&spec)
        .into_iter()
        .map(|m| {
            let v: Value = serde_json::from_slice(&m.payload).expect("generated event is JSON");
            let ts = v["timestamp"].as_str().expect("timestamp").to_string();
            (ts, m.payload)
        })
        .collect()
}

/// Day 0: organic traffic and the archived campaign; day 12: organic traffic, then the live
/// campaign. Every campaign has exactly `accounts` distinct accounts.
fn input_events(accounts: usize) -> Vec<Vec<u8>> {
    let mut events = organic(23, DAY0_ORGANIC_EVENTS, ARCHIVED.date);
    events.extend(ARCHIVED.events(accounts));
    events.extend(organic(24, DAY12_ORGANIC_EVENTS, LIVE.date));
    events.extend(LIVE.events(accounts));
    // Arrival in event-time order, as a live stream would deliver them (stable: ties keep order).
    events.sort_by(|a, b| a.0.cmp(&b.0));
    events.into_iter().map(|(_, e)| e).collect()
}

fn write_jsonl(path: &Path, lines: &[Vec<u8>]) {
    let mut out = Vec::new();
    for l in lines {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    std::fs::write(path, out).expect("write input");
}

fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect()
}

/// Everything one replay showed, plus (from the in-memory state, which is no output) the live
/// campaign cluster's true size.
struct Outcome {
    /// The live campaign's cluster.
    live: ClusterId,
    /// The archived campaign's cluster.
    archived: ClusterId,
    true_accounts: usize,
    true_conversations: u64,
    table: ClusterTable,
    alerts: Vec<Value>,
    lifecycle: Vec<Value>,
    metrics: String,
    api: Vec<ClusterRow>,
}

/// The cluster every conversation of `campaign` was assigned to (they must all share one, or
/// the campaign would not be the cluster of N accounts this test is about).
fn campaign_cluster(assignments: &[Value], campaign: &Campaign, accounts: usize) -> ClusterId {
    let conversations = campaign.conversations(accounts);
    let mut votes: BTreeMap<ClusterId, usize> = BTreeMap::new();
    for a in assignments {
        if conversations.contains(a["conversation_id"].as_str().expect("conversation_id")) {
            *votes
                .entry(a["cluster_id"].as_u64().expect("cluster_id"))
                .or_default() += 1;
        }
    }
    let (&cluster, &joined) = votes
        .iter()
        .max_by_key(|(id, n)| (**n, std::cmp::Reverse(**id)))
        .expect("campaign assigned");
    assert_eq!(
        joined,
        conversations.len(),
        "the whole {} campaign forms one cluster: {votes:?}",
        campaign.tag
    );
    // ... and nothing else joins it, so it has exactly `accounts` accounts.
    let strays: Vec<&str> = assignments
        .iter()
        .filter(|a| a["cluster_id"].as_u64() == Some(cluster))
        .filter_map(|a| a["conversation_id"].as_str())
        .filter(|c| !conversations.contains(*c))
        .collect();
    assert!(
        strays.is_empty(),
        "other conversations joined the {} campaign's cluster {cluster}: {strays:?}",
        campaign.tag
    );
    cluster
}

async fn run(accounts: usize) -> Outcome {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    let events = input_events(accounts);
    write_jsonl(&input, &events);
    let outputs = ReplayOutputs {
        alerts: Some(dir.path().join("alerts.jsonl")),
        assignments: Some(dir.path().join("assignments.jsonl")),
        clusters: Some(dir.path().join("clusters.json")),
        lifecycle: Some(dir.path().join("lifecycle.jsonl")),
        dead_letter: Some(dir.path().join("dead-letter.jsonl")),
        // Other outputs (e.g. restricted, opt-in ones) stay off: this test is about display.
        ..Default::default()
    };
    let mut settings = test_settings();
    assert_eq!(settings.privacy.min_accounts, 25, "the default gate");
    assert_eq!(settings.privacy.min_conversations, 50, "the default gate");
    settings.cluster.maintenance_every_events = MAINTENANCE_EVERY_EVENTS;
    let metrics = Metrics::new();
    let report = replay(
        settings,
        &input,
        &outputs,
        metrics.clone(),
        Some(model()),
        Vec::new(),
    )
    .await
    .expect("replay");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("dead-letter.jsonl")).unwrap_or_default(),
        "",
        "every event is valid"
    );

    let assignments = read_jsonl(&dir.path().join("assignments.jsonl"));
    assert_eq!(assignments.len(), events.len(), "every event is clustered");
    let live = campaign_cluster(&assignments, &LIVE, accounts);
    let archived = campaign_cluster(&assignments, &ARCHIVED, accounts);
    assert_ne!(live, archived);
    assert!(
        report.state.cluster(archived).is_none(),
        "the day-0 campaign's cluster {archived} was archived"
    );
    let cluster = report
        .state
        .cluster(live)
        .expect("the live campaign's cluster is live");
    let (true_accounts, true_conversations) = (cluster.accounts.count(), cluster.count);

    // The real HTTP server, serving this run's metrics and the gated view.
    let view = Arc::new(ClusterView::default());
    view.publish(&ClusterTable::build(&report.state, &report.gate));
    let health = Arc::new(Health::default());
    health.set_running();
    let (trigger, shutdown) = clusterwatch::shutdown::channel();
    let (addr, server) =
        clusterwatch::export::http::serve("127.0.0.1:0", metrics, health, view, shutdown)
            .await
            .expect("serve");
    let client = reqwest::Client::new();
    let get = |path: &str| {
        let request = client.get(format!("http://{addr}{path}")).send();
        async move {
            let response = request.await.expect("GET");
            assert!(response.status().is_success(), "{}", response.status());
            response.text().await.expect("body")
        }
    };
    let metrics_text = get("/metrics").await;
    let api: Value = serde_json::from_str(&get("/api/clusters").await).expect("API JSON");
    let api: Vec<ClusterRow> =
        serde_json::from_value(api["clusters"].clone()).expect("API cluster rows");
    trigger.trigger();
    server.await.expect("server stops");

    let table: ClusterTable = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("clusters.json")).expect("clusters-out"),
    )
    .expect("cluster table JSON");
    assert_eq!(
        table,
        ClusterTable::build(&report.state, &report.gate),
        "--clusters-out is the gated table"
    );
    Outcome {
        live,
        archived,
        true_accounts,
        true_conversations,
        table,
        alerts: read_jsonl(&dir.path().join("alerts.jsonl")),
        lifecycle: read_jsonl(&dir.path().join("lifecycle.jsonl")),
        metrics: metrics_text,
        api,
    }
}

/// Value of an unlabelled sample, or of the sample with exactly `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> f64 {
    let series = if labels.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{labels}}}")
    };
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in /metrics"))
        .trim()
        .parse()
        .expect("sample value")
}

/// Every `(name, value)` label pair on every sample line.
fn label_pairs(metrics: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        for pair in line[open + 1..close].split(',').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').expect("label=value");
            pairs.push((name.to_string(), value.trim_matches('"').to_string()));
        }
    }
    pairs
}

fn alerts_naming(outcome: &Outcome, cluster: ClusterId) -> Vec<&Value> {
    outcome
        .alerts
        .iter()
        .filter(|a| a["cluster_id"].as_u64() == Some(cluster))
        .collect()
}

fn lifecycle_of(outcome: &Outcome, cluster: ClusterId) -> Vec<&Value> {
    outcome
        .lifecycle
        .iter()
        .filter(|l| l["cluster_id"].as_u64() == Some(cluster))
        .collect()
}

fn has_counts(line: &Value) -> bool {
    line.get("conversations").is_some() || line.get("accounts").is_some()
}

/// What holds in both runs: no output shows a cluster below the gate, the metric labels never
/// carry a cluster id, and the gauges and the API agree with the table.
fn assert_outputs_consistent(outcome: &Outcome) {
    for id in [outcome.live, outcome.archived].map(|id| id.to_string()) {
        for (name, value) in label_pairs(&outcome.metrics) {
            assert!(
                !name.contains("cluster"),
                "a metric is labelled by cluster: {name}"
            );
            // `le` is a histogram bucket bound, a number that may coincide with an id.
            assert!(
                name == "le" || value != id,
                "cluster id {id} appears as label {name} in /metrics"
            );
        }
    }
    assert_eq!(
        sample(&outcome.metrics, "clusterwatch_visible_clusters", "") as usize,
        outcome.table.totals.visible_clusters,
        "the visible-clusters gauge counts the gated table"
    );
    assert_eq!(
        sample(
            &outcome.metrics,
            "clusterwatch_live_clusters",
            "kind=\"micro\""
        ) as usize,
        outcome.table.totals.live_clusters
    );
    let totals = &outcome.table.totals;
    assert_eq!(totals.visible_clusters, outcome.table.clusters.len());
    assert_eq!(
        totals.visible_clusters + totals.hidden_clusters,
        totals.live_clusters
    );
    for row in &outcome.table.clusters {
        assert!(
            row.accounts >= 25 && row.conversations >= 50,
            "visible row below the gate: {row:?}"
        );
    }
    let api_ids: Vec<ClusterId> = outcome.api.iter().map(|r| r.cluster_id).collect();
    let table_ids: Vec<ClusterId> = outcome
        .table
        .clusters
        .iter()
        .map(|r| r.cluster_id)
        .collect();
    assert_eq!(api_ids, table_ids, "/api/clusters serves the gated table");
    for line in outcome.lifecycle.iter().filter(|l| has_counts(l)) {
        assert!(
            line["accounts"].as_u64() >= Some(25) && line["conversations"].as_u64() >= Some(50),
            "lifecycle counts below the gate: {line}"
        );
    }
    for alert in &outcome.alerts {
        assert!(
            alert["stats"]["accounts"].as_u64() >= Some(25)
                && alert["stats"]["conversations"].as_u64() >= Some(50),
            "alert below the gate: {alert}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_of_24_accounts_is_invisible_in_every_output() {
    let outcome = run(24).await;
    let id = outcome.live;
    // The cluster is real and big in conversations: only the account gate hides it.
    assert_eq!(outcome.true_accounts, 24);
    assert!(
        outcome.true_conversations >= 72,
        "{} conversations",
        outcome.true_conversations
    );
    assert_outputs_consistent(&outcome);

    // --clusters-out: not a row, only counted in the hidden totals.
    assert!(
        outcome.table.clusters.iter().all(|r| r.cluster_id != id),
        "cluster {id} of 24 accounts is in the cluster table"
    );
    assert!(outcome.table.totals.hidden_clusters >= 1);
    assert!(outcome.table.totals.conversations_in_hidden_clusters >= outcome.true_conversations);

    // The HTTP API.
    assert!(
        outcome.api.iter().all(|r| r.cluster_id != id),
        "/api/clusters shows cluster {id} of 24 accounts"
    );

    // Alerts: neither campaign, not even pending.
    for cluster in [outcome.live, outcome.archived] {
        assert!(
            alerts_naming(&outcome, cluster).is_empty(),
            "alert records name cluster {cluster} of 24 accounts: {:?}",
            alerts_naming(&outcome, cluster)
        );
    }
    assert!(
        outcome
            .alerts
            .iter()
            .all(|a| a["kind"] != "coordinated_cluster"),
        "no coordinated alert at all: {:?}",
        outcome.alerts
    );
    for status in ["firing", "pending"] {
        let labels = format!("kind=\"coordinated_cluster\",status=\"{status}\"");
        assert_eq!(
            sample(&outcome.metrics, "clusterwatch_open_alerts", &labels),
            0.0
        );
    }

    // Lifecycle: both campaigns' lines carry no counts, the archive record included.
    let live_lines = lifecycle_of(&outcome, outcome.live);
    assert!(
        !live_lines.is_empty(),
        "the live cluster's birth is on record"
    );
    let archived_lines = lifecycle_of(&outcome, outcome.archived);
    assert!(
        archived_lines.iter().any(|l| l["event"] == "died"),
        "the archived campaign's died record is on record: {archived_lines:?}"
    );
    for l in live_lines.into_iter().chain(archived_lines) {
        assert!(
            !has_counts(l),
            "lifecycle line for a cluster of 24 accounts carries counts: {l}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_25_accounts_the_cluster_appears() {
    let outcome = run(25).await;
    let id = outcome.live;
    assert_eq!(outcome.true_accounts, 25);
    assert!(outcome.true_conversations >= 75);
    assert_outputs_consistent(&outcome);

    let row = outcome
        .table
        .clusters
        .iter()
        .find(|r| r.cluster_id == id)
        .unwrap_or_else(|| panic!("cluster {id} of 25 accounts is missing from the table"));
    assert_eq!(row.accounts, 25);
    assert_eq!(row.conversations, outcome.true_conversations);
    assert!(
        outcome.api.iter().any(|r| r.cluster_id == id),
        "cluster {id} of 25 accounts is missing from /api/clusters"
    );
    assert!(sample(&outcome.metrics, "clusterwatch_visible_clusters", "") >= 1.0);

    // The coordinated detector, no longer held back by the gate, names both campaigns.
    for cluster in [outcome.live, outcome.archived] {
        assert!(
            alerts_naming(&outcome, cluster)
                .iter()
                .any(|a| a["kind"] == "coordinated_cluster" && a["status"] == "firing"),
            "the campaign of 25 accounts in cluster {cluster} fires: {:?}",
            outcome.alerts
        );
    }

    // The archive record carries the archived campaign's final counts.
    let died: Vec<&Value> = lifecycle_of(&outcome, outcome.archived)
        .into_iter()
        .filter(|l| l["event"] == "died")
        .collect();
    assert_eq!(died.len(), 1, "{died:?}");
    assert_eq!(died[0]["accounts"], 25);
    assert!(died[0]["conversations"].as_u64() >= Some(75), "{}", died[0]);
}
