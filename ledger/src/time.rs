//! Instants and days as people write them to the API and the CLI: RFC 3339 and `YYYY-MM-DD`
//! with four-digit, zero-padded fields, from 1970-01-01 to 9999-12-31 (UTC).
//!
//! Why this range, and why a constant: the ledger holds nothing before the Unix epoch (usage
//! comes from Prometheus, whose samples are epoch milliseconds), so an earlier instant is a
//! typo, not a budget; and 9999 is the last year RFC 3339 and ISO 8601 write without the
//! expanded (signed) form, which neither finance's tools nor most clients read. Inside it,
//! every instant, and the arithmetic that follows (a period's end, the day after `to`), fits
//! chrono and Postgres' `timestamptz` and `date` (which ends at 4713 BC). No deployment has
//! a reason to move these ends, so they are constants, not configuration; limits that are a
//! business choice are checked where they belong (an exemption reaches at most a year ahead,
//! a costs request covers at most 366 days).

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::Invalid;

/// The first instant (and day) the API and the CLI take.
const EARLIEST: DateTime<Utc> = DateTime::UNIX_EPOCH;

/// The first day after the range: the last instant taken is just before it.
fn end_of_range() -> NaiveDate {
    NaiveDate::from_ymd_opt(10_000, 1, 1).expect("chrono reaches year 10000")
}

const RANGE: &str = "1970-01-01 to 9999-12-31 (UTC)";

/// An RFC 3339 instant such as `2026-03-01T00:00:00Z` (an offset, or `Z`, is required; the
/// result is in UTC) within the supported range.
pub fn parse_instant(field: &str, value: &str) -> Result<DateTime<Utc>, Invalid> {
    // chrono's RFC 3339 parser takes exactly four year digits and two for every other field;
    // serde's (and `FromStr`'s) would also take `2026-1-1`, signed years and spaces.
    let instant = DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            Invalid::new(
                field,
                format!(
                    "{value:?} is not an RFC 3339 time such as \"2026-03-01T00:00:00Z\" \
                     (four-digit year, two-digit fields, an offset or Z)"
                ),
            )
        })?
        .with_timezone(&Utc);
    check_instant(field, instant)
}

/// `instant` if it is within the supported range.
fn check_instant(field: &str, instant: DateTime<Utc>) -> Result<DateTime<Utc>, Invalid> {
    if instant < EARLIEST || instant.date_naive() >= end_of_range() {
        return Err(Invalid::new(
            field,
            format!("{} is outside {RANGE}", instant.to_rfc3339()),
        ));
    }
    Ok(instant)
}

/// A day written `YYYY-MM-DD`, zero-padded, within the supported range.
pub fn parse_day(field: &str, value: &str) -> Result<NaiveDate, Invalid> {
    let bytes = value.as_bytes();
    let well_formed = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    let day = well_formed
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten()
        .ok_or_else(|| {
            Invalid::new(
                field,
                format!("{value:?} is not a date such as \"2026-03-01\" (YYYY-MM-DD)"),
            )
        })?;
    if day < EARLIEST.date_naive() {
        return Err(Invalid::new(field, format!("{day} is outside {RANGE}")));
    }
    Ok(day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn instants_are_rfc3339_with_four_digit_years_in_range() {
        let at = |y, mo, d, h, mi, s| Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap();
        for (text, expected) in [
            ("2026-03-01T00:00:00Z", at(2026, 3, 1, 0, 0, 0)),
            ("2026-03-01T01:00:00+01:00", at(2026, 3, 1, 0, 0, 0)),
            ("1970-01-01T00:00:00Z", at(1970, 1, 1, 0, 0, 0)),
            ("9999-12-31T23:59:59Z", at(9999, 12, 31, 23, 59, 59)),
            ("1970-01-01T01:00:00+01:00", at(1970, 1, 1, 0, 0, 0)),
        ] {
            assert_eq!(parse_instant("at", text).unwrap(), expected, "{text}");
        }
        assert_eq!(
            parse_instant("at", "2026-03-01T00:00:00.25Z")
                .unwrap()
                .timestamp_subsec_millis(),
            250
        );
        for bad in [
            "-5000-01-01T00:00:00Z",
            "+10000-01-01T00:00:00Z",
            "+002026-01-01T00:00:00Z",
            "0001-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:59:59+01:00",
            "9999-12-31T23:00:00-01:00",
            "2026-1-1T00:00:00Z",
            "2026-01-01T0:00:00Z",
            "2026-01-01",
            "2026-01-01T00:00:00",
            " 2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z ",
            "2026-01-01T00:00:00 UTC",
            "2026-02-30T00:00:00Z",
            "",
        ] {
            let error = parse_instant("effective_from", bad).unwrap_err();
            assert_eq!(error.field, "effective_from", "{bad:?}");
        }
    }

    #[test]
    fn days_are_zero_padded_in_range() {
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert_eq!(parse_day("from", "2026-03-01").unwrap(), day(2026, 3, 1));
        assert_eq!(parse_day("from", "1970-01-01").unwrap(), day(1970, 1, 1));
        assert_eq!(parse_day("from", "9999-12-31").unwrap(), day(9999, 12, 31));
        for bad in [
            "2026-1-1",
            "2026-01-1",
            "2026-1-01",
            "20260101",
            "-5000-01-01",
            "+10000-01-01",
            "10000-01-01",
            "0001-01-01",
            "1969-12-31",
            "2026-02-30",
            "2026-13-01",
            " 2026-01-01",
            "2026-01-01 ",
            "2026-01-01T00:00:00Z",
            "2026/01/01",
            "２０２６-01-01",
            "",
        ] {
            assert_eq!(parse_day("from", bad).unwrap_err().field, "from", "{bad:?}");
        }
    }

    #[test]
    fn already_parsed_instants_are_checked_against_the_range() {
        let before = EARLIEST - chrono::Duration::microseconds(1);
        assert_eq!(
            check_instant("valid_from", before).unwrap_err().field,
            "valid_from"
        );
        assert!(check_instant("valid_from", EARLIEST).is_ok());
        let after = Utc.with_ymd_and_hms(10_000, 1, 1, 0, 0, 0).unwrap();
        assert!(check_instant("valid_from", after).is_err());
        assert!(check_instant("valid_from", after - chrono::Duration::microseconds(1)).is_ok());
    }
}
