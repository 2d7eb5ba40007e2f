//! Test support: every test gets its own fresh database, cloned from a template that has the
//! migrations applied, on the ephemeral cluster that `scripts/test.sh` starts.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};

use crate::audit::{Actor, AuditContext};
use crate::store::{Store, StoreConfig, MIGRATOR};
use crate::tenant::{DataResidency, DisplayName, Labels, NewTenant, Owner, TenantId};

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

pub use crate::store::with_database;

pub fn store_config(url: &str) -> StoreConfig {
    StoreConfig {
        url: url.to_owned(),
        max_connections: 8,
        acquire_timeout: Duration::from_secs(30),
        statement_timeout: Duration::from_secs(120),
        max_retries: 2,
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
        Store::migrate(&with_database(&admin, &building), Duration::from_secs(120))
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
