//! The price book: effective-dated versions of per-meter rates.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::currency::Currency;
use crate::entry::{Pricing, UnitName};
use crate::error::Invalid;
use crate::names;

/// A meter name such as `cpu` or `network_egress`. Shared text, like `TenantId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterName(std::sync::Arc<str>);

impl MeterName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        names::identifier(field, value)?;
        Ok(MeterName(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MeterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The most decimal places a rate may have: those of the amounts it prices
/// (`entry::AMOUNT_SCALE`). Finer rates would price nothing the ledger could keep.
pub const RATE_SCALE: u32 = 12;

/// The largest rate per price unit any version may have, and so the largest `max_rate` a
/// configuration may allow: 10^8. With `entry::MAX_QUANTITY` it keeps quantity × rate inside
/// `rust_decimal` (see `entry::MAX_AMOUNT` for the arithmetic).
pub const RATE_CEILING: Decimal = Decimal::from_parts(100_000_000, 0, 0, false, 0);

/// The default largest rate per price unit: 1,000,000, far above any real price of a core-hour,
/// a GiB-hour or a GiB, even in currencies with small units.
pub const DEFAULT_MAX_RATE: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

/// The largest rate a new version may give each meter: a default, and overrides per meter.
/// A rate above it is a mistake of units or a typo, and is refused before it can price
/// anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    default: Decimal,
    per_meter: BTreeMap<MeterName, Decimal>,
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            default: DEFAULT_MAX_RATE,
            per_meter: BTreeMap::new(),
        }
    }
}

impl RateLimits {
    /// Limits of at most [`RATE_CEILING`] each; `field` names where they were configured.
    pub fn new(
        field: &str,
        default: Decimal,
        per_meter: BTreeMap<MeterName, Decimal>,
    ) -> Result<Self, Invalid> {
        let check = |key: String, limit: Decimal| {
            if limit <= Decimal::ZERO || limit > RATE_CEILING {
                Err(Invalid::new(
                    key,
                    format!("must be greater than 0 and at most {RATE_CEILING}"),
                ))
            } else {
                Ok(())
            }
        };
        check(field.to_owned(), default)?;
        for (meter, &limit) in &per_meter {
            check(format!("{field}_by_meter.{meter}"), limit)?;
        }
        Ok(RateLimits { default, per_meter })
    }

    /// The largest rate `meter` may have.
    pub fn max_rate(&self, meter: &MeterName) -> Decimal {
        self.per_meter.get(meter).copied().unwrap_or(self.default)
    }

    /// Every rate of `version` within its meter's limit; an error names `<prefix>rates.<meter>`.
    pub fn check(&self, version: &NewPriceBookVersion, prefix: &str) -> Result<(), Invalid> {
        for (meter, &rate) in &version.rates {
            let max = self.max_rate(meter);
            if rate > max {
                return Err(Invalid::new(
                    format!("{prefix}rates.{meter}"),
                    format!("{rate} is more than the largest rate allowed for {meter} ({max} per price unit)"),
                ));
            }
        }
        Ok(())
    }
}

/// A version to add. Rates are per price unit of each meter (per core-hour, per GiB-hour, per
/// GiB, per GPU-hour), non-negative, at most [`RATE_CEILING`] and with at most [`RATE_SCALE`]
/// decimal places; [`RateLimits`] may bound them further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPriceBookVersion {
    pub valid_from: DateTime<Utc>,
    pub currency: Currency,
    pub rates: BTreeMap<MeterName, Decimal>,
}

impl NewPriceBookVersion {
    pub fn new(
        valid_from: DateTime<Utc>,
        currency: Currency,
        rates: BTreeMap<MeterName, Decimal>,
    ) -> Result<Self, Invalid> {
        if rates.is_empty() {
            return Err(Invalid::new("rates", "give at least one meter's rate"));
        }
        for (meter, rate) in &rates {
            let field = || format!("rates.{meter}");
            if rate.is_sign_negative() && !rate.is_zero() {
                return Err(Invalid::new(field(), "must not be negative"));
            }
            if *rate > RATE_CEILING {
                return Err(Invalid::new(
                    field(),
                    format!("{rate} is more than any rate can be ({RATE_CEILING} per price unit)"),
                ));
            }
            if rate.normalize().scale() > RATE_SCALE {
                return Err(Invalid::new(
                    field(),
                    format!("{rate} has more than {RATE_SCALE} decimal places"),
                ));
            }
        }
        if valid_from.timestamp_subsec_nanos() != 0 {
            return Err(Invalid::new("valid_from", "must be a whole second"));
        }
        Ok(NewPriceBookVersion {
            valid_from,
            currency,
            rates,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceBookVersion {
    pub id: i64,
    pub valid_from: DateTime<Utc>,
    pub currency: Currency,
    pub rates: BTreeMap<MeterName, Decimal>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl PriceBookVersion {
    /// How `meter` is priced by this version, for quantities in units of which
    /// `units_per_price_unit` make one `price_unit` (3600 core-seconds make a core-hour).
    pub fn pricing(
        &self,
        meter: &MeterName,
        price_unit: UnitName,
        units_per_price_unit: Decimal,
    ) -> Option<Pricing> {
        self.rates.get(meter).map(|&rate| Pricing {
            version: self.id,
            rate,
            currency: self.currency,
            price_unit,
            units_per_price_unit,
        })
    }

    pub fn to_json(&self) -> Value {
        json!({
            "version": self.id,
            "valid_from": crate::audit::timestamp(self.valid_from),
            "currency": self.currency.code(),
            "rates": self.rates.iter()
                .map(|(m, r)| (m.as_str().to_owned(), Value::String(r.to_string())))
                .collect::<serde_json::Map<_, _>>(),
        })
    }
}
