//! `[grafana]`: where the tenants' folders are kept, how Grafana reaches the ledger, and how
//! the reconciler is paced (`[grafana.reconciler]`). Without the section no Grafana reconciler
//! runs.

use std::time::Duration;

use ledger::config::{required, timeout_millis, within, ReconcilerSection};
use ledger::Invalid;
use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};
use url::Url;

/// `[grafana]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrafanaSection {
    /// Grafana's base URL, e.g. `https://grafana.example.com` (a sub-path is kept). Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A service account token with the Admin role (folders, teams, data sources,
    /// permissions); better from `BUDGETD_GRAFANA_TOKEN`. Required. Shown as `***`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "masked")]
    pub token: Option<String>,
    pub request_timeout_ms: u64,
    /// Attempts per request, the first included (connection errors, timeouts, 429, 5xx).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Let only the tenant's team query its data source (the data source permissions of
    /// Grafana Enterprise and Cloud). Grafana OSS has no such permissions: set `false` there,
    /// knowing that any Grafana user who learns a data source's uid can query it (the database
    /// still shows that data source only its own tenant's rows).
    pub restrict_datasource_access: bool,
    /// `[grafana.datasource]`: the ledger as Grafana reaches it.
    pub datasource: DatasourceSection,
    /// `[grafana.reconciler]`: as `[lifecycle.reconciler]`.
    pub reconciler: ReconcilerSection,
}

impl Default for GrafanaSection {
    fn default() -> Self {
        GrafanaSection {
            url: None,
            token: None,
            request_timeout_ms: 10_000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
            restrict_datasource_access: true,
            datasource: DatasourceSection::default(),
            reconciler: ReconcilerSection::default(),
        }
    }
}

/// `[grafana.datasource]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasourceSection {
    /// `host:port` of the ledger's Postgres as Grafana reaches it (Neon: the endpoint's host,
    /// not the pooler: the tenant logins are Postgres roles). Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The ledger's database name. Required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// `disable`, `require`, `verify-ca` or `verify-full`.
    pub sslmode: String,
}

impl Default for DatasourceSection {
    fn default() -> Self {
        DatasourceSection {
            host: None,
            database: None,
            sslmode: "require".to_owned(),
        }
    }
}

fn masked<S: Serializer>(token: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match token {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

/// The validated `[grafana]`.
#[derive(Clone)]
pub struct GrafanaSettings {
    pub url: Url,
    pub token: SecretString,
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub restrict_datasource_access: bool,
    pub datasource: DatasourceSettings,
    pub runner: lifecycle::RunnerSettings,
}

impl std::fmt::Debug for GrafanaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrafanaSettings")
            .field("url", &self.url.as_str())
            .field("token", &"***")
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field(
                "restrict_datasource_access",
                &self.restrict_datasource_access,
            )
            .field("datasource", &self.datasource)
            .finish_non_exhaustive()
    }
}

/// The validated `[grafana.datasource]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasourceSettings {
    pub host: String,
    pub database: String,
    pub sslmode: String,
}

const SSLMODES: [&str; 4] = ["disable", "require", "verify-ca", "verify-full"];

impl GrafanaSection {
    pub fn validate(&self) -> Result<GrafanaSettings, Invalid> {
        let raw = required(self.url.clone(), "grafana.url")?;
        let url = Url::parse(raw.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                Invalid::new(
                    "grafana.url",
                    format!("{raw:?} is not an http(s) URL such as https://grafana.example.com"),
                )
            })?;
        let token = required(
            self.token.clone(),
            "grafana.token (or BUDGETD_GRAFANA_TOKEN)",
        )?;
        if token.trim().is_empty() || token.chars().any(char::is_control) {
            return Err(Invalid::new(
                "grafana.token",
                "must be a service account token (one line)",
            ));
        }
        let request_timeout =
            timeout_millis(self.request_timeout_ms, "grafana.request_timeout_ms")?;
        let max_attempts = within(self.max_attempts, 1..=10, "grafana.max_attempts")?;
        let initial_backoff =
            timeout_millis(self.initial_backoff_ms, "grafana.initial_backoff_ms")?;
        let max_backoff = timeout_millis(self.max_backoff_ms, "grafana.max_backoff_ms")?;
        if max_backoff < initial_backoff {
            return Err(Invalid::new(
                "grafana.max_backoff_ms",
                "must be at least initial_backoff_ms",
            ));
        }
        let ds = &self.datasource;
        let host = required(ds.host.clone(), "grafana.datasource.host")?;
        let port = host.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>()));
        if !matches!(port, Some((h, Ok(p))) if p > 0 && !h.is_empty() && !h.contains('/')) {
            return Err(Invalid::new(
                "grafana.datasource.host",
                format!("{host:?} is not host:port (the ledger's Postgres as Grafana reaches it, e.g. db.example.com:5432; not a URL)"),
            ));
        }
        let database = required(ds.database.clone(), "grafana.datasource.database")?;
        if database.is_empty() || database.len() > 63 || database.chars().any(char::is_control) {
            return Err(Invalid::new(
                "grafana.datasource.database",
                "must be a database name (1-63 characters)",
            ));
        }
        if !SSLMODES.contains(&ds.sslmode.as_str()) {
            return Err(Invalid::new(
                "grafana.datasource.sslmode",
                format!("{:?} is not one of {}", ds.sslmode, SSLMODES.join(", ")),
            ));
        }
        let timing = self.reconciler.validate_as("grafana.reconciler")?;
        Ok(GrafanaSettings {
            url,
            token: SecretString::from(token),
            request_timeout,
            max_attempts,
            initial_backoff,
            max_backoff,
            restrict_datasource_access: self.restrict_datasource_access,
            datasource: DatasourceSettings {
                host,
                database,
                sslmode: ds.sslmode.clone(),
            },
            runner: lifecycle::blueprint::runner_settings(&timing),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> GrafanaSection {
        GrafanaSection {
            url: Some("https://grafana.example.com/sub".into()),
            token: Some("glsa_secret".into()),
            datasource: DatasourceSection {
                host: Some("db.example.com:5432".into()),
                database: Some("budgetd".into()),
                sslmode: "require".into(),
            },
            ..GrafanaSection::default()
        }
    }

    #[test]
    fn a_complete_section_validates_and_never_shows_the_token() {
        let settings = section().validate().unwrap();
        assert_eq!(settings.url.as_str(), "https://grafana.example.com/sub");
        assert_eq!(settings.datasource.sslmode, "require");
        assert!(!format!("{settings:?}").contains("glsa_secret"));
        let shown = serde_json::to_string(&section()).unwrap();
        assert!(
            !shown.contains("glsa_secret") && shown.contains("***"),
            "{shown}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        type Change = Box<dyn Fn(&mut GrafanaSection)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.url = None), "grafana.url"),
            (
                Box::new(|s| s.url = Some("grafana:3000".into())),
                "grafana.url",
            ),
            (Box::new(|s| s.token = None), "grafana.token"),
            (
                Box::new(|s| s.request_timeout_ms = 10),
                "grafana.request_timeout_ms",
            ),
            (Box::new(|s| s.max_attempts = 0), "grafana.max_attempts"),
            (
                Box::new(|s| s.max_backoff_ms = 100),
                "grafana.max_backoff_ms",
            ),
            (
                Box::new(|s| s.datasource.host = None),
                "grafana.datasource.host",
            ),
            (
                Box::new(|s| s.datasource.host = Some("postgres://db:5432".into())),
                "grafana.datasource.host",
            ),
            (
                Box::new(|s| s.datasource.database = None),
                "grafana.datasource.database",
            ),
            (
                Box::new(|s| s.datasource.sslmode = "prefer".into()),
                "grafana.datasource.sslmode",
            ),
            (
                Box::new(|s| s.reconciler.concurrency = 0),
                "grafana.reconciler.concurrency",
            ),
        ];
        for (change, key) in cases {
            let mut s = section();
            change(&mut s);
            let e = s.validate().unwrap_err();
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
    }
}
