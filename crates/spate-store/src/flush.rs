//! Flushing the commit log: the durability policy as a type, and the
//! flusher thread that carries it out.
//!
//! With [`FlushPolicy::Sync`], appenders queue a [`FlushWait`] and the
//! flusher satisfies every waiter whose record is covered by one fdatasync
//! (group commit): under load one disk sync releases many sends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::oneshot;

use crate::commit_log::CommitLog;
use crate::config::{FlushDiskType, StoreConfig};
use crate::error::{Result, StoreError};
use crate::signal::Signal;

/// The store's durability promise for an acknowledged append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Acknowledged when in the page cache (survives a process crash, not a
    /// power loss); flushed every `interval` once `least_pages` are dirty, and
    /// at least every `thorough_interval`.
    Async {
        /// `flushIntervalCommitLog`.
        interval: Duration,
        /// `flushCommitLogLeastPages`.
        least_pages: u64,
        /// `flushCommitLogThoroughInterval`.
        thorough_interval: Duration,
    },
    /// Acknowledged when on disk (fdatasync returned), waiting at most
    /// `timeout` (FLUSH_DISK_TIMEOUT past it).
    Sync {
        /// `syncFlushTimeout`.
        timeout: Duration,
        /// `syncFlushMaxWaiters`: bound on the group-commit queue.
        max_waiters: usize,
        /// `syncFlushSpinMicros`: how long the idle flusher polls for the
        /// next waiter before parking.
        spin: Duration,
    },
}

impl FlushPolicy {
    /// The policy a configuration asks for.
    pub fn from_config(c: &StoreConfig) -> Self {
        match c.flush_disk_type {
            FlushDiskType::Async => FlushPolicy::Async {
                interval: c.flush_interval_commit_log,
                least_pages: c.flush_commit_log_least_pages,
                thorough_interval: c.flush_commit_log_thorough_interval,
            },
            FlushDiskType::Sync => FlushPolicy::Sync {
                timeout: c.sync_flush_timeout,
                max_waiters: c.sync_flush_max_waiters,
                spin: c.sync_flush_spin,
            },
        }
    }
}

/// Durability of an append still to come, or already settled.
#[derive(Debug)]
pub enum FlushWait {
    /// Nothing to wait for (async flush: the append is acknowledged now).
    Ready,
    /// The flusher answers when the record is on disk, or with an error.
    Pending(oneshot::Receiver<Result<()>>),
}

impl FlushWait {
    /// Waits for durability from async code.
    pub async fn wait(self) -> Result<()> {
        match self {
            FlushWait::Ready => Ok(()),
            FlushWait::Pending(rx) => rx.await.unwrap_or(Err(StoreError::ShutDown)),
        }
    }

    /// Waits for durability from a plain thread (never from an async task).
    pub fn wait_blocking(self) -> Result<()> {
        match self {
            FlushWait::Ready => Ok(()),
            FlushWait::Pending(rx) => rx.blocking_recv().unwrap_or(Err(StoreError::ShutDown)),
        }
    }
}

struct Waiter {
    offset: u64,
    /// Truncation generation when the append was made.
    generation: u64,
    deadline: Instant,
    tx: oneshot::Sender<Result<()>>,
}

/// What one settle pass knows.
struct Pass {
    /// Offset now durable, or `None` if the sync failed.
    flushed: Option<u64>,
    /// Truncation generation and last cut.
    truncation: (u64, u64),
    now: Instant,
    final_pass: bool,
}

/// The answer a waiter gets from a settle pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Wait,
    Durable,
    Truncated,
    FlushFailed,
    ShutDown,
    TimedOut,
}

impl Pass {
    /// Decides one waiter's fate (pure: the flusher's whole policy for
    /// answering appenders).
    fn verdict(&self, offset: u64, generation: u64, deadline: Instant) -> Verdict {
        let (current_generation, cut) = self.truncation;
        // A truncation since the append may have cut the record: its offset
        // then names other bytes, which must not acknowledge it.
        if generation != current_generation && offset > cut {
            return Verdict::Truncated;
        }
        match self.flushed {
            Some(off) if offset <= off => Verdict::Durable,
            None => Verdict::FlushFailed,
            Some(_) if self.final_pass => Verdict::ShutDown,
            Some(_) if self.now >= deadline => Verdict::TimedOut,
            Some(_) => Verdict::Wait,
        }
    }
}

/// Runs the flush policy on its own thread.
pub struct Flusher {
    policy: FlushPolicy,
    log: Arc<CommitLog>,
    /// Appenders waiting for a group commit. Lock-free and bounded, so an
    /// appender never waits on a lock the flusher holds.
    waiters: ArrayQueue<Waiter>,
    wake: Signal,
    stop: AtomicBool,
    skip_final: AtomicBool,
}

impl Flusher {
    /// A flusher for `log`.
    pub fn new(policy: FlushPolicy, log: Arc<CommitLog>) -> Self {
        let capacity = match policy {
            FlushPolicy::Sync { max_waiters, .. } => max_waiters.max(1),
            FlushPolicy::Async { .. } => 1,
        };
        Flusher {
            policy,
            log,
            waiters: ArrayQueue::new(capacity),
            wake: Signal::default(),
            stop: AtomicBool::new(false),
            skip_final: AtomicBool::new(false),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> FlushPolicy {
        self.policy
    }

    /// What an appender whose record ends at `end_offset` waits on.
    pub fn wait_for(&self, end_offset: u64) -> Result<FlushWait> {
        let FlushPolicy::Sync { timeout, .. } = self.policy else { return Ok(FlushWait::Ready) };
        if self.log.flushed_offset() >= end_offset {
            return Ok(FlushWait::Ready);
        }
        if self.stop.load(Ordering::Acquire) {
            return Err(StoreError::ShutDown);
        }
        let (tx, rx) = oneshot::channel();
        let generation = self.log.truncation().0;
        let waiter = Waiter { offset: end_offset, generation, deadline: Instant::now() + timeout, tx };
        if self.waiters.push(waiter).is_err() {
            return Err(StoreError::Busy("group-commit queue full (syncFlushMaxWaiters)"));
        }
        self.wake.notify();
        if self.stop.load(Ordering::Acquire) {
            // The flusher may have drained for the last time already.
            return Err(StoreError::ShutDown);
        }
        Ok(FlushWait::Pending(rx))
    }

    /// The flusher thread's loop; returns after [`Flusher::shutdown`], having
    /// flushed everything written (unless told to skip that).
    pub fn run(&self) {
        let mut pending = VecDeque::new();
        match self.policy {
            FlushPolicy::Sync { timeout, spin, .. } => self.run_sync(&mut pending, timeout, spin),
            FlushPolicy::Async { interval, least_pages, thorough_interval } => {
                self.run_async(interval, least_pages, thorough_interval)
            }
        }
        if !self.skip_final.load(Ordering::Acquire) {
            let outcome = self.log.commit_pending().and_then(|_| self.log.flush());
            if let Err(e) = outcome {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        self.drain(&mut pending);
        self.settle(&mut pending, Some(self.log.flushed_offset()), true, Duration::ZERO);
    }

    fn drain(&self, pending: &mut VecDeque<Waiter>) {
        while let Some(w) = self.waiters.pop() {
            pending.push_back(w);
        }
    }

    fn run_sync(&self, pending: &mut VecDeque<Waiter>, timeout: Duration, spin: Duration) {
        while !self.stop.load(Ordering::Acquire) {
            self.drain(pending);
            if pending.is_empty() {
                // Spin a little before parking: a closed-loop appender comes
                // back within microseconds of its ack, and waking a parked
                // thread on another (virtual) CPU costs tens of them.
                let spin_until = Instant::now() + spin;
                while self.waiters.is_empty() && Instant::now() < spin_until {
                    std::hint::spin_loop();
                }
                if self.waiters.is_empty() {
                    self.wake.wait(Duration::from_millis(100));
                }
                continue;
            }
            // One sync covers every record written so far, including those
            // of appenders that queued while the previous sync ran.
            let flushed = match self.log.flush() {
                Ok(off) => Some(off),
                Err(e) => {
                    tracing::error!(error = %e, "sync flush failed");
                    None
                }
            };
            self.drain(pending);
            self.settle(pending, flushed, false, timeout);
        }
    }

    /// Answers waiters: covered ones succeed, expired ones time out, and on
    /// a flush failure (or at shutdown) the rest fail.
    fn settle(&self, pending: &mut VecDeque<Waiter>, flushed: Option<u64>, final_pass: bool, timeout: Duration) {
        let pass = Pass { flushed, truncation: self.log.truncation(), now: Instant::now(), final_pass };
        for w in std::mem::take(pending) {
            let outcome = match pass.verdict(w.offset, w.generation, w.deadline) {
                Verdict::Wait => {
                    pending.push_back(w);
                    continue;
                }
                Verdict::Durable => Ok(()),
                Verdict::Truncated => {
                    Err(StoreError::BadOffset { offset: w.offset, reason: "cut by a truncation before it was flushed" })
                }
                Verdict::FlushFailed => Err(StoreError::NotWritable(self.log.failure().unwrap_or_default())),
                Verdict::ShutDown => Err(StoreError::ShutDown),
                Verdict::TimedOut => Err(StoreError::FlushTimeout { timeout_ms: timeout.as_millis() as u64 }),
            };
            let _ = w.tx.send(outcome);
        }
    }

    fn run_async(&self, interval: Duration, least_pages: u64, thorough: Duration) {
        let mut last_thorough = Instant::now();
        while !self.stop.load(Ordering::Acquire) {
            self.wake.wait(interval);
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            let dirty = self.log.readable_offset().saturating_sub(self.log.flushed_offset());
            let due = last_thorough.elapsed() >= thorough;
            if dirty == 0 || (dirty < least_pages * crate::segment::PAGE_SIZE && !due) {
                continue;
            }
            if due {
                last_thorough = Instant::now();
            }
            if let Err(e) = self.log.flush() {
                tracing::error!(error = %e, "async flush failed");
            }
        }
    }

    /// Makes the loop exit without its last flush (simulated crashes).
    pub fn skip_final_flush(&self) {
        self.skip_final.store(true, Ordering::Release);
    }

    /// Stops the loop after a last flush.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_cover_every_case() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let earlier = now - Duration::from_millis(1);
        let pass = |flushed, truncation, final_pass| Pass { flushed, truncation, now, final_pass };
        let ok = pass(Some(1000), (0, u64::MAX), false);
        assert_eq!(ok.verdict(1000, 0, later), Verdict::Durable, "covered by the sync");
        assert_eq!(ok.verdict(1001, 0, later), Verdict::Wait, "not yet covered, time left");
        assert_eq!(ok.verdict(1001, 0, earlier), Verdict::TimedOut, "past syncFlushTimeout");
        assert_eq!(pass(None, (0, u64::MAX), false).verdict(10, 0, later), Verdict::FlushFailed);
        assert_eq!(pass(Some(5), (0, u64::MAX), true).verdict(10, 0, later), Verdict::ShutDown);
        // A cut at 600 after the append (generation 0 -> 2).
        let cut = pass(Some(1000), (2, 600), false);
        assert_eq!(cut.verdict(900, 0, later), Verdict::Truncated, "bytes past the cut are not its record");
        assert_eq!(cut.verdict(600, 0, later), Verdict::Durable, "a record ending at the cut survived it");
        assert_eq!(cut.verdict(900, 2, later), Verdict::Durable, "appended after the cut");
    }
}
