//! API errors: a status, a stable code, a message and the field at fault, as
//! `{"error":{"code":"...","message":"...","field":"..."}}`, with more members where a code has
//! them (`invalid_transition`: `current_state`, `allowed`). Database and internal error text is
//! logged with the request id, never sent to the client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// More members of the error object (`current_state` and `allowed` of a refused
    /// transition).
    pub details: serde_json::Map<String, serde_json::Value>,
}

/// The body of every error answer (its schema is the OpenAPI document's `ErrorBody`).
#[derive(Serialize, ToSchema)]
pub(super) struct ErrorBody<'a> {
    error: ErrorObject<'a>,
}

#[derive(Serialize, ToSchema)]
struct ErrorObject<'a> {
    /// Stable and machine-readable: `invalid_field`, `not_found`, `invalid_transition` ...
    code: &'a str,
    /// For people; its wording may change.
    message: &'a str,
    /// The field at fault (`budget.amount`, `rates.cpu`), where one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    /// More members where a code has them (`invalid_transition`: `current_state`, `allowed`).
    #[serde(flatten)]
    details: &'a serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: serde_json::Map::new(),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_field",
            message: message.into(),
            field: Some(field.into()),
            details: serde_json::Map::new(),
        }
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "your role may not do this",
        )
    }

    pub fn tenant_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("tenant {id:?} not found"),
        )
    }
}

impl From<ledger::Invalid> for ApiError {
    fn from(e: ledger::Invalid) -> Self {
        ApiError::invalid(e.field, e.message)
    }
}

impl From<ledger::Error> for ApiError {
    fn from(e: ledger::Error) -> Self {
        use ledger::Error::*;
        match e {
            Invalid(invalid) => invalid.into(),
            NotFound { what, id } => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("{what} {id:?} not found"),
            ),
            Conflict { code, message } => ApiError::new(StatusCode::CONFLICT, code, message),
            Transition { id, refused } => {
                let mut error = ApiError::new(
                    StatusCode::CONFLICT,
                    "invalid_transition",
                    format!("tenant {id:?}: {refused}"),
                );
                error
                    .details
                    .insert("current_state".into(), refused.current.as_str().into());
                error.details.insert(
                    "allowed".into(),
                    refused
                        .allowed
                        .iter()
                        .map(|s| serde_json::Value::from(s.as_str()))
                        .collect(),
                );
                error
            }
            Forbidden { code, message } => ApiError::new(StatusCode::FORBIDDEN, code, message),
            // Only enforcement writes are fenced; kept as the conflict it was for any caller.
            Fenced { .. } => ApiError::new(StatusCode::CONFLICT, "fenced", e.to_string()),
            Timeout { .. } | Unreachable { .. } | PoolExhausted { .. } => {
                if matches!(e, Unreachable { .. }) {
                    // The store logged the database going down once (and sets
                    // `budgetd_db_unreachable`); a line per refused request would flood the log.
                    tracing::debug!(error = %e, "database unreachable");
                } else {
                    tracing::error!(error = %e, "database unavailable");
                }
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "the ledger did not answer in time; retry later",
                )
            }
            Database(_) | Migrate(_) => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; the request id is in the x-request-id header",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorObject {
                code: self.code,
                message: &self.message,
                field: self.field.as_deref(),
                details: &self.details,
            },
        };
        (self.status, Json(body)).into_response()
    }
}
