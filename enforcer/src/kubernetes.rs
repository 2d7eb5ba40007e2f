//! The Kubernetes actuator: [`ClusterActuator`] on `kube::Client`. It reads a tenant's
//! footprint (namespaces by tenant label, the `budgetd-quota`, Deployments, StatefulSets, their
//! autoscalers, CronJobs, the suspension label) and writes [`Change`]s: server-side apply of the
//! quota with the `budgetd` field manager, merge patches of everything else. Every request has a
//! deadline, bounded retries with jittered exponential backoff for transient answers (409, 429,
//! 5xx, timeouts, connection errors) and metrics.

use std::future::Future;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use ledger::tenant::TenantId;
use serde_json::json;
use tracing::Instrument;

use crate::cluster::{
    ApplyReport, Change, ClusterActuator, ClusterError, Footprint, NamespaceFootprint, QuotaHard,
    Workload, WorkloadKind, FIELD_MANAGER, QUOTA_NAME, SUSPENDED_LABEL,
};

/// The namespace label that names a namespace's tenant, unless configured otherwise.
pub const DEFAULT_TENANT_LABEL: &str = "tenant";

/// How budgetd reaches the Kubernetes API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesSettings {
    /// `None`: inferred from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster
    /// service account. An explicit URL is used as is, without credentials (`kubectl proxy`,
    /// tests).
    pub api_url: Option<String>,
    /// Namespaces labelled `<tenant_label>=<tenant id>` belong to that tenant.
    pub tenant_label: String,
    /// The deadline of one request (connect, send and read), retries not included.
    pub request_timeout: Duration,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay before the first retry; it doubles per retry, up to `max_backoff`, jittered.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl KubernetesSettings {
    /// Settings with the inferred API URL and the default tenant label; the limits are explicit.
    pub fn new(
        request_timeout: Duration,
        max_attempts: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
    ) -> Self {
        KubernetesSettings {
            api_url: None,
            tenant_label: DEFAULT_TENANT_LABEL.to_owned(),
            request_timeout,
            max_attempts,
            initial_backoff,
            max_backoff,
        }
    }

    pub fn with_api_url(mut self, url: impl Into<String>) -> Self {
        self.api_url = Some(url.into());
        self
    }

    pub fn with_tenant_label(mut self, label: impl Into<String>) -> Self {
        self.tenant_label = label.into();
        self
    }

    fn validate(&self) -> Result<(), ClusterError> {
        let invalid = |what: &str| Err(ClusterError::Client(format!("settings: {what}")));
        if !is_label_key(&self.tenant_label) {
            return invalid("tenant_label must be a Kubernetes label key");
        }
        if self.request_timeout.is_zero() {
            return invalid("request_timeout must be positive");
        }
        if self.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if self.max_backoff < self.initial_backoff {
            return invalid("max_backoff must not be less than initial_backoff");
        }
        Ok(())
    }

    /// The delay before retry number `retry` (1 for the first), between half and all of the
    /// capped exponential delay.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        exp / 2 + exp.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

/// `[prefix/]name` with a DNS subdomain prefix and a name of at most 63 alphanumerics, `-`, `_`
/// and `.`, alphanumeric at both ends. Checked because the key goes into a label selector.
pub(crate) fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.starts_with(|c: char| c.is_ascii_alphanumeric())
                    && part.ends_with(|c: char| c.is_ascii_alphanumeric())
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

/// The requests budgetd makes, as the bounded `op` metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    ListNamespaces,
    GetQuota,
    ListDeployments,
    ListStatefulSets,
    ListHpas,
    ListCronJobs,
    ApplyQuota,
    DeleteQuota,
    Scale,
    PatchCronJob,
    LabelNamespace,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::ListNamespaces => "list_namespaces",
            Op::GetQuota => "get_quota",
            Op::ListDeployments => "list_deployments",
            Op::ListStatefulSets => "list_statefulsets",
            Op::ListHpas => "list_hpas",
            Op::ListCronJobs => "list_cronjobs",
            Op::ApplyQuota => "apply_quota",
            Op::DeleteQuota => "delete_quota",
            Op::Scale => "scale",
            Op::PatchCronJob => "patch_cronjob",
            Op::LabelNamespace => "label_namespace",
        }
    }
}

/// One attempt's result, classified for retrying and for the `outcome` metric label.
enum Attempt<T> {
    Ok(T),
    NotFound,
    /// Worth another attempt.
    Transient {
        outcome: &'static str,
        error: ClusterError,
    },
    /// Another attempt gets the same answer.
    Final {
        outcome: &'static str,
        error: ClusterError,
    },
}

fn classify<T>(
    result: Result<Result<T, kube::Error>, tokio::time::error::Elapsed>,
    op: Op,
    target: &str,
    timeout: Duration,
) -> Attempt<T> {
    let error = match result {
        Ok(Ok(value)) => return Attempt::Ok(value),
        Err(_) => {
            return Attempt::Transient {
                outcome: "timeout",
                error: ClusterError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            }
        }
        Ok(Err(error)) => error,
    };
    let unavailable = |message: String| ClusterError::Unavailable {
        attempts: 1,
        message,
    };
    match error {
        kube::Error::Api(response) => {
            let message = format!(
                "{} {}: {}",
                response.code, response.reason, response.message
            );
            match response.code {
                404 => Attempt::NotFound,
                409 => Attempt::Transient {
                    outcome: "conflict",
                    error: unavailable(message),
                },
                429 => Attempt::Transient {
                    outcome: "throttled",
                    error: unavailable(message),
                },
                code if code >= 500 => Attempt::Transient {
                    outcome: "server_error",
                    error: unavailable(message),
                },
                _ => Attempt::Final {
                    outcome: "refused",
                    error: ClusterError::Refused {
                        what: format!("{} {target}", op.as_str()),
                        message,
                    },
                },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) if timed_out(&error) => {
            Attempt::Transient {
                outcome: "timeout",
                error: ClusterError::Timeout {
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => Attempt::Transient {
            outcome: "unreachable",
            error: unavailable(error.to_string()),
        },
        other => Attempt::Final {
            outcome: "client",
            error: ClusterError::Client(other.to_string()),
        },
    }
}

/// Whether the client's own connect/read/write timeouts (the same limit as the deadline)
/// ended the request: they race the deadline and are classified alike.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

/// The Kubernetes API through `kube::Client`.
#[derive(Clone)]
pub struct KubernetesActuator {
    client: kube::Client,
    settings: KubernetesSettings,
}

impl KubernetesActuator {
    /// Connects as `settings` say: the explicit URL, or the inferred kubeconfig / in-cluster
    /// configuration. Nothing is requested yet.
    pub async fn new(settings: KubernetesSettings) -> Result<Self, ClusterError> {
        settings.validate()?;
        let config = match &settings.api_url {
            Some(url) => {
                let uri = url
                    .parse()
                    .map_err(|e| ClusterError::Client(format!("api_url {url:?}: {e}")))?;
                kube::Config::new(uri)
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| ClusterError::Client(format!("kubernetes configuration: {e}")))?,
        };
        Self::from_config(config, settings)
    }

    /// Connects with a prepared configuration (its cluster URL and credentials are used;
    /// `settings.api_url` is not). The configuration's timeouts are replaced by
    /// `settings.request_timeout`.
    pub fn from_config(
        mut config: kube::Config,
        settings: KubernetesSettings,
    ) -> Result<Self, ClusterError> {
        settings.validate()?;
        config.connect_timeout = Some(settings.request_timeout);
        config.read_timeout = Some(settings.request_timeout);
        config.write_timeout = Some(settings.request_timeout);
        let client = kube::Client::try_from(config)
            .map_err(|e| ClusterError::Client(format!("kubernetes client: {e}")))?;
        Ok(KubernetesActuator { client, settings })
    }

    pub fn settings(&self) -> &KubernetesSettings {
        &self.settings
    }

    /// The client, for other writers to the same cluster (the lifecycle blueprint).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// Runs one request with a deadline and retries; `Ok(None)` is a 404.
    async fn call<T, F, Fut>(
        &self,
        op: Op,
        target: &str,
        request: F,
    ) -> Result<Option<T>, ClusterError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let timeout = self.settings.request_timeout;
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, request()).await;
            metrics::histogram!("budgetd_kubernetes_request_duration_seconds", "op" => op.as_str())
                .record(started.elapsed().as_secs_f64());
            let classified = classify(result, op, target, timeout);
            let outcome = match &classified {
                Attempt::Ok(_) => "ok",
                Attempt::NotFound => "not_found",
                Attempt::Transient { outcome, .. } | Attempt::Final { outcome, .. } => outcome,
            };
            metrics::counter!(
                "budgetd_kubernetes_requests_total",
                "op" => op.as_str(),
                "outcome" => outcome,
            )
            .increment(1);
            match classified {
                Attempt::Ok(value) => return Ok(Some(value)),
                Attempt::NotFound => return Ok(None),
                Attempt::Final { error, .. } => {
                    tracing::warn!(op = op.as_str(), target, %error, "kubernetes request refused");
                    return Err(error);
                }
                Attempt::Transient { error, .. } if attempt >= self.settings.max_attempts => {
                    tracing::warn!(op = op.as_str(), target, attempt, %error, "kubernetes request failed; giving up");
                    return Err(match error {
                        ClusterError::Unavailable { message, .. } => ClusterError::Unavailable {
                            attempts: attempt,
                            message,
                        },
                        other => other,
                    });
                }
                Attempt::Transient { error, .. } => {
                    let delay = self.settings.backoff(attempt);
                    tracing::debug!(op = op.as_str(), target, attempt, ?delay, %error, "kubernetes request failed; retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
            }
        }
    }

    /// A list request; a 404 (the namespace went away) is an empty list.
    async fn list<K>(
        &self,
        op: Op,
        api: &Api<K>,
        params: &ListParams,
        target: &str,
    ) -> Result<Vec<K>, ClusterError>
    where
        K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        let list = self.call(op, target, || api.list(params)).await?;
        Ok(list.map(|l| l.items).unwrap_or_default())
    }

    async fn observe_namespace(
        &self,
        namespace: &Namespace,
    ) -> Result<(String, NamespaceFootprint), ClusterError> {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let ns = name.as_str();
        let all = ListParams::default();

        let quotas: Api<ResourceQuota> = Api::namespaced(self.client.clone(), ns);
        let quota_target = format!("{ns}/resourcequota/{QUOTA_NAME}");
        let quota = self
            .call(Op::GetQuota, &quota_target, || quotas.get(QUOTA_NAME))
            .await?
            .map(|q| {
                q.spec
                    .and_then(|s| s.hard)
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(resource, quantity)| (resource, quantity.0))
                    .collect::<QuotaHard>()
            });

        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let statefulsets: Api<StatefulSet> = Api::namespaced(self.client.clone(), ns);
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(self.client.clone(), ns);
        let cronjobs: Api<CronJob> = Api::namespaced(self.client.clone(), ns);

        let mut workloads = Vec::new();
        for d in self
            .list(
                Op::ListDeployments,
                &deployments,
                &all,
                &format!("{ns}/deployments"),
            )
            .await?
        {
            let replicas = d.spec.as_ref().and_then(|s| s.replicas);
            workloads.push(workload(
                WorkloadKind::Deployment,
                d.metadata.name,
                replicas,
            ));
        }
        for s in self
            .list(
                Op::ListStatefulSets,
                &statefulsets,
                &all,
                &format!("{ns}/statefulsets"),
            )
            .await?
        {
            let replicas = s.spec.as_ref().and_then(|s| s.replicas);
            workloads.push(workload(
                WorkloadKind::StatefulSet,
                s.metadata.name,
                replicas,
            ));
        }
        workloads.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));

        // Several autoscalers on one workload is a misconfiguration; the first by name is named.
        let mut hpa_list = self
            .list(
                Op::ListHpas,
                &hpas,
                &all,
                &format!("{ns}/horizontalpodautoscalers"),
            )
            .await?;
        hpa_list.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        for hpa in &hpa_list {
            let (Some(hpa_name), Some(spec)) = (&hpa.metadata.name, &hpa.spec) else {
                continue;
            };
            let target = &spec.scale_target_ref;
            let in_apps = target
                .api_version
                .as_deref()
                .is_none_or(|v| v.starts_with("apps/"));
            let kind = match target.kind.as_str() {
                "Deployment" => WorkloadKind::Deployment,
                "StatefulSet" => WorkloadKind::StatefulSet,
                _ => continue,
            };
            if let Some(w) = workloads
                .iter_mut()
                .find(|w| in_apps && w.kind == kind && w.name == target.name && w.hpa.is_none())
            {
                w.hpa = Some(hpa_name.clone());
            }
        }

        let cronjobs = self
            .list(Op::ListCronJobs, &cronjobs, &all, &format!("{ns}/cronjobs"))
            .await?
            .into_iter()
            .filter_map(|c| {
                let suspend = c.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false);
                c.metadata.name.map(|name| (name, suspend))
            })
            .collect();

        let suspended_label = namespace
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SUSPENDED_LABEL))
            .is_some_and(|v| v == "true");

        Ok((
            name,
            NamespaceFootprint {
                quota,
                workloads,
                cronjobs,
                suspended_label,
            },
        ))
    }

    /// Applies one change; `Ok(false)` if its object does not exist.
    async fn apply_one(&self, change: &Change) -> Result<bool, ClusterError> {
        let target = change.target();
        // Merge patches are recorded under budgetd's name too, so `managedFields` shows who
        // changed the field.
        let update = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let found = match change {
            Change::SetQuota { namespace, hard } => {
                let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
                let params = PatchParams::apply(FIELD_MANAGER).force();
                let body = Patch::Apply(json!({
                    "apiVersion": "v1",
                    "kind": "ResourceQuota",
                    "metadata": { "name": QUOTA_NAME, "namespace": namespace },
                    "spec": { "hard": hard },
                }));
                self.call(Op::ApplyQuota, &target, || {
                    api.patch(QUOTA_NAME, &params, &body)
                })
                .await?
                .is_some()
            }
            Change::DeleteQuota { namespace } => {
                let api: Api<ResourceQuota> = Api::namespaced(self.client.clone(), namespace);
                let params = DeleteParams::default();
                // Already gone is what was asked for.
                self.call(Op::DeleteQuota, &target, || api.delete(QUOTA_NAME, &params))
                    .await?;
                true
            }
            Change::Scale {
                namespace,
                kind,
                name,
                replicas,
            } => {
                let body = Patch::Merge(json!({ "spec": { "replicas": replicas } }));
                match kind {
                    WorkloadKind::Deployment => {
                        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                        self.call(Op::Scale, &target, || api.patch_scale(name, &update, &body))
                            .await?
                            .is_some()
                    }
                    WorkloadKind::StatefulSet => {
                        let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                        self.call(Op::Scale, &target, || api.patch_scale(name, &update, &body))
                            .await?
                            .is_some()
                    }
                }
            }
            Change::SuspendCronJob {
                namespace,
                name,
                suspend,
            } => {
                let api: Api<CronJob> = Api::namespaced(self.client.clone(), namespace);
                let body = Patch::Merge(json!({ "spec": { "suspend": suspend } }));
                self.call(Op::PatchCronJob, &target, || {
                    api.patch(name, &update, &body)
                })
                .await?
                .is_some()
            }
            Change::LabelSuspended {
                namespace,
                suspended,
            } => {
                let api: Api<Namespace> = Api::all(self.client.clone());
                // null removes the label in a merge patch
                let value = if *suspended {
                    json!("true")
                } else {
                    json!(null)
                };
                let body =
                    Patch::Merge(json!({ "metadata": { "labels": { SUSPENDED_LABEL: value } } }));
                self.call(Op::LabelNamespace, &target, || {
                    api.patch(namespace, &update, &body)
                })
                .await?
                .is_some()
            }
        };
        Ok(found)
    }
}

fn workload(kind: WorkloadKind, name: Option<String>, replicas: Option<i32>) -> Workload {
    Workload {
        kind,
        name: name.unwrap_or_default(),
        // the API server's default when the field is absent
        replicas: replicas.unwrap_or(1),
        hpa: None,
    }
}

#[async_trait]
impl ClusterActuator for KubernetesActuator {
    async fn observe(&self, tenant: &TenantId) -> Result<Footprint, ClusterError> {
        let span = tracing::info_span!("kubernetes_observe", tenant = %tenant);
        async {
            let namespaces: Api<Namespace> = Api::all(self.client.clone());
            // TenantId is a DNS-1123 label and the key was validated: nothing else gets in.
            let selector = format!("{}={tenant}", self.settings.tenant_label);
            let params = ListParams::default().labels(&selector);
            let listed = self
                .list(Op::ListNamespaces, &namespaces, &params, &selector)
                .await?;
            let mut footprint = Footprint::default();
            for namespace in &listed {
                let (name, ns) = self
                    .observe_namespace(namespace)
                    .instrument(tracing::debug_span!(
                        "namespace",
                        namespace = namespace.metadata.name.as_deref().unwrap_or_default()
                    ))
                    .await?;
                footprint.namespaces.insert(name, ns);
            }
            tracing::debug!(namespaces = footprint.namespaces.len(), "observed");
            Ok(footprint)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, changes: &[Change]) -> Result<ApplyReport, ClusterError> {
        let mut report = ApplyReport::default();
        for change in changes {
            let span = tracing::info_span!(
                "kubernetes_change",
                namespace = change.namespace(),
                object = %change.target(),
            );
            let found = self.apply_one(change).instrument(span.clone()).await?;
            span.in_scope(|| {
                if found {
                    tracing::info!(%change, "applied");
                } else {
                    tracing::warn!(%change, "object no longer exists; skipped");
                }
            });
            if !found {
                report.missing.push(change.to_string());
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KubernetesSettings {
        KubernetesSettings::new(
            Duration::from_secs(5),
            4,
            Duration::from_millis(100),
            Duration::from_secs(2),
        )
    }

    #[test]
    fn label_keys_are_checked_because_they_go_into_a_selector() {
        for ok in ["tenant", "budgetd.io/tenant", "team_a.b-c", "a"] {
            assert!(is_label_key(ok), "{ok}");
        }
        for bad in [
            "",
            "tenant,other",
            "tenant=x",
            "-tenant",
            "Budgetd.io/tenant",
            "/x",
            "a/",
            "x y",
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }

    #[test]
    fn settings_without_limits_are_rejected() {
        assert!(settings().validate().is_ok());
        let mut s = settings();
        s.max_attempts = 0;
        assert!(s.validate().is_err());
        let mut s = settings();
        s.request_timeout = Duration::ZERO;
        assert!(s.validate().is_err());
        assert!(settings().with_tenant_label("a,b").validate().is_err());
        let mut s = settings();
        s.max_backoff = Duration::from_millis(1);
        assert!(s.validate().is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let s = settings();
        for retry in 1..20 {
            let exp = Duration::from_millis(100)
                .saturating_mul(1 << (retry - 1).min(16))
                .min(Duration::from_secs(2));
            let d = s.backoff(retry);
            assert!(d >= exp / 2 && d <= exp, "{retry}: {d:?}");
        }
    }

    fn api_error(code: u16) -> Result<Result<(), kube::Error>, tokio::time::error::Elapsed> {
        Ok(Err(kube::Error::Api(kube::core::ErrorResponse {
            status: "Failure".into(),
            message: "m".into(),
            reason: "r".into(),
            code,
        })))
    }

    #[test]
    fn answers_are_classified_for_retrying() {
        let t = Duration::from_secs(1);
        let outcome = |code| match classify(api_error(code), Op::Scale, "ns/x", t) {
            Attempt::Ok(()) => "ok",
            Attempt::NotFound => "not_found",
            Attempt::Transient { outcome, .. } => outcome,
            Attempt::Final { outcome, .. } => outcome,
        };
        assert_eq!(outcome(404), "not_found");
        assert_eq!(outcome(409), "conflict");
        assert_eq!(outcome(429), "throttled");
        assert_eq!(outcome(500), "server_error");
        assert_eq!(outcome(503), "server_error");
        assert_eq!(outcome(403), "refused");
        assert_eq!(outcome(422), "refused");
        assert!(matches!(
            classify(api_error(403), Op::Scale, "ns/x", t),
            Attempt::Final {
                error: ClusterError::Refused { .. },
                ..
            }
        ));
    }
}
