//! The accepting side: a listener whose connections all share one handler.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::command::RemotingCommand;
use crate::connection::{BoxFuture, Connection, ConnectionConfig, RequestHandler};

/// Default `serverMaxConnections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// Default `serverMaxConnectionsPerAddress`: a tenth of the whole, so one
/// address (a leaking client, a port scanner) cannot lock everyone else
/// out, while a host running many clients still fits.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 1_000;
/// At most one warning per this long about refused connections (with the
/// count refused meanwhile): a flood of connections must not flood the log.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

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
    /// Open connections per client address; an address leaves the map
    /// with its last connection, so the map is bounded by the connections.
    per_address: Mutex<HashMap<IpAddr, usize>>,
    in_flight: AtomicUsize,
    handler: Arc<dyn RequestHandler>,
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
        self.0.leave(conn.peer_addr().ip());
        self.0.handler.on_close(conn);
    }

    fn is_priority(&self, request: &RemotingCommand) -> bool {
        self.0.handler.is_priority(request)
    }

    fn on_priority_lane(&self, conn: &Arc<Connection>) {
        self.0.handler.on_priority_lane(conn);
    }
}

impl ServerState {
    /// Counts a new connection from `ip` unless its address is at the cap.
    fn enter(&self, ip: IpAddr, max_per_address: usize) -> bool {
        let mut per_address = self.per_address.lock();
        let open = per_address.entry(canonical(ip)).or_insert(0);
        if *open >= max_per_address {
            if *open == 0 {
                per_address.remove(&canonical(ip));
            }
            return false;
        }
        *open += 1;
        true
    }

    /// Forgets one connection from `ip` (closed, or never started).
    fn leave(&self, ip: IpAddr) {
        let mut per_address = self.per_address.lock();
        let ip = canonical(ip);
        match per_address.get_mut(&ip) {
            Some(open) if *open > 1 => *open -= 1,
            Some(_) => {
                per_address.remove(&ip);
            }
            None => debug_assert!(false, "a connection from {ip} left that never entered"),
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
    /// connections beyond them are closed at accept.
    pub async fn bind_with_limits(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
        limits: AcceptLimits,
    ) -> std::io::Result<RemotingServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            connections: Mutex::new(HashMap::new()),
            per_address: Mutex::new(HashMap::new()),
            in_flight: AtomicUsize::new(0),
            handler,
        });
        let stop_accepting = CancellationToken::new();
        let tracking: Arc<dyn RequestHandler> = Arc::new(Tracking(state.clone()));
        tokio::spawn(accept_loop(listener, cfg, tracking, state.clone(), stop_accepting.clone(), limits));
        Ok(RemotingServer { local_addr, stop_accepting, state })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.state.connections.lock().len()
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

async fn accept_loop(
    listener: TcpListener,
    cfg: ConnectionConfig,
    handler: Arc<dyn RequestHandler>,
    state: Arc<ServerState>,
    stop: CancellationToken,
    limits: AcceptLimits,
) {
    let mut refusals = RefusalLog { last_warned: None, suppressed: 0 };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Dropping the stream closes it: a refusal costs no more.
                let refused = if state.connections.lock().len() >= limits.max_connections {
                    Some("serverMaxConnections")
                } else if !state.enter(peer.ip(), limits.max_connections_per_address) {
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
                match Connection::start(stream, Some(handler.clone()), &cfg) {
                    Ok(conn) => {
                        state.connections.lock().insert(conn.id(), conn.clone());
                        // A peer that hung up at once may have been forgotten
                        // before it was recorded: do not keep it.
                        if conn.is_closed() {
                            state.connections.lock().remove(&conn.id());
                        }
                    }
                    Err(e) => {
                        // Never started, so never closes: uncount it here.
                        state.leave(peer.ip());
                        tracing::debug!(error = %e, "accepted connection vanished")
                    }
                }
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
}
