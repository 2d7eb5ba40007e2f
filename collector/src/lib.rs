//! The budgetd collector: turns per-tenant Prometheus metrics into priced, idempotent ledger
//! entries, one fixed window at a time, exactly once however often it crashes or restarts.
//!
//! - `config`: the `[collector]`, `[[meters]]` and `[prometheus]` sections and their defaults;
//! - `promql`: escaping, label names, meter query templates;
//! - `window`: epoch-aligned window arithmetic;
//! - `meter`: meters and the completeness probe;
//! - `source`: the `UsageSource` trait and the Prometheus HTTP client;
//! - `scrape`: the configured scrape interval against Prometheus' configuration and the data;
//! - `assemble`: pure attribution, pricing and completeness of one window;
//! - `collect`: the `Collector` (daemon step and backfill);
//! - `schedule`: the daemon's loop.

pub mod assemble;
pub mod collect;
pub mod config;
pub mod meter;
pub mod promql;
pub mod schedule;
pub mod scrape;
pub mod source;
pub mod window;

pub use collect::{Collector, CollectorConfig, Outcome};

use chrono::{DateTime, Utc};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    #[error("query for {meter}: {error}")]
    Source {
        meter: String,
        error: source::SourceError,
    },
    #[error("reading Prometheus' configuration: {0}")]
    PrometheusConfig(source::SourceError),
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::Error),
    #[error("no price-book version is valid at {at}")]
    NoPriceBook { at: DateTime<Utc> },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Source { error, .. } | Error::PrometheusConfig(error) => error.class(),
            Error::Ledger(e) => e.metric_label(),
            Error::NoPriceBook { .. } => "no_price_book",
            Error::Invalid(_) => "invalid",
        }
    }
}
