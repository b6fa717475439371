//! A mutex with priority inheritance (`PTHREAD_PRIO_INHERIT`), for the
//! commit log's writer lock.
//!
//! The broker's core lane runs at real-time priority and appends under the
//! same lock as ordinary threads. With a plain mutex, a core append that
//! finds the lock held by an ordinary thread it has just preempted waits
//! until the scheduler gets round to that thread again, behind every other
//! ordinary thread on the CPU: milliseconds under load (BENCHMARKS.md,
//! issue 7). With priority inheritance the kernel runs the holder at the
//! waiter's priority until it unlocks, so the wait is the memory copy the
//! holder was in the middle of.
//!
//! Uncontended locking stays in user space (glibc's PI mutexes take the
//! lock with one compare-and-swap); only a contended lock enters the
//! kernel. There is no spinning, which a real-time waiter must not do.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};

/// A mutex whose holder inherits the priority of its highest waiter.
pub struct PiMutex<T> {
    // Boxed: a pthread mutex must not move once initialised.
    raw: Box<UnsafeCell<libc::pthread_mutex_t>>,
    data: UnsafeCell<T>,
}

// SAFETY: access to `data` is serialised by the pthread mutex, as for
// std's Mutex; the raw mutex itself is made to be shared between threads.
unsafe impl<T: Send> Send for PiMutex<T> {}
// SAFETY: as above: `&PiMutex` only hands out `data` under the lock.
unsafe impl<T: Send> Sync for PiMutex<T> {}

impl<T> PiMutex<T> {
    pub fn new(value: T) -> PiMutex<T> {
        let raw = Box::new(UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER));
        // SAFETY: `attr` is initialised before use and destroyed after;
        // `raw` is a valid, boxed (so never moving) mutex to initialise.
        // These calls fail only on invalid arguments or when the system
        // lacks PI futexes, and then the mutex stays the statically
        // initialised ordinary one: correct, only without inheritance.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            if libc::pthread_mutexattr_init(&mut attr) == 0 {
                if libc::pthread_mutexattr_setprotocol(&mut attr, libc::PTHREAD_PRIO_INHERIT) == 0 {
                    libc::pthread_mutex_init(raw.get(), &attr);
                }
                libc::pthread_mutexattr_destroy(&mut attr);
            }
        }
        PiMutex { raw, data: UnsafeCell::new(value) }
    }

    /// Waits for the lock.
    pub fn lock(&self) -> PiGuard<'_, T> {
        // SAFETY: `raw` is an initialised mutex that outlives the guard.
        let rc = unsafe { libc::pthread_mutex_lock(self.raw.get()) };
        // A default-type mutex reports errors only for misuse (relocking
        // from the owning thread deadlocks instead); nothing outside this
        // process can cause one.
        assert_eq!(rc, 0, "pthread_mutex_lock failed: {}", std::io::Error::from_raw_os_error(rc));
        PiGuard { mutex: self }
    }
}

impl<T> Drop for PiMutex<T> {
    fn drop(&mut self) {
        // SAFETY: no guard can outlive the mutex, so it is unlocked here.
        unsafe {
            libc::pthread_mutex_destroy(self.raw.get());
        }
    }
}

/// The lock, held until this drops.
pub struct PiGuard<'a, T> {
    mutex: &'a PiMutex<T>,
}

impl<T> Deref for PiGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock.
        unsafe { &*self.mutex.data.get() }
    }
}

impl<T> DerefMut for PiGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock, and `&mut self` makes this the
        // only reference through it.
        unsafe { &mut *self.mutex.data.get() }
    }
}

impl<T> Drop for PiGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: this thread holds the lock (taken in `lock`).
        unsafe {
            libc::pthread_mutex_unlock(self.mutex.raw.get());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// The kernel's `prio` field of a thread of this process (stat field
    /// 18: 20 for an ordinary thread at nice 0, -1 - p at SCHED_FIFO p).
    fn prio_of(tid: i32) -> Option<i64> {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..].split_whitespace().nth(18 - 3)?.parse().ok()
    }

    #[test]
    fn a_real_time_waiter_lends_its_priority_to_the_holder() {
        let m = Arc::new(PiMutex::new(()));
        // SAFETY: gettid has no preconditions.
        let holder = unsafe { libc::gettid() };
        let before = prio_of(holder).unwrap();
        let guard = m.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let m2 = m.clone();
        let waiter = std::thread::spawn(move || {
            let param = libc::sched_param { sched_priority: 10 };
            // SAFETY: changes only this thread's policy.
            let realtime = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } == 0;
            let _ = tx.send(realtime);
            if realtime {
                drop(m2.lock());
            }
        });
        if !rx.recv().unwrap() {
            drop(guard);
            waiter.join().unwrap();
            eprintln!("SCHED_FIFO not permitted here (needs CAP_SYS_NICE): inheritance not checked");
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut boosted = prio_of(holder).unwrap();
        while boosted != -11 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            boosted = prio_of(holder).unwrap();
        }
        assert_eq!(boosted, -11, "the holder runs at the waiter's SCHED_FIFO 10 while it waits (was {before})");
        drop(guard);
        waiter.join().unwrap();
        assert_eq!(prio_of(holder).unwrap(), before, "and gets its own priority back on unlock");
    }

    #[test]
    fn the_mutex_serialises_its_holders() {
        let m = Arc::new(PiMutex::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        let mut g = m.lock();
                        // A read-modify-write that would lose updates
                        // without mutual exclusion.
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*m.lock(), 40_000);
    }
}
