//! `budgetd-dev bench lifecycle`: the lifecycle as the daemon runs it (a scratch ledger, the
//! blueprint reconciler with its ledger-backed tenant source, one `lifecycle::Runner` stepped
//! as the leader) against the fake Kubernetes API (a real `kube::Client` over loopback HTTP).
//!
//! 1. File `tenants` self-service requests (untimed), then approve them `concurrency` at a time
//!    while the runner steps, and time until the last approval's blueprint is applied (the
//!    runner's lag is 0) → tenants/s (target ≥ 50/s). Baseline in the same run: one plain GET
//!    per tenant, the cheapest round trip an equal client and the same server can do.
//! 2. Create more tenants, untimed, up to `resync_tenants`, and let the runner provision them.
//! 3. Resync every tenant with no drift (`Runner::resync`, as the daemon's loop does: the
//!    ledger's tenant list, one snapshot of the owned objects, each tenant's desired state from
//!    the ledger) → seconds (target ≤ 30 s) and the writes the fake saw (must be 0). Baseline:
//!    the same ledger reads alone (the tenant list and one read per tenant).
//!
//! The report goes to stdout, progress to stderr. Targets are informative.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use chrono::Utc;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use ledger::audit::{Actor, AuditContext};
use ledger::budget::{BudgetPeriod, Thresholds};
use ledger::config::LifecycleSettings;
use ledger::currency::Currency;
use ledger::enforcement::Fence;
use ledger::money::Money;
use ledger::names::Reason;
use ledger::store::{LeaderLock, StoreConfig};
use ledger::tenant::{
    DataResidency, DisplayName, Justification, NewTenant, NewTenantRequest, Owner, OwnerGroup,
    QuotaProfileName, TenantId,
};
use ledger::Store;
use lifecycle::blueprint::{build_reconciler, runner_settings, RequestLimits, StoreSource};
use lifecycle::Runner;
use rust_decimal::Decimal;
use testkit::db::in_scratch_database;
use testkit::fake_kube::FakeKube;
use tokio::sync::watch;

use super::{secs, verdict, CURRENCY};

/// Objects the built-in blueprint applies per tenant with one namespace and an owner group.
const OBJECTS_PER_TENANT: usize = 5;

/// The stepping loop's pause when it has caught up (the daemon's `poll_interval` is longer).
const IDLE_PAUSE: Duration = Duration::from_millis(10);

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleBenchOptions {
    /// Requests approved in the timed run.
    pub tenants: usize,
    /// Tenants resynced (all provisioned first).
    pub resync_tenants: usize,
    /// Approvals at once, and tenants the runner converges at once.
    pub concurrency: usize,
}

impl Default for LifecycleBenchOptions {
    fn default() -> Self {
        LifecycleBenchOptions {
            tenants: 1_000,
            resync_tenants: 10_000,
            concurrency: 16,
        }
    }
}

fn tenant_id(i: usize) -> anyhow::Result<TenantId> {
    TenantId::parse(&format!("tenant-{i:05}")).context("tenant id")
}

fn new_tenant(i: usize) -> anyhow::Result<NewTenant> {
    let id = tenant_id(i)?;
    Ok(NewTenant {
        display_name: DisplayName::parse(id.as_str())?,
        owner: Owner::parse_email(&format!("owner-{i}@example.com"))?,
        data_residency: DataResidency::parse("eu")?,
        labels: Default::default(),
        owner_group: Some(OwnerGroup::parse(&format!("team-{i}"))?),
        quota_profile: Some(QuotaProfileName::parse("quota_profile", "standard")?),
        namespaces: Vec::new(),
        id,
    })
}

fn as_actor(name: &str, role: &str) -> AuditContext {
    AuditContext {
        actor: Actor {
            name: name.to_owned(),
            role: role.to_owned(),
        },
        request_id: format!("bench-{name}"),
    }
}

/// `admin_url`: a superuser URL of a Postgres server (database part is replaced). Creates its
/// own scratch database, migrates it, runs, prints a report to stdout, drops it.
pub async fn run_lifecycle_bench(
    admin_url: &str,
    options: &LifecycleBenchOptions,
) -> anyhow::Result<()> {
    ensure!(
        options.tenants > 0 && options.concurrency > 0,
        "nothing to measure"
    );
    let options = options.clone();
    in_scratch_database(admin_url, "budgetd_lbench", move |url| async move {
        bench(&url, &options).await
    })
    .await
}

/// Steps `runner` until nothing is left to handle; the events it handled.
async fn drain(runner: &Runner, fence: Fence) -> anyhow::Result<u64> {
    let mut handled = 0;
    loop {
        let report = runner.step(fence, Utc::now()).await?;
        ensure!(
            report.failed == 0 && report.parked == 0,
            "provisioning failed: {report:?}"
        );
        handled += report.handled;
        if report.lag == 0 {
            return Ok(handled);
        }
    }
}

async fn bench(url: &str, options: &LifecycleBenchOptions) -> anyhow::Result<()> {
    let resync_tenants = options.resync_tenants.max(options.tenants);
    Store::migrate(url, Duration::from_secs(30), Duration::from_secs(120))
        .await
        .context("migrating the scratch database")?;
    let store = Store::connect(&StoreConfig {
        url: url.to_owned(),
        max_connections: u32::try_from(options.concurrency + 4)?,
        acquire_timeout: Duration::from_secs(60),
        statement_timeout: Duration::from_secs(60),
        max_retries: 3,
        probe_timeout: Duration::from_millis(500),
    })
    .await?;
    let Some(lock) =
        LeaderLock::try_acquire(url, "budgetd-dev bench", 30, Duration::from_secs(10)).await?
    else {
        bail!("another process holds the scratch database's leader lock");
    };
    let fence = lock.fence();
    let (_leader, leader_rx) = watch::channel(Some(fence));

    let fake = FakeKube::start().await;
    let config = kube::Config::new(fake.url().parse().context("the fake's URL")?);
    let client = kube::Client::try_from(config).context("kube client")?;
    let settings = LifecycleSettings::default();
    let source = StoreSource::new(store.clone(), settings.quota_profiles.clone(), leader_rx);
    let reconciler = build_reconciler(
        &settings,
        RequestLimits {
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        },
        client,
        Arc::new(source),
    )?;
    let mut timing = runner_settings(&settings.reconciler);
    timing.concurrency = options.concurrency;
    let runner = Runner::new(store.clone(), Arc::new(reconciler), timing)?;

    // baseline: one GET per tenant (404s: nothing is there yet)
    eprintln!("baseline: {} GETs", options.tenants);
    // the baseline's GETs are the bench's, not budgetd's (see testkit::kube_calls)
    let mut baseline_config = kube::Config::new(fake.url().parse().context("the fake's URL")?);
    baseline_config
        .headers
        .push(testkit::fake_kube::fixture_header());
    let baseline_client = kube::Client::try_from(baseline_config).context("kube client")?;
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(baseline_client);
    let started = Instant::now();
    stream::iter(0..options.tenants)
        .map(|i| {
            let api = namespaces.clone();
            async move { api.get_opt(&format!("tenant-{i:05}")).await }
        })
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await
        .context("baseline GET")?;
    let baseline = started.elapsed();

    eprintln!("filing {} requests", options.tenants);
    let requester = as_actor("requester", "operator");
    stream::iter(0..options.tenants)
        .map(|i| {
            let (store, requester) = (&store, &requester);
            async move {
                let request = NewTenantRequest {
                    tenant: new_tenant(i)?,
                    budget: Money {
                        amount: Decimal::new(500, 0),
                        currency: Currency::parse("currency", CURRENCY)?,
                    },
                    period: BudgetPeriod::Monthly,
                    justification: Justification::parse("benchmark")?,
                };
                store.request_tenant(requester, &request).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    // A request provisions nothing; its event is handled before the clock starts.
    drain(&runner, fence).await?;
    fake.clear_requests();

    eprintln!(
        "approving {} requests while the runner steps",
        options.tenants
    );
    let approver = as_actor("approver", "admin");
    let thresholds = Thresholds::parse(vec![50, 80, 100])?;
    let reason = Reason::parse("reason", "benchmark")?;
    let started = Instant::now();
    let approved = AtomicBool::new(false);
    let approvals = async {
        stream::iter(0..options.tenants)
            .map(|i| {
                let (store, approver, thresholds, reason) =
                    (&store, &approver, &thresholds, &reason);
                async move {
                    store
                        .approve_tenant_request(
                            approver,
                            &tenant_id(i)?,
                            reason,
                            thresholds,
                            Utc::now(),
                        )
                        .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(options.concurrency)
            .try_collect::<Vec<_>>()
            .await?;
        approved.store(true, Ordering::Release);
        anyhow::Ok(started.elapsed())
    };
    // Steps as the daemon's loop does: at once while there is work, after a short pause when
    // the runner has caught up with the approvals so far; done when every approval is handled.
    let stepping = async {
        let mut steps = 0u64;
        loop {
            let all_approved = approved.load(Ordering::Acquire);
            let report = runner.step(fence, Utc::now()).await?;
            steps += 1;
            ensure!(report.failed == 0, "provisioning failed: {report:?}");
            if all_approved && report.lag == 0 {
                return anyhow::Ok(steps);
            }
            if report.handled == 0 && report.scanned == 0 {
                tokio::time::sleep(IDLE_PAUSE).await;
            }
        }
    };
    let (approvals_done, steps) = tokio::join!(approvals, stepping);
    let (approvals_done, steps) = (approvals_done?, steps?);
    let provision = started.elapsed();
    let rate = options.tenants as f64 / secs(provision);
    let created = fake.writes().len();
    ensure!(
        created == options.tenants * OBJECTS_PER_TENANT,
        "{created} objects applied for {} tenants",
        options.tenants
    );

    eprintln!("creating and provisioning up to {resync_tenants} tenants");
    let admin = as_actor("admin", "admin");
    stream::iter(options.tenants..resync_tenants)
        .map(|i| {
            let (store, admin) = (&store, &admin);
            async move {
                store.create_tenant(admin, &new_tenant(i)?).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let started = Instant::now();
    drain(&runner, fence).await?;
    let bulk = started.elapsed();

    eprintln!("baseline: the ledger reads of a resync");
    let started = Instant::now();
    let tenants = store.list_tenants(None).await?;
    stream::iter(tenants.into_iter().map(|t| t.id))
        .map(|id| {
            let store = store.clone();
            async move { store.get_tenant(&id).await }
        })
        .buffer_unordered(options.concurrency)
        .try_collect::<Vec<_>>()
        .await?;
    let ledger_reads = started.elapsed();

    eprintln!("resync");
    fake.clear_requests();
    let started = Instant::now();
    let resync = runner.resync().await?;
    let resync_took = started.elapsed();
    let requests = fake.requests().len();
    let writes = fake.writes().len();
    ensure!(
        resync.failed == 0 && resync.converged == resync_tenants as u64,
        "resync converged {} and failed {} of {resync_tenants} tenants",
        resync.converged,
        resync.failed
    );

    println!(
        "lifecycle bench: approvals through the ledger, the blueprint reconciler stepped as the leader, built-in blueprint ({OBJECTS_PER_TENANT} objects per tenant), fake Kubernetes API, concurrency {}",
        options.concurrency
    );
    println!(
        "approve+provision {:>6} tenants  {:>8.2} s  {:>8.1} tenants/s  (target >= 50/s: {})  approvals alone {:.2} s, {steps} steps; baseline {} GETs {:.2} s, ratio {:.1}x",
        options.tenants,
        secs(provision),
        rate,
        verdict(rate >= 50.0),
        secs(approvals_done),
        options.tenants,
        secs(baseline),
        secs(provision) / secs(baseline).max(1e-9),
    );
    println!(
        "provision (bulk)  {:>6} tenants  {:>8.2} s  {:>8.1} tenants/s  (created, then the runner drained)",
        resync_tenants - options.tenants,
        secs(bulk),
        (resync_tenants - options.tenants) as f64 / secs(bulk).max(1e-9),
    );
    println!(
        "resync            {resync_tenants:>6} tenants  {:>8.2} s  {requests:>7} requests  {writes} writes  (target <= 30 s and 0 writes: {})  baseline ledger reads {:.2} s, ratio {:.1}x",
        secs(resync_took),
        verdict(secs(resync_took) <= 30.0 && writes == 0),
        secs(ledger_reads),
        secs(resync_took) / secs(ledger_reads).max(1e-9),
    );
    fake.shutdown().await;
    lock.release(Duration::from_secs(5)).await;
    Ok(())
}
