//! The command line: `budgetd [--config FILE] <command>`.

mod api_client;
mod tenants;
mod tokens;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use chrono::NaiveDate;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use ledger::archive::Month;
use ledger::store::{ChainStatus, LeaderLock};
use ledger::tenant::TenantId;
use ledger::Store;
use secrecy::ExposeSecret;

use crate::app::{build_collector, build_enforcer, Application};
use crate::config::{Config, ConfigError, ENV};
use crate::report::CostReport;
use crate::report_html::HtmlReport;
use crate::telemetry;
use chrono::{DateTime, Utc};
use ledger::usage::CommitMode;

#[derive(Debug, Parser)]
#[command(
    name = "budgetd",
    version,
    about = "Per-tenant cost ledger and budget enforcement"
)]
pub struct Cli {
    /// TOML configuration file. Optional: without one, every key has its default or comes
    /// from the environment (see `budgetd config show`).
    #[arg(long, global = true, env = "BUDGETD_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Daemon(DaemonCommand),
    /// Tenant lifecycle over the API: request, approve, list, show, suspend, isolate, offboard
    ///
    /// Talks to a running daemon's API at BUDGETD_API_URL with BUDGETD_TOKEN; needs no
    /// configuration file and no database.
    Tenants(Box<tenants::TenantsArgs>),
    /// Managed API tokens over the API: create (the secret once), list, revoke
    ///
    /// Talks to a running daemon's API at BUDGETD_API_URL with BUDGETD_TOKEN (an admin's);
    /// needs no configuration file and no database.
    Tokens(Box<tokens::TokensArgs>),
}

/// The commands that work on the daemon's configuration and ledger.
#[derive(Debug, Subcommand)]
enum DaemonCommand {
    /// Apply the ledger's migrations (BUDGETD_DATABASE_URL alone is enough)
    ///
    /// Migrations run over database.migrate_url, a direct connection; without it, over the
    /// effective database.url.
    Migrate,
    /// Serve the API and, when configured, collect usage and enforce budgets (as the leader)
    ///
    /// Runs the daemon: serves the API, prepares the ledger (seeds the price book on the first
    /// start) and, while this daemon holds the leader lock, collects usage when the
    /// configuration has an enabled [collector] section and enforces budgets when it has an
    /// enabled [enforcement] section. Without them (or without a configuration file) it serves
    /// the API only.
    Run,
    /// Collect (backfill) every window in [--from, --to) that is not in the ledger yet.
    Collect(CollectArgs),
    /// One enforcement cycle; with --dry-run, print the plan and change nothing
    ///
    /// With --dry-run: print the plan (tenant, spent, budget, %, forecast, action, reason) and
    /// change nothing. Without: take leadership (exit 1 if another daemon leads), apply the
    /// plan, print what was done.
    Enforce {
        /// Run one cycle and exit (the daemon, `budgetd run`, runs the loop).
        #[arg(long)]
        once: bool,
        /// Print the plan; write nothing, touch nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    /// Move closed months out of the database, verifiably (see `archive --help`)
    ///
    /// `archive --before YYYY-MM` exports every month before YYYY-MM and older than
    /// archive.hot_retention_months to Parquet files in the object store of [archive] url,
    /// writes their manifest (rows, sums per tenant and currency, SHA-256 of each file) into
    /// the audit log, reads them back, and only then drops the month's partition. Rollups
    /// and finance views keep the months' totals. Run again after any failure: it completes
    /// what was begun, and does nothing for months already archived.
    /// `archive verify [--month YYYY-MM]` reads archives back and checks them against their
    /// manifests; exit 1 naming what differs.
    Archive(ArchiveArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        config: ConfigCommand,
    },
}

#[derive(Debug, Args)]
struct CollectArgs {
    /// Start, RFC 3339 or YYYY-MM-DD (UTC midnight); rounded down to a window boundary.
    #[arg(long, value_parser = parse_instant)]
    from: DateTime<Utc>,
    /// End (exclusive), RFC 3339 or YYYY-MM-DD; rounded up to a window boundary.
    #[arg(long, value_parser = parse_instant)]
    to: DateTime<Utc>,
    /// Collect every window again and record differences as corrections (reversal plus
    /// new entry); nothing is overwritten.
    #[arg(long)]
    recollect: bool,
    /// Why, for the correction entries (with --recollect).
    #[arg(long, default_value = "recollected", value_parser = parse_reason)]
    reason: String,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
struct ArchiveArgs {
    /// Archive the months before this one (YYYY-MM, UTC); it may be at most the first month
    /// inside archive.hot_retention_months.
    #[arg(long, value_parser = parse_month)]
    before: Option<Month>,
    #[command(subcommand)]
    command: Option<ArchiveCommand>,
}

#[derive(Debug, Subcommand)]
enum ArchiveCommand {
    /// Read archives back and check them against their manifests (hashes, rows, sums per
    /// tenant) and the manifests against the audit log; exit 1 naming what differs.
    Verify {
        /// Only this month (YYYY-MM).
        #[arg(long, value_parser = parse_month)]
        month: Option<Month>,
    },
}

#[derive(Debug, Subcommand)]
enum ReportCommand {
    /// Daily costs per tenant and meter. Amounts are rounded to the currency's minor unit,
    /// half to even; totals round the exact sum.
    Costs(CostsArgs),
    /// Governance and audit for a period: the governance report, the audit trail, the access
    /// review, data residency and the enforcement history (see the README for the format).
    Audit(AuditReportArgs),
}

#[derive(Debug, Args)]
struct AuditReportArgs {
    /// The period's start (inclusive): RFC 3339 or YYYY-MM-DD (UTC midnight).
    #[arg(long, value_parser = parse_instant)]
    from: DateTime<Utc>,
    /// The period's end (exclusive): RFC 3339 or YYYY-MM-DD (UTC midnight).
    #[arg(long, value_parser = parse_instant)]
    to: DateTime<Utc>,
    /// Only this tenant (its governance row, audit records, residency and actions).
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
}

#[derive(Debug, Args)]
struct CostsArgs {
    /// First day (UTC, inclusive), YYYY-MM-DD.
    #[arg(long, value_parser = parse_day)]
    from: NaiveDate,
    /// Last day (UTC, inclusive), YYYY-MM-DD.
    #[arg(long, value_parser = parse_day)]
    to: NaiveDate,
    /// Only this tenant.
    #[arg(long)]
    tenant: Option<String>,
    #[arg(long, value_enum, default_value_t = CostsFormat::Csv)]
    format: CostsFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Csv,
    Json,
}

/// `report costs` also writes a self-contained HTML page (tables and SVG charts).
#[derive(Debug, Clone, Copy, ValueEnum)]
enum CostsFormat {
    Csv,
    Json,
    Html,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the audit log's hash chain; print the first broken link and exit 1 if any.
    Verify,
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective configuration: the file, every default and the environment
    ///
    /// The output is TOML that is itself a valid configuration file: values from the
    /// environment are marked, keys that are not set are explained in comments, passwords
    /// are shown as ***, the bootstrap token never.
    Show,
}

/// Runs the CLI and maps failures to exit codes: 2 for bad configuration or arguments, 1 for
/// everything else.
pub fn main() -> ExitCode {
    let cli = parse_args();
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
    match runtime.block_on(dispatch(cli)) {
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

/// The arguments, with every help text listing the environment variables ([`ENV`]).
fn parse_args() -> Cli {
    let mut env = String::from("Environment variables (they override the configuration file):\n");
    for var in ENV {
        env.push_str(&format!("  {:<31} {}\n", var.name, var.help));
    }
    fn with_env(command: clap::Command, env: &str) -> clap::Command {
        let names: Vec<String> = command
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        names
            .iter()
            .fold(command.after_help(env.to_owned()), |c, name| {
                // The API client reads none of the daemon's variables: its own help says
                // what it does read.
                if name == "tenants" || name == "tokens" {
                    c.mut_subcommand(name, |sub| with_env(sub, tenants::AFTER_HELP))
                } else {
                    c.mut_subcommand(name, |sub| with_env(sub, env))
                }
            })
    }
    let matches = with_env(Cli::command(), &env).get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    // A client of the API: no configuration file, database or logging of the daemon's.
    let command = match cli.command {
        Command::Tenants(args) => return Ok(tenants::run(*args).await),
        Command::Tokens(args) => return Ok(tokens::run(*args).await),
        Command::Daemon(command) => command,
    };
    let config = Config::load(cli.config.as_deref(), |name| std::env::var(name).ok())?;
    telemetry::init_logging(&config.log);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    match command {
        DaemonCommand::Migrate => migrate(&config).await,
        DaemonCommand::Run => run(config).await,
        DaemonCommand::Collect(args) => collect(&config, args).await,
        DaemonCommand::Enforce { once, dry_run } => enforce(&config, once, dry_run).await,
        DaemonCommand::Report {
            report: ReportCommand::Costs(args),
        } => report_costs(&config, args).await,
        DaemonCommand::Report {
            report: ReportCommand::Audit(args),
        } => report_audit(&config, args).await,
        DaemonCommand::Audit {
            audit: AuditCommand::Verify,
        } => audit_verify(&config).await,
        DaemonCommand::Archive(args) => archive(&config, args).await,
        DaemonCommand::Config {
            config: ConfigCommand::Show,
        } => {
            print!("{}", config.show());
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    Store::migrate(
        config.database.migrate_url.expose_secret(),
        config.database.acquire_timeout,
        config.database.migrate_timeout,
    )
    .await?;
    eprintln!("budgetd: migrations applied");
    Ok(ExitCode::SUCCESS)
}

async fn run(config: Config) -> anyhow::Result<ExitCode> {
    if config.collector.is_none() && config.enforcement.is_none() {
        tracing::info!("no enabled [collector] or [enforcement] section: serving the API only");
    }
    let shutdown = shutdown_signal()?;
    let app = Application::build(config).await?;
    tracing::info!(listen = %app.local_addr(), "budgetd API listening");
    app.run(shutdown).await?;
    Ok(ExitCode::SUCCESS)
}

async fn report_costs(config: &Config, args: CostsArgs) -> anyhow::Result<ExitCode> {
    let CostsArgs {
        from,
        to,
        tenant,
        format,
    } = args;
    let tenant = tenant
        .map(|t| TenantId::parse_field("--tenant", &t))
        .transpose()
        .map_err(|e| ConfigError::new(e.field, e.message))?;
    if to < from {
        return Err(ConfigError::new("--to", "must not be before --from").into());
    }
    let store = open_store(config).await?;
    let next_day = to.succ_opt().context("--to is out of range")?;
    let format = match format {
        CostsFormat::Csv => Format::Csv,
        CostsFormat::Json => Format::Json,
        CostsFormat::Html => {
            let status = config
                .enforcement
                .as_ref()
                .map_or(crate::api::VIEW_STATUS, |e| e.settings.status_params());
            let report =
                HtmlReport::load(&store, tenant.as_ref(), from, to, &status, Utc::now()).await?;
            // Written once it is complete: a failure leaves no half page behind.
            std::io::stdout()
                .lock()
                .write_all(report.render().as_bytes())?;
            return Ok(ExitCode::SUCCESS);
        }
    };
    let costs = store.daily_costs(tenant.as_ref(), from, next_day).await?;
    let report = CostReport::new(from, to, &costs);
    let mut out = std::io::stdout().lock();
    match format {
        Format::Csv => report.write_csv(&mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn report_audit(config: &Config, args: AuditReportArgs) -> anyhow::Result<ExitCode> {
    let tenant = args
        .tenant
        .map(|t| TenantId::parse_field("--tenant", &t))
        .transpose()
        .map_err(|e| ConfigError::new(e.field, e.message))?;
    if args.to <= args.from {
        return Err(ConfigError::new("--to", "must be after --from").into());
    }
    let store = open_store(config).await?;
    let auth = crate::app::authenticator(config)?;
    let status = config
        .enforcement
        .as_ref()
        .map_or(crate::api::VIEW_STATUS, |e| e.settings.status_params());
    let report = crate::governance::audit_report(
        &store,
        &auth,
        &status,
        args.from,
        args.to,
        tenant.as_ref(),
        Utc::now(),
    )
    .await?;
    let mut out = std::io::stdout().lock();
    match args.format {
        Format::Csv => report.write_csv(&mut out)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &report)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn enforce(config: &Config, once: bool, dry_run: bool) -> anyhow::Result<ExitCode> {
    if !once {
        return Err(ConfigError::new(
            "--once",
            "`enforce` runs one cycle: pass --once (the daemon loop is `budgetd run`)",
        )
        .into());
    }
    let settings = config.enforcement.as_ref().ok_or_else(|| {
        ConfigError::new(
            "enforcement",
            "enforce needs an enabled [enforcement] section",
        )
    })?;
    let store = open_store(config).await?;
    let enforcer = build_enforcer(settings, store).await?;
    let now = Utc::now();
    let evaluation = enforcer.evaluate(now).await?;
    let mut out = std::io::stdout().lock();
    crate::plan_table::write(&mut out, &evaluation)?;
    if dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let leader = &config.leader;
    let Some(lock) = LeaderLock::try_acquire(
        config.database.migrate_url.expose_secret(),
        &format!("enforce-once-{}", std::process::id()),
        leader.keepalive_seconds,
        leader.timeout,
    )
    .await?
    else {
        anyhow::bail!("another budgetd daemon leads; it enforces (nothing was applied)");
    };
    let report = enforcer.run_once(lock.fence(), now).await;
    lock.release(leader.timeout).await;
    let report = report?;
    writeln!(
        out,
        "applied: {} actions, {} failed, {} alerts firing, {} resolved",
        report.actions.len() - report.failed.len(),
        report.failed.len(),
        report.alerts_firing,
        report.alerts_resolved
    )?;
    for (id, error) in &report.failed {
        writeln!(out, "  action {id} failed: {error}")?;
    }
    Ok(if report.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    })
}

async fn audit_verify(config: &Config) -> anyhow::Result<ExitCode> {
    let store = open_store(config).await?;
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

async fn archive(config: &Config, args: ArchiveArgs) -> anyhow::Result<ExitCode> {
    let settings = config.archive.clone().ok_or_else(|| {
        ConfigError::new(
            "archive",
            "archive needs an [archive] section with url (where the months go)",
        )
    })?;
    let store = open_store(config).await?;
    let ctx = ledger::audit::AuditContext {
        actor: ledger::audit::Actor::system("archive"),
        request_id: format!("archive-{}", uuid::Uuid::new_v4()),
    };
    let archiver = archive::Archiver::new(store, settings, ctx);
    let mut out = std::io::stdout().lock();
    match (args.command, args.before) {
        (Some(ArchiveCommand::Verify { month }), _) => {
            let checked = match archiver.verify(month).await {
                Err(archive::Error::Refused(message)) => {
                    return Err(ConfigError::new("--month", message).into())
                }
                other => other?,
            };
            if checked.is_empty() {
                writeln!(out, "no archived months")?;
            }
            let mut failed = false;
            for v in &checked {
                if v.differences.is_empty() {
                    writeln!(
                        out,
                        "{}: ok, {} entries in {} files at {}",
                        v.month, v.rows, v.files, v.url
                    )?;
                } else {
                    failed = true;
                    writeln!(out, "{}: DIFFERS from its manifest ({}):", v.month, v.url)?;
                    for d in &v.differences {
                        writeln!(out, "  {d}")?;
                    }
                }
            }
            Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            })
        }
        (None, Some(before)) => {
            let done = match archiver.run(before, Utc::now()).await {
                Err(archive::Error::Refused(message)) => {
                    return Err(ConfigError::new("--before", message).into())
                }
                other => other?,
            };
            if done.is_empty() {
                writeln!(out, "nothing to archive before {before}")?;
            }
            for (month, archive::MonthOutcome::Archived { rows, files }) in &done {
                writeln!(
                    out,
                    "{month}: archived, {rows} entries in {files} files; partition dropped"
                )?;
            }
            Ok(ExitCode::SUCCESS)
        }
        (None, None) => Err(ConfigError::new(
            "--before",
            "is required: archive --before YYYY-MM, or archive verify",
        )
        .into()),
    }
}

async fn collect(config: &Config, args: CollectArgs) -> anyhow::Result<ExitCode> {
    let CollectArgs {
        from,
        to,
        recollect,
        reason,
    } = args;
    let settings = config.collector.as_ref().ok_or_else(|| {
        ConfigError::new(
            "collector",
            "collect needs an enabled [collector] section (and prometheus.url)",
        )
    })?;
    if to <= from {
        return Err(ConfigError::new("--to", "must be after --from").into());
    }
    let store = open_store(config).await?;
    let collector = build_collector(settings, store)?;
    let mode = if recollect {
        CommitMode::Recollect { reason }
    } else {
        CommitMode::Collect
    };
    let total = collector.plan_backfill(from, to, &mode).await?.len();
    let progress = Progress::new(total as u64);
    let (_, report) = collector
        .backfill(from, to, &mode, &|n| progress.advance(n as u64))
        .await?;
    progress.finish();
    println!(
        "collected {} windows: {} entries written, {} unchanged, {} corrected, {} conflicts, {} incomplete windows",
        report.windows,
        report.inserted,
        report.unchanged,
        report.corrected,
        report.conflicts,
        report.incomplete_windows
    );
    Ok(if report.conflicts > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    })
}

/// The ledger for a one-shot command: one direct connection attempt first, so an unreachable
/// database fails at once with where and why, not after the pool's acquire timeout.
async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let store = Store::connect(&config.database.store_config()).await?;
    store.check_connection().await?;
    Ok(store)
}

/// RFC 3339, or a day (`YYYY-MM-DD`) meaning its UTC midnight, in the ledger's range.
fn parse_instant(value: &str) -> Result<DateTime<Utc>, String> {
    // A day is ten characters; no RFC 3339 time is that short.
    if value.len() == 10 {
        return parse_day(value).map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    ledger::time::parse_instant("time", value).map_err(|e| e.message)
}

/// `YYYY-MM`, zero-padded.
fn parse_month(value: &str) -> Result<Month, String> {
    Month::parse("month", value).map_err(|e| e.message)
}

/// `YYYY-MM-DD`, zero-padded, in the ledger's range.
fn parse_day(value: &str) -> Result<NaiveDate, String> {
    ledger::time::parse_day("day", value).map_err(|e| e.message)
}

/// One line of text (`ledger::names::Reason`): it is stored with the correction entries.
fn parse_reason(value: &str) -> Result<String, String> {
    ledger::names::Reason::parse("reason", value)
        .map(|r| r.as_str().to_owned())
        .map_err(|e| e.message)
}

/// A progress bar with an ETA on a terminal; plain log lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    done: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Progress {
    fn new(total: u64) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} windows, ETA {eta}",
                )
                .expect("a valid template"),
            );
            bar
        });
        Progress {
            bar,
            total,
            done: Default::default(),
            started: std::time::Instant::now(),
        }
    }

    fn advance(&self, n: u64) {
        let done = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let elapsed = self.started.elapsed().as_secs_f64();
                let eta = elapsed / done.max(1) as f64 * (self.total.saturating_sub(done)) as f64;
                tracing::info!(
                    done,
                    total = self.total,
                    eta_seconds = eta.round(),
                    "collecting"
                );
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Installs the SIGINT and SIGTERM handlers now, and returns what completes on either. Now,
/// not when first polled: a SIGTERM that comes as soon as the API answers must not kill the
/// process with the default action instead of shutting it down.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
