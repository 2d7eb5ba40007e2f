//! Governance reports, shared by the API (`/api/v1/reports/...`, `/api/v1/audit`) and
//! `budgetd report audit`: one row per tenant (owner, state, residency, budget, spend,
//! forecast, open enforcement actions), the audit trail's records, and the access review (every
//! identity that can act, its role and scope, when it last acted and what it changed).
//!
//! The budget columns come from the same status query the enforcer and
//! `GET /tenants/{id}/budget/status` use (`Store::budget_statuses`), so the three never disagree.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use chrono::{DateTime, Duration, Utc};
use ledger::audit::AuditRecord;
use ledger::enforcement::{ActionState, StatusParams};
use ledger::store::ActorActivity;
use ledger::Store;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::{Authenticator, BOOTSTRAP_NAME};
use crate::report::{csv_number, csv_text};

/// A token that has not acted for this long is flagged in the access review.
pub const STALE_AFTER_DAYS: i64 = 90;

/// One tenant in the governance report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, ToSchema)]
pub struct GovernanceRow {
    pub tenant_id: String,
    pub display_name: String,
    pub owner: String,
    pub owner_group: Option<String>,
    /// `requested`, `active`, `suspended`, `offboarding`, ...
    pub state: String,
    pub data_residency: String,
    /// Sorted.
    pub namespaces: Vec<String>,
    /// The budget period in force (`month`, `quarter`); null without a budget.
    pub period: Option<String>,
    pub currency: Option<String>,
    /// Decimal strings; null without a budget in force.
    pub budget: Option<String>,
    /// Spend from the start of the budget period to the end of the collected data.
    pub spent: Option<String>,
    /// The spend forecast to the end of the period.
    pub forecast: Option<String>,
    /// `ok`, `warning`, `exceeded`, ... (the enforcer's view); null without a budget.
    pub budget_state: Option<String>,
    /// Actions planned, pending, approved, scheduled or applied (not yet restored).
    pub open_enforcement_actions: i64,
    /// The tenant's last lifecycle change (request, approval, suspension, ...).
    pub state_changed_at: DateTime<Utc>,
}

/// The CSV header of the governance report, in the order of [`GovernanceRow`]'s fields.
pub const GOVERNANCE_CSV_HEADER: &str = "tenant_id,display_name,owner,owner_group,state,\
data_residency,namespaces,period,currency,budget,spent,forecast,budget_state,\
open_enforcement_actions,state_changed_at";

/// Every tenant with its budget status as of `as_of`.
pub async fn governance_rows(
    store: &Store,
    as_of: DateTime<Utc>,
    params: &StatusParams,
) -> Result<Vec<GovernanceRow>, ledger::Error> {
    let tenants = store.list_tenants(None).await?;
    let statuses: HashMap<_, _> = store
        .budget_statuses(as_of, params)
        .await?
        .into_iter()
        .map(|s| (s.tenant.clone(), s))
        .collect();
    let mut open: HashMap<_, i64> = HashMap::new();
    for rung in store.open_rungs().await? {
        if matches!(
            rung.state,
            ActionState::Planned
                | ActionState::Pending
                | ActionState::Approved
                | ActionState::Scheduled
                | ActionState::Applied
        ) {
            *open.entry(rung.tenant).or_default() += 1;
        }
    }
    Ok(tenants
        .into_iter()
        .map(|t| {
            let status = statuses.get(&t.id);
            GovernanceRow {
                tenant_id: t.id.to_string(),
                display_name: t.display_name.as_str().to_owned(),
                owner: t.owner.as_str().to_owned(),
                owner_group: t.owner_group.map(|g| g.as_str().to_owned()),
                state: t.state.as_str().to_owned(),
                data_residency: t.data_residency.as_str().to_owned(),
                namespaces: t.namespaces.iter().map(|n| n.as_str().to_owned()).collect(),
                period: status.map(|s| s.period.as_str().to_owned()),
                currency: status.map(|s| s.budget.currency.code().to_owned()),
                budget: status.map(|s| s.budget.amount.to_string()),
                spent: status.map(|s| s.spent.to_string()),
                forecast: status.map(|s| s.forecast.to_string()),
                budget_state: status.map(|s| s.state.as_str().to_owned()),
                open_enforcement_actions: open.get(&t.id).copied().unwrap_or(0),
                state_changed_at: t.state_changed_at,
            }
        })
        .collect())
}

/// The governance report as CSV (RFC 4180, a header row; namespaces joined by `;`; an absent
/// value is an empty cell).
pub fn write_governance_csv(rows: &[GovernanceRow], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "{GOVERNANCE_CSV_HEADER}")?;
    let text = |v: &Option<String>| v.as_deref().map(csv_text).unwrap_or_default();
    let number = |v: &Option<String>| v.as_deref().map(csv_number).unwrap_or_default();
    for r in rows {
        let cells = [
            csv_text(&r.tenant_id),
            csv_text(&r.display_name),
            csv_text(&r.owner),
            text(&r.owner_group),
            csv_text(&r.state),
            csv_text(&r.data_residency),
            csv_text(&r.namespaces.join(";")),
            text(&r.period),
            text(&r.currency),
            number(&r.budget),
            number(&r.spent),
            number(&r.forecast),
            text(&r.budget_state),
            r.open_enforcement_actions.to_string(),
            csv_text(&ledger::audit::timestamp(r.state_changed_at)),
        ];
        writeln!(out, "{}", cells.join(","))?;
    }
    Ok(())
}

/// One audit record as the API and the report show it. A tenant's personal values (owner,
/// display name) appear as `{"personal_data": <id>}`, as they are chained.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AuditRecordView {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub role: String,
    pub action: String,
    pub target_type: String,
    pub target_id: String,
    #[schema(value_type = Option<Object>)]
    pub before: Option<Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<Value>,
    pub request_id: String,
    /// Hex SHA-256 of the previous record's hash and this record's canonical form.
    pub hash: String,
}

impl From<AuditRecord> for AuditRecordView {
    fn from(r: AuditRecord) -> Self {
        AuditRecordView {
            seq: r.seq,
            at: r.at,
            actor: r.actor,
            role: r.role,
            action: r.action,
            target_type: r.target_type,
            target_id: r.target_id,
            before: r.before,
            after: r.after,
            request_id: r.request_id,
            hash: hex::encode(r.hash),
        }
    }
}

/// One identity that can act, or that acted (an OIDC user, a system component).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Identity {
    /// `config_token`, `bootstrap_token`, `managed_token`, `oidc_mapping` or `audit_actor`
    /// (a name in the audit trail that is none of the tokens: an OIDC user, a component).
    #[schema(
        value_type = String,
        pattern = "^(config_token|bootstrap_token|managed_token|oidc_mapping|audit_actor)$"
    )]
    pub kind: &'static str,
    /// The token's name, the actor's name, or for a mapping `<claim>=<value>`.
    pub name: String,
    pub role: String,
    /// A tenant token's tenant; for a tenant mapping, `claim:<the claim that names it>`.
    pub scope: Option<String>,
    /// Managed tokens: `live`, `expired` or `revoked`; the bootstrap token: `live` or
    /// `retired`; otherwise null.
    pub state: Option<String>,
    /// The mapping's issuer (OIDC mappings only).
    pub issuer: Option<String>,
    /// The identity's latest audit record (its latest mutation, at any time).
    pub last_acted_at: Option<DateTime<Utc>>,
    /// A managed token's last authenticated request (reads too), to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Its audit records in the period, by action.
    pub mutations_in_period: BTreeMap<String, i64>,
    /// A live token with no use and no audit record in the last 90 days (created more than
    /// 90 days ago). Configuration tokens' reads are not recorded, so for them only audit
    /// records count.
    pub unused_90_days: bool,
}

/// The access review of the period `[from, to)`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AccessReview {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub generated_at: DateTime<Utc>,
    pub identities: Vec<Identity>,
}

/// Every identity that can act: configuration tokens, the bootstrap token, managed tokens,
/// OIDC role mappings, and every other name in the audit trail.
pub async fn access_review(
    store: &Store,
    auth: &Authenticator,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<AccessReview, ledger::Error> {
    let mut activity: HashMap<(String, String), ActorActivity> = store
        .actor_activity(from, to)
        .await?
        .into_iter()
        .map(|a| ((a.actor.clone(), a.role.clone()), a))
        .collect();
    let stale_before = now - Duration::days(STALE_AFTER_DAYS);
    let mut take = |name: &str, role: &str| activity.remove(&(name.to_owned(), role.to_owned()));
    let mut identities = Vec::new();
    let mut push = |kind: &'static str,
                    name: String,
                    role: String,
                    scope: Option<String>,
                    state: Option<String>,
                    acted: Option<ActorActivity>,
                    last_used_at: Option<DateTime<Utc>>,
                    unused: bool| {
        identities.push(Identity {
            kind,
            name,
            role,
            scope,
            state,
            issuer: None,
            last_acted_at: acted.as_ref().map(|a| a.last_acted_at),
            last_used_at,
            mutations_in_period: acted
                .map(|a| a.actions_in_period.into_iter().collect())
                .unwrap_or_default(),
            unused_90_days: unused,
        })
    };
    for p in auth.configured_principals() {
        let role = p.role.name().to_owned();
        let scope = match &p.role {
            crate::auth::Role::Tenant(t) => Some(t.to_string()),
            _ => None,
        };
        let acted = take(&p.name, &role);
        let unused = acted
            .as_ref()
            .is_none_or(|a| a.last_acted_at < stale_before);
        push(
            "config_token",
            p.name,
            role,
            scope,
            None,
            acted,
            None,
            unused,
        );
    }
    if auth.has_bootstrap() {
        let retired = store.admin_token_created().await?;
        let acted = take(BOOTSTRAP_NAME, "admin");
        let unused = !retired
            && acted
                .as_ref()
                .is_none_or(|a| a.last_acted_at < stale_before);
        let state = if retired { "retired" } else { "live" };
        push(
            "bootstrap_token",
            BOOTSTRAP_NAME.to_owned(),
            "admin".to_owned(),
            None,
            Some(state.to_owned()),
            acted,
            None,
            unused,
        );
    }
    for t in store.list_api_tokens().await? {
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.is_live(now) {
            "live"
        } else {
            "expired"
        };
        let acted = take(&t.name, &t.role);
        let last_seen = [t.last_used_at, acted.as_ref().map(|a| a.last_acted_at)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(t.created_at);
        let unused = t.is_live(now) && last_seen < stale_before;
        push(
            "managed_token",
            t.name,
            t.role,
            t.tenant.map(|t| t.to_string()),
            Some(state.to_owned()),
            acted,
            t.last_used_at,
            unused,
        );
    }
    for m in auth.oidc_mappings() {
        identities.push(Identity {
            kind: "oidc_mapping",
            name: format!("{}={}", m.claim, m.value),
            role: m.role.to_owned(),
            scope: m.tenant_claim.map(|c| format!("claim:{c}")),
            state: None,
            issuer: Some(m.issuer),
            last_acted_at: None,
            last_used_at: None,
            mutations_in_period: BTreeMap::new(),
            unused_90_days: false,
        });
    }
    let mut others: Vec<ActorActivity> = activity.into_values().collect();
    others.sort_by(|a, b| (&a.actor, &a.role).cmp(&(&b.actor, &b.role)));
    for a in others {
        identities.push(Identity {
            kind: "audit_actor",
            name: a.actor,
            role: a.role,
            scope: None,
            state: None,
            issuer: None,
            last_acted_at: Some(a.last_acted_at),
            last_used_at: None,
            mutations_in_period: a.actions_in_period.into_iter().collect(),
            unused_90_days: false,
        });
    }
    Ok(AccessReview {
        from,
        to,
        generated_at: now,
        identities,
    })
}

/// One region's tenants and their namespaces.
#[derive(Debug, Clone, Serialize)]
pub struct Residency {
    pub region: String,
    pub tenants: Vec<ResidentTenant>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResidentTenant {
    pub tenant_id: String,
    pub namespaces: Vec<String>,
}

/// One enforcement action of the period's history.
#[derive(Debug, Clone, Serialize)]
pub struct EnforcementEntry {
    pub id: i64,
    pub tenant_id: String,
    pub period_start: chrono::NaiveDate,
    pub step_key: String,
    pub kind: String,
    pub state: String,
    pub reason: String,
    pub currency: String,
    pub budget: String,
    pub spent: String,
    pub forecast: String,
    pub not_before: DateTime<Utc>,
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
}

/// `budgetd report audit`: the three API reports and data residency and enforcement history,
/// for `[from, to)`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub tenant: Option<String>,
    pub governance: Vec<GovernanceRow>,
    /// The period's audit records, oldest first.
    pub audit: Vec<AuditRecordView>,
    pub access_review: AccessReview,
    pub residency: Vec<Residency>,
    /// Actions whose `not_before` is in the period, oldest first.
    pub enforcement: Vec<EnforcementEntry>,
}

const PAGE: i64 = 1000;

/// Gathers the audit report (with `tenant`, that tenant's rows only; the access review is
/// always whole: identities are not a tenant's).
pub async fn audit_report(
    store: &Store,
    auth: &Authenticator,
    params: &StatusParams,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    tenant: Option<&ledger::tenant::TenantId>,
    now: DateTime<Utc>,
) -> Result<AuditReport, ledger::Error> {
    let mut governance = governance_rows(store, now, params).await?;
    if let Some(t) = tenant {
        governance.retain(|r| r.tenant_id == t.as_str());
    }
    let mut audit = Vec::new();
    let mut before_seq = None;
    loop {
        let page = store
            .audit_page(&ledger::store::AuditFilter {
                tenant: tenant.cloned(),
                from: Some(from),
                to: Some(to),
                before_seq,
                limit: PAGE,
                ..Default::default()
            })
            .await?;
        let full = page.len() as i64 == PAGE;
        before_seq = page.last().map(|r| r.seq);
        audit.extend(page.into_iter().map(AuditRecordView::from));
        if !full {
            break;
        }
    }
    audit.reverse();
    let mut regions: BTreeMap<String, Vec<ResidentTenant>> = BTreeMap::new();
    for row in &governance {
        regions
            .entry(row.data_residency.clone())
            .or_default()
            .push(ResidentTenant {
                tenant_id: row.tenant_id.clone(),
                namespaces: row.namespaces.clone(),
            });
    }
    let mut enforcement = Vec::new();
    let mut before_id = None;
    loop {
        let page = store
            .list_actions(&ledger::store::ActionFilter {
                state: None,
                tenant: tenant.cloned(),
                before_id,
                limit: PAGE,
            })
            .await?;
        let full = page.len() as i64 == PAGE;
        before_id = page.last().map(|a| a.id);
        enforcement.extend(
            page.into_iter()
                .filter(|a| a.not_before >= from && a.not_before < to)
                .map(|a| EnforcementEntry {
                    id: a.id,
                    tenant_id: a.tenant.to_string(),
                    period_start: a.period_start,
                    step_key: a.step_key,
                    kind: a.kind.as_str().to_owned(),
                    state: a.state.as_str().to_owned(),
                    reason: a.reason,
                    currency: a.budget.currency.code().to_owned(),
                    budget: a.budget.amount.to_string(),
                    spent: a.spent.to_string(),
                    forecast: a.forecast.to_string(),
                    not_before: a.not_before,
                    decided_by: a.decided_by,
                    decided_at: a.decided_at,
                }),
        );
        if !full {
            break;
        }
    }
    enforcement.reverse();
    Ok(AuditReport {
        from,
        to,
        tenant: tenant.map(|t| t.to_string()),
        governance,
        audit,
        access_review: access_review(store, auth, from, to, now).await?,
        residency: regions
            .into_iter()
            .map(|(region, tenants)| Residency { region, tenants })
            .collect(),
        enforcement,
    })
}

fn time_cell(at: Option<DateTime<Utc>>) -> String {
    at.map(|at| csv_text(&ledger::audit::timestamp(at)))
        .unwrap_or_default()
}

impl AuditReport {
    /// Five CSV tables, each after a `# <part>` line and followed by an empty line:
    /// `governance`, `audit`, `access_review`, `residency`, `enforcement`.
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(out, "# governance")?;
        write_governance_csv(&self.governance, out)?;
        writeln!(out)?;
        writeln!(out, "# audit")?;
        writeln!(
            out,
            "seq,at,actor,role,action,target_type,target_id,before,after,request_id,hash"
        )?;
        let json = |v: &Option<Value>| {
            v.as_ref()
                .map(|v| csv_text(&ledger::audit::canonical_json(v)))
                .unwrap_or_default()
        };
        for r in &self.audit {
            let cells = [
                r.seq.to_string(),
                time_cell(Some(r.at)),
                csv_text(&r.actor),
                csv_text(&r.role),
                csv_text(&r.action),
                csv_text(&r.target_type),
                csv_text(&r.target_id),
                json(&r.before),
                json(&r.after),
                csv_text(&r.request_id),
                csv_text(&r.hash),
            ];
            writeln!(out, "{}", cells.join(","))?;
        }
        writeln!(out)?;
        writeln!(out, "# access_review")?;
        writeln!(out, "kind,name,role,scope,state,issuer,last_acted_at,last_used_at,mutations_in_period,unused_90_days")?;
        let text = |v: &Option<String>| v.as_deref().map(csv_text).unwrap_or_default();
        for i in &self.access_review.identities {
            let mutations: Vec<String> = i
                .mutations_in_period
                .iter()
                .map(|(action, n)| format!("{action}={n}"))
                .collect();
            let cells = [
                csv_text(i.kind),
                csv_text(&i.name),
                csv_text(&i.role),
                text(&i.scope),
                text(&i.state),
                text(&i.issuer),
                time_cell(i.last_acted_at),
                time_cell(i.last_used_at),
                csv_text(&mutations.join(";")),
                i.unused_90_days.to_string(),
            ];
            writeln!(out, "{}", cells.join(","))?;
        }
        writeln!(out)?;
        writeln!(out, "# residency")?;
        writeln!(out, "region,tenant_id,namespaces")?;
        for region in &self.residency {
            for t in &region.tenants {
                writeln!(
                    out,
                    "{},{},{}",
                    csv_text(&region.region),
                    csv_text(&t.tenant_id),
                    csv_text(&t.namespaces.join(";"))
                )?;
            }
        }
        writeln!(out)?;
        writeln!(out, "# enforcement")?;
        writeln!(out, "id,tenant_id,period_start,step_key,kind,state,reason,currency,budget,spent,forecast,not_before,decided_by,decided_at")?;
        for a in &self.enforcement {
            let cells = [
                a.id.to_string(),
                csv_text(&a.tenant_id),
                a.period_start.to_string(),
                csv_text(&a.step_key),
                csv_text(&a.kind),
                csv_text(&a.state),
                csv_text(&a.reason),
                csv_text(&a.currency),
                csv_number(&a.budget),
                csv_number(&a.spent),
                csv_number(&a.forecast),
                time_cell(Some(a.not_before)),
                text(&a.decided_by),
                time_cell(a.decided_at),
            ];
            writeln!(out, "{}", cells.join(","))?;
        }
        Ok(())
    }
}
