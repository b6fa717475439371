//! Process lifecycle end to end: several name servers, registration and
//! removal, clean shutdown that keeps offsets and topics, and kill -9 under
//! sync-flush load losing nothing that was acknowledged.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{call, free_port, raw_client, Standalone};
use spate_common::message::decode_record;
use spate_remoting::protocol::{json, ClusterInfo, TopicList};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

fn send_req(topic: &str, queue_id: i32, body: Vec<u8>) -> RemotingCommand {
    RemotingCommand::request(request::SEND_MESSAGE_V2)
        .with("a", "pg")
        .with("b", topic)
        .with("c", "TBW102")
        .with("d", 4)
        .with("e", queue_id)
        .with("f", 0)
        .with("g", 1)
        .with("h", 0)
        .with("i", "")
        .with_body(Bytes::from(body))
}

async fn pull_all(c: &RemotingClient, broker: &str, topic: &str, queue_id: i32, from: i64) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut offset = from;
    loop {
        let req = RemotingCommand::request(request::PULL_MESSAGE)
            .with("consumerGroup", "g")
            .with("topic", topic)
            .with("queueId", queue_id)
            .with("queueOffset", offset)
            .with("maxMsgNums", 32)
            .with("sysFlag", 0);
        let r = call(c, broker, req).await;
        if r.code != response::SUCCESS {
            return out;
        }
        let mut rest = &r.body[..];
        while !rest.is_empty() {
            let rec = decode_record(rest, true).expect("intact record");
            out.push((rec.queue_offset, rec.body.to_vec()));
            rest = &rest[rec.total_size..];
        }
        offset = r.field("nextBeginOffset").and_then(|v| v.parse().ok()).expect("nextBeginOffset");
    }
}

async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_registers_with_every_name_server_and_leaves_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let mut namesrvs: Vec<_> = ports
        .iter()
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_spate"))
                .args(["namesrv", "--port", &p.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let broker_port = free_port();
    let conf = dir.path().join("broker.conf");
    std::fs::write(
        &conf,
        format!(
            "brokerClusterName=C1\nbrokerName=b1\nbrokerId=0\nlistenPort={broker_port}\nbrokerIP1=127.0.0.1\nnamesrvAddr=127.0.0.1:{};127.0.0.1:{}\nstorePathRootDir={}\nmappedFileSizeCommitLog=16777216\n",
            ports[0],
            ports[1],
            dir.path().join("store").display()
        ),
    )
    .unwrap();
    let mut broker = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["broker", "-c", conf.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let c = raw_client();
    let broker_addr = format!("127.0.0.1:{broker_port}");
    for p in ports {
        let ns = format!("127.0.0.1:{p}");
        let info = wait_for("registration", async || {
            let r = c
                .invoke(&ns, RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO), Duration::from_secs(2))
                .await
                .ok()?;
            let info: ClusterInfo = json::decode(&r.body, "cluster").ok()?;
            info.broker_addr_table.contains_key("b1").then_some(info)
        })
        .await;
        assert_eq!(info.broker_addr_table["b1"].master_addr(), Some(broker_addr.as_str()));
        assert!(info.cluster_addr_table["C1"].contains("b1"));
    }
    // A topic created on the broker reaches both name servers quickly.
    let create = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", "Fresh")
        .with("readQueueNums", 2)
        .with("writeQueueNums", 2)
        .with("perm", 6);
    assert_eq!(call(&c, &broker_addr, create).await.code, response::SUCCESS);
    let t0 = Instant::now();
    for p in ports {
        let ns = format!("127.0.0.1:{p}");
        wait_for("route", async || {
            let r =
                call(&c, &ns, RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Fresh")).await;
            (r.code == response::SUCCESS).then_some(())
        })
        .await;
        let r = call(&c, &ns, RemotingCommand::request(request::GET_TOPICS_BY_CLUSTER).with("cluster", "C1")).await;
        let list: TopicList = json::decode(&r.body, "topics").unwrap();
        assert!(list.topic_list.contains("Fresh"));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "route took {:?}", t0.elapsed());
    let ns0 = format!("127.0.0.1:{}", ports[0]);
    let del = RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV).with("topic", "Fresh");
    assert_eq!(call(&c, &ns0, del).await.code, response::SUCCESS);
    let r = call(&c, &ns0, RemotingCommand::request(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER)).await;
    assert!(!json::decode::<TopicList>(&r.body, "topics").unwrap().topic_list.contains("Fresh"));

    // SIGTERM: exit 0, and the name servers forget the broker.
    Command::new("kill").args(["-15", &broker.id().to_string()]).status().unwrap();
    let status = broker.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    for p in ports {
        let ns = format!("127.0.0.1:{p}");
        wait_for("removal", async || {
            let r = call(&c, &ns, RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "b1")).await;
            (r.code == response::TOPIC_NOT_EXIST).then_some(())
        })
        .await;
    }
    for n in &mut namesrvs {
        let _ = n.kill();
        let _ = n.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clean_shutdown_keeps_offsets_and_topics() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let create = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", "Kept")
        .with("readQueueNums", 3)
        .with("writeQueueNums", 3);
    assert_eq!(call(&c, &spate.broker(), create).await.code, response::SUCCESS);
    for i in 0..10 {
        assert_eq!(call(&c, &spate.broker(), send_req("Kept", 2, vec![i])).await.code, response::SUCCESS);
    }
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "g")
        .with("topic", "Kept")
        .with("queueId", 2)
        .with("commitOffset", 7);
    assert_eq!(call(&c, &spate.broker(), commit).await.code, response::SUCCESS);
    // Stop well before the 5 s periodic persist: shutdown must persist.
    assert_eq!(spate.terminate(), Some(0), "clean exit; log:\n{}", spate.log_text());
    c.close_all();
    spate.restart();
    let q = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with("consumerGroup", "g")
        .with("topic", "Kept")
        .with("queueId", 2);
    assert_eq!(call(&c, &spate.broker(), q).await.field("offset"), Some("7"));
    let r = call(&c, &spate.broker(), RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG)).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"Kept\""));
    let got = pull_all(&c, &spate.broker(), "Kept", 2, 7).await;
    assert_eq!(got.iter().map(|(o, _)| *o).collect::<Vec<_>>(), vec![7, 8, 9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_sync_flush_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start_with(
        &dir.path().join("data"),
        &["flushDiskType=SYNC_FLUSH", "mappedFileSizeCommitLog=8388608"],
    );
    let c = Arc::new(raw_client());
    let broker = spate.broker();
    let create = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", "Load")
        .with("readQueueNums", 4)
        .with("writeQueueNums", 4);
    assert_eq!(call(&c, &broker, create).await.code, response::SUCCESS);
    // Four senders, each on its own queue, record what the broker acknowledged.
    let acked = Arc::new(parking_lot_free::Acked::default());
    let mut senders = Vec::new();
    for q in 0..4 {
        let (c, broker, acked) = (c.clone(), broker.clone(), acked.clone());
        senders.push(tokio::spawn(async move {
            for i in 0u32.. {
                let body = format!("q{q}-m{i}-{}", "x".repeat((i % 7) as usize * 100)).into_bytes();
                match c.invoke(&broker, send_req("Load", q, body.clone()), Duration::from_secs(2)).await {
                    Ok(r) if r.code == response::SUCCESS => {
                        let off: i64 = r.field("queueOffset").and_then(|v| v.parse().ok()).expect("queueOffset");
                        acked.push(q, off, body);
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A consumer commits its progress on queue 0 mid-way.
    let committed = acked.count(0) as i64 / 2;
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "g")
        .with("topic", "Load")
        .with("queueId", 0)
        .with("commitOffset", committed);
    assert_eq!(call(&c, &broker, commit).await.code, response::SUCCESS);
    tokio::time::sleep(Duration::from_millis(5_500)).await; // past flushConsumerOffsetInterval
    tokio::time::sleep(Duration::from_millis(300)).await;
    spate.kill9();
    for s in senders {
        let _ = s.await;
    }
    c.close_all();
    let total: usize = (0..4).map(|q| acked.count(q)).sum();
    assert!(total > 100, "only {total} sends were acknowledged");
    spate.restart();
    let q = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with("consumerGroup", "g")
        .with("topic", "Load")
        .with("queueId", 0);
    let resumed: i64 = call(&c, &spate.broker(), q)
        .await
        .field("offset")
        .and_then(|v| v.parse().ok())
        .expect("committed offset survived");
    assert_eq!(resumed, committed);
    for qid in 0..4 {
        let stored: BTreeMap<i64, Vec<u8>> = pull_all(&c, &spate.broker(), "Load", qid, 0).await.into_iter().collect();
        for (off, body) in acked.of(qid) {
            assert_eq!(stored.get(&off), Some(&body), "acknowledged message q{qid}@{off} missing or altered");
        }
    }
    // The consumer resumes at its committed offset and sees the rest in order.
    let rest = pull_all(&c, &spate.broker(), "Load", 0, resumed).await;
    assert_eq!(rest.first().map(|(o, _)| *o), Some(resumed));
    assert!(rest.windows(2).all(|w| w[1].0 == w[0].0 + 1));
    eprintln!("acknowledged {total} sends before kill -9; all present after restart");
}

/// A tiny shared log of acknowledged sends.
mod parking_lot_free {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Acked(Mutex<Vec<(i32, i64, Vec<u8>)>>);

    impl Acked {
        pub fn push(&self, q: i32, off: i64, body: Vec<u8>) {
            self.0.lock().unwrap().push((q, off, body));
        }
        pub fn count(&self, q: i32) -> usize {
            self.0.lock().unwrap().iter().filter(|e| e.0 == q).count()
        }
        pub fn of(&self, q: i32) -> Vec<(i64, Vec<u8>)> {
            self.0.lock().unwrap().iter().filter(|e| e.0 == q).map(|e| (e.1, e.2.clone())).collect()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_update_topic_creates_it_on_every_master() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", &spate.namesrv(), "topic", "create", "AdminMade", "-r", "3", "-w", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("topic AdminMade set on broker-a"));
    let c = raw_client();
    let route = wait_for("route", async || {
        let r = call(
            &c,
            &spate.namesrv(),
            RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "AdminMade"),
        )
        .await;
        (r.code == response::SUCCESS)
            .then(|| json::decode::<spate_remoting::protocol::TopicRouteData>(&r.body, "route").unwrap())
    })
    .await;
    assert_eq!(route.queue_datas[0].write_queue_nums, 3);
    // A name server that does not answer is a clear error, not a hang.
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", &format!("127.0.0.1:{}", free_port()), "topic", "create", "X"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connect"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_created_topics_survive_kill_9_and_deleted_topics_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    for i in 0..3 {
        assert_eq!(call(&c, &spate.broker(), send_req("Auto", 0, vec![i])).await.code, response::SUCCESS);
    }
    spate.kill9();
    c.close_all();
    spate.restart();
    // The topic (created by the first send) is still known after the crash.
    let got = wait_for("the recovered messages", async || {
        let got = pull_all(&c, &spate.broker(), "Auto", 0, 0).await;
        (got.len() >= 3).then_some(got)
    })
    .await;
    assert_eq!(got.len(), 3, "auto-created topic and its messages survive kill -9");
    // Delete it, send again: the queue starts over at offset 0.
    let del = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", "Auto");
    assert_eq!(call(&c, &spate.broker(), del).await.code, response::SUCCESS);
    let r = call(&c, &spate.broker(), send_req("Auto", 0, vec![9])).await;
    assert_eq!((r.code, r.field("queueOffset")), (response::SUCCESS, Some("0")));
    let got = wait_for("the new message", async || {
        let got = pull_all(&c, &spate.broker(), "Auto", 0, 0).await;
        (!got.is_empty()).then_some(got)
    })
    .await;
    assert_eq!(got, vec![(0, vec![9])]);
}
