//! `clusterwatch run` as a real child process: start it on a config file, read its `/metrics`,
//! stop it with SIGTERM (drain and commit) or SIGKILL (a crash, nothing flushed). The fault tests
//! need the real process because a crash must not be able to run any of our own code.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Starts `clusterwatch run --config <config>`; its log goes to `log` (appended, so a test that
/// restarts the process keeps every incarnation's log).
pub fn start_run(config: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the process log");
    Command::new(env!("CARGO_BIN_EXE_clusterwatch"))
        .args(["run", "--config"])
        .arg(config)
        .env("CLUSTERWATCH_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start clusterwatch run")
}

/// The body of `GET http://127.0.0.1:<port><path>`, or `None` while the process is not serving.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .ok()?
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .ok()?
        .text()
        .ok()
}

/// The value of an unlabelled metric (or the first series of `name{...}` when `name` ends in `{`).
pub fn metric(port: u16, name: &str) -> Option<f64> {
    let body = http_get(port, "/metrics")?;
    body.lines()
        .find(|l| l.starts_with(name) && (name.ends_with('{') || l[name.len()..].starts_with(' ')))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// SIGKILL: the process gets no chance to flush, commit or snapshot.
pub fn sigkill(mut child: Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

/// SIGTERM, then waits up to `within` for the exit; returns the exit code.
pub fn sigterm_and_wait(mut child: Child, within: Duration) -> i32 {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("clusterwatch did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `prometheus` binary (Debian's package; `scripts/alertmanager.sh install` installs it).
pub fn prometheus_binary() -> PathBuf {
    let candidates = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("prometheus"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    candidates
        .into_iter()
        .chain([PathBuf::from("/usr/bin/prometheus")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the prometheus binary is missing (not on PATH, not /usr/bin/prometheus): the \
                 dashboard test runs every panel's query against a real Prometheus. Install it \
                 with `apt-get install prometheus` (scripts/alertmanager.sh install does), or run \
                 the tests through scripts/test.sh"
            )
        })
}

/// A child process killed when the test ends, pass or fail.
pub struct Process {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl Process {
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Process {
    let file = std::fs::File::create(&log).expect("log file");
    let child = cmd
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    Process { name, child, log }
}

/// Where `clusterwatch run` reads and writes, for [`run_config`].
pub struct RunTopics<'a> {
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub dead_letter: &'a str,
    pub group: &'a str,
}

/// A `clusterwatch run` config: the Kafka section from `topics`, the transformer from the repo's
/// model directory, `/metrics` on `port`, then `extra` TOML (snapshot, limits, alert sections).
pub fn run_config(topics: &RunTopics<'_>, port: u16, extra: &str) -> String {
    format!(
        "[kafka]\nbootstrap_servers = \"{}\"\ntopic = \"{}\"\ndead_letter_topic = \"{}\"\n\
         group_id = \"{}\"\n[embedder]\nmodel_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n{extra}",
        topics.bootstrap,
        topics.topic,
        topics.dead_letter,
        topics.group,
        super::repo_root().join("models/all-MiniLM-L6-v2").display(),
    )
}
