//! Archiving a month, step by step, each step idempotent so that a run interrupted anywhere
//! completes when run again, without loss or a second copy:
//!
//! 1. freeze the month's partition (it takes no new entry);
//! 2. export its entries, in the archive's order, to Parquet files with fixed names, uploaded
//!    whole (a rerun writes the same bytes to the same names);
//! 3. record the manifest in the audit chain and `ledger_archives` (one transaction);
//! 4. read every file back and check it against the manifest; record it verified;
//! 5. in one transaction, check the partition against the verified manifest, detach and drop
//!    it, and record the month archived.
//!
//! A month whose export was recorded (3) but not archived is taken up at 4: its copy is read
//! back, and exported again only if it does not match.

use chrono::{DateTime, Utc};
use serde_json::Value;

use ledger::archive::Month;
use ledger::audit::AuditContext;
use ledger::store::{DropOutcome, ExportRecorded, MonthArchive};
use ledger::Store;

use crate::cold::ColdStore;
use crate::config::{store_url, ArchiveSettings};
use crate::error::Error;
use crate::manifest::{sha256, Manifest, ManifestFile};
use crate::parquet_file::{decode, FileEncoder};

/// What happened to one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonthOutcome {
    /// Exported, verified and dropped from the database.
    Archived { rows: i64, files: usize },
}

/// The outcome of `verify` for one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub month: Month,
    pub url: String,
    pub rows: i64,
    pub files: usize,
    /// Empty: the copy matches its manifest.
    pub differences: Vec<String>,
}

/// The folder of a month below the archive's URL.
fn month_folder(month: Month) -> String {
    format!("ledger_entries/{month}")
}

fn file_name(index: usize) -> String {
    format!("part-{index:05}.parquet")
}

pub struct Archiver {
    store: Store,
    settings: ArchiveSettings,
    ctx: AuditContext,
}

impl Archiver {
    pub fn new(store: Store, settings: ArchiveSettings, ctx: AuditContext) -> Archiver {
        Archiver {
            store,
            settings,
            ctx,
        }
    }

    /// The first month that stays in the database at `now`: the current month less the hot
    /// retention. `--before` may not be later.
    pub fn first_hot_month(&self, now: DateTime<Utc>) -> Month {
        Month::of(now).minus(self.settings.hot_retention_months)
    }

    /// Refuses a `before` that would take a month inside the hot retention (or the current
    /// month); nothing is touched.
    pub fn check_before(&self, before: Month, now: DateTime<Utc>) -> Result<(), Error> {
        let current = Month::of(now);
        let first_hot = self.first_hot_month(now);
        if before > current {
            return Err(Error::Refused(format!(
                "the months before {before} include the current month {current}, which is still \
                 being written: nothing was archived; the latest --before is {first_hot} \
                 (archive.hot_retention_months = {})",
                self.settings.hot_retention_months
            )));
        }
        if before > first_hot {
            return Err(Error::Refused(format!(
                "the months before {before} include months inside the hot retention: the months \
                 from {first_hot} on stay in the database (archive.hot_retention_months = {}): \
                 nothing was archived; the latest --before is {first_hot}",
                self.settings.hot_retention_months
            )));
        }
        Ok(())
    }

    /// The months `archive --before` takes: every partitioned month before `before`, and
    /// every month whose archive was begun and not finished.
    pub async fn due(&self, before: Month) -> Result<Vec<Month>, Error> {
        let mut months: Vec<Month> = self.store.ledger_partition_months().await?;
        for archive in self.store.month_archives().await? {
            if archive.archived_at.is_none() {
                months.push(archive.month);
            }
        }
        months.retain(|m| *m < before);
        months.sort();
        months.dedup();
        Ok(months)
    }

    /// Archives every month due before `before`, oldest first, stopping at the first failure.
    pub async fn run(
        &self,
        before: Month,
        now: DateTime<Utc>,
    ) -> Result<Vec<(Month, MonthOutcome)>, Error> {
        self.check_before(before, now)?;
        let mut done = Vec::new();
        for month in self.due(before).await? {
            let outcome = self.archive_month(month).await.inspect_err(|e| {
                metrics::counter!("budgetd_archive_failures_total", "kind" => e.metric_label())
                    .increment(1);
            })?;
            metrics::counter!("budgetd_archive_months_total").increment(1);
            tracing::info!(%month, ?outcome, "month archived");
            done.push((month, outcome));
        }
        Ok(done)
    }

    /// Steps 1-5 for one month, taking up where an earlier run stopped.
    pub async fn archive_month(&self, month: Month) -> Result<MonthOutcome, Error> {
        let recorded = self.recorded(month).await?;
        let (audit_seq, manifest) = match recorded {
            Some(archive) if archive.archived_at.is_none() => {
                let manifest = manifest_of(&archive)?;
                let cold = ColdStore::open(&store_url(&archive.url, "url")?, self.settings.calls)?;
                let differences = read_back(&cold, &manifest).await?;
                if differences.is_empty() {
                    (archive.audit_seq, manifest)
                } else {
                    tracing::warn!(%month, ?differences, "the recorded copy does not match its manifest: exporting again");
                    self.export(month).await?
                }
            }
            Some(archive) => {
                // Archived by a run that finished after this one listed the month.
                let manifest = manifest_of(&archive)?;
                return Ok(MonthOutcome::Archived {
                    rows: manifest.tally.rows,
                    files: manifest.files.len(),
                });
            }
            None => self.export(month).await?,
        };
        if !self.store.mark_month_verified(month, audit_seq).await? {
            return Err(Error::Concurrent(format!(
                "the archive of {month} was recorded again by another run; run archive again"
            )));
        }
        match self
            .store
            .drop_archived_month(month, audit_seq, &manifest.tally)
            .await?
        {
            DropOutcome::Dropped | DropOutcome::AlreadyArchived => Ok(MonthOutcome::Archived {
                rows: manifest.tally.rows,
                files: manifest.files.len(),
            }),
            DropOutcome::Differs(differences) => Err(Error::Differs {
                month,
                differences: differences
                    .into_iter()
                    .map(|d| format!("the database holds {d} (nothing was dropped)"))
                    .collect(),
            }),
            DropOutcome::NotVerified => Err(Error::Concurrent(format!(
                "the archive of {month} is no longer recorded as verified (another run exported \
                 it again); nothing was dropped: run archive again"
            ))),
        }
    }

    async fn recorded(&self, month: Month) -> Result<Option<MonthArchive>, Error> {
        Ok(self
            .store
            .month_archives()
            .await?
            .into_iter()
            .find(|a| a.month == month))
    }

    /// Steps 1-4: freeze, upload, record, read back. The copy is checked before the caller
    /// may drop anything.
    pub async fn export(&self, month: Month) -> Result<(i64, Manifest), Error> {
        self.store.freeze_month(month).await?;
        let folder_url = format!(
            "{}/{}",
            self.settings.url.as_str().trim_end_matches('/'),
            month_folder(month)
        );
        let cold = ColdStore::open(&store_url(&folder_url, "archive.url")?, self.settings.calls)?;
        let mut manifest = Manifest::new(month);
        let mut encoder = FileEncoder::new()?;
        let mut last = None;
        loop {
            let window = self.store.month_window_entries(month, last).await?;
            let Some(first) = window.first() else {
                break;
            };
            last = Some(first.window_start);
            for row in window {
                manifest.add(&row);
                encoder.push(row)?;
                if encoder.rows() == self.settings.rows_per_file {
                    let file = std::mem::replace(&mut encoder, FileEncoder::new()?);
                    upload(&cold, &mut manifest, file).await?;
                }
            }
        }
        if encoder.rows() > 0 {
            upload(&cold, &mut manifest, encoder).await?;
        }
        let audit_seq = match self
            .store
            .record_month_export(&self.ctx, month, &folder_url, &manifest.to_json())
            .await?
        {
            ExportRecorded::Recorded { audit_seq } => audit_seq,
            ExportRecorded::AlreadyArchived => {
                return Err(Error::Concurrent(format!(
                    "{month} was archived by another run meanwhile"
                )))
            }
        };
        let differences = read_back(&cold, &manifest).await?;
        if !differences.is_empty() {
            return Err(Error::Differs { month, differences });
        }
        Ok((audit_seq, manifest))
    }

    /// Reads the archives back (all, or `month`'s) and checks them against their manifests,
    /// and each manifest against the audit record that holds it.
    pub async fn verify(&self, month: Option<Month>) -> Result<Vec<Verification>, Error> {
        let archives = self.store.month_archives().await?;
        let archives: Vec<MonthArchive> = match month {
            Some(month) => {
                let found: Vec<MonthArchive> =
                    archives.into_iter().filter(|a| a.month == month).collect();
                if found.is_empty() {
                    return Err(Error::Refused(format!("{month} has no archive")));
                }
                found
            }
            None => archives,
        };
        let mut out = Vec::new();
        for archive in archives {
            let manifest = manifest_of(&archive)?;
            let mut differences = Vec::new();
            match self.store.audit_record_after(archive.audit_seq).await? {
                Some(after)
                    if after.get("manifest") == Some(&archive.manifest)
                        && after.get("url").and_then(Value::as_str) == Some(&archive.url) => {}
                _ => differences.push(format!(
                    "the manifest recorded for {} is not the one in audit record {}",
                    archive.month, archive.audit_seq
                )),
            }
            let cold = ColdStore::open(&store_url(&archive.url, "url")?, self.settings.calls)?;
            differences.extend(read_back(&cold, &manifest).await?);
            out.push(Verification {
                month: archive.month,
                url: archive.url,
                rows: manifest.tally.rows,
                files: manifest.files.len(),
                differences,
            });
        }
        Ok(out)
    }
}

fn manifest_of(archive: &MonthArchive) -> Result<Manifest, Error> {
    let manifest = Manifest::from_json(&archive.manifest).map_err(|message| Error::Manifest {
        month: archive.month,
        message,
    })?;
    if manifest.month != archive.month {
        return Err(Error::Manifest {
            month: archive.month,
            message: format!("it is the manifest of {}", manifest.month),
        });
    }
    Ok(manifest)
}

async fn upload(cold: &ColdStore, manifest: &mut Manifest, file: FileEncoder) -> Result<(), Error> {
    let rows = file.rows();
    let bytes = file.finish()?;
    let name = file_name(manifest.files.len());
    let entry = ManifestFile::of(name.clone(), rows, &bytes);
    cold.put(&name, bytes).await?;
    manifest.files.push(entry);
    Ok(())
}

/// Downloads every file of `manifest` and says how it differs: size, SHA-256, rows per file,
/// rows outside the month, and the month's tally.
pub async fn read_back(cold: &ColdStore, manifest: &Manifest) -> Result<Vec<String>, Error> {
    let mut differences = Vec::new();
    let mut tally = ledger::archive::MonthTally::default();
    let (start, end) = (manifest.month.start(), manifest.month.next().start());
    for file in &manifest.files {
        let url = cold.url_of(&file.name);
        let bytes = match cold.get(&file.name).await {
            Ok(bytes) => bytes,
            Err(Error::Store { cause, .. }) => {
                differences.push(format!("{url}: cannot be read: {cause}"));
                continue;
            }
            Err(e) => return Err(e),
        };
        if bytes.len() as u64 != file.bytes {
            differences.push(format!(
                "{url}: {} bytes instead of {}",
                bytes.len(),
                file.bytes
            ));
        }
        let hash = sha256(&bytes);
        if hash != file.sha256 {
            differences.push(format!("{url}: SHA-256 {hash} instead of {}", file.sha256));
            // An altered file is not read: its rows would be counted as the copy's.
            continue;
        }
        let mut outside = 0u64;
        let rows = decode(bytes, |row| {
            if row.window_start < start || row.window_start >= end {
                outside += 1;
            }
            tally.add(&row);
            Ok(())
        });
        match rows {
            Ok(rows) if rows != file.rows => {
                differences.push(format!("{url}: {rows} rows instead of {}", file.rows))
            }
            Ok(_) => {}
            Err(e) => differences.push(format!("{url}: {e}")),
        }
        if outside > 0 {
            differences.push(format!("{url}: {outside} rows outside {}", manifest.month));
        }
    }
    if differences.is_empty() {
        differences.extend(
            tally
                .differences(&manifest.tally)
                .into_iter()
                .map(|d| format!("the files hold {d}")),
        );
    }
    Ok(differences)
}
