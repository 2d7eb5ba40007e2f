//! The benchmarks, each against baselines measured in the same run, and what they share:
//! medians, spreads and verdicts.

pub mod collector;
pub mod enforcer;
pub mod kafka;
pub mod ledger;
pub mod lifecycle;
pub mod meter_queries;

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use ::ledger::audit::{Actor, AuditContext};
use ::ledger::currency::Currency;
use ::ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ::ledger::Store;

/// The currency of the benches' price book.
pub const CURRENCY: &str = "EUR";

pub const SECONDS_PER_HOUR: i64 = 3_600;
pub const GIB: i64 = 1 << 30;

/// A meter the benches price: its unit, its price unit and the rate per price unit.
pub struct PricedMeter {
    pub meter: &'static str,
    pub unit: &'static str,
    pub price_unit: &'static str,
    pub units_per_price_unit: i64,
    /// [`CURRENCY`] per price unit.
    pub rate: &'static str,
}

/// The benches' price list.
#[rustfmt::skip]
pub const PRICED_METERS: [PricedMeter; 8] = [
    PricedMeter { meter: "cpu", unit: "core_seconds", price_unit: "core_hour", units_per_price_unit: SECONDS_PER_HOUR, rate: "0.0316" },
    PricedMeter { meter: "memory", unit: "byte_seconds", price_unit: "gib_hour", units_per_price_unit: SECONDS_PER_HOUR * GIB, rate: "0.00423" },
    PricedMeter { meter: "storage", unit: "byte_seconds", price_unit: "gib_hour", units_per_price_unit: SECONDS_PER_HOUR * GIB, rate: "0.000137" },
    PricedMeter { meter: "network_egress", unit: "bytes", price_unit: "gib", units_per_price_unit: GIB, rate: "0.085" },
    PricedMeter { meter: "gpu", unit: "gpu_seconds", price_unit: "gpu_hour", units_per_price_unit: SECONDS_PER_HOUR, rate: "2.48" },
    PricedMeter { meter: "lb_hours", unit: "lb_seconds", price_unit: "lb_hour", units_per_price_unit: SECONDS_PER_HOUR, rate: "0.0252" },
    PricedMeter { meter: "ip_addresses", unit: "ip_seconds", price_unit: "ip_hour", units_per_price_unit: SECONDS_PER_HOUR, rate: "0.005" },
    PricedMeter { meter: "object_storage", unit: "byte_seconds", price_unit: "gib_hour", units_per_price_unit: SECONDS_PER_HOUR * GIB, rate: "0.0000315" },
];

/// The meter `meter` of the price list.
pub fn priced(meter: &str) -> anyhow::Result<&'static PricedMeter> {
    PRICED_METERS
        .iter()
        .find(|m| m.meter == meter)
        .with_context(|| format!("{meter} is not in the benches' price list"))
}

/// Adds a price-book version in [`CURRENCY`], valid from `valid_from`, with the rates of
/// `meters`.
pub async fn add_price_book(
    store: &Store,
    valid_from: DateTime<Utc>,
    meters: &[&PricedMeter],
    request_id: &str,
) -> anyhow::Result<PriceBookVersion> {
    let mut rates = BTreeMap::new();
    for m in meters {
        rates.insert(
            MeterName::parse("meter", m.meter)?,
            Decimal::from_str(m.rate)?,
        );
    }
    let ctx = AuditContext {
        actor: Actor::system("bench"),
        request_id: request_id.to_owned(),
    };
    let new = NewPriceBookVersion::new(valid_from, Currency::parse("currency", CURRENCY)?, rates)?;
    Ok(store.add_price_book_version(&ctx, &new).await?)
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn median_secs(samples: &[Duration]) -> f64 {
    median(&samples.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>())
}

pub fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// "min-max" of per-round ratios.
pub fn spread(ratios: &[f64]) -> String {
    let min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let max = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}-{max:.2}")
}

pub fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(median_secs(&ms(&[30, 10, 20])), 0.02);
        assert_eq!(median_secs(&ms(&[10, 20, 30, 40])), 0.025);
        assert_eq!(median(&[]), 0.0);
    }
}
