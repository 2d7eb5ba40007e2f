//! The tenants' database logins: what a tenant's Grafana data source signs in as. A login is a
//! member of `budgetd_tenant_reader` and reads only the `tenant_finance` views, which show the
//! rows of the tenant the login belongs to (migration `20261202030000_tenant_finance.sql`).
//! The Grafana reconciler (crate `grafana`) creates, rotates and drops them, fenced by the
//! leader's token like every other write of a reconciler.

use super::enforcement::check_fence;
use super::{query_scalar, Store};
use crate::enforcement::Fence;
use crate::error::Error;
use crate::tenant::TenantId;

impl Store {
    /// Creates `tenant`'s login with `password`, or sets the password of the existing one.
    /// Returns the role's name.
    /// The name is `budgetd_<6 hex digits of the database's name>_<tenant>`: role names are
    /// global to a Postgres cluster, which may hold several budgetd databases.
    pub async fn set_tenant_login(
        &self,
        fence: Fence,
        tenant: &TenantId,
        password: &str,
    ) -> Result<String, Error> {
        self.run("set_tenant_login", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let role: String = query_scalar("select budgetd_tenant_login($1, $2, now())")
                .bind(tenant.as_str())
                .bind(password)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(role)
        })
        .await
    }

    /// `tenant`'s login role, if it is recorded and exists in the database.
    pub async fn tenant_login(&self, tenant: &TenantId) -> Result<Option<String>, Error> {
        self.run("tenant_login", || async {
            let mut tx = self.begin().await?;
            let role: Option<String> = query_scalar(
                "select l.role_name from tenant_logins l \
                 join pg_roles r on r.rolname = l.role_name and r.rolcanlogin \
                 where l.tenant_id = $1",
            )
            .bind(tenant.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(role)
        })
        .await
    }

    /// Drops `tenant`'s login. Whether there was one.
    pub async fn drop_tenant_login(&self, fence: Fence, tenant: &TenantId) -> Result<bool, Error> {
        self.run("drop_tenant_login", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let dropped: bool = query_scalar("select budgetd_drop_tenant_login($1)")
                .bind(tenant.as_str())
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(dropped)
        })
        .await
    }
}
