//! The Kubernetes blueprint: the objects every tenant namespace gets (rendered from
//! [`template`]s), applied by server-side apply with the `budgetd` field manager only where the
//! cluster differs ([`Provisioner`]), and the [`BlueprintReconciler`] that keeps each tenant's
//! cluster footprint in line with its lifecycle state.
//!
//! Every object budgetd applies carries the ownership labels [`MANAGED_BY_LABEL`]`=budgetd` and
//! [`TENANT_LABEL`]`=<tenant>`; only objects carrying both are ever deleted.

mod provisioner;
mod reconciler;
mod store_source;
pub mod template;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ledger::tenant::{DataResidency, TenantId};

pub use provisioner::{DeleteReport, DesiredObject, Observed, Provisioner, Snapshot, Step};
pub use reconciler::{BlueprintReconciler, Desired, TenantSource};
pub use store_source::StoreSource;
pub use template::{Blueprint, TemplateError};

/// `app.kubernetes.io/managed-by=budgetd` marks what budgetd provisioned.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "budgetd";
/// `budgetd.io/tenant=<tenant id>`: whose it is.
pub const TENANT_LABEL: &str = "budgetd.io/tenant";
/// On namespaces: the label the collector attributes usage by and the enforcer selects by.
pub const NAMESPACE_TENANT_LABEL: &str = "tenant";
/// On namespaces: the tenant's data residency.
pub const RESIDENCY_LABEL: &str = "budgetd.io/residency";
/// The incident-isolation NetworkPolicy.
pub const ISOLATION_POLICY: &str = "budgetd-isolation";
/// The ResourceQuota the enforcer tightens (`enforcer::cluster::QUOTA_NAME`).
pub const QUOTA_NAME: &str = "budgetd-quota";
/// On the quota: the profile values the blueprint last applied (`cpu=2,memory=4Gi`).
pub const QUOTA_PROFILE_ANNOTATION: &str = "budgetd.io/quota-profile";
/// The server-side-apply field manager of every blueprint write.
pub const FIELD_MANAGER: &str = "budgetd";
/// The enforcer's field manager (`enforcer::cluster::FIELD_MANAGER`): the quota limits it owns
/// are its tightening (or its restore), which the blueprint keeps.
pub const ENFORCER_FIELD_MANAGER: &str = "budgetd-enforcer";
/// The ingress controller's namespace unless configured.
pub const DEFAULT_INGRESS_NAMESPACE: &str = "ingress-nginx";
/// The ClusterRole the owner group is bound to unless configured.
pub const DEFAULT_NAMESPACE_ROLE: &str = "edit";

/// What a tenant should have in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSpec {
    pub tenant: TenantId,
    /// DNS-1123 labels, unique across tenants.
    pub namespaces: Vec<String>,
    /// `None`: no RoleBinding.
    pub owner_group: Option<String>,
    pub residency: DataResidency,
    /// The quota profile: resource → quantity.
    pub quota: BTreeMap<String, String>,
    /// Under incident isolation.
    pub isolated: bool,
}

/// One object: kind, namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// What a converge changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvergeReport {
    pub created: Vec<ObjectRef>,
    pub updated: Vec<ObjectRef>,
    pub deleted: Vec<ObjectRef>,
}

impl ConvergeReport {
    /// Whether the cluster had to be changed.
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.updated.is_empty() && self.deleted.is_empty())
    }
}

impl fmt::Display for ConvergeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |refs: &[ObjectRef]| {
            refs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        write!(
            f,
            "created [{}], updated [{}], deleted [{}]",
            list(&self.created),
            list(&self.updated),
            list(&self.deleted)
        )
    }
}

/// How the provisioner renders and reaches the cluster. No hidden defaults for limits.
#[derive(Debug, Clone)]
pub struct ProvisionerSettings {
    /// `{{ingress_namespace}}`.
    pub ingress_namespace: String,
    /// `{{namespace_role}}`.
    pub namespace_role: String,
    /// The deadline of one request, retries not included.
    pub request_timeout: Duration,
    /// Attempts per request, the first included (at least 1).
    pub max_attempts: u32,
    /// The delay before the first retry; doubling per retry up to `max_backoff`, jittered.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Where the blueprint comes from: a directory, or the built-in one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum BlueprintSource {
    #[default]
    Builtin,
    Dir(PathBuf),
}

impl BlueprintSource {
    /// Loads and validates the blueprint (start-up: an error names the file and line).
    pub fn load(&self) -> Result<Blueprint, TemplateError> {
        match self {
            BlueprintSource::Builtin => Ok(Blueprint::builtin()),
            BlueprintSource::Dir(dir) => Blueprint::load_dir(dir),
        }
    }
}

/// Why the provisioner failed. `metric_label` is bounded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvisionError {
    #[error("kubernetes request timed out after {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    #[error("kubernetes unavailable after {attempts} attempt(s): {message}")]
    Unavailable { attempts: u32, message: String },
    #[error("kubernetes refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("kubernetes client: {0}")]
    Client(String),
}

impl ProvisionError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ProvisionError::Timeout { .. } => "timeout",
            ProvisionError::Unavailable { .. } => "unavailable",
            ProvisionError::Refused { .. } => "refused",
            ProvisionError::Client(_) => "client",
        }
    }
}

/// The Kubernetes request limits the provisioner uses (the daemon passes `[kubernetes]`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub request_timeout: Duration,
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Why the blueprint reconciler cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
}

/// Loads and validates the configured blueprint (`[lifecycle] blueprint_dir`, or the built-in
/// one); an error names the file and line.
pub fn load_blueprint(
    settings: &ledger::config::BlueprintSettings,
) -> Result<Blueprint, TemplateError> {
    match &settings.dir {
        Some(dir) => BlueprintSource::Dir(dir.clone()).load(),
        None => BlueprintSource::Builtin.load(),
    }
}

/// Start-up: the blueprint reconciler for `[lifecycle]`, over `client` and `source`.
pub fn build_reconciler(
    settings: &ledger::config::LifecycleSettings,
    limits: RequestLimits,
    client: kube::Client,
    source: std::sync::Arc<dyn TenantSource>,
) -> Result<BlueprintReconciler, StartError> {
    let blueprint = load_blueprint(&settings.blueprint)?;
    let provisioner = Provisioner::new(
        client,
        std::sync::Arc::new(blueprint),
        ProvisionerSettings {
            ingress_namespace: settings.blueprint.ingress_namespace.clone(),
            namespace_role: settings.blueprint.namespace_role.clone(),
            request_timeout: limits.request_timeout,
            max_attempts: limits.max_attempts,
            initial_backoff: limits.initial_backoff,
            max_backoff: limits.max_backoff,
        },
    )?;
    Ok(BlueprintReconciler::new(provisioner, source))
}

/// The runner settings of `[lifecycle.reconciler]`.
pub fn runner_settings(timing: &ledger::config::ReconcilerTiming) -> crate::RunnerSettings {
    crate::RunnerSettings {
        scan_batch: timing.scan_batch,
        max_events_per_step: timing.max_events_per_step,
        concurrency: timing.concurrency,
        call_timeout: timing.call_timeout,
        backoff_base: timing.backoff_base,
        backoff_cap: timing.backoff_cap,
        poll_interval: timing.poll_interval,
        resync_interval: timing.resync_interval,
    }
}
