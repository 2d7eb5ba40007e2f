//! Offboarding in the store: its start (state, record, final report, audit, outbox in one
//! transaction), its steps (fenced, idempotent, audited) and pseudonymisation on completion.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};

use super::audit::{self, AuditEvent, PERSONAL_FIELDS};
use super::costs::{daily_costs_in, DailyCost};
use super::enforcement::check_fence;
use super::tenants::{lock_tenant, refused_error, set_state};
use super::{budgets, outbox, query, query_scalar, Store};
use crate::audit::{canonical_json, now_micros, Actor, AuditContext};
use crate::currency::Currency;
use crate::enforcement::Fence;
use crate::error::Error;
use crate::names::Reason;
use crate::offboarding::{
    final_report_period, is_pseudonym, pseudonym, FinalReport, Offboarding, OffboardingSettings,
};
use crate::tenant::{LifecycleOp, Tenant, TenantId, TenantState};

const OFFBOARDING_COLUMNS: &str = "tenant_id, started_at, requested_by, reason, grace_until, \
     retain_until, pseudonymise_display_name, access_revoked_at, resources_deleted_at, completed_at";

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Database(sqlx::Error::Decode(format!("{what}: {e}").into()))
}

fn offboarding_from_row(row: &PgRow) -> Result<Offboarding, Error> {
    Ok(Offboarding {
        tenant: TenantId::parse(row.try_get("tenant_id")?)
            .map_err(|e| corrupt("tenant_offboardings row", e))?,
        started_at: row.try_get("started_at")?,
        requested_by: row.try_get("requested_by")?,
        reason: row.try_get("reason")?,
        grace_until: row.try_get("grace_until")?,
        retain_until: row.try_get("retain_until")?,
        pseudonymise_display_name: row.try_get("pseudonymise_display_name")?,
        access_revoked_at: row.try_get("access_revoked_at")?,
        resources_deleted_at: row.try_get("resources_deleted_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}

async fn lock_offboarding(
    conn: &mut PgConnection,
    id: &TenantId,
) -> Result<Option<Offboarding>, Error> {
    let row = query(&format!(
        "select {OFFBOARDING_COLUMNS} from tenant_offboardings where tenant_id = $1 for update"
    ))
    .bind(id.as_str())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(offboarding_from_row).transpose()
}

fn not_offboarding(id: &TenantId) -> Error {
    Error::NotFound {
        what: "offboarding of tenant",
        id: id.to_string(),
    }
}

/// The system actor of the offboarding steps the reconciler takes.
fn step_context(id: &TenantId) -> AuditContext {
    AuditContext {
        actor: Actor::system("offboarding"),
        request_id: format!("offboarding-{id}"),
    }
}

fn offboarding_json(o: &Offboarding) -> Value {
    let at = |t: Option<DateTime<Utc>>| t.map(crate::audit::timestamp);
    json!({
        "started_at": crate::audit::timestamp(o.started_at),
        "requested_by": o.requested_by,
        "reason": o.reason,
        "grace_until": crate::audit::timestamp(o.grace_until),
        "retain_until": crate::audit::timestamp(o.retain_until),
        "pseudonymise_display_name": o.pseudonymise_display_name,
        "access_revoked_at": at(o.access_revoked_at),
        "resources_deleted_at": at(o.resources_deleted_at),
        "completed_at": at(o.completed_at),
    })
}

/// The stored document of a final report; its canonical JSON is what `sha256` covers.
fn report_document(
    id: &TenantId,
    from: NaiveDate,
    to: NaiveDate,
    closed_at: DateTime<Utc>,
    rows: &Value,
) -> Value {
    json!({
        "tenant_id": id.as_str(),
        "period_from": from.to_string(),
        "period_to": to.to_string(),
        "closed_at": crate::audit::timestamp(closed_at),
        "rows": rows,
    })
}

fn cost_rows_json(costs: &[DailyCost]) -> Value {
    Value::Array(
        costs
            .iter()
            .map(|c| {
                json!({
                    "day": c.day.to_string(),
                    "meter": c.meter,
                    "quantity": c.quantity.to_string(),
                    "unit": c.unit,
                    "amount": c.amount.to_string(),
                    "currency": c.currency.code(),
                    "priced_quantity": c.priced_quantity.to_string(),
                    "price_unit": c.price_unit,
                })
            })
            .collect(),
    )
}

fn cost_rows_from_json(id: &TenantId, rows: &Value) -> Result<Vec<DailyCost>, Error> {
    let bad = |e: &dyn std::fmt::Display| corrupt("tenant_final_reports row", e);
    let items = rows
        .as_array()
        .ok_or_else(|| bad(&"rows is not an array"))?;
    items
        .iter()
        .map(|r| {
            let text = |key: &str| -> Result<&str, Error> {
                r.get(key)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad(&format!("{key} is missing")))
            };
            let decimal = |key: &str| -> Result<Decimal, Error> {
                Decimal::from_str(text(key)?).map_err(|e| bad(&e))
            };
            Ok(DailyCost {
                tenant: id.clone(),
                day: NaiveDate::from_str(text("day")?).map_err(|e| bad(&e))?,
                meter: text("meter")?.to_owned(),
                quantity: decimal("quantity")?,
                unit: text("unit")?.to_owned(),
                amount: decimal("amount")?,
                currency: Currency::parse("currency", text("currency")?).map_err(|e| bad(&e))?,
                priced_quantity: decimal("priced_quantity")?,
                price_unit: text("price_unit")?.to_owned(),
            })
        })
        .collect()
}

/// Writes the final report in the caller's transaction: the costs as they stand now.
async fn write_final_report(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    id: &TenantId,
    closed_at: DateTime<Utc>,
) -> Result<(), Error> {
    let budget = budgets::budget_at(&mut *conn, id, closed_at).await?;
    let (from, to) = final_report_period(budget.as_ref(), closed_at);
    let next_day = to
        .succ_opt()
        .expect("the ledger's days end before 9999-12-31");
    let costs = daily_costs_in(&mut *conn, Some(id), from, next_day).await?;
    let rows = cost_rows_json(&costs);
    let document = report_document(id, from, to, closed_at, &rows);
    let sha256: [u8; 32] = Sha256::digest(canonical_json(&document).as_bytes()).into();
    query(
        "insert into tenant_final_reports (tenant_id, period_from, period_to, closed_at, rows, \
         sha256) values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_str())
    .bind(from)
    .bind(to)
    .bind(closed_at)
    .bind(&rows)
    .bind(sha256.as_slice())
    .execute(&mut *conn)
    .await?;
    audit::append(
        &mut *conn,
        ctx,
        AuditEvent {
            action: "tenant.final_report",
            target_type: "tenant",
            target_id: id.as_str(),
            before: None,
            after: Some(json!({
                "period_from": from.to_string(),
                "period_to": to.to_string(),
                "closed_at": crate::audit::timestamp(closed_at),
                "rows": costs.len(),
                "sha256": hex::encode(sha256),
            })),
        },
    )
    .await
}

impl Store {
    /// Uses `key` for pseudonyms instead of the per-installation key the database generated
    /// (`BUDGETD_PSEUDONYMISATION_KEY`). The key is never logged.
    pub fn with_pseudonymisation_key(mut self, key: Option<secrecy::SecretSlice<u8>>) -> Store {
        self.pseudonymisation_key = key.map(std::sync::Arc::new);
        self
    }

    /// A tenant's state alone (a cheap read for every request of a tenant token), or `None` if
    /// there is no such tenant.
    pub async fn tenant_state(&self, id: &TenantId) -> Result<Option<TenantState>, Error> {
        self.run("tenant_state", || async {
            let mut tx = self.begin().await?;
            let state: Option<String> = query_scalar("select state from tenants where id = $1")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            state
                .map(|s| TenantState::parse(&s).map_err(|e| corrupt("tenants row", e)))
                .transpose()
        })
        .await
    }

    /// Starts offboarding an active or suspended tenant at `now`: in one transaction the state
    /// `offboarding`, the offboarding record (grace and retention from `settings`), the final
    /// report, their audit records and the outbox event `tenant.offboarding` (with
    /// `grace_until`). Asking again while it runs changes nothing and answers the same record;
    /// from any other state it is [`Error::Transition`].
    pub async fn offboard_tenant(
        &self,
        ctx: &AuditContext,
        id: &TenantId,
        reason: &Reason,
        settings: OffboardingSettings,
        now: DateTime<Utc>,
    ) -> Result<(Tenant, Offboarding), Error> {
        self.run("offboard_tenant", || async {
            let mut tx = self.begin().await?;
            let before = lock_tenant(&mut tx, id).await?;
            let to = match before.state.decide(LifecycleOp::Offboard) {
                Ok(Some(to)) => to,
                Ok(None) => {
                    let record = lock_offboarding(&mut tx, id).await?;
                    tx.commit().await?;
                    // Tenants moved to offboarding before offboarding had a record have none.
                    return Ok((before, record.ok_or_else(|| not_offboarding(id))?));
                }
                Err(refused) => return Err(refused_error(id, refused)),
            };
            let started_at =
                DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range");
            let row = query(&format!(
                "insert into tenant_offboardings (tenant_id, started_at, requested_by, reason, \
                 grace_until, retain_until, pseudonymise_display_name) \
                 values ($1, $2, $3, $4, $5, $6, $7) returning {OFFBOARDING_COLUMNS}"
            ))
            .bind(id.as_str())
            .bind(started_at)
            .bind(&ctx.actor.name)
            .bind(reason.as_str())
            .bind(settings.grace_until(started_at))
            .bind(settings.retain_until(started_at))
            .bind(settings.pseudonymise_display_name)
            .fetch_one(&mut *tx)
            .await?;
            let record = offboarding_from_row(&row)?;
            let after = set_state(&mut tx, id, to).await?;
            audit::append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "tenant.offboarding",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(before.to_json()),
                    after: Some(json!({
                        "tenant": after.to_json(),
                        "reason": reason.as_str(),
                        "offboarding": offboarding_json(&record),
                    })),
                },
            )
            .await?;
            write_final_report(&mut tx, ctx, id, started_at).await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                id.as_str(),
                LifecycleOp::Offboard.event_type(),
                json!({
                    "tenant": after.to_json(),
                    "previous_state": before.state.as_str(),
                    "reason": reason.as_str(),
                    "grace_until": crate::audit::timestamp(record.grace_until),
                    "retain_until": crate::audit::timestamp(record.retain_until),
                }),
            )
            .await?;
            tx.commit().await?;
            Ok((after, record))
        })
        .await
    }

    /// A tenant's offboarding record, if its offboarding started.
    pub async fn offboarding(&self, id: &TenantId) -> Result<Option<Offboarding>, Error> {
        self.run("offboarding", || async {
            let mut tx = self.begin().await?;
            let row = query(&format!(
                "select {OFFBOARDING_COLUMNS} from tenant_offboardings where tenant_id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            row.as_ref().map(offboarding_from_row).transpose()
        })
        .await
    }

    /// A tenant's final report, if its offboarding started. Its hash is checked on every read:
    /// a stored report that does not match it is an error, never served.
    pub async fn final_report(&self, id: &TenantId) -> Result<Option<FinalReport>, Error> {
        self.run("final_report", || async {
            let mut tx = self.begin().await?;
            let row = query(
                "select period_from, period_to, closed_at, rows, sha256 \
                 from tenant_final_reports where tenant_id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let from: NaiveDate = row.try_get("period_from")?;
            let to: NaiveDate = row.try_get("period_to")?;
            let closed_at: DateTime<Utc> = row.try_get("closed_at")?;
            let rows: Value = row.try_get("rows")?;
            let stored: Vec<u8> = row.try_get("sha256")?;
            let document = report_document(id, from, to, closed_at, &rows);
            let sha256: [u8; 32] = Sha256::digest(canonical_json(&document).as_bytes()).into();
            if stored != sha256 {
                return Err(corrupt(
                    "tenant_final_reports row",
                    format!("the report of tenant {id} does not match its SHA-256"),
                ));
            }
            Ok(Some(FinalReport {
                tenant: id.clone(),
                from,
                to,
                closed_at,
                costs: cost_rows_from_json(id, &rows)?,
                sha256,
            }))
        })
        .await
    }

    /// Records that the tenant's access is revoked (its RoleBindings removed; its tokens are
    /// refused from the start of offboarding): audited, outbox `tenant.access_revoked`.
    /// Idempotent: once recorded it answers the record as it is. Fenced like every write of
    /// the leader's.
    pub async fn offboarding_access_revoked(
        &self,
        fence: Fence,
        id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Offboarding, Error> {
        self.run("offboarding_access_revoked", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            lock_tenant(&mut tx, id).await?;
            let record = lock_offboarding(&mut tx, id)
                .await?
                .ok_or_else(|| not_offboarding(id))?;
            if record.access_revoked_at.is_some() {
                tx.commit().await?;
                return Ok(record);
            }
            let at = DateTime::from_timestamp_micros(now.timestamp_micros().max(
                record.started_at.timestamp_micros(),
            ))
            .expect("now is in range");
            let row = query(&format!(
                "update tenant_offboardings set access_revoked_at = $2 where tenant_id = $1 \
                 returning {OFFBOARDING_COLUMNS}"
            ))
            .bind(id.as_str())
            .bind(at)
            .fetch_one(&mut *tx)
            .await?;
            let after = offboarding_from_row(&row)?;
            audit::append(
                &mut tx,
                &step_context(id),
                AuditEvent {
                    action: "tenant.access_revoked",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(offboarding_json(&record)),
                    after: Some(offboarding_json(&after)),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                id.as_str(),
                "tenant.access_revoked",
                json!({ "tenant_id": id.as_str(), "access_revoked_at": crate::audit::timestamp(at) }),
            )
            .await?;
            tx.commit().await?;
            Ok(after)
        })
        .await
    }

    /// Records that the tenant's namespaces and every object budgetd created are deleted, and
    /// completes offboarding in the same transaction: the tenant becomes `offboarded`, its
    /// personal data is pseudonymised (tenants row, personal data of its audit records, its
    /// outbox payloads), each step audited, outbox `tenant.offboarded`. Refused (409
    /// `grace_period`) before access was revoked and before `grace_until`. Idempotent: an
    /// offboarded tenant is answered as it is. Fenced like every write of the leader's.
    pub async fn offboarding_resources_deleted(
        &self,
        fence: Fence,
        id: &TenantId,
        now: DateTime<Utc>,
    ) -> Result<Tenant, Error> {
        self.run("offboarding_resources_deleted", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let before = lock_tenant(&mut tx, id).await?;
            let record = lock_offboarding(&mut tx, id)
                .await?
                .ok_or_else(|| not_offboarding(id))?;
            if before.state == TenantState::Offboarded {
                tx.commit().await?;
                return Ok(before);
            }
            let to = before
                .state
                .apply(LifecycleOp::CompleteOffboarding)
                .map_err(|refused| refused_error(id, refused))?;
            let now =
                DateTime::from_timestamp_micros(now.timestamp_micros()).expect("now is in range");
            if let Some(why) = record.deletion_blocked(now) {
                return Err(Error::conflict("grace_period", why));
            }
            let ctx = step_context(id);
            let row = query(&format!(
                "update tenant_offboardings set resources_deleted_at = $2, completed_at = $2 \
                 where tenant_id = $1 returning {OFFBOARDING_COLUMNS}"
            ))
            .bind(id.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let completed = offboarding_from_row(&row)?;
            audit::append(
                &mut tx,
                &ctx,
                AuditEvent {
                    action: "tenant.resources_deleted",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(offboarding_json(&record)),
                    after: Some(offboarding_json(&completed)),
                },
            )
            .await?;
            let offboarded = set_state(&mut tx, id, to).await?;
            let reason = "offboarding completed: resources deleted after the grace period";
            audit::append(
                &mut tx,
                &ctx,
                AuditEvent {
                    action: "tenant.offboarded",
                    target_type: "tenant",
                    target_id: id.as_str(),
                    before: Some(before.to_json()),
                    after: Some(json!({ "tenant": offboarded.to_json(), "reason": reason })),
                },
            )
            .await?;
            outbox::enqueue(
                &mut tx,
                "tenant",
                id.as_str(),
                LifecycleOp::CompleteOffboarding.event_type(),
                json!({
                    "tenant": offboarded.to_json(),
                    "previous_state": before.state.as_str(),
                    "reason": reason,
                    "retain_until": crate::audit::timestamp(completed.retain_until),
                }),
            )
            .await?;
            // Last, so that the records above are pseudonymised with everything else.
            let key = self.pseudonymisation_key_in(&mut tx).await?;
            let tenant = pseudonymise(&mut tx, &ctx, &offboarded, &completed, &key, now).await?;
            tx.commit().await?;
            Ok(tenant)
        })
        .await
    }

    async fn pseudonymisation_key_in(
        &self,
        conn: &mut PgConnection,
    ) -> Result<secrecy::SecretSlice<u8>, Error> {
        if let Some(key) = &self.pseudonymisation_key {
            return Ok(key.expose_secret().to_vec().into());
        }
        let key: Vec<u8> = query_scalar("select key from pseudonymisation_key")
            .fetch_one(conn)
            .await?;
        Ok(key.into())
    }
}

/// Replaces the tenant's personal data by keyed pseudonyms: the tenants row, the values its
/// audit records refer to, and its outbox payloads; audited (without the values).
async fn pseudonymise(
    conn: &mut PgConnection,
    ctx: &AuditContext,
    tenant: &Tenant,
    record: &Offboarding,
    key: &secrecy::SecretSlice<u8>,
    now: DateTime<Utc>,
) -> Result<Tenant, Error> {
    let key = key.expose_secret();
    let fields: Vec<&str> = PERSONAL_FIELDS
        .into_iter()
        .filter(|&f| f == "owner" || record.pseudonymise_display_name)
        .collect();
    let replace = |field: &str, value: &str| -> Option<String> {
        (fields.contains(&field) && !is_pseudonym(value)).then(|| pseudonym(key, field, value))
    };

    let stored: Vec<(i64, String, String)> = sqlx::query_as(
        "select id, field, value from personal_data \
         where tenant_id = $1 and pseudonymised_at is null and field = any($2) order by id",
    )
    .bind(tenant.id.as_str())
    .bind(&fields)
    .fetch_all(&mut *conn)
    .await?;
    for (id, field, value) in &stored {
        if let Some(pseudonym) = replace(field, value) {
            query("update personal_data set value = $2, pseudonymised_at = $3 where id = $1")
                .bind(id)
                .bind(pseudonym)
                .bind(now)
                .execute(&mut *conn)
                .await?;
        }
    }

    let events: Vec<(i64, Value)> = sqlx::query_as(
        "select id, payload from outbox where aggregate_type = 'tenant' and aggregate_id = $1 \
         order by id",
    )
    .bind(tenant.id.as_str())
    .fetch_all(&mut *conn)
    .await?;
    let mut rewritten = 0;
    for (id, mut payload) in events {
        let mut changed = false;
        replace_personal(&mut payload, &mut |field, value| {
            let pseudonym = replace(field, value);
            changed |= pseudonym.is_some();
            pseudonym
        });
        if changed {
            query("update outbox set payload = $2 where id = $1")
                .bind(id)
                .bind(&payload)
                .execute(&mut *conn)
                .await?;
            rewritten += 1;
        }
    }

    let owner =
        replace("owner", tenant.owner.as_str()).unwrap_or_else(|| tenant.owner.as_str().to_owned());
    let display_name = replace("display_name", tenant.display_name.as_str())
        .unwrap_or_else(|| tenant.display_name.as_str().to_owned());
    let row = query(&format!(
        "update tenants set owner = $2, display_name = $3, updated_at = $4 where id = $1 \
         returning {}",
        super::tenants::TENANT_COLUMNS
    ))
    .bind(tenant.id.as_str())
    .bind(&owner)
    .bind(&display_name)
    .bind(now_micros())
    .fetch_one(&mut *conn)
    .await?;
    let after = super::tenants::tenant_from_row(&row)?;
    audit::append(
        &mut *conn,
        ctx,
        AuditEvent {
            action: "tenant.pseudonymise",
            target_type: "tenant",
            target_id: tenant.id.as_str(),
            before: None,
            after: Some(json!({
                "fields": fields,
                "personal_data_records": stored.len(),
                "outbox_events": rewritten,
            })),
        },
    )
    .await?;
    Ok(after)
}

/// Replaces every string under a personal-data key of `value` for which `f` gives a pseudonym.
fn replace_personal(value: &mut Value, f: &mut impl FnMut(&str, &str) -> Option<String>) {
    match value {
        Value::Object(map) => {
            for (key, member) in map.iter_mut() {
                if let (true, Some(text)) =
                    (PERSONAL_FIELDS.contains(&key.as_str()), member.as_str())
                {
                    if let Some(pseudonym) = f(key, text) {
                        *member = Value::String(pseudonym);
                    }
                } else {
                    replace_personal(member, f);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| replace_personal(item, f)),
        _ => {}
    }
}
