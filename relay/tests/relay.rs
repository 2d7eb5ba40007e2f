//! The relay through the real producer against librdkafka's mock cluster, driven by the real
//! runner on a fresh Postgres: every event and header is consumed back and checked; broker
//! errors and an outage lose nothing, publish nothing twice, and keep each tenant's order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use ledger::enforcement::Fence;
use ledger::store::LeaderLock;
use lifecycle::{Runner, StepReport};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use relay::{KafkaRelay, KafkaSection, KafkaSettings};
use serde_json::{json, Value};
use testkit::bench_sql::BenchConnection;
use testkit::db::{create_tenant, fresh_database, TestDb};

const TOPIC: &str = "budgetd.events";
const PARTITIONS: i32 = 4;
const BROKERS: i32 = 3;

fn cluster() -> MockCluster<'static, DefaultProducerContext> {
    let mock = MockCluster::new(BROKERS).unwrap();
    mock.create_topic(TOPIC, PARTITIONS, BROKERS).unwrap();
    mock
}

fn settings(bootstrap: &str) -> KafkaSettings {
    settings_with_timeout(bootstrap, 3000)
}

/// With librdkafka's `message.timeout.ms` at `message_timeout_ms`: retriable broker errors are
/// retried inside it, so a test of those retries gives them time on a loaded machine.
fn settings_with_timeout(bootstrap: &str, message_timeout_ms: u64) -> KafkaSettings {
    let section: KafkaSection = serde_json::from_value(json!({
        "bootstrap_servers": bootstrap,
        "topic": TOPIC,
        "source": "budgetd/test",
        "message_timeout_ms": message_timeout_ms,
        "relay": { "backoff_base_ms": 1000, "backoff_cap_ms": 4000, "poll_interval_ms": 100 },
    }))
    .unwrap();
    section.validate().unwrap()
}

async fn lead(db: &TestDb) -> LeaderLock {
    LeaderLock::try_acquire(&db.url, "test", 30, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no other leader")
}

fn runner(db: &TestDb, settings: &KafkaSettings) -> Runner {
    let relay = KafkaRelay::new(settings).unwrap();
    Runner::new(db.store.clone(), Arc::new(relay), settings.runner.clone()).unwrap()
}

/// An outbox row as the test expects it on the topic.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    tenant: String,
    event_type: String,
    payload: Value,
    created_at: DateTime<Utc>,
}

/// Every outbox event, per tenant in seq order.
async fn outbox(db: &TestDb) -> BTreeMap<String, Vec<Row>> {
    let rows: Vec<(i64, String, String, Value, DateTime<Utc>)> = sqlx::query_as(
        "select id, aggregate_id, event_type, payload, created_at from outbox \
         where aggregate_type = 'tenant' order by aggregate_id, seq",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for (id, tenant, event_type, payload, created_at) in rows {
        out.entry(tenant.clone()).or_default().push(Row {
            id,
            tenant,
            event_type,
            payload,
            created_at,
        });
    }
    out
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Consumed {
    key: String,
    partition: i32,
    headers: BTreeMap<String, String>,
    value: Value,
}

impl Consumed {
    fn id(&self) -> i64 {
        self.headers["ce_id"].parse().unwrap()
    }
}

/// Every message on the topic: as many as the partitions' high watermarks say there are
/// (so a duplicate is seen, never waited for), read from the beginning.
fn consume_all(bootstrap: &str) -> Vec<Consumed> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "relay-test")
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
    let mut out = Vec::with_capacity(total);
    while out.len() < total {
        assert!(
            Instant::now() < deadline,
            "read {} of {total} messages in 30 s",
            out.len()
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message.unwrap();
        let mut headers = BTreeMap::new();
        if let Some(h) = message.headers() {
            for header in h.iter() {
                let value = String::from_utf8(header.value.unwrap().to_vec()).unwrap();
                assert!(
                    headers.insert(header.key.to_owned(), value).is_none(),
                    "header {} twice",
                    header.key
                );
            }
        }
        out.push(Consumed {
            key: String::from_utf8(message.key().unwrap().to_vec()).unwrap(),
            partition: message.partition(),
            headers,
            value: serde_json::from_slice(message.payload().unwrap()).unwrap(),
        });
    }
    out
}

/// Checks the topic against the outbox: every event exactly once, each tenant's in seq
/// order and in one partition, with every CloudEvents header and the versioned data.
fn check_topic(consumed: &[Consumed], outbox: &BTreeMap<String, Vec<Row>>) {
    let ids: Vec<i64> = consumed.iter().map(Consumed::id).collect();
    let unique: BTreeSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "published twice: {ids:?}");
    let expected: usize = outbox.values().map(Vec::len).sum();
    assert_eq!(ids.len(), expected, "every event, once");
    let mut by_tenant: BTreeMap<&str, Vec<&Consumed>> = BTreeMap::new();
    for c in consumed {
        by_tenant.entry(c.key.as_str()).or_default().push(c);
    }
    for (tenant, rows) in outbox {
        let got = &by_tenant[tenant.as_str()];
        let got_ids: Vec<i64> = got.iter().map(|c| c.id()).collect();
        let want_ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        assert_eq!(got_ids, want_ids, "{tenant}'s events in outbox order");
        assert!(
            got.iter().all(|c| c.partition == got[0].partition),
            "{tenant}'s events in one partition"
        );
        for (c, row) in got.iter().zip(rows) {
            let want: BTreeMap<String, String> = [
                ("ce_specversion", "1.0".to_owned()),
                ("ce_id", row.id.to_string()),
                ("ce_source", "budgetd/test".to_owned()),
                ("ce_type", format!("io.budgetd.{}.v1", row.event_type)),
                (
                    "ce_time",
                    row.created_at.to_rfc3339_opts(SecondsFormat::Micros, true),
                ),
                ("ce_subject", row.tenant.clone()),
                ("content-type", "application/json".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            assert_eq!(c.headers, want);
            assert_eq!(
                c.value,
                json!({ "version": 1, "tenant_id": row.tenant, "payload": row.payload })
            );
        }
    }
}

/// Steps from `now` until no event is left to publish, an hour later after a step with
/// failures (past any backoff); panics after 60 s.
async fn drain(db: &TestDb, runner: &Runner, fence: Fence, mut now: DateTime<Utc>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = runner.step(fence, now).await.unwrap();
        if report.failed > 0 {
            now += chrono::Duration::hours(1);
        }
        let status = db.store.reconciler_status(runner.name()).await.unwrap();
        if status.lag() == 0 {
            assert_eq!(status.parked, 0);
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the relay did not publish everything in 60 s: {report:?}"
        );
        tokio::task::yield_now().await;
    }
}

/// One step that takes the new backlog: the scan waits for transactions still open anywhere
/// on the test cluster, so step until it took some.
async fn step_until_scanned(runner: &Runner, fence: Fence, now: DateTime<Utc>) -> StepReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = runner.step(fence, now).await.unwrap();
        if report.scanned > 0 {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog was not scanned in 60 s"
        );
        tokio::task::yield_now().await;
    }
}

async fn backlog(db: &TestDb, tenants: usize, per_tenant: usize) {
    let mut conn = BenchConnection::connect(&db.url).await.unwrap();
    conn.write_outbox_backlog(tenants, per_tenant)
        .await
        .unwrap();
    conn.close().await;
}

#[tokio::test]
async fn every_event_is_published_once_as_a_cloud_event_in_tenant_order() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    // Real lifecycle events through the store, and a backlog spread over many tenants.
    create_tenant(&db.store, "acme").await;
    create_tenant(&db.store, "globex").await;
    backlog(&db, 20, 15).await;
    let runner = runner(&db, &settings(&bootstrap));
    drain(&db, &runner, lock.fence(), Utc::now()).await;

    let outbox = outbox(&db).await;
    assert_eq!(outbox["acme"][0].event_type, "tenant.created");
    check_topic(&consume_all(&bootstrap), &outbox);
    // Drained: another step publishes nothing.
    let report = runner.step(lock.fence(), Utc::now()).await.unwrap();
    assert_eq!((report.handled, report.failed, report.lag), (0, 0, 0));
    check_topic(&consume_all(&bootstrap), &outbox);
}

#[tokio::test]
async fn broker_errors_are_retried_in_order_without_duplicates() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    backlog(&db, 8, 10).await;
    // Produce requests fail with retriable errors first: librdkafka retries them, in order.
    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        ],
    );
    let runner = runner(&db, &settings_with_timeout(&bootstrap, 30_000));
    drain(&db, &runner, lock.fence(), Utc::now()).await;
    check_topic(&consume_all(&bootstrap), &outbox(&db).await);
}

#[tokio::test]
async fn while_the_brokers_are_down_events_wait_and_then_go_out_in_order() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    let runner = runner(&db, &settings(&bootstrap));
    backlog(&db, 5, 4).await;
    let now = Utc::now();
    drain(&db, &runner, fence, now).await;

    for broker in 1..=BROKERS {
        mock.broker_down(broker).unwrap();
    }
    backlog(&db, 5, 6).await;
    // Each tenant's first waiting event times out (message_timeout_ms) and parks it; nothing
    // of it is recorded.
    let report = step_until_scanned(&runner, fence, now).await;
    assert_eq!(report.handled, 0, "{report:?}");
    assert_eq!(report.failed, 5, "{report:?}");
    let status = db.store.reconciler_status("kafka").await.unwrap();
    assert_eq!((status.lag(), status.parked), (30, 5));
    assert!(status.oldest_pending_at.is_some());
    let parked = db.store.reconciler_parked("kafka").await.unwrap();
    assert!(
        parked.iter().all(|p| p
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("timeout:"))),
        "{parked:?}"
    );
    // Parked tenants are not retried before their backoff.
    let report = runner.step(fence, now).await.unwrap();
    assert_eq!((report.handled, report.failed), (0, 0));

    for broker in 1..=BROKERS {
        mock.broker_up(broker).unwrap();
    }
    // Past every backoff: each tenant's events go out, the failed first.
    let later = now + chrono::Duration::hours(1);
    drain(&db, &runner, fence, later).await;
    check_topic(&consume_all(&bootstrap), &outbox(&db).await);
}

/// A broker's OutOfOrderSequenceNumber is fatal for an idempotent producer: librdkafka refuses
/// every later send of that producer. The relay replaces it with a new one, so the tenants
/// parked by the failure go out, in order and once, on the next attempt instead of never.
#[tokio::test]
async fn after_a_fatal_producer_error_a_new_producer_publishes_what_waits() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let mock = cluster();
    let bootstrap = mock.bootstrap_servers();
    backlog(&db, 4, 5).await;
    let runner = runner(&db, &settings_with_timeout(&bootstrap, 30_000));
    let now = Utc::now();
    drain(&db, &runner, fence, now).await;

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    backlog(&db, 4, 5).await;
    let report = step_until_scanned(&runner, fence, now).await;
    assert!(report.failed > 0, "{report:?}");
    let parked = db.store.reconciler_parked("kafka").await.unwrap();
    // The failed send is `fatal`; what the dead producer still queued is purged.
    let errors: Vec<&str> = parked
        .iter()
        .map(|p| p.last_error.as_deref().unwrap_or(""))
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("fatal:"))
            && errors
                .iter()
                .all(|e| e.starts_with("fatal:") || e.starts_with("purged:")),
        "{parked:?}"
    );
    // Past the backoff, one step publishes everything that waits.
    let report = runner
        .step(fence, now + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(
        (report.failed, report.lag, report.parked),
        (0, 0, 0),
        "{report:?}"
    );
    check_topic(&consume_all(&bootstrap), &outbox(&db).await);
}
