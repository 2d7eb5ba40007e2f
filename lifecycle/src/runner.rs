//! The runner: `step` is one pass (scan the outbox into the backlog, hand each due tenant's
//! events to the reconciler in order, record the outcome); `run` is the thin loop around it
//! that only leads, paces, resyncs and stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesUnordered, StreamExt};
use ledger::enforcement::Fence;
use ledger::store::{OutboxEvent, PendingAggregate};
use ledger::tenant::TenantId;
use ledger::Store;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::{check_name, BatchOutcome, Error, HandlerError, Reconciler, RunnerSettings};

/// The wait after a tenant's `attempts`-th consecutive failure (`attempts >= 1`): `base`,
/// then doubling, never more than `cap`.
pub fn backoff(attempts: u32, base: Duration, cap: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(cap)
}

/// Runs `futures` with at most `limit` at a time; their outputs in completion order.
async fn at_most<F: std::future::Future>(limit: usize, futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs = Vec::with_capacity(futures.len());
    let mut queued = futures.into_iter();
    let mut running = FuturesUnordered::new();
    loop {
        while running.len() < limit.max(1) {
            match queued.next() {
                Some(future) => running.push(future),
                None => break,
            }
        }
        match running.next().await {
            Some(output) => outputs.push(output),
            None => return outputs,
        }
    }
}

/// What one step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReport {
    /// Events moved past the cursor into the backlog.
    pub scanned: u64,
    /// Events the reconciler handled (and that were recorded).
    pub handled: u64,
    /// Failed attempts (each parks its tenant).
    pub failed: u64,
    /// Tenants whose next event is not scanned yet (an earlier change committed by a
    /// transaction with a later txid): they wait for it.
    pub waiting: u64,
    /// Events not handled yet after the step.
    pub lag: i64,
    /// Tenants parked after the step.
    pub parked: i64,
}

impl StepReport {
    /// Whether another step may find work at once (a full scan or a full handling budget).
    pub fn more(&self, settings: &RunnerSettings) -> bool {
        self.scanned >= u64::from(settings.scan_batch)
            || self.handled + self.failed >= u64::from(settings.max_events_per_step)
    }
}

/// What one resync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResyncReport {
    pub converged: u64,
    pub failed: u64,
}

/// Asks a running loop for a resync of every tenant now.
#[derive(Debug, Clone)]
pub struct ResyncHandle(Arc<Notify>);

impl ResyncHandle {
    pub fn request(&self) {
        self.0.notify_one();
    }
}

/// Drives one reconciler over the outbox.
pub struct Runner {
    store: Store,
    reconciler: Arc<dyn Reconciler>,
    settings: RunnerSettings,
    resync: Arc<Notify>,
}

/// How one tenant's delivery in a step ended.
#[derive(Default)]
struct Delivery {
    handled: u64,
    failed: u64,
    waiting: u64,
}

impl Runner {
    pub fn new(
        store: Store,
        reconciler: Arc<dyn Reconciler>,
        settings: RunnerSettings,
    ) -> Result<Self, Error> {
        check_name(reconciler.name())?;
        settings.validate()?;
        Ok(Runner {
            store,
            reconciler,
            settings,
            resync: Arc::new(Notify::new()),
        })
    }

    pub fn name(&self) -> &'static str {
        self.reconciler.name()
    }

    pub fn resync_handle(&self) -> ResyncHandle {
        ResyncHandle(self.resync.clone())
    }

    /// One pass at `now` as the leader holding `fence`: scans up to `scan_batch` events into
    /// the backlog, then hands up to `max_events_per_step` due events to the reconciler, each
    /// tenant's in order, at most one failed attempt per tenant. Safe to abandon at any await
    /// (a dropped future, a crash): what was handled and not recorded is handled again.
    pub async fn step(&self, fence: Fence, now: DateTime<Utc>) -> Result<StepReport, Error> {
        let name = self.name();
        let scanned = self
            .store
            .reconciler_scan(fence, name, i64::from(self.settings.scan_batch))
            .await?;
        let pending = self
            .store
            .reconciler_pending(name, now, i64::from(self.settings.max_events_per_step))
            .await?;
        let deliveries = if self.reconciler.batches() {
            self.deliver_batches(fence, now, pending).await
        } else {
            let mut deliveries = Vec::with_capacity(pending.len());
            for aggregate in pending {
                deliveries.push(self.deliver(fence, now, aggregate));
            }
            at_most(self.settings.concurrency, deliveries).await
        };
        let mut report = StepReport {
            scanned,
            ..StepReport::default()
        };
        let mut first_error = None;
        for delivery in deliveries {
            match delivery {
                Ok(d) => {
                    report.handled += d.handled;
                    report.failed += d.failed;
                    report.waiting += d.waiting;
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if report.handled > 0 {
            self.store.reconciler_succeeded(fence, name, now).await?;
        }
        let status = self.store.reconciler_status(name).await?;
        report.lag = status.lag();
        report.parked = status.parked;
        metrics::gauge!("budgetd_reconciler_lag_events", "reconciler" => name)
            .set(status.lag() as f64);
        metrics::gauge!("budgetd_reconciler_parked_tenants", "reconciler" => name)
            .set(status.parked as f64);
        let oldest_age = status
            .oldest_pending_at
            .map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1e3);
        metrics::gauge!("budgetd_reconciler_oldest_pending_age_seconds", "reconciler" => name)
            .set(oldest_age);
        if let Some(at) = status.last_success_at {
            metrics::gauge!("budgetd_reconciler_last_success_timestamp_seconds", "reconciler" => name)
                .set(at.timestamp_micros() as f64 / 1e6);
        }
        Ok(report)
    }

    /// Hands one tenant's due events to the reconciler in seq order until one fails or the
    /// next one is not scanned yet.
    async fn deliver(
        &self,
        fence: Fence,
        now: DateTime<Utc>,
        aggregate: PendingAggregate,
    ) -> Result<Delivery, Error> {
        let name = self.name();
        let key = &aggregate.key;
        let mut delivery = Delivery::default();
        let mut next = aggregate.delivered_seq + 1;
        for event in &aggregate.events {
            if event.seq != next {
                delivery.waiting = 1;
                break;
            }
            match self.call_handle(event).await {
                Ok(()) => {
                    self.store
                        .reconciler_handled(fence, name, key, event.seq)
                        .await?;
                    metrics::counter!("budgetd_reconciler_events_handled_total", "reconciler" => name)
                        .increment(1);
                    delivery.handled += 1;
                    next += 1;
                }
                Err(failure) => {
                    self.park(fence, now, &aggregate, event, &failure).await?;
                    delivery.failed = 1;
                    break;
                }
            }
        }
        Ok(delivery)
    }

    /// Hands each tenant's due events to a batching reconciler at once (those in seq order
    /// from `delivered_seq + 1` on; `concurrency` tenants at a time), records every tenant's
    /// done events with one write, then parks each tenant at its first failed event.
    async fn deliver_batches(
        &self,
        fence: Fence,
        now: DateTime<Utc>,
        pending: Vec<PendingAggregate>,
    ) -> Vec<Result<Delivery, Error>> {
        let mut calls = Vec::with_capacity(pending.len());
        for (index, aggregate) in pending.iter().enumerate() {
            calls.push(self.hand_over_batch(index, aggregate));
        }
        let outcomes = at_most(self.settings.concurrency, calls).await;
        let mut done = Vec::new();
        let mut failed = Vec::new();
        let mut deliveries = Vec::with_capacity(outcomes.len());
        for (index, waiting, outcome) in outcomes {
            let aggregate = &pending[index];
            let mut delivery = Delivery {
                waiting: u64::from(waiting),
                ..Delivery::default()
            };
            if outcome.done > 0 {
                let first = aggregate.delivered_seq + 1;
                let last = aggregate.events[outcome.done - 1].seq;
                done.push((aggregate.key.clone(), first, last));
                delivery.handled = outcome.done as u64;
            }
            if let Some(failure) = outcome.failure {
                if let Some(event) = aggregate.events.get(outcome.done) {
                    failed.push((index, event, failure));
                    delivery.failed = 1;
                    delivery.waiting = 0;
                }
            }
            deliveries.push(delivery);
        }
        let name = self.name();
        if let Err(e) = self
            .store
            .reconciler_handled_batches(fence, name, &done)
            .await
        {
            return vec![Err(e.into())];
        }
        let handled: u64 = deliveries.iter().map(|d| d.handled).sum();
        metrics::counter!("budgetd_reconciler_events_handled_total", "reconciler" => name)
            .increment(handled);
        for (index, event, failure) in failed {
            let aggregate = &pending[index];
            // A tenant that got events through before failing starts its backoff afresh.
            let attempts = if event.seq > aggregate.delivered_seq + 1 {
                0
            } else {
                aggregate.attempts
            };
            let parked = PendingAggregate {
                attempts,
                ..aggregate.clone()
            };
            if let Err(e) = self.park(fence, now, &parked, event, &failure).await {
                return vec![Err(e)];
            }
        }
        deliveries.into_iter().map(Ok).collect()
    }

    /// One tenant's consecutive due events to the batching reconciler, within `call_timeout`:
    /// (its index, whether a later event waits for an unscanned one, the outcome).
    async fn hand_over_batch(
        &self,
        index: usize,
        aggregate: &PendingAggregate,
    ) -> (usize, bool, BatchOutcome) {
        let first = aggregate.delivered_seq + 1;
        let consecutive = aggregate
            .events
            .iter()
            .zip(first..)
            .take_while(|(event, seq)| event.seq == *seq)
            .count();
        let waiting = consecutive < aggregate.events.len();
        let batch = &aggregate.events[..consecutive];
        if batch.is_empty() {
            return (
                index,
                waiting,
                BatchOutcome {
                    done: 0,
                    failure: None,
                },
            );
        }
        let started = Instant::now();
        let limit = self.settings.call_timeout;
        let mut outcome = tokio::time::timeout(limit, self.reconciler.handle_batch(batch))
            .await
            .unwrap_or_else(|_| BatchOutcome {
                done: 0,
                failure: Some(HandlerError::new(
                    "timeout",
                    format!("no answer within {} ms", limit.as_millis()),
                )),
            });
        metrics::histogram!("budgetd_reconciler_call_duration_seconds", "reconciler" => self.name(), "call" => "handle_batch")
            .record(started.elapsed().as_secs_f64());
        outcome.done = outcome.done.min(batch.len());
        (index, waiting, outcome)
    }

    /// Records `event`'s failure: its tenant waits for the backoff of its next attempt.
    async fn park(
        &self,
        fence: Fence,
        now: DateTime<Utc>,
        aggregate: &PendingAggregate,
        event: &OutboxEvent,
        failure: &HandlerError,
    ) -> Result<(), Error> {
        let name = self.name();
        let key = &aggregate.key;
        let delay = backoff(
            aggregate.attempts + 1,
            self.settings.backoff_base,
            self.settings.backoff_cap,
        );
        let retry_at =
            now + chrono::Duration::from_std(delay).unwrap_or_else(|_| chrono::Duration::days(1));
        let attempts = self
            .store
            .reconciler_failed(fence, name, key, retry_at, &failure.to_string())
            .await?;
        metrics::counter!(
            "budgetd_reconciler_events_failed_total",
            "reconciler" => name,
            "kind" => failure.kind
        )
        .increment(1);
        tracing::warn!(
            reconciler = name,
            aggregate_type = %key.aggregate_type,
            tenant = %key.aggregate_id,
            event_id = event.id,
            seq = event.seq,
            attempts,
            retry_in_ms = delay.as_millis() as u64,
            error = %failure,
            "event failed; the tenant is parked until its retry"
        );
        Ok(())
    }

    async fn call_handle(&self, event: &OutboxEvent) -> Result<(), HandlerError> {
        let started = Instant::now();
        let outcome = self.within(self.reconciler.handle(event)).await;
        metrics::histogram!("budgetd_reconciler_call_duration_seconds", "reconciler" => self.name(), "call" => "handle")
            .record(started.elapsed().as_secs_f64());
        outcome
    }

    async fn within(
        &self,
        call: impl std::future::Future<Output = Result<(), HandlerError>>,
    ) -> Result<(), HandlerError> {
        let limit = self.settings.call_timeout;
        tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
            Err(HandlerError::new(
                "timeout",
                format!("no answer within {} ms", limit.as_millis()),
            ))
        })
    }

    /// Re-converges every tenant from its current state, in id order, each call within
    /// `call_timeout`. A failure is counted and logged; the others go on.
    pub async fn resync(&self) -> Result<ResyncReport, Error> {
        let name = self.name();
        let tenants = self.store.list_tenants(None).await?;
        if let Err(failure) = self.within(self.reconciler.begin_resync()).await {
            metrics::counter!("budgetd_reconciler_converge_failed_total", "reconciler" => name, "kind" => failure.kind)
                .increment(1);
            tracing::warn!(reconciler = name, error = %failure, "resync preparation failed; converging tenant by tenant");
        }
        let mut calls = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            calls.push(self.converge_one(tenant.id));
        }
        let outcomes = at_most(self.settings.concurrency, calls).await;
        self.reconciler.end_resync().await;
        let mut report = ResyncReport::default();
        for outcome in outcomes {
            match outcome {
                Ok(()) => report.converged += 1,
                Err(failure) => {
                    report.failed += 1;
                    metrics::counter!("budgetd_reconciler_converge_failed_total", "reconciler" => name, "kind" => failure.kind)
                        .increment(1);
                }
            }
        }
        metrics::counter!("budgetd_reconciler_converged_total", "reconciler" => name)
            .increment(report.converged);
        Ok(report)
    }

    async fn converge_one(&self, tenant: TenantId) -> Result<(), HandlerError> {
        let started = Instant::now();
        let outcome = self.within(self.reconciler.converge(&tenant)).await;
        metrics::histogram!("budgetd_reconciler_call_duration_seconds", "reconciler" => self.name(), "call" => "converge")
            .record(started.elapsed().as_secs_f64());
        if let Err(failure) = &outcome {
            tracing::warn!(reconciler = self.name(), tenant = %tenant.as_str(), error = %failure, "converge failed");
        }
        outcome
    }

    /// The loop: while this daemon leads (`leader` holds its fence), steps until there is
    /// nothing to do, then waits `poll_interval`; resyncs every tenant when it starts leading,
    /// every `resync_interval` and when asked. Stops stepping the moment leadership is lost or
    /// a write is fenced, and returns when `stop` is cancelled (abandoning a step midway is
    /// safe, see [`Runner::step`]).
    pub async fn run(&self, mut leader: watch::Receiver<Option<Fence>>, stop: CancellationToken) {
        let name = self.name();
        loop {
            let fence = tokio::select! {
                _ = stop.cancelled() => return,
                fence = leader.wait_for(Option::is_some) => match fence {
                    Ok(fence) => match *fence {
                        Some(fence) => fence,
                        None => continue,
                    },
                    Err(_) => return,
                },
            };
            tracing::info!(
                reconciler = name,
                fence = fence.0,
                "reconciling while leading"
            );
            let mut resync_at = tokio::time::Instant::now();
            loop {
                if *leader.borrow_and_update() != Some(fence) {
                    break;
                }
                let pass = async {
                    let mut more = match self.step(fence, Utc::now()).await {
                        Ok(report) => report.more(&self.settings),
                        Err(e) => return Err(e),
                    };
                    if tokio::time::Instant::now() >= resync_at {
                        resync_at = tokio::time::Instant::now() + self.settings.resync_interval;
                        match self.resync().await {
                            Ok(report) if report.failed > 0 => {
                                tracing::warn!(
                                    reconciler = name,
                                    converged = report.converged,
                                    failed = report.failed,
                                    "resync left tenants unconverged"
                                )
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(reconciler = name, error = %e, "resync failed");
                                more = false;
                            }
                        }
                    }
                    Ok(more)
                };
                let more = tokio::select! {
                    _ = stop.cancelled() => return,
                    outcome = pass => outcome,
                };
                match more {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(e) if e.is_fenced() => {
                        tracing::warn!(reconciler = name, error = %e, "another daemon leads; reconciling stops");
                        break;
                    }
                    Err(e) => {
                        metrics::counter!("budgetd_reconciler_step_failures_total", "reconciler" => name, "kind" => e.metric_label())
                            .increment(1);
                        tracing::warn!(reconciler = name, error = %e, "reconciler step failed");
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = leader.changed() => {}
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                    _ = tokio::time::sleep_until(resync_at) => {}
                    _ = self.resync.notified() => resync_at = tokio::time::Instant::now(),
                }
            }
            // Fenced while the watch still shows this fence: wait for it to change.
            if *leader.borrow() == Some(fence) {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    changed = leader.changed() => if changed.is_err() { return },
                }
            }
        }
    }
}
