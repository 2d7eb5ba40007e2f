//! Tenant routes: create (an operator's create is its own approval; see `tenant_requests`),
//! list, read, update, offboard; budgets; costs.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use ledger::budget::{parse_budget_amount, Budget, BudgetPeriod, NewBudget, Thresholds};
use ledger::currency::Currency;
use ledger::names::Reason;
use ledger::tenant::{
    DisplayName, Labels, NamespaceName, NewTenant, Owner, OwnerGroup, SuspendedBy, Tenant,
    TenantId, TenantPatch, TenantState,
};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{query_params, Caller, JsonBody, TenantPath};
use super::AppState;
use crate::auth::Permission;
use crate::report::CostReport;

#[derive(Serialize, ToSchema)]
pub struct TenantDto {
    id: String,
    display_name: String,
    owner: String,
    data_residency: String,
    labels: BTreeMap<String, String>,
    owner_group: Option<String>,
    quota_profile: Option<String>,
    state: &'static str,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    state_changed_at: DateTime<Utc>,
    namespaces: Vec<String>,
    /// `operator` or `budget` while suspended, otherwise null.
    suspended_by: Option<&'static str>,
    isolated: bool,
    isolated_at: Option<DateTime<Utc>>,
    isolated_by: Option<String>,
    isolation_reason: Option<String>,
}

impl From<Tenant> for TenantDto {
    fn from(t: Tenant) -> Self {
        TenantDto {
            id: t.id.to_string(),
            display_name: t.display_name.as_str().to_owned(),
            owner: t.owner.as_str().to_owned(),
            data_residency: t.data_residency.as_str().to_owned(),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            owner_group: t.owner_group.map(|g| g.as_str().to_owned()),
            quota_profile: t.quota_profile.map(|p| p.as_str().to_owned()),
            state: t.state.as_str(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            state_changed_at: t.state_changed_at,
            namespaces: t.namespaces.iter().map(|n| n.as_str().to_owned()).collect(),
            suspended_by: t.suspended_by.map(SuspendedBy::as_str),
            isolated: t.isolation.is_some(),
            isolated_at: t.isolation.as_ref().map(|i| i.at),
            isolated_by: t.isolation.as_ref().map(|i| i.by.clone()),
            isolation_reason: t.isolation.map(|i| i.reason),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "globex", "display_name": "Globex", "owner": "ops@example.com", "data_residency": "eu", "labels": {"team": "core"}}))]
struct CreateTenant {
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    id: String,
    display_name: String,
    owner: String,
    #[schema(pattern = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    data_residency: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    owner_group: Option<String>,
    quota_profile: Option<String>,
    /// Default: one namespace named like the id.
    namespaces: Option<Vec<String>>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"display_name": "Globex Corporation"}))]
struct PatchTenant {
    display_name: Option<String>,
    owner: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    /// Absent: unchanged; null: cleared.
    #[serde(default, deserialize_with = "present")]
    owner_group: Option<Option<String>>,
    quota_profile: Option<String>,
    namespaces: Option<Vec<String>>,
    // Named so that the error can say why rather than "unknown field"; not in the document,
    // since they are always refused.
    #[schema(ignore)]
    data_residency: Option<serde_json::Value>,
    #[schema(ignore)]
    id: Option<serde_json::Value>,
    #[schema(ignore)]
    state: Option<serde_json::Value>,
}

/// Creates a tenant (an operator's create is its own approval).
#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "tenants",
    request_body = CreateTenant,
    responses(
        (status = 201, description = "Created; `Location` names it", body = TenantDto,
         headers(("location" = String, description = "The new tenant's URL"))),
        (status = 409, description = "The id or a namespace is taken (`conflict`, `namespace_taken` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Permission::ManageTenants)?;
    let req: CreateTenant = body.parse()?;
    let new = NewTenant {
        id: TenantId::parse(&req.id)?,
        display_name: DisplayName::parse(&req.display_name)?,
        owner: Owner::parse(&req.owner)?,
        data_residency: state
            .lifecycle
            .residency("data_residency", &req.data_residency)?,
        labels: Labels::parse(req.labels)?,
        owner_group: req
            .owner_group
            .as_deref()
            .map(OwnerGroup::parse)
            .transpose()?,
        quota_profile: req
            .quota_profile
            .as_deref()
            .map(|p| state.lifecycle.quota_profile("quota_profile", p))
            .transpose()?,
        namespaces: req
            .namespaces
            .map(|n| NamespaceName::parse_list("namespaces", &n))
            .transpose()?
            .unwrap_or_default(),
    };
    let tenant = state.store.create_tenant(&caller.audit(), &new).await?;
    let location = format!("/api/v1/tenants/{}", tenant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(TenantDto::from(tenant)),
    ))
}

#[derive(Serialize, ToSchema)]
pub struct TenantList {
    tenants: Vec<TenantDto>,
}

/// Lists tenants (a tenant token: only its own).
#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "tenants",
    params(("state" = Option<String>, Query, pattern = "^(requested|active|suspended|offboarding|offboarded|rejected)$", description = "Only tenants in this state: `requested`, `active`, `suspended`, `offboarding`, `offboarded` or `rejected`")),
    responses(
        (status = 200, description = "The tenants", body = TenantList),
        (status = 400, description = "An unknown query parameter or state (`unknown_field`, `invalid_field`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<TenantList>, ApiError> {
    caller.require(Permission::ReadTenants)?;
    let params = query_params(query.as_deref(), &["state"])?;
    let filter = params
        .get("state")
        .map(|s| TenantState::parse(s))
        .transpose()?;
    let tenants = state.store.list_tenants(filter).await?;
    let tenants = tenants
        .into_iter()
        .filter(|t| caller.principal.sees(&t.id))
        .map(TenantDto::from)
        .collect();
    Ok(Json(TenantList { tenants }))
}

/// Reads a tenant.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    params(TenantPath),
    responses(
        (status = 200, description = "The tenant", body = TenantDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<TenantDto>, ApiError> {
    caller.require_for(&id, Permission::ReadTenants)?;
    Ok(Json(state.store.get_tenant(&id).await?.into()))
}

/// Changes a tenant's display name, owner, labels, owner group, quota profile or namespaces.
#[utoipa::path(
    patch,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    params(TenantPath),
    request_body = PatchTenant,
    responses(
        (status = 200, description = "The tenant as changed", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it, or a namespace is taken", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn patch(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<TenantDto>, ApiError> {
    caller.require_for(&id, Permission::ManageTenants)?;
    let req: PatchTenant = body.parse()?;
    if req.data_residency.is_some() {
        return Err(ApiError::invalid(
            "data_residency",
            "data residency is fixed when a tenant is created",
        ));
    }
    if req.id.is_some() {
        return Err(ApiError::invalid("id", "a tenant id cannot change"));
    }
    if req.state.is_some() {
        return Err(ApiError::invalid(
            "state",
            "the lifecycle state changes through its own operations (DELETE offboards)",
        ));
    }
    let patch = TenantPatch {
        display_name: req
            .display_name
            .as_deref()
            .map(DisplayName::parse)
            .transpose()?,
        owner: req.owner.as_deref().map(Owner::parse).transpose()?,
        labels: req.labels.map(Labels::parse).transpose()?,
        owner_group: req
            .owner_group
            .map(|g| g.as_deref().map(OwnerGroup::parse).transpose())
            .transpose()?,
        quota_profile: req
            .quota_profile
            .as_deref()
            .map(|p| state.lifecycle.quota_profile("quota_profile", p))
            .transpose()?,
        namespaces: req
            .namespaces
            .map(|n| NamespaceName::parse_list("namespaces", &n))
            .transpose()?,
    };
    if patch.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_patch",
            "give at least one of display_name, owner, labels, owner_group, quota_profile, \
             namespaces",
        ));
    }
    let tenant = state
        .store
        .update_tenant(&caller.audit(), &id, &patch)
        .await?;
    Ok(Json(tenant.into()))
}

/// A field that may be given as null (`Some(None)`), unlike one left out (`None`).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// The body of an operator's operation: why, in one line.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "incident 4711"}))]
struct ReasonBody {
    reason: String,
}

fn reason(body: &JsonBody) -> Result<Reason, ApiError> {
    let req: ReasonBody = body.parse()?;
    Ok(Reason::parse("reason", &req.reason)?)
}

/// The four operator operations on a tenant: operator or admin, a one-line reason.
#[derive(Clone, Copy)]
enum OperatorOp {
    Suspend,
    Resume,
    Isolate,
    Release,
}

async fn operate(
    state: AppState,
    caller: Caller,
    id: TenantId,
    body: JsonBody,
    op: OperatorOp,
) -> Result<Json<TenantDto>, ApiError> {
    caller.require_for(&id, Permission::ManageTenants)?;
    let reason = reason(&body)?;
    let (ctx, store) = (caller.audit(), &state.store);
    let tenant = match op {
        OperatorOp::Suspend => store.operator_suspend(&ctx, &id, &reason).await?,
        OperatorOp::Resume => store.operator_resume(&ctx, &id, &reason).await?,
        OperatorOp::Isolate => store.isolate_tenant(&ctx, &id, &reason).await?,
        OperatorOp::Release => store.release_isolation(&ctx, &id, &reason).await?,
    };
    Ok(Json(tenant.into()))
}

/// An operator suspends an active tenant; the leader's enforcer scales it to zero, recording
/// the prior values. Retried: a no-op. Budget-suspended: 409 `suspended_by_budget`.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/suspend",
    tag = "tenants",
    params(TenantPath),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The tenant as suspended", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it (`invalid_transition`, `suspended_by_budget` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn suspend(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<TenantDto>, ApiError> {
    operate(state, caller, id, body, OperatorOp::Suspend).await
}

/// An operator resumes a tenant they suspended; the enforcer restores the prior values
/// exactly. A budget suspension is lifted by an exemption, not here (409
/// `suspended_by_budget`).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/resume",
    tag = "tenants",
    params(TenantPath),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The tenant as resumed", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it (`invalid_transition`, `suspended_by_budget` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<TenantDto>, ApiError> {
    operate(state, caller, id, body, OperatorOp::Resume).await
}

/// Isolates a tenant for an incident (the blueprint reconciler applies a deny-all
/// NetworkPolicy); nothing is scaled down.
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/isolate",
    tag = "tenants",
    params(TenantPath),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The tenant as isolated", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it (`invalid_transition`, `suspended_by_budget` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn isolate(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<TenantDto>, ApiError> {
    operate(state, caller, id, body, OperatorOp::Isolate).await
}

/// Ends an isolation (the reason is audited with the release).
#[utoipa::path(
    post,
    path = "/api/v1/tenants/{id}/release",
    tag = "tenants",
    params(TenantPath),
    request_body = ReasonBody,
    responses(
        (status = 200, description = "The tenant released from isolation", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it (`invalid_transition`, `suspended_by_budget` ...)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn release(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<TenantDto>, ApiError> {
    operate(state, caller, id, body, OperatorOp::Release).await
}

// Budgets

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"amount": "1000.00", "currency": "EUR", "period": "monthly", "thresholds": [50, 80, 100]}))]
struct PutBudget {
    #[schema(pattern = "^[0-9]{1,12}(\\.[0-9]{1,2})?$")]
    amount: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    #[schema(pattern = "^(monthly|quarterly|yearly)$")]
    period: Option<String>,
    thresholds: Option<Vec<u32>>,
    #[schema(format = DateTime)]
    effective_from: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BudgetDto {
    tenant_id: String,
    amount: String,
    currency: String,
    period: &'static str,
    thresholds: Vec<u32>,
    effective_from: DateTime<Utc>,
    created_at: DateTime<Utc>,
    created_by: String,
    current_period: PeriodDto,
}

#[derive(Serialize, ToSchema)]
struct PeriodDto {
    start: NaiveDate,
    /// Exclusive.
    end: NaiveDate,
}

impl BudgetDto {
    fn new(b: Budget, now: DateTime<Utc>) -> Self {
        let (start, end) = b.period.bounds(now);
        BudgetDto {
            tenant_id: b.tenant.to_string(),
            amount: b.amount.amount.to_string(),
            currency: b.amount.currency.to_string(),
            period: b.period.as_str(),
            thresholds: b.thresholds.as_slice().to_vec(),
            effective_from: b.effective_from,
            created_at: b.created_at,
            created_by: b.created_by,
            current_period: PeriodDto { start, end },
        }
    }
}

pub const DEFAULT_THRESHOLDS: [u32; 3] = [50, 80, 100];

/// Sets the tenant's budget from `effective_from` (default: now) on.
#[utoipa::path(
    put,
    path = "/api/v1/tenants/{id}/budget",
    tag = "tenants",
    params(TenantPath),
    request_body = PutBudget,
    responses(
        (status = 200, description = "The budget", body = BudgetDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "Another currency than the ledger's, or the tenant's state does not allow it", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance"])))
)]
pub async fn put_budget(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<Json<BudgetDto>, ApiError> {
    caller.require_for(&id, Permission::SetBudget)?;
    let req: PutBudget = body.parse()?;
    let currency = Currency::parse("currency", &req.currency)?;
    let now = (state.clock)();
    let effective_from = req
        .effective_from
        .as_deref()
        .map(|t| ledger::time::parse_instant("effective_from", t))
        .transpose()?
        .unwrap_or(now);
    let new = NewBudget {
        amount: parse_budget_amount("amount", &req.amount, currency)?,
        period: req
            .period
            .as_deref()
            .map(BudgetPeriod::parse)
            .transpose()?
            .unwrap_or(BudgetPeriod::Monthly),
        thresholds: Thresholds::parse(req.thresholds.unwrap_or(DEFAULT_THRESHOLDS.to_vec()))?,
        effective_from,
    };
    // The ledger keeps one currency; the store checks it with the budget's write, so that a
    // budget in another one, which could never be compared with spend, is refused.
    let budget = state.store.set_budget(&caller.audit(), &id, &new).await?;
    Ok(Json(BudgetDto::new(budget, now)))
}

/// The tenant's budget in force now.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/budget",
    tag = "tenants",
    params(TenantPath),
    responses(
        (status = 200, description = "The budget in force", body = BudgetDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`), or none in force (`no_budget`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn get_budget(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<BudgetDto>, ApiError> {
    caller.require_for(&id, Permission::ReadBudget)?;
    let now = (state.clock)();
    // A missing tenant answers 404 as a tenant, not as a budget.
    state.store.get_tenant(&id).await?;
    match state.store.budget_at(&id, now).await? {
        Some(budget) => Ok(Json(BudgetDto::new(budget, now))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_budget",
            format!("tenant {:?} has no budget in force", id.as_str()),
        )),
    }
}

// Costs

/// The longest range one costs request may cover.
const MAX_COST_DAYS: i64 = 366;

/// The tenant's costs per day and meter over an inclusive range of UTC days (at most 366).
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/costs",
    tag = "tenants",
    params(
        TenantPath,
        ("from" = String, Query, format = Date, description = "First day, `YYYY-MM-DD`"),
        ("to" = String, Query, format = Date, description = "Last day, inclusive"),
    ),
    responses(
        (status = 200, description = "The costs", body = CostReport),
        (status = 400, description = "A missing or invalid day, a range of more than 366 days, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn costs(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    RawQuery(query): RawQuery,
) -> Result<Json<CostReport>, ApiError> {
    caller.require_for(&id, Permission::ReadCosts)?;
    let params = query_params(query.as_deref(), &["from", "to"])?;
    let (from, to) = date_range(params.get("from"), params.get("to"))?;
    state.store.get_tenant(&id).await?;
    let next_day = to
        .succ_opt()
        .ok_or_else(|| ApiError::invalid("to", "out of range"))?;
    let costs = state.store.daily_costs(Some(&id), from, next_day).await?;
    Ok(Json(CostReport::new(from, to, &costs)))
}

/// Parses an inclusive range of UTC days.
pub fn date_range(
    from: Option<&String>,
    to: Option<&String>,
) -> Result<(NaiveDate, NaiveDate), ApiError> {
    let day = |field: &str, value: Option<&String>| -> Result<NaiveDate, ApiError> {
        let value = value.ok_or_else(|| ApiError::invalid(field, "is required (YYYY-MM-DD)"))?;
        Ok(ledger::time::parse_day(field, value)?)
    };
    let (from, to) = (day("from", from)?, day("to", to)?);
    if to < from {
        return Err(ApiError::invalid("to", "must not be before from"));
    }
    if (to - from).num_days() >= MAX_COST_DAYS {
        return Err(ApiError::invalid(
            "to",
            format!("a request covers at most {MAX_COST_DAYS} days"),
        ));
    }
    Ok((from, to))
}
