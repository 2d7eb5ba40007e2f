//! budgetd's test kit: every test double and fixture generator, for the workspace's tests and
//! the dev binary (`budgetd-dev`: benchmarks and demo servers). Never a normal dependency of
//! the product.
//!
//! - `db`: a fresh migrated database per test, scratch databases for benchmarks;
//! - `clock`: fixed instants, so that no test depends on the day it runs;
//! - `synthetic`: a deterministic kube-prometheus-stack cluster with exact ground truth;
//! - `prometheus`: promtool blocks and a Prometheus process serving them;
//! - `alertmanager`: a real Alertmanager process;
//! - `fake_kube`: a stateful fake Kubernetes API server;
//! - `fault`: injected failures of the two fakes (`Fault`, re-exported by both);
//! - `fake_grafana`: a stateful fake of Grafana's HTTP API (folders, dashboards, teams, data
//!   sources, permissions);
//! - `kube_calls`: the RBAC checks of budgetd's calls to it, recorded, and a ClusterRole
//!   compared with them;
//! - `kustomize`: `kubectl kustomize`, parsed (the deploy test, the ClusterRole check);
//! - `tcp_proxy`: a TCP proxy that forwards, refuses or swallows connections on command;
//! - `bench_sql`: the benchmarks' SQL besides the store (bulk loads, COPY, baseline queries);
//! - `BASELINE_METERS`: the collector's built-in meters before issue 13, which the synthetic
//!   cluster's traps must catch.

pub mod alertmanager;
pub mod bench_sql;
pub mod clock;
pub mod db;
pub mod fake_grafana;
pub mod fake_kube;
pub mod fault;
pub mod kube_calls;
pub mod kustomize;
pub mod prometheus;
pub mod synthetic;
pub mod tcp_proxy;

/// The lines of a log that another process is still writing, up to the last complete one: a
/// read can see a line half-written (`address=127.0.0.1:38` of `:38203`), so a line counts only
/// once its newline is there.
pub fn complete_lines(log: &str) -> impl Iterator<Item = &str> {
    log.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

/// The collector's built-in meters as they were before issue 13, as a configuration's
/// `[[meters]]` (`meters_baseline.toml`): the baseline of `budgetd-dev bench meter-queries`,
/// and what the collector's accuracy test checks the crossing trap against.
pub const BASELINE_METERS: &str = include_str!("meters_baseline.toml");

#[cfg(test)]
mod tests {
    use super::complete_lines;

    #[test]
    fn a_half_written_last_line_is_not_read() {
        let log = "level=info msg=\"Listening on\" address=127.0.0.1:38203\nlevel=info msg=\"Listening on\" address=127.0.0.1:38";
        assert_eq!(
            complete_lines(log).collect::<Vec<_>>(),
            ["level=info msg=\"Listening on\" address=127.0.0.1:38203"]
        );
        assert_eq!(
            complete_lines("a\n\nb\n").collect::<Vec<_>>(),
            ["a", "", "b"]
        );
        assert_eq!(complete_lines("").count(), 0);
    }
}
