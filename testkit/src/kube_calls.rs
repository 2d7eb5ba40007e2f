//! What budgetd asks of the Kubernetes API, as RBAC sees it, and the check of a ClusterRole
//! against it. The fake API server ([`crate::fake_kube`]) turns each request budgetd's code
//! makes into the authorization checks a real API server would make ([`Call::of_request`]:
//! the verb of the method and path, and `bind` on the role a RoleBinding refers to) and, when
//! `BUDGETD_TEST_KUBE_CALLS_DIR` is set, appends them to a file there ([`record`]). After the
//! whole suite, `budgetd-dev check-cluster-role` reads them back ([`read_dir`]) and compares
//! them with the rules of `deploy/`'s ClusterRole ([`grants`], [`compare`]): every call must be
//! granted, and every grant must have been used.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use serde_json::Value;

/// The environment variable naming the directory the fake API servers append calls to.
pub const CALLS_DIR_ENV: &str = "BUDGETD_TEST_KUBE_CALLS_DIR";

/// One authorization check: a verb on a resource (`deployments/scale` for a subresource) of an
/// API group (`""` for the core group), for a bind on one named role; or a verb on a path that
/// is no resource (`/version`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Call {
    Resource {
        group: String,
        resource: String,
        verb: String,
        /// Only where RBAC rules may name it and budgetd's use is one name: `bind`.
        name: Option<String>,
    },
    NonResource {
        url: String,
        verb: String,
    },
}

impl Call {
    pub fn resource(group: &str, resource: &str, verb: &str) -> Call {
        Call::Resource {
            group: group.to_owned(),
            resource: resource.to_owned(),
            verb: verb.to_owned(),
            name: None,
        }
    }

    /// The checks a real API server makes for one request: the verb on the resource as the API
    /// server maps it (GET of one object `get`, of a collection `list`, `?watch` `watch`; POST
    /// `create`; PUT `update`; PATCH `patch`; DELETE of one object `delete`, of a collection
    /// `deletecollection`), and for a write of a RoleBinding or ClusterRoleBinding `bind` on the
    /// role its body refers to (the escalation check: budgetd does not hold the permissions of
    /// the roles it binds).
    pub fn of_request(method: &str, path: &str, query: &str, body: &[u8]) -> Vec<Call> {
        let Some(target) = parse_path(path) else {
            return vec![Call::NonResource {
                url: path.to_owned(),
                verb: method.to_ascii_lowercase(),
            }];
        };
        let watch = query.split('&').any(|pair| {
            matches!(
                pair.split_once('=').unwrap_or((pair, "")),
                ("watch", "true" | "1" | "")
            )
        });
        let verb = match (method, target.name.is_some()) {
            ("GET", _) if watch => "watch",
            ("GET", true) => "get",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            (other, _) => {
                return vec![Call::resource(
                    &target.group,
                    &target.resource,
                    &other.to_ascii_lowercase(),
                )]
            }
        };
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.resource),
            None => target.resource.clone(),
        };
        let mut calls = vec![Call::resource(&target.group, &resource, verb)];
        let binding = target.group == "rbac.authorization.k8s.io"
            && matches!(
                target.resource.as_str(),
                "rolebindings" | "clusterrolebindings"
            )
            && target.subresource.is_none();
        if binding && matches!(verb, "create" | "update" | "patch") {
            let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
            let role = &body["roleRef"];
            if let (Some(kind), Some(name)) = (role["kind"].as_str(), role["name"].as_str()) {
                let resource = if kind == "ClusterRole" {
                    "clusterroles"
                } else {
                    "roles"
                };
                calls.push(Call::Resource {
                    group: "rbac.authorization.k8s.io".to_owned(),
                    resource: resource.to_owned(),
                    verb: "bind".to_owned(),
                    name: Some(name.to_owned()),
                });
            }
        }
        calls
    }

    fn to_line(&self) -> String {
        match self {
            Call::Resource {
                group,
                resource,
                verb,
                name,
            } => format!(
                "resource\t{group}\t{resource}\t{verb}\t{}",
                name.as_deref().unwrap_or("*")
            ),
            Call::NonResource { url, verb } => format!("url\t{url}\t{verb}"),
        }
    }

    fn from_line(line: &str) -> Option<Call> {
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.as_slice() {
            ["resource", group, resource, verb, name] => Some(Call::Resource {
                group: (*group).to_owned(),
                resource: (*resource).to_owned(),
                verb: (*verb).to_owned(),
                name: (*name != "*").then(|| (*name).to_owned()),
            }),
            ["url", url, verb] => Some(Call::NonResource {
                url: (*url).to_owned(),
                verb: (*verb).to_owned(),
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Resource {
                group,
                resource,
                verb,
                name,
            } => {
                let group = if group.is_empty() { "\"\"" } else { group };
                write!(f, "{verb} {group}/{resource}")?;
                if let Some(name) = name {
                    write!(f, " (resourceNames: {name})")?;
                }
                Ok(())
            }
            Call::NonResource { url, verb } => write!(f, "{verb} nonResourceURL {url}"),
        }
    }
}

struct Target {
    group: String,
    resource: String,
    name: Option<String>,
    subresource: Option<String>,
}

/// `/api/v1/...` or `/apis/<group>/<version>/...`, namespaced or not; `None` for any other path.
fn parse_path(path: &str) -> Option<Target> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        // a namespaced resource, unless it is the namespace itself (`/api/v1/namespaces/a`)
        ["namespaces", _ns, plural, tail @ ..] if !plural.is_empty() => {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }
        other => other.to_vec(),
    };
    let owned = |s: &&str| (*s).to_owned();
    match rest.as_slice() {
        [plural] => Some((plural, None, None)),
        [plural, name] => Some((plural, Some(name), None)),
        [plural, name, sub] => Some((plural, Some(name), Some(sub))),
        _ => None,
    }
    .filter(|(plural, name, sub)| {
        !plural.is_empty()
            && name.is_none_or(|n| !n.is_empty())
            && sub.is_none_or(|s| !s.is_empty())
    })
    .map(|(plural, name, sub)| Target {
        group: group.to_owned(),
        resource: (*plural).to_owned(),
        name: name.map(owned),
        subresource: sub.map(owned),
    })
}

/// Lines this process wrote already (a call is written once per process).
static WRITTEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Appends `calls` to `<dir>/kube-calls-<pid>.tsv`, each once per process. Panics when the
/// file cannot be written: a call left out would make the ClusterRole check wrong.
pub fn record(dir: &Path, calls: &[Call]) {
    let mut written = WRITTEN.lock().expect("the recorded calls lock");
    let new: Vec<String> = calls
        .iter()
        .map(Call::to_line)
        .filter(|line| !written.contains(line))
        .collect();
    if new.is_empty() {
        return;
    }
    let file = dir.join(format!("kube-calls-{}.tsv", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("{CALLS_DIR_ENV}: cannot open {}: {e}", file.display()));
    for line in new {
        writeln!(out, "{line}")
            .unwrap_or_else(|e| panic!("{CALLS_DIR_ENV}: cannot write {}: {e}", file.display()));
        written.insert(line);
    }
}

/// Every call recorded in `dir` (all processes' files).
pub fn read_dir(dir: &Path) -> Result<BTreeSet<Call>, String> {
    let mut calls = BTreeSet::new();
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.extension().is_none_or(|e| e != "tsv") {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
            let call = Call::from_line(line).ok_or_else(|| {
                format!(
                    "{}:{}: not a recorded call: {line:?}",
                    path.display(),
                    i + 1
                )
            })?;
            calls.insert(call);
        }
    }
    Ok(calls)
}

/// What a ClusterRole's rules grant, one [`Call`] per group, resource, verb (and resource name,
/// where the rule names some). A wildcard (`*`) is an error: it grants more than any use.
pub fn grants(cluster_role: &Value) -> Result<BTreeSet<Call>, String> {
    let strings = |rule: &Value, field: &str| -> Result<Vec<String>, String> {
        let Some(values) = rule.get(field) else {
            return Ok(Vec::new());
        };
        let values = values
            .as_array()
            .ok_or_else(|| format!("rules[].{field} is not a list"))?;
        values
            .iter()
            .map(|v| match v.as_str() {
                Some("*") => Err(format!("rules[].{field} has a wildcard (*)")),
                Some(s) => Ok(s.to_owned()),
                None => Err(format!("rules[].{field} holds a non-string: {v}")),
            })
            .collect()
    };
    let rules = cluster_role["rules"]
        .as_array()
        .ok_or("the ClusterRole has no rules list")?;
    let mut out = BTreeSet::new();
    for rule in rules {
        let verbs = strings(rule, "verbs")?;
        let urls = strings(rule, "nonResourceURLs")?;
        for url in &urls {
            for verb in &verbs {
                out.insert(Call::NonResource {
                    url: url.clone(),
                    verb: verb.clone(),
                });
            }
        }
        let names = strings(rule, "resourceNames")?;
        let names: Vec<Option<String>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for group in strings(rule, "apiGroups")? {
            for resource in strings(rule, "resources")? {
                for verb in &verbs {
                    for name in &names {
                        out.insert(Call::Resource {
                            group: group.clone(),
                            resource: resource.clone(),
                            verb: verb.clone(),
                            name: name.clone(),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The difference between the calls made and the grants.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// Calls no rule grants.
    pub missing: BTreeSet<Call>,
    /// Grants no call used (a rule without resourceNames is used only by calls without a name).
    pub unused: BTreeSet<Call>,
}

impl Comparison {
    pub fn is_exact(&self) -> bool {
        self.missing.is_empty() && self.unused.is_empty()
    }
}

/// Compares the calls with the grants: a call naming a resource is granted by a rule for that
/// name or by one without resourceNames.
pub fn compare(calls: &BTreeSet<Call>, grants: &BTreeSet<Call>) -> Comparison {
    let unnamed = |call: &Call| match call {
        Call::Resource {
            group,
            resource,
            verb,
            name: Some(_),
        } => Some(Call::resource(group, resource, verb)),
        _ => None,
    };
    let missing = calls
        .iter()
        .filter(|call| !grants.contains(call) && unnamed(call).is_none_or(|u| !grants.contains(&u)))
        .cloned()
        .collect();
    let unused = grants.difference(calls).cloned().collect();
    Comparison { missing, unused }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn calls(method: &str, path: &str) -> Vec<Call> {
        Call::of_request(method, path, "", b"")
    }

    #[test]
    fn verbs_follow_the_api_servers_mapping() {
        let one = |m, p| calls(m, p).remove(0).to_string();
        assert_eq!(one("GET", "/api/v1/namespaces/a"), "get \"\"/namespaces");
        assert_eq!(one("GET", "/api/v1/namespaces"), "list \"\"/namespaces");
        assert_eq!(
            Call::of_request(
                "GET",
                "/api/v1/namespaces",
                "labelSelector=x&watch=true",
                b""
            )[0]
            .to_string(),
            "watch \"\"/namespaces"
        );
        assert_eq!(
            one("GET", "/apis/apps/v1/deployments"),
            "list apps/deployments"
        );
        assert_eq!(
            one("PATCH", "/apis/apps/v1/namespaces/a/deployments/web/scale"),
            "patch apps/deployments/scale"
        );
        assert_eq!(
            one("POST", "/api/v1/namespaces/a/resourcequotas"),
            "create \"\"/resourcequotas"
        );
        assert_eq!(
            one("PUT", "/api/v1/namespaces/a/resourcequotas/q"),
            "update \"\"/resourcequotas"
        );
        assert_eq!(
            one(
                "DELETE",
                "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies/p"
            ),
            "delete networking.k8s.io/networkpolicies"
        );
        assert_eq!(
            one(
                "DELETE",
                "/apis/networking.k8s.io/v1/namespaces/a/networkpolicies"
            ),
            "deletecollection networking.k8s.io/networkpolicies"
        );
        assert_eq!(
            one("DELETE", "/api/v1/namespaces/a"),
            "delete \"\"/namespaces"
        );
        assert_eq!(one("GET", "/version"), "get nonResourceURL /version");
    }

    #[test]
    fn writing_a_role_binding_needs_bind_on_its_role() {
        let body =
            json!({ "kind": "RoleBinding", "roleRef": { "kind": "ClusterRole", "name": "edit" } });
        let got = Call::of_request(
            "PATCH",
            "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings/owners",
            "fieldManager=budgetd&force=true",
            &serde_json::to_vec(&body).unwrap(),
        );
        let shown: Vec<String> = got.iter().map(Call::to_string).collect();
        assert_eq!(
            shown,
            [
                "patch rbac.authorization.k8s.io/rolebindings",
                "bind rbac.authorization.k8s.io/clusterroles (resourceNames: edit)"
            ]
        );
        // reading one needs no bind
        assert_eq!(
            calls(
                "GET",
                "/apis/rbac.authorization.k8s.io/v1/namespaces/a/rolebindings/owners"
            )
            .len(),
            1
        );
    }

    #[test]
    fn recorded_calls_read_back_as_written() {
        let dir = std::env::temp_dir().join(format!("budgetd-kube-calls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let written = vec![
            Call::resource("", "namespaces", "list"),
            Call::Resource {
                group: "rbac.authorization.k8s.io".into(),
                resource: "clusterroles".into(),
                verb: "bind".into(),
                name: Some("edit".into()),
            },
            Call::NonResource {
                url: "/version".into(),
                verb: "get".into(),
            },
        ];
        record(&dir, &written);
        record(&dir, &written[..1]);
        let back = read_dir(&dir).unwrap();
        assert_eq!(back, written.into_iter().collect());
        let file = dir.join(format!("kube-calls-{}.tsv", std::process::id()));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn role(rules: Value) -> BTreeSet<Call> {
        grants(&json!({ "kind": "ClusterRole", "rules": rules })).unwrap()
    }

    #[test]
    fn the_comparison_finds_missing_and_unused_grants() {
        let bind_edit = Call::Resource {
            group: "rbac.authorization.k8s.io".into(),
            resource: "clusterroles".into(),
            verb: "bind".into(),
            name: Some("edit".into()),
        };
        let made: BTreeSet<Call> = [
            Call::resource("", "namespaces", "get"),
            Call::resource("", "namespaces", "patch"),
            Call::resource("apps", "deployments/scale", "patch"),
            bind_edit.clone(),
        ]
        .into();
        let exact = role(json!([
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"] },
            { "apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"] },
            { "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["edit"] },
        ]));
        assert!(compare(&made, &exact).is_exact());

        // a verb missing
        let less = role(json!([
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"] },
            { "apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"] },
            { "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["edit"] },
        ]));
        let c = compare(&made, &less);
        assert_eq!(
            c.missing,
            [Call::resource("", "namespaces", "patch")].into()
        );
        assert!(c.unused.is_empty());

        // a verb too many, and a subresource granted as its resource
        let more = role(json!([
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch", "delete"] },
            { "apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["patch"] },
            { "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"], "resourceNames": ["edit"] },
        ]));
        let c = compare(&made, &more);
        assert_eq!(
            c.missing,
            [Call::resource("apps", "deployments/scale", "patch")].into()
        );
        assert_eq!(
            c.unused,
            [
                Call::resource("", "namespaces", "delete"),
                Call::resource("apps", "deployments", "patch")
            ]
            .into()
        );

        // bind on every ClusterRole grants the call, but more than it needs
        let broad = role(json!([
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "patch"] },
            { "apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"] },
            { "apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"], "verbs": ["bind"] },
        ]));
        let c = compare(&made, &broad);
        assert!(c.missing.is_empty());
        assert_eq!(
            c.unused,
            [Call::resource(
                "rbac.authorization.k8s.io",
                "clusterroles",
                "bind"
            )]
            .into()
        );
    }

    #[test]
    fn wildcards_are_refused() {
        let e = grants(
            &json!({ "rules": [{ "apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"] }] }),
        )
        .unwrap_err();
        assert!(e.contains("apiGroups") && e.contains("wildcard"), "{e}");
        let e = grants(
            &json!({ "rules": [{ "apiGroups": [""], "resources": ["pods"], "verbs": ["*"] }] }),
        )
        .unwrap_err();
        assert!(e.contains("verbs"), "{e}");
    }
}
