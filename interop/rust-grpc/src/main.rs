//! Spate's RocketMQ 5 gRPC endpoint driven by the official Rust SDK (crate
//! `rocketmq` 5.0.0), through its public API only.
//!
//! A Producer sends `--count` messages to `--topic` (the first half one by
//! one with `send`, the rest in batches of up to 5 with `batch_send`), each
//! with tag `TagA`, two keys, three user properties and a byte-exact body
//! (arbitrary bytes, not UTF-8, of varying length, one of them 256 KiB). It
//! also sends one decoy message tagged `TagB`. A SimpleConsumer in `--group`
//! then receives with the filter `TagA` and acks until every message has
//! arrived, checking for each one: message id (against the send receipt),
//! topic, body, tag, keys, user properties, and that it comes only once.
//! The decoy must never arrive. Finally, after the invisible duration has
//! passed, one more receive must find nothing: the acks took effect.
//!
//! A receive that has not returned 10 s after its long-polling timeout
//! (the SDK only returns once the server ends the response stream) fails
//! the run. Prints one JSON line; exits 0 (pass), 1 (a check or an RPC
//! failed), 2 (bad arguments) or 3 (the `--watchdog` fired).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::exit;
use std::time::{Duration, Instant};

use rocketmq::conf::{ClientOption, ProducerOption, SimpleConsumerOption};
use rocketmq::model::common::{FilterExpression, FilterType};
use rocketmq::model::message::MessageBuilder;
use rocketmq::{Producer, SimpleConsumer};

const TAG: &str = "TagA";
const DECOY_TAG: &str = "TagB";
const BIG_BODY: usize = 256 * 1024;
const INVISIBLE: Duration = Duration::from_secs(5);
const LONG_POLL: Duration = Duration::from_secs(4);
const BATCH: usize = 5;
/// How long past its long-polling timeout a receive may take before it is
/// reported as hung. The SDK sends LONG_POLL both as the request's
/// long_polling_timeout and as its grpc-timeout, but does not enforce the
/// latter itself, and it returns only once the server ends the stream.
const RECEIVE_SLACK: Duration = Duration::from_secs(10);

struct Args {
    endpoint: String,
    topic: String,
    group: String,
    count: usize,
    recv_timeout: Duration,
    watchdog: Duration,
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!(
        "usage: spate-rust-grpc-interop --endpoint HOST:PORT --topic T --group G \
         [--count N (default 50)] [--recv-timeout SECS (default 60)] [--watchdog SECS (default 120)]"
    );
    exit(2)
}

fn parse_args() -> Args {
    let mut endpoint = None;
    let mut topic = None;
    let mut group = None;
    let mut count = 50usize;
    let mut recv_timeout = 60u64;
    let mut watchdog = 120u64;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        match flag.as_str() {
            "--endpoint" => endpoint = Some(value()),
            "--topic" => topic = Some(value()),
            "--group" => group = Some(value()),
            "--count" => count = value().parse().unwrap_or_else(|_| usage("--count: not a number")),
            "--recv-timeout" => {
                recv_timeout = value().parse().unwrap_or_else(|_| usage("--recv-timeout: not a number"))
            }
            "--watchdog" => watchdog = value().parse().unwrap_or_else(|_| usage("--watchdog: not a number")),
            other => usage(&format!("unknown option {other}")),
        }
    }
    if count < 2 {
        usage("--count must be at least 2");
    }
    Args {
        endpoint: endpoint.unwrap_or_else(|| usage("--endpoint is required")),
        topic: topic.unwrap_or_else(|| usage("--topic is required")),
        group: group.unwrap_or_else(|| usage("--group is required")),
        count,
        recv_timeout: Duration::from_secs(recv_timeout),
        watchdog: Duration::from_secs(watchdog),
    }
}

/// The body of message `i`: every byte value appears, the content depends on
/// `i`, lengths vary from 1 byte up, and message 1 is 256 KiB.
fn body(i: usize) -> Vec<u8> {
    let len = if i == 1 { BIG_BODY } else { 1 + (i * 97) % 700 };
    (0..len).map(|j| ((j * 31 + i * 7 + (j >> 8)) % 256) as u8).collect()
}

fn keys(i: usize, run: &str) -> Vec<String> {
    vec![format!("key-{i}"), format!("run-{run}")]
}

fn properties(i: usize) -> HashMap<String, String> {
    HashMap::from([
        ("seq".to_string(), i.to_string()),
        ("lang".to_string(), "rust".to_string()),
        ("note".to_string(), format!("ünïcødé ✓ {i} = with spaces")),
    ])
}

/// A JSON string literal.
fn js(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

struct Report {
    sent: usize,
    received: usize,
    acked: usize,
    receives: usize,
    failures: Vec<String>,
    send_ms: u128,
    recv_ms: u128,
}

impl Report {
    fn print(&self, args: &Args) {
        let failures: Vec<String> = self.failures.iter().take(20).map(|f| js(f)).collect();
        println!(
            "{{\"ok\":{},\"client\":\"rocketmq (Rust) 5.0.0\",\"topic\":{},\"group\":{},\"count\":{},\
             \"sent\":{},\"received\":{},\"acked\":{},\"receive_calls\":{},\"send_ms\":{},\"receive_ms\":{},\
             \"failures\":[{}]}}",
            self.failures.is_empty(),
            js(&args.topic),
            js(&args.group),
            args.count,
            self.sent,
            self.received,
            self.acked,
            self.receives,
            self.send_ms,
            self.recv_ms,
            failures.join(",")
        );
    }
}

async fn run(args: &Args, report: &mut Report) -> Result<(), String> {
    let run_id = format!("{}", std::process::id());

    let mut client_option = ClientOption::default();
    client_option.set_access_url(args.endpoint.clone());
    client_option.set_enable_tls(false);
    client_option.set_timeout(Duration::from_secs(10));

    let mut producer_option = ProducerOption::default();
    producer_option.set_topics(vec![args.topic.clone()]);
    let mut producer =
        Producer::new(producer_option, client_option.clone()).map_err(|e| format!("Producer::new: {e:?}"))?;
    producer.start().await.map_err(|e| format!("Producer::start: {e:?}"))?;

    let mut consumer_option = SimpleConsumerOption::default();
    consumer_option.set_topics(vec![args.topic.clone()]);
    consumer_option.set_consumer_group(args.group.clone());
    let mut consumer_client_option = client_option.clone();
    consumer_client_option.set_long_polling_timeout(LONG_POLL);
    let mut consumer = SimpleConsumer::new(consumer_option, consumer_client_option)
        .map_err(|e| format!("SimpleConsumer::new: {e:?}"))?;
    consumer.start().await.map_err(|e| format!("SimpleConsumer::start: {e:?}"))?;

    let build = |i: usize| {
        MessageBuilder::builder()
            .set_topic(args.topic.clone())
            .set_tag(TAG)
            .set_keys(keys(i, &run_id))
            .set_properties(properties(i))
            .set_body(body(i))
            .build()
            .map_err(|e| format!("MessageBuilder::build({i}): {e:?}"))
    };

    // Send: message id -> index.
    let started = Instant::now();
    let mut ids: HashMap<String, usize> = HashMap::new();
    let half = args.count / 2;
    for i in 0..half {
        let receipt = producer.send(build(i)?).await.map_err(|e| format!("send #{i}: {e:?}"))?;
        if receipt.message_id().is_empty() || ids.insert(receipt.message_id().to_string(), i).is_some() {
            return Err(format!("send #{i}: empty or duplicate message id {:?}", receipt.message_id()));
        }
        report.sent += 1;
    }
    let mut i = half;
    while i < args.count {
        let end = (i + BATCH).min(args.count);
        let batch = (i..end).map(build).collect::<Result<Vec<_>, _>>()?;
        let receipts = producer.batch_send(batch).await.map_err(|e| format!("batch_send #{i}..#{end}: {e:?}"))?;
        if receipts.len() != end - i {
            return Err(format!("batch_send #{i}..#{end}: {} receipts", receipts.len()));
        }
        for (k, receipt) in receipts.iter().enumerate() {
            if receipt.message_id().is_empty() || ids.insert(receipt.message_id().to_string(), i + k).is_some() {
                return Err(format!("batch_send #{}: empty or duplicate message id {:?}", i + k, receipt.message_id()));
            }
        }
        report.sent += end - i;
        i = end;
    }
    let decoy = MessageBuilder::builder()
        .set_topic(args.topic.clone())
        .set_tag(DECOY_TAG)
        .set_body(b"decoy: must not pass a TagA filter".to_vec())
        .build()
        .map_err(|e| format!("MessageBuilder::build(decoy): {e:?}"))?;
    let decoy_id = producer.send(decoy).await.map_err(|e| format!("send decoy: {e:?}"))?.message_id().to_string();
    report.send_ms = started.elapsed().as_millis();

    // Receive and ack.
    let started = Instant::now();
    let filter = FilterExpression::new(FilterType::Tag, TAG);
    let mut seen: HashSet<usize> = HashSet::new();
    while seen.len() < args.count {
        if started.elapsed() > args.recv_timeout {
            let mut missing: Vec<usize> = (0..args.count).filter(|i| !seen.contains(i)).collect();
            missing.truncate(20);
            report.failures.push(format!(
                "receive: only {}/{} messages within {:?}; missing (first 20) {missing:?}",
                seen.len(),
                args.count,
                args.recv_timeout
            ));
            break;
        }
        report.receives += 1;
        let views = receive(&consumer, &args.topic, &filter, report.receives).await?;
        for view in views {
            report.received += 1;
            let id = view.message_id().to_string();
            if id == decoy_id {
                report.failures.push(format!("decoy {id} (tag {DECOY_TAG}) passed the {TAG} filter"));
            } else if let Some(&i) = ids.get(&id) {
                if !seen.insert(i) {
                    report.failures.push(format!("#{i} ({id}) received twice"));
                }
                check(&view, i, &args.topic, &run_id, &mut report.failures);
            } else {
                report.failures.push(format!("unknown message id {id} received"));
            }
            consumer.ack(&view).await.map_err(|e| format!("ack {id}: {e:?}"))?;
            report.acked += 1;
        }
    }
    report.recv_ms = started.elapsed().as_millis();

    // Nothing may come back once the invisible duration is over.
    if report.failures.is_empty() {
        tokio::time::sleep(INVISIBLE + Duration::from_secs(1)).await;
        report.receives += 1;
        let again = receive(&consumer, &args.topic, &filter, report.receives).await?;
        for view in again {
            report.failures.push(format!(
                "{} came back after being acked (attempt {})",
                view.message_id(),
                view.delivery_attempt()
            ));
        }
    }

    consumer.shutdown().await.map_err(|e| format!("SimpleConsumer::shutdown: {e:?}"))?;
    producer.shutdown().await.map_err(|e| format!("Producer::shutdown: {e:?}"))?;
    Ok(())
}

/// One ReceiveMessage call (up to 16 messages), bounded in time.
async fn receive(
    consumer: &SimpleConsumer,
    topic: &str,
    filter: &FilterExpression,
    call: usize,
) -> Result<Vec<rocketmq::model::message::MessageView>, String> {
    match tokio::time::timeout(LONG_POLL + RECEIVE_SLACK, consumer.receive_with(topic, filter, 16, INVISIBLE)).await {
        Ok(Ok(views)) => Ok(views),
        Ok(Err(e)) => Err(format!("ReceiveMessage (call {call}): {e:?}")),
        Err(_) => Err(format!(
            "ReceiveMessage (call {call}): the response stream did not end within {:?} \
             (long_polling_timeout and grpc-timeout {:?})",
            LONG_POLL + RECEIVE_SLACK,
            LONG_POLL
        )),
    }
}

fn check(
    view: &rocketmq::model::message::MessageView,
    i: usize,
    topic: &str,
    run_id: &str,
    failures: &mut Vec<String>,
) {
    let id = view.message_id();
    if view.topic() != topic {
        failures.push(format!("#{i} ({id}): topic {:?}, want {topic:?}", view.topic()));
    }
    let want = body(i);
    if view.body() != want.as_slice() {
        let at = view.body().iter().zip(&want).position(|(a, b)| a != b).unwrap_or(view.body().len().min(want.len()));
        failures.push(format!(
            "#{i} ({id}): body differs: {} bytes, want {}; first difference at byte {at}",
            view.body().len(),
            want.len()
        ));
    }
    if view.tag() != Some(TAG) {
        failures.push(format!("#{i} ({id}): tag {:?}, want {TAG:?}", view.tag()));
    }
    let mut got_keys = view.keys().to_vec();
    got_keys.sort();
    let mut want_keys = keys(i, run_id);
    want_keys.sort();
    if got_keys != want_keys {
        failures.push(format!("#{i} ({id}): keys {:?}, want {want_keys:?}", view.keys()));
    }
    let got: BTreeMap<_, _> = view.properties().iter().collect();
    let want_props = properties(i);
    let want: BTreeMap<_, _> = want_props.iter().collect();
    if got != want {
        failures.push(format!("#{i} ({id}): user properties {got:?}, want {want:?}"));
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let mut report = Report { sent: 0, received: 0, acked: 0, receives: 0, failures: vec![], send_ms: 0, recv_ms: 0 };
    match tokio::time::timeout(args.watchdog, run(&args, &mut report)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.failures.push(e),
        Err(_) => {
            report.failures.push(format!("watchdog: not done within {:?}", args.watchdog));
            report.print(&args);
            exit(3);
        }
    }
    report.print(&args);
    exit(if report.failures.is_empty() { 0 } else { 1 });
}
