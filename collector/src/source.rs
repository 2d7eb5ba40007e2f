//! Where usage comes from: the `UsageSource` trait and its Prometheus implementation (HTTP API
//! v1), with timeouts, a response size limit, classified errors, bounded retries with jittered
//! backoff, and metrics.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use url::Url;

use crate::scrape::ScrapeIntervals;

/// One series' value at one evaluation time, exactly as the source sent it. The labels are
/// shared by every evaluation time of a series: a range answer of many windows holds one copy
/// of each series' labels, not one per window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub labels: Arc<BTreeMap<String, String>>,
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
    /// The response body is larger than the configured limit; asking for fewer windows may fit.
    #[error(
        "response body larger than the limit of {limit} bytes (prometheus.max_response_bytes)"
    )]
    TooLarge { limit: u64 },
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
            SourceError::TooLarge { .. } => "too_large",
        }
    }

    /// Whether asking for less (fewer windows in one range query) may succeed.
    pub fn is_too_heavy(&self) -> bool {
        matches!(
            self,
            SourceError::Timeout(_) | SourceError::Execution(_) | SourceError::TooLarge { .. }
        )
    }

    /// Whether the same request may succeed when sent again. The same query gets the same
    /// answer, so neither a bad query nor an answer over the size limit is retried (and a
    /// query over several windows that is too heavy is split instead, see
    /// [`Prometheus`]'s `query`).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            SourceError::BadQuery(_) | SourceError::TooLarge { .. }
        )
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

    /// The scrape intervals the source's own configuration gives, to check
    /// `scrape_interval_seconds` against. `None`: this source has no such configuration to
    /// read (a Prometheus-compatible store without the endpoint, a test double). One attempt,
    /// never retried: the configuration only explains what the data show, so a failed read
    /// must not hold up a collection (the collector reuses a good read for a while).
    async fn scrape_intervals(&self) -> Result<Option<ScrapeIntervals>, SourceError> {
        Ok(None)
    }
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
    max_response_bytes: u64,
    retry: RetryPolicy,
}

impl Prometheus {
    /// A client for the Prometheus at `base`: every request gets `timeout`, every response
    /// body at most `max_response_bytes`, every query `retry`.
    pub fn new(
        base: Url,
        timeout: Duration,
        max_response_bytes: u64,
        retry: RetryPolicy,
    ) -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| SourceError::Protocol(e.to_string()))?;
        Ok(Prometheus {
            client,
            base,
            timeout,
            max_response_bytes,
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
        let body = self.read_body(response).await?;
        let (data, warnings) = self.decode::<ApiData>(status, &body)?;
        let mut answer = Answer {
            at: BTreeMap::new(),
            warnings,
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
                        labels: Arc::new(series.metric),
                        value,
                    });
                }
            }
            "matrix" => {
                for series in data.result {
                    let labels = Arc::new(series.metric);
                    for (t, value) in series.values.unwrap_or_default() {
                        answer
                            .at
                            .entry((t * 1000.0).round() as i64)
                            .or_default()
                            .push(Sample {
                                labels: Arc::clone(&labels),
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

    /// Decodes the API's envelope: the data and warnings of a success, or the error, classified
    /// by the HTTP status Prometheus sent with it.
    fn decode<D: DeserializeOwned>(
        &self,
        status: reqwest::StatusCode,
        body: &[u8],
    ) -> Result<(D, Vec<String>), SourceError> {
        let parsed: ApiResponse<D> = serde_json::from_slice(body).map_err(|e| {
            if status.is_server_error() {
                SourceError::Server {
                    status: status.as_u16(),
                    message: String::from_utf8_lossy(body).chars().take(200).collect(),
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
        Ok((data, parsed.warnings))
    }

    /// One read of Prometheus' configuration; `None` where the server has no such endpoint
    /// (404: a Prometheus-compatible store that is not Prometheus).
    async fn attempt_scrape_intervals(&self) -> Result<Option<ScrapeIntervals>, SourceError> {
        let response = self
            .client
            .get(self.endpoint("api/v1/status/config"))
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body = self.read_body(response).await?;
        let (config, _) = self.decode::<ApiConfig>(status, &body)?;
        ScrapeIntervals::parse(&config.yaml)
            .map(Some)
            .map_err(|e| SourceError::Protocol(format!("Prometheus' configuration: {e}")))
    }

    /// Runs `attempt` up to `max_attempts` times with backoff, counting every failure; an
    /// error for which `retry` says no ends it at once.
    async fn with_retries<T, F, Fut>(
        &self,
        what: &str,
        retry: impl Fn(&SourceError) -> bool,
        attempt: F,
    ) -> Result<T, SourceError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SourceError>>,
    {
        let mut attempts = 0;
        loop {
            let started = Instant::now();
            let result = attempt().await;
            metrics::histogram!("budgetd_prometheus_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(value) => return Ok(value),
                Err(e) => {
                    metrics::counter!("budgetd_prometheus_errors_total", "class" => e.class())
                        .increment(1);
                    attempts += 1;
                    if !retry(&e) || attempts >= self.retry.max_attempts {
                        return Err(e);
                    }
                    let delay = self.retry.backoff(attempts);
                    tracing::warn!(error = %e, attempt = attempts, ?delay, "Prometheus {what} failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Reads a response body of at most `max_response_bytes`: a larger declared length is
    /// refused before reading, and an undeclared one (chunked) is stopped at the limit.
    async fn read_body(&self, mut response: reqwest::Response) -> Result<Vec<u8>, SourceError> {
        let limit = self.max_response_bytes;
        let too_large = SourceError::TooLarge { limit };
        let declared = response.content_length();
        if declared.is_some_and(|length| length > limit) {
            return Err(too_large);
        }
        let mut body = Vec::with_capacity(initial_capacity(declared));
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if (body.len() + chunk.len()) as u64 > limit {
                return Err(too_large);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    fn transport_error(&self, e: reqwest::Error) -> SourceError {
        if e.is_timeout() {
            SourceError::Timeout(self.timeout)
        } else {
            SourceError::Unreachable(e.to_string())
        }
    }
}

/// At most this much is reserved for a body before any of it arrives.
const MAX_PREALLOCATED_BYTES: u64 = 1024 * 1024;

/// The room reserved for a body of `declared` bytes (its Content-Length): what the server
/// declares is not trusted with memory before it sends it, so larger bodies grow as they
/// arrive.
fn initial_capacity(declared: Option<u64>) -> usize {
    declared.unwrap_or(0).min(MAX_PREALLOCATED_BYTES) as usize
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
        // A query over several windows that is too heavy (timed out, refused, too large) is
        // not sent again at the same size: the collector splits it at once, and each retry
        // would cost another full timeout.
        let range = first != last;
        let retry = |e: &SourceError| e.is_retryable() && !(range && e.is_too_heavy());
        self.with_retries("query", retry, || self.attempt(query, first, last, step))
            .await
    }

    /// One attempt with the client's timeout, counted in
    /// `budgetd_prometheus_config_reads_total{outcome}` (`ok`, `absent` or the error class), not
    /// in `budgetd_prometheus_errors_total`, which alerts on the queries.
    async fn scrape_intervals(&self) -> Result<Option<ScrapeIntervals>, SourceError> {
        let read = self.attempt_scrape_intervals().await;
        let outcome = match &read {
            Ok(Some(_)) => "ok",
            Ok(None) => "absent",
            Err(e) => e.class(),
        };
        metrics::counter!("budgetd_prometheus_config_reads_total", "outcome" => outcome)
            .increment(1);
        read
    }
}

#[derive(Deserialize)]
struct ApiResponse<D> {
    status: String,
    data: Option<D>,
    #[serde(rename = "errorType")]
    error_type: Option<String>,
    error: Option<String>,
    #[serde(default)]
    warnings: Vec<String>,
}

/// `GET /api/v1/status/config`: the loaded configuration, as YAML.
#[derive(Deserialize)]
struct ApiConfig {
    yaml: String,
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
    use crate::scrape::Interval;

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
    fn only_bad_queries_and_answers_over_the_limit_are_final() {
        assert!(!SourceError::BadQuery("x".into()).is_retryable());
        assert!(!SourceError::TooLarge { limit: 1 }.is_retryable());
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

    /// A stub HTTP server on a loopback port that answers every request with `response` (raw
    /// bytes) and counts the requests.
    async fn stub(response: Vec<u8>) -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let requests = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let response = response.clone();
                tokio::spawn(async move {
                    // Read the whole request (headers, then Content-Length bytes of form).
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&request);
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap())
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                break;
                            }
                        }
                    }
                    // The client may hang up once it has seen enough.
                    let _ = socket.write_all(&response).await;
                    let _ = socket.shutdown().await;
                });
            }
        });
        (url, requests)
    }

    fn client(url: Url, max_response_bytes: u64) -> Prometheus {
        let retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        Prometheus::new(url, Duration::from_secs(10), max_response_bytes, retry).unwrap()
    }

    /// A valid empty answer padded to `size` bytes with a field the client ignores.
    fn padded_answer(size: usize) -> Vec<u8> {
        let head = r#"{"status":"success","data":{"resultType":"vector","result":[]},"padding":""#;
        let tail = r#""}"#;
        let mut body = head.as_bytes().to_vec();
        body.resize(size - tail.len(), b'x');
        body.extend_from_slice(tail.as_bytes());
        body
    }

    fn with_length(body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    fn chunked(body: &[u8]) -> Vec<u8> {
        let mut response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
        for chunk in body.chunks(1000) {
            response.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            response.extend_from_slice(chunk);
            response.extend_from_slice(b"\r\n");
        }
        response.extend_from_slice(b"0\r\n\r\n");
        response
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large_and_not_retried() {
        let t = Utc::now();
        let step = Duration::from_secs(300);
        for (framing, response) in [
            ("content-length", with_length(&padded_answer(20_000))),
            ("chunked", chunked(&padded_answer(20_000))),
        ] {
            let (url, requests) = stub(response).await;
            let err = client(url, 10_000)
                .query("up", t, t, step)
                .await
                .unwrap_err();
            assert_eq!(err, SourceError::TooLarge { limit: 10_000 }, "{framing}");
            assert_eq!(err.class(), "too_large");
            assert!(err.is_too_heavy(), "a batch that is too large is split");
            assert!(err.to_string().contains("10000 bytes"), "{err}");
            assert_eq!(
                requests.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{framing}: the same query gets the same answer, so it is not sent again"
            );
        }
    }

    /// Accepts connections, counts them and never answers: every request times out.
    async fn silent() -> (Url, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(socket);
            }
        });
        (url, connections)
    }

    /// A query over several windows that is too heavy goes back to the collector after one
    /// attempt, to be split; a single window's query is retried, as its size cannot shrink.
    #[tokio::test]
    async fn a_range_query_too_heavy_is_not_retried_and_a_single_window_is() {
        let t = Utc::now();
        let later = t + chrono::Duration::seconds(600);
        let step = Duration::from_secs(300);
        let count = |n: &std::sync::Arc<std::sync::atomic::AtomicUsize>| {
            n.load(std::sync::atomic::Ordering::SeqCst)
        };
        // Prometheus' answers to a query that would load too many samples (422), and to one
        // whose evaluation ran out of time (503, errorType timeout).
        let refused = with_status(
            "422 Unprocessable Entity",
            br#"{"status":"error","errorType":"execution","error":"query processing would load too many samples into memory in query execution"}"#,
        );
        let timed_out = with_status(
            "503 Service Unavailable",
            br#"{"status":"error","errorType":"timeout","error":"query timed out in expression evaluation"}"#,
        );
        for (what, response, class) in [("422", refused, "422"), ("503", timed_out, "timeout")] {
            let (url, requests) = stub(response.clone()).await;
            let err = client(url, 10_000)
                .query("up", t, later, step)
                .await
                .unwrap_err();
            assert!(err.is_too_heavy() && err.class() == class, "{what}: {err}");
            assert_eq!(count(&requests), 1, "{what}: a range query is sent once");
            let (url, requests) = stub(response).await;
            let err = client(url, 10_000)
                .query("up", t, t, step)
                .await
                .unwrap_err();
            assert_eq!(err.class(), class, "{what}: {err}");
            assert_eq!(count(&requests), 3, "{what}: a single window is retried");
        }

        // The client's own timeout: the same.
        let retry = RetryPolicy {
            max_attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
        };
        let timeout = Duration::from_millis(200);
        let (url, connections) = silent().await;
        let prometheus = Prometheus::new(url, timeout, 10_000, retry).unwrap();
        let err = prometheus.query("up", t, later, step).await.unwrap_err();
        assert_eq!(err, SourceError::Timeout(timeout));
        assert_eq!(count(&connections), 1, "a range query is sent once");
        let err = prometheus.query("up", t, t, step).await.unwrap_err();
        assert_eq!(err, SourceError::Timeout(timeout));
        assert_eq!(count(&connections), 4, "a single window is retried");
    }

    #[test]
    fn a_declared_length_reserves_at_most_one_mib() {
        assert_eq!(initial_capacity(None), 0);
        assert_eq!(initial_capacity(Some(4096)), 4096);
        assert_eq!(initial_capacity(Some(1024 * 1024)), 1024 * 1024);
        assert_eq!(initial_capacity(Some(512 * 1024 * 1024)), 1024 * 1024);
        assert_eq!(initial_capacity(Some(u64::MAX)), 1024 * 1024);
    }

    #[tokio::test]
    async fn a_body_up_to_the_limit_is_read_whole() {
        let t = Utc::now();
        let step = Duration::from_secs(300);
        for (framing, response) in [
            ("content-length", with_length(&padded_answer(10_000))),
            ("chunked", chunked(&padded_answer(10_000))),
        ] {
            let (url, _) = stub(response).await;
            let answer = client(url, 10_000).query("up", t, t, step).await;
            assert_eq!(answer.map(|a| a.at.len()), Ok(1), "{framing}");
        }
    }

    fn with_status(status: &str, body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    #[tokio::test]
    async fn prometheus_configuration_is_read_where_it_is_served() {
        let served = br#"{"status":"success","data":{"yaml":"global:\n  scrape_interval: 30s\nscrape_configs:\n- job_name: kubelet\n  scrape_interval: 1m\n"}}"#;
        let (url, _) = stub(with_length(served)).await;
        let intervals = client(url, 10_000)
            .scrape_intervals()
            .await
            .unwrap()
            .expect("served");
        assert_eq!(intervals.global, Some(Interval::from_seconds(30)));
        assert_eq!(
            intervals.for_job("kubelet").map(|p| p.interval),
            Some(Interval::from_seconds(60))
        );

        // A store without the endpoint: nothing to check against, and no error.
        let (url, requests) = stub(with_status("404 Not Found", b"404 page not found")).await;
        assert_eq!(client(url, 10_000).scrape_intervals().await, Ok(None));
        assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), 1);

        // A configuration that cannot be read is an error, not a silent "unknown".
        let unreadable =
            br#"{"status":"success","data":{"yaml":"global:\n  scrape_interval: often\n"}}"#;
        let (url, _) = stub(with_length(unreadable)).await;
        let err = client(url, 10_000).scrape_intervals().await.unwrap_err();
        assert!(err.to_string().contains("often"), "{err}");
    }

    /// A recorder of this test's metrics: thread-local, and a tokio test runs on one thread.
    fn local_metrics() -> (
        metrics_exporter_prometheus::PrometheusHandle,
        metrics::LocalRecorderGuard<'static>,
    ) {
        // Leaked: the guard borrows it for the rest of the test.
        let recorder: &'static metrics_exporter_prometheus::PrometheusRecorder = Box::leak(
            Box::new(metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder()),
        );
        (
            recorder.handle(),
            metrics::set_default_local_recorder(recorder),
        )
    }

    /// Prometheus' configuration only explains what the data show: a read that fails is not
    /// retried (each retry would hold up the collection) and does not count as a query error.
    #[tokio::test]
    async fn a_configuration_read_is_one_attempt_counted_apart_from_query_errors() {
        let (metrics, _local) = local_metrics();
        let unparsable =
            br#"{"status":"success","data":{"yaml":"global:\n  scrape_interval: often\n"}}"#;
        for (what, response, class) in [
            (
                "unavailable",
                with_status(
                    "503 Service Unavailable",
                    br#"{"status":"error","errorType":"unavailable","error":"starting"}"#,
                ),
                "5xx",
            ),
            (
                "forbidden",
                with_status("403 Forbidden", b"forbidden"),
                "protocol",
            ),
            ("unparsable", with_length(unparsable), "protocol"),
        ] {
            let (url, requests) = stub(response).await;
            let err = client(url, 10_000).scrape_intervals().await.unwrap_err();
            assert_eq!(err.class(), class, "{what}: {err}");
            assert_eq!(
                requests.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{what}: one attempt"
            );
        }
        let served = br#"{"status":"success","data":{"yaml":"global:\n  scrape_interval: 30s\n"}}"#;
        let (url, _) = stub(with_length(served)).await;
        assert!(client(url, 10_000)
            .scrape_intervals()
            .await
            .unwrap()
            .is_some());
        let (url, _) = stub(with_status("404 Not Found", b"404 page not found")).await;
        assert_eq!(client(url, 10_000).scrape_intervals().await, Ok(None));

        let rendered = metrics.render();
        for (outcome, reads) in [("5xx", 1), ("protocol", 2), ("ok", 1), ("absent", 1)] {
            let line =
                format!("budgetd_prometheus_config_reads_total{{outcome=\"{outcome}\"}} {reads}");
            assert!(
                rendered.lines().any(|l| l == line),
                "no {line:?} in\n{rendered}"
            );
        }
        assert!(
            !rendered.contains("budgetd_prometheus_errors_total"),
            "{rendered}"
        );
    }
}
