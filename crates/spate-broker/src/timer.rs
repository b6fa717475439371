//! Timer messages: delivery at an arbitrary time (upstream 5's
//! `TIMER_DELIVER_MS`, `TIMER_DELAY_SEC`, `TIMER_DELAY_MS`).
//!
//! A timer send is stored, acknowledged and replicated in the system topic
//! [`TIMER_TOPIC`] (queue 0), its real topic and queue in `REAL_TOPIC` /
//! `REAL_QID` and its due time in `TIMER_OUT_MS`, which the dispatcher
//! writes into the queue entry's tag-code slot. The deliverer keeps an
//! in-memory wheel of pending entries (due time and queue offset: 16 bytes
//! each, bounded by `timerMaxPendingInMemory`), fills it from the queue,
//! and moves each entry to its real topic once due, so pending messages
//! cost no timers and no reads until they are due.
//!
//! Durable progress is two offsets of the reserved group `%SCHEDULE%` on
//! [`TIMER_TOPIC`] (persisted and copied to slaves with the others):
//! - queue 0: the lowest queue offset that may still be pending, where a
//!   new master (or a restart) starts filling its wheel;
//! - queue 1: a time cursor: every timer message due before it has been
//!   delivered, so the refill skips those.
//!
//! The cursor only moves up to the earliest pending due time, to now, and
//! to the last moment the wheel was known to hold every stored entry, and
//! only after the delivered copies are flushed. A message is therefore
//! never skipped; after a crash a few may be delivered twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use spate_common::message::{self, property, NewMessage, TIMER_TOPIC};
use spate_store::{MessageStore, StoreError};

use crate::refusal::Refusal;
use crate::schedule::{delivering, now_ms, Due, SCHEDULE_GROUP};
use crate::BrokerState;

/// The offsets entry (group `%SCHEDULE%`, [`TIMER_TOPIC`]) holding the
/// lowest queue offset that may still be pending.
pub const SCAN_FROM_QUEUE: i32 = 0;
/// The offsets entry holding the delivered-before time cursor (ms).
pub const CURSOR_QUEUE: i32 = 1;
/// Width of one wheel slot.
const SLOT_MS: i64 = 10;
/// Most entries moved per round.
const ROUND_BATCH: usize = 512;
/// Most entries a round takes past [`ROUND_BATCH`] because they are due at
/// the same moment as its last (so a recall's marker meets its message):
/// bounded, so a million messages due at one millisecond still move in
/// bounded rounds (a recall among them may then miss; see ARCHITECTURE.md).
const SAME_DUE_EXTRA: usize = 4 * ROUND_BATCH;
/// Most queue entries read into the wheel per blocking read.
const FILL_BATCH: usize = 32 * 1024;
/// Longest sleep between rounds; a new timer message wakes the deliverer
/// at once (the dispatcher's notification), so this is only a safety net.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Pause after a failed round or while not delivering.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Least cursor movement written when nothing was delivered (a restart
/// may deliver again what fell due within it: at least once).
const CURSOR_IDLE_STEP_MS: i64 = 1000;
/// How often the lowest pending offset is recomputed (a walk of the wheel).
const SCAN_FROM_EVERY: Duration = Duration::from_secs(1);

/// The due time a send asks for, if it is a timer message: `Ok(None)` for
/// none, or a due time already past (delivered at once, as upstream);
/// an error for a value that is not a number or lies further ahead than
/// `max_delay`.
pub fn requested_due(properties: &str, now_ms: i64, max_delay: Duration) -> Result<Option<i64>, String> {
    let number = |key: &str| -> Result<Option<i64>, String> {
        match message::property(properties, key) {
            None => Ok(None),
            Some(v) => v.trim().parse::<i64>().map(Some).map_err(|_| format!("{key}={v} is not a number")),
        }
    };
    let due = if let Some(sec) = number(property::TIMER_DELAY_SEC)? {
        now_ms.saturating_add(sec.saturating_mul(1000))
    } else if let Some(ms) = number(property::TIMER_DELAY_MS)? {
        now_ms.saturating_add(ms)
    } else if let Some(at) = number(property::TIMER_DELIVER_MS)? {
        at
    } else {
        return Ok(None);
    };
    if due.saturating_sub(now_ms) > max_delay.as_millis() as i64 {
        return Err(format!(
            "timer message due {} ms from now; at most timerMaxDelaySec={} s ahead",
            due.saturating_sub(now_ms),
            max_delay.as_secs()
        ));
    }
    Ok((due > now_ms).then_some(due))
}

/// The property of a recall's marker: the key (`UNIQ_KEY`) of the
/// message of its real topic, due at the same time, not to deliver
/// (upstream's name).
pub const TIMER_DEL_UNIQKEY: &str = "TIMER_DEL_UNIQKEY";

/// Recalls are refused for a message due sooner than this: it may be on
/// its way already.
pub const RECALL_MIN_AHEAD_MS: i64 = 100;

/// Why a recall was refused.
#[derive(Debug, thiserror::Error)]
pub enum RecallError {
    #[error("the message is due in {0} ms or has been delivered: too late to recall")]
    TooLate(i64),
    #[error("{0}")]
    Put(String),
    #[error("no such pending message: {0}")]
    NotPending(String),
}

/// What a timer message's recall handle names, in upstream's form:
/// URL-safe Base64 (padded) of `v1 <topic> <broker> <due ms> <key>`. Opaque
/// to clients; a forged one can at most cancel a message of a topic the
/// caller may send to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallHandle {
    pub topic: String,
    pub broker_name: String,
    pub due_ms: i64,
    pub key: String,
}

impl RecallHandle {
    /// Longest handle text read.
    const MAX_LEN: usize = 1024;

    /// Whether the handle can be decoded again once encoded: its parts are
    /// separated by spaces, so none may hold one.
    pub fn encodable(&self) -> bool {
        [&self.topic, &self.broker_name, &self.key].iter().all(|p| !p.is_empty() && !p.contains([' ', '\n']))
    }

    pub fn encode(&self) -> String {
        use base64::Engine;
        let text = format!("v1 {} {} {} {}", self.topic, self.broker_name, self.due_ms, self.key);
        base64::engine::general_purpose::URL_SAFE.encode(text)
    }

    pub fn decode(handle: &str) -> Option<RecallHandle> {
        use base64::Engine;
        if handle.len() > Self::MAX_LEN {
            return None;
        }
        let unpadded = handle.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(unpadded).ok()?;
        let text = String::from_utf8(bytes).ok()?;
        // Handles this broker issued before it took upstream's form were
        // separated by newlines; they may still be pending.
        let sep = if text.contains('\n') { '\n' } else { ' ' };
        let mut parts = text.split(sep);
        if parts.next()? != "v1" {
            return None;
        }
        let (topic, broker_name, due, key) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || key.is_empty() || message::validate_topic(topic).is_err() {
            return None;
        }
        Some(RecallHandle {
            topic: topic.to_string(),
            broker_name: broker_name.to_string(),
            due_ms: due.parse().ok()?,
            key: key.to_string(),
        })
    }
}

/// RECALL_MESSAGE (370): the remoting front end of [`recall_by_handle`];
/// the answer's `msgId` is the recalled message's key.
pub async fn handle_recall(
    state: &Arc<BrokerState>,
    origin: &crate::origin::Origin<'_>,
    req: &spate_remoting::RemotingCommand,
) -> Result<spate_remoting::RemotingCommand, crate::error::BrokerError> {
    let topic = req.str_field("topic")?;
    let handle = req.str_field("recallHandle")?;
    let group = req.field("producerGroup").unwrap_or_default();
    Ok(match recall_by_handle(state, origin, group, topic, handle).await {
        Ok(key) => spate_remoting::RemotingCommand::success(req).with("msgId", key),
        Err(refusal) => refusal.response(req),
    })
}

/// Cancels the pending timer message a recall handle names, on this
/// broker: ILLEGAL_OPERATION for a handle that does not decode, names
/// another topic or broker, or comes too late (as upstream answers). A
/// recall is a write: it passes the topic's, group's and client's rate
/// limits and the send queue as a send does.
pub async fn recall_by_handle(
    state: &Arc<BrokerState>,
    origin: &crate::origin::Origin<'_>,
    group: &str,
    topic: &str,
    handle: &str,
) -> Result<String, Refusal> {
    use spate_remoting::response;
    if state.config.read().broker_role == crate::BrokerRole::Slave {
        return Err(Refusal::new(response::SLAVE_NOT_AVAILABLE, "this broker is a slave: recall on its master"));
    }
    let illegal = |why: String| Refusal::new(response::ILLEGAL_OPERATION, why);
    let h =
        RecallHandle::decode(handle).ok_or_else(|| illegal("the recall handle is not one a send answered".into()))?;
    if h.topic != topic {
        return Err(illegal(format!("the recall handle names topic {}, not {topic}", h.topic)));
    }
    if h.broker_name != state.broker_name {
        return Err(illegal(format!("the recall handle names broker {}, not {}", h.broker_name, state.broker_name)));
    }
    if state.topics.get(topic).is_none() {
        return Err(Refusal::new(response::TOPIC_NOT_EXIST, format!("topic {topic} does not exist")));
    }
    let op = crate::capacity::limits::Op::Send;
    drop(crate::capacity::admit(state, None, op, topic, group, &origin.client_id, 1).await?);
    match recall(state, &h.topic, &h.key, h.due_ms).await {
        Ok(()) => Ok(h.key),
        Err(e @ (RecallError::TooLate(_) | RecallError::NotPending(_))) => Err(illegal(e.to_string())),
        Err(e @ RecallError::Put(_)) => Err(Refusal::new(response::SYSTEM_ERROR, e.to_string())),
    }
}

/// Cancels a pending timer message of `topic` with key `uniq_key` due at
/// `due_ms`: a marker is stored (and replicated) in the timer queue with
/// the same due time, so the deliverer meets both in one round, after a
/// restart or a failover too, and delivers neither. The topic is the
/// caller's to check ([`recall_by_handle`]).
async fn recall(state: &Arc<BrokerState>, topic: &str, uniq_key: &str, due_ms: i64) -> Result<(), RecallError> {
    let ahead = due_ms.saturating_sub(now_ms());
    if ahead < RECALL_MIN_AHEAD_MS {
        return Err(RecallError::TooLate(ahead));
    }
    // No message can be due later than a send may ask for: a marker there
    // would only sit in the wheel.
    let max_delay = state.config.read().timer_max_delay;
    if ahead > max_delay.as_millis() as i64 {
        return Err(RecallError::NotPending(format!("due {ahead} ms from now, past timerMaxDelaySec")));
    }
    let properties = message::encode_properties([(property::UNIQ_KEY, uniq_key), (TIMER_DEL_UNIQKEY, uniq_key)])
        .map_err(|e| RecallError::Put(e.to_string()))?;
    let mut marker = NewMessage {
        topic: topic.to_string(),
        queue_id: 0,
        flag: 0,
        body: bytes::Bytes::from_static(b"recall"),
        properties,
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: state.broker_addr,
        store_host: state.broker_addr,
        reconsume_times: 0,
        prepared_tx_offset: 0,
    };
    to_waiting(&mut marker, due_ms);
    let put = crate::send::put_one(state, marker).await.map_err(|e| RecallError::Put(format!("{e:?}")))?;
    put.flush.wait().await.map_err(|e| RecallError::Put(e.to_string()))?;
    crate::send::replicated(state, put.append.physical_offset + put.append.size as u64)
        .await
        .map_err(|r| RecallError::Put(r.remark))?;
    // Stored, but the message may have fallen due meanwhile: only a marker
    // stored well ahead of it is sure to meet it.
    let left = due_ms.saturating_sub(now_ms());
    if left < SLOT_MS {
        return Err(RecallError::TooLate(left));
    }
    Ok(())
}

/// Turns `msg` into its waiting form: into [`TIMER_TOPIC`] queue 0, real
/// topic and queue kept, due time in `TIMER_OUT_MS` and `TIMER_DELIVER_MS`.
pub fn to_waiting(msg: &mut NewMessage, due_ms: i64) {
    let real_qid = msg.queue_id.to_string();
    let due = due_ms.to_string();
    let drop = [
        property::TIMER_DELAY_SEC,
        property::TIMER_DELAY_MS,
        property::TIMER_DELIVER_MS,
        property::TIMER_OUT_MS,
        property::REAL_TOPIC,
        property::REAL_QID,
    ];
    let pairs: Vec<(&str, &str)> = message::properties(&msg.properties)
        .filter(|(k, _)| !drop.contains(k))
        .chain([
            (property::TIMER_DELIVER_MS, due.as_str()),
            (property::TIMER_OUT_MS, due.as_str()),
            (property::REAL_TOPIC, msg.topic.as_str()),
            (property::REAL_QID, real_qid.as_str()),
        ])
        .collect();
    if let Ok(p) = message::encode_properties(pairs) {
        msg.properties = p;
    }
    msg.topic = TIMER_TOPIC.to_string();
    msg.queue_id = 0;
}

/// Pending timer entries by due time: slots of [`SLOT_MS`], each holding
/// (due ms, queue offset).
#[derive(Default)]
pub struct Wheel {
    slots: BTreeMap<i64, Vec<(i64, i64)>>,
    len: usize,
}

impl Wheel {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn insert(&mut self, due_ms: i64, queue_offset: i64) {
        self.slots.entry(due_ms.div_euclid(SLOT_MS)).or_default().push((due_ms, queue_offset));
        self.len += 1;
    }

    /// Takes up to `max` entries due at `now_ms` or before.
    pub fn pop_due(&mut self, now_ms: i64, max: usize) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(mut slot) = self.slots.first_entry() else { break };
            if *slot.key() * SLOT_MS > now_ms {
                break;
            }
            let entries = slot.get_mut();
            let before = entries.len();
            let mut i = 0;
            while i < entries.len() && out.len() < max {
                if entries[i].0 <= now_ms {
                    out.push(entries.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            self.len -= before - entries.len();
            if entries.is_empty() {
                slot.remove();
            } else if out.len() < max {
                // The rest of this slot is not due yet.
                break;
            }
        }
        // Entries due at the same moment leave together (up to a bound): a
        // recall's marker shares its message's due time and must meet it.
        if let Some(&(last_due, _)) = out.last().filter(|_| out.len() >= max) {
            if let Some(entries) = self.slots.get_mut(&last_due.div_euclid(SLOT_MS)) {
                let before = entries.len();
                let limit = max + SAME_DUE_EXTRA;
                let mut i = 0;
                while i < entries.len() && out.len() < limit {
                    if entries[i].0 == last_due {
                        out.push(entries.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
                self.len -= before - entries.len();
                if entries.is_empty() {
                    self.slots.remove(&last_due.div_euclid(SLOT_MS));
                }
            }
        }
        out
    }

    /// The earliest due time pending.
    pub fn next_due(&self) -> Option<i64> {
        self.slots.first_key_value().and_then(|(_, v)| v.iter().map(|e| e.0).min())
    }

    /// The lowest queue offset pending (walks every entry).
    pub fn min_offset(&self) -> Option<i64> {
        self.slots.values().flatten().map(|e| e.1).min()
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.len = 0;
    }
}

/// The deliverer's memory, rebuilt whenever this broker becomes master.
#[derive(Default)]
struct TimerState {
    loaded: bool,
    wheel: Wheel,
    /// Next queue offset to read into the wheel.
    filled_to: i64,
    /// Every timer message due before this was delivered (ms).
    cursor_ms: i64,
    /// The last moment the wheel held every stored entry (ms).
    complete_at_ms: i64,
    scan_from: i64,
    scan_from_at: Option<Instant>,
    /// The latest due time delivered: until the cursor passes it, every
    /// round writes the cursor (so a restart does not deliver it again).
    delivered_max_due: i64,
}

/// Delivers due timer messages until aborted.
pub async fn run(state: Arc<BrokerState>) {
    let mut t = TimerState::default();
    loop {
        // Before the round: an entry dispatched during it still wakes us.
        let mut arrived = state.long_poll.subscribe(TIMER_TOPIC, 0);
        arrived.borrow_and_update();
        let pause = if delivering(&state) {
            match round(&state, &mut t).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "timer delivery round failed; retrying");
                    RETRY_PAUSE
                }
            }
        } else {
            t = TimerState::default();
            RETRY_PAUSE
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // A closed channel (never expected) must not turn this into a spin.
            r = arrived.changed() => if r.is_err() { tokio::time::sleep(pause).await },
        }
    }
}

/// Reads queue entries `[from, from + FILL_BATCH)`: (due ms, offset) each.
fn read_entries(store: &MessageStore, from: i64) -> Vec<(i64, i64)> {
    let Some(cq) = store.consume_queue(TIMER_TOPIC, 0) else { return Vec::new() };
    let from = from.max(cq.min_offset());
    cq.get_range(from, FILL_BATCH).into_iter().enumerate().map(|(i, u)| (u.tags_code, from + i as i64)).collect()
}

/// Reads the waiting records at `offsets` back as the messages to deliver;
/// an entry that points at no record is logged and skipped (there is
/// nothing to keep), one that cannot be delivered is returned to be set
/// aside.
fn read_due(
    store: &MessageStore,
    offsets: &[(i64, i64)],
    store_host: std::net::SocketAddr,
) -> Result<Vec<Due>, StoreError> {
    let Some(cq) = store.consume_queue(TIMER_TOPIC, 0) else { return Ok(Vec::new()) };
    let mut out = Vec::with_capacity(offsets.len());
    for &(_, offset) in offsets {
        let Some(unit) = cq.get(offset) else {
            tracing::error!(offset, "timer entry gone from its queue (retention?); skipped");
            continue;
        };
        let raw = match store.read_record(unit.physical_offset) {
            Ok(raw) => raw,
            Err(e @ StoreError::BadOffset { .. }) => {
                tracing::error!(offset, error = %e, "timer entry points at no record; skipped");
                continue;
            }
            Err(e) => return Err(e),
        };
        match message::decode_record(&raw, false) {
            Ok(rec) => out.push(
                due_message(&rec, store_host).map_err(|why| (crate::schedule::waiting_as_is(&rec, store_host), why)),
            ),
            Err(e) => tracing::error!(offset, error = %e, "unreadable timer message skipped"),
        }
    }
    Ok(out)
}

/// The delivered form of a waiting record: the schedule's restoration,
/// without `TIMER_OUT_MS`.
fn due_message(rec: &message::Record<'_>, store_host: std::net::SocketAddr) -> Result<NewMessage, String> {
    let mut m = crate::schedule::to_due(rec, store_host)?;
    let pairs = message::properties(&m.properties).filter(|(k, _)| *k != property::TIMER_OUT_MS);
    m.properties = message::encode_properties(pairs).map_err(|e| e.to_string())?;
    Ok(m)
}

async fn round(state: &Arc<BrokerState>, t: &mut TimerState) -> Result<Duration, String> {
    let max_pending = state.config.read().timer_max_pending_in_memory;
    if !t.loaded {
        t.wheel.clear();
        t.scan_from = state.offsets.query(SCHEDULE_GROUP, TIMER_TOPIC, SCAN_FROM_QUEUE).unwrap_or(0);
        t.cursor_ms = state.offsets.query(SCHEDULE_GROUP, TIMER_TOPIC, CURSOR_QUEUE).unwrap_or(0);
        t.filled_to = t.scan_from;
        t.complete_at_ms = t.cursor_ms;
        t.loaded = true;
    }
    // Fill: everything stored so far, unless the wheel is full.
    let started_ms = now_ms();
    let log_end = state.store.max_offset();
    let mut full = false;
    loop {
        if t.wheel.len() >= max_pending {
            full = true;
            break;
        }
        if state.store.max_offset_in_queue(TIMER_TOPIC, 0) <= t.filled_to {
            break;
        }
        let store = state.store.clone();
        let from = t.filled_to;
        let entries = tokio::task::spawn_blocking(move || read_entries(&store, from))
            .await
            .map_err(|e| format!("read task failed: {e}"))?;
        let Some(&(_, last)) = entries.last() else { break };
        for (due, offset) in entries {
            // Due before the cursor: delivered before a restart.
            if due >= t.cursor_ms {
                t.wheel.insert(due, offset);
            }
        }
        t.filled_to = last + 1;
    }
    if full {
        tracing::warn!(
            pending = t.wheel.len(),
            max_pending,
            "timer wheel full (timerMaxPendingInMemory); later messages wait to be read"
        );
    } else if state.store.dispatched_offset() >= log_end {
        // Everything stored before this round began is in the wheel.
        t.complete_at_ms = started_ms;
    }

    // Deliver what is due.
    let now = now_ms();
    let due = t.wheel.pop_due(now, ROUND_BATCH);
    let more = due.len() == ROUND_BATCH;
    if let Some(max_due) = due.iter().map(|e| e.0).max() {
        t.delivered_max_due = t.delivered_max_due.max(max_due);
    }
    if !due.is_empty() {
        if let Err(e) = deliver(state, &due).await {
            // Back in the wheel: they are still pending.
            for (d, o) in due {
                t.wheel.insert(d, o);
            }
            return Err(e);
        }
    }
    // Durable progress. Once past everything delivered, the cursor only
    // follows the clock: written at most every CURSOR_IDLE_STEP_MS.
    let cursor = t.wheel.next_due().unwrap_or(i64::MAX).min(now).min(t.complete_at_ms);
    let behind_delivered = t.cursor_ms <= t.delivered_max_due;
    if cursor > t.cursor_ms && (behind_delivered || cursor - t.cursor_ms >= CURSOR_IDLE_STEP_MS) {
        t.cursor_ms = cursor;
        state.offsets.commit(SCHEDULE_GROUP, TIMER_TOPIC, CURSOR_QUEUE, cursor);
    }
    if t.scan_from_at.is_none_or(|at| at.elapsed() >= SCAN_FROM_EVERY) {
        let scan_from = t.wheel.min_offset().unwrap_or(t.filled_to);
        if scan_from > t.scan_from && !full {
            t.scan_from = scan_from;
            state.offsets.commit(SCHEDULE_GROUP, TIMER_TOPIC, SCAN_FROM_QUEUE, scan_from);
        }
        t.scan_from_at = Some(Instant::now());
    }
    if more {
        return Ok(Duration::ZERO);
    }
    let until_next = t.wheel.next_due().map(|d| Duration::from_millis(d.saturating_sub(now_ms()).max(0) as u64));
    let pause = until_next.map_or(IDLE_POLL, |d| d.min(IDLE_POLL));
    if t.cursor_ms <= t.delivered_max_due {
        // Soon again, so the cursor passes what was just delivered.
        return Ok(pause.min(Duration::from_millis(SLOT_MS as u64)));
    }
    Ok(pause)
}

/// A due entry's real topic, its recall marker's key if it is one, and
/// its own key.
fn recall_form(d: &Due) -> (&str, Option<&str>, Option<&str>) {
    let m = match d {
        Ok(m) | Err((m, _)) => m,
    };
    let marker = message::property(&m.properties, TIMER_DEL_UNIQKEY);
    (m.topic.as_str(), marker, message::property(&m.properties, property::UNIQ_KEY))
}

/// Moves due entries to their real topics; returns once the copies are
/// flushed (and replicated as sends are).
async fn deliver(state: &Arc<BrokerState>, due: &[(i64, i64)]) -> Result<(), String> {
    let store = state.store.clone();
    let host = state.broker_addr;
    let offsets = due.to_vec();
    let msgs = tokio::task::spawn_blocking(move || read_due(&store, &offsets, host))
        .await
        .map_err(|e| format!("read task failed: {e}"))?
        .map_err(|e| e.to_string())?;
    // A recall's marker cancels the message of its topic and key due in
    // the same round (it shares the due time, see `Wheel::pop_due`).
    let recalled: std::collections::HashSet<(String, String)> = msgs
        .iter()
        .filter_map(|d| match recall_form(d) {
            (topic, Some(key), _) => Some((topic.to_string(), key.to_string())),
            _ => None,
        })
        .collect();
    let mut last = None;
    for msg in msgs {
        let skip = match recall_form(&msg) {
            (_, Some(_), _) => true,
            (topic, None, Some(key))
                if !recalled.is_empty() && recalled.contains(&(topic.to_string(), key.to_string())) =>
            {
                tracing::info!(topic, key, "timer message recalled before it was due; not delivered");
                true
            }
            _ => false,
        };
        if skip {
            continue;
        }
        let (put, _) = crate::schedule::deliver(state, msg, crate::undeliverable::Source::Timer).await?;
        if let Some(put) = put {
            last = Some((put.flush, put.append.physical_offset + put.append.size as u64));
        }
    }
    if let Some((flush, end)) = last {
        flush.wait().await.map_err(|e| e.to_string())?;
        // Waited for, not required: the deliveries stand either way.
        let _ = crate::send::replicated(state, end).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_handles_round_trip_in_upstreams_form_and_garbage_is_refused() {
        use base64::Engine;
        let h = RecallHandle { topic: "T".into(), broker_name: "b".into(), due_ms: 1234, key: "01AB".into() };
        let text = h.encode();
        let b64 = base64::engine::general_purpose::URL_SAFE;
        assert_eq!(b64.decode(&text).unwrap(), b"v1 T b 1234 01AB", "upstream's layout, padded URL-safe Base64");
        assert_eq!(RecallHandle::decode(&text), Some(h.clone()));
        assert_eq!(RecallHandle::decode(text.trim_end_matches('=')), Some(h), "padding optional");
        for bad in ["", "!!!", "djE", &"A".repeat(5000)] {
            assert_eq!(RecallHandle::decode(bad), None, "{bad}");
        }
        for bad in ["v1 T b 1 k more", "v2 T b 1 k", "v1 T b x k", "v1 T b 1 ", "v1 a/b b 1 k"] {
            assert_eq!(RecallHandle::decode(&b64.encode(bad)), None, "{bad}");
        }
        // Handles issued before upstream's form (newline-separated) still decode.
        let legacy = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("v1\nT\nb\n1234\n01AB");
        assert_eq!(RecallHandle::decode(&legacy).map(|h| h.due_ms), Some(1234));
        // A part with a space could never be read back: no handle for it.
        let spaced = RecallHandle { key: "a b".into(), ..RecallHandle::decode(&text).unwrap() };
        assert!(!spaced.encodable());
        assert!(RecallHandle::decode(&text).unwrap().encodable());
    }

    const MAX: Duration = Duration::from_secs(3 * 86_400);

    fn props(pairs: &[(&str, &str)]) -> String {
        message::encode_properties(pairs.iter().copied()).unwrap()
    }

    #[test]
    fn due_time_from_each_property() {
        let now = 1_000_000;
        assert_eq!(requested_due("", now, MAX), Ok(None));
        assert_eq!(requested_due(&props(&[("TIMER_DELAY_SEC", "3")]), now, MAX), Ok(Some(now + 3000)));
        assert_eq!(requested_due(&props(&[("TIMER_DELAY_MS", "250")]), now, MAX), Ok(Some(now + 250)));
        assert_eq!(requested_due(&props(&[("TIMER_DELIVER_MS", "1000500")]), now, MAX), Ok(Some(1_000_500)));
        // Already due: an ordinary message.
        assert_eq!(requested_due(&props(&[("TIMER_DELIVER_MS", "5")]), now, MAX), Ok(None));
        assert!(requested_due(&props(&[("TIMER_DELAY_SEC", "x")]), now, MAX).unwrap_err().contains("TIMER_DELAY_SEC"));
        let far = requested_due(&props(&[("TIMER_DELAY_SEC", "300000")]), now, MAX).unwrap_err();
        assert!(far.contains("timerMaxDelaySec"), "{far}");
    }

    #[test]
    fn entries_due_at_one_moment_leave_together_past_the_batch_bound() {
        let mut w = Wheel::default();
        for o in 0..5 {
            w.insert(100, o);
        }
        w.insert(100 + SLOT_MS, 9);
        let first = w.pop_due(1000, 2);
        assert_eq!(first.len(), 5, "a recall's marker meets its message: {first:?}");
        assert_eq!(w.pop_due(1000, 2), vec![(100 + SLOT_MS, 9)]);
        assert!(w.is_empty());
        // But never more than the bound past the batch, however many share a moment.
        let many = (ROUND_BATCH + 2 * SAME_DUE_EXTRA) as i64;
        for o in 0..many {
            w.insert(200, o);
        }
        assert_eq!(w.pop_due(1000, ROUND_BATCH).len(), ROUND_BATCH + SAME_DUE_EXTRA);
        assert_eq!(w.len(), many as usize - ROUND_BATCH - SAME_DUE_EXTRA);
    }

    #[test]
    fn wheel_gives_nothing_early_and_everything_due() {
        let mut w = Wheel::default();
        for (i, due) in [105, 101, 250, 109, 100, 1000].into_iter().enumerate() {
            w.insert(due, i as i64);
        }
        assert_eq!(w.next_due(), Some(100));
        assert_eq!(w.min_offset(), Some(0));
        assert!(w.pop_due(99, 10).is_empty());
        let mut got = w.pop_due(104, 10);
        got.sort_unstable();
        assert_eq!(got, vec![(100, 4), (101, 1)], "105 and 109 share the slot but are not due");
        assert_eq!(w.len(), 4);
        assert_eq!(w.next_due(), Some(105));
        let got = w.pop_due(300, 2);
        assert_eq!(got.len(), 2, "bounded by max");
        let rest = w.pop_due(300, 10);
        assert_eq!(rest, vec![(250, 2)]);
        assert_eq!(w.len(), 1);
        assert_eq!(w.pop_due(i64::MAX, 10), vec![(1000, 5)]);
        assert!(w.is_empty());
        assert_eq!(w.next_due(), None);
    }

    #[test]
    fn waiting_form_keeps_the_real_topic_and_the_due_time() {
        let mut m = NewMessage {
            topic: "Orders".into(),
            queue_id: 3,
            flag: 0,
            body: bytes::Bytes::from_static(b"x"),
            properties: props(&[("TIMER_DELAY_SEC", "3"), ("TAGS", "A")]),
            sys_flag: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        };
        to_waiting(&mut m, 4242);
        assert_eq!((m.topic.as_str(), m.queue_id), (TIMER_TOPIC, 0));
        assert_eq!(message::queue_tags_code(&m.topic, &m.properties), 4242);
        assert_eq!(message::property(&m.properties, "TIMER_DELAY_SEC"), None);
        let mut buf = Vec::new();
        message::encode_record(&m, 1 << 20, &mut buf).unwrap();
        let rec = message::decode_record(&buf, true).unwrap();
        let back = due_message(&rec, "127.0.0.1:3".parse().unwrap()).unwrap();
        assert_eq!((back.topic.as_str(), back.queue_id), ("Orders", 3));
        assert_eq!(message::property(&back.properties, "TIMER_OUT_MS"), None);
        assert_eq!(message::property(&back.properties, "TIMER_DELIVER_MS"), Some("4242"));
        assert_eq!(message::property(&back.properties, "TAGS"), Some("A"));
    }
}
