//! Tenants: identity, descriptive fields and the lifecycle state machine.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::error::Invalid;
use crate::names::{self, SingleLine};

/// A tenant id: a DNS-1123 label, because it names Kubernetes namespaces and labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        Self::parse_field("id", value)
    }

    pub fn parse_field(field: &str, value: &str) -> Result<Self, Invalid> {
        names::dns1123_label(field, value)?;
        Ok(TenantId(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataResidency(String);

impl DataResidency {
    pub fn parse(value: &str) -> Result<Self, Invalid> {
        names::dns1123_label("data_residency", value)?;
        Ok(DataResidency(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
/// requested ──► active ◄──► suspended
///     │           │            │
///     └───────────┴──► offboarding ──► offboarded
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantState {
    Requested,
    Active,
    Suspended,
    Offboarding,
    Offboarded,
}

impl TenantState {
    pub const ALL: [TenantState; 5] = [
        TenantState::Requested,
        TenantState::Active,
        TenantState::Suspended,
        TenantState::Offboarding,
        TenantState::Offboarded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Requested => "requested",
            TenantState::Active => "active",
            TenantState::Suspended => "suspended",
            TenantState::Offboarding => "offboarding",
            TenantState::Offboarded => "offboarded",
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
                         offboarding, offboarded)"
                    ),
                )
            })
    }

    pub fn can_become(self, next: TenantState) -> bool {
        use TenantState::*;
        matches!(
            (self, next),
            (Requested, Active)
                | (Active, Suspended)
                | (Suspended, Active)
                | (Requested | Active | Suspended, Offboarding)
                | (Offboarding, Offboarded)
        )
    }

    /// Descriptive fields may change only while the tenant is not being offboarded.
    pub fn is_mutable(self) -> bool {
        !matches!(self, TenantState::Offboarding | TenantState::Offboarded)
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTenant {
    pub id: TenantId,
    pub display_name: DisplayName,
    pub owner: Owner,
    pub data_residency: DataResidency,
    pub labels: Labels,
}

/// A partial update. Data residency is fixed at creation: moving a tenant's data between
/// regions is a migration, not an edit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantPatch {
    pub display_name: Option<DisplayName>,
    pub owner: Option<Owner>,
    pub labels: Option<Labels>,
}

impl TenantPatch {
    pub fn is_empty(&self) -> bool {
        self.display_name.is_none() && self.owner.is_none() && self.labels.is_none()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub display_name: DisplayName,
    pub owner: Owner,
    pub data_residency: DataResidency,
    pub labels: Labels,
    pub state: TenantState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub state_changed_at: DateTime<Utc>,
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
            "state": self.state.as_str(),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_transitions() {
        use TenantState::*;
        let allowed = [
            (Requested, Active),
            (Active, Suspended),
            (Suspended, Active),
            (Requested, Offboarding),
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
