//! Metrics for Spate's servers: counters, gauges and histograms with
//! labels, rendered in Prometheus' text exposition format and served at
//! `/metrics` by [`serve`]. Values are in base units (seconds, bytes).
//!
//! Every family has a bound on its label sets ([`MAX_SERIES_PER_FAMILY`]):
//! a peer that invents topic names cannot grow memory without end; series
//! beyond the bound are counted in `spate_metrics_series_dropped_total`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Most label sets one family keeps.
pub const MAX_SERIES_PER_FAMILY: usize = 10_000;

/// Latency buckets in seconds: 50 us to 10 s.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

type Labels = Vec<(&'static str, String)>;

/// A monotonically increasing count.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default, Debug)]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed buckets (cumulative on output).
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_nanos.fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

enum Series {
    Counter(Arc<Counter>),
    Gauge(Arc<Gauge>),
    Histogram(Arc<Histogram>),
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, Series>,
}

/// All metrics of one process.
#[derive(Default)]
pub struct Registry {
    families: RwLock<BTreeMap<&'static str, Family>>,
    dropped: Counter,
}

impl Registry {
    pub fn new() -> Arc<Registry> {
        Arc::new(Registry::default())
    }

    /// The counter `name{labels}`, created on first use.
    pub fn counter(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Counter> {
        match self.get_or_add(name, help, Kind::Counter, labels, || Series::Counter(Arc::default())) {
            Some(Series::Counter(c)) => c,
            _ => Arc::default(),
        }
    }

    /// The gauge `name{labels}`, created on first use.
    pub fn gauge(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Gauge> {
        match self.get_or_add(name, help, Kind::Gauge, labels, || Series::Gauge(Arc::default())) {
            Some(Series::Gauge(g)) => g,
            _ => Arc::default(),
        }
    }

    /// The latency histogram `name{labels}` (seconds), created on first use.
    pub fn histogram(&self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)]) -> Arc<Histogram> {
        let make = || Series::Histogram(Arc::new(Histogram::new(LATENCY_BUCKETS)));
        match self.get_or_add(name, help, Kind::Histogram, labels, make) {
            Some(Series::Histogram(h)) => h,
            _ => Arc::new(Histogram::new(LATENCY_BUCKETS)),
        }
    }

    /// Returns a detached series (not exported) when the family is full or
    /// the name was registered with another type.
    fn get_or_add(
        &self,
        name: &'static str,
        help: &'static str,
        kind: Kind,
        labels: &[(&'static str, &str)],
        make: impl FnOnce() -> Series,
    ) -> Option<Series> {
        let key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
        if let Some(s) = self.families.read().get(name).and_then(|f| f.series.get(&key)) {
            return Some(clone_series(s));
        }
        let mut families = self.families.write();
        let family = families.entry(name).or_insert_with(|| Family { help, kind, series: BTreeMap::new() });
        if let Some(s) = family.series.get(&key) {
            return Some(clone_series(s));
        }
        if family.series.len() >= MAX_SERIES_PER_FAMILY {
            self.dropped.inc();
            return None;
        }
        let s = make();
        let kinds_match = matches!(
            (&family.kind, &s),
            (Kind::Counter, Series::Counter(_))
                | (Kind::Gauge, Series::Gauge(_))
                | (Kind::Histogram, Series::Histogram(_))
        );
        if !kinds_match {
            return None;
        }
        let out = clone_series(&s);
        family.series.insert(key, s);
        Some(out)
    }

    /// Drops every series of a family (for gauges recomputed on each scrape).
    pub fn clear(&self, name: &'static str) {
        if let Some(f) = self.families.write().get_mut(name) {
            f.series.clear();
        }
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        for (name, f) in self.families.read().iter() {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(out, "# HELP {name} {}", f.help);
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, s) in &f.series {
                match s {
                    Series::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", label_text(labels, None), c.get());
                    }
                    Series::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {}", label_text(labels, None), g.get());
                    }
                    Series::Histogram(h) => {
                        let mut cumulative = 0;
                        for (i, b) in h.bounds.iter().enumerate() {
                            cumulative += h.counts[i].load(Ordering::Relaxed);
                            let le = format!("{b}");
                            let _ = writeln!(out, "{name}_bucket{} {cumulative}", label_text(labels, Some(&le)));
                        }
                        let total = h.count();
                        let _ = writeln!(out, "{name}_bucket{} {total}", label_text(labels, Some("+Inf")));
                        let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
                        let _ = writeln!(out, "{name}_sum{} {sum}", label_text(labels, None));
                        let _ = writeln!(out, "{name}_count{} {total}", label_text(labels, None));
                    }
                }
            }
        }
        let _ =
            writeln!(out, "# HELP spate_metrics_series_dropped_total Label sets refused because a family was full.");
        let _ = writeln!(out, "# TYPE spate_metrics_series_dropped_total counter");
        let _ = writeln!(out, "spate_metrics_series_dropped_total {}", self.dropped.get());
        out
    }
}

fn clone_series(s: &Series) -> Series {
    match s {
        Series::Counter(c) => Series::Counter(c.clone()),
        Series::Gauge(g) => Series::Gauge(g.clone()),
        Series::Histogram(h) => Series::Histogram(h.clone()),
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn label_text(labels: &Labels, le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Largest request head read from a scraper.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A scraper that does not send its request within this long is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `GET /metrics` on `addr`; `render` is called on every scrape.
pub async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let render = render.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_REQUEST_BYTES];
                let mut n = 0;
                let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                    while n < buf.len() {
                        let m = stream.read(&mut buf[n..]).await?;
                        if m == 0 {
                            break;
                        }
                        n += m;
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                    Ok::<_, std::io::Error>(())
                })
                .await;
                if !matches!(read, Ok(Ok(()))) {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let path = head.split_whitespace().nth(1).unwrap_or("");
                let (status, ctype, body) =
                    if head.starts_with("GET ") && (path == "/metrics" || path.starts_with("/metrics?")) {
                        ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render())
                    } else {
                        ("404 Not Found", "text/plain", "only GET /metrics is served\n".to_string())
                    };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(resp.as_bytes())).await;
            });
        }
    });
    tracing::info!(addr = %local, "metrics at /metrics");
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_with_labels_and_cumulative_buckets() {
        let r = Registry::new();
        r.counter("rocketmq_messages_in_total", "Messages stored.", &[("topic", "T\"1")]).add(3);
        r.gauge("rocketmq_brokers_alive", "Brokers.", &[]).set(2);
        let h = r.histogram("rocketmq_rpc_latency_seconds", "Latency.", &[("request", "send")]);
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(3));
        let text = r.render();
        assert!(text.contains("# TYPE rocketmq_messages_in_total counter"), "{text}");
        assert!(text.contains("rocketmq_messages_in_total{topic=\"T\\\"1\"} 3"), "{text}");
        assert!(text.contains("rocketmq_brokers_alive 2"));
        assert!(text.contains("rocketmq_rpc_latency_seconds_bucket{request=\"send\",le=\"0.0001\"} 1"), "{text}");
        assert!(text.contains("rocketmq_rpc_latency_seconds_bucket{request=\"send\",le=\"0.005\"} 2"));
        assert!(text.contains("rocketmq_rpc_latency_seconds_bucket{request=\"send\",le=\"+Inf\"} 2"));
        assert!(text.contains("rocketmq_rpc_latency_seconds_count{request=\"send\"} 2"));
        // The same labels give the same series.
        r.counter("rocketmq_messages_in_total", "Messages stored.", &[("topic", "T\"1")]).inc();
        assert!(r.render().contains("rocketmq_messages_in_total{topic=\"T\\\"1\"} 4"));
    }

    #[test]
    fn families_are_bounded() {
        let r = Registry::new();
        for i in 0..MAX_SERIES_PER_FAMILY + 5 {
            r.counter("c_total", "c", &[("topic", &i.to_string())]).inc();
        }
        assert!(r.render().contains("spate_metrics_series_dropped_total 5"));
    }

    #[tokio::test]
    async fn serves_get_metrics_only() {
        let r = Registry::new();
        r.counter("x_total", "x", &[]).add(7);
        let rr = r.clone();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(move || rr.render())).await.unwrap();
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK") && ok.contains("x_total 7"), "{ok}");
        assert!(get("/other").await.starts_with("HTTP/1.1 404"));
        task.abort();
    }
}
