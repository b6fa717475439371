//! A wake-up for one store thread that never blocks the notifier.
//!
//! The append path notifies the dispatcher (or committer) after every
//! append. If that took a lock, a background thread preempted while holding
//! it would stall the append for a whole scheduler slice. Instead the
//! notifier sets an atomic flag and unparks the waiter only when the flag
//! was clear: one atomic swap when the waiter is already busy, a futex wake
//! when it sleeps.

use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use parking_lot::Mutex;

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
///
/// Rounds taken while nobody waits run at a lower priority, so one that
/// meets a request on a shared CPU yields to it; while anyone waits they
/// run at the normal priority, so the waiting pull is not kept behind
/// other work.
#[derive(Default)]
pub struct DispatchWake {
    signal: Signal,
    /// The dispatcher is parked until woken (not napping).
    parked: AtomicBool,
    /// Waiters that need each dispatch at once.
    urgent: AtomicUsize,
    /// The dispatcher thread's id (0 before it started), and the lock that
    /// orders changes of its priority.
    dispatcher_tid: AtomicI32,
    priority: Mutex<()>,
    /// Whether this process may raise the dispatcher back to nice 0 once it
    /// lowered it (root, or `RLIMIT_NICE` allowing it); if not, it stays at
    /// the normal priority throughout.
    may_switch: AtomicBool,
    /// Dispatches on the calling thread; true when nothing is left for the
    /// dispatcher thread (see [`DispatchWake::set_inline`]).
    inline: OnceLock<InlineDispatch>,
}

/// A dispatch run by the thread that appended, after its answer is sent.
pub type InlineDispatch = Box<dyn Fn() -> bool + Send + Sync>;

/// Nice value of the dispatcher while nobody waits for a dispatch.
const BATCH_NICE: libc::c_int = 5;

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

    /// Installs the inline dispatch: while a pull waits, an append made
    /// inside a `hold_wakeups` scope (a request served to completion on a
    /// runtime worker) is dispatched by that worker once its answer is
    /// written, instead of waking the dispatcher thread. With client and
    /// broker each on one CPU, the woken dispatcher took the worker's CPU
    /// for every message: two context switches per message.
    pub fn set_inline(&self, dispatch: InlineDispatch) {
        let _ = self.inline.set(dispatch);
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
        if self.urgent.fetch_add(1, Ordering::SeqCst) == 0 {
            self.set_priority();
        }
        UrgentDispatch(self.clone())
    }

    /// Dispatcher thread, once: records its id and takes the priority the
    /// current waiters call for.
    pub fn register_dispatcher(&self) {
        // SAFETY: gettid and geteuid take nothing; getrlimit writes only
        // the struct it is given.
        let (tid, root, nice_limit) = unsafe {
            let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            let ok = libc::getrlimit(libc::RLIMIT_NICE, &mut lim) == 0;
            (libc::gettid(), libc::geteuid() == 0, if ok { lim.rlim_cur } else { 0 })
        };
        // RLIMIT_NICE n lets a thread go down to nice 20 - n.
        self.may_switch.store(root || nice_limit >= 20, Ordering::SeqCst);
        self.dispatcher_tid.store(tid, Ordering::SeqCst);
        self.set_priority();
    }

    /// Sets the dispatcher's nice value from the waiter count as it is now
    /// (under the lock, so racing changes end in the count's value).
    fn set_priority(&self) {
        let _order = self.priority.lock();
        let tid = self.dispatcher_tid.load(Ordering::SeqCst);
        if tid == 0 || !self.may_switch.load(Ordering::SeqCst) {
            return;
        }
        let nice = if self.urgent.load(Ordering::SeqCst) > 0 { 0 } else { BATCH_NICE };
        // SAFETY: setpriority takes plain integers and touches no memory.
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) } != 0 {
            tracing::debug!(nice, error = %std::io::Error::last_os_error(), "could not set the dispatcher's priority");
        }
    }
}

impl spate_common::wake::Wake for DispatchWake {
    fn wake_now(&self) {
        self.signal.notify();
    }

    fn wake_after_scope(&self) {
        // Not while the scope unwinds a panic: a second one would abort.
        let done_here = !std::thread::panicking()
            && self.urgent.load(Ordering::SeqCst) > 0
            && self.inline.get().is_some_and(|dispatch| dispatch());
        if !done_here {
            self.signal.notify();
        }
    }
}

/// While alive, every append wakes the dispatcher at once.
pub struct UrgentDispatch(Arc<DispatchWake>);

impl Drop for UrgentDispatch {
    fn drop(&mut self) {
        if self.0.urgent.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.set_priority();
        }
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
