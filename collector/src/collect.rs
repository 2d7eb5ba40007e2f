//! The collector: which windows to collect, querying them (one query per meter per batch of
//! windows, plus the completeness probe), and committing them to the ledger in order.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use ledger::entry::Window;
use ledger::price_book::PriceBookVersion;
use ledger::tenant::TenantId;
use ledger::usage::{CollectedWindow, CommitMode, CommitReport, RepriceReport};
use ledger::Store;

use crate::assemble::{assemble, price_key, reprice, Context};
use crate::meter::{probe_query, Meter};
use crate::promql::{matchers, LabelName, TemplateContext};
use crate::scrape::{check_config, data_mismatches, ConfigCheck, ScrapeIntervals};
use crate::source::{Sample, SourceError, UsageSource};
use crate::window::WindowLength;
use crate::Error;

#[derive(Debug, Clone)]
pub struct CollectorConfig {
    pub window: WindowLength,
    /// How long after a window's end before it is collected (late scrapes).
    pub settle: Duration,
    /// The Prometheus scrape interval, for integrals of gauges (`{{interval}}`).
    pub interval_seconds: i64,
    pub tenant_label: LabelName,
    /// Extra label matchers for every selector (e.g. one cluster of a shared Prometheus).
    pub selector: BTreeMap<LabelName, String>,
    pub meters: Vec<Meter>,
    /// Scrape jobs whose `up` series the completeness probe checks.
    pub scrape_jobs: Vec<String>,
    /// Where the daemon starts when the ledger has no watermark; without it, at the newest due
    /// window of its first run.
    pub start: Option<DateTime<Utc>>,
    /// How far back Prometheus still has data: older windows cannot be collected.
    pub horizon: Duration,
    /// The most windows per query (and per commit) when catching up or backfilling.
    pub windows_per_batch: usize,
    /// What the slowest query of a batch should take: the batches after the first are sized
    /// to it from what the last batch took.
    pub batch_target: std::time::Duration,
    /// Tenant-windows in the first batch of a collection: its windows are this divided by
    /// the live tenants.
    pub batch_tenant_windows: usize,
    /// The most entries a batch may hold (see [`batch_ceiling`]).
    pub max_batch_entries: usize,
}

/// The most windows a batch may hold: `windows_per_batch`, and no more windows than keep its
/// entries (one per live tenant and meter a window, at most) within `max_batch_entries`; at
/// least one. Time alone would let a fast Prometheus fill memory: a batch's assembled entries
/// are held until its commit, while the next batch is queried.
pub fn batch_ceiling(
    windows_per_batch: usize,
    max_batch_entries: usize,
    tenants: usize,
    meters: usize,
) -> usize {
    let per_window = tenants.max(1).saturating_mul(meters.max(1));
    windows_per_batch.min(max_batch_entries / per_window).max(1)
}

/// How many windows the next batch of a collection holds: the first batch's from the tenant
/// count, each later one's from what the last batches took, so that its slowest query takes
/// about the target. Pure: the collector reports what batches took.
///
/// A query's time is a part that every evaluation pays (finding and reading the series) plus a
/// part per window: at 10,000 tenants one window's cpu query takes ~3 s and five windows' ~8 s.
/// Dividing the time by the windows (a line through zero) sees only the first part and keeps
/// batches at one window, the dearest per window. With batches of two sizes the sizer fits the
/// line through both; with one, it divides, and tries one window more while under the target.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchSizer {
    max: usize,
    target: std::time::Duration,
    next: usize,
    /// The last batch (windows, slowest query in seconds) ...
    last: Option<(usize, f64)>,
    /// ... and the last one of another size before it.
    other: Option<(usize, f64)>,
}

impl BatchSizer {
    /// Sized for `tenants` live tenants: `tenant_windows / tenants` windows first, at least
    /// one and at most `max`.
    pub fn new(
        max: usize,
        target: std::time::Duration,
        tenant_windows: usize,
        tenants: usize,
    ) -> Self {
        let max = max.max(1);
        BatchSizer {
            max,
            target,
            next: (tenant_windows / tenants.max(1)).clamp(1, max),
            last: None,
            other: None,
        }
    }

    /// The windows of the next batch.
    pub fn next(&self) -> usize {
        self.next
    }

    /// A batch of `windows` windows whose slowest query took `slowest`: the next one holds as
    /// many windows as fit the target on the line through the last two batch sizes (or at this
    /// batch's pace, with one size known). Shrinking is at once; growing at most doubles, since
    /// one quick batch may be luck.
    pub fn took(&mut self, windows: usize, slowest: std::time::Duration) {
        let windows = windows.max(1);
        let seconds = slowest.as_secs_f64();
        let target = self.target.as_secs_f64();
        if let Some(last) = self.last.filter(|(n, _)| *n != windows) {
            self.other = Some(last);
        }
        self.last = Some((windows, seconds));
        let line = self.other.and_then(|(n0, s0)| {
            let per_window = (seconds - s0) / (windows as f64 - n0 as f64);
            // A larger batch that was not slower is noise, not a line.
            (per_window > 0.0).then(|| {
                let fixed = (seconds - per_window * windows as f64).max(0.0);
                (target - fixed) / per_window
            })
        });
        let fit = match line {
            Some(fit) => fit,
            None if seconds > 0.0 => {
                let pace = target / (seconds / windows as f64);
                // Under the target, one window more: the second size gives the line.
                if seconds < target {
                    pace.max((windows + 1) as f64)
                } else {
                    pace
                }
            }
            None => f64::INFINITY,
        };
        // `as` saturates (and takes NaN and negatives to 0): clamped below.
        self.next = (fit as usize).clamp(1, self.max.min(windows.saturating_mul(2)));
    }

    /// A batch of `windows` windows was too heavy for Prometheus (timed out, refused, an
    /// answer over the size limit): the next one holds half as many.
    pub fn too_heavy(&mut self, windows: usize) {
        self.next = (windows / 2).max(1);
    }
}

/// What a batch's queries took.
#[derive(Debug, Clone, Copy, Default)]
struct QueryTimes {
    total: std::time::Duration,
    slowest: std::time::Duration,
}

/// What one daemon step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub report: CommitReport,
    /// The watermark after the step.
    pub watermark: Option<DateTime<Utc>>,
    /// Windows skipped because they are older than the horizon.
    pub lost: usize,
    /// Recorded unpriced usage priced (or found still unpriceable) in this step.
    pub repriced: RepriceReport,
}

/// Recorded unpriced usage priced per commit, and commits per step: a step catches up on a
/// large backlog (a whole day of every tenant's keys under a bad version) over a few windows
/// rather than holding up collection.
const REPRICE_BATCH: i64 = 20_000;
const REPRICE_ROUNDS: usize = 10;

pub struct Collector {
    source: Arc<dyn UsageSource>,
    store: Store,
    config: CollectorConfig,
    prometheus_config: ConfigCache,
}

/// How long a good read of Prometheus' configuration is reused. Prometheus reloads it rarely,
/// and it only explains what the data show (and tells a longer interval from an outage), so
/// minutes of delay cost nothing, while a read for every collection would add a request to each.
pub const PROMETHEUS_CONFIG_TTL: std::time::Duration = std::time::Duration::from_secs(300);

/// Prometheus' configuration as last read, shared by the start-up check and the collections.
/// A good read (intervals, or "not served") is reused for [`PROMETHEUS_CONFIG_TTL`]; a failed
/// one is not, so the next collection tries again (once: the source does not retry it).
#[derive(Default)]
struct ConfigCache {
    good: tokio::sync::Mutex<Option<GoodRead>>,
}

struct GoodRead {
    at: Instant,
    intervals: Option<ScrapeIntervals>,
}

/// What a look at Prometheus' configuration gives.
#[derive(Debug, PartialEq)]
enum ConfigRead {
    /// Read now or within the TTL; `None`: the source serves no configuration.
    Read(Option<ScrapeIntervals>),
    /// This read failed; `last` is the last good read's, however old.
    Failed {
        error: SourceError,
        last: Option<ScrapeIntervals>,
    },
}

impl ConfigCache {
    /// The configuration at `now`: the good read of the last [`PROMETHEUS_CONFIG_TTL`], else
    /// one read from `source`. Concurrent callers wait for one read.
    async fn read(&self, source: &dyn UsageSource, now: Instant) -> ConfigRead {
        let mut good = self.good.lock().await;
        if let Some(read) = good
            .as_ref()
            .filter(|g| now.saturating_duration_since(g.at) < PROMETHEUS_CONFIG_TTL)
        {
            return ConfigRead::Read(read.intervals.clone());
        }
        match source.scrape_intervals().await {
            Ok(intervals) => {
                *good = Some(GoodRead {
                    at: now,
                    intervals: intervals.clone(),
                });
                ConfigRead::Read(intervals)
            }
            Err(error) => ConfigRead::Failed {
                error,
                last: good.as_ref().and_then(|g| g.intervals.clone()),
            },
        }
    }
}

/// Evaluation time of a window: 1 ms before its end, with a range of the window less 1 ms, so
/// the closed range [start, end - 1 ms] never shares a sample with a neighbouring window.
fn eval_time(window: &Window) -> DateTime<Utc> {
    window.end() - Duration::milliseconds(1)
}

impl Collector {
    pub fn new(source: Arc<dyn UsageSource>, store: Store, config: CollectorConfig) -> Self {
        Collector {
            source,
            store,
            config,
            prometheus_config: ConfigCache::default(),
        }
    }

    /// Compares `scrape_interval_seconds` with Prometheus' configuration for every scrape job.
    /// `None`: the source has no configuration to read. Sets no metric: `budgetd run` calls it at
    /// start on every replica, while only the leader collects and keeps
    /// `budgetd_collector_scrape_interval_mismatch` current.
    pub async fn check_scrape_config(&self) -> Result<Option<Vec<ConfigCheck>>, Error> {
        match self
            .prometheus_config
            .read(&*self.source, Instant::now())
            .await
        {
            ConfigRead::Read(intervals) => Ok(intervals.map(|i| self.config_checks(&i))),
            ConfigRead::Failed { error, .. } => Err(Error::PrometheusConfig(error)),
        }
    }

    fn config_checks(&self, intervals: &ScrapeIntervals) -> Vec<ConfigCheck> {
        check_config(
            self.config.interval_seconds,
            &self.config.scrape_jobs,
            intervals,
        )
    }

    /// Prometheus' scrape intervals for this collection (as last read when a read fails;
    /// without any, the check against the data reports fewer samples as gaps), and
    /// `budgetd_collector_scrape_interval_mismatch{job}`: 1 where the job's own scrape config
    /// differs from `scrape_interval_seconds`, else 0.
    async fn prometheus_intervals(&self) -> Option<ScrapeIntervals> {
        let intervals = match self
            .prometheus_config
            .read(&*self.source, Instant::now())
            .await
        {
            ConfigRead::Read(intervals) => intervals,
            ConfigRead::Failed { error, last } => {
                tracing::debug!(%error, "could not read Prometheus' configuration; using the last read");
                last
            }
        };
        let checks = intervals
            .as_ref()
            .map(|i| self.config_checks(i))
            .unwrap_or_default();
        for job in &self.config.scrape_jobs {
            let mismatch = checks.iter().any(|c| &c.job == job && c.is_mismatch());
            metrics::gauge!("budgetd_collector_scrape_interval_mismatch", "job" => job.clone())
                .set(if mismatch { 1.0 } else { 0.0 });
        }
        intervals
    }

    pub fn config(&self) -> &CollectorConfig {
        &self.config
    }

    fn template_context(&self) -> TemplateContext {
        TemplateContext {
            window: format!("{}ms", self.config.window.seconds() * 1000 - 1),
            window_seconds: self.config.window.seconds(),
            full_window_samples: self.config.window.seconds() / self.config.interval_seconds - 1,
            interval_seconds: self.config.interval_seconds,
            tenant_label: self.config.tenant_label.clone(),
            selector: matchers(&self.config.selector),
        }
    }

    /// The queries one batch sends: one per meter, then the probe.
    pub fn queries(&self) -> Vec<(String, String)> {
        let ctx = self.template_context();
        let mut queries: Vec<(String, String)> = self
            .config
            .meters
            .iter()
            .map(|m| (m.name.to_string(), m.query.render(&ctx)))
            .collect();
        queries.push((
            "probe".to_owned(),
            probe_query(&ctx, &self.config.scrape_jobs),
        ));
        queries
    }

    /// Queries and assembles a run of consecutive windows; also what its queries took.
    async fn collect_batch(
        &self,
        windows: &[Window],
        versions: &[PriceBookVersion],
        tenants: &TenantSets,
        prometheus: Option<&ScrapeIntervals>,
    ) -> Result<(Vec<CollectedWindow>, QueryTimes), Error> {
        let (first, last) = (
            eval_time(&windows[0]),
            eval_time(&windows[windows.len() - 1]),
        );
        let step = std::time::Duration::from_secs(self.config.window.seconds() as u64);
        let mut answers = Vec::new();
        let mut warnings = Vec::new();
        let mut times = QueryTimes::default();
        for (name, query) in self.queries() {
            let started = Instant::now();
            let answer = self.source.query(&query, first, last, step).await;
            let took = started.elapsed();
            times.total += took;
            times.slowest = times.slowest.max(took);
            metrics::histogram!("budgetd_collector_query_duration_seconds", "meter" => name.clone())
                .record(took.as_secs_f64());
            let answer = answer.map_err(|e| Error::Source {
                meter: name.clone(),
                error: e,
            })?;
            warnings.extend(answer.warnings.iter().map(|w| format!("{name}: {w}")));
            answers.push(answer.at);
        }
        let probe = answers.pop().expect("the probe is always queried");
        let empty: Vec<Sample> = Vec::new();
        let collected = windows
            .iter()
            .map(|w| {
                let at = eval_time(w).timestamp_millis();
                let per_meter: Vec<&[Sample]> = answers
                    .iter()
                    .map(|a| a.get(&at).map(Vec::as_slice).unwrap_or(&empty))
                    .collect();
                let probe = probe.get(&at).map(Vec::as_slice).unwrap_or(&empty);
                let mismatches = data_mismatches(
                    probe,
                    self.config.window.seconds(),
                    self.config.interval_seconds,
                    prometheus,
                );
                for m in &mismatches {
                    metrics::counter!("budgetd_collector_scrape_interval_mismatches_total", "job" => m.job.clone())
                        .increment(1);
                }
                let expected = tenants.expected_at(w.start());
                let ctx = Context {
                    tenant_label: self.config.tenant_label.as_str(),
                    known_tenants: &tenants.known,
                    expected_tenants: &expected,
                    expected_samples: self.config.window.seconds() / self.config.interval_seconds,
                    interval_mismatches: &mismatches,
                };
                let version = version_at(versions, w.start()).ok_or(Error::NoPriceBook {
                    at: w.start(),
                })?;
                let collected = assemble(*w, &self.config.meters, &per_meter, probe, &warnings, version, &ctx)?;
                if !collected.complete || !collected.incomplete_tenants.is_empty() {
                    metrics::counter!("budgetd_collector_incomplete_windows_total").increment(1);
                    tracing::warn!(window_start = %w.start(), problems = ?collected.problems, "incomplete window");
                }
                count_unpriced(&collected);
                Ok(collected)
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok((collected, times))
    }

    /// Collects and commits `windows` (consecutive runs are batched). Returns the summed report.
    async fn collect_windows(
        &self,
        windows: &[Window],
        mode: &CommitMode,
        advance_watermark: bool,
        source: &str,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<CommitReport, Error> {
        let versions = self.store.list_price_book_versions().await?;
        let tenants = TenantSets::load(&self.store).await?;
        let prometheus = self.prometheus_intervals().await;
        let mut total = CommitReport::default();
        let mut sizer = BatchSizer::new(
            batch_ceiling(
                self.config.windows_per_batch,
                self.config.max_batch_entries,
                tenants.live_since.len(),
                self.config.meters.len(),
            ),
            self.config.batch_target,
            self.config.batch_tenant_windows,
            tenants.live_since.len(),
        );
        // Each run of consecutive windows in batches, in order. A batch too heavy for
        // Prometheus (a timeout, 422, an answer over the size limit) is split at once: the
        // next attempt holds half its windows, down to single windows. A batch's commit runs
        // while the next batch's queries do (Prometheus and the database work at the same
        // time); commits stay one at a time, in order.
        let mut committing: Option<Vec<CollectedWindow>> = None;
        for run in consecutive_runs(windows, self.config.window) {
            let mut rest = run;
            while !rest.is_empty() {
                let batch = &rest[..sizer.next().min(rest.len())];
                let started = Instant::now();
                let query = self.collect_batch(batch, &versions, &tenants, prometheus.as_ref());
                let result = match committing.take() {
                    Some(previous) => {
                        let commit =
                            self.commit_batch(previous, mode, advance_watermark, source, &versions);
                        let (committed, result) = tokio::join!(commit, query);
                        add_report(&mut total, &committed?, progress);
                        result
                    }
                    None => query.await,
                };
                let (collected, times) = match result {
                    Err(Error::Source { meter, error })
                        if batch.len() > 1 && error.is_too_heavy() =>
                    {
                        tracing::warn!(%meter, %error, windows = batch.len(), "query too heavy; splitting the batch");
                        metrics::counter!("budgetd_collector_batch_splits_total").increment(1);
                        sizer.too_heavy(batch.len());
                        continue;
                    }
                    other => other?,
                };
                sizer.took(batch.len(), times.slowest);
                tracing::debug!(
                    windows = batch.len(),
                    first = %batch[0].start(),
                    queries_ms = times.total.as_millis() as u64,
                    slowest_query_ms = times.slowest.as_millis() as u64,
                    total_ms = started.elapsed().as_millis() as u64,
                    next_windows = sizer.next(),
                    "batch collected"
                );
                metrics::gauge!("budgetd_collector_batch_windows").set(sizer.next() as f64);
                committing = Some(collected);
                rest = &rest[batch.len()..];
            }
        }
        if let Some(last) = committing {
            let committed = self
                .commit_batch(last, mode, advance_watermark, source, &versions)
                .await?;
            add_report(&mut total, &committed, progress);
        }
        Ok(total)
    }

    /// Commits one batch's windows (zeroing what a recollection no longer finds).
    async fn commit_batch(
        &self,
        mut collected: Vec<CollectedWindow>,
        mode: &CommitMode,
        advance_watermark: bool,
        source: &str,
        versions: &[PriceBookVersion],
    ) -> Result<CommitReport, Error> {
        if let CommitMode::Recollect { .. } = mode {
            self.zero_vanished(&mut collected, versions).await?;
        }
        let started = Instant::now();
        let report = self
            .store
            .commit_windows(&collected, mode, advance_watermark, source)
            .await?;
        tracing::debug!(
            windows = report.windows,
            commit_ms = started.elapsed().as_millis() as u64,
            "batch committed"
        );
        metrics::counter!("budgetd_collector_windows_total").increment(report.windows as u64);
        Ok(report)
    }

    /// Usage that a recollection no longer finds (a namespace moved to another tenant, a series
    /// that turned out wrong) must stop counting: its live entry is corrected to zero.
    async fn zero_vanished(
        &self,
        collected: &mut [CollectedWindow],
        versions: &[PriceBookVersion],
    ) -> Result<(), Error> {
        let (Some(first), Some(last)) = (collected.first(), collected.last()) else {
            return Ok(());
        };
        let live = self
            .store
            .live_keys(first.window.start(), last.window.end())
            .await?;
        for w in collected.iter_mut() {
            // Usage measured but not priced is present too: its live entry must not be zeroed.
            let present: BTreeSet<(TenantId, String)> = w
                .entries
                .iter()
                .map(|e| &e.key)
                .chain(w.unpriced.iter().map(|u| &u.key))
                .map(|k| (k.tenant.clone(), k.meter.to_string()))
                .collect();
            for (tenant, meter, _) in live
                .iter()
                .filter(|(_, _, start)| *start == w.window.start())
            {
                if present.contains(&(tenant.clone(), meter.clone())) {
                    continue;
                }
                let Some(m) = self.config.meters.iter().find(|m| m.name.as_str() == meter) else {
                    tracing::warn!(%tenant, meter, "a live entry of a meter that is no longer configured stays");
                    continue;
                };
                let version = version_at(versions, w.window.start()).ok_or(Error::NoPriceBook {
                    at: w.window.start(),
                })?;
                let key = ledger::entry::EntryKey {
                    tenant: tenant.clone(),
                    meter: m.name.clone(),
                    window: w.window,
                };
                // Zero still needs a rate to be an entry; without one it waits as unpriced usage.
                match price_key(key, rust_decimal::Decimal::ZERO, m, version) {
                    Ok(entry) => w.entries.push(entry),
                    Err(usage) => w.unpriced.push(*usage),
                }
            }
        }
        Ok(())
    }

    /// Prices recorded unpriced usage whose window now has another price-book version in force
    /// than the one that failed (a version withdrawn or replaced, or one added for the window),
    /// from the record: no query to Prometheus, so also beyond its horizon. Usage that still
    /// cannot be priced is recorded against the version now in force and waits for the next
    /// change of the price book. Sets `budgetd_collector_unpriced_keys`.
    pub async fn reprice(&self) -> Result<RepriceReport, Error> {
        let mut total = RepriceReport::default();
        for _ in 0..REPRICE_ROUNDS {
            let pending = self.store.unpriced_to_retry(REPRICE_BATCH).await?;
            if pending.is_empty() {
                break;
            }
            let versions = self.store.list_price_book_versions().await?;
            let (priced, failing) = reprice(&pending, &versions);
            let report = self
                .store
                .commit_repriced(&priced, &failing, "reprice")
                .await?;
            metrics::counter!("budgetd_collector_repriced_keys_total")
                .increment(report.priced as u64);
            if report.priced > 0 {
                tracing::info!(
                    priced = report.priced,
                    still_unpriced = report.still_unpriced,
                    "priced usage that could not be priced when it was collected"
                );
            }
            total.priced += report.priced;
            total.still_unpriced += report.still_unpriced;
            if (pending.len() as i64) < REPRICE_BATCH {
                break;
            }
        }
        let open = self.store.open_unpriced_count().await?;
        metrics::gauge!("budgetd_collector_unpriced_keys").set(open as f64);
        Ok(total)
    }

    /// One step of the daemon at `now`: collects every due window after the watermark, in
    /// order, skipping windows a backfill already collected. Windows older than the horizon
    /// are skipped with a warning: Prometheus no longer has their data.
    pub async fn run_once(&self, now: DateTime<Utc>) -> Result<Outcome, Error> {
        let len = self.config.window;
        let watermark = self.store.collector_watermark().await?;
        let due = len.due_until(now, self.config.settle);
        let mut from = watermark
            .or(self.config.start.map(|s| len.ceil(s)))
            .unwrap_or(due - Duration::seconds(len.seconds()));
        let oldest = len.ceil(now - self.config.horizon);
        let mut lost = 0;
        if from < oldest {
            lost = len.windows(from, oldest).count();
            tracing::warn!(%from, to = %oldest, windows = lost, "windows beyond the Prometheus horizon cannot be collected");
            metrics::counter!("budgetd_collector_windows_lost_total").increment(lost as u64);
            from = oldest;
        }
        let done = self.store.collected_window_starts(from, due).await?;
        let pending: Vec<Window> = len
            .windows(from, due)
            .filter(|w| !done.contains(&w.start()))
            .collect();
        let report = if pending.is_empty() {
            CommitReport::default()
        } else {
            self.collect_windows(&pending, &CommitMode::Collect, true, "collector", &|_| {})
                .await?
        };
        let watermark = match (pending.last(), watermark) {
            (Some(last), _) => Some(last.end()),
            (None, w) => w,
        };
        if let Some(w) = watermark {
            metrics::gauge!("budgetd_collector_lag_seconds").set((now - w).num_seconds() as f64);
        }
        let repriced = self.reprice().await?;
        Ok(Outcome {
            report,
            watermark,
            lost,
            repriced,
        })
    }

    /// Backfills [from, to): windows not collected yet, or with `Recollect` every window,
    /// correcting what differs. `progress` is told how many windows each commit finished.
    pub async fn backfill(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        mode: &CommitMode,
        progress: &(dyn Fn(usize) + Sync),
    ) -> Result<(usize, CommitReport), Error> {
        let windows = self.plan_backfill(from, to, mode).await?;
        let report = self
            .collect_windows(&windows, mode, false, "backfill", progress)
            .await?;
        Ok((windows.len(), report))
    }

    /// The windows a backfill of [from, to) would collect. Windows that are not due yet (not
    /// ended `settle` ago) are left for the daemon: collecting them early would record them as
    /// done with partial data.
    pub async fn plan_backfill(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        mode: &CommitMode,
    ) -> Result<Vec<Window>, Error> {
        let len = self.config.window;
        let to = to.min(len.due_until(Utc::now(), self.config.settle));
        let done = match mode {
            CommitMode::Collect => {
                self.store
                    .collected_window_starts(len.floor(from), len.ceil(to))
                    .await?
            }
            CommitMode::Recollect { .. } => BTreeSet::new(),
        };
        Ok(len
            .windows(from, to)
            .filter(|w| !done.contains(&w.start()))
            .collect())
    }
}

/// Adds a commit's report to `total` and tells `progress`.
fn add_report(total: &mut CommitReport, report: &CommitReport, progress: &(dyn Fn(usize) + Sync)) {
    total.windows += report.windows;
    total.inserted += report.inserted;
    total.unchanged += report.unchanged;
    total.corrected += report.corrected;
    total.conflicts += report.conflicts;
    total.incomplete_windows += report.incomplete_windows;
    total.unpriced += report.unpriced;
    progress(report.windows);
}

/// Counts and logs a window's unpriced usage.
fn count_unpriced(w: &CollectedWindow) {
    for u in &w.unpriced {
        metrics::counter!(
            "budgetd_collector_unpriced_keys_total",
            "meter" => u.key.meter.to_string(),
            "failure" => u.failure.kind()
        )
        .increment(1);
    }
    if let Some(first) = w.unpriced.first() {
        tracing::warn!(
            window_start = %w.window.start(),
            keys = w.unpriced.len(),
            tenant = %first.key.tenant,
            meter = %first.key.meter,
            error = %first.failure.message(&first.key.meter),
            "usage that could not be priced is recorded per key (GET /api/v1/collector/pricing-errors); the rest of the window is committed"
        );
    }
}

/// The tenants usage can be billed to, and since when each live one is expected to have a
/// labelled namespace.
struct TenantSets {
    /// Tenants that are or were live. A request (pending or rejected) is not a tenant: usage
    /// labelled with its id is unallocated.
    known: BTreeSet<TenantId>,
    /// Active and suspended tenants, with the time they first owned one of their namespaces.
    live_since: Vec<(TenantId, DateTime<Utc>)>,
}

impl TenantSets {
    async fn load(store: &Store) -> Result<Self, Error> {
        use ledger::tenant::TenantState;
        let tenants = store.tenant_billing().await?;
        Ok(TenantSets {
            known: tenants
                .iter()
                .filter(|t| !matches!(t.state, TenantState::Requested | TenantState::Rejected))
                .map(|t| t.id.clone())
                .collect(),
            live_since: tenants
                .into_iter()
                .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
                .map(|t| (t.id, t.namespaces_since))
                .collect(),
        })
    }

    /// The tenants a window starting at `start` must see a namespace of: live ones that owned
    /// a namespace when it began (one approved during the window is not missing from it).
    fn expected_at(&self, start: DateTime<Utc>) -> BTreeSet<TenantId> {
        self.live_since
            .iter()
            .filter(|(_, since)| *since <= start)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The price-book version in force at `at`.
pub fn version_at(versions: &[PriceBookVersion], at: DateTime<Utc>) -> Option<&PriceBookVersion> {
    versions
        .iter()
        .filter(|v| v.valid_from <= at)
        .max_by_key(|v| v.valid_from)
}

/// Splits sorted windows into runs of consecutive windows.
pub fn consecutive_runs(windows: &[Window], len: WindowLength) -> Vec<&[Window]> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=windows.len() {
        let breaks = i == windows.len()
            || windows[i].start() != windows[i - 1].start() + Duration::seconds(len.seconds());
        if breaks {
            runs.push(&windows[start..i]);
            start = i;
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn runs_are_consecutive() {
        let len = WindowLength::new(300).unwrap();
        let t = |i: i64| len.window_at(Utc.timestamp_opt(1_800_000_000 + 300 * i, 0).unwrap());
        let windows: Vec<Window> = [0, 1, 2, 3, 5, 6, 9].into_iter().map(t).collect();
        let sizes: Vec<usize> = consecutive_runs(&windows, len)
            .iter()
            .map(|b| b.len())
            .collect();
        assert_eq!(sizes, [4, 2, 1]);
        assert!(consecutive_runs(&[], len).is_empty());
    }

    #[test]
    fn the_batch_ceiling_keeps_a_batch_within_its_entries() {
        // 10,000 tenants × 5 meters: 1,000,000 entries are 20 windows; 100,000 tenants get one
        // window however small the limit, and a few tenants the configured most.
        for (tenants, meters, max_entries, ceiling) in [
            (10_000, 5, 1_000_000, 20),
            (10_000, 8, 1_000_000, 12),
            (100_000, 5, 1_000_000, 2),
            (1_000_000, 5, 1_000_000, 1),
            (10, 5, 1_000_000, 288),
            (0, 0, 10, 10),
        ] {
            assert_eq!(
                batch_ceiling(288, max_entries, tenants, meters),
                ceiling,
                "{tenants} tenants, {meters} meters, {max_entries} entries"
            );
        }
    }

    #[test]
    fn the_first_batch_is_sized_from_the_tenants_and_the_next_from_the_last() {
        let ms = std::time::Duration::from_millis;
        let target = ms(5_000);
        // 30,000 tenant-windows: 3 windows at 10,000 tenants, the most (288) at 100, one at
        // 50,000, and no tenants count as one.
        for (tenants, first) in [(10_000, 3), (100, 288), (50_000, 1), (0, 288)] {
            assert_eq!(
                BatchSizer::new(288, target, 30_000, tenants).next(),
                first,
                "{tenants} tenants"
            );
        }
        let mut s = BatchSizer::new(288, target, 30_000, 10_000);
        // (windows, slowest query) -> next: as many windows as fit 5 s on the line through the
        // last two sizes (at the last pace while only one size is known, or when the larger
        // batch was not slower), growing at most 2x, shrinking at once, at least 1, at most 288.
        for (windows, slowest, next) in [
            (3, ms(3_000), 5),   // one size, 1 s per window: 5 fit
            (5, ms(2_500), 10),  // 5 was quicker than 3: no line; 0.5 s per window, 10 fit
            (10, ms(500), 20),   // no line again; 50 ms per window: 100 fit, doubled at most
            (20, ms(40_000), 1), // line through (10, 0.5 s): 3.95 s per window; 1 fits
            (1, ms(9_000), 1),   // line through (20, 40 s): 7.4 s before any window; still 1
            (1, ms(0), 2),       // same line's other end moved: 2.1 s per window, 2 fit
            (2, ms(100), 4),     // line through (1, 0 s): 0.1 s per window; 50 fit, doubled
            (4, ms(200), 8),     // line: 50 ms per window from 0 s: 100 fit, doubled
            (200, ms(100), 288), // capped (the line from 4 to 200 falls: no line, pace)
        ] {
            s.took(windows, slowest);
            assert_eq!(s.next(), next, "{windows} windows in {slowest:?}");
        }
        // What the line is for: a query that costs 1.6 s before its first window and 1.4 s a
        // window. One window (3 s) at the pace fits one window again, forever; one more is tried
        // while under the target, and the line through both sizes keeps the batch at what fits
        // (here 2 windows, 4.4 s), and at 9 under a 15 s target.
        let cost = |n: usize| ms(1_600 + 1_400 * n as u64);
        for (target, settled) in [(ms(5_000), 2), (ms(15_000), 9)] {
            let mut s = BatchSizer::new(288, target, 10_000, 10_000);
            for _ in 0..8 {
                let n = s.next();
                s.took(n, cost(n));
            }
            assert_eq!(s.next(), settled, "target {target:?}");
            assert!(cost(s.next()) <= target);
        }
        s.too_heavy(50);
        assert_eq!(s.next(), 25, "split at once");
        s.too_heavy(1);
        assert_eq!(s.next(), 1);
    }

    /// A source whose configuration reads give `answers` in order, counted.
    struct ScriptedConfig {
        answers: std::sync::Mutex<Vec<Result<Option<ScrapeIntervals>, SourceError>>>,
        reads: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl UsageSource for ScriptedConfig {
        async fn query(
            &self,
            _: &str,
            _: DateTime<Utc>,
            _: DateTime<Utc>,
            _: std::time::Duration,
        ) -> Result<crate::source::Answer, SourceError> {
            Err(SourceError::BadQuery("configuration reads only".into()))
        }

        async fn scrape_intervals(&self) -> Result<Option<ScrapeIntervals>, SourceError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.answers.lock().unwrap().remove(0)
        }
    }

    #[tokio::test]
    async fn a_good_configuration_read_is_reused_for_its_ttl_and_a_failed_one_is_not() {
        let at_30s = ScrapeIntervals::parse("global:\n  scrape_interval: 30s\n").unwrap();
        let timeout = SourceError::Timeout(std::time::Duration::from_secs(10));
        let source = ScriptedConfig {
            answers: std::sync::Mutex::new(vec![
                Ok(Some(at_30s.clone())),
                Err(timeout.clone()),
                Ok(None),
            ]),
            reads: Default::default(),
        };
        let reads = || source.reads.load(std::sync::atomic::Ordering::SeqCst);
        let cache = ConfigCache::default();
        let t0 = Instant::now();
        let minutes = |m: u64| t0 + std::time::Duration::from_secs(60 * m);

        assert_eq!(
            cache.read(&source, t0).await,
            ConfigRead::Read(Some(at_30s.clone()))
        );
        assert_eq!(
            cache.read(&source, minutes(4)).await,
            ConfigRead::Read(Some(at_30s.clone()))
        );
        assert_eq!(reads(), 1, "reused within the TTL");
        // Expired: read again. It fails, and the last good read stands in.
        assert_eq!(
            cache.read(&source, minutes(5)).await,
            ConfigRead::Failed {
                error: timeout,
                last: Some(at_30s)
            }
        );
        assert_eq!(reads(), 2);
        // A failure is not reused: the next look reads again ("not served" this time), and
        // that good read is reused.
        assert_eq!(
            cache.read(&source, minutes(5)).await,
            ConfigRead::Read(None)
        );
        assert_eq!(
            cache.read(&source, minutes(9)).await,
            ConfigRead::Read(None)
        );
        assert_eq!(reads(), 3);
    }
}
