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
    fn rejects_what_kubernetes_rejects() {
        for bad in ["", "Gi", "-1", "1Xi", "1e", "1.2.3", "abc", "1 Gi"] {
            assert!(Quantity::parse(bad).is_err(), "{bad:?}");
        }
    }
}
