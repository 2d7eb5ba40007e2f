//! The write path of ledger entries: set-based, idempotent, with rollups in the same statement.
//!
//! A batch is sent as one array per column and classified against the latest entry of each key
//! in a single statement: new keys are inserted (and rolled up), identical writes are no-ops,
//! differing writes are recorded as conflicts and leave the live entry alone. Corrections
//! reverse the live entry and insert its replacement, also in one statement.

use std::collections::HashSet;

use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::query;
use super::Store;
use crate::entry::{CorrectionReport, EntryConflict, EntryKey, NewEntry, WriteReport};
use crate::error::Error;

/// Rows per statement. Larger batches are split, inside the same transaction.
const CHUNK: usize = 10_000;

/// Rounds of re-classification for rows that raced with a concurrent writer of the same key.
const MAX_ROUNDS: usize = 3;

/// Unnests the batch and finds the latest entry of every key (highest revision; at equal
/// revision the reversal, which means the key has no live entry).
const CLASSIFY: &str = "
input as (
    select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[],
                         $5::numeric[], $6::text[], $7::bigint[], $8::numeric[], $9::text[],
                         $10::numeric[], $11::numeric[], $12::text[])
        with ordinality as i(tenant_id, meter, window_start, window_end, quantity, unit,
                             price_version, rate, price_unit, units_per_price_unit, amount,
                             currency, ord)
),
classified as (
    select i.*, l.id as latest_id, l.kind as latest_kind, l.revision as latest_revision,
           l.quantity as latest_quantity, l.unit as latest_unit,
           l.price_version as latest_price_version, l.rate as latest_rate,
           l.price_unit as latest_price_unit, l.units_per_price_unit as latest_units_per_price_unit,
           l.amount as latest_amount, l.currency as latest_currency,
           (l.kind = 'usage' and (l.quantity <> i.quantity or l.unit <> i.unit
                                  or l.price_version <> i.price_version)) as differs
    from input i
    left join lateral (
        select e.id, e.kind, e.revision, e.quantity, e.unit, e.price_version, e.rate,
               e.price_unit, e.units_per_price_unit, e.amount, e.currency
        from ledger_entries e
        where e.tenant_id = i.tenant_id and e.meter = i.meter
          and e.window_start = i.window_start and e.window_end = i.window_end
        order by e.revision desc, e.kind asc
        limit 1
    ) l on true
)";

/// Adds the rows of the CTE `written` to the daily, monthly and per-tenant daily rollups.
const ROLLUP: &str = "
daily as (
    insert into ledger_rollup_daily as r (tenant_id, day, meter, unit, currency, price_unit,
                                          units_per_price_unit, quantity, amount, entries)
    select tenant_id, (window_start at time zone 'UTC')::date, meter, unit, currency, price_unit,
           units_per_price_unit, sum(quantity), sum(amount), count(*)
    from written group by 1, 2, 3, 4, 5, 6, 7 order by 1, 2, 3, 4, 5, 6, 7
    on conflict (tenant_id, day, meter, unit, currency, price_unit, units_per_price_unit) do update
        set quantity = r.quantity + excluded.quantity, amount = r.amount + excluded.amount,
            entries = r.entries + excluded.entries
),
monthly as (
    insert into ledger_rollup_monthly as r (month, tenant_id, currency, amount, entries)
    select date_trunc('month', window_start at time zone 'UTC')::date, tenant_id, currency,
           sum(amount), count(*)
    from written group by 1, 2, 3 order by 1, 2, 3
    on conflict (month, tenant_id, currency) do update
        set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries
),
tenant_daily as (
    insert into ledger_rollup_tenant_daily as r (day, tenant_id, currency, amount, entries)
    select (window_start at time zone 'UTC')::date, tenant_id, currency, sum(amount), count(*)
    from written group by 1, 2, 3 order by 1, 2, 3
    on conflict (day, tenant_id, currency) do update
        set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries
)";

const ENTRY_COLUMNS: &str =
    "tenant_id, meter, window_start, window_end, revision, kind, quantity, \
     unit, price_version, rate, price_unit, units_per_price_unit, amount, currency, source, reason";

fn write_sql() -> String {
    format!(
        "with {CLASSIFY},
        written as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select tenant_id, meter, window_start, window_end, coalesce(latest_revision, 0) + 1,
                   'usage', quantity, unit, price_version, rate, price_unit, units_per_price_unit,
                   amount, currency, $13, null
            from classified where latest_id is null or latest_kind = 'reversal'
            order by tenant_id, meter, window_start, window_end
            on conflict (tenant_id, meter, window_start, window_end, revision, kind) do nothing
            returning tenant_id, meter, window_start, window_end, quantity, unit, amount, currency,
                      price_unit, units_per_price_unit
        ),
        {ROLLUP},
        conflicts as (
            insert into ledger_conflicts (entry_id, attempted_quantity, attempted_unit,
                                          attempted_price_version, attempted_amount, source)
            select latest_id, quantity, unit, price_version, amount, $13
            from classified where differs
            on conflict (entry_id, attempted_quantity, attempted_unit, attempted_price_version)
                do nothing
        )
        select c.ord, (w.tenant_id is not null) as inserted, c.latest_kind, c.differs,
               c.latest_id, c.latest_quantity, c.latest_price_version
        from classified c
        left join written w using (tenant_id, meter, window_start, window_end)"
    )
}

fn correct_sql() -> String {
    format!(
        "with {CLASSIFY},
        reversed as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select tenant_id, meter, window_start, window_end, latest_revision, 'reversal',
                   -latest_quantity, latest_unit, latest_price_version, latest_rate,
                   latest_price_unit, latest_units_per_price_unit, -latest_amount,
                   latest_currency, $13, $14
            from classified where differs
            returning tenant_id, meter, window_start, window_end, quantity, unit, amount, currency,
                      price_unit, units_per_price_unit
        ),
        replaced as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select tenant_id, meter, window_start, window_end, coalesce(latest_revision, 0) + 1,
                   'usage', quantity, unit, price_version, rate, price_unit, units_per_price_unit,
                   amount, currency, $13, $14
            from classified where latest_id is null or latest_kind = 'reversal' or differs
            order by tenant_id, meter, window_start, window_end
            returning tenant_id, meter, window_start, window_end, quantity, unit, amount, currency,
                      price_unit, units_per_price_unit
        ),
        written as (select * from reversed union all select * from replaced),
        {ROLLUP}
        select count(*) filter (where differs) as corrected,
               count(*) filter (where latest_id is null or latest_kind = 'reversal') as inserted,
               count(*) filter (where latest_kind = 'usage' and not differs) as unchanged
        from classified"
    )
}

/// Binds a batch as column arrays ($1..$12).
fn bind_batch<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    batch: &[&NewEntry],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let col = |f: &dyn Fn(&NewEntry) -> String| batch.iter().map(|e| f(e)).collect::<Vec<_>>();
    let dec = |f: &dyn Fn(&NewEntry) -> Decimal| batch.iter().map(|e| f(e)).collect::<Vec<_>>();
    query
        .bind(col(&|e| e.key.tenant.as_str().to_owned()))
        .bind(col(&|e| e.key.meter.as_str().to_owned()))
        .bind(
            batch
                .iter()
                .map(|e| e.key.window.start())
                .collect::<Vec<_>>(),
        )
        .bind(batch.iter().map(|e| e.key.window.end()).collect::<Vec<_>>())
        .bind(dec(&|e| e.quantity))
        .bind(col(&|e| e.unit.as_str().to_owned()))
        .bind(batch.iter().map(|e| e.pricing.version).collect::<Vec<_>>())
        .bind(dec(&|e| e.pricing.rate))
        .bind(col(&|e| e.pricing.price_unit.as_str().to_owned()))
        .bind(dec(&|e| e.pricing.units_per_price_unit))
        .bind(dec(&|e| e.amount()))
        .bind(col(&|e| e.pricing.currency.code().to_owned()))
}

/// Splits a batch so that no key occurs twice in one statement: later occurrences of a key
/// are written after the earlier ones, and so compared against them.
fn rounds_without_duplicate_keys(entries: &[NewEntry]) -> Vec<Vec<&NewEntry>> {
    let mut rounds: Vec<(HashSet<&EntryKey>, Vec<&NewEntry>)> = Vec::new();
    for entry in entries {
        match rounds
            .iter_mut()
            .find(|(keys, _)| !keys.contains(&entry.key))
        {
            Some((keys, batch)) => {
                keys.insert(&entry.key);
                batch.push(entry);
            }
            None => rounds.push(([&entry.key].into(), vec![entry])),
        }
    }
    rounds.into_iter().map(|(_, batch)| batch).collect()
}

/// Writes one duplicate-free batch in the caller's transaction.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[&NewEntry],
    source: &str,
    report: &mut WriteReport,
) -> Result<(), Error> {
    let sql = write_sql();
    let mut pending: Vec<&NewEntry> = batch.to_vec();
    for _ in 0..MAX_ROUNDS {
        if pending.is_empty() {
            return Ok(());
        }
        let mut raced = Vec::new();
        for chunk in pending.chunks(CHUNK) {
            let rows = bind_batch(query(&sql), chunk)
                .bind(source)
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let ord: i64 = row.try_get("ord")?;
                let entry = chunk[(ord - 1) as usize];
                let latest_kind: Option<String> = row.try_get("latest_kind")?;
                if row.try_get("inserted")? {
                    report.inserted += 1;
                } else if row.try_get::<Option<bool>, _>("differs")? == Some(true) {
                    report.conflicts.push(EntryConflict {
                        key: entry.key.clone(),
                        live_entry_id: row.try_get("latest_id")?,
                        live_quantity: row.try_get("latest_quantity")?,
                        live_price_version: row.try_get("latest_price_version")?,
                        attempted_quantity: entry.quantity,
                        attempted_price_version: entry.pricing.version,
                    });
                } else if latest_kind.as_deref() == Some("usage") {
                    report.unchanged += 1;
                } else {
                    // Another writer inserted this key after our snapshot: classify it again.
                    raced.push(entry);
                }
            }
        }
        pending = raced;
    }
    if pending.is_empty() {
        Ok(())
    } else {
        Err(Error::conflict(
            "write_contention",
            format!(
                "{} entries kept racing with concurrent writers",
                pending.len()
            ),
        ))
    }
}

/// Writes entries in the caller's transaction (see `Store::write_entries`).
pub(crate) async fn write_entries_in(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    source: &str,
) -> Result<WriteReport, Error> {
    let mut report = WriteReport::default();
    for batch in rounds_without_duplicate_keys(entries) {
        write_batch(conn, &batch, source, &mut report).await?;
    }
    Ok(report)
}

/// Corrects entries in the caller's transaction (see `Store::correct_entries`).
pub(crate) async fn correct_entries_in(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    reason: &str,
    source: &str,
) -> Result<CorrectionReport, Error> {
    let sql = correct_sql();
    let mut report = CorrectionReport::default();
    for batch in rounds_without_duplicate_keys(entries) {
        for chunk in batch.chunks(CHUNK) {
            let row = bind_batch(query(&sql), chunk)
                .bind(source)
                .bind(reason)
                .fetch_one(&mut *conn)
                .await?;
            report.corrected += row.try_get::<i64, _>("corrected")? as usize;
            report.inserted += row.try_get::<i64, _>("inserted")? as usize;
            report.unchanged += row.try_get::<i64, _>("unchanged")? as usize;
        }
    }
    Ok(report)
}

pub(crate) fn count_written(source: &str, report: &WriteReport) {
    metrics::counter!("budgetd_ledger_entries_written_total", "source" => source.to_owned())
        .increment(report.inserted as u64);
    metrics::counter!("budgetd_ledger_conflicts_total", "source" => source.to_owned())
        .increment(report.conflicts.len() as u64);
}

pub(crate) fn count_corrected(source: &str, report: &CorrectionReport) {
    metrics::counter!("budgetd_ledger_corrections_total", "source" => source.to_owned())
        .increment(report.corrected as u64);
}

impl Store {
    /// Writes usage entries idempotently, in one transaction. Writing a key again with the
    /// same quantity, unit and price version changes nothing; with a different one it is
    /// reported and recorded in `ledger_conflicts`, and the live entry stays.
    pub async fn write_entries(
        &self,
        entries: &[NewEntry],
        source: &str,
    ) -> Result<WriteReport, Error> {
        let report = self
            .run("write_entries", || async {
                let mut tx = self.begin().await?;
                let report = write_entries_in(&mut tx, entries, source).await?;
                tx.commit().await?;
                Ok(report)
            })
            .await?;
        count_written(source, &report);
        Ok(report)
    }

    /// Makes each given entry the live one for its key: a differing live entry is reversed
    /// and replaced, a matching one is left alone, a missing one is inserted. Meant for a
    /// single writer (the collector's leader); a concurrent correction of the same key fails
    /// on the revision constraint and changes nothing.
    pub async fn correct_entries(
        &self,
        entries: &[NewEntry],
        reason: &str,
        source: &str,
    ) -> Result<CorrectionReport, Error> {
        let report = self
            .run("correct_entries", || async {
                let mut tx = self.begin().await?;
                let report = correct_entries_in(&mut tx, entries, reason, source).await?;
                tx.commit().await?;
                Ok(report)
            })
            .await?;
        count_corrected(source, &report);
        Ok(report)
    }
}
