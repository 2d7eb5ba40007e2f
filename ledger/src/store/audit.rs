//! Appending to and verifying the audit chain.

use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::{PgConnection, Row};

use super::Store;
use super::{query, query_as, query_scalar};
use crate::audit::{
    now_micros, AuditContext, AuditRecord, BrokenLink, ChainVerifier, GENESIS_HASH,
};
use crate::error::Error;

/// Serialises appends, so each record links to the one before it.
const AUDIT_CHAIN_LOCK: i64 = 0x6275_6467_6574_6441; // "budgetdA"

/// What a mutation did, for its audit record.
pub(crate) struct AuditEvent<'a> {
    pub action: &'a str,
    pub target_type: &'a str,
    pub target_id: &'a str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// The members of a tenant's records that hold personal data: kept in `personal_data`, and
/// referred to from audit records by id, so that pseudonymising them leaves the chain intact.
pub(crate) const PERSONAL_FIELDS: [&str; 2] = ["owner", "display_name"];

/// Calls `f` with every string under a [`PERSONAL_FIELDS`] key, at any depth.
fn personal_values(value: &mut Value, f: &mut impl FnMut(&'static str, &mut Value)) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                match PERSONAL_FIELDS.iter().find(|&&f| f == key) {
                    Some(&field) if member.is_string() => f(field, member),
                    _ => personal_values(member, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| personal_values(item, f)),
        _ => {}
    }
}

/// Replaces the personal values of a tenant's record by `{"personal_data": <id>}`, storing each
/// value once per tenant and field in `personal_data`.
async fn refer_to_personal_data(
    conn: &mut PgConnection,
    tenant: &str,
    record: &mut Option<Value>,
) -> Result<(), Error> {
    let Some(record) = record else {
        return Ok(());
    };
    let mut found: Vec<(&'static str, String)> = Vec::new();
    personal_values(record, &mut |field, value| {
        let value = value.as_str().unwrap_or_default().to_owned();
        if !found.contains(&(field, value.clone())) {
            found.push((field, value));
        }
    });
    let mut ids = Vec::with_capacity(found.len());
    for (field, value) in &found {
        let id: i64 = query_scalar(
            "insert into personal_data (tenant_id, field, value) values ($1, $2, $3) \
             on conflict (tenant_id, field, value) do update set value = excluded.value \
             returning id",
        )
        .bind(tenant)
        .bind(field)
        .bind(value)
        .fetch_one(&mut *conn)
        .await?;
        ids.push(id);
    }
    personal_values(record, &mut |field, value| {
        let text = value.as_str().unwrap_or_default();
        if let Some(i) = found.iter().position(|(f, v)| *f == field && v == text) {
            *value = json!({ "personal_data": ids[i] });
        }
    });
    Ok(())
}

/// Appends one record in the caller's transaction. A tenant's personal data (owner, display
/// name) is stored beside the chain and referred to by id (see [`PERSONAL_FIELDS`]).
pub(crate) async fn append(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    mut event: AuditEvent<'_>,
) -> Result<(), Error> {
    if event.target_type == "tenant" {
        refer_to_personal_data(&mut *conn, event.target_id, &mut event.before).await?;
        refer_to_personal_data(&mut *conn, event.target_id, &mut event.after).await?;
    }
    query("select pg_advisory_xact_lock($1)")
        .bind(AUDIT_CHAIN_LOCK)
        .execute(&mut *conn)
        .await?;
    let last: Option<(i64, Vec<u8>)> =
        query_as("select seq, hash from audit_log order by seq desc limit 1")
            .fetch_optional(&mut *conn)
            .await?;
    let (prev_seq, prev_hash) = last.unwrap_or((0, GENESIS_HASH.to_vec()));
    let mut record = AuditRecord {
        seq: prev_seq + 1,
        at: now_micros(),
        actor: ctx.actor.name.clone(),
        role: ctx.actor.role.clone(),
        action: event.action.to_owned(),
        target_type: event.target_type.to_owned(),
        target_id: event.target_id.to_owned(),
        before: event.before,
        after: event.after,
        request_id: ctx.request_id.clone(),
        prev_hash,
        hash: Vec::new(),
    };
    record.hash = record.compute_hash(&record.prev_hash).to_vec();
    query(
        "insert into audit_log (seq, at, actor, role, action, target_type, target_id, before, \
         after, request_id, prev_hash, hash) values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(record.seq)
    .bind(record.at)
    .bind(&record.actor)
    .bind(&record.role)
    .bind(&record.action)
    .bind(&record.target_type)
    .bind(&record.target_id)
    .bind(&record.before)
    .bind(&record.after)
    .bind(&record.request_id)
    .bind(&record.prev_hash)
    .bind(&record.hash)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The result of walking the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainStatus {
    Intact { records: i64 },
    Broken(BrokenLink),
}

impl Store {
    /// Walks the audit log in order and recomputes every link. Streams, so memory stays flat
    /// however long the log is.
    pub async fn verify_audit_chain(&self) -> Result<ChainStatus, Error> {
        // The walk is as long as the log: allow it an hour.
        self.run_within(
            "audit_verify",
            3600 / (self.statement_timeout().as_secs() as u32).max(1),
            || async {
                let mut tx = self.pool_begin().await?;
                // A consistent snapshot of the whole log, without a statement timeout: the walk is
                // as long as the log.
                query("set transaction isolation level repeatable read, read only")
                    .execute(&mut *tx)
                    .await?;
                let mut verifier = ChainVerifier::default();
                let mut rows = query(
                    "select seq, at, actor, role, action, target_type, target_id, before, after, \
                 request_id, prev_hash, hash from audit_log order by seq",
                )
                .fetch(&mut *tx);
                while let Some(row) = rows.next().await {
                    let row = row?;
                    let record = AuditRecord {
                        seq: row.try_get("seq")?,
                        at: row.try_get("at")?,
                        actor: row.try_get("actor")?,
                        role: row.try_get("role")?,
                        action: row.try_get("action")?,
                        target_type: row.try_get("target_type")?,
                        target_id: row.try_get("target_id")?,
                        before: row.try_get("before")?,
                        after: row.try_get("after")?,
                        request_id: row.try_get("request_id")?,
                        prev_hash: row.try_get("prev_hash")?,
                        hash: row.try_get("hash")?,
                    };
                    if let Err(broken) = verifier.check(&record) {
                        return Ok(ChainStatus::Broken(broken));
                    }
                }
                Ok(ChainStatus::Intact {
                    records: verifier.verified(),
                })
            },
        )
        .await
    }
}
