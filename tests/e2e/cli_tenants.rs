//! `budgetd tenants ...` against a real `budgetd run`: a request, its listing, a refused
//! self-approval and an approval with a second token, tables and `--output json`, a
//! rejection; and messages that say what to fix for a wrong URL, an unreachable or silent
//! API, a missing or unknown token, a role that may not, and bad input (the field named).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};

use sha2::{Digest, Sha256};
use testkit::tcp_proxy::RefusingPort;

use crate::cli::{http, listen_addr, log_lines, run, wait_for};

const ADMIN: &str = "admin-token-for-the-tenants-cli";
const OPERATOR: &str = "operator-token-for-the-tenants-cli";
const VIEWER: &str = "viewer-token-for-the-tenants-cli";

/// A `budgetd run` serving the API only, killed when dropped.
struct Daemon {
    child: Child,
    addr: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// `budgetd` with none of the daemon's or the client's variables but `vars`.
fn budgetd(vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_budgetd"));
    for var in budgetd::config::ENV {
        cmd.env_remove(var.name);
    }
    cmd.env_remove("BUDGETD_API_URL")
        .env_remove("BUDGETD_TOKEN")
        .envs(vars.iter().copied())
        .stdin(Stdio::null());
    cmd
}

/// The daemon on `db_url` with an admin (bootstrap), an operator and a viewer token.
fn start_daemon(db_url: &str, dir: &std::path::Path) -> Daemon {
    let sha = |token: &str| hex::encode(Sha256::digest(token.as_bytes()));
    let config = dir.join("budgetd.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{db_url}\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n\n\
             [[api.tokens]]\nname = \"ops-olivia\"\nrole = \"operator\"\nsha256 = \"{}\"\n\n\
             [[api.tokens]]\nname = \"viewer-vic\"\nrole = \"viewer\"\nsha256 = \"{}\"\n",
            sha(OPERATOR),
            sha(VIEWER)
        ),
    )
    .unwrap();
    let mut child = budgetd(&[
        ("BUDGETD_CONFIG", config.to_str().unwrap()),
        ("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN),
        ("BUDGETD_LOG", "info"),
    ])
    .arg("run")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let lines = log_lines(child.stderr.take().unwrap());
    let addr = listen_addr(&wait_for(&lines, "budgetd API listening"));
    wait_for(&lines, "ledger ready");
    // Keep draining the log so the daemon never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Daemon { child, addr }
}

/// `budgetd tenants <args>` at `url` with `token`: exit code, stdout, stderr.
fn tenants(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String, String) {
    let mut vars = vec![("BUDGETD_API_URL", url)];
    if let Some(token) = token {
        vars.push(("BUDGETD_TOKEN", token));
    }
    run(budgetd(&vars).arg("tenants").args(args))
}

/// The value of the `name:` line of a `show`-style output.
fn shown<'a>(stdout: &'a str, name: &str) -> &'a str {
    let prefix = format!("{name}:");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name:?} line in:\n{stdout}"))
        .trim()
}

/// The rows of a table output (header excluded), split into cells on runs of 2+ spaces.
fn rows(stdout: &str) -> Vec<Vec<String>> {
    let mut lines = stdout.lines();
    let header = lines.next().expect("a header line");
    assert!(header.starts_with("ID "), "{stdout}");
    lines
        .map(|l| {
            l.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .collect()
}

fn request_args<'a>(id: &'a str, residency: &'a str) -> Vec<&'a str> {
    vec![
        "request",
        "--id",
        id,
        "--display-name",
        "Acme Corp",
        "--owner",
        "owner@example.com",
        "--owner-group",
        "team-payments",
        "--data-residency",
        residency,
        "--label",
        "team=payments",
        "--label",
        "tier=gold",
        "--quota-profile",
        "standard",
        "--budget-amount",
        "500.00",
        "--budget-currency",
        "EUR",
        "--justification",
        "the payments team needs a staging environment",
    ]
}

#[tokio::test]
async fn tenants_cli_requests_approves_lists_shows_and_rejects_against_a_running_daemon() {
    let db = testkit::db::fresh_database().await;
    let dir = testkit::prometheus::ScratchDir::new("budgetd-cli-tenants");
    let daemon = start_daemon(&db.url, dir.path());
    let url = daemon.url();

    // The help names every command.
    let (code, help, stderr) = tenants(&url, None, &["--help"]);
    assert_eq!(code, 0, "{stderr}");
    for command in [
        "request",
        "approve",
        "reject",
        "requests",
        "list",
        "show",
        "suspend",
        "resume",
        "isolate",
        "release",
        "offboard",
        "offboarding",
        "final-report",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{command} "))),
            "no {command} in:\n{help}"
        );
    }
    assert!(help.contains("BUDGETD_TOKEN") && help.contains("BUDGETD_API_URL"));

    // The operator asks for acme.
    let (code, out, stderr) = tenants(&url, Some(OPERATOR), &request_args("acme", "eu"));
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&out, "id"), "acme");
    assert_eq!(shown(&out, "state"), "requested");
    assert_eq!(shown(&out, "budget"), "500.00 EUR monthly");
    assert_eq!(shown(&out, "labels"), "team=payments,tier=gold");
    assert_eq!(shown(&out, "requested by"), "ops-olivia");
    assert_eq!(shown(&out, "decided by"), "-");

    let (code, out, stderr) = tenants(&url, Some(VIEWER), &["requests"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = rows(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(
        listed[0][..6],
        [
            "acme",
            "requested",
            "requested",
            "eu",
            "500.00 EUR monthly",
            "ops-olivia"
        ]
    );
    let (code, out, stderr) = tenants(&url, Some(VIEWER), &["requests", "--state", "approved"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(rows(&out).is_empty(), "{out}");

    // The requester cannot approve their own request; nothing changes.
    let before = crate::support::snapshot(&db.store).await;
    let (code, out, stderr) = tenants(
        &url,
        Some(OPERATOR),
        &["approve", "acme", "--reason", "looks fine"],
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.is_empty(), "{out}");
    assert!(
        stderr.contains("ops-olivia requested tenant \"acme\" and cannot approve the request")
            && stderr.contains("(403 self_approval)"),
        "{stderr}"
    );
    assert!(stderr.contains("request id: "), "{stderr}");
    // A viewer may not decide at all: the message says which tokens may.
    let (code, _, stderr) = tenants(
        &url,
        Some(VIEWER),
        &["approve", "acme", "--reason", "looks fine"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("(403 forbidden)")
            && stderr.contains("use an operator's or an admin's token"),
        "{stderr}"
    );
    assert_eq!(crate::support::snapshot(&db.store).await, before);

    // Another operator (the admin) approves.
    let (code, out, stderr) = tenants(
        &url,
        Some(ADMIN),
        &["approve", "acme", "--reason", "approved for staging"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&out, "state"), "approved");
    assert_eq!(shown(&out, "tenant state"), "active");
    assert_eq!(shown(&out, "decided by"), "bootstrap-admin");
    assert_eq!(shown(&out, "decision reason"), "approved for staging");

    // Approving again: the state it is in and what may follow.
    let (code, _, stderr) = tenants(&url, Some(ADMIN), &["approve", "acme", "--reason", "again"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("409 invalid_transition") && stderr.contains("current state: active"),
        "{stderr}"
    );
    assert!(stderr.contains("allowed next states: "), "{stderr}");

    // show and list, as tables and as the API's JSON unchanged.
    let (code, out, stderr) = tenants(&url, Some(VIEWER), &["show", "acme"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&out, "state"), "active");
    assert_eq!(shown(&out, "display name"), "Acme Corp");
    assert_eq!(shown(&out, "owner"), "owner@example.com");
    assert_eq!(shown(&out, "owner group"), "team-payments");
    assert_eq!(shown(&out, "quota profile"), "standard");
    assert_eq!(shown(&out, "suspended by"), "-");
    let (code, out, stderr) = tenants(&url, Some(VIEWER), &["list"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = rows(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(
        listed[0][..5],
        ["acme", "active", "Acme Corp", "owner@example.com", "eu"]
    );
    for (args, path) in [
        (&["list", "--output", "json"][..], "/api/v1/tenants"),
        (
            &["show", "acme", "--output", "json"][..],
            "/api/v1/tenants/acme",
        ),
        (
            &["requests", "--output", "json"][..],
            "/api/v1/tenant-requests",
        ),
    ] {
        let (code, out, stderr) = tenants(&url, Some(VIEWER), args);
        assert_eq!(code, 0, "{stderr}");
        let (status, body) = http(&daemon.addr, "GET", path, Some(VIEWER));
        assert_eq!(status, 200, "{body}");
        assert_eq!(out, format!("{body}\n"), "{args:?}");
    }

    // A second request, rejected.
    let (code, _, stderr) = tenants(&url, Some(OPERATOR), &request_args("globex", "eu"));
    assert_eq!(code, 0, "{stderr}");
    let (code, out, stderr) = tenants(
        &url,
        Some(ADMIN),
        &[
            "reject",
            "globex",
            "--reason",
            "use the shared staging tenant",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&out, "state"), "rejected");
    assert_eq!(
        shown(&out, "decision reason"),
        "use the shared staging tenant"
    );
    let (code, out, stderr) = tenants(&url, Some(VIEWER), &["requests", "--state", "rejected"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = rows(&out);
    assert_eq!(listed.len(), 1, "{out}");
    assert_eq!(listed[0][..2], ["globex", "rejected"]);
    let (code, _, stderr) = tenants(
        &url,
        Some(ADMIN),
        &["approve", "globex", "--reason", "changed my mind"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("current state: rejected") && stderr.contains("409 invalid_transition"),
        "{stderr}"
    );

    // Bad input: the field and its option named, nothing changed.
    let before = crate::support::snapshot(&db.store).await;
    let (code, out, stderr) = tenants(&url, Some(OPERATOR), &request_args("initech", "mars"));
    assert_eq!(code, 1, "{out}");
    assert!(
        stderr.contains("\"mars\" is not a configured data residency (eu)")
            && stderr.contains("(400 invalid_field)")
            && stderr.contains("field: data_residency (the --data-residency option)"),
        "{stderr}"
    );
    let mut bad_amount = request_args("initech", "eu");
    let amount = bad_amount.iter().position(|a| *a == "500.00").unwrap();
    bad_amount[amount] = "lots";
    let (code, _, stderr) = tenants(&url, Some(OPERATOR), &bad_amount);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("field: budget.amount (the --budget-amount option)"),
        "{stderr}"
    );
    let (code, _, stderr) = tenants(&url, Some(VIEWER), &["list", "--state", "bogus"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("\"bogus\" is not a tenant state")
            && stderr.contains("field: state (the --state option)"),
        "{stderr}"
    );
    let (code, _, stderr) = tenants(&url, Some(VIEWER), &["show", "no-such-tenant"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("tenant \"no-such-tenant\" not found (404 not_found)"),
        "{stderr}"
    );
    // Checked before anything is sent: exit 2.
    let mut bad_label = request_args("initech", "eu");
    let label = bad_label.iter().position(|a| *a == "tier=gold").unwrap();
    bad_label[label] = "tier";
    let (code, _, stderr) = tenants(&url, Some(OPERATOR), &bad_label);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("--label") && stderr.contains("\"tier\" is not KEY=VALUE"),
        "{stderr}"
    );
    let (code, _, stderr) = tenants(&url, Some(OPERATOR), &["approve", "acme"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--reason"), "{stderr}");
    assert_eq!(crate::support::snapshot(&db.store).await, before);

    // Tokens: missing, unknown (never echoed).
    let (code, _, stderr) = tenants(&url, None, &["list"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "budgetd: no API token: set BUDGETD_TOKEN (or pass --token) to a token of the daemon's \
         [[api.tokens]] or its BUDGETD_BOOTSTRAP_ADMIN_TOKEN\n"
    );
    let wrong = "not-a-token-the-daemon-knows";
    let (code, out, stderr) = tenants(&url, Some(wrong), &["list"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("(401 unauthorized)")
            && stderr.contains("check BUDGETD_TOKEN (or --token)"),
        "{stderr}"
    );
    assert!(!stderr.contains(wrong) && !out.contains(wrong), "{stderr}");
    let (code, _, stderr) =
        run(budgetd(&[("BUDGETD_API_URL", &url)]).args(["tenants", "list", "--token", wrong]));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("(401 unauthorized)") && !stderr.contains(wrong),
        "{stderr}"
    );
}

/// Answers every connection with `response` (a plain web server that is not budgetd).
fn serve_forever(listener: TcpListener, response: &'static str) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
}

#[test]
fn tenants_cli_says_what_to_fix_when_the_api_cannot_be_reached() {
    // No URL; not a URL; not http or https.
    let (code, _, stderr) = run(budgetd(&[("BUDGETD_TOKEN", ADMIN)]).args(["tenants", "list"]));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no API URL: set BUDGETD_API_URL or pass --api-url"),
        "{stderr}"
    );
    for (url, why) in [
        ("localhost:8080", "is not an http:// or https:// URL"),
        ("ftp://budgetd.example", "is not an http:// or https:// URL"),
        ("http://127.0.0.1:8080/api/v1", "ends with /api/v1"),
    ] {
        let (code, _, stderr) = tenants(url, Some(ADMIN), &["list"]);
        assert_eq!(code, 2, "{url}");
        assert!(
            stderr.contains(&format!("BUDGETD_API_URL (or --api-url) {url:?}"))
                && stderr.contains(why)
                && stderr.contains("such as http://127.0.0.1:8080"),
            "{stderr}"
        );
        assert!(!stderr.contains(ADMIN), "{stderr}");
    }

    // Nothing listens: a read is tried three times, a write once.
    let refused = RefusingPort::new();
    let refused_url = format!("http://{}", refused.addr());
    let (code, _, stderr) = tenants(&refused_url, Some(ADMIN), &["list"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "cannot connect to the budgetd API at {refused_url}: connection refused, nothing listens there (tried 3 times)"
        )) && stderr.contains("check that budgetd runs there"),
        "{stderr}"
    );
    let (code, _, stderr) = tenants(
        &refused_url,
        Some(ADMIN),
        &["suspend", "acme", "--reason", "incident 42"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("connection refused") && !stderr.contains("tried"),
        "{stderr}"
    );

    // Something listens but never answers: the timeout, and how to give it longer.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let (code, _, stderr) = tenants(&silent_url, Some(ADMIN), &["list", "--timeout-ms", "300"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!(
            "the budgetd API at {silent_url} did not answer within 300 ms (tried 3 times)"
        )) && stderr.contains("--timeout-ms"),
        "{stderr}"
    );
    drop(silent);

    // A web server that is not budgetd.
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_url = format!("http://{}", other.local_addr().unwrap());
    serve_forever(
        other,
        "HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: 11\r\nConnection: close\r\n\r\n<h1>:(</h1>",
    );
    let (code, _, stderr) = tenants(&other_url, Some(ADMIN), &["show", "acme"]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("answered 404 Not Found without the budgetd API's error JSON")
            && stderr.contains("is BUDGETD_API_URL (or --api-url) the address of the budgetd API?"),
        "{stderr}"
    );
}

/// `budgetd tokens create|list|revoke` against a running daemon: the secret printed once, the
/// new token working at once, the bootstrap token retired by the first admin token, revocation
/// without a restart.
#[tokio::test]
async fn tokens_cli_creates_lists_and_revokes_against_a_running_daemon() {
    let db = testkit::db::fresh_database().await;
    let dir = testkit::prometheus::ScratchDir::new("budgetd-cli-tokens");
    let daemon = start_daemon(&db.url, dir.path());
    let url = daemon.url();
    let tokens = |token: &str, args: &[&str]| {
        let vars = [("BUDGETD_API_URL", url.as_str()), ("BUDGETD_TOKEN", token)];
        run(budgetd(&vars).arg("tokens").args(args))
    };

    let (code, stdout, stderr) = tokens(
        ADMIN,
        &[
            "create",
            "platform-admin",
            "--role",
            "admin",
            "--expires-at",
            "2099-01-01T00:00:00Z",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&stdout, "name"), "platform-admin");
    assert_eq!(shown(&stdout, "created by"), "bootstrap-admin");
    let secret = shown(&stdout, "secret").to_owned();
    assert!(secret.starts_with("bdt_"), "{stdout}");
    assert!(stdout.contains("cannot show it again"), "{stdout}");

    // The bootstrap token is retired now; the new admin token works at once.
    let (code, _, stderr) = tokens(ADMIN, &["list"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("bootstrap_retired"), "{stderr}");
    let (code, stdout, stderr) =
        tokens(&secret, &["create", "nightly-report", "--role", "auditor"]);
    assert_eq!(code, 0, "{stderr}");
    let auditor = shown(&stdout, "secret").to_owned();
    let auditor_id = shown(&stdout, "id").to_owned();
    let (code, stdout, stderr) = tokens(&auditor, &["list"]);
    assert_eq!(code, 0, "{stderr}");
    let listed = rows(&stdout);
    assert_eq!(listed.len(), 2, "{stdout}");
    assert_eq!(
        listed[1][1..5],
        ["nightly-report", "auditor", "-", "live"],
        "{stdout}"
    );
    assert!(
        !stdout.contains(&secret) && !stdout.contains(&auditor),
        "{stdout}"
    );
    // An auditor may not create; bad input names the option.
    let (code, _, stderr) = tokens(&auditor, &["create", "x", "--role", "viewer"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("403"), "{stderr}");
    let (code, _, stderr) = tokens(&secret, &["create", "x", "--role", "tenant"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--tenant"), "{stderr}");

    let (code, stdout, stderr) = tokens(&secret, &["revoke", &auditor_id]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(shown(&stdout, "state"), "revoked");
    let (code, _, stderr) = tokens(&auditor, &["list"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("token_revoked"), "{stderr}");
    let (code, stdout, _) = tokens(&secret, &["--output", "json", "list"]);
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["tokens"][1]["state"], "revoked");
}
