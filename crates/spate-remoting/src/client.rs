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
use crate::transport::{TlsSocket, Transport};

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub connection: ConnectionConfig,
    /// `connectTimeoutMillis` (upstream 3000 ms), TLS handshake included.
    pub connect_timeout: Duration,
    /// Speak TLS to every address with this configuration
    /// ([`crate::TlsClientSettings::client_tls`]); `None`: plaintext.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must carry; `None`: the host of
    /// the address, or `localhost` for an IP address
    /// ([`crate::tls::default_server_name`]). Unchecked when the
    /// configuration trusts any certificate.
    pub tls_server_name: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connection: ConnectionConfig::default(),
            connect_timeout: Duration::from_millis(3000),
            tls: None,
            tls_server_name: None,
        }
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
        let stream = tokio::time::timeout(self.cfg.connect_timeout, self.connect(addr, sock))
            .await
            .map_err(|_| RemotingError::ConnectTimeout(addr.to_string()))?
            .map_err(|e| RemotingError::Connect { addr: addr.to_string(), source: e })?;
        // A client never stops reading: the frames it reads are mostly the
        // answers it waits for, and pausing them behind its own queued
        // requests could leave both sides waiting on each other.
        let mut cfg = self.cfg.connection.clone();
        cfg.write_buffer_high_water_mark = usize::MAX;
        cfg.write_buffer_low_water_mark = usize::MAX;
        let conn = Connection::start_on(stream, self.handler.clone(), &cfg)
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

    /// A TCP connection to `sock`, wrapped in TLS when configured.
    async fn connect(&self, addr: &str, sock: SocketAddr) -> std::io::Result<Transport> {
        let tcp = TcpStream::connect(sock).await?;
        let Some(tls) = &self.cfg.tls else { return Ok(Transport::Plain(tcp)) };
        let name = match &self.cfg.tls_server_name {
            Some(name) => rustls::pki_types::ServerName::try_from(name.clone()).ok(),
            None => crate::tls::default_server_name(addr),
        };
        let name =
            name.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no valid TLS server name"))?;
        // Before the handshake: its messages are small and must not wait.
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(tls.clone());
        let stream = connector.connect(name, TlsSocket::new(tcp)).await?;
        Ok(Transport::Tls(Box::new(stream.into())))
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
