//! Writing events to the outbox, in the transaction of the change they announce. The database
//! fills in `txid` (this transaction) and `seq` (the aggregate's next number, under a lock held to
//! commit): what reconcilers order by (see `reconcilers.rs`).

use serde_json::Value;
use sqlx::PgConnection;

use super::query;
use crate::audit::now_micros;
use crate::error::Error;

pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    aggregate_type: &str,
    aggregate_id: &str,
    event_type: &str,
    payload: Value,
) -> Result<(), Error> {
    query(
        "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
         values ($1, $2, $3, $4, $5)",
    )
    .bind(aggregate_type)
    .bind(aggregate_id)
    .bind(event_type)
    .bind(payload)
    .bind(now_micros())
    .execute(conn)
    .await?;
    Ok(())
}
