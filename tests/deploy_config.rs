//! The deployment files in deploy/: Prometheus rules and their unit tests, the Alertmanager
//! routing and inhibitions, the runbook, compose, the Kubernetes manifests and the Dockerfile.
//!
//! Docker and Kubernetes cannot run here, so their files are checked for what breaks a deploy
//! silently: a mounted file that does not exist, a selector that selects nothing, a config key
//! clusterwatch does not know, two files that disagree on a port or a path. The Prometheus and
//! Alertmanager configs are checked by the real tools (scripts/check-deploy.sh), and the
//! inhibition rules by a real Alertmanager. The tools come from Debian's prometheus and
//! prometheus-alertmanager packages (scripts/alertmanager.sh install); without them these tests
//! fail rather than skip.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterwatch::config::Settings;
use serde::Deserialize;
use serde_yaml::Value;

const RUNBOOK_BASE: &str =
    "https://github.com/clusterwatch/clusterwatch/blob/main/deploy/RUNBOOK.md#";
const INSTALL_HINT: &str = "install Debian's prometheus and prometheus-alertmanager packages with \
     `sudo bash scripts/alertmanager.sh install` (scripts/test.sh runs it)";
/// The alerts clusterwatch pushes itself (src/alert); each needs a runbook section.
const DETECTOR_ALERTS: [&str; 5] = [
    "ClusterwatchCoordinatedCluster",
    "ClusterwatchLaunchNewCluster",
    "ClusterwatchLaunchDrift",
    "ClusterwatchUnderEnforcement",
    "ClusterwatchOverRefusal",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()))
}

fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", path.display()));
        if !value.is_null() {
            docs.push(value);
        }
    }
    docs
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v:?}"))
}

fn seq(v: &Value) -> &[Value] {
    v.as_sequence().map(Vec::as_slice).unwrap_or(&[])
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap_or_default().to_string(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn is_subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

/// Lexically normalises `a/b/../c` to `a/c` (paths may not exist yet, so no canonicalize).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// `*` and `?` in one file-name component.
fn wildcard(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Files matching a path whose last component may hold wildcards.
fn glob_files(pattern: &Path) -> Vec<PathBuf> {
    let dir = pattern.parent().expect("pattern has a directory");
    let name = pattern.file_name().unwrap().to_string_lossy().to_string();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file() && wildcard(&name, &p.file_name().unwrap().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(found, "`{name}` is not on PATH: {INSTALL_HINT}");
}

/// Loads a clusterwatch config file, with `env` as CLUSTERWATCH_* overrides, through the real
/// loader (unknown keys are errors there).
#[allow(clippy::result_large_err)] // figment's Jail closure type, not ours
fn load_settings(file: &Path, env: &[(String, String)]) -> Result<Settings, String> {
    let mut outcome = None;
    figment::Jail::expect_with(|jail| {
        for (k, v) in env {
            jail.set_env(k, v);
        }
        outcome = Some(Settings::load(Some(file)).map_err(|e| format!("{e:#}")));
        Ok(())
    });
    outcome.expect("jail ran")
}

// ------------------------------------------------------------------------------------------
// Prometheus and Alertmanager, with their own tools

#[test]
fn prometheus_and_alertmanager_configs_pass_their_tools() {
    require_tool("promtool");
    require_tool("amtool");
    let out = Command::new("bash")
        .arg(root().join("scripts/check-deploy.sh"))
        .current_dir(root())
        .output()
        .expect("run scripts/check-deploy.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "scripts/check-deploy.sh failed:\n{text}"
    );
    for line in [
        "ok    promtool check config deploy/prometheus/prometheus.yml",
        "ok    promtool check rules deploy/prometheus/rules/clusterwatch.rules.yml",
        "ok    amtool check-config deploy/alertmanager/alertmanager.yml",
        "route tests: 10 passed, 0 failed",
        "all checks passed",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("ok    promtool test rules:") && l.ends_with("passed")),
        "promtool test rules did not pass:\n{text}"
    );
    // The receivers each kind of alert must reach (the script verifies them with amtool).
    for (labels, receivers) in [
        (
            "severity=critical service=clusterwatch cluster_id=c-17",
            "pagerduty",
        ),
        (
            "severity=warning service=clusterwatch stage=embed",
            "slack-warning",
        ),
        (
            "severity=info service=clusterwatch cluster_id=c-4",
            "slack-info",
        ),
        (
            "severity=warning service=clusterwatch surface=computer_use",
            "slack-launch",
        ),
        (
            "cluster_id=c-9 surface=computer_use",
            "pagerduty,slack-launch",
        ),
        ("alertname=Watchdog severity=none", "deadman"),
        ("alertname=ClusterwatchDown severity=critical", "pagerduty"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("check-deploy.sh: ok    route")
                    && l.contains(labels)
                    && l.ends_with(&format!("-> {receivers}"))),
            "no passing route test `{labels}` -> {receivers}:\n{text}"
        );
    }
}

/// The production config's inhibitions, in a real Alertmanager (receivers emptied, so nothing
/// can be sent anywhere). Alertmanager's inhibitor learns of new source alerts through an
/// asynchronous subscription, so each phase polls until the states settle (or a deadline passes).
#[test]
fn alertmanager_inhibitions_mute_what_they_should() {
    let bin = ["prometheus-alertmanager", "alertmanager"]
        .into_iter()
        .find(|b| {
            std::env::var_os("PATH")
                .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
                .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no Alertmanager binary on PATH: {INSTALL_HINT}"));

    let dir = tempfile::tempdir().unwrap();
    let mut config = yaml(&root().join("deploy/alertmanager/alertmanager.yml"));
    let names: Vec<Value> = seq(&config["receivers"])
        .iter()
        .map(|r| {
            let mut m = serde_yaml::Mapping::new();
            m.insert("name".into(), r["name"].clone());
            Value::Mapping(m)
        })
        .collect();
    config["receivers"] = Value::Sequence(names);
    config["templates"] = Value::Sequence(vec![root()
        .join("deploy/alertmanager/templates/*.tmpl")
        .to_string_lossy()
        .to_string()
        .into()]);
    let config_path = dir.path().join("alertmanager.yml");
    std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap()).unwrap();

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let base = format!("http://127.0.0.1:{port}");
    let log_path = dir.path().join("alertmanager.log");
    let child = Command::new(bin)
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        // A file, not a pipe: nobody drains a pipe while it runs, and a full one would block it.
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut am = Kill(child);

    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        if http
            .get(format!("{base}/-/ready"))
            .send()
            .map(|r| r.status().is_success())
            .unwrap_or(false)
        {
            break;
        }
        if let Ok(Some(status)) = am.0.try_wait() {
            panic!("{bin} exited ({status}) during start:\n{}", read(&log_path));
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{bin} not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let post = |alerts: &[serde_json::Value]| {
        let resp = http
            .post(format!("{base}/api/v2/alerts"))
            .json(&alerts)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "POST alerts: {}", resp.status());
    };
    let alert = |labels: serde_json::Value| serde_json::json!({"labels": labels, "annotations": {"summary": "test"}});
    // Inhibition state per alert name + distinguishing label, from the API.
    let states = || -> BTreeMap<String, bool> {
        let list: Vec<serde_json::Value> = http
            .get(format!("{base}/api/v2/alerts"))
            .send()
            .unwrap()
            .json()
            .unwrap();
        list.iter()
            .map(|a| {
                let l = &a["labels"];
                let key = format!(
                    "{}/{}/{}",
                    l["alertname"].as_str().unwrap_or(""),
                    l["severity"].as_str().unwrap_or(""),
                    ["cluster_id", "stage", "surface"]
                        .iter()
                        .filter_map(|k| l[*k].as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let inhibited = !seq_json(&a["status"]["inhibitedBy"]).is_empty();
                (key, inhibited)
            })
            .collect()
    };
    fn seq_json(v: &serde_json::Value) -> &[serde_json::Value] {
        v.as_array().map(Vec::as_slice).unwrap_or(&[])
    }

    // Phase 1: severities. Same alert and cluster: critical mutes warning and info, warning mutes
    // info; another cluster or stage is left alone.
    post(&[
        alert(
            serde_json::json!({"alertname": "ClusterwatchUnderEnforcement", "severity": "critical", "service": "clusterwatch", "kind": "under_enforcement", "cluster_id": "c-1"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchUnderEnforcement", "severity": "warning", "service": "clusterwatch", "kind": "under_enforcement", "cluster_id": "c-1"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchUnderEnforcement", "severity": "warning", "service": "clusterwatch", "kind": "under_enforcement", "cluster_id": "c-2"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchCoordinatedCluster", "severity": "warning", "service": "clusterwatch", "kind": "coordinated_cluster", "cluster_id": "c-3"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchCoordinatedCluster", "severity": "info", "service": "clusterwatch", "kind": "coordinated_cluster", "cluster_id": "c-3"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchLaunchDrift", "severity": "info", "service": "clusterwatch", "kind": "launch_drift", "surface": "computer_use"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchStageErrorRatioHigh", "severity": "critical", "service": "clusterwatch", "job": "clusterwatch", "stage": "source"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchStageErrorRatioHigh", "severity": "warning", "service": "clusterwatch", "job": "clusterwatch", "stage": "source"}),
        ),
        alert(
            serde_json::json!({"alertname": "ClusterwatchStageErrorRatioHigh", "severity": "warning", "service": "clusterwatch", "job": "clusterwatch", "stage": "embed"}),
        ),
        alert(serde_json::json!({"alertname": "Watchdog", "severity": "none"})),
    ]);
    let expected_phase1: BTreeMap<&str, bool> = [
        ("ClusterwatchUnderEnforcement/critical/c-1", false),
        ("ClusterwatchUnderEnforcement/warning/c-1", true),
        ("ClusterwatchUnderEnforcement/warning/c-2", false),
        ("ClusterwatchCoordinatedCluster/warning/c-3", false),
        ("ClusterwatchCoordinatedCluster/info/c-3", true),
        ("ClusterwatchLaunchDrift/info/computer_use", false),
        ("ClusterwatchStageErrorRatioHigh/critical/source", false),
        ("ClusterwatchStageErrorRatioHigh/warning/source", true),
        ("ClusterwatchStageErrorRatioHigh/warning/embed", false),
        ("Watchdog/none/", false),
    ]
    .into_iter()
    .collect();
    // Polls until every expected key has its expected state, or 15 s pass; returns the last view.
    let settled = |expected: &BTreeMap<String, bool>| -> BTreeMap<String, bool> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = states();
            let matches = expected.iter().all(|(k, v)| got.get(k) == Some(v));
            if matches || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let got = settled(
        &expected_phase1
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
    );
    for (key, inhibited) in &expected_phase1 {
        assert_eq!(
            got.get(*key),
            Some(inhibited),
            "phase 1, {key}: all states {got:#?}"
        );
    }

    // Phase 2: ClusterwatchDown mutes every detector alert, and nothing else.
    post(&[alert(
        serde_json::json!({"alertname": "ClusterwatchDown", "severity": "critical", "service": "clusterwatch", "job": "clusterwatch"}),
    )]);
    let mut expected_phase2: BTreeMap<String, bool> = expected_phase1
        .iter()
        .map(|(key, inhibited_before)| {
            let detector = DETECTOR_ALERTS
                .iter()
                .any(|d| key.starts_with(&format!("{d}/")));
            (key.to_string(), *inhibited_before || detector)
        })
        .collect();
    expected_phase2.insert("ClusterwatchDown/critical/".to_string(), false);
    let got = settled(&expected_phase2);
    for (key, expected) in &expected_phase2 {
        assert_eq!(
            got.get(key),
            Some(expected),
            "phase 2, {key}: all states {got:#?}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Rules, their tests and the runbook

#[test]
fn alert_rules_follow_the_conventions_and_are_tested_and_documented() {
    let rules_path = root().join("deploy/prometheus/rules/clusterwatch.rules.yml");
    let rules = yaml(&rules_path);
    let runbook = read(&root().join("deploy/RUNBOOK.md"));
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_lowercase())
        .collect();

    let mut alerts = BTreeSet::new();
    let mut records = 0;
    for group in seq(&rules["groups"]) {
        for rule in seq(&group["rules"]) {
            if let Some(record) = rule["record"].as_str() {
                records += 1;
                // level:metric:operations
                let parts: Vec<&str> = record.split(':').collect();
                assert!(
                    parts.len() == 3
                        && parts.iter().all(|p| !p.is_empty()
                            && p.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')),
                    "recording rule `{record}` is not level:metric:operations"
                );
                assert!(
                    parts[1].starts_with("clusterwatch_"),
                    "`{record}`: metric part must name a clusterwatch metric"
                );
                continue;
            }
            let name = str_of(&rule["alert"], "alert name");
            alerts.insert(name.to_string());
            let labels = string_map(&rule["labels"]);
            let severity = labels.get("severity").map(String::as_str);
            assert!(
                matches!(severity, Some("warning" | "critical" | "none")),
                "{name}: severity {severity:?} is not warning|critical|none"
            );
            if let Some(rest) = name.strip_prefix("Clusterwatch") {
                assert_eq!(
                    labels.get("service").map(String::as_str),
                    Some("clusterwatch"),
                    "{name}: service label"
                );
                assert!(
                    rest.starts_with(|c: char| c.is_ascii_uppercase()),
                    "{name}: CamelCase"
                );
            }
            let ann = string_map(&rule["annotations"]);
            for key in ["summary", "description", "runbook_url"] {
                assert!(
                    ann.get(key).is_some_and(|v| !v.trim().is_empty()),
                    "{name}: annotation {key} missing"
                );
            }
            let url = &ann["runbook_url"];
            assert_eq!(
                url,
                &format!("{RUNBOOK_BASE}{}", name.to_lowercase()),
                "{name}: runbook_url"
            );
            assert!(
                headings.contains(&name.to_lowercase()),
                "RUNBOOK.md has no `## {name}` section"
            );
        }
    }
    assert!(records >= 5, "only {records} recording rules");
    for required in [
        "ClusterwatchDown",
        "ClusterwatchConsumerLagGrowing",
        "ClusterwatchStageErrorRatioHigh",
        "ClusterwatchNoEventsConsumed",
        "ClusterwatchSnapshotStale",
        "ClusterwatchFallbackSummarizerRatioHigh",
        "Watchdog",
    ] {
        assert!(
            alerts.contains(required),
            "alert {required} missing from {}",
            rules_path.display()
        );
    }
    for detector in DETECTOR_ALERTS {
        assert!(
            headings.contains(&detector.to_lowercase()),
            "RUNBOOK.md has no `## {detector}` section"
        );
    }

    // Every alert is unit-tested firing, and not firing (Watchdog cannot be silent).
    let mut firing = BTreeSet::new();
    let mut silent = BTreeSet::new();
    let tests = glob_files(&root().join("deploy/prometheus/tests/*.yml"));
    assert!(
        !tests.is_empty(),
        "no promtool tests in deploy/prometheus/tests"
    );
    for file in &tests {
        let doc = yaml(file);
        for rf in seq(&doc["rule_files"]) {
            let path = normalize(&file.parent().unwrap().join(str_of(rf, "rule_files entry")));
            assert_eq!(
                path,
                rules_path,
                "{}: rule_files must name the rules file",
                file.display()
            );
        }
        for test in seq(&doc["tests"]) {
            for case in seq(&test["alert_rule_test"]) {
                let name = str_of(&case["alertname"], "alertname").to_string();
                if seq(&case["exp_alerts"]).is_empty() {
                    silent.insert(name);
                } else {
                    firing.insert(name);
                }
            }
        }
    }
    for name in &alerts {
        assert!(firing.contains(name), "no promtool test where {name} fires");
        if name != "Watchdog" {
            assert!(
                silent.contains(name),
                "no promtool test where {name} stays silent"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// compose

struct Mounts {
    /// (host path, container path) of each bind mount.
    binds: Vec<(PathBuf, PathBuf)>,
}

impl Mounts {
    /// The host path behind a container path, through the longest mount above it.
    fn host(&self, container: &Path) -> Option<PathBuf> {
        self.binds
            .iter()
            .filter(|(_, c)| container.starts_with(c))
            .max_by_key(|(_, c)| c.components().count())
            .map(|(h, c)| match container.strip_prefix(c).unwrap() {
                rest if rest.as_os_str().is_empty() => h.clone(),
                rest => h.join(rest),
            })
    }
}

fn compose_mounts(deploy: &Path, compose: &Value, service: &str) -> Mounts {
    let named: BTreeSet<String> = compose["volumes"]
        .as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let mut binds = Vec::new();
    for v in seq(&compose["services"][service]["volumes"]) {
        let (source, target) = match v {
            Value::String(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                assert!(parts.len() >= 2, "{service}: volume `{s}` has no target");
                (parts[0].to_string(), parts[1].to_string())
            }
            other => (
                str_of(&other["source"], "volume source").to_string(),
                str_of(&other["target"], "volume target").to_string(),
            ),
        };
        if source.starts_with('.') || source.starts_with('/') {
            let host = normalize(&deploy.join(&source));
            assert!(
                host.exists(),
                "{service}: mounted {source} does not exist ({})",
                host.display()
            );
            binds.push((host, PathBuf::from(target)));
        } else {
            assert!(
                named.contains(&source),
                "{service}: volume `{source}` is not declared under volumes:"
            );
        }
    }
    Mounts { binds }
}

fn flag_value(args: &[Value], flag: &str) -> Option<String> {
    let args: Vec<&str> = args.iter().filter_map(Value::as_str).collect();
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{flag}=")) {
            Some(v.to_string())
        } else if *a == flag {
            args.get(i + 1).map(|s| s.to_string())
        } else {
            None
        }
    })
}

#[test]
fn compose_mounts_existing_files_and_its_services_agree() {
    let deploy = root().join("deploy");
    let compose = yaml(&deploy.join("compose.yaml"));
    let services = &compose["services"];
    let names: BTreeSet<String> = services
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    for required in [
        "kafka",
        "clusterwatch",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        assert!(
            names.contains(required),
            "compose has no `{required}` service"
        );
    }
    for name in &names {
        let svc = &services[name.as_str()];
        assert!(
            svc["image"].is_string() || svc["build"].is_mapping(),
            "{name}: no image or build"
        );
        let deps: Vec<String> = match &svc["depends_on"] {
            Value::Sequence(s) => s
                .iter()
                .map(|d| str_of(d, "depends_on").to_string())
                .collect(),
            Value::Mapping(m) => m.keys().map(|k| k.as_str().unwrap().to_string()).collect(),
            _ => vec![],
        };
        for d in deps {
            assert!(names.contains(&d), "{name} depends on unknown service {d}");
        }
        compose_mounts(&deploy, &compose, name); // asserts every bind source exists
    }

    // Kafka in KRaft mode, broker and controller in one node.
    let kafka_env = string_map(&services["kafka"]["environment"]);
    assert_eq!(
        kafka_env.get("KAFKA_PROCESS_ROLES").map(String::as_str),
        Some("broker,controller")
    );
    assert!(kafka_env.contains_key("KAFKA_CONTROLLER_QUORUM_VOTERS"));

    // clusterwatch: built from the Dockerfile, run with a config that exists and loads.
    let cw = &services["clusterwatch"];
    let context = normalize(&deploy.join(str_of(&cw["build"]["context"], "build.context")));
    let dockerfile = context.join(str_of(&cw["build"]["dockerfile"], "build.dockerfile"));
    assert!(dockerfile.is_file(), "{} missing", dockerfile.display());
    let command = seq(&cw["command"]);
    assert_eq!(
        command.first().and_then(Value::as_str),
        Some("run"),
        "clusterwatch must `run`"
    );
    let config_in_container = flag_value(command, "--config").expect("clusterwatch --config");
    let mounts = compose_mounts(&deploy, &compose, "clusterwatch");
    let config_host = mounts
        .host(Path::new(&config_in_container))
        .expect("clusterwatch config is mounted");
    let env: Vec<(String, String)> = string_map(&cw["environment"])
        .into_iter()
        .filter(|(k, _)| k.starts_with("CLUSTERWATCH_") && k != "CLUSTERWATCH_LOG")
        .collect();
    let settings = load_settings(&config_host, &env)
        .unwrap_or_else(|e| panic!("{}: {e}", config_host.display()));
    let listen_port = settings.http.listen.rsplit(':').next().unwrap().to_string();
    assert!(
        settings.http.listen.starts_with("0.0.0.0:"),
        "clusterwatch must listen on all interfaces in a container"
    );
    assert!(
        settings.kafka.bootstrap_servers.starts_with("kafka:"),
        "clusterwatch must use the compose broker"
    );
    assert_eq!(settings.alerts.alertmanager_url, "http://alertmanager:9093");

    // Prometheus: its config is the repo's, its rule files resolve through the mounts, and it
    // scrapes clusterwatch where clusterwatch listens.
    let prom = &services["prometheus"];
    let prom_mounts = compose_mounts(&deploy, &compose, "prometheus");
    let prom_config_c =
        PathBuf::from(flag_value(seq(&prom["command"]), "--config.file").expect("--config.file"));
    let prom_config = prom_mounts
        .host(&prom_config_c)
        .expect("prometheus config is mounted");
    assert_eq!(prom_config, deploy.join("prometheus/prometheus.yml"));
    let prom_yml = yaml(&prom_config);
    let rule_files = seq(&prom_yml["rule_files"]);
    assert!(!rule_files.is_empty(), "prometheus.yml has no rule_files");
    for rf in rule_files {
        let in_container = prom_config_c
            .parent()
            .unwrap()
            .join(str_of(rf, "rule file"));
        let host = prom_mounts
            .host(&in_container)
            .unwrap_or_else(|| panic!("{} is not mounted", in_container.display()));
        assert!(
            !glob_files(&host).is_empty(),
            "rule_files {} matches nothing ({})",
            in_container.display(),
            host.display()
        );
        // The same pattern from the repo (promtool check config resolves it there).
        assert!(
            !glob_files(&prom_config.parent().unwrap().join(str_of(rf, "rule file"))).is_empty()
        );
    }
    let cw_job = seq(&prom_yml["scrape_configs"])
        .iter()
        .find(|j| j["job_name"].as_str() == Some("clusterwatch"))
        .expect("a scrape job named clusterwatch (the rules select job=\"clusterwatch\")");
    let targets: Vec<&str> = seq(&cw_job["static_configs"])
        .iter()
        .flat_map(|s| seq(&s["targets"]))
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        targets,
        vec![format!("clusterwatch:{listen_port}").as_str()]
    );
    for am in seq(&prom_yml["alerting"]["alertmanagers"]) {
        for s in seq(&am["static_configs"]) {
            for t in seq(&s["targets"]) {
                let host = str_of(t, "target").split(':').next().unwrap();
                assert!(
                    names.contains(host),
                    "Prometheus alerts {host}, not a compose service"
                );
            }
        }
    }

    // Alertmanager: the production config, its templates and every secret file it reads.
    let am = &services["alertmanager"];
    let am_mounts = compose_mounts(&deploy, &compose, "alertmanager");
    let am_config_c =
        PathBuf::from(flag_value(seq(&am["command"]), "--config.file").expect("--config.file"));
    let am_config = am_mounts
        .host(&am_config_c)
        .expect("alertmanager config is mounted");
    assert_eq!(am_config, deploy.join("alertmanager/alertmanager.yml"));
    let am_yml = yaml(&am_config);
    for t in seq(&am_yml["templates"]) {
        let in_container = am_config_c.parent().unwrap().join(str_of(t, "template"));
        let host = am_mounts
            .host(&in_container)
            .unwrap_or_else(|| panic!("{} is not mounted", in_container.display()));
        assert!(
            !glob_files(&host).is_empty(),
            "templates {} match nothing",
            in_container.display()
        );
    }
    let mut secret_files = 0;
    for r in seq(&am_yml["receivers"]) {
        for kind in ["slack_configs", "pagerduty_configs", "webhook_configs"] {
            for c in seq(&r[kind]) {
                for key in ["api_url_file", "routing_key_file", "url_file"] {
                    if let Some(f) = c[key].as_str() {
                        secret_files += 1;
                        let host = am_mounts
                            .host(Path::new(f))
                            .unwrap_or_else(|| panic!("{f} is not mounted"));
                        assert!(host.is_file(), "{f} -> {} missing", host.display());
                    }
                }
            }
        }
    }
    assert!(
        secret_files >= 4,
        "expected the Slack and PagerDuty secrets to come from files"
    );

    // Grafana: provisioning mounted where Grafana reads it, every dashboards provider path
    // mounted from a directory with dashboards, datasources pointing at compose services.
    let gf_mounts = compose_mounts(&deploy, &compose, "grafana");
    let provisioning = gf_mounts
        .host(Path::new("/etc/grafana/provisioning"))
        .expect("grafana/provisioning mounted at /etc/grafana/provisioning");
    assert_eq!(provisioning, root().join("grafana/provisioning"));
    let providers = glob_files(&provisioning.join("dashboards/*.yaml"));
    assert!(
        !providers.is_empty(),
        "no dashboard providers in grafana/provisioning/dashboards"
    );
    for file in providers {
        for p in seq(&yaml(&file)["providers"]) {
            let path = str_of(&p["options"]["path"], "provider options.path");
            let host = gf_mounts
                .host(Path::new(path))
                .unwrap_or_else(|| panic!("{path} (from {}) is not mounted", file.display()));
            assert!(
                !glob_files(&host.join("*.json")).is_empty(),
                "{path} -> {} holds no dashboard",
                host.display()
            );
        }
    }
    for file in glob_files(&provisioning.join("datasources/*.yaml")) {
        for ds in seq(&yaml(&file)["datasources"]) {
            let url = str_of(&ds["url"], "datasource url");
            let host = url
                .split("://")
                .nth(1)
                .unwrap_or(url)
                .split([':', '/'])
                .next()
                .unwrap();
            assert!(
                names.contains(host),
                "{}: datasource host {host} is not a compose service",
                file.display()
            );
        }
    }
}

#[test]
fn dockerfile_copies_only_existing_allow_listed_paths() {
    let dockerfile = read(&root().join("deploy/Dockerfile"));
    let ignore = read(&root().join("deploy/Dockerfile.dockerignore"));
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    let mut copies = 0;
    for line in dockerfile.lines() {
        let Some(rest) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        if rest.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = rest
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[..words.len() - 1] {
            copies += 1;
            assert!(root().join(src).exists(), "Dockerfile copies missing {src}");
            assert!(
                allowed
                    .iter()
                    .any(|a| src == a || Path::new(src).starts_with(a)),
                "Dockerfile copies {src}, which Dockerfile.dockerignore leaves out of the context"
            );
        }
    }
    assert!(copies >= 5, "found only {copies} COPY sources");
    assert!(
        dockerfile.contains(r#"CMD ["run", "--config", "/etc/clusterwatch/clusterwatch.toml"]"#)
    );
}

// ------------------------------------------------------------------------------------------
// Kubernetes

#[test]
fn kubernetes_manifests_reference_each_other_correctly() {
    let dir = root().join("deploy/k8s");
    let files = glob_files(&dir.join("*.yaml"));
    assert!(
        files.len() >= 5,
        "expected the k8s manifests, found {files:?}"
    );
    let mut docs = Vec::new();
    for f in &files {
        for d in yaml_docs(f) {
            let kind = str_of(&d["kind"], "kind").to_string();
            assert!(
                d["apiVersion"].as_str().is_some_and(|s| !s.is_empty()),
                "{}: {kind} without apiVersion",
                f.display()
            );
            let name = str_of(&d["metadata"]["name"], "metadata.name").to_string();
            if kind != "Namespace" {
                assert_eq!(
                    d["metadata"]["namespace"].as_str(),
                    Some("clusterwatch"),
                    "{kind}/{name}: namespace"
                );
            }
            docs.push((kind, name, d));
        }
    }
    fn of_kind<'a>(
        docs: &'a [(String, String, Value)],
        k: &'a str,
    ) -> impl Iterator<Item = &'a (String, String, Value)> {
        docs.iter().filter(move |(kind, _, _)| kind == k)
    }
    assert_eq!(of_kind(&docs, "Namespace").count(), 1);
    let config_maps: BTreeMap<&str, &Value> = of_kind(&docs, "ConfigMap")
        .map(|(_, n, d)| (n.as_str(), d))
        .collect();

    // Workloads: (kind, name, template labels, doc).
    let workloads: Vec<(&str, &str, BTreeMap<String, String>, &Value)> = docs
        .iter()
        .filter(|(k, _, _)| k == "Deployment" || k == "StatefulSet")
        .map(|(k, n, d)| {
            (
                k.as_str(),
                n.as_str(),
                string_map(&d["spec"]["template"]["metadata"]["labels"]),
                d,
            )
        })
        .collect();
    let roles: BTreeMap<&str, &str> = [("Deployment", "enrich"), ("StatefulSet", "cluster")]
        .into_iter()
        .collect();
    for (kind, role) in &roles {
        assert!(
            workloads.iter().any(|(k, ..)| k == kind),
            "no {kind} for --role {role}"
        );
    }
    for (kind, name, labels, d) in &workloads {
        let spec = &d["spec"];
        let selector = string_map(&spec["selector"]["matchLabels"]);
        assert!(
            !selector.is_empty() && is_subset(&selector, labels),
            "{kind}/{name}: selector does not select its pods"
        );
        let pod = &spec["template"]["spec"];
        let ann = string_map(&spec["template"]["metadata"]["annotations"]);
        assert_eq!(
            ann.get("prometheus.io/scrape").map(String::as_str),
            Some("true"),
            "{name}: scrape annotation"
        );
        assert_eq!(
            ann.get("prometheus.io/path").map(String::as_str),
            Some("/metrics"),
            "{name}: path annotation"
        );

        let mut volumes: BTreeSet<String> = seq(&pod["volumes"])
            .iter()
            .map(|v| str_of(&v["name"], "volume").to_string())
            .collect();
        if *kind == "StatefulSet" {
            let vcts = seq(&spec["volumeClaimTemplates"]);
            assert!(
                !vcts.is_empty(),
                "StatefulSet/{name}: no volumeClaimTemplates"
            );
            volumes.extend(
                vcts.iter()
                    .map(|v| str_of(&v["metadata"]["name"], "claim").to_string()),
            );
            let service = str_of(&spec["serviceName"], "serviceName");
            let svc = docs
                .iter()
                .find(|(k, n, _)| k == "Service" && n == service)
                .unwrap_or_else(|| {
                    panic!("StatefulSet/{name}: serviceName {service} has no Service")
                });
            assert_eq!(
                svc.2["spec"]["clusterIP"].as_str(),
                Some("None"),
                "{service} must be headless"
            );
            assert!(
                is_subset(&string_map(&svc.2["spec"]["selector"]), labels),
                "{service} does not select {name}"
            );
        }
        for v in seq(&pod["volumes"]) {
            if let Some(cm) = v["configMap"]["name"].as_str() {
                assert!(
                    config_maps.contains_key(cm),
                    "{name}: ConfigMap {cm} not defined"
                );
            }
        }

        let containers = seq(&pod["containers"]);
        assert!(!containers.is_empty(), "{name}: no containers");
        for c in containers {
            let ports: BTreeMap<String, i64> = seq(&c["ports"])
                .iter()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or("").to_string(),
                        p["containerPort"].as_i64().expect("containerPort"),
                    )
                })
                .collect();
            assert_eq!(
                ann.get("prometheus.io/port").and_then(|p| p.parse().ok()),
                ports.get("metrics").copied(),
                "{name}: scrape port is the metrics port"
            );
            for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let get = &c[probe]["httpGet"];
                assert_eq!(
                    get["path"].as_str(),
                    Some("/healthz"),
                    "{name}: {probe} path"
                );
                let port = get["port"].as_str().expect("named probe port");
                assert!(
                    ports.contains_key(port),
                    "{name}: {probe} port {port} not declared"
                );
            }
            let mounts: Vec<(String, PathBuf)> = seq(&c["volumeMounts"])
                .iter()
                .map(|m| {
                    (
                        str_of(&m["name"], "mount").to_string(),
                        PathBuf::from(str_of(&m["mountPath"], "mountPath")),
                    )
                })
                .collect();
            for (m, _) in &mounts {
                assert!(volumes.contains(m), "{name}: volumeMount {m} has no volume");
            }

            let args = seq(&c["args"]);
            assert_eq!(
                args.first().and_then(Value::as_str),
                Some("run"),
                "{name}: args must `run`"
            );
            assert_eq!(
                flag_value(args, "--role").as_deref(),
                Some(roles[kind]),
                "{name}: --role"
            );
            // The config file: a key of the ConfigMap mounted above it.
            let config = PathBuf::from(flag_value(args, "--config").expect("--config"));
            let (vol, mount_path) = mounts
                .iter()
                .filter(|(_, p)| config.starts_with(p))
                .max_by_key(|(_, p)| p.components().count())
                .unwrap_or_else(|| panic!("{name}: {} is not mounted", config.display()));
            let cm_name = seq(&pod["volumes"])
                .iter()
                .find(|v| v["name"].as_str() == Some(vol))
                .and_then(|v| v["configMap"]["name"].as_str())
                .unwrap_or_else(|| {
                    panic!("{name}: {} is not on a ConfigMap volume", config.display())
                });
            let key = config
                .strip_prefix(mount_path)
                .unwrap()
                .to_string_lossy()
                .to_string();
            let toml = config_maps[cm_name]["data"][key.as_str()]
                .as_str()
                .unwrap_or_else(|| panic!("ConfigMap {cm_name} has no key {key}"));
            let env: Vec<(String, String)> = seq(&c["env"])
                .iter()
                .filter_map(|e| {
                    Some((
                        e["name"].as_str()?.to_string(),
                        e["value"].as_str()?.to_string(),
                    ))
                })
                .filter(|(k, _)| k.starts_with("CLUSTERWATCH_") && k != "CLUSTERWATCH_LOG")
                .collect();
            for e in seq(&c["env"]) {
                if let Some(secret) = e["valueFrom"]["secretKeyRef"].as_mapping() {
                    // The Secret is created by the operator (README), so references must be optional.
                    assert_eq!(
                        secret.get("optional").and_then(Value::as_bool),
                        Some(true),
                        "{name}: secret refs must be optional"
                    );
                }
            }
            let tmp = tempfile::tempdir().unwrap();
            let file = tmp.path().join(&key);
            std::fs::write(&file, toml).unwrap();
            let settings = load_settings(&file, &env)
                .unwrap_or_else(|e| panic!("{name}: ConfigMap {cm_name} + env: {e}"));
            assert_eq!(
                settings.http.listen,
                format!("0.0.0.0:{}", ports["metrics"]),
                "{name}: clusterwatch must listen on the metrics port"
            );
            if *kind == "StatefulSet" {
                let data = mounts
                    .iter()
                    .find(|(_, p)| Path::new(&settings.snapshot.dir).starts_with(p));
                assert!(
                    data.is_some_and(|(v, _)| seq(&spec["volumeClaimTemplates"])
                        .iter()
                        .any(|t| t["metadata"]["name"].as_str() == Some(v))),
                    "{name}: snapshot.dir {:?} is not on the persistent volume",
                    settings.snapshot.dir
                );
            }
        }
    }

    // Services select pods that exist, on ports they declare.
    for (_, name, d) in of_kind(&docs, "Service") {
        let selector = string_map(&d["spec"]["selector"]);
        let selected: Vec<_> = workloads
            .iter()
            .filter(|(_, _, labels, _)| is_subset(&selector, labels))
            .collect();
        assert!(
            !selector.is_empty() && !selected.is_empty(),
            "Service/{name} selects no pods"
        );
        for p in seq(&d["spec"]["ports"]) {
            let target = &p["targetPort"];
            for (_, wname, _, w) in &selected {
                let ok = seq(&w["spec"]["template"]["spec"]["containers"])
                    .iter()
                    .flat_map(|c| seq(&c["ports"]))
                    .any(|cp| {
                        target
                            .as_str()
                            .is_some_and(|t| cp["name"].as_str() == Some(t))
                            || target
                                .as_i64()
                                .is_some_and(|t| cp["containerPort"].as_i64() == Some(t))
                    });
                assert!(ok, "Service/{name}: targetPort {target:?} not on {wname}");
            }
        }
    }

    // A PodDisruptionBudget that selects a multi-replica workload (one on a single replica would
    // block drains).
    let pdbs: Vec<_> = of_kind(&docs, "PodDisruptionBudget").collect();
    assert!(!pdbs.is_empty(), "no PodDisruptionBudget");
    for (_, name, d) in pdbs {
        let selector = string_map(&d["spec"]["selector"]["matchLabels"]);
        let selected: Vec<_> = workloads
            .iter()
            .filter(|(_, _, labels, _)| is_subset(&selector, labels))
            .collect();
        assert!(
            !selector.is_empty() && !selected.is_empty(),
            "PodDisruptionBudget/{name} selects no pods"
        );
        for (_, wname, _, w) in selected {
            let replicas = w["spec"]["replicas"].as_i64().unwrap_or(1);
            assert!(
                replicas > 1,
                "PodDisruptionBudget/{name} covers {wname} with {replicas} replica"
            );
        }
    }
}
