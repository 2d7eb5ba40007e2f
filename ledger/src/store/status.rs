//! Budget status kept between reads: the enforcer's cycle reads only what changed.
//!
//! `budgetd_budget_status` reads every budget, every tenant's period and trailing rollups and
//! the gaps, however little changed since the last cycle. Between two cycles what changes is
//! nearly always the current day: the collector's windows move one per-tenant daily row per
//! tenant. [`StatusCache`] keeps the statuses of the last full read with each tenant's spent and
//! trailing amounts minus that day's row; a refresh then reads that day's rows, the watermark and
//! the gaps, and recomputes the forecast, completeness and state with the rules the function
//! uses ([`enforcement::forecast`], [`enforcement::budget_state`]). Everything else reloads in
//! full, from the function: another day's rows or a budget or tenant state changed (the change
//! log `ledger_status_changes`, read in commit order by snapshot), the day of the data or the
//! month moved on, a budget became effective, the parameters differ, there is no watermark yet.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, Row};

use super::enforcement::{status_from_row, STATUS_QUERY};
use super::{query, Store};
use crate::enforcement::{self, BudgetStatus, StatusParams};
use crate::error::Error;

/// A reader's copy of the budget status (see the module). Starts empty: the first refresh
/// loads in full.
#[derive(Debug, Default)]
pub struct StatusCache {
    kept: Option<Kept>,
}

/// How a refresh read the status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusRead {
    /// From `budgetd_budget_status`, for this reason.
    Full(ReloadReason),
    /// The day's rows, the watermark and the gaps, over the kept statuses.
    Incremental,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadReason {
    /// Nothing kept yet (or the last read failed).
    First,
    /// Other parameters than the kept status was read with.
    Parameters,
    /// An instant before the load's: budgets that were in force then may not be now.
    Earlier,
    /// No watermark: nothing collected yet, nothing to keep.
    NoData,
    /// The day of the last data or the month changed.
    NewDay,
    /// A budget kept back by its `effective_from` is in force now.
    BudgetInForce,
    /// Another day's rollup rows, a budget or a tenant's state changed.
    Changed,
    /// The change log was pruned past the last read.
    Pruned,
    /// Transaction ids are behind the last read's: the database's history was replaced (a
    /// restore, a point-in-time recovery, a failover that lost commits).
    Rewound,
    /// A kept amount went beyond `Decimal`.
    OutOfRange,
}

impl ReloadReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadReason::First => "first",
            ReloadReason::Parameters => "parameters",
            ReloadReason::Earlier => "earlier",
            ReloadReason::NoData => "no_data",
            ReloadReason::NewDay => "new_day",
            ReloadReason::BudgetInForce => "budget_in_force",
            ReloadReason::Changed => "changed",
            ReloadReason::Pruned => "pruned",
            ReloadReason::Rewound => "rewound",
            ReloadReason::OutOfRange => "out_of_range",
        }
    }
}

#[derive(Debug)]
struct Kept {
    params: StatusParams,
    /// The instant of the load: the budgets in force are those of this instant until
    /// `next_budget`.
    as_of: DateTime<Utc>,
    /// The snapshot of the last read (`pg_snapshot` as text).
    snapshot: String,
    /// The first day of `as_of`'s month at the load: the periods' bounds.
    month: NaiveDate,
    /// The day of the data's end (`until`) at the load: the one day a refresh reads again.
    day: NaiveDate,
    /// The earliest `effective_from` after the load's `as_of`.
    next_budget: Option<DateTime<Utc>>,
    /// The earliest period start: where the gaps are read from.
    earliest: NaiveDate,
    tenants: Vec<KeptStatus>,
    /// Tenant id → index into `tenants`.
    index: HashMap<String, usize>,
}

#[derive(Debug)]
struct KeptStatus {
    /// As loaded: a refresh takes its fixed fields (tenant, period, budget, trailing start).
    status: BudgetStatus,
    /// Spent and trailing without `day`'s row.
    spent: Decimal,
    trailing: Decimal,
    /// Whether `day` is in the period (then its row counts in both sums).
    counts_day: bool,
    /// `day`'s row in the budget's currency.
    day_amount: Decimal,
}

/// What the first statement of a refresh sees.
struct Head {
    snapshot: String,
    watermark: Option<DateTime<Utc>>,
    next_budget: Option<DateTime<Utc>>,
}

fn day_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
}

fn month_of(at: DateTime<Utc>) -> NaiveDate {
    at.date_naive()
        .with_day(1)
        .expect("every month has a first day")
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

/// What an incremental refresh read: the statuses, and what the kept copy takes from it.
struct Refreshed {
    statuses: Vec<BudgetStatus>,
    snapshot: String,
    /// Per kept tenant, `day`'s row now.
    day_amounts: Vec<Decimal>,
}

impl Store {
    /// The budget status of every tenant with a budget in force at `as_of`, as
    /// [`Store::budget_statuses`] reports it, read incrementally over `cache` (see the module).
    /// A failed refresh empties the cache: the next one loads in full.
    pub async fn refresh_statuses(
        &self,
        cache: &mut StatusCache,
        as_of: DateTime<Utc>,
        params: &StatusParams,
    ) -> Result<(Vec<BudgetStatus>, StatusRead), Error> {
        // As the function sees it: Postgres keeps microseconds.
        let as_of = enforcement::to_micros(as_of);
        let kept = cache.kept.take();
        let outcome = self
            .run("budget_status_refresh", || {
                self.refresh_attempt(kept.as_ref(), as_of, params)
            })
            .await?;
        let (statuses, read) = match outcome {
            Outcome::Incremental(refreshed) => {
                let mut kept = kept.expect("an incremental read has a kept copy");
                kept.snapshot = refreshed.snapshot;
                for (t, amount) in kept.tenants.iter_mut().zip(refreshed.day_amounts) {
                    t.day_amount = amount;
                }
                cache.kept = Some(kept);
                (refreshed.statuses, StatusRead::Incremental)
            }
            Outcome::Full(statuses, reason, loaded) => {
                cache.kept = loaded;
                (statuses, StatusRead::Full(reason))
            }
        };
        let label = match read {
            StatusRead::Full(reason) => reason.as_str(),
            StatusRead::Incremental => "incremental",
        };
        metrics::counter!("budgetd_budget_status_reads_total", "read" => label).increment(1);
        Ok((statuses, read))
    }

    async fn refresh_attempt(
        &self,
        kept: Option<&Kept>,
        as_of: DateTime<Utc>,
        params: &StatusParams,
    ) -> Result<Outcome, Error> {
        let mut tx = self.begin().await?;
        // One snapshot for every statement: the change log, the rows and the gaps agree. `begin`'s
        // `set local` takes no snapshot, so the isolation level can still be chosen.
        query("set transaction isolation level repeatable read, read only")
            .execute(&mut *tx)
            .await?;
        let reload = match kept {
            None => Err(ReloadReason::First),
            Some(kept) => incremental(&mut tx, kept, as_of, params).await?,
        };
        let outcome = match reload {
            Ok(refreshed) => Outcome::Incremental(refreshed),
            Err(reason) => {
                let (statuses, loaded) = load(&mut tx, as_of, params).await?;
                let reason = if loaded.is_none() {
                    ReloadReason::NoData
                } else {
                    reason
                };
                Outcome::Full(statuses, reason, loaded)
            }
        };
        tx.commit().await?;
        Ok(outcome)
    }
}

enum Outcome {
    Incremental(Refreshed),
    Full(Vec<BudgetStatus>, ReloadReason, Option<Kept>),
}

/// The snapshot, the watermark and the next budget to come into force, as of `as_of`.
async fn head(conn: &mut PgConnection, as_of: DateTime<Utc>) -> Result<Head, Error> {
    let row = query(
        "select pg_current_snapshot()::text as snapshot, \
                (select window_end from collector_watermark) as watermark, \
                (select min(effective_from) from budgets where effective_from > $1) as next_budget",
    )
    .bind(as_of)
    .fetch_one(&mut *conn)
    .await?;
    Ok(Head {
        snapshot: row.try_get("snapshot")?,
        watermark: row.try_get("watermark")?,
        next_budget: row.try_get("next_budget")?,
    })
}

/// `day`'s per-tenant daily rows: (tenant id, currency, amount).
async fn day_rows(
    conn: &mut PgConnection,
    day: NaiveDate,
) -> Result<Vec<(String, String, Decimal)>, Error> {
    let rows = query(
        "select tenant_id, currency::text as currency, amount \
         from ledger_rollup_tenant_daily where day = $1",
    )
    .bind(day)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get("tenant_id")?,
                r.try_get("currency")?,
                r.try_get("amount")?,
            ))
        })
        .collect()
}

/// The full read: the function's statuses and, when there is data, what to keep of them.
async fn load(
    conn: &mut PgConnection,
    as_of: DateTime<Utc>,
    params: &StatusParams,
) -> Result<(Vec<BudgetStatus>, Option<Kept>), Error> {
    let head = head(conn, as_of).await?;
    let statuses = query(STATUS_QUERY)
        .bind(as_of)
        .bind(params.trailing_days as i32)
        .bind(params.max_lag_seconds as i32)
        .bind(params.lookback_seconds.map(|s| s as i32))
        .bind(None::<&str>)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(status_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let Some(watermark) = head.watermark else {
        return Ok((statuses, None));
    };
    let day = day_of(as_of.min(watermark));
    let mut amounts: HashMap<(String, String), Decimal> = day_rows(conn, day)
        .await?
        .into_iter()
        .map(|(t, c, a)| ((t, c), a))
        .collect();
    let mut tenants = Vec::with_capacity(statuses.len());
    let mut index = HashMap::with_capacity(statuses.len());
    for status in &statuses {
        let key = (
            status.tenant.as_str().to_owned(),
            status.budget.currency.code().to_owned(),
        );
        let day_amount = amounts.remove(&key).unwrap_or_default();
        let counts_day = day >= status.period_start;
        let counted = if counts_day {
            day_amount
        } else {
            Decimal::ZERO
        };
        let (Some(spent), Some(trailing)) = (
            enforcement::exact_add(status.spent, -counted),
            enforcement::exact_add(status.trailing, -counted),
        ) else {
            // Beyond `Decimal`'s exact range: nothing is kept, the next read is full again.
            return Ok((statuses, None));
        };
        index.insert(key.0, tenants.len());
        tenants.push(KeptStatus {
            status: status.clone(),
            spent,
            trailing,
            counts_day,
            day_amount,
        });
    }
    let earliest = statuses
        .iter()
        .map(|s| s.period_start)
        .min()
        .unwrap_or_else(|| month_of(as_of));
    let kept = Kept {
        params: *params,
        as_of,
        snapshot: head.snapshot,
        month: month_of(as_of),
        day,
        next_budget: head.next_budget,
        earliest,
        tenants,
        index,
    };
    Ok((statuses, Some(kept)))
}

/// The refresh over `kept`, or why it must reload in full.
async fn incremental(
    conn: &mut PgConnection,
    kept: &Kept,
    as_of: DateTime<Utc>,
    params: &StatusParams,
) -> Result<Result<Refreshed, ReloadReason>, Error> {
    if *params != kept.params {
        return Ok(Err(ReloadReason::Parameters));
    }
    if as_of < kept.as_of {
        return Ok(Err(ReloadReason::Earlier));
    }
    let row = query(
        "select pg_current_snapshot()::text as snapshot, \
                (select window_end from collector_watermark) as watermark, \
                (select through from ledger_status_changes_pruned) \
                    >= pg_snapshot_xmin($1::pg_snapshot) as pruned, \
                pg_snapshot_xmax(pg_current_snapshot()) < pg_snapshot_xmax($1::pg_snapshot) \
                    as rewound, \
                count(c.xid) as changes, \
                coalesce(bool_or(c.first_day is distinct from $2 or c.last_day is distinct from $2), \
                         false) as elsewhere \
         from ledger_status_changes c \
         where c.xid >= pg_snapshot_xmin($1::pg_snapshot) \
           and not pg_visible_in_snapshot(c.xid, $1::pg_snapshot)",
    )
    .bind(&kept.snapshot)
    .bind(kept.day)
    .fetch_one(&mut *conn)
    .await?;
    let snapshot: String = row.try_get("snapshot")?;
    let watermark: Option<DateTime<Utc>> = row.try_get("watermark")?;
    let pruned: Option<bool> = row.try_get("pruned")?;
    let rewound: bool = row.try_get("rewound")?;
    let changes: i64 = row.try_get("changes")?;
    let elsewhere: bool = row.try_get("elsewhere")?;
    let Some(watermark) = watermark else {
        return Ok(Err(ReloadReason::NoData));
    };
    let until = as_of.min(watermark);
    if day_of(until) != kept.day || month_of(as_of) != kept.month {
        return Ok(Err(ReloadReason::NewDay));
    }
    if kept.next_budget.is_some_and(|at| at <= as_of) {
        return Ok(Err(ReloadReason::BudgetInForce));
    }
    if pruned != Some(false) {
        return Ok(Err(ReloadReason::Pruned));
    }
    if rewound {
        return Ok(Err(ReloadReason::Rewound));
    }
    if elsewhere {
        return Ok(Err(ReloadReason::Changed));
    }

    let mut day_amounts: Vec<Decimal> = kept.tenants.iter().map(|t| t.day_amount).collect();
    if changes > 0 {
        day_amounts.iter_mut().for_each(|a| *a = Decimal::ZERO);
        for (tenant, currency, amount) in day_rows(conn, kept.day).await? {
            if let Some(&i) = kept.index.get(&tenant) {
                if kept.tenants[i].status.budget.currency.code() == currency {
                    day_amounts[i] = amount;
                }
            }
        }
    }
    let gaps = query("select tenant_id, last from budgetd_status_gaps($1, $2, $3)")
        .bind(kept.earliest)
        .bind(until)
        .bind(params.lookback_seconds.map(|s| s as i32))
        .fetch_all(&mut *conn)
        .await?;
    let mut whole_gap: Option<DateTime<Utc>> = None;
    let mut tenant_gaps: HashMap<String, DateTime<Utc>> = HashMap::new();
    for gap in &gaps {
        let tenant: Option<String> = gap.try_get("tenant_id")?;
        let last: DateTime<Utc> = gap.try_get("last")?;
        match tenant {
            None => whole_gap = Some(last),
            Some(t) => {
                tenant_gaps.insert(t, last);
            }
        }
    }

    let fresh = watermark >= as_of - chrono::Duration::seconds(params.max_lag_seconds.into());
    let mut statuses = Vec::with_capacity(kept.tenants.len());
    for (t, &day_amount) in kept.tenants.iter().zip(&day_amounts) {
        let counted = if t.counts_day {
            day_amount
        } else {
            Decimal::ZERO
        };
        let (Some(spent), Some(trailing)) = (
            enforcement::exact_add(t.spent, counted),
            enforcement::exact_add(t.trailing, counted),
        ) else {
            return Ok(Err(ReloadReason::OutOfRange));
        };
        let s = &t.status;
        let Some(forecast) = enforcement::forecast(
            spent,
            trailing,
            until,
            s.trailing_start,
            midnight(s.period_end),
        ) else {
            return Ok(Err(ReloadReason::OutOfRange));
        };
        let period_start = midnight(s.period_start);
        let complete = fresh
            && whole_gap.is_none_or(|g| g < period_start)
            && tenant_gaps
                .get(s.tenant.as_str())
                .is_none_or(|g| *g < period_start);
        statuses.push(BudgetStatus {
            spent,
            trailing,
            data_until: Some(until),
            forecast,
            complete,
            state: enforcement::budget_state(spent, forecast, s.budget.amount, &s.thresholds),
            ..s.clone()
        });
    }
    Ok(Ok(Refreshed {
        statuses,
        snapshot,
        day_amounts,
    }))
}
