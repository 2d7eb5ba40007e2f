//! What a tenant's folder holds, computed without I/O: the Grafana uids of its folder, data
//! source and dashboard, and the tenant cost dashboard pinned to the tenant.
//!
//! The template is `dashboards/tenant-costs.json`, built into the binary. Pinning turns its
//! `tenant` variable into a hidden constant, points every panel at the tenant's own data
//! source (uid `budgetd-finance` in the template) and reads `tenant_finance.` where the template
//! reads `finance.`: views that show only the rows of the tenant whose login runs the query.

use ledger::tenant::{Tenant, TenantId};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// The tenant cost dashboard, as the repository holds it.
pub const TEMPLATE: &str = include_str!("../../dashboards/tenant-costs.json");

/// The data source uid the template's panels use.
pub const TEMPLATE_DATASOURCE: &str = "budgetd-finance";

/// Grafana uids have at most 40 characters.
const UID_MAX: usize = 40;

/// `prefix` + `id` + `suffix` within Grafana's 40 characters: the id as it is if it fits,
/// else its start and 12 hex digits of its SHA-256.
fn uid(prefix: &str, id: &str, suffix: &str) -> String {
    let room = UID_MAX - prefix.len() - suffix.len();
    if id.len() <= room {
        format!("{prefix}{id}{suffix}")
    } else {
        let digest = hex::encode(Sha256::digest(id.as_bytes()));
        format!("{prefix}{}-{}{suffix}", &id[..room - 13], &digest[..12])
    }
}

/// The Grafana objects of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantObjects {
    pub folder_uid: String,
    pub folder_title: String,
    pub datasource_uid: String,
    pub datasource_name: String,
    pub dashboard_uid: String,
}

impl TenantObjects {
    pub fn of(tenant: &Tenant) -> TenantObjects {
        TenantObjects::named(&tenant.id, tenant.display_name.as_str())
    }

    /// The objects of a tenant known only by its id (to remove them): no folder title.
    pub fn of_id(id: &TenantId) -> TenantObjects {
        TenantObjects::named(id, "")
    }

    fn named(id: &TenantId, display_name: &str) -> TenantObjects {
        let id = id.as_str();
        TenantObjects {
            folder_uid: uid("budgetd-", id, ""),
            folder_title: format!("{display_name} ({id})"),
            datasource_uid: uid("budgetd-ds-", id, ""),
            datasource_name: format!("budgetd finance: {id}"),
            dashboard_uid: uid("budgetd-", id, "-costs"),
        }
    }
}

/// Why the template cannot be pinned: the dashboard file breaks the contract the reconciler
/// relies on (a bug of the repository, caught by the unit tests).
#[derive(Debug, thiserror::Error)]
#[error("dashboards/tenant-costs.json: {0}")]
pub struct TemplateError(String);

/// The template pinned to `tenant`, reading through `objects.datasource_uid`.
pub fn pinned(
    template: &Value,
    tenant: &Tenant,
    objects: &TenantObjects,
) -> Result<Value, TemplateError> {
    let mut dashboard = template.clone();
    let fields = dashboard
        .as_object_mut()
        .ok_or_else(|| TemplateError("not a JSON object".into()))?;
    fields.remove("id");
    fields.remove("version");
    fields.insert("uid".into(), json!(objects.dashboard_uid));
    fields.insert(
        "title".into(),
        json!(format!("Costs: {}", tenant.display_name.as_str())),
    );
    fields.insert("editable".into(), json!(false));
    let mut tags: Vec<Value> = fields
        .get("tags")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    tags.push(json!(format!("tenant:{}", tenant.id.as_str())));
    fields.insert("tags".into(), Value::Array(tags));

    let variables = fields
        .get_mut("templating")
        .and_then(|t| t.get_mut("list"))
        .and_then(Value::as_array_mut)
        .ok_or_else(|| TemplateError("no templating.list".into()))?;
    let variable = variables
        .iter_mut()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("tenant"))
        .ok_or_else(|| TemplateError("no `tenant` variable".into()))?;
    let id = tenant.id.as_str();
    *variable = json!({
        "name": "tenant",
        "label": "Tenant",
        "type": "constant",
        "hide": 2,
        "query": id,
        "current": { "text": id, "value": id, "selected": true },
        "options": [{ "text": id, "value": id, "selected": true }],
        "skipUrlSync": true,
    });
    rewrite(&mut dashboard, &objects.datasource_uid)?;
    Ok(dashboard)
}

/// Every data source reference to the tenant's data source, every `finance.` to
/// `tenant_finance.`; any other data source breaks the contract.
fn rewrite(value: &mut Value, datasource_uid: &str) -> Result<(), TemplateError> {
    match value {
        Value::Object(map) => {
            if let Some(ds) = map.get_mut("datasource") {
                retarget(ds, datasource_uid)?;
            }
            for (key, v) in map.iter_mut() {
                if key == "datasource" {
                    continue;
                }
                if let (true, Value::String(sql)) = (is_sql_field(key), &mut *v) {
                    *sql = tenant_schema(sql);
                } else {
                    rewrite(v, datasource_uid)?;
                }
            }
            Ok(())
        }
        Value::Array(items) => items
            .iter_mut()
            .try_for_each(|v| rewrite(v, datasource_uid)),
        _ => Ok(()),
    }
}

/// Queries, and the descriptions that name the views they read.
fn is_sql_field(key: &str) -> bool {
    matches!(key, "rawSql" | "query" | "definition" | "description")
}

fn retarget(ds: &mut Value, datasource_uid: &str) -> Result<(), TemplateError> {
    match ds {
        Value::Object(map) => match map.get("uid").and_then(Value::as_str) {
            Some(TEMPLATE_DATASOURCE) => {
                map.insert("uid".into(), json!(datasource_uid));
                Ok(())
            }
            // Grafana's own pseudo data sources (annotations, mixed panels' `-- Grafana --`).
            Some("grafana" | "-- Grafana --") => Ok(()),
            // A panel inheriting its data source from its queries.
            Some("-- Mixed --") | None if map.get("type").and_then(Value::as_str) != Some("prometheus") => Ok(()),
            other => Err(TemplateError(format!(
                "a panel reads data source {other:?}: a tenant's dashboard may read only {TEMPLATE_DATASOURCE:?}"
            ))),
        },
        Value::Null => Ok(()),
        other => Err(TemplateError(format!(
            "a data source given as {other}: give {{\"type\", \"uid\": {TEMPLATE_DATASOURCE:?}}}"
        ))),
    }
}

/// `finance.` as a schema qualifier (not inside a longer name) becomes `tenant_finance.`.
pub fn tenant_schema(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 32);
    let mut rest = sql;
    while let Some(at) = rest.find("finance.") {
        let before = rest[..at].chars().next_back();
        let qualifier =
            !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '"');
        out.push_str(&rest[..at]);
        out.push_str(if qualifier {
            "tenant_finance."
        } else {
            "finance."
        });
        rest = &rest[at + "finance.".len()..];
    }
    out.push_str(rest);
    out
}

/// Whether the dashboard Grafana holds is `desired`: the same, leaving aside what Grafana adds
/// or counts itself (`id`, `version`).
pub fn same_dashboard(stored: &Value, desired: &Value) -> bool {
    let strip = |v: &Value| -> Map<String, Value> {
        let mut map = v.as_object().cloned().unwrap_or_default();
        map.remove("id");
        map.remove("version");
        map
    };
    strip(stored) == strip(desired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use ledger::tenant::{DataResidency, DisplayName, Labels, Owner, TenantState};

    fn tenant(id: &str) -> Tenant {
        let now = Utc::now();
        Tenant {
            id: TenantId::parse(id).unwrap(),
            display_name: DisplayName::parse("Shop EU").unwrap(),
            owner: Owner::parse("ops@example.com").unwrap(),
            data_residency: DataResidency::parse("eu").unwrap(),
            labels: Labels::default(),
            owner_group: None,
            quota_profile: None,
            state: TenantState::Active,
            created_at: now,
            updated_at: now,
            state_changed_at: now,
            namespaces: vec![],
            isolation: None,
            suspended_by: None,
        }
    }

    fn template() -> Value {
        serde_json::from_str(TEMPLATE).unwrap()
    }

    #[test]
    fn uids_fit_grafana_and_differ_per_tenant() {
        let long_a = tenant(&format!("{}a", "x".repeat(62)));
        let long_b = tenant(&format!("{}b", "x".repeat(62)));
        let (a, b) = (TenantObjects::of(&long_a), TenantObjects::of(&long_b));
        for o in [&a, &b] {
            for uid in [&o.folder_uid, &o.datasource_uid, &o.dashboard_uid] {
                assert!(uid.len() <= 40, "{uid}");
            }
        }
        assert_ne!(a.folder_uid, b.folder_uid);
        assert_ne!(a.dashboard_uid, b.dashboard_uid);
        assert_ne!(a.datasource_uid, b.datasource_uid);
        let short = TenantObjects::of(&tenant("shop-eu"));
        assert_eq!(short.folder_uid, "budgetd-shop-eu");
        assert_eq!(short.dashboard_uid, "budgetd-shop-eu-costs");
        assert_eq!(short.datasource_uid, "budgetd-ds-shop-eu");
        assert_eq!(short.folder_title, "Shop EU (shop-eu)");
    }

    #[test]
    fn the_pinned_dashboard_reads_only_the_tenants_data_source_and_views() {
        let t = tenant("shop-eu");
        let objects = TenantObjects::of(&t);
        let pinned = pinned(&template(), &t, &objects).unwrap();
        let text = pinned.to_string();
        assert!(!text.contains(TEMPLATE_DATASOURCE), "{text}");
        assert!(text.contains("budgetd-ds-shop-eu"));
        assert!(text.contains("tenant_finance."));
        // Every `finance.` left is the end of `tenant_finance.`.
        assert_eq!(
            text.matches("finance.").count(),
            text.matches("tenant_finance.").count()
        );
        let variable = pinned["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "tenant")
            .unwrap();
        assert_eq!(variable["type"], "constant");
        assert_eq!(variable["hide"], 2);
        assert_eq!(variable["query"], "shop-eu");
        assert_eq!(pinned["uid"], "budgetd-shop-eu-costs");
        assert!(pinned.get("id").is_none());
        // Pinning is deterministic: the reconciler compares with what Grafana holds.
        assert!(same_dashboard(
            &pinned,
            &super::pinned(&template(), &t, &objects).unwrap()
        ));
    }

    #[test]
    fn a_template_reading_another_data_source_is_refused() {
        let mut bad = template();
        bad["panels"][0]["datasource"] = json!({"type": "prometheus", "uid": "budgetd-prometheus"});
        let t = tenant("shop-eu");
        let e = pinned(&bad, &t, &TenantObjects::of(&t)).unwrap_err();
        assert!(e.to_string().contains("budgetd-prometheus"), "{e}");
    }

    #[test]
    fn only_schema_qualifiers_are_rewritten() {
        assert_eq!(
            tenant_schema("select * from finance.budget_status join finance.x on true"),
            "select * from tenant_finance.budget_status join tenant_finance.x on true"
        );
        assert_eq!(
            tenant_schema("select my_finance.a, tenant_finance.b"),
            "select my_finance.a, tenant_finance.b"
        );
        assert_eq!(tenant_schema("(finance.a)"), "(tenant_finance.a)");
    }
}
