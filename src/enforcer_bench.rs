//! `budgetd bench enforcer`: measures one enforcement evaluation for many tenants against a
//! plain `SELECT` of the same spent sums, in a scratch database of its own on a Postgres server.
//!
//! The evaluation is the work of `Enforcer::evaluate`: `Store::budget_statuses` (the SQL
//! function `budgetd_budget_status`), `Store::open_rungs`, `Store::exemptions_in_force` and
//! the pure `plan` with the default ladder. The baseline is `select tenant_id, sum(amount)`
//! of the current period's monthly rollups, grouped by tenant: the spent sums alone. Both go
//! over the store's pool as unnamed statements and decode every row into Rust values; the
//! rounds interleave them (order alternating) so the machine's noise hits both; the headline
//! is the median of the per-round ratios.
//!
//! The data is what the collector would have left behind by `now` (the real now, moved to the
//! 9th if earlier in the month so the forecast's trailing window is whole): daily rollups of 5
//! meters per tenant for every day since the start of the previous month, the monthly rollups
//! that sum them, the collected windows with a few incomplete tenants, the watermark, one
//! monthly EUR budget per tenant sized for a realistic mix of states, and the enforcement
//! actions a previous cycle would have opened. It is loaded with `insert … select` straight
//! into the tables: the bench measures the read path; the write path has its own bench.
//!
//! The report goes to stdout, progress to stderr. Targets are informative: the bench returns
//! `Ok` whether they are met or not.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::postgres::PgArguments;
use sqlx::query::QueryScalar;
use sqlx::{Connection, Executor, PgConnection, Postgres};

use enforcer::cluster::Tighten;
use enforcer::plan::{plan, Action, ClusterState};
use enforcer::policy::{Basis, Ladder, Policy, Step};
use ledger::audit::{Actor, AuditContext};
use ledger::currency::Currency;
use ledger::enforcement::{ActionState, BudgetState, BudgetStatus, Exemption, StatusParams};
use ledger::price_book::{MeterName, NewPriceBookVersion};
use ledger::Store;

use crate::bench::{
    in_scratch_database, median, median_secs, scratch_ledger, secs, spread, verdict,
};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcerBenchOptions {
    /// Tenants, each with a monthly budget.
    pub tenants: usize,
    /// Timed rounds (each times both sides once), after one warm-up round.
    pub rounds: usize,
}

impl Default for EnforcerBenchOptions {
    fn default() -> Self {
        EnforcerBenchOptions {
            tenants: 10_000,
            rounds: 7,
        }
    }
}

const TOTAL_TARGET_RATIO: f64 = 2.0;
const TOTAL_TARGET_MS: f64 = 250.0;
/// The example configuration's enforcement settings.
const TRAILING_DAYS: u32 = 7;
const MAX_LAG_SECONDS: u32 = 1_800;
const LOOKBACK_SECONDS: u32 = 3_600;
const STATUS_PARAMS: StatusParams = StatusParams {
    trailing_days: TRAILING_DAYS,
    max_lag_seconds: MAX_LAG_SECONDS,
    lookback_seconds: Some(LOOKBACK_SECONDS),
};
const HYSTERESIS_PERCENT: i64 = 5;
const WINDOW_SECONDS: i64 = 300;
const WINDOWS_PER_DAY: i64 = 86_400 / WINDOW_SECONDS;
/// Every this many-th collected window of the period names a few incomplete tenants.
const INCOMPLETE_EVERY: i64 = 797;
const INCOMPLETE_TENANTS_PER_WINDOW: i64 = 3;
const CURRENCY: &str = "EUR";

struct MeterSpec {
    meter: &'static str,
    unit: &'static str,
    /// EUR per price unit.
    rate: &'static str,
    units_per_price_unit: i64,
    /// Share of a tenant's daily spend.
    weight: f64,
}

#[rustfmt::skip]
const METERS: [MeterSpec; 5] = [
    MeterSpec { meter: "cpu", unit: "core_seconds", rate: "0.0316", units_per_price_unit: 3_600, weight: 0.45 },
    MeterSpec { meter: "memory", unit: "byte_seconds", rate: "0.00423", units_per_price_unit: 3_600 << 30, weight: 0.30 },
    MeterSpec { meter: "storage", unit: "byte_seconds", rate: "0.000137", units_per_price_unit: 3_600 << 30, weight: 0.12 },
    MeterSpec { meter: "network_egress", unit: "bytes", rate: "0.085", units_per_price_unit: 1 << 30, weight: 0.08 },
    MeterSpec { meter: "lb_hours", unit: "lb_seconds", rate: "0.0252", units_per_price_unit: 3_600, weight: 0.05 },
];

/// `admin_url`: a superuser URL of a Postgres server (database part is replaced). Creates its
/// own scratch database, migrates it, loads it, runs, prints a report to stdout, drops it.
pub async fn run_enforcer_bench(
    admin_url: &str,
    opts: &EnforcerBenchOptions,
) -> anyhow::Result<()> {
    if opts.tenants == 0 || opts.rounds == 0 {
        bail!("tenants and rounds must be positive");
    }
    let opts = opts.clone();
    in_scratch_database(admin_url, "budgetd_ebench", move |url| async move {
        bench(&url, &opts).await
    })
    .await
}

// Time ---------------------------------------------------------------------------------------------

/// The bench's `now`: the real now, moved to the same time on the 9th when earlier in the month,
/// so that the trailing window (`TRAILING_DAYS` whole days before the day of the data's end,
/// plus that day) lies inside the period.
fn bench_now(real: DateTime<Utc>) -> DateTime<Utc> {
    let first_whole_day = TRAILING_DAYS + 2;
    if real.day() >= first_whole_day {
        real
    } else {
        real.with_day(first_whole_day)
            .expect("every month has a 9th")
    }
}

/// The end of the last 300 s window that has ended by `now`: the collector's watermark.
fn watermark(now: DateTime<Utc>) -> DateTime<Utc> {
    let t = now.timestamp();
    DateTime::from_timestamp(t - t.rem_euclid(WINDOW_SECONDS), 0).expect("in range")
}

/// Every UTC day from `from` with collected data before `until`, and how many windows of it
/// were collected.
fn collected_days(from: NaiveDate, until: DateTime<Utc>) -> Vec<(NaiveDate, i32)> {
    from.iter_days()
        .map(|day| (day, midnight(day)))
        .take_while(|(_, start)| *start < until)
        .map(|(day, start)| {
            let seconds = (until - start).num_seconds().min(86_400);
            (day, (seconds / WINDOW_SECONDS) as i32)
        })
        .collect()
}

fn midnight(day: NaiveDate) -> DateTime<Utc> {
    day.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
}

fn month_start(day: NaiveDate) -> NaiveDate {
    day.with_day(1).expect("every month has a 1st")
}

/// The months and instants the data set is built around.
struct Calendar {
    now: DateTime<Utc>,
    data_until: DateTime<Utc>,
    /// The current budget period (a calendar month).
    period_start: NaiveDate,
    period_end: NaiveDate,
    /// The start of the history loaded before the period.
    history_start: NaiveDate,
}

impl Calendar {
    fn new(now: DateTime<Utc>) -> Calendar {
        let period_start = month_start(now.date_naive());
        Calendar {
            now,
            data_until: watermark(now),
            period_start,
            period_end: period_start + Months::new(1),
            history_start: period_start - Months::new(1),
        }
    }

    /// How much of the period has passed by the data's end.
    fn elapsed_fraction(&self) -> f64 {
        let start = midnight(self.period_start);
        (self.data_until - start).num_seconds() as f64
            / (midnight(self.period_end) - start).num_seconds() as f64
    }

    /// The forecast's trailing window starts at this day (as `budgetd_budget_status` computes it).
    fn trailing_start(&self) -> NaiveDate {
        let day = self.data_until.date_naive() - chrono::Days::new(u64::from(TRAILING_DAYS));
        day.max(self.period_start)
    }
}

// The bench ----------------------------------------------------------------------------------------

async fn bench(url: &str, opts: &EnforcerBenchOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    let (store, mut conn) = scratch_ledger(url, Duration::from_secs(300)).await?;
    let result = async {
        println!("budgetd bench enforcer");
        print_server(&mut conn).await?;
        let calendar = Calendar::new(bench_now(Utc::now()));
        let ladder = Ladder::default_with(Tighten::Factor(Decimal::new(5, 1)));
        let t = Instant::now();
        let loaded = load(&store, &mut conn, &calendar, opts.tenants).await?;
        let steady = record_steady_state(&store, &mut conn, &calendar, &ladder).await?;
        sql(&mut conn, "vacuum analyze").await?;
        let load_secs = t.elapsed().as_secs_f64();
        print_data(&calendar, &loaded, &steady, opts.tenants, load_secs);
        measure(&store, &mut conn, &calendar, &ladder, opts).await?;
        println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
        anyhow::Ok(())
    }
    .await;
    conn.close().await.ok();
    store.pool().close().await;
    result
}

async fn print_server(conn: &mut PgConnection) -> anyhow::Result<()> {
    let row: (String, String, String, String) = sqlx::query_as(
        "select current_setting('server_version'), current_setting('shared_buffers'), \
                current_setting('work_mem'), current_setting('jit')",
    )
    .fetch_one(&mut *conn)
    .await?;
    println!(
        "server: PostgreSQL {}, shared_buffers {}, work_mem {}, jit {}",
        row.0, row.1, row.2, row.3
    );
    Ok(())
}

/// Runs SQL over the simple protocol (VACUUM cannot run in a transaction).
async fn sql(conn: &mut PgConnection, sql: &str) -> anyhow::Result<()> {
    conn.execute(sql)
        .await
        .with_context(|| format!("running {sql:?}"))?;
    Ok(())
}

// Loading --------------------------------------------------------------------------------------------

/// Row counts of what `load` wrote.
struct Loaded {
    suspended: i64,
    daily_rows: i64,
    monthly_rows: i64,
    windows: i64,
    windows_naming_tenants: i64,
    budgets: i64,
    exemptions: i64,
    exemptions_in_force: i64,
}

async fn load(
    store: &Store,
    conn: &mut PgConnection,
    cal: &Calendar,
    tenants: usize,
) -> anyhow::Result<Loaded> {
    let n = tenants as i64;
    let width = tenants.to_string().len().max(5) as i32;
    // A uniform value in [0, 1) from (key, seed), so the data is the same on every run.
    sql(
        conn,
        "create function pg_temp.bench_u(key bigint, seed bigint) returns float8 \
         language sql immutable as \
         $$ select ((hashint8extended(key, seed) >> 11) & 9007199254740991)::float8 \
                   / 9007199254740992 $$",
    )
    .await?;

    let t = Instant::now();
    // One tenant in 97 is suspended (by an operator or an earlier cycle).
    sqlx::query(
        "insert into tenants (id, display_name, owner, data_residency, labels, state, \
                              created_at, updated_at, state_changed_at) \
         select 't' || lpad(g::text, $2, '0'), 'Bench tenant ' || g, 'bench@example.com', 'eu', \
                '{}', case when g % 97 = 0 then 'suspended' else 'active' end, $3, $3, $3 \
         from generate_series(1, $1) as g",
    )
    .bind(n)
    .bind(width)
    .bind(midnight(cal.history_start))
    .execute(&mut *conn)
    .await
    .context("inserting tenants")?;

    let ctx = AuditContext {
        actor: Actor::system("bench"),
        request_id: "enforcer-bench".to_owned(),
    };
    let mut rates = BTreeMap::new();
    for m in &METERS {
        rates.insert(
            MeterName::parse("meter", m.meter)?,
            Decimal::from_str(m.rate)?,
        );
    }
    let version = NewPriceBookVersion::new(
        midnight(cal.history_start),
        Currency::parse("currency", CURRENCY)?,
        rates,
    )?;
    store.add_price_book_version(&ctx, &version).await?;

    // Daily rollups as the collector leaves them: a tenant's daily spend is log-uniform in
    // [0.1, 100] EUR, split over the meters by weight, ±20% from day to day; the last day is
    // partial. Day-major order, as the collector creates the rows day by day.
    let days = collected_days(cal.history_start, cal.data_until);
    let (day_list, windows): (Vec<NaiveDate>, Vec<i32>) = days.iter().copied().unzip();
    sqlx::query(
        "insert into ledger_rollup_daily (tenant_id, day, meter, unit, currency, quantity, \
                                          amount, entries) \
         select t.id, d.day, m.meter, m.unit, $10, round(a.amount / m.rate * m.per_unit, 3), \
                a.amount, d.windows \
         from (select g, 't' || lpad(g::text, $2, '0') as id, \
                      power(10, 3 * pg_temp.bench_u(g, 1) - 1) as per_day \
               from generate_series(1, $1) as g) t \
         cross join unnest($3::date[], $4::int[]) with ordinality as d(day, windows, i) \
         cross join unnest($5::text[], $6::text[], $7::numeric[], $8::numeric[], $9::float8[]) \
                    with ordinality as m(meter, unit, rate, per_unit, weight, j) \
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
    .bind(METERS.iter().map(|m| m.meter).collect::<Vec<_>>())
    .bind(METERS.iter().map(|m| m.unit).collect::<Vec<_>>())
    .bind(
        METERS
            .iter()
            .map(|m| Decimal::from_str(m.rate))
            .collect::<Result<Vec<_>, _>>()?,
    )
    .bind(
        METERS
            .iter()
            .map(|m| Decimal::from(m.units_per_price_unit))
            .collect::<Vec<_>>(),
    )
    .bind(METERS.iter().map(|m| m.weight).collect::<Vec<_>>())
    .bind(CURRENCY)
    .bind(WINDOWS_PER_DAY as f64)
    .execute(&mut *conn)
    .await
    .context("inserting daily rollups")?;
    eprintln!(
        "bench: tenants and daily rollups in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    sql(
        conn,
        "insert into ledger_rollup_monthly (tenant_id, month, currency, amount, entries) \
         select tenant_id, date_trunc('month', day)::date, currency, sum(amount), sum(entries) \
         from ledger_rollup_daily group by 1, 2, 3 order by 2, 1",
    )
    .await
    .context("inserting monthly rollups")?;
    sql(
        conn,
        "insert into ledger_rollup_tenant_daily (day, tenant_id, currency, amount, entries) \
         select day, tenant_id, currency, sum(amount), sum(entries) \
         from ledger_rollup_daily group by 1, 2, 3 order by 1, 2",
    )
    .await
    .context("inserting per-tenant daily rollups")?;

    // Every 300 s window since the history's start; one window of the previous month was
    // incomplete as a whole, and every INCOMPLETE_EVERY-th window of the period, and the one
    // that ended 10 minutes before the watermark, name a few tenants whose inputs were missing
    // (within the lookback, the enforcer leaves those tenants alone).
    let incomplete_window = midnight(cal.history_start + chrono::Days::new(10));
    sqlx::query(
        "insert into collected_windows (window_start, window_end, complete, incomplete_tenants, \
                                        problems, entries, collected_at) \
         select w, w + interval '300 seconds', w <> $3, \
                case when w >= $4 and (k % $7 = 13 or w = $10) then \
                     array(select 't' || lpad((1 + (k * 7919 + s * 104729) % $5)::text, $6, '0') \
                           from generate_series(1, $8) as s) \
                     else '{}' end, \
                case when w = $3 then '{\"bench: Prometheus answered with warnings\"}'::text[] \
                     when w >= $4 and (k % $7 = 13 or w = $10) \
                          then '{\"bench: scrape gaps\"}'::text[] \
                     else '{}' end, \
                $5 * $9, w + interval '330 seconds' \
         from generate_series($1, $2 - interval '300 seconds', interval '300 seconds') \
              with ordinality as x(w, k)",
    )
    .bind(midnight(cal.history_start))
    .bind(cal.data_until)
    .bind(incomplete_window)
    .bind(midnight(cal.period_start))
    .bind(n)
    .bind(width)
    .bind(INCOMPLETE_EVERY)
    .bind(INCOMPLETE_TENANTS_PER_WINDOW)
    .bind(METERS.len() as i64)
    .bind(cal.data_until - chrono::Duration::minutes(15))
    .execute(&mut *conn)
    .await
    .context("inserting collected windows")?;
    sqlx::query(
        "insert into collector_watermark (singleton, window_end, updated_at) values (true, $1, $1)",
    )
    .bind(cal.data_until)
    .execute(&mut *conn)
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
    .bind(CURRENCY)
    .bind(midnight(cal.history_start) - chrono::Duration::days(40))
    .bind(cal.period_start)
    .bind(cal.elapsed_fraction())
    .execute(&mut *conn)
    .await
    .context("inserting budgets")?;
    sqlx::query(
        "insert into budgets (tenant_id, amount, currency, period, thresholds, effective_from, \
                              created_at, created_by) \
         select tenant_id, round(amount * 0.7, 2), currency, period, thresholds, $1, $1, 'bench' \
         from budgets where right(tenant_id, 1) in ('0', '5')",
    )
    .bind(midnight(cal.history_start) - chrono::Duration::days(200))
    .execute(&mut *conn)
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
    .bind(cal.now)
    .execute(&mut *conn)
    .await
    .context("inserting exemptions")?;

    let counts: (i64, i64, i64, i64, i64, i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from tenants where state = 'suspended'), \
                (select count(*) from ledger_rollup_daily), \
                (select count(*) from ledger_rollup_monthly), \
                (select count(*) from collected_windows), \
                (select count(*) from collected_windows \
                 where window_start >= $1 and cardinality(incomplete_tenants) > 0), \
                (select count(*) from budgets), \
                (select count(*) from enforcement_exemptions), \
                (select count(*) from enforcement_exemptions where until > $2)",
    )
    .bind(midnight(cal.period_start))
    .bind(cal.now)
    .fetch_one(&mut *conn)
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

/// What earlier cycles left in `enforcement_actions`.
struct Steady {
    open: u64,
    closed: u64,
}

/// Records, as earlier cycles would have, the actions a first plan opens (auto rungs applied,
/// approval rungs pending), except every fifth one, which is left to open now; and a notify
/// at 80% for every tenth tenant that is fine by now, which the plan closes. The previous
/// month's actions are there too, closed. So the measured plan sees a steady state with some
/// new crossings and some clearings.
async fn record_steady_state(
    store: &Store,
    conn: &mut PgConnection,
    cal: &Calendar,
    ladder: &Ladder,
) -> anyhow::Result<Steady> {
    let statuses = store.budget_statuses(cal.now, &STATUS_PARAMS).await?;
    let exemptions = store.exemptions_in_force(cal.now).await?;
    let policy = policy(ladder, exemptions);
    let first = plan(&statuses, &policy, &ClusterState::default(), &[], cal.now);

    #[derive(Default)]
    struct Rows {
        tenant: Vec<String>,
        step_key: Vec<String>,
        step: Vec<String>,
        kind: Vec<&'static str>,
        state: Vec<&'static str>,
        reason: Vec<String>,
        spent: Vec<Decimal>,
        forecast: Vec<Decimal>,
        budget: Vec<Decimal>,
    }
    let mut rows = Rows::default();
    let by_tenant: BTreeMap<_, _> = statuses.iter().map(|s| (&s.tenant, s)).collect();
    let mut push = |status: &BudgetStatus, step: &Step, state, reason| {
        rows.tenant.push(status.tenant.as_str().to_owned());
        rows.step_key.push(step.key());
        rows.step.push(step.to_json().to_string());
        rows.kind.push(step.action.kind().as_str());
        rows.state.push(state);
        rows.reason.push(reason);
        rows.spent.push(status.spent);
        rows.forecast.push(status.forecast);
        rows.budget.push(status.budget.amount);
    };
    let opens = first.iter().filter_map(|a| match a {
        Action::Open {
            tenant,
            step,
            state,
            reason,
            ..
        } => Some((tenant, step, state, reason)),
        _ => None,
    });
    for (i, (tenant, step, state, reason)) in opens.enumerate() {
        if i % 5 == 4 {
            continue;
        }
        let recorded = match state {
            ActionState::Pending => "pending",
            _ => "applied",
        };
        push(by_tenant[tenant], step, recorded, reason.clone());
    }
    let at_80 = ladder
        .steps()
        .iter()
        .find(|s| s.on == Basis::Actual && s.at_percent == 80)
        .context("the default ladder has no 80% rung")?;
    let cleared = statuses
        .iter()
        .filter(|s| s.complete && s.state == BudgetState::Ok)
        .step_by(10);
    for status in cleared {
        push(
            status,
            at_80,
            "applied",
            "bench: opened before a budget increase".to_owned(),
        );
    }

    let opened_at = cal.now - chrono::Duration::hours(20);
    let open = sqlx::query(
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
    .bind(cal.period_start)
    .bind(opened_at)
    .bind(CURRENCY)
    .bind(&rows.tenant)
    .bind(&rows.step_key)
    .bind(&rows.step)
    .bind(&rows.kind)
    .bind(&rows.state)
    .bind(&rows.reason)
    .bind(&rows.spent)
    .bind(&rows.forecast)
    .bind(&rows.budget)
    .execute(&mut *conn)
    .await
    .context("inserting open actions")?
    .rows_affected();
    // The same rungs in the previous month, closed when the period turned: `open_rungs`
    // reads past them.
    let closed = sqlx::query(
        "insert into enforcement_actions (tenant_id, period_start, step_key, step, kind, state, \
             reason, spent_amount, forecast_amount, budget_amount, currency, not_before, \
             created_at, updated_at, applied_at, closed_at, close_reason, fencing_token) \
         select tenant_id, $1, step_key, step, kind, \
                case when state = 'applied' then 'restored' else 'cancelled' end, reason, \
                spent_amount, forecast_amount, budget_amount, currency, $2, $2, $3, \
                case when state = 'applied' then $2 end, $3, 'a new budget period began', 1 \
         from enforcement_actions order by id",
    )
    .bind(cal.history_start)
    .bind(midnight(cal.history_start) + chrono::Duration::days(20))
    .bind(midnight(cal.period_start))
    .execute(&mut *conn)
    .await
    .context("inserting last month's actions")?
    .rows_affected();
    Ok(Steady { open, closed })
}

fn print_data(cal: &Calendar, loaded: &Loaded, steady: &Steady, tenants: usize, load_secs: f64) {
    let days_in_period = (cal.period_end - cal.period_start).num_days();
    let day = cal.now.day();
    let trailing_days = (cal.data_until.date_naive() - cal.trailing_start()).num_days() + 1;
    println!(
        "data: {tenants} tenants ({} suspended), {} meters, one monthly {CURRENCY} budget each; \
         now {} = day {day} of {days_in_period} of the period {} (data until the watermark {})",
        loaded.suspended,
        METERS.len(),
        cal.now.format("%Y-%m-%dT%H:%M:%SZ"),
        cal.period_start.format("%Y-%m"),
        cal.data_until.format("%Y-%m-%dT%H:%M:%SZ"),
    );
    println!(
        "  ledger_rollup_daily {} rows ({} .. {}: tenant x meter x day, the last day partial), \
         ledger_rollup_monthly {} rows (their sums, 2 months), collected_windows {} (300 s; {} \
         in this period name incomplete tenants), budgets {} ({} superseded), open actions {} \
         (+{} closed last month), exemptions {} ({} in force)",
        loaded.daily_rows,
        cal.history_start,
        cal.data_until.date_naive(),
        loaded.monthly_rows,
        loaded.windows,
        loaded.windows_naming_tenants,
        loaded.budgets,
        loaded.budgets - tenants as i64,
        steady.open,
        steady.closed,
        loaded.exemptions,
        loaded.exemptions_in_force,
    );
    println!(
        "  loaded with insert ... select generate_series straight into the tables (not the write \
         path) in {load_secs:.1} s, then VACUUM ANALYZE"
    );
    println!(
        "total: Store::budget_statuses(now, {TRAILING_DAYS} days, lag {MAX_LAG_SECONDS} s, \
         lookback {LOOKBACK_SECONDS} s) + \
         open_rungs + exemptions_in_force + plan (default ladder, tighten x0.5, hysteresis \
         {HYSTERESIS_PERCENT}), as Enforcer::evaluate does"
    );
    println!(
        "  the status function reads per tenant: its budgets (the latest in force), 1 \
         ledger_rollup_monthly row (spent), {trailing_days} ledger_rollup_tenant_daily rows \
         ({} .. {}: the forecast's trailing window, all meters in one row per day), the tenant \
         row; once: the watermark and the period's incomplete collected_windows",
        cal.trailing_start(),
        cal.data_until.date_naive(),
    );
    println!(
        "plain: select tenant_id, sum(amount) from ledger_rollup_monthly where currency = \
         '{CURRENCY}' and month in the period group by tenant_id: 1 ledger_rollup_monthly row \
         per tenant"
    );
}

// Measuring --------------------------------------------------------------------------------------------

const PLAIN_SQL: &str = "select tenant_id, sum(amount) from ledger_rollup_monthly \
     where currency = $1 and month >= $2 and month < $3 group by tenant_id";

async fn plain(store: &Store, cal: &Calendar) -> anyhow::Result<Vec<(String, Decimal)>> {
    Ok(sqlx::query_as(PLAIN_SQL)
        .bind(CURRENCY)
        .bind(cal.period_start)
        .bind(cal.period_end)
        .persistent(false)
        .fetch_all(store.pool())
        .await?)
}

/// Context, not the target's baseline: a plain SELECT of the inputs the status needs (the budget
/// in force, the period's spent sum and the trailing window's sum per tenant), without the
/// status' logic (periods, forecast, completeness, state).
const INPUTS_SQL: &str = "select b.tenant_id, b.amount, m.amount, d.amount \
     from (select distinct on (tenant_id) tenant_id, amount from budgets \
           where effective_from <= $1 order by tenant_id, effective_from desc) b \
     join (select tenant_id, sum(amount) as amount from ledger_rollup_monthly \
           where currency = $2 and month >= $3 and month < $4 group by tenant_id) m using (tenant_id) \
     left join (select tenant_id, sum(amount) as amount from ledger_rollup_tenant_daily \
           where currency = $2 and day >= $5 group by tenant_id) d using (tenant_id)";

type InputRow = (String, Decimal, Decimal, Option<Decimal>);

async fn inputs(store: &Store, cal: &Calendar) -> anyhow::Result<Vec<InputRow>> {
    Ok(sqlx::query_as(INPUTS_SQL)
        .bind(cal.now)
        .bind(CURRENCY)
        .bind(cal.period_start)
        .bind(cal.period_end)
        .bind(cal.trailing_start())
        .persistent(false)
        .fetch_all(store.pool())
        .await?)
}

/// The policy `Enforcer::evaluate` builds: the configured ladder, the exemptions in force.
fn policy(ladder: &Ladder, exemptions: Vec<Exemption>) -> Policy {
    Policy {
        default_ladder: ladder.clone(),
        ladders: BTreeMap::new(),
        hysteresis_percent: Decimal::from(HYSTERESIS_PERCENT),
        exemptions: exemptions
            .into_iter()
            .map(|e| (e.tenant, e.until))
            .collect(),
        dry_run: false,
    }
}

/// One evaluation, timed in parts.
struct Evaluation {
    statuses: Vec<BudgetStatus>,
    actions: Vec<Action>,
    total: Duration,
    status_query: Duration,
    other_reads: Duration,
    plan: Duration,
}

/// The work of `Enforcer::evaluate`, in its order.
async fn evaluate(store: &Store, cal: &Calendar, ladder: &Ladder) -> anyhow::Result<Evaluation> {
    let t = Instant::now();
    let statuses = store.budget_statuses(cal.now, &STATUS_PARAMS).await?;
    let status_query = t.elapsed();
    let open = store.open_rungs().await?;
    let exemptions = store.exemptions_in_force(cal.now).await?;
    let reads = t.elapsed();
    let policy = policy(ladder, exemptions);
    let actions = plan(&statuses, &policy, &ClusterState::default(), &open, cal.now);
    let total = t.elapsed();
    Ok(Evaluation {
        statuses,
        actions,
        total,
        status_query,
        other_reads: reads - status_query,
        plan: total - reads,
    })
}

async fn measure(
    store: &Store,
    conn: &mut PgConnection,
    cal: &Calendar,
    ladder: &Ladder,
    opts: &EnforcerBenchOptions,
) -> anyhow::Result<()> {
    // Warm-up, checked: both sides see the same tenants with the same spent sums.
    let baseline = plain(store, cal).await?;
    let evaluation = evaluate(store, cal, ladder).await?;
    let spent: BTreeMap<&str, Decimal> = baseline.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    let same = evaluation.statuses.len() == spent.len()
        && evaluation
            .statuses
            .iter()
            .all(|s| spent.get(s.tenant.as_str()) == Some(&s.spent));
    if !same || spent.len() != opts.tenants {
        bail!(
            "the plain query ({} rows) and the status query ({} rows) disagree on the spent sums \
             of {} tenants",
            spent.len(),
            evaluation.statuses.len(),
            opts.tenants
        );
    }
    print_mix(&evaluation);

    if inputs(store, cal).await?.len() != opts.tenants {
        bail!("the inputs query does not see every tenant");
    }
    let mut plain_times = Vec::with_capacity(opts.rounds);
    let mut input_times = Vec::with_capacity(opts.rounds);
    let mut evaluations = Vec::with_capacity(opts.rounds);
    for round in 0..opts.rounds {
        let t = Instant::now();
        std::hint::black_box(inputs(store, cal).await?);
        input_times.push(t.elapsed());
        let (p, e) = if round % 2 == 0 {
            let t = Instant::now();
            std::hint::black_box(plain(store, cal).await?);
            (t.elapsed(), evaluate(store, cal, ladder).await?)
        } else {
            let e = evaluate(store, cal, ladder).await?;
            let t = Instant::now();
            std::hint::black_box(plain(store, cal).await?);
            (t.elapsed(), e)
        };
        eprintln!(
            "bench: round {}/{}: plain {:.1} ms, total {:.1} ms",
            round + 1,
            opts.rounds,
            ms(p),
            ms(e.total)
        );
        plain_times.push(p);
        evaluations.push(std::hint::black_box(e));
    }

    let part =
        |f: fn(&Evaluation) -> Duration| -> Vec<Duration> { evaluations.iter().map(f).collect() };
    let totals = part(|e| e.total);
    let ratios: Vec<f64> = totals
        .iter()
        .zip(&plain_times)
        .map(|(t, p)| secs(*t) / secs(*p))
        .collect();
    let plain_ms = median_secs(&plain_times) * 1000.0;
    let total_ms = median_secs(&totals) * 1000.0;
    let ratio = median(&ratios);
    println!(
        "  {} rounds after 1 warm-up, order alternating; both over the store's pool, unnamed \
         statements, every row decoded (BudgetStatus; (String, Decimal)); medians",
        opts.rounds
    );
    println!(
        "  {:<46}{plain_ms:>9.1} ms",
        "plain SELECT of the spent sums"
    );
    println!(
        "  {:<46}{total_ms:>9.1} ms   target <= {TOTAL_TARGET_MS:.0} ms  {}",
        "total (status query + plan)",
        verdict(total_ms <= TOTAL_TARGET_MS),
    );
    for (label, times) in [
        ("  budget_statuses", part(|e| e.status_query)),
        (
            "  open_rungs + exemptions_in_force",
            part(|e| e.other_reads),
        ),
        ("  plan (pure)", part(|e| e.plan)),
    ] {
        println!("  {label:<46}{:>9.1} ms", median_secs(&times) * 1000.0);
    }
    println!(
        "  {:<46}{ratio:>9.2}      target <= {TOTAL_TARGET_RATIO:.1}    {}   (rounds {})",
        "ratio total/plain",
        verdict(ratio <= TOTAL_TARGET_RATIO),
        spread(&ratios),
    );
    let input_ratios: Vec<f64> = totals
        .iter()
        .zip(&input_times)
        .map(|(t, i)| secs(*t) / secs(*i))
        .collect();
    println!(
        "  {:<46}{:>9.1} ms   ratio total/inputs {:.2} (rounds {}; context: the same inputs \
         without the status' logic)",
        "plain SELECT of the status' inputs",
        median_secs(&input_times) * 1000.0,
        median(&input_ratios),
        spread(&input_ratios),
    );

    // Context: the server's share, from EXPLAIN ANALYZE (which adds its own instrumentation).
    let function_ms = execution_ms(conn, || {
        sqlx::query_scalar("explain analyze select * from budgetd_budget_status($1, $2, $3, $4)")
            .bind(cal.now)
            .bind(TRAILING_DAYS as i32)
            .bind(MAX_LAG_SECONDS as i32)
            .bind(LOOKBACK_SECONDS as i32)
    })
    .await?;
    let explain_plain = format!("explain analyze {PLAIN_SQL}");
    let plain_server_ms = execution_ms(conn, || {
        sqlx::query_scalar(&explain_plain)
            .bind(CURRENCY)
            .bind(cal.period_start)
            .bind(cal.period_end)
    })
    .await?;
    println!(
        "  {:<46}{function_ms:>9.1} ms   plain {plain_server_ms:.1} ms   (EXPLAIN ANALYZE, median \
         of 3; context)",
        "server execution: budgetd_budget_status",
    );
    Ok(())
}

fn print_mix(evaluation: &Evaluation) {
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for s in &evaluation.statuses {
        *states.entry(s.state.as_str().to_owned()).or_default() += 1;
    }
    let incomplete = evaluation.statuses.iter().filter(|s| !s.complete).count();
    let mut actions: BTreeMap<String, usize> = BTreeMap::new();
    for a in &evaluation.actions {
        let key = match a {
            Action::Open { step, .. } => format!("open {}", step.action.kind().as_str()),
            Action::Apply { .. } => "apply".to_owned(),
            Action::Close { .. } => "close".to_owned(),
            Action::Repair { .. } => "repair".to_owned(),
            Action::Corrupt { .. } => "corrupt".to_owned(),
        };
        *actions.entry(key).or_default() += 1;
    }
    let join = |counts: BTreeMap<String, usize>| {
        counts
            .into_iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  statuses: {}; {incomplete} incomplete (no action); plan: {} actions ({})",
        join(states),
        evaluation.actions.len(),
        join(actions),
    );
}

/// The median "Execution Time" of three runs of an `EXPLAIN ANALYZE` query.
async fn execution_ms<'q>(
    conn: &mut PgConnection,
    explain: impl Fn() -> QueryScalar<'q, Postgres, String, PgArguments>,
) -> anyhow::Result<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let lines: Vec<String> = explain().persistent(false).fetch_all(&mut *conn).await?;
        let ms = lines
            .iter()
            .find_map(|l| l.strip_prefix("Execution Time: "))
            .and_then(|l| l.trim_end_matches(" ms").parse::<f64>().ok())
            .context("EXPLAIN ANALYZE printed no execution time")?;
        times.push(ms);
    }
    Ok(median(&times))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn now_moves_to_the_ninth_only_early_in_the_month() {
        for (real, now) in [
            ("2026-11-27T15:10:04Z", "2026-11-27T15:10:04Z"),
            ("2026-11-09T00:00:00Z", "2026-11-09T00:00:00Z"),
            ("2026-02-01T12:34:56Z", "2026-02-09T12:34:56Z"),
            ("2026-03-08T23:59:59Z", "2026-03-09T23:59:59Z"),
        ] {
            assert_eq!(bench_now(at(real)), at(now), "{real}");
        }
    }

    #[test]
    fn collected_days_end_with_the_partial_day_of_the_watermark() {
        let until = watermark(at("2026-11-03T01:02:03Z"));
        assert_eq!(until, at("2026-11-03T01:00:00Z"));
        let day = |d| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
        assert_eq!(
            collected_days(day(1), until),
            [(day(1), 288), (day(2), 288), (day(3), 12)]
        );
        assert_eq!(
            collected_days(day(1), at("2026-11-03T00:00:00Z")),
            [(day(1), 288), (day(2), 288)]
        );
    }

    #[test]
    fn calendar_of_a_late_november_now() {
        let cal = Calendar::new(at("2026-11-27T15:10:04Z"));
        assert_eq!(
            cal.period_start,
            NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
        );
        assert_eq!(
            cal.period_end,
            NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
        );
        assert_eq!(
            cal.history_start,
            NaiveDate::from_ymd_opt(2026, 10, 1).unwrap()
        );
        assert_eq!(
            cal.trailing_start(),
            NaiveDate::from_ymd_opt(2026, 11, 20).unwrap()
        );
        let f = cal.elapsed_fraction();
        assert!((f - (26.0 * 86_400.0 + 15.0 * 3_600.0 + 600.0) / (30.0 * 86_400.0)).abs() < 1e-12);
    }
}
