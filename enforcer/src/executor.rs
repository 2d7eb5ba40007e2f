//! The executor: one enforcement cycle reads the ledger and the cluster, calls `plan`, applies
//! the actions (recording each in the ledger with the leader's fencing token, prior state
//! first), and re-sends every active alert. The daemon's loop calls [`Enforcer::run_once`];
//! `budgetd enforce --once --dry-run` calls [`Enforcer::evaluate`], which writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ledger::audit::{Actor, AuditContext};
use ledger::enforcement::{
    ActionKind, ActionRecord, ActionState, BudgetStatus, Fence, NewAction, OpenRung, StatusParams,
    Transition,
};
use ledger::store::StatusCache;
use ledger::tenant::{TenantId, TenantState};
use ledger::Store;
use serde_json::json;

use crate::alerts::{Alert, AlertName, AlertSink, Severity};
use crate::cluster::{ChangeSet, ClusterActuator, ClusterError, CorruptChanges, FootprintError};
use crate::plan::{effect, plan, Action, ClusterState};
use crate::policy::{Ladder, Policy, Step, StepAction};

/// How the enforcer reads budgets and talks to Alertmanager.
#[derive(Debug, Clone)]
pub struct EnforcerSettings {
    pub default_ladder: Ladder,
    pub ladders: BTreeMap<TenantId, Ladder>,
    pub hysteresis_percent: rust_decimal::Decimal,
    pub dry_run: bool,
    /// The forecast's trailing window.
    pub trailing_days: u32,
    /// Data older than this is stale: no action on it.
    pub max_lag_seconds: u32,
    /// Incomplete windows that ended within this of the last data block enforcement.
    pub lookback_seconds: u32,
    /// How often active alerts are re-sent (the cycle interval); `endsAt` is 4× this ahead.
    pub resend_interval: Duration,
    /// How long resolved alerts keep being re-sent as resolved.
    pub resolved_resend: Duration,
    /// The API's public base URL, for links in alert annotations.
    pub api_url: Option<String>,
}

impl EnforcerSettings {
    pub fn status_params(&self) -> StatusParams {
        StatusParams {
            trailing_days: self.trailing_days,
            max_lag_seconds: self.max_lag_seconds,
            lookback_seconds: Some(self.lookback_seconds),
        }
    }
}

/// Why a cycle, or one action in it, did not finish. A cycle returns only `Ledger` errors; the
/// others fail one action, which is counted and retried next cycle (`CycleReport::failed`).
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    /// Includes [`ledger::Error::Fenced`]: another daemon took over, stop enforcing at once.
    #[error("ledger: {0}")]
    Ledger(#[from] ledger::Error),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error(transparent)]
    Footprint(#[from] FootprintError),
    /// Alert-worthy: the action stays open, unapplied or unrestored, until an operator repairs
    /// its record (`budgetd_enforcement_corrupt_actions_total`).
    #[error(transparent)]
    Corrupt(#[from] CorruptChanges),
}

impl EnforceError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            EnforceError::Ledger(e) => e.metric_label(),
            EnforceError::Cluster(_) => "kubernetes",
            EnforceError::Footprint(_) => "footprint",
            EnforceError::Corrupt(_) => "corrupt_changes",
        }
    }

    /// Whether another daemon leads: the cycle stops at the first fenced write.
    pub fn is_fenced(&self) -> bool {
        matches!(self, EnforceError::Ledger(e) if e.is_fenced())
    }
}

/// What one cycle did.
#[derive(Debug, Default)]
pub struct CycleReport {
    pub tenants: usize,
    pub actions: Vec<Action>,
    pub failed: Vec<(i64, String)>,
    pub alerts_firing: usize,
    pub alerts_resolved: usize,
}

/// One decision, for the dry-run table.
#[derive(Debug)]
pub struct Evaluation {
    pub statuses: Vec<BudgetStatus>,
    pub open: Vec<OpenRung>,
    pub actions: Vec<Action>,
}

pub struct Enforcer {
    store: Store,
    cluster: Arc<dyn ClusterActuator>,
    alerts: Arc<dyn AlertSink>,
    settings: EnforcerSettings,
    /// The budget status kept between cycles: a cycle reads what changed (see
    /// `ledger::store::StatusCache`).
    status: tokio::sync::Mutex<StatusCache>,
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("budgetd-enforcer"),
        request_id: format!("enforce-{}", Utc::now().timestamp_micros()),
    }
}

impl Enforcer {
    pub fn new(
        store: Store,
        cluster: Arc<dyn ClusterActuator>,
        alerts: Arc<dyn AlertSink>,
        settings: EnforcerSettings,
    ) -> Enforcer {
        Enforcer {
            store,
            cluster,
            alerts,
            settings,
            status: tokio::sync::Mutex::new(StatusCache::default()),
        }
    }

    /// The budget status at `now`, read incrementally over the kept copy.
    async fn statuses(&self, now: DateTime<Utc>) -> Result<Vec<BudgetStatus>, ledger::Error> {
        let mut cache = self.status.lock().await;
        let (statuses, _) = self
            .store
            .refresh_statuses(&mut cache, now, &self.settings.status_params())
            .await?;
        Ok(statuses)
    }

    async fn policy(&self, now: DateTime<Utc>) -> Result<Policy, ledger::Error> {
        let exemptions = self.store.exemptions_in_force(now).await?;
        Ok(Policy {
            default_ladder: self.settings.default_ladder.clone(),
            ladders: self.settings.ladders.clone(),
            hysteresis_percent: self.settings.hysteresis_percent,
            exemptions: exemptions
                .into_iter()
                .map(|e| (e.tenant, e.until))
                .collect(),
            dry_run: self.settings.dry_run,
        })
    }

    /// The plan for `now`, without observing the cluster and without writing anything.
    pub async fn evaluate(&self, now: DateTime<Utc>) -> Result<Evaluation, ledger::Error> {
        let statuses = self.statuses(now).await?;
        let open = self.store.open_rungs().await?;
        let policy = self.policy(now).await?;
        let actions = plan(&statuses, &policy, &ClusterState::default(), &open, now);
        Ok(Evaluation {
            statuses,
            open,
            actions,
        })
    }

    /// One cycle as the leader holding `fence`, deciding for the instant `now` (the budget
    /// period, the status, grace periods and exemptions are those of `now`; the daemon passes
    /// the wall clock, tests a fixed instant).
    pub async fn run_once(
        &self,
        fence: Fence,
        now: DateTime<Utc>,
    ) -> Result<CycleReport, EnforceError> {
        let started = Instant::now();
        // Operators' suspensions and resumes first, so that a budget step planned below
        // observes a resumed tenant's restored cluster, not the suspension's zeros.
        let mut report = CycleReport::default();
        let resuming = self.operator_suspensions(fence, &mut report).await?;
        let mut statuses = self.statuses(now).await?;
        hold_resuming(&mut statuses, &resuming);
        let records = self.store.open_rungs().await?;
        let policy = self.policy(now).await?;

        // Resync: observe every tenant with an applied cluster action, so drift is repaired.
        let mut cluster = ClusterState::default();
        let enforced: BTreeSet<&TenantId> = records
            .iter()
            .filter(|r| r.state == ActionState::Applied && r.kind != ActionKind::Notify)
            .map(|r| &r.tenant)
            .collect();
        for tenant in enforced {
            match self.cluster.observe(tenant).await {
                Ok(footprint) => {
                    cluster.footprints.insert(tenant.clone(), footprint);
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot observe the tenant's namespaces; drift check skipped");
                }
            }
        }

        let actions = plan(&statuses, &policy, &cluster, &records, now);
        let states: BTreeMap<&TenantId, TenantState> = statuses
            .iter()
            .map(|s| (&s.tenant, s.tenant_state))
            .collect();
        let status_of: BTreeMap<&TenantId, &BudgetStatus> =
            statuses.iter().map(|s| (&s.tenant, s)).collect();

        report.tenants = statuses.len();
        for action in &actions {
            let span = tracing::info_span!("enforce", tenant = %action.tenant());
            let _guard = span.enter();
            // what a failure is counted as: the action's kind, or a drift repair's
            let failed_kind = match action {
                Action::Open { step, .. } | Action::Apply { step, .. } => {
                    step.action.kind().as_str()
                }
                Action::Close { kind, .. } | Action::Corrupt { kind, .. } => kind.as_str(),
                Action::Repair { .. } => "drift_repair",
            };
            let result = match action {
                Action::Open {
                    tenant,
                    step,
                    period_start,
                    state,
                    not_before,
                    apply_now,
                    reason,
                } => {
                    let Some(status) = status_of.get(tenant) else {
                        continue;
                    };
                    let new = NewAction {
                        tenant: tenant.clone(),
                        period_start: *period_start,
                        step_key: step.key(),
                        step: step.to_json(),
                        kind: step.action.kind(),
                        state: *state,
                        reason: reason.clone(),
                        spent: status.spent,
                        forecast: status.forecast,
                        budget: status.budget,
                        not_before: *not_before,
                    };
                    let record = self.store.open_action(fence, &ctx(), &new).await?;
                    count(step.action.kind(), "opened");
                    tracing::info!(action = record.id, step = %record.step_key, state = %record.state, "opened");
                    if *apply_now {
                        self.apply(fence, &record, step, states.get(tenant).copied())
                            .await
                            .map_err(|e| (record.id, e))
                    } else {
                        Ok(())
                    }
                }
                Action::Apply { id, tenant, step } => {
                    let record = self.store.get_action(*id).await?;
                    self.apply(fence, &record, step, states.get(tenant).copied())
                        .await
                        .map_err(|e| (*id, e))
                }
                Action::Close {
                    id,
                    was_applied,
                    reason,
                    ..
                } => {
                    let record = self.store.get_action(*id).await?;
                    self.close(fence, &record, *was_applied, reason)
                        .await
                        .map_err(|e| (*id, e))
                }
                Action::Repair {
                    id,
                    tenant,
                    changes,
                } => self
                    .repair(fence, *id, tenant, changes)
                    .await
                    .map_err(|e| (*id, e)),
                Action::Corrupt { id, error, .. } => Err((*id, error.clone().into())),
            };
            if let Err((id, e)) = result {
                if e.is_fenced() {
                    return Err(e);
                }
                let message = e.to_string();
                if let EnforceError::Corrupt(_) = e {
                    metrics::counter!("budgetd_enforcement_corrupt_actions_total").increment(1);
                    tracing::warn!(action = id, error = %message, "an action's recorded changes cannot be read; it stays open until an operator repairs the record");
                } else {
                    metrics::counter!(
                        "budgetd_enforcement_actions_total",
                        "kind" => failed_kind,
                        "outcome" => "failed"
                    )
                    .increment(1);
                    tracing::warn!(action = id, error = %message, "enforcement action failed; retrying next cycle");
                }
                self.store.record_failure(fence, id, &message).await?;
                report.failed.push((id, message));
            }
        }

        // Alertmanager keeps time by its wall clock, and so do the action records (applied_at,
        // closed_at): an alert's lease (endsAt) and how long a resolved alert is re-sent are
        // measured on the wall clock, whatever instant this cycle decides for.
        let (firing, resolved) = self.send_alerts(Utc::now(), &status_of).await?;
        report.alerts_firing = firing;
        report.alerts_resolved = resolved;
        report.actions = actions;
        metrics::histogram!("budgetd_enforcement_cycle_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        Ok(report)
    }

    /// Carries out operators' suspensions: applies new ones as a budget suspension is applied
    /// (observe, record the effect before the first write, scale to zero), re-applies their
    /// recorded changes where someone undid them, and writes the prior values back once the
    /// operator resumed. Returns the tenants whose restore is still outstanding (it failed).
    async fn operator_suspensions(
        &self,
        fence: Fence,
        report: &mut CycleReport,
    ) -> Result<BTreeSet<TenantId>, EnforceError> {
        let mut resuming = BTreeSet::new();
        for suspension in self.store.unrestored_operator_suspensions().await? {
            let span = tracing::info_span!("operator_suspension", tenant = %suspension.tenant);
            let _guard = span.enter();
            let result = if suspension.is_resuming() {
                self.restore_operator_suspension(fence, &suspension).await
            } else {
                self.apply_operator_suspension(fence, &suspension).await
            };
            if let Err(e) = result {
                if e.is_fenced() {
                    return Err(e);
                }
                if suspension.is_resuming() {
                    resuming.insert(suspension.tenant.clone());
                }
                let message = e.to_string();
                tracing::warn!(suspension = suspension.id, error = %message, "operator suspension step failed; retrying next cycle");
                metrics::counter!(
                    "budgetd_enforcement_actions_total",
                    "kind" => "operator_suspend",
                    "outcome" => "failed"
                )
                .increment(1);
                self.store
                    .record_suspension_failure(fence, suspension.id, &message)
                    .await?;
                report.failed.push((suspension.id, message));
            }
        }
        Ok(resuming)
    }

    async fn apply_operator_suspension(
        &self,
        fence: Fence,
        suspension: &ledger::store::OperatorSuspension,
    ) -> Result<(), EnforceError> {
        let forward = match &suspension.forward {
            Some(recorded) => ChangeSet::decode("forward", recorded)?,
            None => {
                let observed = self.cluster.observe(&suspension.tenant).await?;
                let effect = effect(&StepAction::Suspend, &observed)?;
                let stored = self
                    .store
                    .record_suspension_effect(
                        fence,
                        suspension.id,
                        &effect.forward.to_json(),
                        &effect.backward.to_json(),
                    )
                    .await?;
                match &stored.forward {
                    Some(recorded) if stored.resumed_at.is_none() => {
                        ChangeSet::decode("forward", recorded)?
                    }
                    // Resumed meanwhile: the next cycle restores whatever was recorded.
                    _ => return Ok(()),
                }
            }
        };
        if suspension.applied_at.is_some() {
            // Applied: repair only what someone undid.
            let observed = self.cluster.observe(&suspension.tenant).await?;
            let drifted: Vec<_> = forward
                .iter()
                .filter(|c| !c.is_satisfied_by(&observed))
                .cloned()
                .collect();
            if !drifted.is_empty() {
                tracing::warn!(
                    suspension = suspension.id,
                    changes = drifted.len(),
                    "drift: re-applying an operator's suspension"
                );
                self.cluster.apply(&drifted).await?;
                metrics::counter!("budgetd_enforcement_drift_repairs_total").increment(1);
            }
            return Ok(());
        }
        let applied = self.cluster.apply(&forward).await?;
        let outcome = json!({
            "changes": forward.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "missing": applied.missing,
        });
        self.store
            .mark_suspension_applied(fence, &ctx(), suspension.id, &outcome)
            .await?;
        count_operator("applied");
        tracing::info!(suspension = suspension.id, "operator suspension applied");
        Ok(())
    }

    async fn restore_operator_suspension(
        &self,
        fence: Fence,
        suspension: &ledger::store::OperatorSuspension,
    ) -> Result<(), EnforceError> {
        let backward = ChangeSet::recorded(
            "backward",
            ActionKind::Suspend,
            suspension.backward.as_ref(),
        )?;
        let applied = self.cluster.apply(&backward).await?;
        let outcome = json!({
            "changes": backward.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "missing": applied.missing,
        });
        self.store
            .mark_suspension_restored(fence, &ctx(), suspension.id, &outcome)
            .await?;
        count_operator("restored");
        tracing::info!(suspension = suspension.id, "operator suspension restored");
        Ok(())
    }

    /// Applies `record`, the ledger's action for `step`: observes the tenant, records the
    /// effect (before the first write), applies it and marks the action applied.
    async fn apply(
        &self,
        fence: Fence,
        record: &ActionRecord,
        step: &Step,
        tenant_state: Option<TenantState>,
    ) -> Result<(), EnforceError> {
        let mut outcome = json!({});
        let mut transition = None;
        if record.kind != ActionKind::Notify {
            let observed = self.cluster.observe(&record.tenant).await?;
            let forward = match &record.forward {
                // A previous attempt recorded the prior state; the cluster may already show
                // part of the change, so it is not observed as "prior" again.
                Some(recorded) => ChangeSet::decode("forward", recorded)?,
                None => {
                    let effect = effect(&step.action, &observed)?;
                    let stored = self
                        .store
                        .record_effect(
                            fence,
                            record.id,
                            &effect.forward.to_json(),
                            &effect.backward.to_json(),
                        )
                        .await?;
                    // The ledger keeps an action's first record: apply what it holds.
                    ChangeSet::recorded("forward", stored.kind, stored.forward.as_ref())?
                }
            };
            let applied = self.cluster.apply(&forward).await?;
            outcome = json!({
                "changes": forward.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "missing": applied.missing,
            });
            if record.kind == ActionKind::Suspend {
                outcome["autoscaled_not_scaled"] = json!(observed.autoscaled());
                if tenant_state == Some(TenantState::Active) {
                    transition = Some(Transition {
                        to: TenantState::Suspended,
                        reason: format!("budget enforcement: {}", record.reason),
                    });
                }
            }
        }
        let applied = self
            .store
            .mark_applied(fence, &ctx(), record.id, &outcome, transition.as_ref())
            .await?;
        count(record.kind, "applied");
        tracing::info!(action = applied.id, step = %applied.step_key, "applied");
        Ok(())
    }

    async fn close(
        &self,
        fence: Fence,
        record: &ActionRecord,
        was_applied: bool,
        reason: &str,
    ) -> Result<(), EnforceError> {
        let mut transition = None;
        if was_applied {
            // Fails on a record it cannot read: the action then stays applied (and counted),
            // since restoring "nothing" would mark it restored with the cluster still changed.
            let backward = ChangeSet::recorded("backward", record.kind, record.backward.as_ref())?;
            if !backward.is_empty() {
                self.cluster.apply(&backward).await?;
            }
            if record.kind == ActionKind::Suspend {
                let tenant = self.store.get_tenant(&record.tenant).await?;
                if tenant.state == TenantState::Suspended {
                    transition = Some(Transition {
                        to: TenantState::Active,
                        reason: format!("budget enforcement lifted: {reason}"),
                    });
                }
            }
        }
        let closed = self
            .store
            .close_action(fence, &ctx(), record.id, reason, transition.as_ref())
            .await?;
        count(record.kind, closed.state.as_str());
        tracing::info!(action = closed.id, state = %closed.state, reason, "closed");
        Ok(())
    }

    async fn repair(
        &self,
        fence: Fence,
        id: i64,
        tenant: &TenantId,
        changes: &ChangeSet,
    ) -> Result<(), EnforceError> {
        tracing::warn!(action = id, tenant = %tenant, changes = changes.len(), "drift: re-applying");
        self.cluster.apply(changes).await?;
        self.store
            .record_repair(fence, &ctx(), id, &changes.to_json())
            .await?;
        metrics::counter!("budgetd_enforcement_drift_repairs_total").increment(1);
        Ok(())
    }

    /// Sends every firing alert and the recently resolved ones, to every replica.
    async fn send_alerts(
        &self,
        now: DateTime<Utc>,
        statuses: &BTreeMap<&TenantId, &BudgetStatus>,
    ) -> Result<(usize, usize), EnforceError> {
        let open = self.store.alerting_actions().await?;
        let since = now
            - chrono::Duration::from_std(self.settings.resolved_resend)
                .unwrap_or(chrono::Duration::minutes(15));
        let restored = self.store.actions_restored_since(since).await?;
        let ends_at = now
            + chrono::Duration::from_std(self.settings.resend_interval * 4)
                .unwrap_or(chrono::Duration::minutes(4));
        let mut alerts = Vec::new();
        for record in open.iter().filter(|r| r.state == ActionState::Applied) {
            self.push_alert(&mut alerts, record, statuses, ends_at);
        }
        let firing = alerts.len();
        for record in &restored {
            self.push_alert(
                &mut alerts,
                record,
                statuses,
                record.closed_at.unwrap_or(now),
            );
        }
        let resolved = alerts.len() - firing;
        if !alerts.is_empty() {
            let report = self.alerts.send(&alerts).await;
            for (replica, e) in &report.failed {
                tracing::warn!(replica, error = %e, "alerts not delivered; re-sent next cycle");
            }
        }
        metrics::gauge!("budgetd_enforcement_alerts_firing").set(firing as f64);
        Ok((firing, resolved))
    }

    fn push_alert(
        &self,
        alerts: &mut Vec<Alert>,
        record: &ActionRecord,
        statuses: &BTreeMap<&TenantId, &BudgetStatus>,
        ends_at: DateTime<Utc>,
    ) {
        match self.alert(record, statuses.get(&record.tenant).copied(), ends_at) {
            Ok(Some(alert)) => alerts.push(alert),
            Ok(None) => {}
            // An alert that cannot be built from its record is as loud as a restore that
            // cannot be: never a silently missing alert.
            Err(reason) => {
                metrics::counter!("budgetd_enforcement_corrupt_actions_total").increment(1);
                tracing::warn!(action = record.id, tenant = %record.tenant, error = %reason, "an action's recorded step cannot be read; its alert is not sent until an operator repairs the record");
            }
        }
    }

    /// The alert of an applied or restored action, `None` for a kind that has none (a
    /// tightening), an error naming what is wrong with a recorded step that cannot be read.
    fn alert(
        &self,
        record: &ActionRecord,
        status: Option<&BudgetStatus>,
        ends_at: DateTime<Utc>,
    ) -> Result<Option<Alert>, String> {
        let field = |name: &str| {
            record
                .step
                .get(name)
                .ok_or_else(|| format!("the recorded step has no {name:?}: {}", record.step))
        };
        let at = field("at")?
            .as_u64()
            .and_then(|at| u32::try_from(at).ok())
            .ok_or_else(|| {
                format!(
                    "the recorded step's \"at\" is not a percentage: {}",
                    record.step
                )
            })?;
        let (name, severity) = match record.kind {
            ActionKind::Notify => {
                let name = match field("on")?.as_str() {
                    Some("forecast") => AlertName::TenantBudgetForecast,
                    Some("actual") => AlertName::TenantBudgetThreshold,
                    _ => {
                        return Err(format!(
                            "the recorded step's \"on\" is neither actual nor forecast: {}",
                            record.step
                        ))
                    }
                };
                let severity = field("severity")?
                    .as_str()
                    .and_then(Severity::parse)
                    .ok_or_else(|| {
                        format!(
                            "the recorded step's \"severity\" is not a severity: {}",
                            record.step
                        )
                    })?;
                (name, severity)
            }
            ActionKind::Suspend => (AlertName::TenantSuspended, Severity::Critical),
            ActionKind::TightenQuota => return Ok(None),
        };
        let (spent, forecast, budget) = match status {
            Some(s) => (s.spent, s.forecast, s.budget),
            None => (record.spent, record.forecast, record.budget),
        };
        let currency = budget.currency.code().to_owned();
        let minor = budget.currency.minor_units() as usize;
        let round = |v| {
            format!(
                "{:.minor$}",
                ledger::money::round_to_minor_units(v, budget.currency)
            )
        };
        let mut annotations = BTreeMap::from([
            (
                "summary".to_owned(),
                format!(
                    "Tenant {} {}",
                    record.tenant,
                    match name {
                        AlertName::TenantBudgetThreshold => format!("spent {at}% of its budget"),
                        AlertName::TenantBudgetForecast =>
                            format!("is forecast to reach {at}% of its budget"),
                        AlertName::TenantSuspended =>
                            "was suspended by budget enforcement".to_owned(),
                    }
                ),
            ),
            ("description".to_owned(), record.reason.clone()),
            ("spent".to_owned(), round(spent)),
            ("forecast".to_owned(), round(forecast)),
            ("budget".to_owned(), round(budget.amount)),
            ("remaining".to_owned(), round(budget.amount - spent)),
            ("currency".to_owned(), currency),
            ("action_id".to_owned(), record.id.to_string()),
        ]);
        let link = self.settings.api_url.as_ref().map(|base| {
            format!(
                "{}/api/v1/enforcement/actions?tenant={}",
                base.trim_end_matches('/'),
                record.tenant
            )
        });
        if let Some(link) = &link {
            annotations.insert("link".to_owned(), link.clone());
        }
        Ok(Some(Alert {
            name,
            tenant: record.tenant.clone(),
            threshold_percent: at,
            severity,
            period: record.period_start.to_string(),
            annotations,
            starts_at: record.applied_at.unwrap_or(record.created_at),
            ends_at,
            generator_url: link,
        }))
    }
}

/// A tenant whose operator resume is not yet restored in the cluster counts as suspended for
/// the budget: no budget suspension opens on top of the zeros it would observe as "prior".
fn hold_resuming(statuses: &mut [BudgetStatus], resuming: &BTreeSet<TenantId>) {
    for status in statuses
        .iter_mut()
        .filter(|s| resuming.contains(&s.tenant) && s.tenant_state == TenantState::Active)
    {
        status.tenant_state = TenantState::Suspended;
    }
}

fn count_operator(outcome: &str) {
    metrics::counter!(
        "budgetd_enforcement_actions_total",
        "kind" => "operator_suspend",
        "outcome" => outcome.to_owned()
    )
    .increment(1);
}

fn count(kind: ActionKind, outcome: &str) {
    metrics::counter!(
        "budgetd_enforcement_actions_total",
        "kind" => kind.as_str(),
        "outcome" => outcome.to_owned()
    )
    .increment(1);
}
