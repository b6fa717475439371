//! Sends 10 tagged messages to a topic, consumes them with a push consumer,
//! prints them and exits.
//!
//! ```text
//! cargo run --release -p spate-client --example quickstart -- --namesrv 127.0.0.1:9876 --topic QuickStart
//! ```

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageListener, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions,
};

const MESSAGES: usize = 10;
const WAIT_MAX: Duration = Duration::from_secs(60);

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: quickstart [--namesrv HOST:PORT] [--topic TOPIC]");
        return Ok(());
    }
    let namesrv = arg(&args, "--namesrv", "127.0.0.1:9876");
    let topic = arg(&args, "--topic", "QuickStart");

    let producer = Producer::start(ClientConfig::new(&namesrv), ProducerOptions::new("QuickStartProducer")).await?;
    for i in 0..MESSAGES {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        let msg = Message::new(&topic, format!("Hello Spate {i}")).with_tags(tag).with_keys([format!("key-{i}")]);
        let r = producer.send(msg).await?;
        println!(
            "sent #{i}: status={:?} msgId={} queue={}/{} offset={}",
            r.status, r.msg_id, r.message_queue.broker_name, r.message_queue.queue_id, r.queue_offset
        );
    }
    producer.shutdown().await;

    let mut options = PushConsumerOptions::new("QuickStartConsumer");
    options.consume_from_where = ConsumeFromWhere::FirstOffset;
    let consumer = PushConsumer::new(ClientConfig::new(&namesrv), options)?;
    consumer.subscribe(&topic, "TagA || TagB")?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    consumer
        .start(MessageListener::concurrently(move |msgs, ctx| {
            for m in msgs {
                println!(
                    "received: queue={} offset={} tag={} body={}",
                    ctx.message_queue.queue_id,
                    m.queue_offset,
                    m.tags().unwrap_or("-"),
                    String::from_utf8_lossy(&m.body)
                );
            }
            counter.fetch_add(msgs.len(), Ordering::SeqCst);
            ConsumeStatus::ConsumeSuccess
        }))
        .await?;

    let started = Instant::now();
    while received.load(Ordering::SeqCst) < MESSAGES && started.elapsed() < WAIT_MAX {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    consumer.shutdown().await;
    let n = received.load(Ordering::SeqCst);
    if n < MESSAGES {
        return Err(format!("consumed {n} of {MESSAGES} messages within {WAIT_MAX:?}").into());
    }
    println!("consumed {n} messages");
    Ok(())
}
