//! What the collector hands the ledger for one window: priced entries, usage it could not
//! attribute to a tenant, and how complete its inputs were.

use crate::entry::{EntryKey, NewEntry, UnitName, Window};
use crate::price_book::MeterName;
use crate::tenant::TenantId;
use rust_decimal::Decimal;

/// Why usage could not be billed to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnallocatedReason {
    /// The namespace has no tenant label.
    NoTenantLabel,
    /// The namespace's tenant label names a tenant the ledger does not know.
    UnknownTenant,
}

impl UnallocatedReason {
    pub fn as_str(self) -> &'static str {
        match self {
            UnallocatedReason::NoTenantLabel => "no_tenant_label",
            UnallocatedReason::UnknownTenant => "unknown_tenant",
        }
    }
}

/// Usage of one meter that belongs to no known tenant: by namespace when it has no tenant
/// label, by label value when the tenant is unknown. It is not billed, but recorded with what
/// would price it, as an entry would be: finance sees what it would cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnallocatedUsage {
    pub namespace_or_label: String,
    pub reason: UnallocatedReason,
    pub meter: MeterName,
    pub quantity: Decimal,
    pub unit: UnitName,
    /// The price-book version in force at the window's start (the one that priced the
    /// window's entries). It may have no rate for the meter: then the usage has no amount.
    pub price_version: i64,
    /// The meter's price unit, and how many `unit` make one.
    pub price_unit: UnitName,
    pub units_per_price_unit: Decimal,
}

/// Why a key's usage could not be priced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PricingFailure {
    /// No price-book version is in force at the window's start.
    NoVersion,
    /// The version in force has no rate for the meter.
    NoRate { version: i64 },
    /// Quantity × rate is out of the range the ledger prices exactly (`entry::price`): a rate
    /// written before rates were bounded, or an absurd quantity.
    OutOfRange { version: i64, message: String },
}

impl PricingFailure {
    /// A bounded label, for metrics and the API.
    pub fn kind(&self) -> &'static str {
        match self {
            PricingFailure::NoVersion => "no_version",
            PricingFailure::NoRate { .. } => "no_rate",
            PricingFailure::OutOfRange { .. } => "out_of_range",
        }
    }

    /// The version that could not price the usage, if one was in force.
    pub fn version(&self) -> Option<i64> {
        match self {
            PricingFailure::NoVersion => None,
            PricingFailure::NoRate { version } | PricingFailure::OutOfRange { version, .. } => {
                Some(*version)
            }
        }
    }

    /// For operators.
    pub fn message(&self, meter: &MeterName) -> String {
        match self {
            PricingFailure::NoVersion => "no price-book version is in force".to_owned(),
            PricingFailure::NoRate { version } => {
                format!("price-book version {version} has no rate for meter {meter}")
            }
            PricingFailure::OutOfRange { version, message } => {
                format!("price-book version {version} cannot price it: {message}")
            }
        }
    }

    /// Reads a recorded failure back.
    pub fn from_record(kind: &str, version: Option<i64>, message: &str) -> Option<Self> {
        match (kind, version) {
            ("no_version", None) => Some(PricingFailure::NoVersion),
            ("no_rate", Some(version)) => Some(PricingFailure::NoRate { version }),
            ("out_of_range", Some(version)) => Some(PricingFailure::OutOfRange {
                version,
                message: message.to_owned(),
            }),
            _ => None,
        }
    }
}

/// Usage of a tenant's key that could not be priced: recorded with what priced it would need,
/// so that it is priced later without querying Prometheus again (once the price book can: a
/// withdrawn or replaced version, or a version for the window with the missing rate), while
/// the rest of its window is committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpricedUsage {
    pub key: EntryKey,
    pub quantity: Decimal,
    pub unit: UnitName,
    /// The meter's price unit, and how many `unit` make one, as collected.
    pub price_unit: UnitName,
    pub units_per_price_unit: Decimal,
    pub failure: PricingFailure,
    /// Set when the usage was measured by a recollection: pricing it later corrects the live
    /// entry of the key, with this reason.
    pub correction_reason: Option<String>,
}

/// One collected window, committed atomically with the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedWindow {
    pub window: Window,
    pub entries: Vec<NewEntry>,
    pub unallocated: Vec<UnallocatedUsage>,
    /// Tenants' usage that could not be priced: recorded per key, never blocking the rest.
    pub unpriced: Vec<UnpricedUsage>,
    /// False when the inputs as a whole were not complete (warnings, scrape gaps).
    pub complete: bool,
    /// Tenants whose own inputs were missing in an otherwise complete window.
    pub incomplete_tenants: Vec<TenantId>,
    /// Why the window or some tenants are incomplete, for operators.
    pub problems: Vec<String>,
}

/// First collection, or recollection that corrects what differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitMode {
    /// Windows already collected are skipped by the caller; a differing entry is a conflict.
    Collect,
    /// Differences become corrections (reversal plus new entry) with this reason.
    Recollect { reason: String },
}

/// What a commit did, summed over its windows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommitReport {
    pub windows: usize,
    pub inserted: usize,
    pub unchanged: usize,
    pub corrected: usize,
    pub conflicts: usize,
    pub incomplete_windows: usize,
    /// Keys recorded as unpriced.
    pub unpriced: usize,
}

/// What pricing recorded usage did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepriceReport {
    /// Keys priced now: their entry is in the ledger.
    pub priced: usize,
    /// Keys that still cannot be priced, now recorded against the version in force.
    pub still_unpriced: usize,
}
