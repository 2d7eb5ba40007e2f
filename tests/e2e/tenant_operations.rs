//! Tenant operations through the router: namespaces, PATCH, isolate/release, operator
//! suspend/resume refusals, and a property test of API call sequences against the lifecycle's
//! transition table. (Suspend/resume through a real enforcer cycle: `enforcement.rs`.)

use axum::http::{Method, StatusCode};
use ledger::tenant::{TenantId, TenantState};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};

use crate::support::*;

async fn outbox(app: &TestApp, tenant: &str) -> Vec<(String, Value)> {
    sqlx::query_as(
        "select event_type, payload from outbox where aggregate_type = 'tenant' \
         and aggregate_id = $1 order by seq",
    )
    .bind(tenant)
    .fetch_all(app.db.store.pool())
    .await
    .unwrap()
}

async fn send(app: &TestApp, method: Method, path: &str, role: &str, body: Option<Value>) -> Reply {
    app.call(method, path, Some(&token(role)), body).await
}

/// A refused call: the status, the error code, the field if given, and nothing changed.
async fn refused(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Value,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> Value {
    let before = app.snapshot().await;
    let reply = send(app, method, path, "admin", Some(body.clone())).await;
    assert_eq!(reply.status, status, "{path} {body}: {:?}", reply.body);
    assert_eq!(
        reply.body["error"]["code"], code,
        "{path} {body}: {:?}",
        reply.body
    );
    if let Some(field) = field {
        assert_eq!(
            reply.body["error"]["field"], field,
            "{path} {body}: {:?}",
            reply.body
        );
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "{path} {body} changed something"
    );
    reply.body
}

#[tokio::test]
async fn namespaces_default_to_the_id_and_belong_to_one_tenant() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let acme = send(&app, Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await
        .body;
    assert_eq!(acme["namespaces"], json!(["acme"]));
    assert_eq!(acme["isolated"], false);
    assert_eq!(acme["suspended_by"], Value::Null);

    let mut globex = tenant_body("globex");
    globex["namespaces"] = json!(["globex-prod", "globex-dev"]);
    let reply = send(&app, Method::POST, "/api/v1/tenants", "admin", Some(globex)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(
        reply.body["namespaces"],
        json!(["globex-dev", "globex-prod"])
    );

    // Another tenant's namespace: 409 naming the namespace, not its tenant.
    let mut initech = tenant_body("initech");
    initech["namespaces"] = json!(["initech", "globex-prod"]);
    let error = refused(
        &app,
        Method::POST,
        "/api/v1/tenants",
        initech,
        StatusCode::CONFLICT,
        "namespace_taken",
        None,
    )
    .await;
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"globex-prod\""), "{message}");
    assert!(!message.contains("\"globex\""), "{message}");
    let mut taken = tenant_body("initech");
    taken["namespaces"] = json!(["acme"]);
    refused(
        &app,
        Method::POST,
        "/api/v1/tenants",
        taken,
        StatusCode::CONFLICT,
        "namespace_taken",
        None,
    )
    .await;

    // Invalid namespaces, each named.
    for (namespaces, field) in [
        (json!([]), "namespaces"),
        (json!(["kube-system"]), "namespaces[0]"),
        (json!(["ok", "default"]), "namespaces[1]"),
        (json!(["Bad_NS"]), "namespaces[0]"),
        (json!(["a".repeat(64)]), "namespaces[0]"),
        (json!(["dup", "dup"]), "namespaces[1]"),
        (json!("acme"), "namespaces"),
    ] {
        let mut body = tenant_body("initech");
        body["namespaces"] = namespaces.clone();
        refused(
            &app,
            Method::POST,
            "/api/v1/tenants",
            body,
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some(field),
        )
        .await;
    }

    // A request's namespaces are checked when it is filed and claimed when it is approved.
    let mut asks_taken = request_body("req-taken");
    asks_taken["namespaces"] = json!(["globex-dev"]);
    refused(
        &app,
        Method::POST,
        "/api/v1/tenant-requests",
        asks_taken,
        StatusCode::CONFLICT,
        "namespace_taken",
        None,
    )
    .await;
    let mut shared = request_body("req-shared");
    shared["namespaces"] = json!(["shared"]);
    let reply = send(
        &app,
        Method::POST,
        "/api/v1/tenant-requests",
        "viewer",
        Some(shared),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["namespaces"], json!(["shared"]));
    let mut first = tenant_body("first");
    first["namespaces"] = json!(["shared"]);
    let reply = send(&app, Method::POST, "/api/v1/tenants", "admin", Some(first)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    refused(
        &app,
        Method::POST,
        "/api/v1/tenant-requests/req-shared/approve",
        json!({"reason": "ok"}),
        StatusCode::CONFLICT,
        "namespace_taken",
        None,
    )
    .await;
    seed_requests(&app, "viewer", &["req-ok"]).await;
    let reply = send(
        &app,
        Method::POST,
        "/api/v1/tenant-requests/req-ok/approve",
        "operator",
        Some(json!({"reason": "ok"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let tenant = send(&app, Method::GET, "/api/v1/tenants/req-ok", "viewer", None)
        .await
        .body;
    assert_eq!(tenant["namespaces"], json!(["req-ok"]));
}

#[tokio::test]
async fn patch_changes_owner_group_quota_profile_and_namespaces_in_one_audited_event() {
    let app = app().await;
    seed_tenants(&app, &["acme", "globex"]).await;
    let audits_before: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    let body = json!({"owner_group": "team-a", "quota_profile": "small",
                      "namespaces": ["acme-dev", "acme"]});
    let reply = send(
        &app,
        Method::PATCH,
        "/api/v1/tenants/acme",
        "operator",
        Some(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["owner_group"], "team-a");
    assert_eq!(reply.body["quota_profile"], "small");
    assert_eq!(reply.body["namespaces"], json!(["acme", "acme-dev"]));
    let audits_after: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(audits_after, audits_before + 1, "one audit record");
    let (event, payload) = outbox(&app, "acme").await.pop().unwrap();
    assert_eq!(event, "tenant.updated");
    assert_eq!(payload["namespaces_added"], json!(["acme-dev"]));
    assert_eq!(payload["namespaces_removed"], json!([]));
    let changed: Vec<&str> = payload["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        changed,
        ["namespaces", "owner_group", "quota_profile"],
        "{payload}"
    );

    // null clears the owner group; a removed namespace is free for another tenant.
    let body = json!({"owner_group": null, "namespaces": ["acme-dev"]});
    let reply = send(
        &app,
        Method::PATCH,
        "/api/v1/tenants/acme",
        "admin",
        Some(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["owner_group"], Value::Null);
    let (_, payload) = outbox(&app, "acme").await.pop().unwrap();
    assert_eq!(payload["namespaces_removed"], json!(["acme"]));
    assert_eq!(payload["namespaces_added"], json!([]));
    let body = json!({"namespaces": ["globex", "acme"]});
    let reply = send(
        &app,
        Method::PATCH,
        "/api/v1/tenants/globex",
        "admin",
        Some(body),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    // A patch that changes nothing writes nothing.
    let before = app.snapshot().await;
    let reply = send(
        &app,
        Method::PATCH,
        "/api/v1/tenants/acme",
        "admin",
        Some(json!({"quota_profile": "small"})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.snapshot().await, before);

    let path = "/api/v1/tenants/acme";
    refused(
        &app,
        Method::PATCH,
        path,
        json!({"quota_profile": "huge"}),
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("quota_profile"),
    )
    .await;
    refused(
        &app,
        Method::PATCH,
        path,
        json!({"namespaces": []}),
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("namespaces"),
    )
    .await;
    refused(
        &app,
        Method::PATCH,
        path,
        json!({"namespaces": ["kube-public"]}),
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("namespaces[0]"),
    )
    .await;
    refused(
        &app,
        Method::PATCH,
        path,
        json!({"owner_group": "a\nb"}),
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("owner_group"),
    )
    .await;
    refused(
        &app,
        Method::PATCH,
        path,
        json!({"namespaces": ["acme-dev", "globex"]}),
        StatusCode::CONFLICT,
        "namespace_taken",
        None,
    )
    .await;
    let error = refused(
        &app,
        Method::PATCH,
        path,
        json!({"namespace": ["x"]}),
        StatusCode::BAD_REQUEST,
        "unknown_field",
        None,
    )
    .await;
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("namespace"),
        "{error}"
    );

    // Only active or suspended tenants change.
    let reply = send(&app, Method::DELETE, path, "admin", None).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let error = refused(
        &app,
        Method::PATCH,
        path,
        json!({"owner": "x@example.com"}),
        StatusCode::CONFLICT,
        "invalid_transition",
        None,
    )
    .await;
    assert_eq!(error["error"]["current_state"], "offboarding", "{error}");
    seed_requests(&app, "viewer", &["asked"]).await;
    let error = refused(
        &app,
        Method::PATCH,
        "/api/v1/tenants/asked",
        json!({"owner": "x@example.com"}),
        StatusCode::CONFLICT,
        "invalid_transition",
        None,
    )
    .await;
    assert_eq!(error["error"]["current_state"], "requested", "{error}");
}

#[tokio::test]
async fn isolate_and_release_are_audited_idempotent_and_only_for_live_tenants() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let reason = json!({"reason": "incident 4711: data exfiltration suspected"});
    for _ in 0..2 {
        let reply = send(
            &app,
            Method::POST,
            "/api/v1/tenants/acme/isolate",
            "operator",
            Some(reason.clone()),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["isolated"], true);
        assert_eq!(
            reply.body["isolation_reason"],
            "incident 4711: data exfiltration suspected"
        );
        assert_eq!(reply.body["isolated_by"], "operator-user");
        assert_eq!(
            reply.body["state"], "active",
            "isolation scales nothing down"
        );
    }
    for _ in 0..2 {
        let reply = send(
            &app,
            Method::POST,
            "/api/v1/tenants/acme/release",
            "admin",
            Some(json!({"reason": "incident closed"})),
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.body["isolated"], false);
        assert_eq!(reply.body["isolation_reason"], Value::Null);
    }
    let events: Vec<String> = outbox(&app, "acme")
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(
        events,
        ["tenant.created", "tenant.isolated", "tenant.released"]
    );
    let (_, payload) = outbox(&app, "acme").await.pop().unwrap();
    assert_eq!(payload["reason"], "incident closed");

    // Bad reasons, for every operation; nothing changes.
    for verb in ["suspend", "resume", "isolate", "release"] {
        let path = format!("/api/v1/tenants/acme/{verb}");
        for (body, code, field) in [
            (json!({"reason": ""}), "invalid_field", "reason"),
            (json!({"reason": "two\nlines"}), "invalid_field", "reason"),
            (json!({}), "invalid_field", "reason"),
            (json!({"reason": 5}), "invalid_field", "reason"),
            (
                json!({"reason": "x", "force": true}),
                "unknown_field",
                "force",
            ),
        ] {
            refused(
                &app,
                Method::POST,
                &path,
                body,
                StatusCode::BAD_REQUEST,
                code,
                Some(field),
            )
            .await;
        }
        // A requested tenant is neither suspended nor isolated.
        seed_requests(&app, "viewer", &[&format!("asked-{verb}")]).await;
        let error = refused(
            &app,
            Method::POST,
            &format!("/api/v1/tenants/asked-{verb}/{verb}"),
            json!({"reason": "x"}),
            StatusCode::CONFLICT,
            "invalid_transition",
            None,
        )
        .await;
        assert_eq!(error["error"]["current_state"], "requested");
        assert!(error["error"]["allowed"].is_array());
        // Nor is an unknown one.
        refused(
            &app,
            Method::POST,
            &format!("/api/v1/tenants/nobody/{verb}"),
            json!({"reason": "x"}),
            StatusCode::NOT_FOUND,
            "not_found",
            None,
        )
        .await;
    }
}

/// One API call of the property test.
#[derive(Debug, Clone, Copy)]
enum Call {
    Suspend,
    Resume,
    Isolate,
    Release,
    Patch,
    Delete,
    Approve,
    Reject,
}

fn calls() -> impl Strategy<Value = (bool, Vec<Call>)> {
    use Call::*;
    let call = prop_oneof![
        Just(Suspend),
        Just(Resume),
        Just(Isolate),
        Just(Release),
        Just(Patch),
        Just(Delete),
        Just(Approve),
        Just(Reject),
    ];
    (any::<bool>(), proptest::collection::vec(call, 1..14))
}

/// No sequence of API calls leaves the transition table: every state change is one the table
/// has, a refused call (4xx) changes nothing, none answers 5xx, and the derived fields agree
/// with the state (`suspended_by` only while suspended, namespaces while live).
#[test]
fn no_api_call_sequence_leaves_the_transition_table() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(app());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: 12,
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let counter = std::cell::Cell::new(0u32);
    let result = runner.run(&calls(), |(requested, calls)| {
        counter.set(counter.get() + 1);
        let id = format!("prop-{}", counter.get());
        rt.block_on(async {
            if requested {
                seed_requests(&app, "viewer", &[&id]).await;
            } else {
                seed_tenants(&app, &[&id]).await;
            }
            let tenant_id = TenantId::parse(&id).unwrap();
            for (i, call) in calls.iter().enumerate() {
                let before = app.db.store.get_tenant(&tenant_id).await.unwrap();
                let snapshot = app.snapshot().await;
                let reason = Some(json!({"reason": format!("step {i}")}));
                let (method, path, body) = match call {
                    Call::Suspend => (
                        Method::POST,
                        format!("/api/v1/tenants/{id}/suspend"),
                        reason,
                    ),
                    Call::Resume => (Method::POST, format!("/api/v1/tenants/{id}/resume"), reason),
                    Call::Isolate => (
                        Method::POST,
                        format!("/api/v1/tenants/{id}/isolate"),
                        reason,
                    ),
                    Call::Release => (
                        Method::POST,
                        format!("/api/v1/tenants/{id}/release"),
                        reason,
                    ),
                    Call::Patch => (
                        Method::PATCH,
                        format!("/api/v1/tenants/{id}"),
                        Some(json!({"namespaces": [id.clone(), format!("{id}-{}", i % 3)]})),
                    ),
                    Call::Delete => (Method::DELETE, format!("/api/v1/tenants/{id}"), None),
                    Call::Approve => (
                        Method::POST,
                        format!("/api/v1/tenant-requests/{id}/approve"),
                        reason,
                    ),
                    Call::Reject => (
                        Method::POST,
                        format!("/api/v1/tenant-requests/{id}/reject"),
                        reason,
                    ),
                };
                let reply = send(&app, method, &path, "operator", body).await;
                prop_assert!(
                    !reply.status.is_server_error(),
                    "{call:?}: {:?}",
                    reply.body
                );
                let after = app.db.store.get_tenant(&tenant_id).await.unwrap();
                if reply.status.is_client_error() {
                    prop_assert_eq!(
                        app.snapshot().await,
                        snapshot,
                        "a refused {:?} changed something",
                        call
                    );
                } else if after.state != before.state {
                    prop_assert!(
                        before.state.can_become(after.state),
                        "{:?}: {} -> {} is not in the table",
                        call,
                        before.state,
                        after.state
                    );
                }
                prop_assert_eq!(
                    after.suspended_by.is_some(),
                    after.state == TenantState::Suspended
                );
                let live = matches!(
                    after.state,
                    TenantState::Active | TenantState::Suspended | TenantState::Offboarding
                );
                prop_assert_eq!(
                    !after.namespaces.is_empty(),
                    live,
                    "{:?} in {}",
                    after.namespaces,
                    after.state
                );
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
