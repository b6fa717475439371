//! The pop model's state for every (group, topic, queue), as pure logic
//! with an explicit clock: the request handlers, replay at start and the
//! property test drive the same methods.
//!
//! Per queue: the pop offset (the next message never handed out) and the
//! *held* messages, each with its delivery attempt, the time it becomes
//! visible again and its stamp (the `popTime` of its newest receipt
//! handle). A held message is in flight until its visible-again time; then
//! [`PopState::revive`] makes it visible (popped again ahead of new
//! messages, with attempt + 1) or, past the group's maximum, hands it to
//! the caller for the DLQ. Its handle stays good until it is popped again
//! or its invisible time changes, so a late ack of a message nobody took
//! again still counts. Due times live in one ordered index, so a revive
//! pass touches only what is due.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Largest batch one pop may take (upstream and the gRPC clients: 32).
pub const MAX_BATCH: usize = 32;

/// Bounds on what one request may ask (RocketMQ's names where it has them).
#[derive(Clone, Debug)]
pub struct PopLimits {
    /// Largest batch one pop may take (upstream and the gRPC clients: 32).
    pub max_batch: usize,
    /// `popInflightMessageThreshold`: held messages per group and queue.
    pub inflight_per_queue: usize,
    /// `maxInvisibleTimeMills`: longest invisible time (upstream 12 h).
    pub max_invisible_ms: u64,
}

impl Default for PopLimits {
    fn default() -> Self {
        PopLimits { max_batch: MAX_BATCH, inflight_per_queue: 10_000, max_invisible_ms: 12 * 3600 * 1000 }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub group: String,
    pub topic: String,
    pub queue_id: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PopError {
    #[error("batch size {asked} is out of range 1..={max}")]
    Batch { asked: usize, max: usize },
    #[error("invisible time {asked} ms is out of range 1..={max}")]
    InvisibleTime { asked: u64, max: u64 },
    #[error("{held} messages of this queue are already held by the group (popInflightMessageThreshold {max})")]
    TooManyInFlight { held: usize, max: usize },
    /// The handle's message was acked, popped again, changed, or never
    /// handed out with that stamp.
    #[error("the receipt handle is stale or unknown: offset {offset} stamp {stamp}")]
    Stale { offset: i64, stamp: u64 },
}

/// What one pop asks for.
#[derive(Clone, Debug)]
pub struct PopRequest<'a> {
    pub batch: usize,
    pub invisible_ms: u64,
    /// FIFO group: nothing later is handed out while the queue holds an
    /// in-flight batch.
    pub fifo: bool,
    /// A FIFO client's retry of a pop that timed out on its side: the same
    /// attempt id gets the same batch back.
    pub attempt_id: Option<&'a str>,
}

/// The next message at or after an offset that the pop may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// This offset's message matches the pop's filter.
    Match(i64),
    /// No match before this offset (the queue's end, or as far as the
    /// caller scanned); the offsets passed over are consumed.
    End(i64),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub offset: i64,
    /// 1 for the first delivery.
    pub attempt: u32,
    pub stamp: u64,
    pub visible_at: u64,
}

/// A held message whose invisible time passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revived {
    pub key: QueueKey,
    pub offset: i64,
    /// Deliveries so far.
    pub attempt: u32,
    /// When it was due (ms): the revive's lateness is measured from it.
    pub due: u64,
    /// Past `maxReconsumeTimes`: dropped from the state; the caller moves it
    /// to `%DLQ%group`.
    pub to_dlq: bool,
}

/// One change to the state, written (to the commit log) before the request
/// that made it is answered, and replayed in order at start and on a new
/// master: [`PopState::apply`] on the records of [`PopState::pop`],
/// [`PopState::ack`], [`PopState::change_invisible`] and the dead-lettered
/// [`Revived`] gives the same state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op")]
pub enum PopRecord {
    Pop {
        group: String,
        topic: String,
        queue_id: i32,
        now: u64,
        invisible_ms: u64,
        offsets: Vec<i64>,
        /// The pop offset after this pop.
        next: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fifo_attempt: Option<String>,
    },
    Ack {
        group: String,
        topic: String,
        queue_id: i32,
        offset: i64,
        stamp: u64,
    },
    Change {
        group: String,
        topic: String,
        queue_id: i32,
        offset: i64,
        stamp: u64,
        now: u64,
        invisible_ms: u64,
    },
    DeadLetter {
        group: String,
        topic: String,
        queue_id: i32,
        offset: i64,
    },
    /// Acks of one queue's messages as (offset, stamp), one record for a
    /// batch ack; applied one by one like [`PopRecord::Ack`].
    AckMany {
        group: String,
        topic: String,
        queue_id: i32,
        acks: Vec<(i64, u64)>,
    },
    /// The pop offset moved to `next` (the queue was cut or truncated);
    /// held messages on the far side of the move are dropped.
    Seek {
        group: String,
        topic: String,
        queue_id: i32,
        next: i64,
    },
    /// The topic was deleted: every group's state of its queues goes
    /// (`group` empty, `queue_id` -1).
    Forget {
        group: String,
        topic: String,
        queue_id: i32,
    },
    /// One queue's whole state, part of a snapshot ([`PopState::snapshot`]):
    /// part 0 replaces the queue, later parts add held messages to it.
    Queue {
        group: String,
        topic: String,
        queue_id: i32,
        part: u32,
        next: i64,
        held: Vec<HeldRecord>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fifo_batch: Option<(String, Vec<i64>)>,
    },
}

/// A held message as a snapshot stores it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeldRecord {
    pub offset: i64,
    pub attempt: u32,
    pub stamp: u64,
    pub visible_at: u64,
    pub popped_at: u64,
    pub visible: bool,
}

/// Held messages per snapshot record: keeps each record far below
/// `maxMessageSize` (about 100 bytes each as JSON).
pub const SNAPSHOT_HELD_PER_RECORD: usize = 8192;

impl PopRecord {
    pub fn key(&self) -> QueueKey {
        let (group, topic, queue_id) = match self {
            PopRecord::Pop { group, topic, queue_id, .. }
            | PopRecord::Ack { group, topic, queue_id, .. }
            | PopRecord::Change { group, topic, queue_id, .. }
            | PopRecord::DeadLetter { group, topic, queue_id, .. }
            | PopRecord::Seek { group, topic, queue_id, .. }
            | PopRecord::AckMany { group, topic, queue_id, .. }
            | PopRecord::Forget { group, topic, queue_id }
            | PopRecord::Queue { group, topic, queue_id, .. } => (group, topic, *queue_id),
        };
        QueueKey { group: group.clone(), topic: topic.clone(), queue_id }
    }
}

impl Revived {
    /// The record that replays a dead-lettering; `None` for a message made
    /// visible again (replay revives by time, as a running broker does).
    pub fn record(&self) -> Option<PopRecord> {
        self.to_dlq.then(|| PopRecord::DeadLetter {
            group: self.key.group.clone(),
            topic: self.key.topic.clone(),
            queue_id: self.key.queue_id,
            offset: self.offset,
        })
    }
}

#[derive(Clone, Debug)]
struct Held {
    attempt: u32,
    stamp: u64,
    visible_at: u64,
    popped_at: u64,
    /// Whether [`PopState::revive`] has made it visible again.
    visible: bool,
}

#[derive(Clone, Debug, Default)]
struct QueueState {
    next: i64,
    held: BTreeMap<i64, Held>,
    visible: BTreeSet<i64>,
    /// FIFO: the batch in flight and the attempt id that took it.
    fifo_batch: Option<(String, Vec<i64>)>,
}

/// Progress of one queue for a pop group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueProgress {
    pub pop_offset: i64,
    pub in_flight: usize,
    pub visible_again: usize,
    /// Earliest delivery time among held messages.
    pub oldest_popped_at: Option<u64>,
    /// Every offset below this is acked, skipped or sent to the DLQ.
    pub done_below: i64,
}

#[derive(Debug, Default)]
pub struct PopState {
    limits: PopLimits,
    queues: HashMap<QueueKey, QueueState>,
    /// (visible-again time, queue, offset) of every in-flight message.
    due: BTreeSet<(u64, QueueKey, i64)>,
}

impl PopState {
    pub fn new(limits: PopLimits) -> Self {
        PopState { limits, queues: HashMap::new(), due: BTreeSet::new() }
    }

    /// Starts a queue that has no pop state at `offset` (the group's
    /// committed offset, or where a new group starts).
    pub fn start_at(&mut self, key: &QueueKey, offset: i64) {
        self.queues.entry(key.clone()).or_insert_with(|| QueueState { next: offset, ..QueueState::default() });
    }

    pub fn is_known(&self, key: &QueueKey) -> bool {
        self.queues.contains_key(key)
    }

    /// The first `n` offsets of `key` that are visible again, in the order
    /// [`Self::pop`] hands them out.
    pub fn visible_again(&self, key: &QueueKey, n: usize) -> Vec<i64> {
        self.queues.get(key).map_or_else(Vec::new, |q| q.visible.iter().copied().take(n).collect())
    }

    /// Hands out up to `req.batch` messages: the ones visible again first,
    /// in offset order, then new ones from the pop offset as `next` finds
    /// them. Call [`Self::revive`] first so what is due is visible.
    pub fn pop(
        &mut self,
        key: &QueueKey,
        now: u64,
        req: &PopRequest<'_>,
        mut next: impl FnMut(i64) -> Next,
    ) -> Result<(Vec<Delivery>, PopRecord), PopError> {
        if req.batch == 0 || req.batch > self.limits.max_batch {
            return Err(PopError::Batch { asked: req.batch, max: self.limits.max_batch });
        }
        if req.invisible_ms == 0 || req.invisible_ms > self.limits.max_invisible_ms {
            return Err(PopError::InvisibleTime { asked: req.invisible_ms, max: self.limits.max_invisible_ms });
        }
        let q = self.queues.entry(key.clone()).or_default();
        let in_flight = q.held.len() - q.visible.len();
        if req.fifo {
            if let Some((attempt_id, offsets)) = &q.fifo_batch {
                let live: Vec<i64> =
                    offsets.iter().copied().filter(|o| q.held.get(o).is_some_and(|h| !h.visible)).collect();
                if !live.is_empty() {
                    let again = if req.attempt_id == Some(attempt_id.as_str()) {
                        live.iter().map(|o| delivery(*o, &q.held[o])).collect()
                    } else {
                        Vec::new()
                    };
                    return Ok((again, no_change(key, now, q.next)));
                }
            }
            q.fifo_batch = None;
            if in_flight > 0 {
                return Ok((Vec::new(), no_change(key, now, q.next)));
            }
        }
        let room = self.limits.inflight_per_queue.saturating_sub(in_flight);
        if room == 0 {
            return Err(PopError::TooManyInFlight { held: in_flight, max: self.limits.inflight_per_queue });
        }
        let want = req.batch.min(room);
        let mut taken: Vec<i64> = q.visible.iter().copied().take(want).collect();
        let mut scan = q.next;
        while taken.len() < want {
            match next(scan) {
                Next::Match(o) if o >= scan => {
                    taken.push(o);
                    scan = o + 1;
                }
                Next::Match(_) => break,
                Next::End(o) => {
                    scan = scan.max(o);
                    break;
                }
            }
        }
        let fifo_attempt = req.fifo.then(|| req.attempt_id.unwrap_or_default().to_string());
        let record = PopRecord::Pop {
            group: key.group.clone(),
            topic: key.topic.clone(),
            queue_id: key.queue_id,
            now,
            invisible_ms: req.invisible_ms,
            offsets: taken,
            next: scan,
            fifo_attempt,
        };
        let out = self.apply_pop(&record);
        Ok((out, record))
    }

    fn apply_pop(&mut self, record: &PopRecord) -> Vec<Delivery> {
        let PopRecord::Pop { now, invisible_ms, offsets, next, fifo_attempt, .. } = record else {
            return Vec::new();
        };
        let key = record.key();
        let q = self.queues.entry(key.clone()).or_default();
        q.next = q.next.max(*next);
        let mut out = Vec::with_capacity(offsets.len());
        for offset in offsets {
            // Live: visible-again or new (past the pop offset) messages. In
            // a replay a message may still be due, not yet revived.
            let held = q.held.entry(*offset).or_insert(Held {
                attempt: 0,
                stamp: 0,
                visible_at: 0,
                popped_at: *now,
                visible: true,
            });
            if held.visible {
                q.visible.remove(offset);
            } else {
                self.due.remove(&(held.visible_at, key.clone(), *offset));
            }
            held.attempt += 1;
            held.stamp = (*now).max(held.stamp + 1);
            held.visible_at = now.saturating_add(*invisible_ms);
            held.popped_at = *now;
            held.visible = false;
            self.due.insert((held.visible_at, key.clone(), *offset));
            out.push(delivery(*offset, held));
        }
        if let Some(attempt) = fifo_attempt.as_ref().filter(|_| !offsets.is_empty()) {
            q.fifo_batch = Some((attempt.clone(), offsets.clone()));
        }
        out
    }

    /// Replays one record (see [`PopRecord`]).
    pub fn apply(&mut self, record: &PopRecord) {
        let key = record.key();
        match record {
            PopRecord::Pop { .. } => {
                self.apply_pop(record);
            }
            PopRecord::Ack { offset, stamp, .. } => {
                let _ = self.ack(&key, *offset, *stamp);
            }
            PopRecord::Change { offset, stamp, now, invisible_ms, .. } => {
                // As it was answered: today's bounds do not apply to the past.
                let _ = self.change_unchecked(&key, *offset, *stamp, *now, *invisible_ms);
            }
            PopRecord::Seek { next, .. } => {
                self.apply_seek(&key, *next);
            }
            PopRecord::AckMany { acks, .. } => {
                for (offset, stamp) in acks {
                    let _ = self.ack(&key, *offset, *stamp);
                }
            }
            PopRecord::Forget { topic, .. } => {
                let gone: Vec<QueueKey> = self.queues.keys().filter(|k| k.topic == *topic).cloned().collect();
                for k in gone {
                    self.drop_queue(&k);
                }
            }
            PopRecord::Queue { part, next, held, fifo_batch, .. } => {
                if *part == 0 {
                    self.drop_queue(&key);
                }
                let q = self.queues.entry(key.clone()).or_default();
                q.next = *next;
                if fifo_batch.is_some() {
                    q.fifo_batch = fifo_batch.clone();
                }
                for h in held {
                    let entry = Held {
                        attempt: h.attempt,
                        stamp: h.stamp,
                        visible_at: h.visible_at,
                        popped_at: h.popped_at,
                        visible: h.visible,
                    };
                    if h.visible {
                        q.visible.insert(h.offset);
                    } else {
                        self.due.insert((h.visible_at, key.clone(), h.offset));
                    }
                    q.held.insert(h.offset, entry);
                }
            }
            PopRecord::DeadLetter { offset, .. } => {
                self.release(&key, *offset);
            }
        }
    }

    /// Acks one message: its handle must carry the message's current stamp.
    pub fn ack(&mut self, key: &QueueKey, offset: i64, stamp: u64) -> Result<PopRecord, PopError> {
        Self::current(&mut self.queues, key, offset, stamp)?;
        self.release(key, offset);
        Ok(PopRecord::Ack { group: key.group.clone(), topic: key.topic.clone(), queue_id: key.queue_id, offset, stamp })
    }

    /// Sets a held message's invisible time from `now`; the old handle stops
    /// working and the new stamp is returned. A message visible again but
    /// not yet popped is taken back by its holder this way.
    pub fn change_invisible(
        &mut self,
        key: &QueueKey,
        offset: i64,
        stamp: u64,
        now: u64,
        invisible_ms: u64,
    ) -> Result<(Delivery, PopRecord), PopError> {
        if invisible_ms > self.limits.max_invisible_ms {
            return Err(PopError::InvisibleTime { asked: invisible_ms, max: self.limits.max_invisible_ms });
        }
        self.change_unchecked(key, offset, stamp, now, invisible_ms)
    }

    fn change_unchecked(
        &mut self,
        key: &QueueKey,
        offset: i64,
        stamp: u64,
        now: u64,
        invisible_ms: u64,
    ) -> Result<(Delivery, PopRecord), PopError> {
        let q = Self::current(&mut self.queues, key, offset, stamp)?;
        let Some(h) = q.held.get_mut(&offset) else {
            return Err(PopError::Stale { offset, stamp });
        };
        if h.visible {
            q.visible.remove(&offset);
        } else {
            self.due.remove(&(h.visible_at, key.clone(), offset));
        }
        h.visible = false;
        h.stamp = now.max(h.stamp + 1);
        h.visible_at = now.saturating_add(invisible_ms);
        self.due.insert((h.visible_at, key.clone(), offset));
        let record = PopRecord::Change {
            group: key.group.clone(),
            topic: key.topic.clone(),
            queue_id: key.queue_id,
            offset,
            stamp,
            now,
            invisible_ms,
        };
        Ok((delivery(offset, h), record))
    }

    /// Makes every message due by `now` visible again, or, past
    /// `max_reconsume(group)` redeliveries, drops it and reports it for the
    /// DLQ (write [`Revived::record`] with the DLQ copy). Touches only what
    /// is due.
    pub fn revive(&mut self, now: u64, max_reconsume: impl Fn(&str) -> u32) -> Vec<Revived> {
        let mut out = Vec::new();
        while let Some(first) = self.due.first() {
            if first.0 > now {
                break;
            }
            let Some((due, key, offset)) = self.due.pop_first() else { break };
            let Some(q) = self.queues.get_mut(&key) else { continue };
            let Some(h) = q.held.get_mut(&offset) else { continue };
            let to_dlq = h.attempt > max_reconsume(&key.group);
            if to_dlq {
                let attempt = h.attempt;
                q.held.remove(&offset);
                out.push(Revived { key, offset, attempt, due, to_dlq });
            } else {
                h.visible = true;
                q.visible.insert(offset);
                out.push(Revived { key, offset, attempt: h.attempt, due, to_dlq });
            }
        }
        out
    }

    /// The whole state as records: replaying them into an empty state
    /// gives this one. Every queue is there, held messages or not (its pop
    /// offset is part of the state).
    pub fn snapshot(&self) -> Vec<PopRecord> {
        let mut keys: Vec<&QueueKey> = self.queues.keys().collect();
        keys.sort();
        let mut out = Vec::new();
        for key in keys {
            let q = &self.queues[key];
            let held: Vec<HeldRecord> = q
                .held
                .iter()
                .map(|(offset, h)| HeldRecord {
                    offset: *offset,
                    attempt: h.attempt,
                    stamp: h.stamp,
                    visible_at: h.visible_at,
                    popped_at: h.popped_at,
                    visible: h.visible,
                })
                .collect();
            let mut parts: Vec<Vec<HeldRecord>> =
                held.chunks(SNAPSHOT_HELD_PER_RECORD).map(<[HeldRecord]>::to_vec).collect();
            if parts.is_empty() {
                parts.push(Vec::new());
            }
            for (part, held) in parts.into_iter().enumerate() {
                out.push(PopRecord::Queue {
                    group: key.group.clone(),
                    topic: key.topic.clone(),
                    queue_id: key.queue_id,
                    part: part as u32,
                    next: q.next,
                    held,
                    fifo_batch: if part == 0 { q.fifo_batch.clone() } else { None },
                });
            }
        }
        out
    }

    /// Moves a queue's pop offset (its messages before it were deleted, or
    /// its log was cut below it); see [`PopRecord::Seek`].
    pub fn seek(&mut self, key: &QueueKey, next: i64) -> PopRecord {
        self.apply_seek(key, next);
        PopRecord::Seek { group: key.group.clone(), topic: key.topic.clone(), queue_id: key.queue_id, next }
    }

    fn apply_seek(&mut self, key: &QueueKey, next: i64) {
        let Some(q) = self.queues.get_mut(key) else {
            self.start_at(key, next);
            return;
        };
        let back = next < q.next;
        let dropped: Vec<i64> = q.held.keys().copied().filter(|o| if back { *o >= next } else { *o < next }).collect();
        q.next = next;
        q.fifo_batch = None;
        for o in dropped {
            self.release(key, o);
        }
    }

    /// Stops holding a message: out of the held set, the visible set and
    /// the due index.
    fn release(&mut self, key: &QueueKey, offset: i64) {
        let Some(q) = self.queues.get_mut(key) else { return };
        if let Some(h) = q.held.remove(&offset) {
            q.visible.remove(&offset);
            self.due.remove(&(h.visible_at, key.clone(), offset));
        }
    }

    /// Forgets a queue and its held messages' due entries.
    fn drop_queue(&mut self, key: &QueueKey) {
        if let Some(q) = self.queues.remove(key) {
            for (offset, h) in &q.held {
                self.due.remove(&(h.visible_at, key.clone(), *offset));
            }
        }
    }

    /// Forgets every group's state of a deleted topic's queues.
    pub fn forget_topic(&mut self, topic: &str) -> PopRecord {
        let record = PopRecord::Forget { group: String::new(), topic: topic.to_string(), queue_id: -1 };
        self.apply(&record);
        record
    }

    /// Holds a message again that [`Self::revive`] dropped for the DLQ
    /// when moving it there failed: due again at `due_at`, same attempt.
    pub fn reinstate(&mut self, r: &Revived, now: u64, due_at: u64) {
        let q = self.queues.entry(r.key.clone()).or_default();
        let stamp = now.max(q.held.get(&r.offset).map_or(0, |h| h.stamp + 1));
        q.held.insert(r.offset, Held { attempt: r.attempt, stamp, visible_at: due_at, popped_at: now, visible: false });
        q.visible.remove(&r.offset);
        self.due.insert((due_at, r.key.clone(), r.offset));
    }

    /// Whether any group has pop state on `topic`.
    pub fn has_topic(&self, topic: &str) -> bool {
        self.queues.keys().any(|k| k.topic == topic)
    }

    /// When the next held message becomes due, if any is in flight.
    pub fn next_due(&self) -> Option<u64> {
        self.due.first().map(|d| d.0)
    }

    pub fn progress(&self, key: &QueueKey) -> Option<QueueProgress> {
        let q = self.queues.get(key)?;
        Some(QueueProgress {
            pop_offset: q.next,
            in_flight: q.held.len() - q.visible.len(),
            visible_again: q.visible.len(),
            oldest_popped_at: q.held.values().map(|h| h.popped_at).min(),
            done_below: q.held.keys().next().copied().unwrap_or(q.next).min(q.next),
        })
    }

    /// Every queue of `group` with its progress, in key order.
    pub fn group_progress(&self, group: &str) -> Vec<(QueueKey, QueueProgress)> {
        let mut out: Vec<(QueueKey, QueueProgress)> = self
            .queues
            .keys()
            .filter(|k| k.group == group)
            .filter_map(|k| self.progress(k).map(|p| (k.clone(), p)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Held messages (in flight or visible again) over every queue.
    pub fn held_total(&self) -> usize {
        self.queues.values().map(|q| q.held.len()).sum()
    }

    fn current<'a>(
        queues: &'a mut HashMap<QueueKey, QueueState>,
        key: &QueueKey,
        offset: i64,
        stamp: u64,
    ) -> Result<&'a mut QueueState, PopError> {
        match queues.get_mut(key) {
            Some(q) if q.held.get(&offset).is_some_and(|h| h.stamp == stamp) => Ok(q),
            _ => Err(PopError::Stale { offset, stamp }),
        }
    }
}

/// A pop that changed nothing (FIFO queue held): an empty record.
fn no_change(key: &QueueKey, now: u64, next: i64) -> PopRecord {
    PopRecord::Pop {
        group: key.group.clone(),
        topic: key.topic.clone(),
        queue_id: key.queue_id,
        now,
        invisible_ms: 0,
        offsets: Vec::new(),
        next,
        fifo_attempt: None,
    }
}

fn delivery(offset: i64, h: &Held) -> Delivery {
    Delivery { offset, attempt: h.attempt, stamp: h.stamp, visible_at: h.visible_at }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_RECONSUME: u32 = 2;
    const QUEUES: i32 = 2;

    /// Offsets with `o % 5 == 4` do not match the pop's filter.
    fn matches(o: i64) -> bool {
        o % 5 != 4
    }

    fn key(q: i32) -> QueueKey {
        QueueKey { group: "g".into(), topic: "T".into(), queue_id: q }
    }

    /// The plain model: one status per produced message.
    #[derive(Clone, Debug, PartialEq)]
    enum Status {
        New,
        InFlight { attempt: u32, stamp: u64, visible_at: u64 },
        Visible { attempt: u32, stamp: u64 },
        Acked,
        Skipped,
        Dlq,
    }

    #[derive(Clone, Debug)]
    enum Op {
        Produce(i32, u8),
        Pop(i32, usize, u64),
        Ack(usize),
        Change(usize, u64),
        Advance(u64),
        /// Kill and restart: the state is rebuilt from its records alone.
        Restart,
        /// The journal is cut to a snapshot of the state.
        Snapshot,
        /// The master makes a pop (queue, batch, invisible) and an ack in
        /// memory, appends neither record anywhere a slave has it, and
        /// dies before answering: the promoted slave rebuilds the state
        /// from the replicated journal, in which neither happened.
        Failover(i32, usize, u64, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..QUEUES, 1u8..8).prop_map(|(q, n)| Op::Produce(q, n)),
            (0..QUEUES, 1usize..5, 1u64..50).prop_map(|(q, b, i)| Op::Pop(q, b, i)),
            (0usize..64).prop_map(Op::Ack),
            (0usize..64, 0u64..50).prop_map(|(h, i)| Op::Change(h, i)),
            (1u64..40).prop_map(Op::Advance),
            Just(Op::Restart),
            Just(Op::Snapshot),
            (0..QUEUES, 1usize..5, 1u64..50, 0usize..64).prop_map(|(q, b, i, h)| Op::Failover(q, b, i, h)),
        ]
    }

    struct Model {
        msgs: Vec<Vec<Status>>,
        next: Vec<i64>,
    }

    impl Model {
        fn revive(&mut self, now: u64) {
            for q in &mut self.msgs {
                for s in q.iter_mut() {
                    if let Status::InFlight { attempt, stamp, visible_at } = *s {
                        if visible_at <= now {
                            *s = if attempt > MAX_RECONSUME { Status::Dlq } else { Status::Visible { attempt, stamp } };
                        }
                    }
                }
            }
        }

        fn live_stamp(&self, q: i32, o: i64) -> Option<u64> {
            match self.msgs[q as usize].get(o as usize)? {
                Status::InFlight { stamp, .. } | Status::Visible { stamp, .. } => Some(*stamp),
                _ => None,
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn every_message_is_acked_once_held_visible_new_or_dead_lettered(ops in proptest::collection::vec(op(), 1..120)) {
            let limits = PopLimits { max_batch: 4, inflight_per_queue: 6, max_invisible_ms: 1000 };
            let mut sut = PopState::new(limits.clone());
            let mut model = Model { msgs: vec![Vec::new(); QUEUES as usize], next: vec![0; QUEUES as usize] };
            let mut handles: Vec<(i32, i64, u64)> = Vec::new();
            let mut now = 1_000u64;
            let mut journal: Vec<PopRecord> = Vec::new();
            for op in ops {
                match op {
                    Op::Produce(q, n) => {
                        for _ in 0..n {
                            model.msgs[q as usize].push(Status::New);
                        }
                    }
                    Op::Advance(ms) => now += ms,
                    Op::Snapshot => journal = sut.snapshot(),
                    Op::Restart | Op::Failover(..) => {
                        let mut lost = Vec::new();
                        if let Op::Failover(q, batch, invisible, h) = op {
                            // Unanswered: changes in the old master's memory only.
                            let _ = sut.revive(now, |_| MAX_RECONSUME);
                            let req = PopRequest { batch, invisible_ms: invisible, fifo: false, attempt_id: None };
                            let produced = model.msgs[q as usize].len() as i64;
                            if let Ok((got, _)) = sut.pop(&key(q), now, &req, |from| {
                                (from..produced).find(|o| matches(*o)).map_or(Next::End(produced), Next::Match)
                            }) {
                                lost.extend(got.iter().map(|d| (q, d.offset, d.stamp)));
                            }
                            if let Some((q, o, stamp)) = handles.get(h % handles.len().max(1)).copied() {
                                let _ = sut.ack(&key(q), o, stamp);
                            }
                        }
                        sut = PopState::new(limits.clone());
                        for r in &journal {
                            // As stored: through its encoding and back.
                            let stored = serde_json::to_vec(r).expect("a record encodes");
                            sut.apply(&serde_json::from_slice(&stored).expect("a record decodes"));
                        }
                        // The unanswered pop's handles work nowhere on the promoted broker.
                        for (q, o, stamp) in lost {
                            if model.live_stamp(q, o) != Some(stamp) {
                                prop_assert!(sut.ack(&key(q), o, stamp).is_err(), "a handle of an unanswered pop acked {:?}", (q, o, stamp));
                            }
                        }
                        // A restarted broker revives by the clock first.
                        journal.extend(sut.revive(now, |_| MAX_RECONSUME).iter().filter_map(Revived::record));
                        model.revive(now);
                    }
                    Op::Pop(q, batch, invisible) => {
                        let dead = sut.revive(now, |_| MAX_RECONSUME);
                        journal.extend(dead.iter().filter_map(Revived::record));
                        model.revive(now);
                        for r in &dead {
                            let want = if r.to_dlq { Status::Dlq } else { Status::Visible { attempt: r.attempt, stamp: model.live_stamp(r.key.queue_id, r.offset).unwrap_or(0) } };
                            prop_assert_eq!(&model.msgs[r.key.queue_id as usize][r.offset as usize], &want);
                        }
                        let produced = model.msgs[q as usize].len() as i64;
                        let req = PopRequest { batch, invisible_ms: invisible, fifo: false, attempt_id: None };
                        let got = sut.pop(&key(q), now, &req, |from| {
                            (from..produced).find(|o| matches(*o)).map_or(Next::End(produced), Next::Match)
                        });
                        // The model's answer: visible again first, then new matching ones.
                        let msgs = &mut model.msgs[q as usize];
                        let in_flight = msgs.iter().filter(|s| matches!(s, Status::InFlight { .. })).count();
                        let want_n = batch.min(limits.inflight_per_queue - in_flight);
                        if want_n == 0 {
                            prop_assert_eq!(got, Err(PopError::TooManyInFlight { held: in_flight, max: limits.inflight_per_queue }));
                            continue;
                        }
                        let (got, record) = got.unwrap();
                        journal.push(record);
                        let mut expect: Vec<(i64, u32)> = msgs.iter().enumerate()
                            .filter_map(|(o, s)| match s { Status::Visible { attempt, .. } => Some((o as i64, attempt + 1)), _ => None })
                            .take(want_n).collect();
                        let mut scan = model.next[q as usize];
                        while expect.len() < want_n && scan < produced {
                            if matches(scan) {
                                expect.push((scan, 1));
                            } else {
                                msgs[scan as usize] = Status::Skipped;
                            }
                            scan += 1;
                        }
                        if expect.len() < want_n {
                            scan = produced;
                        }
                        model.next[q as usize] = scan;
                        prop_assert_eq!(got.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(), expect);
                        for d in &got {
                            prop_assert_eq!(d.visible_at, now + invisible);
                            if let Some(old) = model.live_stamp(q, d.offset) {
                                prop_assert!(d.stamp > old, "a new pop makes a new stamp");
                            }
                            model.msgs[q as usize][d.offset as usize] = Status::InFlight { attempt: d.attempt, stamp: d.stamp, visible_at: d.visible_at };
                            handles.push((q, d.offset, d.stamp));
                        }
                    }
                    Op::Ack(i) if !handles.is_empty() => {
                        let (q, o, stamp) = handles[i % handles.len()];
                        let live = model.live_stamp(q, o) == Some(stamp);
                        let r = sut.ack(&key(q), o, stamp);
                        prop_assert_eq!(r.is_ok(), live, "ack of {:?}", (q, o, stamp));
                        if let Ok(record) = r {
                            journal.push(record);
                            model.msgs[q as usize][o as usize] = Status::Acked;
                        }
                    }
                    Op::Change(i, invisible) if !handles.is_empty() => {
                        let (q, o, stamp) = handles[i % handles.len()];
                        let live = model.live_stamp(q, o) == Some(stamp);
                        let r = sut.change_invisible(&key(q), o, stamp, now, invisible);
                        prop_assert_eq!(r.is_ok(), live, "change of {:?}", (q, o, stamp));
                        if let Ok((d, record)) = r {
                            journal.push(record);
                            prop_assert!(d.stamp > stamp);
                            let (Status::InFlight { attempt, .. } | Status::Visible { attempt, .. }) = model.msgs[q as usize][o as usize] else { unreachable!() };
                            prop_assert_eq!(d.attempt, attempt);
                            model.msgs[q as usize][o as usize] = Status::InFlight { attempt, stamp: d.stamp, visible_at: now + invisible };
                            handles.push((q, o, d.stamp));
                        }
                    }
                    Op::Ack(_) | Op::Change(..) => {}
                }
                // Same counts, and no message is in two places or lost.
                for q in 0..QUEUES {
                    let msgs = &model.msgs[q as usize];
                    let in_flight = msgs.iter().filter(|s| matches!(s, Status::InFlight { .. })).count();
                    let visible = msgs.iter().filter(|s| matches!(s, Status::Visible { .. })).count();
                    match sut.progress(&key(q)) {
                        Some(p) => {
                            prop_assert_eq!((p.pop_offset, p.in_flight, p.visible_again), (model.next[q as usize], in_flight, visible));
                            let first_open = msgs.iter().position(|s| matches!(s, Status::InFlight { .. } | Status::Visible { .. }));
                            prop_assert_eq!(p.done_below, first_open.map_or(model.next[q as usize], |o| o as i64));
                        }
                        None => prop_assert_eq!((in_flight, visible, model.next[q as usize]), (0, 0, 0)),
                    }
                    for (o, s) in msgs.iter().enumerate() {
                        let beyond = (o as i64) >= model.next[q as usize];
                        prop_assert_eq!(matches!(s, Status::New), beyond, "offset {} is {:?}", o, s);
                    }
                }
            }
        }
    }

    #[test]
    fn a_fifo_queue_holds_back_later_messages_and_a_retried_attempt_gets_its_batch() {
        let mut s = PopState::new(PopLimits::default());
        let k = key(0);
        let all = |from: i64| if from < 10 { Next::Match(from) } else { Next::End(10) };
        let first = PopRequest { batch: 3, invisible_ms: 100, fifo: true, attempt_id: Some("a1") };
        let batch = s.pop(&k, 0, &first, all).unwrap().0;
        assert_eq!(batch.iter().map(|d| d.offset).collect::<Vec<_>>(), [0, 1, 2]);
        // Someone else, or the same client with a new attempt: nothing.
        let other = PopRequest { attempt_id: Some("a2"), ..first.clone() };
        assert!(s.pop(&k, 10, &other, all).unwrap().0.is_empty());
        // The timed-out client retries with its attempt id: the same batch.
        assert_eq!(s.pop(&k, 20, &first, all).unwrap().0, batch);
        // Acking part keeps the rest blocking; acking all opens the queue.
        s.ack(&k, 0, batch[0].stamp).unwrap();
        assert!(s.pop(&k, 30, &other, all).unwrap().0.is_empty());
        s.ack(&k, 1, batch[1].stamp).unwrap();
        s.ack(&k, 2, batch[2].stamp).unwrap();
        let next = s.pop(&k, 40, &other, all).unwrap().0;
        assert_eq!(next.iter().map(|d| d.offset).collect::<Vec<_>>(), [3, 4, 5]);
        // Expired unacked: they come back first, in order, attempt 2, before 6.
        assert!(s.revive(140, |_| 16).iter().all(|r| !r.to_dlq));
        let again = s.pop(&k, 150, &PopRequest { attempt_id: Some("a3"), ..first.clone() }, all).unwrap().0;
        assert_eq!(again.iter().map(|d| (d.offset, d.attempt)).collect::<Vec<_>>(), [(3, 2), (4, 2), (5, 2)]);
        assert_eq!(s.ack(&k, 3, next[0].stamp), Err(PopError::Stale { offset: 3, stamp: next[0].stamp }));
    }

    #[test]
    fn requests_out_of_bounds_are_refused_with_the_bound() {
        let mut s = PopState::new(PopLimits::default());
        let k = key(0);
        let none = |from: i64| Next::End(from);
        let req = |batch, invisible_ms| PopRequest { batch, invisible_ms, fifo: false, attempt_id: None };
        assert_eq!(s.pop(&k, 0, &req(0, 1000), none), Err(PopError::Batch { asked: 0, max: 32 }));
        assert_eq!(s.pop(&k, 0, &req(33, 1000), none), Err(PopError::Batch { asked: 33, max: 32 }));
        let max = 12 * 3600 * 1000;
        assert_eq!(s.pop(&k, 0, &req(1, max + 1), none), Err(PopError::InvisibleTime { asked: max + 1, max }));
        assert_eq!(s.pop(&k, 0, &req(1, 0), none), Err(PopError::InvisibleTime { asked: 0, max }));
        assert_eq!(s.ack(&k, 5, 1), Err(PopError::Stale { offset: 5, stamp: 1 }));
    }

    #[test]
    fn seeks_forgets_and_reinstates_replay_to_the_same_state() {
        let mut s = PopState::new(PopLimits::default());
        let all = |from: i64| if from < 10 { Next::Match(from) } else { Next::End(10) };
        let req = PopRequest { batch: 4, invisible_ms: 100, fifo: false, attempt_id: None };
        let mut journal = vec![s.pop(&key(0), 0, &req, all).unwrap().1, s.pop(&key(1), 0, &req, all).unwrap().1];
        // The log was cut at 2: held 2 and 3 go, the pop offset comes back.
        journal.push(s.seek(&key(0), 2));
        let p = s.progress(&key(0)).unwrap();
        assert_eq!((p.pop_offset, p.in_flight), (2, 2));
        // Revived past the maximum, the DLQ move fails: held again, same attempt.
        let dead = s.revive(100, |_| 0);
        assert_eq!(dead.len(), 6);
        for r in dead.iter().filter(|r| r.key.queue_id == 0) {
            s.reinstate(r, 100, 5000);
        }
        assert_eq!(s.progress(&key(0)).unwrap().in_flight, 2);
        assert_eq!(s.next_due(), Some(5000));
        journal.extend(dead.iter().filter(|r| r.key.queue_id == 1).filter_map(Revived::record));
        // Queue 1's topic is deleted: every group's state of it goes.
        journal.push(s.forget_topic("T"));
        assert!(s.progress(&key(1)).is_none() && s.progress(&key(0)).is_none());
        let mut replayed = PopState::new(PopLimits::default());
        for r in &journal {
            replayed.apply(r);
        }
        assert_eq!(replayed.held_total(), 0);
        assert!(!replayed.has_topic("T"));
    }

    #[test]
    fn a_replay_applies_changes_that_todays_bounds_would_refuse() {
        let mut s = PopState::new(PopLimits::default());
        let one = |from: i64| if from < 1 { Next::Match(from) } else { Next::End(1) };
        let req = PopRequest { batch: 1, invisible_ms: 100, fifo: false, attempt_id: None };
        let (d, pop) = s.pop(&key(0), 0, &req, one).unwrap();
        let (changed, change) = s.change_invisible(&key(0), 0, d[0].stamp, 10, 3_600_000).unwrap();
        let ack = s.ack(&key(0), 0, changed.stamp).unwrap();
        // Restarted with maxInvisibleTimeMills lowered to a minute.
        let mut replayed = PopState::new(PopLimits { max_invisible_ms: 60_000, ..PopLimits::default() });
        for r in [pop, change, ack] {
            replayed.apply(&r);
        }
        assert_eq!(replayed.held_total(), 0, "the ack, made with the changed handle, still finds its message");
    }

    #[test]
    fn revive_touches_only_what_is_due() {
        let mut s = PopState::new(PopLimits::default());
        let all = |from: i64| if from < 1000 { Next::Match(from) } else { Next::End(1000) };
        for q in 0..4 {
            for i in 0..8 {
                let req =
                    PopRequest { batch: 32, invisible_ms: 1000 + i * 100 + q as u64, fifo: false, attempt_id: None };
                s.pop(&key(q), 0, &req, all).unwrap();
            }
        }
        assert_eq!(s.held_total(), 4 * 8 * 32);
        assert_eq!(s.next_due(), Some(1000));
        let revived = s.revive(1000, |_| 16);
        assert_eq!(revived.len(), 32, "only queue 0's first batch is due at 1000");
        assert!(revived.iter().all(|r| r.key.queue_id == 0 && r.attempt == 1 && !r.to_dlq));
        assert_eq!(s.next_due(), Some(1001));
    }
}
