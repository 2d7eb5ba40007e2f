//! Closed ledger months leave the hot database, verifiably: `Archiver` exports a month's
//! entries to Parquet files in an object store (`ColdStore`: a local directory, S3, Azure Blob
//! or GCS), writes their manifest (`Manifest`: rows, sums per tenant and currency, SHA-256 of
//! each file) into the audit chain, reads the files back, and only then drops the month's
//! partition. `Archiver::verify` checks archives against their manifests at any time.

pub mod archiver;
pub mod cold;
pub mod config;
pub mod error;
pub mod manifest;
pub mod parquet_file;

pub use archiver::{Archiver, MonthOutcome, Verification};
pub use config::{ArchiveSection, ArchiveSettings};
pub use error::Error;
