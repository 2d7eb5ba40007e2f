//! Alertmanager API v2 client (implements `alerts::AlertSink`).
//!
//! Every send goes to every configured replica, concurrently: the replicas of an HA cluster
//! gossip silences and notification logs but not alerts, so each must be told itself (this is
//! what Prometheus does). A replica that is down or slow only delays and fails its own
//! delivery; it is retried a bounded number of times (connection errors, timeouts, 5xx) and
//! then reported, and the next resend of the still-firing alerts repairs it.

use std::collections::{BTreeMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use reqwest::Url;
use serde::Serialize;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::alerts::{Alert, AlertError, AlertSink, SendReport};

/// How much of an error response body is kept in [`AlertError::Status`].
const MAX_ERROR_BODY_CHARS: usize = 512;

/// What [`Alertmanager::new`] needs. There are no defaults: every limit is chosen by the caller.
#[derive(Debug, Clone)]
pub struct AlertmanagerSettings {
    /// The base URL of every replica, e.g. `http://alertmanager-0:9093`, or with the route
    /// prefix it serves under (`http://gateway/alertmanager`). Alerts go to each of them.
    pub urls: Vec<Url>,
    /// The limit for one request (connecting, sending and reading the answer).
    pub request_timeout: Duration,
    /// Attempts per replica and send, the first included (1 = never retry).
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles per retry up to `max_backoff`, and each
    /// delay is drawn between half and all of that.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Settings that cannot work, found before anything is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("no Alertmanager URL: give at least one")]
    NoUrls,
    #[error("Alertmanager URL {url}: {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("Alertmanager {setting}: {reason}")]
    Invalid {
        setting: &'static str,
        reason: &'static str,
    },
    #[error("Alertmanager HTTP client: {0}")]
    Client(String),
}

/// Alertmanager API v2: `POST {base}/api/v2/alerts` to each replica.
#[derive(Debug, Clone)]
pub struct Alertmanager {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    replicas: Vec<Replica>,
    request_timeout: Duration,
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
}

#[derive(Debug)]
struct Replica {
    /// The base URL as configured; names the replica in reports and logs.
    name: String,
    /// Its position in the configured list: the bounded `replica` metric label.
    label: String,
    endpoint: Url,
}

impl Alertmanager {
    pub fn new(settings: AlertmanagerSettings) -> Result<Self, SettingsError> {
        let AlertmanagerSettings {
            urls,
            request_timeout,
            max_attempts,
            initial_backoff,
            max_backoff,
        } = settings;
        if urls.is_empty() {
            return Err(SettingsError::NoUrls);
        }
        if request_timeout.is_zero() {
            return Err(SettingsError::Invalid {
                setting: "request_timeout",
                reason: "must be more than zero",
            });
        }
        if max_attempts == 0 {
            return Err(SettingsError::Invalid {
                setting: "max_attempts",
                reason: "must be at least 1",
            });
        }
        if initial_backoff > max_backoff {
            return Err(SettingsError::Invalid {
                setting: "initial_backoff",
                reason: "must not exceed max_backoff",
            });
        }
        let mut seen = HashSet::new();
        let mut replicas = Vec::with_capacity(urls.len());
        for (index, url) in urls.into_iter().enumerate() {
            let endpoint = alerts_endpoint(&url)?;
            if !seen.insert(endpoint.clone()) {
                return Err(invalid_url(&url, "is listed twice"));
            }
            replicas.push(Replica {
                name: url.to_string(),
                label: index.to_string(),
                endpoint,
            });
        }
        let client = reqwest::Client::builder()
            .timeout(request_timeout)
            .connect_timeout(request_timeout)
            .build()
            .map_err(|e| SettingsError::Client(error_chain(&e)))?;
        Ok(Alertmanager {
            inner: Arc::new(Inner {
                client,
                replicas,
                request_timeout,
                max_attempts,
                initial_backoff,
                max_backoff,
            }),
        })
    }
}

#[async_trait]
impl AlertSink for Alertmanager {
    async fn send(&self, alerts: &[Alert]) -> SendReport {
        if alerts.is_empty() {
            return SendReport::default();
        }
        let now = Utc::now();
        let body: Arc<[u8]> = encode(alerts).into();
        let span = tracing::info_span!("alertmanager_send", alerts = alerts.len());

        // Spawned, not joined in place, so replicas are served in parallel on a multi-threaded
        // runtime; dropping the set (a cancelled send) aborts them.
        let mut deliveries = JoinSet::new();
        for index in 0..self.inner.replicas.len() {
            let inner = Arc::clone(&self.inner);
            let body = Arc::clone(&body);
            deliveries.spawn(
                async move { (index, inner.deliver(index, &body).await) }.instrument(span.clone()),
            );
        }
        let mut outcomes = Vec::with_capacity(self.inner.replicas.len());
        while let Some(joined) = deliveries.join_next().await {
            match joined {
                Ok(outcome) => outcomes.push(outcome),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => unreachable!("a delivery task was cancelled while joined: {e}"),
            }
        }
        outcomes.sort_by_key(|(index, _)| *index);

        let mut report = SendReport::default();
        for (index, outcome) in outcomes {
            let replica = &self.inner.replicas[index];
            match outcome {
                Ok(()) => report.delivered.push(replica.name.clone()),
                Err((e, attempts)) => {
                    span.in_scope(|| {
                        tracing::warn!(
                            replica = %replica.name,
                            attempts,
                            error = %e,
                            "Alertmanager replica did not take the alerts; the next resend retries"
                        )
                    });
                    report.failed.push((replica.name.clone(), e));
                }
            }
        }
        // Once per send, not per replica: the replicas of a cluster are one receiver.
        if !report.delivered.is_empty() {
            let firing = alerts.iter().filter(|a| is_firing(a, now)).count() as u64;
            let resolved = alerts.len() as u64 - firing;
            metrics::counter!("budgetd_alerts_sent_total", "state" => "firing").increment(firing);
            metrics::counter!("budgetd_alerts_sent_total", "state" => "resolved")
                .increment(resolved);
        }
        report
    }
}

impl Inner {
    /// Posts `body` to one replica, retrying what may pass; on failure returns the last error
    /// and the number of attempts made.
    async fn deliver(&self, index: usize, body: &Arc<[u8]>) -> Result<(), (AlertError, u32)> {
        let replica = &self.replicas[index];
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = self.post(replica, body).await;
            metrics::histogram!(
                "budgetd_alertmanager_request_duration_seconds",
                "replica" => replica.label.clone()
            )
            .record(started.elapsed().as_secs_f64());
            metrics::counter!(
                "budgetd_alertmanager_requests_total",
                "replica" => replica.label.clone(),
                "outcome" => outcome_label(&result)
            )
            .increment(1);
            match result {
                Ok(()) => return Ok(()),
                Err(e) if attempt < self.max_attempts && is_retryable(&e) => {
                    let delay = self.backoff(attempt);
                    tracing::debug!(
                        replica = %replica.name, attempt, ?delay, error = %e,
                        "Alertmanager request failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err((e, attempt)),
            }
        }
    }

    async fn post(&self, replica: &Replica, body: &Arc<[u8]>) -> Result<(), AlertError> {
        let response = self
            .client
            .post(replica.endpoint.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            // Drained so the connection can be reused; the body of a 200 is empty.
            let _ = response.bytes().await;
            return Ok(());
        }
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e))?;
        Err(AlertError::Status {
            status: status.as_u16(),
            body: text.trim().chars().take(MAX_ERROR_BODY_CHARS).collect(),
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> AlertError {
        if e.is_timeout() {
            AlertError::Timeout {
                timeout_ms: u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
            }
        } else {
            AlertError::Unreachable(error_chain(e))
        }
    }

    /// The delay after failed attempt `attempt` (1-based): exponential, capped, jittered.
    fn backoff(&self, attempt: u32) -> Duration {
        backoff(
            self.initial_backoff,
            self.max_backoff,
            attempt,
            random_fraction(),
        )
    }
}

fn backoff(initial: Duration, max: Duration, attempt: u32, fraction: f64) -> Duration {
    let exp = initial
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(max);
    // Between half and all of it, so replicas (and budgetd instances) do not retry in step.
    exp / 2 + (exp / 2).mul_f64(fraction.clamp(0.0, 1.0))
}

/// A number in [0, 1) from the standard library's randomly keyed hasher.
fn random_fraction() -> f64 {
    let bits = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn is_retryable(e: &AlertError) -> bool {
    match e {
        AlertError::Timeout { .. } | AlertError::Unreachable(_) => true,
        AlertError::Status { status, .. } => *status >= 500,
    }
}

fn outcome_label(result: &Result<(), AlertError>) -> &'static str {
    match result {
        Ok(()) => "ok",
        Err(AlertError::Status { status, .. }) if *status >= 500 => "5xx",
        Err(AlertError::Status { status, .. }) if *status >= 400 => "4xx",
        Err(e) => e.metric_label(),
    }
}

fn is_firing(alert: &Alert, now: DateTime<Utc>) -> bool {
    alert.ends_at > now
}

/// `{base}/api/v2/alerts`, after checking that `base` is a plain http(s) base URL.
fn alerts_endpoint(base: &Url) -> Result<Url, SettingsError> {
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid_url(base, "must be an http:// or https:// URL"));
    }
    if base.host().is_none() {
        return Err(invalid_url(base, "has no host"));
    }
    if base.query().is_some() {
        return Err(invalid_url(
            base,
            "must not have a query string (the API path is appended to it)",
        ));
    }
    if base.fragment().is_some() {
        return Err(invalid_url(base, "must not have a fragment"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid_url(
            base,
            "must not hold credentials (replica URLs appear in logs and reports)",
        ));
    }
    let mut endpoint = base.clone();
    let path = format!("{}/api/v2/alerts", base.path().trim_end_matches('/'));
    endpoint.set_path(&path);
    Ok(endpoint)
}

fn invalid_url(url: &Url, reason: &'static str) -> SettingsError {
    let mut shown = url.clone();
    // Never echo a password, even in a start-up error.
    let _ = shown.set_password(None);
    SettingsError::InvalidUrl {
        url: shown.to_string(),
        reason,
    }
}

/// An error and its causes: reqwest's own message only says which request failed.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The API v2 `postableAlert`.
#[derive(Serialize)]
struct PostableAlert<'a> {
    labels: BTreeMap<&'static str, String>,
    annotations: &'a BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    starts_at: String,
    #[serde(rename = "endsAt")]
    ends_at: String,
    #[serde(rename = "generatorURL", skip_serializing_if = "Option::is_none")]
    generator_url: Option<&'a str>,
}

fn encode(alerts: &[Alert]) -> Vec<u8> {
    // Milliseconds: what Alertmanager shows back, so a resent `startsAt` reads back unchanged.
    let timestamp = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Millis, true);
    let postable: Vec<PostableAlert<'_>> = alerts
        .iter()
        .map(|a| PostableAlert {
            labels: a.labels(),
            annotations: &a.annotations,
            starts_at: timestamp(a.starts_at),
            ends_at: timestamp(a.ends_at),
            generator_url: a.generator_url.as_deref(),
        })
        .collect();
    serde_json::to_vec(&postable).expect("string maps and strings always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::{AlertName, Severity};
    use chrono::TimeZone;
    use ledger::tenant::TenantId;

    fn settings(urls: &[&str]) -> AlertmanagerSettings {
        AlertmanagerSettings {
            urls: urls.iter().map(|u| Url::parse(u).unwrap()).collect(),
            request_timeout: Duration::from_secs(2),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        }
    }

    #[test]
    fn valid_settings_build_endpoints_under_the_base_path() {
        let am = Alertmanager::new(settings(&[
            "http://am-0:9093",
            "https://gateway.example/alertmanager/",
        ]))
        .unwrap();
        let endpoints: Vec<&str> = am
            .inner
            .replicas
            .iter()
            .map(|r| r.endpoint.as_str())
            .collect();
        assert_eq!(
            endpoints,
            [
                "http://am-0:9093/api/v2/alerts",
                "https://gateway.example/alertmanager/api/v2/alerts"
            ]
        );
        let labels: Vec<&str> = am.inner.replicas.iter().map(|r| r.label.as_str()).collect();
        assert_eq!(labels, ["0", "1"]);
    }

    #[test]
    fn invalid_settings_are_rejected_with_the_reason() {
        let cases: Vec<(AlertmanagerSettings, &str)> = vec![
            (settings(&[]), "no Alertmanager URL"),
            (settings(&["ftp://am:21"]), "http:// or https://"),
            (settings(&["http://am:9093/?x=1"]), "query string"),
            (settings(&["http://am:9093/#top"]), "fragment"),
            (settings(&["http://user:hunter2@am:9093"]), "credentials"),
            (
                settings(&["http://am:9093", "http://am:9093/"]),
                "listed twice",
            ),
            (
                AlertmanagerSettings {
                    request_timeout: Duration::ZERO,
                    ..settings(&["http://am:9093"])
                },
                "request_timeout",
            ),
            (
                AlertmanagerSettings {
                    max_attempts: 0,
                    ..settings(&["http://am:9093"])
                },
                "max_attempts",
            ),
            (
                AlertmanagerSettings {
                    initial_backoff: Duration::from_secs(2),
                    ..settings(&["http://am:9093"])
                },
                "max_backoff",
            ),
        ];
        for (settings, expected) in cases {
            let urls = format!("{:?}", settings.urls);
            let error = Alertmanager::new(settings).unwrap_err().to_string();
            assert!(error.contains(expected), "{urls}: {error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    #[test]
    fn alerts_are_encoded_as_api_v2_postable_alerts() {
        let t = |h| Utc.with_ymd_and_hms(2026, 11, 20, h, 0, 0).unwrap();
        let alert = Alert {
            name: AlertName::TenantBudgetThreshold,
            tenant: TenantId::parse("acme").unwrap(),
            threshold_percent: 80,
            severity: Severity::Warning,
            period: "2026-11-01".into(),
            annotations: BTreeMap::from([("spent".into(), "812.40 EUR".into())]),
            starts_at: t(9) + chrono::Duration::nanoseconds(123_456_789),
            ends_at: t(10),
            generator_url: Some("http://budgetd/api/v1/tenants/acme/budget".into()),
        };
        let without_link = Alert {
            generator_url: None,
            ..alert.clone()
        };
        let json: serde_json::Value =
            serde_json::from_slice(&encode(&[alert, without_link])).unwrap();
        assert_eq!(
            json,
            serde_json::json!([
                {
                    "labels": {
                        "alertname": "TenantBudgetThreshold",
                        "tenant": "acme",
                        "threshold_percent": "80",
                        "severity": "warning",
                        "period": "2026-11-01"
                    },
                    "annotations": {"spent": "812.40 EUR"},
                    "startsAt": "2026-11-20T09:00:00.123Z",
                    "endsAt": "2026-11-20T10:00:00.000Z",
                    "generatorURL": "http://budgetd/api/v1/tenants/acme/budget"
                },
                {
                    "labels": {
                        "alertname": "TenantBudgetThreshold",
                        "tenant": "acme",
                        "threshold_percent": "80",
                        "severity": "warning",
                        "period": "2026-11-01"
                    },
                    "annotations": {"spent": "812.40 EUR"},
                    "startsAt": "2026-11-20T09:00:00.123Z",
                    "endsAt": "2026-11-20T10:00:00.000Z"
                }
            ])
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_stays_within_the_jitter_bounds() {
        let initial = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let full = Duration::from_millis(full);
            assert_eq!(backoff(initial, max, attempt, 0.0), full / 2, "{attempt}");
            assert_eq!(backoff(initial, max, attempt, 1.0), full, "{attempt}");
            let drawn = backoff(initial, max, attempt, random_fraction());
            assert!(drawn >= full / 2 && drawn <= full, "{attempt}: {drawn:?}");
        }
    }

    #[test]
    fn random_fractions_are_in_range_and_vary() {
        let drawn: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(drawn.iter().all(|f| (0.0..1.0).contains(f)));
        assert!(drawn.iter().any(|f| *f != drawn[0]));
    }

    #[test]
    fn only_transport_errors_and_5xx_are_retried() {
        let status = |status| AlertError::Status {
            status,
            body: String::new(),
        };
        assert!(is_retryable(&AlertError::Timeout { timeout_ms: 1 }));
        assert!(is_retryable(&AlertError::Unreachable("refused".into())));
        assert!(is_retryable(&status(500)));
        assert!(is_retryable(&status(503)));
        assert!(!is_retryable(&status(400)));
        assert!(!is_retryable(&status(404)));
        assert!(!is_retryable(&status(429)));
        assert_eq!(outcome_label(&Err(status(503))), "5xx");
        assert_eq!(outcome_label(&Err(status(400))), "4xx");
        assert_eq!(outcome_label(&Ok(())), "ok");
    }
}
