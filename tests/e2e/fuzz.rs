//! Request fuzzing through the real router, in process, over a real database.
//!
//! Every route (the table below; a test checks it against `src/api/mod.rs`) is called with
//! generated requests: the route's valid body with fields replaced, removed or added, whole
//! bodies of arbitrary JSON or bytes, query strings of known and unknown keys with hostile
//! values, hostile path segments, other methods, content types and credentials, as every role.
//!
//! Two properties hold for every case:
//! - no answer is a 5xx;
//! - a request that is refused (4xx) or only reads (GET) leaves every table as it was.
//!
//! The cases come from a fixed seed, so a run is reproducible and a failure shrinks to a
//! small request. `BUDGETD_FUZZ_CASES` (default 1000) and `BUDGETD_FUZZ_SEED` (a number)
//! explore further.

use std::collections::BTreeSet;

use axum::body::Body;
use axum::http::{Method, Request};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::support::*;

const DEFAULT_CASES: u32 = 1000;

/// A route as the router declares it: method, path template, query keys, valid body.
struct Route {
    method: Method,
    path: &'static str,
    query: &'static [&'static str],
    body: Option<fn(usize) -> Value>,
}

const fn get(path: &'static str, query: &'static [&'static str]) -> Route {
    Route {
        method: Method::GET,
        path,
        query,
        body: None,
    }
}

const fn with_body(method: Method, path: &'static str, body: fn(usize) -> Value) -> Route {
    Route {
        method,
        path,
        query: &[],
        body: Some(body),
    }
}

fn routes() -> Vec<Route> {
    vec![
        get("/api/v1/tenants", &["state"]),
        with_body(Method::POST, "/api/v1/tenants", |n| {
            tenant_body(&format!("fuzz-{}", n % 100))
        }),
        get("/api/v1/tenants/{id}", &[]),
        with_body(Method::PATCH, "/api/v1/tenants/{id}", |_| {
            json!({"display_name": "Renamed", "owner": "new@example.com",
                   "labels": {"team": "core"}, "owner_group": null,
                   "quota_profile": "standard"})
        }),
        with_body(
            Method::POST,
            "/api/v1/tenants/{id}/suspend",
            |_| json!({"reason": "incident 4711"}),
        ),
        with_body(
            Method::POST,
            "/api/v1/tenants/{id}/resume",
            |_| json!({"reason": "incident 4711"}),
        ),
        with_body(
            Method::POST,
            "/api/v1/tenants/{id}/isolate",
            |_| json!({"reason": "incident 4711"}),
        ),
        with_body(
            Method::POST,
            "/api/v1/tenants/{id}/release",
            |_| json!({"reason": "incident 4711"}),
        ),
        with_body(
            Method::DELETE,
            "/api/v1/tenants/{id}",
            |_| json!({"reason": "the contract ended"}),
        ),
        get("/api/v1/tenants/{id}/offboarding", &[]),
        get("/api/v1/tenants/{id}/final-report", &["format"]),
        get("/api/v1/tenants/{id}/budget", &[]),
        with_body(Method::PUT, "/api/v1/tenants/{id}/budget", |_| {
            json!({"amount": "250.00", "currency": "EUR", "period": "monthly",
                   "thresholds": [50, 80, 100], "effective_from": "2026-11-01T00:00:00Z"})
        }),
        get("/api/v1/tenants/{id}/budget/status", &[]),
        get("/api/v1/tenants/{id}/costs", &["from", "to"]),
        get("/api/v1/tenants/{id}/exemption", &[]),
        with_body(Method::PUT, "/api/v1/tenants/{id}/exemption", |_| {
            let until = chrono::Utc::now() + chrono::Duration::days(7);
            json!({"until": until.to_rfc3339(), "reason": "incident 4711"})
        }),
        get("/api/v1/tenant-requests", &["state"]),
        with_body(Method::POST, "/api/v1/tenant-requests", |n| {
            request_body(&format!("fuzzreq-{}", n % 100))
        }),
        get("/api/v1/tenant-requests/{id}", &[]),
        with_body(
            Method::POST,
            "/api/v1/tenant-requests/{id}/approve",
            |_| json!({"reason": "the platform board agreed"}),
        ),
        with_body(
            Method::POST,
            "/api/v1/tenant-requests/{id}/reject",
            |_| json!({"reason": "use the shared tenant"}),
        ),
        get(
            "/api/v1/enforcement/actions",
            &["state", "tenant", "before", "limit"],
        ),
        get("/api/v1/enforcement/actions/{id}", &[]),
        with_body(
            Method::POST,
            "/api/v1/enforcement/actions/{id}/approve",
            |_| json!({"reason": "approved by the on-call"}),
        ),
        with_body(
            Method::POST,
            "/api/v1/enforcement/actions/{id}/reject",
            |_| json!({"reason": "customer paid"}),
        ),
        get("/api/v1/price-book", &[]),
        with_body(Method::POST, "/api/v1/price-book/versions", |n| {
            let from = chrono::NaiveDate::from_ymd_opt(2027, 1, 1).expect("a date")
                + chrono::Days::new((n % 1000) as u64);
            let mut body = json!({"valid_from": format!("{from}T00:00:00Z"), "currency": "EUR",
                                  "rates": {"cpu": "0.031", "memory": "0.004"}});
            if n % 3 == 0 {
                body["replaces"] = json!(n % 5);
            }
            body
        }),
        Route {
            method: Method::DELETE,
            path: "/api/v1/price-book/versions/{id}",
            query: &[],
            body: None,
        },
        get(
            "/api/v1/collector/pricing-errors",
            &["tenant", "state", "limit"],
        ),
        get("/api/v1/tokens", &[]),
        with_body(Method::POST, "/api/v1/tokens", |n| {
            json!({"name": format!("fuzz-{}", n % 50), "role": "viewer",
                   "expires_at": "2099-01-01T00:00:00Z"})
        }),
        Route {
            method: Method::DELETE,
            path: "/api/v1/tokens/{id}",
            query: &[],
            body: None,
        },
        get("/api/v1/reports/governance", &["format"]),
        get("/api/v1/reports/access-review", &["from", "to"]),
        get(
            "/api/v1/audit",
            &["tenant", "actor", "action", "from", "to", "cursor", "limit"],
        ),
        get("/healthz", &[]),
        get("/readyz", &[]),
        get("/metrics", &[]),
        get("/api/v1/openapi.json", &[]),
    ]
}

/// Strings that have broken parsers, stores, logs and spreadsheets before, and values that are
/// almost right for some field.
const HOSTILE: &[&str] = &[
    "",
    " ",
    "\0",
    "a\0b",
    "\u{7}bell",
    "\u{1b}[31mred",
    "line\r\nInjected: yes",
    "\u{202e}txt.exe",
    "\u{2028}",
    "\u{feff}",
    "=HYPERLINK(\"http://x\")",
    "+1",
    "-1",
    "@SUM(A1)",
    "0",
    "-0",
    "0.000",
    "1e400",
    "79228162514264337593543950335",
    "-79228162514264337593543950335",
    "0.0000000000000000000000000001",
    "NaN",
    "Infinity",
    "2026-1-1",
    "2026-02-30",
    "2026-11-01",
    "2026-11-01T00:00:00Z",
    "2026-11-01T00:00:00+14:00",
    "-5000-01-01T00:00:00Z",
    "+275760-09-13T00:00:00Z",
    "10000-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59Z",
    "EUR",
    "USD",
    "eur",
    "monthly",
    "weekly",
    "pending",
    "approved",
    "cpu",
    "memory",
    "acme",
    "ACME",
    "é",
    "🙂",
    "%00",
    "../",
    "' or 1=1 --",
    "{}",
    "null",
];

fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(HOSTILE).prop_map(str::to_owned),
        2 => any::<String>(),
        1 => "[a-z0-9-]{0,70}",
        1 => (1usize..3000).prop_map(|n| "x".repeat(n)),
        2 => date_like(),
        2 => decimal_like(),
    ]
}

/// Dates and instants of any year, in the formats people and programs write.
fn date_like() -> impl Strategy<Value = String> {
    let year = prop_oneof![-300_000i64..300_000, 1960i64..2100];
    (year, 0u32..14, 0u32..33, 0usize..4).prop_map(|(y, m, d, form)| match form {
        0 => format!("{y:04}-{m:02}-{d:02}T00:00:00Z"),
        1 => format!("{y:+05}-{m:02}-{d:02}T12:30:00+02:00"),
        2 => format!("{y:04}-{m:02}-{d:02}"),
        _ => format!("{y}-{m}-{d}"),
    })
}

/// Decimal strings of any size and scale.
fn decimal_like() -> impl Strategy<Value = String> {
    (any::<i128>(), 0usize..40, any::<bool>()).prop_map(|(m, scale, exp)| {
        if exp {
            format!("{m}e{scale}")
        } else {
            format!("0.{}{}", "0".repeat(scale), m.unsigned_abs())
        }
    })
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        prop_oneof![Just(u64::MAX), Just(0u64)].prop_map(Value::from),
        prop_oneof![Just(1e308), Just(-0.0), Just(0.5)].prop_map(Value::from),
        hostile().prop_map(Value::String),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(hostile(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Clone, Debug)]
enum Edit {
    Set(Value),
    Remove,
    AddSibling(String, Value),
}

#[derive(Clone, Debug)]
enum BodyPlan {
    Valid,
    Edited(Vec<(usize, Edit)>),
    Whole(Value),
    Bytes(Vec<u8>),
    Truncated(usize),
    Absent,
}

fn body_plan() -> impl Strategy<Value = BodyPlan> {
    let edit = prop_oneof![
        5 => hostile().prop_map(|v| Edit::Set(Value::String(v))),
        2 => json_value().prop_map(Edit::Set),
        1 => Just(Edit::Remove),
        1 => (hostile(), json_value()).prop_map(|(k, v)| Edit::AddSibling(k, v)),
    ];
    prop_oneof![
        2 => Just(BodyPlan::Valid),
        6 => (any::<usize>(), edit.clone()).prop_map(|e| BodyPlan::Edited(vec![e])),
        2 => prop::collection::vec((any::<usize>(), edit), 2..4).prop_map(BodyPlan::Edited),
        2 => json_value().prop_map(BodyPlan::Whole),
        1 => prop::collection::vec(any::<u8>(), 0..64).prop_map(BodyPlan::Bytes),
        1 => any::<usize>().prop_map(BodyPlan::Truncated),
        1 => Just(BodyPlan::Absent),
    ]
}

#[derive(Clone, Debug)]
enum QueryPlan {
    None,
    Pairs(Vec<(Option<usize>, String, String)>),
    Raw(&'static str),
}

fn query_plan() -> impl Strategy<Value = QueryPlan> {
    let pair = (
        prop::option::weighted(0.8, any::<usize>()),
        hostile(),
        hostile(),
    );
    prop_oneof![
        2 => Just(QueryPlan::None),
        6 => prop::collection::vec(pair, 1..4).prop_map(QueryPlan::Pairs),
        1 => prop::sample::select(&[
            "%", "%zz", "from=%00", "from=2026-11-01&from=2026-12-01", "=x", "&&", "a",
            "limit=1&limit=2", "state=%E2%80%AE", "before=%FF",
        ][..]).prop_map(QueryPlan::Raw),
    ]
}

const TENANT_IDS: &[&str] = &[
    "acme", "acme", "globex", "initech", "umbrella", "pending", "fuzzco", "nope", "ACME", "a%20b",
    "%00", "acme%0A", "..", "%2F", "-x", "x-", "ab", "a--b",
];
const VERSION_IDS: &[&str] = &[
    "1",
    "2",
    "3",
    "4",
    "0",
    "-1",
    "99999999999999999999",
    "x",
    "1.0",
];
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD", "FUZZ",
];
const CONTENT_TYPES: &[Option<&str>] = &[
    Some("text/plain"),
    Some("application/json-patch+json"),
    Some("application/jsonx"),
    Some("application/x-www-form-urlencoded"),
    Some("application/json; charset=latin1"),
    None,
];
const CREDENTIALS: &[&str] = &["none", "wrong", "basic", "empty-bearer", "lower-bearer"];

#[derive(Clone, Debug)]
struct Case {
    route: usize,
    /// None: the route's method; Some(i): `METHODS[i]`.
    method: Option<usize>,
    /// A tenant id or an action id for `{id}`.
    id: usize,
    query: QueryPlan,
    body: BodyPlan,
    /// Some(i): `CONTENT_TYPES[i]` instead of application/json.
    content_type: Option<usize>,
    /// A role of `ROLES`, or a credential mistake of `CREDENTIALS`.
    caller: Result<usize, usize>,
    request_id: Option<String>,
}

fn case(routes: usize) -> impl Strategy<Value = Case> {
    (
        0..routes,
        prop::option::weighted(0.08, 0..METHODS.len()),
        any::<usize>(),
        query_plan(),
        body_plan(),
        prop::option::weighted(0.08, 0..CONTENT_TYPES.len()),
        prop_oneof![
            8 => Just(Ok(0)),
            6 => (0..ROLES.len()).prop_map(Ok),
            1 => (0..CREDENTIALS.len()).prop_map(Err),
        ],
        prop::option::weighted(0.1, hostile()),
    )
        .prop_map(
            |(route, method, id, query, body, content_type, caller, request_id)| Case {
                route,
                method,
                id,
                query,
                body,
                content_type,
                caller,
                request_id,
            },
        )
}

/// Every JSON pointer into `value` below the root.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(v, p, out);
            }
        }
        _ => {}
    }
}

fn apply(mut body: Value, edits: &[(usize, Edit)]) -> Value {
    for (at, edit) in edits {
        let mut all = Vec::new();
        pointers(&body, String::new(), &mut all);
        let Some(pointer) = all.get(at % all.len().max(1)).cloned() else {
            continue;
        };
        let (parent, key) = pointer.rsplit_once('/').expect("pointers start with /");
        let key = key.replace("~1", "/").replace("~0", "~");
        match edit {
            Edit::Set(v) => *body.pointer_mut(&pointer).expect("a pointer of body") = v.clone(),
            Edit::Remove => match body.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&key);
                }
                Some(Value::Array(items)) => {
                    items.remove(key.parse::<usize>().expect("an index"));
                }
                _ => {}
            },
            Edit::AddSibling(k, v) => {
                if let Some(Value::Object(map)) = body.pointer_mut(parent) {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }
    body
}

struct Fixture {
    app: TestApp,
    action_ids: Vec<String>,
    _leader: ledger::store::LeaderLock,
}

/// The request `case` describes, and a line that says what it was.
fn request(fx: &Fixture, routes: &[Route], case: &Case) -> (Request<Body>, String) {
    let route = &routes[case.route];
    let id = if route.path.starts_with("/api/v1/enforcement/actions/") {
        fx.action_ids[case.id % fx.action_ids.len()].clone()
    } else if route.path.starts_with("/api/v1/price-book/versions/")
        || route.path.starts_with("/api/v1/tokens/")
    {
        VERSION_IDS[case.id % VERSION_IDS.len()].to_owned()
    } else {
        TENANT_IDS[case.id % TENANT_IDS.len()].to_owned()
    };
    let mut uri = route.path.replace("{id}", &id);
    match &case.query {
        QueryPlan::None => {}
        QueryPlan::Raw(raw) => uri = format!("{uri}?{raw}"),
        QueryPlan::Pairs(pairs) => {
            let mut query = url::form_urlencoded::Serializer::new(String::new());
            for (known, key, value) in pairs {
                let key = match known {
                    Some(i) if !route.query.is_empty() => route.query[i % route.query.len()],
                    _ => key.as_str(),
                };
                query.append_pair(key, value);
            }
            uri = format!("{uri}?{}", query.finish());
        }
    }
    let method = match case.method {
        None => route.method.clone(),
        Some(i) => Method::from_bytes(METHODS[i].as_bytes()).expect("a method"),
    };
    let body: Option<Vec<u8>> = match (route.body, &case.body) {
        (_, BodyPlan::Absent) => None,
        (None, BodyPlan::Valid) => None,
        (Some(valid), BodyPlan::Valid) => Some(valid(case.id).to_string().into_bytes()),
        (valid, BodyPlan::Edited(edits)) => {
            let base = valid.map_or_else(|| json!({}), |v| v(case.id));
            Some(apply(base, edits).to_string().into_bytes())
        }
        (_, BodyPlan::Whole(v)) => Some(v.to_string().into_bytes()),
        (_, BodyPlan::Bytes(b)) => Some(b.clone()),
        (valid, BodyPlan::Truncated(at)) => {
            let full = valid.map_or_else(|| json!({}), |v| v(case.id)).to_string();
            let cut = at % full.len().max(1);
            Some(full.as_bytes()[..cut].to_vec())
        }
    };
    let mut req = Request::builder().method(method.clone()).uri(&uri);
    match case.caller {
        Ok(role) => req = req.header("authorization", format!("Bearer {}", token(ROLES[role]))),
        Err(mistake) => match CREDENTIALS[mistake] {
            "none" => {}
            "wrong" => req = req.header("authorization", "Bearer not-a-token-0123456789"),
            "basic" => req = req.header("authorization", "Basic YWRtaW46YWRtaW4="),
            "empty-bearer" => req = req.header("authorization", "Bearer "),
            "lower-bearer" => {
                req = req.header("authorization", format!("bearer {}", token("admin")))
            }
            other => unreachable!("credential {other}"),
        },
    }
    if let Some(rid) = &case.request_id {
        if let Ok(value) = axum::http::HeaderValue::from_str(rid) {
            req = req.header("x-request-id", value);
        }
    }
    let content_type = match case.content_type {
        None => Some("application/json"),
        Some(i) => CONTENT_TYPES[i],
    };
    let shown_body = body
        .as_deref()
        .map(|b| String::from_utf8_lossy(&b[..b.len().min(600)]).into_owned());
    let req = match body {
        Some(bytes) => {
            if let Some(ct) = content_type {
                req = req.header("content-type", ct);
            }
            req.body(Body::from(bytes)).expect("a request")
        }
        None => req.body(Body::empty()).expect("a request"),
    };
    let shown = format!(
        "{method} {uri} as {:?}, content type {content_type:?}, body {shown_body:?}",
        case.caller.map(|r| ROLES[r]).map_err(|m| CREDENTIALS[m])
    );
    (req, shown)
}

async fn fixture() -> Fixture {
    let db = testkit::db::fresh_database().await;
    let router = router_pricing(
        db.store.clone(),
        &[("cpu", "core_hour"), ("memory", "gib_hour")],
    );
    let app = TestApp { router, db };
    seed_tenants(&app, &["acme", "globex", "initech", "umbrella"]).await;
    // A request to approve or reject, made by someone other than the deciders.
    seed_requests(&app, "viewer", &["pending"]).await;
    let admin = token("admin");
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/price-book/versions",
            json!({"valid_from": "2026-01-01T00:00:00Z", "currency": "EUR",
                   "rates": {"cpu": "0.031", "memory": "0.004"}}),
        ),
        (
            Method::PUT,
            "/api/v1/tenants/acme/budget",
            json!({"amount": "100", "currency": "EUR", "effective_from": "2026-01-01T00:00:00Z"}),
        ),
    ] {
        let reply = app.call(method, path, Some(&admin), Some(body)).await;
        assert!(reply.status.is_success(), "{path}: {:?}", reply.body);
    }
    let lock = ledger::store::LeaderLock::try_acquire(
        &app.db.url,
        "fuzz",
        15,
        std::time::Duration::from_secs(10),
    )
    .await
    .expect("the leader lock")
    .expect("nobody else leads");
    let mut action_ids = Vec::new();
    for (tenant, step) in [
        ("acme", "actual:120:suspend"),
        ("globex", "actual:100:quota"),
    ] {
        let action = open_action(
            &app.db.store,
            lock.fence(),
            tenant,
            step,
            ledger::enforcement::ActionState::Pending,
        )
        .await;
        action_ids.push(action.id.to_string());
    }
    action_ids
        .extend(["0", "-1", "18446744073709551616", "abc", "1e3", "%00", "01"].map(str::to_owned));
    Fixture {
        app,
        action_ids,
        _leader: lock,
    }
}

fn runner(cases: u32) -> TestRunner {
    let seed: u64 = std::env::var("BUDGETD_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("BUDGETD_FUZZ_SEED is a number"))
        .unwrap_or(20_261_201);
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 512,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &bytes),
    )
}

#[test]
fn no_request_answers_5xx_and_a_refused_one_changes_nothing() {
    let cases: u32 = std::env::var("BUDGETD_FUZZ_CASES")
        .ok()
        .map(|s| s.parse().expect("BUDGETD_FUZZ_CASES is a number"))
        .unwrap_or(DEFAULT_CASES);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let fx = rt.block_on(fixture());
    let routes = routes();
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u32>::new());
    let result = runner(cases).run(&case(routes.len()), |case| {
        let (req, shown) = request(&fx, &routes, &case);
        let method = req.method().clone();
        rt.block_on(async {
            let before = fx.app.snapshot().await;
            let response = fx
                .app
                .router
                .clone()
                .oneshot(req)
                .await
                .expect("infallible");
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .expect("a body")
                .to_bytes();
            let error: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let body = String::from_utf8_lossy(&body[..body.len().min(400)]).into_owned();
            prop_assert!(
                !status.is_server_error(),
                "{shown}\nanswered {status}: {body}"
            );
            if status.is_client_error() || method == Method::GET || method == Method::HEAD {
                prop_assert_eq!(
                    fx.app.snapshot().await,
                    before,
                    "{} answered {}: {} but changed the tables",
                    shown,
                    status,
                    body
                );
            }
            // (HEAD answers carry no body, by HTTP.)
            if status.is_client_error() && method != Method::HEAD && shown.contains(" /api/") {
                prop_assert!(
                    error["error"]["message"]
                        .as_str()
                        .is_some_and(|m| !m.is_empty()),
                    "{shown}\nanswered {status} without an error message: {body}"
                );
            }
            *statuses.borrow_mut().entry(status.as_u16()).or_default() += 1;
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let statuses = statuses.into_inner();
    // The generator reaches past the door: most cases are refused, but some are accepted.
    let ok: u32 = statuses.range(200..300).map(|(_, n)| n).sum();
    let refused: u32 = statuses.range(400..500).map(|(_, n)| n).sum();
    println!("statuses over {cases} cases: {statuses:?}");
    assert!(ok * 20 >= cases, "too few accepted requests: {statuses:?}");
    assert!(
        refused * 2 >= cases,
        "too few refused requests: {statuses:?}"
    );
}

/// The fuzz table covers every route and method the router declares.
#[test]
fn the_fuzz_table_covers_every_route() {
    let declared = declared_routes();
    let fuzzed: BTreeSet<(String, String)> = routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_owned()))
        .collect();
    assert!(declared.len() >= 20, "parsed too few routes: {declared:?}");
    assert_eq!(fuzzed, declared);
}
