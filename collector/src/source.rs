//! Where usage comes from: the `UsageSource` trait and its Prometheus implementation (HTTP API
//! v1), with timeouts, classified errors, bounded retries with jittered backoff, and metrics.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use url::Url;

/// One series' value at one evaluation time, exactly as the source sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: String,
}

/// The answer to one query. `warnings` means the data may be partial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Answer {
    /// Samples per evaluation time (Unix milliseconds).
    pub at: BTreeMap<i64, Vec<Sample>>,
    pub warnings: Vec<String>,
}

/// Why a query failed, in classes that decide retrying and label metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("server error {status}: {message}")]
    Server { status: u16, message: String },
    /// 422: the query could not be executed (too many samples, a many-to-many match, a
    /// query timeout on the server).
    #[error("execution error: {0}")]
    Execution(String),
    /// 400: the query itself is wrong; retrying does not help.
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("unexpected response: {0}")]
    Protocol(String),
}

impl SourceError {
    pub fn class(&self) -> &'static str {
        match self {
            SourceError::Timeout(_) => "timeout",
            SourceError::Unreachable(_) => "unreachable",
            SourceError::Server { .. } => "5xx",
            SourceError::Execution(_) => "422",
            SourceError::BadQuery(_) => "400",
            SourceError::Protocol(_) => "protocol",
        }
    }

    /// Whether asking for less (fewer windows in one range query) may succeed.
    pub fn is_too_heavy(&self) -> bool {
        matches!(self, SourceError::Timeout(_) | SourceError::Execution(_))
    }

    pub fn is_retryable(&self) -> bool {
        !matches!(self, SourceError::BadQuery(_))
    }
}

/// A source of per-tenant usage. Evaluation times are window ends (minus 1 ms, see
/// `collect`), one per step.
#[async_trait]
pub trait UsageSource: Send + Sync {
    /// Evaluates `query` at `first`, `first + step`, ..., `last`.
    async fn query(
        &self,
        query: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        step: Duration,
    ) -> Result<Answer, SourceError>;
}

/// Bounded retries: attempts, and exponential backoff between them with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1 << attempt.min(16))
            .min(self.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        // between half and all of the exponential delay
        exp / 2 + exp.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

pub struct Prometheus {
    client: reqwest::Client,
    base: Url,
    timeout: Duration,
    retry: RetryPolicy,
}

impl Prometheus {
    pub fn new(base: Url, timeout: Duration, retry: RetryPolicy) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        Ok(Prometheus {
            client,
            base,
            timeout,
            retry,
        })
    }

    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        url
    }

    async fn attempt(
        &self,
        query: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        step: Duration,
    ) -> Result<Answer, SourceError> {
        let ts = |t: DateTime<Utc>| format!("{:.3}", t.timestamp_millis() as f64 / 1000.0);
        let (url, form) = if first == last {
            (
                self.endpoint("api/v1/query"),
                vec![("query", query.to_owned()), ("time", ts(first))],
            )
        } else {
            (
                self.endpoint("api/v1/query_range"),
                vec![
                    ("query", query.to_owned()),
                    ("start", ts(first)),
                    ("end", ts(last)),
                    ("step", format!("{}s", step.as_secs())),
                ],
            )
        };
        let response = self
            .client
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        let parsed: ApiResponse = serde_json::from_slice(&body).map_err(|e| {
            if status.is_server_error() {
                SourceError::Server {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(&body).chars().take(200).collect(),
                }
            } else {
                SourceError::Protocol(format!("status {status}: {e}"))
            }
        })?;
        if parsed.status != "success" {
            let message = format!(
                "{}: {}",
                parsed.error_type.unwrap_or_default(),
                parsed.error.unwrap_or_default()
            );
            return Err(match status.as_u16() {
                400 => SourceError::BadQuery(message),
                422 => SourceError::Execution(message),
                503 if message.contains("timeout") => SourceError::Timeout(self.timeout),
                s if s >= 500 => SourceError::Server { status: s, message },
                s => SourceError::Protocol(format!("status {s}: {message}")),
            });
        }
        let data = parsed
            .data
            .ok_or_else(|| SourceError::Protocol("success without data".into()))?;
        let mut answer = Answer {
            at: BTreeMap::new(),
            warnings: parsed.warnings,
        };
        match data.result_type.as_str() {
            "vector" => {
                let at = first.timestamp_millis();
                let samples = answer.at.entry(at).or_default();
                for series in data.result {
                    let (_, value) = series.value.ok_or_else(|| {
                        SourceError::Protocol("vector sample without value".into())
                    })?;
                    samples.push(Sample {
                        labels: series.metric,
                        value,
                    });
                }
            }
            "matrix" => {
                for series in data.result {
                    for (t, value) in series.values.unwrap_or_default() {
                        answer
                            .at
                            .entry((t * 1000.0).round() as i64)
                            .or_default()
                            .push(Sample {
                                labels: series.metric.clone(),
                                value,
                            });
                    }
                }
            }
            other => {
                return Err(SourceError::Protocol(format!(
                    "result type {other}; the query must return an instant vector"
                )))
            }
        }
        Ok(answer)
    }

    fn transport_error(&self, e: reqwest::Error) -> SourceError {
        if e.is_timeout() {
            SourceError::Timeout(self.timeout)
        } else {
            SourceError::Unreachable(e.to_string())
        }
    }
}

#[async_trait]
impl UsageSource for Prometheus {
    async fn query(
        &self,
        query: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
        step: Duration,
    ) -> Result<Answer, SourceError> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            let result = self.attempt(query, first, last, step).await;
            metrics::histogram!("budgetd_prometheus_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    metrics::counter!("budgetd_prometheus_errors_total", "class" => e.class())
                        .increment(1);
                    attempt += 1;
                    if !e.is_retryable() || attempt >= self.retry.max_attempts {
                        return Err(e);
                    }
                    let delay = self.retry.backoff(attempt);
                    tracing::warn!(error = %e, attempt, ?delay, "Prometheus query failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[derive(Deserialize)]
struct ApiResponse {
    status: String,
    data: Option<ApiData>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

#[derive(Deserialize)]
struct ApiData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<ApiSeries>,
}

#[derive(Deserialize)]
struct ApiSeries {
    metric: BTreeMap<String, String>,
    value: Option<(f64, String)>,
    values: Option<Vec<(f64, String)>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_and_jittered_within_bounds() {
        let p = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        };
        for attempt in 0..20 {
            let d = p.backoff(attempt);
            let exp = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(Duration::from_secs(2));
            assert!(d >= exp / 2 && d <= exp, "{attempt}: {d:?}");
        }
    }

    #[test]
    fn only_bad_queries_are_final() {
        assert!(!SourceError::BadQuery("x".into()).is_retryable());
        for e in [
            SourceError::Timeout(Duration::from_secs(1)),
            SourceError::Server {
                status: 503,
                message: String::new(),
            },
            SourceError::Execution("x".into()),
            SourceError::Unreachable("x".into()),
        ] {
            assert!(e.is_retryable(), "{e}");
        }
    }
}
