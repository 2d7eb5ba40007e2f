//! An outbox event as a CloudEvent 1.0 in Kafka's binary content mode: the attributes are
//! `ce_` headers, the data (a versioned JSON document) is the value, the tenant id is the
//! key. Pure: the relay sends what [`CloudEvent::from_outbox`] builds.

use chrono::SecondsFormat;
use lifecycle::OutboxEvent;
use serde_json::{json, Value};

/// The version of the data document (`data.version`); a change that is not only an added
/// field is a new version, and a new `ce_type` suffix.
pub const DATA_VERSION: u32 = 1;

/// The prefix of every `ce_type`: `io.budgetd.tenant.created.v1`.
pub const TYPE_PREFIX: &str = "io.budgetd.";

/// What one Kafka message carries.
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// The message key: the tenant id, so a tenant's events share a partition.
    pub key: String,
    /// `(header, value)` in a fixed order: `ce_specversion`, `ce_id`, `ce_source`, `ce_type`,
    /// `ce_time`, `ce_subject`, `content-type`.
    pub headers: Vec<(&'static str, String)>,
    /// The data: `{"version": 1, "tenant_id": ..., "payload": {...}}`.
    pub value: Vec<u8>,
}

/// An outbox event the relay cannot turn into a CloudEvent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("outbox event {id}: {message}")]
pub struct EventError {
    pub id: i64,
    pub message: String,
}

/// The tenant an event is about: the aggregate id of a tenant's event (lifecycle, budget and,
/// since they share the tenant's order, enforcement events), or the action's `tenant_id` of an
/// event an older budgetd wrote on an `enforcement_action` aggregate.
pub fn tenant_of(event: &OutboxEvent) -> Result<String, EventError> {
    let fail = |message: String| EventError {
        id: event.id,
        message,
    };
    match event.aggregate_type.as_str() {
        "tenant" => Ok(event.aggregate_id.clone()),
        "enforcement_action" => event
            .payload
            .pointer("/action/tenant_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| fail("enforcement action event without action.tenant_id".to_owned())),
        other => Err(fail(format!("unknown aggregate type {other:?}"))),
    }
}

/// The CloudEvents type of an outbox event type: `tenant.created` →
/// `io.budgetd.tenant.created.v1`.
pub fn ce_type(event_type: &str) -> String {
    format!("{TYPE_PREFIX}{event_type}.v{DATA_VERSION}")
}

impl CloudEvent {
    pub fn from_outbox(event: &OutboxEvent, source: &str) -> Result<CloudEvent, EventError> {
        let tenant = tenant_of(event)?;
        let data = json!({
            "version": DATA_VERSION,
            "tenant_id": tenant,
            "payload": event.payload,
        });
        let value = serde_json::to_vec(&data).map_err(|e| EventError {
            id: event.id,
            message: format!("cannot encode the data: {e}"),
        })?;
        let headers = vec![
            ("ce_specversion", "1.0".to_owned()),
            ("ce_id", event.id.to_string()),
            ("ce_source", source.to_owned()),
            ("ce_type", ce_type(&event.event_type)),
            (
                "ce_time",
                event
                    .created_at
                    .to_rfc3339_opts(SecondsFormat::Micros, true),
            ),
            ("ce_subject", tenant.clone()),
            ("content-type", "application/json".to_owned()),
        ];
        Ok(CloudEvent {
            key: tenant,
            headers,
            value,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(aggregate_type: &str, aggregate_id: &str, payload: Value) -> OutboxEvent {
        OutboxEvent {
            id: 42,
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            seq: 3,
            event_type: "tenant.suspended".to_owned(),
            payload,
            created_at: chrono::Utc.with_ymd_and_hms(2026, 12, 2, 1, 2, 3).unwrap()
                + chrono::Duration::microseconds(456),
        }
    }

    #[test]
    fn a_tenant_event_is_a_cloud_event_keyed_by_its_tenant() {
        let e = CloudEvent::from_outbox(
            &event("tenant", "acme", json!({"previous_state": "active"})),
            "budgetd/eu-1",
        )
        .unwrap();
        assert_eq!(e.key, "acme");
        assert_eq!(
            e.headers,
            [
                ("ce_specversion", "1.0".to_owned()),
                ("ce_id", "42".to_owned()),
                ("ce_source", "budgetd/eu-1".to_owned()),
                ("ce_type", "io.budgetd.tenant.suspended.v1".to_owned()),
                ("ce_time", "2026-12-02T01:02:03.000456Z".to_owned()),
                ("ce_subject", "acme".to_owned()),
                ("content-type", "application/json".to_owned()),
            ]
        );
        let data: Value = serde_json::from_slice(&e.value).unwrap();
        assert_eq!(
            data,
            json!({"version": 1, "tenant_id": "acme", "payload": {"previous_state": "active"}})
        );
    }

    #[test]
    fn an_action_event_is_keyed_by_the_action_tenant() {
        let e = CloudEvent::from_outbox(
            &event(
                "enforcement_action",
                "7",
                json!({"action": {"tenant_id": "globex"}}),
            ),
            "budgetd",
        )
        .unwrap();
        assert_eq!(e.key, "globex");
        let missing = CloudEvent::from_outbox(&event("enforcement_action", "7", json!({})), "b");
        assert!(missing.unwrap_err().message.contains("tenant_id"));
        let unknown = CloudEvent::from_outbox(&event("invoice", "7", json!({})), "b");
        assert!(unknown.unwrap_err().message.contains("invoice"));
    }
}
