//! Degradation by priority (multi-level QoS): topics and consumer groups
//! carry a class -- `core`, `normal` (the default) or `bulk` -- and under
//! pressure the broker refuses `bulk` first, then `normal`, so `core`
//! traffic keeps its latency; when the pressure passes the level steps
//! back down by itself.
//!
//! Pressure is how long sends wait before they are stored (an average over
//! the last few hundred, from when each was read off its connection) above
//! `degradeQueueWaitMillis`, or the send queue deeper than
//! `degradeQueueDepth`. The level rises one step after pressure held for
//! `degradeStepMillis` at the current level -- but only while there is
//! more important traffic to protect (a class is refused only if a higher
//! one was seen within `degradeRecoverMillis`: with no core traffic,
//! refusing normal traffic would only lose goodput) -- and falls one step
//! after `degradeRecoverMillis` without pressure.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A topic's or group's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Kept at every level.
    Core,
    /// Refused at level 2.
    #[default]
    Normal,
    /// Refused from level 1.
    Bulk,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::Core => "core",
            Class::Normal => "normal",
            Class::Bulk => "bulk",
        }
    }
}

/// Highest level: bulk and normal refused.
pub const MAX_LEVEL: u8 = 2;

/// The thresholds (broker.conf).
#[derive(Debug, Clone, Copy)]
pub struct DegradePolicy {
    pub enabled: bool,
    pub queue_wait: Duration,
    pub queue_depth: usize,
    pub step: Duration,
    pub recover: Duration,
}

#[derive(Debug)]
struct Phase {
    /// When the current level was entered.
    since: Instant,
    /// When pressure was last seen.
    last_pressure: Option<Instant>,
}

/// The broker's current degradation level and what drives it.
pub struct Degrader {
    level: AtomicU8,
    /// Average send queue wait in nanoseconds (exponential, weight 1/64).
    wait_avg_ns: AtomicU64,
    /// Sends recorded since the last check (none: the average decays).
    samples: AtomicU64,
    /// When a request of each class (core, normal, bulk) was last seen.
    seen: Mutex<[Option<Instant>; 3]>,
    phase: Mutex<Phase>,
}

impl Default for Degrader {
    fn default() -> Self {
        Degrader {
            level: AtomicU8::new(0),
            wait_avg_ns: AtomicU64::new(0),
            samples: AtomicU64::new(0),
            seen: Mutex::new([None; 3]),
            phase: Mutex::new(Phase { since: Instant::now(), last_pressure: None }),
        }
    }
}

impl Degrader {
    /// 0 (nothing refused), 1 (bulk refused) or 2 (bulk and normal refused).
    pub fn level(&self) -> u8 {
        self.level.load(Ordering::Relaxed)
    }

    /// The recent average send queue wait.
    pub fn wait_avg(&self) -> Duration {
        Duration::from_nanos(self.wait_avg_ns.load(Ordering::Relaxed))
    }

    /// Records how long one send waited before it was stored.
    pub fn record_wait(&self, waited: Duration) {
        let sample = waited.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        // A lost race between two updates loses one sample: fine for an average.
        let avg = self.wait_avg_ns.load(Ordering::Relaxed);
        let next = avg - avg / 64 + sample / 64;
        self.wait_avg_ns.store(next, Ordering::Relaxed);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a request of `class` is taken at the current level (and
    /// notes that traffic of `class` exists).
    pub fn admits(&self, class: Class) -> bool {
        self.seen.lock()[class as usize] = Some(Instant::now());
        self.admits_now(class)
    }

    fn admits_now(&self, class: Class) -> bool {
        match class {
            Class::Core => true,
            Class::Normal => self.level() < 2,
            Class::Bulk => self.level() < 1,
        }
    }

    /// One check (every few tens of ms): moves the level at most one step.
    /// Returns the level after it.
    pub fn tick(&self, now: Instant, policy: &DegradePolicy, queue_depth: usize) -> u8 {
        if !policy.enabled {
            self.level.store(0, Ordering::Relaxed);
            return 0;
        }
        if self.samples.swap(0, Ordering::Relaxed) == 0 {
            // No sends since the last check: nothing is waiting; let the average fall.
            let avg = self.wait_avg_ns.load(Ordering::Relaxed);
            self.wait_avg_ns.store(avg / 2, Ordering::Relaxed);
        }
        let pressure = self.wait_avg() > policy.queue_wait || queue_depth > policy.queue_depth;
        let mut phase = self.phase.lock();
        let level = self.level();
        if pressure {
            phase.last_pressure = Some(now);
        }
        let calm_for = phase.last_pressure.map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        let at_level_for = now.saturating_duration_since(phase.since);
        // The class the next step would refuse, and the one it protects.
        let protects = match level {
            0 => [Class::Core, Class::Normal].iter().any(|c| self.seen_within(*c, now, policy.recover)),
            _ => self.seen_within(Class::Core, now, policy.recover),
        };
        let next = if pressure && level < MAX_LEVEL && at_level_for >= policy.step && protects {
            level + 1
        } else if !pressure && level > 0 && calm_for >= policy.recover && at_level_for >= policy.recover {
            level - 1
        } else {
            level
        };
        if next != level {
            phase.since = now;
            self.level.store(next, Ordering::Relaxed);
            if next > level {
                tracing::warn!(
                    level = next,
                    wait_avg_us = self.wait_avg().as_micros() as u64,
                    queue_depth,
                    "under pressure: degrading"
                );
            } else {
                tracing::info!(level = next, "pressure passed: degradation lifted one step");
            }
        }
        next
    }
}

impl Degrader {
    fn seen_within(&self, class: Class, now: Instant, window: Duration) -> bool {
        self.seen.lock()[class as usize].is_some_and(|t| now.saturating_duration_since(t) <= window)
    }

    /// Notes traffic of `class` (tests).
    #[cfg(test)]
    fn saw(&self, class: Class, at: Instant) {
        self.seen.lock()[class as usize] = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> DegradePolicy {
        DegradePolicy {
            enabled: true,
            queue_wait: Duration::from_millis(10),
            queue_depth: 100,
            step: Duration::from_millis(200),
            recover: Duration::from_millis(1000),
        }
    }

    #[test]
    fn pressure_refuses_bulk_then_normal_and_calm_lifts_it_step_by_step() {
        let d = Degrader::default();
        let p = policy();
        let t0 = Instant::now();
        assert_eq!(d.tick(t0, &p, 0), 0);
        assert!(d.admits(Class::Bulk));
        d.saw(Class::Core, t0 + Duration::from_millis(900));
        // A deep queue is pressure: one step per `step`.
        assert_eq!(d.tick(t0 + Duration::from_millis(250), &p, 500), 1);
        assert!(!d.admits(Class::Bulk) && d.admits(Class::Normal));
        assert_eq!(d.tick(t0 + Duration::from_millis(300), &p, 500), 1, "not before `step` at this level");
        assert_eq!(d.tick(t0 + Duration::from_millis(500), &p, 500), 2);
        assert!(!d.admits(Class::Normal) && d.admits(Class::Core));
        assert_eq!(d.tick(t0 + Duration::from_millis(900), &p, 500), 2, "never past the top");
        // Calm: down one step per `recover`.
        assert_eq!(d.tick(t0 + Duration::from_millis(1500), &p, 0), 2, "calm for 0.6 s only");
        assert_eq!(d.tick(t0 + Duration::from_millis(1950), &p, 0), 1);
        assert_eq!(d.tick(t0 + Duration::from_millis(2500), &p, 0), 1);
        assert_eq!(d.tick(t0 + Duration::from_millis(3000), &p, 0), 0);
        assert!(d.admits(Class::Bulk));
    }

    #[test]
    fn nothing_is_refused_when_there_is_nothing_more_important_to_protect() {
        let (d, p) = (Degrader::default(), policy());
        let t0 = Instant::now();
        d.saw(Class::Bulk, t0);
        assert_eq!(d.tick(t0 + Duration::from_secs(1), &p, 500), 0, "only bulk traffic: keep taking it");
        d.saw(Class::Normal, t0 + Duration::from_secs(1));
        assert_eq!(d.tick(t0 + Duration::from_millis(1300), &p, 500), 1, "normal traffic to protect");
        assert_eq!(d.tick(t0 + Duration::from_millis(1600), &p, 500), 1, "no core traffic: normal is kept");
    }

    #[test]
    fn a_long_average_wait_is_pressure_and_disabled_means_never() {
        let d = Degrader::default();
        d.saw(Class::Normal, Instant::now() + Duration::from_secs(1));
        for _ in 0..1000 {
            d.record_wait(Duration::from_millis(50));
        }
        assert!(d.wait_avg() > Duration::from_millis(40), "{:?}", d.wait_avg());
        let t0 = Instant::now();
        assert_eq!(d.tick(t0 + Duration::from_secs(1), &policy(), 0), 1);
        // No sends for a while: the average falls by half each check.
        d.tick(t0 + Duration::from_secs(1), &policy(), 0);
        assert!(d.wait_avg() < Duration::from_millis(30), "{:?}", d.wait_avg());
        let off = DegradePolicy { enabled: false, ..policy() };
        assert_eq!(d.tick(t0 + Duration::from_secs(2), &off, 10_000), 0);
        assert!(d.admits(Class::Bulk));
    }
}
