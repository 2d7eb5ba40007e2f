//! The OpenAPI 3.1 document of the API, served at `/api/v1/openapi.json` without
//! authentication. It is generated from the handlers: each handler carries a
//! `#[utoipa::path]` annotation (path, parameters, request and response bodies, the statuses
//! its own checks answer, and the roles that may call it as the `x-budgetd-roles` extension ([`ROLES`])) and is
//! listed in [`ApiDoc`]'s `paths(...)`. [`CrossCutting`] then adds what every route shares
//! because the extractors and the middleware answer it, not the handler: the bearer security
//! requirement, 401 and 403, the request-body errors (400, 408, 413, 415), 500 and 503, all
//! with the API's error body ([`super::error`]).
//!
//! To document a new route: annotate its handler (copy a neighbour's annotation), add the
//! handler to `paths(...)` below and derive `utoipa::ToSchema` on its request and response
//! types. `tests/e2e/openapi.rs` fails until every route the router serves is documented.

use std::sync::LazyLock;

use axum::http::header;
use axum::response::IntoResponse;
use utoipa::openapi::path::Operation;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

/// The operation extension that lists the roles that may call an operation (`[]`: anyone,
/// without a token). A tenant token acts only on its own tenant: another tenant's resources
/// answer 404 for it.
const ROLES: &str = "x-budgetd-roles";

/// Every role a token can have (`crate::auth::Role`).
const ALL_ROLES: [&str; 6] = [
    "admin", "operator", "finance", "viewer", "auditor", "tenant",
];

/// The security scheme every authenticated operation requires.
const BEARER: &str = "bearer";

/// The name of the error body's schema in `components.schemas`.
const ERROR_SCHEMA: &str = "ErrorBody";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "budgetd",
        description = "Per-tenant cost ledger and budget enforcement. Every operation lists \
                       the roles that may call it in `x-budgetd-roles` (an empty list: no token \
                       needed); a tenant token acts only on its own tenant, and another \
                       tenant's resources answer 404 for it. Errors answer \
                       `{\"error\":{\"code\",\"message\",\"field\"}}` (`ErrorBody`)."
    ),
    paths(
        super::tenants::list,
        super::tenants::create,
        super::tenants::get_one,
        super::tenants::patch,
        super::offboarding::start,
        super::offboarding::progress,
        super::offboarding::final_report,
        super::tenants::suspend,
        super::tenants::resume,
        super::tenants::isolate,
        super::tenants::release,
        super::tenants::get_budget,
        super::tenants::put_budget,
        super::enforcement::budget_status,
        super::tenants::costs,
        super::enforcement::get_exemption,
        super::enforcement::put_exemption,
        super::tenant_requests::list,
        super::tenant_requests::create,
        super::tenant_requests::get_one,
        super::tenant_requests::approve,
        super::tenant_requests::reject,
        super::enforcement::list,
        super::enforcement::get_one,
        super::enforcement::approve,
        super::enforcement::reject,
        super::price_book::list,
        super::price_book::add,
        super::price_book::withdraw,
        super::pricing_errors::list,
        super::tokens::list,
        super::tokens::create,
        super::tokens::revoke,
        super::governance::governance,
        super::governance::access,
        super::governance::audit,
        super::healthz,
        super::readyz,
        super::metrics,
        document,
    ),
    components(schemas(super::error::ErrorBody)),
    modifiers(&CrossCutting)
)]
pub struct ApiDoc;

/// The document, rendered once.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .expect("the OpenAPI document serialises")
});

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object)),
    extensions(("x-budgetd-roles" = json!([])))
)]
pub async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// Adds to every operation what the extractors and middleware answer (see the module docs).
struct CrossCutting;

impl Modify for CrossCutting {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "A configured or managed API token; its role decides what it may do \
                             (`x-budgetd-roles` of each operation).",
                        ))
                        .build(),
                ),
            );
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                add_cross_cutting(operation);
            }
        }
    }
}

/// The roles an operation lists in [`ROLES`]; a missing or malformed list panics, so that the
/// document cannot be built without them (`tests/e2e/openapi.rs` builds it).
fn roles(operation: &Operation) -> Vec<String> {
    let id = operation.operation_id.as_deref().unwrap_or("?");
    let value = operation
        .extensions
        .as_ref()
        .and_then(|e| e.get(ROLES))
        .unwrap_or_else(|| panic!("operation {id} has no {ROLES} extension"));
    serde_json::from_value::<Vec<String>>(value.clone())
        .unwrap_or_else(|e| panic!("operation {id}: {ROLES} is not a list of role names: {e}"))
}

fn add_cross_cutting(operation: &mut Operation) {
    let roles = roles(operation);
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    if !roles.is_empty() {
        add("401", "No token, an unknown one, or a tenant token whose tenant is being offboarded (`unauthorized`, `token_disabled`).");
        if ALL_ROLES.iter().any(|r| !roles.iter().any(|x| x == r)) {
            add("403", "The token's role may not do this (`forbidden`).");
        }
    }
    if operation.request_body.is_some() {
        add("400", "The body is not a JSON object of this operation's fields, or a field or parameter is invalid (`invalid_json`, `invalid_field`, `unknown_field`, `empty_patch`); `field` names it.");
        add(
            "408",
            "The body did not arrive in time (`body_timeout`); the connection is closed.",
        );
        add(
            "413",
            "The body is larger than 1 MiB (`payload_too_large`).",
        );
        add(
            "415",
            "The body is not `application/json` (`unsupported_media_type`).",
        );
    }
    add(
        "500",
        "An internal error (`internal`); the request id is in the `x-request-id` header.",
    );
    add(
        "503",
        "The ledger did not answer in time, or the request took too long (`unavailable`, `timeout`); retry later.",
    );
    let description = operation.description.get_or_insert_with(String::new);
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    if roles.is_empty() {
        description.push_str("**Roles:** anyone; no token needed.");
    } else {
        description.push_str(&format!("**Roles:** {}.", roles.join(", ")));
        operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ERROR_SCHEMA)))
                    .build(),
            )
            .build(),
    )
}
