//! Ledger entries: priced usage of one meter by one tenant in one window, and the reports of
//! writing them.

use std::fmt;

use chrono::{DateTime, Utc};
use rust_decimal::{Decimal, RoundingStrategy};

use crate::currency::Currency;
use crate::error::Invalid;
use crate::names;
use crate::price_book::MeterName;
use crate::tenant::TenantId;

/// Amounts are kept to this many decimal places: far below any currency's minor unit, so
/// rounding in reports (see `money::round_to_minor_units`) is unaffected by the sum of a
/// billion entries' residues.
pub const AMOUNT_SCALE: u32 = 12;

/// The most one key (tenant, meter, window) can measure, in the meter's unit: 10^20, a PiB
/// held for a whole day (86,400 s, the longest window) in byte-seconds. More is not usage but a
/// broken exporter, and is not priced.
pub const MAX_QUANTITY: Decimal = Decimal::from_parts(0x6310_0000, 0x6BC7_5E2D, 5, false, 0);

/// The largest amount one entry may have: 10^15 in any currency.
///
/// Why these bounds make pricing exact. `rust_decimal` keeps a 96-bit mantissa (up to
/// 7.9 × 10^28): a product or quotient with more digits is rounded to one with a mantissa of at
/// least 7.9 × 10^27, a relative error below 1.3 × 10^-28, and fails only when its integer part
/// does not fit. With a quantity of at most 10^20 units ([`MAX_QUANTITY`]) and a rate of at most
/// 10^8 per price unit (`price_book::RATE_CEILING`), quantity × rate is at most 10^28: it never
/// overflows. The amount is that product divided by the units per price unit; the two roundings
/// are off by less than 2.6 × 10^-28 of it, which for an amount of at most 10^15 is below
/// 0.26 × 10^-12. Rounded to 12 places (at most 0.5 × 10^-12 more), the amount stays within
/// 10^-12 of the exact quotient, the relation the database checks on every entry in exact
/// NUMERIC. Sums stay far inside `rust_decimal` too: 10,000 tenants × 8 meters × a year of
/// 5-minute windows of such entries are below 10^25. Larger amounts (possible only with rates
/// written before these bounds, or an absurd quantity for a small price unit) are refused,
/// never rounded.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(0xA4C6_8000, 0x0003_8D7E, 0, false, 0);

/// A unit name such as `core_seconds` or `core_hour`. Shared text, like `TenantId`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(std::sync::Arc<str>);

impl UnitName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        names::identifier(field, value)?;
        Ok(UnitName(value.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The longest window an entry may cover: 366 days (the ledger stores a window's length).
pub const MAX_WINDOW_SECONDS: i32 = 366 * 86_400;

/// A half-open time window [start, end), in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    start: DateTime<Utc>,
    end: DateTime<Utc>,
}

impl Window {
    pub fn new(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<Self, Invalid> {
        if end <= start {
            return Err(Invalid::new("window", "end must be after start"));
        }
        if start.timestamp_subsec_nanos() != 0 || end.timestamp_subsec_nanos() != 0 {
            return Err(Invalid::new("window", "bounds must be whole seconds"));
        }
        if (end - start).num_seconds() > MAX_WINDOW_SECONDS as i64 {
            return Err(Invalid::new("window", "must be at most 366 days long"));
        }
        Ok(Window { start, end })
    }

    /// The window's length in seconds (at most [`MAX_WINDOW_SECONDS`]).
    pub fn seconds(&self) -> i32 {
        (self.end - self.start).num_seconds() as i32
    }

    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    pub fn end(&self) -> DateTime<Utc> {
        self.end
    }
}

/// What identifies an entry: at most one live entry exists per key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryKey {
    pub tenant: TenantId,
    pub meter: MeterName,
    pub window: Window,
}

/// How an entry is priced: a price-book version's rate for the meter, per price unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pricing {
    pub version: i64,
    pub rate: Decimal,
    pub currency: Currency,
    pub price_unit: UnitName,
    pub units_per_price_unit: Decimal,
}

/// Usage to record: a non-negative quantity in `unit`, priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub key: EntryKey,
    pub quantity: Decimal,
    pub unit: UnitName,
    pub pricing: Pricing,
    amount: Decimal,
}

impl NewEntry {
    pub fn new(
        key: EntryKey,
        quantity: Decimal,
        unit: UnitName,
        pricing: Pricing,
    ) -> Result<Self, Invalid> {
        if quantity.is_sign_negative() && !quantity.is_zero() {
            return Err(Invalid::new("quantity", "must not be negative"));
        }
        let amount = price(quantity, &pricing)?;
        Ok(NewEntry {
            key,
            quantity: quantity.normalize(),
            unit,
            pricing,
            amount,
        })
    }

    /// quantity × rate ÷ units per price unit, to `AMOUNT_SCALE` places.
    pub fn amount(&self) -> Decimal {
        self.amount
    }
}

/// The pricing rule; the database checks the same relation on every entry. Quantities above
/// [`MAX_QUANTITY`] and amounts above [`MAX_AMOUNT`] are out of range: within them the result is
/// exact to 12 places (see [`MAX_AMOUNT`]).
pub fn price(quantity: Decimal, pricing: &Pricing) -> Result<Decimal, Invalid> {
    if pricing.units_per_price_unit <= Decimal::ZERO {
        return Err(Invalid::new("units_per_price_unit", "must be positive"));
    }
    if quantity.abs() > MAX_QUANTITY {
        return Err(Invalid::new(
            "quantity",
            format!("{quantity} is more than one key can measure in a window ({MAX_QUANTITY})"),
        ));
    }
    let out_of_range = || {
        Invalid::new(
            "quantity",
            format!(
                "{quantity} × rate {} ÷ {} is out of range (an entry is at most {MAX_AMOUNT})",
                pricing.rate, pricing.units_per_price_unit
            ),
        )
    };
    let amount = quantity
        .checked_mul(pricing.rate)
        .and_then(|gross| gross.checked_div(pricing.units_per_price_unit))
        .ok_or_else(out_of_range)?;
    if amount.abs() > MAX_AMOUNT {
        return Err(out_of_range());
    }
    Ok(amount
        .round_dp_with_strategy(AMOUNT_SCALE, RoundingStrategy::MidpointNearestEven)
        .normalize())
}

/// The outcome of writing a batch of entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// New live entries.
    pub inserted: usize,
    /// Writes identical to the live entry: no-ops.
    pub unchanged: usize,
    /// Writes that differ from the live entry. The live entry is kept; each is recorded.
    pub conflicts: Vec<EntryConflict>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryConflict {
    pub key: EntryKey,
    pub live_revision: i32,
    pub live_quantity: Decimal,
    pub live_price_version: i64,
    pub attempted_quantity: Decimal,
    pub attempted_price_version: i64,
}

/// The outcome of a correction batch (re-rating or recollection).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorrectionReport {
    /// Keys whose live entry was reversed and replaced.
    pub corrected: usize,
    /// Keys that had no live entry and got one.
    pub inserted: usize,
    /// Keys whose live entry already matched.
    pub unchanged: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn pricing(rate: &str, per: i64) -> Pricing {
        Pricing {
            version: 1,
            rate: Decimal::from_str(rate).unwrap(),
            currency: Currency::parse("c", "EUR").unwrap(),
            price_unit: UnitName::parse("u", "core_hour").unwrap(),
            units_per_price_unit: Decimal::from(per),
        }
    }

    #[test]
    fn prices_per_price_unit_to_twelve_places() {
        let p = pricing("0.031", 3600);
        // 300 core-seconds at 0.031 per core-hour
        assert_eq!(
            price(Decimal::from(300), &p).unwrap().to_string(),
            "0.002583333333"
        );
        assert_eq!(price(Decimal::from(3600), &p).unwrap().to_string(), "0.031");
        assert_eq!(price(Decimal::ZERO, &p).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn rejects_negative_quantity_and_overflow() {
        let t = chrono::DateTime::from_timestamp(0, 0).unwrap();
        let key = EntryKey {
            tenant: TenantId::parse("a").unwrap(),
            meter: MeterName::parse("m", "cpu").unwrap(),
            window: Window::new(t, t + chrono::Duration::seconds(300)).unwrap(),
        };
        let unit = UnitName::parse("u", "core_seconds").unwrap();
        let err = NewEntry::new(
            key.clone(),
            Decimal::from(-1),
            unit.clone(),
            pricing("1", 1),
        );
        assert_eq!(err.unwrap_err().field, "quantity");
        assert!(NewEntry::new(key, Decimal::MAX, unit, pricing("2", 1)).is_err());
    }

    #[test]
    fn windows_are_ordered_whole_seconds() {
        let t = chrono::DateTime::from_timestamp(600, 0).unwrap();
        assert!(Window::new(t, t).is_err());
        assert!(Window::new(t, t - chrono::Duration::seconds(1)).is_err());
        let frac = chrono::DateTime::from_timestamp(600, 5).unwrap();
        assert!(Window::new(frac, t + chrono::Duration::seconds(1)).is_err());
    }
}
