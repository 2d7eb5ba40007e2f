//! `GET /api/v1/collector/pricing-errors`: tenants' usage the price book could not price, per
//! key (tenant, meter, window), newest windows first. Such usage is missing from the tenant's
//! costs and spend until the collector prices it (see `Collector::reprice`).

use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::{DateTime, Utc};
use ledger::store::{UnpricedFilter, UnpricedRecord};
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{page_limit, query_params, tenant_filter, Caller};
use super::AppState;
use crate::auth::Permission;

#[derive(Serialize, ToSchema)]
pub struct PricingErrorDto {
    tenant_id: String,
    meter: String,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    /// The measured usage, in `unit`, as a decimal string.
    quantity: String,
    unit: String,
    price_unit: String,
    /// `no_version`, `no_rate` or `out_of_range`.
    failure: &'static str,
    /// The version in force that could not price it (it may since have been withdrawn).
    price_version: Option<i64>,
    message: String,
    detected_at: DateTime<Utc>,
    /// When its entry was written (or a recollection no longer found it); null while open.
    resolved_at: Option<DateTime<Utc>>,
}

impl From<UnpricedRecord> for PricingErrorDto {
    fn from(r: UnpricedRecord) -> Self {
        let u = r.usage;
        PricingErrorDto {
            tenant_id: u.key.tenant.to_string(),
            meter: u.key.meter.to_string(),
            window_start: u.key.window.start(),
            window_end: u.key.window.end(),
            quantity: u.quantity.to_string(),
            unit: u.unit.to_string(),
            price_unit: u.price_unit.to_string(),
            failure: u.failure.kind(),
            price_version: u.failure.version(),
            message: r.message,
            detected_at: r.detected_at,
            resolved_at: r.resolved_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct PricingErrors {
    pricing_errors: Vec<PricingErrorDto>,
}

/// `?tenant=` (a tenant token: its own only), `?state=open|all` (default `open`), `?limit=`.
#[utoipa::path(
    get,
    path = "/api/v1/collector/pricing-errors",
    tag = "collector",
    params(
        ("tenant" = Option<String>, Query, description = "Only this tenant's"),
        ("state" = Option<String>, Query, pattern = "^(open|all)$", description = "`open` (default) or `all`"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "The pricing errors", body = PricingErrors),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorBody),
        (status = 404, description = "A tenant token asked for another tenant (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<PricingErrors>, ApiError> {
    caller.require(Permission::ReadCosts)?;
    let params = query_params(query.as_deref(), &["tenant", "state", "limit"])?;
    let tenant = tenant_filter(&caller, &params)?;
    let open_only = match params.get("state").map(String::as_str) {
        None | Some("open") => true,
        Some("all") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "state",
                format!("{other:?} is not one of \"open\", \"all\""),
            ))
        }
    };
    let limit = page_limit(&params)?;
    let records = state
        .store
        .list_unpriced(&UnpricedFilter {
            tenant,
            open_only,
            limit,
        })
        .await?;
    Ok(Json(PricingErrors {
        pricing_errors: records.into_iter().map(PricingErrorDto::from).collect(),
    }))
}
