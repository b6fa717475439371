//! Degradation by priority (multi-level QoS): topics and consumer groups
//! carry a class -- `core`, `normal` (the default) or `bulk` -- and under
//! pressure the broker sheds `bulk` first, then `normal`, so `core` traffic
//! keeps its latency; when the pressure passes the limits lift by
//! themselves.
//!
//! Shedding is proportional, not all or nothing: each lower class has an
//! admitted share (per mille) that an AIMD loop moves every
//! `degradeCheckInterval`. Under pressure the share of the class being shed
//! halves (at most once per `degradeStepMillis`, so the effect of one cut
//! shows before the next); `bulk` goes to zero before `normal` is touched.
//! Without pressure the shares grow back linearly (`normal` first), from
//! zero to whole in `degradeRecoverMillis`. The broker thus settles just
//! under what it can take instead of swinging between overload and
//! refusing everything, and goodput stays near the peak.
//!
//! Pressure is any of:
//! - the time sends take from being read off their connection to being
//!   stored, averaged over the last few dozen, above `degradeSendWaitMicros`;
//! - the runtime's scheduling lag (how long a ready task waits for a
//!   worker: the time a request sits in its socket before it is read, which
//!   no queue inside the broker sees) above `degradeSchedulingLagMicros`;
//! - more sends waiting for the send stage than `degradeQueueDepth`.
//!
//! A class is shed only while more important traffic exists (seen within
//! `degradeRecoverMillis`): with no core traffic, refusing normal traffic
//! would only lose goodput.
//!
//! The level shown to operators: 0 nothing shed, 1 `bulk` shed (partly or
//! wholly), 2 `normal` shed too.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// A topic's or group's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Never shed.
    Core,
    /// Shed once `bulk` is shed wholly.
    #[default]
    Normal,
    /// Shed first.
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

/// A whole share: everything of a class admitted.
pub const WHOLE: u32 = 1000;

/// A share cut below this is cut to nothing (halving would never get there).
const FLOOR: u32 = 20;

/// The thresholds (broker.conf).
#[derive(Debug, Clone, Copy)]
pub struct DegradePolicy {
    pub enabled: bool,
    pub send_wait: Duration,
    pub scheduling_lag: Duration,
    pub queue_depth: usize,
    pub step: Duration,
    pub recover: Duration,
    pub check_interval: Duration,
}

/// An exponential average (weight 1/16) kept in nanoseconds.
#[derive(Default)]
struct Average(AtomicU64);

impl Average {
    fn record(&self, sample: Duration) {
        let sample = sample.as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        // A lost race between two updates loses one sample: fine for an average.
        let avg = self.0.load(Ordering::Relaxed);
        self.0.store(avg - avg / 16 + sample / 16, Ordering::Relaxed);
    }

    fn get(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }

    fn halve(&self) {
        let avg = self.0.load(Ordering::Relaxed);
        self.0.store(avg / 2, Ordering::Relaxed);
    }
}

/// The admitted shares and what drives them.
pub struct Degrader {
    /// Admitted share per class (core, normal, bulk), per mille.
    shares: [AtomicU32; 3],
    /// Requests of each class seen, for spreading admissions evenly.
    counts: [AtomicU64; 3],
    send_wait: Average,
    lag: Average,
    /// Sends recorded since the last check (none: the average decays).
    samples: AtomicU64,
    /// When a request of each class was last seen.
    seen: Mutex<[Option<Instant>; 3]>,
    /// When a share was last cut.
    last_cut: Mutex<Option<Instant>>,
}

impl Default for Degrader {
    fn default() -> Self {
        Degrader {
            shares: [AtomicU32::new(WHOLE), AtomicU32::new(WHOLE), AtomicU32::new(WHOLE)],
            counts: Default::default(),
            send_wait: Average::default(),
            lag: Average::default(),
            samples: AtomicU64::new(0),
            seen: Mutex::new([None; 3]),
            last_cut: Mutex::new(None),
        }
    }
}

impl Degrader {
    /// 0 (nothing shed), 1 (bulk shed) or 2 (bulk and normal shed).
    pub fn level(&self) -> u8 {
        if self.share(Class::Normal) < WHOLE {
            2
        } else if self.share(Class::Bulk) < WHOLE {
            1
        } else {
            0
        }
    }

    /// The admitted share of `class`, per mille.
    pub fn share(&self, class: Class) -> u32 {
        self.shares[class as usize].load(Ordering::Relaxed)
    }

    /// The recent average time from read to stored.
    pub fn wait_avg(&self) -> Duration {
        self.send_wait.get()
    }

    /// The recent average scheduling lag.
    pub fn lag_avg(&self) -> Duration {
        self.lag.get()
    }

    /// Records how long one send took from being read to being stored.
    pub fn record_wait(&self, waited: Duration) {
        self.send_wait.record(waited);
        self.samples.fetch_add(1, Ordering::Relaxed);
    }

    /// Records one measurement of the runtime's scheduling lag.
    pub fn record_lag(&self, lag: Duration) {
        self.lag.record(lag);
    }

    /// Whether a request of `class` is taken now (and notes that traffic of
    /// `class` exists). With a share of `s` per mille, `s` of every 1,000
    /// requests are taken, spread evenly.
    pub fn admits(&self, class: Class) -> bool {
        self.seen.lock()[class as usize] = Some(Instant::now());
        let share = u64::from(self.share(class));
        if share >= u64::from(WHOLE) {
            return true;
        }
        let n = self.counts[class as usize].fetch_add(1, Ordering::Relaxed);
        (n + 1) * share / u64::from(WHOLE) > n * share / u64::from(WHOLE)
    }

    fn set_share(&self, class: Class, share: u32) {
        self.shares[class as usize].store(share.min(WHOLE), Ordering::Relaxed);
    }

    /// One check, with `queue_depth` sends waiting for the send stage: cuts
    /// or grows the shares by at most one step. Returns the level after it.
    pub fn tick(&self, now: Instant, policy: &DegradePolicy, queue_depth: usize) -> u8 {
        if !policy.enabled {
            self.set_share(Class::Normal, WHOLE);
            self.set_share(Class::Bulk, WHOLE);
            return 0;
        }
        if self.samples.swap(0, Ordering::Relaxed) == 0 {
            // No sends since the last check: nothing is waiting; let the average fall.
            self.send_wait.halve();
        }
        let pressure = self.send_wait.get() > policy.send_wait
            || self.lag.get() > policy.scheduling_lag
            || queue_depth > policy.queue_depth;
        let before = self.level();
        let (bulk, normal) = (self.share(Class::Bulk), self.share(Class::Normal));
        let mut last_cut = self.last_cut.lock();
        if pressure {
            let may_cut = last_cut.is_none_or(|t| now.saturating_duration_since(t) >= policy.step);
            // The class a cut would shed, if there is more important traffic to protect.
            let target = if bulk > 0 {
                let protects = [Class::Core, Class::Normal].iter().any(|c| self.seen_within(*c, now, policy.recover));
                protects.then_some((Class::Bulk, bulk))
            } else {
                self.seen_within(Class::Core, now, policy.recover).then_some((Class::Normal, normal))
            };
            if let (true, Some((class, share))) = (may_cut, target) {
                let cut = if share / 2 < FLOOR { 0 } else { share / 2 };
                if share > 0 {
                    self.set_share(class, cut);
                    *last_cut = Some(now);
                }
            }
        } else {
            // Grow back linearly: whole again after `recover` without pressure.
            let checks = (policy.recover.as_micros() / policy.check_interval.as_micros().max(1)).max(1);
            let grow = (u128::from(WHOLE) / checks).max(1) as u32;
            if normal < WHOLE {
                self.set_share(Class::Normal, normal + grow);
            } else if bulk < WHOLE {
                self.set_share(Class::Bulk, bulk + grow);
            }
        }
        drop(last_cut);
        let after = self.level();
        if after > before {
            tracing::warn!(
                level = after,
                bulk_share = self.share(Class::Bulk),
                normal_share = self.share(Class::Normal),
                send_wait_us = self.send_wait.get().as_micros() as u64,
                lag_us = self.lag.get().as_micros() as u64,
                queue_depth,
                "under pressure: shedding lower-priority traffic"
            );
        } else if after < before {
            tracing::info!(level = after, "pressure passed: degradation lifted one level");
        }
        after
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
            send_wait: Duration::from_millis(1),
            scheduling_lag: Duration::from_millis(1),
            queue_depth: 100,
            step: Duration::from_millis(100),
            recover: Duration::from_millis(1000),
            check_interval: Duration::from_millis(50),
        }
    }

    /// Queue depths over and under the policy's threshold.
    const DEEP: usize = 500;
    const CALM: usize = 0;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn pressure_halves_bulk_then_normal_and_calm_grows_normal_back_first() {
        let d = Degrader::default();
        let p = policy();
        let t0 = Instant::now();
        d.saw(Class::Core, ms(t0, 5000));
        assert_eq!(d.tick(t0, &p, CALM), 0);
        assert_eq!(d.tick(ms(t0, 50), &p, DEEP), 1);
        assert_eq!(d.share(Class::Bulk), 500);
        assert_eq!(d.tick(ms(t0, 100), &p, DEEP), 1);
        assert_eq!(d.share(Class::Bulk), 500, "no second cut within `step`");
        let mut at = 150;
        while d.share(Class::Bulk) > 0 {
            d.tick(ms(t0, at), &p, DEEP);
            at += 100;
            assert!(at < 2000, "bulk never shed wholly");
        }
        assert_eq!(d.share(Class::Normal), WHOLE, "normal is kept until bulk is gone");
        assert_eq!(d.tick(ms(t0, at), &p, DEEP), 2);
        assert_eq!(d.share(Class::Normal), 500);
        assert!(!d.admits(Class::Bulk) && d.admits(Class::Core));
        // Calm: 1/20 of a whole per check (recover 1 s, checks every 50 ms), normal first.
        d.tick(ms(t0, at + 50), &p, CALM);
        assert_eq!((d.share(Class::Normal), d.share(Class::Bulk)), (550, 0));
        for i in 0..9 {
            d.tick(ms(t0, at + 100 + 50 * i), &p, CALM);
        }
        assert_eq!((d.share(Class::Normal), d.level()), (WHOLE, 1));
        for i in 0..20 {
            d.tick(ms(t0, at + 600 + 50 * i), &p, CALM);
        }
        assert_eq!((d.share(Class::Bulk), d.level()), (WHOLE, 0));
        assert!(d.admits(Class::Bulk));
    }

    #[test]
    fn a_share_admits_that_many_per_thousand_spread_evenly() {
        let d = Degrader::default();
        d.set_share(Class::Bulk, 250);
        let taken: Vec<bool> = (0..1000).map(|_| d.admits(Class::Bulk)).collect();
        assert_eq!(taken.iter().filter(|t| **t).count(), 250);
        assert!(taken.chunks(4).all(|c| c.iter().filter(|t| **t).count() == 1), "one in every four");
        d.set_share(Class::Bulk, 0);
        assert!(!(0..100).any(|_| d.admits(Class::Bulk)));
    }

    #[test]
    fn nothing_is_shed_when_there_is_nothing_more_important_to_protect() {
        let (d, p) = (Degrader::default(), policy());
        let t0 = Instant::now();
        d.saw(Class::Bulk, t0);
        assert_eq!(d.tick(ms(t0, 500), &p, DEEP), 0, "only bulk traffic: keep taking it");
        d.saw(Class::Normal, ms(t0, 500));
        for i in 0..20 {
            d.tick(ms(t0, 600 + 100 * i), &p, DEEP);
        }
        assert_eq!((d.share(Class::Bulk), d.share(Class::Normal)), (0, WHOLE), "no core traffic: normal is kept");
    }

    #[test]
    fn a_long_send_wait_or_scheduling_lag_is_pressure_and_disabled_means_never() {
        let t0 = Instant::now();
        let d = Degrader::default();
        d.saw(Class::Normal, ms(t0, 5000));
        for _ in 0..200 {
            d.record_wait(Duration::from_millis(5));
        }
        assert!(d.wait_avg() > Duration::from_millis(4), "{:?}", d.wait_avg());
        assert_eq!(d.tick(t0, &policy(), CALM), 1);
        // No sends for a while: the average falls by half each check.
        d.tick(ms(t0, 50), &policy(), CALM);
        assert!(d.wait_avg() < Duration::from_millis(3), "{:?}", d.wait_avg());

        let lagging = Degrader::default();
        lagging.saw(Class::Normal, ms(t0, 5000));
        for _ in 0..200 {
            lagging.record_lag(Duration::from_millis(3));
        }
        assert_eq!(lagging.tick(t0, &policy(), CALM), 1, "a runtime behind its ready tasks is pressure");

        let off = DegradePolicy { enabled: false, ..policy() };
        assert_eq!(d.tick(ms(t0, 2000), &off, 10_000), 0);
        assert!(d.admits(Class::Bulk));
    }
}
