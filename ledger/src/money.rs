//! Money and decimal input. Amounts are `rust_decimal::Decimal`, never floating point.

use rust_decimal::{Decimal, RoundingStrategy};

use crate::currency::Currency;
use crate::error::Invalid;

/// An amount in a currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub amount: Decimal,
    pub currency: Currency,
}

impl Money {
    /// The amount rounded to the currency's minor unit, half to even ("banker's rounding"),
    /// which is how every report and API figure is rounded. Sums are rounded once, after
    /// adding the exact amounts, never added up from rounded figures.
    pub fn rounded(&self) -> Decimal {
        round_to_minor_units(self.amount, self.currency)
    }
}

pub fn round_to_minor_units(amount: Decimal, currency: Currency) -> Decimal {
    amount.round_dp_with_strategy(
        currency.minor_units(),
        RoundingStrategy::MidpointNearestEven,
    )
}

/// Parses a plain decimal string: optional '-', digits, optional '.' and digits. Exponents,
/// '+', spaces, "NaN" and friends are rejected so that what a user wrote is what is stored.
/// `amount` rounded to the currency's minor unit and written with all its digits
/// (`125.00` for EUR, `125` for JPY), for people to read.
pub fn format_amount(amount: Decimal, currency: Currency) -> String {
    let minor = currency.minor_units() as usize;
    format!("{:.minor$}", round_to_minor_units(amount, currency))
}

pub fn parse_decimal(field: &str, value: &str) -> Result<Decimal, Invalid> {
    let digits = value.strip_prefix('-').unwrap_or(value);
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let well_formed = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (frac.bytes().all(|b| b.is_ascii_digit()))
        && !(digits.contains('.') && frac.is_empty());
    if !well_formed {
        return Err(Invalid::new(
            field,
            format!("{value:?} is not a decimal number such as \"1000.00\""),
        ));
    }
    Decimal::from_str_exact(value)
        .map_err(|_| Invalid::new(field, format!("{value:?} is out of range")))
}

/// A non-negative amount in `currency` with no more decimals than its minor unit.
pub fn parse_amount(field: &str, value: &str, currency: Currency) -> Result<Money, Invalid> {
    let amount = parse_decimal(field, value)?;
    if amount.is_sign_negative() && !amount.is_zero() {
        return Err(Invalid::new(field, "must not be negative"));
    }
    if amount.scale() > currency.minor_units() {
        return Err(Invalid::new(
            field,
            format!(
                "{currency} has {} decimal places; {value:?} has more",
                currency.minor_units()
            ),
        ));
    }
    Ok(Money { amount, currency })
}

/// A non-negative rate at full precision.
pub fn parse_rate(field: &str, value: &str) -> Result<Decimal, Invalid> {
    let rate = parse_decimal(field, value)?;
    if rate.is_sign_negative() && !rate.is_zero() {
        return Err(Invalid::new(field, "must not be negative"));
    }
    Ok(rate.normalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn eur() -> Currency {
        Currency::parse("currency", "EUR").unwrap()
    }

    #[test]
    fn decimals_are_parsed_strictly() {
        assert_eq!(
            parse_decimal("a", "1000.00").unwrap().to_string(),
            "1000.00"
        );
        assert_eq!(parse_decimal("a", "0").unwrap(), Decimal::ZERO);
        for bad in [
            "", "1e3", "+1", " 1", "1.", ".5", "NaN", "1,5", "abc", "--1", "1.2.3",
        ] {
            assert_eq!(
                parse_decimal("amount", bad).unwrap_err().field,
                "amount",
                "{bad}"
            );
        }
        assert!(parse_decimal("a", "99999999999999999999999999999999").is_err());
    }

    #[test]
    fn amounts_are_non_negative_and_fit_the_currency() {
        assert!(parse_amount("amount", "1000.00", eur()).is_ok());
        assert!(parse_amount("amount", "-1.00", eur()).is_err());
        assert!(parse_amount("amount", "1.001", eur()).is_err());
        let jpy = Currency::parse("c", "JPY").unwrap();
        assert!(parse_amount("amount", "1.5", jpy).is_err());
        assert!(parse_amount("amount", "150", jpy).is_ok());
    }

    #[test]
    fn rounding_is_half_to_even_at_the_minor_unit() {
        let m = |s: &str| Money {
            amount: Decimal::from_str(s).unwrap(),
            currency: eur(),
        };
        assert_eq!(m("0.125").rounded().to_string(), "0.12");
        assert_eq!(m("0.135").rounded().to_string(), "0.14");
        assert_eq!(m("0.1251").rounded().to_string(), "0.13");
    }
}
