//! `/metrics` end to end: Prometheus text that parses, counters that match
//! the messages sent, consumer lag, and the name server's brokers alive.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{call, free_port, pop_req, raw_client, Standalone};
use spate_remoting::{request, response, RemotingCommand};

/// GET /metrics; returns (series -> value), checking every line's syntax.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("metrics port");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"));
    let mut out = BTreeMap::new();
    let mut typed = std::collections::BTreeSet::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut p = rest.split_whitespace();
            let (name, kind) = (p.next().unwrap(), p.next().unwrap());
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        let name = series.split('{').next().unwrap();
        let family = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
        assert!(typed.contains(name) || typed.contains(family), "{name} has no # TYPE line");
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{name}");
        out.insert(series.to_string(), v);
    }
    out
}

fn send(topic: &str, queue_id: i32) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE)
        .with("producerGroup", "pg")
        .with("topic", topic)
        .with("defaultTopic", "TBW102")
        .with("defaultTopicQueueNums", 2)
        .with("queueId", queue_id)
        .with("properties", "")
        .with_body(Bytes::from_static(&[7u8; 100]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_metrics_match_what_was_sent() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let spate = Standalone::start_with(&dir.path().join("data"), &[&format!("metricsPromExporterPort={port}")]);
    let c = raw_client();
    for i in 0..20 {
        assert_eq!(call(&c, &spate.broker(), send("M", i % 2)).await.code, response::SUCCESS);
    }
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "mg")
        .with("topic", "M")
        .with("queueId", 0)
        .with("commitOffset", 4);
    assert_eq!(call(&c, &spate.broker(), commit).await.code, response::SUCCESS);
    let pull = RemotingCommand::request(request::PULL_MESSAGE)
        .with("consumerGroup", "mg")
        .with("topic", "M")
        .with("queueId", 1)
        .with("queueOffset", 0)
        .with("maxMsgNums", 32)
        .with("sysFlag", 0);
    // Dispatch follows the acknowledgement closely.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(&c, &spate.broker(), pull.clone()).await;
        if r.code == response::SUCCESS && r.field("nextBeginOffset") == Some("10") {
            break;
        }
        assert!(Instant::now() < deadline, "messages never dispatched");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let m = scrape(port);
    assert_eq!(m["rocketmq_messages_in_total{topic=\"M\"}"], 20.0);
    assert_eq!(
        m["rocketmq_throughput_in_total{topic=\"M\"}"] as u64 % 20,
        0,
        "bytes are a multiple of the record size"
    );
    assert!(m["rocketmq_messages_out_total{topic=\"M\"}"] >= 10.0);
    assert!(m["rocketmq_rpc_latency_seconds_count{request=\"send\",protocol_type=\"remoting\"}"] >= 20.0);
    assert_eq!(m["rocketmq_consumer_lag_messages{group=\"mg\",topic=\"M\",queue_id=\"0\"}"], 6.0);
    assert_eq!(m["spate_store_writable"], 1.0);
    // A bad send shows as a rejection.
    let r = call(&c, &spate.broker(), send("bad topic!", 0)).await;
    assert_ne!(r.code, response::SUCCESS);
    let m = scrape(port);
    assert_eq!(m["rocketmq_send_rejected_total{reason=\"invalid_parameter\"}"], 1.0);
    // Pops: three messages popped for 100 ms and never acked come back, on time.
    let r = call(&c, &spate.broker(), pop_req("popg", "M", 0, 3, 100, 0)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(r.field("msgOffsetInfo").map(|o| o.split(',').count()), Some(3), "{:?}", r.field("msgOffsetInfo"));
    let deadline = Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = scrape(port);
        if m.get("spate_pop_revived_total") == Some(&3.0) {
            break m;
        }
        assert!(Instant::now() < deadline, "the pops were never revived: {:?}", m.get("spate_pop_revived_total"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(m["spate_pop_inflight"], 3.0, "held, visible again");
    assert_eq!(m["spate_pop_acked_total"], 0.0);
    assert_eq!(m["spate_pop_revive_lateness_seconds_count"], 3.0);
    assert_eq!(m["spate_pop_revive_lateness_seconds_bucket{le=\"0.5\"}"], 3.0, "revived within 0.5 s of due");
}

#[test]
fn name_server_metrics_count_live_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    let mut ns = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["namesrv", "--port", &port.to_string(), "--metrics-port", &metrics.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", metrics)).is_err() {
        assert!(Instant::now() < deadline, "metrics port never opened");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(scrape(metrics)["rocketmq_brokers_alive"], 0.0);
    let _broker = common::Proc::broker(dir.path(), "broker-m", &format!("127.0.0.1:{port}"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while scrape(metrics)["rocketmq_brokers_alive"] != 1.0 {
        assert!(Instant::now() < deadline, "the broker never showed as alive");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = ns.kill();
    let _ = ns.wait();
}
