//! The HTTP API: tenants, tenant requests, budgets, costs, the price book and managed tokens under `/api/v1`, plus `/healthz`,
//! `/readyz` and `/metrics`. Every route answers errors in one JSON shape (see `error`).

mod enforcement;
mod error;
mod extract;
mod governance;
mod offboarding;
mod openapi;
mod price_book;
mod pricing_errors;
mod tenant_requests;
mod tenants;
mod tokens;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::body::{Frame, SizeHint};
use ledger::enforcement::StatusParams;
use ledger::Store;
use metrics_exporter_prometheus::PrometheusHandle;
use tracing::Instrument;

pub use error::ApiError;
pub use extract::MAX_BODY_BYTES;

use crate::auth::Authenticator;

#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub auth: Arc<Authenticator>,
    pub metrics: PrometheusHandle,
    /// A request's deadline, from its head to its response (503 past it).
    pub request_timeout: Duration,
    /// How long a request's body may take to arrive after its head (408 past it, and the
    /// connection is closed).
    pub body_timeout: Duration,
    /// The longest `/readyz` waits for the database before it answers 503.
    pub readiness_timeout: Duration,
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
    /// The configured data residencies and quota profiles (`[lifecycle]`) requests and
    /// creates are checked against.
    pub lifecycle: Arc<ledger::config::LifecycleSettings>,
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

/// The request id: the caller's `x-request-id` if it is 1 to [`MAX_REQUEST_ID_LEN`] characters
/// of `A-Z a-z 0-9 . _ : -`, otherwise a new UUID. It is echoed in the response and recorded in
/// audit entries and logs, so nothing else a caller sends gets there this way.
#[derive(Clone)]
pub struct RequestId(pub String);

pub const MAX_REQUEST_ID_LEN: usize = 128;

impl RequestId {
    /// The caller's id when it is one we keep as given.
    fn from_caller(value: &HeaderValue) -> Option<RequestId> {
        let bytes = value.as_bytes();
        let allowed = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
        (!bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(allowed))
            .then(|| RequestId(String::from_utf8_lossy(bytes).into_owned()))
    }

    fn generate() -> RequestId {
        RequestId(uuid::Uuid::new_v4().to_string())
    }
}

/// The `method` label of the HTTP metrics: the methods of RFC 9110 and PATCH by name, anything
/// else `other`, so that invented methods cannot add series.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/v1/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/api/v1/tenants/{id}",
            get(tenants::get_one)
                .patch(tenants::patch)
                .delete(offboarding::start),
        )
        .route(
            "/api/v1/tenants/{id}/offboarding",
            get(offboarding::progress),
        )
        .route(
            "/api/v1/tenants/{id}/final-report",
            get(offboarding::final_report),
        )
        .route(
            "/api/v1/tenants/{id}/suspend",
            axum::routing::post(tenants::suspend),
        )
        .route(
            "/api/v1/tenants/{id}/resume",
            axum::routing::post(tenants::resume),
        )
        .route(
            "/api/v1/tenants/{id}/isolate",
            axum::routing::post(tenants::isolate),
        )
        .route(
            "/api/v1/tenants/{id}/release",
            axum::routing::post(tenants::release),
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
        .route(
            "/api/v1/tenant-requests",
            get(tenant_requests::list).post(tenant_requests::create),
        )
        .route(
            "/api/v1/tenant-requests/{id}",
            get(tenant_requests::get_one),
        )
        .route(
            "/api/v1/tenant-requests/{id}/approve",
            axum::routing::post(tenant_requests::approve),
        )
        .route(
            "/api/v1/tenant-requests/{id}/reject",
            axum::routing::post(tenant_requests::reject),
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
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{id}", axum::routing::delete(tokens::revoke))
        .route("/api/v1/reports/governance", get(governance::governance))
        .route("/api/v1/reports/access-review", get(governance::access))
        .route("/api/v1/audit", get(governance::audit))
        .route("/api/v1/openapi.json", get(openapi::document))
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

/// Request id, tracing span, deadlines and metrics for every request.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(RequestId::from_caller)
        .unwrap_or_else(RequestId::generate);
    req.extensions_mut().insert(request_id.clone());
    // Bounded labels: the route template, never the raw path; a known method or `other`.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = method_label(req.method());
    let span = tracing::info_span!("request", request_id = %request_id.0, method, %route);
    let started = Instant::now();
    let body_expired = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        if body.is_end_stream() {
            body
        } else {
            Body::new(DeadlineBody {
                inner: body,
                deadline: Box::pin(tokio::time::sleep(state.body_timeout)),
                expired: body_expired.clone(),
            })
        }
    });
    let response = async {
        let response = match tokio::time::timeout(state.request_timeout, next.run(req)).await {
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
        };
        if body_expired.load(Ordering::Relaxed) {
            tracing::info!("request body timed out");
            let mut response = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    state.body_timeout.as_millis()
                ),
            )
            .into_response();
            // The rest of the body is not read: the connection cannot carry another request.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        response
    }
    .instrument(span)
    .await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("budgetd_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("budgetd_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    let mut response = response;
    if let Ok(value) = HeaderValue::from_str(&request_id.0) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// A request body that fails once its deadline has passed, setting `expired` so that
/// `observe` answers 408 whatever the handler made of the failed read.
struct DeadlineBody {
    inner: Body,
    deadline: Pin<Box<tokio::time::Sleep>>,
    expired: Arc<AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
struct BodyTimedOut;

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.expired.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(axum::Error::new(BodyTimedOut))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `/healthz` and `/readyz` answer this: `ok` or `ready`, or `not_ready` with the reason.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    /// `ok` (`/healthz`), `ready` or `not_ready` (`/readyz`).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

impl Health {
    fn not_ready(reason: &'static str) -> Response {
        let body = Health {
            status: "not_ready",
            reason: Some(reason),
        };
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// The process is up.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses((status = 200, description = "Up", body = Health)),
    extensions(("x-budgetd-roles" = json!([])))
)]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok",
        reason: None,
    })
}

/// Ready once the database answers and every migration this binary knows is applied. Answers
/// within `readiness_timeout`: at once while the store knows the database is unreachable, and
/// 503 when the database does not answer in time.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "meta",
    responses(
        (status = 200, description = "Ready", body = Health),
        (status = 503, description = "Not ready: the database is unreachable or slow, or migrations are not applied", body = Health),
    ),
    extensions(("x-budgetd-roles" = json!([])))
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let Ok(ready) = tokio::time::timeout(state.readiness_timeout, state.store.is_ready()).await
    else {
        tracing::warn!(
            timeout_ms = state.readiness_timeout.as_millis() as u64,
            "readiness check: the database did not answer in time"
        );
        return Health::not_ready("the database did not answer in time");
    };
    match ready {
        Ok(true) => Json(Health {
            status: "ready",
            reason: None,
        })
        .into_response(),
        Ok(false) => Health::not_ready("migrations are not applied"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Health::not_ready("database unreachable")
        }
    }
}

/// The daemon's metrics in the Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4")),
    extensions(("x-budgetd-roles" = json!([])))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
