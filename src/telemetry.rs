//! Logging (tracing) and the process-wide metrics recorder.

use std::borrow::Cow;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the tracing subscriber; the filter comes from the config (`RUST_LOG` syntax).
pub fn init_logging(config: &LogConfig) {
    let filter = EnvFilter::try_new(&config.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second initialisation (tests start several apps in one process) is harmless.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Text from outside the API's validation (Prometheus label values, its configuration) as it
/// may appear in a log message: every control character (CR and LF included), line separator
/// and bidirectional control written as its escape (`\n`, `\u{202e}`), so that it cannot end
/// the line, forge another or reorder what a terminal shows. Everything else is left as is.
pub fn log_safe(text: &str) -> Cow<'_, str> {
    let unsafe_char = ledger::names::breaks_a_line;
    if !text.contains(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            safe.extend(c.escape_default());
        } else {
            safe.push(c);
        }
    }
    Cow::Owned(safe)
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("no other metrics recorder is installed");
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::log_safe;

    #[test]
    fn logged_text_cannot_break_its_line() {
        for (raw, logged) in [
            ("job node", "job node"),
            ("Prometheus' \"quoted\" job", "Prometheus' \"quoted\" job"),
            ("a\nINFO forged line", "a\\nINFO forged line"),
            ("cr\rlf", "cr\\rlf"),
            ("nul\u{0}", "nul\\u{0}"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("rlo\u{202e}txt", "rlo\\u{202e}txt"),
            ("ls\u{2028}", "ls\\u{2028}"),
            ("東京", "東京"),
        ] {
            assert_eq!(log_safe(raw), logged, "{raw:?}");
        }
    }
}
