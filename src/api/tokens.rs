//! Managed API tokens: create (the secret is answered once and only its SHA-256 is kept), list
//! without secrets, revoke. Creating and revoking are the admin's and audited; the admin and the
//! auditor list. A revocation holds from its commit on every replica (tokens are looked up on
//! every request).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger::store::{ApiTokenRecord, NewApiToken};
use ledger::tenant::TenantId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::auth::{generate_managed_token, Permission, Role, TokenHash};

/// `POST /api/v1/tokens`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenRequest {
    /// 1 to 64 of `A-Z a-z 0-9 . _ @ -`; unique among live tokens and not a configuration
    /// token's.
    pub name: String,
    /// `admin`, `operator`, `finance`, `viewer`, `auditor` or `tenant`.
    pub role: String,
    /// The tenant of a `tenant` token (only then).
    pub tenant: Option<String>,
    /// RFC 3339; in the future. Without it the token does not expire.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A token as listed: never its secret or hash.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub id: i64,
    pub name: String,
    pub role: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `live`, `expired` or `revoked`.
    #[schema(value_type = String, pattern = "^(live|expired|revoked)$")]
    pub state: &'static str,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// To the minute: uses within a minute of the recorded one are not written.
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
}

impl TokenView {
    fn new(r: ApiTokenRecord, now: DateTime<Utc>) -> Self {
        let state = if r.revoked_at.is_some() {
            "revoked"
        } else if r.is_live(now) {
            "live"
        } else {
            "expired"
        };
        TokenView {
            id: r.id,
            name: r.name,
            role: r.role,
            tenant: r.tenant.map(|t| t.as_str().to_owned()),
            state,
            created_at: r.created_at,
            created_by: r.created_by,
            expires_at: r.expires_at,
            last_used_at: r.last_used_at,
            revoked_at: r.revoked_at,
            revoked_by: r.revoked_by,
        }
    }
}

/// The answer to a create: the token and, this once, its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedToken {
    #[serde(flatten)]
    pub token: TokenView,
    /// The bearer secret. It is not stored and cannot be shown again.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

fn token_name(name: &str) -> Result<String, ApiError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-');
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        return Err(ApiError::invalid(
            "name",
            "1 to 64 characters of A-Z a-z 0-9 . _ @ -",
        ));
    }
    Ok(name.to_owned())
}

fn token_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::invalid("id", "a token id is a positive integer"))
}

#[utoipa::path(
    post,
    path = "/api/v1/tokens",
    tag = "tokens",
    request_body = CreateTokenRequest,
    responses(
        (status = 201, description = "Created; the secret is answered this once", body = CreatedToken),
        (status = 409, description = "A live token or a configuration token has the name (`token_name_taken`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin"])))
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Permission::ManageTokens)?;
    let req: CreateTokenRequest = body.parse()?;
    let name = token_name(&req.name)?;
    let tenant = req
        .tenant
        .as_deref()
        .map(|t| TenantId::parse_field("tenant", t))
        .transpose()?;
    let role = Role::parse(&req.role, tenant.clone()).map_err(|m| {
        // An unknown role is the role's fault; a tenant missing or not taken, the tenant's.
        let field = if m.contains("is not a role") {
            "role"
        } else {
            "tenant"
        };
        ApiError::invalid(field, m)
    })?;
    let now = (state.clock)();
    let expires_at = req
        .expires_at
        .as_deref()
        .map(|at| ledger::time::parse_instant("expires_at", at))
        .transpose()?;
    if expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::invalid("expires_at", "must be in the future"));
    }
    if state.auth.reserves_name(&name) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "token_name_taken",
            format!("{name:?} is a configuration token's name; choose another"),
        ));
    }
    let secret = generate_managed_token();
    let new = NewApiToken {
        name,
        role: role.name().to_owned(),
        tenant,
        sha256: TokenHash::of(&secret).0,
        expires_at,
    };
    let (record, first_admin) = state
        .store
        .create_api_token(&caller.audit(), &new, now)
        .await?;
    tracing::info!(token = record.id, name = %record.name, role = %record.role, "API token created");
    if first_admin {
        tracing::warn!(
            "the first admin token exists: BUDGETD_BOOTSTRAP_ADMIN_TOKEN, if set, is refused from now on"
        );
    }
    Ok((
        StatusCode::CREATED,
        Json(CreatedToken {
            token: TokenView::new(record, now),
            secret,
        }),
    ))
}

#[utoipa::path(
    get,
    path = "/api/v1/tokens",
    tag = "tokens",
    responses((status = 200, description = "Every managed token, without secrets", body = TokenList)),
    extensions(("x-budgetd-roles" = json!(["admin", "auditor"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<TokenList>, ApiError> {
    caller.require(Permission::ReadTokens)?;
    let now = (state.clock)();
    let tokens = state.store.list_api_tokens().await?;
    Ok(Json(TokenList {
        tokens: tokens.into_iter().map(|r| TokenView::new(r, now)).collect(),
    }))
}

/// Revokes a token: 200 with it (again for a revoked one, changing nothing); 404 for an unknown
/// id.
#[utoipa::path(
    delete,
    path = "/api/v1/tokens/{id}",
    tag = "tokens",
    params(("id" = i64, Path, minimum = 1, description = "The token id")),
    responses(
        (status = 200, description = "The token, revoked", body = TokenView),
        (status = 400, description = "The id is not a positive integer (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such token (`not_found`)", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin"])))
)]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenView>, ApiError> {
    caller.require(Permission::ManageTokens)?;
    let id = token_id(&id)?;
    let now = (state.clock)();
    let record = state
        .store
        .revoke_api_token(&caller.audit(), id, now)
        .await?;
    tracing::info!(token = record.id, name = %record.name, "API token revoked");
    Ok(Json(TokenView::new(record, now)))
}
