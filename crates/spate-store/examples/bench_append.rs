//! Store append benchmark: open loop, HdrHistogram, one JSON line.
//!
//! Latency of each append is measured from its *intended* start time (the
//! schedule that `--rate` sets), so a stall delays every append behind it
//! and shows up in the tail (no coordinated omission). With `--rate 0` each
//! producer appends as fast as it can and latency is per call.
//!
//! ```text
//! cargo run --release -p spate-store --example bench_append -- \
//!     --size 1024 --rate 100000 --seconds 30 --flush async --json
//! cargo run --release -p spate-store --example bench_append -- \
//!     --size 1024 --rate 0 --seconds 10 --flush sync --producers 64 --json
//! ```

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use spate_common::message::{encode_properties, property, NewMessage};
use spate_store::{FlushDiskType, MessageStore, StoreConfig};

#[derive(Parser, Debug)]
#[command(about = "Append benchmark for spate-store")]
struct Args {
    /// Message body size in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Target appends per second over all producers (0 = as fast as possible).
    #[arg(long, default_value_t = 100_000)]
    rate: u64,
    /// Measured seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// async or sync.
    #[arg(long, default_value = "async")]
    flush: String,
    /// Producer threads.
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Commit-log segment size in bytes (RocketMQ's default is 1 GiB).
    #[arg(long, default_value_t = 1 << 30)]
    segment_size: u64,
    /// Read/write separation (transientStorePoolEnable).
    #[arg(long)]
    transient_pool: bool,
    /// Do not pre-fault new segments (warmMapedFileEnable=false).
    #[arg(long)]
    no_warm: bool,
    /// mlock warmed segments and pool buffers.
    #[arg(long)]
    mlock: bool,
    /// Store directory (default: a fresh temporary directory, removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// flushIntervalCommitLog in ms (async flush).
    #[arg(long, default_value_t = 500)]
    flush_interval_ms: u64,
    /// Pin producers to CPU 0 and the store's threads to the other CPUs.
    #[arg(long)]
    pin: bool,
    /// Control run: follow the same schedule but append nothing (an idle
    /// 1 MiB store stays open), to measure the platform's own jitter.
    #[arg(long)]
    noop: bool,
    /// Any store setting by its RocketMQ key, e.g. `--set flushIntervalConsumeQueue=5000`
    /// (repeatable; applied after the options above).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    settings: Vec<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let flush: FlushDiskType = args.flush.parse().map_err(anyhow::Error::msg)?;
    let tmp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            tmp = tempfile::tempdir_in(std::env::temp_dir())?;
            tmp.path().to_path_buf()
        }
    };
    let fdatasync_p50_us = bare_fdatasync_p50_us(&dir)?;

    let mut config = StoreConfig::new(dir.join("store"));
    config.mapped_file_size_commit_log = args.segment_size;
    config.flush_disk_type = flush;
    config.transient_store_pool_enable = args.transient_pool;
    config.transient_store_pool_size = 3;
    config.warm_mapped_file_enable = !args.no_warm;
    config.lock_mapped_file_enable = args.mlock;
    config.max_message_size = (args.size + 1024).max(4 * 1024 * 1024).min(args.segment_size as usize / 2);
    config.flush_interval_commit_log = Duration::from_millis(args.flush_interval_ms);
    config.sync_flush_max_waiters = args.producers.max(1) * 4;
    for kv in &args.settings {
        let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--set wants KEY=VALUE, got {kv:?}"))?;
        if !config.set(k, v)? {
            anyhow::bail!("unknown store setting {k:?}");
        }
    }
    if args.noop {
        // The control run keeps an idle, tiny store only to share the code path.
        config.mapped_file_size_commit_log = 1 << 20;
        config.max_message_size = 64 * 1024;
        config.warm_mapped_file_enable = false;
    }
    let store = Arc::new(MessageStore::open(config)?);
    if args.pin {
        pin_store_threads()?;
    }

    let props = encode_properties([(property::TAGS, "bench"), (property::KEYS, "bench-key")])?;
    let message = NewMessage {
        topic: "BenchTopic".into(),
        queue_id: 0,
        flag: 0,
        body: Bytes::from(vec![b'x'; args.size]),
        properties: props,
        sys_flag: 0,
        born_timestamp: 0,
        born_host: "127.0.0.1:1".parse()?,
        store_host: "127.0.0.1:10911".parse()?,
        reconsume_times: 0,
        prepared_tx_offset: 0,
    };
    // Warm-up, not measured: the first segment and the allocator's next one.
    for _ in 0..if args.noop { 0 } else { 1000 } {
        store.put_message(&message)?.flush.wait_blocking()?;
    }
    let before = store.stats();
    let rolled_before = before.segments_rolled;

    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now() + Duration::from_millis(10);
    let duration = Duration::from_secs(args.seconds);
    let producers = args.producers.max(1);
    let (hist, errors) = if flush == FlushDiskType::Sync {
        produce_tasks(&store, &message, start, duration, producers, args.rate, args.pin)?
    } else {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                let (store, stop) = (store.clone(), stop.clone());
                let mut message = message.clone();
                message.queue_id = (p % 8) as i32;
                let interval = (args.rate > 0).then(|| Duration::from_secs_f64(producers as f64 / args.rate as f64));
                let (pin, noop) = (args.pin, args.noop);
                std::thread::spawn(move || {
                    if pin {
                        set_affinity(0, &[0]);
                    }
                    produce(&store, &message, start, duration, interval, p, producers, &stop, noop)
                })
            })
            .collect();
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
        let mut errors = 0u64;
        for h in handles {
            let (part, errs) = h.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
            hist.add(part)?;
            errors += errs;
        }
        (hist, errors)
    };
    let elapsed = start.elapsed().min(duration + Duration::from_secs(60)).as_secs_f64().max(1e-9);
    let stats = store.stats();
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let report = serde_json::json!({
        "flush": args.flush,
        "size": args.size,
        "rate": args.rate,
        "producers": producers,
        "seconds": args.seconds,
        "segment_size": args.segment_size,
        "transient_pool": args.transient_pool,
        "warm": !args.no_warm,
        "noop": args.noop,
        "mlock": args.mlock,
        "count": hist.len(),
        "errors": errors,
        "throughput_per_s": (hist.len() as f64 / elapsed).round(),
        "p50_us": us(0.5),
        "p99_us": us(0.99),
        "p999_us": us(0.999),
        "p9999_us": us(0.9999),
        "max_us": hist.max() as f64 / 1000.0,
        "segments_rolled": stats.segments_rolled - rolled_before,
        "roll_wait_us_max": stats.roll_wait_us_max,
        "fdatasync_p50_us": fdatasync_p50_us,
        "store_syncs": stats.syncs - before.syncs,
        "store_sync_avg_us": ((stats.sync_us_total - before.sync_us_total) as f64 / (stats.syncs - before.syncs).max(1) as f64).round(),
    });
    let mut report = report;
    if flush == FlushDiskType::Async {
        let u = *USAGE.lock().map_err(|_| anyhow::anyhow!("usage lock poisoned"))?;
        report["producer_minor_faults"] = u[0].into();
        report["producer_major_faults"] = u[1].into();
        report["producer_voluntary_switches"] = u[2].into();
        report["producer_involuntary_switches"] = u[3].into();
    }
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn produce(
    store: &MessageStore,
    message: &NewMessage,
    start: Instant,
    duration: Duration,
    interval: Option<Duration>,
    p: usize,
    producers: usize,
    stop: &AtomicBool,
    noop: bool,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
    let mut errors = 0;
    let end = start + duration;
    let mut i: u64 = 0;
    let usage_before = thread_usage();
    loop {
        let intended = match interval {
            // Producers interleave on one global schedule.
            Some(iv) => start + iv.mul_f64(i as f64) + iv.mul_f64(p as f64 / producers as f64),
            None => Instant::now().max(start),
        };
        if intended >= end || stop.load(Ordering::Relaxed) {
            break;
        }
        wait_until(intended);
        let outcome = if noop { Ok(()) } else { store.put_message(message).and_then(|r| r.flush.wait_blocking()) };
        let latency = intended.elapsed().as_nanos() as u64;
        if latency > 500_000 && std::env::var_os("BENCH_TRACE_SLOW").is_some() {
            eprintln!("slow append at {:.3}s: {} us", intended.duration_since(start).as_secs_f64(), latency / 1000);
        }
        match outcome {
            Ok(()) => hist.record(latency.max(1))?,
            Err(_) => errors += 1,
        }
        i += 1;
    }
    let usage_after = thread_usage();
    let mut usage = USAGE.lock().map_err(|_| anyhow::anyhow!("usage lock poisoned"))?;
    for k in 0..4 {
        usage[k] += usage_after[k] - usage_before[k];
    }
    Ok((hist, errors))
}

/// Producer-thread faults and switches, summed over producers.
static USAGE: std::sync::Mutex<[i64; 4]> = std::sync::Mutex::new([0; 4]);

/// Sync flush: producers are async tasks awaiting their group commit, as
/// the broker's request handlers will be, on a one-worker runtime (pinned
/// to CPU 0 with `--pin`). Closed loop per task with `--rate 0`; otherwise
/// each task follows its share of the open-loop schedule.
fn produce_tasks(
    store: &Arc<MessageStore>,
    message: &NewMessage,
    start: Instant,
    duration: Duration,
    producers: usize,
    rate: u64,
    pin: bool,
) -> anyhow::Result<(Histogram<u64>, u64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .on_thread_start(move || {
            if pin {
                set_affinity(0, &[0]);
            }
        })
        .build()?;
    let interval = (rate > 0).then(|| Duration::from_secs_f64(producers as f64 / rate as f64));
    runtime.block_on(async {
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let store = store.clone();
                let mut message = message.clone();
                message.queue_id = (p % 8) as i32;
                tokio::spawn(async move {
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
                    let (mut errors, mut i) = (0u64, 0u64);
                    let end = start + duration;
                    loop {
                        let intended = match interval {
                            Some(iv) => start + iv.mul_f64(i as f64) + iv.mul_f64(p as f64 / producers as f64),
                            None => Instant::now().max(start),
                        };
                        if intended >= end {
                            break;
                        }
                        if intended > Instant::now() {
                            tokio::time::sleep_until(intended.into()).await;
                        }
                        let outcome = match store.put_message(&message) {
                            Ok(r) => r.flush.wait().await,
                            Err(e) => Err(e),
                        };
                        match outcome {
                            Ok(()) => hist.record((intended.elapsed().as_nanos() as u64).max(1))?,
                            Err(_) => errors += 1,
                        }
                        i += 1;
                    }
                    anyhow::Ok((hist, errors))
                })
            })
            .collect();
        let mut hist = Histogram::<u64>::new_with_bounds(1, 120_000_000_000, 3)?;
        let mut errors = 0;
        for t in tasks {
            let (part, errs) = t.await??;
            hist.add(part)?;
            errors += errs;
        }
        Ok((hist, errors))
    })
}

/// Page faults and context switches of the calling thread so far:
/// (minor, major, voluntary, involuntary). A fault or an involuntary switch
/// on the append path is where tail latency comes from.
fn thread_usage() -> [i64; 4] {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        [ru.ru_minflt, ru.ru_majflt, ru.ru_nvcsw, ru.ru_nivcsw]
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
        if left > Duration::from_micros(300) {
            std::thread::sleep(left - Duration::from_micros(200));
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Median time of a 1 KiB overwrite plus `fdatasync` on an already written
/// file in the same directory: the floor for one durable append.
fn bare_fdatasync_p50_us(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fdatasync-probe");
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path)?;
    let block = vec![7u8; 1024];
    let prefill = vec![0u8; 1 << 20];
    for i in 0..4u64 {
        file.write_all_at(&prefill, i << 20)?;
    }
    file.sync_all()?;
    let mut samples = Vec::with_capacity(300);
    for i in 0..300u64 {
        file.write_all_at(&block, (i * 1024) % (4 << 20))?;
        let t = Instant::now();
        file.sync_data()?;
        samples.push(t.elapsed().as_nanos() as f64 / 1000.0);
    }
    std::fs::remove_file(&path)?;
    samples.sort_by(|a, b| a.total_cmp(b));
    std::io::stdout().flush()?;
    Ok(samples[samples.len() / 2])
}

/// Sets the CPU affinity of thread `tid` (0 = the calling thread).
fn set_affinity(tid: libc::pid_t, cpus: &[usize]) {
    // SAFETY: plain syscall on a zeroed cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Moves the store's background threads (named `spate-*`) off CPU 0.
fn pin_store_threads() -> anyhow::Result<()> {
    let others: Vec<usize> = (1..std::thread::available_parallelism()?.get()).collect();
    for entry in std::fs::read_dir("/proc/self/task")? {
        let entry = entry?;
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.starts_with("spate-") {
            if let Ok(tid) = entry.file_name().to_string_lossy().parse() {
                set_affinity(tid, &others);
            }
        }
    }
    Ok(())
}
