//! `spate bench produce`: open-loop (fixed rate, latency from each message's
//! intended send time, so a stall delays everything scheduled behind it and
//! shows in the percentiles) or maximum-rate (closed loop) sends through any
//! RocketMQ-compatible name server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use spate_client::{ClientConfig, ClientError, Message, Producer, ProducerOptions};
use tokio::sync::Semaphore;

use super::report::{histogram, Report};

/// How each message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SendMode {
    /// Wait for the broker's answer.
    Sync,
    /// Callback on the broker's answer.
    Async,
    /// No answer: latency is the time to hand the request to the socket.
    Oneway,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ProduceArgs {
    /// Name server address(es), `host:port;host:port`.
    #[command(flatten)]
    pub credentials: crate::credentials::SecurityArgs,
    #[arg(short = 'n', long = "namesrv", default_value = "127.0.0.1:9876")]
    pub namesrv: String,
    #[arg(long, default_value = "BenchmarkTest")]
    pub topic: String,
    /// Body size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Messages per second over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Measured duration (10s, 2m, 500ms).
    #[arg(long, default_value = "10s", value_parser = super::report::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warm-up before it (routes, connections, topic creation).
    #[arg(long, default_value = "1s", value_parser = super::report::parse_duration)]
    pub warmup: Duration,
    /// Producer client instances (each its own connections).
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Requests in flight at once over all producers.
    #[arg(long = "in-flight", default_value_t = 64)]
    pub in_flight: usize,
    /// Messages per request (SEND_BATCH_MESSAGE when > 1).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    #[arg(long, value_enum, default_value_t = SendMode::Sync)]
    pub mode: SendMode,
    /// Send timeout (sendMsgTimeout).
    #[arg(long, default_value = "3s", value_parser = super::report::parse_duration)]
    pub timeout: Duration,
    /// Send through each broker's VIP channel (vipChannelEnabled: port - 2).
    #[arg(long = "vip-channel")]
    pub vip_channel: bool,
    /// Print each measured send slower than this to stderr, with its
    /// intended and answered times on CLOCK_MONOTONIC, to line up with a
    /// `perf record -k CLOCK_MONOTONIC` trace (e.g. 2ms).
    #[arg(long = "log-slow", value_parser = super::report::parse_duration)]
    pub log_slow: Option<Duration>,
    /// Send over RocketMQ 5's gRPC protocol (SendMessage) to this endpoint,
    /// `host:port` (a Spate broker's port or its grpcServerPort), instead of
    /// remoting through the name server. Sync and async modes.
    #[arg(long)]
    pub grpc: Option<String>,
}

/// One producer instance: a remoting client, or a gRPC channel.
#[derive(Clone)]
enum Target {
    Remoting(Arc<Producer>),
    Grpc(Arc<super::grpc::GrpcProducer>),
}

impl Target {
    async fn shutdown(&self) {
        if let Target::Remoting(p) = self {
            p.shutdown().await;
        }
    }
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<i32, u64>>,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Results of operations intended before this instant are not recorded.
    measure_from: Instant,
    measure_until: Instant,
    /// `--log-slow` in microseconds, and the clock it prints in.
    log_slow_us: Option<u64>,
    clock: MonotonicClock,
}

/// Converts `Instant`s to CLOCK_MONOTONIC nanoseconds, the clock kernel
/// traces can be recorded in (Rust's `Instant` is that clock on Linux, but
/// does not expose its value).
#[derive(Clone, Copy)]
struct MonotonicClock {
    at: Instant,
    ns: i128,
}

impl MonotonicClock {
    fn now() -> Self {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes only into the timespec we pass.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        MonotonicClock { at: Instant::now(), ns: ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128 }
    }

    fn ns(&self, i: Instant) -> i128 {
        match i.checked_duration_since(self.at) {
            Some(d) => self.ns + d.as_nanos() as i128,
            None => self.ns - self.at.duration_since(i).as_nanos() as i128,
        }
    }
}

impl Shared {
    fn record(&self, intended: Instant, done: Instant, messages: u64, result: Result<(), ClientError>) {
        if intended < self.measure_from || intended >= self.measure_until {
            return;
        }
        match result {
            Ok(()) => {
                self.ok.fetch_add(messages, Ordering::Relaxed);
                let us = done.saturating_duration_since(intended).as_micros().max(1) as u64;
                let _ = self.latency.lock().record(us.min(60_000_000));
                if self.log_slow_us.is_some_and(|limit| us > limit) {
                    eprintln!(
                        "slow send: intended_ns={} answered_ns={} latency_us={us} messages={messages}",
                        self.clock.ns(intended),
                        self.clock.ns(done)
                    );
                }
            }
            Err(e) => {
                self.failed.fetch_add(messages, Ordering::Relaxed);
                *self.errors.lock().entry(e.response_code().unwrap_or(-1)).or_default() += messages;
            }
        }
    }
}

pub async fn run(a: &ProduceArgs) -> Result<Report> {
    if a.producers == 0 || a.in_flight == 0 || a.batch == 0 || a.size == 0 {
        bail!("--producers, --in-flight, --batch and --size must be positive");
    }
    if a.grpc.is_some() && a.mode == SendMode::Oneway {
        bail!("--grpc sends are answered: use --mode sync or async");
    }
    let mut producers = Vec::with_capacity(a.producers);
    for i in 0..a.producers {
        if let Some(endpoint) = &a.grpc {
            let p = super::grpc::GrpcProducer::connect(endpoint, i, a.timeout).await?;
            producers.push(Target::Grpc(Arc::new(p)));
            continue;
        }
        let mut cfg = ClientConfig::new(&a.namesrv).with_instance_name(format!("bench-{}-{i}", std::process::id()));
        cfg.remoting = a.credentials.client_config()?;
        let mut o = ProducerOptions::new(format!("bench_producer_{}", std::process::id()));
        o.send_msg_timeout = a.timeout;
        o.vip_channel_enabled = a.vip_channel;
        // Measure the broker, not zlib.
        o.compress_msg_body_over_howmuch = usize::MAX;
        producers.push(Target::Remoting(Arc::new(
            Producer::start(cfg, o).await.with_context(|| format!("connecting to {}", a.namesrv))?,
        )));
    }
    let body = Bytes::from((0..a.size).map(|i| (i * 131 + 7) as u8).collect::<Vec<u8>>());
    // Fail fast with a clear message when nothing can be sent at all.
    send_request(&a.topic, 1, SendMode::Sync, &producers[0], &body)
        .await
        .with_context(|| format!("first send to topic {} via {}", a.topic, a.grpc.as_deref().unwrap_or(&a.namesrv)))?;

    let start = Instant::now();
    let shared = Arc::new(Shared {
        latency: Mutex::new(histogram()),
        errors: Mutex::new(BTreeMap::new()),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        measure_from: start + a.warmup,
        measure_until: start + a.warmup + a.duration,
        log_slow_us: a.log_slow.map(|d| d.as_micros() as u64),
        clock: MonotonicClock::now(),
    });
    let progress = progress_bar(shared.clone(), a.warmup + a.duration);
    let window = super::procstat::Window::start(shared.measure_from);
    let permits = Arc::new(Semaphore::new(a.in_flight));
    if a.rate > 0 {
        open_loop(a, &producers, &body, &shared, &permits, start).await;
    } else {
        closed_loop(a, &producers, &body, &shared, &permits).await;
    }
    // Wait for everything still in flight (bounded by the send timeout).
    let _ = tokio::time::timeout(a.timeout + Duration::from_secs(1), permits.acquire_many(a.in_flight as u32)).await;
    progress.abort();
    let requests = shared.ok.load(Ordering::Relaxed) / a.batch as u64;
    let usage = window.fields(requests, "request").await;
    for p in &producers {
        p.shutdown().await;
    }
    let latency = shared.latency.lock().clone();
    let errors = shared.errors.lock().clone();
    let mut extra = serde_json::Map::new();
    extra.insert("size".into(), a.size.into());
    extra.insert("rate".into(), a.rate.into());
    extra.insert("mode".into(), format!("{:?}", a.mode).to_lowercase().into());
    extra.insert("producers".into(), a.producers.into());
    extra.insert("in_flight".into(), a.in_flight.into());
    extra.insert("batch".into(), a.batch.into());
    extra.insert("open_loop".into(), (a.rate > 0).into());
    extra.insert("protocol".into(), if a.grpc.is_some() { "grpc" } else { "remoting" }.into());
    extra.extend(usage);
    Ok(Report {
        name: "produce",
        elapsed: a.duration,
        latency_us: latency,
        sent_ok: shared.ok.load(Ordering::Relaxed),
        errors,
        extra,
    })
}

/// Issues request `k` at `start + k / rate` (in requests of `batch`
/// messages); waiting for a free in-flight slot counts as latency.
async fn open_loop(
    a: &ProduceArgs,
    producers: &[Target],
    body: &Bytes,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
    start: Instant,
) {
    let requests_per_s = (a.rate as f64 / a.batch as f64).max(1e-9);
    let (a, producers, body, shared, permits) =
        (a.clone(), producers.to_vec(), body.clone(), shared.clone(), permits.clone());
    let handle = tokio::runtime::Handle::current();
    let end = shared.measure_until;
    let scheduler = super::report::open_loop_schedule(start, end, requests_per_s, move |k, intended| {
        let Ok(permit) = handle.block_on(permits.clone().acquire_owned()) else { return false };
        let producer = producers[(k as usize) % producers.len()].clone();
        issue(&handle, &a, producer, body.clone(), shared.clone(), intended, permit);
        true
    });
    // Wait for the schedule without holding a runtime worker.
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;
}

/// `in_flight` workers, each sending back to back; latency from each send's
/// start. Each worker is one task looping on the runtime, as an application
/// task awaiting its sends would: the answer resumes it on the thread that
/// read the answer. (A loop outside the runtime handing every send to a
/// new task measured the hand-over too: two thread wake-ups per send.)
async fn closed_loop(
    a: &ProduceArgs,
    producers: &[Target],
    body: &Bytes,
    shared: &Arc<Shared>,
    permits: &Arc<Semaphore>,
) {
    if a.batch == 1 && a.mode == SendMode::Async {
        // Callbacks: each completion frees a slot for the next send.
        let mut k = 0usize;
        while Instant::now() < shared.measure_until {
            let Ok(permit) = permits.clone().acquire_owned().await else { break };
            let producer = producers[k % producers.len()].clone();
            issue(
                &tokio::runtime::Handle::current(),
                a,
                producer,
                body.clone(),
                shared.clone(),
                Instant::now(),
                permit,
            );
            k += 1;
        }
        return;
    }
    for worker in 0..a.in_flight {
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let (a, producers, body, shared) = (a.clone(), producers.to_vec(), body.clone(), shared.clone());
        tokio::spawn(async move {
            // Worker w sends through producers w, w + in_flight, ...: all of
            // them in turn, as the requests of one loop would.
            let mut k = worker;
            while Instant::now() < shared.measure_until {
                let producer = &producers[k % producers.len()];
                let started = Instant::now();
                let result = send_request(&a.topic, a.batch, a.mode, producer, &body).await;
                shared.record(started, Instant::now(), a.batch as u64, result);
                k += a.in_flight;
            }
            drop(permit);
        });
    }
    // The caller's wait for the last sends is bounded by one send timeout:
    // start it only once the workers stop issuing.
    tokio::time::sleep_until(shared.measure_until.into()).await;
}

/// One request of the benchmark: a batch, a one-way send or a sync send.
async fn send_request(
    topic: &str,
    batch: usize,
    mode: SendMode,
    producer: &Target,
    body: &Bytes,
) -> Result<(), ClientError> {
    let producer = match producer {
        Target::Grpc(g) => return g.send(topic, batch, body).await,
        Target::Remoting(p) => p,
    };
    if batch > 1 {
        let msgs = (0..batch).map(|_| Message::new(topic, body.clone())).collect();
        producer.send_batch(msgs).await.map(|_| ())
    } else if mode == SendMode::Oneway {
        producer.send_oneway(Message::new(topic, body.clone())).await
    } else {
        producer.send(Message::new(topic, body.clone())).await.map(|_| ())
    }
}

fn issue(
    handle: &tokio::runtime::Handle,
    a: &ProduceArgs,
    producer: Target,
    body: Bytes,
    shared: Arc<Shared>,
    intended: Instant,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let (Target::Remoting(producer), true) = (&producer, a.batch == 1 && a.mode == SendMode::Async) {
        let s = shared.clone();
        let sent = producer.send_async(Message::new(&a.topic, body), move |r| {
            s.record(intended, Instant::now(), 1, r.map(|_| ()));
            drop(permit);
        });
        if let Err(e) = sent {
            shared.record(intended, Instant::now(), 1, Err(e));
        }
        return;
    }
    let (topic, batch, mode) = (a.topic.clone(), a.batch, a.mode);
    handle.spawn(async move {
        let result = send_request(&topic, batch, mode, &producer, &body).await;
        shared.record(intended, Instant::now(), batch as u64, result);
        drop(permit);
    });
}

/// A spinner on stderr (hidden when stderr is not a terminal).
fn progress_bar(shared: Arc<Shared>, total: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let bar = indicatif::ProgressBar::new(total.as_secs().max(1));
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            bar.set_position(started.elapsed().as_secs());
            bar.set_message(format!(
                "ok {}  errors {}",
                shared.ok.load(Ordering::Relaxed),
                shared.failed.load(Ordering::Relaxed)
            ));
        }
    })
}
