//! Offboarding through the API and the store's steps on a real Postgres: the start (state,
//! record, final report), disabled tenant tokens, the final report's download, the fenced
//! steps, pseudonymisation with the audit chain intact, and the refusals.

use axum::http::{Method, StatusCode};
use chrono::{DurationRound, TimeDelta, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::config::LifecycleSettings;
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::offboarding::{is_pseudonym, OffboardingSettings};
use ledger::price_book::{MeterName, NewPriceBookVersion};
use ledger::store::{ChainStatus, LeaderLock};
use ledger::tenant::TenantId;
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::*;

const OWNER: &str = "alice@acme.example";

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "test".into(),
    }
}

async fn app_with_grace(grace_days: u32) -> TestApp {
    app_with_lifecycle(LifecycleSettings {
        offboarding: OffboardingSettings {
            grace_days,
            ..OffboardingSettings::default()
        },
        ..LifecycleSettings::default()
    })
    .await
}

/// `acme` (owned by [`OWNER`], with a monthly budget) and `globex`, each with CPU costs in
/// the current hour.
async fn seed(app: &TestApp) {
    let mut acme = tenant_body(OWN_TENANT);
    acme["owner"] = json!(OWNER);
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(acme),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    seed_tenants(app, &["globex"]).await;
    let reply = app
        .call(
            Method::PUT,
            "/api/v1/tenants/acme/budget",
            Some(&token("admin")),
            Some(json!({"amount": "1000.00", "currency": "EUR", "effective_from": "2026-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let version = app
        .db
        .store
        .add_price_book_version(
            &ctx(),
            &NewPriceBookVersion::new(
                "2026-01-01T00:00:00Z".parse().unwrap(),
                "EUR".parse().unwrap(),
                [(cpu.clone(), Decimal::new(31, 3))].into(),
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
    // Today's first windows: inside the open budget period whenever the test runs.
    let midnight = Utc::now().duration_trunc(TimeDelta::days(1)).unwrap();
    let entries: Vec<NewEntry> = [("acme", 0, 7200), ("acme", 1, 3600), ("globex", 0, 900)]
        .into_iter()
        .map(|(tenant, n, core_seconds)| {
            let start = midnight + TimeDelta::minutes(5 * n);
            NewEntry::new(
                EntryKey {
                    tenant: tenant.parse().unwrap(),
                    meter: cpu.clone(),
                    window: Window::new(start, start + TimeDelta::minutes(5)).unwrap(),
                },
                Decimal::from(core_seconds),
                UnitName::parse("u", "core_seconds").unwrap(),
                pricing.clone(),
            )
            .unwrap()
        })
        .collect();
    app.db.store.write_entries(&entries, "test").await.unwrap();
}

async fn audit_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap()
}

async fn leader(app: &TestApp) -> LeaderLock {
    LeaderLock::try_acquire(&app.db.url, "test", 15, std::time::Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no other leader")
}

fn error_code(reply: &Reply) -> &str {
    reply.body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn offboarding_runs_from_delete_to_pseudonymised_with_the_audit_chain_intact() {
    let app = app_with_grace(0).await;
    seed(&app).await;
    let acme = TenantId::parse(OWN_TENANT).unwrap();
    let tenant_token = token("tenant");
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme",
            Some(&tenant_token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // Start: 202, offboarding, one record, its final report, the outbox event with the grace.
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/acme",
            Some(&token("operator")),
            Some(json!({"reason": "contract ended"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["state"], "offboarding");
    let event: Value = sqlx::query_scalar(
        "select payload from outbox where aggregate_id = 'acme' and event_type = 'tenant.offboarding'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(event["reason"], "contract ended");
    assert!(event["grace_until"].is_string(), "{event}");

    // Asking again: the same answer, nothing written.
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/acme",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(reply.body["state"], "offboarding");
    assert_eq!(app.snapshot().await, before);

    // Progress: started, report written, grace (0 days) over, access not revoked yet.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/offboarding",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let progress = reply.body;
    assert_eq!(progress["state"], "offboarding");
    assert_eq!(progress["reason"], "contract ended");
    assert_eq!(progress["requested_by"], "operator-user");
    assert_eq!(progress["grace_until"], progress["started_at"]);
    let done: Vec<(&str, bool)> = progress["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["done"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        done,
        [
            ("started", true),
            ("final_report", true),
            ("access_revoked", false),
            ("grace_period", true),
            ("resources_deleted", false),
            ("completed", false)
        ]
    );
    let started =
        chrono::DateTime::parse_from_rfc3339(progress["started_at"].as_str().unwrap()).unwrap();
    let retain =
        chrono::DateTime::parse_from_rfc3339(progress["retain_until"].as_str().unwrap()).unwrap();
    assert_eq!(
        retain,
        started
            .checked_add_months(chrono::Months::new(120))
            .unwrap()
    );

    // The tenant's token is refused from now on, on every route.
    for path in [
        "/api/v1/tenants/acme",
        "/api/v1/tenants/acme/budget",
        "/api/v1/tenants",
    ] {
        let reply = app.call(Method::GET, path, Some(&tenant_token), None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(error_code(&reply), "token_disabled", "{path}");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("offboarded"),
            "{:?}",
            reply.body
        );
    }

    // The final report: the costs route's rows for its period, as JSON and CSV.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/final-report",
            Some(&token("finance")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let report = reply.body;
    let (from, to) = (
        report["from"].as_str().unwrap().to_owned(),
        report["to"].as_str().unwrap().to_owned(),
    );
    assert_eq!(from, format!("{}", Utc::now().format("%Y-%m-01")));
    let costs = app
        .call(
            Method::GET,
            &format!("/api/v1/tenants/acme/costs?from={from}&to={to}"),
            Some(&token("finance")),
            None,
        )
        .await;
    assert_eq!(costs.status, StatusCode::OK);
    assert_eq!(report["rows"], costs.body["rows"]);
    assert_eq!(report["totals"], costs.body["totals"]);
    assert_eq!(report["rows"].as_array().unwrap().len(), 1);
    assert_eq!(report["rows"][0]["tenant_id"], "acme");
    assert_eq!(report["rows"][0]["quantity"], "10800");
    let sha256 = report["sha256"].as_str().unwrap();
    let audited: Value = sqlx::query_scalar(
        "select after from audit_log where action = 'tenant.final_report' and target_id = 'acme'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(audited["sha256"], sha256);
    let reply = app
        .raw(
            Method::GET,
            "/api/v1/tenants/acme/final-report?format=csv",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let csv = reply.body.as_str().expect("CSV text").to_owned();
    let row = &report["rows"][0];
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        [
            "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit",
            &format!(
                "acme,{},cpu,10800,core_seconds,{},EUR,3,core_hour",
                row["day"].as_str().unwrap(),
                row["amount"].as_str().unwrap()
            ),
            &format!("TOTAL,,,,,{},EUR,,", row["amount"].as_str().unwrap()),
        ]
    );
    // Usage collected during the grace period lands in the ledger; the report stays closed.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/final-report",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.body["sha256"], sha256);

    // The steps: resources only after access is revoked; each step once.
    let lock = leader(&app).await;
    let store = &app.db.store;
    let refused = store
        .offboarding_resources_deleted(lock.fence(), &acme, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            ledger::Error::Conflict {
                code: "grace_period",
                ..
            }
        ),
        "{refused}"
    );
    let revoked = store
        .offboarding_access_revoked(lock.fence(), &acme, Utc::now())
        .await
        .unwrap();
    assert!(revoked.access_revoked_at.is_some());
    let audits = audit_count(&app).await;
    let again = store
        .offboarding_access_revoked(lock.fence(), &acme, Utc::now())
        .await
        .unwrap();
    assert_eq!(again, revoked);
    assert_eq!(audit_count(&app).await, audits);
    // A stale fence is refused.
    let stale = ledger::enforcement::Fence(lock.fence().0 - 1);
    assert!(store
        .offboarding_resources_deleted(stale, &acme, Utc::now())
        .await
        .unwrap_err()
        .is_fenced());

    let offboarded = store
        .offboarding_resources_deleted(lock.fence(), &acme, Utc::now())
        .await
        .unwrap();
    assert_eq!(offboarded.state, ledger::tenant::TenantState::Offboarded);
    assert!(
        is_pseudonym(offboarded.owner.as_str()),
        "{:?}",
        offboarded.owner
    );
    // The display name stays (pseudonymise_display_name is off by default).
    assert_eq!(offboarded.display_name.as_str(), "Tenant acme");
    let audits = audit_count(&app).await;
    let again = store
        .offboarding_resources_deleted(lock.fence(), &acme, Utc::now())
        .await
        .unwrap();
    assert_eq!(again, offboarded);
    assert_eq!(audit_count(&app).await, audits);

    // The owner is gone from every output: GET, list, requests' tenants, audit, outbox.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.body["state"], "offboarded");
    assert_eq!(reply.body["owner"], offboarded.owner.as_str());
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&token("viewer")), None)
        .await;
    let listed = reply.body.to_string();
    assert!(!listed.contains(OWNER), "{listed}");
    assert!(listed.contains(offboarded.owner.as_str()));
    let leaks: i64 = sqlx::query_scalar(
        "select (select count(*) from audit_log where coalesce(before::text, '') || coalesce(after::text, '') like '%' || $1 || '%') \
              + (select count(*) from outbox where payload::text like '%' || $1 || '%') \
              + (select count(*) from personal_data where value = $1) \
              + (select count(*) from tenants where owner = $1)",
    )
    .bind(OWNER)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    let pseudonymised: i64 = sqlx::query_scalar(
        "select count(*) from personal_data where tenant_id = 'acme' and field = 'owner' \
         and value = $1 and pseudonymised_at is not null",
    )
    .bind(offboarded.owner.as_str())
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(pseudonymised, 1);
    // globex keeps its owner.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/globex",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.body["owner"], "ops@example.com");

    // The chain still verifies, and every step left its record and event.
    assert!(matches!(
        store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { .. }
    ));
    let actions: Vec<String> = sqlx::query_scalar(
        "select action from audit_log where target_id = 'acme' and action not like 'tenant.create' \
         and action <> 'tenant.budget' order by seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        actions.ends_with(&[
            "tenant.offboarding".to_owned(),
            "tenant.final_report".to_owned(),
            "tenant.access_revoked".to_owned(),
            "tenant.resources_deleted".to_owned(),
            "tenant.offboarded".to_owned(),
            "tenant.pseudonymise".to_owned(),
        ]),
        "{actions:?}"
    );
    let events: Vec<String> = sqlx::query_scalar(
        "select event_type from outbox where aggregate_id = 'acme' order by seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(
        events.ends_with(&[
            "tenant.offboarding".to_owned(),
            "tenant.access_revoked".to_owned(),
            "tenant.offboarded".to_owned(),
        ]),
        "{events:?}"
    );
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/offboarding",
            Some(&token("admin")),
            None,
        )
        .await;
    assert!(reply.body["steps"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["done"] == true));

    // Offboarded: DELETE is a 409 naming the final state; nothing is ever deleted.
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/acme",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["current_state"], "offboarded");
    assert_eq!(reply.body["error"]["allowed"], json!([]));
    assert_eq!(app.snapshot().await, before);
    for sql in [
        "delete from tenants where id = 'acme'",
        "delete from tenant_final_reports",
        "update tenant_final_reports set rows = '[]'",
        "delete from tenant_offboardings",
        "update tenant_offboardings set access_revoked_at = null",
    ] {
        let err = sqlx::query(sql).execute(store.pool()).await.unwrap_err();
        assert!(
            err.to_string().contains("tenant") || err.to_string().contains("append-only"),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn the_display_name_is_pseudonymised_when_configured() {
    let app = app_with_lifecycle(LifecycleSettings {
        offboarding: OffboardingSettings {
            grace_days: 0,
            pseudonymise_display_name: true,
            ..OffboardingSettings::default()
        },
        ..LifecycleSettings::default()
    })
    .await;
    seed_tenants(&app, &["globex"]).await;
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let lock = leader(&app).await;
    let id = TenantId::parse("globex").unwrap();
    app.db
        .store
        .offboarding_access_revoked(lock.fence(), &id, Utc::now())
        .await
        .unwrap();
    let tenant = app
        .db
        .store
        .offboarding_resources_deleted(lock.fence(), &id, Utc::now())
        .await
        .unwrap();
    assert!(is_pseudonym(tenant.display_name.as_str()));
    assert!(is_pseudonym(tenant.owner.as_str()));
    assert_ne!(tenant.display_name.as_str(), tenant.owner.as_str());
    let leaks: i64 = sqlx::query_scalar(
        "select count(*) from outbox where payload::text like '%Tenant globex%'",
    )
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    assert!(matches!(
        app.db.store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { .. }
    ));
}

/// A refused request: method, path, body, and the status, code and field of its answer.
type Refusal = (
    Method,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn offboarding_refuses_what_it_cannot_do_and_changes_nothing() {
    // The default grace period: 7 days.
    let app = app_with_lifecycle(LifecycleSettings::default()).await;
    seed_tenants(&app, &["globex"]).await;
    seed_requests(&app, "viewer", &["asked"]).await;

    let refusals: Vec<Refusal> = vec![
        (
            Method::DELETE,
            "/api/v1/tenants/asked",
            None,
            StatusCode::CONFLICT,
            "invalid_transition",
            None,
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(json!({"reason": ""})),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("reason"),
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(json!({"reason": "a\nb"})),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("reason"),
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(json!({"reason": "x".repeat(1001)})),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("reason"),
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(json!({"reason": "ok", "grace_days": 0})),
            StatusCode::BAD_REQUEST,
            "unknown_field",
            Some("grace_days"),
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(json!({"reason": 5})),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("reason"),
        ),
        (
            Method::DELETE,
            "/api/v1/tenants/ghost",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
        (
            Method::GET,
            "/api/v1/tenants/globex/offboarding",
            None,
            StatusCode::NOT_FOUND,
            "not_offboarding",
            None,
        ),
        (
            Method::GET,
            "/api/v1/tenants/globex/final-report",
            None,
            StatusCode::NOT_FOUND,
            "not_offboarding",
            None,
        ),
        (
            Method::GET,
            "/api/v1/tenants/globex/final-report?format=xml",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("format"),
        ),
        (
            Method::GET,
            "/api/v1/tenants/globex/final-report?since=1",
            None,
            StatusCode::BAD_REQUEST,
            "unknown_field",
            Some("since"),
        ),
        (
            Method::GET,
            "/api/v1/tenants/ghost/offboarding",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        ),
    ];
    for (method, path, body, status, code, field) in refusals {
        let before = app.snapshot().await;
        let reply = app
            .call(method.clone(), path, Some(&token("admin")), body)
            .await;
        assert_eq!(reply.status, status, "{method} {path}: {:?}", reply.body);
        assert_eq!(
            error_code(&reply),
            code,
            "{method} {path}: {:?}",
            reply.body
        );
        if let Some(field) = field {
            assert_eq!(reply.body["error"]["field"], field, "{method} {path}");
        }
        assert_eq!(
            app.snapshot().await,
            before,
            "{method} {path} changed something"
        );
    }
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/asked",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.body["error"]["current_state"], "requested");
    assert_eq!(
        reply.body["error"]["allowed"],
        json!(["active", "rejected"])
    );

    // In the grace period the resources stay, even once access is revoked.
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/globex",
            Some(&token("operator")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED);
    let lock = leader(&app).await;
    let id = TenantId::parse("globex").unwrap();
    let store = &app.db.store;
    let record = store
        .offboarding_access_revoked(lock.fence(), &id, Utc::now())
        .await
        .unwrap();
    assert_eq!(record.grace_until - record.started_at, TimeDelta::days(7));
    let before = app.snapshot().await;
    let err = store
        .offboarding_resources_deleted(lock.fence(), &id, Utc::now())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ledger::Error::Conflict {
                code: "grace_period",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("grace period"), "{err}");
    assert_eq!(app.snapshot().await, before);
    // Once it is over, offboarding completes.
    let tenant = store
        .offboarding_resources_deleted(lock.fence(), &id, record.grace_until)
        .await
        .unwrap();
    assert_eq!(tenant.state, ledger::tenant::TenantState::Offboarded);
    // A tenant not being offboarded has no steps to take.
    seed_tenants(&app, &["active-one"]).await;
    let err = store
        .offboarding_access_revoked(
            lock.fence(),
            &TenantId::parse("active-one").unwrap(),
            Utc::now(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ledger::Error::NotFound { .. }), "{err}");
}
