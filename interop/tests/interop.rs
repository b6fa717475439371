//! Interoperability test: a real `spate standalone` process (name server +
//! broker) driven by the `rocketmq-client-rust` 1.0.0 client from crates.io.
//!
//! Flow: start spate -> create the topic (client admin API, key TBW102) ->
//! produce N messages -> push-consume them in a new clustering group from the
//! first offset -> check every message arrived with identical body, tag, key,
//! user properties, queue and offset -> consume them again with Spate's own
//! client (`spate-client`) in another new group, checked the same way. In
//! the reverse direction, spate-client produces the same kind of messages
//! (bodies over 4 KiB go zlib-compressed) and rocketmq-client-rust consumes
//! them. Duplicates are allowed but counted. Then RocketMQ's message types
//! with rocketmq-client-rust alone: delay-level, timer and plain messages
//! consumed through a SQL92 selector (exactly the matching ones, none
//! early), TransactionMQProducer sends committed, rolled back and settled
//! by check-back, selector sends read in per-key order by its orderly
//! consumer (a failure retried in place), and a concurrent consumer's
//! failures back through the retry topic. `run.sh` runs it with JSON and
//! with ROCKETMQ binary headers.
//!
//! Environment:
//! - `SPATE_BIN`: the spate binary (default `../target/debug/spate` relative to
//!   this crate, i.e. the main workspace's debug build).
//! - `INTEROP_MESSAGES`: number of messages (default 200).
//!
//! It is a plain `#[test]` (not `#[tokio::test]`): the client refuses to
//! discover an ambient Tokio runtime and wants an application-owned
//! `rocketmq_runtime::RuntimeOwner`, which builds its own runtime, so the test
//! owns that runtime and blocks on it.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bounded, client_runtime_owner, SpateServer};
use rocketmq_client_rust::{
    ClientResult, ClientRuntime, ClientRuntimeConfig, ConsumeConcurrentlyContext, ConsumeConcurrentlyStatus,
    DefaultMQProducer, DefaultMQPushConsumer, MQPushConsumer, MessageListenerConcurrently, SendStatus,
};
use rocketmq_model::common::consumer::consume_from_where::ConsumeFromWhere;
use rocketmq_model::common::message::message_ext::MessageExt;
use rocketmq_model::common::message::message_single::Message;
use rocketmq_observability::TelemetryRuntimeGuard;
use rocketmq_protocol::protocol::heartbeat::message_model::MessageModel;

const TOPIC: &str = "SpateInteropTopic";
/// Produced by spate-client, consumed by rocketmq-client-rust.
const SPATE_TOPIC: &str = "SpateProducedTopic";
const QUEUES: i32 = 4;
/// Key topic for `createTopic`: the broker's default topic, as upstream.
const CREATE_TOPIC_KEY: &str = "TBW102";
const TAGS: [&str; 2] = ["TagA", "TagB"];
/// User property carrying the message index (ASCII value).
const PROP_SEQ: &str = "interopSeq";
/// User property with a non-ASCII value, to check UTF-8 survives the
/// properties string end to end.
const PROP_NOTE: &str = "interopNote";
const DEFAULT_MESSAGES: usize = 200;
const SETUP_TIMEOUT: Duration = Duration::from_secs(15);
const CONSUME_TIMEOUT: Duration = Duration::from_secs(30);
const SEND_TIMEOUT_MS: u64 = 5_000;

// ---------------------------------------------------------------------------
// What was sent / what arrived
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sent {
    key: String,
    tag: &'static str,
    body: Vec<u8>,
    seq: String,
    note: String,
    /// `SendResult.msg_id`: the client-made unique id (UNIQ_KEY property).
    msg_id: String,
    offset_msg_id: Option<String>,
    queue_id: i32,
    queue_offset: u64,
}

#[derive(Debug, Clone)]
struct Received {
    topic: String,
    body: Vec<u8>,
    tag: Option<String>,
    keys: Option<String>,
    uniq_key: Option<String>,
    seq: Option<String>,
    note: Option<String>,
    queue_id: i32,
    queue_offset: i64,
    msg_id: String,
    reconsume_times: i32,
}

/// Records every delivery, keyed by the message key.
#[derive(Default)]
struct Collected {
    by_key: HashMap<String, Vec<Received>>,
    without_key: Vec<Received>,
    deliveries: usize,
}

#[derive(Clone)]
struct RecordingListener {
    collected: Arc<Mutex<Collected>>,
}

impl MessageListenerConcurrently for RecordingListener {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut collected = self.collected.lock().unwrap();
        for m in msgs {
            let inner = m.message_inner();
            let prop = |k: &str| inner.property(k).map(str::to_owned);
            let r = Received {
                topic: m.topic().to_string(),
                body: m.body().map(|b| b.to_vec()).unwrap_or_default(),
                tag: prop("TAGS"),
                keys: prop("KEYS"),
                uniq_key: prop("UNIQ_KEY"),
                seq: prop(PROP_SEQ),
                note: prop(PROP_NOTE),
                queue_id: m.queue_id(),
                queue_offset: m.queue_offset(),
                msg_id: m.msg_id().to_string(),
                reconsume_times: m.reconsume_times(),
            };
            collected.deliveries += 1;
            match r.keys.clone() {
                Some(k) => collected.by_key.entry(k).or_default().push(r),
                None => collected.without_key.push(r),
            }
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// Distinct bodies: non-ASCII UTF-8 text, every byte value, and sizes from a
/// few bytes to ~6 KiB (bodies over 4 KiB are zlib-compressed by the client
/// and carry the COMPRESSED sysflag through the broker).
fn make_body(i: usize) -> Vec<u8> {
    let mut body = format!("interop #{i:04} Grüße ✓ 日本語 ").into_bytes();
    match i % 5 {
        0 => {}
        1 => body.extend((0..=255u8).cycle().skip(i).take(300)),
        2 => body.extend(std::iter::repeat_n(b'x', 1024 + i)),
        3 => body.extend((0..(3 * 1024 + i)).map(|j| (j * 31 + i) as u8)),
        _ => body.extend((0..(6 * 1024 + i)).map(|j| ((j ^ i) % 251) as u8)),
    }
    body
}

fn message_count() -> usize {
    std::env::var("INTEROP_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGES)
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn rocketmq_rust_client_round_trip() {
    // Transaction check-backs within a second or two (upstream: 30 s, 6 s);
    // short delay levels: a consumer's first retry (level 3) after 300 ms.
    let levels = (1..=18).map(|l| format!("{}ms", 100 * l)).collect::<Vec<_>>().join(" ");
    let server = SpateServer::start(&format!(
        "transactionCheckInterval=300\ntransactionTimeOut=1000\nmessageDelayLevel={levels}\n"
    ));
    let namesrv = server.namesrv_addr();
    let n = message_count();

    // Spate's client produces to a second topic first; rocketmq-client-rust
    // consumes it below (the reverse direction).
    let sent_by_spate = {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio");
        rt.block_on(produce_with_spate_client(&namesrv, n))
    };

    let owner = client_runtime_owner();
    let telemetry = TelemetryRuntimeGuard::noop();
    let client_runtime = ClientRuntime::try_new(
        owner.root_context().component("interop-client"),
        ClientRuntimeConfig::default(),
        telemetry.handle(),
    )
    .expect("client runtime");

    let (sent, run_id) = owner.block_on(async {
        let run_id = format!(
            "{}_{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
        );

        // --- producer + topic ------------------------------------------------
        let mut producer = DefaultMQProducer::builder(client_runtime.clone())
            .producer_group(format!("interop_producer_{run_id}"))
            .name_server_addr(namesrv.clone())
            .send_msg_timeout(SEND_TIMEOUT_MS as u32)
            .build();
        bounded("producer start", SETUP_TIMEOUT, producer.start()).await.expect("producer start");

        create_topic(&mut producer, TOPIC).await;

        // --- produce ---------------------------------------------------------
        let mut sent: Vec<Sent> = Vec::with_capacity(n);
        for i in 0..n {
            let tag = TAGS[i % 2];
            let key = format!("interop-key-{i:04}");
            let seq = i.to_string();
            let note = format!("größe-{i}-ß✓");
            let body = make_body(i);
            let msg: Message = Message::builder()
                .topic(TOPIC)
                .tags(tag)
                .key(key.clone())
                .body(body.clone())
                .raw_property(PROP_SEQ, seq.clone())
                .expect("user property")
                .raw_property(PROP_NOTE, note.clone())
                .expect("user property")
                .build()
                .expect("message");
            // The client retries a failed send (2 more attempts), each
            // within SEND_TIMEOUT_MS; bound the whole call as well.
            let result = bounded(
                "send",
                Duration::from_millis(4 * SEND_TIMEOUT_MS),
                producer.send_with_timeout(msg, SEND_TIMEOUT_MS),
            )
            .await
            .unwrap_or_else(|e| panic!("send #{i} failed: {e}"))
            .unwrap_or_else(|| panic!("send #{i}: no SendResult for a synchronous send"));
            assert_eq!(result.send_status, SendStatus::SendOk, "send #{i}: {result:?}");
            let mq =
                result.message_queue.as_ref().unwrap_or_else(|| panic!("send #{i}: SendResult without message queue"));
            assert_eq!(mq.topic_str(), TOPIC, "send #{i}: {result:?}");
            let msg_id = result
                .msg_id
                .as_ref()
                .map(|m| m.to_string())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| panic!("send #{i}: SendResult without msgId"));
            sent.push(Sent {
                key,
                tag,
                body,
                seq,
                note,
                msg_id,
                offset_msg_id: result.offset_msg_id.clone(),
                queue_id: mq.queue_id(),
                queue_offset: result.queue_offset,
            });
        }
        let mut per_queue: HashMap<i32, usize> = HashMap::new();
        for s in &sent {
            *per_queue.entry(s.queue_id).or_default() += 1;
        }
        println!("sent {n} messages; per queue: {per_queue:?}");
        // (queue, offset) must be unique across sends.
        let mut slots: HashMap<(i32, u64), &str> = HashMap::new();
        for s in &sent {
            if let Some(other) = slots.insert((s.queue_id, s.queue_offset), &s.key) {
                panic!(
                    "broker returned the same queue {} offset {} for {} and {}",
                    s.queue_id, s.queue_offset, other, s.key
                );
            }
        }

        // --- push consume (rocketmq-client-rust) -----------------------------
        let group = format!("interop_consumer_{run_id}");
        let (collected, all_arrived, elapsed) = consume_with_rocketmq(&client_runtime, &namesrv, group, TOPIC, &sent).await;

        let report = verify(&sent, &collected.lock().unwrap(), TOPIC);
        println!(
            "rocketmq-client-rust consumer: {} of {n} distinct messages in {elapsed:?}, \
             {} deliveries, {} duplicate deliveries",
            report.distinct, report.deliveries, report.duplicates
        );
        assert!(
            all_arrived && report.problems.is_empty(),
            "rocketmq-client-rust round trip failed ({} of {n} messages within {:?}):\n{}",
            report.distinct,
            CONSUME_TIMEOUT,
            report.problems.join("\n")
        );

        // ---------------------------------------------------------------------
        // --- push consume what spate-client produced (rocketmq-client-rust) ---
        let group = format!("interop_reverse_{run_id}");
        let (collected2, _, _) = consume_with_rocketmq(&client_runtime, &namesrv, group, SPATE_TOPIC, &sent_by_spate).await;
        let report2 = verify(&sent_by_spate, &collected2.lock().unwrap(), SPATE_TOPIC);
        println!(
            "rocketmq-client-rust consumer of spate-client's messages: {} of {} distinct, {} deliveries, {} duplicate deliveries",
            report2.distinct,
            sent_by_spate.len(),
            report2.deliveries,
            report2.duplicates
        );
        assert!(
            report2.distinct == sent_by_spate.len() && report2.problems.is_empty(),
            "rocketmq-client-rust did not read back what spate-client produced:\n{}",
            report2.problems.join("\n")
        );

        // --- message types: delayed, timer, SQL92 (rocketmq-client-rust both ways)
        // Boxed: their state machines would not fit the test thread's stack.
        Box::pin(message_types_with_rocketmq(&client_runtime, &namesrv, &mut producer, &run_id)).await;
        Box::pin(transactions_with_rocketmq(&client_runtime, &namesrv, &run_id)).await;
        Box::pin(ordered_and_retried_with_rocketmq(&client_runtime, &namesrv, &mut producer, &run_id)).await;

        // Shutdown problems are reported, not failed: they are not interop results.
        if tokio::time::timeout(SETUP_TIMEOUT, producer.shutdown()).await.is_err() {
            eprintln!("note: producer shutdown took longer than {SETUP_TIMEOUT:?}");
        }
        match tokio::time::timeout(Duration::from_secs(40), client_runtime.shutdown()).await {
            Ok(report) if !report.is_healthy() => {
                eprintln!("note: client runtime shutdown report: {}", report.to_json())
            }
            Ok(_) => {}
            Err(_) => eprintln!("note: client runtime shutdown took longer than 40s"),
        }
        (sent, run_id)
    });

    match owner.shutdown_runtime_blocking() {
        Ok(report) if !report.is_healthy() => {
            eprintln!("note: runtime shutdown report: {}", report.to_json())
        }
        Ok(_) => {}
        Err(e) => eprintln!("note: runtime shutdown: {e}"),
    }
    let _ = telemetry.shutdown();

    // --- consume the same messages with Spate's own client ------------------
    // A new group (the one above committed its offsets), on a plain tokio
    // runtime of its own.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let collected = rt.block_on(consume_with_spate_client(&namesrv, &run_id, &sent));
    let report = verify(&sent, &collected, TOPIC);
    println!(
        "spate-client consumer: {} of {} distinct messages, {} deliveries, {} duplicate deliveries",
        report.distinct,
        sent.len(),
        report.deliveries,
        report.duplicates
    );
    assert!(
        report.distinct == sent.len() && report.problems.is_empty(),
        "spate-client did not read back what rocketmq-client-rust produced:\n{}",
        report.problems.join("\n")
    );
    drop(server);
}

/// Creates `topic` with QUEUES queues through the client's admin API
/// (`createTopic` with key TBW102: route lookup of TBW102 on the name server,
/// then UPDATE_AND_CREATE_TOPIC on each master), then waits until the name
/// server's route for it shows QUEUES writable queues. Bounded: the broker may
/// need a moment to register with the name server after start-up.
async fn create_topic(producer: &mut DefaultMQProducer, topic: &str) {
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let remaining = || deadline.saturating_duration_since(Instant::now());
    loop {
        let attempt =
            tokio::time::timeout(remaining(), producer.create_topic(CREATE_TOPIC_KEY, topic, QUEUES, HashMap::new()))
                .await;
        match attempt {
            Ok(Ok(())) => break,
            Ok(Err(e)) if !remaining().is_zero() => {
                eprintln!("createTopic not yet possible ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(500).min(remaining())).await;
            }
            Ok(Err(e)) => panic!(
                "createTopic({topic}, key {CREATE_TOPIC_KEY}, {QUEUES} queues) kept failing for {:?}: {e}",
                SETUP_TIMEOUT
            ),
            Err(_) => panic!(
                "createTopic({topic}, key {CREATE_TOPIC_KEY}, {QUEUES} queues) did not succeed within {:?}",
                SETUP_TIMEOUT
            ),
        }
    }
    loop {
        let queues = tokio::time::timeout(remaining(), producer.fetch_publish_message_queues(topic)).await;
        match queues {
            Ok(Ok(queues)) if queues.len() == QUEUES as usize => {
                println!("topic {topic} routed with {} queues", queues.len());
                return;
            }
            other if remaining().is_zero() => panic!(
                "name server route for {topic} does not show {QUEUES} queues within {:?}: {:?}",
                SETUP_TIMEOUT,
                other.map(|r| r.map(|q| q.len()))
            ),
            _ => tokio::time::sleep(Duration::from_millis(200).min(remaining())).await,
        }
    }
}

struct Report {
    distinct: usize,
    deliveries: usize,
    duplicates: usize,
    problems: Vec<String>,
}

/// Compares every sent message with every delivery of it. Missing messages,
/// altered fields and unexpected messages are problems; extra deliveries of
/// an intact message are only counted.
fn verify(sent: &[Sent], collected: &Collected, topic: &str) -> Report {
    const MAX_LISTED: usize = 20;
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    let mut distinct = 0;
    for s in sent {
        let Some(copies) = collected.by_key.get(&s.key) else {
            missing.push(s.key.clone());
            continue;
        };
        distinct += 1;
        for (n, r) in copies.iter().enumerate() {
            let mut diffs = Vec::new();
            if r.topic != topic {
                diffs.push(format!("topic {:?}", r.topic));
            }
            if r.body != s.body {
                diffs.push(format!("body differs (got {} bytes, sent {})", r.body.len(), s.body.len()));
            }
            if r.tag.as_deref() != Some(s.tag) {
                diffs.push(format!("tag {:?}, sent {:?}", r.tag, s.tag));
            }
            if r.keys.as_deref() != Some(s.key.as_str()) {
                diffs.push(format!("keys {:?}", r.keys));
            }
            if r.seq.as_deref() != Some(s.seq.as_str()) {
                diffs.push(format!("{PROP_SEQ} {:?}, sent {:?}", r.seq, s.seq));
            }
            if r.note.as_deref() != Some(s.note.as_str()) {
                diffs.push(format!("{PROP_NOTE} {:?}, sent {:?}", r.note, s.note));
            }
            if r.uniq_key.as_deref() != Some(s.msg_id.as_str()) {
                diffs.push(format!("UNIQ_KEY {:?}, but send returned msgId {:?}", r.uniq_key, s.msg_id));
            }
            if r.queue_id != s.queue_id || r.queue_offset != s.queue_offset as i64 {
                diffs.push(format!(
                    "stored at queue {} offset {}, but send returned queue {} offset {}",
                    r.queue_id, r.queue_offset, s.queue_id, s.queue_offset
                ));
            }
            if !diffs.is_empty() && problems.len() < MAX_LISTED {
                problems.push(format!(
                    "{} (delivery {}, msgId {}, offsetMsgId {:?}, reconsumeTimes {}): {}",
                    s.key,
                    n + 1,
                    r.msg_id,
                    s.offset_msg_id,
                    r.reconsume_times,
                    diffs.join("; ")
                ));
            }
        }
    }
    if !missing.is_empty() {
        let shown: Vec<_> = missing.iter().take(MAX_LISTED).cloned().collect();
        problems.push(format!("{} message(s) never arrived, e.g. {}", missing.len(), shown.join(", ")));
    }
    let sent_keys: std::collections::HashSet<&str> = sent.iter().map(|s| s.key.as_str()).collect();
    let unexpected: Vec<_> =
        collected.by_key.keys().filter(|k| !sent_keys.contains(k.as_str())).take(MAX_LISTED).cloned().collect();
    if !unexpected.is_empty() {
        problems.push(format!("unexpected message keys: {}", unexpected.join(", ")));
    }
    if !collected.without_key.is_empty() {
        problems.push(format!(
            "{} deliveries without a KEYS property, e.g. {:?}",
            collected.without_key.len(),
            collected.without_key.first()
        ));
    }
    let duplicates = sent.iter().filter_map(|s| collected.by_key.get(&s.key)).map(|copies| copies.len() - 1).sum();
    Report { distinct, deliveries: collected.deliveries, duplicates, problems }
}

/// Push-consumes TOPIC with spate-client in a new group from the first offset.
async fn consume_with_spate_client(namesrv: &str, run_id: &str, sent: &[Sent]) -> Collected {
    use spate_client::{
        ClientConfig, ConsumeFromWhere, ConsumeStatus, MessageListener, PushConsumer, PushConsumerOptions,
    };
    let collected = Arc::new(Mutex::new(Collected::default()));
    let sink = collected.clone();
    let mut options = PushConsumerOptions::new(format!("interop_spate_{run_id}"));
    options.consume_from_where = ConsumeFromWhere::FirstOffset;
    let consumer = PushConsumer::new(ClientConfig::new(namesrv).with_instance_name("interop-spate"), options)
        .expect("spate consumer");
    consumer.subscribe(TOPIC, "TagA || TagB").expect("subscribe");
    consumer
        .start(MessageListener::concurrently(move |msgs, _| {
            let mut c = sink.lock().unwrap();
            for m in msgs {
                let prop = |k: &str| m.property(k).map(str::to_owned);
                let r = Received {
                    topic: m.topic.clone(),
                    body: m.body.to_vec(),
                    tag: prop("TAGS"),
                    keys: prop("KEYS"),
                    uniq_key: prop("UNIQ_KEY"),
                    seq: prop(PROP_SEQ),
                    note: prop(PROP_NOTE),
                    queue_id: m.queue_id,
                    queue_offset: m.queue_offset,
                    msg_id: m.msg_id.clone(),
                    reconsume_times: m.reconsume_times,
                };
                c.deliveries += 1;
                match r.keys.clone() {
                    Some(k) => c.by_key.entry(k).or_default().push(r),
                    None => c.without_key.push(r),
                }
            }
            ConsumeStatus::ConsumeSuccess
        }))
        .await
        .expect("spate consumer start");
    wait_for_all(&collected, sent, Instant::now()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    consumer.shutdown().await;
    let c = collected.lock().unwrap();
    Collected { by_key: c.by_key.clone(), without_key: c.without_key.clone(), deliveries: c.deliveries }
}

/// Produces `n` messages like the rocketmq-client-rust producer does (same
/// bodies, tags, keys and properties) with spate-client, to SPATE_TOPIC,
/// which the broker creates on first send.
async fn produce_with_spate_client(namesrv: &str, n: usize) -> Vec<Sent> {
    use spate_client::{ClientConfig, Message, Producer, ProducerOptions};
    let producer = Producer::start(
        ClientConfig::new(namesrv).with_instance_name("interop-spate-p"),
        ProducerOptions::new("interop_spate_producer"),
    )
    .await
    .expect("spate producer");
    let mut sent = Vec::with_capacity(n);
    for i in 0..n {
        let tag = TAGS[i % 2];
        let key = format!("spate-key-{i:04}");
        let (seq, note, body) = (i.to_string(), format!("größe-{i}-ß✓"), make_body(i));
        let msg = Message::new(SPATE_TOPIC, body.clone())
            .with_tags(tag)
            .with_keys([key.clone()])
            .with_property(PROP_SEQ, seq.clone())
            .with_property(PROP_NOTE, note.clone());
        let r = producer.send(msg).await.unwrap_or_else(|e| panic!("spate-client send #{i}: {e}"));
        sent.push(Sent {
            key,
            tag,
            body,
            seq,
            note,
            msg_id: r.msg_id.clone(),
            offset_msg_id: Some(r.offset_msg_id.clone()),
            queue_id: r.message_queue.queue_id,
            queue_offset: r.queue_offset as u64,
        });
    }
    producer.shutdown().await;
    println!("spate-client produced {n} messages to {SPATE_TOPIC}");
    sent
}

/// Waits until every sent key has been delivered, or CONSUME_TIMEOUT after
/// `start`; true when all arrived.
async fn wait_for_all(collected: &Mutex<Collected>, sent: &[Sent], start: Instant) -> bool {
    loop {
        if sent.iter().all(|s| collected.lock().unwrap().by_key.contains_key(&s.key)) {
            return true;
        }
        if start.elapsed() >= CONSUME_TIMEOUT {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Push-consumes `topic` with rocketmq-client-rust in a new clustering
/// group from the first offset until every `sent` key arrived (or the
/// timeout); returns the deliveries, whether all arrived, and how long it took.
async fn consume_with_rocketmq(
    client_runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    group: String,
    topic: &str,
    sent: &[Sent],
) -> (Arc<Mutex<Collected>>, bool, Duration) {
    let collected = Arc::new(Mutex::new(Collected::default()));
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(group)
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(32)
        .consume_thread_max(64)
        .build();
    bounded("subscribe", SETUP_TIMEOUT, consumer.subscribe(topic, "TagA || TagB")).await.expect("subscribe");
    consumer.register_message_listener_concurrently(RecordingListener { collected: collected.clone() });
    let start = Instant::now();
    bounded("consumer start", SETUP_TIMEOUT, consumer.start()).await.expect("consumer start");
    let all_arrived = wait_for_all(&collected, sent, start).await;
    let elapsed = start.elapsed();
    // Give in-flight redeliveries a moment to show up in the duplicate count.
    tokio::time::sleep(Duration::from_millis(500)).await;
    if tokio::time::timeout(SETUP_TIMEOUT, consumer.shutdown()).await.is_err() {
        eprintln!("note: consumer shutdown took longer than {SETUP_TIMEOUT:?}");
    }
    (collected, all_arrived, elapsed)
}

// ---------------------------------------------------------------------------
// Message types
// ---------------------------------------------------------------------------

const TYPES_TOPIC: &str = "SpateInteropTypes";

/// Records each message's body and arrival time.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<(String, Instant)>>>);

impl MessageListenerConcurrently for Arrivals {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let now = Instant::now();
        let mut got = self.0.lock().unwrap();
        for m in msgs {
            got.push((String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).into_owned(), now));
        }
        Ok(ConsumeConcurrentlyStatus::ConsumeSuccess)
    }
}

/// rocketmq-client-rust sends delay-level, timer and plain messages with a
/// `region` property; its push consumer subscribes with a SQL92 selector.
/// Exactly the `region = 'hz'` ones arrive, none before it was due.
async fn message_types_with_rocketmq(
    client_runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    producer: &mut DefaultMQProducer,
    run_id: &str,
) {
    create_topic(producer, TYPES_TOPIC).await;
    let arrivals = Arrivals::default();
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(format!("interop_types_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(32)
        .consume_thread_max(64)
        .build();
    let selector = rocketmq_client_rust::MessageSelector::by_sql("region = 'hz' AND n >= 0");
    bounded("subscribe", SETUP_TIMEOUT, consumer.subscribe_with_selector(TYPES_TOPIC, Some(selector)))
        .await
        .expect("subscribe with SQL92");
    consumer.register_message_listener_concurrently(arrivals.clone());
    bounded("consumer start", SETUP_TIMEOUT, consumer.start()).await.expect("consumer start");

    // (body, earliest arrival) of what should arrive.
    let mut expected: Vec<(String, Instant)> = Vec::new();
    for i in 0..30 {
        let region = if i % 2 == 0 { "hz" } else { "sh" };
        let body = format!("{run_id}-{i}-{region}");
        let builder = Message::builder()
            .topic(TYPES_TOPIC)
            .body(body.clone().into_bytes())
            .raw_property("region", region)
            .expect("user property")
            .raw_property("n", i.to_string())
            .expect("user property");
        // A third each: delay level 1 (1 s), a timer 1.5 s out, plain.
        let (builder, delay) = match i % 3 {
            0 => (builder.delay_level(1), Duration::from_secs(1)),
            1 => (builder.delay_millis(1500), Duration::from_millis(1500)),
            _ => (builder, Duration::ZERO),
        };
        let sent_at = Instant::now();
        let msg = builder.build().expect("message");
        let result = bounded(
            "send",
            Duration::from_millis(4 * SEND_TIMEOUT_MS),
            producer.send_with_timeout(msg, SEND_TIMEOUT_MS),
        )
        .await
        .unwrap_or_else(|e| panic!("typed send #{i} failed: {e}"))
        .unwrap_or_else(|| panic!("typed send #{i}: no SendResult"));
        assert_eq!(result.send_status, SendStatus::SendOk, "typed send #{i}: {result:?}");
        if region == "hz" {
            expected.push((body, sent_at + delay));
        }
    }
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while arrivals.0.lock().unwrap().len() < expected.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = arrivals.0.lock().unwrap().clone();
    let mut got_bodies: Vec<&str> = got.iter().map(|(b, _)| b.as_str()).collect();
    got_bodies.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(|(b, _)| b.as_str()).collect();
    want.sort_unstable();
    assert_eq!(got_bodies, want, "the SQL92 selector let through exactly region = 'hz', each once");
    for (body, due) in &expected {
        let at = got.iter().find(|(b, _)| b == body).map(|(_, at)| *at).unwrap();
        assert!(at >= *due, "{body} arrived before it was due");
    }
    println!(
        "rocketmq-client-rust message types: {} delayed/timer/plain messages selected by SQL92, none early",
        got.len()
    );
    if tokio::time::timeout(SETUP_TIMEOUT, consumer.shutdown()).await.is_err() {
        eprintln!("note: types consumer shutdown took longer than {SETUP_TIMEOUT:?}");
    }
}

const TX_TOPIC: &str = "SpateInteropTx";

/// Commits `commit-*` and rolls back `rollback-*` at once; leaves `check-*`
/// unknown and commits it when the broker checks back.
struct TxListener {
    checked: Arc<Mutex<Vec<String>>>,
}

impl rocketmq_client_rust::TransactionListener for TxListener {
    fn execute_local_transaction(
        &self,
        msg: &dyn rocketmq_model::common::message::MessageTrait,
        _arg: Option<&(dyn std::any::Any + Send + Sync)>,
    ) -> rocketmq_client_rust::LocalTransactionState {
        use rocketmq_client_rust::LocalTransactionState::*;
        let body = msg.get_body().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        if body.starts_with("commit-") {
            CommitMessage
        } else if body.starts_with("rollback-") {
            RollbackMessage
        } else {
            Unknown
        }
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> rocketmq_client_rust::LocalTransactionState {
        let body = String::from_utf8_lossy(msg.body().as_deref().unwrap_or_default()).into_owned();
        self.checked.lock().unwrap().push(body);
        rocketmq_client_rust::LocalTransactionState::CommitMessage
    }
}

/// rocketmq-client-rust's TransactionMQProducer against Spate: committed
/// and checked-back messages arrive, rolled-back ones never do.
async fn transactions_with_rocketmq(client_runtime: &Arc<ClientRuntime>, namesrv: &str, run_id: &str) {
    let checked = Arc::new(Mutex::new(Vec::new()));
    let mut producer = rocketmq_client_rust::TransactionMQProducer::builder(client_runtime.clone())
        .producer_group(format!("interop_tx_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .send_msg_timeout(SEND_TIMEOUT_MS as u32)
        .transaction_listener(TxListener { checked: checked.clone() })
        .build();
    bounded("transaction producer start", SETUP_TIMEOUT, producer.start()).await.expect("transaction producer start");

    let arrivals = Arrivals::default();
    let mut consumer = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(format!("interop_txc_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(32)
        .consume_thread_max(64)
        .build();

    let mut want = Vec::new();
    for kind in ["commit", "rollback", "check"] {
        for i in 0..3 {
            let body = format!("{kind}-{i}-{run_id}");
            let msg = Message::builder().topic(TX_TOPIC).body(body.clone().into_bytes()).build().expect("message");
            let r =
                bounded("transactional send", SETUP_TIMEOUT, producer.send_message_in_transaction::<(), _>(msg, None))
                    .await
                    .unwrap_or_else(|e| panic!("transactional send {body} failed: {e}"));
            let status = r.send_result.as_ref().map(|s| s.send_status);
            assert_eq!(status, Some(SendStatus::SendOk), "{body}: {r}");
            if kind != "rollback" {
                want.push(body);
            }
        }
    }
    bounded("subscribe", SETUP_TIMEOUT, consumer.subscribe(TX_TOPIC, "*")).await.expect("subscribe");
    consumer.register_message_listener_concurrently(arrivals.clone());
    bounded("consumer start", SETUP_TIMEOUT, consumer.start()).await.expect("consumer start");
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    while arrivals.0.lock().unwrap().len() < want.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got: Vec<String> = arrivals.0.lock().unwrap().iter().map(|(b, _)| b.clone()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "committed and checked-back messages, each once; no rolled-back one");
    let checked = checked.lock().unwrap().clone();
    assert!(checked.iter().all(|b| b.starts_with("check-")), "only undecided ones are checked: {checked:?}");
    assert!(checked.len() >= 3, "each undecided one was checked back: {checked:?}");
    println!("rocketmq-client-rust transactions: {} delivered, {} check-backs answered", got.len(), checked.len());
    if tokio::time::timeout(SETUP_TIMEOUT, consumer.shutdown()).await.is_err() {
        eprintln!("note: tx consumer shutdown took longer than {SETUP_TIMEOUT:?}");
    }
    if tokio::time::timeout(SETUP_TIMEOUT, producer.shutdown()).await.is_err() {
        eprintln!("note: tx producer shutdown took longer than {SETUP_TIMEOUT:?}");
    }
}

const ORDERED_TOPIC: &str = "SpateInteropOrdered";
const RETRY_TOPIC: &str = "SpateInteropRetry";

/// Records (key, seq) in the order accepted; fails key 1 seq 10 once
/// (suspend, then the same message again).
#[derive(Clone, Default)]
struct OrderedLog {
    accepted: Arc<Mutex<Vec<(usize, usize)>>>,
    failed_once: Arc<std::sync::atomic::AtomicBool>,
}

impl rocketmq_client_rust::MessageListenerOrderly for OrderedLog {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &mut rocketmq_client_rust::ConsumeOrderlyContext,
    ) -> ClientResult<rocketmq_client_rust::ConsumeOrderlyStatus> {
        let mut batch = Vec::new();
        for m in msgs {
            let body = String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).into_owned();
            let (k, seq) = body.split_once(':').map(|(k, s)| (k.parse().unwrap(), s.parse().unwrap())).unwrap();
            if (k, seq) == (1, 10) && !self.failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(rocketmq_client_rust::ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
            }
            batch.push((k, seq));
        }
        self.accepted.lock().unwrap().extend(batch);
        Ok(rocketmq_client_rust::ConsumeOrderlyStatus::Success)
    }
}

/// Fails each message's first delivery (back through the retry topic).
#[derive(Clone, Default)]
struct RetryLog(Arc<Mutex<Vec<(String, i32)>>>);

impl MessageListenerConcurrently for RetryLog {
    fn consume_message(
        &self,
        msgs: &[&MessageExt],
        _context: &ConsumeConcurrentlyContext,
    ) -> ClientResult<ConsumeConcurrentlyStatus> {
        let mut log = self.0.lock().unwrap();
        let mut first = false;
        for m in msgs {
            log.push((
                String::from_utf8_lossy(m.body().as_deref().unwrap_or_default()).into_owned(),
                m.reconsume_times(),
            ));
            first |= m.reconsume_times() == 0;
        }
        Ok(if first { ConsumeConcurrentlyStatus::ReconsumeLater } else { ConsumeConcurrentlyStatus::ConsumeSuccess })
    }
}

/// rocketmq-client-rust: selector sends consumed by its orderly consumer in
/// per-key order (a failure retried in place), and a concurrent consumer's
/// failed message back through Spate's retry topic with its count raised.
async fn ordered_and_retried_with_rocketmq(
    client_runtime: &Arc<ClientRuntime>,
    namesrv: &str,
    producer: &mut DefaultMQProducer,
    run_id: &str,
) {
    const KEYS: usize = 4;
    const PER_KEY: usize = 30;
    create_topic(producer, ORDERED_TOPIC).await;
    create_topic(producer, RETRY_TOPIC).await;
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let msg = Message::builder()
                .topic(ORDERED_TOPIC)
                .body(format!("{k}:{seq}").into_bytes())
                .build()
                .expect("message");
            let r = bounded(
                "selector send",
                SETUP_TIMEOUT,
                producer.send_with_selector(msg, |mqs, _, key: &usize| mqs.get(*key % mqs.len()).cloned(), k),
            )
            .await
            .unwrap_or_else(|e| panic!("selector send {k}:{seq} failed: {e}"));
            assert_eq!(r.map(|r| r.send_status), Some(SendStatus::SendOk));
        }
    }
    let retry_bodies: Vec<String> = (0..3).map(|i| format!("retry-{i}-{run_id}")).collect();
    for b in &retry_bodies {
        let msg = Message::builder().topic(RETRY_TOPIC).body(b.clone().into_bytes()).build().expect("message");
        bounded("send", SETUP_TIMEOUT, producer.send_with_timeout(msg, SEND_TIMEOUT_MS))
            .await
            .expect("retry-topic send");
    }

    let ordered = OrderedLog::default();
    let mut oc = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(format!("interop_ordered_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(32)
        .consume_thread_max(64)
        .build();
    bounded("subscribe", SETUP_TIMEOUT, oc.subscribe(ORDERED_TOPIC, "*")).await.expect("subscribe");
    oc.register_message_listener_orderly(ordered.clone());
    bounded("orderly consumer start", SETUP_TIMEOUT, oc.start()).await.expect("orderly consumer start");

    let retried = RetryLog::default();
    let mut rc = DefaultMQPushConsumer::builder(client_runtime.clone())
        .consumer_group(format!("interop_retry_{run_id}"))
        .name_server_addr(namesrv.to_string())
        .message_model(MessageModel::Clustering)
        .consume_from_where(ConsumeFromWhere::ConsumeFromFirstOffset)
        .consume_thread_min(32)
        .consume_thread_max(64)
        .build();
    bounded("subscribe", SETUP_TIMEOUT, rc.subscribe(RETRY_TOPIC, "*")).await.expect("subscribe");
    rc.register_message_listener_concurrently(retried.clone());
    bounded("retry consumer start", SETUP_TIMEOUT, rc.start()).await.expect("retry consumer start");

    let deadline = Instant::now() + CONSUME_TIMEOUT;
    loop {
        let ordered_done = ordered.accepted.lock().unwrap().len() >= KEYS * PER_KEY;
        let retries_done =
            retry_bodies.iter().all(|b| retried.0.lock().unwrap().iter().any(|(body, times)| body == b && *times >= 1));
        if ordered_done && retries_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ordered {} of {}, retries {:?}",
            ordered.accepted.lock().unwrap().len(),
            KEYS * PER_KEY,
            retried.0.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = ordered.accepted.lock().unwrap().clone();
    assert!(ordered.failed_once.load(std::sync::atomic::Ordering::SeqCst), "the failure was injected");
    for k in 0..KEYS {
        let seqs: Vec<usize> = accepted.iter().filter(|(key, _)| *key == k).map(|(_, s)| *s).collect();
        assert_eq!(seqs, (0..PER_KEY).collect::<Vec<_>>(), "key {k}: in order, once each, nothing skipped");
    }
    println!(
        "rocketmq-client-rust ordered: {} messages in per-key order; retried: {} deliveries of {} messages",
        accepted.len(),
        retried.0.lock().unwrap().len(),
        retry_bodies.len()
    );
    for c in [&mut oc, &mut rc] {
        if tokio::time::timeout(SETUP_TIMEOUT, c.shutdown()).await.is_err() {
            eprintln!("note: consumer shutdown took longer than {SETUP_TIMEOUT:?}");
        }
    }
}
