//! The blueprint's [`TenantSource`] in the daemon: tenants' desired state from the ledger, and
//! the offboarding steps and repaired drift recorded there with the leader's fence.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::Utc;
use ledger::config::QuotaProfile;
use ledger::enforcement::Fence;
use ledger::tenant::{QuotaProfileName, Tenant, TenantId, TenantState};
use ledger::Store;
use serde_json::json;
use tokio::sync::watch;

use super::{ConvergeReport, Desired, ObjectRef, TenantSource, TenantSpec};
use crate::HandlerError;

/// Reads tenants from `store`; writes only while `leader` holds a fence (the runner runs only
/// then, and a write with a stale fence is refused by the store).
pub struct StoreSource {
    store: Store,
    quota_profiles: BTreeMap<QuotaProfileName, QuotaProfile>,
    leader: watch::Receiver<Option<Fence>>,
}

fn store_failure(e: ledger::Error) -> HandlerError {
    HandlerError::new(e.metric_label(), e.to_string())
}

impl StoreSource {
    pub fn new(
        store: Store,
        quota_profiles: BTreeMap<QuotaProfileName, QuotaProfile>,
        leader: watch::Receiver<Option<Fence>>,
    ) -> Self {
        StoreSource {
            store,
            quota_profiles,
            leader,
        }
    }

    fn fence(&self) -> Result<Fence, HandlerError> {
        (*self.leader.borrow())
            .ok_or_else(|| HandlerError::new("not_leading", "this daemon does not lead"))
    }

    /// What the blueprint renders for `tenant`. A tenant without a quota profile gets a quota
    /// without limits; one whose profile is no longer configured is an error (its quota is
    /// left as it is rather than emptied).
    fn spec(&self, tenant: &Tenant) -> Result<TenantSpec, HandlerError> {
        let quota = match &tenant.quota_profile {
            None => BTreeMap::new(),
            Some(profile) => self.quota_profiles.get(profile).cloned().ok_or_else(|| {
                HandlerError::new(
                    "config",
                    format!(
                        "tenant {:?} has the quota profile {:?}, which [lifecycle.quota_profiles] does not configure",
                        tenant.id.as_str(),
                        profile.as_str()
                    ),
                )
            })?,
        };
        Ok(TenantSpec {
            tenant: tenant.id.clone(),
            namespaces: tenant
                .namespaces
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect(),
            owner_group: tenant.owner_group.as_ref().map(|g| g.as_str().to_owned()),
            residency: tenant.data_residency.clone(),
            quota,
            isolated: tenant.isolation.is_some(),
        })
    }
}

fn refs(objects: &[ObjectRef]) -> Vec<String> {
    objects.iter().map(ToString::to_string).collect()
}

#[async_trait]
impl TenantSource for StoreSource {
    async fn desired(&self, id: &TenantId) -> Result<Desired, HandlerError> {
        let tenant = match self.store.get_tenant(id).await {
            Ok(tenant) => tenant,
            Err(ledger::Error::NotFound { .. }) => return Ok(Desired::Absent),
            Err(e) => return Err(store_failure(e)),
        };
        Ok(match tenant.state {
            TenantState::Requested | TenantState::Rejected => Desired::Absent,
            TenantState::Active | TenantState::Suspended => {
                Desired::Provisioned(self.spec(&tenant)?)
            }
            TenantState::Offboarding => {
                let spec = self.spec(&tenant)?;
                match self.store.offboarding(id).await.map_err(store_failure)? {
                    Some(record) => Desired::Offboarding {
                        spec,
                        access_revoked: record.access_revoked_at.is_some(),
                        delete_due: Utc::now() >= record.grace_until,
                    },
                    // Moved to offboarding before offboarding had a record: access is revoked,
                    // nothing is deleted without a recorded grace period.
                    None => {
                        tracing::warn!(tenant = %id, "offboarding without a record (started before this release): access is revoked, resources stay");
                        Desired::Offboarding {
                            spec,
                            access_revoked: true,
                            delete_due: false,
                        }
                    }
                }
            }
            TenantState::Offboarded => Desired::Offboarded,
        })
    }

    async fn access_revoked(&self, id: &TenantId) -> Result<(), HandlerError> {
        self.store
            .offboarding_access_revoked(self.fence()?, id, Utc::now())
            .await
            .map(|_| ())
            .map_err(store_failure)
    }

    async fn resources_deleted(&self, id: &TenantId) -> Result<(), HandlerError> {
        self.store
            .offboarding_resources_deleted(self.fence()?, id, Utc::now())
            .await
            .map(|_| ())
            .map_err(store_failure)
    }

    async fn drift_repaired(
        &self,
        id: &TenantId,
        report: &ConvergeReport,
    ) -> Result<(), HandlerError> {
        let repaired = json!({
            "created": refs(&report.created),
            "updated": refs(&report.updated),
            "deleted": refs(&report.deleted),
        });
        self.store
            .record_blueprint_drift(self.fence()?, id, &repaired)
            .await
            .map_err(store_failure)
    }
}
