//! The budgetd ledger: domain types (tenants, money, meters, price book, budgets, periods,
//! entries, the audit chain) and the Postgres store that keeps them. The ledger is the single
//! source of truth: entries are immutable, a retried write is a no-op, a differing one is a
//! recorded conflict, and corrections are reversal entries.

pub mod archive;
pub mod audit;
pub mod budget;
pub mod config;
pub mod currency;
pub mod enforcement;
pub mod entry;
pub mod error;
pub mod money;
pub mod names;
pub mod offboarding;
pub mod price_book;
pub mod store;
pub mod tenant;
pub mod time;
pub mod usage;

pub use error::{Error, Invalid};
pub use store::{Store, StoreConfig};
