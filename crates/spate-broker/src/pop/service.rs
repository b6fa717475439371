//! The broker's pop service: the [`PopState`] behind one lock, loaded from
//! the journal (`journal.rs`) when this broker is master in a new epoch,
//! the request codes on it (POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE,
//! CHANGE_MESSAGE_INVISIBLETIME, SPATE_GET_POP_PROGRESS), the revive task
//! and snapshots.
//!
//! Every change is appended to the journal while the lock is held and
//! flushed (and on a SYNC_MASTER replicated) before it is answered; the
//! lock is not held while the answer waits for that.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spate_common::message::{self, NewMessage, PHYSICAL_OFFSET_POS, QUEUE_OFFSET_POS};
use spate_remoting::protocol::{dlq_topic, perm, TopicConfig};
use spate_remoting::{response, OutboundReservation, RemotingCommand};
use spate_store::{FlushWait, ReadLimits};

use super::handle::{ReceiptHandle, RetryKind};
use super::journal;
use super::state::{Delivery, Next, PopError, PopLimits, PopRecord, PopRequest, PopState, QueueKey};
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::pull::Selector;
use crate::refusal::Refusal;
use crate::{BrokerRole, BrokerState};

/// The property that carries a popped message's receipt handle (upstream's `POP_CK`).
pub const POP_CK: &str = "POP_CK";

/// Longest a pop waits for messages, whatever it asks (upstream's clients ask 15-20 s).
pub const MAX_POLL: Duration = Duration::from_secs(60);

/// Longest the revive task sleeps when nothing is due: also how soon it
/// notices a new master term.
const REVIVE_IDLE: Duration = Duration::from_millis(500);

/// How long a message whose move to the DLQ failed waits before the next try.
const DLQ_RETRY_BACKOFF: Duration = Duration::from_secs(5);

/// Longest pop group name: `%DLQ%` + the name must be a topic name.
const POP_GROUP_MAX_LEN: usize = spate_common::message::TOPIC_MAX_LEN - "%DLQ%".len();

/// Longest FIFO `attemptId` (journaled with the batch it took).
const ATTEMPT_ID_MAX_LEN: usize = 128;

/// Where a new pop group starts in a queue without a committed offset
/// (`initMode`): 0 the queue's first message, 1 its end.
const INIT_MODE_MIN: i32 = 0;

#[derive(Default)]
struct Loaded {
    /// The master epoch the state was loaded in.
    epoch: Option<u32>,
    state: Option<PopState>,
}

/// Counters for `/metrics` and admin.
#[derive(Default)]
pub struct PopCounters {
    pub acked: AtomicU64,
    pub revived: AtomicU64,
    pub dead_lettered: AtomicU64,
    /// Redeliveries (revives) by group, for `spate admin group progress`;
    /// one entry per group the subscription table holds at most.
    pub revived_by_group: parking_lot::Mutex<HashMap<String, u64>>,
}

pub struct PopService {
    limits: PopLimits,
    loaded: tokio::sync::Mutex<Loaded>,
    /// Woken when a change may have made the next due time earlier.
    wake: tokio::sync::Notify,
    /// A change was made in memory but its record did not reach the
    /// journal: the next lock replays the journal, so memory never runs
    /// ahead of what a restart or a new master would see.
    stale: std::sync::atomic::AtomicBool,
    pub counters: PopCounters,
    /// Held messages, as of the last time the state was let go (`spate_pop_inflight`).
    pub held: AtomicU64,
    /// Round-robin start for pops of any queue.
    next_queue: AtomicU64,
    /// Journal records since the last snapshot.
    since_snapshot: AtomicU64,
}

/// How long loading the pop state waits for the store to dispatch the
/// journal's last records before the request is refused instead.
const POP_REPLAY_DISPATCH_WAIT: Duration = Duration::from_secs(10);

impl PopService {
    pub fn new(limits: PopLimits) -> PopService {
        PopService {
            limits,
            loaded: tokio::sync::Mutex::new(Loaded::default()),
            wake: tokio::sync::Notify::new(),
            stale: std::sync::atomic::AtomicBool::new(false),
            counters: PopCounters::default(),
            held: AtomicU64::new(0),
            next_queue: AtomicU64::new(0),
            since_snapshot: AtomicU64::new(0),
        }
    }

    /// The state, loaded (replayed) if this broker is master in an epoch it
    /// was not loaded in; a refusal on a slave.
    async fn lock<'a>(&'a self, state: &Arc<BrokerState>) -> Result<PopGuard<'a>, Refusal> {
        if state.config.read().broker_role == BrokerRole::Slave {
            let c = state.config.read();
            return Err(Refusal::new(
                response::SERVICE_NOT_AVAILABLE,
                format!("broker {} (brokerId {}) is a slave: pop from its master", c.broker_name, c.broker_id),
            ));
        }
        let mut guard = self.loaded.lock().await;
        let epoch = state.store.epochs().last().map(|e| e.epoch);
        if guard.state.is_none() || guard.epoch != epoch || self.stale.swap(false, Ordering::AcqRel) {
            let started = Instant::now();
            let (store, offsets_state, limits) = (state.store.clone(), state.clone(), self.limits.clone());
            let replayed = tokio::task::spawn_blocking(move || {
                // A replay must see the whole journal: one that missed its
                // last records would deliver again what is held, or forget
                // acks. Not dispatched in time: refuse, and try next call.
                if !store.wait_dispatched(POP_REPLAY_DISPATCH_WAIT) {
                    return Ok(None);
                }
                journal::replay(&store, limits, &offsets_state.offsets).map(Some)
            })
            .await
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("pop state replay failed: {e}")))?
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("pop state replay failed: {e}")))?;
            let Some((ps, seen)) = replayed else {
                return Err(Refusal::new(
                    response::SYSTEM_ERROR,
                    "pop state not loaded: the store is still dispatching its log; try again",
                ));
            };
            tracing::info!(
                records = seen.records,
                unreadable = seen.unreadable,
                held = ps.held_total(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "pop state replayed from the journal"
            );
            guard.state = Some(ps);
            guard.epoch = epoch;
            self.wake.notify_one();
        }
        let guard = tokio::sync::MutexGuard::try_map(guard, |l| l.state.as_mut())
            .map_err(|_| Refusal::new(response::SYSTEM_ERROR, "pop state is not loaded"))?;
        Ok(PopGuard { guard, held: &self.held })
    }
}

/// The locked state; when it is let go, `spate_pop_inflight` is brought up
/// to date with whatever the holder changed.
struct PopGuard<'a> {
    guard: tokio::sync::MappedMutexGuard<'a, PopState>,
    held: &'a AtomicU64,
}

impl std::ops::Deref for PopGuard<'_> {
    type Target = PopState;
    fn deref(&self) -> &PopState {
        &self.guard
    }
}

impl std::ops::DerefMut for PopGuard<'_> {
    fn deref_mut(&mut self) -> &mut PopState {
        &mut self.guard
    }
}

impl Drop for PopGuard<'_> {
    fn drop(&mut self) {
        self.held.store(self.guard.held_total() as u64, Ordering::Relaxed);
    }
}

/// Appends records to the journal (under the pop lock); the wait for their flush.
async fn journal(state: &Arc<BrokerState>, records: &[PopRecord]) -> Result<Option<(FlushWait, u64)>, BrokerError> {
    if records.is_empty() {
        return Ok(None);
    }
    let now = crate::schedule::now_ms();
    let msgs: Vec<NewMessage> = records.iter().map(|r| journal::to_message(r, state.broker_addr, now)).collect();
    state.pop.since_snapshot.fetch_add(records.len() as u64, Ordering::Relaxed);
    let put = crate::send::put_many(state, msgs).await;
    if put.is_err() {
        state.pop.stale.store(true, Ordering::Release);
    }
    let put = put?;
    let end = put.appends.last().map_or(0, |a| a.end_offset());
    Ok(Some((put.flush, end)))
}

/// Waits until the journal records are durable (flush policy, and on a
/// SYNC_MASTER its slaves); the refusal if they are not.
async fn durable(state: &Arc<BrokerState>, written: Option<(FlushWait, u64)>) -> Result<(), Refusal> {
    let Some((flush, end)) = written else { return Ok(()) };
    flush.wait().await.map_err(|e| Refusal::from_store(&e))?;
    crate::send::replicated(state, end).await
}

/// A pop, decoded by whichever front end carried it.
#[derive(Debug, Clone)]
pub struct PopMessageRequest {
    pub group: String,
    pub topic: String,
    /// One queue, or -1: any queue of the topic here.
    pub queue_id: i32,
    pub max_msgs: usize,
    pub invisible_ms: u64,
    /// How long to wait for messages (long polling); zero: answer at once.
    pub poll: Duration,
    pub init_mode: i32,
    pub expression: String,
    pub expression_type: String,
    /// FIFO: one batch per queue in flight.
    pub order: bool,
    pub attempt_id: Option<String>,
}

impl PopMessageRequest {
    /// POP_MESSAGE's header.
    pub fn parse(req: &RemotingCommand) -> Result<PopMessageRequest, BrokerError> {
        Ok(PopMessageRequest {
            group: req.str_field("consumerGroup")?.to_string(),
            topic: req.str_field("topic")?.to_string(),
            queue_id: req.i32_field("queueId")?,
            max_msgs: req.i32_field("maxMsgNums")?.max(0) as usize,
            invisible_ms: req.i64_field("invisibleTime")?.max(0) as u64,
            poll: Duration::from_millis(req.opt_i64_field("pollTime")?.unwrap_or(0).max(0) as u64),
            init_mode: req.opt_i32_field("initMode")?.unwrap_or(INIT_MODE_MIN),
            expression: req.field("exp").filter(|e| !e.trim().is_empty()).unwrap_or("*").to_string(),
            expression_type: req.field("expType").unwrap_or("TAG").to_string(),
            order: req.opt_bool_field("order")?.unwrap_or(false),
            attempt_id: req.field("attemptId").filter(|a| !a.is_empty()).map(str::to_string),
        })
    }
}

/// POP_MESSAGE (200050): the remoting front end of [`pop`].
pub async fn handle_pop(
    state: &Arc<BrokerState>,
    origin: &Origin<'_>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    let h = PopMessageRequest::parse(req)?;
    Ok(match pop(state, origin, h).await {
        Ok(mut popped) => {
            // The answer's bytes stay set aside until it is written.
            if let (Some(conn), Some(r)) = (origin.connection, popped.reservation.take()) {
                conn.hold_until_answered(req.opaque, r);
            }
            popped.response(req)
        }
        Err(refusal) => refusal.response(req),
    })
}

/// Hands out up to `max_msgs` messages of one queue, or of the first queue
/// here that has any, waiting up to the poll time for them: what is visible
/// again first, then new messages. Each is hidden for the invisible time
/// under a new receipt handle, durably, before it is handed out. No
/// message is a refusal with PULL_NOT_FOUND (no wait asked) or
/// POLLING_TIMEOUT.
pub async fn pop(state: &Arc<BrokerState>, origin: &Origin<'_>, h: PopMessageRequest) -> Result<Popped, Refusal> {
    if let Err(e) = crate::names::validate_group(&h.group) {
        return Err(Refusal::new(response::INVALID_PARAMETER, e));
    }
    if h.group.len() > POP_GROUP_MAX_LEN {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("a pop group's name is at most {POP_GROUP_MAX_LEN} characters (its DLQ topic must be a name)"),
        ));
    }
    if h.attempt_id.as_ref().is_some_and(|a| a.len() > ATTEMPT_ID_MAX_LEN) {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("attemptId is longer than {ATTEMPT_ID_MAX_LEN} characters"),
        ));
    }
    let limits = &state.pop.limits;
    if h.max_msgs == 0 || h.max_msgs > limits.max_batch {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("maxMsgNums {} is out of range 1..={}", h.max_msgs, limits.max_batch),
        ));
    }
    if h.invisible_ms == 0 || h.invisible_ms > limits.max_invisible_ms {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!(
                "invisibleTime {} ms is out of range 1..={} (maxInvisibleTimeMills)",
                h.invisible_ms, limits.max_invisible_ms
            ),
        ));
    }
    let tc = match crate::pull::readable_topic(state, &h.topic) {
        Ok(tc) => tc,
        Err((code, remark)) => return Err(Refusal::new(code, remark)),
    };
    if h.queue_id < -1 || h.queue_id >= tc.read_queue_nums {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("queueId[{}] is illegal, topic[{}] has {} read queues", h.queue_id, h.topic, tc.read_queue_nums),
        ));
    }
    let selector = match crate::pull::selector(state, &h.expression, &h.expression_type) {
        Ok(s) => s,
        Err((code, remark)) => return Err(Refusal::new(code, remark)),
    };
    if state.groups.ensure(&h.group, state.config.read().auto_create_subscription_group) {
        state.persist_groups_soon();
    }
    if state.groups.get(&h.group).is_none() {
        return Err(Refusal::new(
            response::SUBSCRIPTION_GROUP_NOT_EXIST,
            format!("subscription group [{}] does not exist", h.group),
        ));
    }
    let queues: Vec<i32> = if h.queue_id >= 0 {
        vec![h.queue_id]
    } else if tc.read_queue_nums <= 0 {
        Vec::new()
    } else {
        let n = tc.read_queue_nums;
        let first = (state.pop.next_queue.fetch_add(1, Ordering::Relaxed) % n as u64) as i32;
        (0..n).map(|i| (first + i) % n).collect()
    };
    let deadline = Instant::now() + h.poll.min(MAX_POLL);
    let mut slot = None;
    let mut last_look = false;
    loop {
        // Subscribe before reading, so a message stored, revived or freed
        // (a FIFO batch acked) in between wakes us: each bumps its queue.
        let mut watches: Vec<_> = queues.iter().map(|q| state.long_poll.subscribe(&h.topic, *q)).collect();
        for rx in &mut watches {
            rx.borrow_and_update();
        }
        // Every message acknowledged before this look is in its queue
        // (a bounded wait, once per look and outside the pop lock).
        crate::pull::wait_dispatched(state, state.store.max_offset()).await;
        // The answer's bytes (about `maxTransferBytesOnMessageInMemory`:
        // what is visible again, then new messages in the bytes left) are
        // set aside in the connection's outbound budget first, as a pull's
        // are: a peer that pipelines pops and reads no answers waits on its
        // own connection. Not held while the pop waits for messages.
        let answer_bytes =
            state.store.config().max_transfer_bytes_on_message_in_memory + crate::pull::ANSWER_HEADER_BYTES;
        let reserved = match origin.connection {
            Some(conn) => Some(crate::pull::set_aside(conn, answer_bytes).await?),
            None => None,
        };
        let mut full = None;
        for &queue_id in &queues {
            match pop_queue(state, &h, queue_id, &selector).await {
                Ok(Some(mut popped)) => {
                    popped.reservation = reserved;
                    return Ok(popped);
                }
                Ok(None) => {}
                // One queue at its in-flight bound: the others may still give.
                Err(Refusal { code: response::POLLING_FULL, remark }) if queues.len() > 1 => full = Some(remark),
                Err(refused) => return Err(refused),
            }
        }
        if let Some(remark) = full.filter(|_| h.poll.is_zero() || last_look) {
            return Err(Refusal::new(response::POLLING_FULL, remark));
        }
        drop(reserved);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || last_look || watches.is_empty() {
            return Err(not_found(h.poll.is_zero()));
        }
        if slot.is_none() {
            slot = state.long_poll.hold();
            if slot.is_none() {
                return Err(Refusal::new(response::POLLING_FULL, "too many pops and pulls are waiting"));
            }
        }
        let changed = watches.iter_mut().map(|rx| Box::pin(rx.changed()));
        tokio::select! {
            _ = futures_util::future::select_all(changed) => {}
            // One last look when the poll time is up.
            _ = tokio::time::sleep(left) => last_look = true,
            _ = origin.closed() => return Err(not_found(false)),
        }
    }
}

/// Wakes pops waiting on a queue (a message there became visible again,
/// or its FIFO batch was acked).
fn wake_queue(state: &BrokerState, topic: &str, queue_id: i32) {
    state.long_poll.notify(topic, queue_id, state.store.max_offset_in_queue(topic, queue_id));
}

fn not_found(immediate: bool) -> Refusal {
    let code = if immediate { response::PULL_NOT_FOUND } else { response::POLLING_TIMEOUT };
    Refusal::new(code, "no new message")
}

/// What one pop handed out.
pub struct Popped {
    /// When (the handles' stamp).
    pub pop_time: u64,
    pub invisible_ms: u64,
    /// Messages left in the queue past the pop offset.
    pub rest: i64,
    start_info: String,
    offset_info: String,
    order_info: Option<String>,
    /// The messages as stored, each with its receipt handle in `POP_CK`.
    pub body: BytesMut,
    /// The answer's bytes set aside in the remoting connection's outbound budget.
    pub reservation: Option<OutboundReservation>,
}

impl Popped {
    /// POP_MESSAGE's answer.
    fn response(self, req: &RemotingCommand) -> RemotingCommand {
        let mut resp = RemotingCommand::success(req)
            .with("popTime", self.pop_time)
            .with("invisibleTime", self.invisible_ms)
            .with("reviveQid", 0)
            .with("restNum", self.rest)
            .with("startOffsetInfo", self.start_info)
            .with("msgOffsetInfo", self.offset_info);
        if let Some(o) = self.order_info {
            resp = resp.with("orderCountInfo", o);
        }
        resp.body = self.body.freeze();
        resp
    }
}

/// One queue's pop: what is visible again first, then new messages the
/// selector matches. `None` when it has nothing to hand out. Whatever it
/// changed (revives, seeks, the pop) is journaled before it answers, also
/// when it answers with an error.
async fn pop_queue(
    state: &Arc<BrokerState>,
    h: &PopMessageRequest,
    queue_id: i32,
    selector: &Selector,
) -> Result<Option<Popped>, Refusal> {
    let key = QueueKey { group: h.group.clone(), topic: h.topic.clone(), queue_id };
    let mut ps = state.pop.lock(state).await?;
    let now = crate::schedule::now_ms().max(0) as u64;
    let mut records = revive_due(state, &mut ps, now).await;
    let taken = take(state, &mut ps, &key, h, now, selector, &mut records).await;
    let progress = ps.progress(&key);
    if !records.is_empty() {
        if let Some(p) = &progress {
            state.offsets.commit(&h.group, &h.topic, queue_id, p.done_below);
        }
    }
    let written = journal(state, &records).await.map_err(|e| Refusal::new(response::SYSTEM_ERROR, e.to_string()))?;
    drop(ps);
    state.pop.wake.notify_one();
    // Not durable: the messages stay held and come back when their
    // invisible time passes; this pop hands out nothing.
    durable(state, written).await?;
    let Taken { deliveries, body, listed } = taken?;
    if listed.is_empty() {
        return Ok(None);
    }
    let max = state.store.max_offset_in_queue(&h.topic, queue_id);
    let rest = max - progress.map_or(max, |p| p.pop_offset);
    let start_info = format!("0 {queue_id} {}", listed[0]);
    let offset_info = format!("0 {queue_id} {}", listed.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(","));
    // FIFO: each redelivered message's count, then the batch's smallest.
    let order_info = h.order.then(|| {
        let mut parts: Vec<String> = deliveries
            .iter()
            .filter(|d| d.attempt > 1)
            .map(|d| format!("0 qo{queue_id}%{} {}", d.offset, d.attempt - 1))
            .collect();
        let min = deliveries.iter().map(|d| d.attempt.saturating_sub(1)).min().unwrap_or(0);
        parts.push(format!("0 {queue_id} {min}"));
        parts.join(";")
    });
    // A FIFO retry gets its batch back with the time it has left, not anew.
    let invisible_ms = deliveries.iter().map(|d| d.visible_at.saturating_sub(now)).min().unwrap_or(h.invisible_ms);
    Ok(Some(Popped { pop_time: now, invisible_ms, rest, start_info, offset_info, order_info, body, reservation: None }))
}

struct Taken {
    deliveries: Vec<Delivery>,
    body: BytesMut,
    /// Offsets in the body, in order.
    listed: Vec<i64>,
}

/// The pop itself, under the lock; its changes' records go to `records`.
async fn take(
    state: &Arc<BrokerState>,
    ps: &mut PopState,
    key: &QueueKey,
    h: &PopMessageRequest,
    now: u64,
    selector: &Selector,
    records: &mut Vec<PopRecord>,
) -> Result<Taken, Refusal> {
    let (topic, queue_id) = (&h.topic, key.queue_id);
    let (min, max) = (
        state.store.min_offset_in_queue(topic, queue_id).max(0),
        state.store.max_offset_in_queue(topic, queue_id).max(0),
    );
    if !ps.is_known(key) {
        let start = match state.offsets.query(&h.group, topic, queue_id) {
            Some(o) => o,
            None if h.init_mode == INIT_MODE_MIN => min,
            None => max,
        };
        ps.start_at(key, start.clamp(min, max.max(min)));
    }
    let from = ps.progress(key).map_or(min, |p| p.pop_offset);
    // The queue no longer reaches the pop offset (its log was cut by a
    // failover), or its first messages are gone (retention): move to where
    // it is. New messages past a cut are new, not skipped.
    let from = if from > max {
        records.push(ps.seek(key, max));
        max
    } else if from < min {
        records.push(ps.seek(key, min));
        min
    } else {
        from
    };
    // What is visible again goes first, read one by one: no more of it than
    // `maxTransferBytesOnMessageInMemory` holds (at least one message), as
    // one read of new messages is bounded.
    let cap = state.store.config().max_transfer_bytes_on_message_in_memory;
    let mut found: HashMap<i64, Vec<u8>> = HashMap::new();
    let (mut batch, mut bytes) = (h.max_msgs, 0usize);
    // Only what this pop can hand out: within the queue's in-flight room,
    // and nothing while a FIFO queue's batch is out (the same batch is
    // read again below for a retried attempt).
    let in_flight = ps.progress(key).map_or(0, |p| p.in_flight);
    let room = state.pop.limits.inflight_per_queue.saturating_sub(in_flight);
    let prefetch = if h.order && in_flight > 0 { 0 } else { h.max_msgs.min(room) };
    for (i, o) in ps.visible_again(key, prefetch).into_iter().enumerate() {
        if bytes >= cap {
            batch = i;
            break;
        }
        if let Some(raw) =
            read(state, topic, queue_id, o, 1, None, cap).await.ok().and_then(|g| g.messages.into_iter().next())
        {
            bytes += raw.len();
            found.insert(o, raw);
        }
    }
    // New messages from the pop offset, the selector applied by the store,
    // in the bytes left.
    let room = batch.saturating_sub(found.len());
    let mut matched = Vec::new();
    let mut end = from;
    if room > 0 && bytes < cap {
        let new = read(state, topic, queue_id, from, room, Some(selector.clone()), cap - bytes)
            .await
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("reading {topic}:{queue_id} failed: {e}")))?;
        for raw in new.messages {
            if let Some(o) = raw.get(QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8) {
                let o = i64::from_be_bytes(o.try_into().unwrap_or([0; 8]));
                matched.push(o);
                found.insert(o, raw);
            }
        }
        end = new.next_begin_offset.max(from);
    }
    let mut it = matched.into_iter();
    let req = PopRequest { batch, invisible_ms: h.invisible_ms, fifo: h.order, attempt_id: h.attempt_id.as_deref() };
    let (deliveries, record) = match ps.pop(key, now, &req, |_| it.next().map_or(Next::End(end), Next::Match)) {
        Ok(x) => x,
        Err(e @ PopError::TooManyInFlight { .. }) => return Err(Refusal::new(response::POLLING_FULL, e.to_string())),
        Err(e) => return Err(Refusal::new(response::INVALID_PARAMETER, e.to_string())),
    };
    if matches!(&record, PopRecord::Pop { offsets, next, .. } if !offsets.is_empty() || *next != from) {
        records.push(record);
    }
    let mut body = BytesMut::new();
    let mut listed = Vec::new();
    for d in &deliveries {
        let raw = match found.remove(&d.offset) {
            Some(r) => Some(r),
            // Visible again (or a FIFO attempt's batch): read it by offset.
            None => read(state, topic, queue_id, d.offset, 1, None, cap)
                .await
                .ok()
                .and_then(|g| g.messages.into_iter().next()),
        };
        let handle = ReceiptHandle {
            start_offset: deliveries.first().map_or(d.offset, |f| f.offset),
            stamp: d.stamp,
            invisible_ms: d.visible_at.saturating_sub(now),
            retry: RetryKind::Normal,
            broker_name: state.broker_name.clone(),
            queue_id,
            offset: d.offset,
        };
        match raw.as_deref().and_then(|r| with_handle(r, d, &handle)) {
            Some(encoded) => {
                body.extend_from_slice(&encoded);
                listed.push(d.offset);
            }
            None => {
                // Its data is gone (retention): finished, not redelivered.
                if let Ok(r) = ps.ack(key, d.offset, d.stamp) {
                    records.push(r);
                }
            }
        }
    }
    Ok(Taken { deliveries, body, listed })
}

/// A stored message as a pop hands it out: its receipt handle in `POP_CK`,
/// the redeliveries so far as its reconsume times, everything else as stored.
fn with_handle(raw: &[u8], d: &Delivery, handle: &ReceiptHandle) -> Option<Vec<u8>> {
    // A read by offset skips a hole to the next message: that is not this one.
    let rec = message::decode_record(raw, false).ok().filter(|r| r.queue_offset == d.offset)?;
    let handle = handle.to_string();
    let props: Vec<(&str, &str)> = message::properties(rec.properties)
        .filter(|(k, _)| *k != POP_CK)
        .chain(std::iter::once((POP_CK, handle.as_str())))
        .collect();
    let msg = NewMessage {
        topic: rec.topic.to_string(),
        queue_id: rec.queue_id,
        flag: rec.flag,
        body: bytes::Bytes::copy_from_slice(rec.body),
        properties: message::encode_properties(props).ok()?,
        sys_flag: rec.sys_flag,
        born_timestamp: rec.born_timestamp,
        born_host: rec.born_host,
        store_host: rec.store_host,
        reconsume_times: rec.reconsume_times.max(d.attempt.saturating_sub(1) as i32),
        prepared_tx_offset: rec.prepared_tx_offset,
    };
    let mut out = Vec::with_capacity(raw.len() + 64);
    let slots = message::encode_record(&msg, usize::MAX, &mut out).ok()?;
    message::patch_record(&mut out, slots, rec.queue_offset, rec.physical_offset, rec.store_timestamp);
    debug_assert_eq!(
        out.get(PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8),
        raw.get(PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8)
    );
    Some(out)
}

async fn read(
    state: &Arc<BrokerState>,
    topic: &str,
    queue_id: i32,
    offset: i64,
    max_msgs: usize,
    selector: Option<Selector>,
    max_bytes: usize,
) -> Result<spate_store::GetResult, BrokerError> {
    let store = state.store.clone();
    let limit = crate::pull::read_limit(state);
    let limits = ReadLimits { max_msgs, max_bytes, physical_end: limit.unwrap_or(u64::MAX) };
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || match selector {
        Some(s) => {
            let (codes, by_properties) = s.filters();
            store.get_messages_within(&topic, queue_id, offset, limits, Some(&codes), Some(&by_properties))
        }
        None => store.get_messages_within(&topic, queue_id, offset, limits, None, None),
    })
    .await
    .map_err(|e| BrokerError::Config(format!("pop read task failed: {e}")))?
    .map_err(BrokerError::from)
}

/// Makes what is due visible again, or moves it to the group's DLQ;
/// returns the records of the dead-lettered ones (journal them).
async fn revive_due(state: &Arc<BrokerState>, ps: &mut PopState, now: u64) -> Vec<PopRecord> {
    let revived = ps.revive(now, |group| state.groups.get(group).map_or(16, |g| g.retry_max_times.max(0) as u32));
    let mut records = Vec::new();
    let mut woken = std::collections::HashSet::new();
    for r in &revived {
        if !r.to_dlq {
            state.metrics.pop_revive_lateness.observe(Duration::from_millis(now.saturating_sub(r.due)));
            state.pop.counters.revived.fetch_add(1, Ordering::Relaxed);
            *state.pop.counters.revived_by_group.lock().entry(r.key.group.clone()).or_default() += 1;
            if woken.insert((r.key.topic.clone(), r.key.queue_id)) {
                wake_queue(state, &r.key.topic, r.key.queue_id);
            }
            continue;
        }
        match dead_letter(state, &r.key, r.offset, r.attempt).await {
            Ok(()) => {
                state.pop.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                records.extend(r.record());
            }
            Err(e) => {
                // Held again and tried later; nothing is journaled, so a
                // replay meanwhile revives it again too.
                ps.reinstate(r, now, now + DLQ_RETRY_BACKOFF.as_millis() as u64);
                tracing::warn!(group = %r.key.group, topic = %r.key.topic, queue = r.key.queue_id, offset = r.offset, error = %e, "moving a message to the DLQ failed; retried later");
            }
        }
    }
    records
}

/// Copies a message to `%DLQ%group` (created readable on first use).
async fn dead_letter(state: &Arc<BrokerState>, key: &QueueKey, offset: i64, attempts: u32) -> Result<(), BrokerError> {
    let got = read(state, &key.topic, key.queue_id, offset, 1, None, 1).await?;
    let Some(raw) = got.messages.into_iter().next() else {
        return Ok(()); // retained away: nothing to copy
    };
    let rec = message::decode_record(&raw, false).map_err(|e| BrokerError::Config(e.to_string()))?;
    if rec.queue_offset != offset {
        return Ok(()); // retained away: the read skipped to a later message
    }
    let target = dlq_topic(&key.group);
    message::validate_topic(&target).map_err(|e| BrokerError::Config(e.to_string()))?;
    if state.topics.get(&target).is_none() {
        if !state.topics.upsert(TopicConfig::new(&target, 1, perm::READ | perm::WRITE)) {
            return Err(BrokerError::Config(format!("cannot create {target}: topic table full")));
        }
        state.topics.persist().await?;
        state.topics_changed();
    }
    let origin_id = message::offset_msg_id(rec.store_host, rec.physical_offset as u64);
    let msg = NewMessage {
        topic: target,
        queue_id: 0,
        flag: rec.flag,
        body: bytes::Bytes::copy_from_slice(rec.body),
        properties: crate::send::retry_properties(rec.properties, &key.topic, &origin_id),
        sys_flag: rec.sys_flag,
        born_timestamp: rec.born_timestamp,
        born_host: rec.born_host,
        store_host: state.broker_addr,
        reconsume_times: attempts.min(i32::MAX as u32) as i32,
        prepared_tx_offset: 0,
    };
    crate::send::put_one(state, msg).await?;
    Ok(())
}

/// A popped message named by its queue and receipt handle: what an ack or
/// an invisible-time change acts on.
#[derive(Debug, Clone)]
pub struct ReceiptRequest {
    pub group: String,
    pub topic: String,
    pub queue_id: i32,
    pub offset: i64,
    /// The receipt handle as handed out (`extraInfo`).
    pub handle: String,
}

impl ReceiptRequest {
    /// ACK_MESSAGE's and CHANGE_MESSAGE_INVISIBLETIME's header.
    pub fn parse(req: &RemotingCommand) -> Result<ReceiptRequest, Refusal> {
        let bad = |e: spate_remoting::HeaderError| Refusal::new(response::INVALID_PARAMETER, e.to_string());
        Ok(ReceiptRequest {
            group: req.str_field("consumerGroup").map_err(bad)?.to_string(),
            topic: req.str_field("topic").map_err(bad)?.to_string(),
            handle: req.str_field("extraInfo").map_err(bad)?.to_string(),
            queue_id: req.i32_field("queueId").map_err(bad)?,
            offset: req.i64_field("offset").map_err(bad)?,
        })
    }

    /// The message a receipt handle names, in `group` and `topic` (gRPC's
    /// requests carry the handle alone).
    pub fn of_handle(group: &str, topic: &str, handle: &str) -> Result<ReceiptRequest, Refusal> {
        let h = ReceiptHandle::parse(handle)
            .map_err(|e| Refusal::new(response::INVALID_PARAMETER, format!("invalid receipt handle: {e}")))?;
        Ok(ReceiptRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            queue_id: h.queue_id,
            offset: h.offset,
            handle: handle.to_string(),
        })
    }
}

/// ACK_MESSAGE (200051): the remoting front end of [`ack`].
pub async fn handle_ack(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let done = match ReceiptRequest::parse(req) {
        Ok(r) => ack(state, &r).await,
        Err(refusal) => Err(refusal),
    };
    Ok(match done {
        Ok(()) => RemotingCommand::success(req),
        Err(refusal) => refusal.response(req),
    })
}

/// Acknowledges a popped message, durably: it is never handed out again.
/// A stale handle (acked, popped again or changed since) is NO_MESSAGE.
pub async fn ack(state: &Arc<BrokerState>, r: &ReceiptRequest) -> Result<(), Refusal> {
    let (key, handle) = handle_of(state, r)?;
    let mut ps = state.pop.lock(state).await?;
    let record =
        ps.ack(&key, handle.offset, handle.stamp).map_err(|e| Refusal::new(response::NO_MESSAGE, stale_remark(&e)))?;
    if let Some(p) = ps.progress(&key) {
        state.offsets.commit(&key.group, &key.topic, key.queue_id, p.done_below);
    }
    let written = journal(state, std::slice::from_ref(&record)).await?;
    drop(ps);
    durable(state, written).await?;
    state.pop.counters.acked.fetch_add(1, Ordering::Relaxed);
    // A FIFO queue may hand out its next batch now.
    wake_queue(state, &key.topic, key.queue_id);
    Ok(())
}

/// Most entries one BATCH_ACK_MESSAGE may carry.
const BATCH_ACK_MAX_ENTRIES: usize = 1024;

/// Most bytes of one entry's bit set (each bit one message after its start offset).
const BATCH_ACK_MAX_BITSET_BYTES: usize = 512;

/// One entry of BATCH_ACK_MESSAGE's body (fastjson's short names; the
/// long ones accepted too, as upstream's reader does).
#[derive(serde::Deserialize)]
struct BatchAckEntry {
    #[serde(alias = "consumerGroup")]
    c: String,
    #[serde(alias = "topic")]
    t: String,
    #[serde(alias = "startOffset")]
    so: i64,
    #[serde(alias = "queueId")]
    q: i32,
    #[serde(alias = "popTime")]
    pt: u64,
    /// Base64 of Java's `BitSet.toByteArray()` (little-endian bits).
    #[serde(alias = "bitSet")]
    b: String,
}

#[derive(serde::Deserialize)]
struct BatchAckBody {
    #[serde(default)]
    acks: Vec<BatchAckEntry>,
}

/// BATCH_ACK_MESSAGE (200151): many acks in one request, as upstream's
/// clients send them (grouped by queue, start offset and pop time, one bit
/// per message after the start). Each ack is checked like a single one;
/// stale ones are skipped (upstream answers the batch as a whole).
pub async fn batch_ack(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    use base64::Engine as _;
    let body: BatchAckBody = match serde_json::from_slice(&req.body) {
        Ok(b) => b,
        Err(e) => return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("batch ack body: {e}"))),
    };
    if body.acks.is_empty() || body.acks.len() > BATCH_ACK_MAX_ENTRIES {
        return Ok(RemotingCommand::error(
            req,
            response::INVALID_PARAMETER,
            format!("a batch ack carries 1..={BATCH_ACK_MAX_ENTRIES} entries, not {}", body.acks.len()),
        ));
    }
    let mut wanted = Vec::new();
    for e in &body.acks {
        let bits = match base64::engine::general_purpose::STANDARD.decode(&e.b) {
            Ok(b) if b.len() <= BATCH_ACK_MAX_BITSET_BYTES => b,
            _ => {
                return Ok(RemotingCommand::error(
                    req,
                    response::INVALID_PARAMETER,
                    format!("batch ack bit set is not Base64 of at most {BATCH_ACK_MAX_BITSET_BYTES} bytes"),
                ))
            }
        };
        if crate::names::validate_group(&e.c).is_err() || message::validate_topic(&e.t).is_err() || e.q < 0 || e.so < 0
        {
            return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, "batch ack entry names no queue"));
        }
        let key = QueueKey { group: e.c.clone(), topic: e.t.clone(), queue_id: e.q };
        for (i, byte) in bits.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    wanted.push((key.clone(), e.so.saturating_add((i * 8 + bit) as i64), e.pt));
                }
            }
        }
    }
    let mut ps = match state.pop.lock(state).await {
        Ok(ps) => ps,
        Err(refusal) => return Ok(refusal.response(req)),
    };
    // One journal record per queue, however many acks it has.
    let mut by_queue: std::collections::BTreeMap<QueueKey, Vec<(i64, u64)>> = Default::default();
    for (key, offset, stamp) in wanted {
        if ps.ack(&key, offset, stamp).is_ok() {
            by_queue.entry(key).or_default().push((offset, stamp));
        }
    }
    let acked = by_queue.values().map(Vec::len).sum::<usize>() as u64;
    let keys: Vec<QueueKey> = by_queue.keys().cloned().collect();
    let records: Vec<PopRecord> = by_queue
        .into_iter()
        .map(|(k, acks)| PopRecord::AckMany { group: k.group, topic: k.topic, queue_id: k.queue_id, acks })
        .collect();
    for key in &keys {
        if let Some(p) = ps.progress(key) {
            state.offsets.commit(&key.group, &key.topic, key.queue_id, p.done_below);
        }
    }
    let written = journal(state, &records).await?;
    drop(ps);
    if let Err(refusal) = durable(state, written).await {
        return Ok(refusal.response(req));
    }
    state.pop.counters.acked.fetch_add(acked, Ordering::Relaxed);
    for key in &keys {
        wake_queue(state, &key.topic, key.queue_id);
    }
    Ok(RemotingCommand::success(req))
}

/// CHANGE_MESSAGE_INVISIBLETIME (200053): the remoting front end of
/// [`change_invisible`]; the answer's `popTime` stamps the new handle.
pub async fn handle_change_invisible(
    state: &Arc<BrokerState>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    let invisible_ms = req.i64_field("invisibleTime")?;
    let changed = match ReceiptRequest::parse(req) {
        Ok(r) => change_invisible(state, &r, invisible_ms).await,
        Err(refusal) => Err(refusal),
    };
    Ok(match changed {
        Ok(h) => RemotingCommand::success(req)
            .with("popTime", h.stamp)
            .with("invisibleTime", h.invisible_ms)
            .with("reviveQid", 0),
        Err(refusal) => refusal.response(req),
    })
}

/// A new invisible time from now for a popped message, and its new handle;
/// the old handle stops working.
pub async fn change_invisible(
    state: &Arc<BrokerState>,
    r: &ReceiptRequest,
    invisible_ms: i64,
) -> Result<ReceiptHandle, Refusal> {
    let (key, handle) = handle_of(state, r)?;
    let max = state.pop.limits.max_invisible_ms;
    let Some(invisible_ms) = u64::try_from(invisible_ms).ok().filter(|i| *i <= max) else {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("invisibleTime {invisible_ms} ms is out of range 0..={max} (maxInvisibleTimeMills)"),
        ));
    };
    let mut ps = state.pop.lock(state).await?;
    let now = crate::schedule::now_ms().max(0) as u64;
    let (d, record) = ps
        .change_invisible(&key, handle.offset, handle.stamp, now, invisible_ms)
        .map_err(|e| Refusal::new(response::NO_MESSAGE, stale_remark(&e)))?;
    let written = journal(state, std::slice::from_ref(&record)).await?;
    drop(ps);
    state.pop.wake.notify_one();
    durable(state, written).await?;
    Ok(ReceiptHandle { stamp: d.stamp, invisible_ms, ..handle })
}

/// How long a message is hidden while it is copied to the DLQ by
/// [`forward_to_dlq`] (at most `maxInvisibleTimeMills`): if the broker
/// stops in between, it comes back then.
const DLQ_FORWARD_HIDE_MS: u64 = 5 * 60 * 1000;

/// A consumer gives up on a message (gRPC's
/// ForwardMessageToDeadLetterQueue): hidden first under its current handle
/// (which checks the handle), copied to `%DLQ%group`, then acked. A crash
/// in between delivers it again later; it is never lost.
pub async fn forward_to_dlq(state: &Arc<BrokerState>, r: &ReceiptRequest, attempts: u32) -> Result<(), Refusal> {
    let hide_ms = DLQ_FORWARD_HIDE_MS.min(state.pop.limits.max_invisible_ms);
    let renewed = change_invisible(state, r, hide_ms as i64).await?;
    let key = QueueKey { group: r.group.clone(), topic: r.topic.clone(), queue_id: r.queue_id };
    dead_letter(state, &key, r.offset, attempts).await?;
    ack(state, &ReceiptRequest { handle: renewed.to_string(), ..r.clone() }).await
}

fn stale_remark(e: &PopError) -> String {
    format!("{e}: the message was acked, popped again, changed or never handed out with this handle")
}

/// The queue and handle an ack or change names; a refusal for a handle
/// that is malformed, for another broker, or for another queue.
fn handle_of(state: &BrokerState, r: &ReceiptRequest) -> Result<(QueueKey, ReceiptHandle), Refusal> {
    let bad = |e: String| Refusal::new(response::INVALID_PARAMETER, e);
    let handle = ReceiptHandle::parse(&r.handle).map_err(|e| bad(format!("invalid receipt handle: {e}")))?;
    if handle.queue_id != r.queue_id || handle.offset != r.offset {
        return Err(bad(format!(
            "invalid receipt handle: it names queue {} offset {}, the request {} {}",
            handle.queue_id, handle.offset, r.queue_id, r.offset
        )));
    }
    if handle.broker_name != state.broker_name {
        return Err(bad(format!(
            "invalid receipt handle: issued by broker {}, not {}",
            handle.broker_name, state.broker_name
        )));
    }
    Ok((QueueKey { group: r.group.clone(), topic: r.topic.clone(), queue_id: r.queue_id }, handle))
}

/// SPATE_GET_POP_PROGRESS (924): per queue of the group, the pop offset,
/// the broker's end, in-flight and visible-again counts, the oldest
/// in-flight message's age; the group's redeliveries and DLQ size.
pub async fn progress(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?.to_string();
    let rows = match state.pop.lock(state).await {
        Ok(ps) => ps.group_progress(&group),
        Err(refusal) => return Ok(refusal.response(req)),
    };
    if rows.is_empty() {
        return Ok(RemotingCommand::error(
            req,
            response::CONSUMER_NOT_ONLINE,
            format!("group {group} has no pop state on this broker"),
        ));
    }
    let now = crate::schedule::now_ms().max(0) as u64;
    let queues: Vec<serde_json::Value> = rows
        .iter()
        .map(|(k, p)| {
            serde_json::json!({
                "topic": k.topic,
                "queueId": k.queue_id,
                "popOffset": p.pop_offset,
                "doneBelow": p.done_below,
                "brokerOffset": state.store.max_offset_in_queue(&k.topic, k.queue_id),
                "inFlight": p.in_flight,
                "visibleAgain": p.visible_again,
                "oldestInFlightAgeMs": p.oldest_popped_at.map(|t| now.saturating_sub(t)),
            })
        })
        .collect();
    let revived = state.pop.counters.revived_by_group.lock().get(&group).copied().unwrap_or(0);
    let dlq = state.store.max_offset_in_queue(&dlq_topic(&group), 0).max(0);
    let clients: Vec<serde_json::Value> = state
        .grpc
        .consumers_of(&group)
        .iter()
        .map(|s| {
            serde_json::json!({"clientId": s.client_id, "addr": s.peer.to_string(), "protocol": "gRPC",
            "language": s.language, "version": s.version})
        })
        .collect();
    let body = serde_json::json!({"group": group, "broker": state.broker_name, "queues": queues,
        "redelivered": revived, "deadLettered": dlq, "clients": clients});
    Ok(RemotingCommand::success(req).with_body(serde_json::to_vec(&body).unwrap_or_default()))
}

/// A deleted topic's pop state goes, for every group (journaled, so a
/// topic made again with the name starts afresh after a restart too).
pub async fn forget_topic(state: &Arc<BrokerState>, topic: &str) {
    let Ok(mut ps) = state.pop.lock(state).await else { return };
    if !ps.has_topic(topic) {
        return;
    }
    let record = ps.forget_topic(topic);
    match journal(state, std::slice::from_ref(&record)).await {
        Ok(written) => {
            drop(ps);
            if let Some((flush, _)) = written {
                if let Err(e) = flush.wait().await {
                    tracing::warn!(%topic, error = %e, "the pop state's removal was not flushed");
                }
            }
        }
        Err(e) => tracing::warn!(%topic, error = %e, "journaling the pop state's removal failed"),
    }
}

/// Revives what is due on time (an ordered index, woken at the next due
/// time) and writes snapshots, on a master; sleeps on a slave.
pub async fn run_revive(state: Arc<BrokerState>) {
    let mut last_snapshot = Instant::now();
    loop {
        let (interval, every) = {
            let c = state.config.read();
            (c.pop_snapshot_interval, c.pop_snapshot_records)
        };
        let mut sleep = REVIVE_IDLE.min(interval);
        if let Ok(mut ps) = state.pop.lock(&state).await {
            let now = crate::schedule::now_ms().max(0) as u64;
            let records = revive_due(&state, &mut ps, now).await;
            if let Err(e) = journal(&state, &records).await {
                tracing::warn!(error = %e, "journaling dead-lettered pop messages failed");
            }
            let since = state.pop.since_snapshot.load(Ordering::Relaxed);
            if since >= every || (since > 0 && last_snapshot.elapsed() >= interval) {
                last_snapshot = Instant::now();
                snapshot(&state, ps).await;
            } else {
                let now = crate::schedule::now_ms().max(0) as u64;
                if let Some(due) = ps.next_due() {
                    sleep = sleep.min(Duration::from_millis(due.saturating_sub(now)));
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = state.pop.wake.notified() => {}
        }
    }
}

/// Writes the whole state to the journal and, once that is durable, moves
/// the replay's start to it.
async fn snapshot(state: &Arc<BrokerState>, ps: PopGuard<'_>) {
    let records = ps.snapshot();
    let queues = records.len();
    let now = crate::schedule::now_ms();
    let msgs: Vec<NewMessage> = records.iter().map(|r| journal::to_message(r, state.broker_addr, now)).collect();
    if msgs.is_empty() {
        return;
    }
    let put = crate::send::put_many(state, msgs).await;
    state.pop.since_snapshot.store(0, Ordering::Relaxed);
    drop(ps);
    let put = match put {
        Ok(p) => p,
        Err(e) => {
            let why = BrokerError::from(e);
            tracing::warn!(%why, "writing a pop state snapshot failed; the replay starts at the previous one");
            return;
        }
    };
    if let Err(e) = put.flush.wait().await {
        tracing::warn!(error = %e, "a pop state snapshot was not flushed; the replay starts at the previous one");
        return;
    }
    if let Some(first) = put.appends.first() {
        state.offsets.commit(journal::SNAPSHOT_GROUP, journal::JOURNAL_TOPIC, 0, first.queue_offset);
        // On disk now, not at the next offsets round: the replay is bounded from here.
        if let Err(e) = state.offsets.persist().await {
            tracing::warn!(error = %e, "persisting the pop snapshot's place failed; the next round retries");
        }
        tracing::info!(records = queues, at = first.queue_offset, "pop state snapshot written");
    }
}
