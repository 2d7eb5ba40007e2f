//! `budgetd-dev bench enforcer`: the ledger history the collector and earlier enforcement
//! cycles would have left behind, loaded straight into the tables (the benchmark measures the
//! read path; the write path has its own), and the plain `SELECT`s the status is compared with.
//!
//! The data is deterministic: random-looking values come from `hashint8extended` of a key and
//! a seed, so every run loads the same rows.

use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

use ledger::enforcement::StatusParams;
use ledger::Store;

use super::BenchConnection;

/// A meter of the history, with its share of a tenant's daily spend.
#[derive(Debug, Clone)]
pub struct HistoryMeter {
    pub meter: String,
    pub unit: String,
    pub price_unit: String,
    /// Per price unit.
    pub rate: Decimal,
    pub units_per_price_unit: Decimal,
    /// Share of a tenant's daily spend.
    pub weight: f64,
}

/// What [`load_history`] writes, for the numbered tenants `t00001`.. that exist already.
#[derive(Debug, Clone)]
pub struct History<'a> {
    pub tenants: usize,
    pub currency: &'a str,
    pub meters: &'a [HistoryMeter],
    /// Every UTC day with collected data, and how many windows of it were collected.
    pub days: &'a [(NaiveDate, i32)],
    pub window_seconds: i64,
    /// The start of the history (the month before the period).
    pub history_start: DateTime<Utc>,
    /// The current budget period (a calendar month).
    pub period_start: NaiveDate,
    /// The collector's watermark: the data ends here.
    pub data_until: DateTime<Utc>,
    /// The benchmark's now (exemptions run out around it).
    pub now: DateTime<Utc>,
    /// A window of the history that was incomplete as a whole.
    pub incomplete_window: DateTime<Utc>,
    /// Every this many-th window of the period names a few incomplete tenants (and so does the
    /// one that ended 15 minutes before the watermark) ...
    pub incomplete_every: i64,
    /// ... this many.
    pub incomplete_tenants_per_window: i64,
    /// How much of the period has passed by the data's end, for sizing the budgets.
    pub elapsed_fraction: f64,
}

/// Row counts of what [`load_history`] wrote.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub suspended: i64,
    pub daily_rows: i64,
    pub monthly_rows: i64,
    pub windows: i64,
    pub windows_naming_tenants: i64,
    pub budgets: i64,
    pub exemptions: i64,
    pub exemptions_in_force: i64,
}

/// Loads the history of `h` for tenants that [`super::insert_numbered_tenants`] created:
/// daily, monthly and per-tenant daily rollups, collected windows, the watermark, budgets and
/// exemptions.
pub async fn load_history(conn: &mut BenchConnection, h: &History<'_>) -> anyhow::Result<Loaded> {
    let n = h.tenants as i64;
    let width = super::id_width(h.tenants);
    let windows_per_day = 86_400 / h.window_seconds;
    // A uniform value in [0, 1) from (key, seed), so the data is the same on every run.
    conn.simple(
        "create function pg_temp.bench_u(key bigint, seed bigint) returns float8 \
         language sql immutable as \
         $$ select ((hashint8extended(key, seed) >> 11) & 9007199254740991)::float8 \
                   / 9007199254740992 $$",
    )
    .await?;

    // Daily rollups as the collector leaves them: a tenant's daily spend is log-uniform in
    // [0.1, 100] per day, split over the meters by weight, ±20% from day to day; the last day
    // is partial. Day-major order, as the collector creates the rows day by day.
    let (day_list, windows): (Vec<NaiveDate>, Vec<i32>) = h.days.iter().copied().unzip();
    sqlx::query(
        "with m as materialized ( \
             select x.*, budgetd_meter_key(x.meter) as meter_key, \
                    budgetd_unit_key(x.unit, x.price_unit, x.per_unit) as unit_key \
             from unnest($5::text[], $6::text[], $7::numeric[], $8::numeric[], $9::float8[], \
                         $12::text[]) \
                  with ordinality as x(meter, unit, rate, per_unit, weight, price_unit, j)) \
         insert into ledger_rollup_days (tenant_key, day, meter_key, unit_key, currency, \
                                         quantity, amount, entries) \
         select k.tenant_key, d.day, m.meter_key, m.unit_key, $10, \
                round(a.amount / m.rate * m.per_unit, 3), a.amount, d.windows \
         from (select g, 't' || lpad(g::text, $2, '0') as id, \
                      power(10, 3 * pg_temp.bench_u(g, 1) - 1) as per_day \
               from generate_series(1, $1) as g) t \
         join tenants k on k.id = t.id \
         cross join unnest($3::date[], $4::int[]) with ordinality as d(day, windows, i) \
         cross join m \
         cross join lateral ( \
             select round((t.per_day * m.weight \
                           * (0.8 + 0.4 * pg_temp.bench_u(t.g * 4096 + d.i * 8 + m.j, 2)) \
                           * d.windows / $11)::numeric, 9) as amount) a \
         order by d.day, t.id, m.meter",
    )
    .bind(n)
    .bind(width)
    .bind(&day_list)
    .bind(&windows)
    .bind(
        h.meters
            .iter()
            .map(|m| m.meter.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(h.meters.iter().map(|m| m.unit.as_str()).collect::<Vec<_>>())
    .bind(h.meters.iter().map(|m| m.rate).collect::<Vec<_>>())
    .bind(
        h.meters
            .iter()
            .map(|m| m.units_per_price_unit)
            .collect::<Vec<_>>(),
    )
    .bind(h.meters.iter().map(|m| m.weight).collect::<Vec<_>>())
    .bind(h.currency)
    .bind(windows_per_day as f64)
    .bind(
        h.meters
            .iter()
            .map(|m| m.price_unit.as_str())
            .collect::<Vec<_>>(),
    )
    .execute(&mut conn.0)
    .await
    .context("inserting daily rollups")?;

    conn.simple(
        "insert into ledger_rollup_monthly (tenant_id, month, currency, amount, entries) \
         select t.id, date_trunc('month', d.day)::date, d.currency, sum(d.amount), \
                sum(d.entries) \
         from ledger_rollup_days d join tenants t using (tenant_key) \
         group by 1, 2, 3 order by 2, 1",
    )
    .await
    .context("inserting monthly rollups")?;
    conn.simple(
        "insert into ledger_rollup_tenant_daily (day, tenant_id, currency, amount, entries) \
         select d.day, t.id, d.currency, sum(d.amount), sum(d.entries) \
         from ledger_rollup_days d join tenants t using (tenant_key) \
         group by 1, 2, 3 order by 1, 2",
    )
    .await
    .context("inserting per-tenant daily rollups")?;

    // Every window since the history's start; one window of the previous month was
    // incomplete as a whole, and every `incomplete_every`-th window of the period, and the one
    // that ended 15 minutes before the watermark, name a few tenants whose inputs were missing
    // (within the lookback, the enforcer leaves those tenants alone).
    let period_start = midnight(h.period_start);
    sqlx::query(
        "insert into collected_windows (window_start, window_end, complete, incomplete_tenants, \
                                        problems, entries, collected_at) \
         select w, w + make_interval(secs => $11), w <> $3, \
                case when w >= $4 and (k % $7 = 13 or w = $10) then \
                     array(select 't' || lpad((1 + (k * 7919 + s * 104729) % $5)::text, $6, '0') \
                           from generate_series(1, $8) as s) \
                     else '{}' end, \
                case when w = $3 then '{\"bench: Prometheus answered with warnings\"}'::text[] \
                     when w >= $4 and (k % $7 = 13 or w = $10) \
                          then '{\"bench: scrape gaps\"}'::text[] \
                     else '{}' end, \
                $5 * $9, w + make_interval(secs => $11 + 30) \
         from generate_series($1, $2 - make_interval(secs => $11), make_interval(secs => $11)) \
              with ordinality as x(w, k)",
    )
    .bind(h.history_start)
    .bind(h.data_until)
    .bind(h.incomplete_window)
    .bind(period_start)
    .bind(n)
    .bind(width)
    .bind(h.incomplete_every)
    .bind(h.incomplete_tenants_per_window)
    .bind(h.meters.len() as i64)
    .bind(h.data_until - chrono::Duration::minutes(15))
    .bind(h.window_seconds as f64)
    .execute(&mut conn.0)
    .await
    .context("inserting collected windows")?;
    sqlx::query(
        "insert into collector_watermark (singleton, window_end, updated_at) values (true, $1, $1)",
    )
    .bind(h.data_until)
    .execute(&mut conn.0)
    .await?;

    // Budgets sized against the spend so far, for a realistic mix: 72% fine (forecast 10-85%
    // of the budget), 10% forecast over (105-135%, actual under 98%), 8% actual 80-100%, 6%
    // actual 100-120%, 4% actual 120-160%. One tenant in five also has an older, superseded
    // budget.
    sqlx::query(
        "insert into budgets (tenant_id, amount, currency, period, thresholds, effective_from, \
                              created_at, created_by) \
         select s.tenant_id, round(s.amount / r.ratio::numeric, 2), $3, 'monthly', '{80,100}', \
                $4, $4, 'bench' \
         from (select g, 't' || lpad(g::text, $2, '0') as tenant_id, \
                      pg_temp.bench_u(g, 7) as class, pg_temp.bench_u(g, 8) as v \
               from generate_series(1, $1) as g) t \
         join ledger_rollup_monthly s on s.tenant_id = t.tenant_id and s.month = $5 \
         cross join lateral (select case \
             when t.class < 0.72 then $6 * (0.10 + 0.75 * t.v) \
             when t.class < 0.82 then $6 * (1.05 + t.v * greatest(least(1.35, 0.98 / $6) - 1.05, 0)) \
             when t.class < 0.90 then 0.80 + 0.19 * t.v \
             when t.class < 0.96 then 1.00 + 0.19 * t.v \
             else 1.20 + 0.40 * t.v end as ratio) r; \
         ",
    )
    .bind(n)
    .bind(width)
    .bind(h.currency)
    .bind(h.history_start - chrono::Duration::days(40))
    .bind(h.period_start)
    .bind(h.elapsed_fraction)
    .execute(&mut conn.0)
    .await
    .context("inserting budgets")?;
    sqlx::query(
        "insert into budgets (tenant_id, amount, currency, period, thresholds, effective_from, \
                              created_at, created_by) \
         select tenant_id, round(amount * 0.7, 2), currency, period, thresholds, $1, $1, 'bench' \
         from budgets where right(tenant_id, 1) in ('0', '5')",
    )
    .bind(h.history_start - chrono::Duration::days(200))
    .execute(&mut conn.0)
    .await
    .context("inserting superseded budgets")?;

    // One tenant in 100 has an exemption: half of them in force, half expired.
    sqlx::query(
        "insert into enforcement_exemptions (tenant_id, until, reason, created_by, created_at) \
         select 't' || lpad(g::text, $2, '0'), \
                case when g % 200 = 37 then $3 + interval '7 days' else $3 - interval '3 days' end, \
                'bench: migration weekend', 'bench', $3 - interval '10 days' \
         from generate_series(1, $1) as g where g % 100 = 37",
    )
    .bind(n)
    .bind(width)
    .bind(h.now)
    .execute(&mut conn.0)
    .await
    .context("inserting exemptions")?;

    let counts: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from tenants where state = 'suspended'), \
                (select count(*) from ledger_rollup_days), \
                (select count(*) from ledger_rollup_monthly), \
                (select count(*) from collected_windows), \
                (select count(*) from collected_windows \
                 where window_start >= $1 and cardinality(incomplete_tenants) > 0), \
                (select count(*) from budgets), \
                (select count(*) from enforcement_exemptions), \
                (select count(*) from enforcement_exemptions where until > $2)",
    )
    .bind(period_start)
    .bind(h.now)
    .fetch_one(&mut conn.0)
    .await?;
    Ok(Loaded {
        suspended: counts.0,
        daily_rows: counts.1,
        monthly_rows: counts.2,
        windows: counts.3,
        windows_naming_tenants: counts.4,
        budgets: counts.5,
        exemptions: counts.6,
        exemptions_in_force: counts.7,
    })
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

/// Enforcement actions as earlier cycles recorded them, one per index of the columns.
#[derive(Debug, Default, Clone)]
pub struct ActionRows {
    pub tenant: Vec<String>,
    pub step_key: Vec<String>,
    /// The step as JSON.
    pub step: Vec<String>,
    pub kind: Vec<&'static str>,
    pub state: Vec<&'static str>,
    pub reason: Vec<String>,
    pub spent: Vec<Decimal>,
    pub forecast: Vec<Decimal>,
    pub budget: Vec<Decimal>,
}

/// Inserts `rows` into `enforcement_actions` for the period starting `period_start`, opened
/// (and, if applied, applied) at `opened_at` under fencing token 1; the rows inserted.
pub async fn insert_actions(
    conn: &mut BenchConnection,
    period_start: NaiveDate,
    opened_at: DateTime<Utc>,
    currency: &str,
    rows: &ActionRows,
) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "insert into enforcement_actions (tenant_id, period_start, step_key, step, kind, state, \
             reason, spent_amount, forecast_amount, budget_amount, currency, not_before, \
             created_at, updated_at, applied_at, fencing_token) \
         select a.tenant_id, $1, a.step_key, a.step::jsonb, a.kind, a.state, a.reason, a.spent, \
                a.forecast, a.budget, $3, $2, $2, $2, \
                case when a.state = 'applied' then $2 end, 1 \
         from unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], \
                     $10::numeric[], $11::numeric[], $12::numeric[]) \
              as a(tenant_id, step_key, step, kind, state, reason, spent, forecast, budget) \
         order by a.tenant_id",
    )
    .bind(period_start)
    .bind(opened_at)
    .bind(currency)
    .bind(&rows.tenant)
    .bind(&rows.step_key)
    .bind(&rows.step)
    .bind(&rows.kind)
    .bind(&rows.state)
    .bind(&rows.reason)
    .bind(&rows.spent)
    .bind(&rows.forecast)
    .bind(&rows.budget)
    .execute(&mut conn.0)
    .await
    .context("inserting open actions")?
    .rows_affected())
}

/// Copies every action as the same rung of the period starting `previous_period`, opened at
/// `opened_at` and closed at `closed_at` when the period turned (restored if applied,
/// cancelled if not); the rows inserted.
pub async fn insert_closed_copies(
    conn: &mut BenchConnection,
    previous_period: NaiveDate,
    opened_at: DateTime<Utc>,
    closed_at: DateTime<Utc>,
) -> anyhow::Result<u64> {
    Ok(sqlx::query(
        "insert into enforcement_actions (tenant_id, period_start, step_key, step, kind, state, \
             reason, spent_amount, forecast_amount, budget_amount, currency, not_before, \
             created_at, updated_at, applied_at, closed_at, close_reason, fencing_token) \
         select tenant_id, $1, step_key, step, kind, \
                case when state = 'applied' then 'restored' else 'cancelled' end, reason, \
                spent_amount, forecast_amount, budget_amount, currency, $2, $2, $3, \
                case when state = 'applied' then $2 end, $3, 'a new budget period began', 1 \
         from enforcement_actions order by id",
    )
    .bind(previous_period)
    .bind(opened_at)
    .bind(closed_at)
    .execute(&mut conn.0)
    .await
    .context("inserting last month's actions")?
    .rows_affected())
}

/// The plain baseline: the spent sums of the period `[from, to)` per tenant, from the monthly
/// rollups, over the store's pool as an unnamed statement.
const SPENT_SUMS: &str = "select tenant_id, sum(amount) from ledger_rollup_monthly \
     where currency = $1 and month >= $2 and month < $3 group by tenant_id";

pub async fn spent_sums(
    store: &Store,
    currency: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Vec<(String, Decimal)>> {
    Ok(sqlx::query_as(SPENT_SUMS)
        .bind(currency)
        .bind(from)
        .bind(to)
        .persistent(false)
        .fetch_all(store.pool())
        .await?)
}

/// A plain SELECT of the inputs the status needs (the budget in force, the period's spent sum
/// and the trailing window's sum per tenant), without the status' logic (periods, forecast,
/// completeness, state).
const STATUS_INPUTS: &str = "select b.tenant_id, b.amount, m.amount, d.amount \
     from (select distinct on (tenant_id) tenant_id, amount from budgets \
           where effective_from <= $1 order by tenant_id, effective_from desc) b \
     join (select tenant_id, sum(amount) as amount from ledger_rollup_monthly \
           where currency = $2 and month >= $3 and month < $4 group by tenant_id) m using (tenant_id) \
     left join (select tenant_id, sum(amount) as amount from ledger_rollup_tenant_daily \
           where currency = $2 and day >= $5 group by tenant_id) d using (tenant_id)";

/// A row of [`status_inputs`]: tenant, budget, spent in the period, spent since the trailing
/// window's start.
pub type InputRow = (String, Decimal, Decimal, Option<Decimal>);

pub async fn status_inputs(
    store: &Store,
    now: DateTime<Utc>,
    currency: &str,
    (period_start, period_end): (NaiveDate, NaiveDate),
    trailing_start: NaiveDate,
) -> anyhow::Result<Vec<InputRow>> {
    Ok(sqlx::query_as(STATUS_INPUTS)
        .bind(now)
        .bind(currency)
        .bind(period_start)
        .bind(period_end)
        .bind(trailing_start)
        .persistent(false)
        .fetch_all(store.pool())
        .await?)
}

impl BenchConnection {
    /// What a collected window does to the rollups the status reads: every tenant with a budget
    /// gets `amount` more on its daily row of `day` and its monthly row of `day`'s month (both
    /// the same, as the write statement moves them; made if missing, as at midnight when the
    /// day has no data yet). The rows the window adds to per meter are not read by the status
    /// and are left alone. Returns the daily rows written.
    pub async fn land_window(
        &mut self,
        day: NaiveDate,
        currency: &str,
        amount: Decimal,
    ) -> anyhow::Result<u64> {
        let mut tx = sqlx::Connection::begin(&mut self.0).await?;
        let daily = sqlx::query(
            "insert into ledger_rollup_tenant_daily as r (day, tenant_id, currency, amount, entries) \
             select $1, b.tenant_id, $2, $3, 5 from (select distinct tenant_id from budgets) b \
             order by 2 \
             on conflict (day, tenant_id, currency) do update \
                 set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries",
        )
        .bind(day)
        .bind(currency)
        .bind(amount)
        .persistent(false)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query(
            "insert into ledger_rollup_monthly as r (month, tenant_id, currency, amount, entries) \
             select date_trunc('month', $1::date)::date, b.tenant_id, $2, $3, 5 \
             from (select distinct tenant_id from budgets) b order by 2 \
             on conflict (month, tenant_id, currency) do update \
                 set amount = r.amount + excluded.amount, entries = r.entries + excluded.entries",
        )
        .bind(day)
        .bind(currency)
        .bind(amount)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(daily)
    }

    /// The server's execution time (ms) of `budgetd_budget_status` at `now`, from one
    /// `EXPLAIN ANALYZE` (which adds its own instrumentation).
    pub async fn explain_budget_status_ms(
        &mut self,
        now: DateTime<Utc>,
        params: &StatusParams,
    ) -> anyhow::Result<f64> {
        let lines: Vec<String> = sqlx::query_scalar(
            "explain analyze select * from budgetd_budget_status($1, $2, $3, $4)",
        )
        .bind(now)
        .bind(params.trailing_days as i32)
        .bind(params.max_lag_seconds as i32)
        .bind(params.lookback_seconds.map(|s| s as i32))
        .persistent(false)
        .fetch_all(&mut self.0)
        .await?;
        execution_ms(&lines)
    }

    /// The server's execution time (ms) of [`spent_sums`], from one `EXPLAIN ANALYZE`.
    pub async fn explain_spent_sums_ms(
        &mut self,
        currency: &str,
        from: NaiveDate,
        to: NaiveDate,
    ) -> anyhow::Result<f64> {
        let lines: Vec<String> = sqlx::query_scalar(&format!("explain analyze {SPENT_SUMS}"))
            .bind(currency)
            .bind(from)
            .bind(to)
            .persistent(false)
            .fetch_all(&mut self.0)
            .await?;
        execution_ms(&lines)
    }
}

/// The "Execution Time" line of an `EXPLAIN ANALYZE`.
fn execution_ms(lines: &[String]) -> anyhow::Result<f64> {
    lines
        .iter()
        .find_map(|l| l.strip_prefix("Execution Time: "))
        .and_then(|l| l.trim_end_matches(" ms").parse::<f64>().ok())
        .context("EXPLAIN ANALYZE printed no execution time")
}
