//! The enforcement policy: ladders of steps, hysteresis, exemptions, dry run.
//!
//! A ladder step says: when `on` (actual spend or the forecast) reaches `at` percent of the
//! budget, take `action` (notify with a severity, tighten the quota, suspend), automatically or
//! after an operator's approval, once the condition has held for `grace_seconds`.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use chrono::{DateTime, Utc};
use ledger::enforcement::ActionKind;
use ledger::tenant::TenantId;
use ledger::Invalid;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::alerts::Severity;
use crate::cluster::{QuotaHard, Tighten};
use crate::quantity::Quantity;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    Actual,
    Forecast,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Actual => "actual",
            Basis::Forecast => "forecast",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepAction {
    Notify(Severity),
    TightenQuota(Tighten),
    Suspend,
}

impl StepAction {
    pub fn kind(&self) -> ActionKind {
        match self {
            StepAction::Notify(_) => ActionKind::Notify,
            StepAction::TightenQuota(_) => ActionKind::TightenQuota,
            StepAction::Suspend => ActionKind::Suspend,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approval {
    Auto,
    Required,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub at_percent: u32,
    pub on: Basis,
    pub action: StepAction,
    pub approval: Approval,
    pub grace_seconds: u32,
}

impl Step {
    /// The rung's identity in the ledger, e.g. `actual:100:tighten_quota`. Stable across
    /// restarts and reorderings of the configured ladder.
    pub fn key(&self) -> String {
        let detail = match &self.action {
            StepAction::Notify(severity) => format!(":{severity}"),
            _ => String::new(),
        };
        format!(
            "{}:{}:{}{detail}",
            self.on.as_str(),
            self.at_percent,
            self.action.kind().as_str()
        )
    }

    /// The step as recorded with each action it opens.
    pub fn to_json(&self) -> Value {
        let mut step = json!({
            "at": self.at_percent,
            "on": self.on.as_str(),
            "action": self.action.kind().as_str(),
            "approval": match self.approval { Approval::Auto => "auto", Approval::Required => "required" },
            "grace_seconds": self.grace_seconds,
        });
        match &self.action {
            StepAction::Notify(severity) => step["severity"] = json!(severity.as_str()),
            StepAction::TightenQuota(Tighten::Factor(f)) => step["factor"] = json!(f.to_string()),
            StepAction::TightenQuota(Tighten::Profile { name, hard }) => {
                step["profile"] = json!(name);
                step["hard"] = json!(hard);
            }
            StepAction::Suspend => {}
        }
        step
    }

    pub fn describe(&self) -> String {
        let action = match &self.action {
            StepAction::Notify(severity) => format!("notify {severity}"),
            StepAction::TightenQuota(Tighten::Factor(f)) => format!("tighten quota ×{f}"),
            StepAction::TightenQuota(Tighten::Profile { name, .. }) => {
                format!("tighten quota to profile {name}")
            }
            StepAction::Suspend => "suspend".to_owned(),
        };
        let approval = match self.approval {
            Approval::Auto => "",
            Approval::Required => ", approval required",
        };
        format!(
            "{} ≥ {}%: {action}{approval}",
            self.on.as_str(),
            self.at_percent
        )
    }
}

/// A step as written in the configuration (or an API request).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub at: u32,
    pub on: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    #[serde(default)]
    pub grace_seconds: u32,
}

/// A tenant's ladder: 1 to 32 steps, each rung at most once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ladder {
    steps: Vec<Step>,
    /// `steps[i].key()`, computed once: planning compares every open action's rung with them
    /// each cycle, for every tenant.
    keys: Vec<String>,
}

impl Ladder {
    pub fn new(steps: Vec<Step>) -> Result<Ladder, Invalid> {
        if steps.is_empty() || steps.len() > 32 {
            return Err(Invalid::new("ladder", "give 1 to 32 steps"));
        }
        let mut keys = BTreeSet::new();
        for (i, step) in steps.iter().enumerate() {
            if !(1..=1000).contains(&step.at_percent) {
                return Err(Invalid::new(
                    format!("ladder[{i}].at"),
                    format!("{} is outside 1..=1000 percent", step.at_percent),
                ));
            }
            if !keys.insert(step.key()) {
                return Err(Invalid::new(
                    format!("ladder[{i}]"),
                    format!("step {} appears twice", step.key()),
                ));
            }
            if step.grace_seconds > 30 * 86_400 {
                return Err(Invalid::new(
                    format!("ladder[{i}].grace_seconds"),
                    "at most 30 days",
                ));
            }
        }
        Ok(Ladder::of(steps))
    }

    fn of(steps: Vec<Step>) -> Ladder {
        let keys = steps.iter().map(Step::key).collect();
        Ladder { steps, keys }
    }

    /// Parses configured steps; `profiles` are the named quota profiles they may refer to.
    pub fn parse(
        field: &str,
        specs: &[StepSpec],
        profiles: &BTreeMap<String, QuotaHard>,
    ) -> Result<Ladder, Invalid> {
        let steps = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| parse_step(&format!("{field}[{i}]"), spec, profiles))
            .collect::<Result<Vec<_>, _>>()?;
        Ladder::new(steps)
            .map_err(|e| Invalid::new(format!("{field}{}", &e.field["ladder".len()..]), e.message))
    }

    /// The default ladder: forecast ≥ 100% notify warning; actual ≥ 80% notify warning;
    /// actual ≥ 100% notify critical and tighten the quota; actual ≥ 120% suspend, with
    /// approval.
    pub fn default_with(tighten: Tighten) -> Ladder {
        let step = |at_percent, on, action, approval| Step {
            at_percent,
            on,
            action,
            approval,
            grace_seconds: 0,
        };
        Ladder::of(vec![
            step(
                100,
                Basis::Forecast,
                StepAction::Notify(Severity::Warning),
                Approval::Auto,
            ),
            step(
                80,
                Basis::Actual,
                StepAction::Notify(Severity::Warning),
                Approval::Auto,
            ),
            step(
                100,
                Basis::Actual,
                StepAction::Notify(Severity::Critical),
                Approval::Auto,
            ),
            step(
                100,
                Basis::Actual,
                StepAction::TightenQuota(tighten),
                Approval::Auto,
            ),
            step(120, Basis::Actual, StepAction::Suspend, Approval::Required),
        ])
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// Each step with its key.
    pub fn keyed_steps(&self) -> impl Iterator<Item = (&str, &Step)> {
        self.keys.iter().map(String::as_str).zip(&self.steps)
    }

    pub fn find(&self, key: &str) -> Option<&Step> {
        self.keyed_steps().find(|(k, _)| *k == key).map(|(_, s)| s)
    }
}

fn parse_step(
    field: &str,
    spec: &StepSpec,
    profiles: &BTreeMap<String, QuotaHard>,
) -> Result<Step, Invalid> {
    let on = match spec.on.as_str() {
        "actual" => Basis::Actual,
        "forecast" => Basis::Forecast,
        other => {
            return Err(Invalid::new(
                format!("{field}.on"),
                format!("{other:?} is not a basis (actual, forecast)"),
            ))
        }
    };
    let unexpected = |key: &str, value: bool| -> Result<(), Invalid> {
        if value {
            Err(Invalid::new(
                format!("{field}.{key}"),
                format!("not allowed for action {:?}", spec.action),
            ))
        } else {
            Ok(())
        }
    };
    let action = match spec.action.as_str() {
        "notify" => {
            unexpected("factor", spec.factor.is_some())?;
            unexpected("profile", spec.profile.is_some())?;
            let severity = spec.severity.as_deref().unwrap_or("warning");
            StepAction::Notify(Severity::parse(severity).ok_or_else(|| {
                Invalid::new(
                    format!("{field}.severity"),
                    format!("{severity:?} is not a severity (info, warning, critical)"),
                )
            })?)
        }
        "tighten_quota" => {
            unexpected("severity", spec.severity.is_some())?;
            match (&spec.factor, &spec.profile) {
                (Some(factor), None) => {
                    let f = Decimal::from_str(factor)
                        .ok()
                        .filter(|f| *f > Decimal::ZERO && *f < Decimal::ONE)
                        .ok_or_else(|| {
                            Invalid::new(
                                format!("{field}.factor"),
                                format!("{factor:?} is not a decimal between 0 and 1 (exclusive)"),
                            )
                        })?;
                    StepAction::TightenQuota(Tighten::Factor(f))
                }
                (None, Some(name)) => {
                    let hard = profiles.get(name).ok_or_else(|| {
                        Invalid::new(
                            format!("{field}.profile"),
                            format!("no quota profile named {name:?}"),
                        )
                    })?;
                    StepAction::TightenQuota(Tighten::Profile {
                        name: name.clone(),
                        hard: hard.clone(),
                    })
                }
                _ => {
                    return Err(Invalid::new(
                        field,
                        "tighten_quota needs exactly one of `factor` or `profile`",
                    ))
                }
            }
        }
        "suspend" => {
            unexpected("severity", spec.severity.is_some())?;
            unexpected("factor", spec.factor.is_some())?;
            unexpected("profile", spec.profile.is_some())?;
            StepAction::Suspend
        }
        other => {
            return Err(Invalid::new(
                format!("{field}.action"),
                format!("{other:?} is not an action (notify, tighten_quota, suspend)"),
            ))
        }
    };
    let approval = match spec.approval.as_deref() {
        None | Some("auto") => Approval::Auto,
        Some("required") => Approval::Required,
        Some(other) => {
            return Err(Invalid::new(
                format!("{field}.approval"),
                format!("{other:?} is not an approval mode (auto, required)"),
            ))
        }
    };
    Ok(Step {
        at_percent: spec.at,
        on,
        action,
        approval,
        grace_seconds: spec.grace_seconds,
    })
}

/// Validates a quota profile: resource names and Kubernetes quantities.
pub fn parse_profile(field: &str, hard: &BTreeMap<String, String>) -> Result<QuotaHard, Invalid> {
    if hard.is_empty() {
        return Err(Invalid::new(
            field,
            "a quota profile needs at least one resource",
        ));
    }
    for (resource, value) in hard {
        let name_ok = !resource.is_empty()
            && resource.len() <= 253
            && resource
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._/".contains(c));
        if !name_ok {
            return Err(Invalid::new(
                format!("{field}.{resource}"),
                "not a resource name",
            ));
        }
        Quantity::parse(value).map_err(|_| {
            Invalid::new(
                format!("{field}.{resource}"),
                format!("{value:?} is not a Kubernetes quantity"),
            )
        })?;
    }
    Ok(hard.clone())
}

/// Everything `plan` decides by, besides the status and the cluster.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default_ladder: Ladder,
    pub ladders: BTreeMap<TenantId, Ladder>,
    /// A rung that is open stays open until its value falls this many percentage points
    /// below its threshold, so a tenant hovering at a boundary does not flap.
    pub hysteresis_percent: Decimal,
    /// Exemptions in force: the tenant's open actions are closed (restored) and no new ones
    /// opened until the time given.
    pub exemptions: BTreeMap<TenantId, DateTime<Utc>>,
    /// Shadow mode: actions are recorded as `planned` and never applied.
    pub dry_run: bool,
}

impl Policy {
    pub fn ladder(&self, tenant: &TenantId) -> &Ladder {
        self.ladders.get(tenant).unwrap_or(&self.default_ladder)
    }

    pub fn is_exempt(&self, tenant: &TenantId, now: DateTime<Utc>) -> bool {
        self.exemptions
            .get(tenant)
            .is_some_and(|until| *until > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(at: u32, on: &str, action: &str) -> StepSpec {
        StepSpec {
            at,
            on: on.to_owned(),
            action: action.to_owned(),
            severity: None,
            factor: None,
            profile: None,
            approval: None,
            grace_seconds: 0,
        }
    }

    #[test]
    fn parses_steps_and_names_the_bad_field() {
        let profiles = BTreeMap::from([(
            "tight".to_owned(),
            QuotaHard::from([("cpu".to_owned(), "2".to_owned())]),
        )]);
        let mut tighten = spec(100, "actual", "tighten_quota");
        tighten.profile = Some("tight".to_owned());
        let mut suspend = spec(120, "actual", "suspend");
        suspend.approval = Some("required".to_owned());
        let ladder = Ladder::parse(
            "enforcement.ladder",
            &[spec(80, "actual", "notify"), tighten, suspend],
            &profiles,
        )
        .unwrap();
        assert_eq!(
            ladder.steps().iter().map(Step::key).collect::<Vec<_>>(),
            [
                "actual:80:notify:warning",
                "actual:100:tighten_quota",
                "actual:120:suspend"
            ]
        );
        assert_eq!(ladder.steps()[2].approval, Approval::Required);

        let cases: Vec<(StepSpec, &str)> = vec![
            (spec(80, "spend", "notify"), "enforcement.ladder[0].on"),
            (spec(80, "actual", "page"), "enforcement.ladder[0].action"),
            (spec(0, "actual", "notify"), "enforcement.ladder[0].at"),
            (
                StepSpec {
                    factor: Some("1.5".into()),
                    ..spec(100, "actual", "tighten_quota")
                },
                "enforcement.ladder[0].factor",
            ),
            (
                StepSpec {
                    profile: Some("nope".into()),
                    ..spec(100, "actual", "tighten_quota")
                },
                "enforcement.ladder[0].profile",
            ),
            (
                spec(100, "actual", "tighten_quota"),
                "enforcement.ladder[0]",
            ),
            (
                StepSpec {
                    severity: Some("loud".into()),
                    ..spec(100, "actual", "notify")
                },
                "enforcement.ladder[0].severity",
            ),
            (
                StepSpec {
                    factor: Some("0.5".into()),
                    ..spec(100, "actual", "suspend")
                },
                "enforcement.ladder[0].factor",
            ),
        ];
        for (bad, field) in cases {
            let err = Ladder::parse("enforcement.ladder", &[bad], &profiles).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let dup = Ladder::parse(
            "enforcement.ladder",
            &[spec(80, "actual", "notify"), spec(80, "actual", "notify")],
            &profiles,
        )
        .unwrap_err();
        assert_eq!(dup.field, "enforcement.ladder[1]");
    }
}
