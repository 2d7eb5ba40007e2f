//! `budgetd-dev bench kafka`: the relay draining an outbox backlog through librdkafka's mock
//! cluster, in a scratch database of its own on a Postgres server.
//!
//! 1. Write `events` outbox events for `tenants` tenants, round by round (each tenant's events
//!    spread over the whole backlog).
//! 2. Baseline, same run: the same events as the same CloudEvents through an idempotent
//!    producer with the relay's settings (`acks=all`) to a topic of their own, all enqueued at
//!    once, then every acknowledgement awaited: raw produce without the outbox.
//! 3. The relay: the real runner and `KafkaRelay` step until nothing is left to publish
//!    (scan, per-tenant batches, acknowledgements, the recorded positions) → events/s
//!    (target ≥ 5,000/s).
//! 4. Everything is consumed back: every event exactly once, and each tenant's in its outbox
//!    order (the `ce_id`s of a key in the order of its seq).
//!
//! The report goes to stdout, progress to stderr. The target is informative; a broken order or
//! a lost or duplicated event is an error.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use ledger::store::{LeaderLock, OutboxEvent};
use ledger::Store;
use lifecycle::Runner;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use relay::{CloudEvent, KafkaRelay, KafkaSection};
use testkit::bench_sql::scratch_ledger;
use testkit::db::{in_scratch_database, store_config};

use super::{secs, verdict};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBenchOptions {
    /// Outbox events in the backlog.
    pub events: usize,
    /// Tenants they belong to.
    pub tenants: usize,
}

impl Default for KafkaBenchOptions {
    fn default() -> Self {
        KafkaBenchOptions {
            events: 100_000,
            tenants: 1_000,
        }
    }
}

const TARGET_PER_SECOND: f64 = 5_000.0;
const PARTITIONS: i32 = 12;
const BROKERS: i32 = 3;
const TOPIC: &str = "budgetd.events";
const BASELINE_TOPIC: &str = "baseline.events";

pub async fn run_kafka_bench(admin_url: &str, opts: &KafkaBenchOptions) -> anyhow::Result<()> {
    if opts.events == 0 || opts.tenants == 0 || opts.events < opts.tenants {
        bail!("events and tenants must be positive, and at least one event per tenant");
    }
    let opts = opts.clone();
    // The mock cluster's brokers run on librdkafka's threads while it lives (it is not `Send`,
    // so it stays here, outside the bench's future).
    let mock = MockCluster::new(BROKERS).context("mock cluster")?;
    for topic in [TOPIC, BASELINE_TOPIC] {
        mock.create_topic(topic, PARTITIONS, BROKERS)
            .context("mock topic")?;
    }
    let bootstrap = mock.bootstrap_servers();
    in_scratch_database(admin_url, "budgetd_kbench", move |url| async move {
        bench(&url, &bootstrap, &opts).await
    })
    .await
}

async fn bench(url: &str, bootstrap: &str, opts: &KafkaBenchOptions) -> anyhow::Result<()> {
    let (_, mut conn) = scratch_ledger(url, Duration::from_secs(120)).await?;
    // The relay's store as the daemon's: a pool of 8 (`database.max_connections` is 10).
    let store = Store::connect(&store_config(url)).await?;
    let per_tenant = opts.events / opts.tenants;
    eprintln!(
        "writing {} outbox events for {} tenants ...",
        per_tenant * opts.tenants,
        opts.tenants
    );
    let written = conn.write_outbox_backlog(opts.tenants, per_tenant).await?;
    let events = conn.outbox_events().await?;
    ensure!(
        events.len() as u64 == written,
        "the outbox holds what was written"
    );
    conn.vacuum_analyze(&["outbox"]).await?;

    let section: KafkaSection = serde_json::from_value(serde_json::json!({
        "bootstrap_servers": bootstrap,
        "topic": TOPIC,
        "source": "budgetd/bench",
    }))?;
    let settings = section.validate()?;

    eprintln!("baseline: raw produce of the same events ...");
    let baseline = raw_produce(bootstrap, &events, &settings.source).await?;

    eprintln!("the relay ...");
    let lock = LeaderLock::try_acquire(url, "bench", 30, Duration::from_secs(10))
        .await?
        .context("no other leader in a scratch database")?;
    let relay = KafkaRelay::new(&settings)?;
    let runner = Runner::new(store.clone(), Arc::new(relay), settings.runner.clone())?;
    let started = Instant::now();
    let mut steps = 0u64;
    loop {
        let report = runner.step(lock.fence(), Utc::now()).await?;
        steps += 1;
        ensure!(
            report.failed == 0,
            "the relay failed to publish: {report:?}"
        );
        if report.lag == 0 {
            break;
        }
    }
    let relay_time = started.elapsed();

    eprintln!("consuming everything back ...");
    let check = check_order(bootstrap, &events)?;

    let n = events.len() as f64;
    let rate = n / secs(relay_time);
    let baseline_rate = n / secs(baseline);
    println!("budgetd-dev bench kafka: {} events, {} tenants, mock cluster of {BROKERS} brokers, {PARTITIONS} partitions", events.len(), opts.tenants);
    println!(
        "  raw produce (baseline)    {:>10.0} events/s  ({:.2} s)",
        baseline_rate,
        secs(baseline)
    );
    println!(
        "  relay (outbox → Kafka)    {:>10.0} events/s  ({:.2} s, {steps} steps)  target ≥ {TARGET_PER_SECOND:.0}/s: {}",
        rate,
        secs(relay_time),
        verdict(rate >= TARGET_PER_SECOND)
    );
    println!(
        "  ratio relay/raw produce   {:>10.2}",
        secs(relay_time) / secs(baseline).max(1e-9)
    );
    println!(
        "  per-tenant order          held: {} tenants, {} events consumed, 0 lost, 0 duplicates",
        check.tenants, check.consumed
    );
    conn.close().await;
    drop(lock);
    Ok(())
}

/// The baseline: every event's CloudEvent enqueued at once, then every acknowledgement.
async fn raw_produce(
    bootstrap: &str,
    events: &[OutboxEvent],
    source: &str,
) -> anyhow::Result<Duration> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
    let messages = events
        .iter()
        .map(|e| CloudEvent::from_outbox(e, source))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    let mut deliveries = Vec::with_capacity(messages.len());
    for m in &messages {
        let mut headers = OwnedHeaders::new_with_capacity(m.headers.len());
        for (key, value) in &m.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let record = FutureRecord::to(BASELINE_TOPIC)
            .key(m.key.as_str())
            .payload(m.value.as_slice())
            .headers(headers);
        deliveries.push(
            producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("enqueue: {e}"))?,
        );
    }
    for d in deliveries {
        d.await
            .context("producer gone")?
            .map_err(|(e, _)| anyhow::anyhow!("baseline delivery: {e}"))?;
    }
    Ok(started.elapsed())
}

struct OrderCheck {
    tenants: usize,
    consumed: usize,
}

/// Reads the relay's topic back (as many messages as its high watermarks say) and checks
/// that it holds every event once, each tenant's in outbox order.
fn check_order(bootstrap: &str, events: &[OutboxEvent]) -> anyhow::Result<OrderCheck> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut total = 0usize;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        let (_, high) = consumer.fetch_watermarks(TOPIC, partition, Duration::from_secs(10))?;
        total += usize::try_from(high).unwrap_or(0);
        assignment.add_partition_offset(TOPIC, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut by_tenant: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut consumed = 0;
    while consumed < total {
        ensure!(
            Instant::now() < deadline,
            "read {consumed} of {total} messages in 300 s"
        );
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let key = String::from_utf8(message.key().context("a key")?.to_vec())?;
        let id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "ce_id"))
            .and_then(|h| h.value)
            .context("a ce_id header")?;
        let id: i64 = std::str::from_utf8(id)?.parse()?;
        ensure!(seen.insert(id), "event {id} was published twice");
        by_tenant.entry(key).or_default().push(id);
        consumed += 1;
    }
    ensure!(
        consumed == events.len(),
        "{consumed} messages for {} events",
        events.len()
    );
    let mut want: BTreeMap<&str, Vec<(i64, i64)>> = BTreeMap::new();
    for e in events {
        want.entry(e.aggregate_id.as_str())
            .or_default()
            .push((e.seq, e.id));
    }
    for (tenant, mut seqs) in want {
        seqs.sort();
        let ids: Vec<i64> = seqs.into_iter().map(|(_, id)| id).collect();
        ensure!(
            by_tenant.get(tenant) == Some(&ids),
            "{tenant}'s events are not in outbox order on the topic"
        );
    }
    Ok(OrderCheck {
        tenants: by_tenant.len(),
        consumed,
    })
}
