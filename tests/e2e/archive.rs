//! `budgetd archive`: a closed month to Parquet in a local directory and out of the database;
//! `archive verify` passes, then fails naming a tampered file; refusals exit 2 and change
//! nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::Utc;
use ledger::archive::Month;
use ledger::audit::{Actor, AuditContext};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, NewPriceBookVersion};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use testkit::db::TestDb;

use crate::cli::run;

/// A directory of the test's own: the configuration file and the object store.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "budgetd-e2e-archive-{test}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `budgetd` with a configuration holding only `extra` (and the database from the environment).
fn budgetd(db: &TestDb, dir: &Path, extra: &str) -> Command {
    let config = dir.join("budgetd.toml");
    std::fs::write(&config, extra).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budgetd"));
    cmd.env("BUDGETD_CONFIG", &config)
        .env("BUDGETD_DATABASE_URL", &db.url)
        .env("BUDGETD_MIGRATE_DATABASE_URL", &db.url)
        .stdin(Stdio::null());
    cmd
}

fn archive_section(store: &Path, hot_months: u32) -> String {
    format!(
        "[archive]\nurl = \"{}\"\nhot_retention_months = {hot_months}\n",
        url::Url::from_directory_path(store).unwrap()
    )
}

/// `windows` cpu entries of tenants a and b from the start of `month`, in its partition.
async fn write_entries(db: &TestDb, month: Month, windows: i64) {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("select budgetd_ensure_ledger_partition($1)")
        .bind(month.first_day())
        .execute(&mut conn)
        .await
        .unwrap();
    let ctx = AuditContext {
        actor: Actor::system("test"),
        request_id: "archive-e2e".into(),
    };
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let version = db
        .store
        .add_price_book_version(
            &ctx,
            &NewPriceBookVersion::new(
                month.start(),
                "EUR".parse().unwrap(),
                [(cpu.clone(), Decimal::new(45, 3))].into(),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let pricing = version
        .pricing(
            &cpu,
            UnitName::parse("u", "core_hour").unwrap(),
            Decimal::from(3600),
        )
        .unwrap();
    let mut entries = Vec::new();
    for tenant in ["a", "b"] {
        testkit::db::create_tenant(&db.store, tenant).await;
        for i in 0..windows {
            let start = month.start() + chrono::Duration::seconds(300 * i);
            entries.push(
                NewEntry::new(
                    EntryKey {
                        tenant: tenant.parse().unwrap(),
                        meter: cpu.clone(),
                        window: Window::new(start, start + chrono::Duration::seconds(300)).unwrap(),
                    },
                    Decimal::from(60 + i),
                    UnitName::parse("u", "core_seconds").unwrap(),
                    pricing.clone(),
                )
                .unwrap(),
            );
        }
    }
    db.store.write_entries(&entries, "test").await.unwrap();
}

async fn monthly_totals(db: &TestDb) -> Vec<String> {
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query_scalar(
        "select concat_ws(' ', tenant_id, month, amount, currency) \
         from finance.tenant_costs_monthly order by 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn archive_moves_a_closed_month_out_and_verify_finds_a_tampered_file() {
    let db = testkit::db::fresh_database().await;
    let jan = Month::parse("m", "2025-01").unwrap();
    write_entries(&db, jan, 12).await;
    let totals = monthly_totals(&db).await;
    assert_eq!(totals.len(), 2, "{totals:?}");
    let dir = scratch("tampered");
    let store = dir.join("store");
    let config = archive_section(&store, 0);

    let (code, stdout, stderr) =
        run(budgetd(&db, &dir, &config).args(["archive", "--before", "2025-02"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("2025-01: archived, 24 entries in 1 files; partition dropped"),
        "{stdout}"
    );
    assert_eq!(
        monthly_totals(&db).await,
        totals,
        "finance totals unchanged"
    );
    let (code, stdout, stderr) =
        run(budgetd(&db, &dir, &config).args(["archive", "--before", "2025-02"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("nothing to archive before 2025-02"),
        "{stdout}"
    );

    let (code, stdout, stderr) = run(budgetd(&db, &dir, &config).args(["archive", "verify"]));
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("2025-01: ok, 24 entries in 1 files at file://"),
        "{stdout}"
    );

    let file = store.join("ledger_entries/2025-01/part-00000.parquet");
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x10;
    std::fs::write(&file, bytes).unwrap();
    let (code, stdout, _) =
        run(budgetd(&db, &dir, &config).args(["archive", "verify", "--month", "2025-01"]));
    assert_eq!(code, 1, "{stdout}");
    assert!(
        stdout.contains("2025-01: DIFFERS from its manifest"),
        "{stdout}"
    );
    assert!(stdout.contains("part-00000.parquet: SHA-256"), "{stdout}");

    let (code, _, stderr) =
        run(budgetd(&db, &dir, &config).args(["archive", "verify", "--month", "2024-05"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("2024-05 has no archive"), "{stderr}");
}

#[tokio::test]
async fn archive_refuses_hot_months_the_current_month_and_a_missing_section() {
    let db = testkit::db::fresh_database().await;
    let jan = Month::parse("m", "2025-01").unwrap();
    write_entries(&db, jan, 2).await;
    let dir = scratch("refused");
    let store = dir.join("store");
    let current = Month::of(Utc::now());

    let (code, _, stderr) = run(budgetd(&db, &dir, &archive_section(&store, 0)).args([
        "archive",
        "--before",
        &current.next().to_string(),
    ]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("include the current month {current}")),
        "{stderr}"
    );

    let (code, _, stderr) =
        run(budgetd(&db, &dir, &archive_section(&store, 1200))
            .args(["archive", "--before", "2025-02"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("inside the hot retention"), "{stderr}");
    assert!(
        stderr.contains("archive.hot_retention_months = 1200"),
        "{stderr}"
    );

    let (code, _, stderr) = run(budgetd(&db, &dir, "").args(["archive", "--before", "2025-02"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("[archive] section with url"), "{stderr}");

    let (code, _, stderr) = run(budgetd(&db, &dir, &archive_section(&store, 0)).arg("archive"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--before: is required"), "{stderr}");

    let (code, _, stderr) =
        run(budgetd(&db, &dir, &archive_section(&store, 0))
            .args(["archive", "--before", "2025-13"]));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("is not a month such as 2025-01"),
        "{stderr}"
    );

    // Nothing moved.
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let (partition, archives): (bool, i64) = sqlx::query_as(
        "select to_regclass('ledger_entries_p202501') is not null, \
         (select count(*) from ledger_archives)",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(partition);
    assert_eq!(archives, 0);
    assert!(!store.join("ledger_entries").exists());
}
