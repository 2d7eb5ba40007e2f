//! The HTTP server against hostile and unlucky clients: invented methods do not add metric
//! series, request ids are kept only when sane, slow clients (slowloris, trickled bodies, more
//! connections than the limit) cannot take a `budgetd run` with few file descriptors down, and
//! readiness and requests answer 503 at once while the database is down.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use testkit::db::TestDb;
use testkit::tcp_proxy::{Mode, TcpProxy};
use tower::ServiceExt;

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Defect: invented methods made /metrics grow without bound.

/// The `method` label values of `budgetd_http_*` series in a scrape.
fn http_series(scrape: &str) -> Vec<&str> {
    scrape
        .lines()
        .filter(|l| l.starts_with("budgetd_http_request"))
        .map(|l| l.split_once(' ').map_or(l, |(series, _)| series))
        .collect()
}

async fn send(router: &axum::Router, method: Method, path: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    router.clone().oneshot(request).await.unwrap().status()
}

async fn scrape(router: &axum::Router) -> String {
    let request = Request::builder()
        .uri("/metrics")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn invented_methods_add_no_metric_series() {
    let app = app().await;
    let paths = [
        "/healthz",
        "/api/v1/tenants",
        "/api/v1/tenants/acme",
        "/no-such-route",
    ];
    // One invented method per path: the series it may add.
    for path in paths {
        send(&app.router, Method::from_bytes(b"INVENTED").unwrap(), path).await;
    }
    // A scrape adds the series of `/metrics` itself, once: before the count.
    scrape(&app.router).await;
    let before = scrape(&app.router).await;
    let series_before = http_series(&before).len();
    // 500 more, 2,000 characters each (as in the report): nothing new.
    for i in 0..500 {
        let method = format!("M{i:04}{}", "X".repeat(1_995));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let status = send(&app.router, method, paths[i % paths.len()]).await;
        assert!(status.is_client_error(), "{status}");
    }
    let after = scrape(&app.router).await;
    let series = http_series(&after);
    assert_eq!(
        series.len(),
        series_before,
        "new series: {:?}",
        series
            .iter()
            .filter(|s| !http_series(&before).contains(s))
            .collect::<Vec<_>>()
    );
    for line in &series {
        let method = line
            .split("method=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no method label: {line}"));
        assert!(
            [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
                "other"
            ]
            .contains(&method),
            "{line}"
        );
    }
    assert!(
        series.iter().any(|s| s.contains("method=\"other\"")),
        "{series:#?}"
    );
    // The scrape stays small: a few series per route, not one per method sent.
    assert!(after.len() < 64 * 1024, "{} bytes", after.len());
}

// ---------------------------------------------------------------------------------------------
// Defect: any x-request-id reached the audit log.

#[tokio::test]
async fn a_request_id_is_kept_only_when_sane_and_the_one_used_is_echoed() {
    let app = app().await;
    let longest = "a".repeat(128);
    let too_long = "a".repeat(129);
    let cases: [(&[u8], bool); 10] = [
        (b"abc-123.DEF_456:789", true),
        (b"a", true),
        (longest.as_bytes(), true),
        (too_long.as_bytes(), false),
        (b"", false),
        (b"quote\"d", false),
        (b"<script>alert(1)</script>", false),
        (b"with space", false),
        (b"tab\there", false),
        ("caf\u{e9}".as_bytes(), false),
    ];
    for (i, (sent, kept)) in cases.iter().enumerate() {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/tenants")
            .header("authorization", format!("Bearer {}", token("admin")))
            .header("content-type", "application/json")
            .header(
                "x-request-id",
                axum::http::HeaderValue::from_bytes(sent).unwrap(),
            )
            .body(Body::from(tenant_body(&format!("t{i}")).to_string()))
            .unwrap();
        let response = app.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "case {i}");
        let echoed = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let recorded: String = sqlx::query_scalar(
            "select request_id from audit_log where target_id = $1 and action = 'tenant.create'",
        )
        .bind(format!("t{i}"))
        .fetch_one(app.db.store.pool())
        .await
        .unwrap();
        assert_eq!(
            recorded, echoed,
            "case {i}: the audit log has the id echoed"
        );
        if *kept {
            assert_eq!(echoed.as_bytes(), *sent, "case {i}");
        } else {
            assert_ne!(echoed.as_bytes(), *sent, "case {i}");
            assert!(uuid_like(&echoed), "case {i}: a new id, not {echoed:?}");
        }
    }
}

fn uuid_like(id: &str) -> bool {
    id.len() == 36 && id.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

// ---------------------------------------------------------------------------------------------
// Defect: /readyz and every request waited 10 s while the database was down.

/// The test database behind a proxy the test controls, and the router over it with the
/// daemon's default pool limits (acquire 5 s, probe 500 ms).
async fn behind_proxy() -> (TestApp, TcpProxy, axum::Router) {
    let app = app().await;
    let target = app.db.store.target().clone();
    let upstream: SocketAddr = format!("{}:{}", target.host, target.port).parse().unwrap();
    let proxy = TcpProxy::start(upstream).await;
    let url = app.db.url.replacen(
        &format!("{}:{}", target.host, target.port),
        &proxy.addr().to_string(),
        1,
    );
    let store = ledger::Store::connect(&ledger::StoreConfig {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
        probe_timeout: Duration::from_millis(500),
        ..testkit::db::store_config(&url)
    })
    .await
    .unwrap();
    let router = router_for(store);
    (app, proxy, router)
}

/// The status of `path` (with the admin token) and how long it took.
async fn timed(router: &axum::Router, path: &str) -> (StatusCode, Duration) {
    let started = Instant::now();
    let reply = call(router, Method::GET, path, Some(&token("admin")), None).await;
    (reply.status, started.elapsed())
}

async fn until_ready(router: &axum::Router) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed(router, "/readyz").await.0 != StatusCode::OK {
        assert!(Instant::now() < deadline, "not ready again within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answers_503_at_once_while_the_database_is(mode: Mode) {
    let (_app, proxy, router) = behind_proxy().await;
    assert_eq!(timed(&router, "/readyz").await.0, StatusCode::OK);
    assert_eq!(timed(&router, "/api/v1/tenants").await.0, StatusCode::OK);

    proxy.set(mode).await;
    // The first requests find out, the next ones know.
    for round in 0..3 {
        let (status, took) = timed(&router, "/readyz").await;
        eprintln!("{mode:?}: /readyz round {round}: {status} in {took:?}");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took < Duration::from_secs(1), "/readyz took {took:?}");
        let (status, took) = timed(&router, "/api/v1/tenants").await;
        eprintln!("{mode:?}: /api/v1/tenants round {round}: {status} in {took:?}");
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(took < Duration::from_millis(1_500), "the API took {took:?}");
    }

    // Back: ready again, and the API answers.
    proxy.set(Mode::Forward).await;
    until_ready(&router).await;
    assert_eq!(timed(&router, "/api/v1/tenants").await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_and_requests_answer_503_at_once_while_the_database_refuses_connections() {
    answers_503_at_once_while_the_database_is(Mode::Refuse).await;
}

#[tokio::test]
async fn readiness_and_requests_answer_503_at_once_while_the_database_does_not_answer() {
    answers_503_at_once_while_the_database_is(Mode::Blackhole).await;
}

// ---------------------------------------------------------------------------------------------
// Defect: slow clients took the server down. Against `budgetd run` processes.

const ADMIN_TOKEN: &str = "bootstrap-token-for-the-http-tests";

/// A `budgetd run` process with the example configuration (enforcing, so it runs for leader;
/// not collecting), `[api]` and `[leader]` keys changed as given, and optionally a lower
/// open-file limit. Killed on drop.
struct Daemon {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Daemon {
    async fn start(name: &str, api: &[(&str, &str)], open_files: Option<u64>) -> (Daemon, TestDb) {
        let db = testkit::db::fresh_database().await;
        let dir = std::env::temp_dir().join(format!("budgetd-http-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let example = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/budgetd.toml"),
        )
        .unwrap();
        let mut text = example
            .replace(
                "[collector]\nenabled = true",
                "[collector]\nenabled = false",
            )
            .replace("retry_seconds = 5", "retry_seconds = 1")
            .replace("check_seconds = 5", "check_seconds = 1");
        let api_section = text.find("\n[api]\n").expect("the example has [api]");
        for (key, value) in api {
            let at = api_section
                + text[api_section..]
                    .find(&format!("\n{key} = "))
                    .unwrap_or_else(|| panic!("the example's [api] has no {key}"))
                + 1;
            let end = at + text[at..].find('\n').unwrap();
            text.replace_range(at..end, &format!("{key} = {value}"));
        }
        let config = dir.join("budgetd.toml");
        std::fs::write(&config, text).unwrap();
        let log = dir.join("budgetd.log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_budgetd"));
        command
            .env("BUDGETD_CONFIG", &config)
            .env("BUDGETD_DATABASE_URL", &db.url)
            .env("BUDGETD_MIGRATE_DATABASE_URL", &db.url)
            .env("BUDGETD_API_LISTEN", "127.0.0.1:0")
            .env("BUDGETD_BOOTSTRAP_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("BUDGETD_LOG", "info")
            .arg("run")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(limit) = open_files {
            // SAFETY: only setrlimit, which is async-signal-safe, runs between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command.spawn().unwrap();
        let mut daemon = Daemon {
            child,
            addr: String::new(),
            log,
        };
        let listening = daemon.wait_for_log("budgetd API listening");
        daemon.addr = listening
            .split("listen=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap()
            .to_owned();
        (daemon, db)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first log line with `needle`, waiting at most 60 s for it.
    fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log();
            if let Some(line) = testkit::complete_lines(&log).find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("budgetd exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn metric(&self, series: &str) -> Option<f64> {
        let (status, body) = get(&self.addr, "/metrics", None)
            .unwrap_or_else(|e| panic!("/metrics: {e}\n{}", self.log()));
        assert_eq!(status, 200, "{body}");
        metric(&body, series)
    }

    /// Polls `/metrics` until `series` has `value` (60 s at most).
    fn wait_for_metric(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.metric(series) != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{series} is not {value}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM; the daemon must exit cleanly within `limit`.
    fn stop(mut self, limit: Duration) -> Duration {
        let started = Instant::now();
        // SAFETY: kill with a child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) },
            0
        );
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}:\n{}", self.log());
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "still running {limit:?} after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `series` (its name and labels, as printed) in a scrape.
fn metric(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `request` on a new connection and reads until the server closes it: the status and
/// the whole response.
fn exchange(addr: &str, request: &str) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {response:?}")))?;
    Ok((status, response))
}

fn get(addr: &str, path: &str, token: Option<&str>) -> io::Result<(u16, String)> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let (status, response) = exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"),
    )?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    Ok((status, body))
}

/// When the server closed `stream` (EOF or a reset), and whatever it sent before.
fn until_closed(stream: &mut TcpStream) -> (Instant, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    (
        Instant::now(),
        String::from_utf8_lossy(&received).into_owned(),
    )
}

/// Clients that open connections and send their request heads a line at a time, for ever:
/// each connection the server closes is opened again at once.
struct Slowloris {
    stop: Arc<AtomicBool>,
    /// Connections held at the end of the last round.
    open: Arc<AtomicUsize>,
    /// Connections opened so far.
    connected: Arc<AtomicUsize>,
    reopened: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Slowloris {
    fn start(addr: &str, connections: usize) -> Slowloris {
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicUsize::new(0));
        let reopened = Arc::new(AtomicUsize::new(0));
        let addr: SocketAddr = addr.parse().unwrap();
        let thread = {
            let (stop, open, connected, reopened) = (
                stop.clone(),
                open.clone(),
                connected.clone(),
                reopened.clone(),
            );
            std::thread::spawn(move || {
                let mut sockets: Vec<Option<TcpStream>> = (0..connections).map(|_| None).collect();
                while !stop.load(Ordering::Relaxed) {
                    for socket in sockets.iter_mut() {
                        let sent = match socket {
                            Some(s) => s.write_all(b"X-Slow: 1\r\n"),
                            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                            {
                                Ok(mut s) => {
                                    connected.fetch_add(1, Ordering::Relaxed);
                                    let head = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
                                    *socket = Some(s);
                                    head
                                }
                                Err(e) => Err(e),
                            },
                        };
                        if sent.is_err() && socket.take().is_some() {
                            reopened.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    open.store(sockets.iter().flatten().count(), Ordering::Relaxed);
                    // The attack's pace: a header line per connection every 100 ms.
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        Slowloris {
            stop,
            open,
            connected,
            reopened,
            thread: Some(thread),
        }
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }
}

impl Drop for Slowloris {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

async fn leader_lease(db: &TestDb) -> (i64, String) {
    sqlx::query_as("select token, holder from leader_lease")
        .fetch_one(db.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn slow_clients_under_a_low_open_file_limit_cannot_take_the_server_down() {
    // 150 slow clients against 128 files, as in the report.
    let (daemon, db) =
        Daemon::start("slowloris", &[("header_timeout_ms", "1000")], Some(128)).await;
    daemon.wait_for_metric("budgetd_leader", 1.0);
    // database.max_connections 10, the leader and a direct attempt, and the margin.
    let limit = 128.0 - (10.0 + 2.0 + budgetd::serve::FD_MARGIN as f64);
    assert_eq!(daemon.metric("budgetd_http_connections_limit"), Some(limit));
    let (token, holder) = leader_lease(&db).await;

    let attack = Slowloris::start(&daemon.addr, 150);
    let deadline = Instant::now() + Duration::from_secs(30);
    // Every connection of the attack opened once: the server is at its limit (52), and each
    // connection the attack opens again takes the place of another one of its own.
    while attack.connected() < 150 {
        assert!(
            Instant::now() < deadline,
            "the attack opened {}",
            attack.connected()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Under attack for several header timeouts: probes, the API and the leader carry on.
    let under_attack = Instant::now();
    let mut slowest = Duration::ZERO;
    while under_attack.elapsed() < Duration::from_secs(4) {
        for (path, token) in [
            ("/healthz", None),
            ("/readyz", None),
            ("/api/v1/tenants", Some(ADMIN_TOKEN)),
        ] {
            let started = Instant::now();
            let (status, body) = get(&daemon.addr, path, token).unwrap();
            let took = started.elapsed();
            slowest = slowest.max(took);
            assert_eq!(status, 200, "{path}: {body}");
            assert!(took < Duration::from_secs(2), "{path} took {took:?}");
        }
        assert_eq!(daemon.metric("budgetd_leader"), Some(1.0));
    }
    eprintln!(
        "under attack ({} connections held, {} opened, {} reopened): the slowest answer took {slowest:?}",
        attack.open(),
        attack.connected(),
        attack.reopened.load(Ordering::Relaxed)
    );
    let (_, scrape) = get(&daemon.addr, "/metrics", None).unwrap();
    let evicted = metric(
        &scrape,
        "budgetd_http_connections_closed_total{outcome=\"evicted\"}",
    );
    assert!(evicted.is_some_and(|n| n > 0.0), "{scrape}");
    eprintln!(
        "evicted {evicted:?}, header timeouts {:?}, accept paused {:?}",
        metric(
            &scrape,
            "budgetd_http_connections_closed_total{outcome=\"header_timeout\"}"
        ),
        metric(&scrape, "budgetd_http_accept_paused_total")
    );
    // Still the same leader, which never lost its lock, and no file descriptor ran out.
    assert_eq!(leader_lease(&db).await, (token, holder));
    let log = daemon.log();
    assert!(!log.contains("lost leadership"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("cannot accept connections"), "{log}");

    // SIGTERM while slow clients still hold connections: they do not hold up the shutdown.
    let took = daemon.stop(Duration::from_secs(8));
    eprintln!("stopped under attack in {took:?}");
    drop(attack);
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_their_timeouts() {
    let (daemon, _db) = Daemon::start(
        "timeouts",
        &[("header_timeout_ms", "1000"), ("body_timeout_ms", "1000")],
        None,
    )
    .await;
    let addr = daemon.addr.clone();

    // Nothing sent, and half a head: closed after the header timeout, without an answer.
    let opened = Instant::now();
    let mut silent = TcpStream::connect(&addr).unwrap();
    let mut half_head = TcpStream::connect(&addr).unwrap();
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow:")
        .unwrap();
    for (what, stream) in [("nothing", &mut silent), ("half a head", &mut half_head)] {
        let (closed, received) = until_closed(stream);
        let took = closed - opened;
        eprintln!("{what}: closed after {took:?}");
        assert!(received.is_empty(), "{what}: {received:?}");
        assert!(
            took > Duration::from_millis(700) && took < Duration::from_secs(4),
            "{what}: closed after {took:?}"
        );
    }

    // A whole head and half a body: 408, and the connection closed.
    let opened = Instant::now();
    let mut half_body = TcpStream::connect(&addr).unwrap();
    half_body
        .write_all(
            format!(
                "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":"
            )
            .as_bytes(),
        )
        .unwrap();
    let (closed, received) = until_closed(&mut half_body);
    let took = closed - opened;
    eprintln!("half a body: closed after {took:?}");
    assert!(received.starts_with("HTTP/1.1 408 "), "{received}");
    assert!(received.contains("\"code\":\"body_timeout\""), "{received}");
    assert!(
        received.to_lowercase().contains("connection: close"),
        "{received}"
    );
    assert!(
        took > Duration::from_millis(700) && took < Duration::from_secs(4),
        "closed after {took:?}"
    );

    // The server is fine, and nothing was created.
    let (status, body) = get(&addr, "/api/v1/tenants", Some(ADMIN_TOKEN)).unwrap();
    assert_eq!((status, body.as_str()), (200, "{\"tenants\":[]}"));
    daemon.stop(Duration::from_secs(15));
}

/// A POST whose handler is waiting for its body: the server asked for it (100 Continue).
fn busy_connection(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(
            format!(
                "POST /api/v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\
                 Content-Type: application/json\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = [0u8; 25];
    stream.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream
}

#[tokio::test]
async fn connections_over_the_limit_get_503_while_every_one_has_a_request_in_progress() {
    let (daemon, _db) = Daemon::start(
        "limit",
        &[
            ("max_connections", "4"),
            ("header_timeout_ms", "1000"),
            ("body_timeout_ms", "3000"),
        ],
        None,
    )
    .await;
    let addr = daemon.addr.clone();
    assert_eq!(daemon.metric("budgetd_http_connections_limit"), Some(4.0));
    let mut busy: Vec<TcpStream> = (0..4).map(|_| busy_connection(&addr)).collect();

    let started = Instant::now();
    let (status, response) = exchange(
        &addr,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let took = started.elapsed();
    eprintln!("over the limit: {status} in {took:?}");
    assert_eq!(status, 503, "{response}");
    assert!(response.contains("too_many_connections"), "{response}");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // The requests in progress were not disturbed: they end with their own answer (their
    // bodies never came), and then there is room again.
    for stream in &mut busy {
        let (_, received) = until_closed(stream);
        assert!(received.contains("HTTP/1.1 408 "), "{received}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get(&addr, "/healthz", None) {
            Ok((200, _)) => break,
            other => assert!(Instant::now() < deadline, "{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, scrape) = get(&addr, "/metrics", None).unwrap();
    let refused = metric(
        &scrape,
        "budgetd_http_connections_closed_total{outcome=\"refused\"}",
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{scrape}");
    daemon.stop(Duration::from_secs(15));
}
