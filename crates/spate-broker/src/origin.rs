//! Who sent a request, whichever front end it came through. The broker's
//! operations (send, pop, ack, ...) take an [`Origin`] instead of a
//! remoting connection, so the remoting and gRPC front ends call the same
//! functions.

use std::net::SocketAddr;
use std::sync::Arc;

use spate_remoting::Connection;

use crate::BrokerState;

/// The sender of one request.
#[derive(Clone)]
pub struct Origin<'a> {
    /// The peer's address (a stored message's born host).
    pub peer: SocketAddr,
    /// The client instance id, as its heartbeats or call headers give it.
    pub client_id: String,
    /// The remoting connection the request came on, when it did: its
    /// outbound budget bounds large answers, and its close ends a wait.
    /// A gRPC call has none (HTTP/2 flow control bounds its answers).
    pub connection: Option<&'a Arc<Connection>>,
    /// For a call of another front end: cancelled when its caller is gone,
    /// which ends a wait (a held receive frees its long-polling slot).
    pub gone: Option<tokio_util::sync::CancellationToken>,
}

impl<'a> Origin<'a> {
    /// A request read from a remoting connection.
    pub fn remoting(state: &BrokerState, conn: &'a Arc<Connection>) -> Origin<'a> {
        Origin {
            peer: conn.peer_addr(),
            client_id: state.clients.client_id_of(conn),
            connection: Some(conn),
            gone: None,
        }
    }

    /// A request from another front end (gRPC).
    pub fn remote(peer: SocketAddr, client_id: impl Into<String>) -> Origin<'static> {
        Origin { peer, client_id: client_id.into(), connection: None, gone: None }
    }

    /// Resolves when the caller is gone: its remoting connection closed,
    /// or its call was cancelled.
    pub async fn closed(&self) {
        match (self.connection, &self.gone) {
            (Some(c), _) => c.closed().await,
            (None, Some(token)) => token.cancelled().await,
            (None, None) => std::future::pending().await,
        }
    }
}
