//! A tenant's footprint in Kubernetes: the fields budgetd changes when it tightens or suspends,
//! and the pure arithmetic of changing and restoring them.
//!
//! An enforcement action is recorded as its `forward` changes (what it set) and their `backward`
//! inverse (the prior values), each a [`ChangeSet`]. Both come from [`diff`], so they touch
//! exactly the same fields; restoring applies `backward` and never "applies without the field".
//! The executor reads the footprint through [`ClusterActuator`], the one trait for the
//! Kubernetes API.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Deref;

use async_trait::async_trait;
use ledger::enforcement::ActionKind;
use ledger::tenant::TenantId;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::quantity::{same_quantity, Quantity};

/// The ResourceQuota budgetd owns in each tenant namespace.
pub const QUOTA_NAME: &str = "budgetd-quota";
/// Set to `"true"` on the namespaces of a suspended tenant.
pub const SUSPENDED_LABEL: &str = "budgetd.io/suspended";
/// The field manager of every enforcer write. Not the blueprint's (`budgetd`): an apply
/// removes the fields its manager applied before and does not send now, so sharing one manager
/// would strip the labels and annotation the blueprint put on the quota whenever the enforcer
/// tightens it. The blueprint keeps the limits this manager owns.
pub const FIELD_MANAGER: &str = "budgetd-enforcer";

/// Hard limits of a ResourceQuota: resource name → quantity, as the API spelled it.
pub type QuotaHard = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
}

/// A Deployment or StatefulSet: its replicas and, if a HorizontalPodAutoscaler targets it, the
/// HPA's name (budgetd reports such workloads instead of fighting the autoscaler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub name: String,
    pub replicas: i32,
    pub hpa: Option<String>,
}

/// What budgetd manages in one namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceFootprint {
    /// `None`: the namespace has no `budgetd-quota`.
    pub quota: Option<QuotaHard>,
    pub workloads: Vec<Workload>,
    /// CronJob name → `spec.suspend`.
    pub cronjobs: BTreeMap<String, bool>,
    /// Whether the namespace carries `budgetd.io/suspended=true`.
    pub suspended_label: bool,
}

/// A tenant's namespaces (those labelled with the tenant label) and what budgetd manages there.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    pub namespaces: BTreeMap<String, NamespaceFootprint>,
}

/// One write to the cluster. Every change names the value it sets, so applying it twice is
/// the same as applying it once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    /// Server-side apply of `budgetd-quota` with exactly these hard limits.
    SetQuota { namespace: String, hard: QuotaHard },
    /// Removes `budgetd-quota` (it did not exist before budgetd created it).
    DeleteQuota { namespace: String },
    /// Sets `spec.replicas` through the scale subresource.
    Scale {
        namespace: String,
        kind: WorkloadKind,
        name: String,
        replicas: i32,
    },
    /// Sets a CronJob's `spec.suspend`.
    SuspendCronJob {
        namespace: String,
        name: String,
        suspend: bool,
    },
    /// Adds (`true`) or removes (`false`) the `budgetd.io/suspended` label.
    LabelSuspended { namespace: String, suspended: bool },
}

impl Change {
    pub fn namespace(&self) -> &str {
        match self {
            Change::SetQuota { namespace, .. }
            | Change::DeleteQuota { namespace }
            | Change::Scale { namespace, .. }
            | Change::SuspendCronJob { namespace, .. }
            | Change::LabelSuspended { namespace, .. } => namespace,
        }
    }

    /// The field this change writes, so two changes of the same field can be compared.
    pub fn target(&self) -> String {
        match self {
            Change::SetQuota { namespace, .. } | Change::DeleteQuota { namespace } => {
                format!("{namespace}/resourcequota/{QUOTA_NAME}")
            }
            Change::Scale {
                namespace,
                kind,
                name,
                ..
            } => format!("{namespace}/{}/{name}", kind.as_str()),
            Change::SuspendCronJob {
                namespace, name, ..
            } => format!("{namespace}/cronjob/{name}"),
            Change::LabelSuspended { namespace, .. } => format!("{namespace}/namespace-label"),
        }
    }

    /// Whether `footprint` already shows what this change sets. Objects that no longer exist
    /// count as satisfied: budgetd does not recreate a workload someone deleted.
    pub fn is_satisfied_by(&self, footprint: &Footprint) -> bool {
        let Some(ns) = footprint.namespaces.get(self.namespace()) else {
            return true;
        };
        match self {
            Change::SetQuota { hard, .. } => ns.quota.as_ref().is_some_and(|q| same_hard(q, hard)),
            Change::DeleteQuota { .. } => ns.quota.is_none(),
            Change::Scale {
                kind,
                name,
                replicas,
                ..
            } => ns
                .workloads
                .iter()
                .find(|w| w.kind == *kind && w.name == *name)
                .is_none_or(|w| w.replicas == *replicas),
            Change::SuspendCronJob { name, suspend, .. } => {
                ns.cronjobs.get(name).is_none_or(|s| s == suspend)
            }
            Change::LabelSuspended { suspended, .. } => ns.suspended_label == *suspended,
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::SetQuota { namespace, hard } => {
                let hard: Vec<String> = hard.iter().map(|(k, v)| format!("{k}={v}")).collect();
                write!(f, "{namespace}: quota {}", hard.join(","))
            }
            Change::DeleteQuota { namespace } => write!(f, "{namespace}: delete quota"),
            Change::Scale {
                namespace,
                kind,
                name,
                replicas,
            } => write!(
                f,
                "{namespace}: {} {name} replicas={replicas}",
                kind.as_str()
            ),
            Change::SuspendCronJob {
                namespace,
                name,
                suspend,
            } => write!(f, "{namespace}: cronjob {name} suspend={suspend}"),
            Change::LabelSuspended {
                namespace,
                suspended,
            } => write!(f, "{namespace}: label {SUSPENDED_LABEL}={suspended}"),
        }
    }
}

/// The changes an action recorded in the ledger: `forward` (what it set) or `backward` (the
/// prior values), in the order they are applied.
///
/// The one owner of their stored form. The ledger keeps them as JSON it does not interpret (the
/// API, audit records and events show them as they are), and every read goes through
/// [`ChangeSet::decode`], which fails rather than guess: reading an unreadable `backward` as "no
/// changes" would mark an action restored and leave the cluster changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet(Vec<Change>);

/// An action's recorded changes cannot be read: the record was altered or written by something
/// else. Nothing is applied or restored from it; only an operator can repair the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the recorded {record} changes cannot be read: {reason}")]
pub struct CorruptChanges {
    /// `forward` or `backward`.
    pub record: &'static str,
    pub reason: String,
}

impl ChangeSet {
    pub fn new(changes: Vec<Change>) -> ChangeSet {
        ChangeSet(changes)
    }

    /// The stored form: a JSON array of changes tagged by `op`.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).expect("changes are plain data and always serialize")
    }

    /// Reads a stored change set (`record` names it in the error: `forward` or `backward`).
    pub fn decode(record: &'static str, value: &Value) -> Result<ChangeSet, CorruptChanges> {
        Vec::<Change>::deserialize(value)
            .map(ChangeSet)
            .map_err(|e| CorruptChanges {
                record,
                reason: e.to_string(),
            })
    }

    /// What an action of `kind` that is (being) applied has recorded. A notification changes
    /// nothing in the cluster; a quota or suspension action records its changes before its
    /// first write, so finding none is as corrupt as finding garbage.
    pub fn recorded(
        record: &'static str,
        kind: ActionKind,
        value: Option<&Value>,
    ) -> Result<ChangeSet, CorruptChanges> {
        match value {
            Some(value) => ChangeSet::decode(record, value),
            None if kind == ActionKind::Notify => Ok(ChangeSet::default()),
            None => Err(CorruptChanges {
                record,
                reason: format!("nothing is recorded for a {} action", kind.as_str()),
            }),
        }
    }
}

impl Deref for ChangeSet {
    type Target = [Change];

    fn deref(&self) -> &[Change] {
        &self.0
    }
}

impl FromIterator<Change> for ChangeSet {
    fn from_iter<I: IntoIterator<Item = Change>>(changes: I) -> ChangeSet {
        ChangeSet(changes.into_iter().collect())
    }
}

/// Object counts (`pods`, `services`, `count/...`) are whole numbers; compute and storage
/// resources are not.
fn is_count(resource: &str) -> bool {
    !["cpu", "memory", "storage"]
        .iter()
        .any(|r| resource.contains(r))
}

/// How a quota is tightened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tighten {
    /// Multiply every hard limit by this factor (0 < factor < 1).
    Factor(Decimal),
    /// Replace the hard limits named here; limits the profile does not name are kept.
    Profile { name: String, hard: QuotaHard },
}

/// Why a footprint could not be tightened as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FootprintError {
    #[error("quota {namespace}/{QUOTA_NAME}: {resource}={value:?} is not a Kubernetes quantity")]
    BadQuantity {
        namespace: String,
        resource: String,
        value: String,
    },
}

impl Footprint {
    /// The footprint with every namespace's quota tightened. Namespaces without a quota get
    /// one only from a profile; a factor has nothing to multiply there.
    pub fn tightened(&self, how: &Tighten) -> Result<Footprint, FootprintError> {
        let mut out = self.clone();
        for (namespace, ns) in &mut out.namespaces {
            match how {
                Tighten::Factor(factor) => {
                    if let Some(hard) = &mut ns.quota {
                        for (resource, value) in hard.iter_mut() {
                            let q = Quantity::parse(value).map_err(|_| {
                                FootprintError::BadQuantity {
                                    namespace: namespace.clone(),
                                    resource: resource.clone(),
                                    value: value.clone(),
                                }
                            })?;
                            let scaled = if is_count(resource) {
                                q.scaled_whole(*factor)
                            } else {
                                q.scaled(*factor)
                            };
                            *value = scaled.to_string();
                        }
                    }
                }
                Tighten::Profile { hard: profile, .. } => {
                    let hard = ns.quota.get_or_insert_with(QuotaHard::new);
                    for (resource, value) in profile {
                        hard.insert(resource.clone(), value.clone());
                    }
                }
            }
        }
        Ok(out)
    }

    /// The footprint of a suspended tenant: quota `pods: 0`, Deployments and StatefulSets
    /// without an autoscaler at 0 replicas, CronJobs suspended, namespaces labelled.
    pub fn suspended(&self) -> Footprint {
        let mut out = self.clone();
        for ns in out.namespaces.values_mut() {
            ns.quota
                .get_or_insert_with(QuotaHard::new)
                .insert("pods".to_owned(), "0".to_owned());
            for w in ns.workloads.iter_mut().filter(|w| w.hpa.is_none()) {
                w.replicas = 0;
            }
            for suspend in ns.cronjobs.values_mut() {
                *suspend = true;
            }
            ns.suspended_label = true;
        }
        out
    }

    /// Workloads an autoscaler manages, as `namespace/kind/name (hpa name)`: a suspension
    /// leaves them alone and reports them.
    pub fn autoscaled(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (namespace, ns) in &self.namespaces {
            for w in &ns.workloads {
                if let Some(hpa) = &w.hpa {
                    out.push(format!(
                        "{namespace}/{}/{} (hpa {hpa})",
                        w.kind.as_str(),
                        w.name
                    ));
                }
            }
        }
        out
    }

    /// Applies changes to this model of the cluster, as the API server would.
    pub fn apply(&mut self, changes: &[Change]) {
        for change in changes {
            let Some(ns) = self.namespaces.get_mut(change.namespace()) else {
                continue;
            };
            match change {
                Change::SetQuota { hard, .. } => ns.quota = Some(hard.clone()),
                Change::DeleteQuota { .. } => ns.quota = None,
                Change::Scale {
                    kind,
                    name,
                    replicas,
                    ..
                } => {
                    if let Some(w) = ns
                        .workloads
                        .iter_mut()
                        .find(|w| w.kind == *kind && w.name == *name)
                    {
                        w.replicas = *replicas;
                    }
                }
                Change::SuspendCronJob { name, suspend, .. } => {
                    if let Some(s) = ns.cronjobs.get_mut(name) {
                        *s = *suspend;
                    }
                }
                Change::LabelSuspended { suspended, .. } => ns.suspended_label = *suspended,
            }
        }
    }
}

/// The changes that turn `from` into `to`, for the namespaces and objects present in both
/// (the fields budgetd manages only). `diff(to, from)` touches exactly the same fields.
pub fn diff(from: &Footprint, to: &Footprint) -> Vec<Change> {
    let mut out = Vec::new();
    for (namespace, a) in &from.namespaces {
        let Some(b) = to.namespaces.get(namespace) else {
            continue;
        };
        if a.quota != b.quota {
            out.push(match &b.quota {
                Some(hard) => Change::SetQuota {
                    namespace: namespace.clone(),
                    hard: hard.clone(),
                },
                None => Change::DeleteQuota {
                    namespace: namespace.clone(),
                },
            });
        }
        for wa in &a.workloads {
            if let Some(wb) = b
                .workloads
                .iter()
                .find(|w| w.kind == wa.kind && w.name == wa.name)
            {
                if wa.replicas != wb.replicas {
                    out.push(Change::Scale {
                        namespace: namespace.clone(),
                        kind: wb.kind,
                        name: wb.name.clone(),
                        replicas: wb.replicas,
                    });
                }
            }
        }
        for (name, sa) in &a.cronjobs {
            if let Some(sb) = b.cronjobs.get(name) {
                if sa != sb {
                    out.push(Change::SuspendCronJob {
                        namespace: namespace.clone(),
                        name: name.clone(),
                        suspend: *sb,
                    });
                }
            }
        }
        if a.suspended_label != b.suspended_label {
            out.push(Change::LabelSuspended {
                namespace: namespace.clone(),
                suspended: b.suspended_label,
            });
        }
    }
    out
}

/// Whether two quotas' hard limits are the same, comparing quantities by value.
fn same_hard(a: &QuotaHard, b: &QuotaHard) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && same_quantity(va, vb))
}

/// What applying a set of changes did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Changes whose object no longer exists (deleted by someone else): skipped, not recreated.
    pub missing: Vec<String>,
}

/// Errors of the Kubernetes API, classified for retries and metrics.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("kubernetes API did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// 5xx, 409 or 429 after the retries ran out.
    #[error("kubernetes API unavailable after {attempts} attempts: {message}")]
    Unavailable { attempts: u32, message: String },
    /// 4xx other than 404/409/429: budgetd's request was refused (RBAC, validation).
    #[error("kubernetes API refused {what}: {message}")]
    Refused { what: String, message: String },
    #[error("kubernetes client: {0}")]
    Client(String),
}

impl ClusterError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            ClusterError::Timeout { .. } => "timeout",
            ClusterError::Unavailable { .. } => "unavailable",
            ClusterError::Refused { .. } => "refused",
            ClusterError::Client(_) => "client",
        }
    }
}

/// The Kubernetes API as the enforcer needs it.
#[async_trait]
pub trait ClusterActuator: Send + Sync {
    /// The tenant's namespaces (labelled `<tenant label>=<tenant>`) and the fields budgetd
    /// manages in them.
    async fn observe(&self, tenant: &TenantId) -> Result<Footprint, ClusterError>;

    /// Applies the changes in order. An object that does not exist is reported in
    /// [`ApplyReport::missing`], except the quota, which `SetQuota` creates.
    async fn apply(&self, changes: &[Change]) -> Result<ApplyReport, ClusterError>;
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn changes() -> ChangeSet {
        ChangeSet::new(vec![
            Change::SetQuota {
                namespace: "acme-prod".to_owned(),
                hard: QuotaHard::from([
                    ("pods".to_owned(), "10".to_owned()),
                    ("requests.memory".to_owned(), "8Gi".to_owned()),
                ]),
            },
            Change::DeleteQuota {
                namespace: "acme-dev".to_owned(),
            },
            Change::Scale {
                namespace: "acme-prod".to_owned(),
                kind: WorkloadKind::StatefulSet,
                name: "db".to_owned(),
                replicas: 0,
            },
            Change::SuspendCronJob {
                namespace: "acme-prod".to_owned(),
                name: "report".to_owned(),
                suspend: true,
            },
            Change::LabelSuspended {
                namespace: "acme-prod".to_owned(),
                suspended: true,
            },
        ])
    }

    #[test]
    fn a_change_set_reads_back_as_the_same_changes() {
        let set = changes();
        assert_eq!(ChangeSet::decode("forward", &set.to_json()), Ok(set));
        let empty = ChangeSet::default();
        assert_eq!(ChangeSet::decode("backward", &empty.to_json()), Ok(empty));
    }

    /// The actions in a ledger hold this form; a change to it would make them unreadable.
    #[test]
    fn the_stored_form_is_an_array_of_changes_tagged_by_op() {
        assert_eq!(
            changes().to_json(),
            json!([
                {"op": "set_quota", "namespace": "acme-prod",
                 "hard": {"pods": "10", "requests.memory": "8Gi"}},
                {"op": "delete_quota", "namespace": "acme-dev"},
                {"op": "scale", "namespace": "acme-prod", "kind": "stateful_set", "name": "db",
                 "replicas": 0},
                {"op": "suspend_cron_job", "namespace": "acme-prod", "name": "report",
                 "suspend": true},
                {"op": "label_suspended", "namespace": "acme-prod", "suspended": true},
            ])
        );
    }

    #[test]
    fn anything_else_is_corrupt_and_never_reads_as_no_changes() {
        let garbage = [
            json!({"garbage": true}),
            json!("[]"),
            json!(null),
            json!(42),
            json!([{"op": "explode", "namespace": "acme-prod"}]),
            json!([{"op": "scale", "namespace": "acme-prod", "name": "web"}]),
            json!([{"op": "set_quota", "namespace": "acme-prod", "hard": {"pods": 10}}]),
            json!([{"op": "label_suspended", "namespace": "acme-prod", "suspended": true}, 7]),
        ];
        for value in garbage {
            let err = ChangeSet::decode("backward", &value).unwrap_err();
            assert_eq!(err.record, "backward", "{value}");
            assert!(
                err.to_string()
                    .starts_with("the recorded backward changes cannot be read: "),
                "{err}"
            );
        }
    }

    #[test]
    fn an_applied_cluster_action_without_a_record_is_corrupt() {
        assert_eq!(
            ChangeSet::recorded("forward", ActionKind::Notify, None),
            Ok(ChangeSet::default())
        );
        for kind in [ActionKind::TightenQuota, ActionKind::Suspend] {
            let err = ChangeSet::recorded("backward", kind, None).unwrap_err();
            assert_eq!(
                err.reason,
                format!("nothing is recorded for a {} action", kind.as_str())
            );
            let set = changes();
            assert_eq!(
                ChangeSet::recorded("backward", kind, Some(&set.to_json())),
                Ok(set)
            );
            assert!(ChangeSet::recorded("backward", kind, Some(&json!({}))).is_err());
        }
    }
}
