//! The gRPC front end: RocketMQ 5's `MessagingService`, served by the
//! broker itself (no proxy), on `grpcServerPort` and, by sniffing HTTP/2's
//! preface, on the remoting port.
//!
//! - [`service`]: the RPCs; each turns its request into the broker
//!   operation the remoting front end also calls (send, pop, ack, change,
//!   end transaction) and the outcome into gRPC's shape;
//! - [`access`]: authentication (`MQv2-HMAC-SHA1`) and authorization of
//!   each call by the broker's users and policies;
//! - [`renew`]: push consumers' messages kept invisible while their
//!   client's Telemetry stream lives;
//! - [`sessions`]: what each gRPC client told us on its Telemetry stream
//!   (settings, the stream to push commands on), for Heartbeat, admin and
//!   transaction check-back;
//! - this file: the server, fed by both listeners: each admitted
//!   connection is served by hyper's HTTP/2 server straight into the
//!   generated `MessagingService` (one service: no router between them),
//!   each call run to completion on the connection's task when it can.

pub mod access;
pub mod renew;
pub mod route;
pub mod service;
pub mod sessions;

use std::net::SocketAddr;
use std::sync::Arc;

use spate_grpc::pb::messaging_service_server::MessagingServiceServer;
use spate_remoting::server::{AddressCounts, AddressSlot, Http2Stream};
use spate_remoting::tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::BrokerState;

/// Most accepted connections waiting for the gRPC server to take them.
const HANDOFF_QUEUE: usize = 64;

/// Inbound headroom over `maxMessageSize` for one gRPC message (a send
/// carries its properties and framing besides the body).
const DECODING_HEADROOM: usize = 1 << 20;
/// Calls one HTTP/2 connection may have open at once (hyper's own default;
/// tonic lifts it): a client pipelining receives cannot hold every
/// long-polling slot from one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 200;
/// A connection that answers no HTTP/2 ping for this long after one is
/// sent every [`KEEPALIVE_INTERVAL`] is closed (dead peers do not keep
/// their share of `serverMaxConnections`).
pub const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// A running gRPC front end.
pub struct GrpcFrontEnd {
    handoff: mpsc::Sender<Counted>,
    /// Connections open at once, remoting port and gRPC port together
    /// (`serverMaxConnections`).
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    local_addr: Option<SocketAddr>,
    /// TLS on the dedicated port, as on the remoting port (`tlsMode`).
    tls: ServerTls,
    /// Connections open per client address on the dedicated port
    /// (`serverMaxConnectionsPerAddress`; the remoting port counts its own).
    per_address: Arc<AddressCounts>,
    max_per_address: usize,
}

impl GrpcFrontEnd {
    /// Starts the server; `listener` is the dedicated `grpcServerPort`, if any.
    pub fn start(state: Arc<BrokerState>, listener: Option<TcpListener>, tls: ServerTls) -> Arc<GrpcFrontEnd> {
        let (handoff, rx) = mpsc::channel::<Counted>(HANDOFF_QUEUE);
        let stop = CancellationToken::new();
        let (max_connections, max_per_address) = {
            let c = state.config.read();
            (c.server_max_connections.max(1), c.server_max_connections_per_address.max(1))
        };
        let permits = Arc::new(Semaphore::new(max_connections));
        let local_addr = listener.as_ref().and_then(|l| l.local_addr().ok());
        let fe = Arc::new(GrpcFrontEnd {
            handoff,
            permits,
            stop: stop.clone(),
            local_addr,
            tls,
            per_address: Default::default(),
            max_per_address,
        });
        let max_decode = state.store.config().max_message_size + DECODING_HEADROOM;
        let svc = MessagingServiceServer::new(service::Messaging::new(state.clone()))
            .max_decoding_message_size(max_decode)
            .max_encoding_message_size(usize::MAX);
        tokio::spawn(serve_handed_over(rx, svc, stop.clone()));
        if let Some(listener) = listener {
            tokio::spawn(accept_loop(listener, fe.clone()));
        }
        tokio::spawn(renew::run(state.clone(), stop.clone()));
        tokio::spawn(sessions::run_expiry(state, stop));
        fe
    }

    /// The dedicated port's address, if one is bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// A place among `ip`'s connections to the dedicated port, if it has
    /// fewer than `serverMaxConnectionsPerAddress`.
    fn address_slot(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let slot = self.per_address.slot(ip, self.max_per_address);
        if slot.is_none() {
            tracing::debug!(%ip, "gRPC connection refused: serverMaxConnectionsPerAddress reached");
        }
        slot
    }

    /// A share of `serverMaxConnections`, if any is left.
    fn permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let p = self.permits.clone().try_acquire_owned().ok();
        if p.is_none() {
            tracing::debug!("gRPC connection refused: serverMaxConnections reached");
        }
        p
    }

    /// Hands an admitted connection to the server; closed at once when
    /// its queue is full.
    fn take(&self, stream: Http2Stream, permit: tokio::sync::OwnedSemaphorePermit) {
        if self.stop.is_cancelled() {
            return;
        }
        let peer = stream.peer_addr();
        if let Err(e) = self.handoff.try_send(Counted { stream, _permit: permit }) {
            tracing::debug!(%peer, error = %e, "gRPC connection refused: the server is busy");
        }
    }

    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

impl spate_remoting::server::Http2Sink for GrpcFrontEnd {
    fn accept(&self, stream: Http2Stream) {
        if let Some(permit) = self.permit() {
            self.take(stream, permit);
        }
    }
}

async fn accept_loop(listener: TcpListener, fe: Arc<GrpcFrontEnd>) {
    loop {
        let accepted = tokio::select! {
            _ = fe.stop.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                // Admitted (TLS handshake or not) on a task of its own, so a
                // silent peer never holds up the accept loop; the permit
                // bounds connections being admitted too.
                let Some(slot) = fe.address_slot(peer.ip()) else { continue };
                let Some(permit) = fe.permit() else { continue };
                let fe = fe.clone();
                tokio::spawn(async move {
                    match spate_remoting::server::admit_http2(stream, peer, &fe.tls).await {
                        Ok(s) => fe.take(s.counted(slot), permit),
                        Err(why) => tracing::debug!(%peer, why, "gRPC connection closed at admission"),
                    }
                });
            }
            Err(e) => {
                // Out of descriptors and the like: wait, do not spin.
                tracing::warn!(error = %e, "gRPC accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

type Service = MessagingServiceServer<service::Messaging>;

/// Serves each connection handed over (from both ports) on a task of its
/// own until the front end stops; then each is shut down gracefully (calls
/// in progress end, no new ones are taken).
async fn serve_handed_over(mut rx: mpsc::Receiver<Counted>, svc: Service, stop: CancellationToken) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = rx.recv() => match c {
                Some(c) => c,
                None => return,
            },
        };
        tokio::spawn(serve_connection(conn, svc.clone(), stop.clone()));
    }
}

/// One HTTP/2 connection: hyper's server calling the generated service
/// for each stream, with the peer's address where the RPCs look for it
/// (tonic's `remote_addr`).
async fn serve_connection(conn: Counted, svc: Service, stop: CancellationToken) {
    let info = tonic::transport::server::TcpConnectInfo {
        local_addr: conn.stream.local_addr(),
        remote_addr: Some(conn.stream.peer_addr()),
    };
    let peer = conn.stream.peer_addr();
    let call = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
        RUN_FIRST.set(!streams_its_answer(req.uri().path()));
        req.extensions_mut().insert(info.clone());
        let mut svc = svc.clone();
        tower_service::Service::call(&mut svc, req)
    });
    let served = hyper::server::conn::http2::Builder::new(RunFirst)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(hyper_util::rt::TokioIo::new(conn), call);
    tokio::pin!(served);
    let ended = tokio::select! {
        r = run_first_budget(served.as_mut()) => r,
        _ = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            run_first_budget(served.as_mut()).await
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "gRPC connection ended");
    }
}

/// Most calls one poll of a connection runs first; the rest of a burst
/// (hyper takes every stream whose frames are already read in one poll)
/// are spawned, so one client's pipelined calls are interleaved with
/// other connections' work by the scheduler, not run back to back.
const RUN_FIRST_PER_POLL: u32 = 8;

thread_local! {
    /// Whether the call hyper is about to hand [`RunFirst`] should be
    /// polled at once: set by the service just before (hyper calls the
    /// service, then the executor, in one step on one thread) and taken by
    /// the executor. Only a performance hint: either way is correct.
    static RUN_FIRST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Calls the connection being polled on this thread may still run
    /// first ([`RUN_FIRST_PER_POLL`], reset by [`run_first_budget`]).
    static RUN_FIRST_LEFT: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Polls a connection with a fresh [`RUN_FIRST_PER_POLL`] budget each time.
fn run_first_budget<F: std::future::Future>(conn: std::pin::Pin<&mut F>) -> RunFirstBudget<'_, F> {
    RunFirstBudget(conn)
}

struct RunFirstBudget<'a, F>(std::pin::Pin<&'a mut F>);

impl<F: std::future::Future> std::future::Future for RunFirstBudget<'_, F> {
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        RUN_FIRST_LEFT.set(RUN_FIRST_PER_POLL);
        let polled = self.0.as_mut().poll(cx);
        RUN_FIRST_LEFT.set(0);
        polled
    }
}

/// The streaming RPCs: their answers come from tasks of their own (a pop,
/// a client's session), so polling them at once only costs a poll more.
/// (Drains of 4 simple consumers, one interleaved A/B each: receive + ack
/// 8 % slower than with hyper's spawning while receives were polled at
/// once, 2 % with them spawned; per-round spread +-10 %.)
fn streams_its_answer(path: &str) -> bool {
    matches!(path.rsplit('/').next(), Some("ReceiveMessage" | "Telemetry"))
}

/// How the connection runs each call hyper hands it: a unary call is
/// polled once at once, on the connection's own task (at most
/// [`RUN_FIRST_PER_POLL`] per poll of the connection), and spawned only
/// when it must wait (a sync flush, a replica). A call that can complete
/// then (a send with async flush, an ack, a route) is read, served and
/// answered with no task spawn or wake-up between, as on the remoting
/// port. A call that panics ends only its own stream.
#[derive(Clone, Copy)]
struct RunFirst;

impl<F> hyper::rt::Executor<F> for RunFirst
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    fn execute(&self, call: F) {
        let left = RUN_FIRST_LEFT.get();
        if !RUN_FIRST.replace(false) || left == 0 {
            tokio::spawn(call);
            return;
        }
        RUN_FIRST_LEFT.set(left - 1);
        let mut call = Box::pin(call);
        // No waker is needed for this first poll: a call still pending is
        // spawned, and its task polls it again with its own.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call.as_mut().poll(&mut cx))) {
            Ok(std::task::Poll::Ready(())) => {}
            Ok(std::task::Poll::Pending) => {
                tokio::spawn(call);
            }
            Err(_) => tracing::error!("a gRPC call panicked; its stream is reset"),
        }
    }
}

/// An admitted gRPC connection and its share of `serverMaxConnections`,
/// held while it is open.
struct Counted {
    stream: Http2Stream,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
