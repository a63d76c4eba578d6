//! `clusterwatch run` as a real process against the real broker: it serves `/metrics` and
//! `/healthz`, and on SIGTERM it drains, commits and exits 0 — also when stopped mid-stream.

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clusterwatch::demo::traffic::{self, TrafficSpec};
use common::*;

const PARTITIONS: i32 = 2;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["run", "--config"])
        .arg(config)
        .env("CLUSTERWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start clusterwatch run")
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let body = reqwest::blocking::get(format!("http://127.0.0.1:{port}/metrics"))
        .ok()?
        .text()
        .ok()?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn sigterm_and_wait(mut child: Child, within: Duration) -> (i32, String) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut logs = String::new();
            if let Some(mut err) = child.stderr.take() {
                let _ = err.read_to_string(&mut logs);
            }
            return (status.code().unwrap_or(-1), logs);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clusterwatch did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

async fn prepared(
    name: &str,
    events: usize,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    u16,
    String,
    String,
    usize,
) {
    let bootstrap = kafka_bootstrap();
    let topic = unique(&format!("{name}-conversations"));
    let dead_letter = unique(&format!("{name}-dead-letter"));
    let group = unique(&format!("{name}-group"));
    create_topics(&bootstrap, &[(&topic, PARTITIONS), (&dead_letter, 1)]).await;
    let messages = traffic::generate(&TrafficSpec {
        seed: 77,
        organic_events: events,
        campaign: None,
        invalid_events: 0,
        duplicate_events: 0,
        ..Default::default()
    });
    produce(&bootstrap, &topic, &messages).await;
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("clusterwatch.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic = \"{topic}\"\ndead_letter_topic = \"{dead_letter}\"\ngroup_id = \"{group}\"\n\
             [embedder]\nmodel_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n",
            repo_root().join("models/all-MiniLM-L6-v2").display()
        ),
    )
    .unwrap();
    (dir, config, port, topic, group, messages.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_after_the_stream_commits_everything_and_exits_zero() {
    let (_dir, config, port, topic, group, total) = prepared("sigterm-end", 400).await;
    let child = start(&config);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while metric(port, "clusterwatch_offsets_stored_total").unwrap_or(0.0) < total as f64 {
            assert!(
                Instant::now() < deadline,
                "the stream was not processed in time"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let health = reqwest::blocking::get(format!("http://127.0.0.1:{port}/healthz")).unwrap();
        assert_eq!(health.status(), 200);
        let api = reqwest::blocking::get(format!("http://127.0.0.1:{port}/api/clusters"))
            .unwrap()
            .text()
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&api).expect("JSON");
        assert!(parsed["clusters"].is_array(), "{api}");
        assert!(
            !api.contains("acct-") && !api.contains("conv-"),
            "ids never reach the API"
        );
        let (code, logs) = sigterm_and_wait(child, Duration::from_secs(60));
        assert_eq!(code, 0, "exit code; logs:\n{logs}");
        assert!(logs.contains("SIGTERM received"), "{logs}");
        assert!(logs.contains("drained and committed"), "{logs}");
        let (committed, end) = committed_and_end(&kafka_bootstrap(), &group, &topic, PARTITIONS);
        assert_eq!(end, total as i64);
        assert_eq!(committed, end);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_stream_drains_what_was_read_and_exits_zero() {
    let (_dir, config, port, topic, group, total) = prepared("sigterm-mid", 4000).await;
    let child = start(&config);
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(240);
        while metric(port, "clusterwatch_offsets_stored_total").unwrap_or(0.0) < 200.0 {
            assert!(Instant::now() < deadline, "nothing was processed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (code, logs) = sigterm_and_wait(child, Duration::from_secs(90));
        assert_eq!(code, 0, "exit code; logs:\n{logs}");
        let (committed, end) = committed_and_end(&kafka_bootstrap(), &group, &topic, PARTITIONS);
        assert_eq!(end, total as i64);
        assert!(
            committed >= 200,
            "what was processed is committed: {committed}"
        );
        assert!(committed < end, "the stop really was mid-stream");
    })
    .await
    .unwrap();
}
