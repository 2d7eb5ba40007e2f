//! Leadership: one daemon collects and enforces. The leader holds a session-level advisory lock
//! on a dedicated direct (non-pooled) connection; taking the lock bumps the fencing token that
//! every enforcement write checks. When the leader dies its connection closes, Postgres drops
//! the lock, and a follower's next attempt takes over. Server-side TCP keepalives bound how
//! long a vanished leader host can keep the lock.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

use super::enforcement::LEASE;
use super::{connect_once, parse_url, query, query_scalar, DbTarget};
use crate::audit::now_micros;
use crate::enforcement::Fence;
use crate::error::Error;

/// The advisory lock key ("budgetdL").
const LEADER_LOCK: i64 = 0x6275_6467_6574_644c;

/// A held leadership. Dropping it closes the connection, which releases the lock.
pub struct LeaderLock {
    conn: PgConnection,
    fence: Fence,
}

async fn within<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| Error::Timeout {
            timeout_ms: timeout.as_millis() as u64,
        })?
}

impl LeaderLock {
    /// Tries once to become the leader. `Ok(None)`: another daemon leads.
    pub async fn try_acquire(
        direct_url: &str,
        holder: &str,
        keepalive_seconds: u32,
        timeout: Duration,
    ) -> Result<Option<LeaderLock>, Error> {
        let options = parse_url(direct_url)?
            .application_name("budgetd-leader")
            .statement_cache_capacity(0);
        let target = DbTarget::of(&options);
        let attempt = async {
            let mut conn = connect_once(&options, &target, timeout).await?;
            // Keepalives a third of the budget apart, three probes: a silent peer is dropped
            // (and its lock released) within about `keepalive_seconds`.
            let probe = (keepalive_seconds / 3).max(1);
            query(&format!(
                "select set_config('tcp_keepalives_idle', '{probe}', false), \
                        set_config('tcp_keepalives_interval', '{probe}', false), \
                        set_config('tcp_keepalives_count', '3', false)"
            ))
            .execute(&mut conn)
            .await?;
            let locked: bool = query_scalar("select pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut conn)
                .await?;
            if !locked {
                conn.close().await?;
                return Ok(None);
            }
            let token: i64 = query_scalar(
                "insert into leader_lease (name, token, holder, acquired_at) values ($1, 1, $2, $3) \
                 on conflict (name) do update set token = leader_lease.token + 1, \
                     holder = excluded.holder, acquired_at = excluded.acquired_at \
                 returning token",
            )
            .bind(LEASE)
            .bind(holder)
            .bind(now_micros())
            .fetch_one(&mut conn)
            .await?;
            Ok(Some(LeaderLock {
                conn,
                fence: Fence(token),
            }))
        };
        within(timeout, attempt).await
    }

    pub fn fence(&self) -> Fence {
        self.fence
    }

    /// Confirms the session, and with it the lock, is still alive.
    pub async fn check(&mut self, timeout: Duration) -> Result<(), Error> {
        within(timeout, async {
            let held: bool = query_scalar(
                "select exists (select 1 from pg_locks where locktype = 'advisory' \
                 and pid = pg_backend_pid() and granted \
                 and ((classid::bigint << 32) | objid::bigint) = $1)",
            )
            .bind(LEADER_LOCK)
            .fetch_one(&mut self.conn)
            .await?;
            if held {
                Ok(())
            } else {
                Err(Error::conflict(
                    "leadership_lost",
                    "the leader lock is no longer held",
                ))
            }
        })
        .await
    }

    /// Gives up leadership.
    pub async fn release(mut self, timeout: Duration) {
        // Unlocked explicitly first: closing the connection alone frees the lock only once the
        // server has noticed, so another daemon asking right after could still find it held.
        let _ = tokio::time::timeout(timeout, async {
            let _ = query_scalar::<bool>("select pg_advisory_unlock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut self.conn)
                .await;
            let _ = self.conn.close().await;
        })
        .await;
    }
}
