//! Archiving against a real Postgres and a local directory as the object store: a month is
//! exported, verified and dropped while the finance totals stay; a tampered or missing file
//! fails verification; a rerun is a no-op; an interrupted archive completes; months inside the
//! hot retention are refused.

use std::path::PathBuf;
use std::time::Duration;

use archive::config::CallLimits;
use archive::{ArchiveSettings, Archiver, Error, MonthOutcome};
use chrono::{DateTime, TimeZone, Utc};
use ledger::archive::Month;
use ledger::audit::{Actor, AuditContext};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, NewPriceBookVersion};
use ledger::store::ChainStatus;
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use testkit::db::{fresh_database, TestDb};

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "archive-test".into(),
    }
}

fn month(text: &str) -> Month {
    Month::parse("month", text).unwrap()
}

/// Mid-December 2026: 2025-01 and 2025-02 are outside the default 13 months.
fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 15, 12, 0, 0).unwrap()
}

/// A directory of its own for the test's object store.
fn store_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "budgetd-archive-{test}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn settings(dir: &std::path::Path) -> ArchiveSettings {
    ArchiveSettings {
        url: url::Url::from_directory_path(dir).unwrap(),
        hot_retention_months: 13,
        rows_per_file: 1_000,
        calls: CallLimits {
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            attempts: 2,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(200),
        },
    }
}

async fn connect(db: &TestDb) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

/// Makes sure `month` has its partition (the daemon creates them ahead; old months here).
async fn ensure_partition(db: &TestDb, month: Month) {
    sqlx::query("select budgetd_ensure_ledger_partition($1)")
        .bind(month.first_day())
        .execute(&mut connect(db).await)
        .await
        .unwrap();
}

/// A five-minute cpu entry of `tenant` in window `i` of `month`, priced by `version`.
fn cpu_entry(
    version: &ledger::price_book::PriceBookVersion,
    month: Month,
    tenant: &str,
    i: i64,
    quantity: Decimal,
) -> NewEntry {
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let pricing = version
        .pricing(
            &cpu,
            UnitName::parse("u", "core_hour").unwrap(),
            Decimal::from(3600),
        )
        .unwrap();
    let start = month.start() + chrono::Duration::seconds(300 * i);
    NewEntry::new(
        EntryKey {
            tenant: tenant.parse().unwrap(),
            meter: cpu,
            window: Window::new(start, start + chrono::Duration::seconds(300)).unwrap(),
        },
        quantity,
        UnitName::parse("u", "core_seconds").unwrap(),
        pricing,
    )
    .unwrap()
}

/// Writes `windows` five-minute cpu entries from the month's first day for tenants `a` and
/// `b`, and corrects the first window of `a` (a reversal and a second revision). Returns the
/// price-book version that priced them.
async fn write_month(
    db: &TestDb,
    month: Month,
    windows: i64,
) -> ledger::price_book::PriceBookVersion {
    ensure_partition(db, month).await;
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let version = db
        .store
        .add_price_book_version(
            &ctx(),
            &NewPriceBookVersion::new(
                month.start(),
                "EUR".parse().unwrap(),
                [(cpu, Decimal::new(45_123_456_789, 12))].into(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    for tenant in ["a", "b"] {
        let entries: Vec<NewEntry> = (0..windows)
            .map(|i| cpu_entry(&version, month, tenant, i, Decimal::new(1_000 + i * 7, 1)))
            .collect();
        db.store.write_entries(&entries, "test").await.unwrap();
    }
    db.store
        .correct_entries(
            &[cpu_entry(&version, month, "a", 0, Decimal::new(12_345, 2))],
            "recollected",
            "test",
        )
        .await
        .unwrap();
    version
}

/// Every row of the finance views, as text, in a fixed order.
async fn finance_totals(db: &TestDb) -> (Vec<String>, Vec<String>) {
    let mut conn = connect(db).await;
    let monthly: Vec<String> = sqlx::query_scalar(
        "select concat_ws(' ', tenant_id, month, amount, currency) \
         from finance.tenant_costs_monthly order by tenant_id, month, currency",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let daily: Vec<String> = sqlx::query_scalar(
        "select concat_ws(' ', tenant_id, day, meter, quantity, unit, amount, currency) \
         from finance.tenant_costs_daily order by tenant_id, day, meter, unit, currency",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    (monthly, daily)
}

async fn partition_exists(db: &TestDb, month: Month) -> bool {
    sqlx::query_scalar::<_, bool>("select to_regclass($1) is not null")
        .bind(month.partition())
        .fetch_one(&mut connect(db).await)
        .await
        .unwrap()
}

async fn export_records(db: &TestDb, month: Month) -> Vec<serde_json::Value> {
    sqlx::query_scalar(
        "select after from audit_log where action = 'ledger.month_exported' \
         and target_id = $1 order by seq",
    )
    .bind(month.to_string())
    .fetch_all(&mut connect(db).await)
    .await
    .unwrap()
}

async fn entries_in(db: &TestDb, month: Month) -> i64 {
    sqlx::query_scalar(
        "select count(*) from ledger_entry_details where window_start >= $1 and window_start < $2",
    )
    .bind(month.start())
    .bind(month.next().start())
    .fetch_one(&mut connect(db).await)
    .await
    .unwrap()
}

fn part(dir: &std::path::Path, month: Month, index: usize) -> PathBuf {
    dir.join(format!("ledger_entries/{month}/part-{index:05}.parquet"))
}

#[tokio::test]
async fn a_closed_month_is_archived_verified_and_dropped_and_the_totals_stay() {
    let db = fresh_database().await;
    for id in ["a", "b"] {
        testkit::db::create_tenant(&db.store, id).await;
    }
    let (jan, feb) = (month("2025-01"), month("2025-02"));
    write_month(&db, jan, 1_200).await;
    write_month(&db, feb, 10).await;
    // 2 × 1,200 entries, and a reversal and a second revision.
    assert_eq!(entries_in(&db, jan).await, 2_402);
    let before = finance_totals(&db).await;
    assert!(
        before.0.iter().any(|r| r.contains("2025-01-01")),
        "{before:?}"
    );

    let dir = store_dir("archive");
    let archiver = Archiver::new(db.store.clone(), settings(&dir), ctx());
    let done = archiver.run(feb, now()).await.unwrap();
    assert_eq!(
        done,
        vec![(
            jan,
            MonthOutcome::Archived {
                rows: 2_402,
                files: 3
            }
        )]
    );
    assert!(!partition_exists(&db, jan).await, "the partition is gone");
    assert!(partition_exists(&db, feb).await, "February stays");
    assert_eq!(entries_in(&db, jan).await, 0);
    assert_eq!(entries_in(&db, feb).await, 22);
    assert_eq!(
        finance_totals(&db).await,
        before,
        "finance totals unchanged"
    );

    // One audit record holds the manifest; the chain is intact.
    let records = export_records(&db, jan).await;
    assert_eq!(records.len(), 1);
    let manifest = &records[0]["manifest"];
    assert_eq!(manifest["rows"], 2_402);
    assert_eq!(manifest["files"].as_array().unwrap().len(), 3);
    let sums = manifest["sums"].as_array().unwrap();
    assert_eq!(sums.len(), 2, "{sums:?}");
    assert!(matches!(
        db.store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { .. }
    ));

    let verified = archiver.verify(None).await.unwrap();
    assert_eq!(verified.len(), 1);
    assert!(verified[0].differences.is_empty(), "{verified:?}");
    assert_eq!(verified[0].rows, 2_402);

    // A rerun is a no-op.
    assert_eq!(archiver.run(feb, now()).await.unwrap(), vec![]);
    assert_eq!(export_records(&db, jan).await.len(), 1);

    // One byte changed in one file, another file gone: verify names both.
    let second = part(&dir, jan, 1);
    let mut bytes = std::fs::read(&second).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&second, bytes).unwrap();
    std::fs::remove_file(part(&dir, jan, 2)).unwrap();
    let verified = archiver.verify(Some(jan)).await.unwrap();
    let differences = &verified[0].differences;
    assert_eq!(differences.len(), 2, "{differences:?}");
    assert!(
        differences[0].contains("part-00001.parquet: SHA-256"),
        "{differences:?}"
    );
    assert!(
        differences[1].contains("part-00002.parquet: cannot be read"),
        "{differences:?}"
    );

    // A manifest altered in the table no longer matches the audit record.
    std::fs::remove_dir_all(&dir).unwrap();
    let mut conn = connect(&db).await;
    sqlx::query("update ledger_archives set manifest = jsonb_set(manifest, '{rows}', '1')")
        .execute(&mut conn)
        .await
        .unwrap();
    let verified = archiver.verify(Some(jan)).await.unwrap();
    assert!(
        verified[0].differences[0].contains("not the one in audit record"),
        "{verified:?}"
    );
}

#[tokio::test]
async fn months_inside_the_hot_retention_and_the_current_month_are_refused() {
    let db = fresh_database().await;
    for id in ["a", "b"] {
        testkit::db::create_tenant(&db.store, id).await;
    }
    let nov = month("2025-11");
    write_month(&db, nov, 3).await;
    let dir = store_dir("refused");
    let archiver = Archiver::new(db.store.clone(), settings(&dir), ctx());
    // With 13 hot months in December 2026, 2025-11 is the first hot month.
    assert_eq!(archiver.first_hot_month(now()), nov);
    for (before, says) in [
        ("2025-12", "hot retention"),
        ("2026-12", "hot retention"),
        ("2027-01", "current month 2026-12"),
    ] {
        match archiver.run(month(before), now()).await {
            Err(Error::Refused(message)) => {
                assert!(message.contains(says), "{before}: {message}");
                assert!(message.contains("latest --before is 2025-11"), "{message}");
            }
            other => panic!("{before}: {other:?}"),
        }
    }
    assert!(partition_exists(&db, nov).await);
    assert_eq!(entries_in(&db, nov).await, 8);
    assert!(export_records(&db, nov).await.is_empty());
    // Up to the first hot month is allowed: nothing before it here.
    assert_eq!(archiver.run(nov, now()).await.unwrap(), vec![]);

    // The current month is refused even with no hot retention.
    let mut none_hot = settings(&dir);
    none_hot.hot_retention_months = 0;
    let archiver = Archiver::new(db.store.clone(), none_hot, ctx());
    assert!(matches!(
        archiver.run(month("2027-01"), now()).await,
        Err(Error::Refused(m)) if m.contains("current month")
    ));
}

#[tokio::test]
async fn an_interrupted_archive_completes_on_the_next_run() {
    let db = fresh_database().await;
    testkit::db::create_tenant(&db.store, "a").await;
    testkit::db::create_tenant(&db.store, "b").await;
    let (jan, feb) = (month("2025-01"), month("2025-02"));
    let version = write_month(&db, jan, 5).await;
    let before = finance_totals(&db).await;
    let dir = store_dir("interrupted");
    let archiver = Archiver::new(db.store.clone(), settings(&dir), ctx());

    // A run that stopped after recording the export (before the drop).
    let (_, manifest) = archiver.export(jan).await.unwrap();
    assert_eq!(manifest.tally.rows, 12);
    assert!(partition_exists(&db, jan).await);
    // The month is frozen: a late entry is refused, not lost after the drop.
    let late = cpu_entry(&version, jan, "b", 100, Decimal::ONE);
    let refused = db.store.write_entries(&[late], "test").await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("archived")),
        "a frozen month took an entry: {refused:?}"
    );

    // The next run reads the recorded copy back and drops the partition: no second export.
    let done = archiver.run(feb, now()).await.unwrap();
    assert_eq!(
        done,
        vec![(jan, MonthOutcome::Archived { rows: 12, files: 1 })]
    );
    assert_eq!(export_records(&db, jan).await.len(), 1);
    assert!(!partition_exists(&db, jan).await);
    assert_eq!(finance_totals(&db).await, before);

    // A run that stopped after recording, whose file was then lost: exported again.
    write_month(&db, feb, 4).await;
    archiver.export(feb).await.unwrap();
    std::fs::remove_file(part(&dir, feb, 0)).unwrap();
    let done = archiver.run(month("2025-03"), now()).await.unwrap();
    assert_eq!(
        done,
        vec![(feb, MonthOutcome::Archived { rows: 10, files: 1 })]
    );
    assert_eq!(export_records(&db, feb).await.len(), 2);
    let verified = archiver.verify(None).await.unwrap();
    assert!(
        verified.iter().all(|v| v.differences.is_empty()),
        "{verified:?}"
    );
}
