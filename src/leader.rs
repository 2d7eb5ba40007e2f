//! Leader election around `ledger::store::LeaderLock`: a follower tries to take the lock every
//! `retry`; the leader confirms it every `check` and steps down the moment it cannot. The
//! current fencing token (or `None`) is published on a watch channel; the collector and the
//! enforcer run only while it is `Some`.

use ledger::enforcement::Fence;
use ledger::store::LeaderLock;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::LeaderConfig;

/// Runs the election until `stop`; releases the lock on the way out.
pub async fn run(
    direct_url: SecretString,
    holder: String,
    config: LeaderConfig,
    leader: watch::Sender<Option<Fence>>,
    stop: CancellationToken,
) {
    let mut lock: Option<LeaderLock> = None;
    metrics::gauge!("budgetd_leader").set(0.0);
    loop {
        match lock.as_mut() {
            None => {
                match LeaderLock::try_acquire(
                    direct_url.expose_secret(),
                    &holder,
                    config.keepalive_seconds,
                    config.timeout,
                )
                .await
                {
                    Ok(Some(held)) => {
                        tracing::info!(holder, fence = held.fence().0, "became the leader");
                        metrics::gauge!("budgetd_leader").set(1.0);
                        metrics::counter!("budgetd_leader_elections_total").increment(1);
                        leader.send_replace(Some(held.fence()));
                        lock = Some(held);
                        continue;
                    }
                    Ok(None) => tracing::debug!("another daemon leads"),
                    Err(e) => tracing::warn!(error = %e, "leader election failed; retrying"),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(config.retry) => {}
                }
            }
            Some(held) => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(config.check) => {}
                }
                if let Err(e) = held.check(config.timeout).await {
                    tracing::error!(error = %e, "lost leadership; stopping collection and enforcement");
                    leader.send_replace(None);
                    metrics::gauge!("budgetd_leader").set(0.0);
                    lock = None;
                }
            }
        }
    }
    leader.send_replace(None);
    if let Some(held) = lock {
        held.release(config.timeout).await;
    }
}

/// A token cancelled when `stop` is, or when leadership is lost.
pub fn while_leading(
    leader: &watch::Receiver<Option<Fence>>,
    stop: &CancellationToken,
) -> CancellationToken {
    let term = stop.child_token();
    let mut rx = leader.clone();
    let cancel = term.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = rx.wait_for(Option::is_none) => cancel.cancel(),
        }
    });
    term
}

/// Waits until this daemon leads; `None` if stopped first.
pub async fn until_leading(
    leader: &mut watch::Receiver<Option<Fence>>,
    stop: &CancellationToken,
) -> Option<Fence> {
    tokio::select! {
        _ = stop.cancelled() => None,
        fence = leader.wait_for(Option::is_some) => fence.ok().and_then(|f| *f),
    }
}
