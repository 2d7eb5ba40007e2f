//! The decision: `plan(status, policy, cluster, open actions, now) -> Vec<Action>`. No I/O.
//!
//! Level-triggered: from the budget status of every tenant, its open actions (one per ladder
//! rung at most) and what the cluster shows, compute what to open, apply, close and repair.
//! Applying the plan and planning again yields nothing new. A tenant whose data is incomplete
//! gets no action at all, not even a restore: the enforcer never acts on a guess.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use ledger::enforcement::{ActionKind, ActionState, BudgetStatus};
use ledger::tenant::{TenantId, TenantState};
use rust_decimal::Decimal;

use crate::cluster::{Change, Footprint};
use crate::policy::{Approval, Basis, Policy, Step};

/// An action as the ledger holds it, in the form `plan` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAction {
    pub id: i64,
    pub tenant: TenantId,
    pub period_start: NaiveDate,
    pub step_key: String,
    pub kind: ActionKind,
    pub state: ActionState,
    pub not_before: DateTime<Utc>,
    /// The cluster changes the action made when it was applied.
    pub forward: Vec<Change>,
}

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
    /// Apply an approved or scheduled action whose grace period has passed.
    Apply {
        id: i64,
        tenant: TenantId,
        kind: ActionKind,
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
        changes: Vec<Change>,
    },
}

impl Action {
    pub fn tenant(&self) -> &TenantId {
        match self {
            Action::Open { tenant, .. }
            | Action::Apply { tenant, .. }
            | Action::Close { tenant, .. }
            | Action::Repair { tenant, .. } => tenant,
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

pub fn plan(
    statuses: &[BudgetStatus],
    policy: &Policy,
    cluster: &ClusterState,
    open: &[OpenAction],
    now: DateTime<Utc>,
) -> Vec<Action> {
    let mut by_tenant: BTreeMap<&TenantId, Vec<&OpenAction>> = BTreeMap::new();
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

fn close_all(actions: &[&OpenAction], reason: &str, out: &mut Vec<Action>) {
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
    actions: &[&OpenAction],
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
    let mut staying = Vec::new();
    for a in actions {
        let why = if a.period_start != status.period_start {
            Some("a new budget period began".to_owned())
        } else {
            match ladder.find(&a.step_key) {
                None => Some("the step is no longer in the tenant's ladder".to_owned()),
                Some(step) if !holds(status, step, true, policy.hysteresis_percent) => {
                    Some(format!("cleared: {}", reason(status, step)))
                }
                Some(_) => None,
            }
        };
        match why {
            Some(why) => closing.push((*a, why)),
            None => staying.push(*a),
        }
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

    for a in &staying {
        if matches!(a.state, ActionState::Scheduled | ActionState::Approved) && now >= a.not_before
        {
            out.push(Action::Apply {
                id: a.id,
                tenant: tenant.clone(),
                kind: a.kind,
            });
        }
    }

    // Drift: the latest applied change of each field is what the cluster must show.
    if let Some(footprint) = cluster.footprints.get(tenant) {
        let mut applied: Vec<&&OpenAction> = staying
            .iter()
            .filter(|a| a.state == ActionState::Applied && !a.forward.is_empty())
            .collect();
        applied.sort_by_key(|a| a.id);
        let mut desired: BTreeMap<String, (i64, &Change)> = BTreeMap::new();
        for a in applied {
            for change in &a.forward {
                desired.insert(change.target(), (a.id, change));
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
                changes,
            });
        }
    }

    for step in ladder.steps() {
        let key = step.key();
        if staying.iter().any(|a| a.step_key == key)
            || !may_open(step.action.kind(), status.tenant_state)
            || !holds(status, step, false, policy.hysteresis_percent)
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
