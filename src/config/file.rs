//! Reading the configuration: the TOML text, the environment overrides put into it, serde into
//! the sections, and errors that name the key path and the line the key is on.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::{ConfigError, ENV};

/// Where the configuration's values came from: the file's text (to point errors at lines) and
/// the keys the environment set. Its `Debug` leaves the text out: it may hold passwords.
#[derive(Clone, Default)]
pub(super) struct Origin {
    doc: Option<ImDocument<String>>,
    /// Key path → the variable that set it.
    pub(super) from_env: BTreeMap<&'static str, &'static str>,
}

/// Parses `text`, applies the environment, and deserializes it into `T`.
pub(super) fn read<T: DeserializeOwned>(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(T, Origin), ConfigError> {
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let line = e.span().map(|span| line_at(text, span.start));
        let message = e.message().trim().replace('\n', "; ");
        ConfigError::at("TOML syntax", line, message)
    })?;
    let origin = Origin {
        doc: ImDocument::parse(text.to_owned()).ok(),
        from_env: apply_env(&mut table, env),
    };
    match serde_path_to_error::deserialize(toml::Value::Table(table)) {
        Ok(file) => Ok((file, origin)),
        Err(e) => Err(origin.serde_error(e)),
    }
}

/// Sets the keys of the environment variables that are set; returns which it set.
fn apply_env(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> BTreeMap<&'static str, &'static str> {
    let mut set = BTreeMap::new();
    for var in ENV {
        let (Some(key), Some(value)) = (var.key, env(var.name)) else {
            continue;
        };
        let (section, field) = key.split_once('.').expect("override keys are section.key");
        if var.needs_section && !table.contains_key(section) {
            continue;
        }
        let value = if var.list {
            toml::Value::Array(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            )
        } else {
            toml::Value::String(value)
        };
        let entry = table
            .entry(section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        // A section that is not a table is the file's type error, reported as such.
        if let toml::Value::Table(section) = entry {
            section.insert(field.to_owned(), value);
            set.insert(key, var.name);
        }
    }
    set
}

impl std::fmt::Debug for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origin")
            .field("from_env", &self.from_env)
            .finish_non_exhaustive()
    }
}

impl Origin {
    /// An error about `key`: on its line when the file has it, naming the variable when the
    /// environment set it.
    pub(super) fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        let key = key.into();
        let message = message.into();
        let set_by = self.from_env.iter().find(|(k, _)| {
            key == **k
                || key
                    .strip_prefix(**k)
                    .is_some_and(|rest| rest.starts_with(['[', '.']))
        });
        match set_by {
            Some((_, var)) => ConfigError::at(key, None, format!("{message} (set by {var})")),
            None => {
                let line = self.line_of(&key);
                // A newcomer without a file learns both ways to give a missing value.
                let message = match super::ENV.iter().find(|v| v.key == Some(key.as_str())) {
                    Some(var) if message == "is required" => format!(
                        "is required: set it in the configuration file (--config or BUDGETD_CONFIG) or with {}",
                        var.name
                    ),
                    _ => message,
                };
                ConfigError::at(key, line, message)
            }
        }
    }

    pub(super) fn invalid(&self, e: ledger::Invalid) -> ConfigError {
        self.error(e.field, e.message)
    }

    fn serde_error(&self, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let path = e.path().to_string();
        let message = e.inner().message().trim().to_owned();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (name, expected) = rest.split_once('`').unwrap_or((rest, ""));
            let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
            let message = match suggestion(name, &known) {
                Some(close) => format!("unknown key (did you mean {close}?)"),
                None if known.is_empty() => "unknown key".to_owned(),
                None => format!("unknown key (known keys: {})", known.join(", ")),
            };
            return self.error(path, message);
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or(rest);
            let key = if path == "." {
                name.to_owned()
            } else {
                format!("{path}.{name}")
            };
            return self.error(key, "is required");
        }
        self.error(path, message)
    }

    /// The line of `key` in the file: of the key itself, or of the nearest enclosing one it
    /// has (a missing key's table).
    fn line_of(&self, key: &str) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let offset = locate(Node::Item(doc.as_item()), &segments(key), None)?;
        Some(line_at(doc.raw(), offset))
    }
}

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[derive(Debug, PartialEq, Eq)]
enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// `a.b[2].c` → `a`, `b`, 2, `c`.
fn segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                out.push(Segment::Key(&rest[..open]));
            }
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                match rest[1..close].parse() {
                    Ok(i) => out.push(Segment::Index(i)),
                    Err(_) => out.push(Segment::Key(&rest[1..close])),
                }
                rest = &rest[close + 1..];
            }
        } else {
            out.push(Segment::Key(rest));
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Table(&'a toml_edit::Table),
    Value(&'a Value),
}

impl<'a> Node<'a> {
    fn table_like(self) -> Option<&'a dyn TableLike> {
        match self {
            Node::Item(item) => item.as_table_like(),
            Node::Table(table) => Some(table),
            Node::Value(value) => value.as_inline_table().map(|t| t as &dyn TableLike),
        }
    }

    /// The `i`th element and where it starts.
    fn index(self, i: usize) -> Option<(Node<'a>, Option<usize>)> {
        let array = match self {
            Node::Item(Item::ArrayOfTables(tables)) => {
                let table = tables.get(i)?;
                return Some((Node::Table(table), table.span().map(|s| s.start)));
            }
            Node::Item(Item::Value(Value::Array(array))) | Node::Value(Value::Array(array)) => {
                array
            }
            _ => return None,
        };
        let value = array.get(i)?;
        Some((Node::Value(value), value.span().map(|s| s.start)))
    }
}

/// The offset of the deepest part of `path` the document has.
fn locate(node: Node<'_>, path: &[Segment<'_>], best: Option<usize>) -> Option<usize> {
    let Some((first, rest)) = path.split_first() else {
        return best;
    };
    match first {
        Segment::Index(i) => match node.index(*i) {
            Some((child, at)) => locate(child, rest, at.or(best)),
            None => best,
        },
        Segment::Key(name) => {
            let Some(table) = node.table_like() else {
                return best;
            };
            // A key may itself hold dots (`"requests.cpu"`): try the longer names too.
            let following = rest
                .iter()
                .take_while(|s| matches!(s, Segment::Key(_)))
                .count();
            for n in 0..=following {
                let mut joined = (*name).to_owned();
                for segment in &rest[..n] {
                    if let Segment::Key(k) = segment {
                        joined.push('.');
                        joined.push_str(k);
                    }
                }
                if let Some((key, child)) = table.get_key_value(&joined) {
                    let at = key.span().map(|s| s.start).or(best);
                    return locate(Node::Item(child), &rest[n..], at);
                }
            }
            best
        }
    }
}

/// The known key closest to `name`, if it is close enough to be a typo.
fn suggestion<'a>(name: &str, known: &[&'a str]) -> Option<&'a str> {
    let (distance, best) = known.iter().map(|k| (edit_distance(name, k), *k)).min()?;
    (distance <= (name.chars().count() / 3).max(2)).then_some(best)
}

/// Levenshtein distance.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(above + 1)
                .min(row[j] + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_split_into_segments() {
        assert_eq!(
            segments("meters[2].name"),
            [
                Segment::Key("meters"),
                Segment::Index(2),
                Segment::Key("name")
            ]
        );
        assert_eq!(
            segments("alertmanager.urls[0]"),
            [
                Segment::Key("alertmanager"),
                Segment::Key("urls"),
                Segment::Index(0)
            ]
        );
    }

    #[test]
    fn suggestions_are_close_names_only() {
        let known = ["statement_timeout_ms", "max_connections", "url"];
        assert_eq!(
            suggestion("statment_timeout", &known),
            Some("statement_timeout_ms")
        );
        assert_eq!(
            suggestion("max_conections", &known),
            Some("max_connections")
        );
        assert_eq!(suggestion("colour", &known), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn keys_are_found_on_their_lines() {
        let text = "[a]\nx = 1\n\n[[m]]\nname = \"p\"\n\n[[m]]\nname = \"q\"\nlist = [\"u\",\n  \"v\"]\n[p.\"requests.cpu\"]\nz = 1\n";
        let origin = Origin {
            doc: Some(ImDocument::parse(text.to_owned()).unwrap()),
            from_env: BTreeMap::new(),
        };
        for (key, line) in [
            ("a.x", Some(2)),
            ("a.missing", Some(1)),
            ("m[1].name", Some(8)),
            ("m[1]", Some(7)),
            ("m[1].list[1]", Some(10)),
            ("p.requests.cpu.z", Some(12)),
            ("nothing.here", None),
        ] {
            assert_eq!(origin.line_of(key), line, "{key}");
        }
    }
}
