//! The archive's errors.

use ledger::archive::Month;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] ledger::Error),
    /// An object-store call that failed for good: which call, on which object, and why.
    #[error("object store {op} {url}: {cause}")]
    Store {
        op: &'static str,
        url: String,
        cause: String,
    },
    #[error("{0}")]
    Format(#[from] crate::parquet_file::FormatError),
    /// `--before` reaches into months that stay in the database.
    #[error("{0}")]
    Refused(String),
    /// Another run changed the month's archive meanwhile: nothing was dropped by this one.
    #[error("{0}")]
    Concurrent(String),
    /// The copy read back is not what its manifest says: nothing was dropped.
    #[error("the archive of {month} does not match its manifest: {}", .differences.join("; "))]
    Differs {
        month: Month,
        differences: Vec<String>,
    },
    /// A recorded manifest that cannot be read.
    #[error("the manifest of {month}: {message}")]
    Manifest { month: Month, message: String },
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Ledger(e) => e.metric_label(),
            Error::Store { .. } => "store",
            Error::Format(_) => "format",
            Error::Refused(_) => "refused",
            Error::Concurrent(_) => "concurrent",
            Error::Differs { .. } => "differs",
            Error::Manifest { .. } => "manifest",
        }
    }
}

impl From<ledger::Invalid> for Error {
    fn from(e: ledger::Invalid) -> Self {
        Error::Ledger(e.into())
    }
}
