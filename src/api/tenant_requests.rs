//! Self-service tenant requests: anyone with a person's token (not a tenant token) asks for a
//! tenant; an operator or admin other than the requester approves it (the tenant becomes
//! active with its budget) or rejects it.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger::budget::{parse_budget_amount, BudgetPeriod, Thresholds};
use ledger::currency::Currency;
use ledger::names::Reason;
use ledger::tenant::{
    DisplayName, Justification, Labels, NamespaceName, NewTenant, NewTenantRequest, Owner,
    OwnerGroup, RequestState, TenantId, TenantRequest,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{query_params, Caller, JsonBody, TenantPath};
use super::tenants::DEFAULT_THRESHOLDS;
use super::AppState;
use crate::auth::Permission;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "initech", "display_name": "Initech", "owner": "lead@example.com", "owner_group": "platform", "data_residency": "eu", "quota_profile": "standard", "budget": {"amount": "500.00", "currency": "EUR"}, "justification": "the new billing service"}))]
struct CreateRequest {
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    id: String,
    display_name: String,
    #[schema(format = Email)]
    owner: String,
    owner_group: String,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    data_residency: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    quota_profile: String,
    budget: RequestedBudget,
    justification: String,
    /// Default: one namespace named like the id. Claimed when the request is approved.
    namespaces: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct RequestedBudget {
    #[schema(pattern = "^[0-9]{1,12}(\\.[0-9]{1,2})?$")]
    amount: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(pattern = "^(monthly|quarterly|yearly)$")]
    period: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "the platform board agreed"}))]
struct DecisionBody {
    reason: String,
}

#[derive(Serialize, ToSchema)]
struct BudgetDto {
    amount: String,
    currency: String,
    period: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct RequestDto {
    id: String,
    display_name: String,
    owner: String,
    owner_group: Option<String>,
    data_residency: String,
    labels: BTreeMap<String, String>,
    quota_profile: Option<String>,
    budget: BudgetDto,
    justification: String,
    /// The namespaces asked for, claimed on approval.
    namespaces: Vec<String>,
    /// `requested` until decided, then `approved` or `rejected`.
    state: &'static str,
    /// The tenant's lifecycle state (it moves on after approval: suspended, offboarding ...).
    tenant_state: &'static str,
    requested_by: String,
    requested_at: DateTime<Utc>,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
    decision_reason: Option<String>,
}

impl From<TenantRequest> for RequestDto {
    fn from(r: TenantRequest) -> Self {
        let state = r.state().as_str();
        let t = r.tenant;
        RequestDto {
            id: t.id.to_string(),
            display_name: t.display_name.as_str().to_owned(),
            owner: t.owner.as_str().to_owned(),
            owner_group: t.owner_group.map(|g| g.as_str().to_owned()),
            data_residency: t.data_residency.as_str().to_owned(),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            quota_profile: t.quota_profile.map(|p| p.as_str().to_owned()),
            budget: BudgetDto {
                amount: r.budget.amount.to_string(),
                currency: r.budget.currency.code().to_owned(),
                period: r.period.as_str(),
            },
            justification: r.justification.as_str().to_owned(),
            namespaces: r.namespaces.iter().map(|n| n.as_str().to_owned()).collect(),
            state,
            tenant_state: t.state.as_str(),
            requested_by: r.requested_by,
            requested_at: r.requested_at,
            decided_by: r.decision.as_ref().map(|d| d.by.clone()),
            decided_at: r.decision.as_ref().map(|d| d.at),
            decision_reason: r.decision.map(|d| d.reason),
        }
    }
}

/// A field of the request's budget, named as the body names it.
fn budget_field(e: ledger::Invalid) -> ledger::Invalid {
    let field = if e.field.starts_with("budget.") {
        e.field
    } else {
        format!("budget.{}", e.field)
    };
    ledger::Invalid::new(field, e.message)
}

/// Asks for a new tenant with its budget; an operator or admin other than the requester
/// decides.
#[utoipa::path(
    post,
    path = "/api/v1/tenant-requests",
    tag = "tenant-requests",
    request_body = CreateRequest,
    responses(
        (status = 201, description = "Requested; `Location` names it", body = RequestDto,
         headers(("location" = String, description = "The request's URL"))),
        (status = 409, description = "The id or a namespace is taken (`conflict` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer"])))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Permission::RequestTenant)?;
    let req: CreateRequest = body.parse()?;
    let lifecycle = &state.lifecycle;
    let currency = Currency::parse("currency", &req.budget.currency).map_err(budget_field)?;
    let new = NewTenantRequest {
        tenant: NewTenant {
            id: TenantId::parse(&req.id)?,
            display_name: DisplayName::parse(&req.display_name)?,
            owner: Owner::parse_email(&req.owner)?,
            data_residency: lifecycle.residency("data_residency", &req.data_residency)?,
            labels: Labels::parse(req.labels)?,
            owner_group: Some(OwnerGroup::parse(&req.owner_group)?),
            quota_profile: Some(lifecycle.quota_profile("quota_profile", &req.quota_profile)?),
            namespaces: req
                .namespaces
                .map(|n| NamespaceName::parse_list("namespaces", &n))
                .transpose()?
                .unwrap_or_default(),
        },
        budget: parse_budget_amount("amount", &req.budget.amount, currency)
            .map_err(budget_field)?,
        period: req
            .budget
            .period
            .as_deref()
            .map(BudgetPeriod::parse)
            .transpose()
            .map_err(budget_field)?
            .unwrap_or(BudgetPeriod::Monthly),
        justification: Justification::parse(&req.justification)?,
    };
    let request = state.store.request_tenant(&caller.audit(), &new).await?;
    let location = format!("/api/v1/tenant-requests/{}", request.tenant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(RequestDto::from(request)),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct RequestList {
    requests: Vec<RequestDto>,
}

/// Lists tenant requests (a tenant token: its own tenant's only).
#[utoipa::path(
    get,
    path = "/api/v1/tenant-requests",
    tag = "tenant-requests",
    params(("state" = Option<String>, Query, pattern = "^(requested|approved|rejected)$", description = "`requested`, `approved` or `rejected`")),
    responses(
        (status = 200, description = "The requests", body = RequestList),
        (status = 400, description = "An invalid state or an unknown parameter", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<RequestList>, ApiError> {
    caller.require(Permission::ReadTenants)?;
    let params = query_params(query.as_deref(), &["state"])?;
    let filter = params
        .get("state")
        .map(|s| RequestState::parse(s))
        .transpose()?;
    let requests = state
        .store
        .list_tenant_requests(filter)
        .await?
        .into_iter()
        .filter(|r| caller.principal.sees(&r.tenant.id))
        .map(RequestDto::from)
        .collect();
    Ok(Json(RequestList { requests }))
}

/// Reads a tenant request (by the tenant id it asks for).
#[utoipa::path(
    get,
    path = "/api/v1/tenant-requests/{id}",
    tag = "tenant-requests",
    params(TenantPath),
    responses(
        (status = 200, description = "The request", body = RequestDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such request (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<RequestDto>, ApiError> {
    caller.require_for(&id, Permission::ReadTenants)?;
    Ok(Json(state.store.get_tenant_request(&id).await?.into()))
}

/// Approves a request: the tenant becomes active with its budget. Not by its requester.
#[utoipa::path(
    post,
    path = "/api/v1/tenant-requests/{id}/approve",
    tag = "tenant-requests",
    params(TenantPath),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The request as decided", body = RequestDto),
        (status = 403, description = "The role may not decide, or the caller made the request", body = ErrorBody),
        (status = 404, description = "No such request (`not_found`)", body = ErrorBody),
        (status = 409, description = "Already decided, or a namespace is taken", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<RequestDto>, ApiError> {
    caller.require_for(&id, Permission::DecideTenantRequests)?;
    let req: DecisionBody = body.parse()?;
    let reason = Reason::parse("reason", &req.reason)?;
    let thresholds = Thresholds::parse(DEFAULT_THRESHOLDS.to_vec())?;
    let request = state
        .store
        .approve_tenant_request(&caller.audit(), &id, &reason, &thresholds, (state.clock)())
        .await?;
    Ok(Json(request.into()))
}

/// Rejects a request. Not by its requester.
#[utoipa::path(
    post,
    path = "/api/v1/tenant-requests/{id}/reject",
    tag = "tenant-requests",
    params(TenantPath),
    request_body = DecisionBody,
    responses(
        (status = 200, description = "The request as decided", body = RequestDto),
        (status = 403, description = "The role may not decide, or the caller made the request", body = ErrorBody),
        (status = 404, description = "No such request (`not_found`)", body = ErrorBody),
        (status = 409, description = "Already decided", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn reject(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<RequestDto>, ApiError> {
    caller.require_for(&id, Permission::DecideTenantRequests)?;
    let req: DecisionBody = body.parse()?;
    let reason = Reason::parse("reason", &req.reason)?;
    let request = state
        .store
        .reject_tenant_request(&caller.audit(), &id, &reason)
        .await?;
    Ok(Json(request.into()))
}
