//! Budget status, enforcement actions, fencing and leadership against a real Postgres (and the
//! transaction-mode PgBouncer in front of it). Each test gets a fresh migrated database.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::budget::{BudgetPeriod, NewBudget, Thresholds};
use ledger::currency::Currency;
use ledger::enforcement::{
    ActionKind, ActionRecord, ActionState, BudgetState, BudgetStatus, Fence, NewAction,
    StatusParams, Transition,
};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::money::Money;
use ledger::names::Reason;
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ledger::store::{ActionFilter, ChainStatus, LeaderLock, ReloadReason, StatusCache, StatusRead};
use ledger::tenant::{TenantId, TenantState};
use ledger::usage::{CollectedWindow, CommitMode};
use ledger::{Error, Store};
use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use testkit::db::{fresh_database, store_config, TestDb};

const TIMEOUT: StdDuration = StdDuration::from_secs(10);

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor {
            name: "test-admin".into(),
            role: "admin".into(),
        },
        request_id: "req-test".into(),
    }
}

fn reason(text: &str) -> Reason {
    Reason::parse("reason", text).unwrap()
}

fn enforcer() -> AuditContext {
    AuditContext {
        actor: Actor::system("enforcer"),
        request_id: "cycle-1".into(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").unwrap()
}

fn at(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
}

fn date(y: i32, mo: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap()
}

async fn tenant(store: &Store, id: &str) -> TenantId {
    testkit::db::create_tenant(store, id).await
}

/// One meter at 1 EUR per unit, so an entry's amount is its quantity.
async fn unit_price_book(store: &Store) -> PriceBookVersion {
    let rates: BTreeMap<_, _> = [(MeterName::parse("meter", "cpu").unwrap(), dec("1"))].into();
    let new = NewPriceBookVersion::new(at(2026, 1, 1, 0), eur(), rates).unwrap();
    store.add_price_book_version(&ctx(), &new).await.unwrap()
}

fn entry(version: &PriceBookVersion, tenant: &TenantId, w: Window, amount: &str) -> NewEntry {
    let meter = MeterName::parse("meter", "cpu").unwrap();
    let pricing = version
        .pricing(&meter, UnitName::parse("u", "core").unwrap(), Decimal::ONE)
        .unwrap();
    let e = NewEntry::new(
        EntryKey {
            tenant: tenant.clone(),
            meter,
            window: w,
        },
        dec(amount),
        UnitName::parse("u", "core").unwrap(),
        pricing,
    )
    .unwrap();
    assert_eq!(e.amount(), dec(amount));
    e
}

fn hour(start: DateTime<Utc>) -> Window {
    Window::new(start, start + Duration::hours(1)).unwrap()
}

/// A complete collected window of one hour, as the collector hands it to the ledger.
fn collected(
    version: &PriceBookVersion,
    start: DateTime<Utc>,
    amounts: &[(&TenantId, &str)],
) -> CollectedWindow {
    let w = hour(start);
    CollectedWindow {
        window: w,
        entries: amounts
            .iter()
            .map(|(t, a)| entry(version, t, w, a))
            .collect(),
        unallocated: Vec::new(),
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: Vec::new(),
        problems: Vec::new(),
    }
}

/// Commits one window as the collector does (entries, window record, watermark).
async fn commit(store: &Store, window: CollectedWindow) {
    let expected = window.entries.len();
    let report = store
        .commit_windows(&[window], &CommitMode::Collect, true, "collector")
        .await
        .unwrap();
    assert_eq!((report.windows, report.inserted), (1, expected));
}

async fn budget(
    store: &Store,
    tenant: &TenantId,
    amount: &str,
    period: BudgetPeriod,
    from: DateTime<Utc>,
) {
    let new = NewBudget {
        amount: Money {
            amount: dec(amount),
            currency: eur(),
        },
        period,
        thresholds: Thresholds::parse(vec![50, 80, 100]).unwrap(),
        effective_from: from,
    };
    store.set_budget(&ctx(), tenant, &new).await.unwrap();
}

fn by_tenant(statuses: &[BudgetStatus]) -> BTreeMap<String, BudgetStatus> {
    statuses
        .iter()
        .map(|s| (s.tenant.as_str().to_owned(), s.clone()))
        .collect()
}

// Budget status ------------------------------------------------------------------------------

/// The fixed evaluation time of the budget-status tests.
fn as_of() -> DateTime<Utc> {
    at(2026, 11, 20, 12)
}

/// One-hour windows of November 2026 (and one of October), committed in order. The watermark
/// ends at 2026-11-20T11:00Z, an hour behind `as_of`.
fn w_october() -> DateTime<Utc> {
    at(2026, 10, 31, 23) // day 2026-10-31: outside the monthly period, inside Q4
}
fn w_nov05() -> DateTime<Utc> {
    at(2026, 11, 5, 10)
}
fn w_nov12_late() -> DateTime<Utc> {
    at(2026, 11, 12, 23) // day 2026-11-12: the last day before the 7-day trailing window
}
fn w_nov13() -> DateTime<Utc> {
    at(2026, 11, 13, 0) // the first hour of the 7-day trailing window
}
fn w_nov20() -> DateTime<Utc> {
    at(2026, 11, 20, 10) // ends at the watermark, 2026-11-20T11:00Z
}

/// What `budget_statuses` reports for one tenant: tenant, period, period start and end,
/// budget, spent, trailing amount, trailing start, forecast, state.
type Row = (
    String,
    BudgetPeriod,
    NaiveDate,
    NaiveDate,
    Decimal,
    Decimal,
    Decimal,
    DateTime<Utc>,
    Decimal,
    BudgetState,
);

/// An expected row, worked out by hand.
fn row(
    tenant: &str,
    (period, start, end): (BudgetPeriod, NaiveDate, NaiveDate),
    budget: &str,
    spent: &str,
    (trailing, trailing_start): (&str, DateTime<Utc>),
    forecast: &str,
    state: BudgetState,
) -> Row {
    (
        tenant.to_owned(),
        period,
        start,
        end,
        dec(budget),
        dec(spent),
        dec(trailing),
        trailing_start,
        dec(forecast),
        state,
    )
}

fn rows(statuses: &[BudgetStatus]) -> Vec<Row> {
    statuses
        .iter()
        .map(|s| {
            (
                s.tenant.as_str().to_owned(),
                s.period,
                s.period_start,
                s.period_end,
                s.budget.amount,
                s.spent,
                s.trailing,
                s.trailing_start,
                s.forecast,
                s.state,
            )
        })
        .collect()
}

#[tokio::test]
async fn budget_status_sums_the_period_and_forecasts_from_the_trailing_window() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let mut ids = BTreeMap::new();
    for id in [
        "steady", "warn", "risk", "over", "changed", "quarter", "october", "nobudget", "later",
    ] {
        ids.insert(id, tenant(s, id).await);
    }
    let t = |id: &str| &ids[id];

    // amount = quantity (1 EUR per unit)
    commit(
        s,
        collected(
            &v,
            w_october(),
            &[(t("quarter"), "200"), (t("october"), "50")],
        ),
    )
    .await;
    commit(
        s,
        collected(
            &v,
            w_nov05(),
            &[
                (t("steady"), "10"),
                (t("warn"), "48"),
                (t("over"), "60"),
                (t("changed"), "120"),
                (t("quarter"), "100"),
                (t("nobudget"), "999"),
                (t("later"), "1"),
            ],
        ),
    )
    .await;
    commit(s, collected(&v, w_nov12_late(), &[(t("risk"), "5")])).await;
    commit(
        s,
        collected(&v, w_nov13(), &[(t("steady"), "5"), (t("risk"), "25")]),
    )
    .await;
    commit(
        s,
        collected(
            &v,
            w_nov20(),
            &[
                (t("warn"), "2"),
                (t("risk"), "20"),
                (t("over"), "40"),
                (t("quarter"), "10"),
            ],
        ),
    )
    .await;
    let data_until = at(2026, 11, 20, 11);
    assert_eq!(s.collector_watermark().await.unwrap(), Some(data_until));

    let monthly = BudgetPeriod::Monthly;
    let oct1 = at(2026, 10, 1, 0);
    budget(s, t("steady"), "1000", monthly, oct1).await;
    for id in ["warn", "risk", "over", "october"] {
        budget(s, t(id), "100", monthly, oct1).await;
    }
    // Changed mid-period: the budget in force at as_of counts; one from after as_of does not.
    budget(s, t("changed"), "100", monthly, at(2026, 11, 1, 0)).await;
    budget(s, t("changed"), "300", monthly, at(2026, 11, 15, 0)).await;
    budget(s, t("changed"), "50", monthly, at(2026, 11, 25, 0)).await;
    budget(s, t("quarter"), "500", BudgetPeriod::Quarterly, oct1).await;
    // Only a budget that starts after as_of: no status (nor for "nobudget", whose 999 is in
    // the ledger all the same).
    budget(s, t("later"), "10", monthly, at(2026, 11, 21, 0)).await;
    // The tenant's lifecycle state is reported as it is.
    s.transition_tenant(&ctx(), t("over"), TenantState::Suspended, "over budget")
        .await
        .unwrap();

    use BudgetState::{AtRisk, Exceeded, Warning};
    let ok = BudgetState::Ok;
    let nov = (monthly, date(2026, 11, 1), date(2026, 12, 1));
    let q4 = (BudgetPeriod::Quarterly, date(2026, 10, 1), date(2027, 1, 1));

    // trailing_days = 7: the trailing window starts 7 whole days before the watermark's day
    // (2026-11-20), at 2026-11-13T00:00Z, and is 7 d 11 h = 179 h long. Time left after the
    // watermark: 253 h in November, 997 h in Q4 (ends 2027-01-01).
    // forecast = spent + round(trailing × left / 179, 6)
    let nov13 = at(2026, 11, 13, 0);
    #[rustfmt::skip]
    let seven = vec![
        // 300 since 11-15 (the 50 from 11-25 is not in force yet); 120 < 50 % of 300
        row("changed", nov, "300",  "120", ("0",  nov13), "120",        ok),
        // October's 50 is outside November
        row("october", nov, "100",  "0",   ("0",  nov13), "0",          ok),
        // spent = budget is exceeded; 100 + 40 × 253/179 = 100 + 56.5363128…
        row("over",    nov, "100",  "100", ("40", nov13), "156.536313", Exceeded),
        // Q4 includes October's 200; 310 ≥ 50 % of 500; 310 + 10 × 997/179 = 310 + 55.6983240…
        row("quarter", q4,  "500",  "310", ("10", nov13), "365.698324", Warning),
        // 11-12T23:00 is before the trailing window, 11-13T00:00 in it;
        // 50 + 45 × 253/179 = 50 + 63.6033519…; at risk outranks warning (50 % spent)
        row("risk",    nov, "100",  "50",  ("45", nov13), "113.603352", AtRisk),
        // 15 + 5 × 253/179 = 15 + 7.0670391…
        row("steady",  nov, "1000", "15",  ("5",  nov13), "22.067039",  ok),
        // exactly the first threshold (50 %); 50 + 2 × 253/179 = 50 + 2.8268156…
        row("warn",    nov, "100",  "50",  ("2",  nov13), "52.826816",  Warning),
    ];
    let statuses = s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap();
    assert_eq!(rows(&statuses), seven);
    for st in &statuses {
        assert_eq!(st.data_until, Some(data_until), "{}", st.tenant);
        assert!(st.complete, "{} should be complete", st.tenant);
        assert_eq!(st.budget.currency, eur());
        assert_eq!(st.thresholds.as_slice(), &[50, 80, 100]);
    }
    let by = by_tenant(&statuses);
    assert_eq!(by["over"].tenant_state, TenantState::Suspended);
    assert_eq!(by["steady"].tenant_state, TenantState::Active);

    // trailing_days = 30: the window would start on 2026-10-21, so November budgets start it
    // at the period start (19 d 11 h = 467 h); Q4's starts on 10-21 (30 d 11 h = 731 h).
    let (nov1, oct21) = (at(2026, 11, 1, 0), at(2026, 10, 21, 0));
    #[rustfmt::skip]
    let thirty = vec![
        // 120 + 120 × 253/467 = 120 + 65.0107066…
        row("changed", nov, "300",  "120", ("120", nov1),  "185.010707", ok),
        row("october", nov, "100",  "0",   ("0",   nov1),  "0",          ok),
        // 100 + 100 × 253/467 = 100 + 54.1755888…
        row("over",    nov, "100",  "100", ("100", nov1),  "154.175589", Exceeded),
        // 310 + 310 × 997/731 = 310 + 422.8043775…
        row("quarter", q4,  "500",  "310", ("310", oct21), "732.804378", AtRisk),
        // 50 + 50 × 253/467 = 50 + 27.0877944…; no longer at risk
        row("risk",    nov, "100",  "50",  ("50",  nov1),  "77.087794",  Warning),
        // 15 + 15 × 253/467 = 15 + 8.1263383…
        row("steady",  nov, "1000", "15",  ("15",  nov1),  "23.126338",  ok),
        row("warn",    nov, "100",  "50",  ("50",  nov1),  "77.087794",  Warning),
    ];
    let statuses = s.budget_statuses(as_of(), &strict(30, 3600)).await.unwrap();
    assert_eq!(rows(&statuses), thirty);
}

#[tokio::test]
async fn budget_status_is_incomplete_for_incomplete_windows_tenants_and_a_lagging_watermark() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let (a, b, c, q) = (
        tenant(s, "a").await,
        tenant(s, "b").await,
        tenant(s, "c").await,
        tenant(s, "q").await,
    );
    for id in [&a, &b, &c] {
        budget(s, id, "100", BudgetPeriod::Monthly, at(2026, 10, 1, 0)).await;
    }
    budget(s, &q, "100", BudgetPeriod::Quarterly, at(2026, 10, 1, 0)).await;

    // October: the whole window incomplete. Outside the monthly period, inside Q4.
    let mut october = collected(&v, w_october(), &[(&a, "1"), (&q, "1")]);
    october.complete = false;
    october.problems = vec!["prometheus warnings".into()];
    commit(s, october).await;
    // November: complete as a whole, but b's own inputs were missing.
    let mut nov05 = collected(&v, w_nov05(), &[(&a, "1"), (&c, "1")]);
    nov05.incomplete_tenants = vec![b.clone()];
    commit(s, nov05).await;
    commit(s, collected(&v, w_nov20(), &[(&a, "1")])).await;

    // `complete` of a, b, c and q.
    let complete = |statuses: Vec<BudgetStatus>| -> Vec<bool> {
        let tenants: Vec<&str> = statuses.iter().map(|s| s.tenant.as_str()).collect();
        assert_eq!(tenants, ["a", "b", "c", "q"]);
        statuses.iter().map(|s| s.complete).collect()
    };

    // The watermark (11:00) is exactly max_lag_seconds behind as_of (12:00): fresh.
    assert_eq!(
        complete(s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap()),
        [true, false, true, false]
    );
    // One second less tolerance: stale, so nobody's data is complete.
    assert_eq!(
        complete(s.budget_statuses(as_of(), &strict(7, 3599)).await.unwrap()),
        [false, false, false, false]
    );

    // A backfilled window of November that was incomplete as a whole: every November budget
    // is incomplete. The watermark stays where it was.
    let mut backfill = collected(&v, at(2026, 11, 10, 10), &[(&a, "1")]);
    backfill.complete = false;
    s.commit_windows(
        std::slice::from_ref(&backfill),
        &CommitMode::Collect,
        false,
        "collector",
    )
    .await
    .unwrap();
    assert_eq!(
        s.collector_watermark().await.unwrap(),
        Some(at(2026, 11, 20, 11))
    );
    assert_eq!(
        complete(s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap()),
        [false, false, false, false]
    );

    // Recollected complete: the window's record is replaced, and a and c are complete again.
    backfill.complete = true;
    let report = s
        .commit_windows(
            &[backfill],
            &CommitMode::Recollect {
                reason: "scrape gap filled".into(),
            },
            false,
            "recollect",
        )
        .await
        .unwrap();
    assert_eq!((report.unchanged, report.incomplete_windows), (1, 0));
    assert_eq!(
        complete(s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap()),
        [true, false, true, false]
    );
    // The spend behind it is real: a has 1 from each of the three November windows.
    let statuses = by_tenant(&s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap());
    assert_eq!(statuses["a"].spent, dec("3"));

    // With a lookback, only recent gaps count: the last window (ending at the watermark) was
    // complete for everyone, the older gaps of b and q are outside one hour.
    let recent = |lookback_seconds| ledger::enforcement::StatusParams {
        trailing_days: 7,
        max_lag_seconds: 3600,
        lookback_seconds,
    };
    assert_eq!(
        complete(
            s.budget_statuses(as_of(), &recent(Some(3600)))
                .await
                .unwrap()
        ),
        [true, true, true, true]
    );
    assert_eq!(
        complete(s.budget_statuses(as_of(), &recent(None)).await.unwrap()),
        [true, false, true, false]
    );
    // A gap in the last hour counts again.
    let mut late = collected(
        &v,
        at(2026, 11, 20, 10) + chrono::Duration::minutes(30),
        &[],
    );
    late.incomplete_tenants = vec![b.clone()];
    s.commit_windows(&[late], &CommitMode::Collect, false, "collector")
        .await
        .unwrap();
    assert_eq!(
        complete(
            s.budget_statuses(as_of(), &recent(Some(3600)))
                .await
                .unwrap()
        ),
        [true, false, true, true]
    );
}

#[tokio::test]
async fn budget_status_without_collected_data_is_incomplete_and_spends_nothing() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    budget(s, &acme, "100", BudgetPeriod::Monthly, at(2026, 10, 1, 0)).await;
    let statuses = s.budget_statuses(as_of(), &strict(7, 3600)).await.unwrap();
    assert_eq!(statuses.len(), 1);
    let st = &statuses[0];
    assert_eq!(st.data_until, None);
    assert!(!st.complete);
    assert_eq!(
        (st.spent, st.trailing, st.forecast, st.state),
        (Decimal::ZERO, Decimal::ZERO, Decimal::ZERO, BudgetState::Ok)
    );
}

#[tokio::test]
async fn finance_budget_status_view_has_the_contract_columns_and_the_finance_role_reads_it() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let acme = tenant(s, "acme").await;
    let other = tenant(s, "other").await;
    let now = Utc::now();
    budget(
        s,
        &acme,
        "100",
        BudgetPeriod::Monthly,
        now - Duration::days(40),
    )
    .await;
    // The view reads Postgres' wall clock: the latest 5-minute window of this month, so the
    // view's data is fresh (30 minutes) and in its period on any day.
    let (start, end) = testkit::clock::recent_window(now, 300);
    let w = Window::new(start, end).unwrap();
    let report = s
        .commit_windows(
            &[CollectedWindow {
                window: w,
                entries: vec![entry(&v, &acme, w, "12.5"), entry(&v, &other, w, "7")],
                unallocated: Vec::new(),
                unpriced: Vec::new(),
                complete: true,
                incomplete_tenants: Vec::new(),
                problems: Vec::new(),
            }],
            &CommitMode::Collect,
            true,
            "collector",
        )
        .await
        .unwrap();
    assert_eq!(report.inserted, 2);

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let columns: Vec<String> = sqlx::query_scalar(
        "select column_name::text from information_schema.columns \
         where table_schema = 'finance' and table_name = 'budget_status' order by ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        columns,
        [
            "tenant_id",
            "period_start",
            "period_end",
            "budget_amount",
            "spent_amount",
            "currency",
            "forecast_amount",
            "state",
            "data_complete",
            "remaining_amount"
        ]
    );

    let mut tx = conn.begin().await.unwrap();
    sqlx::query("set local role budgetd_finance")
        .execute(&mut *tx)
        .await
        .unwrap();
    type ViewRow = (
        String,
        NaiveDate,
        NaiveDate,
        Decimal,
        Decimal,
        String,
        Decimal,
        String,
        bool,
    );
    let rows: Vec<ViewRow> = sqlx::query_as(
        "select tenant_id, period_start, period_end, budget_amount, spent_amount, currency, \
                forecast_amount, state, data_complete from finance.budget_status",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // The instant the view was computed for: its transaction's now().
    let view_now: DateTime<Utc> = sqlx::query_scalar("select now()")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    // Without the view, finance cannot read what it is computed from.
    let denied = sqlx::query("select count(*) from budgets")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert_eq!(
        denied.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501"),
        "{denied}"
    );
    tx.rollback().await.unwrap();

    // The view is the function at now() with 7 trailing days and 30 minutes of lag.
    let status = s.budget_statuses(view_now, &strict(7, 1800)).await.unwrap();
    assert_eq!(status.len(), 1);
    let st = &status[0];
    assert_eq!(
        rows,
        vec![(
            "acme".to_owned(),
            st.period_start,
            st.period_end,
            dec("100"),
            dec("12.5"),
            "EUR".to_owned(),
            st.forecast,
            st.state.as_str().to_owned(),
            true,
        )]
    );
    assert_eq!(st.spent, dec("12.5"));
    assert!(st.complete);
}

// Leadership and fencing ---------------------------------------------------------------------

async fn acquire(url: &str, holder: &str) -> Option<LeaderLock> {
    LeaderLock::try_acquire(url, holder, 30, TIMEOUT)
        .await
        .unwrap()
}

/// The key of the leader's advisory lock, read from pg_locks while it is held.
async fn held_leader_lock_key(db: &TestDb) -> i64 {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar(
        "select (l.classid::bigint << 32) | l.objid::bigint from pg_locks l \
         join pg_stat_activity a on a.pid = l.pid \
         where l.locktype = 'advisory' and l.granted and l.objsubid = 1 \
           and l.database = (select oid from pg_database where datname = current_database()) \
           and a.application_name = 'budgetd-leader'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// Blocks until the server has released the leader's lock (a closed session releases it a
/// moment after the client let go): takes and drops it once, so the next attempt is certain.
async fn wait_until_released(db: &TestDb, key: i64) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("set statement_timeout = '30s'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("select pg_advisory_lock($1)")
        .bind(key)
        .execute(&mut conn)
        .await
        .unwrap();
    let unlocked: bool = sqlx::query_scalar("select pg_advisory_unlock($1)")
        .bind(key)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(unlocked);
    conn.close().await.unwrap();
}

async fn lease(db: &TestDb) -> (i64, String) {
    sqlx::query_as("select token, holder from leader_lease where name = 'budgetd'")
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn the_leader_lock_has_one_holder_and_every_acquisition_bumps_the_token() {
    let db = fresh_database().await;
    let mut first = acquire(&db.url, "daemon-a").await.expect("first leader");
    assert_eq!(first.fence(), Fence(1));
    first.check(TIMEOUT).await.unwrap();
    assert!(
        acquire(&db.url, "daemon-b").await.is_none(),
        "a second daemon must not lead while the first holds the lock"
    );
    // The loser did not bump the token.
    assert_eq!(lease(&db).await, (1, "daemon-a".to_owned()));
    first.check(TIMEOUT).await.unwrap();

    let key = held_leader_lock_key(&db).await;
    first.release(TIMEOUT).await;
    wait_until_released(&db, key).await;
    let second = acquire(&db.url, "daemon-b")
        .await
        .expect("leader after release");
    assert_eq!(second.fence(), Fence(2));
    assert_eq!(lease(&db).await, (2, "daemon-b".to_owned()));
    assert!(acquire(&db.url, "daemon-a").await.is_none());

    // A leader that goes away without releasing (its connection is dropped) loses the lock too.
    drop(second);
    wait_until_released(&db, key).await;
    let mut third = acquire(&db.url, "daemon-c")
        .await
        .expect("leader after drop");
    assert_eq!(third.fence(), Fence(3));
    third.check(TIMEOUT).await.unwrap();

    // A leader whose session the server ended finds out at its next check.
    let mut admin = PgConnection::connect(&db.url).await.unwrap();
    let killed: bool = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity \
         where application_name = 'budgetd-leader' and datname = current_database()",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(killed);
    wait_until_released(&db, key).await;
    assert!(third.check(TIMEOUT).await.is_err());
    let fourth = acquire(&db.url, "daemon-d")
        .await
        .expect("leader after kill");
    assert_eq!(fourth.fence(), Fence(4));
}

fn new_action(
    tenant: &TenantId,
    step_key: &str,
    kind: ActionKind,
    state: ActionState,
) -> NewAction {
    NewAction {
        tenant: tenant.clone(),
        period_start: date(2026, 11, 1),
        step_key: step_key.to_owned(),
        step: json!({ "at": step_key, "action": kind.as_str() }),
        kind,
        state,
        reason: format!("{step_key} reached"),
        spent: dec("101.5"),
        forecast: dec("140.25"),
        budget: Money {
            amount: dec("100"),
            currency: eur(),
        },
        not_before: at(2026, 11, 20, 12),
    }
}

/// Rows of the tables an enforcement write touches.
async fn counts(store: &Store) -> (i64, i64, i64) {
    sqlx::query_as(
        "select (select count(*) from enforcement_actions), (select count(*) from audit_log), \
                (select count(*) from outbox)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

/// (action, target_id, transaction id) of the audit records after `after_seq`.
async fn audit_since(store: &Store, after_seq: i64) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select action, target_id, xmin::text from audit_log where seq > $1 order by seq",
    )
    .bind(after_seq)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

/// (event_type, aggregate_id, transaction id) of the outbox rows after `after_id`.
async fn outbox_since(store: &Store, after_id: i64) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "select event_type, aggregate_id, xmin::text from outbox where id > $1 order by id",
    )
    .bind(after_id)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

async fn last_ids(store: &Store) -> (i64, i64) {
    sqlx::query_as(
        "select coalesce((select max(seq) from audit_log), 0), \
                coalesce((select max(id) from outbox), 0)",
    )
    .fetch_one(store.pool())
    .await
    .unwrap()
}

async fn assert_chain_intact(store: &Store) {
    let records: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { records }
    );
}

fn conflict_code(e: &Error) -> Option<&'static str> {
    match e {
        Error::Conflict { code, .. } => Some(code),
        _ => None,
    }
}

#[tokio::test]
async fn opening_an_action_audits_and_announces_it_in_one_transaction_and_occupies_the_rung() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let leader = acquire(&db.url, "daemon-a").await.unwrap();
    let fence = leader.fence();
    let (seq, outbox_id) = last_ids(s).await;

    let new = new_action(
        &acme,
        "actual:100:notify",
        ActionKind::Notify,
        ActionState::Scheduled,
    );
    let opened = s.open_action(fence, &enforcer(), &new).await.unwrap();
    assert_eq!(
        (
            &opened.tenant,
            opened.period_start,
            opened.step_key.as_str(),
            opened.kind,
            opened.state,
            opened.spent,
            opened.forecast,
            &opened.budget,
            opened.not_before,
            opened.attempts,
        ),
        (
            &acme,
            date(2026, 11, 1),
            "actual:100:notify",
            ActionKind::Notify,
            ActionState::Scheduled,
            dec("101.5"),
            dec("140.25"),
            &new.budget,
            new.not_before,
            0,
        )
    );
    assert_eq!(opened.step, new.step);
    assert_eq!(s.get_action(opened.id).await.unwrap(), opened);
    let token: i64 =
        sqlx::query_scalar("select fencing_token from enforcement_actions where id = $1")
            .bind(opened.id)
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(token, 1);

    let audit = audit_since(s, seq).await;
    let events = outbox_since(s, outbox_id).await;
    let id = opened.id.to_string();
    assert_eq!(audit.len(), 1);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (audit[0].0.as_str(), audit[0].1.as_str()),
        ("enforcement.action_opened", id.as_str())
    );
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("enforcement.action_opened", "acme"),
        "an action's events are on its tenant's aggregate"
    );
    let action_xmin: String =
        sqlx::query_scalar("select xmin::text from enforcement_actions where id = $1")
            .bind(opened.id)
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(
        (&audit[0].2, &events[0].2),
        (&action_xmin, &action_xmin),
        "action, audit record and outbox event are written by one transaction"
    );
    let actor: String = sqlx::query_scalar("select actor from audit_log where seq = $1")
        .bind(seq + 1)
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(actor, "enforcer");

    // The rung is occupied while the action is open, in any open state.
    let before = counts(s).await;
    let err = s.open_action(fence, &enforcer(), &new).await.unwrap_err();
    assert_eq!(conflict_code(&err), Some("rung_occupied"), "{err}");
    assert_eq!(counts(s).await, before);
    // Another rung of the same tenant, and the same rung of another tenant, are free.
    let other = tenant(s, "other").await;
    s.open_action(
        fence,
        &enforcer(),
        &new_action(
            &acme,
            "actual:80:notify",
            ActionKind::Notify,
            ActionState::Planned,
        ),
    )
    .await
    .unwrap();
    s.open_action(
        fence,
        &enforcer(),
        &new_action(
            &other,
            "actual:100:notify",
            ActionKind::Notify,
            ActionState::Pending,
        ),
    )
    .await
    .unwrap();

    // Closed, the rung is free again.
    let closed = s
        .close_action(fence, &enforcer(), opened.id, "back under budget", None)
        .await
        .unwrap();
    assert_eq!(closed.state, ActionState::Cancelled);
    let reopened = s.open_action(fence, &enforcer(), &new).await.unwrap();
    assert_ne!(reopened.id, opened.id);
    assert_chain_intact(s).await;
}

#[tokio::test]
async fn a_stale_fence_fails_every_enforcement_write_and_changes_nothing() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let old = acquire(&db.url, "daemon-a").await.unwrap();
    let stale = old.fence();
    let action = s
        .open_action(
            stale,
            &enforcer(),
            &new_action(
                &acme,
                "actual:100:suspend",
                ActionKind::Suspend,
                ActionState::Scheduled,
            ),
        )
        .await
        .unwrap();
    // Another daemon takes over; the old one does not know yet.
    let key = held_leader_lock_key(&db).await;
    old.release(TIMEOUT).await;
    wait_until_released(&db, key).await;
    let leader = acquire(&db.url, "daemon-b").await.unwrap();
    assert_eq!(leader.fence(), Fence(2));

    let suspend = Transition {
        to: TenantState::Suspended,
        reason: "over budget".into(),
    };
    let resume = Transition {
        to: TenantState::Active,
        reason: "budget raised".into(),
    };
    let before = counts(s).await;
    for fence in [stale, Fence(3)] {
        let attempts: Vec<(&str, Result<(), Error>)> = vec![
            (
                "open_action",
                s.open_action(
                    fence,
                    &enforcer(),
                    &new_action(
                        &acme,
                        "actual:80:notify",
                        ActionKind::Notify,
                        ActionState::Scheduled,
                    ),
                )
                .await
                .map(drop),
            ),
            (
                "record_effect",
                s.record_effect(
                    fence,
                    action.id,
                    &json!({"replicas": 0}),
                    &json!({"replicas": 3}),
                )
                .await
                .map(drop),
            ),
            (
                "mark_applied",
                s.mark_applied(
                    fence,
                    &enforcer(),
                    action.id,
                    &json!({"ok": true}),
                    Some(&suspend),
                )
                .await
                .map(drop),
            ),
            (
                "record_failure",
                s.record_failure(fence, action.id, "apiserver unavailable")
                    .await,
            ),
            (
                "close_action",
                s.close_action(fence, &enforcer(), action.id, "recovered", Some(&resume))
                    .await
                    .map(drop),
            ),
            (
                "record_repair",
                s.record_repair(fence, &enforcer(), action.id, &json!({"quota": "restored"}))
                    .await,
            ),
        ];
        for (op, result) in attempts {
            let err = result.expect_err(op);
            assert!(
                matches!(
                    err,
                    Error::Fenced {
                        fence: f,
                        leader: Some(Fence(2)),
                    } if f == fence
                ),
                "{op} with {fence:?}: {err}"
            );
            assert_eq!(err.metric_label(), "fenced");
        }
    }
    assert_eq!(counts(s).await, before, "fenced writes left rows behind");
    assert_eq!(s.get_action(action.id).await.unwrap(), action);
    assert_eq!(
        s.get_tenant(&acme).await.unwrap().state,
        TenantState::Active
    );

    // The current leader's token works.
    let current = leader.fence();
    s.record_failure(current, action.id, "apiserver unavailable")
        .await
        .unwrap();
    let failed = s.get_action(action.id).await.unwrap();
    assert_eq!(
        (failed.attempts, failed.last_error.as_deref()),
        (1, Some("apiserver unavailable"))
    );
    s.record_repair(
        current,
        &enforcer(),
        action.id,
        &json!({"quota": "restored"}),
    )
    .await
    .unwrap();
    let repaired: i64 = sqlx::query_scalar(
        "select count(*) from audit_log where action = 'enforcement.drift_repaired' and target_id = $1",
    )
    .bind(action.id.to_string())
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(repaired, 1);
    assert_chain_intact(s).await;
}

#[tokio::test]
async fn applying_and_closing_a_suspension_moves_the_tenant_and_keeps_the_first_effect() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let leader = acquire(&db.url, "daemon-a").await.unwrap();
    let fence = leader.fence();
    let action = s
        .open_action(
            fence,
            &enforcer(),
            &new_action(
                &acme,
                "actual:100:suspend",
                ActionKind::Suspend,
                ActionState::Scheduled,
            ),
        )
        .await
        .unwrap();

    // The first observation of the prior state is kept: a retry after a crash may see the
    // cluster already changed.
    let (fwd, bwd) = (json!({"replicas": 0}), json!({"replicas": 3}));
    let recorded = s.record_effect(fence, action.id, &fwd, &bwd).await.unwrap();
    assert_eq!(
        (recorded.forward.as_ref(), recorded.backward.as_ref()),
        (Some(&fwd), Some(&bwd))
    );
    let again = s
        .record_effect(
            fence,
            action.id,
            &json!({"replicas": 0}),
            &json!({"replicas": 0}),
        )
        .await
        .unwrap();
    assert_eq!(
        (again.forward.as_ref(), again.backward.as_ref()),
        (Some(&fwd), Some(&bwd))
    );
    let stored = s.get_action(action.id).await.unwrap();
    assert_eq!(
        (stored.forward, stored.backward),
        (Some(fwd.clone()), Some(bwd.clone()))
    );

    let (seq, outbox_id) = last_ids(s).await;
    let suspend = Transition {
        to: TenantState::Suspended,
        reason: "budget exceeded".into(),
    };
    let applied = s
        .mark_applied(
            fence,
            &enforcer(),
            action.id,
            &json!({"suspended": ["web"]}),
            Some(&suspend),
        )
        .await
        .unwrap();
    assert_eq!(applied.state, ActionState::Applied);
    assert_eq!(applied.outcome, Some(json!({"suspended": ["web"]})));
    assert!(applied.applied_at.is_some());
    assert_eq!(applied.attempts, 1);
    assert_eq!(
        s.get_tenant(&acme).await.unwrap().state,
        TenantState::Suspended
    );
    let id = action.id.to_string();
    let audit = audit_since(s, seq).await;
    let events = outbox_since(s, outbox_id).await;
    let shape = |rows: &[(String, String, String)]| -> Vec<(String, String)> {
        rows.iter().map(|r| (r.0.clone(), r.1.clone())).collect()
    };
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        shape(&audit),
        [
            pair("tenant.suspended", "acme"),
            pair("enforcement.action_applied", &id)
        ]
    );
    assert_eq!(
        shape(&events),
        [
            pair("tenant.suspended", "acme"),
            pair("enforcement.action_applied", "acme")
        ]
    );
    assert!(
        audit.iter().chain(&events).all(|r| r.2 == audit[0].2),
        "the suspension and the action move in one transaction"
    );
    // Applied is not due again.
    let err = s
        .mark_applied(fence, &enforcer(), action.id, &json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("action_not_due"), "{err}");

    let before_close = Utc::now() - Duration::seconds(1);
    let (seq, outbox_id) = last_ids(s).await;
    let resume = Transition {
        to: TenantState::Active,
        reason: "budget raised".into(),
    };
    let restored = s
        .close_action(
            fence,
            &enforcer(),
            action.id,
            "budget raised",
            Some(&resume),
        )
        .await
        .unwrap();
    assert_eq!(restored.state, ActionState::Restored);
    assert_eq!(restored.close_reason.as_deref(), Some("budget raised"));
    let closed_at = restored.closed_at.expect("closed_at");
    assert_eq!(
        s.get_tenant(&acme).await.unwrap().state,
        TenantState::Active
    );
    assert_eq!(
        shape(&audit_since(s, seq).await),
        [
            pair("tenant.active", "acme"),
            pair("enforcement.action_restored", &id)
        ]
    );
    assert_eq!(
        shape(&outbox_since(s, outbox_id).await),
        [
            pair("tenant.resumed", "acme"),
            pair("enforcement.action_restored", "acme")
        ]
    );
    // One order for all of the tenant's events, lifecycle and enforcement: what a consumer
    // keyed by tenant relies on.
    let stream: Vec<(i64, String)> = sqlx::query_as(
        "select seq, event_type from outbox \
         where aggregate_type = 'tenant' and aggregate_id = 'acme' order by id",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    assert_eq!(
        stream,
        [
            "tenant.created",
            "enforcement.action_opened",
            "tenant.suspended",
            "enforcement.action_applied",
            "tenant.resumed",
            "enforcement.action_restored",
        ]
        .iter()
        .enumerate()
        .map(|(i, t)| (i as i64 + 1, (*t).to_owned()))
        .collect::<Vec<_>>()
    );
    // Closing a closed action changes nothing.
    let before = counts(s).await;
    let twice = s
        .close_action(fence, &enforcer(), action.id, "again", Some(&resume))
        .await
        .unwrap();
    assert_eq!(twice, restored);
    assert_eq!(counts(s).await, before);

    // An action closed before it was applied is cancelled; the tenant moves with it.
    s.transition_tenant(&ctx(), &acme, TenantState::Suspended, "manual")
        .await
        .unwrap();
    let pending = s
        .open_action(
            fence,
            &enforcer(),
            &new_action(
                &acme,
                "forecast:100:suspend",
                ActionKind::Suspend,
                ActionState::Pending,
            ),
        )
        .await
        .unwrap();
    let err = s
        .mark_applied(fence, &enforcer(), pending.id, &json!({}), None)
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("action_not_due"), "{err}");
    let cancelled = s
        .close_action(
            fence,
            &enforcer(),
            pending.id,
            "forecast dropped",
            Some(&resume),
        )
        .await
        .unwrap();
    assert_eq!(cancelled.state, ActionState::Cancelled);
    assert!(cancelled.closed_at.is_some());
    assert_eq!(
        s.get_tenant(&acme).await.unwrap().state,
        TenantState::Active
    );

    // Restored actions only, from `since` on.
    let restored_ids = |v: Vec<ActionRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        restored_ids(s.actions_restored_since(before_close).await.unwrap()),
        [action.id]
    );
    assert_eq!(
        restored_ids(s.actions_restored_since(closed_at).await.unwrap()),
        [action.id]
    );
    assert!(s
        .actions_restored_since(closed_at + Duration::microseconds(1))
        .await
        .unwrap()
        .is_empty());
    assert_chain_intact(s).await;
}

#[tokio::test]
async fn operators_decide_only_pending_actions_and_lists_filter_by_state_and_tenant() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let beta = tenant(s, "beta").await;
    let leader = acquire(&db.url, "daemon-a").await.unwrap();
    let fence = leader.fence();
    let open = |t: &TenantId, key: &str, state: ActionState| {
        let new = new_action(t, key, ActionKind::TightenQuota, state);
        async move { s.open_action(fence, &enforcer(), &new).await.unwrap() }
    };
    let a1 = open(&acme, "actual:80:tighten_quota", ActionState::Pending).await;
    let a2 = open(&acme, "actual:100:tighten_quota", ActionState::Pending).await;
    let a3 = open(&acme, "actual:50:tighten_quota", ActionState::Scheduled).await;
    let b1 = open(&beta, "actual:80:tighten_quota", ActionState::Pending).await;

    let approver = AuditContext {
        actor: Actor {
            name: "alice".into(),
            role: "operator".into(),
        },
        request_id: "req-approve".into(),
    };
    let approved = s
        .decide_action(&approver, a1.id, true, &reason("customer informed"))
        .await
        .unwrap();
    assert_eq!(approved.state, ActionState::Approved);
    assert_eq!(
        (
            approved.decided_by.as_deref(),
            approved.decision_reason.as_deref()
        ),
        (Some("alice"), Some("customer informed"))
    );
    assert!(approved.decided_at.is_some());
    let rejected = s
        .decide_action(&approver, a2.id, false, &reason("strategic customer"))
        .await
        .unwrap();
    assert_eq!(rejected.state, ActionState::Rejected);
    assert_eq!(
        (
            rejected.decided_by.as_deref(),
            rejected.decision_reason.as_deref()
        ),
        (Some("alice"), Some("strategic customer"))
    );
    let decisions: Vec<(String, String, String)> = sqlx::query_as(
        "select action, target_id, actor from audit_log \
         where action in ('enforcement.action_approved', 'enforcement.action_rejected') order by seq",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    assert_eq!(
        decisions,
        [
            (
                "enforcement.action_approved".to_owned(),
                a1.id.to_string(),
                "alice".to_owned()
            ),
            (
                "enforcement.action_rejected".to_owned(),
                a2.id.to_string(),
                "alice".to_owned()
            ),
        ]
    );

    // Only pending actions can be decided; nothing changes otherwise.
    for (id, state) in [
        (a1.id, ActionState::Approved),
        (a2.id, ActionState::Rejected),
        (a3.id, ActionState::Scheduled),
    ] {
        let before = counts(s).await;
        for approve in [true, false] {
            let err = s
                .decide_action(&approver, id, approve, &reason("again"))
                .await
                .unwrap_err();
            assert_eq!(conflict_code(&err), Some("action_not_pending"), "{err}");
        }
        assert_eq!(s.get_action(id).await.unwrap().state, state);
        assert_eq!(counts(s).await, before);
    }
    assert!(matches!(
        s.decide_action(&approver, 999_999, true, &reason("none"))
            .await,
        Err(Error::NotFound { .. })
    ));
    // A rejected action still occupies its rung.
    let err = s
        .open_action(
            fence,
            &enforcer(),
            &new_action(
                &acme,
                "actual:100:tighten_quota",
                ActionKind::TightenQuota,
                ActionState::Pending,
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("rung_occupied"), "{err}");

    let ids = |v: Vec<ActionRecord>| v.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let list = |state: Option<ActionState>, tenant: Option<&TenantId>, limit: i64| {
        let filter = ActionFilter {
            state,
            tenant: tenant.cloned(),
            before_id: None,
            limit,
        };
        async move { ids(s.list_actions(&filter).await.unwrap()) }
    };
    // newest first
    assert_eq!(list(None, None, 100).await, [b1.id, a3.id, a2.id, a1.id]);
    assert_eq!(list(None, Some(&acme), 100).await, [a3.id, a2.id, a1.id]);
    assert_eq!(list(None, Some(&beta), 100).await, [b1.id]);
    assert_eq!(list(Some(ActionState::Pending), None, 100).await, [b1.id]);
    assert_eq!(
        list(Some(ActionState::Pending), Some(&acme), 100).await,
        Vec::<i64>::new()
    );
    assert_eq!(list(Some(ActionState::Approved), None, 100).await, [a1.id]);
    assert_eq!(
        list(Some(ActionState::Rejected), Some(&acme), 100).await,
        [a2.id]
    );
    assert_eq!(list(None, None, 2).await, [b1.id, a3.id]);
    let page = ActionFilter {
        before_id: Some(a3.id),
        limit: 100,
        ..ActionFilter::default()
    };
    assert_eq!(ids(s.list_actions(&page).await.unwrap()), [a2.id, a1.id]);
    // Open actions: every state but restored and cancelled.
    assert_eq!(ledger_open_ids(s).await, [a1.id, a2.id, a3.id, b1.id]);
    s.close_action(fence, &enforcer(), b1.id, "paid", None)
        .await
        .unwrap();
    assert_eq!(ledger_open_ids(s).await, [a1.id, a2.id, a3.id]);
    assert_eq!(list(Some(ActionState::Cancelled), None, 100).await, [b1.id]);
    assert_chain_intact(s).await;
}

#[tokio::test]
async fn the_latest_exemption_is_in_force_and_exemptions_are_append_only() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let beta = tenant(s, "beta").await;
    let t0 = at(2026, 11, 20, 12);
    let in_force = |at: DateTime<Utc>| async move {
        s.exemptions_in_force(at)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.tenant.as_str().to_owned(), e.until, e.reason))
            .collect::<Vec<_>>()
    };
    assert!(in_force(t0).await.is_empty());
    assert_eq!(s.exemption(&acme).await.unwrap(), None);

    let first = s
        .set_exemption(
            &ctx(),
            &acme,
            t0 + Duration::days(1),
            &reason("migration week"),
        )
        .await
        .unwrap();
    assert_eq!(first.created_by, "test-admin");
    s.set_exemption(
        &ctx(),
        &beta,
        t0 + Duration::days(3),
        &reason("contract renewal"),
    )
    .await
    .unwrap();
    assert_eq!(
        in_force(t0).await,
        [
            (
                "acme".to_owned(),
                t0 + Duration::days(1),
                "migration week".to_owned()
            ),
            (
                "beta".to_owned(),
                t0 + Duration::days(3),
                "contract renewal".to_owned()
            ),
        ]
    );
    // `until` is exclusive.
    assert_eq!(
        in_force(t0 + Duration::days(1)).await,
        [(
            "beta".to_owned(),
            t0 + Duration::days(3),
            "contract renewal".to_owned()
        )]
    );

    // The latest row wins, also when it is shorter.
    s.set_exemption(&ctx(), &acme, t0 + Duration::days(2), &reason("extended"))
        .await
        .unwrap();
    assert_eq!(
        in_force(t0 + Duration::days(1)).await[0],
        (
            "acme".to_owned(),
            t0 + Duration::days(2),
            "extended".to_owned()
        )
    );
    // An `until` in the past ends it early; other tenants keep theirs.
    let ended = s
        .set_exemption(
            &ctx(),
            &acme,
            t0 - Duration::hours(1),
            &reason("ended early"),
        )
        .await
        .unwrap();
    assert_eq!(
        in_force(t0).await,
        [(
            "beta".to_owned(),
            t0 + Duration::days(3),
            "contract renewal".to_owned()
        )]
    );
    assert_eq!(s.exemption(&acme).await.unwrap(), Some(ended));

    let audited: Vec<(String, Option<serde_json::Value>, serde_json::Value)> = sqlx::query_as(
        "select target_id, before, after from audit_log \
         where action = 'enforcement.exemption_set' order by seq",
    )
    .fetch_all(s.pool())
    .await
    .unwrap();
    assert_eq!(
        audited.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["acme", "beta", "acme", "acme"]
    );
    assert_eq!(audited[0].1, None);
    assert_eq!(audited[2].1, Some(first.to_json()));
    assert_eq!(audited[3].2["reason"], json!("ended early"));
    let events: i64 =
        sqlx::query_scalar("select count(*) from outbox where event_type = 'tenant.exemption_set'")
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(events, 4);

    let unknown = TenantId::parse("ghost").unwrap();
    assert!(matches!(
        s.set_exemption(&ctx(), &unknown, t0, &reason("nobody"))
            .await,
        Err(Error::NotFound { .. })
    ));

    // An offboarding tenant no longer changes: no exemption either, and nothing is written.
    s.transition_tenant(&ctx(), &beta, TenantState::Offboarding, "leaving")
        .await
        .unwrap();
    let (before, exemption_before) = (counts(s).await, s.exemption(&beta).await.unwrap());
    let err = s
        .set_exemption(&ctx(), &beta, t0 + Duration::days(5), &reason("wind-down"))
        .await
        .unwrap_err();
    assert_eq!(conflict_code(&err), Some("tenant_not_mutable"), "{err}");
    assert_eq!(counts(s).await, before);
    assert_eq!(s.exemption(&beta).await.unwrap(), exemption_before);

    for sql in [
        "update enforcement_exemptions set until = until + interval '1 year'",
        "delete from enforcement_exemptions",
    ] {
        let err = sqlx::query(sql).execute(s.pool()).await.expect_err(sql);
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{sql}: {err}"
        );
    }
    let rows: i64 = sqlx::query_scalar("select count(*) from enforcement_exemptions")
        .fetch_one(s.pool())
        .await
        .unwrap();
    assert_eq!(rows, 4);
    assert_chain_intact(s).await;
}

// Through PgBouncer ----------------------------------------------------------------------------

#[tokio::test]
async fn budget_status_and_enforcement_writes_work_through_pgbouncer() {
    let db = fresh_database().await;
    let pooled = Store::connect(&store_config(&db.pgbouncer_url()))
        .await
        .unwrap();
    let v = unit_price_book(&pooled).await;
    let acme = tenant(&pooled, "acme").await;
    budget(
        &pooled,
        &acme,
        "100",
        BudgetPeriod::Monthly,
        at(2026, 10, 1, 0),
    )
    .await;
    commit(&pooled, collected(&v, w_nov05(), &[(&acme, "30")])).await;
    commit(&pooled, collected(&v, w_nov20(), &[(&acme, "60")])).await;

    // Concurrent readers share the pooler's server connections.
    let mut readers = Vec::new();
    for _ in 0..8 {
        let store = pooled.clone();
        readers.push(tokio::spawn(async move {
            store
                .budget_statuses(as_of(), &strict(7, 3600))
                .await
                .unwrap()
        }));
    }
    let direct = db
        .store
        .budget_statuses(as_of(), &strict(7, 3600))
        .await
        .unwrap();
    for r in readers {
        assert_eq!(r.await.unwrap(), direct);
    }
    assert_eq!(direct.len(), 1);
    // 90 + 60 × 253/179 = 90 + 84.8044692…
    assert_eq!(
        (direct[0].spent, direct[0].forecast, direct[0].state),
        (dec("90"), dec("174.804469"), BudgetState::AtRisk)
    );

    // The leader lock needs a session: it is taken on the direct URL; the writes it fences go
    // through the pooler.
    let leader = acquire(&db.url, "daemon-a").await.unwrap();
    let opened = pooled
        .open_action(
            leader.fence(),
            &enforcer(),
            &new_action(
                &acme,
                "forecast:100:notify",
                ActionKind::Notify,
                ActionState::Scheduled,
            ),
        )
        .await
        .unwrap();
    let applied = pooled
        .mark_applied(
            leader.fence(),
            &enforcer(),
            opened.id,
            &json!({"alert": "sent"}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(applied.state, ActionState::Applied);
    let err = pooled
        .open_action(
            Fence(leader.fence().0 + 1),
            &enforcer(),
            &new_action(
                &acme,
                "actual:100:notify",
                ActionKind::Notify,
                ActionState::Scheduled,
            ),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Fenced { fence, leader: Some(current) }
            if fence == Fence(leader.fence().0 + 1) && current == leader.fence()),
        "{err}"
    );
    assert_eq!(
        ledger_open_ids(&db.store).await,
        [opened.id],
        "only the fenced open is missing"
    );
    assert_chain_intact(&pooled).await;
}

/// Status parameters without a completeness lookback: any incomplete window of the period
/// counts.
fn strict(trailing_days: u32, max_lag_seconds: u32) -> ledger::enforcement::StatusParams {
    ledger::enforcement::StatusParams {
        trailing_days,
        max_lag_seconds,
        lookback_seconds: None,
    }
}

async fn ledger_open_ids(store: &Store) -> Vec<i64> {
    store
        .open_rungs()
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect()
}

/// Budget periods are UTC calendar periods, whoever reads them: finance tools connect with
/// their own `TimeZone`, and `finance.budget_status` is this function at `now()`.
#[tokio::test]
async fn budget_status_does_not_depend_on_the_session_time_zone() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let q = tenant(s, "q").await;
    let r = tenant(s, "r").await;
    for id in [&q, &r] {
        budget(s, id, "150", BudgetPeriod::Quarterly, at(2026, 7, 1, 0)).await;
    }
    // The last hour of Q3, incomplete as a whole: it does not concern Q4.
    let mut q3 = collected(&v, at(2026, 9, 30, 23), &[(&q, "1")]);
    q3.complete = false;
    commit(s, q3).await;
    // 03:00Z on the first day of Q4, with r's inputs missing: r's Q4 is incomplete.
    let mut first_day = collected(&v, at(2026, 10, 1, 3), &[(&q, "0")]);
    first_day.incomplete_tenants = vec![r.clone()];
    commit(s, first_day).await;
    commit(s, collected(&v, at(2026, 10, 25, 12), &[(&q, "70")])).await; // before the trailing window
    commit(s, collected(&v, at(2026, 10, 26, 0), &[(&q, "7")])).await; // its first hour
    commit(s, collected(&v, at(2026, 11, 2, 10), &[(&q, "3")])).await; // watermark 11-02T11:00Z

    // as_of 2026-11-02T12:00Z, 7 trailing days: the trailing window starts 2026-10-26T00:00Z
    // and is 7 d 11 h = 179 h long; Q4 has 59 d 13 h = 1429 h left after the watermark.
    // q: spent 80, trailing 10, forecast 80 + 10 × 1429/179 = 80 + 79.8324022… = 159.832402.
    let as_of = at(2026, 11, 2, 12);
    let trailing_start = at(2026, 10, 26, 0);
    type Seen = (String, Decimal, Decimal, DateTime<Utc>, Decimal, bool);
    let expected: Vec<Seen> = vec![
        (
            "q".into(),
            dec("80"),
            dec("10"),
            trailing_start,
            dec("159.832402"),
            true,
        ),
        (
            "r".into(),
            dec("0"),
            dec("0"),
            trailing_start,
            dec("0"),
            false,
        ),
    ];
    let via_store: Vec<Seen> = s
        .budget_statuses(as_of, &strict(7, 3600))
        .await
        .unwrap()
        .into_iter()
        .map(|st| {
            (
                st.tenant.as_str().to_owned(),
                st.spent,
                st.trailing,
                st.trailing_start,
                st.forecast,
                st.complete,
            )
        })
        .collect();
    assert_eq!(via_store, expected);

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut wrong = Vec::new();
    for zone in [
        "UTC",
        "Europe/Berlin",
        "America/Los_Angeles",
        "Pacific/Kiritimati",
    ] {
        sqlx::query(&format!("set time zone '{zone}'"))
            .execute(&mut conn)
            .await
            .unwrap();
        let seen: Vec<Seen> = sqlx::query_as(
            "select tenant_id, spent_amount, trailing_amount, trailing_start, forecast_amount, \
                    complete from budgetd_budget_status($1, 7, 3600) order by tenant_id",
        )
        .bind(as_of)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        if seen != expected {
            wrong.push(format!("{zone}: {seen:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "budget status depends on the session time zone; expected {expected:?}, got\n{}",
        wrong.join("\n")
    );
}

/// A notify action applied is a budget threshold crossed: `budget.threshold_crossed` follows
/// `enforcement.action_applied` in the outbox, written by the same transaction; a suspension
/// applied is not one.
#[tokio::test]
async fn applying_a_notify_action_announces_the_threshold_crossed() {
    let db = fresh_database().await;
    let s = &db.store;
    let acme = tenant(s, "acme").await;
    let leader = acquire(&db.url, "daemon-a").await.unwrap();
    let fence = leader.fence();
    let mut new = new_action(
        &acme,
        "actual:80:notify:warning",
        ActionKind::Notify,
        ActionState::Scheduled,
    );
    new.step = json!({ "at": 80, "on": "actual", "action": "notify", "severity": "warning" });
    let action = s.open_action(fence, &enforcer(), &new).await.unwrap();
    let (_, outbox_id) = last_ids(s).await;
    s.mark_applied(
        fence,
        &enforcer(),
        action.id,
        &json!({"alert": "sent"}),
        None,
    )
    .await
    .unwrap();
    let events = outbox_since(s, outbox_id).await;
    let shape: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.0.as_str(), e.1.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("enforcement.action_applied", "acme"),
            ("budget.threshold_crossed", "acme")
        ]
    );
    assert_eq!(events[0].2, events[1].2, "one transaction");
    let payload: serde_json::Value = sqlx::query_scalar(
        "select payload from outbox where event_type = 'budget.threshold_crossed'",
    )
    .fetch_one(s.pool())
    .await
    .unwrap();
    assert_eq!(payload["action"]["tenant_id"], "acme");
    assert_eq!(payload["on"], "actual");
    assert_eq!(payload["at_percent"], 80);
    assert_eq!(
        (&payload["spent"], &payload["budget"], &payload["currency"]),
        (&json!("101.5"), &json!("100"), &json!("EUR"))
    );

    let suspend = s
        .open_action(
            fence,
            &enforcer(),
            &new_action(
                &acme,
                "actual:120:suspend",
                ActionKind::Suspend,
                ActionState::Scheduled,
            ),
        )
        .await
        .unwrap();
    let (_, outbox_id) = last_ids(s).await;
    s.mark_applied(fence, &enforcer(), suspend.id, &json!({}), None)
        .await
        .unwrap();
    let events = outbox_since(s, outbox_id).await;
    assert!(
        events.iter().all(|e| e.0 != "budget.threshold_crossed"),
        "{events:?}"
    );
}

// Budget status kept between reads ---------------------------------------------------------

fn params(trailing_days: u32, lookback_seconds: Option<u32>) -> StatusParams {
    StatusParams {
        trailing_days,
        max_lag_seconds: 1_800,
        lookback_seconds,
    }
}

/// Refreshes `cache` at `as_of` and checks it against the full read of the same instant.
async fn refreshed_as_full(
    store: &Store,
    cache: &mut StatusCache,
    as_of: DateTime<Utc>,
    params: &StatusParams,
) -> StatusRead {
    let (kept, read) = store.refresh_statuses(cache, as_of, params).await.unwrap();
    let full = store.budget_statuses(as_of, params).await.unwrap();
    assert_eq!(
        kept, full,
        "refresh ({read:?}) against the full read at {as_of}"
    );
    read
}

#[tokio::test]
async fn the_kept_status_reads_the_days_rows_and_reloads_for_anything_else() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let a = tenant(s, "a").await;
    let b = tenant(s, "b").await;
    budget(s, &a, "100", BudgetPeriod::Monthly, at(2026, 11, 1, 0)).await;
    budget(s, &b, "500", BudgetPeriod::Quarterly, at(2026, 10, 1, 0)).await;
    commit(
        s,
        collected(&v, at(2026, 11, 19, 9), &[(&a, "30"), (&b, "40")]),
    )
    .await;
    commit(
        s,
        collected(&v, at(2026, 11, 20, 9), &[(&a, "10"), (&b, "5")]),
    )
    .await;
    let p = params(7, Some(3_600));
    let mut cache = StatusCache::default();

    let first = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 10), &p).await;
    assert_eq!(first, StatusRead::Full(ReloadReason::First));
    // Nothing changed: the kept statuses, recomputed for a later instant (the watermark lags).
    let later = refreshed_as_full(
        s,
        &mut cache,
        at(2026, 11, 20, 10) + Duration::minutes(45),
        &p,
    )
    .await;
    assert_eq!(later, StatusRead::Incremental);
    // A window of the same day: one day's rows read again.
    commit(s, collected(&v, at(2026, 11, 20, 10), &[(&a, "25")])).await;
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 11), &p).await;
    assert_eq!(read, StatusRead::Incremental);
    let (statuses, _) = s
        .refresh_statuses(&mut cache, at(2026, 11, 20, 11), &p)
        .await
        .unwrap();
    assert_eq!(statuses[0].spent, dec("65"), "30 + 10 + 25");
    assert_eq!(statuses[0].state, BudgetState::AtRisk);

    // An incomplete tenant in a window of the day: read with the gaps, no reload.
    let mut gap = collected(&v, at(2026, 11, 20, 11), &[(&a, "1")]);
    gap.incomplete_tenants = vec![b.clone()];
    commit(s, gap).await;
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 12), &p).await;
    assert_eq!(read, StatusRead::Incremental);

    // A late window of an earlier day: the log names that day, so everything is read again.
    s.write_entries(&[entry(&v, &b, hour(at(2026, 11, 3, 4)), "7")], "late")
        .await
        .unwrap();
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 12), &p).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Changed));

    // A budget coming into force later reloads when it does; a new budget reloads at once.
    budget(
        s,
        &a,
        "60",
        BudgetPeriod::Monthly,
        at(2026, 11, 20, 12) + Duration::minutes(30),
    )
    .await;
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 12), &p).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Changed));
    let read = refreshed_as_full(
        s,
        &mut cache,
        at(2026, 11, 20, 12) + Duration::minutes(10),
        &p,
    )
    .await;
    assert_eq!(read, StatusRead::Incremental);
    let read = refreshed_as_full(
        s,
        &mut cache,
        at(2026, 11, 20, 12) + Duration::minutes(30),
        &p,
    )
    .await;
    assert_eq!(read, StatusRead::Full(ReloadReason::BudgetInForce));

    // An earlier instant: the budget that came into force may not be in force then.
    let read = refreshed_as_full(
        s,
        &mut cache,
        at(2026, 11, 20, 12) + Duration::minutes(20),
        &p,
    )
    .await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Earlier));

    // Other parameters, then the next day's first window.
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 13), &params(3, None)).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Parameters));
    for h in 12..24 {
        commit(s, collected(&v, at(2026, 11, 20, h), &[(&a, "0.5")])).await;
    }
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 23), &params(3, None)).await;
    assert_eq!(read, StatusRead::Incremental, "the data ends at 23:00");
    // The data ends at midnight: the trailing window moves on a day.
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 21, 0), &params(3, None)).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::NewDay));
    commit(s, collected(&v, at(2026, 11, 21, 0), &[(&a, "2")])).await;
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 21, 1), &params(3, None)).await;
    assert_eq!(read, StatusRead::Incremental);

    // A tenant's state change reloads.
    s.operator_suspend(&ctx(), &b, &reason("test"))
        .await
        .unwrap();
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 21, 1), &params(3, None)).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Changed));
}

/// A writer that took its transaction id before the last read and commits after it is still
/// seen: the change log is read by snapshot, not by a counter.
#[tokio::test]
async fn a_change_committed_after_the_read_that_began_before_it_is_not_missed() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let a = tenant(s, "a").await;
    let b = tenant(s, "b").await;
    budget(s, &a, "100", BudgetPeriod::Monthly, at(2026, 11, 1, 0)).await;
    budget(s, &b, "100", BudgetPeriod::Monthly, at(2026, 11, 1, 0)).await;
    commit(
        s,
        collected(&v, at(2026, 11, 20, 9), &[(&a, "10"), (&b, "10")]),
    )
    .await;
    let p = params(7, None);
    let mut cache = StatusCache::default();
    refreshed_as_full(s, &mut cache, at(2026, 11, 20, 10), &p).await;

    // The slow writer: a's rows of the day in both rollups, as a write statement moves them.
    let mut slow = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    sqlx::query(
        "update ledger_rollup_tenant_daily set amount = amount + 5 \
         where day = '2026-11-20' and tenant_id = 'a'",
    )
    .execute(&mut slow)
    .await
    .unwrap();
    sqlx::query(
        "update ledger_rollup_monthly set amount = amount + 5 \
         where month = '2026-11-01' and tenant_id = 'a'",
    )
    .execute(&mut slow)
    .await
    .unwrap();
    // A faster writer (b's window) commits meanwhile, and a refresh reads past its change.
    commit(s, collected(&v, at(2026, 11, 20, 10), &[(&b, "1")])).await;
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 11), &p).await;
    assert_eq!(read, StatusRead::Incremental);
    sqlx::query("commit").execute(&mut slow).await.unwrap();

    let (statuses, read) = s
        .refresh_statuses(&mut cache, at(2026, 11, 20, 11), &p)
        .await
        .unwrap();
    assert_eq!(read, StatusRead::Incremental);
    assert_eq!(statuses[0].spent, dec("15"), "10 + the slow writer's 5");
    assert_eq!(statuses[1].spent, dec("11"));
    refreshed_as_full(s, &mut cache, at(2026, 11, 20, 11), &p).await;
}

/// The log is pruned a day after a change, once every transaction before it ended; a reader
/// whose last read is older than the highest pruned change reloads in full.
#[tokio::test]
async fn a_pruned_change_log_reloads_readers_it_may_have_passed() {
    let db = fresh_database().await;
    let s = &db.store;
    let v = unit_price_book(s).await;
    let a = tenant(s, "a").await;
    budget(s, &a, "100", BudgetPeriod::Monthly, at(2026, 11, 1, 0)).await;
    commit(s, collected(&v, at(2026, 11, 20, 9), &[(&a, "10")])).await;
    let p = params(7, None);
    let mut cache = StatusCache::default();
    refreshed_as_full(s, &mut cache, at(2026, 11, 20, 10), &p).await;
    commit(s, collected(&v, at(2026, 11, 20, 10), &[(&a, "1")])).await;

    // Pruning: only rows logged more than a day ago go, and the highest of them is kept. (Which
    // of them have ended before every running transaction depends on the other tests sharing
    // the cluster.)
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let ids = "select coalesce(array_agg(xid::text::bigint order by xid), '{}') from ledger_status_changes";
    let logged: Vec<i64> = sqlx::query_scalar(ids).fetch_one(&mut conn).await.unwrap();
    assert!(
        logged.len() >= 3,
        "the budget and both windows are logged: {logged:?}"
    );
    sqlx::query("select budgetd_prune_status_changes()")
        .execute(&mut conn)
        .await
        .unwrap();
    let left: Vec<i64> = sqlx::query_scalar(ids).fetch_one(&mut conn).await.unwrap();
    assert_eq!(left, logged, "nothing was logged a day ago");
    let newest = *logged.last().unwrap();
    sqlx::query("update ledger_status_changes set logged_at = logged_at - interval '2 days' where xid <> $1::text::xid8")
        .bind(newest.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("select budgetd_prune_status_changes()")
        .execute(&mut conn)
        .await
        .unwrap();
    let left: Vec<i64> = sqlx::query_scalar(ids).fetch_one(&mut conn).await.unwrap();
    assert!(left.contains(&newest), "the row logged now stays");
    let gone: Vec<i64> = logged
        .iter()
        .copied()
        .filter(|x| !left.contains(x))
        .collect();
    let through: i64 =
        sqlx::query_scalar("select through::text::bigint from ledger_status_changes_pruned")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(through, gone.iter().copied().max().unwrap_or(0));

    // A writer never waits for another one's pruning: with the marker held and rows old enough
    // to prune, a window commits (its statements skip pruning) instead of waiting out the
    // statement timeout.
    sqlx::query("update ledger_status_changes set logged_at = logged_at - interval '2 days'")
        .execute(&mut conn)
        .await
        .unwrap();
    let mut pruning = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("begin").execute(&mut pruning).await.unwrap();
    sqlx::query("select through from ledger_status_changes_pruned for update")
        .execute(&mut pruning)
        .await
        .unwrap();
    commit(s, collected(&v, at(2026, 11, 20, 11), &[(&a, "1")])).await;
    sqlx::query("rollback").execute(&mut pruning).await.unwrap();

    // A reader passed by pruning reloads. Pruned as if the newest change were gone:
    sqlx::query("update ledger_status_changes_pruned set through = $1::text::xid8")
        .bind(newest.to_string())
        .execute(&mut conn)
        .await
        .unwrap();
    // (`newest` was taken after the reader's snapshot; a real prune only goes below every
    // running transaction, so a later snapshot is never passed by it, but here other tests'
    // transactions may still be older than `newest`.)
    let read = refreshed_as_full(s, &mut cache, at(2026, 11, 20, 12), &p).await;
    assert_eq!(read, StatusRead::Full(ReloadReason::Pruned));
}

#[derive(Debug, Clone)]
enum StatusOp {
    /// The next hour's window at the watermark, with these amounts (cents) for tenants 0..3;
    /// `gap`: 0 complete, 1 incomplete as a whole, 2 tenant 1's inputs missing.
    Window { cents: [u32; 3], gap: u8 },
    /// An hour of tenant `tenant` on an earlier day (`days_back` before the watermark's day).
    Late {
        tenant: usize,
        days_back: u32,
        hour: u32,
        cents: u32,
    },
    /// A new budget: amount in euros, period 0 monthly 1 quarterly 2 yearly, in force
    /// `ahead` minutes after the current instant.
    Budget {
        tenant: usize,
        euros: u32,
        period: u8,
        ahead: i64,
    },
    /// The clock moves without data (backwards too: a dry run or a test may ask for any
    /// instant).
    Clock { minutes: i64 },
}

fn arb_status_op() -> impl Strategy<Value = StatusOp> {
    prop_oneof![
        6 => (prop::array::uniform3(0..5_000u32), prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)])
            .prop_map(|(cents, gap)| StatusOp::Window { cents, gap }),
        1 => (0..3usize, 1..40u32, 0..24u32, 0..5_000u32)
            .prop_map(|(tenant, days_back, hour, cents)| StatusOp::Late { tenant, days_back, hour, cents }),
        1 => (0..3usize, 1..400u32, 0..3u8, prop_oneof![Just(0i64), 1..180i64])
            .prop_map(|(tenant, euros, period, ahead)| StatusOp::Budget { tenant, euros, period, ahead }),
        1 => (-180..240i64).prop_map(|minutes| StatusOp::Clock { minutes }),
    ]
}

fn cents(c: u32) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Whatever happens between two reads — windows of the day or across midnight and the month
    /// end, late windows of earlier days, gaps, new budgets now or later, a clock that runs
    /// ahead of the data or goes back —, the kept status equals the full read of the same
    /// instant.
    #[test]
    fn the_kept_status_equals_the_full_read_after_any_changes(
        ops in prop::collection::vec(arb_status_op(), 1..25),
        trailing_days in 1..10u32,
        lookback in prop_oneof![Just(None), (1..6u32).prop_map(|h| Some(h * 3_600))],
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = fresh_database().await;
            let s = &db.store;
            let v = unit_price_book(s).await;
            let mut tenants = Vec::new();
            for id in ["t0", "t1", "t2"] {
                tenants.push(tenant(s, id).await);
            }
            for (t, period) in tenants.iter().zip([BudgetPeriod::Monthly, BudgetPeriod::Quarterly, BudgetPeriod::Yearly]) {
                budget(s, t, "120", period, at(2026, 1, 1, 0)).await;
            }
            // Late December, so that a run crosses midnight and the month's, quarter's and
            // year's end.
            let mut watermark = at(2026, 12, 31, 14);
            commit(s, collected(&v, watermark - Duration::hours(1), &[(&tenants[0], "3")])).await;
            let mut now = watermark + Duration::minutes(5);
            let p = params(trailing_days, lookback);
            let mut cache = StatusCache::default();
            refreshed_as_full(s, &mut cache, now, &p).await;
            for op in &ops {
                match op {
                    StatusOp::Window { cents: c, gap } => {
                        let amounts: Vec<(&TenantId, String)> =
                            tenants.iter().zip(c).map(|(t, c)| (t, cents(*c))).collect();
                        let refs: Vec<(&TenantId, &str)> =
                            amounts.iter().map(|(t, a)| (*t, a.as_str())).collect();
                        let mut w = collected(&v, watermark, &refs);
                        match gap {
                            1 => w.complete = false,
                            2 => w.incomplete_tenants = vec![tenants[1].clone()],
                            _ => {}
                        }
                        commit(s, w).await;
                        watermark += Duration::hours(1);
                        now = now.max(watermark + Duration::minutes(5));
                    }
                    StatusOp::Late { tenant, days_back, hour: h, cents: c } => {
                        let day = watermark.date_naive() - Duration::days(i64::from(*days_back));
                        let start = day.and_hms_opt(*h, 0, 0).unwrap().and_utc();
                        s.write_entries(&[entry(&v, &tenants[*tenant], hour(start), &cents(*c))], "late")
                            .await
                            .unwrap();
                    }
                    StatusOp::Budget { tenant, euros, period, ahead } => {
                        let period = [BudgetPeriod::Monthly, BudgetPeriod::Quarterly, BudgetPeriod::Yearly][*period as usize];
                        let new = NewBudget {
                            amount: Money { amount: Decimal::from(*euros), currency: eur() },
                            period,
                            thresholds: Thresholds::parse(vec![50, 80, 100]).unwrap(),
                            effective_from: now + Duration::minutes(*ahead),
                        };
                        // The same tenant and instant twice is refused; the first one stays.
                        match s.set_budget(&ctx(), &tenants[*tenant], &new).await {
                            Ok(_) => {}
                            Err(e) => assert_eq!(conflict_code(&e), Some("already_exists"), "{e}"),
                        }
                    }
                    StatusOp::Clock { minutes } => now += Duration::minutes(*minutes),
                }
                refreshed_as_full(s, &mut cache, now, &p).await;
            }
            db.store.pool().close().await;
        });
    }

    /// The forecast mirrored in Rust equals the SQL function's, for any amounts and instants
    /// (including exact halves at the 7th place, and instants finer than a microsecond, which
    /// Postgres truncates).
    #[test]
    fn the_forecast_rule_equals_the_sql_function(
        cases in prop::collection::vec(
            (-10_000_000_000_000i64..10_000_000_000_000i64, 0..=12u32,
             -1_000_000_000_000i64..1_000_000_000_000i64, 0..=12u32,
             0..400 * 86_400_000_000i64, 0..400 * 86_400_000_000i64, 0..400 * 86_400_000_000i64,
             0..1_000u32),
            40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut conn = PgConnection::connect(&forecast_db_url().await).await.unwrap();
            let base = at(2026, 1, 1, 0);
            let mut all = cases.clone();
            // Halves: 0.0000005 over a window as long as the rest of the period, both signs.
            all.push((5, 7, 0, 2, 3_600_000_000, 3_600_000_000, 3_600_000_000, 0));
            all.push((-5, 7, 0, 2, 3_600_000_000, 3_600_000_000, 3_600_000_000, 0));
            all.push((15, 7, 0, 2, 1, 3, 3, 0));
            // The data's end less than a microsecond after the trailing window's start.
            all.push((15, 2, 100, 2, 1, 0, 3, 999));
            for (mantissa, scale, spent_mantissa, spent_scale, start_us, elapsed_us, remaining_us, nanos) in all {
                let trailing = Decimal::new(mantissa, scale);
                let spent = Decimal::new(spent_mantissa, spent_scale);
                let trailing_start = base + Duration::microseconds(start_us);
                let until = trailing_start + Duration::microseconds(elapsed_us) + Duration::nanoseconds(i64::from(nanos));
                let period_end = until + Duration::microseconds(remaining_us);
                let sql: Decimal = sqlx::query_scalar("select budgetd_budget_forecast($1, $2, $3, $4, $5)")
                    .bind(spent).bind(trailing).bind(until).bind(trailing_start).bind(period_end)
                    .fetch_one(&mut conn).await.unwrap();
                let rust = ledger::enforcement::forecast(spent, trailing, until, trailing_start, period_end);
                prop_assert_eq!(Some(sql), rust, "trailing {} over {} µs + {} ns, {} µs left", trailing, elapsed_us, nanos, remaining_us);
            }
            Ok(())
        })?;
    }
}

/// One migrated database for the forecast cases (they read no table), created on first use;
/// each case runs on its own runtime and connects anew.
async fn forecast_db_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if URL.get().is_none() {
        let db = fresh_database().await;
        db.store.pool().close().await;
        let _ = URL.set(db.url.clone());
    }
    URL.get().unwrap().clone()
}
