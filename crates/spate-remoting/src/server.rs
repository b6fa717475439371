//! The accepting side: a listener whose connections all share one handler.
//!
//! Plaintext and TLS share the port. Each accepted connection is admitted
//! on a task of its own, so a slow or silent peer never holds up the
//! accept loop: its first byte is peeked (`0x16` opens a TLS handshake),
//! the server's [`TlsMode`] decides whether that kind is served, and a TLS
//! handshake is completed, all within `tlsHandshakeTimeoutMillis` of the
//! accept. A connection that fails this is closed alone.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::command::RemotingCommand;
use crate::connection::{BoxFuture, Connection, ConnectionConfig, RequestHandler};
use crate::tls::{ServerTls, TlsMode};
pub use crate::transport::Http2Stream;
use crate::transport::{TlsSocket, Transport};

/// Default `serverMaxConnections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `serverMaxConnectionsPerAddress`: a tenth of the whole, so one
/// address (a leaking client, a port scanner) cannot lock everyone else
/// out, while a host running many clients still fits.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1_000;
/// At most one warning per this long about refused connections (with the
/// count refused meanwhile): a flood of connections must not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// The first byte of a TLS record that carries a handshake message: what
/// a ClientHello starts with. A plaintext frame starts with the top byte
/// of its length, which is 0 for any frame under 16 MiB.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of HTTP/2's client preface (`PRI * HTTP/2.0`): a gRPC
/// client on the remoting port. As a remoting frame's first byte it would
/// announce a frame over 1 GiB, which no server accepts.
const HTTP2_PREFACE_FIRST: u8 = b'P';

/// Takes the connections on a remoting port that speak HTTP/2: plaintext
/// ones that open with its preface (h2c), TLS ones that negotiated `h2` by
/// ALPN. So one address serves remoting and gRPC clients. The stream is
/// handed over with nothing read from it past the TLS handshake.
pub trait Http2Sink: Send + Sync {
    fn accept(&self, stream: Http2Stream);
}

/// Admits a connection to a port that serves HTTP/2 only (gRPC's own
/// port): TLS when its first byte opens a handshake, else plaintext, as
/// `tls`'s mode allows, within its handshake timeout.
pub async fn admit_http2(stream: TcpStream, peer: SocketAddr, tls: &ServerTls) -> Result<Http2Stream, String> {
    match admit(stream, peer, tls).await {
        Ok(Admitted::Http2(s)) => Ok(s),
        // A plaintext start that is not HTTP/2's preface: the HTTP/2
        // server answers it with a protocol error.
        Ok(Admitted::Remoting(Transport::Plain(tcp))) => Ok(Http2Stream::plain(tcp, peer)),
        Ok(Admitted::Remoting(Transport::Tls(_))) => Err("TLS without ALPN h2 on a gRPC port".into()),
        Err(refusal) => Err(refusal.to_string()),
    }
}

/// How many connections a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcceptLimits {
    /// Connections open at once (`serverMaxConnections`, 10,000).
    pub max_connections: usize,
    /// Connections open at once from one client IP address, loopback
    /// included (`serverMaxConnectionsPerAddress`, 1,000).
    pub max_connections_per_address: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        AcceptLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
        }
    }
}

/// A running server. Dropping it does not stop it; call [`RemotingServer::shutdown`].
pub struct RemotingServer {
    local_addr: SocketAddr,
    stop_accepting: CancellationToken,
    state: Arc<ServerState>,
}

struct ServerState {
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
    /// Accepted connections not yet started (waiting for their first byte
    /// or in a TLS handshake); they count against `serverMaxConnections`.
    admitting: AtomicUsize,
    /// Open connections per client address, admitting ones included; an
    /// address leaves the map with its last connection, so the map is
    /// bounded by the connections.
    per_address: Arc<AddressCounts>,
    in_flight: AtomicUsize,
    handler: Arc<dyn RequestHandler>,
    /// Connections closed at admission (see [`RemotingServer::admission_refusals`]).
    admission_refusals: AtomicU64,
    admission_log: Mutex<RefusalLog>,
}

/// Wraps the user's handler to count requests in progress and track connections.
struct Tracking(Arc<ServerState>);

impl RequestHandler for Tracking {
    fn handle(&self, conn: Arc<Connection>, request: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let state = self.0.clone();
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Box::pin(async move {
            let guard = InFlight(state.clone());
            let resp = state.handler.handle(conn, request).await;
            drop(guard);
            resp
        })
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        self.0.connections.lock().remove(&conn.id());
        self.0.per_address.leave(conn.peer_addr().ip());
        self.0.handler.on_close(conn);
    }

    fn is_priority(&self, request: &RemotingCommand) -> bool {
        self.0.handler.is_priority(request)
    }

    fn on_priority_lane(&self, conn: &Arc<Connection>) {
        self.0.handler.on_priority_lane(conn);
    }
}

/// Open connections per client address (`serverMaxConnectionsPerAddress`);
/// an address leaves the map with its last connection, so the map is
/// bounded by the connections. Shared by every listener that takes the
/// setting (the remoting port, the broker's gRPC port).
#[derive(Default)]
pub struct AddressCounts(Mutex<HashMap<IpAddr, usize>>);

impl AddressCounts {
    /// Counts a new connection from `ip` unless its address is at `max`.
    pub fn enter(&self, ip: IpAddr, max: usize) -> bool {
        let mut per_address = self.0.lock();
        let open = per_address.entry(canonical(ip)).or_insert(0);
        if *open >= max {
            if *open == 0 {
                per_address.remove(&canonical(ip));
            }
            return false;
        }
        *open += 1;
        true
    }

    /// Forgets one connection from `ip` (closed, or never started).
    pub fn leave(&self, ip: IpAddr) {
        let mut per_address = self.0.lock();
        let ip = canonical(ip);
        match per_address.get_mut(&ip) {
            Some(open) if *open > 1 => *open -= 1,
            Some(_) => {
                per_address.remove(&ip);
            }
            None => debug_assert!(false, "a connection from {ip} left that never entered"),
        }
    }

    /// Counts a connection from `ip`, as [`AddressCounts::enter`], and
    /// gives a place that uncounts it when dropped.
    pub fn slot(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        self.enter(ip, max).then(|| AddressSlot(self.clone(), ip))
    }
}

/// One connection's place in its address's count; given back on drop.
pub struct AddressSlot(Arc<AddressCounts>, IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

impl ServerState {
    /// Counts and, at a bounded rate, logs a connection closed at admission.
    fn refused(&self, peer: SocketAddr, refusal: &Refusal, mode: TlsMode) {
        if matches!(refusal, Refusal::HungUp | Refusal::ShuttingDown) {
            tracing::debug!(peer = %peer, reason = %refusal, "connection closed before its first frame");
            return;
        }
        self.admission_refusals.fetch_add(1, Ordering::Relaxed);
        let unlogged = self.admission_log.lock().note(Instant::now());
        if let Some(unlogged) = unlogged {
            tracing::warn!(
                peer = %peer,
                reason = %refusal,
                tls_mode = %mode,
                refused_unlogged = unlogged,
                "connection closed before its first frame"
            );
        }
    }
}

/// An IPv4 client reaching a dual-stack listener shows up as `::ffff:a.b.c.d`;
/// it is the same address either way.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// Refusals since the last warning, so the log says how many without a
/// line for each.
struct RefusalLog {
    last_warned: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether to warn now; if so, also how many refusals went unlogged before.
    fn note(&mut self, now: Instant) -> Option<u64> {
        match self.last_warned {
            Some(t) if now.duration_since(t) < REFUSAL_LOG_INTERVAL => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last_warned = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// What an accepted connection's first byte gets it, under a [`TlsMode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Plain,
    Tls,
    Http2,
    Refused(&'static str),
}

fn admission(mode: TlsMode, first_byte: u8) -> Admission {
    if first_byte == HTTP2_PREFACE_FIRST {
        return match mode {
            TlsMode::Enforcing => Admission::Refused("plaintext while tlsMode is enforcing"),
            TlsMode::Disabled | TlsMode::Permissive => Admission::Http2,
        };
    }
    match (first_byte == TLS_HANDSHAKE_RECORD, mode) {
        (true, TlsMode::Disabled) => Admission::Refused("TLS handshake while tlsMode is disabled"),
        (true, TlsMode::Permissive | TlsMode::Enforcing) => Admission::Tls,
        (false, TlsMode::Enforcing) => Admission::Refused("plaintext while tlsMode is enforcing"),
        (false, TlsMode::Disabled | TlsMode::Permissive) => Admission::Plain,
    }
}

/// Why an accepted connection was closed before it started.
#[derive(Debug)]
enum Refusal {
    /// Closed or reset before sending a byte (a port probe, a readiness
    /// check): dropped without counting.
    HungUp,
    /// Nothing sent, or the TLS handshake unfinished, within
    /// `tlsHandshakeTimeoutMillis`.
    TooSlow(Duration),
    /// The kind of connection the mode does not serve.
    Mode(&'static str),
    /// The TLS handshake failed (not TLS after all, a certificate refused).
    Handshake(std::io::Error),
    ShuttingDown,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::HungUp => f.write_str("hung up before sending anything"),
            Refusal::TooSlow(t) => write!(f, "no frame or finished TLS handshake within {} ms", t.as_millis()),
            Refusal::Mode(why) => f.write_str(why),
            Refusal::Handshake(e) => write!(f, "TLS handshake failed: {e}"),
            Refusal::ShuttingDown => f.write_str("server shutting down"),
        }
    }
}

/// Peeks the first byte of `stream` and, if it opens a TLS handshake the
/// mode serves, completes the handshake; both within the handshake timeout.
async fn admit(stream: TcpStream, peer: SocketAddr, tls: &ServerTls) -> Result<Admitted, Refusal> {
    let timeout = tls.handshake_timeout();
    let deadline = tokio::time::Instant::now() + timeout;
    // Before the handshake: its messages are small and must not wait.
    let _ = stream.set_nodelay(true);
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Err(_) => return Err(Refusal::TooSlow(timeout)),
        Ok(Ok(0) | Err(_)) => return Err(Refusal::HungUp),
        Ok(Ok(_)) => {}
    }
    match admission(tls.mode(), first[0]) {
        Admission::Plain => Ok(Admitted::Remoting(Transport::Plain(stream))),
        Admission::Http2 => Ok(Admitted::Http2(Http2Stream::plain(stream, peer))),
        Admission::Refused(why) => Err(Refusal::Mode(why)),
        Admission::Tls => {
            let acceptor = tls.acceptor().ok_or(Refusal::Mode("no TLS configuration"))?;
            let handshake = tokio::time::timeout_at(deadline, acceptor.accept(TlsSocket::new(stream)));
            let tls_stream = handshake.await.map_err(|_| Refusal::TooSlow(timeout))?.map_err(Refusal::Handshake)?;
            let tls_stream: crate::transport::TlsStream = tls_stream.into();
            if tls_stream.get_ref().1.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                return Ok(Admitted::Http2(Http2Stream::tls(Box::new(tls_stream), peer)));
            }
            Ok(Admitted::Remoting(Transport::Tls(Box::new(tls_stream))))
        }
    }
}

/// What an admitted connection speaks.
enum Admitted {
    Remoting(Transport),
    /// HTTP/2, for the [`Http2Sink`].
    Http2(Http2Stream),
}

/// What the start of every accepted connection needs.
struct Accepting {
    cfg: ConnectionConfig,
    handler: Arc<dyn RequestHandler>,
    state: Arc<ServerState>,
    tls: ServerTls,
    stop: CancellationToken,
    http2: Option<Arc<dyn Http2Sink>>,
}

/// One connection counted as admitting until dropped.
struct Admitting(Arc<ServerState>);

impl Drop for Admitting {
    fn drop(&mut self) {
        let before = self.0.admitting.fetch_sub(1, Ordering::AcqRel);
        debug_assert!(before > 0, "more connections left admission than entered it");
    }
}

/// Admits one accepted connection and starts it, on a task of its own.
async fn admit_and_start(stream: TcpStream, peer: SocketAddr, a: Arc<Accepting>) {
    let admitting = Admitting(a.state.clone());
    let admitted = tokio::select! {
        _ = a.stop.cancelled() => Err(Refusal::ShuttingDown),
        t = admit(stream, peer, &a.tls) => t,
    };
    let transport = match admitted {
        Ok(Admitted::Remoting(t)) => t,
        Ok(Admitted::Http2(stream)) => {
            // Counted against this address (serverMaxConnectionsPerAddress)
            // until the HTTP/2 connection is dropped; the sink bounds the
            // total of its own.
            let stream = stream.counted(AddressSlot(a.state.per_address.clone(), peer.ip()));
            match &a.http2 {
                Some(sink) => sink.accept(stream),
                None => a.state.refused(peer, &Refusal::Mode("HTTP/2 (gRPC) is not served on this port"), a.tls.mode()),
            }
            return;
        }
        Err(refusal) => {
            a.state.per_address.leave(peer.ip());
            a.state.refused(peer, &refusal, a.tls.mode());
            return;
        }
    };
    match Connection::start_on(transport, Some(a.handler.clone()), &a.cfg) {
        Ok(conn) => {
            a.state.connections.lock().insert(conn.id(), conn.clone());
            // A peer that hung up at once may have been forgotten before it
            // was recorded, and a shutdown may have closed the others
            // meanwhile: do not keep it.
            if conn.is_closed() {
                a.state.connections.lock().remove(&conn.id());
            } else if a.stop.is_cancelled() {
                conn.close();
            }
        }
        Err(e) => {
            // Never started, so never closes: uncount it here.
            a.state.per_address.leave(peer.ip());
            tracing::debug!(error = %e, "accepted connection vanished")
        }
    }
    // Counted as admitting until it is in `connections`, so the two
    // together never undercount against serverMaxConnections.
    drop(admitting);
}

struct InFlight(Arc<ServerState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RemotingServer {
    /// Binds `addr` and starts accepting on the current runtime, with the
    /// default [`AcceptLimits`].
    pub async fn bind(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
    ) -> std::io::Result<RemotingServer> {
        Self::bind_with_limits(addr, cfg, handler, AcceptLimits::default()).await
    }

    /// Like [`RemotingServer::bind`] with explicit connection limits;
    /// connections beyond them are closed at accept. Plaintext only.
    pub async fn bind_with_limits(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
        limits: AcceptLimits,
    ) -> std::io::Result<RemotingServer> {
        Self::bind_with_tls(addr, cfg, handler, limits, ServerTls::disabled()).await
    }

    /// Like [`RemotingServer::bind_with_limits`], serving TLS on the same
    /// port as `tls` says (see [`crate::tls`]).
    pub async fn bind_with_tls(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
        limits: AcceptLimits,
        tls: ServerTls,
    ) -> std::io::Result<RemotingServer> {
        Self::bind_serving(addr, cfg, handler, limits, tls, None).await
    }

    /// Like [`RemotingServer::bind_with_tls`]; connections that open with
    /// HTTP/2's preface go to `http2` (refused when there is none).
    pub async fn bind_serving(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
        limits: AcceptLimits,
        tls: ServerTls,
        http2: Option<Arc<dyn Http2Sink>>,
    ) -> std::io::Result<RemotingServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            connections: Mutex::new(HashMap::new()),
            admitting: AtomicUsize::new(0),
            per_address: Arc::default(),
            in_flight: AtomicUsize::new(0),
            handler,
            admission_refusals: AtomicU64::new(0),
            admission_log: Mutex::new(RefusalLog { last_warned: None, suppressed: 0 }),
        });
        let stop_accepting = CancellationToken::new();
        let tracking: Arc<dyn RequestHandler> = Arc::new(Tracking(state.clone()));
        let accepting = Arc::new(Accepting {
            cfg,
            handler: tracking,
            state: state.clone(),
            tls,
            stop: stop_accepting.clone(),
            http2,
        });
        tokio::spawn(accept_loop(listener, accepting, limits));
        Ok(RemotingServer { local_addr, stop_accepting, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently open (started: past their first byte and,
    /// for TLS, their handshake).
    pub fn connection_count(&self) -> usize {
        self.state.connections.lock().len()
    }

    /// Connections closed before they started, since the server began:
    /// the kind the [`TlsMode`] does not serve, silent or unfinished
    /// past `tlsHandshakeTimeoutMillis`, or a failed TLS handshake. A peer
    /// that hangs up without sending anything is not counted.
    pub fn admission_refusals(&self) -> u64 {
        self.state.admission_refusals.load(Ordering::Relaxed)
    }

    /// Stops accepting, waits up to `grace` for requests in progress to be
    /// answered, then closes every connection.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop_accepting.cancel();
        let deadline = Instant::now() + grace;
        while self.state.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let conns: Vec<_> = self.state.connections.lock().values().cloned().collect();
        for c in conns {
            c.close();
        }
    }
}

async fn accept_loop(listener: TcpListener, a: Arc<Accepting>, limits: AcceptLimits) {
    let state = &a.state;
    let mut refusals = RefusalLog { last_warned: None, suppressed: 0 };
    loop {
        let accepted = tokio::select! {
            _ = a.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Dropping the stream closes it: a refusal costs no more.
                let open = state.connections.lock().len() + state.admitting.load(Ordering::Acquire);
                let refused = if open >= limits.max_connections {
                    Some("serverMaxConnections")
                } else if !state.per_address.enter(peer.ip(), limits.max_connections_per_address) {
                    Some("serverMaxConnectionsPerAddress")
                } else {
                    None
                };
                if let Some(limit) = refused {
                    if let Some(unlogged) = refusals.note(Instant::now()) {
                        tracing::warn!(
                            peer = %peer,
                            limit,
                            max_connections = limits.max_connections,
                            max_connections_per_address = limits.max_connections_per_address,
                            refused_unlogged = unlogged,
                            "connection refused at accept"
                        );
                    }
                    continue;
                }
                state.admitting.fetch_add(1, Ordering::AcqRel);
                tokio::spawn(admit_and_start(stream, peer, a.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_logged_at_most_once_per_interval_with_a_count() {
        let mut log = RefusalLog { last_warned: None, suppressed: 0 };
        let t0 = Instant::now();
        assert_eq!(log.note(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(log.note(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(log.note(t0 + REFUSAL_LOG_INTERVAL), Some(5));
    }

    #[test]
    fn the_first_byte_and_the_mode_decide_admission() {
        use Admission::*;
        for byte in [0u8, 1, 0x15, 0x17, 0x80, 0xff] {
            assert_eq!(admission(TlsMode::Disabled, byte), Plain, "byte {byte:#x}");
            assert_eq!(admission(TlsMode::Permissive, byte), Plain, "byte {byte:#x}");
            assert!(matches!(admission(TlsMode::Enforcing, byte), Refused(_)), "byte {byte:#x}");
        }
        assert!(matches!(admission(TlsMode::Disabled, TLS_HANDSHAKE_RECORD), Refused(_)));
        assert_eq!(admission(TlsMode::Permissive, TLS_HANDSHAKE_RECORD), Tls);
        assert_eq!(admission(TlsMode::Enforcing, TLS_HANDSHAKE_RECORD), Tls);
        assert_eq!(admission(TlsMode::Disabled, HTTP2_PREFACE_FIRST), Http2);
        assert_eq!(admission(TlsMode::Permissive, HTTP2_PREFACE_FIRST), Http2);
        assert!(matches!(admission(TlsMode::Enforcing, HTTP2_PREFACE_FIRST), Refused(_)));
    }
}
