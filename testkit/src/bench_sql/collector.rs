//! `budgetd-dev bench collector`: what the benchmark checks in the ledger after collecting.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use ledger::Store;

/// Whether the collected window starting at `start` is complete, and the tenants it names as
/// incomplete.
pub async fn window_completeness(
    store: &Store,
    start: DateTime<Utc>,
) -> anyhow::Result<(bool, Vec<String>)> {
    Ok(sqlx::query_as(
        "select complete, incomplete_tenants from collected_windows where window_start = $1",
    )
    .bind(start)
    .fetch_one(store.pool())
    .await?)
}

/// The usage quantities in the ledger per meter, summed over the tenants and the windows that
/// start in `[from, to)`.
pub async fn usage_by_meter(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<BTreeMap<String, Decimal>> {
    let rows: Vec<(String, Decimal)> = sqlx::query_as(
        "select meter, sum(quantity) from ledger_entry_details where window_start >= $1 and window_start < $2 \
         and kind = 'usage' group by meter",
    )
    .bind(from)
    .bind(to)
    .fetch_all(store.pool())
    .await?;
    Ok(rows.into_iter().collect())
}
