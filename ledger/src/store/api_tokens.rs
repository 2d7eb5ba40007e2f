//! Managed API tokens: created and revoked through the API (audited), looked up by the SHA-256
//! of the secret on every request that presents one, their last use recorded at most once a
//! minute. Only the hash is stored. Rows are never deleted (a trigger), so the access review
//! sees revoked and expired tokens too.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::audit::{self, AuditEvent};
use super::{query, query_scalar, unique_violation, Store};
use crate::audit::{timestamp, AuditContext};
use crate::error::{Error, Invalid};
use crate::tenant::TenantId;

/// How long a recorded last use stands before a newer one is written: reading a token's last
/// use to the minute is enough, and a busy token must not write on every request.
pub const LAST_USED_RESOLUTION_SECONDS: i64 = 60;

/// A token to create. The caller checked the name and the role (the daemon owns roles) and
/// generated the secret; the store gets only its hash.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub name: String,
    /// A role name the daemon parsed (`admin`, ..., `tenant`); the table checks it too.
    pub role: String,
    /// For the `tenant` role only: the tenant it speaks for, which must exist.
    pub tenant: Option<TenantId>,
    pub sha256: [u8; 32],
    pub expires_at: Option<DateTime<Utc>>,
}

/// A stored token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenRecord {
    pub id: i64,
    pub name: String,
    pub role: String,
    pub tenant: Option<TenantId>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl ApiTokenRecord {
    /// Whether the token is accepted at `now`: not revoked and not expired.
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }

    /// The audit form: what identifies the token and what it may do (never the hash).
    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "role": self.role,
            "tenant": self.tenant.as_ref().map(TenantId::as_str),
            "expires_at": self.expires_at.map(timestamp),
            "revoked_at": self.revoked_at.map(timestamp),
        })
    }
}

const COLUMNS: &str = "id, name, role, tenant_id, created_at, created_by, expires_at, \
                       last_used_at, revoked_at, revoked_by";

fn from_row(row: &PgRow) -> Result<ApiTokenRecord, Error> {
    let tenant: Option<String> = row.try_get("tenant_id")?;
    let tenant = tenant
        .map(|t| {
            TenantId::parse(&t).map_err(|e| {
                Error::Database(sqlx::Error::Decode(format!("api_tokens row: {e}").into()))
            })
        })
        .transpose()?;
    Ok(ApiTokenRecord {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: row.try_get("role")?,
        tenant,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        revoked_at: row.try_get("revoked_at")?,
        revoked_by: row.try_get("revoked_by")?,
    })
}

impl Store {
    /// Creates a token at `now` with its audit record (`token.create`), in one transaction.
    /// Returns the record and whether it is the first admin token ever created (from then on
    /// the bootstrap token is refused). `Invalid` `tenant` for a tenant that does not exist;
    /// `Conflict` `token_name_taken` when a live token has the name.
    pub async fn create_api_token(
        &self,
        ctx: &AuditContext,
        new: &NewApiToken,
        now: DateTime<Utc>,
    ) -> Result<(ApiTokenRecord, bool), Error> {
        self.run("create_api_token", || async {
            let mut tx = self.begin().await?;
            if let Some(tenant) = &new.tenant {
                let exists: bool =
                    query_scalar("select exists (select 1 from tenants where id = $1)")
                        .bind(tenant.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                if !exists {
                    return Err(Error::Invalid(Invalid::new(
                        "tenant",
                        format!("there is no tenant {:?}", tenant.as_str()),
                    )));
                }
            }
            let first_admin = new.role == "admin"
                && !query_scalar::<bool>(
                    "select exists (select 1 from api_tokens where role = 'admin')",
                )
                .fetch_one(&mut *tx)
                .await?;
            let row = query(&format!(
                "insert into api_tokens (name, role, tenant_id, token_sha256, created_at, \
                 created_by, expires_at) values ($1, $2, $3, $4, $5, $6, $7) \
                 returning {COLUMNS}"
            ))
            .bind(&new.name)
            .bind(&new.role)
            .bind(new.tenant.as_ref().map(TenantId::as_str))
            .bind(&new.sha256[..])
            .bind(now)
            .bind(&ctx.actor.name)
            .bind(new.expires_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                unique_violation(e, "token_name_taken", || {
                    format!(
                        "a live token is named {:?}; revoke it or choose another name",
                        new.name
                    )
                })
            })?;
            let record = from_row(&row)?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "token.create",
                    target_type: "api_token",
                    target_id: &record.id.to_string(),
                    before: None,
                    after: Some(record.to_json()),
                },
            )
            .await?;
            tx.commit().await?;
            Ok((record, first_admin))
        })
        .await
    }

    /// Every managed token, live, expired and revoked, oldest first.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRecord>, Error> {
        self.run("list_api_tokens", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!("select {COLUMNS} from api_tokens order by id"))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter().map(from_row).collect()
        })
        .await
    }

    /// Revokes token `id` at `now` with its audit record (`token.revoke`). Revoking a revoked
    /// token changes nothing and answers its record (a retried call). `NotFound` for an unknown
    /// id.
    pub async fn revoke_api_token(
        &self,
        ctx: &AuditContext,
        id: i64,
        now: DateTime<Utc>,
    ) -> Result<ApiTokenRecord, Error> {
        self.run("revoke_api_token", || async {
            let mut tx = self.begin().await?;
            let row = query(&format!(
                "select {COLUMNS} from api_tokens where id = $1 for update"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: "token",
                id: id.to_string(),
            })?;
            let before = from_row(&row)?;
            if before.revoked_at.is_some() {
                tx.commit().await?;
                return Ok(before);
            }
            let row = query(&format!(
                "update api_tokens set revoked_at = $2, revoked_by = $3 where id = $1 \
                 returning {COLUMNS}"
            ))
            .bind(id)
            .bind(now)
            .bind(&ctx.actor.name)
            .fetch_one(&mut *tx)
            .await?;
            let after = from_row(&row)?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "token.revoke",
                    target_type: "api_token",
                    target_id: &id.to_string(),
                    before: Some(before.to_json()),
                    after: Some(after.to_json()),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// The token whose secret hashes to `sha256`, live or not.
    pub async fn api_token_by_hash(
        &self,
        sha256: &[u8; 32],
    ) -> Result<Option<ApiTokenRecord>, Error> {
        self.run("api_token_by_hash", || async {
            let mut tx = self.begin().await?;
            let row = query(&format!(
                "select {COLUMNS} from api_tokens where token_sha256 = $1"
            ))
            .bind(&sha256[..])
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            row.as_ref().map(from_row).transpose()
        })
        .await
    }

    /// Records that token `id` was used at `now`, unless a use within
    /// [`LAST_USED_RESOLUTION_SECONDS`] before it is recorded (then nothing is written).
    pub async fn touch_api_token(&self, id: i64, now: DateTime<Utc>) -> Result<(), Error> {
        self.run("touch_api_token", || async {
            let mut tx = self.begin().await?;
            query(
                "update api_tokens set last_used_at = $2 where id = $1 \
                 and (last_used_at is null or last_used_at < $2 - make_interval(secs => $3))",
            )
            .bind(id)
            .bind(now)
            .bind(LAST_USED_RESOLUTION_SECONDS as f64)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Whether an admin token was ever created (revoked and expired ones count): from then on
    /// the bootstrap token from the environment is refused, for good.
    pub async fn admin_token_created(&self) -> Result<bool, Error> {
        self.run("admin_token_created", || async {
            let mut tx = self.begin().await?;
            let exists: bool =
                query_scalar("select exists (select 1 from api_tokens where role = 'admin')")
                    .fetch_one(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(exists)
        })
        .await
    }
}
