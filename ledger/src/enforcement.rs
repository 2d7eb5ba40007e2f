//! Budget status and enforcement records: what the enforcer reads and writes in the ledger.

use std::fmt;

use chrono::{DateTime, NaiveDate, SubsecRound, Utc};
use num_bigint::{BigInt, Sign};
use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::audit::timestamp;
use crate::budget::{BudgetPeriod, Thresholds};
use crate::error::Invalid;
use crate::money::Money;
use crate::tenant::{TenantId, TenantState};

/// A tenant's budget in the current period: what was spent, the forecast, and whether the
/// data behind it is complete. Computed by the ledger's `budgetd_budget_status` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetStatus {
    pub tenant: TenantId,
    pub tenant_state: TenantState,
    pub period: BudgetPeriod,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub budget: Money,
    pub thresholds: Thresholds,
    pub spent: Decimal,
    /// Spend in the trailing window `[trailing_start, data_until)`.
    pub trailing: Decimal,
    pub trailing_start: DateTime<Utc>,
    /// The end of the last collected window, if any.
    pub data_until: Option<DateTime<Utc>>,
    pub forecast: Decimal,
    pub complete: bool,
    pub state: BudgetState,
}

impl BudgetStatus {
    /// `amount` in percent of the budget (`None` for a zero budget).
    pub fn percent_of_budget(&self, amount: Decimal) -> Option<Decimal> {
        (!self.budget.amount.is_zero())
            .then(|| (amount * Decimal::ONE_HUNDRED / self.budget.amount).round_dp(2))
    }

    pub fn remaining(&self) -> Decimal {
        self.budget.amount - self.spent
    }
}

/// The period's forecast, as `budgetd_budget_forecast` computes it (a test holds the two
/// equal): `spent`, plus the trailing window's spend `[trailing_start, until)` carried at its
/// rate to `period_end`, to 6 places (the exact quotient, rounded half away from zero); `spent`
/// alone before the trailing window has any length or once the period is over. Instants count
/// to the microsecond, as Postgres keeps them. `None` when the result is beyond `Decimal`.
pub fn forecast(
    spent: Decimal,
    trailing: Decimal,
    until: DateTime<Utc>,
    trailing_start: DateTime<Utc>,
    period_end: DateTime<Utc>,
) -> Option<Decimal> {
    let (until, trailing_start, period_end) = (
        to_micros(until),
        to_micros(trailing_start),
        to_micros(period_end),
    );
    if until <= trailing_start || until >= period_end {
        return Some(spent);
    }
    let remaining = (period_end - until).num_microseconds()?;
    let elapsed = (until - trailing_start).num_microseconds()?;
    // trailing × remaining ÷ elapsed × 10^6 = n ÷ d, with trailing = mantissa ÷ 10^scale.
    let n: BigInt = BigInt::from(trailing.mantissa()) * remaining * 1_000_000i64;
    let d: BigInt = BigInt::from(elapsed) * BigInt::from(10u8).pow(trailing.scale());
    let q: BigInt = &n / &d;
    let rest: BigInt = &n - &q * &d;
    let q = if rest.magnitude() * 2u8 >= *d.magnitude() {
        match n.sign() {
            Sign::Minus => q - 1,
            _ => q + 1,
        }
    } else {
        q
    };
    let increment = Decimal::try_from_i128_with_scale(i128::try_from(&q).ok()?, 6).ok()?;
    exact_add(spent, increment)
}

/// `at` to the microsecond (truncated, as Postgres stores a `timestamptz`).
pub fn to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// `a + b`, or `None` unless exact: `Decimal` rounds a sum it cannot hold to its scale, where
/// Postgres' `numeric` is exact.
pub fn exact_add(a: Decimal, b: Decimal) -> Option<Decimal> {
    let sum = a.checked_add(b)?;
    (sum.scale() >= a.scale().max(b.scale())).then_some(sum)
}

/// The budget state, as `budgetd_budget_status` decides it (a test holds the two equal):
/// exceeded once spent reaches the budget, at risk when the forecast does, warning from the
/// first threshold (percent of the budget) on.
pub fn budget_state(
    spent: Decimal,
    forecast: Decimal,
    budget: Decimal,
    thresholds: &Thresholds,
) -> BudgetState {
    let first = thresholds.as_slice().first().copied().unwrap_or(u32::MAX);
    if spent >= budget && (spent > Decimal::ZERO || budget.is_zero()) {
        BudgetState::Exceeded
    } else if forecast >= budget && forecast > Decimal::ZERO {
        BudgetState::AtRisk
    } else if spent > Decimal::ZERO && exact(spent) * 100u8 >= exact(budget) * first {
        BudgetState::Warning
    } else {
        BudgetState::Ok
    }
}

/// `value` × 10^28 as an integer: decimals compared exactly after scaling.
fn exact(value: Decimal) -> BigInt {
    BigInt::from(value.mantissa()) * BigInt::from(10u8).pow(28 - value.scale())
}

/// How budget status is computed (see the `budgetd_budget_status` SQL function).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusParams {
    /// The forecast's trailing window, in whole days before the day of the last data.
    pub trailing_days: u32,
    /// Data older than this (watermark behind `as_of`) is stale: incomplete.
    pub max_lag_seconds: u32,
    /// Incomplete windows that ended within this of the last data make the status
    /// incomplete; `None`: any incomplete window of the period does.
    pub lookback_seconds: Option<u32>,
}

/// The budget state finance sees in `finance.budget_status.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetState {
    Ok,
    Warning,
    AtRisk,
    Exceeded,
}

impl BudgetState {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetState::Ok => "ok",
            BudgetState::Warning => "warning",
            BudgetState::AtRisk => "at_risk",
            BudgetState::Exceeded => "exceeded",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "ok" => Ok(BudgetState::Ok),
            "warning" => Ok(BudgetState::Warning),
            "at_risk" => Ok(BudgetState::AtRisk),
            "exceeded" => Ok(BudgetState::Exceeded),
            other => Err(Invalid::new(
                "state",
                format!("{other:?} is not a budget state"),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionKind {
    Notify,
    TightenQuota,
    Suspend,
}

impl ActionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Notify => "notify",
            ActionKind::TightenQuota => "tighten_quota",
            ActionKind::Suspend => "suspend",
        }
    }

    pub fn parse(value: &str) -> Result<Self, Invalid> {
        match value {
            "notify" => Ok(ActionKind::Notify),
            "tighten_quota" => Ok(ActionKind::TightenQuota),
            "suspend" => Ok(ActionKind::Suspend),
            other => Err(Invalid::new(
                "action",
                format!("{other:?} is not an action (notify, tighten_quota, suspend)"),
            )),
        }
    }
}

/// Where an enforcement action stands. See the migration for the meaning of each state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ActionState {
    Planned,
    Pending,
    Approved,
    Scheduled,
    Applied,
    Rejected,
    Restored,
    Cancelled,
}

impl ActionState {
    pub const ALL: [ActionState; 8] = [
        ActionState::Planned,
        ActionState::Pending,
        ActionState::Approved,
        ActionState::Scheduled,
        ActionState::Applied,
        ActionState::Rejected,
        ActionState::Restored,
        ActionState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ActionState::Planned => "planned",
            ActionState::Pending => "pending",
            ActionState::Approved => "approved",
            ActionState::Scheduled => "scheduled",
            ActionState::Applied => "applied",
            ActionState::Rejected => "rejected",
            ActionState::Restored => "restored",
            ActionState::Cancelled => "cancelled",
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
                        "{value:?} is not an action state (planned, pending, approved, \
                         scheduled, applied, rejected, restored, cancelled)"
                    ),
                )
            })
    }

    /// Open actions occupy their rung: the enforcer does not open it again.
    pub fn is_open(self) -> bool {
        !matches!(self, ActionState::Restored | ActionState::Cancelled)
    }
}

impl fmt::Display for ActionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action the enforcer decided to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    pub tenant: TenantId,
    pub period_start: NaiveDate,
    /// Identifies the ladder rung, e.g. `actual:100:tighten_quota`.
    pub step_key: String,
    /// The rung as configured when the action was opened.
    pub step: Value,
    pub kind: ActionKind,
    /// `planned`, `pending` or `scheduled`.
    pub state: ActionState,
    pub reason: String,
    pub spent: Decimal,
    pub forecast: Decimal,
    pub budget: Money,
    pub not_before: DateTime<Utc>,
}

/// A stored enforcement action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    pub id: i64,
    pub tenant: TenantId,
    pub period_start: NaiveDate,
    pub step_key: String,
    pub step: Value,
    pub kind: ActionKind,
    pub state: ActionState,
    pub reason: String,
    pub spent: Decimal,
    pub forecast: Decimal,
    pub budget: Money,
    pub not_before: DateTime<Utc>,
    /// The cluster changes the action made, and their exact inverse. The ledger stores them as
    /// given and shows them as they are; the enforcer owns their form
    /// (`enforcer::cluster::ChangeSet`) and is the only one that decodes them.
    pub forward: Option<Value>,
    pub backward: Option<Value>,
    pub outcome: Option<Value>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub decision_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub applied_at: Option<DateTime<Utc>>,
    pub closed_at: Option<DateTime<Utc>>,
    pub close_reason: Option<String>,
}

impl ActionRecord {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "tenant_id": self.tenant.as_str(),
            "period_start": self.period_start.to_string(),
            "step_key": self.step_key,
            "step": self.step,
            "kind": self.kind.as_str(),
            "state": self.state.as_str(),
            "reason": self.reason,
            "spent": self.spent.to_string(),
            "forecast": self.forecast.to_string(),
            "budget": self.budget.amount.to_string(),
            "currency": self.budget.currency.code(),
            "not_before": timestamp(self.not_before),
            "forward": self.forward,
            "backward": self.backward,
            "outcome": self.outcome,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at.map(timestamp),
            "decision_reason": self.decision_reason,
            "created_at": timestamp(self.created_at),
            "applied_at": self.applied_at.map(timestamp),
            "closed_at": self.closed_at.map(timestamp),
            "close_reason": self.close_reason,
        })
    }
}

/// An open action in the form deciding needs (`enforcer::plan` takes these): its rung, state
/// and the changes it made. (The full record is read only for the actions a cycle applies or
/// closes.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRung {
    pub id: i64,
    pub tenant: TenantId,
    pub period_start: NaiveDate,
    pub step_key: String,
    pub kind: ActionKind,
    pub state: ActionState,
    pub not_before: DateTime<Utc>,
    /// As recorded; the enforcer owns its form (`enforcer::cluster::ChangeSet`) and decodes it.
    pub forward: Option<Value>,
}

/// An operator's exemption of a tenant from enforcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exemption {
    pub tenant: TenantId,
    pub until: DateTime<Utc>,
    pub reason: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl Exemption {
    pub fn to_json(&self) -> Value {
        json!({
            "tenant_id": self.tenant.as_str(),
            "until": timestamp(self.until),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": timestamp(self.created_at),
        })
    }
}

/// The leader's fencing token. Every enforcement write checks it in its transaction, so a
/// daemon that lost leadership (and does not know yet) cannot write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence(pub i64);

/// How a tenant's lifecycle moves together with an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub to: TenantState,
    pub reason: String,
}
