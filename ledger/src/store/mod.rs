//! The Postgres store. Every operation runs in one transaction with a server-side statement
//! timeout (`SET LOCAL`, so it is safe behind a transaction-mode pooler such as Neon's or
//! PgBouncer), a client-side deadline, bounded retries of transient failures, and metrics.

mod audit;
mod budgets;
mod collector;
mod costs;
mod enforcement;
mod entries;
mod leader;
mod outbox;
mod price_book;
mod tenants;

use std::future::Future;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{FromRow, PgPool, Postgres, Transaction};

pub use audit::ChainStatus;
pub use costs::DailyCost;
pub use enforcement::ActionFilter;
pub use leader::LeaderLock;

use crate::error::Error;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// How to reach the database. Timeouts have no defaults: the caller decides every limit.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The (possibly pooled) URL used for all queries.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    /// Retries of a transient failure (connection loss, serialization failure, deadlock).
    pub max_retries: u32,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    statement_timeout: Duration,
    max_retries: u32,
}

impl Store {
    pub async fn connect(config: &StoreConfig) -> Result<Self, Error> {
        // No statement is ever named (see `query`), so there is nothing to cache.
        let options = PgConnectOptions::from_str(&config.url)?
            .application_name("budgetd")
            .statement_cache_capacity(0);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Store {
            pool,
            statement_timeout: config.statement_timeout,
            max_retries: config.max_retries,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// Applies the migrations over a direct (non-pooled) connection: the migrator takes a
    /// session-level advisory lock, which a transaction-mode pooler cannot hold.
    pub async fn migrate(direct_url: &str, timeout: Duration) -> Result<(), Error> {
        let options = PgConnectOptions::from_str(direct_url)?.application_name("budgetd-migrate");
        let run = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(timeout)
                .connect_with(options)
                .await?;
            let result = MIGRATOR.run(&pool).await;
            pool.close().await;
            result.map_err(Error::from)
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| Error::Timeout {
                timeout_ms: timeout.as_millis() as u64,
            })?
    }

    /// True once the database answers and every migration this binary knows is applied.
    pub async fn is_ready(&self) -> Result<bool, Error> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        self.run("readiness", || async {
            let mut tx = self.begin().await?;
            let applied: Option<i64> = query_scalar(
                "select max(version) from _sqlx_migrations where success \
                 and exists (select 1 from pg_tables where tablename = '_sqlx_migrations')",
            )
            .fetch_one(&mut *tx)
            .await
            .or_else(|e| match &e {
                // The table does not exist before the first migration.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(e),
            })?;
            tx.commit().await?;
            Ok(applied.is_some_and(|v| v >= latest))
        })
        .await
    }

    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut tx = self.pool.begin().await?;
        // An integer formatted by us: nothing user-supplied reaches this statement.
        query(&format!(
            "set local statement_timeout = {}",
            self.statement_timeout.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Runs one transactional operation with a deadline, bounded retries of transient
    /// failures and metrics. `attempt` must be safe to repeat: it runs in a transaction that
    /// either committed or changed nothing.
    pub(crate) async fn run<T, F, Fut>(&self, op: &'static str, attempt: F) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        self.run_within(op, 1, attempt).await
    }

    /// `run` for an operation of up to `statements` statements: its deadline grows with them.
    pub(crate) async fn run_within<T, F, Fut>(
        &self,
        op: &'static str,
        statements: u32,
        attempt: F,
    ) -> Result<T, Error>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let deadline = self.statement_timeout * statements.max(1) + Duration::from_secs(5);
        let started = Instant::now();
        let mut tries = 0;
        let result = loop {
            let outcome = match tokio::time::timeout(deadline, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(Error::Timeout {
                    timeout_ms: deadline.as_millis() as u64,
                }),
            };
            match outcome {
                Err(e) if tries < self.max_retries && is_transient(&e) => {
                    tries += 1;
                    metrics::counter!("budgetd_db_retries_total", "op" => op).increment(1);
                    tracing::warn!(op, error = %e, attempt = tries, "transient database error, retrying");
                    tokio::time::sleep(backoff(tries)).await;
                }
                other => break other,
            }
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        metrics::histogram!("budgetd_db_operation_duration_seconds", "op" => op, "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        result
    }
}

// Every statement is sent unnamed. A named prepared statement lives on the server connection
// it was prepared on; behind a transaction-mode pooler (Neon's pooled endpoint, PgBouncer) the
// next transaction may get another server connection, where the name is unknown or, worse,
// taken ("prepared statement sqlx_s_1 already exists"). Unnamed statements live only until
// the next one, and every store operation runs in a transaction, which pins one server
// connection for its duration. Use these instead of `sqlx::query*` in the store.

pub(crate) fn query(sql: &str) -> Query<'_, Postgres, PgArguments> {
    sqlx::query(sql).persistent(false)
}

pub(crate) fn query_as<'q, O>(sql: &'q str) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(false)
}

pub(crate) fn query_scalar<'q, O>(sql: &'q str) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(false)
}

/// 50 ms, 100 ms, 200 ms, ... capped at 2 s, with up to 50% jitter.
fn backoff(attempt: u32) -> Duration {
    let base = 50u64.saturating_mul(1 << attempt.min(6)).min(2_000);
    let entropy = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::from(d.subsec_nanos()))
        .unwrap_or(0);
    let jitter = entropy % (base / 2 + 1);
    Duration::from_millis(base / 2 + jitter)
}

/// Failures after which the transaction certainly or most likely did not commit. A client-side
/// timeout is not retried: the commit may have gone through.
fn is_transient(error: &Error) -> bool {
    match error {
        Error::Database(e) => match e {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // serialization_failure, deadlock_detected, connection exceptions,
                // admin/crash shutdown, cannot_connect_now
                code == "40001"
                    || code == "40P01"
                    || code.starts_with("08")
                    || code == "57P01"
                    || code == "57P02"
                    || code == "57P03"
            }),
            _ => false,
        },
        _ => false,
    }
}

/// Maps a unique violation to a domain conflict, passing other errors through.
fn unique_violation(e: sqlx::Error, code: &'static str, message: impl FnOnce() -> String) -> Error {
    match &e {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            Error::conflict(code, message())
        }
        _ => Error::Database(e),
    }
}
