//! `budgetd-dev bench meter-queries`: the built-in meters' PromQL against the meters they
//! replaced (`testkit::BASELINE_METERS`: before issue 13), on a real Prometheus holding exact
//! synthetic data, in the same run.
//!
//! Accuracy: the trap cluster of the collector's accuracy test (6 tenants, one day, 15 s scrapes
//! with jitter, a scrape lost at an hour boundary, a tenant whose cpu usage crosses its requests
//! every quarter hour); each meter of each set as one range query over the day's 288
//! windows, summed per tenant and UTC day and compared with the model's exact usage: the worst
//! relative error per tenant and day, per meter.
//!
//! Cost: `tenants` tenants (default 10,000, no traps) scraped every `scrape_interval_s` (default
//! kube-prometheus-stack's 30 s); each meter's query of each set for single windows (as the
//! daemon sends them, one window after it settles) and for a batch of windows as one range
//! query (as a catch-up sends them). The two sets alternate query by query, `rounds` times
//! after a warm-up round; medians. Prometheus' time: the request to the last byte of the body
//! over loopback, the body only read.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, TimeZone, Utc};
use serde::Deserialize;

use collector::config::{default_meters, MeterSection};
use collector::promql::{LabelName, QueryTemplate, TemplateContext};
use testkit::prometheus::{create_blocks, PrometheusProcess, ScratchDir};
use testkit::synthetic::{Cluster, ClusterSpec, Meter as ModelMeter};

use super::{median_secs, verdict};

const WINDOW_S: i64 = 300;
const SEED: u64 = 42;
/// Issue 13: the meters' queries at least 2× cheaper.
const TARGET_RATIO: f64 = 2.0;
/// Issue 13: at most 0.1% per tenant, meter and day.
const TARGET_ERROR: f64 = 0.001;
/// Windows of the cost fixture: one before the first measured (the previous window the
/// baseline's counters read), the measured single windows, and one after them (the edge the
/// current counters interpolate from).
const COST_WINDOWS: i64 = 8;
/// The single windows measured, by index in the cost fixture.
const SINGLE_WINDOWS: [i64; 3] = [2, 3, 4];
/// The batch measured: windows 1..=6 as one range query.
const BATCH: (i64, i64) = (1, 6);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterQueriesBenchOptions {
    pub tenants: usize,
    pub scrape_interval_s: i64,
    pub rounds: usize,
}

impl Default for MeterQueriesBenchOptions {
    fn default() -> Self {
        MeterQueriesBenchOptions {
            tenants: 10_000,
            scrape_interval_s: 30,
            rounds: 5,
        }
    }
}

/// One set of meters rendered for one scrape interval: (name, query).
struct QuerySet {
    label: &'static str,
    queries: Vec<(String, String)>,
}

fn render(
    label: &'static str,
    meters: &[MeterSection],
    interval_s: i64,
) -> anyhow::Result<QuerySet> {
    let ctx = TemplateContext {
        window: format!("{}ms", WINDOW_S * 1000 - 1),
        window_seconds: WINDOW_S,
        full_window_samples: WINDOW_S / interval_s - 1,
        interval_seconds: interval_s,
        tenant_label: LabelName::parse("tenant_label", "label_tenant")?,
        selector: String::new(),
    };
    let queries = meters
        .iter()
        .map(|m| {
            let template = QueryTemplate::parse(&m.name, &m.query)?;
            Ok((m.name.clone(), template.render(&ctx)))
        })
        .collect::<Result<_, collector::Error>>()?;
    Ok(QuerySet { label, queries })
}

fn sets(interval_s: i64) -> anyhow::Result<[QuerySet; 2]> {
    #[derive(Deserialize)]
    struct File {
        meters: Vec<MeterSection>,
    }
    let baseline: File =
        toml::from_str(testkit::BASELINE_METERS).context("testkit/src/meters_baseline.toml")?;
    Ok([
        render("baseline", &baseline.meters, interval_s)?,
        render("current", &default_meters(), interval_s)?,
    ])
}

pub async fn run_meter_queries_bench(opts: &MeterQueriesBenchOptions) -> anyhow::Result<()> {
    if opts.tenants == 0 || opts.rounds == 0 {
        bail!("tenants and rounds must be positive");
    }
    if opts.scrape_interval_s <= 0 || WINDOW_S % opts.scrape_interval_s != 0 {
        bail!("scrape_interval_s must divide the {WINDOW_S} s window");
    }
    println!("budgetd-dev bench meter-queries");
    println!(
        "the built-in meters (collector/meters.toml) against the meters before issue 13 \
         (testkit/src/meters_baseline.toml), on a real Prometheus with synthetic data"
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()?;
    accuracy(&client).await?;
    cost(&client, opts).await?;
    Ok(())
}

/// Loads `cluster`'s samples into a Prometheus of its own.
async fn serve(cluster: Cluster) -> anyhow::Result<(ScratchDir, PrometheusProcess, Cluster)> {
    tokio::task::spawn_blocking(move || {
        let dir = ScratchDir::new("budgetd-mqbench");
        let data = create_blocks(dir.path(), |out| {
            cluster
                .write_openmetrics(&mut &mut *out)
                .expect("write OpenMetrics")
        });
        let prometheus = PrometheusProcess::start(dir.path(), &data);
        (dir, prometheus, cluster)
    })
    .await
    .context("loading the fixture")
}

#[derive(Deserialize)]
struct Response {
    status: String,
    data: Option<ResponseData>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct ResponseData {
    result: Vec<RangeSeries>,
}

#[derive(Deserialize)]
struct RangeSeries {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// Sends one range query; its time to the last body byte and the body.
async fn query_range(
    client: &reqwest::Client,
    url: &str,
    query: &str,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
) -> anyhow::Result<(Duration, Vec<u8>)> {
    let seconds = |t: DateTime<Utc>| format!("{:.3}", t.timestamp_millis() as f64 / 1000.0);
    let (start, end, step) = (seconds(first), seconds(last), format!("{WINDOW_S}s"));
    let started = Instant::now();
    let response = client
        .post(format!("{url}/api/v1/query_range"))
        .form(&[
            ("query", query),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", step.as_str()),
        ])
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!(
            "status {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(500)])
        );
    }
    Ok((took, body.to_vec()))
}

fn parse(body: &[u8]) -> anyhow::Result<Vec<RangeSeries>> {
    let r: Response = serde_json::from_slice(body).context("not a Prometheus answer")?;
    if r.status != "success" {
        bail!("{}", r.error.unwrap_or_default());
    }
    Ok(r.data.map(|d| d.result).unwrap_or_default())
}

fn eval_time(window_start: DateTime<Utc>) -> DateTime<Utc> {
    window_start + chrono::Duration::seconds(WINDOW_S) - chrono::Duration::milliseconds(1)
}

async fn accuracy(client: &reqwest::Client) -> anyhow::Result<()> {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
        .single()
        .context("date")?;
    let end = start + chrono::Duration::days(1);
    // As in tests/e2e/collector.rs: the default scrape interval (15 s) and jitter, with traps.
    let cluster = Cluster::generate(&ClusterSpec::new(6, SEED, start, end));
    let interval_s = cluster.spec().scrape_interval_s;
    println!();
    println!(
        "accuracy: {} tenants with every trap, one day of {WINDOW_S} s windows, {interval_s} s \
         scrapes with jitter; worst |ledger − truth| / truth per tenant and day (target ≤ {:.2}%)",
        cluster.tenant_ids().len(),
        TARGET_ERROR * 100.0
    );
    let (_dir, prometheus, cluster) = serve(cluster).await?;
    let truth = cluster.truth(WINDOW_S);
    let tenants: Vec<String> = cluster.tenant_ids().iter().map(|t| t.to_string()).collect();
    let (first, last) = (
        eval_time(start),
        eval_time(end - chrono::Duration::seconds(WINDOW_S)),
    );
    for set in sets(interval_s)? {
        let mut line = format!("  {:<9}", set.label);
        let mut worst_all = 0f64;
        for (name, query) in &set.queries {
            let meter = ModelMeter::parse(name).with_context(|| format!("meter {name}"))?;
            let (_, body) = query_range(client, &prometheus.url, query, first, last)
                .await
                .with_context(|| format!("{} {name}", set.label))?;
            let mut billed: BTreeMap<(String, chrono::NaiveDate), f64> = BTreeMap::new();
            for series in parse(&body)? {
                let Some(tenant) = series.metric.get("label_tenant") else {
                    continue;
                };
                for (t, v) in series.values {
                    let window_start =
                        DateTime::from_timestamp_millis((t * 1000.0).round() as i64 + 1)
                            .context("timestamp")?
                            - chrono::Duration::seconds(WINDOW_S);
                    *billed
                        .entry((tenant.clone(), window_start.date_naive()))
                        .or_default() += v.parse::<f64>().context("value")?;
                }
            }
            let mut worst = (0f64, String::new());
            for tenant in &tenants {
                for day in truth.days() {
                    let expected: f64 = truth
                        .quantity(tenant, meter, day)
                        .to_string()
                        .parse()
                        .context("truth")?;
                    if expected == 0.0 {
                        continue;
                    }
                    let actual = billed.get(&(tenant.clone(), day)).copied().unwrap_or(0.0);
                    let error = ((actual - expected) / expected).abs();
                    if error > worst.0 {
                        worst = (error, format!("{tenant} {day}"));
                    }
                }
            }
            worst_all = worst_all.max(worst.0);
            line.push_str(&format!("  {name} {:.4}%", worst.0 * 100.0));
        }
        println!(
            "{line}  → worst {:.4}% {}",
            worst_all * 100.0,
            verdict(worst_all <= TARGET_ERROR)
        );
    }
    Ok(())
}

async fn cost(client: &reqwest::Client, opts: &MeterQueriesBenchOptions) -> anyhow::Result<()> {
    let start = Utc
        .with_ymd_and_hms(2026, 3, 2, 0, 0, 0)
        .single()
        .context("date")?;
    let end = start + chrono::Duration::seconds(WINDOW_S * COST_WINDOWS);
    let spec = ClusterSpec::new(opts.tenants, SEED, start, end)
        .with_traps(false)
        .with_scrape_interval_s(opts.scrape_interval_s);
    println!();
    println!(
        "cost: {} tenants, {} minutes of {} s scrapes; per meter, the median of {} rounds \
         (after a warm-up) of Prometheus' time to answer",
        opts.tenants,
        (end - start).num_minutes(),
        opts.scrape_interval_s,
        opts.rounds
    );
    let t = Instant::now();
    let (_dir, prometheus, cluster) = serve(Cluster::generate(&spec)).await?;
    println!(
        "  fixture: {} series, loaded and served in {:.1} s (not part of the figures)",
        cluster.series_count(),
        t.elapsed().as_secs_f64()
    );
    let [baseline, current] = sets(opts.scrape_interval_s)?;
    let window = |k: i64| start + chrono::Duration::seconds(WINDOW_S * k);
    // (what, first window, last window)
    let mut shapes: Vec<(String, i64, i64)> = SINGLE_WINDOWS
        .iter()
        .map(|&k| (format!("window {k}"), k, k))
        .collect();
    shapes.push((
        format!("windows {}..={} as one range query", BATCH.0, BATCH.1),
        BATCH.0,
        BATCH.1,
    ));
    // times[set][meter][shape] over rounds
    let meters = baseline.queries.len();
    let mut times = vec![vec![vec![Vec::new(); shapes.len()]; meters]; 2];
    for round in 0..=opts.rounds {
        for (s, (_, a, b)) in shapes.iter().enumerate() {
            for (m, _) in baseline.queries.iter().enumerate() {
                let order: [usize; 2] = if (round + m) % 2 == 0 { [0, 1] } else { [1, 0] };
                for i in order {
                    let set = if i == 0 { &baseline } else { &current };
                    let (name, query) = &set.queries[m];
                    let (took, body) = query_range(
                        client,
                        &prometheus.url,
                        query,
                        eval_time(window(*a)),
                        eval_time(window(*b)),
                    )
                    .await
                    .with_context(|| format!("{} {name}", set.label))?;
                    if round == 0 && parse(&body)?.is_empty() {
                        bail!("{} {name}: no series", set.label);
                    }
                    if round > 0 {
                        times[i][m][s].push(took);
                    }
                }
            }
        }
        eprintln!(
            "bench: meter queries: round {round} of {} done",
            opts.rounds
        );
    }
    for (s, (what, _, _)) in shapes.iter().enumerate() {
        println!("  {what}:");
        let mut totals = [0f64; 2];
        let mut cpu_memory = [0f64; 2];
        for (m, (name, _)) in baseline.queries.iter().enumerate() {
            let b = median_secs(&times[0][m][s]);
            let c = median_secs(&times[1][m][s]);
            totals[0] += b;
            totals[1] += c;
            if name == "cpu" || name == "memory" {
                cpu_memory[0] += b;
                cpu_memory[1] += c;
            }
            println!(
                "    {name:<15} baseline {b:>7.3} s  current {c:>7.3} s  ratio {:>5.2}",
                b / c
            );
        }
        println!(
            "    cpu + memory    baseline {:>7.3} s  current {:>7.3} s  ratio {:>5.2} (target ≥ {TARGET_RATIO}) {}",
            cpu_memory[0],
            cpu_memory[1],
            cpu_memory[0] / cpu_memory[1],
            verdict(cpu_memory[0] / cpu_memory[1] >= TARGET_RATIO)
        );
        println!(
            "    all meters      baseline {:>7.3} s  current {:>7.3} s  ratio {:>5.2} (target ≥ {TARGET_RATIO}) {}",
            totals[0],
            totals[1],
            totals[0] / totals[1],
            verdict(totals[0] / totals[1] >= TARGET_RATIO)
        );
    }
    Ok(())
}
