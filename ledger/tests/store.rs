//! The ledger store against a real Postgres: each test gets a fresh migrated database.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Duration, TimeZone, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::budget::{BudgetPeriod, NewBudget, Thresholds};
use ledger::currency::Currency;
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::money::Money;
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ledger::store::ChainStatus;
use ledger::tenant::{TenantId, TenantState};
use ledger::{Error, Store};
use proptest::prelude::*;
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection, Row};
use testkit::db::{fresh_database, TestDb};

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor {
            name: "test-admin".into(),
            role: "admin".into(),
        },
        request_id: "req-test".into(),
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn eur() -> Currency {
    Currency::parse("currency", "EUR").unwrap()
}

async fn tenant(store: &Store, id: &str) -> TenantId {
    testkit::db::create_tenant(store, id).await
}

async fn price_book(store: &Store, valid_from: DateTime<Utc>) -> PriceBookVersion {
    let rates: BTreeMap<_, _> = [
        ("cpu", "0.031"),
        ("memory", "0.004"),
        ("network_egress", "0.05"),
    ]
    .into_iter()
    .map(|(m, r)| (MeterName::parse("meter", m).unwrap(), dec(r)))
    .collect();
    let new = NewPriceBookVersion::new(valid_from, eur(), rates).unwrap();
    store.add_price_book_version(&ctx(), &new).await.unwrap()
}

fn window(start_secs: i64) -> Window {
    let start = Utc.timestamp_opt(start_secs, 0).unwrap();
    Window::new(start, start + Duration::seconds(300)).unwrap()
}

fn entry(
    version: &PriceBookVersion,
    tenant: &TenantId,
    meter: &str,
    w: Window,
    qty: &str,
) -> NewEntry {
    let meter = MeterName::parse("meter", meter).unwrap();
    let pricing = version
        .pricing(
            &meter,
            UnitName::parse("u", "core_hour").unwrap(),
            Decimal::from(3600),
        )
        .unwrap();
    NewEntry::new(
        EntryKey {
            tenant: tenant.clone(),
            meter,
            window: w,
        },
        dec(qty),
        UnitName::parse("u", "core_seconds").unwrap(),
        pricing,
    )
    .unwrap()
}

/// Everything a reader could observe of the ledger's balances, in a stable order.
async fn balances(db: &TestDb, prefix: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut out = Vec::new();
    for sql in [
        "select tenant_id || '|' || meter || '|' || window_start || '|' || sum(amount) || '|' || \
         count(*) filter (where kind = 'usage') from ledger_entries where tenant_id like $1 \
         group by tenant_id, meter, window_start order by 1",
        "select tenant_id || '|' || meter || '|' || window_start || '|' || amount || '|' || quantity \
         from ledger_live_entries where tenant_id like $1 order by 1",
        "select tenant_id || '|' || day || '|' || meter || '|' || quantity || '|' || amount || '|' || entries \
         from ledger_rollup_daily where tenant_id like $1 order by 1",
        "select tenant_id || '|' || month || '|' || amount || '|' || entries \
         from ledger_rollup_monthly where tenant_id like $1 order by 1",
    ] {
        let rows: Vec<String> = sqlx::query_scalar(sql)
            .bind(format!("{prefix}%"))
            .fetch_all(&mut conn)
            .await
            .unwrap();
        out.extend(rows);
        out.push("--".into());
    }
    out
}

/// Rollups equal the sums of the entries they cover.
async fn assert_rollups_match_entries(db: &TestDb) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mismatches: i64 = sqlx::query_scalar(
        "select count(*) from (
            select tenant_id, (window_start at time zone 'UTC')::date as day, meter, unit, currency,
                   sum(quantity) as quantity, sum(amount) as amount, count(*) as entries
            from ledger_entries group by 1, 2, 3, 4, 5
         ) e full join ledger_rollup_daily r using (tenant_id, day, meter, unit, currency)
         where e.amount is distinct from r.amount or e.quantity is distinct from r.quantity
            or e.entries is distinct from r.entries",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(mismatches, 0, "daily rollups differ from the entries");
    let mismatches: i64 = sqlx::query_scalar(
        "select count(*) from (
            select tenant_id, date_trunc('month', window_start at time zone 'UTC')::date as month,
                   currency, sum(amount) as amount, count(*) as entries
            from ledger_entries group by 1, 2, 3
         ) e full join ledger_rollup_monthly r using (tenant_id, month, currency)
         where e.amount is distinct from r.amount or e.entries is distinct from r.entries",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(mismatches, 0, "monthly rollups differ from the entries");
    let mismatches: i64 = sqlx::query_scalar(
        "select count(*) from (
            select tenant_id, (window_start at time zone 'UTC')::date as day, currency,
                   sum(amount) as amount, count(*) as entries
            from ledger_entries group by 1, 2, 3
         ) e full join ledger_rollup_tenant_daily r using (tenant_id, day, currency)
         where e.amount is distinct from r.amount or e.entries is distinct from r.entries",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        mismatches, 0,
        "per-tenant daily rollups differ from the entries"
    );
}

#[tokio::test]
async fn rewriting_a_window_is_a_no_op() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    let batch: Vec<_> = (0..10)
        .map(|i| entry(&v, &acme, "cpu", window(1_800_000_000 + 300 * i), "300"))
        .collect();
    let first = db.store.write_entries(&batch, "test").await.unwrap();
    assert_eq!(
        (first.inserted, first.unchanged, first.conflicts.len()),
        (10, 0, 0)
    );
    let before = balances(&db, "acme").await;
    let again = db.store.write_entries(&batch, "test").await.unwrap();
    assert_eq!(
        (again.inserted, again.unchanged, again.conflicts.len()),
        (0, 10, 0)
    );
    assert_eq!(balances(&db, "acme").await, before);
    // 10 windows × 300 core-seconds at 0.031 per core-hour
    let costs = db
        .store
        .daily_costs(
            Some(&acme),
            chrono::NaiveDate::from_ymd_opt(2027, 1, 1).unwrap(),
            chrono::NaiveDate::from_ymd_opt(2027, 2, 1).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(costs.len(), 1);
    assert_eq!(costs[0].quantity, dec("3000"));
    assert_eq!(costs[0].amount, dec("0.02583333333"));
    assert_rollups_match_entries(&db).await;
}

#[tokio::test]
async fn a_differing_rewrite_is_a_recorded_conflict_and_the_original_stays() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    let w = window(1_800_000_000);
    db.store
        .write_entries(&[entry(&v, &acme, "cpu", w, "300")], "test")
        .await
        .unwrap();
    let before = balances(&db, "acme").await;
    let report = db
        .store
        .write_entries(&[entry(&v, &acme, "cpu", w, "450")], "test")
        .await
        .unwrap();
    assert_eq!(report.inserted, 0);
    assert_eq!(report.conflicts.len(), 1);
    let c = &report.conflicts[0];
    assert_eq!(
        (c.live_quantity, c.attempted_quantity),
        (dec("300"), dec("450"))
    );
    assert_eq!(balances(&db, "acme").await, before);
    let recorded: i64 =
        sqlx::query_scalar("select count(*) from ledger_conflicts where attempted_quantity = 450")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(recorded, 1);
    // Reporting the same conflict again does not record it twice.
    db.store
        .write_entries(&[entry(&v, &acme, "cpu", w, "450")], "test")
        .await
        .unwrap();
    let recorded: i64 = sqlx::query_scalar("select count(*) from ledger_conflicts")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(recorded, 1);
}

#[tokio::test]
async fn corrections_reverse_and_replace_so_each_key_sums_to_one_live_amount() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    let (w1, w2, w3) = (
        window(1_800_000_000),
        window(1_800_000_300),
        window(1_800_000_600),
    );
    db.store
        .write_entries(
            &[
                entry(&v, &acme, "cpu", w1, "300"),
                entry(&v, &acme, "cpu", w2, "600"),
            ],
            "test",
        )
        .await
        .unwrap();
    let report = db
        .store
        .correct_entries(
            &[
                entry(&v, &acme, "cpu", w1, "360"), // differs: reversed and replaced
                entry(&v, &acme, "cpu", w2, "600"), // matches
                entry(&v, &acme, "cpu", w3, "3600"), // missing: inserted
            ],
            "recollected",
            "test",
        )
        .await
        .unwrap();
    assert_eq!(
        (report.corrected, report.unchanged, report.inserted),
        (1, 1, 1)
    );
    // Correcting again changes nothing.
    let again = db
        .store
        .correct_entries(&[entry(&v, &acme, "cpu", w1, "360")], "recollected", "test")
        .await
        .unwrap();
    assert_eq!((again.corrected, again.unchanged), (0, 1));

    let rows = sqlx::query(
        "select kind, revision, quantity, amount from ledger_entries where window_start = $1 order by id",
    )
    .bind(w1.start())
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let seen: Vec<(String, i32, Decimal)> = rows
        .iter()
        .map(|r| (r.get("kind"), r.get("revision"), r.get("quantity")))
        .collect();
    assert_eq!(
        seen,
        vec![
            ("usage".into(), 1, dec("300")),
            ("reversal".into(), 1, dec("-300")),
            ("usage".into(), 2, dec("360")),
        ]
    );
    let (sum, live): (Decimal, Decimal) = sqlx::query_as(
        "select (select sum(amount) from ledger_entries where window_start = $1), \
                (select amount from ledger_live_entries where window_start = $1)",
    )
    .bind(w1.start())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(sum, live);
    assert_eq!(live, dec("0.0031"));
    assert_rollups_match_entries(&db).await;
}

async fn expect_sql_error(db: &TestDb, sql: &str, code: &str) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let result = match sqlx::query(sql).execute(&mut *tx).await {
        Ok(_) => tx.commit().await.map(|_| ()),
        Err(e) => Err(e),
    };
    let err = result.expect_err(sql);
    let db_err = err
        .as_database_error()
        .unwrap_or_else(|| panic!("{sql}: {err}"));
    assert_eq!(db_err.code().as_deref(), Some(code), "{sql}: {db_err}");
}

#[tokio::test]
async fn the_database_enforces_the_ledger_invariants() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    let w = window(1_800_000_000);
    db.store
        .write_entries(&[entry(&v, &acme, "cpu", w, "300")], "test")
        .await
        .unwrap();
    let ws = "'2027-01-15 08:00:00+00'"; // 1_800_000_000
    let we = "'2027-01-15 08:05:00+00'";
    let cols = "tenant_id, meter, window_start, window_end, revision, kind, quantity, unit, \
                price_version, rate, price_unit, units_per_price_unit, amount, currency, source";
    let id = v.id;

    // entries are immutable
    expect_sql_error(&db, "update ledger_entries set quantity = 1", "42501").await;
    expect_sql_error(&db, "delete from ledger_entries", "42501").await;
    expect_sql_error(&db, "truncate ledger_entries cascade", "42501").await;
    // a second live entry for the key
    expect_sql_error(&db, &format!("insert into ledger_entries ({cols}) values ('acme', 'cpu', {ws}, {we}, 1, 'usage', 1, 'core_seconds', {id}, 0.031, 'core_hour', 3600, 0.000008611111, 'EUR', 'sql')"), "23505").await;
    // a new revision without reversing the live one
    expect_sql_error(&db, &format!("insert into ledger_entries ({cols}) values ('acme', 'cpu', {ws}, {we}, 2, 'usage', 1, 'core_seconds', {id}, 0.031, 'core_hour', 3600, 0.000008611111, 'EUR', 'sql')"), "23000").await;
    // a reversal that does not negate the live entry exactly
    expect_sql_error(&db, &format!("insert into ledger_entries ({cols}) values ('acme', 'cpu', {ws}, {we}, 1, 'reversal', -299, 'core_seconds', {id}, 0.031, 'core_hour', 3600, -0.002574722222, 'EUR', 'sql')"), "23000").await;
    // an amount that is not quantity × rate
    expect_sql_error(&db, &format!("insert into ledger_entries ({cols}) values ('acme', 'cpu', '2027-02-01', '2027-02-01 00:05', 1, 'usage', 3600, 'core_seconds', {id}, 0.031, 'core_hour', 3600, 0.032, 'EUR', 'sql')"), "23514").await;
    // a rate that is not the price book's
    expect_sql_error(&db, &format!("insert into ledger_entries ({cols}) values ('acme', 'cpu', '2027-02-01', '2027-02-01 00:05', 1, 'usage', 3600, 'core_seconds', {id}, 0.05, 'core_hour', 3600, 0.05, 'EUR', 'sql')"), "23503").await;
    // a price-book version that priced entries is immutable
    expect_sql_error(
        &db,
        &format!("update price_book_rates set rate = 1 where version_id = {id}"),
        "23000",
    )
    .await;
    expect_sql_error(
        &db,
        &format!("delete from price_book_rates where version_id = {id}"),
        "23000",
    )
    .await;
    // thresholds out of order
    expect_sql_error(&db, "insert into budgets (tenant_id, amount, currency, period, thresholds, effective_from, created_at, created_by) values ('acme', 10, 'EUR', 'monthly', '{80,50}', now(), now(), 'sql')", "23514").await;
    // the audit log is append-only
    expect_sql_error(&db, "update audit_log set actor = 'x'", "42501").await;
    expect_sql_error(&db, "delete from audit_log", "42501").await;

    // An unused version may still be removed by hand.
    let unused = price_book(&db.store, Utc.timestamp_opt(86_400, 0).unwrap()).await;
    sqlx::query("delete from price_book_rates where version_id = $1")
        .bind(unused.id)
        .execute(db.store.pool())
        .await
        .unwrap();
}

#[tokio::test]
async fn price_book_version_at_picks_the_latest_valid_version() {
    let db = fresh_database().await;
    let t0 = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let t1 = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
    let v0 = price_book(&db.store, t0).await;
    let v1 = price_book(&db.store, t1).await;
    let at = |t| db.store.price_book_version_at(t);
    assert_eq!(at(t0 - Duration::seconds(1)).await.unwrap(), None);
    assert_eq!(at(t0).await.unwrap().unwrap().id, v0.id);
    assert_eq!(
        at(t1 - Duration::seconds(1)).await.unwrap().unwrap().id,
        v0.id
    );
    assert_eq!(at(t1).await.unwrap().unwrap().id, v1.id);
    assert_eq!(
        v1.rates[&MeterName::parse("m", "cpu").unwrap()],
        dec("0.031")
    );
    let again = NewPriceBookVersion::new(t1, eur(), v1.rates.clone()).unwrap();
    assert!(matches!(
        db.store.add_price_book_version(&ctx(), &again).await,
        Err(Error::Conflict {
            code: "already_exists",
            ..
        })
    ));
    assert_eq!(db.store.list_price_book_versions().await.unwrap().len(), 2);
}

#[tokio::test]
async fn tenant_lifecycle_writes_audit_and_outbox_in_the_same_transaction() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let s = &db.store;
    s.transition_tenant(&ctx(), &acme, TenantState::Suspended, "over budget")
        .await
        .unwrap();
    s.transition_tenant(&ctx(), &acme, TenantState::Active, "budget raised")
        .await
        .unwrap();
    // the same state again is a no-op
    s.transition_tenant(&ctx(), &acme, TenantState::Active, "again")
        .await
        .unwrap();
    s.transition_tenant(&ctx(), &acme, TenantState::Offboarding, "contract ended")
        .await
        .unwrap();
    let err = s
        .transition_tenant(&ctx(), &acme, TenantState::Active, "undo")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                code: "invalid_transition",
                ..
            }
        ),
        "{err}"
    );
    let events: Vec<String> = sqlx::query_scalar("select event_type from outbox order by id")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert_eq!(
        events,
        [
            "tenant.created",
            "tenant.suspended",
            "tenant.resumed",
            "tenant.offboarding"
        ]
    );
    let actions: Vec<String> = sqlx::query_scalar("select action from audit_log order by seq")
        .fetch_all(s.pool())
        .await
        .unwrap();
    assert_eq!(
        actions,
        [
            "tenant.create",
            "tenant.suspended",
            "tenant.active",
            "tenant.offboarding"
        ]
    );
    assert_eq!(
        s.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { records: 4 }
    );
}

#[tokio::test]
async fn tampering_with_the_audit_log_breaks_the_chain_at_that_record() {
    let db = fresh_database().await;
    for id in ["a", "b", "c"] {
        tenant(&db.store, id).await;
    }
    assert_eq!(
        db.store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { records: 3 }
    );
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    // Bypassing the append-only trigger takes a superuser; the chain still shows it.
    sqlx::query("set session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update audit_log set actor = 'mallory' where seq = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    match db.store.verify_audit_chain().await.unwrap() {
        ChainStatus::Broken(link) => assert_eq!(link.seq, 2, "{}", link.reason),
        intact => panic!("tampering not found: {intact:?}"),
    }
}

#[tokio::test]
async fn finance_role_reads_the_views_and_nothing_else() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    // The budget status view reads Postgres' wall clock: a window that counts in this month.
    let now = Utc::now();
    let this_window = window(testkit::clock::recent_window(now, 300).0.timestamp());
    db.store
        .write_entries(&[entry(&v, &acme, "cpu", this_window, "3600")], "test")
        .await
        .unwrap();
    let budget = NewBudget {
        amount: Money {
            amount: dec("100.00"),
            currency: eur(),
        },
        period: BudgetPeriod::Monthly,
        thresholds: Thresholds::parse(vec![50, 80, 100]).unwrap(),
        effective_from: now - Duration::days(40),
    };
    db.store.set_budget(&ctx(), &acme, &budget).await.unwrap();

    let role = format!("fin_{}", db.name);
    sqlx::query(&format!("create role {role} login in role budgetd_finance"))
        .execute(db.store.pool())
        .await
        .unwrap();
    let finance_url = db.url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(
        finance_url, db.url,
        "test cluster URL must name the postgres user"
    );
    let mut fin = PgConnection::connect(&finance_url).await.unwrap();

    let daily: Vec<(String, Decimal, String)> =
        sqlx::query_as("select tenant_id, amount, currency from finance.tenant_costs_daily")
            .fetch_all(&mut fin)
            .await
            .unwrap();
    assert_eq!(daily, vec![("acme".into(), dec("0.031"), "EUR".into())]);
    let monthly: Vec<(String, Decimal)> =
        sqlx::query_as("select tenant_id, amount from finance.tenant_costs_monthly")
            .fetch_all(&mut fin)
            .await
            .unwrap();
    assert_eq!(monthly, vec![("acme".into(), dec("0.031"))]);
    let status: (String, Decimal, Decimal, String) = sqlx::query_as(
        "select tenant_id, budget_amount, spent_amount, currency from finance.budget_status",
    )
    .fetch_one(&mut fin)
    .await
    .unwrap();
    assert_eq!(
        status,
        ("acme".into(), dec("100.00"), dec("0.031"), "EUR".into())
    );

    for sql in [
        "select count(*) from ledger_entries",
        "select count(*) from tenants",
        "select count(*) from audit_log",
        "select count(*) from ledger_rollup_daily",
        "insert into tenants (id, display_name, owner, data_residency, state, created_at, updated_at, state_changed_at) values ('x', 'x', 'x', 'eu', 'active', now(), now(), now())",
        "delete from finance.tenant_costs_daily",
        "update budgets set amount = 0",
        "create table public.sneaky (id int)",
        "create table finance.sneaky (id int)",
    ] {
        let err = sqlx::query(sql).execute(&mut fin).await.expect_err(sql);
        assert_eq!(
            err.as_database_error().and_then(|e| e.code()).as_deref(),
            Some("42501"),
            "{sql}: {err}"
        );
    }
}

/// A small key space so that generated batches collide often.
fn arb_entries() -> impl Strategy<Value = Vec<(usize, usize, i64, u32)>> {
    prop::collection::btree_map((0..3usize, 0..2usize, 0..4i64), 0..5_000_000u32, 1..20)
        .prop_map(|m| m.into_iter().map(|((t, m, w), q)| (t, m, w, q)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Writing any set of entries N times, in any order and interleaving (including concurrent
    /// writers), gives the balances and rollups of writing it once.
    #[test]
    fn writes_are_idempotent_in_any_order_and_interleaving(
        set in arb_entries(),
        copies in 1..4usize,
        seed in any::<u64>(),
        writers in 1..4usize,
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let db = shared_db().await;
            let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let (once, many) = (format!("o{case}-"), format!("m{case}-"));
            let v = shared_version(&db.store).await;
            let mut tenants = Vec::new();
            for t in 0..3 {
                tenants.push((tenant(&db.store, &format!("{once}{t}")).await, tenant(&db.store, &format!("{many}{t}")).await));
            }
            let meters = ["cpu", "memory"];
            let build = |second: bool| -> Vec<NewEntry> {
                set.iter().map(|&(t, m, w, q)| {
                    let id = if second { &tenants[t].1 } else { &tenants[t].0 };
                    // spread windows over a day boundary so both rollup days are exercised
                    entry(&v, id, meters[m], window(1_800_021_600 + 21_600 * w), &format!("{}.{:03}", q / 1000, q % 1000))
                }).collect()
            };
            let reference = build(false);
            db.store.write_entries(&reference, "once").await.unwrap();

            // N copies, shuffled deterministically by the seed, dealt to concurrent writers in
            // random batch sizes.
            let mut all: Vec<NewEntry> = (0..copies).flat_map(|_| build(true)).collect();
            let mut state = seed | 1;
            for i in (1..all.len()).rev() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                all.swap(i, (state % (i as u64 + 1)) as usize);
            }
            let mut queues: Vec<Vec<Vec<NewEntry>>> = vec![Vec::new(); writers];
            let mut rest = all.as_slice();
            let mut k = 0;
            while !rest.is_empty() {
                state ^= state << 13; state ^= state >> 7; state ^= state << 17;
                let n = 1 + (state % 7) as usize;
                let (batch, tail) = rest.split_at(n.min(rest.len()));
                queues[k % writers].push(batch.to_vec());
                rest = tail;
                k += 1;
            }
            let results = futures_join(queues.into_iter().map(|batches| {
                let store = db.store.clone();
                async move {
                    let mut conflicts = 0;
                    for b in batches { conflicts += store.write_entries(&b, "many").await.unwrap().conflicts.len(); }
                    conflicts
                }
            })).await;
            assert_eq!(results.iter().sum::<usize>(), 0, "identical writes never conflict");

            let strip = |rows: Vec<String>, prefix: &str| rows.into_iter().map(|r| r.replacen(prefix, "", 1)).collect::<Vec<_>>();
            let a = strip(balances(&db, &once).await, &once);
            let b = strip(balances(&db, &many).await, &many);
            assert_eq!(a, b);
            assert_rollups_match_entries(&db).await;
            db.store.pool().close().await;
        });
    }

    /// The same key with a different quantity is reported and recorded; the original stays.
    #[test]
    fn a_different_quantity_never_overwrites(q1 in 0..1_000_000u32, q2 in 0..1_000_000u32) {
        prop_assume!(q1 != q2);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let db = shared_db().await;
            let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let v = shared_version(&db.store).await;
            let t = tenant(&db.store, &format!("c{case}")).await;
            let w = window(1_800_000_000);
            db.store.write_entries(&[entry(&v, &t, "cpu", w, &q1.to_string())], "first").await.unwrap();
            let report = db.store.write_entries(&[entry(&v, &t, "cpu", w, &q2.to_string())], "second").await.unwrap();
            assert_eq!(report.inserted, 0);
            assert_eq!(report.conflicts.len(), 1);
            assert_eq!(report.conflicts[0].live_quantity, Decimal::from(q1));
            let live: Vec<Decimal> = sqlx::query_scalar("select quantity from ledger_live_entries where tenant_id = $1")
                .bind(t.as_str()).fetch_all(db.store.pool()).await.unwrap();
            assert_eq!(live, vec![Decimal::from(q1)]);
            let recorded: Decimal = sqlx::query_scalar("select c.attempted_quantity from ledger_conflicts c join ledger_entries e on e.id = c.entry_id where e.tenant_id = $1")
                .bind(t.as_str()).fetch_one(db.store.pool()).await.unwrap();
            assert_eq!(recorded, Decimal::from(q2));
            db.store.pool().close().await;
        });
    }
}

static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Property cases share one database (each case uses its own tenants), created on first use.
/// Each case runs on its own runtime, so the store is rebuilt per case from the shared URL.
async fn shared_db() -> TestDb {
    static URL: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    if URL.get().is_none() {
        let db = fresh_database().await;
        let _ = URL.set((db.name.clone(), db.url.clone()));
    }
    let (name, url) = URL.get().unwrap().clone();
    let store = Store::connect(&testkit::db::store_config(&url))
        .await
        .unwrap();
    TestDb { name, url, store }
}

async fn shared_version(store: &Store) -> PriceBookVersion {
    match store.price_book_version_at(Utc::now()).await.unwrap() {
        Some(v) => v,
        None => {
            let t0 = Utc.timestamp_opt(0, 0).unwrap();
            let rates: BTreeMap<_, _> = [("cpu", "0.031"), ("memory", "0.004")]
                .into_iter()
                .map(|(m, r)| (MeterName::parse("meter", m).unwrap(), dec(r)))
                .collect();
            let new = NewPriceBookVersion::new(t0, eur(), rates).unwrap();
            match store.add_price_book_version(&ctx(), &new).await {
                Ok(v) => v,
                Err(_) => store
                    .price_book_version_at(Utc::now())
                    .await
                    .unwrap()
                    .unwrap(),
            }
        }
    }
}

async fn futures_join<F: std::future::Future<Output = usize> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<usize> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
