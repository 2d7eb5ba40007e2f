//! Budgets: effective-dated, so the history of every change stays in the ledger.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::json;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent};
use super::{outbox, unique_violation, Store};
use super::{query, query_scalar};
use crate::audit::{now_micros, AuditContext};
use crate::budget::{Budget, BudgetPeriod, NewBudget, Thresholds};
use crate::currency::Currency;
use crate::error::Error;
use crate::money::Money;
use crate::tenant::{TenantId, TenantState};

const BUDGET_COLUMNS: &str =
    "id, tenant_id, amount, currency, period, thresholds, effective_from, created_at, created_by";

fn budget_from_row(row: &PgRow) -> Result<Budget, Error> {
    let corrupt = |e: crate::error::Invalid| {
        Error::Database(sqlx::Error::Decode(format!("budgets row: {e}").into()))
    };
    let currency: String = row.try_get("currency")?;
    let period: String = row.try_get("period")?;
    let thresholds: Vec<i32> = row.try_get("thresholds")?;
    let amount: Decimal = row.try_get("amount")?;
    Ok(Budget {
        id: row.try_get("id")?,
        tenant: TenantId::parse(row.try_get("tenant_id")?).map_err(corrupt)?,
        amount: Money {
            amount,
            currency: Currency::parse("currency", &currency).map_err(corrupt)?,
        },
        period: BudgetPeriod::parse(&period).map_err(corrupt)?,
        thresholds: Thresholds::parse(thresholds.into_iter().map(|t| t as u32).collect())
            .map_err(corrupt)?,
        effective_from: row.try_get("effective_from")?,
        created_at: row.try_get("created_at")?,
        created_by: row.try_get("created_by")?,
    })
}

pub(super) async fn budget_at(
    conn: &mut PgConnection,
    tenant: &TenantId,
    at: DateTime<Utc>,
) -> Result<Option<Budget>, Error> {
    let row = query(&format!(
        "select {BUDGET_COLUMNS} from budgets where tenant_id = $1 and effective_from <= $2 \
         order by effective_from desc limit 1"
    ))
    .bind(tenant.as_str())
    .bind(at)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(budget_from_row).transpose()
}

/// Writes a budget in the caller's transaction, after checking its currency against the
/// ledger's: the budget before it (at its `effective_from`) and the new one. The caller audits.
pub(crate) async fn insert_budget(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    tenant: &TenantId,
    new: &NewBudget,
) -> Result<(Option<Budget>, Budget), Error> {
    // Spend is summed in the price book's currency: a budget in another one could never
    // be compared with it, whenever it takes effect.
    if let Some(clash) = super::price_book::currency_clash(&mut *conn, new.amount.currency).await? {
        use super::price_book::CurrencyClash;
        let message = match clash {
            CurrencyClash::Version { id, currency } => format!(
                "the price book prices in {currency} (version {id}); a budget in {} could not be compared with spend",
                new.amount.currency
            ),
            CurrencyClash::Budget { tenant, currency } => format!(
                "the ledger keeps one currency and the budget of tenant {tenant:?} is in {currency}; a budget in {} could not be compared with theirs or with spend",
                new.amount.currency
            ),
        };
        return Err(crate::error::Invalid::new("currency", message).into());
    }
    let before = budget_at(&mut *conn, tenant, new.effective_from).await?;
    let thresholds: Vec<i32> = new
        .thresholds
        .as_slice()
        .iter()
        .map(|&t| t as i32)
        .collect();
    let row = query(&format!(
        "insert into budgets (tenant_id, amount, currency, period, thresholds, \
         effective_from, created_at, created_by) values ($1, $2, $3, $4, $5, $6, $7, $8) \
         returning {BUDGET_COLUMNS}"
    ))
    .bind(tenant.as_str())
    .bind(new.amount.amount)
    .bind(new.amount.currency.code())
    .bind(new.period.as_str())
    .bind(&thresholds)
    .bind(new.effective_from)
    .bind(now_micros())
    .bind(&ctx.actor.name)
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| {
        unique_violation(e, "already_exists", || {
            "a budget with this effective time already exists".to_owned()
        })
    })?;
    Ok((before, budget_from_row(&row)?))
}

impl Store {
    /// Sets a tenant's budget from `new.effective_from` on. Earlier budgets stay in the ledger.
    pub async fn set_budget(
        &self,
        ctx: &AuditContext,
        tenant: &TenantId,
        new: &NewBudget,
    ) -> Result<Budget, Error> {
        self.run("set_budget", || async {
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
                    format!("tenant {:?} is {state}; its budget can no longer change", tenant.as_str()),
                ));
            }
            let (before, budget) = insert_budget(&mut tx, ctx, tenant, new).await?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "budget.set",
                    target_type: "tenant",
                    target_id: tenant.as_str(),
                    before: before.as_ref().map(Budget::to_json),
                    after: Some(budget.to_json()),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                tenant.as_str(),
                "tenant.budget_changed",
                json!({ "budget": budget.to_json(), "previous": before.as_ref().map(Budget::to_json) }),
            )
            .await?;
            tx.commit().await?;
            Ok(budget)
        })
        .await
    }

    /// The budget in force at `at`, if any.
    pub async fn budget_at(
        &self,
        tenant: &TenantId,
        at: DateTime<Utc>,
    ) -> Result<Option<Budget>, Error> {
        self.run("budget_at", || async {
            let mut tx = self.begin().await?;
            let budget = budget_at(&mut tx, tenant, at).await?;
            tx.commit().await?;
            Ok(budget)
        })
        .await
    }
}
