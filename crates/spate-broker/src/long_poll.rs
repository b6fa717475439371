//! Long polling: a pull that finds nothing waits on its queue's watch
//! channel, which the store's dispatcher bumps right after it indexes new
//! messages. No periodic scan: a waiting pull wakes within the dispatch delay.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::sync::watch;

/// Per-queue "max offset changed" signals, and the cap on waiting pulls.
pub struct LongPoll {
    queues: RwLock<HashMap<String, HashMap<i32, watch::Sender<i64>>>>,
    held: AtomicUsize,
    max_held: usize,
    /// Set at shutdown: waiting pulls answer at once.
    closing: tokio_util_free::Closing,
}

/// A one-shot "we are closing" flag waiters can await.
mod tokio_util_free {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::sync::Notify;

    #[derive(Default)]
    pub struct Closing {
        set: AtomicBool,
        notify: Notify,
    }

    impl Closing {
        pub fn close(&self) {
            self.set.store(true, Ordering::Release);
            self.notify.notify_waiters();
        }
        pub fn is_closed(&self) -> bool {
            self.set.load(Ordering::Acquire)
        }
        pub async fn closed(&self) {
            let notified = self.notify.notified();
            if self.is_closed() {
                return;
            }
            notified.await
        }
    }
}

/// Releases a waiting slot when dropped.
pub struct HeldSlot(Arc<LongPoll>);

impl Drop for HeldSlot {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LongPoll {
    pub fn new(max_held: usize) -> Arc<LongPoll> {
        Arc::new(LongPoll {
            queues: RwLock::new(HashMap::new()),
            held: AtomicUsize::new(0),
            max_held,
            closing: Default::default(),
        })
    }

    /// Called by the dispatcher (a plain thread) when a queue grew.
    pub fn notify(&self, topic: &str, queue_id: i32, max_offset: i64) {
        if let Some(tx) = self.queues.read().get(topic).and_then(|q| q.get(&queue_id)) {
            tx.send_replace(max_offset);
        }
    }

    /// Takes a waiting slot, or `None` when `maxHeldPulls` pulls already wait.
    pub fn hold(self: &Arc<Self>) -> Option<HeldSlot> {
        if self.closing.is_closed() {
            return None;
        }
        let prev = self.held.fetch_add(1, Ordering::AcqRel);
        if prev >= self.max_held {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(HeldSlot(self.clone()))
    }

    pub fn held_count(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// A receiver for the queue; subscribe *before* reading the store so a
    /// message dispatched in between is not missed.
    pub fn subscribe(&self, topic: &str, queue_id: i32) -> watch::Receiver<i64> {
        if let Some(tx) = self.queues.read().get(topic).and_then(|q| q.get(&queue_id)) {
            return tx.subscribe();
        }
        let mut queues = self.queues.write();
        let tx = queues.entry(topic.to_string()).or_default().entry(queue_id).or_insert_with(|| watch::channel(-1).0);
        tx.subscribe()
    }

    /// Waits until the queue's signal changes, `timeout` passes or the
    /// broker starts closing; true only if the queue changed.
    pub async fn wait(&self, rx: &mut watch::Receiver<i64>, timeout: Duration) -> bool {
        tokio::select! {
            r = tokio::time::timeout(timeout, rx.changed()) => matches!(r, Ok(Ok(()))),
            _ = self.closing.closed() => false,
        }
    }

    /// Shutdown: every waiting pull answers now and no new one waits.
    pub fn close(&self) {
        self.closing.close();
    }

    /// Drops the channel of a deleted topic (waiting pulls then time out).
    pub fn forget_topic(&self, topic: &str) {
        self.queues.write().remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_notify_after_subscribe_wakes_the_waiter() {
        let lp = LongPoll::new(2);
        let mut rx = lp.subscribe("T", 1);
        let lp2 = lp.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            lp2.notify("T", 1, 5);
        });
        assert!(lp.wait(&mut rx, Duration::from_secs(5)).await);
        assert_eq!(*rx.borrow(), 5);
        let mut other = lp.subscribe("T", 2);
        assert!(!lp.wait(&mut other, Duration::from_millis(20)).await);
        let lp3 = lp.clone();
        let waiter = tokio::spawn(async move {
            let mut rx = lp3.subscribe("T", 3);
            let t = std::time::Instant::now();
            lp3.wait(&mut rx, Duration::from_secs(30)).await;
            t.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        lp.close();
        assert!(waiter.await.unwrap() < Duration::from_secs(5), "close wakes waiters");
        assert!(lp.hold().is_none(), "nothing waits after close");
    }

    #[test]
    fn held_pulls_are_capped() {
        let lp = LongPoll::new(2);
        let a = lp.hold().unwrap();
        let _b = lp.hold().unwrap();
        assert!(lp.hold().is_none());
        drop(a);
        assert!(lp.hold().is_some());
    }
}
