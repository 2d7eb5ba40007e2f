//! `[archive]`: where closed months go, how long months stay hot, and the limits of every call
//! to the object store. Without the section `budgetd archive` refuses to run.

use std::time::Duration;

use ledger::config::{attempts, backoff, required, timeout_millis, within};
use ledger::Invalid;
use serde::{Deserialize, Serialize};
use url::Url;

/// `[archive]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArchiveSection {
    /// The object store folder: `file:///path`, `s3://bucket/prefix`, `az://container/prefix`
    /// (also `azure://`, `abfs://`, `abfss://`), `gs://bucket/prefix`. Credentials come from
    /// the store's usual environment variables (`AWS_*`, `AZURE_*`, `GOOGLE_*`), never from here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Months that stay in the database besides the current one.
    pub hot_retention_months: u32,
    /// Entries per Parquet file (a month is one or more files).
    pub rows_per_file: u64,
    /// One object-store call (a file's upload or download), per attempt.
    pub timeout_ms: u64,
    pub connect_timeout_ms: u64,
    /// Attempts per object-store call (timeouts and server errors are tried again).
    pub attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection {
            url: None,
            hot_retention_months: 13,
            rows_per_file: 1_000_000,
            timeout_ms: 120_000,
            connect_timeout_ms: 5_000,
            attempts: 3,
            initial_backoff_ms: 500,
            max_backoff_ms: 10_000,
        }
    }
}

/// The validated `[archive]`.
#[derive(Debug, Clone)]
pub struct ArchiveSettings {
    pub url: Url,
    pub hot_retention_months: u32,
    pub rows_per_file: u64,
    pub calls: CallLimits,
}

/// The limits of every object-store call.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// The schemes `url` may have.
pub const SCHEMES: [&str; 8] = ["file", "s3", "s3a", "az", "azure", "abfs", "abfss", "gs"];

/// An object-store folder URL with no credentials in it.
pub fn store_url(text: &str, key: &str) -> Result<Url, Invalid> {
    let url = Url::parse(text.trim()).map_err(|e| Invalid::new(key, format!("{text:?}: {e}")))?;
    if !SCHEMES.contains(&url.scheme()) {
        return Err(Invalid::new(
            key,
            format!(
                "scheme {:?} is not one of {}",
                url.scheme(),
                SCHEMES.join(", ")
            ),
        ));
    }
    if url.password().is_some() || url.query().is_some() || url.fragment().is_some() {
        return Err(Invalid::new(
            key,
            "must hold no password, query or fragment: credentials come from the environment",
        ));
    }
    if url.scheme() == "file" && url.to_file_path().is_err() {
        return Err(Invalid::new(
            key,
            "a file:// URL needs an absolute local path",
        ));
    }
    if url.scheme() != "file" && url.host_str().is_none_or(str::is_empty) {
        return Err(Invalid::new(
            key,
            "needs a bucket or container: s3://bucket/prefix",
        ));
    }
    Ok(url)
}

impl ArchiveSection {
    pub fn validate(&self) -> Result<ArchiveSettings, Invalid> {
        let url = store_url(&required(self.url.clone(), "archive.url")?, "archive.url")?;
        let (initial_backoff, max_backoff) =
            backoff("archive", self.initial_backoff_ms, self.max_backoff_ms)?;
        Ok(ArchiveSettings {
            url,
            hot_retention_months: within(
                self.hot_retention_months,
                0..=1200,
                "archive.hot_retention_months",
            )?,
            rows_per_file: within(
                self.rows_per_file,
                1_000..=100_000_000,
                "archive.rows_per_file",
            )?,
            calls: CallLimits {
                timeout: timeout_millis(self.timeout_ms, "archive.timeout_ms")?,
                connect_timeout: timeout_millis(
                    self.connect_timeout_ms,
                    "archive.connect_timeout_ms",
                )?,
                attempts: attempts(self.attempts, "archive.attempts")?,
                initial_backoff,
                max_backoff,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(url: &str) -> ArchiveSection {
        ArchiveSection {
            url: Some(url.to_owned()),
            ..ArchiveSection::default()
        }
    }

    #[test]
    fn urls_of_every_store_and_nothing_else() {
        for good in [
            "file:///var/lib/budgetd/archive",
            "s3://bucket/ledger",
            "az://container/ledger",
            "abfss://container@account.dfs.core.windows.net/ledger",
            "gs://bucket",
        ] {
            section(good)
                .validate()
                .unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for (bad, says) in [
            ("http://example.com/x", "is not one of"),
            ("s3://user:secret@bucket/x", "no password"),
            ("s3://bucket/x?sig=1", "no password, query"),
            ("file://relative", "absolute local path"),
            ("not a url", "archive.url"),
        ] {
            let e = section(bad).validate().unwrap_err();
            assert_eq!(e.field, "archive.url", "{bad}");
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = ArchiveSection::default().validate().unwrap_err();
        assert_eq!(e.to_string(), "archive.url: is required");
    }

    #[test]
    fn limits_are_checked() {
        let mut s = section("gs://bucket");
        s.timeout_ms = 5;
        assert_eq!(s.validate().unwrap_err().field, "archive.timeout_ms");
        let mut s = section("gs://bucket");
        s.attempts = 0;
        assert_eq!(s.validate().unwrap_err().field, "archive.attempts");
        let mut s = section("gs://bucket");
        s.rows_per_file = 10;
        assert_eq!(s.validate().unwrap_err().field, "archive.rows_per_file");
    }
}
