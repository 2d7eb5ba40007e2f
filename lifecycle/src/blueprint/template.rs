//! Blueprint templates: a directory of YAML manifests (`*.yaml`, several documents per file)
//! with `{{placeholder}}`s, loaded and validated once at start-up and rendered per tenant
//! namespace.
//!
//! Rendering is structural, so no value can change a manifest's shape: at load each
//! placeholder is replaced by a plain token, the YAML is parsed, and rendering puts the values
//! into the parsed strings. A value is always a string (`{{quota.pods}}` gives `"20"`), never
//! YAML. A template whose placeholder has no value (a tenant without owner group, a quota
//! resource its profile does not set) is skipped, except that a map entry whose whole value is
//! an unset `{{quota.<resource>}}` is only left out (a quota lists the resources it may limit;
//! each profile sets some of them).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde_json::{Map, Value};

/// The placeholders other than `quota.<resource>`.
pub const PLACEHOLDERS: [&str; 6] = [
    "tenant",
    "namespace",
    "owner_group",
    "residency",
    "ingress_namespace",
    "namespace_role",
];

/// The built-in blueprint (the repository's `blueprint/` directory), used when no
/// `blueprint_dir` is configured.
pub const DEFAULT_BLUEPRINT: [(&str, &str); 5] = [
    (
        "namespace.yaml",
        include_str!("../../../blueprint/namespace.yaml"),
    ),
    ("quota.yaml", include_str!("../../../blueprint/quota.yaml")),
    (
        "limitrange.yaml",
        include_str!("../../../blueprint/limitrange.yaml"),
    ),
    (
        "networkpolicy.yaml",
        include_str!("../../../blueprint/networkpolicy.yaml"),
    ),
    ("rbac.yaml", include_str!("../../../blueprint/rbac.yaml")),
];

/// Why a blueprint cannot be loaded: the file, the line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("blueprint {file}:{line}: {message}")]
pub struct TemplateError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// The values a template is rendered with, for one tenant namespace.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    pub tenant: &'a str,
    pub namespace: &'a str,
    pub owner_group: Option<&'a str>,
    pub residency: &'a str,
    pub ingress_namespace: &'a str,
    pub namespace_role: &'a str,
    pub quota: &'a BTreeMap<String, String>,
}

impl Values<'_> {
    fn get(&self, placeholder: &str) -> Option<&str> {
        match placeholder {
            "tenant" => Some(self.tenant),
            "namespace" => Some(self.namespace),
            "owner_group" => self.owner_group,
            "residency" => Some(self.residency),
            "ingress_namespace" => Some(self.ingress_namespace),
            "namespace_role" => Some(self.namespace_role),
            other => other
                .strip_prefix("quota.")
                .and_then(|resource| self.quota.get(resource))
                .map(String::as_str),
        }
    }
}

/// One document of a template file.
#[derive(Debug, Clone)]
pub struct Template {
    /// `file:line` of the document's first line.
    pub origin: String,
    pub api_version: String,
    pub kind: String,
    /// The parsed document, placeholders as tokens.
    doc: Value,
    /// The placeholder of each token (`token(i)` stands for `placeholders[i]`).
    placeholders: Vec<String>,
}

fn token(i: usize) -> String {
    format!("__budgetd_placeholder_{i}__")
}

/// A validated blueprint: every document of every file, in file name and document order.
#[derive(Debug, Clone)]
pub struct Blueprint {
    templates: Vec<Template>,
}

impl Blueprint {
    /// The built-in blueprint.
    pub fn builtin() -> Blueprint {
        Blueprint::from_files(
            DEFAULT_BLUEPRINT
                .iter()
                .map(|(name, text)| ((*name).to_owned(), (*text).to_owned())),
        )
        .expect("the built-in blueprint is valid")
    }

    /// Loads every `*.yaml` file of `dir` (not its subdirectories; other files such as
    /// `*.yaml.example` are ignored), in name order.
    pub fn load_dir(dir: &Path) -> Result<Blueprint, TemplateError> {
        let unreadable = |file: &Path, e: std::io::Error| TemplateError {
            file: file.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        };
        let entries = std::fs::read_dir(dir).map_err(|e| unreadable(dir, e))?;
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| unreadable(dir, e))?.path();
            if path.is_file() && path.extension().is_some_and(|e| e == "yaml") {
                paths.push(path);
            }
        }
        paths.sort();
        let mut files = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| unreadable(&path, e))?;
            files.push((path.display().to_string(), text));
        }
        if files.is_empty() {
            return Err(TemplateError {
                file: dir.display().to_string(),
                line: 0,
                message: "no *.yaml templates in the directory".to_owned(),
            });
        }
        Blueprint::from_files(files)
    }

    /// Parses and validates (file name, text) pairs.
    pub fn from_files(
        files: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Blueprint, TemplateError> {
        let mut templates = Vec::new();
        let mut names = BTreeSet::new();
        for (file, text) in files {
            for (line, doc) in documents(&text) {
                if let Some(template) = Template::parse(&file, line, doc)? {
                    let sample = template.render(&Values {
                        tenant: "sample-tenant",
                        namespace: "sample-namespace",
                        owner_group: Some("sample-group"),
                        residency: "sample-region",
                        ingress_namespace: "sample-ingress",
                        namespace_role: "sample-role",
                        quota: &BTreeMap::new(),
                    });
                    let fail = |message: String| TemplateError {
                        file: file.clone(),
                        line,
                        message,
                    };
                    let Some(sample) = sample else {
                        // only quota placeholders outside a map value are unset here
                        return Err(fail(
                            "{{quota.<resource>}} may only be the whole value of a map entry"
                                .to_owned(),
                        ));
                    };
                    let name = sample["metadata"]["name"].as_str().unwrap_or_default();
                    if let Some(ns) = sample["metadata"].get("namespace") {
                        if ns.as_str() != Some("sample-namespace") {
                            return Err(fail(
                                "metadata.namespace may only be {{namespace}} (or left out)"
                                    .to_owned(),
                            ));
                        }
                    }
                    let identity = (
                        template.api_version.clone(),
                        template.kind.clone(),
                        name.to_owned(),
                    );
                    if !names.insert(identity) {
                        return Err(fail(format!("a second {} named {name:?}", template.kind)));
                    }
                    templates.push(template);
                }
            }
        }
        Ok(Blueprint { templates })
    }

    pub fn templates(&self) -> &[Template] {
        &self.templates
    }

    /// The (apiVersion, kind) pairs the blueprint creates.
    pub fn kinds(&self) -> BTreeSet<(String, String)> {
        self.templates
            .iter()
            .map(|t| (t.api_version.clone(), t.kind.clone()))
            .collect()
    }
}

/// The documents of a YAML stream with the line each starts on (1-based), empty ones left out.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut start = 1;
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            out.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    out.push((start, current));
    out.retain(|(_, doc)| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    out
}

fn valid_placeholder(name: &str) -> bool {
    PLACEHOLDERS.contains(&name)
        || name.strip_prefix("quota.").is_some_and(|resource| {
            !resource.is_empty()
                && resource.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'/')
                })
        })
}

impl Template {
    /// Parses one document starting on `first_line` of `file`; `None` if it holds nothing.
    fn parse(
        file: &str,
        first_line: usize,
        text: String,
    ) -> Result<Option<Template>, TemplateError> {
        let fail = |line: usize, message: String| TemplateError {
            file: file.to_owned(),
            line,
            message,
        };
        let mut placeholders: Vec<String> = Vec::new();
        let mut tokenised = String::with_capacity(text.len());
        for (i, line) in text.lines().enumerate() {
            let line_no = first_line + i;
            let mut rest = line;
            while let Some(open) = rest.find("{{") {
                tokenised.push_str(&rest[..open]);
                let after = &rest[open + 2..];
                let close = after
                    .find("}}")
                    .ok_or_else(|| fail(line_no, "{{ without a closing }}".to_owned()))?;
                let name = after[..close].trim();
                if !valid_placeholder(name) {
                    return Err(fail(
                        line_no,
                        format!(
                            "unknown placeholder {{{{{name}}}}} (known: {}, quota.<resource>)",
                            PLACEHOLDERS.join(", ")
                        ),
                    ));
                }
                let index = match placeholders.iter().position(|p| p == name) {
                    Some(index) => index,
                    None => {
                        placeholders.push(name.to_owned());
                        placeholders.len() - 1
                    }
                };
                tokenised.push_str(&token(index));
                rest = &after[close + 2..];
            }
            tokenised.push_str(rest);
            tokenised.push('\n');
        }
        let doc: Value = serde_yaml::from_str(&tokenised).map_err(|e| {
            let line = e
                .location()
                .map_or(first_line, |l| first_line + l.line() - 1);
            fail(line, format!("not valid YAML: {e}"))
        })?;
        if doc.is_null() {
            return Ok(None);
        }
        if !doc.is_object() {
            return Err(fail(
                first_line,
                "a manifest must be a YAML mapping".to_owned(),
            ));
        }
        let field = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        let api_version = field("apiVersion")
            .ok_or_else(|| fail(first_line, "apiVersion is missing".to_owned()))?;
        let kind = field("kind").ok_or_else(|| fail(first_line, "kind is missing".to_owned()))?;
        if api_version.contains("__budgetd_placeholder") || kind.contains("__budgetd_placeholder") {
            return Err(fail(
                first_line,
                "apiVersion and kind cannot hold placeholders".to_owned(),
            ));
        }
        if doc["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(fail(first_line, "metadata.name is missing".to_owned()));
        }
        Ok(Some(Template {
            origin: format!("{file}:{first_line}"),
            api_version,
            kind,
            doc,
            placeholders,
        }))
    }

    /// The manifest for `values`; `None` if a placeholder it needs has no value.
    pub fn render(&self, values: &Values<'_>) -> Option<Value> {
        let resolved: Vec<Option<&str>> = self.placeholders.iter().map(|p| values.get(p)).collect();
        let mut out = self.doc.clone();
        self.fill(&mut out, &resolved).then_some(out)
    }

    /// Substitutes in place; false if an unset placeholder is needed.
    fn fill(&self, value: &mut Value, resolved: &[Option<&str>]) -> bool {
        match value {
            Value::String(s) => match substitute(s, &self.placeholders, resolved) {
                Some(filled) => {
                    *s = filled;
                    true
                }
                None => false,
            },
            Value::Array(items) => items.iter_mut().all(|item| self.fill(item, resolved)),
            Value::Object(map) => {
                let mut filled = Map::with_capacity(map.len());
                for (key, mut child) in std::mem::take(map) {
                    let Some(key) = substitute(&key, &self.placeholders, resolved) else {
                        return false;
                    };
                    if let Value::String(s) = &child {
                        if let Some(i) = whole_token(s) {
                            if resolved[i].is_none() && self.placeholders[i].starts_with("quota.") {
                                continue;
                            }
                        }
                    }
                    if !self.fill(&mut child, resolved) {
                        return false;
                    }
                    filled.insert(key, child);
                }
                *map = filled;
                true
            }
            _ => true,
        }
    }
}

/// The index of the placeholder `s` consists of, if it is exactly one token.
fn whole_token(s: &str) -> Option<usize> {
    s.strip_prefix("__budgetd_placeholder_")?
        .strip_suffix("__")?
        .parse()
        .ok()
}

/// `text` with every token replaced by its value; `None` if one has none.
fn substitute(text: &str, placeholders: &[String], resolved: &[Option<&str>]) -> Option<String> {
    if !text.contains("__budgetd_placeholder_") {
        return Some(text.to_owned());
    }
    let mut out = text.to_owned();
    for (i, _) in placeholders.iter().enumerate() {
        let t = token(i);
        if out.contains(&t) {
            out = out.replace(&t, resolved[i]?);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(quota: &'a BTreeMap<String, String>, group: Option<&'a str>) -> Values<'a> {
        Values {
            tenant: "acme",
            namespace: "acme-web",
            owner_group: group,
            residency: "eu",
            ingress_namespace: "ingress-nginx",
            namespace_role: "edit",
            quota,
        }
    }

    fn load(text: &str) -> Result<Blueprint, TemplateError> {
        Blueprint::from_files([("t.yaml".to_owned(), text.to_owned())])
    }

    #[test]
    fn values_are_strings_and_cannot_change_the_shape() {
        let bp = load("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x-{{tenant}}\ndata:\n  group: {{owner_group}}\n  quoted: \"{{owner_group}}\"\n").unwrap();
        let quota = BTreeMap::new();
        let evil = "a\nkind: Secret\n: {x";
        let out = bp.templates()[0]
            .render(&values(&quota, Some(evil)))
            .unwrap();
        assert_eq!(out["kind"], "ConfigMap");
        assert_eq!(out["metadata"]["name"], "x-acme");
        assert_eq!(out["data"]["group"], evil);
        assert_eq!(out["data"]["quoted"], evil);
    }

    #[test]
    fn an_unset_placeholder_skips_the_document_and_an_unset_quota_drops_its_entry() {
        let bp = load("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: q\nspec:\n  hard:\n    cpu: {{quota.cpu}}\n    requests.nvidia.com/gpu: {{quota.requests.nvidia.com/gpu}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: g\ndata:\n  g: {{owner_group}}\n").unwrap();
        let quota = BTreeMap::from([("cpu".to_owned(), "2".to_owned())]);
        let q = bp.templates()[0].render(&values(&quota, None)).unwrap();
        assert_eq!(q["spec"]["hard"], serde_json::json!({ "cpu": "2" }));
        assert!(bp.templates()[1].render(&values(&quota, None)).is_none());
        assert!(bp.templates()[1]
            .render(&values(&quota, Some("team")))
            .is_some());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            ("# c\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tenant}}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tennant}}\n", 10, "unknown placeholder {{tennant}}"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata: [x\n", 6, "not valid YAML"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: ConfigMap\nmetadata:\n  name: b\n", 6, "apiVersion is missing"),
            ("apiVersion: v1\nmetadata:\n  name: b\n", 1, "kind is missing"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  labels: {}\n", 1, "metadata.name is missing"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: other\n", 1, "metadata.namespace"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a-{{quota.cpu}}\n", 1, "quota"),
            ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{tenant\n", 4, "closing"),
        ];
        for (text, line, message) in cases {
            let e = load(text).unwrap_err();
            assert_eq!((e.file.as_str(), e.line), ("t.yaml", line), "{e}");
            assert!(e.message.contains(message), "{e}");
        }
    }

    #[test]
    fn the_builtin_blueprint_loads() {
        let bp = Blueprint::builtin();
        let kinds: BTreeSet<&str> = bp.templates().iter().map(|t| t.kind.as_str()).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "Namespace",
                "ResourceQuota",
                "LimitRange",
                "NetworkPolicy",
                "RoleBinding"
            ])
        );
    }
}
