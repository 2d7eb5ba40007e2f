//! Closed months leaving the hot database: the month (`YYYY-MM`, UTC), the form in which a
//! month's entries are exported (`ArchiveRow`, the readable columns of `ledger_entry_details`)
//! and the tally that proves a copy complete (`MonthTally`: rows, and per tenant and currency
//! the entries and the amount). Pure; `store::archive` does the I/O.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Datelike, Months, NaiveDate, Utc};
use rust_decimal::Decimal;

use crate::error::Invalid;

/// A calendar month in UTC: the unit of partitioning and of archiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month(NaiveDate);

impl Month {
    /// `YYYY-MM`, zero-padded, between 1970-01 and 9999-12.
    pub fn parse(field: &str, value: &str) -> Result<Month, Invalid> {
        let invalid = || Invalid::new(field, format!("{value:?} is not a month such as 2025-01"));
        let (year, month) = value.split_once('-').ok_or_else(invalid)?;
        if year.len() != 4
            || month.len() != 2
            || !(year.chars().chain(month.chars())).all(|c| c.is_ascii_digit())
        {
            return Err(invalid());
        }
        let year: i32 = year.parse().map_err(|_| invalid())?;
        let month: u32 = month.parse().map_err(|_| invalid())?;
        if year < 1970 {
            return Err(invalid());
        }
        NaiveDate::from_ymd_opt(year, month, 1)
            .map(Month)
            .ok_or_else(invalid)
    }

    /// The month holding `day`.
    pub fn of_day(day: NaiveDate) -> Month {
        Month(day.with_day(1).expect("every month has a first day"))
    }

    /// The month holding `at` (UTC).
    pub fn of(at: DateTime<Utc>) -> Month {
        Month::of_day(at.date_naive())
    }

    /// The first day.
    pub fn first_day(self) -> NaiveDate {
        self.0
    }

    /// Midnight UTC of the first day: the partition's lower bound.
    pub fn start(self) -> DateTime<Utc> {
        self.0.and_hms_opt(0, 0, 0).expect("midnight").and_utc()
    }

    /// The month after: its start is this month's (exclusive) upper bound.
    pub fn next(self) -> Month {
        Month(self.0 + Months::new(1))
    }

    /// `months` months earlier.
    pub fn minus(self, months: u32) -> Month {
        Month(self.0 - Months::new(months))
    }

    /// The partition holding the month's entries: `ledger_entries_pYYYYMM`.
    pub fn partition(self) -> String {
        format!("ledger_entries_p{:04}{:02}", self.0.year(), self.0.month())
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.0.year(), self.0.month())
    }
}

/// One ledger entry as archived: the readable columns, nothing derived from storage keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRow {
    pub tenant_id: String,
    pub meter: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub revision: i32,
    /// `usage` or `reversal`.
    pub kind: String,
    pub quantity: Decimal,
    pub unit: String,
    pub price_version: i64,
    pub rate: Decimal,
    pub price_unit: String,
    pub units_per_price_unit: Decimal,
    pub amount: Decimal,
    pub currency: String,
    pub source: String,
    /// A correction's reason.
    pub reason: Option<String>,
}

/// Entries and amount of one tenant in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TenantSum {
    pub entries: i64,
    pub amount: Decimal,
}

/// What a complete copy of a month must add up to. Amounts compare as numbers (`1.50` equals
/// `1.5`), exactly.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MonthTally {
    pub rows: i64,
    /// Per (tenant, currency).
    pub sums: BTreeMap<(String, String), TenantSum>,
}

impl MonthTally {
    pub fn add(&mut self, row: &ArchiveRow) {
        self.rows += 1;
        let sum = self
            .sums
            .entry((row.tenant_id.clone(), row.currency.clone()))
            .or_default();
        sum.entries += 1;
        sum.amount += row.amount;
    }

    /// What differs from `expected`, one line each (empty: equal).
    pub fn differences(&self, expected: &MonthTally) -> Vec<String> {
        let mut out = Vec::new();
        if self.rows != expected.rows {
            out.push(format!("rows: {} instead of {}", self.rows, expected.rows));
        }
        let zero = TenantSum::default();
        let keys: std::collections::BTreeSet<&(String, String)> =
            self.sums.keys().chain(expected.sums.keys()).collect();
        for key in keys {
            let found = self.sums.get(key).unwrap_or(&zero);
            let wanted = expected.sums.get(key).unwrap_or(&zero);
            if found.entries != wanted.entries || found.amount != wanted.amount {
                out.push(format!(
                    "tenant {} in {}: {} entries, amount {} instead of {} entries, amount {}",
                    key.0,
                    key.1,
                    found.entries,
                    found.amount.normalize(),
                    wanted.entries,
                    wanted.amount.normalize()
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_parse_strictly_and_name_their_partition() {
        let m = Month::parse("--before", "2025-01").unwrap();
        assert_eq!(m.to_string(), "2025-01");
        assert_eq!(m.partition(), "ledger_entries_p202501");
        assert_eq!(m.next().to_string(), "2025-02");
        assert_eq!(m.minus(13).to_string(), "2023-12");
        assert_eq!(
            Month::parse("m", "2024-12").unwrap().next().to_string(),
            "2025-01"
        );
        for bad in [
            "2025-1",
            "2025-13",
            "25-01",
            "2025-00",
            "2025/01",
            "1969-12",
            "2025-01-01",
            "",
        ] {
            let e = Month::parse("--before", bad).unwrap_err();
            assert_eq!(e.field, "--before", "{bad}");
        }
    }

    #[test]
    fn a_tally_names_every_difference() {
        let row = |tenant: &str, amount: i64| ArchiveRow {
            tenant_id: tenant.into(),
            meter: "cpu".into(),
            window_start: Utc::now(),
            window_end: Utc::now(),
            revision: 1,
            kind: "usage".into(),
            quantity: Decimal::ONE,
            unit: "core_seconds".into(),
            price_version: 1,
            rate: Decimal::ONE,
            price_unit: "core_hour".into(),
            units_per_price_unit: Decimal::ONE,
            amount: Decimal::new(amount, 2),
            currency: "EUR".into(),
            source: "test".into(),
            reason: None,
        };
        let mut a = MonthTally::default();
        let mut b = MonthTally::default();
        for r in [row("a", 150), row("b", 1)] {
            a.add(&r);
            b.add(&r);
        }
        assert!(a.differences(&b).is_empty());
        b.add(&row("c", 1));
        let diff = a.differences(&b);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff[0].starts_with("rows: 2 instead of 3"), "{diff:?}");
        assert!(diff[1].contains("tenant c in EUR"), "{diff:?}");
    }
}
