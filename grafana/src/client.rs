//! Grafana's HTTP API, as the reconciler uses it: one request at a time with a timeout, a
//! bounded number of attempts for what may pass on a retry (connection errors, timeouts, 429,
//! 5xx), and a metric per request. Any other answer is returned for the caller to judge (404
//! and 409 are states, not failures).

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;
use url::Url;

use crate::config::GrafanaSettings;

/// Grafana's answer: status and JSON body (`Null` when it had none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
}

impl Answer {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// Grafana's own words, for error messages.
    pub fn message(&self) -> String {
        self.body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| self.body.to_string())
    }
}

/// A request that did not get an answer worth judging.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("Grafana {operation}: no answer in {timeout:?} ({attempts} attempts)")]
    Timeout {
        operation: &'static str,
        timeout: Duration,
        attempts: u32,
    },
    #[error("Grafana {operation}: cannot reach {url}: {error} ({attempts} attempts)")]
    Unreachable {
        operation: &'static str,
        url: String,
        error: String,
        attempts: u32,
    },
    #[error("Grafana {operation}: {status} {message} ({attempts} attempts)")]
    Server {
        operation: &'static str,
        status: StatusCode,
        message: String,
        attempts: u32,
    },
}

impl ClientError {
    /// A bounded label: the metric's `outcome`, the runner's failure `kind`.
    pub fn class(&self) -> &'static str {
        match self {
            ClientError::Timeout { .. } => "timeout",
            ClientError::Unreachable { .. } => "unreachable",
            ClientError::Server { .. } => "server_error",
        }
    }
}

/// The Grafana client.
pub struct GrafanaClient {
    http: reqwest::Client,
    base: Url,
    authorization: String,
    request_timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

impl GrafanaClient {
    pub fn new(settings: &GrafanaSettings) -> Result<GrafanaClient, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout)
            .user_agent(concat!("budgetd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        Ok(GrafanaClient {
            http,
            base,
            authorization: format!("Bearer {}", settings.token.expose_secret()),
            request_timeout: settings.request_timeout,
            max_attempts: settings.max_attempts,
            initial_backoff: settings.initial_backoff,
            max_backoff: settings.max_backoff,
        })
    }

    fn url(&self, path: &str) -> Url {
        self.base
            .join(path.trim_start_matches('/'))
            .expect("a relative API path joins the base URL")
    }

    /// `method path` with `body`, named `operation` in metrics and errors.
    pub async fn call(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer, ClientError> {
        let url = self.url(path);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(reqwest::header::AUTHORIZATION, &self.authorization)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            let result = async {
                let response = request.send().await?;
                let status = response.status();
                let bytes = response.bytes().await?;
                Ok::<_, reqwest::Error>((status, bytes))
            }
            .await;
            metrics::histogram!("budgetd_grafana_request_duration_seconds", "operation" => operation)
                .record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok((status, bytes)) => {
                    let body = if bytes.is_empty() {
                        Value::Null
                    } else {
                        serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                            Value::String(
                                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
                            )
                        })
                    };
                    let answer = Answer { status, body };
                    let retryable =
                        status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    if !retryable {
                        metrics::counter!("budgetd_grafana_requests_total", "operation" => operation, "outcome" => outcome(status))
                            .increment(1);
                        return Ok(answer);
                    }
                    ClientError::Server {
                        operation,
                        status,
                        message: answer.message(),
                        attempts: attempt,
                    }
                }
                Err(e) if e.is_timeout() => ClientError::Timeout {
                    operation,
                    timeout: self.request_timeout,
                    attempts: attempt,
                },
                Err(e) => ClientError::Unreachable {
                    operation,
                    url: url.as_str().to_owned(),
                    error: error_chain(&e),
                    attempts: attempt,
                },
            };
            metrics::counter!("budgetd_grafana_requests_total", "operation" => operation, "outcome" => error.class())
                .increment(1);
            if attempt >= self.max_attempts {
                return Err(error);
            }
            let delay = self
                .initial_backoff
                .saturating_mul(1 << (attempt - 1).min(16))
                .min(self.max_backoff);
            tracing::debug!(operation, attempt, error = %error, ?delay, "Grafana request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

fn outcome(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "ok",
        401 | 403 => "unauthorized",
        404 => "not_found",
        409 | 412 => "conflict",
        _ => "rejected",
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
