//! A wake-up for one store thread that never blocks the notifier.
//!
//! The append path notifies the dispatcher (or committer) after every
//! append. If that took a lock, a background thread preempted while holding
//! it would stall the append for a whole scheduler slice. Instead the
//! notifier sets an atomic flag and unparks the waiter only when the flag
//! was clear: one atomic swap when the waiter is already busy, a futex wake
//! when it sleeps.

use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// A level-triggered wake-up with a single waiter thread.
#[derive(Default)]
pub struct Signal {
    pending: AtomicBool,
    waiter: OnceLock<Thread>,
}

impl Signal {
    /// Wakes the waiter, or makes its next wait return at once. Lock-free.
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.waiter.get() {
                t.unpark();
            }
        }
    }

    /// Waits until notified or `timeout` passes, then clears the flag.
    /// Returns whether it was notified. Only one thread may wait on a signal.
    pub fn wait(&self, timeout: Duration) -> bool {
        let me = self.waiter.get_or_init(std::thread::current);
        debug_assert_eq!(me.id(), std::thread::current().id(), "a Signal has one waiter");
        if self.pending.swap(false, Ordering::AcqRel) {
            return true;
        }
        std::thread::park_timeout(timeout);
        self.pending.swap(false, Ordering::AcqRel)
    }
}

/// When the dispatcher is woken for new readable bytes. Waking a thread
/// per append costs a context switch per message, so by default it is not
/// woken while it naps between rounds (`dispatchBatchIntervalMillis`): it
/// finds what arrived meanwhile on its next round, as upstream's reput
/// service does every millisecond. It is woken at once when it is parked
/// (idle), and on every append while anyone waits for a dispatch
/// ([`DispatchWake::urgent`]: a held pull), so a waiting consumer is
/// answered without the interval.
#[derive(Default)]
pub struct DispatchWake {
    signal: Signal,
    /// The dispatcher is parked until woken (not napping).
    parked: AtomicBool,
    /// Waiters that need each dispatch at once.
    urgent: AtomicUsize,
}

impl DispatchWake {
    /// After bytes became readable (the readable offset already stored).
    pub fn on_readable(self: &Arc<Self>) {
        // Pairs with the fence in `park`: either the dispatcher sees the
        // new bytes before it parks, or this sees it parked.
        fence(Ordering::SeqCst);
        if self.urgent.load(Ordering::SeqCst) > 0 || self.parked.load(Ordering::SeqCst) {
            spate_common::wake::wake_or_hold(self);
        }
    }

    /// Wakes the dispatcher now, napping or parked.
    pub fn wake(&self) {
        self.signal.notify();
    }

    /// Dispatcher thread: parks until woken or `timeout`, unless `has_work`
    /// says bytes arrived while it was deciding to.
    pub fn park(&self, timeout: Duration, has_work: impl Fn() -> bool) {
        self.parked.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !has_work() {
            self.signal.wait(timeout);
        }
        self.parked.store(false, Ordering::SeqCst);
    }

    /// Dispatcher thread: sleeps `interval` between two rounds with work;
    /// an urgent wake-up ends it early.
    pub fn nap(&self, interval: Duration) {
        if !interval.is_zero() && self.urgent.load(Ordering::SeqCst) == 0 {
            self.signal.wait(interval);
        }
    }

    /// Marks one waiter that needs dispatches at once until the guard drops.
    pub fn urgent(self: &Arc<Self>) -> UrgentDispatch {
        self.urgent.fetch_add(1, Ordering::SeqCst);
        UrgentDispatch(self.clone())
    }
}

impl spate_common::wake::Wake for DispatchWake {
    fn wake_now(&self) {
        self.signal.notify();
    }
}

/// While alive, every append wakes the dispatcher at once.
pub struct UrgentDispatch(Arc<DispatchWake>);

impl Drop for UrgentDispatch {
    fn drop(&mut self) {
        self.0.urgent.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn notify_before_wait_is_not_lost_and_timeout_returns() {
        let s = Signal::default();
        s.notify();
        assert!(s.wait(Duration::from_secs(5)));
        let t = Instant::now();
        assert!(!s.wait(Duration::from_millis(20)));
        assert!(t.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn notify_wakes_a_sleeping_waiter() {
        let s = Arc::new(Signal::default());
        let s2 = s.clone();
        let waiter = std::thread::spawn(move || {
            let t = Instant::now();
            let mut woke = false;
            while !woke && t.elapsed() < Duration::from_secs(5) {
                woke = s2.wait(Duration::from_secs(5));
            }
            (woke, t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        s.notify();
        let (woke, took) = waiter.join().unwrap();
        assert!(woke && took < Duration::from_secs(4));
    }
}
