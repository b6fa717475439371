//! One TCP connection, used the same way by servers and clients: either side
//! may send requests (correlated to responses by `opaque`) and either side may
//! receive requests, which go to a [`RequestHandler`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::codec::{FrameCodec, DEFAULT_FRAME_MAX_LENGTH};
use crate::command::{RemotingCommand, FLAG_ONEWAY};
use crate::error::{FrameError, RemotingError};

/// A boxed future returned by request handlers.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Processes requests that arrive on a connection.
pub trait RequestHandler: Send + Sync + 'static {
    /// Returns the response, or `None` for a one-way request or one answered later.
    fn handle(&self, conn: Arc<Connection>, request: RemotingCommand) -> BoxFuture<Option<RemotingCommand>>;

    /// Called once when the connection closes.
    fn on_close(&self, _conn: &Arc<Connection>) {}
}

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Largest frame accepted (`frameMaxLength`, 16 MiB).
    pub frame_max_length: usize,
    /// A connection silent this long is closed
    /// (`serverChannelMaxIdleTimeSeconds` / `clientChannelMaxIdleTimeSeconds`, 120 s).
    pub idle_timeout: Duration,
    /// Frames queued for writing before senders wait.
    pub outbound_queue_frames: usize,
    /// Requests from the peer processed at once; reading pauses beyond it.
    pub max_inbound_in_flight: usize,
    /// Our requests awaiting the peer's response (`clientAsyncSemaphoreValue`).
    pub max_outbound_pending: usize,
    /// A peer that takes longer than this to accept one batch of writes is
    /// dropped, so a client that stops reading cannot pin our buffers.
    pub write_timeout: Duration,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            frame_max_length: DEFAULT_FRAME_MAX_LENGTH,
            idle_timeout: Duration::from_secs(120),
            outbound_queue_frames: 1024,
            max_inbound_in_flight: 1024,
            max_outbound_pending: 65535,
            write_timeout: Duration::from_secs(30),
        }
    }
}

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_OPAQUE: AtomicI32 = AtomicI32::new(1);

/// A live connection. Cheap to share; closes when either side hangs up, on a
/// malformed frame, after the idle timeout, or on [`Connection::close`].
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    outbound: mpsc::Sender<RemotingCommand>,
    pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    max_outbound_pending: usize,
    closed: CancellationToken,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("id", &self.id).field("peer", &self.peer).finish()
    }
}

impl Connection {
    /// Starts the reader and writer tasks of `stream` on the current runtime.
    pub fn start(
        stream: TcpStream,
        handler: Option<Arc<dyn RequestHandler>>,
        cfg: &ConnectionConfig,
    ) -> std::io::Result<Arc<Connection>> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        let _ = stream.set_nodelay(true);
        let (reader, writer) = stream.into_split();
        let (tx, rx) = mpsc::channel(cfg.outbound_queue_frames.max(1));
        let conn = Arc::new(Connection {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            outbound: tx,
            pending: Mutex::new(HashMap::new()),
            max_outbound_pending: cfg.max_outbound_pending,
            closed: CancellationToken::new(),
        });
        tokio::spawn(write_loop(writer, rx, conn.closed.clone(), peer, cfg.write_timeout));
        tokio::spawn(read_loop(conn.clone(), reader, handler, cfg.clone()));
        Ok(conn)
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Closes the connection; pending calls fail with `Closed`.
    pub fn close(&self) {
        self.closed.cancel();
    }

    /// Resolves when the connection has closed.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Sends `request` and waits for its response.
    pub async fn invoke(
        &self,
        mut request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        let opaque = NEXT_OPAQUE.fetch_add(1, Ordering::Relaxed);
        request.opaque = opaque;
        request.flag &= !FLAG_ONEWAY;
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.pending.lock();
            if pending.len() >= self.max_outbound_pending {
                return Err(RemotingError::TooManyInFlight(self.peer.to_string()));
            }
            pending.insert(opaque, tx);
        }
        let result = tokio::time::timeout(timeout, async {
            self.send(request).await?;
            rx.await.map_err(|_| RemotingError::Closed(self.peer.to_string()))
        })
        .await;
        match result {
            Ok(Err(e)) => {
                self.pending.lock().remove(&opaque);
                Err(e)
            }
            Ok(r) => r,
            Err(_) => {
                self.pending.lock().remove(&opaque);
                Err(RemotingError::Timeout { addr: self.peer.to_string(), timeout_ms: timeout.as_millis() as u64 })
            }
        }
    }

    /// Sends a one-way request (no response expected).
    pub async fn oneway(&self, mut request: RemotingCommand) -> Result<(), RemotingError> {
        request.opaque = NEXT_OPAQUE.fetch_add(1, Ordering::Relaxed);
        request.flag |= FLAG_ONEWAY;
        self.send(request).await
    }

    /// Queues a command for writing as it is (used for responses).
    pub async fn send(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        tokio::select! {
            r = self.outbound.send(cmd) => r.map_err(|_| RemotingError::Closed(self.peer.to_string())),
            _ = self.closed.cancelled() => Err(RemotingError::Closed(self.peer.to_string())),
        }
    }

    /// Queues a one-way request without waiting: fails at once when the
    /// outbound queue is full (for best-effort notifications).
    pub fn try_oneway(&self, mut request: RemotingCommand) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        request.opaque = NEXT_OPAQUE.fetch_add(1, Ordering::Relaxed);
        request.flag |= FLAG_ONEWAY;
        self.outbound.try_send(request).map_err(|_| RemotingError::TooManyInFlight(self.peer.to_string()))
    }

    fn complete(&self, response: RemotingCommand) {
        let waiter = self.pending.lock().remove(&response.opaque);
        match waiter {
            Some(tx) => {
                let _ = tx.send(response);
            }
            None => tracing::debug!(peer = %self.peer, opaque = response.opaque, "response to no pending request"),
        }
    }
}

async fn read_loop(
    conn: Arc<Connection>,
    reader: tokio::net::tcp::OwnedReadHalf,
    handler: Option<Arc<dyn RequestHandler>>,
    cfg: ConnectionConfig,
) {
    let mut frames = FramedRead::new(reader, FrameCodec::new(cfg.frame_max_length));
    let in_flight = Arc::new(Semaphore::new(cfg.max_inbound_in_flight.max(1)));
    loop {
        let next = tokio::select! {
            _ = conn.closed.cancelled() => break,
            next = tokio::time::timeout(cfg.idle_timeout, frames.next()) => next,
        };
        let cmd = match next {
            Err(_) => {
                tracing::info!(peer = %conn.peer, idle_s = cfg.idle_timeout.as_secs(), "closing idle connection");
                break;
            }
            Ok(None) => break,
            Ok(Some(Err(FrameError::Io(e)))) => {
                tracing::debug!(peer = %conn.peer, error = %e, "connection read failed");
                break;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(peer = %conn.peer, reason = %e, "closing connection after a bad frame");
                break;
            }
            Ok(Some(Ok(mut cmd))) => {
                cmd.received_at = Some(std::time::Instant::now());
                cmd
            }
        };
        tracing::trace!(peer = %conn.peer, code = cmd.code, response = cmd.is_response(), header = ?cmd.serialize_type, "frame");
        if cmd.is_response() {
            conn.complete(cmd);
            continue;
        }
        let Some(handler) = handler.clone() else {
            tracing::debug!(peer = %conn.peer, code = cmd.code, "request on a connection without a handler");
            continue;
        };
        // Waiting for a permit stops reading: back-pressure to a peer that
        // sends faster than we process.
        let permit = tokio::select! {
            _ = conn.closed.cancelled() => break,
            p = in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let conn2 = conn.clone();
        tokio::spawn(async move {
            let oneway = cmd.is_oneway();
            let (opaque, code, serialize_type) = (cmd.opaque, cmd.code, cmd.serialize_type);
            // A bug in one handler answers that one request with an error;
            // the connection and everyone else keep going.
            let outcome = AssertUnwindSafe(handler.handle(conn2.clone(), cmd)).catch_unwind().await;
            let resp = outcome.unwrap_or_else(|_| {
                tracing::error!(peer = %conn2.peer, code, "request handler panicked");
                let mut r = RemotingCommand::request(0);
                r.code = crate::code::response::SYSTEM_ERROR;
                r.flag = crate::command::FLAG_RESPONSE;
                r.serialize_type = serialize_type;
                r.remark = Some(format!("internal error while processing request code {code}"));
                Some(r)
            });
            if let Some(mut resp) = resp {
                if !oneway {
                    resp.opaque = opaque;
                    let _ = conn2.send(resp).await;
                }
            }
            drop(permit);
        });
    }
    conn.closed.cancel();
    conn.pending.lock().clear();
    if let Some(h) = handler {
        h.on_close(&conn);
    }
}

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<RemotingCommand>,
    closed: CancellationToken,
    peer: SocketAddr,
    write_timeout: Duration,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => None,
            cmd = rx.recv() => cmd,
        };
        let Some(first) = first else {
            // Closing: still write what was already queued (answers to
            // requests that finished during shutdown), best effort.
            while let Ok(cmd) = rx.try_recv() {
                cmd.encode(&mut buf);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.write_all(&buf)).await;
            break;
        };
        first.encode(&mut buf);
        // Batch whatever else is queued into one write.
        while buf.len() < 1024 * 1024 {
            match rx.try_recv() {
                Ok(cmd) => cmd.encode(&mut buf),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            r = tokio::time::timeout(write_timeout, writer.write_all(&buf)) => r,
            _ = closed.cancelled() => break,
        };
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection write failed");
                break;
            }
            Err(_) => {
                tracing::warn!(peer = %peer, timeout_s = write_timeout.as_secs(), "peer stopped reading; closing");
                break;
            }
        }
        buf.clear();
    }
    closed.cancel();
    let _ = writer.shutdown().await;
}
