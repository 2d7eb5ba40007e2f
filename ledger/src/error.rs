//! The ledger crate's error type.

use std::fmt;

pub use crate::store::DbTarget;

use crate::enforcement::Fence;

/// Bad input: which field, and what is wrong with it. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {0}")]
    Invalid(#[from] Invalid),
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    /// The request is well-formed but clashes with the current state (an existing id, a
    /// lifecycle transition that is not allowed).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A lifecycle transition the table (`tenant::TRANSITIONS`) does not allow: the tenant's
    /// state and what may follow it.
    #[error("tenant {id:?}: {refused}")]
    Transition {
        id: String,
        refused: crate::tenant::TransitionRefused,
    },
    /// The caller may not do this to this resource whatever its role (a requester approving
    /// their own request).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// An enforcement write with a fencing token that is no longer the leader's: another
    /// daemon leads, and this one must stop enforcing at once. A variant of its own (not a
    /// conflict code) because the enforcer decides on it.
    #[error(
        "fencing token {} is no longer the leader's ({}): another daemon leads",
        .fence.0,
        leader_token(.leader)
    )]
    Fenced { fence: Fence, leader: Option<Fence> },
    #[error("the database did not answer within {timeout_ms} ms")]
    Timeout { timeout_ms: u64 },
    /// No connection could be made: where to, and why (refused, unknown host, no such
    /// database, authentication, TLS, no answer in time).
    #[error("cannot connect to {target}: {cause}")]
    Unreachable { target: DbTarget, cause: String },
    /// Every connection of the pool was in use for the whole acquire timeout: the database
    /// answers, but this process asks more of it than `max_connections` allows.
    #[error("no free connection to {target} within {waited_ms} ms: all {max_connections} of the pool are in use")]
    PoolExhausted {
        target: DbTarget,
        max_connections: u32,
        waited_ms: u64,
    },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl Error {
    /// A bounded label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid",
            Error::NotFound { .. } => "not_found",
            Error::Conflict { .. } | Error::Transition { .. } => "conflict",
            Error::Forbidden { .. } => "forbidden",
            Error::Fenced { .. } => "fenced",
            Error::Timeout { .. } => "timeout",
            Error::Unreachable { .. } => "unreachable",
            Error::PoolExhausted { .. } => "pool_exhausted",
            Error::Database(_) => "database",
            Error::Migrate(_) => "migrate",
        }
    }

    /// Whether another daemon leads (see [`Error::Fenced`]).
    pub fn is_fenced(&self) -> bool {
        matches!(self, Error::Fenced { .. })
    }

    pub(crate) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Error::Conflict {
            code,
            message: message.into(),
        }
    }
}

fn leader_token(leader: &Option<Fence>) -> String {
    match leader {
        Some(token) => format!("the lease holds {}", token.0),
        None => "no lease".to_owned(),
    }
}
