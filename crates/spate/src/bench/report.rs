//! One benchmark result: latency percentiles from an HdrHistogram, counts,
//! errors by response code; printed as a table or one JSON object.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Latencies in microseconds, 1 us to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).expect("3 digits is valid"))
}

/// What a run measured.
pub struct Report {
    pub name: &'static str,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    pub sent_ok: u64,
    /// Failed operations by RocketMQ response code (`-1`: no response code,
    /// e.g. a timeout or a refused connection).
    pub errors: BTreeMap<i32, u64>,
    /// Extra fields for the JSON (settings, floor numbers).
    pub extra: serde_json::Map<String, Value>,
}

impl Report {
    pub fn throughput_per_s(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.sent_ok as f64 / secs
        } else {
            0.0
        }
    }

    pub fn to_json(&self) -> Value {
        let h = &self.latency_us;
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        let errors: serde_json::Map<String, Value> =
            self.errors.iter().map(|(code, n)| (code.to_string(), json!(n))).collect();
        let mut v = json!({
            "bench": self.name,
            "seconds": self.elapsed.as_secs_f64(),
            "throughput_per_s": self.throughput_per_s(),
            "sent_ok": self.sent_ok,
            "errors": errors,
            "p50_us": q(0.5),
            "p90_us": q(0.9),
            "p99_us": q(0.99),
            "p999_us": q(0.999),
            "p9999_us": q(0.9999),
            "max_us": h.max(),
            "samples": h.len(),
            "pct_under_1ms": pct_at_or_below(h, 1_000),
            "pct_under_10ms": pct_at_or_below(h, 10_000),
        });
        if let Value::Object(map) = &mut v {
            map.extend(self.extra.clone());
        }
        v
    }

    /// A human-readable summary.
    pub fn to_table(&self) -> String {
        let h = &self.latency_us;
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        let mut out = format!(
            "{}: {:.0} msg/s over {:.1} s, {} ok, {} errors\n",
            self.name,
            self.throughput_per_s(),
            self.elapsed.as_secs_f64(),
            self.sent_ok,
            self.errors.values().sum::<u64>()
        );
        out.push_str(&format!(
            "latency us: p50 {}  p90 {}  p99 {}  p99.9 {}  p99.99 {}  max {}\n",
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            q(0.9999),
            h.max()
        ));
        for (code, n) in &self.errors {
            out.push_str(&format!("errors with code {code}: {n}\n"));
        }
        for (k, v) in &self.extra {
            out.push_str(&format!("{k}: {v}\n"));
        }
        out
    }
}

/// Percent of samples at or below `us` (100 for an empty histogram).
pub fn pct_at_or_below(h: &Histogram<u64>, us: u64) -> f64 {
    if h.is_empty() {
        return 100.0;
    }
    let below: u64 = h.iter_recorded().filter(|v| v.value_iterated_to() <= us).map(|v| v.count_at_value()).sum();
    100.0 * below as f64 / h.len() as f64
}

/// Latency by percentile as an SVG image: x is the percentile on the usual
/// "nines" scale (90%, 99%, 99.9%, ...), y the latency on a log scale.
pub fn plot_svg(title: &str, h: &Histogram<u64>) -> String {
    const W: f64 = 800.0;
    const H: f64 = 480.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 50.0;
    // Nines shown: up to 99.999%, but no further than the samples resolve.
    let samples = h.len().max(1) as f64;
    let max_nines = samples.log10().clamp(1.0, 5.0).floor();
    let points: Vec<(f64, u64)> = (0..=(max_nines * 20.0) as usize)
        .map(|i| {
            let nines = i as f64 / 20.0;
            let q = 1.0 - 10f64.powf(-nines);
            (nines, if h.is_empty() { 1 } else { h.value_at_quantile(q).max(1) })
        })
        .chain(std::iter::once((max_nines, h.max().max(1))))
        .collect();
    let lo = points.iter().map(|p| p.1).min().unwrap_or(1).max(1);
    let hi = points.iter().map(|p| p.1).max().unwrap_or(10).max(lo + 1);
    let y_lo = (lo as f64).log10().floor();
    let y_hi = (hi as f64).log10().ceil().max(y_lo + 1.0);
    let x = |nines: f64| LEFT + nines / max_nines * (W - LEFT - RIGHT);
    let y = |us: u64| TOP + (y_hi - (us as f64).log10()) / (y_hi - y_lo) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        W / 2.0,
        xml_escape(title)
    );
    for decade in y_lo as i32..=y_hi as i32 {
        let us = 10u64.saturating_pow(decade.max(0) as u32);
        let yy = y(us);
        let label = match us {
            u if u >= 1_000_000 => format!("{} s", u / 1_000_000),
            u if u >= 1_000 => format!("{} ms", u / 1_000),
            u => format!("{u} us"),
        };
        svg.push_str(&format!(
            "<line x1=\"{LEFT}\" y1=\"{yy:.1}\" x2=\"{}\" y2=\"{yy:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{label}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            yy + 4.0
        ));
    }
    for n in 0..=max_nines as usize {
        let xx = x(n as f64);
        let label = ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"][n.min(5)];
        svg.push_str(&format!(
            "<line x1=\"{xx:.1}\" y1=\"{TOP}\" x2=\"{xx:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{xx:.1}\" y=\"{}\" text-anchor=\"middle\">{label}</text>\n",
            H - BOTTOM,
            H - BOTTOM + 18.0
        ));
    }
    let path: Vec<String> = points.iter().map(|&(n, us)| format!("{:.1},{:.1}", x(n), y(us))).collect();
    svg.push_str(&format!(
        "<polyline fill=\"none\" stroke=\"#1f5fbf\" stroke-width=\"2\" points=\"{}\"/>\n\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">percentile</text>\n\
         <text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">latency</text>\n</svg>\n",
        path.join(" "),
        (LEFT + W - RIGHT) / 2.0,
        H - 12.0,
        H / 2.0,
        H / 2.0
    ));
    svg
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Runs an open-loop schedule on its own thread: calls `issue(k, intended)`
/// at `start + k / per_second` until `end` or until `issue` returns false.
/// `std::thread::sleep` with a 1 ns timer slack wakes within microseconds;
/// tokio's millisecond timer would add up to a millisecond to every sample.
pub fn open_loop_schedule(
    start: std::time::Instant,
    end: std::time::Instant,
    per_second: f64,
    mut issue: impl FnMut(u64, std::time::Instant) -> bool + Send + 'static,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        for (k, intended) in schedule_times(start, end, per_second) {
            let now = std::time::Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if !issue(k, intended) {
                return;
            }
        }
    })
}

/// The open-loop schedule's send times: request `k` at `start + k /
/// per_second`, while before `end`.
fn schedule_times(
    start: std::time::Instant,
    end: std::time::Instant,
    per_second: f64,
) -> impl Iterator<Item = (u64, std::time::Instant)> {
    (0u64..)
        .map(move |k| (k, start + Duration::from_secs_f64(k as f64 / per_second.max(1e-9))))
        .take_while(move |(_, intended)| *intended < end)
}

/// [`open_loop_schedule`] as a task of the current runtime, for a
/// benchmark whose client shares one CPU with it (e2e): the waits are a
/// `timerfd` in the runtime's own poll, exact to microseconds (tokio's
/// timer rounds to milliseconds), so no thread of its own wakes per
/// request and hands it over. On that CPU the thread's wake-up, and the
/// runtime worker it woke and that the next wake-up preempted, were the
/// benchmark's largest cost per message (BENCHMARKS.md). The price: a
/// request is issued late whenever the worker is busy when it falls due,
/// which the open-loop producer's figures would count, so it keeps the
/// thread.
pub async fn open_loop_schedule_in_runtime(
    start: std::time::Instant,
    end: std::time::Instant,
    per_second: f64,
    mut issue: impl FnMut(u64, std::time::Instant) -> bool + Send + 'static,
) -> std::io::Result<()> {
    let timer = PreciseTimer::new()?;
    for (k, intended) in schedule_times(start, end, per_second) {
        timer.sleep_until(intended).await?;
        if !issue(k, intended) {
            break;
        }
    }
    Ok(())
}

/// A one-shot `timerfd` on CLOCK_MONOTONIC (the clock `Instant` reads),
/// polled by the runtime.
struct PreciseTimer {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl PreciseTimer {
    fn new() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create takes no pointers; a non-negative result
        // is a new descriptor that nothing else owns.
        let raw = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is the descriptor just created, owned from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) };
        // SAFETY: the OwnedFd keeps its descriptor open and unchanged for
        // as long as it lives, and the AsyncFd owns it (I/O safety).
        let fd = unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| e.into_parts().1)?;
        Ok(PreciseTimer { fd })
    }

    /// Returns at `at` (at once if it is past).
    async fn sleep_until(&self, at: std::time::Instant) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let Some(wait) = at.checked_duration_since(std::time::Instant::now()).filter(|d| !d.is_zero()) else {
            return Ok(());
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `spec` is a valid itimerspec; the old value is not asked for.
        if unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            // SAFETY: reads at most 8 bytes into the 8-byte buffer.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), expirations.as_mut_ptr().cast(), expirations.len()) };
            if n == 8 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::WouldBlock {
                return Err(e);
            }
            ready.clear_ready();
        }
    }
}

/// `10s`, `2m`, `500ms`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("invalid duration `{s}` (examples: 10s, 2m, 500ms)"))?;
    let secs = match unit {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("invalid duration unit in `{s}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("invalid duration `{s}`"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_mqadmin_users_write_them() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn json_has_every_field() {
        let mut h = histogram();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let r = Report {
            name: "produce",
            elapsed: Duration::from_secs(2),
            latency_us: h,
            sent_ok: 1000,
            errors: BTreeMap::from([(2, 3)]),
            extra: Default::default(),
        };
        let v = r.to_json();
        for k in
            ["throughput_per_s", "p50_us", "p90_us", "p99_us", "p999_us", "p9999_us", "max_us", "sent_ok", "errors"]
        {
            assert!(v.get(k).is_some(), "{k}");
        }
        assert_eq!(v["throughput_per_s"], 500.0);
        assert_eq!(v["errors"]["2"], 3);
        assert!((495..=505).contains(&v["p50_us"].as_u64().unwrap()));
        assert_eq!(v["pct_under_1ms"], 100.0);
        let mut slow = histogram();
        for v in 1..=1000u64 {
            slow.record(if v <= 999 { 500 } else { 5_000 }).unwrap();
        }
        assert!((pct_at_or_below(&slow, 1_000) - 99.9).abs() < 1e-9);
        assert_eq!(pct_at_or_below(&slow, 10_000), 100.0);
    }

    #[test]
    fn plot_is_an_svg_with_the_tail_on_it() {
        let mut h = histogram();
        for v in 1..=10_000u64 {
            h.record(if v % 1000 == 0 { 50_000 } else { 100 }).unwrap();
        }
        let svg = plot_svg("produce <test>", &h);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("produce &lt;test&gt;"));
        assert!(svg.contains("99.99%") && !svg.contains("99.999%"), "4 nines for 10k samples");
        assert!(svg.contains("100 ms") && svg.contains("100 us"));
        // The line ends at the stall's height, the highest point (smallest y).
        let points = svg.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        let ys: Vec<f64> = points.split(' ').map(|p| p.split(',').nth(1).unwrap().parse().unwrap()).collect();
        let last = *ys.last().unwrap();
        assert!(ys.iter().all(|&y| y >= last), "{points}");
        assert!(ys[0] > last + 100.0, "the p50 sits far below the stall");
    }
}
