//! What the blueprint reconciler (crate `lifecycle`) records in the ledger besides the
//! offboarding steps: the drift a resync found in a tenant's cluster objects and repaired.

use serde_json::Value;

use super::audit::{self, AuditEvent};
use super::enforcement::check_fence;
use super::Store;
use crate::audit::{Actor, AuditContext};
use crate::enforcement::Fence;
use crate::error::Error;
use crate::tenant::TenantId;

impl Store {
    /// Records that a resync found `id`'s cluster objects differing from its blueprint and
    /// repaired them: one audit record `tenant.blueprint_drift_repaired` whose `after` is
    /// `repaired` (the objects created, updated and deleted). Fenced like every write of the
    /// leader's.
    pub async fn record_blueprint_drift(
        &self,
        fence: Fence,
        id: &TenantId,
        repaired: &Value,
    ) -> Result<(), Error> {
        self.run("record_blueprint_drift", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            audit::append(
                &mut tx,
                &AuditContext {
                    actor: Actor::system("blueprint"),
                    request_id: format!("blueprint-drift-{id}"),
                },
                AuditEvent {
                    action: "tenant.blueprint_drift_repaired",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: None,
                    after: Some(repaired.clone()),
                },
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
