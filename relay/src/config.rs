//! `[kafka]`: where the relay publishes, what it may pass to librdkafka, and how the runner
//! paces it (`[kafka.relay]`). Without the section no relay runs.

use std::collections::BTreeMap;
use std::time::Duration;

use ledger::config::{required, timeout_millis, within};
use ledger::Invalid;
use serde::{Deserialize, Serialize, Serializer};

/// Properties the relay sets itself: passing them would weaken delivery (acks, idempotence)
/// or contradict a key of `[kafka]`.
pub const RESERVED_PROPERTIES: [&str; 9] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "transactional.id",
];

/// `[kafka]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSection {
    /// `host:port,host:port`: librdkafka's `bootstrap.servers`. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap_servers: Option<String>,
    pub topic: String,
    pub client_id: String,
    /// The CloudEvents `source` of every event, e.g. `budgetd/prod-eu-1`.
    pub source: String,
    /// How long librdkafka tries to deliver one event (`message.timeout.ms`) before the relay
    /// hears that it failed and parks the tenant.
    pub message_timeout_ms: u64,
    /// Passed to librdkafka as they are: `security.protocol`, `sasl.*`, `ssl.*`,
    /// `compression.type`, `linger.ms`, ... Values of keys naming a password, secret or key
    /// are shown as `***` by `budgetd config show`.
    #[serde(serialize_with = "masked")]
    pub properties: BTreeMap<String, String>,
    /// `[kafka.relay]`: the runner's pacing.
    pub relay: RelaySection,
}

impl Default for KafkaSection {
    fn default() -> Self {
        KafkaSection {
            bootstrap_servers: None,
            topic: "budgetd.events".to_owned(),
            client_id: "budgetd".to_owned(),
            source: "budgetd".to_owned(),
            message_timeout_ms: 30_000,
            properties: BTreeMap::new(),
            relay: RelaySection::default(),
        }
    }
}

/// `[kafka.relay]`: as `[lifecycle.reconciler]`, with limits for a stream of events: large
/// batches, many tenants at once.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySection {
    pub scan_batch: u32,
    pub max_events_per_step: u32,
    pub concurrency: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub poll_interval_ms: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        RelaySection {
            scan_batch: 5_000,
            max_events_per_step: 5_000,
            concurrency: 64,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 60_000,
            poll_interval_ms: 500,
        }
    }
}

/// Whether `key`'s value is a credential (shown as `***`).
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "jaas", "key.pem", "keystore", "token"]
        .iter()
        .any(|word| key.contains(word))
        || key.ends_with(".key")
}

fn masked<S: Serializer>(properties: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let shown: BTreeMap<&str, &str> = properties
        .iter()
        .map(|(k, v)| {
            let v = if is_secret(k) { "***" } else { v.as_str() };
            (k.as_str(), v)
        })
        .collect();
    shown.serialize(s)
}

/// The validated `[kafka]`.
#[derive(Clone)]
pub struct KafkaSettings {
    pub bootstrap_servers: String,
    pub topic: String,
    pub client_id: String,
    pub source: String,
    pub message_timeout: Duration,
    /// `[kafka.properties]`, none of them reserved.
    pub properties: BTreeMap<String, String>,
    pub runner: lifecycle::RunnerSettings,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaSettings")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("topic", &self.topic)
            .field("client_id", &self.client_id)
            .field("source", &self.source)
            .field("message_timeout", &self.message_timeout)
            .field("properties", &properties)
            .field("runner", &self.runner)
            .finish()
    }
}

/// A Kafka topic name: 1-249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn topic(name: &str) -> Result<String, Invalid> {
    let valid = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(name.to_owned())
    } else {
        Err(Invalid::new(
            "kafka.topic",
            format!("{name:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ))
    }
}

/// One line of printable text, at most `max` characters.
fn text(value: &str, max: usize, key: &str) -> Result<String, Invalid> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Invalid::new(key, "must not be empty"));
    }
    if value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(Invalid::new(
            key,
            format!("must be one line of at most {max} characters"),
        ));
    }
    Ok(value.to_owned())
}

impl KafkaSection {
    pub fn validate(&self) -> Result<KafkaSettings, Invalid> {
        let bootstrap_servers = text(
            &required(self.bootstrap_servers.clone(), "kafka.bootstrap_servers")?,
            4096,
            "kafka.bootstrap_servers",
        )?;
        for server in bootstrap_servers.split(',') {
            let server = server.trim();
            let port = server.rsplit_once(':').map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p > 0) {
                return Err(Invalid::new(
                    "kafka.bootstrap_servers",
                    format!("{server:?} is not host:port (a comma-separated list of them)"),
                ));
            }
        }
        let message_timeout = timeout_millis(self.message_timeout_ms, "kafka.message_timeout_ms")?;
        for (key, value) in &self.properties {
            let field = format!("kafka.properties.{key:?}");
            if RESERVED_PROPERTIES.contains(&key.as_str()) {
                return Err(Invalid::new(
                    field,
                    "is set by budgetd (bootstrap_servers, client_id, message_timeout_ms, or fixed: enable.idempotence=true, acks=all, no transactions)",
                ));
            }
            if key.is_empty() || value.chars().any(char::is_control) {
                return Err(Invalid::new(
                    field,
                    "must be a non-empty key with a one-line value",
                ));
            }
        }
        let relay = &self.relay;
        let key = |field: &str| format!("kafka.relay.{field}");
        for (field, value) in [
            ("scan_batch", u64::from(relay.scan_batch)),
            ("max_events_per_step", u64::from(relay.max_events_per_step)),
            ("concurrency", u64::from(relay.concurrency)),
        ] {
            within(value, 1..=100_000, &key(field))?;
        }
        within(relay.concurrency, 1..=1_000, &key("concurrency"))?;
        let backoff_base = timeout_millis(relay.backoff_base_ms, &key("backoff_base_ms"))?;
        let backoff_cap = timeout_millis(relay.backoff_cap_ms, &key("backoff_cap_ms"))?;
        if backoff_cap < backoff_base {
            return Err(Invalid::new(
                key("backoff_cap_ms"),
                "must be at least backoff_base_ms",
            ));
        }
        let poll_interval = timeout_millis(relay.poll_interval_ms, &key("poll_interval_ms"))?;
        Ok(KafkaSettings {
            bootstrap_servers,
            topic: topic(&self.topic)?,
            client_id: text(&self.client_id, 255, "kafka.client_id")?,
            source: text(&self.source, 1024, "kafka.source")?,
            message_timeout,
            properties: self.properties.clone(),
            runner: lifecycle::RunnerSettings {
                scan_batch: relay.scan_batch,
                max_events_per_step: relay.max_events_per_step,
                concurrency: relay.concurrency as usize,
                // A batch ends when librdkafka reports every event: at most the message
                // timeout, plus the time to hand them over.
                call_timeout: message_timeout + Duration::from_secs(10),
                backoff_base,
                backoff_cap,
                poll_interval,
                // A log has no state to repair (see `KafkaRelay::converge`): a resync only
                // walks the tenants, so once a day is plenty.
                resync_interval: Duration::from_secs(86_400),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(json: serde_json::Value) -> KafkaSection {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn defaults_and_required_keys() {
        let err = KafkaSection::default().validate().unwrap_err();
        assert_eq!(err.field, "kafka.bootstrap_servers");
        let settings = section(serde_json::json!({ "bootstrap_servers": "k1:9092,k2:9093" }))
            .validate()
            .unwrap();
        assert_eq!(settings.topic, "budgetd.events");
        assert_eq!(settings.client_id, "budgetd");
        assert_eq!(settings.message_timeout, Duration::from_secs(30));
        assert_eq!(settings.runner.max_events_per_step, 5_000);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (
                serde_json::json!({ "bootstrap_servers": "kafka" }),
                "kafka.bootstrap_servers",
            ),
            (
                serde_json::json!({ "bootstrap_servers": "k:9092", "topic": "a b" }),
                "kafka.topic",
            ),
            (
                serde_json::json!({ "bootstrap_servers": "k:9092", "message_timeout_ms": 5 }),
                "kafka.message_timeout_ms",
            ),
            (
                serde_json::json!({ "bootstrap_servers": "k:9092", "properties": { "acks": "1" } }),
                "kafka.properties.\"acks\"",
            ),
            (
                serde_json::json!({ "bootstrap_servers": "k:9092", "relay": { "concurrency": 0 } }),
                "kafka.relay.concurrency",
            ),
            (
                serde_json::json!({ "bootstrap_servers": "k:9092",
                    "relay": { "backoff_base_ms": 5000, "backoff_cap_ms": 1000 } }),
                "kafka.relay.backoff_cap_ms",
            ),
        ];
        for (json, field) in cases {
            let err = section(json.clone()).validate().unwrap_err();
            assert_eq!(err.field, field, "{json}");
        }
        let typo = serde_json::json!({ "bootstrap_servers": "k:9092", "topik": "x" });
        assert!(serde_json::from_value::<KafkaSection>(typo).is_err());
    }

    #[test]
    fn credentials_are_never_shown() {
        let s = section(serde_json::json!({
            "bootstrap_servers": "k:9092",
            "properties": {
                "security.protocol": "SASL_SSL",
                "sasl.username": "budgetd",
                "sasl.password": "hunter2",
                "ssl.key.password": "hunter3",
            }
        }));
        let shown = serde_json::to_string(&s).unwrap();
        assert!(
            shown.contains("SASL_SSL") && shown.contains("budgetd"),
            "{shown}"
        );
        assert!(!shown.contains("hunter"), "{shown}");
        let debug = format!("{:?}", s.validate().unwrap());
        assert!(!debug.contains("hunter"), "{debug}");
    }
}
