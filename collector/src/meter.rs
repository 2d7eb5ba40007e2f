//! Meters: a name, units, and the PromQL template that measures it per namespace and window.

use rust_decimal::Decimal;

use ledger::entry::UnitName;
use ledger::price_book::MeterName;

use crate::assemble::PROBE_LABEL;
use crate::promql::{escape_label_value, QueryTemplate, TemplateContext};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meter {
    pub name: MeterName,
    /// The unit of the quantity the query returns, e.g. `core_seconds`.
    pub unit: UnitName,
    /// The unit rates are quoted in, e.g. `core_hour`.
    pub price_unit: UnitName,
    /// How many `unit` make one `price_unit` (3600 core-seconds per core-hour).
    pub units_per_price_unit: Decimal,
    pub query: QueryTemplate,
}

/// The completeness probe, one query per window whatever the tenant count: per scrape target
/// its sample count and minimum `up`, and the namespaces' tenant labels, each facet marked by
/// the `budgetd_probe` label.
pub fn probe_query(ctx: &TemplateContext, scrape_jobs: &[String]) -> String {
    let jobs = scrape_jobs
        .iter()
        .map(|j| regex_escape(j))
        .collect::<Vec<_>>()
        .join("|");
    let up = format!(
        "up{{job=~\"{}\"{}}}",
        escape_label_value(&jobs),
        if ctx.selector.is_empty() {
            String::new()
        } else {
            format!(",{}", ctx.selector)
        }
    );
    let w = &ctx.window;
    let label = ctx.tenant_label.as_str();
    let namespaces = if ctx.selector.is_empty() {
        "kube_namespace_labels".to_owned()
    } else {
        format!("kube_namespace_labels{{{}}}", ctx.selector)
    };
    format!(
        "label_replace(count_over_time({up}[{w}]), \"{PROBE_LABEL}\", \"samples\", \"\", \"\") \
         or label_replace(min_over_time({up}[{w}]), \"{PROBE_LABEL}\", \"min_up\", \"\", \"\") \
         or label_replace(group by ({label}) (last_over_time({namespaces}[{w}])), \"{PROBE_LABEL}\", \"tenant\", \"\", \"\")"
    )
}

/// Escapes regular-expression metacharacters so a job name matches only itself.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::promql::LabelName;

    #[test]
    fn the_probe_matches_jobs_literally() {
        let ctx = TemplateContext {
            window: "299999ms".into(),
            window_seconds: 300,
            full_window_samples: 19,
            interval_seconds: 15,
            tenant_label: LabelName::parse("f", "label_tenant").unwrap(),
            selector: String::new(),
        };
        let q = probe_query(
            &ctx,
            &["kubelet".into(), "kube-state-metrics".into(), "a.b".into()],
        );
        assert!(
            q.contains(r#"up{job=~"kubelet|kube-state-metrics|a\\.b"}[299999ms]"#),
            "{q}"
        );
        assert!(q.contains("group by (label_tenant)"));
    }
}
