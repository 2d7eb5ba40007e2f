//! Bad input gets a 4xx naming the field and changes nothing; good input round-trips.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::*;

/// Sends `body` and expects `status` with `error.field == field`, and an unchanged ledger.
async fn rejects(app: &TestApp, method: Method, path: &str, body: Value, status: u16, field: &str) {
    let before = app.snapshot().await;
    let reply = app
        .call(
            method.clone(),
            path,
            Some(&token("admin")),
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{method} {path} {body}: {:?}",
        reply.body
    );
    assert_eq!(
        reply.body["error"]["field"],
        json!(field),
        "{method} {path} {body}: {:?}",
        reply.body
    );
    assert!(reply.body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(
        app.snapshot().await,
        before,
        "{method} {path} {body} changed the ledger"
    );
}

fn with(mut base: Value, key: &str, value: Value) -> Value {
    base[key] = value;
    base
}

fn without(mut base: Value, key: &str) -> Value {
    base.as_object_mut().unwrap().remove(key);
    base
}

#[tokio::test]
async fn tenant_input_is_validated() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let ok = tenant_body("globex");
    let cases = [
        (with(ok.clone(), "id", json!("Globex")), "id"),
        (with(ok.clone(), "id", json!("-globex")), "id"),
        (with(ok.clone(), "id", json!("a_b")), "id"),
        (with(ok.clone(), "id", json!("")), "id"),
        (with(ok.clone(), "id", json!("x".repeat(64))), "id"),
        (with(ok.clone(), "id", json!("a\"}\n\\")), "id"),
        (with(ok.clone(), "id", json!(42)), "id"),
        (without(ok.clone(), "owner"), ""),
        (
            with(ok.clone(), "display_name", json!("   ")),
            "display_name",
        ),
        (with(ok.clone(), "owner", json!("x".repeat(300))), "owner"),
        (
            with(ok.clone(), "data_residency", json!("EU West")),
            "data_residency",
        ),
        (
            with(ok.clone(), "labels", json!({"bad key": "x"})),
            "labels.bad key",
        ),
        (
            with(ok.clone(), "labels", json!({"team": "-x"})),
            "labels.team",
        ),
        (
            with(ok.clone(), "labels", json!({"team": 1})),
            "labels.team",
        ),
        (with(ok.clone(), "colour", json!("blue")), "colour"),
    ];
    for (body, field) in cases {
        if field.is_empty() {
            // a missing field: serde names it in the message, not as a path
            let before = app.snapshot().await;
            let reply = app
                .call(
                    Method::POST,
                    "/api/v1/tenants",
                    Some(&token("admin")),
                    Some(body),
                )
                .await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST);
            assert!(
                reply.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("owner"),
                "{:?}",
                reply.body
            );
            assert_eq!(app.snapshot().await, before);
        } else {
            rejects(&app, Method::POST, "/api/v1/tenants", body, 400, field).await;
        }
    }
    // An existing id is a conflict, not a second tenant.
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(tenant_body("acme")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(reply.body["error"]["code"], "already_exists");

    // PATCH
    let path = "/api/v1/tenants/acme";
    rejects(
        &app,
        Method::PATCH,
        path,
        json!({"data_residency": "us"}),
        400,
        "data_residency",
    )
    .await;
    rejects(
        &app,
        Method::PATCH,
        path,
        json!({"state": "suspended"}),
        400,
        "state",
    )
    .await;
    rejects(
        &app,
        Method::PATCH,
        path,
        json!({"owner": ""}),
        400,
        "owner",
    )
    .await;
    rejects(
        &app,
        Method::PATCH,
        path,
        json!({"nickname": "a"}),
        400,
        "nickname",
    )
    .await;
    rejects(
        &app,
        Method::PATCH,
        "/api/v1/tenants/Not_Valid",
        json!({"owner": "x"}),
        400,
        "id",
    )
    .await;
    let reply = app
        .call(
            Method::PATCH,
            path,
            Some(&token("admin")),
            Some(json!({"labels": {"team": "core"}, "owner": "core@example.com"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["labels"], json!({"team": "core"}));
    assert_eq!(reply.body["owner"], "core@example.com");
    assert_eq!(reply.body["data_residency"], "eu");

    // Offboarding is idempotent; an offboarding tenant no longer changes.
    for _ in 0..2 {
        let reply = app
            .call(Method::DELETE, path, Some(&token("admin")), None)
            .await;
        assert_eq!(reply.status, StatusCode::ACCEPTED);
        assert_eq!(reply.body["state"], "offboarding");
    }
    let reply = app
        .call(
            Method::PATCH,
            path,
            Some(&token("admin")),
            Some(json!({"owner": "y@example.com"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let events: Vec<String> =
        sqlx::query_scalar("select event_type from outbox where aggregate_id = 'acme' order by id")
            .fetch_all(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!(
        events,
        ["tenant.created", "tenant.updated", "tenant.offboarding"]
    );
}

#[tokio::test]
async fn budget_input_is_validated() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let path = "/api/v1/tenants/acme/budget";
    let ok = json!({"amount": "1000.00", "currency": "EUR", "period": "monthly", "thresholds": [50, 80, 100]});
    let cases = [
        (with(ok.clone(), "amount", json!("-1.00")), "amount"),
        (with(ok.clone(), "amount", json!("abc")), "amount"),
        (with(ok.clone(), "amount", json!("1e3")), "amount"),
        (with(ok.clone(), "amount", json!(1000)), "amount"),
        (with(ok.clone(), "amount", json!("10.001")), "amount"),
        (with(ok.clone(), "currency", json!("XYZ")), "currency"),
        (with(ok.clone(), "currency", json!("eur")), "currency"),
        (
            with(ok.clone(), "thresholds", json!([80, 50, 100])),
            "thresholds",
        ),
        (
            with(ok.clone(), "thresholds", json!([50, 50])),
            "thresholds",
        ),
        (with(ok.clone(), "thresholds", json!([0, 50])), "thresholds"),
        (
            with(ok.clone(), "thresholds", json!([-10, 50])),
            "thresholds[0]",
        ),
        (with(ok.clone(), "period", json!("weekly")), "period"),
        (
            with(ok.clone(), "effective_from", json!("yesterday")),
            "effective_from",
        ),
        (with(ok.clone(), "limit", json!("1")), "limit"),
        // A zero budget would be exceeded before anything is spent (issue 9).
        (with(ok.clone(), "amount", json!("0")), "amount"),
        (with(ok.clone(), "amount", json!("-0")), "amount"),
        (with(ok.clone(), "amount", json!("0.00")), "amount"),
        (with(ok.clone(), "amount", json!("-0.00")), "amount"),
    ];
    for (body, field) in cases {
        rejects(&app, Method::PUT, path, body, 400, field).await;
    }
    let reply = app
        .call(Method::GET, path, Some(&token("admin")), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["error"]["code"], "no_budget");

    let reply = app
        .call(
            Method::PUT,
            path,
            Some(&token("finance")),
            Some(json!({"amount": "1000.00", "currency": "EUR"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = app
        .call(Method::GET, path, Some(&token("tenant")), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["amount"], "1000.00");
    assert_eq!(reply.body["period"], "monthly");
    assert_eq!(reply.body["thresholds"], json!([50, 80, 100]));
    assert_eq!(reply.body["created_by"], "finance-user");
    let start = reply.body["current_period"]["start"].as_str().unwrap();
    assert!(start.ends_with("-01"), "{start}");

    // a currency the price book does not price in
    let reply = app
        .call(Method::POST, "/api/v1/price-book/versions", Some(&token("finance")),
              Some(json!({"valid_from": "2020-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}})))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    rejects(
        &app,
        Method::PUT,
        path,
        json!({"amount": "1000.00", "currency": "USD"}),
        400,
        "currency",
    )
    .await;

    // an unknown tenant is 404 as a tenant
    let reply = app
        .call(
            Method::PUT,
            "/api/v1/tenants/nobody/budget",
            Some(&token("admin")),
            Some(ok.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn price_book_and_costs_input_is_validated() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let path = "/api/v1/price-book/versions";
    let ok = json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031", "memory": "0.004"}});
    let cases = [
        (
            with(ok.clone(), "rates", json!({"cpu": "-0.031"})),
            "rates.cpu",
        ),
        (
            with(ok.clone(), "rates", json!({"cpu": "cheap"})),
            "rates.cpu",
        ),
        (
            with(ok.clone(), "rates", json!({"cpu": 0.031})),
            "rates.cpu",
        ),
        (
            with(ok.clone(), "rates", json!({"CPU!": "1"})),
            "rates.CPU!",
        ),
        (with(ok.clone(), "rates", json!({})), "rates"),
        (with(ok.clone(), "currency", json!("EURO")), "currency"),
        (
            with(ok.clone(), "valid_from", json!("2026-01-01")),
            "valid_from",
        ),
        (
            with(ok.clone(), "valid_from", json!("2026-01-01T00:00:00.5Z")),
            "valid_from",
        ),
        (with(ok.clone(), "version", json!(3)), "version"),
    ];
    for (body, field) in cases {
        rejects(&app, Method::POST, path, body, 400, field).await;
    }
    let reply = app
        .call(
            Method::POST,
            path,
            Some(&token("finance")),
            Some(ok.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    assert_eq!(reply.body["rates"]["cpu"], "0.031");
    let reply = app
        .call(
            Method::POST,
            path,
            Some(&token("finance")),
            Some(ok.clone()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);

    // costs query parameters
    for (query, field) in [
        ("?from=2026-01-01", "to"),
        ("?from=2026-13-01&to=2026-12-31", "from"),
        ("?from=2026-02-01&to=2026-01-01", "to"),
        ("?from=2020-01-01&to=2026-01-01", "to"),
        ("?from=2026-01-01&to=2026-01-02&tenant=x", "tenant"),
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/costs{query}"),
                Some(&token("viewer")),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{query}");
        assert_eq!(
            reply.body["error"]["field"], field,
            "{query}: {:?}",
            reply.body
        );
    }
}

#[tokio::test]
async fn oversized_and_malformed_bodies_are_refused() {
    let app = app().await;
    let before = app.snapshot().await;
    let mut big = tenant_body("big");
    big["display_name"] = json!("x".repeat(1 << 20));
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(big),
        )
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.body["error"]["code"], "payload_too_large");
    let reply = app
        .raw(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(b"{\"id\": ".to_vec()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["code"], "invalid_json");
    let reply = app
        .raw(
            Method::POST,
            "/api/v1/tenants",
            Some(&token("admin")),
            Some(b"{} {}".to_vec()),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let reply = app
        .call(
            Method::GET,
            "/api/v1/nothing-here",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.body["error"]["code"], "not_found");
    let reply = app
        .call(Method::PUT, "/api/v1/tenants", Some(&token("admin")), None)
        .await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(app.snapshot().await, before);
    assert!(reply.request_id.is_some());
}

#[tokio::test]
async fn costs_come_from_the_ledger_rounded_per_the_documented_rule() {
    use chrono::{TimeZone, Utc};
    use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
    use ledger::price_book::MeterName;

    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let reply = app
        .call(Method::POST, "/api/v1/price-book/versions", Some(&token("admin")),
              Some(json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}})))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let version = app
        .db
        .store
        .price_book_version_at(Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap())
        .await
        .unwrap()
        .unwrap();
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let entries: Vec<NewEntry> = (0..3)
        .map(|i| {
            let start = Utc.with_ymd_and_hms(2026, 3, 1 + i, 10, 0, 0).unwrap();
            NewEntry::new(
                EntryKey {
                    tenant: "acme".parse().unwrap(),
                    meter: cpu.clone(),
                    window: Window::new(start, start + chrono::Duration::seconds(300)).unwrap(),
                },
                rust_decimal::Decimal::from(1000 + i),
                UnitName::parse("u", "core_seconds").unwrap(),
                version
                    .pricing(
                        &cpu,
                        UnitName::parse("u", "core_hour").unwrap(),
                        rust_decimal::Decimal::from(3600),
                    )
                    .unwrap(),
            )
            .unwrap()
        })
        .collect();
    app.db.store.write_entries(&entries, "test").await.unwrap();
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/costs?from=2026-03-01&to=2026-03-02",
            Some(&token("tenant")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    // 1000 and 1001 core-seconds at 0.031/core-hour: 0.008611.. and 0.008619.. -> 0.01 each; total 0.01723 -> 0.02
    let rows = reply.body["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["amount"], "0.01");
    assert_eq!(rows[0]["quantity"], "1000");
    assert_eq!(reply.body["totals"][0]["amount"], "0.02");
    // and in the price unit: 1000 core-seconds are 0.2777… core-hours, to 12 places
    assert_eq!(rows[0]["unit"], "core_seconds");
    assert_eq!(rows[0]["priced_quantity"], "0.277777777778");
    assert_eq!(rows[0]["price_unit"], "core_hour");
    assert_eq!(
        reply.body["currency_totals"],
        json!([{"currency": "EUR", "amount": "0.02"}])
    );
}

/// The app of a daemon whose collector prices cpu per core-hour and memory per GiB-hour.
async fn app_pricing_cpu_and_memory() -> TestApp {
    let db = testkit::db::fresh_database().await;
    let router = router_pricing(
        db.store.clone(),
        &[("cpu", "core_hour"), ("memory", "gib_hour")],
    );
    TestApp { router, db }
}

/// Finance adds the price-book version `body`.
async fn add_price_book_version(app: &TestApp, body: Value) -> Reply {
    app.call(
        Method::POST,
        "/api/v1/price-book/versions",
        Some(&token("finance")),
        Some(body),
    )
    .await
}

#[tokio::test]
async fn the_price_book_shows_each_rates_price_unit() {
    let app = app_pricing_cpu_and_memory().await;
    let body = json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR",
                      "rates": {"cpu": "0.031", "memory": "0.004", "legacy": "1.5"}});
    let reply = add_price_book_version(&app, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    // `rates` stays meter -> decimal string; the units are a sibling, for the meters the
    // collector prices (nobody prices `legacy`, so it has no unit to show).
    let expected_rates = json!({"cpu": "0.031", "memory": "0.004", "legacy": "1.5"});
    let expected_units = json!({"cpu": "core_hour", "memory": "gib_hour"});
    assert_eq!(reply.body["rates"], expected_rates);
    assert_eq!(reply.body["price_units"], expected_units);

    for role in ["finance", "admin"] {
        let reply = app
            .call(Method::GET, "/api/v1/price-book", Some(&token(role)), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        let versions = reply.body["versions"].as_array().unwrap();
        assert_eq!(versions.len(), 1);
        assert_eq!(versions[0]["rates"], expected_rates);
        assert_eq!(versions[0]["price_units"], expected_units);
    }
}

#[tokio::test]
async fn a_price_book_version_must_price_every_collected_meter() {
    let app = app_pricing_cpu_and_memory().await;
    let before = app.snapshot().await;
    let body =
        json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}});
    let reply = add_price_book_version(&app, body).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.body["error"]["field"], "rates.memory");
    assert_eq!(app.snapshot().await, before);
    let body = json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031", "memory": "0.004", "extra": "1"}});
    let reply = add_price_book_version(&app, body).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
}

#[tokio::test]
async fn enforcement_input_is_validated() {
    use ledger::enforcement::ActionState;
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "test",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let mut ids = Vec::new();
    for state in [ActionState::Pending, ActionState::Scheduled] {
        let action = open_action(
            &app.db.store,
            lock.fence(),
            "acme",
            &format!("actual:120:suspend:{state}"),
            state,
        )
        .await;
        ids.push(action.id);
    }
    let (pending, scheduled) = (ids[0], ids[1]);
    let approve = |id: &str| format!("/api/v1/enforcement/actions/{id}/approve");
    let cases = [
        (approve("abc"), json!({"reason": "ok"}), 400, "id"),
        (approve("0"), json!({"reason": "ok"}), 400, "id"),
        (approve(&pending.to_string()), json!({}), 400, "reason"),
        (
            approve(&pending.to_string()),
            json!({"reason": "  "}),
            400,
            "reason",
        ),
        (
            approve(&pending.to_string()),
            json!({"reason": "x".repeat(1001)}),
            400,
            "reason",
        ),
        (
            approve(&pending.to_string()),
            json!({"reason": "ok", "force": true}),
            400,
            "force",
        ),
        (
            approve(&pending.to_string()),
            json!({"reason": 7}),
            400,
            "reason",
        ),
    ];
    for (path, body, status, field) in cases {
        rejects(&app, Method::POST, &path, body, status, field).await;
    }
    // Only pending actions can be decided; unknown ones do not exist.
    let before = app.snapshot().await;
    let reply = app
        .call(
            Method::POST,
            &approve(&scheduled.to_string()),
            Some(&token("operator")),
            Some(json!({"reason": "ok"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);
    let reply = app
        .call(
            Method::POST,
            &approve("999999"),
            Some(&token("operator")),
            Some(json!({"reason": "ok"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{:?}", reply.body);
    assert_eq!(app.snapshot().await, before);

    for (query, field) in [
        ("state=open", "state"),
        ("tenant=Acme", "tenant"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("before=x", "before"),
        ("colour=red", "colour"),
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("/api/v1/enforcement/actions?{query}"),
                Some(&token("viewer")),
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.body["error"]["field"],
            json!(field),
            "{query}: {:?}",
            reply.body
        );
    }
    let listed = app
        .call(
            Method::GET,
            "/api/v1/enforcement/actions?state=pending&tenant=acme",
            Some(&token("viewer")),
            None,
        )
        .await;
    let listed: Vec<i64> = listed.body["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [pending]);

    let exemption = "/api/v1/tenants/acme/exemption";
    let soon = chrono::Utc::now() + chrono::Duration::days(3);
    for (body, field) in [
        (json!({"reason": "launch week"}), "until"),
        (
            json!({"until": "tomorrow", "reason": "launch week"}),
            "until",
        ),
        (
            json!({"until": chrono::Utc::now() + chrono::Duration::days(400), "reason": "x"}),
            "until",
        ),
        (json!({"until": soon}), "reason"),
        (json!({"until": soon, "reason": ""}), "reason"),
    ] {
        rejects(&app, Method::PUT, exemption, body, 400, field).await;
    }
    let reply = app
        .call(
            Method::PUT,
            exemption,
            Some(&token("operator")),
            Some(json!({"until": soon, "reason": "launch week"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["in_force"], true);
    assert_eq!(reply.body["created_by"], "operator-user");
}

/// A tenant `acme` and one pending enforcement action on it: every route that takes a body
/// has something to act on.
async fn app_with_pending_action() -> (TestApp, i64) {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "test",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap()
    .unwrap();
    let action = open_action(
        &app.db.store,
        lock.fence(),
        "acme",
        "actual:120:suspend",
        ledger::enforcement::ActionState::Pending,
    )
    .await;
    (app, action.id)
}

/// Issue 9, defect 3: dates beyond Postgres' range answered 500. Every date and time the API
/// takes is strict (four-digit, zero-padded) and within 1970-01-01..9999-12-31 UTC: anything
/// else is 400 naming the field and changes nothing.
#[tokio::test]
async fn dates_outside_1970_to_9999_or_not_zero_padded_are_400_naming_the_field() {
    let (app, _) = app_with_pending_action().await;
    let budget = "/api/v1/tenants/acme/budget";
    let exemption = "/api/v1/tenants/acme/exemption";
    let versions = "/api/v1/price-book/versions";
    let bad_instants = [
        "-5000-01-01T00:00:00Z",
        "+10000-01-01T00:00:00Z",
        "+002026-01-01T00:00:00Z",
        "10000-01-01T00:00:00Z",
        "0001-01-01T00:00:00Z",
        "1969-12-31T23:59:59Z",
        "9999-12-31T23:00:00-01:00",
        "2026-1-1T00:00:00Z",
        "2026-01-01 00:00:00",
    ];
    for at in bad_instants {
        let cases = [
            (
                Method::PUT,
                budget,
                json!({"amount": "100.00", "currency": "EUR", "effective_from": at}),
                "effective_from",
            ),
            (
                Method::PUT,
                exemption,
                json!({"until": at, "reason": "launch week"}),
                "until",
            ),
            (
                Method::POST,
                versions,
                json!({"valid_from": at, "currency": "EUR", "rates": {"cpu": "0.031"}}),
                "valid_from",
            ),
        ];
        for (method, path, body, field) in cases {
            rejects(&app, method, path, body, 400, field).await;
        }
    }
    let before = app.snapshot().await;
    for (query, field) in [
        ("from=-5000-01-01&to=2026-01-01", "from"),
        ("from=2026-01-01&to=10000-01-01", "to"),
        ("from=2026-01-01&to=+10000-01-01", "to"),
        ("from=1969-12-31&to=1970-01-01", "from"),
        ("from=0001-01-01&to=0001-01-02", "from"),
        ("from=2026-1-1&to=2026-01-02", "from"),
        ("from=2026-01-01&to=2026-01-2", "to"),
        ("from=2026-01-01T00:00:00Z&to=2026-01-02", "from"),
    ] {
        let reply = app
            .call(
                Method::GET,
                &format!("/api/v1/tenants/acme/costs?{query}"),
                Some(&token("viewer")),
                None,
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.body["error"]["field"], field,
            "{query}: {:?}",
            reply.body
        );
    }
    assert_eq!(app.snapshot().await, before);

    // The ends of the range are in it.
    let reply = app
        .call(
            Method::GET,
            "/api/v1/tenants/acme/costs?from=9999-12-01&to=9999-12-31",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let reply = app
        .call(
            Method::PUT,
            budget,
            Some(&token("finance")),
            Some(json!({"amount": "100.00", "currency": "EUR", "effective_from": "1970-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["effective_from"], "1970-01-01T00:00:00Z");
    let reply = app
        .call(
            Method::PUT,
            budget,
            Some(&token("finance")),
            Some(json!({"amount": "100.00", "currency": "EUR", "effective_from": "9999-12-31T23:59:59Z"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["effective_from"], "9999-12-31T23:59:59Z");
    // An `until` in the past ends an exemption; 1970 is still a time.
    let reply = app
        .call(
            Method::PUT,
            exemption,
            Some(&token("operator")),
            Some(json!({"until": "1970-01-01T00:00:00Z", "reason": "ended"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["in_force"], false);
}

/// Issue 9, defect 3 and "Also": a NUL in a reason answered 500, and a line break or an
/// escape in free text reached logs, alert annotations and CSV cells as it was. Every
/// single-line text field refuses control characters, line separators and bidi controls.
#[tokio::test]
async fn control_characters_in_single_line_text_are_400_naming_the_field() {
    let (app, pending) = app_with_pending_action().await;
    let decide = |verb: &str| format!("/api/v1/enforcement/actions/{pending}/{verb}");
    let hostile = [
        "nul \u{0} byte",
        "bell \u{7}",
        "\u{1b}[2J escape",
        "forged\nINFO line",
        "carriage\r return",
        "crlf\r\n",
        "tab\tinside",
        "del \u{7f}",
        "next line \u{85}",
        "line separator \u{2028}",
        "right-to-left override \u{202e}",
        "isolate \u{2067}",
    ];
    for text in hostile {
        let cases = [
            (
                Method::POST,
                decide("approve"),
                json!({"reason": text}),
                "reason",
            ),
            (
                Method::POST,
                decide("reject"),
                json!({"reason": text}),
                "reason",
            ),
            (
                Method::PUT,
                "/api/v1/tenants/acme/exemption".to_owned(),
                json!({"until": "2026-01-01T00:00:00Z", "reason": text}),
                "reason",
            ),
            (
                Method::POST,
                "/api/v1/tenants".to_owned(),
                with(tenant_body("globex"), "display_name", json!(text)),
                "display_name",
            ),
            (
                Method::POST,
                "/api/v1/tenants".to_owned(),
                with(tenant_body("globex"), "owner", json!(text)),
                "owner",
            ),
            (
                Method::PATCH,
                "/api/v1/tenants/acme".to_owned(),
                json!({"display_name": text}),
                "display_name",
            ),
            (
                Method::PATCH,
                "/api/v1/tenants/acme".to_owned(),
                json!({"owner": text}),
                "owner",
            ),
        ];
        for (method, path, body, field) in cases {
            rejects(&app, method, &path, body, 400, field).await;
        }
    }
    // Text that only looks dangerous elsewhere is text: stored and shown as given.
    let reply = app
        .call(
            Method::POST,
            &decide("approve"),
            Some(&token("operator")),
            Some(json!({"reason": "=HYPERLINK(\"x\") – Café 東京, \"quoted\""})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        reply.body["decision_reason"],
        "=HYPERLINK(\"x\") – Café 東京, \"quoted\""
    );
}

/// Issue 9, defect 7: an offboarding tenant no longer changes, and an exemption is a change.
#[tokio::test]
async fn an_offboarding_tenant_cannot_be_exempted() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let reply = app
        .call(
            Method::DELETE,
            "/api/v1/tenants/acme",
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    let before = app.snapshot().await;
    let until = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    for role in ["admin", "operator"] {
        let reply = app
            .call(
                Method::PUT,
                "/api/v1/tenants/acme/exemption",
                Some(&token(role)),
                Some(json!({"until": until, "reason": "wind-down"})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{role}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "tenant_not_mutable");
    }
    assert_eq!(app.snapshot().await, before);
}

/// Sends `body` with exactly these headers (no defaults) and returns the status and the
/// error code, if any.
async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = app
        .router
        .clone()
        .oneshot(req.body(Body::from(body.to_vec())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, body["error"]["code"].clone())
}

/// Issue 9, defect 7: any `application/json…` media type and a JSON array (read by serde as
/// the struct's fields in order) were accepted. Only `application/json` (with `charset=utf-8`
/// at most) is JSON (else 415), and every body is one object (else 400); neither changes
/// anything, and the caller's permission is still checked first.
#[tokio::test]
async fn bodies_are_json_objects_sent_as_application_json() {
    let (app, pending) = app_with_pending_action().await;
    let admin = format!("Bearer {}", token("admin"));
    let approve = format!("/api/v1/enforcement/actions/{pending}/approve");
    let until = (chrono::Utc::now() + chrono::Duration::days(3)).to_rfc3339();
    let routes: Vec<(Method, &str, Value)> = vec![
        (Method::POST, "/api/v1/tenants", tenant_body("globex")),
        (
            Method::PATCH,
            "/api/v1/tenants/acme",
            json!({"owner": "x@example.com"}),
        ),
        (
            Method::PUT,
            "/api/v1/tenants/acme/budget",
            json!({"amount": "100.00", "currency": "EUR"}),
        ),
        (
            Method::PUT,
            "/api/v1/tenants/acme/exemption",
            json!({"until": until, "reason": "launch"}),
        ),
        (Method::POST, &approve, json!({"reason": "ok"})),
        (
            Method::POST,
            "/api/v1/price-book/versions",
            json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}}),
        ),
        (
            Method::POST,
            "/api/v1/tokens",
            json!({"name": "ci", "role": "viewer"}),
        ),
    ];
    let before = app.snapshot().await;
    for (method, path, object) in &routes {
        // The object's values as an array: what serde would have read positionally.
        let values: Vec<Value> = object.as_object().unwrap().values().cloned().collect();
        for body in [
            json!(values).to_string(),
            "[]".to_owned(),
            "null".to_owned(),
            "\"text\"".to_owned(),
            "42".to_owned(),
        ] {
            let headers = [
                ("authorization", admin.as_str()),
                ("content-type", "application/json"),
            ];
            let (status, code) = send(&app, method.clone(), path, &headers, body.as_bytes()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {path} {body}");
            assert_eq!(code, "invalid_json", "{method} {path} {body}");
        }
        let body = object.to_string();
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/jsonx"),
            Some("application/json-patch+json"),
            Some("application/json; charset=latin1"),
            Some("application/json; charset=utf-8; q=1"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
        ] {
            let mut headers = vec![("authorization", admin.as_str())];
            headers.extend(content_type.map(|c| ("content-type", c)));
            let (status, code) = send(&app, method.clone(), path, &headers, body.as_bytes()).await;
            assert_eq!(
                status,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{method} {path} {content_type:?}"
            );
            assert_eq!(
                code, "unsupported_media_type",
                "{method} {path} {content_type:?}"
            );
        }
        // Permission first: a viewer learns nothing about the body's form.
        let viewer = format!("Bearer {}", token("viewer"));
        let headers = [
            ("authorization", viewer.as_str()),
            ("content-type", "text/plain"),
        ];
        let (status, _) = send(&app, method.clone(), path, &headers, body.as_bytes()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}");
    }
    assert_eq!(app.snapshot().await, before);

    // The forms of application/json that are JSON.
    for (content_type, id) in [
        ("application/json; charset=utf-8", "one"),
        ("Application/JSON;Charset=\"UTF-8\"", "two"),
    ] {
        let headers = [
            ("authorization", admin.as_str()),
            ("content-type", content_type),
        ];
        let body = tenant_body(id).to_string();
        let (status, code) = send(
            &app,
            Method::POST,
            "/api/v1/tenants",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{content_type}: {code}");
    }
}

/// Issue 9, defect 7: the authentication scheme is case-insensitive (RFC 9110 §11.1).
#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = app().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let header = format!("{scheme} {}", token("viewer"));
        let (status, code) = send(
            &app,
            Method::GET,
            "/api/v1/tenants",
            &[("authorization", header.as_str())],
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{scheme}: {code}");
    }
    for header in [
        format!("Basic {}", token("viewer")),
        format!("Bearer{}", token("viewer")),
        token("viewer"),
    ] {
        let (status, _) = send(
            &app,
            Method::GET,
            "/api/v1/tenants",
            &[("authorization", header.as_str())],
            b"",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{header}");
    }
}
