//! Budget alerts and the one trait for sending them ([`AlertSink`]).
//!
//! Alerts follow Prometheus' contract with Alertmanager: while an alert fires it is re-sent
//! with the same labels and `startsAt`, and `endsAt = now + 4 × resend interval`, so an
//! Alertmanager that restarts or missed a send learns it again at the next resend; resolving
//! re-sends the same labels with `endsAt` ≤ now. Amounts and links are annotations, never
//! labels, so an alert's identity does not change while the spend grows.

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger::tenant::TenantId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AlertName {
    /// Actual spend crossed a threshold of the budget.
    TenantBudgetThreshold,
    /// The forecast for the period crossed a threshold of the budget.
    TenantBudgetForecast,
    /// budgetd suspended the tenant.
    TenantSuspended,
}

impl AlertName {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertName::TenantBudgetThreshold => "TenantBudgetThreshold",
            AlertName::TenantBudgetForecast => "TenantBudgetForecast",
            AlertName::TenantSuspended => "TenantSuspended",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }

    pub fn parse(value: &str) -> Option<Severity> {
        match value {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One alert as sent to Alertmanager. Its identity is the label set: `alertname`, `tenant`,
/// `threshold_percent`, `severity`, `period`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub name: AlertName,
    pub tenant: TenantId,
    pub threshold_percent: u32,
    pub severity: Severity,
    /// The budget period's first day, e.g. `2026-11-01`.
    pub period: String,
    /// Amounts, the forecast, a summary and the API link.
    pub annotations: BTreeMap<String, String>,
    /// When the alert started firing; stable across re-sends.
    pub starts_at: DateTime<Utc>,
    /// `now + 4 × resend interval` while firing; ≤ now once resolved.
    pub ends_at: DateTime<Utc>,
    pub generator_url: Option<String>,
}

impl Alert {
    pub fn labels(&self) -> BTreeMap<&'static str, String> {
        BTreeMap::from([
            ("alertname", self.name.as_str().to_owned()),
            ("tenant", self.tenant.as_str().to_owned()),
            ("threshold_percent", self.threshold_percent.to_string()),
            ("severity", self.severity.as_str().to_owned()),
            ("period", self.period.clone()),
        ])
    }
}

/// How a send went, per Alertmanager replica.
#[derive(Debug, Default)]
pub struct SendReport {
    pub delivered: Vec<String>,
    /// Replica URL and what went wrong. The next resend delivers to it once it is back.
    pub failed: Vec<(String, AlertError)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    #[error("alertmanager did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("alertmanager unreachable: {0}")]
    Unreachable(String),
    #[error("alertmanager answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl AlertError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            AlertError::Timeout { .. } => "timeout",
            AlertError::Unreachable(_) => "unreachable",
            AlertError::Status { .. } => "status",
        }
    }
}

/// Where alerts go.
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Sends the alerts (firing and resolved) to every configured receiver.
    async fn send(&self, alerts: &[Alert]) -> SendReport;
}
