//! `spate bench store`: appends straight into a `MessageStore` in this
//! process, with no network, to measure the store alone.
//!
//! Open loop: with `--rate R`, append `i` of producer `p` is scheduled at a
//! fixed time and its latency counts from that intended time, so a stall is
//! charged to every append it delays (no coordinated omission). With
//! `--rate 0` each producer appends as fast as it can and latency is per
//! call. Latencies are recorded in nanoseconds: the report carries the
//! whole microseconds every bench report has (`p50_us`, ...) and the
//! nanoseconds as well (`p50_ns`, ...), because an async append takes well
//! under a microsecond.
//!
//! Async flush: producers are OS threads keeping their schedule by sleeping
//! and then spinning. Sync flush: producers are async tasks awaiting their
//! group commit on a one-worker runtime of their own, as the broker's
//! request handlers do. Neither runs on the binary's runtime workers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use spate_common::message::{encode_properties, property, NewMessage};
use spate_store::{FlushDiskType, MessageStore, StoreConfig, StoreError, StoreStats};

use super::report::{histogram, parse_duration, Report};

/// Latencies are recorded from 1 ns to this, 3 significant digits.
const LATENCY_NS_MAX: u64 = 120_000_000_000;
/// The first append is scheduled this long after the run starts, so thread
/// start-up is not charged to it.
const SCHEDULE_LEAD: Duration = Duration::from_millis(10);
/// The elapsed time the throughput is computed over is at most the
/// duration plus this (a producer stuck past the end does not hide it).
const ELAPSED_OVER_DURATION_MAX: Duration = Duration::from_secs(60);
/// Producer `p` appends to queue `p % QUEUES` of the topic.
const QUEUES: usize = 8;
/// Write buffers with `--transient-pool` (transientStorePoolSize).
const TRANSIENT_POOL_BUFFERS: usize = 3;
/// Group-commit waiters allowed per producer (syncFlushMaxWaiters).
const SYNC_WAITERS_PER_PRODUCER: usize = 4;
/// Room over the body for the record header and properties.
const RECORD_OVERHEAD_BYTES: usize = 1024;
/// maxMessageSize is at least this (and at most half a segment).
const MAX_MESSAGE_BYTES_MIN: usize = 4 * 1024 * 1024;
/// The control run's idle store: one small segment, not warmed.
const NOOP_SEGMENT_BYTES: u64 = 1 << 20;
const NOOP_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Longest wait, before the run, for the store's next segment.
const NEXT_SEGMENT_WAIT: Duration = Duration::from_secs(60);
/// A producer sleeps until this close to its next append, then spins.
const SPIN_BELOW: Duration = Duration::from_micros(300);
const SLEEP_SHORT_BY: Duration = Duration::from_micros(200);
/// The bare fdatasync probe: rounds of one small overwrite plus fdatasync
/// in a pre-written file.
const PROBE_ROUNDS: u64 = 300;
const PROBE_WRITE_BYTES: usize = 1024;
const PROBE_FILE_BYTES: u64 = 4 << 20;
const PROBE_PREFILL_CHUNK_BYTES: usize = 1 << 20;

/// When an append counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FlushMode {
    /// ASYNC_FLUSH: once in memory.
    Async,
    /// SYNC_FLUSH: once on disk (group commit).
    Sync,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Body size in bytes (with TAGS and KEYS properties).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Appends per second over all producers; 0 = as fast as possible.
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Measured duration (10s, 2m, 500ms).
    #[arg(long, alias = "seconds", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Producers: threads with async flush, tasks with sync flush.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// When an append counts as done.
    #[arg(long, value_enum, default_value_t = FlushMode::Async)]
    pub flush: FlushMode,
    /// Commit-log segment size in bytes (RocketMQ's default is 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    pub segment_size: u64,
    /// Read/write separation (transientStorePoolEnable).
    #[arg(long)]
    pub transient_pool: bool,
    /// Do not pre-fault new segments (warmMapedFileEnable=false).
    #[arg(long)]
    pub no_warm: bool,
    /// mlock warmed segments and pool buffers.
    #[arg(long)]
    pub mlock: bool,
    /// Store directory (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// flushIntervalCommitLog (async flush).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Pin producers to CPU 0 and the store's threads to the other CPUs.
    #[arg(long)]
    pub pin: bool,
    /// Control run: follow the same schedule but append nothing (an idle
    /// 1 MiB store stays open), to measure the platform's own jitter.
    #[arg(long)]
    pub noop: bool,
    /// Any store setting by its RocketMQ key, e.g. `--set flushIntervalConsumeQueue=5000`
    /// (repeatable; applied after the options above).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
    /// Unmeasured appends before the run (they create the first segment).
    #[arg(long, default_value_t = 1000)]
    pub warmup_appends: u64,
    /// Print every append slower than this many microseconds to stderr (0 = none).
    #[arg(long, default_value_t = 0)]
    pub trace_slow_us: u64,
}

/// A store run: the common report, plus its errors by store error kind (a
/// store error has no RocketMQ response code).
pub struct StoreReport {
    pub report: Report,
    pub errors: BTreeMap<&'static str, u64>,
}

impl StoreReport {
    /// The common JSON, with `errors` keyed by kind (`{"busy": 3}`).
    pub fn to_json(&self) -> Value {
        let mut v = self.report.to_json();
        let errors: serde_json::Map<String, Value> =
            self.errors.iter().map(|(kind, n)| ((*kind).to_string(), json!(n))).collect();
        if let Value::Object(map) = &mut v {
            map.insert("errors".into(), Value::Object(errors));
        }
        v
    }

    pub fn to_table(&self) -> String {
        let mut out = self.report.to_table();
        for (kind, n) in &self.errors {
            out.push_str(&format!("store errors of kind {kind}: {n}\n"));
        }
        out
    }

    pub fn print(&self, json: bool) {
        if json {
            println!("{}", self.to_json());
        } else {
            print!("{}", self.to_table());
        }
    }
}

/// Runs the benchmark on a thread of its own; the runtime only waits.
pub async fn run(args: StoreArgs) -> Result<StoreReport> {
    if args.producers == 0 {
        bail!("--producers must be positive");
    }
    // `--pin` moves every thread but this one off CPU 0 (`pin_store_threads`).
    let bench = std::thread::Builder::new()
        .name("bench-store".into())
        .spawn(move || run_blocking(&args))
        .context("starting the benchmark thread")?;
    tokio::task::spawn_blocking(move || bench.join()).await?.map_err(|_| anyhow!("the store benchmark panicked"))?
}

fn run_blocking(args: &StoreArgs) -> Result<StoreReport> {
    // Declared first so it is removed last, after the store has shut down.
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::tempdir().context("creating a temporary store directory")?;
            tmp.path().to_path_buf()
        }
    };
    let fdatasync_p50_us =
        bare_fdatasync_p50_us(&dir).with_context(|| format!("fdatasync probe in {}", dir.display()))?;
    let store = Arc::new(
        MessageStore::open(store_config(args, &dir)?)
            .with_context(|| format!("opening a store in {}", dir.display()))?,
    );
    if args.pin {
        pin_store_threads()?;
    }
    let message = bench_message(args.size)?;
    // Not measured: the first segment and the allocator's next one. The
    // run starts once that one is prepared: a store that has just opened
    // warms its next segment (a second or more per GiB here), and a
    // 10-30 s run would otherwise weigh that startup cost, once per
    // segment in a long-running broker, as a third of its time.
    if !args.noop {
        for _ in 0..args.warmup_appends {
            store.put_message(&message)?.flush.wait_blocking().context("warm-up append")?;
        }
        if !store.wait_next_segment(NEXT_SEGMENT_WAIT) {
            tracing::warn!("the next segment was not prepared within {NEXT_SEGMENT_WAIT:?}; measuring anyway");
        }
    }
    let before = store.stats();
    let steal_before = super::procstat::steal_ms_per_cpu();
    let threads_before = store_thread_times();

    let start = Instant::now() + SCHEDULE_LEAD;
    let plan = Plan {
        start,
        end: start + args.duration,
        interval: (args.rate > 0).then(|| Duration::from_secs_f64(args.producers as f64 / args.rate as f64)),
        producers: args.producers,
        noop: args.noop,
        trace_slow_ns: args.trace_slow_us.saturating_mul(1_000),
    };
    let tally = match args.flush {
        FlushMode::Async => produce_on_threads(&store, &message, plan, args.pin)?,
        FlushMode::Sync => produce_as_tasks(&store, &message, plan, args.pin)?,
    };
    let elapsed = start.elapsed().min(args.duration + ELAPSED_OVER_DURATION_MAX);
    let after = store.stats();
    let steal = super::procstat::steal_between(&steal_before, &super::procstat::steal_ms_per_cpu());
    let threads = store_thread_ms(&threads_before, &store_thread_times());
    store.shutdown().context("shutting the store down")?;
    let mut report = build_report(args, elapsed, tally, &before, &after, fdatasync_p50_us)?;
    if let Some(steal) = steal {
        report.report.extra.insert("cpu_steal_ms".into(), json!(steal));
    }
    report.report.extra.insert("store_threads_ms".into(), threads);
    Ok(report)
}

/// Nanoseconds each store thread (named `spate-*`) has run and waited
/// for a CPU, by thread name, from `/proc/self/task/*/schedstat`. Threads
/// sharing a name are added up.
fn store_thread_times() -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    for (task, comm) in store_threads() {
        let stat = std::fs::read_to_string(task.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0));
        let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        let slot = out.entry(comm).or_insert((0, 0));
        slot.0 += run;
        slot.1 += wait;
    }
    out
}

/// The store's background threads (named `spate-*`): each one's
/// `/proc/self/task/<tid>` directory and name. A thread may exit between
/// the listing and the reads; it is then missing or its files read empty.
fn store_threads() -> Vec<(PathBuf, String)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return Vec::new() };
    tasks
        .flatten()
        .filter_map(|entry| {
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            let comm = comm.trim();
            comm.starts_with("spate-").then(|| (entry.path(), comm.to_string()))
        })
        .collect()
}

/// What each store thread cost over the measured window: milliseconds on
/// a CPU (`run`) and runnable but waiting for one (`wait`). The store's
/// threads compete for the CPUs the producers leave (with `--pin`, all
/// but CPU 0), so this says which of them falls behind, and why.
fn store_thread_ms(before: &BTreeMap<String, (u64, u64)>, after: &BTreeMap<String, (u64, u64)>) -> Value {
    let mut out = serde_json::Map::new();
    for (name, (run, wait)) in after {
        let (run0, wait0) = before.get(name).copied().unwrap_or((0, 0));
        out.insert(
            name.clone(),
            json!({
                "run": run.saturating_sub(run0) / 1_000_000,
                "wait": wait.saturating_sub(wait0) / 1_000_000,
            }),
        );
    }
    Value::Object(out)
}

fn store_config(args: &StoreArgs, dir: &Path) -> Result<StoreConfig> {
    let mut config = StoreConfig::new(dir.join("store"));
    config.mapped_file_size_commit_log = args.segment_size;
    config.flush_disk_type = match args.flush {
        FlushMode::Async => FlushDiskType::Async,
        FlushMode::Sync => FlushDiskType::Sync,
    };
    config.transient_store_pool_enable = args.transient_pool;
    config.transient_store_pool_size = TRANSIENT_POOL_BUFFERS;
    config.warm_mapped_file_enable = !args.no_warm;
    config.lock_mapped_file_enable = args.mlock;
    let half_segment = usize::try_from(args.segment_size / 2).unwrap_or(usize::MAX);
    config.max_message_size = (args.size + RECORD_OVERHEAD_BYTES).max(MAX_MESSAGE_BYTES_MIN).min(half_segment);
    config.flush_interval_commit_log = args.flush_interval;
    config.sync_flush_max_waiters = args.producers * SYNC_WAITERS_PER_PRODUCER;
    for kv in &args.settings {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow!("--set wants KEY=VALUE, got {kv:?}"))?;
        if !config.set(k, v)? {
            bail!("unknown store setting {k:?}");
        }
    }
    if args.noop {
        // The control run keeps an idle, tiny store only to share the code path.
        config.mapped_file_size_commit_log = NOOP_SEGMENT_BYTES;
        config.max_message_size = NOOP_MAX_MESSAGE_BYTES;
        config.warm_mapped_file_enable = false;
    }
    Ok(config)
}

fn bench_message(size: usize) -> Result<NewMessage> {
    Ok(NewMessage {
        topic: "BenchTopic".into(),
        queue_id: 0,
        flag: 0,
        body: Bytes::from(vec![b'x'; size]),
        properties: encode_properties([(property::TAGS, "bench"), (property::KEYS, "bench-key")])?,
        sys_flag: 0,
        born_timestamp: 0,
        born_host: SocketAddr::from(([127, 0, 0, 1], 1)),
        store_host: SocketAddr::from(([127, 0, 0, 1], 10911)),
        reconsume_times: 0,
        prepared_tx_offset: 0,
    })
}

/// The schedule every producer follows.
#[derive(Debug, Clone, Copy)]
struct Plan {
    start: Instant,
    end: Instant,
    /// Between two appends of one producer; `None` = as fast as possible.
    interval: Option<Duration>,
    producers: usize,
    noop: bool,
    trace_slow_ns: u64,
}

impl Plan {
    /// When append `i` of producer `p` is due. Producers interleave on one
    /// global schedule.
    fn intended(&self, i: u64, p: usize) -> Instant {
        debug_assert!(p < self.producers);
        match self.interval {
            Some(iv) => self.start + iv.mul_f64(i as f64) + iv.mul_f64(p as f64 / self.producers as f64),
            None => Instant::now().max(self.start),
        }
    }
}

/// What one or more producers measured.
struct Tally {
    latency_ns: Histogram<u64>,
    errors: BTreeMap<&'static str, u64>,
    usage: ThreadUsage,
}

impl Tally {
    fn new() -> Result<Self> {
        Ok(Tally {
            latency_ns: Histogram::new_with_bounds(1, LATENCY_NS_MAX, 3)?,
            errors: BTreeMap::new(),
            usage: ThreadUsage::default(),
        })
    }

    fn record(&mut self, plan: &Plan, intended: Instant, outcome: Result<(), StoreError>) {
        let latency_ns = u64::try_from(intended.elapsed().as_nanos()).unwrap_or(u64::MAX);
        if plan.trace_slow_ns > 0 && latency_ns > plan.trace_slow_ns {
            eprintln!(
                "slow append at {:.3}s: {} us",
                intended.saturating_duration_since(plan.start).as_secs_f64(),
                latency_ns / 1_000
            );
        }
        match outcome {
            Ok(()) => self.latency_ns.saturating_record(latency_ns.max(1)),
            Err(e) => *self.errors.entry(error_kind(&e)).or_default() += 1,
        }
    }

    fn merge(&mut self, other: Tally) -> Result<()> {
        self.latency_ns.add(&other.latency_ns)?;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.usage.add(&other.usage);
        Ok(())
    }
}

/// Async flush: one OS thread per producer.
fn produce_on_threads(store: &Arc<MessageStore>, message: &NewMessage, plan: Plan, pin: bool) -> Result<Tally> {
    let mut handles = Vec::with_capacity(plan.producers);
    for p in 0..plan.producers {
        let store = store.clone();
        let message = for_queue(message, p);
        let handle = std::thread::Builder::new()
            .name(format!("bench-producer-{p}"))
            .spawn(move || {
                if pin {
                    set_affinity(0, &[0]);
                }
                produce(&store, &message, &plan, p)
            })
            .context("starting a producer thread")?;
        handles.push(handle);
    }
    let mut total = Tally::new()?;
    for h in handles {
        total.merge(h.join().map_err(|_| anyhow!("a producer panicked"))??)?;
    }
    Ok(total)
}

fn produce(store: &MessageStore, message: &NewMessage, plan: &Plan, p: usize) -> Result<Tally> {
    let mut tally = Tally::new()?;
    let usage_before = ThreadUsage::now();
    let mut i: u64 = 0;
    loop {
        let intended = plan.intended(i, p);
        if intended >= plan.end {
            break;
        }
        wait_until(intended);
        let outcome = if plan.noop { Ok(()) } else { store.put_message(message).and_then(|r| r.flush.wait_blocking()) };
        tally.record(plan, intended, outcome);
        i += 1;
    }
    tally.usage = ThreadUsage::now().since(&usage_before);
    Ok(tally)
}

/// Sync flush: producers are async tasks awaiting their group commit, as
/// the broker's request handlers do, on a one-worker runtime (pinned to CPU
/// 0 with `--pin`). Each task follows its share of the open-loop schedule,
/// or appends back to back with `--rate 0`.
fn produce_as_tasks(store: &Arc<MessageStore>, message: &NewMessage, plan: Plan, pin: bool) -> Result<Tally> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .thread_name("bench-producers")
        .on_thread_start(move || {
            if pin {
                set_affinity(0, &[0]);
            }
        })
        .build()
        .context("starting the producers' runtime")?;
    runtime.block_on(async {
        let tasks: Vec<_> = (0..plan.producers)
            .map(|p| {
                let store = store.clone();
                let message = for_queue(message, p);
                tokio::spawn(async move {
                    let mut tally = Tally::new()?;
                    let mut i: u64 = 0;
                    loop {
                        let intended = plan.intended(i, p);
                        if intended >= plan.end {
                            break;
                        }
                        if intended > Instant::now() {
                            tokio::time::sleep_until(intended.into()).await;
                        }
                        let outcome = if plan.noop {
                            Ok(())
                        } else {
                            match store.put_message(&message) {
                                Ok(r) => r.flush.wait().await,
                                Err(e) => Err(e),
                            }
                        };
                        tally.record(&plan, intended, outcome);
                        i += 1;
                    }
                    anyhow::Ok(tally)
                })
            })
            .collect();
        let mut total = Tally::new()?;
        for t in tasks {
            total.merge(t.await??)?;
        }
        Ok(total)
    })
}

fn for_queue(message: &NewMessage, producer: usize) -> NewMessage {
    let mut m = message.clone();
    m.queue_id = (producer % QUEUES) as i32;
    m
}

fn build_report(
    args: &StoreArgs,
    elapsed: Duration,
    tally: Tally,
    before: &StoreStats,
    after: &StoreStats,
    fdatasync_p50_us: f64,
) -> Result<StoreReport> {
    let ns = &tally.latency_ns;
    let q = |p: f64| if ns.is_empty() { 0 } else { ns.value_at_quantile(p) };
    let syncs = after.syncs.saturating_sub(before.syncs);
    let sync_us = after.sync_us_total.saturating_sub(before.sync_us_total);
    let mut extra = serde_json::Map::new();
    let mut put = |k: &str, v: Value| {
        extra.insert(k.to_string(), v);
    };
    put("flush", json!(format!("{:?}", args.flush).to_lowercase()));
    put("size", json!(args.size));
    put("rate", json!(args.rate));
    put("open_loop", json!(args.rate > 0));
    put("producers", json!(args.producers));
    put("duration_s", json!(args.duration.as_secs_f64()));
    put("segment_size", json!(args.segment_size));
    put("transient_pool", json!(args.transient_pool));
    put("warm", json!(!args.no_warm));
    put("mlock", json!(args.mlock));
    put("pin", json!(args.pin));
    put("noop", json!(args.noop));
    for (name, p) in [("p50_ns", 0.5), ("p90_ns", 0.9), ("p99_ns", 0.99), ("p999_ns", 0.999), ("p9999_ns", 0.9999)] {
        put(name, json!(q(p)));
    }
    put("max_ns", json!(ns.max()));
    put("segments_rolled", json!(after.segments_rolled.saturating_sub(before.segments_rolled)));
    put("roll_wait_us_max", json!(after.roll_wait_us_max));
    put("fdatasync_p50_us", json!(fdatasync_p50_us));
    put("store_syncs", json!(syncs));
    put("store_sync_avg_us", json!((sync_us as f64 / syncs.max(1) as f64).round()));
    if args.flush == FlushMode::Async {
        let u = &tally.usage;
        put("producer_minor_faults", json!(u.minor_faults));
        put("producer_major_faults", json!(u.major_faults));
        put("producer_voluntary_switches", json!(u.voluntary_switches));
        put("producer_involuntary_switches", json!(u.involuntary_switches));
    }
    let failed: u64 = tally.errors.values().sum();
    Ok(StoreReport {
        report: Report {
            name: "store",
            elapsed,
            sent_ok: ns.len(),
            latency_us: to_micros(ns),
            // -1 is the report's "no response code"; the JSON names the kinds.
            errors: if failed > 0 { BTreeMap::from([(-1, failed)]) } else { BTreeMap::new() },
            extra,
        },
        errors: tally.errors,
    })
}

/// The same samples in whole microseconds (at least 1), as every bench
/// report keeps them.
fn to_micros(latency_ns: &Histogram<u64>) -> Histogram<u64> {
    let mut us = histogram();
    for v in latency_ns.iter_recorded() {
        us.saturating_record_n((v.value_iterated_to() / 1_000).max(1), v.count_at_value());
    }
    debug_assert_eq!(us.len(), latency_ns.len());
    us
}

fn error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::InvalidMessage(_) => "invalid_message",
        StoreError::NotWritable(_) => "not_writable",
        StoreError::Busy(_) => "busy",
        StoreError::FlushTimeout { .. } => "flush_timeout",
        StoreError::Io { .. } => "io",
        StoreError::Corrupt { .. } => "corrupt",
        StoreError::BadOffset { .. } => "bad_offset",
        StoreError::Config { .. } => "config",
        StoreError::ShutDown => "shut_down",
    }
}

/// Page faults and context switches of one thread. A fault or an
/// involuntary switch on the append path is where tail latency comes from.
#[derive(Debug, Default, Clone, Copy)]
struct ThreadUsage {
    minor_faults: libc::c_long,
    major_faults: libc::c_long,
    voluntary_switches: libc::c_long,
    involuntary_switches: libc::c_long,
}

impl ThreadUsage {
    /// The calling thread's counts so far.
    fn now() -> Self {
        // SAFETY: getrusage fills the zeroed struct we own.
        let ru = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
            ru
        };
        ThreadUsage {
            minor_faults: ru.ru_minflt,
            major_faults: ru.ru_majflt,
            voluntary_switches: ru.ru_nvcsw,
            involuntary_switches: ru.ru_nivcsw,
        }
    }

    fn since(&self, before: &ThreadUsage) -> ThreadUsage {
        ThreadUsage {
            minor_faults: self.minor_faults - before.minor_faults,
            major_faults: self.major_faults - before.major_faults,
            voluntary_switches: self.voluntary_switches - before.voluntary_switches,
            involuntary_switches: self.involuntary_switches - before.involuntary_switches,
        }
    }

    fn add(&mut self, other: &ThreadUsage) {
        self.minor_faults += other.minor_faults;
        self.major_faults += other.major_faults;
        self.voluntary_switches += other.voluntary_switches;
        self.involuntary_switches += other.involuntary_switches;
    }
}

/// Sleeps most of the way, then spins, so the schedule is kept to the
/// microsecond without burning a core between distant deadlines.
fn wait_until(t: Instant) {
    loop {
        let now = Instant::now();
        if now >= t {
            return;
        }
        let left = t - now;
        if left > SPIN_BELOW {
            std::thread::sleep(left - SLEEP_SHORT_BY);
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Median time of a small overwrite plus `fdatasync` on an already written
/// file in the same directory: the floor for one durable append.
fn bare_fdatasync_p50_us(dir: &Path) -> Result<f64> {
    let path = dir.join("fdatasync-probe");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let result = (|| -> std::io::Result<Vec<f64>> {
        let prefill = vec![0u8; PROBE_PREFILL_CHUNK_BYTES];
        let mut at = 0u64;
        while at < PROBE_FILE_BYTES {
            file.write_all_at(&prefill, at)?;
            at += prefill.len() as u64;
        }
        file.sync_all()?;
        let block = vec![7u8; PROBE_WRITE_BYTES];
        let mut samples_us = Vec::with_capacity(PROBE_ROUNDS as usize);
        for i in 0..PROBE_ROUNDS {
            file.write_all_at(&block, (i * PROBE_WRITE_BYTES as u64) % PROBE_FILE_BYTES)?;
            let t = Instant::now();
            file.sync_data()?;
            samples_us.push(t.elapsed().as_nanos() as f64 / 1000.0);
        }
        Ok(samples_us)
    })();
    drop(file);
    std::fs::remove_file(&path)?;
    let mut samples_us = result?;
    samples_us.sort_by(|a, b| a.total_cmp(b));
    Ok(samples_us.get(samples_us.len() / 2).copied().unwrap_or(0.0))
}

/// Sets the CPU affinity of thread `tid` (0 = the calling thread).
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: plain syscall on a zeroed cpu_set_t we own.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        tracing::warn!(tid, ?cpus, error = %std::io::Error::last_os_error(), "could not pin thread");
    }
}

/// Moves every other thread of this process off CPU 0: the store's
/// background threads, and the runtime's. Not chosen by name: a thread
/// takes its name only once it first runs, so a store thread spawned just
/// before (the flusher, the housekeeper) could still carry its creator's
/// name and stay on the producers' CPU, as two did until 2026-12-07. The
/// producers, started after this by the calling thread, pin themselves.
fn pin_store_threads() -> Result<()> {
    let others: Vec<usize> = (1..std::thread::available_parallelism()?.get()).collect();
    if others.is_empty() {
        bail!("--pin needs at least two CPUs");
    }
    // SAFETY: gettid takes no arguments and touches no memory.
    let me = unsafe { libc::gettid() };
    let tids: Vec<libc::pid_t> = std::fs::read_dir("/proc/self/task")
        .context("listing /proc/self/task")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|&tid| tid != me)
        .collect();
    if tids.is_empty() {
        bail!("--pin found no other threads under /proc/self/task");
    }
    for tid in tids {
        set_affinity(tid, &others);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producers_interleave_on_one_schedule() {
        let start = Instant::now();
        let plan = Plan {
            start,
            end: start + Duration::from_secs(1),
            interval: Some(Duration::from_micros(40)),
            producers: 4,
            noop: true,
            trace_slow_ns: 0,
        };
        let due: Vec<Duration> =
            [(0, 0), (0, 1), (0, 3), (1, 0)].iter().map(|&(i, p)| plan.intended(i, p) - start).collect();
        assert_eq!(
            due,
            [0, 10, 30, 40].map(Duration::from_micros),
            "4 producers at 25k/s each: one append every 10 us overall"
        );
    }

    #[test]
    fn microsecond_view_keeps_every_sample() {
        let mut ns = Histogram::<u64>::new_with_bounds(1, LATENCY_NS_MAX, 3).unwrap();
        for v in [400, 1_500, 2_000_000] {
            ns.record(v).unwrap();
        }
        let us = to_micros(&ns);
        assert_eq!(us.len(), 3);
        assert_eq!(us.min(), 1, "sub-microsecond appends count as 1 us");
        assert_eq!(us.value_at_quantile(0.5), 1, "1.5 us is whole 1 us");
        assert!((1_995..=2_000).contains(&us.max()), "2 ms stays 2 ms: {}", us.max());
    }
}
