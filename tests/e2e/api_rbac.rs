//! Every route × every role, plus no token and a wrong token. The `auditor` reads everything
//! and changes nothing.

use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::*;

/// Who calls: a role's token, none, or an unknown one.
#[derive(Clone, Copy, Debug)]
enum Who {
    Role(&'static str),
    NoToken,
    WrongToken,
}

const CALLERS: [Who; 8] = [
    Who::Role("admin"),
    Who::Role("operator"),
    Who::Role("finance"),
    Who::Role("viewer"),
    Who::Role("auditor"),
    Who::Role("tenant"),
    Who::NoToken,
    Who::WrongToken,
];

fn label(who: Who) -> &'static str {
    match who {
        Who::Role(r) => r,
        Who::NoToken => "none",
        Who::WrongToken => "wrong",
    }
}

pub(crate) struct Case {
    pub(crate) method: Method,
    /// `{t}` is the target tenant, `{who}` the caller's label (for unique ids).
    pub(crate) path: &'static str,
    body: Option<fn(&str) -> Value>,
    /// Target tenant for tenant-scoped routes: the tenant token's own, another, or one per
    /// caller (for DELETE, which changes the target's state).
    target: Target,
    /// Expected statuses for admin, operator, finance, viewer, auditor, tenant, none, wrong.
    pub(crate) expect: [u16; 8],
}

#[derive(Clone, Copy)]
enum Target {
    Unscoped,
    Own,
    Other,
    PerCaller,
    /// Another tenant than the tenant token's; one per caller for the other roles.
    OtherPerCaller,
    /// A tenant being offboarded (not the tenant token's).
    Offboarding,
    /// The managed token made before the matrix runs.
    Token,
}

/// The tenant offboarded before the matrix runs.
const LEAVING: &str = "leaving";

pub(crate) fn cases() -> Vec<Case> {
    use Target::*;
    let budget = |_: &str| json!({"amount": "1000.00", "currency": "EUR", "period": "monthly", "thresholds": [50, 80, 100]});
    let patch = |who: &str| json!({"display_name": format!("renamed by {who}")});
    let reason = |who: &str| json!({"reason": format!("incident handled by {who}")});
    let version = |who: &str| {
        let day = 1 + [
            "admin", "operator", "finance", "viewer", "auditor", "tenant", "none", "wrong",
        ]
        .iter()
        .position(|w| *w == who)
        .unwrap();
        json!({"valid_from": format!("2027-01-{day:02}T00:00:00Z"), "currency": "EUR", "rates": {"cpu": "0.03"}})
    };
    let create = |who: &str| tenant_body(&format!("new-{who}"));
    let ask = |who: &str| request_body(&format!("req-{who}"));
    let offboard = |who: &str| json!({"reason": format!("offboarded by {who}")});
    let new_token = |who: &str| json!({"name": format!("tok-{who}"), "role": "viewer"});
    let exempt = |who: &str| json!({"until": chrono::Utc::now() + chrono::Duration::days(30), "reason": format!("exempted by {who}")});
    vec![
        Case {
            method: Method::GET,
            path: "/api/v1/tenants",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/tenants",
            body: Some(create),
            target: Unscoped,
            expect: [201, 201, 403, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}",
            body: None,
            target: Own,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::PATCH,
            path: "/api/v1/tenants/{t}",
            body: Some(patch),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::PATCH,
            path: "/api/v1/tenants/{t}",
            body: Some(patch),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        // Operators' suspend: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/suspend",
            body: Some(reason),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        // Operators' suspend: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/suspend",
            body: Some(reason),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        // Operators' resume: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/resume",
            body: Some(reason),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        // Operators' resume: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/resume",
            body: Some(reason),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        // Operators' isolate: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/isolate",
            body: Some(reason),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        // Operators' isolate: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/isolate",
            body: Some(reason),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        // Operators' release: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/release",
            body: Some(reason),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        // Operators' release: admin, then operator (a retried call, a no-op).
        Case {
            method: Method::POST,
            path: "/api/v1/tenants/{t}/release",
            body: Some(reason),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        Case {
            method: Method::DELETE,
            path: "/api/v1/tenants/{t}",
            body: None,
            target: PerCaller,
            expect: [202, 202, 403, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::DELETE,
            path: "/api/v1/tenants/{t}",
            body: Some(offboard),
            target: OtherPerCaller,
            expect: [202, 202, 403, 403, 403, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/offboarding",
            body: None,
            target: Offboarding,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/final-report",
            body: None,
            target: Offboarding,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/final-report?format=csv",
            body: None,
            target: Offboarding,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::PUT,
            path: "/api/v1/tenants/{t}/budget",
            body: Some(budget),
            target: Own,
            expect: [200, 200, 200, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::PUT,
            path: "/api/v1/tenants/{t}/budget",
            body: Some(budget),
            target: Other,
            expect: [200, 200, 200, 403, 403, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/budget",
            body: None,
            target: Own,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/budget",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/costs?from=2026-01-01&to=2026-01-31",
            body: None,
            target: Own,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/costs?from=2026-01-01&to=2026-01-31",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/budget/status",
            body: None,
            target: Own,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/budget/status",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenant-requests",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenant-requests?state=requested",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/tenant-requests",
            body: Some(ask),
            target: Unscoped,
            expect: [201, 201, 201, 201, 403, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenant-requests/asked",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/enforcement/actions",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/enforcement/actions?tenant=globex",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/exemption",
            body: None,
            target: Own,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tenants/{t}/exemption",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::PUT,
            path: "/api/v1/tenants/{t}/exemption",
            body: Some(exempt),
            target: Own,
            expect: [200, 200, 403, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::PUT,
            path: "/api/v1/tenants/{t}/exemption",
            body: Some(exempt),
            target: Other,
            expect: [200, 200, 403, 403, 403, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/price-book",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/price-book/versions",
            body: Some(version),
            target: Unscoped,
            expect: [201, 403, 201, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/collector/pricing-errors",
            body: None,
            target: Unscoped,
            expect: [200, 200, 200, 200, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/collector/pricing-errors?tenant={t}",
            body: None,
            target: Other,
            expect: [200, 200, 200, 200, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/tokens",
            body: None,
            target: Unscoped,
            expect: [200, 403, 403, 403, 200, 403, 401, 401],
        },
        Case {
            method: Method::POST,
            path: "/api/v1/tokens",
            body: Some(new_token),
            target: Unscoped,
            expect: [201, 403, 403, 403, 403, 403, 401, 401],
        },
        // Revoking: the admin, then a retried revoke (refused by role for everyone else).
        Case {
            method: Method::DELETE,
            path: "/api/v1/tokens/{t}",
            body: None,
            target: Token,
            expect: [200, 403, 403, 403, 403, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/reports/governance",
            body: None,
            target: Unscoped,
            expect: [200, 403, 200, 403, 200, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/reports/governance?format=csv",
            body: None,
            target: Unscoped,
            expect: [200, 403, 200, 403, 200, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/reports/access-review",
            body: None,
            target: Unscoped,
            expect: [200, 403, 403, 403, 200, 403, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/audit",
            body: None,
            target: Unscoped,
            expect: [200, 403, 200, 403, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/audit?tenant={t}",
            body: None,
            target: Own,
            expect: [200, 403, 200, 403, 200, 200, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/audit?tenant={t}",
            body: None,
            target: Other,
            expect: [200, 403, 200, 403, 200, 404, 401, 401],
        },
        Case {
            method: Method::GET,
            path: "/healthz",
            body: None,
            target: Unscoped,
            expect: [200; 8],
        },
        Case {
            method: Method::GET,
            path: "/readyz",
            body: None,
            target: Unscoped,
            expect: [200; 8],
        },
        Case {
            method: Method::GET,
            path: "/metrics",
            body: None,
            target: Unscoped,
            expect: [200; 8],
        },
        Case {
            method: Method::GET,
            path: "/api/v1/openapi.json",
            body: None,
            target: Unscoped,
            expect: [200; 8],
        },
    ]
}

#[tokio::test]
async fn every_route_and_role_gets_the_expected_status() {
    let app = app().await;
    // DELETE targets: one tenant per caller, so that each caller's attempt is independent.
    let per_caller: Vec<String> = CALLERS
        .iter()
        .map(|&w| format!("del-{}", label(w)))
        .collect();
    let other_per_caller: Vec<String> = CALLERS
        .iter()
        .map(|&w| format!("del2-{}", label(w)))
        .collect();
    let mut ids = vec![OWN_TENANT, "globex", LEAVING];
    ids.extend(
        per_caller
            .iter()
            .chain(&other_per_caller)
            .map(String::as_str),
    );
    seed_tenants(&app, &ids).await;
    seed_requests(&app, "viewer", &["asked"]).await;
    // Budgets exist, so that GET budget answers 200 where allowed.
    for t in [OWN_TENANT, "globex"] {
        let reply = app
            .call(
                Method::PUT,
                &format!("/api/v1/tenants/{t}/budget"),
                Some(&token("admin")),
                Some(json!({"amount": "10.00", "currency": "EUR"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK);
        let reply = app
            .call(
                Method::PUT,
                &format!("/api/v1/tenants/{t}/exemption"),
                Some(&token("operator")),
                Some(json!({"until": "2020-01-01T00:00:00Z", "reason": "setup"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }

    let reply = app
        .call(
            Method::DELETE,
            &format!("/api/v1/tenants/{LEAVING}"),
            Some(&token("operator")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    // A managed token to revoke.
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&token("admin")),
            Some(json!({"name": "to-revoke", "role": "tenant", "tenant": OWN_TENANT})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let managed = reply.body["id"].to_string();

    let mut failures = Vec::new();
    let mut mutations = 0;
    for case in cases() {
        for (i, &who) in CALLERS.iter().enumerate() {
            let target = match case.target {
                Target::Unscoped => String::new(),
                Target::Own => OWN_TENANT.to_owned(),
                Target::Other => "globex".to_owned(),
                Target::Offboarding => LEAVING.to_owned(),
                Target::Token => managed.clone(),
                Target::PerCaller => {
                    // the tenant token's own tenant, so its DELETE is refused by role
                    if label(who) == "tenant" {
                        OWN_TENANT.to_owned()
                    } else {
                        per_caller[i].clone()
                    }
                }
                Target::OtherPerCaller => {
                    if label(who) == "tenant" {
                        "globex".to_owned()
                    } else {
                        other_per_caller[i].clone()
                    }
                }
            };
            let path = case.path.replace("{t}", &target);
            let token = match who {
                Who::Role(role) => Some(token(role)),
                Who::NoToken => None,
                Who::WrongToken => Some("not-a-configured-token".to_owned()),
            };
            let before = app.snapshot().await;
            let body = case.body.map(|f| f(label(who)));
            let reply = app
                .call(case.method.clone(), &path, token.as_deref(), body)
                .await;
            let expected = case.expect[i];
            if reply.status.as_u16() != expected {
                failures.push(format!(
                    "{} {path} as {}: got {} {:?}, expected {expected}",
                    case.method,
                    label(who),
                    reply.status,
                    reply.body
                ));
            }
            if reply.status.is_client_error() {
                assert_eq!(
                    app.snapshot().await,
                    before,
                    "{} {path} as {} changed something",
                    case.method,
                    label(who)
                );
                assert!(
                    reply.body["error"]["code"].is_string(),
                    "error body: {:?}",
                    reply.body
                );
            } else if case.method == Method::DELETE
                && case.path.starts_with("/api/v1/tenants/")
                && app.snapshot().await != before
            {
                // Offboarding's start and its final report: one audit record per step.
                mutations += 2;
            } else if case.method != Method::GET && app.snapshot().await != before {
                // (A retried suspend, resume, isolate, release or DELETE is a no-op: no record.)
                mutations += 1;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "RBAC matrix mismatches:\n{}",
        failures.join("\n")
    );

    // A tenant token lists only its own tenant.
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&token("tenant")), None)
        .await;
    let listed: Vec<&str> = reply.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [OWN_TENANT]);
    // Every successful mutation wrote exactly one audit record (plus the setup's).
    let audited: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(audited as usize, ids.len() + 1 + 4 + 2 + 1 + mutations);
    assert!(matches!(
        app.db.store.verify_audit_chain().await.unwrap(),
        ledger::store::ChainStatus::Intact { .. }
    ));
}

/// Approving and rejecting: operators and admins decide; a tenant token learns nothing about
/// other tenants' actions.
#[tokio::test]
async fn only_operators_and_admins_decide_enforcement_actions() {
    use ledger::enforcement::ActionState;
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT, "globex"]).await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "test",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let mut failures = Vec::new();
    for (tenant, expect) in [
        (OWN_TENANT, [200, 200, 403, 403, 403, 403, 401, 401]),
        ("globex", [200, 200, 403, 403, 403, 404, 401, 401]),
    ] {
        for verb in ["approve", "reject"] {
            for (i, &who) in CALLERS.iter().enumerate() {
                let action = open_action(
                    &app.db.store,
                    lock.fence(),
                    tenant,
                    &format!("actual:120:suspend:{verb}:{i}"),
                    ActionState::Pending,
                )
                .await;
                let token = match who {
                    Who::Role(role) => Some(token(role)),
                    Who::NoToken => None,
                    Who::WrongToken => Some("not-a-configured-token".to_owned()),
                };
                let path = format!("/api/v1/enforcement/actions/{}/{verb}", action.id);
                let before = app.snapshot().await;
                let reply = app
                    .call(
                        Method::POST,
                        &path,
                        token.as_deref(),
                        Some(json!({"reason": "checked"})),
                    )
                    .await;
                if reply.status.as_u16() != expect[i] {
                    failures.push(format!(
                        "{path} ({tenant}) as {}: got {} {:?}",
                        label(who),
                        reply.status,
                        reply.body
                    ));
                }
                let after = app.db.store.get_action(action.id).await.unwrap();
                if reply.status.is_success() {
                    let want = if verb == "approve" {
                        ActionState::Approved
                    } else {
                        ActionState::Rejected
                    };
                    assert_eq!(after.state, want);
                } else {
                    assert_eq!(
                        after.state,
                        ActionState::Pending,
                        "{path} as {}",
                        label(who)
                    );
                    assert_eq!(app.snapshot().await, before);
                }
            }
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}

/// Approving and rejecting tenant requests: operators and admins decide; a tenant token learns
/// nothing about requests for other tenants. Each caller decides a request of its own, made by
/// the viewer, so that no decision is a self-approval.
#[tokio::test]
async fn only_operators_and_admins_decide_tenant_requests() {
    let app = app().await;
    let mut failures = Vec::new();
    for verb in ["approve", "reject"] {
        let expect = [200, 200, 403, 403, 403, 404, 401, 401];
        for (i, &who) in CALLERS.iter().enumerate() {
            let id = format!("{verb}-{}", label(who));
            seed_requests(&app, "viewer", &[&id]).await;
            let token = match who {
                Who::Role(role) => Some(token(role)),
                Who::NoToken => None,
                Who::WrongToken => Some("not-a-configured-token".to_owned()),
            };
            let path = format!("/api/v1/tenant-requests/{id}/{verb}");
            let before = app.snapshot().await;
            let reply = app
                .call(
                    Method::POST,
                    &path,
                    token.as_deref(),
                    Some(json!({"reason": "checked"})),
                )
                .await;
            if reply.status.as_u16() != expect[i] {
                failures.push(format!(
                    "{path} as {}: got {} {:?}",
                    label(who),
                    reply.status,
                    reply.body
                ));
            }
            if reply.status.is_success() {
                let want = if verb == "approve" {
                    "active"
                } else {
                    "rejected"
                };
                assert_eq!(reply.body["tenant_state"], want, "{:?}", reply.body);
            } else {
                assert_eq!(app.snapshot().await, before, "{path} as {}", label(who));
                assert!(reply.body["error"]["code"].is_string());
            }
        }
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
