//! budgetd through PgBouncer in transaction mode, which stands in for Neon's pooled endpoint:
//! many concurrent API mutations and ledger writes, with no prepared-statement errors.

use axum::http::{Method, StatusCode};
use chrono::{Duration, TimeZone, Utc};
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::MeterName;
use ledger::store::ChainStatus;
use ledger::Store;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn the_api_and_the_write_path_work_through_a_transaction_mode_pooler() {
    let db = testkit::db::fresh_database().await;
    let pooled = Store::connect(&pooled_store_config(&db.pgbouncer_url()))
        .await
        .unwrap();
    assert!(pooled.is_ready().await.unwrap());
    let router = router_for(pooled.clone());
    let admin = token("admin");

    let reply = call(&router, Method::POST, "/api/v1/price-book/versions", Some(&admin),
        Some(json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031"}}).to_string().into_bytes())).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);

    // 40 tenants created, budgeted, patched and read by concurrent clients: far more
    // statements than server connections, so PgBouncer hands each transaction a different one.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let router = router.clone();
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("t{i:02}");
            let steps: [(Method, String, Option<serde_json::Value>, u16); 5] = [
                (
                    Method::POST,
                    "/api/v1/tenants".into(),
                    Some(tenant_body(&id)),
                    201,
                ),
                (
                    Method::PUT,
                    format!("/api/v1/tenants/{id}/budget"),
                    Some(json!({"amount": "500.00", "currency": "EUR"})),
                    200,
                ),
                (
                    Method::PATCH,
                    format!("/api/v1/tenants/{id}"),
                    Some(json!({"owner": "team@example.com"})),
                    200,
                ),
                (Method::GET, format!("/api/v1/tenants/{id}"), None, 200),
                (Method::GET, "/api/v1/tenants".into(), None, 200),
            ];
            for (method, path, body, expected) in steps {
                let reply = call(
                    &router,
                    method.clone(),
                    &path,
                    Some(&admin),
                    body.map(|b| b.to_string().into_bytes()),
                )
                .await;
                assert_eq!(
                    reply.status.as_u16(),
                    expected,
                    "{method} {path}: {:?}",
                    reply.body
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }

    // Concurrent ledger writes through the pooler, each batch twice.
    let version = pooled
        .price_book_version_at(Utc::now())
        .await
        .unwrap()
        .unwrap();
    let cpu = MeterName::parse("m", "cpu").unwrap();
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = pooled.clone();
        let pricing = version
            .pricing(
                &cpu,
                UnitName::parse("u", "core_hour").unwrap(),
                Decimal::from(3600),
            )
            .unwrap();
        let cpu = cpu.clone();
        writers.push(tokio::spawn(async move {
            let start =
                Utc.with_ymd_and_hms(2026, 5, 1, 0, 0, 0).unwrap() + Duration::seconds(300 * w);
            let window = Window::new(start, start + Duration::seconds(300)).unwrap();
            let batch: Vec<NewEntry> = (0..40)
                .map(|i| {
                    NewEntry::new(
                        EntryKey {
                            tenant: format!("t{i:02}").parse().unwrap(),
                            meter: cpu.clone(),
                            window,
                        },
                        Decimal::from(300 + i),
                        UnitName::parse("u", "core_seconds").unwrap(),
                        pricing.clone(),
                    )
                    .unwrap()
                })
                .collect();
            let first = store.write_entries(&batch, "pgbouncer-test").await.unwrap();
            let again = store.write_entries(&batch, "pgbouncer-test").await.unwrap();
            (first.inserted, again.unchanged)
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), (40, 40));
    }

    let tenants: i64 = sqlx::query_scalar("select count(*) from tenants")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(tenants, 40);
    let entries: i64 = sqlx::query_scalar("select count(*) from ledger_entries")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(entries, 320);
    // 1 price-book version + 40 × (create, budget, patch)
    assert_eq!(
        pooled.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { records: 121 }
    );
}
