//! `budgetd-dev bench lifecycle`: the blueprint's provisioner against the fake Kubernetes API
//! (a real `kube::Client` over loopback HTTP).
//!
//! 1. Provision `tenants` tenants (one namespace each, the built-in blueprint: 5 objects) →
//!    tenants/s (target ≥ 50/s). Baseline in the same run: one plain GET per tenant, the
//!    cheapest round trip the same client and server can do.
//! 2. Provision more tenants, untimed, up to `resync_tenants`.
//! 3. Resync every tenant with no drift, twice: per tenant (`Provisioner::converge`: one LIST of
//!    its namespaces and one GET per object) and from one snapshot (`Provisioner::snapshot`:
//!    one LIST per kind, then `converge_in` per tenant) → seconds (target ≤ 30 s) and the writes
//!    the fake saw (must be 0).
//!
//! The report goes to stdout, progress to stderr. Targets are informative.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use ledger::tenant::{DataResidency, TenantId};
use lifecycle::blueprint::{Blueprint, Provisioner, ProvisionerSettings, TenantSpec};
use testkit::fake_kube::FakeKube;

use super::{secs, verdict};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleBenchOptions {
    /// Tenants provisioned in the timed run.
    pub tenants: usize,
    /// Tenants resynced (all provisioned first).
    pub resync_tenants: usize,
    /// Tenants converged at once.
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

fn spec(i: usize) -> anyhow::Result<TenantSpec> {
    let name = format!("tenant-{i:05}");
    Ok(TenantSpec {
        tenant: TenantId::parse(&name).context("tenant id")?,
        namespaces: vec![name],
        owner_group: Some(format!("team-{i}")),
        residency: DataResidency::parse("eu").context("residency")?,
        quota: BTreeMap::from([
            ("cpu".to_owned(), "8".to_owned()),
            ("memory".to_owned(), "32Gi".to_owned()),
            ("pods".to_owned(), "100".to_owned()),
        ]),
        isolated: false,
    })
}

pub async fn run_lifecycle_bench(options: &LifecycleBenchOptions) -> anyhow::Result<()> {
    ensure!(
        options.tenants > 0 && options.concurrency > 0,
        "nothing to measure"
    );
    let resync_tenants = options.resync_tenants.max(options.tenants);
    let fake = FakeKube::start().await;
    let config = kube::Config::new(fake.url().parse().context("the fake's URL")?);
    let client = kube::Client::try_from(config).context("kube client")?;
    let provisioner = Provisioner::new(
        client.clone(),
        Arc::new(Blueprint::builtin()),
        ProvisionerSettings {
            ingress_namespace: "ingress-nginx".to_owned(),
            namespace_role: "edit".to_owned(),
            request_timeout: Duration::from_secs(10),
            max_attempts: 3,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        },
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let specs: Vec<TenantSpec> = (0..resync_tenants).map(spec).collect::<Result<_, _>>()?;
    let converge_all = |specs: &[TenantSpec]| {
        let p = provisioner.clone();
        let specs = specs.to_vec();
        async move {
            stream::iter(specs)
                .map(|s| {
                    let p = p.clone();
                    async move {
                        p.converge(&s)
                            .await
                            .map(|r| r.created.len() + r.updated.len())
                    }
                })
                .buffer_unordered(options.concurrency)
                .try_fold(0usize, |n, w| async move { Ok(n + w) })
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    };

    // baseline: one GET per tenant (404s: nothing is there yet)
    eprintln!("baseline: {} GETs", options.tenants);
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client);
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

    eprintln!("provisioning {} tenants", options.tenants);
    let started = Instant::now();
    let applied = converge_all(&specs[..options.tenants]).await?;
    let provision = started.elapsed();
    let rate = options.tenants as f64 / secs(provision);
    ensure!(applied == options.tenants * 5, "{applied} objects applied");

    eprintln!("provisioning up to {resync_tenants} tenants");
    converge_all(&specs[options.tenants..]).await?;

    eprintln!("resync per tenant");
    fake.clear_requests();
    let started = Instant::now();
    let changed = converge_all(&specs).await?;
    let per_tenant = started.elapsed();
    let per_tenant_requests = fake.requests().len();
    let per_tenant_writes = fake.writes().len();
    ensure!(
        changed == 0,
        "a resync without drift changed {changed} objects"
    );

    eprintln!("resync from one snapshot");
    fake.clear_requests();
    let started = Instant::now();
    let snapshot = provisioner
        .snapshot()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let snapshot_changed = stream::iter(specs.iter())
        .map(|s| {
            let (p, snapshot) = (&provisioner, &snapshot);
            async move {
                p.converge_in(s, snapshot)
                    .await
                    .map(|r| r.created.len() + r.updated.len())
            }
        })
        .buffer_unordered(options.concurrency)
        .try_fold(0usize, |n, w| async move { Ok(n + w) })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let from_snapshot = started.elapsed();
    let snapshot_requests = fake.requests().len();
    let snapshot_writes = fake.writes().len();
    ensure!(
        snapshot_changed == 0,
        "a snapshot resync changed {snapshot_changed} objects"
    );

    println!("lifecycle bench: built-in blueprint (5 objects per tenant), fake Kubernetes API, concurrency {}", options.concurrency);
    println!(
        "provision   {:>6} tenants  {:>8.2} s  {:>8.1} tenants/s  (target >= 50/s: {})  baseline {} GETs {:.2} s, ratio {:.1}x",
        options.tenants,
        secs(provision),
        rate,
        verdict(rate >= 50.0),
        options.tenants,
        secs(baseline),
        secs(provision) / secs(baseline).max(1e-9),
    );
    for (name, took, requests, writes) in [
        (
            "resync per tenant",
            per_tenant,
            per_tenant_requests,
            per_tenant_writes,
        ),
        (
            "resync snapshot",
            from_snapshot,
            snapshot_requests,
            snapshot_writes,
        ),
    ] {
        println!(
            "{name:<18} {resync_tenants:>6} tenants  {:>8.2} s  {requests:>7} requests  {writes} writes  (target <= 30 s and 0 writes: {})",
            secs(took),
            verdict(secs(took) <= 30.0 && writes == 0),
        );
    }
    fake.shutdown().await;
    Ok(())
}
