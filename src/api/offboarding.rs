//! Offboarding routes: `DELETE /api/v1/tenants/{id}` starts it, `GET .../offboarding` shows
//! how far it got, `GET .../final-report?format=json|csv` downloads the final cost report. The
//! steps after the start (access revoked, resources deleted) are the reconciler's
//! (`Store::offboarding_access_revoked`, `Store::offboarding_resources_deleted`).

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, NaiveDate, Utc};
use ledger::names::Reason;
use ledger::offboarding::Offboarding;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{query_params, Caller, JsonBody, TenantPath};
use super::tenants::TenantDto;
use super::AppState;
use crate::auth::Permission;
use crate::report::CostReport;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "the contract ended"}))]
struct OffboardBody {
    reason: String,
}

/// The reason recorded when a DELETE gives none.
const DEFAULT_REASON: &str = "offboarding requested through the API";

/// Starts offboarding an active or suspended tenant (202 with the tenant). Asking again while it
/// runs answers the same (202, nothing written); from any other state it is a 409 naming the
/// state and what may follow (a request is rejected, not offboarded).
#[utoipa::path(
    delete,
    path = "/api/v1/tenants/{id}",
    tag = "tenants",
    params(TenantPath),
    request_body(content = Option<OffboardBody>, description = "Optional: why (default: \"offboarding requested through the API\")"),
    responses(
        (status = 202, description = "Offboarding started (or already running)", body = TenantDto),
        (status = 404, description = "No such tenant (`not_found`)", body = ErrorBody),
        (status = 409, description = "The tenant's state does not allow it (`invalid_transition`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator"])))
)]
pub async fn start(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_for(&id, Permission::ManageTenants)?;
    let reason = match body.parse_optional::<OffboardBody>()? {
        Some(body) => Reason::parse("reason", &body.reason)?,
        None => Reason::parse("reason", DEFAULT_REASON)?,
    };
    let (tenant, _) = state
        .store
        .offboard_tenant(
            &caller.audit(),
            &id,
            &reason,
            state.lifecycle.offboarding,
            (state.clock)(),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, Json(TenantDto::from(tenant))))
}

#[derive(Serialize, ToSchema)]
pub struct OffboardingDto {
    tenant_id: String,
    state: &'static str,
    started_at: DateTime<Utc>,
    requested_by: String,
    reason: String,
    grace_until: DateTime<Utc>,
    /// Until when the ledger keeps the tenant's entries and audit records.
    retain_until: DateTime<Utc>,
    pseudonymise_display_name: bool,
    steps: Vec<StepDto>,
    final_report: Option<FinalReportSummary>,
}

#[derive(Serialize, ToSchema)]
struct StepDto {
    step: &'static str,
    done: bool,
    at: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
struct FinalReportSummary {
    from: NaiveDate,
    to: NaiveDate,
    closed_at: DateTime<Utc>,
    sha256: String,
    rows: usize,
}

fn steps(o: &Offboarding, now: DateTime<Utc>) -> Vec<StepDto> {
    let step = |step, at: Option<DateTime<Utc>>| StepDto {
        step,
        done: at.is_some(),
        at,
    };
    vec![
        step("started", Some(o.started_at)),
        step("final_report", Some(o.started_at)),
        step("access_revoked", o.access_revoked_at),
        StepDto {
            step: "grace_period",
            done: now >= o.grace_until,
            at: Some(o.grace_until),
        },
        step("resources_deleted", o.resources_deleted_at),
        step("completed", o.completed_at),
    ]
}

/// How far offboarding got: its record, each step with when it was done, the final report's
/// summary. 404 `not_offboarding` for a tenant whose offboarding has not started.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/offboarding",
    tag = "tenants",
    params(TenantPath),
    responses(
        (status = 200, description = "The offboarding's record and steps", body = OffboardingDto),
        (status = 400, description = "The id is not a tenant id (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`), or not being offboarded (`not_offboarding`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn progress(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
) -> Result<Json<OffboardingDto>, ApiError> {
    caller.require_for(&id, Permission::ReadTenants)?;
    let tenant = state.store.get_tenant(&id).await?;
    let record = state
        .store
        .offboarding(&id)
        .await?
        .ok_or_else(|| not_offboarding(&id))?;
    let report = state.store.final_report(&id).await?;
    Ok(Json(OffboardingDto {
        tenant_id: id.to_string(),
        state: tenant.state.as_str(),
        steps: steps(&record, (state.clock)()),
        started_at: record.started_at,
        requested_by: record.requested_by,
        reason: record.reason,
        grace_until: record.grace_until,
        retain_until: record.retain_until,
        pseudonymise_display_name: record.pseudonymise_display_name,
        final_report: report.map(|r| FinalReportSummary {
            from: r.from,
            to: r.to,
            closed_at: r.closed_at,
            sha256: hex::encode(r.sha256),
            rows: r.costs.len(),
        }),
    }))
}

fn not_offboarding(id: &ledger::tenant::TenantId) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_offboarding",
        format!("tenant {:?} is not being offboarded", id.as_str()),
    )
}

#[derive(Serialize, ToSchema)]
struct FinalReportDto {
    tenant_id: String,
    /// The offboarding instant: the report holds the costs recorded until then.
    closed_at: DateTime<Utc>,
    sha256: String,
    #[serde(flatten)]
    report: CostReport,
}

/// The final report as JSON (default) or CSV (`format=csv`, the costs report's columns and
/// formula escaping): the rows the costs route showed for its period at the offboarding
/// instant.
#[utoipa::path(
    get,
    path = "/api/v1/tenants/{id}/final-report",
    tag = "tenants",
    params(
        TenantPath,
        ("format" = Option<String>, Query, pattern = "^(json|csv)$", description = "`json` (default) or `csv`"),
    ),
    responses(
        (status = 200, description = "The final cost report", content(
            (FinalReportDto = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "An invalid id or format, or an unknown parameter", body = ErrorBody),
        (status = 404, description = "No such tenant (`not_found`), or not being offboarded (`not_offboarding`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn final_report(
    State(state): State<AppState>,
    caller: Caller,
    TenantPath(id): TenantPath,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require_for(&id, Permission::ReadCosts)?;
    let params = query_params(query.as_deref(), &["format"])?;
    let csv = match params.get("format").map(String::as_str) {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::invalid("format", "must be json or csv")),
    };
    state.store.get_tenant(&id).await?;
    let report = state
        .store
        .final_report(&id)
        .await?
        .ok_or_else(|| not_offboarding(&id))?;
    let costs = CostReport::new(report.from, report.to, &report.costs);
    if csv {
        let mut out = Vec::new();
        costs
            .write_csv(&mut out)
            .expect("writing to memory does not fail");
        let filename = format!("attachment; filename=\"final-report-{id}.csv\"");
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, filename),
            ],
            out,
        )
            .into_response());
    }
    Ok(Json(FinalReportDto {
        tenant_id: id.to_string(),
        closed_at: report.closed_at,
        sha256: hex::encode(report.sha256),
        report: costs,
    })
    .into_response())
}
