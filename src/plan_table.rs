//! The enforcement plan as a table, for `budgetd enforce --once [--dry-run]`.

use std::collections::BTreeMap;
use std::io::Write;

use enforcer::executor::Evaluation;
use enforcer::plan::Action;
use ledger::enforcement::{ActionState, BudgetStatus};
use ledger::money::format_amount;
use ledger::tenant::TenantId;

/// One row per planned action; tenants without actions are counted, tenants whose data is
/// incomplete are named.
pub fn write(out: &mut impl Write, evaluation: &Evaluation) -> std::io::Result<()> {
    let statuses: BTreeMap<&TenantId, &BudgetStatus> =
        evaluation.statuses.iter().map(|s| (&s.tenant, s)).collect();
    let open: BTreeMap<i64, String> = evaluation
        .open
        .iter()
        .map(|a| (a.id, format!("{} ({})", a.step_key, a.state)))
        .collect();
    let mut rows = vec![[
        "TENANT".to_owned(),
        "SPENT".to_owned(),
        "BUDGET".to_owned(),
        "%".to_owned(),
        "FORECAST".to_owned(),
        "ACTION".to_owned(),
        "REASON".to_owned(),
    ]];
    for action in &evaluation.actions {
        let (what, why) = match action {
            Action::Open {
                step,
                state,
                reason,
                ..
            } => {
                let how = match state {
                    ActionState::Planned => " [dry run: planned]",
                    ActionState::Pending => " [waits for approval]",
                    _ => "",
                };
                (format!("{}{how}", step.describe()), reason.clone())
            }
            Action::Apply { id, .. } => (
                format!("apply #{id} {}", open.get(id).cloned().unwrap_or_default()),
                "approved or scheduled, grace period over".to_owned(),
            ),
            Action::Close {
                id,
                was_applied,
                reason,
                ..
            } => (
                format!(
                    "{} #{id} {}",
                    if *was_applied { "restore" } else { "cancel" },
                    open.get(id).cloned().unwrap_or_default()
                ),
                reason.clone(),
            ),
            Action::Repair { id, changes, .. } => (
                format!("repair #{id} ({} changes)", changes.len()),
                "the cluster drifted from what the action set".to_owned(),
            ),
            Action::Corrupt { id, error, .. } => (
                format!(
                    "hold #{id} {} [record unreadable]",
                    open.get(id).cloned().unwrap_or_default()
                ),
                error.to_string(),
            ),
        };
        let tenant = action.tenant();
        let row = match statuses.get(tenant) {
            Some(s) => {
                let round = |v| format_amount(v, s.budget.currency);
                [
                    tenant.to_string(),
                    round(s.spent),
                    format!("{} {}", round(s.budget.amount), s.budget.currency.code()),
                    s.percent_of_budget(s.spent)
                        .map_or("-".to_owned(), |p| p.to_string()),
                    round(s.forecast),
                    what,
                    why,
                ]
            }
            None => [
                tenant.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                what,
                why,
            ],
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        for (c, width) in widths.iter().enumerate() {
            write!(out, "{:<width$}  ", row[c])?;
        }
        writeln!(out, "{}", row[6])?;
    }
    let incomplete: Vec<&str> = evaluation
        .statuses
        .iter()
        .filter(|s| !s.complete)
        .map(|s| s.tenant.as_str())
        .collect();
    let acting: std::collections::BTreeSet<&TenantId> =
        evaluation.actions.iter().map(Action::tenant).collect();
    writeln!(
        out,
        "{} tenants with a budget; {} with actions; {} skipped for incomplete data{}",
        evaluation.statuses.len(),
        acting.len(),
        incomplete.len(),
        if incomplete.is_empty() {
            String::new()
        } else {
            format!(": {}", incomplete.join(", "))
        }
    )
}
