//! A real Alertmanager process for tests: its own free loopback port, config, storage and log
//! in a scratch directory, clustering off; stopped, restarted on the same port, and asked
//! what it holds through its own API.
//!
//! Alertmanager keeps alerts in memory only: a restart forgets them until they are re-sent.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::Url;
use serde::Deserialize;

/// How long Alertmanager may take to start answering `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Every receiver needs a route; this one notifies nobody.
const CONFIG: &str = "\
route:
  receiver: blackhole
receivers:
  - name: blackhole
";

/// An alert as Alertmanager's `GET /api/v2/alerts` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceivedAlert {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "endsAt")]
    pub ends_at: DateTime<Utc>,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: Option<String>,
    pub status: ReceivedAlertStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReceivedAlertStatus {
    /// `active`, `suppressed` or `unprocessed`.
    pub state: String,
}

/// An Alertmanager process on a free loopback port, killed (and its directory removed) on drop.
pub struct AlertmanagerProcess {
    child: Option<Child>,
    port: u16,
    url: Url,
    dir: PathBuf,
    client: reqwest::Client,
}

impl AlertmanagerProcess {
    /// Starts Alertmanager (`ALERTMANAGER_BIN`, default `/usr/bin/prometheus-alertmanager`)
    /// and waits until it is ready.
    pub async fn start() -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("alertmanager-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).expect("create alertmanager dir");
        std::fs::write(dir.join("alertmanager.yml"), CONFIG).expect("write alertmanager config");
        // Port 0: the kernel picks a free port as Alertmanager binds it, and the log says which
        // (a port picked beforehand and given up could be bound by another process first).
        let mut process = AlertmanagerProcess {
            child: None,
            port: 0,
            url: Url::parse("http://127.0.0.1:0").expect("loopback URL"),
            dir,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .expect("HTTP client"),
        };
        process.restart().await;
        process
    }

    /// The base URL, e.g. `http://127.0.0.1:40123/`.
    pub fn url(&self) -> Url {
        self.url.clone()
    }

    /// Kills the process; its port, config and storage stay for `restart`.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// (Re)starts it on the same port and storage, and waits until `/-/ready` answers 200.
    /// Alerts do not survive this.
    pub async fn restart(&mut self) {
        self.stop();
        let logged_before = std::fs::metadata(self.log_path()).map_or(0, |m| m.len() as usize);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open alertmanager log");
        let child = Command::new(
            std::env::var("ALERTMANAGER_BIN")
                .unwrap_or_else(|_| "/usr/bin/prometheus-alertmanager".to_owned()),
        )
        .arg(format!(
            "--config.file={}",
            self.dir.join("alertmanager.yml").display()
        ))
        .arg(format!(
            "--storage.path={}",
            self.dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
        // No gossip port: replicas in a test are independent, and ports cannot clash.
        .arg("--cluster.listen-address=")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log handle"))
        .stderr(log)
        .spawn()
        .expect("start alertmanager (set ALERTMANAGER_BIN?)");
        self.child = Some(child);
        self.wait_until_listening(logged_before).await;
        self.wait_until_ready().await;
    }

    /// The alerts it holds that are active (neither resolved nor expired), including the
    /// ones not yet processed by its dispatcher.
    pub async fn alerts(&self) -> Vec<ReceivedAlert> {
        let mut url = self.url.join("api/v2/alerts").expect("alerts URL");
        url.query_pairs_mut()
            .append_pair("active", "true")
            .append_pair("silenced", "false")
            .append_pair("inhibited", "false")
            .append_pair("unprocessed", "true");
        let response = self
            .client
            .get(url)
            .send()
            .await
            .expect("GET /api/v2/alerts");
        let status = response.status();
        let body = response.text().await.expect("alerts body");
        assert!(status.is_success(), "GET /api/v2/alerts: {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("alerts {body}: {e}"))
    }

    /// One sample of its own `/metrics`, e.g.
    /// `alertmanager_alerts_invalid_total{version="v2"}`; `None` when it has no such series.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self
            .client
            .get(self.url.join("metrics").expect("metrics URL"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.trim().parse().expect("metric value"))
        })
    }

    /// What it has logged since it was first started.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("alertmanager.log")
    }

    /// Waits for this start's "Listening on" log line (after the first `logged_before` bytes
    /// of the log) and takes its port.
    async fn wait_until_listening(&mut self, logged_before: usize) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.exited_is_fatal();
            let log = std::fs::read(self.log_path()).unwrap_or_default();
            let this_start = String::from_utf8_lossy(log.get(logged_before..).unwrap_or_default());
            if let Some(port) =
                crate::complete_lines(&this_start).find_map(crate::prometheus::listening_port)
            {
                self.port = port;
                self.url = Url::parse(&format!("http://127.0.0.1:{port}")).expect("loopback URL");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Alertmanager did not listen within {READY_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn exited_is_fatal(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().expect("poll alertmanager"))
        {
            panic!("Alertmanager exited with {status}:\n{}", self.log());
        }
    }

    async fn wait_until_ready(&mut self) {
        let ready = self.url.join("-/ready").expect("ready URL");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.exited_is_fatal();
            let answer = self
                .client
                .get(ready.clone())
                .timeout(POLL_INTERVAL * 50)
                .send()
                .await;
            if matches!(&answer, Ok(r) if r.status().is_success()) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "Alertmanager was not ready within {READY_TIMEOUT:?} (last answer: {answer:?}):\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for AlertmanagerProcess {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl std::fmt::Debug for AlertmanagerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertmanagerProcess")
            .field("url", &self.url.as_str())
            .field("running", &self.child.is_some())
            .finish()
    }
}
