//! The cluster explorer end to end: real traffic with a campaign run through the pipeline and the
//! real model, the k-anonymous view the pipeline publishes served by the real HTTP server with a
//! bearer token, checked over the JSON API and then in a real headless Chromium driven through
//! chromedriver's WebDriver API.
//!
//! A browser is the only way to test what matters on the page: that a label arriving from user
//! traffic is rendered as text, never as HTML, under the server's Content-Security-Policy; and
//! that the map and drill-down show exactly what the API serves. Missing Chromium is a failure,
//! not a skip: run `bash scripts/chromium.sh` (CI's `scripts/test.sh` does, through
//! `scripts/services.sh`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use clusterwatch::alert::{AlertKind, AlertStatus};
use clusterwatch::cluster::ClusterId;
use clusterwatch::export::clusters::ClusterTable;
use clusterwatch::export::http::{ApiAccess, Health};
use clusterwatch::export::view::ClusterView;
use clusterwatch::export::Metrics;
use clusterwatch::pipeline::Pipeline;
use clusterwatch::source::file::{read_lines, FileDeadLetter};
use clusterwatch::source::NoAck;
use common::*;
use reqwest::blocking::Client;
use serde_json::{json, Value};

const TOKEN: &str = "explorer-test-token-7f3a9c";
const GRAFANA: &str = "http://grafana.example:3000";
/// A label a hostile summary could produce: rendered as HTML it would create an `img` whose
/// error handler runs script.
const XSS_LABEL: &str = "<img src=x onerror=window.__xss=1>";
const XSS_DOMAIN: &str = "<b>bold</b><img src=x onerror=window.__xss=2>";
const XSS_TOPIC: &str = "<script>window.__xss=3</script>";
const XSS_DOMAIN_ID: u64 = 987_654;
const XSS_TOPIC_ID: u64 = 987_655;

/// The pipeline run's view, served for the whole test binary.
struct Fixture {
    base: String,
    /// What the view holds (gate-passing rows, the injected one included).
    table: ClusterTable,
    /// A live cluster below the privacy gate.
    hidden_id: ClusterId,
    xss_id: ClusterId,
    // Kept alive: the server runs on this runtime until the process exits.
    _runtime: tokio::runtime::Runtime,
    _shutdown: clusterwatch::shutdown::ShutdownTrigger,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build_fixture)
}

fn build_fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("events.jsonl");
    // The campaign comes late enough that its alert is still open (firing) when the stream ends:
    // it resolves only after the window drains and `quiet_secs` pass.
    write_campaign_traffic(&input, 11, 40 * 60, 0);

    let mut settings = test_settings();
    // Topics and domains are rebuilt several times in this short stream, so the drill-down has
    // levels to drill into (and clusters born since the last rebuild sit under "unassigned").
    settings.cluster.hierarchy.rebuild_every_events = 400;
    settings.cluster.hierarchy.apply_after_events = 100;
    // 1200 organic requests spread over hundreds of intents: at the production gate (25 accounts)
    // only the campaign would be visible. A lower gate gives the map a few dozen clusters while
    // singletons and pairs stay hidden, which is all this test needs of the gate
    // (tests/privacy_gate.rs tests the gate itself).
    settings.privacy.min_accounts = 4;
    settings.privacy.min_conversations = 6;
    let metrics = Metrics::new();
    let started = Instant::now();
    // The pipeline itself, as `replay` wires it, but publishing into a view as `run` does: the
    // view this test serves is what the cluster stage published and the alert stage recorded.
    let view = Arc::new(ClusterView::default());
    let pipeline = Pipeline {
        summarizer: clusterwatch::run::build_summarizer(&settings, None, &metrics)
            .expect("summarizer"),
        embedder: model(),
        dead_letter: Arc::new(FileDeadLetter::create(None).expect("dead letter")),
        acker: Arc::new(NoAck),
        initial_state: None,
        snapshots: None,
        partitions: None,
        assignments: None,
        lifecycle: None,
        alert_sinks: Vec::new(),
        metrics: metrics.clone(),
        view: Some(view.clone()),
        investigation: None,
        namer: None,
        deterministic_batches: true,
        input: clusterwatch::pipeline::PipelineInput::Conversations,
        shard: None,
        settings: settings.clone(),
    };
    let report = runtime.block_on(async {
        let (tx, rx) = tokio::sync::mpsc::channel(settings.pipeline.channel_capacity.max(1));
        let reader = tokio::spawn(read_lines(
            input.clone(),
            tx,
            settings.limits.max_message_bytes,
            metrics.clone(),
        ));
        let report = pipeline.run(rx).await.expect("pipeline");
        reader.await.expect("reader").expect("read input");
        report
    });
    eprintln!(
        "clustered {} events in {:.1} s",
        report.state.clustered_events(),
        started.elapsed().as_secs_f64()
    );

    let mut table = ClusterTable::build(&report.state, &report.gate);
    eprintln!("cluster table: {:?}", table.totals);
    assert!(
        table.clusters.len() >= 10,
        "clusters pass the gate: {:?}",
        table.totals
    );
    let published: Vec<ClusterId> = view.rows().iter().map(|r| r.cluster_id).collect();
    let built: Vec<ClusterId> = table.clusters.iter().map(|r| r.cluster_id).collect();
    assert_eq!(
        published, built,
        "the cluster stage published the gated table"
    );
    let recorded = view.alerts();
    assert!(
        recorded
            .open
            .iter()
            .any(|a| a.kind == AlertKind::CoordinatedCluster && a.status == AlertStatus::Firing),
        "the alert stage recorded the campaign's firing alert: {recorded:?}"
    );
    let hidden_id = report
        .state
        .clusters()
        .find(|c| !report.gate.admits(c))
        .map(|c| c.id)
        .expect("some live cluster is below the privacy gate");

    // A row with hostile labels, as if an auditor had let them through.
    let xss_id = report.state.clusters().map(|c| c.id).max().unwrap_or(0) + 1_000_000;
    let mut xss = table.clusters[table.clusters.len() / 2].clone();
    xss.cluster_id = xss_id;
    xss.label = XSS_LABEL.into();
    xss.description = Some(format!("described as {XSS_LABEL}"));
    xss.domain_id = Some(XSS_DOMAIN_ID);
    xss.domain_label = Some(XSS_DOMAIN.into());
    xss.topic_id = Some(XSS_TOPIC_ID);
    xss.topic_label = Some(XSS_TOPIC.into());
    xss.surfaces.insert(XSS_LABEL.into(), 3);
    table.clusters.push(xss);
    view.publish(&table);
    // An alert about the hostile cluster, with the hostile label.
    let mut hostile_alert = recorded
        .open
        .iter()
        .find(|a| a.status == AlertStatus::Firing && a.cluster_id.is_some())
        .expect("a firing cluster alert")
        .clone();
    hostile_alert.alert_id = "explorer-test-hostile".into();
    hostile_alert.cluster_id = Some(xss_id);
    hostile_alert.label = XSS_LABEL.into();
    view.record_alert(&hostile_alert);

    let health = Arc::new(Health::default());
    health.set_running();
    let (shutdown, subscriber) = clusterwatch::shutdown::channel();
    let access = ApiAccess::new(Some(TOKEN), Some(GRAFANA)).expect("access");
    let (addr, _server) = runtime
        .block_on(clusterwatch::export::http::serve_with_access(
            "127.0.0.1:0",
            metrics,
            health,
            view,
            access,
            subscriber,
        ))
        .expect("serve");
    Fixture {
        base: format!("http://{addr}"),
        table,
        hidden_id,
        xss_id,
        _runtime: runtime,
        _shutdown: shutdown,
    }
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn get(path: &str, token: Option<&str>) -> reqwest::blocking::Response {
    let mut request = client().get(format!("{}{path}", fixture().base));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn assert_security_headers(response: &reqwest::blocking::Response, what: &str) {
    let h = response.headers();
    let header = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    assert_eq!(header("x-content-type-options"), "nosniff", "{what}");
    assert_eq!(header("x-frame-options"), "DENY", "{what}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{what}");
    assert_eq!(
        header("content-security-policy"),
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'",
        "{what}"
    );
    if what.contains("/api/") {
        assert_eq!(header("cache-control"), "no-store", "{what}");
    }
}

/// Clusters per domain key and per (domain, topic) key, as the page groups them.
fn hierarchy(rows: &[Value]) -> BTreeMap<String, BTreeMap<String, Vec<u64>>> {
    let key = |v: &Value| {
        v.as_u64()
            .map_or("unassigned".to_string(), |n| n.to_string())
    };
    let mut out: BTreeMap<String, BTreeMap<String, Vec<u64>>> = BTreeMap::new();
    for r in rows {
        out.entry(key(&r["domain_id"]))
            .or_default()
            .entry(key(&r["topic_id"]))
            .or_default()
            .push(r["cluster_id"].as_u64().unwrap());
    }
    out
}

fn api_clusters() -> Vec<Value> {
    let response = get("/api/clusters", Some(TOKEN));
    assert_eq!(response.status(), 200);
    let body: Value = response.json().expect("JSON");
    body["clusters"].as_array().expect("clusters").clone()
}

#[test]
fn api_requires_the_token_and_serves_only_visible_clusters() {
    let f = fixture();
    let labels: Vec<&str> = f.table.clusters.iter().map(|r| r.label.as_str()).collect();

    // Without the token, or with a wrong one: 401 and nothing about any cluster.
    for path in [
        "/api/clusters".to_string(),
        format!("/api/clusters/{}", f.table.clusters[0].cluster_id),
        "/api/alerts".to_string(),
        "/api/config".to_string(),
    ] {
        for token in [None, Some("wrong-token"), Some("explorer-test-token-7f3a9")] {
            let response = get(&path, token);
            assert_eq!(response.status(), 401, "GET {path} with {token:?}");
            assert_security_headers(&response, &path);
            let body = response.text().unwrap();
            let parsed: Value = serde_json::from_str(&body).expect("JSON error body");
            assert_eq!(
                parsed.as_object().unwrap().keys().collect::<Vec<_>>(),
                ["error"]
            );
            assert!(
                !body.contains("cluster_id") && !body.contains(GRAFANA),
                "{body}"
            );
            for label in &labels {
                assert!(!body.contains(label), "401 body names {label:?}: {body}");
            }
        }
    }
    // Another scheme with the right secret is still refused.
    let response = client()
        .get(format!("{}/api/clusters", f.base))
        .header("Authorization", format!("Basic {TOKEN}"))
        .send()
        .unwrap();
    assert_eq!(response.status(), 401);

    // Prometheus and the kubelet need no token.
    for path in ["/metrics", "/healthz"] {
        let response = get(path, None);
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(&response, path);
    }

    // With the token: exactly the gate-passing rows, each with a map position.
    let response = get("/api/clusters", Some(TOKEN));
    assert_eq!(response.status(), 200);
    assert_security_headers(&response, "/api/clusters");
    let body: Value = response.json().unwrap();
    let rows = body["clusters"].as_array().unwrap();
    let served: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["cluster_id"].as_u64().unwrap())
        .collect();
    let expected: BTreeSet<u64> = f.table.clusters.iter().map(|r| r.cluster_id).collect();
    assert_eq!(served, expected);
    assert!(!served.contains(&f.hidden_id));
    let mut positions = BTreeSet::new();
    for r in rows {
        let (x, y) = (r["x"].as_f64().unwrap(), r["y"].as_f64().unwrap());
        assert!(x.abs() <= 1.0 && y.abs() <= 1.0, "{x}, {y}");
        positions.insert((x.to_bits(), y.to_bits()));
    }
    assert!(
        positions.len() >= rows.len() - 1,
        "distinct positions (the injected row copies one)"
    );
    assert!(
        rows.iter()
            .any(|r| r["alert"]["kind"] == "coordinated_cluster"
                && r["cluster_id"].as_u64() != Some(f.xss_id)),
        "the campaign's cluster carries its open alert"
    );
    assert_eq!(
        body["totals"]["visible_clusters"].as_u64(),
        Some(f.table.totals.visible_clusters as u64)
    );

    // One visible cluster: its row, facets and alerts.
    let visible = &f.table.clusters[0];
    let response = get(
        &format!("/api/clusters/{}", visible.cluster_id),
        Some(TOKEN),
    );
    assert_eq!(response.status(), 200);
    assert_security_headers(&response, "/api/clusters/{id}");
    let detail: Value = response.json().unwrap();
    assert_eq!(detail["cluster"]["label"], visible.label.as_str());
    assert_eq!(detail["cluster"]["surfaces"], json!(visible.surfaces));
    assert_eq!(detail["cluster"]["languages"], json!(visible.languages));
    assert_eq!(detail["cluster"]["tasks"], json!(visible.tasks));
    assert!(detail["alerts"].is_array());

    // Hidden, unknown and malformed ids: one and the same 404.
    let mut bodies = BTreeSet::new();
    for id in [
        f.hidden_id.to_string(),
        "4000000000".to_string(),
        "not-a-number".to_string(),
    ] {
        let response = get(&format!("/api/clusters/{id}"), Some(TOKEN));
        assert_eq!(response.status(), 404, "cluster {id}");
        assert_security_headers(&response, "/api/clusters/{hidden}");
        bodies.insert(response.text().unwrap());
    }
    assert_eq!(bodies.len(), 1, "404 bodies differ: {bodies:?}");

    // Alerts: records with counts and labels, never members.
    let response = get("/api/alerts", Some(TOKEN));
    assert_eq!(response.status(), 200);
    let alerts: Value = response.json().unwrap();
    let open = alerts["open"].as_array().unwrap();
    assert!(open
        .iter()
        .any(|a| a["kind"] == "coordinated_cluster" && a["status"] == "firing"));
    let text = alerts.to_string();
    for forbidden in ["conversation_id", "account_id", "members"] {
        assert!(!text.contains(forbidden), "/api/alerts carries {forbidden}");
    }

    // Grafana links point at dashboards that exist.
    let config: Value = get("/api/config", Some(TOKEN)).json().unwrap();
    assert_eq!(config["grafana_url"], GRAFANA);
    for uid in config["dashboards"].as_object().unwrap().values() {
        let uid = uid.as_str().unwrap();
        let file = repo_root().join(format!("grafana/dashboards/{uid}.json"));
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display())),
        )
        .unwrap();
        assert_eq!(dashboard["uid"], uid);
    }

    // A trailing slash leads back to the page (relative, so it works under a path prefix).
    let response = get("/explorer/", None);
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/explorer");

    // The page and its files, with the types the CSP and nosniff need.
    for (path, kind) in [
        ("/explorer", "text/html"),
        ("/explorer/app.js", "text/javascript"),
        ("/explorer/app.css", "text/css"),
    ] {
        let response = get(path, None);
        assert_eq!(response.status(), 200, "{path}");
        assert_security_headers(&response, path);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }
}

// ---- WebDriver over plain HTTP ----

/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver and its browser session; both end when this drops, panics included, so a
/// failing test leaves no browser behind.
struct Browser {
    driver: Child,
    url: String,
    session: Option<String>,
    http: Client,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = self
                .http
                .delete(format!("{}/session/{session}", self.url))
                .timeout(Duration::from_secs(15))
                .send();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn find_program(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/lib/chromium"),
        ])
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Browser {
    fn start() -> Browser {
        let hint = "run `bash scripts/chromium.sh` (apt-get install chromium chromium-driver) \
                    — the explorer test needs a real headless Chromium";
        let driver_path = find_program(&["chromedriver"])
            .unwrap_or_else(|| panic!("chromedriver not found: {hint}"));
        let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"])
            .unwrap_or_else(|| panic!("chromium not found: {hint}"));
        let port = free_port();
        let driver = Command::new(&driver_path)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_path.display()));
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            session: None,
            http: Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = browser
                .http
                .get(format!("{}/status", browser.url))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .is_some_and(|v| v["value"]["ready"] == true);
            if ready {
                break;
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited: {status}");
            }
            assert!(Instant::now() < deadline, "chromedriver not ready in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        let created = browser.command(
            "POST",
            "/session",
            json!({ "capabilities": { "alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {
                    "binary": chromium.display().to_string(),
                    "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                             "--window-size=1280,900", "--disable-dev-shm-usage"],
                },
            }}}),
        );
        browser.session = Some(
            created["sessionId"]
                .as_str()
                .expect("session id")
                .to_string(),
        );
        browser
    }

    /// One WebDriver command; panics on a WebDriver error. Returns `value`.
    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        let url = match &self.session {
            Some(session) if path != "/session" => format!("{}/session/{session}{path}", self.url),
            _ => format!("{}{path}", self.url),
        };
        let request = match method {
            "GET" => self.http.get(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.post(&url).json(&body),
        };
        let response = request
            .send()
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e}"));
        let status = response.status();
        let value: Value = response.json().expect("WebDriver JSON");
        assert!(
            status.is_success(),
            "WebDriver {method} {path}: {status} {value}"
        );
        value["value"].clone()
    }

    fn navigate(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    fn script(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": args }),
        )
    }

    fn count(&self, css: &str) -> u64 {
        self.script(
            "return document.querySelectorAll(arguments[0]).length;",
            json!([css]),
        )
        .as_u64()
        .unwrap()
    }

    fn text(&self, css: &str) -> String {
        self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            json!([css]),
        )
        .as_str()
        .unwrap_or_default()
        .to_string()
    }

    fn click(&self, css: &str) {
        let element = self.command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        let id = element[ELEMENT].as_str().expect("element reference");
        self.command("POST", &format!("/element/{id}/click"), json!({}));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        let id = element[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("element reference: {element}"));
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Polls `check` until it holds; panics with `what` and the last observation otherwise.
    fn wait_for<T: std::fmt::Debug>(
        &self,
        what: &str,
        mut observe: impl FnMut(&Self) -> T,
        check: impl Fn(&T) -> bool,
    ) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = observe(self);
            if check(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: last saw {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn screenshot(&self, path: &Path) {
        let png = decode_base64(
            self.command("GET", "/screenshot", Value::Null)
                .as_str()
                .unwrap(),
        );
        assert!(png.starts_with(b"\x89PNG"), "screenshot is a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, png).unwrap();
    }
}

/// Standard base64 (the screenshot's encoding); no crate for twenty lines.
fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
        .join("explorer-screenshot.png")
}

#[test]
fn explorer_page_in_headless_chromium() {
    let browser = Browser::start();
    let f = fixture();
    let rows = api_clusters();
    let total = rows.len() as u64;
    let by_id: BTreeMap<u64, &Value> = rows
        .iter()
        .map(|r| (r["cluster_id"].as_u64().unwrap(), r))
        .collect();

    // Without a token the page asks for one and shows nothing; a wrong one changes nothing.
    browser.navigate(&format!("{}/explorer", f.base));
    browser.wait_for(
        "the token prompt",
        |b| b.count("#token-form.needed"),
        |n| *n == 1,
    );
    assert_eq!(browser.count("#map [data-cluster-id]"), 0);
    browser.type_into("#token-input", "wrong-token");
    browser.click("#token-form button[type=submit]");
    std::thread::sleep(Duration::from_millis(500));
    browser.wait_for(
        "the prompt after a wrong token",
        |b| b.count("#token-form.needed"),
        |n| *n == 1,
    );
    assert_eq!(browser.count("#map [data-cluster-id]"), 0);

    // With the token in the fragment: every visible cluster on the map, and the token gone from
    // the URL.
    browser.navigate(&format!("{}/explorer#token={TOKEN}", f.base));
    let circles = browser.wait_for(
        "the map",
        |b| b.count("#map [data-cluster-id]"),
        |n| *n == total,
    );
    println!("map circles verified: {circles} (the API serves {total} visible clusters)");
    let url = browser.command("GET", "/url", Value::Null);
    assert!(
        !url.as_str().unwrap().contains("token"),
        "token left in the URL: {url}"
    );
    assert_eq!(browser.count("#cluster-list [data-list-cluster-id]"), total);
    assert_eq!(browser.count("#token-form.needed"), 0);

    // Drill down: the largest real domain, then its largest topic.
    let tree = hierarchy(&rows);
    let (domain, topics) = tree
        .iter()
        .filter(|(k, _)| *k != "unassigned" && **k != XSS_DOMAIN_ID.to_string())
        .max_by_key(|(k, t)| {
            (
                t.values().map(Vec::len).sum::<usize>(),
                std::cmp::Reverse(*k),
            )
        })
        .expect("the hierarchy has a domain");
    let in_domain: usize = topics.values().map(Vec::len).sum();
    assert!((in_domain as u64) < total);
    let domain_name = rows
        .iter()
        .find(|r| r["domain_id"].as_u64().map(|d| d.to_string()).as_ref() == Some(domain))
        .and_then(|r| r["domain_label"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("domain {domain}"));
    browser.click(&format!("#levels [data-domain-key=\"{domain}\"]"));
    browser.wait_for(
        "the list narrowed to the domain",
        |b| b.count("#cluster-list [data-list-cluster-id]"),
        |n| *n == in_domain as u64,
    );
    assert_eq!(browser.count("#map [data-cluster-id]"), in_domain as u64);
    assert!(browser.text("#breadcrumb").contains(&domain_name));
    assert_eq!(browser.text("#levels-title"), "Topics");

    let (topic, members) = topics
        .iter()
        .max_by_key(|(k, m)| (m.len(), std::cmp::Reverse(*k)))
        .unwrap();
    browser.click(&format!("#levels [data-topic-key=\"{topic}\"]"));
    browser.wait_for(
        "the list narrowed to the topic",
        |b| b.count("#cluster-list [data-list-cluster-id]"),
        |n| *n == members.len() as u64,
    );
    assert_eq!(
        browser.count("#map [data-cluster-id]"),
        members.len() as u64
    );
    let topic_name = by_id[&members[0]]["topic_label"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| {
            if topic == "unassigned" {
                "unassigned".into()
            } else {
                format!("topic {topic}")
            }
        });
    let crumbs = browser.text("#breadcrumb");
    assert!(
        crumbs.contains(&domain_name) && crumbs.contains(&topic_name),
        "{crumbs}"
    );

    // Click a cluster on the map (one whose centre is not covered by another circle).
    let clicked = browser.script(
        "for (const c of document.querySelectorAll('#map circle')) {
           c.scrollIntoView({block: 'center'});
           const r = c.getBoundingClientRect();
           if (document.elementFromPoint(r.x + r.width / 2, r.y + r.height / 2) === c)
             return c.dataset.clusterId;
         }
         return null;",
        json!([]),
    );
    let clicked: u64 = clicked
        .as_str()
        .expect("a clickable circle")
        .parse()
        .unwrap();
    browser.click(&format!("#map circle[data-cluster-id=\"{clicked}\"]"));
    let row = by_id[&clicked];
    let label = row["label"].as_str().unwrap();
    browser.wait_for(
        "the clicked cluster's detail",
        |b| b.text("#detail h2"),
        |t| t == label,
    );
    let facets = ["surfaces", "languages", "tasks"]
        .iter()
        .map(|k| row[k].as_object().map_or(0, |m| m.len()))
        .sum::<usize>() as u64;
    assert!(facets >= 3);
    assert_eq!(browser.count("#detail .facet .bar"), facets);
    for facet in ["surfaces", "languages", "tasks"] {
        assert!(
            browser.count(&format!("#detail .facet[data-facet={facet}] .bar")) >= 1,
            "{facet} bars"
        );
    }

    // Back to the top by the breadcrumb; the colour toggle switches to refusal rates.
    browser.click("#breadcrumb [data-crumb=root]");
    browser.wait_for(
        "the whole list again",
        |b| b.count("#cluster-list [data-list-cluster-id]"),
        |n| *n == total,
    );
    browser.click("#colour-toggle");
    let fills = browser.script(
        "return [...document.querySelectorAll('#map circle')].map(c => c.getAttribute('fill'));",
        json!([]),
    );
    assert!(
        fills
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f.as_str().unwrap().starts_with("hsl(")),
        "{fills}"
    );
    browser.click("#colour-toggle");

    // The hostile labels show as text; no element they describe exists, no handler ran.
    browser.click(&format!(
        "#cluster-list [data-list-cluster-id=\"{}\"] button",
        f.xss_id
    ));
    browser.wait_for(
        "the hostile cluster's detail with its alert",
        |b| (b.text("#detail h2"), b.count("#detail ul.alerts li")),
        |(t, n)| t == XSS_LABEL && *n >= 1,
    );
    assert!(browser.text("#detail").contains(XSS_DOMAIN));
    assert!(browser.text("#detail .alerts").contains(XSS_LABEL));
    assert!(browser.text("#levels").contains(XSS_DOMAIN));
    assert!(browser.text("#cluster-list").contains(XSS_LABEL));
    let injected = browser.script(
        "return { img: document.getElementsByTagName('img').length,
                  b: document.getElementsByTagName('b').length,
                  scripts: document.scripts.length,
                  xss: window.__xss === undefined ? null : window.__xss };",
        json!([]),
    );
    assert_eq!(
        injected,
        json!({ "img": 0, "b": 0, "scripts": 1, "xss": null }),
        "a label became markup"
    );

    // The campaign's cluster: its alert links to the coordinated-abuse dashboard.
    let alerted = rows
        .iter()
        .filter(|r| {
            r["alert"]["kind"] == "coordinated_cluster"
                && r["cluster_id"].as_u64() != Some(f.xss_id)
        })
        .max_by_key(|r| r["conversations"].as_u64())
        .expect("an alerted cluster");
    let alerted_id = alerted["cluster_id"].as_u64().unwrap();
    browser.click(&format!(
        "#cluster-list [data-list-cluster-id=\"{alerted_id}\"] button"
    ));
    let href = browser.wait_for(
        "the Grafana link",
        |b| {
            b.script(
                "const a = document.querySelector('#detail a.grafana-link'); return a ? a.href : null;",
                json!([]),
            )
        },
        |v| v.is_string(),
    );
    let href = href.as_str().unwrap();
    assert!(
        href.starts_with(&format!("{GRAFANA}/d/clusterwatch-abuse?from=")),
        "{href}"
    );
    assert_eq!(
        browser.text("#detail h2"),
        alerted["label"].as_str().unwrap()
    );

    browser.script("window.scrollTo(0, 0);", json!([]));
    let path = screenshot_path();
    browser.screenshot(&path);
    println!("screenshot: {}", path.display());
}
