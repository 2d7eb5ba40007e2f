//! Bearer-token authentication and role-based authorisation.
//!
//! A bearer token is one of: a configuration-file token (`[[api.tokens]]`, its SHA-256), the
//! bootstrap token from the environment (until the first admin token is created), a managed
//! token (`bdt_...`, created through `POST /api/v1/tokens`, its SHA-256 in the database,
//! checked on every request so a revocation holds at once on every replica), or a JWT of a
//! configured OIDC issuer (`oidc`). Roles: `admin`, `operator`, `finance`, `viewer`, `auditor`,
//! and `tenant`, which is scoped to one tenant id and sees nothing else: another tenant's
//! resources answer 404, so ids do not leak.
//!
//! `auditor` is governance's read-only role: every read of every tenant (tenants, requests,
//! budgets, status, costs, the price book, pricing errors, enforcement actions, exemptions,
//! offboarding and final reports), the managed tokens' list (no secrets), and the governance
//! reports and the audit trail once they exist; never a mutation, not even a tenant request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ledger::audit::Actor;
use ledger::store::LAST_USED_RESOLUTION_SECONDS;
use ledger::tenant::TenantId;
use ledger::Store;
use sha2::{Digest, Sha256};

use crate::oidc::{Oidc, OidcError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn from_hex(hex_digest: &str) -> Option<Self> {
        let bytes = hex::decode(hex_digest.trim()).ok()?;
        Some(TokenHash(bytes.try_into().ok()?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Operator,
    Finance,
    Viewer,
    /// Read-only governance: every read, no mutation.
    Auditor,
    Tenant(TenantId),
}

impl Role {
    /// Parses a role name; `tenant` needs the tenant id, and only `tenant` takes one.
    pub fn parse(name: &str, tenant: Option<TenantId>) -> Result<Role, String> {
        let role = match (name, tenant) {
            ("admin", None) => Role::Admin,
            ("operator", None) => Role::Operator,
            ("finance", None) => Role::Finance,
            ("viewer", None) => Role::Viewer,
            ("auditor", None) => Role::Auditor,
            ("tenant", Some(id)) => Role::Tenant(id),
            ("tenant", None) => return Err("role \"tenant\" needs a tenant id".to_owned()),
            ("admin" | "operator" | "finance" | "viewer" | "auditor", Some(_)) => {
                return Err(format!(
                    "role {name:?} is not scoped to a tenant; remove `tenant`"
                ))
            }
            (other, _) => {
                return Err(format!(
                    "{other:?} is not a role (admin, operator, finance, viewer, auditor, tenant)"
                ))
            }
        };
        Ok(role)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Finance => "finance",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
            Role::Tenant(_) => "tenant",
        }
    }
}

/// What a caller may want to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    ReadTenants,
    ManageTenants,
    ReadBudget,
    SetBudget,
    ReadCosts,
    ReadPriceBook,
    ManagePriceBook,
    ReadEnforcement,
    /// Approve or reject enforcement actions; exempt tenants.
    DecideEnforcement,
    /// Ask for a new tenant (a self-service request).
    RequestTenant,
    /// Approve or reject tenant requests.
    DecideTenantRequests,
    /// List the managed API tokens (never their secrets).
    ReadTokens,
    /// Create and revoke managed API tokens.
    ManageTokens,
    /// Page through the audit trail (a tenant token: its own tenant's records).
    ReadAudit,
    /// The governance report (every tenant's owner, state, residency, budget and spend).
    ReadReports,
    /// The access review: every identity that can act, and what it did.
    ReviewAccess,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub name: String,
    pub role: Role,
}

impl Principal {
    pub fn may(&self, permission: Permission) -> bool {
        use Permission::*;
        match self.role {
            Role::Admin => true,
            Role::Operator => !matches!(
                permission,
                ManagePriceBook
                    | ReadTokens
                    | ManageTokens
                    | ReadAudit
                    | ReadReports
                    | ReviewAccess
            ),
            Role::Finance => matches!(
                permission,
                ReadTenants
                    | ReadBudget
                    | SetBudget
                    | ReadCosts
                    | ReadPriceBook
                    | ManagePriceBook
                    | ReadEnforcement
                    | RequestTenant
                    | ReadAudit
                    | ReadReports
            ),
            Role::Viewer => matches!(
                permission,
                ReadTenants
                    | ReadBudget
                    | ReadCosts
                    | ReadPriceBook
                    | ReadEnforcement
                    | RequestTenant
            ),
            Role::Auditor => matches!(
                permission,
                ReadTenants
                    | ReadBudget
                    | ReadCosts
                    | ReadPriceBook
                    | ReadEnforcement
                    | ReadTokens
                    | ReadAudit
                    | ReadReports
                    | ReviewAccess
            ),
            // A tenant token speaks for its tenant, not for a person who may ask for another.
            Role::Tenant(_) => matches!(
                permission,
                ReadTenants | ReadBudget | ReadCosts | ReadPriceBook | ReadEnforcement | ReadAudit
            ),
        }
    }

    /// Whether the caller may know that `tenant` exists at all.
    pub fn sees(&self, tenant: &TenantId) -> bool {
        match &self.role {
            Role::Tenant(own) => own == tenant,
            _ => true,
        }
    }

    pub fn actor(&self) -> Actor {
        Actor {
            name: self.name.clone(),
            role: self.role.name().to_owned(),
        }
    }
}

/// A managed token's secret starts with this, so that other bearer values (config tokens,
/// JWTs) are never looked up in the database.
pub const MANAGED_TOKEN_PREFIX: &str = "bdt_";

/// The name of the bootstrap token's principal (`BUDGETD_BOOTSTRAP_ADMIN_TOKEN`).
pub const BOOTSTRAP_NAME: &str = "bootstrap-admin";

/// A new managed token's secret: the prefix and 32 random bytes in hex.
pub fn generate_managed_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{MANAGED_TOKEN_PREFIX}{}", hex::encode(bytes))
}

/// Why a bearer value was not accepted.
#[derive(Debug)]
pub enum AuthError {
    /// No bearer token, or one nobody knows (401 `unauthorized`).
    Unknown,
    /// A known token that no longer works: revoked, expired, the retired bootstrap token, a
    /// JWT that did not pass (401, with the reason).
    Refused {
        code: &'static str,
        message: String,
    },
    /// A valid identity without a budgetd role (403).
    NoRole(String),
    /// The identity provider's keys cannot be fetched (503).
    Unavailable(String),
    Store(ledger::Error),
}

impl From<ledger::Error> for AuthError {
    fn from(e: ledger::Error) -> Self {
        AuthError::Store(e)
    }
}

/// Who a bearer token is, from (in order) the configuration file's tokens, the bootstrap token,
/// the managed tokens in the database (`bdt_...`), and the configured OIDC issuers (JWTs).
#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<TokenHash, Principal>,
    bootstrap: Option<TokenHash>,
    /// Set once an admin token was seen to exist: it never stops existing (rows are never
    /// deleted), so no replica needs to ask again.
    bootstrap_retired: AtomicBool,
    oidc: Option<Oidc>,
    /// When this process last recorded each managed token's use, so that a busy token writes
    /// at most once per `LAST_USED_RESOLUTION_SECONDS`.
    last_recorded: Mutex<HashMap<i64, Instant>>,
}

impl Authenticator {
    pub fn new(tokens: impl IntoIterator<Item = (TokenHash, Principal)>) -> Self {
        Authenticator {
            tokens: tokens.into_iter().collect(),
            ..Authenticator::default()
        }
    }

    /// Accepts `BUDGETD_BOOTSTRAP_ADMIN_TOKEN` as an admin token until the first admin token
    /// is created through the API.
    pub fn with_bootstrap(mut self, hash: Option<TokenHash>) -> Self {
        self.bootstrap = hash;
        self
    }

    /// Accepts JWTs of the configured issuers.
    pub fn with_oidc(mut self, oidc: Option<Oidc>) -> Self {
        self.oidc = oidc;
        self
    }

    /// The configuration-file tokens' principals, by name, and whether the bootstrap token is
    /// configured and not yet retired (for the access review).
    pub fn configured_principals(&self) -> Vec<Principal> {
        let mut principals: Vec<Principal> = self.tokens.values().cloned().collect();
        principals.sort_by(|a, b| a.name.cmp(&b.name));
        principals
    }

    /// Whether a bootstrap token is configured.
    pub fn has_bootstrap(&self) -> bool {
        self.bootstrap.is_some()
    }

    /// The OIDC issuers' claim-to-role mappings (for the access review).
    pub fn oidc_mappings(&self) -> Vec<crate::oidc::RoleMapping> {
        self.oidc
            .as_ref()
            .map(Oidc::role_mappings)
            .unwrap_or_default()
    }

    /// Whether `name` is a configuration-file token's or the bootstrap token's: a managed
    /// token may not take it, so that audit records name one token.
    pub fn reserves_name(&self, name: &str) -> bool {
        name == BOOTSTRAP_NAME || self.tokens.values().any(|p| p.name == name)
    }

    /// The caller behind an `Authorization` header value at `now`. The scheme is
    /// case-insensitive (RFC 9110 §11.1): `bearer` and `BEARER` are `Bearer`.
    pub async fn authenticate(
        &self,
        authorization: &str,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let token = bearer(authorization).ok_or(AuthError::Unknown)?;
        let hash = TokenHash::of(token);
        if let Some(principal) = self.tokens.get(&hash) {
            return Ok(principal.clone());
        }
        if self.bootstrap == Some(hash) {
            return self.bootstrap_principal(store).await;
        }
        if token.starts_with(MANAGED_TOKEN_PREFIX) {
            return self.managed_principal(&hash, store, now).await;
        }
        match &self.oidc {
            Some(oidc) if Oidc::looks_like_jwt(token) => {
                oidc.verify(token).await.map_err(|e| match e {
                    OidcError::Rejected { message, .. } => AuthError::Refused {
                        code: "invalid_token",
                        message,
                    },
                    OidcError::NoRole(message) => AuthError::NoRole(message),
                    OidcError::Unavailable(message) => AuthError::Unavailable(message),
                })
            }
            _ => Err(AuthError::Unknown),
        }
    }

    async fn bootstrap_principal(&self, store: &Store) -> Result<Principal, AuthError> {
        let retired =
            self.bootstrap_retired.load(Ordering::Relaxed) || store.admin_token_created().await?;
        if retired {
            if !self.bootstrap_retired.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "BUDGETD_BOOTSTRAP_ADMIN_TOKEN was refused: an admin token exists (POST /api/v1/tokens), so the bootstrap token no longer works; remove it from the environment"
                );
            }
            return Err(AuthError::Refused {
                code: "bootstrap_retired",
                message: "the bootstrap token works only until the first admin token is created; use an admin token".to_owned(),
            });
        }
        Ok(Principal {
            name: BOOTSTRAP_NAME.to_owned(),
            role: Role::Admin,
        })
    }

    async fn managed_principal(
        &self,
        hash: &TokenHash,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let record = store
            .api_token_by_hash(&hash.0)
            .await?
            .ok_or(AuthError::Unknown)?;
        if record.revoked_at.is_some() {
            return Err(AuthError::Refused {
                code: "token_revoked",
                message: format!("token {:?} was revoked", record.name),
            });
        }
        if !record.is_live(now) {
            return Err(AuthError::Refused {
                code: "token_expired",
                message: format!("token {:?} has expired", record.name),
            });
        }
        let role = Role::parse(&record.role, record.tenant.clone()).map_err(|m| {
            ledger::Error::Database(sqlx::Error::Decode(
                format!("api_tokens row {}: {m}", record.id).into(),
            ))
        })?;
        self.record_use(record.id, store, now).await;
        Ok(Principal {
            name: record.name,
            role,
        })
    }

    /// Records a managed token's use, at most once per `LAST_USED_RESOLUTION_SECONDS` from this
    /// process (the store skips the write too when another replica recorded one). A failure is
    /// logged: the request goes on.
    async fn record_use(&self, id: i64, store: &Store, now: DateTime<Utc>) {
        let resolution = Duration::from_secs(LAST_USED_RESOLUTION_SECONDS as u64);
        {
            let mut recorded = self.last_recorded.lock().expect("not poisoned");
            match recorded.get(&id) {
                Some(at) if at.elapsed() < resolution => return,
                _ => {
                    recorded.insert(id, Instant::now());
                }
            }
        }
        if let Err(e) = store.touch_api_token(id, now).await {
            tracing::warn!(token = id, error = %e, "cannot record the token's last use");
            self.last_recorded.lock().expect("not poisoned").remove(&id);
        }
    }
}

/// The token of a bearer `Authorization` value.
fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: Role) -> Principal {
        Principal {
            name: "p".into(),
            role,
        }
    }

    #[test]
    fn bearer_tokens_are_read_and_hashed() {
        assert_eq!(bearer("Bearer s3cret-token"), Some("s3cret-token"));
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} s3cret-token");
            assert_eq!(bearer(&header), Some("s3cret-token"), "{header}");
        }
        for refused in [
            "Basic s3cret-token",
            "Bearers3cret-token",
            "Bearer ",
            "s3cret-token",
        ] {
            assert_eq!(bearer(refused), None, "{refused}");
        }
        let hex = hex::encode(Sha256::digest(b"s3cret-token"));
        assert_eq!(
            TokenHash::from_hex(&hex),
            Some(TokenHash::of("s3cret-token"))
        );
        assert_eq!(TokenHash::from_hex("abcd"), None);
        let (a, b) = (generate_managed_token(), generate_managed_token());
        assert_ne!(a, b);
        assert!(
            a.starts_with(MANAGED_TOKEN_PREFIX) && a.len() == 4 + 64,
            "{a}"
        );
    }

    #[test]
    fn auditors_read_everything_and_change_nothing() {
        use Permission::*;
        let auditor = principal(Role::Auditor);
        for read in [
            ReadTenants,
            ReadBudget,
            ReadCosts,
            ReadPriceBook,
            ReadEnforcement,
            ReadTokens,
            ReadAudit,
            ReadReports,
            ReviewAccess,
        ] {
            assert!(auditor.may(read), "{read:?}");
        }
        for write in [
            ManageTenants,
            SetBudget,
            ManagePriceBook,
            DecideEnforcement,
            RequestTenant,
            DecideTenantRequests,
            ManageTokens,
        ] {
            assert!(!auditor.may(write), "{write:?}");
        }
        assert!(auditor.sees(&TenantId::parse("globex").unwrap()));
        assert_eq!(Role::parse("auditor", None), Ok(Role::Auditor));
        assert!(Role::parse("auditor", Some(TenantId::parse("a").unwrap())).is_err());
        // Tokens are the admin's; the auditor and the admin list them.
        assert!(principal(Role::Admin).may(ManageTokens));
        for role in [Role::Operator, Role::Finance, Role::Viewer] {
            assert!(!principal(role.clone()).may(ReadTokens), "{role:?}");
            assert!(!principal(role).may(ManageTokens));
        }
    }

    #[test]
    fn governance_reports_are_for_admins_finance_and_auditors() {
        use Permission::*;
        let acme = TenantId::parse("acme").unwrap();
        let may = |role: Role| {
            [ReadAudit, ReadReports, ReviewAccess].map(|p| principal(role.clone()).may(p))
        };
        assert_eq!(may(Role::Admin), [true, true, true]);
        assert_eq!(may(Role::Auditor), [true, true, true]);
        assert_eq!(may(Role::Finance), [true, true, false]);
        assert_eq!(may(Role::Operator), [false, false, false]);
        assert_eq!(may(Role::Viewer), [false, false, false]);
        // A tenant token reads its own tenant's audit records (the route scopes them).
        assert_eq!(may(Role::Tenant(acme)), [true, false, false]);
    }

    #[test]
    fn tenant_tokens_see_only_their_tenant() {
        let acme = TenantId::parse("acme").unwrap();
        let other = TenantId::parse("globex").unwrap();
        let p = principal(Role::Tenant(acme.clone()));
        assert!(p.sees(&acme));
        assert!(!p.sees(&other));
        assert!(principal(Role::Viewer).sees(&other));
        assert!(!p.may(Permission::ManageTenants));
        assert!(p.may(Permission::ReadCosts));
        assert!(!p.may(Permission::RequestTenant));
        assert!(principal(Role::Viewer).may(Permission::RequestTenant));
        assert!(!principal(Role::Viewer).may(Permission::DecideTenantRequests));
        assert!(!principal(Role::Finance).may(Permission::DecideTenantRequests));
        assert!(principal(Role::Operator).may(Permission::DecideTenantRequests));
    }
}
