//! Tenant lifecycle mutations and reads. Every mutation writes its audit record and its outbox
//! event in the same transaction.

use std::collections::BTreeMap;

use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::query;
use super::{outbox, unique_violation, Store};
use crate::audit::{now_micros, AuditContext};
use crate::error::Error;
use crate::tenant::{
    DataResidency, DisplayName, Labels, LifecycleOp, NewTenant, Owner, OwnerGroup,
    QuotaProfileName, Tenant, TenantId, TenantPatch, TenantState, TransitionRefused,
};

pub(super) const TENANT_COLUMNS: &str = "id, display_name, owner, data_residency, labels, state, \
                              created_at, updated_at, state_changed_at, owner_group, quota_profile";

pub(super) fn tenant_from_row(row: &PgRow) -> Result<Tenant, Error> {
    let labels: sqlx::types::Json<BTreeMap<String, String>> = row.try_get("labels")?;
    let state: String = row.try_get("state")?;
    // Rows passed the same validation on the way in (and the table's checks); a failure here
    // means the database was edited by hand, which is worth a loud error.
    let corrupt = |e: crate::error::Invalid| {
        Error::Database(sqlx::Error::Decode(format!("tenants row: {e}").into()))
    };
    Ok(Tenant {
        id: TenantId::parse(row.try_get("id")?).map_err(corrupt)?,
        display_name: DisplayName::parse(row.try_get("display_name")?).map_err(corrupt)?,
        owner: Owner::parse(row.try_get("owner")?).map_err(corrupt)?,
        data_residency: DataResidency::parse(row.try_get("data_residency")?).map_err(corrupt)?,
        labels: Labels::parse(labels.0).map_err(corrupt)?,
        owner_group: row
            .try_get::<Option<&str>, _>("owner_group")?
            .map(OwnerGroup::parse)
            .transpose()
            .map_err(corrupt)?,
        quota_profile: row
            .try_get::<Option<&str>, _>("quota_profile")?
            .map(|p| QuotaProfileName::parse("quota_profile", p))
            .transpose()
            .map_err(corrupt)?,
        state: TenantState::parse(&state).map_err(corrupt)?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        state_changed_at: row.try_get("state_changed_at")?,
    })
}

pub(super) async fn lock_tenant(conn: &mut PgConnection, id: &TenantId) -> Result<Tenant, Error> {
    let row = query(&format!(
        "select {TENANT_COLUMNS} from tenants where id = $1 for update"
    ))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    match row {
        Some(row) => tenant_from_row(&row),
        None => Err(Error::NotFound {
            what: "tenant",
            id: id.to_string(),
        }),
    }
}

/// Inserts a tenant in `state` (a request's `requested`, an operator's `active`).
pub(super) async fn insert_tenant(
    conn: &mut PgConnection,
    new: &NewTenant,
    state: TenantState,
) -> Result<Tenant, Error> {
    let row = query(&format!(
        "insert into tenants ({TENANT_COLUMNS}) values ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9) \
         returning {TENANT_COLUMNS}"
    ))
    .bind(new.id.as_str())
    .bind(new.display_name.as_str())
    .bind(new.owner.as_str())
    .bind(new.data_residency.as_str())
    .bind(new.labels.to_json())
    .bind(state.as_str())
    .bind(now_micros())
    .bind(new.owner_group.as_ref().map(OwnerGroup::as_str))
    .bind(new.quota_profile.as_ref().map(QuotaProfileName::as_str))
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        unique_violation(e, "already_exists", || {
            format!("tenant {:?} already exists", new.id.as_str())
        })
    })?;
    tenant_from_row(&row)
}

impl Store {
    /// Creates an active tenant: an operator's create is its own approval (self-service
    /// requests go through [`Store::request_tenant`]).
    pub async fn create_tenant(
        &self,
        ctx: &AuditContext,
        new: &NewTenant,
    ) -> Result<Tenant, Error> {
        self.run("create_tenant", || async {
            let mut tx = self.begin().await?;
            let tenant = insert_tenant(&mut tx, new, TenantState::Active).await?;
            let record = tenant.to_json();
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "tenant.create",
                    target_type: "tenant",
                    target_id: tenant.id.as_str(),
                    before: None,
                    after: Some(record.clone()),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                tenant.id.as_str(),
                "tenant.created",
                record,
            )
            .await?;
            tx.commit().await?;
            Ok(tenant)
        })
        .await
    }

    pub async fn get_tenant(&self, id: &TenantId) -> Result<Tenant, Error> {
        self.run("get_tenant", || async {
            let mut tx = self.begin().await?;
            let row = query(&format!(
                "select {TENANT_COLUMNS} from tenants where id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            match row {
                Some(row) => tenant_from_row(&row),
                None => Err(Error::NotFound {
                    what: "tenant",
                    id: id.to_string(),
                }),
            }
        })
        .await
    }

    /// All tenants in id order, optionally only those in `state`.
    pub async fn list_tenants(&self, state: Option<TenantState>) -> Result<Vec<Tenant>, Error> {
        self.run("list_tenants", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {TENANT_COLUMNS} from tenants where ($1::text is null or state = $1) order by id"
            ))
            .bind(state.map(TenantState::as_str))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(tenant_from_row).collect()
        })
        .await
    }

    /// Changes descriptive fields. A patch that changes nothing writes nothing.
    pub async fn update_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        patch: &TenantPatch,
    ) -> Result<Tenant, Error> {
        self.run("update_tenant", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            if !before.state.is_mutable() {
                return Err(Error::conflict(
                    "tenant_not_mutable",
                    format!(
                        "tenant {:?} is {} and can no longer change",
                        id.as_str(),
                        before.state
                    ),
                ));
            }
            let mut after = before.clone();
            after.apply(patch);
            if after == before {
                return Ok(before);
            }
            let row = query(&format!(
                "update tenants set display_name = $2, owner = $3, labels = $4, updated_at = $5 \
                 where id = $1 returning {TENANT_COLUMNS}"
            ))
            .bind(id.as_str())
            .bind(after.display_name.as_str())
            .bind(after.owner.as_str())
            .bind(after.labels.to_json())
            .bind(now_micros())
            .fetch_one(&mut *tx)
            .await?;
            let after = tenant_from_row(&row)?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "tenant.update",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(before.to_json()),
                    after: Some(after.to_json()),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                id.as_str(),
                "tenant.updated",
                after.to_json(),
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Asks for a lifecycle operation (offboard, suspend, resume): a retried one is a no-op;
    /// one the table does not allow from the tenant's state is [`Error::Transition`].
    pub async fn operate_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        op: LifecycleOp,
        reason: &str,
    ) -> Result<Tenant, Error> {
        self.run("operate_tenant", || async {
            let mut tx = self.begin().await?;
            let after = operate_in(&mut tx, ctx, id, op, reason).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Moves a tenant to the state `to` (the enforcer asks by target state). Asking for the
    /// state it is already in is a no-op, so retried requests are harmless; a transition the
    /// table does not allow is [`Error::Transition`].
    pub async fn transition_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        to: TenantState,
        reason: &str,
    ) -> Result<Tenant, Error> {
        self.run("transition_tenant", || async {
            let mut tx = self.begin().await?;
            let after = transition_in(&mut tx, ctx, id, to, reason).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }
}

/// A lifecycle transition to `to` in the caller's transaction: the state, its audit record and
/// its outbox event.
pub(crate) async fn transition_in(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    id: &TenantId,
    to: TenantState,
    reason: &str,
) -> Result<Tenant, Error> {
    let before = lock_tenant(&mut *conn, id).await?;
    match before.state.decide_target(to) {
        Ok(None) => Ok(before),
        Ok(Some((op, to))) => write_transition(conn, ctx, before, op, to, reason).await,
        Err(refused) => Err(refused_error(id, refused)),
    }
}

/// A lifecycle operation in the caller's transaction.
async fn operate_in(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    id: &TenantId,
    op: LifecycleOp,
    reason: &str,
) -> Result<Tenant, Error> {
    let before = lock_tenant(&mut *conn, id).await?;
    match before.state.decide(op) {
        Ok(None) => Ok(before),
        Ok(Some(to)) => write_transition(conn, ctx, before, op, to, reason).await,
        Err(refused) => Err(refused_error(id, refused)),
    }
}

pub(super) fn refused_error(id: &TenantId, refused: TransitionRefused) -> Error {
    Error::Transition {
        id: id.to_string(),
        refused,
    }
}

pub(super) async fn set_state(
    conn: &mut PgConnection,
    id: &TenantId,
    to: TenantState,
) -> Result<Tenant, Error> {
    let row = query(&format!(
        "update tenants set state = $2, updated_at = $3, state_changed_at = $3 \
         where id = $1 returning {TENANT_COLUMNS}"
    ))
    .bind(id.as_str())
    .bind(to.as_str())
    .bind(now_micros())
    .fetch_one(&mut *conn)
    .await?;
    tenant_from_row(&row)
}

/// Writes a transition the table allowed: the state, its audit record and its outbox event.
async fn write_transition(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    before: Tenant,
    op: LifecycleOp,
    to: TenantState,
    reason: &str,
) -> Result<Tenant, Error> {
    let id = &before.id;
    let after = set_state(&mut *conn, id, to).await?;
    audit::append(
        &mut *conn,
        ctx,
        AuditEvent {
            action: &format!("tenant.{to}"),
            target_type: "tenant",
            target_id: id.as_str(),
            before: Some(before.to_json()),
            after: Some(json!({ "tenant": after.to_json(), "reason": reason })),
        },
    )
    .await?;
    let event = json!({
        "tenant": after.to_json(),
        "previous_state": before.state.as_str(),
        "reason": reason,
    });
    outbox::enqueue(&mut *conn, "tenant", id.as_str(), op.event_type(), event).await?;
    Ok(after)
}
