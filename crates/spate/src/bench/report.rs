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
        let mut k: u64 = 0;
        loop {
            let intended = start + Duration::from_secs_f64(k as f64 / per_second.max(1e-9));
            if intended >= end {
                return;
            }
            let now = std::time::Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if !issue(k, intended) {
                return;
            }
            k += 1;
        }
    })
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
    }
}
