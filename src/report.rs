//! Cost reports: daily costs per tenant and meter with the documented rounding rule.
//!
//! Rounding: each row's amount is rounded to its currency's minor unit, half to even. Totals
//! are the exact sums of the unrounded amounts, rounded once the same way, so a total may
//! differ from the sum of its rounded rows by at most half a minor unit per row.
//!
//! Quantities are shown twice: as measured (`quantity` in `unit`, e.g. core-seconds) and in the
//! unit the meter is priced in (`priced_quantity` in `price_unit`, e.g. core-hours), so that a
//! row's amount can be checked against its rate.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::NaiveDate;
use ledger::currency::Currency;
use ledger::money::round_to_minor_units;
use ledger::store::DailyCost;
use rust_decimal::Decimal;
use serde::Serialize;
use utoipa::ToSchema;

/// What the first column (`tenant_id`) of a CSV totals row holds. Tenant ids are lowercase
/// DNS labels, so no tenant can be called this.
pub const CSV_TOTAL_MARKER: &str = "TOTAL";

#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct CostRow {
    pub tenant_id: String,
    pub day: NaiveDate,
    pub meter: String,
    pub quantity: String,
    pub unit: String,
    pub amount: String,
    pub currency: String,
    /// `quantity` in `price_unit`, to 12 decimal places.
    pub priced_quantity: String,
    pub price_unit: String,
}

#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct CostTotal {
    pub tenant_id: String,
    pub currency: String,
    pub amount: String,
}

/// The total of all rows in one currency, whatever the tenant.
#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct CurrencyTotal {
    pub currency: String,
    pub amount: String,
}

#[derive(Debug, Serialize, PartialEq, Eq, ToSchema)]
pub struct CostReport {
    /// First day, inclusive.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    pub rows: Vec<CostRow>,
    /// Per tenant and currency.
    pub totals: Vec<CostTotal>,
    /// Per currency: the CSV's totals rows.
    pub currency_totals: Vec<CurrencyTotal>,
}

impl CostReport {
    pub fn new(from: NaiveDate, to: NaiveDate, costs: &[DailyCost]) -> Self {
        let mut exact: BTreeMap<(String, Currency), Decimal> = BTreeMap::new();
        let mut exact_per_currency: BTreeMap<Currency, Decimal> = BTreeMap::new();
        let rows = costs
            .iter()
            .map(|c| {
                *exact.entry((c.tenant.to_string(), c.currency)).or_default() += c.amount;
                *exact_per_currency.entry(c.currency).or_default() += c.amount;
                CostRow {
                    tenant_id: c.tenant.to_string(),
                    day: c.day,
                    meter: c.meter.clone(),
                    quantity: c.quantity.normalize().to_string(),
                    unit: c.unit.clone(),
                    amount: round_to_minor_units(c.amount, c.currency).to_string(),
                    currency: c.currency.to_string(),
                    priced_quantity: c.priced_quantity.normalize().to_string(),
                    price_unit: c.price_unit.clone(),
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
        let currency_totals = exact_per_currency
            .into_iter()
            .map(|(currency, amount)| CurrencyTotal {
                currency: currency.to_string(),
                amount: round_to_minor_units(amount, currency).to_string(),
            })
            .collect();
        CostReport {
            from,
            to,
            rows,
            totals,
            currency_totals,
        }
    }

    /// CSV with a header row (RFC 4180 quoting where needed): one row per tenant, day, meter
    /// (and price unit), then one totals row per currency, marked `TOTAL` in the first column
    /// and empty where a total has no value, so that a spreadsheet can filter it out.
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit"
        )?;
        for r in &self.rows {
            let fields = [
                csv_text(&r.tenant_id),
                r.day.to_string(),
                csv_text(&r.meter),
                csv_number(&r.quantity),
                csv_text(&r.unit),
                csv_number(&r.amount),
                csv_text(&r.currency),
                csv_number(&r.priced_quantity),
                csv_text(&r.price_unit),
            ];
            writeln!(out, "{}", fields.join(","))?;
        }
        for t in &self.currency_totals {
            let fields = [
                csv_text(CSV_TOTAL_MARKER),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                csv_number(&t.amount),
                csv_text(&t.currency),
                String::new(),
                String::new(),
            ];
            writeln!(out, "{}", fields.join(","))?;
        }
        Ok(())
    }
}

/// A text cell. One that a spreadsheet would read as a formula (it starts with `=`, `+`, `-`,
/// `@`, a tab or a carriage return) gets a leading `'`, which spreadsheets show as text
/// (OWASP, "CSV Injection"); then RFC 4180 quoting where needed. Every text cell goes through
/// here, even those whose values cannot start so today (tenant ids, meter and unit names),
/// so that a later, looser source does not open the hole.
pub(crate) fn csv_text(value: &str) -> String {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        quoted(&format!("'{value}"))
    } else {
        quoted(value)
    }
}

/// A number cell: a decimal the report wrote itself (`-1.5` is a correction, not a formula),
/// left as it is so that spreadsheets read it as a number.
pub(crate) fn csv_number(value: &str) -> String {
    debug_assert!(
        value.parse::<Decimal>().is_ok(),
        "{value:?} is not a decimal"
    );
    quoted(value)
}

/// RFC 4180: a field holding a comma, a quote or a line break is quoted, quotes doubled.
fn quoted(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger::tenant::TenantId;
    use std::str::FromStr;

    fn cost_in(tenant: &str, meter: &str, amount: &str, currency: &str) -> DailyCost {
        DailyCost {
            tenant: TenantId::parse(tenant).unwrap(),
            day: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            meter: meter.into(),
            quantity: Decimal::from_str("3600.000").unwrap(),
            unit: "core_seconds".into(),
            amount: Decimal::from_str(amount).unwrap(),
            currency: Currency::parse("c", currency).unwrap(),
            priced_quantity: Decimal::from_str("1.000").unwrap(),
            price_unit: "core_hour".into(),
        }
    }

    fn cost(tenant: &str, meter: &str, amount: &str) -> DailyCost {
        cost_in(tenant, meter, amount, "EUR")
    }

    fn csv(report: &CostReport) -> String {
        let mut out = Vec::new();
        report.write_csv(&mut out).unwrap();
        String::from_utf8(out).unwrap()
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
        assert_eq!(report.rows[0].priced_quantity, "1");
        assert_eq!(report.totals[0].amount, "0.25");
        assert_eq!(
            csv(&report),
            "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit\n\
             acme,2026-03-01,cpu,3600,core_seconds,0.12,EUR,1,core_hour\n\
             acme,2026-03-01,memory,3600,core_seconds,0.12,EUR,1,core_hour\n\
             TOTAL,,,,,0.25,EUR,,\n"
        );
    }

    #[test]
    fn the_csv_totals_row_rounds_the_exact_sum_once() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let report = CostReport::new(
            d,
            d,
            &[
                cost("acme", "cpu", "0.004"),
                cost("acme", "memory", "0.004"),
                cost("globex", "cpu", "0.004"),
            ],
        );
        let text = csv(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "{text}");
        for row in &lines[1..4] {
            assert!(row.contains(",0.00,EUR,"), "{row}");
        }
        // 0.012 rounded once, not 0.00 + 0.00 + 0.00
        assert_eq!(lines[4], "TOTAL,,,,,0.01,EUR,,");
        assert_eq!(
            report.currency_totals,
            [CurrencyTotal {
                currency: "EUR".into(),
                amount: "0.01".into()
            }]
        );
        // per tenant: 0.008 and 0.004
        let per_tenant: Vec<_> = report.totals.iter().map(|t| t.amount.as_str()).collect();
        assert_eq!(per_tenant, ["0.01", "0.00"]);
    }

    #[test]
    fn each_currency_has_its_totals_row_rounded_to_its_minor_unit() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let report = CostReport::new(
            d,
            d,
            &[
                cost_in("acme", "cpu", "10.6", "JPY"),
                cost_in("acme", "memory", "0.125", "EUR"),
                cost_in("globex", "cpu", "10.6", "JPY"),
            ],
        );
        let text = csv(&report);
        let totals: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with(CSV_TOTAL_MARKER))
            .collect();
        assert_eq!(totals, ["TOTAL,,,,,0.12,EUR,,", "TOTAL,,,,,21,JPY,,"]);
        // rows first, totals last
        assert!(text.ends_with("TOTAL,,,,,21,JPY,,\n"), "{text}");
    }

    #[test]
    fn an_empty_report_has_no_totals_row() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let report = CostReport::new(d, d, &[]);
        assert_eq!(
            csv(&report),
            "tenant_id,day,meter,quantity,unit,amount,currency,priced_quantity,price_unit\n"
        );
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("plain"), "plain");
    }

    #[test]
    fn csv_text_cells_cannot_be_formulas_and_numbers_stay_numbers() {
        for (text, cell) in [
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("=1+1", "'=1+1"),
            ("+1", "'+1"),
            ("-1", "'-1"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "\"'\rx\""),
            ("=a,b", "\"'=a,b\""),
            ("a=b", "a=b"),
            ("core_hour", "core_hour"),
            ("", ""),
        ] {
            assert_eq!(csv_text(text), cell, "{text:?}");
        }
        for number in ["-1.50", "0", "12.5", "-0.000000000001"] {
            assert_eq!(csv_number(number), number);
        }
    }

    #[test]
    fn negative_amounts_are_written_as_numbers() {
        let d = NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        let report = CostReport::new(d, d, &[cost("acme", "cpu", "-1.50")]);
        let text = csv(&report);
        let row = text.lines().nth(1).unwrap();
        assert!(row.starts_with("acme,2026-03-01,cpu,"), "{row}");
        assert!(row.contains(",-1.50,EUR,"), "{row}");
        assert!(text.lines().any(|l| l == "TOTAL,,,,,-1.50,EUR,,"), "{text}");
    }
}
