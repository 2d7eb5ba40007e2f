//! Lifecycle side effects: everything that must hear about a tenant change (the Kubernetes
//! blueprint, the Kafka relay, Grafana folders) is a [`Reconciler`] driven by one [`Runner`]
//! over the outbox. A lifecycle change writes state, audit record and outbox event in one
//! transaction; each reconciler reads the outbox with a durable cursor of its own, handles
//! each tenant's events in order and idempotently (the event id is the outbox id), parks a
//! tenant whose event fails and retries it with capped exponential backoff while the other
//! tenants go on, and can re-converge any tenant from its current state (drift repair). It
//! runs only while this daemon leads; a crash anywhere resumes from the cursor.

pub mod blueprint;
mod runner;

use std::time::Duration;

use async_trait::async_trait;
use ledger::tenant::TenantId;

pub use ledger::store::{AggregateKey, OutboxEvent, ParkedAggregate, ReconcilerStatus};
pub use runner::{backoff, ResyncHandle, ResyncReport, Runner, StepReport};

/// One system that follows the outbox. Implementations talk to that system and nothing else;
/// the runner owns ordering, retries, timeouts and metrics.
#[async_trait]
pub trait Reconciler: Send + Sync {
    /// The cursor's name: lower-case letters, digits and `_`, starting with a letter (at most
    /// 63). Renaming a reconciler starts it again from the first event.
    fn name(&self) -> &'static str;

    /// Brings the system in line with `event`. Called at least once per event (again after a
    /// crash before it was recorded), so it must be idempotent; `event.id` is the id to
    /// deduplicate on. An error parks the event's tenant.
    async fn handle(&self, event: &OutboxEvent) -> Result<(), HandlerError>;

    /// Whether the runner hands this reconciler a tenant's due events at once
    /// ([`Reconciler::handle_batch`], recorded with one write) instead of one by one, each
    /// recorded before the next is handed over. For a system that takes many events in one
    /// round trip (the Kafka relay pipelines them).
    fn batches(&self) -> bool {
        false
    }

    /// Handles `events`: one aggregate's next events, consecutive and in seq order. Returns
    /// how many of them, from the first, are done, and what stopped the rest. Called only
    /// when [`Reconciler::batches`]; the same idempotence as `handle` applies (the runner
    /// hands over again whatever it did not record).
    async fn handle_batch(&self, events: &[OutboxEvent]) -> BatchOutcome {
        for (done, event) in events.iter().enumerate() {
            if let Err(failure) = self.handle(event).await {
                return BatchOutcome {
                    done,
                    failure: Some(failure),
                };
            }
        }
        BatchOutcome {
            done: events.len(),
            failure: None,
        }
    }

    /// Brings the system in line with `tenant`'s current state, whatever events it missed:
    /// drift repair and recovery.
    async fn converge(&self, tenant: &TenantId) -> Result<(), HandlerError>;

    /// Called before a resync converges every tenant: a reconciler may read the whole system
    /// once here (one LIST per kind) so that each `converge` reads nothing. An error is logged
    /// and the resync goes on without.
    async fn begin_resync(&self) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Called after a resync (also after a failed `begin_resync`): drop what it read.
    async fn end_resync(&self) {}
}

/// How a batch ended: the first `done` events are handled; `failure` stopped the one after
/// them (none when every event is done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    pub done: usize,
    pub failure: Option<HandlerError>,
}

/// Why a reconciler's call failed: `kind` is a bounded metric label ("timeout", "rejected",
/// ...), `message` says what happened, for the log and the parked tenant's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct HandlerError {
    pub kind: &'static str,
    pub message: String,
}

impl HandlerError {
    pub fn new(kind: &'static str, message: impl Into<String>) -> Self {
        HandlerError {
            kind,
            message: message.into(),
        }
    }
}

/// The crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ledger failed (including `ledger::Error::Fenced`: another daemon leads).
    #[error(transparent)]
    Store(#[from] ledger::Error),
    #[error("invalid {0}")]
    Invalid(#[from] ledger::Invalid),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Store(e) => e.metric_label(),
            Error::Invalid(_) => "invalid",
        }
    }

    /// Whether another daemon leads: the runner stops until this one leads again.
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Store(e) if e.is_fenced())
    }
}

/// How a runner paces its reconciler. No defaults: whoever registers a reconciler decides
/// every limit.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Events moved past the cursor into the backlog per step.
    pub scan_batch: u32,
    /// Events handed to the reconciler per step, over all tenants.
    pub max_events_per_step: u32,
    /// Tenants handled at once (each tenant's events stay in order).
    pub concurrency: usize,
    /// The limit of one `handle` or `converge` call.
    pub call_timeout: Duration,
    /// The wait after a tenant's first failure; it doubles with each failure up to
    /// `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// The loop's pause when there is nothing to do.
    pub poll_interval: Duration,
    /// How often the loop re-converges every tenant (and once when it starts leading).
    pub resync_interval: Duration,
}

impl RunnerSettings {
    /// Checks the limits: nothing zero, and `backoff_base <= backoff_cap`.
    pub fn validate(&self) -> Result<(), ledger::Invalid> {
        let positive = [
            ("scan_batch", self.scan_batch == 0),
            ("max_events_per_step", self.max_events_per_step == 0),
            ("concurrency", self.concurrency == 0),
            ("call_timeout", self.call_timeout.is_zero()),
            ("backoff_base", self.backoff_base.is_zero()),
            ("poll_interval", self.poll_interval.is_zero()),
            ("resync_interval", self.resync_interval.is_zero()),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, zero)| *zero) {
            return Err(ledger::Invalid::new(*field, "must be more than zero"));
        }
        if self.backoff_cap < self.backoff_base {
            return Err(ledger::Invalid::new(
                "backoff_cap",
                "must be at least backoff_base",
            ));
        }
        Ok(())
    }
}

/// Whether `name` can name a reconciler's cursor (the `reconcilers` table checks it too).
pub(crate) fn check_name(name: &str) -> Result<(), ledger::Invalid> {
    let mut chars = name.chars();
    let valid = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err(ledger::Invalid::new(
            "reconciler name",
            format!("{name:?} is not lower-case letters, digits and _ starting with a letter (at most 63)"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for good in ["blueprint", "kafka_relay", "g2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "Blueprint", "2fa", "kafka-relay", "a b", long.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
