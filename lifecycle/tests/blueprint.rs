//! The blueprint against the fake Kubernetes API over HTTP (a real `kube::Client`): templates,
//! provisioning, zero-write resync, drift repair, namespace removal, isolation, offboarding.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use ledger::tenant::{DataResidency, TenantId};
use lifecycle::blueprint::{
    Blueprint, BlueprintReconciler, ConvergeReport, Desired, ObjectRef, Provisioner,
    ProvisionerSettings, TenantSource, TenantSpec, ISOLATION_POLICY, QUOTA_NAME,
    QUOTA_PROFILE_ANNOTATION,
};
use lifecycle::{HandlerError, OutboxEvent, Reconciler};
use serde_json::{json, Value};
use testkit::fake_kube::{FakeKube, Fault, Outcome, RequestRecord, Resource, ResourceType};

fn settings() -> ProvisionerSettings {
    ProvisionerSettings {
        ingress_namespace: "ingress-nginx".to_owned(),
        namespace_role: "edit".to_owned(),
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    }
}

fn provisioner(fake: &FakeKube) -> Provisioner {
    let config = kube::Config::new(fake.url().parse().expect("the fake's URL"));
    let client = kube::Client::try_from(config).expect("a client");
    Provisioner::new(client, Arc::new(Blueprint::builtin()), settings()).expect("valid settings")
}

fn spec(tenant: &str, namespaces: &[&str]) -> TenantSpec {
    TenantSpec {
        tenant: TenantId::parse(tenant).unwrap(),
        namespaces: namespaces.iter().map(|n| (*n).to_owned()).collect(),
        owner_group: Some("team-acme".to_owned()),
        residency: DataResidency::parse("eu").unwrap(),
        quota: BTreeMap::from([
            ("cpu".to_owned(), "2".to_owned()),
            ("memory".to_owned(), "4Gi".to_owned()),
            ("pods".to_owned(), "20".to_owned()),
        ]),
        isolated: false,
    }
}

fn policies() -> ResourceType {
    ResourceType::new("networking.k8s.io/v1", "networkpolicies")
}
fn bindings() -> ResourceType {
    ResourceType::new("rbac.authorization.k8s.io/v1", "rolebindings")
}
fn limit_ranges() -> ResourceType {
    ResourceType::new("v1", "limitranges")
}
fn config_maps() -> ResourceType {
    ResourceType::new("v1", "configmaps")
}

fn r(kind: &str, namespace: &str, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    }
}

/// The blueprint's objects in one namespace.
fn objects_in(ns: &str, with_binding: bool) -> Vec<ObjectRef> {
    let mut out = vec![
        r("Namespace", "", ns),
        r("LimitRange", ns, "budgetd-defaults"),
        r("NetworkPolicy", ns, "budgetd-tenant-ingress"),
        r("ResourceQuota", ns, QUOTA_NAME),
    ];
    if with_binding {
        out.push(r("RoleBinding", ns, "budgetd-owners"));
    }
    out
}

fn sorted(mut refs: Vec<ObjectRef>) -> Vec<ObjectRef> {
    refs.sort();
    refs
}

/// The writes that changed something.
fn changes(log: &[RequestRecord]) -> Vec<&RequestRecord> {
    log.iter().filter(|r| r.changed()).collect()
}

fn labels(object: &Value) -> &Value {
    &object["metadata"]["labels"]
}

#[test]
fn template_errors_name_the_file_and_line() {
    let dir = std::env::temp_dir().join(format!("budgetd-blueprint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in lifecycle::blueprint::template::DEFAULT_BLUEPRINT {
        std::fs::write(dir.join(name), text).unwrap();
    }
    // not loaded: only *.yaml
    std::fs::write(dir.join("notes.yaml.example"), "{{nonsense}}").unwrap();
    let loaded = Blueprint::load_dir(&dir).unwrap();
    assert_eq!(
        loaded.templates().len(),
        Blueprint::builtin().templates().len()
    );

    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\n# second\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tenant}}-{{ownergroup}}\n";
    std::fs::write(dir.join("zz-extra.yaml"), bad).unwrap();
    let e = Blueprint::load_dir(&dir).unwrap_err();
    assert!(e.file.ends_with("zz-extra.yaml"), "{e}");
    assert_eq!(e.line, 10, "{e}");
    assert!(
        e.to_string().contains("unknown placeholder {{ownergroup}}"),
        "{e}"
    );

    let broken = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tenant}}\ndata:\n  a: [unclosed\n  b: c\n";
    std::fs::write(dir.join("zz-extra.yaml"), broken).unwrap();
    let e = Blueprint::load_dir(&dir).unwrap_err();
    assert!(
        e.file.ends_with("zz-extra.yaml") && e.message.contains("not valid YAML"),
        "{e}"
    );
    assert!((6..=7).contains(&e.line), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_quota_is_the_object_the_enforcer_tightens() {
    assert_eq!(QUOTA_NAME, enforcer::cluster::QUOTA_NAME);
    assert_eq!(
        lifecycle::blueprint::ENFORCER_FIELD_MANAGER,
        enforcer::cluster::FIELD_MANAGER
    );
    assert_ne!(
        lifecycle::blueprint::FIELD_MANAGER,
        enforcer::cluster::FIELD_MANAGER,
        "one manager would strip the blueprint's labels whenever the enforcer applies"
    );
    assert_eq!(
        lifecycle::blueprint::NAMESPACE_TENANT_LABEL,
        enforcer::kubernetes::DEFAULT_TENANT_LABEL
    );
}

#[tokio::test]
async fn first_converge_creates_the_blueprint_and_a_second_writes_nothing() {
    let fake = FakeKube::start().await;
    let p = provisioner(&fake);
    let acme = spec("acme", &["acme", "acme-batch"]);

    let report = p.converge(&acme).await.unwrap();
    let mut expected = objects_in("acme", true);
    expected.extend(objects_in("acme-batch", true));
    assert_eq!(sorted(report.created.clone()), sorted(expected));
    assert!(report.updated.is_empty() && report.deleted.is_empty());

    // every write was an apply by budgetd, each object created exactly once
    let log = fake.requests();
    let writes: Vec<&RequestRecord> = log.iter().filter(|r| r.method != "GET").collect();
    assert_eq!(writes.len(), 10);
    assert!(writes.iter().all(|w| w.method == "PATCH"
        && w.content_type.as_deref() == Some("application/apply-patch+yaml")
        && w.field_manager.as_deref() == Some("budgetd")
        && w.outcome == Some(Outcome::Created)));
    let paths: BTreeSet<&str> = writes.iter().map(|w| w.path.as_str()).collect();
    assert_eq!(paths.len(), writes.len(), "no object was written twice");

    let ns = fake.object(Resource::Namespace, "", "acme").unwrap();
    assert_eq!(
        labels(&ns),
        &json!({
            "tenant": "acme",
            "budgetd.io/residency": "eu",
            "app.kubernetes.io/managed-by": "budgetd",
            "budgetd.io/tenant": "acme",
        })
    );
    let quota = fake
        .object(Resource::ResourceQuota, "acme-batch", QUOTA_NAME)
        .unwrap();
    assert_eq!(
        quota["spec"]["hard"],
        json!({ "cpu": "2", "memory": "4Gi", "pods": "20" })
    );
    assert_eq!(labels(&quota)["budgetd.io/tenant"], "acme");
    let policy = fake
        .object(policies(), "acme", "budgetd-tenant-ingress")
        .unwrap();
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        policy["spec"]["ingress"][0]["from"],
        json!([
            { "namespaceSelector": { "matchLabels": { "tenant": "acme" } } },
            { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "ingress-nginx" } } },
        ])
    );
    let binding = fake.object(bindings(), "acme", "budgetd-owners").unwrap();
    assert_eq!(
        binding["subjects"],
        json!([{ "apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "team-acme" }])
    );
    assert_eq!(binding["roleRef"]["name"], "edit");
    assert_eq!(labels(&binding)["app.kubernetes.io/managed-by"], "budgetd");
    let limits = fake
        .object(limit_ranges(), "acme", "budgetd-defaults")
        .unwrap();
    assert_eq!(limits["spec"]["limits"][0]["defaultRequest"]["cpu"], "100m");

    fake.clear_requests();
    let again = p.converge(&acme).await.unwrap();
    assert_eq!(again, ConvergeReport::default());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert!(!fake.requests().is_empty());
}

#[tokio::test]
async fn a_tenant_without_owner_group_gets_no_role_binding() {
    let fake = FakeKube::start().await;
    let p = provisioner(&fake);
    let mut lone = spec("lone", &["lone"]);
    lone.owner_group = None;
    let report = p.converge(&lone).await.unwrap();
    assert_eq!(sorted(report.created), sorted(objects_in("lone", false)));
    assert!(fake.objects(bindings()).is_empty());
}

/// A TenantSource in memory that records what the reconciler told it.
#[derive(Default)]
struct Source {
    desired: Mutex<HashMap<String, Desired>>,
    calls: Mutex<Vec<String>>,
    drift: Mutex<Vec<ConvergeReport>>,
}

impl Source {
    fn set(&self, tenant: &str, desired: Desired) {
        self.desired
            .lock()
            .unwrap()
            .insert(tenant.to_owned(), desired);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl TenantSource for Source {
    async fn desired(&self, tenant: &TenantId) -> Result<Desired, HandlerError> {
        Ok(self
            .desired
            .lock()
            .unwrap()
            .get(tenant.as_str())
            .cloned()
            .unwrap_or(Desired::Absent))
    }
    async fn access_revoked(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("access_revoked {tenant}"));
        Ok(())
    }
    async fn resources_deleted(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("resources_deleted {tenant}"));
        Ok(())
    }
    async fn drift_repaired(
        &self,
        tenant: &TenantId,
        report: &ConvergeReport,
    ) -> Result<(), HandlerError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("drift_repaired {tenant}"));
        self.drift.lock().unwrap().push(report.clone());
        Ok(())
    }
}

fn event(id: i64, tenant: &str) -> OutboxEvent {
    OutboxEvent {
        id,
        aggregate_type: "tenant".to_owned(),
        aggregate_id: tenant.to_owned(),
        seq: id,
        event_type: "tenant.updated".to_owned(),
        payload: json!({}),
        created_at: chrono::Utc::now(),
    }
}

fn id(tenant: &str) -> TenantId {
    TenantId::parse(tenant).unwrap()
}

#[tokio::test]
async fn drift_is_repaired_and_reported_but_the_enforcers_tightening_is_not_drift() {
    let fake = FakeKube::start().await;
    let source = Arc::new(Source::default());
    let reconciler = BlueprintReconciler::new(provisioner(&fake), source.clone());
    source.set("acme", Desired::Provisioned(spec("acme", &["acme"])));
    reconciler.handle(&event(1, "acme")).await.unwrap();
    assert!(
        source.calls().is_empty(),
        "an event's changes are not drift"
    );

    // the enforcer tightens the quota (its own field manager, only the limits): not drift, and
    // the blueprint's labels and annotation stay (one shared manager would remove them)
    // the test's own client: its calls are not budgetd's (see testkit::kube_calls)
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.headers.push(testkit::fake_kube::fixture_header());
    let client = kube::Client::try_from(config).unwrap();
    let quotas: kube::Api<k8s_openapi::api::core::v1::ResourceQuota> =
        kube::Api::namespaced(client, "acme");
    let tightened = json!({ "apiVersion": "v1", "kind": "ResourceQuota", "metadata": { "name": QUOTA_NAME }, "spec": { "hard": { "cpu": "1", "memory": "2Gi", "pods": "0" } } });
    quotas
        .patch(
            QUOTA_NAME,
            &kube::api::PatchParams::apply(enforcer::cluster::FIELD_MANAGER).force(),
            &kube::api::Patch::Apply(&tightened),
        )
        .await
        .unwrap();
    fake.clear_requests();
    reconciler.converge(&id("acme")).await.unwrap();
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());
    assert!(source.calls().is_empty());
    let hard = |fake: &FakeKube| {
        fake.object(Resource::ResourceQuota, "acme", QUOTA_NAME)
            .unwrap()["spec"]["hard"]
            .clone()
    };
    assert_eq!(hard(&fake)["pods"], "0");
    let quota = fake
        .object(Resource::ResourceQuota, "acme", QUOTA_NAME)
        .unwrap();
    assert_eq!(labels(&quota)["app.kubernetes.io/managed-by"], "budgetd");
    assert!(quota["metadata"]["annotations"][QUOTA_PROFILE_ANNOTATION].is_string());

    // someone edits the quota and deletes the RoleBinding: repaired and reported
    fake.patch_as(
        "kubectl-edit",
        Resource::ResourceQuota,
        "acme",
        QUOTA_NAME,
        &json!({ "spec": { "hard": { "cpu": "64" } } }),
    );
    assert!(fake.delete_object(bindings(), "acme", "budgetd-owners"));
    fake.clear_requests();
    reconciler.converge(&id("acme")).await.unwrap();
    assert_eq!(source.calls(), ["drift_repaired acme"]);
    let drift = source.drift.lock().unwrap()[0].clone();
    assert_eq!(drift.created, [r("RoleBinding", "acme", "budgetd-owners")]);
    assert_eq!(drift.updated, [r("ResourceQuota", "acme", QUOTA_NAME)]);
    assert!(drift.deleted.is_empty());
    assert_eq!(
        hard(&fake),
        json!({ "cpu": "2", "memory": "2Gi", "pods": "0" }),
        "only the edited limit is repaired"
    );
    assert_eq!(changes(&fake.requests()).len(), 2);
    assert!(fake.object(bindings(), "acme", "budgetd-owners").is_some());

    // a new quota profile is applied whole
    let mut bigger = spec("acme", &["acme"]);
    bigger.quota.insert("cpu".to_owned(), "8".to_owned());
    source.set("acme", Desired::Provisioned(bigger));
    reconciler.handle(&event(2, "acme")).await.unwrap();
    assert_eq!(
        hard(&fake),
        json!({ "cpu": "8", "memory": "4Gi", "pods": "20" })
    );
}

#[tokio::test]
async fn a_removed_namespace_loses_exactly_the_owned_objects() {
    let fake = FakeKube::start().await;
    let p = provisioner(&fake);
    p.converge(&spec("acme", &["acme", "acme-old"]))
        .await
        .unwrap();
    p.converge(&spec("other", &["other"])).await.unwrap();
    // not budgetd's: a namespace labelled for the tenant by hand, a ConfigMap in a kept one
    fake.create_namespace("acme-manual", &[("tenant", "acme")]);
    fake.create_object(config_maps(), "acme", json!({ "kind": "ConfigMap", "metadata": { "name": "app", "labels": { "budgetd.io/tenant": "acme" } } }));

    fake.clear_requests();
    let report = p.converge(&spec("acme", &["acme"])).await.unwrap();
    assert_eq!(report.deleted, [r("Namespace", "", "acme-old")]);
    assert!(report.created.is_empty() && report.updated.is_empty());
    let log = fake.requests();
    let deletes: Vec<&RequestRecord> = log.iter().filter(|r| r.method == "DELETE").collect();
    assert_eq!(deletes.len(), 1);
    assert_eq!(deletes[0].path, "/api/v1/namespaces/acme-old");
    assert_eq!(changes(&log).len(), 1);

    assert!(fake.object(Resource::Namespace, "", "acme-old").is_none());
    assert!(fake
        .object(Resource::ResourceQuota, "acme-old", QUOTA_NAME)
        .is_none());
    assert!(fake
        .object(Resource::Namespace, "", "acme-manual")
        .is_some());
    assert!(fake.object(config_maps(), "acme", "app").is_some());
    assert!(fake.object(Resource::Namespace, "", "other").is_some());
    assert_eq!(fake.objects(bindings()).len(), 2);
}

#[tokio::test]
async fn isolate_then_release_changes_only_the_network_policies() {
    let fake = FakeKube::start().await;
    let p = provisioner(&fake);
    let mut acme = spec("acme", &["acme", "acme-batch"]);
    p.converge(&acme).await.unwrap();
    let before: Vec<Value> = [Resource::Namespace, Resource::ResourceQuota]
        .into_iter()
        .flat_map(|k| fake.objects(k))
        .chain(fake.objects(bindings()))
        .chain(fake.objects(limit_ranges()))
        .collect();
    let policy_names = |fake: &FakeKube| -> BTreeSet<String> {
        fake.objects(policies())
            .iter()
            .map(|p| {
                format!(
                    "{}/{}",
                    p["metadata"]["namespace"].as_str().unwrap(),
                    p["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    };

    acme.isolated = true;
    let isolated = p.converge(&acme).await.unwrap();
    assert_eq!(
        sorted(isolated.created),
        [
            r("NetworkPolicy", "acme", ISOLATION_POLICY),
            r("NetworkPolicy", "acme-batch", ISOLATION_POLICY)
        ]
    );
    assert_eq!(
        sorted(isolated.deleted),
        [
            r("NetworkPolicy", "acme", "budgetd-tenant-ingress"),
            r("NetworkPolicy", "acme-batch", "budgetd-tenant-ingress")
        ]
    );
    assert!(isolated.updated.is_empty());
    assert_eq!(
        policy_names(&fake),
        BTreeSet::from([
            "acme/budgetd-isolation".to_owned(),
            "acme-batch/budgetd-isolation".to_owned()
        ])
    );
    let policy = fake.object(policies(), "acme", ISOLATION_POLICY).unwrap();
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    assert!(policy["spec"].get("ingress").is_none());
    assert_eq!(
        policy["spec"]["egress"][0]["ports"],
        json!([{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }])
    );
    fake.clear_requests();
    assert_eq!(p.converge(&acme).await.unwrap(), ConvergeReport::default());
    assert!(fake.writes().is_empty());

    acme.isolated = false;
    let released = p.converge(&acme).await.unwrap();
    assert_eq!(
        sorted(released.deleted),
        [
            r("NetworkPolicy", "acme", ISOLATION_POLICY),
            r("NetworkPolicy", "acme-batch", ISOLATION_POLICY)
        ]
    );
    assert_eq!(released.created.len(), 2);
    assert_eq!(
        policy_names(&fake),
        BTreeSet::from([
            "acme/budgetd-tenant-ingress".to_owned(),
            "acme-batch/budgetd-tenant-ingress".to_owned()
        ])
    );
    let after: Vec<Value> = [Resource::Namespace, Resource::ResourceQuota]
        .into_iter()
        .flat_map(|k| fake.objects(k))
        .chain(fake.objects(bindings()))
        .chain(fake.objects(limit_ranges()))
        .collect();
    assert_eq!(
        before, after,
        "nothing but the network policies was touched"
    );
}

#[tokio::test]
async fn offboarding_revokes_access_then_deletes_everything_once_due() {
    let fake = FakeKube::start().await;
    let source = Arc::new(Source::default());
    let reconciler = BlueprintReconciler::new(provisioner(&fake), source.clone());
    let acme = spec("acme", &["acme", "acme-batch"]);
    source.set("acme", Desired::Provisioned(acme.clone()));
    source.set("other", Desired::Provisioned(spec("other", &["other"])));
    reconciler.handle(&event(1, "acme")).await.unwrap();
    reconciler.handle(&event(2, "other")).await.unwrap();

    // in the grace period: access goes, the namespaces stay
    source.set(
        "acme",
        Desired::Offboarding {
            spec: acme.clone(),
            access_revoked: false,
            delete_due: false,
        },
    );
    reconciler.handle(&event(3, "acme")).await.unwrap();
    assert_eq!(source.calls(), ["access_revoked acme"]);
    let bound: Vec<String> = fake
        .objects(bindings())
        .iter()
        .map(|b| b["metadata"]["namespace"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bound, ["other"]);
    assert!(fake.object(Resource::Namespace, "", "acme").is_some());
    // a replay writes nothing and reports nothing again
    source.set(
        "acme",
        Desired::Offboarding {
            spec: acme.clone(),
            access_revoked: true,
            delete_due: false,
        },
    );
    fake.clear_requests();
    reconciler.converge(&id("acme")).await.unwrap();
    assert!(fake.writes().is_empty());
    assert_eq!(source.calls(), ["access_revoked acme"]);

    // the grace period is over
    source.set(
        "acme",
        Desired::Offboarding {
            spec: acme.clone(),
            access_revoked: true,
            delete_due: true,
        },
    );
    reconciler.handle(&event(4, "acme")).await.unwrap();
    assert_eq!(
        source.calls(),
        ["access_revoked acme", "resources_deleted acme"]
    );
    for ns in ["acme", "acme-batch"] {
        assert!(fake.object(Resource::Namespace, "", ns).is_none());
        assert!(fake
            .object(Resource::ResourceQuota, ns, QUOTA_NAME)
            .is_none());
    }
    assert!(fake.object(Resource::Namespace, "", "other").is_some());
    assert!(fake
        .object(Resource::ResourceQuota, "other", QUOTA_NAME)
        .is_some());

    // offboarded: nothing remains and nothing is written
    source.set("acme", Desired::Offboarded);
    fake.clear_requests();
    reconciler.converge(&id("acme")).await.unwrap();
    reconciler.handle(&event(5, "acme")).await.unwrap();
    assert!(fake.writes().is_empty());
    assert_eq!(source.calls().len(), 2);
}

#[tokio::test]
async fn an_absent_tenant_other_aggregates_and_enforcement_events_cause_no_calls() {
    let fake = FakeKube::start().await;
    let source = Arc::new(Source::default());
    let reconciler = BlueprintReconciler::new(provisioner(&fake), source.clone());
    assert_eq!(reconciler.name(), "blueprint");
    reconciler.handle(&event(1, "ghost")).await.unwrap();
    reconciler.converge(&id("ghost")).await.unwrap();
    let mut other = event(2, "acme");
    other.aggregate_type = "price_book".to_owned();
    reconciler.handle(&other).await.unwrap();
    let mut enforcement = event(3, "acme");
    enforcement.event_type = "enforcement.action_applied".to_owned();
    reconciler.handle(&enforcement).await.unwrap();
    assert!(fake.requests().is_empty());
}

#[tokio::test]
async fn transient_failures_are_retried_and_refusals_are_not() {
    let fake = FakeKube::start().await;
    let p = provisioner(&fake);
    fake.inject(Fault::next(2, 503).method("PATCH"));
    let report = p.converge(&spec("acme", &["acme"])).await.unwrap();
    assert_eq!(report.created.len(), 5);
    let statuses: Vec<u16> = fake.writes().iter().map(|w| w.status).collect();
    assert_eq!(&statuses[..3], [503, 503, 201]);

    fake.inject(Fault::always(503).method("PATCH"));
    let mut changed = spec("acme", &["acme"]);
    changed.quota.insert("pods".to_owned(), "30".to_owned());
    fake.clear_requests();
    let e = p.converge(&changed).await.unwrap_err();
    assert_eq!(e.metric_label(), "unavailable");
    assert_eq!(fake.writes().len(), 3, "max_attempts");
    fake.clear_faults();

    fake.inject(Fault::next(1, 403).method("PATCH"));
    fake.clear_requests();
    let e = p.converge(&changed).await.unwrap_err();
    assert_eq!(e.metric_label(), "refused");
    assert_eq!(fake.writes().len(), 1);
}

#[tokio::test]
async fn start_up_builds_the_reconciler_from_the_lifecycle_settings() {
    use lifecycle::blueprint::{build_reconciler, runner_settings, RequestLimits, StartError};
    let fake = FakeKube::start().await;
    let client = || kube::Client::try_from(kube::Config::new(fake.url().parse().unwrap())).unwrap();
    let limits = RequestLimits {
        request_timeout: Duration::from_secs(5),
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(4),
    };
    let source: Arc<dyn TenantSource> = Arc::new(Source::default());
    let settings = ledger::config::LifecycleSection::default()
        .validate()
        .unwrap();
    assert!(runner_settings(&settings.reconciler).validate().is_ok());
    let reconciler = build_reconciler(&settings, limits, client(), source.clone()).unwrap();
    assert_eq!(reconciler.provisioner().blueprint().templates().len(), 5);

    let dir = std::env::temp_dir().join(format!("budgetd-blueprint-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tenant}}\n---\napiVersion: v1\nkind: ConfigMap\n").unwrap();
    let section = ledger::config::LifecycleSection {
        blueprint_dir: Some(dir.clone()),
        ..Default::default()
    };
    let settings = section.validate().unwrap();
    match build_reconciler(&settings, limits, client(), source) {
        Err(StartError::Template(e)) => {
            assert!(e.file.ends_with("a.yaml") && e.line == 6, "{e}");
            assert!(e.message.contains("metadata.name is missing"), "{e}");
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("a template without a name was accepted"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A resync reads the cluster once (`begin_resync`: one LIST per kind), converges each tenant
/// without another read and, with nothing drifted, without a write; drift found there is still
/// repaired and reported.
#[tokio::test]
async fn a_resync_reads_one_snapshot_and_writes_nothing_without_drift() {
    let fake = FakeKube::start().await;
    let source = Arc::new(Source::default());
    let reconciler = BlueprintReconciler::new(provisioner(&fake), source.clone());
    let tenants = ["acme", "globex", "initech"];
    for (i, tenant) in tenants.iter().enumerate() {
        source.set(tenant, Desired::Provisioned(spec(tenant, &[tenant])));
        reconciler
            .handle(&event(i as i64 + 1, tenant))
            .await
            .unwrap();
    }
    fake.clear_requests();
    reconciler.begin_resync().await.unwrap();
    let lists = fake.requests().len();
    for tenant in tenants {
        reconciler.converge(&id(tenant)).await.unwrap();
    }
    reconciler.end_resync().await;
    let log = fake.requests();
    assert_eq!(
        log.len(),
        lists,
        "converging read or wrote after the snapshot: {log:?}"
    );
    assert!(source.calls().is_empty(), "{:?}", source.calls());

    // someone deletes globex's RoleBinding: the next resync repairs and reports it
    fake.delete_object(bindings(), "globex", "budgetd-owners");
    reconciler.begin_resync().await.unwrap();
    for tenant in tenants {
        reconciler.converge(&id(tenant)).await.unwrap();
    }
    reconciler.end_resync().await;
    assert_eq!(source.calls(), ["drift_repaired globex"]);
    assert!(fake
        .object(bindings(), "globex", "budgetd-owners")
        .is_some());
}
