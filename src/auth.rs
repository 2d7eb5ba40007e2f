//! Bearer-token authentication and role-based authorisation.
//!
//! Tokens are configured as SHA-256 hashes; a presented token is hashed and looked up. Roles:
//! `admin`, `operator`, `finance`, `viewer`, and `tenant`, which is scoped to one tenant id and
//! sees nothing else: another tenant's resources answer 404, so ids do not leak.

use std::collections::HashMap;

use ledger::audit::Actor;
use ledger::tenant::TenantId;
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

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
            ("tenant", Some(id)) => Role::Tenant(id),
            ("tenant", None) => return Err("role \"tenant\" needs a tenant id".to_owned()),
            ("admin" | "operator" | "finance" | "viewer", Some(_)) => {
                return Err(format!(
                    "role {name:?} is not scoped to a tenant; remove `tenant`"
                ))
            }
            (other, _) => {
                return Err(format!(
                    "{other:?} is not a role (admin, operator, finance, viewer, tenant)"
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
            Role::Operator => !matches!(permission, ManagePriceBook),
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
            // A tenant token speaks for its tenant, not for a person who may ask for another.
            Role::Tenant(_) => matches!(
                permission,
                ReadTenants | ReadBudget | ReadCosts | ReadPriceBook | ReadEnforcement
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

#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<TokenHash, Principal>,
}

impl Authenticator {
    pub fn new(tokens: impl IntoIterator<Item = (TokenHash, Principal)>) -> Self {
        Authenticator {
            tokens: tokens.into_iter().collect(),
        }
    }

    /// The caller behind an `Authorization` header value, if it holds a known bearer token.
    /// The scheme is case-insensitive (RFC 9110 §11.1): `bearer` and `BEARER` are `Bearer`.
    pub fn authenticate(&self, authorization: &str) -> Option<&Principal> {
        let (scheme, token) = authorization.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let token = token.trim();
        if token.is_empty() {
            return None;
        }
        self.tokens.get(&TokenHash::of(token))
    }
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
    fn tokens_are_looked_up_by_hash() {
        let admin = principal(Role::Admin);
        let auth = Authenticator::new([(TokenHash::of("s3cret-token"), admin.clone())]);
        assert_eq!(auth.authenticate("Bearer s3cret-token"), Some(&admin));
        assert_eq!(auth.authenticate("Bearer wrong"), None);
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} s3cret-token");
            assert_eq!(auth.authenticate(&header), Some(&admin), "{header}");
        }
        for refused in [
            "Basic s3cret-token",
            "Bearers3cret-token",
            "Bearer ",
            "s3cret-token",
        ] {
            assert_eq!(auth.authenticate(refused), None, "{refused}");
        }
        let hex = hex::encode(Sha256::digest(b"s3cret-token"));
        assert_eq!(
            TokenHash::from_hex(&hex),
            Some(TokenHash::of("s3cret-token"))
        );
        assert_eq!(TokenHash::from_hex("abcd"), None);
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
