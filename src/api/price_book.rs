//! Price-book routes: list versions; add one, or withdraw or replace one that priced nothing
//! yet (roles `finance` and `admin`).

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use chrono::{DateTime, Utc};
use ledger::currency::Currency;
use ledger::entry::UnitName;
use ledger::money::parse_rate;
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::auth::Permission;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"valid_from": "2027-01-01T00:00:00Z", "currency": "EUR", "rates": {"cpu": "0.031", "memory": "0.004"}}))]
struct NewVersion {
    #[schema(format = DateTime)]
    valid_from: String,
    #[schema(pattern = "^[A-Z]{3}$")]
    currency: String,
    rates: BTreeMap<String, String>,
    /// A version that priced nothing yet, withdrawn in the same transaction.
    replaces: Option<i64>,
}

/// A version id: a positive integer.
fn version_id(field: &str, id: i64) -> Result<i64, ApiError> {
    if id > 0 {
        Ok(id)
    } else {
        Err(ApiError::invalid(
            field,
            "a price-book version id is a positive integer",
        ))
    }
}

#[derive(Serialize, ToSchema)]
pub struct VersionDto {
    version: i64,
    valid_from: DateTime<Utc>,
    currency: String,
    /// Meter → rate per price unit, as a decimal string.
    rates: BTreeMap<String, String>,
    /// Meter → the unit its rate is per (`core_hour`, `gib_hour`, `gib`), for the rates of the
    /// meters the collector prices. A sibling of `rates`, so that clients reading `rates` as
    /// meter → decimal string keep working.
    price_units: BTreeMap<String, String>,
    created_at: DateTime<Utc>,
    created_by: String,
}

impl VersionDto {
    fn new(v: PriceBookVersion, price_units: &BTreeMap<MeterName, UnitName>) -> Self {
        VersionDto {
            version: v.id,
            valid_from: v.valid_from,
            currency: v.currency.to_string(),
            price_units: v
                .rates
                .keys()
                .filter_map(|m| price_units.get(m).map(|u| (m.to_string(), u.to_string())))
                .collect(),
            rates: v
                .rates
                .iter()
                .map(|(m, r)| (m.to_string(), r.to_string()))
                .collect(),
            created_at: v.created_at,
            created_by: v.created_by,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    versions: Vec<VersionDto>,
}

/// Lists the price-book versions.
#[utoipa::path(
    get,
    path = "/api/v1/price-book",
    tag = "price-book",
    responses((status = 200, description = "The versions", body = VersionList)),
    extensions(("x-budgetd-roles" = json!(["admin", "operator", "finance", "viewer", "auditor", "tenant"])))
)]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<VersionList>, ApiError> {
    caller.require(Permission::ReadPriceBook)?;
    let versions = state.store.list_price_book_versions().await?;
    Ok(Json(VersionList {
        versions: versions
            .into_iter()
            .map(|v| VersionDto::new(v, &state.priced_meters))
            .collect(),
    }))
}

/// Adds a price-book version (or replaces one that priced nothing yet).
#[utoipa::path(
    post,
    path = "/api/v1/price-book/versions",
    tag = "price-book",
    request_body = NewVersion,
    responses(
        (status = 201, description = "The version", body = VersionDto),
        (status = 404, description = "`replaces` names no version (`not_found`)", body = ErrorBody),
        (status = 409, description = "A version is valid from the same instant, or the replaced one priced entries", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "finance"])))
)]
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonBody,
) -> Result<impl IntoResponse, ApiError> {
    caller.require(Permission::ManagePriceBook)?;
    let req: NewVersion = body.parse()?;
    let valid_from = ledger::time::parse_instant("valid_from", &req.valid_from)?;
    let currency = Currency::parse("currency", &req.currency)?;
    let mut rates = BTreeMap::new();
    for (meter, rate) in &req.rates {
        let field = format!("rates.{meter}");
        rates.insert(MeterName::parse(&field, meter)?, parse_rate(&field, rate)?);
    }
    if let Some(missing) = state.priced_meters.keys().find(|m| !rates.contains_key(*m)) {
        return Err(ApiError::invalid(
            format!("rates.{missing}"),
            format!("the collector prices meter {missing}; every version needs its rate"),
        ));
    }
    let new = NewPriceBookVersion::new(valid_from, currency, rates)?;
    state.rate_limits.check(&new, "")?;
    let replaces = req
        .replaces
        .map(|id| version_id("replaces", id))
        .transpose()?;
    let version = match replaces {
        Some(old) => {
            state
                .store
                .replace_price_book_version(&caller.audit(), old, &new)
                .await?
        }
        None => {
            state
                .store
                .add_price_book_version(&caller.audit(), &new)
                .await?
        }
    };
    Ok((
        StatusCode::CREATED,
        Json(VersionDto::new(version, &state.priced_meters)),
    ))
}

/// Withdraws a version that priced nothing yet (see `Store::withdraw_price_book_version`):
/// 200 with the version as it was; 404 for an unknown id; 409 if it priced an entry.
#[utoipa::path(
    delete,
    path = "/api/v1/price-book/versions/{id}",
    tag = "price-book",
    params(("id" = i64, Path, minimum = 1, description = "The version id")),
    responses(
        (status = 200, description = "The version as it was", body = VersionDto),
        (status = 400, description = "The id is not a positive integer (`invalid_field`)", body = ErrorBody),
        (status = 404, description = "No such version (`not_found`)", body = ErrorBody),
        (status = 409, description = "The version priced an entry", body = ErrorBody),
    ),
    extensions(("x-budgetd-roles" = json!(["admin", "finance"])))
)]
pub async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<VersionDto>, ApiError> {
    caller.require(Permission::ManagePriceBook)?;
    let id = id
        .parse::<i64>()
        .map_err(|_| ApiError::invalid("id", "a price-book version id is a positive integer"))
        .and_then(|id| version_id("id", id))?;
    let version = state
        .store
        .withdraw_price_book_version(&caller.audit(), id)
        .await?;
    Ok(Json(VersionDto::new(version, &state.priced_meters)))
}
