//! A wake-up flag for store threads: one side notifies, the other waits
//! with a timeout. Notifying a thread that is busy costs one uncontended
//! lock; the flag makes sure a notify between two waits is not lost.

use std::time::Duration;

use parking_lot::{Condvar, Mutex};

/// A level-triggered wake-up.
#[derive(Default)]
pub struct Signal {
    set: Mutex<bool>,
    cond: Condvar,
}

impl Signal {
    /// Wakes the waiter (or makes its next wait return at once).
    pub fn notify(&self) {
        let mut set = self.set.lock();
        if !*set {
            *set = true;
            self.cond.notify_one();
        }
    }

    /// Waits until notified or `timeout` passes; clears the flag. Returns
    /// whether it was notified.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut set = self.set.lock();
        if !*set {
            let _ = self.cond.wait_for(&mut set, timeout);
        }
        std::mem::replace(&mut *set, false)
    }
}
