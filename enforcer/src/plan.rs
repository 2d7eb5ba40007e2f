//! The decision: `plan(status, policy, cluster, open actions, now) -> Vec<Action>`, and the
//! concrete changes a step makes to what the cluster shows ([`effect`]). No I/O.
//!
//! Level-triggered: from the budget status of every tenant, its open actions (one per ladder
//! rung at most, as the ledger's [`OpenRung`]) and what the cluster shows, compute what to open,
//! apply, close and repair. Applying the plan and planning again yields nothing new. A tenant
//! whose data is incomplete gets no action at all, not even a restore: the enforcer never acts
//! on a guess. Nor does it act on a record it cannot read: an open action whose recorded
//! changes do not decode is reported ([`Action::Corrupt`]) and otherwise left alone.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger::enforcement::{ActionKind, ActionState, BudgetStatus, OpenRung};
use ledger::tenant::{TenantId, TenantState};
use rust_decimal::Decimal;

use crate::cluster::{diff, Change, ChangeSet, CorruptChanges, Footprint, FootprintError};
use crate::policy::{Approval, Basis, Policy, Step, StepAction};

/// What the cluster shows, for the tenants with applied cluster actions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterState {
    pub footprints: BTreeMap<TenantId, Footprint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Open a rung: record the action (`planned`, `pending` or `scheduled`), and apply it
    /// right away if `apply_now`.
    Open {
        tenant: TenantId,
        step: Step,
        period_start: NaiveDate,
        state: ActionState,
        not_before: DateTime<Utc>,
        apply_now: bool,
        reason: String,
    },
    /// Apply an approved or scheduled action whose grace period has passed, as its `step` of
    /// the tenant's ladder says.
    Apply {
        id: i64,
        tenant: TenantId,
        step: Step,
    },
    /// Close an action whose condition no longer holds: restore what it changed if it was
    /// applied, cancel it otherwise.
    Close {
        id: i64,
        tenant: TenantId,
        kind: ActionKind,
        was_applied: bool,
        reason: String,
    },
    /// Re-apply the changes of applied actions that someone undid in the cluster.
    Repair {
        id: i64,
        tenant: TenantId,
        changes: ChangeSet,
    },
    /// The action's recorded changes cannot be read: record the failure and raise the alarm.
    /// Until an operator repairs the record the action keeps its rung and is not applied, and
    /// the tenant's drift is not repaired.
    Corrupt {
        id: i64,
        tenant: TenantId,
        kind: ActionKind,
        error: CorruptChanges,
    },
}

impl Action {
    pub fn tenant(&self) -> &TenantId {
        match self {
            Action::Open { tenant, .. }
            | Action::Apply { tenant, .. }
            | Action::Close { tenant, .. }
            | Action::Repair { tenant, .. }
            | Action::Corrupt { tenant, .. } => tenant,
        }
    }
}

fn value(status: &BudgetStatus, basis: Basis) -> Decimal {
    match basis {
        Basis::Actual => status.spent,
        Basis::Forecast => status.forecast,
    }
}

/// Whether a step's condition holds. An open rung holds until its value falls
/// `hysteresis_percent` points below the threshold.
fn holds(status: &BudgetStatus, step: &Step, open: bool, hysteresis_percent: Decimal) -> bool {
    let v = value(status, step.on);
    if status.budget.amount.is_zero() {
        return v > Decimal::ZERO;
    }
    let mut threshold = Decimal::from(step.at_percent);
    if open {
        threshold -= hysteresis_percent;
    }
    v * Decimal::ONE_HUNDRED >= status.budget.amount * threshold
}

fn reason(status: &BudgetStatus, step: &Step) -> String {
    let v = value(status, step.on);
    let percent = status
        .percent_of_budget(v)
        .map_or("∞".to_owned(), |p| p.to_string());
    let currency = status.budget.currency;
    format!(
        "{} {} {} is {percent}% of the {} {} budget for the period from {} ({})",
        step.on.as_str(),
        ledger::money::format_amount(v, currency),
        currency.code(),
        ledger::money::format_amount(status.budget.amount, currency),
        currency.code(),
        status.period_start,
        step.describe(),
    )
}

/// Whether new actions of this kind may be opened for a tenant in `state`. A suspension opens
/// only for an active tenant: budgetd never takes over (and later resumes) a suspension an
/// operator made.
fn may_open(kind: ActionKind, state: TenantState) -> bool {
    match kind {
        ActionKind::Suspend => state == TenantState::Active,
        ActionKind::Notify | ActionKind::TightenQuota => {
            matches!(state, TenantState::Active | TenantState::Suspended)
        }
    }
}

/// What applying a step does to a tenant's cluster: the concrete changes from what it shows
/// to the step's target, and their exact inverse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effect {
    pub forward: ChangeSet,
    /// The prior values of exactly the fields `forward` sets.
    pub backward: ChangeSet,
}

/// The changes `step` makes to `observed` (target − observed) and back. The executor observes
/// the tenant, records this effect, then applies `forward`; notifications change nothing.
pub fn effect(step: &StepAction, observed: &Footprint) -> Result<Effect, FootprintError> {
    let target = match step {
        StepAction::Notify(_) => return Ok(Effect::default()),
        StepAction::TightenQuota(how) => observed.tightened(how)?,
        StepAction::Suspend => observed.suspended(),
    };
    Ok(Effect {
        forward: ChangeSet::new(diff(observed, &target)),
        backward: ChangeSet::new(diff(&target, observed)),
    })
}

/// The changes an open action recorded: `None` before its first attempt to apply.
fn recorded_forward(a: &OpenRung) -> Result<Option<ChangeSet>, CorruptChanges> {
    if a.state == ActionState::Applied {
        ChangeSet::recorded("forward", a.kind, a.forward.as_ref()).map(Some)
    } else {
        a.forward
            .as_ref()
            .map(|v| ChangeSet::decode("forward", v))
            .transpose()
    }
}

pub fn plan(
    statuses: &[BudgetStatus],
    policy: &Policy,
    cluster: &ClusterState,
    open: &[OpenRung],
    now: DateTime<Utc>,
) -> Vec<Action> {
    let mut by_tenant: BTreeMap<&TenantId, Vec<&OpenRung>> = BTreeMap::new();
    for action in open.iter().filter(|a| a.state.is_open()) {
        by_tenant.entry(&action.tenant).or_default().push(action);
    }
    let statuses: BTreeMap<&TenantId, &BudgetStatus> =
        statuses.iter().map(|s| (&s.tenant, s)).collect();

    let mut out = Vec::new();
    let mut tenants: Vec<&TenantId> = statuses.keys().copied().collect();
    tenants.extend(
        by_tenant
            .keys()
            .copied()
            .filter(|t| !statuses.contains_key(t)),
    );
    tenants.sort();
    for tenant in tenants {
        let actions = by_tenant.get(tenant).map(Vec::as_slice).unwrap_or(&[]);
        match statuses.get(tenant) {
            Some(status) => plan_tenant(status, policy, cluster, actions, now, &mut out),
            // No budget in force any more: nothing left to enforce.
            None => close_all(actions, "no budget is in force", &mut out),
        }
    }
    out
}

fn close_all(actions: &[&OpenRung], reason: &str, out: &mut Vec<Action>) {
    // Newest first, so a suspension is undone before the tightening beneath it.
    let mut actions = actions.to_vec();
    actions.sort_by_key(|a| std::cmp::Reverse(a.id));
    for a in actions {
        out.push(Action::Close {
            id: a.id,
            tenant: a.tenant.clone(),
            kind: a.kind,
            was_applied: a.state == ActionState::Applied,
            reason: reason.to_owned(),
        });
    }
}

fn plan_tenant(
    status: &BudgetStatus,
    policy: &Policy,
    cluster: &ClusterState,
    actions: &[&OpenRung],
    now: DateTime<Utc>,
    out: &mut Vec<Action>,
) {
    if !status.complete {
        return;
    }
    let tenant = &status.tenant;
    if policy.is_exempt(tenant, now) {
        close_all(actions, "the tenant is exempt from enforcement", out);
        return;
    }
    let ladder = policy.ladder(tenant);

    let mut closing = Vec::new();
    // The actions that stay open, with their step of the ladder.
    let mut staying: Vec<(&OpenRung, &Step)> = Vec::new();
    for a in actions {
        let why = if a.period_start != status.period_start {
            "a new budget period began".to_owned()
        } else {
            match ladder.find(&a.step_key) {
                None => "the step is no longer in the tenant's ladder".to_owned(),
                Some(step) if !holds(status, step, true, policy.hysteresis_percent) => {
                    format!("cleared: {}", reason(status, step))
                }
                Some(step) => {
                    staying.push((*a, step));
                    continue;
                }
            }
        };
        closing.push((*a, why));
    }
    closing.sort_by_key(|(a, _)| std::cmp::Reverse(a.id));
    for (a, why) in closing {
        out.push(Action::Close {
            id: a.id,
            tenant: tenant.clone(),
            kind: a.kind,
            was_applied: a.state == ActionState::Applied,
            reason: why,
        });
    }

    // What the staying actions recorded. An unreadable record is reported, never read as "no
    // changes": that action is neither applied nor repaired, and neither is the tenant's drift
    // (the fields it set are unknown, so an older action's value of one of them could undo it).
    let mut applied: BTreeMap<i64, ChangeSet> = BTreeMap::new();
    let mut unreadable = BTreeSet::new();
    for (a, _) in &staying {
        match recorded_forward(a) {
            Ok(Some(changes)) if a.state == ActionState::Applied => {
                applied.insert(a.id, changes);
            }
            Ok(_) => {}
            Err(error) => {
                unreadable.insert(a.id);
                out.push(Action::Corrupt {
                    id: a.id,
                    tenant: tenant.clone(),
                    kind: a.kind,
                    error,
                });
            }
        }
    }

    for (a, step) in &staying {
        if matches!(a.state, ActionState::Scheduled | ActionState::Approved)
            && now >= a.not_before
            && !unreadable.contains(&a.id)
        {
            out.push(Action::Apply {
                id: a.id,
                tenant: tenant.clone(),
                step: (*step).clone(),
            });
        }
    }

    // Drift: the latest applied change of each field is what the cluster must show.
    let observed = cluster.footprints.get(tenant);
    if let Some(footprint) = observed.filter(|_| unreadable.is_empty()) {
        let mut desired: BTreeMap<String, (i64, &Change)> = BTreeMap::new();
        // Oldest first (by id), so a newer action's value of a field wins.
        for (id, changes) in &applied {
            for change in changes.iter() {
                desired.insert(change.target(), (*id, change));
            }
        }
        let mut repairs: BTreeMap<i64, Vec<Change>> = BTreeMap::new();
        for (id, change) in desired.into_values() {
            if !change.is_satisfied_by(footprint) {
                repairs.entry(id).or_default().push(change.clone());
            }
        }
        for (id, changes) in repairs {
            out.push(Action::Repair {
                id,
                tenant: tenant.clone(),
                changes: ChangeSet::new(changes),
            });
        }
    }

    for (key, step) in ladder.keyed_steps() {
        if !may_open(step.action.kind(), status.tenant_state)
            || !holds(status, step, false, policy.hysteresis_percent)
            || staying.iter().any(|(a, _)| a.step_key == key)
        {
            continue;
        }
        let not_before = now + Duration::seconds(i64::from(step.grace_seconds));
        let state = if policy.dry_run {
            ActionState::Planned
        } else if step.approval == Approval::Required {
            ActionState::Pending
        } else {
            ActionState::Scheduled
        };
        out.push(Action::Open {
            tenant: tenant.clone(),
            step: step.clone(),
            period_start: status.period_start,
            state,
            not_before,
            apply_now: state == ActionState::Scheduled && not_before <= now,
            reason: reason(status, step),
        });
    }
}

#[cfg(test)]
mod tests;
