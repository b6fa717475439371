//! The connecting side: one connection per address, made on first use and
//! remade after it closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpStream;

use crate::command::RemotingCommand;
use crate::connection::{Connection, ConnectionConfig, RequestHandler};
use crate::error::RemotingError;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connection: ConnectionConfig,
    /// `connectTimeoutMillis` (upstream 3000 ms).
    pub connect_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig { connection: ConnectionConfig::default(), connect_timeout: Duration::from_millis(3000) }
    }
}

/// Calls servers by address (`host:port`).
pub struct RemotingClient {
    cfg: ClientConfig,
    handler: Option<Arc<dyn RequestHandler>>,
    connections: Mutex<HashMap<String, Arc<Connection>>>,
}

impl RemotingClient {
    /// `handler` receives requests servers send to us (e.g. NOTIFY_CONSUMER_IDS_CHANGED).
    pub fn new(cfg: ClientConfig, handler: Option<Arc<dyn RequestHandler>>) -> Self {
        RemotingClient { cfg, handler, connections: Mutex::new(HashMap::new()) }
    }

    /// The open connection to `addr`, connecting if needed.
    pub async fn connection(&self, addr: &str) -> Result<Arc<Connection>, RemotingError> {
        if let Some(c) = self.connections.lock().get(addr) {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let sock: SocketAddr = tokio::net::lookup_host(addr)
            .await
            .map_err(|_| RemotingError::BadAddress(addr.to_string()))?
            .next()
            .ok_or_else(|| RemotingError::BadAddress(addr.to_string()))?;
        let stream = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(sock))
            .await
            .map_err(|_| RemotingError::ConnectTimeout(addr.to_string()))?
            .map_err(|e| RemotingError::Connect { addr: addr.to_string(), source: e })?;
        // A client never stops reading: the frames it reads are mostly the
        // answers it waits for, and pausing them behind its own queued
        // requests could leave both sides waiting on each other.
        let mut cfg = self.cfg.connection.clone();
        cfg.write_buffer_high_water_mark = usize::MAX;
        cfg.write_buffer_low_water_mark = usize::MAX;
        let conn = Connection::start(stream, self.handler.clone(), &cfg)
            .map_err(|e| RemotingError::Connect { addr: addr.to_string(), source: e })?;
        let mut map = self.connections.lock();
        match map.get(addr) {
            // Another task connected meanwhile: keep one connection per address.
            Some(existing) if !existing.is_closed() => {
                conn.close();
                Ok(existing.clone())
            }
            _ => {
                map.insert(addr.to_string(), conn.clone());
                Ok(conn)
            }
        }
    }

    /// Sends `request` to `addr` and waits up to `timeout` for the response.
    pub async fn invoke(
        &self,
        addr: &str,
        request: RemotingCommand,
        timeout: Duration,
    ) -> Result<RemotingCommand, RemotingError> {
        let conn = tokio::time::timeout(timeout, self.connection(addr))
            .await
            .map_err(|_| RemotingError::ConnectTimeout(addr.to_string()))??;
        let result = conn.invoke(request, timeout).await;
        if let Err(RemotingError::Timeout { .. }) = &result {
            tracing::debug!(addr, "request timed out");
        }
        result
    }

    /// Sends a one-way request to `addr`.
    pub async fn oneway(&self, addr: &str, request: RemotingCommand) -> Result<(), RemotingError> {
        self.connection(addr).await?.oneway(request).await
    }

    /// Closes the connection to `addr`, if any (after repeated failures).
    pub fn close_connection(&self, addr: &str) {
        if let Some(c) = self.connections.lock().remove(addr) {
            c.close();
        }
    }

    /// Closes every connection.
    pub fn close_all(&self) {
        for (_, c) in self.connections.lock().drain() {
            c.close();
        }
    }
}

impl Drop for RemotingClient {
    fn drop(&mut self) {
        self.close_all();
    }
}
