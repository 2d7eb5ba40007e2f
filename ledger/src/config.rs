//! Configuration: the primitives every component's config section validates with (required
//! values, bounded durations and counts, http and postgres URLs that are never echoed), and the
//! ledger's own sections, `[database]` and `[price_book]` (rate limits and the seed).
//!
//! A section is a serde type: unknown keys are errors, and every operational limit has its
//! default in the section's `Default` impl, the one place it is defined (`budgetd config show`
//! prints them all). Its `validate` turns it into the settings the component runs with, or an
//! [`Invalid`] naming the key path (`database.max_connections`). The daemon composes the
//! sections and applies the environment overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

use crate::currency::Currency;
use crate::error::Invalid;
use crate::money::{parse_decimal, parse_rate};
use crate::offboarding::OffboardingSettings;
use crate::price_book::{MeterName, NewPriceBookVersion, RateLimits, DEFAULT_MAX_RATE};
use crate::store::StoreConfig;
use crate::tenant::{DataResidency, QuotaProfileName};

// Primitives ----------------------------------------------------------------------------------

/// A value without a default: an error naming `key` when it is missing.
pub fn required<T>(value: Option<T>, key: &str) -> Result<T, Invalid> {
    value.ok_or_else(|| Invalid::new(key, "is required"))
}

/// `value` if it lies in `range`.
pub fn within<T: PartialOrd + fmt::Display>(
    value: T,
    range: RangeInclusive<T>,
    key: &str,
) -> Result<T, Invalid> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Invalid::new(
            key,
            format!("must be in {}..={}", range.start(), range.end()),
        ))
    }
}

/// A timeout or backoff in milliseconds: more than zero, at most one hour.
pub fn millis(ms: u64, key: &str) -> Result<Duration, Invalid> {
    match ms {
        0 => Err(Invalid::new(key, "must be greater than 0")),
        ms if ms > 3_600_000 => Err(Invalid::new(
            key,
            "must be at most one hour (3600000 ms); the value is in milliseconds",
        )),
        ms => Ok(Duration::from_millis(ms)),
    }
}

/// A timeout in milliseconds: at least 100 ms (a smaller one is almost certainly seconds
/// written where milliseconds are meant, and would fail every call), at most one hour.
pub fn timeout_millis(ms: u64, key: &str) -> Result<Duration, Invalid> {
    if ms < 100 {
        return Err(Invalid::new(
            key,
            format!(
                "must be at least 100 ms; the value is in milliseconds ({ms} s would be {})",
                ms * 1000
            ),
        ));
    }
    millis(ms, key)
}

/// An interval in seconds within `range`.
pub fn seconds(s: u64, range: RangeInclusive<u64>, key: &str) -> Result<Duration, Invalid> {
    if range.contains(&s) {
        Ok(Duration::from_secs(s))
    } else {
        Err(Invalid::new(
            key,
            format!("must be in {}..={} seconds", range.start(), range.end()),
        ))
    }
}

/// Attempts per request, the first included: 1 (never retry) to 10.
pub fn attempts(n: u32, key: &str) -> Result<u32, Invalid> {
    within(n, 1..=10, key)
}

/// A capped exponential backoff `(initial, max)` from `<section>.initial_backoff_ms` and
/// `<section>.max_backoff_ms`.
pub fn backoff(
    section: &str,
    initial_ms: u64,
    max_ms: u64,
) -> Result<(Duration, Duration), Invalid> {
    let initial = millis(initial_ms, &format!("{section}.initial_backoff_ms"))?;
    let max = millis(max_ms, &format!("{section}.max_backoff_ms"))?;
    if initial > max {
        return Err(Invalid::new(
            format!("{section}.initial_backoff_ms"),
            format!("must not exceed {section}.max_backoff_ms"),
        ));
    }
    Ok((initial, max))
}

/// A decimal written as a string (`"0.5"`), exactly as written: never a float.
pub fn decimal(text: &str, key: &str) -> Result<Decimal, Invalid> {
    parse_decimal(key, text.trim())
}

/// An RFC 3339 instant in the range the ledger takes (`crate::time`).
pub fn rfc3339(text: &str, key: &str) -> Result<DateTime<Utc>, Invalid> {
    crate::time::parse_instant(key, text)
}

/// An `http://` or `https://` URL.
pub fn http_url(url: &ConfigUrl, key: &str) -> Result<Url, Invalid> {
    let parsed = Url::parse(url.0.expose_secret())
        .map_err(|e| Invalid::new(key, format!("{}: {e}", url.redacted())))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Invalid::new(key, "must be an http:// or https:// URL"));
    }
    Ok(parsed)
}

/// A `postgres://` URL. The message never echoes it: it may hold a password.
pub fn postgres_url(url: &ConfigUrl, key: &str) -> Result<SecretString, Invalid> {
    let parsed = Url::parse(url.0.expose_secret())
        .map_err(|e| Invalid::new(key, format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Err(Invalid::new(key, "must be a postgres:// URL"));
    }
    Ok(url.0.clone())
}

/// A URL as configured. It may carry a password (in its user info, or a `password` query
/// parameter as libpq takes it), so it is never shown as written: `Debug`, `Display` and
/// `Serialize` (what `budgetd config show` prints) replace the password with `***`.
#[derive(Clone, Deserialize)]
#[serde(from = "String")]
pub struct ConfigUrl(SecretString);

impl ConfigUrl {
    pub fn new(url: impl Into<String>) -> Self {
        ConfigUrl(SecretString::from(url.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        let text = self.0.expose_secret();
        let Ok(mut url) = Url::parse(text) else {
            // Not a URL: it cannot be told where a password would be.
            return if text.contains('@') || text.contains("password") {
                "***".to_owned()
            } else {
                text.to_owned()
            };
        };
        let in_query = url.query_pairs().any(|(k, _)| k == "password");
        if url.password().is_none() && !in_query {
            return text.to_owned();
        }
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        if in_query {
            let pairs: Vec<(String, String)> = url
                .query_pairs()
                .map(|(k, v)| {
                    let v = if k == "password" { "***".into() } else { v };
                    (k.into_owned(), v.into_owned())
                })
                .collect();
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
            .replace("%2A%2A%2A", "***")
            .replace("%2a%2a%2a", "***")
    }
}

impl From<String> for ConfigUrl {
    fn from(url: String) -> Self {
        ConfigUrl::new(url)
    }
}

impl fmt::Debug for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for ConfigUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for ConfigUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

// [database] ----------------------------------------------------------------------------------

/// `[database]`: where the ledger is, and the limits of its pool.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// Required: the URL for all queries (may be a transaction-mode pooler).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<ConfigUrl>,
    /// A direct URL for migrations and the leader lock; `url` when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate_url: Option<ConfigUrl>,
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub migrate_timeout_ms: u64,
    pub max_retries: u32,
    pub probe_timeout_ms: u64,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        DatabaseSection {
            url: None,
            migrate_url: None,
            max_connections: 10,
            acquire_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            migrate_timeout_ms: 120_000,
            max_retries: 3,
            probe_timeout_ms: 500,
        }
    }
}

/// The validated `[database]` section.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    /// The direct (non-pooled) URL for migrations and the leader lock: `url` unless set.
    pub migrate_url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    pub migrate_timeout: Duration,
    pub max_retries: u32,
    /// The limit of the direct attempt that tells a database that is down from a busy pool.
    pub probe_timeout: Duration,
}

impl DatabaseSettings {
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            url: self.url.expose_secret().to_owned(),
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
            max_retries: self.max_retries,
            probe_timeout: self.probe_timeout,
        }
    }
}

impl DatabaseSection {
    pub fn validate(&self) -> Result<DatabaseSettings, Invalid> {
        let url = postgres_url(required(self.url.as_ref(), "database.url")?, "database.url")?;
        let migrate_url = match &self.migrate_url {
            Some(u) => postgres_url(u, "database.migrate_url")?,
            None => url.clone(),
        };
        Ok(DatabaseSettings {
            url,
            migrate_url,
            max_connections: within(self.max_connections, 1..=1000, "database.max_connections")?,
            acquire_timeout: timeout_millis(
                self.acquire_timeout_ms,
                "database.acquire_timeout_ms",
            )?,
            statement_timeout: timeout_millis(
                self.statement_timeout_ms,
                "database.statement_timeout_ms",
            )?,
            migrate_timeout: timeout_millis(
                self.migrate_timeout_ms,
                "database.migrate_timeout_ms",
            )?,
            max_retries: within(self.max_retries, 0..=10, "database.max_retries")?,
            probe_timeout: timeout_millis(self.probe_timeout_ms, "database.probe_timeout_ms")?,
        })
    }

    /// What `config show` says about the keys that are not set.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.migrate_url.is_none() {
            notes.push("migrate_url: not set, so database.url".to_owned());
        }
        notes
    }
}

// [price_book] -------------------------------------------------------------------------------

/// `[price_book]`: the largest rate a version may have (`max_rate`, and per meter
/// `[price_book.max_rate_by_meter]`), and the seed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriceBookSection {
    /// A decimal string: the largest rate per price unit of any meter without its own limit.
    pub max_rate: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub max_rate_by_meter: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedSection>,
}

impl Default for PriceBookSection {
    fn default() -> Self {
        PriceBookSection {
            max_rate: DEFAULT_MAX_RATE.to_string(),
            max_rate_by_meter: BTreeMap::new(),
            seed: None,
        }
    }
}

/// `[price_book.seed]`: the version written on the first start, when the book is empty.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSection {
    pub valid_from: String,
    pub currency: String,
    pub rates: BTreeMap<String, String>,
}

/// The validated `[price_book]` section.
#[derive(Debug, Clone)]
pub struct PriceBookSettings {
    /// What every new version's rates are checked against (the API, the seed).
    pub limits: RateLimits,
    pub seed: Option<NewPriceBookVersion>,
}

impl PriceBookSection {
    pub fn validate(&self) -> Result<PriceBookSettings, Invalid> {
        let mut per_meter = BTreeMap::new();
        for (meter, limit) in &self.max_rate_by_meter {
            let key = format!("price_book.max_rate_by_meter.{meter}");
            per_meter.insert(MeterName::parse(&key, meter)?, decimal(limit, &key)?);
        }
        let limits = RateLimits::new(
            "price_book.max_rate",
            decimal(&self.max_rate, "price_book.max_rate")?,
            per_meter,
        )?;
        let Some(seed) = &self.seed else {
            return Ok(PriceBookSettings { limits, seed: None });
        };
        let key = |field: &str| format!("price_book.seed.{field}");
        let valid_from = rfc3339(&seed.valid_from, &key("valid_from"))?;
        let currency = Currency::parse(&key("currency"), &seed.currency)?;
        let mut rates = BTreeMap::new();
        for (meter, rate) in &seed.rates {
            let field = key(&format!("rates.{meter}"));
            rates.insert(MeterName::parse(&field, meter)?, parse_rate(&field, rate)?);
        }
        let seed = NewPriceBookVersion::new(valid_from, currency, rates)
            .map_err(|e| Invalid::new(key(&e.field), e.message))?;
        limits.check(&seed, "price_book.seed.")?;
        Ok(PriceBookSettings {
            limits,
            seed: Some(seed),
        })
    }
}

// [lifecycle] --------------------------------------------------------------------------------

/// `[lifecycle]`: the regions a tenant's data may live in, with the clusters of each
/// (`[lifecycle.residencies.<region>] clusters = [...]`: API URLs, kubeconfig context names, or
/// `kubernetes` for the cluster `[kubernetes]` connects to), and the quota profiles a tenant may
/// have (`[lifecycle.quota_profiles.<name>]`, resource → Kubernetes quantity, the
/// ResourceQuota's `hard` limits). A request names one of each; the API refuses others.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleSection {
    pub residencies: BTreeMap<String, ResidencySection>,
    pub quota_profiles: BTreeMap<String, BTreeMap<String, String>>,
    /// Whether the leader applies the blueprint to the cluster (`[kubernetes]`): provisioning,
    /// updates, isolation and offboarding's deletions.
    pub provision: bool,
    /// A directory of `*.yaml` blueprint templates; unset: the built-in blueprint.
    pub blueprint_dir: Option<std::path::PathBuf>,
    /// The ingress controller's namespace (`{{ingress_namespace}}`).
    pub ingress_namespace: String,
    /// The ClusterRole the owner group is bound to in each namespace (`{{namespace_role}}`).
    pub namespace_role: String,
    /// Days between the start of a tenant's offboarding and the deletion of its namespaces
    /// (0 allowed).
    pub offboarding_grace_days: u32,
    /// Years the ledger keeps an offboarded tenant's entries and audit records.
    pub retention_years: u32,
    /// Whether an offboarded tenant's display name is pseudonymised too (the owner always is).
    pub pseudonymise_display_name: bool,
    /// `[lifecycle.reconciler]`: how the outbox reconcilers (the blueprint) are paced.
    pub reconciler: ReconcilerSection,
}

/// `[lifecycle.reconciler]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcilerSection {
    pub scan_batch: u32,
    pub max_events_per_step: u32,
    pub concurrency: u32,
    pub call_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    pub poll_interval_ms: u64,
    pub resync_interval_seconds: u64,
}

impl Default for ReconcilerSection {
    fn default() -> Self {
        ReconcilerSection {
            scan_batch: 500,
            max_events_per_step: 200,
            concurrency: 8,
            call_timeout_ms: 60_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 300_000,
            poll_interval_ms: 1_000,
            resync_interval_seconds: 600,
        }
    }
}

/// The validated `[lifecycle.reconciler]` (the lifecycle crate turns it into its runner's
/// settings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerTiming {
    pub scan_batch: u32,
    pub max_events_per_step: u32,
    pub concurrency: usize,
    pub call_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub poll_interval: Duration,
    pub resync_interval: Duration,
}

impl ReconcilerSection {
    pub fn validate(&self) -> Result<ReconcilerTiming, Invalid> {
        self.validate_as("lifecycle.reconciler")
    }

    /// As `validate`, for the same section under another name (`grafana.reconciler`).
    pub fn validate_as(&self, section: &str) -> Result<ReconcilerTiming, Invalid> {
        let key = |field: &str| format!("{section}.{field}");
        let positive = [
            ("scan_batch", u64::from(self.scan_batch)),
            ("max_events_per_step", u64::from(self.max_events_per_step)),
            ("concurrency", u64::from(self.concurrency)),
            ("call_timeout_ms", self.call_timeout_ms),
            ("backoff_base_ms", self.backoff_base_ms),
            ("backoff_cap_ms", self.backoff_cap_ms),
            ("poll_interval_ms", self.poll_interval_ms),
            ("resync_interval_seconds", self.resync_interval_seconds),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Invalid::new(key(field), "must be more than zero"));
        }
        if self.concurrency > 1_000 {
            return Err(Invalid::new(key("concurrency"), "at most 1000"));
        }
        if self.backoff_cap_ms < self.backoff_base_ms {
            return Err(Invalid::new(
                key("backoff_cap_ms"),
                "must be at least backoff_base_ms",
            ));
        }
        Ok(ReconcilerTiming {
            scan_batch: self.scan_batch,
            max_events_per_step: self.max_events_per_step,
            concurrency: self.concurrency as usize,
            call_timeout: Duration::from_millis(self.call_timeout_ms),
            backoff_base: Duration::from_millis(self.backoff_base_ms),
            backoff_cap: Duration::from_millis(self.backoff_cap_ms),
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            resync_interval: Duration::from_secs(self.resync_interval_seconds),
        })
    }
}

/// The validated blueprint settings of `[lifecycle]` (the directory is read and its templates
/// checked by the lifecycle crate at start-up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlueprintSettings {
    /// `[lifecycle] provision`.
    pub enabled: bool,
    pub dir: Option<std::path::PathBuf>,
    pub ingress_namespace: String,
    pub namespace_role: String,
}

/// `[lifecycle.residencies.<region>]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ResidencySection {
    /// API server URLs (`https://...`) or kubeconfig context names.
    pub clusters: Vec<String>,
}

/// The cluster entry that stands for the cluster `[kubernetes]` connects to (its `api_url`, or
/// the kubeconfig's current context, or the in-cluster account): the default region's only
/// cluster, so a single-cluster install and the local demo work unchanged.
pub const CONFIGURED_CLUSTER: &str = "kubernetes";

impl Default for LifecycleSection {
    fn default() -> Self {
        let profile = |cpu: &str, memory: &str, pods: &str| {
            BTreeMap::from([
                ("cpu".to_owned(), cpu.to_owned()),
                ("memory".to_owned(), memory.to_owned()),
                ("pods".to_owned(), pods.to_owned()),
            ])
        };
        LifecycleSection {
            residencies: BTreeMap::from([(
                "eu".to_owned(),
                ResidencySection {
                    clusters: vec![CONFIGURED_CLUSTER.to_owned()],
                },
            )]),
            quota_profiles: BTreeMap::from([
                ("small".to_owned(), profile("2", "4Gi", "20")),
                ("standard".to_owned(), profile("8", "32Gi", "100")),
                ("large".to_owned(), profile("32", "128Gi", "500")),
            ]),
            provision: false,
            blueprint_dir: None,
            ingress_namespace: "ingress-nginx".to_owned(),
            namespace_role: "edit".to_owned(),
            reconciler: ReconcilerSection::default(),
            offboarding_grace_days: OffboardingSettings::default().grace_days,
            retention_years: OffboardingSettings::default().retention_years,
            pseudonymise_display_name: OffboardingSettings::default().pseudonymise_display_name,
        }
    }
}

/// Where a tenant may be provisioned: a Kubernetes API server, or a context of the kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRef {
    /// The cluster `[kubernetes]` connects to ([`CONFIGURED_CLUSTER`]).
    Configured,
    ApiUrl(Url),
    Context(String),
}

impl ClusterRef {
    fn parse(text: &str, key: &str) -> Result<ClusterRef, Invalid> {
        if text == CONFIGURED_CLUSTER {
            return Ok(ClusterRef::Configured);
        }
        if text.contains("://") {
            let url = http_url(&ConfigUrl::new(text), key)?;
            if !url.username().is_empty() || url.password().is_some() {
                return Err(Invalid::new(
                    key,
                    "a cluster URL carries no credentials (use a kubeconfig context)",
                ));
            }
            return Ok(ClusterRef::ApiUrl(url));
        }
        let valid = !text.is_empty()
            && text.len() <= 253
            && text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':' | b'/')
            });
        if valid {
            Ok(ClusterRef::Context(text.to_owned()))
        } else {
            Err(Invalid::new(
                key,
                format!("{text:?} is neither an http(s) URL nor a kubeconfig context name"),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ClusterRef::Configured => CONFIGURED_CLUSTER,
            ClusterRef::ApiUrl(url) => url.as_str(),
            ClusterRef::Context(name) => name,
        }
    }
}

/// A quota profile: ResourceQuota `hard` limits, resource name → quantity as written.
pub type QuotaProfile = BTreeMap<String, String>;

/// The validated `[lifecycle]` section.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    pub residencies: BTreeMap<DataResidency, Vec<ClusterRef>>,
    pub quota_profiles: BTreeMap<QuotaProfileName, QuotaProfile>,
    pub blueprint: BlueprintSettings,
    pub reconciler: ReconcilerTiming,
    /// Grace period, retention and what is pseudonymised.
    pub offboarding: OffboardingSettings,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        LifecycleSection::default()
            .validate()
            .expect("the default [lifecycle] is valid")
    }
}

impl LifecycleSettings {
    /// `value` if it names a configured region; otherwise an error naming `field` and the
    /// regions there are.
    pub fn residency(&self, field: &str, value: &str) -> Result<DataResidency, Invalid> {
        let residency = DataResidency::parse_field(field, value)?;
        if self.residencies.contains_key(&residency) {
            return Ok(residency);
        }
        let known: Vec<&str> = self.residencies.keys().map(DataResidency::as_str).collect();
        Err(Invalid::new(
            field,
            format!(
                "{value:?} is not a configured data residency ({})",
                known.join(", ")
            ),
        ))
    }

    /// `value` if it names a configured quota profile.
    pub fn quota_profile(&self, field: &str, value: &str) -> Result<QuotaProfileName, Invalid> {
        let name = QuotaProfileName::parse(field, value)?;
        if self.quota_profiles.contains_key(&name) {
            return Ok(name);
        }
        let known: Vec<&str> = self
            .quota_profiles
            .keys()
            .map(QuotaProfileName::as_str)
            .collect();
        Err(Invalid::new(
            field,
            format!(
                "{value:?} is not a configured quota profile ({})",
                known.join(", ")
            ),
        ))
    }
}

impl LifecycleSection {
    pub fn validate(&self) -> Result<LifecycleSettings, Invalid> {
        if self.residencies.is_empty() {
            return Err(Invalid::new(
                "lifecycle.residencies",
                "at least one region is needed: every tenant has a data residency",
            ));
        }
        let mut residencies = BTreeMap::new();
        for (region, section) in &self.residencies {
            let key = format!("lifecycle.residencies.{region}");
            let residency = DataResidency::parse_field(&key, region)?;
            let key = format!("{key}.clusters");
            if section.clusters.is_empty() {
                return Err(Invalid::new(
                    key,
                    "at least one cluster (an API URL or a kubeconfig context)",
                ));
            }
            let mut clusters = Vec::new();
            for (i, cluster) in section.clusters.iter().enumerate() {
                let cluster = ClusterRef::parse(cluster, &format!("{key}[{i}]"))?;
                if clusters.contains(&cluster) {
                    return Err(Invalid::new(
                        format!("{key}[{i}]"),
                        "the same cluster is listed twice",
                    ));
                }
                clusters.push(cluster);
            }
            residencies.insert(residency, clusters);
        }
        if self.quota_profiles.is_empty() {
            return Err(Invalid::new(
                "lifecycle.quota_profiles",
                "at least one profile is needed: every request names one",
            ));
        }
        let mut quota_profiles = BTreeMap::new();
        for (name, limits) in &self.quota_profiles {
            let key = format!("lifecycle.quota_profiles.{name}");
            let profile = QuotaProfileName::parse(&key, name)?;
            if limits.is_empty() {
                return Err(Invalid::new(key, "a profile sets at least one limit"));
            }
            for (resource, quantity) in limits {
                let key = format!("{key}.{resource}");
                quota_resource(resource, &key)?;
                kubernetes_quantity(quantity, &key)?;
            }
            quota_profiles.insert(profile, limits.clone());
        }
        let dns_label = |text: &str| {
            !text.is_empty()
                && text.len() <= 63
                && text.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && text.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && text
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !dns_label(&self.ingress_namespace) {
            return Err(Invalid::new(
                "lifecycle.ingress_namespace",
                format!(
                    "{:?} is not a namespace name (a DNS-1123 label)",
                    self.ingress_namespace
                ),
            ));
        }
        // a ClusterRole name is a path segment: `system:aggregate-to-edit` is one
        let role_ok = !self.namespace_role.is_empty()
            && self.namespace_role.len() <= 253
            && self.namespace_role.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b':')
            });
        if !role_ok {
            return Err(Invalid::new(
                "lifecycle.namespace_role",
                format!("{:?} is not a ClusterRole name", self.namespace_role),
            ));
        }
        if self
            .blueprint_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(Invalid::new(
                "lifecycle.blueprint_dir",
                "empty: leave it out for the built-in blueprint",
            ));
        }
        let offboarding = OffboardingSettings {
            grace_days: self.offboarding_grace_days,
            retention_years: self.retention_years,
            pseudonymise_display_name: self.pseudonymise_display_name,
        }
        .validate()?;
        Ok(LifecycleSettings {
            residencies,
            quota_profiles,
            blueprint: BlueprintSettings {
                enabled: self.provision,
                dir: self.blueprint_dir.clone(),
                ingress_namespace: self.ingress_namespace.clone(),
                namespace_role: self.namespace_role.clone(),
            },
            reconciler: self.reconciler.validate()?,
            offboarding,
        })
    }
}

/// A ResourceQuota resource name: `cpu`, `requests.memory`, `count/deployments.apps`,
/// `requests.nvidia.com/gpu`.
fn quota_resource(name: &str, key: &str) -> Result<(), Invalid> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'/')
        });
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            key,
            format!("{name:?} is not a ResourceQuota resource name (cpu, memory, pods, requests.cpu ...)"),
        ))
    }
}

/// A Kubernetes quantity (`500m`, `4Gi`, `1e3`, `100`): a non-negative decimal with at most
/// one suffix, binary (`Ki`..`Ei`), decimal (`n`, `u`, `m`, `k`, `M`..`E`) or an exponent.
pub fn kubernetes_quantity(text: &str, key: &str) -> Result<(), Invalid> {
    let bad = || {
        Invalid::new(
            key,
            format!("{text:?} is not a Kubernetes quantity (such as 500m, 4Gi, 100)"),
        )
    };
    let unsigned = text.strip_prefix('+').unwrap_or(text);
    let digits_end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(digits_end);
    let mut parts = number.split('.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next();
    if parts.next().is_some() || (whole.is_empty() && fraction.is_none_or(str::is_empty)) {
        return Err(bad());
    }
    let suffix_ok = matches!(
        suffix,
        "" | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
            | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| {
            !exp.is_empty() && exp.len() <= 3 && exp.bytes().all(|b| b.is_ascii_digit())
        });
    if text.len() > 64 || !suffix_ok {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            (
                "postgres://budgetd:s3cret@db.example:5432/ledger",
                "postgres://budgetd:***@db.example:5432/ledger",
            ),
            (
                "postgres://budgetd@db.example/ledger?password=s3cret&sslmode=require",
                "postgres://budgetd@db.example/ledger?password=***&sslmode=require",
            ),
            ("http://127.0.0.1:9090", "http://127.0.0.1:9090"),
            ("not a url with a s3cret@", "***"),
        ] {
            let url = ConfigUrl::new(url);
            assert_eq!(url.redacted(), shown);
            assert_eq!(format!("{url}"), shown);
            assert_eq!(format!("{url:?}"), format!("{shown:?}"));
            assert!(!format!("{url:?}").contains("s3cret"));
        }
    }

    #[test]
    fn postgres_url_problems_never_echo_the_url() {
        let err =
            postgres_url(&ConfigUrl::new("mysql://u:s3cret@x/db"), "database.url").unwrap_err();
        assert_eq!(err.field, "database.url");
        assert!(!err.message.contains("s3cret"), "{err}");
        let err = postgres_url(&ConfigUrl::new("s3cret"), "database.url").unwrap_err();
        assert!(!err.message.contains("s3cret"), "{err}");
    }

    #[test]
    fn the_database_section_has_defaults_and_follows_url() {
        let section = DatabaseSection {
            url: Some(ConfigUrl::new("postgres://u@db/ledger")),
            ..DatabaseSection::default()
        };
        let settings = section.validate().unwrap();
        assert_eq!(
            settings.migrate_url.expose_secret(),
            "postgres://u@db/ledger"
        );
        assert_eq!(settings.max_connections, 10);
        assert_eq!(settings.acquire_timeout, Duration::from_secs(5));
        let missing = DatabaseSection::default().validate().unwrap_err();
        assert_eq!(missing.field, "database.url");
    }

    #[test]
    fn bounds_name_the_key() {
        assert_eq!(millis(0, "a.b_ms").unwrap_err().field, "a.b_ms");
        assert!(millis(3_600_001, "a.b_ms").is_err());
        assert_eq!(millis(1, "a.b_ms").unwrap(), Duration::from_millis(1));
        let err = timeout_millis(30, "a.timeout_ms").unwrap_err();
        assert_eq!(err.field, "a.timeout_ms");
        assert!(
            err.message.contains("30 s would be 30000"),
            "{}",
            err.message
        );
        assert_eq!(
            timeout_millis(100, "a.timeout_ms").unwrap(),
            Duration::from_millis(100)
        );
        assert_eq!(
            backoff("x", 500, 100).unwrap_err().field,
            "x.initial_backoff_ms"
        );
        assert_eq!(
            attempts(0, "x.max_attempts").unwrap_err().field,
            "x.max_attempts"
        );
        assert!(seconds(0, 1..=86_400, "x.s").is_err());
    }

    #[test]
    fn lifecycle_defaults_serve_the_local_demo_and_bad_values_name_their_key() {
        let settings = LifecycleSection::default().validate().unwrap();
        assert!(settings.residency("data_residency", "eu").is_ok());
        let err = settings.residency("data_residency", "mars").unwrap_err();
        assert_eq!(err.field, "data_residency");
        assert!(err.message.contains("eu"), "{}", err.message);
        assert!(settings.quota_profile("quota_profile", "standard").is_ok());
        assert_eq!(
            settings
                .quota_profile("quota_profile", "huge")
                .unwrap_err()
                .field,
            "quota_profile"
        );
        for ok in ["500m", "4Gi", "100", "1.5", ".5", "1e3", "2E-2", "+1k", "0"] {
            assert!(kubernetes_quantity(ok, "k").is_ok(), "{ok}");
        }
        for bad in [
            "", "4GB", "-1", "1..2", "abc", "4 Gi", ".", "1e", "Gi", "1e1234",
        ] {
            assert!(kubernetes_quantity(bad, "k").is_err(), "{bad}");
        }
        let mut section = LifecycleSection::default();
        section
            .quota_profiles
            .get_mut("small")
            .unwrap()
            .insert("memory".into(), "4GB".into());
        assert_eq!(
            section.validate().unwrap_err().field,
            "lifecycle.quota_profiles.small.memory"
        );
        let mut section = LifecycleSection::default();
        section.residencies.insert(
            "us".into(),
            ResidencySection {
                clusters: vec!["https://k8s.us.example:6443".into(), "bad context".into()],
            },
        );
        assert_eq!(
            section.validate().unwrap_err().field,
            "lifecycle.residencies.us.clusters[1]"
        );
        let mut section = LifecycleSection::default();
        section.residencies.clear();
        assert_eq!(
            section.validate().unwrap_err().field,
            "lifecycle.residencies"
        );
    }

    #[test]
    fn blueprint_and_reconciler_settings_default_and_name_their_key() {
        let settings = LifecycleSection::default().validate().unwrap();
        assert_eq!(settings.blueprint.dir, None);
        assert_eq!(settings.blueprint.ingress_namespace, "ingress-nginx");
        assert_eq!(settings.blueprint.namespace_role, "edit");
        assert_eq!(
            settings.reconciler.resync_interval,
            Duration::from_secs(600)
        );
        let parsed: LifecycleSection = serde_json::from_value(serde_json::json!({
            "blueprint_dir": "/etc/budgetd/blueprint",
            "namespace_role": "system:aggregate-to-edit",
            "reconciler": { "concurrency": 4 },
        }))
        .unwrap();
        let settings = parsed.validate().unwrap();
        assert_eq!(
            settings.blueprint.dir.as_deref(),
            Some(std::path::Path::new("/etc/budgetd/blueprint"))
        );
        assert_eq!(settings.reconciler.concurrency, 4);
        assert_eq!(settings.reconciler.scan_batch, 500);

        let field = |edit: &dyn Fn(&mut LifecycleSection)| {
            let mut section = LifecycleSection::default();
            edit(&mut section);
            section.validate().unwrap_err().field
        };
        assert_eq!(
            field(&|s| s.ingress_namespace = "Ingress".into()),
            "lifecycle.ingress_namespace"
        );
        assert_eq!(
            field(&|s| s.namespace_role = "a/b".into()),
            "lifecycle.namespace_role"
        );
        assert_eq!(
            field(&|s| s.blueprint_dir = Some("".into())),
            "lifecycle.blueprint_dir"
        );
        assert_eq!(
            field(&|s| s.reconciler.scan_batch = 0),
            "lifecycle.reconciler.scan_batch"
        );
        assert_eq!(
            field(&|s| s.reconciler.backoff_cap_ms = 10),
            "lifecycle.reconciler.backoff_cap_ms"
        );
        let typo = serde_json::json!({ "reconciler": { "scan_btach": 1 } });
        assert!(serde_json::from_value::<LifecycleSection>(typo).is_err());
    }
}
