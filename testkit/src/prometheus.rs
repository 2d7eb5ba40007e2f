//! Test and benchmark support: a real Prometheus serving exact historical data, loaded with
//! `promtool tsdb create-blocks-from openmetrics`.

use std::io::{BufRead, BufReader, Write};
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
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, yaml).expect("write config");
        // Port 0: the kernel picks a free port as Prometheus binds it, and the log says which
        // (a port picked beforehand and given up could be bound by another process first).
        let mut p = PrometheusProcess {
            child: None,
            url: String::new(),
            port: 0,
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

    /// Starts it (again on the same port and data), and waits until its log says it is ready.
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
        let (events, log_events) = std::sync::mpsc::channel();
        let log_path = self.log.clone();
        std::thread::spawn(move || {
            let mut log = std::fs::File::create(log_path).ok();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(f) = log.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                if let Some(port) = listening_port(&line) {
                    let _ = events.send(Some(port));
                }
                if line.contains("Server is ready to receive web requests") {
                    let _ = events.send(None);
                }
            }
        });
        // Both lines are needed, in either order: the web listener logs its address from its
        // own goroutine, which may come after "ready" (seen in CI with a scrape configuration).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (mut listening, mut ready) = (false, false);
        while !(listening && ready) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match log_events.recv_timeout(left) {
                Ok(Some(port)) => {
                    self.port = port;
                    self.url = format!("http://127.0.0.1:{port}");
                    listening = true;
                }
                Ok(None) => ready = true,
                Err(_) => panic!(
                    "Prometheus did not become ready: {}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                ),
            }
        }
    }
}

/// The port of a Prometheus or Alertmanager log line `msg="Listening on" address=HOST:PORT`.
pub(crate) fn listening_port(line: &str) -> Option<u16> {
    if !line.contains("msg=\"Listening on\"") {
        return None;
    }
    let address = line.split("address=").nth(1)?.split_whitespace().next()?;
    address.rsplit(':').next()?.parse().ok()
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::listening_port;

    #[test]
    fn the_listening_port_is_read_from_prometheus_and_alertmanager_logs() {
        assert_eq!(
            listening_port(
                r#"ts=2026-12-02T22:15:40.335Z caller=tls_config.go:232 level=info component=web msg="Listening on" address=127.0.0.1:38203"#
            ),
            Some(38203)
        );
        assert_eq!(
            listening_port(
                r#"ts=2026-12-02T22:15:37.297Z caller=tls_config.go:232 level=info msg="Listening on" address=127.0.0.1:40961"#
            ),
            Some(40961)
        );
        // The configured address (port 0) is logged before the bind, in another message.
        assert_eq!(
            listening_port(
                r#"level=info component=web msg="Start listening for connections" address=127.0.0.1:0"#
            ),
            None
        );
    }
}
