//! `budgetd-dev check-cluster-role`: `deploy/`'s ClusterRole against the calls budgetd made to
//! the fake Kubernetes API across a whole test run (`testkit::kube_calls`). Every call must be
//! granted, and nothing more may be: a grant no test used is either dead weight in production
//! or a path the tests do not cover.

use std::path::Path;

use anyhow::{bail, Context};
use testkit::kube_calls::{compare, grants, read_dir};

pub fn check(calls_dir: &Path, deploy: &Path) -> anyhow::Result<()> {
    let calls = read_dir(calls_dir).map_err(anyhow::Error::msg)?;
    if calls.is_empty() {
        bail!(
            "no Kubernetes call was recorded in {} (was {} set for the whole test run?)",
            calls_dir.display(),
            testkit::kube_calls::CALLS_DIR_ENV
        );
    }
    let objects = testkit::kustomize::render(deploy).map_err(anyhow::Error::msg)?;
    let roles: Vec<_> = objects
        .iter()
        .filter(|o| o["kind"] == "ClusterRole")
        .collect();
    let [role] = roles.as_slice() else {
        bail!(
            "{} renders {} ClusterRoles, expected exactly one",
            deploy.display(),
            roles.len()
        );
    };
    let name = role["metadata"]["name"].as_str().unwrap_or("?");
    let granted = grants(role)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("ClusterRole {name}"))?;
    let comparison = compare(&calls, &granted);
    for call in &comparison.missing {
        eprintln!("not granted by ClusterRole {name}, but budgetd called it: {call}");
    }
    for grant in &comparison.unused {
        eprintln!("granted by ClusterRole {name}, but no test saw budgetd use it: {grant}");
    }
    if !comparison.is_exact() {
        bail!(
            "ClusterRole {name} ({}) does not match the {} calls recorded in {}: {} missing, {} unused",
            deploy.display(),
            calls.len(),
            calls_dir.display(),
            comparison.missing.len(),
            comparison.unused.len()
        );
    }
    println!(
        "ClusterRole {name} grants exactly the {} Kubernetes calls budgetd made in the test run:",
        calls.len()
    );
    for call in &calls {
        println!("  {call}");
    }
    Ok(())
}
