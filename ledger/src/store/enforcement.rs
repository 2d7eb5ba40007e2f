//! Budget status, enforcement actions and exemptions. Every write of the enforcer checks the
//! leader's fencing token in its own transaction, writes its audit record and its outbox event.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::suspensions::operator_holds;
use super::tenants::{lock_tenant, transition_in};
use super::{outbox, query, query_scalar, Store};
use crate::audit::{now_micros, AuditContext};
use crate::budget::{BudgetPeriod, Thresholds};
use crate::currency::Currency;
use crate::enforcement::{
    ActionKind, ActionRecord, ActionState, BudgetState, BudgetStatus, Exemption, Fence, NewAction,
    OpenRung, StatusParams, Transition,
};
use crate::error::Error;
use crate::money::Money;
use crate::names::Reason;
use crate::tenant::{TenantId, TenantState};

/// The budget status of `budgetd_budget_status($1 as_of, $2 trailing days, $3 max lag, $4
/// lookback, $5 only this tenant)`, by tenant.
pub(super) const STATUS_QUERY: &str =
    "select tenant_id, tenant_state, period, period_start, period_end, budget_amount, currency, \
            thresholds, spent_amount, trailing_amount, trailing_start, \
            nullif(data_until, '-infinity') as data_until, forecast_amount, complete, state \
     from budgetd_budget_status($1, $2, $3, $4, $5) order by tenant_id";

/// The name of the lease row whose token fences enforcement writes.
pub(crate) const LEASE: &str = "budgetd";

const ACTION_COLUMNS: &str = "id, tenant_id, period_start, step_key, step, kind, state, reason, \
     spent_amount, forecast_amount, budget_amount, currency, not_before, forward, backward, \
     outcome, attempts, last_error, decided_by, decided_at, decision_reason, created_at, \
     updated_at, applied_at, closed_at, close_reason";

fn corrupt(table: &str, e: crate::error::Invalid) -> Error {
    Error::Database(sqlx::Error::Decode(format!("{table} row: {e}").into()))
}

fn action_from_row(row: &PgRow) -> Result<ActionRecord, Error> {
    let c = |e| corrupt("enforcement_actions", e);
    let currency: String = row.try_get("currency")?;
    let kind: String = row.try_get("kind")?;
    let state: String = row.try_get("state")?;
    Ok(ActionRecord {
        id: row.try_get("id")?,
        tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(c)?,
        period_start: row.try_get("period_start")?,
        step_key: row.try_get("step_key")?,
        step: row.try_get("step")?,
        kind: ActionKind::parse(&kind).map_err(c)?,
        state: ActionState::parse(&state).map_err(c)?,
        reason: row.try_get("reason")?,
        spent: row.try_get("spent_amount")?,
        forecast: row.try_get("forecast_amount")?,
        budget: Money {
            amount: row.try_get("budget_amount")?,
            currency: Currency::parse("currency", currency.trim()).map_err(c)?,
        },
        not_before: row.try_get("not_before")?,
        forward: row.try_get("forward")?,
        backward: row.try_get("backward")?,
        outcome: row.try_get("outcome")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        decided_by: row.try_get("decided_by")?,
        decided_at: row.try_get("decided_at")?,
        decision_reason: row.try_get("decision_reason")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        applied_at: row.try_get("applied_at")?,
        closed_at: row.try_get("closed_at")?,
        close_reason: row.try_get("close_reason")?,
    })
}

pub(super) fn status_from_row(row: &PgRow) -> Result<BudgetStatus, Error> {
    let c = |e| corrupt("budget status", e);
    let tenant_state: String = row.try_get("tenant_state")?;
    let period: String = row.try_get("period")?;
    let currency: String = row.try_get("currency")?;
    let thresholds: Vec<i32> = row.try_get("thresholds")?;
    let state: String = row.try_get("state")?;
    Ok(BudgetStatus {
        tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(c)?,
        tenant_state: TenantState::parse(&tenant_state).map_err(c)?,
        period: BudgetPeriod::parse(&period).map_err(c)?,
        period_start: row.try_get("period_start")?,
        period_end: row.try_get("period_end")?,
        budget: Money {
            amount: row.try_get("budget_amount")?,
            currency: Currency::parse("currency", currency.trim()).map_err(c)?,
        },
        thresholds: Thresholds::parse(thresholds.into_iter().map(|t| t as u32).collect())
            .map_err(c)?,
        spent: row.try_get("spent_amount")?,
        trailing: row.try_get("trailing_amount")?,
        trailing_start: row.try_get("trailing_start")?,
        data_until: row.try_get("data_until")?,
        forecast: row.try_get("forecast_amount")?,
        complete: row.try_get("complete")?,
        state: BudgetState::parse(&state).map_err(c)?,
    })
}

/// Fails unless `fence` is the current leader's token. The row lock (`for share`) holds off a
/// new leader's token bump until this transaction ends.
pub(crate) async fn check_fence(conn: &mut PgConnection, fence: Fence) -> Result<(), Error> {
    let token: Option<i64> =
        query_scalar("select token from leader_lease where name = $1 for share")
            .bind(LEASE)
            .fetch_optional(&mut *conn)
            .await?;
    if token != Some(fence.0) {
        metrics::counter!("budgetd_enforcement_fenced_writes_total").increment(1);
        return Err(Error::Fenced {
            fence,
            leader: token.map(Fence),
        });
    }
    Ok(())
}

async fn lock_action(conn: &mut PgConnection, id: i64) -> Result<ActionRecord, Error> {
    let row = query(&format!(
        "select {ACTION_COLUMNS} from enforcement_actions where id = $1 for update"
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => action_from_row(&row),
        None => Err(Error::NotFound {
            what: "enforcement action",
            id: id.to_string(),
        }),
    }
}

/// Audit record and outbox event of one action change, in the caller's transaction. The event
/// is on the tenant's aggregate, so it takes its place in the tenant's one `seq` order with the
/// lifecycle events (a consumer keyed by tenant sees an action's events where they committed).
async fn announce(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    event: &str,
    before: Option<&ActionRecord>,
    after: &ActionRecord,
) -> Result<(), Error> {
    audit::append(
        &mut *conn,
        ctx,
        AuditEvent {
            action: event,
            target_type: "enforcement_action",
            target_id: &after.id.to_string(),
            before: before.map(ActionRecord::to_json),
            after: Some(after.to_json()),
        },
    )
    .await?;
    outbox::enqueue(
        &mut *conn,
        "tenant",
        after.tenant.as_str(),
        event,
        json!({ "action": after.to_json(), "previous_state": before.map(|b| b.state.as_str()) }),
    )
    .await
}

/// `budget.threshold_crossed`: a notify action applied is a budget threshold crossed (by the
/// spend, `on = actual`, or the forecast), announced with the action's event, in its
/// transaction (so it follows `enforcement.action_applied`).
async fn announce_threshold(conn: &mut PgConnection, action: &ActionRecord) -> Result<(), Error> {
    outbox::enqueue(
        &mut *conn,
        "tenant",
        action.tenant.as_str(),
        "budget.threshold_crossed",
        json!({
            "action": action.to_json(),
            "on": action.step.get("on"),
            "at_percent": action.step.get("at"),
            "spent": action.spent.to_string(),
            "forecast": action.forecast.to_string(),
            "budget": action.budget.amount.to_string(),
            "currency": action.budget.currency.code(),
            "period_start": action.period_start.to_string(),
        }),
    )
    .await
}

/// `update ... set <set> where id = $1 returning <columns>`: assignments use $2 and up.
fn update_sql(set: &str) -> String {
    format!("update enforcement_actions set {set} where id = $1 returning {ACTION_COLUMNS}")
}

/// Filters for listing actions.
#[derive(Debug, Clone, Default)]
pub struct ActionFilter {
    pub state: Option<ActionState>,
    pub tenant: Option<TenantId>,
    /// Only actions with an id below this (for paging, newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

impl Store {
    /// The budget status of every tenant with a budget in force at `as_of`.
    pub async fn budget_statuses(
        &self,
        as_of: DateTime<Utc>,
        params: &StatusParams,
    ) -> Result<Vec<BudgetStatus>, Error> {
        self.statuses(as_of, params, None).await
    }

    /// One tenant's budget status; `None` without a budget in force.
    pub async fn budget_status_of(
        &self,
        tenant: &TenantId,
        as_of: DateTime<Utc>,
        params: &StatusParams,
    ) -> Result<Option<BudgetStatus>, Error> {
        Ok(self.statuses(as_of, params, Some(tenant)).await?.pop())
    }

    async fn statuses(
        &self,
        as_of: DateTime<Utc>,
        params: &StatusParams,
        only: Option<&TenantId>,
    ) -> Result<Vec<BudgetStatus>, Error> {
        self.run("budget_statuses", || async {
            let mut tx = self.begin().await?;
            let rows = query(STATUS_QUERY)
                .bind(as_of)
                .bind(params.trailing_days as i32)
                .bind(params.max_lag_seconds as i32)
                .bind(params.lookback_seconds.map(|s| s as i32))
                .bind(only.map(TenantId::as_str))
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter().map(status_from_row).collect()
        })
        .await
    }

    /// Applied actions that raise an alert (notify, suspend), for the re-send of each cycle.
    pub async fn alerting_actions(&self) -> Result<Vec<ActionRecord>, Error> {
        self.run("alerting_actions", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {ACTION_COLUMNS} from enforcement_actions \
                 where state = 'applied' and kind in ('notify', 'suspend') order by id"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(action_from_row).collect()
        })
        .await
    }

    /// The open actions in the narrow form deciding needs (see `OpenRung`).
    pub async fn open_rungs(&self) -> Result<Vec<OpenRung>, Error> {
        self.run("open_rungs", || async {
            let mut tx = self.begin().await?;
            let rows = query(
                "select id, tenant_id, period_start, step_key, kind, state, not_before, forward \
                 from enforcement_actions where state not in ('restored', 'cancelled') order by id",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|row| {
                    let c = |e| corrupt("enforcement_actions", e);
                    let kind: String = row.try_get("kind")?;
                    let state: String = row.try_get("state")?;
                    Ok(OpenRung {
                        id: row.try_get("id")?,
                        tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(c)?,
                        period_start: row.try_get("period_start")?,
                        step_key: row.try_get("step_key")?,
                        kind: ActionKind::parse(&kind).map_err(c)?,
                        state: ActionState::parse(&state).map_err(c)?,
                        not_before: row.try_get("not_before")?,
                        forward: row.try_get("forward")?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Actions, newest first.
    pub async fn list_actions(&self, filter: &ActionFilter) -> Result<Vec<ActionRecord>, Error> {
        self.run("list_actions", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {ACTION_COLUMNS} from enforcement_actions \
                 where ($1::text is null or state = $1) and ($2::text is null or tenant_id = $2) \
                   and ($3::bigint is null or id < $3) \
                 order by id desc limit $4"
            ))
            .bind(filter.state.map(ActionState::as_str))
            .bind(filter.tenant.as_ref().map(TenantId::as_str))
            .bind(filter.before_id)
            .bind(filter.limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(action_from_row).collect()
        })
        .await
    }

    pub async fn get_action(&self, id: i64) -> Result<ActionRecord, Error> {
        self.run("get_action", || async {
            let mut tx = self.begin().await?;
            let row = query(&format!(
                "select {ACTION_COLUMNS} from enforcement_actions where id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            row.as_ref()
                .map(action_from_row)
                .transpose()?
                .ok_or_else(|| Error::NotFound {
                    what: "enforcement action",
                    id: id.to_string(),
                })
        })
        .await
    }

    /// Opens an action on its rung. A second open of an occupied rung is a conflict (the
    /// database's partial unique index decides).
    pub async fn open_action(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        new: &NewAction,
    ) -> Result<ActionRecord, Error> {
        self.run("open_action", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let now = now_micros();
            let row = query(&format!(
                "insert into enforcement_actions (tenant_id, period_start, step_key, step, kind, \
                 state, reason, spent_amount, forecast_amount, budget_amount, currency, not_before, \
                 created_at, updated_at, fencing_token) \
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14) \
                 returning {ACTION_COLUMNS}"
            ))
            .bind(new.tenant.as_str())
            .bind(new.period_start)
            .bind(&new.step_key)
            .bind(&new.step)
            .bind(new.kind.as_str())
            .bind(new.state.as_str())
            .bind(&new.reason)
            .bind(new.spent)
            .bind(new.forecast)
            .bind(new.budget.amount)
            .bind(new.budget.currency.code())
            .bind(new.not_before)
            .bind(now)
            .bind(fence.0)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| {
                super::unique_violation(e, "rung_occupied", || {
                    format!(
                        "tenant {:?} already has an open action on {}",
                        new.tenant.as_str(),
                        new.step_key
                    )
                })
            })?;
            let action = action_from_row(&row)?;
            announce(&mut tx, ctx, "enforcement.action_opened", None, &action).await?;
            tx.commit().await?;
            Ok(action)
        })
        .await
    }

    /// Records the cluster changes an action is about to make and their inverse (the prior
    /// values), before it makes them. Recording twice keeps the first record: after a crash
    /// the cluster may already show the changes, so only the first observation is the prior.
    pub async fn record_effect(
        &self,
        fence: Fence,
        id: i64,
        forward: &Value,
        backward: &Value,
    ) -> Result<ActionRecord, Error> {
        self.run("record_effect", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_action(&mut tx, id).await?;
            if before.forward.is_some() {
                tx.commit().await?;
                return Ok(before);
            }
            let after = {
                let sql = update_sql("forward = $2, backward = $3, updated_at = $4");
                let row = query(&sql)
                    .bind(id)
                    .bind(forward)
                    .bind(backward)
                    .bind(now_micros())
                    .fetch_one(&mut *tx)
                    .await?;
                action_from_row(&row)?
            };
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Marks an action applied, with what happened, and moves the tenant's lifecycle with it.
    pub async fn mark_applied(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        outcome: &Value,
        transition: Option<&Transition>,
    ) -> Result<ActionRecord, Error> {
        self.run("mark_applied", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_action(&mut tx, id).await?;
            if !matches!(before.state, ActionState::Scheduled | ActionState::Approved) {
                return Err(Error::conflict(
                    "action_not_due",
                    format!("action {id} is {} and cannot be applied", before.state),
                ));
            }
            if let Some(t) = transition {
                transition_in(&mut tx, ctx, &before.tenant, t.to, &t.reason).await?;
            }
            let now = now_micros();
            let after = {
                let sql = update_sql(
                    "state = 'applied', outcome = $2, applied_at = $3, updated_at = $3, \
                 attempts = attempts + 1, last_error = null",
                );
                let row = query(&sql)
                    .bind(id)
                    .bind(outcome)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
                action_from_row(&row)?
            };
            announce(
                &mut tx,
                ctx,
                "enforcement.action_applied",
                Some(&before),
                &after,
            )
            .await?;
            if after.kind == ActionKind::Notify {
                announce_threshold(&mut tx, &after).await?;
            }
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Counts a failed attempt to apply or restore an action; the next cycle tries again.
    pub async fn record_failure(&self, fence: Fence, id: i64, error: &str) -> Result<(), Error> {
        self.run("record_failure", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            lock_action(&mut tx, id).await?;
            {
                let sql = update_sql("attempts = attempts + 1, last_error = $2, updated_at = $3");
                let row = query(&sql)
                    .bind(id)
                    .bind(error)
                    .bind(now_micros())
                    .fetch_one(&mut *tx)
                    .await?;
                action_from_row(&row)?
            };
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Closes an action: `restored` if it had been applied (its effect is undone), otherwise
    /// `cancelled`. The tenant's lifecycle moves with it.
    pub async fn close_action(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        reason: &str,
        transition: Option<&Transition>,
    ) -> Result<ActionRecord, Error> {
        self.run("close_action", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_action(&mut tx, id).await?;
            if !before.state.is_open() {
                tx.commit().await?;
                return Ok(before);
            }
            if let Some(t) = transition {
                // A budget suspension lifted while an operator's holds the tenant: the budget
                // restores its own changes and leaves the tenant suspended.
                let tenant = lock_tenant(&mut tx, &before.tenant).await?;
                if !(t.to == TenantState::Active && operator_holds(&tenant)) {
                    transition_in(&mut tx, ctx, &before.tenant, t.to, &t.reason).await?;
                }
            }
            let to = if before.state == ActionState::Applied {
                ActionState::Restored
            } else {
                ActionState::Cancelled
            };
            let after = {
                let sql =
                    update_sql("state = $2, closed_at = $3, updated_at = $3, close_reason = $4");
                let row = query(&sql)
                    .bind(id)
                    .bind(to.as_str())
                    .bind(now_micros())
                    .bind(reason)
                    .fetch_one(&mut *tx)
                    .await?;
                action_from_row(&row)?
            };
            let event = if to == ActionState::Restored {
                "enforcement.action_restored"
            } else {
                "enforcement.action_cancelled"
            };
            announce(&mut tx, ctx, event, Some(&before), &after).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Actions restored at or after `since`, oldest first (their alerts are re-sent as
    /// resolved for a while, so an Alertmanager that missed the resolve learns it).
    pub async fn actions_restored_since(
        &self,
        since: DateTime<Utc>,
    ) -> Result<Vec<ActionRecord>, Error> {
        self.run("actions_restored_since", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {ACTION_COLUMNS} from enforcement_actions \
                 where state = 'restored' and closed_at >= $1 order by id"
            ))
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(action_from_row).collect()
        })
        .await
    }

    /// Audits a drift repair: changes someone undid and the enforcer re-applied.
    pub async fn record_repair(
        &self,
        fence: Fence,
        ctx: &AuditContext,
        id: i64,
        changes: &Value,
    ) -> Result<(), Error> {
        self.run("record_repair", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let action = lock_action(&mut tx, id).await?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "enforcement.drift_repaired",
                    target_type: "enforcement_action",
                    target_id: &id.to_string(),
                    before: None,
                    after: Some(json!({
                        "tenant_id": action.tenant.as_str(),
                        "changes": changes,
                    })),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// An operator's decision on a pending action.
    pub async fn decide_action(
        &self,
        ctx: &AuditContext,
        id: i64,
        approve: bool,
        reason: &Reason,
    ) -> Result<ActionRecord, Error> {
        self.run("decide_action", || async {
            let mut tx = self.begin().await?;
            let before = lock_action(&mut tx, id).await?;
            if before.state != ActionState::Pending {
                return Err(Error::conflict(
                    "action_not_pending",
                    format!(
                        "action {id} is {}; only pending actions can be approved or rejected",
                        before.state
                    ),
                ));
            }
            let to = if approve {
                ActionState::Approved
            } else {
                ActionState::Rejected
            };
            let after = {
                let sql = update_sql("state = $2, decided_by = $3, decided_at = $4, decision_reason = $5, updated_at = $4");
                let row = query(&sql).bind(id).bind(to.as_str())
                        .bind(&ctx.actor.name)
                        .bind(now_micros())
                        .bind(reason.as_str()).fetch_one(&mut *tx).await?;
                action_from_row(&row)?
            };
            let event = if approve {
                "enforcement.action_approved"
            } else {
                "enforcement.action_rejected"
            };
            announce(&mut tx, ctx, event, Some(&before), &after).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Exempts a tenant from enforcement until `until` (a time in the past ends an exemption).
    /// An offboarding or offboarded tenant can no longer change, so it cannot be exempted
    /// either: that is a conflict, as for its budget and its descriptive fields.
    pub async fn set_exemption(
        &self,
        ctx: &AuditContext,
        tenant: &TenantId,
        until: DateTime<Utc>,
        reason: &Reason,
    ) -> Result<Exemption, Error> {
        self.run("set_exemption", || async {
            let mut tx = self.begin().await?;
            let state: Option<String> =
                query_scalar("select state from tenants where id = $1 for share")
                    .bind(tenant.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let state = state.ok_or_else(|| Error::NotFound {
                what: "tenant",
                id: tenant.to_string(),
            })?;
            if !TenantState::parse(&state).is_ok_and(TenantState::is_mutable) {
                return Err(Error::conflict(
                    "tenant_not_mutable",
                    format!(
                        "tenant {:?} is {state}; it can no longer be exempted",
                        tenant.as_str()
                    ),
                ));
            }
            let before = exemption_of(&mut tx, tenant).await?;
            let now = now_micros();
            query(
                "insert into enforcement_exemptions (tenant_id, until, reason, created_by, created_at) \
                 values ($1, $2, $3, $4, $5)",
            )
            .bind(tenant.as_str())
            .bind(until)
            .bind(reason.as_str())
            .bind(&ctx.actor.name)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            let exemption = Exemption {
                tenant: tenant.clone(),
                until,
                reason: reason.as_str().to_owned(),
                created_by: ctx.actor.name.clone(),
                created_at: now,
            };
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "enforcement.exemption_set",
                    target_type: "tenant",
                    target_id: tenant.as_str(),
                    before: before.as_ref().map(Exemption::to_json),
                    after: Some(exemption.to_json()),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                tenant.as_str(),
                "tenant.exemption_set",
                json!({ "exemption": exemption.to_json() }),
            )
            .await?;
            tx.commit().await?;
            Ok(exemption)
        })
        .await
    }

    /// The latest exemption of a tenant, in force or not.
    pub async fn exemption(&self, tenant: &TenantId) -> Result<Option<Exemption>, Error> {
        self.run("exemption", || async {
            let mut tx = self.begin().await?;
            let exemption = exemption_of(&mut tx, tenant).await?;
            tx.commit().await?;
            Ok(exemption)
        })
        .await
    }

    /// Exemptions in force at `at`.
    pub async fn exemptions_in_force(&self, at: DateTime<Utc>) -> Result<Vec<Exemption>, Error> {
        self.run("exemptions_in_force", || async {
            let mut tx = self.begin().await?;
            let rows = query(
                "select tenant_id, until, reason, created_by, created_at from ( \
                     select distinct on (tenant_id) tenant_id, until, reason, created_by, created_at \
                     from enforcement_exemptions order by tenant_id, id desc) latest \
                 where until > $1",
            )
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(exemption_from_row).collect()
        })
        .await
    }
}

fn exemption_from_row(row: &PgRow) -> Result<Exemption, Error> {
    Ok(Exemption {
        tenant: TenantId::parse(row.try_get("tenant_id")?)
            .map_err(|e| corrupt("enforcement_exemptions", e))?,
        until: row.try_get("until")?,
        reason: row.try_get("reason")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

async fn exemption_of(
    conn: &mut PgConnection,
    tenant: &TenantId,
) -> Result<Option<Exemption>, Error> {
    let row = query(
        "select tenant_id, until, reason, created_by, created_at from enforcement_exemptions \
         where tenant_id = $1 order by id desc limit 1",
    )
    .bind(tenant.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(exemption_from_row).transpose()
}
