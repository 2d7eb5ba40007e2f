//! The write path of ledger entries: set-based, idempotent, with rollups in the same statement.
//!
//! A batch is sent as one array per column and classified against the latest entry of each key
//! in a single statement: new keys are inserted (and rolled up), identical writes are no-ops,
//! differing writes are recorded as conflicts and leave the live entry alone. Corrections
//! reverse the live entry and insert its replacement, also in one statement.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::query;
use super::Store;
use crate::entry::{CorrectionReport, EntryConflict, NewEntry, WriteReport};
use crate::error::Error;

/// Rows per statement. Larger batches are split, inside the same transaction.
const CHUNK: usize = 10_000;

/// Rounds of re-classification for rows that raced with a concurrent writer of the same key.
const MAX_ROUNDS: usize = 3;

/// Unnests the batch ($1..$8, keys already resolved) with its tenants' keys.
const INPUT: &str = "
input as (
    select i.ord, i.tenant_id, t.tenant_key, i.meter_key, i.window_start, i.window_key,
           i.quantity, i.unit_key, i.price_version, i.amount
    from unnest($1::text[], $2::int2[], $3::timestamptz[], $4::int2[], $5::numeric[],
                $6::int2[], $7::int4[], $8::numeric[])
        with ordinality as i(tenant_id, meter_key, window_start, window_key, quantity,
                             unit_key, price_version, amount, ord)
    left join tenants t on t.id = i.tenant_id
)";

/// [`INPUT`], and the latest entry of every key: its highest `seq` (odd: a reversal, so the
/// key has no live entry).
const CLASSIFY: &str = "
classified as (
    select i.*, l.seq as latest_seq, l.quantity as latest_quantity,
           l.unit_key as latest_unit_key, l.price_version as latest_price_version,
           l.amount as latest_amount, l.window_key as latest_window_key,
           (l.seq % 2 = 0 and (l.quantity <> i.quantity or l.unit_key <> i.unit_key
                               or l.price_version <> i.price_version
                               or l.window_key <> i.window_key)) as differs
    from input i
    left join lateral (
        select e.seq, e.quantity, e.unit_key, e.price_version, e.amount, e.window_key
        from ledger_entries e
        where e.window_start = i.window_start and e.tenant_key = i.tenant_key
          and e.meter_key = i.meter_key
        order by e.seq desc
        limit 1
    ) l on true
)";

const ENTRY_COLUMNS: &str = "window_start, tenant_key, price_version, meter_key, unit_key, \
                             window_key, seq, source_key, quantity, amount";

const INSERTED_COLUMNS: &str =
    "window_start, tenant_key, meter_key, unit_key, seq, price_version, quantity, amount";

/// Adds the rows of the CTE `inserted` to the rollups: the daily rollup by the entries' own keys
/// (one row per tenant, day, meter, unit and currency), the monthly and per-tenant daily ones by
/// tenant id, named once per tenant and day (CTE `tenant_days`), not once per entry. Each
/// upsert goes in key order, so concurrent writers lock rollup rows in one order.
const ROLLUP: &str = "
written as (
    select w.tenant_key, (w.window_start at time zone 'UTC')::date as day, w.meter_key,
           w.unit_key, v.currency, w.quantity, w.amount
    from inserted w
    join price_book_versions v on v.id = w.price_version
),
daily as (
    insert into ledger_rollup_days as r (tenant_key, day, meter_key, unit_key, currency,
                                         quantity, amount, entries)
    select tenant_key, day, meter_key, unit_key, currency, sum(quantity), sum(amount), count(*)
    from written group by 1, 2, 3, 4, 5 order by 1, 2, 3, 4, 5
    on conflict (tenant_key, day, meter_key, unit_key, currency) do update
        set quantity = r.quantity + excluded.quantity, amount = r.amount + excluded.amount,
            entries = r.entries + excluded.entries
),
tenant_days as (
    select t.id as tenant_id, d.day, d.currency, d.amount, d.entries
    from (select tenant_key, day, currency, sum(amount) as amount, count(*) as entries
          from written group by 1, 2, 3) d
    join tenants t on t.tenant_key = d.tenant_key
),
monthly as (
    insert into ledger_rollup_monthly as r (month, tenant_id, currency, amount, entries)
    select date_trunc('month', day)::date, tenant_id, currency, sum(amount),
           sum(entries)::bigint
    from tenant_days group by 1, 2, 3 order by 1, 2, 3
    on conflict (month, tenant_id, currency) do update
        set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries
),
tenant_daily as (
    insert into ledger_rollup_tenant_daily as r (day, tenant_id, currency, amount, entries)
    select day, tenant_id, currency, amount, entries
    from tenant_days order by 1, 2, 3
    on conflict (day, tenant_id, currency) do update
        set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries
)";

/// The write of a batch whose windows have no entries yet (the collector's common case):
/// every row is a first write, so no key is looked up and the insert needs no conflict
/// handling. A key written meanwhile by another writer fails the statement on the primary key;
/// the caller rolls back to a savepoint and classifies the batch instead.
fn first_write_sql() -> String {
    format!(
        "with {INPUT},
        inserted as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select window_start, tenant_key, price_version, meter_key, unit_key, window_key,
                   2, $9, quantity, amount
            from input
            where tenant_key is not null
            order by window_start, tenant_key, meter_key
            returning {INSERTED_COLUMNS}
        ),
        {ROLLUP}
        select (select count(*) from inserted) as inserted,
               min(tenant_id) filter (where tenant_key is null) as unknown_tenant
        from input"
    )
}

fn write_sql() -> String {
    format!(
        "with {INPUT}, {CLASSIFY},
        inserted as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select window_start, tenant_key, price_version, meter_key, unit_key, window_key,
                   coalesce(latest_seq + 1, 2), $9, quantity, amount
            from classified
            where tenant_key is not null and (latest_seq is null or latest_seq % 2 = 1)
            order by window_start, tenant_key, meter_key
            on conflict do nothing
            returning {INSERTED_COLUMNS}
        ),
        {ROLLUP},
        conflicts as (
            insert into ledger_conflicts (tenant_id, meter, window_start, window_end,
                                          live_revision, attempted_quantity, attempted_unit,
                                          attempted_price_version, attempted_amount, source)
            select c.tenant_id, m.name, c.window_start,
                   c.window_start + make_interval(secs => w.seconds), c.latest_seq / 2,
                   c.quantity, u.unit, c.price_version, c.amount, s.name
            from classified c
            join ledger_meters m on m.meter_key = c.meter_key
            join ledger_units u on u.unit_key = c.unit_key
            join ledger_sources s on s.source_key = $9
            join ledger_windows w on w.window_key = c.window_key
            where c.differs
            on conflict (tenant_id, meter, window_start, live_revision, attempted_quantity,
                         attempted_unit, attempted_price_version) do nothing
        )
        select c.ord, (c.tenant_key is not null) as known_tenant,
               (w.seq is not null) as inserted, c.latest_seq, c.differs,
               c.latest_quantity, c.latest_price_version::bigint as latest_price_version
        from classified c
        left join inserted w on w.window_start = c.window_start and w.tenant_key = c.tenant_key
                            and w.meter_key = c.meter_key"
    )
}

fn correct_sql() -> String {
    format!(
        "with {INPUT}, {CLASSIFY},
        reversed as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select window_start, tenant_key, latest_price_version, meter_key, latest_unit_key,
                   latest_window_key, latest_seq + 1, $9, -latest_quantity, -latest_amount
            from classified where differs
            returning {INSERTED_COLUMNS}
        ),
        replaced as (
            insert into ledger_entries ({ENTRY_COLUMNS})
            select window_start, tenant_key, price_version, meter_key, unit_key, window_key,
                   case when differs then latest_seq + 2 else coalesce(latest_seq + 1, 2) end,
                   $9, quantity, amount
            from classified
            where tenant_key is not null
              and (latest_seq is null or latest_seq % 2 = 1 or differs)
            order by window_start, tenant_key, meter_key
            returning {INSERTED_COLUMNS}
        ),
        inserted as (select * from reversed union all select * from replaced),
        reasons as (
            insert into ledger_entry_reasons (window_start, tenant_key, meter_key, seq, reason)
            select window_start, tenant_key, meter_key, seq, $10 from inserted
        ),
        {ROLLUP}
        select count(*) filter (where differs) as corrected,
               count(*) filter (where tenant_key is not null
                                  and (latest_seq is null or latest_seq % 2 = 1)) as inserted,
               count(*) filter (where latest_seq % 2 = 0 and not differs) as unchanged,
               min(tenant_id) filter (where tenant_key is null) as unknown_tenant
        from classified"
    )
}

/// The small keys of what a write names (meters, units, the source), made on first use, and
/// the month partitions its windows need, created if missing.
struct Keys {
    meters: HashMap<String, i16>,
    units: HashMap<(String, String, Decimal), i16>,
    windows: HashMap<i32, i16>,
    source: i16,
}

/// The first day of the month of `t` (UTC).
fn month_of(t: DateTime<Utc>) -> NaiveDate {
    t.date_naive()
        .with_day(1)
        .expect("every month has a first day")
}

/// Resolves the keys of `entries` and makes sure the partitions of their months exist, and
/// the partition of the month after the latest if that is not in the past, so a month's
/// partition is there before its first window. Run first in the transaction: creating a partition locks the table.
async fn prepare(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    source: &str,
) -> Result<Keys, Error> {
    let mut months: Vec<NaiveDate> = entries
        .iter()
        .map(|e| month_of(e.key.window.start()))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Only ahead of the present: a backfill of an old month must not touch the next one, which
    // may be archived.
    if let Some(next) = months
        .iter()
        .max()
        .and_then(|m| m.checked_add_months(Months::new(1)))
        .filter(|next| *next >= month_of(Utc::now()))
    {
        months.push(next);
    }
    months.sort();
    query("select budgetd_ensure_ledger_partition(m) from unnest($1::date[]) m")
        .bind(&months)
        .fetch_all(&mut *conn)
        .await?;

    let meters: Vec<String> = entries
        .iter()
        .map(|e| e.key.meter.as_str())
        .collect::<HashSet<_>>()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let rows = query("select name, budgetd_meter_key(name) as key from unnest($1::text[]) name")
        .bind(&meters)
        .fetch_all(&mut *conn)
        .await?;
    let mut meter_keys = HashMap::new();
    for row in rows {
        meter_keys.insert(
            row.try_get::<String, _>("name")?,
            row.try_get::<i16, _>("key")?,
        );
    }

    let units: Vec<(String, String, Decimal)> = entries
        .iter()
        .map(|e| {
            (
                e.unit.as_str(),
                e.pricing.price_unit.as_str(),
                e.pricing.units_per_price_unit,
            )
        })
        .collect::<HashSet<_>>()
        .into_iter()
        .map(|(u, p, n)| (u.to_owned(), p.to_owned(), n))
        .collect();
    let rows = query(
        "select u, p, n, budgetd_unit_key(u, p, n) as key \
         from unnest($1::text[], $2::text[], $3::numeric[]) as x(u, p, n)",
    )
    .bind(units.iter().map(|u| u.0.clone()).collect::<Vec<_>>())
    .bind(units.iter().map(|u| u.1.clone()).collect::<Vec<_>>())
    .bind(units.iter().map(|u| u.2).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut unit_keys = HashMap::new();
    for (unit, row) in units.into_iter().zip(rows) {
        unit_keys.insert(unit, row.try_get::<i16, _>("key")?);
    }

    let lengths: Vec<i32> = entries
        .iter()
        .map(|e| e.key.window.seconds())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let windows: Vec<(i32, i16)> =
        super::query_as("select s, budgetd_window_key(s) from unnest($1::int4[]) s")
            .bind(&lengths)
            .fetch_all(&mut *conn)
            .await?;

    let source: i16 = super::query_scalar("select budgetd_source_key($1)")
        .bind(source)
        .fetch_one(&mut *conn)
        .await?;
    Ok(Keys {
        meters: meter_keys,
        units: unit_keys,
        windows: windows.into_iter().collect(),
        source,
    })
}

/// Binds a batch as column arrays ($1..$8) and the source key ($9).
fn bind_batch<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    batch: &[&NewEntry],
    keys: &Keys,
) -> Result<sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>, Error> {
    let missing = |what: &str| Error::Database(sqlx::Error::Protocol(format!("no key for {what}")));
    let mut tenants = Vec::with_capacity(batch.len());
    let mut meters = Vec::with_capacity(batch.len());
    let mut starts = Vec::with_capacity(batch.len());
    let mut seconds = Vec::with_capacity(batch.len());
    let mut quantities = Vec::with_capacity(batch.len());
    let mut units = Vec::with_capacity(batch.len());
    let mut versions = Vec::with_capacity(batch.len());
    let mut amounts = Vec::with_capacity(batch.len());
    for e in batch {
        tenants.push(e.key.tenant.as_str().to_owned());
        meters.push(
            *keys
                .meters
                .get(e.key.meter.as_str())
                .ok_or_else(|| missing(e.key.meter.as_str()))?,
        );
        starts.push(e.key.window.start());
        let length = e.key.window.seconds();
        seconds.push(
            *keys
                .windows
                .get(&length)
                .ok_or_else(|| missing(&format!("{length} s windows")))?,
        );
        quantities.push(e.quantity);
        let unit = (
            e.unit.as_str().to_owned(),
            e.pricing.price_unit.as_str().to_owned(),
            e.pricing.units_per_price_unit,
        );
        units.push(*keys.units.get(&unit).ok_or_else(|| missing(&unit.0))?);
        versions.push(i32::try_from(e.pricing.version).map_err(|_| {
            Error::Invalid(crate::error::Invalid::new(
                "price_version",
                "price-book version ids fit in 32 bits",
            ))
        })?);
        amounts.push(e.amount());
    }
    Ok(query
        .bind(tenants)
        .bind(meters)
        .bind(starts)
        .bind(seconds)
        .bind(quantities)
        .bind(units)
        .bind(versions)
        .bind(amounts)
        .bind(keys.source))
}

/// Splits a batch so that no key (tenant, meter, window start) occurs twice in one statement:
/// later occurrences of a key are written after the earlier ones, and so compared against them.
fn rounds_without_duplicate_keys(entries: &[NewEntry]) -> Vec<Vec<&NewEntry>> {
    /// (tenant, meter, window start)
    type Key<'a> = (&'a str, &'a str, DateTime<Utc>);
    let mut rounds: Vec<(HashSet<Key<'_>>, Vec<&NewEntry>)> = Vec::new();
    for entry in entries {
        let k = (
            entry.key.tenant.as_str(),
            entry.key.meter.as_str(),
            entry.key.window.start(),
        );
        match rounds.iter_mut().find(|(keys, _)| !keys.contains(&k)) {
            Some((keys, batch)) => {
                keys.insert(k);
                batch.push(entry);
            }
            None => rounds.push(([k].into(), vec![entry])),
        }
    }
    rounds.into_iter().map(|(_, batch)| batch).collect()
}

fn unknown_tenant(id: &str) -> Error {
    Error::NotFound {
        what: "tenant",
        id: id.to_owned(),
    }
}

/// Writes a batch of first writes (see [`first_write_sql`]); false, with nothing written, if a
/// concurrent writer wrote one of its keys first.
async fn first_write(
    conn: &mut PgConnection,
    batch: &[&NewEntry],
    keys: &Keys,
    report: &mut WriteReport,
) -> Result<bool, Error> {
    let sql = first_write_sql();
    query("savepoint budgetd_first_write")
        .execute(&mut *conn)
        .await?;
    let mut inserted = 0;
    for chunk in batch.chunks(CHUNK) {
        let row = match bind_batch(query(&sql), chunk, keys)?
            .fetch_one(&mut *conn)
            .await
        {
            Ok(row) => row,
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("23505") => {
                query("rollback to savepoint budgetd_first_write")
                    .execute(&mut *conn)
                    .await?;
                return Ok(false);
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(id) = row.try_get::<Option<String>, _>("unknown_tenant")? {
            return Err(unknown_tenant(&id));
        }
        inserted += row.try_get::<i64, _>("inserted")? as usize;
    }
    query("release savepoint budgetd_first_write")
        .execute(&mut *conn)
        .await?;
    report.inserted += inserted;
    Ok(true)
}

/// Writes one duplicate-free batch in the caller's transaction.
async fn write_batch(
    conn: &mut PgConnection,
    batch: &[&NewEntry],
    keys: &Keys,
    report: &mut WriteReport,
) -> Result<(), Error> {
    let starts: Vec<DateTime<Utc>> = batch
        .iter()
        .map(|e| e.key.window.start())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    let written_before: bool = super::query_scalar(
        "select exists (select 1 from ledger_entries where window_start = any($1))",
    )
    .bind(&starts)
    .fetch_one(&mut *conn)
    .await?;
    if !written_before && first_write(conn, batch, keys, report).await? {
        return Ok(());
    }
    let sql = write_sql();
    let mut pending: Vec<&NewEntry> = batch.to_vec();
    for _ in 0..MAX_ROUNDS {
        if pending.is_empty() {
            return Ok(());
        }
        let mut raced = Vec::new();
        for chunk in pending.chunks(CHUNK) {
            let rows = bind_batch(query(&sql), chunk, keys)?
                .fetch_all(&mut *conn)
                .await?;
            for row in rows {
                let ord: i64 = row.try_get("ord")?;
                let entry = chunk[(ord - 1) as usize];
                if !row.try_get::<bool, _>("known_tenant")? {
                    return Err(unknown_tenant(entry.key.tenant.as_str()));
                }
                let latest_seq: Option<i16> = row.try_get("latest_seq")?;
                if row.try_get("inserted")? {
                    report.inserted += 1;
                } else if row.try_get::<Option<bool>, _>("differs")? == Some(true) {
                    report.conflicts.push(EntryConflict {
                        key: entry.key.clone(),
                        live_revision: i32::from(latest_seq.unwrap_or_default() / 2),
                        live_quantity: row.try_get("latest_quantity")?,
                        live_price_version: row.try_get("latest_price_version")?,
                        attempted_quantity: entry.quantity,
                        attempted_price_version: entry.pricing.version,
                    });
                } else if latest_seq.is_some_and(|seq| seq % 2 == 0) {
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

/// Writes entries in the caller's transaction (see `Store::write_entries`). Call it first in
/// the transaction: it may create a month's partition, which locks the table.
pub(crate) async fn write_entries_in(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    source: &str,
) -> Result<WriteReport, Error> {
    let mut report = WriteReport::default();
    if entries.is_empty() {
        return Ok(report);
    }
    let keys = prepare(conn, entries, source).await?;
    for batch in rounds_without_duplicate_keys(entries) {
        write_batch(conn, &batch, &keys, &mut report).await?;
    }
    Ok(report)
}

/// Corrects entries in the caller's transaction (see `Store::correct_entries`); like
/// [`write_entries_in`], first in the transaction.
pub(crate) async fn correct_entries_in(
    conn: &mut PgConnection,
    entries: &[NewEntry],
    reason: &str,
    source: &str,
) -> Result<CorrectionReport, Error> {
    let sql = correct_sql();
    let mut report = CorrectionReport::default();
    if entries.is_empty() {
        return Ok(report);
    }
    let keys = prepare(conn, entries, source).await?;
    for batch in rounds_without_duplicate_keys(entries) {
        for chunk in batch.chunks(CHUNK) {
            let row = bind_batch(query(&sql), chunk, &keys)?
                .bind(reason)
                .fetch_one(&mut *conn)
                .await?;
            if let Some(id) = row.try_get::<Option<String>, _>("unknown_tenant")? {
                return Err(unknown_tenant(&id));
            }
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
