//! Cost reports: daily costs per tenant and meter with the documented rounding rule.
//!
//! Rounding: each row's amount is rounded to its currency's minor unit, half to even. Totals
//! are the exact sums of the unrounded amounts, rounded once the same way, so a total may
//! differ from the sum of its rounded rows by at most half a minor unit per row.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::NaiveDate;
use ledger::money::round_to_minor_units;
use ledger::store::DailyCost;
use rust_decimal::Decimal;
use serde::Serialize;

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CostRow {
    pub tenant_id: String,
    pub day: NaiveDate,
    pub meter: String,
    pub quantity: String,
    pub unit: String,
    pub amount: String,
    pub currency: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CostTotal {
    pub tenant_id: String,
    pub currency: String,
    pub amount: String,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct CostReport {
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    pub rows: Vec<CostRow>,
    pub totals: Vec<CostTotal>,
}

impl CostReport {
    pub fn new(from: NaiveDate, to: NaiveDate, costs: &[DailyCost]) -> Self {
        let mut exact: BTreeMap<(String, ledger::currency::Currency), Decimal> = BTreeMap::new();
        let rows = costs
            .iter()
            .map(|c| {
                *exact.entry((c.tenant.to_string(), c.currency)).or_default() += c.amount;
                CostRow {
                    tenant_id: c.tenant.to_string(),
                    day: c.day,
                    meter: c.meter.clone(),
                    quantity: c.quantity.normalize().to_string(),
                    unit: c.unit.clone(),
                    amount: round_to_minor_units(c.amount, c.currency).to_string(),
                    currency: c.currency.to_string(),
                }
            })
            .collect();
        let totals = exact
            .into_iter()
            .map(|((tenant_id, currency), amount)| CostTotal {
                tenant_id,
                currency: currency.to_string(),
                amount: round_to_minor_units(amount, currency).to_string(),
            })
            .collect();
        CostReport {
            from,
            to,
            rows,
            totals,
        }
    }

    /// CSV with a header row (RFC 4180 quoting where needed).
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "tenant_id,day,meter,quantity,unit,amount,currency")?;
        for r in &self.rows {
            let fields = [
                r.tenant_id.as_str(),
                &r.day.to_string(),
                &r.meter,
                &r.quantity,
                &r.unit,
                &r.amount,
                &r.currency,
            ]
            .map(csv_field);
            writeln!(out, "{}", fields.join(","))?;
        }
        Ok(())
    }
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::currency::Currency;
    use ledger::tenant::TenantId;
    use std::str::FromStr;

    fn cost(tenant: &str, meter: &str, amount: &str) -> DailyCost {
        DailyCost {
            tenant: TenantId::parse(tenant).unwrap(),
            day: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            meter: meter.into(),
            quantity: Decimal::from_str("3600.000").unwrap(),
            unit: "core_seconds".into(),
            amount: Decimal::from_str(amount).unwrap(),
            currency: Currency::parse("c", "EUR").unwrap(),
        }
    }

    #[test]
    fn rows_round_half_even_and_totals_round_the_exact_sum() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let report = CostReport::new(
            d,
            d,
            &[
                cost("acme", "cpu", "0.125"),
                cost("acme", "memory", "0.125"),
            ],
        );
        assert_eq!(report.rows[0].amount, "0.12");
        assert_eq!(report.rows[0].quantity, "3600");
        assert_eq!(report.totals[0].amount, "0.25");
        let mut csv = Vec::new();
        report.write_csv(&mut csv).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "tenant_id,day,meter,quantity,unit,amount,currency\n\
             acme,2026-03-01,cpu,3600,core_seconds,0.12,EUR\n\
             acme,2026-03-01,memory,3600,core_seconds,0.12,EUR\n"
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
