//! Enforcement routes: list and read actions, approve or reject pending ones, exempt tenants.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use ledger::enforcement::{ActionRecord, ActionState, Exemption};
use ledger::names::Reason;
use ledger::store::ActionFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{page_limit, query_params, tenant_filter, Caller, JsonBody, TenantPath};
use super::AppState;
use crate::auth::Permission;

fn action_path(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("id", "an action id is a positive integer"))
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("enforcement action {id} not found"),
    )
}

/// Reads an action the caller may see: a tenant token sees only its tenant's actions, and
/// another tenant's action does not exist for it.
async fn visible_action(
    state: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<ActionRecord, ApiError> {
    let action = state.store.get_action(id).await.map_err(|e| match e {
        ledger::Error::NotFound { .. } => not_found(id),
        other => other.into(),
    })?;
    if !caller.principal.sees(&action.tenant) {
        return Err(not_found(id));
    }
    Ok(action)
}

/// Lists enforcement actions, newest first (a tenant token: its own tenant's only).
#[utoipa::path(
    get,
    path = "/api/v1/enforcement/actions",
    tag = "enforcement",
    params(
        ("state" = Option<String>, Query, pattern = "^(planned|pending|approved|scheduled|applied|rejected|restored|cancelled)$", description = "`planned`, `pending`, `approved`, `scheduled`, `applied`, `rejected`, `restored` or `cancelled`"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's actions"),
        ("before" = Option<i64>, Query, minimum = 1, description = "Only actions with a smaller id (the next page)"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "The actions", body = ActionList),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorBody),
        (status = 404, description = "A tenant token asked for another tenant (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<ActionList>, ApiError> {
    caller.require(Permission::ReadEnforcement)?;
    let params = query_params(query.as_deref(), &["state", "tenant", "before", "limit"])?;
    let state_filter = params
        .get("state")
        .map(|s| ActionState::parse(s))
        .transpose()?;
    let tenant = tenant_filter(&caller, &params)?;
    let before_id = params
        .get("before")
        .map(|b| action_path(b).map_err(|_| ApiError::invalid("before", "an action id")))
        .transpose()?;
    let limit = page_limit(&params)?;
    let actions = state
        .store
        .list_actions(&ActionFilter {
            state: state_filter,
            tenant,
            before_id,
            limit,
        })
        .await?;
    Ok(Json(ActionList {
        actions: actions.into_iter().map(ActionDto::from).collect(),
    }))
}

/// Reads an enforcement action.
#[utoipa::path(
    get,
    path = "/api/v1/enforcement/actions/{id}",
    tag = "enforcement",
    params(("id" = i64, Path, minimum = 1, description = "The action id")),
    responses(
        (status = 200, description = "The action", body = ActionDto),
        (status = 400, description = "The id is not a positive integer (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such action (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ActionDto>, ApiError> {
    caller.require(Permission::ReadEnforcement)?;
    let id = action_path(&id)?;
    Ok(Json(visible_action(&state, &caller, id).await?.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "approved by the on-call"}))]
struct Decision {
    reason: String,
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    body: JsonBody,
    approve: bool,
) -> Result<Json<ActionDto>, ApiError> {
    let id = action_path(&id)?;
    // Existence before permission, so a tenant token learns nothing about other tenants.
    let action = visible_action(&state, &caller, id).await?;
    caller.require_for(&action.tenant, Permission::DecideEnforcement)?;
    let req: Decision = body.parse()?;
    let reason = Reason::parse("reason", &req.reason)?;
    let decided = state
        .store
        .decide_action(&caller.audit(), id, approve, &reason)
        .await?;
    Ok(Json(decided.into()))
}

/// Approves a pending action; the leader's enforcer applies it.
#[utoipa::path(
    post,
    path = "/api/v1/enforcement/actions/{id}/approve",
    tag = "enforcement",
    params(("id" = i64, Path, minimum = 1, description = "The action id")),
    request_body = Decision,
    responses(
        (status = 200, description = "The action as decided", body = ActionDto),
        (status = 404, description = "No such action (`not_found`)", body = ErrorBody),
        (status = 409, description = "The action is not pending (`conflict` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<ActionDto>, ApiError> {
    decide(state, caller, id, body, true).await
}

/// Rejects a pending action.
#[utoipa::path(
    post,
    path = "/api/v1/enforcement/actions/{id}/reject",
    tag = "enforcement",
    params(("id" = i64, Path, minimum = 1, description = "The action id")),
    request_body = Decision,
    responses(
        (status = 200, description = "The action as decided", body = ActionDto),
        (status = 404, description = "No such action (`not_found`)", body = ErrorBody),
        (status = 409, description = "The action is not pending (`conflict` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<ActionDto>, ApiError> {
    decide(state, caller, id, body, false).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"until": "2026-12-31T00:00:00Z", "reason": "quarter-end load test"}))]
struct PutExemption {
    #[schema(format = DateTime)]
    until: String,
    reason: String,
}

/// The longest exemption: a year. Longer ones are policy, not overrides.
const MAX_EXEMPTION_DAYS: i64 = 366;

/// Exempts a tenant from enforcement until `until` (at most 366 days ahead).
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{id}/exemption",
    tag = "enforcement",
    params(TenantPath),
    request_body = PutExemption,
    responses(
        (status = 200, description = "The exemption", body = ExemptionDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn put_exemption(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<ExemptionDto>, ApiError> {
    caller.require_for(&id, Permission::DecideEnforcement)?;
    let req: PutExemption = body.parse()?;
    let until = ledger::time::parse_instant("until", &req.until)?;
    let reason = Reason::parse("reason", &req.reason)?;
    let now = (state.clock)();
    if until > now + chrono::Duration::days(MAX_EXEMPTION_DAYS) {
        return Err(ApiError::invalid(
            "until",
            format!("at most {MAX_EXEMPTION_DAYS} days ahead"),
        ));
    }
    let exemption = state
        .store
        .set_exemption(&caller.audit(), &id, until, &reason)
        .await?;
    Ok(Json(ExemptionDto::new(exemption, now)))
}

/// The tenant's latest exemption (it may have ended: `in_force`).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/exemption",
    tag = "enforcement",
    params(TenantPath),
    responses(
        (status = 200, description = "The exemption", body = ExemptionDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`), or never exempted (`no_exemption`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn get_exemption(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<ExemptionDto>, ApiError> {
    caller.require_for(&id, Permission::ReadEnforcement)?;
    state.store.get_tenant(&id).await?;
    match state.store.exemption(&id).await? {
        Some(e) => Ok(Json(ExemptionDto::new(e, (state.clock)()))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_exemption",
            format!("tenant {:?} has never been exempted", id.as_str()),
        )),
    }
}

#[derive(Serialize, ToSchema)]
pub struct ExemptionDto {
    tenant_id: String,
    until: DateTime<Utc>,
    reason: String,
    created_by: String,
    created_at: DateTime<Utc>,
    /// Whether `until` is still ahead.
    in_force: bool,
}

impl ExemptionDto {
    fn new(e: Exemption, now: DateTime<Utc>) -> Self {
        ExemptionDto {
            tenant_id: e.tenant.to_string(),
            in_force: e.until > now,
            until: e.until,
            reason: e.reason,
            created_by: e.created_by,
            created_at: e.created_at,
        }
    }
}

/// A tenant's budget status: spent, remaining, forecast, completeness (what the enforcer sees).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/budget/status",
    tag = "tenants",
    params(TenantPath),
    responses(
        (status = 200, description = "The budget status", body = BudgetStatusDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`), or no budget in force (`no_budget`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn budget_status(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<BudgetStatusDto>, ApiError> {
    caller.require_for(&id, Permission::ReadBudget)?;
    state.store.get_tenant(&id).await?;
    let status = state
        .store
        .budget_status_of(&id, (state.clock)(), &state.status)
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_budget",
                format!("tenant {:?} has no budget in force", id.as_str()),
            )
        })?;
    let percent = |v| status.percent_of_budget(v).map(|p| p.to_string());
    Ok(Json(BudgetStatusDto {
        tenant_id: status.tenant.to_string(),
        period: status.period.as_str(),
        period_start: status.period_start,
        period_end: status.period_end,
        currency: status.budget.currency.code().to_owned(),
        budget: status.budget.amount.to_string(),
        spent: status.spent.to_string(),
        remaining: status.remaining().to_string(),
        forecast: status.forecast.to_string(),
        spent_percent: percent(status.spent),
        forecast_percent: percent(status.forecast),
        trailing_start: status.trailing_start,
        data_until: status.data_until,
        data_complete: status.complete,
        state: status.state.as_str(),
    }))
}

/// What the enforcer sees of a tenant's budget: amounts are decimal strings in `currency`.
#[derive(Serialize, ToSchema)]
pub struct BudgetStatusDto {
    tenant_id: String,
    /// `monthly`, `quarterly` or `yearly`.
    period: &'static str,
    period_start: NaiveDate,
    /// Exclusive.
    period_end: NaiveDate,
    currency: String,
    budget: String,
    spent: String,
    remaining: String,
    forecast: String,
    /// `spent` in percent of `budget`; null for a zero budget.
    spent_percent: Option<String>,
    forecast_percent: Option<String>,
    /// Where the trailing window the forecast extrapolates starts.
    trailing_start: DateTime<Utc>,
    /// The end of the complete data the status is computed from; null when there is none.
    data_until: Option<DateTime<Utc>>,
    data_complete: bool,
    /// `ok`, `warning`, `at_risk` or `exceeded`.
    state: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct ActionList {
    actions: Vec<ActionDto>,
}

/// An enforcement action. `step`, `forward`, `backward` and `outcome` are the enforcer's
/// records as it wrote them.
#[derive(Serialize, ToSchema)]
pub struct ActionDto {
    id: i64,
    tenant_id: String,
    period_start: NaiveDate,
    /// The ladder rung, e.g. `actual:100:tighten_quota`.
    step_key: String,
    step: Value,
    /// `notify`, `tighten_quota` or `suspend`.
    kind: &'static str,
    /// `planned`, `pending`, `approved`, `scheduled`, `applied`, `rejected`, `restored` or
    /// `cancelled`.
    state: &'static str,
    reason: String,
    spent: String,
    forecast: String,
    budget: String,
    currency: String,
    not_before: DateTime<Utc>,
    forward: Option<Value>,
    backward: Option<Value>,
    outcome: Option<Value>,
    attempts: i32,
    last_error: Option<String>,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
    decision_reason: Option<String>,
    created_at: DateTime<Utc>,
    applied_at: Option<DateTime<Utc>>,
    closed_at: Option<DateTime<Utc>>,
    close_reason: Option<String>,
}

impl From<ActionRecord> for ActionDto {
    fn from(a: ActionRecord) -> Self {
        ActionDto {
            id: a.id,
            tenant_id: a.tenant.to_string(),
            period_start: a.period_start,
            step_key: a.step_key,
            step: a.step,
            kind: a.kind.as_str(),
            state: a.state.as_str(),
            reason: a.reason,
            spent: a.spent.to_string(),
            forecast: a.forecast.to_string(),
            budget: a.budget.amount.to_string(),
            currency: a.budget.currency.code().to_owned(),
            not_before: a.not_before,
            forward: a.forward,
            backward: a.backward,
            outcome: a.outcome,
            attempts: a.attempts,
            last_error: a.last_error,
            decided_by: a.decided_by,
            decided_at: a.decided_at,
            decision_reason: a.decision_reason,
            created_at: a.created_at,
            applied_at: a.applied_at,
            closed_at: a.closed_at,
            close_reason: a.close_reason,
        }
    }
}
