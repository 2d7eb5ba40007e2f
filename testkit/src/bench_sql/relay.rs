//! The Kafka relay benchmark's (and tests') outbox backlog: events written straight into the
//! outbox, as the store's writes leave them (the trigger numbers each tenant's events).

use anyhow::Context;
use sqlx::Row;

use ::ledger::store::OutboxEvent;

use super::BenchConnection;

impl BenchConnection {
    /// Writes `per_tenant` events for each of `tenants` tenants (`tenant-00000`, ...), round
    /// by round (every tenant's first event, then every second, ...), so each tenant's events
    /// are spread over the whole backlog. Event types cycle through a few real ones; the
    /// payload names the round. Returns how many it wrote.
    pub async fn write_outbox_backlog(
        &mut self,
        tenants: usize,
        per_tenant: usize,
    ) -> anyhow::Result<u64> {
        let sql = "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
             select 'tenant', format('tenant-%s', lpad(t::text, 5, '0')), \
                    (array['tenant.updated', 'tenant.budget_changed', 'tenant.exemption_set'])[1 + r % 3], \
                    jsonb_build_object('round', r, 'note', repeat('x', 200)), \
                    now() \
             from generate_series(1, $2::int) r, generate_series(0, $1::int - 1) t \
             order by r, t";
        let written = sqlx::query(sql)
            .bind(tenants as i32)
            .bind(per_tenant as i32)
            .execute(&mut self.0)
            .await
            .context("writing the outbox backlog")?
            .rows_affected();
        Ok(written)
    }

    /// Every outbox event in id order: the baseline's payloads and the order check's truth.
    pub async fn outbox_events(&mut self) -> anyhow::Result<Vec<OutboxEvent>> {
        let rows = sqlx::query(
            "select id, aggregate_type, aggregate_id, seq, event_type, payload, created_at \
             from outbox order by id",
        )
        .fetch_all(&mut self.0)
        .await
        .context("reading the outbox")?;
        rows.iter()
            .map(|row| {
                Ok(OutboxEvent {
                    id: row.try_get("id")?,
                    aggregate_type: row.try_get("aggregate_type")?,
                    aggregate_id: row.try_get("aggregate_id")?,
                    seq: row.try_get("seq")?,
                    event_type: row.try_get("event_type")?,
                    payload: row.try_get("payload")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }
}
