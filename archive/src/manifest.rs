//! A month's manifest: what its archive holds and how to tell a complete, unaltered copy: the
//! row count, the entries and amount per tenant and currency, and each file with its rows,
//! size and SHA-256. Written into the audit chain with the export; `verify` reads the files
//! back and checks them against it. Pure.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use ledger::archive::{ArchiveRow, Month, MonthTally, TenantSum};

/// The manifest's format name, so a later format is told apart.
pub const FORMAT: &str = "budgetd.ledger_archive.v1";

/// One file of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    /// Below the month's folder, e.g. `part-00000.parquet`.
    pub name: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

impl ManifestFile {
    pub fn of(name: String, rows: u64, content: &[u8]) -> ManifestFile {
        ManifestFile {
            name,
            rows,
            bytes: content.len() as u64,
            sha256: sha256(content),
        }
    }
}

pub fn sha256(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub month: Month,
    pub tally: MonthTally,
    pub files: Vec<ManifestFile>,
    /// The price-book versions that priced the month's entries.
    pub price_versions: BTreeSet<i64>,
}

impl Manifest {
    pub fn new(month: Month) -> Manifest {
        Manifest {
            month,
            tally: MonthTally::default(),
            files: Vec::new(),
            price_versions: BTreeSet::new(),
        }
    }

    pub fn add(&mut self, row: &ArchiveRow) {
        self.tally.add(row);
        self.price_versions.insert(row.price_version);
    }

    pub fn to_json(&self) -> Value {
        json!({
            "format": FORMAT,
            "month": self.month.to_string(),
            "rows": self.tally.rows,
            "sums": self.tally.sums.iter().map(|((tenant, currency), sum)| json!({
                "tenant_id": tenant,
                "currency": currency,
                "entries": sum.entries,
                "amount": sum.amount.normalize().to_string(),
            })).collect::<Vec<_>>(),
            "files": self.files.iter().map(|f| json!({
                "name": f.name,
                "rows": f.rows,
                "bytes": f.bytes,
                "sha256": f.sha256,
            })).collect::<Vec<_>>(),
            "price_versions": self.price_versions,
        })
    }

    /// Reads a recorded manifest; anything missing or malformed is an error naming it.
    pub fn from_json(value: &Value) -> Result<Manifest, String> {
        let field = |v: &Value, key: &str| -> Result<Value, String> {
            v.get(key).cloned().ok_or_else(|| format!("no {key:?}"))
        };
        let text = |v: &Value, key: &str| -> Result<String, String> {
            field(v, key)?
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("{key:?} is not a string"))
        };
        let int = |v: &Value, key: &str| -> Result<i64, String> {
            field(v, key)?
                .as_i64()
                .ok_or_else(|| format!("{key:?} is not an integer"))
        };
        let format = text(value, "format")?;
        if format != FORMAT {
            return Err(format!("format {format:?} is not {FORMAT:?}"));
        }
        let month = Month::parse("month", &text(value, "month")?).map_err(|e| e.to_string())?;
        let mut sums = BTreeMap::new();
        for sum in field(value, "sums")?
            .as_array()
            .ok_or("\"sums\" is not a list")?
        {
            let amount = text(sum, "amount")?;
            let amount: Decimal =
                ledger::money::parse_decimal("amount", &amount).map_err(|e| e.to_string())?;
            sums.insert(
                (text(sum, "tenant_id")?, text(sum, "currency")?),
                TenantSum {
                    entries: int(sum, "entries")?,
                    amount,
                },
            );
        }
        let mut files = Vec::new();
        for file in field(value, "files")?
            .as_array()
            .ok_or("\"files\" is not a list")?
        {
            let name = text(file, "name")?;
            // A name from the record becomes a path in the store: one plain file name only.
            if name.is_empty()
                || name.contains('/')
                || name.starts_with('.')
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(format!("file name {name:?} is not a plain file name"));
            }
            files.push(ManifestFile {
                name,
                rows: int(file, "rows")? as u64,
                bytes: int(file, "bytes")? as u64,
                sha256: text(file, "sha256")?,
            });
        }
        let price_versions = field(value, "price_versions")?
            .as_array()
            .ok_or("\"price_versions\" is not a list")?
            .iter()
            .map(|v| v.as_i64().ok_or("a price version is not an integer"))
            .collect::<Result<_, _>>()?;
        Ok(Manifest {
            month,
            tally: MonthTally {
                rows: int(value, "rows")?,
                sums,
            },
            files,
            price_versions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    #[test]
    fn a_manifest_reads_back_as_written() {
        let month = Month::parse("m", "2025-01").unwrap();
        let mut manifest = Manifest::new(month);
        let start = Utc.with_ymd_and_hms(2025, 1, 3, 0, 0, 0).unwrap();
        for (tenant, amount) in [("a", "1.500000000000"), ("b", "-0.25"), ("a", "2")] {
            manifest.add(&ArchiveRow {
                tenant_id: tenant.into(),
                meter: "cpu".into(),
                window_start: start,
                window_end: start,
                revision: 1,
                kind: "usage".into(),
                quantity: Decimal::ONE,
                unit: "core_seconds".into(),
                price_version: 7,
                rate: Decimal::ONE,
                price_unit: "core_hour".into(),
                units_per_price_unit: Decimal::ONE,
                amount: amount.parse().unwrap(),
                currency: "EUR".into(),
                source: "test".into(),
                reason: None,
            });
        }
        manifest
            .files
            .push(ManifestFile::of("part-00000.parquet".into(), 3, b"abc"));
        let json = manifest.to_json();
        assert_eq!(json["sums"][0]["amount"], "3.5");
        assert_eq!(
            json["files"][0]["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Manifest::from_json(&json).unwrap(), manifest);

        let mut bad = json.clone();
        bad["files"][0]["name"] = "../../etc/passwd".into();
        assert!(Manifest::from_json(&bad)
            .unwrap_err()
            .contains("plain file name"));
        let mut bad = json;
        bad["sums"][0]["amount"] = "1e3".into();
        assert!(Manifest::from_json(&bad).unwrap_err().contains("amount"));
    }
}
