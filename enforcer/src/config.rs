//! The enforcer's configuration: `[enforcement]` (ladders, quota profiles, the forecast and
//! staleness limits), `[kubernetes]` and `[alertmanager]`. Each section is a serde type whose
//! `Default` holds every default (see `ledger::config`); [`EnforcementSection::validate`] turns
//! the three into [`EnforcementSettings`].

use std::collections::BTreeMap;
use std::time::Duration;

use ledger::config::{
    attempts, backoff, decimal, http_url, required, seconds, timeout_millis, within, ConfigUrl,
};
use ledger::tenant::TenantId;
use ledger::Invalid;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::alertmanager::{Alertmanager, AlertmanagerSettings};
use crate::cluster::Tighten;
use crate::executor::EnforcerSettings;
use crate::kubernetes::{is_label_key, KubernetesSettings};
use crate::policy::{parse_profile, Ladder, StepSpec};

/// `[enforcement]`: present (and not `enabled = false`) means the daemon enforces.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnforcementSection {
    pub enabled: bool,
    pub dry_run: bool,
    pub interval_seconds: u64,
    pub trailing_days: u32,
    pub max_lag_seconds: u32,
    pub completeness_lookback_seconds: u32,
    /// Percentage points, as a decimal string.
    pub hysteresis_percent: String,
    pub resolved_resend_seconds: u64,
    /// The API's public URL for links in alerts; derived from `api.listen` when not set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<ConfigUrl>,
    /// The default ladder's quota factor, as a decimal string.
    pub tighten_factor: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub quota_profiles: BTreeMap<String, BTreeMap<String, String>>,
    /// Replaces the built-in ladder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ladder: Option<Vec<StepSpec>>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tenant_ladders: BTreeMap<String, Vec<StepSpec>>,
}

impl Default for EnforcementSection {
    fn default() -> Self {
        EnforcementSection {
            enabled: true,
            dry_run: false,
            interval_seconds: 60,
            trailing_days: 7,
            max_lag_seconds: 1800,
            completeness_lookback_seconds: 3600,
            hysteresis_percent: "5".to_owned(),
            resolved_resend_seconds: 900,
            api_url: None,
            tighten_factor: "0.5".to_owned(),
            quota_profiles: BTreeMap::new(),
            ladder: None,
            tenant_ladders: BTreeMap::new(),
        }
    }
}

/// `[kubernetes]`: the API server the enforcer acts through.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct KubernetesSection {
    /// Without it: the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster account.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_url: Option<ConfigUrl>,
    pub tenant_label: String,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        KubernetesSection {
            api_url: None,
            tenant_label: crate::kubernetes::DEFAULT_TENANT_LABEL.to_owned(),
            timeout_ms: 5_000,
            max_attempts: 4,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
        }
    }
}

/// `[alertmanager]`: every replica gets every alert.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertmanagerSection {
    /// Required when enforcing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<ConfigUrl>>,
    pub timeout_ms: u64,
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for AlertmanagerSection {
    fn default() -> Self {
        AlertmanagerSection {
            urls: None,
            timeout_ms: 5_000,
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 2_000,
        }
    }
}

/// Everything the enforcer runs with.
#[derive(Debug, Clone)]
pub struct EnforcementSettings {
    pub settings: EnforcerSettings,
    /// One cycle (and one re-send of the active alerts) per interval.
    pub interval: Duration,
    pub kubernetes: KubernetesSettings,
    pub alertmanager: AlertmanagerSettings,
}

impl KubernetesSection {
    pub fn validate(&self) -> Result<KubernetesSettings, Invalid> {
        if !is_label_key(&self.tenant_label) {
            return Err(Invalid::new(
                "kubernetes.tenant_label",
                "must be a Kubernetes label key",
            ));
        }
        let (initial_backoff, max_backoff) =
            backoff("kubernetes", self.initial_backoff_ms, self.max_backoff_ms)?;
        let mut settings = KubernetesSettings::new(
            timeout_millis(self.timeout_ms, "kubernetes.timeout_ms")?,
            attempts(self.max_attempts, "kubernetes.max_attempts")?,
            initial_backoff,
            max_backoff,
        )
        .with_tenant_label(&self.tenant_label);
        if let Some(url) = &self.api_url {
            http_url(url, "kubernetes.api_url")?;
            settings = settings.with_api_url(url.expose());
        }
        Ok(settings)
    }

    pub fn notes(&self) -> Vec<String> {
        match self.api_url {
            None => vec![
                "api_url: not set, so the kubeconfig (KUBECONFIG, ~/.kube/config) or the in-cluster service account"
                    .to_owned(),
            ],
            Some(_) => Vec::new(),
        }
    }
}

impl AlertmanagerSection {
    pub fn validate(&self) -> Result<AlertmanagerSettings, Invalid> {
        let urls = required(self.urls.as_ref(), "alertmanager.urls")?;
        if urls.is_empty() {
            return Err(Invalid::new("alertmanager.urls", "give at least one URL"));
        }
        let (initial_backoff, max_backoff) =
            backoff("alertmanager", self.initial_backoff_ms, self.max_backoff_ms)?;
        let settings = AlertmanagerSettings {
            urls: urls
                .iter()
                .enumerate()
                .map(|(i, u)| http_url(u, &format!("alertmanager.urls[{i}]")))
                .collect::<Result<_, _>>()?,
            request_timeout: timeout_millis(self.timeout_ms, "alertmanager.timeout_ms")?,
            max_attempts: attempts(self.max_attempts, "alertmanager.max_attempts")?,
            initial_backoff,
            max_backoff,
        };
        // What the client itself refuses (a URL it cannot send to), found at start-up.
        Alertmanager::new(settings.clone())
            .map_err(|e| Invalid::new("alertmanager.urls", e.to_string()))?;
        Ok(settings)
    }

    pub fn notes(&self) -> Vec<String> {
        match self.urls {
            None => vec!["urls: required when enforcing".to_owned()],
            Some(_) => Vec::new(),
        }
    }
}

impl EnforcementSection {
    /// The enforcer's settings; `default_api_url` is the API's URL derived from where it
    /// listens, for when `api_url` is not set.
    pub fn validate(
        &self,
        kubernetes: &KubernetesSection,
        alertmanager: &AlertmanagerSection,
        default_api_url: &Url,
    ) -> Result<EnforcementSettings, Invalid> {
        let mut profiles = BTreeMap::new();
        for (name, hard) in &self.quota_profiles {
            let key = format!("enforcement.quota_profiles.{name}");
            profiles.insert(name.clone(), parse_profile(&key, hard)?);
        }
        let factor = decimal(&self.tighten_factor, "enforcement.tighten_factor")?;
        if factor <= Decimal::ZERO || factor >= Decimal::ONE {
            return Err(Invalid::new(
                "enforcement.tighten_factor",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        let default_ladder = match &self.ladder {
            Some(steps) => Ladder::parse("enforcement.ladder", steps, &profiles)?,
            None => Ladder::default_with(Tighten::Factor(factor)),
        };
        let mut ladders = BTreeMap::new();
        for (tenant, steps) in &self.tenant_ladders {
            let key = format!("enforcement.tenant_ladders.{tenant}");
            let id = TenantId::parse(tenant).map_err(|e| Invalid::new(&key, e.message))?;
            ladders.insert(id, Ladder::parse(&key, steps, &profiles)?);
        }
        let hysteresis_percent =
            decimal(&self.hysteresis_percent, "enforcement.hysteresis_percent")?;
        if hysteresis_percent < Decimal::ZERO || hysteresis_percent > Decimal::from(50) {
            return Err(Invalid::new(
                "enforcement.hysteresis_percent",
                "must be in 0..=50 percentage points",
            ));
        }
        let interval = seconds(
            self.interval_seconds,
            1..=86_400,
            "enforcement.interval_seconds",
        )?;
        let api_url = match &self.api_url {
            Some(url) => http_url(url, "enforcement.api_url")?,
            None => default_api_url.clone(),
        };
        Ok(EnforcementSettings {
            settings: EnforcerSettings {
                default_ladder,
                ladders,
                hysteresis_percent,
                dry_run: self.dry_run,
                trailing_days: within(self.trailing_days, 1..=92, "enforcement.trailing_days")?,
                max_lag_seconds: within(
                    self.max_lag_seconds,
                    60..=7 * 86_400,
                    "enforcement.max_lag_seconds",
                )?,
                lookback_seconds: within(
                    self.completeness_lookback_seconds,
                    60..=92 * 86_400,
                    "enforcement.completeness_lookback_seconds",
                )?,
                resend_interval: interval,
                resolved_resend: seconds(
                    self.resolved_resend_seconds,
                    1..=86_400,
                    "enforcement.resolved_resend_seconds",
                )?,
                api_url: Some(api_url.to_string()),
            },
            interval,
            kubernetes: kubernetes.validate()?,
            alertmanager: alertmanager.validate()?,
        })
    }

    /// What `config show` says about the keys that are not set; `default_api_url` as for
    /// [`EnforcementSection::validate`].
    pub fn notes(&self, default_api_url: &Url) -> Vec<String> {
        let mut notes = Vec::new();
        if self.api_url.is_none() {
            notes.push(format!(
                "api_url: not set, so {default_api_url} (derived from api.listen; set it when the API is reached through an ingress or proxy)"
            ));
        }
        if self.ladder.is_none() {
            notes.push(
                "ladder: not set, so the built-in one: forecast >= 100% notify warning; actual >= 80% notify warning; \
                 actual >= 100% notify critical and tighten_quota by tighten_factor; actual >= 120% suspend (approval required)"
                    .to_owned(),
            );
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alertmanager() -> AlertmanagerSection {
        AlertmanagerSection {
            urls: Some(vec![ConfigUrl::new("http://am:9093")]),
            ..Default::default()
        }
    }

    fn api() -> Url {
        Url::parse("http://127.0.0.1:8080").unwrap()
    }

    #[test]
    fn defaults_validate_and_the_api_url_is_derived_unless_set() {
        let e = EnforcementSection::default()
            .validate(&KubernetesSection::default(), &alertmanager(), &api())
            .unwrap();
        assert_eq!(
            e.settings.api_url.as_deref(),
            Some("http://127.0.0.1:8080/")
        );
        assert_eq!(e.interval, Duration::from_secs(60));
        assert_eq!(e.kubernetes.api_url, None, "kubeconfig or in-cluster");
        assert_eq!(e.kubernetes.tenant_label, "tenant");
        assert_eq!(e.alertmanager.max_attempts, 3);
        assert_eq!(e.settings.default_ladder.steps().len(), 5);
        let set = EnforcementSection {
            api_url: Some(ConfigUrl::new("https://budgetd.example")),
            ..Default::default()
        };
        let e = set
            .validate(&KubernetesSection::default(), &alertmanager(), &api())
            .unwrap();
        assert_eq!(
            e.settings.api_url.as_deref(),
            Some("https://budgetd.example/")
        );
    }

    #[test]
    fn problems_name_the_key() {
        let err = EnforcementSection::default()
            .validate(
                &KubernetesSection::default(),
                &AlertmanagerSection::default(),
                &api(),
            )
            .unwrap_err();
        assert_eq!(err.field, "alertmanager.urls");
        let bad_label = KubernetesSection {
            tenant_label: "not a label!".to_owned(),
            ..Default::default()
        };
        assert_eq!(
            bad_label.validate().unwrap_err().field,
            "kubernetes.tenant_label"
        );
        let bad_url = AlertmanagerSection {
            urls: Some(vec![
                ConfigUrl::new("http://am-0:9093"),
                ConfigUrl::new("ftp://am-1"),
            ]),
            ..Default::default()
        };
        assert_eq!(
            bad_url.validate().unwrap_err().field,
            "alertmanager.urls[1]"
        );
    }
}
