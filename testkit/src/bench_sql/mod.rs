//! The benchmarks' SQL besides the store, in one place, so that the dev binary holds none: bulk
//! loads straight into the ledger's tables (`insert … select generate_series`), the COPY
//! baseline, the plain `SELECT`s the benchmarks compare the store with, `EXPLAIN ANALYZE`, and
//! the maintenance around timed steps (VACUUM, CHECKPOINT, autovacuum).
//!
//! Everything a benchmark measures goes through the store; this module prepares data and
//! measures baselines. One submodule per benchmark; what they share is here.

pub mod collector;
pub mod enforcer;
pub mod ledger;
pub mod relay;

use std::time::Duration;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use sqlx::{Connection, Executor, PgConnection};

use ::ledger::{Store, StoreConfig};

/// A plain connection to a benchmark's scratch database, beside the store's pool: for loading,
/// maintenance and `EXPLAIN`.
pub struct BenchConnection(PgConnection);

impl BenchConnection {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let conn = PgConnection::connect(url)
            .await
            .context("connecting to the scratch database")?;
        Ok(BenchConnection(conn))
    }

    pub async fn close(self) {
        self.0.close().await.ok();
    }

    /// The server's settings `names` (`current_setting`), in order.
    pub async fn settings(&mut self, names: &[&str]) -> anyhow::Result<Vec<String>> {
        let names: Vec<&str> = names.to_vec();
        Ok(sqlx::query_scalar(
            "select current_setting(s.name) \
             from unnest($1::text[]) with ordinality as s(name, i) order by s.i",
        )
        .bind(names)
        .fetch_all(&mut self.0)
        .await?)
    }

    /// `VACUUM ANALYZE` of `tables`, or of the whole database when `tables` is empty.
    pub async fn vacuum_analyze(&mut self, tables: &[&str]) -> anyhow::Result<()> {
        if tables.is_empty() {
            self.simple("vacuum analyze").await
        } else {
            self.simple(&format!("vacuum analyze {}", tables.join(", ")))
                .await
        }
    }

    pub async fn checkpoint(&mut self) -> anyhow::Result<()> {
        self.simple("checkpoint").await
    }

    /// Turns autovacuum on or off for those of `tables` that exist. Autovacuum starting in the
    /// middle of a timed step, on a machine with few cores, is the largest source of noise
    /// between rounds; benchmarks that turn it off vacuum explicitly instead.
    pub async fn set_autovacuum(&mut self, tables: &[&str], on: bool) -> anyhow::Result<()> {
        for table in tables {
            let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
                .bind(table)
                .fetch_one(&mut self.0)
                .await?;
            if exists {
                let sql = if on {
                    format!("alter table {table} reset (autovacuum_enabled)")
                } else {
                    format!("alter table {table} set (autovacuum_enabled = off)")
                };
                self.simple(&sql).await?;
            }
        }
        Ok(())
    }

    /// Runs SQL over the simple protocol (VACUUM and CHECKPOINT cannot run in a transaction).
    async fn simple(&mut self, sql: &str) -> anyhow::Result<()> {
        // A plain string has no arguments, so it goes over the simple protocol. (`sqlx::raw_sql`
        // would too, but its future trips the compiler's `Send` inference in a spawned task.)
        self.0
            .execute(sql)
            .await
            .with_context(|| format!("running {sql:?}"))?;
        Ok(())
    }
}

/// Migrates a scratch database and connects to it: a small store pool with the given statement
/// timeout and no retries, and one plain connection for loading and EXPLAIN.
pub async fn scratch_ledger(
    url: &str,
    statement_timeout: Duration,
) -> anyhow::Result<(Store, BenchConnection)> {
    Store::migrate(url, Duration::from_secs(30), Duration::from_secs(120))
        .await
        .context("migrating the scratch database")?;
    let store = Store::connect(&StoreConfig {
        url: url.to_owned(),
        max_connections: 2,
        acquire_timeout: Duration::from_secs(60),
        statement_timeout,
        max_retries: 0,
        probe_timeout: Duration::from_millis(500),
    })
    .await?;
    let conn = BenchConnection::connect(url).await?;
    Ok((store, conn))
}

/// The ids of `count` numbered tenants: `t00001`, `t00002`, … (at least five digits, all of
/// the same width), as [`insert_numbered_tenants`] creates them.
pub fn numbered_tenant_ids(count: usize) -> Vec<String> {
    let width = id_width(count) as usize;
    (1..=count).map(|i| format!("t{i:0width$}")).collect()
}

fn id_width(count: usize) -> i32 {
    count.to_string().len().max(5) as i32
}

/// Numbered tenants for a benchmark, created in one statement.
#[derive(Debug, Clone, Copy)]
pub struct NumberedTenants {
    pub count: usize,
    /// Every this many-th tenant is suspended; the others are active.
    pub suspended_every: Option<i64>,
    /// Their creation time; the server's `now()` without one.
    pub created_at: Option<DateTime<Utc>>,
}

/// Inserts tenants `t00001`.. (the ids of [`numbered_tenant_ids`]) straight into `tenants`,
/// without audit records or outbox events.
pub async fn insert_numbered_tenants(
    conn: &mut BenchConnection,
    tenants: NumberedTenants,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into tenants (id, display_name, owner, data_residency, labels, state, \
                              created_at, updated_at, state_changed_at) \
         select 't' || lpad(g::text, $2, '0'), 'Bench tenant ' || g, 'bench@example.com', 'eu', \
                '{}', case when g % $3::bigint = 0 then 'suspended' else 'active' end, \
                coalesce($4::timestamptz, now()), coalesce($4, now()), coalesce($4, now()) \
         from generate_series(1, $1) as g",
    )
    .bind(tenants.count as i64)
    .bind(id_width(tenants.count))
    .bind(tenants.suspended_every)
    .bind(tenants.created_at)
    .execute(&mut conn.0)
    .await
    .context("inserting tenants")?;
    let last: Option<String> = sqlx::query_scalar("select max(id) from tenants")
        .fetch_one(&mut conn.0)
        .await?;
    let expected = numbered_tenant_ids(tenants.count).pop();
    if last != expected {
        bail!("tenant ids in the database do not match the bench's ({last:?}, not {expected:?})");
    }
    Ok(())
}

/// Inserts active tenants `ids` straight into `tenants` in one statement, without audit records
/// or outbox events; fails unless they are then all the tenants there are.
pub async fn insert_active_tenants(store: &Store, ids: &[String]) -> anyhow::Result<()> {
    sqlx::query(
        "insert into tenants (id, display_name, owner, data_residency, labels, state, \
                              created_at, updated_at, state_changed_at) \
         select id, 'Bench tenant ' || id, 'bench@example.com', 'eu', '{}', 'active', \
                now(), now(), now() \
         from unnest($1::text[]) as id",
    )
    .bind(ids)
    .execute(store.pool())
    .await
    .context("inserting tenants")?;
    let count: i64 = sqlx::query_scalar("select count(*) from tenants")
        .fetch_one(store.pool())
        .await?;
    if count != ids.len() as i64 {
        bail!("{count} tenants in the ledger, expected {}", ids.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::ledger::tenant::TenantId;

    #[test]
    fn tenant_ids_are_padded_labels() {
        assert_eq!(numbered_tenant_ids(3), ["t00001", "t00002", "t00003"]);
        assert_eq!(numbered_tenant_ids(123_456)[0], "t000001");
        assert!(numbered_tenant_ids(10)
            .iter()
            .all(|id| TenantId::parse(id).is_ok()));
    }
}
