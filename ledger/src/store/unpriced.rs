//! Usage the price book could not price, per key: recorded with the rest of its window,
//! priced later from the record, and listed for operators.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::entries::{correct_entries_in, write_entries_in};
use super::{query, query_scalar, Store};
use crate::audit::now_micros;
use crate::entry::{EntryKey, NewEntry, UnitName, Window};
use crate::error::Error;
use crate::price_book::MeterName;
use crate::tenant::TenantId;
use crate::usage::{CollectedWindow, PricingFailure, RepriceReport, UnpricedUsage};

const COLUMNS: &str = "tenant_id, meter, window_start, window_end, quantity, unit, price_unit, \
     units_per_price_unit, failure, price_version, message, correction_reason, detected_at, \
     resolved_at";

/// A recorded key, with when it was found and (once priced or gone) resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpricedRecord {
    pub usage: UnpricedUsage,
    pub message: String,
    pub detected_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// Which recorded keys to list.
#[derive(Debug, Clone, Default)]
pub struct UnpricedFilter {
    pub tenant: Option<TenantId>,
    /// Only keys not priced yet.
    pub open_only: bool,
    pub limit: i64,
}

fn record_from_row(row: &PgRow) -> Result<UnpricedRecord, Error> {
    let corrupt = |what: String| {
        Error::Database(sqlx::Error::Decode(
            format!("unpriced_usage row: {what}").into(),
        ))
    };
    let invalid = |e: crate::error::Invalid| corrupt(e.to_string());
    let failure: String = row.try_get("failure")?;
    let version: Option<i64> = row.try_get("price_version")?;
    let message: String = row.try_get("message")?;
    let window =
        Window::new(row.try_get("window_start")?, row.try_get("window_end")?).map_err(invalid)?;
    Ok(UnpricedRecord {
        usage: UnpricedUsage {
            key: EntryKey {
                tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(invalid)?,
                meter: MeterName::parse("meter", row.try_get("meter")?).map_err(invalid)?,
                window,
            },
            quantity: row.try_get("quantity")?,
            unit: UnitName::parse("unit", row.try_get("unit")?).map_err(invalid)?,
            price_unit: UnitName::parse("price_unit", row.try_get("price_unit")?)
                .map_err(invalid)?,
            units_per_price_unit: row.try_get("units_per_price_unit")?,
            failure: PricingFailure::from_record(&failure, version, &message)
                .ok_or_else(|| corrupt(format!("failure {failure:?} of version {version:?}")))?,
            correction_reason: row.try_get("correction_reason")?,
        },
        message,
        detected_at: row.try_get("detected_at")?,
        resolved_at: row.try_get("resolved_at")?,
    })
}

/// Column arrays of keys ($1..$4).
fn bind_keys<'q>(
    q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    keys: &[&EntryKey],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    q.bind(
        keys.iter()
            .map(|k| k.tenant.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(
        keys.iter()
            .map(|k| k.meter.as_str().to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(keys.iter().map(|k| k.window.start()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.window.end()).collect::<Vec<_>>())
}

/// Records `usage`, or records it again: a key recorded before is open again, with the new
/// measurement and failure.
async fn upsert(conn: &mut PgConnection, usage: &[UnpricedUsage]) -> Result<(), Error> {
    if usage.is_empty() {
        return Ok(());
    }
    let keys: Vec<&EntryKey> = usage.iter().map(|u| &u.key).collect();
    let meters: Vec<MeterName> = usage.iter().map(|u| u.key.meter.clone()).collect();
    let text = |f: &dyn Fn(&UnpricedUsage) -> String| usage.iter().map(f).collect::<Vec<_>>();
    bind_keys(
        query(
            "insert into unpriced_usage (tenant_id, meter, window_start, window_end, quantity, unit, \
                 price_unit, units_per_price_unit, failure, price_version, message, \
                 correction_reason, detected_at, resolved_at) \
             select t, m, ws, we, q, u, pu, upu, f, v, msg, cr, $13, null \
             from unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[], \
                          $5::numeric[], $6::text[], $7::text[], $8::numeric[], $9::text[], \
                          $10::bigint[], $11::text[], $12::text[]) \
                 as x(t, m, ws, we, q, u, pu, upu, f, v, msg, cr) \
             on conflict (tenant_id, meter, window_start, window_end) do update \
             set quantity = excluded.quantity, unit = excluded.unit, \
                 price_unit = excluded.price_unit, \
                 units_per_price_unit = excluded.units_per_price_unit, \
                 failure = excluded.failure, price_version = excluded.price_version, \
                 message = excluded.message, correction_reason = excluded.correction_reason, \
                 detected_at = excluded.detected_at, resolved_at = null",
        ),
        &keys,
    )
    .bind(usage.iter().map(|u| u.quantity).collect::<Vec<Decimal>>())
    .bind(text(&|u| u.unit.as_str().to_owned()))
    .bind(text(&|u| u.price_unit.as_str().to_owned()))
    .bind(
        usage
            .iter()
            .map(|u| u.units_per_price_unit)
            .collect::<Vec<Decimal>>(),
    )
    .bind(text(&|u| u.failure.kind().to_owned()))
    .bind(
        usage
            .iter()
            .map(|u| u.failure.version())
            .collect::<Vec<_>>(),
    )
    .bind(
        usage
            .iter()
            .zip(&meters)
            .map(|(u, m)| u.failure.message(m))
            .collect::<Vec<_>>(),
    )
    .bind(
        usage
            .iter()
            .map(|u| u.correction_reason.clone())
            .collect::<Vec<_>>(),
    )
    .bind(now_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// In the collector's commit of window `w`: what was open in it is resolved (its keys are
/// priced now, or gone), then the window's unpriced usage is recorded.
pub(crate) async fn record_window(
    conn: &mut PgConnection,
    w: &CollectedWindow,
) -> Result<(), Error> {
    query(
        "update unpriced_usage set resolved_at = $3 \
         where resolved_at is null and window_start = $1 and window_end = $2",
    )
    .bind(w.window.start())
    .bind(w.window.end())
    .bind(now_micros())
    .execute(&mut *conn)
    .await?;
    upsert(conn, &w.unpriced).await
}

/// Sets `resolved_at` of the open records of `keys`.
async fn resolve(conn: &mut PgConnection, keys: &[&EntryKey]) -> Result<(), Error> {
    if keys.is_empty() {
        return Ok(());
    }
    bind_keys(
        query(
            "update unpriced_usage u set resolved_at = $5 \
             from unnest($1::text[], $2::text[], $3::timestamptz[], $4::timestamptz[]) \
                 as k(t, m, ws, we) \
             where u.resolved_at is null and u.tenant_id = k.t and u.meter = k.m \
               and u.window_start = k.ws and u.window_end = k.we",
        ),
        keys,
    )
    .bind(now_micros())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// Open records worth pricing again: those whose window now has another price-book version
    /// in force than the one that failed (withdrawn, replaced, or a version added for it). A
    /// record whose version is still in force would fail the same way, so it is not returned
    /// until the price book changes. Oldest windows first, at most `limit`.
    pub async fn unpriced_to_retry(&self, limit: i64) -> Result<Vec<UnpricedUsage>, Error> {
        self.run("unpriced_to_retry", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {COLUMNS} from unpriced_usage u \
                 where u.resolved_at is null \
                   and u.price_version is distinct from ( \
                       select v.id from price_book_versions v where v.valid_from <= u.window_start \
                       order by v.valid_from desc limit 1) \
                 order by u.window_start, u.tenant_id, u.meter limit $1"
            ))
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|r| record_from_row(r).map(|r| r.usage))
                .collect()
        })
        .await
    }

    /// Commits the outcome of pricing recorded usage again, in one transaction: the entries of
    /// the keys that could be priced (a correction of the live entry for usage a recollection
    /// measured, a first entry otherwise) with their records resolved, and the new failure of
    /// those that still cannot be.
    pub async fn commit_repriced(
        &self,
        priced: &[(NewEntry, Option<String>)],
        failing: &[UnpricedUsage],
        source: &str,
    ) -> Result<RepriceReport, Error> {
        let mut corrections: BTreeMap<&str, Vec<NewEntry>> = BTreeMap::new();
        let mut first: Vec<NewEntry> = Vec::new();
        for (entry, reason) in priced {
            match reason {
                Some(reason) => corrections
                    .entry(reason.as_str())
                    .or_default()
                    .push(entry.clone()),
                None => first.push(entry.clone()),
            }
        }
        let statements = (priced.len().div_ceil(10_000) + corrections.len() + 3) as u32;
        let (report, written) = self
            .run_within("commit_repriced", statements, || async {
                let mut tx = self.begin().await?;
                let written = write_entries_in(&mut tx, &first, source).await?;
                for c in &written.conflicts {
                    tracing::warn!(
                        tenant = %c.key.tenant, meter = %c.key.meter,
                        window_start = %c.key.window.start(),
                        live = %c.live_quantity, attempted = %c.attempted_quantity,
                        "ledger conflict: a key priced after a pricing error has a differing entry"
                    );
                }
                for (reason, entries) in &corrections {
                    correct_entries_in(&mut tx, entries, reason, source).await?;
                }
                let keys: Vec<&EntryKey> = priced.iter().map(|(e, _)| &e.key).collect();
                resolve(&mut tx, &keys).await?;
                upsert(&mut tx, failing).await?;
                tx.commit().await?;
                Ok((
                    RepriceReport {
                        priced: priced.len(),
                        still_unpriced: failing.len(),
                    },
                    written,
                ))
            })
            .await?;
        super::entries::count_written(source, &written);
        Ok(report)
    }

    /// Recorded unpriced usage, newest windows first.
    pub async fn list_unpriced(
        &self,
        filter: &UnpricedFilter,
    ) -> Result<Vec<UnpricedRecord>, Error> {
        self.run("list_unpriced", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {COLUMNS} from unpriced_usage \
                 where ($1::text is null or tenant_id = $1) \
                   and (not $2 or resolved_at is null) \
                 order by window_start desc, tenant_id, meter limit $3"
            ))
            .bind(filter.tenant.as_ref().map(TenantId::as_str))
            .bind(filter.open_only)
            .bind(filter.limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    /// How many keys wait to be priced.
    pub async fn open_unpriced_count(&self) -> Result<i64, Error> {
        self.run("open_unpriced_count", || async {
            let mut tx = self.begin().await?;
            let n: i64 =
                query_scalar("select count(*) from unpriced_usage where resolved_at is null")
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(n)
        })
        .await
    }
}
