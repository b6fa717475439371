//! Fast-fail back-pressure (upstream's broker-busy behaviour): a bounded
//! queue in front of the stage that stores sends (or reads pulls). A
//! request is answered SYSTEM_BUSY at once, never left to time out, when
//! - the queue already holds its capacity (`sendThreadPoolQueueCapacity`,
//!   `pullThreadPoolQueueCapacity`),
//! - it has waited, since it was read off its connection, longer than
//!   `waitTimeMillsInSendQueue` / `waitTimeMillsInPullQueue`,
//! - or (sends) the store's append has been stuck longer than
//!   `osPageCacheBusyTimeOutMills`.
//!
//! Only the stage itself is gated (`sendMessageThreadPoolNums` /
//! `pullMessageThreadPoolNums` at once); waiting for a flush or for
//! replication happens outside it.
//!
//! Requests of class `core` have as many slots again of their own, with
//! the same limits: they never queue behind other classes' requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Busy {
    /// The queue was full.
    QueueFull,
    /// It waited longer than the queue's limit.
    Waited,
    /// The store's append is stalled (page cache busy).
    PageCacheBusy,
}

impl Busy {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Busy::QueueFull => "queue_full",
            Busy::Waited => "waited_too_long",
            Busy::PageCacheBusy => "page_cache_busy",
        }
    }

    /// The response remark (upstream's bracketed tags, so operators'
    /// alerts on them carry over).
    pub fn remark(self, waited: Duration, queued: usize) -> String {
        let tag = match self {
            Busy::QueueFull => "[REJECTREQUEST]system busy",
            Busy::Waited => "[TIMEOUT_CLEAN_QUEUE]broker busy",
            Busy::PageCacheBusy => "[PCBUSY_CLEAN_QUEUE]broker busy",
        };
        format!(
            "{tag}, start flow control for a while, period in queue: {}ms, size of queue: {queued}",
            waited.as_millis()
        )
    }
}

/// One stage's bounded queue.
pub struct Gate {
    slots: Arc<Semaphore>,
    core_slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Gate {
    /// A stage taking `concurrency` requests at once.
    pub fn new(concurrency: usize) -> Gate {
        Gate {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            core_slots: Arc::new(Semaphore::new(concurrency.max(1))),
            waiting: AtomicUsize::new(0),
        }
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Enters the stage, or says why not; `received` is when the request
    /// was read off its connection, `core` whether it is of class core.
    pub async fn enter(
        &self,
        received: Instant,
        max_wait: Duration,
        capacity: usize,
        core: bool,
    ) -> Result<OwnedSemaphorePermit, (Busy, Duration, usize)> {
        let slots = if core { &self.core_slots } else { &self.slots };
        if let Ok(p) = slots.clone().try_acquire_owned() {
            if received.elapsed() <= max_wait {
                return Ok(p);
            }
            return Err((Busy::Waited, received.elapsed(), self.queued()));
        }
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let outcome = if queued >= capacity {
            Err((Busy::QueueFull, received.elapsed(), queued))
        } else {
            let left = max_wait.saturating_sub(received.elapsed());
            match tokio::time::timeout(left, slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => Ok(p),
                _ => Err((Busy::Waited, received.elapsed(), queued)),
            }
        };
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_and_a_long_wait_are_turned_away_at_once() {
        let g = Arc::new(Gate::new(1));
        let held = g.enter(Instant::now(), Duration::from_millis(100), 10, false).await.unwrap();
        // The stage is busy: a request waits at most its limit, then is refused.
        let started = Instant::now();
        let (why, _, _) = g.enter(Instant::now(), Duration::from_millis(50), 10, false).await.unwrap_err();
        assert_eq!(why, Busy::Waited);
        assert!(started.elapsed() < Duration::from_millis(200));
        // A request that already waited its limit before arriving is refused without waiting.
        let old = Instant::now() - Duration::from_millis(500);
        assert_eq!(g.enter(old, Duration::from_millis(200), 10, false).await.unwrap_err().0, Busy::Waited);
        // With no room in the queue, refused at once.
        assert_eq!(g.enter(Instant::now(), Duration::from_secs(5), 0, false).await.unwrap_err().0, Busy::QueueFull);
        drop(held);
        assert!(g.enter(Instant::now(), Duration::from_millis(100), 10, false).await.is_ok());
        assert!(Busy::Waited.remark(Duration::from_millis(250), 3).starts_with("[TIMEOUT_CLEAN_QUEUE]broker busy"));
    }

    #[tokio::test]
    async fn core_requests_do_not_queue_behind_others() {
        let g = Arc::new(Gate::new(1));
        let held = g.enter(Instant::now(), Duration::from_secs(5), 10, false).await.unwrap();
        // Another class's request waits behind the held slot...
        let g2 = g.clone();
        let waiting = tokio::spawn(async move { g2.enter(Instant::now(), Duration::from_secs(5), 10, false).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(g.queued(), 1);
        // ...while a core one enters at once, and the next core one waits
        // only for core's own slot.
        let core =
            tokio::time::timeout(Duration::from_millis(50), g.enter(Instant::now(), Duration::from_secs(5), 10, true))
                .await
                .expect("core enters without waiting")
                .unwrap();
        let (why, _, _) = g.enter(Instant::now(), Duration::from_millis(20), 10, true).await.unwrap_err();
        assert_eq!(why, Busy::Waited);
        drop(core);
        drop(held);
        assert!(waiting.await.unwrap().is_ok());
    }
}
