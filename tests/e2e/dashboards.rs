//! The shipped Grafana dashboards query only the finance contract, and every panel's SQL runs as
//! a login role granted `budgetd_finance` (no Grafana server can run here; the SQL is what can be
//! checked).

use sqlx::{Connection, PgConnection};

fn expand(sql: &str) -> String {
    sql.replace(
        "$__timeFilter(day)",
        "day between '2026-01-01' and '2026-12-31'",
    )
    .replace("$tenant", "acme")
}

#[tokio::test]
async fn every_dashboard_query_runs_as_the_finance_role() {
    let db = testkit::db::fresh_database().await;
    let role = format!("grafana_{}", db.name);
    sqlx::query(&format!("create role {role} login in role budgetd_finance"))
        .execute(db.store.pool())
        .await
        .unwrap();
    let mut conn = PgConnection::connect(&db.url.replacen("postgres@", &format!("{role}@"), 1))
        .await
        .unwrap();

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let mut queries = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut sqls: Vec<String> = dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["query"].as_str().map(str::to_owned))
            .collect();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                sqls.push(target["rawSql"].as_str().unwrap().to_owned());
            }
        }
        for sql in sqls {
            assert!(
                sql.contains("finance."),
                "{}: {sql} reads outside the finance schema",
                path.display()
            );
            sqlx::raw_sql(&expand(&sql))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("{}: {sql}: {e}", path.display()));
            queries += 1;
        }
    }
    assert!(queries >= 4, "found only {queries} dashboard queries");
}
