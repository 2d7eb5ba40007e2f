//! Offboarding: the record of a tenant's way out (its steps, grace period and retention), the
//! final cost report, and the keyed pseudonyms that replace personal data once it is done.
//!
//! Offboarding is a state machine of its own inside the tenant's `offboarding` state: started
//! (with the final report) → access revoked → resources deleted (not before `grace_until`) →
//! completed (the tenant is `offboarded` and pseudonymised). Each step is recorded once and
//! audited; a crash between steps resumes at the first step not recorded.

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::budget::Budget;
use crate::error::Invalid;
use crate::store::DailyCost;
use crate::tenant::TenantId;

/// `[lifecycle]` settings offboarding follows, recorded with each offboarding when it starts
/// (a later configuration change does not alter an offboarding under way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffboardingSettings {
    /// How long after the start the tenant's namespaces and objects are kept (0 allowed).
    pub grace_days: u32,
    /// How long the ledger keeps the tenant's entries and audit records (at least 1 year).
    pub retention_years: u32,
    /// Whether the display name is pseudonymised along with the owner.
    pub pseudonymise_display_name: bool,
}

impl Default for OffboardingSettings {
    fn default() -> Self {
        OffboardingSettings {
            grace_days: 7,
            retention_years: 10,
            pseudonymise_display_name: false,
        }
    }
}

impl OffboardingSettings {
    /// The largest grace period (about ten years): beyond it the tenant would never be cleaned up.
    pub const MAX_GRACE_DAYS: u32 = 3660;
    /// The longest retention (beyond the ledger's year 9999 for any start today).
    pub const MAX_RETENTION_YEARS: u32 = 100;

    pub fn validate(self) -> Result<Self, Invalid> {
        if self.grace_days > Self::MAX_GRACE_DAYS {
            return Err(Invalid::new(
                "lifecycle.offboarding_grace_days",
                format!("at most {} days", Self::MAX_GRACE_DAYS),
            ));
        }
        if !(1..=Self::MAX_RETENTION_YEARS).contains(&self.retention_years) {
            return Err(Invalid::new(
                "lifecycle.retention_years",
                format!("1 to {} years", Self::MAX_RETENTION_YEARS),
            ));
        }
        Ok(self)
    }

    pub fn grace_until(&self, started_at: DateTime<Utc>) -> DateTime<Utc> {
        started_at + TimeDelta::days(i64::from(self.grace_days))
    }

    pub fn retain_until(&self, started_at: DateTime<Utc>) -> DateTime<Utc> {
        started_at
            .checked_add_months(Months::new(self.retention_years * 12))
            .expect("retention is bounded")
    }
}

/// One tenant's offboarding as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offboarding {
    pub tenant: TenantId,
    pub started_at: DateTime<Utc>,
    /// The actor (token name) who asked.
    pub requested_by: String,
    pub reason: String,
    pub grace_until: DateTime<Utc>,
    pub retain_until: DateTime<Utc>,
    pub pseudonymise_display_name: bool,
    pub access_revoked_at: Option<DateTime<Utc>>,
    pub resources_deleted_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

impl Offboarding {
    /// Why the resources may not be deleted at `now`, if they may not.
    pub fn deletion_blocked(&self, now: DateTime<Utc>) -> Option<String> {
        if self.access_revoked_at.is_none() {
            return Some(format!(
                "tenant {:?}: access is not revoked yet; its resources are deleted after that",
                self.tenant.as_str()
            ));
        }
        if now < self.grace_until {
            return Some(format!(
                "tenant {:?} is in its grace period until {}; its resources are kept until then",
                self.tenant.as_str(),
                crate::audit::timestamp(self.grace_until)
            ));
        }
        None
    }
}

/// The period a final report covers: from the first day of the tenant's open budget period
/// (or of the month, without a budget) to the offboarding day, both inclusive.
pub fn final_report_period(budget: Option<&Budget>, at: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let to = at.date_naive();
    let from = match budget {
        Some(budget) => budget.period.bounds(at).0,
        None => NaiveDate::from_ymd_opt(to.year(), to.month(), 1).expect("valid month"),
    };
    (from, to)
}

/// The final report as stored: the daily cost rows of the period at full precision, closed at
/// the offboarding instant. `sha256` covers the canonical JSON of the whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalReport {
    pub tenant: TenantId,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub closed_at: DateTime<Utc>,
    pub costs: Vec<DailyCost>,
    pub sha256: [u8; 32],
}

type HmacSha256 = Hmac<Sha256>;

/// The pseudonym of a personal value: `pseudonym-` and the first 16 hex digits of
/// HMAC-SHA256(key, field NUL value). The same value of the same field maps to the same
/// pseudonym (records stay linkable), which only the key's holder can compute.
pub fn pseudonym(key: &[u8], field: &str, value: &str) -> String {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(field.as_bytes());
    mac.update(&[0]);
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    format!("pseudonym-{}", &hex::encode(digest)[..16])
}

/// Whether a value already is a pseudonym (pseudonymising is done once).
pub fn is_pseudonym(value: &str) -> bool {
    value.len() == 26
        && value.starts_with("pseudonym-")
        && value[10..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_keyed_stable_and_recognisable() {
        let a = pseudonym(b"key-one", "owner", "ops@acme.example");
        assert_eq!(a, pseudonym(b"key-one", "owner", "ops@acme.example"));
        assert_ne!(a, pseudonym(b"key-two", "owner", "ops@acme.example"));
        assert_ne!(a, pseudonym(b"key-one", "display_name", "ops@acme.example"));
        assert!(is_pseudonym(&a), "{a}");
        assert!(!is_pseudonym("ops@acme.example"));
        // RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let mut mac = HmacSha256::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn settings_bound_grace_and_retention() {
        let start = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = OffboardingSettings::default();
        assert_eq!(
            s.grace_until(start).to_rfc3339(),
            "2026-12-08T10:00:00+00:00"
        );
        assert_eq!(
            s.retain_until(start).to_rfc3339(),
            "2036-12-01T10:00:00+00:00"
        );
        let zero = OffboardingSettings { grace_days: 0, ..s };
        assert_eq!(zero.validate().unwrap().grace_until(start), start);
        let bad = OffboardingSettings {
            retention_years: 0,
            ..s
        };
        assert_eq!(
            bad.validate().unwrap_err().field,
            "lifecycle.retention_years"
        );
        let bad = OffboardingSettings {
            grace_days: 100_000,
            ..s
        };
        assert_eq!(
            bad.validate().unwrap_err().field,
            "lifecycle.offboarding_grace_days"
        );
    }

    #[test]
    fn the_report_period_starts_with_the_budget_period_or_the_month() {
        let at = DateTime::parse_from_rfc3339("2026-11-17T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            final_report_period(None, at),
            (
                NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 11, 17).unwrap()
            )
        );
    }
}
