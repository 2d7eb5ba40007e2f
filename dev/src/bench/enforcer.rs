//! `budgetd-dev bench enforcer`: measures one enforcement evaluation for many tenants (10,000
//! and 100,000 by default, each in a scratch database of its own on a Postgres server) against
//! plain `SELECT`s of its inputs. Targets (issue 13): 100 ms at 10,000 tenants, 1 s at 100,000.
//!
//! The evaluation is the work of `Enforcer::evaluate`: `Store::refresh_statuses` over the
//! status kept since the last cycle (`ledger::store::StatusCache`), `Store::open_rungs`,
//! `Store::exemptions_in_force` and the pure `plan` with the default ladder. Before each round a
//! window lands (every tenant's daily and monthly rollup rows grow, as a write moves them), so
//! the measured cycle reads the day's rows of every tenant again: the cycle after each window,
//! the enforcer's common case and its worst between two full reads. The full read (a first
//! cycle, a new day, a budget or tenant-state change, late data of an earlier day: the SQL
//! function `budgetd_budget_status`) is measured in the same rounds, and every round checks that
//! both read the same statuses. The baselines: a plain `SELECT` of the status' inputs (the
//! budget in force, the period's spent sum and the trailing window's sum per tenant) without its
//! logic, and `select tenant_id, sum(amount)` of the current period's monthly rollups, grouped
//! by tenant: the spent sums alone. All go over the store's pool as unnamed statements and
//! decode every row into Rust values; the rounds interleave them (order alternating) so the
//! machine's noise hits both; the ratios are medians of per-round ratios.
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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;

use enforcer::cluster::Tighten;
use enforcer::plan::{plan, Action, ClusterState};
use enforcer::policy::{Basis, Ladder, Policy, Step};
use ledger::enforcement::{ActionState, BudgetState, BudgetStatus, Exemption, StatusParams};
use ledger::store::{StatusCache, StatusRead};
use ledger::Store;
use testkit::bench_sql::enforcer::{
    insert_actions, insert_closed_copies, load_history, spent_sums, status_inputs, ActionRows,
    History, HistoryMeter, InputRow, Loaded,
};
use testkit::bench_sql::{
    insert_numbered_tenants, scratch_ledger, BenchConnection, NumberedTenants,
};
use testkit::db::in_scratch_database;

use super::{add_price_book, median, median_secs, priced, secs, spread, verdict, CURRENCY};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnforcerBenchOptions {
    /// Tenant counts, each measured in a scratch database of its own; every tenant has a
    /// monthly budget.
    pub tenants: Vec<usize>,
    /// Timed rounds (each times both sides once), after one warm-up round.
    pub rounds: usize,
}

impl Default for EnforcerBenchOptions {
    fn default() -> Self {
        EnforcerBenchOptions {
            tenants: vec![10_000, 100_000],
            rounds: 7,
        }
    }
}

/// The target of status + plan (issue 13): 100 ms up to 10,000 tenants, then 10 µs a tenant
/// (1 s at 100,000).
fn total_target_ms(tenants: usize) -> f64 {
    (tenants as f64 * 0.01).max(100.0)
}

/// The earlier target against the spent sums alone, kept for comparison.
const TOTAL_TARGET_RATIO: f64 = 2.0;
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
/// Every this many-th collected window of the period names a few incomplete tenants.
const INCOMPLETE_EVERY: i64 = 797;
const INCOMPLETE_TENANTS_PER_WINDOW: i64 = 3;

/// The meters of the data, and each one's share of a tenant's daily spend.
const METERS: [(&str, f64); 5] = [
    ("cpu", 0.45),
    ("memory", 0.30),
    ("storage", 0.12),
    ("network_egress", 0.08),
    ("lb_hours", 0.05),
];

/// `admin_url`: a superuser URL of a Postgres server (database part is replaced). For each
/// size: creates its own scratch database, migrates it, loads it, runs, prints a report to
/// stdout, drops it; then prints a summary of the sizes.
pub async fn run_enforcer_bench(
    admin_url: &str,
    opts: &EnforcerBenchOptions,
) -> anyhow::Result<()> {
    if opts.tenants.is_empty() || opts.tenants.contains(&0) || opts.rounds == 0 {
        bail!("tenants and rounds must be positive");
    }
    println!("budgetd-dev bench enforcer");
    let figures = Arc::new(Mutex::new(Vec::with_capacity(opts.tenants.len())));
    for &tenants in &opts.tenants {
        let rounds = opts.rounds;
        let out = Arc::clone(&figures);
        in_scratch_database(admin_url, "budgetd_ebench", move |url| async move {
            let figures = bench(&url, tenants, rounds).await?;
            out.lock().expect("no holder panicked").push(figures);
            Ok(())
        })
        .await?;
    }
    print_summary(&figures.lock().expect("no holder panicked"));
    Ok(())
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

async fn bench(url: &str, tenants: usize, rounds: usize) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let (store, mut conn) = scratch_ledger(url, Duration::from_secs(300)).await?;
    let result = async {
        print_server(&mut conn).await?;
        let calendar = Calendar::new(bench_now(Utc::now()));
        let ladder = Ladder::default_with(Tighten::Factor(Decimal::new(5, 1)));
        let t = Instant::now();
        let loaded = load(&store, &mut conn, &calendar, tenants).await?;
        let steady = record_steady_state(&store, &mut conn, &calendar, &ladder).await?;
        conn.vacuum_analyze(&[]).await?;
        let load_secs = t.elapsed().as_secs_f64();
        print_data(&calendar, &loaded, &steady, tenants, load_secs);
        let figures = measure(&store, &mut conn, &calendar, &ladder, tenants, rounds).await?;
        println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
        anyhow::Ok(figures)
    }
    .await;
    conn.close().await;
    store.pool().close().await;
    result
}

async fn print_server(conn: &mut BenchConnection) -> anyhow::Result<()> {
    let settings = conn
        .settings(&["server_version", "shared_buffers", "work_mem", "jit"])
        .await?;
    println!(
        "server: PostgreSQL {}, shared_buffers {}, work_mem {}, jit {}",
        settings[0], settings[1], settings[2], settings[3]
    );
    Ok(())
}

// Loading --------------------------------------------------------------------------------------------

/// Loads what the collector and earlier cycles would have left behind by `cal.now`, straight
/// into the tables: the tenants (one in 97 suspended, by an operator or an earlier cycle), the
/// price book (through the store), and the history of `testkit::bench_sql::enforcer`.
async fn load(
    store: &Store,
    conn: &mut BenchConnection,
    cal: &Calendar,
    tenants: usize,
) -> anyhow::Result<Loaded> {
    let t = Instant::now();
    insert_numbered_tenants(
        conn,
        NumberedTenants {
            count: tenants,
            suspended_every: Some(97),
            created_at: Some(midnight(cal.history_start)),
        },
    )
    .await?;

    let priced_meters = METERS
        .iter()
        .map(|&(meter, _)| priced(meter))
        .collect::<anyhow::Result<Vec<_>>>()?;
    add_price_book(
        store,
        midnight(cal.history_start),
        &priced_meters,
        "enforcer-bench",
    )
    .await?;

    // A tenant's daily spend is log-uniform in [0.1, 100] EUR, split over the meters by
    // weight, ±20% from day to day; the last day is partial.
    let meters = METERS
        .iter()
        .zip(&priced_meters)
        .map(|(&(_, weight), m)| {
            Ok(HistoryMeter {
                meter: m.meter.to_owned(),
                unit: m.unit.to_owned(),
                price_unit: m.price_unit.to_owned(),
                rate: Decimal::from_str(m.rate)?,
                units_per_price_unit: Decimal::from(m.units_per_price_unit),
                weight,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let days = collected_days(cal.history_start, cal.data_until);
    let loaded = load_history(
        conn,
        &History {
            tenants,
            currency: CURRENCY,
            meters: &meters,
            days: &days,
            window_seconds: WINDOW_SECONDS,
            history_start: midnight(cal.history_start),
            period_start: cal.period_start,
            data_until: cal.data_until,
            now: cal.now,
            // One window of the previous month was incomplete as a whole.
            incomplete_window: midnight(cal.history_start + chrono::Days::new(10)),
            incomplete_every: INCOMPLETE_EVERY,
            incomplete_tenants_per_window: INCOMPLETE_TENANTS_PER_WINDOW,
            elapsed_fraction: cal.elapsed_fraction(),
        },
    )
    .await?;
    eprintln!(
        "bench: tenants, rollups, windows, budgets and exemptions in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(loaded)
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
    conn: &mut BenchConnection,
    cal: &Calendar,
    ladder: &Ladder,
) -> anyhow::Result<Steady> {
    let statuses = store.budget_statuses(cal.now, &STATUS_PARAMS).await?;
    let exemptions = store.exemptions_in_force(cal.now).await?;
    let policy = policy(ladder, exemptions);
    let first = plan(&statuses, &policy, &ClusterState::default(), &[], cal.now);

    let mut rows = ActionRows::default();
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
    let open = insert_actions(conn, cal.period_start, opened_at, CURRENCY, &rows).await?;
    // The same rungs in the previous month, closed when the period turned: `open_rungs`
    // reads past them.
    let closed = insert_closed_copies(
        conn,
        cal.history_start,
        midnight(cal.history_start) + chrono::Duration::days(20),
        midnight(cal.period_start),
    )
    .await?;
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
        "  ledger_rollup_days {} rows ({} .. {}: tenant x meter x day, the last day partial), \
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
        "status + plan: Store::refresh_statuses(now, {TRAILING_DAYS} days, lag \
         {MAX_LAG_SECONDS} s, lookback {LOOKBACK_SECONDS} s) + open_rungs + \
         exemptions_in_force + plan (default ladder, tighten x0.5, hysteresis \
         {HYSTERESIS_PERCENT}), as Enforcer::evaluate does"
    );
    println!(
        "  a cycle after a window reads the change log, the day's ledger_rollup_tenant_daily \
         row per tenant, the watermark and the gaps, over the statuses kept since the last cycle"
    );
    println!(
        "  a full read: the status function reads per tenant: its budgets (the latest in force), 1 \
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

/// The plain baseline: the spent sums of the period, per tenant.
async fn plain(store: &Store, cal: &Calendar) -> anyhow::Result<Vec<(String, Decimal)>> {
    spent_sums(store, CURRENCY, cal.period_start, cal.period_end).await
}

/// Context, not the target's baseline: a plain SELECT of the inputs the status needs (the budget
/// in force, the period's spent sum and the trailing window's sum per tenant), without the
/// status' logic (periods, forecast, completeness, state).
async fn inputs(store: &Store, cal: &Calendar) -> anyhow::Result<Vec<InputRow>> {
    status_inputs(
        store,
        cal.now,
        CURRENCY,
        (cal.period_start, cal.period_end),
        cal.trailing_start(),
    )
    .await
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
    read: StatusRead,
    total: Duration,
    status_query: Duration,
    other_reads: Duration,
    plan: Duration,
}

/// The work of `Enforcer::evaluate`, in its order, over `cache` (an empty one: the full read
/// of a first cycle).
async fn evaluate(
    store: &Store,
    cache: &mut StatusCache,
    cal: &Calendar,
    ladder: &Ladder,
) -> anyhow::Result<Evaluation> {
    let t = Instant::now();
    let (statuses, read) = store
        .refresh_statuses(cache, cal.now, &STATUS_PARAMS)
        .await?;
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
        read,
        total,
        status_query,
        other_reads: reads - status_query,
        plan: total - reads,
    })
}

/// What lands between two rounds: one more window's spend for every tenant, 0.01 EUR.
const WINDOW_SPEND: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

async fn measure(
    store: &Store,
    conn: &mut BenchConnection,
    cal: &Calendar,
    ladder: &Ladder,
    tenants: usize,
    rounds: usize,
) -> anyhow::Result<Figures> {
    // Warm-up, checked: both sides see the same tenants with the same spent sums.
    let baseline = plain(store, cal).await?;
    let mut cache = StatusCache::default();
    let evaluation = evaluate(store, &mut cache, cal, ladder).await?;
    let spent: BTreeMap<&str, Decimal> = baseline.iter().map(|(t, a)| (t.as_str(), *a)).collect();
    let same = evaluation.statuses.len() == spent.len()
        && evaluation
            .statuses
            .iter()
            .all(|s| spent.get(s.tenant.as_str()) == Some(&s.spent));
    if !same || spent.len() != tenants {
        bail!(
            "the plain query ({} rows) and the status query ({} rows) disagree on the spent sums \
             of {} tenants",
            spent.len(),
            evaluation.statuses.len(),
            tenants
        );
    }
    print_mix(&evaluation);

    if inputs(store, cal).await?.len() != tenants {
        bail!("the inputs query does not see every tenant");
    }
    let day = cal.data_until.date_naive();
    let mut plain_times = Vec::with_capacity(rounds);
    let mut input_times = Vec::with_capacity(rounds);
    let mut incrementals = Vec::with_capacity(rounds);
    let mut fulls = Vec::with_capacity(rounds);
    for round in 0..rounds {
        // A window lands for every tenant: the next cycle reads the day's rows again.
        let landed = conn.land_window(day, CURRENCY, WINDOW_SPEND).await?;
        if landed != tenants as u64 {
            bail!("a window landed on {landed} daily rows of {day}, not one per tenant");
        }
        let t = Instant::now();
        std::hint::black_box(inputs(store, cal).await?);
        input_times.push(t.elapsed());
        let (p, incremental, full) = if round % 2 == 0 {
            let t = Instant::now();
            std::hint::black_box(plain(store, cal).await?);
            let p = t.elapsed();
            let i = evaluate(store, &mut cache, cal, ladder).await?;
            (
                p,
                i,
                evaluate(store, &mut StatusCache::default(), cal, ladder).await?,
            )
        } else {
            let f = evaluate(store, &mut StatusCache::default(), cal, ladder).await?;
            let i = evaluate(store, &mut cache, cal, ladder).await?;
            let t = Instant::now();
            std::hint::black_box(plain(store, cal).await?);
            (t.elapsed(), i, f)
        };
        if incremental.read != StatusRead::Incremental {
            bail!(
                "round {}: the kept status was read {:?}, not incrementally",
                round + 1,
                incremental.read
            );
        }
        if incremental.statuses != full.statuses {
            bail!(
                "round {}: the incremental and the full read disagree",
                round + 1
            );
        }
        eprintln!(
            "bench: round {}/{}: plain {:.1} ms, incremental {:.1} ms, full {:.1} ms",
            round + 1,
            rounds,
            ms(p),
            ms(incremental.total),
            ms(full.total)
        );
        plain_times.push(p);
        incrementals.push(std::hint::black_box(incremental));
        fulls.push(std::hint::black_box(full));
    }

    let part = |evaluations: &[Evaluation], f: fn(&Evaluation) -> Duration| -> Vec<Duration> {
        evaluations.iter().map(f).collect()
    };
    let ratio_to = |totals: &[Duration], base: &[Duration]| -> Vec<f64> {
        totals
            .iter()
            .zip(base)
            .map(|(t, p)| secs(*t) / secs(*p))
            .collect()
    };
    let totals = part(&incrementals, |e| e.total);
    let full_totals = part(&fulls, |e| e.total);
    let ratios = ratio_to(&totals, &plain_times);
    let plain_ms = median_secs(&plain_times) * 1000.0;
    let total_ms = median_secs(&totals) * 1000.0;
    let full_ms = median_secs(&full_totals) * 1000.0;
    let ratio = median(&ratios);
    let target_ms = total_target_ms(tenants);
    println!(
        "  {} rounds after 1 warm-up; before each, a window lands (every tenant's row of {day} \
         and of its month grow, as a write does); order alternating; all over the store's pool, \
         unnamed statements, every row decoded; medians",
        rounds
    );
    println!(
        "  {:<50}{plain_ms:>9.1} ms",
        "plain SELECT of the spent sums"
    );
    println!(
        "  {:<50}{total_ms:>9.1} ms   target <= {target_ms:.0} ms  {}",
        "status + plan, a cycle after a window",
        verdict(total_ms <= target_ms),
    );
    for (label, times) in [
        (
            "  refresh_statuses (incremental)",
            part(&incrementals, |e| e.status_query),
        ),
        (
            "  open_rungs + exemptions_in_force",
            part(&incrementals, |e| e.other_reads),
        ),
        ("  plan (pure)", part(&incrementals, |e| e.plan)),
    ] {
        println!("  {label:<50}{:>9.1} ms", median_secs(&times) * 1000.0);
    }
    println!(
        "  {:<50}{ratio:>9.2}      target <= {TOTAL_TARGET_RATIO:.1}    {}   (rounds {})",
        "ratio (status + plan)/plain",
        verdict(ratio <= TOTAL_TARGET_RATIO),
        spread(&ratios),
    );
    println!(
        "  {:<50}{full_ms:>9.1} ms   (a first cycle, and after a new day, a budget or tenant \
         state change, or late data of an earlier day)",
        "status + plan, a full read",
    );
    println!(
        "  {:<50}{:>9.1} ms",
        "  refresh_statuses (full: the SQL function)",
        median_secs(&part(&fulls, |e| e.status_query)) * 1000.0
    );
    let input_ratios = ratio_to(&full_totals, &input_times);
    let inputs_ms = median_secs(&input_times) * 1000.0;
    let inputs_ratio = median(&input_ratios);
    let cycle_input_ratios = ratio_to(&totals, &input_times);
    let cycle_inputs_ratio = median(&cycle_input_ratios);
    println!(
        "  {:<50}{inputs_ms:>9.1} ms   (the budget in force, the period's spent sum and the \
         trailing window's sum per tenant, without the status' logic)",
        "plain SELECT of the status' inputs",
    );
    println!(
        "  {:<50}{cycle_inputs_ratio:>9.2}      (rounds {})",
        "ratio cycle after a window/inputs",
        spread(&cycle_input_ratios),
    );
    println!(
        "  {:<50}{inputs_ratio:>9.2}      (rounds {})",
        "ratio full read/inputs",
        spread(&input_ratios),
    );

    // Context: the server's share, from EXPLAIN ANALYZE (which adds its own instrumentation).
    let mut function_ms = Vec::new();
    let mut plain_server_ms = Vec::new();
    for _ in 0..3 {
        function_ms.push(
            conn.explain_budget_status_ms(cal.now, &STATUS_PARAMS)
                .await?,
        );
    }
    for _ in 0..3 {
        plain_server_ms.push(
            conn.explain_spent_sums_ms(CURRENCY, cal.period_start, cal.period_end)
                .await?,
        );
    }
    let (function_ms, plain_server_ms) = (median(&function_ms), median(&plain_server_ms));
    println!(
        "  {:<50}{function_ms:>9.1} ms   plain {plain_server_ms:.1} ms   (EXPLAIN ANALYZE, median \
         of 3; context)",
        "server execution: budgetd_budget_status",
    );
    Ok(Figures {
        tenants,
        plain_ms,
        inputs_ms,
        total_ms,
        full_ms,
        cycle_inputs_ratio,
        inputs_ratio,
        target_ms,
    })
}

/// The headline figures of one size.
struct Figures {
    tenants: usize,
    plain_ms: f64,
    inputs_ms: f64,
    /// Status + plan of a cycle after a window (incremental).
    total_ms: f64,
    /// Status + plan of a full read.
    full_ms: f64,
    /// The cycle after a window against the plain SELECT of the status' inputs.
    cycle_inputs_ratio: f64,
    /// The full read against the same SELECT.
    inputs_ratio: f64,
    target_ms: f64,
}

fn print_summary(figures: &[Figures]) {
    println!("summary: status + plan (median), against plain SELECTs in the same run");
    for f in figures {
        println!(
            "  {:>7} tenants: a cycle after a window {:>8.1} ms   target <= {:.0} ms  {}   \
             (ratio {:.2} to a plain SELECT of the inputs); a full read {:.1} ms (ratio {:.2}); \
             the plain SELECT of the inputs {:.1} ms; of the spent sums {:.1} ms",
            f.tenants,
            f.total_ms,
            f.target_ms,
            verdict(f.total_ms <= f.target_ms),
            f.cycle_inputs_ratio,
            f.full_ms,
            f.inputs_ratio,
            f.inputs_ms,
            f.plain_ms,
        );
    }
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
