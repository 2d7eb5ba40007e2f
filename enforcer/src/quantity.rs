//! Kubernetes resource quantities (`500m`, `4Gi`, `10`, `1e3`), just enough to scale a quota's
//! hard limits exactly: the number is a `Decimal` and the suffix is kept as written.

use std::fmt;

use rust_decimal::Decimal;

const SUFFIXES: [&str; 13] = [
    "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T",
];
const MORE_SUFFIXES: [&str; 2] = ["P", "E"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quantity {
    number: Decimal,
    /// A binary or decimal SI suffix, or an exponent such as `e3`, or empty.
    suffix: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadQuantity;

impl Quantity {
    pub fn parse(text: &str) -> Result<Quantity, BadQuantity> {
        let text = text.trim();
        let split = text
            .char_indices()
            .find(|(i, c)| {
                !(c.is_ascii_digit() || *c == '.' || ((*c == '+' || *c == '-') && *i == 0))
            })
            .map_or(text.len(), |(i, _)| i);
        let (number, suffix) = text.split_at(split);
        if number.is_empty() || number.starts_with('-') {
            return Err(BadQuantity);
        }
        let number: Decimal = number
            .trim_start_matches('+')
            .parse()
            .map_err(|_| BadQuantity)?;
        let valid_suffix = suffix.is_empty()
            || SUFFIXES.contains(&suffix)
            || MORE_SUFFIXES.contains(&suffix)
            || ((suffix.starts_with('e') || suffix.starts_with('E'))
                && suffix[1..]
                    .trim_start_matches(['+', '-'])
                    .chars()
                    .all(|c| c.is_ascii_digit())
                && suffix.len() > 1
                && suffix[1..].parse::<i32>().is_ok());
        if !valid_suffix {
            return Err(BadQuantity);
        }
        Ok(Quantity {
            number,
            suffix: suffix.to_owned(),
        })
    }

    /// This quantity times `factor`, in the same unit, rounded down to a thousandth of that
    /// unit (a quota must not end up looser than asked).
    pub fn scaled(&self, factor: Decimal) -> Quantity {
        let number = (self.number * factor)
            .round_dp_with_strategy(3, rust_decimal::RoundingStrategy::ToZero)
            .normalize();
        Quantity {
            number,
            suffix: self.suffix.clone(),
        }
    }

    /// This quantity times `factor`, rounded down to a whole number of its unit (object counts
    /// such as `pods` cannot be fractional).
    pub fn scaled_whole(&self, factor: Decimal) -> Quantity {
        let number = (self.number * factor).floor().normalize();
        Quantity {
            number,
            suffix: self.suffix.clone(),
        }
    }
}

impl Quantity {
    /// The value in base units, exactly (`1500m` and `1.5` are equal). `None` if it does not
    /// fit a `Decimal`.
    pub fn value(&self) -> Option<Decimal> {
        let power = |base: i64, exp: u32| -> Option<Decimal> {
            (0..exp).try_fold(Decimal::ONE, |acc, _| acc.checked_mul(Decimal::from(base)))
        };
        let multiplier = match self.suffix.as_str() {
            "" => Decimal::ONE,
            "n" => Decimal::new(1, 9),
            "u" => Decimal::new(1, 6),
            "m" => Decimal::new(1, 3),
            "k" => power(10, 3)?,
            "M" => power(10, 6)?,
            "G" => power(10, 9)?,
            "T" => power(10, 12)?,
            "P" => power(10, 15)?,
            "E" => power(10, 18)?,
            "Ki" => power(1024, 1)?,
            "Mi" => power(1024, 2)?,
            "Gi" => power(1024, 3)?,
            "Ti" => power(1024, 4)?,
            "Pi" => power(1024, 5)?,
            "Ei" => power(1024, 6)?,
            exp => {
                let e: i32 = exp[1..].parse().ok()?;
                if e >= 0 {
                    power(10, e as u32)?
                } else {
                    Decimal::ONE.checked_div(power(10, (-e) as u32)?)?
                }
            }
        };
        self.number.checked_mul(multiplier)
    }
}

/// Whether two quantity strings mean the same amount. API servers rewrite quantities into
/// their canonical form (`2.5` comes back as `2500m`), so compare values, not spellings.
pub fn same_quantity(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    match (Quantity::parse(a), Quantity::parse(b)) {
        (Ok(a), Ok(b)) => a.value().is_some() && a.value() == b.value(),
        _ => false,
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.number, self.suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn parses_and_scales_in_the_same_unit() {
        let cases = [
            ("8Gi", "0.5", "4Gi"),
            ("3", "0.5", "1.5"),
            ("500m", "0.5", "250m"),
            ("10", "0.25", "2.5"),
            ("1e3", "0.5", "0.5e3"),
            ("2.5Ti", "0.1", "0.25Ti"),
            ("1", "0.3333", "0.333"),
        ];
        for (input, factor, want) in cases {
            let q = Quantity::parse(input).unwrap();
            assert_eq!(q.scaled(d(factor)).to_string(), want, "{input} x {factor}");
        }
        assert_eq!(
            Quantity::parse("7")
                .unwrap()
                .scaled_whole(d("0.5"))
                .to_string(),
            "3"
        );
    }

    #[test]
    fn equal_values_in_other_spellings_are_the_same_quantity() {
        for (a, b) in [
            ("2.5", "2500m"),
            ("1Gi", "1024Mi"),
            ("1k", "1000"),
            ("1e3", "1k"),
            ("0", "0m"),
        ] {
            assert!(same_quantity(a, b), "{a} = {b}");
        }
        for (a, b) in [("1Gi", "1G"), ("500m", "0.4"), ("1", "x")] {
            assert!(!same_quantity(a, b), "{a} != {b}");
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in ["", "Gi", "-1", "1Xi", "1e", "1.2.3", "abc", "1 Gi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
    }
}
