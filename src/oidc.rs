//! OIDC: bearer JWTs from configured issuers (Keycloak, Entra ID, any OpenID provider), next to
//! the static and managed tokens. A token is checked against its issuer's keys (JWKS, found
//! through `/.well-known/openid-configuration`), which are cached; a key id the cache does not
//! know makes one refetch, at most one per `refetch_interval_seconds` per issuer. `exp`, `iss`
//! and `aud` are required, `nbf` is checked when present, both with `leeway_seconds` of clock
//! skew; only the issuer's configured asymmetric algorithms are accepted, so `alg=none` and an
//! HS256 token signed with the RSA public key as its secret are refused. A configured claim
//! (`roles`, `groups`, `realm_access.roles`) maps to a budgetd role, and for the tenant role to
//! its tenant. Claim mapping is pure ([`map_claims`]); [`Oidc`] does the fetching.
//!
//! Signature checks are `jsonwebtoken`'s (RustCrypto backend): no cryptography here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use ledger::config::{attempts, seconds, timeout_millis, within};
use ledger::names::SingleLine;
use ledger::tenant::TenantId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use url::Url;

use crate::auth::{Principal, Role};

/// The largest discovery document or JWKS read (1 MiB).
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// `[oidc]`: how issuers' keys are fetched and tokens checked, and the issuers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcSection {
    /// Limit of one request for a discovery document or a JWKS.
    pub http_timeout_ms: u64,
    /// Attempts per fetch (connection errors, timeouts, 429 and 5xx are retried).
    pub http_attempts: u32,
    /// First retry delay, doubling.
    pub http_backoff_ms: u64,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_seconds: u64,
    /// The least time between two fetches of an issuer's keys (an unknown `kid` refetches).
    pub refetch_interval_seconds: u64,
    /// Keys older than this are fetched again at their next use (a removed key stops working).
    pub keys_max_age_seconds: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issuers: Vec<IssuerSection>,
}

impl Default for OidcSection {
    fn default() -> Self {
        OidcSection {
            http_timeout_ms: 5_000,
            http_attempts: 3,
            http_backoff_ms: 200,
            leeway_seconds: 60,
            refetch_interval_seconds: 60,
            keys_max_age_seconds: 3_600,
            issuers: Vec::new(),
        }
    }
}

/// `[[oidc.issuers]]`: one identity provider.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    /// The `iss` of its tokens, exactly (Keycloak: `https://kc/realms/<realm>`; Entra ID:
    /// `https://login.microsoftonline.com/<tenant-id>/v2.0`).
    pub issuer: String,
    /// The `aud` budgetd's tokens carry (Keycloak: the client id, via an audience mapper;
    /// Entra ID: the application's client id).
    pub audience: String,
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding role or group names, a dotted path (`realm_access.roles`).
    pub roles_claim: String,
    /// Claim value → budgetd role: `admin`, `operator`, `finance`, `viewer`, `auditor`,
    /// `tenant:<id>`, or `tenant` (the tenant from `tenant_claim`).
    pub roles: BTreeMap<String, String>,
    /// The claim holding the tenant id, for values mapped to `tenant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_claim: Option<String>,
    /// The claim naming the caller in audit records.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".to_owned()]
}

fn default_name_claim() -> String {
    "sub".to_owned()
}

/// What a mapped claim value grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    Role(Role),
    /// The tenant role, for the tenant named by `tenant_claim`.
    TenantFromClaim,
}

/// A claim's dotted path (`realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    fn parse(path: &str) -> Result<ClaimPath, String> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if path.is_empty() || parts.iter().any(|p| p.trim().is_empty() || p.trim() != p) {
            return Err(format!(
                "{path:?} is not a claim path such as \"roles\" or \"realm_access.roles\""
            ));
        }
        Ok(ClaimPath(parts))
    }

    fn get<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(claims, |v, part| v.get(part))
    }
}

impl std::fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// One validated issuer.
#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub issuer: String,
    pub discovery_url: Url,
    pub audience: String,
    pub algorithms: Vec<Algorithm>,
    pub roles_claim: ClaimPath,
    pub roles: BTreeMap<String, Grant>,
    pub tenant_claim: Option<ClaimPath>,
    pub name_claim: ClaimPath,
}

#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuers: Vec<IssuerSettings>,
    pub http_timeout: Duration,
    pub http_attempts: u32,
    pub http_backoff: Duration,
    pub leeway_seconds: u64,
    pub refetch_interval: Duration,
    pub keys_max_age: Duration,
}

/// Plain HTTP only for loopback (a test or a local provider); an issuer elsewhere needs TLS.
fn usable_url(url: &Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => {
            matches!(
                url.host(),
                Some(url::Host::Ipv4(ip)) if ip.is_loopback()
            ) || matches!(url.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
                || url.host_str() == Some("localhost")
        }
        _ => false,
    }
}

fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    let alg: Algorithm = name
        .parse()
        .map_err(|_| format!("{name:?} is not a JWS algorithm"))?;
    if AlgorithmFamily::Hmac.algorithms().contains(&alg) {
        return Err(format!(
            "{name} needs a shared secret; OIDC issuers sign with keys from their JWKS (RS256, ES256, ...)"
        ));
    }
    Ok(alg)
}

fn parse_grant(value: &str, has_tenant_claim: bool) -> Result<Grant, String> {
    if value == "tenant" {
        return if has_tenant_claim {
            Ok(Grant::TenantFromClaim)
        } else {
            Err("\"tenant\" takes its tenant from tenant_claim, which is not set; or name the tenant as \"tenant:<id>\"".to_owned())
        };
    }
    if let Some(id) = value.strip_prefix("tenant:") {
        let id = TenantId::parse(id).map_err(|e| e.message)?;
        return Ok(Grant::Role(Role::Tenant(id)));
    }
    Role::parse(value, None).map(Grant::Role)
}

impl OidcSection {
    /// Checks every key; errors name the key path (`oidc.issuers[0].roles.<value>`).
    pub fn validate(&self) -> Result<OidcSettings, ledger::Invalid> {
        let mut issuers: Vec<IssuerSettings> = Vec::new();
        for (i, s) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("oidc.issuers[{i}].{field}");
            let invalid = |field: &str, message: String| ledger::Invalid::new(key(field), message);
            let url = Url::parse(&s.issuer)
                .ok()
                .filter(|u| usable_url(u) && u.query().is_none() && u.fragment().is_none())
                .ok_or_else(|| {
                    invalid(
                        "issuer",
                        format!(
                            "{:?} is not an https:// issuer URL (plain http only on loopback)",
                            s.issuer
                        ),
                    )
                })?;
            if issuers.iter().any(|o| o.issuer == s.issuer) {
                return Err(invalid(
                    "issuer",
                    "the same issuer is configured twice".into(),
                ));
            }
            let discovery_url = Url::parse(&format!(
                "{}/.well-known/openid-configuration",
                url.as_str().trim_end_matches('/')
            ))
            .map_err(|e| invalid("issuer", e.to_string()))?;
            if s.audience.trim().is_empty() {
                return Err(invalid("audience", "must not be empty".into()));
            }
            if s.algorithms.is_empty() {
                return Err(invalid(
                    "algorithms",
                    "name at least one, e.g. [\"RS256\"]".into(),
                ));
            }
            let algorithms = s
                .algorithms
                .iter()
                .map(|a| parse_algorithm(a))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|m| invalid("algorithms", m))?;
            let roles_claim =
                ClaimPath::parse(&s.roles_claim).map_err(|m| invalid("roles_claim", m))?;
            let tenant_claim = s
                .tenant_claim
                .as_deref()
                .map(ClaimPath::parse)
                .transpose()
                .map_err(|m| invalid("tenant_claim", m))?;
            let name_claim =
                ClaimPath::parse(&s.name_claim).map_err(|m| invalid("name_claim", m))?;
            if s.roles.is_empty() {
                return Err(invalid(
                    "roles",
                    "map at least one claim value to a role, e.g. \"budgetd-admin\" = \"admin\""
                        .into(),
                ));
            }
            let roles = s
                .roles
                .iter()
                .map(|(value, role)| {
                    parse_grant(role, tenant_claim.is_some())
                        .map(|g| (value.clone(), g))
                        .map_err(|m| invalid(&format!("roles.{value}"), m))
                })
                .collect::<Result<_, _>>()?;
            issuers.push(IssuerSettings {
                issuer: s.issuer.clone(),
                discovery_url,
                audience: s.audience.clone(),
                algorithms,
                roles_claim,
                roles,
                tenant_claim,
                name_claim,
            });
        }
        Ok(OidcSettings {
            issuers,
            http_timeout: timeout_millis(self.http_timeout_ms, "oidc.http_timeout_ms")?,
            http_attempts: attempts(self.http_attempts, "oidc.http_attempts")?,
            http_backoff: Duration::from_millis(within(
                self.http_backoff_ms,
                1..=60_000,
                "oidc.http_backoff_ms",
            )?),
            leeway_seconds: within(self.leeway_seconds, 0..=600, "oidc.leeway_seconds")?,
            refetch_interval: seconds(
                self.refetch_interval_seconds,
                1..=86_400,
                "oidc.refetch_interval_seconds",
            )?,
            keys_max_age: seconds(
                self.keys_max_age_seconds,
                60..=604_800,
                "oidc.keys_max_age_seconds",
            )?,
        })
    }
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OidcError {
    /// Not a valid token of a configured issuer (401): a bounded reason code for the metric and
    /// a message for the caller.
    Rejected {
        reason: &'static str,
        message: String,
    },
    /// A valid token that maps to no budgetd role (403).
    NoRole(String),
    /// The issuer's keys cannot be fetched (503).
    Unavailable(String),
}

impl OidcError {
    fn rejected(reason: &'static str, message: impl Into<String>) -> Self {
        OidcError::Rejected {
            reason,
            message: message.into(),
        }
    }

    fn metric_label(&self) -> &'static str {
        match self {
            OidcError::Rejected { reason, .. } => reason,
            OidcError::NoRole(_) => "no_role",
            OidcError::Unavailable(_) => "unavailable",
        }
    }
}

/// At most 80 characters of text from a token, quoted, for messages.
fn quoted(text: &str) -> String {
    let short: String = text.chars().take(80).collect();
    format!("{short:?}")
}

/// The strings of a claim: an array of strings, or one string.
fn strings(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The principal a verified token's claims make, by the issuer's mapping. Of several mapped
/// roles the most privileged counts (admin, operator, finance, auditor, viewer); a tenant role
/// counts only when no other role is granted, and must name exactly one tenant.
pub fn map_claims(issuer: &IssuerSettings, claims: &Value) -> Result<Principal, OidcError> {
    let name = issuer
        .name_claim
        .get(claims)
        .and_then(Value::as_str)
        .ok_or_else(|| {
            OidcError::rejected(
                "claims",
                format!("the token has no string claim {}", issuer.name_claim),
            )
        })?;
    let name = SingleLine::parse(&issuer.name_claim.to_string(), name, 256)
        .map_err(|e| OidcError::rejected("claims", e.to_string()))?;
    let values = strings(issuer.roles_claim.get(claims));
    let grants: Vec<&Grant> = values.iter().filter_map(|v| issuer.roles.get(*v)).collect();
    let rank = |role: &Role| match role {
        Role::Admin => 5,
        Role::Operator => 4,
        Role::Finance => 3,
        Role::Auditor => 2,
        Role::Viewer => 1,
        Role::Tenant(_) => 0,
    };
    let best = grants
        .iter()
        .filter_map(|g| match g {
            Grant::Role(r) if rank(r) > 0 => Some(r),
            _ => None,
        })
        .max_by_key(|r| rank(r));
    let role = match best {
        Some(role) => role.clone(),
        None => {
            let mut tenants: Vec<TenantId> = Vec::new();
            for grant in &grants {
                let found = match grant {
                    Grant::Role(Role::Tenant(id)) => vec![id.clone()],
                    Grant::Role(_) => Vec::new(),
                    Grant::TenantFromClaim => {
                        let path = issuer.tenant_claim.as_ref().expect("checked in validate");
                        let ids = strings(path.get(claims));
                        if ids.is_empty() {
                            return Err(OidcError::NoRole(format!(
                                "the token's role needs a tenant id in claim {path}, which it does not have"
                            )));
                        }
                        ids.iter()
                            .map(|id| {
                                TenantId::parse(id).map_err(|e| {
                                    OidcError::NoRole(format!("claim {path}: {}", e.message))
                                })
                            })
                            .collect::<Result<Vec<_>, _>>()?
                    }
                };
                for id in found {
                    if !tenants.contains(&id) {
                        tenants.push(id);
                    }
                }
            }
            match tenants.as_slice() {
                [one] => Role::Tenant(one.clone()),
                [] => {
                    return Err(OidcError::NoRole(format!(
                        "no value of claim {} maps to a budgetd role",
                        issuer.roles_claim
                    )))
                }
                many => {
                    return Err(OidcError::NoRole(format!(
                        "the token maps to {} tenants ({}); a tenant role speaks for one",
                        many.len(),
                        many.iter()
                            .map(TenantId::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
    };
    Ok(Principal {
        name: name.as_str().to_owned(),
        role,
    })
}

/// A key from a JWKS.
struct CachedKey {
    key: DecodingKey,
    family: AlgorithmFamily,
    /// The key's `alg`, when the JWKS names one: then only that algorithm.
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    jwks_uri: Option<Url>,
    keys: HashMap<String, std::sync::Arc<CachedKey>>,
    fetched_at: Option<Instant>,
    /// The last fetch of any kind: before the first success, failures are retried at most once
    /// per `refetch_interval`.
    last_attempt: Option<Instant>,
    /// The last fetch made while keys were cached (an unknown `kid`, aged keys): at most one
    /// per `refetch_interval`.
    last_refetch: Option<Instant>,
    /// Why the last fetch failed, while no fetch has succeeded since.
    last_error: Option<String>,
}

struct IssuerState {
    settings: IssuerSettings,
    cache: Mutex<KeyCache>,
    /// One fetch at a time per issuer; waiters find its result in the cache.
    fetching: tokio::sync::Mutex<()>,
}

/// The verifier: issuers, their key caches and the HTTP client.
/// One configured mapping of a claim value to a role (the access review lists them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleMapping {
    pub issuer: String,
    /// The claim's dotted path and the value in it that grants the role.
    pub claim: String,
    pub value: String,
    pub role: &'static str,
    /// The tenant a `tenant` grant is for: the claim that names it.
    pub tenant_claim: Option<String>,
}

pub struct Oidc {
    issuers: Vec<IssuerState>,
    client: reqwest::Client,
    settings: OidcSettings,
}

#[derive(Deserialize)]
struct UnverifiedIssuer {
    iss: Option<Value>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

/// Whether a JWS algorithm may be checked with a key of this JWK algorithm.
fn jwk_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The signing keys of a JWKS by `kid`: keys for encryption, without a `kid`, symmetric
/// (`oct`) or of an algorithm budgetd does not verify are left out.
fn signing_keys(doc: JwksDocument) -> HashMap<String, std::sync::Arc<CachedKey>> {
    let mut keys = HashMap::new();
    for value in doc.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => match jwk_algorithm(a) {
                Some(alg) => Some(alg),
                None => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, std::sync::Arc::new(CachedKey { key, family, alg }));
    }
    keys
}

/// Why one fetch failed, and whether another attempt may help.
struct FetchFailure {
    outcome: &'static str,
    message: String,
    retry: bool,
}

impl Oidc {
    pub fn new(settings: OidcSettings) -> Result<Oidc, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(settings.http_timeout)
            .connect_timeout(settings.http_timeout)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("budgetd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Oidc {
            issuers: settings
                .issuers
                .iter()
                .map(|s| IssuerState {
                    settings: s.clone(),
                    cache: Mutex::new(KeyCache::default()),
                    fetching: tokio::sync::Mutex::new(()),
                })
                .collect(),
            client,
            settings,
        })
    }

    /// Whether `token` has a JWT's shape (three base64url parts), so that it is worth checking
    /// here rather than as a static or managed token.
    /// Every issuer's claim-value-to-role mappings, in configuration order.
    pub fn role_mappings(&self) -> Vec<RoleMapping> {
        self.settings
            .issuers
            .iter()
            .flat_map(|issuer| {
                issuer.roles.iter().map(|(value, grant)| {
                    let (role, tenant_claim) = match grant {
                        Grant::Role(role) => (role.name(), None),
                        Grant::TenantFromClaim => (
                            "tenant",
                            issuer.tenant_claim.as_ref().map(|c| c.to_string()),
                        ),
                    };
                    RoleMapping {
                        issuer: issuer.issuer.clone(),
                        claim: issuer.roles_claim.to_string(),
                        value: value.clone(),
                        role,
                        tenant_claim,
                    }
                })
            })
            .collect()
    }

    pub fn looks_like_jwt(token: &str) -> bool {
        let parts: Vec<&str> = token.split('.').collect();
        parts.len() == 3
            && parts[..2].iter().all(|p| !p.is_empty())
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    }

    /// The principal behind a JWT from a configured issuer.
    pub async fn verify(&self, token: &str) -> Result<Principal, OidcError> {
        let (issuer, outcome) = self.verify_inner(token).await;
        let label = match &outcome {
            Ok(_) => "ok",
            Err(e) => e.metric_label(),
        };
        metrics::counter!("budgetd_oidc_tokens_total", "issuer" => issuer, "outcome" => label)
            .increment(1);
        outcome
    }

    async fn verify_inner(&self, token: &str) -> (String, Result<Principal, OidcError>) {
        // `alg` must be one of jsonwebtoken's algorithms: `none` does not parse.
        let header = match jsonwebtoken::decode_header(token) {
            Ok(header) => header,
            Err(_) => {
                return (
                    "unknown".to_owned(),
                    Err(OidcError::rejected(
                        "malformed",
                        "not a JWT with a supported signature algorithm (alg \"none\" is never accepted)",
                    )),
                )
            }
        };
        let iss = jsonwebtoken::dangerous::insecure_decode::<UnverifiedIssuer>(token)
            .ok()
            .and_then(|t| t.claims.iss)
            .and_then(|v| v.as_str().map(str::to_owned));
        let Some(iss) = iss else {
            return (
                "unknown".to_owned(),
                Err(OidcError::rejected("claims", "the token has no iss claim")),
            );
        };
        let Some(state) = self.issuers.iter().find(|s| s.settings.issuer == iss) else {
            return (
                "unknown".to_owned(),
                Err(OidcError::rejected(
                    "issuer",
                    format!("issuer {} is not configured", quoted(&iss)),
                )),
            );
        };
        let issuer = &state.settings;
        let label = issuer.issuer.clone();
        if !issuer.algorithms.contains(&header.alg) {
            return (
                label,
                Err(OidcError::rejected(
                    "algorithm",
                    format!(
                        "algorithm {:?} is not accepted from this issuer (only {:?})",
                        header.alg, issuer.algorithms
                    ),
                )),
            );
        }
        let Some(kid) = header.kid.as_deref() else {
            return (
                label,
                Err(OidcError::rejected(
                    "no_kid",
                    "the token's header has no kid",
                )),
            );
        };
        let key = match self.key(state, kid).await {
            Ok(key) => key,
            Err(e) => return (label, Err(e)),
        };
        // The key decides the family (an RSA key never checks an HMAC), and its `alg` the
        // algorithm when the JWKS names one.
        if !key.family.algorithms().contains(&header.alg)
            || key.alg.is_some_and(|a| a != header.alg)
        {
            return (
                label,
                Err(OidcError::rejected(
                    "algorithm",
                    format!(
                        "algorithm {:?} does not fit key {}",
                        header.alg,
                        quoted(kid)
                    ),
                )),
            );
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.settings.leeway_seconds;
        let claims = match jsonwebtoken::decode::<Value>(token, &key.key, &validation) {
            Ok(data) => data.claims,
            Err(e) => return (label, Err(rejection(e.kind()))),
        };
        (label, map_claims(issuer, &claims))
    }

    /// The key `kid` of `state`'s issuer: from the cache, or after one fetch when it is not
    /// there (or the cache is older than `keys_max_age`), at most one fetch per
    /// `refetch_interval`.
    async fn key(
        &self,
        state: &IssuerState,
        kid: &str,
    ) -> Result<std::sync::Arc<CachedKey>, OidcError> {
        let cached = |state: &IssuerState| {
            let cache = state
                .cache
                .lock()
                .expect("the key cache lock is not poisoned");
            let fresh = cache
                .fetched_at
                .is_some_and(|at| at.elapsed() < self.settings.keys_max_age);
            (cache.keys.get(kid).cloned(), fresh)
        };
        if let (Some(key), true) = cached(state) {
            return Ok(key);
        }
        {
            let _one_fetch = state.fetching.lock().await;
            // Another request may have fetched while this one waited.
            let (key, fresh) = cached(state);
            if let (Some(key), true) = (&key, fresh) {
                return Ok(key.clone());
            }
            let due = {
                let cache = state
                    .cache
                    .lock()
                    .expect("the key cache lock is not poisoned");
                let last = if cache.fetched_at.is_none() {
                    cache.last_attempt
                } else {
                    cache.last_refetch
                };
                last.is_none_or(|at| at.elapsed() >= self.settings.refetch_interval)
            };
            if due {
                self.refresh(state).await;
            } else {
                metrics::counter!(
                    "budgetd_oidc_refetch_limited_total",
                    "issuer" => state.settings.issuer.clone()
                )
                .increment(1);
            }
        }
        let cache = state
            .cache
            .lock()
            .expect("the key cache lock is not poisoned");
        if let Some(key) = cache.keys.get(kid) {
            return Ok(key.clone());
        }
        match (&cache.last_error, cache.fetched_at) {
            (Some(error), None) => Err(OidcError::Unavailable(format!(
                "the keys of issuer {} cannot be fetched: {error}",
                state.settings.issuer
            ))),
            _ => Err(OidcError::rejected(
                "unknown_kid",
                format!(
                    "the issuer has no signing key {} (its keys were fetched {} s ago)",
                    quoted(kid),
                    cache.fetched_at.map_or(0, |at| at.elapsed().as_secs())
                ),
            )),
        }
    }

    /// Fetches the issuer's keys (discovering the JWKS URL first when it is not known) into the
    /// cache. A failure keeps the keys the cache has (an outage of the provider does not lock
    /// out callers whose keys are known) and is logged.
    async fn refresh(&self, state: &IssuerState) {
        let known_uri = {
            let mut cache = state
                .cache
                .lock()
                .expect("the key cache lock is not poisoned");
            let now = Instant::now();
            cache.last_attempt = Some(now);
            if cache.fetched_at.is_some() {
                cache.last_refetch = Some(now);
            }
            cache.jwks_uri.clone()
        };
        let issuer = &state.settings;
        let result = async {
            let jwks_uri = match known_uri {
                Some(uri) => uri,
                None => self.discover(issuer).await?,
            };
            let doc: JwksDocument = self.fetch(issuer, "jwks", &jwks_uri).await?;
            Ok::<_, String>((jwks_uri, signing_keys(doc)))
        }
        .await;
        let mut cache = state
            .cache
            .lock()
            .expect("the key cache lock is not poisoned");
        match result {
            Ok((jwks_uri, keys)) => {
                tracing::info!(issuer = %issuer.issuer, keys = keys.len(), "fetched the issuer's signing keys");
                cache.jwks_uri = Some(jwks_uri);
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                cache.last_error = None;
            }
            Err(error) => {
                tracing::warn!(issuer = %issuer.issuer, %error, "cannot fetch the issuer's signing keys");
                // Discover again next time: the JWKS may have moved.
                cache.jwks_uri = None;
                cache.last_error = Some(error);
            }
        }
    }

    async fn discover(&self, issuer: &IssuerSettings) -> Result<Url, String> {
        let doc: Discovery = self
            .fetch(issuer, "discovery", &issuer.discovery_url)
            .await?;
        // OpenID Connect Discovery 1.0 §4.3: the document is the issuer's own.
        if doc.issuer != issuer.issuer {
            return Err(format!(
                "{} names issuer {}, not the configured one",
                issuer.discovery_url,
                quoted(&doc.issuer)
            ));
        }
        Url::parse(&doc.jwks_uri)
            .ok()
            .filter(usable_url)
            .ok_or_else(|| {
                format!(
                    "{}: jwks_uri {} is not an https:// URL",
                    issuer.discovery_url,
                    quoted(&doc.jwks_uri)
                )
            })
    }

    /// GETs a JSON document of at most [`MAX_DOCUMENT_BYTES`], with the configured timeout and
    /// attempts; `kind` (`discovery`, `jwks`) labels the metrics.
    async fn fetch<T: serde::de::DeserializeOwned>(
        &self,
        issuer: &IssuerSettings,
        kind: &'static str,
        url: &Url,
    ) -> Result<T, String> {
        let mut backoff = self.settings.http_backoff;
        for attempt in 1..=self.settings.http_attempts {
            let started = Instant::now();
            let result = self.fetch_once(url).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(f) => f.outcome,
            };
            metrics::counter!("budgetd_oidc_fetch_total", "issuer" => issuer.issuer.clone(), "kind" => kind, "outcome" => outcome)
                .increment(1);
            metrics::histogram!("budgetd_oidc_fetch_duration_seconds", "issuer" => issuer.issuer.clone(), "kind" => kind)
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(bytes) => {
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| format!("{url}: not a {kind} document: {e}"))
                }
                Err(f) if f.retry && attempt < self.settings.http_attempts => {
                    tracing::debug!(%url, attempt, error = %f.message, "retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                }
                Err(f) => {
                    return Err(format!(
                        "{url}: {} (attempt {attempt} of {})",
                        f.message, self.settings.http_attempts
                    ))
                }
            }
        }
        unreachable!("http_attempts is at least 1")
    }

    async fn fetch_once(&self, url: &Url) -> Result<Vec<u8>, FetchFailure> {
        let failure = |outcome, message: String, retry| FetchFailure {
            outcome,
            message,
            retry,
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                let outcome = if e.is_timeout() { "timeout" } else { "connect" };
                failure(
                    outcome,
                    format!("request failed: {}", error_chain(&e)),
                    true,
                )
            })?;
        let status = response.status();
        if !status.is_success() {
            let retry = status.is_server_error() || status.as_u16() == 429;
            let outcome = if status.is_server_error() {
                "http_5xx"
            } else {
                "http_4xx"
            };
            return Err(failure(outcome, format!("answered {status}"), retry));
        }
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                        return Err(failure(
                            "too_large",
                            format!("the document is larger than {MAX_DOCUMENT_BYTES} bytes"),
                            false,
                        ));
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body),
                Err(e) => {
                    let outcome = if e.is_timeout() { "timeout" } else { "body" };
                    return Err(failure(
                        outcome,
                        format!("reading the body: {}", error_chain(&e)),
                        true,
                    ));
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn rejection(kind: &jsonwebtoken::errors::ErrorKind) -> OidcError {
    use jsonwebtoken::errors::ErrorKind::*;
    match kind {
        ExpiredSignature => OidcError::rejected("expired", "the token has expired"),
        ImmatureSignature => {
            OidcError::rejected("not_yet_valid", "the token is not valid yet (nbf)")
        }
        InvalidIssuer => {
            OidcError::rejected("issuer", "the token's issuer is not the configured one")
        }
        InvalidAudience => OidcError::rejected(
            "audience",
            "the token is not for budgetd (aud does not name the configured audience)",
        ),
        InvalidSignature => OidcError::rejected("signature", "the token's signature is not valid"),
        InvalidAlgorithm => {
            OidcError::rejected("algorithm", "the token's algorithm does not fit its key")
        }
        MissingRequiredClaim(claim) => OidcError::rejected(
            "claims",
            format!("the token has no {} claim", quoted(claim)),
        ),
        InvalidClaimFormat(claim) => OidcError::rejected(
            "claims",
            format!("the token's {} claim has the wrong type", quoted(claim)),
        ),
        _ => OidcError::rejected("malformed", "the token cannot be read"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issuer(
        roles_claim: &str,
        roles: &[(&str, &str)],
        tenant_claim: Option<&str>,
    ) -> IssuerSettings {
        let section = OidcSection {
            issuers: vec![IssuerSection {
                issuer: "https://idp.example.com/realms/platform".into(),
                audience: "budgetd".into(),
                algorithms: default_algorithms(),
                roles_claim: roles_claim.into(),
                roles: roles
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                tenant_claim: tenant_claim.map(str::to_owned),
                name_claim: "preferred_username".into(),
            }],
            ..OidcSection::default()
        };
        section.validate().unwrap().issuers.remove(0)
    }

    fn tenant(id: &str) -> Role {
        Role::Tenant(TenantId::parse(id).unwrap())
    }

    #[test]
    fn keycloak_realm_roles_and_groups_map_to_roles() {
        let kc = issuer(
            "realm_access.roles",
            &[
                ("budgetd-admin", "admin"),
                ("budgetd-auditor", "auditor"),
                ("budgetd-tenant", "tenant"),
                ("acme-owners", "tenant:acme"),
            ],
            Some("tenant"),
        );
        let claims = |roles: Value, extra: Value| {
            let mut c = json!({"preferred_username": "alice", "realm_access": {"roles": roles}});
            if let Value::Object(extra) = extra {
                c.as_object_mut().unwrap().extend(extra);
            }
            c
        };
        let p = map_claims(
            &kc,
            &claims(json!(["offline_access", "budgetd-auditor"]), json!({})),
        )
        .unwrap();
        assert_eq!((p.name.as_str(), p.role), ("alice", Role::Auditor));
        // The most privileged role counts; a tenant role only alone.
        let p = map_claims(
            &kc,
            &claims(
                json!(["budgetd-auditor", "budgetd-admin", "acme-owners"]),
                json!({}),
            ),
        )
        .unwrap();
        assert_eq!(p.role, Role::Admin);
        let p = map_claims(&kc, &claims(json!(["acme-owners"]), json!({}))).unwrap();
        assert_eq!(p.role, tenant("acme"));
        let p = map_claims(
            &kc,
            &claims(json!(["budgetd-tenant"]), json!({"tenant": "globex"})),
        )
        .unwrap();
        assert_eq!(p.role, tenant("globex"));
        // The same tenant twice is one tenant; two tenants are refused.
        let p = map_claims(
            &kc,
            &claims(
                json!(["budgetd-tenant", "acme-owners"]),
                json!({"tenant": "acme"}),
            ),
        )
        .unwrap();
        assert_eq!(p.role, tenant("acme"));
        let e = map_claims(
            &kc,
            &claims(
                json!(["budgetd-tenant", "acme-owners"]),
                json!({"tenant": "globex"}),
            ),
        )
        .unwrap_err();
        assert!(
            matches!(e, OidcError::NoRole(ref m) if m.contains("2 tenants")),
            "{e:?}"
        );
        let e = map_claims(&kc, &claims(json!(["budgetd-tenant"]), json!({}))).unwrap_err();
        assert!(
            matches!(e, OidcError::NoRole(ref m) if m.contains("claim tenant")),
            "{e:?}"
        );
        let e = map_claims(
            &kc,
            &claims(json!(["budgetd-tenant"]), json!({"tenant": "Not A Tenant"})),
        )
        .unwrap_err();
        assert!(matches!(e, OidcError::NoRole(_)), "{e:?}");
        let e = map_claims(&kc, &claims(json!(["offline_access"]), json!({}))).unwrap_err();
        assert!(
            matches!(e, OidcError::NoRole(ref m) if m.contains("realm_access.roles")),
            "{e:?}"
        );
        let e =
            map_claims(&kc, &json!({"realm_access": {"roles": ["budgetd-admin"]}})).unwrap_err();
        assert!(
            matches!(
                e,
                OidcError::Rejected {
                    reason: "claims",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = map_claims(
            &kc,
            &json!({"preferred_username": "a\nb", "realm_access": {"roles": ["budgetd-admin"]}}),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                OidcError::Rejected {
                    reason: "claims",
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn entra_app_roles_and_group_ids_map_to_roles() {
        let roles = issuer(
            "roles",
            &[
                ("Budgetd.Operator", "operator"),
                ("Budgetd.Finance", "finance"),
            ],
            None,
        );
        let p = map_claims(
            &roles,
            &json!({"preferred_username": "bob@contoso.com", "roles": ["Budgetd.Finance"]}),
        )
        .unwrap();
        assert_eq!(
            (p.name.as_str(), p.role),
            ("bob@contoso.com", Role::Finance)
        );
        // A single string is a list of one.
        let p = map_claims(
            &roles,
            &json!({"preferred_username": "bob@contoso.com", "roles": "Budgetd.Operator"}),
        )
        .unwrap();
        assert_eq!(p.role, Role::Operator);
        let groups = issuer(
            "groups",
            &[("5f6c6a9e-0000-4000-8000-000000000001", "viewer")],
            None,
        );
        let p = map_claims(&groups, &json!({"preferred_username": "c", "groups": ["00000000-0000-0000-0000-000000000000", "5f6c6a9e-0000-4000-8000-000000000001"]})).unwrap();
        assert_eq!(p.role, Role::Viewer);
        let e = map_claims(&groups, &json!({"preferred_username": "c"})).unwrap_err();
        assert!(matches!(e, OidcError::NoRole(_)));
    }

    #[test]
    fn the_section_is_checked_key_by_key() {
        let base = || IssuerSection {
            issuer: "https://login.microsoftonline.com/0000/v2.0".into(),
            audience: "api://budgetd".into(),
            algorithms: default_algorithms(),
            roles_claim: "roles".into(),
            roles: [("Budgetd.Admin".to_owned(), "admin".to_owned())].into(),
            tenant_claim: None,
            name_claim: "preferred_username".into(),
        };
        let check = |issuer: IssuerSection| {
            OidcSection {
                issuers: vec![issuer],
                ..OidcSection::default()
            }
            .validate()
            .map(|s| s.issuers[0].discovery_url.to_string())
            .map_err(|e| e.field)
        };
        assert_eq!(
            check(base()),
            Ok(
                "https://login.microsoftonline.com/0000/v2.0/.well-known/openid-configuration"
                    .to_owned()
            )
        );
        for (bad, field) in [
            (
                IssuerSection {
                    issuer: "http://idp.example.com".into(),
                    ..base()
                },
                "oidc.issuers[0].issuer",
            ),
            (
                IssuerSection {
                    issuer: "not a url".into(),
                    ..base()
                },
                "oidc.issuers[0].issuer",
            ),
            (
                IssuerSection {
                    audience: " ".into(),
                    ..base()
                },
                "oidc.issuers[0].audience",
            ),
            (
                IssuerSection {
                    algorithms: vec!["HS256".into()],
                    ..base()
                },
                "oidc.issuers[0].algorithms",
            ),
            (
                IssuerSection {
                    algorithms: vec!["none".into()],
                    ..base()
                },
                "oidc.issuers[0].algorithms",
            ),
            (
                IssuerSection {
                    algorithms: vec![],
                    ..base()
                },
                "oidc.issuers[0].algorithms",
            ),
            (
                IssuerSection {
                    roles_claim: "realm_access..roles".into(),
                    ..base()
                },
                "oidc.issuers[0].roles_claim",
            ),
            (
                IssuerSection {
                    roles: BTreeMap::new(),
                    ..base()
                },
                "oidc.issuers[0].roles",
            ),
            (
                IssuerSection {
                    roles: [("x".to_owned(), "root".to_owned())].into(),
                    ..base()
                },
                "oidc.issuers[0].roles.x",
            ),
            (
                IssuerSection {
                    roles: [("x".to_owned(), "tenant".to_owned())].into(),
                    ..base()
                },
                "oidc.issuers[0].roles.x",
            ),
            (
                IssuerSection {
                    roles: [("x".to_owned(), "tenant:Bad_Id".to_owned())].into(),
                    ..base()
                },
                "oidc.issuers[0].roles.x",
            ),
        ] {
            assert_eq!(check(bad), Err(field.to_owned()));
        }
        // Plain HTTP is for loopback only.
        assert!(check(IssuerSection {
            issuer: "http://127.0.0.1:8081/realms/x".into(),
            ..base()
        })
        .is_ok());
        let twice = OidcSection {
            issuers: vec![base(), base()],
            ..OidcSection::default()
        };
        assert_eq!(
            twice.validate().unwrap_err().field,
            "oidc.issuers[1].issuer"
        );
        let zero = OidcSection {
            http_attempts: 0,
            ..OidcSection::default()
        };
        assert_eq!(zero.validate().unwrap_err().field, "oidc.http_attempts");
    }

    #[test]
    fn only_jwt_shaped_tokens_are_checked_as_jwts() {
        assert!(Oidc::looks_like_jwt("eyJh.eyJz.sig-_"));
        assert!(Oidc::looks_like_jwt("eyJh.eyJz."));
        for other in [
            "bdt_abc",
            "a.b",
            "a.b.c.d",
            ".b.c",
            "a b.c.d",
            "admin-token-0123456789",
        ] {
            assert!(!Oidc::looks_like_jwt(other), "{other}");
        }
    }
}
