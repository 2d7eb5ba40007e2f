//! The Kafka relay: every outbox event (tenant lifecycle, requests and approvals, budgets,
//! exemptions, enforcement actions, budget thresholds) published as a CloudEvent 1.0 in
//! binary content mode, keyed by tenant, with librdkafka's idempotent producer. It is the
//! `lifecycle` runner's second reconciler (`kafka`): the runner owns the cursor, per-tenant
//! order, parking with backoff and leadership; the relay turns events into messages and
//! reports which ones the broker acknowledged. `budgetd run` starts it only with `[kafka]`.

pub mod config;
pub mod event;
mod relay;

pub use config::{KafkaSection, KafkaSettings};
pub use event::{ce_type, CloudEvent, EventError, DATA_VERSION};
pub use relay::{error_class, KafkaRelay, RelayContext, NAME};

/// The crate's error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// librdkafka refused the producer's configuration (a `[kafka.properties]` key or value).
    #[error("Kafka producer: {0}")]
    Producer(String),
}
