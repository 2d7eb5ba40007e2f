//! The API's HTTP server: hyper's HTTP/1 connections, each with a header-read timeout, at most
//! a limited number at once, and a graceful shutdown. `axum::serve` has neither the timeout nor
//! the limit, and a server without them can be taken down by slow clients: each half-sent
//! request holds a socket for ever, until the process runs out of file descriptors and can no
//! longer answer probes or reach its database.
//!
//! - A connection must send a complete request head within `header_timeout` of opening, or of
//!   its previous response (so an idle keep-alive connection is closed after it too); hyper
//!   closes it otherwise. The body's deadline is the router's (`api::observe`).
//! - At most [`ConnectionLimit::effective`] connections are served at once: `api.max_connections`,
//!   lowered so that the open-file limit keeps room for the database pool, the leader's lock
//!   connection and the process' own files.
//! - A connection over the limit takes the place of the oldest connection that has no request
//!   in progress (one that has not sent a complete request head yet, or an idle keep-alive
//!   one) and has been open for at least [`EVICTION_GRACE`], which is closed; while every such
//!   connection is younger, no connection is accepted. Slow clients therefore cannot crowd out a probe or an API call. If
//!   every connection has a request in progress, the new one is answered `503` and closed.
//!   While [`OVERFLOW_CONNECTIONS`] are being handled so, the server accepts no more: new
//!   connections wait in the kernel's listen backlog rather than being dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// File descriptors kept beyond the database's connections: for connections being refused or
/// waiting for an evicted connection's place ([`OVERFLOW_CONNECTIONS`]) and for the process'
/// own files (standard streams, the runtime, the listener, the Prometheus, Alertmanager and
/// Kubernetes clients).
pub const FD_MARGIN: u64 = 64;

/// Connections over the limit handled at once (answered 503, or waiting for an evicted
/// connection's place); while there are this many, no connection is accepted: new ones wait in
/// the listen backlog.
pub const OVERFLOW_CONNECTIONS: usize = 32;

/// The fewest connections the API needs; an open-file limit that leaves fewer is an error.
pub const MIN_CONNECTIONS: u64 = 8;

/// How long a connection over the limit waits for the place of the connection it evicted (an
/// idle one closes at once; one that just started a request finishes it first).
const EVICTION_WAIT: Duration = Duration::from_secs(1);

/// How long a new connection is safe from eviction: long enough for its task to be polled and
/// read a request head that is already there, however busy the machine. Without it, a flood of
/// reconnecting slow clients could evict a probe's connection before it is read.
const EVICTION_GRACE: Duration = Duration::from_millis(250);

/// How long a refused connection is given to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The pause after `accept` failed for want of resources (file descriptors, memory), so
/// that the loop does not spin while they are short.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How many connections the API serves at once, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimit {
    /// `api.max_connections`.
    pub configured: u32,
    /// The process' open-file limit (soft `RLIMIT_NOFILE`), if it has one.
    pub open_files: Option<u64>,
    /// File descriptors kept for everything but API connections.
    pub reserved: u64,
    /// What is served at once: `configured`, or less if the open-file limit leaves less.
    pub effective: usize,
}

impl ConnectionLimit {
    /// The limit for `configured` connections under `open_files`, keeping `database
    /// .max_connections` for the pool, two for the leader's lock connection and a direct
    /// connection attempt, and [`FD_MARGIN`]. Pure, so that it can be tested.
    pub fn compute(
        configured: u32,
        db_max_connections: u32,
        open_files: Option<u64>,
    ) -> Result<ConnectionLimit, String> {
        let reserved = u64::from(db_max_connections) + 2 + FD_MARGIN;
        let effective = match open_files {
            None => u64::from(configured),
            Some(limit) => {
                let room = limit.saturating_sub(reserved);
                if room < MIN_CONNECTIONS {
                    return Err(format!(
                        "the open-file limit (RLIMIT_NOFILE) is {limit}: {reserved} are kept for \
                         database.max_connections ({db_max_connections}), the leader and the \
                         process' own files, which leaves fewer than {MIN_CONNECTIONS} for API \
                         connections; raise the limit (ulimit -n, LimitNOFILE=) or lower \
                         database.max_connections"
                    ));
                }
                room.min(u64::from(configured))
            }
        };
        Ok(ConnectionLimit {
            configured,
            open_files,
            reserved,
            effective: usize::try_from(effective).unwrap_or(usize::MAX),
        })
    }

    /// The limit for this process: its open-file limit raised to the hard limit first (as
    /// systemd recommends a service that needs many files to do), then read.
    pub fn for_this_process(configured: u32, db_max_connections: u32) -> Result<Self, String> {
        Self::compute(configured, db_max_connections, raise_open_file_limit())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in force;
/// `None` when there is no limit.
fn raise_open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads one `rlimit` through a valid pointer.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::info!(
                from = limit.rlim_cur,
                to = limit.rlim_max,
                "raised the open-file limit to its hard limit"
            );
            limit.rlim_cur = limit.rlim_max;
        }
    }
    (limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeSettings {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` is cancelled; then stops accepting, closes
/// the connections that have no request in progress, lets the others finish theirs, and
/// returns when every connection is closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: ServeSettings,
    shutdown: CancellationToken,
) {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout);
    let server = Arc::new(Server {
        http,
        service: TowerToHyperService::new(router),
        connections: Connections::new(settings.max_connections),
        shutdown: shutdown.clone(),
    });
    metrics::gauge!("budgetd_http_connections_limit").set(settings.max_connections as f64);
    metrics::gauge!("budgetd_http_connections").set(0.0);
    let mut accept_failing = false;
    loop {
        let stream = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_failing = false;
                    stream
                }
                Err(e) => {
                    metrics::counter!("budgetd_http_accept_errors_total").increment(1);
                    if is_connection_error(&e) {
                        continue;
                    }
                    if !accept_failing {
                        tracing::error!(error = %e, "cannot accept connections; retrying every 100 ms");
                        accept_failing = true;
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let Some(admission) = server.connections.admit(&shutdown).await else {
            drop(stream);
            break;
        };
        match admission {
            Admission::Serve(slot) => {
                tokio::spawn(server.clone().serve_connection(stream, slot));
            }
            Admission::Evicting(overflow) => {
                let server = server.clone();
                tokio::spawn(async move {
                    match server.connections.wait_for_slot(&server.shutdown).await {
                        Some(slot) => {
                            drop(overflow);
                            server.serve_connection(stream, slot).await;
                        }
                        None => refuse(stream, overflow).await,
                    }
                });
            }
            Admission::Refuse(overflow) => {
                tokio::spawn(refuse(stream, overflow));
            }
        }
    }
    drop(listener);
    server.connections.drained().await;
}

/// Errors of one connection that `accept` reports; the next accept is unaffected.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

fn closed(outcome: &'static str) {
    metrics::counter!("budgetd_http_connections_closed_total", "outcome" => outcome).increment(1);
}

struct Server {
    http: http1::Builder,
    service: TowerToHyperService<Router>,
    connections: Connections,
    shutdown: CancellationToken,
}

impl Server {
    async fn serve_connection(self: Arc<Self>, stream: TcpStream, slot: Slot) {
        let busy = slot.busy.clone();
        let service = self.service.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = BusyGuard::enter(&busy);
            let response = hyper::service::Service::call(&service, request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    inner: body,
                    _busy: guard,
                }))
            }
        });
        let connection = self.http.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let outcome = tokio::select! {
            result = connection.as_mut() => match result {
                Ok(()) => "done",
                Err(e) if e.is_timeout() => "header_timeout",
                Err(_) => "error",
            },
            () = slot.close.cancelled() => {
                let why = if self.shutdown.is_cancelled() { "shutdown" } else { "evicted" };
                // No request in progress (the count only changes while the connection is
                // polled, which it is not now): closing loses nothing. Otherwise the request
                // finishes, and the connection closes after its response.
                if slot.busy.load(Ordering::Acquire) > 0 {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.as_mut().await;
                }
                why
            }
        };
        closed(outcome);
        self.connections.release(slot);
    }
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream, overflow: OwnedSemaphorePermit) {
    const BODY: &str = r#"{"error":{"code":"too_many_connections","message":"the server is at its connection limit; retry later"}}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    let _ = tokio::time::timeout(REFUSAL_LINGER, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sends until it closes: closing a socket with unread data
        // resets the connection, and the client might lose the answer.
        let mut buf = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut buf).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<_, io::Error>(())
    })
    .await;
    closed("refused");
    drop(overflow);
}

/// The connections being served: a place each (a semaphore permit), and a registry of which
/// have a request in progress, to find one that can be closed to make room.
struct Connections {
    limit: usize,
    slots: Arc<Semaphore>,
    overflow: Arc<Semaphore>,
    open: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next_id: u64,
    /// By id, which is the order of acceptance: the oldest first.
    entries: BTreeMap<u64, Entry>,
}

struct Entry {
    opened: Instant,
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
}

/// A connection's place.
struct Slot {
    id: u64,
    busy: Arc<AtomicUsize>,
    close: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

enum Admission {
    Serve(Slot),
    /// Over the limit; a connection without a request in progress was asked to close.
    Evicting(OwnedSemaphorePermit),
    /// Over the limit, and every connection has a request in progress.
    Refuse(OwnedSemaphorePermit),
}

impl Connections {
    fn new(limit: usize) -> Connections {
        Connections {
            limit,
            slots: Arc::new(Semaphore::new(limit)),
            overflow: Arc::new(Semaphore::new(OVERFLOW_CONNECTIONS)),
            open: Mutex::new(Registry::default()),
        }
    }

    /// A place for a connection just accepted, or what to do with it. With
    /// [`OVERFLOW_CONNECTIONS`] already over the limit this waits for one of them to be done,
    /// and the accept loop with it: further connections wait in the listen backlog, unaccepted,
    /// instead of being dropped. `None` on shutdown.
    async fn admit(&self, shutdown: &CancellationToken) -> Option<Admission> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Some(Admission::Serve(self.register(permit, shutdown)));
        }
        let overflow = match self.overflow.clone().try_acquire_owned() {
            Ok(overflow) => overflow,
            Err(_) => {
                metrics::counter!("budgetd_http_accept_paused_total").increment(1);
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => return None,
                    permit = self.overflow.clone().acquire_owned() => {
                        permit.expect("the overflow semaphore is never closed")
                    }
                }
            }
        };
        loop {
            // A place may have come free meanwhile.
            if let Ok(permit) = self.slots.clone().try_acquire_owned() {
                return Some(Admission::Serve(self.register(permit, shutdown)));
            }
            let wait = {
                let open = self
                    .open
                    .lock()
                    .expect("the registry lock is never poisoned");
                // By id: the oldest first.
                let oldest_idle = open
                    .entries
                    .values()
                    .find(|e| !e.close.is_cancelled() && e.busy.load(Ordering::Acquire) == 0);
                let Some(entry) = oldest_idle else {
                    return Some(Admission::Refuse(overflow));
                };
                // One reading of the clock: a second one could be past the grace period.
                match EVICTION_GRACE.checked_sub(entry.opened.elapsed()) {
                    Some(left) if !left.is_zero() => left,
                    _ => {
                        entry.close.cancel();
                        return Some(Admission::Evicting(overflow));
                    }
                }
            };
            // Every idle connection is in its grace period: accept nothing until the oldest
            // has passed it, or a place comes free.
            metrics::counter!("budgetd_http_accept_paused_total").increment(1);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                permit = self.slots.clone().acquire_owned() => {
                    let permit = permit.expect("the connection semaphore is never closed");
                    return Some(Admission::Serve(self.register(permit, shutdown)));
                }
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A place freed by an evicted connection, if one frees up in time.
    async fn wait_for_slot(&self, shutdown: &CancellationToken) -> Option<Slot> {
        let permit = tokio::time::timeout(EVICTION_WAIT, self.slots.clone().acquire_owned())
            .await
            .ok()?
            .ok()?;
        (!shutdown.is_cancelled()).then(|| self.register(permit, shutdown))
    }

    fn register(&self, permit: OwnedSemaphorePermit, shutdown: &CancellationToken) -> Slot {
        let mut open = self
            .open
            .lock()
            .expect("the registry lock is never poisoned");
        let id = open.next_id;
        open.next_id += 1;
        let busy = Arc::new(AtomicUsize::new(0));
        // Cancelled on shutdown, or alone to evict this connection.
        let close = shutdown.child_token();
        open.entries.insert(
            id,
            Entry {
                opened: Instant::now(),
                busy: busy.clone(),
                close: close.clone(),
            },
        );
        metrics::gauge!("budgetd_http_connections").set(open.entries.len() as f64);
        Slot {
            id,
            busy,
            close,
            _permit: permit,
        }
    }

    fn release(&self, slot: Slot) {
        let mut open = self
            .open
            .lock()
            .expect("the registry lock is never poisoned");
        open.entries.remove(&slot.id);
        metrics::gauge!("budgetd_http_connections").set(open.entries.len() as f64);
    }

    /// Returns once every connection, served or over the limit, is closed.
    async fn drained(&self) {
        let slots = u32::try_from(self.limit).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(slots).await;
        let _ = self
            .overflow
            .acquire_many(OVERFLOW_CONNECTIONS as u32)
            .await;
    }
}

/// Counts a request in progress on its connection from its head until its response is sent.
struct BusyGuard(Arc<AtomicUsize>);

impl BusyGuard {
    fn enter(busy: &Arc<AtomicUsize>) -> BusyGuard {
        busy.fetch_add(1, Ordering::AcqRel);
        BusyGuard(busy.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted until it is sent (or dropped).
struct TrackedBody {
    inner: Body,
    _busy: BusyGuard,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_keeps_room_for_the_database_and_the_process() {
        let limit = ConnectionLimit::compute(512, 10, Some(128)).unwrap();
        assert_eq!(limit.reserved, 10 + 2 + FD_MARGIN);
        assert_eq!(limit.effective, 128 - 76);
        // A generous limit: the configured number.
        assert_eq!(
            ConnectionLimit::compute(512, 10, Some(1_048_576))
                .unwrap()
                .effective,
            512
        );
        assert_eq!(
            ConnectionLimit::compute(512, 10, None).unwrap().effective,
            512
        );
        // Too few left over: an error that says what to change.
        let err = ConnectionLimit::compute(512, 100, Some(128)).unwrap_err();
        assert!(err.contains("RLIMIT_NOFILE") && err.contains("database.max_connections"));
        assert_eq!(
            ConnectionLimit::compute(512, 10, Some(76 + MIN_CONNECTIONS))
                .unwrap()
                .effective,
            MIN_CONNECTIONS as usize
        );
    }
}
