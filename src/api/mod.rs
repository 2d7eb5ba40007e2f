//! The HTTP API: tenants, budgets, costs and the price book under `/api/v1`, plus `/healthz`,
//! `/readyz` and `/metrics`. Every route answers errors in one JSON shape (see `error`).

mod enforcement;
mod error;
mod extract;
mod price_book;
mod pricing_errors;
mod tenants;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ledger::enforcement::StatusParams;
use ledger::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tracing::Instrument;

pub use error::ApiError;
pub use extract::MAX_BODY_BYTES;

use crate::auth::Authenticator;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    pub request_timeout: Duration,
    /// Meters the collector prices, with the unit their rates are quoted in (`core_hour`): every
    /// new price-book version needs a rate for each, or the windows from its `valid_from` on
    /// could not be priced; the price book shows each rate's unit from here.
    pub priced_meters: Arc<BTreeMap<ledger::price_book::MeterName, ledger::entry::UnitName>>,
    /// The largest rate each meter may have in a new price-book version (`[price_book]`).
    pub rate_limits: Arc<ledger::price_book::RateLimits>,
    /// How budget status is computed for `GET .../budget/status`: the enforcer's settings.
    pub status: StatusParams,
    /// What "now" is for the handlers (a budget's default `effective_from`, the period a status
    /// is for, how far ahead an exemption may reach). The daemon reads the wall clock; tests
    /// inject one so that they do not depend on the day they run.
    pub clock: Clock,
}

/// A source of the current instant.
pub type Clock = Arc<dyn Fn() -> chrono::DateTime<chrono::Utc> + Send + Sync>;

/// The wall clock.
pub fn wall_clock() -> Clock {
    Arc::new(chrono::Utc::now)
}

/// The example configuration's status settings (those of `finance.budget_status`), for a
/// daemon that does not enforce.
pub const VIEW_STATUS: StatusParams = StatusParams {
    trailing_days: 7,
    max_lag_seconds: 1800,
    lookback_seconds: Some(3600),
};

/// The request id: the caller's `x-request-id` if it is sane, otherwise a new one. It is
/// echoed in the response and recorded in audit entries.
#[derive(Clone)]
pub struct RequestId(pub String);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/api/v1/tenants/{id}",
            get(tenants::get_one)
                .patch(tenants::patch)
                .delete(tenants::offboard),
        )
        .route(
            "/api/v1/tenants/{id}/budget",
            get(tenants::get_budget).put(tenants::put_budget),
        )
        .route(
            "/api/v1/tenants/{id}/budget/status",
            get(enforcement::budget_status),
        )
        .route("/api/v1/tenants/{id}/costs", get(tenants::costs))
        .route(
            "/api/v1/tenants/{id}/exemption",
            get(enforcement::get_exemption).put(enforcement::put_exemption),
        )
        .route("/api/v1/enforcement/actions", get(enforcement::list))
        .route(
            "/api/v1/enforcement/actions/{id}",
            get(enforcement::get_one),
        )
        .route(
            "/api/v1/enforcement/actions/{id}/approve",
            axum::routing::post(enforcement::approve),
        )
        .route(
            "/api/v1/enforcement/actions/{id}/reject",
            axum::routing::post(enforcement::reject),
        )
        .route("/api/v1/price-book", get(price_book::list))
        .route(
            "/api/v1/price-book/versions",
            axum::routing::post(price_book::add),
        )
        .route(
            "/api/v1/price-book/versions/{id}",
            axum::routing::delete(price_book::withdraw),
        )
        .route(
            "/api/v1/collector/pricing-errors",
            get(pricing_errors::list),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Request id, tracing span, deadline and metrics for every request.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(request_id.clone()));
    // Bounded label: the route template, never the raw path.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().to_string();
    let span = tracing::info_span!("request", %request_id, %method, %route);
    let started = Instant::now();
    let response = async {
        match tokio::time::timeout(state.request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => {
                tracing::warn!("request timed out");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "timeout",
                    "the request took too long; retry later",
                )
                .into_response()
            }
        }
    }
    .instrument(span)
    .await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("budgetd_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("budgetd_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Ready once the database answers and every migration this binary knows is applied.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.is_ready().await {
        Ok(true) => Json(json!({ "status": "ready" })).into_response(),
        Ok(false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": "migrations are not applied" })),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "reason": "database unreachable" })),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
