//! Peers that misbehave at the connection level, against a real
//! `spate standalone`: one that pipelines pulls and never reads its
//! answers, one address holding many idle connections, and header numbers
//! out of range. Each must cost the process a bounded amount and leave it
//! serving everyone else.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::{call, pop_req, pull_req, raw_client, send_req, Standalone};
use spate_remoting::{request, response, RemotingCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Anonymous resident memory of `pid` in bytes (`RssAnon`: the heap, where
/// queued answers live; the store's mapped files are file-backed and do
/// not count).
fn rss_anon_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("RssAnon in /proc/<pid>/status");
    kb * 1024
}

/// An answer's header fields, read here by hand (JSON: the requests are
/// JSON), so the test does not lean on the codec it is testing.
#[derive(Debug)]
struct Answer {
    code: i64,
    opaque: i64,
    remark: String,
}

/// The next whole answer on `s`, or `None` when the peer closed (or reset)
/// the connection or nothing came within `wait`.
async fn read_answer(s: &mut TcpStream, buf: &mut BytesMut, wait: Duration) -> Option<Answer> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if buf.len() >= 8 {
            let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() >= 4 + total {
                let frame = buf.split_to(4 + total);
                let header_len = (u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) & 0xFF_FFFF) as usize;
                assert_eq!(frame[4], 0, "answers to JSON requests have JSON headers");
                let h: serde_json::Value = serde_json::from_slice(&frame[8..8 + header_len]).expect("a JSON header");
                return Some(Answer {
                    code: h["code"].as_i64().expect("code"),
                    opaque: h["opaque"].as_i64().expect("opaque"),
                    remark: h["remark"].as_str().unwrap_or_default().to_string(),
                });
            }
        }
        match tokio::time::timeout_at(deadline, s.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// A connection from `local_ip` (any of loopback's 127.0.0.0/8 on Linux).
async fn connect_from(local_ip: &str, to: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{local_ip}:0").parse().expect("address")).expect("bind the client address");
    socket.connect(to.parse::<SocketAddr>().expect("server address")).await.expect("connect")
}

fn runtime_info_req(opaque: i32) -> RemotingCommand {
    let mut req = RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO);
    req.opaque = opaque;
    req
}

fn route_req(opaque: i32) -> RemotingCommand {
    let mut req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "TBW102");
    req.opaque = opaque;
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pipelines_pulls_and_never_reads_costs_a_bounded_amount_and_is_closed() {
    pipelined_and_never_read(|i| pull_req("HP", 0, i % 200, 0, "*")).await;
}

/// The same with pops: 100 groups popping the 256 KiB messages, one each
/// per answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_pipelines_pops_and_never_reads_costs_a_bounded_amount_and_is_closed() {
    pipelined_and_never_read(|i| pop_req(&format!("hp{}", i % 100), "HP", 0, 32, 60_000, 0)).await;
}

/// 200 messages of 256 KiB, then 1,024 requests from `req` written on one
/// connection that never reads: the broker's heap grows by a bounded
/// amount, others are served, and the peer is let go after the write timeout.
async fn pipelined_and_never_read(req: impl Fn(i64) -> RemotingCommand) {
    const HIGH_WATER: u64 = 1 << 20;
    const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start_with(
        &dir.path().join("data"),
        &["writeBufferHighWaterMark=1048576", "writeBufferLowWaterMark=524288", "serverChannelWriteTimeoutMillis=3000"],
    );
    let client = raw_client();
    let body = vec![7u8; 256 << 10];
    for _ in 0..200 {
        let r = call(&client, &s.broker(), send_req("HP", 0, body.clone())).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }
    let pid = s.pid().expect("running");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_anon_bytes(pid);

    // 1,024 pulls of 256 KiB answers (256 MiB in all), written without
    // ever reading. Writing blocks once the broker stops reading us: that
    // is the back-pressure, so it runs on its own task.
    let mut stalled = TcpStream::connect(s.broker()).await.unwrap();
    let mut requests = BytesMut::new();
    for i in 0..1024 {
        let mut req = req(i);
        req.opaque = i as i32 + 1;
        req.encode(&mut requests);
    }
    let (_, mut write_half) = stalled.split();
    let _ = tokio::time::timeout(Duration::from_secs(2), write_half.write_all(&requests)).await;

    let mut peak = before;
    let until = Instant::now() + WRITE_TIMEOUT - Duration::from_millis(500);
    while Instant::now() < until {
        peak = peak.max(rss_anon_bytes(pid));
        // Everyone else is still served meanwhile.
        let r = call(&client, &s.broker(), pull_req("HP", 0, 0, 0, "*")).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let growth = peak.saturating_sub(before);
    eprintln!("broker heap growth with a non-reading peer: {} KiB", growth >> 10);
    // The high water mark, the answers being made when it was reached,
    // one answer per other client, and allocator slack; the unbounded
    // queue grew by hundreds of MiB here.
    assert!(
        growth < 32 * HIGH_WATER,
        "broker heap grew by {} MiB for a peer that does not read (writeBufferHighWaterMark 1 MiB)",
        growth >> 20
    );

    // Past the write timeout the broker lets the peer go: what it had
    // queued drains into our socket, then the connection ends.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sink = vec![0u8; 1 << 20];
    let mut drained = 0usize;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
    eprintln!("bytes left for the non-reading peer: {} KiB", drained >> 10);
    assert!(closed.is_ok(), "the broker kept a peer that did not read past its write timeout");
    assert!((drained as u64) < 64 * HIGH_WATER, "{} MiB were waiting for a peer that did not read", drained >> 20);
    assert!(s.log_text().contains("peer stopped reading its answers"), "no log of the closed peer");
    let r = call(&client, &s.broker(), pull_req("HP", 0, 199, 0, "*")).await;
    assert_eq!(r.code, response::SUCCESS, "a fresh client after the stalled peer: {:?}", r.remark);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection_of_the_broker_or_the_name_server() {
    const PER_ADDRESS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start_with(
        &dir.path().join("data"),
        &["serverMaxConnections=30", "serverMaxConnectionsPerAddress=20"],
    );
    for (server, req) in [(s.broker(), runtime_info_req as fn(i32) -> RemotingCommand), (s.namesrv(), route_req)] {
        // 40 connections from 127.0.0.1, each asking once: only the cap's
        // worth are served (the name server's count includes the broker's
        // own registration connection), the rest closed at accept.
        let mut held = Vec::new();
        let mut served = 0;
        for i in 0..40 {
            let mut c = TcpStream::connect(&server).await.unwrap();
            let mut buf = BytesMut::new();
            let ok = c.write_all(&req(i + 1).to_bytes()).await.is_ok()
                && read_answer(&mut c, &mut buf, Duration::from_secs(3)).await.is_some();
            served += ok as usize;
            held.push(c);
        }
        assert!(
            (PER_ADDRESS - 1..=PER_ADDRESS).contains(&served),
            "{server}: {served} of 40 connections from one address were served (cap {PER_ADDRESS})"
        );
        // A client from another address still gets in, though one address
        // holds more connections than serverMaxConnections allows them all.
        let mut other = connect_from("127.0.0.2", &server).await;
        other.write_all(&req(99).to_bytes()).await.unwrap();
        let mut buf = BytesMut::new();
        let answer = read_answer(&mut other, &mut buf, Duration::from_secs(5)).await;
        let answer = answer.unwrap_or_else(|| panic!("{server}: a client from 127.0.0.2 was locked out"));
        assert_eq!(answer.opaque, 99);
        drop(held);
    }
    let refusal_lines = s.log_text().matches("connection refused at accept").count();
    assert!(
        (1..=4).contains(&refusal_lines),
        "{refusal_lines} log lines for 40 refused connections: refusals must be rate-limited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_numbers_out_of_range_are_refused_not_wrapped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start_with(&dir.path().join("data"), &[]);
    let frame = |header: &str| {
        let mut f = Vec::new();
        f.extend_from_slice(&(4 + header.len() as i32).to_be_bytes());
        f.extend_from_slice(&(header.len() as i32).to_be_bytes());
        f.extend_from_slice(header.as_bytes());
        f
    };
    for server in [s.broker(), s.namesrv()] {
        // 2^31 wraps to i32::MIN; a request with that code must not be
        // treated as one (the old answer was REQUEST_CODE_NOT_SUPPORTED).
        let mut c = TcpStream::connect(&server).await.unwrap();
        c.write_all(&frame(r#"{"code":2147483648,"language":"JAVA","version":0,"opaque":5,"flag":0}"#)).await.unwrap();
        let mut buf = BytesMut::new();
        if let Some(answer) = read_answer(&mut c, &mut buf, Duration::from_secs(5)).await {
            assert_eq!(answer.opaque, 5);
            assert_eq!(answer.code, response::SYSTEM_ERROR as i64, "{server}: {}", answer.remark);
            assert!(answer.remark.contains("code"), "{}", answer.remark);
            // The stream is still in step: the next request on it is served.
            c.write_all(&route_req(6).to_bytes()).await.unwrap();
            let next = read_answer(&mut c, &mut buf, Duration::from_secs(5)).await.expect("the next request answered");
            assert_eq!(next.opaque, 6);
        }
        // An opaque out of range cannot be answered: only this connection closes.
        let mut c = TcpStream::connect(&server).await.unwrap();
        c.write_all(&frame(r#"{"code":105,"opaque":4294967297,"flag":0,"extFields":{"topic":"TBW102"}}"#))
            .await
            .unwrap();
        let mut buf = BytesMut::new();
        let answer = read_answer(&mut c, &mut buf, Duration::from_secs(5)).await;
        assert!(answer.is_none(), "{server}: a request with an unreadable opaque was answered: {answer:?}");
    }
    // And the process serves the next client.
    let client = raw_client();
    let r = call(&client, &s.namesrv(), route_req(0)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let r = call(&client, &s.broker(), runtime_info_req(0)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
}
