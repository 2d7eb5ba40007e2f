//! Tenant lifecycle mutations and reads. Every mutation writes its audit record and its outbox
//! event in the same transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::{outbox, unique_violation, Store};
use super::{query, query_scalar};
use crate::audit::{now_micros, AuditContext};
use crate::error::Error;
use crate::names::Reason;
use crate::tenant::{
    DataResidency, DisplayName, Isolation, Labels, LifecycleOp, NamespaceName, NewTenant, Owner,
    OwnerGroup, QuotaProfileName, SuspendedBy, Tenant, TenantId, TenantPatch, TenantState,
    TransitionRefused,
};

/// The columns an insert writes.
const TENANT_FIELDS: &str = "id, display_name, owner, data_residency, labels, state, \
                             created_at, updated_at, state_changed_at, owner_group, quota_profile";

/// What a tenant read selects: its columns, its namespaces and whether an operator's
/// suspension holds it. Unqualified `id` is the tenant's (neither subquery's table has one), so
/// this works on `tenants` alone, joined, and in `returning`.
pub(super) const TENANT_COLUMNS: &str = "id, display_name, owner, data_residency, labels, state, \
     created_at, updated_at, state_changed_at, owner_group, quota_profile, \
     isolated_at, isolated_by, isolation_reason, \
     array(select n.namespace from tenant_namespaces n where n.tenant_id = id \
           order by n.namespace) as namespaces, \
     exists(select 1 from operator_suspensions s where s.tenant_id = id \
            and s.resumed_at is null) as operator_suspended";

/// A tenant as the collector sees it ([`Store::tenant_billing`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBilling {
    pub id: TenantId,
    pub state: TenantState,
    /// When it first owned one of its current namespaces (or was created, owning none).
    pub namespaces_since: DateTime<Utc>,
}

pub(super) fn tenant_from_row(row: &PgRow) -> Result<Tenant, Error> {
    let labels: sqlx::types::Json<BTreeMap<String, String>> = row.try_get("labels")?;
    let state: String = row.try_get("state")?;
    // Rows passed the same validation on the way in (and the table's checks); a failure here
    // means the database was edited by hand, which is worth a loud error.
    let corrupt = |e: crate::error::Invalid| {
        Error::Database(sqlx::Error::Decode(format!("tenants row: {e}").into()))
    };
    let state = TenantState::parse(&state).map_err(corrupt)?;
    let namespaces: Vec<String> = row.try_get("namespaces")?;
    let isolation = match row.try_get::<Option<DateTime<Utc>>, _>("isolated_at")? {
        None => None,
        Some(at) => Some(Isolation {
            at,
            by: row.try_get("isolated_by")?,
            reason: row.try_get("isolation_reason")?,
        }),
    };
    let operator_suspended: bool = row.try_get("operator_suspended")?;
    Ok(Tenant {
        namespaces: namespaces
            .iter()
            .map(|n| NamespaceName::parse("namespaces", n))
            .collect::<Result<_, _>>()
            .map_err(corrupt)?,
        isolation,
        suspended_by: (state == TenantState::Suspended).then_some(if operator_suspended {
            SuspendedBy::Operator
        } else {
            SuspendedBy::Budget
        }),
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
        state,
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

/// The tenant as stored (in the caller's transaction, no lock).
pub(super) async fn load_tenant(conn: &mut PgConnection, id: &TenantId) -> Result<Tenant, Error> {
    let row = query(&format!(
        "select {TENANT_COLUMNS} from tenants where id = $1"
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

/// The namespaces a tenant asks for (`namespaces`), or the one named like its id.
pub(super) fn namespaces_of(new: &NewTenant) -> Result<Vec<NamespaceName>, Error> {
    if new.namespaces.is_empty() {
        Ok(NamespaceName::default_for(&new.id)?)
    } else {
        Ok(new.namespaces.clone())
    }
}

/// Fails with 409 `namespace_taken`, naming the namespace (not its tenant), if another tenant
/// owns one of `namespaces`.
pub(super) async fn check_namespaces_free(
    conn: &mut PgConnection,
    id: &TenantId,
    namespaces: &[NamespaceName],
) -> Result<(), Error> {
    let names: Vec<&str> = namespaces.iter().map(NamespaceName::as_str).collect();
    let taken: Option<String> = query_scalar(
        "select namespace from tenant_namespaces where namespace = any($1) and tenant_id <> $2 \
         order by namespace limit 1",
    )
    .bind(&names)
    .bind(id.as_str())
    .fetch_optional(&mut *conn)
    .await?;
    match taken {
        Some(namespace) => Err(namespace_taken(&namespace)),
        None => Ok(()),
    }
}

fn namespace_taken(namespace: &str) -> Error {
    Error::conflict(
        "namespace_taken",
        format!("namespace {namespace:?} belongs to another tenant"),
    )
}

/// Makes `namespaces` the tenant's (those it already owns stay as they are).
pub(super) async fn claim_namespaces(
    conn: &mut PgConnection,
    id: &TenantId,
    namespaces: &[NamespaceName],
) -> Result<(), Error> {
    check_namespaces_free(&mut *conn, id, namespaces).await?;
    let names: Vec<&str> = namespaces.iter().map(NamespaceName::as_str).collect();
    query(
        "insert into tenant_namespaces (namespace, tenant_id, added_at) \
         select n, $2, $3 from unnest($1::text[]) n on conflict (namespace) do nothing",
    )
    .bind(&names)
    .bind(id.as_str())
    .bind(now_micros())
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        unique_violation(e, "namespace_taken", || {
            "one of the namespaces was just taken by another tenant".to_owned()
        })
    })?;
    // `do nothing` also skips a namespace another tenant claimed since the check.
    let owned: i64 = query_scalar(
        "select count(*) from tenant_namespaces where namespace = any($1) and tenant_id = $2",
    )
    .bind(&names)
    .bind(id.as_str())
    .fetch_one(&mut *conn)
    .await?;
    if owned != names.len() as i64 {
        check_namespaces_free(&mut *conn, id, namespaces).await?;
    }
    Ok(())
}

/// Inserts a tenant in `state` (a request's `requested`, an operator's `active`). A live
/// tenant claims its namespaces; a request's are checked now and claimed on approval.
pub(super) async fn insert_tenant(
    conn: &mut PgConnection,
    new: &NewTenant,
    state: TenantState,
) -> Result<Tenant, Error> {
    let namespaces = namespaces_of(new)?;
    query(&format!(
        "insert into tenants ({TENANT_FIELDS}) values ($1, $2, $3, $4, $5, $6, $7, $7, $7, $8, $9)"
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
    .execute(&mut *conn)
    .await
    .map_err(|e| {
        unique_violation(e, "already_exists", || {
            format!("tenant {:?} already exists", new.id.as_str())
        })
    })?;
    if state == TenantState::Requested {
        check_namespaces_free(&mut *conn, &new.id, &namespaces).await?;
    } else {
        claim_namespaces(&mut *conn, &new.id, &namespaces).await?;
    }
    load_tenant(conn, &new.id).await
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

    /// Every tenant's id and state, with the time it first owned one of its current namespaces
    /// (its creation time if it owns none): what the collector attributes usage by.
    pub async fn tenant_billing(&self) -> Result<Vec<TenantBilling>, Error> {
        self.run("tenant_billing", || async {
            let mut tx = self.begin().await?;
            let rows = query(
                "select t.id, t.state, coalesce((select min(n.added_at) from tenant_namespaces n \
                 where n.tenant_id = t.id), t.created_at) as namespaces_since \
                 from tenants t order by t.id",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|row| {
                    let corrupt = |e: crate::error::Invalid| {
                        Error::Database(sqlx::Error::Decode(format!("tenants row: {e}").into()))
                    };
                    let id: String = row.try_get("id")?;
                    let state: String = row.try_get("state")?;
                    Ok(TenantBilling {
                        id: TenantId::parse(&id).map_err(corrupt)?,
                        state: TenantState::parse(&state).map_err(corrupt)?,
                        namespaces_since: row.try_get("namespaces_since")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Changes descriptive fields, the owner group, the quota profile and the namespaces of an
    /// active or suspended tenant (otherwise [`Error::Transition`] naming its state). One
    /// transaction: the change, one audit record (before/after) and `tenant.updated`, whose
    /// payload names what changed (`changed`, `namespaces_added`, `namespaces_removed`). A
    /// patch that changes nothing writes nothing.
    pub async fn update_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        patch: &TenantPatch,
    ) -> Result<Tenant, Error> {
        self.run("update_tenant", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            require_live(&before, "be updated")?;
            let mut after = before.clone();
            after.apply(patch);
            if after == before {
                return Ok(before);
            }
            query(
                "update tenants set display_name = $2, owner = $3, labels = $4, updated_at = $5, \
                 owner_group = $6, quota_profile = $7 where id = $1",
            )
            .bind(id.as_str())
            .bind(after.display_name.as_str())
            .bind(after.owner.as_str())
            .bind(after.labels.to_json())
            .bind(now_micros())
            .bind(after.owner_group.as_ref().map(OwnerGroup::as_str))
            .bind(after.quota_profile.as_ref().map(QuotaProfileName::as_str))
            .execute(&mut *tx)
            .await?;
            let added: Vec<&NamespaceName> = after
                .namespaces
                .iter()
                .filter(|n| !before.namespaces.contains(n))
                .collect();
            let removed: Vec<&NamespaceName> = before
                .namespaces
                .iter()
                .filter(|n| !after.namespaces.contains(n))
                .collect();
            if !added.is_empty() {
                claim_namespaces(&mut tx, id, &after.namespaces).await?;
            }
            if !removed.is_empty() {
                let names: Vec<&str> = removed.iter().map(|n| n.as_str()).collect();
                query("delete from tenant_namespaces where tenant_id = $1 and namespace = any($2)")
                    .bind(id.as_str())
                    .bind(&names)
                    .execute(&mut *tx)
                    .await?;
            }
            let after = load_tenant(&mut tx, id).await?;
            let (old, new) = (before.to_json(), after.to_json());
            let changed: Vec<&String> = new
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| old.get(k.as_str()) != Some(v))
                .map(|(k, _)| k)
                .collect();
            let names = |list: &[&NamespaceName]| -> Value {
                list.iter().map(|n| Value::from(n.as_str())).collect()
            };
            let event = json!({
                "tenant": new,
                "changed": changed,
                "namespaces_added": names(&added),
                "namespaces_removed": names(&removed),
            });
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "tenant.update",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(old),
                    after: Some(new),
                },
            )
            .await?;
            outbox::enqueue(&mut tx, "tenant", id.as_str(), "tenant.updated", event).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Isolates a tenant for an incident: the flag the blueprint reconciler applies a deny-all
    /// NetworkPolicy from (with when, by whom and why), an audit record and `tenant.isolated`.
    /// Only for an active or suspended tenant; isolating an isolated tenant is a no-op.
    pub async fn isolate_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
    ) -> Result<Tenant, Error> {
        self.set_isolation(ctx, id, true, reason).await
    }

    /// Ends an isolation: audit record and `tenant.released`; a no-op if not isolated.
    pub async fn release_isolation(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
    ) -> Result<Tenant, Error> {
        self.set_isolation(ctx, id, false, reason).await
    }

    async fn set_isolation(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        isolate: bool,
        reason: &Reason,
    ) -> Result<Tenant, Error> {
        self.run("set_isolation", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            require_live(&before, if isolate { "isolate" } else { "release" })?;
            if before.isolation.is_some() == isolate {
                tx.commit().await?;
                return Ok(before);
            }
            let now = now_micros();
            query(
                "update tenants set isolated_at = $2, isolated_by = $3, isolation_reason = $4, \
                 updated_at = $5 where id = $1",
            )
            .bind(id.as_str())
            .bind(isolate.then_some(now))
            .bind(isolate.then_some(ctx.actor.name.as_str()))
            .bind(isolate.then_some(reason.as_str()))
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let after = load_tenant(&mut tx, id).await?;
            let (action, event_type) = if isolate {
                ("tenant.isolate", "tenant.isolated")
            } else {
                ("tenant.release", "tenant.released")
            };
            let why = reason.as_str();
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action,
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(before.to_json()),
                    after: Some(json!({ "tenant": after.to_json(), "reason": why })),
                },
            )
            .await?;
            let event = json!({ "tenant": after.to_json(), "reason": why });
            outbox::enqueue(&mut tx, "tenant", id.as_str(), event_type, event).await?;
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

/// Operations on a tenant (update, isolate, operator suspend) are for active or suspended
/// tenants: otherwise the same 409 as a refused transition, naming the state.
pub(super) fn require_live(tenant: &Tenant, what: &str) -> Result<(), Error> {
    if matches!(tenant.state, TenantState::Active | TenantState::Suspended) {
        return Ok(());
    }
    Err(refused_error(
        &tenant.id,
        TransitionRefused {
            current: tenant.state,
            requested: what.to_owned(),
            allowed: tenant.state.allowed_next(),
        },
    ))
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
pub(super) async fn write_transition(
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
