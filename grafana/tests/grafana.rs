//! The Grafana reconciler through the real runner on a fresh Postgres, against the stateful
//! fake of Grafana's HTTP API (`testkit::fake_grafana`; no Grafana server can run here): a
//! tenant's folder, team permissions, data source, dashboard; idempotence; drift repaired on
//! resync; updates; removal at offboarding; Grafana OSS; retries. And the isolation that
//! matters: signed in as the tenant's data source login, hand-written SQL reads no other
//! tenant's rows.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use grafana::{GrafanaReconciler, GrafanaSection, GrafanaSettings};
use ledger::audit::{Actor, AuditContext};
use ledger::enforcement::Fence;
use ledger::names::Reason;
use ledger::offboarding::OffboardingSettings;
use ledger::store::LeaderLock;
use ledger::tenant::{DisplayName, OwnerGroup, TenantId, TenantPatch};
use lifecycle::Runner;
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, Row};
use testkit::db::{create_tenant, fresh_database, TestDb};
use testkit::fake_grafana::{FakeGrafana, Fault, FolderPermission, VIEW};
use tokio::sync::watch;

const TOKEN: &str = "glsa_test_token";

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "grafana-test".into(),
    }
}

fn settings(db: &TestDb, grafana: &FakeGrafana, restrict: bool) -> GrafanaSettings {
    let url = url::Url::parse(&db.url).unwrap();
    let section: GrafanaSection = serde_json::from_value(json!({
        "url": grafana.url(),
        "token": TOKEN,
        "max_attempts": 3,
        "initial_backoff_ms": 100,
        "max_backoff_ms": 200,
        "restrict_datasource_access": restrict,
        "datasource": {
            "host": format!("{}:{}", url.host_str().unwrap(), url.port().unwrap()),
            "database": url.path().trim_start_matches('/'),
            "sslmode": "disable",
        },
        "reconciler": { "backoff_base_ms": 1000, "backoff_cap_ms": 2000, "poll_interval_ms": 100 },
    }))
    .unwrap();
    section.validate().unwrap()
}

struct Setup {
    db: TestDb,
    grafana: FakeGrafana,
    _lock: LeaderLock,
    fence: Fence,
    runner: Runner,
}

async fn setup_with(grafana: FakeGrafana, restrict: bool) -> Setup {
    let db = fresh_database().await;
    let lock = LeaderLock::try_acquire(&db.url, "test", 30, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no other leader");
    let fence = lock.fence();
    let (_tx, leader) = watch::channel(Some(fence));
    let reconciler =
        GrafanaReconciler::new(&settings(&db, &grafana, restrict), db.store.clone(), leader)
            .unwrap();
    let runner = Runner::new(
        db.store.clone(),
        Arc::new(reconciler),
        settings(&db, &grafana, restrict).runner,
    )
    .unwrap();
    Setup {
        db,
        grafana,
        _lock: lock,
        fence,
        runner,
    }
}

async fn setup() -> Setup {
    setup_with(FakeGrafana::start(TOKEN).await, true).await
}

/// An active tenant with owner group `team-<id>`.
async fn tenant(s: &Setup, id: &str) -> TenantId {
    let tenant = create_tenant(&s.db.store, id).await;
    let patch = TenantPatch {
        owner_group: Some(Some(OwnerGroup::parse(&format!("team-{id}")).unwrap())),
        ..TenantPatch::default()
    };
    s.db.store
        .update_tenant(&ctx(), &tenant, &patch)
        .await
        .unwrap();
    tenant
}

/// Steps until nothing waits, an hour later while a tenant is parked (past any backoff).
async fn drain(s: &Setup) {
    let mut now: DateTime<Utc> = Utc::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = s.runner.step(s.fence, now).await.unwrap();
        if report.failed > 0 || report.parked > 0 {
            now += chrono::Duration::hours(1);
        }
        let status = s.db.store.reconciler_status("grafana").await.unwrap();
        if status.lag() == 0 && status.parked == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not reconciled in 60 s: {report:?}, parked {:?}",
            s.db.store.reconciler_parked("grafana").await.unwrap()
        );
        tokio::task::yield_now().await;
    }
}

fn team_id(s: &Setup, name: &str) -> u64 {
    s.grafana
        .teams()
        .into_iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no team {name}"))
        .id
}

/// Checks everything a provisioned tenant has in Grafana; returns its data source password.
fn assert_provisioned(s: &Setup, id: &str, title: &str) -> String {
    let team = team_id(s, &format!("team-{id}"));
    let folder = s.grafana.folder(&format!("budgetd-{id}")).expect("folder");
    assert_eq!(folder.title, format!("{title} ({id})"));
    assert_eq!(
        s.grafana.folder_permissions(&folder.uid).unwrap(),
        vec![FolderPermission::team(team, VIEW)],
        "only the owner group views the folder"
    );
    let ds = s
        .grafana
        .datasource(&format!("budgetd-ds-{id}"))
        .expect("data source");
    assert_eq!(ds.settings["type"], "grafana-postgresql-datasource");
    // budgetd_<6 hex digits of the database's name>_<tenant>: role names are cluster-wide.
    let user = ds.settings["user"].as_str().unwrap();
    assert!(
        user.starts_with("budgetd_") && user.ends_with(&format!("_{}", id.replace('-', "_"))),
        "{user}"
    );
    assert_eq!(ds.settings["jsonData"]["sslmode"], "disable");
    let perms = s.grafana.datasource_permissions(&ds.uid).unwrap();
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(
        (perms[0].team_id, perms[0].permission.as_str()),
        (Some(team), "Query")
    );
    let dashboard = s
        .grafana
        .dashboard(&format!("budgetd-{id}-costs"))
        .expect("dashboard");
    assert_eq!(dashboard.folder_uid.as_deref(), Some(folder.uid.as_str()));
    let text = dashboard.json.to_string();
    assert!(!text.contains("budgetd-finance\""), "{text}");
    assert!(text.contains(&ds.uid));
    let tenant_var = dashboard.json["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tenant")
        .unwrap()
        .clone();
    assert_eq!(
        (tenant_var["type"].as_str(), tenant_var["hide"].as_i64()),
        (Some("constant"), Some(2))
    );
    assert_eq!(tenant_var["query"], id);
    ds.secure_json_data["password"].clone()
}

/// The login role of `tenant`, as the ledger records it.
async fn role_of(db: &TestDb, tenant: &str) -> String {
    sqlx::query_scalar("select role_name from tenant_logins where tenant_id = $1")
        .bind(tenant)
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

async fn login(db: &TestDb, role: &str, password: &str) -> PgConnection {
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(role).unwrap();
    url.set_password(Some(password)).unwrap();
    PgConnection::connect(url.as_str()).await.unwrap()
}

/// The stored password verifier of shop-eu's login.
async fn verifier(db: &TestDb) -> Option<String> {
    sqlx::query_scalar(
        "select rolpassword from pg_authid where rolname = \
         (select role_name from tenant_logins where tenant_id = 'shop-eu')",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap()
}

/// One step that takes the new events (the scan waits for transactions still open anywhere
/// on the test cluster: step until it took them).
async fn step_new(s: &Setup) -> lifecycle::StepReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = s.runner.step(s.fence, Utc::now()).await.unwrap();
        if report.scanned > 0 {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the events were not scanned in 60 s"
        );
        tokio::task::yield_now().await;
    }
}

async fn seed_costs(db: &TestDb, tenant: &str, amount: i64) {
    let seeded = sqlx::query(
        "insert into ledger_rollup_days (tenant_key, day, meter_key, unit_key, currency, \
                                         quantity, amount, entries) \
         select t.tenant_key, current_date, budgetd_meter_key('cpu'), \
                budgetd_unit_key('core_seconds', 'core_hours', 3600), 'EUR', 3600, $2, 1 \
         from tenants t where t.id = $1",
    )
    .bind(tenant)
    .bind(rust_decimal::Decimal::from(amount))
    .execute(db.store.pool())
    .await
    .unwrap();
    assert_eq!(
        seeded.rows_affected(),
        1,
        "no tenant {tenant} to seed costs for"
    );
}

/// Grafana's macros and the pinned variable, as Grafana substitutes them, over the last 90 days.
fn substitute(sql: &str, tenant: &str) -> String {
    let range = "between now() - interval '90 days' and now() + interval '1 day'";
    let mut out = sql
        .replace("${tenant}", tenant)
        .replace("$tenant", tenant)
        .replace("$__timeFrom()", "(now() - interval '90 days')")
        .replace("$__timeTo()", "(now() + interval '1 day')");
    while let Some(at) = out.find("$__timeFilter(") {
        let end = at + out[at..].find(')').unwrap();
        let column = &out[at + "$__timeFilter(".len()..end];
        out = format!("{}{column} {range}{}", &out[..at], &out[end + 1..]);
    }
    assert!(
        !out.contains("$__"),
        "a Grafana macro this test does not know: {out}"
    );
    out
}

fn dashboard_queries(dashboard: &Value, out: &mut Vec<String>) {
    match dashboard {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("rawSql", Value::String(sql)) => out.push(sql.clone()),
                    _ => dashboard_queries(value, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn a_tenant_gets_its_folder_and_reads_only_its_own_rows() {
    let s = setup().await;
    tenant(&s, "shop-eu").await;
    tenant(&s, "globex").await;
    seed_costs(&s.db, "shop-eu", 7).await;
    seed_costs(&s.db, "globex", 1000).await;
    drain(&s).await;
    let password = assert_provisioned(&s, "shop-eu", "shop-eu");
    assert_provisioned(&s, "globex", "globex");

    // Idempotent: a resync and another step write nothing.
    s.grafana.clear_requests();
    let report = s.runner.resync().await.unwrap();
    assert_eq!((report.converged, report.failed), (2, 0));
    assert!(s.grafana.writes().is_empty(), "{:?}", s.grafana.writes());

    // Signed in as shop-eu's data source.
    let mut conn = login(&s.db, &role_of(&s.db, "shop-eu").await, &password).await;
    let rows: Vec<(String, rust_decimal::Decimal)> =
        sqlx::query_as("select tenant_id, amount from tenant_finance.tenant_costs_daily")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("shop-eu".to_owned(), rust_decimal::Decimal::from(7))]
    );
    // Editing the query to ask for another tenant finds nothing...
    for sql in [
        "select count(*) from tenant_finance.tenant_costs_daily where tenant_id = 'globex'",
        "select count(*) from tenant_finance.tenant_costs_daily where tenant_id <> 'shop-eu'",
        "select count(*) from tenant_finance.budget_status where tenant_id = 'globex'",
        "select count(*) from tenant_finance.enforcement_history where tenant_id = 'globex'",
        "select count(*) from tenant_finance.tenant_costs_monthly where tenant_id = 'globex'",
    ] {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
        assert_eq!(n, 0, "{sql}");
    }
    // ... and everything else is refused.
    for sql in [
        "select count(*) from finance.tenant_costs_daily",
        "select count(*) from ledger_rollup_daily",
        "select count(*) from ledger_entries",
        "select count(*) from tenants",
        "select count(*) from tenant_logins",
        "select count(*) from audit_log",
        "create function public.leak(text) returns boolean language sql as 'select true'",
        "set role budgetd_finance",
    ] {
        let e = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        let code = e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{sql}: {e}");
    }
    // Every query of the pinned dashboard runs as the tenant and sees only its rows.
    let dashboard = s.grafana.dashboard("budgetd-shop-eu-costs").unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&dashboard.json, &mut queries);
    assert!(!queries.is_empty());
    for sql in &queries {
        let sql = substitute(sql, "shop-eu");
        assert!(
            !sql.contains(" finance.") && sql.contains("tenant_finance."),
            "{sql}"
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&mut conn)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        for row in rows {
            if let Ok(tenant) = row.try_get::<String, _>("tenant_id") {
                assert_eq!(tenant, "shop-eu", "{sql}");
            }
        }
    }
    // Globex's password is not shop-eu's, and shop-eu's login cannot become globex.
    let globex = s.grafana.datasource("budgetd-ds-globex").unwrap();
    assert_ne!(globex.secure_json_data["password"], password);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn drift_is_repaired_on_resync_and_updates_follow_the_tenant() {
    let s = setup().await;
    let id = tenant(&s, "shop-eu").await;
    drain(&s).await;
    let old_password = assert_provisioned(&s, "shop-eu", "shop-eu");
    let team = team_id(&s, "team-shop-eu");

    // Someone opens the folder to every viewer, edits the dashboard, deletes the data source.
    s.grafana.set_folder_permissions(
        "budgetd-shop-eu",
        &[
            FolderPermission::team(team, VIEW),
            FolderPermission::role("Viewer", VIEW),
        ],
    );
    s.grafana.edit_dashboard("budgetd-shop-eu-costs", |d| {
        d["panels"][0]["targets"][0]["rawSql"] = json!("select * from tenant_finance.budget_status")
    });
    s.grafana.delete_datasource("budgetd-ds-shop-eu");
    let before = verifier(&s.db).await;
    let report = s.runner.resync().await.unwrap();
    assert_eq!((report.converged, report.failed), (1, 0));
    let new_password = assert_provisioned(&s, "shop-eu", "shop-eu");
    assert_ne!(
        new_password, old_password,
        "a recreated data source gets a new password"
    );
    let template: Value = serde_json::from_str(grafana::dashboard::TEMPLATE).unwrap();
    let stored = s.grafana.dashboard("budgetd-shop-eu-costs").unwrap();
    assert_eq!(
        stored.json["panels"][0]["targets"][0]["rawSql"],
        Value::String(grafana::dashboard::tenant_schema(
            template["panels"][0]["targets"][0]["rawSql"]
                .as_str()
                .unwrap()
        ))
    );
    // The login's password changed with it (the test cluster trusts local logins, so the
    // stored verifier is what tells).
    assert_ne!(verifier(&s.db).await, before);
    login(&s.db, &role_of(&s.db, "shop-eu").await, &new_password)
        .await
        .close()
        .await
        .unwrap();

    // A new display name renames the folder; a new owner group takes over the permissions.
    let patch = TenantPatch {
        display_name: Some(DisplayName::parse("Shop Europe").unwrap()),
        owner_group: Some(Some(OwnerGroup::parse("finance-eu").unwrap())),
        ..TenantPatch::default()
    };
    s.db.store.update_tenant(&ctx(), &id, &patch).await.unwrap();
    drain(&s).await;
    let folder = s.grafana.folder("budgetd-shop-eu").unwrap();
    assert_eq!(folder.title, "Shop Europe (shop-eu)");
    let finance = team_id(&s, "finance-eu");
    assert_eq!(
        s.grafana.folder_permissions("budgetd-shop-eu").unwrap(),
        vec![FolderPermission::team(finance, VIEW)]
    );
    let perms = s
        .grafana
        .datasource_permissions("budgetd-ds-shop-eu")
        .unwrap();
    assert_eq!(perms.len(), 1, "{perms:?}");
    assert_eq!(perms[0].team_id, Some(finance));
    assert_eq!(
        s.grafana.dashboard("budgetd-shop-eu-costs").unwrap().json["title"],
        "Costs: Shop Europe"
    );
    // The old team stays: owner groups may be shared.
    team_id(&s, "team-shop-eu");
}

#[tokio::test]
async fn offboarding_removes_the_folder_the_data_source_and_the_login() {
    let s = setup().await;
    let id = tenant(&s, "shop-eu").await;
    tenant(&s, "globex").await;
    drain(&s).await;
    assert_provisioned(&s, "shop-eu", "shop-eu");
    s.db.store
        .offboard_tenant(
            &ctx(),
            &id,
            &Reason::parse("reason", "contract ended").unwrap(),
            OffboardingSettings {
                grace_days: 30,
                retention_years: 7,
                pseudonymise_display_name: false,
            },
            Utc::now(),
        )
        .await
        .unwrap();
    let shop_role = role_of(&s.db, "shop-eu").await;
    drain(&s).await;
    assert!(s.grafana.folder("budgetd-shop-eu").is_none());
    assert!(s.grafana.dashboard("budgetd-shop-eu-costs").is_none());
    assert!(s.grafana.datasource("budgetd-ds-shop-eu").is_none());
    let role: Option<String> =
        sqlx::query_scalar("select rolname::text from pg_roles where rolname = $1")
            .bind(&shop_role)
            .fetch_optional(s.db.store.pool())
            .await
            .unwrap();
    assert_eq!(role, None, "the login is dropped");
    // The other tenant keeps everything; a resync deletes nothing more.
    assert_provisioned(&s, "globex", "globex");
    s.grafana.clear_requests();
    s.runner.resync().await.unwrap();
    assert!(s.grafana.writes().is_empty(), "{:?}", s.grafana.writes());
}

#[tokio::test]
async fn grafana_oss_is_refused_until_restriction_is_switched_off() {
    let s = setup_with(FakeGrafana::start_oss(TOKEN).await, true).await;
    tenant(&s, "shop-eu").await;
    let report = step_new(&s).await;
    assert_eq!(report.failed, 1, "{report:?}");
    let parked = s.db.store.reconciler_parked("grafana").await.unwrap();
    let error = parked[0].last_error.clone().unwrap();
    assert!(
        error.starts_with("config:") && error.contains("grafana.restrict_datasource_access"),
        "{error}"
    );

    let oss = setup_with(FakeGrafana::start_oss(TOKEN).await, false).await;
    tenant(&oss, "shop-eu").await;
    drain(&oss).await;
    assert!(oss.grafana.folder("budgetd-shop-eu").is_some());
    assert!(oss.grafana.dashboard("budgetd-shop-eu-costs").is_some());
}

#[tokio::test]
async fn grafana_failures_are_retried_and_a_wrong_token_parks_the_tenant() {
    let s = setup().await;
    tenant(&s, "shop-eu").await;
    // Two 503s: retried inside one call (max_attempts = 3).
    s.grafana.inject(
        Fault::next(2, 503)
            .method("POST")
            .path_contains("/api/folders"),
    );
    // Nothing fails, at the same instant (no backoff passes): the retries are inside the calls.
    // (The update's event may come in a later scan than the creation's.)
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = s.runner.step(s.fence, Utc::now()).await.unwrap();
        assert_eq!(
            (report.failed, report.parked),
            (0, 0),
            "{report:?} {:?}",
            s.db.store.reconciler_parked("grafana").await.unwrap()
        );
        if report.lag == 0 && report.scanned == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not reconciled in 60 s: {report:?}"
        );
        tokio::task::yield_now().await;
    }
    assert_provisioned(&s, "shop-eu", "shop-eu");
    let posts = s
        .grafana
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/api/folders")
        .map(|r| r.status)
        .collect::<Vec<_>>();
    assert_eq!(posts, vec![503, 503, 200]);

    // Grafana down for longer: the tenant is parked with the error, then goes through.
    tenant(&s, "globex").await;
    s.grafana
        .inject(Fault::always(500).path_contains("/api/folders"));
    let report = step_new(&s).await;
    assert_eq!(report.failed, 1, "{report:?}");
    let parked = s.db.store.reconciler_parked("grafana").await.unwrap();
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("server_error:"),
        "{parked:?}"
    );
    s.grafana.clear_faults();
    drain(&s).await;
    assert_provisioned(&s, "globex", "globex");

    // A token Grafana does not take: refused, named, nothing retried in a loop.
    let other = setup_with(FakeGrafana::start("another-token").await, true).await;
    tenant(&other, "shop-eu").await;
    let report = step_new(&other).await;
    assert_eq!(report.failed, 1);
    let parked = other.db.store.reconciler_parked("grafana").await.unwrap();
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap()
            .starts_with("unauthorized:"),
        "{parked:?}"
    );
    assert_eq!(other.grafana.requests().len(), 1, "a 401 is not retried");
}
