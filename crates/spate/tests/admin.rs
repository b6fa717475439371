//! `spate admin` against a real standalone broker: topics, groups and their
//! lag, offset reset with a consumer re-reading, message lookups, broker
//! status and config, and clear failures.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Standalone;
use parking_lot::Mutex;
use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageListener, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions,
};

fn admin(ns: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out =
        Command::new(env!("CARGO_BIN_EXE_spate")).args(["admin", "-n", ns, "--json"]).args(args).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})")))
}

/// Runs an admin command until `ok` holds for its output (5 s at most).
async fn eventually(ns: &str, args: &[&str], ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = admin(ns, args).unwrap();
        if ok(&v) {
            return;
        }
        assert!(Instant::now() < deadline, "{args:?} never reached the expected state: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn consume_all(ns: &str, group: &str, want: usize) -> usize {
    let mut cfg = ClientConfig::new(ns).with_instance_name(format!("{group}-{want}"));
    cfg.persist_consumer_offset_interval = Duration::from_millis(100);
    let mut o = PushConsumerOptions::new(group);
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    let got = Arc::new(Mutex::new(0usize));
    let g = got.clone();
    let c = PushConsumer::new(cfg, o).unwrap();
    c.subscribe("Adm", "*").unwrap();
    c.start(MessageListener::concurrently(move |m, _| {
        *g.lock() += m.len();
        ConsumeStatus::ConsumeSuccess
    }))
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while *got.lock() < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // offsets committed
    c.shutdown().await;
    let n = *got.lock();
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_topics_groups_lag_reset_and_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let broker = spate.broker();

    let created = admin(&ns, &["topic", "create", "Adm", "-r", "2", "-w", "2"]).unwrap();
    assert_eq!(created["brokers"][0]["broker"], "broker-a");
    let deadline = Instant::now() + Duration::from_secs(5);
    while admin(&ns, &["topic", "route", "Adm"]).is_err() {
        assert!(Instant::now() < deadline, "route never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(admin(&ns, &["topic", "list"]).unwrap().as_array().unwrap().iter().any(|t| t == "Adm"));
    assert_eq!(admin(&ns, &["topic", "route", "Adm"]).unwrap()["queueDatas"][0]["writeQueueNums"], 2);

    let p = Producer::start(ClientConfig::new(&ns).with_instance_name("adm-p"), ProducerOptions::new("adm-pg"))
        .await
        .unwrap();
    let mut offset_ids = Vec::new();
    for i in 0..10 {
        let r = p.send(Message::new("Adm", format!("m{i}")).with_keys([format!("k{i}")])).await.unwrap();
        offset_ids.push(r.offset_msg_id);
    }
    // (Queue offsets follow the acknowledgements once dispatched.)
    let queued = |v: &serde_json::Value| -> i64 {
        v.as_array().unwrap().iter().map(|q| q["max_offset"].as_i64().unwrap()).sum()
    };
    eventually(&ns, &["topic", "status", "Adm"], |v| queued(v) == 10).await;

    // Lag follows what was produced and consumed.
    assert_eq!(consume_all(&ns, "adm-group", 10).await, 10);
    eventually(&ns, &["group", "progress", "adm-group"], |v| v["total_lag"] == 0).await;
    for i in 10..15 {
        p.send(Message::new("Adm", format!("m{i}"))).await.unwrap();
    }
    eventually(&ns, &["group", "progress", "adm-group"], |v| v["total_lag"] == 5).await;
    assert!(admin(&ns, &["group", "list"]).unwrap().as_array().unwrap().iter().any(|g| g == "adm-group"));

    // Reset to the beginning: the group reads all 15 again.
    let reset = admin(&ns, &["group", "reset-offset", "adm-group", "-t", "Adm", "--timestamp", "0"]).unwrap();
    assert_eq!(reset.as_array().unwrap().len(), 2);
    assert_eq!(admin(&ns, &["group", "progress", "adm-group"]).unwrap()["total_lag"], 15);
    assert_eq!(consume_all(&ns, "adm-group", 15).await, 15, "the consumer re-read everything after the reset");

    // Lookups.
    let by_id = admin(&ns, &["message", "id", &offset_ids[3]]).unwrap();
    assert_eq!(by_id[0]["body"], "m3");
    let by_key = admin(&ns, &["message", "key", "Adm", "k7"]).unwrap();
    assert_eq!(by_key[0]["body"], "m7");
    let by_uniq = admin(&ns, &["message", "id", by_key[0]["uniq_key"].as_str().unwrap(), "-t", "Adm"]).unwrap();
    assert_eq!(by_uniq[0]["body"], "m7");
    let all = admin(&ns, &["message", "range", "Adm", "--begin", "0"]).unwrap();
    let mut bodies: Vec<String> =
        all.as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().to_string()).collect();
    bodies.sort();
    let mut want: Vec<String> = (0..15).map(|i| format!("m{i}")).collect();
    want.sort();
    assert_eq!(bodies, want, "every message stored in the range");
    let later = by_key[0]["store_timestamp"].as_i64().unwrap() + 3_600_000;
    let none = admin(&ns, &["message", "range", "Adm", "--begin", &later.to_string()]).unwrap_err();
    assert!(none.contains("no message found"), "{none}");

    // Broker status and config.
    let st = admin(&ns, &["broker", "status", &broker]).unwrap();
    assert_eq!(st["msgPutTotalTodayNow"], "15");
    admin(&ns, &["broker", "config", "set", &broker, "defaultTopicQueueNums", "4"]).unwrap();
    assert_eq!(admin(&ns, &["broker", "config", "get", &broker]).unwrap()["defaultTopicQueueNums"], "4");
    let refused = admin(&ns, &["broker", "config", "set", &broker, "listenPort", "1"]).unwrap_err();
    assert!(refused.contains("listenPort"), "{refused}");

    // Delete; then clear errors.
    admin(&ns, &["topic", "delete", "Adm"]).unwrap();
    assert!(!admin(&ns, &["topic", "list"]).unwrap().as_array().unwrap().iter().any(|t| t == "Adm"));
    let err = admin(&ns, &["topic", "status", "Adm"]).unwrap_err();
    assert!(err.contains("does not exist"), "{err}");
    let err = admin(&format!("127.0.0.1:{}", common::free_port()), &["topic", "list"]).unwrap_err();
    assert!(err.contains("connect"), "{err}");
    p.shutdown().await;
}
