//! `budgetd tenants ...`: the tenant lifecycle over the HTTP API (requests and their
//! decisions, reads, suspend/resume, isolate/release, offboarding and its final report), for
//! operators at a terminal and for scripts (`--output json` prints the API's JSON unchanged).
//! It needs no configuration file and no database: only the API's URL and a token.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::api_client::{sanitize, Answer, ApiClient, Failure, Target};

/// The help's note on where the URL and the token come from.
pub const AFTER_HELP: &str = "\
Environment variables:
  BUDGETD_API_URL   the API's base URL, e.g. http://127.0.0.1:8080 (or --api-url)
  BUDGETD_TOKEN     a bearer token of the API (or --token; the environment keeps it out of
                    the process list). It is never printed.";

#[derive(Debug, Args)]
pub struct TenantsArgs {
    /// The budgetd API's base URL (the daemon's api.listen), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "BUDGETD_API_URL", global = true)]
    api_url: Option<String>,
    /// A bearer token of the API; prefer BUDGETD_TOKEN, which the process list does not show.
    #[arg(long, env = "BUDGETD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// `table` for people, `json` for the API's JSON unchanged.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// How long one call may take, connecting included (reads are tried up to 3 times).
    #[arg(long, default_value_t = 10_000, global = true, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    #[command(subcommand)]
    command: TenantsCommand,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ReportFormat {
    Csv,
    Json,
}

impl ReportFormat {
    fn as_str(self) -> &'static str {
        match self {
            ReportFormat::Csv => "csv",
            ReportFormat::Json => "json",
        }
    }
}

#[derive(Debug, Subcommand)]
enum TenantsCommand {
    /// Ask for a new tenant (a self-service request an operator or admin approves).
    Request(Box<RequestArgs>),
    /// Approve a request: the tenant becomes active with its budget (not your own request).
    Approve(Decision),
    /// Reject a request (the requester may withdraw their own this way).
    Reject(Decision),
    /// List tenant requests.
    Requests {
        /// Only requests in this state: requested, approved, rejected.
        #[arg(long)]
        state: Option<String>,
    },
    /// List tenants.
    List {
        /// Only tenants in this state: requested, active, suspended, offboarding, offboarded,
        /// rejected.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one tenant.
    Show { id: String },
    /// Suspend a tenant's workloads (an operator's suspension; budget logic never lifts it).
    Suspend(Decision),
    /// Resume a tenant an operator suspended, restoring exactly what the suspension changed.
    Resume(Decision),
    /// Isolate a tenant's namespaces for an incident: deny all traffic but DNS, scale nothing.
    Isolate(Decision),
    /// Lift an incident isolation (removes exactly the isolating NetworkPolicy).
    Release(Decision),
    /// Start offboarding: access revoked, final report written, resources deleted after the
    /// grace period, personal data pseudonymised.
    Offboard(Decision),
    /// Show how far a tenant's offboarding has got.
    Offboarding { id: String },
    /// Download an offboarded tenant's final cost report.
    FinalReport {
        id: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
}

#[derive(Debug, Args)]
struct Decision {
    /// The tenant (or request) id.
    id: String,
    /// Why, one line: it goes into the audit log.
    #[arg(long)]
    reason: String,
}

#[derive(Debug, Args)]
struct RequestArgs {
    /// The tenant id (a DNS-1123 label, e.g. acme).
    #[arg(long)]
    id: String,
    #[arg(long)]
    display_name: String,
    /// The owner's e-mail address.
    #[arg(long)]
    owner: String,
    /// The group that gets the tenant's namespaced role.
    #[arg(long)]
    owner_group: String,
    /// A configured data residency (`[lifecycle] residencies`), e.g. eu.
    #[arg(long)]
    data_residency: String,
    /// A label, key=value; repeat for more.
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A configured quota profile (`[lifecycle] quota_profiles`), e.g. standard.
    #[arg(long)]
    quota_profile: String,
    /// The initial budget, e.g. 500.00.
    #[arg(long)]
    budget_amount: String,
    /// The budget's currency (ISO 4217), e.g. EUR.
    #[arg(long)]
    budget_currency: String,
    /// monthly (the default) or another period the API takes.
    #[arg(long)]
    budget_period: Option<String>,
    /// Why the tenant is needed.
    #[arg(long)]
    justification: String,
    /// A namespace the tenant owns; repeat for more. Without any, one named like the id.
    #[arg(long = "namespace", value_name = "NAME")]
    namespaces: Vec<String>,
}

/// `key=value`, split at the first `=`; the API checks the key and value.
fn parse_label(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{value:?} is not KEY=VALUE")),
    }
}

/// Runs a `tenants` command; messages go to stderr, results to stdout. Exit 2 for what must
/// be fixed before anything is sent (URL, token), 1 for a refusal or an unreachable API.
pub async fn run(args: TenantsArgs) -> ExitCode {
    exit_code(execute(args).await)
}

/// A command's exit: 0, 2 for a usage failure, 1 for any other (its message on stderr).
pub(super) fn exit_code(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("budgetd: {}", failure.message());
            match failure {
                Failure::Usage(_) => ExitCode::from(2),
                Failure::Failed(_) => ExitCode::FAILURE,
            }
        }
    }
}

async fn execute(args: TenantsArgs) -> Result<(), Failure> {
    let TenantsArgs {
        api_url,
        token,
        output,
        timeout_ms,
        command,
    } = args;
    let client = ApiClient::new(Target {
        api_url,
        token: token.map(SecretString::from),
        timeout: Duration::from_millis(timeout_ms),
    })?;
    match command {
        TenantsCommand::Request(r) => {
            let body = request_body(*r);
            let url = client.url(&["api", "v1", "tenant-requests"], &[]);
            let answer = client.write(Method::POST, url, Some(&body)).await?;
            print(output, &answer, render_request)
        }
        TenantsCommand::Approve(d) => decide(&client, output, &d, "approve").await,
        TenantsCommand::Reject(d) => decide(&client, output, &d, "reject").await,
        TenantsCommand::Requests { state } => {
            let query = state_query(&state);
            let url = client.url(&["api", "v1", "tenant-requests"], &query);
            let answer = client.get(url).await?;
            print(output, &answer, render_request_list)
        }
        TenantsCommand::List { state } => {
            let query = state_query(&state);
            let url = client.url(&["api", "v1", "tenants"], &query);
            let answer = client.get(url).await?;
            print(output, &answer, render_tenant_list)
        }
        TenantsCommand::Show { id } => {
            let answer = client
                .get(client.url(&["api", "v1", "tenants", &id], &[]))
                .await?;
            print(output, &answer, render_tenant)
        }
        TenantsCommand::Suspend(d) => operate(&client, output, &d, "suspend").await,
        TenantsCommand::Resume(d) => operate(&client, output, &d, "resume").await,
        TenantsCommand::Isolate(d) => operate(&client, output, &d, "isolate").await,
        TenantsCommand::Release(d) => operate(&client, output, &d, "release").await,
        TenantsCommand::Offboard(d) => {
            let url = client.url(&["api", "v1", "tenants", &d.id], &[]);
            let answer = client
                .write(Method::DELETE, url, Some(&json!({ "reason": d.reason })))
                .await?;
            print(output, &answer, render_tenant)
        }
        TenantsCommand::Offboarding { id } => {
            let url = client.url(&["api", "v1", "tenants", &id, "offboarding"], &[]);
            let answer = client.get(url).await?;
            print(output, &answer, render_offboarding)
        }
        TenantsCommand::FinalReport { id, format } => {
            let url = client.url(
                &["api", "v1", "tenants", &id, "final-report"],
                &[("format", format.as_str())],
            );
            let answer = client.get(url).await?;
            // The report as the API gives it, whatever --output says: it is already the
            // format asked for.
            write_raw(&answer.body)
        }
    }
}

fn state_query(state: &Option<String>) -> Vec<(&str, &str)> {
    state
        .as_deref()
        .map(|s| vec![("state", s)])
        .unwrap_or_default()
}

/// `POST /api/v1/tenant-requests/{id}/{op}` with the reason; the request as decided.
async fn decide(
    client: &ApiClient,
    output: Output,
    decision: &Decision,
    op: &str,
) -> Result<(), Failure> {
    let url = client.url(&["api", "v1", "tenant-requests", &decision.id, op], &[]);
    let answer = client
        .write(
            Method::POST,
            url,
            Some(&json!({ "reason": decision.reason })),
        )
        .await?;
    print(output, &answer, render_request)
}

/// `POST /api/v1/tenants/{id}/{op}` with the reason; the tenant as it is afterwards.
async fn operate(
    client: &ApiClient,
    output: Output,
    decision: &Decision,
    op: &str,
) -> Result<(), Failure> {
    let url = client.url(&["api", "v1", "tenants", &decision.id, op], &[]);
    let answer = client
        .write(
            Method::POST,
            url,
            Some(&json!({ "reason": decision.reason })),
        )
        .await?;
    print(output, &answer, render_tenant)
}

fn request_body(r: RequestArgs) -> Value {
    let mut budget = Map::new();
    budget.insert("amount".into(), r.budget_amount.into());
    budget.insert("currency".into(), r.budget_currency.into());
    if let Some(period) = r.budget_period {
        budget.insert("period".into(), period.into());
    }
    let labels: Map<String, Value> = r
        .labels
        .into_iter()
        .map(|(k, v)| (k, Value::from(v)))
        .collect();
    let mut body = json!({
        "id": r.id,
        "display_name": r.display_name,
        "owner": r.owner,
        "owner_group": r.owner_group,
        "data_residency": r.data_residency,
        "labels": labels,
        "quota_profile": r.quota_profile,
        "budget": budget,
        "justification": r.justification,
    });
    // Only when given: without any, the tenant gets the one namespace named like its id.
    if !r.namespaces.is_empty() {
        body["namespaces"] = r.namespaces.into();
    }
    body
}

/// The answer as JSON unchanged, or rendered for people.
pub(super) fn print(
    output: Output,
    answer: &Answer,
    render: fn(&Value, &mut String) -> Result<(), Failure>,
) -> Result<(), Failure> {
    match output {
        Output::Json => write_raw(&answer.body),
        Output::Table => {
            let value = answer.json()?;
            let mut text = String::new();
            render(&value, &mut text)?;
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Failure::Failed(format!("cannot write to stdout: {e}")))
        }
    }
}

/// The body as it came, ending with a newline.
fn write_raw(body: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(body)
        .and_then(|()| {
            if body.last() != Some(&b'\n') {
                out.write_all(b"\n")?;
            }
            out.flush()
        })
        .map_err(|e| Failure::Failed(format!("cannot write to stdout: {e}")))
}

/// A field for a table: `-` when absent or null, lists comma-separated, maps `k=v`.
pub(super) fn cell(value: Option<&Value>) -> String {
    let text = match value {
        None | Some(Value::Null) => return "-".to_owned(),
        Some(Value::String(s)) if s.is_empty() => return "-".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Array(items)) if items.is_empty() => return "-".to_owned(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| cell(Some(i)))
            .collect::<Vec<_>>()
            .join(","),
        Some(Value::Object(map)) if map.is_empty() => return "-".to_owned(),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{k}={}", cell(Some(v))))
            .collect::<Vec<_>>()
            .join(","),
    };
    sanitize(&text)
}

fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// `name: value` lines, the names aligned.
pub(super) fn write_fields(rows: &[(&str, String)], out: &mut String) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0) + 1;
    for (name, value) in rows {
        out.push_str(&format!("{:<width$} {value}\n", format!("{name}:")));
    }
}

/// A table: a header row and aligned columns (the last one unpadded).
pub(super) fn write_table(headers: &[&str], rows: &[Vec<String>], out: &mut String) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                text.push_str(c);
            } else {
                text.push_str(c);
                text.push_str(&" ".repeat(widths[i] - c.chars().count() + 2));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

pub(super) fn unexpected(what: &str) -> Failure {
    Failure::Failed(format!(
        "the API's answer has no {what}; is BUDGETD_API_URL the budgetd API?"
    ))
}

const TENANT_FIELDS: &[(&str, &str)] = &[
    ("id", "id"),
    ("state", "state"),
    ("display name", "display_name"),
    ("owner", "owner"),
    ("owner group", "owner_group"),
    ("data residency", "data_residency"),
    ("quota profile", "quota_profile"),
    ("labels", "labels"),
    ("namespaces", "namespaces"),
    ("isolated", "isolated"),
    ("suspended by", "suspended_by"),
    ("created at", "created_at"),
    ("updated at", "updated_at"),
    ("state changed at", "state_changed_at"),
];

fn render_tenant(value: &Value, out: &mut String) -> Result<(), Failure> {
    value.get("id").ok_or_else(|| unexpected("tenant id"))?;
    let rows: Vec<(&str, String)> = TENANT_FIELDS
        .iter()
        .map(|(name, key)| (*name, cell(field(value, key))))
        .collect();
    write_fields(&rows, out);
    Ok(())
}

fn render_tenant_list(value: &Value, out: &mut String) -> Result<(), Failure> {
    let tenants = value
        .get("tenants")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected("tenants list"))?;
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            [
                "id",
                "state",
                "display_name",
                "owner",
                "data_residency",
                "namespaces",
                "isolated",
            ]
            .iter()
            .map(|k| cell(t.get(*k)))
            .collect()
        })
        .collect();
    write_table(
        &[
            "ID",
            "STATE",
            "DISPLAY NAME",
            "OWNER",
            "RESIDENCY",
            "NAMESPACES",
            "ISOLATED",
        ],
        &rows,
        out,
    );
    Ok(())
}

fn budget(value: &Value) -> String {
    match (
        field(value, "budget.amount"),
        field(value, "budget.currency"),
    ) {
        (Some(_), Some(_)) => format!(
            "{} {} {}",
            cell(field(value, "budget.amount")),
            cell(field(value, "budget.currency")),
            cell(field(value, "budget.period"))
        ),
        _ => "-".to_owned(),
    }
}

fn render_request(value: &Value, out: &mut String) -> Result<(), Failure> {
    value.get("id").ok_or_else(|| unexpected("request id"))?;
    let mut rows: Vec<(&str, String)> = Vec::new();
    for (name, key) in [
        ("id", "id"),
        ("state", "state"),
        ("tenant state", "tenant_state"),
        ("display name", "display_name"),
        ("owner", "owner"),
        ("owner group", "owner_group"),
        ("data residency", "data_residency"),
        ("quota profile", "quota_profile"),
        ("labels", "labels"),
        ("namespaces", "namespaces"),
    ] {
        rows.push((name, cell(field(value, key))));
    }
    rows.push(("budget", budget(value)));
    for (name, key) in [
        ("justification", "justification"),
        ("requested by", "requested_by"),
        ("requested at", "requested_at"),
        ("decided by", "decided_by"),
        ("decided at", "decided_at"),
        ("decision reason", "decision_reason"),
    ] {
        rows.push((name, cell(field(value, key))));
    }
    write_fields(&rows, out);
    Ok(())
}

fn render_request_list(value: &Value, out: &mut String) -> Result<(), Failure> {
    let requests = value
        .get("requests")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected("requests list"))?;
    let rows: Vec<Vec<String>> = requests
        .iter()
        .map(|r| {
            vec![
                cell(r.get("id")),
                cell(r.get("state")),
                cell(r.get("tenant_state")),
                cell(r.get("data_residency")),
                budget(r),
                cell(r.get("requested_by")),
                cell(r.get("requested_at")),
                cell(r.get("decided_by")),
            ]
        })
        .collect();
    write_table(
        &[
            "ID",
            "STATE",
            "TENANT STATE",
            "RESIDENCY",
            "BUDGET",
            "REQUESTED BY",
            "REQUESTED AT",
            "DECIDED BY",
        ],
        &rows,
        out,
    );
    Ok(())
}

/// The offboarding record's fields shown above its steps.
const OFFBOARDING_FIELDS: &[(&str, &str)] = &[
    ("tenant", "tenant_id"),
    ("state", "state"),
    ("started at", "started_at"),
    ("requested by", "requested_by"),
    ("reason", "reason"),
    ("grace until", "grace_until"),
    ("retain until", "retain_until"),
    ("final report", "final_report"),
];

/// The record's fields, then its steps (`GET .../offboarding`: `steps` is a list of
/// `{step, done, at}` in their order; for a step not done, `at` is when it is due, if known).
fn render_offboarding(value: &Value, out: &mut String) -> Result<(), Failure> {
    let object = value
        .as_object()
        .ok_or_else(|| unexpected("offboarding object"))?;
    let rows: Vec<(&str, String)> = OFFBOARDING_FIELDS
        .iter()
        .map(|(name, key)| (*name, cell(object.get(*key))))
        .collect();
    write_fields(&rows, out);
    let steps = object
        .get("steps")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected("offboarding steps"))?;
    let rows: Vec<Vec<String>> = steps
        .iter()
        .map(|step| {
            vec![
                cell(step.get("step")),
                cell(step.get("done")),
                cell(step.get("at")),
            ]
        })
        .collect();
    out.push('\n');
    write_table(&["STEP", "DONE", "AT (OR DUE)"], &rows, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_show_absent_and_null_as_a_dash() {
        let tenant = json!({"id": "acme", "labels": {}, "namespaces": ["a", "b"], "isolated": false,
                            "owner_group": null});
        assert_eq!(cell(tenant.get("suspended_by")), "-");
        assert_eq!(cell(tenant.get("owner_group")), "-");
        assert_eq!(cell(tenant.get("labels")), "-");
        assert_eq!(cell(tenant.get("namespaces")), "a,b");
        assert_eq!(cell(tenant.get("isolated")), "no");
        assert_eq!(
            cell(Some(&json!({"team": "x", "tier": "1"}))),
            "team=x,tier=1"
        );
    }

    #[test]
    fn offboarding_shows_its_steps_as_the_api_lists_them() {
        let answer = json!({
            "tenant_id": "acme", "state": "offboarding", "started_at": "2026-12-01T10:00:00Z",
            "requested_by": "ops", "reason": "contract ended",
            "grace_until": "2026-12-08T10:00:00Z", "retain_until": "2036-12-01T10:00:00Z",
            "steps": [
                {"step": "started", "done": true, "at": "2026-12-01T10:00:00Z"},
                {"step": "access_revoked", "done": true, "at": "2026-12-01T10:00:01Z"},
                {"step": "grace_period", "done": false, "at": "2026-12-08T10:00:00Z"},
                {"step": "resources_deleted", "done": false, "at": null}
            ]
        });
        let mut out = String::new();
        render_offboarding(&answer, &mut out).unwrap();
        assert!(out.contains("grace until:"), "{out}");
        let steps: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("STEP")).collect();
        assert_eq!(steps.len(), 5, "{out}");
        assert!(
            steps[2].starts_with("access_revoked") && steps[2].contains("yes"),
            "{out}"
        );
        assert!(
            steps[3].contains("no") && steps[3].contains("2026-12-08"),
            "{out}"
        );
        assert!(steps[4].trim_end().ends_with('-'), "{out}");
    }

    #[test]
    fn tables_align_their_columns() {
        let mut out = String::new();
        write_table(
            &["ID", "STATE"],
            &[
                vec!["acme".into(), "active".into()],
                vec!["a".into(), "-".into()],
            ],
            &mut out,
        );
        assert_eq!(out, "ID    STATE\nacme  active\na     -\n");
    }

    #[test]
    fn labels_are_key_value() {
        assert_eq!(
            parse_label("team=a=b").unwrap(),
            ("team".to_owned(), "a=b".to_owned())
        );
        assert!(parse_label("team").is_err());
        assert!(parse_label("=x").is_err());
    }

    #[test]
    fn a_request_sends_namespaces_only_when_given() {
        let args = RequestArgs {
            id: "acme".into(),
            display_name: "Acme".into(),
            owner: "o@example.com".into(),
            owner_group: "g".into(),
            data_residency: "eu".into(),
            labels: vec![("team".into(), "x".into())],
            quota_profile: "standard".into(),
            budget_amount: "10".into(),
            budget_currency: "EUR".into(),
            budget_period: None,
            justification: "j".into(),
            namespaces: vec![],
        };
        let body = request_body(args);
        assert!(body.get("namespaces").is_none());
        assert_eq!(body["labels"], json!({"team": "x"}));
        assert_eq!(body["budget"], json!({"amount": "10", "currency": "EUR"}));
    }
}
