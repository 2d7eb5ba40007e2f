//! The OpenAPI document at `/api/v1/openapi.json`: served without a token, it documents every
//! route the router serves and nothing else, each operation with its roles (checked against
//! the RBAC matrix) and the error responses it can answer.

use std::collections::{BTreeMap, BTreeSet};

use axum::http::{Method, StatusCode};
use serde_json::Value;

use crate::api_rbac;
use crate::support::*;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

/// The document as the router serves it, to a caller without a token.
async fn served_document(app: &TestApp) -> Value {
    let reply = app
        .call(Method::GET, "/api/v1/openapi.json", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert!(reply.body.is_object(), "not JSON: {:?}", reply.body);
    reply.body
}

/// (METHOD, path template) → operation.
fn operations(doc: &Value) -> BTreeMap<(String, String), &Value> {
    let mut ops = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("a path item") {
            if METHODS.contains(&method.as_str()) {
                ops.insert((method.to_uppercase(), path.clone()), op);
            }
        }
    }
    ops
}

fn roles(op: &Value) -> Vec<&str> {
    op["x-budgetd-roles"]
        .as_array()
        .unwrap_or_else(|| panic!("no x-budgetd-roles: {op}"))
        .iter()
        .map(|r| r.as_str().expect("a role name"))
        .collect()
}

/// A concrete path for a template: `{id}` is a tenant that exists, or an action or version id.
fn concrete(template: &str) -> String {
    let numeric = template.starts_with("/api/v1/enforcement/") || template.contains("/versions/");
    template.replace("{id}", if numeric { "1" } else { OWN_TENANT })
}

#[tokio::test]
async fn every_served_route_is_documented_and_every_documented_route_is_served() {
    let app = app().await;
    seed_tenants(&app, &[OWN_TENANT]).await;
    let doc = served_document(&app).await;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1.")),
        "not OpenAPI 3.1: {}",
        doc["openapi"]
    );
    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops.keys().cloned().collect();
    let served = declared_routes();
    assert!(served.len() >= 30, "parsed too few routes: {served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty() && unserved.is_empty(),
        "served but not documented: {undocumented:?}; documented but not served: {unserved:?}"
    );

    // The running router agrees: every documented operation reaches its handler (a secured one
    // answers 401 without a token, as its `security` says; a public one answers), and every
    // other method on a documented path is the router's 405.
    let paths: BTreeSet<&String> = ops.keys().map(|(_, p)| p).collect();
    for path in paths {
        for method in METHODS {
            let key = (method.to_uppercase(), path.clone());
            let uri = concrete(path);
            let method = Method::from_bytes(key.0.as_bytes()).unwrap();
            let reply = app.call(method, &uri, None, None).await;
            match ops.get(&key) {
                None => assert_eq!(
                    reply.status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{} {uri} is not documented but answers {:?}",
                    key.0,
                    reply.body
                ),
                Some(op) if op["security"].is_array() => assert_eq!(
                    reply.status,
                    StatusCode::UNAUTHORIZED,
                    "{} {uri} without a token: {:?}",
                    key.0,
                    reply.body
                ),
                Some(_) => assert!(
                    reply.status.is_success(),
                    "{} {uri} is documented as public but answers {} {:?}",
                    key.0,
                    reply.status,
                    reply.body
                ),
            }
        }
    }
}

#[tokio::test]
async fn every_operation_states_its_roles_and_error_responses() {
    let app = app().await;
    let doc = served_document(&app).await;
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(
        schemas["ErrorBody"]["properties"]["error"].is_object(),
        "ErrorBody: {}",
        schemas["ErrorBody"]
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    let error_ref = "#/components/schemas/ErrorBody";
    for ((method, path), op) in operations(&doc) {
        let at = format!("{method} {path}");
        let roles = roles(op);
        for role in &roles {
            assert!(ROLES.contains(role), "{at}: unknown role {role:?}");
        }
        assert!(
            op["description"]
                .as_str()
                .is_some_and(|d| d.contains("**Roles:**")),
            "{at}: the description does not name the roles"
        );
        let responses = op["responses"].as_object().expect("responses");
        let has = |status: &str| responses.contains_key(status);
        assert!(
            responses.keys().any(|s| s.starts_with('2')),
            "{at}: no success response"
        );
        for status in ["500", "503"] {
            assert!(has(status), "{at}: no {status}");
        }
        if roles.is_empty() {
            assert!(op.get("security").is_none(), "{at}: public but secured");
        } else {
            assert_eq!(op["security"], serde_json::json!([{"bearer": []}]), "{at}");
            assert!(has("401"), "{at}: no 401");
            if roles.len() < ROLES.len() {
                assert!(has("403"), "{at}: not every role may call it, but no 403");
            }
        }
        if op.get("requestBody").is_some() {
            for status in ["400", "408", "413", "415"] {
                assert!(has(status), "{at}: takes a body but documents no {status}");
            }
        }
        if path.contains('{') {
            assert!(has("404"), "{at}: names a resource but documents no 404");
        }
        // Every error answers the API's error body; only /readyz's 503 is its own.
        for (status, response) in responses {
            if status.starts_with('2') || (path == "/readyz" && status == "503") {
                continue;
            }
            assert_eq!(
                response["content"]["application/json"]["schema"]["$ref"], error_ref,
                "{at} {status}: not the error body"
            );
        }
    }
}

/// What the RBAC matrix observes is what the document says: a role that gets 403 is not in
/// the operation's `x-budgetd-roles`, a role that succeeds is; the callers without a valid
/// token get 401 exactly where the operation is secured.
#[tokio::test]
async fn the_documented_roles_are_those_the_rbac_matrix_observes() {
    let app = app().await;
    let doc = served_document(&app).await;
    let ops = operations(&doc);
    let matches = |template: &str, path: &str| {
        let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
        t.len() == p.len()
            && t.iter()
                .zip(&p)
                .all(|(t, p)| t == p || (t.starts_with('{') && !p.is_empty()))
    };
    let mut checked = BTreeSet::new();
    let mut failures = Vec::new();
    for case in api_rbac::cases() {
        let path = case.path.split('?').next().unwrap().replace("{t}", "x");
        let method = case.method.as_str().to_owned();
        let Some(((_, template), op)) = ops
            .iter()
            .find(|((m, t), _)| *m == method && matches(t, &path))
        else {
            failures.push(format!("{method} {}: not documented", case.path));
            continue;
        };
        checked.insert((method.clone(), template.clone()));
        let roles = roles(op);
        if roles.is_empty() {
            // Public: nobody is refused.
            if case.expect.iter().any(|s| *s == 401 || *s == 403) {
                failures.push(format!(
                    "{method} {template}: public, but {:?}",
                    case.expect
                ));
            }
            continue;
        }
        for (i, role) in ROLES.iter().enumerate() {
            let status = case.expect[i];
            if status == 403 && roles.contains(role) {
                failures.push(format!(
                    "{method} {template}: {role} gets 403, documented as allowed"
                ));
            }
            if (200..300).contains(&status) && !roles.contains(role) {
                failures.push(format!(
                    "{method} {template}: {role} gets {status}, not documented"
                ));
            }
        }
        let secured = op["security"].is_array();
        for status in &case.expect[ROLES.len()..] {
            if (*status == 401) != secured {
                failures.push(format!(
                    "{method} {template}: {status} without a valid token, secured: {secured}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked.len() >= 25, "the matrix covered only {checked:?}");
}
