//! A synthetic Kubernetes cluster: the ground truth that the collector's tests, the benchmark
//! and the demo exporter are measured against.
//!
//! [`Cluster::generate`] builds a deterministic model from a [`ClusterSpec`] (seed, number of
//! tenants, time range). The model is made of constant or hourly piecewise-constant rates, so
//! it can
//!
//! * emit the metric series a stock kube-prometheus-stack would scrape (cAdvisor and
//!   kube-state-metrics, same names and labels), either as OpenMetrics text with timestamps for
//!   `promtool tsdb create-blocks-from openmetrics` ([`Cluster::write_openmetrics`]) or as a live
//!   Prometheus text exposition at one instant ([`Cluster::render_exposition`]);
//! * compute, analytically and exactly, what each tenant must be billed for each meter and UTC
//!   day ([`Cluster::truth`]), independently of how the samples fall.
//!
//! With `traps` the model contains what real clusters have and a naive collector falls into: a
//! tenant with two namespaces, a namespace without tenant label and one labelled with an
//! unknown tenant (both unallocated), a container restart (counter reset), a pod replaced
//! mid-window, one scrape missing entirely (at an hour boundary, where rates step), jittered
//! scrape timestamps, a namespace whose containers' cpu usage steps every quarter hour (hour
//! boundaries among them) from well below the request to well above it and back (it crosses the
//! request from one window to the next),
//! and cAdvisor's pod-level (`container=""`) and pause-container (`container="POD"`) series, with
//! pod network exported on both of them.
//!
//! Billing rule (per container and window `W`, windows `[k·W, (k+1)·W)` aligned to the epoch;
//! time a container did not exist counts as zero): cpu = max(∫requested cores, ∫used cores) in
//! core-seconds; memory = max(∫requested bytes, ∫working-set bytes) in byte-seconds; gpu =
//! ∫requested GPUs in GPU-seconds; per PVC, storage = ∫requested bytes in byte-seconds; per pod,
//! network_egress = bytes transmitted. The pause container is not billed. A window is attributed
//! to the UTC day of its start.
//!
//! A caller can add namespaces of its own ([`ClusterSpec::with_namespace`]): one that appears at
//! a given instant with the labels its Namespace object has (e.g. as a tenant's blueprint created
//! it), exported on `kube_namespace_labels` as kube-state-metrics does, and whose workload starts
//! later. The rest of the model does not change when one is added.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io::{self, BufWriter, Write};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;

/// Default scrape interval (seconds).
pub const DEFAULT_SCRAPE_INTERVAL_S: i64 = 15;
/// Default scrape timestamp jitter (± seconds), applied only with `traps`.
pub const DEFAULT_JITTER_S: i64 = 2;

/// The name of the namespace without a tenant label (with `traps`).
pub const UNLABELLED_NAMESPACE: &str = "ops-shared";
/// The namespace labelled with a tenant that is not one of the model's (with `traps`).
pub const GHOST_NAMESPACE: &str = "ghost-apps";
/// The `label_tenant` value of [`GHOST_NAMESPACE`].
pub const GHOST_TENANT: &str = "ghost";

/// `job` label of the cAdvisor (kubelet) series.
pub const KUBELET_JOB: &str = "kubelet";
/// `job` label of the kube-state-metrics series.
pub const KSM_JOB: &str = "kube-state-metrics";
/// `instance` label of the kube-state-metrics series.
pub const KSM_INSTANCE: &str = "kube-state-metrics:8080";
/// Number of nodes (kubelets) in the model; each has its own `up{job="kubelet"}` series.
pub const NODES: usize = 3;
/// The namespace label that names a namespace's tenant (exported as `label_tenant`).
pub const TENANT_LABEL_KEY: &str = "tenant";

const HOUR_MS: i64 = 3_600_000;
/// How long the crossing namespace's cpu usage stays above, then below, its request (with
/// `traps`): a quarter hour, so it steps at four window edges an hour, hour boundaries among
/// them.
pub const CROSSING_SPAN_MS: i64 = 15 * 60_000;
const MIB: i64 = 1 << 20;
const GIB: i64 = 1 << 30;

// ---------------------------------------------------------------------------------------------
// Spec
// ---------------------------------------------------------------------------------------------

/// What to generate. Times are truncated to whole milliseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Number of tenants: `tenant-000`, `tenant-001`, ...
    pub tenants: usize,
    pub seed: u64,
    /// Nominal scrape interval in seconds (default 15).
    pub scrape_interval_s: i64,
    /// Scrape timestamps are jittered by up to ± this many seconds (default 2), with `traps`
    /// only. Clamped to just under half the scrape interval so each series' timestamps stay
    /// strictly increasing.
    pub jitter_s: i64,
    /// The model's world starts here: every container, PVC and namespace exists from `start`
    /// (or later) and nothing exists before it.
    pub start: DateTime<Utc>,
    /// ... and ends here (exclusive).
    pub end: DateTime<Utc>,
    pub traps: bool,
    /// With `traps`: the namespace labelled with a tenant that is not one of the model's, and
    /// that tenant (default [`GHOST_NAMESPACE`], [`GHOST_TENANT`]).
    pub unknown_tenant: (String, String),
    /// The caller's namespaces, after the generated ones (none by default).
    pub added_namespaces: Vec<AddedNamespace>,
}

/// A namespace the caller adds to the model, e.g. one a tenant's blueprint created, with the
/// labels its Namespace object has. Its usage belongs to the tenant its `tenant` label names
/// (whether or not that is one of the generated tenants, which [`Cluster::tenant_ids`] lists
/// alone), or is unallocated without that label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedNamespace {
    pub name: String,
    /// The Namespace object's labels, exported on `kube_namespace_labels` as kube-state-metrics
    /// does with `--metric-labels-allowlist=namespaces=[*]` ([`kube_state_metrics_labels`]).
    pub labels: BTreeMap<String, String>,
    /// The namespace exists from here (its `kube_namespace_labels` series starts).
    pub created: DateTime<Utc>,
    /// Its workload (pods and PVCs, generated from its name like a tenant namespace's) starts
    /// here, not before `created`.
    pub workload_from: DateTime<Utc>,
}

impl ClusterSpec {
    /// A spec with the default scrape interval and jitter, and `traps` on.
    pub fn new(tenants: usize, seed: u64, start: DateTime<Utc>, end: DateTime<Utc>) -> Self {
        ClusterSpec {
            tenants,
            seed,
            scrape_interval_s: DEFAULT_SCRAPE_INTERVAL_S,
            jitter_s: DEFAULT_JITTER_S,
            start,
            end,
            traps: true,
            unknown_tenant: (GHOST_NAMESPACE.to_owned(), GHOST_TENANT.to_owned()),
            added_namespaces: Vec::new(),
        }
    }

    /// Adds the caller's namespace `namespace` (see [`AddedNamespace`]).
    pub fn with_namespace(mut self, namespace: AddedNamespace) -> Self {
        self.added_namespaces.push(namespace);
        self
    }

    /// Labels the unknown tenant's namespace `namespace` with `tenant` (the demo uses the
    /// tenant a new user creates first, so its usage turns from unallocated into its costs).
    pub fn with_unknown_tenant(mut self, namespace: &str, tenant: &str) -> Self {
        self.unknown_tenant = (namespace.to_owned(), tenant.to_owned());
        self
    }

    pub fn with_traps(mut self, traps: bool) -> Self {
        self.traps = traps;
        self
    }

    pub fn with_scrape_interval_s(mut self, seconds: i64) -> Self {
        self.scrape_interval_s = seconds;
        self
    }

    pub fn with_jitter_s(mut self, seconds: i64) -> Self {
        self.jitter_s = seconds;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Meters, owners, truth
// ---------------------------------------------------------------------------------------------

/// The default meters of the cost model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Meter {
    Cpu,
    Memory,
    Storage,
    NetworkEgress,
    Gpu,
}

impl Meter {
    pub const ALL: [Meter; 5] = [
        Meter::Cpu,
        Meter::Memory,
        Meter::Storage,
        Meter::NetworkEgress,
        Meter::Gpu,
    ];

    /// The meter name as in the price book (`cpu`, `memory`, `storage`, `network_egress`,
    /// `gpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            Meter::Cpu => "cpu",
            Meter::Memory => "memory",
            Meter::Storage => "storage",
            Meter::NetworkEgress => "network_egress",
            Meter::Gpu => "gpu",
        }
    }

    /// The unit of the truth quantities of this meter.
    pub fn quantity_unit(self) -> &'static str {
        match self {
            Meter::Cpu => "core_seconds",
            Meter::Memory | Meter::Storage => "byte_seconds",
            Meter::NetworkEgress => "bytes",
            Meter::Gpu => "gpu_seconds",
        }
    }

    pub fn parse(name: &str) -> Option<Meter> {
        Meter::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// Decimal places of the internal integer accumulators (cpu: millicore·ms = 1e-6
    /// core-seconds; the others: unit·ms = 1e-3 unit-seconds, or milli-bytes for network).
    fn scale(self) -> u32 {
        match self {
            Meter::Cpu => 6,
            _ => 3,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Meter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Meter {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Meter::parse(s).ok_or_else(|| format!("unknown meter {s:?}"))
    }
}

/// Who a namespace's usage belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// One of the model's tenants.
    Tenant(String),
    /// Not billed to anyone: the namespace has no `label_tenant`, or names a tenant the model
    /// does not have.
    Unallocated {
        namespace: String,
        label_tenant: Option<String>,
    },
}

impl Owner {
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Owner::Tenant(t) => Some(t),
            Owner::Unallocated { .. } => None,
        }
    }
}

/// One row of the ground truth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TruthRow<'a> {
    pub owner: &'a Owner,
    pub meter: Meter,
    /// UTC day of the start of the windows summed into this row.
    pub day: NaiveDate,
    /// In [`Meter::quantity_unit`] units, exact.
    pub quantity: Decimal,
}

/// Exact billed quantities per (owner, meter, UTC day) for one window size. Only non-zero rows
/// are stored; lookups of absent rows give zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Truth {
    window_s: i64,
    rows: BTreeMap<(Owner, Meter, NaiveDate), Decimal>,
}

impl Truth {
    pub fn window_s(&self) -> i64 {
        self.window_s
    }

    /// The billed quantity of `tenant` for `meter` on `day` (zero if none).
    pub fn quantity(&self, tenant: &str, meter: Meter, day: NaiveDate) -> Decimal {
        self.rows
            .get(&(Owner::Tenant(tenant.to_owned()), meter, day))
            .copied()
            .unwrap_or(Decimal::ZERO)
    }

    /// Unallocated quantity on `day` of the namespaces whose name or `label_tenant` value is
    /// `key` (e.g. `"ops-shared"` or `"ghost"`, or `"ghost-apps"`).
    pub fn unallocated(&self, key: &str, meter: Meter, day: NaiveDate) -> Decimal {
        self.rows
            .iter()
            .filter(|((owner, m, d), _)| {
                *m == meter
                    && *d == day
                    && matches!(owner, Owner::Unallocated { namespace, label_tenant }
                        if namespace == key || label_tenant.as_deref() == Some(key))
            })
            .map(|(_, q)| *q)
            .sum()
    }

    /// A tenant's quantity of `meter` over all days.
    pub fn tenant_total(&self, tenant: &str, meter: Meter) -> Decimal {
        self.rows
            .iter()
            .filter(|((o, m, _), _)| *m == meter && o.tenant() == Some(tenant))
            .map(|(_, q)| *q)
            .sum()
    }

    /// The days that have at least one row, ascending.
    pub fn days(&self) -> Vec<NaiveDate> {
        let mut days: Vec<NaiveDate> = self.rows.keys().map(|(_, _, d)| *d).collect();
        days.sort();
        days.dedup();
        days
    }

    /// All non-zero rows, ordered by owner (tenants first, by id), meter, day.
    pub fn rows(&self) -> impl Iterator<Item = TruthRow<'_>> + '_ {
        self.rows.iter().map(|((owner, meter, day), q)| TruthRow {
            owner,
            meter: *meter,
            day: *day,
            quantity: *q,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Public description of the model
// ---------------------------------------------------------------------------------------------

/// A tenant of the model and the namespaces labelled with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantModel {
    pub id: String,
    pub namespaces: Vec<String>,
}

/// The container restart trap: the container's cpu counter restarts from 0 at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRestart {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub at: DateTime<Utc>,
}

/// The pod replacement trap: `old_pod` exists until `old_stopped_at` (exclusive), `new_pod`
/// (same containers and requests) from `new_started_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReplacement {
    pub namespace: String,
    pub old_pod: String,
    pub new_pod: String,
    pub old_stopped_at: DateTime<Utc>,
    pub new_started_at: DateTime<Utc>,
}

/// Where the traps are (all `None`/empty without `traps`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrapInfo {
    pub two_namespace_tenant: Option<String>,
    /// Namespaces that are reported as unallocated: (namespace, label_tenant value).
    pub unallocated_namespaces: Vec<(String, Option<String>)>,
    pub restart: Option<ContainerRestart>,
    pub replacement: Option<PodReplacement>,
    /// Nominal time of the scrape that has no samples at all (at an hour boundary, where usage
    /// rates step, when the range has one from 45% on).
    pub missing_scrape: Option<DateTime<Utc>>,
    /// The namespace whose containers' cpu usage alternates every quarter hour
    /// ([`CROSSING_SPAN_MS`]) between well below and well above their requests.
    pub crossing_namespace: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Deterministic randomness
// ---------------------------------------------------------------------------------------------

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, salt: &str) -> Rng {
        Rng(mix(seed ^ fnv1a(salt.as_bytes())))
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        debug_assert!(lo <= hi);
        lo + (self.next_u64() % ((hi - lo) as u64 + 1)) as i64
    }

    fn chance(&mut self, num: u64, den: u64) -> bool {
        self.next_u64() % den < num
    }

    fn name(&mut self, len: usize) -> String {
        // The alphabet Kubernetes uses for generated name suffixes.
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..len)
            .map(|_| ALPHABET[(self.next_u64() % ALPHABET.len() as u64) as usize] as char)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Piecewise-constant signals
// ---------------------------------------------------------------------------------------------

/// A non-negative integer signal over time: constant, or constant within each UTC hour with a
/// value derived from `key` and the hour, or alternating between two values in spans of a fixed
/// length aligned to the epoch (steps at every hour boundary when the span divides an hour).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Profile {
    Const(i64),
    Hourly {
        key: u64,
        lo: i64,
        hi: i64,
        quantum: i64,
    },
    /// `low` in spans `[k·span_ms, (k+1)·span_ms)` whose number `k` plus `phase` is even, else
    /// `high`.
    Alternating {
        low: i64,
        high: i64,
        phase: i64,
        span_ms: i64,
    },
}

impl Profile {
    fn hourly(key: u64, lo: i64, hi: i64, quantum: i64) -> Profile {
        let quantum = quantum.max(1);
        let lo = lo.max(0);
        let hi = hi.max(lo);
        Profile::Hourly {
            key,
            lo,
            hi,
            quantum,
        }
    }

    fn hour_value(key: u64, lo: i64, hi: i64, quantum: i64, hour: i64) -> i64 {
        let steps = (hi - lo) / quantum + 1;
        let r = mix(key ^ (hour as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
        lo + (r % steps as u64) as i64 * quantum
    }

    /// The length of the spans the profile is constant in.
    fn span_ms(&self) -> i64 {
        match *self {
            Profile::Alternating { span_ms, .. } => span_ms,
            Profile::Const(_) | Profile::Hourly { .. } => HOUR_MS,
        }
    }

    fn value_at(&self, t: i64) -> i64 {
        self.in_span(t.div_euclid(self.span_ms()))
    }

    /// The value throughout span `k` (since the epoch; a UTC hour except for `Alternating`).
    fn in_span(&self, k: i64) -> i64 {
        match *self {
            Profile::Const(v) => v,
            Profile::Hourly {
                key,
                lo,
                hi,
                quantum,
            } => Self::hour_value(key, lo, hi, quantum, k),
            Profile::Alternating {
                low, high, phase, ..
            } => {
                if (k + phase).rem_euclid(2) == 0 {
                    low
                } else {
                    high
                }
            }
        }
    }

    /// ∫ over [a, b) in value·ms (zero if b <= a).
    fn integral(&self, a: i64, b: i64) -> i128 {
        if b <= a {
            return 0;
        }
        match *self {
            Profile::Const(v) => i128::from(v) * i128::from(b - a),
            Profile::Hourly { .. } | Profile::Alternating { .. } => {
                let span = self.span_ms();
                let mut acc = 0i128;
                let mut t = a;
                while t < b {
                    let k = t.div_euclid(span);
                    let next = ((k + 1) * span).min(b);
                    let v = self.in_span(k);
                    acc += i128::from(v) * i128::from(next - t);
                    t = next;
                }
                acc
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Container {
    name: String,
    /// cpu request, millicores.
    cpu_request_m: i64,
    /// cpu usage rate, millicores.
    cpu_usage_m: Profile,
    /// memory request, bytes.
    mem_request: i64,
    /// working set, bytes.
    mem_working_set: Profile,
    /// requested `nvidia_com_gpu`.
    gpus: i64,
    /// Times (ms) at which the container restarts: its cpu counter starts again from 0.
    restarts: Vec<i64>,
}

#[derive(Debug, Clone)]
struct Pod {
    name: String,
    node: usize,
    /// Lifetime [born, died) in ms, within the model's [start, end).
    born: i64,
    died: i64,
    containers: Vec<Container>,
    /// Pod network transmit rate, bytes/s.
    net_tx: Profile,
    /// Pause container cpu rate (millicores) and working set (bytes).
    pause_cpu_m: Profile,
    pause_mem: Profile,
}

#[derive(Debug, Clone)]
struct Pvc {
    name: String,
    bytes: i64,
}

#[derive(Debug, Clone)]
struct Namespace {
    name: String,
    label_tenant: Option<String>,
    /// The labels of its `kube_namespace_labels` series besides `namespace`, `job` and
    /// `instance`, in order.
    ksm_labels: Vec<(String, String)>,
    /// Its `kube_namespace_labels` series exists from here (ms).
    created: i64,
    /// Its PVCs exist from here (ms).
    pvcs_from: i64,
    owner: Owner,
    pods: Vec<Pod>,
    pvcs: Vec<Pvc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    CpuUsage,
    MemoryWorkingSet,
    NetworkTransmit,
    Requests,
    PvcStorage,
    NamespaceLabels,
    Up,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::CpuUsage,
        Family::MemoryWorkingSet,
        Family::NetworkTransmit,
        Family::Requests,
        Family::PvcStorage,
        Family::NamespaceLabels,
        Family::Up,
    ];

    fn is_counter(self) -> bool {
        matches!(self, Family::CpuUsage | Family::NetworkTransmit)
    }

    /// The family name (OpenMetrics: without `_total` for counters).
    fn family_name(self) -> &'static str {
        match self {
            Family::CpuUsage => "container_cpu_usage_seconds",
            Family::MemoryWorkingSet => "container_memory_working_set_bytes",
            Family::NetworkTransmit => "container_network_transmit_bytes",
            Family::Requests => "kube_pod_container_resource_requests",
            Family::PvcStorage => "kube_persistentvolumeclaim_resource_requests_storage_bytes",
            Family::NamespaceLabels => "kube_namespace_labels",
            Family::Up => "up",
        }
    }

    fn sample_name(self) -> &'static str {
        match self {
            Family::CpuUsage => "container_cpu_usage_seconds_total",
            Family::NetworkTransmit => "container_network_transmit_bytes_total",
            other => other.family_name(),
        }
    }

    fn help(self) -> &'static str {
        match self {
            Family::CpuUsage => "Cumulative cpu time consumed in seconds.",
            Family::MemoryWorkingSet => "Current working set in bytes.",
            Family::NetworkTransmit => "Cumulative count of bytes transmitted",
            Family::Requests => {
                "The number of requested request resource by a container. It is recommended to use the kube_pod_resource_requests metric exposed by kube-scheduler instead, as it is more precise."
            }
            Family::PvcStorage => {
                "The capacity of storage requested by the persistent volume claim."
            }
            Family::NamespaceLabels => "Kubernetes labels converted to Prometheus labels.",
            Family::Up => "1 if the target was scraped.",
        }
    }
}

#[derive(Debug, Clone)]
enum SeriesValue {
    /// Value = Σ parts at t, printed with `scale` decimals.
    Gauge { parts: Vec<Profile>, scale: u32 },
    /// Value = Σ ∫ parts since the last reset (or birth), in part·ms, printed with `scale`
    /// decimals.
    Counter {
        parts: Vec<Profile>,
        resets: Vec<i64>,
        scale: u32,
    },
}

#[derive(Debug, Clone)]
struct Series {
    family: Family,
    /// `{name="value",...}`
    labels: String,
    born: i64,
    died: i64,
    value: SeriesValue,
    /// Jitter key, from the series identity and the seed.
    key: u64,
}

/// Running counter value for samples taken in time order.
struct CounterCursor<'a> {
    parts: &'a [Profile],
    resets: &'a [i64],
    t: i64,
    cum: i128,
    next_reset: usize,
}

impl<'a> CounterCursor<'a> {
    fn new(parts: &'a [Profile], resets: &'a [i64], born: i64) -> Self {
        CounterCursor {
            parts,
            resets,
            t: born,
            cum: 0,
            next_reset: 0,
        }
    }

    /// The counter at `t` (>= the previous call's `t`).
    fn at(&mut self, t: i64) -> i128 {
        while self.next_reset < self.resets.len() && self.resets[self.next_reset] <= t {
            let r = self.resets[self.next_reset];
            if r > self.t {
                self.t = r;
                self.cum = 0;
            }
            self.next_reset += 1;
        }
        if t > self.t {
            self.cum += self
                .parts
                .iter()
                .map(|p| p.integral(self.t, t))
                .sum::<i128>();
            self.t = t;
        }
        self.cum
    }
}

/// The synthetic cluster. See the module documentation.
#[derive(Debug, Clone)]
pub struct Cluster {
    spec: ClusterSpec,
    start: i64,
    end: i64,
    interval: i64,
    jitter: i64,
    /// Index of the scrape with no samples.
    missing_scrape: Option<i64>,
    tenants: Vec<TenantModel>,
    namespaces: Vec<Namespace>,
    traps: TrapInfo,
    /// All series, grouped by family in `Family::ALL` order.
    series: Vec<Series>,
}

const DEPLOYMENTS: [&str; 8] = [
    "api",
    "web",
    "worker",
    "cache",
    "ingest",
    "db",
    "scheduler",
    "gateway",
];

fn ms_to_datetime(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).expect("timestamp in range")
}

fn generate_namespace(
    seed: u64,
    name: &str,
    label_tenant: Option<String>,
    owner: Owner,
    start: i64,
    end: i64,
) -> Namespace {
    let mut rng = Rng::new(seed, &format!("namespace/{name}"));
    let pod_count = rng.range(1, 3) as usize;
    let first_deploy = rng.range(0, DEPLOYMENTS.len() as i64 - 1) as usize;
    let mut pods = Vec::with_capacity(pod_count);
    for p in 0..pod_count {
        let deploy = DEPLOYMENTS[(first_deploy + p) % DEPLOYMENTS.len()];
        let pod_name = format!("{deploy}-{}-{}", rng.name(10), rng.name(5));
        let container_count = rng.range(1, 2) as usize;
        let mut containers = Vec::with_capacity(container_count);
        for c in 0..container_count {
            let cname = if c == 0 {
                deploy.to_owned()
            } else {
                "sidecar".to_owned()
            };
            let cpu_request_m = 50 * rng.range(2, 40);
            let cpu_usage_m = match rng.range(0, 3) {
                // Below the request.
                0 => Profile::Const((cpu_request_m * rng.range(10, 90) / 100).max(1)),
                // Above the request.
                1 => Profile::Const((cpu_request_m * rng.range(110, 180) / 100).max(1)),
                // Around it, changing every hour.
                _ => Profile::hourly(
                    rng.next_u64(),
                    (cpu_request_m / 10).max(1),
                    cpu_request_m * 17 / 10,
                    1,
                ),
            };
            let mem_request = 64 * MIB * rng.range(2, 64);
            let mem_working_set = if rng.chance(1, 2) {
                Profile::Const((mem_request * rng.range(30, 140) / 100) / 4096 * 4096)
            } else {
                Profile::hourly(rng.next_u64(), mem_request / 4, mem_request * 3 / 2, MIB)
            };
            let gpus = if c == 0 && rng.chance(1, 10) {
                rng.range(1, 2)
            } else {
                0
            };
            containers.push(Container {
                name: cname,
                cpu_request_m,
                cpu_usage_m,
                mem_request,
                mem_working_set,
                gpus,
                restarts: Vec::new(),
            });
        }
        let net_tx = if rng.chance(1, 2) {
            Profile::Const(rng.range(1_000, 2_000_000))
        } else {
            Profile::hourly(rng.next_u64(), 500, 5_000_000, 1)
        };
        pods.push(Pod {
            name: pod_name,
            node: rng.range(0, NODES as i64 - 1) as usize,
            born: start,
            died: end,
            containers,
            net_tx,
            pause_cpu_m: Profile::Const(1),
            pause_mem: Profile::Const(4096 * rng.range(100, 200)),
        });
    }
    let mut pvcs = Vec::new();
    if rng.chance(2, 5) {
        for i in 0..rng.range(1, 2) {
            let deploy = DEPLOYMENTS[(first_deploy + i as usize) % DEPLOYMENTS.len()];
            pvcs.push(Pvc {
                name: format!("data-{deploy}-0"),
                bytes: GIB * rng.range(1, 500),
            });
        }
    }
    Namespace {
        name: name.to_owned(),
        ksm_labels: label_tenant
            .iter()
            .map(|t| ("label_tenant".to_owned(), t.clone()))
            .collect(),
        label_tenant,
        created: start,
        pvcs_from: start,
        owner,
        pods,
        pvcs,
    }
}

/// The labels kube-state-metrics puts on `kube_namespace_labels` for a Namespace object's
/// `labels` (all of them, as with `--metric-labels-allowlist=namespaces=[*]`), by key: every
/// character outside `[a-zA-Z0-9_]` replaced by `_`, camel case turned into snake case,
/// lower-cased and prefixed with `label_`; keys that end up with the same name are told apart
/// by `_conflict1`, `_conflict2`, ... in key order.
pub fn kube_state_metrics_labels(labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
    fn name(key: &str) -> String {
        let sanitised: Vec<char> = key
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let mut snake = String::from("label_");
        for (i, c) in sanitised.iter().enumerate() {
            if i > 0
                && c.is_ascii_uppercase()
                && (sanitised[i - 1].is_ascii_lowercase() || sanitised[i - 1].is_ascii_digit())
            {
                snake.push('_');
            }
            snake.push(c.to_ascii_lowercase());
        }
        snake
    }
    let names: Vec<String> = labels.keys().map(|k| name(k)).collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    for n in &names {
        *uses.entry(n.as_str()).or_insert(0) += 1;
    }
    let mut numbered: HashMap<&str, usize> = HashMap::new();
    names
        .iter()
        .zip(labels.values())
        .map(|(n, value)| {
            let label = if uses[n.as_str()] > 1 {
                let k = numbered.entry(n.as_str()).or_insert(0);
                *k += 1;
                format!("{n}_conflict{k}")
            } else {
                n.clone()
            };
            (label, value.clone())
        })
        .collect()
}

/// The model's namespace for the caller's `added`.
fn added_namespace(seed: u64, added: &AddedNamespace, start: i64, end: i64) -> Namespace {
    let created = added.created.timestamp_millis();
    let workload_from = added.workload_from.timestamp_millis();
    assert!(
        start <= created && created <= workload_from && workload_from < end,
        "AddedNamespace {:?}: need start <= created <= workload_from < end",
        added.name
    );
    let label_tenant = added.labels.get(TENANT_LABEL_KEY).cloned();
    let owner = match &label_tenant {
        Some(t) => Owner::Tenant(t.clone()),
        None => Owner::Unallocated {
            namespace: added.name.clone(),
            label_tenant: None,
        },
    };
    let mut ns = generate_namespace(seed, &added.name, label_tenant, owner, workload_from, end);
    ns.ksm_labels = kube_state_metrics_labels(&added.labels);
    ns.created = created;
    ns.pvcs_from = workload_from;
    ns
}

fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::with_capacity(128);
    s.push('{');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for ch in v.chars() {
            match ch {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

fn node_name(node: usize) -> String {
    format!("node-{node}")
}

fn kubelet_instance(node: usize) -> String {
    format!("node-{node}:10250")
}

impl Cluster {
    /// Builds the model. Panics if `end <= start`, `start` is before the epoch,
    /// `scrape_interval_s <= 0` or `jitter_s < 0`.
    pub fn generate(spec: &ClusterSpec) -> Cluster {
        let start = spec.start.timestamp_millis();
        let end = spec.end.timestamp_millis();
        assert!(end > start, "ClusterSpec: end must be after start");
        assert!(start >= 0, "ClusterSpec: start must not be before 1970");
        assert!(
            spec.scrape_interval_s > 0,
            "ClusterSpec: scrape_interval_s must be positive"
        );
        assert!(
            spec.jitter_s >= 0,
            "ClusterSpec: jitter_s must not be negative"
        );

        let mut tenants = Vec::with_capacity(spec.tenants);
        let mut namespaces = Vec::new();
        for i in 0..spec.tenants {
            let id = format!("tenant-{i:03}");
            let mut names = vec![format!("{id}-main")];
            if spec.traps && i == 1 {
                names.push(format!("{id}-batch"));
            }
            for ns in &names {
                namespaces.push(generate_namespace(
                    spec.seed,
                    ns,
                    Some(id.clone()),
                    Owner::Tenant(id.clone()),
                    start,
                    end,
                ));
            }
            tenants.push(TenantModel {
                id,
                namespaces: names,
            });
        }

        let mut traps = TrapInfo::default();
        let mut missing_scrape = None;
        let interval = spec.scrape_interval_s * 1000;
        if spec.traps {
            if spec.tenants > 1 {
                traps.two_namespace_tenant = Some(tenants[1].id.clone());
            }
            namespaces.push(generate_namespace(
                spec.seed,
                UNLABELLED_NAMESPACE,
                None,
                Owner::Unallocated {
                    namespace: UNLABELLED_NAMESPACE.to_owned(),
                    label_tenant: None,
                },
                start,
                end,
            ));
            let (ghost_namespace, ghost_tenant) = &spec.unknown_tenant;
            namespaces.push(generate_namespace(
                spec.seed,
                ghost_namespace,
                Some(ghost_tenant.clone()),
                Owner::Unallocated {
                    namespace: ghost_namespace.clone(),
                    label_tenant: Some(ghost_tenant.clone()),
                },
                start,
                end,
            ));
            traps.unallocated_namespaces = vec![
                (UNLABELLED_NAMESPACE.to_owned(), None),
                (ghost_namespace.clone(), Some(ghost_tenant.clone())),
            ];

            let span = end - start;
            let mut rng = Rng::new(spec.seed, "traps");
            // Tenants' main namespaces come first in `namespaces`, in tenant order, except
            // that tenant 1 has its batch namespace right after its main one.
            let main_ns = |t: usize| -> usize {
                if t <= 1 {
                    t
                } else {
                    t + 1
                }
            };
            let unlabelled_idx = namespaces.len() - 2;
            let pick = |want: usize| -> usize {
                if spec.tenants == 0 {
                    unlabelled_idx
                } else {
                    main_ns(want.min(spec.tenants - 1))
                }
            };

            // A container restart at ~35% of the range, off the scrape grid.
            let restart_ns = pick(2);
            let restart_at = start + span * 35 / 100 + rng.range(1_000, 9_999);
            if restart_at < end {
                let ns = &mut namespaces[restart_ns];
                let pod = ns.pods.last_mut().expect("a namespace has pods");
                let container = &mut pod.containers[0];
                container.restarts.push(restart_at);
                traps.restart = Some(ContainerRestart {
                    namespace: ns.name.clone(),
                    pod: pod.name.clone(),
                    container: container.name.clone(),
                    at: ms_to_datetime(restart_at),
                });
            }

            // A pod replaced at ~60% of the range: the old one stops at X, the new one (new
            // name, same spec, maybe another node) starts 20-45 s later.
            let replace_ns = pick(3);
            let stop_at = start + span * 60 / 100 + rng.range(1_000, 9_999);
            let new_at = stop_at + rng.range(20_000, 45_000);
            if new_at < end {
                let ns = &mut namespaces[replace_ns];
                let old = &mut ns.pods[0];
                old.died = stop_at;
                let mut new = old.clone();
                let rs_hash = old
                    .name
                    .rsplit_once('-')
                    .expect("pod names have a suffix")
                    .0
                    .to_owned();
                let mut suffix = rng.name(5);
                while format!("{rs_hash}-{suffix}") == old.name {
                    suffix = rng.name(5);
                }
                new.name = format!("{rs_hash}-{suffix}");
                new.born = new_at;
                new.died = end;
                new.node = (old.node + 1) % NODES;
                for c in &mut new.containers {
                    c.restarts.retain(|&r| r >= new_at);
                }
                traps.replacement = Some(PodReplacement {
                    namespace: ns.name.clone(),
                    old_pod: old.name.clone(),
                    new_pod: new.name.clone(),
                    old_stopped_at: ms_to_datetime(stop_at),
                    new_started_at: ms_to_datetime(new_at),
                });
                ns.pods.insert(1, new);
            }

            // One scrape missing entirely, near the middle: at the first hour boundary from 45%
            // of the range on, where usage rates step (else at 45%).
            let scrapes = (end - start + interval - 1) / interval;
            if scrapes >= 4 {
                let nominal = scrapes * 45 / 100;
                let at = start + nominal * interval;
                let hour = div_ceil(at, HOUR_MS) * HOUR_MS;
                let k = if (hour - start) % interval == 0 && (hour - start) / interval < scrapes {
                    (hour - start) / interval
                } else {
                    nominal
                };
                missing_scrape = Some(k);
                traps.missing_scrape = Some(ms_to_datetime(start + k * interval));
            }

            // A namespace whose containers' cpu usage steps every quarter hour (so at every
            // hour boundary too) from well above its request to well below it and back, so
            // that it crosses the request from one window to the next: workers of a queue that
            // a scheduled job fills every half hour, busy for a quarter hour (130–170% of the
            // request, within a limit above it) and then quiet (30–70%).
            // A counter sample reports the usage up to its (jittered) timestamp, so the usage of
            // up to one scrape interval before an edge can land in the window after it, and
            // billing max(requested, used) per window does not forgive a shift: about half the
            // edges' first sample after the edge reports usage from before it.
            let crossing_ns = pick(4);
            let mut rng = Rng::new(spec.seed, "traps/crossing");
            let ns = &mut namespaces[crossing_ns];
            for pod in &mut ns.pods {
                for c in &mut pod.containers {
                    c.cpu_usage_m = Profile::Alternating {
                        low: c.cpu_request_m * rng.range(30, 70) / 100,
                        high: c.cpu_request_m * rng.range(130, 170) / 100,
                        phase: rng.range(0, 1),
                        span_ms: CROSSING_SPAN_MS,
                    };
                }
            }
            traps.crossing_namespace = Some(ns.name.clone());
        }

        // Make sure the small clusters still exercise every meter.
        let tenant_ns = namespaces
            .iter()
            .filter(|ns| matches!(ns.owner, Owner::Tenant(_)))
            .count();
        if tenant_ns > 0 {
            let has_gpu = namespaces.iter().any(|ns| {
                ns.pods
                    .iter()
                    .any(|p| p.containers.iter().any(|c| c.gpus > 0))
            });
            if !has_gpu {
                let ns = &mut namespaces[tenant_ns - 1];
                for pod in &mut ns.pods {
                    pod.containers[0].gpus = 1;
                }
            }
            let has_pvc = namespaces.iter().any(|ns| !ns.pvcs.is_empty());
            if !has_pvc {
                let ns = &mut namespaces[0];
                ns.pvcs.push(Pvc {
                    name: "data-0".to_owned(),
                    bytes: 10 * GIB,
                });
            }
        }

        // The caller's namespaces come last, so that nothing generated depends on them.
        let mut names: BTreeSet<&str> = namespaces.iter().map(|ns| ns.name.as_str()).collect();
        for added in &spec.added_namespaces {
            assert!(
                names.insert(&added.name),
                "AddedNamespace {:?}: the model has a namespace of that name",
                added.name
            );
        }
        let added: Vec<Namespace> = spec
            .added_namespaces
            .iter()
            .map(|added| added_namespace(spec.seed, added, start, end))
            .collect();
        namespaces.extend(added);

        let jitter = if spec.traps {
            (spec.jitter_s * 1000).min((interval - 1) / 2)
        } else {
            0
        };
        Cluster::assemble(
            spec.clone(),
            start,
            end,
            interval,
            jitter,
            missing_scrape,
            tenants,
            namespaces,
            traps,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        spec: ClusterSpec,
        start: i64,
        end: i64,
        interval: i64,
        jitter: i64,
        missing_scrape: Option<i64>,
        tenants: Vec<TenantModel>,
        namespaces: Vec<Namespace>,
        traps: TrapInfo,
    ) -> Cluster {
        let series = build_series(&spec, start, end, &namespaces);
        Cluster {
            spec,
            start,
            end,
            interval,
            jitter,
            missing_scrape,
            tenants,
            namespaces,
            traps,
            series,
        }
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The model's tenant ids, ascending.
    pub fn tenant_ids(&self) -> Vec<&str> {
        self.tenants.iter().map(|t| t.id.as_str()).collect()
    }

    /// The model's tenants with their namespaces.
    pub fn tenants(&self) -> &[TenantModel] {
        &self.tenants
    }

    /// The namespaces of `tenant` (empty if it is not one of the model's).
    pub fn namespaces_of(&self, tenant: &str) -> &[String] {
        self.tenants
            .iter()
            .find(|t| t.id == tenant)
            .map(|t| t.namespaces.as_slice())
            .unwrap_or(&[])
    }

    /// Every namespace with its `label_tenant` value (None: no label).
    pub fn namespaces(&self) -> Vec<(&str, Option<&str>)> {
        self.namespaces
            .iter()
            .map(|ns| (ns.name.as_str(), ns.label_tenant.as_deref()))
            .collect()
    }

    /// Where the traps are.
    pub fn traps(&self) -> &TrapInfo {
        &self.traps
    }

    /// Number of series in the OpenMetrics output.
    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    /// Nominal scrape times `start + k·interval` within [start, end).
    pub fn scrape_count(&self) -> i64 {
        (self.end - self.start + self.interval - 1) / self.interval
    }

    // -----------------------------------------------------------------------------------------
    // Output
    // -----------------------------------------------------------------------------------------

    /// Writes every sample in [start, end) as OpenMetrics text, in the order
    /// `promtool tsdb create-blocks-from openmetrics` accepts: families one after the other
    /// (`# HELP`, `# TYPE`, then their series), each series' samples contiguous and in strictly
    /// increasing time order, timestamps in seconds with millisecond decimals, `# EOF` last.
    /// Streams through an internal buffer: memory use does not grow with the range.
    pub fn write_openmetrics(&self, out: &mut impl Write) -> io::Result<()> {
        self.write_openmetrics_range(out, self.spec.start, self.spec.end)
    }

    /// Like [`Cluster::write_openmetrics`], but only the samples whose timestamps fall in
    /// [from, to) (clipped to [start, end)). Consecutive ranges partition the full output
    /// exactly (counters keep their values across files), so a long range can be fed to promtool
    /// one file per day: each file becomes its own block(s) and the files never need to exist
    /// together.
    pub fn write_openmetrics_range(
        &self,
        out: &mut impl Write,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> io::Result<()> {
        let from = from.timestamp_millis().max(self.start);
        let to = to.timestamp_millis().min(self.end);
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let mut line: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut i = 0;
        for family in Family::ALL {
            let begin = i;
            while i < self.series.len() && self.series[i].family == family {
                i += 1;
            }
            if begin == i {
                continue;
            }
            writeln!(w, "# HELP {} {}", family.family_name(), family.help())?;
            writeln!(
                w,
                "# TYPE {} {}",
                family.family_name(),
                if family.is_counter() {
                    "counter"
                } else {
                    "gauge"
                }
            )?;
            for s in &self.series[begin..i] {
                self.write_series_samples(s, from, to, &mut line, &mut w)?;
            }
        }
        debug_assert_eq!(i, self.series.len());
        w.write_all(b"# EOF\n")?;
        w.flush()
    }

    fn jitter_at(&self, key: u64, k: i64) -> i64 {
        if self.jitter == 0 {
            return 0;
        }
        let r = mix(key ^ (k as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        (r % (2 * self.jitter as u64 + 1)) as i64 - self.jitter
    }

    fn write_series_samples<W: Write>(
        &self,
        s: &Series,
        from: i64,
        to: i64,
        line: &mut Vec<u8>,
        w: &mut W,
    ) -> io::Result<()> {
        let lo = s.born.max(from);
        let hi = s.died.min(to);
        if lo >= hi {
            return Ok(());
        }
        let n = self.scrape_count();
        // Grid points whose jittered time can fall in [lo, hi).
        let k_first = div_ceil(lo - self.jitter - self.start, self.interval).max(0);
        let k_end = div_ceil(hi + self.jitter - self.start, self.interval).min(n);
        let name = s.family.sample_name().as_bytes();
        let mut cursor = match &s.value {
            SeriesValue::Counter { parts, resets, .. } => {
                Some(CounterCursor::new(parts, resets, s.born))
            }
            SeriesValue::Gauge { .. } => None,
        };
        for k in k_first..k_end {
            if self.missing_scrape == Some(k) {
                continue;
            }
            let ts = self.start + k * self.interval + self.jitter_at(s.key, k);
            if ts < lo || ts >= hi {
                continue;
            }
            line.extend_from_slice(name);
            line.extend_from_slice(s.labels.as_bytes());
            line.push(b' ');
            match &s.value {
                SeriesValue::Gauge { parts, scale } => {
                    let v: i128 = parts.iter().map(|p| i128::from(p.value_at(ts))).sum();
                    push_scaled(line, v, *scale);
                }
                SeriesValue::Counter { scale, .. } => {
                    let v = cursor.as_mut().expect("counter cursor").at(ts);
                    push_scaled(line, v, *scale);
                }
            }
            line.push(b' ');
            push_timestamp(line, ts);
            line.push(b'\n');
            if line.len() >= 60_000 {
                w.write_all(line)?;
                line.clear();
            }
        }
        w.write_all(line)?;
        line.clear();
        Ok(())
    }

    /// The Prometheus text exposition (format 0.0.4) of every series alive at `at`, without
    /// timestamps: what the kubelet and kube-state-metrics would serve at that instant, in one
    /// document (for the demo exporter). Counters continue from the model, including the reset
    /// of the restarted container; the missing-scrape trap does not apply.
    pub fn render_exposition(&self, at: DateTime<Utc>) -> String {
        let t = at.timestamp_millis();
        let mut out = String::with_capacity(self.series.len() * 128);
        let mut buf: Vec<u8> = Vec::with_capacity(32);
        let mut i = 0;
        for family in Family::ALL {
            let begin = i;
            while i < self.series.len() && self.series[i].family == family {
                i += 1;
            }
            let alive: Vec<&Series> = self.series[begin..i]
                .iter()
                .filter(|s| s.born <= t && t < s.died)
                .collect();
            if alive.is_empty() {
                continue;
            }
            let name = family.sample_name();
            out.push_str(&format!("# HELP {name} {}\n", family.help()));
            out.push_str(&format!(
                "# TYPE {name} {}\n",
                if family.is_counter() {
                    "counter"
                } else {
                    "gauge"
                }
            ));
            for s in alive {
                buf.clear();
                match &s.value {
                    SeriesValue::Gauge { parts, scale } => {
                        let v: i128 = parts.iter().map(|p| i128::from(p.value_at(t))).sum();
                        push_scaled(&mut buf, v, *scale);
                    }
                    SeriesValue::Counter {
                        parts,
                        resets,
                        scale,
                    } => {
                        let v = CounterCursor::new(parts, resets, s.born).at(t);
                        push_scaled(&mut buf, v, *scale);
                    }
                }
                out.push_str(name);
                out.push_str(&s.labels);
                out.push(' ');
                out.push_str(std::str::from_utf8(&buf).expect("ascii"));
                out.push('\n');
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Ground truth
    // -----------------------------------------------------------------------------------------

    /// The exact billed quantities for windows of `window_s` seconds (aligned to the epoch),
    /// per owner, meter and UTC day of the window start. Every window that intersects
    /// [start, end) is counted. Panics if `window_s <= 0`.
    pub fn truth(&self, window_s: i64) -> Truth {
        assert!(window_s > 0, "window_s must be positive");
        let w = window_s * 1000;
        let owners: Vec<&Owner> = self.namespaces.iter().map(|ns| &ns.owner).collect();
        let mut acc: HashMap<(usize, Meter, NaiveDate), i128> = HashMap::new();
        let k_first = self.start.div_euclid(w);
        let k_last = (self.end - 1).div_euclid(w);
        let mut per_ns = vec![[0i128; 5]; self.namespaces.len()];
        for k in k_first..=k_last {
            let ws = k * w;
            let day = ms_to_datetime(ws).date_naive();
            for row in per_ns.iter_mut() {
                *row = [0; 5];
            }
            self.window_quantities(ws, ws + w, &mut per_ns);
            for (ns, row) in per_ns.iter().enumerate() {
                for meter in Meter::ALL {
                    let q = row[meter.index()];
                    if q != 0 {
                        *acc.entry((ns, meter, day)).or_insert(0) += q;
                    }
                }
            }
        }
        let mut rows = BTreeMap::new();
        for ((ns, meter, day), q) in acc {
            *rows
                .entry((owners[ns].clone(), meter, day))
                .or_insert(Decimal::ZERO) += to_decimal(q, meter);
        }
        for q in rows.values_mut() {
            *q = q.normalize();
        }
        Truth { window_s, rows }
    }

    /// The exact billed quantities of one window [window_start, window_start + window_s) per
    /// owner and meter (non-zero only). The window need not be aligned.
    pub fn window_truth(
        &self,
        window_start: DateTime<Utc>,
        window_s: i64,
    ) -> BTreeMap<(Owner, Meter), Decimal> {
        assert!(window_s > 0, "window_s must be positive");
        let ws = window_start.timestamp_millis();
        let mut per_ns = vec![[0i128; 5]; self.namespaces.len()];
        self.window_quantities(ws, ws + window_s * 1000, &mut per_ns);
        let mut out = BTreeMap::new();
        for (ns, row) in self.namespaces.iter().zip(&per_ns) {
            for meter in Meter::ALL {
                let q = row[meter.index()];
                if q != 0 {
                    *out.entry((ns.owner.clone(), meter))
                        .or_insert(Decimal::ZERO) += to_decimal(q, meter);
                }
            }
        }
        for q in out.values_mut() {
            *q = q.normalize();
        }
        out
    }

    /// Adds each namespace's billed quantities of window [ws, we) (internal units) to `per_ns`.
    fn window_quantities(&self, ws: i64, we: i64, per_ns: &mut [[i128; 5]]) {
        let a0 = ws.max(self.start);
        let b0 = we.min(self.end);
        if a0 >= b0 {
            return;
        }
        for (ns, row) in self.namespaces.iter().zip(per_ns.iter_mut()) {
            for pod in &ns.pods {
                let a = a0.max(pod.born);
                let b = b0.min(pod.died);
                if a >= b {
                    continue;
                }
                let alive = i128::from(b - a);
                for c in &pod.containers {
                    let cpu_req = i128::from(c.cpu_request_m) * alive;
                    let cpu_use = c.cpu_usage_m.integral(a, b);
                    row[Meter::Cpu.index()] += cpu_req.max(cpu_use);
                    let mem_req = i128::from(c.mem_request) * alive;
                    let mem_ws = c.mem_working_set.integral(a, b);
                    row[Meter::Memory.index()] += mem_req.max(mem_ws);
                    row[Meter::Gpu.index()] += i128::from(c.gpus) * alive;
                }
                row[Meter::NetworkEgress.index()] += pod.net_tx.integral(a, b);
            }
            let alive = i128::from(b0 - a0.max(ns.pvcs_from)).max(0);
            for pvc in &ns.pvcs {
                row[Meter::Storage.index()] += i128::from(pvc.bytes) * alive;
            }
        }
    }
}

fn to_decimal(q: i128, meter: Meter) -> Decimal {
    Decimal::try_from_i128_with_scale(q, meter.scale()).expect("truth quantity fits a Decimal")
}

fn div_ceil(a: i64, b: i64) -> i64 {
    -((-a).div_euclid(b))
}

/// Appends `v / 10^scale` as decimal text, without trailing zeros in the fraction.
fn push_scaled(buf: &mut Vec<u8>, v: i128, scale: u32) {
    let (neg, mut u) = if v < 0 {
        (true, v.unsigned_abs())
    } else {
        (false, v as u128)
    };
    if neg {
        buf.push(b'-');
    }
    let mut digits = [0u8; 40];
    let mut n = 0;
    if u == 0 {
        digits[0] = b'0';
        n = 1;
    }
    while u > 0 {
        digits[n] = b'0' + (u % 10) as u8;
        u /= 10;
        n += 1;
    }
    let scale = scale as usize;
    while n <= scale {
        digits[n] = b'0';
        n += 1;
    }
    // digits[..n] is little-endian; the last `scale` digits (digits[..scale]) are the fraction.
    for i in (scale..n).rev() {
        buf.push(digits[i]);
    }
    let mut frac_end = 0;
    while frac_end < scale && digits[frac_end] == b'0' {
        frac_end += 1;
    }
    if frac_end < scale {
        buf.push(b'.');
        for i in (frac_end..scale).rev() {
            buf.push(digits[i]);
        }
    }
}

/// Appends a non-negative millisecond timestamp as seconds with exactly three decimals.
fn push_timestamp(buf: &mut Vec<u8>, ts: i64) {
    push_scaled(buf, i128::from(ts.div_euclid(1000)), 0);
    let ms = ts.rem_euclid(1000);
    buf.push(b'.');
    buf.push(b'0' + (ms / 100) as u8);
    buf.push(b'0' + (ms / 10 % 10) as u8);
    buf.push(b'0' + (ms % 10) as u8);
}

fn build_series(spec: &ClusterSpec, start: i64, end: i64, namespaces: &[Namespace]) -> Vec<Series> {
    let traps = spec.traps;
    let mut by_family: Vec<Vec<Series>> = vec![Vec::new(); Family::ALL.len()];
    let mut push = |family: Family, labels: String, born: i64, died: i64, value: SeriesValue| {
        let key =
            mix(spec.seed ^ fnv1a(family.sample_name().as_bytes()) ^ mix(fnv1a(labels.as_bytes())));
        by_family[Family::ALL
            .iter()
            .position(|f| *f == family)
            .expect("family")]
        .push(Series {
            family,
            labels,
            born,
            died,
            value,
            key,
        });
    };

    for ns in namespaces {
        for pod in &ns.pods {
            let instance = kubelet_instance(pod.node);
            let node = node_name(pod.node);
            let cadvisor = |container: &str| {
                labels(&[
                    ("namespace", &ns.name),
                    ("pod", &pod.name),
                    ("container", container),
                    ("job", KUBELET_JOB),
                    ("instance", &instance),
                ])
            };
            for c in &pod.containers {
                push(
                    Family::CpuUsage,
                    cadvisor(&c.name),
                    pod.born,
                    pod.died,
                    SeriesValue::Counter {
                        parts: vec![c.cpu_usage_m.clone()],
                        resets: c.restarts.clone(),
                        scale: 6,
                    },
                );
                push(
                    Family::MemoryWorkingSet,
                    cadvisor(&c.name),
                    pod.born,
                    pod.died,
                    SeriesValue::Gauge {
                        parts: vec![c.mem_working_set.clone()],
                        scale: 0,
                    },
                );
                let ksm = |resource: &str, unit: &str| {
                    labels(&[
                        ("namespace", &ns.name),
                        ("pod", &pod.name),
                        ("container", &c.name),
                        ("node", &node),
                        ("resource", resource),
                        ("unit", unit),
                        ("job", KSM_JOB),
                        ("instance", KSM_INSTANCE),
                    ])
                };
                push(
                    Family::Requests,
                    ksm("cpu", "core"),
                    pod.born,
                    pod.died,
                    SeriesValue::Gauge {
                        parts: vec![Profile::Const(c.cpu_request_m)],
                        scale: 3,
                    },
                );
                push(
                    Family::Requests,
                    ksm("memory", "byte"),
                    pod.born,
                    pod.died,
                    SeriesValue::Gauge {
                        parts: vec![Profile::Const(c.mem_request)],
                        scale: 0,
                    },
                );
                if c.gpus > 0 {
                    push(
                        Family::Requests,
                        ksm("nvidia_com_gpu", "integer"),
                        pod.born,
                        pod.died,
                        SeriesValue::Gauge {
                            parts: vec![Profile::Const(c.gpus)],
                            scale: 0,
                        },
                    );
                }
            }
            let net = SeriesValue::Counter {
                parts: vec![pod.net_tx.clone()],
                resets: Vec::new(),
                scale: 3,
            };
            let net_labels = |container: &str| {
                labels(&[
                    ("namespace", &ns.name),
                    ("pod", &pod.name),
                    ("container", container),
                    ("interface", "eth0"),
                    ("job", KUBELET_JOB),
                    ("instance", &instance),
                ])
            };
            if traps {
                // Pod-level aggregates: the pod cgroup holds every container and the pause
                // container; it does not reset when one container restarts.
                let mut cpu_parts: Vec<Profile> = pod
                    .containers
                    .iter()
                    .map(|c| c.cpu_usage_m.clone())
                    .collect();
                cpu_parts.push(pod.pause_cpu_m.clone());
                push(
                    Family::CpuUsage,
                    cadvisor(""),
                    pod.born,
                    pod.died,
                    SeriesValue::Counter {
                        parts: cpu_parts,
                        resets: Vec::new(),
                        scale: 6,
                    },
                );
                push(
                    Family::CpuUsage,
                    cadvisor("POD"),
                    pod.born,
                    pod.died,
                    SeriesValue::Counter {
                        parts: vec![pod.pause_cpu_m.clone()],
                        resets: Vec::new(),
                        scale: 6,
                    },
                );
                let mut mem_parts: Vec<Profile> = pod
                    .containers
                    .iter()
                    .map(|c| c.mem_working_set.clone())
                    .collect();
                mem_parts.push(pod.pause_mem.clone());
                push(
                    Family::MemoryWorkingSet,
                    cadvisor(""),
                    pod.born,
                    pod.died,
                    SeriesValue::Gauge {
                        parts: mem_parts,
                        scale: 0,
                    },
                );
                push(
                    Family::MemoryWorkingSet,
                    cadvisor("POD"),
                    pod.born,
                    pod.died,
                    SeriesValue::Gauge {
                        parts: vec![pod.pause_mem.clone()],
                        scale: 0,
                    },
                );
                push(
                    Family::NetworkTransmit,
                    net_labels(""),
                    pod.born,
                    pod.died,
                    net.clone(),
                );
                push(
                    Family::NetworkTransmit,
                    net_labels("POD"),
                    pod.born,
                    pod.died,
                    net,
                );
            } else {
                push(
                    Family::NetworkTransmit,
                    net_labels(""),
                    pod.born,
                    pod.died,
                    net,
                );
            }
        }
        for pvc in &ns.pvcs {
            push(
                Family::PvcStorage,
                labels(&[
                    ("namespace", &ns.name),
                    ("persistentvolumeclaim", &pvc.name),
                    ("job", KSM_JOB),
                    ("instance", KSM_INSTANCE),
                ]),
                ns.pvcs_from,
                end,
                SeriesValue::Gauge {
                    parts: vec![Profile::Const(pvc.bytes)],
                    scale: 0,
                },
            );
        }
        let mut ns_labels: Vec<(&str, &str)> = vec![("namespace", &ns.name)];
        ns_labels.extend(ns.ksm_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        ns_labels.extend([("job", KSM_JOB), ("instance", KSM_INSTANCE)]);
        push(
            Family::NamespaceLabels,
            labels(&ns_labels),
            ns.created,
            end,
            SeriesValue::Gauge {
                parts: vec![Profile::Const(1)],
                scale: 0,
            },
        );
    }
    for node in 0..NODES {
        push(
            Family::Up,
            labels(&[("job", KUBELET_JOB), ("instance", &kubelet_instance(node))]),
            start,
            end,
            SeriesValue::Gauge {
                parts: vec![Profile::Const(1)],
                scale: 0,
            },
        );
    }
    push(
        Family::Up,
        labels(&[("job", KSM_JOB), ("instance", KSM_INSTANCE)]),
        start,
        end,
        SeriesValue::Gauge {
            parts: vec![Profile::Const(1)],
            scale: 0,
        },
    );
    by_family.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::HashMap as Map;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn om(cluster: &Cluster) -> String {
        let mut out = Vec::new();
        cluster.write_openmetrics(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// series (name + labels) -> [(ts_ms, value)]
    type Samples = Map<String, Vec<(i64, f64)>>;

    fn parse_samples(text: &str) -> (Vec<String>, Samples) {
        let mut order = Vec::new();
        let mut map: Samples = Map::new();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let close = line.rfind('}').expect("labels");
            let series = &line[..=close];
            let mut rest = line[close + 2..].split(' ');
            let value: f64 = rest.next().unwrap().parse().unwrap();
            let ts = rest.next().expect("timestamp");
            assert!(rest.next().is_none());
            let (secs, ms) = ts.split_once('.').expect("ms decimals");
            assert_eq!(ms.len(), 3, "{line}");
            let ts_ms = secs.parse::<i64>().unwrap() * 1000 + ms.parse::<i64>().unwrap();
            if !map.contains_key(series) {
                order.push(series.to_owned());
            }
            map.entry(series.to_owned())
                .or_default()
                .push((ts_ms, value));
        }
        (order, map)
    }

    #[test]
    fn openmetrics_of_a_tiny_cluster() {
        let start = t("2024-03-01T00:00:00Z");
        let spec =
            ClusterSpec::new(1, 7, start, start + chrono::Duration::minutes(2)).with_traps(false);
        let cluster = Cluster::generate(&spec);
        let text = om(&cluster);
        assert!(text.ends_with("\n# EOF\n"));
        assert!(text.contains("# TYPE container_cpu_usage_seconds counter\n"));
        assert!(text.contains("# TYPE container_network_transmit_bytes counter\n"));
        assert!(text.contains("# TYPE container_memory_working_set_bytes gauge\n"));
        assert!(text.contains("# TYPE kube_pod_container_resource_requests gauge\n"));
        assert!(text.contains(
            "\nkube_namespace_labels{namespace=\"tenant-000-main\",label_tenant=\"tenant-000\",job=\"kube-state-metrics\",instance=\"kube-state-metrics:8080\"} 1 1709251200.000\n"
        ));
        assert!(text.contains(
            "\nup{job=\"kube-state-metrics\",instance=\"kube-state-metrics:8080\"} 1 1709251215.000\n"
        ));
        // Counters start at zero at the pods' birth (= start) and the first sample is at start.
        assert!(text.contains("container_cpu_usage_seconds_total{namespace=\"tenant-000-main\","));
        assert!(text.contains("} 0 1709251200.000\n"));

        let (order, samples) = parse_samples(&text);
        // 2 minutes at 15 s, no jitter, no traps: 8 samples per series.
        for (series, s) in &samples {
            assert_eq!(s.len(), 8, "{series}");
            assert!(s.windows(2).all(|w| w[1].0 - w[0].0 == 15_000));
        }
        assert_eq!(order.len(), cluster.series_count());
        // Series of a family are contiguous, families in order.
        let fams: Vec<&str> = order.iter().map(|s| &s[..s.find('{').unwrap()]).collect();
        let mut seen: Vec<&str> = Vec::new();
        for f in fams {
            if seen.last() != Some(&f) {
                assert!(!seen.contains(&f), "family {f} interleaved");
                seen.push(f);
            }
        }
        // Requests are decimal cores.
        let cpu_req = samples
            .iter()
            .find(|(k, _)| k.contains("resource=\"cpu\""))
            .unwrap();
        let v = cpu_req.1[0].1;
        assert!((0.1..=2.0).contains(&v) && ((v * 1000.0).round() as i64) % 50 == 0);
    }

    #[test]
    fn trap_cluster_series_and_timestamps() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(4, 11, start, start + chrono::Duration::hours(3));
        let cluster = Cluster::generate(&spec);
        let text = om(&cluster);
        let (_, samples) = parse_samples(&text);

        // Namespaces and labels.
        assert_eq!(cluster.namespaces_of("tenant-001").len(), 2);
        assert!(text.contains(
            "kube_namespace_labels{namespace=\"ops-shared\",job=\"kube-state-metrics\",instance=\"kube-state-metrics:8080\"} 1 "
        ));
        assert!(
            text.contains("kube_namespace_labels{namespace=\"ghost-apps\",label_tenant=\"ghost\",")
        );

        // Per-series timestamps: strictly increasing, jittered within ±2 s of the grid.
        let interval = 15_000;
        let s0 = start.timestamp_millis();
        let missing = cluster.traps().missing_scrape.unwrap().timestamp_millis();
        let mut jittered = 0;
        for (series, s) in &samples {
            assert!(s.windows(2).all(|w| w[1].0 > w[0].0), "{series}");
            for (ts, _) in s {
                let k = ((ts - s0) as f64 / interval as f64).round() as i64;
                let off = ts - (s0 + k * interval);
                assert!(off.abs() <= 2000, "{series} {ts}");
                assert_ne!(s0 + k * interval, missing, "sample at the missing scrape");
                if off != 0 {
                    jittered += 1;
                }
                assert!(*ts >= s0 && *ts < cluster.end);
            }
        }
        assert!(jittered > 0);

        // Pod-level network is exported twice with the same value.
        let net: Vec<_> = samples
            .keys()
            .filter(|k| k.starts_with("container_network_transmit_bytes_total"))
            .collect();
        assert!(net.iter().any(|k| k.contains("container=\"\"")));
        assert!(net.iter().any(|k| k.contains("container=\"POD\"")));
        assert!(net.iter().all(|k| k.contains("interface=\"eth0\"")));

        // The replaced pod: the old one's samples stop before X, the new one's start after.
        let rep = cluster.traps().replacement.clone().unwrap();
        let old_key = samples
            .keys()
            .find(|k| {
                k.starts_with("container_cpu_usage_seconds_total")
                    && k.contains(&format!("pod=\"{}\"", rep.old_pod))
            })
            .unwrap();
        let new_key = samples
            .keys()
            .find(|k| {
                k.starts_with("container_cpu_usage_seconds_total")
                    && k.contains(&format!("pod=\"{}\"", rep.new_pod))
            })
            .unwrap();
        assert!(samples[old_key].last().unwrap().0 < rep.old_stopped_at.timestamp_millis());
        assert!(samples[new_key][0].0 >= rep.new_started_at.timestamp_millis());
        assert!(samples[new_key][0].1 < 100.0);
    }

    #[test]
    fn the_crossing_namespace_steps_across_its_requests_every_quarter_hour_and_a_scrape_is_lost_at_a_step(
    ) {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(6, 42, start, start + chrono::Duration::days(1));
        let cluster = Cluster::generate(&spec);
        let traps = cluster.traps();
        let missing = traps.missing_scrape.unwrap().timestamp_millis();
        assert_eq!(missing % HOUR_MS, 0, "the lost scrape is at a step");
        let name = traps.crossing_namespace.clone().unwrap();
        assert_eq!(name, "tenant-004-main");
        let ns = cluster.namespaces.iter().find(|n| n.name == name).unwrap();
        let containers: Vec<&Container> = ns.pods.iter().flat_map(|p| &p.containers).collect();
        assert!(!containers.is_empty());
        assert_eq!(
            HOUR_MS % CROSSING_SPAN_MS,
            0,
            "it steps at hour boundaries too"
        );
        for c in containers {
            for k in 0..24 * HOUR_MS / CROSSING_SPAN_MS {
                let at = start.timestamp_millis() + k * CROSSING_SPAN_MS;
                let (before, after) = (c.cpu_usage_m.value_at(at - 1), c.cpu_usage_m.value_at(at));
                let request = c.cpu_request_m;
                // Well above the request, then well below it (or the reverse).
                let (high, low) = (before.max(after), before.min(after));
                assert!(
                    k == 0 || (high >= request * 13 / 10 && low <= request * 7 / 10),
                    "{} at {at}: {before} then {after}, request {request}",
                    c.name
                );
                // Constant in between.
                assert_eq!(c.cpu_usage_m.value_at(at + CROSSING_SPAN_MS - 1), after);
            }
        }
        // Windows on either side of a step bill the request, then the usage (or the reverse):
        // the truth is the max per window.
        let w = |m: i64| cluster.window_truth(start + chrono::Duration::minutes(m), 300);
        let tenant = Owner::Tenant("tenant-004".into());
        let (a, b) = (
            w(55)[&(tenant.clone(), Meter::Cpu)],
            w(60)[&(tenant, Meter::Cpu)],
        );
        assert_ne!(a, b);
    }

    #[test]
    fn pod_level_aggregate_is_the_sum_of_containers() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(3, 5, start, start + chrono::Duration::hours(30));
        let cluster = Cluster::generate(&spec);
        let at = start + chrono::Duration::seconds(26 * 3600 + 17);
        let text = cluster.render_exposition(at);
        assert!(text.contains("# TYPE container_cpu_usage_seconds_total counter\n"));
        let mut per_pod: Map<(String, String), (f64, f64)> = Map::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("container_memory_working_set_bytes{"))
        {
            let pod = line
                .split("pod=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let container = line
                .split("container=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap();
            let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            let e = per_pod.entry((pod.to_owned(), String::new())).or_default();
            if container.is_empty() {
                e.0 += v;
            } else {
                e.1 += v;
            }
        }
        assert!(!per_pod.is_empty());
        for (pod, (agg, sum)) in per_pod {
            assert_eq!(agg, sum, "{pod:?}");
        }
        // No timestamps in the exposition.
        assert!(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| l.split(' ').count() == 2));
    }

    #[test]
    fn counter_resets_to_zero_after_restart() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(5, 42, start, start + chrono::Duration::hours(2));
        let cluster = Cluster::generate(&spec);
        let r = cluster.traps().restart.clone().unwrap();
        let text = om(&cluster);
        let (_, samples) = parse_samples(&text);
        let key = samples
            .keys()
            .find(|k| {
                k.starts_with("container_cpu_usage_seconds_total")
                    && k.contains(&format!("pod=\"{}\"", r.pod))
                    && k.contains(&format!("container=\"{}\"", r.container))
            })
            .unwrap();
        let s = &samples[key];
        let at = r.at.timestamp_millis();
        let before = s.iter().rfind(|(ts, _)| *ts < at).unwrap();
        let after = s.iter().find(|(ts, _)| *ts >= at).unwrap();
        assert!(before.1 > 0.0, "{before:?}");
        assert!(after.1 < before.1);
        // Exactly the usage since the restart.
        let c = cluster
            .namespaces
            .iter()
            .flat_map(|ns| &ns.pods)
            .find(|p| p.name == r.pod)
            .unwrap()
            .containers
            .iter()
            .find(|c| c.name == r.container)
            .unwrap();
        let expected = c.cpu_usage_m.integral(at, after.0) as f64 / 1e6;
        assert!(
            (after.1 - expected).abs() < 1e-9,
            "{} vs {expected}",
            after.1
        );
        // And increasing again afterwards.
        let later: Vec<_> = s.iter().filter(|(ts, _)| *ts >= at).collect();
        assert!(later.windows(2).all(|w| w[1].1 >= w[0].1));
        // The pod-level aggregate does not reset.
        let agg = samples
            .keys()
            .find(|k| {
                k.starts_with("container_cpu_usage_seconds_total")
                    && k.contains(&format!("pod=\"{}\"", r.pod))
                    && k.contains("container=\"\"")
            })
            .unwrap();
        assert!(samples[agg].windows(2).all(|w| w[1].1 >= w[0].1));
    }

    #[test]
    fn ranges_partition_the_output() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(3, 21, start, start + chrono::Duration::hours(3));
        let cluster = Cluster::generate(&spec);
        let (_, all) = parse_samples(&om(&cluster));
        let mut parts: Samples = Map::new();
        let cuts = [0, 3600, 5400 + 7, 3 * 3600];
        for w in cuts.windows(2) {
            let mut out = Vec::new();
            cluster
                .write_openmetrics_range(
                    &mut out,
                    start + chrono::Duration::seconds(w[0]),
                    start + chrono::Duration::seconds(w[1]),
                )
                .unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(text.ends_with("# EOF\n"));
            for (k, v) in parse_samples(&text).1 {
                parts.entry(k).or_default().extend(v);
            }
        }
        assert_eq!(all, parts);
    }

    #[test]
    fn small_and_odd_specs_work() {
        let start = t("2024-03-01T00:00:00Z");
        for tenants in [0, 1, 2] {
            for minutes in [1, 90] {
                let spec = ClusterSpec::new(
                    tenants,
                    3,
                    start,
                    start + chrono::Duration::minutes(minutes),
                );
                let cluster = Cluster::generate(&spec);
                let text = om(&cluster);
                assert!(text.ends_with("# EOF\n"));
                let truth = cluster.truth(60);
                assert!(
                    truth.unallocated("ops-shared", Meter::Cpu, start.date_naive()) > Decimal::ZERO
                );
                assert_eq!(cluster.tenant_ids().len(), tenants);
            }
        }
        // A window that does not divide the scrape grid, and jitter larger than allowed.
        let spec = ClusterSpec::new(2, 4, start, start + chrono::Duration::minutes(30))
            .with_scrape_interval_s(7)
            .with_jitter_s(10);
        let (_, samples) = parse_samples(&om(&Cluster::generate(&spec)));
        for s in samples.values() {
            assert!(s.windows(2).all(|w| w[1].0 > w[0].0));
        }
    }

    #[test]
    fn same_seed_same_output() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(6, 99, start, start + chrono::Duration::hours(1));
        let a = om(&Cluster::generate(&spec));
        let b = om(&Cluster::generate(&spec));
        assert_eq!(a, b);
        let other = om(&Cluster::generate(&ClusterSpec {
            seed: 100,
            ..spec.clone()
        }));
        assert_ne!(a, other);
        let ta = Cluster::generate(&spec).truth(300);
        let tb = Cluster::generate(&spec).truth(300);
        assert_eq!(ta, tb);
    }

    /// One namespace, one pod with one container that lives for the second half of a 300 s
    /// window only: request 1 core, usage 0.5 core.
    fn hand_cluster() -> Cluster {
        let w0 = Utc
            .with_ymd_and_hms(2024, 3, 1, 23, 55, 0)
            .unwrap()
            .timestamp_millis();
        let start = w0;
        let end = w0 + 600_000; // two 300 s windows, the second on the next day
        let spec =
            ClusterSpec::new(1, 0, ms_to_datetime(start), ms_to_datetime(end)).with_traps(false);
        let ns = Namespace {
            name: "tenant-000-main".into(),
            label_tenant: Some("tenant-000".into()),
            ksm_labels: vec![("label_tenant".into(), "tenant-000".into())],
            created: start,
            pvcs_from: start,
            owner: Owner::Tenant("tenant-000".into()),
            pods: vec![Pod {
                name: "api-x-y".into(),
                node: 0,
                born: w0 + 150_000,
                died: end,
                containers: vec![Container {
                    name: "api".into(),
                    cpu_request_m: 1000,
                    cpu_usage_m: Profile::Const(500),
                    mem_request: 1000,
                    mem_working_set: Profile::Const(3000),
                    gpus: 1,
                    restarts: vec![],
                }],
                net_tx: Profile::Const(2000),
                pause_cpu_m: Profile::Const(1),
                pause_mem: Profile::Const(4096),
            }],
            pvcs: vec![Pvc {
                name: "data".into(),
                bytes: 1 << 30,
            }],
        };
        let tenants = vec![TenantModel {
            id: "tenant-000".into(),
            namespaces: vec!["tenant-000-main".into()],
        }];
        Cluster::assemble(
            spec,
            start,
            end,
            15_000,
            0,
            None,
            tenants,
            vec![ns],
            TrapInfo::default(),
        )
    }

    #[test]
    fn truth_of_a_hand_computed_case() {
        let cluster = hand_cluster();
        let truth = cluster.truth(300);
        let d1 = NaiveDate::from_ymd_opt(2024, 3, 1).unwrap();
        let d2 = NaiveDate::from_ymd_opt(2024, 3, 2).unwrap();
        let q = |m, d| truth.quantity("tenant-000", m, d);
        // Window 1 (23:55-00:00): alive 150 s. cpu: max(1 × 150, 0.5 × 150) = 150 core-seconds,
        // i.e. max(avg request 0.5, avg usage 0.25) × 300.
        assert_eq!(q(Meter::Cpu, d1), Decimal::from(150));
        // memory: max(1000 × 150, 3000 × 150) byte-seconds.
        assert_eq!(q(Meter::Memory, d1), Decimal::from(450_000));
        assert_eq!(q(Meter::Gpu, d1), Decimal::from(150));
        assert_eq!(q(Meter::NetworkEgress, d1), Decimal::from(300_000));
        // The PVC exists for the whole window.
        assert_eq!(q(Meter::Storage, d1), Decimal::from((1i64 << 30) * 300));
        // Window 2 (00:00-00:05) is on the next day and full.
        assert_eq!(q(Meter::Cpu, d2), Decimal::from(300));
        assert_eq!(q(Meter::NetworkEgress, d2), Decimal::from(600_000));
        assert_eq!(truth.days(), vec![d1, d2]);
        assert_eq!(truth.quantity("tenant-001", Meter::Cpu, d1), Decimal::ZERO);

        // A 1000 s window aligned to the epoch, [23:50:00, 00:06:40), crosses midnight: it
        // holds the whole life of the pod (450 s) and is attributed to the day of its start.
        let t1000 = cluster.truth(1000);
        assert_eq!(
            t1000.quantity("tenant-000", Meter::Cpu, d1),
            Decimal::from(450)
        );
        assert_eq!(t1000.quantity("tenant-000", Meter::Cpu, d2), Decimal::ZERO);
        assert_eq!(t1000.days(), vec![d1]);

        // The same from window_truth.
        let w = cluster.window_truth(ms_to_datetime(cluster.start), 300);
        assert_eq!(
            w[&(Owner::Tenant("tenant-000".into()), Meter::Cpu)],
            Decimal::from(150)
        );
        // The pause container is not billed and the counter in the OpenMetrics output agrees.
        let text = om(&cluster);
        assert!(text.contains(
            "container_cpu_usage_seconds_total{namespace=\"tenant-000-main\",pod=\"api-x-y\",container=\"api\",job=\"kubelet\",instance=\"node-0:10250\"} 7.5 1709337465.000\n"
        ), "{text}");
    }

    #[test]
    fn truth_with_hourly_usage_above_request() {
        // usage alternating per hour; a window crossing an hour boundary takes the max of the
        // integrals, not of each part.
        let p = Profile::hourly(3, 100, 3000, 1);
        let h = 10 * HOUR_MS;
        let a = p.value_at(h - 1);
        let b = p.value_at(h);
        assert_eq!(
            p.integral(h - 1000, h + 2000),
            i128::from(a) * 1000 + i128::from(b) * 2000
        );
    }

    #[test]
    fn truth_covers_unallocated_namespaces() {
        let start = t("2024-03-01T00:00:00Z");
        let spec = ClusterSpec::new(3, 8, start, start + chrono::Duration::hours(4));
        let cluster = Cluster::generate(&spec);
        let truth = cluster.truth(3600);
        let day = start.date_naive();
        assert!(truth.unallocated("ops-shared", Meter::Cpu, day) > Decimal::ZERO);
        assert!(truth.unallocated("ghost", Meter::Memory, day) > Decimal::ZERO);
        assert_eq!(truth.quantity("ghost", Meter::Cpu, day), Decimal::ZERO);
        assert_eq!(
            cluster.tenant_ids(),
            vec!["tenant-000", "tenant-001", "tenant-002"]
        );
        // Every tenant is billed cpu, memory and network; some tenant GPUs and storage.
        for id in cluster.tenant_ids() {
            for m in [Meter::Cpu, Meter::Memory, Meter::NetworkEgress] {
                assert!(truth.quantity(id, m, day) > Decimal::ZERO, "{id} {m}");
            }
        }
        assert!(truth
            .rows()
            .any(|r| r.meter == Meter::Gpu && r.owner.tenant().is_some()));
        assert!(truth
            .rows()
            .any(|r| r.meter == Meter::Storage && r.owner.tenant().is_some()));
        // Truth over windows of different sizes sums to the same for linear meters.
        let t300 = cluster.truth(300);
        for id in cluster.tenant_ids() {
            for m in [Meter::Storage, Meter::NetworkEgress, Meter::Gpu] {
                assert_eq!(t300.tenant_total(id, m), truth.tenant_total(id, m));
            }
            // max() per window: smaller windows bill at least as much.
            assert!(t300.tenant_total(id, Meter::Cpu) >= truth.tenant_total(id, Meter::Cpu));
        }
    }

    #[test]
    fn namespace_labels_are_named_as_kube_state_metrics_names_them() {
        let labels: BTreeMap<String, String> = [
            ("tenant", "shop"),
            ("budgetd.io/residency", "eu"),
            ("app.kubernetes.io/managed-by", "budgetd"),
            ("teamName", "payments"),
            ("a.b", "1"),
            ("a_b", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let exported = kube_state_metrics_labels(&labels);
        let exported: Vec<(&str, &str)> = exported
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            exported,
            [
                ("label_a_b_conflict1", "1"),
                ("label_a_b_conflict2", "2"),
                ("label_app_kubernetes_io_managed_by", "budgetd"),
                ("label_budgetd_io_residency", "eu"),
                ("label_team_name", "payments"),
                ("label_tenant", "shop"),
            ]
        );
    }

    #[test]
    fn an_added_namespace_changes_nothing_else_and_starts_when_it_is_created() {
        let start = t("2024-03-01T00:00:00Z");
        let end = start + chrono::Duration::hours(2);
        let created = start + chrono::Duration::minutes(40);
        let workload_from = start + chrono::Duration::minutes(52);
        let base_spec = ClusterSpec::new(3, 17, start, end);
        let base = Cluster::generate(&base_spec);
        let added = AddedNamespace {
            name: "shop".to_owned(),
            labels: [("tenant", "shop"), ("budgetd.io/residency", "eu")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            created,
            workload_from,
        };
        let cluster = Cluster::generate(&base_spec.clone().with_namespace(added));
        let range = |c: &Cluster, from, to| {
            let mut out = Vec::new();
            c.write_openmetrics_range(&mut out, from, to).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(
            range(&cluster, start, created),
            range(&base, start, created)
        );
        assert_eq!(cluster.tenant_ids(), base.tenant_ids());
        assert_eq!(cluster.traps(), base.traps());

        // Its namespace series from `created`, labelled as the object is; its workload from
        // `workload_from`.
        let (_, samples) = parse_samples(&om(&cluster));
        let ns_series = "kube_namespace_labels{namespace=\"shop\",label_budgetd_io_residency=\"eu\",label_tenant=\"shop\",job=\"kube-state-metrics\",instance=\"kube-state-metrics:8080\"}";
        // The first scrape at or after it (jittered by up to 2 s with traps).
        let first_scrape = |series: &str, from: DateTime<Utc>| {
            let after = samples[series][0].0 - from.timestamp_millis();
            (0..17_000).contains(&after)
        };
        assert!(
            samples.contains_key(ns_series) && first_scrape(ns_series, created),
            "{:?}",
            samples
                .keys()
                .filter(|k| k.contains("shop"))
                .collect::<Vec<_>>()
        );
        let workload: Vec<&String> = samples
            .keys()
            .filter(|k| k.contains("namespace=\"shop\"") && !k.starts_with("kube_namespace_labels"))
            .collect();
        assert!(!workload.is_empty());
        for k in workload {
            assert!(first_scrape(k, workload_from), "{k}");
        }

        // Truth: the others' is unchanged; the new tenant has none before its workload.
        let truth = cluster.truth(300);
        let base_truth = base.truth(300);
        let others: Vec<_> = truth
            .rows()
            .filter(|r| r.owner.tenant() != Some("shop"))
            .map(|r| (r.owner.clone(), r.meter, r.day, r.quantity))
            .collect();
        let all_base: Vec<_> = base_truth
            .rows()
            .map(|r| (r.owner.clone(), r.meter, r.day, r.quantity))
            .collect();
        assert_eq!(others, all_base);
        let shop = Owner::Tenant("shop".to_owned());
        let before = cluster.window_truth(start + chrono::Duration::minutes(45), 300);
        assert!(before.keys().all(|(o, _)| *o != shop), "{before:?}");
        let first = cluster.window_truth(start + chrono::Duration::minutes(50), 300);
        let whole = cluster.window_truth(start + chrono::Duration::minutes(55), 300);
        // Alive 180 of the first window's 300 s (requests, gauges and PVCs are linear in time).
        for meter in [Meter::Storage, Meter::Gpu] {
            let (a, b) = (
                first.get(&(shop.clone(), meter)),
                whole.get(&(shop.clone(), meter)),
            );
            assert_eq!(
                a.copied().map(|q| q * Decimal::from(5)),
                b.copied().map(|q| q * Decimal::from(3)),
                "{meter}"
            );
        }
        assert!(first[&(shop.clone(), Meter::Cpu)] > Decimal::ZERO);
    }

    #[test]
    fn formatting_helpers() {
        let f = |v: i128, s: u32| {
            let mut b = Vec::new();
            push_scaled(&mut b, v, s);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(f(0, 6), "0");
        assert_eq!(f(7_500_000, 6), "7.5");
        assert_eq!(f(1, 6), "0.000001");
        assert_eq!(f(1234, 0), "1234");
        assert_eq!(f(250, 3), "0.25");
        assert_eq!(f(1_709_251_200_120, 3), "1709251200.12");
        let ts = |v: i64| {
            let mut b = Vec::new();
            push_timestamp(&mut b, v);
            String::from_utf8(b).unwrap()
        };
        assert_eq!(ts(1_709_251_200_120), "1709251200.120");
        assert_eq!(ts(1_709_251_200_000), "1709251200.000");
        assert_eq!(ts(1_709_251_200_007), "1709251200.007");
        assert_eq!(div_ceil(-1, 15), 0);
        assert_eq!(div_ceil(1, 15), 1);
        assert_eq!(div_ceil(15, 15), 1);
        assert_eq!(div_ceil(-16, 15), -1);
    }
}
