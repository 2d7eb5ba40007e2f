//! The Kubernetes actuator against the stateful fake API server, through the real
//! `kube::Client` over HTTP.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use enforcer::cluster::{
    diff, Change, ClusterActuator, ClusterError, Footprint, NamespaceFootprint, Tighten, Workload,
    WorkloadKind, FIELD_MANAGER, QUOTA_NAME, SUSPENDED_LABEL,
};
use enforcer::kubernetes::{KubernetesActuator, KubernetesSettings};
use k8s_openapi::api::core::v1::ResourceQuota;
use kube::api::{Api, Patch, PatchParams};
use ledger::tenant::TenantId;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use testkit::fake_kube::{FakeKube, Fault, Resource, SEED_MANAGER};

use crate::counters::Counters;

const MAX_ATTEMPTS: u32 = 3;

fn settings(url: &str) -> KubernetesSettings {
    KubernetesSettings::new(
        Duration::from_secs(5),
        MAX_ATTEMPTS,
        Duration::from_millis(1),
        Duration::from_millis(10),
    )
    .with_api_url(url)
}

async fn actuator(fake: &FakeKube) -> KubernetesActuator {
    KubernetesActuator::new(settings(&fake.url()))
        .await
        .expect("actuator")
}

fn acme() -> TenantId {
    TenantId::parse("acme").unwrap()
}

/// Two namespaces of tenant `acme` (one with a quota, an autoscaled deployment, a statefulset
/// and cronjobs; one with nothing but a deployment), one of tenant `globex`, one of nobody.
async fn cluster() -> FakeKube {
    let fake = FakeKube::start().await;
    fake.create_namespace("acme-prod", &[("tenant", "acme"), ("team", "shop")]);
    fake.create_quota(
        "acme-prod",
        &[("cpu", "8"), ("memory", "16Gi"), ("pods", "20")],
    );
    fake.create_deployment("acme-prod", "web", 3);
    fake.create_deployment("acme-prod", "api", 2);
    fake.create_hpa("acme-prod", "api", "Deployment", "api");
    fake.create_statefulset("acme-prod", "db", 1);
    fake.create_cronjob("acme-prod", "report", false);
    fake.create_cronjob("acme-prod", "cleanup", true);

    fake.create_namespace("acme-dev", &[("tenant", "acme")]);
    fake.create_deployment("acme-dev", "web", 1);

    fake.create_namespace("globex", &[("tenant", "globex")]);
    fake.create_quota("globex", &[("pods", "5")]);
    fake.create_deployment("globex", "web", 4);
    fake.create_cronjob("globex", "nightly", false);

    fake.create_namespace("shared", &[]);
    fake.create_deployment("shared", "web", 2);
    fake
}

fn workload(kind: WorkloadKind, name: &str, replicas: i32, hpa: Option<&str>) -> Workload {
    Workload {
        kind,
        name: name.to_owned(),
        replicas,
        hpa: hpa.map(str::to_owned),
    }
}

fn hard(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Everything budgetd manages, as the fake holds it: quota hard limits, replicas, suspend
/// flags and namespace labels.
fn managed_fields(fake: &FakeKube) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for ns in ["acme-prod", "acme-dev", "globex", "shared"] {
        let labels = fake
            .object(Resource::Namespace, "", ns)
            .map(|o| o["metadata"]["labels"].clone());
        out.insert(format!("{ns}/labels"), json!(labels));
        let quota = fake
            .object(Resource::ResourceQuota, ns, QUOTA_NAME)
            .map(|o| o["spec"]["hard"].clone());
        out.insert(format!("{ns}/quota"), json!(quota));
    }
    for (resource, ns, name, field) in [
        (Resource::Deployment, "acme-prod", "web", "replicas"),
        (Resource::Deployment, "acme-prod", "api", "replicas"),
        (Resource::StatefulSet, "acme-prod", "db", "replicas"),
        (Resource::Deployment, "acme-dev", "web", "replicas"),
        (Resource::Deployment, "globex", "web", "replicas"),
        (Resource::Deployment, "shared", "web", "replicas"),
        (Resource::CronJob, "acme-prod", "report", "suspend"),
        (Resource::CronJob, "acme-prod", "cleanup", "suspend"),
        (Resource::CronJob, "globex", "nightly", "suspend"),
    ] {
        let value = fake
            .object(resource, ns, name)
            .map(|o| o["spec"][field].clone());
        out.insert(format!("{ns}/{}/{name}", resource.plural()), json!(value));
    }
    out
}

fn spec_field(fake: &FakeKube, resource: Resource, ns: &str, name: &str, field: &str) -> Value {
    fake.object(resource, ns, name).expect("object exists")["spec"][field].clone()
}

#[tokio::test]
async fn observe_returns_the_tenants_exact_footprint() {
    let fake = cluster().await;
    let footprint = actuator(&fake).await.observe(&acme()).await.unwrap();

    let prod = NamespaceFootprint {
        quota: Some(hard(&[("cpu", "8"), ("memory", "16Gi"), ("pods", "20")])),
        workloads: vec![
            workload(WorkloadKind::Deployment, "api", 2, Some("api")),
            workload(WorkloadKind::Deployment, "web", 3, None),
            workload(WorkloadKind::StatefulSet, "db", 1, None),
        ],
        cronjobs: [("cleanup".to_owned(), true), ("report".to_owned(), false)].into(),
        suspended_label: false,
    };
    let dev = NamespaceFootprint {
        quota: None,
        workloads: vec![workload(WorkloadKind::Deployment, "web", 1, None)],
        cronjobs: BTreeMap::new(),
        suspended_label: false,
    };
    let expected = Footprint {
        namespaces: [("acme-dev".to_owned(), dev), ("acme-prod".to_owned(), prod)].into(),
    };
    assert_eq!(footprint, expected);

    let list = &fake.requests()[0];
    assert_eq!(
        (list.method.as_str(), list.path.as_str()),
        ("GET", "/api/v1/namespaces")
    );
    assert!(
        list.query.contains("labelSelector=tenant%3Dacme"),
        "{}",
        list.query
    );
}

#[tokio::test]
async fn observe_reads_the_label_an_hpa_scale_target_and_a_configured_tenant_label() {
    let fake = FakeKube::start().await;
    fake.create_namespace(
        "a",
        &[("budgetd.io/tenant", "acme"), (SUSPENDED_LABEL, "true")],
    );
    fake.create_statefulset("a", "db", 0);
    // an autoscaler of a Deployment named like the StatefulSet does not mark it
    fake.create_hpa("a", "db-hpa", "Deployment", "db");
    fake.create_statefulset("a", "cache", 2);
    fake.create_hpa("a", "cache-hpa", "StatefulSet", "cache");
    fake.create_namespace("b", &[("tenant", "acme")]);

    let actuator =
        KubernetesActuator::new(settings(&fake.url()).with_tenant_label("budgetd.io/tenant"))
            .await
            .unwrap();
    let footprint = actuator.observe(&acme()).await.unwrap();

    assert_eq!(footprint.namespaces.keys().collect::<Vec<_>>(), ["a"]);
    let a = &footprint.namespaces["a"];
    assert!(a.suspended_label);
    assert_eq!(
        a.workloads,
        [
            workload(WorkloadKind::StatefulSet, "cache", 2, Some("cache-hpa")),
            workload(WorkloadKind::StatefulSet, "db", 0, None),
        ]
    );
}

#[tokio::test]
async fn suspending_and_restoring_returns_every_object_to_its_prior_spec() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let before = managed_fields(&fake);
    let globex_before = fake.object(Resource::Deployment, "globex", "web");

    let prior = actuator.observe(&acme()).await.unwrap();
    let suspended = prior.suspended();
    let forward = diff(&prior, &suspended);
    let report = actuator.apply(&forward).await.unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);

    // what a suspension does, object by object
    let quota = fake
        .object(Resource::ResourceQuota, "acme-prod", QUOTA_NAME)
        .unwrap();
    assert_eq!(
        quota["spec"]["hard"],
        json!({ "cpu": "8", "memory": "16Gi", "pods": "0" })
    );
    let dev_quota = fake
        .object(Resource::ResourceQuota, "acme-dev", QUOTA_NAME)
        .unwrap();
    assert_eq!(dev_quota["spec"]["hard"], json!({ "pods": "0" }));
    assert_eq!(
        spec_field(&fake, Resource::Deployment, "acme-prod", "web", "replicas"),
        0
    );
    assert_eq!(
        spec_field(&fake, Resource::Deployment, "acme-prod", "api", "replicas"),
        2,
        "autoscaled: left alone"
    );
    assert_eq!(
        spec_field(&fake, Resource::StatefulSet, "acme-prod", "db", "replicas"),
        0
    );
    assert_eq!(
        spec_field(&fake, Resource::Deployment, "acme-dev", "web", "replicas"),
        0
    );
    assert_eq!(
        spec_field(&fake, Resource::CronJob, "acme-prod", "report", "suspend"),
        true
    );
    for ns in ["acme-prod", "acme-dev"] {
        let labels = &fake.object(Resource::Namespace, "", ns).unwrap()["metadata"]["labels"];
        assert_eq!(labels[SUSPENDED_LABEL], "true", "{ns}");
        assert_eq!(labels["tenant"], "acme", "{ns}: other labels stay");
    }
    assert_eq!(actuator.observe(&acme()).await.unwrap(), suspended);

    // how: the quota by forced server-side apply as budgetd, replicas through `scale`
    let writes = fake.writes();
    let quota_write = writes
        .iter()
        .find(|r| r.path == "/api/v1/namespaces/acme-prod/resourcequotas/budgetd-quota")
        .unwrap();
    assert_eq!(quota_write.method, "PATCH");
    assert_eq!(
        quota_write.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    assert!(
        quota_write.query.contains("fieldManager=budgetd"),
        "{}",
        quota_write.query
    );
    assert!(
        quota_write.query.contains("force=true"),
        "{}",
        quota_write.query
    );
    let scale_write = writes
        .iter()
        .find(|r| r.path.contains("acme-prod/deployments/web"))
        .unwrap();
    assert_eq!(
        scale_write.path,
        "/apis/apps/v1/namespaces/acme-prod/deployments/web/scale"
    );
    assert_eq!(
        scale_write.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    let owners = fake.field_owners(Resource::ResourceQuota, "acme-prod", QUOTA_NAME);
    assert!(
        owners[FIELD_MANAGER].contains("spec.hard.pods"),
        "{owners:?}"
    );

    let backward = diff(&suspended, &prior);
    let report = actuator.apply(&backward).await.unwrap();
    assert!(report.missing.is_empty(), "{:?}", report.missing);
    assert_eq!(actuator.observe(&acme()).await.unwrap(), prior);
    assert_eq!(managed_fields(&fake), before);
    assert!(
        fake.object(Resource::ResourceQuota, "acme-dev", QUOTA_NAME)
            .is_none(),
        "the quota budgetd created is gone"
    );
    assert_eq!(
        fake.object(Resource::Deployment, "globex", "web"),
        globex_before
    );
}

#[tokio::test]
async fn tightening_by_a_factor_and_restoring_returns_the_quota() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let before = managed_fields(&fake);

    let prior = actuator.observe(&acme()).await.unwrap();
    let tight = prior
        .tightened(&Tighten::Factor(Decimal::new(5, 1)))
        .unwrap();
    let forward = diff(&prior, &tight);
    assert_eq!(forward.len(), 1, "{forward:?}");
    actuator.apply(&forward).await.unwrap();
    assert_eq!(
        fake.object(Resource::ResourceQuota, "acme-prod", QUOTA_NAME)
            .unwrap()["spec"]["hard"],
        json!({ "cpu": "4", "memory": "8Gi", "pods": "10" })
    );
    assert!(fake
        .object(Resource::ResourceQuota, "acme-dev", QUOTA_NAME)
        .is_none());

    actuator.apply(&diff(&tight, &prior)).await.unwrap();
    assert_eq!(managed_fields(&fake), before);
}

#[tokio::test]
async fn restoring_a_profile_removes_the_limits_it_added() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let before = managed_fields(&fake);

    let prior = actuator.observe(&acme()).await.unwrap();
    let profile = Tighten::Profile {
        name: "small".into(),
        hard: hard(&[("cpu", "2"), ("count/jobs.batch", "1")]),
    };
    let tight = prior.tightened(&profile).unwrap();
    actuator.apply(&diff(&prior, &tight)).await.unwrap();
    assert_eq!(
        fake.object(Resource::ResourceQuota, "acme-prod", QUOTA_NAME)
            .unwrap()["spec"]["hard"],
        json!({ "count/jobs.batch": "1", "cpu": "2", "memory": "16Gi", "pods": "20" })
    );

    // Server-side apply: the limit budgetd no longer sends and nobody else owns is removed.
    actuator.apply(&diff(&tight, &prior)).await.unwrap();
    assert_eq!(managed_fields(&fake), before);
    assert_eq!(actuator.observe(&acme()).await.unwrap(), prior);
}

fn quota_apply(cpu: &str) -> Patch<Value> {
    Patch::Apply(json!({
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": { "name": QUOTA_NAME },
        "spec": { "hard": { "cpu": cpu } },
    }))
}

#[tokio::test]
async fn budgetd_wins_quota_fields_by_force_and_other_managers_get_conflicts() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    // the test's own client: its calls are not budgetd's (see testkit::kube_calls)
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.headers.push(testkit::fake_kube::fixture_header());
    let client = kube::Client::try_from(config).unwrap();
    let quotas: Api<ResourceQuota> = Api::namespaced(client, "acme-prod");

    // The platform's Helm release takes `cpu` from whoever created the quota.
    quotas
        .patch(
            QUOTA_NAME,
            &PatchParams::apply("helm").force(),
            &quota_apply("16"),
        )
        .await
        .unwrap();
    let owners = fake.field_owners(Resource::ResourceQuota, "acme-prod", QUOTA_NAME);
    assert!(owners["helm"].contains("spec.hard.cpu"), "{owners:?}");
    assert!(
        !owners[SEED_MANAGER].contains("spec.hard.cpu"),
        "{owners:?}"
    );

    let tightened = hard(&[("cpu", "4"), ("memory", "8Gi"), ("pods", "10")]);
    actuator
        .apply(&[Change::SetQuota {
            namespace: "acme-prod".into(),
            hard: tightened.clone(),
        }])
        .await
        .unwrap();
    let quota = fake
        .object(Resource::ResourceQuota, "acme-prod", QUOTA_NAME)
        .unwrap();
    assert_eq!(quota["spec"]["hard"], json!(tightened));
    let owners = fake.field_owners(Resource::ResourceQuota, "acme-prod", QUOTA_NAME);
    assert!(!owners.contains_key("helm"), "{owners:?}");
    assert_eq!(
        owners[FIELD_MANAGER],
        ["spec.hard.cpu", "spec.hard.memory", "spec.hard.pods"]
            .map(String::from)
            .into()
    );

    // Helm's next upgrade without force is refused instead of undoing the enforcement.
    let refused = quotas
        .patch(QUOTA_NAME, &PatchParams::apply("helm"), &quota_apply("32"))
        .await
        .unwrap_err();
    match refused {
        kube::Error::Api(e) => {
            assert_eq!((e.code, e.reason.as_str()), (409, "Conflict"), "{e:?}");
            assert!(e.message.contains(FIELD_MANAGER), "{}", e.message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        fake.object(Resource::ResourceQuota, "acme-prod", QUOTA_NAME)
            .unwrap()["spec"]["hard"]["cpu"],
        "4"
    );
}

#[tokio::test]
async fn a_workload_deleted_between_observe_and_apply_is_reported_missing() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let prior = actuator.observe(&acme()).await.unwrap();
    let forward = diff(&prior, &prior.suspended());

    assert!(fake.delete_object(Resource::Deployment, "acme-prod", "web"));
    assert!(fake.delete_object(Resource::CronJob, "acme-prod", "report"));
    assert!(fake.delete_object(Resource::Namespace, "", "acme-dev"));
    let report = actuator.apply(&forward).await.unwrap();

    let mut missing = report.missing.clone();
    missing.sort();
    assert_eq!(
        missing,
        [
            "acme-dev: deployment web replicas=0",
            "acme-dev: label budgetd.io/suspended=true",
            "acme-dev: quota pods=0",
            "acme-prod: cronjob report suspend=true",
            "acme-prod: deployment web replicas=0",
        ]
    );
    // nothing was recreated, and the rest was applied
    assert!(fake
        .object(Resource::Deployment, "acme-prod", "web")
        .is_none());
    assert!(fake
        .object(Resource::CronJob, "acme-prod", "report")
        .is_none());
    assert!(fake.object(Resource::Namespace, "", "acme-dev").is_none());
    assert!(fake
        .object(Resource::ResourceQuota, "acme-dev", QUOTA_NAME)
        .is_none());
    assert_eq!(
        spec_field(&fake, Resource::StatefulSet, "acme-prod", "db", "replicas"),
        0
    );
    assert_eq!(
        spec_field(
            &fake,
            Resource::ResourceQuota,
            "acme-prod",
            QUOTA_NAME,
            "hard"
        )["pods"],
        "0"
    );
}

#[tokio::test]
async fn drift_is_overwritten_by_the_next_apply() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let prior = actuator.observe(&acme()).await.unwrap();
    let suspended = prior.suspended();
    actuator.apply(&diff(&prior, &suspended)).await.unwrap();

    fake.set_replicas_as("kubectl", Resource::Deployment, "acme-prod", "web", 5);
    let owners = fake.field_owners(Resource::Deployment, "acme-prod", "web");
    assert!(owners["kubectl"].contains("spec.replicas"), "{owners:?}");
    let drifted = actuator.observe(&acme()).await.unwrap();
    assert_ne!(drifted, suspended);

    actuator.apply(&diff(&drifted, &suspended)).await.unwrap();
    assert_eq!(
        spec_field(&fake, Resource::Deployment, "acme-prod", "web", "replicas"),
        0
    );
    let owners = fake.field_owners(Resource::Deployment, "acme-prod", "web");
    assert!(
        owners[FIELD_MANAGER].contains("spec.replicas"),
        "{owners:?}"
    );
}

#[tokio::test]
async fn injected_server_errors_and_conflicts_are_retried() {
    let fake = cluster().await;
    let recorder = Arc::new(Counters::default());
    let _guard = metrics::set_default_local_recorder(&*recorder);
    let actuator = actuator(&fake).await;
    let prior = actuator.observe(&acme()).await.unwrap();

    fake.clear_requests();
    fake.inject(Fault::next(2, 500).path_contains("acme-prod/deployments/web/scale"));
    fake.inject(
        Fault::next(1, 409)
            .method("PATCH")
            .path_contains("acme-prod/resourcequotas/"),
    );
    fake.inject(Fault::next(1, 429).path_contains("acme-prod/cronjobs/report"));
    let report = actuator
        .apply(&diff(&prior, &prior.suspended()))
        .await
        .unwrap();
    assert!(report.missing.is_empty());

    assert_eq!(
        spec_field(&fake, Resource::Deployment, "acme-prod", "web", "replicas"),
        0
    );
    assert_eq!(
        spec_field(&fake, Resource::CronJob, "acme-prod", "report", "suspend"),
        true
    );
    assert_eq!(
        spec_field(
            &fake,
            Resource::ResourceQuota,
            "acme-prod",
            QUOTA_NAME,
            "hard"
        )["pods"],
        "0"
    );
    let statuses = |part: &str| -> Vec<u16> {
        fake.requests()
            .iter()
            .filter(|r| r.path.contains(part))
            .map(|r| r.status)
            .collect()
    };
    assert_eq!(statuses("acme-prod/deployments/web/scale"), [500, 500, 200]);
    assert_eq!(statuses("acme-prod/resourcequotas/"), [409, 200]);
    assert_eq!(statuses("acme-dev/resourcequotas/"), [201]);
    assert_eq!(statuses("acme-prod/cronjobs/report"), [429, 200]);

    let count = |op: &str, outcome: &str| {
        recorder.get(
            "budgetd_kubernetes_requests_total",
            &[("op", op), ("outcome", outcome)],
        )
    };
    assert_eq!(count("scale", "server_error"), 2);
    assert_eq!(count("apply_quota", "conflict"), 1);
    assert_eq!(count("patch_cronjob", "throttled"), 1);
    assert_eq!(count("apply_quota", "ok"), 2);
    assert_eq!(count("list_namespaces", "ok"), 1);
}

#[tokio::test]
async fn a_persistent_server_error_ends_unavailable_after_max_attempts() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let prior = actuator.observe(&acme()).await.unwrap();

    fake.clear_requests();
    fake.inject(Fault::always(500).method("PATCH"));
    let error = actuator
        .apply(&diff(&prior, &prior.suspended()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            ClusterError::Unavailable {
                attempts: MAX_ATTEMPTS,
                ..
            }
        ),
        "{error:?}"
    );
    // the first change was tried MAX_ATTEMPTS times, then apply stopped
    let requests = fake.requests();
    assert_eq!(requests.len(), MAX_ATTEMPTS as usize, "{requests:?}");
    assert!(requests
        .iter()
        .all(|r| r.path == requests[0].path && r.status == 500));

    fake.clear_faults();
    fake.clear_requests();
    fake.inject(Fault::always(503).path_contains("/api/v1/namespaces"));
    let error = actuator.observe(&acme()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ClusterError::Unavailable {
                attempts: MAX_ATTEMPTS,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(fake.requests().len(), MAX_ATTEMPTS as usize);
}

#[tokio::test]
async fn a_refused_request_is_not_retried() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    fake.inject(Fault::next(1, 403).path_contains("/resourcequotas/"));

    let error = actuator.observe(&acme()).await.unwrap_err();
    assert!(matches!(error, ClusterError::Refused { .. }), "{error:?}");
    let quota_reads: Vec<u16> = fake
        .requests()
        .iter()
        .filter(|r| r.path.contains("/resourcequotas/"))
        .map(|r| r.status)
        .collect();
    assert_eq!(quota_reads, [403]);
}

#[tokio::test]
async fn other_tenants_namespaces_are_never_touched() {
    let fake = cluster().await;
    let actuator = actuator(&fake).await;
    let others = |fake: &FakeKube| {
        [
            fake.object(Resource::Namespace, "", "globex"),
            fake.object(Resource::ResourceQuota, "globex", QUOTA_NAME),
            fake.object(Resource::Deployment, "globex", "web"),
            fake.object(Resource::CronJob, "globex", "nightly"),
            fake.object(Resource::Namespace, "", "shared"),
            fake.object(Resource::Deployment, "shared", "web"),
        ]
    };
    let before = others(&fake);

    let prior = actuator.observe(&acme()).await.unwrap();
    let suspended = prior.suspended();
    actuator.apply(&diff(&prior, &suspended)).await.unwrap();
    actuator.apply(&diff(&suspended, &prior)).await.unwrap();

    assert_eq!(others(&fake), before);
    for r in fake.requests() {
        assert!(
            r.path == "/api/v1/namespaces" || r.path.contains("/namespaces/acme-"),
            "{} {}",
            r.method,
            r.path
        );
    }
}

#[tokio::test]
async fn a_silent_api_times_out() {
    // accepts connections (the kernel does) but never answers
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let mut settings = settings(&url);
    settings.request_timeout = Duration::from_millis(200);
    settings.max_attempts = 2;
    let actuator = KubernetesActuator::new(settings).await.unwrap();

    let error = actuator.observe(&acme()).await.unwrap_err();
    assert!(
        matches!(error, ClusterError::Timeout { timeout_ms: 200 }),
        "{error:?}"
    );
}

#[tokio::test]
async fn an_unreachable_api_is_unavailable_after_retries() {
    let fake = FakeKube::start().await;
    let url = fake.url();
    fake.shutdown().await;
    let actuator = KubernetesActuator::new(settings(&url)).await.unwrap();

    let error = actuator.observe(&acme()).await.unwrap_err();
    assert!(
        matches!(
            error,
            ClusterError::Unavailable {
                attempts: MAX_ATTEMPTS,
                ..
            }
        ),
        "{error:?}"
    );
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused() {
    let invalid = [
        settings("http://127.0.0.1:1").with_tenant_label("tenant,team"),
        settings("not a url"),
        KubernetesSettings {
            max_attempts: 0,
            ..settings("http://127.0.0.1:1")
        },
    ];
    for s in invalid {
        let result = KubernetesActuator::new(s.clone()).await;
        assert!(matches!(result, Err(ClusterError::Client(_))), "{s:?}");
    }
}
