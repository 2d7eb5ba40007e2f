//! The Kafka relay through `budgetd run`: a daemon with `[kafka]` pointed at librdkafka's mock
//! cluster (in this test process, reached over loopback TCP) publishes a tenant's events as
//! CloudEvents; while every broker is down the event waits (the lag and age metrics say so,
//! `/readyz` stays ready), and it goes out once they are back.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::Value;
use testkit::db::fresh_database;

use crate::support::{tenant_body, Daemon};

const ADMIN: &str = "kafka-admin-token-0123456789abcdef";
const TOPIC: &str = "tenants.events";
const PARTITIONS: i32 = 3;
const BROKERS: i32 = 3;

fn start(dir: &Path, db_url: &str, bootstrap: &str) -> Daemon {
    let config = dir.join("budgetd.toml");
    std::fs::write(
        &config,
        format!(
            r#"[database]
url = "{db_url}"

[kafka]
bootstrap_servers = "{bootstrap}"
topic = "{TOPIC}"
source = "budgetd/e2e"
message_timeout_ms = 1500

[kafka.properties]
"reconnect.backoff.max.ms" = "200"

[kafka.relay]
poll_interval_ms = 100
backoff_base_ms = 200
backoff_cap_ms = 400
"#
        ),
    )
    .unwrap();
    Daemon::run(dir, &config, &[("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN)])
}

/// Polls `check` until it is true; panics with `what` and the daemon's log after `limit`.
async fn wait_until<F, Fut>(daemon: &Daemon, limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > limit {
            panic!(
                "timed out after {limit:?} waiting for {what}; the daemon's log:\n{}",
                daemon.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metrics(daemon: &Daemon) -> String {
    match reqwest::get(format!("{}/metrics", daemon.api)).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// The value of the sample of `name` whose labels include every one of `labels`
/// (`key="value"`), if exported.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        let set: Vec<&str> = set.split(',').collect();
        if labels.iter().all(|label| set.contains(label)) {
            value.trim().parse().ok()
        } else {
            None
        }
    })
}

/// Every message on the topic so far, as (headers, data).
fn consume(bootstrap: &str) -> Vec<(BTreeMap<String, String>, Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "e2e")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut total = 0;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
            .unwrap();
        total += high as usize;
        assignment
            .add_partition_offset(TOPIC, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < total {
        assert!(Instant::now() < deadline, "read {} of {total}", out.len());
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8(h.value.unwrap().to_vec()).unwrap(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push((
            headers,
            serde_json::from_slice(message.payload().unwrap()).unwrap(),
        ));
    }
    out
}

async fn post(daemon: &Daemon, path: &str, method: reqwest::Method, body: Value) -> StatusCode {
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
async fn budgetd_run_publishes_tenant_events_to_kafka_and_waits_out_an_outage() {
    let db = fresh_database().await;
    let mock = MockCluster::new(BROKERS).unwrap();
    mock.create_topic(TOPIC, PARTITIONS, BROKERS).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = std::env::temp_dir().join(format!("budgetd-kafka-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = start(&dir, &db.url, &bootstrap);
    wait_until(&daemon, Duration::from_secs(60), "leadership", || async {
        metrics(&daemon).await.contains("budgetd_leader 1")
    })
    .await;

    let status = post(
        &daemon,
        "/api/v1/tenants",
        reqwest::Method::POST,
        tenant_body("acme"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let created_id: i64 = sqlx::query_scalar(
        "select id from outbox where aggregate_id = 'acme' and event_type = 'tenant.created'",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "tenant.created on the topic",
        || async { consume(&bootstrap).len() == 1 },
    )
    .await;
    let (headers, data) = consume(&bootstrap).remove(0);
    assert_eq!(headers["ce_specversion"], "1.0");
    assert_eq!(headers["ce_id"], created_id.to_string());
    assert_eq!(headers["ce_source"], "budgetd/e2e");
    assert_eq!(headers["ce_type"], "io.budgetd.tenant.created.v1");
    assert_eq!(headers["ce_subject"], "acme");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["ce_time"].ends_with('Z'), "{headers:?}");
    assert_eq!(data["version"], 1);
    assert_eq!(data["tenant_id"], "acme");
    assert_eq!(data["payload"]["id"], "acme", "{data}");
    assert_eq!(data["payload"]["state"], "active", "{data}");

    // Every broker down: the next event waits, the metrics say so, the daemon stays ready.
    for broker in 1..=BROKERS {
        mock.broker_down(broker).unwrap();
    }
    let status = post(
        &daemon,
        "/api/v1/tenants/acme",
        reqwest::Method::PATCH,
        serde_json::json!({"owner": "new-owner@example.com"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let kafka = r#"reconciler="kafka""#;
    let lag = |m: &str| sample(m, "budgetd_reconciler_lag_events", &[kafka]);
    let age = |m: &str| sample(m, "budgetd_reconciler_oldest_pending_age_seconds", &[kafka]);
    let failed = |m: &str| {
        sample(
            m,
            "budgetd_reconciler_events_failed_total",
            &[kafka, r#"kind="timeout""#],
        )
    };
    wait_until(
        &daemon,
        Duration::from_secs(30),
        "a failed publish while Kafka is down",
        || async {
            let m = metrics(&daemon).await;
            lag(&m) == Some(1.0)
                && failed(&m).is_some_and(|n| n >= 1.0)
                && age(&m).is_some_and(|s| s > 0.0)
        },
    )
    .await;
    let ready = reqwest::get(format!("{}/readyz", daemon.api))
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        StatusCode::OK,
        "Kafka is not the daemon's lifeline"
    );
    let log = std::fs::read_to_string(&daemon.log).unwrap();
    assert!(
        log.contains("event failed; the tenant is parked until its retry"),
        "{log}"
    );

    for broker in 1..=BROKERS {
        mock.broker_up(broker).unwrap();
    }
    wait_until(
        &daemon,
        Duration::from_secs(60),
        "the waiting event on the topic",
        || async { consume(&bootstrap).len() >= 2 },
    )
    .await;
    let all = consume(&bootstrap);
    let types: Vec<&str> = all.iter().map(|(h, _)| h["ce_type"].as_str()).collect();
    assert_eq!(
        types,
        [
            "io.budgetd.tenant.created.v1",
            "io.budgetd.tenant.updated.v1"
        ],
        "once each, in order"
    );
    wait_until(&daemon, Duration::from_secs(30), "no lag", || async {
        let m = metrics(&daemon).await;
        lag(&m) == Some(0.0) && age(&m) == Some(0.0)
    })
    .await;
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
}
