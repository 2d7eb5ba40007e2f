//! The `blueprint` reconciler: level-triggered, it reads the tenant's desired state from a
//! [`TenantSource`] and converges the cluster to it, whatever event woke it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ledger::tenant::TenantId;

use super::{ConvergeReport, ProvisionError, Provisioner, Snapshot, TenantSpec};
use crate::{HandlerError, OutboxEvent, Reconciler};

/// What a tenant should have in the cluster, from its lifecycle state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    /// Requested, rejected or unknown: nothing to do.
    Absent,
    /// Active or suspended (suspension is the enforcer's business): the blueprint.
    Provisioned(TenantSpec),
    /// Offboarding: access is revoked first; everything is deleted once `delete_due` (the
    /// grace period is over).
    Offboarding {
        spec: TenantSpec,
        access_revoked: bool,
        delete_due: bool,
    },
    /// Nothing owned may remain.
    Offboarded,
}

/// Where the reconciler learns tenants' desired state and records offboarding progress (the
/// store, in the daemon).
#[async_trait]
pub trait TenantSource: Send + Sync {
    async fn desired(&self, tenant: &TenantId) -> Result<Desired, HandlerError>;
    /// The tenant's RoleBindings are gone.
    async fn access_revoked(&self, tenant: &TenantId) -> Result<(), HandlerError>;
    /// Nothing owned by the tenant remains in the cluster.
    async fn resources_deleted(&self, tenant: &TenantId) -> Result<(), HandlerError>;
    /// A resync had to change the cluster (drift): for the audit log.
    async fn drift_repaired(
        &self,
        tenant: &TenantId,
        report: &ConvergeReport,
    ) -> Result<(), HandlerError>;
}

/// The Kubernetes blueprint as an outbox [`Reconciler`].
pub struct BlueprintReconciler {
    provisioner: Provisioner,
    source: Arc<dyn TenantSource>,
    /// During a resync: every owned object, read once (`begin_resync`), so that converging a
    /// tenant reads nothing. An object changed since is applied again, which is harmless.
    resync_snapshot: Mutex<Option<Arc<Snapshot>>>,
}

/// The aggregate type of tenant events; events about anything else are not the blueprint's.
const TENANT_AGGREGATE: &str = "tenant";

fn failure(e: ProvisionError) -> HandlerError {
    HandlerError::new(e.metric_label(), e.to_string())
}

impl BlueprintReconciler {
    pub fn new(provisioner: Provisioner, source: Arc<dyn TenantSource>) -> Self {
        BlueprintReconciler {
            provisioner,
            source,
            resync_snapshot: Mutex::new(None),
        }
    }

    pub fn provisioner(&self) -> &Provisioner {
        &self.provisioner
    }

    /// Converges `tenant` to its desired state; the changes a provisioned tenant needed.
    pub async fn reconcile(&self, tenant: &TenantId) -> Result<ConvergeReport, HandlerError> {
        self.reconcile_with(tenant, None).await
    }

    /// As [`BlueprintReconciler::reconcile`]; a provisioned tenant is compared with `snapshot`
    /// when there is one instead of being read.
    async fn reconcile_with(
        &self,
        tenant: &TenantId,
        snapshot: Option<Arc<Snapshot>>,
    ) -> Result<ConvergeReport, HandlerError> {
        match self.source.desired(tenant).await? {
            Desired::Absent => Ok(ConvergeReport::default()),
            Desired::Provisioned(spec) => match snapshot {
                Some(snapshot) => self
                    .provisioner
                    .converge_in(&spec, &snapshot)
                    .await
                    .map_err(failure),
                None => self.provisioner.converge(&spec).await.map_err(failure),
            },
            Desired::Offboarding {
                spec,
                access_revoked,
                delete_due,
            } => {
                // listing is cheap and a RoleBinding re-created meanwhile must go too
                let revoked = self
                    .provisioner
                    .revoke_access(&spec.tenant)
                    .await
                    .map_err(failure)?;
                if !revoked.is_empty() {
                    tracing::info!(tenant = %tenant, count = revoked.len(), "access revoked");
                }
                if !access_revoked {
                    self.source.access_revoked(tenant).await?;
                }
                if delete_due {
                    self.delete_all(tenant).await?;
                    self.source.resources_deleted(tenant).await?;
                }
                Ok(ConvergeReport::default())
            }
            Desired::Offboarded => {
                self.delete_all(tenant).await?;
                Ok(ConvergeReport::default())
            }
        }
    }

    async fn delete_all(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        let report = self.provisioner.delete_all(tenant).await.map_err(failure)?;
        if report.done() {
            Ok(())
        } else {
            let remaining: Vec<String> = report.remaining.iter().map(ToString::to_string).collect();
            Err(HandlerError::new(
                "pending",
                format!("still in the cluster: {}", remaining.join(", ")),
            ))
        }
    }
}

#[async_trait]
impl Reconciler for BlueprintReconciler {
    fn name(&self) -> &'static str {
        "blueprint"
    }

    async fn handle(&self, event: &OutboxEvent) -> Result<(), HandlerError> {
        // A tenant's aggregate also carries its enforcement and budget events; the enforcer,
        // not the blueprint, acts on those.
        if event.aggregate_type != TENANT_AGGREGATE || !event.event_type.starts_with("tenant.") {
            return Ok(());
        }
        let tenant = TenantId::parse(&event.aggregate_id)
            .map_err(|e| HandlerError::new("invalid", format!("event {}: {e}", event.id)))?;
        self.reconcile(&tenant).await.map(|_| ())
    }

    async fn converge(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        let snapshot = self
            .resync_snapshot
            .lock()
            .expect("the snapshot lock is never poisoned")
            .clone();
        let report = self.reconcile_with(tenant, snapshot).await?;
        if report.changed() {
            tracing::warn!(tenant = %tenant, %report, "blueprint drift repaired");
            metrics::counter!("budgetd_blueprint_drift_repaired_total").increment(1);
            self.source.drift_repaired(tenant, &report).await?;
        }
        Ok(())
    }

    async fn begin_resync(&self) -> Result<(), HandlerError> {
        let snapshot = self.provisioner.snapshot().await.map_err(failure)?;
        *self
            .resync_snapshot
            .lock()
            .expect("the snapshot lock is never poisoned") = Some(Arc::new(snapshot));
        Ok(())
    }

    async fn end_resync(&self) {
        self.resync_snapshot
            .lock()
            .expect("the snapshot lock is never poisoned")
            .take();
    }
}
