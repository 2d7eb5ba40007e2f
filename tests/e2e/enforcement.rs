//! Enforcement end to end: the real ledger, the real API, a real Alertmanager, the real
//! kube::Client against the stateful fake API server. One tenant goes through 80%, 100% and
//! 120% of its budget (the suspension approved through the API), survives an Alertmanager
//! restart, and is restored exactly when its budget is raised.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Datelike, TimeZone, Utc};
use enforcer::alertmanager::{Alertmanager, AlertmanagerSettings};
use enforcer::cluster::Tighten;
use enforcer::executor::{Enforcer, EnforcerSettings};
use enforcer::kubernetes::{KubernetesActuator, KubernetesSettings};
use enforcer::policy::Ladder;
use ledger::audit::{Actor, AuditContext};
use ledger::currency::Currency;
use ledger::enforcement::Fence;
use ledger::entry::{EntryKey, NewEntry, UnitName, Window};
use ledger::price_book::{MeterName, NewPriceBookVersion, PriceBookVersion};
use ledger::store::LeaderLock;
use ledger::tenant::TenantId;
use ledger::usage::{CollectedWindow, CommitMode};
use ledger::Store;
use metrics::LocalRecorderGuard;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use rust_decimal::Decimal;
use serde_json::{json, Value};
use testkit::alertmanager::AlertmanagerProcess;
use testkit::clock;
use testkit::fake_kube::{FakeKube, Resource};

use budgetd::api::Clock;

use crate::support::{self, token, TestApp};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn ctx() -> AuditContext {
    AuditContext {
        actor: Actor::system("test"),
        request_id: "test".to_owned(),
    }
}

/// A rate of 1 EUR per core-hour, so quantity in core-seconds / 3600 is the amount.
async fn price_book(store: &Store) -> PriceBookVersion {
    let rates = BTreeMap::from([(MeterName::parse("meter", "cpu").unwrap(), dec("1"))]);
    let new = NewPriceBookVersion::new(
        Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap(),
        Currency::parse("currency", "EUR").unwrap(),
        rates,
    )
    .unwrap();
    store.add_price_book_version(&ctx(), &new).await.unwrap()
}

/// Spend of `euros` on the tenant in a fresh one-minute window ending at `end`, committed as
/// the collector does (complete, watermark advanced).
async fn spend(
    store: &Store,
    version: &PriceBookVersion,
    tenant: &TenantId,
    end: DateTime<Utc>,
    euros: &str,
) {
    let window = Window::new(end - chrono::Duration::seconds(60), end).unwrap();
    let meter = MeterName::parse("meter", "cpu").unwrap();
    let pricing = version
        .pricing(
            &meter,
            UnitName::parse("u", "core_hour").unwrap(),
            Decimal::from(3600),
        )
        .unwrap();
    let entry = NewEntry::new(
        EntryKey {
            tenant: tenant.clone(),
            meter,
            window,
        },
        dec(euros) * Decimal::from(3600),
        UnitName::parse("u", "core_seconds").unwrap(),
        pricing,
    )
    .unwrap();
    let collected = CollectedWindow {
        window,
        entries: vec![entry],
        unallocated: vec![],
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: vec![],
        problems: vec![],
    };
    store
        .commit_windows(&[collected], &CommitMode::Collect, true, "test")
        .await
        .unwrap();
}

fn settings() -> EnforcerSettings {
    EnforcerSettings {
        default_ladder: Ladder::default_with(Tighten::Factor(dec("0.5"))),
        ladders: BTreeMap::new(),
        hysteresis_percent: dec("5"),
        dry_run: false,
        trailing_days: 7,
        max_lag_seconds: 1800,
        lookback_seconds: 3600,
        resend_interval: Duration::from_secs(60),
        resolved_resend: Duration::from_secs(900),
        api_url: Some("http://budgetd.example".to_owned()),
    }
}

/// The in-process stack runs on a clock of its own that starts at a fixed instant in the
/// middle of a month (`clock::mid_month`), so the ladder's arithmetic (period, forecast) is the
/// same on every day of the year.
struct Stack {
    app: TestApp,
    start: DateTime<Utc>,
    clock: Clock,
    kube: FakeKube,
    am: [AlertmanagerProcess; 2],
    enforcer: Enforcer,
    lock: LeaderLock,
    version: PriceBookVersion,
    tenant: TenantId,
}

impl Stack {
    async fn start() -> Stack {
        Stack::with_settings(settings()).await
    }

    async fn with_settings(settings: EnforcerSettings) -> Stack {
        let start = clock::mid_month();
        let clock: Clock = Arc::new(clock::starting_at(start));
        let app = support::app_with_clock(clock.clone()).await;
        let kube = FakeKube::start().await;
        let am = [
            AlertmanagerProcess::start().await,
            AlertmanagerProcess::start().await,
        ];
        let cluster = KubernetesActuator::new(
            KubernetesSettings::new(
                Duration::from_secs(5),
                3,
                Duration::from_millis(10),
                Duration::from_millis(50),
            )
            .with_api_url(kube.url()),
        )
        .await
        .unwrap();
        let alerts = Alertmanager::new(AlertmanagerSettings {
            urls: am.iter().map(AlertmanagerProcess::url).collect(),
            request_timeout: Duration::from_secs(5),
            max_attempts: 2,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
        })
        .unwrap();
        let enforcer = Enforcer::new(
            app.db.store.clone(),
            Arc::new(cluster),
            Arc::new(alerts),
            settings,
        );
        let lock = LeaderLock::try_acquire(&app.db.url, "test", 15, Duration::from_secs(10))
            .await
            .unwrap()
            .expect("the only daemon leads");
        let version = price_book(&app.db.store).await;
        support::seed_tenants(&app, &["acme"]).await;
        Stack {
            app,
            start,
            clock,
            kube,
            am,
            enforcer,
            lock,
            version,
            tenant: TenantId::parse("acme").unwrap(),
        }
    }

    fn fence(&self) -> Fence {
        self.lock.fence()
    }

    fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// The first instant of the stack's month.
    fn month_start(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(self.start.year(), self.start.month(), 1, 0, 0, 0)
            .unwrap()
    }

    /// The whole minute `back` minutes before the stack's start.
    fn minute(&self, back: i64) -> DateTime<Utc> {
        let t = self.start.timestamp();
        Utc.timestamp_opt(t - t % 60 - 60 * back, 0).unwrap()
    }

    async fn cycle(&self) -> enforcer::executor::CycleReport {
        let report = self
            .enforcer
            .run_once(self.fence(), self.now())
            .await
            .unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        report
    }

    async fn api(&self, method: Method, path: &str, role: &str, body: Option<Value>) -> Value {
        let reply = self.app.call(method, path, Some(&token(role)), body).await;
        assert!(
            reply.status.is_success(),
            "{path}: {} {:?}",
            reply.status,
            reply.body
        );
        reply.body
    }

    /// Finance gives acme a monthly budget of `euros` EUR, in force since the day before the
    /// stack's month began.
    async fn set_budget(&self, euros: &str) {
        let from = self.month_start() - chrono::Duration::days(1);
        self.put_budget(json!({"amount": euros, "currency": "EUR", "effective_from": from}))
            .await;
    }

    /// Finance raises acme's budget to `euros` EUR from now on (the API's default
    /// `effective_from`).
    async fn raise_budget(&self, euros: &str) {
        self.put_budget(json!({"amount": euros, "currency": "EUR"}))
            .await;
    }

    async fn put_budget(&self, body: Value) {
        self.api(
            Method::PUT,
            "/api/v1/tenants/acme/budget",
            "finance",
            Some(body),
        )
        .await;
    }

    /// The enforcement action `id`, as a viewer sees it.
    async fn action(&self, id: i64) -> Value {
        self.api(
            Method::GET,
            &format!("/api/v1/enforcement/actions/{id}"),
            "viewer",
            None,
        )
        .await
    }

    async fn actions(&self) -> Vec<Value> {
        self.api(
            Method::GET,
            "/api/v1/enforcement/actions?tenant=acme",
            "viewer",
            None,
        )
        .await["actions"]
            .as_array()
            .unwrap()
            .clone()
    }

    /// The labels of the active alerts of each replica, as `alertname/threshold/severity`.
    async fn alerts(&self) -> Vec<Vec<String>> {
        let mut out = Vec::new();
        for am in &self.am {
            let mut names: Vec<String> = am
                .alerts()
                .await
                .into_iter()
                .map(|a| {
                    format!(
                        "{}/{}/{}",
                        a.labels["alertname"], a.labels["threshold_percent"], a.labels["severity"]
                    )
                })
                .collect();
            names.sort();
            out.push(names);
        }
        out
    }

    fn spec_quota_pods(&self) -> String {
        self.kube
            .object(Resource::ResourceQuota, "acme-prod", "budgetd-quota")
            .unwrap()["spec"]["hard"]["pods"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn spec(&self) -> Value {
        let hard = |r, n| self.kube.object(r, "acme-prod", n).unwrap()["spec"].clone();
        json!({
            "quota": hard(Resource::ResourceQuota, "budgetd-quota")["hard"],
            "web": hard(Resource::Deployment, "web")["replicas"],
            "db": hard(Resource::StatefulSet, "db")["replicas"],
            "api": hard(Resource::Deployment, "api")["replicas"],
            "report": hard(Resource::CronJob, "report")["suspend"],
            "labels": self.kube.object(Resource::Namespace, "", "acme-prod").unwrap()["metadata"]["labels"],
            "other_quota": self.kube.object(Resource::ResourceQuota, "globex-prod", "budgetd-quota").unwrap()["spec"]["hard"],
        })
    }
}

#[tokio::test]
async fn a_tenant_goes_through_the_ladder_and_is_restored_exactly() {
    let s = Stack::start().await;
    s.kube
        .create_namespace("acme-prod", &[("tenant", "acme"), ("team", "payments")]);
    s.kube.create_quota(
        "acme-prod",
        &[
            ("requests.cpu", "8"),
            ("requests.memory", "16Gi"),
            ("pods", "20"),
        ],
    );
    s.kube.create_deployment("acme-prod", "web", 3);
    s.kube.create_deployment("acme-prod", "api", 4);
    s.kube.create_hpa("acme-prod", "api", "Deployment", "api");
    s.kube.create_statefulset("acme-prod", "db", 1);
    s.kube.create_cronjob("acme-prod", "report", false);
    s.kube
        .create_namespace("globex-prod", &[("tenant", "globex")]);
    s.kube.create_quota("globex-prod", &[("pods", "7")]);
    let prior = s.spec();

    let month_start = s.month_start();
    let minute = |back: i64| s.minute(back);
    s.set_budget("100").await;

    // Below every threshold, and no forecast yet: nothing.
    spend(&s.app.db.store, &s.version, &s.tenant, minute(10), "10").await;
    assert!(s.cycle().await.actions.is_empty());

    // 85%: the 80% warning fires (and the forecast, which extrapolates the spend, too).
    spend(&s.app.db.store, &s.version, &s.tenant, minute(9), "75").await;
    s.cycle().await;
    let expected_80 = vec![
        "TenantBudgetForecast/100/warning".to_owned(),
        "TenantBudgetThreshold/80/warning".to_owned(),
    ];
    assert_eq!(
        s.alerts().await,
        vec![expected_80.clone(), expected_80.clone()]
    );
    assert_eq!(s.spec(), prior, "notifications do not touch the cluster");
    let alert = &s.am[0].alerts().await[1];
    assert_eq!(alert.labels["tenant"], "acme");
    assert_eq!(alert.labels["period"], month_start.date_naive().to_string());
    assert_eq!(alert.annotations["spent"], "85.00");
    assert_eq!(alert.annotations["budget"], "100.00");
    assert!(alert.labels.keys().all(|k| [
        "alertname",
        "tenant",
        "threshold_percent",
        "severity",
        "period"
    ]
    .contains(&k.as_str())));

    // 105%: critical, and the quota is tightened by half.
    spend(&s.app.db.store, &s.version, &s.tenant, minute(8), "20").await;
    s.cycle().await;
    let quota = &s.spec()["quota"];
    assert_eq!(
        quota,
        &json!({"requests.cpu": "4", "requests.memory": "8Gi", "pods": "10"})
    );
    assert_eq!(s.spec()["other_quota"], prior["other_quota"]);
    assert!(s.alerts().await[0].contains(&"TenantBudgetThreshold/100/critical".to_owned()));

    // 125%: the suspension waits for approval.
    spend(&s.app.db.store, &s.version, &s.tenant, minute(7), "20").await;
    s.cycle().await;
    let pending: Vec<Value> = s
        .actions()
        .await
        .into_iter()
        .filter(|a| a["state"] == "pending")
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0]["kind"], "suspend");
    assert_eq!(
        s.spec()["web"],
        3,
        "nothing is suspended before the approval"
    );
    let status = s
        .api(
            Method::GET,
            "/api/v1/tenants/acme/budget/status",
            "tenant",
            None,
        )
        .await;
    assert_eq!(
        (
            &status["spent"],
            &status["remaining"],
            &status["state"],
            &status["data_complete"]
        ),
        (
            &json!("125"),
            &json!("-25"),
            &json!("exceeded"),
            &json!(true)
        ),
        "{status}"
    );
    let id = pending[0]["id"].as_i64().unwrap();
    // A viewer cannot approve; an operator can.
    let denied = s
        .app
        .call(
            Method::POST,
            &format!("/api/v1/enforcement/actions/{id}/approve"),
            Some(&token("viewer")),
            Some(json!({"reason": "x"})),
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let approved = s
        .api(
            Method::POST,
            &format!("/api/v1/enforcement/actions/{id}/approve"),
            "operator",
            Some(json!({"reason": "runaway batch job, confirmed with the owner"})),
        )
        .await;
    assert_eq!(approved["state"], "approved");
    assert_eq!(approved["decided_by"], "operator-user");
    s.cycle().await;
    let suspended = s.spec();
    assert_eq!(suspended["web"], 0);
    assert_eq!(suspended["db"], 0);
    assert_eq!(
        suspended["api"], 4,
        "the autoscaled deployment is reported, not fought"
    );
    assert_eq!(suspended["report"], true);
    assert_eq!(suspended["labels"]["budgetd.io/suspended"], "true");
    assert_eq!(suspended["quota"]["pods"], "0");
    let tenant = s
        .api(Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await;
    assert_eq!(tenant["state"], "suspended");
    let applied = s.action(id).await;
    assert_eq!(
        applied["outcome"]["autoscaled_not_scaled"],
        json!(["acme-prod/deployment/api (hpa api)"])
    );
    let all_alerts = vec![
        "TenantBudgetForecast/100/warning".to_owned(),
        "TenantBudgetThreshold/100/critical".to_owned(),
        "TenantBudgetThreshold/80/warning".to_owned(),
        "TenantSuspended/120/critical".to_owned(),
    ];
    assert_eq!(
        s.alerts().await,
        vec![all_alerts.clone(), all_alerts.clone()]
    );

    // Someone scales the suspended web deployment back up: the next cycle repairs it.
    s.kube
        .set_replicas_as("kubectl", Resource::Deployment, "acme-prod", "web", 2);
    s.cycle().await;
    assert_eq!(s.spec()["web"], 0);

    // An Alertmanager restart loses its alerts; the next cycle re-sends them.
    let mut s = s;
    s.am[1].restart().await;
    assert_eq!(s.alerts().await[1], Vec::<String>::new());
    let starts_before = s.am[0].alerts().await[0].starts_at;
    s.cycle().await;
    assert_eq!(s.alerts().await, vec![all_alerts.clone(), all_alerts]);
    assert_eq!(
        s.am[1].alerts().await[0].starts_at,
        starts_before,
        "startsAt is stable"
    );

    // The budget is raised: every change is undone, exactly.
    s.raise_budget("1000").await;
    s.cycle().await;
    assert_eq!(s.spec(), prior);
    assert_eq!(s.alerts().await, vec![Vec::<String>::new(), Vec::new()]);
    let tenant = s
        .api(Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await;
    assert_eq!(tenant["state"], "active");
    assert!(s.cycle().await.actions.is_empty(), "nothing left to do");

    // The actions and the audit log tell the whole story.
    let mut story: Vec<(String, String)> = s
        .actions()
        .await
        .iter()
        .map(|a| {
            (
                a["step_key"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    story.sort();
    assert_eq!(
        story,
        [
            ("actual:100:notify:critical", "restored"),
            ("actual:100:tighten_quota", "restored"),
            ("actual:120:suspend", "restored"),
            ("actual:80:notify:warning", "restored"),
            ("forecast:100:notify:warning", "restored"),
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
    );
    let audit: Vec<String> = sqlx::query_scalar("select action from audit_log where action like 'enforcement.%' or action like 'tenant.%' order by seq")
        .fetch_all(s.app.db.store.pool())
        .await
        .unwrap();
    let count = |what: &str| audit.iter().filter(|a| *a == what).count();
    assert_eq!(count("enforcement.action_opened"), 5);
    assert_eq!(count("enforcement.action_applied"), 5);
    assert_eq!(count("enforcement.action_approved"), 1);
    assert_eq!(count("enforcement.drift_repaired"), 1);
    assert_eq!(count("enforcement.action_restored"), 5);
    assert_eq!(count("tenant.suspended"), 1);
    assert_eq!(count("tenant.active"), 1);
    let events: Vec<String> = sqlx::query_scalar("select event_type from outbox where event_type in ('tenant.suspended', 'tenant.resumed') order by id")
        .fetch_all(s.app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(events, ["tenant.suspended", "tenant.resumed"]);
    assert!(matches!(
        s.app.db.store.verify_audit_chain().await.unwrap(),
        ledger::store::ChainStatus::Intact { .. }
    ));
}

/// A recorder of the metrics recorded on this thread (`#[tokio::test]` runs every task on it:
/// the executor's too), for as long as the guard lives; and its handle.
fn local_metrics() -> (PrometheusHandle, LocalRecorderGuard<'static>) {
    // Leaked: the guard borrows it for the rest of the test.
    let recorder: &'static PrometheusRecorder =
        Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
    (
        recorder.handle(),
        metrics::set_default_local_recorder(recorder),
    )
}

/// A counter without labels as the daemon's exporter renders it on `/metrics` (0 before the
/// first increment).
fn counter(metrics: &PrometheusHandle, name: &str) -> u64 {
    metrics
        .render()
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Restoring applies the recorded prior values, and nothing else: an unreadable `backward`
/// is not "nothing to restore". The action stays applied with the error on it, the alarm
/// metric counts it every cycle, and once an operator repairs the record it is restored exactly.
#[tokio::test]
async fn a_corrupted_backward_keeps_the_action_open_and_raises_the_alarm() {
    let (metrics, _local) = local_metrics();
    let corrupt = || counter(&metrics, "budgetd_enforcement_corrupt_actions_total");

    let s = Stack::start().await;
    let pool = s.app.db.store.pool().clone();
    s.kube.create_namespace("acme-prod", &[("tenant", "acme")]);
    s.kube
        .create_quota("acme-prod", &[("requests.cpu", "8"), ("pods", "20")]);
    let quota = || {
        s.kube
            .object(Resource::ResourceQuota, "acme-prod", "budgetd-quota")
            .unwrap()["spec"]["hard"]
            .clone()
    };
    let prior = quota();
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, s.minute(8), "105").await;
    s.cycle().await;
    let tightened = json!({"requests.cpu": "4", "pods": "10"});
    assert_eq!(quota(), tightened);

    let (id, backward): (i64, Value) = sqlx::query_as(
        "select id, backward from enforcement_actions where kind = 'tighten_quota' and state = 'applied'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        backward,
        json!([{"op": "set_quota", "namespace": "acme-prod", "hard": prior}])
    );
    sqlx::query("update enforcement_actions set backward = $2 where id = $1")
        .bind(id)
        .bind(json!({"garbage": true}))
        .execute(&pool)
        .await
        .unwrap();
    let restored = |id: i64| {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from audit_log where action = 'enforcement.action_restored' \
             and target_id = $1",
        )
        .bind(id.to_string())
        .fetch_one(&pool)
    };

    // The budget is raised: the notifications are restored, the tightening cannot be.
    s.raise_budget("1000").await;
    for cycle in 1..=2 {
        let report = s.enforcer.run_once(s.fence(), s.now()).await.unwrap();
        let [(failed, error)] = &report.failed[..] else {
            panic!("cycle {cycle}: {:?}", report.failed);
        };
        assert_eq!(*failed, id);
        assert!(
            error.contains("the recorded backward changes cannot be read"),
            "{error}"
        );
        let action = s.action(id).await;
        assert_eq!(
            (&action["state"], &action["attempts"], &action["last_error"]),
            (&json!("applied"), &json!(1 + cycle), &json!(error)),
            "cycle {cycle}"
        );
        assert_eq!(
            quota(),
            tightened,
            "cycle {cycle}: the cluster is untouched"
        );
        assert_eq!(restored(id).await.unwrap(), 0, "cycle {cycle}");
        assert_eq!(corrupt(), cycle, "counted every cycle until repaired");
    }
    let states: Vec<String> = sqlx::query_scalar(
        "select state from enforcement_actions where kind = 'notify' order by id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(states, ["restored", "restored", "restored"]);

    // An operator puts the recorded prior values back: the next cycle restores them exactly.
    sqlx::query("update enforcement_actions set backward = $2 where id = $1")
        .bind(id)
        .bind(&backward)
        .execute(&pool)
        .await
        .unwrap();
    s.cycle().await;
    assert_eq!(quota(), prior);
    assert_eq!(restored(id).await.unwrap(), 1);
    assert_eq!(corrupt(), 2);
    assert!(s.cycle().await.actions.is_empty(), "nothing left to do");
}

/// An applied notification whose recorded step cannot be read is counted as corrupt every
/// cycle, and its alert is not made up from the pieces; the other alerts still go out.
#[tokio::test]
async fn an_unreadable_step_is_counted_and_its_alert_is_not_made_up() {
    let (metrics, _local) = local_metrics();
    let corrupt = || counter(&metrics, "budgetd_enforcement_corrupt_actions_total");

    let mut s = Stack::start().await;
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, s.minute(8), "85").await;
    assert_eq!(s.cycle().await.alerts_firing, 2);
    assert_eq!(corrupt(), 0);

    sqlx::query(
        "update enforcement_actions set step = '{\"at\": \"eighty\"}' \
         where step_key = 'actual:80:notify:warning'",
    )
    .execute(s.app.db.store.pool())
    .await
    .unwrap();
    // A replica that lost its alerts shows exactly what the next cycle sends.
    s.am[1].restart().await;
    for cycle in 1..=2 {
        let report = s.cycle().await;
        assert_eq!(report.alerts_firing, 1, "cycle {cycle}");
        assert_eq!(corrupt(), cycle, "cycle {cycle}");
    }
    assert_eq!(
        s.alerts().await[1],
        vec!["TenantBudgetForecast/100/warning".to_owned()]
    );
}

#[tokio::test]
async fn a_stale_leader_cannot_enforce() {
    let s = Stack::start().await;
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, s.minute(0), "90").await;
    let stale = s.fence();
    let url = s.app.db.url.clone();
    let now = s.now();
    let Stack {
        lock,
        enforcer,
        app,
        ..
    } = s;
    lock.release(Duration::from_secs(5)).await;
    let next = LeaderLock::try_acquire(&url, "next", 15, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the lock is free again");
    assert_eq!(next.fence().0, stale.0 + 1);
    let err = enforcer.run_once(stale, now).await.unwrap_err();
    assert!(
        matches!(
            err,
            enforcer::executor::EnforceError::Ledger(ledger::Error::Fenced {
                fence,
                leader: Some(leader),
            }) if fence == stale && leader == next.fence()
        ),
        "{err}"
    );
    let opened: i64 = sqlx::query_scalar("select count(*) from enforcement_actions")
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
    assert_eq!(opened, 0, "nothing was written with the stale token");
    let report = enforcer.run_once(next.fence(), now).await.unwrap();
    assert!(!report.actions.is_empty());
}

/// A `budgetd run` process, killed on drop.
struct Daemon {
    child: std::process::Child,
    api: String,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(
        config: &std::path::Path,
        db_url: &str,
        am_url: &str,
        log: std::path::PathBuf,
    ) -> Daemon {
        let (child, api) = crate::support::spawn_daemon(
            std::process::Command::new(env!("CARGO_BIN_EXE_budgetd"))
                .env("BUDGETD_CONFIG", config)
                .env("BUDGETD_DATABASE_URL", db_url)
                .env("BUDGETD_MIGRATE_DATABASE_URL", db_url)
                .env("BUDGETD_ALERTMANAGER_URL", am_url)
                .env("BUDGETD_LOG", "info")
                .env_remove("BUDGETD_BOOTSTRAP_ADMIN_TOKEN"),
            &log,
        );
        Daemon { child, api, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 50 ms until it is true; panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn leader_holder(store: &Store) -> Option<(i64, String)> {
    sqlx::query_as("select token, holder from leader_lease")
        .fetch_optional(store.pool())
        .await
        .unwrap()
}

async fn applied(store: &Store) -> Vec<(String, i64)> {
    sqlx::query_as(
        "select a.step_key, count(l.seq) from enforcement_actions a \
         left join audit_log l on l.action = 'enforcement.action_applied' and l.target_id = a.id::text \
         group by a.id, a.step_key order by a.step_key",
    )
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn when_the_leader_dies_the_other_daemon_takes_over_and_nothing_is_applied_twice() {
    let db = testkit::db::fresh_database().await;
    let store = db.store.clone();
    let version = price_book(&store).await;
    let tenant = testkit::db::create_tenant(&store, "acme").await;
    // The daemons run on the wall clock: the spend goes into the latest minute of this month.
    let (month_start, end) = this_months_minute();
    store
        .set_budget(
            &ctx(),
            &tenant,
            &ledger::budget::NewBudget {
                amount: ledger::money::Money {
                    amount: dec("100"),
                    currency: Currency::parse("currency", "EUR").unwrap(),
                },
                period: ledger::budget::BudgetPeriod::Monthly,
                thresholds: ledger::budget::Thresholds::parse(vec![80, 100]).unwrap(),
                effective_from: month_start - chrono::Duration::days(1),
            },
        )
        .await
        .unwrap();
    spend(&store, &version, &tenant, end, "125").await;
    let kube = FakeKube::start().await;
    kube.create_namespace("acme-prod", &[("tenant", "acme")]);
    kube.create_quota("acme-prod", &[("pods", "20")]);
    kube.create_deployment("acme-prod", "web", 3);
    let am = AlertmanagerProcess::start().await;

    let dir = std::env::temp_dir().join(format!("budgetd-failover-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("budgetd.toml");
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml"),
    )
    .unwrap();
    let text = example
        .replace(
            "[collector]\nenabled = true",
            "[collector]\nenabled = false",
        )
        .replace(
            "api_url = \"http://127.0.0.1:8001\"",
            &format!("api_url = {:?}", kube.url()),
        )
        .replace("interval_seconds = 60", "interval_seconds = 1")
        .replace("retry_seconds = 5", "retry_seconds = 1")
        .replace("check_seconds = 5", "check_seconds = 1");
    for changed in [
        "enabled = false",
        "interval_seconds = 1",
        "retry_seconds = 1",
        "check_seconds = 1",
        &kube.url(),
    ] {
        assert!(text.contains(changed), "{changed}");
    }
    std::fs::write(&config, text).unwrap();

    let first = Daemon::start(&config, &db.url, am.url().as_str(), dir.join("first.log"));
    // The first daemon leads and applies what needs no approval; the suspension waits.
    wait_until(
        Duration::from_secs(60),
        "the first daemon to lead and tighten",
        || async {
            applied(&store)
                .await
                .iter()
                .filter(|(_, n)| *n == 1)
                .count()
                == 4
        },
    )
    .await;
    let (token, holder) = leader_holder(&store).await.unwrap();
    assert!(holder.starts_with(&format!("{}-", first.pid())), "{holder}");
    let second = Daemon::start(&config, &db.url, am.url().as_str(), dir.join("second.log"));
    let client = reqwest::Client::new();
    let metrics_url = format!("{}/metrics", second.api);
    wait_until(
        Duration::from_secs(60),
        "the second daemon to follow",
        || async {
            match client.get(&metrics_url).send().await {
                Ok(r) => r
                    .text()
                    .await
                    .unwrap_or_default()
                    .contains("budgetd_leader 0"),
                Err(_) => false,
            }
        },
    )
    .await;
    assert_eq!(
        leader_holder(&store).await.unwrap().0,
        token,
        "the follower did not take over"
    );

    let mut first = first;
    first.child.kill().unwrap(); // SIGKILL: no clean release
    first.child.wait().unwrap();
    let failover = wait_until(
        Duration::from_secs(30),
        "the second daemon to take over",
        || async {
            leader_holder(&store)
                .await
                .is_some_and(|(_, h)| h.starts_with(&format!("{}-", second.pid())))
        },
    )
    .await;
    eprintln!("failover took {failover:?}");
    assert_eq!(leader_holder(&store).await.unwrap().0, token + 1);

    let pending: i64 =
        sqlx::query_scalar("select id from enforcement_actions where state = 'pending'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    store
        .decide_action(
            &ctx(),
            pending,
            true,
            &ledger::names::Reason::parse("reason", "approved after failover").unwrap(),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the new leader to suspend",
        || async { applied(&store).await.iter().all(|(_, n)| *n >= 1) },
    )
    .await;
    assert_eq!(
        applied(&store).await,
        [
            ("actual:100:notify:critical", 1),
            ("actual:100:tighten_quota", 1),
            ("actual:120:suspend", 1),
            ("actual:80:notify:warning", 1),
            ("forecast:100:notify:warning", 1),
        ]
        .map(|(k, n)| (k.to_owned(), n)),
        "{}",
        second.log()
    );
    let writes = kube.writes();
    let count = |path: &str| writes.iter().filter(|w| w.path.ends_with(path)).count();
    assert_eq!(
        count("/resourcequotas/budgetd-quota"),
        2,
        "one tighten, one suspend: {writes:?}"
    );
    assert_eq!(count("/deployments/web/scale"), 1, "{writes:?}");
    assert_eq!(
        kube.object(Resource::Deployment, "acme-prod", "web")
            .unwrap()["spec"]["replicas"],
        0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// For tests of `budgetd` processes, which run on the wall clock: the first instant of this
/// month and the end of the latest one-minute window that starts in it (see
/// `clock::recent_window`; in the first minute of a month it ends after now).
fn this_months_minute() -> (DateTime<Utc>, DateTime<Utc>) {
    let (start, end) = clock::recent_window(Utc::now(), 60);
    let month_start = Utc
        .with_ymd_and_hms(start.year(), start.month(), 1, 0, 0, 0)
        .unwrap();
    (month_start, end)
}

#[tokio::test]
async fn shadow_mode_records_planned_actions_and_applies_nothing() {
    let s = Stack::with_settings(EnforcerSettings {
        dry_run: true,
        ..settings()
    })
    .await;
    s.kube.create_namespace("acme-prod", &[("tenant", "acme")]);
    s.kube.create_quota("acme-prod", &[("pods", "20")]);
    s.kube.create_deployment("acme-prod", "web", 3);
    let end = s.minute(1);
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, end, "130").await;
    let report = s.cycle().await;
    assert_eq!(report.actions.len(), 5);
    let states: Vec<String> = s
        .actions()
        .await
        .iter()
        .map(|a| a["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, vec!["planned"; 5]);
    assert!(
        s.cycle().await.actions.is_empty(),
        "planned actions occupy their rungs"
    );
    assert!(s.kube.writes().is_empty(), "{:?}", s.kube.writes());
    assert_eq!(s.alerts().await, vec![Vec::<String>::new(), Vec::new()]);
    let tenant = s
        .api(Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await;
    assert_eq!(tenant["state"], "active");
}

#[tokio::test]
async fn incomplete_data_stops_enforcement_until_it_is_complete() {
    let s = Stack::with_settings(EnforcerSettings {
        lookback_seconds: 300,
        ..settings()
    })
    .await;
    s.kube.create_namespace("acme-prod", &[("tenant", "acme")]);
    s.kube.create_quota("acme-prod", &[("pods", "20")]);
    let end = s.minute(2);
    // An old gap, outside the five-minute lookback, does not block enforcement.
    let old_end = s.minute(12);
    let old_gap = CollectedWindow {
        window: Window::new(old_end - chrono::Duration::seconds(60), old_end).unwrap(),
        entries: vec![],
        unallocated: vec![],
        unpriced: Vec::new(),
        complete: false,
        incomplete_tenants: vec![],
        problems: vec!["prometheus restarted".to_owned()],
    };
    s.app
        .db
        .store
        .commit_windows(&[old_gap], &CommitMode::Collect, true, "test")
        .await
        .unwrap();
    s.set_budget("100").await;
    // A window whose inputs were incomplete for this tenant: no decision on it.
    let window = Window::new(end - chrono::Duration::seconds(60), end).unwrap();
    let collected = CollectedWindow {
        window,
        entries: vec![],
        unallocated: vec![],
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: vec![s.tenant.clone()],
        problems: vec!["tenant acme: scrape gap".to_owned()],
    };
    s.app
        .db
        .store
        .commit_windows(&[collected], &CommitMode::Collect, true, "test")
        .await
        .unwrap();
    spend(
        &s.app.db.store,
        &s.version,
        &s.tenant,
        end + chrono::Duration::seconds(60),
        "130",
    )
    .await;
    assert!(s.cycle().await.actions.is_empty());
    assert!(s.kube.writes().is_empty());
    // The window is recollected complete: now the enforcer acts.
    let complete = CollectedWindow {
        window,
        entries: vec![],
        unallocated: vec![],
        unpriced: Vec::new(),
        complete: true,
        incomplete_tenants: vec![],
        problems: vec![],
    };
    s.app
        .db
        .store
        .commit_windows(
            &[complete],
            &CommitMode::Recollect {
                reason: "gap filled".into(),
            },
            false,
            "test",
        )
        .await
        .unwrap();
    assert!(!s.cycle().await.actions.is_empty());
    assert_eq!(s.spec_quota_pods(), "10");
}

#[tokio::test]
async fn enforce_once_dry_run_prints_the_plan_and_changes_nothing() {
    let db = testkit::db::fresh_database().await;
    let store = db.store.clone();
    let version = price_book(&store).await;
    let tenant = testkit::db::create_tenant(&store, "acme").await;
    testkit::db::create_tenant(&store, "calm").await;
    let (month_start, end) = this_months_minute();
    for (t, amount) in [("acme", "100"), ("calm", "1000")] {
        store
            .set_budget(
                &ctx(),
                &TenantId::parse(t).unwrap(),
                &ledger::budget::NewBudget {
                    amount: ledger::money::Money {
                        amount: dec(amount),
                        currency: Currency::parse("currency", "EUR").unwrap(),
                    },
                    period: ledger::budget::BudgetPeriod::Monthly,
                    thresholds: ledger::budget::Thresholds::parse(vec![80, 100]).unwrap(),
                    effective_from: month_start - chrono::Duration::days(1),
                },
            )
            .await
            .unwrap();
    }
    spend(&store, &version, &tenant, end, "125").await;
    let before = support::snapshot(&store).await;
    let budgetd = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_budgetd"))
            .env(
                "BUDGETD_CONFIG",
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml"),
            )
            .env("BUDGETD_DATABASE_URL", &db.url)
            .env("BUDGETD_MIGRATE_DATABASE_URL", &db.url)
            .env_remove("BUDGETD_BOOTSTRAP_ADMIN_TOKEN")
            .args(args)
            .output()
            .unwrap()
    };
    let out = budgetd(&["enforce", "--once", "--dry-run"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("TENANT")
            && lines[0].contains("FORECAST")
            && lines[0].contains("REASON"),
        "{stdout}"
    );
    let acme: Vec<&&str> = lines.iter().filter(|l| l.starts_with("acme ")).collect();
    assert_eq!(acme.len(), 5, "{stdout}");
    assert!(
        acme.iter().all(|l| l.contains("125.00")
            && l.contains("100.00 EUR")
            && l.contains("% of the 100.00 EUR budget")),
        "{stdout}"
    );
    assert!(
        acme.iter()
            .any(|l| l.contains("actual ≥ 120%: suspend, approval required [waits for approval]")),
        "{stdout}"
    );
    assert!(
        acme.iter().any(|l| l.contains("tighten quota ×0.5")),
        "{stdout}"
    );
    assert!(
        !stdout.contains("calm "),
        "a tenant within budget has no row: {stdout}"
    );
    assert!(
        stdout.contains("2 tenants with a budget; 1 with actions; 0 skipped"),
        "{stdout}"
    );
    assert_eq!(
        support::snapshot(&store).await,
        before,
        "the dry run wrote nothing"
    );
    let actions: i64 = sqlx::query_scalar("select count(*) from enforcement_actions")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(actions, 0);

    let out = budgetd(&["enforce", "--dry-run"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--once"));
}

/// acme's namespace as in the ladder test: a quota, two plain workloads, an autoscaled one and
/// a CronJob; globex's namespace beside it.
fn seed_cluster(s: &Stack) {
    s.kube
        .create_namespace("acme-prod", &[("tenant", "acme"), ("team", "payments")]);
    s.kube.create_quota(
        "acme-prod",
        &[
            ("requests.cpu", "8"),
            ("requests.memory", "16Gi"),
            ("pods", "20"),
        ],
    );
    s.kube.create_deployment("acme-prod", "web", 3);
    s.kube.create_deployment("acme-prod", "api", 4);
    s.kube.create_hpa("acme-prod", "api", "Deployment", "api");
    s.kube.create_statefulset("acme-prod", "db", 1);
    s.kube.create_cronjob("acme-prod", "report", false);
    s.kube
        .create_namespace("globex-prod", &[("tenant", "globex")]);
    s.kube.create_quota("globex-prod", &[("pods", "7")]);
}

async fn audit_actions(store: &Store) -> Vec<String> {
    sqlx::query_scalar("select action from audit_log where target_id = 'acme' order by seq")
        .fetch_all(store.pool())
        .await
        .unwrap()
}

/// An operator's suspension goes through a real enforcer cycle: scaled to zero with the prior
/// values recorded, kept while the budget is fine (budget logic never resumes it), repaired
/// when someone scales back up, and restored exactly after the operator's resume.
#[tokio::test]
async fn an_operator_suspension_is_applied_by_the_enforcer_and_restored_exactly() {
    let s = Stack::start().await;
    seed_cluster(&s);
    let prior = s.spec();
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, s.minute(10), "10").await;

    let body = json!({"reason": "security incident 4711"});
    let tenant = s
        .api(
            Method::POST,
            "/api/v1/tenants/acme/suspend",
            "operator",
            Some(body.clone()),
        )
        .await;
    assert_eq!(tenant["state"], "suspended");
    assert_eq!(tenant["suspended_by"], "operator");
    assert_eq!(
        s.spec(),
        prior,
        "the API records the intent; the enforcer acts"
    );

    s.cycle().await;
    let suspended = s.spec();
    assert_eq!(suspended["web"], 0);
    assert_eq!(suspended["db"], 0);
    assert_eq!(
        suspended["api"], 4,
        "the autoscaled deployment is not fought"
    );
    assert_eq!(suspended["report"], true);
    assert_eq!(suspended["quota"]["pods"], "0");
    assert_eq!(suspended["other_quota"], prior["other_quota"]);

    // The budget is fine: budget logic leaves the operator's suspension alone.
    let report = s.cycle().await;
    assert!(report.actions.is_empty(), "{:?}", report.actions);
    assert_eq!(s.spec(), suspended);
    let tenant = s
        .api(Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await;
    assert_eq!(
        (&tenant["state"], &tenant["suspended_by"]),
        (&json!("suspended"), &json!("operator"))
    );

    // A retried suspend is a no-op.
    let again = s
        .api(
            Method::POST,
            "/api/v1/tenants/acme/suspend",
            "admin",
            Some(body),
        )
        .await;
    assert_eq!(again["state"], "suspended");

    // Someone scales web back up: the next cycle puts the suspension back.
    s.kube
        .set_replicas_as("kubectl", Resource::Deployment, "acme-prod", "web", 5);
    s.cycle().await;
    assert_eq!(s.spec()["web"], 0);

    let tenant = s
        .api(
            Method::POST,
            "/api/v1/tenants/acme/resume",
            "operator",
            Some(json!({"reason": "incident 4711 closed"})),
        )
        .await;
    assert_eq!(tenant["state"], "active");
    assert_eq!(tenant["suspended_by"], Value::Null);
    s.cycle().await;
    assert_eq!(s.spec(), prior, "restored exactly to the prior values");
    s.cycle().await;
    assert_eq!(s.spec(), prior);

    let actions = audit_actions(&s.app.db.store).await;
    for want in [
        "tenant.suspended",
        "tenant.suspension_applied",
        "tenant.active",
        "tenant.suspension_restored",
    ] {
        assert_eq!(
            actions.iter().filter(|a| *a == want).count(),
            1,
            "{want}: {actions:?}"
        );
    }
    let events: Vec<String> = sqlx::query_scalar(
        "select event_type from outbox where aggregate_id = 'acme' \
         and event_type in ('tenant.suspended', 'tenant.resumed') order by seq",
    )
    .fetch_all(s.app.db.store.pool())
    .await
    .unwrap();
    assert_eq!(events, ["tenant.suspended", "tenant.resumed"]);
}

/// A budget suspension is lifted by the budget (or an exemption), never by an operator's
/// resume; nor can an operator's suspend be layered on it.
#[tokio::test]
async fn an_operator_resume_does_not_lift_a_budget_suspension() {
    let s = Stack::start().await;
    seed_cluster(&s);
    s.set_budget("100").await;
    spend(&s.app.db.store, &s.version, &s.tenant, s.minute(7), "125").await;
    s.cycle().await;
    let pending: Vec<Value> = s
        .actions()
        .await
        .into_iter()
        .filter(|a| a["state"] == "pending" && a["kind"] == "suspend")
        .collect();
    let id = pending[0]["id"].as_i64().unwrap();
    s.api(
        Method::POST,
        &format!("/api/v1/enforcement/actions/{id}/approve"),
        "operator",
        Some(json!({"reason": "confirmed with the owner"})),
    )
    .await;
    s.cycle().await;
    let suspended = s.spec();
    assert_eq!(suspended["web"], 0);
    let tenant = s
        .api(Method::GET, "/api/v1/tenants/acme", "viewer", None)
        .await;
    assert_eq!(tenant["suspended_by"], "budget");

    let before = s.app.snapshot().await;
    for verb in ["resume", "suspend"] {
        let reply = s
            .app
            .call(
                Method::POST,
                &format!("/api/v1/tenants/acme/{verb}"),
                Some(&token("admin")),
                Some(json!({"reason": "the owner asked"})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{verb}: {:?}",
            reply.body
        );
        assert_eq!(reply.body["error"]["code"], "suspended_by_budget");
        assert!(
            reply.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/api/v1/tenants/acme/exemption"),
            "{:?}",
            reply.body
        );
    }
    assert_eq!(s.app.snapshot().await, before);
    s.cycle().await;
    assert_eq!(s.spec(), suspended, "still suspended by the budget");
}
