//! The price book through the API: bounded rates, withdrawing or replacing a version that
//! priced nothing yet, and one currency for budgets and versions (issue 9, defects 1 and 2).

use std::collections::BTreeMap;

use axum::http::{Method, StatusCode};
use chrono::{TimeZone, Utc};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, RateLimits};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::support::*;

const VERSIONS: &str = "/api/v1/price-book/versions";

/// `role` sends `body` to `path` and gets `status` with error `code` (and `field`, if given),
/// and the ledger does not change.
async fn refused(
    app: &TestApp,
    (method, path, role): (Method, &str, &str),
    body: Option<Value>,
    status: StatusCode,
    code: &str,
    field: Option<&str>,
) -> Value {
    let before = app.snapshot().await;
    let reply = app
        .call(method.clone(), path, Some(&token(role)), body.clone())
        .await;
    assert_eq!(
        reply.status, status,
        "{method} {path} {body:?}: {:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], code, "{:?}", reply.body);
    if let Some(field) = field {
        assert_eq!(reply.body["error"]["field"], field, "{:?}", reply.body);
    }
    assert_eq!(
        app.snapshot().await,
        before,
        "{method} {path} changed the ledger"
    );
    reply.body
}

async fn add(app: &TestApp, role: &str, body: Value) -> Value {
    let reply = app
        .call(Method::POST, VERSIONS, Some(&token(role)), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.body
}

async fn versions(app: &TestApp) -> Vec<(String, String)> {
    let reply = app
        .call(
            Method::GET,
            "/api/v1/price-book",
            Some(&token("viewer")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.body["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["valid_from"].as_str().unwrap().to_owned(),
                v["rates"]["cpu"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn audited(app: &TestApp, action: &str) -> Vec<(String, String)> {
    sqlx::query_as("select target_id, role from audit_log where action = $1 order by seq")
        .bind(action)
        .fetch_all(app.db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn rates_are_bounded_per_meter_and_a_rate_over_the_bound_is_400_naming_it() {
    let db = testkit::db::fresh_database().await;
    let limits = RateLimits::new(
        "price_book.max_rate",
        Decimal::from(1000),
        BTreeMap::from([(MeterName::parse("m", "gpu").unwrap(), Decimal::from(50_000))]),
    )
    .unwrap();
    let router = router_limiting_rates(db.store.clone(), &[], budgetd::api::wall_clock(), limits);
    let app = TestApp { router, db };
    let version = |rates: Value| json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": rates});
    let post = || (Method::POST, VERSIONS, "finance");
    // The rate: rust_decimal's largest value.
    for rates in [
        json!({"cpu": "79228162514264337593543950335", "gpu": "1"}),
        json!({"cpu": "1000.000000000001", "gpu": "1"}),
        json!({"cpu": "1", "gpu": "50000.01"}),
        json!({"cpu": "0.0000000000001", "gpu": "1"}),
    ] {
        let field = if rates["gpu"] == "1" {
            "rates.cpu"
        } else {
            "rates.gpu"
        };
        refused(
            &app,
            post(),
            Some(version(rates)),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some(field),
        )
        .await;
    }
    // At the limits: a meter's own (gpu), and the default for the others.
    add(
        &app,
        "finance",
        version(json!({"cpu": "1000", "gpu": "50000"})),
    )
    .await;
}

/// Entries of `acme` priced by the version in force at `at`.
async fn write_entry(app: &TestApp, at: chrono::DateTime<Utc>) {
    let version = app
        .db
        .store
        .price_book_version_at(at)
        .await
        .unwrap()
        .unwrap();
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let entry = NewEntry::new(
        EntryKey {
            tenant: "acme".parse().unwrap(),
            meter: cpu.clone(),
            window: Window::new(at, at + chrono::Duration::seconds(300)).unwrap(),
        },
        Decimal::from(3600),
        UnitName::parse("u", "core_seconds").unwrap(),
        version
            .pricing(
                &cpu,
                UnitName::parse("u", "core_hour").unwrap(),
                Decimal::from(3600),
            )
            .unwrap(),
    )
    .unwrap();
    app.db.store.write_entries(&[entry], "test").await.unwrap();
}

#[tokio::test]
async fn a_version_that_priced_nothing_is_withdrawn_or_replaced_by_finance_or_admin_and_audited() {
    let app = app().await;
    seed_tenants(&app, &["acme"]).await;
    let body = |valid_from: &str, cpu: &str| json!({"valid_from": valid_from, "currency": "EUR", "rates": {"cpu": cpu}});
    let first = add(&app, "admin", body("2026-01-01T00:00:00Z", "0.031")).await;
    let second = add(&app, "finance", body("2026-06-01T00:00:00Z", "0.05")).await;
    let (first, second) = (
        first["version"].as_i64().unwrap(),
        second["version"].as_i64().unwrap(),
    );
    write_entry(&app, Utc.with_ymd_and_hms(2026, 3, 1, 10, 0, 0).unwrap()).await;

    // Who may, and what is not a version.
    let path = format!("{VERSIONS}/{second}");
    for role in ["operator", "viewer", "tenant"] {
        refused(
            &app,
            (Method::DELETE, &path, role),
            None,
            StatusCode::FORBIDDEN,
            "forbidden",
            None,
        )
        .await;
    }
    refused(
        &app,
        (Method::DELETE, &format!("{VERSIONS}/x1"), "finance"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("id"),
    )
    .await;
    refused(
        &app,
        (Method::DELETE, &format!("{VERSIONS}/0"), "finance"),
        None,
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("id"),
    )
    .await;
    refused(
        &app,
        (Method::DELETE, &format!("{VERSIONS}/999"), "finance"),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;

    // A replacement that is not valid withdraws nothing.
    let mut no_id = body("2026-06-01T00:00:00Z", "0.04");
    no_id["replaces"] = json!(0);
    let mut too_dear = body("2026-06-01T00:00:00Z", "2000000");
    too_dear["replaces"] = json!(second);
    for (replacement, field) in [(no_id, "replaces"), (too_dear, "rates.cpu")] {
        refused(
            &app,
            (Method::POST, VERSIONS, "finance"),
            Some(replacement),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some(field),
        )
        .await;
    }

    // A version that priced an entry is immutable: 409, both ways.
    let in_use = format!("{VERSIONS}/{first}");
    refused(
        &app,
        (Method::DELETE, &in_use, "admin"),
        None,
        StatusCode::CONFLICT,
        "version_in_use",
        None,
    )
    .await;
    let mut replacing_first = body("2026-01-01T00:00:00Z", "0.03");
    replacing_first["replaces"] = json!(first);
    refused(
        &app,
        (Method::POST, VERSIONS, "finance"),
        Some(replacing_first),
        StatusCode::CONFLICT,
        "version_in_use",
        None,
    )
    .await;

    // The unused one is superseded at its own valid_from, in one step.
    let mut replacing = body("2026-06-01T00:00:00Z", "0.04");
    replacing["replaces"] = json!(second);
    let third = add(&app, "finance", replacing).await["version"]
        .as_i64()
        .unwrap();
    assert_eq!(
        versions(&app).await,
        [
            ("2026-01-01T00:00:00Z".to_owned(), "0.031".to_owned()),
            ("2026-06-01T00:00:00Z".to_owned(), "0.04".to_owned())
        ]
    );
    // ... and withdrawn.
    let reply = app
        .call(
            Method::DELETE,
            &format!("{VERSIONS}/{third}"),
            Some(&token("admin")),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["rates"]["cpu"], "0.04");
    assert_eq!(
        versions(&app).await,
        [("2026-01-01T00:00:00Z".to_owned(), "0.031".to_owned())]
    );
    refused(
        &app,
        (Method::DELETE, &format!("{VERSIONS}/{third}"), "admin"),
        None,
        StatusCode::NOT_FOUND,
        "not_found",
        None,
    )
    .await;

    assert_eq!(
        audited(&app, "price_book.version.withdraw").await,
        [
            (second.to_string(), "finance".to_owned()),
            (third.to_string(), "admin".to_owned())
        ]
    );
    assert_eq!(audited(&app, "price_book.version.create").await.len(), 3);
    assert!(matches!(
        app.db.store.verify_audit_chain().await.unwrap(),
        ledger::store::ChainStatus::Intact { .. }
    ));
}

#[tokio::test]
async fn budgets_and_price_book_versions_share_one_currency() {
    // A budget backdated to before the first version is in force now: its currency is checked
    // against the version, which prices its spend.
    let app = app().await;
    seed_tenants(&app, &["acme", "globex"]).await;
    add(
        &app,
        "finance",
        json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}}),
    )
    .await;
    let budget = "/api/v1/tenants/acme/budget";
    let backdated = |currency: &str| json!({"amount": "100.00", "currency": currency, "effective_from": "2020-01-01T00:00:00Z"});
    let body = refused(
        &app,
        (Method::PUT, budget, "finance"),
        Some(backdated("USD")),
        StatusCode::BAD_REQUEST,
        "invalid_field",
        Some("currency"),
    )
    .await;
    assert!(
        body["error"]["message"].as_str().unwrap().contains("EUR"),
        "{body}"
    );
    let reply = app
        .call(
            Method::PUT,
            budget,
            Some(&token("finance")),
            Some(backdated("EUR")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    // A version in another currency would make that budget incomparable with spend, later or
    // earlier than it.
    for valid_from in ["2027-01-01T00:00:00Z", "2019-01-01T00:00:00Z"] {
        let version =
            json!({"valid_from": valid_from, "currency": "USD", "rates": {"cpu": "0.03"}});
        refused(
            &app,
            (Method::POST, VERSIONS, "finance"),
            Some(version),
            StatusCode::CONFLICT,
            "currency_mismatch",
            None,
        )
        .await;
    }

    // Before any version: the first budget sets the currency, and a version must follow it.
    let app = app_with_clock(budgetd::api::wall_clock()).await;
    seed_tenants(&app, &["acme"]).await;
    let reply = app
        .call(
            Method::PUT,
            budget,
            Some(&token("admin")),
            Some(backdated("USD")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let eur =
        json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}});
    refused(
        &app,
        (Method::POST, VERSIONS, "admin"),
        Some(eur),
        StatusCode::CONFLICT,
        "currency_mismatch",
        None,
    )
    .await;
    add(
        &app,
        "admin",
        json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "USD", "rates": {"cpu": "0.031"}}),
    )
    .await;
}
