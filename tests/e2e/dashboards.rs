//! The shipped Grafana dashboards (`dashboards/*.json`) and their provisioning. No Grafana server
//! can run here, so what Grafana would do with them is checked piece by piece against the real
//! services:
//!
//! * structure: every file parses, has its uid, title and a current schema version, panels with
//!   unique ids and a place on the grid, targets with refIds;
//! * data sources: every one a dashboard names is provisioned in `datasources.yaml`, with its type;
//! * the tenant cost dashboard keeps its contract with the Grafana folder reconciler (only the
//!   `budgetd-finance` data source, only the four tenant views, always as `finance.`, the
//!   `tenant` variable), and its queries rewritten to `tenant_finance.` run as a tenant's login;
//! * SQL: every query (panels, annotations, variables) runs against the migrated ledger, with
//!   seeded data, as a login that is only a member of `budgetd_finance`, after Grafana's macros
//!   and the variables are substituted as Grafana would, and returns rows of the shape its
//!   panel needs;
//! * PromQL: every expression is accepted by a real Prometheus, and every metric it names is on
//!   `/metrics` of a running `budgetd run` (or, for the few that appear only after an event the
//!   test does not cause, written in budgetd's source), or is read by the default meters.

use crate::support::Daemon;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, TimeZone, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::currency::Currency;
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ledger::tenant::TenantId;
use ledger::usage::{CollectedWindow, CommitMode, UnallocatedReason, UnallocatedUsage};
use ledger::Store;
use rust_decimal::Decimal;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Column, Connection, PgConnection, Row};
use testkit::db::{fresh_database, TestDb};

const FINANCE_UID: &str = "budgetd-finance";
const FINANCE_TYPE: &str = "grafana-postgresql-datasource";
const PROMETHEUS_UID: &str = "budgetd-prometheus";
const PROMETHEUS_TYPE: &str = "prometheus";

/// The views the tenant cost dashboard may read: `tenant_finance` has these, filtered to the
/// tenant of the login.
const TENANT_VIEWS: [&str; 4] = [
    "tenant_costs_daily",
    "tenant_costs_monthly",
    "budget_status",
    "enforcement_history",
];

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

struct Dashboard {
    file: String,
    json: Value,
}

/// Every `dashboards/*.json`, parsed.
fn dashboards() -> Vec<Dashboard> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
        out.push(Dashboard {
            file: path.file_name().unwrap().to_string_lossy().into_owned(),
            json,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    let files: Vec<&str> = out.iter().map(|d| d.file.as_str()).collect();
    assert_eq!(
        files,
        [
            "budgetd-health.json",
            "platform-overview.json",
            "tenant-costs.json"
        ]
    );
    out
}

fn dashboard(file: &str) -> Value {
    dashboards()
        .into_iter()
        .find(|d| d.file == file)
        .unwrap()
        .json
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Sql,
    PromQl,
}

/// One query of a dashboard: where it is, the data source uid it runs on, what it is.
#[derive(Debug, Clone)]
struct Query {
    place: String,
    uid: String,
    language: Language,
    /// Grafana's result format for SQL (`table`, `time_series`); annotations are `annotation`
    /// and variables `variable`.
    format: String,
    text: String,
}

fn uid_of(datasource: &Value) -> Option<String> {
    datasource["uid"].as_str().map(str::to_owned)
}

fn language_of(uid: &str) -> Language {
    match uid {
        FINANCE_UID => Language::Sql,
        PROMETHEUS_UID => Language::PromQl,
        other => panic!("a query on the unknown data source {other:?}"),
    }
}

/// A target's query text: `rawSql` (SQL data sources) or `expr` (Prometheus).
fn target_text(target: &Value) -> String {
    target["rawSql"]
        .as_str()
        .or(target["expr"].as_str())
        .unwrap_or_else(|| panic!("a target without rawSql or expr: {target}"))
        .to_owned()
}

/// Every query of a dashboard: panels' targets, annotations, template variables.
fn queries(file: &str, dashboard: &Value) -> Vec<Query> {
    let mut out = Vec::new();
    for panel in panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or_default();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let uid = uid_of(&target["datasource"])
                .or_else(|| uid_of(&panel["datasource"]))
                .unwrap_or_else(|| panic!("{file}: panel {title:?} has no data source"));
            out.push(Query {
                place: format!("{file}: panel {title:?} target {}", target["refId"]),
                language: language_of(&uid),
                uid,
                format: target["format"]
                    .as_str()
                    .unwrap_or("time_series")
                    .to_owned(),
                text: target_text(target),
            });
        }
    }
    for annotation in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let name = annotation["name"].as_str().unwrap_or_default();
        let uid = uid_of(&annotation["datasource"]).expect("annotation data source");
        out.push(Query {
            place: format!("{file}: annotation {name:?}"),
            language: language_of(&uid),
            uid,
            format: "annotation".to_owned(),
            text: target_text(&annotation["target"]),
        });
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] != "query" {
            continue;
        }
        let name = variable["name"].as_str().unwrap_or_default();
        let uid = uid_of(&variable["datasource"]).expect("variable data source");
        // SQL variables hold the query as a string, Prometheus ones as {"query": ...}.
        let text = variable["query"]
            .as_str()
            .or(variable["query"]["query"].as_str())
            .unwrap_or_else(|| panic!("{file}: variable {name:?} has no query"))
            .to_owned();
        out.push(Query {
            place: format!("{file}: variable {name:?}"),
            language: language_of(&uid),
            uid,
            format: "variable".to_owned(),
            text,
        });
    }
    out
}

/// Every `"datasource": {"type", "uid"}` anywhere in the JSON (panels, targets, annotations,
/// variables), as (type, uid).
fn datasource_refs(value: &Value, out: &mut BTreeSet<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                if key == "datasource" {
                    let kind = v["type"].as_str().unwrap_or_default().to_owned();
                    let uid = v["uid"].as_str().unwrap_or_default().to_owned();
                    out.insert((kind, uid));
                } else {
                    datasource_refs(v, out);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| datasource_refs(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_has_the_expected_structure() {
    let mut uids = BTreeSet::new();
    for Dashboard { file, json } in dashboards() {
        let uid = json["uid"].as_str().unwrap_or_default();
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{file}: uid {uid:?} (1 to 40 characters)"
        );
        assert!(uids.insert(uid.to_owned()), "{file}: uid {uid} twice");
        assert!(
            json["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{file}: title"
        );
        let schema = json["schemaVersion"].as_i64().unwrap_or_default();
        assert!(
            (39..=41).contains(&schema),
            "{file}: schemaVersion {schema}"
        );
        assert!(json["time"]["from"].is_string() && json["time"]["to"].is_string());

        let mut ids = BTreeSet::new();
        let mut cells: BTreeMap<(i64, i64), String> = BTreeMap::new();
        let all = panels(&json);
        assert!(all.len() >= 5, "{file}: only {} panels", all.len());
        for panel in all {
            let title = panel["title"].as_str().unwrap_or_default().to_owned();
            assert!(!title.is_empty(), "{file}: a panel without a title");
            let id = panel["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("{file}: {title}: id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice");
            let grid = &panel["gridPos"];
            let [h, w, x, y] = ["h", "w", "x", "y"].map(|k| {
                grid[k]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{file}: {title}: gridPos.{k}"))
            });
            assert!(
                h > 0 && w > 0 && x >= 0 && y >= 0 && x + w <= 24,
                "{file}: {title}: gridPos {grid}"
            );
            // No two panels cover the same grid cell.
            for row in y..y + h {
                for col in x..x + w {
                    if let Some(other) = cells.insert((row, col), title.clone()) {
                        panic!("{file}: {title:?} overlaps {other:?}");
                    }
                }
            }
            if panel["type"] == "row" {
                continue;
            }
            assert!(panel["type"].is_string(), "{file}: {title}: type");
            let targets = panel["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("{file}: {title}: targets"));
            assert!(!targets.is_empty(), "{file}: {title}: no targets");
            let mut refs = BTreeSet::new();
            for target in targets {
                let id = target["refId"].as_str().unwrap_or_default();
                assert!(!id.is_empty(), "{file}: {title}: a target without refId");
                assert!(refs.insert(id), "{file}: {title}: refId {id} twice");
                assert!(!target_text(target).trim().is_empty());
            }
        }
    }
    assert_eq!(
        uids.into_iter().collect::<Vec<_>>(),
        [
            "budgetd-health",
            "budgetd-platform-overview",
            "budgetd-tenant-costs"
        ]
    );
}

/// The `(type, uid)` of each data source in `datasources.yaml`. A line reader of the file's own
/// simple layout (a `datasources:` list of maps whose `type:` and `uid:` are plain scalars at
/// the first level), not a YAML parser: it fails on a layout it does not know.
fn provisioned_datasources() -> BTreeSet<(String, String)> {
    let text =
        std::fs::read_to_string(dashboards_dir().join("provisioning/datasources.yaml")).unwrap();
    let mut out = BTreeSet::new();
    let mut current: Option<(Option<String>, Option<String>)> = None;
    let mut finish = |entry: Option<(Option<String>, Option<String>)>| {
        if let Some((kind, uid)) = entry {
            out.insert((
                kind.expect("a data source without type"),
                uid.expect("a data source without uid"),
            ));
        }
    };
    for line in text.lines() {
        let content = line.split(" #").next().unwrap_or_default().trim_end();
        if content.trim_start().starts_with('#') || content.trim().is_empty() {
            continue;
        }
        if content.starts_with("  - ") {
            finish(current.take());
            current = Some((None, None));
        }
        let Some(entry) = current.as_mut() else {
            continue;
        };
        // The first level of an entry: "  - key: value" or "    key: value".
        let first_level = content
            .strip_prefix("  - ")
            .or_else(|| content.strip_prefix("    ").filter(|r| !r.starts_with(' ')));
        if let Some((key, value)) = first_level.and_then(|c| c.split_once(':')) {
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim() {
                "type" => entry.0 = Some(value),
                "uid" => entry.1 = Some(value),
                _ => {}
            }
        }
    }
    finish(current.take());
    out
}

#[test]
fn every_data_source_a_dashboard_names_is_provisioned() {
    let provisioned = provisioned_datasources();
    assert_eq!(
        provisioned,
        BTreeSet::from([
            (FINANCE_TYPE.to_owned(), FINANCE_UID.to_owned()),
            (PROMETHEUS_TYPE.to_owned(), PROMETHEUS_UID.to_owned()),
        ])
    );
    for Dashboard { file, json } in dashboards() {
        let mut refs = BTreeSet::new();
        datasource_refs(&json, &mut refs);
        assert!(!refs.is_empty(), "{file}");
        for r in &refs {
            assert!(
                provisioned.contains(r),
                "{file} names {r:?}, which datasources.yaml does not provision"
            );
        }
    }
    // The provider loads the dashboards' directory.
    let providers =
        std::fs::read_to_string(dashboards_dir().join("provisioning/dashboards.yaml")).unwrap();
    assert!(providers.contains("type: file") && providers.contains("path: "));
}

/// SQL without its string literals, as words and single punctuation characters, lowercased.
fn sql_tokens(sql: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in sql.chars() {
        if in_string {
            in_string = c != '\'';
            continue;
        }
        if c.is_alphanumeric() || c == '_' || c == '.' || c == '$' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if !word.is_empty() {
            tokens.push(std::mem::take(&mut word));
        }
        if c == '\'' {
            in_string = true;
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    if !word.is_empty() {
        tokens.push(word);
    }
    tokens
}

/// The relations a query reads (what follows `from` and `join`), leaving out its own CTEs.
fn relations(sql: &str) -> BTreeSet<String> {
    let t = sql_tokens(sql);
    let ctes: BTreeSet<&str> = (1..t.len().saturating_sub(2))
        .filter(|&i| t[i + 1] == "as" && t[i + 2] == "(" && (t[i - 1] == "with" || t[i - 1] == ","))
        .map(|i| t[i].as_str())
        .collect();
    t.windows(2)
        .filter(|w| (w[0] == "from" || w[0] == "join") && w[1] != "(")
        .map(|w| w[1].clone())
        .filter(|r| !ctes.contains(r.as_str()))
        .collect()
}

#[test]
fn the_tenant_cost_dashboard_keeps_the_folder_reconciler_s_contract() {
    let json = dashboard("tenant-costs.json");
    assert_eq!(json["uid"], "budgetd-tenant-costs");

    // (a) Only the finance PostgreSQL data source, nowhere a Prometheus one.
    let mut refs = BTreeSet::new();
    datasource_refs(&json, &mut refs);
    assert_eq!(
        refs,
        BTreeSet::from([(FINANCE_TYPE.to_owned(), FINANCE_UID.to_owned())])
    );

    // (c) One variable, `tenant`: a single value from a query, which the reconciler turns into
    // a hidden constant.
    let variables = json["templating"]["list"].as_array().unwrap();
    assert_eq!(variables.len(), 1);
    let tenant = &variables[0];
    assert_eq!(tenant["name"], "tenant");
    assert_eq!(tenant["type"], "query");
    assert_ne!(tenant["multi"], true, "'$tenant' quotes one value only");
    assert_ne!(tenant["includeAll"], true);

    let all = queries("tenant-costs.json", &json);
    assert!(all.len() >= 8, "{} queries", all.len());
    for q in &all {
        // (b) Only the four tenant views, always as `finance.<view>`.
        let read = relations(&q.text);
        assert!(!read.is_empty(), "{}: reads nothing", q.place);
        for relation in &read {
            let view = relation.strip_prefix("finance.");
            assert!(
                view.is_some_and(|v| TENANT_VIEWS.contains(&v)),
                "{}: reads {relation}; the tenant dashboard may read only finance.{{{}}}",
                q.place,
                TENANT_VIEWS.join(",")
            );
        }
        // `finance.` appears only where it names a view (the reconciler rewrites every one).
        for (at, _) in q.text.match_indices("finance.") {
            let rest = &q.text[at + "finance.".len()..];
            assert!(
                TENANT_VIEWS.iter().any(|v| rest.starts_with(v)),
                "{}: `finance.` before something else: {rest:.30}",
                q.place
            );
        }
        // Every panel and annotation query is about the one tenant.
        if q.format != "variable" {
            assert!(
                q.text.contains("'$tenant'") || q.text.contains("'${tenant}'"),
                "{}: not filtered by '$tenant'",
                q.place
            );
        }
        let other_variables: Vec<&str> = q
            .text
            .match_indices('$')
            .map(|(i, _)| &q.text[i..])
            .filter(|rest| !rest.starts_with("$tenant") && !rest.starts_with("${tenant}"))
            .filter(|rest| !rest.starts_with("$__time"))
            .collect();
        assert!(
            other_variables.is_empty(),
            "{}: {other_variables:?}",
            q.place
        );
    }
}

fn dec(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "test-dashboards".to_owned(),
    }
}

/// The time range the SQL runs over: Grafana's "this month" (`now/M` to `now/M`).
fn this_month(now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .unwrap();
    let next = if now.month() == 12 {
        Utc.with_ymd_and_hms(now.year() + 1, 1, 1, 0, 0, 0)
    } else {
        Utc.with_ymd_and_hms(now.year(), now.month() + 1, 1, 0, 0, 0)
    }
    .unwrap();
    (start, next - chrono::Duration::milliseconds(1))
}

/// `sql` as Grafana's PostgreSQL data source sends it: its macros expanded for the range
/// `from`..`to` (as Grafana writes them: `col BETWEEN '<from>' AND '<to>'`, instants in RFC 3339
/// UTC), and `$tenant` / `${tenant}` replaced by the tenant's id (a single-value variable is
/// put in as it is; the dashboard quotes it). Anything else that starts with `$` is an error.
fn grafana_sql(sql: &str, from: DateTime<Utc>, to: DateTime<Utc>, tenant: &str) -> String {
    let literal = |t: DateTime<Utc>| format!("'{}'", t.format("%Y-%m-%dT%H:%M:%SZ"));
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find("$__timeFilter(") {
        out.push_str(&rest[..at]);
        let args = &rest[at + "$__timeFilter(".len()..];
        let close = args.find(')').expect("$__timeFilter(column)");
        out.push_str(&format!(
            "{} BETWEEN {} AND {}",
            args[..close].trim(),
            literal(from),
            literal(to)
        ));
        rest = &args[close + 1..];
    }
    out.push_str(rest);
    let out = out
        .replace("$__timeFrom()", &literal(from))
        .replace("$__timeTo()", &literal(to))
        .replace("${tenant}", tenant)
        .replace("$tenant", tenant);
    assert!(!out.contains('$'), "a macro or variable left: {out}");
    out
}

/// A rate of 1 EUR per core-hour.
async fn price_book(store: &Store) -> PriceBookVersion {
    let rates = BTreeMap::from([(MeterName::parse("meter", "cpu").unwrap(), dec("1"))]);
    let new = NewPriceBookVersion::new(
        Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        Currency::parse("currency", "EUR").unwrap(),
        rates,
    )
    .unwrap();
    store.add_price_book_version(&ctx(), &new).await.unwrap()
}

/// One collected window ending at `end`: `spend` (tenant, euros) as cpu entries, and an hour
/// of a core in namespace `stray`, which has no tenant label.
async fn commit_window(
    store: &Store,
    version: &PriceBookVersion,
    end: DateTime<Utc>,
    spend: &[(&TenantId, &str)],
) {
    let window = Window::new(end - chrono::Duration::seconds(60), end).unwrap();
    let meter = MeterName::parse("meter", "cpu").unwrap();
    let core_seconds = UnitName::parse("u", "core_seconds").unwrap();
    let core_hour = UnitName::parse("u", "core_hour").unwrap();
    let pricing = version
        .pricing(&meter, core_hour.clone(), Decimal::from(3600))
        .unwrap();
    let entries = spend
        .iter()
        .map(|(tenant, euros)| {
            NewEntry::new(
                EntryKey {
                    tenant: (*tenant).clone(),
                    meter: meter.clone(),
                    window,
                },
                dec(euros) * Decimal::from(3600),
                core_seconds.clone(),
                pricing.clone(),
            )
            .unwrap()
        })
        .collect();
    let unallocated = vec![UnallocatedUsage {
        namespace_or_label: "stray".to_owned(),
        reason: UnallocatedReason::NoTenantLabel,
        meter: meter.clone(),
        quantity: Decimal::from(3600),
        unit: core_seconds,
        price_version: version.id,
        price_unit: core_hour,
        units_per_price_unit: Decimal::from(3600),
    }];
    let collected = CollectedWindow {
        window,
        entries,
        unallocated,
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: vec![],
        problems: vec![],
    };
    store
        .commit_windows(&[collected], &CommitMode::Collect, true, "test")
        .await
        .unwrap();
}

/// A ledger with something for every panel: tenants `acme` and `globex` with budgets and spend
/// this month (acme past its budget, with a suspension waiting for approval), unallocated
/// usage, and a tenant request waiting for a decision.
async fn seeded_ledger() -> TestDb {
    let db = fresh_database().await;
    let store = &db.store;
    let version = price_book(store).await;
    let acme = testkit::db::create_tenant(store, "acme").await;
    let globex = testkit::db::create_tenant(store, "globex").await;
    testkit::db::request_tenant(store, "initech").await;
    let (month_start, _) = this_month(Utc::now());
    for (tenant, euros) in [(&acme, "100"), (&globex, "1000")] {
        store
            .set_budget(
                &ctx(),
                tenant,
                &ledger::budget::NewBudget {
                    amount: ledger::money::Money {
                        amount: dec(euros),
                        currency: Currency::parse("currency", "EUR").unwrap(),
                    },
                    period: ledger::budget::BudgetPeriod::Monthly,
                    thresholds: ledger::budget::Thresholds::parse(vec![80, 100]).unwrap(),
                    effective_from: month_start - chrono::Duration::days(1),
                },
            )
            .await
            .unwrap();
    }
    // The latest whole minute of this month (its first minute in the month's first seconds).
    let (_, end) = testkit::clock::recent_window(Utc::now(), 60);
    commit_window(store, &version, end, &[(&acme, "125.50"), (&globex, "40")]).await;
    let lock = ledger::store::LeaderLock::try_acquire(
        &db.url,
        "dashboards-test",
        30,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
    .expect("no other leader");
    crate::support::open_action(
        store,
        lock.fence(),
        "acme",
        "actual:120:suspend",
        ledger::enforcement::ActionState::Pending,
    )
    .await;
    db
}

/// A new login role of this database's test that is a member of `role` and nothing else, and a
/// connection as it.
async fn login_in_role(db: &TestDb, prefix: &str, role: &str) -> (String, PgConnection) {
    let login = format!("{prefix}_{}", db.name);
    sqlx::query(&format!("create role {login} login in role {role}"))
        .execute(db.store.pool())
        .await
        .unwrap();
    let conn = PgConnection::connect(&db.url.replacen("postgres@", &format!("{login}@"), 1))
        .await
        .unwrap();
    (login, conn)
}

/// The roles `login` is a member of, and whether it is a superuser.
async fn memberships(db: &TestDb, login: &str) -> (Vec<String>, bool) {
    let roles: Vec<String> = sqlx::query_scalar(
        "select g.rolname::text from pg_auth_members m \
         join pg_roles g on g.oid = m.roleid join pg_roles r on r.oid = m.member \
         where r.rolname = $1 order by 1",
    )
    .bind(login)
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let superuser: bool = sqlx::query_scalar("select rolsuper from pg_roles where rolname = $1")
        .bind(login)
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    (roles, superuser)
}

fn columns(rows: &[PgRow]) -> Vec<String> {
    rows.first()
        .map(|r| r.columns().iter().map(|c| c.name().to_owned()).collect())
        .unwrap_or_default()
}

/// Runs every SQL query of the dashboards on `conn` and checks each returned rows of the shape
/// Grafana needs for it; `rewrite` turns a dashboard's SQL into what the connection runs.
async fn run_sql_queries(
    conn: &mut PgConnection,
    files: &[&str],
    tenant: &str,
    rewrite: impl Fn(&str) -> String,
) -> BTreeMap<String, Vec<PgRow>> {
    let (from, to) = this_month(Utc::now());
    let mut results = BTreeMap::new();
    for file in files {
        let json = dashboard(file);
        for q in queries(file, &json)
            .into_iter()
            .filter(|q| q.language == Language::Sql)
        {
            assert_eq!(q.uid, FINANCE_UID);
            let sql = rewrite(&grafana_sql(&q.text, from, to, tenant));
            let rows = sqlx::raw_sql(&sql)
                .fetch_all(&mut *conn)
                .await
                .unwrap_or_else(|e| panic!("{}: {e}\n{sql}", q.place));
            assert!(!rows.is_empty(), "{}: no rows\n{sql}", q.place);
            let names = columns(&rows);
            match q.format.as_str() {
                // Grafana's long time series: time, metric, value.
                "time_series" => assert_eq!(names, ["time", "metric", "value"], "{}", q.place),
                "annotation" => {
                    assert_eq!(names, ["time", "timeend", "text", "tags"], "{}", q.place)
                }
                "variable" => assert_eq!(names.len(), 1, "{}: one column", q.place),
                "table" => {}
                other => panic!("{}: format {other}", q.place),
            }
            results.insert(q.place, rows);
        }
    }
    results
}

#[tokio::test]
async fn every_dashboard_query_runs_as_a_finance_login_and_returns_rows() {
    let db = seeded_ledger().await;
    let (login, mut conn) = login_in_role(&db, "grafana", "budgetd_finance").await;
    assert_eq!(
        memberships(&db, &login).await,
        (vec!["budgetd_finance".to_owned()], false)
    );
    // The platform overview reads finance.tenants, which carries no more than the governance
    // report shows.
    let tenant_columns: Vec<String> = sqlx::query_scalar(
        "select column_name::text from information_schema.columns \
         where table_schema = 'finance' and table_name = 'tenants' order by ordinal_position",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        tenant_columns.join(" "),
        "id display_name owner owner_group state residency state_changed_at"
    );

    let results = run_sql_queries(
        &mut conn,
        &["tenant-costs.json", "platform-overview.json"],
        "acme",
        str::to_owned,
    )
    .await;
    assert!(results.len() >= 20, "{} SQL queries", results.len());

    // The tenant variable lists both tenants; the platform's pending approvals name the
    // request and the suspension.
    let variable = &results["tenant-costs.json: variable \"tenant\""];
    let tenants: Vec<String> = variable.iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, ["acme", "globex"]);
    let requests =
        &results["platform-overview.json: panel \"Pending tenant requests\" target \"A\""];
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].get::<String, _>("Tenant"), "initech");
    let actions = &results
        ["platform-overview.json: panel \"Enforcement actions awaiting approval\" target \"A\""];
    assert_eq!(actions.len(), 1);
    assert_eq!(actions[0].get::<String, _>("Rung"), "actual:120:suspend");

    // The burn-down ends where the budget status is: 100 − 125.50 left now, and the forecast
    // line ends at budget − forecast on the period's last instant.
    let (remaining, forecast): (Decimal, Decimal) = sqlx::query_as(
        "select remaining_amount, budget_amount - forecast_amount from finance.budget_status \
         where tenant_id = 'acme'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(remaining, dec("-25.50"));
    let burn = &results["tenant-costs.json: panel \"Budget burn-down\" target \"A\""];
    let last = |metric: &str| -> Decimal {
        burn.iter()
            .filter(|r| r.get::<String, _>("metric") == metric)
            .map(|r| {
                (
                    r.get::<DateTime<Utc>, _>("time"),
                    r.get::<Decimal, _>("value"),
                )
            })
            .max_by_key(|(t, _)| *t)
            .unwrap_or_else(|| panic!("no {metric} series"))
            .1
    };
    assert_eq!(last("remaining"), remaining);
    // The forecast extrapolates to now(), which moved on between the two statements: in the
    // first seconds of a month (the shifted-clock pass) a second changes it by thousands.
    let (got, want) = (last("forecast"), forecast);
    assert!(
        (got - want).abs() <= want.abs() / Decimal::from(100) + dec("0.01"),
        "forecast line ends at {got}, the budget status says {want}"
    );
    assert_eq!(last("even pace"), Decimal::ZERO);

    // Unallocated cost is the platform's, never a tenant's: the stray hour is in the overview
    // (1 EUR per window committed) and in no tenant dashboard's daily cost.
    let unallocated =
        &results["platform-overview.json: panel \"Unallocated in range\" target \"A\""];
    assert_eq!(unallocated[0].get::<Decimal, _>("Unallocated"), dec("1.00"));
    let daily = &results["tenant-costs.json: panel \"Daily cost by meter\" target \"A\""];
    let acme_total: Decimal = daily.iter().map(|r| r.get::<Decimal, _>("value")).sum();
    assert_eq!(acme_total, dec("125.50"));
}

#[tokio::test]
async fn the_tenant_dashboard_rewritten_to_tenant_finance_shows_a_tenant_login_its_own_rows() {
    let db = seeded_ledger().await;
    // The tenant's login as the Grafana reconciler makes it (`budgetd_tenant_login`; its name
    // carries the database's, so parallel test databases do not share it).
    let role: String = sqlx::query_scalar("select budgetd_tenant_login('acme', 'secret', now())")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    let mut conn = PgConnection::connect(&db.url.replacen("postgres@", &format!("{role}@"), 1))
        .await
        .unwrap();
    let results = run_sql_queries(&mut conn, &["tenant-costs.json"], "acme", |sql| {
        grafana::dashboard::tenant_schema(sql)
    })
    .await;
    assert!(results.len() >= 8);
    let variable = &results["tenant-costs.json: variable \"tenant\""];
    let tenants: Vec<String> = variable.iter().map(|r| r.get(0)).collect();
    assert_eq!(tenants, ["acme"], "the tenant's login sees only its own id");
}

// ---------------------------------------------------------------------------------------------
// PromQL

/// Aggregation operators: followed by `by (...)`/`without (...)` before their `(`.
const AGGREGATIONS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
];
/// Keywords followed by a label list in parentheses.
const LABEL_LISTS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
const KEYWORDS: &[&str] = &[
    "offset", "bool", "and", "or", "unless", "atan2", "inf", "nan",
];

/// Index just past the group that opens at `chars[open]` and closes with `close`, skipping
/// string literals inside it.
fn skip_group(chars: &[char], open: usize, close: char) -> usize {
    let mut i = open + 1;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(chars, i),
            c if c == close => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// Index just past the string literal that opens at `chars[open]`.
fn skip_string(chars: &[char], open: usize) -> usize {
    let quote = chars[open];
    let mut i = open + 1;
    while i < chars.len() {
        if chars[i] == '\\' && quote != '`' {
            i += 2;
            continue;
        }
        if chars[i] == quote {
            return i + 1;
        }
        i += 1;
    }
    i
}

/// The metric names in a PromQL expression. A tokenizer, not a parser: it drops string
/// literals, label matchers `{...}`, ranges and subqueries `[...]`, numbers and durations,
/// Grafana variables (`$name`, `${name}`, `$__rate_interval`), operators, keywords, the label
/// lists after `by`, `without`, `on`, `ignoring`, `group_left` and `group_right`, aggregation
/// operators, and every identifier followed by `(` (a function); the identifiers left are
/// metric names. It does not handle: a metric selected only by `{__name__="..."}` (it finds
/// none), a metric named like a keyword or an aggregation (`sum`, `offset`), `# comments`, and
/// it does not check that the expression is valid (a real Prometheus does that, below).
fn promql_metrics(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if matches!(c, '"' | '\'' | '`') {
            i = skip_string(&chars, i);
        } else if c == '{' {
            i = skip_group(&chars, i, '}');
        } else if c == '[' {
            i = skip_group(&chars, i, ']');
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                i = skip_group(&chars, i, '}');
            } else {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
            }
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            // Numbers and durations: 0.95, 1e3, 0x1f, 5m, 1h30m.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut next = i;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let lower = word.to_ascii_lowercase();
            if LABEL_LISTS.contains(&lower.as_str()) {
                if chars.get(next) == Some(&'(') {
                    i = skip_group(&chars, next, ')');
                }
            } else if KEYWORDS.contains(&lower.as_str())
                || AGGREGATIONS.contains(&lower.as_str())
                || chars.get(next) == Some(&'(')
            {
                // a keyword, an aggregation or a function
            } else {
                out.insert(word);
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The metric names of a Prometheus variable query: `label_values(<selector>, <label>)` reads
/// the selector's metric (the label is not one); `label_values(<label>)` none; anything else is
/// PromQL. (`query_result(...)`, `metrics(...)` are not used here.)
fn variable_metrics(query: &str) -> BTreeSet<String> {
    let Some(args) = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|r| r.strip_suffix(')'))
    else {
        return promql_metrics(query);
    };
    let chars: Vec<char> = args.chars().collect();
    let (mut i, mut last_comma) = (0, None);
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(&chars, i),
            '{' => i = skip_group(&chars, i, '}'),
            '(' => i = skip_group(&chars, i, ')'),
            ',' => {
                last_comma = Some(i);
                i += 1
            }
            _ => i += 1,
        }
    }
    match last_comma {
        Some(at) => promql_metrics(&chars[..at].iter().collect::<String>()),
        None => BTreeSet::new(),
    }
}

#[test]
fn the_promql_tokenizer_finds_metric_names_and_nothing_else() {
    let names = |e: &str| promql_metrics(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"histogram_quantile(0.95, sum by (le, route) (rate(budgetd_http_request_duration_seconds_bucket{job=~"$job", status=~"5.."}[$__rate_interval])))"#
        ),
        ["budgetd_http_request_duration_seconds_bucket"]
    );
    assert_eq!(
        names(
            r#"sum by (namespace, label_tenant) (a_total{c!="", d="}{"} - a_total offset 300s >= 0 or increase(b[299999ms])) * on (namespace) group_left(label_tenant) topk by (namespace) (1, group by (namespace, label_tenant) (last_over_time(kube_namespace_labels[5m])))"#
        ),
        ["a_total", "b", "kube_namespace_labels"]
    );
    assert_eq!(
        names(
            r#"label_replace(count_over_time(up{job=~"x"}[1m]), "probe", "samples", "", "") or max(x:recorded:rate5m) > bool 1e3"#
        ),
        ["up", "x:recorded:rate5m"]
    );
    assert_eq!(
        variable_metrics(r#"label_values(budgetd_leader{job=~"$job"}, instance)"#),
        BTreeSet::from(["budgetd_leader".to_owned()])
    );
    assert!(variable_metrics("label_values(job)").is_empty());
}

/// Metrics that appear on `/metrics` only after an event this test does not cause (the
/// exporter renders a counter once it was first incremented). Each must be written in the
/// source of budgetd's crates as a literal metric name (`metrics::counter!("<name>", ...)`).
/// Everything else a dashboard reads must be on `/metrics` of the daemon this test runs.
const EVENT_ONLY: &[(&str, &str)] = &[
    (
        "budgetd_db_unreachable",
        "the database unreachable once (the gauge is first set when it goes down)",
    ),
    (
        "budgetd_prometheus_errors_total",
        "a failed Prometheus request",
    ),
    (
        "budgetd_collector_failures_total",
        "a collection run that failed",
    ),
    (
        "budgetd_collector_windows_lost_total",
        "windows older than Prometheus' retention",
    ),
    (
        "budgetd_alertmanager_requests_total",
        "an alert to send (the test's tenant has no spend)",
    ),
    ("budgetd_alerts_sent_total", "an alert to send"),
    ("budgetd_enforcement_actions_total", "an enforcement action"),
    (
        "budgetd_enforcement_failures_total",
        "a failed enforcement cycle",
    ),
    (
        "budgetd_enforcement_corrupt_actions_total",
        "an action whose recorded changes cannot be read",
    ),
    (
        "budgetd_reconciler_events_failed_total",
        "an outbox event a reconciler failed to handle",
    ),
];

/// A histogram's series name without its `_bucket`, `_sum` or `_count` suffix.
fn family(name: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .unwrap_or(name)
}

/// Whether `name` is written as a string literal in the source of the daemon's crates.
fn in_source(name: &str) -> bool {
    fn walk(dir: &Path, needle: &str) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, needle)
            } else {
                path.extension().is_some_and(|e| e == "rs")
                    && std::fs::read_to_string(&path).unwrap().contains(needle)
            }
        })
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let needle = format!("\"{name}\"");
    [
        "src",
        "ledger/src",
        "collector/src",
        "enforcer/src",
        "lifecycle/src",
        "relay/src",
    ]
    .iter()
    .any(|dir| walk(&root.join(dir), &needle))
}

/// The series names on a `/metrics` page.
fn exported_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The metric names the default meters and the completeness probe read: the queries one batch
/// of the example configuration's collector sends (`Collector::queries`; `store` is not used).
fn meter_metrics(store: Store) -> BTreeSet<String> {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml");
    let env: BTreeMap<&str, String> = [
        ("BUDGETD_PROMETHEUS_URL", "http://127.0.0.1:9".to_owned()),
        (
            "BUDGETD_DATABASE_URL",
            "postgres://nobody@127.0.0.1:9/none".to_owned(),
        ),
    ]
    .into();
    let config = budgetd::config::Config::load(Some(&example), |k| env.get(k).cloned()).unwrap();
    let settings = config.collector.expect("the example collects");
    let collector = settings.build(store).unwrap();
    collector
        .queries()
        .iter()
        .flat_map(|(_, q)| promql_metrics(q))
        .collect()
}

const ADMIN: &str = "dashboards-admin-token-0123456789abcdef";

/// `budgetd run` with the example configuration: collecting one-minute windows from the test
/// stack's (empty) Prometheus since a few minutes ago, enforcing every second against its
/// Alertmanager, provisioning into the fake Kubernetes API; one-second leader checks.
fn start_daemon(dir: &Path, db: &TestDb, kube_url: &str) -> Daemon {
    let mut text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml"),
    )
    .unwrap();
    for (from, to) in [
        ("window_seconds = 300", "window_seconds = 60"),
        ("settle_seconds = 120", "settle_seconds = 75"),
        ("provision = false", "provision = true"),
        (
            "api_url = \"http://127.0.0.1:8001\"",
            &format!("api_url = {kube_url:?}"),
        ),
        ("interval_seconds = 60", "interval_seconds = 1"),
        ("retry_seconds = 5", "retry_seconds = 1"),
        ("check_seconds = 5", "check_seconds = 1"),
    ] {
        assert!(text.contains(from), "the example has no {from:?}");
        text = text.replacen(from, to, 1);
    }
    let config = dir.join("budgetd.toml");
    std::fs::write(&config, text).unwrap();
    let (start, _) = testkit::clock::recent_window(Utc::now() - chrono::Duration::minutes(5), 60);
    let prometheus = std::env::var("BUDGETD_TEST_PROMETHEUS_URL")
        .expect("BUDGETD_TEST_PROMETHEUS_URL: run the tests with scripts/test.sh");
    let alertmanager = std::env::var("BUDGETD_TEST_ALERTMANAGER_URL")
        .expect("BUDGETD_TEST_ALERTMANAGER_URL: run the tests with scripts/test.sh");
    Daemon::run(
        dir,
        &config,
        &[
            ("BUDGETD_DATABASE_URL", &db.url),
            ("BUDGETD_MIGRATE_DATABASE_URL", &db.url),
            ("BUDGETD_PROMETHEUS_URL", &prometheus),
            ("BUDGETD_ALERTMANAGER_URL", &alertmanager),
            ("BUDGETD_COLLECTOR_START", &start.to_rfc3339()),
            ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN),
        ],
    )
}

/// A Prometheus expression as Grafana sends it, with the dashboard's variables given values.
fn grafana_promql(expr: &str) -> String {
    let out = expr
        .replace("$__rate_interval", "1m")
        .replace("$job", ".+")
        .replace("$instance", ".+");
    assert!(!out.contains('$'), "a variable left: {out}");
    out
}

#[tokio::test]
async fn every_metric_a_dashboard_reads_is_exported_by_budgetd_or_read_by_the_default_meters() {
    let json = dashboard("budgetd-health.json");
    let all = queries("budgetd-health.json", &json);
    let mut read = BTreeMap::<String, String>::new();
    let client = reqwest::Client::new();
    let prometheus = std::env::var("BUDGETD_TEST_PROMETHEUS_URL")
        .expect("BUDGETD_TEST_PROMETHEUS_URL: run the tests with scripts/test.sh");
    for q in &all {
        assert_eq!(q.language, Language::PromQl, "{}", q.place);
        let metrics = if q.format == "variable" {
            variable_metrics(&q.text)
        } else {
            // A real Prometheus parses it (an instant query; its data do not matter).
            let answer: Value = client
                .post(format!("{prometheus}/api/v1/query"))
                .form(&[("query", grafana_promql(&q.text))])
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["status"], "success", "{}: {answer}", q.place);
            promql_metrics(&q.text)
        };
        assert!(!metrics.is_empty(), "{}: no metric", q.place);
        for m in metrics {
            read.entry(m).or_insert_with(|| q.place.clone());
        }
    }
    assert!(read.len() >= 30, "{} metrics", read.len());

    let db = fresh_database().await;
    let meters = meter_metrics(db.store.clone());
    for m in [
        "container_cpu_usage_seconds_total",
        "kube_pod_container_resource_requests",
        "kube_namespace_labels",
        "up",
    ] {
        assert!(meters.contains(m), "{m} not in {meters:?}");
    }
    let budgetd: BTreeMap<&String, &String> = read
        .iter()
        .filter(|(m, place)| {
            if meters.contains(*m) {
                return false;
            }
            assert!(
                m.starts_with("budgetd_"),
                "{place}: {m} is neither budgetd's nor read by the default meters"
            );
            true
        })
        .collect();
    for (m, why) in EVENT_ONLY {
        assert!(
            budgetd.contains_key(&m.to_string()),
            "EVENT_ONLY lists {m}, which no dashboard reads"
        );
        assert!(in_source(m), "{m} ({why}) is not in budgetd's source");
    }

    // A daemon that leads, collects, enforces, provisions a tenant and answers API requests.
    let kube = testkit::fake_kube::FakeKube::start().await;
    let dir = std::env::temp_dir().join(format!(
        "budgetd-dashboards-{}-{}",
        std::process::id(),
        db.name
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = start_daemon(&dir, &db, &kube.url());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut created = false;
    let missing = loop {
        if !created {
            if let Ok(reply) = client
                .post(format!("{}/api/v1/tenants", daemon.api))
                .bearer_auth(ADMIN)
                .json(&crate::support::tenant_body("acme"))
                .timeout(Duration::from_secs(10))
                .send()
                .await
            {
                assert_eq!(reply.status(), reqwest::StatusCode::CREATED);
                created = true;
            }
        }
        let page = match client
            .get(format!("{}/metrics", daemon.api))
            .timeout(Duration::from_secs(10))
            .send()
            .await
        {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let exported = exported_names(&page);
        let missing: Vec<&String> = budgetd
            .keys()
            .copied()
            .filter(|m| !exported.contains(*m))
            .filter(|m| !EVENT_ONLY.iter().any(|(e, _)| e == m))
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        missing.is_empty(),
        "not on /metrics after 120 s: {missing:?}\n(read by {:?})\nthe daemon's log:\n{}",
        missing.iter().map(|m| budgetd[m]).collect::<Vec<_>>(),
        daemon.log_text()
    );
    eprintln!(
        "{} of budgetd's metrics the dashboards read were on /metrics after {:?}",
        budgetd.len() - EVENT_ONLY.len(),
        started.elapsed()
    );
    for m in budgetd.keys() {
        assert!(in_source(family(m)), "{m} is not in budgetd's source");
    }
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
