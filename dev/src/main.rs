//! `budgetd-dev`: the developer's tools beside the daemon, never shipped with it. Benchmarks
//! that print ratios against baselines measured in the same run, the demo servers of README
//! command 1 (a synthetic cluster's metrics, a stand-in Kubernetes API), and the check of
//! `deploy/`'s ClusterRole against the test suite's Kubernetes calls.

mod bench;
mod cluster_role;
mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "budgetd-dev",
    version,
    about = "budgetd's benchmarks and demo servers (development only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        bench: BenchCommand,
    },
    /// Serve a synthetic cluster's cAdvisor and kube-state-metrics metrics for a local
    /// Prometheus (README command 1's demo workload).
    DemoExporter {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 3)]
        tenants: usize,
    },
    /// Serve a stand-in Kubernetes API (the tests' stateful fake) with each demo tenant's
    /// namespace, quota and workloads, for README command 1's enforcer.
    DemoKube {
        #[arg(long, default_value = "127.0.0.1:8001")]
        listen: SocketAddr,
        #[arg(long, default_value_t = 3)]
        tenants: usize,
    },
    /// Compare the ClusterRole `kubectl kustomize DEPLOY` renders with the Kubernetes calls the
    /// fake API server recorded in CALLS (BUDGETD_TEST_KUBE_CALLS_DIR of a whole test run):
    /// exit 1 unless every call is granted and every grant was used.
    CheckClusterRole {
        #[arg(long)]
        calls: PathBuf,
        #[arg(long, default_value = "deploy")]
        deploy: PathBuf,
    },
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
        /// Days of hourly entries in the finance-query data set (June 1 on; at most 29: the
        /// loaded-month write rounds go on the day after).
        #[arg(long, default_value_t = 28)]
        finance_days: u32,
        /// Tenants of the one large window written at the end.
        #[arg(long, default_value_t = 100_000)]
        big_window_tenants: usize,
    },
    /// One window for many tenants against the same queries over plain HTTP, and a long
    /// backfill, both from a real Prometheus loaded with synthetic data (needs promtool and
    /// prometheus, as installed by scripts/test.sh, and a superuser URL).
    Collector {
        #[arg(long, env = "BUDGETD_BENCH_DATABASE_URL")]
        database_url: String,
        /// Tenants in the one-window measurement.
        #[arg(long, default_value_t = 10_000)]
        tenants: usize,
        /// Tenants in the long backfill.
        #[arg(long, default_value_t = 100)]
        backfill_tenants: usize,
        /// Days of 300 s windows in the long backfill.
        #[arg(long, default_value_t = 30)]
        backfill_days: i64,
        /// Tenants in the daemon's process measurements (one window, the catch-up).
        #[arg(long, default_value_t = 10_000)]
        catchup_tenants: usize,
        /// Hours of outage caught up; fewer than 24 are extrapolated to 24 in the report.
        #[arg(long, default_value_t = 24)]
        catchup_hours: i64,
        /// prometheus.timeout_ms of the catch-up's process, so collector.batch_target_ms is half
        /// of it (the example config's 30 s and 15 s otherwise)
        #[arg(long)]
        catchup_timeout_ms: Option<u64>,
    },
    /// The built-in meters' PromQL against the meters before issue 13, on a real Prometheus
    /// with synthetic data: accuracy per tenant, meter and day on the trap cluster, and
    /// Prometheus' time per query at scale (needs promtool and prometheus).
    MeterQueries {
        /// Tenants of the cost measurement.
        #[arg(long, default_value_t = 10_000)]
        tenants: usize,
        /// Scrape interval of the cost measurement's data, in seconds.
        #[arg(long, default_value_t = 30)]
        scrape_interval_s: i64,
        /// Timed rounds, after one warm-up.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// One enforcement evaluation (budget status query, open actions, exemptions, plan) for
    /// many tenants against a plain SELECT of the same spent sums. Needs a superuser URL: it
    /// creates and drops its own scratch database.
    Enforcer {
        #[arg(long, env = "BUDGETD_BENCH_DATABASE_URL")]
        database_url: String,
        /// Tenant counts, comma-separated, each measured in a scratch database of its own;
        /// every tenant has a monthly budget.
        #[arg(long, value_delimiter = ',', default_values_t = [10_000, 100_000])]
        tenants: Vec<usize>,
        /// Timed rounds, after one warm-up.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
    },
    /// The Kafka relay draining an outbox backlog through librdkafka's mock cluster, against
    /// raw produce of the same events; consumes everything back and checks each tenant's
    /// order. Needs a superuser URL: it creates and drops its own scratch database.
    Kafka {
        #[arg(long, env = "BUDGETD_BENCH_DATABASE_URL")]
        database_url: String,
        /// Outbox events in the backlog.
        #[arg(long, default_value_t = 100_000)]
        events: usize,
        /// Tenants they belong to.
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
    },
    /// The lifecycle against the fake Kubernetes API: approvals through the ledger until every
    /// blueprint is applied (tenants/s), then a resync of many tenants with no drift (seconds
    /// and writes). Needs a superuser URL: it creates and drops its own scratch database.
    Lifecycle {
        #[arg(long, env = "BUDGETD_BENCH_DATABASE_URL")]
        database_url: String,
        /// Requests approved in the timed run.
        #[arg(long, default_value_t = 1_000)]
        tenants: usize,
        /// Tenants resynced.
        #[arg(long, default_value_t = 10_000)]
        resync_tenants: usize,
        /// Approvals at once, and tenants the runner converges at once.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

/// Runs the command; 1 on failure (2 for bad arguments, from clap).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("budgetd-dev: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("budgetd-dev: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Bench { bench } => match bench {
            BenchCommand::Ledger {
                database_url,
                tenants,
                finance_tenants,
                finance_days,
                big_window_tenants,
            } => {
                let options = bench::ledger::LedgerBenchOptions {
                    tenants,
                    finance_tenants,
                    finance_days,
                    big_window_tenants,
                    ..Default::default()
                };
                bench::ledger::run_ledger_bench(&database_url, &options).await
            }
            BenchCommand::Collector {
                database_url,
                tenants,
                backfill_tenants,
                backfill_days,
                catchup_tenants,
                catchup_hours,
                catchup_timeout_ms,
            } => {
                let options = bench::collector::CollectorBenchOptions {
                    tenants_one_window: tenants,
                    backfill_tenants,
                    backfill_days,
                    catchup_tenants,
                    catchup_hours,
                    catchup_timeout_ms,
                };
                bench::collector::run_collector_bench(&database_url, &options).await
            }
            BenchCommand::MeterQueries {
                tenants,
                scrape_interval_s,
                rounds,
            } => {
                let options = bench::meter_queries::MeterQueriesBenchOptions {
                    tenants,
                    scrape_interval_s,
                    rounds,
                };
                bench::meter_queries::run_meter_queries_bench(&options).await
            }
            BenchCommand::Enforcer {
                database_url,
                tenants,
                rounds,
            } => {
                let options = bench::enforcer::EnforcerBenchOptions { tenants, rounds };
                bench::enforcer::run_enforcer_bench(&database_url, &options).await
            }
            BenchCommand::Kafka {
                database_url,
                events,
                tenants,
            } => {
                let options = bench::kafka::KafkaBenchOptions { events, tenants };
                bench::kafka::run_kafka_bench(&database_url, &options).await
            }
            BenchCommand::Lifecycle {
                database_url,
                tenants,
                resync_tenants,
                concurrency,
            } => {
                let options = bench::lifecycle::LifecycleBenchOptions {
                    tenants,
                    resync_tenants,
                    concurrency,
                };
                bench::lifecycle::run_lifecycle_bench(&database_url, &options).await
            }
        },
        Command::DemoExporter { listen, tenants } => demo::serve(listen, tenants).await,
        Command::DemoKube { listen, tenants } => demo::serve_kube(listen, tenants).await,
        Command::CheckClusterRole { calls, deploy } => cluster_role::check(&calls, &deploy),
    }
}
