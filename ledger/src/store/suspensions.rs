//! Operator suspensions (`POST /api/v1/tenants/{id}/suspend|resume`). The API records the
//! operator's intent together with the tenant's state change (one transaction, with audit and
//! outbox); the leader's enforcer carries it out in the cluster exactly as it does a budget
//! suspension: it observes the tenant, records the changes and their inverse (the prior values)
//! before its first write, scales to zero, and after a resume writes the inverse back. The rows
//! live apart from the budget's enforcement actions, so budget logic (`enforcer::plan`) never
//! sees, opens, restores or resumes one.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::enforcement::check_fence;
use super::tenants::{lock_tenant, refused_error, write_transition};
use super::{query, query_scalar, Store};
use crate::audit::{now_micros, AuditContext};
use crate::enforcement::Fence;
use crate::error::Error;
use crate::names::Reason;
use crate::tenant::{LifecycleOp, SuspendedBy, Tenant, TenantId, TenantState};

/// One operator suspension, as the enforcer reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSuspension {
    pub id: i64,
    pub tenant: TenantId,
    pub reason: String,
    pub suspended_by: String,
    pub suspended_at: DateTime<Utc>,
    /// The cluster changes, recorded before the first write, and their exact inverse.
    pub forward: Option<Value>,
    pub backward: Option<Value>,
    pub applied_at: Option<DateTime<Utc>>,
    /// Set once the operator resumed the tenant: `backward` is to be written back.
    pub resumed_at: Option<DateTime<Utc>>,
    pub restored_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

impl OperatorSuspension {
    /// Whether the operator resumed the tenant and the cluster is still to be restored.
    pub fn is_resuming(&self) -> bool {
        self.resumed_at.is_some() && self.restored_at.is_none()
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "tenant_id": self.tenant.as_str(),
            "reason": self.reason,
            "suspended_by": self.suspended_by,
            "forward": self.forward,
            "backward": self.backward,
            "applied_at": self.applied_at.map(|t| t.to_rfc3339()),
            "resumed_at": self.resumed_at.map(|t| t.to_rfc3339()),
            "restored_at": self.restored_at.map(|t| t.to_rfc3339()),
        })
    }
}

const COLUMNS: &str = "suspension_id, tenant_id, reason, suspended_by, suspended_at, forward, \
                       backward, applied_at, resumed_at, restored_at, attempts, last_error";

fn from_row(row: &PgRow) -> Result<OperatorSuspension, Error> {
    Ok(OperatorSuspension {
        id: row.try_get("suspension_id")?,
        tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(|e| {
            Error::Database(sqlx::Error::Decode(
                format!("operator_suspensions row: {e}").into(),
            ))
        })?,
        reason: row.try_get("reason")?,
        suspended_by: row.try_get("suspended_by")?,
        suspended_at: row.try_get("suspended_at")?,
        forward: row.try_get("forward")?,
        backward: row.try_get("backward")?,
        applied_at: row.try_get("applied_at")?,
        resumed_at: row.try_get("resumed_at")?,
        restored_at: row.try_get("restored_at")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
    })
}

/// The tenant's suspension that is not yet restored, locked.
async fn lock_unrestored(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<OperatorSuspension>, Error> {
    let row = query(&format!(
        "select {COLUMNS} from operator_suspensions where tenant_id = $1 and restored_at is null \
         for update"
    ))
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

async fn lock_by_id(conn: &mut PgConnection, id: i64) -> Result<OperatorSuspension, Error> {
    let row = query(&format!(
        "select {COLUMNS} from operator_suspensions where suspension_id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => from_row(&row),
        None => Err(Error::NotFound {
            what: "operator suspension",
            id: id.to_string(),
        }),
    }
}

fn suspended_by_budget(tenant: &TenantId) -> Error {
    Error::conflict(
        "suspended_by_budget",
        format!(
            "tenant {:?} is suspended by budget enforcement, which an operator's suspend or \
             resume does not override; to lift it, exempt the tenant (PUT \
             /api/v1/tenants/{tenant}/exemption) or raise its budget",
            tenant.as_str()
        ),
    )
}

impl Store {
    /// An operator suspends an active tenant: the tenant becomes `suspended` (audit, outbox
    /// `tenant.suspended`) together with the suspension the enforcer applies. Suspending a
    /// tenant the operator suspended already is a no-op; one that budget enforcement suspended
    /// is 409 `suspended_by_budget`; other states are [`Error::Transition`].
    pub async fn operator_suspend(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
    ) -> Result<Tenant, Error> {
        self.run("operator_suspend", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            match before.suspended_by {
                Some(SuspendedBy::Operator) => {
                    tx.commit().await?;
                    return Ok(before);
                }
                Some(SuspendedBy::Budget) => return Err(suspended_by_budget(id)),
                None => {}
            }
            let to = before
                .state
                .apply(LifecycleOp::Suspend)
                .map_err(|refused| refused_error(id, refused))?;
            let now = now_micros();
            match lock_unrestored(&mut tx, id).await? {
                // Resumed, but the enforcer has not restored the cluster yet: the same record
                // suspends again (its recorded changes are re-applied, and its prior values stay
                // those from before the first suspension).
                Some(resuming) => {
                    query(
                        "update operator_suspensions set reason = $2, suspended_by = $3, \
                         suspended_at = $4, applied_at = null, resume_reason = null, \
                         resumed_by = null, resumed_at = null where suspension_id = $1",
                    )
                    .bind(resuming.id)
                    .bind(reason.as_str())
                    .bind(&ctx.actor.name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    query(
                        "insert into operator_suspensions (tenant_id, reason, suspended_by, \
                         suspended_at) values ($1, $2, $3, $4)",
                    )
                    .bind(id.as_str())
                    .bind(reason.as_str())
                    .bind(&ctx.actor.name)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let after = write_transition(
                &mut tx,
                ctx,
                before,
                LifecycleOp::Suspend,
                to,
                reason.as_str(),
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// An operator resumes a tenant they suspended: the tenant becomes `active` (audit, outbox
    /// `tenant.resumed`) and the enforcer writes the recorded prior values back (before it
    /// plans anything else for the tenant). Resuming an active tenant is a no-op; a tenant
    /// budget enforcement suspended is 409 `suspended_by_budget`.
    pub async fn operator_resume(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
    ) -> Result<Tenant, Error> {
        self.run("operator_resume", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            let to = match before.state.decide(LifecycleOp::Resume) {
                Ok(None) => {
                    tx.commit().await?;
                    return Ok(before);
                }
                Ok(Some(to)) => to,
                Err(refused) => return Err(refused_error(id, refused)),
            };
            // A budget suspension in force holds the tenant whoever else suspended it.
            let budget_applied: bool = query_scalar(
                "select exists(select 1 from enforcement_actions where tenant_id = $1 \
                 and kind = 'suspend' and state = 'applied')",
            )
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if budget_applied || before.suspended_by != Some(SuspendedBy::Operator) {
                return Err(suspended_by_budget(id));
            }
            let suspension = lock_unrestored(&mut tx, id)
                .await?
                .expect("an operator-suspended tenant has an unrestored suspension");
            let now = now_micros();
            // Nothing recorded yet: the enforcer never touched the cluster, nothing to restore.
            let restored = suspension.forward.is_none().then_some(now);
            query(
                "update operator_suspensions set resume_reason = $2, resumed_by = $3, \
                 resumed_at = $4, restored_at = $5 where suspension_id = $1",
            )
            .bind(suspension.id)
            .bind(reason.as_str())
            .bind(&ctx.actor.name)
            .bind(now)
            .bind(restored)
            .execute(&mut *tx)
            .await?;
            let after = write_transition(
                &mut tx,
                ctx,
                before,
                LifecycleOp::Resume,
                to,
                reason.as_str(),
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// The suspensions the enforcer still has work on: every one not yet restored (to apply,
    /// keep applied, or restore), oldest first; none of an offboarded tenant, whose namespaces
    /// are gone.
    pub async fn unrestored_operator_suspensions(&self) -> Result<Vec<OperatorSuspension>, Error> {
        self.run("unrestored_operator_suspensions", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {COLUMNS} from operator_suspensions where restored_at is null \
                 and tenant_id not in (select id from tenants where state = 'offboarded') \
                 order by suspension_id"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(from_row).collect()
        })
        .await
    }

    /// Records the changes a suspension is about to make and their inverse, before it makes
    /// them. The first record is kept (after a crash the cluster may already show the
    /// changes). Returns the suspension as stored.
    pub async fn record_suspension_effect(
        &self,
        fence: Fence,
        id: i64,
        forward: &Value,
        backward: &Value,
    ) -> Result<OperatorSuspension, Error> {
        self.run("record_suspension_effect", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_by_id(&mut tx, id).await?;
            if before.forward.is_some() || before.resumed_at.is_some() {
                tx.commit().await?;
                return Ok(before);
            }
            query(
                "update operator_suspensions set forward = $2, backward = $3, fencing_token = $4 \
                 where suspension_id = $1",
            )
            .bind(id)
            .bind(forward)
            .bind(backward)
            .bind(fence.0)
            .execute(&mut *tx)
            .await?;
            let after = lock_by_id(&mut tx, id).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Marks a suspension applied (a no-op once the operator resumed: the restore follows).
    pub async fn mark_suspension_applied(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        outcome: &Value,
    ) -> Result<OperatorSuspension, Error> {
        self.suspension_step(fence, ctx, id, outcome, false).await
    }

    /// Marks a resumed suspension restored: the cluster shows the prior values again.
    pub async fn mark_suspension_restored(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        outcome: &Value,
    ) -> Result<OperatorSuspension, Error> {
        self.suspension_step(fence, ctx, id, outcome, true).await
    }

    async fn suspension_step(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        outcome: &Value,
        restore: bool,
    ) -> Result<OperatorSuspension, Error> {
        self.run("operator_suspension_step", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_by_id(&mut tx, id).await?;
            let due = if restore {
                before.is_resuming()
            } else {
                before.resumed_at.is_none() && before.applied_at.is_none()
            };
            if !due {
                tx.commit().await?;
                return Ok(before);
            }
            let set = if restore {
                "restored_at = $2"
            } else {
                "applied_at = $2"
            };
            query(&format!(
                "update operator_suspensions set {set}, attempts = attempts + 1, \
                 last_error = null, fencing_token = $3 where suspension_id = $1"
            ))
            .bind(id)
            .bind(now_micros())
            .bind(fence.0)
            .execute(&mut *tx)
            .await?;
            let after = lock_by_id(&mut tx, id).await?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: if restore {
                        "tenant.suspension_restored"
                    } else {
                        "tenant.suspension_applied"
                    },
                    target_type: "tenant",
                    target_id: after.tenant.as_str(),
                    before: Some(before.to_json()),
                    after: Some(json!({ "suspension": after.to_json(), "outcome": outcome })),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Counts a failed attempt to apply or restore a suspension; the next cycle tries again.
    pub async fn record_suspension_failure(
        &self,
        fence: Fence,
        id: i64,
        error: &str,
    ) -> Result<(), Error> {
        self.run("record_suspension_failure", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            query(
                "update operator_suspensions set attempts = attempts + 1, last_error = $2 \
                 where suspension_id = $1",
            )
            .bind(id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Whether budget enforcement may resume this tenant: not while an operator's suspension holds
/// it (the budget's close then restores its own changes and leaves the state alone).
pub(crate) fn operator_holds(tenant: &Tenant) -> bool {
    tenant.state == TenantState::Suspended && tenant.suspended_by == Some(SuspendedBy::Operator)
}
