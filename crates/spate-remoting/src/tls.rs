//! TLS on the remoting ports, with upstream RocketMQ's settings.
//!
//! A server serves TLS and plaintext on the same port: the first byte of
//! an accepted connection tells them apart (`0x16` opens a TLS handshake),
//! and [`TlsMode`] says which of the two it takes. A client either speaks
//! TLS to every address or to none.
//!
//! The settings are plain structs that take upstream's key names through
//! `set`, so the broker's and the name server's configuration files can
//! forward them; `server_config` / `client_config` turn them into rustls
//! configurations (rustls on *ring*, no process-wide crypto provider).
//!
//! Where Spate differs from upstream:
//! - An unknown mode or a boolean other than `true` / `false` is an error
//!   (upstream falls back to `permissive` / `false`).
//! - `tls.test.mode.enable` is `false` by default (upstream: `true`), and it
//!   only supplies a certificate when none is configured; client
//!   authentication stays as configured (upstream forces `optional`).
//! - Encrypted private keys (`tls.*.keyPassword`) are refused: decrypt the
//!   key file (`openssl pkcs8 -nocrypt`).
//! - Verifying a peer (`authServer` / `authClient`) needs a trust file;
//!   the system's trust store is not consulted.
//! - The client checks the server's certificate against a name (the host
//!   of the address, `localhost` for an IP address); upstream checks the
//!   chain only.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

/// Default `tlsHandshakeTimeoutMillis`: how long an accepted connection
/// has to send its first byte and, if it opened a TLS handshake, to
/// finish it.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_millis(3000);

/// Largest PEM file read (a certificate chain, a key, a trust bundle):
/// a system-wide CA bundle is about 200 KiB.
const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// The names the generated test-mode certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// A TLS setting or file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{key}`: invalid value `{value}` (expected {expected})")]
    BadValue { key: &'static str, value: String, expected: &'static str },
    #[error("`{key}` is not supported: {reason}")]
    Unsupported { key: &'static str, reason: &'static str },
    #[error("`{key}` must be set: {why}")]
    Missing { key: &'static str, why: &'static str },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path} is larger than {max} bytes; not a PEM file")]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{path}: bad PEM: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: unusable certificate: {source}")]
    BadCertificate { path: PathBuf, source: rustls::Error },
    #[error("generating the test-mode certificate failed: {0}")]
    SelfSigned(String),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// What a server does with TLS (upstream `tls.server.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsMode {
    /// Plaintext only: a connection that opens a TLS handshake is closed.
    #[default]
    Disabled,
    /// Both: TLS connections are wrapped, plaintext ones served as they are.
    Permissive,
    /// TLS only: a plaintext connection is closed.
    Enforcing,
}

impl FromStr for TlsMode {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "disabled" => Ok(TlsMode::Disabled),
            "permissive" => Ok(TlsMode::Permissive),
            "enforcing" => Ok(TlsMode::Enforcing),
            _ => Err(bad_value(MODE_KEY, s, "disabled, permissive or enforcing")),
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::Disabled => "disabled",
            TlsMode::Permissive => "permissive",
            TlsMode::Enforcing => "enforcing",
        })
    }
}

/// Whether a server asks clients for a certificate
/// (upstream `tls.server.need.client.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// Asked for; a client without one is served.
    Optional,
    /// Asked for; a client without one is refused at the handshake.
    Require,
}

impl FromStr for ClientAuth {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, TlsError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" | "" => Ok(ClientAuth::None),
            "optional" => Ok(ClientAuth::Optional),
            "require" => Ok(ClientAuth::Require),
            _ => Err(bad_value(NEED_CLIENT_AUTH_KEY, s, "none, optional or require")),
        }
    }
}

const MODE_KEY: &str = "tls.server.mode";
const NEED_CLIENT_AUTH_KEY: &str = "tls.server.need.client.auth";
const TEST_MODE_KEY: &str = "tls.test.mode.enable";
const PASSWORD_REFUSED: &str = "encrypted private keys are not read; decrypt the key file (openssl pkcs8 -nocrypt)";

/// A server's TLS settings, by upstream's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerSettings {
    /// `tls.server.mode` (also `tlsMode`): disabled by default.
    pub mode: TlsMode,
    /// `tls.test.mode.enable`: with no certificate configured, generate a
    /// self-signed one in memory (for `localhost` and `127.0.0.1`).
    pub test_mode: bool,
    /// `tls.server.certPath`: the certificate chain, PEM, leaf first.
    pub cert_path: Option<PathBuf>,
    /// `tls.server.keyPath`: its private key, PEM (PKCS#8, PKCS#1 or SEC1), unencrypted.
    pub key_path: Option<PathBuf>,
    /// `tls.server.need.client.auth`: none, optional or require.
    pub need_client_auth: ClientAuth,
    /// `tls.server.authClient`: verify client certificates against
    /// `trust_cert_path`. When false (upstream's default) any client
    /// certificate is accepted, which proves nothing about the client.
    pub auth_client: bool,
    /// `tls.server.trustCertPath`: the CA certificates, PEM, that client
    /// certificates must chain to.
    pub trust_cert_path: Option<PathBuf>,
    /// `tlsHandshakeTimeoutMillis`: see [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    pub handshake_timeout: Duration,
}

impl Default for TlsServerSettings {
    fn default() -> Self {
        TlsServerSettings {
            mode: TlsMode::Disabled,
            test_mode: false,
            cert_path: None,
            key_path: None,
            need_client_auth: ClientAuth::None,
            auth_client: false,
            trust_cert_path: None,
            handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT,
        }
    }
}

impl TlsServerSettings {
    /// Sets one key. `Ok(false)`: not a server TLS key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, TlsError> {
        let v = value.trim();
        match key {
            MODE_KEY | "tlsMode" => self.mode = v.parse()?,
            TEST_MODE_KEY => self.test_mode = parse_bool(TEST_MODE_KEY, v)?,
            "tls.server.certPath" => self.cert_path = path(v),
            "tls.server.keyPath" => self.key_path = path(v),
            "tls.server.keyPassword" => refuse_password("tls.server.keyPassword", v)?,
            NEED_CLIENT_AUTH_KEY => self.need_client_auth = v.parse()?,
            "tls.server.authClient" => self.auth_client = parse_bool("tls.server.authClient", v)?,
            "tls.server.trustCertPath" => self.trust_cert_path = path(v),
            "tlsHandshakeTimeoutMillis" => {
                let ms: u64 = v.parse().map_err(|_| bad_value("tlsHandshakeTimeoutMillis", v, "milliseconds"))?;
                self.handshake_timeout = Duration::from_millis(ms.max(1));
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What [`crate::RemotingServer::bind_with_tls`] takes. With the mode
    /// disabled no file is read.
    pub fn server_tls(&self) -> Result<ServerTls, TlsError> {
        let tls = match self.mode {
            TlsMode::Disabled => ServerTls::disabled(),
            mode => ServerTls::new(mode, self.server_config()?),
        };
        Ok(tls.with_handshake_timeout(self.handshake_timeout))
    }

    /// The rustls configuration TLS connections are accepted with.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = provider();
        let (chain, key) = self.certificate()?;
        let verifier = self.client_verifier(&provider)?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        // gRPC clients ask for h2; remoting clients ask for nothing and
        // get no protocol, so the port tells them apart after the handshake.
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(Arc::new(config))
    }

    fn certificate(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        match (&self.cert_path, &self.key_path) {
            (Some(cert), Some(key)) => Ok((read_chain(cert)?, read_key(key)?)),
            (Some(_), None) => Err(TlsError::Missing {
                key: "tls.server.keyPath",
                why: "tls.server.certPath is set and needs its private key",
            }),
            (None, Some(_)) => Err(TlsError::Missing {
                key: "tls.server.certPath",
                why: "tls.server.keyPath is set and needs its certificate",
            }),
            (None, None) if self.test_mode => {
                tracing::warn!("TLS with a generated self-signed certificate (tls.test.mode.enable): for tests only");
                self_signed()
            }
            (None, None) => Err(TlsError::Missing {
                key: "tls.server.certPath",
                why: "a TLS server needs a certificate (or tls.test.mode.enable=true for a generated one)",
            }),
        }
    }

    fn client_verifier(&self, provider: &Arc<CryptoProvider>) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
        if self.need_client_auth == ClientAuth::None {
            return Ok(Arc::new(rustls::server::NoClientAuth));
        }
        let mandatory = self.need_client_auth == ClientAuth::Require;
        if !self.auth_client {
            tracing::warn!(
                need_client_auth = ?self.need_client_auth,
                "client certificates are asked for but not verified (tls.server.authClient=false)"
            );
            return Ok(Arc::new(AnyClientCertificate { provider: provider.clone(), mandatory }));
        }
        let Some(trust) = &self.trust_cert_path else {
            return Err(TlsError::Missing {
                key: "tls.server.trustCertPath",
                why: "tls.server.authClient verifies client certificates against it",
            });
        };
        let builder = WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(trust)?), provider.clone());
        let builder = if mandatory { builder } else { builder.allow_unauthenticated() };
        Ok(builder.build()?)
    }
}

/// A client's TLS settings, by upstream's keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsClientSettings {
    /// `tls.enable`: connect with TLS.
    pub enable: bool,
    /// `tls.test.mode.enable`: trust any server certificate, as upstream's
    /// test mode does.
    pub test_mode: bool,
    /// `tls.client.certPath`: a certificate chain to present, PEM, leaf first.
    pub cert_path: Option<PathBuf>,
    /// `tls.client.keyPath`: its private key, PEM, unencrypted.
    pub key_path: Option<PathBuf>,
    /// `tls.client.authServer`: verify the server's certificate against
    /// `trust_cert_path`. When false (upstream's default) any server
    /// certificate is trusted: the traffic is encrypted but whoever is
    /// listening at the address, or in the middle, is not authenticated.
    pub auth_server: bool,
    /// `tls.client.trustCertPath`: the CA certificates, PEM, that the
    /// server's certificate must chain to.
    pub trust_cert_path: Option<PathBuf>,
}

impl TlsClientSettings {
    /// Sets one key. `Ok(false)`: not a client TLS key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, TlsError> {
        let v = value.trim();
        match key {
            "tls.enable" => self.enable = parse_bool("tls.enable", v)?,
            TEST_MODE_KEY => self.test_mode = parse_bool(TEST_MODE_KEY, v)?,
            "tls.client.certPath" => self.cert_path = path(v),
            "tls.client.keyPath" => self.key_path = path(v),
            "tls.client.keyPassword" => refuse_password("tls.client.keyPassword", v)?,
            "tls.client.authServer" => self.auth_server = parse_bool("tls.client.authServer", v)?,
            "tls.client.trustCertPath" => self.trust_cert_path = path(v),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// What [`crate::ClientConfig::tls`] takes: `None` unless `tls.enable`.
    pub fn client_tls(&self) -> Result<Option<Arc<rustls::ClientConfig>>, TlsError> {
        if self.enable {
            self.client_config().map(Some)
        } else {
            Ok(None)
        }
    }

    /// The rustls configuration connections are made with.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = provider();
        let builder =
            rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = if self.test_mode || !self.auth_server {
            tracing::warn!(
                test_mode = self.test_mode,
                "TLS client trusts any server certificate (tls.client.authServer=false): encrypted, not authenticated"
            );
            builder.dangerous().with_custom_certificate_verifier(Arc::new(AnyServerCertificate { provider }))
        } else {
            let Some(trust) = &self.trust_cert_path else {
                return Err(TlsError::Missing {
                    key: "tls.client.trustCertPath",
                    why: "tls.client.authServer verifies the server's certificate against it",
                });
            };
            builder.with_root_certificates(read_roots(trust)?)
        };
        let config = match (&self.cert_path, &self.key_path) {
            (Some(cert), Some(key)) => builder.with_client_auth_cert(read_chain(cert)?, read_key(key)?)?,
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => {
                return Err(TlsError::Missing {
                    key: "tls.client.keyPath",
                    why: "tls.client.certPath is set and needs its private key",
                })
            }
            (None, Some(_)) => {
                return Err(TlsError::Missing {
                    key: "tls.client.certPath",
                    why: "tls.client.keyPath is set and needs its certificate",
                })
            }
        };
        Ok(Arc::new(config))
    }
}

/// The name a client checks the server's certificate against when none is
/// configured: the host of `addr` (`host:port`), or `localhost` when the
/// host is an IP address (certificates seldom name addresses, and upstream
/// checks no name at all).
pub fn default_server_name(addr: &str) -> Option<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        return ServerName::try_from("localhost").ok();
    }
    ServerName::try_from(host.to_string()).ok()
}

/// The ALPN protocol id of HTTP/2 over TLS (what gRPC clients offer).
pub const ALPN_H2: &[u8] = b"h2";

/// A server's TLS: the mode, the configuration handshakes use, and how
/// long an accepted connection has to show what it speaks.
#[derive(Debug, Clone)]
pub struct ServerTls {
    mode: TlsMode,
    config: Option<Arc<rustls::ServerConfig>>,
    handshake_timeout: Duration,
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls::disabled()
    }
}

impl ServerTls {
    /// Plaintext only; a TLS handshake closes its connection.
    pub fn disabled() -> ServerTls {
        ServerTls { mode: TlsMode::Disabled, config: None, handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT }
    }

    /// `mode` with `config` for the handshakes (unused when disabled).
    pub fn new(mode: TlsMode, config: Arc<rustls::ServerConfig>) -> ServerTls {
        let config = (mode != TlsMode::Disabled).then_some(config);
        ServerTls { mode, config, handshake_timeout: DEFAULT_TLS_HANDSHAKE_TIMEOUT }
    }

    /// Sets `tlsHandshakeTimeoutMillis` (at least 1 ms).
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> ServerTls {
        self.handshake_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    pub fn mode(&self) -> TlsMode {
        self.mode
    }

    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }

    /// The acceptor for TLS connections; `None` when disabled.
    pub(crate) fn acceptor(&self) -> Option<tokio_rustls::TlsAcceptor> {
        debug_assert_eq!(self.config.is_some(), self.mode != TlsMode::Disabled);
        self.config.clone().map(tokio_rustls::TlsAcceptor::from)
    }
}

/// rustls on *ring*. rustls 0.23.48 deprecates this provider because it
/// has no post-quantum key exchange; aws-lc-rs has one but its C build is
/// slow, and classical X25519 / P-256 is what upstream's Java peers offer.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn bad_value(key: &'static str, value: &str, expected: &'static str) -> TlsError {
    TlsError::BadValue { key, value: value.to_string(), expected }
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, TlsError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad_value(key, v, "true or false")),
    }
}

/// An empty value unsets a path, as upstream's empty string does.
fn path(v: &str) -> Option<PathBuf> {
    (!v.is_empty()).then(|| PathBuf::from(v))
}

fn refuse_password(key: &'static str, v: &str) -> Result<(), TlsError> {
    if v.is_empty() {
        Ok(())
    } else {
        Err(TlsError::Unsupported { key, reason: PASSWORD_REFUSED })
    }
}

/// A PEM file's bytes, refusing anything larger than a PEM file would be.
fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { path: path.to_path_buf(), source };
    let mut bytes = Vec::new();
    std::fs::File::open(path).map_err(read)?.take(PEM_FILE_BYTES_MAX + 1).read_to_end(&mut bytes).map_err(read)?;
    if bytes.len() as u64 > PEM_FILE_BYTES_MAX {
        return Err(TlsError::TooLarge { path: path.to_path_buf(), max: PEM_FILE_BYTES_MAX });
    }
    Ok(bytes)
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_pem(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Empty { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_pem(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            TlsError::Empty { path: path.to_path_buf(), what: "unencrypted private key (PKCS#8, PKCS#1 or SEC1)" }
        }
        e => TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() },
    })
}

fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_chain(path)? {
        roots.add(cert).map_err(|source| TlsError::BadCertificate { path: path.to_path_buf(), source })?;
    }
    debug_assert!(!roots.is_empty());
    Ok(roots)
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::SelfSigned(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(generated.key_pair.serialize_der());
    Ok((vec![generated.cert.der().clone()], key.into()))
}

/// Trusts any server certificate (`tls.client.authServer=false`, test
/// mode) but still checks that the server holds its key.
#[derive(Debug)]
struct AnyServerCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyServerCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Asks for a client certificate and accepts any (`tls.server.authClient=false`),
/// checking only that the client holds its key.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl ClientCertVerifier for AnyClientCertificate {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_upstream_name_and_nothing_else() {
        assert_eq!("disabled".parse::<TlsMode>().unwrap(), TlsMode::Disabled);
        assert_eq!("permissive".parse::<TlsMode>().unwrap(), TlsMode::Permissive);
        assert_eq!(" Enforcing ".parse::<TlsMode>().unwrap(), TlsMode::Enforcing);
        let err = "strict".parse::<TlsMode>().unwrap_err();
        assert!(err.to_string().contains("tls.server.mode"), "{err}");
        for mode in [TlsMode::Disabled, TlsMode::Permissive, TlsMode::Enforcing] {
            assert_eq!(mode.to_string().parse::<TlsMode>().unwrap(), mode);
        }
        assert_eq!(TlsMode::default(), TlsMode::Disabled);
        assert_eq!("require".parse::<ClientAuth>().unwrap(), ClientAuth::Require);
        assert_eq!("OPTIONAL".parse::<ClientAuth>().unwrap(), ClientAuth::Optional);
        assert!("sometimes".parse::<ClientAuth>().is_err());
    }

    #[test]
    fn server_keys_are_upstreams() {
        let mut s = TlsServerSettings::default();
        assert!(s.set("tls.server.mode", "enforcing").unwrap());
        assert_eq!(s.mode, TlsMode::Enforcing);
        assert!(s.set("tlsMode", "permissive").unwrap());
        assert_eq!(s.mode, TlsMode::Permissive);
        assert!(s.set("tls.server.certPath", "/etc/rocketmq/server.pem").unwrap());
        assert!(s.set("tls.server.keyPath", " /etc/rocketmq/server.key ").unwrap());
        assert_eq!(s.key_path.as_deref(), Some(Path::new("/etc/rocketmq/server.key")));
        assert!(s.set("tls.server.need.client.auth", "require").unwrap());
        assert!(s.set("tls.server.authClient", "TRUE").unwrap());
        assert!(s.set("tls.server.trustCertPath", "/etc/rocketmq/ca.pem").unwrap());
        assert!(s.set("tls.test.mode.enable", "false").unwrap());
        assert!(s.set("tlsHandshakeTimeoutMillis", "500").unwrap());
        assert_eq!(s.handshake_timeout, Duration::from_millis(500));
        assert!(s.set("tls.server.trustCertPath", "").unwrap());
        assert_eq!(s.trust_cert_path, None, "an empty path unsets it");
        assert_eq!(s.need_client_auth, ClientAuth::Require);
        assert!(s.auth_client);
        assert!(!s.set("tls.client.certPath", "/x").unwrap(), "a client key is not a server key");
        assert!(!s.set("listenPort", "10911").unwrap());
        assert!(s.set("tls.server.authClient", "yes").is_err());
        assert!(s.set("tlsHandshakeTimeoutMillis", "soon").is_err());
        assert!(s.set("tls.server.keyPassword", "").unwrap());
        let err = s.set("tls.server.keyPassword", "123456").unwrap_err();
        assert!(err.to_string().contains("tls.server.keyPassword"), "{err}");
    }

    #[test]
    fn client_keys_are_upstreams() {
        let mut c = TlsClientSettings::default();
        assert!(!c.enable && !c.auth_server && !c.test_mode);
        assert!(c.set("tls.enable", "true").unwrap());
        assert!(c.set("tls.client.authServer", "true").unwrap());
        assert!(c.set("tls.client.trustCertPath", "/ca.pem").unwrap());
        assert!(c.set("tls.client.certPath", "/client.pem").unwrap());
        assert!(c.set("tls.client.keyPath", "/client.key").unwrap());
        assert!(c.set("tls.test.mode.enable", "false").unwrap());
        assert_eq!(c.trust_cert_path.as_deref(), Some(Path::new("/ca.pem")));
        assert!(c.enable && c.auth_server);
        assert!(!c.set("tls.server.mode", "enforcing").unwrap());
        assert!(c.set("tls.client.keyPassword", "pw").is_err());
    }

    #[test]
    fn a_disabled_server_reads_no_file_and_an_enabled_one_needs_a_certificate() {
        let mut s = TlsServerSettings { cert_path: Some("/nonexistent/cert.pem".into()), ..Default::default() };
        assert_eq!(s.server_tls().unwrap().mode(), TlsMode::Disabled);
        s.mode = TlsMode::Permissive;
        assert!(matches!(s.server_tls(), Err(TlsError::Missing { key: "tls.server.keyPath", .. })));
        s.key_path = Some("/nonexistent/key.pem".into());
        assert!(matches!(s.server_tls(), Err(TlsError::Read { .. })));
        let s = TlsServerSettings { mode: TlsMode::Enforcing, ..Default::default() };
        assert!(matches!(s.server_tls(), Err(TlsError::Missing { key: "tls.server.certPath", .. })));
        let s = TlsServerSettings { mode: TlsMode::Enforcing, test_mode: true, ..Default::default() };
        assert_eq!(s.server_tls().unwrap().mode(), TlsMode::Enforcing);
    }

    #[test]
    fn verifying_a_peer_needs_a_trust_file() {
        let s = TlsServerSettings {
            mode: TlsMode::Permissive,
            test_mode: true,
            need_client_auth: ClientAuth::Require,
            auth_client: true,
            ..Default::default()
        };
        assert!(matches!(s.server_config(), Err(TlsError::Missing { key: "tls.server.trustCertPath", .. })));
        let c = TlsClientSettings { enable: true, auth_server: true, ..Default::default() };
        assert!(matches!(c.client_config(), Err(TlsError::Missing { key: "tls.client.trustCertPath", .. })));
        let c = TlsClientSettings { enable: false, auth_server: true, ..Default::default() };
        assert!(c.client_tls().unwrap().is_none(), "not enabled: nothing is built");
    }

    #[test]
    fn a_file_that_is_not_pem_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, b"not a certificate").unwrap();
        let err = read_chain(&junk).unwrap_err();
        assert!(matches!(err, TlsError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("junk.pem"), "{err}");
        std::fs::write(&junk, b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").unwrap();
        assert!(matches!(read_chain(&junk), Err(TlsError::Pem { .. })));
        let cert_only = dir.path().join("cert.pem");
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert_only, generated.cert.pem()).unwrap();
        assert_eq!(read_chain(&cert_only).unwrap().len(), 1);
        let err = read_key(&cert_only).unwrap_err();
        assert!(matches!(err, TlsError::Empty { .. }), "a certificate is not a key: {err}");
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; PEM_FILE_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(read_chain(&big), Err(TlsError::TooLarge { .. })));
    }

    #[test]
    fn the_default_server_name_is_the_host_or_localhost_for_an_address() {
        let name = |a| default_server_name(a).map(|n| n.to_str().into_owned());
        assert_eq!(name("broker-a.example:10911").as_deref(), Some("broker-a.example"));
        assert_eq!(name("127.0.0.1:9876").as_deref(), Some("localhost"));
        assert_eq!(name("[::1]:9876").as_deref(), Some("localhost"));
        assert_eq!(name("localhost:9876").as_deref(), Some("localhost"));
        assert_eq!(name("bad name:1"), None);
    }
}
