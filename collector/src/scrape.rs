//! The scrape interval gauges are integrated with (`collector.scrape_interval_seconds`), checked
//! against Prometheus' own configuration and against the data. Pure: the source reads the
//! configuration, the completeness probe counts the samples, and this module compares.
//!
//! Why it matters: a gauge that lived through a window is billed as its average × the window,
//! but only if it has `{{full_window_samples}}` samples; a series with fewer is billed as its
//! samples × the interval. With 15 s configured and targets scraped every 30 s, every series has
//! half the samples expected, so every gauge is billed as samples × 15 s: half its usage.

use std::collections::BTreeMap;
use std::fmt;

use rust_decimal::prelude::ToPrimitive;

use crate::assemble::{parse_quantity, PROBE_LABEL};
use crate::source::Sample;

/// A scrape interval as Prometheus writes it (`30s`, `1m30s`, `500ms`), in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interval(u64);

impl Interval {
    pub fn from_seconds(seconds: i64) -> Self {
        Interval(seconds.unsigned_abs() * 1000)
    }

    pub fn millis(self) -> u64 {
        self.0
    }

    /// Parses a Prometheus duration: `[0-9]+` units `y w d h m s ms`, largest first, each at
    /// most once (`1h30m`, `15s`, `500ms`).
    pub fn parse(text: &str) -> Result<Self, String> {
        const UNITS: [(&str, u64); 7] = [
            ("y", 365 * 86_400_000),
            ("w", 7 * 86_400_000),
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
            ("ms", 1),
        ];
        let bad = || format!("{text:?} is not a Prometheus duration");
        if text == "0" {
            return Ok(Interval(0));
        }
        if text.is_empty() {
            return Err(bad());
        }
        let mut rest = text;
        let mut next_unit = 0;
        let mut total: u64 = 0;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(bad());
            }
            let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = if rest.starts_with("ms") {
                2
            } else {
                rest.chars().next().map_or(0, char::len_utf8)
            };
            let unit = &rest[..unit_len];
            let position = UNITS[next_unit..]
                .iter()
                .position(|(u, _)| *u == unit)
                .ok_or_else(bad)?;
            let factor = UNITS[next_unit + position].1;
            next_unit += position + 1;
            total = value
                .checked_mul(factor)
                .and_then(|ms| total.checked_add(ms))
                .ok_or_else(bad)?;
            rest = &rest[unit_len..];
        }
        Ok(Interval(total))
    }
}

impl fmt::Display for Interval {
    /// As Prometheus writes it: `30s`, `1m30s`, `2h`, `1500ms`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms == 0 {
            return f.write_str("0s");
        }
        if ms % 1000 != 0 {
            return write!(f, "{ms}ms");
        }
        let s = ms / 1000;
        let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if s > 0 {
            write!(f, "{s}s")?;
        }
        Ok(())
    }
}

/// What Prometheus' configuration (`GET /api/v1/status/config`) says about scrape intervals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrapeIntervals {
    /// `global.scrape_interval`, the default of every scrape config.
    pub global: Option<Interval>,
    /// Per `job_name`, its own `scrape_interval` (Prometheus writes it out for every job).
    pub jobs: BTreeMap<String, Option<Interval>>,
}

/// Where Prometheus' interval for a job comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntervalOrigin {
    /// A scrape config of that `job_name`.
    Job,
    /// No scrape config has that `job_name` (the `job` label may be set by relabelling, as the
    /// Prometheus Operator does): the global default.
    Global,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrometheusInterval {
    pub interval: Interval,
    pub origin: IntervalOrigin,
}

impl ScrapeIntervals {
    /// Reads the two things needed from the YAML Prometheus serves (its own marshalling of the
    /// loaded configuration): `global.scrape_interval`, and `job_name` and `scrape_interval` of
    /// each entry of `scrape_configs`. Everything else is skipped by indentation; a value that
    /// is needed but cannot be read is an error.
    pub fn parse(yaml: &str) -> Result<Self, String> {
        #[derive(PartialEq)]
        enum Section {
            Global,
            ScrapeConfigs,
            Other,
        }
        let mut out = ScrapeIntervals::default();
        let mut section = Section::Other;
        // The indentation of the fields of the current block (global) or list item.
        let mut field_indent: Option<usize> = None;
        let mut item_indent: Option<usize> = None;
        let mut job: Option<(Option<String>, Option<Interval>)> = None;
        let finish = |job: &mut Option<(Option<String>, Option<Interval>)>,
                      out: &mut ScrapeIntervals,
                      line: usize|
         -> Result<(), String> {
            match job.take() {
                Some((Some(name), interval)) => {
                    out.jobs.insert(name, interval);
                    Ok(())
                }
                Some((None, _)) => Err(format!("line {line}: a scrape config without job_name")),
                None => Ok(()),
            }
        };
        for (n, line) in yaml.lines().enumerate() {
            let number = n + 1;
            let text = line.trim_start();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let indent = line.len() - text.len();
            let is_item = text == "-" || text.starts_with("- ");
            if indent == 0 && !is_item {
                finish(&mut job, &mut out, number)?;
                section = match key_value(text).0 {
                    "global" => Section::Global,
                    "scrape_configs" => Section::ScrapeConfigs,
                    _ => Section::Other,
                };
                field_indent = None;
                item_indent = None;
                continue;
            }
            match section {
                Section::Other => {}
                Section::Global => {
                    let fields = *field_indent.get_or_insert(indent);
                    if indent == fields {
                        if let ("scrape_interval", value) = key_value(text) {
                            let value =
                                unquote(value).map_err(|e| format!("line {number}: {e}"))?;
                            out.global = Some(
                                Interval::parse(&value)
                                    .map_err(|e| format!("line {number}: {e}"))?,
                            );
                        }
                    }
                }
                Section::ScrapeConfigs => {
                    let items = *item_indent.get_or_insert(indent);
                    let field = if is_item && indent == items {
                        finish(&mut job, &mut out, number)?;
                        job = Some((None, None));
                        field_indent = Some(indent + 2);
                        text.strip_prefix('-').unwrap_or(text).trim_start()
                    } else if Some(indent) == field_indent {
                        text
                    } else {
                        continue;
                    };
                    let Some((name, interval)) = job.as_mut() else {
                        return Err(format!("line {number}: a field outside a scrape config"));
                    };
                    match key_value(field) {
                        ("job_name", value) => {
                            *name = Some(unquote(value).map_err(|e| format!("line {number}: {e}"))?)
                        }
                        ("scrape_interval", value) => {
                            let value =
                                unquote(value).map_err(|e| format!("line {number}: {e}"))?;
                            *interval = Some(
                                Interval::parse(&value)
                                    .map_err(|e| format!("line {number}: {e}"))?,
                            );
                        }
                        _ => {}
                    }
                }
            }
        }
        finish(&mut job, &mut out, yaml.lines().count())?;
        Ok(out)
    }

    /// Prometheus' interval for the scrape job `job`, where its configuration gives one.
    pub fn for_job(&self, job: &str) -> Option<PrometheusInterval> {
        match self.jobs.get(job) {
            Some(Some(interval)) => Some(PrometheusInterval {
                interval: *interval,
                origin: IntervalOrigin::Job,
            }),
            // A job without its own interval inherits the global one: that is its interval.
            Some(None) => self.global.map(|interval| PrometheusInterval {
                interval,
                origin: IntervalOrigin::Job,
            }),
            None => self.global.map(|interval| PrometheusInterval {
                interval,
                origin: IntervalOrigin::Global,
            }),
        }
    }
}

/// `key: value` → (key, value); a key alone (`global:`) has an empty value.
fn key_value(text: &str) -> (&str, &str) {
    match text.split_once(':') {
        Some((key, value)) => (key.trim(), value.trim()),
        None => (text.trim(), ""),
    }
}

/// A YAML scalar as Go's YAML encoder writes it: plain, 'single-quoted' or "double-quoted".
fn unquote(value: &str) -> Result<String, String> {
    if let Some(inner) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return Ok(inner.replace("''", "'"));
    }
    if let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('\\') => out.push('\\'),
                Some('"') => out.push('"'),
                Some('/') => out.push('/'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                other => {
                    return Err(format!(
                        "the escape \\{} in {value} is not supported",
                        other.map(String::from).unwrap_or_default()
                    ))
                }
            }
        }
        return Ok(out);
    }
    Ok(value.to_owned())
}

/// One configured scrape job compared with Prometheus' configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigCheck {
    pub job: String,
    /// `collector.scrape_interval_seconds`.
    pub configured: Interval,
    /// What Prometheus' configuration gives for the job, if anything.
    pub prometheus: Option<PrometheusInterval>,
}

impl ConfigCheck {
    /// Whether the job's own scrape config gives another interval than the collector's: the
    /// collector integrates the job's gauges with the wrong interval.
    pub fn is_mismatch(&self) -> bool {
        self.prometheus
            .is_some_and(|p| p.origin == IntervalOrigin::Job && p.interval != self.configured)
    }

    /// Whether only Prometheus' global default differs (no scrape config has the job's name):
    /// a hint, not a mismatch. Under the Prometheus Operator no job name is a `job` label, and
    /// a ServiceMonitor may set its own interval, so the global one says little about the job.
    pub fn is_hint(&self) -> bool {
        self.prometheus
            .is_some_and(|p| p.origin == IntervalOrigin::Global && p.interval != self.configured)
    }
}

impl fmt::Display for ConfigCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let configured = self.configured.millis() / 1000;
        let job = &self.job;
        match self.prometheus {
            None => write!(
                f,
                "job {job}: Prometheus' configuration has no scrape config of that name and no global scrape_interval"
            ),
            Some(p) => {
                match p.origin {
                    IntervalOrigin::Job => {
                        write!(f, "job {job}: Prometheus scrapes it every {}", p.interval)?
                    }
                    IntervalOrigin::Global => write!(
                        f,
                        "job {job}: no scrape config has that job_name (the job label may come from relabelling); Prometheus' global scrape_interval is {}",
                        p.interval
                    )?,
                }
                if self.is_mismatch() {
                    write!(
                        f,
                        ", but collector.scrape_interval_seconds = {configured}: gauges are integrated with the wrong interval and its windows are marked incomplete"
                    )
                } else if self.is_hint() {
                    write!(
                        f,
                        " and collector.scrape_interval_seconds = {configured}; only a hint, since its targets may have an interval of their own: each window's samples show whether they fit"
                    )
                } else {
                    write!(f, ", as collector.scrape_interval_seconds says")
                }
            }
        }
    }
}

/// Compares `collector.scrape_interval_seconds` with Prometheus' configuration for each job.
pub fn check_config(
    interval_seconds: i64,
    scrape_jobs: &[String],
    prometheus: &ScrapeIntervals,
) -> Vec<ConfigCheck> {
    scrape_jobs
        .iter()
        .map(|job| ConfigCheck {
            job: job.clone(),
            configured: Interval::from_seconds(interval_seconds),
            prometheus: prometheus.for_job(job),
        })
        .collect()
}

/// One scrape target of the probe: its job, and the address and path it is scraped at. One
/// `job` label can hold targets scraped at different intervals: the Prometheus Operator puts
/// every endpoint of a ServiceMonitor under it (the kubelet's `/metrics`, `/metrics/cadvisor`
/// and `/metrics/probes`, on the same address, each with its own `interval`), and
/// kube-prometheus-stack tells them apart by a `metrics_path` label. A target whose other
/// labels change inside a window is still this one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target<'a> {
    pub job: &'a str,
    pub instance: Option<&'a str>,
    pub metrics_path: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// The target of one `up` series (`None` without a `job` label).
    pub fn of(labels: &'a BTreeMap<String, String>) -> Option<Self> {
        Some(Target {
            job: labels.get("job")?,
            instance: labels.get("instance").map(String::as_str),
            metrics_path: labels.get("metrics_path").map(String::as_str),
        })
    }
}

impl fmt::Display for Target<'_> {
    /// `job/instance`, then the metrics path where the series has one:
    /// `kubelet/10.0.0.7:10250/metrics/cadvisor`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.job, self.instance.unwrap_or("?"))?;
        match self.metrics_path {
            Some(path) => f.write_str(path),
            None => Ok(()),
        }
    }
}

/// A scrape job whose samples in one window do not fit the configured interval: every one of
/// its targets has more samples than the interval allows, or every one has fewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntervalMismatch {
    pub job: String,
    /// The fewest and the most samples any of the job's targets has in the window.
    pub fewest: i64,
    pub most: i64,
    /// Samples one target has in a window at the configured interval.
    pub expected: i64,
    pub window_seconds: i64,
    pub interval_seconds: i64,
    /// What Prometheus' configuration says, where it could be read.
    pub prometheus: Option<PrometheusInterval>,
}

impl IntervalMismatch {
    /// The window's problem text.
    pub fn problem(&self) -> String {
        let samples = if self.fewest == self.most {
            self.fewest.to_string()
        } else {
            format!("{} to {}", self.fewest, self.most)
        };
        let mut text = format!(
            "job {}: {samples} samples in a {} s window, expected {} at scrape_interval_seconds = {}",
            self.job, self.window_seconds, self.expected, self.interval_seconds
        );
        match self.prometheus {
            Some(PrometheusInterval {
                interval,
                origin: IntervalOrigin::Job,
            }) => text.push_str(&format!("; Prometheus scrapes it every {interval}")),
            Some(PrometheusInterval {
                interval,
                origin: IntervalOrigin::Global,
            }) => text.push_str(&format!(
                "; Prometheus' global scrape_interval is {interval} (no scrape config is named {})",
                self.job
            )),
            None => text.push_str("; Prometheus' own interval for it is not known"),
        }
        text
    }
}

/// Reads the probe's per-target sample counts (`count_over_time(up[window])`) and finds the jobs
/// whose counts do not fit `interval_seconds`. One sample more or less is scrape jitter at a
/// window's edge. A job is a mismatch only when every one of its targets deviates in the same
/// direction, since one job can hold targets scraped at different intervals (see [`Target`]):
/// - more on every target: Prometheus scrapes the job more often than configured (no outage
///   adds samples);
/// - fewer on every target: a longer interval, or scrapes missed by the whole job, which only
///   Prometheus' configuration tells apart. A scrape config of the job's name with another
///   interval makes it a mismatch; Prometheus' global interval (no scrape config of that name)
///   only where every target's count fits it; and where the configuration cannot be read, never:
///   half a window lost by the whole job looks like an interval twice as long.
///
/// What is not a mismatch is left to the completeness check, which reports every target short
/// of samples as a scrape gap.
pub fn data_mismatches(
    probe: &[Sample],
    window_seconds: i64,
    interval_seconds: i64,
    prometheus: Option<&ScrapeIntervals>,
) -> Vec<IntervalMismatch> {
    let expected = window_seconds / interval_seconds;
    let mut per_job: BTreeMap<&str, BTreeMap<Target<'_>, i64>> = BTreeMap::new();
    for sample in probe {
        if sample.labels.get(PROBE_LABEL).map(String::as_str) != Some("samples") {
            continue;
        }
        let Some(target) = Target::of(&sample.labels) else {
            continue;
        };
        // An unreadable count stays with the per-target check, which reports it as a gap.
        let Some(count) = parse_quantity(&sample.value)
            .ok()
            .filter(|q| q.fract().is_zero())
            .and_then(|q| q.to_i64())
        else {
            continue;
        };
        *per_job
            .entry(target.job)
            .or_default()
            .entry(target)
            .or_default() += count;
    }
    let configured = Interval::from_seconds(interval_seconds);
    per_job
        .into_iter()
        .filter_map(|(job, targets)| {
            let fewest = *targets.values().min()?;
            let most = *targets.values().max()?;
            let known = prometheus.and_then(|p| p.for_job(job));
            let mismatch = if fewest > expected + 1 {
                true
            } else if most < expected - 1 {
                match known {
                    Some(
                        p @ PrometheusInterval {
                            origin: IntervalOrigin::Job,
                            ..
                        },
                    ) => p.interval != configured,
                    Some(
                        p @ PrometheusInterval {
                            origin: IntervalOrigin::Global,
                            ..
                        },
                    ) => {
                        p.interval != configured
                            && targets
                                .values()
                                .all(|&count| fits(count, window_seconds, p.interval))
                    }
                    None => false,
                }
            } else {
                false
            };
            mismatch.then(|| IntervalMismatch {
                job: job.to_owned(),
                fewest,
                most,
                expected,
                window_seconds,
                interval_seconds,
                prometheus: known,
            })
        })
        .collect()
}

/// Whether `count` samples in a window of `window_seconds` fit scrapes every `interval`, give or
/// take one sample of jitter at each edge.
fn fits(count: i64, window_seconds: i64, interval: Interval) -> bool {
    let window_ms = window_seconds.unsigned_abs() * 1000;
    let Some(count) = u64::try_from(count).ok() else {
        return false;
    };
    match interval.millis() {
        0 => false,
        ms => (window_ms / ms).saturating_sub(1) <= count && count <= window_ms.div_ceil(ms) + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Prometheus 2.42 serves for a config with a global interval, a job with its own, a
    /// job inheriting it, and a quoted job name with nested lists.
    const SERVED: &str = "global:
  scrape_interval: 30s
  scrape_timeout: 10s
  evaluation_interval: 1m
scrape_configs:
- job_name: kubelet
  honor_timestamps: true
  scrape_interval: 1m30s
  scrape_timeout: 10s
  metrics_path: /metrics
  scheme: http
- job_name: kube-state-metrics
  honor_timestamps: true
  scrape_interval: 30s
  metrics_path: /metrics
- job_name: 'weird: name'
  scrape_interval: 500ms
  scrape_timeout: 400ms
  relabel_configs:
  - source_labels: [__address__]
    separator: ;
    regex: (.*)
    target_label: job
    replacement: x
    action: replace
  static_configs:
  - targets: []
";

    #[test]
    fn prometheus_durations_are_read_and_written_as_prometheus_does() {
        for (text, ms, shown) in [
            ("15s", 15_000, "15s"),
            ("1m30s", 90_000, "1m30s"),
            ("1m", 60_000, "1m"),
            ("2h", 7_200_000, "2h"),
            ("500ms", 500, "500ms"),
            ("1s500ms", 1500, "1500ms"),
            ("1d", 86_400_000, "24h"),
            ("0", 0, "0s"),
        ] {
            let interval = Interval::parse(text).unwrap();
            assert_eq!(interval.millis(), ms, "{text}");
            assert_eq!(interval.to_string(), shown, "{text}");
        }
        for bad in ["", "15", "s", "1x", "30s1m", "1m1m", "-1s", "1.5s", " 1s"] {
            assert!(Interval::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_served_configuration_gives_global_and_per_job_intervals() {
        let parsed = ScrapeIntervals::parse(SERVED).unwrap();
        assert_eq!(parsed.global, Some(Interval::from_seconds(30)));
        assert_eq!(
            parsed.jobs,
            [
                ("kubelet".to_owned(), Some(Interval::from_seconds(90))),
                (
                    "kube-state-metrics".to_owned(),
                    Some(Interval::from_seconds(30))
                ),
                ("weird: name".to_owned(), Some(Interval(500))),
            ]
            .into()
        );
        let job = |name| parsed.for_job(name).unwrap();
        assert_eq!(job("kubelet").origin, IntervalOrigin::Job);
        assert_eq!(
            job("cadvisor"),
            PrometheusInterval {
                interval: Interval::from_seconds(30),
                origin: IntervalOrigin::Global
            }
        );
    }

    #[test]
    fn other_indentation_quoting_and_inherited_intervals_are_read() {
        let yaml = "rule_files:\n- a.yml\nscrape_configs:\n    - job_name: \"a\\\"b\"\n      params:\n        scrape_interval: [1h]\n    - job_name: c\n      scrape_interval: 15s\nglobal:\n    scrape_interval: 1m\n    external_labels:\n        scrape_interval: x\n";
        let parsed = ScrapeIntervals::parse(yaml).unwrap();
        assert_eq!(parsed.global, Some(Interval::from_seconds(60)));
        assert_eq!(
            parsed.jobs,
            [
                ("a\"b".to_owned(), None),
                ("c".to_owned(), Some(Interval::from_seconds(15)))
            ]
            .into()
        );
        assert_eq!(
            parsed.for_job("a\"b"),
            Some(PrometheusInterval {
                interval: Interval::from_seconds(60),
                origin: IntervalOrigin::Job
            }),
            "a job without its own interval has the global one"
        );
        assert_eq!(
            ScrapeIntervals::parse("").unwrap(),
            ScrapeIntervals::default()
        );
        assert_eq!(
            ScrapeIntervals::parse("global:\n").unwrap().for_job("x"),
            None
        );
    }

    #[test]
    fn values_that_cannot_be_read_are_errors() {
        for bad in [
            "global:\n  scrape_interval: soon\n",
            "scrape_configs:\n- job_name: a\n  scrape_interval: 15\n",
            "scrape_configs:\n- scrape_interval: 15s\n",
            "scrape_configs:\n- job_name: \"a\\qb\"\n",
        ] {
            assert!(ScrapeIntervals::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_configuration_check_names_the_interval_and_its_origin() {
        let parsed = ScrapeIntervals::parse(SERVED).unwrap();
        let jobs = [
            "kube-state-metrics".to_owned(),
            "kubelet".to_owned(),
            "cadvisor".to_owned(),
        ];
        let checks = check_config(30, &jobs, &parsed);
        let mismatches: Vec<bool> = checks.iter().map(ConfigCheck::is_mismatch).collect();
        assert_eq!(mismatches, [false, true, false]);
        assert!(checks.iter().all(|c| !c.is_hint()));
        assert_eq!(
            checks[0].to_string(),
            "job kube-state-metrics: Prometheus scrapes it every 30s, as collector.scrape_interval_seconds says"
        );
        assert!(checks[1]
            .to_string()
            .starts_with("job kubelet: Prometheus scrapes it every 1m30s, but collector.scrape_interval_seconds = 30"));
        assert!(checks[2]
            .to_string()
            .contains("global scrape_interval is 30s"));
        let unknown = check_config(30, &jobs, &ScrapeIntervals::default());
        assert!(unknown.iter().all(|c| !c.is_mismatch() && !c.is_hint()));
    }

    /// Under the Prometheus Operator no scrape config is named after a `job` label, so the
    /// global interval is all the configuration gives: a hint, never a mismatch.
    #[test]
    fn a_global_interval_that_differs_is_a_hint_not_a_mismatch() {
        let operator = ScrapeIntervals::parse(
            "global:\n  scrape_interval: 30s\nscrape_configs:\n- job_name: serviceMonitor/monitoring/kubelet/0\n  scrape_interval: 30s\n",
        )
        .unwrap();
        let checks = check_config(15, &["kubelet".to_owned()], &operator);
        let check = &checks[0];
        assert!(!check.is_mismatch());
        assert!(check.is_hint());
        let text = check.to_string();
        assert_eq!(
            text,
            "job kubelet: no scrape config has that job_name (the job label may come from relabelling); Prometheus' global scrape_interval is 30s and collector.scrape_interval_seconds = 15; only a hint, since its targets may have an interval of their own: each window's samples show whether they fit"
        );
        assert!(!text.contains("incomplete"), "{text}");
        let agreeing = &check_config(30, &["kubelet".to_owned()], &operator)[0];
        assert!(!agreeing.is_mismatch() && !agreeing.is_hint());
        assert!(agreeing.to_string().ends_with(
            "Prometheus' global scrape_interval is 30s, as collector.scrape_interval_seconds says"
        ));
    }

    fn counts(per_target: &[(&str, &str, &str)]) -> Vec<Sample> {
        per_target
            .iter()
            .map(|(job, instance, value)| Sample {
                labels: std::sync::Arc::new(
                    [
                        (PROBE_LABEL.to_owned(), "samples".to_owned()),
                        ("job".to_owned(), (*job).to_owned()),
                        ("instance".to_owned(), (*instance).to_owned()),
                    ]
                    .into(),
                ),
                value: (*value).to_owned(),
            })
            .collect()
    }

    /// The probe's counts of one kubelet's endpoints, one job label for them all as under the
    /// Prometheus Operator: (metrics_path, count).
    fn kubelet_endpoints(per_path: &[(&str, &str)]) -> Vec<Sample> {
        per_path
            .iter()
            .map(|(path, value)| {
                let mut sample = counts(&[("kubelet", "10.0.0.7:10250", value)]).remove(0);
                std::sync::Arc::make_mut(&mut sample.labels)
                    .insert("metrics_path".to_owned(), (*path).to_owned());
                sample
            })
            .collect()
    }

    fn jobs(m: Vec<IntervalMismatch>) -> Vec<String> {
        m.into_iter().map(|m| m.job).collect()
    }

    #[test]
    fn sample_counts_that_do_not_fit_the_interval_are_mismatches() {
        // 300 s windows at 15 s: 20 samples, 19 or 21 with jitter at an edge.
        let fits = counts(&[
            ("kubelet", "n1", "20"),
            ("kubelet", "n2", "19"),
            ("ksm", "k", "21"),
        ]);
        assert!(data_mismatches(&fits, 300, 15, None).is_empty());

        // Scraped every 30 s: every target has half.
        let halved = counts(&[
            ("kubelet", "n1", "10"),
            ("kubelet", "n2", "11"),
            ("ksm", "k", "20"),
        ]);
        let at_30s = ScrapeIntervals::parse(
            "scrape_configs:\n- job_name: kubelet\n  scrape_interval: 30s\n",
        )
        .unwrap();
        let found = data_mismatches(&halved, 300, 15, Some(&at_30s));
        assert_eq!(jobs(found.clone()), ["kubelet"]);
        assert_eq!(
            found[0].problem(),
            "job kubelet: 10 to 11 samples in a 300 s window, expected 20 at scrape_interval_seconds = 15; Prometheus scrapes it every 30s"
        );

        // Scraped more often than configured: a mismatch, whatever Prometheus' configuration.
        let doubled = counts(&[("kubelet", "n1", "20")]);
        let found = data_mismatches(&doubled, 300, 30, None);
        assert_eq!(jobs(found.clone()), ["kubelet"]);
        assert_eq!(
            found[0].problem(),
            "job kubelet: 20 samples in a 300 s window, expected 10 at scrape_interval_seconds = 30; Prometheus' own interval for it is not known"
        );

        // A few samples missing on every target: a gap, unless Prometheus says otherwise.
        let short = counts(&[("kubelet", "n1", "16"), ("kubelet", "n2", "15")]);
        assert!(data_mismatches(&short, 300, 15, None).is_empty());
        let at_20s = ScrapeIntervals::parse(
            "scrape_configs:\n- job_name: kubelet\n  scrape_interval: 20s\n",
        )
        .unwrap();
        let found = data_mismatches(&short, 300, 15, Some(&at_20s));
        assert_eq!(
            found[0].problem(),
            "job kubelet: 15 to 16 samples in a 300 s window, expected 20 at scrape_interval_seconds = 15; Prometheus scrapes it every 20s"
        );
        // Half missing while Prometheus is configured as the collector is: a gap (an outage).
        let at_15s = ScrapeIntervals::parse("global:\n  scrape_interval: 15s\n").unwrap();
        assert!(data_mismatches(&halved, 300, 15, Some(&at_15s)).is_empty());
        // Some targets short, one complete: a gap on those targets, not an interval.
        let gap = counts(&[("kubelet", "n1", "10"), ("kubelet", "n2", "20")]);
        assert!(data_mismatches(&gap, 300, 15, None).is_empty());
        // Data that fit the configured interval win over a different configuration (history
        // from before a change).
        assert!(data_mismatches(&fits, 300, 15, Some(&at_20s)).is_empty());

        let global = ScrapeIntervals::parse("global:\n  scrape_interval: 30s\n").unwrap();
        let found = data_mismatches(&halved, 300, 15, Some(&global));
        assert!(found[0].problem().ends_with(
            "; Prometheus' global scrape_interval is 30s (no scrape config is named kubelet)"
        ));
    }

    /// kube-prometheus-stack's kubelet ServiceMonitor: `/metrics` and `/metrics/cadvisor` on
    /// one address under one job label. One endpoint scraped more (or less) often than the
    /// others says nothing about the collector's interval.
    #[test]
    fn a_job_is_a_mismatch_only_when_every_target_deviates_the_same_way() {
        // /metrics every 30 s as configured, /metrics/cadvisor every 15 s.
        let one_faster = kubelet_endpoints(&[("/metrics", "10"), ("/metrics/cadvisor", "20")]);
        assert!(data_mismatches(&one_faster, 300, 30, None).is_empty());
        // Both every 15 s: the collector's 30 s is wrong.
        let all_faster = kubelet_endpoints(&[("/metrics", "20"), ("/metrics/cadvisor", "21")]);
        let found = data_mismatches(&all_faster, 300, 30, None);
        assert_eq!(
            found[0].problem(),
            "job kubelet: 20 to 21 samples in a 300 s window, expected 10 at scrape_interval_seconds = 30; Prometheus' own interval for it is not known"
        );
        // One more, one fewer: not one interval.
        let apart = kubelet_endpoints(&[("/metrics", "20"), ("/metrics/probes", "5")]);
        let at_60s = ScrapeIntervals::parse("global:\n  scrape_interval: 1m\n").unwrap();
        assert!(data_mismatches(&apart, 300, 30, Some(&at_60s)).is_empty());
        // /metrics/probes every minute, the others every 30 s: a gap on that target (which the
        // completeness check reports), not a mismatch of the job.
        let one_slower = kubelet_endpoints(&[
            ("/metrics", "10"),
            ("/metrics/cadvisor", "10"),
            ("/metrics/probes", "5"),
        ]);
        assert!(data_mismatches(&one_slower, 300, 30, Some(&at_60s)).is_empty());

        // A target whose series changed another label inside the window (two series) is one
        // target: its samples add up to what the interval gives.
        let mut split = counts(&[("kubelet", "n1", "12"), ("kubelet", "n1", "8")]);
        std::sync::Arc::make_mut(&mut split[1].labels).insert("pod".to_owned(), "new".to_owned());
        let kubelet_at_30s = ScrapeIntervals::parse(
            "scrape_configs:\n- job_name: kubelet\n  scrape_interval: 30s\n",
        )
        .unwrap();
        assert!(data_mismatches(&split, 300, 15, Some(&kubelet_at_30s)).is_empty());
    }

    #[test]
    fn without_prometheus_configuration_fewer_samples_on_every_target_are_a_gap() {
        // The whole job missed the second half of the window: the counts look like scrapes
        // every 30 s, but nothing says so.
        let half_window_outage = counts(&[("kubelet", "n1", "10"), ("kubelet", "n2", "10")]);
        assert!(data_mismatches(&half_window_outage, 300, 15, None).is_empty());
        let no_intervals = ScrapeIntervals::default();
        assert!(data_mismatches(&half_window_outage, 300, 15, Some(&no_intervals)).is_empty());
        // Prometheus' global interval (no scrape config of the job's name) counts only where
        // the data fit it: 10 samples fit 30 s, not 1m (5).
        let global_30s = ScrapeIntervals::parse("global:\n  scrape_interval: 30s\n").unwrap();
        assert_eq!(
            jobs(data_mismatches(
                &half_window_outage,
                300,
                15,
                Some(&global_30s)
            )),
            ["kubelet"]
        );
        let global_60s = ScrapeIntervals::parse("global:\n  scrape_interval: 1m\n").unwrap();
        assert!(data_mismatches(&half_window_outage, 300, 15, Some(&global_60s)).is_empty());
    }

    #[test]
    fn counts_fit_an_interval_within_a_sample_of_jitter() {
        let at = |s| Interval::from_seconds(s);
        assert!(fits(10, 300, at(30)) && fits(9, 300, at(30)) && fits(11, 300, at(30)));
        assert!(!fits(8, 300, at(30)) && !fits(12, 300, at(30)));
        // 300 s at 45 s: 6 or 7 scrapes, one more or less at the edges.
        assert!(fits(5, 300, at(45)) && fits(8, 300, at(45)));
        assert!(!fits(4, 300, at(45)) && !fits(9, 300, at(45)));
        assert!(!fits(10, 300, Interval(0)) && !fits(-1, 300, at(30)));
    }
}
