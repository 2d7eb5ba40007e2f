//! The outbox as reconcilers read it: a durable cursor per reconciler, a backlog of scanned
//! events per aggregate (tenant), and where each reconciler stands with each aggregate. The
//! runner around it is the `lifecycle` crate; the ordering argument is in the migration
//! `20261201201000_reconcilers.sql`.
//!
//! Scanning moves events past the cursor into the backlog in one transaction; handling an
//! event removes it from the backlog and records its seq in another. A crash between the two
//! leaves it in the backlog, so it is handled again (at least once); in the normal path each
//! event is scanned once and handled once.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::Row;

use super::enforcement::check_fence;
use super::{query, query_as, Store};
use crate::enforcement::Fence;
use crate::error::Error;

/// One outbox event as a reconciler receives it. `id` is the event id handlers deduplicate
/// on; `seq` numbers the aggregate's events 1, 2, 3, ... in the order their changes committed.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    pub id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub seq: i64,
    pub event_type: String,
    pub payload: Value,
    pub created_at: DateTime<Utc>,
}

/// What events are about: (`aggregate_type`, `aggregate_id`), e.g. ("tenant", "acme").
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AggregateKey {
    pub aggregate_type: String,
    pub aggregate_id: String,
}

/// An aggregate with backlog that is due: the events after `delivered_seq` that are in the
/// backlog, in seq order (the first may not be `delivered_seq + 1` yet, see
/// [`Store::reconciler_pending`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingAggregate {
    pub key: AggregateKey,
    pub delivered_seq: i64,
    /// Failed attempts at the next event so far.
    pub attempts: u32,
    pub events: Vec<OutboxEvent>,
}

/// An aggregate whose next event failed: it waits until `next_attempt_at`, its later events
/// behind it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParkedAggregate {
    pub key: AggregateKey,
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub last_error: Option<String>,
    pub waiting_events: i64,
}

/// How far behind a reconciler is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReconcilerStatus {
    /// Outbox events past the cursor (not scanned yet).
    pub unscanned: i64,
    /// Events scanned and not handled yet.
    pub backlog: i64,
    pub parked: i64,
    pub last_success_at: Option<DateTime<Utc>>,
    /// When the oldest event not handled yet was written (none when there is none).
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

impl ReconcilerStatus {
    /// Events not handled yet: the lag.
    pub fn lag(&self) -> i64 {
        self.unscanned + self.backlog
    }
}

fn event_from_row(row: &PgRow) -> Result<OutboxEvent, Error> {
    Ok(OutboxEvent {
        id: row.try_get("id")?,
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        seq: row.try_get("seq")?,
        event_type: row.try_get("event_type")?,
        payload: row.try_get("payload")?,
        created_at: row.try_get("created_at")?,
    })
}

fn attempts_from(value: i32) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| {
        Error::Database(sqlx::Error::Decode(
            format!("reconciler_aggregates row: attempts {value} is negative").into(),
        ))
    })
}

impl Store {
    /// Moves up to `limit` events past `reconciler`'s cursor into its backlog, in scan order
    /// (txid, id), and moves the cursor to the last of them; registers the reconciler on its
    /// first scan (its cursor then starts before the first event). Returns how many it moved.
    ///
    /// Only events of transactions older than the statement snapshot's xmin are taken: every
    /// such transaction has ended, so each event that will ever be visible past the cursor is
    /// visible now, and one that commits later has a txid at or above that xmin, past the
    /// cursor. A long-running writing transaction therefore delays delivery; it never loses
    /// an event.
    pub async fn reconciler_scan(
        &self,
        fence: Fence,
        reconciler: &str,
        limit: i64,
    ) -> Result<u64, Error> {
        self.run_within("reconciler_scan", 3, || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            query("insert into reconcilers (name) values ($1) on conflict do nothing")
                .bind(reconciler)
                .execute(&mut *tx)
                .await?;
            // Two scans of one reconciler take turns (and the second sees the first's cursor:
            // each statement of a read-committed transaction takes a new snapshot).
            query("select 1 from reconcilers where name = $1 for update")
                .bind(reconciler)
                .execute(&mut *tx)
                .await?;
            let moved: i64 = super::query_scalar(
                "with batch as ( \
                     select o.id, o.txid, o.aggregate_type, o.aggregate_id, o.seq \
                     from outbox o, reconcilers r \
                     where r.name = $1 \
                       and (o.txid, o.id) > (r.cursor_txid, r.cursor_id) \
                       and o.txid < pg_snapshot_xmin(pg_current_snapshot()) \
                     order by o.txid, o.id \
                     limit $2 \
                 ), aggregates as ( \
                     insert into reconciler_aggregates (reconciler, aggregate_type, aggregate_id) \
                     select distinct $1, aggregate_type, aggregate_id from batch \
                     on conflict do nothing \
                 ), backlog as ( \
                     insert into reconciler_backlog \
                         (reconciler, aggregate_type, aggregate_id, seq, event_id) \
                     select $1, aggregate_type, aggregate_id, seq, id from batch \
                 ), last as ( \
                     select txid, id from batch order by txid desc, id desc limit 1 \
                 ), moved as ( \
                     update reconcilers r set cursor_txid = last.txid, cursor_id = last.id \
                     from last where r.name = $1 \
                 ) \
                 select count(*) from batch",
            )
            .bind(reconciler)
            .bind(limit)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(moved as u64)
        })
        .await
    }

    /// Up to `limit` backlog events of the aggregates that are due at `now` (not parked, or
    /// parked until `now` or earlier), per aggregate in seq order, aggregates in key order.
    /// An aggregate's first event here is `delivered_seq + 1` unless that one has not been
    /// scanned yet (an earlier change whose transaction took a later txid): the caller then
    /// waits for it.
    pub async fn reconciler_pending(
        &self,
        reconciler: &str,
        now: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<PendingAggregate>, Error> {
        let rows = self
            .run("reconciler_pending", || async {
                let mut tx = self.begin().await?;
                let rows = query(
                    "select a.aggregate_type, a.aggregate_id, a.delivered_seq, a.attempts, \
                            o.id, o.seq, o.event_type, o.payload, o.created_at \
                     from reconciler_aggregates a \
                     join reconciler_backlog b on b.reconciler = a.reconciler \
                          and b.aggregate_type = a.aggregate_type \
                          and b.aggregate_id = a.aggregate_id \
                     join outbox o on o.id = b.event_id \
                     where a.reconciler = $1 \
                       and (a.next_attempt_at is null or a.next_attempt_at <= $2) \
                     order by a.aggregate_type, a.aggregate_id, b.seq \
                     limit $3",
                )
                .bind(reconciler)
                .bind(now)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(rows)
            })
            .await?;
        let mut pending: Vec<PendingAggregate> = Vec::new();
        for row in &rows {
            let event = event_from_row(row)?;
            match pending.last_mut() {
                Some(last)
                    if last.key.aggregate_type == event.aggregate_type
                        && last.key.aggregate_id == event.aggregate_id =>
                {
                    last.events.push(event)
                }
                _ => pending.push(PendingAggregate {
                    key: AggregateKey {
                        aggregate_type: event.aggregate_type.clone(),
                        aggregate_id: event.aggregate_id.clone(),
                    },
                    delivered_seq: row.try_get("delivered_seq")?,
                    attempts: attempts_from(row.try_get("attempts")?)?,
                    events: vec![event],
                }),
            }
        }
        Ok(pending)
    }

    /// Records `key`'s event `seq` handled: out of the backlog, the aggregate's position moved
    /// to it and its failures cleared. A conflict (`reconciler_order`) if `seq` is not the
    /// aggregate's next event: nothing is skipped or recorded twice.
    pub async fn reconciler_handled(
        &self,
        fence: Fence,
        reconciler: &str,
        key: &AggregateKey,
        seq: i64,
    ) -> Result<(), Error> {
        self.run_within("reconciler_handled", 4, || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let moved = query(
                "update reconciler_aggregates \
                 set delivered_seq = $4, attempts = 0, next_attempt_at = null, last_error = null \
                 where reconciler = $1 and aggregate_type = $2 and aggregate_id = $3 \
                   and delivered_seq = $4 - 1",
            )
            .bind(reconciler)
            .bind(&key.aggregate_type)
            .bind(&key.aggregate_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let removed = query(
                "delete from reconciler_backlog \
                 where reconciler = $1 and aggregate_type = $2 and aggregate_id = $3 and seq = $4",
            )
            .bind(reconciler)
            .bind(&key.aggregate_type)
            .bind(&key.aggregate_id)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved != 1 || removed != 1 {
                return Err(Error::conflict(
                    "reconciler_order",
                    format!(
                        "event {seq} of {} {:?} is not {reconciler}'s next one",
                        key.aggregate_type, key.aggregate_id
                    ),
                ));
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records that `reconciler` handled events at `now` (once per step: one row that every
    /// handled event updated would serialise the tenants handled at once).
    pub async fn reconciler_succeeded(
        &self,
        fence: Fence,
        reconciler: &str,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        self.run("reconciler_succeeded", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            query(
                "update reconcilers set last_success_at = $2 \
                 where name = $1 and (last_success_at is null or last_success_at < $2)",
            )
            .bind(reconciler)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records, for each `(key, first, last)`, the aggregate's events `first..=last` handled
    /// (a reconciler that takes a tenant's events as one batch), all in one transaction: out
    /// of the backlog, each position moved to its `last`, failures cleared. A conflict
    /// (`reconciler_order`), recording nothing, unless each `first` is its aggregate's next
    /// event and every one of the events is in the backlog.
    pub async fn reconciler_handled_batches(
        &self,
        fence: Fence,
        reconciler: &str,
        batches: &[(AggregateKey, i64, i64)],
    ) -> Result<(), Error> {
        if batches.is_empty() {
            return Ok(());
        }
        if let Some((key, first, last)) = batches.iter().find(|(_, first, last)| first > last) {
            return Err(Error::conflict(
                "reconciler_order",
                format!(
                    "no events between {first} and {last} of {:?}",
                    key.aggregate_id
                ),
            ));
        }
        let types: Vec<&str> = batches
            .iter()
            .map(|b| b.0.aggregate_type.as_str())
            .collect();
        let ids: Vec<&str> = batches.iter().map(|b| b.0.aggregate_id.as_str()).collect();
        let firsts: Vec<i64> = batches.iter().map(|b| b.1).collect();
        let lasts: Vec<i64> = batches.iter().map(|b| b.2).collect();
        let events: i64 = batches.iter().map(|b| b.2 - b.1 + 1).sum();
        self.run_within("reconciler_handled", 4, || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let (moved, removed): (i64, i64) = query_as(
                "with done as ( \
                     select * from unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[]) \
                         as d(aggregate_type, aggregate_id, first, last) \
                 ), moved as ( \
                     update reconciler_aggregates a \
                     set delivered_seq = d.last, attempts = 0, next_attempt_at = null, \
                         last_error = null \
                     from done d \
                     where a.reconciler = $1 and a.aggregate_type = d.aggregate_type \
                       and a.aggregate_id = d.aggregate_id and a.delivered_seq = d.first - 1 \
                     returning 1 \
                 ), removed as ( \
                     delete from reconciler_backlog b using done d \
                     where b.reconciler = $1 and b.aggregate_type = d.aggregate_type \
                       and b.aggregate_id = d.aggregate_id and b.seq between d.first and d.last \
                     returning 1 \
                 ) \
                 select (select count(*) from moved), (select count(*) from removed)",
            )
            .bind(reconciler)
            .bind(&types)
            .bind(&ids)
            .bind(&firsts)
            .bind(&lasts)
            .fetch_one(&mut *tx)
            .await?;
            if moved != batches.len() as i64 || removed != events {
                return Err(Error::conflict(
                    "reconciler_order",
                    format!(
                        "{} batches of {events} events are not {reconciler}'s next ones \
                         ({moved} positions, {removed} backlog events match)",
                        batches.len()
                    ),
                ));
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records a failed attempt at `key`'s next event: the aggregate is parked until
    /// `next_attempt_at`. Returns the failed attempts so far.
    pub async fn reconciler_failed(
        &self,
        fence: Fence,
        reconciler: &str,
        key: &AggregateKey,
        next_attempt_at: DateTime<Utc>,
        error: &str,
    ) -> Result<u32, Error> {
        self.run("reconciler_failed", || async {
            let mut tx = self.begin().await?;
            check_fence(&mut tx, fence).await?;
            let attempts: i32 = super::query_scalar(
                "update reconciler_aggregates \
                 set attempts = attempts + 1, next_attempt_at = $4, last_error = $5 \
                 where reconciler = $1 and aggregate_type = $2 and aggregate_id = $3 \
                 returning attempts",
            )
            .bind(reconciler)
            .bind(&key.aggregate_type)
            .bind(&key.aggregate_id)
            .bind(next_attempt_at)
            .bind(error)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            attempts_from(attempts)
        })
        .await
    }

    /// How far behind `reconciler` is (all zero before its first scan, except `unscanned`).
    pub async fn reconciler_status(&self, reconciler: &str) -> Result<ReconcilerStatus, Error> {
        self.run("reconciler_status", || async {
            let mut tx = self.begin().await?;
            let (unscanned, backlog, parked, last_success_at, oldest_pending_at): (
                i64,
                i64,
                i64,
                Option<DateTime<Utc>>,
                Option<DateTime<Utc>>,
            ) = query_as(
                "select \
                     (select count(*) from outbox o left join reconcilers r on r.name = $1 \
                      where r.name is null or (o.txid, o.id) > (r.cursor_txid, r.cursor_id)), \
                     (select count(*) from reconciler_backlog where reconciler = $1), \
                     (select count(*) from reconciler_aggregates \
                      where reconciler = $1 and attempts > 0), \
                     (select last_success_at from reconcilers where name = $1), \
                     least( \
                         (select min(o.created_at) from reconciler_backlog b \
                          join outbox o on o.id = b.event_id where b.reconciler = $1), \
                         (select o.created_at from outbox o left join reconcilers r on r.name = $1 \
                          where r.name is null or (o.txid, o.id) > (r.cursor_txid, r.cursor_id) \
                          order by o.txid, o.id limit 1))",
            )
            .bind(reconciler)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(ReconcilerStatus {
                unscanned,
                backlog,
                parked,
                last_success_at,
                oldest_pending_at,
            })
        })
        .await
    }

    /// The aggregates `reconciler` has parked, in key order.
    pub async fn reconciler_parked(&self, reconciler: &str) -> Result<Vec<ParkedAggregate>, Error> {
        self.run("reconciler_parked", || async {
            let mut tx = self.begin().await?;
            let rows = query(
                "select a.aggregate_type, a.aggregate_id, a.attempts, a.next_attempt_at, \
                        a.last_error, \
                        (select count(*) from reconciler_backlog b \
                         where b.reconciler = a.reconciler and b.aggregate_type = a.aggregate_type \
                           and b.aggregate_id = a.aggregate_id) as waiting_events \
                 from reconciler_aggregates a \
                 where a.reconciler = $1 and a.attempts > 0 \
                 order by a.aggregate_type, a.aggregate_id",
            )
            .bind(reconciler)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            rows.iter()
                .map(|row| {
                    Ok(ParkedAggregate {
                        key: AggregateKey {
                            aggregate_type: row.try_get("aggregate_type")?,
                            aggregate_id: row.try_get("aggregate_id")?,
                        },
                        attempts: attempts_from(row.try_get("attempts")?)?,
                        next_attempt_at: row.try_get("next_attempt_at")?,
                        last_error: row.try_get("last_error")?,
                        waiting_events: row.try_get("waiting_events")?,
                    })
                })
                .collect()
        })
        .await
    }
}
