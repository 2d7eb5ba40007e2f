//! From query answers to one collected window: attribution to tenants, unallocated usage,
//! pricing and completeness. Pure: no I/O, so every rule here is tested with plain tests.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::PriceBookVersion;
use ledger::tenant::TenantId;
use ledger::usage::{
    CollectedWindow, PricingFailure, UnallocatedReason, UnallocatedUsage, UnpricedUsage,
};
use rust_decimal::Decimal;

use crate::meter::Meter;
use crate::scrape::{IntervalMismatch, Target};
use crate::source::Sample;
use crate::Error;

/// Quantities are kept to this many significant digits, and at most `QUANTITY_SCALE` decimal
/// places. Prometheus sums in binary floating point, in an order that varies from one
/// evaluation to the next, so the last digits of the same window differ between a collection
/// and a recollection (seen: 1948926270.472001 and 1948926270.472). Eight significant digits
/// are far below any price's resolution and far above that noise.
pub const QUANTITY_SIGNIFICANT_DIGITS: i64 = 8;
pub const QUANTITY_SCALE: u32 = 6;

/// Labels of the completeness probe's three facets (see `meter::probe_query`).
pub const PROBE_LABEL: &str = "budgetd_probe";

/// What the collector knows beyond the answers.
pub struct Context<'a> {
    pub tenant_label: &'a str,
    /// Tenants usage can be billed to.
    pub known_tenants: &'a BTreeSet<TenantId>,
    /// Tenants expected to have namespaces (active or suspended): missing ones are incomplete.
    pub expected_tenants: &'a BTreeSet<TenantId>,
    /// Samples a scrape target yields in one window at the configured interval.
    pub expected_samples: i64,
    /// Scrape jobs whose sample counts in this window do not fit the configured interval
    /// (`scrape::data_mismatches` of the window's probe): the window is incomplete, and their
    /// targets' shortfalls are explained by it rather than reported as gaps one by one.
    pub interval_mismatches: &'a [IntervalMismatch],
}

/// Parses a Prometheus sample value into a non-negative quantity.
pub fn parse_quantity(value: &str) -> Result<Decimal, String> {
    let parsed = if value.contains(['e', 'E']) {
        Decimal::from_scientific(value)
    } else {
        Decimal::from_str(value)
    };
    match parsed {
        Ok(q) if q.is_sign_negative() && !q.is_zero() => Err(format!("negative value {value}")),
        Ok(q) => Ok(round_significant(q)),
        Err(_) => Err(format!("value {value:?} is not a finite number")),
    }
}

fn round_significant(q: Decimal) -> Decimal {
    let integer_digits = q
        .abs()
        .trunc()
        .normalize()
        .to_string()
        .trim_start_matches('0')
        .len() as i64;
    let excess = integer_digits - QUANTITY_SIGNIFICANT_DIGITS;
    if excess > 0 {
        // A decimal has at most 29 integer digits, so the factor is at most 10^21 (an i128),
        // and rounding up the largest values could leave the decimal range: those are cut.
        let factor = Decimal::from_i128_with_scale(10i128.pow(excess as u32), 0);
        let scaled = q / factor;
        return scaled
            .round()
            .checked_mul(factor)
            .unwrap_or_else(|| scaled.trunc() * factor)
            .normalize();
    }
    let places = (QUANTITY_SIGNIFICANT_DIGITS - integer_digits).min(i64::from(QUANTITY_SCALE));
    q.round_dp(places as u32).normalize()
}

/// Assembles one window. `answers[i]` are the samples of `meters[i]` at this window. A tenant's
/// usage that `version` cannot price (no rate for the meter, or out of the range the ledger
/// prices exactly) is returned as unpriced usage of its key, and the rest of the window as
/// usual: one key never holds back the others.
pub fn assemble(
    window: Window,
    meters: &[Meter],
    answers: &[&[Sample]],
    probe: &[Sample],
    warnings: &[String],
    version: &PriceBookVersion,
    ctx: &Context<'_>,
) -> Result<CollectedWindow, Error> {
    let mut problems: Vec<String> = warnings
        .iter()
        .map(|w| format!("prometheus warning: {w}"))
        .collect();
    let mut unreadable = false;
    let mut billed: BTreeMap<(TenantId, usize), Decimal> = BTreeMap::new();
    let mut unallocated: BTreeMap<(String, UnallocatedReason, usize), Decimal> = BTreeMap::new();

    for (m, samples) in answers.iter().enumerate() {
        for sample in samples.iter() {
            let quantity = match parse_quantity(&sample.value) {
                Ok(q) => q,
                Err(e) => {
                    unreadable = true;
                    problems.push(format!("{}: {e}", meters[m].name));
                    continue;
                }
            };
            let namespace = sample
                .labels
                .get("namespace")
                .map(String::as_str)
                .unwrap_or("");
            let label = sample
                .labels
                .get(ctx.tenant_label)
                .map(String::as_str)
                .unwrap_or("");
            // The known set's own id: every entry of the tenant shares its text.
            let tenant = ctx.known_tenants.get(label).cloned();
            let sum = match tenant {
                Some(tenant) => billed.entry((tenant, m)).or_default(),
                None if label.is_empty() => unallocated
                    .entry((namespace.to_owned(), UnallocatedReason::NoTenantLabel, m))
                    .or_default(),
                None => unallocated
                    .entry((label.to_owned(), UnallocatedReason::UnknownTenant, m))
                    .or_default(),
            };
            // Values far beyond any usage (see `ledger::entry::MAX_QUANTITY`) are priced as
            // out of range; a sum beyond what a decimal holds cannot even be kept.
            match sum.checked_add(quantity) {
                Some(total) => *sum = total,
                None => {
                    unreadable = true;
                    problems.push(format!(
                        "{}: the values of namespace {namespace:?} add up beyond any quantity",
                        meters[m].name
                    ));
                }
            }
        }
    }

    let mut entries = Vec::with_capacity(billed.len());
    let mut unpriced = Vec::new();
    for ((tenant, m), quantity) in billed {
        if quantity.is_zero() {
            continue;
        }
        let meter = &meters[m];
        let key = EntryKey {
            tenant,
            meter: meter.name.clone(),
            window,
        };
        match price_key(key, quantity, meter, version) {
            Ok(entry) => entries.push(entry),
            Err(usage) => unpriced.push(*usage),
        }
    }
    let unallocated = unallocated
        .into_iter()
        .filter(|(_, q)| !q.is_zero())
        .map(|((name, reason, m), quantity)| UnallocatedUsage {
            namespace_or_label: name,
            reason,
            meter: meters[m].name.clone(),
            quantity,
            unit: meters[m].unit.clone(),
            price_version: version.id,
            price_unit: meters[m].price_unit.clone(),
            units_per_price_unit: meters[m].units_per_price_unit,
        })
        .collect();

    let (complete, incomplete_tenants) = completeness(probe, ctx, &mut problems);
    Ok(CollectedWindow {
        window,
        entries,
        unallocated,
        unpriced,
        complete: complete && warnings.is_empty() && !unreadable,
        incomplete_tenants,
        problems,
    })
}

/// Prices `quantity` of `key`, measured by `meter`, with `version`: its entry, or the usage as
/// unpriced with why.
pub fn price_key(
    key: EntryKey,
    quantity: Decimal,
    meter: &Meter,
    version: &PriceBookVersion,
) -> Result<NewEntry, Box<UnpricedUsage>> {
    price_recorded(
        key,
        quantity,
        meter.unit.clone(),
        meter.price_unit.clone(),
        meter.units_per_price_unit,
        Some(version),
    )
}

/// Prices usage of `key` as recorded (its unit, price unit and units per price unit) with
/// `version`, the version in force at its window's start (`None`: there is none).
pub fn price_recorded(
    key: EntryKey,
    quantity: Decimal,
    unit: UnitName,
    price_unit: UnitName,
    units_per_price_unit: Decimal,
    version: Option<&PriceBookVersion>,
) -> Result<NewEntry, Box<UnpricedUsage>> {
    let failure = match version {
        None => PricingFailure::NoVersion,
        Some(version) => {
            match version.pricing(&key.meter, price_unit.clone(), units_per_price_unit) {
                None => PricingFailure::NoRate {
                    version: version.id,
                },
                Some(pricing) => {
                    match NewEntry::new(key.clone(), quantity, unit.clone(), pricing) {
                        Ok(entry) => return Ok(entry),
                        Err(e) => PricingFailure::OutOfRange {
                            version: version.id,
                            message: e.message,
                        },
                    }
                }
            }
        }
    };
    Err(Box::new(UnpricedUsage {
        key,
        quantity,
        unit,
        price_unit,
        units_per_price_unit,
        failure,
        correction_reason: None,
    }))
}

/// Prices recorded unpriced usage with the version now in force at each window's start (the
/// latest of `versions` valid by then): the entries of what can be priced now, each with the
/// reason of the correction it makes if a recollection measured it, and the rest with its new
/// failure. Pure.
#[allow(clippy::type_complexity)]
pub fn reprice(
    pending: &[UnpricedUsage],
    versions: &[PriceBookVersion],
) -> (Vec<(NewEntry, Option<String>)>, Vec<UnpricedUsage>) {
    let mut priced = Vec::new();
    let mut failing = Vec::new();
    for usage in pending {
        let version = crate::collect::version_at(versions, usage.key.window.start());
        match price_recorded(
            usage.key.clone(),
            usage.quantity,
            usage.unit.clone(),
            usage.price_unit.clone(),
            usage.units_per_price_unit,
            version,
        ) {
            Ok(entry) => priced.push((entry, usage.correction_reason.clone())),
            Err(still) => failing.push(UnpricedUsage {
                correction_reason: usage.correction_reason.clone(),
                ..*still
            }),
        }
    }
    (priced, failing)
}

/// Reads the probe: every scrape target up for the whole window with no gap beyond the jitter
/// tolerance, and every expected tenant's namespace label series present.
fn completeness(
    probe: &[Sample],
    ctx: &Context<'_>,
    problems: &mut Vec<String>,
) -> (bool, Vec<TenantId>) {
    let mut complete = true;
    let mut targets = 0;
    let mut present = BTreeSet::new();
    for sample in probe {
        let target =
            || Target::of(&sample.labels).map_or_else(|| "?/?".to_owned(), |t| t.to_string());
        match sample.labels.get(PROBE_LABEL).map(String::as_str) {
            Some("samples") => {
                targets += 1;
                let job = sample.labels.get("job").map(String::as_str);
                if ctx
                    .interval_mismatches
                    .iter()
                    .any(|m| Some(m.job.as_str()) == job)
                {
                    continue;
                }
                let count = parse_quantity(&sample.value).unwrap_or_default();
                // Jitter moves one sample across a window edge; more missing is a gap.
                if count < Decimal::from(ctx.expected_samples - 1) {
                    complete = false;
                    problems.push(format!(
                        "scrape gap: {} has {count} of {} samples",
                        target(),
                        ctx.expected_samples
                    ));
                }
            }
            Some("min_up") if parse_quantity(&sample.value).unwrap_or_default() < Decimal::ONE => {
                complete = false;
                problems.push(format!("scrape target down: {}", target()));
            }
            Some("tenant") => {
                if let Some(t) = sample
                    .labels
                    .get(ctx.tenant_label)
                    .and_then(|l| TenantId::parse(l).ok())
                {
                    present.insert(t);
                }
            }
            _ => {}
        }
    }
    for mismatch in ctx.interval_mismatches {
        complete = false;
        problems.push(mismatch.problem());
    }
    if targets == 0 {
        complete = false;
        problems.push("no scrape targets seen (up series missing)".to_owned());
    }
    let incomplete: Vec<TenantId> = ctx.expected_tenants.difference(&present).cloned().collect();
    if !incomplete.is_empty() {
        problems.push(format!(
            "no namespace labelled for {} tenant(s), e.g. {}",
            incomplete.len(),
            incomplete[0]
        ));
    }
    (complete, incomplete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};
    use ledger::currency::Currency;
    use ledger::entry::UnitName;
    use ledger::price_book::MeterName;

    fn sample(labels: &[(&str, &str)], value: &str) -> Sample {
        Sample {
            labels: std::sync::Arc::new(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            value: value.to_owned(),
        }
    }

    fn meter(name: &str) -> Meter {
        Meter {
            name: MeterName::parse("m", name).unwrap(),
            unit: UnitName::parse("u", "core_seconds").unwrap(),
            price_unit: UnitName::parse("u", "core_hour").unwrap(),
            units_per_price_unit: Decimal::from(3600),
            query: crate::promql::QueryTemplate::parse("q", "x").unwrap(),
        }
    }

    fn version() -> PriceBookVersion {
        PriceBookVersion {
            id: 7,
            valid_from: Utc.timestamp_opt(0, 0).unwrap(),
            currency: Currency::parse("c", "EUR").unwrap(),
            rates: [(MeterName::parse("m", "cpu").unwrap(), Decimal::new(36, 2))].into(),
            created_at: Utc.timestamp_opt(0, 0).unwrap(),
            created_by: "t".into(),
        }
    }

    fn ids(list: &[&str]) -> BTreeSet<TenantId> {
        list.iter().map(|t| TenantId::parse(t).unwrap()).collect()
    }

    fn healthy_probe() -> Vec<Sample> {
        vec![
            sample(
                &[
                    (PROBE_LABEL, "samples"),
                    ("job", "kubelet"),
                    ("instance", "n1"),
                ],
                "20",
            ),
            sample(
                &[
                    (PROBE_LABEL, "min_up"),
                    ("job", "kubelet"),
                    ("instance", "n1"),
                ],
                "1",
            ),
            sample(&[(PROBE_LABEL, "tenant"), ("label_tenant", "acme")], "1"),
            sample(&[(PROBE_LABEL, "tenant"), ("label_tenant", "globex")], "1"),
        ]
    }

    #[test]
    fn usage_is_summed_per_tenant_and_the_rest_is_unallocated() {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex"]);
        let ctx = Context {
            tenant_label: "label_tenant",
            known_tenants: &known,
            expected_tenants: &known,
            expected_samples: 20,
            interval_mismatches: &[],
        };
        let cpu = [
            sample(
                &[("namespace", "acme-web"), ("label_tenant", "acme")],
                "100",
            ),
            sample(
                &[("namespace", "acme-db"), ("label_tenant", "acme")],
                "200.0000004",
            ),
            sample(
                &[("namespace", "globex"), ("label_tenant", "globex")],
                "1.5e+02",
            ),
            sample(&[("namespace", "kube-system")], "40"),
            sample(
                &[("namespace", "ghost-ns"), ("label_tenant", "ghost")],
                "10",
            ),
            sample(
                &[("namespace", "odd"), ("label_tenant", "Not A Tenant\"}")],
                "5",
            ),
            sample(&[("namespace", "idle"), ("label_tenant", "globex")], "0"),
        ];
        let w = assemble(
            window,
            &[meter("cpu")],
            &[&cpu],
            &healthy_probe(),
            &[],
            &version(),
            &ctx,
        )
        .unwrap();
        let got: Vec<(String, String)> = w
            .entries
            .iter()
            .map(|e| (e.key.tenant.to_string(), e.quantity.to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("acme".into(), "300".into()),
                ("globex".into(), "150".into())
            ]
        );
        // 300 core-seconds at 0.36 per core-hour
        assert_eq!(w.entries[0].amount().to_string(), "0.03");
        let un: Vec<(String, UnallocatedReason, String)> = w
            .unallocated
            .iter()
            .map(|u| {
                (
                    u.namespace_or_label.clone(),
                    u.reason,
                    u.quantity.to_string(),
                )
            })
            .collect();
        assert_eq!(
            un,
            [
                (
                    "Not A Tenant\"}".into(),
                    UnallocatedReason::UnknownTenant,
                    "5".into()
                ),
                (
                    "ghost".into(),
                    UnallocatedReason::UnknownTenant,
                    "10".into()
                ),
                (
                    "kube-system".into(),
                    UnallocatedReason::NoTenantLabel,
                    "40".into()
                ),
            ]
        );
        assert!(w.complete, "{:?}", w.problems);
        assert!(w.incomplete_tenants.is_empty());
    }

    #[test]
    fn gaps_down_targets_warnings_and_missing_tenants_are_incomplete() {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex", "initech"]);
        let ctx = Context {
            tenant_label: "label_tenant",
            known_tenants: &known,
            expected_tenants: &known,
            expected_samples: 20,
            interval_mismatches: &[],
        };
        let run = |probe: Vec<Sample>, warnings: &[String]| {
            assemble(
                window,
                &[meter("cpu")],
                &[&[]],
                &probe,
                warnings,
                &version(),
                &ctx,
            )
            .unwrap()
        };
        let w = run(healthy_probe(), &[]);
        assert!(w.complete);
        assert_eq!(
            w.incomplete_tenants,
            vec![TenantId::parse("initech").unwrap()]
        );

        let mut gap = healthy_probe();
        gap[0].value = "17".into();
        assert!(!run(gap, &[]).complete);
        let mut jitter = healthy_probe();
        jitter[0].value = "19".into();
        assert!(
            run(jitter, &[]).complete,
            "one sample across the edge is jitter"
        );
        let mut down = healthy_probe();
        down[1].value = "0".into();
        assert!(!run(down, &[]).complete);
        assert!(!run(vec![], &[]).complete);
        let w = run(healthy_probe(), &["partial response".to_owned()]);
        assert!(!w.complete);
        assert!(w.problems.iter().any(|p| p.contains("partial response")));
        let nan = [sample(
            &[("namespace", "a"), ("label_tenant", "acme")],
            "NaN",
        )];
        let w = assemble(
            window,
            &[meter("cpu")],
            &[&nan],
            &healthy_probe(),
            &[],
            &version(),
            &ctx,
        )
        .unwrap();
        assert!(!w.complete, "a value that cannot be read is missing usage");
    }

    #[test]
    fn a_scrape_interval_mismatch_is_one_problem_not_a_gap_per_target() {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex"]);
        // Two kubelets scraped every 30 s while 15 s are configured.
        let mut probe = healthy_probe();
        probe[0].value = "10".into();
        let mut second = probe[0].clone();
        std::sync::Arc::make_mut(&mut second.labels).insert("instance".into(), "n2".into());
        probe.push(second);
        let at_30s = crate::scrape::ScrapeIntervals::parse(
            "scrape_configs:\n- job_name: kubelet\n  scrape_interval: 30s\n",
        )
        .unwrap();
        let run = |prometheus: Option<&crate::scrape::ScrapeIntervals>| {
            let mismatches = crate::scrape::data_mismatches(&probe, 300, 15, prometheus);
            let ctx = Context {
                tenant_label: "label_tenant",
                known_tenants: &known,
                expected_tenants: &known,
                expected_samples: 20,
                interval_mismatches: &mismatches,
            };
            assemble(
                window,
                &[meter("cpu")],
                &[&[]],
                &probe,
                &[],
                &version(),
                &ctx,
            )
            .unwrap()
        };
        let w = run(Some(&at_30s));
        assert!(!w.complete);
        assert_eq!(
            w.problems,
            ["job kubelet: 10 samples in a 300 s window, expected 20 at scrape_interval_seconds = 15; Prometheus scrapes it every 30s"]
        );
        // Without Prometheus' configuration the counts cannot tell a longer interval from an
        // outage of half the window: a gap on every target.
        let w = run(None);
        assert!(!w.complete);
        assert_eq!(
            w.problems,
            [
                "scrape gap: kubelet/n1 has 10 of 20 samples",
                "scrape gap: kubelet/n2 has 10 of 20 samples"
            ]
        );
    }

    #[test]
    fn a_gap_names_the_metrics_path_of_its_target() {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex"]);
        // The kubelet's cAdvisor endpoint, on the same address as its /metrics.
        let mut probe = healthy_probe();
        let mut cadvisor = probe[0].clone();
        cadvisor.value = "12".into();
        std::sync::Arc::make_mut(&mut cadvisor.labels)
            .insert("metrics_path".into(), "/metrics/cadvisor".into());
        probe.push(cadvisor);
        let ctx = Context {
            tenant_label: "label_tenant",
            known_tenants: &known,
            expected_tenants: &known,
            expected_samples: 20,
            interval_mismatches: &[],
        };
        let w = assemble(
            window,
            &[meter("cpu")],
            &[&[]],
            &probe,
            &[],
            &version(),
            &ctx,
        )
        .unwrap();
        assert_eq!(
            w.problems,
            ["scrape gap: kubelet/n1/metrics/cadvisor has 12 of 20 samples"]
        );
    }

    /// The window, context and samples of the pricing tests: acme uses cpu and gpu, globex cpu,
    /// and an unlabelled namespace cpu.
    fn priced_window(version: &PriceBookVersion) -> CollectedWindow {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex"]);
        let ctx = Context {
            tenant_label: "label_tenant",
            known_tenants: &known,
            expected_tenants: &known,
            expected_samples: 20,
            interval_mismatches: &[],
        };
        let cpu = [
            sample(&[("namespace", "a"), ("label_tenant", "acme")], "300"),
            sample(&[("namespace", "g"), ("label_tenant", "globex")], "0.5"),
            sample(&[("namespace", "kube-system")], "40"),
        ];
        let gpu = [sample(&[("namespace", "a"), ("label_tenant", "acme")], "3")];
        assemble(
            window,
            &[meter("cpu"), meter("gpu")],
            &[&cpu, &gpu],
            &healthy_probe(),
            &[],
            version,
            &ctx,
        )
        .unwrap()
    }

    fn keys(usage: &[UnpricedUsage]) -> Vec<(String, String, &'static str, String)> {
        usage
            .iter()
            .map(|u| {
                (
                    u.key.tenant.to_string(),
                    u.key.meter.to_string(),
                    u.failure.kind(),
                    u.quantity.to_string(),
                )
            })
            .collect()
    }

    #[test]
    fn a_meter_without_a_rate_is_unpriced_for_its_keys_and_the_rest_is_committed() {
        // The version rates cpu only.
        let w = priced_window(&version());
        let entries: Vec<(String, String)> = w
            .entries
            .iter()
            .map(|e| (e.key.tenant.to_string(), e.key.meter.to_string()))
            .collect();
        assert_eq!(
            entries,
            [
                ("acme".into(), "cpu".into()),
                ("globex".into(), "cpu".into())
            ]
        );
        assert_eq!(
            keys(&w.unpriced),
            [("acme".into(), "gpu".into(), "no_rate", "3".into())]
        );
        assert_eq!(w.unpriced[0].failure, PricingFailure::NoRate { version: 7 });
        assert_eq!(w.unallocated.len(), 1);
        assert!(w.complete, "the inputs were complete: {:?}", w.problems);
    }

    #[test]
    fn a_rate_too_large_to_price_with_is_unpriced_per_key() {
        // The version of the issue: a cpu rate of rust_decimal's maximum, from before rates
        // were bounded. 300 core-seconds overflow quantity × rate; 0.5 fit, but give an amount
        // beyond any entry. Neither stops gpu, nor the unallocated usage.
        let mut v = version();
        let cpu = MeterName::parse("m", "cpu").unwrap();
        v.rates.insert(cpu, Decimal::MAX);
        v.rates
            .insert(MeterName::parse("m", "gpu").unwrap(), Decimal::new(12, 1));
        let w = priced_window(&v);
        assert_eq!(
            keys(&w.unpriced),
            [
                ("acme".into(), "cpu".into(), "out_of_range", "300".into()),
                ("globex".into(), "cpu".into(), "out_of_range", "0.5".into()),
            ]
        );
        let priced: Vec<String> = w.entries.iter().map(|e| e.key.meter.to_string()).collect();
        assert_eq!(priced, ["gpu"]);
        assert_eq!(w.unallocated.len(), 1);
        let message = w.unpriced[0].failure.message(&w.unpriced[0].key.meter);
        assert!(message.contains("out of range"), "{message}");
    }

    #[test]
    fn an_absurd_quantity_is_unpriced_and_a_sum_beyond_a_decimal_is_unreadable() {
        let window = Window::new(
            Utc.timestamp_opt(600, 0).unwrap(),
            Utc.timestamp_opt(900, 0).unwrap(),
        )
        .unwrap();
        let known = ids(&["acme", "globex"]);
        let ctx = Context {
            tenant_label: "label_tenant",
            known_tenants: &known,
            expected_tenants: &known,
            expected_samples: 20,
            interval_mismatches: &[],
        };
        let cpu = [
            // 10^21 core-seconds: more than any key measures (ledger::entry::MAX_QUANTITY)
            sample(&[("namespace", "a"), ("label_tenant", "acme")], "1e21"),
            // two values that no decimal can add up
            sample(&[("namespace", "g1"), ("label_tenant", "globex")], "7e28"),
            sample(&[("namespace", "g2"), ("label_tenant", "globex")], "7e28"),
        ];
        let w = assemble(
            window,
            &[meter("cpu")],
            &[&cpu],
            &healthy_probe(),
            &[],
            &version(),
            &ctx,
        )
        .unwrap();
        let unpriced = keys(&w.unpriced);
        assert_eq!(unpriced[0].0, "acme");
        assert_eq!(unpriced[0].2, "out_of_range");
        assert!(
            !w.complete,
            "a value that cannot be added up is missing usage"
        );
        assert!(
            w.problems.iter().any(|p| p.contains("add up beyond")),
            "{:?}",
            w.problems
        );
    }

    #[test]
    fn recorded_usage_is_priced_by_the_version_now_in_force() {
        let mut bad = version();
        bad.id = 8;
        bad.valid_from = Utc.timestamp_opt(300, 0).unwrap();
        bad.rates
            .insert(MeterName::parse("m", "cpu").unwrap(), Decimal::MAX);
        let w = priced_window(&bad);
        let mut pending = w.unpriced.clone();
        pending[0].correction_reason = Some("recollected".into());
        // The bad version still in force: nothing changes but nothing is lost.
        let (priced, failing) = reprice(&pending, &[version(), bad.clone()]);
        assert!(priced.is_empty());
        assert_eq!(keys(&failing), keys(&pending));
        assert_eq!(failing[0].correction_reason.as_deref(), Some("recollected"));
        // Withdrawn: version 7 prices the cpu keys; gpu still has no rate in it.
        let (priced, failing) = reprice(&pending, &[version()]);
        let priced: Vec<(String, String, Option<String>)> = priced
            .iter()
            .map(|(e, reason)| {
                (
                    e.key.tenant.to_string(),
                    e.amount().to_string(),
                    reason.clone(),
                )
            })
            .collect();
        assert_eq!(
            priced,
            [
                // 300 and 0.5 core-seconds at 0.36 per core-hour
                ("acme".into(), "0.03".into(), Some("recollected".into())),
                ("globex".into(), "0.00005".into(), None),
            ]
        );
        assert_eq!(
            keys(&failing),
            [("acme".into(), "gpu".into(), "no_rate", "3".into())]
        );
        // No version at all any more.
        let (priced, failing) = reprice(&pending, &[]);
        assert!(priced.is_empty());
        assert!(failing
            .iter()
            .all(|u| u.failure == PricingFailure::NoVersion));
    }

    #[test]
    fn values_are_parsed_as_finite_non_negative_decimals() {
        assert_eq!(parse_quantity("12.5").unwrap().to_string(), "12.5");
        assert_eq!(parse_quantity("1.2345e+06").unwrap().to_string(), "1234500");
        assert_eq!(
            parse_quantity("299.99999999997").unwrap().to_string(),
            "300"
        );
        // The largest values keep 8 significant digits too, without leaving the decimal range.
        assert_eq!(
            parse_quantity("7.123456789e28").unwrap().to_string(),
            "71234568000000000000000000000"
        );
        assert_eq!(
            parse_quantity("79228162514264337593543950335")
                .unwrap()
                .to_string(),
            "79228162000000000000000000000"
        );
        for bad in ["NaN", "+Inf", "-Inf", "-3", "abc"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
