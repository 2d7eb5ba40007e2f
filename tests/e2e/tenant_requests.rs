//! Self-service tenant requests through the router: request, approve, reject, and everything
//! that must be refused without changing anything.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

async fn outbox(app: &TestApp, tenant: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "select event_type, payload from outbox where aggregate_type = 'tenant' \
         and aggregate_id = $1 order by id",
    )
    .bind(tenant)
    .fetch_all(app.db.store.pool())
    .await
    .unwrap()
}

async fn decide(app: &TestApp, role: &str, id: &str, verb: &str) -> Reply {
    app.call(
        Method::POST,
        &format!("/api/v1/tenant-requests/{id}/{verb}"),
        Some(&token(role)),
        Some(json!({"reason": format!("{} by the platform board", verb.replace("approve", "approved").replace("reject", "rejected"))})),
    )
    .await
}

async fn chain_is_intact(app: &TestApp) {
    assert!(matches!(
        app.db.store.verify_audit_chain().await.unwrap(),
        ledger::store::ChainStatus::Intact { .. }
    ));
}

#[tokio::test]
async fn an_approved_request_becomes_an_active_tenant_with_its_budget_in_one_step() {
    let app = app().await;
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenant-requests",
            Some(&token("viewer")),
            Some(request_body("shop")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["state"], "requested");
    assert_eq!(reply.body["tenant_state"], "requested");
    assert_eq!(reply.body["requested_by"], "viewer-user");
    assert_eq!(reply.body["budget"]["amount"], "500.00");
    // The id is reserved: a tenant in state `requested`, without a budget yet.
    let tenant = app
        .call(
            Method::GET,
            "/api/v1/tenants/shop",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(tenant.body["state"], "requested");
    assert_eq!(tenant.body["owner_group"], "team-payments");
    assert_eq!(tenant.body["quota_profile"], "standard");
    let again = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(tenant_body("shop")),
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    let pending = app
        .call(
            Method::GET,
            "/api/v1/tenant-requests?state=requested",
            Some(&token("finance")),
            None,
        )
        .await;
    assert_eq!(pending.body["requests"][0]["id"], "shop");

    let approved = decide(&app, "operator", "shop", "approve").await;
    assert_eq!(approved.status, StatusCode::OK, "{:?}", approved.body);
    assert_eq!(approved.body["state"], "approved");
    assert_eq!(approved.body["tenant_state"], "active");
    assert_eq!(approved.body["decided_by"], "operator-user");
    let budget = app
        .call(
            Method::GET,
            "/api/v1/tenants/shop/budget",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(budget.status, StatusCode::OK, "{:?}", budget.body);
    assert_eq!(budget.body["amount"], "500.00");
    assert_eq!(budget.body["period"], "monthly");

    let events = outbox(&app, "shop").await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["tenant.requested", "tenant.approved"]);
    let payload = &events[1].1;
    assert_eq!(payload["tenant"]["state"], "active");
    assert_eq!(payload["tenant"]["owner_group"], "team-payments");
    assert_eq!(payload["tenant"]["quota_profile"], "standard");
    assert_eq!(payload["tenant"]["data_residency"], "eu");
    assert_eq!(payload["tenant"]["labels"]["team"], "payments");
    assert_eq!(payload["budget"]["amount"], "500.00");
    assert_eq!(payload["budget"]["currency"], "EUR");
    assert_eq!(payload["previous_state"], "requested");
    let actions: Vec<String> =
        sqlx::query_scalar("select action from audit_log where target_id = 'shop' order by seq")
            .fetch_all(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!(actions, ["tenant.request", "tenant.approve"]);
    chain_is_intact(&app).await;

    // Approving twice, or rejecting once approved, changes nothing and says why.
    for verb in ["approve", "reject"] {
        let before = app.snapshot().await;
        let reply = decide(&app, "admin", "shop", verb).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{verb}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "invalid_transition");
        assert_eq!(reply.body["error"]["current_state"], "active");
        assert_eq!(
            reply.body["error"]["allowed"],
            json!(["suspended", "offboarding"])
        );
        assert_eq!(app.snapshot().await, before);
    }
    let listed = app
        .call(
            Method::GET,
            "/api/v1/tenant-requests?state=approved",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(listed.body["requests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_rejected_request_is_final_and_keeps_its_id() {
    let app = app().await;
    seed_requests(&app, "finance", &["nope"]).await;
    let rejected = decide(&app, "admin", "nope", "reject").await;
    assert_eq!(rejected.status, StatusCode::OK, "{:?}", rejected.body);
    assert_eq!(rejected.body["state"], "rejected");
    assert_eq!(rejected.body["tenant_state"], "rejected");
    assert_eq!(
        rejected.body["decision_reason"],
        "rejected by the platform board"
    );
    let events = outbox(&app, "nope").await;
    let types: Vec<&str> = events.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["tenant.requested", "tenant.rejected"]);
    chain_is_intact(&app).await;

    let before = app.snapshot().await;
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/tenant-requests/nope/approve",
            Some(json!({"reason": "changed my mind"})),
        ),
        (
            Method::POST,
            "/api/v1/tenant-requests/nope/reject",
            Some(json!({"reason": "again"})),
        ),
        (Method::DELETE, "/api/v1/tenants/nope", None),
    ] {
        let reply = app.call(method, path, Some(&token("admin")), body).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{path}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "invalid_transition");
        assert_eq!(reply.body["error"]["current_state"], "rejected");
        assert_eq!(reply.body["error"]["allowed"], json!([]));
    }
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenant-requests",
            Some(&token("viewer")),
            Some(request_body("nope")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["code"], "already_exists");
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn a_requester_cannot_approve_their_own_request_but_may_withdraw_it() {
    let app = app().await;
    seed_requests(&app, "operator", &["mine", "withdrawn"]).await;
    let before = app.snapshot().await;
    let reply = decide(&app, "operator", "mine", "approve").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], "self_approval");
    assert_eq!(app.snapshot().await, before);
    let reply = decide(&app, "admin", "mine", "approve").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = decide(&app, "operator", "withdrawn", "reject").await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
}

#[tokio::test]
async fn a_requested_tenant_is_not_offboarded_and_the_409_names_what_may_follow() {
    let app = app().await;
    seed_requests(&app, "viewer", &["early"]).await;
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/early",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["current_state"], "requested");
    assert_eq!(
        reply.body["error"]["allowed"],
        json!(["active", "rejected"])
    );
    assert_eq!(app.snapshot().await, before);
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_field_and_change_nothing() {
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT]).await;
    // The ledger's currency is EUR from here on.
    let reply = app
        .call(
            Method::PUT,
            &format!("/api/v1/tenants/{OWN_TENANT}/budget"),
            Some(&token("admin")),
            Some(json!({"amount": "10.00", "currency": "EUR"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let with = |field: &str, value: Value| {
        let mut body = request_body("fresh");
        match field.split_once('.') {
            Some((outer, inner)) => body[outer][inner] = value,
            None => body[field] = value,
        }
        body
    };
    let without = |field: &str| {
        let mut body = request_body("fresh");
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        (
            "viewer",
            with("data_residency", json!("mars")),
            400,
            "invalid_field",
            Some("data_residency"),
        ),
        (
            "viewer",
            with("data_residency", json!("EU")),
            400,
            "invalid_field",
            Some("data_residency"),
        ),
        (
            "viewer",
            with("quota_profile", json!("huge")),
            400,
            "invalid_field",
            Some("quota_profile"),
        ),
        (
            "viewer",
            with("owner", json!("payments team")),
            400,
            "invalid_field",
            Some("owner"),
        ),
        (
            "viewer",
            with("owner_group", json!("")),
            400,
            "invalid_field",
            Some("owner_group"),
        ),
        (
            "viewer",
            without("owner_group"),
            400,
            "invalid_field",
            Some("owner_group"),
        ),
        (
            "viewer",
            without("justification"),
            400,
            "invalid_field",
            Some("justification"),
        ),
        (
            "viewer",
            with("justification", json!("line\nbreak")),
            400,
            "invalid_field",
            Some("justification"),
        ),
        (
            "viewer",
            with("budget.amount", json!("0")),
            400,
            "invalid_field",
            Some("budget.amount"),
        ),
        (
            "viewer",
            with("budget.amount", json!("12.345")),
            400,
            "invalid_field",
            Some("budget.amount"),
        ),
        (
            "viewer",
            with("budget.currency", json!("euro")),
            400,
            "invalid_field",
            Some("budget.currency"),
        ),
        (
            "viewer",
            with("budget.currency", json!("USD")),
            400,
            "invalid_field",
            Some("budget.currency"),
        ),
        (
            "viewer",
            with("budget.period", json!("weekly")),
            400,
            "invalid_field",
            Some("budget.period"),
        ),
        (
            "viewer",
            with("id", json!("Not A Label")),
            400,
            "invalid_field",
            Some("id"),
        ),
        (
            "viewer",
            with("labels", json!({"bad key": "x"})),
            400,
            "invalid_field",
            Some("labels.bad key"),
        ),
        (
            "viewer",
            with("state", json!("active")),
            400,
            "unknown_field",
            Some("state"),
        ),
        (
            "viewer",
            with("id", json!(OWN_TENANT)),
            409,
            "already_exists",
            None,
        ),
        ("tenant", request_body("fresh"), 403, "forbidden", None),
    ];
    for (role, body, status, code, field) in cases {
        let before = app.snapshot().await;
        let reply = app
            .call(
                Method::POST,
                "/api/v1/tenant-requests",
                Some(&token(role)),
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        assert_eq!(
            reply.body["error"]["code"], code,
            "{body}: {:?}",
            reply.body
        );
        if let Some(field) = field {
            assert_eq!(
                reply.body["error"]["field"], field,
                "{body}: {:?}",
                reply.body
            );
        }
        assert_eq!(app.snapshot().await, before, "{body} changed something");
    }
    // Decisions need a reason; unknown requests are 404; a tenant created directly has no
    // request.
    seed_requests(&app, "viewer", &["fresh"]).await;
    for (path, body, status) in [
        ("/api/v1/tenant-requests/fresh/approve", json!({}), 400),
        (
            "/api/v1/tenant-requests/fresh/approve",
            json!({"reason": ""}),
            400,
        ),
        (
            "/api/v1/tenant-requests/ghost/approve",
            json!({"reason": "ok"}),
            404,
        ),
        (
            "/api/v1/tenant-requests/acme/approve",
            json!({"reason": "ok"}),
            404,
        ),
    ] {
        let before = app.snapshot().await;
        let reply = app
            .call(Method::POST, path, Some(&token("admin")), Some(body))
            .await;
        assert_eq!(reply.status.as_u16(), status, "{path}: {:?}", reply.body);
        assert_eq!(app.snapshot().await, before);
    }
    // The direct create checks residency and quota profile against the configuration too.
    let mut direct = tenant_body("direct");
    direct["data_residency"] = json!("mars");
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(direct),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["field"], "data_residency");
    let mut direct = tenant_body("direct");
    direct["quota_profile"] = json!("huge");
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(direct),
        )
        .await;
    assert_eq!(reply.body["error"]["field"], "quota_profile");
    assert_eq!(app.snapshot().await, before);
    let bad_filter = app
        .call(
            Method::GET,
            "/api/v1/tenant-requests?state=pending",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(bad_filter.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad_filter.body["error"]["field"], "state");
}
