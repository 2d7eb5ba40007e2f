//! A TCP proxy a test controls, in front of a real server (a test's Postgres): it forwards, or
//! refuses connections (nothing listens on its port), or swallows them (it accepts and never
//! answers, as a host behind a dropping firewall does). Every change of mode cuts the
//! connections it holds, as a server that goes away does.
//!
//! A refused port stays bound (not listening) while it refuses, so no other process can be
//! given it in the meantime and answer in its place: [`RefusingPort`].

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Connections reach the upstream server.
    Forward,
    /// Nothing listens: connections are refused.
    Refuse,
    /// Connections are accepted and never answered.
    Blackhole,
}

pub struct TcpProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    applied: watch::Receiver<Mode>,
}

impl TcpProxy {
    /// A proxy on a free loopback port, forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (mode, control) = watch::channel(Mode::Forward);
        let (applied_tx, applied) = watch::channel(Mode::Forward);
        tokio::spawn(run(Some(listener), addr, upstream, control, applied_tx));
        TcpProxy {
            addr,
            mode,
            applied,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `mode`, cutting every connection held, and returns once it is in force.
    pub async fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
        let mut applied = self.applied.clone();
        tokio::time::timeout(Duration::from_secs(10), applied.wait_for(|m| *m == mode))
            .await
            .expect("the proxy applies a mode within 10 s")
            .expect("the proxy runs while it is not dropped");
    }
}

/// A loopback port that refuses connections for as long as this value lives: the socket is
/// bound but never listens, so connecting gets "connection refused" and the port cannot be
/// handed to another listener (a port given up with `drop` can be, by the next `bind(0)` of any
/// process, which then answers in its place).
pub struct RefusingPort {
    socket: TcpSocket,
    addr: SocketAddr,
}

impl RefusingPort {
    /// A free loopback port, held and refusing.
    pub fn new() -> RefusingPort {
        RefusingPort::at("127.0.0.1:0".parse().expect("a socket address"))
            .expect("bind a free loopback port")
    }

    fn at(addr: SocketAddr) -> std::io::Result<RefusingPort> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let addr = socket.local_addr()?;
        Ok(RefusingPort { socket, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts listening on the held port (inside a Tokio runtime).
    fn listen(self) -> std::io::Result<TcpListener> {
        self.socket.listen(1024)
    }
}

impl Default for RefusingPort {
    fn default() -> Self {
        RefusingPort::new()
    }
}

/// Runs until the `TcpProxy` is dropped (its sender closes `control`).
async fn run(
    mut listener: Option<TcpListener>,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut control: watch::Receiver<Mode>,
    applied: watch::Sender<Mode>,
) {
    let mut held: Option<RefusingPort> = None;
    loop {
        let mode = *control.borrow_and_update();
        match mode {
            Mode::Refuse if listener.is_some() => {
                listener = None;
                held = Some(hold_again(addr).await);
            }
            Mode::Refuse => {}
            Mode::Forward | Mode::Blackhole => {
                if let Some(port) = held.take() {
                    listener = Some(port.listen().expect("listen on the held port"));
                }
            }
        }
        applied.send_replace(mode);
        loop {
            tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                accepted = accept(listener.as_ref()) => {
                    if let Ok((client, _)) = accepted {
                        tokio::spawn(connection(client, mode, upstream, control.clone()));
                    }
                }
            }
        }
    }
}

async fn accept(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// The port again, held without listening once its listener is closed (SO_REUSEADDR lets it
/// bind while old connections linger).
async fn hold_again(addr: SocketAddr) -> RefusingPort {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match RefusingPort::at(addr) {
            Ok(port) => return port,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("proxy: cannot bind {addr} yet ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("proxy: cannot bind {addr} again: {e}"),
        }
    }
}

/// One client connection, until it ends or the mode changes.
async fn connection(
    mut client: TcpStream,
    mode: Mode,
    upstream: SocketAddr,
    mut control: watch::Receiver<Mode>,
) {
    let serve = async {
        match mode {
            Mode::Forward => {
                if let Ok(mut server) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            }
            Mode::Blackhole | Mode::Refuse => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = control.changed() => {}
        () = serve => {}
    }
}
