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

/// Which audit records to page through, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Records about this tenant: the tenant itself and its enforcement actions.
    pub tenant: Option<crate::tenant::TenantId>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// `at >= from`.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// `at < to`.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only records with a smaller `seq` (the keyset cursor of the next page).
    pub before_seq: Option<i64>,
    pub limit: i64,
}

/// What one actor did, from the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorActivity {
    pub actor: String,
    pub role: String,
    /// Its latest record, at any time.
    pub last_acted_at: chrono::DateTime<chrono::Utc>,
    /// Its records in the period, by action (sorted by action).
    pub actions_in_period: Vec<(String, i64)>,
}

const AUDIT_COLUMNS: &str = "seq, at, actor, role, action, target_type, target_id, before, \
                             after, request_id, prev_hash, hash";

fn record_from_row(row: &sqlx::postgres::PgRow) -> Result<AuditRecord, Error> {
    Ok(AuditRecord {
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
    })
}

impl Store {
    /// One page of the audit trail, newest first. Paging on `seq` (gapless, append-only) is
    /// stable: records appended while a reader pages have larger numbers and never shift a page.
    pub async fn audit_page(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, Error> {
        self.run("audit_page", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {AUDIT_COLUMNS} from audit_log \
                 where ($1::text is null \
                        or (target_type = 'tenant' and target_id = $1) \
                        or (target_type = 'enforcement_action' and target_id in \
                            (select id::text from enforcement_actions where tenant_id = $1))) \
                   and ($2::text is null or actor = $2) \
                   and ($3::text is null or action = $3) \
                   and ($4::timestamptz is null or at >= $4) \
                   and ($5::timestamptz is null or at < $5) \
                   and ($6::bigint is null or seq < $6) \
                 order by seq desc limit $7"
            ))
            .bind(filter.tenant.as_ref().map(|t| t.as_str()))
            .bind(filter.actor.as_deref())
            .bind(filter.action.as_deref())
            .bind(filter.from)
            .bind(filter.to)
            .bind(filter.before_seq)
            .bind(filter.limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(record_from_row).collect()
        })
        .await
    }

    /// Every actor of the audit trail: when it last acted, and what it did in `[from, to)`.
    pub async fn actor_activity(
        &self,
        from: chrono::DateTime<chrono::Utc>,
        to: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<ActorActivity>, Error> {
        self.run("actor_activity", || async {
            let mut tx = self.begin().await?;
            let rows = query(
                "select actor, role, action, max(at) as last_at, \
                        count(*) filter (where at >= $1 and at < $2) as n \
                 from audit_log group by actor, role, action order by actor, role, action",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            let mut out: Vec<ActorActivity> = Vec::new();
            for row in &rows {
                let actor: String = row.try_get("actor")?;
                let role: String = row.try_get("role")?;
                let action: String = row.try_get("action")?;
                let last_at: chrono::DateTime<chrono::Utc> = row.try_get("last_at")?;
                let n: i64 = row.try_get("n")?;
                let same = out
                    .last()
                    .is_some_and(|a| a.actor == actor && a.role == role);
                if !same {
                    out.push(ActorActivity {
                        actor,
                        role,
                        last_acted_at: last_at,
                        actions_in_period: Vec::new(),
                    });
                }
                let current = out.last_mut().expect("pushed above");
                current.last_acted_at = current.last_acted_at.max(last_at);
                if n > 0 {
                    current.actions_in_period.push((action, n));
                }
            }
            Ok(out)
        })
        .await
    }
}
