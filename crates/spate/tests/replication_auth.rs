//! Slaves authenticate on the HA port, against real processes: with
//! `authenticationEnabled` a slave holding the group's inner credentials
//! replicates; a peer that says Hello without a valid proof (none, a
//! forged one, one captured from another connection) and a slave with the
//! wrong secret get no log byte. A master without authentication still
//! serves a slave that has credentials.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::{call, same_commit_log, send_req, BrokerProc, Proc};
use spate_broker::ha::protocol::{Frame, Nonce, NONCE_LEN, PROOF_LEN, PROTOCOL_VERSION};
use spate_broker::ha::slave_auth::{prove, Transcript};
use spate_remoting::{response, ClientConfig, Credentials, RemotingClient};

/// The group's inner credentials: a Super user on every broker.
const INNER: (&str, &str) = ("broker-inner", "inner-secret-1");

/// The segment size `BrokerProc` configures: a Hello must match it.
const SEGMENT: u64 = 33554432;

fn inner_lines(auth: bool, ak: &str, sk: &str) -> Vec<String> {
    vec![
        format!("authenticationEnabled={auth}"),
        format!(r#"innerClientAuthenticationCredentials={{"accessKey":"{ak}","secretKey":"{sk}"}}"#),
    ]
}

fn master_lines() -> Vec<String> {
    vec!["brokerName=broker-a".into(), "brokerId=0".into(), "brokerRole=ASYNC_MASTER".into()]
}

fn slave_lines(id: i64, master: &BrokerProc) -> Vec<String> {
    vec![
        "brokerName=broker-a".into(),
        format!("brokerId={id}"),
        "brokerRole=SLAVE".into(),
        format!("haMasterAddress={}", master.ha_addr()),
    ]
}

fn signed(ak: &str, sk: &str) -> RemotingClient {
    let mut c = ClientConfig::default();
    c.connection.credentials = Some(Credentials::new(ak, sk));
    RemotingClient::new(c, None)
}

async fn burst(c: &RemotingClient, broker: &str, n: usize) {
    for i in 0..n {
        let r = call(c, broker, send_req("Auth", (i % 4) as i32, vec![b'x'; 200])).await;
        assert_eq!(r.code, response::SUCCESS, "send {i}: {:?}", r.remark);
    }
}

fn wait_identical(a: &BrokerProc, b: &BrokerProc, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match same_commit_log(&a.commit_log_files(), &b.commit_log_files()) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: {e}\n--- master log:\n{}\n--- slave log:\n{}", a.log_text(), b.log_text())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

fn refused_total(metrics: &str, reason: &str) -> u64 {
    let series = format!("spate_replication_auth_refused_total{{reason=\"{reason}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// A peer on the HA port speaking the frames over a plain socket.
struct FakeSlave {
    s: TcpStream,
    buf: BytesMut,
    /// Its Hello as sent (what a proof covers).
    hello: Bytes,
}

impl FakeSlave {
    /// Connects and says Hello as slave `id` of broker-a with an empty log.
    fn hello(ha_addr: &str, id: i64) -> FakeSlave {
        let s = TcpStream::connect(ha_addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let hello = Frame::Hello {
            broker_name: "broker-a".into(),
            broker_id: id,
            max_offset: 0,
            segment_size: SEGMENT,
            epochs: vec![],
            version: PROTOCOL_VERSION,
        }
        .encoded();
        let mut f = FakeSlave { s, buf: BytesMut::new(), hello };
        f.s.write_all(&f.hello.clone()).unwrap();
        f
    }

    /// The next frame; `None` once the master closed the connection.
    fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(f) = Frame::decode(&mut self.buf).unwrap() {
                return Some(f);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("the master neither answered nor closed: {e}"),
            }
        }
    }

    fn challenge(&mut self) -> Nonce {
        match self.next() {
            Some(Frame::Challenge { nonce }) => nonce,
            other => panic!("expected a Challenge, got {other:?}"),
        }
    }

    fn send(&mut self, f: &Frame) {
        self.s.write_all(&f.encoded()).unwrap();
    }

    /// The proof `sk` makes for this connection's Hello and `master_nonce`.
    fn proof(&self, master_nonce: &Nonce, ak: &str, sk: &str) -> Frame {
        let nonce = [0x42; NONCE_LEN];
        let t = Transcript { master_nonce, slave_nonce: &nonce, access_key: ak, hello: &self.hello };
        Frame::Proof { access_key: ak.into(), nonce, mac: prove(sk, &t) }
    }

    /// Reads to the end: every frame must be a Refuse saying authentication
    /// failed, and there must be one (a master that only closes says nothing).
    fn expect_refused(mut self, what: &str) -> String {
        let mut reasons = Vec::new();
        while let Some(f) = self.next() {
            match f {
                Frame::Refuse { reason } => reasons.push(reason),
                other => panic!("{what}: the master sent {} to an unauthenticated peer", other.kind_name()),
            }
        }
        assert_eq!(reasons.len(), 1, "{what}: {reasons:?}");
        assert!(reasons[0].starts_with("authentication failed: "), "{what}: {}", reasons[0]);
        reasons.remove(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_slave_proving_a_super_users_secret_gets_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let metrics_port = common::free_port();
    let mut lines = master_lines();
    lines.extend(inner_lines(true, INNER.0, INNER.1));
    lines.push(format!("metricsPromExporterPort={metrics_port}"));
    let master = BrokerProc::start(dir.path(), "m", &ns.addr(), &lines);
    let mut lines = slave_lines(1, &master);
    lines.extend(inner_lines(true, INNER.0, INNER.1));
    let slave = BrokerProc::start(dir.path(), "s", &ns.addr(), &lines);
    let root = signed(INNER.0, INNER.1);

    // The slave with the group's credentials replicates.
    burst(&root, &master.addr(), 300).await;
    wait_identical(&master, &slave, "the authenticated slave");

    // A Hello answered with a forged proof: refused, no data.
    let mut fake = FakeSlave::hello(&master.ha_addr(), 7);
    fake.challenge();
    fake.send(&Frame::Proof { access_key: INNER.0.into(), nonce: [1; NONCE_LEN], mac: [0; PROOF_LEN] });
    let why = fake.expect_refused("a forged proof");
    assert!(why.contains("check proof failed for AccessKey broker-inner"), "{why}");
    assert!(!why.contains(INNER.1));

    // A Hello and then silence: refused once the handshake's time is up.
    let started = Instant::now();
    let mut fake = FakeSlave::hello(&master.ha_addr(), 7);
    fake.challenge();
    let why = fake.expect_refused("a silent peer");
    assert!(why.contains("no proof"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(8), "held for {:?}", started.elapsed());

    // Something other than a Proof: refused.
    let mut fake = FakeSlave::hello(&master.ha_addr(), 7);
    fake.challenge();
    fake.send(&Frame::Ack { max_offset: 0 });
    assert!(fake.expect_refused("an Ack for a Proof").contains("expected Proof, got Ack"));

    // A valid proof captured on one connection, replayed on another.
    let mut first = FakeSlave::hello(&master.ha_addr(), 7);
    let first_nonce = first.challenge();
    let captured = first.proof(&first_nonce, INNER.0, INNER.1);
    drop(first);
    let mut replay = FakeSlave::hello(&master.ha_addr(), 7);
    replay.challenge();
    replay.send(&captured);
    assert!(replay.expect_refused("a replayed proof").contains("check proof failed"));

    // The control: the same fake with the right secret is welcomed and
    // streamed the log, so the refusals above are the proofs', not the fake's.
    let mut good = FakeSlave::hello(&master.ha_addr(), 7);
    let challenge = good.challenge();
    let proof = good.proof(&challenge, INNER.0, INNER.1);
    good.send(&proof);
    match good.next() {
        Some(Frame::Welcome { start_offset: 0, .. }) => {}
        other => panic!("the right secret was not welcomed: {other:?}"),
    }
    good.send(&Frame::Ack { max_offset: 0 });
    match good.next() {
        Some(Frame::Data { offset: 0, bytes, .. }) => assert!(!bytes.is_empty()),
        other => panic!("expected the log from offset 0, got {other:?}"),
    }
    drop(good);

    // A real slave with the wrong secret: refused, and its log stays empty
    // while the master's grows.
    let mut lines = slave_lines(2, &master);
    lines.extend(inner_lines(true, INNER.0, "not-the-secret"));
    let wrong = BrokerProc::start(dir.path(), "w", &ns.addr(), &lines);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !wrong.log_text().contains("authentication failed: check proof failed for AccessKey broker-inner") {
        assert!(Instant::now() < deadline, "the wrong secret was never refused; log:\n{}", wrong.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    burst(&root, &master.addr(), 100).await;
    wait_identical(&master, &slave, "the authenticated slave after the refusals");
    // Two more reconnect attempts (one a second) see the new bytes refused too.
    std::thread::sleep(Duration::from_millis(2500));
    let held: usize = wrong.commit_log_files().iter().map(|(_, b)| b.iter().filter(|x| **x != 0).count()).sum();
    assert_eq!(held, 0, "a slave with the wrong secret holds log bytes");
    assert!(!wrong.log_text().contains("not-the-secret"), "a secret reached a log");
    assert!(!master.log_text().contains(INNER.1), "a secret reached the master's log");

    // Counted by reason, and logged (at a bounded rate) on the master.
    let metrics = scrape(metrics_port);
    assert!(refused_total(&metrics, "bad_proof") >= 3, "{metrics}");
    assert!(refused_total(&metrics, "no_proof") >= 2, "{metrics}");
    assert!(master.log_text().contains("replication: authentication failed"), "{}", master.log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slave_with_credentials_follows_a_master_without_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let master = BrokerProc::start(dir.path(), "m", &ns.addr(), &master_lines());
    let mut lines = slave_lines(1, &master);
    lines.extend(inner_lines(false, INNER.0, INNER.1));
    let slave = BrokerProc::start(dir.path(), "s", &ns.addr(), &lines);
    burst(&common::raw_client(), &master.addr(), 200).await;
    wait_identical(&master, &slave, "a slave with credentials, a master without authentication");
    // And no challenge was sent: an anonymous peer is welcomed at once.
    let mut fake = FakeSlave::hello(&master.ha_addr(), 5);
    assert!(matches!(fake.next(), Some(Frame::Welcome { .. })), "a master without authentication challenged");
}
