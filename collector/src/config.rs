//! The collector's configuration: `[collector]` (with `[collector.retry]` and
//! `[collector.match_labels]`), `[[meters]]` and `[prometheus]`. Each section is a serde type
//! whose `Default` holds every default (see `ledger::config`); [`validate`] turns them into
//! [`CollectorSettings`]. Without `[[meters]]` the collector uses its built-in meters,
//! [`DEFAULT_METERS`] (`collector/meters.toml`, the cost model on a stock
//! kube-prometheus-stack), parsed by the same code; configured `[[meters]]` replace them all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ledger::config::{attempts, backoff, http_url, required, rfc3339, timeout_millis, ConfigUrl};
use ledger::entry::UnitName;
use ledger::money::parse_rate;
use ledger::price_book::MeterName;
use ledger::{Invalid, Store};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::meter::Meter;
use crate::promql::{LabelName, QueryTemplate};
use crate::schedule::Schedule;
use crate::source::{Prometheus, RetryPolicy};
use crate::window::WindowLength;
use crate::{Collector, CollectorConfig, Error};

/// The built-in meters, as a configuration's `[[meters]]`.
pub const DEFAULT_METERS: &str = include_str!("../meters.toml");

/// Below this a response limit is surely a mistake of units (one window of a small cluster is
/// ~100 KB).
const MIN_RESPONSE_BYTES: u64 = 1024 * 1024;
/// Above this a response limit is no limit: the body is held in memory, then decoded (and a
/// batch that large is better split).
const MAX_RESPONSE_BYTES: u64 = 1024 * 1024 * 1024;

/// `collector.settle_seconds` unless configured, or longer when the meters read samples further
/// past a window's end (the built-in cpu meter: 2.5 scrape intervals, 75 s at 30 s scrapes).
const DEFAULT_SETTLE_SECONDS: i64 = 120;

/// `[collector]`: present (and not `enabled = false`) means the daemon collects.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSection {
    pub enabled: bool,
    pub window_seconds: i64,
    /// Unset: 120, or how far past a window's end the meters read samples if that is longer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settle_seconds: Option<i64>,
    /// kube-prometheus-stack scrapes every 30 s; checked against the data in every window.
    pub scrape_interval_seconds: i64,
    pub tenant_label: String,
    pub scrape_jobs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// Prometheus' retention (15 days by default).
    pub horizon_seconds: i64,
    pub windows_per_batch: usize,
    /// What the slowest query of a catch-up batch should take; below `prometheus.timeout_ms`.
    /// Unset: half of it (room for a batch slower than the last).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_target_ms: Option<u64>,
    /// Tenant-windows in the first batch of a catch-up or backfill.
    pub batch_tenant_windows: usize,
    /// The most entries (live tenants × meters × windows) a batch may hold: what bounds a
    /// catch-up's memory, however fast Prometheus answers.
    pub max_batch_entries: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    pub retry: RetrySection,
}

impl Default for CollectorSection {
    fn default() -> Self {
        CollectorSection {
            enabled: true,
            window_seconds: 300,
            settle_seconds: None,
            scrape_interval_seconds: 30,
            tenant_label: "label_tenant".to_owned(),
            scrape_jobs: vec!["kubelet".to_owned(), "kube-state-metrics".to_owned()],
            start: None,
            horizon_seconds: 15 * 86_400,
            windows_per_batch: 288,
            batch_target_ms: None,
            // The slowest default query takes ~0.3 ms per tenant-window in a range query on the
            // machine of the README's benchmarks: ~4.5 s (1 window at 10,000 tenants, 15 at
            // 1,000), well under the default target; later batches grow toward it.
            batch_tenant_windows: 15_000,
            // 20 windows at 10,000 tenants and the built-in meters: the catch-up peaked at 464 MiB
            // (two batches in memory, one committing while the next is queried), inside the
            // example deployment's 1 GiB limit.
            max_batch_entries: 1_000_000,
            schedule: None,
            match_labels: BTreeMap::new(),
            retry: RetrySection::default(),
        }
    }
}

/// `[collector.retry]`: retries of a failed Prometheus query, and the loop's backoff.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySection {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        RetrySection {
            max_attempts: 5,
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
        }
    }
}

/// One `[[meters]]` entry. Every key is required.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterSection {
    pub name: String,
    pub unit: String,
    pub price_unit: String,
    pub units_per_price_unit: String,
    pub query: String,
}

/// The built-in meters of [`DEFAULT_METERS`].
pub fn default_meters() -> Vec<MeterSection> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        meters: Vec<MeterSection>,
    }
    toml::from_str::<File>(DEFAULT_METERS)
        .expect("collector/meters.toml is a valid [[meters]] list (a unit test checks it)")
        .meters
}

/// `[prometheus]`: where the collector reads usage.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrometheusSection {
    /// Required when the collector is enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<ConfigUrl>,
    pub timeout_ms: u64,
    /// The largest response body read; a batch whose answer is larger is split.
    pub max_response_bytes: u64,
}

impl Default for PrometheusSection {
    fn default() -> Self {
        PrometheusSection {
            url: None,
            // A window's slowest query at 10,000 tenants takes 2-4 s; catch-up batches are sized
            // to half of it (see `CollectorSection::batch_target_ms`).
            timeout_ms: 30_000,
            // Far above one window of 10,000 tenants (a few MB): only long catch-up batches
            // reach it, and they are split.
            max_response_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The validated `[prometheus]` section.
#[derive(Debug, Clone)]
pub struct PrometheusSettings {
    pub url: Url,
    pub timeout: Duration,
    pub max_response_bytes: u64,
}

/// Everything the collector runs with: the collector's own settings, the loop's schedule and
/// retries, and its Prometheus.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    pub collector: CollectorConfig,
    pub schedule: Schedule,
    pub retry: RetryPolicy,
    pub prometheus: PrometheusSettings,
}

impl CollectorSettings {
    /// The Prometheus client: the configured URL, timeout, response limit and retries.
    pub fn source(&self) -> Result<Prometheus, Error> {
        Prometheus::new(
            self.prometheus.url.clone(),
            self.prometheus.timeout,
            self.prometheus.max_response_bytes,
            self.retry,
        )
        .map_err(|e| Error::Invalid(format!("Prometheus client: {e}")))
    }

    /// The collector on the configured Prometheus, writing to `store`.
    pub fn build(&self, store: Store) -> Result<Collector, Error> {
        Ok(Collector::new(
            Arc::new(self.source()?),
            store,
            self.collector.clone(),
        ))
    }
}

fn invalid(e: Error) -> Invalid {
    match e {
        Error::Config { field, message } => Invalid::new(field, message),
        other => Invalid::new("collector", other.to_string()),
    }
}

fn positive(value: i64, key: &str) -> Result<i64, Invalid> {
    if value > 0 {
        Ok(value)
    } else {
        Err(Invalid::new(key, "must be greater than 0"))
    }
}

impl PrometheusSection {
    pub fn validate(&self) -> Result<PrometheusSettings, Invalid> {
        let url = required(self.url.as_ref(), "prometheus.url")?;
        if self.max_response_bytes < MIN_RESPONSE_BYTES {
            return Err(Invalid::new(
                "prometheus.max_response_bytes",
                format!("must be at least {MIN_RESPONSE_BYTES} (1 MiB); the value is in bytes"),
            ));
        }
        if self.max_response_bytes > MAX_RESPONSE_BYTES {
            return Err(Invalid::new(
                "prometheus.max_response_bytes",
                format!("must be at most {MAX_RESPONSE_BYTES} (1 GiB); the value is in bytes"),
            ));
        }
        Ok(PrometheusSettings {
            url: http_url(url, "prometheus.url")?,
            timeout: timeout_millis(self.timeout_ms, "prometheus.timeout_ms")?,
            max_response_bytes: self.max_response_bytes,
        })
    }

    /// What `config show` says about the keys that are not set.
    pub fn notes(&self) -> Vec<String> {
        match self.url {
            None => vec!["url: required when the collector is enabled".to_owned()],
            Some(_) => Vec::new(),
        }
    }
}

impl CollectorSection {
    /// The collector's settings; `meters` are the configured `[[meters]]` (`None`: the
    /// built-in ones).
    pub fn validate(
        &self,
        meters: Option<&[MeterSection]>,
        prometheus: &PrometheusSection,
    ) -> Result<CollectorSettings, Invalid> {
        let window = WindowLength::new(self.window_seconds).map_err(invalid)?;
        let interval_seconds = positive(
            self.scrape_interval_seconds,
            "collector.scrape_interval_seconds",
        )?;
        if window.seconds() % interval_seconds != 0 {
            return Err(Invalid::new(
                "collector.scrape_interval_seconds",
                "must divide collector.window_seconds",
            ));
        }
        let meters = match meters {
            Some(configured) => validate_meters(configured, "meters")?,
            None => validate_meters(&default_meters(), "meters (built in)")?,
        };
        let settle = chrono::Duration::seconds(self.settle_seconds(
            &meters,
            window.seconds(),
            interval_seconds,
        )?);
        let tenant_label =
            LabelName::parse("collector.tenant_label", &self.tenant_label).map_err(invalid)?;
        if self.scrape_jobs.is_empty() {
            return Err(Invalid::new(
                "collector.scrape_jobs",
                "name the scrape jobs whose `up` series show complete data (e.g. kubelet, kube-state-metrics)",
            ));
        }
        let mut selector = BTreeMap::new();
        for (name, value) in &self.match_labels {
            let key = format!("collector.match_labels.{name}");
            selector.insert(
                LabelName::parse(&key, name).map_err(invalid)?,
                value.clone(),
            );
        }
        let start = self
            .start
            .as_deref()
            .map(|s| rfc3339(s, "collector.start"))
            .transpose()?;
        let horizon =
            chrono::Duration::seconds(positive(self.horizon_seconds, "collector.horizon_seconds")?);
        if horizon <= chrono::Duration::seconds(window.seconds()) + settle {
            return Err(Invalid::new(
                "collector.horizon_seconds",
                "must be longer than a window plus the settle delay",
            ));
        }
        let windows_per_batch = ledger::config::within(
            self.windows_per_batch,
            1..=10_000,
            "collector.windows_per_batch",
        )?;
        let prometheus = prometheus.validate()?;
        // Unset, half the Prometheus timeout; a value set on purpose must fit below it.
        let batch_target = match self.batch_target_ms {
            None => prometheus.timeout / 2,
            Some(ms) => {
                let target = timeout_millis(ms, "collector.batch_target_ms")?;
                if target >= prometheus.timeout {
                    return Err(Invalid::new(
                        "collector.batch_target_ms",
                        format!(
                            "must be below prometheus.timeout_ms ({} ms): a batch sized to take \
                             it must not time out (or leave it out: half of the timeout)",
                            prometheus.timeout.as_millis()
                        ),
                    ));
                }
                target
            }
        };
        let batch_tenant_windows = ledger::config::within(
            self.batch_tenant_windows,
            1..=100_000_000,
            "collector.batch_tenant_windows",
        )?;
        let max_batch_entries = ledger::config::within(
            self.max_batch_entries,
            1..=1_000_000_000,
            "collector.max_batch_entries",
        )?;
        let schedule = match self.schedule.as_deref() {
            Some(expr) => Schedule::cron("collector.schedule", expr).map_err(invalid)?,
            None => Schedule::EveryWindow {
                len: window,
                settle,
            },
        };
        let (initial_backoff, max_backoff) = backoff(
            "collector.retry",
            self.retry.initial_backoff_ms,
            self.retry.max_backoff_ms,
        )?;
        let retry = RetryPolicy {
            max_attempts: attempts(self.retry.max_attempts, "collector.retry.max_attempts")?,
            initial_backoff,
            max_backoff,
        };
        Ok(CollectorSettings {
            collector: CollectorConfig {
                window,
                settle,
                interval_seconds,
                tenant_label,
                selector,
                meters,
                scrape_jobs: self.scrape_jobs.clone(),
                start,
                horizon,
                windows_per_batch,
                batch_target,
                batch_tenant_windows,
                max_batch_entries,
            },
            schedule,
            retry,
            prometheus,
        })
    }

    /// The settle delay in seconds: as configured, which must cover the samples the meters
    /// read after a window's end, or by default [`DEFAULT_SETTLE_SECONDS`] or that, whichever
    /// is longer.
    fn settle_seconds(
        &self,
        meters: &[Meter],
        window_seconds: i64,
        interval_seconds: i64,
    ) -> Result<i64, Invalid> {
        let needed = furthest_read_after_end(meters, window_seconds, interval_seconds);
        let Some(configured) = self.settle_seconds else {
            return Ok(needed.map_or(DEFAULT_SETTLE_SECONDS, |(_, need)| {
                need.max(DEFAULT_SETTLE_SECONDS)
            }));
        };
        let configured = positive(configured, "collector.settle_seconds")?;
        match needed {
            Some((meter, need)) if configured < need => Err(Invalid::new(
                "collector.settle_seconds",
                format!(
                    "{configured} is too short for collector.scrape_interval_seconds = \
                     {interval_seconds}: the {} meter reads samples up to {need} s after a \
                     window's end; set settle_seconds >= {need} (or leave it out: the default \
                     is {DEFAULT_SETTLE_SECONDS}, or what the meters need if longer)",
                    meter.name
                ),
            )),
            _ => Ok(configured),
        }
    }

    /// What `config show` says about the keys that are not set; `meters` are the configured
    /// `[[meters]]` (`None`: the built-in ones).
    pub fn notes(&self, meters: Option<&[MeterSection]>) -> Vec<String> {
        let mut notes = Vec::new();
        if self.settle_seconds.is_none() {
            // What validation would make of it; nothing more if the section is invalid
            // (validation says why).
            let built_in;
            let raw = match meters {
                Some(configured) => configured,
                None => {
                    built_in = default_meters();
                    &built_in
                }
            };
            let needed = validate_meters(raw, "meters").ok().and_then(|meters| {
                furthest_read_after_end(&meters, self.window_seconds, self.scrape_interval_seconds)
                    .map(|(meter, need)| (meter.name.to_string(), need))
            });
            notes.push(match needed {
                Some((meter, need)) if need > DEFAULT_SETTLE_SECONDS => format!(
                    "settle_seconds: not set, so {need}, not {DEFAULT_SETTLE_SECONDS}: the \
                     {meter} meter reads samples up to {need} s after a window's end at \
                     scrape_interval_seconds = {}",
                    self.scrape_interval_seconds
                ),
                Some((meter, need)) => format!(
                    "settle_seconds: not set, so {DEFAULT_SETTLE_SECONDS} (at least {need}: the \
                     {meter} meter reads samples up to {need} s after a window's end)"
                ),
                None => format!("settle_seconds: not set, so {DEFAULT_SETTLE_SECONDS}"),
            });
        }
        if self.batch_target_ms.is_none() {
            notes.push("batch_target_ms: not set, so half of prometheus.timeout_ms".to_owned());
        }
        if self.start.is_none() {
            notes.push("start: not set, so a new ledger starts at its first start".to_owned());
        }
        if self.schedule.is_none() {
            notes.push(
                "schedule: not set, so right after each window settles (window_seconds + settle_seconds)"
                    .to_owned(),
            );
        }
        notes
    }
}

/// The meter that reads furthest past a window's end, and how far in whole seconds (rounded up):
/// what `collector.settle_seconds` must cover. `None` if no meter reads past the end.
fn furthest_read_after_end(
    meters: &[Meter],
    window_seconds: i64,
    interval_seconds: i64,
) -> Option<(&Meter, i64)> {
    let mut furthest: Option<(&Meter, i64)> = None;
    for meter in meters {
        let ms = meter
            .query
            .reads_after_end_ms(window_seconds, interval_seconds);
        let seconds = (ms + 999) / 1000;
        if seconds > 0 && furthest.is_none_or(|(_, s)| seconds > s) {
            furthest = Some((meter, seconds));
        }
    }
    furthest
}

fn validate_meters(raw: &[MeterSection], list: &str) -> Result<Vec<Meter>, Invalid> {
    if raw.is_empty() {
        return Err(Invalid::new(
            list,
            "give at least one [[meters]] entry (or none at all for the built-in meters)",
        ));
    }
    let mut meters: Vec<Meter> = Vec::new();
    for (i, m) in raw.iter().enumerate() {
        let key = |field: &str| format!("{list}[{i}].{field}");
        let name = MeterName::parse(&key("name"), &m.name)?;
        if meters.iter().any(|o| o.name == name) {
            return Err(Invalid::new(
                key("name"),
                format!("meter {name} is defined twice"),
            ));
        }
        let units = parse_rate(&key("units_per_price_unit"), &m.units_per_price_unit)?;
        if units.is_zero() {
            return Err(Invalid::new(
                key("units_per_price_unit"),
                "must be greater than 0",
            ));
        }
        meters.push(Meter {
            name,
            unit: UnitName::parse(&key("unit"), &m.unit)?,
            price_unit: UnitName::parse(&key("price_unit"), &m.price_unit)?,
            units_per_price_unit: units,
            query: QueryTemplate::parse(&key("query"), &m.query).map_err(invalid)?,
        });
    }
    Ok(meters)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prometheus() -> PrometheusSection {
        PrometheusSection {
            url: Some(ConfigUrl::new("http://prometheus:9090")),
            ..PrometheusSection::default()
        }
    }

    #[test]
    fn without_meters_the_built_in_ones_are_used_and_configured_ones_replace_them() {
        let defaults = CollectorSection::default()
            .validate(None, &prometheus())
            .unwrap();
        let names: Vec<&str> = defaults
            .collector
            .meters
            .iter()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["cpu", "memory", "storage", "network_egress", "gpu"],
            "the design's cost model"
        );
        let cpu = &defaults.collector.meters[0];
        assert_eq!(
            (cpu.unit.as_str(), cpu.price_unit.as_str()),
            ("core_seconds", "core_hour")
        );
        let one = MeterSection {
            name: "cpu_only".to_owned(),
            ..default_meters().swap_remove(0)
        };
        let configured = CollectorSection::default()
            .validate(Some(&[one]), &prometheus())
            .unwrap();
        assert_eq!(configured.collector.meters.len(), 1);
        assert_eq!(configured.collector.meters[0].name.as_str(), "cpu_only");
        let err = CollectorSection::default()
            .validate(Some(&[]), &prometheus())
            .unwrap_err();
        assert_eq!(err.field, "meters");
    }

    #[test]
    fn defaults_and_problems_name_the_key() {
        let settings = CollectorSection::default()
            .validate(None, &prometheus())
            .unwrap();
        assert_eq!(settings.collector.interval_seconds, 30);
        assert_eq!(settings.retry.max_attempts, 5);
        assert_eq!(settings.prometheus.max_response_bytes, 64 * 1024 * 1024);
        assert_eq!(settings.prometheus.timeout, Duration::from_secs(30));
        assert_eq!(settings.collector.batch_target, Duration::from_secs(15));
        assert_eq!(settings.collector.batch_tenant_windows, 15_000);
        assert_eq!(settings.collector.max_batch_entries, 1_000_000);
        // Unset, the target is half the Prometheus timeout, shorter or longer; a configured one
        // must fit below it.
        let long = PrometheusSection {
            timeout_ms: 60_000,
            ..prometheus()
        };
        let settings = CollectorSection::default().validate(None, &long).unwrap();
        assert_eq!(settings.collector.batch_target, Duration::from_secs(30));
        let short = PrometheusSection {
            timeout_ms: 2_000,
            ..prometheus()
        };
        let settings = CollectorSection::default().validate(None, &short).unwrap();
        assert_eq!(settings.collector.batch_target, Duration::from_secs(1));
        let err = CollectorSection {
            batch_target_ms: Some(3_000),
            ..Default::default()
        }
        .validate(None, &short)
        .unwrap_err();
        assert_eq!(err.field, "collector.batch_target_ms");

        let err = CollectorSection::default()
            .validate(None, &PrometheusSection::default())
            .unwrap_err();
        assert_eq!(err.field, "prometheus.url");
        let cases: Vec<(CollectorSection, &str)> = vec![
            (
                CollectorSection {
                    scrape_interval_seconds: 7,
                    ..Default::default()
                },
                "collector.scrape_interval_seconds",
            ),
            (
                CollectorSection {
                    window_seconds: 7,
                    ..Default::default()
                },
                "collector.window_seconds",
            ),
            (
                CollectorSection {
                    retry: RetrySection {
                        initial_backoff_ms: 60_000,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "collector.retry.initial_backoff_ms",
            ),
            (
                CollectorSection {
                    windows_per_batch: 0,
                    ..Default::default()
                },
                "collector.windows_per_batch",
            ),
            (
                CollectorSection {
                    batch_target_ms: Some(30_000),
                    ..Default::default()
                },
                "collector.batch_target_ms",
            ),
            (
                CollectorSection {
                    batch_target_ms: Some(0),
                    ..Default::default()
                },
                "collector.batch_target_ms",
            ),
            (
                CollectorSection {
                    batch_tenant_windows: 0,
                    ..Default::default()
                },
                "collector.batch_tenant_windows",
            ),
            (
                CollectorSection {
                    max_batch_entries: 0,
                    ..Default::default()
                },
                "collector.max_batch_entries",
            ),
            (
                CollectorSection {
                    start: Some("yesterday".to_owned()),
                    ..Default::default()
                },
                "collector.start",
            ),
        ];
        for (section, key) in cases {
            let err = section.validate(None, &prometheus()).unwrap_err();
            assert_eq!(err.field, key, "{err}");
        }
        let tiny = PrometheusSection {
            max_response_bytes: 64,
            ..prometheus()
        };
        assert_eq!(
            CollectorSection::default()
                .validate(None, &tiny)
                .unwrap_err()
                .field,
            "prometheus.max_response_bytes"
        );
    }

    #[test]
    fn settle_seconds_covers_the_samples_the_meters_read_after_a_window_end() {
        let at = |interval: i64, settle: Option<i64>, meters: Option<&[MeterSection]>| {
            CollectorSection {
                scrape_interval_seconds: interval,
                settle_seconds: settle,
                ..Default::default()
            }
            .validate(meters, &prometheus())
        };
        let settle = |interval, settle| {
            at(interval, settle, None)
                .unwrap()
                .collector
                .settle
                .num_seconds()
        };
        // Unset: 120, or how far the cpu meter reads past the end (2.5 scrape intervals, to
        // the second above) when that is longer.
        assert_eq!(settle(15, None), 120);
        assert_eq!(settle(30, None), 120);
        assert_eq!(settle(60, None), 150);
        assert_eq!(settle(100, None), 250);
        // Set: kept when it covers them, refused naming both keys, their values and the
        // minimum when it does not.
        assert_eq!(settle(30, Some(75)), 75);
        assert_eq!(settle(15, Some(38)), 38);
        assert_eq!(settle(60, Some(150)), 150);
        for (interval, configured, minimum) in [(30, 74, 75), (15, 37, 38), (60, 120, 150)] {
            let err = at(interval, Some(configured), None).unwrap_err();
            assert_eq!(err.field, "collector.settle_seconds");
            assert_eq!(
                err.to_string(),
                format!(
                    "collector.settle_seconds: {configured} is too short for \
                     collector.scrape_interval_seconds = {interval}: the cpu meter reads samples \
                     up to {minimum} s after a window's end; set settle_seconds >= {minimum} (or \
                     leave it out: the default is 120, or what the meters need if longer)"
                )
            );
        }
        // Meters that read nothing past a window's end need only a positive delay.
        let memory: Vec<MeterSection> = default_meters()
            .into_iter()
            .filter(|m| m.name == "memory")
            .collect();
        assert_eq!(
            at(60, Some(1), Some(&memory))
                .unwrap()
                .collector
                .settle
                .num_seconds(),
            1
        );
        assert_eq!(
            at(60, None, Some(&memory))
                .unwrap()
                .collector
                .settle
                .num_seconds(),
            120
        );
        let err = at(60, Some(0), Some(&memory)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "collector.settle_seconds: must be greater than 0"
        );
        // `config show` says what an unset one becomes.
        let notes = |interval| {
            CollectorSection {
                scrape_interval_seconds: interval,
                ..Default::default()
            }
            .notes(None)
        };
        assert!(notes(30).contains(
            &"settle_seconds: not set, so 120 (at least 75: the cpu meter reads samples up to 75 s after a window's end)".to_owned()
        ), "{:?}", notes(30));
        assert!(notes(60).contains(
            &"settle_seconds: not set, so 150, not 120: the cpu meter reads samples up to 150 s after a window's end at scrape_interval_seconds = 60".to_owned()
        ), "{:?}", notes(60));
        let set = CollectorSection {
            settle_seconds: Some(200),
            ..Default::default()
        };
        assert!(!set
            .notes(None)
            .iter()
            .any(|n| n.starts_with("settle_seconds")));
    }

    #[test]
    fn the_response_size_limit_is_bounded_both_ways() {
        let limit = |bytes: u64| {
            CollectorSection::default().validate(
                None,
                &PrometheusSection {
                    max_response_bytes: bytes,
                    ..prometheus()
                },
            )
        };
        for ok in [1024 * 1024, 64 * 1024 * 1024, 1024 * 1024 * 1024] {
            assert_eq!(limit(ok).unwrap().prometheus.max_response_bytes, ok);
        }
        for (bad, says) in [
            (1024 * 1024 - 1, "at least 1048576 (1 MiB)"),
            (1024 * 1024 * 1024 + 1, "at most 1073741824 (1 GiB)"),
            (u64::MAX, "at most 1073741824 (1 GiB)"),
        ] {
            let err = limit(bad).unwrap_err();
            assert_eq!(err.field, "prometheus.max_response_bytes");
            assert!(err.to_string().contains(says), "{bad}: {err}");
        }
    }
}
