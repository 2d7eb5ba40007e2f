//! The reconciler runner against a real Postgres: each test gets a fresh migrated database and
//! drives the runner step by step with test reconcilers that record what they got.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use ledger::enforcement::Fence;
use ledger::store::LeaderLock;
use ledger::tenant::TenantId;
use lifecycle::{
    backoff, BatchOutcome, HandlerError, OutboxEvent, Reconciler, Runner, RunnerSettings,
};
use proptest::prelude::*;
use sqlx::{Connection, PgConnection};
use testkit::db::{fresh_database, TestDb};
use tokio::sync::Notify;

const BASE: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(8);

fn settings(concurrency: usize) -> RunnerSettings {
    RunnerSettings {
        scan_batch: 7,
        max_events_per_step: 5,
        concurrency,
        call_timeout: Duration::from_secs(30),
        backoff_base: BASE,
        backoff_cap: CAP,
        poll_interval: Duration::from_millis(20),
        resync_interval: Duration::from_secs(3600),
    }
}

/// A reconciler that records every event and converge it gets; tenants in `failing` fail.
#[derive(Default)]
struct Recorder {
    got: Mutex<Vec<OutboxEvent>>,
    converged: Mutex<Vec<String>>,
    failing: Mutex<HashSet<String>>,
    /// Hang (after recording) on this event id, once, and say so on `reached`.
    hang_on: Mutex<Option<i64>>,
    reached: Notify,
    name: &'static str,
}

impl Recorder {
    fn named(name: &'static str) -> Arc<Self> {
        Arc::new(Recorder {
            name,
            ..Recorder::default()
        })
    }

    fn fail(&self, tenant: &str, failing: bool) {
        let mut set = self.failing.lock().unwrap();
        if failing {
            set.insert(tenant.to_owned());
        } else {
            set.remove(tenant);
        }
    }

    fn ids(&self) -> Vec<i64> {
        self.got.lock().unwrap().iter().map(|e| e.id).collect()
    }

    /// Per tenant, the seqs handed over, in order.
    fn seqs(&self) -> BTreeMap<String, Vec<i64>> {
        let mut out: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for e in self.got.lock().unwrap().iter() {
            out.entry(e.aggregate_id.clone()).or_default().push(e.seq);
        }
        out
    }
}

#[async_trait]
impl Reconciler for Recorder {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn handle(&self, event: &OutboxEvent) -> Result<(), HandlerError> {
        if self.failing.lock().unwrap().contains(&event.aggregate_id) {
            return Err(HandlerError::new("rejected", "the test says no"));
        }
        self.got.lock().unwrap().push(event.clone());
        let hang = {
            let mut hang_on = self.hang_on.lock().unwrap();
            if *hang_on == Some(event.id) {
                hang_on.take()
            } else {
                None
            }
        };
        if hang.is_some() {
            self.reached.notify_one();
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    async fn converge(&self, tenant: &TenantId) -> Result<(), HandlerError> {
        if self.failing.lock().unwrap().contains(tenant.as_str()) {
            return Err(HandlerError::new("rejected", "the test says no"));
        }
        self.converged
            .lock()
            .unwrap()
            .push(tenant.as_str().to_owned());
        Ok(())
    }
}

async fn lead(db: &TestDb) -> LeaderLock {
    LeaderLock::try_acquire(&db.url, "test", 30, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("no other leader")
}

async fn connect(db: &TestDb) -> PgConnection {
    PgConnection::connect(&db.url).await.unwrap()
}

/// Writes one event for `tenant` on `conn` (in its transaction, if one is open).
async fn write(conn: &mut PgConnection, tenant: &str) -> i64 {
    sqlx::query_scalar(
        "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
         values ('tenant', $1, 'test.event', '{}', now()) returning id",
    )
    .bind(tenant)
    .fetch_one(conn)
    .await
    .unwrap()
}

async fn all_ids(db: &TestDb) -> Vec<i64> {
    let mut conn = connect(db).await;
    sqlx::query_scalar("select id from outbox order by id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

fn runner(db: &TestDb, rec: &Arc<Recorder>, concurrency: usize) -> Runner {
    Runner::new(db.store.clone(), rec.clone(), settings(concurrency)).unwrap()
}

/// Steps at `now` until nothing is left to scan and no due tenant has work; returns the last
/// report. Events held back by a transaction still open anywhere on the server (the tests run
/// in parallel on one cluster, and the scan horizon is the cluster's) are waited for.
async fn drain(
    db: &TestDb,
    runner: &Runner,
    fence: Fence,
    now: DateTime<Utc>,
) -> lifecycle::StepReport {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let report = runner.step(fence, now).await.unwrap();
        let idle = report.scanned == 0 && report.handled == 0 && report.failed == 0;
        if idle
            && db
                .store
                .reconciler_status(runner.name())
                .await
                .unwrap()
                .unscanned
                == 0
        {
            return report;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the runner did not settle in 60 s: {report:?}"
        );
        tokio::task::yield_now().await;
    }
}

fn no_duplicates(ids: &[i64]) {
    let unique: BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "duplicate delivery: {ids:?}");
}

#[tokio::test]
async fn delivers_each_tenants_events_in_order_exactly_once() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let mut conn = connect(&db).await;
    for round in 0..6 {
        for tenant in ["a", "b", "c"] {
            if round < 5 || tenant == "b" {
                write(&mut conn, tenant).await;
            }
        }
    }
    for concurrency in [1, 4] {
        let rec = Recorder::named(if concurrency == 1 {
            "serial"
        } else {
            "parallel"
        });
        let runner = runner(&db, &rec, concurrency);
        let report = drain(&db, &runner, lock.fence(), Utc::now()).await;
        assert_eq!((report.lag, report.parked, report.waiting), (0, 0, 0));
        let mut ids = rec.ids();
        no_duplicates(&ids);
        ids.sort();
        assert_eq!(ids, all_ids(&db).await);
        let seqs = rec.seqs();
        assert_eq!(seqs["a"], vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs["b"], vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(seqs["c"], vec![1, 2, 3, 4, 5]);
        // Each tenant's events in id order too (one writer, one transaction each).
        for tenant in ["a", "b", "c"] {
            let of: Vec<i64> = rec
                .got
                .lock()
                .unwrap()
                .iter()
                .filter(|e| e.aggregate_id == tenant)
                .map(|e| e.id)
                .collect();
            assert!(of.windows(2).all(|w| w[0] < w[1]), "{tenant}: {of:?}");
        }
        let status = db.store.reconciler_status(runner.name()).await.unwrap();
        assert_eq!((status.unscanned, status.backlog), (0, 0));
        assert!(status.last_success_at.is_some());
    }
}

#[tokio::test]
async fn a_failing_tenant_is_parked_with_capped_backoff_while_others_proceed() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let mut conn = connect(&db).await;
    for _ in 0..3 {
        for tenant in ["a", "b", "c"] {
            write(&mut conn, tenant).await;
        }
    }
    let rec = Recorder::named("parking");
    rec.fail("b", true);
    let runner = runner(&db, &rec, 1);
    // Postgres keeps microseconds.
    let t0 = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let report = drain(&db, &runner, fence, t0).await;
    assert_eq!(report.parked, 1);
    assert_eq!(report.lag, 3, "b's three events wait");
    let seqs = rec.seqs();
    assert_eq!(seqs["a"], vec![1, 2, 3]);
    assert_eq!(seqs["c"], vec![1, 2, 3]);
    assert!(!seqs.contains_key("b"));
    let parked = db.store.reconciler_parked("parking").await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].key.aggregate_id, "b");
    assert_eq!(parked[0].attempts, 1);
    assert_eq!(parked[0].waiting_events, 3);
    assert_eq!(
        parked[0].next_attempt_at,
        t0 + chrono::Duration::from_std(BASE).unwrap()
    );
    assert!(parked[0]
        .last_error
        .as_deref()
        .unwrap()
        .contains("rejected"));

    // Not due yet: no attempt. Then each due retry fails once per step, backing off to the cap.
    let report = runner.step(fence, t0).await.unwrap();
    assert_eq!(report.failed, 0);
    let mut now = t0;
    for attempts in 2..=6u32 {
        now = db.store.reconciler_parked("parking").await.unwrap()[0].next_attempt_at;
        let report = runner.step(fence, now).await.unwrap();
        assert_eq!(report.failed, 1, "one attempt per step");
        let parked = &db.store.reconciler_parked("parking").await.unwrap()[0];
        assert_eq!(parked.attempts, attempts);
        let waited = (parked.next_attempt_at - now).to_std().unwrap();
        assert_eq!(waited, backoff(attempts, BASE, CAP));
        assert!(waited <= CAP);
    }
    // A later event of a parked tenant waits behind it; the other tenants go on.
    write(&mut conn, "b").await;
    write(&mut conn, "a").await;
    drain(&db, &runner, fence, now).await;
    assert_eq!(rec.seqs()["a"], vec![1, 2, 3, 4]);
    assert!(!rec.seqs().contains_key("b"));

    rec.fail("b", false);
    let due = db.store.reconciler_parked("parking").await.unwrap()[0].next_attempt_at;
    let report = drain(&db, &runner, fence, due).await;
    assert_eq!((report.parked, report.lag), (0, 0));
    assert_eq!(rec.seqs()["b"], vec![1, 2, 3, 4]);
    no_duplicates(&rec.ids());
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let base = Duration::from_millis(500);
    let cap = Duration::from_secs(60);
    let waits: Vec<_> = (1..=10)
        .map(|n| backoff(n, base, cap).as_millis())
        .collect();
    assert_eq!(
        waits,
        vec![500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]
    );
    assert_eq!(backoff(u32::MAX, base, cap), cap);
}

/// A transaction that took an earlier id (or txid) but commits later is neither skipped nor
/// delivered twice; while it is open, the events behind it wait.
#[tokio::test]
async fn an_event_committed_after_a_later_one_is_delivered_once() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let rec = Recorder::named("late_commit");
    let runner = runner(&db, &rec, 1);

    let mut slow = connect(&db).await;
    let mut fast = connect(&db).await;
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    let early = write(&mut slow, "a").await;
    let later = write(&mut fast, "b").await;
    assert!(early < later);
    // A cursor on id would now take `later` and step over `early` for good.
    let report = runner.step(fence, Utc::now()).await.unwrap();
    assert_eq!((report.scanned, report.handled), (0, 0));
    assert!(
        rec.ids().is_empty(),
        "held back behind the open transaction"
    );
    sqlx::query("commit").execute(&mut slow).await.unwrap();
    drain(&db, &runner, fence, Utc::now()).await;
    assert_eq!(rec.ids(), vec![early, later]);

    // Same tenant: the transaction that took its txid first commits its event second. The
    // tenant's order is the commit order (seq), not the txid order.
    sqlx::query("begin").execute(&mut slow).await.unwrap();
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut slow)
        .await
        .unwrap();
    let first = write(&mut fast, "c").await;
    let second = write(&mut slow, "c").await;
    sqlx::query("commit").execute(&mut slow).await.unwrap();
    drain(&db, &runner, fence, Utc::now()).await;
    let got = rec.got.lock().unwrap().clone();
    let c: Vec<(i64, i64)> = got
        .iter()
        .filter(|e| e.aggregate_id == "c")
        .map(|e| (e.id, e.seq))
        .collect();
    assert_eq!(c, vec![(first, 1), (second, 2)]);
    no_duplicates(&rec.ids());
}

/// A crash between handling an event and recording it: the event is handed over again (at
/// least once), nothing before it is, nothing is lost.
#[tokio::test]
async fn a_crash_between_handling_and_recording_resumes_from_the_cursor() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let mut conn = connect(&db).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        for tenant in ["a", "b"] {
            ids.push(write(&mut conn, tenant).await);
        }
    }
    let rec = Recorder::named("crashy");
    let victim = ids[5]; // b's third event
    *rec.hang_on.lock().unwrap() = Some(victim);
    {
        let doomed = runner(&db, &rec, 1);
        let now = Utc::now();
        tokio::select! {
            outcome = drain(&db, &doomed, fence, now) => panic!("the step should hang, got {outcome:?}"),
            () = rec.reached.notified() => {}
        }
        // The runner and its step are dropped here, mid-batch.
    }
    let before: Vec<i64> = rec.ids();
    assert_eq!(before.last(), Some(&victim));
    let status = db.store.reconciler_status("crashy").await.unwrap();
    assert!(
        status.backlog > 0,
        "the handled, unrecorded event is still in the backlog"
    );

    let restarted = runner(&db, &rec, 1);
    let report = drain(&db, &restarted, fence, Utc::now()).await;
    assert_eq!(report.lag, 0);
    let got = rec.ids();
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &got {
        *counts.entry(*id).or_default() += 1;
    }
    for id in &ids {
        let expected = if *id == victim { 2 } else { 1 };
        assert_eq!(counts.get(id), Some(&expected), "event {id}: {got:?}");
    }
    assert_eq!(rec.seqs()["b"], vec![1, 2, 3, 3, 4]);
    assert_eq!(rec.seqs()["a"], vec![1, 2, 3, 4]);
}

#[tokio::test]
async fn a_stale_fence_moves_nothing() {
    let db = fresh_database().await;
    let old = lead(&db).await;
    let stale = old.fence();
    drop(old);
    let mut conn = connect(&db).await;
    write(&mut conn, "a").await;
    let rec = Recorder::named("fenced");
    let runner = runner(&db, &rec, 1);
    // The lock is released when its connection closes; take it again.
    let new = loop {
        if let Some(lock) = LeaderLock::try_acquire(&db.url, "new", 30, Duration::from_secs(10))
            .await
            .unwrap()
        {
            break lock;
        }
        tokio::task::yield_now().await;
    };
    let err = runner.step(stale, Utc::now()).await.unwrap_err();
    assert!(err.is_fenced(), "{err}");
    assert!(rec.ids().is_empty());
    drain(&db, &runner, new.fence(), Utc::now()).await;
    assert_eq!(rec.ids().len(), 1);
}

/// Writers in many transactions (some with several events, some rolled back) while the runner
/// steps: every committed event once, each tenant's in commit order.
#[tokio::test]
async fn concurrent_writers_every_event_once_in_order() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let rec = Recorder::named("concurrent");
    let runner = runner(&db, &rec, 3);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let url = db.url.clone();
        writers.push(tokio::spawn(async move {
            let mut conn = PgConnection::connect(&url).await.unwrap();
            for i in 0..20u64 {
                let mut tx = conn.begin().await.unwrap();
                let events = 1 + (w + i) % 3;
                let mut written = true;
                for k in 0..events {
                    // Half the writers name two tenants in the opposite order to the other
                    // half, so the per-tenant locks can deadlock: one is then rolled back.
                    let tenant = ["a", "b", "c"][((w * 7 + i * 3 + k) % 3) as usize];
                    written = sqlx::query(
                        "insert into outbox (aggregate_type, aggregate_id, event_type, payload, created_at) \
                         values ('tenant', $1, 'test.event', '{}', now())",
                    )
                    .bind(tenant)
                    .execute(&mut *tx)
                    .await
                    .is_ok();
                    if !written {
                        break;
                    }
                }
                if !written || (w + i) % 5 == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    while writers.iter().any(|w| !w.is_finished()) {
        runner.step(fence, Utc::now()).await.unwrap();
        tokio::task::yield_now().await;
    }
    for w in writers {
        w.await.unwrap();
    }
    drain(&db, &runner, fence, Utc::now()).await;
    let mut ids = rec.ids();
    no_duplicates(&ids);
    ids.sort();
    assert_eq!(ids, all_ids(&db).await);
    for (tenant, seqs) in rec.seqs() {
        let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
        assert_eq!(seqs, expected, "{tenant}");
    }
}

#[tokio::test]
async fn resync_converges_every_tenant_and_counts_failures() {
    let db = fresh_database().await;
    for id in ["acme", "globex", "initech"] {
        testkit::db::create_tenant(&db.store, id).await;
    }
    let rec = Recorder::named("resync");
    rec.fail("globex", true);
    let runner = runner(&db, &rec, 2);
    let report = runner.resync().await.unwrap();
    assert_eq!((report.converged, report.failed), (2, 1));
    let mut converged = rec.converged.lock().unwrap().clone();
    converged.sort();
    assert_eq!(converged, vec!["acme", "initech"]);
    // The store's own lifecycle writes are numbered per tenant too.
    let lock = lead(&db).await;
    rec.fail("globex", false);
    drain(&db, &runner, lock.fence(), Utc::now()).await;
    let seqs = rec.seqs();
    assert_eq!(seqs.len(), 3);
    assert!(seqs.values().all(|s| s == &vec![1]));
}

/// The loop delivers once this daemon leads, resyncs when asked, and returns when stopped.
#[tokio::test]
async fn the_loop_runs_while_leading_and_stops_on_cancel() {
    let db = fresh_database().await;
    testkit::db::create_tenant(&db.store, "acme").await;
    let lock = lead(&db).await;
    let rec = Recorder::named("looping");
    let runner = Arc::new(runner(&db, &rec, 1));
    let (leader_tx, leader_rx) = tokio::sync::watch::channel(None);
    let stop = tokio_util::sync::CancellationToken::new();
    let task = {
        let (runner, stop) = (runner.clone(), stop.clone());
        tokio::spawn(async move { runner.run(leader_rx, stop).await })
    };
    let mut status = db.store.reconciler_status("looping").await.unwrap();
    assert_eq!(status.lag(), 1, "not leading: nothing handled");
    leader_tx.send_replace(Some(lock.fence()));
    while status.lag() > 0 || rec.converged.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
        status = db.store.reconciler_status("looping").await.unwrap();
    }
    assert_eq!(rec.ids().len(), 1);
    runner.resync_handle().request();
    while rec.converged.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the loop stops on cancel")
        .unwrap();
}

#[tokio::test]
async fn runner_settings_and_names_are_checked() {
    let db = fresh_database().await;
    let rec = Recorder::named("Bad-Name");
    assert!(Runner::new(db.store.clone(), rec, settings(1)).is_err());
    let rec = Recorder::named("ok");
    let mut bad = settings(1);
    bad.backoff_cap = Duration::from_millis(1);
    assert!(Runner::new(db.store.clone(), rec.clone(), bad).is_err());
    let mut bad = settings(1);
    bad.concurrency = 0;
    assert!(Runner::new(db.store.clone(), rec, bad).is_err());
}

#[derive(Debug, Clone)]
enum Op {
    Write(usize),
    Fail(usize, bool),
    Step,
    Crash(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize).prop_map(Op::Write),
        1 => (0..3usize, any::<bool>()).prop_map(|(t, f)| Op::Fail(t, f)),
        3 => Just(Op::Step),
        1 => (0..8usize).prop_map(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, .. ProptestConfig::default() })]

    /// Any interleaving of writes, failures, steps and crashes: once healed and drained, each
    /// tenant saw its events in seq order, every event at least once, and more than once only
    /// an event handled in a crashed step.
    #[test]
    fn any_history_delivers_everything_in_order(ops in proptest::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let db = fresh_database().await;
            let lock = lead(&db).await;
            let fence = lock.fence();
            let mut conn = connect(&db).await;
            let rec = Recorder::named("prop");
            let tenants = ["a", "b", "c"];
            let mut now = Utc::now();
            let mut crashed: HashSet<i64> = HashSet::new();
            for op in ops {
                match op {
                    Op::Write(t) => { write(&mut conn, tenants[t]).await; }
                    Op::Fail(t, f) => rec.fail(tenants[t], f),
                    Op::Step => { runner(&db, &rec, 2).step(fence, now).await.unwrap(); }
                    Op::Crash(k) => {
                        let ids = all_ids(&db).await;
                        let Some(&victim) = ids.get(k) else { continue };
                        *rec.hang_on.lock().unwrap() = Some(victim);
                        let doomed = runner(&db, &rec, 1);
                        let reached = tokio::select! {
                            _ = doomed.step(fence, now) => false,
                            () = rec.reached.notified() => true,
                        };
                        *rec.hang_on.lock().unwrap() = None;
                        if reached { crashed.insert(victim); }
                    }
                }
                now += chrono::Duration::seconds(1);
            }
            for t in tenants { rec.fail(t, false); }
            let runner = runner(&db, &rec, 2);
            let far = now + chrono::Duration::days(1);
            let report = drain(&db, &runner, fence, far).await;
            assert_eq!((report.lag, report.parked), (0, 0));
            let got = rec.ids();
            let mut unique: Vec<i64> = got.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
            unique.sort();
            assert_eq!(unique, all_ids(&db).await);
            let mut seen = HashSet::new();
            for id in &got {
                if !seen.insert(*id) {
                    assert!(crashed.contains(id), "{id} twice without a crash");
                }
            }
            for (tenant, seqs) in rec.seqs() {
                // Dropping immediate redeliveries of a crashed event leaves 1..n.
                let mut deduped = seqs.clone();
                deduped.dedup();
                let expected: Vec<i64> = (1..=deduped.len() as i64).collect();
                assert_eq!(deduped, expected, "{tenant}: {seqs:?}");
            }
        });
    }
}

/// A batching reconciler: takes a tenant's due events at once; fails at the event with id
/// `fail_at` (once), reporting the events before it done.
#[derive(Default)]
struct Batcher {
    batches: Mutex<Vec<Vec<OutboxEvent>>>,
    fail_at: Mutex<Option<i64>>,
}

impl Batcher {
    fn done(&self) -> Vec<OutboxEvent> {
        self.batches
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl Reconciler for Batcher {
    fn name(&self) -> &'static str {
        "batcher"
    }

    fn batches(&self) -> bool {
        true
    }

    async fn handle(&self, _event: &OutboxEvent) -> Result<(), HandlerError> {
        unreachable!("a batching reconciler is handed batches")
    }

    async fn handle_batch(&self, events: &[OutboxEvent]) -> BatchOutcome {
        let failing = self
            .fail_at
            .lock()
            .unwrap()
            .take_if(|id| events.iter().any(|e| e.id == *id));
        let done = match failing {
            Some(id) => events.iter().position(|e| e.id == id).unwrap(),
            None => events.len(),
        };
        self.batches.lock().unwrap().push(events[..done].to_vec());
        BatchOutcome {
            done,
            failure: failing.map(|_| HandlerError::new("rejected", "the test says no")),
        }
    }

    async fn converge(&self, _tenant: &TenantId) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_batching_reconciler_gets_each_tenants_events_at_once_and_parks_at_a_failure() {
    let db = fresh_database().await;
    let lock = lead(&db).await;
    let fence = lock.fence();
    let mut conn = connect(&db).await;
    // One transaction, so one scan takes them all (each tenant's events are then one batch).
    let mut tx = conn.begin().await.unwrap();
    let mut b_ids = Vec::new();
    for _ in 0..6 {
        for tenant in ["a", "b", "c"] {
            let id = write(&mut tx, tenant).await;
            if tenant == "b" {
                b_ids.push(id);
            }
        }
    }
    tx.commit().await.unwrap();
    let rec = Arc::new(Batcher::default());
    *rec.fail_at.lock().unwrap() = Some(b_ids[2]);
    let settings = RunnerSettings {
        scan_batch: 100,
        max_events_per_step: 100,
        ..settings(2)
    };
    let runner = Runner::new(db.store.clone(), rec.clone(), settings).unwrap();
    let t0 = DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap();
    let report = drain(&db, &runner, fence, t0).await;
    // One batch per tenant; b's first two are recorded, b parked at its third.
    assert_eq!(report.parked, 1);
    assert_eq!(report.lag, 4, "b's last four events wait");
    let sizes: BTreeMap<String, Vec<usize>> = rec
        .batches
        .lock()
        .unwrap()
        .iter()
        .filter(|b| !b.is_empty())
        .fold(BTreeMap::new(), |mut m, b| {
            m.entry(b[0].aggregate_id.clone())
                .or_default()
                .push(b.len());
            m
        });
    assert_eq!(sizes["a"], [6]);
    assert_eq!(sizes["b"], [2]);
    assert_eq!(sizes["c"], [6]);
    let parked = db.store.reconciler_parked("batcher").await.unwrap();
    assert_eq!(
        (
            parked[0].key.aggregate_id.as_str(),
            parked[0].waiting_events
        ),
        ("b", 4)
    );
    // Not before its backoff; after it, the rest of b in one batch, from the failed one on.
    drain(&db, &runner, fence, t0).await;
    assert_eq!(rec.done().len(), 14);
    let report = drain(&db, &runner, fence, t0 + chrono::Duration::seconds(2)).await;
    assert_eq!((report.lag, report.parked), (0, 0));
    let done = rec.done();
    let ids: Vec<i64> = done.iter().map(|e| e.id).collect();
    no_duplicates(&ids);
    assert_eq!(ids.len(), 18);
    let b: Vec<i64> = done
        .iter()
        .filter(|e| e.aggregate_id == "b")
        .map(|e| e.seq)
        .collect();
    assert_eq!(b, [1, 2, 3, 4, 5, 6]);
    let status = db.store.reconciler_status("batcher").await.unwrap();
    assert_eq!(status.oldest_pending_at, None);
}
