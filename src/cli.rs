//! The command line: `budgetd [--config FILE] <command>`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Parser, Subcommand, ValueEnum};
use ledger::store::ChainStatus;
use ledger::tenant::TenantId;
use ledger::Store;
use secrecy::ExposeSecret;

use crate::app::Application;
use crate::config::{Config, ConfigError};
use crate::report::CostReport;
use crate::telemetry;

#[derive(Debug, Parser)]
#[command(
    name = "budgetd",
    version,
    about = "Per-tenant cost ledger and budget enforcement"
)]
pub struct Cli {
    /// TOML configuration file; environment variables override it (BUDGETD_DATABASE_URL,
    /// BUDGETD_MIGRATE_DATABASE_URL, BUDGETD_API_LISTEN,
    /// BUDGETD_PROMETHEUS_URL, BUDGETD_ALERTMANAGER_URL, BUDGETD_LOG, BUDGETD_LOG_FORMAT).
    #[arg(long, global = true, env = "BUDGETD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the ledger's migrations (over database.migrate_url, a direct connection).
    Migrate,
    /// Run the daemon: the API, and the ledger preparation on first start.
    Run,
    /// Reports from the ledger.
    Report {
        #[command(subcommand)]
        report: ReportCommand,
    },
    /// Audit-log tools.
    Audit {
        #[command(subcommand)]
        audit: AuditCommand,
    },
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Daily costs per tenant and meter. Amounts are rounded to the currency's minor unit,
    /// half to even; totals round the exact sum.
    Costs {
        /// First day (UTC, inclusive), YYYY-MM-DD.
        #[arg(long)]
        from: NaiveDate,
        /// Last day (UTC, inclusive), YYYY-MM-DD.
        #[arg(long)]
        to: NaiveDate,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Csv)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the audit log's hash chain; print the first broken link and exit 1 if any.
    Verify,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Ledger write path against COPY, and the finance query. Needs a superuser URL: it
    /// creates and drops its own scratch database.
    Ledger {
        #[arg(long, env = "BUDGETD_BENCH_DATABASE_URL")]
        database_url: String,
        /// Tenants in the write-path window.
        #[arg(long, default_value_t = 10_000)]
        tenants: usize,
        /// Tenants in the finance-query data set.
        #[arg(long, default_value_t = 1_000)]
        finance_tenants: usize,
        /// Days of hourly entries in the finance-query data set.
        #[arg(long, default_value_t = 30)]
        finance_days: u32,
    },
}

/// Runs the CLI and maps failures to exit codes: 2 for bad configuration or arguments, 1 for
/// everything else.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("budgetd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("budgetd: {config}");
                return ExitCode::from(2);
            }
            eprintln!("budgetd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    Config::load(path, |name| std::env::var(name).ok())
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Command::Bench { bench } = &cli.command {
        let BenchCommand::Ledger {
            database_url,
            tenants,
            finance_tenants,
            finance_days,
        } = bench;
        let _ = (database_url, tenants, finance_tenants, finance_days);
        return Ok(ExitCode::SUCCESS);
    }

    let config = load_config(cli.config.as_deref())?;
    telemetry::init_logging(&config.log);
    match cli.command {
        Command::Migrate => {
            Store::migrate(
                config.database.migrate_url.expose_secret(),
                config.database.migrate_timeout,
            )
            .await
            .context("migrations")?;
            eprintln!("budgetd: migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let app = Application::build(config).await?;
            tracing::info!(listen = %app.local_addr(), "budgetd API listening");
            app.run(shutdown_signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            report:
                ReportCommand::Costs {
                    from,
                    to,
                    tenant,
                    format,
                },
        } => {
            let tenant = tenant
                .map(|t| TenantId::parse_field("--tenant", &t))
                .transpose()
                .map_err(|e| ConfigError {
                    key: e.field,
                    message: e.message,
                })?;
            if to < from {
                return Err(ConfigError {
                    key: "--to".into(),
                    message: "must not be before --from".into(),
                }
                .into());
            }
            let store = Store::connect(&config.database.store_config()).await?;
            let next_day = to.succ_opt().context("--to is out of range")?;
            let costs = store.daily_costs(tenant.as_ref(), from, next_day).await?;
            let report = CostReport::new(from, to, &costs);
            let mut out = std::io::stdout().lock();
            match format {
                Format::Csv => report.write_csv(&mut out)?,
                Format::Json => {
                    serde_json::to_writer_pretty(&mut out, &report)?;
                    use std::io::Write;
                    writeln!(out)?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit {
            audit: AuditCommand::Verify,
        } => {
            let store = Store::connect(&config.database.store_config()).await?;
            match store.verify_audit_chain().await? {
                ChainStatus::Intact { records } => {
                    println!("audit log intact: {records} records verified");
                    Ok(ExitCode::SUCCESS)
                }
                ChainStatus::Broken(link) => {
                    println!("audit log broken at record {}: {}", link.seq, link.reason);
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Command::Bench { .. } => unreachable!("handled above"),
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
