//! OIDC sign-in against an identity provider served by the test over HTTP: a discovery
//! document and a JWKS with RSA keys generated here, and the real router in front of a real
//! Postgres. Every way a token can be wrong is refused with 401 and changes nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use budgetd::oidc::{IssuerSection, Oidc, OidcSection};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use testkit::tcp_proxy::RefusingPort;

use crate::support::*;

/// A key pair of the test's identity provider.
struct Key {
    kid: &'static str,
    private: RsaPrivateKey,
}

impl Key {
    fn generate(kid: &'static str) -> Key {
        Key {
            kid,
            private: RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("an RSA key"),
        }
    }

    fn jwk(&self) -> Value {
        let public = self.private.to_public_key();
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        })
    }

    fn sign(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        let der = self.private.to_pkcs1_der().expect("DER");
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_der(der.as_bytes()))
            .expect("a signed token")
    }
}

/// The identity provider: discovery and JWKS, counting fetches.
#[derive(Clone)]
struct Idp {
    issuer: String,
    jwks: Arc<Mutex<Value>>,
    discovery_hits: Arc<AtomicUsize>,
    jwks_hits: Arc<AtomicUsize>,
}

async fn discovery(State(idp): State<Idp>) -> Json<Value> {
    idp.discovery_hits.fetch_add(1, Ordering::SeqCst);
    Json(json!({
        "issuer": idp.issuer,
        "jwks_uri": format!("{}/protocol/openid-connect/certs", idp.issuer),
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(idp): State<Idp>) -> Json<Value> {
    idp.jwks_hits.fetch_add(1, Ordering::SeqCst);
    Json(idp.jwks.lock().unwrap().clone())
}

/// Serves a Keycloak-shaped realm `test` on a free loopback port.
async fn serve_idp(keys: Value) -> Idp {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!(
        "http://{}/realms/test",
        listener.local_addr().expect("an address")
    );
    let idp = Idp {
        issuer,
        jwks: Arc::new(Mutex::new(keys)),
        discovery_hits: Arc::new(AtomicUsize::new(0)),
        jwks_hits: Arc::new(AtomicUsize::new(0)),
    };
    let router = Router::new()
        .route(
            "/realms/test/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/realms/test/protocol/openid-connect/certs", get(jwks))
        .with_state(idp.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    idp
}

fn section(issuer: &str) -> IssuerSection {
    IssuerSection {
        issuer: issuer.to_owned(),
        audience: "budgetd".to_owned(),
        algorithms: vec!["RS256".to_owned()],
        roles_claim: "realm_access.roles".to_owned(),
        roles: [
            ("budgetd-admin", "admin"),
            ("budgetd-auditor", "auditor"),
            ("acme-owners", "tenant:acme"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
        tenant_claim: None,
        name_claim: "preferred_username".to_owned(),
    }
}

fn oidc(issuers: Vec<IssuerSection>) -> Oidc {
    let settings = OidcSection {
        issuers,
        http_timeout_ms: 2_000,
        http_attempts: 2,
        http_backoff_ms: 50,
        ..OidcSection::default()
    }
    .validate()
    .expect("valid settings");
    Oidc::new(settings).expect("a client")
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Valid claims of user `name` with realm roles `roles`, valid for ten minutes.
fn claims(issuer: &str, name: &str, roles: &[&str]) -> Value {
    json!({
        "iss": issuer,
        "aud": ["budgetd", "account"],
        "sub": format!("sub-{name}"),
        "preferred_username": name,
        "iat": now(),
        "nbf": now() - 5,
        "exp": now() + 600,
        "realm_access": {"roles": roles},
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn oidc_tokens_are_verified_against_the_issuers_keys() {
    let (k1, k2, k3) = tokio::task::spawn_blocking(|| {
        (
            Key::generate("k1"),
            Key::generate("k2"),
            Key::generate("k3"),
        )
    })
    .await
    .unwrap();
    let idp = serve_idp(json!({"keys": [k1.jwk()]})).await;
    let app = app_with_auth(|a| a.with_oidc(Some(oidc(vec![section(&idp.issuer)])))).await;
    seed_tenants(&app, &["acme", "globex"]).await;
    let iss = idp.issuer.as_str();

    // A valid token of an admin: 200, and its mutations are audited under its name.
    let admin = k1.sign(
        "k1",
        &claims(iss, "alice", &["offline_access", "budgetd-admin"]),
    );
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&admin), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        idp.discovery_hits.load(Ordering::SeqCst),
        1,
        "discovered once"
    );
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1, "fetched once");
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&admin),
            Some(tenant_body("by-oidc")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    let (actor, role): (String, String) =
        sqlx::query_as("select actor, role from audit_log order by seq desc limit 1")
            .fetch_one(app.db.store.pool())
            .await
            .unwrap();
    assert_eq!((actor.as_str(), role.as_str()), ("alice", "admin"));

    // Within the clock skew (60 s) an expired token still passes; beyond it, not.
    let skewed = k1.sign(
        "k1",
        &with(
            claims(iss, "alice", &["budgetd-admin"]),
            "exp",
            json!(now() - 20),
        ),
    );
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&skewed), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    // Every way to be wrong: 401 `invalid_token` with the reason, and nothing changes.
    let base = || claims(iss, "mallory", &["budgetd-admin"]);
    let public_pem = k1
        .private
        .to_public_key()
        .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
        .unwrap();
    let public_der = k1.private.to_public_key().to_pkcs1_der().unwrap();
    let hs256 = |secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".to_owned());
        jsonwebtoken::encode(&header, &base(), &EncodingKey::from_secret(secret)).unwrap()
    };
    let unsigned = |alg: &str| {
        format!(
            "{}.{}.",
            b64(&json!({"alg": alg, "typ": "JWT", "kid": "k1"})),
            b64(&base())
        )
    };
    let valid = k1.sign("k1", &base());
    let (head, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let tampered = format!(
        "{head}.{}.{signature}",
        b64(&with(base(), "preferred_username", json!("root")))
    );
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            k1.sign("k1", &with(base(), "exp", json!(now() - 120))),
            "expired",
        ),
        (
            "not yet valid",
            k1.sign("k1", &with(base(), "nbf", json!(now() + 600))),
            "not valid yet",
        ),
        (
            "wrong issuer",
            k1.sign("k1", &with(base(), "iss", json!(format!("{iss}-other")))),
            "is not configured",
        ),
        (
            "wrong audience",
            k1.sign("k1", &with(base(), "aud", json!("another-client"))),
            "aud",
        ),
        (
            "no audience",
            k1.sign("k1", &without(base(), "aud")),
            "\"aud\"",
        ),
        (
            "no expiry",
            k1.sign("k1", &without(base(), "exp")),
            "\"exp\"",
        ),
        (
            "expiry of the wrong type",
            k1.sign(
                "k1",
                &with(base(), "exp", json!(format!("{}", now() + 600))),
            ),
            "\"exp\"",
        ),
        ("signed by another key", k2.sign("k1", &base()), "signature"),
        ("tampered claims", tampered, "signature"),
        ("alg none", unsigned("none"), "alg \"none\""),
        ("alg None", unsigned("None"), "alg \"none\""),
        (
            "HS256 with the public key (PEM) as secret",
            hs256(public_pem.as_bytes()),
            "algorithm",
        ),
        (
            "HS256 with the public key (DER) as secret",
            hs256(public_der.as_bytes()),
            "algorithm",
        ),
        (
            "no kid",
            {
                let der = k1.private.to_pkcs1_der().unwrap();
                jsonwebtoken::encode(
                    &Header::new(Algorithm::RS256),
                    &base(),
                    &EncodingKey::from_rsa_der(der.as_bytes()),
                )
                .unwrap()
            },
            "kid",
        ),
    ];
    for (what, token, says) in cases {
        let before = app.snapshot().await;
        let reply = app
            .call(
                Method::POST,
                "/api/v1/tenants",
                Some(&token),
                Some(tenant_body("not-created")),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {:?}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{what}: {message:?} should say {says:?}"
        );
        assert_eq!(app.snapshot().await, before, "{what} changed something");
    }
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 1, "no refetch so far");

    // Key rotation: a token signed with a key the cache does not know makes one refetch.
    *idp.jwks.lock().unwrap() = json!({"keys": [k1.jwk(), k2.jwk()]});
    let rotated = k2.sign("k2", &claims(iss, "bob", &["budgetd-auditor"]));
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&rotated), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2, "one refetch");
    // Another unknown kid within the refetch interval is refused without a fetch...
    let unknown = k3.sign("k3", &claims(iss, "eve", &["budgetd-admin"]));
    for _ in 0..3 {
        let reply = app
            .call(Method::GET, "/api/v1/tenants", Some(&unknown), None)
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{:?}", reply.body);
        assert!(reply.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no signing key \"k3\""));
    }
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2, "rate limited");
    // ...and known keys go on working from the cache.
    for token in [&rotated, &admin] {
        let reply = app
            .call(Method::GET, "/api/v1/tenants", Some(token), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    }
    assert_eq!(idp.jwks_hits.load(Ordering::SeqCst), 2);
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);

    // Roles from the claim: the auditor reads and may not write; a tenant group sees its
    // tenant only; a token with no mapped role is 403.
    let reply = app
        .call(
            Method::POST,
            "/api/v1/tenants",
            Some(&rotated),
            Some(tenant_body("by-auditor")),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{:?}", reply.body);
    let owner = k1.sign("k1", &claims(iss, "carol", &["acme-owners"]));
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&owner), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let listed: Vec<&str> = reply.body["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, ["acme"]);
    let reply = app
        .call(Method::GET, "/api/v1/tenants/globex", Some(&owner), None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    let nobody = k1.sign("k1", &claims(iss, "dave", &["offline_access"]));
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&nobody), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{:?}", reply.body);
    assert_eq!(reply.body["error"]["code"], "no_role");

    // Static tokens keep working next to OIDC.
    let reply = app
        .call(Method::GET, "/api/v1/tokens", Some(&token("admin")), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

/// An issuer whose discovery document cannot be fetched: 503, not 401, so that callers retry
/// instead of concluding that their token is bad; and a discovery document that names another
/// issuer is not trusted.
#[tokio::test]
async fn an_unreachable_or_foreign_issuer_is_not_trusted() {
    let key = tokio::task::spawn_blocking(|| Key::generate("k1"))
        .await
        .unwrap();
    // A port nothing listens on, held for the whole test: a port given up could be handed to
    // the IdP below, which would then answer for `down`.
    let closed = RefusingPort::new();
    let down = format!("http://{}/realms/test", closed.addr());
    let idp = serve_idp(json!({"keys": [key.jwk()]})).await;
    // The served realm's discovery says `issuer` is idp.issuer; configured under another name
    // (`localhost` instead of 127.0.0.1) it is someone else's document.
    let alias = idp.issuer.replace("127.0.0.1", "localhost");
    let app =
        app_with_auth(|a| a.with_oidc(Some(oidc(vec![section(&down), section(&alias)])))).await;

    let token = key.sign("k1", &claims(&down, "alice", &["budgetd-admin"]));
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&token), None)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], "identity_provider_unavailable");

    let token = key.sign("k1", &claims(&alias, "alice", &["budgetd-admin"]));
    let reply = app
        .call(Method::GET, "/api/v1/tenants", Some(&token), None)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        reply.body
    );
    assert_eq!(idp.discovery_hits.load(Ordering::SeqCst), 1);
    assert_eq!(
        idp.jwks_hits.load(Ordering::SeqCst),
        0,
        "keys of a foreign issuer are not read"
    );
}
