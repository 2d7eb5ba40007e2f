//! Configuration: a TOML file, overridden by environment variables, validated at start-up
//! into typed values. Every problem names its key. Timeouts have no defaults: the file says
//! each one (see `examples/budgetd.toml`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger::currency::Currency;
use ledger::price_book::{MeterName, NewPriceBookVersion};
use ledger::tenant::TenantId;
use ledger::StoreConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use collector::meter::Meter;
use collector::promql::{LabelName, QueryTemplate};
use collector::schedule::Schedule;
use collector::source::RetryPolicy;
use collector::window::WindowLength;
use collector::CollectorConfig;
use enforcer::alertmanager::{Alertmanager, AlertmanagerSettings};
use enforcer::cluster::Tighten;
use enforcer::executor::EnforcerSettings;
use enforcer::kubernetes::KubernetesSettings;
use enforcer::policy::{parse_profile, Ladder, StepSpec};
use ledger::entry::UnitName;
use rust_decimal::Decimal;

use crate::auth::{Role, TokenHash};

/// A configuration problem: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            message: message.into(),
        }
    }
}

// The file's shape. Unknown keys are errors, so a typo never silently falls back to a default.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    api: RawApi,
    #[serde(default)]
    prometheus: RawPrometheus,
    #[serde(default)]
    alertmanager: RawAlertmanager,
    kubernetes: Option<RawKubernetes>,
    leader: Option<RawLeader>,
    enforcement: Option<RawEnforcement>,
    #[serde(default)]
    price_book: RawPriceBook,
    #[serde(default)]
    log: RawLog,
    collector: Option<RawCollector>,
    #[serde(default)]
    meters: Vec<RawMeter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    enabled: Option<bool>,
    window_seconds: Option<i64>,
    settle_seconds: Option<i64>,
    scrape_interval_seconds: Option<i64>,
    tenant_label: Option<String>,
    #[serde(default)]
    scrape_jobs: Vec<String>,
    start: Option<String>,
    horizon_seconds: Option<i64>,
    windows_per_batch: Option<usize>,
    schedule: Option<String>,
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    retry: Option<RawRetry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeter {
    name: String,
    unit: String,
    price_unit: String,
    units_per_price_unit: String,
    query: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    migrate_url: Option<String>,
    max_connections: Option<u32>,
    acquire_timeout_ms: Option<u64>,
    statement_timeout_ms: Option<u64>,
    migrate_timeout_ms: Option<u64>,
    max_retries: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    listen: Option<String>,
    request_timeout_ms: Option<u64>,
    shutdown_timeout_ms: Option<u64>,
    #[serde(default)]
    tokens: Vec<RawToken>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawToken {
    name: String,
    role: String,
    sha256: String,
    tenant: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrometheus {
    url: Option<String>,
    timeout_ms: Option<u64>,
    max_response_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlertmanager {
    urls: Option<Vec<String>>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    api_url: Option<String>,
    tenant_label: Option<String>,
    timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    initial_backoff_ms: Option<u64>,
    max_backoff_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeader {
    retry_seconds: Option<u64>,
    check_seconds: Option<u64>,
    keepalive_seconds: Option<u32>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnforcement {
    enabled: Option<bool>,
    dry_run: Option<bool>,
    interval_seconds: Option<u64>,
    trailing_days: Option<u32>,
    max_lag_seconds: Option<u32>,
    completeness_lookback_seconds: Option<u32>,
    hysteresis_percent: Option<String>,
    resolved_resend_seconds: Option<u64>,
    api_url: Option<String>,
    tighten_factor: Option<String>,
    #[serde(default)]
    quota_profiles: BTreeMap<String, BTreeMap<String, String>>,
    ladder: Option<Vec<StepSpec>>,
    #[serde(default)]
    tenant_ladders: BTreeMap<String, Vec<StepSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceBook {
    seed: Option<RawPriceBookSeed>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPriceBookSeed {
    valid_from: String,
    currency: String,
    rates: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    filter: Option<String>,
}

// The validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseConfig,
    pub api: ApiConfig,
    pub prometheus: PrometheusConfig,
    pub alertmanager: AlertmanagerConfig,
    pub leader: Option<LeaderConfig>,
    /// The enforcer, when `[enforcement]` is configured and enabled.
    pub enforcement: Option<EnforcementConfig>,
    pub price_book_seed: Option<NewPriceBookVersion>,
    pub log: LogConfig,
    /// The collector, when `[collector]` is configured and enabled.
    pub collector: Option<CollectorSettings>,
}

/// The collector's validated settings: what the collector crate needs, plus the loop's.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    pub collector: CollectorConfig,
    pub schedule: Schedule,
    pub retry: RetryPolicy,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    pub url: SecretString,
    /// Direct (non-pooled) URL for migrations; the pooled URL when not set.
    pub migrate_url: SecretString,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    pub statement_timeout: Duration,
    pub migrate_timeout: Duration,
    pub max_retries: u32,
}

impl DatabaseConfig {
    pub fn store_config(&self) -> StoreConfig {
        StoreConfig {
            url: self.url.expose_secret().to_owned(),
            max_connections: self.max_connections,
            acquire_timeout: self.acquire_timeout,
            statement_timeout: self.statement_timeout,
            max_retries: self.max_retries,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    pub tokens: Vec<TokenConfig>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
}

#[derive(Debug, Clone)]
pub struct PrometheusConfig {
    pub url: Url,
    pub timeout: Duration,
    /// The largest response body the collector reads; a larger answer splits the batch.
    pub max_response_bytes: u64,
}

/// Below this a limit is surely a mistake of units (one window of a small cluster is ~100 KB).
const MIN_RESPONSE_BYTES: u64 = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct AlertmanagerConfig {
    pub urls: Vec<Url>,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl AlertmanagerConfig {
    pub fn settings(&self) -> AlertmanagerSettings {
        AlertmanagerSettings {
            urls: self.urls.clone(),
            request_timeout: self.timeout,
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        }
    }
}

/// Leader election: one daemon collects and enforces.
#[derive(Debug, Clone)]
pub struct LeaderConfig {
    /// How often a follower tries to take the lock.
    pub retry: Duration,
    /// How often the leader confirms it still holds the lock.
    pub check: Duration,
    /// Server-side TCP keepalive budget: a vanished leader host loses the lock within it.
    pub keepalive_seconds: u32,
    pub timeout: Duration,
}

/// The enforcer's validated settings.
#[derive(Debug, Clone)]
pub struct EnforcementConfig {
    pub settings: EnforcerSettings,
    pub interval: Duration,
    pub kubernetes: KubernetesSettings,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub filter: String,
}

/// The environment variables that override the file, and the keys they set.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("BUDGETD_DATABASE_URL", "database.url"),
    ("BUDGETD_MIGRATE_DATABASE_URL", "database.migrate_url"),
    ("BUDGETD_API_LISTEN", "api.listen"),
    ("BUDGETD_PROMETHEUS_URL", "prometheus.url"),
    ("BUDGETD_ALERTMANAGER_URL", "alertmanager.urls"),
    ("BUDGETD_LOG_FORMAT", "log.format"),
    ("BUDGETD_LOG", "log.filter"),
    ("BUDGETD_COLLECTOR_START", "collector.start"),
];

impl Config {
    /// Reads `path` (if given), applies overrides from `env`, and validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut raw = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
                })?;
                toml::from_str::<RawConfig>(&text).map_err(|e| toml_error(&text, e))?
            }
            None => RawConfig::default(),
        };
        for &(var, key) in ENV_OVERRIDES {
            if let Some(value) = env(var) {
                raw.set(key, value);
            }
        }
        let mut config = raw.validate()?;
        if let Some(token) = env("BUDGETD_BOOTSTRAP_ADMIN_TOKEN") {
            if token.len() < 16 {
                return Err(ConfigError::new(
                    "BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
            config.api.tokens.push(TokenConfig {
                name: "bootstrap-admin".to_owned(),
                role: Role::Admin,
                hash: TokenHash::of(&token),
            });
        }
        Ok(config)
    }
}

fn toml_error(text: &str, e: toml::de::Error) -> ConfigError {
    let key = match e.span() {
        Some(span) => {
            let line = text[..span.start].lines().count().max(1);
            format!("line {line}")
        }
        None => "file".to_owned(),
    };
    ConfigError::new(key, e.message().to_owned())
}

fn required<T>(value: Option<T>, key: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| ConfigError::new(key, "is required"))
}

fn millis(value: Option<u64>, key: &str) -> Result<Duration, ConfigError> {
    match required(value, key)? {
        0 => Err(ConfigError::new(key, "must be greater than 0")),
        ms if ms > 3_600_000 => Err(ConfigError::new(key, "must be at most one hour")),
        ms => Ok(Duration::from_millis(ms)),
    }
}

fn http_url(value: &str, key: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(value).map_err(|e| ConfigError::new(key, format!("{value:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ConfigError::new(key, "must be an http:// or https:// URL"));
    }
    Ok(url)
}

fn postgres_url(value: &str, key: &str) -> Result<SecretString, ConfigError> {
    // Never echo the URL: it may hold a password.
    let url = Url::parse(value).map_err(|e| ConfigError::new(key, format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::new(key, "must be a postgres:// URL"));
    }
    Ok(SecretString::from(value.to_owned()))
}

impl RawConfig {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "database.url" => self.database.url = Some(value),
            "database.migrate_url" => self.database.migrate_url = Some(value),
            "api.listen" => self.api.listen = Some(value),
            "prometheus.url" => self.prometheus.url = Some(value),
            "alertmanager.urls" => {
                self.alertmanager.urls =
                    Some(value.split(',').map(|s| s.trim().to_owned()).collect())
            }
            "log.format" => self.log.format = Some(value),
            "log.filter" => self.log.filter = Some(value),
            "collector.start" => {
                if let Some(c) = self.collector.as_mut() {
                    c.start = Some(value)
                }
            }
            other => unreachable!("no override for {other}"),
        }
    }

    fn validate(self) -> Result<Config, ConfigError> {
        let db = self.database;
        let url = postgres_url(&required(db.url, "database.url")?, "database.url")?;
        let migrate_url = match db.migrate_url {
            Some(u) => postgres_url(&u, "database.migrate_url")?,
            None => url.clone(),
        };
        let max_connections = required(db.max_connections, "database.max_connections")?;
        if !(1..=1000).contains(&max_connections) {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be in 1..=1000",
            ));
        }
        let max_retries = required(db.max_retries, "database.max_retries")?;
        if max_retries > 10 {
            return Err(ConfigError::new(
                "database.max_retries",
                "must be at most 10",
            ));
        }
        let database = DatabaseConfig {
            url,
            migrate_url,
            max_connections,
            acquire_timeout: millis(db.acquire_timeout_ms, "database.acquire_timeout_ms")?,
            statement_timeout: millis(db.statement_timeout_ms, "database.statement_timeout_ms")?,
            migrate_timeout: millis(db.migrate_timeout_ms, "database.migrate_timeout_ms")?,
            max_retries,
        };

        let listen = required(self.api.listen, "api.listen")?;
        let listen: SocketAddr = listen.parse().map_err(|_| {
            ConfigError::new(
                "api.listen",
                format!("{listen:?} is not an address such as 127.0.0.1:8080"),
            )
        })?;
        let mut tokens = Vec::new();
        for (i, t) in self.api.tokens.into_iter().enumerate() {
            let key = |field: &str| format!("api.tokens[{i}].{field}");
            if t.name.trim().is_empty() || t.name.len() > 64 {
                return Err(ConfigError::new(key("name"), "must be 1 to 64 characters"));
            }
            let hash = TokenHash::from_hex(&t.sha256).ok_or_else(|| {
                ConfigError::new(key("sha256"), "must be 64 hex digits (sha256 of the token)")
            })?;
            let tenant = t
                .tenant
                .map(|id| {
                    TenantId::parse(&id).map_err(|e| ConfigError::new(key("tenant"), e.message))
                })
                .transpose()?;
            let role =
                Role::parse(&t.role, tenant).map_err(|m| ConfigError::new(key("role"), m))?;
            if tokens.iter().any(|o: &TokenConfig| o.hash == hash) {
                return Err(ConfigError::new(
                    key("sha256"),
                    "the same token is configured twice",
                ));
            }
            tokens.push(TokenConfig {
                name: t.name,
                role,
                hash,
            });
        }
        let api = ApiConfig {
            listen,
            request_timeout: millis(self.api.request_timeout_ms, "api.request_timeout_ms")?,
            shutdown_timeout: millis(self.api.shutdown_timeout_ms, "api.shutdown_timeout_ms")?,
            tokens,
        };

        let prometheus = PrometheusConfig {
            url: http_url(
                &required(self.prometheus.url, "prometheus.url")?,
                "prometheus.url",
            )?,
            timeout: millis(self.prometheus.timeout_ms, "prometheus.timeout_ms")?,
            max_response_bytes: match self.prometheus.max_response_bytes {
                None => collector::source::DEFAULT_MAX_RESPONSE_BYTES,
                Some(bytes) if bytes < MIN_RESPONSE_BYTES => {
                    return Err(ConfigError::new(
                        "prometheus.max_response_bytes",
                        format!(
                            "must be at least {MIN_RESPONSE_BYTES} (1 MiB); the value is in bytes"
                        ),
                    ))
                }
                Some(bytes) => bytes,
            },
        };
        let am_urls = required(self.alertmanager.urls, "alertmanager.urls")?;
        if am_urls.is_empty() {
            return Err(ConfigError::new(
                "alertmanager.urls",
                "give at least one URL",
            ));
        }
        let alertmanager = AlertmanagerConfig {
            urls: am_urls
                .iter()
                .map(|u| http_url(u, "alertmanager.urls"))
                .collect::<Result<_, _>>()?,
            timeout: millis(self.alertmanager.timeout_ms, "alertmanager.timeout_ms")?,
            max_attempts: attempts(self.alertmanager.max_attempts, "alertmanager.max_attempts")?,
            initial_backoff: millis(
                self.alertmanager.initial_backoff_ms,
                "alertmanager.initial_backoff_ms",
            )?,
            max_backoff: millis(
                self.alertmanager.max_backoff_ms,
                "alertmanager.max_backoff_ms",
            )?,
        };
        Alertmanager::new(alertmanager.settings())
            .map_err(|e| ConfigError::new("alertmanager", e.to_string()))?;

        let price_book_seed = self.price_book.seed.map(validate_seed).transpose()?;
        let collector = match self.collector {
            Some(c) if c.enabled.unwrap_or(true) => Some(validate_collector(c, self.meters)?),
            _ => None,
        };
        // A seed without a rate for a configured meter would leave every window pending.
        if let (Some(seed), Some(c)) = (&price_book_seed, &collector) {
            if let Some(m) = c
                .collector
                .meters
                .iter()
                .find(|m| !seed.rates.contains_key(&m.name))
            {
                return Err(ConfigError::new(
                    format!("price_book.seed.rates.{}", m.name),
                    "every configured meter needs a rate",
                ));
            }
        }

        let enforcement = match self.enforcement {
            Some(e) if e.enabled.unwrap_or(true) => {
                let kubernetes = self.kubernetes.ok_or_else(|| {
                    ConfigError::new("kubernetes", "enforcement needs a [kubernetes] section")
                })?;
                Some(validate_enforcement(e, kubernetes)?)
            }
            _ => None,
        };
        let leader = if collector.is_some() || enforcement.is_some() {
            let l = self.leader.ok_or_else(|| {
                ConfigError::new(
                    "leader",
                    "collecting or enforcing needs a [leader] section (leader election)",
                )
            })?;
            let keepalive_seconds = required(l.keepalive_seconds, "leader.keepalive_seconds")?;
            if !(3..=600).contains(&keepalive_seconds) {
                return Err(ConfigError::new(
                    "leader.keepalive_seconds",
                    "must be in 3..=600",
                ));
            }
            Some(LeaderConfig {
                retry: seconds(l.retry_seconds, "leader.retry_seconds")?,
                check: seconds(l.check_seconds, "leader.check_seconds")?,
                keepalive_seconds,
                timeout: millis(l.timeout_ms, "leader.timeout_ms")?,
            })
        } else {
            None
        };

        let log = LogConfig {
            format: match self.log.format.as_deref().unwrap_or("text") {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    return Err(ConfigError::new(
                        "log.format",
                        format!("{other:?} is not one of \"text\", \"json\""),
                    ))
                }
            },
            filter: self.log.filter.unwrap_or_else(|| "info".to_owned()),
        };

        Ok(Config {
            database,
            api,
            prometheus,
            alertmanager,
            leader,
            enforcement,
            price_book_seed,
            log,
            collector,
        })
    }
}

fn attempts(value: Option<u32>, key: &str) -> Result<u32, ConfigError> {
    match required(value, key)? {
        n @ 1..=10 => Ok(n),
        _ => Err(ConfigError::new(key, "must be in 1..=10")),
    }
}

fn seconds(value: Option<u64>, key: &str) -> Result<Duration, ConfigError> {
    match required(value, key)? {
        s @ 1..=86_400 => Ok(Duration::from_secs(s)),
        _ => Err(ConfigError::new(key, "must be in 1..=86400 seconds")),
    }
}

fn decimal(value: Option<String>, key: &str) -> Result<Decimal, ConfigError> {
    let text = required(value, key)?;
    Decimal::from_str(text.trim())
        .map_err(|_| ConfigError::new(key, format!("{text:?} is not a decimal number")))
}

fn validate_enforcement(
    e: RawEnforcement,
    k: RawKubernetes,
) -> Result<EnforcementConfig, ConfigError> {
    let invalid = |err: ledger::Invalid| ConfigError::new(err.field, err.message);
    let mut profiles = BTreeMap::new();
    for (name, hard) in &e.quota_profiles {
        let key = format!("enforcement.quota_profiles.{name}");
        profiles.insert(name.clone(), parse_profile(&key, hard).map_err(invalid)?);
    }
    let factor = decimal(e.tighten_factor, "enforcement.tighten_factor")?;
    if factor <= Decimal::ZERO || factor >= Decimal::ONE {
        return Err(ConfigError::new(
            "enforcement.tighten_factor",
            "must be between 0 and 1 (exclusive)",
        ));
    }
    let default_ladder = match &e.ladder {
        Some(steps) => Ladder::parse("enforcement.ladder", steps, &profiles).map_err(invalid)?,
        None => Ladder::default_with(Tighten::Factor(factor)),
    };
    let mut ladders = BTreeMap::new();
    for (tenant, steps) in &e.tenant_ladders {
        let key = format!("enforcement.tenant_ladders.{tenant}");
        let id = TenantId::parse(tenant).map_err(|err| ConfigError::new(&key, err.message))?;
        ladders.insert(id, Ladder::parse(&key, steps, &profiles).map_err(invalid)?);
    }
    let hysteresis_percent = decimal(e.hysteresis_percent, "enforcement.hysteresis_percent")?;
    if hysteresis_percent < Decimal::ZERO || hysteresis_percent > Decimal::from(50) {
        return Err(ConfigError::new(
            "enforcement.hysteresis_percent",
            "must be in 0..=50 percentage points",
        ));
    }
    let trailing_days = required(e.trailing_days, "enforcement.trailing_days")?;
    if !(1..=92).contains(&trailing_days) {
        return Err(ConfigError::new(
            "enforcement.trailing_days",
            "must be in 1..=92",
        ));
    }
    let max_lag_seconds = required(e.max_lag_seconds, "enforcement.max_lag_seconds")?;
    if !(60..=7 * 86_400).contains(&max_lag_seconds) {
        return Err(ConfigError::new(
            "enforcement.max_lag_seconds",
            "must be in 60..=604800",
        ));
    }
    let lookback_seconds = required(
        e.completeness_lookback_seconds,
        "enforcement.completeness_lookback_seconds",
    )?;
    if !(60..=92 * 86_400).contains(&lookback_seconds) {
        return Err(ConfigError::new(
            "enforcement.completeness_lookback_seconds",
            "must be in 60..=7948800 (92 days)",
        ));
    }
    let interval = seconds(e.interval_seconds, "enforcement.interval_seconds")?;
    let api_url = e
        .api_url
        .map(|u| http_url(&u, "enforcement.api_url").map(|u| u.to_string()))
        .transpose()?;

    let mut kubernetes = KubernetesSettings::new(
        millis(k.timeout_ms, "kubernetes.timeout_ms")?,
        attempts(k.max_attempts, "kubernetes.max_attempts")?,
        millis(k.initial_backoff_ms, "kubernetes.initial_backoff_ms")?,
        millis(k.max_backoff_ms, "kubernetes.max_backoff_ms")?,
    )
    .with_tenant_label(required(k.tenant_label, "kubernetes.tenant_label")?);
    if let Some(url) = k.api_url {
        http_url(&url, "kubernetes.api_url")?;
        kubernetes = kubernetes.with_api_url(url);
    }
    Ok(EnforcementConfig {
        settings: EnforcerSettings {
            default_ladder,
            ladders,
            hysteresis_percent,
            dry_run: e.dry_run.unwrap_or(false),
            trailing_days,
            max_lag_seconds,
            lookback_seconds,
            resend_interval: interval,
            resolved_resend: seconds(
                e.resolved_resend_seconds,
                "enforcement.resolved_resend_seconds",
            )?,
            api_url,
        },
        interval,
        kubernetes,
    })
}

fn positive(value: Option<i64>, key: &str) -> Result<i64, ConfigError> {
    match required(value, key)? {
        v if v > 0 => Ok(v),
        _ => Err(ConfigError::new(key, "must be greater than 0")),
    }
}

fn validate_collector(
    c: RawCollector,
    raw_meters: Vec<RawMeter>,
) -> Result<CollectorSettings, ConfigError> {
    let from_collector = |e: collector::Error| match e {
        collector::Error::Config { field, message } => ConfigError::new(field, message),
        other => ConfigError::new("collector", other.to_string()),
    };
    let window = WindowLength::new(required(c.window_seconds, "collector.window_seconds")?)
        .map_err(from_collector)?;
    let settle = chrono::Duration::seconds(positive(c.settle_seconds, "collector.settle_seconds")?);
    let interval_seconds = positive(
        c.scrape_interval_seconds,
        "collector.scrape_interval_seconds",
    )?;
    if window.seconds() % interval_seconds != 0 {
        return Err(ConfigError::new(
            "collector.scrape_interval_seconds",
            "must divide collector.window_seconds",
        ));
    }
    let tenant_label = LabelName::parse(
        "collector.tenant_label",
        &required(c.tenant_label, "collector.tenant_label")?,
    )
    .map_err(from_collector)?;
    if c.scrape_jobs.is_empty() {
        return Err(ConfigError::new(
            "collector.scrape_jobs",
            "name the scrape jobs whose `up` series show complete data (e.g. kubelet, kube-state-metrics)",
        ));
    }
    let mut selector = BTreeMap::new();
    for (name, value) in c.match_labels {
        let key = format!("collector.match_labels.{name}");
        selector.insert(
            LabelName::parse(&key, &name).map_err(from_collector)?,
            value,
        );
    }
    let start = c
        .start
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    ConfigError::new("collector.start", format!("not an RFC 3339 time: {e}"))
                })
        })
        .transpose()?;
    let horizon =
        chrono::Duration::seconds(positive(c.horizon_seconds, "collector.horizon_seconds")?);
    let windows_per_batch = required(c.windows_per_batch, "collector.windows_per_batch")?;
    if !(1..=10_000).contains(&windows_per_batch) {
        return Err(ConfigError::new(
            "collector.windows_per_batch",
            "must be in 1..=10000",
        ));
    }
    let schedule = match c.schedule.as_deref() {
        Some(expr) => Schedule::cron("collector.schedule", expr).map_err(from_collector)?,
        None => Schedule::EveryWindow {
            len: window,
            settle,
        },
    };
    let retry = c
        .retry
        .ok_or_else(|| ConfigError::new("collector.retry", "is required"))?;
    let retry = RetryPolicy {
        max_attempts: match required(retry.max_attempts, "collector.retry.max_attempts")? {
            0 => {
                return Err(ConfigError::new(
                    "collector.retry.max_attempts",
                    "must be at least 1",
                ))
            }
            n => n,
        },
        initial_backoff: millis(
            retry.initial_backoff_ms,
            "collector.retry.initial_backoff_ms",
        )?,
        max_backoff: millis(retry.max_backoff_ms, "collector.retry.max_backoff_ms")?,
    };
    if retry.initial_backoff > retry.max_backoff {
        return Err(ConfigError::new(
            "collector.retry.initial_backoff_ms",
            "must not exceed collector.retry.max_backoff_ms",
        ));
    }
    if horizon <= chrono::Duration::seconds(window.seconds()) + settle {
        return Err(ConfigError::new(
            "collector.horizon_seconds",
            "must be longer than a window plus the settle delay",
        ));
    }
    if raw_meters.is_empty() {
        return Err(ConfigError::new(
            "meters",
            "the collector needs at least one [[meters]] entry",
        ));
    }
    let mut meters: Vec<Meter> = Vec::new();
    for (i, m) in raw_meters.into_iter().enumerate() {
        let key = |field: &str| format!("meters[{i}].{field}");
        let name = MeterName::parse(&key("name"), &m.name)
            .map_err(|e| ConfigError::new(key("name"), e.message))?;
        if meters.iter().any(|o| o.name == name) {
            return Err(ConfigError::new(
                key("name"),
                format!("meter {name} is defined twice"),
            ));
        }
        let units =
            ledger::money::parse_rate(&key("units_per_price_unit"), &m.units_per_price_unit)
                .map_err(|e| ConfigError::new(key("units_per_price_unit"), e.message))?;
        if units.is_zero() {
            return Err(ConfigError::new(
                key("units_per_price_unit"),
                "must be greater than 0",
            ));
        }
        meters.push(Meter {
            name,
            unit: UnitName::parse(&key("unit"), &m.unit)
                .map_err(|e| ConfigError::new(key("unit"), e.message))?,
            price_unit: UnitName::parse(&key("price_unit"), &m.price_unit)
                .map_err(|e| ConfigError::new(key("price_unit"), e.message))?,
            units_per_price_unit: units,
            query: QueryTemplate::parse(&key("query"), &m.query).map_err(from_collector)?,
        });
    }
    Ok(CollectorSettings {
        collector: CollectorConfig {
            window,
            settle,
            interval_seconds,
            tenant_label,
            selector,
            meters,
            scrape_jobs: c.scrape_jobs,
            start,
            horizon,
            windows_per_batch,
        },
        schedule,
        retry,
    })
}

fn validate_seed(seed: RawPriceBookSeed) -> Result<NewPriceBookVersion, ConfigError> {
    let key = |field: &str| format!("price_book.seed.{field}");
    let valid_from = DateTime::parse_from_rfc3339(&seed.valid_from)
        .map_err(|e| ConfigError::new(key("valid_from"), format!("not an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    let currency = Currency::parse("currency", &seed.currency)
        .map_err(|e| ConfigError::new(key("currency"), e.message))?;
    let mut rates = BTreeMap::new();
    for (meter, rate) in &seed.rates {
        let meter_name = MeterName::parse("meter", meter)
            .map_err(|e| ConfigError::new(key(&format!("rates.{meter}")), e.message))?;
        let rate = ledger::money::parse_rate("rate", rate)
            .map_err(|e| ConfigError::new(key(&format!("rates.{meter}")), e.message))?;
        rates.insert(meter_name, rate);
    }
    NewPriceBookVersion::new(valid_from, currency, rates)
        .map_err(|e| ConfigError::new(key(&e.field), e.message))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../examples/budgetd.toml");

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("budgetd-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("budgetd.toml");
        std::fs::write(&path, text).unwrap();
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let result = Config::load(Some(&path), |k| env.get(k).cloned());
        std::fs::remove_dir_all(&dir).ok();
        result
    }

    #[test]
    fn the_example_config_is_valid() {
        let config = load(EXAMPLE, &[]).unwrap();
        let seed = config.price_book_seed.unwrap();
        assert_eq!(seed.currency.code(), "EUR");
        assert!(seed.rates.len() >= 5);
    }

    #[test]
    fn the_response_size_limit_has_a_default() {
        let example = load(EXAMPLE, &[]).unwrap();
        assert_eq!(example.prometheus.max_response_bytes, 64 * 1024 * 1024);
        let text = EXAMPLE.replacen("max_response_bytes = 67108864\n", "", 1);
        assert_ne!(text, EXAMPLE);
        let config = load(&text, &[]).unwrap();
        assert_eq!(
            config.prometheus.max_response_bytes,
            collector::source::DEFAULT_MAX_RESPONSE_BYTES
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let config = load(
            EXAMPLE,
            &[
                (
                    "BUDGETD_DATABASE_URL",
                    "postgres://x@db.example:5432/ledger",
                ),
                ("BUDGETD_API_LISTEN", "127.0.0.1:9999"),
                ("BUDGETD_PROMETHEUS_URL", "http://prom.example:9090"),
                (
                    "BUDGETD_ALERTMANAGER_URL",
                    "http://am-0:9093, http://am-1:9093",
                ),
                ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "0123456789abcdef0123"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.database.url.expose_secret(),
            "postgres://x@db.example:5432/ledger"
        );
        assert_eq!(config.api.listen.port(), 9999);
        assert_eq!(config.prometheus.url.host_str(), Some("prom.example"));
        assert_eq!(config.alertmanager.urls.len(), 2);
        let bootstrap = config.api.tokens.last().unwrap();
        assert_eq!(
            (bootstrap.name.as_str(), &bootstrap.role),
            ("bootstrap-admin", &Role::Admin)
        );
        assert_eq!(bootstrap.hash, TokenHash::of("0123456789abcdef0123"));
    }

    #[test]
    fn problems_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            ("max_retries = 3\n", "", "database.max_retries"),
            (
                "statement_timeout_ms = 30000",
                "statement_timeout_ms = 0",
                "database.statement_timeout_ms",
            ),
            (
                "statement_timeout_ms = 30000",
                "",
                "database.statement_timeout_ms",
            ),
            (
                "listen = \"127.0.0.1:8080\"",
                "listen = \"localhost\"",
                "api.listen",
            ),
            (
                "timeout_ms = 10000",
                "timeout_ms = 10000\nsurprise = 1",
                "line",
            ),
            (
                "currency = \"EUR\"",
                "currency = \"EURO\"",
                "price_book.seed.currency",
            ),
            (
                "cpu = \"0.031\"",
                "cpu = \"-0.031\"",
                "price_book.seed.rates.cpu",
            ),
            (
                "url = \"http://127.0.0.1:9090\"",
                "url = \"ftp://x\"",
                "prometheus.url",
            ),
            (
                "max_response_bytes = 67108864",
                "max_response_bytes = 64",
                "prometheus.max_response_bytes",
            ),
        ];
        for (from, to, key) in cases {
            assert!(EXAMPLE.contains(from), "example lacks {from}");
            let text = EXAMPLE.replacen(from, to, 1);
            let err = load(&text, &[]).expect_err(to);
            assert!(err.key.starts_with(key), "{to}: {err}");
        }
        let err = load(EXAMPLE, &[("BUDGETD_DATABASE_URL", "mysql://x")]).unwrap_err();
        assert_eq!(err.key, "database.url");
        assert!(
            !err.message.contains("mysql://x"),
            "the URL may hold a secret"
        );
        let err = load(EXAMPLE, &[("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", "short")]).unwrap_err();
        assert_eq!(err.key, "BUDGETD_BOOTSTRAP_ADMIN_TOKEN");
    }

    #[test]
    fn enforcement_problems_name_the_key() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "tighten_factor = \"0.5\"",
                "tighten_factor = \"1.5\"",
                "enforcement.tighten_factor",
            ),
            (
                "hysteresis_percent = \"5\"",
                "hysteresis_percent = \"five\"",
                "enforcement.hysteresis_percent",
            ),
            (
                "trailing_days = 7",
                "trailing_days = 0",
                "enforcement.trailing_days",
            ),
            (
                "interval_seconds = 60",
                "interval_seconds = 0",
                "enforcement.interval_seconds",
            ),
            (
                "max_lag_seconds = 1800",
                "max_lag_seconds = 1",
                "enforcement.max_lag_seconds",
            ),
            (
                "tenant_label = \"tenant\"\ntimeout_ms = 5000",
                "tenant_label = \"tenant\"\ntimeout_ms = 0",
                "kubernetes.timeout_ms",
            ),
            (
                "keepalive_seconds = 15",
                "keepalive_seconds = 1",
                "leader.keepalive_seconds",
            ),
            ("retry_seconds = 5", "", "leader.retry_seconds"),
            (
                "max_attempts = 3\ninitial_backoff_ms = 200\nmax_backoff_ms = 2000",
                "max_attempts = 0\ninitial_backoff_ms = 200\nmax_backoff_ms = 2000",
                "alertmanager.max_attempts",
            ),
            (
                "api_url = \"http://127.0.0.1:8001\"",
                "api_url = \"file:///x\"",
                "kubernetes.api_url",
            ),
        ];
        for (from, to, key) in cases {
            assert!(EXAMPLE.contains(from), "example lacks {from}");
            let text = EXAMPLE.replacen(from, to, 1);
            let err = load(&text, &[]).expect_err(to);
            assert_eq!(err.key, *key, "{to}: {err}");
        }
        let ladder = |step: &str| format!("{EXAMPLE}\n[[enforcement.ladder]]\n{step}\n");
        let ok = load(
            &ladder("at = 90\non = \"actual\"\naction = \"suspend\"\napproval = \"required\""),
            &[],
        )
        .unwrap();
        let steps = ok.enforcement.unwrap().settings.default_ladder;
        assert_eq!(
            steps.steps().len(),
            1,
            "a configured ladder replaces the default"
        );
        for (step, key) in [
            (
                "at = 90\non = \"spend\"\naction = \"notify\"",
                "enforcement.ladder[0].on",
            ),
            (
                "at = 90\non = \"actual\"\naction = \"tighten_quota\"\nprofile = \"nope\"",
                "enforcement.ladder[0].profile",
            ),
            (
                "at = 0\non = \"actual\"\naction = \"notify\"",
                "enforcement.ladder[0].at",
            ),
        ] {
            assert_eq!(load(&ladder(step), &[]).unwrap_err().key, key, "{step}");
        }
        let tenant = format!("{EXAMPLE}\n[enforcement.tenant_ladders]\nBad_Id = [{{ at = 100, on = \"actual\", action = \"suspend\" }}]\n");
        assert_eq!(
            load(&tenant, &[]).unwrap_err().key,
            "enforcement.tenant_ladders.Bad_Id"
        );
        // Enforcement without a Kubernetes section, or collecting without leader election.
        let start = EXAMPLE.find("[kubernetes]").unwrap();
        let end = start
            + EXAMPLE[start..].find("max_backoff_ms = 5000").unwrap()
            + "max_backoff_ms = 5000".len();
        let no_kube = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
        assert_eq!(load(&no_kube, &[]).unwrap_err().key, "kubernetes");
        let start = EXAMPLE.find("[leader]").unwrap();
        let end =
            start + EXAMPLE[start..].find("timeout_ms = 5000").unwrap() + "timeout_ms = 5000".len();
        let no_leader = format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..]);
        assert_eq!(load(&no_leader, &[]).unwrap_err().key, "leader");
    }

    #[test]
    fn tokens_are_validated() {
        let token = |role: &str, tenant: &str| {
            format!("{EXAMPLE}\n[[api.tokens]]\nname = \"t\"\nrole = \"{role}\"\nsha256 = \"{}\"\n{tenant}\n", "ab".repeat(32))
        };
        assert!(load(&token("viewer", ""), &[]).is_ok());
        assert!(load(&token("tenant", "tenant = \"acme\""), &[]).is_ok());
        assert_eq!(
            load(&token("tenant", ""), &[]).unwrap_err().key,
            "api.tokens[0].role"
        );
        assert_eq!(
            load(&token("viewer", "tenant = \"acme\""), &[])
                .unwrap_err()
                .key,
            "api.tokens[0].role"
        );
        assert_eq!(
            load(&token("root", ""), &[]).unwrap_err().key,
            "api.tokens[0].role"
        );
        assert_eq!(
            load(&token("tenant", "tenant = \"Bad\""), &[])
                .unwrap_err()
                .key,
            "api.tokens[0].tenant"
        );
        let bad_hash = format!(
            "{EXAMPLE}\n[[api.tokens]]\nname = \"t\"\nrole = \"viewer\"\nsha256 = \"xyz\"\n"
        );
        assert_eq!(
            load(&bad_hash, &[]).unwrap_err().key,
            "api.tokens[0].sha256"
        );
    }
}
