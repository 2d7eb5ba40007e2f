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

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Iterations of Postgres' own SCRAM-SHA-256 verifiers (`scram_iterations`' default).
const SCRAM_ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The SCRAM-SHA-256 verifier Postgres stores for `password` with `salt` (RFC 5802 and 7677:
/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`). Given to `CREATE ROLE ...
/// PASSWORD`, Postgres stores it as it is, so the password itself never reaches the server
/// and its statement log. `password` is taken as it is (SASLprep leaves ASCII letters and
/// digits alone).
pub fn scram_sha256_verifier(password: &str, salt: &[u8]) -> String {
    // Hi(): PBKDF2 with HMAC-SHA-256, one block.
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password.as_bytes(), &block);
    let mut salted = u;
    for _ in 1..SCRAM_ITERATIONS {
        u = hmac(password.as_bytes(), &u);
        salted.iter_mut().zip(u).for_each(|(s, x)| *s ^= x);
    }
    let stored_key = Sha256::digest(hmac(&salted, b"Client Key"));
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${SCRAM_ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

impl Store {
    /// Creates `tenant`'s login with `password`, or sets the password of the existing one;
    /// the server gets only its SCRAM verifier with `salt` (16 random bytes, new each time).
    /// Returns the role's name, `budgetd_<6 hex digits of the database's name>_<tenant>`: role
    /// names are global to a Postgres cluster, which may hold several budgetd databases.
    pub async fn set_tenant_login(
        &self,
        fence: Fence,
        tenant: &TenantId,
        password: &str,
        salt: &[u8],
    ) -> Result<String, Error> {
        let verifier = scram_sha256_verifier(password, salt);
        self.run("set_tenant_login", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let role: String = query_scalar("select budgetd_tenant_login($1, $2, now())")
                .bind(tenant.as_str())
                .bind(&verifier)
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
