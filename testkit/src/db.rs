//! Databases of their own on a Postgres server. Every test gets a fresh database cloned from a
//! template that has the migrations applied, on the ephemeral cluster that `scripts/test.sh`
//! starts ([`fresh_database`]); a benchmark gets empty scratch databases that are dropped
//! whatever happens ([`in_scratch_database`], [`ScratchDatabases`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Executor, PgConnection};

use ledger::audit::{Actor, AuditContext};
use ledger::store::{Store, StoreConfig, MIGRATOR};
use ledger::tenant::{DataResidency, DisplayName, Labels, NewTenant, Owner, TenantId};

/// A fresh, migrated database of its own.
pub struct TestDb {
    pub name: String,
    /// Direct superuser URL of this database.
    pub url: String,
    pub store: Store,
}

impl TestDb {
    /// This database through the transaction-mode PgBouncer that `scripts/test.sh` starts.
    pub fn pgbouncer_url(&self) -> String {
        let base = std::env::var("BUDGETD_TEST_PGBOUNCER_URL")
            .expect("BUDGETD_TEST_PGBOUNCER_URL is not set: run the tests with scripts/test.sh");
        format!("{}/{}", base.trim_end_matches('/'), self.name)
    }
}

/// The superuser URL of the test cluster.
pub fn admin_url() -> String {
    std::env::var("BUDGETD_TEST_DATABASE_URL")
        .expect("BUDGETD_TEST_DATABASE_URL is not set: run the tests with scripts/test.sh")
}

/// `url` with its database replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

pub fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(120),
        max_retries: 2,
        probe_timeout: Duration::from_millis(500),
    }
}

/// Creates an active tenant `id` (display name = id, owner ops@example.com, residency eu).
pub async fn create_tenant(store: &Store, id: &str) -> TenantId {
    let new = NewTenant {
        id: TenantId::parse(id).expect("a valid test tenant id"),
        display_name: DisplayName::parse(id).expect("valid"),
        owner: Owner::parse("ops@example.com").expect("valid"),
        data_residency: DataResidency::parse("eu").expect("valid"),
        labels: Labels::default(),
        owner_group: None,
        quota_profile: None,
        namespaces: Vec::new(),
    };
    let ctx = AuditContext {
        actor: Actor::system("test"),
        request_id: format!("test-create-{id}"),
    };
    store
        .create_tenant(&ctx, &new)
        .await
        .expect("create test tenant")
        .id
}

/// Files a self-service request for tenant `id` (monthly EUR 100, owner group `team-<id>`,
/// quota profile `standard`), left undecided: the id is reserved, the tenant is `requested`.
pub async fn request_tenant(store: &Store, id: &str) -> TenantId {
    use ledger::budget::BudgetPeriod;
    use ledger::currency::Currency;
    use ledger::money::Money;
    use ledger::tenant::{Justification, NewTenantRequest, OwnerGroup, QuotaProfileName};
    let request = NewTenantRequest {
        tenant: NewTenant {
            id: TenantId::parse(id).expect("a valid test tenant id"),
            display_name: DisplayName::parse(id).expect("valid"),
            owner: Owner::parse("ops@example.com").expect("valid"),
            data_residency: DataResidency::parse("eu").expect("valid"),
            labels: Labels::default(),
            owner_group: Some(OwnerGroup::parse(&format!("team-{id}")).expect("valid")),
            quota_profile: Some(
                QuotaProfileName::parse("quota_profile", "standard").expect("valid"),
            ),
            namespaces: Vec::new(),
        },
        budget: Money {
            amount: rust_decimal::Decimal::new(100, 0),
            currency: Currency::parse("currency", "EUR").expect("valid"),
        },
        period: BudgetPeriod::Monthly,
        justification: Justification::parse("a test request").expect("valid"),
    };
    let ctx = AuditContext {
        actor: Actor::system("test"),
        request_id: format!("test-request-{id}"),
    };
    store
        .request_tenant(&ctx, &request)
        .await
        .expect("request test tenant")
        .tenant
        .id
}

fn template_name() -> String {
    let mut hasher = Sha256::new();
    for migration in MIGRATOR.iter() {
        hasher.update(migration.version.to_le_bytes());
        hasher.update(&migration.checksum);
    }
    format!("budgetd_tpl_{}", &hex::encode(hasher.finalize())[..16])
}

/// Creates a fresh migrated database.
pub async fn fresh_database() -> TestDb {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let admin = admin_url();
    let template = template_name();
    let mut conn = PgConnection::connect(&admin)
        .await
        .expect("connect to the test cluster");
    // One process migrates the template; the others wait for it.
    sqlx::query("select pg_advisory_lock(7262001)")
        .execute(&mut conn)
        .await
        .expect("template lock");
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(&template)
            .fetch_one(&mut conn)
            .await
            .expect("look up template");
    if !exists {
        let building = format!("{template}_building");
        sqlx::query(&format!("drop database if exists {building}"))
            .execute(&mut conn)
            .await
            .expect("drop stale template");
        sqlx::query(&format!("create database {building}"))
            .execute(&mut conn)
            .await
            .expect("create template");
        Store::migrate(
            &with_database(&admin, &building),
            Duration::from_secs(30),
            Duration::from_secs(120),
        )
        .await
        .expect("migrate template");
        sqlx::query(&format!("alter database {building} rename to {template}"))
            .execute(&mut conn)
            .await
            .expect("publish template");
    }
    sqlx::query("select pg_advisory_unlock(7262001)")
        .execute(&mut conn)
        .await
        .expect("template unlock");

    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    let name = format!(
        "budgetd_test_{}_{}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    sqlx::query(&format!("create database {name} template {template}"))
        .execute(&mut conn)
        .await
        .expect("clone template");
    conn.close().await.ok();
    let url = with_database(&admin, &name);
    let store = Store::connect(&store_config(&url))
        .await
        .expect("connect store");
    TestDb { name, url, store }
}

/// Connects to the server of `admin_url` once: a wrong URL fails here, before a benchmark
/// spends minutes generating data.
pub async fn check_server(admin_url: &str) -> anyhow::Result<()> {
    PgConnection::connect(admin_url)
        .await
        .context("connecting to the Postgres server (admin URL)")?
        .close()
        .await
        .ok();
    Ok(())
}

/// Creates an empty database named `<prefix>_<nanos>` on the server of `admin_url` (a
/// superuser URL); returns its name. The caller drops it ([`drop_database`]).
pub async fn create_scratch_database(admin_url: &str, prefix: &str) -> anyhow::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("the clock is before 1970")?
        .as_nanos();
    let name = format!("{prefix}_{nanos}");
    let mut admin = PgConnection::connect(admin_url)
        .await
        .context("connecting to the Postgres server (admin URL)")?;
    admin
        .execute(format!("create database {name}").as_str())
        .await
        .with_context(|| format!("creating scratch database {name}"))?;
    admin.close().await.ok();
    eprintln!("bench: scratch database {name}");
    Ok(name)
}

/// Drops database `name` on the server of `admin_url`, closing its connections.
pub async fn drop_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut admin = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to drop scratch database {name}"))?;
    admin
        .execute(format!("drop database if exists {name} with (force)").as_str())
        .await
        .with_context(|| format!("dropping scratch database {name}"))?;
    admin.close().await.ok();
    eprintln!("bench: dropped scratch database {name}");
    Ok(())
}

/// The scratch databases of one benchmark on the server of an admin URL: each one it creates
/// is dropped when it ends, whatever happens ([`ScratchDatabases::run_then_drop`]).
#[derive(Clone)]
pub struct ScratchDatabases {
    admin_url: String,
    created: Arc<Mutex<Vec<String>>>,
}

impl ScratchDatabases {
    /// None yet, on the server of `admin_url` (a superuser URL).
    pub fn new(admin_url: &str) -> ScratchDatabases {
        ScratchDatabases {
            admin_url: admin_url.to_owned(),
            created: Arc::default(),
        }
    }

    /// Creates an empty database named `<prefix>_<nanos>` and records it to be dropped; its URL.
    pub async fn create(&self, prefix: &str) -> anyhow::Result<String> {
        let name = create_scratch_database(&self.admin_url, prefix).await?;
        self.created
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned lock"))?
            .push(name.clone());
        Ok(with_database(&self.admin_url, &name))
    }

    /// Runs `work` in a task, then drops every database created: after success, an error, a
    /// panic or Ctrl-C. `work`'s error comes first; a drop error is returned after success and
    /// logged otherwise.
    pub async fn run_then_drop<Fut>(self, work: Fut) -> anyhow::Result<()>
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let task = tokio::spawn(work);
        let abort = task.abort_handle();
        let outcome = tokio::select! {
            joined = task => match joined {
                Ok(result) => result,
                Err(e) if e.is_panic() => Err(anyhow::anyhow!("the bench panicked: {e}")),
                Err(e) => Err(anyhow::anyhow!("the bench task failed: {e}")),
            },
            _ = tokio::signal::ctrl_c() => {
                abort.abort();
                Err(anyhow::anyhow!("interrupted"))
            }
        };
        let names: Vec<String> = self
            .created
            .lock()
            .map(|names| names.clone())
            .unwrap_or_default();
        let mut returned = outcome;
        for name in names {
            if let Err(drop_error) = drop_database(&self.admin_url, &name).await {
                if returned.is_ok() {
                    returned = Err(drop_error);
                } else {
                    eprintln!("bench: {drop_error:#}");
                }
            }
        }
        returned
    }
}

/// Creates a scratch database named `<prefix>_<nanos>` on the server of `admin_url`, runs
/// `run` with its URL in a task, and drops the database whatever happens: success, error, panic
/// or Ctrl-C.
pub async fn in_scratch_database<F, Fut>(
    admin_url: &str,
    prefix: &str,
    run: F,
) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let databases = ScratchDatabases::new(admin_url);
    let url = databases.create(prefix).await?;
    databases.run_then_drop(run(url)).await
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5432/postgres", "x"),
            "postgres://u@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h:1/db?sslmode=disable", "x"),
            "postgres://u@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "x"), "postgres://u@h:1/x");
    }
}
