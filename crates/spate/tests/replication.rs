//! Master/slave replication with real processes: byte-identical commit
//! logs, catching up after a restart, cutting a diverged tail, and what a
//! SYNC_MASTER acknowledges.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{call, raw_client, same_commit_log, send_req, BrokerProc, Proc};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

/// Sends `n` messages of a few hundred bytes to `broker`, all acknowledged with SUCCESS.
async fn burst(c: &RemotingClient, broker: &str, topic: &str, tag: u8, n: usize) {
    for i in 0..n {
        let body = vec![tag; 100 + (i * 37) % 400];
        let r = call(c, broker, send_req(topic, (i % 4) as i32, body)).await;
        assert_eq!(r.code, response::SUCCESS, "send {i}: {:?}", r.remark);
    }
}

/// Waits until `a` and `b` hold byte-identical commit logs.
fn wait_identical(a: &BrokerProc, b: &BrokerProc, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match same_commit_log(&a.commit_log_files(), &b.commit_log_files()) {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => {
                panic!(
                    "{what}: {e}\n--- {} log:\n{}\n--- {} log:\n{}",
                    a.conf.display(),
                    a.log_text(),
                    b.conf.display(),
                    b.log_text()
                )
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn slave_lines(id: i64, master: &BrokerProc) -> Vec<String> {
    vec![
        "brokerName=broker-a".into(),
        format!("brokerId={id}"),
        "brokerRole=SLAVE".into(),
        format!("haMasterAddress={}", master.ha_addr()),
    ]
}

fn master_lines(role: &str) -> Vec<String> {
    vec!["brokerName=broker-a".into(), "brokerId=0".into(), format!("brokerRole={role}")]
}

/// 256 KiB segments (and messages capped to fit): bursts of a few hundred
/// KiB roll segments, so blank markers cross the replication stream too.
fn small_segments(mut lines: Vec<String>) -> Vec<String> {
    lines.push("mappedFileSizeCommitLog=262144".into());
    lines.push("maxMessageSize=65536".into());
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slaves_copy_the_log_byte_for_byte_catch_up_and_cut_a_diverged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let c = raw_client();
    let metrics_port = common::free_port();
    let mut lines = small_segments(master_lines("ASYNC_MASTER"));
    lines.push(format!("metricsPromExporterPort={metrics_port}"));
    let mut master = BrokerProc::start(dir.path(), "m", &ns.addr(), &lines);
    let mut s1 = BrokerProc::start(dir.path(), "s1", &ns.addr(), &small_segments(slave_lines(1, &master)));
    let mut s2 = BrokerProc::start(dir.path(), "s2", &ns.addr(), &small_segments(slave_lines(2, &master)));

    // A burst, then both slaves hold exactly the master's bytes.
    burst(&c, &master.addr(), "Rep", 1, 600).await;
    wait_identical(&master, &s1, "slave 1 after the first burst");
    wait_identical(&master, &s2, "slave 2 after the first burst");

    // Admin shows the group: the master with two caught-up slaves, the
    // slaves following it, the same epoch list everywhere.
    let deadline = Instant::now() + Duration::from_secs(10);
    let groups = loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["admin", "-n", &ns.addr(), "ha", "status", "--json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let m = &v[0]["brokers"][0]["status"];
        let caught_up = m["slaves"].as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|s| s["lagBytes"] == 0));
        if caught_up && v[0]["brokers"].as_array().map(|b| b.len()) == Some(3) {
            break v;
        }
        assert!(Instant::now() < deadline, "admin never showed two caught-up slaves: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let brokers = groups[0]["brokers"].as_array().unwrap();
    let m = &brokers[0]["status"];
    assert_eq!(m["role"], "AsyncMaster");
    assert!(m["slaves"].as_array().unwrap().iter().all(|s| s["mode"] == "Sync" && s["lagMs"] == 0), "{m}");
    assert!(!m["epochs"].as_array().unwrap().is_empty());
    for b in &brokers[1..] {
        let st = &b["status"];
        assert_eq!(st["role"], "Slave");
        assert_eq!(st["link"]["connected"], true, "{st}");
        assert_eq!(st["epochs"], m["epochs"], "a slave holds its master's epochs");
        assert_eq!(st["maxOffset"], m["maxOffset"]);
    }
    let table = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", &ns.addr(), "ha", "status"])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("broker-a") && table.contains("lag 0 bytes") && table.contains("following"), "{table}");
    // The master exports each slave's lag.
    let metrics = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };
    assert!(metrics.contains("spate_replication_lag_bytes{slave_id=\"1\"} 0"), "{metrics}");
    assert!(metrics.contains("spate_replication_in_sync_slaves 2"), "{metrics}");

    // A slave killed mid-stream and restarted catches up.
    s1.kill9();
    burst(&c, &master.addr(), "Rep", 2, 400).await;
    s1.spawn();
    burst(&c, &master.addr(), "Rep", 3, 100).await;
    wait_identical(&master, &s1, "slave 1 after kill -9 and restart");
    wait_identical(&master, &s2, "slave 2 while slave 1 was away");
    // A slave refuses writes: clients send to the master.
    let r = call(&c, &s2.addr(), send_req("Rep", 0, b"to a slave".to_vec())).await;
    assert_eq!(r.code, response::SERVICE_NOT_AVAILABLE, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("slave"));
    // Its topics are the master's copy, read-only here.
    let r = call(
        &c,
        &s2.addr(),
        RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
            .with("topic", "OnSlave")
            .with("readQueueNums", 1)
            .with("writeQueueNums", 1)
            .with("perm", 6),
    )
    .await;
    assert_eq!(r.code, response::NO_PERMISSION, "{:?}", r.remark);

    // Divergence: slave 2 stops; the master writes a tail slave 2 never
    // sees, then dies. Slave 2 becomes the master (a new epoch) and takes
    // writes; the old master returns as its slave and must cut that tail.
    s1.kill9();
    s2.kill9();
    burst(&c, &master.addr(), "Rep", 4, 300).await;
    master.kill9();
    // Restarted once more as master (a new epoch at its end, no writes)
    // before it is demoted: that epoch must go with the cut tail.
    master.spawn();
    master.kill9();
    s2.write_conf(&ns.addr(), &small_segments(master_lines("ASYNC_MASTER")));
    s2.spawn();
    burst(&c, &s2.addr(), "Rep", 5, 200).await;
    master.write_conf(&ns.addr(), &small_segments(slave_lines(3, &s2)));
    master.spawn();
    wait_identical(&s2, &master, "the old master after cutting its diverged tail");
    assert!(master.log_text().contains("cutting a tail"), "the old master said it truncated");
    let used = s2.commit_log_files().iter().filter(|(_, b)| b.iter().any(|x| *x != 0)).count();
    assert!(used >= 3, "bursts rolled segments (blank markers replicated): {used} in use");
    // And it serves the new master's messages, not its lost tail, at the same queue offsets.
    let got = |b: &BrokerProc| {
        let addr = b.addr();
        let c = raw_client();
        async move {
            let mut max = BTreeMap::new();
            for q in 0..4 {
                let r = call(
                    &c,
                    &addr,
                    RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Rep").with("queueId", q),
                )
                .await;
                max.insert(q, r.field("offset").unwrap_or("?").to_string());
            }
            max
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while got(&master).await != got(&s2).await {
        assert!(Instant::now() < deadline, "queue offsets differ: {:?} vs {:?}", got(&master).await, got(&s2).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strict_sync_master_acknowledges_only_replicated_messages() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let c = raw_client();
    let mut strict = master_lines("SYNC_MASTER");
    strict.push("haStrictSync=true".into());
    let mut master = BrokerProc::start(dir.path(), "m", &ns.addr(), &strict);
    // No slave yet: a strict send is refused before it is stored.
    let r = call(&c, &master.addr(), send_req("Sync", 0, b"alone".to_vec())).await;
    assert_eq!(r.code, response::SYSTEM_ERROR, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("in-sync replicas not enough"));

    let mut slave = BrokerProc::start(dir.path(), "s", &ns.addr(), &slave_lines(1, &master));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut acked: BTreeMap<i32, i64> = BTreeMap::new();
    let mut i: i32 = 0;
    while acked.values().sum::<i64>() < 300 {
        let q: i32 = i % 4;
        let r = call(&c, &master.addr(), send_req("Sync", q, vec![7; 256])).await;
        i += 1;
        if r.code == response::SUCCESS {
            let off: i64 = r.field("queueOffset").unwrap().parse().unwrap();
            acked.insert(q, acked.get(&q).copied().unwrap_or(-1).max(off));
        } else {
            assert!(Instant::now() < deadline, "sends never succeeded: {} {:?}", r.code, r.remark);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Frozen right after the last acknowledgement (so nothing more can
    // reach the slave), then killed: the slave's own store already holds
    // every acknowledged message.
    master.pause(true);
    for (q, last) in &acked {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let r = call(
                &c,
                &slave.addr(),
                RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Sync").with("queueId", *q),
            )
            .await;
            let max: i64 = r.field("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            if max > *last {
                break;
            }
            assert!(Instant::now() < deadline, "queue {q}: slave has {max}, acknowledged up to {last}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    master.kill9();
    // Slave down: strict sends fail clearly; non-strict ones succeed with
    // upstream's SLAVE_NOT_AVAILABLE.
    slave.kill9();
    master.spawn();
    let r = call(&c, &master.addr(), send_req("Sync", 0, b"no slave".to_vec())).await;
    assert_eq!(r.code, response::SYSTEM_ERROR, "{:?}", r.remark);
    master.kill9();
    master.write_conf(&ns.addr(), &master_lines("SYNC_MASTER"));
    master.spawn();
    let r = call(&c, &master.addr(), send_req("Sync", 0, b"no slave".to_vec())).await;
    assert_eq!(r.code, response::SLAVE_NOT_AVAILABLE, "{:?}", r.remark);
    assert!(r.field("msgId").is_some(), "stored: the answer names the message");
}

/// Waits until the name server's route for `topic` lists exactly the broker
/// ids `ids` for broker-a.
async fn wait_route_ids(ns: &str, topic: &str, ids: &[i64]) {
    use spate_remoting::protocol::{json, TopicRouteData};
    let c = raw_client();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&c, ns, RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic)).await;
        let have: Vec<i64> = if r.code == response::SUCCESS {
            let route: TopicRouteData = json::decode(&r.body, "route").unwrap();
            route.broker_datas.iter().flat_map(|b| b.broker_addrs.keys().copied()).collect()
        } else {
            Vec::new()
        };
        if have == ids {
            return;
        }
        assert!(Instant::now() < deadline, "route of {topic} lists {have:?}, want {ids:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_through_a_master_outage_from_the_slave() {
    use parking_lot::Mutex;
    use spate_client::{
        ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageListener, Producer, ProducerOptions,
        PushConsumer, PushConsumerOptions,
    };
    use std::collections::HashSet;
    use std::sync::Arc;

    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let mut master = BrokerProc::start(dir.path(), "m", &ns.addr(), &master_lines("ASYNC_MASTER"));
    let mut slave_conf = slave_lines(1, &master);
    slave_conf.push("slaveSyncMetadataInterval=300".into());
    let slave = BrokerProc::start(dir.path(), "s", &ns.addr(), &slave_conf);
    let mut cfg = ClientConfig::new(&ns.addr()).with_instance_name("ha-read");
    cfg.poll_name_server_interval = Duration::from_millis(500);
    let producer =
        Producer::start(cfg.clone().with_instance_name("ha-read-p"), ProducerOptions::new("pg_ha")).await.unwrap();
    for i in 0..200 {
        producer.send(Message::new("HaRead", format!("a{i}"))).await.unwrap();
    }
    wait_identical(&master, &slave, "the slave before the outage");
    // The slave has the topic (copied metadata) and registers it.
    let c = raw_client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(
        &call(&c, &slave.addr(), RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG)).await.body,
    )
    .contains("HaRead")
    {
        assert!(Instant::now() < deadline, "the slave never copied the topic");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The master dies; a consumer starting now reads everything from the slave.
    master.kill9();
    wait_route_ids(&ns.addr(), "HaRead", &[1]).await;
    let got: Arc<Mutex<HashSet<String>>> = Arc::default();
    let g = got.clone();
    let mut o = PushConsumerOptions::new("cg_ha");
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    o.rebalance_interval = Duration::from_secs(1);
    let consumer = PushConsumer::new(cfg.clone().with_instance_name("ha-read-c"), o).unwrap();
    consumer.subscribe("HaRead", "*").unwrap();
    consumer
        .start(MessageListener::concurrently(move |msgs, _| {
            g.lock().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()));
            ConsumeStatus::ConsumeSuccess
        }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().len() < 200 {
        assert!(Instant::now() < deadline, "read {} of 200 from the slave", got.lock().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The master returns: new messages reach the consumer, and its progress
    // is committed to the master again.
    master.spawn();
    wait_route_ids(&ns.addr(), "HaRead", &[0, 1]).await;
    for i in 0..100 {
        producer.send(Message::new("HaRead", format!("b{i}"))).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.lock().len() < 300 {
        assert!(Instant::now() < deadline, "read {} of 300 after the master returned", got.lock().len());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let want: HashSet<String> = (0..200).map(|i| format!("a{i}")).chain((0..100).map(|i| format!("b{i}"))).collect();
    assert_eq!(*got.lock(), want);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut total = 0;
        for q in 0..4 {
            let r = call(
                &c,
                &master.addr(),
                RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
                    .with("consumerGroup", "cg_ha")
                    .with("topic", "HaRead")
                    .with("queueId", q),
            )
            .await;
            total += r.field("offset").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
        }
        if total == 300 {
            break;
        }
        assert!(Instant::now() < deadline, "the master holds committed offsets summing to {total}, want 300");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    consumer.shutdown().await;
    producer.shutdown().await;

    // The topic is deleted on the master: the slave drops it and its queues
    // too (a promoted slave must not bring it back).
    let del = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", "HaRead");
    assert_eq!(call(&c, &master.addr(), del).await.code, response::SUCCESS);
    let max_on_slave =
        |q: i32| RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "HaRead").with("queueId", q);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut total = 0;
        for q in 0..4 {
            total += call(&c, &slave.addr(), max_on_slave(q))
                .await
                .field("offset")
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(-1);
        }
        if total == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the slave still has {total} messages queued for the deleted topic");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Rate limits are set on the master and copied to the slave, which
    // refuses to change them itself.
    let rule = br#"{"target":"topic","name":"HaRead","op":"pull","rate":10,"burst":10}"#;
    let set = |addr: &str| {
        let req = RemotingCommand::request(request::SPATE_UPDATE_LIMIT).with_body(bytes::Bytes::from_static(rule));
        let (c, addr) = (raw_client(), addr.to_string());
        async move { call(&c, &addr, req).await }
    };
    assert_eq!(set(&master.addr()).await.code, response::SUCCESS);
    assert_eq!(set(&slave.addr()).await.code, response::NO_PERMISSION);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = call(&c, &slave.addr(), RemotingCommand::request(request::SPATE_GET_LIMITS)).await;
        if String::from_utf8_lossy(&r.body).contains("\"HaRead\"") {
            break;
        }
        assert!(Instant::now() < deadline, "the slave never copied the master's limit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_slave_times_sends_out_then_is_dropped_by_the_heartbeat_check() {
    let dir = tempfile::tempdir().unwrap();
    let ns = Proc::namesrv();
    let c = raw_client();
    let mut lines = master_lines("SYNC_MASTER");
    lines.extend([
        "haSyncTimeout=400".to_string(),
        "haHousekeepingInterval=1500".into(),
        "haSendHeartbeatInterval=300".into(),
    ]);
    let master = BrokerProc::start(dir.path(), "m", &ns.addr(), &lines);
    let mut slave_conf = slave_lines(1, &master);
    slave_conf.extend(["haHousekeepingInterval=1500".to_string(), "haSendHeartbeatInterval=300".into()]);
    let slave = BrokerProc::start(dir.path(), "s", &ns.addr(), &slave_conf);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(&c, &master.addr(), send_req("Hung", 0, vec![1; 100])).await;
        if r.code == response::SUCCESS {
            break;
        }
        assert!(Instant::now() < deadline, "the slave never joined: {} {:?}", r.code, r.remark);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The slave hangs: a send waits haSyncTimeout, then FLUSH_SLAVE_TIMEOUT.
    slave.pause(true);
    let started = Instant::now();
    let r = call(&c, &master.addr(), send_req("Hung", 0, vec![2; 100])).await;
    assert_eq!(r.code, response::FLUSH_SLAVE_TIMEOUT, "{:?}", r.remark);
    assert!(started.elapsed() >= Duration::from_millis(350), "waited {:?}", started.elapsed());
    // Silent past haHousekeepingInterval: the master drops it, and sends
    // answer SLAVE_NOT_AVAILABLE at once instead of waiting.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let started = Instant::now();
        let r = call(&c, &master.addr(), send_req("Hung", 0, vec![3; 100])).await;
        // (A send whose wait straddles the drop answers SLAVE_NOT_AVAILABLE late.)
        if r.code == response::SLAVE_NOT_AVAILABLE && started.elapsed() < Duration::from_millis(300) {
            break;
        }
        assert!([response::FLUSH_SLAVE_TIMEOUT, response::SLAVE_NOT_AVAILABLE].contains(&r.code), "{:?}", r.remark);
        assert!(Instant::now() < deadline, "the hung slave was never dropped");
    }
    // Back: it reconnects, catches up, and sends are replicated again.
    slave.pause(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = call(&c, &master.addr(), send_req("Hung", 0, vec![4; 100])).await;
        if r.code == response::SUCCESS {
            break;
        }
        assert!(Instant::now() < deadline, "the slave never came back: {} {:?}", r.code, r.remark);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_identical(&master, &slave, "the slave after it resumed");
}
