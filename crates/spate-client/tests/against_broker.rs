//! Client scenarios against a running name server and broker. Skipped unless
//! `SPATE_NAMESRV` names one, e.g.
//!
//! ```text
//! spate standalone --data-dir /tmp/d --namesrv-port 19876 --broker-port 19911 &
//! SPATE_NAMESRV=127.0.0.1:19876 cargo test -p spate-client --test against_broker
//! ```

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeOrderlyStatus, ConsumeStatus, LitePullConsumer, LitePullConsumerOptions,
    Message, MessageExt, MessageListener, MessageModel, Producer, ProducerOptions, PushConsumer, PushConsumerOptions,
};

fn namesrv() -> Option<String> {
    std::env::var("SPATE_NAMESRV").ok().filter(|s| !s.is_empty())
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}", nanos % 1_000_000_000_000)
}

fn config(ns: &str, instance: &str) -> ClientConfig {
    ClientConfig::new(ns).with_instance_name(instance)
}

fn consumer_options(group: &str) -> PushConsumerOptions {
    let mut o = PushConsumerOptions::new(group);
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    o.rebalance_interval = Duration::from_secs(1);
    o.offset_store_dir = std::env::temp_dir().join(unique("spate-offsets"));
    o
}

type Received = Arc<Mutex<Vec<MessageExt>>>;

fn collecting() -> (Received, MessageListener) {
    let got: Received = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let listener = MessageListener::concurrently(move |msgs, _| {
        g.lock().extend(msgs.iter().cloned());
        ConsumeStatus::ConsumeSuccess
    });
    (got, listener)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn produce(ns: &str, topic: &str, n: usize, tag: impl Fn(usize) -> &'static str) -> Producer {
    let p = Producer::start(config(ns, &unique("p")), ProducerOptions::new(unique("pg"))).await.unwrap();
    for i in 0..n {
        p.send(Message::new(topic, format!("m{i}")).with_tags(tag(i))).await.unwrap();
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_n_consume_exactly_n_in_queue_order() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Order");
    let p = produce(&ns, &topic, 100, |_| "T").await;
    let c = PushConsumer::new(config(&ns, "c1"), consumer_options(&unique("g"))).unwrap();
    c.subscribe(&topic, "*").unwrap();
    let (got, listener) = collecting();
    c.start(listener).await.unwrap();
    wait_until("100 messages", Duration::from_secs(30), || got.lock().len() >= 100).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.shutdown().await;
    p.shutdown().await;
    let got = got.lock();
    assert_eq!(got.len(), 100, "exactly N delivered");
    let ids: HashSet<&str> = got.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), 100, "no duplicates");
    let mut per_queue: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
    for m in got.iter() {
        per_queue.entry(m.queue_id).or_default().push(m.queue_offset);
    }
    for (q, offs) in per_queue {
        let mut sorted = offs.clone();
        sorted.sort();
        assert_eq!(sorted, (0..offs.len() as i64).collect::<Vec<_>>(), "queue {q} offsets contiguous from 0");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_split_queues_and_rebalance_on_shutdown() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Split");
    let p = produce(&ns, &topic, 8, |_| "T").await;
    let group = unique("g");
    let a = PushConsumer::new(config(&ns, "a"), consumer_options(&group)).unwrap();
    let b = PushConsumer::new(config(&ns, "b"), consumer_options(&group)).unwrap();
    for c in [&a, &b] {
        c.subscribe(&topic, "*").unwrap();
    }
    let (got_a, la) = collecting();
    let (got_b, lb) = collecting();
    a.start(la).await.unwrap();
    b.start(lb).await.unwrap();
    let mine = |c: &PushConsumer| c.assigned_queues().iter().filter(|q| q.topic == topic).count();
    wait_until("queues split 2/2", Duration::from_secs(20), || mine(&a) == 2 && mine(&b) == 2).await;
    b.shutdown().await;
    wait_until("a takes all 4", Duration::from_secs(20), || mine(&a) == 4).await;
    wait_until("all 8 consumed", Duration::from_secs(20), || got_a.lock().len() + got_b.lock().len() >= 8).await;
    a.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasting_delivers_everything_to_each_consumer() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Bcast");
    let p = produce(&ns, &topic, 12, |_| "T").await;
    let group = unique("g");
    let mut got = Vec::new();
    let mut consumers = Vec::new();
    for name in ["x", "y"] {
        let mut o = consumer_options(&group);
        o.message_model = MessageModel::Broadcasting;
        let c = PushConsumer::new(config(&ns, name), o).unwrap();
        c.subscribe(&topic, "*").unwrap();
        let (g, l) = collecting();
        c.start(l).await.unwrap();
        got.push(g);
        consumers.push(c);
    }
    wait_until("12 each", Duration::from_secs(20), || got.iter().all(|g| g.lock().len() >= 12)).await;
    for c in &consumers {
        c.shutdown().await;
    }
    p.shutdown().await;
    assert!(got.iter().all(|g| g.lock().len() == 12));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_filter_delivers_only_matching_tags() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Tags");
    let p = produce(&ns, &topic, 20, |i| if i % 2 == 0 { "TagA" } else { "TagB" }).await;
    let c = PushConsumer::new(config(&ns, "t"), consumer_options(&unique("g"))).unwrap();
    c.subscribe(&topic, " TagA ").unwrap();
    let (got, l) = collecting();
    c.start(l).await.unwrap();
    wait_until("10 TagA", Duration::from_secs(20), || got.lock().len() >= 10).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.shutdown().await;
    p.shutdown().await;
    let got = got.lock();
    assert_eq!(got.len(), 10);
    assert!(got.iter().all(|m| m.tags() == Some("TagA")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_lands_in_one_queue_and_orderly_consumer_sees_it_in_order() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Batch");
    let p = Producer::start(config(&ns, "bp"), ProducerOptions::new(unique("pg"))).await.unwrap();
    // Create the topic first so the batch goes to a known route.
    p.send(Message::new(&topic, "first")).await.unwrap();
    let batch: Vec<Message> = (0..10).map(|i| Message::new(&topic, format!("b{i}"))).collect();
    let r = p.send_batch(batch).await.unwrap();
    assert_eq!(r.msg_id.split(',').count(), 10);
    let order: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let o2 = order.clone();
    let c = PushConsumer::new(config(&ns, "o"), consumer_options(&unique("g"))).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::orderly(move |msgs, _| {
        o2.lock().extend(msgs.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()));
        ConsumeOrderlyStatus::Success
    }))
    .await
    .unwrap();
    wait_until("11 messages", Duration::from_secs(20), || order.lock().len() >= 11).await;
    c.shutdown().await;
    p.shutdown().await;
    let seen: Vec<String> = order.lock().iter().filter(|b| b.starts_with('b')).cloned().collect();
    assert_eq!(seen, (0..10).map(|i| format!("b{i}")).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lite_pull_assign_poll_commit_seek() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Lite");
    let p = produce(&ns, &topic, 8, |_| "T").await;
    let mut o = LitePullConsumerOptions::new(unique("g"));
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    o.auto_commit = false;
    let c = LitePullConsumer::new(config(&ns, "l"), o).unwrap();
    // The broker registers an auto-created topic with the name server shortly after the first send.
    let start = Instant::now();
    let queues = loop {
        match c.fetch_message_queues(&topic).await {
            Ok(q) if !q.is_empty() => break q,
            other => assert!(start.elapsed() < Duration::from_secs(40), "no route: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(queues.len(), 4);
    c.assign(queues.clone()).unwrap();
    c.start().await.unwrap();
    let mut got = Vec::new();
    let start = Instant::now();
    while got.len() < 8 && start.elapsed() < Duration::from_secs(20) {
        got.extend(c.poll(Duration::from_secs(1)).await);
    }
    assert_eq!(got.len(), 8);
    c.commit().await.unwrap();
    let q0 = &queues[0];
    assert_eq!(c.committed(q0).await.unwrap(), Some(2));
    c.seek(q0, 0).await.unwrap();
    let mut again = Vec::new();
    let start = Instant::now();
    while again.len() < 2 && start.elapsed() < Duration::from_secs(20) {
        again.extend(c.poll(Duration::from_secs(1)).await);
    }
    assert_eq!(again.iter().map(|m| m.queue_offset).collect::<Vec<_>>(), vec![0, 1]);
    c.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconsume_later_comes_back_through_the_retry_topic() {
    let Some(ns) = namesrv() else { return };
    let topic = unique("Retry");
    let p = produce(&ns, &topic, 2, |_| "T").await;
    let seen: Arc<Mutex<Vec<(String, i32)>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let c = PushConsumer::new(config(&ns, "r"), consumer_options(&unique("g"))).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::concurrently(move |msgs, _| {
        let mut s = s2.lock();
        let mut status = ConsumeStatus::ConsumeSuccess;
        for m in msgs {
            if m.reconsume_times == 0 {
                status = ConsumeStatus::ReconsumeLater;
            }
            s.push((m.msg_id.clone(), m.reconsume_times));
        }
        status
    }))
    .await
    .unwrap();
    // Delay level 3 (10 s upstream) before the retry arrives.
    wait_until("both retried", Duration::from_secs(60), || seen.lock().iter().filter(|(_, r)| *r >= 1).count() >= 2)
        .await;
    c.shutdown().await;
    p.shutdown().await;
    let s = seen.lock();
    let retried: Vec<&(String, i32)> = s.iter().filter(|(_, r)| *r >= 1).collect();
    assert!(retried.iter().all(|(id, _)| s.iter().any(|(first, r)| first == id && *r == 0)), "{s:?}");
}
