//! [`KafkaRelay`]: the reconciler named `kafka`. The runner hands it a tenant's due events in
//! outbox order; it enqueues them all with librdkafka's idempotent producer (one partition per
//! key, so they stay in that order, retries included), waits for every acknowledgement and
//! reports how many from the first are published. An event counts as published only once the
//! broker acknowledged it (`acks=all`); the runner records that, and parks the tenant at the
//! first event that failed, so no later event of the tenant is handed over before it.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lifecycle::{BatchOutcome, HandlerError, OutboxEvent, Reconciler};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::KafkaSettings;
use crate::event::CloudEvent;
use crate::Error;

/// The reconciler's (and its cursor's) name.
pub const NAME: &str = "kafka";

/// librdkafka's callbacks: its log lines and client-wide errors go to `tracing`, and a
/// client-wide error (all brokers down, authentication) is counted by class.
pub struct RelayContext;

impl ClientContext for RelayContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let class = error_class(&error);
        metrics::counter!("budgetd_kafka_client_errors_total", "class" => class).increment(1);
        tracing::warn!(class, error = %error, reason, "Kafka client error; events wait in the outbox until it is reachable");
    }
}

/// A bounded label for a publish failure (the metric's `class`, the runner's failure `kind`).
pub fn error_class(error: &KafkaError) -> &'static str {
    use RDKafkaErrorCode::*;
    match error.rdkafka_error_code() {
        Some(MessageTimedOut | RequestTimedOut | OperationTimedOut | TimedOutQueue) => "timeout",
        Some(QueueFull) => "queue_full",
        Some(BrokerTransportFailure | AllBrokersDown | Resolve) => "unreachable",
        Some(
            Authentication
            | SaslAuthenticationFailed
            | TopicAuthorizationFailed
            | ClusterAuthorizationFailed
            | TransactionalIdAuthorizationFailed,
        ) => "unauthorized",
        Some(UnknownTopic | UnknownTopicOrPartition | UnknownTopicId) => "unknown_topic",
        Some(MessageSizeTooLarge) => "too_large",
        Some(
            LeaderNotAvailable
            | NotLeaderForPartition
            | NotEnoughReplicas
            | NotEnoughReplicasAfterAppend,
        ) => "broker_unavailable",
        Some(OutOfOrderSequenceNumber | Fatal) => "fatal",
        Some(PurgeQueue | PurgeInflight) => "purged",
        Some(_) => "broker_error",
        None if matches!(error, KafkaError::Canceled) => "canceled",
        None => "client_error",
    }
}

type RelayProducer = FutureProducer<RelayContext>;

/// The relay: one idempotent producer, replaced by a new one only after a fatal error (an
/// idempotent producer that lost track of its sequence numbers refuses every later send).
pub struct KafkaRelay {
    producer: RwLock<Arc<RelayProducer>>,
    settings: KafkaSettings,
}

impl KafkaRelay {
    /// Creates the producer (no connection yet: librdkafka connects in the background and
    /// reconnects by itself). Fails on a property librdkafka refuses, naming it.
    pub fn new(settings: &KafkaSettings) -> Result<Self, Error> {
        Ok(KafkaRelay {
            producer: RwLock::new(Arc::new(Self::producer(settings)?)),
            settings: settings.clone(),
        })
    }

    fn producer(settings: &KafkaSettings) -> Result<RelayProducer, Error> {
        let mut config = ClientConfig::new();
        for (key, value) in &settings.properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &settings.bootstrap_servers)
            .set("client.id", &settings.client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.message_timeout.as_millis().to_string(),
            );
        config
            .create_with_context(RelayContext)
            .map_err(|e| Error::Producer(e.to_string()))
    }

    /// The producer to send with: the current one, or, if it raised a fatal error, a new one
    /// (with a new producer id; what the old one held unacknowledged failed, its tenants are
    /// parked and sent again by the new one, in order).
    fn current(&self) -> Result<Arc<RelayProducer>, HandlerError> {
        let producer = self
            .producer
            .read()
            .expect("the producer lock is never poisoned")
            .clone();
        let Some((code, reason)) = producer.client().fatal_error() else {
            return Ok(producer);
        };
        let mut slot = self
            .producer
            .write()
            .expect("the producer lock is never poisoned");
        if Arc::ptr_eq(&slot, &producer) {
            let fresh = Self::producer(&self.settings)
                .map_err(|e| HandlerError::new("client_error", e.to_string()))?;
            *slot = Arc::new(fresh);
            metrics::counter!("budgetd_kafka_producer_restarts_total").increment(1);
            tracing::error!(%code, reason, "the Kafka producer raised a fatal error; a new producer replaces it");
        }
        Ok(slot.clone())
    }

    /// Waits up to `timeout` for what librdkafka still holds (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self
            .producer
            .read()
            .expect("the producer lock is never poisoned")
            .clone();
        producer
            .flush(Timeout::After(timeout))
            .map_err(|e| Error::Producer(e.to_string()))
    }

    fn record<'a>(&'a self, event: &'a CloudEvent) -> FutureRecord<'a, str, [u8]> {
        let mut headers = OwnedHeaders::new_with_capacity(event.headers.len());
        for (key, value) in &event.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        FutureRecord::to(&self.settings.topic)
            .key(event.key.as_str())
            .payload(event.value.as_slice())
            .headers(headers)
    }

    fn failure(event: &OutboxEvent, error: &KafkaError) -> HandlerError {
        let class = error_class(error);
        metrics::counter!("budgetd_kafka_publish_errors_total", "class" => class).increment(1);
        HandlerError::new(class, format!("event {}: {error}", event.id))
    }
}

#[async_trait]
impl Reconciler for KafkaRelay {
    fn name(&self) -> &'static str {
        NAME
    }

    fn batches(&self) -> bool {
        true
    }

    async fn handle(&self, event: &OutboxEvent) -> Result<(), HandlerError> {
        let outcome = self.handle_batch(std::slice::from_ref(event)).await;
        match outcome.failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }

    /// Enqueues every event in order (one partition per tenant keeps it), then waits for
    /// each acknowledgement. The events before the first failure are published; an event
    /// after it that was acknowledged anyway is counted and logged (it will be sent again
    /// after the failed one: a consumer sees it twice, and deduplicates on `ce_id`).
    async fn handle_batch(&self, events: &[OutboxEvent]) -> BatchOutcome {
        let started = Instant::now();
        let producer = match self.current() {
            Ok(producer) => producer,
            Err(failure) => {
                return BatchOutcome {
                    done: 0,
                    failure: Some(failure),
                }
            }
        };
        let mut pending = Vec::with_capacity(events.len());
        let mut failure: Option<(usize, HandlerError)> = None;
        for (index, event) in events.iter().enumerate() {
            let message = match CloudEvent::from_outbox(event, &self.settings.source) {
                Ok(message) => message,
                Err(e) => {
                    metrics::counter!("budgetd_kafka_publish_errors_total", "class" => "invalid_event")
                        .increment(1);
                    failure = Some((index, HandlerError::new("invalid_event", e.to_string())));
                    break;
                }
            };
            match producer.send_result(self.record(&message)) {
                Ok(delivery) => pending.push(delivery),
                Err((error, _)) => {
                    failure = Some((index, Self::failure(event, &error)));
                    break;
                }
            }
        }
        let enqueued = pending.len();
        let mut done = enqueued;
        let mut first_failure = None;
        let mut overtaking = 0u64;
        for (index, delivery) in pending.into_iter().enumerate() {
            let outcome = match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(Self::failure(&events[index], &error)),
                Err(_canceled) => Err(HandlerError::new(
                    "canceled",
                    format!("event {}: the producer went away", events[index].id),
                )),
            };
            match outcome {
                Ok(()) if first_failure.is_some() => overtaking += 1,
                Ok(()) => {}
                Err(e) => {
                    if first_failure.is_none() {
                        done = index;
                        first_failure = Some(e);
                    }
                }
            }
        }
        if overtaking > 0 {
            metrics::counter!("budgetd_kafka_events_published_after_a_failure_total")
                .increment(overtaking);
            tracing::warn!(
                tenant = %events[0].aggregate_id,
                events = overtaking,
                "events were acknowledged after an earlier event of the tenant failed; they are sent again after it"
            );
        }
        metrics::counter!("budgetd_kafka_events_published_total").increment(done as u64);
        metrics::histogram!("budgetd_kafka_publish_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let failure = match (first_failure, failure) {
            (Some(e), _) => Some(e),
            (None, Some((index, e))) => {
                debug_assert_eq!(index, enqueued);
                Some(e)
            }
            (None, None) => None,
        };
        BatchOutcome { done, failure }
    }

    /// A topic is a log, not a state: there is nothing to bring in line with a tenant's
    /// current state, and every event still to publish is in the outbox. So a resync does
    /// nothing here; delivery is the runner's cursor.
    async fn converge(&self, _tenant: &ledger::tenant::TenantId) -> Result<(), HandlerError> {
        Ok(())
    }
}
