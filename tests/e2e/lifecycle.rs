//! The tenant lifecycle end to end: a real `budgetd run` (API, leader, enforcer, blueprint
//! reconciler) on a real Postgres, against the stateful fake Kubernetes API, which records
//! every call. One test walks a tenant from request to offboarded; the other kills the daemon
//! (SIGKILL) in the middle of provisioning and of offboarding and shows that a restart
//! finishes each exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use ledger::store::ChainStatus;
use ledger::tenant::TenantId;
use ledger::Store;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use testkit::alertmanager::AlertmanagerProcess;
use testkit::fake_kube::{FakeKube, Fault, Outcome, Resource, ResourceType};

use crate::support::spawn_daemon;

const ADMIN: &str = "lifecycle-admin-token-0123456789";
const OPERATOR: &str = "lifecycle-operator-token-0123456789";
const VIEWER: &str = "lifecycle-viewer-token-0123456789";
const ACME: &str = "lifecycle-acme-token-0123456789";

struct Daemon {
    child: Child,
    api: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The configuration: provisioning into `kube`, the enforcer every second, offboarding without
/// a grace period, a reconciler that polls every 100 ms.
fn write_config(dir: &Path, db_url: &str, kube: &str, am: &str) -> PathBuf {
    let sha = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    let config = dir.join("budgetd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[database]
url = "{db_url}"

[api]
listen = "127.0.0.1:0"

[[api.tokens]]
name = "ops-olivia"
role = "operator"
sha256 = "{}"

[[api.tokens]]
name = "viewer-vic"
role = "viewer"
sha256 = "{}"

[[api.tokens]]
name = "acme-ci"
role = "tenant"
tenant = "acme"
sha256 = "{}"

[kubernetes]
api_url = "{kube}"
timeout_ms = 2000
max_attempts = 2
initial_backoff_ms = 100
max_backoff_ms = 200

[alertmanager]
urls = ["{am}"]

[enforcement]
interval_seconds = 1

[lifecycle]
provision = true
offboarding_grace_days = 0

[lifecycle.reconciler]
poll_interval_ms = 100
backoff_base_ms = 200
backoff_cap_ms = 400
"#,
            sha(OPERATOR),
            sha(VIEWER),
            sha(ACME)
        ),
    )
    .unwrap();
    config
}

fn start(config: &Path, log: &Path) -> Daemon {
    let (child, api) = spawn_daemon(
        Command::new(env!("CARGO_BIN_EXE_budgetd"))
            .env("BUDGETD_CONFIG", config)
            .env("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN)
            .env("BUDGETD_LOG", "info")
            .env_remove("BUDGETD_DATABASE_URL")
            .env_remove("BUDGETD_MIGRATE_DATABASE_URL"),
        log,
    );
    Daemon { child, api }
}

/// Polls `check` every 50 ms until it is true; panics with `what` (and the daemon's log) after
/// `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, log: &Path, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        if started.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}; the daemon's log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(
    daemon: &Daemon,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("{}{path}", daemon.api))
        .bearer_auth(token)
        .timeout(Duration::from_secs(30));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn ready(daemon: &Daemon) -> bool {
    match reqwest::get(format!("{}/metrics", daemon.api)).await {
        Ok(r) => r
            .text()
            .await
            .unwrap_or_default()
            .contains("budgetd_leader 1"),
        Err(_) => false,
    }
}

fn ns(kube: &FakeKube, name: &str) -> Option<Value> {
    kube.object(Resource::Namespace, "", name)
}

fn typed(api_version: &str, plural: &str) -> ResourceType {
    ResourceType::new(api_version, plural)
}

fn rolebinding(kube: &FakeKube, namespace: &str) -> Option<Value> {
    kube.object(
        typed("rbac.authorization.k8s.io/v1", "rolebindings"),
        namespace,
        "budgetd-owners",
    )
}

fn policy(kube: &FakeKube, namespace: &str, name: &str) -> Option<Value> {
    kube.object(
        typed("networking.k8s.io/v1", "networkpolicies"),
        namespace,
        name,
    )
}

/// Per object path, how often the fake created it.
fn creates(kube: &FakeKube) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for r in kube.requests() {
        if r.outcome == Some(Outcome::Created) {
            *out.entry(r.path).or_insert(0) += 1;
        }
    }
    out
}

/// The objects the fake's log shows created while they existed (a duplicate create): each
/// object's creates and deletes must alternate, starting with a create.
fn created_twice(kube: &FakeKube) -> Vec<String> {
    let mut live = std::collections::BTreeSet::new();
    let mut twice = Vec::new();
    for r in kube.requests() {
        match r.outcome {
            Some(Outcome::Created) if !live.insert(r.path.clone()) => twice.push(r.path),
            Some(Outcome::Deleted) => {
                live.remove(&r.path);
            }
            _ => {}
        }
    }
    twice
}

fn request(id: &str) -> Value {
    json!({
        "id": id,
        "display_name": "Acme Corp",
        "owner": "jane.doe@example.com",
        "owner_group": "team-payments",
        "data_residency": "eu",
        "labels": {"cost-center": "cc-42"},
        "quota_profile": "small",
        "budget": {"amount": "1000", "currency": "EUR", "period": "monthly"},
        "justification": "the payments team's new service"
    })
}

async fn audit_actions(store: &Store, tenant: &str) -> Vec<String> {
    sqlx::query_scalar(
        "select action from audit_log where target_type = 'tenant' and target_id = $1 order by seq",
    )
    .bind(tenant)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_tenant_goes_from_request_to_offboarded_through_budgetd_run() {
    let db = testkit::db::fresh_database().await;
    let store = db.store.clone();
    let kube = FakeKube::start().await;
    let am = AlertmanagerProcess::start().await;
    let dir = tempdir("lifecycle-e2e");
    let log = dir.join("budgetd.log");
    let config = write_config(&dir, &db.url, &kube.url(), am.url().as_str());
    let daemon = start(&config, &log);
    wait_until(Duration::from_secs(60), "the daemon to lead", &log, || {
        ready(&daemon)
    })
    .await;

    // Request (a viewer may ask), approve (an operator).
    let (status, body) = call(
        &daemon,
        Method::POST,
        "/api/v1/tenant-requests",
        VIEWER,
        Some(request("acme")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        &daemon,
        Method::POST,
        "/api/v1/tenant-requests/acme/approve",
        OPERATOR,
        Some(json!({"reason": "budget approved by finance"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The blueprint reaches the cluster.
    wait_until(
        Duration::from_secs(30),
        "the blueprint in namespace acme",
        &log,
        || async { rolebinding(&kube, "acme").is_some() },
    )
    .await;
    let namespace = ns(&kube, "acme").expect("namespace acme");
    let labels = &namespace["metadata"]["labels"];
    assert_eq!(labels["tenant"], "acme", "{namespace}");
    assert_eq!(labels["budgetd.io/residency"], "eu");
    assert_eq!(labels["budgetd.io/tenant"], "acme");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "budgetd");
    let quota = kube
        .object(Resource::ResourceQuota, "acme", "budgetd-quota")
        .expect("quota");
    assert_eq!(quota["spec"]["hard"]["cpu"], "2", "{quota}");
    assert_eq!(quota["spec"]["hard"]["memory"], "4Gi");
    assert_eq!(quota["spec"]["hard"]["pods"], "20");
    assert!(kube
        .object(typed("v1", "limitranges"), "acme", "budgetd-defaults")
        .is_some());
    let netpol = policy(&kube, "acme", "budgetd-tenant-ingress").expect("tenant network policy");
    assert!(netpol.to_string().contains("ingress-nginx"), "{netpol}");
    let binding = rolebinding(&kube, "acme").unwrap();
    assert_eq!(binding["subjects"][0]["name"], "team-payments", "{binding}");
    assert_eq!(binding["roleRef"]["name"], "edit");

    // Update: a second namespace and a larger quota profile.
    let (status, body) = call(
        &daemon,
        Method::PATCH,
        "/api/v1/tenants/acme",
        OPERATOR,
        Some(json!({"namespaces": ["acme", "acme-batch"], "quota_profile": "standard"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(
        Duration::from_secs(30),
        "namespace acme-batch and the standard quota",
        &log,
        || async {
            rolebinding(&kube, "acme-batch").is_some()
                && kube
                    .object(Resource::ResourceQuota, "acme", "budgetd-quota")
                    .is_some_and(|q| q["spec"]["hard"]["cpu"] == "8")
        },
    )
    .await;
    assert_eq!(
        ns(&kube, "acme-batch").unwrap()["metadata"]["labels"]["tenant"],
        "acme"
    );

    // Operator suspend and resume: the enforcer scales to zero and back exactly.
    kube.create_deployment("acme", "web", 3);
    let (status, body) = call(
        &daemon,
        Method::POST,
        "/api/v1/tenants/acme/suspend",
        OPERATOR,
        Some(json!({"reason": "incident 4711"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["suspended_by"], "operator", "{body}");
    let replicas =
        || kube.object(Resource::Deployment, "acme", "web").unwrap()["spec"]["replicas"].clone();
    wait_until(
        Duration::from_secs(30),
        "web scaled to zero",
        &log,
        || async { replicas() == 0 },
    )
    .await;
    let (status, body) = call(
        &daemon,
        Method::POST,
        "/api/v1/tenants/acme/resume",
        OPERATOR,
        Some(json!({"reason": "incident closed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(
        Duration::from_secs(30),
        "web back to 3 replicas",
        &log,
        || async { replicas() == 3 },
    )
    .await;

    // Isolation (through the CLI) and release.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_budgetd"))
            .env("BUDGETD_API_URL", &daemon.api)
            .env("BUDGETD_TOKEN", OPERATOR)
            .env_remove("BUDGETD_CONFIG")
            .arg("tenants")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "budgetd tenants {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    cli(&["isolate", "acme", "--reason", "suspected compromise"]);
    wait_until(
        Duration::from_secs(30),
        "the isolation policy in both namespaces",
        &log,
        || async {
            policy(&kube, "acme", "budgetd-isolation").is_some()
                && policy(&kube, "acme-batch", "budgetd-isolation").is_some()
        },
    )
    .await;
    let isolation = policy(&kube, "acme", "budgetd-isolation").unwrap();
    assert!(
        isolation["spec"]["policyTypes"]
            .to_string()
            .contains("Egress"),
        "{isolation}"
    );
    assert_eq!(replicas(), 3, "isolation scales nothing down");
    cli(&["release", "acme", "--reason", "all clear"]);
    wait_until(
        Duration::from_secs(30),
        "the isolation policy gone",
        &log,
        || async {
            policy(&kube, "acme", "budgetd-isolation").is_none()
                && policy(&kube, "acme-batch", "budgetd-isolation").is_none()
                && policy(&kube, "acme", "budgetd-tenant-ingress").is_some()
        },
    )
    .await;

    // The tenant's own token works until offboarding starts.
    let (status, _) = call(&daemon, Method::GET, "/api/v1/tenants/acme", ACME, None).await;
    assert_eq!(status, StatusCode::OK);

    // Offboard (grace 0): access revoked, objects gone, the tenant offboarded and pseudonymised.
    let out = cli(&["offboard", "acme", "--reason", "contract ended"]);
    assert!(out.contains("offboarding"), "{out}");
    let (status, body) = call(&daemon, Method::GET, "/api/v1/tenants/acme", ACME, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "token_disabled", "{body}");
    wait_until(
        Duration::from_secs(30),
        "the tenant offboarded",
        &log,
        || async {
            call(&daemon, Method::GET, "/api/v1/tenants/acme", VIEWER, None)
                .await
                .1["state"]
                == "offboarded"
        },
    )
    .await;
    assert!(ns(&kube, "acme").is_none() && ns(&kube, "acme-batch").is_none());
    assert!(rolebinding(&kube, "acme").is_none());
    assert_eq!(
        kube.objects(Resource::ResourceQuota).len()
            + kube.objects(typed("v1", "limitranges")).len(),
        0,
        "every object budgetd created is gone"
    );
    let (_, tenant) = call(&daemon, Method::GET, "/api/v1/tenants/acme", VIEWER, None).await;
    assert!(
        tenant["owner"].as_str().unwrap().starts_with("pseudonym-"),
        "{tenant}"
    );
    let (status, report) = call(
        &daemon,
        Method::GET,
        "/api/v1/tenants/acme/final-report?format=json",
        VIEWER,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["tenant_id"], "acme", "{report}");
    let (status, csv) = call(
        &daemon,
        Method::GET,
        "/api/v1/tenants/acme/final-report?format=csv",
        VIEWER,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        csv.as_str()
            .is_some_and(|c| c.starts_with("tenant_id,day,meter,")),
        "{csv}"
    );
    let (_, progress) = call(
        &daemon,
        Method::GET,
        "/api/v1/tenants/acme/offboarding",
        VIEWER,
        None,
    )
    .await;
    assert!(
        progress.to_string().contains("resources_deleted"),
        "{progress}"
    );

    // The audit chain still verifies; every step is recorded once, in order.
    assert!(matches!(
        store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { .. }
    ));
    let actions = audit_actions(&store, "acme").await;
    for once in [
        "tenant.approve",
        "tenant.access_revoked",
        "tenant.resources_deleted",
        "tenant.offboarded",
    ] {
        assert_eq!(
            actions.iter().filter(|a| *a == once).count(),
            1,
            "{once} in {actions:?}"
        );
    }
    // The outbox holds the tenant's events in order.
    let events: Vec<(i64, String)> = sqlx::query_as(
        "select seq, event_type from outbox where aggregate_type = 'tenant' and aggregate_id = 'acme' order by seq",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let seqs: Vec<i64> = events.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>());
    let types: Vec<&str> = events.iter().map(|(_, t)| t.as_str()).collect();
    let order = [
        "tenant.approved",
        "tenant.updated",
        "tenant.suspended",
        "tenant.resumed",
        "tenant.isolated",
        "tenant.released",
        "tenant.offboarding",
        "tenant.access_revoked",
        "tenant.offboarded",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|t| {
            types
                .iter()
                .position(|x| x == t)
                .unwrap_or_else(|| panic!("{t} not in {types:?}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{types:?}");
    // Nothing was created twice (the blueprint's own network policy is withheld while the
    // tenant is isolated and comes back at release: deleted, then created again).
    assert_eq!(created_twice(&kube), Vec::<String>::new());
    let created = creates(&kube);
    assert_eq!(
        created.values().filter(|n| **n == 2).count(),
        2,
        "only the two tenant-ingress policies were created again after release: {created:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("budgetd-{name}-{}-{}", std::process::id(), uuid()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uuid() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn kill(mut daemon: Daemon) {
    daemon.child.kill().unwrap(); // SIGKILL
    daemon.child.wait().unwrap();
}

#[tokio::test]
async fn a_daemon_killed_mid_provisioning_and_mid_offboarding_finishes_each_exactly_once() {
    let db = testkit::db::fresh_database().await;
    let store = db.store.clone();
    let kube = FakeKube::start().await;
    let am = AlertmanagerProcess::start().await;
    let dir = tempdir("lifecycle-kill");
    let config = write_config(&dir, &db.url, &kube.url(), am.url().as_str());

    // Provisioning stops at the RoleBinding (the last template): the API server refuses it.
    kube.inject(
        Fault::always(503)
            .method("PATCH")
            .path_contains("/rolebindings/"),
    );
    let log = dir.join("first.log");
    let first = start(&config, &log);
    wait_until(
        Duration::from_secs(60),
        "the first daemon to lead",
        &log,
        || ready(&first),
    )
    .await;
    let (status, body) = call(
        &first,
        Method::POST,
        "/api/v1/tenant-requests",
        VIEWER,
        Some(request("acme")),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = call(
        &first,
        Method::POST,
        "/api/v1/tenant-requests/acme/approve",
        OPERATOR,
        Some(json!({"reason": "approved"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_until(
        Duration::from_secs(30),
        "the quota applied and the RoleBinding refused",
        &log,
        || async {
            kube.object(Resource::ResourceQuota, "acme", "budgetd-quota")
                .is_some()
                && kube
                    .requests()
                    .iter()
                    .any(|r| r.path.contains("/rolebindings/") && r.status == 503)
        },
    )
    .await;
    kill(first);
    kube.clear_faults();
    let log = dir.join("second.log");
    let second = start(&config, &log);
    wait_until(
        Duration::from_secs(60),
        "the second daemon to lead",
        &log,
        || ready(&second),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "the RoleBinding after the restart",
        &log,
        || async { rolebinding(&kube, "acme").is_some() },
    )
    .await;
    let created = creates(&kube);
    assert!(
        created.values().all(|n| *n == 1),
        "an object was created twice: {created:?}"
    );
    assert_eq!(
        created.len(),
        5,
        "namespace, quota, limit range, network policy, role binding: {created:?}"
    );

    // Offboarding stops after access was revoked: the API server refuses to delete namespaces.
    kube.inject(
        Fault::always(503)
            .method("DELETE")
            .path_contains("/api/v1/namespaces/acme"),
    );
    let (status, body) = call(
        &second,
        Method::DELETE,
        "/api/v1/tenants/acme",
        OPERATOR,
        Some(json!({"reason": "contract ended"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let acme = TenantId::parse("acme").unwrap();
    wait_until(
        Duration::from_secs(30),
        "access revoked and the deletion refused",
        &log,
        || async {
            let revoked = store
                .offboarding(&acme)
                .await
                .unwrap()
                .is_some_and(|o| o.access_revoked_at.is_some());
            revoked
                && kube
                    .requests()
                    .iter()
                    .any(|r| r.method == "DELETE" && r.status == 503)
        },
    )
    .await;
    assert!(
        rolebinding(&kube, "acme").is_none(),
        "access is revoked first"
    );
    assert!(ns(&kube, "acme").is_some());
    kill(second);
    kube.clear_faults();
    let log = dir.join("third.log");
    let third = start(&config, &log);
    wait_until(
        Duration::from_secs(60),
        "the third daemon to lead",
        &log,
        || ready(&third),
    )
    .await;
    wait_until(
        Duration::from_secs(60),
        "the tenant offboarded after the restart",
        &log,
        || async {
            call(&third, Method::GET, "/api/v1/tenants/acme", VIEWER, None)
                .await
                .1["state"]
                == "offboarded"
        },
    )
    .await;
    assert!(ns(&kube, "acme").is_none());
    let actions = audit_actions(&store, "acme").await;
    for once in [
        "tenant.access_revoked",
        "tenant.resources_deleted",
        "tenant.offboarded",
    ] {
        assert_eq!(
            actions.iter().filter(|a| *a == once).count(),
            1,
            "{once} in {actions:?}"
        );
    }
    let deleted_twice: Vec<String> = {
        let mut seen = std::collections::BTreeMap::new();
        for r in kube.requests() {
            if r.outcome == Some(Outcome::Deleted) {
                *seen.entry(r.path).or_insert(0) += 1;
            }
        }
        seen.into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(p, _)| p)
            .collect()
    };
    assert!(deleted_twice.is_empty(), "{deleted_twice:?}");
    let created = creates(&kube);
    assert!(created.values().all(|n| *n == 1), "{created:?}");
    assert!(matches!(
        store.verify_audit_chain().await.unwrap(),
        ChainStatus::Intact { .. }
    ));
    drop(third);
    let _ = std::fs::remove_dir_all(&dir);
}
