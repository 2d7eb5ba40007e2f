//! `budgetd config show`: the effective configuration (file, defaults, environment) as TOML
//! that is itself a valid configuration file. Each section is its owner's type, serialized
//! with every default; what is not set is said in comments (and stays unset when the output is
//! loaded again, so `migrate_url` keeps following `url`); values the environment set are marked
//! `# from BUDGETD_...`. Passwords in URLs are `***` (`ledger::config::ConfigUrl`), and the
//! bootstrap token is never printed.

use collector::config::{default_meters, CollectorSection};
use enforcer::config::EnforcementSection;
use toml_edit::{DocumentMut, Item};

use super::Config;

pub(super) fn render(config: &Config) -> String {
    let source = &config.source;
    let mut file = source.file.clone();
    let mut notes: Vec<(&str, Vec<String>)> = vec![
        ("database", file.database.notes()),
        ("prometheus", file.prometheus.notes()),
        ("kubernetes", file.kubernetes.notes()),
        ("alertmanager", file.alertmanager.notes()),
    ];
    // A component without its section is off: shown as such, with its defaults.
    let off = |name: &str| {
        vec![format!(
            "not in the configuration, so the {name} is off; its defaults, should it be switched on:"
        )]
    };
    match &file.collector {
        Some(c) if c.enabled => {
            notes.push(("collector", c.notes(file.meters.as_deref())));
            if file.meters.is_none() {
                file.meters = Some(default_meters());
            }
        }
        Some(_) => {}
        None => {
            notes.push(("collector", off("collector")));
            file.collector = Some(CollectorSection {
                enabled: false,
                ..CollectorSection::default()
            });
        }
    }
    match &file.enforcement {
        Some(e) if e.enabled => notes.push(("enforcement", e.notes(&source.default_api_url))),
        Some(_) => {}
        None => {
            notes.push(("enforcement", off("enforcer")));
            file.enforcement = Some(EnforcementSection {
                enabled: false,
                ..EnforcementSection::default()
            });
        }
    }

    let pretty = toml::to_string_pretty(&file).expect("the sections serialize to TOML");
    let mut doc: DocumentMut = pretty
        .parse()
        .expect("TOML from the serializer parses again");
    for (key, var) in &source.origin.from_env {
        if let Some(value) = value_mut(&mut doc, key) {
            value.decor_mut().set_suffix(format!(" # from {var}"));
        }
    }
    for (section, notes) in notes {
        if notes.is_empty() {
            continue;
        }
        if let Some(table) = doc.get_mut(section).and_then(Item::as_table_mut) {
            let lines: String = notes.iter().map(|n| format!("\n# {n}")).collect();
            table.decor_mut().set_suffix(lines);
        }
    }
    if let Some(Item::ArrayOfTables(meters)) = doc.get_mut("meters") {
        if source.file.meters.is_none() {
            if let Some(first) = meters.get_mut(0) {
                first.decor_mut().set_prefix(
                    "\n# No [[meters]] configured: the collector's built-in meters. Configured [[meters]] replace them all.\n",
                );
            }
        }
    }

    let mut out = String::from("# budgetd's effective configuration: ");
    out.push_str(&match &source.path {
        Some(path) => format!("{}, ", path.display()),
        None => "no configuration file, ".to_owned(),
    });
    out.push_str("the defaults and the environment.\n");
    out.push_str("# Values from the environment are marked; passwords are shown as ***.\n");
    if source.bootstrap_token {
        out.push_str(
            "# BUDGETD_BOOTSTRAP_ADMIN_TOKEN adds the admin token bootstrap-admin (not shown), until the first admin token is created.\n",
        );
    }
    for warning in config.warnings() {
        out.push_str(&format!("# warning: {warning}\n"));
    }
    out.push('\n');
    out.push_str(&doc.to_string());
    if source.file.grafana.is_none() {
        out.push_str(
            "\n# [grafana]: not in the configuration, so no Grafana folders are kept; url, token and datasource.host/database are required to switch it on.\n",
        );
    }
    if source.file.archive.is_none() {
        out.push_str(
            "\n# [archive]: not in the configuration, so `budgetd archive` cannot run; url is required to switch it on.\n",
        );
    }
    if source.file.kafka.is_none() {
        out.push_str(
            "\n# [kafka]: not in the configuration, so no Kafka relay runs; bootstrap_servers is required to switch it on.\n",
        );
    }
    out
}

/// The value at `section.key`.
fn value_mut<'a>(doc: &'a mut DocumentMut, key: &str) -> Option<&'a mut toml_edit::Value> {
    let (section, field) = key.split_once('.')?;
    doc.get_mut(section)?.get_mut(field)?.as_value_mut()
}
