//! One TCP connection, used the same way by servers and clients: either side
//! may send requests (correlated to responses by `opaque`) and either side may
//! receive requests, which go to a [`RequestHandler`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};
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

    /// Whether `request` is priority traffic. On a server with a priority
    /// lane ([`ConnectionConfig::priority_lane`]) the first such request
    /// moves its connection's reading and writing to that lane for good;
    /// from then on the lane also runs the priority requests, and the
    /// others are handed back to the runtime the connection started on.
    fn is_priority(&self, _request: &RemotingCommand) -> bool {
        false
    }

    /// Called once when a connection has moved to the priority lane.
    fn on_priority_lane(&self, _conn: &Arc<Connection>) {}
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
    /// The runtime that serves connections carrying priority traffic
    /// ([`RequestHandler::is_priority`]); `None`: every connection stays
    /// where it started.
    pub priority_lane: Option<tokio::runtime::Handle>,
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
            priority_lane: None,
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
    on_priority_lane: AtomicBool,
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
            on_priority_lane: AtomicBool::new(false),
        });
        let (handover, handover_rx) = oneshot::channel();
        let writer =
            tokio::spawn(write_loop(writer, rx, conn.closed.clone(), peer, cfg.write_timeout, Some(handover_rx)));
        let reading = Reading {
            conn: conn.clone(),
            handler,
            in_flight: Arc::new(Semaphore::new(cfg.max_inbound_in_flight.max(1))),
            home: tokio::runtime::Handle::current(),
            on_lane: false,
            cfg: cfg.clone(),
        };
        tokio::spawn(serve(reading, reader, writer, handover));
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

    /// Whether this connection moved to the priority lane.
    pub fn is_on_priority_lane(&self) -> bool {
        self.on_priority_lane.load(Ordering::Acquire)
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

/// What a connection's reader needs wherever it runs.
struct Reading {
    conn: Arc<Connection>,
    handler: Option<Arc<dyn RequestHandler>>,
    in_flight: Arc<Semaphore>,
    /// The runtime the connection started on: requests that are not
    /// priority traffic run there even after the connection moved.
    home: tokio::runtime::Handle,
    on_lane: bool,
    cfg: ConnectionConfig,
}

/// Why a reader stopped.
enum Stop {
    Closed,
    /// A priority request arrived: the connection moves to the lane, and
    /// this request is the first the lane runs.
    ToLane(RemotingCommand),
}

/// Reads a connection on the runtime it started on; moves it to the
/// priority lane when its first priority request arrives.
async fn serve(
    r: Reading,
    reader: tokio::net::tcp::OwnedReadHalf,
    writer: tokio::task::JoinHandle<Option<Handover>>,
    handover: oneshot::Sender<()>,
) {
    let mut frames = FramedRead::new(reader, FrameCodec::new(r.cfg.frame_max_length));
    if let Stop::ToLane(first) = read_loop(&r, &mut frames).await {
        match move_to_lane(&r, frames, writer, handover).await {
            Ok((lane, stream, outbound, buffered)) => {
                lane.spawn(serve_on_lane(r, stream, outbound, buffered, first));
                return;
            }
            // The peer hung up while its connection was moving.
            Err(_) if r.conn.is_closed() => {}
            Err(e) => {
                tracing::warn!(peer = %r.conn.peer, error = %e, "could not move a connection to the priority lane; closing it")
            }
        }
    }
    closed(&r);
}

/// A writer task's halves, given back so the connection can move.
type Handover = (tokio::net::tcp::OwnedWriteHalf, mpsc::Receiver<RemotingCommand>);

/// Stops the writer between two writes and takes the socket off this
/// runtime, with the bytes already read but not yet decoded.
async fn move_to_lane(
    r: &Reading,
    frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    writer: tokio::task::JoinHandle<Option<Handover>>,
    handover: oneshot::Sender<()>,
) -> std::io::Result<(tokio::runtime::Handle, std::net::TcpStream, mpsc::Receiver<RemotingCommand>, BytesMut)> {
    let lane = r.cfg.priority_lane.clone().ok_or_else(|| std::io::Error::other("no priority lane"))?;
    let _ = handover.send(());
    let (write_half, outbound) = match writer.await {
        Ok(Some(h)) => h,
        _ => return Err(std::io::Error::other("the writer had already stopped")),
    };
    let buffered = frames.read_buffer().clone();
    let stream = frames.into_inner().reunite(write_half).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((lane, stream.into_std()?, outbound, buffered))
}

/// The rest of a connection's life on the priority lane: the first
/// request, the complete frames that were already read, then reading on.
async fn serve_on_lane(
    mut r: Reading,
    stream: std::net::TcpStream,
    outbound: mpsc::Receiver<RemotingCommand>,
    mut buffered: BytesMut,
    first: RemotingCommand,
) {
    r.on_lane = true;
    let stream = match TcpStream::from_std(stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(peer = %r.conn.peer, error = %e, "priority lane could not take a connection; closing it");
            closed(&r);
            return;
        }
    };
    tracing::debug!(peer = %r.conn.peer, "connection moved to the priority lane");
    r.conn.on_priority_lane.store(true, Ordering::Release);
    if let Some(h) = &r.handler {
        h.on_priority_lane(&r.conn);
    }
    let (reader, writer) = stream.into_split();
    tokio::spawn(write_loop(writer, outbound, r.conn.closed.clone(), r.conn.peer, r.cfg.write_timeout, None));
    let mut codec = FrameCodec::new(r.cfg.frame_max_length);
    let mut next = Some(first);
    while let Some(cmd) = next.take() {
        if !dispatch(&r, cmd).await {
            closed(&r);
            return;
        }
        match codec.decode(&mut buffered) {
            Ok(cmd) => next = cmd,
            Err(e) => {
                tracing::warn!(peer = %r.conn.peer, reason = %e, "closing connection after a bad frame");
                closed(&r);
                return;
            }
        }
    }
    let mut frames = FramedRead::new(reader, codec);
    // Only part of a frame is left: the reader needs more bytes before it
    // can decode, which is what a fresh reader does first.
    *frames.read_buffer_mut() = buffered;
    read_loop(&r, &mut frames).await;
    closed(&r);
}

fn closed(r: &Reading) {
    r.conn.closed.cancel();
    r.conn.pending.lock().clear();
    if let Some(h) = &r.handler {
        h.on_close(&r.conn);
    }
}

async fn read_loop(r: &Reading, frames: &mut FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>) -> Stop {
    let conn = &r.conn;
    let may_move = !r.on_lane && r.cfg.priority_lane.is_some();
    loop {
        let next = tokio::select! {
            _ = conn.closed.cancelled() => return Stop::Closed,
            next = tokio::time::timeout(r.cfg.idle_timeout, frames.next()) => next,
        };
        let cmd = match next {
            Err(_) => {
                tracing::info!(peer = %conn.peer, idle_s = r.cfg.idle_timeout.as_secs(), "closing idle connection");
                return Stop::Closed;
            }
            Ok(None) => return Stop::Closed,
            Ok(Some(Err(FrameError::Io(e)))) => {
                tracing::debug!(peer = %conn.peer, error = %e, "connection read failed");
                return Stop::Closed;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(peer = %conn.peer, reason = %e, "closing connection after a bad frame");
                return Stop::Closed;
            }
            Ok(Some(Ok(mut cmd))) => {
                cmd.received_at = Some(std::time::Instant::now());
                cmd
            }
        };
        if may_move && !cmd.is_response() && r.handler.as_ref().is_some_and(|h| h.is_priority(&cmd)) {
            return Stop::ToLane(cmd);
        }
        if !dispatch(r, cmd).await {
            return Stop::Closed;
        }
    }
}

/// Hands one frame to its place: a response to the request waiting for it,
/// a request to the handler (on the lane if it is priority traffic and the
/// connection is there, otherwise on the connection's home runtime).
/// False when the connection closed meanwhile.
async fn dispatch(r: &Reading, mut cmd: RemotingCommand) -> bool {
    let conn = &r.conn;
    cmd.received_at.get_or_insert_with(std::time::Instant::now);
    tracing::trace!(peer = %conn.peer, code = cmd.code, response = cmd.is_response(), header = ?cmd.serialize_type, "frame");
    if cmd.is_response() {
        conn.complete(cmd);
        return true;
    }
    let Some(handler) = r.handler.clone() else {
        tracing::debug!(peer = %conn.peer, code = cmd.code, "request on a connection without a handler");
        return true;
    };
    let run_here = !r.on_lane || handler.is_priority(&cmd);
    // Waiting for a permit stops reading: back-pressure to a peer that
    // sends faster than we process.
    let permit = tokio::select! {
        _ = conn.closed.cancelled() => return false,
        p = r.in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
    };
    let conn2 = conn.clone();
    let task = async move {
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
    };
    if run_here {
        tokio::spawn(task);
    } else {
        r.home.spawn(task);
    }
    true
}

/// Writes queued frames, batching what is queued into one write. With a
/// `handover` receiver, a signal on it between two writes ends the loop
/// and gives the socket's write half and the queue back (the connection is
/// moving to another runtime); `None` when the connection closed.
async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<RemotingCommand>,
    closed: CancellationToken,
    peer: SocketAddr,
    write_timeout: Duration,
    mut handover: Option<oneshot::Receiver<()>>,
) -> Option<Handover> {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            _ = closed.cancelled() => None,
            asked = async { match handover.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                match asked {
                    Ok(()) => return Some((writer, rx)),
                    // The reader ended without moving: nothing will ask.
                    Err(_) => {
                        handover = None;
                        continue;
                    }
                }
            }
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
    None
}
