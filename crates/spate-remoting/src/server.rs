//! The accepting side: a listener whose connections all share one handler.

use std::collections::HashMap;
use std::net::SocketAddr;
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

/// A running server. Dropping it does not stop it; call [`RemotingServer::shutdown`].
pub struct RemotingServer {
    local_addr: SocketAddr,
    stop_accepting: CancellationToken,
    state: Arc<ServerState>,
}

struct ServerState {
    connections: Mutex<HashMap<u64, Arc<Connection>>>,
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
        self.0.handler.on_close(conn);
    }

    fn is_priority(&self, request: &RemotingCommand) -> bool {
        self.0.handler.is_priority(request)
    }

    fn on_priority_lane(&self, conn: &Arc<Connection>) {
        self.0.handler.on_priority_lane(conn);
    }
}

struct InFlight(Arc<ServerState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl RemotingServer {
    /// Binds `addr` and starts accepting on the current runtime, with at most
    /// [`DEFAULT_MAX_CONNECTIONS`] connections.
    pub async fn bind(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
    ) -> std::io::Result<RemotingServer> {
        Self::bind_with_limit(addr, cfg, handler, DEFAULT_MAX_CONNECTIONS).await
    }

    /// Like [`RemotingServer::bind`] with an explicit connection limit
    /// (`serverMaxConnections`); connections beyond it are closed at accept.
    pub async fn bind_with_limit(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        handler: Arc<dyn RequestHandler>,
        max_connections: usize,
    ) -> std::io::Result<RemotingServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let state =
            Arc::new(ServerState { connections: Mutex::new(HashMap::new()), in_flight: AtomicUsize::new(0), handler });
        let stop_accepting = CancellationToken::new();
        let tracking: Arc<dyn RequestHandler> = Arc::new(Tracking(state.clone()));
        tokio::spawn(accept_loop(listener, cfg, tracking, state.clone(), stop_accepting.clone(), max_connections));
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
    max_connections: usize,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                if state.connections.lock().len() >= max_connections {
                    tracing::warn!(peer = %peer, max_connections, "connection refused: serverMaxConnections reached");
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
                    Err(e) => tracing::debug!(error = %e, "accepted connection vanished"),
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
