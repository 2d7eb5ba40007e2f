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

/// A meter name such as `cpu` or `network_egress`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterName(String);

impl MeterName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        names::identifier(field, value)?;
        Ok(MeterName(value.to_owned()))
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

/// A version to add. Rates are per price unit of each meter (per core-hour, per GiB-hour, per
/// GiB, per GPU-hour) and kept at full precision.
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
        if let Some((meter, _)) = rates
            .iter()
            .find(|(_, r)| r.is_sign_negative() && !r.is_zero())
        {
            return Err(Invalid::new(
                format!("rates.{meter}"),
                "must not be negative",
            ));
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
