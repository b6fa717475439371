//! A wake-up for one store thread that never blocks the notifier.
//!
//! The append path notifies the dispatcher (or committer) after every
//! append. If that took a lock, a background thread preempted while holding
//! it would stall the append for a whole scheduler slice. Instead the
//! notifier sets an atomic flag and unparks the waiter only when the flag
//! was clear: one atomic swap when the waiter is already busy, a futex wake
//! when it sleeps.

use std::sync::atomic::{AtomicBool, Ordering};
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

    /// [`Signal::notify`], held back while this thread is inside
    /// `spate_common::wake::hold_wakeups` (a request being answered).
    pub fn notify_or_hold(self: &Arc<Self>) {
        spate_common::wake::wake_or_hold(self);
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

impl spate_common::wake::Wake for Signal {
    fn wake_now(&self) {
        self.notify();
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
