//! The byte stream under a connection: plain TCP, or TLS over TCP.
//!
//! Reading and writing go through two enums rather than boxed trait
//! objects: the plaintext path keeps tokio's owned TCP halves and pays one
//! branch per read or write, no allocation. TLS halves share the stream
//! through `tokio::io::split` (a lock per poll), the price of rustls' one
//! state for both directions.
//!
//! A connection may move to another runtime (the priority lane). Only the
//! TCP socket is bound to a runtime (registered with its reactor); the TLS
//! state is plain memory. So the TLS stream runs over [`TlsSocket`], whose
//! socket can be taken out, moved with `into_std` / `from_std`, and put
//! back, with the session (keys, buffered records) untouched.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A TLS stream over a socket that can change runtime.
pub(crate) type TlsStream = tokio_rustls::TlsStream<TlsSocket>;

/// A connection's stream, whole.
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn tcp(&self) -> io::Result<&TcpStream> {
        match self {
            Transport::Plain(s) => Ok(s),
            Transport::Tls(t) => t.get_ref().0.tcp(),
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp()?.peer_addr()
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp()?.local_addr()
    }

    /// Turns Nagle off: frames are written whole, and small ones (a
    /// heartbeat's answer) must not wait for an acknowledgement.
    pub(crate) fn set_nodelay(&self) {
        if let Ok(tcp) = self.tcp() {
            let _ = tcp.set_nodelay(true);
        }
    }

    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Halves for a reader task and a writer task.
    pub(crate) fn split(self) -> (ReadSide, WriteSide) {
        match self {
            Transport::Plain(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Plain(r), WriteSide::Plain(w))
            }
            Transport::Tls(t) => {
                let (r, w) = tokio::io::split(*t);
                (ReadSide::Tls(r), WriteSide::Tls(w))
            }
        }
    }

    /// The stream the two halves came from.
    pub(crate) fn reunite(read: ReadSide, write: WriteSide) -> io::Result<Transport> {
        match (read, write) {
            (ReadSide::Plain(r), WriteSide::Plain(w)) => {
                r.reunite(w).map(Transport::Plain).map_err(|e| io::Error::other(e.to_string()))
            }
            (ReadSide::Tls(r), WriteSide::Tls(w)) if r.is_pair_of(&w) => Ok(Transport::Tls(Box::new(r.unsplit(w)))),
            _ => Err(io::Error::other("halves of different streams")),
        }
    }

    /// Takes the socket off the current runtime, for [`Detached::attach`]
    /// on another one.
    pub(crate) fn detach(self) -> io::Result<Detached> {
        match self {
            Transport::Plain(s) => Ok(Detached { socket: s.into_std()?, tls: None }),
            Transport::Tls(mut t) => {
                let tcp = t.get_mut().0.take()?;
                Ok(Detached { socket: tcp.into_std()?, tls: Some(t) })
            }
        }
    }
}

/// A connection between two runtimes: its socket, and its TLS session
/// (without a socket) if it has one.
pub(crate) struct Detached {
    socket: std::net::TcpStream,
    tls: Option<Box<TlsStream>>,
}

impl Detached {
    /// The connection again, registered with the current runtime.
    pub(crate) fn attach(self) -> io::Result<Transport> {
        let tcp = TcpStream::from_std(self.socket)?;
        match self.tls {
            None => Ok(Transport::Plain(tcp)),
            Some(mut t) => {
                t.get_mut().0.put(tcp);
                Ok(Transport::Tls(t))
            }
        }
    }
}

/// The TCP socket under a TLS stream. It is empty only while its
/// connection moves between runtimes, when nobody reads or writes it.
pub(crate) struct TlsSocket(Option<TcpStream>);

impl TlsSocket {
    pub(crate) fn new(tcp: TcpStream) -> TlsSocket {
        TlsSocket(Some(tcp))
    }

    fn tcp(&self) -> io::Result<&TcpStream> {
        self.0.as_ref().ok_or_else(moving)
    }

    fn tcp_mut(&mut self) -> io::Result<&mut TcpStream> {
        self.0.as_mut().ok_or_else(moving)
    }

    fn take(&mut self) -> io::Result<TcpStream> {
        self.0.take().ok_or_else(moving)
    }

    fn put(&mut self, tcp: TcpStream) {
        debug_assert!(self.0.is_none(), "a TLS stream got a second socket");
        self.0 = Some(tcp);
    }
}

fn moving() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection's socket is moving between runtimes")
}

impl AsyncRead for TlsSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.tcp_mut() {
            Ok(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for TlsSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.tcp_mut() {
            Ok(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.tcp_mut() {
            Ok(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp_mut() {
            Ok(tcp) => Pin::new(tcp).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.tcp_mut() {
            Ok(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

/// The reading half of a [`Transport`].
pub(crate) enum ReadSide {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

impl AsyncRead for ReadSide {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The writing half of a [`Transport`]. Over TLS, written bytes may wait
/// in the session until a flush.
pub(crate) enum WriteSide {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl AsyncWrite for WriteSide {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Tls(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteSide::Tls(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteSide::Plain(w) => w.is_write_vectored(),
            WriteSide::Tls(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Plain(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A connection that speaks HTTP/2 (gRPC) instead of remoting frames:
/// plaintext (h2c) or TLS that negotiated `h2` by ALPN, handed over with
/// nothing read from it past the TLS handshake.
pub struct Http2Stream {
    inner: Http2Inner,
    peer: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
    /// The connection's place in the accepting server's counts
    /// (`serverMaxConnectionsPerAddress`), given back when it is dropped.
    _counted: Option<crate::server::AddressSlot>,
}

enum Http2Inner {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Http2Stream {
    pub(crate) fn plain(tcp: TcpStream, peer: std::net::SocketAddr) -> Http2Stream {
        let local = tcp.local_addr().ok();
        Http2Stream { inner: Http2Inner::Plain(tcp), peer, local, _counted: None }
    }

    pub(crate) fn tls(stream: Box<TlsStream>, peer: std::net::SocketAddr) -> Http2Stream {
        let local = stream.get_ref().0.tcp().ok().and_then(|t| t.local_addr().ok());
        Http2Stream { inner: Http2Inner::Tls(stream), peer, local, _counted: None }
    }

    /// Keeps `slot` (whose drop uncounts the connection) as long as the stream.
    pub fn counted(mut self, slot: crate::server::AddressSlot) -> Http2Stream {
        self._counted = Some(slot);
        self
    }

    pub fn peer_addr(&self) -> std::net::SocketAddr {
        self.peer
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.local
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Http2Inner::Tls(_))
    }
}

impl AsyncRead for Http2Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Http2Inner::Plain(t) => Pin::new(t).poll_read(cx, buf),
            Http2Inner::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Http2Stream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Http2Inner::Plain(t) => Pin::new(t).poll_write(cx, buf),
            Http2Inner::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Http2Inner::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            Http2Inner::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Http2Inner::Plain(t) => t.is_write_vectored(),
            Http2Inner::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Http2Inner::Plain(t) => Pin::new(t).poll_flush(cx),
            Http2Inner::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Http2Inner::Plain(t) => Pin::new(t).poll_shutdown(cx),
            Http2Inner::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
