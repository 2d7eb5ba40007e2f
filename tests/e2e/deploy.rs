//! `deploy/`: the kustomization renders (`kubectl kustomize`), its objects apply by server-side
//! apply to the fake Kubernetes API and read back as applied, the Deployment runs budgetd as the
//! README says (replicas, probes, security context, Secret references the configuration reads),
//! the ConfigMap is a configuration `budgetd config show` accepts; and the alert rules: the
//! PrometheusRule holds the plain rules file's groups, every alert is documented, and every
//! metric they use is one a running `budgetd run` exports (or, for one that appears only after
//! an event, one the code emits), with the labels it has.

use crate::support::Daemon;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{json, Value};
use testkit::fake_kube::{fixture_header, FakeKube};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rendered() -> Vec<Value> {
    testkit::kustomize::render(&repo().join("deploy")).unwrap_or_else(|e| panic!("{e}"))
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} in deploy/, found {}",
        found.len()
    );
    found[0]
}

const CLUSTER_SCOPED: [&str; 3] = ["Namespace", "ClusterRole", "ClusterRoleBinding"];

fn api_for(client: &kube::Client, object: &Value) -> Api<DynamicObject> {
    let api_version = object["apiVersion"].as_str().expect("apiVersion");
    let kind = object["kind"].as_str().expect("kind");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    }
}

/// The fields an apply sets, without the metadata the server adds.
fn content(object: &Value) -> Value {
    let mut out = object.clone();
    let map = out.as_object_mut().expect("an object");
    map.remove("status");
    let metadata = &object["metadata"];
    map.insert(
        "metadata".into(),
        json!({ "name": metadata["name"], "namespace": metadata["namespace"], "labels": metadata["labels"] }),
    );
    out
}

#[tokio::test]
async fn the_kustomization_renders_and_applies_to_the_api_server() {
    let objects = rendered();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ];
    assert_eq!(kinds, expected.into_iter().collect());
    let namespace = one(&objects, "Namespace")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let ns = object["metadata"]["namespace"].as_str();
        if CLUSTER_SCOPED.contains(&kind) {
            assert_eq!(ns, None, "{kind} is cluster-scoped");
        } else {
            assert_eq!(
                ns,
                Some(namespace.as_str()),
                "{kind} {}",
                object["metadata"]["name"]
            );
        }
    }

    let fake = FakeKube::start().await;
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.headers.push(fixture_header());
    let client = kube::Client::try_from(config).unwrap();
    let params = PatchParams::apply("kubectl-kustomize").force();
    let mut versions = BTreeMap::new();
    for object in &objects {
        let name = object["metadata"]["name"].as_str().unwrap();
        let api = api_for(&client, object);
        let applied = api
            .patch(name, &params, &Patch::Apply(object))
            .await
            .unwrap_or_else(|e| panic!("apply {} {name}: {e}", object["kind"]));
        let read = api.get(name).await.unwrap();
        let read = serde_json::to_value(&read).unwrap();
        assert_eq!(
            content(&read),
            content(object),
            "{} {name} reads back as applied",
            object["kind"]
        );
        versions.insert(
            (object["kind"].to_string(), name.to_owned()),
            applied.metadata.resource_version.clone(),
        );
    }
    assert_eq!(fake.object_count(), objects.len());
    // applying the same rendering again changes nothing
    for object in &objects {
        let name = object["metadata"]["name"].as_str().unwrap();
        let again = api_for(&client, object)
            .patch(name, &params, &Patch::Apply(object))
            .await
            .unwrap();
        assert_eq!(
            again.metadata.resource_version,
            versions[&(object["kind"].to_string(), name.to_owned())],
            "{} {name} changed on a second apply",
            object["kind"]
        );
    }
    fake.shutdown().await;
}

#[test]
fn the_deployment_runs_two_hardened_replicas_with_probes_and_secret_references() {
    let objects = rendered();
    let deployment = one(&objects, "Deployment");
    let spec = &deployment["spec"];
    assert_eq!(spec["replicas"], 2);
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    let service_account = one(&objects, "ServiceAccount");
    assert_eq!(
        pod["serviceAccountName"],
        service_account["metadata"]["name"]
    );
    let binding = one(&objects, "ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"]["name"],
        one(&objects, "ClusterRole")["metadata"]["name"]
    );
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": service_account["metadata"]["name"], "namespace": service_account["metadata"]["namespace"] }])
    );

    let selects_pods = |selector: &Value| {
        let selector = selector.as_object().expect("a selector");
        assert!(!selector.is_empty());
        selector.iter().all(|(k, v)| &pod_labels[k] == v)
    };
    assert!(selects_pods(&spec["selector"]["matchLabels"]));
    assert!(selects_pods(&one(&objects, "Service")["spec"]["selector"]));
    assert!(selects_pods(
        &one(&objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    ));
    assert_eq!(
        one(&objects, "PodDisruptionBudget")["spec"]["minAvailable"],
        1
    );

    let config_map = one(&objects, "ConfigMap");
    let volumes = pod["volumes"].as_array().unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["configMap"]["name"] == config_map["metadata"]["name"]),
        "the generated ConfigMap ({}) is mounted",
        config_map["metadata"]["name"]
    );

    let known: BTreeSet<&str> = budgetd::config::ENV.iter().map(|v| v.name).collect();
    let containers: Vec<&Value> = pod["initContainers"]
        .as_array()
        .into_iter()
        .chain(pod["containers"].as_array())
        .flatten()
        .collect();
    assert_eq!(containers.len(), 2, "migrate and budgetd");
    let mut secrets = BTreeSet::new();
    for c in &containers {
        let name = c["name"].as_str().unwrap();
        let security = &c["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true, "{name}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]), "{name}");
        for field in ["requests", "limits"] {
            assert!(
                c["resources"][field]["memory"].is_string(),
                "{name}: resources.{field}.memory"
            );
        }
        assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
        assert_eq!(c["args"][0], "--config", "{name}");
        for env in c["env"].as_array().unwrap() {
            let var = env["name"].as_str().unwrap();
            assert!(
                known.contains(var),
                "{name}: {var} is not a variable budgetd reads"
            );
            assert!(
                env.get("value").is_none(),
                "{name}: {var} is a literal, not a Secret reference"
            );
            let secret = &env["valueFrom"]["secretKeyRef"];
            assert!(
                secret["name"].is_string() && secret["key"].is_string(),
                "{name}: {var}"
            );
            secrets.insert(var.to_owned());
        }
    }
    for var in [
        "BUDGETD_DATABASE_URL",
        "BUDGETD_MIGRATE_DATABASE_URL",
        "BUDGETD_PSEUDONYMISATION_KEY",
        "BUDGETD_BOOTSTRAP_ADMIN_TOKEN",
    ] {
        assert!(secrets.contains(var), "{var} from a Secret");
    }
    assert_eq!(
        containers[0]["args"].as_array().unwrap().last().unwrap(),
        "migrate"
    );
    let budgetd = containers[1];
    assert_eq!(budgetd["args"].as_array().unwrap().last().unwrap(), "run");
    let port = &budgetd["ports"][0];
    assert_eq!(
        (port["name"].as_str(), port["containerPort"].as_i64()),
        (Some("http"), Some(8080))
    );
    assert_eq!(budgetd["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(budgetd["startupProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(budgetd["readinessProbe"]["httpGet"]["path"], "/readyz");
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        assert_eq!(budgetd[probe]["httpGet"]["port"], "http", "{probe}");
    }
    assert_eq!(
        one(&objects, "Service")["spec"]["ports"][0]["targetPort"],
        "http"
    );
    let mounts = budgetd["volumeMounts"].as_array().unwrap();
    let kafka = volumes
        .iter()
        .find(|v| v["name"] == "kafka")
        .expect("the Kafka volume");
    assert!(kafka["secret"]["secretName"].is_string());
    assert!(mounts
        .iter()
        .any(|m| m["name"] == "kafka" && m["mountPath"] == "/etc/budgetd/kafka"));
}

#[test]
fn the_config_map_is_a_configuration_budgetd_accepts_and_the_role_binds_its_namespace_role() {
    let objects = rendered();
    let toml_text = one(&objects, "ConfigMap")["data"]["budgetd.toml"]
        .as_str()
        .expect("budgetd.toml in the ConfigMap")
        .to_owned();
    let dir = std::env::temp_dir().join(format!("budgetd-deploy-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("budgetd.toml");
    std::fs::write(&file, &toml_text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_budgetd"))
        .args(["--config", file.to_str().unwrap(), "config", "show"])
        .env_clear()
        .env(
            "BUDGETD_DATABASE_URL",
            "postgres://budgetd:secret@pgbouncer.db:5432/budgetd",
        )
        .env(
            "BUDGETD_MIGRATE_DATABASE_URL",
            "postgres://budgetd:secret@postgres.db:5432/budgetd",
        )
        .env(
            "BUDGETD_PSEUDONYMISATION_KEY",
            "0123456789abcdef0123456789abcdef",
        )
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "budgetd config show refused deploy/budgetd.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "provision = true",
        "listen = \"0.0.0.0:8080\"",
        "\"ssl.key.location\" = \"/etc/budgetd/kafka/tls.key\"",
    ] {
        assert!(shown.contains(line), "{line} in:\n{shown}");
    }
    assert!(!shown.contains("secret@"), "the passwords are not shown");
    std::fs::remove_dir_all(&dir).unwrap();

    // the blueprint binds the owner group to lifecycle.namespace_role: the only role the
    // ClusterRole lets budgetd bind
    let config: toml::Value = toml::from_str(&toml_text).unwrap();
    let role = config["lifecycle"]["namespace_role"].as_str().unwrap();
    let rules = one(&objects, "ClusterRole")["rules"]
        .as_array()
        .unwrap()
        .clone();
    let bind: Vec<&Value> = rules
        .iter()
        .filter(|r| r["verbs"].as_array().unwrap().contains(&json!("bind")))
        .collect();
    assert_eq!(bind.len(), 1);
    assert_eq!(bind[0]["resources"], json!(["clusterroles"]));
    assert_eq!(bind[0]["resourceNames"], json!([role]));
}

fn rules_file() -> Value {
    yaml(&repo().join("deploy/prometheus/budgetd-rules.yml"))
}

fn alerts(groups: &Value) -> Vec<Value> {
    groups["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules").clone())
        .collect()
}

#[test]
fn the_prometheus_rule_holds_the_rules_files_groups_and_every_alert_is_documented() {
    let plain = rules_file();
    let operator = yaml(&repo().join("deploy/prometheus-rules.yaml"));
    assert_eq!(operator["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], plain["groups"],
        "deploy/prometheus-rules.yaml must hold deploy/prometheus/budgetd-rules.yml's groups"
    );

    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let alerts = alerts(&plain);
    assert!(alerts.len() >= 10, "{} alerts", alerts.len());
    for alert in &alerts {
        let name = alert["alert"].as_str().expect("only alerting rules");
        assert!(alert["for"].is_string(), "{name}: for");
        let severity = alert["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{name}: severity {severity:?}"
        );
        for annotation in ["summary", "description"] {
            assert!(
                alert["annotations"][annotation].is_string(),
                "{name}: {annotation}"
            );
        }
        let anchor = name.to_lowercase();
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!("README.md#{anchor}"),
            "{name}: the runbook is its README section"
        );
        assert!(
            readme.lines().any(|l| l == format!("#### {name}")),
            "README has no section #### {name}"
        );
    }
}

/// The metric names in a PromQL expression, each with the label names it is matched on.
fn metrics_in(expr: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
        if !ident(bytes[i]) || (i > 0 && ident(bytes[i - 1])) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let word = &expr[start..i];
        if !word.starts_with("budgetd_") {
            continue;
        }
        let labels = out.entry(word.to_owned()).or_default();
        if expr[i..].starts_with('{') {
            let end = i + expr[i..].find('}').expect("a closed matcher");
            for matcher in expr[i + 1..end].split(',').filter(|m| !m.trim().is_empty()) {
                let name = matcher.split(['=', '!']).next().unwrap().trim().to_owned();
                labels.insert(name);
            }
            i = end;
        }
    }
    out
}

/// The label names of `by (...)`, `on (...)` and the like in an expression.
fn grouping_labels(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for keyword in [
        "by",
        "on",
        "without",
        "ignoring",
        "group_left",
        "group_right",
    ] {
        let mut rest = expr;
        while let Some(at) = rest.find(keyword) {
            let before_ok = at == 0
                || !rest.as_bytes()[at - 1].is_ascii_alphanumeric()
                    && rest.as_bytes()[at - 1] != b'_';
            let after = rest[at + keyword.len()..].trim_start();
            if before_ok && after.starts_with('(') {
                let end = after.find(')').unwrap();
                out.extend(
                    after[1..end]
                        .split(',')
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_owned),
                );
            }
            rest = &rest[at + keyword.len()..];
        }
    }
    out
}

/// Every metric the product's code emits (`metrics::counter!("name", "label" => ...)` and the
/// gauge and histogram macros), with its label names.
fn emitted_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for dir in [
        "src",
        "ledger/src",
        "collector/src",
        "enforcer/src",
        "lifecycle/src",
        "relay/src",
    ] {
        walk(&repo().join(dir), &mut files);
    }
    let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for kind in ["counter", "gauge", "histogram"] {
            let macro_call = format!("metrics::{kind}!(");
            let mut rest = text.as_str();
            while let Some(at) = rest.find(&macro_call) {
                rest = &rest[at + macro_call.len()..];
                // the invocation's text up to its closing parenthesis
                let mut depth = 1;
                let end = rest
                    .char_indices()
                    .find(|(_, c)| {
                        match c {
                            '(' => depth += 1,
                            ')' => depth -= 1,
                            _ => {}
                        }
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .expect("a closed macro call");
                let args = &rest[..end];
                let Some(name) = args
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|a| a.split('"').next())
                else {
                    continue;
                };
                let entry = out
                    .entry(name.to_owned())
                    .or_insert_with(|| (kind.to_owned(), BTreeSet::new()));
                for part in args.split("=>").take(args.matches("=>").count()) {
                    if let Some(label) = part
                        .trim_end()
                        .strip_suffix('"')
                        .and_then(|p| p.rsplit('"').next())
                    {
                        entry.1.insert(label.to_owned());
                    }
                }
            }
        }
    }
    out
}

/// The series of a Prometheus text exposition: name → label names.
fn exposition(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let end = name_end + line[name_end..].find('}').unwrap();
            for pair in line[name_end + 1..end].split("\",") {
                if let Some((label, _)) = pair.split_once('=') {
                    labels.insert(label.trim().to_owned());
                }
            }
        }
    }
    out
}

fn start_daemon(dir: &Path, db_url: &str, kube: &str) -> Daemon {
    let env = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run through scripts/test.sh"))
    };
    let config = dir.join("budgetd.toml");
    let start = (chrono::Utc::now() - chrono::Duration::minutes(5)).format("%Y-%m-%dT%H:%M:00Z");
    std::fs::write(
        &config,
        format!(
            r#"[database]
url = "{db_url}"

[prometheus]
url = "{prometheus}"
timeout_ms = 2000

[collector]
window_seconds = 60
settle_seconds = 75
start = "{start}"

[collector.retry]
max_attempts = 1

[alertmanager]
urls = ["{alertmanager}"]

[enforcement]
interval_seconds = 1

[kubernetes]
api_url = "{kube}"

[lifecycle]
provision = true

[lifecycle.reconciler]
poll_interval_ms = 100

[price_book.seed]
valid_from = "2026-01-01T00:00:00Z"
currency = "EUR"

[price_book.seed.rates]
cpu = "0.031"
memory = "0.004"
storage = "0.00014"
network_egress = "0.05"
gpu = "1.20"
"#,
            prometheus = env("BUDGETD_TEST_PROMETHEUS_URL"),
            alertmanager = env("BUDGETD_TEST_ALERTMANAGER_URL"),
        ),
    )
    .unwrap();
    Daemon::run(dir, &config, &[])
}

/// The metrics the rules evaluate all the time: a leading daemon exports them without any
/// event (the histogram's `_count` once the collector has asked Prometheus).
const ALWAYS_EXPORTED: [&str; 4] = [
    "budgetd_leader",
    "budgetd_collector_lag_seconds",
    "budgetd_reconciler_oldest_pending_age_seconds",
    "budgetd_prometheus_request_duration_seconds_count",
];

#[tokio::test]
async fn every_metric_in_the_alert_rules_is_one_budgetd_exports_with_its_labels() {
    let db = testkit::db::fresh_database().await;
    let kube = FakeKube::start().await;
    let dir = std::env::temp_dir().join(format!("budgetd-deploy-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let daemon = start_daemon(&dir, &db.url, &kube.url());

    let started = Instant::now();
    let exported = loop {
        let text = match reqwest::get(format!("{}/metrics", daemon.api)).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let series = exposition(&text);
        if ALWAYS_EXPORTED.iter().all(|m| series.contains_key(*m))
            && text.contains("budgetd_leader 1")
        {
            break series;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "budgetd run did not export {ALWAYS_EXPORTED:?} while leading within 90 s; /metrics:\n{text}\nlog:\n{}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let emitted = emitted_metrics();
    // Prometheus adds these to every series it scrapes
    let target_labels: BTreeSet<String> = ["instance", "job"].map(String::from).into();

    let mut checked = BTreeSet::new();
    for alert in alerts(&rules_file()) {
        let name = alert["alert"].as_str().unwrap();
        let expr = alert["expr"].as_str().unwrap();
        let used = metrics_in(expr);
        assert!(!used.is_empty(), "{name}: no budgetd metric in {expr}");
        let mut available = target_labels.clone();
        for (metric, labels) in &used {
            let has = match exported.get(metric) {
                Some(labels) => labels.clone(),
                None => {
                    let histogram_base = ["_count", "_sum", "_bucket"]
                        .iter()
                        .find_map(|s| metric.strip_suffix(s))
                        .filter(|base| emitted.get(*base).is_some_and(|(k, _)| k == "histogram"));
                    let (_, labels) = emitted
                        .get(histogram_base.unwrap_or(metric))
                        .unwrap_or_else(|| panic!("{name}: {metric} is neither on a running budgetd's /metrics nor emitted by its code"));
                    labels.clone()
                }
            };
            for label in labels {
                assert!(
                    has.contains(label) || target_labels.contains(label),
                    "{name}: {metric} has no label {label:?} (it has {has:?})"
                );
            }
            available.extend(has);
            checked.insert(metric.clone());
        }
        for label in grouping_labels(expr) {
            assert!(
                available.contains(&label),
                "{name}: no metric in {expr} has the label {label:?}"
            );
        }
    }
    for metric in ALWAYS_EXPORTED {
        assert!(checked.contains(metric), "the rules use {metric}");
    }
    assert!(checked.len() >= 10, "{checked:?}");
    drop(daemon);
    kube.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_rule_parsers_find_metrics_labels_and_emitted_names() {
    let used = metrics_in(
        r#"sum by (replica) (rate(budgetd_alertmanager_requests_total{outcome!="ok", replica=~"a.*"}[5m])) and on (instance) budgetd_leader == 1"#,
    );
    assert_eq!(
        used,
        BTreeMap::from([
            (
                "budgetd_alertmanager_requests_total".to_owned(),
                ["outcome", "replica"].map(String::from).into()
            ),
            ("budgetd_leader".to_owned(), BTreeSet::new()),
        ])
    );
    assert_eq!(
        grouping_labels("max by (reconciler) (x and on (instance) y) without(a, b)"),
        ["a", "b", "instance", "reconciler"]
            .map(String::from)
            .into()
    );
    let emitted = emitted_metrics();
    assert_eq!(
        emitted["budgetd_alertmanager_requests_total"],
        (
            "counter".to_owned(),
            ["outcome", "replica"].map(String::from).into()
        )
    );
    assert_eq!(
        emitted["budgetd_prometheus_request_duration_seconds"].0,
        "histogram"
    );
    assert_eq!(
        exposition("# TYPE x counter\nx{a=\"1\",b=\"2,3\"} 4\ny 1\n"),
        BTreeMap::from([
            ("x".to_owned(), ["a", "b"].map(String::from).into()),
            ("y".to_owned(), BTreeSet::new()),
        ])
    );
}
