//! Enforcement routes: list and read actions, approve or reject pending ones, exempt tenants.

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger::enforcement::{ActionRecord, ActionState, Exemption};
use ledger::names::Reason;
use ledger::store::ActionFilter;
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
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

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "actions": actions.iter().map(ActionRecord::to_json).collect::<Vec<_>>(),
    })))
}

pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(Permission::ReadEnforcement)?;
    let id = action_path(&id)?;
    Ok(Json(visible_action(&state, &caller, id).await?.to_json()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    reason: String,
}

async fn decide(
    state: AppState,
    caller: Caller,
    id: String,
    body: JsonBody,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(decided.to_json()))
}

pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    decide(state, caller, id, body, true).await
}

pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
    decide(state, caller, id, body, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutExemption {
    until: String,
    reason: String,
}

/// The longest exemption: a year. Longer ones are policy, not overrides.
const MAX_EXEMPTION_DAYS: i64 = 366;

pub async fn put_exemption(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(exemption_json(&exemption, now)))
}

pub async fn get_exemption(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<Value>, ApiError> {
    caller.require_for(&id, Permission::ReadEnforcement)?;
    state.store.get_tenant(&id).await?;
    match state.store.exemption(&id).await? {
        Some(e) => Ok(Json(exemption_json(&e, (state.clock)()))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_exemption",
            format!("tenant {:?} has never been exempted", id.as_str()),
        )),
    }
}

fn exemption_json(e: &Exemption, now: DateTime<Utc>) -> Value {
    let mut v = e.to_json();
    v["in_force"] = json!(e.until > now);
    v
}

/// A tenant's budget status: spent, remaining, forecast, completeness (what the enforcer sees).
pub async fn budget_status(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "tenant_id": status.tenant.as_str(),
        "period": status.period.as_str(),
        "period_start": status.period_start,
        "period_end": status.period_end,
        "currency": status.budget.currency.code(),
        "budget": status.budget.amount.to_string(),
        "spent": status.spent.to_string(),
        "remaining": status.remaining().to_string(),
        "forecast": status.forecast.to_string(),
        "spent_percent": percent(status.spent),
        "forecast_percent": percent(status.forecast),
        "trailing_start": status.trailing_start,
        "data_until": status.data_until,
        "data_complete": status.complete,
        "state": status.state.as_str(),
    })))
}
