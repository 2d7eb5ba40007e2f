//! `budgetd tokens create|list|revoke`: managed API tokens over the HTTP API, with the same
//! URL, token, timeout and output options as `budgetd tenants`. `create` prints the secret
//! once; nothing else ever shows it.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Method;
use secrecy::SecretString;
use serde_json::{json, Map, Value};

use super::api_client::{ApiClient, Failure, Target};
use super::tenants::{cell, print, unexpected, write_fields, write_table, Output};

#[derive(Debug, Args)]
pub struct TokensArgs {
    /// The budgetd API's base URL (the daemon's api.listen), e.g. http://127.0.0.1:8080.
    #[arg(long, env = "BUDGETD_API_URL", global = true)]
    api_url: Option<String>,
    /// An admin token of the API (an auditor's lists); prefer BUDGETD_TOKEN, which the process
    /// list does not show.
    #[arg(long, env = "BUDGETD_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// `table` for people, `json` for the API's JSON unchanged.
    #[arg(long, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
    /// How long one call may take, connecting included (reads are tried up to 3 times).
    #[arg(long, default_value_t = 10_000, global = true, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    timeout_ms: u64,
    #[command(subcommand)]
    command: TokensCommand,
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Create a token; its secret is printed this once.
    Create {
        /// 1 to 64 of A-Z a-z 0-9 . _ @ -, unique among live tokens.
        name: String,
        /// admin, operator, finance, viewer, auditor or tenant.
        #[arg(long)]
        role: String,
        /// The tenant of a tenant token.
        #[arg(long)]
        tenant: Option<String>,
        /// When it stops working (RFC 3339, e.g. 2027-06-30T00:00:00Z); without it, never.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// List every managed token (live, expired, revoked), never a secret.
    List,
    /// Revoke a token by id; it is refused from now on, on every replica.
    Revoke {
        /// The token's id (`budgetd tokens list`).
        id: String,
    },
}

pub async fn run(args: TokensArgs) -> ExitCode {
    super::tenants::exit_code(execute(args).await)
}

async fn execute(args: TokensArgs) -> Result<(), Failure> {
    let TokensArgs {
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
    let tokens = client.url(&["api", "v1", "tokens"], &[]);
    match command {
        TokensCommand::Create {
            name,
            role,
            tenant,
            expires_at,
        } => {
            let mut body = Map::new();
            body.insert("name".into(), json!(name));
            body.insert("role".into(), json!(role));
            if let Some(tenant) = tenant {
                body.insert("tenant".into(), json!(tenant));
            }
            if let Some(at) = expires_at {
                body.insert("expires_at".into(), json!(at));
            }
            let answer = client
                .write(Method::POST, tokens, Some(&Value::Object(body)))
                .await?;
            print(output, &answer, render_created)
        }
        TokensCommand::List => {
            let answer = client.get(tokens).await?;
            print(output, &answer, render_list)
        }
        TokensCommand::Revoke { id } => {
            let url = client.url(&["api", "v1", "tokens", &id], &[]);
            let answer = client.write(Method::DELETE, url, None).await?;
            print(output, &answer, render_token)
        }
    }
}

const FIELDS: &[(&str, &str)] = &[
    ("id", "id"),
    ("name", "name"),
    ("role", "role"),
    ("tenant", "tenant"),
    ("state", "state"),
    ("created at", "created_at"),
    ("created by", "created_by"),
    ("expires at", "expires_at"),
    ("last used at", "last_used_at"),
    ("revoked at", "revoked_at"),
    ("revoked by", "revoked_by"),
];

fn render_token(value: &Value, out: &mut String) -> Result<(), Failure> {
    if value.get("id").is_none() {
        return Err(unexpected("token"));
    }
    let rows: Vec<(&str, String)> = FIELDS
        .iter()
        .map(|(label, key)| (*label, cell(value.get(*key))))
        .collect();
    write_fields(&rows, out);
    Ok(())
}

fn render_created(value: &Value, out: &mut String) -> Result<(), Failure> {
    render_token(value, out)?;
    let secret = value
        .get("secret")
        .and_then(Value::as_str)
        .ok_or_else(|| unexpected("secret"))?;
    out.push_str(&format!(
        "\nsecret: {}\nStore it now: budgetd keeps only its hash and cannot show it again.\n",
        cell(Some(&json!(secret)))
    ));
    Ok(())
}

fn render_list(value: &Value, out: &mut String) -> Result<(), Failure> {
    let tokens = value
        .get("tokens")
        .and_then(Value::as_array)
        .ok_or_else(|| unexpected("tokens"))?;
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            [
                "id",
                "name",
                "role",
                "tenant",
                "state",
                "expires_at",
                "last_used_at",
            ]
            .iter()
            .map(|k| cell(t.get(*k)))
            .collect()
        })
        .collect();
    write_table(
        &[
            "ID",
            "NAME",
            "ROLE",
            "TENANT",
            "STATE",
            "EXPIRES AT",
            "LAST USED AT",
        ],
        &rows,
        out,
    );
    Ok(())
}
