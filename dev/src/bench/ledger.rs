//! `budgetd-dev bench ledger`: measures the ledger write path and the finance query against a
//! scratch database of its own on a Postgres server.
//!
//! Write path: one window for `tenants` × `meters` entries goes through the real write path
//! (`Store::write_entries`, rollups included) and is compared with COPY of the same rows into
//! plain tables that look like `ledger_entries` (one with its indexes and check constraints,
//! one with neither). The baselines are measured in the same run, on the same server, so the
//! ratio is what matters on a shared, noisy machine. Re-writing the same window (all no-ops)
//! is timed as well.
//!
//! Storage: bytes per entry of the write-path rounds' partition, heap and indexes.
//!
//! Finance query: `finance_tenants` × `meters` × `finance_days` days of hourly entries are
//! loaded through the real write path, one hour per `write_entries` call, then the monthly and
//! daily finance views are queried and timed client-side, full fetch included.
//!
//! Loaded month: the write-path rounds again, into the month the finance load filled, against
//! the rounds on the empty month. Large window: `big_window_tenants` × `meters` entries in one
//! `write_entries` call.
//!
//! The report goes to stdout, progress to stderr. Targets are informative: the bench returns
//! `Ok` whether they are met or not.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use rust_decimal::Decimal;

use ledger::entry::{EntryKey, NewEntry, Pricing, UnitName, Window};
use ledger::price_book::MeterName;
use ledger::tenant::TenantId;
use ledger::Store;
use testkit::bench_sql::ledger::{entries_csv, DailyCost, MonthlyCost};
use testkit::bench_sql::{
    insert_numbered_tenants, numbered_tenant_ids, scratch_ledger, BenchConnection, NumberedTenants,
};
use testkit::db::in_scratch_database;

use super::{median, median_secs, priced, secs, spread, verdict, PricedMeter, GIB};

/// Sizes of the bench. `Default` is the acceptance configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerBenchOptions {
    /// Tenants of the write-path window.
    pub tenants: usize,
    /// Meters per tenant (at most 8).
    pub meters: usize,
    /// Tenants loaded with hourly entries for the finance query.
    pub finance_tenants: usize,
    /// Days of hourly entries loaded for the finance query, from 2026-06-01.
    pub finance_days: u32,
    /// Timed runs of the finance query, after one warm-up.
    pub finance_repeats: usize,
    /// Tenants of the one large window written at the end (× `meters` entries).
    pub big_window_tenants: usize,
}

impl Default for LedgerBenchOptions {
    fn default() -> Self {
        LedgerBenchOptions {
            tenants: 10_000,
            meters: 8,
            finance_tenants: 1_000,
            finance_days: 28,
            finance_repeats: 21,
            big_window_tenants: 100_000,
        }
    }
}

/// Write-path rounds; each writes a new window, so medians are over this many samples.
const WRITE_ROUNDS: usize = 5;
const WRITE_TARGET_RATIO: f64 = 2.0;
const BYTES_TARGET: f64 = 120.0;
/// Write rate with the month's partition loaded vs empty.
const LOADED_TARGET_RATIO: f64 = 0.9;
const BIG_WINDOW_TARGET_SECS: f64 = 30.0;
const REWRITE_TARGET_RATIO: f64 = 1.0;
const FINANCE_TARGET_MS: f64 = 50.0;
/// Timed runs of the (context-only, much larger) daily finance query.
const DAILY_REPEATS_MAX: usize = 7;
const SOURCE: &str = "bench";

/// `admin_url`: a superuser URL of a Postgres server (database part is replaced). Creates its
/// own scratch database, migrates it (`ledger::Store::migrate`), runs, prints a report to
/// stdout, drops the database.
pub async fn run_ledger_bench(admin_url: &str, opts: &LedgerBenchOptions) -> anyhow::Result<()> {
    validate(opts)?;
    let opts = opts.clone();
    in_scratch_database(admin_url, "budgetd_bench", move |url| async move {
        bench(&url, &opts).await
    })
    .await
}

fn validate(opts: &LedgerBenchOptions) -> anyhow::Result<()> {
    if opts.meters == 0 || opts.meters > METERS.len() {
        bail!("meters must be between 1 and {}", METERS.len());
    }
    if opts.tenants == 0
        || opts.finance_tenants == 0
        || opts.finance_days == 0
        || opts.big_window_tenants == 0
    {
        bail!("tenants, finance_tenants, finance_days and big_window_tenants must be positive");
    }
    if opts.finance_days > 29 {
        bail!(
            "finance_days must be at most 29: the loaded write rounds go on the day after, in June"
        );
    }
    if opts.finance_repeats == 0 {
        bail!("finance_repeats must be positive");
    }
    Ok(())
}

// Meters ---------------------------------------------------------------------------------------

/// How a meter's quantity is generated.
#[derive(Debug, Clone, Copy)]
enum Usage {
    /// Cores × seconds, to 3 decimals.
    CpuCoreSeconds,
    /// Resident bytes × seconds.
    MemoryByteSeconds,
    /// Provisioned volume bytes × seconds.
    StorageByteSeconds,
    /// Bytes sent.
    EgressBytes,
    /// GPUs × seconds, to 3 decimals; most tenants have none.
    GpuSeconds,
    /// Load balancers × seconds.
    LbSeconds,
    /// Public IP addresses × seconds.
    IpSeconds,
    /// Stored object bytes × seconds.
    ObjectByteSeconds,
}

/// The bench's meters, in the order `--meters` takes them, and how each one's usage is
/// generated.
const METERS: [(&str, Usage); 8] = [
    ("cpu", Usage::CpuCoreSeconds),
    ("memory", Usage::MemoryByteSeconds),
    ("storage", Usage::StorageByteSeconds),
    ("network_egress", Usage::EgressBytes),
    ("gpu", Usage::GpuSeconds),
    ("lb_hours", Usage::LbSeconds),
    ("ip_addresses", Usage::IpSeconds),
    ("object_storage", Usage::ObjectByteSeconds),
];

/// A meter with its parsed names and its pricing by the bench's price-book version.
struct Meter {
    index: u64,
    name: MeterName,
    unit: UnitName,
    pricing: Pricing,
    usage: Usage,
}

/// A bench tenant with its fixed "size" (a log-uniform factor in [0.01, 10]) and traits.
struct Tenant {
    index: u64,
    id: TenantId,
    size: f64,
    gpus: f64,
    load_balancers: i64,
    ip_addresses: i64,
}

fn tenants(ids: &[String]) -> anyhow::Result<Vec<Tenant>> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let index = i as u64 + 1;
            let h = mix(index);
            let gpus = if h % 5 == 0 {
                1.0 + (h >> 8) as f64 % 8.0
            } else {
                0.0
            };
            Ok(Tenant {
                index,
                id: TenantId::parse(id)?,
                size: 10f64.powf(3.0 * unit_interval(mix(h)) - 2.0),
                gpus,
                load_balancers: 1 + ((h >> 16) % 4) as i64,
                ip_addresses: 1 + ((h >> 24) % 16) as i64,
            })
        })
        .collect()
}

/// splitmix64: a deterministic, well-mixed hash of one integer.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) from a hash.
fn unit_interval(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn whole(value: f64) -> Decimal {
    Decimal::from(value.round() as i64)
}

fn thousandths(value: f64) -> Decimal {
    Decimal::new((value * 1000.0).round() as i64, 3)
}

/// A realistic quantity of `meter` used by `tenant` in a window of `seconds` starting at
/// `start` (the same inputs always give the same quantity).
fn quantity(tenant: &Tenant, meter: &Meter, start: i64, seconds: i64) -> Decimal {
    let h = mix(tenant.index ^ mix(meter.index ^ mix(start as u64)));
    // Usage varies by ±30% from window to window.
    let jitter = 0.7 + 0.6 * unit_interval(h);
    let secs = seconds as f64;
    let gib = GIB as f64;
    let size = tenant.size;
    match meter.usage {
        Usage::CpuCoreSeconds => thousandths((0.25 + 16.0 * size * jitter) * secs),
        Usage::MemoryByteSeconds => whole((0.5 + 48.0 * size * jitter) * gib * secs),
        Usage::StorageByteSeconds => whole((10.0 + 400.0 * size) * gib * secs),
        Usage::EgressBytes => whole(2.0 * size * jitter * gib * secs / 3_600.0),
        Usage::GpuSeconds => thousandths(tenant.gpus * jitter.min(1.0) * secs),
        Usage::LbSeconds => Decimal::from(tenant.load_balancers * seconds),
        Usage::IpSeconds => Decimal::from(tenant.ip_addresses * seconds),
        Usage::ObjectByteSeconds => whole((1.0 + 2_000.0 * size) * gib * secs),
    }
}

fn build_entries(
    tenants: &[Tenant],
    meters: &[Meter],
    window: Window,
) -> anyhow::Result<Vec<NewEntry>> {
    let start = window.start().timestamp();
    let seconds = window.end().timestamp() - start;
    let mut entries = Vec::with_capacity(tenants.len() * meters.len());
    for tenant in tenants {
        for meter in meters {
            let key = EntryKey {
                tenant: tenant.id.clone(),
                meter: meter.name.clone(),
                window,
            };
            let q = quantity(tenant, meter, start, seconds);
            entries.push(NewEntry::new(
                key,
                q,
                meter.unit.clone(),
                meter.pricing.clone(),
            )?);
        }
    }
    Ok(entries)
}

fn hour_window(start: DateTime<Utc>) -> anyhow::Result<Window> {
    Ok(Window::new(start, start + chrono::Duration::hours(1))?)
}

fn utc(y: i32, m: u32, d: u32) -> anyhow::Result<DateTime<Utc>> {
    Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
        .single()
        .context("invalid date")
}

// The bench --------------------------------------------------------------------------------------

async fn bench(url: &str, opts: &LedgerBenchOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    // One write_entries call of the write-path round is a single transaction.
    let (store, mut conn) = scratch_ledger(url, Duration::from_secs(900)).await?;
    let result = async {
        println!("budgetd-dev bench ledger");
        print_server(&mut conn).await?;

        let all_ids = numbered_tenant_ids(
            opts.tenants
                .max(opts.finance_tenants)
                .max(opts.big_window_tenants),
        );
        let t = Instant::now();
        insert_numbered_tenants(
            &mut conn,
            NumberedTenants {
                count: all_ids.len(),
                suspended_every: None,
                created_at: None,
            },
        )
        .await?;
        let meters = add_price_book(&store, opts.meters).await?;
        eprintln!(
            "bench: {} tenants and a price book in {:.1} s",
            all_ids.len(),
            t.elapsed().as_secs_f64()
        );

        let write_tenants = tenants(&all_ids[..opts.tenants])?;
        let empty = write_path(&store, &mut conn, &write_tenants, &meters).await?;
        storage(&mut conn).await?;

        let finance_tenants = tenants(&all_ids[..opts.finance_tenants])?;
        finance(&store, &mut conn, &finance_tenants, &meters, opts).await?;
        loaded_writes(&store, &mut conn, &write_tenants, &meters, opts, &empty).await?;

        let big_tenants = tenants(&all_ids[..opts.big_window_tenants])?;
        big_window(&store, &big_tenants, &meters).await?;
        println!("total bench time {:.1} s", started.elapsed().as_secs_f64());
        anyhow::Ok(())
    }
    .await;
    conn.close().await;
    store.pool().close().await;
    result
}

async fn print_server(conn: &mut BenchConnection) -> anyhow::Result<()> {
    let settings = conn
        .settings(&[
            "server_version",
            "shared_buffers",
            "fsync",
            "synchronous_commit",
            "max_wal_size",
        ])
        .await?;
    println!(
        "server: PostgreSQL {}, shared_buffers {}, fsync {}, synchronous_commit {}, max_wal_size {}",
        settings[0], settings[1], settings[2], settings[3], settings[4]
    );
    Ok(())
}

async fn add_price_book(store: &Store, meters: usize) -> anyhow::Result<Vec<Meter>> {
    let specs = METERS[..meters]
        .iter()
        .map(|&(meter, usage)| Ok((priced(meter)?, usage)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let priced_meters: Vec<&PricedMeter> = specs.iter().map(|&(spec, _)| spec).collect();
    let version = super::add_price_book(store, utc(2026, 1, 1)?, &priced_meters, "bench").await?;
    specs
        .iter()
        .enumerate()
        .map(|(i, &(spec, usage))| {
            let name = MeterName::parse("meter", spec.meter)?;
            let pricing = version
                .pricing(
                    &name,
                    UnitName::parse("price_unit", spec.price_unit)?,
                    Decimal::from(spec.units_per_price_unit),
                )
                .context("the price book lacks a bench meter")?;
            Ok(Meter {
                index: i as u64,
                name,
                unit: UnitName::parse("unit", spec.unit)?,
                pricing,
                usage,
            })
        })
        .collect()
}

// Write path ---------------------------------------------------------------------------------------

const COPY_INDEXED: &str = "bench_copy_indexed";
const COPY_PLAIN: &str = "bench_copy_plain";

/// The write path against COPY on an empty month; returns the first writes' times.
async fn write_path(
    store: &Store,
    conn: &mut BenchConnection,
    tenants: &[Tenant],
    meters: &[Meter],
) -> anyhow::Result<Vec<Duration>> {
    let n = tenants.len() * meters.len();
    let base = utc(2026, 5, 1)?;
    conn.create_table_like_entries(COPY_INDEXED, true).await?;
    conn.create_table_like_entries(COPY_PLAIN, false).await?;
    conn.create_ledger_partition(base.date_naive()).await?;
    let partition = BenchConnection::ledger_partition(base.date_naive());
    let written = written_tables(&partition);
    conn.set_autovacuum(&written, false).await?;
    println!(
        "write path: {n} entries ({} tenants x {} meters), one window, rollups included",
        tenants.len(),
        meters.len()
    );
    println!(
        "  {WRITE_ROUNDS} rounds, each a new 1-hour window of the same day (the first creates the \
         daily rollup rows, the others update them): write_entries, COPY (indexes), \
         COPY (no indexes), rewrite; median times, median of the per-round ratios"
    );
    println!(
        "  COPY (indexes): like ledger_entries including all (its indexes and checks; no FKs, no \
         triggers); COPY (no indexes): no indexes, no checks"
    );
    println!(
        "  autovacuum off on these tables, VACUUM ANALYZE before each round, CHECKPOINT before \
         each timed step; COPY times exclude formatting the CSV"
    );

    let mut first = Vec::new();
    let mut copy_indexed = Vec::new();
    let mut copy_plain = Vec::new();
    let mut rewrite = Vec::new();
    for round in 0..WRITE_ROUNDS {
        let window = hour_window(base + chrono::Duration::hours(round as i64))?;
        let entries = build_entries(tenants, meters, window)?;
        conn.vacuum_analyze(&[]).await?;

        conn.checkpoint().await?;
        let t = Instant::now();
        let report = store.write_entries(&entries, SOURCE).await?;
        first.push(t.elapsed());
        if report.inserted != n || report.unchanged != 0 || !report.conflicts.is_empty() {
            bail!("the first write of round {round} was not all inserts: {report:?}");
        }
        // The same rows as the write inserted, keyed as it keyed them.
        let keys = conn.entry_keys().await?;
        let csv = entries_csv(&entries, SOURCE, &keys)?;

        for (table, times) in [
            (COPY_INDEXED, &mut copy_indexed),
            (COPY_PLAIN, &mut copy_plain),
        ] {
            conn.checkpoint().await?;
            let t = Instant::now();
            let copied = conn.copy_entries(table, &csv).await?;
            times.push(t.elapsed());
            if copied != n as u64 {
                bail!("COPY into {table} stored {copied} rows, expected {n}");
            }
        }

        conn.checkpoint().await?;
        let t = Instant::now();
        let report = store.write_entries(&entries, SOURCE).await?;
        rewrite.push(t.elapsed());
        if report.unchanged != n || report.inserted != 0 || !report.conflicts.is_empty() {
            bail!("the rewrite of round {round} was not all no-ops: {report:?}");
        }
        eprintln!(
            "bench: write-path round {}/{WRITE_ROUNDS}: write {:.3} s, COPY indexes {:.3} s, \
             COPY no indexes {:.3} s, rewrite {:.3} s",
            round + 1,
            secs(first[round]),
            secs(copy_indexed[round]),
            secs(copy_plain[round]),
            secs(rewrite[round]),
        );
    }

    // Ratios are taken per round, between steps run seconds apart, then the median: the
    // machine's load drifts less within a round than across rounds.
    let per_round = |a: &[Duration], b: &[Duration]| -> Vec<f64> {
        a.iter().zip(b).map(|(a, b)| secs(*a) / secs(*b)).collect()
    };
    let write_vs_indexed = per_round(&first, &copy_indexed);
    let write_vs_plain = per_round(&first, &copy_plain);
    let rewrite_vs_first = per_round(&rewrite, &first);
    let rate = |d: f64| n as f64 / d;
    for (label, times) in [
        ("write_entries (first write)", &first),
        ("COPY into like-table (indexes, checks)", &copy_indexed),
        ("COPY into like-table (no indexes)", &copy_plain),
    ] {
        let t = median_secs(times);
        println!("  {label:<40}{t:>8.3} s {:>9.0} entries/s", rate(t));
    }
    let ratio = median(&write_vs_indexed);
    println!(
        "  {:<40}{:>8.2}   target <= {WRITE_TARGET_RATIO:.1}  {}   (headline: the same indexes and \
         checks as ledger_entries; rounds {})",
        "ratio write/COPY(indexes)",
        ratio,
        verdict(ratio <= WRITE_TARGET_RATIO),
        spread(&write_vs_indexed),
    );
    println!(
        "  {:<40}{:>8.2}   (context only; rounds {})",
        "ratio write/COPY(no indexes)",
        median(&write_vs_plain),
        spread(&write_vs_plain),
    );
    let rewrite_ratio = median(&rewrite_vs_first);
    println!(
        "  {:<40}{:>8.3} s   ratio rewrite/first {:.2}  target <= {REWRITE_TARGET_RATIO:.1}  {}   \
         (rounds {})",
        "rewrite (all no-ops)",
        median_secs(&rewrite),
        rewrite_ratio,
        verdict(rewrite_ratio <= REWRITE_TARGET_RATIO),
        spread(&rewrite_vs_first),
    );
    conn.drop_tables(&[COPY_INDEXED, COPY_PLAIN]).await?;
    conn.set_autovacuum(&written, true).await?;
    Ok(first)
}

/// Tables the write path writes into `partition` (and the COPY tables, while they exist).
/// Autovacuum is off on them during the rounds, which vacuum explicitly instead.
fn written_tables(partition: &str) -> [&str; 6] {
    [
        partition,
        "ledger_rollup_days",
        "ledger_rollup_monthly",
        "ledger_rollup_tenant_daily",
        COPY_INDEXED,
        COPY_PLAIN,
    ]
}

/// Bytes per entry of what the write path stored, indexes included.
async fn storage(conn: &mut BenchConnection) -> anyhow::Result<()> {
    conn.vacuum_analyze(&[]).await?;
    let (entries, heap, indexes) = conn.entry_storage().await?;
    let per = |bytes: i64| bytes as f64 / entries.max(1) as f64;
    let total = per(heap + indexes);
    println!(
        "storage: {entries} entries in ledger_entries' partitions: {total:.1} bytes per entry \
         (heap {:.1}, indexes {:.1})  target <= {BYTES_TARGET:.0}  {}",
        per(heap),
        per(indexes),
        verdict(total <= BYTES_TARGET),
    );
    Ok(())
}

/// The same write-path rounds as on the empty month, now into the month the finance load
/// filled (its partition holds every loaded entry): partitioning and the window-first key
/// keep the rate flat.
async fn loaded_writes(
    store: &Store,
    conn: &mut BenchConnection,
    tenants: &[Tenant],
    meters: &[Meter],
    opts: &LedgerBenchOptions,
    empty: &[Duration],
) -> anyhow::Result<()> {
    let base = utc(2026, 6, 1)? + chrono::Duration::days(i64::from(opts.finance_days));
    let partition = BenchConnection::ledger_partition(base.date_naive());
    let written = written_tables(&partition);
    let (existing, _, _) = conn.entry_storage().await?;
    conn.set_autovacuum(&written, false).await?;
    let mut loaded = Vec::new();
    for round in 0..WRITE_ROUNDS {
        let window = hour_window(base + chrono::Duration::hours(round as i64))?;
        let entries = build_entries(tenants, meters, window)?;
        conn.vacuum_analyze(&[]).await?;
        conn.checkpoint().await?;
        let t = Instant::now();
        let report = store.write_entries(&entries, SOURCE).await?;
        loaded.push(t.elapsed());
        if report.inserted != entries.len() {
            bail!(
                "a loaded write round inserted {} of {}",
                report.inserted,
                entries.len()
            );
        }
    }
    conn.set_autovacuum(&written, true).await?;
    let ratio = median_secs(empty) / median_secs(&loaded);
    println!(
        "loaded month: the write-path window into {partition} holding {existing} entries: \
         {:.3} s vs {:.3} s empty; rate ratio loaded/empty {ratio:.2}  target >= \
         {LOADED_TARGET_RATIO:.1}  {}",
        median_secs(&loaded),
        median_secs(empty),
        verdict(ratio >= LOADED_TARGET_RATIO),
    );
    Ok(())
}

/// One window of `tenants` × meters entries in one `write_entries` call (one transaction).
async fn big_window(store: &Store, tenants: &[Tenant], meters: &[Meter]) -> anyhow::Result<()> {
    let window = hour_window(utc(2026, 7, 1)?)?;
    let entries = build_entries(tenants, meters, window)?;
    let t = Instant::now();
    let report = store.write_entries(&entries, SOURCE).await?;
    let took = t.elapsed().as_secs_f64();
    if report.inserted != entries.len() {
        bail!(
            "the large window inserted {} of {}",
            report.inserted,
            entries.len()
        );
    }
    println!(
        "large window: {} tenants x {} meters = {} entries committed in {took:.1} s \
         ({:.0} entries/s)  target <= {BIG_WINDOW_TARGET_SECS:.0} s  {}",
        tenants.len(),
        meters.len(),
        entries.len(),
        entries.len() as f64 / took,
        verdict(took <= BIG_WINDOW_TARGET_SECS),
    );
    Ok(())
}

// Finance query ------------------------------------------------------------------------------------

async fn finance(
    store: &Store,
    conn: &mut BenchConnection,
    tenants: &[Tenant],
    meters: &[Meter],
    opts: &LedgerBenchOptions,
) -> anyhow::Result<()> {
    let month = NaiveDate::from_ymd_opt(2026, 6, 1).context("invalid date")?;
    let next_month = NaiveDate::from_ymd_opt(2026, 7, 1).context("invalid date")?;
    let start = utc(2026, 6, 1)?;
    let hours = opts.finance_days as i64 * 24;
    let per_hour = tenants.len() * meters.len();
    let total = per_hour * hours as usize;

    let t = Instant::now();
    let mut writing = Duration::ZERO;
    let mut loaded = 0usize;
    let progress_every = (opts.finance_days / 10).max(1) as i64 * 24;
    // (entries, seconds) at the last progress line, and the rate of each interval since.
    let mut last = (0usize, 0.0f64);
    let mut interval_rates = Vec::new();
    for hour in 0..hours {
        let window = hour_window(start + chrono::Duration::hours(hour))?;
        let entries = build_entries(tenants, meters, window)?;
        let w = Instant::now();
        let report = store.write_entries(&entries, SOURCE).await?;
        writing += w.elapsed();
        if report.inserted != entries.len() {
            bail!(
                "loading hour {hour} inserted {} of {} entries",
                report.inserted,
                entries.len()
            );
        }
        loaded += entries.len();
        if (hour + 1) % progress_every == 0 || hour + 1 == hours {
            let elapsed = t.elapsed().as_secs_f64();
            let rate = (loaded - last.0) as f64 / (elapsed - last.1);
            interval_rates.push(rate);
            last = (loaded, elapsed);
            eprintln!(
                "bench: finance load: day {}/{}, {loaded} entries, {:.0} entries/s overall, \
                 {rate:.0} entries/s lately, {elapsed:.0} s elapsed",
                (hour + 1 + 23) / 24,
                opts.finance_days,
                loaded as f64 / elapsed,
            );
        }
    }
    let load = t.elapsed().as_secs_f64();
    println!(
        "finance query: {} tenants x {} meters x {} days hourly ({total} entries) loaded in {:.1} s \
         ({:.0} entries/s; write_entries alone {:.1} s, {:.0} entries/s; {} calls of {per_hour} entries)",
        tenants.len(),
        meters.len(),
        opts.finance_days,
        load,
        total as f64 / load,
        secs(writing),
        total as f64 / secs(writing),
        hours,
    );
    if let (Some(first), Some(last)) = (interval_rates.first(), interval_rates.last()) {
        println!(
            "  load rate {first:.0} entries/s over the first {days} day(s), {last:.0} entries/s \
             over the last (ledger_entries grows to {total} rows)",
            days = progress_every / 24,
        );
    }
    conn.vacuum_analyze(&["ledger_rollup_monthly", "ledger_rollup_days"])
        .await?;
    println!(
        "  (VACUUM ANALYZE of the rollup tables after the load; queries sent unnamed, so parsed \
         and planned every run, and timed client-side with the full fetch)"
    );

    // Monthly: the headline.
    // One warm-up run, whose result is checked: storage, load balancers and IP addresses are
    // never zero, so every tenant has a row.
    let rows: Vec<MonthlyCost> = conn.finance_monthly(month).await?;
    let expected = tenants.len();
    if rows.len() != expected {
        bail!(
            "the monthly view returned {} rows, expected {expected}",
            rows.len()
        );
    }
    let mut times = Vec::with_capacity(opts.finance_repeats);
    for _ in 0..opts.finance_repeats {
        let t = Instant::now();
        let rows: Vec<MonthlyCost> = conn.finance_monthly(month).await?;
        times.push(t.elapsed());
        std::hint::black_box(rows);
    }
    let monthly_ms = median_secs(&times) * 1000.0;
    println!(
        "  {:<58} median {:>7.1} ms over {} runs  target <= {FINANCE_TARGET_MS:.0} ms  {}   ({} rows)",
        "SELECT * FROM finance.tenant_costs_monthly (1 month):",
        monthly_ms,
        opts.finance_repeats,
        verdict(monthly_ms <= FINANCE_TARGET_MS),
        rows.len(),
    );

    // Daily: context.
    let rows: Vec<DailyCost> = conn.finance_daily(month, next_month).await?; // warm-up
    let repeats = opts.finance_repeats.min(DAILY_REPEATS_MAX);
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let rows: Vec<DailyCost> = conn.finance_daily(month, next_month).await?;
        times.push(t.elapsed());
        std::hint::black_box(rows);
    }
    println!(
        "  {:<58} median {:>7.1} ms over {repeats} runs  (context)   ({} rows)",
        "select * from finance.tenant_costs_daily (1 month of days):",
        median_secs(&times) * 1000.0,
        rows.len(),
    );
    Ok(())
}
