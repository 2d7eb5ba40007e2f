//! Governance routes: the governance report (JSON or CSV), the audit trail (paged newest first
//! with a keyset cursor on `seq`), and the access review. See `crate::governance`.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Duration, Utc};
use ledger::store::AuditFilter;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{page_limit, query_params, tenant_filter, Caller};
use super::AppState;
use crate::auth::Permission;
use crate::governance::{
    access_review, governance_rows, write_governance_csv, AccessReview, AuditRecordView,
    GovernanceRow, STALE_AFTER_DAYS,
};

#[derive(Debug, Serialize, ToSchema)]
pub struct GovernanceReport {
    pub generated_at: DateTime<Utc>,
    pub tenants: Vec<GovernanceRow>,
}

/// Whether the caller asked for CSV: `?format=csv`, or `Accept: text/csv` without a format.
fn wants_csv(params: &BTreeMap<String, String>, headers: &HeaderMap) -> Result<bool, ApiError> {
    match params.get("format").map(String::as_str) {
        Some("csv") => Ok(true),
        Some("json") => Ok(false),
        Some(_) => Err(ApiError::invalid("format", "`json` or `csv`")),
        None => Ok(headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|media| {
                media
                    .split(';')
                    .next()
                    .is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv"))
            })),
    }
}

/// The governance report: one row per tenant with its owner, state, residency, namespaces,
/// budget, month-to-date spend, forecast, open enforcement actions and last lifecycle change.
#[utoipa::path(
    get,
    path = "/api/v1/reports/governance",
    tag = "reports",
    params(
        ("format" = Option<String>, Query, pattern = "^(json|csv)$", description = "`json` (default) or `csv`; without it, `Accept: text/csv` asks for CSV"),
    ),
    responses(
        (status = 200, description = "The report: JSON, or CSV (a header row, one row per tenant)",
         content((GovernanceReport = "application/json"), (String = "text/csv"))),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "finance", "auditor"])))
)]
pub async fn governance(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    caller.require(Permission::ReadReports)?;
    let params = query_params(query.as_deref(), &["format"])?;
    let csv = wants_csv(&params, &headers)?;
    let now = (state.clock)();
    let tenants = governance_rows(&state.store, now, &state.status).await?;
    if csv {
        let mut out = Vec::new();
        write_governance_csv(&tenants, &mut out).map_err(|e| {
            tracing::error!(error = %e, "writing the governance CSV");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the report could not be written",
            )
        })?;
        Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
    } else {
        Ok(Json(GovernanceReport {
            generated_at: now,
            tenants,
        })
        .into_response())
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    /// Newest first.
    pub records: Vec<AuditRecordView>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

const CURSOR_PREFIX: &str = "audit-seq:";

/// An opaque cursor: the hex of `audit-seq:<seq>`, the next page's records are below `seq`.
fn encode_cursor(seq: i64) -> String {
    hex::encode(format!("{CURSOR_PREFIX}{seq}"))
}

fn decode_cursor(cursor: &str) -> Result<i64, ApiError> {
    hex::decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix(CURSOR_PREFIX)?.parse::<i64>().ok())
        .filter(|seq| *seq > 0)
        .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API returned"))
}

fn time_param(
    params: &BTreeMap<String, String>,
    name: &str,
) -> Result<Option<DateTime<Utc>>, ApiError> {
    params
        .get(name)
        .map(|v| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| ApiError::invalid(name, "an RFC 3339 timestamp"))
        })
        .transpose()
}

fn text_param(params: &BTreeMap<String, String>, name: &str) -> Result<Option<String>, ApiError> {
    params
        .get(name)
        .map(|v| {
            if v.is_empty() || v.len() > 256 || v.chars().any(char::is_control) {
                Err(ApiError::invalid(
                    name,
                    "1 to 256 characters, no control characters",
                ))
            } else {
                Ok(v.clone())
            }
        })
        .transpose()
}

/// Pages through the audit trail, newest first (a tenant token: its own tenant's records, i.e.
/// those about the tenant and its enforcement actions).
#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "reports",
    params(
        ("tenant" = Option<String>, Query, description = "Only records about this tenant and its enforcement actions"),
        ("actor" = Option<String>, Query, description = "Only this actor's records (a token's name, an OIDC user, a component)"),
        ("action" = Option<String>, Query, description = "Only this action (`tenant.created`, `budget.set`, ...)"),
        ("from" = Option<String>, Query, format = DateTime, description = "Records at or after this instant"),
        ("to" = Option<String>, Query, format = DateTime, description = "Records before this instant"),
        ("cursor" = Option<String>, Query, description = "The `next_cursor` of the previous page"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many (default 100)"),
    ),
    responses(
        (status = 200, description = "One page of records", body = AuditPage),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorBody),
        (status = 404, description = "A tenant token asked for another tenant (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "finance", "auditor", "tenant"])))
)]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Permission::ReadAudit)?;
    let params = query_params(
        query.as_deref(),
        &["tenant", "actor", "action", "from", "to", "cursor", "limit"],
    )?;
    let tenant = tenant_filter(&caller, &params)?;
    let from = time_param(&params, "from")?;
    let to = time_param(&params, "to")?;
    if let (Some(from), Some(to)) = (from, to) {
        if from >= to {
            return Err(ApiError::invalid("to", "after `from`"));
        }
    }
    let before_seq = params.get("cursor").map(|c| decode_cursor(c)).transpose()?;
    let limit = page_limit(&params)?;
    let mut records = state
        .store
        .audit_page(&AuditFilter {
            tenant,
            actor: text_param(&params, "actor")?,
            action: text_param(&params, "action")?,
            from,
            to,
            before_seq,
            // One more than asked: whether there is a next page.
            limit: limit + 1,
        })
        .await?;
    let next_cursor = if records.len() as i64 > limit {
        records.truncate(limit as usize);
        records.last().map(|r| encode_cursor(r.seq))
    } else {
        None
    };
    Ok(Json(AuditPage {
        records: records.into_iter().map(AuditRecordView::from).collect(),
        next_cursor,
    }))
}

/// The access review: every identity that can act (configuration tokens, the bootstrap token,
/// managed tokens, OIDC role mappings, and the other actors of the audit trail), its role and
/// scope, when it last acted and its mutations in `[from, to)`; a live token unused for 90 days
/// is flagged.
#[utoipa::path(
    get,
    path = "/api/v1/reports/access-review",
    tag = "reports",
    params(
        ("from" = Option<String>, Query, format = DateTime, description = "The period's start (default: 90 days before `to`)"),
        ("to" = Option<String>, Query, format = DateTime, description = "The period's end, exclusive (default: now)"),
    ),
    responses(
        (status = 200, description = "The review", body = AccessReview),
        (status = 400, description = "An invalid or unknown parameter", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "auditor"])))
)]
pub async fn access(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<AccessReview>, ApiError> {
    caller.require(Permission::ReviewAccess)?;
    let params = query_params(query.as_deref(), &["from", "to"])?;
    let now = (state.clock)();
    let to = time_param(&params, "to")?.unwrap_or(now);
    let from = time_param(&params, "from")?.unwrap_or(to - Duration::days(STALE_AFTER_DAYS));
    if from >= to {
        return Err(ApiError::invalid("to", "after `from`"));
    }
    Ok(Json(
        access_review(&state.store, &state.auth, from, to, now).await?,
    ))
}
