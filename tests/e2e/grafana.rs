//! The Grafana reconciler through `budgetd run`: a daemon with `[grafana]` pointed at the fake
//! Grafana (`testkit::fake_grafana`, in this test process over loopback HTTP; no Grafana server
//! can run here) gives a tenant created through the API its team, folder, data source and
//! pinned dashboard, renames the folder on an update, and removes everything at offboarding.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use testkit::db::fresh_database;
use testkit::fake_grafana::{FakeGrafana, FolderPermission, VIEW};

use crate::support::{tenant_body, Daemon};

const ADMIN: &str = "grafana-admin-token-0123456789abcdef";
const GRAFANA_TOKEN: &str = "glsa_e2e_0123456789";

fn start(dir: &Path, db_url: &str, grafana: &str) -> Daemon {
    let url = url::Url::parse(db_url).unwrap();
    let config = dir.join("budgetd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[database]
url = "{db_url}"

[grafana]
url = "{grafana}"

[grafana.datasource]
host = "{}:{}"
database = "{}"
sslmode = "disable"

[grafana.reconciler]
poll_interval_ms = 100
backoff_base_ms = 200
backoff_cap_ms = 400
"#,
            url.host_str().unwrap(),
            url.port().unwrap(),
            url.path().trim_start_matches('/'),
        ),
    )
    .unwrap();
    Daemon::run(
        dir,
        &config,
        &[
            ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN),
            ("BUDGETD_GRAFANA_TOKEN", GRAFANA_TOKEN),
        ],
    )
}

/// Polls `check` until it is true; panics with `what` and the daemon's log after 60 s.
async fn wait_until(daemon: &Daemon, what: &str, mut check: impl FnMut() -> bool) {
    let started = Instant::now();
    while !check() {
        if started.elapsed() > Duration::from_secs(60) {
            panic!(
                "timed out waiting for {what}; the daemon's log:\n{}",
                daemon.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn call(daemon: &Daemon, method: Method, path: &str, body: Value) -> StatusCode {
    reqwest::Client::new()
        .request(method, format!("{}{path}", daemon.api))
        .bearer_auth(ADMIN)
        .json(&body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn budgetd_run_keeps_a_grafana_folder_per_tenant() {
    let db = fresh_database().await;
    let grafana = FakeGrafana::start(GRAFANA_TOKEN).await;
    let dir = std::env::temp_dir().join(format!("budgetd-grafana-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = start(&dir, &db.url, &grafana.url());

    let started = Instant::now();
    while !reqwest::get(format!("{}/healthz", daemon.api))
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the daemon did not answer in 60 s:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut body = tenant_body("acme");
    body["owner_group"] = json!("team-payments");
    assert_eq!(
        call(&daemon, Method::POST, "/api/v1/tenants", body).await,
        StatusCode::CREATED
    );
    wait_until(&daemon, "acme's dashboard", || {
        grafana.dashboard("budgetd-acme-costs").is_some()
    })
    .await;
    let team = grafana
        .teams()
        .into_iter()
        .find(|t| t.name == "team-payments")
        .expect("the owner group's team");
    assert_eq!(
        grafana.folder_permissions("budgetd-acme").unwrap(),
        vec![FolderPermission::team(team.id, VIEW)]
    );
    let ds = grafana.datasource("budgetd-ds-acme").unwrap();
    let role: String =
        sqlx::query_scalar("select role_name from tenant_logins where tenant_id = 'acme'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(ds.settings["user"], role.as_str());
    // The token went to Grafana, never to the log.
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(!log.contains(GRAFANA_TOKEN));

    assert_eq!(
        call(
            &daemon,
            Method::PATCH,
            "/api/v1/tenants/acme",
            json!({"display_name": "Acme Payments"})
        )
        .await,
        StatusCode::OK
    );
    wait_until(&daemon, "the folder renamed", || {
        grafana
            .folder("budgetd-acme")
            .is_some_and(|f| f.title == "Acme Payments (acme)")
    })
    .await;

    assert_eq!(
        call(
            &daemon,
            Method::DELETE,
            "/api/v1/tenants/acme",
            json!({"reason": "contract ended"})
        )
        .await,
        StatusCode::ACCEPTED
    );
    wait_until(&daemon, "acme's folder and data source removed", || {
        grafana.folder("budgetd-acme").is_none() && grafana.datasource("budgetd-ds-acme").is_none()
    })
    .await;
}
