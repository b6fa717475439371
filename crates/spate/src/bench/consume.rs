//! `spate bench consume`: a push consumer (long polling) on a topic that
//! something else produces to, e.g. `spate bench produce` or any RocketMQ
//! producer. Reports consume throughput and two latencies per message:
//! born-to-consume (the producer's `bornTimestamp` to the listener call)
//! and store-to-consume (the broker's `storeTimestamp` to the listener
//! call). Both timestamps have millisecond resolution, so these
//! percentiles are whole milliseconds; `spate bench e2e` measures with
//! microsecond resolution when the producer is the bench itself.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use spate_client::{ClientConfig, ConsumeFromWhere, ConsumeStatus, MessageListener, PushConsumer, PushConsumerOptions};

use super::report::{histogram, Report};

/// Where a new consumer group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StartFrom {
    /// Only messages stored after the consumer starts (CONSUME_FROM_LAST_OFFSET).
    Last,
    /// The whole backlog (CONSUME_FROM_FIRST_OFFSET): measures draining speed.
    First,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ConsumeArgs {
    /// Name server address(es), `host:port;host:port`.
    #[command(flatten)]
    pub credentials: crate::credentials::SecurityArgs,
    #[arg(short = 'n', long = "namesrv", default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    #[arg(long, default_value = "BenchmarkTest")]
    pub topic: String,
    /// Consumer group (default: a new group per run).
    #[arg(long)]
    pub group: Option<String>,
    /// Subscription expression (tags), as in `subscribe(topic, "*")`.
    #[arg(long, default_value = "*")]
    pub expression: String,
    #[arg(long, value_enum, default_value_t = StartFrom::Last)]
    pub from: StartFrom,
    /// Measured duration (10s, 2m).
    #[arg(long, default_value = "10s", value_parser = super::report::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before it (rebalance, first pulls).
    #[arg(long, default_value = "1s", value_parser = super::report::parse_duration)]
    pub warmup: Duration,
    /// Stop early once this many messages were measured (0: run the whole duration).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// `consumeThreadMax`: listener calls running at once.
    #[arg(long, default_value_t = 20)]
    pub threads: usize,
    /// `consumeMessageBatchMaxSize`: messages per listener call.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// `pullBatchSize`: messages asked for per pull (per pop with `--pop`).
    #[arg(long = "pull-batch", default_value_t = 32)]
    pub pull_batch: i32,
    /// Consume by pop and ack (RocketMQ 5's simple consumer) instead of
    /// pulling by offset.
    #[arg(long)]
    pub pop: bool,
    /// With `--pop`: how long a popped message stays invisible to the others.
    #[arg(long, default_value = "30s", value_parser = super::report::parse_duration)]
    pub invisible: Duration,
    /// With `--pop`: simple consumers sharing the group.
    #[arg(long, default_value_t = 4)]
    pub consumers: usize,
    /// With `--pop`: ack each message by itself (ACK_MESSAGE) instead of
    /// each received batch at once (BATCH_ACK_MESSAGE).
    #[arg(long)]
    pub single_ack: bool,
    /// With `--pop`: receive and ack over RocketMQ 5's gRPC protocol at
    /// this endpoint, `host:port` (a Spate broker's port or its
    /// grpcServerPort), one connection per consumer; each batch acked at once.
    #[arg(long)]
    pub grpc: Option<String>,
}

struct Tally {
    born: Mutex<hdrhistogram::Histogram<u64>>,
    stored: Mutex<hdrhistogram::Histogram<u64>>,
    messages: AtomicU64,
    bytes: AtomicU64,
    /// Messages before the measurement window (warm-up).
    skipped: AtomicU64,
}

impl Tally {
    fn new() -> Arc<Tally> {
        Arc::new(Tally {
            born: Mutex::new(histogram()),
            stored: Mutex::new(histogram()),
            messages: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
        })
    }

    /// Counts a batch received now: each message's (born ms, stored ms, body bytes).
    fn record(&self, batch: &[(i64, i64, usize)]) {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
        let ms_to_us = |from_ms: i64| ((now_ms - from_ms).max(0) as u64 * 1000).clamp(1, 60_000_000);
        {
            let (mut born, mut stored) = (self.born.lock(), self.stored.lock());
            for (b, s, _) in batch {
                let _ = born.record(ms_to_us(*b));
                let _ = stored.record(ms_to_us(*s));
            }
        }
        let bytes: usize = batch.iter().map(|m| m.2).sum();
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.messages.fetch_add(batch.len() as u64, Ordering::Relaxed);
    }

    /// Waits out the measured window: its end, or `count` messages (0: no count).
    async fn wait_window(&self, measure_from: Instant, end: Instant, count: u64) {
        tokio::time::sleep_until(measure_from.into()).await;
        loop {
            let now = Instant::now();
            if now >= end || (count > 0 && self.messages.load(Ordering::Relaxed) >= count) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10).min(end - now)).await;
        }
    }

    /// The report of `messages` measured in `elapsed`, with the fields
    /// every consume run has added to `extra`.
    fn report(
        &self,
        mut extra: serde_json::Map<String, serde_json::Value>,
        messages: u64,
        elapsed: Duration,
        latency: &str,
    ) -> Report {
        let stored = self.stored.lock().clone();
        let q = |p: f64| if stored.is_empty() { 0 } else { stored.value_at_quantile(p) };
        extra.insert("latency".into(), latency.into());
        extra.insert("bytes_per_s".into(), (self.bytes.load(Ordering::Relaxed) as f64 / elapsed.as_secs_f64()).into());
        extra.insert("warmup_messages".into(), self.skipped.load(Ordering::Relaxed).into());
        extra.insert("store_to_consume_p50_us".into(), q(0.5).into());
        extra.insert("store_to_consume_p99_us".into(), q(0.99).into());
        extra.insert("store_to_consume_p999_us".into(), q(0.999).into());
        extra.insert("store_to_consume_max_us".into(), stored.max().into());
        if messages == 0 {
            extra.insert("note".into(), "nothing consumed: is anything producing to the topic?".into());
        }
        let latency_us = self.born.lock().clone();
        Report { name: "consume", elapsed, latency_us, sent_ok: messages, errors: Default::default(), extra }
    }
}

pub async fn run(a: &ConsumeArgs) -> Result<Report> {
    if a.pop {
        return run_pop(a).await;
    }
    if a.threads == 0 || a.batch == 0 || a.pull_batch <= 0 {
        bail!("--threads, --batch and --pull-batch must be positive");
    }
    let pid = std::process::id();
    let group = a.group.clone().unwrap_or_else(|| format!("bench_consumer_{pid}"));
    let mut o = PushConsumerOptions::new(group.clone());
    o.consume_from_where = match a.from {
        StartFrom::Last => ConsumeFromWhere::LastOffset,
        StartFrom::First => ConsumeFromWhere::FirstOffset,
    };
    o.consume_thread_min = a.threads;
    o.consume_thread_max = a.threads;
    o.consume_message_batch_max_size = a.batch;
    o.pull_batch_size = a.pull_batch;
    let tally = Tally::new();
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let t = tally.clone();
    let mut cfg = ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-c-{pid}"));
    cfg.remoting = a.credentials.client_config()?;
    let consumer = PushConsumer::new(cfg, o)?;
    consumer.subscribe(&a.topic, &a.expression)?;
    // The listener never blocks, so it is an async one: it runs on the
    // runtime instead of hopping to a blocking-pool thread for every batch.
    consumer
        .start(MessageListener::concurrently_async(move |msgs, _| {
            if Instant::now() < measure_from {
                t.skipped.fetch_add(msgs.len() as u64, Ordering::Relaxed);
                return std::future::ready(ConsumeStatus::ConsumeSuccess);
            }
            let batch: Vec<_> = msgs.iter().map(|m| (m.born_timestamp, m.store_timestamp, m.body.len())).collect();
            t.record(&batch);
            std::future::ready(ConsumeStatus::ConsumeSuccess)
        }))
        .await
        .with_context(|| format!("starting a consumer on {} via {}", a.topic, a.namesrv))?;

    let end = measure_from + a.duration;
    let window = super::procstat::Window::start(measure_from);
    tally.wait_window(measure_from, end, a.count).await;
    let elapsed = measure_from.elapsed().min(a.duration);
    let messages = tally.messages.load(Ordering::Relaxed);
    let usage = window.fields(messages, "message").await;
    consumer.shutdown().await;

    let mut extra = usage;
    extra.insert("group".into(), group.into());
    extra.insert("topic".into(), a.topic.clone().into());
    Ok(tally.report(extra, messages, elapsed, "born_to_consume (bornTimestamp, ms resolution)"))
}

/// What the pop consumers saw.
#[derive(Default)]
struct PopTally {
    /// (broker, queue, offset) of every message received in the window.
    seen: Mutex<std::collections::HashSet<(String, i32, i64)>>,
    received: AtomicU64,
    acked: AtomicU64,
    ack_errors: AtomicU64,
    receive_errors: AtomicU64,
}

/// `--pop`: simple consumers receive batches, record latencies, ack each
/// message. Reports `received_unique`, `duplicates` and `acked` besides
/// the latencies (a duplicate is a message received twice: its invisible
/// time ran out before its ack, or a broker restart lost a record).
async fn run_pop(a: &ConsumeArgs) -> Result<Report> {
    use spate_client::{SimpleConsumer, SimpleConsumerOptions};
    if a.grpc.is_some() {
        return run_pop_grpc(a).await;
    }
    let batch = usize::try_from(a.pull_batch).ok().filter(|b| (1..=32).contains(b));
    let Some(batch) = batch else { bail!("--pull-batch must be 1..=32 with --pop") };
    if a.consumers == 0 {
        bail!("--consumers must be positive");
    }
    let pid = std::process::id();
    let group = a.group.clone().unwrap_or_else(|| format!("bench_pop_{pid}"));
    let tally = Tally::new();
    let pops = Arc::new(PopTally::default());
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..a.consumers {
        let mut o = SimpleConsumerOptions::new(group.clone());
        o.await_duration = Duration::from_secs(1);
        o.from_first = a.from == StartFrom::First;
        let mut cfg = ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-pop-{pid}-{i}"));
        cfg.remoting = a.credentials.client_config()?;
        let consumer = SimpleConsumer::new(cfg, o)?;
        consumer.subscribe(&a.topic, &a.expression)?;
        consumer.start().await.with_context(|| format!("starting a simple consumer via {}", a.namesrv))?;
        let (t, p, stop, invisible, single_ack) =
            (tally.clone(), pops.clone(), stop.clone(), a.invisible, a.single_ack);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let got = match consumer.receive(batch, invisible).await {
                    Ok(got) => got,
                    Err(_) => {
                        p.receive_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let measured = Instant::now() >= measure_from;
                if measured {
                    let batch: Vec<_> = got
                        .iter()
                        .map(|m| (m.message.born_timestamp, m.message.store_timestamp, m.message.body.len()))
                        .collect();
                    t.record(&batch);
                    p.seen.lock().extend(
                        got.iter().map(|m| (m.message.broker_name.clone(), m.message.queue_id, m.message.queue_offset)),
                    );
                    p.received.fetch_add(got.len() as u64, Ordering::Relaxed);
                } else {
                    t.skipped.fetch_add(got.len() as u64, Ordering::Relaxed);
                }
                if single_ack {
                    for m in &got {
                        match consumer.ack(m).await {
                            Ok(()) if measured => {
                                p.acked.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(()) => {}
                            Err(_) => {
                                p.ack_errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                } else {
                    match consumer.ack_many(&got).await {
                        Ok(()) if measured => {
                            p.acked.fetch_add(got.len() as u64, Ordering::Relaxed);
                        }
                        Ok(()) => {}
                        Err(_) => {
                            p.ack_errors.fetch_add(got.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            consumer.shutdown().await;
        }));
    }
    let (elapsed, messages, usage) = measure_then_stop(&tally, a, measure_from, end, &stop, tasks).await;
    let unique = pops.seen.lock().len() as u64;
    let received = pops.received.load(Ordering::Relaxed);
    let mut extra = usage;
    extra.insert("group".into(), group.into());
    extra.insert("topic".into(), a.topic.clone().into());
    extra.insert("mode".into(), "pop".into());
    extra.insert("consumers".into(), a.consumers.into());
    extra.insert("ack".into(), if a.single_ack { "single" } else { "batch" }.into());
    extra.insert("received_unique".into(), unique.into());
    extra.insert("duplicates".into(), received.saturating_sub(unique).into());
    extra.insert("acked".into(), pops.acked.load(Ordering::Relaxed).into());
    extra.insert("ack_errors".into(), pops.ack_errors.load(Ordering::Relaxed).into());
    extra.insert("receive_errors".into(), pops.receive_errors.load(Ordering::Relaxed).into());
    Ok(tally.report(extra, messages, elapsed, "born_to_receive (bornTimestamp, ms resolution)"))
}

/// `--pop --grpc`: gRPC simple consumers (ReceiveMessage, then one
/// AckMessage per batch) on one endpoint.
async fn run_pop_grpc(a: &ConsumeArgs) -> Result<Report> {
    let endpoint = a.grpc.clone().unwrap_or_default();
    let batch = a.pull_batch;
    if !(1..=32).contains(&batch) || a.consumers == 0 {
        bail!("--pull-batch must be 1..=32 and --consumers positive");
    }
    let pid = std::process::id();
    let group = a.group.clone().unwrap_or_else(|| format!("bench_grpc_{pid}"));
    let tally = Tally::new();
    let pops = Arc::new(PopTally::default());
    let start = Instant::now();
    let measure_from = start + a.warmup;
    let end = measure_from + a.duration;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..a.consumers {
        let mut client = super::grpc::connect(&endpoint, Duration::from_secs(10)).await?;
        let (t, p, stop, topic, group, invisible) =
            (tally.clone(), pops.clone(), stop.clone(), a.topic.clone(), group.clone(), a.invisible);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match super::grpc::receive_and_ack(
                    &mut client,
                    &topic,
                    &group,
                    batch,
                    invisible,
                    Duration::from_secs(1),
                )
                .await
                {
                    Ok(got) if Instant::now() >= measure_from => {
                        t.record(&got);
                        p.received.fetch_add(got.len() as u64, Ordering::Relaxed);
                        p.acked.fetch_add(got.len() as u64, Ordering::Relaxed);
                    }
                    Ok(got) => {
                        t.skipped.fetch_add(got.len() as u64, Ordering::Relaxed);
                    }
                    Err(_) => {
                        p.receive_errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    let (elapsed, messages, usage) = measure_then_stop(&tally, a, measure_from, end, &stop, tasks).await;
    let mut extra = usage;
    extra.insert("group".into(), group.into());
    extra.insert("topic".into(), a.topic.clone().into());
    extra.insert("mode".into(), "pop".into());
    extra.insert("protocol".into(), "grpc".into());
    extra.insert("consumers".into(), a.consumers.into());
    extra.insert("acked".into(), pops.acked.load(Ordering::Relaxed).into());
    extra.insert("receive_errors".into(), pops.receive_errors.load(Ordering::Relaxed).into());
    Ok(tally.report(extra, messages, elapsed, "born_to_receive (bornTimestamp, ms resolution)"))
}

/// Waits out the measured window of consumer tasks, then stops them: the
/// window's length, the messages measured and the CPU usage fields.
async fn measure_then_stop(
    tally: &Tally,
    a: &ConsumeArgs,
    measure_from: Instant,
    end: Instant,
    stop: &std::sync::atomic::AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
) -> (Duration, u64, serde_json::Map<String, serde_json::Value>) {
    let window = super::procstat::Window::start(measure_from);
    tally.wait_window(measure_from, end, a.count).await;
    let elapsed = measure_from.elapsed().min(a.duration);
    let messages = tally.messages.load(Ordering::Relaxed);
    let usage = window.fields(messages, "message").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    (elapsed, messages, usage)
}
