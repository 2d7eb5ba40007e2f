//! Budgets: an amount per calendar period (UTC), with alert thresholds.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use serde_json::{json, Value};

use crate::currency::Currency;
use crate::error::Invalid;
use crate::money::{parse_amount, Money};
use crate::tenant::TenantId;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Monthly,
    Quarterly,
    Yearly,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::Quarterly => "quarterly",
            BudgetPeriod::Yearly => "yearly",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "monthly" => Ok(BudgetPeriod::Monthly),
            "quarterly" => Ok(BudgetPeriod::Quarterly),
            "yearly" => Ok(BudgetPeriod::Yearly),
            other => Err(Invalid::new(
                "period",
                format!("{other:?} is not a period (monthly, quarterly, yearly)"),
            )),
        }
    }

    fn months(self) -> u32 {
        match self {
            BudgetPeriod::Monthly => 1,
            BudgetPeriod::Quarterly => 3,
            BudgetPeriod::Yearly => 12,
        }
    }

    /// The calendar period containing `at`, as [start, end) UTC dates.
    pub fn bounds(self, at: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
        let months = self.months();
        let month0 = (at.month0() / months) * months;
        let start = NaiveDate::from_ymd_opt(at.year(), month0 + 1, 1).expect("valid month");
        let end = start
            .checked_add_months(chrono::Months::new(months))
            .expect("date in range");
        (start, end)
    }
}

/// Alert thresholds in percent of the budget: 1 to 16 of them, strictly increasing, each in
/// 1..=1000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds(Vec<u32>);

impl Thresholds {
    pub fn parse(values: Vec<u32>) -> Result<Self, Invalid> {
        if values.is_empty() || values.len() > 16 {
            return Err(Invalid::new("thresholds", "give 1 to 16 thresholds"));
        }
        if let Some(bad) = values.iter().find(|t| !(1..=1000).contains(*t)) {
            return Err(Invalid::new(
                "thresholds",
                format!("{bad} is outside 1..=1000 percent"),
            ));
        }
        if values.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Invalid::new(
                "thresholds",
                "thresholds must be strictly increasing, e.g. [50, 80, 100]",
            ));
        }
        Ok(Thresholds(values))
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }
}

/// A budget's amount: more than zero, in `currency` with no more decimals than its minor
/// unit. A zero budget would be exceeded before anything is spent and has no percentage to
/// show; "spend nothing" is what suspending a tenant is for.
pub fn parse_budget_amount(field: &str, value: &str, currency: Currency) -> Result<Money, Invalid> {
    let money = parse_amount(field, value, currency)?;
    if money.amount.is_zero() {
        return Err(Invalid::new(field, "a budget must be more than zero"));
    }
    Ok(money)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBudget {
    pub amount: Money,
    pub period: BudgetPeriod,
    pub thresholds: Thresholds,
    pub effective_from: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub id: i64,
    pub tenant: TenantId,
    pub amount: Money,
    pub period: BudgetPeriod,
    pub thresholds: Thresholds,
    pub effective_from: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

impl Budget {
    pub fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant.as_str(),
            "amount": self.amount.amount.to_string(),
            "currency": self.amount.currency.code(),
            "period": self.period.as_str(),
            "thresholds": self.thresholds.as_slice(),
            "effective_from": crate::audit::timestamp(self.effective_from),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, 13, 0, 0).unwrap()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn period_bounds_are_calendar_aligned() {
        let cases = [
            (
                BudgetPeriod::Monthly,
                at(2026, 2, 14),
                date(2026, 2, 1),
                date(2026, 3, 1),
            ),
            (
                BudgetPeriod::Monthly,
                at(2026, 12, 31),
                date(2026, 12, 1),
                date(2027, 1, 1),
            ),
            (
                BudgetPeriod::Quarterly,
                at(2026, 5, 1),
                date(2026, 4, 1),
                date(2026, 7, 1),
            ),
            (
                BudgetPeriod::Quarterly,
                at(2026, 12, 1),
                date(2026, 10, 1),
                date(2027, 1, 1),
            ),
            (
                BudgetPeriod::Yearly,
                at(2026, 7, 9),
                date(2026, 1, 1),
                date(2027, 1, 1),
            ),
        ];
        for (period, now, start, end) in cases {
            assert_eq!(period.bounds(now), (start, end), "{period:?} {now}");
        }
    }

    #[test]
    fn budgets_are_more_than_zero() {
        let eur = Currency::parse("currency", "EUR").unwrap();
        for zero in ["0", "-0", "0.00", "-0.00", "0.0"] {
            let error = parse_budget_amount("amount", zero, eur).unwrap_err();
            assert_eq!(error.field, "amount", "{zero}");
        }
        for bad in ["-1", "1.001", "abc"] {
            assert!(parse_budget_amount("amount", bad, eur).is_err(), "{bad}");
        }
        let smallest = parse_budget_amount("amount", "0.01", eur).unwrap();
        assert_eq!(smallest.amount.to_string(), "0.01");
    }

    #[test]
    fn thresholds_must_increase_within_range() {
        assert!(Thresholds::parse(vec![50, 80, 100]).is_ok());
        assert!(Thresholds::parse(vec![100, 80]).is_err());
        assert!(Thresholds::parse(vec![50, 50]).is_err());
        assert!(Thresholds::parse(vec![]).is_err());
        assert!(Thresholds::parse(vec![0, 10]).is_err());
        assert!(Thresholds::parse(vec![1001]).is_err());
        assert!(Thresholds::parse((1..=17).collect()).is_err());
    }
}
