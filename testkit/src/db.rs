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

/// Instants for tests, so that no test depends on the day it runs.
///
/// Tests that decide something about a budget period take a fixed instant in the middle of
/// a month ([`mid_month`]) and run the code under test on a clock that starts there
/// ([`starting_at`]). Tests that meet the wall clock (the `budgetd` processes they start,
/// Postgres' `now()`) place their data with [`recent_window`], which is right at every
/// instant of a month. `scripts/test.sh` runs the suite a second and a third time with the
/// wall clock shifted to the first seconds of a month and to the last day of one.
pub mod clock {
    use std::time::Instant;

    use chrono::{DateTime, Datelike, TimeZone, Utc};

    /// The 15th, 12:00 UTC, of this month: a fixed instant in the middle of a monthly budget
    /// period, two weeks from either end.
    pub fn mid_month() -> DateTime<Utc> {
        let now = Utc::now();
        Utc.with_ymd_and_hms(now.year(), now.month(), 15, 12, 0, 0)
            .single()
            .expect("the 15th exists")
    }

    /// A clock that reads `start` when it is made and runs on with the wall clock.
    pub fn starting_at(start: DateTime<Utc>) -> impl Fn() -> DateTime<Utc> + Send + Sync {
        let made = Instant::now();
        move || start + chrono::Duration::from_std(made.elapsed()).expect("elapsed fits")
    }

    /// The latest window of `seconds` (aligned to the epoch) that ends at or before `now` and
    /// starts in `now`'s UTC month. In the first `seconds` of a month that is the month's
    /// first window, which ends after `now`. Data in it always counts in `now`'s monthly
    /// period, whatever the day and time.
    pub fn recent_window(now: DateTime<Utc>, seconds: i64) -> (DateTime<Utc>, DateTime<Utc>) {
        let month_start = Utc
            .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
            .single()
            .expect("the 1st exists");
        let end = now.timestamp() - now.timestamp().rem_euclid(seconds);
        let start = (end - seconds).max(month_start.timestamp());
        let start = Utc.timestamp_opt(start, 0).single().expect("in range");
        (start, start + chrono::Duration::seconds(seconds))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn at(s: &str) -> DateTime<Utc> {
            DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
        }

        #[test]
        fn a_recent_window_starts_in_the_month_of_now() {
            for (now, start, end) in [
                // The first seconds of a month: the month's first window, ending after now.
                (
                    "2026-12-01T00:00:00Z",
                    "2026-12-01T00:00:00Z",
                    "2026-12-01T00:05:00Z",
                ),
                (
                    "2026-12-01T00:04:59Z",
                    "2026-12-01T00:00:00Z",
                    "2026-12-01T00:05:00Z",
                ),
                (
                    "2026-12-01T00:05:00Z",
                    "2026-12-01T00:00:00Z",
                    "2026-12-01T00:05:00Z",
                ),
                (
                    "2026-12-01T00:11:00Z",
                    "2026-12-01T00:05:00Z",
                    "2026-12-01T00:10:00Z",
                ),
                // The last seconds of a month: the last whole window before now.
                (
                    "2026-11-30T23:59:59Z",
                    "2026-11-30T23:50:00Z",
                    "2026-11-30T23:55:00Z",
                ),
                (
                    "2027-02-28T23:59:30Z",
                    "2027-02-28T23:50:00Z",
                    "2027-02-28T23:55:00Z",
                ),
            ] {
                let (s, e) = recent_window(at(now), 300);
                assert_eq!((s, e), (at(start), at(end)), "at {now}");
                assert_eq!((s.year(), s.month()), (at(now).year(), at(now).month()));
            }
        }

        #[test]
        fn a_clock_started_at_an_instant_runs_on_from_it() {
            let start = at("2026-11-30T23:59:30Z");
            let clock = starting_at(start);
            let (a, b) = (clock(), clock());
            assert!(start <= a && a <= b && b < start + chrono::Duration::seconds(60));
        }
    }
}
