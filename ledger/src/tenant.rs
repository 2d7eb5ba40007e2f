//! Tenants: identity, descriptive fields and the lifecycle state machine.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::budget::BudgetPeriod;
use crate::error::Invalid;
use crate::money::Money;
use crate::names::{self, SingleLine};

/// A tenant id: a DNS-1123 label, because it names Kubernetes namespaces and labels. Its text is
/// shared: a clone (one per entry of every window) is a reference count, not an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

impl TenantId {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::parse_field("id", value)
    }

    pub fn parse_field(field: &str, value: &str) -> Result<Self, Invalid> {
        names::dns1123_label(field, value)?;
        Ok(TenantId(Arc::from(value)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Equality, order and hash are those of the text, so sets of ids can be searched by `&str`.
impl Borrow<str> for TenantId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TenantId {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        TenantId::parse(s)
    }
}

/// Where a tenant's data must stay: a region name such as `eu` or `us-east-1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DataResidency(String);

impl DataResidency {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::parse_field("data_residency", value)
    }

    pub fn parse_field(field: &str, value: &str) -> Result<Self, Invalid> {
        names::dns1123_label(field, value)?;
        Ok(DataResidency(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Kubernetes namespace a tenant owns: a DNS-1123 label (at most 63 characters) that is not
/// a namespace of the cluster itself (`default`, `kube-*`, `openshift-*`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespaceName(String);

impl NamespaceName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        names::dns1123_label(field, value)?;
        if value == "default" || value.starts_with("kube-") || value.starts_with("openshift-") {
            return Err(Invalid::new(
                field,
                format!(
                    "{value:?} is a namespace of the cluster itself (default, kube-*, \
                     openshift-*) and cannot belong to a tenant"
                ),
            ));
        }
        Ok(NamespaceName(value.to_owned()))
    }

    /// A list of namespaces: at least one, at most [`NamespaceName::MAX`], no duplicates;
    /// sorted. Each is named `field[i]` in an error.
    pub fn parse_list(field: &str, values: &[String]) -> Result<Vec<Self>, Invalid> {
        if values.is_empty() {
            return Err(Invalid::new(field, "give at least one namespace"));
        }
        if values.len() > Self::MAX {
            return Err(Invalid::new(
                field,
                format!("a tenant owns at most {} namespaces", Self::MAX),
            ));
        }
        let mut out = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let name = Self::parse(&format!("{field}[{i}]"), value)?;
            if out.contains(&name) {
                return Err(Invalid::new(
                    format!("{field}[{i}]"),
                    format!("namespace {value:?} is listed twice"),
                ));
            }
            out.push(name);
        }
        out.sort();
        Ok(out)
    }

    /// The namespace a tenant created without naming any owns: its id.
    pub fn default_for(id: &TenantId) -> Result<Vec<Self>, Invalid> {
        Self::parse("namespaces", id.as_str())
            .map(|n| vec![n])
            .map_err(|e| {
                Invalid::new(
                    "namespaces",
                    format!(
                        "the tenant id cannot name its namespace ({}); give namespaces",
                        e.message
                    ),
                )
            })
    }

    pub const MAX: usize = 32;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NamespaceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who suspended a suspended tenant: an operator (`POST .../suspend`; only an operator's
/// resume lifts it) or budget enforcement (only the budget, or an exemption, lifts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuspendedBy {
    Operator,
    Budget,
}

impl SuspendedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            SuspendedBy::Operator => "operator",
            SuspendedBy::Budget => "budget",
        }
    }
}

/// A human-readable name: one line of 1 to 256 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(SingleLine);

impl DisplayName {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        SingleLine::parse("display_name", value, 256).map(DisplayName)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Who is responsible for the tenant (a team or an e-mail address): one line of 1 to 256
/// characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner(SingleLine);

impl Owner {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        SingleLine::parse("owner", value, 256).map(Owner)
    }

    /// An owner that must be an e-mail address (`local@domain.tld`), as a request's is: the
    /// person the platform team contacts.
    pub fn parse_email(value: &str) -> Result<Self, Invalid> {
        let owner = Self::parse(value)?;
        let valid = owner
            .as_str()
            .split_once('@')
            .is_some_and(|(local, domain)| {
                !local.is_empty()
                    && !local.contains(char::is_whitespace)
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
            });
        if valid {
            Ok(owner)
        } else {
            Err(Invalid::new(
                "owner",
                "must be an e-mail address such as ops@example.com",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Tenant labels. They follow Kubernetes label syntax, since they are carried onto the
/// tenant's namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    pub const MAX: usize = 64;

    pub fn parse(labels: BTreeMap<String, String>) -> Result<Self, Invalid> {
        if labels.len() > Self::MAX {
            return Err(Invalid::new(
                "labels",
                format!("at most {} labels are allowed", Self::MAX),
            ));
        }
        for (key, value) in &labels {
            let field = format!("labels.{key}");
            validate_label_key(&field, key)?;
            if !value.is_empty() {
                validate_label_name(&field, value, "value")?;
            }
        }
        Ok(Labels(labels))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect(),
        )
    }
}

fn validate_label_key(field: &str, key: &str) -> Result<(), Invalid> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            let prefix_ok = !prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .split('.')
                    .all(|part| names::dns1123_label(field, part).is_ok());
            if !prefix_ok {
                return Err(Invalid::new(
                    field,
                    format!("label key prefix {prefix:?} is not a DNS subdomain"),
                ));
            }
            name
        }
        None => key,
    };
    validate_label_name(field, name, "key")
}

fn validate_label_name(field: &str, value: &str, what: &str) -> Result<(), Invalid> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(Invalid::new(
            field,
            format!(
                "label {what} {value:?} is not valid (at most 63 characters of A-Z, a-z, 0-9, \
                 '-', '_' and '.', starting and ending with a letter or digit)"
            ),
        ))
    }
}

/// The tenant lifecycle.
///
/// ```text
///              ┌──► rejected
/// requested ───┤
///              └──► active ◄──► suspended
///                     │            │
///                     └──► offboarding ◄┘ ──► offboarded
/// ```
///
/// [`TRANSITIONS`] is the one table of what may follow what; the store checks every state
/// change against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TenantState {
    Requested,
    Active,
    Suspended,
    Offboarding,
    Offboarded,
    Rejected,
}

/// A lifecycle operation: what an API call or the enforcer asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleOp {
    Approve,
    Reject,
    Suspend,
    Resume,
    Offboard,
    CompleteOffboarding,
}

impl LifecycleOp {
    pub const ALL: [LifecycleOp; 6] = [
        LifecycleOp::Approve,
        LifecycleOp::Reject,
        LifecycleOp::Suspend,
        LifecycleOp::Resume,
        LifecycleOp::Offboard,
        LifecycleOp::CompleteOffboarding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleOp::Approve => "approve",
            LifecycleOp::Reject => "reject",
            LifecycleOp::Suspend => "suspend",
            LifecycleOp::Resume => "resume",
            LifecycleOp::Offboard => "offboard",
            LifecycleOp::CompleteOffboarding => "complete_offboarding",
        }
    }

    /// The state the operation leads to (each leads to one).
    pub fn target(self) -> TenantState {
        TRANSITIONS
            .iter()
            .find(|&&(_, op, _)| op == self)
            .map(|&(_, _, to)| to)
            .expect("every operation is in the table")
    }

    /// Whether asking again once done is a harmless no-op rather than a conflict.
    pub fn is_retryable(self) -> bool {
        !matches!(self, LifecycleOp::Approve | LifecycleOp::Reject)
    }

    /// The outbox event announcing the operation.
    pub fn event_type(self) -> &'static str {
        match self {
            LifecycleOp::Approve => "tenant.approved",
            LifecycleOp::Reject => "tenant.rejected",
            LifecycleOp::Suspend => "tenant.suspended",
            LifecycleOp::Resume => "tenant.resumed",
            LifecycleOp::Offboard => "tenant.offboarding",
            LifecycleOp::CompleteOffboarding => "tenant.offboarded",
        }
    }
}

/// The transition table: `(from, operation, to)`. Nothing else changes a tenant's state; a
/// tenant enters the lifecycle as `requested` (a request) or `active` (an operator's create).
pub const TRANSITIONS: [(TenantState, LifecycleOp, TenantState); 7] = {
    use LifecycleOp::*;
    use TenantState::*;
    [
        (Requested, Approve, Active),
        (Requested, Reject, Rejected),
        (Active, Suspend, Suspended),
        (Suspended, Resume, Active),
        (Active, Offboard, Offboarding),
        (Suspended, Offboard, Offboarding),
        (Offboarding, CompleteOffboarding, Offboarded),
    ]
};

/// A state change the lifecycle does not allow: where the tenant is, what was asked, and what
/// may follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRefused {
    pub current: TenantState,
    /// The operation or the state asked for (`approve`, `active`).
    pub requested: String,
    pub allowed: Vec<TenantState>,
}

impl fmt::Display for TransitionRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allowed: Vec<&str> = self.allowed.iter().map(|s| s.as_str()).collect();
        write!(
            f,
            "the tenant is {} and cannot {}; allowed next: {}",
            self.current,
            self.requested,
            if allowed.is_empty() {
                "none (final state)".to_owned()
            } else {
                allowed.join(", ")
            }
        )
    }
}

impl TenantState {
    pub const ALL: [TenantState; 6] = [
        TenantState::Requested,
        TenantState::Active,
        TenantState::Suspended,
        TenantState::Offboarding,
        TenantState::Offboarded,
        TenantState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Requested => "requested",
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
            TenantState::Offboarding => "offboarding",
            TenantState::Offboarded => "offboarded",
            TenantState::Rejected => "rejected",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| {
                Invalid::new(
                    "state",
                    format!(
                        "{value:?} is not a tenant state (requested, active, suspended, \
                         offboarding, offboarded, rejected)"
                    ),
                )
            })
    }

    /// Whether some operation takes this state to `next` (per [`TRANSITIONS`]).
    pub fn can_become(self, next: TenantState) -> bool {
        TRANSITIONS
            .iter()
            .any(|&(from, _, to)| from == self && to == next)
    }

    /// The states that may follow this one, in table order.
    pub fn allowed_next(self) -> Vec<TenantState> {
        let mut next: Vec<TenantState> = TRANSITIONS
            .iter()
            .filter(|&&(from, _, _)| from == self)
            .map(|&(_, _, to)| to)
            .collect();
        next.dedup();
        next
    }

    /// Where `op` takes a tenant in this state, or why it cannot.
    pub fn apply(self, op: LifecycleOp) -> Result<TenantState, TransitionRefused> {
        TRANSITIONS
            .iter()
            .find(|&&(from, o, _)| from == self && o == op)
            .map(|&(_, _, to)| to)
            .ok_or_else(|| self.refuse(op.as_str()))
    }

    /// The operation that takes this state to `to` (the enforcer asks by target state), or why
    /// there is none.
    pub fn op_to(self, to: TenantState) -> Result<LifecycleOp, TransitionRefused> {
        TRANSITIONS
            .iter()
            .find(|&&(from, _, t)| from == self && t == to)
            .map(|&(_, op, _)| op)
            .ok_or_else(|| self.refuse(&format!("become {to}")))
    }

    /// What asking for `op` does: the next state, `None` when the tenant is already where `op`
    /// leads and `op` may be retried (suspend, resume, offboard: a retried request is
    /// harmless), or why it cannot. Approve and reject are decisions: asking twice is refused.
    pub fn decide(self, op: LifecycleOp) -> Result<Option<TenantState>, TransitionRefused> {
        match self.apply(op) {
            Ok(next) => Ok(Some(next)),
            Err(_) if op.is_retryable() && op.target() == self => Ok(None),
            Err(refused) => Err(refused),
        }
    }

    /// What asking for the state `to` does (the enforcer asks by target state): the operation
    /// and `to`, `None` when the tenant already is `to`, or why it cannot.
    pub fn decide_target(
        self,
        to: TenantState,
    ) -> Result<Option<(LifecycleOp, TenantState)>, TransitionRefused> {
        if self == to {
            return Ok(None);
        }
        self.op_to(to).map(|op| Some((op, to)))
    }

    fn refuse(self, requested: &str) -> TransitionRefused {
        TransitionRefused {
            current: self,
            requested: requested.to_owned(),
            allowed: self.allowed_next(),
        }
    }

    /// Descriptive fields may change only while the tenant is live (requested, active,
    /// suspended).
    pub fn is_mutable(self) -> bool {
        matches!(
            self,
            TenantState::Requested | TenantState::Active | TenantState::Suspended
        )
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The group (an identity-provider group name) that owns the tenant: bound to the tenant's
/// namespaced role by the blueprint. One line of 1 to 256 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerGroup(SingleLine);

impl OwnerGroup {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        SingleLine::parse("owner_group", value, 256).map(OwnerGroup)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// The name of a quota profile (`[lifecycle.quota_profiles]`): a DNS-1123 label.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaProfileName(String);

impl QuotaProfileName {
    pub fn parse(field: &str, value: &str) -> Result<Self, Invalid> {
        names::dns1123_label(field, value)?;
        Ok(QuotaProfileName(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QuotaProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub id: TenantId,
    pub display_name: DisplayName,
    pub owner: Owner,
    pub data_residency: DataResidency,
    pub labels: Labels,
    /// The group bound to the tenant's role in its namespaces; none for tenants created before
    /// requests carried one.
    pub owner_group: Option<OwnerGroup>,
    /// The quota profile the blueprint applies; none for tenants created before profiles.
    pub quota_profile: Option<QuotaProfileName>,
    /// The namespaces the tenant owns (sorted); empty: one named like its id.
    pub namespaces: Vec<NamespaceName>,
}

/// A partial update. Data residency is fixed at creation: moving a tenant's data between
/// regions is a migration, not an edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    pub display_name: Option<DisplayName>,
    pub owner: Option<Owner>,
    pub labels: Option<Labels>,
    /// `Some(None)` clears the owner group.
    pub owner_group: Option<Option<OwnerGroup>>,
    /// Checked against the configured profiles by the caller.
    pub quota_profile: Option<QuotaProfileName>,
    /// The full new list (at least one, sorted).
    pub namespaces: Option<Vec<NamespaceName>>,
}

impl TenantPatch {
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none()
            && self.owner.is_none()
            && self.labels.is_none()
            && self.owner_group.is_none()
            && self.quota_profile.is_none()
            && self.namespaces.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: DisplayName,
    pub owner: Owner,
    pub data_residency: DataResidency,
    pub labels: Labels,
    pub owner_group: Option<OwnerGroup>,
    pub quota_profile: Option<QuotaProfileName>,
    pub state: TenantState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_changed_at: DateTime<Utc>,
    /// Sorted. Empty for a requested or rejected tenant (a request's namespaces are claimed
    /// when it is approved).
    pub namespaces: Vec<NamespaceName>,
    /// Set while the tenant is isolated for an incident (deny-all NetworkPolicy).
    pub isolation: Option<Isolation>,
    /// Who suspended it, while it is suspended.
    pub suspended_by: Option<SuspendedBy>,
}

/// Why and since when a tenant is isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    pub at: DateTime<Utc>,
    pub by: String,
    pub reason: String,
}

impl Tenant {
    /// The record form used in audit entries and events.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.as_str(),
            "display_name": self.display_name.as_str(),
            "owner": self.owner.as_str(),
            "data_residency": self.data_residency.as_str(),
            "labels": self.labels.to_json(),
            "owner_group": self.owner_group.as_ref().map(OwnerGroup::as_str),
            "quota_profile": self.quota_profile.as_ref().map(QuotaProfileName::as_str),
            "state": self.state.as_str(),
            "namespaces": self.namespaces.iter().map(NamespaceName::as_str).collect::<Vec<_>>(),
            "isolated": self.isolation.is_some(),
            "suspended_by": self.suspended_by.map(SuspendedBy::as_str),
        })
    }

    pub(crate) fn apply(&mut self, patch: &TenantPatch) {
        if let Some(name) = &patch.display_name {
            self.display_name = name.clone();
        }
        if let Some(owner) = &patch.owner {
            self.owner = owner.clone();
        }
        if let Some(labels) = &patch.labels {
            self.labels = labels.clone();
        }
        if let Some(group) = &patch.owner_group {
            self.owner_group = group.clone();
        }
        if let Some(profile) = &patch.quota_profile {
            self.quota_profile = Some(profile.clone());
        }
        if let Some(namespaces) = &patch.namespaces {
            self.namespaces = namespaces.clone();
        }
    }
}

/// A self-service request for a tenant: the tenant as it will be (state `requested` until it
/// is decided), the budget it starts with, and why it is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenantRequest {
    /// `owner_group` and `quota_profile` are always set for a request.
    pub tenant: NewTenant,
    pub budget: Money,
    pub period: BudgetPeriod,
    pub justification: Justification,
}

/// Why a tenant is needed: one line of 1 to 2000 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Justification(SingleLine);

impl Justification {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        SingleLine::parse("justification", value, 2000).map(Justification)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Where a request stands. A request is decided once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Requested,
    Approved,
    Rejected,
}

impl RequestState {
    pub const ALL: [RequestState; 3] = [
        RequestState::Requested,
        RequestState::Approved,
        RequestState::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Requested => "requested",
            RequestState::Approved => "approved",
            RequestState::Rejected => "rejected",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == value)
            .ok_or_else(|| {
                Invalid::new(
                    "state",
                    format!("{value:?} is not a request state (requested, approved, rejected)"),
                )
            })
    }
}

/// A decision on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub state: RequestState,
    pub by: String,
    pub at: DateTime<Utc>,
    pub reason: String,
}

/// A request as recorded, with the tenant it reserves (or became).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantRequest {
    pub tenant: Tenant,
    pub budget: Money,
    pub period: BudgetPeriod,
    pub justification: Justification,
    /// The namespaces asked for (sorted; claimed on approval): the tenant's own list stays
    /// empty until then.
    pub namespaces: Vec<NamespaceName>,
    /// The actor (token name) who asked: the one who may not approve it.
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub decision: Option<Decision>,
}

impl TenantRequest {
    pub fn state(&self) -> RequestState {
        self.decision
            .as_ref()
            .map_or(RequestState::Requested, |d| d.state)
    }

    /// The record form used in audit entries and events: the tenant's full state with the
    /// budget and the request's details.
    pub fn to_json(&self) -> Value {
        json!({
            "tenant": self.tenant.to_json(),
            "budget": {
                "amount": self.budget.amount.to_string(),
                "currency": self.budget.currency.code(),
                "period": self.period.as_str(),
            },
            "justification": self.justification.as_str(),
            "namespaces": self.namespaces.iter().map(NamespaceName::as_str).collect::<Vec<_>>(),
            "requested_by": self.requested_by,
            "state": self.state().as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lifecycle_transitions() {
        use TenantState::*;
        let allowed = [
            (Requested, Active),
            (Requested, Rejected),
            (Active, Suspended),
            (Suspended, Active),
            (Active, Offboarding),
            (Suspended, Offboarding),
            (Offboarding, Offboarded),
        ];
        for from in TenantState::ALL {
            for to in TenantState::ALL {
                assert_eq!(
                    from.can_become(to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn every_operation_has_one_target_and_refusals_say_what_may_follow() {
        for op in LifecycleOp::ALL {
            let targets: Vec<_> = TRANSITIONS
                .iter()
                .filter(|&&(_, o, _)| o == op)
                .map(|&(_, _, to)| to)
                .collect();
            assert!(targets.iter().all(|&t| t == op.target()), "{op:?}");
        }
        let refused = TenantState::Active.apply(LifecycleOp::Approve).unwrap_err();
        assert_eq!(refused.current, TenantState::Active);
        assert_eq!(
            refused.allowed,
            [TenantState::Suspended, TenantState::Offboarding]
        );
        assert_eq!(
            refused.to_string(),
            "the tenant is active and cannot approve; allowed next: suspended, offboarding"
        );
        assert!(TenantState::Rejected.allowed_next().is_empty());
        assert!(TenantState::Offboarded.allowed_next().is_empty());
        // Retried operations are no-ops; decisions are not.
        assert_eq!(
            TenantState::Suspended.decide(LifecycleOp::Suspend),
            Ok(None)
        );
        assert_eq!(TenantState::Active.decide(LifecycleOp::Resume), Ok(None));
        assert!(TenantState::Active.decide(LifecycleOp::Approve).is_err());
        assert!(TenantState::Rejected.decide(LifecycleOp::Reject).is_err());
        assert!(TenantState::Requested
            .decide(LifecycleOp::Offboard)
            .is_err());
    }

    /// An API-level call: what a route or the enforcer asks of the lifecycle.
    #[derive(Debug, Clone, Copy)]
    enum Call {
        Op(LifecycleOp),
        /// The enforcer asks for a state (suspend, restore).
        Target(TenantState),
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            (0..LifecycleOp::ALL.len()).prop_map(|i| Call::Op(LifecycleOp::ALL[i])),
            (0..TenantState::ALL.len()).prop_map(|i| Call::Target(TenantState::ALL[i])),
        ]
    }

    proptest! {
        /// No sequence of calls, from a request or from an operator's create, reaches a state
        /// the table forbids; a refusal changes nothing and names what may follow; the final
        /// states stay final; nothing goes back to `requested`; a request is decided once.
        #[test]
        fn no_call_sequence_leaves_the_transition_table(
            requested in any::<bool>(),
            calls in proptest::collection::vec(call(), 0..40),
        ) {
            let mut state = if requested { TenantState::Requested } else { TenantState::Active };
            let mut decided = false;
            for call in calls {
                let before = state;
                let outcome = match call {
                    Call::Op(op) => before.decide(op).map(|next| next.map(|n| (op, n))),
                    Call::Target(to) => before.decide_target(to),
                };
                match outcome {
                    Ok(Some((op, next))) => {
                        prop_assert!(
                            TRANSITIONS.contains(&(before, op, next)),
                            "{before} -{op:?}-> {next} is not in the table"
                        );
                        prop_assert!(before.can_become(next));
                        if matches!(op, LifecycleOp::Approve | LifecycleOp::Reject) {
                            prop_assert!(!decided, "a request was decided twice");
                            decided = true;
                        }
                        state = next;
                    }
                    Ok(None) => {
                        // A retried call: only where the call leads anyway.
                        let target = match call {
                            Call::Op(op) => op.target(),
                            Call::Target(to) => to,
                        };
                        prop_assert_eq!(target, before);
                    }
                    Err(refused) => {
                        prop_assert_eq!(refused.current, before);
                        prop_assert_eq!(refused.allowed, before.allowed_next());
                    }
                }
                prop_assert!(state == before || state != TenantState::Requested);
                if matches!(before, TenantState::Rejected | TenantState::Offboarded) {
                    prop_assert_eq!(state, before);
                }
            }
        }
    }

    #[test]
    fn namespaces_are_labels_and_not_the_clusters_own() {
        for good in [
            "acme",
            "acme-prod",
            "a",
            &"a".repeat(63),
            "kube",
            "defaults",
        ] {
            assert!(NamespaceName::parse("ns", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "default",
            "kube-system",
            "kube-public",
            "openshift-x",
            "Acme",
            "a_b",
            &"a".repeat(64),
        ] {
            assert_eq!(
                NamespaceName::parse("ns", bad).unwrap_err().field,
                "ns",
                "{bad}"
            );
        }
        let list = |v: &[&str]| {
            NamespaceName::parse_list(
                "namespaces",
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let sorted = list(&["b", "a"]).unwrap();
        assert_eq!(
            sorted.iter().map(NamespaceName::as_str).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(list(&[]).unwrap_err().field, "namespaces");
        assert_eq!(list(&["a", "a"]).unwrap_err().field, "namespaces[1]");
        assert_eq!(list(&["a", "kube-x"]).unwrap_err().field, "namespaces[1]");
        let id = TenantId::parse("acme").unwrap();
        assert_eq!(NamespaceName::default_for(&id).unwrap()[0].as_str(), "acme");
        let system = TenantId::parse("default").unwrap();
        assert_eq!(
            NamespaceName::default_for(&system).unwrap_err().field,
            "namespaces"
        );
    }

    #[test]
    fn states_round_trip() {
        for s in TenantState::ALL {
            assert_eq!(TenantState::parse(s.as_str()).unwrap(), s);
        }
        assert!(TenantState::parse("deleted").is_err());
    }

    #[test]
    fn labels_follow_kubernetes_syntax() {
        let ok = |k: &str, v: &str| Labels::parse([(k.to_owned(), v.to_owned())].into());
        assert!(ok("team", "payments").is_ok());
        assert!(ok("example.com/cost-center", "CC_42.a").is_ok());
        assert!(ok("empty", "").is_ok());
        assert_eq!(ok("bad key", "x").unwrap_err().field, "labels.bad key");
        assert!(ok("team", "-x").is_err());
        assert!(ok("team", &"x".repeat(64)).is_err());
        assert!(ok("Bad_Prefix/x", "y").is_err());
        assert!(ok("/x", "y").is_err());
        let many: BTreeMap<_, _> = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(Labels::parse(many).unwrap_err().field, "labels");
    }
}
