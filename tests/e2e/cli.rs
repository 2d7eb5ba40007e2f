//! The `budgetd` binary: configuration errors, migrate + run, audit verify, cost reports, and
//! a help that lists only operator commands.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, NewPriceBookVersion};
use rust_decimal::Decimal;
use sqlx::{Connection, PgConnection};
use testkit::db::{admin_url, with_database, TestDb};

fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml")
}

fn budgetd(db_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budgetd"));
    cmd.env("BUDGETD_CONFIG", example_config())
        .env("BUDGETD_DATABASE_URL", db_url)
        .env("BUDGETD_MIGRATE_DATABASE_URL", db_url)
        .env("BUDGETD_API_LISTEN", "127.0.0.1:0")
        .env_remove("BUDGETD_BOOTSTRAP_ADMIN_TOKEN")
        .stdin(Stdio::null());
    cmd
}

pub(crate) fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run budgetd");
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `cmd report costs --from <from> --to <to> <more>`: its exit code, stdout and stderr.
fn report_costs(mut cmd: Command, from: &str, to: &str, more: &[&str]) -> (i32, String, String) {
    run(cmd
        .args(["report", "costs", "--from", from, "--to", to])
        .args(more))
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "cli-test".into(),
    }
}

async fn add_tenant(db: &TestDb, id: &str) {
    testkit::db::create_tenant(&db.store, id).await;
}

/// Writes a five-minute cpu entry at noon for each `(tenant, day of March 2026, core-seconds)`,
/// priced by a new price-book version (EUR, from 2026-01-01) at `rate` per core-hour.
async fn write_cpu_entries(db: &TestDb, rate: Decimal, entries: &[(&str, u32, i64)]) {
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let version = db
        .store
        .add_price_book_version(
            &ctx(),
            &NewPriceBookVersion::new(
                Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap(),
                "EUR".parse().unwrap(),
                [(cpu.clone(), rate)].into(),
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
    let entries: Vec<NewEntry> = entries
        .iter()
        .map(|&(tenant, day, core_seconds)| {
            let start = Utc.with_ymd_and_hms(2026, 3, day, 12, 0, 0).unwrap();
            NewEntry::new(
                EntryKey {
                    tenant: tenant.parse().unwrap(),
                    meter: cpu.clone(),
                    window: Window::new(start, start + chrono::Duration::seconds(300)).unwrap(),
                },
                Decimal::from(core_seconds),
                UnitName::parse("u", "core_seconds").unwrap(),
                pricing.clone(),
            )
            .unwrap()
        })
        .collect();
    db.store.write_entries(&entries, "test").await.unwrap();
}

#[test]
fn a_bad_config_names_the_key_and_exits_2() {
    let dir = std::env::temp_dir().join(format!("budgetd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    let text = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("statement_timeout_ms = 30000", "statement_timeout_ms = 0");
    std::fs::write(&bad, text).unwrap();

    let (code, _, stderr) = run(budgetd("postgres://x@127.0.0.1:1/x")
        .arg("--config")
        .arg(&bad)
        .arg("migrate"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("database.statement_timeout_ms"), "{stderr}");

    // A misspelt key: its section path, the line it is on, and the key meant.
    let typo = dir.join("typo.toml");
    let text = std::fs::read_to_string(example_config())
        .unwrap()
        .replace("statement_timeout_ms = 30000", "statment_timeout = 30000");
    let line = text
        .lines()
        .position(|l| l.starts_with("statment_timeout"))
        .unwrap()
        + 1;
    std::fs::write(&typo, text).unwrap();
    let (code, _, stderr) = run(budgetd("postgres://x@127.0.0.1:1/x")
        .arg("--config")
        .arg(&typo)
        .arg("migrate"));
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stderr,
        format!(
            "budgetd: config: line {line}: database.statment_timeout: unknown key (did you mean statement_timeout_ms?)\n"
        )
    );

    let (code, _, stderr) = run(budgetd("postgres://x@127.0.0.1:1/x")
        .env("BUDGETD_API_LISTEN", "everywhere")
        .arg("run"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("api.listen"), "{stderr}");

    let (code, _, stderr) = run(budgetd("mysql://x@127.0.0.1/x").arg("migrate"));
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains("database.url") && !stderr.contains("mysql://"),
        "{stderr}"
    );

    let (code, _, stderr) = run(budgetd("postgres://x@127.0.0.1:1/x")
        .arg("--config")
        .arg(dir.join("missing.toml"))
        .arg("migrate"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--config"), "{stderr}");

    let (code, _, stderr) = report_costs(
        budgetd("postgres://x@127.0.0.1:1/x"),
        "2026-01-01",
        "2026-01-31",
        &["--tenant", "Bad!"],
    );
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tenant"), "{stderr}");
    std::fs::remove_dir_all(&dir).ok();
}

/// A database that cannot be reached fails `migrate` within seconds, and the message names
/// the target (host, port, database, user; never the password) and the cause, once.
#[test]
fn migrate_names_an_unreachable_database_and_the_cause_within_seconds() {
    let admin = url::Url::parse(&admin_url()).unwrap();
    let port = admin.port().unwrap();
    let held = testkit::tcp_proxy::RefusingPort::new();
    let refused = held.addr().port();
    let cases = [
        (
            format!("postgres://budgetd:s3cret@127.0.0.1:{refused}/ledger"),
            format!("database \"ledger\" on 127.0.0.1:{refused} as user \"budgetd\""),
            "connection refused",
        ),
        (
            "postgres://budgetd:s3cret@no-such-host.invalid:5432/ledger".to_owned(),
            "database \"ledger\" on no-such-host.invalid:5432 as user \"budgetd\"".to_owned(),
            "unknown host",
        ),
        (
            format!("postgres://postgres:s3cret@127.0.0.1:{port}/no_such_ledger"),
            format!("database \"no_such_ledger\" on 127.0.0.1:{port} as user \"postgres\""),
            "database \"no_such_ledger\" does not exist",
        ),
    ];
    for (url, target, cause) in cases {
        let started = std::time::Instant::now();
        let (code, _, stderr) = run(budgetd(&url).arg("migrate"));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "{url}: took {took:?}");
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(&target), "{stderr}");
        assert_eq!(
            stderr.matches(cause).count(),
            1,
            "the cause, once: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }
}

/// Minimal HTTP/1.1 client over a plain TCP connection.
pub(crate) fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split(' ').nth(1).unwrap().parse().unwrap();
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// Reads the daemon's log lines on a thread and hands them over a channel.
pub(crate) fn log_lines(stderr: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits (at most 60 s) for a log line containing `needle`.
pub(crate) fn wait_for(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => continue,
            Err(e) => panic!("no log line with {needle:?}: {e}"),
        }
    }
}

/// The address in the daemon's `budgetd API listening ... listen=<addr>` log line.
pub(crate) fn listen_addr(listening: &str) -> String {
    listening
        .split("listen=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// Sends the daemon SIGTERM and asserts that it exits cleanly.
fn stop_with_sigterm(mut daemon: Child) {
    let pid = daemon.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn run_serves_the_api_becomes_ready_after_migrate_and_stops_on_sigterm() {
    // An empty database: not migrated yet.
    let url = empty_database("run").await;
    let token = "bootstrap-token-for-the-cli-test";

    let mut daemon = budgetd(&url)
        .env("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", token)
        .env("BUDGETD_LOG", "info")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(daemon.stderr.take().unwrap());
    let listening = wait_for(&lines, "budgetd API listening");
    let addr = listen_addr(&listening);

    assert_eq!(http(&addr, "GET", "/healthz", None).0, 200);
    let (status, body) = http(&addr, "GET", "/readyz", None);
    assert_eq!(status, 503, "{body}");
    wait_for(&lines, "ledger not migrated yet");

    let (code, _, stderr) = run(budgetd(&url).arg("migrate"));
    assert_eq!(code, 0, "{stderr}");
    wait_for(&lines, "ledger ready");
    assert_eq!(http(&addr, "GET", "/readyz", None).0, 200);

    // The example config seeded the price book on this first start.
    let (status, body) = http(&addr, "GET", "/api/v1/price-book", Some(token));
    assert_eq!(status, 200, "{body}");
    let versions: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(versions["versions"][0]["rates"]["cpu"], "0.031");
    assert_eq!(versions["versions"][0]["created_by"], "budgetd-config");
    assert_eq!(
        http(&addr, "GET", "/api/v1/tenants", Some("wrong-token")).0,
        401
    );
    let (_, metrics) = http(&addr, "GET", "/metrics", None);
    assert!(metrics.contains("budgetd_http_requests_total"), "{metrics}");

    // SIGTERM: a clean exit.
    stop_with_sigterm(daemon);
}

#[tokio::test]
async fn audit_verify_finds_a_tampered_record() {
    let db = testkit::db::fresh_database().await;
    for id in ["a", "b", "c"] {
        add_tenant(&db, id).await;
    }
    let (code, stdout, stderr) = run(budgetd(&db.url).args(["audit", "verify"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("3 records verified"), "{stdout}");

    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("set session_replication_role = replica")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("update audit_log set after = jsonb_set(after, '{owner}', '\"mallory@example.com\"') where seq = 2")
        .execute(&mut conn).await.unwrap();
    let (code, stdout, _) = run(budgetd(&db.url).args(["audit", "verify"]));
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("broken at record 2"), "{stdout}");
}

#[tokio::test]
async fn report_costs_prints_csv_and_json() {
    let db = testkit::db::fresh_database().await;
    add_tenant(&db, "acme").await;
    add_tenant(&db, "globex").await;
    write_cpu_entries(
        &db,
        Decimal::new(31, 3),
        &[
            ("acme", 2, 7200),
            ("globex", 2, 36000),
            ("acme", 3, 3600),
            ("acme", 5, 3600),
        ],
    )
    .await;

    let (code, stdout, stderr) = report_costs(budgetd(&db.url), "2026-03-02", "2026-03-03", &[]);
    assert_eq!(code, 0, "{stderr}");
    // 0.062 + 0.031 + 0.31 = 0.403: the totals row rounds the exact sum once
    assert_eq!(
        stdout,
        "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit\n\
         acme,2026-03-02,cpu,7200,core_seconds,0.06,EUR,2,core_hour\n\
         acme,2026-03-03,cpu,3600,core_seconds,0.03,EUR,1,core_hour\n\
         globex,2026-03-02,cpu,36000,core_seconds,0.31,EUR,10,core_hour\n\
         TOTAL,,,,,0.40,EUR,,\n"
    );
    let (code, stdout, stderr) = report_costs(
        budgetd(&db.url),
        "2026-03-01",
        "2026-03-31",
        &["--tenant", "acme", "--format", "json"],
    );
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["rows"].as_array().unwrap().len(), 3);
    assert_eq!(
        report["totals"],
        serde_json::json!([{"tenant_id": "acme", "currency": "EUR", "amount": "0.12"}])
    );
    assert_eq!(
        report["currency_totals"],
        serde_json::json!([{"currency": "EUR", "amount": "0.12"}])
    );
    assert_eq!(
        report["rows"][0],
        serde_json::json!({
            "tenant_id": "acme", "day": "2026-03-02", "meter": "cpu",
            "quantity": "7200", "unit": "core_seconds", "amount": "0.06", "currency": "EUR",
            "priced_quantity": "2", "price_unit": "core_hour",
        })
    );
}

#[tokio::test]
async fn report_costs_csv_ends_with_a_totals_row_that_rounds_the_exact_sum_once() {
    let db = testkit::db::fresh_database().await;
    add_tenant(&db, "acme").await;
    add_tenant(&db, "globex").await;
    // One core-hour at 0.004 EUR in each of three rows.
    write_cpu_entries(
        &db,
        Decimal::new(4, 3),
        &[("acme", 2, 3600), ("acme", 3, 3600), ("globex", 2, 3600)],
    )
    .await;

    let (code, stdout, stderr) = report_costs(budgetd(&db.url), "2026-03-01", "2026-03-31", &[]);
    assert_eq!(code, 0, "{stderr}");
    // Each row rounds to 0.00; the total is 0.012 rounded once, not the sum of the rows.
    assert_eq!(
        stdout,
        "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit\n\
         acme,2026-03-02,cpu,3600,core_seconds,0.00,EUR,1,core_hour\n\
         acme,2026-03-03,cpu,3600,core_seconds,0.00,EUR,1,core_hour\n\
         globex,2026-03-02,cpu,3600,core_seconds,0.00,EUR,1,core_hour\n\
         TOTAL,,,,,0.01,EUR,,\n"
    );
}

#[test]
fn help_lists_the_operator_commands_and_nothing_for_developers() {
    let (code, stdout, stderr) = run(Command::new(env!("CARGO_BIN_EXE_budgetd")).arg("--help"));
    assert_eq!(code, 0, "{stderr}");
    let commands: Vec<&str> = stdout
        .lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for operator in [
        "migrate", "run", "collect", "enforce", "report", "audit", "archive", "config", "tenants",
        "tokens",
    ] {
        assert!(
            commands.contains(&operator),
            "no {operator} in {commands:?}"
        );
    }
    for developer in ["bench", "demo"] {
        assert!(
            !commands.iter().any(|c| c.starts_with(developer)) && !stdout.contains(developer),
            "{developer} in:\n{stdout}"
        );
    }
    // They are gone, not hidden: `budgetd-dev` has them.
    for args in [["bench", "ledger"], ["demo-exporter", "--tenants"]] {
        let (code, _, stderr) = run(Command::new(env!("CARGO_BIN_EXE_budgetd")).args(args));
        assert_eq!(code, 2, "{stderr}");
        assert!(stderr.contains("unrecognized subcommand"), "{stderr}");
    }
}

#[tokio::test]
async fn run_warns_at_start_when_prometheus_scrapes_at_another_interval() {
    // Prometheus scrapes every 30 s (kube-prometheus-stack's default, and the example's); the
    // collector is configured at 15 s. Its kubelet job is named in Prometheus' configuration;
    // kube-state-metrics is not (as with the Prometheus Operator, whose job names differ from
    // the `job` labels).
    let dir = testkit::prometheus::ScratchDir::new("budgetd-cli-interval");
    let config = dir.path().join("budgetd.toml");
    let example = std::fs::read_to_string(example_config()).unwrap();
    let at_30s = "\nscrape_interval_seconds = 30\n";
    assert!(example.contains(at_30s));
    std::fs::write(
        &config,
        example.replace(at_30s, "\nscrape_interval_seconds = 15\n"),
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let prometheus = testkit::prometheus::PrometheusProcess::start_with_config(
        dir.path(),
        &data,
        "global:\n  scrape_interval: 30s\nscrape_configs:\n- job_name: kubelet\n",
    );
    let db = testkit::db::fresh_database().await;
    let mut daemon = budgetd(&db.url)
        .env("BUDGETD_CONFIG", &config)
        .env("BUDGETD_PROMETHEUS_URL", &prometheus.url)
        .env("BUDGETD_LOG", "info")
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(daemon.stderr.take().unwrap());
    let listening = wait_for(&lines, "budgetd API listening");
    let kubelet = wait_for(&lines, "scrape interval mismatch");
    assert!(kubelet.contains("WARN"), "{kubelet}");
    assert!(
        kubelet.contains(
            "job kubelet: Prometheus scrapes it every 30s, but collector.scrape_interval_seconds = 15"
        ),
        "{kubelet}"
    );
    // Only the global interval: a hint at info, not a mismatch.
    let ksm = wait_for(&lines, "job kube-state-metrics:");
    assert!(
        ksm.contains("INFO") && !ksm.contains("mismatch") && !ksm.contains("incomplete"),
        "{ksm}"
    );
    assert!(
        ksm.contains("job kube-state-metrics: no scrape config has that job_name")
            && ksm.contains("Prometheus' global scrape_interval is 30s and collector.scrape_interval_seconds = 15; only a hint"),
        "{ksm}"
    );

    // Serving (so the SIGTERM handler is installed), then a clean exit on SIGTERM.
    let addr = listen_addr(&listening);
    assert_eq!(http(&addr, "GET", "/healthz", None).0, 200);
    stop_with_sigterm(daemon);
}

/// `budgetd` with no configuration file and none of budgetd's variables but `vars`.
fn budgetd_from_env(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budgetd"));
    for var in budgetd::config::ENV {
        cmd.env_remove(var.name);
    }
    cmd.envs(vars.iter().copied()).stdin(Stdio::null());
    cmd
}

/// An empty database (not migrated), and its URL.
async fn empty_database(what: &str) -> String {
    let name = format!(
        "budgetd_cli_{what}_{}_{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    );
    let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("create database {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    with_database(&admin_url(), &name)
}

/// The migrations applied to the database at `url` (none before the first `migrate`).
async fn migrations_applied(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let table: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    if !table {
        return 0;
    }
    sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn migrate_needs_only_the_database_url_from_the_environment() {
    let url = empty_database("envonly").await;
    assert_eq!(migrations_applied(&url).await, 0);
    let (code, _, stderr) = run(budgetd_from_env(&[("BUDGETD_DATABASE_URL", &url)]).arg("migrate"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("migrations applied"), "{stderr}");
    let applied = migrations_applied(&url).await;
    assert_eq!(applied, ledger::store::MIGRATOR.iter().count() as i64);
    // The other one-shot commands too.
    let (code, stdout, stderr) =
        run(budgetd_from_env(&[("BUDGETD_DATABASE_URL", &url)]).args(["audit", "verify"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("audit log intact"), "{stdout}");
    let (code, stdout, stderr) = report_costs(
        budgetd_from_env(&[("BUDGETD_DATABASE_URL", &url)]),
        "2026-03-01",
        "2026-03-31",
        &[],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("tenant_id,day,meter,"), "{stdout}");
}

/// With the example configuration (which leaves migrate_url unset) and only
/// BUDGETD_DATABASE_URL, migrations go to that database, not the example's.
#[tokio::test]
async fn migrate_follows_the_database_url_of_the_environment() {
    let url = empty_database("follow").await;
    let config = example_config();
    let config = config.to_str().unwrap();
    let (code, _, stderr) =
        run(
            budgetd_from_env(&[("BUDGETD_CONFIG", config), ("BUDGETD_DATABASE_URL", &url)])
                .arg("migrate"),
        );
    assert_eq!(code, 0, "{stderr}");
    assert!(migrations_applied(&url).await > 0);
}

#[test]
fn config_show_prints_defaults_marks_the_environment_redacts_passwords_and_loads_again() {
    let dir = std::env::temp_dir().join(format!("budgetd-show-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret_url = "postgres://budgetd:s3cret@db.example:5432/ledger";
    let (code, shown, stderr) = run(budgetd_from_env(&[
        ("BUDGETD_DATABASE_URL", secret_url),
        ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "bootstrap-token-s3cret"),
    ])
    .args(["config", "show"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains(
            "url = \"postgres://budgetd:***@db.example:5432/ledger\" # from BUDGETD_DATABASE_URL\n"
        ),
        "{shown}"
    );
    for default in [
        "max_connections = 10\n",
        "statement_timeout_ms = 30000\n",
        "listen = \"127.0.0.1:8080\"\n",
        "keepalive_seconds = 15\n",
        "max_response_bytes = 67108864\n",
        "interval_seconds = 60\n",
    ] {
        assert!(shown.contains(default), "no {default:?} in {shown}");
    }
    let file = dir.join("shown.toml");
    std::fs::write(&file, &shown).unwrap();
    let (code, again, stderr) = run(budgetd_from_env(&[(
        "BUDGETD_CONFIG",
        file.to_str().unwrap(),
    )])
    .args(["config", "show"]));
    assert_eq!(code, 0, "the output loads as a configuration: {stderr}");
    let values = |s: &str| -> Vec<String> {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" # from ").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values(&again), values(&shown));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_help_lists_the_environment_variables_of_the_readme() {
    let readme =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let configuration = readme
        .split("\n## Configuration\n")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut documented: Vec<&str> = configuration
        .split(|c: char| !(c.is_ascii_uppercase() || c == '_'))
        .filter(|w| w.starts_with("BUDGETD_") && w.len() > "BUDGETD_".len())
        .collect();
    documented.sort();
    documented.dedup();
    let mut known: Vec<&str> = budgetd::config::ENV.iter().map(|v| v.name).collect();
    known.sort();
    assert_eq!(documented, known, "the README's list is the daemon's");
    for args in [&["--help"][..], &["run", "--help"], &["migrate", "--help"]] {
        let (code, help, stderr) = run(budgetd_from_env(&[]).args(args));
        assert_eq!(code, 0, "{stderr}");
        for var in &known {
            assert!(help.contains(var), "{args:?} lacks {var}:\n{help}");
        }
    }
    let (_, help, _) = run(budgetd_from_env(&[]).args(["run", "--help"]));
    assert!(help.contains("collect usage and enforce budgets"), "{help}");
}

#[tokio::test]
async fn report_audit_writes_the_five_parts_in_json_and_csv() {
    let db = testkit::db::fresh_database().await;
    add_tenant(&db, "acme").await;
    add_tenant(&db, "globex").await;
    let from = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let to = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    let (code, stdout, stderr) = run(budgetd(&db.url).args([
        "report", "audit", "--from", &from, "--to", &to, "--tenant", "acme", "--format", "json",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let governance = report["governance"].as_array().unwrap();
    assert_eq!(governance.len(), 1);
    assert_eq!(governance[0]["tenant_id"], "acme");
    let audit = report["audit"].as_array().unwrap();
    assert!(!audit.is_empty());
    assert!(audit.iter().all(|r| r["target_id"] == "acme"), "{audit:?}");
    assert!(audit
        .windows(2)
        .all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));
    assert_eq!(report["residency"][0]["tenants"][0]["tenant_id"], "acme");
    assert!(report["access_review"]["identities"].is_array());
    assert!(report["enforcement"].as_array().unwrap().is_empty());

    let (code, csv, stderr) = run(budgetd(&db.url).args([
        "report", "audit", "--from", &from, "--to", &to, "--format", "csv",
    ]));
    assert_eq!(code, 0, "{stderr}");
    let parts: Vec<&str> = csv.lines().filter(|l| l.starts_with("# ")).collect();
    assert_eq!(
        parts,
        [
            "# governance",
            "# audit",
            "# access_review",
            "# residency",
            "# enforcement"
        ]
    );
    assert!(
        csv.contains("\neu,acme,") && csv.contains("\neu,globex,"),
        "{csv}"
    );

    let (code, _, stderr) =
        run(budgetd(&db.url).args(["report", "audit", "--from", &to, "--to", &from]));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--to"), "{stderr}");
}
