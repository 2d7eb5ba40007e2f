//! Shared test support: the real router over a fresh database, requests, and snapshots of the
//! ledger that show whether anything changed.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use budgetd::api::{router, AppState, Clock};
use budgetd::auth::{Authenticator, Principal, Role, TokenHash};
use http_body_util::BodyExt;
use ledger::tenant::TenantId;
use ledger::{Store, StoreConfig};
use serde_json::Value;
use testkit::db::TestDb;
use tower::ServiceExt;

/// The test tokens: each role's token is its name with a suffix.
pub const ROLES: &[&str] = &[
    "admin", "operator", "finance", "viewer", "auditor", "tenant",
];

pub fn token(role: &str) -> String {
    format!("{role}-token-0123456789")
}

/// The tenant the `tenant` role's token is scoped to.
pub const OWN_TENANT: &str = "acme";

pub fn authenticator() -> Authenticator {
    Authenticator::new(ROLES.iter().map(|&role| {
        let scoped = (role == "tenant").then(|| TenantId::parse(OWN_TENANT).unwrap());
        (
            TokenHash::of(&token(role)),
            Principal {
                name: format!("{role}-user"),
                role: Role::parse(role, scoped).unwrap(),
            },
        )
    }))
}

pub struct TestApp {
    pub router: Router,
    pub db: TestDb,
}

/// The app on the wall clock.
pub async fn app() -> TestApp {
    app_with_clock(budgetd::api::wall_clock()).await
}

/// The app on `clock`.
pub async fn app_with_clock(clock: Clock) -> TestApp {
    let db = testkit::db::fresh_database().await;
    let router = router_on(db.store.clone(), &[], clock);
    TestApp { router, db }
}

pub fn router_for(store: Store) -> Router {
    router_pricing(store, &[])
}

/// The router of a daemon whose collector prices `meters`: (meter, price unit).
pub fn router_pricing(store: Store, meters: &[(&str, &str)]) -> Router {
    router_on(store, meters, budgetd::api::wall_clock())
}

fn router_on(store: Store, meters: &[(&str, &str)], clock: Clock) -> Router {
    router_limiting_rates(
        store,
        meters,
        clock,
        ledger::price_book::RateLimits::default(),
    )
}

/// The router of a daemon whose collector prices `meters`, with `[price_book]` rate limits.
pub fn router_limiting_rates(
    store: Store,
    meters: &[(&str, &str)],
    clock: Clock,
    rate_limits: ledger::price_book::RateLimits,
) -> Router {
    router_full(
        store,
        meters,
        clock,
        rate_limits,
        ledger::config::LifecycleSettings::default(),
        authenticator(),
    )
}

/// The app on the wall clock with `[lifecycle]` settings `lifecycle`.
pub async fn app_with_lifecycle(lifecycle: ledger::config::LifecycleSettings) -> TestApp {
    let db = testkit::db::fresh_database().await;
    let router = router_full(
        db.store.clone(),
        &[],
        budgetd::api::wall_clock(),
        ledger::price_book::RateLimits::default(),
        lifecycle,
        authenticator(),
    );
    TestApp { router, db }
}

/// The app on the wall clock whose authenticator also takes what `extend` adds to the test
/// tokens (a bootstrap token, OIDC issuers).
pub async fn app_with_auth(extend: impl FnOnce(Authenticator) -> Authenticator) -> TestApp {
    let db = testkit::db::fresh_database().await;
    let router = router_full(
        db.store.clone(),
        &[],
        budgetd::api::wall_clock(),
        ledger::price_book::RateLimits::default(),
        ledger::config::LifecycleSettings::default(),
        extend(authenticator()),
    );
    TestApp { router, db }
}

fn router_full(
    store: Store,
    meters: &[(&str, &str)],
    clock: Clock,
    rate_limits: ledger::price_book::RateLimits,
    lifecycle: ledger::config::LifecycleSettings,
    auth: Authenticator,
) -> Router {
    log_to_test_output();
    router(AppState {
        store,
        auth: Arc::new(auth),
        metrics: budgetd::telemetry::metrics_handle(),
        request_timeout: Duration::from_secs(60),
        body_timeout: Duration::from_secs(60),
        readiness_timeout: Duration::from_millis(800),
        priced_meters: Arc::new(
            meters
                .iter()
                .map(|(m, u)| {
                    (
                        ledger::price_book::MeterName::parse("meter", m).unwrap(),
                        ledger::entry::UnitName::parse("price_unit", u).unwrap(),
                    )
                })
                .collect(),
        ),
        rate_limits: Arc::new(rate_limits),
        status: budgetd::api::VIEW_STATUS,
        clock,
        lifecycle: Arc::new(lifecycle),
    })
}

pub fn pooled_store_config(url: &str) -> StoreConfig {
    StoreConfig {
        max_connections: 16,
        ..testkit::db::store_config(url)
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub request_id: Option<String>,
}

impl TestApp {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let body = body.map(|b| b.to_string().into_bytes());
        self.raw(method, path, token, body).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Reply {
        call(&self.router, method, path, token, body).await
    }

    /// Row counts and checksums of every table a request could change.
    pub async fn snapshot(&self) -> Vec<(String, String)> {
        snapshot(&self.db.store).await
    }
}

pub async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = match body {
        Some(bytes) => req
            .header("content-type", "application/json")
            .body(Body::from(bytes))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let response = router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let request_id = response
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    Reply {
        status,
        body,
        request_id,
    }
}

/// Every table of the ledger's schemas, each with its row count and an md5 of its rows, read
/// in one query: equal snapshots mean no request changed anything.
pub async fn snapshot(store: &Store) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "select format('%I.%I', table_schema, table_name) from information_schema.tables \
         where table_type = 'BASE TABLE' \
           and table_schema not in ('pg_catalog', 'information_schema') \
           and table_name <> '_sqlx_migrations' \
         order by 1",
    )
    .fetch_all(store.pool())
    .await
    .expect("list tables");
    assert!(
        tables.len() >= 8,
        "expected the ledger's tables: {tables:?}"
    );
    let digests = tables
        .iter()
        .map(|t| {
            format!(
                "select '{t}' as name, count(*) || ':' || \
                 coalesce(md5(string_agg(r::text, ',' order by r::text)), '') as digest from {t} r"
            )
        })
        .collect::<Vec<_>>()
        .join(" union all ");
    sqlx::query_as(&digests)
        .fetch_all(store.pool())
        .await
        .expect("digest the tables")
}

pub fn tenant_body(id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "display_name": format!("Tenant {id}"),
        "owner": "ops@example.com",
        "data_residency": "eu",
        "labels": {"team": "payments"}
    })
}

/// A valid self-service request for tenant `id`.
pub fn request_body(id: &str) -> Value {
    serde_json::json!({
        "id": id,
        "display_name": format!("Tenant {id}"),
        "owner": "owner@example.com",
        "owner_group": "team-payments",
        "data_residency": "eu",
        "labels": {"team": "payments"},
        "quota_profile": "standard",
        "budget": {"amount": "500.00", "currency": "EUR", "period": "monthly"},
        "justification": "the payments team needs a staging environment"
    })
}

/// Requests tenants as `role`.
pub async fn seed_requests(app: &TestApp, role: &str, ids: &[&str]) {
    for id in ids {
        let reply = app
            .call(
                Method::POST,
                "/api/v1/tenant-requests",
                Some(&token(role)),
                Some(request_body(id)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{id}: {:?}", reply.body);
    }
}

/// Creates tenants with the admin token.
pub async fn seed_tenants(app: &TestApp, ids: &[&str]) {
    for id in ids {
        let reply = app
            .call(
                Method::POST,
                "/api/v1/tenants",
                Some(&token("admin")),
                Some(tenant_body(id)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{id}: {:?}", reply.body);
    }
}

/// Opens an enforcement action on `tenant`'s rung `step_key` in `state`, as the enforcer would
/// (for tests of the routes that read and decide actions).
pub async fn open_action(
    store: &Store,
    fence: ledger::enforcement::Fence,
    tenant: &str,
    step_key: &str,
    state: ledger::enforcement::ActionState,
) -> ledger::enforcement::ActionRecord {
    let ctx = ledger::audit::AuditContext {
        actor: ledger::audit::Actor::system("test"),
        request_id: "test-action".into(),
    };
    let new = ledger::enforcement::NewAction {
        tenant: TenantId::parse(tenant).unwrap(),
        period_start: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        step_key: step_key.to_owned(),
        step: serde_json::json!({}),
        kind: ledger::enforcement::ActionKind::Suspend,
        state,
        reason: "test".into(),
        spent: 130.into(),
        forecast: 150.into(),
        budget: ledger::money::Money {
            amount: 100.into(),
            currency: ledger::currency::Currency::parse("currency", "EUR").unwrap(),
        },
        not_before: chrono::Utc::now(),
    };
    store.open_action(fence, &ctx, &new).await.unwrap()
}

/// Warnings and errors the app logs (a 500's cause, which the client never sees) go to the
/// test's captured output, so a failing test shows them.
fn log_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_test_writer()
            .try_init();
    });
}

/// Every (method, path template) the router declares, read from its route table in
/// `src/api/mod.rs`.
pub fn declared_routes() -> std::collections::BTreeSet<(String, String)> {
    let source = include_str!("../../src/api/mod.rs");
    let mut declared = std::collections::BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).expect("a path literal");
        let handlers = chunk.split(".route(").next().unwrap_or(chunk);
        let handlers = handlers.split(".fallback(").next().unwrap_or(handlers);
        for method in ["get", "post", "put", "patch", "delete"] {
            if handlers.contains(&format!("{method}(")) {
                declared.insert((method.to_uppercase(), path.to_owned()));
            }
        }
    }
    declared
}

/// Spawns `command` as `budgetd run` listening on a port the kernel picks (127.0.0.1:0), its
/// stderr into `log`, and returns it with its API's base URL, read from its "budgetd API
/// listening" log line (at most 60 s). A port picked beforehand and given up could be bound by
/// another process before the daemon binds it.
pub fn spawn_daemon(
    command: &mut std::process::Command,
    log: &std::path::Path,
) -> (std::process::Child, String) {
    let mut child = command
        .env("BUDGETD_API_LISTEN", "127.0.0.1:0")
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) =
            testkit::complete_lines(&text).find(|l| l.contains("budgetd API listening"))
        {
            return (child, format!("http://{}", crate::cli::listen_addr(line)));
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("budgetd run exited ({status}) before it listened; its log:\n{text}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "budgetd run did not listen within 60 s; its log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `budgetd run` process serving on a free loopback port, its stderr in `budgetd.log` of its
/// directory; killed on drop.
pub struct Daemon {
    child: std::process::Child,
    pub api: String,
    pub log: std::path::PathBuf,
}

impl Daemon {
    /// `budgetd run` with `BUDGETD_CONFIG=config` and info logs, and `env` on top. The test's
    /// own database URL and bootstrap token variables are not passed on unless `env` sets them.
    pub fn run(dir: &std::path::Path, config: &std::path::Path, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join("budgetd.log");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_budgetd"));
        command
            .env_remove("BUDGETD_DATABASE_URL")
            .env_remove("BUDGETD_MIGRATE_DATABASE_URL")
            .env_remove("BUDGETD_BOOTSTRAP_ADMIN_TOKEN")
            .env("BUDGETD_CONFIG", config)
            .env("BUDGETD_LOG", "info");
        for (name, value) in env {
            command.env(name, value);
        }
        let (child, api) = spawn_daemon(&mut command, &log);
        Daemon { child, api, log }
    }

    /// What the daemon logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
