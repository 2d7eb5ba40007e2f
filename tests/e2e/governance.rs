//! Governance reports through the real router and Postgres: the governance report's CSV and
//! JSON agree with each other and with the budget status route, the audit trail's cursor pages
//! cover every record exactly once while records are appended, a tenant token never sees
//! another tenant's record, the access review flags tokens unused for 90 days, and bad
//! parameters are refused naming the field.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chrono::{Duration, Utc};
use http_body_util::BodyExt;
use ledger::audit::{Actor, AuditContext};
use ledger::store::NewApiToken;
use ledger::tenant::TenantId;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::*;

async fn put_budget(app: &TestApp, tenant: &str, amount: &str) {
    let reply = app
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/{tenant}/budget"),
            Some(&token("finance")),
            Some(json!({"amount": amount, "currency": "EUR", "period": "monthly", "thresholds": [50, 80, 100]})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

/// GET with an `Accept` header, answering the status, content type and body text.
async fn get_accepting(app: &TestApp, path: &str, accept: &str) -> (StatusCode, String, String) {
    let req = Request::builder()
        .uri(path)
        .header("authorization", format!("Bearer {}", token("auditor")))
        .header("accept", accept)
        .body(Body::empty())
        .unwrap();
    let response = app.router.clone().oneshot(req).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// The JSON row as the CSV writes it (null: an empty cell; namespaces joined by `;`).
fn as_csv_cells(row: &Value) -> Vec<String> {
    let text = |key: &str| match &row[key] {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let namespaces: Vec<&str> = row["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let at = chrono::DateTime::parse_from_rfc3339(row["state_changed_at"].as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc);
    vec![
        text("tenant_id"),
        text("display_name"),
        text("owner"),
        text("owner_group"),
        text("state"),
        text("data_residency"),
        namespaces.join(";"),
        text("period"),
        text("currency"),
        text("budget"),
        text("spent"),
        text("forecast"),
        text("budget_state"),
        text("open_enforcement_actions"),
        ledger::audit::timestamp(at),
    ]
}

#[tokio::test]
async fn the_governance_report_in_csv_and_json_agree_with_the_budget_status() {
    use ledger::enforcement::ActionState;
    let app = app().await;
    seed_tenants(&app, &["acme", "globex"]).await;
    put_budget(&app, "acme", "1000.00").await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "test",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    for (step, state) in [
        ("a", ActionState::Pending),
        ("b", ActionState::Applied),
        ("c", ActionState::Rejected),
    ] {
        open_action(&app.db.store, lock.fence(), "acme", step, state).await;
    }

    let json = app
        .call(
            Method::GET,
            "/api/v1/reports/governance",
            Some(&token("finance")),
            None,
        )
        .await;
    assert_eq!(json.status, StatusCode::OK, "{:?}", json.body);
    let rows = json.body["tenants"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let acme = rows.iter().find(|r| r["tenant_id"] == "acme").unwrap();
    let globex = rows.iter().find(|r| r["tenant_id"] == "globex").unwrap();
    assert_eq!(acme["owner"], "ops@example.com");
    assert_eq!(acme["display_name"], "Tenant acme");
    assert_eq!(acme["data_residency"], "eu");
    assert_eq!(acme["state"], "active");
    assert_eq!(acme["budget"], "1000.00");
    assert_eq!(acme["currency"], "EUR");
    // The pending and the applied action are open; the rejected one is not.
    assert_eq!(acme["open_enforcement_actions"], 2);
    assert!(globex["budget"].is_null() && globex["spent"].is_null());
    assert_eq!(globex["open_enforcement_actions"], 0);

    // The same numbers as the budget status route.
    let status = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/budget/status",
            Some(&token("finance")),
            None,
        )
        .await;
    assert_eq!(status.status, StatusCode::OK, "{:?}", status.body);
    for (row_key, status_key) in [
        ("budget", "budget"),
        ("spent", "spent"),
        ("forecast", "forecast"),
        ("budget_state", "state"),
    ] {
        assert_eq!(acme[row_key], status.body[status_key], "{row_key}");
    }

    // CSV by query and by Accept: the same text, and the same values as the JSON.
    let (code, content_type, by_accept) =
        get_accepting(&app, "/api/v1/reports/governance", "text/csv").await;
    assert_eq!(code, StatusCode::OK);
    assert!(content_type.starts_with("text/csv"), "{content_type}");
    let (code, _, by_query) = get_accepting(
        &app,
        "/api/v1/reports/governance?format=csv",
        "application/json",
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(by_accept, by_query);
    let mut lines = by_query.lines();
    assert_eq!(
        lines.next().unwrap(),
        budgetd::governance::GOVERNANCE_CSV_HEADER
    );
    let csv_rows: Vec<Vec<String>> = lines
        .map(|l| l.split(',').map(str::to_owned).collect())
        .collect();
    let json_rows: Vec<Vec<String>> = rows.iter().map(as_csv_cells).collect();
    assert_eq!(csv_rows, json_rows);
    // `?format=json` wins over `Accept: text/csv`.
    let (_, content_type, _) =
        get_accepting(&app, "/api/v1/reports/governance?format=json", "text/csv").await;
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
}

async fn all_seqs(app: &TestApp) -> Vec<i64> {
    sqlx::query_scalar("select seq from audit_log order by seq desc")
        .fetch_all(app.db.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_pages_cover_every_record_exactly_once_while_records_are_appended() {
    let app = app().await;
    let ids: Vec<String> = (0..12).map(|i| format!("before-{i}")).collect();
    seed_tenants(&app, &ids.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let router = app.router.clone();
    let appender = tokio::spawn(async move {
        for i in 0..20 {
            let reply = call(
                &router,
                Method::POST,
                "/api/v1/tenants",
                Some(&token("admin")),
                Some(tenant_body(&format!("during-{i}")).to_string().into_bytes()),
            )
            .await;
            assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        }
    });

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut first_page_top = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/audit?limit=3&cursor={c}"),
            None => "/api/v1/audit?limit=3".to_owned(),
        };
        let page = app
            .call(Method::GET, &path, Some(&token("auditor")), None)
            .await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        let records = page.body["records"].as_array().unwrap();
        assert!(records.len() <= 3);
        for r in records {
            seen.push(r["seq"].as_i64().unwrap());
        }
        first_page_top.get_or_insert_with(|| seen[0]);
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    appender.await.unwrap();
    // Newest first, no repeats, and every record up to the newest of the first page.
    assert!(seen.windows(2).all(|w| w[0] > w[1]), "{seen:?}");
    let top = first_page_top.unwrap();
    let expected: Vec<i64> = all_seqs(&app)
        .await
        .into_iter()
        .filter(|s| *s <= top)
        .collect();
    assert_eq!(seen, expected);
    assert!(expected.len() >= 12);
}

#[tokio::test]
async fn a_tenant_token_never_sees_another_tenants_record() {
    use ledger::enforcement::ActionState;
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT, "globex"]).await;
    put_budget(&app, OWN_TENANT, "100.00").await;
    put_budget(&app, "globex", "200.00").await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "test",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let own_action = open_action(
        &app.db.store,
        lock.fence(),
        OWN_TENANT,
        "a",
        ActionState::Pending,
    )
    .await;
    let other_action = open_action(
        &app.db.store,
        lock.fence(),
        "globex",
        "a",
        ActionState::Pending,
    )
    .await;

    let page = app
        .call(
            Method::GET,
            "/api/v1/audit?limit=1000",
            Some(&token("tenant")),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
    let records = page.body["records"].as_array().unwrap();
    let targets: BTreeSet<(String, String)> = records
        .iter()
        .map(|r| {
            (
                r["target_type"].as_str().unwrap().to_owned(),
                r["target_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("tenant".to_owned(), OWN_TENANT.to_owned()),
        ("enforcement_action".to_owned(), own_action.id.to_string()),
    ]
    .into();
    assert_eq!(targets, expected);
    assert!(records.iter().all(|r| !r.to_string().contains("globex")));

    // Asking for another tenant: as if it did not exist.
    let other = app
        .call(
            Method::GET,
            "/api/v1/audit?tenant=globex",
            Some(&token("tenant")),
            None,
        )
        .await;
    assert_eq!(other.status, StatusCode::NOT_FOUND, "{:?}", other.body);
    // The auditor sees globex's records, its action's among them.
    let page = app
        .call(
            Method::GET,
            "/api/v1/audit?tenant=globex",
            Some(&token("auditor")),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let records = page.body["records"].as_array().unwrap();
    assert!(records
        .iter()
        .any(|r| r["target_id"] == other_action.id.to_string().as_str()));
    assert!(records.iter().all(|r| r["target_id"] != OWN_TENANT));
    // Filters by actor and action.
    let page = app
        .call(
            Method::GET,
            "/api/v1/audit?actor=finance-user&action=budget.set",
            Some(&token("auditor")),
            None,
        )
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let records = page.body["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records
        .iter()
        .all(|r| r["actor"] == "finance-user" && r["action"] == "budget.set"));
}

#[tokio::test]
async fn the_access_review_flags_tokens_unused_for_90_days() {
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT]).await;
    let store = &app.db.store;
    let now = Utc::now();
    let ctx = AuditContext {
        actor: Actor::system("test"),
        request_id: "test".into(),
    };
    let mut ids = Vec::new();
    for (i, name) in ["idle", "recent", "revoked", "young"].iter().enumerate() {
        let created = if *name == "young" {
            now - Duration::days(30)
        } else {
            now - Duration::days(120)
        };
        let (token, _) = store
            .create_api_token(
                &ctx,
                &NewApiToken {
                    name: (*name).to_owned(),
                    role: if *name == "idle" { "tenant" } else { "viewer" }.to_owned(),
                    tenant: (*name == "idle").then(|| TenantId::parse(OWN_TENANT).unwrap()),
                    sha256: [i as u8 + 1; 32],
                    expires_at: None,
                },
                created,
            )
            .await
            .unwrap();
        ids.push(token.id);
    }
    store
        .touch_api_token(ids[0], now - Duration::days(91))
        .await
        .unwrap();
    store
        .touch_api_token(ids[1], now - Duration::days(10))
        .await
        .unwrap();
    let revoked = app
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{}", ids[2]),
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(revoked.status, StatusCode::OK, "{:?}", revoked.body);

    let review = app
        .call(
            Method::GET,
            "/api/v1/reports/access-review",
            Some(&token("auditor")),
            None,
        )
        .await;
    assert_eq!(review.status, StatusCode::OK, "{:?}", review.body);
    let identities = review.body["identities"].as_array().unwrap();
    let find = |kind: &str, name: &str| {
        identities
            .iter()
            .find(|i| i["kind"] == kind && i["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} missing from {identities:?}"))
    };
    assert_eq!(find("managed_token", "idle")["unused_90_days"], true);
    assert_eq!(find("managed_token", "idle")["scope"], OWN_TENANT);
    assert_eq!(find("managed_token", "recent")["unused_90_days"], false);
    assert_eq!(find("managed_token", "revoked")["unused_90_days"], false);
    assert_eq!(find("managed_token", "revoked")["state"], "revoked");
    assert_eq!(find("managed_token", "young")["unused_90_days"], false);
    // Configuration tokens: the admin created the tenant and revoked a token; the viewer never
    // changed anything.
    let admin = find("config_token", "admin-user");
    assert_eq!(admin["unused_90_days"], false);
    assert_eq!(
        admin["mutations_in_period"],
        json!({"tenant.create": 1, "token.revoke": 1})
    );
    assert!(admin["last_acted_at"].is_string());
    assert_eq!(find("config_token", "viewer-user")["unused_90_days"], true);
    assert_eq!(find("config_token", "tenant-user")["scope"], OWN_TENANT);
    // The component that created the tokens shows as an actor of the trail.
    assert_eq!(
        find("audit_actor", "test")["mutations_in_period"],
        json!({"token.create": 4})
    );
    // A period before everything: no mutations in it, the last action still known.
    let from = (now - Duration::days(400)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let to = (now - Duration::days(300)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let old = app
        .call(
            Method::GET,
            &format!("/api/v1/reports/access-review?from={from}&to={to}"),
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(old.status, StatusCode::OK, "{:?}", old.body);
    let admin = old.body["identities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "admin-user")
        .unwrap()
        .clone();
    assert_eq!(admin["mutations_in_period"], json!({}));
    assert!(admin["last_acted_at"].is_string());
}

#[tokio::test]
async fn bad_report_parameters_are_refused_naming_the_field() {
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT]).await;
    let before = app.snapshot().await;
    for (path, field) in [
        ("/api/v1/audit?cursor=zz", "cursor"),
        ("/api/v1/audit?cursor=61756469742d7365713a2d31", "cursor"),
        ("/api/v1/audit?from=yesterday", "from"),
        ("/api/v1/audit?to=2026-13-01T00:00:00Z", "to"),
        (
            "/api/v1/audit?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "to",
        ),
        ("/api/v1/audit?limit=0", "limit"),
        ("/api/v1/audit?limit=1001", "limit"),
        ("/api/v1/audit?tenant=Not_A_Tenant", "tenant"),
        ("/api/v1/audit?actor=", "actor"),
        ("/api/v1/audit?action=%07", "action"),
        ("/api/v1/audit?colour=red", "colour"),
        ("/api/v1/audit?limit=1&limit=2", "limit"),
        ("/api/v1/reports/governance?format=xml", "format"),
        ("/api/v1/reports/governance?tenant=acme", "tenant"),
        ("/api/v1/reports/access-review?from=now", "from"),
        (
            "/api/v1/reports/access-review?from=2026-02-01T00:00:00Z&to=2026-01-01T00:00:00Z",
            "to",
        ),
    ] {
        let reply = app
            .call(Method::GET, path, Some(&token("admin")), None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{path}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.body["error"]["field"], field,
            "{path}: {:?}",
            reply.body
        );
    }
    assert_eq!(app.snapshot().await, before);
}
