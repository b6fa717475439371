//! The producer's circuit breaker (upstream's latency fault tolerance, on
//! by default here): each broker's send latency and failures decide
//! whether new sends avoid it, and for how long.
//!
//! A send that took (or has been waiting) at least `latencyMax[i]` keeps
//! its broker out of queue selection for `notAvailableDuration[i]`
//! (upstream's tables: 50, 100, 550, 1000, 2000, 3000, 15000 ms of latency
//! map to 0, 0, 30, 60, 120, 180, 600 s); a failed send counts as the
//! largest latency. A send still waiting after `latencyMax[2]` isolates its
//! broker at once, so a hung broker is left within about half a second
//! instead of after the send's timeout. An isolated broker is probed in
//! the background every `detectInterval` with a light request that must
//! answer within `detectTimeout`; once it does, it is trusted again, so
//! traffic returns soon after the broker recovers rather than after the
//! whole isolation. With every broker isolated, sends go to the one that
//! becomes available first (never to none).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The breaker's settings.
#[derive(Debug, Clone)]
pub struct FaultPolicy {
    /// `sendLatencyFaultEnable` (upstream default false; true here).
    pub enabled: bool,
    /// `latencyMax`, ascending.
    pub latency_max: Vec<Duration>,
    /// `notAvailableDuration`, one per `latencyMax` entry.
    pub not_available: Vec<Duration>,
    /// `detectInterval`: how often isolated brokers are probed (2 s).
    pub detect_interval: Duration,
    /// `detectTimeout`: a probe answered later than this fails (200 ms).
    pub detect_timeout: Duration,
}

impl Default for FaultPolicy {
    fn default() -> Self {
        let ms = |v: &[u64]| v.iter().map(|m| Duration::from_millis(*m)).collect();
        FaultPolicy {
            enabled: true,
            latency_max: ms(&[50, 100, 550, 1000, 2000, 3000, 15000]),
            not_available: ms(&[0, 0, 30_000, 60_000, 120_000, 180_000, 600_000]),
            detect_interval: Duration::from_millis(2000),
            detect_timeout: Duration::from_millis(200),
        }
    }
}

impl FaultPolicy {
    /// How long a send latency keeps its broker out.
    pub fn isolation_for(&self, latency: Duration) -> Duration {
        self.latency_max
            .iter()
            .zip(&self.not_available)
            .rev()
            .find(|(max, _)| latency >= **max)
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// The latency that isolates a broker whose send is still waiting.
    pub fn slow_send(&self) -> Duration {
        self.latency_max
            .iter()
            .zip(&self.not_available)
            .find(|(_, d)| !d.is_zero())
            .map_or(Duration::MAX, |(max, _)| *max)
    }

    /// A failure counts as the largest latency.
    pub fn failure_latency(&self) -> Duration {
        self.latency_max.last().copied().unwrap_or(Duration::from_secs(15))
    }
}

#[derive(Debug, Clone, Copy)]
struct Item {
    until: Instant,
    last_probe: Option<Instant>,
}

/// Brokers currently avoided, by broker name.
#[derive(Default)]
pub struct FaultTable {
    items: Mutex<HashMap<String, Item>>,
}

/// Most brokers tracked (one entry per broker name the producer uses).
const MAX_ITEMS: usize = 10_000;

impl FaultTable {
    /// Records a send to `broker` that took `latency` (or, with
    /// `failed`, that failed): isolates it for the policy's time, never
    /// shortening an isolation already in force.
    pub fn update(&self, policy: &FaultPolicy, broker: &str, latency: Duration, failed: bool, now: Instant) {
        if !policy.enabled {
            return;
        }
        let latency = if failed { policy.failure_latency() } else { latency };
        let isolation = policy.isolation_for(latency);
        let mut items = self.items.lock();
        if isolation.is_zero() {
            // Fast again: trust it (a probe or a quick send proves it).
            if !failed {
                items.remove(broker);
            }
            return;
        }
        let until = now + isolation;
        let full = items.len() >= MAX_ITEMS;
        match items.get_mut(broker) {
            Some(i) => i.until = i.until.max(until),
            None if !full => {
                tracing::info!(
                    broker,
                    latency_ms = latency.as_millis() as u64,
                    isolated_s = isolation.as_secs(),
                    "broker isolated"
                );
                items.insert(broker.to_string(), Item { until, last_probe: None });
            }
            None => {}
        }
    }

    /// Whether new sends may go to `broker`.
    pub fn available(&self, broker: &str, now: Instant) -> bool {
        self.items.lock().get(broker).is_none_or(|i| now >= i.until)
    }

    /// Brokers to avoid now (for queue selection).
    pub fn avoided(&self, now: Instant) -> Vec<String> {
        self.items.lock().iter().filter(|(_, i)| now < i.until).map(|(b, _)| b.clone()).collect()
    }

    /// Among `brokers`, the one whose isolation ends first.
    pub fn least_bad<'a>(&self, brokers: impl Iterator<Item = &'a String>) -> Option<String> {
        let items = self.items.lock();
        brokers.min_by_key(|b| items.get(*b).map(|i| i.until)).cloned()
    }

    /// Isolated brokers due a probe now; marks them probed.
    pub fn due_probes(&self, policy: &FaultPolicy, now: Instant) -> Vec<String> {
        let mut items = self.items.lock();
        items.retain(|_, i| now < i.until);
        items
            .iter_mut()
            .filter(|(_, i)| i.last_probe.is_none_or(|t| now.saturating_duration_since(t) >= policy.detect_interval))
            .map(|(b, i)| {
                i.last_probe = Some(now);
                b.clone()
            })
            .collect()
    }

    /// A probe answered in time: the broker is trusted again.
    pub fn recovered(&self, broker: &str) {
        if self.items.lock().remove(broker).is_some() {
            tracing::info!(broker, "broker answered a probe: trusted again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_maps_to_isolation_as_upstreams_tables() {
        let p = FaultPolicy::default();
        assert_eq!(p.isolation_for(Duration::from_millis(10)), Duration::ZERO);
        assert_eq!(p.isolation_for(Duration::from_millis(549)), Duration::ZERO);
        assert_eq!(p.isolation_for(Duration::from_millis(550)), Duration::from_secs(30));
        assert_eq!(p.isolation_for(Duration::from_millis(2500)), Duration::from_secs(120));
        assert_eq!(p.isolation_for(Duration::from_secs(60)), Duration::from_secs(600));
        assert_eq!(p.slow_send(), Duration::from_millis(550));
    }

    #[test]
    fn an_isolated_broker_is_avoided_probed_and_trusted_again() {
        let (p, t) = (FaultPolicy::default(), FaultTable::default());
        let now = Instant::now();
        t.update(&p, "a", Duration::from_millis(5), false, now);
        assert!(t.available("a", now));
        t.update(&p, "a", Duration::ZERO, true, now);
        assert!(!t.available("a", now));
        assert_eq!(t.avoided(now), vec!["a".to_string()]);
        // A quick success later does not shorten an isolation in force...
        t.update(&p, "a", Duration::from_millis(600), false, now);
        assert!(!t.available("a", now + Duration::from_secs(100)));
        // ...but it ends by itself, and a probe ends it early.
        assert!(t.available("a", now + Duration::from_secs(601)));
        assert_eq!(t.due_probes(&p, now), vec!["a".to_string()]);
        assert!(t.due_probes(&p, now + Duration::from_millis(100)).is_empty(), "not again before detectInterval");
        assert_eq!(t.due_probes(&p, now + Duration::from_secs(3)), vec!["a".to_string()]);
        t.recovered("a");
        assert!(t.available("a", now));
        // Of several isolated brokers, the one free first.
        t.update(&p, "b", Duration::from_millis(600), false, now);
        t.update(&p, "c", Duration::from_millis(2000), false, now);
        let names = ["b".to_string(), "c".to_string()];
        assert_eq!(t.least_bad(names.iter()), Some("b".to_string()));
        let off = FaultPolicy { enabled: false, ..FaultPolicy::default() };
        t.update(&off, "d", Duration::ZERO, true, now);
        assert!(t.available("d", now));
    }
}
