//! The Grafana reconciler: one folder per tenant in the platform's Grafana, holding the tenant
//! cost dashboard pinned to the tenant and read through a data source of the tenant's own
//! (a database login that sees only the tenant's rows), viewable by the tenant's owner group.
//! It is the `lifecycle` runner's third reconciler (`grafana`): the runner owns the cursor,
//! per-tenant order, parking with backoff, resync and leadership. `budgetd run` starts it only
//! with `[grafana]`.

pub mod client;
pub mod config;
pub mod dashboard;
mod reconciler;

pub use config::{GrafanaSection, GrafanaSettings};
pub use reconciler::{Changes, GrafanaReconciler, DATASOURCE_TYPE, NAME};

/// The crate's error (start-up only: the reconciler reports its failures to the runner).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Grafana client: {0}")]
    Client(String),
    #[error("the tenant dashboard template: {0}")]
    Template(String),
}
