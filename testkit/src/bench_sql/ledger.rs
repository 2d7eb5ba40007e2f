//! `budgetd-dev bench ledger`: the COPY baseline of the write path (tables like
//! `ledger_entries`, the entries as COPY CSV) and the finance views as finance queries them.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use ledger::entry::{NewEntry, Window};

use super::BenchConnection;

/// The columns of `ledger_entries` that a first write fills, in the order of [`entries_csv`].
const ENTRY_COLUMNS: &str =
    "tenant_id, meter, window_start, window_end, revision, kind, quantity, \
     unit, price_version, rate, price_unit, units_per_price_unit, amount, currency, source";

/// A row of `finance.tenant_costs_monthly`.
pub type MonthlyCost = (String, NaiveDate, Decimal, String);
/// A row of `finance.tenant_costs_daily`.
pub type DailyCost = (String, NaiveDate, String, Decimal, String, Decimal, String);

/// The rows `write_entries` would insert for first writes of `entries` from `source`, as the
/// COPY CSV of [`BenchConnection::copy_entries`].
pub fn entries_csv(entries: &[NewEntry], source: &str) -> Vec<u8> {
    let mut out = String::with_capacity(entries.len() * 192);
    let mut last_window: Option<(Window, String, String)> = None;
    for e in entries {
        let w = e.key.window;
        if last_window.as_ref().is_none_or(|(lw, _, _)| *lw != w) {
            let fmt = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S+00").to_string();
            last_window = Some((w, fmt(w.start()), fmt(w.end())));
        }
        let (_, start, end) = last_window.as_ref().expect("set above");
        // Ids, meter and unit names and currency codes are validated: no CSV quoting needed.
        let _ = writeln!(
            out,
            "{},{},{},{},1,usage,{},{},{},{},{},{},{},{},{source}",
            e.key.tenant,
            e.key.meter,
            start,
            end,
            e.quantity,
            e.unit,
            e.pricing.version,
            e.pricing.rate,
            e.pricing.price_unit,
            e.pricing.units_per_price_unit,
            e.amount(),
            e.pricing.currency,
        );
    }
    out.into_bytes()
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
