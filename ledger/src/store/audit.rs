//! Appending to and verifying the audit chain.

use futures_util::StreamExt;
use serde_json::Value;
use sqlx::{PgConnection, Row};

use super::Store;
use super::{query, query_as};
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

/// Appends one record in the caller's transaction.
pub(crate) async fn append(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    event: AuditEvent<'_>,
) -> Result<(), Error> {
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
