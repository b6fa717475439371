//! The messages pulled for one queue and not yet consumed (upstream
//! `ProcessQueue`): the offset to commit, flow control, and the orderly
//! consumer's in-progress set. The bookkeeping is pure; [`QueueSlot`] adds
//! the flags and signals the running tasks share.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use parking_lot::Mutex;
use spate_remoting::protocol::MessageQueue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::message::MessageExt;

/// Limits that pause pulling for a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlowLimits {
    /// `pullThresholdForQueue`: cached messages.
    pub messages_max: usize,
    /// `pullThresholdSizeForQueue` in bytes: cached body bytes.
    pub bytes_max: usize,
    /// `consumeConcurrentlyMaxSpan`: offset distance between the oldest and
    /// newest cached message (concurrent consumption only).
    pub span_max: Option<i64>,
}

/// What the pull loop should do about flow control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlowDecision {
    /// Pull now.
    Pull,
    /// Too many cached messages: pull later.
    DelayCount,
    /// Too many cached bytes: pull later.
    DelaySize,
    /// Cached offsets span too wide (a slow message holds the commit back): pull later.
    DelaySpan,
}

/// Pulled, not yet consumed messages of one queue, by queue offset.
#[derive(Debug, Default)]
pub(crate) struct ProcessQueue {
    waiting: BTreeMap<i64, MessageExt>,
    // Taken by the orderly consumer, not yet committed.
    consuming: BTreeMap<i64, MessageExt>,
    bytes: usize,
    offset_max: i64,
}

impl ProcessQueue {
    /// Adds pulled messages (a message already cached is ignored); returns how many were new.
    pub fn put(&mut self, msgs: impl IntoIterator<Item = MessageExt>) -> usize {
        let mut added = 0;
        for m in msgs {
            let off = m.queue_offset;
            if self.waiting.contains_key(&off) || self.consuming.contains_key(&off) {
                continue;
            }
            self.bytes += m.body.len();
            self.offset_max = self.offset_max.max(off);
            self.waiting.insert(off, m);
            added += 1;
        }
        added
    }

    /// Removes consumed messages; returns the offset to commit: the lowest
    /// offset still cached, or one past the highest ever cached when none is.
    /// `None` when nothing was cached (nothing to commit).
    pub fn remove(&mut self, offsets: &[i64]) -> Option<i64> {
        if self.waiting.is_empty() {
            return None;
        }
        for off in offsets {
            if let Some(m) = self.waiting.remove(off) {
                self.bytes -= m.body.len();
            }
        }
        let commit = self.waiting.keys().next().copied().unwrap_or(self.offset_max + 1);
        debug_assert!(commit <= self.offset_max + 1);
        Some(commit)
    }

    /// Cached messages, the orderly consumer's in-progress ones included.
    pub fn count(&self) -> usize {
        self.waiting.len() + self.consuming.len()
    }

    /// Cached body bytes.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Distance between the lowest and highest cached offsets.
    pub fn span(&self) -> i64 {
        match (self.waiting.keys().next(), self.waiting.keys().next_back()) {
            (Some(a), Some(b)) => b - a,
            _ => 0,
        }
    }

    /// Whether pulling should wait.
    pub fn flow_control(&self, limits: &FlowLimits) -> FlowDecision {
        if self.count() > limits.messages_max {
            FlowDecision::DelayCount
        } else if self.bytes > limits.bytes_max {
            FlowDecision::DelaySize
        } else if limits.span_max.is_some_and(|max| self.span() > max) {
            FlowDecision::DelaySpan
        } else {
            FlowDecision::Pull
        }
    }

    /// Orderly: takes up to `n` of the oldest waiting messages for consumption.
    pub fn take(&mut self, n: usize) -> Vec<MessageExt> {
        let mut out = Vec::with_capacity(n.min(self.waiting.len()));
        while out.len() < n {
            let Some((off, m)) = self.waiting.pop_first() else { break };
            self.consuming.insert(off, m.clone());
            out.push(m);
        }
        out
    }

    /// Orderly: the taken messages are consumed; returns the offset to commit
    /// (one past the highest taken), `None` when nothing was taken.
    pub fn commit(&mut self) -> Option<i64> {
        let last = self.consuming.keys().next_back().copied()?;
        for m in self.consuming.values() {
            self.bytes -= m.body.len();
        }
        self.consuming.clear();
        Some(last + 1)
    }

    /// Orderly: the taken messages go back to be consumed again, first in line.
    pub fn make_again(&mut self) {
        let taken = std::mem::take(&mut self.consuming);
        for (off, mut m) in taken {
            m.reconsume_times += 1;
            self.waiting.insert(off, m);
        }
    }

    /// Forgets everything (seek, offset moved).
    pub fn clear(&mut self) {
        self.waiting.clear();
        self.consuming.clear();
        self.bytes = 0;
        // The old high mark must not become a commit past the new position.
        self.offset_max = -1;
    }
}

/// One assigned queue as the running tasks share it.
#[derive(Debug)]
pub(crate) struct QueueSlot {
    pub mq: MessageQueue,
    pub pq: Mutex<ProcessQueue>,
    dropped: AtomicBool,
    locked: AtomicBool,
    last_lock_ms: AtomicI64,
    /// Held while an orderly listener runs, so an unlock waits for it.
    pub consume_lock: tokio::sync::Mutex<()>,
    /// Signalled when messages arrive (orderly consumer waits on it).
    pub arrived: Notify,
    /// Cancelled when the queue is dropped.
    pub cancel: CancellationToken,
}

impl QueueSlot {
    pub fn new(mq: MessageQueue) -> Self {
        QueueSlot {
            mq,
            pq: Mutex::new(ProcessQueue::default()),
            dropped: AtomicBool::new(false),
            locked: AtomicBool::new(false),
            last_lock_ms: AtomicI64::new(0),
            consume_lock: tokio::sync::Mutex::new(()),
            arrived: Notify::new(),
            cancel: CancellationToken::new(),
        }
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::Acquire)
    }

    pub fn drop_queue(&self) {
        self.dropped.store(true, Ordering::Release);
        self.cancel.cancel();
        self.arrived.notify_one();
    }

    pub fn set_locked(&self, locked: bool, now_ms: i64) {
        self.locked.store(locked, Ordering::Release);
        if locked {
            self.last_lock_ms.store(now_ms, Ordering::Release);
        }
    }

    /// Locked on the broker, and the lock renewed within `max_live_ms`.
    pub fn holds_lock(&self, now_ms: i64, max_live_ms: i64) -> bool {
        self.locked.load(Ordering::Acquire) && now_ms - self.last_lock_ms.load(Ordering::Acquire) <= max_live_ms
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::Bytes;

    pub(crate) fn msg(offset: i64, body_len: usize) -> MessageExt {
        let host = "127.0.0.1:1".parse().unwrap();
        MessageExt {
            topic: "T".into(),
            body: Bytes::from(vec![0u8; body_len]),
            flag: 0,
            properties: Default::default(),
            msg_id: format!("id{offset}"),
            offset_msg_id: String::new(),
            broker_name: "b".into(),
            queue_id: 0,
            queue_offset: offset,
            commit_log_offset: offset * 100,
            store_size: 0,
            body_crc: 0,
            sys_flag: 0,
            born_timestamp: 0,
            born_host: host,
            store_timestamp: 0,
            store_host: host,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }

    #[test]
    fn commit_offset_is_lowest_unconsumed_or_next() {
        let mut pq = ProcessQueue::default();
        assert_eq!(pq.remove(&[1]), None, "nothing cached, nothing to commit");
        assert_eq!(pq.put((10..15).map(|o| msg(o, 10))), 5);
        assert_eq!(pq.put([msg(12, 10)]), 0, "duplicate ignored");
        // Out-of-order completion: 11 and 13 done, 10 still running.
        assert_eq!(pq.remove(&[11, 13]), Some(10));
        assert_eq!(pq.remove(&[10]), Some(12));
        assert_eq!(pq.remove(&[12, 14]), Some(15), "empty: one past the highest");
        assert_eq!((pq.count(), pq.bytes()), (0, 0));
    }

    #[test]
    fn flow_control_by_count_size_and_span() {
        let limits = FlowLimits { messages_max: 3, bytes_max: 100, span_max: Some(50) };
        let mut pq = ProcessQueue::default();
        pq.put([msg(0, 10), msg(1, 10), msg(2, 10)]);
        assert_eq!(pq.flow_control(&limits), FlowDecision::Pull);
        pq.put([msg(3, 10)]);
        assert_eq!(pq.flow_control(&limits), FlowDecision::DelayCount);
        let mut big = ProcessQueue::default();
        big.put([msg(0, 101)]);
        assert_eq!(big.flow_control(&limits), FlowDecision::DelaySize);
        let mut wide = ProcessQueue::default();
        wide.put([msg(0, 1), msg(51, 1)]);
        assert_eq!(wide.flow_control(&limits), FlowDecision::DelaySpan);
        assert_eq!(wide.flow_control(&FlowLimits { span_max: None, ..limits }), FlowDecision::Pull);
    }

    #[test]
    fn orderly_take_commit_and_retry() {
        let mut pq = ProcessQueue::default();
        pq.put((0..5).map(|o| msg(o, 1)));
        let first: Vec<i64> = pq.take(2).iter().map(|m| m.queue_offset).collect();
        assert_eq!(first, vec![0, 1]);
        assert_eq!(pq.count(), 5, "in-progress messages still count");
        pq.make_again();
        let again = pq.take(2);
        assert_eq!(again[0].queue_offset, 0, "retried messages come first");
        assert_eq!(again[0].reconsume_times, 1);
        assert_eq!(pq.commit(), Some(2));
        assert_eq!(pq.count(), 3);
        assert_eq!(pq.commit(), None);
    }
}
