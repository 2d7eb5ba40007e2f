//! Archiving closed months: reading a month's entries in pages, freezing its partition,
//! recording the export with its manifest in the audit chain, and the one transaction that
//! checks the partition against the verified copy and drops it.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use sqlx::{PgConnection, Postgres, Row, Transaction};

use super::audit::{append, AuditEvent};
use super::{query, query_as, query_scalar, Store};
use crate::archive::{ArchiveRow, Month, MonthTally, TenantSum};
use crate::audit::AuditContext;
use crate::error::Error;

/// Where the readable entries are: the one place that names them.
const ENTRY_DETAILS: &str = "ledger_entry_details";

/// A statement over a whole month (its tally, the drop) reads every entry of it: at 10,000
/// tenants that is minutes, not the seconds of `database.statement_timeout_ms`.
const MONTH_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// The recorded state of a month's archive (`ledger_archives`).
#[derive(Debug, Clone, PartialEq)]
pub struct MonthArchive {
    pub month: Month,
    pub url: String,
    /// As written into the audit record `audit_seq`.
    pub manifest: Value,
    pub audit_seq: i64,
    pub exported_at: DateTime<Utc>,
    pub verified_at: Option<DateTime<Utc>>,
    /// The partition was dropped.
    pub archived_at: Option<DateTime<Utc>>,
}

/// What the export step found when it recorded a month.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportRecorded {
    /// A new audit record holds the manifest.
    Recorded { audit_seq: i64 },
    /// The month was already archived (its partition dropped): nothing was written.
    AlreadyArchived,
}

/// How dropping a month's partition went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropOutcome {
    Dropped,
    /// The month was archived before (a rerun).
    AlreadyArchived,
    /// The partition does not hold what the copy holds: nothing was dropped.
    Differs(Vec<String>),
    /// There is no verified copy recorded for the month: nothing was dropped.
    NotVerified,
}

fn archive_from_row(row: &sqlx::postgres::PgRow) -> Result<MonthArchive, Error> {
    let month: NaiveDate = row.try_get("month")?;
    Ok(MonthArchive {
        month: Month::of_day(month),
        url: row.try_get("url")?,
        manifest: row.try_get("manifest")?,
        audit_seq: row.try_get("audit_seq")?,
        exported_at: row.try_get("exported_at")?,
        verified_at: row.try_get("verified_at")?,
        archived_at: row.try_get("archived_at")?,
    })
}

/// A month's `audit_seq`, `verified_at` and `archived_at`.
type RecordedState = (i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>);

const ARCHIVE_COLUMNS: &str =
    "month, url, manifest, audit_seq, exported_at, verified_at, archived_at";

/// The month's tally, computed by the database over the readable entries.
async fn tally(conn: &mut PgConnection, month: Month) -> Result<MonthTally, Error> {
    let rows: Vec<(String, String, i64, Decimal)> = query_as(&format!(
        "select tenant_id::text, currency::text, count(*), sum(amount) from {ENTRY_DETAILS} \
         where window_start >= $1 and window_start < $2 group by 1, 2"
    ))
    .bind(month.start())
    .bind(month.next().start())
    .fetch_all(&mut *conn)
    .await?;
    let mut tally = MonthTally::default();
    for (tenant, currency, entries, amount) in rows {
        tally.rows += entries;
        tally
            .sums
            .insert((tenant, currency), TenantSum { entries, amount });
    }
    Ok(tally)
}

/// Whether `month` has a partition of `ledger_entries`.
async fn has_partition(conn: &mut PgConnection, month: Month) -> Result<bool, Error> {
    Ok(query_scalar(
        "select exists (select 1 from pg_inherits \
         where inhrelid = to_regclass($1) and inhparent = 'ledger_entries'::regclass)",
    )
    .bind(month.partition())
    .fetch_one(&mut *conn)
    .await?)
}

impl Store {
    /// A transaction whose statements may each take [`MONTH_STATEMENT_TIMEOUT`].
    async fn begin_month_sized(&self) -> Result<Transaction<'static, Postgres>, Error> {
        let mut tx = self.pool_begin().await?;
        query(&format!(
            "set local statement_timeout = {}",
            MONTH_STATEMENT_TIMEOUT.as_millis()
        ))
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// `statements` month-sized statements, in units of the configured statement timeout (the
    /// deadline of `run_within`).
    fn month_sized(&self, statements: u32) -> u32 {
        let unit = self.statement_timeout().as_secs().max(1);
        (MONTH_STATEMENT_TIMEOUT.as_secs() / unit) as u32 * statements
    }

    /// The months that have a partition of `ledger_entries`, oldest first.
    pub async fn ledger_partition_months(&self) -> Result<Vec<Month>, Error> {
        self.run("archive_partitions", || async {
            let mut tx = self.begin().await?;
            let names: Vec<String> = query_scalar(
                "select c.relname::text from pg_inherits i join pg_class c on c.oid = i.inhrelid \
                 where i.inhparent = 'ledger_entries'::regclass order by 1",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            // Partitions not named by month (a default partition) hold no closed month.
            Ok(names
                .iter()
                .filter_map(|n| {
                    let digits = n.strip_prefix("ledger_entries_p")?;
                    (digits.len() == 6).then_some(())?;
                    Month::parse("partition", &format!("{}-{}", &digits[..4], &digits[4..])).ok()
                })
                .collect())
        })
        .await
    }

    /// The entries of the first window start of `month` after `after` (all windows starting
    /// then), in the archive's order; none when the month has no later window. One window per
    /// statement: the next start is found on the partition key's index, so a month of any size
    /// is read a bounded page at a time.
    pub async fn month_window_entries(
        &self,
        month: Month,
        after: Option<DateTime<Utc>>,
    ) -> Result<Vec<ArchiveRow>, Error> {
        let sql = format!(
            "with next as ( \
                 select min(window_start) as window_start from ledger_entries \
                 where window_start >= $1 and window_start < $2 \
                   and ($3::timestamptz is null or window_start > $3)) \
             select d.tenant_id::text, d.meter::text, d.window_start, d.window_end, d.revision, \
                    d.kind::text, d.quantity, d.unit::text, d.price_version, d.rate, \
                    d.price_unit::text, d.units_per_price_unit, d.amount, d.currency::text, \
                    d.source::text, d.reason::text \
             from {ENTRY_DETAILS} d join next using (window_start) \
             order by d.tenant_id::text, d.meter::text, d.window_end, d.revision, d.kind::text"
        );
        self.run("archive_read", || async {
            let mut tx = self.begin().await?;
            let rows = query(&sql)
                .bind(month.start())
                .bind(month.next().start())
                .bind(after)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.iter()
                .map(|row| {
                    Ok(ArchiveRow {
                        tenant_id: row.try_get(0)?,
                        meter: row.try_get(1)?,
                        window_start: row.try_get(2)?,
                        window_end: row.try_get(3)?,
                        revision: row.try_get(4)?,
                        kind: row.try_get(5)?,
                        quantity: row.try_get(6)?,
                        unit: row.try_get(7)?,
                        price_version: row.try_get(8)?,
                        rate: row.try_get(9)?,
                        price_unit: row.try_get(10)?,
                        units_per_price_unit: row.try_get(11)?,
                        amount: row.try_get(12)?,
                        currency: row.try_get(13)?,
                        source: row.try_get(14)?,
                        reason: row.try_get(15)?,
                    })
                })
                .collect()
        })
        .await
    }

    /// Freezes `month`'s partition: from this commit on it takes no new entry (a check
    /// constraint that fails every new row and was never validated against the old ones), so
    /// the export reads what will be dropped. Idempotent; false if the month has no partition.
    pub async fn freeze_month(&self, month: Month) -> Result<bool, Error> {
        self.run("archive_freeze", || async {
            let mut tx = self.begin().await?;
            if !has_partition(&mut tx, month).await? {
                return Ok(false);
            }
            let constraint = format!("{}_archived", month.partition());
            let frozen: bool = query_scalar(
                "select exists (select 1 from pg_constraint \
                 where conrelid = to_regclass($1) and conname = $2)",
            )
            .bind(month.partition())
            .bind(&constraint)
            .fetch_one(&mut *tx)
            .await?;
            if !frozen {
                // Names made by `Month::partition` from digits: nothing else reaches the DDL.
                query(&format!(
                    "alter table {} add constraint {constraint} check (false) not valid",
                    month.partition()
                ))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Records an export: the manifest in one audit record (`ledger.month_exported`) and the
    /// month's row, in one transaction. A month exported before and not yet archived gets the
    /// new manifest (its copy is verified again); an archived month is left as it is.
    pub async fn record_month_export(
        &self,
        ctx: &AuditContext,
        month: Month,
        url: &str,
        manifest: &Value,
    ) -> Result<ExportRecorded, Error> {
        self.run("archive_record_export", || async {
            let mut tx = self.begin().await?;
            let archived: Option<Option<DateTime<Utc>>> =
                query_scalar("select archived_at from ledger_archives where month = $1 for update")
                    .bind(month.first_day())
                    .fetch_optional(&mut *tx)
                    .await?;
            if matches!(archived, Some(Some(_))) {
                return Ok(ExportRecorded::AlreadyArchived);
            }
            let target = month.to_string();
            append(
                &mut tx,
                ctx,
                AuditEvent {
                    action: "ledger.month_exported",
                    target_type: "ledger_month",
                    target_id: &target,
                    before: None,
                    after: Some(json!({ "url": url, "manifest": manifest })),
                },
            )
            .await?;
            let audit_seq: i64 = query_scalar("select max(seq) from audit_log")
                .fetch_one(&mut *tx)
                .await?;
            query(
                "insert into ledger_archives (month, url, manifest, audit_seq, exported_at) \
                 values ($1, $2, $3, $4, now()) \
                 on conflict (month) do update set url = excluded.url, \
                   manifest = excluded.manifest, audit_seq = excluded.audit_seq, \
                   exported_at = excluded.exported_at, verified_at = null \
                 where ledger_archives.archived_at is null",
            )
            .bind(month.first_day())
            .bind(url)
            .bind(manifest)
            .bind(audit_seq)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ExportRecorded::Recorded { audit_seq })
        })
        .await
    }

    /// Marks the export recorded by `audit_seq` as read back and matched. False if the month's
    /// row now holds another export (or none).
    pub async fn mark_month_verified(&self, month: Month, audit_seq: i64) -> Result<bool, Error> {
        self.run("archive_mark_verified", || async {
            let mut tx = self.begin().await?;
            let updated = query(
                "update ledger_archives set verified_at = now() \
                 where month = $1 and audit_seq = $2 and archived_at is null",
            )
            .bind(month.first_day())
            .bind(audit_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            Ok(updated == 1)
        })
        .await
    }

    /// In one transaction: locks the month's partition, compares what it holds with
    /// `expected` (the verified copy's tally), and only if they agree detaches and drops it
    /// and records the month archived. Any failure leaves the partition as it was.
    pub async fn drop_archived_month(
        &self,
        month: Month,
        audit_seq: i64,
        expected: &MonthTally,
    ) -> Result<DropOutcome, Error> {
        // The tally reads the whole month, and detaching waits for the writers of the table.
        self.run_within("archive_drop", self.month_sized(2), || async {
            let mut tx = self.begin_month_sized().await?;
            let state: Option<RecordedState> = query_as(
                "select audit_seq, verified_at, archived_at from ledger_archives \
                 where month = $1 for update",
            )
            .bind(month.first_day())
            .fetch_optional(&mut *tx)
            .await?;
            match state {
                Some((_, _, Some(_))) => return Ok(DropOutcome::AlreadyArchived),
                Some((seq, Some(_), None)) if seq == audit_seq => {}
                _ => return Ok(DropOutcome::NotVerified),
            }
            let partition = has_partition(&mut tx, month).await?;
            if partition {
                query(&format!(
                    "lock table {} in access exclusive mode",
                    month.partition()
                ))
                .execute(&mut *tx)
                .await?;
            }
            let found = tally(&mut tx, month).await?;
            if !partition && found.rows > 0 {
                return Err(Error::conflict(
                    "not_partitioned",
                    format!(
                        "the {} entries of {month} are not in a partition of their own \
                         ({}): nothing was dropped",
                        found.rows,
                        month.partition()
                    ),
                ));
            }
            let differences = found.differences(expected);
            if !differences.is_empty() {
                return Ok(DropOutcome::Differs(differences));
            }
            if partition {
                query(&format!(
                    "alter table ledger_entries detach partition {}",
                    month.partition()
                ))
                .execute(&mut *tx)
                .await?;
                query(&format!("drop table {}", month.partition()))
                    .execute(&mut *tx)
                    .await?;
            }
            query("update ledger_archives set archived_at = now() where month = $1")
                .bind(month.first_day())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(DropOutcome::Dropped)
        })
        .await
    }

    /// Every month with an archive row, oldest first.
    pub async fn month_archives(&self) -> Result<Vec<MonthArchive>, Error> {
        self.run("archive_list", || async {
            let mut tx = self.begin().await?;
            let rows = query(&format!(
                "select {ARCHIVE_COLUMNS} from ledger_archives order by month"
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter().map(archive_from_row).collect()
        })
        .await
    }

    /// The `after` of audit record `seq` as the chain holds it.
    pub async fn audit_record_after(&self, seq: i64) -> Result<Option<Value>, Error> {
        self.run("archive_audit_record", || async {
            let mut tx = self.begin().await?;
            let after: Option<Option<Value>> =
                query_scalar("select after from audit_log where seq = $1")
                    .bind(seq)
                    .fetch_optional(&mut *tx)
                    .await?;
            tx.commit().await?;
            Ok(after.flatten())
        })
        .await
    }
}
