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
use ledger::store::{ChainStatus, MIGRATOR};
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

/// An entry of `meter` in core-seconds, priced per core-hour.
fn entry(
    version: &PriceBookVersion,
    tenant: &TenantId,
    meter: &str,
    w: Window,
    qty: &str,
) -> NewEntry {
    priced_entry(version, tenant, meter, w, qty, CORE_HOUR)
}

/// The price units of the tests: (unit, price unit, units per price unit).
const CORE_HOUR: (&str, &str, &str) = ("core_seconds", "core_hour", "3600");
const CORE_MINUTE: (&str, &str, &str) = ("core_seconds", "core_minute", "60");
/// 2^30 bytes × 3600 s: byte-seconds in a GiB-hour.
const GIB_HOUR: (&str, &str, &str) = ("byte_seconds", "gib_hour", "3865470566400");
const GPU_HOUR: (&str, &str, &str) = ("gpu_seconds", "gpu_hour", "3600");

/// An entry of `meter` in `units` (unit, price unit, units per price unit).
fn priced_entry(
    version: &PriceBookVersion,
    tenant: &TenantId,
    meter: &str,
    w: Window,
    qty: &str,
    (unit, price_unit, per): (&str, &str, &str),
) -> NewEntry {
    let meter = MeterName::parse("meter", meter).unwrap();
    let pricing = version
        .pricing(&meter, UnitName::parse("u", price_unit).unwrap(), dec(per))
        .unwrap();
    NewEntry::new(
        EntryKey {
            tenant: tenant.clone(),
            meter,
            window: w,
        },
        dec(qty),
        UnitName::parse("u", unit).unwrap(),
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
         count(*) filter (where kind = 'usage') from ledger_entry_details where tenant_id like $1 \
         group by tenant_id, meter, window_start order by 1",
        "select tenant_id || '|' || meter || '|' || window_start || '|' || amount || '|' || quantity \
         from ledger_live_entries where tenant_id like $1 order by 1",
        "select tenant_id || '|' || day || '|' || meter || '|' || price_unit || '|' || units_per_price_unit \
                || '|' || quantity || '|' || amount || '|' || entries \
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
                   price_unit, units_per_price_unit,
                   sum(quantity) as quantity, sum(amount) as amount, count(*) as entries
            from ledger_entry_details group by 1, 2, 3, 4, 5, 6, 7
         ) e full join ledger_rollup_daily r
             using (tenant_id, day, meter, unit, currency, price_unit, units_per_price_unit)
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
            from ledger_entry_details group by 1, 2, 3
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
            from ledger_entry_details group by 1, 2, 3
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
        "select kind, revision, quantity, amount from ledger_entry_details where window_start = $1 \
         order by revision, kind desc",
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
        "select (select sum(amount) from ledger_entry_details where window_start = $1), \
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
    let id = v.id;
    // A row of the compact table for acme's cpu: window start, seq (2 × revision, + 1 for a
    // reversal), quantity, amount, and optionally another meter.
    let row = |table: &str, start: &str, seq: i32, quantity: &str, amount: &str, meter: &str| {
        format!(
            "insert into {table} (window_start, tenant_key, price_version, meter_key, unit_key, \
                                  window_key, seq, source_key, quantity, amount) \
             select {start}, t.tenant_key, {id}, budgetd_meter_key('{meter}'), u.unit_key, \
                    budgetd_window_key(300), {seq}, budgetd_source_key('sql'), {quantity}, \
                    {amount} \
             from tenants t, ledger_units u \
             where t.id = 'acme' and u.unit = 'core_seconds' and u.price_unit = 'core_hour'"
        )
    };
    let feb = "'2027-02-01 00:00:00+00'";

    // entries are immutable, through the table and through a month's partition
    expect_sql_error(&db, "update ledger_entries set quantity = 1", "42501").await;
    expect_sql_error(&db, "delete from ledger_entries", "42501").await;
    expect_sql_error(&db, "truncate ledger_entries cascade", "42501").await;
    expect_sql_error(
        &db,
        "update ledger_entries_p202701 set quantity = 1",
        "42501",
    )
    .await;
    expect_sql_error(&db, "delete from ledger_entries_p202701", "42501").await;
    expect_sql_error(&db, "truncate ledger_entries_p202701", "42501").await;
    // a second live entry for the key
    expect_sql_error(
        &db,
        &row("ledger_entries", ws, 2, "1", "0.000008611111", "cpu"),
        "23505",
    )
    .await;
    // a new revision without reversing the live one
    expect_sql_error(
        &db,
        &row("ledger_entries", ws, 4, "1", "0.000008611111", "cpu"),
        "23000",
    )
    .await;
    // a reversal that does not negate the live entry exactly
    expect_sql_error(
        &db,
        &row("ledger_entries", ws, 3, "-299", "-0.002574722222", "cpu"),
        "23000",
    )
    .await;
    // an amount that is not quantity × the version's rate, also straight into a partition
    expect_sql_error(
        &db,
        &row("ledger_entries", feb, 2, "3600", "0.032", "cpu"),
        "23514",
    )
    .await;
    expect_sql_error(
        &db,
        &row(
            "ledger_entries_p202701",
            "'2027-01-15 08:05:00+00'",
            2,
            "3600",
            "0.032",
            "cpu",
        ),
        "23514",
    )
    .await;
    // a meter the version does not price
    expect_sql_error(
        &db,
        &row("ledger_entries", feb, 2, "3600", "0.031", "ghost"),
        "23503",
    )
    .await;
    // a usage entry with a negative quantity
    expect_sql_error(
        &db,
        &row("ledger_entries", feb, 2, "-3600", "-0.031", "cpu"),
        "23514",
    )
    .await;
    // a window whose month has no partition (the write path creates it first)
    expect_sql_error(
        &db,
        &row("ledger_entries", "'2031-05-01'", 2, "3600", "0.031", "cpu"),
        "23514",
    )
    .await;
    // partitions start on the first of a month
    expect_sql_error(
        &db,
        "select budgetd_ensure_ledger_partition('2027-03-02')",
        "22023",
    )
    .await;
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

/// What the API refuses (issue 9), the tables refuse too: a budget of zero, and free text
/// that is not one line (control characters, line separators, bidi controls).
#[tokio::test]
async fn the_database_refuses_zero_budgets_and_text_that_is_not_one_line() {
    let db = fresh_database().await;
    tenant(&db.store, "acme").await;
    let budget = |amount: &str| {
        format!(
            "insert into budgets (tenant_id, amount, currency, period, thresholds, \
             effective_from, created_at, created_by) \
             values ('acme', {amount}, 'EUR', 'monthly', '{{50,80,100}}', now(), now(), 'sql')"
        )
    };
    for amount in ["0", "-0.00", "-1"] {
        expect_sql_error(&db, &budget(amount), "23514").await;
    }
    for text in [
        r"E'a\nb'",
        r"E'a\rb'",
        r"E'\u001b[2J'",
        r"E'bell\u0007'",
        r"E'nel\u0085'",
        r"E'ls\u2028'",
        r"E'rlo\u202e'",
        r"E'pdi\u2069'",
    ] {
        for column in ["display_name", "owner"] {
            expect_sql_error(
                &db,
                &format!("update tenants set {column} = {text} where id = 'acme'"),
                "23514",
            )
            .await;
        }
        expect_sql_error(
            &db,
            &format!(
                "insert into enforcement_exemptions (tenant_id, until, reason, created_by, \
                 created_at) values ('acme', now(), {text}, 'sql', now())"
            ),
            "23514",
        )
        .await;
    }
    // One line of any script is fine.
    sqlx::query("update tenants set display_name = 'Café – 東京 ✓ =1+1' where id = 'acme'")
        .execute(db.store.pool())
        .await
        .unwrap();
    sqlx::query(&budget("0.01"))
        .execute(db.store.pool())
        .await
        .unwrap();
}

/// The input-rules migration checks the tenants now (the store reads every tenant row with
/// the one-line rule): it stops and names the tenants to fix, and runs once they are fixed.
/// Budgets and exemptions are history: the rules hold for new rows only.
#[tokio::test]
async fn the_input_rules_migration_names_the_tenants_to_fix_and_keeps_history() {
    const INPUT_RULES: i64 = 20261201173000;
    let (_, mut conn) = database_before(INPUT_RULES).await;
    sqlx::raw_sql(
        r"insert into tenants (id, display_name, owner, data_residency, state, created_at,
                              updated_at, state_changed_at)
             values ('acme', E'Acme\u2028Corp', 'o', 'eu', 'active', now(), now(), now()),
                    ('beta', 'Beta', 'o', 'eu', 'active', now(), now(), now()),
                    ('globex', 'Globex', E'\u202eops', 'eu', 'active', now(), now(), now());
         insert into budgets (tenant_id, amount, currency, period, thresholds, effective_from,
                              created_at, created_by)
             values ('beta', 0, 'EUR', 'monthly', '{50,80,100}', now(), now(), 'old');
         insert into enforcement_exemptions (tenant_id, until, reason, created_by, created_at)
             values ('beta', now(), E'two\nlines', 'old', now());",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let error = MIGRATOR.run(&mut conn).await.unwrap_err().to_string();
    assert!(error.contains("tenants acme, globex"), "{error}");
    sqlx::raw_sql(
        "update tenants set display_name = 'Acme Corp' where id = 'acme';
         update tenants set owner = 'ops' where id = 'globex';",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    MIGRATOR.run(&mut conn).await.unwrap();
    let kept: (i64, i64) = sqlx::query_as(
        "select (select count(*) from budgets where amount = 0), \
                (select count(*) from enforcement_exemptions where reason like E'%\n%')",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(kept, (1, 1));
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
    match &err {
        Error::Transition { id, refused } => {
            assert_eq!(id, "acme");
            assert_eq!(refused.current, TenantState::Offboarding);
            assert_eq!(refused.allowed, [TenantState::Offboarded]);
        }
        other => panic!("{other}"),
    }
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
        "delete from finance.tenant_costs_monthly",
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
    // The daily view reads a view that joins the names in, so it cannot take a delete at all
    // (refused before privileges are checked).
    let err = sqlx::query("delete from finance.tenant_costs_daily")
        .execute(&mut fin)
        .await
        .expect_err("a delete from the daily costs");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("55000"),
        "{err}"
    );
}

/// A connection as a login role granted `budgetd_finance`, as finance's tools and Grafana
/// connect.
async fn finance_connection(db: &TestDb) -> PgConnection {
    let role = format!("fin_{}", db.name);
    sqlx::query(&format!("create role {role} login in role budgetd_finance"))
        .execute(db.store.pool())
        .await
        .unwrap();
    PgConnection::connect(&db.url.replacen("postgres@", &format!("{role}@"), 1))
        .await
        .unwrap()
}

/// The rows of `sql`, a query of one text column, in byte order.
/// A new database migrated up to (not including) migration `version`: the schema an earlier
/// budgetd left. Its URL and a connection.
async fn database_before(version: i64) -> (String, PgConnection) {
    use sqlx::migrate::Migrator;

    assert!(MIGRATOR.iter().any(|m| m.version == version));
    let admin = testkit::db::admin_url();
    let name = format!(
        "budgetd_test_before_{version}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap()
    );
    let mut conn = PgConnection::connect(&admin).await.unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let url = testkit::db::with_database(&admin, &name);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let before = Migrator {
        migrations: MIGRATOR
            .iter()
            .filter(|m| m.version < version)
            .cloned()
            .collect(),
        ..Migrator::DEFAULT
    };
    before.run(&mut conn).await.unwrap();
    (url, conn)
}

async fn text_rows(conn: &mut PgConnection, sql: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "select r from ({sql}) as x(r) order by r collate \"C\""
    ))
    .fetch_all(conn)
    .await
    .unwrap()
}

/// A row of `finance.tenant_costs_daily`, as text: `tenant | day | meter | quantity unit |
/// priced_quantity price_unit | amount currency`.
const DAILY_ROW: &str = "select concat_ws(' | ', tenant_id, day, meter, quantity || ' ' || unit, \
                                priced_quantity || ' ' || price_unit, amount || ' ' || currency) \
                         from finance.tenant_costs_daily";

/// A row of `finance.unallocated_daily`, as text: `day | key | key_kind | meter | quantity unit
/// | priced_quantity price_unit | amount currency`, NULL spelt out.
const UNALLOCATED_ROW: &str =
    "select concat_ws(' | ', day, namespace_or_label, key_kind, meter, quantity || ' ' || unit, \
                      coalesce(priced_quantity::text, 'NULL') || ' ' || coalesce(price_unit, 'NULL'), \
                      coalesce(amount::text, 'NULL') || ' ' || coalesce(currency, 'NULL')) \
     from finance.unallocated_daily";

#[tokio::test]
async fn the_finance_views_keep_their_contract_columns_and_append_new_ones() {
    let db = fresh_database().await;
    let mut fin = finance_connection(&db).await;
    for (view, columns) in [
        (
            "tenant_costs_daily",
            "tenant_id day meter quantity unit amount currency priced_quantity price_unit",
        ),
        (
            "unallocated_daily",
            "day namespace_or_label meter quantity unit \
             key_kind priced_quantity price_unit amount currency",
        ),
    ] {
        let names: Vec<String> = sqlx::query_scalar(
            "select column_name::text from information_schema.columns \
             where table_schema = 'finance' and table_name = $1 order by ordinal_position",
        )
        .bind(view)
        .fetch_all(&mut fin)
        .await
        .unwrap();
        assert_eq!(names.join(" "), columns, "finance.{view}");
    }
}

#[tokio::test]
async fn the_finance_daily_view_shows_quantities_in_their_price_unit() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let globex = tenant(&db.store, "globex").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    // 2027-01-15, 08:00 UTC on: every window on one UTC day.
    let t = 1_800_000_000;
    let entries = [
        priced_entry(&v, &acme, "cpu", window(t), "7200", CORE_HOUR),
        // The meter's price unit changed during the day: a row of its own, converted exactly.
        priced_entry(&v, &acme, "cpu", window(t + 300), "120", CORE_MINUTE),
        priced_entry(&v, &acme, "memory", window(t), "11596411699200", GIB_HOUR),
        priced_entry(&v, &globex, "cpu", window(t), "300", CORE_HOUR),
        priced_entry(&v, &globex, "cpu", window(t + 300), "300", CORE_HOUR),
    ];
    db.store.write_entries(&entries, "test").await.unwrap();
    assert_rollups_match_entries(&db).await;

    let mut fin = finance_connection(&db).await;
    let rows = text_rows(&mut fin, DAILY_ROW).await;
    assert_eq!(
        rows,
        [
            "acme | 2027-01-15 | cpu | 120 core_seconds | 2 core_minute | 0.062 EUR",
            // 7200 core-seconds at 3600 per core-hour: 2 core-hours, at 0.031
            "acme | 2027-01-15 | cpu | 7200 core_seconds | 2 core_hour | 0.062 EUR",
            // 3 GiB-hours at 0.004
            "acme | 2027-01-15 | memory | 11596411699200 byte_seconds | 3 gib_hour | 0.012 EUR",
            // 600 core-seconds are 1/6 core-hour: 12 places, exact NUMERIC
            "globex | 2027-01-15 | cpu | 600 core_seconds | 0.166666666667 core_hour | 0.005166666666 EUR",
        ]
    );

    // The cost report reads the same figures.
    let day = chrono::NaiveDate::from_ymd_opt(2027, 1, 15).unwrap();
    let mut from_store: Vec<String> = db
        .store
        .daily_costs(None, day, day.succ_opt().unwrap())
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            format!(
                "{} | {} | {} | {} {} | {} {} | {} {}",
                c.tenant,
                c.day,
                c.meter,
                c.quantity,
                c.unit,
                c.priced_quantity,
                c.price_unit,
                c.amount,
                c.currency
            )
        })
        .collect();
    from_store.sort();
    assert_eq!(from_store, rows);
}

#[tokio::test]
async fn the_finance_unallocated_view_prices_usage_and_says_what_its_key_is() {
    use ledger::usage::{CollectedWindow, CommitMode, UnallocatedReason, UnallocatedUsage};
    use UnallocatedReason::{NoTenantLabel, UnknownTenant};

    let db = fresh_database().await;
    let t = 1_800_000_000;
    let v1 = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    // From the day's third window on, cpu costs twice as much. No version has a gpu rate.
    let rates = [("cpu", "0.062"), ("memory", "0.004")]
        .into_iter()
        .map(|(m, r)| (MeterName::parse("meter", m).unwrap(), dec(r)))
        .collect();
    let v2 = NewPriceBookVersion::new(Utc.timestamp_opt(t + 600, 0).unwrap(), eur(), rates);
    let v2 = db
        .store
        .add_price_book_version(&ctx(), &v2.unwrap())
        .await
        .unwrap();
    let usage = |version: &PriceBookVersion, key: &str, reason, meter: &str, qty: &str, units| {
        let (unit, price_unit, per): (&str, &str, &str) = units;
        UnallocatedUsage {
            namespace_or_label: key.into(),
            reason,
            meter: MeterName::parse("meter", meter).unwrap(),
            quantity: dec(qty),
            unit: UnitName::parse("u", unit).unwrap(),
            price_version: version.id,
            price_unit: UnitName::parse("u", price_unit).unwrap(),
            units_per_price_unit: dec(per),
        }
    };
    let collected = |w: Window, unallocated: Vec<UnallocatedUsage>| CollectedWindow {
        window: w,
        entries: Vec::new(),
        unallocated,
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: Vec::new(),
        problems: Vec::new(),
    };
    let windows = [
        collected(
            window(t),
            vec![
                usage(&v1, "kube-system", NoTenantLabel, "cpu", "7200", CORE_HOUR),
                usage(&v1, "kube-system", NoTenantLabel, "gpu", "7200", GPU_HOUR),
                // A label value that names no tenant, and a namespace without a label: both
                // called "ghost".
                usage(
                    &v1,
                    "ghost",
                    UnknownTenant,
                    "memory",
                    "11596411699200",
                    GIB_HOUR,
                ),
                usage(&v1, "ghost", NoTenantLabel, "cpu", "3600", CORE_HOUR),
            ],
        ),
        collected(
            window(t + 300),
            vec![usage(
                &v1,
                "kube-system",
                NoTenantLabel,
                "cpu",
                "300",
                CORE_HOUR,
            )],
        ),
        collected(
            window(t + 600),
            vec![usage(
                &v2,
                "kube-system",
                NoTenantLabel,
                "cpu",
                "3600",
                CORE_HOUR,
            )],
        ),
    ];
    db.store
        .commit_windows(&windows, &CommitMode::Collect, true, "test")
        .await
        .unwrap();

    let mut fin = finance_connection(&db).await;
    let rows = text_rows(&mut fin, UNALLOCATED_ROW).await;
    assert_eq!(
        rows,
        [
            // 3 GiB-hours at 0.004
            "2027-01-15 | ghost | label_value | memory | 11596411699200 byte_seconds | 3 gib_hour | 0.012 EUR",
            "2027-01-15 | ghost | namespace | cpu | 3600 core_seconds | 1 core_hour | 0.031 EUR",
            // 7500 core-seconds at 0.031 and 3600 at 0.062 per core-hour, each window priced by
            // the version in force at its start: (232.5 + 223.2) / 3600, rounded once
            "2027-01-15 | kube-system | namespace | cpu | 11100 core_seconds | 3.083333333333 core_hour | 0.126583333333 EUR",
            // no rate: no amount, which is not zero
            "2027-01-15 | kube-system | namespace | gpu | 7200 gpu_seconds | 2 gpu_hour | NULL EUR",
        ]
    );
}

#[tokio::test]
async fn the_price_unit_migration_rebuilds_the_rollups_and_prices_earlier_unallocated_usage() {
    const PRICE_UNITS: i64 = 20261201151000;
    let (url, mut conn) = database_before(PRICE_UNITS).await;

    // The schema before, with what its write path left: one meter's entries in two price
    // units on one day, a corrected key (usage, reversal, usage), their rollups by the old key,
    // and unallocated usage without price units.
    let gib_hour = GIB_HOUR.2;
    sqlx::raw_sql(&format!(
        "insert into tenants (id, display_name, owner, data_residency, state, created_at,
                              updated_at, state_changed_at)
             values ('acme', 'acme', 'o', 'eu', 'active', now(), now(), now());
         insert into price_book_versions (valid_from, currency, created_at, created_by)
             values ('2026-01-01T00:00:00Z', 'EUR', now(), 'test');
         insert into price_book_rates (version_id, meter, rate, currency)
             values (1, 'cpu', 0.031, 'EUR'), (1, 'memory', 0.004, 'EUR');
         insert into ledger_entries (tenant_id, meter, window_start, window_end, revision, kind,
                                     quantity, unit, price_version, rate, price_unit,
                                     units_per_price_unit, amount, currency, source)
         select 'acme', meter, s, s + interval '5 minutes', revision, kind, quantity, unit, 1,
                rate, price_unit, per, amount, 'EUR', 'test'
         from (values
             ('cpu', '2026-03-02T12:00:00Z'::timestamptz, 1, 'usage', 7200, 'core_seconds',
              0.031, 'core_hour', 3600, 0.062),
             ('cpu', '2026-03-02T13:00:00Z', 1, 'usage', 120, 'core_seconds',
              0.031, 'core_minute', 60, 0.062),
             ('cpu', '2026-03-03T12:00:00Z', 1, 'usage', 3600, 'core_seconds',
              0.031, 'core_hour', 3600, 0.031),
             ('cpu', '2026-03-03T12:00:00Z', 1, 'reversal', -3600, 'core_seconds',
              0.031, 'core_hour', 3600, -0.031),
             ('cpu', '2026-03-03T12:00:00Z', 2, 'usage', 7200, 'core_seconds',
              0.031, 'core_hour', 3600, 0.062),
             ('memory', '2026-03-05T12:00:00Z', 1, 'usage', {gib_hour}, 'byte_seconds',
              0.004, 'gib_hour', {gib_hour}, 0.004)
         ) as e(meter, s, revision, kind, quantity, unit, rate, price_unit, per, amount);
         insert into ledger_rollup_daily (tenant_id, day, meter, unit, currency, quantity,
                                          amount, entries)
         values ('acme', '2026-03-02', 'cpu', 'core_seconds', 'EUR', 7320, 0.124, 2),
                ('acme', '2026-03-03', 'cpu', 'core_seconds', 'EUR', 7200, 0.062, 3),
                ('acme', '2026-03-05', 'memory', 'byte_seconds', 'EUR', {gib_hour}, 0.004, 1);
         insert into unallocated_usage (window_start, window_end, namespace_or_label, reason,
                                        meter, quantity, unit)
         select s, s + interval '5 minutes', key, reason, meter, quantity, unit
         from (values
             -- that day's cpu entries have one price unit
             ('2026-03-03T12:00:00Z'::timestamptz, 'kube-system', 'no_tenant_label', 'cpu',
              3600, 'core_seconds'),
             -- two price units that day, and over all days: unknown
             ('2026-03-02T12:00:00Z', 'kube-system', 'no_tenant_label', 'cpu',
              3600, 'core_seconds'),
             -- no memory entry that day, but only ever one price unit for memory
             ('2026-03-04T12:00:00Z', 'ghost', 'unknown_tenant', 'memory',
              {gib_hour}, 'byte_seconds'),
             -- before the first price-book version: no rate
             ('2025-12-31T12:00:00Z', 'ghost', 'unknown_tenant', 'memory',
              {gib_hour}, 'byte_seconds')
         ) as u(s, key, reason, meter, quantity, unit);"
    ))
    .execute(&mut conn)
    .await
    .unwrap();

    MIGRATOR.run(&mut conn).await.unwrap();

    let rollups = text_rows(
        &mut conn,
        "select concat_ws(' | ', day, meter, quantity || ' ' || unit,
                          units_per_price_unit || ' per ' || price_unit, amount, entries)
         from ledger_rollup_daily",
    )
    .await;
    assert_eq!(
        rollups,
        [
            "2026-03-02 | cpu | 120 core_seconds | 60 per core_minute | 0.062 | 1",
            "2026-03-02 | cpu | 7200 core_seconds | 3600 per core_hour | 0.062 | 1",
            "2026-03-03 | cpu | 7200 core_seconds | 3600 per core_hour | 0.062 | 3",
            "2026-03-05 | memory | 3865470566400 byte_seconds | 3865470566400 per gib_hour | 0.004 | 1",
        ]
    );
    let daily = text_rows(&mut conn, DAILY_ROW).await;
    assert_eq!(
        daily,
        [
            "acme | 2026-03-02 | cpu | 120 core_seconds | 2 core_minute | 0.062 EUR",
            "acme | 2026-03-02 | cpu | 7200 core_seconds | 2 core_hour | 0.062 EUR",
            "acme | 2026-03-03 | cpu | 7200 core_seconds | 2 core_hour | 0.062 EUR",
            "acme | 2026-03-05 | memory | 3865470566400 byte_seconds | 1 gib_hour | 0.004 EUR",
        ]
    );
    let unallocated = text_rows(&mut conn, UNALLOCATED_ROW).await;
    assert_eq!(
        unallocated,
        [
            "2025-12-31 | ghost | label_value | memory | 3865470566400 byte_seconds | 1 gib_hour | NULL NULL",
            "2026-03-02 | kube-system | namespace | cpu | 3600 core_seconds | NULL NULL | NULL EUR",
            "2026-03-03 | kube-system | namespace | cpu | 3600 core_seconds | 1 core_hour | 0.031 EUR",
            "2026-03-04 | ghost | label_value | memory | 3865470566400 byte_seconds | 1 gib_hour | 0.004 EUR",
        ]
    );

    // The write path adds to the rebuilt rollups.
    conn.close().await.ok();
    let store = Store::connect(&testkit::db::store_config(&url))
        .await
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let day = chrono::NaiveDate::from_ymd_opt(2026, 3, 2).unwrap();
    let v = store
        .price_book_version_at(Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).unwrap())
        .await
        .unwrap()
        .unwrap();
    let w = window(
        Utc.with_ymd_and_hms(2026, 3, 2, 14, 0, 0)
            .unwrap()
            .timestamp(),
    );
    let more = priced_entry(&v, &acme, "cpu", w, "3600", CORE_HOUR);
    store.write_entries(&[more], "test").await.unwrap();
    let costs = store
        .daily_costs(Some(&acme), day, day.succ_opt().unwrap())
        .await
        .unwrap();
    let costs: Vec<String> = costs
        .iter()
        .map(|c| {
            format!(
                "{} {} = {} {}",
                c.quantity, c.unit, c.priced_quantity, c.price_unit
            )
        })
        .collect();
    assert_eq!(
        costs,
        [
            "10800 core_seconds = 3 core_hour",
            "120 core_seconds = 2 core_minute"
        ]
    );
    store.pool().close().await;
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
            let recorded: Decimal = sqlx::query_scalar("select attempted_quantity from ledger_conflicts where tenant_id = $1")
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

/// A store whose database cannot be used says where and why on the operation that needs it:
/// a missing database at once (not after the pool's acquire timeout), a pool whose every
/// connection is taken as exhausted, not as unreachable. Neither is retried, and the store's
/// `Debug` never shows the password.
#[tokio::test]
async fn a_store_names_its_database_and_why_an_operation_cannot_run() {
    let db = fresh_database().await;
    let url = |database: &str| {
        testkit::db::with_database(&db.url, database).replacen("postgres@", "postgres:s3cret@", 1)
    };
    let config = |database: &str| ledger::StoreConfig {
        max_connections: 1,
        acquire_timeout: std::time::Duration::from_secs(3),
        ..testkit::db::store_config(&url(database))
    };

    let missing = Store::connect(&config("no_such_ledger")).await.unwrap();
    assert!(!format!("{missing:?}").contains("s3cret"), "{missing:?}");
    let started = std::time::Instant::now();
    let err = missing.is_ready().await.unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("database \"no_such_ledger\" on 127.0.0.1:")
            && message.ends_with("database \"no_such_ledger\" does not exist")
            && !message.contains("s3cret"),
        "{message}"
    );

    let store = Store::connect(&config(&db.name)).await.unwrap();
    let held = store.pool().begin().await.unwrap();
    let err = store.is_ready().await.unwrap_err();
    assert!(matches!(err, Error::PoolExhausted { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "no free connection to database {:?} on {}:{} as user \"postgres\" within 3000 ms: \
             all 1 of the pool are in use",
            db.name,
            store.target().host,
            store.target().port
        )
    );
    drop(held);
    assert!(store.is_ready().await.unwrap());
}

fn new_request(id: &str) -> ledger::tenant::NewTenantRequest {
    use ledger::tenant::*;
    NewTenantRequest {
        tenant: NewTenant {
            id: TenantId::parse(id).unwrap(),
            display_name: DisplayName::parse(id).unwrap(),
            owner: Owner::parse_email("owner@example.com").unwrap(),
            data_residency: DataResidency::parse("eu").unwrap(),
            labels: Default::default(),
            owner_group: Some(OwnerGroup::parse("team-a").unwrap()),
            quota_profile: Some(QuotaProfileName::parse("quota_profile", "standard").unwrap()),
            namespaces: Vec::new(),
        },
        budget: Money {
            amount: dec("500.00"),
            currency: eur(),
        },
        period: BudgetPeriod::Monthly,
        justification: Justification::parse("a new service").unwrap(),
    }
}

fn as_actor(name: &str) -> AuditContext {
    AuditContext {
        actor: Actor {
            name: name.into(),
            role: "operator".into(),
        },
        request_id: format!("req-{name}"),
    }
}

/// A random sequence of lifecycle calls through the store ends where the pure table says, and
/// every state change it recorded in the outbox is a row of the table.
#[test]
fn store_follows_the_transition_table() {
    use ledger::names::Reason;
    use ledger::tenant::{LifecycleOp, TRANSITIONS};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(fresh_database());
    let thresholds = Thresholds::parse(vec![50, 80, 100]).unwrap();
    let reason = Reason::parse("reason", "checked").unwrap();
    let case = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 12,
        ..ProptestConfig::default()
    });
    let ops = proptest::collection::vec(0..LifecycleOp::ALL.len(), 0..12);
    runner
        .run(&ops, |ops| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let id = TenantId::parse(&format!("t{n}")).unwrap();
            let s = &db.store;
            rt.block_on(async {
                s.request_tenant(&as_actor("alice"), &new_request(id.as_str()))
                    .await
                    .unwrap();
                let mut model = TenantState::Requested;
                for i in ops {
                    let op = LifecycleOp::ALL[i];
                    let result = match op {
                        LifecycleOp::Approve => s
                            .approve_tenant_request(
                                &as_actor("bob"),
                                &id,
                                &reason,
                                &thresholds,
                                Utc::now(),
                            )
                            .await
                            .map(|r| r.tenant.state),
                        LifecycleOp::Reject => s
                            .reject_tenant_request(&as_actor("bob"), &id, &reason)
                            .await
                            .map(|r| r.tenant.state),
                        op => s
                            .operate_tenant(&as_actor("bob"), &id, op, "test")
                            .await
                            .map(|t| t.state),
                    };
                    match (model.decide(op), result) {
                        (Ok(next), Ok(state)) => {
                            model = next.unwrap_or(model);
                            assert_eq!(state, model);
                        }
                        (Err(_), Err(Error::Transition { refused, .. })) => {
                            assert_eq!(refused.current, model)
                        }
                        (want, got) => panic!("{op:?} from {model}: model {want:?}, store {got:?}"),
                    }
                }
                let stored = s.get_tenant(&id).await.unwrap().state;
                assert_eq!(stored, model);
                let events: Vec<serde_json::Value> = sqlx::query_scalar(
                    "select payload from outbox where aggregate_id = $1 and payload ? 'previous_state' order by id",
                )
                .bind(id.as_str())
                .fetch_all(s.pool())
                .await
                .unwrap();
                for e in events {
                    let from = TenantState::parse(e["previous_state"].as_str().unwrap()).unwrap();
                    let to = TenantState::parse(e["tenant"]["state"].as_str().unwrap()).unwrap();
                    assert!(
                        TRANSITIONS.iter().any(|&(f, _, t)| f == from && t == to),
                        "{from} -> {to}"
                    );
                }
            });
            Ok(())
        })
        .unwrap();
    // Approval wrote the budget; a requester cannot approve their own request.
    rt.block_on(async {
        let s = &db.store;
        let id = TenantId::parse("self").unwrap();
        s.request_tenant(&as_actor("alice"), &new_request("self"))
            .await
            .unwrap();
        let err = s
            .approve_tenant_request(&as_actor("alice"), &id, &reason, &thresholds, Utc::now())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Forbidden {
                    code: "self_approval",
                    ..
                }
            ),
            "{err}"
        );
        let approved = s
            .approve_tenant_request(&as_actor("bob"), &id, &reason, &thresholds, Utc::now())
            .await
            .unwrap();
        assert_eq!(approved.tenant.state, TenantState::Active);
        let budget = s.budget_at(&id, Utc::now()).await.unwrap().unwrap();
        assert_eq!(budget.amount.amount, dec("500.00"));
        assert!(matches!(
            s.verify_audit_chain().await.unwrap(),
            ChainStatus::Intact { .. }
        ));
    });
}

/// The verifier budgetd computes for a tenant's login is the one Postgres computes for the
/// same password and salt: Postgres makes one from a plain password, the test recomputes it
/// with Postgres' salt. And `set_tenant_login` stores a verifier, never the password.
#[tokio::test]
async fn tenant_login_passwords_reach_postgres_only_as_scram_verifiers() {
    let db = fresh_database().await;
    let role = format!("budgetd_scram_check_{}", std::process::id());
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("set password_encryption = 'scram-sha-256'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("create role {role} login password 'Open5esame'"))
        .execute(&mut conn)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
        .bind(&role)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query(&format!("drop role {role}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let salt_b64 = stored
        .strip_prefix("SCRAM-SHA-256$4096:")
        .and_then(|rest| rest.split('$').next())
        .unwrap_or_else(|| panic!("not a SCRAM verifier: {stored}"));
    use base64::Engine;
    let salt = base64::engine::general_purpose::STANDARD
        .decode(salt_b64)
        .unwrap();
    assert_eq!(
        ledger::store::scram_sha256_verifier("Open5esame", &salt),
        stored
    );

    let acme = tenant(&db.store, "acme").await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &db.url,
        "test",
        30,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let login = db
        .store
        .set_tenant_login(lock.fence(), &acme, "Open5esame", &[7u8; 16])
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
        .bind(&login)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        stored,
        ledger::store::scram_sha256_verifier("Open5esame", &[7u8; 16])
    );
    assert!(db
        .store
        .drop_tenant_login(lock.fence(), &acme)
        .await
        .unwrap());
    assert_eq!(db.store.tenant_login(&acme).await.unwrap(), None);
    conn.close().await.unwrap();
}

/// Windows on both sides of a month boundary land in their months' partitions, and the next
/// month's partition exists before its first window: the write path creates it ahead.
#[tokio::test]
async fn entries_land_in_their_months_partitions_and_the_next_month_is_created_ahead() {
    let db = fresh_database().await;
    let acme = tenant(&db.store, "acme").await;
    let v = price_book(&db.store, Utc.timestamp_opt(0, 0).unwrap()).await;
    let partition_exists = |name: &'static str| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, bool>("select to_regclass($1) is not null")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert!(!partition_exists("ledger_entries_p203101").await);

    let last_of_december = Utc.with_ymd_and_hms(2030, 12, 31, 23, 55, 0).unwrap();
    db.store
        .write_entries(
            &[entry(
                &v,
                &acme,
                "cpu",
                window(last_of_december.timestamp()),
                "300",
            )],
            "test",
        )
        .await
        .unwrap();
    assert!(partition_exists("ledger_entries_p203012").await);
    assert!(
        partition_exists("ledger_entries_p203101").await,
        "January's partition is made with December's first write"
    );

    let first_of_january = last_of_december + Duration::seconds(300);
    db.store
        .write_entries(
            &[entry(
                &v,
                &acme,
                "cpu",
                window(first_of_january.timestamp()),
                "600",
            )],
            "test",
        )
        .await
        .unwrap();
    let placed: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "select tableoid::regclass::text, window_start from ledger_entries order by window_start",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(
        placed,
        vec![
            ("ledger_entries_p203012".to_owned(), last_of_december),
            ("ledger_entries_p203101".to_owned(), first_of_january),
        ]
    );
    let monthly: Vec<(chrono::NaiveDate, Decimal)> = sqlx::query_as(
        "select month, amount from finance.tenant_costs_monthly where tenant_id = 'acme' \
         order by month",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    assert_eq!(
        monthly,
        vec![
            (
                chrono::NaiveDate::from_ymd_opt(2030, 12, 1).unwrap(),
                dec("0.002583333333")
            ),
            (
                chrono::NaiveDate::from_ymd_opt(2031, 1, 1).unwrap(),
                dec("0.005166666667")
            ),
        ]
    );
    assert_rollups_match_entries(&db).await;
}

/// The compact-ledger migration moves a ledger written by the earlier schema: every entry
/// (a corrected key's usage, reversal and replacement with their reason, entries in two months
/// and two price units), its conflicts, and nothing changes for finance.
#[tokio::test]
async fn the_compact_ledger_migration_moves_every_entry_and_changes_no_total() {
    const COMPACT: i64 = 20261202040000;
    let (url, mut conn) = database_before(COMPACT).await;
    let gib_hour = GIB_HOUR.2;
    sqlx::raw_sql(&format!(
        "insert into tenants (id, display_name, owner, data_residency, state, created_at,
                              updated_at, state_changed_at)
             values ('acme', 'acme', 'o', 'eu', 'active', now(), now(), now()),
                    ('beta', 'beta', 'o', 'eu', 'active', now(), now(), now());
         insert into price_book_versions (valid_from, currency, created_at, created_by)
             values ('2026-01-01T00:00:00Z', 'EUR', now(), 'test');
         insert into price_book_rates (version_id, meter, rate, currency)
             values (1, 'cpu', 0.031, 'EUR'), (1, 'memory', 0.004, 'EUR');
         insert into ledger_entries (tenant_id, meter, window_start, window_end, revision, kind,
                                     quantity, unit, price_version, rate, price_unit,
                                     units_per_price_unit, amount, currency, source, reason)
         select tenant, meter, s, s + interval '5 minutes', revision, kind, quantity, unit, 1,
                rate, price_unit, per, amount, 'EUR', source, reason
         from (values
             ('acme', 'cpu', '2026-02-28T23:55:00Z'::timestamptz, 1, 'usage', 7200,
              'core_seconds', 0.031, 'core_hour', 3600, 0.062, 'collector', null),
             ('acme', 'cpu', '2026-03-01T00:00:00Z', 1, 'usage', 120, 'core_seconds',
              0.031, 'core_minute', 60, 0.062, 'collector', null),
             ('acme', 'cpu', '2026-03-03T12:00:00Z', 1, 'usage', 3600, 'core_seconds',
              0.031, 'core_hour', 3600, 0.031, 'collector', null),
             ('acme', 'cpu', '2026-03-03T12:00:00Z', 1, 'reversal', -3600, 'core_seconds',
              0.031, 'core_hour', 3600, -0.031, 'backfill', 'recollected'),
             ('acme', 'cpu', '2026-03-03T12:00:00Z', 2, 'usage', 7200, 'core_seconds',
              0.031, 'core_hour', 3600, 0.062, 'backfill', 'recollected'),
             ('beta', 'memory', '2026-03-05T12:00:00Z', 1, 'usage', {gib_hour}, 'byte_seconds',
              0.004, 'gib_hour', {gib_hour}, 0.004, 'collector', null)
         ) as e(tenant, meter, s, revision, kind, quantity, unit, rate, price_unit, per, amount,
                source, reason);
         insert into ledger_rollup_daily (tenant_id, day, meter, unit, currency, price_unit,
                                          units_per_price_unit, quantity, amount, entries)
         select tenant_id, (window_start at time zone 'UTC')::date, meter, unit, currency,
                price_unit, units_per_price_unit, sum(quantity), sum(amount), count(*)
         from ledger_entries group by 1, 2, 3, 4, 5, 6, 7;
         insert into ledger_rollup_monthly (month, tenant_id, currency, amount, entries)
         select date_trunc('month', window_start at time zone 'UTC')::date, tenant_id, currency,
                sum(amount), count(*)
         from ledger_entries group by 1, 2, 3;
         insert into ledger_conflicts (entry_id, attempted_quantity, attempted_unit,
                                       attempted_price_version, attempted_amount, source)
         select id, 1, 'core_seconds', 1, 0.000008611111, 'collector'
         from ledger_entries where revision = 2;"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    const ENTRIES: &str = "select concat_ws(' | ', tenant_id, meter, window_start, window_end,
                                           revision, kind, quantity || ' ' || unit, price_version,
                                           rate || ' per ' || units_per_price_unit || ' ' || price_unit,
                                           amount || ' ' || currency, source, reason)";
    let entries_before = text_rows(&mut conn, &format!("{ENTRIES} from ledger_entries")).await;
    let live_before = text_rows(
        &mut conn,
        "select concat_ws(' | ', tenant_id, meter, window_start, revision, quantity, amount)
         from ledger_live_entries",
    )
    .await;
    let monthly_before = text_rows(
        &mut conn,
        "select concat_ws(' | ', tenant_id, month, amount, currency) from finance.tenant_costs_monthly",
    )
    .await;
    let daily_before = text_rows(&mut conn, DAILY_ROW).await;
    assert_eq!(entries_before.len(), 6);

    MIGRATOR.run(&mut conn).await.unwrap();

    let entries_after = text_rows(&mut conn, &format!("{ENTRIES} from ledger_entry_details")).await;
    assert_eq!(entries_after, entries_before);
    let live_after = text_rows(
        &mut conn,
        "select concat_ws(' | ', tenant_id, meter, window_start, revision, quantity, amount)
         from ledger_live_entries",
    )
    .await;
    assert_eq!(live_after, live_before);
    assert_eq!(live_after.len(), 4);
    let monthly_after = text_rows(
        &mut conn,
        "select concat_ws(' | ', tenant_id, month, amount, currency) from finance.tenant_costs_monthly",
    )
    .await;
    assert_eq!(monthly_after, monthly_before);
    assert_eq!(text_rows(&mut conn, DAILY_ROW).await, daily_before);
    let partitions = text_rows(
        &mut conn,
        "select concat_ws(' | ', tableoid::regclass, count(*)) from ledger_entries \
         group by tableoid order by 1",
    )
    .await;
    assert_eq!(
        partitions,
        ["ledger_entries_p202602 | 1", "ledger_entries_p202603 | 5"]
    );
    let conflicts = text_rows(
        &mut conn,
        "select concat_ws(' | ', tenant_id, meter, window_start, live_revision, attempted_quantity)
         from ledger_conflicts",
    )
    .await;
    assert_eq!(conflicts, ["acme | cpu | 2026-03-03 12:00:00+00 | 2 | 1"]);

    // The write path goes on from the moved entries: the corrected key is at revision 2, and
    // rewriting it is a no-op.
    conn.close().await.ok();
    let store = Store::connect(&testkit::db::store_config(&url))
        .await
        .unwrap();
    let v = store
        .price_book_version_at(Utc.with_ymd_and_hms(2026, 3, 3, 0, 0, 0).unwrap())
        .await
        .unwrap()
        .unwrap();
    let acme = TenantId::parse("acme").unwrap();
    let key_window = window(
        Utc.with_ymd_and_hms(2026, 3, 3, 12, 0, 0)
            .unwrap()
            .timestamp(),
    );
    let report = store
        .write_entries(&[entry(&v, &acme, "cpu", key_window, "7200")], "test")
        .await
        .unwrap();
    assert_eq!((report.inserted, report.unchanged), (0, 1));
    let corrected = store
        .correct_entries(
            &[entry(&v, &acme, "cpu", key_window, "10800")],
            "again",
            "test",
        )
        .await
        .unwrap();
    assert_eq!(corrected.corrected, 1);
    let revisions: Vec<(i32, String)> = sqlx::query_as(
        "select revision, kind from ledger_entry_details where window_start = $1 \
         order by revision, kind desc",
    )
    .bind(key_window.start())
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        revisions,
        [
            (1, "usage"),
            (1, "reversal"),
            (2, "usage"),
            (2, "reversal"),
            (3, "usage")
        ]
        .map(|(r, k)| (r, k.to_owned()))
    );
    store.pool().close().await;
}
