//! Request extractors that answer in the API's error format: the authenticated caller, a
//! tenant id from the path, a size-limited JSON body parsed with field-level errors, and the
//! query string.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use ledger::audit::AuditContext;
use ledger::tenant::{TenantId, TenantState};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use super::{AppState, RequestId};
use crate::auth::{AuthError, Permission, Principal, Role};

/// Request bodies are limited to 1 MiB.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// The authenticated caller, with the request id for audit records.
pub struct Caller {
    pub principal: Principal,
    pub request_id: String,
}

impl Caller {
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.principal.may(permission) {
            Ok(())
        } else {
            Err(ApiError::forbidden())
        }
    }

    /// For routes about one tenant: a tenant the caller may not see does not exist for it
    /// (404), checked before the role (403), so that ids do not leak.
    pub fn require_for(&self, tenant: &TenantId, permission: Permission) -> Result<(), ApiError> {
        if !self.principal.sees(tenant) {
            return Err(ApiError::tenant_not_found(tenant.as_str()));
        }
        self.require(permission)
    }

    pub fn audit(&self) -> AuditContext {
        AuditContext {
            actor: self.principal.actor(),
            request_id: self.request_id.clone(),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let authorization = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(ApiError::unauthorized)?;
        let principal = state
            .auth
            .authenticate(authorization, &state.store, (state.clock)())
            .await
            .map_err(|e| match e {
                AuthError::Unknown => ApiError::unauthorized(),
                AuthError::Refused { code, message } => {
                    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
                }
                AuthError::NoRole(message) => {
                    ApiError::new(StatusCode::FORBIDDEN, "no_role", message)
                }
                AuthError::Unavailable(message) => {
                    tracing::warn!(error = %message, "identity provider unavailable");
                    ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "identity_provider_unavailable",
                        "the identity provider's signing keys cannot be fetched; retry later",
                    )
                }
                AuthError::Store(e) => e.into(),
            })?;
        if let Role::Tenant(tenant) = &principal.role {
            // Read with every request: a token is refused from the commit that starts its
            // tenant's offboarding, on every replica, with no cache to invalidate.
            let tenant_state = state.store.tenant_state(tenant).await?;
            if tenant_state
                .is_some_and(|s| matches!(s, TenantState::Offboarding | TenantState::Offboarded))
            {
                return Err(ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_disabled",
                    format!(
                        "this token's tenant {:?} is being offboarded: its tokens are disabled",
                        tenant.as_str()
                    ),
                ));
            }
        }
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|r| r.0.clone())
            .unwrap_or_default();
        Ok(Caller {
            principal,
            request_id,
        })
    }
}

/// The `{id}` path segment as a tenant id.
pub struct TenantPath(pub TenantId);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("id", "the path does not hold a tenant id"))?;
        Ok(TenantPath(TenantId::parse(&id)?))
    }
}

/// The path parameter `{id}` of the tenant routes, for their OpenAPI annotations
/// (`params(TenantPath)`).
impl utoipa::IntoParams for TenantPath {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        use utoipa::openapi::{ObjectBuilder, Required, Type};
        let schema = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"));
        vec![ParameterBuilder::new()
            .name("id")
            .parameter_in(ParameterIn::Path)
            .required(Required::True)
            .description(Some(
                "The tenant id: a DNS-1123 label (lowercase letters, digits and `-`, at most 63)",
            ))
            .schema(Some(schema))
            .example(Some("acme".into()))
            .build()]
    }
}

/// A JSON body of at most `MAX_BODY_BYTES`, checked and parsed only when the handler asks for
/// it, so that authentication and authorisation answer before any body validation (its media
/// type included).
pub struct JsonBody {
    json_media_type: bool,
    bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let json_media_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json_media_type);
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body must be at most {MAX_BODY_BYTES} bytes"),
                )
            })?;
        Ok(JsonBody {
            json_media_type,
            bytes,
        })
    }
}

/// `application/json`, alone or with `charset=utf-8` (the only charset JSON has, RFC 8259);
/// type, subtype, parameter name and value are case-insensitive (RFC 9110 §8.3.1). Anything
/// else, `application/json-patch+json` or `application/jsonx` included, is another format.
fn is_json_media_type(value: &str) -> bool {
    let mut parts = value.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    match (parts.next(), parts.next()) {
        (None, _) => true,
        (Some(parameter), None) => parameter.split_once('=').is_some_and(|(name, value)| {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            name.trim().eq_ignore_ascii_case("charset") && value.eq_ignore_ascii_case("utf-8")
        }),
        (Some(_), Some(_)) => false,
    }
}

impl JsonBody {
    /// Like [`JsonBody::parse`] for a body that may be left out: an empty body is `None`.
    pub fn parse_optional<T: DeserializeOwned>(&self) -> Result<Option<T>, ApiError> {
        if self.bytes.is_empty() {
            return Ok(None);
        }
        self.parse().map(Some)
    }

    /// Parses the body, which must be one JSON object sent as `application/json`; unknown
    /// fields and wrong types are errors naming the field.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        if !self.json_media_type {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as application/json (optionally with charset=utf-8)",
            ));
        }
        // serde reads a struct from a JSON array too (its fields in order); every body is an
        // object, so anything else is refused before it can be read that way.
        let first = self.bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|&b| b != b'{') {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "the body must be a JSON object",
            ));
        }
        let mut de = serde_json::Deserializer::from_slice(&self.bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(field_error)?;
        de.end().map_err(|e| ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_json",
            message: strip_position(&e.to_string()),
            field: None,
            details: Default::default(),
        })?;
        Ok(value)
    }
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let inner = e.inner();
    let path = e.path().to_string();
    let message = inner.to_string();
    // serde names the unknown field in its message: "unknown field `x`, expected ..."
    if let Some(unknown) = message
        .strip_prefix("unknown field `")
        .and_then(|rest| rest.split('`').next())
    {
        // The path already ends at the unknown field.
        let field = if path == "." {
            unknown.to_owned()
        } else {
            path
        };
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "unknown_field",
            message: format!("unknown field {unknown:?}"),
            field: Some(field),
            details: Default::default(),
        };
    }
    // "missing field `x`": the path ends at the object that lacks it.
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let field = if path == "." {
            missing.to_owned()
        } else {
            format!("{path}.{missing}")
        };
        return ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: format!("{missing:?} is required"),
            field: Some(field),
            details: Default::default(),
        };
    }
    let field = (path != ".").then_some(path);
    let code = if inner.is_syntax() || inner.is_eof() {
        "invalid_json"
    } else {
        "invalid_field"
    };
    ApiError {
        status: StatusCode::BAD_REQUEST,
        code,
        message: strip_position(&message),
        field,
        details: Default::default(),
    }
}

/// serde_json appends " at line 1 column 42"; the field name says more to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// Query parameters; any parameter not in `allowed` is an error naming it.
pub fn query_params(
    raw: Option<&str>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        if !allowed.contains(&key.as_ref()) {
            return Err(ApiError {
                status: StatusCode::BAD_REQUEST,
                code: "unknown_field",
                message: format!("unknown query parameter {key:?}"),
                field: Some(key.into_owned()),
                details: Default::default(),
            });
        }
        if params
            .insert(key.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::invalid(key.into_owned(), "given more than once"));
        }
    }
    Ok(params)
}

/// The `tenant` filter of a list: the tenant asked for, if any; a tenant token sees only its
/// own tenant (another one is 404, as if it did not exist).
pub fn tenant_filter(
    caller: &Caller,
    params: &BTreeMap<String, String>,
) -> Result<Option<TenantId>, ApiError> {
    let asked = params
        .get("tenant")
        .map(|t| TenantId::parse_field("tenant", t))
        .transpose()?;
    match (&caller.principal.role, asked) {
        (Role::Tenant(own), Some(asked)) if &asked != own => {
            Err(ApiError::tenant_not_found(asked.as_str()))
        }
        (Role::Tenant(own), _) => Ok(Some(own.clone())),
        (_, asked) => Ok(asked),
    }
}

/// A list's `limit`: 1..=1000, 100 when not given.
pub fn page_limit(params: &BTreeMap<String, String>) -> Result<i64, ApiError> {
    const DEFAULT_LIMIT: i64 = 100;
    const MAX_LIMIT: i64 = 1000;
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ApiError::invalid("limit", format!("an integer in 1..={MAX_LIMIT}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn only_json_is_json() {
        for json in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json ; charset=\"utf-8\"",
        ] {
            assert!(is_json_media_type(json), "{json}");
        }
        for other in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json-patch+json",
            "application/json+evil",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/json; charset=utf-8; boundary=x",
            "application/json; version=2",
            "application/json;",
            "application",
        ] {
            assert!(!is_json_media_type(other), "{other}");
        }
    }
}
