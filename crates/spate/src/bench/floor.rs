//! `spate bench floor`: this machine's physical floor, measured the same
//! way a benchmark run is, so every report can say how far above it Spate
//! is: a TCP ping-pong between two threads with blocking sockets (one
//! `write` and one `read` per side per round trip, the least a request and
//! its answer can cost) carrying a message-sized request and a small
//! answer, with each side's CPU time per round trip; `fdatasync` of a
//! freshly written page; and the sequential write bandwidth of the data
//! directory's disk.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::report::{histogram, Report};

/// Bytes of the answer in the round trip (about a send response).
const ANSWER_BYTES: usize = 128;

/// CPU time (user + system) this thread has used so far.
fn thread_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1_000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Pins this thread to one CPU; a no-op (with a warning) when it cannot.
fn pin_to(cpu: usize) {
    // SAFETY: the set is a plain bit mask on the stack.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            tracing::warn!(cpu, "could not pin the floor thread");
        }
    }
}

/// Round trips of `size` bytes out and ANSWER_BYTES back over loopback,
/// between this thread (the client) and one more (the server), both on
/// blocking sockets. With `pin`, the server runs on the first CPU and the
/// client on the second, as the benchmark scripts pin broker and client.
/// The report carries each side's CPU time per round trip.
pub fn tcp_round_trip(size: usize, rounds: usize, pin: Option<(usize, usize)>) -> Result<Report> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let total = rounds + rounds / 10;
    let server =
        std::thread::Builder::new().name("floor-server".into()).spawn(move || -> std::io::Result<Duration> {
            if let Some((cpu, _)) = pin {
                pin_to(cpu);
            }
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; size];
            let answer = [0u8; ANSWER_BYTES];
            let mut measured_from = thread_cpu();
            for i in 0..total {
                if i == rounds / 10 {
                    measured_from = thread_cpu();
                }
                s.read_exact(&mut buf)?;
                s.write_all(&answer)?;
            }
            Ok(thread_cpu().saturating_sub(measured_from))
        })?;
    if let Some((_, cpu)) = pin {
        pin_to(cpu);
    }
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let request = vec![1u8; size];
    let mut answer = [0u8; ANSWER_BYTES];
    let mut h = histogram();
    let mut started = Instant::now();
    let mut cpu_from = thread_cpu();
    for i in 0..total {
        if i == rounds / 10 {
            started = Instant::now();
            cpu_from = thread_cpu();
        }
        let t = Instant::now();
        c.write_all(&request)?;
        c.read_exact(&mut answer)?;
        if i >= rounds / 10 {
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
        }
    }
    let client_cpu = thread_cpu().saturating_sub(cpu_from);
    let elapsed = started.elapsed();
    drop(c);
    let server_cpu = server
        .join()
        .map_err(|_| anyhow::anyhow!("the floor's server thread panicked"))?
        .context("the floor's server thread")?;
    let per_trip = |d: Duration| (d.as_secs_f64() * 1e6 / rounds.max(1) as f64 * 100.0).round() / 100.0;
    let mut extra = serde_json::Map::new();
    extra.insert("size".into(), size.into());
    extra.insert("pinned".into(), pin.is_some().into());
    extra.insert("server_cpu_us_per_round_trip".into(), per_trip(server_cpu).into());
    extra.insert("client_cpu_us_per_round_trip".into(), per_trip(client_cpu).into());
    Ok(Report {
        name: "floor_tcp_round_trip",
        elapsed,
        sent_ok: h.len(),
        latency_us: h,
        errors: Default::default(),
        extra,
    })
}

/// Sequential write bandwidth of the disk under `dir`: `mib` MiB written in
/// 1 MiB steps to a new file, then `fdatasync`, timed together. The
/// figure a store's sustained append rate is judged against.
pub fn sequential_write(dir: &Path, mib: usize) -> Result<serde_json::Value> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".spate-floor-seq-{}", std::process::id()));
    let chunk = vec![0x5au8; 1 << 20];
    let result = (|| -> std::io::Result<Duration> {
        let mut f = std::fs::File::create(&path)?;
        let started = Instant::now();
        for _ in 0..mib {
            f.write_all(&chunk)?;
        }
        f.sync_data()?;
        Ok(started.elapsed())
    })();
    let _ = std::fs::remove_file(&path);
    let took = result.with_context(|| format!("sequential write in {}", dir.display()))?;
    let mb_per_s = (mib as f64 * 1.048576 / took.as_secs_f64() * 10.0).round() / 10.0;
    Ok(
        serde_json::json!({"bench": "floor_sequential_write", "mib": mib, "seconds": took.as_secs_f64(), "mb_per_s": mb_per_s}),
    )
}

/// `fdatasync` after rewriting one 4 KiB page of a file in `dir`.
pub fn fdatasync(dir: &Path, rounds: usize) -> Result<Report> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!(".spate-floor-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let page = [7u8; 4096];
    let mut h = histogram();
    let started = Instant::now();
    let result = (|| -> std::io::Result<()> {
        for i in 0..rounds {
            f.write_all(&page)?;
            let t = Instant::now();
            f.sync_data()?;
            let _ = h.record(t.elapsed().as_micros().max(1) as u64);
            if i % 64 == 63 {
                f.set_len(0)?;
                std::io::Seek::rewind(&mut f)?;
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("fdatasync in {}", dir.display()))?;
    Ok(Report {
        name: "floor_fdatasync",
        elapsed: started.elapsed(),
        sent_ok: h.len(),
        latency_us: h,
        errors: Default::default(),
        extra: Default::default(),
    })
}

/// The floors as extra report fields of a benchmark run, and the run's
/// latency as ratios to the round trip's.
pub async fn floor_fields(run: &Report, size: usize, dir: &Path) -> Result<serde_json::Map<String, serde_json::Value>> {
    let tcp = tokio::task::spawn_blocking(move || tcp_round_trip(size, 5_000, None)).await??;
    let d = dir.to_path_buf();
    let sync = tokio::task::spawn_blocking(move || fdatasync(&d, 200)).await??;
    let mut m = serde_json::Map::new();
    for (name, r) in [("floor_tcp_rtt", &tcp), ("floor_fdatasync", &sync)] {
        m.insert(format!("{name}_p50_us"), r.latency_us.value_at_quantile(0.5).into());
        m.insert(format!("{name}_p99_us"), r.latency_us.value_at_quantile(0.99).into());
    }
    for key in ["server_cpu_us_per_round_trip", "client_cpu_us_per_round_trip"] {
        if let Some(v) = tcp.extra.get(key) {
            m.insert(format!("floor_tcp_rtt_{key}"), v.clone());
        }
    }
    if !run.latency_us.is_empty() {
        for (q, label) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
            let floor = tcp.latency_us.value_at_quantile(q).max(1) as f64;
            let ratio = run.latency_us.value_at_quantile(q) as f64 / floor;
            m.insert(format!("{label}_over_floor"), ((ratio * 100.0).round() / 100.0).into());
        }
    }
    Ok(m)
}
