//! The Postgres store. Every operation runs in one transaction with a server-side statement
//! timeout (`SET LOCAL`, so it is safe behind a transaction-mode pooler such as Neon's or
//! PgBouncer), a client-side deadline, bounded retries of transient failures, and metrics.

mod api_tokens;
mod archive;
mod audit;
mod blueprint;
mod budgets;
mod collector;
mod costs;
mod enforcement;
mod entries;
mod leader;
mod offboarding;
mod outbox;
mod price_book;
mod reconcilers;
mod status;
mod suspensions;
mod tenant_logins;
mod tenant_requests;
mod tenants;
mod unpriced;

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{ConnectOptions, Connection, FromRow, PgPool, Postgres, Transaction};
use tokio::sync::watch;

pub use api_tokens::{ApiTokenRecord, NewApiToken, LAST_USED_RESOLUTION_SECONDS};
pub use archive::{DropOutcome, ExportRecorded, MonthArchive};
pub use audit::{ActorActivity, AuditFilter, ChainStatus};
pub use costs::DailyCost;
pub use enforcement::ActionFilter;
pub use leader::LeaderLock;
pub use reconcilers::{
    AggregateKey, OutboxEvent, ParkedAggregate, PendingAggregate, ReconcilerStatus,
};
pub use status::{ReloadReason, StatusCache, StatusRead};
pub use suspensions::OperatorSuspension;
pub use tenant_logins::scram_sha256_verifier;
pub use tenants::TenantBilling;
pub use unpriced::{UnpricedFilter, UnpricedRecord};

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
    /// The limit of one direct connection attempt that tells a database that is down from a
    /// pool that is only busy, and the least time between two such attempts (see `Health`).
    pub probe_timeout: Duration,
}

/// Where a database URL points, for messages: user, host, port and database, never the
/// password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl DbTarget {
    fn of(options: &PgConnectOptions) -> DbTarget {
        DbTarget {
            user: options.get_username().to_owned(),
            host: options.get_host().to_owned(),
            port: options.get_port(),
            // Postgres' default database is the user's name.
            database: options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned(),
        }
    }
}

impl std::fmt::Display for DbTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "database {:?} on {}:{} as user {:?}",
            self.database, self.host, self.port, self.user
        )
    }
}

pub(crate) fn parse_url(url: &str) -> Result<PgConnectOptions, Error> {
    PgConnectOptions::from_str(url).map_err(|e| {
        Error::Invalid(crate::error::Invalid::new(
            "database url",
            format!("not a usable postgres:// URL ({})", url_problem(&e)),
        ))
    })
}

/// sqlx's URL errors quote the URL; keep only what is wrong.
fn url_problem(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Configuration(inner) => inner.to_string(),
        _ => "unparsable".to_owned(),
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// How the pool connects: also used for one direct attempt that tells why it cannot.
    options: PgConnectOptions,
    target: DbTarget,
    acquire_timeout: Duration,
    statement_timeout: Duration,
    max_retries: u32,
    probe_timeout: Duration,
    /// Whether the database takes connections, as far as this store knows; shared by clones.
    health: Arc<Health>,
    /// The configured pseudonymisation key; without one, the database's per-installation key.
    pseudonymisation_key: Option<Arc<secrecy::SecretSlice<u8>>>,
}

// By hand: the connect options hold the password.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("target", &self.target)
            .field(
                "max_connections",
                &self.pool.options().get_max_connections(),
            )
            .field("statement_timeout", &self.statement_timeout)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store over a pool that connects on first use, so a daemon can start (and answer
    /// `/healthz`) while its database is still coming up. One-shot tools call
    /// [`Store::check_connection`] first to fail fast with the reason.
    pub async fn connect(config: &StoreConfig) -> Result<Self, Error> {
        // No statement is ever named (see `query`), so there is nothing to cache.
        let options = parse_url(&config.url)?
            .application_name("budgetd")
            .statement_cache_capacity(0);
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_lazy_with(options.clone());
        Ok(Store {
            pool,
            target: DbTarget::of(&options),
            options,
            acquire_timeout: config.acquire_timeout,
            statement_timeout: config.statement_timeout,
            max_retries: config.max_retries,
            probe_timeout: config.probe_timeout,
            health: Arc::new(Health::new()),
            pseudonymisation_key: None,
        })
    }

    /// Where this store's URL points.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// Opens one connection directly (no pool, no retries) within the acquire timeout: `Ok`
    /// if the database takes it, otherwise [`Error::Unreachable`] naming the target and the
    /// cause at once (a refused port fails in milliseconds, not after the pool's retries).
    pub async fn check_connection(&self) -> Result<(), Error> {
        let outcome = connect_once(&self.options, &self.target, self.acquire_timeout).await;
        self.health.record(&outcome);
        outcome?.close().await.ok();
        Ok(())
    }

    /// Why the database cannot be used, if this store knows it cannot: the last connection
    /// attempt was refused or not answered, and none has succeeded since.
    fn known_unreachable(&self) -> Option<Error> {
        self.health.unreachable(&self.target)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn statement_timeout(&self) -> Duration {
        self.statement_timeout
    }

    /// Applies the migrations over a direct (non-pooled) connection: the migrator takes a
    /// session-level advisory lock, which a transaction-mode pooler cannot hold. One direct
    /// attempt within `connect_timeout` comes first: a database that cannot be reached is an
    /// [`Error::Unreachable`] at once. `timeout` bounds the migrations, on the client and, as
    /// `statement_timeout` and `lock_timeout`, on the server.
    pub async fn migrate(
        direct_url: &str,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<(), Error> {
        // The same limit on the server: a migration abandoned by a client that timed out
        // stops there too instead of holding its locks until it is done.
        let limit = format!("{}ms", timeout.as_millis());
        let options = parse_url(direct_url)?
            .application_name("budgetd-migrate")
            .options([("statement_timeout", &limit), ("lock_timeout", &limit)]);
        let target = DbTarget::of(&options);
        connect_once(&options, &target, connect_timeout)
            .await?
            .close()
            .await
            .ok();
        let run = async {
            let pool = PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(connect_timeout)
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
        let mut tx = self.pool_begin().await?;
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

impl Store {
    /// A transaction from the pool, or an error that says where and why there is none.
    ///
    /// While the database is known to be unreachable this answers at once, unless a direct
    /// attempt is due (at most one per `probe_timeout`), which it waits for. A pool that has
    /// not given a connection within [`SUSPECT_AFTER`] may be unable to make one: a direct
    /// attempt (shared by every waiter) tells, and if the database is down every waiter
    /// fails at once instead of waiting out `acquire_timeout`.
    pub(crate) async fn pool_begin(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut health = self.health.state.subscribe();
        if health.borrow().down.is_some() {
            let attempts = health.borrow().attempts;
            if self.start_probe() || self.health.probing.load(Ordering::Acquire) {
                let finished = health.wait_for(|s| s.attempts > attempts);
                // The attempt ends within `probe_timeout`; the margin is for the task's start.
                let _ = tokio::time::timeout(self.probe_timeout * 2, async {
                    finished.await.map(|_| ())
                })
                .await;
            }
            if let Some(e) = self.known_unreachable() {
                return Err(e);
            }
        }
        let begin = self.pool.begin();
        tokio::pin!(begin);
        let suspect = tokio::time::sleep(SUSPECT_AFTER);
        tokio::pin!(suspect);
        let (mut suspected, mut watching) = (false, true);
        loop {
            tokio::select! {
                result = &mut begin => {
                    return match result {
                        Ok(tx) => {
                            self.health.record_up();
                            Ok(tx)
                        }
                        Err(e) => {
                            let e = self.acquisition_error(e).await;
                            if let Error::Unreachable { cause, .. } = &e {
                                self.health.record_down(cause);
                            }
                            Err(e)
                        }
                    };
                }
                () = &mut suspect, if !suspected => {
                    suspected = true;
                    self.start_probe();
                }
                changed = health.changed(), if watching => {
                    watching = changed.is_ok();
                    if let Some(e) = self.known_unreachable() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Starts one direct connection attempt unless one is under way or the last one ended
    /// less than `probe_timeout` ago; its outcome goes into the health state. True if started.
    fn start_probe(&self) -> bool {
        if !self.health.probe_due(self.probe_timeout)
            || self.health.probing.swap(true, Ordering::AcqRel)
        {
            return false;
        }
        let (options, target, timeout) = (
            self.options.clone(),
            self.target.clone(),
            self.probe_timeout,
        );
        let health = self.health.clone();
        // A task of its own, so that a caller that stops waiting does not cancel it; it ends
        // within `timeout`.
        tokio::spawn(async move {
            let outcome = connect_once(&options, &target, timeout).await;
            let label = outcome.as_ref().map_or_else(Error::metric_label, |_| "ok");
            metrics::counter!("budgetd_db_probes_total", "outcome" => label).increment(1);
            health.record(&outcome);
            health.probing.store(false, Ordering::Release);
            if let Ok(conn) = outcome {
                conn.close().await.ok();
            }
        });
        true
    }

    // Boxed: awaited inside the generic `run_within`, an `async fn` here trips rustc's
    // higher-ranked `Send` inference for callers that spawn store operations.
    fn acquisition_error(
        &self,
        e: sqlx::Error,
    ) -> std::pin::Pin<Box<dyn Future<Output = Error> + Send + '_>> {
        Box::pin(async move {
            match e {
                // The pool waited its acquire timeout, retrying refused connections all along,
                // and says neither where nor why. Either every connection is in use, or none
                // could be made: then one direct attempt tells why.
                sqlx::Error::PoolTimedOut => {
                    let max = self.pool.options().get_max_connections();
                    if self.pool.size() >= max && self.pool.num_idle() == 0 {
                        return Error::PoolExhausted {
                            target: self.target.clone(),
                            max_connections: max,
                            waited_ms: self.acquire_timeout.as_millis() as u64,
                        };
                    }
                    match self.check_connection().await {
                        Err(unreachable) => unreachable,
                        // It answers again: a passing failure, which `run` retries.
                        Ok(()) => Error::Database(sqlx::Error::PoolTimedOut),
                    }
                }
                // Failures of the connection itself (an unknown host, a missing database, a
                // refused login, TLS), which the pool passes on at once.
                sqlx::Error::Io(_) | sqlx::Error::Tls(_) => Error::Unreachable {
                    cause: connect_cause(&e, &self.target),
                    target: self.target.clone(),
                },
                sqlx::Error::Database(ref db)
                    if db
                        .code()
                        .is_some_and(|c| c.starts_with("28") || c == "3D000") =>
                {
                    Error::Unreachable {
                        cause: connect_cause(&e, &self.target),
                        target: self.target.clone(),
                    }
                }
                other => Error::Database(other),
            }
        })
    }
}

/// How long a pooled connection may take before the store checks, with one direct attempt,
/// whether the database takes connections at all. Getting an idle connection takes
/// microseconds and opening one a few milliseconds; a pool that is only busy is told apart
/// by the attempt succeeding.
pub const SUSPECT_AFTER: Duration = Duration::from_millis(100);

/// What a store knows about its database taking connections: set unreachable by a connection
/// attempt that failed (the pool's, or a direct one), cleared by one that succeeded. While it
/// is unreachable, transactions fail at once with [`Error::Unreachable`] instead of waiting
/// for the pool, and at most one direct attempt per `probe_timeout` checks whether it is back.
struct Health {
    state: watch::Sender<HealthState>,
    /// A direct attempt is under way.
    probing: AtomicBool,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Why the database is unreachable, while it is.
    down: Option<String>,
    /// Direct attempts finished so far, so that a waiter sees the one it waited for end.
    attempts: u64,
    last_attempt: Option<Instant>,
}

impl Health {
    fn new() -> Health {
        Health {
            state: watch::Sender::new(HealthState::default()),
            probing: AtomicBool::new(false),
        }
    }

    fn unreachable(&self, target: &DbTarget) -> Option<Error> {
        self.state
            .borrow()
            .down
            .as_ref()
            .map(|cause| Error::Unreachable {
                target: target.clone(),
                cause: cause.clone(),
            })
    }

    fn probe_due(&self, interval: Duration) -> bool {
        self.state
            .borrow()
            .last_attempt
            .is_none_or(|at| at.elapsed() >= interval)
    }

    /// The outcome of a direct attempt.
    fn record<T>(&self, outcome: &Result<T, Error>) {
        let mut change = None;
        self.state.send_modify(|s| {
            s.attempts += 1;
            s.last_attempt = Some(Instant::now());
            change = match outcome {
                Ok(_) => s.down.take().map(|_| None),
                Err(Error::Unreachable { cause, .. }) => s
                    .down
                    .replace(cause.clone())
                    .is_none()
                    .then_some(Some(cause.as_str())),
                Err(_) => None,
            };
        });
        match change {
            Some(None) => Self::recovered(),
            Some(Some(cause)) => Self::went_down(cause),
            None => {}
        }
    }

    fn record_up(&self) {
        if self.state.send_if_modified(|s| s.down.take().is_some()) {
            Self::recovered();
        }
    }

    fn record_down(&self, cause: &str) {
        if self
            .state
            .send_if_modified(|s| s.down.replace(cause.to_owned()).is_none())
        {
            Self::went_down(cause);
        }
    }

    fn recovered() {
        metrics::gauge!("budgetd_db_unreachable").set(0.0);
        tracing::info!("the database takes connections again");
    }

    fn went_down(cause: &str) {
        metrics::gauge!("budgetd_db_unreachable").set(1.0);
        tracing::warn!(
            cause,
            "the database is unreachable: transactions fail at once until a connection succeeds"
        );
    }
}

/// One connection attempt within `timeout`, its failure explained.
pub(crate) async fn connect_once(
    options: &PgConnectOptions,
    target: &DbTarget,
    timeout: Duration,
) -> Result<sqlx::PgConnection, Error> {
    let unreachable = |cause: String| Error::Unreachable {
        target: target.clone(),
        cause,
    };
    match tokio::time::timeout(timeout, options.connect()).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(unreachable(connect_cause(&e, target))),
        Err(_) => Err(unreachable(format!(
            "no answer within {} ms (a firewall, or the wrong host?)",
            timeout.as_millis()
        ))),
    }
}

/// Why a connection attempt failed, in the words an operator acts on.
fn connect_cause(e: &sqlx::Error, target: &DbTarget) -> String {
    match e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            format!(
                "connection refused: nothing listens on {}:{} (is Postgres running, and is the port right?)",
                target.host, target.port
            )
        }
        // Only the wording of the message depends on this text; nothing decides on it.
        sqlx::Error::Io(io) if io.to_string().contains("lookup address") => {
            format!("unknown host {:?} ({io})", target.host)
        }
        sqlx::Error::Io(io) => format!("{io}"),
        sqlx::Error::Database(db) => match db.code().as_deref() {
            Some("3D000") => format!("database {:?} does not exist", target.database),
            Some("28P01") | Some("28000") => {
                format!(
                    "the server refused user {:?}: {}",
                    target.user,
                    db.message()
                )
            }
            _ => db.message().to_owned(),
        },
        sqlx::Error::Tls(tls) => format!("TLS: {tls}"),
        other => other.to_string(),
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
