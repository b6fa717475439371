//! One TCP connection (plain or TLS), used the same way by servers and
//! clients: either side may send requests (correlated to responses by
//! `opaque`) and either side may receive requests, which go to a
//! [`RequestHandler`].

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use std::panic::AssertUnwindSafe;

use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::codec::{FrameCodec, DEFAULT_FRAME_MAX_LENGTH};
use crate::command::{RemotingCommand, SerializeType, FLAG_ONEWAY};
use crate::error::{BadHeader, FrameError, RemotingError};
use crate::transport::{Detached, ReadSide, Transport, WriteSide};

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
    /// Encoded bytes queued for writing (bodies included, and bytes set
    /// aside by [`Connection::reserve_outbound`]) at which the connection
    /// stops reading requests (`writeBufferHighWaterMark`, 4 MiB): a peer
    /// that does not read its answers pins at most about this much.
    pub write_buffer_high_water_mark: usize,
    /// Reading resumes once the queued bytes fall below this
    /// (`writeBufferLowWaterMark`, 2 MiB).
    pub write_buffer_low_water_mark: usize,
    /// Requests from the peer processed at once; reading pauses beyond it.
    pub max_inbound_in_flight: usize,
    /// Our requests awaiting the peer's response (`clientAsyncSemaphoreValue`).
    pub max_outbound_pending: usize,
    /// A frame not written this long after it was queued closes the
    /// connection (`serverChannelWriteTimeoutMillis`, 30 s). The clock
    /// starts at queueing, not at the write call, so a peer that stopped
    /// reading while answers wait behind a blocked write is closed too.
    pub write_timeout: Duration,
    /// The runtime that serves connections carrying priority traffic
    /// ([`RequestHandler::is_priority`]); `None`: every connection stays
    /// where it started.
    pub priority_lane: Option<tokio::runtime::Handle>,
    /// Credentials that sign every request this side sends (a client's);
    /// `None` on servers, whose requests to clients are never signed.
    pub credentials: Option<spate_auth::Credentials>,
    /// The header encoding of requests this side sends
    /// (`rocketmq.serialize.type`): JSON by default, as upstream's clients;
    /// [`SerializeType::RocketMq`] (binary) sends every request that fits
    /// it in binary, which peers decode with less work. A request built
    /// with the binary encoding keeps it either way; answers always go in
    /// their request's encoding.
    pub serialize_type: SerializeType,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            frame_max_length: DEFAULT_FRAME_MAX_LENGTH,
            idle_timeout: Duration::from_secs(120),
            outbound_queue_frames: 1024,
            write_buffer_high_water_mark: DEFAULT_WRITE_BUFFER_HIGH_WATER_MARK,
            write_buffer_low_water_mark: DEFAULT_WRITE_BUFFER_LOW_WATER_MARK,
            max_inbound_in_flight: 1024,
            max_outbound_pending: 65535,
            write_timeout: Duration::from_secs(30),
            priority_lane: None,
            credentials: None,
            serialize_type: SerializeType::Json,
        }
    }
}

/// Default `writeBufferHighWaterMark`: room for 15 pull answers of
/// `maxTransferBytesOnMessageInMemory` (256 KiB, plus a header) being read
/// at once on one connection; pulls beyond wait microseconds for room.
pub const DEFAULT_WRITE_BUFFER_HIGH_WATER_MARK: usize = 4 << 20;
/// Default `writeBufferLowWaterMark`.
pub const DEFAULT_WRITE_BUFFER_LOW_WATER_MARK: usize = 2 << 20;
/// Most bytes the writer takes off the queue for one (vectored) write.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);
static NEXT_OPAQUE: AtomicI32 = AtomicI32::new(1);

/// A live connection. Cheap to share; closes when either side hangs up, on a
/// malformed frame, after the idle timeout, or on [`Connection::close`].
pub struct Connection {
    id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    outbound: mpsc::Sender<Outbound>,
    /// Bytes queued for writing and not yet written, plus reservations.
    outbound_bytes: AtomicUsize,
    /// Woken whenever `outbound_bytes` falls.
    outbound_drained: Notify,
    /// Reservations handed to an answer not yet queued, by request opaque
    /// ([`Connection::hold_until_answered`]): released once that answer's
    /// own bytes are counted, so the budget never has a gap between them.
    held: parking_lot::Mutex<HashMap<i32, usize>>,
    write_buffer_high_water_mark: usize,
    write_buffer_low_water_mark: usize,
    pending: Mutex<HashMap<i32, oneshot::Sender<RemotingCommand>>>,
    max_outbound_pending: usize,
    closed: CancellationToken,
    on_priority_lane: AtomicBool,
    signer: Option<crate::signing::Signer>,
    /// [`ConnectionConfig::serialize_type`].
    serialize_type: SerializeType,
    tls: bool,
    /// The socket's write half while the writer task waits, so a frame
    /// with nothing queued before it is written by whoever produced it.
    direct: parking_lot::Mutex<DirectWrite>,
    /// Wakes the writer when a direct write left part of a frame behind.
    direct_rest: Notify,
}

/// What [`Connection::write_direct`] and the writer task share.
#[derive(Default)]
struct DirectWrite {
    /// A plain TCP write half, parked here by the writer between batches.
    /// TLS writes stay on the writer (its session is not shared).
    side: Option<WriteSide>,
    /// The unwritten end of a frame a direct write began; the writer
    /// writes it before anything else, so frames never interleave.
    rest: Option<Outbound>,
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
        Self::start_on(Transport::Plain(stream), handler, cfg)
    }

    /// [`Connection::start`] for a plain or a TLS stream.
    pub(crate) fn start_on(
        stream: Transport,
        handler: Option<Arc<dyn RequestHandler>>,
        cfg: &ConnectionConfig,
    ) -> std::io::Result<Arc<Connection>> {
        let peer = stream.peer_addr()?;
        let local = stream.local_addr()?;
        stream.set_nodelay();
        let tls = stream.is_tls();
        let (reader, writer) = stream.split();
        let (tx, rx) = mpsc::channel(cfg.outbound_queue_frames.max(1));
        let conn = Arc::new(Connection {
            id: NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed),
            peer,
            local,
            outbound: tx,
            outbound_bytes: AtomicUsize::new(0),
            outbound_drained: Notify::new(),
            held: parking_lot::Mutex::new(HashMap::new()),
            write_buffer_high_water_mark: cfg.write_buffer_high_water_mark.max(1),
            // Hysteresis needs low <= high; equal is allowed (no hysteresis).
            write_buffer_low_water_mark: cfg
                .write_buffer_low_water_mark
                .clamp(1, cfg.write_buffer_high_water_mark.max(1)),
            pending: Mutex::new(HashMap::new()),
            max_outbound_pending: cfg.max_outbound_pending,
            closed: CancellationToken::new(),
            on_priority_lane: AtomicBool::new(false),
            signer: cfg.credentials.as_ref().map(crate::signing::Signer::new),
            serialize_type: cfg.serialize_type,
            tls,
            direct: parking_lot::Mutex::new(DirectWrite::default()),
            direct_rest: Notify::new(),
        });
        let (handover, handover_rx) = oneshot::channel();
        let writer = tokio::spawn(write_loop(writer, rx, conn.clone(), cfg.write_timeout, Some(handover_rx)));
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

    /// Whether this connection speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
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
        self.prepare_request(&mut request);
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
        self.prepare_request(&mut request);
        self.send(request).await
    }

    /// Prepares an outgoing request: this side's header encoding, and its
    /// signature with this side's credentials, if any. The opaque and flag
    /// live outside the signed header fields.
    fn prepare_request(&self, request: &mut RemotingCommand) {
        if self.serialize_type == SerializeType::RocketMq {
            request.serialize_type = SerializeType::RocketMq;
        }
        if let Some(signer) = &self.signer {
            signer.sign(request);
        }
    }

    /// Queues a command for writing as it is (used for responses).
    pub async fn send(&self, cmd: RemotingCommand) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        let bytes = match self.write_direct(self.encode_counted(&cmd)) {
            Ok(()) => return Ok(()),
            Err(bytes) => bytes,
        };
        let len = bytes.len();
        let frame = Outbound { bytes, queued_at: Instant::now() };
        let sent = tokio::select! {
            r = self.outbound.send(frame) => r.is_ok(),
            _ = self.closed.cancelled() => false,
        };
        if !sent {
            self.release_outbound(len);
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        Ok(())
    }

    /// Writes a counted frame straight to the socket, on this thread, when
    /// nothing is queued before it and the writer task is idle: the common
    /// case of one answer (or one request) at a time costs no task wake-up
    /// and no thread hop. A frame the socket takes only part of is finished
    /// by the writer; `Err` gives the frame back to be queued (TLS, a busy
    /// writer, frames queued already, a full socket buffer). The clock is
    /// read only for a frame that will wait (the write timeout counts from
    /// then), not for the common one written whole.
    fn write_direct(&self, frame: Bytes) -> Result<(), Bytes> {
        let len = frame.len();
        // Only this frame's own bytes are counted: nothing waits before it.
        if self.outbound_bytes.load(Ordering::Acquire) != len {
            return Err(frame);
        }
        let Some(mut direct) = self.direct.try_lock() else { return Err(frame) };
        if direct.rest.is_some() {
            return Err(frame);
        }
        let Some(WriteSide::Plain(side)) = direct.side.as_ref() else { return Err(frame) };
        match side.try_write(&frame) {
            Ok(n) if n == len => {
                drop(direct);
                self.release_outbound(len);
                Ok(())
            }
            Ok(n) => {
                direct.rest = Some(Outbound { bytes: frame.slice(n..), queued_at: Instant::now() });
                drop(direct);
                self.release_outbound(n);
                self.direct_rest.notify_one();
                Ok(())
            }
            // Full socket buffer, or an error the writer will meet and close on.
            Err(_) => Err(frame),
        }
    }

    /// Encodes `cmd` and counts its bytes as queued (the caller writes or
    /// queues it, or releases the count when it cannot).
    fn encode_counted(&self, cmd: &RemotingCommand) -> Bytes {
        let mut buf = BytesMut::new();
        cmd.encode(&mut buf);
        let bytes = buf.freeze();
        self.outbound_bytes.fetch_add(bytes.len(), Ordering::AcqRel);
        bytes
    }

    fn release_outbound(&self, bytes: usize) {
        let before = self.outbound_bytes.fetch_sub(bytes, Ordering::AcqRel);
        debug_assert!(before >= bytes, "released {bytes} outbound bytes of {before}");
        self.outbound_drained.notify_waiters();
    }

    /// Bytes queued for writing and not yet written, plus reservations.
    pub fn outbound_bytes(&self) -> usize {
        self.outbound_bytes.load(Ordering::Acquire)
    }

    /// Sets `bytes` aside in this connection's outbound budget
    /// (`writeBufferHighWaterMark`) for an answer about to be made, waiting
    /// while the budget is spent; the reservation ends when dropped. A
    /// handler whose answers are large (a pull) takes one before it reads
    /// them, so a peer that pipelines requests and does not read cannot
    /// make us build more answers than the budget holds. With nothing
    /// queued one reservation always fits, however large.
    pub async fn reserve_outbound(self: &Arc<Self>, bytes: usize) -> Result<OutboundReservation, RemotingError> {
        loop {
            let drained = self.outbound_drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so a drain in between wakes us.
            drained.as_mut().enable();
            let queued = self.outbound_bytes();
            if queued == 0 || queued.saturating_add(bytes) <= self.write_buffer_high_water_mark {
                if self
                    .outbound_bytes
                    .compare_exchange(queued, queued + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Ok(OutboundReservation { conn: self.clone(), bytes });
                }
                continue;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return Err(RemotingError::Closed(self.peer.to_string())),
            }
        }
    }

    /// Keeps `reservation` until the answer to the request with `opaque` is
    /// queued (its bytes counted): a handler whose answer is built from what
    /// it reserved for hands the reservation over instead of dropping it.
    pub fn hold_until_answered(&self, opaque: i32, mut reservation: OutboundReservation) {
        let bytes = std::mem::take(&mut reservation.bytes);
        *self.held.lock().entry(opaque).or_insert(0) += bytes;
    }

    /// Gives back what was held for the answer to `opaque`.
    fn release_held(&self, opaque: i32) {
        let bytes = {
            let mut held = self.held.lock();
            if held.is_empty() {
                return;
            }
            held.remove(&opaque)
        };
        if let Some(bytes) = bytes {
            self.release_outbound(bytes);
        }
    }

    /// While the queued bytes are at the high water mark, waits for them
    /// to fall below the low one.
    async fn wait_for_drain(&self) -> Paused {
        if self.outbound_bytes() < self.write_buffer_high_water_mark {
            return Paused::No;
        }
        tracing::debug!(peer = %self.peer, queued = self.outbound_bytes(), "peer is behind on its answers; reading paused");
        loop {
            let drained = self.outbound_drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.outbound_bytes() < self.write_buffer_low_water_mark {
                return Paused::Yes;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return Paused::Closed,
            }
        }
    }

    /// Queues a one-way request without waiting: fails at once when the
    /// outbound queue is full or past its high water mark (for best-effort
    /// notifications).
    pub fn try_oneway(&self, mut request: RemotingCommand) -> Result<(), RemotingError> {
        if self.is_closed() {
            return Err(RemotingError::Closed(self.peer.to_string()));
        }
        if self.outbound_bytes() >= self.write_buffer_high_water_mark {
            return Err(RemotingError::TooManyInFlight(self.peer.to_string()));
        }
        request.opaque = NEXT_OPAQUE.fetch_add(1, Ordering::Relaxed);
        request.flag |= FLAG_ONEWAY;
        self.prepare_request(&mut request);
        let bytes = self.encode_counted(&request);
        let len = bytes.len();
        self.outbound.try_send(Outbound { bytes, queued_at: Instant::now() }).map_err(|_| {
            self.release_outbound(len);
            RemotingError::TooManyInFlight(self.peer.to_string())
        })
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

/// Outbound bytes set aside by [`Connection::reserve_outbound`]; given
/// back when dropped.
#[must_use = "the reservation ends when dropped"]
pub struct OutboundReservation {
    conn: Arc<Connection>,
    bytes: usize,
}

impl std::fmt::Debug for OutboundReservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundReservation").field("bytes", &self.bytes).finish()
    }
}

impl Drop for OutboundReservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.conn.release_outbound(self.bytes);
        }
    }
}

/// One encoded frame waiting to be written.
struct Outbound {
    bytes: Bytes,
    /// The write timeout counts from here.
    queued_at: Instant,
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

/// How a step that may pause reading went (waiting for the peer to take
/// its answers, or for a place among the requests in flight): the read
/// loop's idle time starts again after a pause.
enum Paused {
    No,
    Yes,
    /// The connection closed meanwhile.
    Closed,
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
    reader: ReadSide,
    writer: tokio::task::JoinHandle<Option<Handover>>,
    handover: oneshot::Sender<()>,
) {
    let mut frames = FramedRead::new(reader, FrameCodec::new(r.cfg.frame_max_length));
    if let Stop::ToLane(first) = read_loop(&r, &mut frames).await {
        match move_to_lane(&r, frames, writer, handover).await {
            Ok((lane, detached, outbound, buffered)) => {
                lane.spawn(serve_on_lane(r, detached, outbound, buffered, first));
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
type Handover = (WriteSide, mpsc::Receiver<Outbound>);

/// Stops the writer between two writes and takes the socket off this
/// runtime, with the bytes already read but not yet decoded. A TLS
/// connection moves too: its session goes along with the socket, bytes
/// it decrypted but nobody read yet included.
async fn move_to_lane(
    r: &Reading,
    frames: FramedRead<ReadSide, FrameCodec>,
    writer: tokio::task::JoinHandle<Option<Handover>>,
    handover: oneshot::Sender<()>,
) -> std::io::Result<(tokio::runtime::Handle, Detached, mpsc::Receiver<Outbound>, BytesMut)> {
    let lane = r.cfg.priority_lane.clone().ok_or_else(|| std::io::Error::other("no priority lane"))?;
    let _ = handover.send(());
    let (write_half, outbound) = match writer.await {
        Ok(Some(h)) => h,
        _ => return Err(std::io::Error::other("the writer had already stopped")),
    };
    let buffered = frames.read_buffer().clone();
    let stream = Transport::reunite(frames.into_inner(), write_half)?;
    Ok((lane, stream.detach()?, outbound, buffered))
}

/// The rest of a connection's life on the priority lane: the first
/// request, the complete frames that were already read, then reading on.
async fn serve_on_lane(
    mut r: Reading,
    detached: Detached,
    outbound: mpsc::Receiver<Outbound>,
    mut buffered: BytesMut,
    first: RemotingCommand,
) {
    r.on_lane = true;
    let stream = match detached.attach() {
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
    let (reader, writer) = stream.split();
    tokio::spawn(write_loop(writer, outbound, r.conn.clone(), r.cfg.write_timeout, None));
    let mut codec = FrameCodec::new(r.cfg.frame_max_length);
    let mut next = Some(Ok(first));
    while let Some(decoded) = next.take() {
        let going = match decoded {
            Ok(cmd) => !matches!(dispatch(&r, cmd).await, Paused::Closed),
            Err(bad) => answer_bad_header(&r.conn, bad).await,
        };
        if !going {
            closed(&r);
            return;
        }
        match codec.decode(&mut buffered) {
            Ok(decoded) => next = decoded,
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

async fn read_loop(r: &Reading, frames: &mut FramedRead<ReadSide, FrameCodec>) -> Stop {
    let conn = &r.conn;
    let may_move = !r.on_lane && r.cfg.priority_lane.is_some();
    // One wait for the close and one idle timer serve every frame: a timer
    // armed and disarmed per frame, and a waiter added to the close's list
    // and taken off it, cost every request a timer-wheel update, a lock
    // and a clock read. The timer is moved on only when it fires early.
    // Idle is time with nothing read while reading could go on: a pause
    // for back-pressure (below, and in `dispatch`) starts it again.
    let closed = conn.closed.cancelled();
    tokio::pin!(closed);
    let idle = tokio::time::sleep(r.cfg.idle_timeout);
    tokio::pin!(idle);
    let mut active = tokio::time::Instant::now();
    loop {
        // Back-pressure on a peer behind on its answers: its requests stay
        // in the kernel's buffers, not ours.
        match conn.wait_for_drain().await {
            Paused::No => {}
            Paused::Yes => active = tokio::time::Instant::now(),
            Paused::Closed => return Stop::Closed,
        }
        let next = tokio::select! {
            biased;
            _ = &mut closed => return Stop::Closed,
            next = frames.next() => next,
            _ = &mut idle => {
                match idle_until(active, r.cfg.idle_timeout, tokio::time::Instant::now()) {
                    Some(later) => {
                        idle.as_mut().reset(later);
                        continue;
                    }
                    None => {
                        tracing::info!(peer = %conn.peer, idle_s = r.cfg.idle_timeout.as_secs(), "closing idle connection");
                        return Stop::Closed;
                    }
                }
            }
        };
        let now = tokio::time::Instant::now();
        active = now;
        let cmd = match next {
            None => return Stop::Closed,
            Some(Err(FrameError::Io(e))) => {
                tracing::debug!(peer = %conn.peer, error = %e, "connection read failed");
                return Stop::Closed;
            }
            Some(Err(e)) => {
                tracing::warn!(peer = %conn.peer, reason = %e, "closing connection after a bad frame");
                return Stop::Closed;
            }
            Some(Ok(Err(bad))) => {
                if !answer_bad_header(conn, bad).await {
                    return Stop::Closed;
                }
                active = tokio::time::Instant::now();
                continue;
            }
            Some(Ok(Ok(mut cmd))) => {
                cmd.received_at = Some(now.into_std());
                cmd
            }
        };
        if may_move && !cmd.is_response() && r.handler.as_ref().is_some_and(|h| h.is_priority(&cmd)) {
            return Stop::ToLane(cmd);
        }
        match dispatch(r, cmd).await {
            Paused::No => {}
            Paused::Yes => active = tokio::time::Instant::now(),
            Paused::Closed => return Stop::Closed,
        }
    }
}

/// When a connection last active at `active` is idle, if not yet at `now`;
/// `None`: it is idle now. A timeout too large to add to the clock never
/// ends (the time is set about 30 years out, as tokio's own far timers).
fn idle_until(
    active: tokio::time::Instant,
    timeout: Duration,
    now: tokio::time::Instant,
) -> Option<tokio::time::Instant> {
    match active.checked_add(timeout) {
        Some(due) if due <= now => None,
        Some(due) => Some(due),
        None => Some(now + Duration::from_secs(86_400 * 365 * 30)),
    }
}

/// Answers a request whose header fields were out of range, when it can be
/// answered; false (close the connection) when its `opaque` or `flag` could
/// not be read.
async fn answer_bad_header(conn: &Arc<Connection>, bad: BadHeader) -> bool {
    if bad.opaque.is_none() || bad.flag.is_none() {
        tracing::warn!(peer = %conn.peer, reason = %bad, "closing connection after an unanswerable bad header");
        return false;
    }
    // Per request, so not at warn: a peer must not be able to flood the log.
    tracing::debug!(peer = %conn.peer, reason = %bad, "refusing a request with a bad header");
    match bad.answer() {
        Some(answer) => conn.send(answer).await.is_ok(),
        // A one-way request or a response: nobody waits for an answer.
        None => true,
    }
}

/// Hands one frame to its place: a response to the request waiting for it,
/// a request to the handler (on the lane if it is priority traffic and the
/// connection is there, otherwise on the connection's home runtime).
async fn dispatch(r: &Reading, mut cmd: RemotingCommand) -> Paused {
    let conn = &r.conn;
    cmd.received_at.get_or_insert_with(std::time::Instant::now);
    tracing::trace!(peer = %conn.peer, code = cmd.code, response = cmd.is_response(), header = ?cmd.serialize_type, "frame");
    if cmd.is_response() {
        conn.complete(cmd);
        return Paused::No;
    }
    let Some(handler) = r.handler.clone() else {
        tracing::debug!(peer = %conn.peer, code = cmd.code, "request on a connection without a handler");
        return Paused::No;
    };
    let run_here = !r.on_lane || handler.is_priority(&cmd);
    // Waiting for a permit stops reading: back-pressure to a peer that
    // sends faster than we process. A free permit is taken without a wait
    // (nor a waiter on the close's list).
    let (permit, dispatched) = match r.in_flight.clone().try_acquire_owned() {
        Ok(p) => (p, Paused::No),
        Err(tokio::sync::TryAcquireError::Closed) => return Paused::Closed,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            let p = tokio::select! {
                _ = conn.closed.cancelled() => return Paused::Closed,
                p = r.in_flight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Paused::Closed },
            };
            (p, Paused::Yes)
        }
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
        conn2.release_held(opaque);
        drop(permit);
    };
    if !run_here {
        r.home.spawn(task);
        return dispatched;
    }
    // Run to completion: a request that need not wait (a send with
    // asynchronous flush, a pull that finds data, a route or a heartbeat)
    // is handled and answered here, on the thread that read it, with no
    // task spawned and no other thread woken. One that parks (sync flush,
    // replication, a held pull, a full outbound queue) goes on as a task of
    // its own, which polls it again at once with a real waker, so nothing
    // it registered with the no-op waker here is lost.
    // The store's wake-ups (the dispatcher) wait until the answer is
    // written: a thread woken earlier could take this CPU first.
    let mut task = Box::pin(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    if spate_common::wake::hold_wakeups(|| task.as_mut().poll(&mut cx).is_pending()) {
        tokio::spawn(task);
    }
    dispatched
}

/// Writes queued frames, several in one vectored write. With a `handover`
/// receiver, a signal on it between two writes ends the loop and gives the
/// socket's write half and the queue back (the connection is moving to
/// another runtime); `None` when the connection closed.
async fn write_loop(
    writer: WriteSide,
    mut rx: mpsc::Receiver<Outbound>,
    conn: Arc<Connection>,
    write_timeout: Duration,
    mut handover: Option<oneshot::Receiver<()>>,
) -> Option<Handover> {
    let closed = conn.closed.clone();
    let peer = conn.peer;
    // A plain write half waits in `conn.direct` while nothing is queued, for
    // senders to write to directly; it comes back here for every batch.
    let parks = matches!(writer, WriteSide::Plain(_));
    let mut writer = Some(writer);
    loop {
        if parks {
            conn.direct.lock().side = writer.take();
        }
        let first = tokio::select! {
            _ = closed.cancelled() => None,
            asked = async { match handover.as_mut() { Some(h) => h.await, None => std::future::pending().await } } => {
                match asked {
                    Ok(()) => {
                        let (Some(mut side), rest) = take_back(&conn, &mut writer) else { return None };
                        if let Some(rest) = rest {
                            // Finish the frame begun directly before the socket moves.
                            let mut batch = Batch::default();
                            batch.push(rest.bytes);
                            let len = batch.remaining();
                            if write_batch(&mut side, &mut batch).await.is_err() {
                                closed.cancel();
                                return None;
                            }
                            conn.release_outbound(len);
                        }
                        return Some((side, rx));
                    }
                    // The reader ended without moving: nothing will ask.
                    Err(_) => {
                        handover = None;
                        continue;
                    }
                }
            }
            _ = conn.direct_rest.notified() => Some(None),
            frame = rx.recv() => frame.map(Some),
        };
        let (Some(mut side), rest) = take_back(&conn, &mut writer) else { break };
        let Some(first) = first else {
            // Closing: still write what was already queued (answers to
            // requests that finished during shutdown), best effort.
            let mut batch = Batch::default();
            if let Some(rest) = rest {
                batch.push(rest.bytes);
            }
            while let Ok(frame) = rx.try_recv() {
                batch.push(frame.bytes);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), write_batch(&mut side, &mut batch)).await;
            writer = Some(side);
            break;
        };
        // The oldest frame's queueing time is the batch's deadline.
        let mut batch = Batch::default();
        let deadline = match (&rest, &first) {
            (Some(r), _) => r.queued_at,
            (None, Some(f)) => f.queued_at,
            (None, None) => Instant::now(),
        } + write_timeout;
        if let Some(rest) = rest {
            batch.push(rest.bytes);
        }
        if let Some(first) = first {
            batch.push(first.bytes);
        }
        while batch.remaining() < WRITE_BATCH_BYTES_MAX && batch.frames.len() < BATCH_FRAMES_MAX {
            match rx.try_recv() {
                Ok(frame) => batch.push(frame.bytes),
                Err(_) => break,
            }
        }
        let batch_bytes = batch.remaining();
        let written = tokio::select! {
            r = tokio::time::timeout_at(deadline.into(), write_batch(&mut side, &mut batch)) => r,
            _ = closed.cancelled() => {
                writer = Some(side);
                break;
            }
        };
        writer = Some(side);
        match written {
            Ok(Ok(())) => conn.release_outbound(batch_bytes),
            Ok(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection write failed");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    peer = %peer,
                    timeout_ms = write_timeout.as_millis() as u64,
                    queued_bytes = conn.outbound_bytes(),
                    "peer stopped reading its answers (serverChannelWriteTimeoutMillis); closing"
                );
                break;
            }
        }
    }
    closed.cancel();
    if let (Some(mut side), _) = take_back(&conn, &mut writer) {
        let _ = side.shutdown().await;
    }
    None
}

/// The write half (from the writer, or back from where it waited for
/// direct writers) and any frame end a direct write left behind.
/// `None` only if the half was lost, which the writer treats as closed: it
/// parks its half before it waits and takes it back after, so one of the
/// two places holds it.
fn take_back(conn: &Connection, writer: &mut Option<WriteSide>) -> (Option<WriteSide>, Option<Outbound>) {
    let mut direct = conn.direct.lock();
    (writer.take().or_else(|| direct.side.take()), direct.rest.take())
}

/// Writes `batch` whole. The flush is free on plain TCP; over TLS it
/// pushes out the records the session still holds.
async fn write_batch(writer: &mut WriteSide, batch: &mut Batch) -> std::io::Result<()> {
    writer.write_all_buf(batch).await?;
    writer.flush().await
}

/// Frames gathered into one vectored write: no copying into a buffer.
const BATCH_FRAMES_MAX: usize = 64;

/// Encoded frames written back to back, as one [`Buf`].
#[derive(Default)]
struct Batch {
    frames: VecDeque<Bytes>,
    remaining: usize,
}

impl Batch {
    fn push(&mut self, frame: Bytes) {
        // An encoded frame is never empty; an empty one would make
        // `chunk` look finished while bytes remain.
        if !frame.is_empty() {
            self.remaining += frame.len();
            self.frames.push_back(frame);
        }
    }
}

impl Buf for Batch {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.frames.front().map_or(&[], |f| &f[..])
    }

    fn advance(&mut self, mut cnt: usize) {
        debug_assert!(cnt <= self.remaining, "advanced {cnt} past {} remaining", self.remaining);
        self.remaining -= cnt.min(self.remaining);
        while cnt > 0 {
            let Some(front) = self.frames.front_mut() else { break };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.frames.pop_front();
        }
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, frame) in dst.iter_mut().zip(self.frames.iter()) {
            *slot = IoSlice::new(frame);
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idle_timer_moves_on_closes_when_due_and_never_overflows() {
        let t0 = tokio::time::Instant::now();
        let idle = Duration::from_secs(10);
        assert_eq!(idle_until(t0, idle, t0 + Duration::from_secs(3)), Some(t0 + idle));
        assert_eq!(idle_until(t0, idle, t0 + idle), None);
        assert_eq!(idle_until(t0, idle, t0 + Duration::from_secs(11)), None);
        let far = idle_until(t0, Duration::MAX, t0).expect("a timeout past the clock's end never ends");
        assert!(far > t0 + Duration::from_secs(86_400 * 365 * 10));
    }

    #[test]
    fn a_batch_advances_across_frames() {
        let mut b = Batch::default();
        b.push(Bytes::from_static(b"abc"));
        b.push(Bytes::new());
        b.push(Bytes::from_static(b"defg"));
        assert_eq!(b.remaining(), 7);
        let mut slices = [IoSlice::new(&[]); 4];
        assert_eq!(b.chunks_vectored(&mut slices), 2);
        b.advance(2);
        assert_eq!(b.chunk(), b"c");
        b.advance(2);
        assert_eq!(b.chunk(), b"efg");
        assert_eq!(b.remaining(), 3);
        b.advance(3);
        assert_eq!(b.remaining(), 0);
        assert!(b.chunk().is_empty());
    }
}
