//! Scheduled (delayed) messages, upstream's delay levels.
//!
//! A send carrying the `DELAY` property (level 1..=N of `messageDelayLevel`)
//! is stored, acknowledged and replicated like any other message, but in
//! the system topic `SCHEDULE_TOPIC_XXXX`, queue `level - 1`, with its real
//! topic and queue in `REAL_TOPIC` / `REAL_QID`. Every message of one level
//! waits the same time, so each level's queue is due in store order: the
//! deliverer only ever looks at the head of each queue (no per-message
//! timer, so millions pending cost nothing but their log space). When a
//! head is due it is read back and appended to its real topic, after which
//! consumers see it like a fresh send.
//!
//! How far each level has been delivered is a consumer offset of the
//! reserved group [`SCHEDULE_GROUP`], so it is persisted and copied to
//! slaves with the other offsets; a slave promoted to master carries on
//! from there. Only a writable master delivers. The position is committed
//! only after the delivered copies are flushed, so a crash can deliver a
//! message twice (at least once, as upstream) but never lose one.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use spate_common::message::{self, property, NewMessage};
use spate_store::{MessageStore, StoreError};

use spate_remoting::protocol::perm;

use crate::config::BrokerRole;
use crate::undeliverable::Source;
use crate::BrokerState;

/// The system topic delayed messages wait in (upstream's name).
pub const SCHEDULE_TOPIC: &str = "SCHEDULE_TOPIC_XXXX";
/// The reserved consumer group whose offsets say how far each level's
/// queue has been delivered.
pub const SCHEDULE_GROUP: &str = "%SCHEDULE%";
/// Upstream's default `messageDelayLevel`.
pub const DEFAULT_DELAY_LEVELS: &str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h";
/// Most levels `messageDelayLevel` may define.
pub const MAX_DELAY_LEVELS: usize = 64;
/// Most messages one round moves per level, so a level with a large due
/// backlog does not hold the others back.
const ROUND_BATCH: usize = 256;
/// Longest sleep between rounds; a message arriving in a level's queue
/// wakes the deliverer at once (the dispatcher's notification), so this is
/// only a safety net.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// Pause after a failed round (store busy, not writable).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Parses `messageDelayLevel`: space-separated durations, each a whole
/// number with a unit of `ms` (Spate's addition, for tests), `s`, `m`, `h`
/// or `d`.
pub fn parse_delay_levels(text: &str) -> Result<Vec<Duration>, String> {
    let mut levels = Vec::new();
    for item in text.split_whitespace() {
        let split = item.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("'{item}' has no unit"))?;
        let (n, unit) = item.split_at(split);
        let n: u64 = n.parse().map_err(|_| format!("'{item}' does not start with a number"))?;
        let ms = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            "d" => n.checked_mul(86_400_000),
            _ => return Err(format!("'{item}': unit must be ms, s, m, h or d")),
        }
        .ok_or_else(|| format!("'{item}' is too long"))?;
        levels.push(Duration::from_millis(ms));
    }
    if levels.is_empty() {
        return Err("no delay levels".into());
    }
    if levels.len() > MAX_DELAY_LEVELS {
        return Err(format!("{} delay levels; at most {MAX_DELAY_LEVELS}", levels.len()));
    }
    Ok(levels)
}

/// The delay level a message asks for, when it asks for one (a `DELAY`
/// property that is a positive number).
pub fn requested_level(properties: &str) -> Option<i32> {
    message::property(properties, property::DELAY).and_then(|l| l.trim().parse::<i32>().ok()).filter(|l| *l > 0)
}

/// Turns `msg` into its waiting form for `level` (capped at the highest of
/// `levels` levels, as upstream): into [`SCHEDULE_TOPIC`], queue
/// `level - 1`, its real topic and queue kept in properties.
pub fn to_waiting(msg: &mut NewMessage, level: i32, levels: usize) {
    let level = level.clamp(1, levels.max(1) as i32);
    let real_qid = msg.queue_id.to_string();
    let level_text = level.to_string();
    let pairs: Vec<(&str, &str)> = message::properties(&msg.properties)
        .filter(|(k, _)| ![property::DELAY, property::REAL_TOPIC, property::REAL_QID].contains(k))
        .chain([
            (property::DELAY, level_text.as_str()),
            (property::REAL_TOPIC, msg.topic.as_str()),
            (property::REAL_QID, real_qid.as_str()),
        ])
        .collect();
    // Names and values come from a decoded message, so they encode again.
    if let Ok(p) = message::encode_properties(pairs) {
        msg.properties = p;
    }
    msg.topic = SCHEDULE_TOPIC.to_string();
    msg.queue_id = level - 1;
}

/// The message a stored waiting record becomes when due: back in its real
/// topic and queue, without `DELAY` (`REAL_TOPIC` / `REAL_QID` stay, as
/// upstream, so a consumer can tell it was scheduled).
///
/// The destination came from a stored message, so it is checked as a name
/// a client could send to; an error means the message can never be
/// delivered (the caller sets it aside, undeliverable.rs).
pub fn to_due(rec: &message::Record<'_>, store_host: std::net::SocketAddr) -> Result<NewMessage, String> {
    let topic = crate::names::stored_destination(rec.property(property::REAL_TOPIC))?.to_string();
    let queue_id: i32 = rec
        .property(property::REAL_QID)
        .and_then(|q| q.parse().ok())
        .filter(|q| spate_store::commit_log::valid_queue_id(*q))
        .ok_or("no or bad REAL_QID")?;
    let pairs = message::properties(rec.properties).filter(|(k, _)| *k != property::DELAY);
    let properties = message::encode_properties(pairs).map_err(|e| e.to_string())?;
    let mut m = waiting_as_is(rec, store_host);
    (m.topic, m.queue_id, m.properties) = (topic, queue_id, properties);
    Ok(m)
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// A due message to deliver, or (its set-aside form, why) for one that can
/// never be delivered.
pub(crate) type Due = Result<NewMessage, (NewMessage, String)>;

/// What one level's read found.
struct LevelRead {
    /// Due messages, each with the queue offset after it; an `Err` holds
    /// the set-aside form of a message that cannot be delivered, and why.
    due: Vec<(Due, i64)>,
    /// When the first message not yet due is due (ms since the epoch).
    next_due_ms: Option<i64>,
    /// Queue offset after the last entry looked at and skipped as
    /// unreadable (a record that cannot be decoded is not retried forever).
    skipped_to: Option<i64>,
}

/// Reads, from `from` on, the due head of one level's queue (blocking:
/// runs on the blocking pool).
fn read_level(
    store: &MessageStore,
    level: usize,
    delay: Duration,
    from: i64,
    now_ms: i64,
    store_host: std::net::SocketAddr,
) -> Result<LevelRead, StoreError> {
    let mut out = LevelRead { due: Vec::new(), next_due_ms: None, skipped_to: None };
    let Some(cq) = store.consume_queue(SCHEDULE_TOPIC, level as i32 - 1) else {
        return Ok(out);
    };
    let from = from.max(cq.min_offset());
    for (i, unit) in cq.get_range(from, ROUND_BATCH).into_iter().enumerate() {
        let offset = from + i as i64;
        let raw = match store.read_record(unit.physical_offset) {
            Ok(raw) => raw,
            // Not a record at all (a damaged queue entry): nothing to keep.
            Err(e @ StoreError::BadOffset { .. }) => {
                tracing::error!(level, offset, error = %e, "scheduled queue entry points at no record; skipped");
                out.skipped_to = Some(offset + 1);
                continue;
            }
            Err(e) => return Err(e),
        };
        let rec = match message::decode_record(&raw, false) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(level, offset, error = %e, "unreadable scheduled message skipped");
                out.skipped_to = Some(offset + 1);
                continue;
            }
        };
        let due_ms = rec.store_timestamp.saturating_add(delay.as_millis() as i64);
        if due_ms > now_ms {
            out.next_due_ms = Some(due_ms);
            break;
        }
        match to_due(&rec, store_host) {
            Ok(m) => out.due.push((Ok(m), offset + 1)),
            Err(why) => out.due.push((Err((waiting_as_is(&rec, store_host), why)), offset + 1)),
        }
    }
    Ok(out)
}

/// Whether this broker delivers now: a master that takes writes.
pub(crate) fn delivering(state: &BrokerState) -> bool {
    let c = state.config.read();
    c.broker_role != BrokerRole::Slave && perm::writeable(c.broker_permission)
}

/// Delivers due delayed messages until aborted.
pub async fn run(state: Arc<BrokerState>) {
    let mut heads = Heads::default();
    loop {
        // Before the round: a message dispatched during it still wakes us.
        let levels = state.config.read().message_delay_levels.len();
        let mut arrived: Vec<_> = (0..levels as i32).map(|q| state.long_poll.subscribe(SCHEDULE_TOPIC, q)).collect();
        for rx in &mut arrived {
            rx.borrow_and_update();
        }
        let pause = if delivering(&state) {
            match round(&state, &mut heads).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduled delivery round failed; retrying");
                    RETRY_PAUSE
                }
            }
        } else {
            heads.clear();
            RETRY_PAUSE
        };
        if arrived.is_empty() {
            tokio::time::sleep(pause).await;
            continue;
        }
        let any_arrival = futures_util::future::select_all(arrived.iter_mut().map(|rx| Box::pin(rx.changed())));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            // A closed channel (never expected) must not turn this into a spin.
            (r, _, _) = any_arrival => if r.is_err() { tokio::time::sleep(pause).await },
        }
    }
}

/// Per level, the queue offset of its head and when that head is due, as
/// last read: a head not yet due is not read again until it is.
type Heads = std::collections::HashMap<usize, (i64, i64)>;

pub(crate) fn put_error_text(e: &crate::send::PutError) -> String {
    match e {
        crate::send::PutError::Refused { remark, .. } => remark.clone(),
        crate::send::PutError::Store(e) => e.to_string(),
    }
}

/// Why `msg` can never reach its topic, if it cannot: its name is not a
/// valid one, or its topic is missing and cannot be added (a queue id
/// beyond any topic's queues, a full topic table).
fn cannot_route(state: &BrokerState, msg: &NewMessage) -> Option<String> {
    if let Err(e) = message::validate_topic(&msg.topic) {
        return Some(e.to_string());
    }
    if state.topics.get(&msg.topic).is_some() {
        return None;
    }
    if !(0..crate::topics::MAX_QUEUE_NUMS).contains(&msg.queue_id) {
        return Some(format!("queue id {} is beyond any topic's queues", msg.queue_id));
    }
    (state.topics.len() >= crate::topics::MAX_TOPICS)
        .then(|| format!("topic {} cannot be created: topic table full", msg.topic))
}

/// The real topic must be routable when its message arrives there. It is
/// missing when the topic was created just before a failover and the
/// table had not been copied yet (its log then held only the waiting
/// message, so the promotion could not adopt it): it is added as it would
/// have been created on send.
pub(crate) async fn ensure_topic(state: &BrokerState, msg: &NewMessage) -> Result<(), String> {
    if state.topics.get(&msg.topic).is_some() {
        return Ok(());
    }
    // Names reach here only through names::stored_destination; checked once
    // more because this creates a table entry (and later a directory).
    if let Some(why) = cannot_route(state, msg) {
        return Err(why);
    }
    let queues = (msg.queue_id + 1).max(state.config.read().default_topic_queue_nums);
    let tc = spate_remoting::protocol::TopicConfig::new(&msg.topic, queues, perm::READ | perm::WRITE);
    if !state.topics.upsert(tc) {
        return Err(format!("topic {} cannot be created: topic table full", msg.topic));
    }
    tracing::info!(topic = %msg.topic, queues, "topic of a due scheduled message was missing: added");
    state.topics.persist().await.map_err(|e| e.to_string())?;
    state.topics_changed();
    Ok(())
}

/// The stored waiting record as a message, unchanged (for setting aside).
pub(crate) fn waiting_as_is(rec: &message::Record<'_>, store_host: std::net::SocketAddr) -> NewMessage {
    NewMessage {
        topic: rec.topic.to_string(),
        queue_id: rec.queue_id,
        flag: rec.flag,
        body: bytes::Bytes::copy_from_slice(rec.body),
        properties: rec.properties.to_string(),
        sys_flag: rec.sys_flag,
        born_timestamp: rec.born_timestamp,
        born_host: rec.born_host,
        store_host,
        reconsume_times: rec.reconsume_times,
        prepared_tx_offset: rec.prepared_tx_offset,
    }
}

/// Delivers one due message to its real topic, or sets it aside when it
/// can never be delivered: a bad destination, a topic table with no room
/// for it, or a store that refuses it as a message. A passing failure
/// (busy, not writable, a role change) is an error: the round is retried.
/// Returns what was stored (to wait for its flush; nothing when even the
/// set-aside form could not be kept) and, when it was set aside, why.
pub(crate) async fn deliver(
    state: &Arc<BrokerState>,
    msg: Due,
    source: Source,
) -> Result<(Option<spate_store::PutResult>, Option<String>), String> {
    let aside = |msg, why: String| async move {
        crate::undeliverable::set_aside(state, msg, source, &why).await.map(|put| (put, Some(why)))
    };
    let msg = match msg {
        Ok(m) => m,
        Err((as_is, why)) => return aside(as_is, why).await,
    };
    if let Some(why) = cannot_route(state, &msg) {
        return aside(msg, why).await;
    }
    ensure_topic(state, &msg).await?;
    match crate::send::put_one(state, msg.clone()).await {
        Ok(put) => Ok((Some(put), None)),
        Err(e) if crate::undeliverable::is_poison(&e) => aside(msg, put_error_text(&e)).await,
        Err(e) => Err(put_error_text(&e)),
    }
}

/// One pass over every level: moves what is due, commits the positions,
/// and says how long until something may be due.
async fn round(state: &Arc<BrokerState>, heads: &mut Heads) -> Result<Duration, String> {
    let levels = state.config.read().message_delay_levels.clone();
    let mut wait = IDLE_POLL;
    for (i, delay) in levels.iter().copied().enumerate() {
        let level = i + 1;
        let queue_id = level as i32 - 1;
        let from = state.offsets.query(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id).unwrap_or(0);
        if state.store.max_offset_in_queue(SCHEDULE_TOPIC, queue_id) <= from {
            continue;
        }
        let now = now_ms();
        if let Some(&(head, due)) = heads.get(&level) {
            if head == from && due > now {
                wait = wait.min(Duration::from_millis((due - now) as u64));
                continue;
            }
        }
        let store = state.store.clone();
        let host = state.broker_addr;
        let read = tokio::task::spawn_blocking(move || read_level(&store, level, delay, from, now, host))
            .await
            .map_err(|e| format!("read task failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let mut next = read.skipped_to.unwrap_or(from);
        let mut last = None;
        let full = read.due.len() == ROUND_BATCH;
        for (msg, after) in read.due {
            let (put, _) = deliver(state, msg, Source::Schedule).await?;
            next = next.max(after);
            if let Some(put) = put {
                last = Some((put.flush, put.append.physical_offset + put.append.size as u64));
            }
        }
        if let Some((flush, end)) = last {
            // Flushes complete in log order: the last one covers the rest.
            flush.wait().await.map_err(|e| e.to_string())?;
            // Waited for, not required: the deliveries stand either way.
            let _ = crate::send::replicated(state, end).await;
        }
        if next != from {
            state.offsets.commit(SCHEDULE_GROUP, SCHEDULE_TOPIC, queue_id, next);
        }
        if full {
            wait = Duration::ZERO;
        } else if let Some(due) = read.next_due_ms {
            heads.insert(level, (next, due));
            wait = wait.min(Duration::from_millis(due.saturating_sub(now_ms()).max(0) as u64));
        }
    }
    Ok(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_default_levels_parse() {
        let l = parse_delay_levels(DEFAULT_DELAY_LEVELS).unwrap();
        assert_eq!(l.len(), 18);
        assert_eq!(l[0], Duration::from_secs(1));
        assert_eq!(l[2], Duration::from_secs(10));
        assert_eq!(l[4], Duration::from_secs(60));
        assert_eq!(l[17], Duration::from_secs(7200));
    }

    #[test]
    fn bad_levels_are_refused_with_the_item_named() {
        assert!(parse_delay_levels("").is_err());
        assert!(parse_delay_levels("5").unwrap_err().contains("'5'"));
        assert!(parse_delay_levels("1s 5x").unwrap_err().contains("5x"));
        assert!(parse_delay_levels("s").is_err());
        assert_eq!(
            parse_delay_levels("250ms 1d").unwrap(),
            vec![Duration::from_millis(250), Duration::from_secs(86_400)]
        );
        let many = vec!["1s"; MAX_DELAY_LEVELS + 1].join(" ");
        assert!(parse_delay_levels(&many).is_err());
    }

    #[test]
    fn requested_level_is_a_positive_delay_property() {
        let p = |v: &str| message::encode_properties([(property::DELAY, v)]).unwrap();
        assert_eq!(requested_level(&p("3")), Some(3));
        assert_eq!(requested_level(&p("0")), None);
        assert_eq!(requested_level(&p("-1")), None);
        assert_eq!(requested_level(&p("x")), None);
        assert_eq!(requested_level(""), None);
    }

    fn msg(props: &str) -> NewMessage {
        NewMessage {
            topic: "Orders".into(),
            queue_id: 5,
            flag: 7,
            body: bytes::Bytes::from_static(b"hello"),
            properties: props.into(),
            sys_flag: 0,
            born_timestamp: 11,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 2,
            prepared_tx_offset: 0,
        }
    }

    #[test]
    fn waiting_form_round_trips_to_the_real_topic() {
        let props = message::encode_properties([(property::TAGS, "A"), (property::DELAY, "40")]).unwrap();
        let mut m = msg(&props);
        to_waiting(&mut m, 40, 18);
        assert_eq!(m.topic, SCHEDULE_TOPIC);
        assert_eq!(m.queue_id, 17, "capped at the highest level");
        assert_eq!(message::property(&m.properties, property::DELAY), Some("18"));
        assert_eq!(message::property(&m.properties, property::REAL_TOPIC), Some("Orders"));
        assert_eq!(message::property(&m.properties, property::REAL_QID), Some("5"));

        let mut buf = Vec::new();
        message::encode_record(&m, 1 << 20, &mut buf).unwrap();
        let rec = message::decode_record(&buf, true).unwrap();
        let back = to_due(&rec, "127.0.0.1:3".parse().unwrap()).unwrap();
        assert_eq!((back.topic.as_str(), back.queue_id, back.flag), ("Orders", 5, 7));
        assert_eq!(&back.body[..], b"hello");
        assert_eq!(back.reconsume_times, 2);
        assert_eq!(back.born_timestamp, 11);
        assert_eq!(message::property(&back.properties, property::TAGS), Some("A"));
        assert_eq!(message::property(&back.properties, property::DELAY), None);
        assert_eq!(message::property(&back.properties, property::REAL_TOPIC), Some("Orders"));
    }

    #[test]
    fn a_waiting_record_without_its_real_topic_is_an_error() {
        let m = msg("");
        let mut buf = Vec::new();
        message::encode_record(&m, 1 << 20, &mut buf).unwrap();
        let rec = message::decode_record(&buf, true).unwrap();
        assert!(to_due(&rec, "127.0.0.1:3".parse().unwrap()).is_err());
    }
}
