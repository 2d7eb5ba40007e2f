//! PromQL text: escaping of label values, validated label names, and meter query templates.
//!
//! Nothing from outside reaches a query except through `escape_label_value` (inside a
//! double-quoted matcher) or as a validated `LabelName`.

use std::collections::BTreeMap;
use std::fmt;

use crate::Error;

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelName(String);

impl LabelName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Error> {
        let mut chars = value.chars();
        let valid = matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !value.starts_with("__");
        if valid {
            Ok(LabelName(value.to_owned()))
        } else {
            Err(Error::Config {
                field: field.to_owned(),
                message: format!("{value:?} is not a Prometheus label name"),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LabelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Escapes a label value for a double-quoted PromQL string: backslash, double quote and line
/// breaks are escaped, so the value can never end the string or the matcher.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out
}

/// `name="value"` matchers, comma-separated, escaped; empty for no labels.
pub fn matchers(labels: &BTreeMap<LabelName, String>) -> String {
    labels
        .iter()
        .map(|(name, value)| format!("{name}=\"{}\"", escape_label_value(value)))
        .collect::<Vec<_>>()
        .join(",")
}

/// What a template's placeholders expand to for one query.
#[derive(Debug, Clone)]
pub struct TemplateContext {
    /// The range of one window, as a PromQL duration (`{{window}}`).
    pub window: String,
    /// The window's length in seconds (`{{window_seconds}}`), for `offset` and integrals.
    pub window_seconds: i64,
    /// Samples a series that lived through the whole window has at least
    /// (`{{full_window_samples}}`): one scrape less than the window holds, for jitter.
    pub full_window_samples: i64,
    /// The scrape interval in seconds (`{{interval}}`), for integrals of gauges.
    pub interval_seconds: i64,
    /// The tenant label on `kube_namespace_labels` (`{{tenant_label}}`).
    pub tenant_label: LabelName,
    /// Extra matchers for every selector (`{{selector}}`), already escaped; may be empty.
    pub selector: String,
}

impl TemplateContext {
    /// An edge's samples on one side: two and a half scrape intervals, so that either side of
    /// an edge has at least two samples with jittered scrape timestamps.
    fn edge_ms(&self) -> i64 {
        Self::edge_ms_for(self.interval_seconds)
    }

    /// [`TemplateContext::edge_ms`] at a scrape interval of `interval_seconds`.
    fn edge_ms_for(interval_seconds: i64) -> i64 {
        interval_seconds * 2500
    }

    /// `{{edge_range}}`: one side of a window edge, 1 ms short of two and a half scrape
    /// intervals. At the window's evaluation time (1 ms before its end E) it selects
    /// `[E − 2.5 intervals, E − 1 ms]`, the samples just before the end; with
    /// `{{after_end_offset}}`, `[E, E + 2.5 intervals − 1 ms]`, those just after it.
    fn edge_range(&self) -> String {
        format!("{}ms", self.edge_ms() - 1)
    }

    /// `{{after_end_offset}}`: the offset that puts `{{edge_range}}` right after the window's
    /// end.
    fn after_end_offset(&self) -> String {
        format!("{}ms", -self.edge_ms())
    }

    /// `{{after_start_offset}}`: the offset that puts `{{edge_range}}` right after the
    /// window's start.
    fn after_start_offset(&self) -> String {
        format!("{}ms", self.window_seconds * 1000 - self.edge_ms())
    }

    /// `{{tenant_join}}`: attributes per-namespace usage to the namespace's tenant label, one
    /// label value per namespace (the newest within the window).
    fn tenant_join(&self) -> String {
        let label = &self.tenant_label;
        let selector = if self.selector.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", self.selector)
        };
        format!(
            "* on (namespace) group_left({label}) topk by (namespace) (1, group by (namespace, {label}) (last_over_time(kube_namespace_labels{selector}[{window}])))",
            window = self.window
        )
    }
}

/// A meter's query with placeholders: `{{window}}`, `{{window_seconds}}`,
/// `{{full_window_samples}}`, `{{interval}}`, `{{edge_range}}`, `{{after_end_offset}}`,
/// `{{after_start_offset}}`, `{{tenant_label}}`, `{{selector}}` and `{{tenant_join}}`. The query
/// must return one series per namespace, with labels `namespace` and the tenant label, valued in
/// the meter's unit for the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryTemplate(String);

const PLACEHOLDERS: [&str; 10] = [
    "window",
    "window_seconds",
    "full_window_samples",
    "interval",
    "edge_range",
    "after_end_offset",
    "after_start_offset",
    "tenant_label",
    "selector",
    "tenant_join",
];

impl QueryTemplate {
    pub fn parse(field: &str, text: &str) -> Result<Self, Error> {
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or_else(|| Error::Config {
                field: field.to_owned(),
                message: "unclosed {{ placeholder".to_owned(),
            })?;
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(Error::Config {
                    field: field.to_owned(),
                    message: format!(
                        "unknown placeholder {{{{{name}}}}}; known: {}",
                        PLACEHOLDERS.join(", ")
                    ),
                });
            }
            rest = &after[close + 2..];
        }
        if text.trim().is_empty() {
            return Err(Error::Config {
                field: field.to_owned(),
                message: "the query is empty".to_owned(),
            });
        }
        Ok(QueryTemplate(text.to_owned()))
    }

    /// How far past a window's end the rendered query reads, in ms, for windows of
    /// `window_seconds` and scrape interval `interval_seconds`: evaluated 1 ms before the end
    /// E, a plain selector reads up to E − 1 ms (0 here); `{{after_end_offset}}` puts
    /// `{{edge_range}}` (2.5 intervals less 1 ms) right after E, so up to E + 2.5 intervals −
    /// 1 ms; `{{after_start_offset}}` right after the window's start, past E only when a window
    /// is shorter than 2.5 intervals. Samples that late must be in Prometheus when the window
    /// is collected (`collector.settle_seconds`).
    pub fn reads_after_end_ms(&self, window_seconds: i64, interval_seconds: i64) -> i64 {
        let edge_ms = TemplateContext::edge_ms_for(interval_seconds);
        self.placeholders()
            .map(|name| match name {
                "after_end_offset" => edge_ms - 1,
                "after_start_offset" => edge_ms - 1 - window_seconds * 1000,
                _ => 0,
            })
            .fold(0, i64::max)
    }

    /// The names of the placeholders in the template, in order (validated in `parse`).
    fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.0
            .split("{{")
            .skip(1)
            .filter_map(|after| after.split_once("}}").map(|(name, _)| name))
    }

    /// Replaces every placeholder in one pass, so text a placeholder expands to (such as an
    /// escaped label value containing "{{interval}}") is never expanded again.
    pub fn render(&self, ctx: &TemplateContext) -> String {
        let selector = if ctx.selector.is_empty() {
            String::new()
        } else {
            format!(",{}", ctx.selector)
        };
        let mut out = String::with_capacity(self.0.len() * 2);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find("{{") {
            out.push_str(&rest[..open]);
            let after = &rest[open + 2..];
            let close = after.find("}}").expect("validated in parse");
            match &after[..close] {
                "tenant_join" => out.push_str(&ctx.tenant_join()),
                "window" => out.push_str(&ctx.window),
                "window_seconds" => out.push_str(&ctx.window_seconds.to_string()),
                "full_window_samples" => out.push_str(&ctx.full_window_samples.to_string()),
                "interval" => out.push_str(&ctx.interval_seconds.to_string()),
                "edge_range" => out.push_str(&ctx.edge_range()),
                "after_end_offset" => out.push_str(&ctx.after_end_offset()),
                "after_start_offset" => out.push_str(&ctx.after_start_offset()),
                "tenant_label" => out.push_str(ctx.tenant_label.as_str()),
                "selector" => out.push_str(&selector),
                other => unreachable!("unknown placeholder {other} passed parse"),
            }
            rest = &after[close + 2..];
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_values_inside_the_string() {
        assert_eq!(escape_label_value(r#"a"b"#), r#"a\"b"#);
        assert_eq!(escape_label_value(r"a\b"), r"a\\b");
        assert_eq!(escape_label_value("a\nb"), r"a\nb");
        assert_eq!(escape_label_value("a}b"), "a}b");
        assert_eq!(escape_label_value(r#"\"}"#), r#"\\\"}"#);
    }

    #[test]
    fn label_names_are_validated() {
        assert!(LabelName::parse("f", "label_tenant").is_ok());
        assert!(LabelName::parse("f", "_x1").is_ok());
        for bad in ["", "1a", "a-b", "a\"b", "__name__", "a}"] {
            assert!(LabelName::parse("f", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_reject_unknown_placeholders() {
        assert!(QueryTemplate::parse("q", "sum(x[{{window}}])").is_ok());
        assert!(QueryTemplate::parse("q", "sum(x[{{windw}}])").is_err());
        assert!(QueryTemplate::parse("q", "sum(x[{{window])").is_err());
        assert!(QueryTemplate::parse("q", "sum(x[{{ window }}])").is_err());
        assert!(QueryTemplate::parse("q", "  ").is_err());
    }

    #[test]
    fn templates_render_with_escaped_selectors() {
        let mut labels = BTreeMap::new();
        labels.insert(
            LabelName::parse("f", "cluster").unwrap(),
            "a\"b\\c\nd}".to_owned(),
        );
        labels.insert(
            LabelName::parse("f", "zone").unwrap(),
            "{{interval}}".to_owned(),
        );
        let ctx = TemplateContext {
            window: "299999ms".into(),
            window_seconds: 300,
            full_window_samples: 19,
            interval_seconds: 15,
            tenant_label: LabelName::parse("f", "label_tenant").unwrap(),
            selector: matchers(&labels),
        };
        let q = QueryTemplate::parse("q", "sum by (namespace, {{tenant_label}}) (x{a=\"1\"{{selector}}}[{{window}}] * {{interval}} {{tenant_join}})").unwrap();
        let rendered = q.render(&ctx);
        assert!(
            rendered
                .contains(r#"x{a="1",cluster="a\"b\\c\nd}",zone="{{interval}}"}[299999ms] * 15"#),
            "{rendered}"
        );
        assert!(
            rendered.contains(
                r#"kube_namespace_labels{cluster="a\"b\\c\nd}",zone="{{interval}}"}[299999ms]"#
            ),
            "{rendered}"
        );
        assert!(rendered.contains("group_left(label_tenant)"));
    }

    #[test]
    fn a_template_reads_past_the_window_end_only_through_the_edge_placeholders() {
        let plain =
            QueryTemplate::parse("q", "sum(x[{{window}}] offset {{window_seconds}}s)").unwrap();
        assert_eq!(plain.reads_after_end_ms(300, 30), 0);
        let after_end = QueryTemplate::parse(
            "q",
            "predict_linear(c[{{edge_range}}] offset {{after_end_offset}}, 0) - c offset {{window_seconds}}s",
        )
        .unwrap();
        // [E, E + 2.5 intervals − 1 ms]
        assert_eq!(after_end.reads_after_end_ms(300, 30), 74_999);
        assert_eq!(after_end.reads_after_end_ms(300, 60), 149_999);
        assert_eq!(after_end.reads_after_end_ms(300, 15), 37_499);
        // After the start: within the window unless it is shorter than 2.5 intervals.
        let after_start =
            QueryTemplate::parse("q", "c[{{edge_range}}] offset {{after_start_offset}}").unwrap();
        assert_eq!(after_start.reads_after_end_ms(300, 30), 0);
        assert_eq!(after_start.reads_after_end_ms(60, 30), 14_999);
        // The built-in cpu meter reads after the end; the gauges do not.
        for meter in crate::config::default_meters() {
            let q = QueryTemplate::parse(&meter.name, &meter.query).unwrap();
            let expected = if meter.name == "cpu" { 74_999 } else { 0 };
            assert_eq!(q.reads_after_end_ms(300, 30), expected, "{}", meter.name);
        }
    }

    #[test]
    fn edge_placeholders_put_ranges_on_either_side_of_each_window_edge() {
        let ctx = TemplateContext {
            window: "299999ms".into(),
            window_seconds: 300,
            full_window_samples: 9,
            interval_seconds: 30,
            tenant_label: LabelName::parse("f", "label_tenant").unwrap(),
            selector: String::new(),
        };
        let q = QueryTemplate::parse(
            "q",
            "c[{{edge_range}}] + c[{{edge_range}}] offset {{after_end_offset}} - c[{{edge_range}}] offset {{window_seconds}}s - c[{{edge_range}}] offset {{after_start_offset}}",
        )
        .unwrap();
        // Evaluated 1 ms before the window's end E: [E − 75 s, E − 1 ms], [E, E + 75 s − 1 ms],
        // and the same around its start S = E − 300 s.
        assert_eq!(
            q.render(&ctx),
            "c[74999ms] + c[74999ms] offset -75000ms - c[74999ms] offset 300s - c[74999ms] offset 225000ms"
        );
    }
}
