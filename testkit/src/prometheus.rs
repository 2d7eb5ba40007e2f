//! Test and benchmark support: a real Prometheus serving exact historical data, loaded with
//! `promtool tsdb create-blocks-from openmetrics`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn binary(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_owned())
}

/// A scratch directory removed on drop.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn new(prefix: &str) -> Self {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        ScratchDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes OpenMetrics with `write` and turns it into TSDB blocks in `dir/data`.
pub fn create_blocks(dir: &Path, write: impl FnOnce(&mut dyn Write)) -> PathBuf {
    let file = dir.join("data.om");
    {
        let mut out =
            std::io::BufWriter::new(std::fs::File::create(&file).expect("create openmetrics file"));
        write(&mut out);
        out.flush().expect("write openmetrics");
    }
    let data = dir.join("data");
    let output = Command::new(binary("PROMTOOL_BIN", "promtool"))
        // promtool reads the whole file once per block; one large block is many times faster
        // than the default two-hour blocks.
        .args([
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=1000h",
        ])
        .arg(&file)
        .arg(&data)
        .output()
        .expect("run promtool");
    assert!(
        output.status.success(),
        "promtool failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_file(&file).ok();
    data
}

/// A Prometheus process on a free loopback port, killed on drop.
pub struct PrometheusProcess {
    child: Option<Child>,
    pub url: String,
    port: u16,
    data: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl PrometheusProcess {
    /// Starts Prometheus on `data` (no scrape jobs: the data is history) and waits until ready.
    pub fn start(dir: &Path, data: &Path) -> Self {
        Self::start_with_config(dir, data, "global:\n  scrape_interval: 15s\n")
    }

    /// Starts Prometheus on `data` with the configuration `yaml` (e.g. scrape configs without
    /// targets, whose intervals `/api/v1/status/config` then reports) and waits until ready.
    pub fn start_with_config(dir: &Path, data: &Path, yaml: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, yaml).expect("write config");
        let mut p = PrometheusProcess {
            child: None,
            url: format!("http://127.0.0.1:{port}"),
            port,
            data: data.to_owned(),
            config,
            log: dir.join("prometheus.log"),
        };
        p.restart();
        p
    }

    /// Stops the process (its data stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and data, and waits until its log says it is ready.
    pub fn restart(&mut self) {
        self.stop();
        let mut child = Command::new(binary("PROMETHEUS_BIN", "prometheus"))
            .arg(format!("--config.file={}", self.config.display()))
            .arg(format!("--storage.tsdb.path={}", self.data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--storage.tsdb.retention.time=100y")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start prometheus");
        let stderr = child.stderr.take().expect("piped stderr");
        self.child = Some(child);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let log_path = self.log.clone();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if line.contains("Server is ready to receive web requests") {
                    let _ = ready_tx.send(());
                }
            }
        });
        if ready_rx.recv_timeout(Duration::from_secs(60)).is_err() {
            panic!(
                "Prometheus did not become ready: {}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
