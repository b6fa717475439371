//! `spate bench e2e`: a producer at a fixed rate and a push consumer (or,
//! with `--pop`, simple consumers popping) in one process. Each body starts
//! with its sequence number, so the consumer knows the message's intended
//! send time: born-to-consume latency is measured from it (open loop),
//! store-to-consume from the broker's store timestamp (millisecond
//! resolution).
//!
//! With `--pop --unacked-percent P`, P % of the messages are left un-acked
//! on their first delivery; when one comes back, its revive lateness is the
//! time past `--invisible` since the receive that first got it was sent (the
//! broker's pop time is later, so this bounds the broker's lateness from
//! above, delivery to a consumer included).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageExt, MessageListener, Producer, ProducerOptions,
    PushConsumer, PushConsumerOptions, SimpleConsumer, SimpleConsumerOptions,
};

use super::report::{histogram, Report};

#[derive(Debug, Clone, clap::Args)]
pub struct E2eArgs {
    /// Name server address(es).
    #[arg(short = 'n', long = "namesrv", default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    #[arg(long, default_value = "BenchmarkE2e")]
    pub topic: String,
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per second (open loop).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value = "10s", value_parser = super::report::parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = super::report::parse_duration)]
    pub warmup: Duration,
    /// Send delayed messages of this level (upstream's default
    /// `messageDelayLevel` assumed: 1 = 1 s, 2 = 5 s, 3 = 10 s, ...);
    /// latency is then measured from when each was due.
    #[arg(long, default_value_t = 0, conflicts_with = "timer_delay")]
    pub delay_level: i32,
    /// Send timer messages due this long after their send time
    /// (`TIMER_DELAY_MS`); latency is measured from when each was due.
    #[arg(long, value_parser = super::report::parse_duration)]
    pub timer_delay: Option<Duration>,
    /// Consume by pop + ack (simple consumers) instead of a push consumer.
    #[arg(long)]
    pub pop: bool,
    /// Simple consumers with `--pop`.
    #[arg(long, default_value_t = 4, requires = "pop")]
    pub consumers: usize,
    /// Invisible time of each pop.
    #[arg(long, default_value = "30s", value_parser = super::report::parse_duration, requires = "pop")]
    pub invisible: Duration,
    /// With `--pop`: this share of messages (by sequence number) is left
    /// un-acked on its first delivery, to measure revive lateness.
    #[arg(long, default_value_t = 0, requires = "pop", value_parser = clap::value_parser!(u64).range(0..=100))]
    pub unacked_percent: u64,
}

/// Upstream's default delay levels, for `--delay-level`.
const DEFAULT_LEVEL_SECS: [u64; 18] =
    [1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200];

impl E2eArgs {
    /// How long after its send each message is due.
    fn delay(&self) -> Result<Duration> {
        if let Some(d) = self.timer_delay {
            return Ok(d);
        }
        match self.delay_level {
            0 => Ok(Duration::ZERO),
            l @ 1..=18 => Ok(Duration::from_secs(DEFAULT_LEVEL_SECS[l as usize - 1])),
            l => bail!("--delay-level {l}: 1 to 18"),
        }
    }
}

pub async fn run(a: &E2eArgs) -> Result<Report> {
    if a.rate == 0 || a.size < 16 {
        bail!("--rate must be positive and --size at least 16");
    }
    let delay = a.delay()?;
    let delay_ms = delay.as_millis() as i64;
    // Bodies carry (run id, sequence number): messages of earlier runs in
    // the same topic are skipped, not mistaken for this run's.
    let run_id = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1) | 1;
    let pid = std::process::id();
    let producer = Producer::start(
        ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-e2e-p-{pid}")),
        ProducerOptions::new(format!("bench_e2e_producer_{pid}")),
    )
    .await
    .with_context(|| format!("connecting to {}", a.namesrv))?;
    producer.send(Message::new(&a.topic, vec![0u8; a.size])).await.context("first send")?;

    let group = format!("bench_e2e_consumer_{pid}");
    if !a.pop {
        // A new group would start at offset 0 while the queue is young (the
        // broker's rule): move it to the end so only this run is consumed.
        commit_group_at_end(&a.namesrv, &a.topic, &group).await?;
    }

    let start = Instant::now();
    let measure_from = start + a.warmup;
    let total = a.warmup + a.duration;
    let window = super::procstat::Window::start(measure_from);
    let obs = Arc::new(Observer {
        run_id,
        start,
        measure_from,
        rate: a.rate as f64,
        delay,
        born: Mutex::new(histogram()),
        stored: Mutex::new(histogram()),
        exact: Mutex::new(histogram()),
        received: AtomicU64::new(0),
        early: AtomicU64::new(0),
    });
    let consumers = if a.pop {
        Consumers::Pop(PopSide::start(a, obs.clone()).await?)
    } else {
        let mut o = PushConsumerOptions::new(group);
        o.consume_from_where = ConsumeFromWhere::LastOffset;
        let consumer =
            PushConsumer::new(ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-e2e-c-{pid}")), o)?;
        consumer.subscribe(&a.topic, "*")?;
        // The listener never blocks, so it is an async one: it runs on the
        // runtime instead of hopping to a blocking-pool thread for every batch.
        let o = obs.clone();
        consumer
            .start(MessageListener::concurrently_async(move |msgs, _| {
                let (now, now_ms) = now();
                for m in &msgs {
                    o.observe(m, now, now_ms);
                }
                std::future::ready(ConsumeStatus::ConsumeSuccess)
            }))
            .await?;
        Consumers::Push(consumer)
    };
    // Let the consumer's pulls reach the broker before the schedule starts.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let sent = Arc::new(AtomicU64::new(0));
    let producer = Arc::new(producer);
    let (p, size, topic, sent2) = (producer.clone(), a.size, a.topic.clone(), sent.clone());
    let (timer_delay, delay_level) = (a.timer_delay, a.delay_level);
    let schedule = super::report::open_loop_schedule_in_runtime(start, start + total, a.rate as f64, move |k, _| {
        let mut body = BytesMut::with_capacity(size);
        body.put_u64(run_id);
        body.put_u64(k);
        body.resize(size, 0x5a);
        let s = sent2.clone();
        let mut msg = Message::new(&topic, Bytes::from(body));
        if let Some(d) = timer_delay {
            msg = msg.with_delay_time(d);
        } else if delay_level > 0 {
            msg = msg.with_delay_level(delay_level);
        }
        let _ = p.send_async(msg, move |r| {
            if r.is_ok() {
                s.fetch_add(1, Ordering::Relaxed);
            }
        });
        true
    });
    // On a worker: what the schedule issues is spawned there, with no
    // thread to wake.
    tokio::spawn(schedule).await.context("the open-loop schedule")?.context("the open-loop schedule")?;
    let expected = (a.duration.as_secs_f64() * a.rate as f64) as u64;
    // Per message sent in the measured window (each one send and one delivery).
    let usage = window.fields(expected, "message").await;
    // Stragglers: up to 5 s past the last one's due time.
    let deadline = Instant::now() + delay + Duration::from_secs(5);
    while obs.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = obs.received.load(Ordering::Relaxed);
    let mut extra = usage;
    match consumers {
        Consumers::Push(c) => c.shutdown().await,
        Consumers::Pop(p) => p.finish(a, &mut extra).await,
    }
    producer.shutdown().await;
    let st = obs.stored.lock().clone();
    extra.insert("store_to_consume_p50_us".into(), st.value_at_quantile(0.5).into());
    extra.insert("store_to_consume_p99_us".into(), st.value_at_quantile(0.99).into());
    extra.insert("rate".into(), a.rate.into());
    extra.insert("size".into(), a.size.into());
    extra.insert("expected".into(), expected.into());
    // Acknowledged sends, warm-up included (a shortfall in "expected" is
    // then either sends that failed or messages that never arrived).
    extra.insert("sent_acked".into(), sent.load(Ordering::Relaxed).into());
    if delay.is_zero() {
        extra.insert("latency".into(), "born_to_consume from intended send time".into());
    } else {
        extra.insert("latency".into(), "due_to_consume: from intended send time + delay".into());
        extra.insert("delay_ms".into(), delay_ms.into());
        extra.insert("delivered_early".into(), obs.early.load(Ordering::Relaxed).into());
        let x = obs.exact.lock();
        if !x.is_empty() {
            extra.insert("timer_due_to_consume_p50_us".into(), x.value_at_quantile(0.5).into());
            extra.insert("timer_due_to_consume_p99_us".into(), x.value_at_quantile(0.99).into());
            extra.insert("timer_due_to_consume_max_us".into(), x.max().into());
        }
    }
    let mut errors = std::collections::BTreeMap::new();
    if got < expected {
        errors.insert(-1, expected - got);
    }
    let latency_us = obs.born.lock().clone();
    Ok(Report { name: "e2e", elapsed: a.duration, latency_us, sent_ok: got, errors, extra })
}

fn now() -> (Instant, i64) {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    (Instant::now(), ms)
}

/// What the consumers of a run record, whichever model they use.
struct Observer {
    run_id: u64,
    start: Instant,
    measure_from: Instant,
    rate: f64,
    delay: Duration,
    born: Mutex<hdrhistogram::Histogram<u64>>,
    stored: Mutex<hdrhistogram::Histogram<u64>>,
    /// Timer messages carry their due time: lateness against it exactly (ms).
    exact: Mutex<hdrhistogram::Histogram<u64>>,
    received: AtomicU64,
    early: AtomicU64,
}

impl Observer {
    /// This run's sequence number of `m`, or `None` for another run's
    /// message or the first-send probe.
    fn seq(&self, m: &MessageExt) -> Option<u64> {
        if m.body.len() < 16 || m.body[..8] != self.run_id.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(m.body[8..16].try_into().ok()?))
    }

    /// Records a first delivery of `m`, received at `now`; its sequence number.
    fn observe(&self, m: &MessageExt, now: Instant, now_ms: i64) -> Option<u64> {
        let k = self.seq(m)?;
        let intended = self.start + Duration::from_secs_f64(k as f64 / self.rate);
        if intended < self.measure_from {
            return Some(k);
        }
        self.received.fetch_add(1, Ordering::Relaxed);
        let delay_ms = self.delay.as_millis() as i64;
        // Stored after it was born, so due no earlier than born + delay.
        if delay_ms > 0 && now_ms < m.born_timestamp + delay_ms {
            self.early.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(due) = m.property("TIMER_DELIVER_MS").and_then(|v| v.parse::<i64>().ok()) {
            let _ = self.exact.lock().record(((now_ms - due).max(0) as u64 * 1000).max(1));
        }
        let intended = intended + self.delay;
        let _ = self.born.lock().record(now.saturating_duration_since(intended).as_micros().max(1) as u64);
        let _ = self.stored.lock().record(((now_ms - m.store_timestamp).max(0) as u64 * 1000).max(1));
        Some(k)
    }
}

enum Consumers {
    Push(PushConsumer),
    Pop(PopSide),
}

/// `--pop`: simple consumers receiving, observing first deliveries, and
/// acking everything but the `--unacked-percent` share on its first delivery.
struct PopSide {
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tally: Arc<PopTally>,
}

#[derive(Default)]
struct PopTally {
    /// Sequence numbers of this run received so far.
    seen: Mutex<std::collections::HashSet<u64>>,
    /// Sequence numbers left un-acked, with when the receive that got them was sent.
    held: Mutex<std::collections::HashMap<u64, Instant>>,
    /// Came back: time past the invisible time since that receive was sent.
    lateness_us: Mutex<Option<hdrhistogram::Histogram<u64>>>,
    revived: AtomicU64,
    /// Deliveries after the first of a message not held back (its ack
    /// was late or lost).
    redelivered: AtomicU64,
    receive_errors: AtomicU64,
    ack_errors: AtomicU64,
}

impl PopSide {
    async fn start(a: &E2eArgs, obs: Arc<Observer>) -> Result<PopSide> {
        if a.consumers == 0 {
            bail!("--consumers must be positive");
        }
        let pid = std::process::id();
        let group = format!("bench_e2e_pop_{pid}");
        // At the queues' ends before the producer starts, however late the
        // first receive reaches the broker.
        commit_group_at_end(&a.namesrv, &a.topic, &group).await?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let tally = Arc::new(PopTally { lateness_us: Mutex::new(Some(histogram())), ..Default::default() });
        let mut tasks = Vec::new();
        for i in 0..a.consumers {
            let mut o = SimpleConsumerOptions::new(group.clone());
            o.await_duration = Duration::from_secs(1);
            o.from_first = false;
            let cfg = ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-e2e-pop-{pid}-{i}"));
            let consumer = SimpleConsumer::new(cfg, o)?;
            consumer.subscribe(&a.topic, "*")?;
            consumer.start().await.with_context(|| format!("starting a simple consumer via {}", a.namesrv))?;
            let (obs, t, stop) = (obs.clone(), tally.clone(), stop.clone());
            let (invisible, unacked) = (a.invisible, a.unacked_percent);
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    let got = match consumer.receive(32, invisible).await {
                        Ok(got) => got,
                        Err(_) => {
                            t.receive_errors.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let (now, now_ms) = now();
                    let mut ack = Vec::with_capacity(got.len());
                    for m in got {
                        // Another run's message or the probe: acked, not counted.
                        let Some(k) = obs.seq(&m.message) else {
                            ack.push(m);
                            continue;
                        };
                        // The first time a message arrives counts, whatever
                        // its attempt (an answer lost to a timeout makes the
                        // next delivery the first one seen).
                        if t.seen.lock().insert(k) {
                            obs.observe(&m.message, now, now_ms);
                            if k % 100 < unacked {
                                t.held.lock().insert(k, sent);
                                continue;
                            }
                        } else if let Some(first) = t.held.lock().remove(&k) {
                            let late = now.saturating_duration_since(first + invisible);
                            if let Some(h) = t.lateness_us.lock().as_mut() {
                                let _ = h.record((late.as_micros() as u64).max(1));
                            }
                            t.revived.fetch_add(1, Ordering::Relaxed);
                        } else {
                            t.redelivered.fetch_add(1, Ordering::Relaxed);
                        }
                        ack.push(m);
                    }
                    if !ack.is_empty() && consumer.ack_many(&ack).await.is_err() {
                        t.ack_errors.fetch_add(ack.len() as u64, Ordering::Relaxed);
                    }
                }
                consumer.shutdown().await;
            }));
        }
        Ok(PopSide { stop, tasks, tally })
    }

    /// Waits for the messages left un-acked to come back (up to the
    /// invisible time and 5 s), stops the consumers, adds the pop fields.
    async fn finish(self, a: &E2eArgs, extra: &mut serde_json::Map<String, serde_json::Value>) {
        let deadline = Instant::now() + a.invisible + Duration::from_secs(5);
        while !self.tally.held.lock().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let t = &self.tally;
        extra.insert("mode".into(), "pop".into());
        extra.insert("consumers".into(), a.consumers.into());
        extra.insert("invisible_ms".into(), (a.invisible.as_millis() as u64).into());
        extra.insert("unacked_percent".into(), a.unacked_percent.into());
        extra.insert("revived".into(), t.revived.load(Ordering::Relaxed).into());
        extra.insert("never_came_back".into(), (t.held.lock().len() as u64).into());
        extra.insert("redelivered".into(), t.redelivered.load(Ordering::Relaxed).into());
        extra.insert("receive_errors".into(), t.receive_errors.load(Ordering::Relaxed).into());
        extra.insert("ack_errors".into(), t.ack_errors.load(Ordering::Relaxed).into());
        if let Some(h) = t.lateness_us.lock().as_ref().filter(|h| !h.is_empty()) {
            extra.insert("revive_lateness_p50_us".into(), h.value_at_quantile(0.5).into());
            extra.insert("revive_lateness_p99_us".into(), h.value_at_quantile(0.99).into());
            extra.insert("revive_lateness_max_us".into(), h.max().into());
        }
    }
}

/// Commits `group`'s offset on every queue of `topic` at the queue's end.
async fn commit_group_at_end(namesrv: &str, topic: &str, group: &str) -> Result<()> {
    use spate_remoting::protocol::{json, TopicRouteData};
    use spate_remoting::{request, response, RemotingClient, RemotingCommand};
    let t = Duration::from_secs(5);
    let c = RemotingClient::new(spate_remoting::ClientConfig::default(), None);
    let ns = namesrv.split(';').next().unwrap_or(namesrv).trim();
    // The topic was just created by the first send: wait briefly for its route.
    let deadline = Instant::now() + Duration::from_secs(10);
    let route: TopicRouteData = loop {
        let r = c.invoke(ns, RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic), t).await?;
        if r.code == response::SUCCESS {
            break json::decode(&r.body, "route")?;
        }
        if Instant::now() > deadline {
            bail!("no route for topic {topic}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for q in &route.queue_datas {
        let Some(addr) =
            route.broker_datas.iter().find(|b| b.broker_name == q.broker_name).and_then(|b| b.master_addr())
        else {
            continue;
        };
        for id in 0..q.read_queue_nums {
            let r = c
                .invoke(
                    addr,
                    RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", topic).with("queueId", id),
                    t,
                )
                .await?;
            let max: i64 = r.field("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
                .with("consumerGroup", group)
                .with("topic", topic)
                .with("queueId", id)
                .with("commitOffset", max);
            c.invoke(addr, commit, t).await?;
        }
    }
    Ok(())
}
