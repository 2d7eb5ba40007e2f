//! Managed API tokens through the real router and Postgres: the secret once, only its hash
//! stored, last use recorded without a write per request, revocation without a restart,
//! expiry, audit records, bad input, and the bootstrap token's retirement.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::http::{Method, StatusCode};
use budgetd::auth::TokenHash;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::*;

async fn stored(app: &TestApp, id: i64) -> (Vec<u8>, Option<chrono::DateTime<chrono::Utc>>) {
    sqlx::query_as("select token_sha256, last_used_at from api_tokens where id = $1")
        .bind(id)
        .fetch_one(app.db.store.pool())
        .await
        .unwrap()
}

async fn audit_actions(app: &TestApp) -> Vec<(String, String, String, Value)> {
    sqlx::query_as(
        "select action, actor, target_id, coalesce(after, 'null') from audit_log \
         where target_type = 'api_token' order by seq",
    )
    .fetch_all(app.db.store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn managed_tokens_are_created_used_and_revoked_without_a_restart() {
    let app = app().await;
    seed_tenants(&app, &["acme", "globex"]).await;
    let admin = token("admin");
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "ci-pipeline", "role": "viewer", "expires_at": "2099-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let secret = reply.body["secret"].as_str().unwrap().to_owned();
    let id = reply.body["id"].as_i64().unwrap();
    assert!(secret.starts_with("bdt_") && secret.len() == 68, "{secret}");
    assert_eq!(reply.body["state"], "live");
    assert_eq!(reply.body["created_by"], "admin-user");
    assert_eq!(reply.body["expires_at"], "2099-01-01T00:00:00Z");

    // Only the hash is stored; the list never shows the secret or the hash.
    let (hash, last_used) = stored(&app, id).await;
    assert_eq!(hash, Sha256::digest(secret.as_bytes()).to_vec());
    assert_eq!(last_used, None);
    let secret_in_db: bool = sqlx::query_scalar(
        "select exists (select 1 from api_tokens t where t::text like '%' || $1 || '%')",
    )
    .bind(&secret[4..])
    .fetch_one(app.db.store.pool())
    .await
    .unwrap();
    assert!(!secret_in_db);
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let listed = reply.body.to_string();
    assert!(!listed.contains(&secret[4..]) && !listed.contains(&hex::encode(&hash)));
    assert_eq!(reply.body["tokens"][0]["name"], "ci-pipeline");
    assert!(reply.body["tokens"][0].get("secret").is_none());

    // The token works at once, as a viewer; its first use is recorded, and uses within the
    // minute after it write nothing.
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&secret), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let first_use = stored(&app, id).await.1.expect("the use is recorded");
    let before = app.snapshot().await;
    for _ in 0..20 {
        let reply = app
            .call(Method::GET, "/api/v1/tenants/acme", Some(&secret), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "uses within a minute write nothing"
    );
    assert_eq!(stored(&app, id).await.1, Some(first_use));
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&secret),
            Some(tenant_body("by-viewer")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&admin), None)
        .await;
    assert!(reply.body["tokens"][0]["last_used_at"].is_string());

    // Revoked: refused at once by the same running router; a second revoke changes nothing.
    let reply = app
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["state"], "revoked");
    assert_eq!(reply.body["revoked_by"], "admin-user");
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&secret), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["code"], "token_revoked");
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{id}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(app.snapshot().await, before);

    // A revoked token's name is free again.
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "ci-pipeline", "role": "tenant", "tenant": "acme"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let tenant_secret = reply.body["secret"].as_str().unwrap().to_owned();
    let tenant_id = reply.body["id"].as_i64().unwrap();
    assert_eq!(reply.body["tenant"], "acme");
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&tenant_secret), None)
        .await;
    let listed: Vec<&str> = reply.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["acme"]);
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/globex",
            Some(&tenant_secret),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);

    // Creation and revocation are audited, by whom, never with the secret or its hash.
    let audit = audit_actions(&app).await;
    let actions: Vec<(&str, &str, String)> = audit
        .iter()
        .map(|(a, actor, target, _)| (a.as_str(), actor.as_str(), target.clone()))
        .collect();
    assert_eq!(
        actions,
        [
            ("token.create", "admin-user", id.to_string()),
            ("token.revoke", "admin-user", id.to_string()),
            ("token.create", "admin-user", tenant_id.to_string()),
        ]
    );
    assert_eq!(audit[0].3["role"], "viewer");
    assert_eq!(audit[2].3["tenant"], "acme");
    let trail: String = sqlx::query_scalar("select string_agg(a::text, ',') from audit_log a")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    assert!(!trail.contains(&secret[4..]) && !trail.contains(&hex::encode(&hash)));
    assert!(matches!(
        app.db.store.verify_audit_chain().await.unwrap(),
        ledger::store::ChainStatus::Intact { .. }
    ));
}

#[tokio::test]
async fn bad_token_requests_name_the_field_and_change_nothing() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let admin = token("admin");
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&admin),
            Some(json!({"name": "taken", "role": "viewer"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"role": "viewer"}), 400, "name"),
        (json!({"name": "", "role": "viewer"}), 400, "name"),
        (json!({"name": "has space", "role": "viewer"}), 400, "name"),
        (
            json!({"name": "line\nbreak", "role": "viewer"}),
            400,
            "name",
        ),
        (
            json!({"name": "x".repeat(65), "role": "viewer"}),
            400,
            "name",
        ),
        (json!({"name": "ok"}), 400, "role"),
        (json!({"name": "ok", "role": "root"}), 400, "role"),
        (json!({"name": "ok", "role": "tenant"}), 400, "tenant"),
        (
            json!({"name": "ok", "role": "viewer", "tenant": "acme"}),
            400,
            "tenant",
        ),
        (
            json!({"name": "ok", "role": "tenant", "tenant": "Not_A_Tenant"}),
            400,
            "tenant",
        ),
        (
            json!({"name": "ok", "role": "tenant", "tenant": "nobody"}),
            400,
            "tenant",
        ),
        (
            json!({"name": "ok", "role": "viewer", "expires_at": "2020-01-01T00:00:00Z"}),
            400,
            "expires_at",
        ),
        (
            json!({"name": "ok", "role": "viewer", "expires_at": "tomorrow"}),
            400,
            "expires_at",
        ),
        (
            json!({"name": "ok", "role": "viewer", "expires_at": 1}),
            400,
            "expires_at",
        ),
        (
            json!({"name": "ok", "role": "viewer", "secret": "mine"}),
            400,
            "secret",
        ),
        (json!({"name": "taken", "role": "viewer"}), 409, ""),
        // A configuration token's name.
        (json!({"name": "operator-user", "role": "viewer"}), 409, ""),
        (json!({"name": "bootstrap-admin", "role": "admin"}), 409, ""),
    ];
    for (body, status, field) in cases {
        let before = app.snapshot().await;
        let reply = app
            .call(
                Method::POST,
                "/api/v1/tokens",
                Some(&admin),
                Some(body.clone()),
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {:?}", reply.body);
        if status == 400 {
            assert_eq!(
                reply.body["error"]["field"], field,
                "{body}: {:?}",
                reply.body
            );
        } else {
            assert_eq!(reply.body["error"]["code"], "token_name_taken");
        }
        assert_eq!(app.snapshot().await, before, "{body} changed something");
    }
    for (id, status) in [("abc", 400), ("0", 400), ("-1", 400), ("999", 404)] {
        let reply = app
            .call(
                Method::DELETE,
                &format!("/api/v1/tokens/{id}"),
                Some(&admin),
                None,
            )
            .await;
        assert_eq!(reply.status.as_u16(), status, "{id}: {:?}", reply.body);
    }
    // A secret-shaped value nobody issued is just unknown.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants",
            Some(&format!("bdt_{}", "0".repeat(64))),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["code"], "unauthorized");
}

#[tokio::test]
async fn an_expired_token_is_refused() {
    let now = Arc::new(AtomicI64::new(testkit::clock::mid_month().timestamp()));
    let clock = {
        let now = now.clone();
        Arc::new(move || chrono::DateTime::from_timestamp(now.load(Ordering::SeqCst), 0).unwrap())
    };
    let app = app_with_clock(clock).await;
    let in_an_hour =
        chrono::DateTime::from_timestamp(now.load(Ordering::SeqCst) + 3600, 0).unwrap();
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(&token("admin")),
            Some(json!({"name": "short-lived", "role": "auditor", "expires_at": in_an_hour.to_rfc3339()})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let secret = reply.body["secret"].as_str().unwrap().to_owned();
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&secret), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "an auditor lists tokens");
    now.fetch_add(3600, Ordering::SeqCst);
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&secret), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["code"], "token_expired");
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&token("admin")), None)
        .await;
    assert_eq!(reply.body["tokens"][0]["state"], "expired");
}

const BOOTSTRAP: &str = "bootstrap-token-for-the-tokens-test";

#[tokio::test]
async fn the_bootstrap_token_works_until_the_first_admin_token_exists() {
    let app = app_with_auth(|a| a.with_bootstrap(Some(TokenHash::of(BOOTSTRAP)))).await;
    let create = |name: &str, role: &str| json!({"name": name, "role": role});
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(BOOTSTRAP),
            Some(create("reader", "viewer")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["created_by"], "bootstrap-admin");
    // A non-admin token does not retire it.
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(BOOTSTRAP), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tokens",
            Some(BOOTSTRAP),
            Some(create("platform-admin", "admin")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let admin_secret = reply.body["secret"].as_str().unwrap().to_owned();
    let admin_id = reply.body["id"].as_i64().unwrap();
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(BOOTSTRAP), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.body["error"]["code"], "bootstrap_retired");
    // The managed admin token works; revoking it does not bring the bootstrap token back.
    let reply = app
        .call(
            Method::DELETE,
            &format!("/api/v1/tokens/{admin_id}"),
            Some(&admin_secret),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(BOOTSTRAP), None)
        .await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    // A fresh authenticator (another replica, a restart) over the same database agrees.
    let other =
        budgetd::auth::Authenticator::new([]).with_bootstrap(Some(TokenHash::of(BOOTSTRAP)));
    let refused = other
        .authenticate(
            &format!("Bearer {BOOTSTRAP}"),
            &app.db.store,
            chrono::Utc::now(),
        )
        .await;
    assert!(matches!(
        refused,
        Err(budgetd::auth::AuthError::Refused {
            code: "bootstrap_retired",
            ..
        })
    ));
    // Configuration-file tokens keep working throughout.
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&token("admin")), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}
