//! TLS on the remoting port, real TCP on loopback: plaintext and TLS on one
//! port by `tlsMode`, certificates from PEM files and their verification,
//! client certificates, hostile first bytes closing only their own
//! connection, and a TLS connection moving to the priority lane.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use spate_remoting::{
    rustls, AcceptLimits, BoxFuture, ClientAuth, ClientConfig, Connection, ConnectionConfig, RemotingClient,
    RemotingCommand, RemotingError, RemotingServer, RequestHandler, ServerTls, TlsClientSettings, TlsMode,
    TlsServerSettings,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ECHO: i32 = 1;
const PRIORITY: i32 = 6;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Echoes `v` and the body, and says whether the connection is TLS and
/// which thread ran the request.
struct Echo {
    moved: AtomicUsize,
}

impl RequestHandler for Echo {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let thread = std::thread::current().name().unwrap_or("").to_string();
        Box::pin(async move {
            Some(
                RemotingCommand::success(&req)
                    .with("echo", req.field("v").unwrap_or(""))
                    .with("tls", conn.is_tls())
                    .with("thread", thread)
                    .with_body(req.body.clone()),
            )
        })
    }

    fn is_priority(&self, request: &RemotingCommand) -> bool {
        request.code == PRIORITY
    }

    fn on_priority_lane(&self, _conn: &Arc<Connection>) {
        self.moved.fetch_add(1, Ordering::SeqCst);
    }
}

fn echo() -> Arc<Echo> {
    Arc::new(Echo { moved: AtomicUsize::new(0) })
}

/// A CA, the certificates it signed, and a CA that signed none of them,
/// as PEM files in a temporary directory.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    other_ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    /// A client certificate from the other CA.
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert, key)
}

fn leaf(
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
    issuer: &(rcgen::Certificate, KeyPair),
) -> (rcgen::Certificate, KeyPair) {
    let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer.0, &issuer.1).unwrap();
    (cert, key)
}

fn write_pair(dir: &Path, name: &str, pair: &(rcgen::Certificate, KeyPair)) -> (PathBuf, PathBuf) {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, pair.0.pem()).unwrap();
    std::fs::write(&key, pair.1.serialize_pem()).unwrap();
    (cert, key)
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let authority = ca("spate test CA");
        let other = ca("some other CA");
        let (ca, _) = write_pair(dir.path(), "ca", &authority);
        let (other_ca, _) = write_pair(dir.path(), "other-ca", &other);
        let server = leaf(&["localhost", "127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth, &authority);
        let (server_cert, server_key) = write_pair(dir.path(), "server", &server);
        let client = leaf(&["client"], ExtendedKeyUsagePurpose::ClientAuth, &authority);
        let (client_cert, client_key) = write_pair(dir.path(), "client", &client);
        let stranger = leaf(&["stranger"], ExtendedKeyUsagePurpose::ClientAuth, &other);
        let (stranger_cert, stranger_key) = write_pair(dir.path(), "stranger", &stranger);
        Pki { _dir: dir, ca, other_ca, server_cert, server_key, client_cert, client_key, stranger_cert, stranger_key }
    }

    /// A server with the CA-signed certificate from its files.
    fn server(&self, mode: TlsMode) -> TlsServerSettings {
        TlsServerSettings {
            mode,
            cert_path: Some(self.server_cert.clone()),
            key_path: Some(self.server_key.clone()),
            ..TlsServerSettings::default()
        }
    }

    /// A client that verifies the server against `trust`.
    fn verifying_client(&self, trust: &Path) -> TlsClientSettings {
        TlsClientSettings {
            enable: true,
            auth_server: true,
            trust_cert_path: Some(trust.to_path_buf()),
            ..TlsClientSettings::default()
        }
    }
}

async fn serve(tls: ServerTls, cfg: ConnectionConfig) -> (RemotingServer, Arc<Echo>, String) {
    let handler = echo();
    let server = RemotingServer::bind_with_tls(
        "127.0.0.1:0".parse().unwrap(),
        cfg,
        handler.clone(),
        AcceptLimits::default(),
        tls,
    )
    .await
    .unwrap();
    let addr = server.local_addr().to_string();
    (server, handler, addr)
}

fn client(tls: Option<Arc<rustls::ClientConfig>>) -> RemotingClient {
    RemotingClient::new(ClientConfig { tls, ..ClientConfig::default() }, None)
}

fn tls_client(settings: &TlsClientSettings) -> RemotingClient {
    client(settings.client_tls().unwrap())
}

/// A client that trusts whatever certificate the server shows.
fn trusting_client() -> RemotingClient {
    tls_client(&TlsClientSettings { enable: true, ..TlsClientSettings::default() })
}

async fn echo_call(client: &RemotingClient, addr: &str, v: &str) -> Result<RemotingCommand, RemotingError> {
    client.invoke(addr, RemotingCommand::request(ECHO).with("v", v), CALL_TIMEOUT).await
}

/// Waits up to 5 s for `cond`.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(5), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads until the peer closes; the bytes read (a TLS alert, say). Panics
/// if the connection is still open after `within`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!("the server kept the connection open for {within:?}"),
            Ok(Ok(0) | Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_serves_tls_and_plaintext_on_one_port() {
    let pki = Pki::new();
    let tls = pki.server(TlsMode::Permissive).server_tls().unwrap();
    let (server, _h, addr) = serve(tls, ConnectionConfig::default()).await;
    let secure = Arc::new(tls_client(&pki.verifying_client(&pki.ca)));
    let plain = Arc::new(client(None));

    let mut calls = Vec::new();
    for i in 0..50 {
        for (c, is_tls) in [(secure.clone(), true), (plain.clone(), false)] {
            let addr = addr.clone();
            calls.push(tokio::spawn(async move {
                // Bodies up to 1 MiB: many TLS records per frame.
                let body = vec![i as u8; (i * 21_000) % (1 << 20)];
                let req = RemotingCommand::request(ECHO).with("v", i).with_body(body.clone());
                let resp = c.invoke(&addr, req, CALL_TIMEOUT).await.unwrap();
                assert_eq!(resp.field("echo"), Some(i.to_string().as_str()));
                assert_eq!(resp.field("tls"), Some(if is_tls { "true" } else { "false" }));
                assert_eq!(&resp.body[..], &body[..], "body of call {i}");
            }));
        }
    }
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(server.connection_count(), 2, "one connection per client");
    assert_eq!(server.admission_refusals(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforcing_closes_plaintext_and_serves_tls() {
    // Test mode: a self-signed certificate made in memory.
    let settings = TlsServerSettings { mode: TlsMode::Enforcing, test_mode: true, ..TlsServerSettings::default() };
    let (server, _h, addr) = serve(settings.server_tls().unwrap(), ConnectionConfig::default()).await;

    let plain = client(None);
    let refused = echo_call(&plain, &addr, "plain").await;
    assert!(refused.is_err(), "plaintext served in enforcing mode: {refused:?}");
    let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut frame = bytes::BytesMut::new();
    RemotingCommand::request(ECHO).encode(&mut frame);
    raw.write_all(&frame).await.unwrap();
    let answer = closed_by_server(&mut raw, Duration::from_secs(3)).await;
    assert!(answer.is_empty(), "plaintext got {} bytes back", answer.len());

    let secure = trusting_client();
    let resp = echo_call(&secure, &addr, "tls").await.unwrap();
    assert_eq!(resp.field("echo"), Some("tls"));
    assert_eq!(resp.field("tls"), Some("true"));
    eventually("both plaintext connections are counted as refused", || server.admission_refusals() == 2).await;
    assert_eq!(server.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_closes_tls_and_serves_plaintext() {
    let handler = echo();
    // `bind`, as every existing caller: TLS disabled.
    let server =
        RemotingServer::bind("127.0.0.1:0".parse().unwrap(), ConnectionConfig::default(), handler).await.unwrap();
    let addr = server.local_addr().to_string();

    let secure = trusting_client();
    match echo_call(&secure, &addr, "tls").await {
        Err(RemotingError::Connect { .. }) => {}
        other => panic!("a TLS client was not refused at the handshake: {other:?}"),
    }
    let resp = echo_call(&client(None), &addr, "plain").await.unwrap();
    assert_eq!(resp.field("tls"), Some("false"));
    eventually("the TLS connection is counted as refused", || server.admission_refusals() == 1).await;
}

/// The first flight of a real TLS client: a ClientHello.
fn client_hello() -> Vec<u8> {
    let config = TlsClientSettings::default().client_config().unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_first_bytes_close_only_their_own_connection() {
    let timeout = Duration::from_millis(600);
    let settings = TlsServerSettings { mode: TlsMode::Permissive, test_mode: true, ..TlsServerSettings::default() };
    let tls = settings.server_tls().unwrap().with_handshake_timeout(timeout);
    let (server, _h, addr) = serve(tls, ConnectionConfig::default()).await;

    // Healthy clients, one of each kind, calling all along.
    let stop = Arc::new(AtomicBool::new(false));
    let mut healthy = Vec::new();
    for c in [trusting_client(), client(None)] {
        let (stop, addr) = (stop.clone(), addr.clone());
        healthy.push(tokio::spawn(async move {
            let (mut calls, mut slowest) = (0, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                let resp = echo_call(&c, &addr, "still here").await.expect("a healthy client was disturbed");
                assert_eq!(resp.field("echo"), Some("still here"));
                slowest = slowest.max(started.elapsed());
                calls += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (calls, slowest)
        }));
    }
    eventually("the healthy clients are connected", || server.connection_count() == 2).await;

    // 0x16, then junk that is no TLS record.
    let mut junk = vec![0x16];
    let mut x: u32 = 0x9e37_79b9;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        junk.push(x as u8);
    }
    let hello = client_hello();
    let truncated = hello[..hello.len() / 2].to_vec();
    let mut hostile = Vec::new();
    for (what, bytes) in [("junk after 0x16", junk), ("a truncated ClientHello", truncated), ("silence", Vec::new())] {
        let addr = addr.clone();
        hostile.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
            s.write_all(&bytes).await.unwrap();
            let started = Instant::now();
            closed_by_server(&mut s, timeout + Duration::from_secs(2)).await;
            (what, started.elapsed())
        }));
    }
    // One that hangs up at once: dropped without counting.
    drop(tokio::net::TcpStream::connect(&addr).await.unwrap());
    for h in hostile {
        let (what, took) = h.await.unwrap();
        assert!(took <= timeout + Duration::from_millis(1500), "{what}: closed after {took:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.admission_refusals(), 3, "junk, truncated and silent peers refused; the hang-up not counted");
    assert_eq!(server.connection_count(), 2, "only the healthy connections are open");
    stop.store(true, Ordering::SeqCst);
    for h in healthy {
        let (calls, slowest) = h.await.unwrap();
        assert!(calls > 10, "only {calls} healthy calls");
        assert!(slowest < Duration::from_millis(500), "a healthy call took {slowest:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_certificate_is_verified_against_the_trust_file() {
    let pki = Pki::new();
    let (_server, _h, addr) = serve(pki.server(TlsMode::Enforcing).server_tls().unwrap(), Default::default()).await;

    let resp = echo_call(&tls_client(&pki.verifying_client(&pki.ca)), &addr, "trusted").await.unwrap();
    assert_eq!(resp.field("echo"), Some("trusted"));

    match echo_call(&tls_client(&pki.verifying_client(&pki.other_ca)), &addr, "x").await {
        Err(RemotingError::Connect { source, .. }) => {
            assert!(source.to_string().contains("certificate"), "{source}")
        }
        other => panic!("a server certificate from an untrusted CA was accepted: {other:?}"),
    }

    // The right CA, but the certificate is not for the name checked.
    let cfg = ClientConfig {
        tls: pki.verifying_client(&pki.ca).client_tls().unwrap(),
        tls_server_name: Some("broker.elsewhere.example".into()),
        ..ClientConfig::default()
    };
    let wrong_name = echo_call(&RemotingClient::new(cfg, None), &addr, "x").await;
    assert!(matches!(wrong_name, Err(RemotingError::Connect { .. })), "{wrong_name:?}");

    // authServer=false: anything is trusted (encrypted, not authenticated).
    let resp = echo_call(&trusting_client(), &addr, "anything").await.unwrap();
    assert_eq!(resp.field("tls"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_client_certificate_must_chain_to_the_trust_file() {
    let pki = Pki::new();
    let settings = TlsServerSettings {
        need_client_auth: ClientAuth::Require,
        auth_client: true,
        trust_cert_path: Some(pki.ca.clone()),
        ..pki.server(TlsMode::Enforcing)
    };
    let (server, _h, addr) = serve(settings.server_tls().unwrap(), Default::default()).await;

    // Under TLS 1.3 the client may finish its side of the handshake before
    // the server refuses it: the refusal shows as a failed first call.
    let anonymous = tls_client(&pki.verifying_client(&pki.ca));
    let refused = echo_call(&anonymous, &addr, "x").await;
    assert!(refused.is_err(), "a client without a certificate was served: {refused:?}");

    let stranger = TlsClientSettings {
        cert_path: Some(pki.stranger_cert.clone()),
        key_path: Some(pki.stranger_key.clone()),
        ..pki.verifying_client(&pki.ca)
    };
    let refused = echo_call(&tls_client(&stranger), &addr, "x").await;
    assert!(refused.is_err(), "a client certificate from another CA was accepted: {refused:?}");

    let member = TlsClientSettings {
        cert_path: Some(pki.client_cert.clone()),
        key_path: Some(pki.client_key.clone()),
        ..pki.verifying_client(&pki.ca)
    };
    let member = tls_client(&member);
    let resp = echo_call(&member, &addr, "member").await.unwrap();
    assert_eq!(resp.field("echo"), Some("member"));
    eventually("both refusals are counted", || server.admission_refusals() == 2).await;
    assert_eq!(server.connection_count(), 1, "only the member's connection is open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_moves_to_the_priority_lane() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let lane = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("lane".into())
        .spawn(move || {
            runtime.block_on(async move {
                let _ = stopped.await;
            })
        })
        .unwrap();
    let settings = TlsServerSettings { mode: TlsMode::Enforcing, test_mode: true, ..TlsServerSettings::default() };
    let cfg = ConnectionConfig { priority_lane: Some(lane), ..ConnectionConfig::default() };
    let (server, handler, addr) = serve(settings.server_tls().unwrap(), cfg).await;
    let c = Arc::new(trusting_client());

    let before = echo_call(&c, &addr, "before").await.unwrap();
    assert_ne!(before.field("thread"), Some("lane"));
    // A burst behind the priority request that moves the connection: some
    // of it read (and decrypted) before the move, the rest after.
    let mut calls = Vec::new();
    for i in 0..40 {
        let (c, addr) = (c.clone(), addr.clone());
        let code = if i % 3 == 0 { PRIORITY } else { ECHO };
        calls.push(tokio::spawn(async move {
            let req = RemotingCommand::request(code).with("v", i).with_body(vec![7u8; 30_000]);
            (code, i, c.invoke(&addr, req, CALL_TIMEOUT).await)
        }));
    }
    for call in calls {
        let (code, i, resp) = call.await.unwrap();
        let resp = resp.unwrap_or_else(|e| panic!("call {i} across the move failed: {e}"));
        assert_eq!(resp.field("echo"), Some(i.to_string().as_str()));
        assert_eq!(resp.body.len(), 30_000);
        if code == PRIORITY {
            assert_eq!(resp.field("thread"), Some("lane"), "priority request {i} ran on the lane");
        } else {
            assert_ne!(resp.field("thread"), Some("lane"), "request {i} went back to the connection's home runtime");
        }
    }
    assert_eq!(handler.moved.load(Ordering::SeqCst), 1, "the connection moved once");
    let after = echo_call(&c, &addr, "after").await.unwrap();
    assert_eq!(after.field("tls"), Some("true"));
    assert_eq!(server.connection_count(), 1, "the same connection throughout");

    drop(c);
    eventually("the moved TLS connection's close is seen", || server.connection_count() == 0).await;
    server.shutdown(Duration::from_secs(1)).await;
    let _ = stop.send(());
    thread.join().unwrap();
}
