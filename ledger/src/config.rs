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
use crate::price_book::{MeterName, NewPriceBookVersion, RateLimits, DEFAULT_MAX_RATE};
use crate::store::StoreConfig;

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
}
