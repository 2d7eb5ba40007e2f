//! The README's event catalogue: every event type the ledger writes to the outbox has a
//! heading with its `ce_type` and an example of its data that is a version 1 document.

use serde_json::Value;

/// Every outbox event type: `grep -rn 'outbox::enqueue' ledger/src/store` and
/// `LifecycleOp::event_type`.
const EVENT_TYPES: [&str; 21] = [
    "tenant.created",
    "tenant.requested",
    "tenant.approved",
    "tenant.rejected",
    "tenant.updated",
    "tenant.budget_changed",
    "tenant.exemption_set",
    "tenant.suspended",
    "tenant.resumed",
    "tenant.isolated",
    "tenant.released",
    "tenant.offboarding",
    "tenant.access_revoked",
    "tenant.offboarded",
    "enforcement.action_opened",
    "enforcement.action_approved",
    "enforcement.action_rejected",
    "enforcement.action_applied",
    "enforcement.action_restored",
    "enforcement.action_cancelled",
    "budget.threshold_crossed",
];

#[test]
fn the_readme_lists_every_event_type_with_an_example() {
    let readme = include_str!("../../README.md");
    let catalogue = readme
        .split("\n### Event catalogue\n")
        .nth(1)
        .expect("README has an event catalogue")
        .split("\n## ")
        .next()
        .unwrap();
    for event_type in EVENT_TYPES {
        let ce_type = relay::ce_type(event_type);
        let section = catalogue
            .split("\n#### ")
            .skip(1)
            .find(|s| {
                s.lines()
                    .next()
                    .is_some_and(|heading| heading.contains(&format!("`{ce_type}`")))
            })
            .unwrap_or_else(|| panic!("no heading for {ce_type}"));
        let example = section
            .split("```json\n")
            .nth(1)
            .and_then(|s| s.split("\n```").next())
            .unwrap_or_else(|| panic!("no example for {ce_type}"));
        let data: Value = serde_json::from_str(example)
            .unwrap_or_else(|e| panic!("the example of {ce_type} is not JSON: {e}"));
        assert_eq!(data["version"], 1, "{ce_type}");
        assert!(data["tenant_id"].is_string(), "{ce_type}");
        assert!(data["payload"].is_object(), "{ce_type}");
    }
    // Every type in the catalogue is one the ledger writes.
    for heading in catalogue.split("\n#### ").skip(1) {
        let line = heading.lines().next().unwrap();
        for part in line.split('`').filter(|p| p.starts_with("io.budgetd.")) {
            assert!(
                EVENT_TYPES.iter().any(|t| relay::ce_type(t) == part),
                "{part} is not an event the ledger writes"
            );
        }
    }
}
