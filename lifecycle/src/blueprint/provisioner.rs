//! The provisioner: a tenant's desired objects (pure: [`Provisioner::plan`]) against what the
//! cluster holds, then server-side apply of exactly the objects that differ and deletion of
//! owned objects that must go. Unstructured objects by apiVersion/kind (`DynamicObject`), field
//! manager `budgetd`, every request with a deadline, bounded retries of transient answers
//! (409, 429, 5xx, timeouts, connection errors) and the metrics the enforcer's requests have
//! (`budgetd_kubernetes_requests_total{op,outcome}`,
//! `budgetd_kubernetes_request_duration_seconds{op}`).

use std::collections::hash_map::Entry;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use ledger::tenant::TenantId;
use serde_json::{json, Value};

use super::template::{Blueprint, Values};
use super::{
    ConvergeReport, ObjectRef, ProvisionError, ProvisionerSettings, TenantSpec,
    ENFORCER_FIELD_MANAGER, FIELD_MANAGER, ISOLATION_POLICY, MANAGED_BY, MANAGED_BY_LABEL,
    NAMESPACE_TENANT_LABEL, QUOTA_NAME, QUOTA_PROFILE_ANNOTATION, RESIDENCY_LABEL, TENANT_LABEL,
};

/// Kinds that are not namespaced (the provisioner does not use discovery; any other kind is
/// applied in the tenant namespace it was rendered for).
const CLUSTER_SCOPED: [&str; 16] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "Node",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "ClusterIssuer",
    "ClusterSecretStore",
    "ClusterExternalSecret",
];

fn namespaced(kind: &str) -> bool {
    !CLUSTER_SCOPED.contains(&kind)
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

/// One object the tenant should have (or, withheld, must not have).
#[derive(Debug, Clone)]
pub struct DesiredObject {
    pub api_version: String,
    pub reference: ObjectRef,
    pub body: Value,
}

impl DesiredObject {
    fn key(&self) -> Key {
        (
            self.api_version.clone(),
            self.reference.kind.clone(),
            self.reference.namespace.clone(),
            self.reference.name.clone(),
        )
    }
}

/// (apiVersion, kind, namespace, name).
type Key = (String, String, String, String);

fn namespace_key(name: &str) -> Key {
    (
        "v1".to_owned(),
        "Namespace".to_owned(),
        String::new(),
        name.to_owned(),
    )
}

/// What the cluster holds of one tenant: the objects looked at (by key) and the namespaces
/// carrying its ownership labels.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    objects: HashMap<Key, Value>,
    owned_namespaces: BTreeSet<String>,
}

/// Every budgetd-owned object of the blueprint's kinds, by tenant: one LIST per kind, for a
/// resync of many tenants without a request per object.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    tenants: HashMap<String, Observed>,
}

impl Snapshot {
    /// The tenants with at least one owned object.
    pub fn tenants(&self) -> usize {
        self.tenants.len()
    }
}

/// One change to make.
#[derive(Debug, Clone)]
pub enum Step {
    Apply {
        object: DesiredObject,
        create: bool,
    },
    Delete {
        api_version: String,
        reference: ObjectRef,
    },
}

/// What a deletion did, and what owned objects are still there (a namespace still
/// terminating, a failed delete).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteReport {
    pub deleted: Vec<ObjectRef>,
    pub remaining: Vec<ObjectRef>,
}

impl DeleteReport {
    /// Whether nothing owned remains.
    pub fn done(&self) -> bool {
        self.remaining.is_empty()
    }
}

/// The requests the provisioner makes, as the bounded `op` metric label.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    List,
    Apply,
    Delete,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "blueprint_get",
            Op::List => "blueprint_list",
            Op::Apply => "blueprint_apply",
            Op::Delete => "blueprint_delete",
        }
    }
}

/// Applies the blueprint to tenants through `kube::Client`.
#[derive(Clone)]
pub struct Provisioner {
    client: kube::Client,
    blueprint: Arc<Blueprint>,
    settings: ProvisionerSettings,
}

fn owner_selector(tenant: Option<&TenantId>) -> String {
    match tenant {
        // TenantId is a DNS-1123 label: nothing else gets into the selector.
        Some(tenant) => format!("{MANAGED_BY_LABEL}={MANAGED_BY},{TENANT_LABEL}={tenant}"),
        None => format!("{MANAGED_BY_LABEL}={MANAGED_BY}"),
    }
}

fn label<'a>(object: &'a Value, key: &str) -> Option<&'a str> {
    object["metadata"]["labels"][key].as_str()
}

/// Whether `object` carries the ownership labels of `tenant`.
fn owned_by(object: &Value, tenant: &TenantId) -> bool {
    label(object, MANAGED_BY_LABEL) == Some(MANAGED_BY)
        && label(object, TENANT_LABEL) == Some(tenant.as_str())
}

fn reference_of(object: &Value, kind: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        name: object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Whether `live` holds everything `desired` says (an empty map or list in `desired` also
/// matches a missing field: the API server may drop them; `null` asks for nothing).
fn contains(live: Option<&Value>, desired: &Value) -> bool {
    match (live, desired) {
        // nothing asked for
        (_, Value::Null) => true,
        (None, Value::Object(d)) => d.is_empty(),
        (None, Value::Array(d)) => d.is_empty(),
        (None, _) => false,
        (Some(Value::Object(l)), Value::Object(d)) => {
            d.iter().all(|(k, dv)| contains(l.get(k), dv))
        }
        (Some(Value::Array(l)), Value::Array(d)) => {
            l.len() == d.len() && l.iter().zip(d).all(|(lv, dv)| contains(Some(lv), dv))
        }
        (Some(l), d) => l == d,
    }
}

/// Whether `live` is what `desired` describes: its labels and annotations, and every other
/// field but `status`.
fn matches(live: &Value, desired: &Value) -> bool {
    let Some(fields) = desired.as_object() else {
        return false;
    };
    fields.iter().all(|(key, d)| match key.as_str() {
        "apiVersion" | "kind" | "status" => true,
        "metadata" => ["labels", "annotations"]
            .iter()
            .all(|field| contains(live["metadata"].get(*field), &d[*field])),
        _ => contains(live.get(key), d),
    })
}

/// The quota resources a field manager other than budgetd's two owns (someone edited them).
fn foreign_quota_fields(live: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for entry in live["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if matches!(
            entry["manager"].as_str(),
            Some(FIELD_MANAGER | ENFORCER_FIELD_MANAGER)
        ) {
            continue;
        }
        if let Some(hard) = entry["fieldsV1"]["f:spec"]["f:hard"].as_object() {
            out.extend(
                hard.keys()
                    .filter_map(|k| k.strip_prefix("f:"))
                    .map(str::to_owned),
            );
        }
    }
    out
}

/// The quota as it should be applied given the live one. The enforcer tightens and restores
/// `budgetd-quota`'s limits (as [`ENFORCER_FIELD_MANAGER`]): while the profile is the one last
/// applied (the annotation says so), a limit budgetd or the enforcer owns keeps its live value;
/// a limit someone else changed, a missing limit or a changed profile gets the profile's value.
fn effective_quota(desired: &DesiredObject, live: &Value) -> DesiredObject {
    let mut effective = desired.clone();
    let annotation = |v: &Value| v["metadata"]["annotations"][QUOTA_PROFILE_ANNOTATION].clone();
    if annotation(live) != annotation(&desired.body) {
        return effective;
    }
    let foreign = foreign_quota_fields(live);
    if let Some(hard) = effective.body["spec"]["hard"].as_object_mut() {
        for (resource, value) in hard.iter_mut() {
            match live["spec"]["hard"].get(resource) {
                Some(live_value) if !foreign.contains(resource) => *value = live_value.clone(),
                _ => {}
            }
        }
    }
    effective
}

/// The built-in incident-isolation policy: no ingress, egress only to DNS in kube-system.
fn isolation_policy(tenant: &TenantId, namespace: &str) -> DesiredObject {
    let body = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": ISOLATION_POLICY,
            "namespace": namespace,
            "labels": { MANAGED_BY_LABEL: MANAGED_BY, TENANT_LABEL: tenant.as_str() },
        },
        "spec": {
            "podSelector": {},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "kube-system" } },
                }],
                "ports": [
                    { "protocol": "UDP", "port": 53 },
                    { "protocol": "TCP", "port": 53 },
                ],
            }],
        },
    });
    DesiredObject {
        api_version: "networking.k8s.io/v1".to_owned(),
        reference: ObjectRef {
            kind: "NetworkPolicy".to_owned(),
            namespace: namespace.to_owned(),
            name: ISOLATION_POLICY.to_owned(),
        },
        body,
    }
}

fn is_network_policy(object: &DesiredObject) -> bool {
    object.reference.kind == "NetworkPolicy" && object.api_version == "networking.k8s.io/v1"
}

impl Provisioner {
    pub fn new(
        client: kube::Client,
        blueprint: Arc<Blueprint>,
        settings: ProvisionerSettings,
    ) -> Result<Provisioner, ProvisionError> {
        let invalid = |what: &str| Err(ProvisionError::Client(format!("settings: {what}")));
        if settings.request_timeout.is_zero() {
            return invalid("request_timeout must be positive");
        }
        if settings.max_attempts == 0 {
            return invalid("max_attempts must be at least 1");
        }
        if settings.max_backoff < settings.initial_backoff {
            return invalid("max_backoff must not be less than initial_backoff");
        }
        Ok(Provisioner {
            client,
            blueprint,
            settings,
        })
    }

    pub fn blueprint(&self) -> &Blueprint {
        &self.blueprint
    }

    /// The objects `spec` should have, namespaces first, and the owned objects it must not
    /// have: the isolation policy unless isolated; while isolated, the blueprint's own
    /// NetworkPolicies too (policies add up: an allowing one would open the isolation).
    pub fn desired(&self, spec: &TenantSpec) -> (Vec<DesiredObject>, Vec<DesiredObject>) {
        let tenant = spec.tenant.as_str();
        let quota_annotation = spec
            .quota
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut objects: Vec<DesiredObject> = Vec::new();
        let mut seen = BTreeSet::new();
        for namespace in &spec.namespaces {
            let values = Values {
                tenant,
                namespace,
                owner_group: spec.owner_group.as_deref(),
                residency: spec.residency.as_str(),
                ingress_namespace: &self.settings.ingress_namespace,
                namespace_role: &self.settings.namespace_role,
                quota: &spec.quota,
            };
            for template in self.blueprint.templates() {
                let Some(mut body) = template.render(&values) else {
                    continue;
                };
                let kind = template.kind.clone();
                let scoped = namespaced(&kind);
                let metadata = &mut body["metadata"];
                if scoped {
                    metadata["namespace"] = json!(namespace);
                }
                if !metadata["labels"].is_object() {
                    metadata["labels"] = json!({});
                }
                let labels = &mut metadata["labels"];
                labels[MANAGED_BY_LABEL] = json!(MANAGED_BY);
                labels[TENANT_LABEL] = json!(tenant);
                if kind == "Namespace" && template.api_version == "v1" {
                    labels[NAMESPACE_TENANT_LABEL] = json!(tenant);
                    labels[RESIDENCY_LABEL] = json!(spec.residency.as_str());
                }
                let name = metadata["name"].as_str().unwrap_or_default().to_owned();
                if kind == "ResourceQuota" && name == QUOTA_NAME {
                    metadata["annotations"][QUOTA_PROFILE_ANNOTATION] = json!(quota_annotation);
                }
                let object = DesiredObject {
                    api_version: template.api_version.clone(),
                    reference: ObjectRef {
                        kind,
                        namespace: if scoped {
                            namespace.clone()
                        } else {
                            String::new()
                        },
                        name,
                    },
                    body,
                };
                if seen.insert(object.key()) {
                    objects.push(object);
                }
            }
        }
        // cluster-scoped first: the namespaces must exist before what goes in them
        objects.sort_by_key(|o| !o.reference.namespace.is_empty());
        let isolation = spec
            .namespaces
            .iter()
            .map(|ns| isolation_policy(&spec.tenant, ns));
        if spec.isolated {
            let (policies, mut rest): (Vec<_>, Vec<_>) =
                objects.into_iter().partition(is_network_policy);
            rest.extend(isolation);
            (rest, policies)
        } else {
            (objects, isolation.collect())
        }
    }

    /// The steps that bring the cluster from `observed` to `spec` (pure).
    pub fn plan(&self, spec: &TenantSpec, observed: &Observed) -> Vec<Step> {
        let (desired, withheld) = self.desired(spec);
        let mut steps = Vec::new();
        for ns in &observed.owned_namespaces {
            if !spec.namespaces.contains(ns) {
                steps.push(Step::Delete {
                    api_version: "v1".to_owned(),
                    reference: ObjectRef {
                        kind: "Namespace".to_owned(),
                        namespace: String::new(),
                        name: ns.clone(),
                    },
                });
            }
        }
        for object in withheld {
            if observed
                .objects
                .get(&object.key())
                .is_some_and(|live| owned_by(live, &spec.tenant))
            {
                steps.push(Step::Delete {
                    api_version: object.api_version,
                    reference: object.reference,
                });
            }
        }
        for object in desired {
            match observed.objects.get(&object.key()) {
                None => steps.push(Step::Apply {
                    object,
                    create: true,
                }),
                Some(live) => {
                    let object = if object.reference.kind == "ResourceQuota"
                        && object.reference.name == QUOTA_NAME
                    {
                        effective_quota(&object, live)
                    } else {
                        object
                    };
                    if !matches(live, &object.body) {
                        steps.push(Step::Apply {
                            object,
                            create: false,
                        });
                    }
                }
            }
        }
        steps
    }

    /// Brings `spec`'s objects in line: reads the tenant's owned namespaces (one LIST) and each
    /// object it should or must not have (one GET each), then writes only what differs.
    pub async fn converge(&self, spec: &TenantSpec) -> Result<ConvergeReport, ProvisionError> {
        let observed = self.observe(spec).await?;
        self.execute(self.plan(spec, &observed)).await
    }

    /// As [`Provisioner::converge`], against a snapshot taken before (no reads). An object
    /// changed since the snapshot is applied again, which is harmless.
    pub async fn converge_in(
        &self,
        spec: &TenantSpec,
        snapshot: &Snapshot,
    ) -> Result<ConvergeReport, ProvisionError> {
        let empty = Observed::default();
        let observed = snapshot.tenants.get(spec.tenant.as_str()).unwrap_or(&empty);
        self.execute(self.plan(spec, observed)).await
    }

    async fn observe(&self, spec: &TenantSpec) -> Result<Observed, ProvisionError> {
        let mut observed = Observed::default();
        let namespaces = api_resource("v1", "Namespace");
        for ns in self.list(&namespaces, Some(&spec.tenant)).await? {
            if let Some(name) = ns["metadata"]["name"].as_str() {
                observed.owned_namespaces.insert(name.to_owned());
            }
        }
        let (desired, withheld) = self.desired(spec);
        let mut missing = BTreeSet::new();
        for object in desired.iter().chain(&withheld) {
            let r = &object.reference;
            // nothing is in a namespace that is not there
            if !r.namespace.is_empty() && !observed.owned_namespaces.contains(&r.namespace) {
                if missing.contains(&r.namespace) {
                    continue;
                }
                if let Entry::Vacant(slot) = observed.objects.entry(namespace_key(&r.namespace)) {
                    let api = self.api("v1", "Namespace", "");
                    let target = format!("Namespace/{}", r.namespace);
                    match self
                        .call(Op::Get, &target, || api.get(&r.namespace))
                        .await?
                    {
                        Some(live) => {
                            slot.insert(to_value(live)?);
                        }
                        None => {
                            missing.insert(r.namespace.clone());
                            continue;
                        }
                    }
                }
            }
            if observed.objects.contains_key(&object.key()) {
                continue;
            }
            let api = self.api(&object.api_version, &r.kind, &r.namespace);
            let target = r.to_string();
            match self.call(Op::Get, &target, || api.get(&r.name)).await? {
                Some(live) => {
                    observed.objects.insert(object.key(), to_value(live)?);
                }
                None if r.kind == "Namespace" && object.api_version == "v1" => {
                    missing.insert(r.name.clone());
                }
                None => {}
            }
        }
        Ok(observed)
    }

    /// Every budgetd-owned object of the blueprint's kinds (and isolation policies), one LIST
    /// per kind.
    pub async fn snapshot(&self) -> Result<Snapshot, ProvisionError> {
        let mut kinds = self.blueprint.kinds();
        kinds.insert((
            "networking.k8s.io/v1".to_owned(),
            "NetworkPolicy".to_owned(),
        ));
        kinds.insert(("v1".to_owned(), "Namespace".to_owned()));
        let mut snapshot = Snapshot::default();
        for (api_version, kind) in kinds {
            let ar = api_resource(&api_version, &kind);
            for object in self.list(&ar, None).await? {
                let Some(tenant) = label(&object, TENANT_LABEL) else {
                    continue;
                };
                let observed = snapshot.tenants.entry(tenant.to_owned()).or_default();
                let r = reference_of(&object, &kind);
                if kind == "Namespace" && api_version == "v1" {
                    observed.owned_namespaces.insert(r.name.clone());
                }
                observed.objects.insert(
                    (api_version.clone(), kind.clone(), r.namespace, r.name),
                    object,
                );
            }
        }
        Ok(snapshot)
    }

    async fn execute(&self, steps: Vec<Step>) -> Result<ConvergeReport, ProvisionError> {
        let mut report = ConvergeReport::default();
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for step in steps {
            match step {
                Step::Apply { object, create } => {
                    let r = &object.reference;
                    let api = self.api(&object.api_version, &r.kind, &r.namespace);
                    let patch = Patch::Apply(&object.body);
                    let target = r.to_string();
                    let applied = self
                        .call(Op::Apply, &target, || api.patch(&r.name, &params, &patch))
                        .await?;
                    if applied.is_none() {
                        // the namespace is gone (deleted meanwhile): the next converge creates it
                        return Err(ProvisionError::Unavailable {
                            attempts: 1,
                            message: format!("{target}: its namespace does not exist"),
                        });
                    }
                    tracing::info!(object = %target, create, "blueprint object applied");
                    if create {
                        report.created.push(object.reference);
                    } else {
                        report.updated.push(object.reference);
                    }
                }
                Step::Delete {
                    api_version,
                    reference,
                } => {
                    if self.delete(&api_version, &reference).await? {
                        report.deleted.push(reference);
                    }
                }
            }
        }
        Ok(report)
    }

    /// Deletes one object; whether it was there.
    async fn delete(&self, api_version: &str, r: &ObjectRef) -> Result<bool, ProvisionError> {
        let api = self.api(api_version, &r.kind, &r.namespace);
        let params = DeleteParams::background();
        let target = r.to_string();
        let deleted = self
            .call(Op::Delete, &target, || api.delete(&r.name, &params))
            .await?
            .is_some();
        if deleted {
            tracing::info!(object = %target, "blueprint object deleted");
        }
        Ok(deleted)
    }

    /// Deletes the tenant's owned RoleBindings (and ClusterRoleBindings of the blueprint) in
    /// every namespace.
    pub async fn revoke_access(&self, tenant: &TenantId) -> Result<Vec<ObjectRef>, ProvisionError> {
        let mut kinds: BTreeSet<(String, String)> = self
            .blueprint
            .kinds()
            .into_iter()
            .filter(|(_, kind)| kind.ends_with("RoleBinding"))
            .collect();
        kinds.insert((
            "rbac.authorization.k8s.io/v1".to_owned(),
            "RoleBinding".to_owned(),
        ));
        let mut deleted = Vec::new();
        for (api_version, kind) in kinds {
            let ar = api_resource(&api_version, &kind);
            for object in self.list(&ar, Some(tenant)).await? {
                let r = reference_of(&object, &kind);
                if self.delete(&api_version, &r).await? {
                    deleted.push(r);
                }
            }
        }
        Ok(deleted)
    }

    /// Deletes every owned object of the tenant: its namespaces (with everything in them) and
    /// its cluster-scoped objects; then lists again and reports what remains.
    pub async fn delete_all(&self, tenant: &TenantId) -> Result<DeleteReport, ProvisionError> {
        let mut kinds: BTreeSet<(String, String)> = self
            .blueprint
            .kinds()
            .into_iter()
            .filter(|(_, kind)| !namespaced(kind))
            .collect();
        kinds.insert(("v1".to_owned(), "Namespace".to_owned()));
        let mut report = DeleteReport::default();
        for (api_version, kind) in &kinds {
            let ar = api_resource(api_version, kind);
            for object in self.list(&ar, Some(tenant)).await? {
                let r = reference_of(&object, kind);
                if self.delete(api_version, &r).await? {
                    report.deleted.push(r);
                }
            }
        }
        for (api_version, kind) in &kinds {
            let ar = api_resource(api_version, kind);
            for object in self.list(&ar, Some(tenant)).await? {
                report.remaining.push(reference_of(&object, kind));
            }
        }
        Ok(report)
    }

    fn api(&self, api_version: &str, kind: &str, namespace: &str) -> Api<DynamicObject> {
        let ar = api_resource(api_version, kind);
        if namespace.is_empty() {
            Api::all_with(self.client.clone(), &ar)
        } else {
            Api::namespaced_with(self.client.clone(), namespace, &ar)
        }
    }

    /// The owned objects of a kind (all namespaces), of one tenant or of all.
    async fn list(
        &self,
        ar: &ApiResource,
        tenant: Option<&TenantId>,
    ) -> Result<Vec<Value>, ProvisionError> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), ar);
        let selector = owner_selector(tenant);
        let params = ListParams::default().labels(&selector);
        let target = format!("{}?{selector}", ar.plural);
        let listed = self.call(Op::List, &target, || api.list(&params)).await?;
        listed
            .map(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .map(to_value)
            .collect()
    }

    /// Runs one request with a deadline and retries; `Ok(None)` is a 404.
    async fn call<T, F, Fut>(
        &self,
        op: Op,
        target: &str,
        request: F,
    ) -> Result<Option<T>, ProvisionError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let timeout = self.settings.request_timeout;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let mut attempt = 1;
        loop {
            let started = Instant::now();
            let result = tokio::time::timeout(timeout, request()).await;
            metrics::histogram!("budgetd_kubernetes_request_duration_seconds", "op" => op.as_str())
                .record(started.elapsed().as_secs_f64());
            let (outcome, error) = match result {
                Ok(Ok(value)) => {
                    count(op, "ok");
                    return Ok(Some(value));
                }
                Err(_) => ("timeout", ProvisionError::Timeout { timeout_ms }),
                Ok(Err(kube::Error::Api(response))) => {
                    let message = format!(
                        "{} {}: {}",
                        response.code, response.reason, response.message
                    );
                    match response.code {
                        404 => {
                            count(op, "not_found");
                            return Ok(None);
                        }
                        409 => ("conflict", unavailable(attempt, message)),
                        429 => ("throttled", unavailable(attempt, message)),
                        code if code >= 500 => ("server_error", unavailable(attempt, message)),
                        _ => {
                            count(op, "refused");
                            let error = ProvisionError::Refused {
                                what: format!("{} {target}", op.as_str()),
                                message,
                            };
                            tracing::warn!(op = op.as_str(), target, %error, "kubernetes request refused");
                            return Err(error);
                        }
                    }
                }
                Ok(Err(e @ (kube::Error::HyperError(_) | kube::Error::Service(_)))) => {
                    ("unreachable", unavailable(attempt, e.to_string()))
                }
                Ok(Err(other)) => {
                    count(op, "client");
                    return Err(ProvisionError::Client(other.to_string()));
                }
            };
            count(op, outcome);
            if attempt >= self.settings.max_attempts {
                tracing::warn!(op = op.as_str(), target, attempt, %error, "kubernetes request failed; giving up");
                return Err(error);
            }
            let delay = self.backoff(attempt);
            tracing::debug!(op = op.as_str(), target, attempt, ?delay, %error, "kubernetes request failed; retrying");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The delay before retry number `retry` (1 for the first): between half and all of the
    /// capped exponential delay.
    fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .settings
            .initial_backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.settings.max_backoff);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        exp / 2 + exp.mul_f64(f64::from(nanos % 1000) / 2000.0)
    }
}

fn unavailable(attempts: u32, message: String) -> ProvisionError {
    ProvisionError::Unavailable { attempts, message }
}

fn count(op: Op, outcome: &'static str) {
    metrics::counter!("budgetd_kubernetes_requests_total", "op" => op.as_str(), "outcome" => outcome)
        .increment(1);
}

fn to_value(object: DynamicObject) -> Result<Value, ProvisionError> {
    serde_json::to_value(object)
        .map_err(|e| ProvisionError::Client(format!("an object that is not JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containment_ignores_what_the_server_adds() {
        let desired = json!({ "spec": { "podSelector": {}, "ports": [{ "port": 53 }] } });
        let live =
            json!({ "spec": { "ports": [{ "port": 53, "protocol": "TCP" }] }, "status": {} });
        assert!(contains(Some(&live), &desired));
        assert!(matches(
            &live,
            &json!({ "metadata": { "name": "x" }, "spec": {} })
        ));
        let fewer = json!({ "spec": { "ports": [] } });
        assert!(!contains(Some(&fewer), &desired));
        let other = json!({ "spec": { "ports": [{ "port": 54 }] } });
        assert!(!contains(Some(&other), &desired));
    }

    #[test]
    fn the_quota_keeps_limits_budgetd_owns_and_repairs_edited_ones() {
        let desired = DesiredObject {
            api_version: "v1".to_owned(),
            reference: ObjectRef {
                kind: "ResourceQuota".to_owned(),
                namespace: "a".to_owned(),
                name: QUOTA_NAME.to_owned(),
            },
            body: json!({ "metadata": { "annotations": { QUOTA_PROFILE_ANNOTATION: "cpu=2,pods=20" } }, "spec": { "hard": { "cpu": "2", "pods": "20" } } }),
        };
        // tightened by the enforcer (its own manager): kept
        let tightened = json!({
            "metadata": { "annotations": { QUOTA_PROFILE_ANNOTATION: "cpu=2,pods=20" }, "managedFields": [
                { "manager": "budgetd", "fieldsV1": { "f:metadata": { "f:annotations": { "f:budgetd.io/quota-profile": {} } } } },
                { "manager": "budgetd-enforcer", "fieldsV1": { "f:spec": { "f:hard": { "f:cpu": {}, "f:pods": {} } } } },
            ] },
            "spec": { "hard": { "cpu": "1", "pods": "0" } },
        });
        let e = effective_quota(&desired, &tightened);
        assert_eq!(e.body["spec"]["hard"], json!({ "cpu": "1", "pods": "0" }));
        assert!(matches(&tightened, &e.body));
        // edited by someone else: repaired
        let mut edited = tightened.clone();
        edited["metadata"]["managedFields"] = json!([
            { "manager": "budgetd-enforcer", "fieldsV1": { "f:spec": { "f:hard": { "f:pods": {} } } } },
            { "manager": "kubectl-edit", "fieldsV1": { "f:spec": { "f:hard": { "f:cpu": {} } } } },
        ]);
        let e = effective_quota(&desired, &edited);
        assert_eq!(e.body["spec"]["hard"], json!({ "cpu": "2", "pods": "0" }));
        assert!(!matches(&edited, &e.body));
        // a new profile: applied
        let mut old = tightened.clone();
        old["metadata"]["annotations"][QUOTA_PROFILE_ANNOTATION] = json!("cpu=1,pods=20");
        let e = effective_quota(&desired, &old);
        assert_eq!(e.body["spec"]["hard"], json!({ "cpu": "2", "pods": "20" }));
    }
}
