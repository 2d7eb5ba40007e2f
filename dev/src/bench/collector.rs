//! `budgetd-dev bench collector`: measures the collector against a real Prometheus holding exact
//! historical data (the synthetic cluster model, loaded with promtool) and a scratch ledger of
//! its own on a Postgres server.
//!
//! One window at scale: `tenants_one_window` tenants × the default meters of
//! `examples/budgetd.toml`, one 300 s window, from 60 s scrapes (15 s would be 4× the data to
//! load). `Collector::backfill` of that window (the queries, JSON decoding, assembly and the
//! ledger commit) is compared with the identical queries sent by a plain HTTP client that only
//! reads the bodies, on the same Prometheus in the same run. Each of the rounds collects a new
//! window (Collect mode, first writes, as the daemon does every window) and sends its queries
//! with the plain client and with the collector's own client alone; the order alternates
//! between rounds; medians. Context: one more window collected step by step (ledger reads,
//! queries, assembly, commit), a recollection (all unchanged), and the queries as one range
//! query over the measured windows, as a catch-up batch sends them. `prometheus.timeout_ms` is
//! raised to 120 s for this part so that a slow query shows as slow instead of as retries.
//!
//! The daemon's process and a catch-up after an outage: `catchup_tenants` tenants, data every
//! 60 s. The `budgetd` binary (next to `budgetd-dev`, or `BUDGETD_BIN`) collects one window
//! (`budgetd collect`, a process of its own: its peak resident memory is its `VmHWM`, read
//! from `/proc` every 20 ms until it exits; `ru_maxrss` would include this process' memory,
//! which a spawned child starts with), then the `catchup_hours` after it, as the daemon catches up after an outage (the
//! same `Collector` path: batches sized from the tenant count and from the last batch). Its
//! debug log of each batch splits the time between Prometheus' queries, assembly and ledger
//! commits; the CPU time of Prometheus (its `/metrics`) and of the process split the work. Fewer than 24 hours
//! are extrapolated to 24 in the report, which says so.
//!
//! Long backfill: `backfill_tenants` tenants, `backfill_days` days of 300 s windows in one
//! `Collector::backfill`, in the collector's batches (at most the config's `windows_per_batch`). Thirty days of 15 s
//! scrapes is far too much data for promtool here, so the data is scraped every 300 s (the
//! collector's `scrape_interval_seconds` set to match); the query count and the ledger work
//! are the same as with 15 s scrapes, only Prometheus reads fewer samples per window. The data
//! is loaded one day per promtool run, and the measurement waits for Prometheus to compact the
//! blocks. Context: the same batches queried and assembled again, so the ledger's share shows.
//!
//! The collector is built exactly as the daemon builds it (`Config::load` of the example
//! config as compiled in, `app::build_collector`), with the scrape interval overridden to the
//! fixture's. Every figure is checked against the model's exact usage. The report goes to
//! stdout, progress to stderr. Targets are informative: the bench returns `Ok` whether they
//! are met or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use collector::assemble::{assemble, Context as AssembleContext};
use collector::collect::version_at;
use collector::source::{Answer, Prometheus, Sample, UsageSource};
use collector::Collector;
use ledger::audit::{Actor, AuditContext};
use ledger::tenant::{TenantId, TenantState};
use ledger::usage::{CommitMode, CommitReport};
use ledger::Store;
use testkit::bench_sql::collector::{usage_by_meter, window_completeness};
use testkit::bench_sql::insert_active_tenants;
use testkit::db::{check_server, ScratchDatabases};
use testkit::prometheus::{create_blocks, PrometheusProcess, ScratchDir};
use testkit::synthetic::{Cluster, ClusterSpec, Meter as ModelMeter, Owner as ModelOwner};

use budgetd::config::Config;
use collector::config::CollectorSettings;

use super::{median, median_secs, secs, spread, verdict};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorBenchOptions {
    /// Tenants of the one-window measurement.
    pub tenants_one_window: usize,
    /// Tenants of the long backfill.
    pub backfill_tenants: usize,
    /// Days of 300 s windows of the long backfill.
    pub backfill_days: i64,
    /// Tenants of the catch-up after an outage.
    pub catchup_tenants: usize,
    /// Hours of the outage caught up (the target is for 24; fewer are extrapolated to 24,
    /// and the report says so).
    pub catchup_hours: i64,
    /// `prometheus.timeout_ms` of the daemon's process, with `collector.batch_target_ms` half
    /// of it; the example config's otherwise.
    pub catchup_timeout_ms: Option<u64>,
}

impl Default for CollectorBenchOptions {
    fn default() -> Self {
        CollectorBenchOptions {
            tenants_one_window: 10_000,
            backfill_tenants: 100,
            backfill_days: 30,
            catchup_tenants: 10_000,
            catchup_hours: 24,
            catchup_timeout_ms: None,
        }
    }
}

/// The example configuration: its meters are the ones measured.
const EXAMPLE_CONFIG: &str = include_str!("../../../examples/budgetd.toml");

/// Rounds of the one-window measurement; each collects a new window.
const ROUNDS: usize = 5;
const ONE_WINDOW_TARGET_RATIO: f64 = 1.3;
/// Scrape interval of the one-window data (s): 15 s would make 4× the samples to load.
const ONE_WINDOW_SCRAPE_S: i64 = 60;
/// Scrape interval of the long-backfill data (s).
const BACKFILL_SCRAPE_S: i64 = 300;
const SEED: u64 = 42;
/// The one-window queries' timeout: see `one_window`.
const ONE_WINDOW_PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for Prometheus to finish compacting the backfilled blocks.
const COMPACTION_WAIT_MAX: Duration = Duration::from_secs(300);
/// Below this many samples the compaction is too short to disturb the measurement.
const COMPACTION_WAIT_MIN_SAMPLES: u64 = 2_000_000;

/// `admin_url`: a superuser URL of a Postgres server (database part is replaced). Creates its
/// own scratch databases (one per measurement), runs, prints a report to stdout, drops them.
/// Prometheus and promtool are found through `PROMETHEUS_BIN` and `PROMTOOL_BIN`, else `PATH`.
pub async fn run_collector_bench(
    admin_url: &str,
    opts: &CollectorBenchOptions,
) -> anyhow::Result<()> {
    validate(opts)?;
    // Connect once up front, so a wrong URL fails before minutes of data generation.
    check_server(admin_url).await?;

    // The bench runs in a task so that a panic, an error or Ctrl-C all end with the databases
    // dropped (and Prometheus stopped, scratch directories removed: they are dropped with the
    // task).
    let databases = ScratchDatabases::new(admin_url);
    let work = {
        let opts = opts.clone();
        let databases = databases.clone();
        async move { bench(&opts, &databases).await }
    };
    databases.run_then_drop(work).await
}

fn validate(opts: &CollectorBenchOptions) -> anyhow::Result<()> {
    if opts.tenants_one_window == 0 || opts.backfill_tenants == 0 {
        bail!("tenants_one_window and backfill_tenants must be positive");
    }
    if !(1..=366).contains(&opts.backfill_days) {
        bail!("backfill_days must be between 1 and 366");
    }
    if opts.catchup_tenants == 0 {
        bail!("catchup_tenants must be positive");
    }
    if !(1..=24 * 15).contains(&opts.catchup_hours) {
        bail!("catchup_hours must be between 1 and 360");
    }
    if opts
        .catchup_timeout_ms
        .is_some_and(|ms| !(2_000..=600_000).contains(&ms))
    {
        bail!("catchup_timeout_ms must be between 2000 and 600000");
    }
    Ok(())
}

async fn bench(opts: &CollectorBenchOptions, databases: &ScratchDatabases) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("budgetd-dev bench collector");
    println!(
        "meters: the default meters of examples/budgetd.toml, plus the completeness probe; \
         synthetic cluster model without traps, seed {SEED}"
    );
    one_window(opts, databases).await?;
    catch_up_after_outage(opts, databases).await?;
    long_backfill(opts, databases).await?;
    println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

// Scratch databases ---------------------------------------------------------------------------

/// Migrates the scratch ledger, creates the model's tenants (active) in one statement and
/// seeds the price book from the example config.
async fn prepare_ledger(config: &Config, url: &str, cluster: &Cluster) -> anyhow::Result<Store> {
    Store::migrate(
        url,
        config.database.acquire_timeout,
        config.database.migrate_timeout,
    )
    .await
    .context("migrating the scratch database")?;
    let store = Store::connect(&config.database.store_config()).await?;
    let tenant_ids: Vec<String> = cluster
        .tenant_ids()
        .into_iter()
        .map(str::to_owned)
        .collect();
    insert_active_tenants(&store, &tenant_ids).await?;
    let seed = config
        .price_book_seed
        .as_ref()
        .context("the example config has no price-book seed")?;
    let ctx = AuditContext {
        actor: Actor::system("bench"),
        request_id: "collector-bench".to_owned(),
    };
    store
        .seed_price_book(&ctx, seed)
        .await?
        .context("the scratch price book was not empty")?;
    Ok(store)
}

// Configuration and fixtures -------------------------------------------------------------------

/// The example config pointed at `prometheus` and `database_url`, and its collector settings
/// with the fixture's scrape interval.
fn load_config(
    dir: &Path,
    prometheus: &str,
    database_url: &str,
    scrape_interval_s: i64,
) -> anyhow::Result<(Config, CollectorSettings)> {
    let path = dir.join("budgetd.toml");
    std::fs::write(&path, EXAMPLE_CONFIG).context("writing the example config")?;
    let env: BTreeMap<&str, String> = [
        ("BUDGETD_PROMETHEUS_URL", prometheus.to_owned()),
        ("BUDGETD_DATABASE_URL", database_url.to_owned()),
        ("BUDGETD_MIGRATE_DATABASE_URL", database_url.to_owned()),
    ]
    .into();
    let config = Config::load(Some(&path), |k| env.get(k).cloned())?;
    let mut settings = config
        .collector
        .clone()
        .context("the example config has no collector")?;
    settings.collector.interval_seconds = scrape_interval_s;
    Ok((config, settings))
}

/// What loading a fixture cost.
struct Loaded {
    cluster: Cluster,
    data: PathBuf,
    generate: Duration,
    /// Writing OpenMetrics and running promtool (they are interleaved for chunked loads).
    promtool: Duration,
    samples: u64,
}

/// Runs blocking work (data generation, promtool, starting Prometheus) off the runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_panic() {
            anyhow::anyhow!("{}", panic_message(e.into_panic()))
        } else {
            anyhow::anyhow!("blocking task failed: {e}")
        }
    })
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// Generates the model and loads it with promtool into `dir/data`, one OpenMetrics file per
/// `chunk` (aligned to the epoch), so that no file is larger than one chunk of data.
fn load_fixture(spec: ClusterSpec, dir: PathBuf, chunk: chrono::Duration) -> Loaded {
    let t = Instant::now();
    let cluster = Cluster::generate(&spec);
    let generate = t.elapsed();
    eprintln!(
        "bench: generated {} tenants, {} series, {} scrapes in {:.1} s",
        spec.tenants,
        cluster.series_count(),
        cluster.scrape_count(),
        generate.as_secs_f64()
    );
    let t = Instant::now();
    let mut data = dir.join("data");
    let mut from = spec.start;
    // Chunk boundaries are multiples of `chunk` since the epoch (days), like promtool's 2 h
    // blocks, so no two files write into the same block range.
    let step = chunk.num_seconds();
    let boundary = |t: DateTime<Utc>| {
        let s = t.timestamp();
        DateTime::from_timestamp(s - s.rem_euclid(step) + step, 0).unwrap_or(spec.end)
    };
    let chunks = {
        let (mut n, mut t) = (0i64, spec.start);
        while t < spec.end {
            n += 1;
            t = boundary(t);
        }
        n
    };
    let mut done = 0;
    let mut bytes = 0u64;
    let mut lines = 0u64;
    let mut samples = 0u64;
    while from < spec.end {
        let to = boundary(from).min(spec.end);
        data = create_blocks(&dir, |out| {
            let mut counting = CountingWriter {
                inner: out,
                bytes: 0,
                lines: 0,
                samples: 0,
                line_start: true,
            };
            cluster
                .write_openmetrics_range(&mut counting, from, to)
                .expect("write openmetrics");
            bytes += counting.bytes;
            lines += counting.lines;
            samples += counting.samples;
        });
        done += 1;
        if chunks > 1 && (done % 5 == 0 || done == chunks) {
            eprintln!(
                "bench: promtool: {done}/{chunks} chunks loaded, {:.0} s elapsed",
                t.elapsed().as_secs_f64()
            );
        }
        from = to;
    }
    let promtool = t.elapsed();
    eprintln!(
        "bench: promtool loaded {:.2} GB of OpenMetrics ({} lines) in {:.1} s",
        bytes as f64 / 1e9,
        lines,
        promtool.as_secs_f64()
    );
    Loaded {
        cluster,
        data,
        generate,
        promtool,
        samples,
    }
}

/// Counts what goes through: bytes, lines, and sample lines (those not starting with `#`).
struct CountingWriter<'a> {
    inner: &'a mut dyn std::io::Write,
    bytes: u64,
    lines: u64,
    samples: u64,
    line_start: bool,
}

impl std::io::Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        for &b in &buf[..n] {
            if self.line_start && b != b'#' {
                self.samples += 1;
            }
            self.line_start = b == b'\n';
            self.lines += u64::from(self.line_start);
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Loads the model of `spec` into `dir` (one OpenMetrics file per day) and starts a Prometheus
/// serving it; also returns how long Prometheus took to start.
async fn load_and_serve(
    spec: ClusterSpec,
    dir: &Path,
) -> anyhow::Result<(Loaded, PrometheusProcess, Duration)> {
    let loaded = blocking({
        let dir = dir.to_owned();
        move || load_fixture(spec, dir, chrono::Duration::days(1))
    })
    .await?;
    eprintln!("bench: starting Prometheus");
    let t = Instant::now();
    let (dir, data) = (dir.to_owned(), loaded.data.clone());
    let prometheus = blocking(move || PrometheusProcess::start(&dir, &data)).await?;
    Ok((loaded, prometheus, t.elapsed()))
}

/// Prometheus compacts the many small blocks promtool wrote a minute after it starts. Waits
/// until it has (its first compaction cycle ran, and the block count held still for 10 s), so
/// that compactions do not run during the measurement. Returns the blocks loaded.
async fn wait_for_compaction(client: &reqwest::Client, url: &str) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut last: Option<(u64, u64)> = None;
    let mut stable_since = Instant::now();
    loop {
        let text = client
            .get(format!("{url}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        let metric = |name: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        };
        let triggered = metric("prometheus_tsdb_compactions_triggered_total");
        let state = (
            metric("prometheus_tsdb_blocks_loaded"),
            metric("prometheus_tsdb_compactions_total"),
        );
        if last != Some(state) {
            last = Some(state);
            stable_since = Instant::now();
        }
        if triggered > 0 && stable_since.elapsed() >= Duration::from_secs(10) {
            return Ok(state.0);
        }
        if started.elapsed() > COMPACTION_WAIT_MAX {
            eprintln!("bench: Prometheus still compacting after {COMPACTION_WAIT_MAX:?}; going on");
            return Ok(state.0);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn window_at(start: DateTime<Utc>, seconds: i64) -> anyhow::Result<ledger::entry::Window> {
    Ok(ledger::entry::Window::new(
        start,
        start + chrono::Duration::seconds(seconds),
    )?)
}

/// The evaluation time of a window, as `collect` computes it: 1 ms before its end.
fn eval_time(window: &ledger::entry::Window) -> DateTime<Utc> {
    window.end() - chrono::Duration::milliseconds(1)
}

/// Prometheus' `time` parameter, formatted as the collector's client formats it.
fn prometheus_time(t: DateTime<Utc>) -> String {
    format!("{:.3}", t.timestamp_millis() as f64 / 1000.0)
}

// Baselines -----------------------------------------------------------------------------------

/// What a plain HTTP query answered: its time (request to the last body byte), body size
/// and series.
struct Fetched {
    time: Duration,
    bytes: usize,
    series: usize,
}

/// Sends `queries` as instant queries at `at` one after the other, as the collector does, and
/// reads each body without decoding it. The answers are checked after the timed loop.
async fn plain_http_round(
    client: &reqwest::Client,
    base: &str,
    queries: &[(String, String)],
    at: DateTime<Utc>,
) -> anyhow::Result<(Duration, Vec<Fetched>)> {
    let url = format!("{}/api/v1/query", base.trim_end_matches('/'));
    let time = prometheus_time(at);
    let mut bodies = Vec::with_capacity(queries.len());
    let started = Instant::now();
    for (name, query) in queries {
        let t = Instant::now();
        let response = client
            .post(&url)
            .form(&[("query", query.as_str()), ("time", time.as_str())])
            .send()
            .await
            .with_context(|| format!("plain HTTP query {name}"))?;
        let status = response.status();
        let body = response.bytes().await?;
        bodies.push((t.elapsed(), status, body));
    }
    let total = started.elapsed();
    let mut fetched = Vec::with_capacity(queries.len());
    for ((name, _), (time, status, body)) in queries.iter().zip(bodies) {
        if !status.is_success() {
            bail!(
                "plain HTTP query {name}: status {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        fetched.push(Fetched {
            time,
            bytes: body.len(),
            series: series_in(name, &body)?,
        });
    }
    Ok((total, fetched))
}

/// Series in a plain HTTP answer (checks it is a successful vector).
fn series_in(name: &str, body: &[u8]) -> anyhow::Result<usize> {
    let v: serde_json::Value =
        serde_json::from_slice(body).with_context(|| format!("{name}: not JSON"))?;
    if v["status"] != "success" {
        bail!("{name}: {}", v);
    }
    Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
}

/// The same queries through the collector's Prometheus client (HTTP, JSON decoding into
/// samples), without assembly or ledger: splits the collector's time.
async fn client_round(
    source: &Prometheus,
    queries: &[(String, String)],
    at: DateTime<Utc>,
    step: Duration,
) -> anyhow::Result<(Duration, Vec<Answer>)> {
    let started = Instant::now();
    let mut answers = Vec::with_capacity(queries.len());
    for (name, query) in queries {
        answers.push(
            source
                .query(query, at, at, step)
                .await
                .with_context(|| format!("collector client query {name}"))?,
        );
    }
    Ok((started.elapsed(), answers))
}

// One window at scale -------------------------------------------------------------------------

async fn one_window(
    opts: &CollectorBenchOptions,
    databases: &ScratchDatabases,
) -> anyhow::Result<()> {
    let window_s = 300;
    // Window 0 has no previous window in the data (counters fall back to increase()): it is
    // the warm-up, and the previous window of window 1. Windows 1..=ROUNDS are measured, and
    // the one after them is collected step by step for the split.
    let start = Utc
        .with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .single()
        .context("invalid date")?;
    let end = start + chrono::Duration::seconds(window_s * (ROUNDS as i64 + 2));
    let spec = ClusterSpec::new(opts.tenants_one_window, SEED, start, end)
        .with_traps(false)
        .with_scrape_interval_s(ONE_WINDOW_SCRAPE_S);
    println!();
    println!(
        "one window at scale: {} tenants, {window_s} s windows; Prometheus data scraped every \
         {ONE_WINDOW_SCRAPE_S} s (collector scrape_interval_seconds = {ONE_WINDOW_SCRAPE_S}), \
         {} minutes of data: a warm-up window, {ROUNDS} measured windows, one for the split",
        opts.tenants_one_window,
        (end - start).num_minutes()
    );
    eprintln!(
        "bench: one window: generating {} tenants, {} minutes at {ONE_WINDOW_SCRAPE_S} s, and \
         loading them with promtool",
        opts.tenants_one_window,
        (end - start).num_minutes()
    );
    let dir = ScratchDir::new("budgetd-cbench-one");
    let (loaded, prometheus, prom_start) = load_and_serve(spec, dir.path()).await?;
    println!(
        "  fixture: {} series, {} samples; generated in {:.1} s, OpenMetrics + promtool {:.1} s, \
         Prometheus ready in {:.1} s (not part of the figures)",
        loaded.cluster.series_count(),
        loaded.samples,
        loaded.generate.as_secs_f64(),
        loaded.promtool.as_secs_f64(),
        prom_start.as_secs_f64()
    );

    let db_url = databases.create("budgetd_cbench_one").await?;
    let (config, mut settings) =
        load_config(dir.path(), &prometheus.url, &db_url, ONE_WINDOW_SCRAPE_S)?;
    let configured_timeout = settings.prometheus.timeout;
    settings.prometheus.timeout = configured_timeout.max(ONE_WINDOW_PROMETHEUS_TIMEOUT);
    println!(
        "  prometheus.timeout_ms raised from {:.0} s to {:.0} s for this measurement (both \
         clients): single queries at this scale come close to the default, and a timeout would \
         make the collector retry",
        secs(configured_timeout),
        secs(settings.prometheus.timeout)
    );
    let t = Instant::now();
    let store = prepare_ledger(&config, &db_url, &loaded.cluster).await?;
    eprintln!(
        "bench: ledger with {} tenants and the price book in {:.1} s",
        loaded.cluster.tenant_ids().len(),
        t.elapsed().as_secs_f64()
    );
    let fixture = OneWindowFixture {
        settings: &settings,
        store: &store,
        prometheus: &prometheus,
        cluster: &loaded.cluster,
        start,
        window_s,
        configured_timeout,
    };
    let result = one_window_rounds(&fixture).await;
    store.pool().close().await;
    drop(prometheus);
    drop(dir);
    result
}

struct OneWindowFixture<'a> {
    settings: &'a CollectorSettings,
    store: &'a Store,
    prometheus: &'a PrometheusProcess,
    cluster: &'a Cluster,
    start: DateTime<Utc>,
    window_s: i64,
    /// prometheus.timeout_ms of the example config.
    configured_timeout: Duration,
}

impl OneWindowFixture<'_> {
    /// Window `i` of the data (0: the warm-up).
    fn window(&self, i: usize) -> anyhow::Result<ledger::entry::Window> {
        window_at(
            self.start + chrono::Duration::seconds(self.window_s * i as i64),
            self.window_s,
        )
    }
}

async fn one_window_rounds(f: &OneWindowFixture<'_>) -> anyhow::Result<()> {
    let (settings, store) = (f.settings, f.store);
    let collector = budgetd::app::build_collector(settings, store.clone())?;
    let queries = collector.queries();
    // The collector's client, built as `build_collector` builds it, for the split.
    let client_source = settings.source()?;
    let plain = reqwest::Client::builder()
        .timeout(settings.prometheus.timeout)
        .build()?;
    let step = Duration::from_secs(f.window_s as u64);
    let nothing = |_: usize| {};

    // Warm-up on window 0: every side once, untimed.
    let warm = f.window(0)?;
    let t = Instant::now();
    collector
        .backfill(warm.start(), warm.end(), &CommitMode::Collect, &nothing)
        .await?;
    let warm_collect = t.elapsed();
    let (warm_plain, _) =
        plain_http_round(&plain, &f.prometheus.url, &queries, eval_time(&warm)).await?;
    client_round(&client_source, &queries, eval_time(&warm), step).await?;
    eprintln!(
        "bench: warm-up window: collector {:.2} s, plain HTTP {:.2} s",
        warm_collect.as_secs_f64(),
        warm_plain.as_secs_f64()
    );

    let rss_before = current_rss();
    reset_peak_rss();
    let mut collect_times = Vec::new();
    let mut plain_times = Vec::new();
    let mut client_times = Vec::new();
    let mut per_query: Vec<Vec<Duration>> = vec![Vec::new(); queries.len()];
    let mut bodies: Vec<(usize, usize)> = vec![(0, 0); queries.len()];
    let mut entries = Vec::new();
    let mut incomplete_windows = 0;
    for round in 0..ROUNDS {
        let window = f.window(round + 1)?;
        let at = eval_time(&window);
        let mut collected = None;
        let mut fetched = None;
        let mut client = None;
        // Alternate the order: the plain client first in even rounds, last in odd ones.
        for side in 0..3 {
            let which = if round % 2 == 0 { side } else { 2 - side };
            match which {
                0 => {
                    fetched = Some(plain_http_round(&plain, &f.prometheus.url, &queries, at).await?)
                }
                1 => client = Some(client_round(&client_source, &queries, at, step).await?),
                _ => {
                    let t = Instant::now();
                    let (planned, report) = collector
                        .backfill(window.start(), window.end(), &CommitMode::Collect, &nothing)
                        .await?;
                    let elapsed = t.elapsed();
                    check_first_write(planned, &report, round)?;
                    collected = Some((elapsed, report));
                }
            }
        }
        let (plain_total, fetched) = fetched.context("plain round ran")?;
        let (client_total, _) = client.context("client round ran")?;
        let (collect_total, report) = collected.context("collector round ran")?;
        for (i, q) in fetched.iter().enumerate() {
            per_query[i].push(q.time);
            bodies[i] = (q.bytes, q.series);
        }
        let (complete, incomplete) = window_completeness(store, window.start()).await?;
        if !complete || !incomplete.is_empty() {
            incomplete_windows += 1;
            eprintln!(
                "bench: window {} incomplete: complete {complete}, {} incomplete tenants",
                window.start(),
                incomplete.len()
            );
        }
        entries.push(report.inserted);
        collect_times.push(collect_total);
        plain_times.push(plain_total);
        client_times.push(client_total);
        eprintln!(
            "bench: round {}/{ROUNDS} (window {}): collector {:.2} s, collector's client alone \
             {:.2} s, plain HTTP {:.2} s, {} entries, complete {complete}",
            round + 1,
            window.start().format("%H:%M"),
            collect_total.as_secs_f64(),
            client_total.as_secs_f64(),
            plain_total.as_secs_f64(),
            report.inserted,
        );
    }
    let bench_peak = peak_rss();

    let per_round = |a: &[Duration], b: &[Duration]| -> Vec<f64> {
        a.iter().zip(b).map(|(a, b)| secs(*a) / secs(*b)).collect()
    };
    let ratios = per_round(&collect_times, &plain_times);
    let ratio = median(&ratios);
    let n = entries.first().copied().unwrap_or(0);
    let collect_median = median_secs(&collect_times);
    println!(
        "  {ROUNDS} rounds, each a new window collected once (Collect mode: first writes, as the \
         daemon does) and the same queries sent by the other clients; the order alternates \
         between rounds; medians; ratio = median of the per-round ratios"
    );
    println!(
        "  {:<52}{:>8.3} s   ({} entries per window, {:.0} entries/s, {} of {ROUNDS} windows \
         incomplete)",
        "Collector::backfill of one window (total)",
        collect_median,
        n,
        n as f64 / collect_median,
        incomplete_windows
    );
    println!(
        "  {:<52}{:>8.3} s   ({} queries: one per meter + the probe)",
        "plain HTTP, same queries, bodies read",
        median_secs(&plain_times),
        queries.len()
    );
    println!(
        "  {:<52}{:>8.2}   target <= {ONE_WINDOW_TARGET_RATIO:.1}  {}   (rounds {})",
        "ratio collector/plain HTTP",
        ratio,
        verdict(ratio <= ONE_WINDOW_TARGET_RATIO),
        spread(&ratios)
    );
    let client_ratios = per_round(&client_times, &plain_times);
    println!(
        "  {:<52}{:>8.3} s   (ratio to plain HTTP {:.2}, rounds {})",
        "the collector's client alone (HTTP + JSON decoding)",
        median_secs(&client_times),
        median(&client_ratios),
        spread(&client_ratios),
    );
    println!("  per query (plain HTTP, median over the rounds):");
    for (i, (name, _)) in queries.iter().enumerate() {
        println!(
            "    {name:<16}{:>8.3} s  {:>7.2} MB  {:>7} series",
            median_secs(&per_query[i]),
            bodies[i].0 as f64 / 1e6,
            bodies[i].1
        );
    }
    let all: Vec<Duration> = per_query.iter().flatten().copied().collect();
    let max_query = all.iter().max().copied().unwrap_or_default();
    let over = all.iter().filter(|d| **d > f.configured_timeout).count();
    println!(
        "  slowest single query {:.2} s; {over} of {} timed queries took longer than the \
         example config's prometheus.timeout_ms ({:.0} s){}",
        secs(max_query),
        all.len(),
        secs(f.configured_timeout),
        if max_query * 2 > f.configured_timeout {
            "  WARNING: within 2x of the default timeout"
        } else {
            ""
        }
    );
    if let (Some(before), Some(peak)) = (rss_before, bench_peak) {
        println!(
            "  bench process resident memory: {:.0} MB before the rounds (the model and the \
             clients), peak {:.0} MB during them",
            before as f64 / 1e6,
            peak as f64 / 1e6,
        );
    }

    split(f, &collector, &client_source, &queries).await?;

    // Recollecting an already collected window (all unchanged): context.
    let again = f.window(1)?;
    let t = Instant::now();
    let (_, recollect_report) = collector
        .backfill(
            again.start(),
            again.end(),
            &CommitMode::Recollect {
                reason: "bench".to_owned(),
            },
            &nothing,
        )
        .await?;
    println!(
        "  recollect of a collected window (Recollect mode, all unchanged; context): {:.3} s \
         ({} unchanged, {} corrected)",
        secs(t.elapsed()),
        recollect_report.unchanged,
        recollect_report.corrected
    );

    catch_up(f, &client_source, &queries).await?;
    if let Some(rss) = prometheus_rss(&plain, &f.prometheus.url).await {
        println!(
            "  Prometheus resident memory after the queries: {:.0} MB",
            rss / 1e6
        );
    }
    check_against_truth(store, f.cluster, f.window(1)?.start(), f.window_s).await?;
    Ok(())
}

/// Collects the window after the measured ones step by step, as `Collector::backfill` does,
/// timing each step: ledger reads, queries (the collector's client), assembly, commit.
async fn split(
    f: &OneWindowFixture<'_>,
    collector: &Collector,
    source: &Prometheus,
    queries: &[(String, String)],
) -> anyhow::Result<()> {
    let store = f.store;
    let window = f.window(ROUNDS + 1)?;
    let cfg = collector.config();

    let t = Instant::now();
    let _planned = collector
        .plan_backfill(window.start(), window.end(), &CommitMode::Collect)
        .await?;
    let versions = store.list_price_book_versions().await?;
    let tenants = store.list_tenants(None).await?;
    let known: BTreeSet<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
    let expected: BTreeSet<TenantId> = tenants
        .iter()
        .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
        .map(|t| t.id.clone())
        .collect();
    let reads = t.elapsed();

    let at = eval_time(&window);
    let (query_time, mut answers) =
        client_round(source, queries, at, Duration::from_secs(f.window_s as u64)).await?;

    let t = Instant::now();
    let probe = answers.pop().context("the probe is queried last")?;
    let ms = at.timestamp_millis();
    let empty: Vec<Sample> = Vec::new();
    let per_meter: Vec<&[Sample]> = answers
        .iter()
        .map(|a| a.at.get(&ms).map(Vec::as_slice).unwrap_or(&empty))
        .collect();
    let probe = probe.at.get(&ms).map(Vec::as_slice).unwrap_or(&empty);
    let version = version_at(&versions, window.start()).context("no price book")?;
    let ctx = AssembleContext {
        tenant_label: cfg.tenant_label.as_str(),
        known_tenants: &known,
        expected_tenants: &expected,
        expected_samples: cfg.window.seconds() / cfg.interval_seconds,
        interval_mismatches: &[],
    };
    let collected = assemble(window, &cfg.meters, &per_meter, probe, &[], version, &ctx)?;
    let assembly = t.elapsed();

    let t = Instant::now();
    let report = store
        .commit_windows(&[collected], &CommitMode::Collect, false, "backfill")
        .await?;
    let commit = t.elapsed();
    check_first_write(1, &report, ROUNDS + 1)?;
    println!(
        "  split, one more window collected step by step as Collector::backfill does: ledger \
         reads (plan, price book, {} tenants) {:.3} s, queries (collector's client) {:.3} s, \
         assembly {:.3} s, commit of {} entries {:.3} s",
        tenants.len(),
        secs(reads),
        secs(query_time),
        secs(assembly),
        report.inserted,
        secs(commit)
    );
    Ok(())
}

/// Catching up: the same queries as one range query over the measured windows, as a batch of
/// windows sends them, timed per query; extrapolated to the collector's first batch.
async fn catch_up(
    f: &OneWindowFixture<'_>,
    source: &Prometheus,
    queries: &[(String, String)],
) -> anyhow::Result<()> {
    let first = eval_time(&f.window(1)?);
    let last = eval_time(&f.window(ROUNDS)?);
    let step = Duration::from_secs(f.window_s as u64);
    let c = &f.settings.collector;
    // The collector's first batch at this tenant count (later ones follow what it took).
    let per_batch = collector::collect::BatchSizer::new(
        c.windows_per_batch,
        c.batch_target,
        c.batch_tenant_windows,
        f.cluster.tenant_ids().len(),
    )
    .next();
    let mut parts = Vec::new();
    let mut total = Duration::ZERO;
    let mut slowest = Duration::ZERO;
    for (name, query) in queries {
        let t = Instant::now();
        let result = source.query(query, first, last, step).await;
        let took = t.elapsed();
        total += took;
        slowest = slowest.max(took);
        match result {
            Ok(_) => parts.push(format!("{name} {:.2} s", secs(took))),
            Err(e) => parts.push(format!("{name} failed after {:.2} s ({e})", secs(took))),
        }
    }
    let per_window = secs(total) / ROUNDS as f64;
    println!(
        "  catch-up batch (context): the queries as range queries over the {ROUNDS} measured \
         windows took {:.2} s ({:.2} s per window: {}); the collector's first batch at this tenant \
         count, {per_batch} windows (batch_tenant_windows / tenants), would take ~{:.0} s of \
         queries, ~{:.0} s for the slowest query (batch_target_ms: {:.1} s; the collector's \
         timeout is per query: {:.0} s in the example config)",
        secs(total),
        per_window,
        parts.join(", "),
        per_window * per_batch as f64,
        secs(slowest) / ROUNDS as f64 * per_batch as f64,
        secs(c.batch_target),
        secs(f.configured_timeout),
    );
    Ok(())
}

fn check_first_write(planned: usize, report: &CommitReport, round: usize) -> anyhow::Result<()> {
    if planned != 1 || report.windows != 1 {
        bail!(
            "round {round}: planned {planned}, committed {} windows, expected 1",
            report.windows
        );
    }
    if report.inserted == 0 || report.unchanged != 0 || report.conflicts != 0 {
        bail!("round {round}: the collection was not all first writes: {report:?}");
    }
    Ok(())
}

/// The ledger's totals per meter over the tenants, for the window at `window_start`, against
/// the model's exact usage. Context: prints the relative error.
async fn check_against_truth(
    store: &Store,
    cluster: &Cluster,
    window_start: DateTime<Utc>,
    window_s: i64,
) -> anyhow::Result<()> {
    let truth = cluster.window_truth(window_start, window_s);
    let mut expected: BTreeMap<&'static str, Decimal> = BTreeMap::new();
    for ((owner, meter), q) in &truth {
        if matches!(owner, ModelOwner::Tenant(_)) {
            *expected.entry(meter.as_str()).or_default() += *q;
        }
    }
    let actual = usage_by_meter(
        store,
        window_start,
        window_start + chrono::Duration::seconds(window_s),
    )
    .await?;
    print_truth(&expected, &actual, "first measured window");
    Ok(())
}

fn print_truth(
    expected: &BTreeMap<&'static str, Decimal>,
    actual: &BTreeMap<String, Decimal>,
    what: &str,
) {
    let mut parts = Vec::new();
    for meter in ModelMeter::ALL {
        let e = expected.get(meter.as_str()).copied().unwrap_or_default();
        let a = actual.get(meter.as_str()).copied().unwrap_or_default();
        let err = if e.is_zero() {
            if a.is_zero() {
                "0".to_owned()
            } else {
                "inf".to_owned()
            }
        } else {
            let rel = ((a - e) / e * Decimal::from(100))
                .to_f64()
                .unwrap_or(f64::NAN);
            format!("{rel:+.3}%")
        };
        parts.push(format!("{} {err}", meter.as_str()));
    }
    println!(
        "  ledger vs the model's exact usage ({what}, sum over tenants): {}",
        parts.join(", ")
    );
}

// The daemon's process: one window and a catch-up -----------------------------------------------

/// The daemon's peak resident memory for one window, target (MiB).
const ONE_WINDOW_RSS_TARGET_MIB: f64 = 128.0;
/// The catch-up of 24 hours, target (s).
const CATCH_UP_24H_TARGET_S: f64 = 15.0 * 60.0;
/// Scrape interval of the catch-up data (s), as in the one-window measurement.
const CATCH_UP_SCRAPE_S: i64 = 60;

/// The `budgetd` binary: `BUDGETD_BIN`, else the one next to this binary (`cargo build -p
/// budgetd` puts them side by side).
fn budgetd_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BUDGETD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let me = std::env::current_exe().context("the path of budgetd-dev")?;
    let dir = me.parent().context("budgetd-dev's directory")?;
    // Test binaries live one level down, in deps/.
    for candidate in [dir.join("budgetd"), dir.join("../budgetd")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no budgetd binary next to {} (build it with the same profile: cargo build [--release] \
         -p budgetd, or set BUDGETD_BIN)",
        me.display()
    )
}

/// One `budgetd collect` process: how long it ran, its peak resident memory and CPU time, and
/// what its log says about the batches.
struct ProcessRun {
    elapsed: Duration,
    peak_rss_bytes: u64,
    cpu: Duration,
    batches: Vec<BatchLog>,
    /// The ledger commits' time, summed (each overlaps the next batch's queries).
    commits: Duration,
    /// Query attempts that failed and were retried, batches split, and of those failures
    /// the timeouts.
    retries: usize,
    splits: usize,
    timeouts: usize,
    /// The process' summary line ("collected N windows: ...").
    summary: String,
}

/// One "batch collected" line of the collector's debug log.
struct BatchLog {
    windows: u64,
    queries: Duration,
    /// Queries and assembly.
    total: Duration,
}

/// `VmHWM` of a `/proc/<pid>/status`, in KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
}

/// Runs `budgetd collect --from --to` with `config` and waits for it with `wait4`, which
/// gives its CPU time; its peak resident memory is sampled from `/proc` while it runs.
fn run_budgetd_collect(
    bin: &Path,
    config: &Path,
    env: &[(&str, &str)],
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> anyhow::Result<ProcessRun> {
    use std::io::BufRead;
    let started = Instant::now();
    let mut child = std::process::Command::new(bin)
        .env("BUDGETD_CONFIG", config)
        .envs(env.iter().copied())
        .env("BUDGETD_LOG", "info,collector::collect=debug")
        .env("BUDGETD_LOG_FORMAT", "json")
        .args([
            "collect",
            "--from",
            &from.to_rfc3339(),
            "--to",
            &to.to_rfc3339(),
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let stderr = child.stderr.take().context("piped stderr")?;
    let stdout = child.stdout.take().context("piped stdout")?;
    let log = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let out = std::thread::spawn(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let pid = libc::pid_t::try_from(child.id()).context("pid")?;
    // The process' peak resident memory is its address space's high-water mark (`VmHWM`),
    // read until it exits: `ru_maxrss` from wait4 is no use here, since a spawned child's
    // starts at its parent's resident memory (this bench holds the fixture's model).
    let sampler = std::thread::spawn(move || {
        let path = format!("/proc/{pid}/status");
        let mut peak_kib = 0;
        // A zombie's status has no VmHWM; a reaped process has no status.
        while let Some(kib) = std::fs::read_to_string(&path)
            .ok()
            .as_deref()
            .and_then(vm_hwm_kib)
        {
            peak_kib = kib.max(peak_kib);
            std::thread::sleep(Duration::from_millis(20));
        }
        peak_kib
    });
    let mut status: libc::c_int = 0;
    // SAFETY: `rusage` is plain data that wait4 fills; `pid` is our own child, not waited yet
    // (`child` is never waited through std).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = started.elapsed();
    if waited != pid {
        bail!("wait4 on budgetd: {}", std::io::Error::last_os_error());
    }
    let lines = log
        .join()
        .map_err(|_| anyhow::anyhow!("log reader panicked"))?;
    let stdout = out
        .join()
        .map_err(|_| anyhow::anyhow!("stdout reader panicked"))?;
    let peak_kib = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("memory sampler panicked"))?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!("budgetd collect failed (wait status {status}):\n{tail}");
    }
    if peak_kib == 0 {
        bail!("budgetd collect exited before its memory could be read");
    }
    let tv =
        |t: libc::timeval| Duration::from_micros(t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64);
    let mut run = ProcessRun {
        elapsed,
        peak_rss_bytes: peak_kib * 1024,
        cpu: tv(usage.ru_utime) + tv(usage.ru_stime),
        batches: Vec::new(),
        commits: Duration::ZERO,
        retries: 0,
        splits: 0,
        timeouts: 0,
        summary: stdout
            .iter()
            .find(|l| l.starts_with("collected "))
            .cloned()
            .unwrap_or_default(),
    };
    for line in &lines {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let fields = &v["fields"];
        let message = fields["message"].as_str().unwrap_or_default();
        let ms = |key: &str| Duration::from_millis(fields[key].as_u64().unwrap_or(0));
        let failed =
            message.contains("failed; retrying") || message.contains("splitting the batch");
        if failed
            && fields["error"]
                .as_str()
                .is_some_and(|e| e.contains("timed out"))
        {
            run.timeouts += 1;
        }
        if message == "batch collected" {
            run.batches.push(BatchLog {
                windows: fields["windows"].as_u64().unwrap_or(0),
                queries: ms("queries_ms"),
                total: ms("total_ms"),
            });
        } else if message == "batch committed" {
            run.commits += ms("commit_ms");
        } else if message.contains("failed; retrying") {
            run.retries += 1;
        } else if message.contains("splitting the batch") {
            run.splits += 1;
        }
    }
    Ok(run)
}

/// Prometheus' CPU time so far, from its /metrics.
async fn prometheus_cpu(client: &reqwest::Client, url: &str) -> Option<Duration> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_cpu_seconds_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(Duration::from_secs_f64)
}

/// Prints where a process' time went: its batches' queries (Prometheus, request to decoded
/// answer), assembly and ledger commits (budgetd and Postgres), and the CPU time of Prometheus
/// and of the process. A batch's commit runs while the next batch's queries do, so the parts
/// may sum to more than the wall time.
fn print_shares(what: &str, run: &ProcessRun, prometheus_cpu: Option<Duration>) {
    let wall = secs(run.elapsed);
    let queries: Duration = run.batches.iter().map(|b| b.queries).sum();
    let assembly: Duration = run
        .batches
        .iter()
        .map(|b| b.total.saturating_sub(b.queries))
        .sum();
    let share = |d: Duration| secs(d) / wall * 100.0;
    println!(
        "  {what}: wall {wall:.1} s; in Prometheus' queries {:.1} s ({:.0}%); in budgetd: \
         assembly {:.1} s ({:.0}%), ledger commits {:.1} s ({:.0}%, overlapping the next \
         batch's queries)",
        secs(queries),
        share(queries),
        secs(assembly),
        share(assembly),
        secs(run.commits),
        share(run.commits),
    );
    if let Some(prom) = prometheus_cpu {
        let (p, b) = (secs(prom), secs(run.cpu));
        println!(
            "  {what}: CPU time: Prometheus {p:.1} s ({:.0}%), budgetd {b:.1} s ({:.0}%) \
             (Postgres not counted)",
            p / (p + b) * 100.0,
            b / (p + b) * 100.0,
        );
    }
}

async fn catch_up_after_outage(
    opts: &CollectorBenchOptions,
    databases: &ScratchDatabases,
) -> anyhow::Result<()> {
    let window_s: i64 = 300;
    let bin = budgetd_binary()?;
    // Window 0: the counters' previous values; window 1: the one window; then the outage.
    let start = Utc
        .with_ymd_and_hms(2026, 3, 3, 0, 0, 0)
        .single()
        .context("invalid date")?;
    let one = window_at(start + chrono::Duration::seconds(window_s), window_s)?;
    let outage_from = one.end();
    let outage_to = outage_from + chrono::Duration::hours(opts.catchup_hours);
    let outage_windows = (outage_to - outage_from).num_seconds() / window_s;
    let spec = ClusterSpec::new(opts.catchup_tenants, SEED, start, outage_to)
        .with_traps(false)
        .with_scrape_interval_s(CATCH_UP_SCRAPE_S);
    println!();
    println!(
        "the daemon's process: {} tenants, data scraped every {CATCH_UP_SCRAPE_S} s; `budgetd \
         collect` ({}) collects one window, then the {} hour(s) after it ({outage_windows} \
         windows) as after an outage (the daemon's catch-up path: batches sized from the tenant \
         count, then from the last batches; {})",
        opts.catchup_tenants,
        bin.display(),
        opts.catchup_hours,
        match opts.catchup_timeout_ms {
            Some(ms) => format!(
                "prometheus.timeout_ms = {ms} (--catchup-timeout-ms), so collector.batch_target_ms \
                 = {} (half of it)",
                ms / 2
            ),
            None => "the example config's prometheus.timeout_ms, so collector.batch_target_ms \
                     is half of it"
                .to_owned(),
        }
    );
    eprintln!(
        "bench: catch-up: generating {} tenants, {} h at {CATCH_UP_SCRAPE_S} s, and loading them \
         with promtool",
        opts.catchup_tenants, opts.catchup_hours
    );
    let dir = ScratchDir::new("budgetd-cbench-catchup");
    let (loaded, prometheus, prom_start) = load_and_serve(spec, dir.path()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    if loaded.samples >= COMPACTION_WAIT_MIN_SAMPLES {
        eprintln!("bench: waiting for Prometheus to compact the loaded blocks");
        wait_for_compaction(&http, &prometheus.url).await?;
    }
    println!(
        "  fixture: {} series, {} samples; generated in {:.1} s, OpenMetrics + promtool {:.1} s, \
         Prometheus ready in {:.1} s (not part of the figures)",
        loaded.cluster.series_count(),
        loaded.samples,
        loaded.generate.as_secs_f64(),
        loaded.promtool.as_secs_f64(),
        prom_start.as_secs_f64()
    );
    let db_url = databases.create("budgetd_cbench_catchup").await?;
    let (config, _) = load_config(dir.path(), &prometheus.url, &db_url, CATCH_UP_SCRAPE_S)?;
    let store = prepare_ledger(&config, &db_url, &loaded.cluster).await?;
    // The example config, at the data's scrape interval, for the process; without its
    // settle_seconds, which then follows the scrape interval (the cpu meter reads 2.5 intervals
    // past a window's end: 150 s at 60 s, more than the example's 120).
    let interval = "scrape_interval_seconds = 30";
    let settle = "\nsettle_seconds = 120\n";
    for line in [interval, settle] {
        if !EXAMPLE_CONFIG.contains(line) {
            bail!("the example config has no {line:?}");
        }
    }
    let mut process_toml = EXAMPLE_CONFIG
        .replace(
            interval,
            &format!("scrape_interval_seconds = {CATCH_UP_SCRAPE_S}"),
        )
        .replace(settle, "\n");
    if let Some(ms) = opts.catchup_timeout_ms {
        let timeout = "\ntimeout_ms = 30000\n";
        if !process_toml.contains(timeout) {
            bail!("the example config has no {timeout:?}");
        }
        // collector.batch_target_ms is not set in the example: half of the timeout.
        process_toml = process_toml.replace(timeout, &format!("\ntimeout_ms = {ms}\n"));
    }
    let process_config = dir.path().join("budgetd-process.toml");
    std::fs::write(&process_config, process_toml)?;
    let env = [
        ("BUDGETD_PROMETHEUS_URL", prometheus.url.as_str()),
        ("BUDGETD_DATABASE_URL", db_url.as_str()),
        ("BUDGETD_MIGRATE_DATABASE_URL", db_url.as_str()),
    ];
    let result = async {
        let run = |from, to| {
            let (bin, config) = (bin.clone(), process_config.clone());
            let env: Vec<(String, String)> = env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            blocking(move || {
                let env: Vec<(&str, &str)> =
                    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run_budgetd_collect(&bin, &config, &env, from, to)
            })
        };

        eprintln!("bench: catch-up: one window in a budgetd process");
        let cpu_before = prometheus_cpu(&http, &prometheus.url).await;
        let single = run(one.start(), one.end()).await??;
        let cpu_single = prometheus_cpu(&http, &prometheus.url).await;
        let mib = single.peak_rss_bytes as f64 / (1024.0 * 1024.0);
        println!(
            "  {:<52}{:>8.1} MiB   target <= {ONE_WINDOW_RSS_TARGET_MIB:.0} MiB  {}   \
             (budgetd collect of one window: {:.2} s; {})",
            "daemon peak resident memory, one window",
            mib,
            verdict(mib <= ONE_WINDOW_RSS_TARGET_MIB),
            secs(single.elapsed),
            single.summary
        );
        print_shares(
            "one window",
            &single,
            cpu_before.zip(cpu_single).map(|(b, a)| a.saturating_sub(b)),
        );
        check_against_truth(&store, &loaded.cluster, one.start(), window_s).await?;

        eprintln!(
            "bench: catch-up: {} h ({outage_windows} windows) in a budgetd process",
            opts.catchup_hours
        );
        let catch_up = run(outage_from, outage_to).await??;
        let cpu_after = prometheus_cpu(&http, &prometheus.url).await;
        let collected: u64 = catch_up.batches.iter().map(|b| b.windows).sum();
        if collected != outage_windows as u64 {
            bail!(
                "the catch-up's batches hold {collected} windows, expected {outage_windows} ({})",
                catch_up.summary
            );
        }
        let elapsed = secs(catch_up.elapsed);
        let per_day = elapsed * 288.0 / outage_windows as f64;
        let sizes: Vec<u64> = catch_up.batches.iter().map(|b| b.windows).collect();
        let extrapolated = if opts.catchup_hours == 24 {
            String::new()
        } else {
            format!(
                " (EXTRAPOLATED: {} h measured, {elapsed:.1} s, scaled by 24/{})",
                opts.catchup_hours, opts.catchup_hours
            )
        };
        println!(
            "  {:<52}{:>8.1} s   target <= {:.0} s  {}{extrapolated}",
            "catch-up of 24 h after an outage",
            per_day,
            CATCH_UP_24H_TARGET_S,
            verdict(per_day <= CATCH_UP_24H_TARGET_S),
        );
        println!(
            "  {:<52}{:>8}     target 0  {}   ({} query attempts retried, {} batches split)",
            "catch-up: queries timed out",
            catch_up.timeouts,
            verdict(catch_up.timeouts == 0),
            catch_up.retries,
            catch_up.splits,
        );
        println!(
            "  catch-up: {} batches, windows per batch {} (first {}, mean {:.1}); {:.1} windows/s; \
             {}",
            sizes.len(),
            sizes
                .iter()
                .min()
                .zip(sizes.iter().max())
                .map(|(a, b)| format!("{a}-{b}"))
                .unwrap_or_default(),
            sizes.first().copied().unwrap_or(0),
            collected as f64 / sizes.len().max(1) as f64,
            outage_windows as f64 / elapsed,
            catch_up.summary
        );
        println!(
            "  catch-up: budgetd peak resident memory {:.1} MiB",
            catch_up.peak_rss_bytes as f64 / (1024.0 * 1024.0)
        );
        print_shares(
            "catch-up",
            &catch_up,
            cpu_single.zip(cpu_after).map(|(b, a)| a.saturating_sub(b)),
        );
        anyhow::Ok(())
    }
    .await;
    store.pool().close().await;
    drop(prometheus);
    drop(dir);
    result
}

// Long backfill ---------------------------------------------------------------------------------

async fn long_backfill(
    opts: &CollectorBenchOptions,
    databases: &ScratchDatabases,
) -> anyhow::Result<()> {
    let window_s: i64 = 300;
    let from = Utc
        .with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
        .single()
        .context("invalid date")?;
    let to = from + chrono::Duration::days(opts.backfill_days);
    // One window of data before the first window: its counters' previous values.
    let spec = ClusterSpec::new(
        opts.backfill_tenants,
        SEED,
        from - chrono::Duration::seconds(window_s),
        to,
    )
    .with_traps(false)
    .with_scrape_interval_s(BACKFILL_SCRAPE_S);
    let windows = (to - from).num_seconds() / window_s;
    println!();
    println!(
        "long backfill: {} tenants, {} day(s) of {window_s} s windows ({windows} windows) in one \
         Collector::backfill; Prometheus data scraped every {BACKFILL_SCRAPE_S} s (sparse: 15 s \
         would be 20x the samples, too many for promtool here; collector \
         scrape_interval_seconds = {BACKFILL_SCRAPE_S}), so Prometheus reads fewer samples per \
         window than in production, while the query count and the ledger work are the same",
        opts.backfill_tenants, opts.backfill_days
    );
    eprintln!(
        "bench: long backfill: generating {} tenants, {} day(s) at {BACKFILL_SCRAPE_S} s, and \
         loading them with promtool",
        opts.backfill_tenants, opts.backfill_days
    );
    let dir = ScratchDir::new("budgetd-cbench-long");
    let (loaded, prometheus, prom_start) = load_and_serve(spec, dir.path()).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let compaction = if loaded.samples >= COMPACTION_WAIT_MIN_SAMPLES {
        eprintln!(
            "bench: waiting for Prometheus to compact the backfilled blocks (a minute or more)"
        );
        let t = Instant::now();
        let blocks = wait_for_compaction(&http, &prometheus.url).await?;
        format!(
            "its compaction of promtool's blocks settled in {:.1} s ({blocks} blocks)",
            secs(t.elapsed())
        )
    } else {
        "too little data to wait for its compaction".to_owned()
    };
    println!(
        "  fixture: {} series, {} samples; generated in {:.1} s; OpenMetrics + promtool (one \
         file per day) {:.1} s; Prometheus ready in {:.1} s, {compaction} (none of this is part \
         of the figures)",
        loaded.cluster.series_count(),
        loaded.samples,
        loaded.generate.as_secs_f64(),
        loaded.promtool.as_secs_f64(),
        prom_start.as_secs_f64(),
    );

    let db_url = databases.create("budgetd_cbench_long").await?;
    let (config, settings) = load_config(dir.path(), &prometheus.url, &db_url, BACKFILL_SCRAPE_S)?;
    let store = prepare_ledger(&config, &db_url, &loaded.cluster).await?;
    let result = long_backfill_run(&settings, &store, &loaded.cluster, from, to, window_s).await;
    store.pool().close().await;
    drop(prometheus);
    drop(dir);
    result
}

async fn long_backfill_run(
    settings: &CollectorSettings,
    store: &Store,
    cluster: &Cluster,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    window_s: i64,
) -> anyhow::Result<()> {
    let collector: Collector = budgetd::app::build_collector(settings, store.clone())?;
    let per_batch = settings.collector.windows_per_batch;
    let total_windows = ((to - from).num_seconds() / window_s) as usize;
    let done = AtomicUsize::new(0);
    let started = Instant::now();
    let progress = |n: usize| {
        let d = done.fetch_add(n, Ordering::Relaxed) + n;
        let batches = total_windows.div_ceil(per_batch.max(1));
        let every = (batches / 10).max(1) * per_batch;
        if d % every < n || d == total_windows {
            eprintln!(
                "bench: backfill: {d}/{total_windows} windows, {:.0} windows/s so far",
                d as f64 / started.elapsed().as_secs_f64()
            );
        }
    };
    let rss_before = current_rss();
    reset_peak_rss();
    let t = Instant::now();
    let (planned, report) = collector
        .backfill(from, to, &CommitMode::Collect, &progress)
        .await?;
    let elapsed = t.elapsed();
    let rss_peak = peak_rss();
    if planned != total_windows || report.windows != total_windows || report.conflicts != 0 {
        bail!(
            "the backfill planned {planned} windows and reported {report:?}; expected \
             {total_windows} windows without conflicts"
        );
    }
    let s = secs(elapsed);
    println!(
        "  Collector::backfill, at most {} windows per query and commit (at least {} batches x {} queries):",
        per_batch,
        total_windows.div_ceil(per_batch),
        collector.queries().len()
    );
    println!(
        "  {:<52}{:>8.1} s   {:>8.1} windows/s   {:>8.0} entries/s   ({} entries, {} incomplete windows)",
        "total",
        s,
        total_windows as f64 / s,
        report.inserted as f64 / s,
        report.inserted,
        report.incomplete_windows
    );

    if let (Some(before), Some(peak)) = (rss_before, rss_peak) {
        println!(
            "  bench process resident memory: {:.0} MB before the backfill, peak {:.0} MB during it",
            before as f64 / 1e6,
            peak as f64 / 1e6
        );
    }

    // Split: the same batches through the collector's client alone, then assembled as the
    // collector assembles them; the rest of the backfill's time is the ledger's.
    let source = settings.source()?;
    let queries = collector.queries();
    let cfg = collector.config();
    let versions = store.list_price_book_versions().await?;
    let tenants = store.list_tenants(None).await?;
    let known: BTreeSet<TenantId> = tenants.iter().map(|t| t.id.clone()).collect();
    let expected_tenants: BTreeSet<TenantId> = tenants
        .iter()
        .filter(|t| matches!(t.state, TenantState::Active | TenantState::Suspended))
        .map(|t| t.id.clone())
        .collect();
    let ctx = AssembleContext {
        tenant_label: cfg.tenant_label.as_str(),
        known_tenants: &known,
        expected_tenants: &expected_tenants,
        expected_samples: cfg.window.seconds() / cfg.interval_seconds,
        interval_mismatches: &[],
    };
    let step = Duration::from_secs(window_s as u64);
    let empty: Vec<Sample> = Vec::new();
    let mut querying = Duration::ZERO;
    let mut assembling = Duration::ZERO;
    let mut slowest = (Duration::ZERO, String::new());
    let mut batch_start = from;
    while batch_start < to {
        let batch_end =
            (batch_start + chrono::Duration::seconds(window_s * per_batch as i64)).min(to);
        let windows: Vec<ledger::entry::Window> =
            cfg.window.windows(batch_start, batch_end).collect();
        let (first, last) = match (windows.first(), windows.last()) {
            (Some(first), Some(last)) => (eval_time(first), eval_time(last)),
            _ => break,
        };
        let mut answers = Vec::with_capacity(queries.len());
        for (name, query) in &queries {
            let q = Instant::now();
            answers.push(
                source
                    .query(query, first, last, step)
                    .await
                    .with_context(|| format!("collector client query {name}"))?,
            );
            let took = q.elapsed();
            querying += took;
            if took > slowest.0 {
                slowest = (took, name.clone());
            }
        }
        let t = Instant::now();
        let probe = answers.pop().context("the probe is queried last")?;
        for w in &windows {
            let ms = eval_time(w).timestamp_millis();
            let per_meter: Vec<&[Sample]> = answers
                .iter()
                .map(|a| a.at.get(&ms).map(Vec::as_slice).unwrap_or(&empty))
                .collect();
            let probe = probe.at.get(&ms).map(Vec::as_slice).unwrap_or(&empty);
            let version = version_at(&versions, w.start()).context("no price book")?;
            std::hint::black_box(assemble(
                *w,
                &cfg.meters,
                &per_meter,
                probe,
                &[],
                version,
                &ctx,
            )?);
        }
        assembling += t.elapsed();
        batch_start = batch_end;
    }
    let rest = (s - secs(querying) - secs(assembling)).max(0.0);
    println!(
        "  split (the same batches again after the backfill): queries through the collector's \
         client {:.1} s (slowest {:.2} s, {}), assembly {:.1} s; the rest, ~{rest:.1} s \
         (~{:.1} ms per window), is the ledger: reads and {} commits",
        secs(querying),
        secs(slowest.0),
        slowest.1,
        secs(assembling),
        rest * 1000.0 / total_windows as f64,
        total_windows.div_ceil(per_batch.max(1)),
    );

    let truth = cluster.truth(window_s);
    let mut expected: BTreeMap<&'static str, Decimal> = BTreeMap::new();
    for row in truth.rows() {
        let day_start = row
            .day
            .and_hms_opt(0, 0, 0)
            .map(|d| d.and_utc())
            .context("invalid day")?;
        if matches!(row.owner, ModelOwner::Tenant(_)) && day_start >= from && day_start < to {
            *expected.entry(row.meter.as_str()).or_default() += row.quantity;
        }
    }
    let actual = usage_by_meter(store, from, to).await?;
    print_truth(&expected, &actual, "all backfilled days");
    Ok(())
}

// Helpers ------------------------------------------------------------------------------------------

/// A field of /proc/self/status in bytes (Linux; None elsewhere).
fn proc_status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn current_rss() -> Option<u64> {
    proc_status_bytes("VmRSS:")
}

/// The peak resident memory since the last `reset_peak_rss`.
fn peak_rss() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Resets the peak resident memory to the current one (Linux: `5` to clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Prometheus' own resident memory, from its /metrics.
async fn prometheus_rss(client: &reqwest::Client, url: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_resident_memory_is_read_from_proc_status() {
        let status =
            "Name:\tbudgetd\nVmPeak:\t  900000 kB\nVmHWM:\t   99120 kB\nVmRSS:\t 51200 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(99_120));
        // A zombie's status has no memory lines.
        assert_eq!(vm_hwm_kib("Name:\tbudgetd\nState:\tZ (zombie)\n"), None);
        // This process' own, as the sampler reads a child's.
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(vm_hwm_kib(&own).is_some_and(|kib| kib > 0));
    }

    #[test]
    fn the_example_config_loads_with_the_overridden_interval() {
        let dir = ScratchDir::new("budgetd-cbench-test");
        let (config, settings) =
            load_config(dir.path(), "http://127.0.0.1:9", "postgres://u@h:1/x", 60).unwrap();
        assert_eq!(settings.collector.interval_seconds, 60);
        assert!(config.price_book_seed.is_some());
        assert_eq!(settings.collector.meters.len(), 5);
    }

    #[test]
    fn eval_times_are_formatted_like_the_collectors() {
        let t = Utc.with_ymd_and_hms(2026, 3, 2, 0, 5, 0).unwrap();
        let w = window_at(t, 300).unwrap();
        assert_eq!(
            prometheus_time(eval_time(&w)),
            format!("{}.999", t.timestamp() + 299)
        );
    }
}
