//! `kubectl kustomize DIR`, parsed: the objects a kustomization renders, as JSON. Used by the
//! deploy test (which applies them to the fake API server) and by `budgetd-dev
//! check-cluster-role` (which compares the ClusterRole with the recorded calls).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The longest `kubectl kustomize` may take (it reads local files only).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Renders `dir` with `kubectl kustomize` and parses the YAML stream; an error says which step
/// failed, with kubectl's own message.
pub fn render(dir: &Path) -> Result<Vec<Value>, String> {
    let mut child = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run kubectl (install Debian's kubernetes-client): {e}"))?;
    let reader = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = pipe.read_to_string(&mut out);
            out
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("kubectl: {e}"))? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "kubectl kustomize {} took over {TIMEOUT:?}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    if !status.success() {
        return Err(format!(
            "kubectl kustomize {} failed ({status}): {}",
            dir.display(),
            stderr.trim()
        ));
    }
    parse_stream(&stdout)
}

/// The documents of a YAML stream as JSON values (empty documents left out).
pub fn parse_stream(yaml: &str) -> Result<Vec<Value>, String> {
    let mut objects = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(yaml).enumerate() {
        let value: Value = serde::Deserialize::deserialize(document)
            .map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}
