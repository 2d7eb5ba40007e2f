//! `budgetd-dev bench ledger`: the COPY baseline of the write path (tables like
//! `ledger_entries`, the entries as COPY CSV) and the finance views as finance queries them.

use std::collections::HashMap;
use std::fmt::Write as _;

use anyhow::Context;
use chrono::NaiveDate;
use rust_decimal::Decimal;

use ledger::entry::{NewEntry, Window};

use super::BenchConnection;

/// The columns of `ledger_entries` that a first write fills, in the order of [`entries_csv`].
const ENTRY_COLUMNS: &str = "window_start, tenant_key, price_version, meter_key, unit_key, \
                             window_key, seq, source_key, quantity, amount";

/// A row of `finance.tenant_costs_monthly`.
pub type MonthlyCost = (String, NaiveDate, Decimal, String);
/// A row of `finance.tenant_costs_daily`.
pub type DailyCost = (String, NaiveDate, String, Decimal, String, Decimal, String);

/// The small keys the ledger gave the names of a write (see [`BenchConnection::entry_keys`]).
#[derive(Debug, Default)]
pub struct EntryKeys {
    tenants: HashMap<String, i32>,
    meters: HashMap<String, i16>,
    units: HashMap<(String, String, Decimal), i16>,
    sources: HashMap<String, i16>,
    windows: HashMap<i32, i16>,
}

/// The rows `write_entries` would insert for first writes of `entries` from `source`, as the
/// COPY CSV of [`BenchConnection::copy_entries`]. The names must have keys already (a write
/// through the store made them).
pub fn entries_csv(
    entries: &[NewEntry],
    source: &str,
    keys: &EntryKeys,
) -> anyhow::Result<Vec<u8>> {
    let mut out = String::with_capacity(entries.len() * 64);
    let mut last_window: Option<(Window, String)> = None;
    let source = keys.sources.get(source).context("the source has no key")?;
    for e in entries {
        let w = e.key.window;
        if last_window.as_ref().is_none_or(|(lw, _)| *lw != w) {
            last_window = Some((w, w.start().format("%Y-%m-%d %H:%M:%S+00").to_string()));
        }
        let (_, start) = last_window.as_ref().expect("set above");
        let tenant = keys
            .tenants
            .get(e.key.tenant.as_str())
            .context("a tenant has no key")?;
        let meter = keys
            .meters
            .get(e.key.meter.as_str())
            .context("a meter has no key")?;
        let unit = keys
            .units
            .get(&(
                e.unit.as_str().to_owned(),
                e.pricing.price_unit.as_str().to_owned(),
                e.pricing.units_per_price_unit,
            ))
            .context("a unit has no key")?;
        let length = keys
            .windows
            .get(&w.seconds())
            .context("a window length has no key")?;
        let _ = writeln!(
            out,
            "{start},{tenant},{},{meter},{unit},{length},2,{source},{},{}",
            e.pricing.version,
            e.quantity,
            e.amount(),
        );
    }
    Ok(out.into_bytes())
}

impl BenchConnection {
    /// Creates table `name` like `ledger_entries`: with its indexes and check constraints
    /// (`including all`; no foreign keys, no triggers), or with neither.
    pub async fn create_table_like_entries(
        &mut self,
        name: &str,
        with_indexes: bool,
    ) -> anyhow::Result<()> {
        let like = if with_indexes {
            "including all"
        } else {
            "including defaults including generated including identity"
        };
        self.simple(&format!("create table {name} (like ledger_entries {like})"))
            .await
    }

    /// The keys of every tenant, meter, unit and source the ledger knows.
    pub async fn entry_keys(&mut self) -> anyhow::Result<EntryKeys> {
        let mut keys = EntryKeys::default();
        let tenants: Vec<(String, i32)> = sqlx::query_as("select id, tenant_key from tenants")
            .fetch_all(&mut self.0)
            .await?;
        keys.tenants.extend(tenants);
        let meters: Vec<(String, i16)> =
            sqlx::query_as("select name, meter_key from ledger_meters")
                .fetch_all(&mut self.0)
                .await?;
        keys.meters.extend(meters);
        let units: Vec<(String, String, Decimal, i16)> = sqlx::query_as(
            "select unit, price_unit, units_per_price_unit, unit_key from ledger_units",
        )
        .fetch_all(&mut self.0)
        .await?;
        keys.units
            .extend(units.into_iter().map(|(u, p, n, k)| ((u, p, n), k)));
        let sources: Vec<(String, i16)> =
            sqlx::query_as("select name, source_key from ledger_sources")
                .fetch_all(&mut self.0)
                .await?;
        keys.sources.extend(sources);
        let windows: Vec<(i32, i16)> =
            sqlx::query_as("select seconds, window_key from ledger_windows")
                .fetch_all(&mut self.0)
                .await?;
        keys.windows.extend(windows);
        Ok(keys)
    }

    /// Creates the ledger's partition of `month` (its first day) if it is missing, as the
    /// write path would.
    pub async fn create_ledger_partition(&mut self, month: NaiveDate) -> anyhow::Result<()> {
        sqlx::query("select budgetd_ensure_ledger_partition($1)")
            .bind(month)
            .execute(&mut self.0)
            .await?;
        Ok(())
    }

    /// The name of the ledger's partition of `month`.
    pub fn ledger_partition(month: NaiveDate) -> String {
        format!("ledger_entries_p{}", month.format("%Y%m"))
    }

    /// What the ledger's entries take on disk: (entries, heap bytes, index bytes) summed over
    /// every partition (heap includes TOAST, free space and visibility maps).
    pub async fn entry_storage(&mut self) -> anyhow::Result<(i64, i64, i64)> {
        Ok(sqlx::query_as(
            "select (select count(*) from ledger_entries),
                    coalesce(sum(pg_total_relation_size(inhrelid) - pg_indexes_size(inhrelid)), 0)::int8,
                    coalesce(sum(pg_indexes_size(inhrelid)), 0)::int8
             from pg_inherits where inhparent = 'ledger_entries'::regclass",
        )
        .fetch_one(&mut self.0)
        .await?)
    }

    pub async fn drop_tables(&mut self, names: &[&str]) -> anyhow::Result<()> {
        self.simple(&format!("drop table {}", names.join(", ")))
            .await
    }

    /// COPY of [`entries_csv`] rows into `table`; the rows stored.
    pub async fn copy_entries(&mut self, table: &str, csv: &[u8]) -> anyhow::Result<u64> {
        let mut copy = self
            .0
            .copy_in_raw(&format!(
                "copy {table} ({ENTRY_COLUMNS}) from stdin (format csv)"
            ))
            .await?;
        if let Err(e) = copy.send(csv).await {
            copy.abort("send failed").await.ok();
            return Err(e.into());
        }
        Ok(copy.finish().await?)
    }

    /// `SELECT * FROM finance.tenant_costs_monthly` for `month`, as finance runs it: an
    /// unnamed statement (parsed and planned every time), every row fetched and decoded.
    pub async fn finance_monthly(&mut self, month: NaiveDate) -> anyhow::Result<Vec<MonthlyCost>> {
        let sql = format!("SELECT * FROM finance.tenant_costs_monthly WHERE month = '{month}'");
        sqlx::query_as(&sql)
            .persistent(false)
            .fetch_all(&mut self.0)
            .await
            .context("querying finance.tenant_costs_monthly")
    }

    /// `select * from finance.tenant_costs_daily` for the days in `[from, to)`, like
    /// [`Self::finance_monthly`].
    pub async fn finance_daily(
        &mut self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> anyhow::Result<Vec<DailyCost>> {
        let sql = format!(
            "select * from finance.tenant_costs_daily where day >= '{from}' and day < '{to}'"
        );
        sqlx::query_as(&sql)
            .persistent(false)
            .fetch_all(&mut self.0)
            .await
            .context("querying finance.tenant_costs_daily")
    }
}
