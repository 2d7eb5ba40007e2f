//! The collector's commits: entries, unallocated usage, unpriced usage, the window record and
//! the watermark, all in one transaction.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::entries::{correct_entries_in, write_entries_in};
use super::{query, query_scalar, Store};
use crate::audit::now_micros;
use crate::entry::NewEntry;
use crate::error::Error;
use crate::usage::{CollectedWindow, CommitMode, CommitReport};

async fn record_window(
    conn: &mut PgConnection,
    w: &CollectedWindow,
    mode: &CommitMode,
) -> Result<(), Error> {
    let names: Vec<&str> = w
        .unallocated
        .iter()
        .map(|u| u.namespace_or_label.as_str())
        .collect();
    let reasons: Vec<&str> = w.unallocated.iter().map(|u| u.reason.as_str()).collect();
    let meters: Vec<&str> = w.unallocated.iter().map(|u| u.meter.as_str()).collect();
    let quantities: Vec<Decimal> = w.unallocated.iter().map(|u| u.quantity).collect();
    let units: Vec<&str> = w.unallocated.iter().map(|u| u.unit.as_str()).collect();
    let versions: Vec<i64> = w.unallocated.iter().map(|u| u.price_version).collect();
    let price_units: Vec<&str> = w
        .unallocated
        .iter()
        .map(|u| u.price_unit.as_str())
        .collect();
    let per_price_unit: Vec<Decimal> = w
        .unallocated
        .iter()
        .map(|u| u.units_per_price_unit)
        .collect();
    if let CommitMode::Recollect { .. } = mode {
        // The recollected window replaces what was unallocated before, including usage that
        // has since been attributed to a tenant.
        query("delete from unallocated_usage where window_start = $1 and window_end = $2")
            .bind(w.window.start())
            .bind(w.window.end())
            .execute(&mut *conn)
            .await?;
    }
    query(
        "insert into unallocated_usage (window_start, window_end, namespace_or_label, reason, meter, quantity, unit, \
                                        price_version, price_unit, units_per_price_unit) \
         select $1, $2, n, r, m, q, u, v, pu, upu \
         from unnest($3::text[], $4::text[], $5::text[], $6::numeric[], $7::text[], $8::bigint[], $9::text[], $10::numeric[]) \
             as x(n, r, m, q, u, v, pu, upu) \
         on conflict (window_start, window_end, namespace_or_label, reason, meter) do nothing",
    )
    .bind(w.window.start())
    .bind(w.window.end())
    .bind(&names)
    .bind(&reasons)
    .bind(&meters)
    .bind(&quantities)
    .bind(&units)
    .bind(&versions)
    .bind(&price_units)
    .bind(&per_price_unit)
    .execute(&mut *conn)
    .await?;

    let incomplete: Vec<&str> = w.incomplete_tenants.iter().map(|t| t.as_str()).collect();
    query(
        "insert into collected_windows (window_start, window_end, complete, incomplete_tenants, problems, entries, collected_at) \
         values ($1, $2, $3, $4, $5, $6, $7) \
         on conflict (window_start, window_end) do update set complete = excluded.complete, \
             incomplete_tenants = excluded.incomplete_tenants, problems = excluded.problems, \
             entries = excluded.entries, collected_at = excluded.collected_at",
    )
    .bind(w.window.start())
    .bind(w.window.end())
    .bind(w.complete)
    .bind(&incomplete)
    .bind(&w.problems)
    .bind(w.entries.len() as i32)
    .bind(now_micros())
    .execute(&mut *conn)
    .await?;
    match mode {
        CommitMode::Collect => super::unpriced::record_window(conn, w).await,
        // Pricing the usage later corrects the key's live entry, as this recollection would.
        CommitMode::Recollect { reason } => {
            let mut w = w.clone();
            for u in &mut w.unpriced {
                u.correction_reason = Some(reason.clone());
            }
            super::unpriced::record_window(conn, &w).await
        }
    }
}

impl Store {
    /// Commits collected windows in one transaction: their entries (written, or corrected when
    /// recollecting), unallocated usage, the window records, and, with `advance_watermark`,
    /// the watermark to the last window's end. A crash before the commit leaves no trace; after
    /// it, the windows are done.
    pub async fn commit_windows(
        &self,
        windows: &[CollectedWindow],
        mode: &CommitMode,
        advance_watermark: bool,
        source: &str,
    ) -> Result<CommitReport, Error> {
        // Per window: the entry statements (one per chunk of rows), unallocated usage and the
        // window record.
        let statements = windows
            .iter()
            .map(|w| w.entries.len().div_ceil(10_000) as u32 + 5)
            .sum::<u32>()
            + 2;
        let report = self
            .run_within("commit_windows", statements, || async {
                let mut tx = self.begin().await?;
                let mut report = CommitReport::default();
                // All windows' entries in as few statements as possible: the write path
                // batches them, and rollup rows shared by the windows are updated once.
                let entries: Vec<NewEntry> =
                    windows.iter().flat_map(|w| w.entries.iter().cloned()).collect();
                match mode {
                    CommitMode::Collect => {
                        let written = write_entries_in(&mut tx, &entries, source).await?;
                        report.inserted += written.inserted;
                        report.unchanged += written.unchanged;
                        report.conflicts += written.conflicts.len();
                        for c in &written.conflicts {
                            tracing::warn!(
                                tenant = %c.key.tenant, meter = %c.key.meter,
                                window_start = %c.key.window.start(),
                                live = %c.live_quantity, attempted = %c.attempted_quantity,
                                "ledger conflict: a differing entry for a collected key"
                            );
                        }
                    }
                    CommitMode::Recollect { reason } => {
                        let corrected = correct_entries_in(&mut tx, &entries, reason, source).await?;
                        report.inserted += corrected.inserted;
                        report.unchanged += corrected.unchanged;
                        report.corrected += corrected.corrected;
                    }
                }
                for w in windows {
                    record_window(&mut tx, w, mode).await?;
                    report.windows += 1;
                    report.unpriced += w.unpriced.len();
                    report.incomplete_windows +=
                        usize::from(!w.complete || !w.incomplete_tenants.is_empty());
                }
                if let (true, Some(last)) = (advance_watermark, windows.iter().map(|w| w.window.end()).max()) {
                    query(
                        "insert into collector_watermark (singleton, window_end, updated_at) values (true, $1, $2) \
                         on conflict (singleton) do update \
                         set window_end = greatest(collector_watermark.window_end, excluded.window_end), \
                             updated_at = excluded.updated_at",
                    )
                    .bind(last)
                    .bind(now_micros())
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(report)
            })
            .await?;
        metrics::counter!("budgetd_ledger_entries_written_total", "source" => source.to_owned())
            .increment(report.inserted as u64);
        metrics::counter!("budgetd_ledger_conflicts_total", "source" => source.to_owned())
            .increment(report.conflicts as u64);
        metrics::counter!("budgetd_ledger_corrections_total", "source" => source.to_owned())
            .increment(report.corrected as u64);
        Ok(report)
    }

    /// The end of the last window the daemon committed, if any.
    pub async fn collector_watermark(&self) -> Result<Option<DateTime<Utc>>, Error> {
        self.run("collector_watermark", || async {
            let mut tx = self.begin().await?;
            let end = query_scalar("select window_end from collector_watermark")
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(end)
        })
        .await
    }

    /// Starts of the windows already collected in [from, to).
    pub async fn collected_window_starts(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<BTreeSet<DateTime<Utc>>, Error> {
        self.run("collected_window_starts", || async {
            let mut tx = self.begin().await?;
            let starts: Vec<DateTime<Utc>> = query_scalar(
                "select window_start from collected_windows where window_start >= $1 and window_start < $2",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(starts.into_iter().collect())
        })
        .await
    }

    /// The keys (tenant, meter, window start) with a non-zero live entry in windows starting
    /// in [from, to): what a recollection must reverse when the new data no longer has them.
    pub async fn live_keys(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<(crate::tenant::TenantId, String, DateTime<Utc>)>, Error> {
        self.run("live_keys", || async {
            let mut tx = self.begin().await?;
            let rows: Vec<(String, String, DateTime<Utc>)> = super::query_as(
                "select tenant_id, meter, window_start from ledger_live_entries \
                 where window_start >= $1 and window_start < $2 and quantity <> 0",
            )
            .bind(from)
            .bind(to)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.into_iter()
                .map(|(t, m, w)| {
                    let t = crate::tenant::TenantId::parse(&t)
                        .map_err(|e| Error::Database(sqlx::Error::Decode(e.to_string().into())))?;
                    Ok((t, m, w))
                })
                .collect()
        })
        .await
    }

    /// Ids of the tenants the ledger knows, in any state: usage labelled with any other id is
    /// unallocated.
    pub async fn known_tenant_ids(&self) -> Result<BTreeSet<crate::tenant::TenantId>, Error> {
        self.run("known_tenant_ids", || async {
            let mut tx = self.begin().await?;
            let ids: Vec<String> = query_scalar("select id from tenants")
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            ids.iter()
                .map(|id| {
                    crate::tenant::TenantId::parse(id)
                        .map_err(|e| Error::Database(sqlx::Error::Decode(e.to_string().into())))
                })
                .collect()
        })
        .await
    }
}
