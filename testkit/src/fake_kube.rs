//! A stateful fake Kubernetes API server for the actuator's and the blueprint's tests: the real
//! `kube::Client` talks HTTP to it on 127.0.0.1. It stores objects of any kind (any
//! group/version/plural, namespaced under `.../namespaces/<ns>/<plural>` or cluster-scoped under
//! `.../<plural>`) as JSON, with resource versions, label-selector lists, merge patches,
//! server-side apply with field ownership of the top-level fields other than `metadata` and
//! `status` (`spec`, `subjects`, `roleRef`, ...), the `scale` subresource of Deployments and
//! StatefulSets, Kubernetes `Status` errors, injected faults and a log of every call (method,
//! path, field manager, status and what it did to the object: created, updated, unchanged,
//! deleted). A write that leaves an object as it was is `unchanged` and keeps its resource
//! version, as the API server does.
//!
//! With `BUDGETD_TEST_KUBE_CALLS_DIR` set, every request is also appended there as the RBAC
//! checks it needs ([`crate::kube_calls`]), for the ClusterRole check after the whole suite;
//! a test's own requests (fixtures, the deploy test's applies) carry [`fixture_header`] and are
//! left out.
//!
//! Not modelled: discovery (clients name the plural and scope themselves), watches, strategic
//! merge and JSON patches, YAML bodies other than JSON, field ownership of labels and
//! annotations (an apply merges them in and never removes one), list-map merge keys (an array
//! is one field), validation and defaulting beyond `replicas`/`suspend`, controllers (nothing
//! converges `status`), finalizers and graceful deletion (a deleted namespace and its objects
//! are gone at once).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use enforcer::cluster::QUOTA_NAME;

use crate::kube_calls::{self, Call};

/// The field manager of objects created through the seeding methods.
pub const SEED_MANAGER: &str = "kubectl";
/// The field manager of writes that name none.
pub const UNKNOWN_MANAGER: &str = "unknown";

/// The header a test's own client sends, so that its requests are not recorded as budgetd's.
pub const FIXTURE_HEADER: &str = "x-budgetd-test-fixture";

/// [`FIXTURE_HEADER`] for `kube::Config::headers` of a client a test sets up the cluster with.
pub fn fixture_header() -> (axum::http::HeaderName, axum::http::HeaderValue) {
    (
        axum::http::HeaderName::from_static(FIXTURE_HEADER),
        axum::http::HeaderValue::from_static("true"),
    )
}

/// The built-in kinds the fake's seeding helpers create (any other kind is stored too; name it
/// with a [`ResourceType`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    Namespace,
    ResourceQuota,
    Deployment,
    StatefulSet,
    CronJob,
    HorizontalPodAutoscaler,
}

impl Resource {
    const ALL: [Resource; 6] = [
        Resource::Namespace,
        Resource::ResourceQuota,
        Resource::Deployment,
        Resource::StatefulSet,
        Resource::CronJob,
        Resource::HorizontalPodAutoscaler,
    ];

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Namespace => "namespaces",
            Resource::ResourceQuota => "resourcequotas",
            Resource::Deployment => "deployments",
            Resource::StatefulSet => "statefulsets",
            Resource::CronJob => "cronjobs",
            Resource::HorizontalPodAutoscaler => "horizontalpodautoscalers",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Namespace => "Namespace",
            Resource::ResourceQuota => "ResourceQuota",
            Resource::Deployment => "Deployment",
            Resource::StatefulSet => "StatefulSet",
            Resource::CronJob => "CronJob",
            Resource::HorizontalPodAutoscaler => "HorizontalPodAutoscaler",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Resource::Namespace | Resource::ResourceQuota => "v1",
            Resource::Deployment | Resource::StatefulSet => "apps/v1",
            Resource::CronJob => "batch/v1",
            Resource::HorizontalPodAutoscaler => "autoscaling/v2",
        }
    }
}

/// A resource type the fake stores: `apiVersion` (`v1`, `networking.k8s.io/v1`) and plural.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceType {
    pub api_version: String,
    pub plural: String,
}

impl ResourceType {
    pub fn new(api_version: &str, plural: &str) -> ResourceType {
        ResourceType {
            api_version: api_version.to_owned(),
            plural: plural.to_owned(),
        }
    }

    fn is_namespace(&self) -> bool {
        self.api_version == "v1" && self.plural == "namespaces"
    }

    fn has_scale(&self) -> bool {
        self.api_version == "apps/v1"
            && matches!(self.plural.as_str(), "deployments" | "statefulsets")
    }
}

impl From<Resource> for ResourceType {
    fn from(r: Resource) -> ResourceType {
        ResourceType::new(r.api_version(), r.plural())
    }
}

impl From<&ResourceType> for ResourceType {
    fn from(r: &ResourceType) -> ResourceType {
        r.clone()
    }
}

/// What a served call did to the object it named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    /// A write that left the object as it was (its resource version did not move).
    Unchanged,
    Deleted,
}

/// One served request, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Without parameters (`application/apply-patch+yaml`).
    pub content_type: Option<String>,
    /// The `fieldManager` query parameter.
    pub field_manager: Option<String>,
    pub status: u16,
    /// What a successful write did (none for reads and refused calls).
    pub outcome: Option<Outcome>,
}

impl RequestRecord {
    /// Whether the call changed anything (created, updated or deleted an object).
    pub fn changed(&self) -> bool {
        matches!(
            self.outcome,
            Some(Outcome::Created | Outcome::Updated | Outcome::Deleted)
        )
    }
}

pub use crate::fault::Fault;

/// A Kubernetes API error, answered as a `Status` object.
#[derive(Debug, Clone, PartialEq)]
struct ApiError {
    code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn not_found(resource: &ResourceType, name: &str) -> ApiError {
        ApiError {
            details: Some(json!({ "name": name, "kind": resource.plural })),
            ..ApiError::new(
                404,
                "NotFound",
                format!("{} \"{name}\" not found", resource.plural),
            )
        }
    }

    fn stale(resource: &ResourceType, name: &str) -> ApiError {
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                resource.plural
            ),
        )
    }

    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "BadRequest", message)
    }

    fn injected(code: u16) -> ApiError {
        let reason = match code {
            403 => "Forbidden",
            409 => "Conflict",
            429 => "TooManyRequests",
            500 => "InternalError",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Unknown",
        };
        ApiError::new(code, reason, format!("injected fault ({code})"))
    }

    fn body(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(self.body())).into_response()
    }
}

type Key = (ResourceType, String, String);

/// The fields of an object (leaves under its top-level fields but `metadata` and `status`)
/// one field manager owns.
#[derive(Debug, Clone)]
struct Managed {
    manager: String,
    /// `Apply` or `Update`.
    operation: &'static str,
    fields: BTreeSet<Vec<String>>,
}

#[derive(Default)]
struct Cluster {
    objects: BTreeMap<Key, Value>,
    managed: BTreeMap<Key, Vec<Managed>>,
    /// The kind of each resource type, learned from the first object written.
    kinds: BTreeMap<ResourceType, String>,
    /// What the call being served did.
    outcome: Option<Outcome>,
    resource_version: u64,
    uids: u64,
    faults: Vec<Fault>,
    requests: Vec<RequestRecord>,
    /// Where budgetd's calls are recorded (`BUDGETD_TEST_KUBE_CALLS_DIR`).
    calls_dir: Option<std::path::PathBuf>,
}

type Shared = Arc<Mutex<Cluster>>;

/// The running fake. Stops serving when dropped.
pub struct FakeKube {
    cluster: Shared,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl FakeKube {
    /// Binds 127.0.0.1 on a free port and serves in a task of the current runtime.
    pub async fn start() -> FakeKube {
        Self::start_on("127.0.0.1:0".parse().expect("an address"))
            .await
            .expect("bind the fake Kubernetes API")
    }

    /// Serves on `listen` (README command 1's demo cluster uses a fixed port).
    pub async fn start_on(listen: std::net::SocketAddr) -> std::io::Result<FakeKube> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr().expect("local address");
        let cluster = Shared::new(Mutex::new(Cluster {
            kinds: Resource::ALL
                .into_iter()
                .map(|r| (r.into(), r.kind().to_owned()))
                .collect(),
            calls_dir: std::env::var_os(kube_calls::CALLS_DIR_ENV)
                .filter(|d| !d.is_empty())
                .map(Into::into),
            ..Cluster::default()
        }));
        let app = Router::new().fallback(serve).with_state(cluster.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(FakeKube {
            cluster,
            addr,
            stop: Some(stop),
            task: Some(task),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cluster> {
        self.cluster.lock().expect("fake cluster lock")
    }

    pub fn create_namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: Map<String, Value> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.seed(
            Resource::Namespace,
            "",
            json!({
                "metadata": { "name": name, "labels": labels },
                "spec": { "finalizers": ["kubernetes"] },
                "status": { "phase": "Active" },
            }),
        );
    }

    /// Creates `budgetd-quota` (as [`SEED_MANAGER`]).
    pub fn create_quota(&self, namespace: &str, hard: &[(&str, &str)]) {
        let hard: Map<String, Value> = hard
            .iter()
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        self.seed(
            Resource::ResourceQuota,
            namespace,
            json!({ "metadata": { "name": QUOTA_NAME }, "spec": { "hard": hard } }),
        );
    }

    pub fn create_deployment(&self, namespace: &str, name: &str, replicas: i32) {
        let spec = json!({
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": pod_template(name),
        });
        self.seed(
            Resource::Deployment,
            namespace,
            json!({ "metadata": { "name": name }, "spec": spec }),
        );
    }

    pub fn create_statefulset(&self, namespace: &str, name: &str, replicas: i32) {
        let spec = json!({
            "replicas": replicas,
            "serviceName": name,
            "selector": { "matchLabels": { "app": name } },
            "template": pod_template(name),
        });
        self.seed(
            Resource::StatefulSet,
            namespace,
            json!({ "metadata": { "name": name }, "spec": spec }),
        );
    }

    pub fn create_cronjob(&self, namespace: &str, name: &str, suspend: bool) {
        let spec = json!({
            "schedule": "*/5 * * * *",
            "suspend": suspend,
            "jobTemplate": { "spec": { "template": pod_template(name) } },
        });
        self.seed(
            Resource::CronJob,
            namespace,
            json!({ "metadata": { "name": name }, "spec": spec }),
        );
    }

    /// An autoscaling/v2 HPA whose `scaleTargetRef` is `apps/v1` `target_kind`/`target_name`.
    pub fn create_hpa(&self, namespace: &str, name: &str, target_kind: &str, target_name: &str) {
        let spec = json!({
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": target_kind, "name": target_name },
            "minReplicas": 1,
            "maxReplicas": 10,
        });
        self.seed(
            Resource::HorizontalPodAutoscaler,
            namespace,
            json!({ "metadata": { "name": name }, "spec": spec }),
        );
    }

    fn seed(&self, resource: Resource, namespace: &str, body: Value) {
        self.create_object(resource, namespace, body);
    }

    /// Creates an object of any kind as someone else would ([`SEED_MANAGER`]); `body` needs
    /// `kind` and `metadata.name`. Panics if it cannot be created.
    pub fn create_object(&self, resource: impl Into<ResourceType>, namespace: &str, body: Value) {
        let resource = resource.into();
        let mut cluster = self.lock();
        if let Err(e) = cluster.create(&resource, namespace, body, SEED_MANAGER) {
            panic!(
                "seeding {} in {namespace:?}: {}",
                resource.plural, e.message
            );
        }
    }

    /// The object's current JSON, as a GET would return it.
    pub fn object(
        &self,
        resource: impl Into<ResourceType>,
        namespace: &str,
        name: &str,
    ) -> Option<Value> {
        let key = (resource.into(), namespace.to_owned(), name.to_owned());
        self.lock().objects.get(&key).cloned()
    }

    /// Every object of a type (in all namespaces), ordered by namespace and name.
    pub fn objects(&self, resource: impl Into<ResourceType>) -> Vec<Value> {
        let resource = resource.into();
        self.lock()
            .objects
            .iter()
            .filter(|((r, _, _), _)| *r == resource)
            .map(|(_, object)| object.clone())
            .collect()
    }

    /// How many objects the fake holds, of every type.
    pub fn object_count(&self) -> usize {
        self.lock().objects.len()
    }

    /// Deletes an object as someone else would; a namespace takes its objects with it.
    /// Whether it existed.
    pub fn delete_object(
        &self,
        resource: impl Into<ResourceType>,
        namespace: &str,
        name: &str,
    ) -> bool {
        self.lock()
            .delete(&resource.into(), namespace, name)
            .is_ok()
    }

    /// Changes an object with a JSON merge patch as an update by `manager` would (`kubectl
    /// edit`, another controller): the fields it changes move to `manager`.
    pub fn patch_as(
        &self,
        manager: &str,
        resource: impl Into<ResourceType>,
        namespace: &str,
        name: &str,
        patch: &Value,
    ) {
        let mut cluster = self.lock();
        if let Err(e) = cluster.merge_patch(&resource.into(), namespace, name, patch, manager) {
            panic!("patch {namespace}/{name}: {}", e.message);
        }
    }

    /// Sets `spec.replicas` of a Deployment or StatefulSet as an update by `manager` would
    /// (`kubectl scale`, another controller): the field's ownership moves to `manager`.
    pub fn set_replicas_as(
        &self,
        manager: &str,
        resource: Resource,
        namespace: &str,
        name: &str,
        replicas: i32,
    ) {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.patch_as(manager, resource, namespace, name, &patch);
    }

    /// The field managers of an object's owned fields: manager → dotted paths
    /// (`spec.hard.cpu`, `roleRef.name`).
    pub fn field_owners(
        &self,
        resource: impl Into<ResourceType>,
        namespace: &str,
        name: &str,
    ) -> BTreeMap<String, BTreeSet<String>> {
        let key = (resource.into(), namespace.to_owned(), name.to_owned());
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for m in self.lock().managed.get(&key).into_iter().flatten() {
            out.entry(m.manager.clone())
                .or_default()
                .extend(m.fields.iter().map(|path| path.join(".")));
        }
        out
    }

    /// Queues a fault; faults are checked in the order they were added.
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Removes all queued faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every request served so far, in order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().requests.clone()
    }

    /// The requests that tried to write (everything but GET), whatever they did.
    pub fn writes(&self) -> Vec<RequestRecord> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    pub fn clear_requests(&self) {
        self.lock().requests.clear();
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn pod_template(name: &str) -> Value {
    json!({
        "metadata": { "labels": { "app": name } },
        "spec": {
            "containers": [{ "name": "app", "image": "registry.example/app:1" }],
            "restartPolicy": "Always",
        },
    })
}

/// Where a request goes. `namespace` is empty for cluster-scoped objects and for lists over
/// all namespaces.
struct Target {
    resource: ResourceType,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn route(path: &str) -> Result<Target, ApiError> {
    let not_found = || {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    };
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return Err(not_found()),
    };
    if rest.iter().any(|s| s.is_empty()) {
        return Err(not_found());
    }
    let resource = |plural: &str| ResourceType::new(&api_version, plural);
    let owned = |s: &&str| (*s).to_owned();
    let core_namespaces = api_version == "v1";
    let (resource, namespace, name, subresource) = match rest {
        ["namespaces"] if core_namespaces => (resource("namespaces"), String::new(), None, None),
        ["namespaces", name] if core_namespaces => (
            resource("namespaces"),
            String::new(),
            Some(owned(name)),
            None,
        ),
        ["namespaces", ns, plural] => (resource(plural), owned(ns), None, None),
        ["namespaces", ns, plural, name] => (resource(plural), owned(ns), Some(owned(name)), None),
        ["namespaces", ns, plural, name, sub] => (
            resource(plural),
            owned(ns),
            Some(owned(name)),
            Some(owned(sub)),
        ),
        [plural] => (resource(plural), String::new(), None, None),
        [plural, name] => (resource(plural), String::new(), Some(owned(name)), None),
        [plural, name, sub] => (
            resource(plural),
            String::new(),
            Some(owned(name)),
            Some(owned(sub)),
        ),
        _ => return Err(not_found()),
    };
    Ok(Target {
        resource,
        namespace,
        name,
        subresource,
    })
}

async fn serve(
    State(cluster): State<Shared>,
    method: Method,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
    let path = uri.path().to_owned();
    let mut cluster = cluster.lock().expect("fake cluster lock");
    if let Some(dir) = &cluster.calls_dir {
        if !headers.contains_key(FIXTURE_HEADER) {
            let query = uri.query().unwrap_or_default();
            kube_calls::record(dir, &Call::of_request(method.as_str(), &path, query, &body));
        }
    }
    cluster.outcome = None;
    let result = match crate::fault::fire(&mut cluster.faults, method.as_str(), &path) {
        Some(status) => Err(ApiError::injected(status)),
        None => cluster.handle(&method, &path, &query, content_type.as_deref(), &body),
    };
    let (status, body) = match result {
        Ok((status, value)) => (status, value),
        Err(e) => (e.code, e.body()),
    };
    let outcome = if status < 300 {
        cluster.outcome.take()
    } else {
        None
    };
    cluster.requests.push(RequestRecord {
        method: method.to_string(),
        path,
        query: uri.query().unwrap_or_default().to_owned(),
        content_type,
        field_manager: query.get("fieldManager").cloned(),
        status,
        outcome,
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(body)).into_response()
}

type Answer = Result<(u16, Value), ApiError>;

impl Cluster {
    fn handle(
        &mut self,
        method: &Method,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Answer {
        let t = route(path)?;
        let (resource, ns) = (&t.resource, t.namespace.as_str());
        let manager = query
            .get("fieldManager")
            .map_or(UNKNOWN_MANAGER, String::as_str);
        let parse = || -> Result<Value, ApiError> {
            serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("body: {e}")))
        };
        let name = match (&t.name, method) {
            (None, &Method::GET) => return self.list(resource, ns, query.get("labelSelector")),
            (None, &Method::POST) => {
                return self
                    .create(resource, ns, parse()?, manager)
                    .map(|v| (201, v))
            }
            (None, _) => return Err(ApiError::new(405, "MethodNotAllowed", "method not allowed")),
            (Some(name), _) => name.as_str(),
        };
        match (t.subresource.as_deref(), method) {
            (None, &Method::GET) => self.get(resource, ns, name).map(|v| (200, v.clone())),
            (None, &Method::PUT) => self
                .replace(resource, ns, name, parse()?, manager)
                .map(|v| (200, v)),
            (None, &Method::DELETE) => self.delete(resource, ns, name).map(|v| {
                self.outcome = Some(Outcome::Deleted);
                (200, v)
            }),
            (None, &Method::PATCH) => match content_type {
                Some("application/merge-patch+json") => self
                    .merge_patch(resource, ns, name, &parse()?, manager)
                    .map(|v| (200, v)),
                Some("application/apply-patch+yaml") => {
                    if !query.contains_key("fieldManager") {
                        return Err(ApiError::bad_request(
                            "PATCH, application/apply-patch+yaml: fieldManager is required",
                        ));
                    }
                    let force = query.get("force").is_some_and(|f| f == "true");
                    self.apply(resource, ns, name, parse()?, manager, force)
                }
                other => Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the fake does not support PATCH with {other:?}"),
                )),
            },
            (Some("scale"), _) if resource.has_scale() => {
                let replicas = match *method {
                    Method::GET => None,
                    Method::PATCH if content_type == Some("application/merge-patch+json") => {
                        let mut scale = self.scale(resource, ns, name)?;
                        let patch = parse()?;
                        check_version(&patch, &scale, resource, name)?;
                        merge(&mut scale, &patch);
                        Some(scale["spec"]["replicas"].clone())
                    }
                    Method::PUT => {
                        let scale = parse()?;
                        check_version(&scale, &self.scale(resource, ns, name)?, resource, name)?;
                        Some(scale["spec"]["replicas"].clone())
                    }
                    _ => {
                        return Err(ApiError::new(
                            405,
                            "MethodNotAllowed",
                            "scale: GET, PUT or merge PATCH",
                        ))
                    }
                };
                if let Some(replicas) = replicas {
                    if replicas
                        .as_i64()
                        .is_none_or(|r| r < 0 || r > i64::from(i32::MAX))
                    {
                        return Err(ApiError::new(
                            422,
                            "Invalid",
                            format!("spec.replicas: Invalid value: {replicas}"),
                        ));
                    }
                    let patch = json!({ "spec": { "replicas": replicas } });
                    self.merge_patch(resource, ns, name, &patch, manager)?;
                }
                self.scale(resource, ns, name).map(|v| (200, v))
            }
            _ => Err(ApiError::new(
                404,
                "NotFound",
                "the server could not find the requested resource",
            )),
        }
    }

    fn key(resource: &ResourceType, namespace: &str, name: &str) -> Key {
        (resource.clone(), namespace.to_owned(), name.to_owned())
    }

    fn kind_of(&self, resource: &ResourceType) -> String {
        self.kinds.get(resource).cloned().unwrap_or_default()
    }

    fn get(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<&Value, ApiError> {
        self.objects
            .get(&Self::key(resource, namespace, name))
            .ok_or_else(|| ApiError::not_found(resource, name))
    }

    fn list(&self, resource: &ResourceType, namespace: &str, selector: Option<&String>) -> Answer {
        let selector = parse_selector(selector.map_or("", String::as_str))?;
        let first = (resource.clone(), String::new(), String::new());
        let items: Vec<Value> = self
            .objects
            .range(first..)
            .take_while(|((r, _, _), _)| r == resource)
            .filter(|((_, ns, _), object)| {
                (namespace.is_empty() || ns == namespace)
                    && selector
                        .iter()
                        .all(|term| term.matches(&object["metadata"]["labels"]))
            })
            .map(|(_, object)| object.clone())
            .collect();
        Ok((
            200,
            json!({
                "apiVersion": resource.api_version,
                "kind": format!("{}List", self.kind_of(resource)),
                "metadata": { "resourceVersion": self.resource_version.to_string() },
                "items": items,
            }),
        ))
    }

    fn namespace_exists(&self, namespace: &str) -> Result<(), ApiError> {
        let namespaces = ResourceType::from(Resource::Namespace);
        if !namespace.is_empty()
            && !self
                .objects
                .contains_key(&Self::key(&namespaces, "", namespace))
        {
            return Err(ApiError::not_found(&namespaces, namespace));
        }
        Ok(())
    }

    fn create(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let kind = self.check_type(&body, resource)?;
        let name = body["metadata"]["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::new(422, "Invalid", "metadata.name: Required value"))?
            .to_owned();
        self.namespace_exists(namespace)?;
        let key = Self::key(resource, namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", resource.plural),
            ));
        }
        // the API server's defaults for the fields budgetd reads
        if resource.has_scale() && body["spec"]["replicas"].is_null() {
            body["spec"]["replicas"] = json!(1);
        }
        if *resource == ResourceType::from(Resource::CronJob) && body["spec"]["suspend"].is_null() {
            body["spec"]["suspend"] = json!(false)
        }
        body["apiVersion"] = json!(resource.api_version);
        body["kind"] = json!(kind);
        self.kinds.insert(resource.clone(), kind);
        self.uids += 1;
        let metadata = &mut body["metadata"];
        metadata["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        metadata["creationTimestamp"] =
            json!(chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string());
        if !namespace.is_empty() {
            metadata["namespace"] = json!(namespace);
        }
        let before = Value::Null;
        self.record_update(&key, &before, &body, manager);
        let stored = self.store(key, body);
        self.outcome = Some(Outcome::Created);
        Ok(stored)
    }

    fn replace(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        mut body: Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        self.check_type(&body, resource)?;
        let current = self.get(resource, namespace, name)?.clone();
        check_version(&body, &current, resource, name)?;
        keep_identity(&mut body, &current);
        let key = Self::key(resource, namespace, name);
        self.record_update(&key, &current, &body, manager);
        Ok(self.store(key, body))
    }

    fn merge_patch(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        patch: &Value,
        manager: &str,
    ) -> Result<Value, ApiError> {
        let current = self.get(resource, namespace, name)?.clone();
        check_version(patch, &current, resource, name)?;
        let mut object = current.clone();
        merge(&mut object, patch);
        keep_identity(&mut object, &current);
        let key = Self::key(resource, namespace, name);
        self.record_update(&key, &current, &object, manager);
        Ok(self.store(key, object))
    }

    fn delete(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let key = Self::key(resource, namespace, name);
        let object = self
            .objects
            .remove(&key)
            .ok_or_else(|| ApiError::not_found(resource, name))?;
        self.managed.remove(&key);
        if resource.is_namespace() {
            self.objects.retain(|(_, ns, _), _| ns != name);
            self.managed.retain(|(_, ns, _), _| ns != name);
        }
        self.resource_version += 1;
        Ok(object)
    }

    /// Server-side apply, with field ownership of the owned leaves: a field another manager
    /// owns with a different value is a conflict unless forced (then ownership moves); the
    /// fields this manager applied before and does not send now are removed unless another
    /// manager owns them too. Labels and annotations are owned key by key: a label this manager
    /// applied before and no longer sends is removed, as a real API server does.
    fn apply(
        &mut self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
        body: Value,
        manager: &str,
        force: bool,
    ) -> Answer {
        self.check_type(&body, resource)?;
        if body["metadata"]["name"].as_str() != Some(name) {
            return Err(ApiError::bad_request(
                "metadata.name must match the name in the path",
            ));
        }
        let key = Self::key(resource, namespace, name);
        let (current, created) = match self.objects.get(&key) {
            Some(current) => {
                check_version(&body, current, resource, name)?;
                (current.clone(), false)
            }
            None => {
                self.namespace_exists(namespace)?;
                let skeleton = json!({ "apiVersion": resource.api_version, "kind": body["kind"], "metadata": { "name": name } });
                self.create(resource, namespace, skeleton, manager)?;
                self.managed.remove(&key);
                (self.objects[&key].clone(), true)
            }
        };
        let applied = owned_leaves(&body);
        let entries = self.managed.entry(key.clone()).or_default();

        let mut conflicts = Vec::new();
        for (path, value) in &applied {
            if get_path(&current, path) == Some(value) {
                continue;
            }
            for m in entries
                .iter()
                .filter(|m| m.manager != manager && m.fields.contains(path))
            {
                conflicts.push((m.manager.clone(), path.clone()));
            }
        }
        if !conflicts.is_empty() && !force {
            let causes: Vec<Value> = conflicts
                .iter()
                .map(|(m, path)| json!({ "reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\""), "field": format!(".{}", path.join(".")) }))
                .collect();
            let listed: Vec<String> = conflicts
                .iter()
                .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
                .collect();
            return Err(ApiError {
                details: Some(json!({ "name": name, "kind": resource.plural, "causes": causes })),
                ..ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Apply failed with {} conflict(s): {}",
                        conflicts.len(),
                        listed.join(", ")
                    ),
                )
            });
        }
        for (_, path) in &conflicts {
            for m in entries.iter_mut().filter(|m| m.manager != manager) {
                m.fields.remove(path);
            }
        }

        let mut object = current.clone();
        let previous = entries
            .iter()
            .find(|m| m.manager == manager && m.operation == "Apply")
            .map(|m| m.fields.clone())
            .unwrap_or_default();
        for path in previous.iter().filter(|p| !applied.contains_key(*p)) {
            let owned_elsewhere = entries.iter().any(|m| {
                !(m.manager == manager && m.operation == "Apply") && m.fields.contains(path)
            });
            if !owned_elsewhere {
                remove_path(&mut object, path);
            }
        }
        for (path, value) in &applied {
            set_path(&mut object, path, value.clone());
        }
        entries.retain(|m| !(m.manager == manager && m.operation == "Apply"));
        entries.push(Managed {
            manager: manager.to_owned(),
            operation: "Apply",
            fields: applied.into_keys().collect(),
        });
        let stored = self.store(key, object);
        if created {
            self.outcome = Some(Outcome::Created);
        }
        Ok((if created { 201 } else { 200 }, stored))
    }

    /// An update by `manager` takes the owned leaves it changed from everyone else.
    fn record_update(&mut self, key: &Key, before: &Value, after: &Value, manager: &str) {
        let before = owned_leaves(before);
        let after = owned_leaves(after);
        let entries = self.managed.entry(key.clone()).or_default();
        for path in before.keys().filter(|p| !after.contains_key(*p)) {
            for m in entries.iter_mut() {
                m.fields.remove(path);
            }
        }
        let changed: Vec<&Vec<String>> = after
            .iter()
            .filter(|(p, v)| before.get(*p) != Some(v))
            .map(|(p, _)| p)
            .collect();
        if changed.is_empty() {
            return;
        }
        for m in entries.iter_mut() {
            for path in &changed {
                m.fields.remove(*path);
            }
        }
        match entries
            .iter_mut()
            .find(|m| m.manager == manager && m.operation == "Update")
        {
            Some(m) => m.fields.extend(changed.into_iter().cloned()),
            None => entries.push(Managed {
                manager: manager.to_owned(),
                operation: "Update",
                fields: changed.into_iter().cloned().collect(),
            }),
        }
    }

    /// Renders `managedFields` and stores the object with a new resource version, unless it
    /// is what is stored already (then the call was `unchanged`).
    fn store(&mut self, key: Key, mut object: Value) -> Value {
        let entries = self.managed.entry(key.clone()).or_default();
        entries.retain(|m| !m.fields.is_empty());
        let api_version = key.0.api_version.clone();
        let managed: Vec<Value> = entries
            .iter()
            .map(|m| {
                let mut tree = json!({});
                for path in &m.fields {
                    let mut node = &mut tree;
                    for segment in path {
                        node = &mut node[format!("f:{segment}")];
                        if node.is_null() {
                            *node = json!({});
                        }
                    }
                }
                json!({ "manager": m.manager, "operation": m.operation, "apiVersion": api_version, "fieldsType": "FieldsV1", "fieldsV1": tree })
            })
            .collect();
        let metadata = &mut object["metadata"];
        metadata["managedFields"] = json!(managed);
        for field in ["labels", "annotations"] {
            if metadata[field].as_object().is_some_and(Map::is_empty) {
                metadata.as_object_mut().map(|m| m.remove(field));
            }
        }
        if let Some(current) = self.objects.get(&key) {
            object["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
            if *current == object {
                self.outcome = Some(Outcome::Unchanged);
                return object;
            }
        }
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.outcome = Some(Outcome::Updated);
        self.objects.insert(key, object.clone());
        object
    }

    /// The body's kind: as named, and the kind this type was first stored as (if it was).
    fn check_type(&self, body: &Value, resource: &ResourceType) -> Result<String, ApiError> {
        let known = self.kinds.get(resource);
        let kind = body["kind"].as_str().or(known.map(String::as_str));
        let api_version = body["apiVersion"].as_str();
        match kind {
            Some(kind)
                if body.is_object()
                    && !kind.is_empty()
                    && known.is_none_or(|k| k == kind)
                    && api_version.is_none_or(|v| v == resource.api_version) =>
            {
                Ok(kind.to_owned())
            }
            _ => Err(ApiError::bad_request(format!(
                "the body is not a {} {}",
                resource.api_version,
                known.map_or("object with a kind", String::as_str)
            ))),
        }
    }

    /// The autoscaling/v1 Scale of a Deployment or StatefulSet.
    fn scale(
        &self,
        resource: &ResourceType,
        namespace: &str,
        name: &str,
    ) -> Result<Value, ApiError> {
        let object = self.get(resource, namespace, name)?;
        let meta = &object["metadata"];
        let selector: Vec<String> = object["spec"]["selector"]["matchLabels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect();
        Ok(json!({
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                "resourceVersion": meta["resourceVersion"], "creationTimestamp": meta["creationTimestamp"],
            },
            "spec": { "replicas": object["spec"]["replicas"] },
            // nothing runs pods here: the status is whatever the object's status says
            "status": { "replicas": object["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",") },
        }))
    }
}

/// A write naming a resource version must name the current one (optimistic concurrency).
fn check_version(
    body: &Value,
    current: &Value,
    resource: &ResourceType,
    name: &str,
) -> Result<(), ApiError> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if Some(rv) != current["metadata"]["resourceVersion"].as_str() => {
            Err(ApiError::stale(resource, name))
        }
        _ => Ok(()),
    }
}

/// Identity and server-owned metadata cannot be changed by a write.
fn keep_identity(object: &mut Value, current: &Value) {
    for field in ["name", "namespace", "uid", "creationTimestamp"] {
        match current["metadata"].get(field) {
            Some(v) => object["metadata"][field] = v.clone(),
            None => {
                object["metadata"].as_object_mut().map(|m| m.remove(field));
            }
        }
    }
    object["apiVersion"] = current["apiVersion"].clone();
    object["kind"] = current["kind"].clone();
}

/// JSON merge patch (RFC 7386): objects merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let target = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// The fields field managers own: the leaves under every top-level field but `apiVersion`,
/// `kind`, `metadata` and `status`.
fn owned_leaves(object: &Value) -> BTreeMap<Vec<String>, Value> {
    let mut out = BTreeMap::new();
    for (key, child) in object.as_object().into_iter().flatten() {
        if !matches!(key.as_str(), "apiVersion" | "kind" | "metadata" | "status") {
            out.extend(leaves(child, vec![key.clone()]));
        }
    }
    // Labels and annotations are owned one key at a time, like any other map entry.
    for field in ["labels", "annotations"] {
        for (key, value) in object["metadata"][field].as_object().into_iter().flatten() {
            out.insert(
                vec!["metadata".to_owned(), field.to_owned(), key.clone()],
                value.clone(),
            );
        }
    }
    out
}

/// The leaf fields under `value` (objects are descended, arrays and scalars are leaves).
fn leaves(value: &Value, prefix: Vec<String>) -> BTreeMap<Vec<String>, Value> {
    let mut out = BTreeMap::new();
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                let mut path = prefix.clone();
                path.push(key.clone());
                out.extend(leaves(child, path));
            }
        }
        Value::Null => {}
        leaf => {
            out.insert(prefix, leaf.clone());
        }
    }
    out
}

fn get_path<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, segment| v.get(segment))
}

fn set_path(value: &mut Value, path: &[String], leaf: Value) {
    let mut node = value;
    for segment in path {
        if !node.is_object() {
            *node = json!({});
        }
        node = node
            .as_object_mut()
            .expect("an object")
            .entry(segment.clone())
            .or_insert(Value::Null);
    }
    *node = leaf;
}

fn remove_path(value: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut node = value;
    for segment in parents {
        match node.get_mut(segment) {
            Some(child) => node = child,
            None => return,
        }
    }
    if let Some(map) = node.as_object_mut() {
        map.remove(last);
    }
}

/// One term of an equality-based label selector.
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

impl Term {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Term::Equals(k, v) => get(k) == Some(v.as_str()),
            Term::NotEquals(k, v) => get(k) != Some(v.as_str()),
            Term::Exists(k) => get(k).is_some(),
            Term::NotExists(k) => get(k).is_none(),
        }
    }
}

fn parse_selector(selector: &str) -> Result<Vec<Term>, ApiError> {
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    };
    let mut terms = Vec::new();
    for term in selector.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let parsed = if let Some((k, v)) = term.split_once("!=") {
            Term::NotEquals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Term::Equals(k.trim().to_owned(), v.trim().to_owned())
        } else if let Some(k) = term.strip_prefix('!') {
            Term::NotExists(k.trim().to_owned())
        } else {
            Term::Exists(term.to_owned())
        };
        let ok = match &parsed {
            Term::Equals(k, v) | Term::NotEquals(k, v) => plain(k) && (v.is_empty() || plain(v)),
            Term::Exists(k) | Term::NotExists(k) => plain(k),
        };
        if !ok {
            return Err(ApiError::bad_request(format!(
                "unable to parse requirement: {term:?}"
            )));
        }
        terms.push(parsed);
    }
    Ok(terms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_with_a_stale_resource_version_conflicts() {
        let mut cluster = Cluster::default();
        let namespaces = ResourceType::from(Resource::Namespace);
        let ns = json!({ "kind": "Namespace", "metadata": { "name": "a" } });
        let created = cluster.create(&namespaces, "", ns, "t").unwrap();
        let rv = created["metadata"]["resourceVersion"].clone();
        let label = |rv: &Value, v: &str| json!({ "metadata": { "resourceVersion": rv, "labels": { "x": v } } });

        let patched = cluster
            .merge_patch(&namespaces, "", "a", &label(&rv, "1"), "t")
            .unwrap();
        assert_ne!(patched["metadata"]["resourceVersion"], rv);
        let stale = cluster
            .merge_patch(&namespaces, "", "a", &label(&rv, "2"), "t")
            .unwrap_err();
        assert_eq!((stale.code, stale.reason), (409, "Conflict"));
        let stale = cluster
            .replace(&namespaces, "", "a", label(&rv, "3"), "t")
            .unwrap_err();
        assert_eq!(stale.code, 409);
        assert_eq!(
            cluster.get(&namespaces, "", "a").unwrap()["metadata"]["labels"],
            json!({ "x": "1" })
        );
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({ "a": "b", "c": { "d": "e", "f": "g" } });
        merge(&mut doc, &json!({ "a": "z", "c": { "f": null }, "h": [1] }));
        assert_eq!(doc, json!({ "a": "z", "c": { "d": "e" }, "h": [1] }));
    }

    #[test]
    fn selectors_match_equality_and_existence() {
        let labels = json!({ "tenant": "acme", "budgetd.io/suspended": "true" });
        let matches = |s: &str| {
            parse_selector(s)
                .unwrap()
                .iter()
                .all(|t| t.matches(&labels))
        };
        assert!(matches("tenant=acme"));
        assert!(matches("tenant==acme,budgetd.io/suspended"));
        assert!(!matches("tenant=other"));
        assert!(matches("tenant!=other,!team"));
        assert!(parse_selector("tenant in (a,b)").is_err());
    }

    #[test]
    fn any_kind_is_stored_listed_by_label_and_deleted_with_its_namespace() {
        let mut cluster = Cluster::default();
        let namespaces = ResourceType::from(Resource::Namespace);
        let policies = ResourceType::new("networking.k8s.io/v1", "networkpolicies");
        let claims = ResourceType::new("example.org/v1alpha1", "buckets");
        let ns = json!({ "kind": "Namespace", "metadata": { "name": "a" } });
        cluster.create(&namespaces, "", ns, "t").unwrap();
        let policy = |name: &str, owner: &str| json!({ "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": { "name": name, "labels": { "owner": owner } }, "spec": { "podSelector": {} } });
        cluster
            .create(&policies, "a", policy("p1", "x"), "t")
            .unwrap();
        cluster
            .create(&policies, "a", policy("p2", "y"), "t")
            .unwrap();
        let wrong = json!({ "apiVersion": "networking.k8s.io/v1", "kind": "Other", "metadata": { "name": "p3" } });
        assert_eq!(
            cluster.create(&policies, "a", wrong, "t").unwrap_err().code,
            400
        );
        let missing_ns = cluster
            .create(&policies, "b", policy("p", "x"), "t")
            .unwrap_err();
        assert_eq!(missing_ns.code, 404);
        // cluster-scoped: no namespace needed
        let bucket = json!({ "apiVersion": "example.org/v1alpha1", "kind": "Bucket", "metadata": { "name": "b1" } });
        cluster.create(&claims, "", bucket, "t").unwrap();

        let selector = "owner=x".to_owned();
        let (_, listed) = cluster.list(&policies, "", Some(&selector)).unwrap();
        assert_eq!(listed["kind"], "NetworkPolicyList");
        let names: Vec<&Value> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| &i["metadata"]["name"])
            .collect();
        assert_eq!(names, [&json!("p1")]);

        cluster.delete(&namespaces, "", "a").unwrap();
        let (_, listed) = cluster.list(&policies, "", None).unwrap();
        assert_eq!(listed["items"], json!([]));
        assert!(cluster.get(&claims, "", "b1").is_ok());
    }

    #[test]
    fn an_apply_that_changes_nothing_keeps_the_resource_version() {
        let mut cluster = Cluster::default();
        let namespaces = ResourceType::from(Resource::Namespace);
        let bindings = ResourceType::new("rbac.authorization.k8s.io/v1", "rolebindings");
        let ns = json!({ "kind": "Namespace", "metadata": { "name": "a" } });
        cluster.create(&namespaces, "", ns, "t").unwrap();
        let binding = |role: &str| json!({ "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": { "name": "owners" }, "roleRef": { "kind": "ClusterRole", "name": role } });
        let (code, first) = cluster
            .apply(&bindings, "a", "owners", binding("edit"), "m", true)
            .unwrap();
        assert_eq!((code, cluster.outcome), (201, Some(Outcome::Created)));
        cluster
            .apply(&bindings, "a", "owners", binding("edit"), "m", true)
            .unwrap();
        assert_eq!(cluster.outcome, Some(Outcome::Unchanged));
        let again = cluster.get(&bindings, "a", "owners").unwrap();
        assert_eq!(
            again["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        let (_, changed) = cluster
            .apply(&bindings, "a", "owners", binding("view"), "m", true)
            .unwrap();
        assert_eq!(cluster.outcome, Some(Outcome::Updated));
        assert_eq!(changed["roleRef"]["name"], "view");
        assert_ne!(
            changed["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
    }

    #[test]
    fn routes_name_resource_namespace_and_subresource() {
        let t = route("/apis/apps/v1/namespaces/a/deployments/web/scale").unwrap();
        assert_eq!(t.resource, Resource::Deployment.into());
        assert_eq!(
            (
                t.namespace.as_str(),
                t.name.as_deref(),
                t.subresource.as_deref()
            ),
            ("a", Some("web"), Some("scale"))
        );
        assert_eq!(
            route("/api/v1/namespaces/a").unwrap().resource,
            Resource::Namespace.into()
        );
        let cluster_scoped = route("/apis/rbac.authorization.k8s.io/v1/clusterroles/edit").unwrap();
        assert_eq!(
            (cluster_scoped.resource, cluster_scoped.namespace.as_str()),
            (
                ResourceType::new("rbac.authorization.k8s.io/v1", "clusterroles"),
                ""
            )
        );
        assert!(route("/apis/apps").is_err());
        assert!(route("/api/v2/pods").is_err());
    }
}
