//! What the collector hands the ledger for one window: priced entries, usage it could not
//! attribute to a tenant, and how complete its inputs were.

use crate::entry::{NewEntry, UnitName, Window};
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

/// One collected window, committed atomically with the watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectedWindow {
    pub window: Window,
    pub entries: Vec<NewEntry>,
    pub unallocated: Vec<UnallocatedUsage>,
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
}
