//! The HTTP client `budgetd tenants` talks to the API with: one base URL and bearer token,
//! a timeout on every call, bounded retries of idempotent reads, and failures turned into
//! messages that say what to fix (the URL, the token, the daemon, or the input).

use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;
use url::Url;

/// How often a read is tried in all (a write is tried once: the API refuses a repeated
/// approve or request, so a write whose answer was lost is not sent again).
pub const READ_ATTEMPTS: u32 = 3;
/// The wait before the second attempt of a read; it doubles for each later one.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Why a command failed. `Usage` is the caller's to fix before anything is sent (exit 2);
/// `Failed` is what the API or the network answered (exit 1).
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Failed(String),
}

impl Failure {
    pub fn message(&self) -> &str {
        match self {
            Failure::Usage(m) | Failure::Failed(m) => m,
        }
    }
}

/// Where the API is and who calls it; `--api-url`, `--token` and `--timeout-ms` as given.
pub struct Target {
    pub api_url: Option<String>,
    pub token: Option<SecretString>,
    pub timeout: Duration,
}

pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    auth: HeaderValue,
    timeout: Duration,
}

/// A response of the API: its status, body and request id.
pub struct Answer {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// The `x-request-id` the daemon logged the request under.
    pub request_id: Option<String>,
}

impl Answer {
    pub fn json(&self) -> Result<Value, Failure> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Failure::Failed(format!(
                "the API answered {} with a body that is not JSON ({e}); is BUDGETD_API_URL the budgetd API?",
                self.status
            ))
        })
    }
}

impl ApiClient {
    /// Checks the URL and the token before anything is sent.
    pub fn new(target: Target) -> Result<Self, Failure> {
        let raw = target
            .api_url
            .filter(|u| !u.trim().is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "no API URL: set BUDGETD_API_URL or pass --api-url (the daemon's api.listen, \
                 e.g. http://127.0.0.1:8080)"
                        .to_owned(),
                )
            })?;
        let base = parse_base_url(raw.trim())?;
        let token = target
            .token
            .filter(|t| !t.expose_secret().trim().is_empty())
            .ok_or_else(|| {
                Failure::Usage(
                    "no API token: set BUDGETD_TOKEN (or pass --token) to a token of the \
                     daemon's [[api.tokens]] or its BUDGETD_BOOTSTRAP_ADMIN_TOKEN"
                        .to_owned(),
                )
            })?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret().trim()))
            .map_err(|_| {
            Failure::Usage(
                "BUDGETD_TOKEN (or --token) holds characters a token cannot have \
                         (control characters or non-ASCII); copy the token again"
                    .to_owned(),
            )
        })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(target.timeout)
            .timeout(target.timeout)
            // A redirect could carry the token elsewhere; the API never redirects.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("budgetd-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Failure::Failed(format!("cannot build the HTTP client: {e}")))?;
        Ok(ApiClient {
            http,
            base,
            auth,
            timeout: target.timeout,
        })
    }

    /// The URL of `segments` under the base URL, each segment percent-encoded.
    pub fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// A read, tried up to [`READ_ATTEMPTS`] times while the connection fails, it times out
    /// or the API answers 502, 503 or 504. Any answer of the API's but success is a failure.
    pub async fn get(&self, url: Url) -> Result<Answer, Failure> {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            let result = self.send_once(Method::GET, url.clone(), None).await;
            let retryable = match &result {
                Err(e) => e.is_connect() || e.is_timeout(),
                Ok(answer) => matches!(
                    answer.status,
                    StatusCode::BAD_GATEWAY
                        | StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::GATEWAY_TIMEOUT
                ),
            };
            if !retryable || attempt == READ_ATTEMPTS {
                return match result {
                    Ok(answer) => self.check(&url, answer),
                    Err(e) => Err(self.transport_failure(&url, e, attempt)),
                };
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
            attempt += 1;
        }
    }

    /// A write (POST, DELETE), sent once.
    pub async fn write(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, Failure> {
        match self.send_once(method, url.clone(), body).await {
            Ok(answer) => self.check(&url, answer),
            Err(e) => Err(self.transport_failure(&url, e, 1)),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        url: Url,
        body: Option<&Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self
            .http
            .request(method, url)
            .header(AUTHORIZATION, self.auth.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(sanitize);
        let body = response.bytes().await?.to_vec();
        Ok(Answer {
            status,
            body,
            request_id,
        })
    }

    /// Success as it is; anything else as the API's error, named and explained.
    fn check(&self, url: &Url, answer: Answer) -> Result<Answer, Failure> {
        if answer.status.is_success() {
            return Ok(answer);
        }
        let status = answer.status;
        if status.is_redirection() {
            return Err(Failure::Failed(format!(
                "{url} answered {status}, a redirect; the budgetd API does not redirect: set \
                 BUDGETD_API_URL to the API's own address"
            )));
        }
        let Some(error) = ApiErrorBody::parse(&answer.body) else {
            return Err(Failure::Failed(format!(
                "{url} answered {status} without the budgetd API's error JSON: is \
                 BUDGETD_API_URL (or --api-url) the address of the budgetd API?"
            )));
        };
        let mut message = format!(
            "the API refused the request: {} ({} {})",
            error.message,
            status.as_u16(),
            error.code
        );
        if let Some(field) = &error.field {
            message.push_str(&format!("\n  field: {field}"));
            if let Some(flag) = flag_for(field) {
                message.push_str(&format!(" (the {flag} option)"));
            }
        }
        if let Some(current) = error.extra.get("current_state").and_then(Value::as_str) {
            message.push_str(&format!("\n  current state: {current}"));
        }
        if let Some(allowed) = error.extra.get("allowed").and_then(Value::as_array) {
            let allowed: Vec<&str> = allowed.iter().filter_map(Value::as_str).collect();
            let allowed = if allowed.is_empty() {
                "none (a final state)".to_owned()
            } else {
                allowed.join(", ")
            };
            message.push_str(&format!("\n  allowed next states: {allowed}"));
        }
        match status {
            StatusCode::UNAUTHORIZED if error.code == "unauthorized" => message.push_str(
                "\n  the daemon does not know this token: check BUDGETD_TOKEN (or --token); it \
                 must be one of the daemon's [[api.tokens]], a token of `budgetd tokens create` \
                 or its BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
            ),
            StatusCode::FORBIDDEN if error.code == "forbidden" => message.push_str(
                "\n  this token's role may not do this: use an operator's or an admin's token",
            ),
            StatusCode::SERVICE_UNAVAILABLE => {
                message.push_str("\n  the daemon or its database is busy or down; retry later")
            }
            _ => {}
        }
        if let Some(id) = &answer.request_id {
            message.push_str(&format!("\n  request id: {id} (the daemon's log names it)"));
        }
        Err(Failure::Failed(message))
    }

    fn transport_failure(&self, url: &Url, e: reqwest::Error, attempts: u32) -> Failure {
        let tries = if attempts > 1 {
            format!(" (tried {attempts} times)")
        } else {
            String::new()
        };
        let origin = origin(url);
        if e.is_timeout() {
            return Failure::Failed(format!(
                "the budgetd API at {origin} did not answer within {} ms{tries}: check that the \
                 daemon is healthy (GET {origin}/readyz) or give it longer with --timeout-ms",
                self.timeout.as_millis()
            ));
        }
        if e.is_connect() {
            let cause = if refused(&e) {
                "connection refused, nothing listens there".to_owned()
            } else {
                causes(e)
            };
            return Failure::Failed(format!(
                "cannot connect to the budgetd API at {origin}: {cause}{tries}; check that \
                 budgetd runs there (`budgetd run`) and that BUDGETD_API_URL (or --api-url) is \
                 its api.listen address"
            ));
        }
        Failure::Failed(format!(
            "the call to the budgetd API at {origin} failed: {}{tries}",
            causes(e)
        ))
    }
}

/// `http://host:port` of a URL, for messages (never a query or credentials).
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

/// Whether the connection was refused (the cause chain holds that I/O error).
fn refused(e: &reqwest::Error) -> bool {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = s.source();
    }
    false
}

/// The error's causes, innermost last, without the URL reqwest puts in its own text.
fn causes(e: reqwest::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.contains(&text) {
            parts.push(text);
        }
        source = s.source();
    }
    if parts.is_empty() {
        parts.push(e.without_url().to_string());
    }
    parts.join(": ")
}

/// A base URL: http with a host, no query, credentials or `/api/v1` (the commands add it).
pub fn parse_base_url(raw: &str) -> Result<Url, Failure> {
    let bad = |why: &str| {
        Failure::Usage(format!(
            "BUDGETD_API_URL (or --api-url) {raw:?} {why}; give the API's base URL, such as \
             http://127.0.0.1:8080"
        ))
    };
    let url = Url::parse(raw).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    // https with the system's CA roots (the build has TLS for the OIDC issuers' keys).
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("is not an http:// or https:// URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(
            "holds credentials; the token goes in BUDGETD_TOKEN, not in the URL",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("has a query or fragment"));
    }
    if url.path().trim_end_matches('/').ends_with("/api/v1") {
        return Err(bad("ends with /api/v1, which the commands add themselves"));
    }
    Ok(url)
}

/// `{"error": {"code", "message", "field"?, ...}}`, the API's error shape.
struct ApiErrorBody {
    code: String,
    message: String,
    field: Option<String>,
    extra: serde_json::Map<String, Value>,
}

impl ApiErrorBody {
    fn parse(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let mut error = value.get("error")?.as_object()?.clone();
        let code = error.remove("code")?.as_str()?.to_owned();
        let message = error.remove("message")?.as_str()?.to_owned();
        let field = match error.remove("field") {
            Some(Value::String(f)) => Some(f),
            _ => None,
        };
        Some(ApiErrorBody {
            code: sanitize(&code),
            message: sanitize(&message),
            field: field.as_deref().map(sanitize),
            extra: error,
        })
    }
}

/// The command-line option that sets an API field (`data_residency` is `--data-residency`),
/// so that a refused value can be found on the command line.
pub fn flag_for(field: &str) -> Option<&'static str> {
    let flag = match field.split(['.', '[']).next()? {
        "id" => "--id",
        "display_name" => "--display-name",
        "owner" => "--owner",
        "owner_group" => "--owner-group",
        "data_residency" => "--data-residency",
        "labels" => "--label",
        "quota_profile" => "--quota-profile",
        "justification" => "--justification",
        "namespaces" => "--namespace",
        "reason" => "--reason",
        "state" => "--state",
        "format" => "--format",
        "role" => "--role",
        "tenant" => "--tenant",
        "expires_at" => "--expires-at",
        "budget" => match field {
            "budget.amount" => "--budget-amount",
            "budget.currency" => "--budget-currency",
            "budget.period" => "--budget-period",
            _ => return None,
        },
        _ => return None,
    };
    Some(flag)
}

/// Text from the API, safe for a terminal: control characters are shown escaped.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_http_without_credentials_query_or_api_prefix() {
        for good in [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://proxy.example/budgetd/",
            "https://budgetd.example",
        ] {
            assert!(parse_base_url(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("localhost:8080", "not an http:// or https:// URL"),
            ("127.0.0.1:8080", "not a URL"),
            ("ftp://x", "not an http:// or https:// URL"),
            ("http://u:p@127.0.0.1:8080", "credentials"),
            ("http://127.0.0.1:8080/?a=b", "query"),
            ("http://127.0.0.1:8080/api/v1", "/api/v1"),
        ] {
            match parse_base_url(bad) {
                Err(Failure::Usage(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {:?}", other.map(|u| u.to_string())),
            }
        }
    }

    #[test]
    fn urls_encode_each_segment_under_the_base_path() {
        let client = ApiClient::new(Target {
            api_url: Some("http://proxy.example/budgetd/".into()),
            token: Some("t0ken".to_owned().into()),
            timeout: Duration::from_secs(1),
        })
        .unwrap();
        let url = client.url(&["api", "v1", "tenants", "a/b?c"], &[("state", "active&x")]);
        assert_eq!(
            url.as_str(),
            "http://proxy.example/budgetd/api/v1/tenants/a%2Fb%3Fc?state=active%26x"
        );
    }

    #[test]
    fn fields_name_their_options() {
        assert_eq!(flag_for("data_residency"), Some("--data-residency"));
        assert_eq!(flag_for("budget.amount"), Some("--budget-amount"));
        assert_eq!(flag_for("labels.team"), Some("--label"));
        assert_eq!(flag_for("namespaces[1]"), Some("--namespace"));
        assert_eq!(flag_for("thresholds"), None);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(sanitize("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
