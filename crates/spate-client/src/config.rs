//! Settings shared by every producer and consumer of one client instance.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{ClientError, Result};

/// Settings of a [`ClientInstance`](crate::ClientInstance) (upstream `ClientConfig`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name server addresses, `host:port` (`namesrvAddr`; `;`-separated in upstream's string form).
    pub namesrv_addr: Vec<String>,
    /// `instanceName`. When `None`, `<pid>#<nanos>` is used, so that every
    /// instance in one process gets its own client id (as upstream 5.x does).
    pub instance_name: Option<String>,
    /// `clientIP`. When `None`, the local address that routes to the first
    /// name server is used, else 127.0.0.1.
    pub client_ip: Option<String>,
    /// `pollNameServerInterval`: how often routes of the topics in use are refreshed (30 s).
    pub poll_name_server_interval: Duration,
    /// `heartbeatBrokerInterval`: how often every master is sent a heartbeat (30 s).
    pub heartbeat_broker_interval: Duration,
    /// `persistConsumerOffsetInterval`: how often consumers persist their offsets (5 s).
    pub persist_consumer_offset_interval: Duration,
    /// `mqClientApiTimeout`: timeout of control requests (routes, offsets, heartbeats) (3 s).
    pub request_timeout: Duration,
    /// Most topics whose routes are cached; routes beyond it are used but not kept.
    pub route_cache_topics_max: usize,
    /// Connection settings (`connectTimeoutMillis`, frame limit, idle timeout).
    pub remoting: spate_remoting::ClientConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            namesrv_addr: Vec::new(),
            instance_name: None,
            client_ip: None,
            poll_name_server_interval: Duration::from_secs(30),
            heartbeat_broker_interval: Duration::from_secs(30),
            persist_consumer_offset_interval: Duration::from_secs(5),
            request_timeout: Duration::from_secs(3),
            route_cache_topics_max: 10_000,
            remoting: spate_remoting::ClientConfig::default(),
        }
    }
}

impl ClientConfig {
    /// A configuration for the given name servers, in upstream's string form
    /// (`host:port;host:port`; commas are accepted too).
    pub fn new(namesrv_addr: &str) -> Self {
        ClientConfig { namesrv_addr: parse_namesrv_addr(namesrv_addr), ..ClientConfig::default() }
    }

    /// Signs every request with these credentials (RocketMQ's
    /// `AclClientRPCHook` with `SessionCredentials`): needed where the
    /// servers run with `authenticationEnabled=true`.
    pub fn with_credentials(mut self, access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        self.remoting.connection.credentials = Some(spate_remoting::Credentials::new(access_key, secret_key));
        self
    }

    /// Connects over TLS with this configuration (RocketMQ's `useTLS`):
    /// name servers and brokers alike.
    pub fn with_tls(mut self, tls: std::sync::Arc<spate_remoting::rustls::ClientConfig>) -> Self {
        self.remoting.tls = Some(tls);
        self
    }

    /// Sets `instanceName`.
    pub fn with_instance_name(mut self, name: impl Into<String>) -> Self {
        self.instance_name = Some(name.into());
        self
    }

    /// Checks the options that have no safe meaning when zero or empty.
    pub fn validate(&self) -> Result<()> {
        if self.namesrv_addr.is_empty() {
            return Err(ClientError::Config { name: "namesrvAddr", reason: "no name server address".into() });
        }
        let positive = [
            ("pollNameServerInterval", self.poll_name_server_interval),
            ("heartbeatBrokerInterval", self.heartbeat_broker_interval),
            ("persistConsumerOffsetInterval", self.persist_consumer_offset_interval),
            ("mqClientApiTimeout", self.request_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                return Err(ClientError::Config { name, reason: "must be greater than zero".into() });
            }
        }
        if let Some(name) = &self.instance_name {
            if name.is_empty() || name.contains('@') {
                return Err(ClientError::Config { name: "instanceName", reason: "empty or contains '@'".into() });
            }
        }
        Ok(())
    }

    /// The instance name in effect (a fresh `<pid>#<nanos>` when unset).
    pub(crate) fn effective_instance_name(&self) -> String {
        match &self.instance_name {
            Some(n) => n.clone(),
            None => {
                let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
                format!("{}#{}", std::process::id(), nanos)
            }
        }
    }

    /// The client IP in effect.
    pub(crate) fn effective_client_ip(&self) -> String {
        if let Some(ip) = &self.client_ip {
            return ip.clone();
        }
        self.namesrv_addr.first().and_then(|a| local_ip_towards(a)).unwrap_or_else(|| "127.0.0.1".to_string())
    }
}

/// Splits `a;b,c` into addresses, dropping blanks.
pub fn parse_namesrv_addr(s: &str) -> Vec<String> {
    s.split([';', ',']).map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// The local address the OS would use to reach `addr` (no packet is sent).
fn local_ip_towards(addr: &str) -> Option<String> {
    let target: SocketAddr = addr.to_socket_addrs().ok()?.find(SocketAddr::is_ipv4)?;
    let sock = UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect(target).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    if ip.is_unspecified() {
        None
    } else {
        Some(ip.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namesrv_addr_accepts_semicolons_commas_and_blanks() {
        assert_eq!(parse_namesrv_addr("a:1; b:2;;c:3,d:4 "), vec!["a:1", "b:2", "c:3", "d:4"]);
        assert!(parse_namesrv_addr(" ; ").is_empty());
    }

    #[test]
    fn validation_names_the_offending_option() {
        let err = ClientConfig::default().validate().unwrap_err();
        assert!(err.to_string().contains("namesrvAddr"), "{err}");
        let mut c = ClientConfig::new("127.0.0.1:9876");
        c.request_timeout = Duration::ZERO;
        assert!(c.validate().unwrap_err().to_string().contains("mqClientApiTimeout"));
        assert!(ClientConfig::new("127.0.0.1:9876").with_instance_name("a@b").validate().is_err());
    }

    #[test]
    fn default_instance_names_differ_and_client_ip_resolves() {
        let c = ClientConfig::new("127.0.0.1:9876");
        assert_ne!(c.effective_instance_name(), c.effective_instance_name());
        assert_eq!(c.effective_client_ip(), "127.0.0.1");
    }
}
