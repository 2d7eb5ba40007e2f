//! The audit trail's record form and hash chain.
//!
//! Every mutation appends one record in the same transaction as the change. Each record's hash
//! is `sha256(prev_hash || canonical(record))`, where the canonical form is JSON with sorted
//! keys and no whitespace, timestamps in RFC 3339 with microseconds. The first record's
//! `prev_hash` is 32 zero bytes. Records are numbered without gaps, so an altered, inserted or
//! deleted row breaks the chain at the first row it touches.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Who did it: the API token's name and role, or a system component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: String,
}

impl Actor {
    pub fn system(component: &str) -> Self {
        Actor {
            name: component.to_owned(),
            role: "system".to_owned(),
        }
    }
}

/// The caller of a mutation, carried into its audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditContext {
    pub actor: Actor,
    pub request_id: String,
}

/// One stored audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
    pub request_id: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

impl AuditRecord {
    /// The bytes the hash covers: everything but the hashes themselves.
    pub fn canonical(&self) -> String {
        let record = json!({
            "seq": self.seq,
            "at": timestamp(self.at),
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "target_type": self.target_type,
            "target_id": self.target_id,
            "before": self.before,
            "after": self.after,
            "request_id": self.request_id,
        });
        let mut out = String::new();
        write_canonical(&record, &mut out);
        out
    }

    pub fn compute_hash(&self, prev_hash: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash);
        hasher.update(self.canonical().as_bytes());
        hasher.finalize().into()
    }
}

/// RFC 3339 in UTC with microseconds: the precision Postgres keeps.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, truncated to what Postgres stores, so a record hashes the same before and after a
/// round trip through the database.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range")
}

/// `value` as canonical JSON: keys sorted at every level, no whitespace (what the audit chain and
/// the final report's SHA-256 hash).
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

/// JSON with object keys sorted at every level, independent of serde_json's map features.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The first place where a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    pub reason: String,
}

/// Walks records in `seq` order and checks numbering, linkage and every hash.
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: Vec<u8>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_vec(),
        }
    }
}

impl ChainVerifier {
    pub fn check(&mut self, record: &AuditRecord) -> Result<(), BrokenLink> {
        let broken = |reason: String| BrokenLink {
            seq: record.seq,
            reason,
        };
        if record.seq != self.expected_seq {
            return Err(broken(format!(
                "expected record {} next, found {} (a record was removed or inserted)",
                self.expected_seq, record.seq
            )));
        }
        if record.prev_hash != self.prev_hash {
            return Err(broken(format!(
                "prev_hash {} does not match the hash of record {} ({})",
                hex::encode(&record.prev_hash),
                record.seq - 1,
                hex::encode(&self.prev_hash)
            )));
        }
        let computed = record.compute_hash(&self.prev_hash);
        if record.hash != computed {
            return Err(broken(format!(
                "stored hash {} does not match the record's content (computed {})",
                hex::encode(&record.hash),
                hex::encode(computed)
            )));
        }
        self.expected_seq += 1;
        self.prev_hash = record.hash.clone();
        Ok(())
    }

    /// How many records were checked.
    pub fn verified(&self) -> i64 {
        self.expected_seq - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, prev: &[u8]) -> AuditRecord {
        let mut r = AuditRecord {
            seq,
            at: DateTime::from_timestamp(1_700_000_000 + seq, 123_456_000).unwrap(),
            actor: "alice".into(),
            role: "admin".into(),
            action: "tenant.create".into(),
            target_type: "tenant".into(),
            target_id: "acme".into(),
            before: None,
            after: Some(json!({"b": 1, "a": {"z": "x", "y": [1, 2]}})),
            request_id: format!("req-{seq}"),
            prev_hash: prev.to_vec(),
            hash: vec![],
        };
        r.hash = r.compute_hash(prev).to_vec();
        r
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_vec();
        (1..=n)
            .map(|seq| {
                let r = record(seq, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    fn verify(records: &[AuditRecord]) -> Result<i64, BrokenLink> {
        let mut v = ChainVerifier::default();
        for r in records {
            v.check(r)?;
        }
        Ok(v.verified())
    }

    #[test]
    fn canonical_form_sorts_keys_and_has_no_whitespace() {
        let r = record(1, &GENESIS_HASH);
        let c = r.canonical();
        assert!(c.starts_with(r#"{"action":"tenant.create","actor":"alice","after":{"a":{"y":[1,2],"z":"x"},"b":1},"at":"2023-11-14T22:13:21.123456Z""#), "{c}");
        assert!(!c.contains(' '));
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify(&chain(5)), Ok(5));
    }

    #[test]
    fn tampering_is_found_at_the_first_touched_record() {
        let mut records = chain(5);
        records[2].actor = "mallory".into();
        assert_eq!(verify(&records).unwrap_err().seq, 3);

        let mut records = chain(5);
        records.remove(1);
        assert_eq!(verify(&records).unwrap_err().seq, 3);

        let mut records = chain(5);
        let forged = record(4, &GENESIS_HASH);
        records[3] = forged;
        assert_eq!(verify(&records).unwrap_err().seq, 4);
    }
}
