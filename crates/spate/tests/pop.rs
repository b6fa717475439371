//! POP consumption (issue 21) against a real `spate standalone` process
//! over real TCP, with RocketMQ 5's remoting codes: pop, ack, change of
//! invisible time, their durability across kill -9, revive and the DLQ,
//! FIFO, and consumers sharing one queue.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{call, pop_req, raw_client, send_req, Standalone};
use spate_common::message::{decode_record, property};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

/// One popped message: queue offset, reconsume times, receipt handle, body.
#[derive(Debug, Clone)]
struct Popped {
    offset: i64,
    reconsume: i32,
    handle: String,
    body: Vec<u8>,
}

async fn pop(c: &RemotingClient, broker: &str, req: RemotingCommand) -> Vec<Popped> {
    let r = call(c, broker, req).await;
    if r.code == response::POLLING_TIMEOUT || r.code == response::PULL_NOT_FOUND {
        return Vec::new();
    }
    assert_eq!(r.code, response::SUCCESS, "pop: {:?}", r.remark);
    let mut out = Vec::new();
    let mut body = &r.body[..];
    while body.len() >= 4 {
        let len = i32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
        let rec = decode_record(&body[..len], false).expect("a popped record");
        out.push(Popped {
            offset: rec.queue_offset,
            reconsume: rec.reconsume_times,
            handle: rec.property("POP_CK").expect("every popped message carries POP_CK").to_string(),
            body: rec.body.to_vec(),
        });
        body = &body[len..];
    }
    let listed = r.field("msgOffsetInfo").expect("msgOffsetInfo");
    let offsets: Vec<String> = out.iter().map(|p| p.offset.to_string()).collect();
    assert!(listed.ends_with(&offsets.join(",")), "msgOffsetInfo {listed} lists {offsets:?}");
    out
}

fn handle_req(code: i32, group: &str, topic: &str, p: &Popped) -> RemotingCommand {
    let queue_id: i32 = p.handle.split(' ').nth(6).and_then(|q| q.parse().ok()).unwrap_or(-1);
    RemotingCommand::request(code)
        .with("consumerGroup", group)
        .with("topic", topic)
        .with("queueId", queue_id)
        .with("extraInfo", p.handle.clone())
        .with("offset", p.offset)
}

async fn ack(c: &RemotingClient, broker: &str, group: &str, topic: &str, p: &Popped) -> RemotingCommand {
    call(c, broker, handle_req(request::ACK_MESSAGE, group, topic, p)).await
}

/// Changes the invisible time; the new handle is built as RocketMQ's client
/// builds it, from the answer's `popTime`.
async fn change(c: &RemotingClient, broker: &str, group: &str, topic: &str, p: &Popped, ms: i64) -> Option<Popped> {
    let r =
        call(c, broker, handle_req(request::CHANGE_MESSAGE_INVISIBLETIME, group, topic, p).with("invisibleTime", ms))
            .await;
    if r.code != response::SUCCESS {
        return None;
    }
    let f: Vec<&str> = p.handle.split(' ').collect();
    let handle = format!(
        "{} {} {} {} {} {} {} {}",
        p.offset,
        r.field("popTime").expect("popTime"),
        r.field("invisibleTime").expect("invisibleTime"),
        r.field("reviveQid").expect("reviveQid"),
        f[4],
        f[5],
        f[6],
        p.offset
    );
    Some(Popped { handle, ..p.clone() })
}

/// `spate admin --json` against the name server.
fn admin_json(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", ns, "--json"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn produce(c: &RemotingClient, broker: &str, topic: &str, queue_id: i32, n: usize) {
    for i in 0..n {
        let r = call(c, broker, send_req(topic, queue_id, format!("m{i}").into_bytes())).await;
        assert_eq!(r.code, response::SUCCESS, "send: {:?}", r.remark);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pops_acks_and_changes_survive_kill9_and_what_expires_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    produce(&c, &b, "PopT", 0, 10).await;

    let first = pop(&c, &b, pop_req("pg1", "PopT", 0, 4, 60_000, 0)).await;
    assert_eq!(first.iter().map(|p| p.offset).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert!(first.iter().all(|p| p.reconsume == 0));
    assert_eq!(first[0].body, b"m0");
    // Nobody else gets them while they are invisible.
    let other = pop(&c, &b, pop_req("pg1", "PopT", 0, 32, 60_000, 0)).await;
    assert_eq!(other.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5, 6, 7, 8, 9]);

    assert_eq!(ack(&c, &b, "pg1", "PopT", &first[0]).await.code, response::SUCCESS);
    let again = ack(&c, &b, "pg1", "PopT", &first[0]).await;
    assert_eq!(again.code, response::NO_MESSAGE, "a second ack of one handle is refused");
    assert!(again.remark.unwrap_or_default().contains("stale"));
    let changed = change(&c, &b, "pg1", "PopT", &first[1], 1000).await.expect("change answered");
    assert_ne!(changed.handle, first[1].handle);
    assert_eq!(ack(&c, &b, "pg1", "PopT", &first[1]).await.code, response::NO_MESSAGE, "the old handle is dead");

    // Forged handles: refused with the reason, nothing changes.
    for forged in ["", "1 2 3", "x 1 60000 0 0 b 0 3", "0 1 60000 0 0 other-broker 0 3", "0 1 60000 0 7 b 0 3"] {
        let p = Popped { handle: forged.into(), ..first[3].clone() };
        let r = ack(&c, &b, "pg1", "PopT", &p).await;
        assert_eq!(r.code, response::INVALID_PARAMETER, "forged handle {forged:?}: {:?}", r.remark);
    }
    let wrong_offset = Popped { offset: 2, ..first[3].clone() };
    assert_eq!(ack(&c, &b, "pg1", "PopT", &wrong_offset).await.code, response::INVALID_PARAMETER);

    // kill -9: every answered change is in the journal.
    s.kill9();
    s.restart();
    let b = s.broker();
    assert_eq!(ack(&c, &b, "pg1", "PopT", &first[0]).await.code, response::NO_MESSAGE, "acked before the crash");
    assert_eq!(ack(&c, &b, "pg1", "PopT", &first[2]).await.code, response::SUCCESS, "in flight across the crash");
    assert_eq!(ack(&c, &b, "pg1", "PopT", &first[1]).await.code, response::NO_MESSAGE, "changed before the crash");

    // Offset 1's invisible time (1 s) passed: it comes back with attempt 2,
    // ahead of anything new; 3..9 are still invisible.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    produce(&c, &b, "PopT", 0, 1).await;
    let back = pop(&c, &b, pop_req("pg1", "PopT", 0, 32, 60_000, 0)).await;
    assert_eq!(back.iter().map(|p| (p.offset, p.reconsume)).collect::<Vec<_>>(), [(1, 1), (10, 0)]);
    assert_eq!(ack(&c, &b, "pg1", "PopT", &changed).await.code, response::NO_MESSAGE, "popped again: new handle");
    assert_eq!(ack(&c, &b, "pg1", "PopT", &back[0]).await.code, response::SUCCESS);

    // Another group reads the same topic from its start, independently.
    let g2 = pop(&c, &b, pop_req("pg2", "PopT", 0, 32, 60_000, 0)).await;
    assert_eq!(g2.len(), 11);
    assert!(s.log_text().contains("pop state replayed from the journal"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_messages_are_revived_on_time_then_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    // A group allowed one redelivery.
    let body = br#"{"groupName":"dlqg","retryMaxTimes":1,"consumeEnable":true}"#.to_vec();
    let r = call(
        &c,
        &b,
        RemotingCommand::request(request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP).with_body(bytes::Bytes::from(body)),
    )
    .await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    produce(&c, &b, "PopD", 0, 1).await;

    let one = pop(&c, &b, pop_req("dlqg", "PopD", 0, 1, 300, 0)).await;
    assert_eq!(one.len(), 1);
    // A long-polling pop is woken by the revive, not by its timeout.
    let started = Instant::now();
    let two = pop(&c, &b, pop_req("dlqg", "PopD", 0, 1, 300, 5_000)).await;
    let waited = started.elapsed();
    assert_eq!(two.iter().map(|p| (p.offset, p.reconsume)).collect::<Vec<_>>(), [(0, 1)]);
    assert!(waited < Duration::from_millis(1500), "revived late: the pop waited {waited:?}");
    // Past retryMaxTimes: to %DLQ%dlqg, not popped again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(pop(&c, &b, pop_req("dlqg", "PopD", 0, 1, 300, 0)).await.is_empty());
    let dlq = call(&c, &b, common::pull_req("%DLQ%dlqg", 0, 0, 0, "*")).await;
    assert_eq!(dlq.code, response::SUCCESS, "the DLQ holds it: {:?}", dlq.remark);
    let rec = decode_record(&dlq.body, false).unwrap();
    assert_eq!(rec.body, b"m0");
    assert_eq!(rec.reconsume_times, 2);
    assert_eq!(rec.property(property::RETRY_TOPIC), Some("PopD"));
    // What an operator sees.
    let p = admin_json(&s.namesrv(), &["group", "progress", "dlqg"]);
    let pop = &p["pop"][0];
    assert_eq!((pop["redelivered"].as_u64(), pop["deadLettered"].as_u64()), (Some(1), Some(1)), "{p}");
    assert_eq!(pop["queues"][0]["inFlight"], 0, "{p}");
    assert_eq!(pop["queues"][0]["popOffset"], 1, "{p}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_pop_holds_the_queue_until_its_batch_is_acked() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    produce(&c, &b, "PopF", 0, 6).await;
    let fifo = |attempt: &str| pop_req("fg", "PopF", 0, 3, 60_000, 0).with("order", true).with("attemptId", attempt);
    let batch = pop(&c, &b, fifo("a1")).await;
    assert_eq!(batch.iter().map(|p| p.offset).collect::<Vec<_>>(), [0, 1, 2]);
    let p = admin_json(&s.namesrv(), &["group", "progress", "fg"]);
    let q = &p["pop"][0]["queues"][0];
    assert_eq!(
        (q["inFlight"].as_u64(), q["popOffset"].as_u64(), q["brokerOffset"].as_u64()),
        (Some(3), Some(3), Some(6)),
        "{p}"
    );
    assert!(q["oldestInFlightAgeMs"].as_u64().is_some(), "{p}");
    assert!(pop(&c, &b, fifo("a2")).await.is_empty(), "held: nothing later for anyone");
    let retried = pop(&c, &b, fifo("a1")).await;
    assert_eq!(retried.iter().map(|p| p.offset).collect::<Vec<_>>(), [0, 1, 2], "the same attempt gets its batch");
    for p in &retried {
        assert_eq!(ack(&c, &b, "fg", "PopF", p).await.code, response::SUCCESS);
    }
    let next = pop(&c, &b, fifo("a3")).await;
    assert_eq!(next.iter().map(|p| p.offset).collect::<Vec<_>>(), [3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_consumers_share_one_queue_and_consume_each_message_once() {
    const N: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let b = s.broker();
    produce(&raw_client(), &b, "PopS", 0, N).await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let c = raw_client();
            let mut got = Vec::new();
            let mut empty = 0;
            while empty < 3 {
                let batch = pop(&c, &b, pop_req("sg", "PopS", -1, 16, 30_000, 0)).await;
                if batch.is_empty() {
                    empty += 1;
                    continue;
                }
                empty = 0;
                for p in batch {
                    assert_eq!(ack(&c, &b, "sg", "PopS", &p).await.code, response::SUCCESS);
                    got.push(p.body);
                }
            }
            got
        }));
    }
    let mut seen: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut per_consumer = Vec::new();
    for t in tasks {
        let got = t.await.unwrap();
        per_consumer.push(got.len());
        for body in got {
            *seen.entry(body).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), N, "every message consumed");
    assert!(seen.values().all(|n| *n == 1), "each exactly once");
    assert_eq!(per_consumer.iter().sum::<usize>(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_replays_from_the_latest_snapshot_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start_with(&dir.path().join("d"), &["popSnapshotIntervalMillis=100"]);
    let (c, b) = (raw_client(), s.broker());
    produce(&c, &b, "PopN", 0, 8).await;
    let before = pop(&c, &b, pop_req("ng", "PopN", 0, 4, 60_000, 0)).await;
    assert_eq!(ack(&c, &b, "ng", "PopN", &before[0]).await.code, response::SUCCESS);
    // A snapshot is written, then more changes follow it in the journal.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !s.log_text().contains("pop state snapshot written") {
        assert!(Instant::now() < deadline, "no snapshot was written");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ack(&c, &b, "ng", "PopN", &before[1]).await.code, response::SUCCESS);
    let after = pop(&c, &b, pop_req("ng", "PopN", 0, 2, 60_000, 0)).await;
    assert_eq!(after.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);

    // The snapshot's place was persisted with it (the offset table's own
    // round is 5 s away): kill -9 now.
    s.kill9();
    s.restart();
    let b = s.broker();
    assert_eq!(ack(&c, &b, "ng", "PopN", &before[0]).await.code, response::NO_MESSAGE, "acked before the snapshot");
    assert_eq!(ack(&c, &b, "ng", "PopN", &before[1]).await.code, response::NO_MESSAGE, "acked after it");
    for p in [&before[2], &before[3], &after[0], &after[1]] {
        assert_eq!(ack(&c, &b, "ng", "PopN", p).await.code, response::SUCCESS, "in flight at the crash: {}", p.offset);
    }
    let rest = pop(&c, &b, pop_req("ng", "PopN", 0, 32, 60_000, 0)).await;
    assert_eq!(rest.iter().map(|p| p.offset).collect::<Vec<_>>(), [6, 7]);
    assert!(
        s.log_text().contains("pop journal replay starts at its latest snapshot"),
        "the replay began at a snapshot"
    );
}

/// A topic with one queue, made with the admin code.
async fn one_queue_topic(c: &RemotingClient, broker: &str, topic: &str) {
    let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", topic)
        .with("defaultTopic", "TBW102")
        .with("readQueueNums", 1)
        .with("writeQueueNums", 1)
        .with("perm", 6)
        .with("topicFilterType", "SINGLE_TAG");
    let r = call(c, broker, req).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
}

async fn group_with_max_reconsume(c: &RemotingClient, broker: &str, group: &str, max: i32) {
    let body = format!(r#"{{"groupName":"{group}","retryMaxTimes":{max},"consumeEnable":true}}"#);
    let req =
        RemotingCommand::request(request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP).with_body(bytes::Bytes::from(body));
    let r = call(c, broker, req).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
}

async fn produce_bodies(ns: &str, topic: &str, n: usize) {
    use spate_client::{ClientConfig, Message, Producer, ProducerOptions};
    let p = Producer::start(ClientConfig::new(ns).with_instance_name("pop-p"), ProducerOptions::new("pop-pg"))
        .await
        .unwrap();
    for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
        let batch = chunk.iter().map(|i| Message::new(topic, format!("m{i}").into_bytes())).collect();
        p.send_batch(batch).await.unwrap();
    }
    p.shutdown().await;
}

/// Every message of a DLQ topic's queue 0, by raw pulls.
async fn dlq_bodies(c: &RemotingClient, broker: &str, group: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let r = call(c, broker, common::pull_req(&format!("%DLQ%{group}"), 0, offset, 0, "*")).await;
        if r.code != response::SUCCESS {
            return out;
        }
        let mut body = &r.body[..];
        while body.len() >= 4 {
            let len = i32::from_be_bytes(body[..4].try_into().unwrap()) as usize;
            out.push(decode_record(&body[..len], false).unwrap().body.to_vec());
            body = &body[len..];
        }
        offset = r.field("nextBeginOffset").unwrap().parse().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_consumers_share_a_queue_and_never_acked_messages_come_back_then_go_to_the_dlq() {
    use spate_client::{ClientConfig, SimpleConsumer, SimpleConsumerOptions};
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopSC").await;
    group_with_max_reconsume(&c, &b, "scg", 1).await;
    produce_bodies(&s.namesrv(), "PopSC", N).await;

    // Every tenth message is never acked by anyone.
    let never = |body: &[u8]| std::str::from_utf8(&body[1..]).unwrap().parse::<usize>().unwrap() % 10 == 0;
    let mut tasks = Vec::new();
    for i in 0..3 {
        let ns = s.namesrv();
        tasks.push(tokio::spawn(async move {
            let mut o = SimpleConsumerOptions::new("scg");
            o.await_duration = Duration::from_millis(500);
            let config = ClientConfig::new(&ns).with_instance_name(format!("sc{i}"));
            let consumer = SimpleConsumer::new(config, o).unwrap();
            consumer.subscribe("PopSC", "*").unwrap();
            consumer.start().await.unwrap();
            let (mut acked, mut unacked) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut idle = 0;
            // Until nothing is handed out for a while after the second
            // deliveries of the never-acked ones have expired.
            while idle < 8 && Instant::now() < deadline {
                let got = consumer.receive(32, Duration::from_secs(2)).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                // Consumer 0 acks each batch at once (BATCH_ACK_MESSAGE), the others one by one.
                let mut batch = Vec::new();
                for m in got {
                    if never(&m.message.body) {
                        unacked.push((m.message.body.to_vec(), m.delivery_attempt));
                    } else if i == 0 {
                        acked.push(m.message.body.to_vec());
                        batch.push(m);
                    } else {
                        consumer.ack(&m).await.unwrap();
                        acked.push(m.message.body.to_vec());
                    }
                }
                if !batch.is_empty() {
                    consumer.ack_many(&batch).await.unwrap();
                }
            }
            consumer.shutdown().await;
            (acked, unacked)
        }));
    }
    let mut acked: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    let mut attempts: BTreeMap<Vec<u8>, Vec<u32>> = BTreeMap::new();
    let mut busy = 0;
    for t in tasks {
        let (a, u) = t.await.unwrap();
        busy += usize::from(!a.is_empty());
        for body in a {
            *acked.entry(body).or_default() += 1;
        }
        for (body, attempt) in u {
            attempts.entry(body).or_default().push(attempt);
        }
    }
    assert!(busy >= 2, "the consumers shared the queue");
    assert_eq!(acked.len(), N - N / 10, "every acked message was delivered");
    assert!(acked.values().all(|n| *n == 1), "and acked exactly once");
    assert_eq!(attempts.len(), N / 10);
    for (body, mut seen) in attempts {
        seen.sort_unstable();
        assert_eq!(seen, [1, 2], "{}: delivered once more after its invisible time", String::from_utf8_lossy(&body));
    }
    // Past retryMaxTimes (1): every never-acked message is in %DLQ%scg, once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut dlq = dlq_bodies(&c, &b, "scg").await;
    while dlq.len() < N / 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        dlq = dlq_bodies(&c, &b, "scg").await;
    }
    dlq.sort();
    dlq.dedup();
    assert_eq!(dlq.len(), N / 10);
    assert!(dlq.iter().all(|b| never(b)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_run_loses_nothing_unacked_and_nack_redelivers_at_once() {
    use spate_client::{ClientConfig, SimpleConsumer, SimpleConsumerOptions};
    const N: usize = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopK").await;
    produce_bodies(&s.namesrv(), "PopK", N).await;
    let mut o = SimpleConsumerOptions::new("kg");
    o.await_duration = Duration::from_millis(300);
    let consumer = SimpleConsumer::new(ClientConfig::new(&s.namesrv()).with_instance_name("kc"), o).unwrap();
    consumer.subscribe("PopK", "*").unwrap();
    consumer.start().await.unwrap();

    // A nack (invisible time 0) hands the message out again at once, attempt 2.
    let first = consumer.receive(1, Duration::from_secs(30)).await.unwrap();
    let nacked = consumer.change_invisible_duration(&first[0], Duration::ZERO).await.unwrap();
    let again = consumer.receive(1, Duration::from_secs(30)).await.unwrap();
    assert_eq!(again[0].message.queue_offset, first[0].message.queue_offset);
    assert_eq!(again[0].delivery_attempt, 2);
    assert!(consumer.ack(&nacked).await.is_err(), "the nack's handle died with the redelivery");
    consumer.ack(&again[0]).await.unwrap();

    let mut acked: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
    acked.insert(again[0].message.body.to_vec(), 1);
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut idle = 0;
    while idle < 6 && Instant::now() < deadline {
        if !killed && acked.len() >= N / 2 {
            // Mid-run, with a batch in flight: kill -9 and start again.
            let held = consumer.receive(32, Duration::from_secs(2)).await.unwrap();
            assert!(!held.is_empty());
            s.kill9();
            s.restart();
            killed = true;
            continue;
        }
        let got = match consumer.receive(32, Duration::from_secs(2)).await {
            Ok(got) => got,
            Err(_) => continue, // the broker is restarting
        };
        idle = if got.is_empty() { idle + 1 } else { 0 };
        for m in got {
            if consumer.ack(&m).await.is_ok() {
                *acked.entry(m.message.body.to_vec()).or_default() += 1;
            }
        }
    }
    consumer.shutdown().await;
    assert!(killed);
    assert_eq!(acked.len(), N, "every message was acked, the batch held at the kill too");
    assert!(acked.values().all(|n| *n == 1), "nothing acked was handed out again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_and_recreated_topic_is_popped_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopR").await;
    produce(&c, &b, "PopR", 0, 5).await;
    let old = pop(&c, &b, pop_req("rg", "PopR", 0, 32, 60_000, 0)).await;
    assert_eq!(old.len(), 5);
    for p in &old[..3] {
        assert_eq!(ack(&c, &b, "rg", "PopR", p).await.code, response::SUCCESS);
    }
    let del = call(&c, &b, RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", "PopR")).await;
    assert_eq!(del.code, response::SUCCESS, "{:?}", del.remark);
    one_queue_topic(&c, &b, "PopR").await;
    produce(&c, &b, "PopR", 0, 2).await;
    let new = pop(&c, &b, pop_req("rg", "PopR", 0, 32, 60_000, 0)).await;
    assert_eq!(new.iter().map(|p| (p.offset, p.reconsume)).collect::<Vec<_>>(), [(0, 0), (1, 0)]);
    assert_eq!(ack(&c, &b, "rg", "PopR", &old[3]).await.code, response::NO_MESSAGE, "the old topic's handle is dead");
    // And after kill -9 the old topic's state and messages stay gone: the
    // new queue holds its own two messages only.
    s.kill9();
    s.restart();
    let b = s.broker();
    for p in &new {
        assert_eq!(ack(&c, &b, "rg", "PopR", p).await.code, response::SUCCESS);
    }
    produce(&c, &b, "PopR", 0, 1).await;
    let next = pop(&c, &b, pop_req("rg", "PopR", 0, 32, 60_000, 0)).await;
    assert_eq!(next.iter().map(|p| p.offset).collect::<Vec<_>>(), [2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fifo_pop_is_woken_by_the_ack_that_frees_its_queue_and_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start_with(&dir.path().join("d"), &["popInflightMessageThreshold=3"]);
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopW").await;
    produce(&c, &b, "PopW", 0, 6).await;
    let fifo = |attempt: &str, poll: i64| {
        pop_req("wg", "PopW", 0, 3, 60_000, poll).with("order", true).with("attemptId", attempt)
    };
    let batch = pop(&c, &b, fifo("w1", 0)).await;
    assert_eq!(batch.len(), 3);
    let waiter = {
        let (c, b) = (raw_client(), b.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let got = pop(&c, &b, fifo("w2", 10_000)).await;
            (got.iter().map(|p| p.offset).collect::<Vec<_>>(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    for p in &batch {
        assert_eq!(ack(&c, &b, "wg", "PopW", p).await.code, response::SUCCESS);
    }
    let (offsets, waited) = waiter.await.unwrap();
    assert_eq!(offsets, [3, 4, 5]);
    assert!(waited < Duration::from_secs(5), "woken by the ack, not the poll time: {waited:?}");

    // popInflightMessageThreshold (3 here): a fourth in flight is refused with the bound.
    produce(&c, &b, "PopW", 0, 1).await;
    let r = call(&c, &b, pop_req("wg2", "PopW", 0, 32, 60_000, 0)).await;
    assert_eq!(r.code, response::SUCCESS);
    let r = call(&c, &b, pop_req("wg2", "PopW", 0, 32, 60_000, 0)).await;
    assert_eq!(r.code, response::POLLING_FULL, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("popInflightMessageThreshold"));
    // Batch, invisible time, queue id, group name and attempt id bounds.
    for (req, what) in [
        (pop_req("wg3", "PopW", 0, 33, 60_000, 0), "maxMsgNums"),
        (pop_req("wg3", "PopW", 0, 0, 60_000, 0), "maxMsgNums"),
        (pop_req("wg3", "PopW", 0, 1, 0, 0), "invisibleTime"),
        (pop_req("wg3", "PopW", 0, 1, 13 * 3_600_000, 0), "invisibleTime"),
        (pop_req("wg3", "PopW", 7, 1, 60_000, 0), "queueId"),
        (pop_req(&"g".repeat(125), "PopW", 0, 1, 60_000, 0), "at most"),
        (pop_req("wg3", "PopW", 0, 1, 60_000, 0).with("order", true).with("attemptId", "a".repeat(200)), "attemptId"),
    ] {
        let r = call(&c, &b, req).await;
        assert_eq!(r.code, response::INVALID_PARAMETER, "{what}: {:?}", r.remark);
        assert!(r.remark.clone().unwrap_or_default().contains(what), "{what}: {:?}", r.remark);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ack_acks_the_messages_its_bits_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopB").await;
    produce(&c, &b, "PopB", 0, 5).await;
    let got = pop(&c, &b, pop_req("bg", "PopB", 0, 5, 60_000, 0)).await;
    assert_eq!(got.len(), 5);
    let stamp: u64 = got[0].handle.split(' ').nth(1).unwrap().parse().unwrap();
    let batch = |body: String| RemotingCommand::request(request::BATCH_ACK_MESSAGE).with_body(bytes::Bytes::from(body));
    // Hostile bodies first: refused with a reason (or, well formed but
    // naming nothing held, acking nothing).
    for (bad, code) in [
        (String::new(), response::INVALID_PARAMETER),
        ("{".to_string(), response::INVALID_PARAMETER),
        (r#"{"acks":[]}"#.to_string(), response::INVALID_PARAMETER),
        (
            format!(r#"{{"acks":[{{"c":"bg","t":"PopB","so":0,"q":0,"pt":{stamp},"b":"!!"}}]}}"#),
            response::INVALID_PARAMETER,
        ),
        (
            format!(r#"{{"acks":[{{"c":"bg","t":"../x","so":0,"q":0,"pt":{stamp},"b":"/w=="}}]}}"#),
            response::INVALID_PARAMETER,
        ),
        (
            format!(r#"{{"acks":[{{"c":"bg","t":"PopB","so":9223372036854775807,"q":0,"pt":{stamp},"b":"/w=="}}]}}"#),
            response::SUCCESS,
        ),
        (r#"{"acks":[{"c":"bg","t":"PopB","so":0,"q":0,"pt":1,"b":"/w=="}]}"#.to_string(), response::SUCCESS),
    ] {
        let r = call(&c, &b, batch(bad.clone())).await;
        assert_eq!(r.code, code, "{bad}: {:?}", r.remark);
    }
    // Bits 0, 2 and 4 after start offset 0: Java's BitSet.toByteArray() = [0x15], Base64 "FQ==".
    let body = format!(
        r#"{{"acks":[{{"c":"bg","t":"PopB","r":"0","so":0,"q":0,"rq":0,"pt":{stamp},"it":60000,"b":"FQ=="}}],"brokerName":"x"}}"#
    );
    let r = call(&c, &b, batch(body)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let mut codes = Vec::new();
    for p in &got {
        codes.push(ack(&c, &b, "bg", "PopB", p).await.code);
    }
    assert_eq!(
        codes,
        [response::NO_MESSAGE, response::SUCCESS, response::NO_MESSAGE, response::SUCCESS, response::NO_MESSAGE]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_and_pop_groups_read_one_topic_independently_and_a_group_can_switch() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start_with(&dir.path().join("d"), &["enablePropertyFilter=true"]);
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopM").await;
    for i in 0..6 {
        let tag = if i % 2 == 0 { "even" } else { "odd" };
        let r = call(
            &c,
            &b,
            common::send_req_with("PopM", 0, format!("m{i}").into_bytes(), &[("TAGS", tag), ("n", &i.to_string())]),
        )
        .await;
        assert_eq!(r.code, response::SUCCESS);
    }
    // A pop group takes everything; an offset-model group still reads it all.
    let popped = pop(&c, &b, pop_req("mpop", "PopM", 0, 32, 60_000, 0)).await;
    assert_eq!(popped.len(), 6);
    let pulled = call(&c, &b, common::pull_req("PopM", 0, 0, 0, "*")).await;
    assert_eq!(pulled.code, response::SUCCESS);
    // Tag and SQL92 filters on pops: what does not match is passed over.
    let even = pop(&c, &b, pop_req("mtag", "PopM", 0, 32, 60_000, 0).with("exp", "even")).await;
    assert_eq!(even.iter().map(|p| p.offset).collect::<Vec<_>>(), [0, 2, 4]);
    let sql =
        pop(&c, &b, pop_req("msql", "PopM", 0, 32, 60_000, 0).with("expType", "SQL92").with("exp", "n > 3")).await;
    assert_eq!(sql.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
    // A group that consumed by offset up to 4 and then pops goes on from 4.
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "mswitch")
        .with("topic", "PopM")
        .with("queueId", 0)
        .with("commitOffset", 4);
    assert_eq!(call(&c, &b, commit).await.code, response::SUCCESS);
    let rest = pop(&c, &b, pop_req("mswitch", "PopM", 0, 32, 60_000, 0)).await;
    assert_eq!(rest.iter().map(|p| p.offset).collect::<Vec<_>>(), [4, 5]);
    // And back: its committed offset is its first unfinished message.
    assert_eq!(ack(&c, &b, "mswitch", "PopM", &rest[0]).await.code, response::SUCCESS);
    let q = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with("consumerGroup", "mswitch")
        .with("topic", "PopM")
        .with("queueId", 0);
    let r = call(&c, &b, q).await;
    assert_eq!(r.field("offset"), Some("5"), "{:?}", r.remark);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_pops_keep_queue_order_across_three_consumers_with_failures() {
    use spate_client::{ClientConfig, SimpleConsumer, SimpleConsumerOptions};
    const PER_QUEUE: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
        .with("topic", "PopO")
        .with("readQueueNums", 2)
        .with("writeQueueNums", 2)
        .with("perm", 6);
    assert_eq!(call(&c, &b, req).await.code, response::SUCCESS);
    for i in 0..PER_QUEUE {
        for q in 0..2 {
            let r = call(&c, &b, send_req("PopO", q, format!("{q}-{i}").into_bytes())).await;
            assert_eq!(r.code, response::SUCCESS);
        }
    }
    // Each consumer acks in order; every 7th batch it "fails": it acks
    // nothing and lets the batch come back (invisible 500 ms).
    let log = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<(i32, i64)>::new()));
    let mut tasks = Vec::new();
    for i in 0..3 {
        let (ns, log) = (s.namesrv(), log.clone());
        tasks.push(tokio::spawn(async move {
            let mut o = SimpleConsumerOptions::new("fifo3");
            o.await_duration = Duration::from_millis(300);
            o.fifo = true;
            let consumer = SimpleConsumer::new(ClientConfig::new(&ns).with_instance_name(format!("f{i}")), o).unwrap();
            consumer.subscribe("PopO", "*").unwrap();
            consumer.start().await.unwrap();
            let (mut batches, mut idle) = (0, 0);
            let deadline = Instant::now() + Duration::from_secs(60);
            while idle < 6 && Instant::now() < deadline {
                let got = consumer.receive(8, Duration::from_millis(500)).await.unwrap();
                if got.is_empty() {
                    idle += 1;
                    continue;
                }
                idle = 0;
                batches += 1;
                if batches % 7 == 0 {
                    continue; // a failed batch: not acked, comes back
                }
                for m in &got {
                    // Logged under the lock before its ack: the ack frees the queue.
                    log.lock().push((m.message.queue_id, m.message.queue_offset));
                    consumer.ack(m).await.unwrap();
                }
            }
            consumer.shutdown().await;
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let log = log.lock().clone();
    for q in 0..2 {
        let order: Vec<i64> = log.iter().filter(|(qq, _)| *qq == q).map(|(_, o)| *o).collect();
        assert_eq!(order, (0..PER_QUEUE as i64).collect::<Vec<_>>(), "queue {q}: acked in order, each once");
    }
}

/// Messages visible again are read one by one, yet one pop hands out no
/// more of them than a read of new ones would (`maxTransferBytesOnMessageInMemory`,
/// 256 KiB): a batch of 32 large messages comes back over several pops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pop_of_large_messages_visible_again_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let s = Standalone::start(&dir.path().join("d"));
    let (c, b) = (raw_client(), s.broker());
    one_queue_topic(&c, &b, "PopBig").await;
    const SIZE: usize = 100 * 1024;
    for i in 0..10u8 {
        let r = call(&c, &b, send_req("PopBig", 0, vec![i; SIZE])).await;
        assert_eq!(r.code, response::SUCCESS, "send: {:?}", r.remark);
    }
    // First deliveries: bounded by the store's read.
    let mut first = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.len() < 10 {
        let got = pop(&c, &b, pop_req("pbig", "PopBig", 0, 32, 3000, 0)).await;
        assert!(got.len() <= 3, "one pop handed out {} messages of 100 KiB", got.len());
        first.extend(got);
        assert!(Instant::now() < deadline, "only {} popped", first.len());
    }
    // All ten come back after 3 s; each pop of them stays within the bound.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut again: Vec<Popped> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while again.len() < 10 {
        let got = pop(&c, &b, pop_req("pbig", "PopBig", 0, 32, 60_000, 0)).await;
        let bytes: usize = got.iter().map(|p| p.body.len()).sum();
        assert!(bytes <= 256 * 1024 + SIZE, "one pop of messages visible again carried {bytes} bytes");
        again.extend(got);
        assert!(Instant::now() < deadline, "only {} came back", again.len());
    }
    let mut offsets: Vec<i64> = again.iter().map(|p| p.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (0..10).collect::<Vec<_>>(), "each came back once");
    assert!(again.iter().all(|p| p.reconsume == 1 && p.body.len() == SIZE && p.body[0] == p.offset as u8));
}
