//! Flushing the commit log: the durability policy as a type, and the
//! flusher thread that carries it out.
//!
//! With [`FlushPolicy::Sync`], appenders queue a [`FlushWait`] and the
//! flusher satisfies every waiter whose record is covered by one fdatasync
//! (group commit): under load one disk sync releases many sends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use crate::commit_log::CommitLog;
use crate::config::{FlushDiskType, StoreConfig};
use crate::error::{Result, StoreError};

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
            FlushDiskType::Sync => {
                FlushPolicy::Sync { timeout: c.sync_flush_timeout, max_waiters: c.sync_flush_max_waiters }
            }
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
    deadline: Instant,
    tx: oneshot::Sender<Result<()>>,
}

#[derive(Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    shutdown: bool,
}

/// Runs the flush policy on its own thread.
pub struct Flusher {
    policy: FlushPolicy,
    log: Arc<CommitLog>,
    queue: Mutex<Queue>,
    wake: Condvar,
    skip_final: std::sync::atomic::AtomicBool,
}

impl Flusher {
    /// A flusher for `log`.
    pub fn new(policy: FlushPolicy, log: Arc<CommitLog>) -> Self {
        Flusher {
            policy,
            log,
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            skip_final: Default::default(),
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> FlushPolicy {
        self.policy
    }

    /// What an appender whose record ends at `end_offset` waits on.
    pub fn wait_for(&self, end_offset: u64) -> Result<FlushWait> {
        let FlushPolicy::Sync { timeout, max_waiters } = self.policy else { return Ok(FlushWait::Ready) };
        if self.log.flushed_offset() >= end_offset {
            return Ok(FlushWait::Ready);
        }
        let (tx, rx) = oneshot::channel();
        let mut q = self.queue.lock();
        if q.shutdown {
            return Err(StoreError::ShutDown);
        }
        if q.waiters.len() >= max_waiters {
            return Err(StoreError::Busy("group-commit queue full (syncFlushMaxWaiters)"));
        }
        q.waiters.push_back(Waiter { offset: end_offset, deadline: Instant::now() + timeout, tx });
        drop(q);
        self.wake.notify_one();
        Ok(FlushWait::Pending(rx))
    }

    /// The flusher thread's loop; returns after [`Flusher::shutdown`], having
    /// flushed everything written.
    pub fn run(&self) {
        match self.policy {
            FlushPolicy::Sync { .. } => self.run_sync(),
            FlushPolicy::Async { interval, least_pages, thorough_interval } => {
                self.run_async(interval, least_pages, thorough_interval)
            }
        }
        if !self.skip_final.load(std::sync::atomic::Ordering::Acquire) {
            let outcome = self.log.commit_pending().and_then(|_| self.log.flush());
            if let Err(e) = outcome {
                tracing::error!(error = %e, "final flush failed");
            }
        }
        self.settle(Some(self.log.flushed_offset()), Instant::now(), true);
    }

    fn run_sync(&self) {
        loop {
            {
                let mut q = self.queue.lock();
                while q.waiters.is_empty() && !q.shutdown {
                    self.wake.wait(&mut q);
                }
                if q.shutdown {
                    return;
                }
            }
            // One fdatasync covers every record written so far, including
            // appends that queued while the previous sync ran.
            let flushed = match self.log.flush() {
                Ok(off) => Some(off),
                Err(e) => {
                    tracing::error!(error = %e, "sync flush failed");
                    None
                }
            };
            self.settle(flushed, Instant::now(), false);
        }
    }

    /// Answers waiters: covered ones succeed, expired ones time out, and on
    /// a flush failure (or at shutdown) the rest fail.
    fn settle(&self, flushed: Option<u64>, now: Instant, final_pass: bool) {
        let mut done = Vec::new();
        {
            let mut q = self.queue.lock();
            let mut keep = VecDeque::with_capacity(q.waiters.len());
            for w in q.waiters.drain(..) {
                let outcome = match flushed {
                    Some(off) if w.offset <= off => Some(Ok(())),
                    None => Some(Err(StoreError::NotWritable(self.log.failure().unwrap_or_default()))),
                    Some(_) if final_pass => Some(Err(StoreError::ShutDown)),
                    Some(_) if now >= w.deadline => Some(Err(StoreError::FlushTimeout {
                        timeout_ms: match self.policy {
                            FlushPolicy::Sync { timeout, .. } => timeout.as_millis() as u64,
                            FlushPolicy::Async { .. } => 0,
                        },
                    })),
                    Some(_) => None,
                };
                match outcome {
                    Some(o) => done.push((w.tx, o)),
                    None => keep.push_back(w),
                }
            }
            q.waiters = keep;
        }
        for (tx, outcome) in done {
            let _ = tx.send(outcome);
        }
    }

    fn run_async(&self, interval: Duration, least_pages: u64, thorough: Duration) {
        let mut last_thorough = Instant::now();
        loop {
            {
                let mut q = self.queue.lock();
                if !q.shutdown {
                    let _ = self.wake.wait_for(&mut q, interval);
                }
                if q.shutdown {
                    return;
                }
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
        self.skip_final.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Stops the loop after a last flush.
    pub fn shutdown(&self) {
        self.queue.lock().shutdown = true;
        self.wake.notify_all();
    }
}
