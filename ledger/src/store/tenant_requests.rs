//! Self-service tenant requests: a request reserves its tenant id (a tenants row in state
//! `requested`, the request's details in `tenant_requests`); an operator approves it (the
//! tenant becomes active with its budget) or rejects it (`rejected`, final). Each step writes
//! the state, one audit record and one outbox event in one transaction.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::budgets::insert_budget;
use super::query;
use super::tenants::{
    claim_namespaces, insert_tenant, lock_tenant, namespaces_of, refused_error, set_state,
    tenant_from_row, TENANT_COLUMNS,
};
use super::{outbox, Store};
use crate::audit::{now_micros, AuditContext};
use crate::budget::{BudgetPeriod, NewBudget, Thresholds};
use crate::currency::Currency;
use crate::error::{Error, Invalid};
use crate::money::Money;
use crate::names::Reason;
use crate::tenant::{
    Decision, Justification, LifecycleOp, NamespaceName, NewTenantRequest, RequestState, TenantId,
    TenantRequest, TenantState,
};

const REQUEST_COLUMNS: &str = "budget_amount, budget_currency, budget_period, justification, \
                               requested_by, requested_at, decision, decided_by, decided_at, \
                               decision_reason, requested_namespaces";

fn request_from_row(row: &PgRow) -> Result<TenantRequest, Error> {
    let corrupt = |e: Invalid| {
        Error::Database(sqlx::Error::Decode(
            format!("tenant_requests row: {e}").into(),
        ))
    };
    let currency: String = row.try_get("budget_currency")?;
    let period: String = row.try_get("budget_period")?;
    let amount: Decimal = row.try_get("budget_amount")?;
    let decision: Option<String> = row.try_get("decision")?;
    let decision = match decision {
        None => None,
        Some(state) => Some(Decision {
            state: RequestState::parse(&state).map_err(corrupt)?,
            by: row.try_get("decided_by")?,
            at: row.try_get("decided_at")?,
            reason: row.try_get("decision_reason")?,
        }),
    };
    let namespaces: Vec<String> = row.try_get("requested_namespaces")?;
    Ok(TenantRequest {
        namespaces: namespaces
            .iter()
            .map(|n| NamespaceName::parse("namespaces", n))
            .collect::<Result<_, _>>()
            .map_err(corrupt)?,
        tenant: tenant_from_row(row)?,
        budget: Money {
            amount,
            currency: Currency::parse("budget.currency", currency.trim()).map_err(corrupt)?,
        },
        period: BudgetPeriod::parse(&period).map_err(corrupt)?,
        justification: Justification::parse(row.try_get("justification")?).map_err(corrupt)?,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        decision,
    })
}

fn select_requests(filter: &str) -> String {
    format!(
        "select {TENANT_COLUMNS}, {REQUEST_COLUMNS} from tenant_requests r \
         join tenants t on t.id = r.tenant_id {filter}"
    )
}

async fn load_request(conn: &mut PgConnection, id: &TenantId) -> Result<TenantRequest, Error> {
    let row = query(&select_requests("where r.tenant_id = $1"))
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    match row {
        Some(row) => request_from_row(&row),
        None => Err(Error::NotFound {
            what: "tenant request",
            id: id.to_string(),
        }),
    }
}

/// The currency check of a budget, with the field named as the request names it.
fn budget_field(e: Error) -> Error {
    match e {
        Error::Invalid(Invalid { field, message }) if field == "currency" => {
            Invalid::new("budget.currency", message).into()
        }
        e => e,
    }
}

impl Store {
    /// Records a request: the tenant id is reserved (state `requested`) until it is decided.
    pub async fn request_tenant(
        &self,
        ctx: &AuditContext,
        new: &NewTenantRequest,
    ) -> Result<TenantRequest, Error> {
        self.run("request_tenant", || async {
            let mut tx = self.begin().await?;
            // A budget in another currency than the ledger's could never be approved: refused
            // now, not at approval.
            if let Some(clash) =
                super::price_book::currency_clash(&mut tx, new.budget.currency).await?
            {
                use super::price_book::CurrencyClash;
                let ledger = match clash {
                    CurrencyClash::Version { currency, .. }
                    | CurrencyClash::Budget { currency, .. } => currency,
                };
                return Err(Invalid::new(
                    "budget.currency",
                    format!(
                        "the ledger keeps one currency, {ledger}; a budget in {} could not be compared with spend",
                        new.budget.currency
                    ),
                )
                .into());
            }
            let tenant = insert_tenant(&mut tx, &new.tenant, TenantState::Requested).await?;
            query(
                "insert into tenant_requests (tenant_id, budget_amount, budget_currency, \
                 budget_period, justification, requested_by, requested_at, \
                 requested_namespaces) values ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(tenant.id.as_str())
            .bind(new.budget.amount)
            .bind(new.budget.currency.code())
            .bind(new.period.as_str())
            .bind(new.justification.as_str())
            .bind(&ctx.actor.name)
            .bind(tenant.created_at)
            .bind(
                namespaces_of(&new.tenant)?
                    .iter()
                    .map(NamespaceName::as_str)
                    .collect::<Vec<_>>(),
            )
            .execute(&mut *tx)
            .await?;
            let request = load_request(&mut tx, &tenant.id).await?;
            let record = request.to_json();
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "tenant.request",
                    target_type: "tenant",
                    target_id: tenant.id.as_str(),
                    before: None,
                    after: Some(record.clone()),
                },
            )
            .await?;
            outbox::enqueue(&mut tx, "tenant", tenant.id.as_str(), "tenant.requested", record)
                .await?;
            tx.commit().await?;
            Ok(request)
        })
        .await
    }

    pub async fn get_tenant_request(&self, id: &TenantId) -> Result<TenantRequest, Error> {
        self.run("get_tenant_request", || async {
            let mut tx = self.begin().await?;
            let request = load_request(&mut tx, id).await?;
            tx.commit().await?;
            Ok(request)
        })
        .await
    }

    /// Requests in the order they were made, optionally only those in `state`.
    pub async fn list_tenant_requests(
        &self,
        state: Option<RequestState>,
    ) -> Result<Vec<TenantRequest>, Error> {
        self.run("list_tenant_requests", || async {
            let mut tx = self.begin().await?;
            let filter = match state {
                None => "",
                Some(RequestState::Requested) => "where r.decision is null",
                Some(RequestState::Approved) => "where r.decision = 'approved'",
                Some(RequestState::Rejected) => "where r.decision = 'rejected'",
            };
            let rows = query(&format!(
                "{} order by r.requested_at, r.tenant_id",
                select_requests(filter)
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(request_from_row).collect()
        })
        .await
    }

    /// Approves a request: the tenant becomes active, its budget takes effect at
    /// `effective_from`, and `tenant.approved` (the tenant's full state with its budget) is
    /// announced for provisioning. A decided request is a conflict; the requester may not
    /// approve their own ([`Error::Forbidden`], `self_approval`).
    pub async fn approve_tenant_request(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
        thresholds: &Thresholds,
        effective_from: DateTime<Utc>,
    ) -> Result<TenantRequest, Error> {
        self.decide_request(
            ctx,
            id,
            LifecycleOp::Approve,
            reason,
            Some((thresholds, effective_from)),
        )
        .await
    }

    /// Rejects a request: the tenant becomes `rejected` (final; the id stays reserved) and
    /// `tenant.rejected` is announced. The requester may reject (withdraw) their own request.
    pub async fn reject_tenant_request(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
    ) -> Result<TenantRequest, Error> {
        self.decide_request(ctx, id, LifecycleOp::Reject, reason, None)
            .await
    }

    async fn decide_request(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        op: LifecycleOp,
        reason: &Reason,
        budget: Option<(&Thresholds, DateTime<Utc>)>,
    ) -> Result<TenantRequest, Error> {
        self.run("decide_tenant_request", || async {
            let mut tx = self.begin().await?;
            let tenant = lock_tenant(&mut tx, id).await?;
            let before = load_request(&mut tx, id).await?;
            let to = tenant
                .state
                .apply(op)
                .map_err(|refused| refused_error(id, refused))?;
            if op == LifecycleOp::Approve && before.requested_by == ctx.actor.name {
                return Err(Error::Forbidden {
                    code: "self_approval",
                    message: format!(
                        "{} requested tenant {:?} and cannot approve the request; another operator or admin must",
                        ctx.actor.name,
                        id.as_str()
                    ),
                });
            }
            if op == LifecycleOp::Approve {
                // Checked when the request was filed; another tenant may have taken one since.
                claim_namespaces(&mut tx, id, &before.namespaces).await?;
            }
            let now = now_micros();
            let after_tenant = set_state(&mut tx, id, to).await?;
            let decision = if op == LifecycleOp::Approve {
                RequestState::Approved
            } else {
                RequestState::Rejected
            };
            query(
                "update tenant_requests set decision = $2, decided_by = $3, decided_at = $4, \
                 decision_reason = $5 where tenant_id = $1",
            )
            .bind(id.as_str())
            .bind(decision.as_str())
            .bind(&ctx.actor.name)
            .bind(now)
            .bind(reason.as_str())
            .execute(&mut *tx)
            .await?;
            let budget = match budget {
                Some((thresholds, effective_from)) => {
                    let new = NewBudget {
                        amount: before.budget,
                        period: before.period,
                        thresholds: thresholds.clone(),
                        effective_from,
                    };
                    let (_, budget) = insert_budget(&mut tx, ctx, id, &new)
                        .await
                        .map_err(budget_field)?;
                    Some(budget)
                }
                None => None,
            };
            let after = load_request(&mut tx, id).await?;
            debug_assert_eq!(after.tenant.state, after_tenant.state);
            let budget_json = budget.as_ref().map(|b| b.to_json());
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: &format!("tenant.{}", op.as_str()),
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(before.to_json()),
                    after: Some(json!({
                        "request": after.to_json(),
                        "budget": budget_json,
                        "reason": reason.as_str(),
                    })),
                },
            )
            .await?;
            let mut event = json!({
                "tenant": after.tenant.to_json(),
                "request": after.to_json(),
                "previous_state": tenant.state.as_str(),
                "reason": reason.as_str(),
            });
            if let Some(budget) = budget_json {
                event["budget"] = budget;
            }
            outbox::enqueue(&mut tx, "tenant", id.as_str(), op.event_type(), event).await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }
}
