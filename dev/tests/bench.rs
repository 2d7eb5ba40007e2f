//! Smoke tests of the benchmarks: each runs `budgetd-dev bench ...` small against the test
//! cluster that `scripts/test.sh` starts and checks that its figures are printed.

use std::process::{Command, Stdio};

use testkit::db::admin_url;

/// Runs `budgetd-dev bench <args>` against the test cluster; its stdout, after checking it succeeded.
fn run_bench(args: &[&str]) -> String {
    let admin = admin_url();
    let output = Command::new(env!("CARGO_BIN_EXE_budgetd-dev"))
        .arg("bench")
        .args(&args[..1])
        .args(["--database-url", &admin])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn bench_ledger_prints_its_figures_against_in_run_baselines() {
    let stdout = run_bench(&[
        "ledger",
        "--tenants",
        "40",
        "--finance-tenants",
        "3",
        "--finance-days",
        "1",
        "--big-window-tenants",
        "60",
    ]);
    for figure in [
        "ratio write/COPY(indexes)",
        "rewrite (all no-ops)",
        "bytes per entry",
        "rate ratio loaded/empty",
        "large window: 60 tenants",
        "finance.tenant_costs_monthly",
    ] {
        assert!(stdout.contains(figure), "missing {figure:?} in:\n{stdout}");
    }
}

#[test]
fn bench_collector_prints_its_figures_against_in_run_baselines() {
    let stdout = run_bench(&[
        "collector",
        "--tenants",
        "20",
        "--backfill-tenants",
        "2",
        "--backfill-days",
        "1",
        "--catchup-tenants",
        "20",
        "--catchup-hours",
        "1",
    ]);
    for figure in [
        "ratio collector/plain HTTP",
        "windows/s",
        "daemon peak resident memory, one window",
        "catch-up of 24 h after an outage",
        "EXTRAPOLATED: 1 h measured",
        "catch-up: queries timed out",
        "in Prometheus' queries",
    ] {
        assert!(stdout.contains(figure), "missing {figure:?} in:\n{stdout}");
    }
}

#[test]
fn bench_enforcer_prints_its_figures_against_an_in_run_baseline() {
    let stdout = run_bench(&["enforcer", "--tenants", "40,60", "--rounds", "2"]);
    // Each figure's line starts with its label and the number follows it.
    for label in [
        "plain SELECT of the spent sums",
        "status + plan, a cycle after a window",
        "refresh_statuses (incremental)",
        "plan (pure)",
        "ratio (status + plan)/plain",
        "status + plan, a full read",
        "refresh_statuses (full: the SQL function)",
        "plain SELECT of the status' inputs",
        "ratio cycle after a window/inputs",
        "ratio full read/inputs",
    ] {
        let line = stdout
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("missing {label:?} in:\n{stdout}"));
        let value: f64 = line[label.len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"));
        assert!(value.is_finite() && value >= 0.0, "{line}");
    }
    for context in [
        "target <= 100 ms",
        "target <= 2.0",
        "day ",
        "data: 40 tenants",
        "data: 60 tenants",
        "summary:",
    ] {
        assert!(
            stdout.contains(context),
            "missing {context:?} in:\n{stdout}"
        );
    }
}

#[test]
fn bench_lifecycle_approves_provisions_and_resyncs_without_writes() {
    let stdout = run_bench(&[
        "lifecycle",
        "--tenants",
        "20",
        "--resync-tenants",
        "50",
        "--concurrency",
        "4",
    ]);
    let line = |label: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("missing {label:?} in:\n{stdout}"))
            .to_owned()
    };
    let provision = line("approve+provision");
    for figure in [
        "20 tenants",
        "tenants/s",
        "approvals alone",
        "baseline 20 GETs",
    ] {
        assert!(
            provision.contains(figure),
            "{figure:?} not in {provision:?}"
        );
    }
    // The bench itself fails unless every blueprint was applied and every tenant converged;
    // a resync without drift writes nothing.
    let resync = line("resync");
    assert!(
        resync.contains("50 tenants") && resync.contains(" 0 writes"),
        "{resync}"
    );
    assert!(resync.contains("baseline ledger reads"), "{resync}");
}

#[test]
fn bench_kafka_publishes_a_backlog_in_order_against_raw_produce() {
    let stdout = run_bench(&["kafka", "--events", "2000", "--tenants", "50"]);
    for figure in [
        "raw produce (baseline)",
        "relay (outbox → Kafka)",
        "ratio relay/raw produce",
        "per-tenant order          held: 50 tenants, 2000 events consumed",
    ] {
        assert!(stdout.contains(figure), "missing {figure:?} in:\n{stdout}");
    }
}

#[test]
fn bench_meter_queries_prints_accuracy_and_cost_against_the_baseline_meters() {
    let output = Command::new(env!("CARGO_BIN_EXE_budgetd-dev"))
        .args(["bench", "meter-queries", "--tenants", "20", "--rounds", "1"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The trap cluster: the current meters within 0.1% per tenant, meter and day; the meters
    // before issue 13 measured on the same data, and beyond it (the crossing trap catches their
    // cpu meter).
    let accuracy = |set: &str| {
        stdout
            .lines()
            .map(str::trim_start)
            .find(|l| l.starts_with(set) && l.contains("cpu "))
            .unwrap_or_else(|| panic!("no accuracy line of {set} in:\n{stdout}"))
            .to_owned()
    };
    assert!(accuracy("current").ends_with("PASS"), "{stdout}");
    assert!(accuracy("baseline").ends_with("MISS"), "{stdout}");
    for figure in ["cpu + memory", "all meters", "as one range query"] {
        assert!(stdout.contains(figure), "missing {figure:?} in:\n{stdout}");
    }
}
