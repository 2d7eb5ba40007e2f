//! Configuration: an optional TOML file, overridden by environment variables ([`ENV`]), validated
//! at start-up into typed settings. Each component owns its sections, their defaults and their
//! validation (`ledger::config`: `[database]`, `[price_book]`, `[lifecycle]`; `collector::config`:
//! `[collector]`, `[[meters]]`, `[prometheus]`; `enforcer::config`: `[enforcement]`,
//! `[kubernetes]`, `[alertmanager]`; `oidc`: `[oidc]`); the daemon owns `[api]`, `[leader]` and `[log]`, composes
//! the sections, applies the environment and checks what spans sections. Every problem names
//! its key, and its line when the file has it. `budgetd config show` prints the result.

mod file;
mod show;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use collector::config::{CollectorSection, CollectorSettings, MeterSection, PrometheusSection};
use enforcer::config::{
    AlertmanagerSection, EnforcementSection, EnforcementSettings, KubernetesSection,
};
use ledger::config::{
    seconds, timeout_millis, within, DatabaseSection, DatabaseSettings, LifecycleSection,
    LifecycleSettings, PriceBookSection,
};
use ledger::price_book::{NewPriceBookVersion, RateLimits};
use ledger::tenant::TenantId;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::auth::{Role, TokenHash};
use crate::oidc::{OidcSection, OidcSettings};
use file::Origin;

/// A configuration problem: the key, the line of the file it is on (when it is there), and
/// what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: {}{key}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::at(key, None, message)
    }

    fn at(key: impl Into<String>, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            key: key.into(),
            line,
            message: message.into(),
        }
    }
}

/// An environment variable budgetd reads.
#[derive(Debug)]
pub struct EnvVar {
    pub name: &'static str,
    /// The key it sets, if it overrides one.
    pub key: Option<&'static str>,
    /// Comma-separated into a list.
    list: bool,
    /// Only when the file has the key's section (setting it must not enable a component).
    needs_section: bool,
    pub help: &'static str,
}

const fn var(name: &'static str, key: &'static str, help: &'static str) -> EnvVar {
    EnvVar {
        name,
        key: Some(key),
        list: false,
        needs_section: false,
        help,
    }
}

/// Every environment variable budgetd reads: the source of `--help`, `config show`'s markers
/// and the README's list (a test compares them).
pub const ENV: &[EnvVar] = &[
    EnvVar {
        name: "BUDGETD_CONFIG",
        key: None,
        list: false,
        needs_section: false,
        help: "the configuration file (as --config); without one, defaults and the environment",
    },
    var("BUDGETD_DATABASE_URL", "database.url", "database.url"),
    var(
        "BUDGETD_MIGRATE_DATABASE_URL",
        "database.migrate_url",
        "database.migrate_url (default: the effective database.url)",
    ),
    var("BUDGETD_API_LISTEN", "api.listen", "api.listen"),
    var("BUDGETD_PROMETHEUS_URL", "prometheus.url", "prometheus.url"),
    EnvVar {
        list: true,
        ..var(
            "BUDGETD_ALERTMANAGER_URL",
            "alertmanager.urls",
            "alertmanager.urls, comma-separated",
        )
    },
    var("BUDGETD_LOG", "log.filter", "log.filter (RUST_LOG syntax)"),
    var(
        "BUDGETD_LOG_FORMAT",
        "log.format",
        "log.format (text or json)",
    ),
    EnvVar {
        needs_section: true,
        ..var(
            "BUDGETD_COLLECTOR_START",
            "collector.start",
            "collector.start, when the file has a [collector] section",
        )
    },
    EnvVar {
        needs_section: true,
        ..var(
            "BUDGETD_GRAFANA_TOKEN",
            "grafana.token",
            "grafana.token (a service account token), when the file has a [grafana] section; never printed",
        )
    },
    EnvVar {
        name: "BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
        key: None,
        list: false,
        needs_section: false,
        help: "an admin token named bootstrap-admin until the first admin token is created through the API (16+ characters; never printed)",
    },
    EnvVar {
        name: "BUDGETD_PSEUDONYMISATION_KEY",
        key: None,
        list: false,
        needs_section: false,
        help: "the HMAC key of offboarded tenants' pseudonyms (32+ characters; never printed); \
               without it, a key generated once into the database",
    },
];

// The file's shape: each section is its owner's type. Unknown keys are errors, so a typo never
// silently falls back to a default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    database: DatabaseSection,
    #[serde(default)]
    api: ApiSection,
    #[serde(default)]
    leader: LeaderSection,
    #[serde(default)]
    log: LogSection,
    #[serde(default)]
    price_book: PriceBookSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    collector: Option<CollectorSection>,
    #[serde(default)]
    prometheus: PrometheusSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    enforcement: Option<EnforcementSection>,
    #[serde(default)]
    kubernetes: KubernetesSection,
    #[serde(default)]
    alertmanager: AlertmanagerSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    meters: Option<Vec<MeterSection>>,
    #[serde(default)]
    lifecycle: LifecycleSection,
    #[serde(default)]
    oidc: OidcSection,
    #[serde(skip_serializing_if = "Option::is_none")]
    kafka: Option<relay::KafkaSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grafana: Option<grafana::GrafanaSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    archive: Option<archive::ArchiveSection>,
}

/// `[api]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct ApiSection {
    listen: String,
    request_timeout_ms: u64,
    shutdown_timeout_ms: u64,
    max_connections: u32,
    header_timeout_ms: u64,
    body_timeout_ms: u64,
    readiness_timeout_ms: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tokens: Vec<TokenSection>,
}

impl Default for ApiSection {
    fn default() -> Self {
        ApiSection {
            listen: "127.0.0.1:8080".to_owned(),
            request_timeout_ms: 10_000,
            shutdown_timeout_ms: 10_000,
            max_connections: 512,
            header_timeout_ms: 5_000,
            body_timeout_ms: 5_000,
            readiness_timeout_ms: 800,
            tokens: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenSection {
    name: String,
    role: String,
    sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

/// `[leader]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct LeaderSection {
    retry_seconds: u64,
    check_seconds: u64,
    keepalive_seconds: u32,
    timeout_ms: u64,
}

impl Default for LeaderSection {
    fn default() -> Self {
        LeaderSection {
            retry_seconds: 5,
            check_seconds: 5,
            keepalive_seconds: 15,
            timeout_ms: 5_000,
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct LogSection {
    format: String,
    filter: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: "text".to_owned(),
            filter: "info".to_owned(),
        }
    }
}

// The validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub database: DatabaseSettings,
    pub api: ApiConfig,
    pub leader: LeaderConfig,
    pub log: LogConfig,
    pub price_book_seed: Option<NewPriceBookVersion>,
    /// The largest rate each meter may have in a new price-book version.
    pub rate_limits: RateLimits,
    /// The collector, when `[collector]` is there and enabled.
    pub collector: Option<CollectorSettings>,
    /// The enforcer, when `[enforcement]` is there and enabled.
    pub enforcement: Option<EnforcementSettings>,
    /// The cluster (`[kubernetes]`): the enforcer's actuator and the lifecycle blueprint.
    pub kubernetes: enforcer::kubernetes::KubernetesSettings,
    /// Data residencies and quota profiles tenants may have (`[lifecycle]`).
    pub lifecycle: LifecycleSettings,
    /// OIDC issuers whose JWTs are accepted (`[oidc]`).
    pub oidc: OidcSettings,
    /// The Kafka relay, when `[kafka]` is there.
    pub kafka: Option<relay::KafkaSettings>,
    /// The Grafana reconciler, when `[grafana]` is there.
    pub grafana: Option<grafana::GrafanaSettings>,
    /// Where `budgetd archive` puts closed months, when `[archive]` is there.
    pub archive: Option<archive::ArchiveSettings>,
    /// `BUDGETD_PSEUDONYMISATION_KEY`: the key of offboarded tenants' pseudonyms; without it, the
    /// database's per-installation key.
    pub pseudonymisation_key: Option<secrecy::SecretString>,
    /// What it was made of, for `config show`.
    source: Source,
}

#[derive(Debug, Clone)]
struct Source {
    path: Option<PathBuf>,
    file: File,
    origin: Origin,
    bootstrap_token: bool,
    /// `enforcement.api_url` when it is not set.
    default_api_url: Url,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// The most connections served at once, before the open-file limit lowers it (see
    /// `serve::ConnectionLimit`).
    pub max_connections: u32,
    /// A connection must send a complete request head within this of opening, or of its
    /// previous response.
    pub header_timeout: Duration,
    /// A request's body must arrive within this of its head.
    pub body_timeout: Duration,
    /// The longest `/readyz` waits for the database.
    pub readiness_timeout: Duration,
    pub tokens: Vec<TokenConfig>,
    /// `BUDGETD_BOOTSTRAP_ADMIN_TOKEN`: an admin token until the first admin token is created
    /// through the API.
    pub bootstrap_token: Option<TokenHash>,
}

#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub name: String,
    pub role: Role,
    pub hash: TokenHash,
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

impl Config {
    /// Reads `path` (if given), applies overrides from `env`, fills in the defaults and
    /// validates.
    pub fn load(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new("--config", format!("cannot read {}: {e}", path.display()))
            })?,
            None => String::new(),
        };
        let (file, origin) = file::read::<File>(&text, &env)?;
        let bootstrap = env("BUDGETD_BOOTSTRAP_ADMIN_TOKEN");
        let pseudonymisation_key = env("BUDGETD_PSEUDONYMISATION_KEY");
        let mut config = validate(file, origin, path)?;
        if let Some(key) = pseudonymisation_key {
            if key.len() < 32 {
                return Err(ConfigError::new(
                    "BUDGETD_PSEUDONYMISATION_KEY",
                    "must be at least 32 characters",
                ));
            }
            config.pseudonymisation_key = Some(key.into());
        }
        if let Some(token) = bootstrap {
            if token.len() < 16 {
                return Err(ConfigError::new(
                    "BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
            let hash = TokenHash::of(&token);
            if config.api.tokens.iter().any(|t| t.hash == hash) {
                return Err(ConfigError::new(
                    "BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
                    "is also a token of [[api.tokens]]",
                ));
            }
            config.api.bootstrap_token = Some(hash);
            config.source.bootstrap_token = true;
        }
        Ok(config)
    }

    /// The effective configuration as TOML that is itself a valid configuration file.
    pub fn show(&self) -> String {
        show::render(self)
    }

    /// What an operator should know about this configuration at start: values budgetd
    /// derived that may not be what was meant.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let s = &self.source;
        if self.enforcement.is_some()
            && s.file
                .enforcement
                .as_ref()
                .is_some_and(|e| e.api_url.is_none())
            && self.api.listen.ip().is_unspecified()
        {
            warnings.push(format!(
                "enforcement.api_url is not set: alert links use {}, derived from api.listen {}, which only this host can open; set enforcement.api_url to the API's public URL",
                s.default_api_url, self.api.listen
            ));
        }
        if s.file.database.migrate_url.is_some()
            && s.origin.from_env.contains_key("database.url")
            && !s.origin.from_env.contains_key("database.migrate_url")
        {
            warnings.push(
                "database.url comes from BUDGETD_DATABASE_URL but database.migrate_url from the file: migrations and the leader lock use the file's database (set BUDGETD_MIGRATE_DATABASE_URL, or remove migrate_url to follow database.url)"
                    .to_owned(),
            );
        }
        warnings
    }
}

/// The API's URL for links, derived from where it listens. An unspecified address (0.0.0.0,
/// [::]) names no host: loopback stands in for it, reachable from this host only (behind an
/// ingress or a proxy, `enforcement.api_url` must be set).
pub fn derived_api_url(listen: SocketAddr) -> Url {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Url::parse(&format!("http://{}", SocketAddr::new(ip, listen.port())))
        .expect("an address makes an http URL")
}

fn validate(file: File, origin: Origin, path: Option<&Path>) -> Result<Config, ConfigError> {
    let invalid = |e| origin.invalid(e);
    let database = file.database.validate().map_err(invalid)?;
    let api = validate_api(&file.api, &origin)?;
    let leader = validate_leader(&file.leader).map_err(invalid)?;
    let log = validate_log(&file.log, &origin)?;
    let price_book = file.price_book.validate().map_err(invalid)?;
    let price_book_seed = price_book.seed;
    let lifecycle = file.lifecycle.validate().map_err(invalid)?;
    let oidc = file.oidc.validate().map_err(invalid)?;
    let kafka = file
        .kafka
        .as_ref()
        .map(relay::KafkaSection::validate)
        .transpose()
        .map_err(invalid)?;
    let grafana = file
        .grafana
        .as_ref()
        .map(grafana::GrafanaSection::validate)
        .transpose()
        .map_err(invalid)?;
    let archive = file
        .archive
        .as_ref()
        .map(archive::ArchiveSection::validate)
        .transpose()
        .map_err(invalid)?;
    let collector = match &file.collector {
        Some(c) if c.enabled => Some(
            c.validate(file.meters.as_deref(), &file.prometheus)
                .map_err(invalid)?,
        ),
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
            return Err(origin.error(
                format!("price_book.seed.rates.{}", m.name),
                "every meter the collector prices needs a rate",
            ));
        }
    }
    let default_api_url = derived_api_url(api.listen);
    let kubernetes = file.kubernetes.validate().map_err(invalid)?;
    let enforcement = match &file.enforcement {
        Some(e) if e.enabled => Some(
            e.validate(&file.kubernetes, &file.alertmanager, &default_api_url)
                .map_err(invalid)?,
        ),
        _ => None,
    };
    Ok(Config {
        database,
        api,
        leader,
        log,
        price_book_seed,
        rate_limits: price_book.limits,
        collector,
        enforcement,
        kubernetes,
        lifecycle,
        oidc,
        kafka,
        grafana,
        archive,
        pseudonymisation_key: None,
        source: Source {
            path: path.map(Path::to_owned),
            file,
            origin,
            bootstrap_token: false,
            default_api_url,
        },
    })
}

fn validate_api(api: &ApiSection, origin: &Origin) -> Result<ApiConfig, ConfigError> {
    let listen: SocketAddr = api.listen.parse().map_err(|_| {
        origin.error(
            "api.listen",
            format!("{:?} is not an address such as 127.0.0.1:8080", api.listen),
        )
    })?;
    let mut tokens: Vec<TokenConfig> = Vec::new();
    for (i, t) in api.tokens.iter().enumerate() {
        let key = |field: &str| format!("api.tokens[{i}].{field}");
        if t.name.trim().is_empty() || t.name.len() > 64 {
            return Err(origin.error(key("name"), "must be 1 to 64 characters"));
        }
        if t.name == crate::auth::BOOTSTRAP_NAME {
            return Err(origin.error(key("name"), "is the bootstrap token's name"));
        }
        let hash = TokenHash::from_hex(&t.sha256).ok_or_else(|| {
            origin.error(key("sha256"), "must be 64 hex digits (sha256 of the token)")
        })?;
        let tenant = t
            .tenant
            .as_deref()
            .map(|id| TenantId::parse(id).map_err(|e| origin.error(key("tenant"), e.message)))
            .transpose()?;
        let role = Role::parse(&t.role, tenant).map_err(|m| origin.error(key("role"), m))?;
        if tokens.iter().any(|o| o.hash == hash) {
            return Err(origin.error(key("sha256"), "the same token is configured twice"));
        }
        tokens.push(TokenConfig {
            name: t.name.clone(),
            role,
            hash,
        });
    }
    let invalid = |e| origin.invalid(e);
    let request_timeout =
        timeout_millis(api.request_timeout_ms, "api.request_timeout_ms").map_err(invalid)?;
    let body_timeout =
        timeout_millis(api.body_timeout_ms, "api.body_timeout_ms").map_err(invalid)?;
    // A body still arriving when the request's deadline passes would get 503, not 408.
    if body_timeout > request_timeout {
        return Err(origin.error(
            "api.body_timeout_ms",
            format!(
                "{} is more than api.request_timeout_ms ({}), which bounds the whole request",
                api.body_timeout_ms, api.request_timeout_ms
            ),
        ));
    }
    Ok(ApiConfig {
        listen,
        request_timeout,
        shutdown_timeout: timeout_millis(api.shutdown_timeout_ms, "api.shutdown_timeout_ms")
            .map_err(invalid)?,
        max_connections: within(api.max_connections, 1..=65_536, "api.max_connections")
            .map_err(invalid)?,
        header_timeout: timeout_millis(api.header_timeout_ms, "api.header_timeout_ms")
            .map_err(invalid)?,
        body_timeout,
        readiness_timeout: timeout_millis(api.readiness_timeout_ms, "api.readiness_timeout_ms")
            .map_err(invalid)?,
        tokens,
        bootstrap_token: None,
    })
}

fn validate_leader(l: &LeaderSection) -> Result<LeaderConfig, ledger::Invalid> {
    Ok(LeaderConfig {
        retry: seconds(l.retry_seconds, 1..=86_400, "leader.retry_seconds")?,
        check: seconds(l.check_seconds, 1..=86_400, "leader.check_seconds")?,
        keepalive_seconds: within(l.keepalive_seconds, 3..=600, "leader.keepalive_seconds")?,
        timeout: timeout_millis(l.timeout_ms, "leader.timeout_ms")?,
    })
}

fn validate_log(log: &LogSection, origin: &Origin) -> Result<LogConfig, ConfigError> {
    let format = match log.format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(origin.error(
                "log.format",
                format!("{other:?} is not one of \"text\", \"json\""),
            ))
        }
    };
    tracing_subscriber::EnvFilter::try_new(&log.filter)
        .map_err(|e| origin.error("log.filter", format!("not a log filter: {e}")))?;
    Ok(LogConfig {
        format,
        filter: log.filter.clone(),
    })
}

#[cfg(test)]
mod tests;
