//! Table-driven and property tests of `plan`, against a model of the executor and the cluster.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::TimeZone;
use ledger::budget::{BudgetPeriod, Thresholds};
use ledger::currency::Currency;
use ledger::enforcement::BudgetState;
use ledger::money::Money;
use proptest::prelude::*;

use serde_json::json;

use super::*;
use crate::alerts::Severity;
use crate::cluster::{NamespaceFootprint, QuotaHard, Tighten, Workload, WorkloadKind};
use crate::policy::Ladder;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn t(id: &str) -> TenantId {
    TenantId::parse(id).unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).unwrap()
}

fn status(tenant: &str, spent: &str, forecast: &str, budget: &str) -> BudgetStatus {
    BudgetStatus {
        tenant: t(tenant),
        tenant_state: TenantState::Active,
        period: BudgetPeriod::Monthly,
        period_start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        period_end: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        budget: Money {
            amount: d(budget),
            currency: Currency::parse("currency", "EUR").unwrap(),
        },
        thresholds: Thresholds::parse(vec![80, 100]).unwrap(),
        spent: d(spent),
        trailing: Decimal::ZERO,
        trailing_start: now(),
        data_until: Some(now()),
        forecast: d(forecast),
        complete: true,
        state: BudgetState::Ok,
    }
}

fn policy() -> Policy {
    Policy {
        default_ladder: Ladder::default_with(Tighten::Factor(d("0.5"))),
        ladders: BTreeMap::new(),
        hysteresis_percent: d("5"),
        exemptions: BTreeMap::new(),
        dry_run: false,
    }
}

fn footprint() -> Footprint {
    Footprint {
        namespaces: BTreeMap::from([(
            "team-a".to_owned(),
            NamespaceFootprint {
                quota: Some(QuotaHard::from([
                    ("cpu".to_owned(), "8".to_owned()),
                    ("memory".to_owned(), "16Gi".to_owned()),
                    ("pods".to_owned(), "20".to_owned()),
                ])),
                workloads: vec![
                    Workload {
                        kind: WorkloadKind::Deployment,
                        name: "web".to_owned(),
                        replicas: 3,
                        hpa: None,
                    },
                    Workload {
                        kind: WorkloadKind::StatefulSet,
                        name: "db".to_owned(),
                        replicas: 1,
                        hpa: None,
                    },
                    Workload {
                        kind: WorkloadKind::Deployment,
                        name: "api".to_owned(),
                        replicas: 4,
                        hpa: Some("api".to_owned()),
                    },
                ],
                cronjobs: BTreeMap::from([("report".to_owned(), false)]),
                suspended_label: false,
            },
        )]),
    }
}

/// The executor and the cluster, as the plan's properties need them.
#[derive(Debug, Clone)]
struct World {
    open: Vec<OpenRung>,
    closed: Vec<(i64, bool)>,
    backward: BTreeMap<i64, ChangeSet>,
    cluster: BTreeMap<TenantId, Footprint>,
    states: BTreeMap<TenantId, TenantState>,
    next_id: i64,
}

impl World {
    fn new(tenants: &[&str]) -> World {
        World {
            open: Vec::new(),
            closed: Vec::new(),
            backward: BTreeMap::new(),
            cluster: tenants.iter().map(|id| (t(id), footprint())).collect(),
            states: tenants
                .iter()
                .map(|id| (t(id), TenantState::Active))
                .collect(),
            next_id: 1,
        }
    }

    fn cluster_state(&self) -> ClusterState {
        ClusterState {
            footprints: self.cluster.clone(),
        }
    }

    fn with_states(&self, mut statuses: Vec<BudgetStatus>) -> Vec<BudgetStatus> {
        for s in &mut statuses {
            s.tenant_state = self.states[&s.tenant];
        }
        statuses
    }

    fn plan(&self, statuses: &[BudgetStatus], policy: &Policy, now: DateTime<Utc>) -> Vec<Action> {
        plan(
            &self.with_states(statuses.to_vec()),
            policy,
            &self.cluster_state(),
            &self.open,
            now,
        )
    }

    /// As the executor does: the effect of the action's step on what the cluster shows is
    /// recorded, then applied.
    fn apply_action(&mut self, id: i64, step: &Step) {
        let i = self.open.iter().position(|a| a.id == id).unwrap();
        let tenant = self.open[i].tenant.clone();
        if step.action.kind() != ActionKind::Notify {
            let effect = effect(&step.action, &self.cluster[&tenant]).unwrap();
            self.cluster
                .get_mut(&tenant)
                .unwrap()
                .apply(&effect.forward);
            self.open[i].forward = Some(effect.forward.to_json());
            self.backward.insert(id, effect.backward);
        }
        if step.action.kind() == ActionKind::Suspend {
            self.states.insert(tenant, TenantState::Suspended);
        }
        self.open[i].state = ActionState::Applied;
    }

    fn execute(&mut self, actions: &[Action]) {
        for action in actions {
            match action {
                Action::Open {
                    tenant,
                    step,
                    period_start,
                    state,
                    not_before,
                    apply_now,
                    ..
                } => {
                    let id = self.next_id;
                    self.next_id += 1;
                    self.open.push(OpenRung {
                        id,
                        tenant: tenant.clone(),
                        period_start: *period_start,
                        step_key: step.key(),
                        kind: step.action.kind(),
                        state: *state,
                        not_before: *not_before,
                        forward: None,
                    });
                    if *apply_now {
                        self.apply_action(id, step);
                    }
                }
                Action::Apply { id, step, .. } => self.apply_action(*id, step),
                Action::Close {
                    id,
                    tenant,
                    kind,
                    was_applied,
                    ..
                } => {
                    if let Some(back) = self.backward.remove(id) {
                        self.cluster.get_mut(tenant).unwrap().apply(&back);
                    }
                    if *kind == ActionKind::Suspend && *was_applied {
                        self.states.insert(tenant.clone(), TenantState::Active);
                    }
                    self.open.retain(|a| a.id != *id);
                    self.closed.push((*id, *was_applied));
                }
                Action::Repair {
                    tenant, changes, ..
                } => {
                    self.cluster.get_mut(tenant).unwrap().apply(changes);
                }
                // The executor records the failure; the action stays as it is.
                Action::Corrupt { .. } => {}
            }
        }
    }

    fn approve_all(&mut self) {
        for a in &mut self.open {
            if a.state == ActionState::Pending {
                a.state = ActionState::Approved;
            }
        }
    }

    /// Plans and executes, approves what waits for approval, and plans and executes again: a
    /// tenant over its top rung ends up suspended.
    fn execute_approving(&mut self, statuses: &[BudgetStatus], policy: &Policy) {
        self.execute(&self.plan(statuses, policy, now()));
        self.approve_all();
        self.execute(&self.plan(statuses, policy, now()));
    }

    /// Someone sets the replicas of `tenant`'s web deployment (in team-a) behind the
    /// enforcer's back.
    fn scale_web(&mut self, tenant: &str, replicas: i32) {
        self.cluster
            .get_mut(&t(tenant))
            .unwrap()
            .namespaces
            .get_mut("team-a")
            .unwrap()
            .workloads[0]
            .replicas = replicas;
    }
}

fn kinds(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .map(|a| match a {
            Action::Open { step, state, .. } => format!("open {} {state}", step.key()),
            Action::Apply { step, .. } => format!("apply {}", step.action.kind().as_str()),
            Action::Close {
                kind, was_applied, ..
            } => format!("close {} applied={was_applied}", kind.as_str()),
            Action::Repair { changes, .. } => format!("repair {}", changes.len()),
            Action::Corrupt { kind, .. } => format!("corrupt {}", kind.as_str()),
        })
        .collect()
}

#[test]
fn the_default_ladder_step_by_step() {
    let policy = policy();
    let cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("10", "50", vec![]),
        (
            "10",
            "100",
            vec!["open forecast:100:notify:warning scheduled"],
        ),
        ("80", "90", vec!["open actual:80:notify:warning scheduled"]),
        (
            "100",
            "150",
            vec![
                "open forecast:100:notify:warning scheduled",
                "open actual:80:notify:warning scheduled",
                "open actual:100:notify:critical scheduled",
                "open actual:100:tighten_quota scheduled",
            ],
        ),
        (
            "120",
            "130",
            vec![
                "open forecast:100:notify:warning scheduled",
                "open actual:80:notify:warning scheduled",
                "open actual:100:notify:critical scheduled",
                "open actual:100:tighten_quota scheduled",
                "open actual:120:suspend pending",
            ],
        ),
    ];
    for (spent, forecast, want) in cases {
        let world = World::new(&["a"]);
        let got = world.plan(&[status("a", spent, forecast, "100")], &policy, now());
        assert_eq!(kinds(&got), want, "spent {spent} forecast {forecast}");
    }
}

#[test]
fn incomplete_data_means_no_action_at_all() {
    let policy = policy();
    let mut world = World::new(&["a"]);
    let over = status("a", "130", "150", "100");
    let actions = world.plan(std::slice::from_ref(&over), &policy, now());
    world.execute(&actions);
    world.approve_all();
    // Would apply the suspension and, with a raised budget, restore everything: but the data
    // is incomplete, so nothing happens either way.
    for s in [over, status("a", "10", "10", "1000")] {
        let incomplete = BudgetStatus {
            complete: false,
            ..s
        };
        assert!(world.plan(&[incomplete], &policy, now()).is_empty());
    }
}

#[test]
fn hysteresis_keeps_a_hovering_tenant_steady() {
    let policy = policy();
    let mut world = World::new(&["a"]);
    let actions = world.plan(&[status("a", "81", "90", "100")], &policy, now());
    world.execute(&actions);
    assert_eq!(world.open.len(), 1);
    // 78% is below 80 but within the 5-point band: the alert stays.
    for spent in ["78", "76", "79.9", "75"] {
        assert!(world
            .plan(&[status("a", spent, "90", "100")], &policy, now())
            .is_empty());
    }
    let cleared = world.plan(&[status("a", "74.99", "90", "100")], &policy, now());
    assert_eq!(kinds(&cleared), ["close notify applied=true"]);
}

#[test]
fn approval_grace_and_rejection() {
    let mut policy = policy();
    policy.default_ladder = Ladder::new(vec![Step {
        at_percent: 100,
        on: Basis::Actual,
        action: StepAction::Suspend,
        approval: Approval::Required,
        grace_seconds: 600,
    }])
    .unwrap();
    let over = [status("a", "130", "150", "100")];
    let mut world = World::new(&["a"]);
    let opened = world.plan(&over, &policy, now());
    assert!(matches!(
        &opened[..],
        [Action::Open {
            state: ActionState::Pending,
            apply_now: false,
            ..
        }]
    ));
    world.execute(&opened);
    assert!(
        world.plan(&over, &policy, now()).is_empty(),
        "pending waits"
    );
    world.approve_all();
    assert!(
        world.plan(&over, &policy, now()).is_empty(),
        "grace not over"
    );
    let later = now() + Duration::seconds(600);
    assert_eq!(kinds(&world.plan(&over, &policy, later)), ["apply suspend"]);

    // A rejected action occupies its rung until the condition clears.
    let mut world = World::new(&["a"]);
    world.execute(&world.plan(&over, &policy, now()));
    world.open[0].state = ActionState::Rejected;
    assert!(world.plan(&over, &policy, later).is_empty());
    assert_eq!(
        kinds(&world.plan(&[status("a", "10", "10", "100")], &policy, later)),
        ["close suspend applied=false"]
    );
}

#[test]
fn a_new_period_an_exemption_or_a_missing_budget_restores_everything() {
    let policy = policy();
    let over = [status("a", "130", "150", "100")];
    let setup = || {
        let mut world = World::new(&["a"]);
        world.execute_approving(&over, &policy);
        assert_eq!(world.states[&t("a")], TenantState::Suspended);
        world
    };

    let mut next_period = status("a", "0", "0", "100");
    next_period.period_start = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let mut exempt = policy.clone();
    exempt.exemptions.insert(t("a"), now() + Duration::days(3));
    for (statuses, policy) in [
        (vec![next_period], &policy),
        (over.to_vec(), &exempt),
        (vec![], &policy),
    ] {
        let mut world = setup();
        let actions = world.plan(&statuses, policy, now());
        // Newest first: the suspension is undone before the tightening under it.
        let closes: Vec<i64> = actions
            .iter()
            .filter_map(|a| match a {
                Action::Close { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(closes.len(), 5);
        assert!(closes.windows(2).all(|w| w[0] > w[1]));
        world.execute(&actions);
        assert_eq!(world.cluster[&t("a")], footprint());
        assert_eq!(world.states[&t("a")], TenantState::Active);
    }
}

#[test]
fn drift_is_repaired_and_hpa_workloads_are_left_alone() {
    let policy = policy();
    let over = [status("a", "130", "150", "100")];
    let mut world = World::new(&["a"]);
    world.execute_approving(&over, &policy);
    let ns = &world.cluster[&t("a")].namespaces["team-a"];
    assert_eq!(ns.quota.as_ref().unwrap()["pods"], "0");
    let replicas: Vec<i32> = ns.workloads.iter().map(|w| w.replicas).collect();
    assert_eq!(replicas, [0, 0, 4], "the autoscaled api keeps its replicas");

    // Someone scales the suspended web deployment back up.
    world.scale_web("a", 2);
    let repair = world.plan(&over, &policy, now());
    assert_eq!(kinds(&repair), ["repair 1"]);
    world.execute(&repair);
    assert!(world.plan(&over, &policy, now()).is_empty());
    assert_eq!(
        world.cluster[&t("a")].namespaces["team-a"].workloads[0].replicas,
        0
    );
}

#[test]
fn an_unreadable_record_is_reported_and_never_read_as_no_changes() {
    let policy = policy();
    let over = [status("a", "130", "150", "100")];
    let mut world = World::new(&["a"]);
    world.execute_approving(&over, &policy);
    let suspension = world
        .open
        .iter()
        .position(|a| a.kind == ActionKind::Suspend)
        .unwrap();
    let id = world.open[suspension].id;
    // Someone scales the suspended web deployment back up.
    world.scale_web("a", 2);
    assert_eq!(kinds(&world.plan(&over, &policy, now())), ["repair 1"]);

    // Read as "no changes", the suspension's record would let the tightening beneath it "repair"
    // the quota from `pods: 0` back to `pods: 10`.
    world.open[suspension].forward = Some(json!([]));
    let undo = world.plan(&over, &policy, now());
    assert!(
        matches!(&undo[..], [Action::Repair { id: tightening, .. }] if *tightening != id),
        "{:?}",
        kinds(&undo)
    );

    // Garbage, or no record at all for an applied suspension: reported, and nothing else. The
    // rung stays occupied (no second suspension) and the tenant's drift waits for the record.
    for forward in [Some(json!({"garbage": true})), Some(json!("[]")), None] {
        world.open[suspension].forward = forward.clone();
        let actions = world.plan(&over, &policy, now());
        assert_eq!(kinds(&actions), ["corrupt suspend"], "{forward:?}");
        let Action::Corrupt {
            id: reported,
            error,
            ..
        } = &actions[0]
        else {
            unreachable!()
        };
        assert_eq!((*reported, error.record), (id, "forward"));
    }

    // Closing restores from `backward`, so the unreadable `forward` does not hold it up.
    let raised = [status("a", "10", "10", "1000")];
    let closing = world.plan(&raised, &policy, now());
    assert!(kinds(&closing).contains(&"close suspend applied=true".to_owned()));
    assert!(!closing.iter().any(|a| matches!(a, Action::Corrupt { .. })));
}

#[test]
fn an_action_whose_first_attempt_left_an_unreadable_record_is_not_applied() {
    let policy = policy();
    let over = [status("a", "105", "105", "100")];
    let mut world = World::new(&["a"]);
    // A tightening whose first attempt recorded its changes and then failed.
    world.open.push(OpenRung {
        id: 7,
        tenant: t("a"),
        period_start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
        step_key: "actual:100:tighten_quota".to_owned(),
        kind: ActionKind::TightenQuota,
        state: ActionState::Scheduled,
        not_before: now(),
        forward: Some(json!([])),
    });
    let tighten = |actions: &[Action]| {
        kinds(actions)
            .into_iter()
            .filter(|k| k.contains("tighten"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tighten(&world.plan(&over, &policy, now())),
        ["apply tighten_quota"]
    );
    world.open[0].forward = Some(json!([{"op": "set_quota", "namespace": "team-a"}]));
    assert_eq!(
        tighten(&world.plan(&over, &policy, now())),
        ["corrupt tighten_quota"],
        "neither applied nor opened again"
    );
}

#[test]
fn dry_run_plans_and_never_applies() {
    let mut policy = policy();
    policy.dry_run = true;
    let over = [status("a", "130", "150", "100")];
    let mut world = World::new(&["a"]);
    let actions = world.plan(&over, &policy, now());
    assert!(actions.iter().all(|a| matches!(
        a,
        Action::Open {
            state: ActionState::Planned,
            apply_now: false,
            ..
        }
    )));
    world.execute(&actions);
    assert!(world.plan(&over, &policy, now()).is_empty());
    assert_eq!(world.cluster[&t("a")], footprint());
}

#[test]
fn an_operator_suspension_is_not_taken_over() {
    let policy = policy();
    let mut world = World::new(&["a"]);
    world.states.insert(t("a"), TenantState::Suspended);
    let actions = world.plan(&[status("a", "130", "150", "100")], &policy, now());
    assert!(!kinds(&actions).iter().any(|k| k.contains("suspend")));
}

// Properties ---------------------------------------------------------------------------------

fn arb_footprint() -> impl Strategy<Value = Footprint> {
    let quantity = prop::sample::select(vec!["1", "3", "500m", "8Gi", "1.5", "20", "7", "100Mi"]);
    let quota = prop::option::of(prop::collection::btree_map(
        prop::sample::select(vec![
            "cpu",
            "memory",
            "pods",
            "requests.storage",
            "services",
        ]),
        quantity,
        1..4,
    ));
    let workload = (
        prop::bool::ANY,
        prop::sample::select(vec!["a", "b", "c"]),
        0..6i32,
        prop::option::of(Just("hpa")),
    );
    let namespace = (
        quota,
        prop::collection::vec(workload, 0..4),
        prop::collection::btree_map(prop::sample::select(vec!["x", "y"]), prop::bool::ANY, 0..3),
        prop::bool::ANY,
    )
        .prop_map(|(quota, workloads, cronjobs, label)| {
            let mut seen = std::collections::BTreeSet::new();
            NamespaceFootprint {
                quota: quota.map(|q| {
                    q.into_iter()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect()
                }),
                workloads: workloads
                    .into_iter()
                    .filter(|(deploy, name, _, _)| seen.insert((*deploy, *name)))
                    .map(|(deploy, name, replicas, hpa)| Workload {
                        kind: if deploy {
                            WorkloadKind::Deployment
                        } else {
                            WorkloadKind::StatefulSet
                        },
                        name: name.to_owned(),
                        replicas,
                        hpa: hpa.map(str::to_owned),
                    })
                    .collect(),
                cronjobs: cronjobs
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect(),
                suspended_label: label,
            }
        });
    prop::collection::btree_map(
        prop::sample::select(vec!["ns-1", "ns-2", "ns-3"]),
        namespace,
        1..3,
    )
    .prop_map(|namespaces| Footprint {
        namespaces: namespaces
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
    })
}

fn arb_tighten() -> impl Strategy<Value = Tighten> {
    prop_oneof![
        (1..100u32).prop_map(|p| Tighten::Factor(Decimal::new(i64::from(p), 2))),
        Just(Tighten::Profile {
            name: "tight".to_owned(),
            hard: QuotaHard::from([
                ("cpu".to_owned(), "1".to_owned()),
                ("pods".to_owned(), "5".to_owned())
            ]),
        }),
    ]
}

/// A budget trajectory: (spent, forecast) in percent of a 100 EUR budget.
fn arb_trajectory() -> impl Strategy<Value = Vec<(u32, u32, bool)>> {
    prop::collection::vec((0..160u32, 0..200u32, prop::bool::weighted(0.85)), 1..12)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn restore_of_tighten_and_suspend_is_the_identity(q in arb_footprint(), how in arb_tighten()) {
        for target in [q.tightened(&how).unwrap(), q.suspended(), q.tightened(&how).unwrap().suspended()] {
            let forward = diff(&q, &target);
            let backward = diff(&target, &q);
            let fields = |cs: &[Change]| cs.iter().map(Change::target).collect::<Vec<_>>();
            prop_assert_eq!(fields(&forward), fields(&backward));
            let mut cluster = q.clone();
            cluster.apply(&forward);
            prop_assert_eq!(&cluster, &target);
            cluster.apply(&backward);
            prop_assert_eq!(&cluster, &q);
        }
    }

    #[test]
    fn an_effect_is_target_minus_observed_and_reads_back_from_its_record(q in arb_footprint(), how in arb_tighten()) {
        let steps = [
            (StepAction::TightenQuota(how.clone()), q.tightened(&how).unwrap()),
            (StepAction::Suspend, q.suspended()),
        ];
        for (step, target) in steps {
            let e = effect(&step, &q).unwrap();
            prop_assert_eq!(e.forward.to_vec(), diff(&q, &target));
            prop_assert_eq!(e.backward.to_vec(), diff(&target, &q));
            for recorded in [&e.forward, &e.backward] {
                prop_assert_eq!(&ChangeSet::decode("forward", &recorded.to_json()).unwrap(), recorded);
            }
        }
        prop_assert_eq!(effect(&StepAction::Notify(Severity::Warning), &q).unwrap(), Effect::default());
    }

    #[test]
    fn no_action_on_incomplete_data(trajectory in arb_trajectory()) {
        let policy = policy();
        let mut world = World::new(&["a"]);
        for (spent, forecast, complete) in trajectory {
            let mut s = status("a", &spent.to_string(), &forecast.to_string(), "100");
            s.complete = complete;
            let actions = world.plan(&[s], &policy, now());
            if !complete {
                prop_assert!(actions.is_empty());
            }
            world.execute(&actions);
            world.approve_all();
        }
    }

    #[test]
    fn planning_again_after_applying_yields_nothing(trajectory in arb_trajectory(), approve in prop::bool::ANY) {
        let policy = policy();
        let mut world = World::new(&["a", "b"]);
        for (spent, forecast, complete) in trajectory {
            let mut a = status("a", &spent.to_string(), &forecast.to_string(), "100");
            a.complete = complete;
            let b = status("b", &(spent / 2).to_string(), &forecast.to_string(), "100");
            let statuses = [a, b];
            let actions = world.plan(&statuses, &policy, now());
            world.execute(&actions);
            let again = world.plan(&statuses, &policy, now());
            prop_assert!(again.is_empty(), "{:?}", kinds(&again));
            if approve {
                world.approve_all();
            }
        }
    }

    #[test]
    fn every_tighten_and_suspend_is_restored_exactly_once(trajectory in arb_trajectory()) {
        let policy = policy();
        let mut world = World::new(&["a"]);
        let mut applied = std::collections::BTreeSet::new();
        for (spent, forecast, complete) in trajectory {
            let mut s = status("a", &spent.to_string(), &forecast.to_string(), "100");
            s.complete = complete;
            let actions = world.plan(&[s], &policy, now());
            world.execute(&actions);
            world.approve_all();
            for a in &world.open {
                if a.state == ActionState::Applied && a.kind != ActionKind::Notify {
                    applied.insert(a.id);
                }
            }
        }
        // The budget is raised: everything clears.
        let raised = [status("a", "10", "10", "100000")];
        let actions = world.plan(&raised, &policy, now());
        world.execute(&actions);
        prop_assert!(world.plan(&raised, &policy, now()).is_empty());
        prop_assert!(world.open.is_empty());
        for id in applied {
            let restores = world.closed.iter().filter(|(c, was)| *c == id && *was).count();
            prop_assert_eq!(restores, 1, "action {}", id);
        }
        prop_assert_eq!(&world.cluster[&t("a")], &footprint());
        prop_assert_eq!(world.states[&t("a")], TenantState::Active);
    }
}

#[test]
fn severity_is_part_of_the_rung() {
    let step = |severity| Step {
        at_percent: 100,
        on: Basis::Actual,
        action: StepAction::Notify(severity),
        approval: Approval::Auto,
        grace_seconds: 0,
    };
    assert!(Ladder::new(vec![step(Severity::Warning), step(Severity::Critical)]).is_ok());
}
