//! The demo servers behind README command 1. `budgetd-dev demo-exporter` exposes a synthetic
//! cluster (`testkit::synthetic`) as kube-prometheus-stack exposes a real one, cAdvisor metrics
//! on `/metrics/cadvisor` and kube-state-metrics on `/metrics/kube-state-metrics`, so that a
//! local Prometheus scrapes it under the job names the default meters expect.
//! `budgetd-dev demo-kube` serves the tests' fake Kubernetes API with the demo tenants in it.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use chrono::{Duration, Utc};
use testkit::synthetic::{Cluster, ClusterSpec};
use tokio::net::TcpListener;

/// Which families an endpoint serves.
#[derive(Clone, Copy)]
enum Exporter {
    Cadvisor,
    KubeStateMetrics,
}

impl Exporter {
    fn serves(self, family: &str) -> bool {
        match self {
            Exporter::Cadvisor => family.starts_with("container_"),
            Exporter::KubeStateMetrics => family.starts_with("kube_"),
        }
    }
}

/// Keeps the `# HELP`/`# TYPE` blocks of the families `exporter` serves. Prometheus adds
/// `up` itself, so the model's own `up` series are never exported.
fn exposition_for(text: &str, exporter: Exporter) -> String {
    let mut out = String::with_capacity(text.len() / 2);
    let mut keep = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            keep = exporter.serves(rest.split(' ').next().unwrap_or(""));
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn metrics(State((cluster, exporter)): State<(Arc<Cluster>, Exporter)>) -> String {
    exposition_for(&cluster.render_exposition(Utc::now()), exporter)
}

/// The tenant the README's first session creates. The demo cluster already runs its namespace
/// (labelled `tenant=acme`): until the tenant exists its usage is unallocated, from then on it
/// is the tenant's cost, as when a team's namespaces predate its onboarding.
pub const FIRST_TENANT: &str = "acme";
/// [`FIRST_TENANT`]'s namespace.
pub const FIRST_TENANT_NAMESPACE: &str = "acme-prod";

/// The demo cluster: `tenants` tenants, the traps (a namespace without a tenant label, and
/// [`FIRST_TENANT`]'s namespace), 30 days from `now`.
fn demo_spec(tenants: usize, now: chrono::DateTime<Utc>) -> ClusterSpec {
    ClusterSpec::new(
        tenants,
        7,
        now - Duration::minutes(10),
        now + Duration::days(30),
    )
    .with_traps(true)
    .with_unknown_tenant(FIRST_TENANT_NAMESPACE, FIRST_TENANT)
    .with_jitter_s(0)
}

/// Serves the demo cluster of `tenants` tenants (ids `tenant-000`, ...) plus the namespace of
/// [`FIRST_TENANT`], until the process ends. The model covers 30 days from now.
pub async fn serve(listen: SocketAddr, tenants: usize) -> anyhow::Result<()> {
    let cluster = Arc::new(Cluster::generate(&demo_spec(tenants, Utc::now())));
    let router = Router::new()
        .route(
            "/metrics/cadvisor",
            get(metrics).with_state((cluster.clone(), Exporter::Cadvisor)),
        )
        .route(
            "/metrics/kube-state-metrics",
            get(metrics).with_state((cluster.clone(), Exporter::KubeStateMetrics)),
        );
    let listener = TcpListener::bind(listen).await?;
    eprintln!(
        "demo exporter on http://{}: tenants {:?}",
        listener.local_addr()?,
        cluster.tenant_ids()
    );
    axum::serve(listener, router).await?;
    Ok(())
}

/// README command 1's stand-in for a Kubernetes API: the stateful fake API server the tests
/// use, with each demo tenant's namespace, quota, workloads and a CronJob, so the enforcer
/// has something to tighten, suspend and restore. There is no real cluster here; see README.
pub async fn serve_kube(listen: SocketAddr, tenants: usize) -> anyhow::Result<()> {
    let kube = testkit::fake_kube::FakeKube::start_on(listen).await?;
    let tenants_and_first = (0..tenants)
        .map(|i| format!("tenant-{i:03}"))
        .chain([FIRST_TENANT.to_owned()]);
    for tenant in tenants_and_first {
        let namespace = format!("{tenant}-prod");
        kube.create_namespace(&namespace, &[("tenant", tenant.as_str())]);
        kube.create_quota(
            &namespace,
            &[
                ("requests.cpu", "8"),
                ("requests.memory", "16Gi"),
                ("pods", "20"),
            ],
        );
        kube.create_deployment(&namespace, "web", 3);
        kube.create_deployment(&namespace, "api", 2);
        kube.create_hpa(&namespace, "api", "Deployment", "api");
        kube.create_statefulset(&namespace, "db", 1);
        kube.create_cronjob(&namespace, "nightly-report", false);
    }
    eprintln!(
        "demo Kubernetes API serving {tenants} tenants and {FIRST_TENANT} on {}",
        kube.url()
    );
    tokio::signal::ctrl_c().await?;
    kube.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's first session creates `acme`: its namespace must be in the demo cluster,
    /// labelled for it, with usage, or the session shows no costs.
    #[test]
    fn the_first_sessions_tenant_has_a_labelled_namespace_with_usage() {
        let now = Utc::now();
        let cluster = Cluster::generate(&demo_spec(3, now));
        let ksm = exposition_for(&cluster.render_exposition(now), Exporter::KubeStateMetrics);
        assert!(
            ksm.contains("kube_namespace_labels{namespace=\"acme-prod\",label_tenant=\"acme\""),
            "{ksm}"
        );
        assert!(ksm.contains("kube_pod_container_resource_requests{namespace=\"acme-prod\""));
        assert_eq!(
            cluster.tenant_ids(),
            ["tenant-000", "tenant-001", "tenant-002"]
        );
    }

    #[test]
    fn each_endpoint_serves_its_families_and_never_up() {
        let now = Utc::now();
        let cluster = Cluster::generate(&ClusterSpec::new(
            2,
            1,
            now - Duration::hours(1),
            now + Duration::hours(1),
        ));
        let all = cluster.render_exposition(now);
        let cadvisor = exposition_for(&all, Exporter::Cadvisor);
        let ksm = exposition_for(&all, Exporter::KubeStateMetrics);
        assert!(cadvisor.contains("container_cpu_usage_seconds_total{"));
        assert!(!cadvisor.contains("kube_"));
        assert!(ksm.contains("kube_namespace_labels{"));
        assert!(ksm.contains("kube_pod_container_resource_requests{"));
        assert!(!ksm.contains("container_cpu"));
        for text in [&cadvisor, &ksm] {
            assert!(!text
                .lines()
                .any(|l| l.starts_with("up{") || l.starts_with("up ")));
        }
    }
}
