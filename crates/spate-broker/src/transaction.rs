//! Transactional messages, upstream's two-phase protocol.
//!
//! - A half message (sys flag PREPARED, `TRAN_MSG=true`, `PGROUP`) is
//!   stored, acknowledged and replicated in [`HALF_TOPIC`] queue 0, its
//!   real topic and queue in properties, so no consumer sees it.
//! - END_TRANSACTION from the producer commits it (a copy goes to the real
//!   topic) or rolls it back (nothing is copied). Either way an op message
//!   in [`OP_TOPIC`] (body: the half's queue offset, tag `d`) marks it
//!   resolved.
//! - A checker runs every `transactionCheckInterval`. It walks the half
//!   queue from its progress mark. A half still unresolved after
//!   `transactionTimeOut` is stored again with `TRANSACTION_CHECK_TIMES`
//!   one higher, the old copy is marked resolved, and one producer of its
//!   group is asked CHECK_TRANSACTION_STATE about the new copy. After
//!   `transactionCheckMax` checks it goes to [`CHECK_MAX_TOPIC`] instead.
//!
//! Progress (half and op queue offsets) is kept as offsets of the reserved
//! group [`TRANS_GROUP`], persisted and copied to slaves like the others,
//! so a promoted slave goes on checking. All state is in the log.

use std::collections::BTreeMap;
use std::sync::Arc;

use spate_common::message::{self, property, NewMessage, SYSFLAG_TX_COMMIT, SYSFLAG_TX_MASK, SYSFLAG_TX_PREPARED};
use spate_remoting::{request, response, Connection, RemotingCommand};
use spate_store::{MessageStore, StoreError};

use crate::error::BrokerError;
use crate::refusal::Refusal;
use crate::schedule::{delivering, now_ms, put_error_text};
use crate::undeliverable::{Source, UNDELIVERABLE_TOPIC};
use crate::BrokerState;

/// Where half messages wait (upstream's name).
pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// Where resolutions are recorded (upstream's name).
pub const OP_TOPIC: &str = "RMQ_SYS_TRANS_OP_HALF_TOPIC";
/// Where a half goes after `transactionCheckMax` unanswered checks
/// (upstream 5's name).
pub const CHECK_MAX_TOPIC: &str = "TRANS_CHECK_MAX_TIME_TOPIC";
/// The reserved group whose offsets are the checker's progress.
pub const TRANS_GROUP: &str = "CID_RMQ_SYS_TRANS";
/// The tag of an op message (upstream's "remove" tag).
pub const OP_TAG: &str = "d";
/// How often a half has been checked.
pub const CHECK_TIMES: &str = "TRANSACTION_CHECK_TIMES";
/// The producer group a half belongs to.
pub const PGROUP: &str = "PGROUP";
/// Most half entries one check round looks at.
const CHECK_BATCH: usize = 4096;
/// Most op entries read per blocking read.
const OP_BATCH: usize = 32 * 1024;

/// Whether a send is a half message.
pub fn is_half(sys_flag: i32, properties: &str) -> bool {
    sys_flag & SYSFLAG_TX_MASK == SYSFLAG_TX_PREPARED
        || message::property(properties, property::TRAN_MSG) == Some("true")
}

/// Turns a send into its half form (upstream stores it with the
/// transaction bits cleared, so it is dispatched like any message).
pub fn to_half(msg: &mut NewMessage) {
    let real_qid = msg.queue_id.to_string();
    let pairs: Vec<(&str, &str)> = message::properties(&msg.properties)
        .filter(|(k, _)| *k != property::REAL_TOPIC && *k != property::REAL_QID)
        .chain([(property::REAL_TOPIC, msg.topic.as_str()), (property::REAL_QID, real_qid.as_str())])
        .collect();
    if let Ok(p) = message::encode_properties(pairs) {
        msg.properties = p;
    }
    msg.topic = HALF_TOPIC.to_string();
    msg.queue_id = 0;
    msg.sys_flag &= !SYSFLAG_TX_MASK;
}

/// The committed form of a half record: in its real topic, flagged
/// COMMIT, `TRAN_MSG` gone, pointing back at the half.
fn committed(rec: &message::Record<'_>, store_host: std::net::SocketAddr) -> Result<NewMessage, String> {
    let mut m = crate::schedule::to_due(rec, store_host)?;
    let pairs = message::properties(&m.properties).filter(|(k, _)| *k != property::TRAN_MSG && *k != CHECK_TIMES);
    m.properties = message::encode_properties(pairs).map_err(|e| e.to_string())?;
    m.sys_flag = (m.sys_flag & !SYSFLAG_TX_MASK) | SYSFLAG_TX_COMMIT;
    m.prepared_tx_offset = rec.physical_offset;
    Ok(m)
}

/// An op message resolving the half at `half_offset`.
fn op_message(state: &BrokerState, half_offset: i64) -> NewMessage {
    NewMessage {
        topic: OP_TOPIC.to_string(),
        queue_id: 0,
        flag: 0,
        body: bytes::Bytes::from(half_offset.to_string()),
        properties: message::encode_properties([(property::TAGS, OP_TAG)]).unwrap_or_default(),
        sys_flag: 0,
        born_timestamp: now_ms(),
        born_host: state.broker_addr,
        store_host: state.broker_addr,
        reconsume_times: 0,
        prepared_tx_offset: 0,
    }
}

/// The half offsets an op body resolves (one, or several comma-separated
/// as upstream 5 batches them).
pub fn op_offsets(body: &[u8]) -> Vec<i64> {
    std::str::from_utf8(body).unwrap_or("").split(',').filter_map(|s| s.trim().parse().ok()).collect()
}

async fn read_half(state: &BrokerState, offset: u64) -> Result<Vec<u8>, StoreError> {
    let store = state.store.clone();
    tokio::task::spawn_blocking(move || store.read_record(offset))
        .await
        .unwrap_or(Err(StoreError::Busy("read task failed")))
}

/// An end of a transaction, decoded by whichever front end carried it.
#[derive(Debug, Clone)]
pub struct EndRequest {
    pub producer_group: String,
    /// The half message's offset in the half topic's queue.
    pub half_queue_offset: i64,
    /// The half message's commit-log offset.
    pub commit_log_offset: i64,
    /// COMMIT, ROLLBACK or not yet decided (the sys flag's transaction bits).
    pub kind: i32,
    /// An answer to the broker's check-back.
    pub from_check: bool,
}

impl EndRequest {
    /// END_TRANSACTION's header.
    pub fn parse(req: &RemotingCommand) -> Result<EndRequest, BrokerError> {
        Ok(EndRequest {
            producer_group: req.str_field("producerGroup")?.to_string(),
            half_queue_offset: req.i64_field("tranStateTableOffset")?,
            commit_log_offset: req.i64_field("commitLogOffset")?,
            kind: req.i32_field("commitOrRollback")?,
            from_check: req.field("fromTransactionCheck") == Some("true"),
        })
    }
}

/// END_TRANSACTION: the remoting front end of [`end`].
pub async fn handle_end(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let r = EndRequest::parse(req)?;
    Ok(match end(state, &r).await {
        Ok(()) => RemotingCommand::success(req),
        Err(refusal) => refusal.response(req),
    })
}

/// Commits or rolls back a half message: a commit stores the message in
/// its real topic (durably, as a send), then either is marked resolved so
/// the checker stops asking.
pub async fn end(state: &Arc<BrokerState>, r: &EndRequest) -> Result<(), Refusal> {
    let (group, half_queue_offset, commit_log_offset) = (&r.producer_group, r.half_queue_offset, r.commit_log_offset);
    let from_check = r.from_check;
    if !delivering(state) {
        return Err(Refusal::new(
            response::SLAVE_NOT_AVAILABLE,
            "this broker is not a writable master; end the transaction on the master",
        ));
    }
    let commit = match r.kind & SYSFLAG_TX_MASK {
        SYSFLAG_TX_COMMIT => true,
        message::SYSFLAG_TX_ROLLBACK => false,
        // Not decided yet (UNKNOW): the checker asks again later.
        _ => return Ok(()),
    };
    let Ok(commit_log_offset_u) = u64::try_from(commit_log_offset) else {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("commitLogOffset {commit_log_offset} is illegal"),
        ));
    };
    let raw = read_half(state, commit_log_offset_u)
        .await
        .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("find prepared transaction message failed: {e}")))?;
    let rec = message::decode_record(&raw, false)
        .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("prepared message unreadable: {e}")))?;
    if rec.topic != HALF_TOPIC || rec.queue_offset != half_queue_offset {
        return Err(Refusal::new(
            response::SYSTEM_ERROR,
            format!(
                "no prepared message at commitLogOffset {commit_log_offset} / tranStateTableOffset {half_queue_offset}"
            ),
        ));
    }
    if rec.property(PGROUP) != Some(group.as_str()) {
        return Err(Refusal::new(
            response::SYSTEM_ERROR,
            format!("the producer group {group} differs from the prepared message's {:?}", rec.property(PGROUP)),
        ));
    }
    let mut set_aside = None;
    if commit {
        // A half that can never reach its topic is set aside (and resolved
        // below), so neither this request nor the checker retries it forever.
        let msg = committed(&rec, state.broker_addr)
            .map_err(|why| (crate::schedule::waiting_as_is(&rec, state.broker_addr), why));
        let (put, aside) = crate::schedule::deliver(state, msg, Source::Transaction)
            .await
            .map_err(|why| Refusal::new(response::SYSTEM_ERROR, why))?;
        if let Some(put) = put {
            put.flush.wait().await.map_err(|e| Refusal::from_store(&e))?;
            let a = put.append;
            crate::send::replicated(state, a.physical_offset + a.size as u64).await?;
        }
        set_aside = aside;
    }
    // Resolved: the checker will not ask about it.
    crate::send::put_one(state, op_message(state, half_queue_offset)).await.map_err(|e| e.refusal())?;
    tracing::debug!(group, half_queue_offset, commit, from_check, "transaction ended");
    if let Some(why) = set_aside {
        return Err(Refusal::new(
            response::MESSAGE_ILLEGAL,
            format!("the committed message cannot be delivered ({why}); it was set aside in {UNDELIVERABLE_TOPIC}"),
        ));
    }
    Ok(())
}

/// Checks unresolved halves every `transactionCheckInterval` until aborted.
pub async fn run(state: Arc<BrokerState>) {
    let mut checker = Checker::default();
    loop {
        let interval = state.config.read().transaction_check_interval;
        tokio::time::sleep(interval).await;
        if !delivering(&state) {
            checker = Checker::default();
            continue;
        }
        if let Err(e) = checker.round(&state).await {
            tracing::warn!(error = %e, "transaction check round failed; retrying next interval");
        }
    }
}

/// The checker's memory: resolved halves not yet behind its progress mark.
#[derive(Default)]
struct Checker {
    loaded: bool,
    /// Resolved half offset -> the op entry that says so.
    resolved: BTreeMap<i64, i64>,
    /// Next op entry to read.
    op_read_to: i64,
}

/// One op entry: its queue offset and the half offsets it resolves.
type OpEntry = (i64, Vec<i64>);

/// Reads op entries from `from`: (op offset, half offsets) each, and the
/// queue offset after the last entry looked at. An entry that points at no
/// intact record is logged and passed over: one damaged op never stops
/// the checker.
fn read_ops(store: &MessageStore, from: i64) -> Result<(Vec<OpEntry>, i64), StoreError> {
    let Some(cq) = store.consume_queue(OP_TOPIC, 0) else { return Ok((Vec::new(), from)) };
    let from = from.max(cq.min_offset());
    let mut out = Vec::new();
    let units = cq.get_range(from, OP_BATCH);
    let next = from + units.len() as i64;
    for (i, unit) in units.into_iter().enumerate() {
        let raw = match store.read_record(unit.physical_offset) {
            Ok(raw) => raw,
            Err(e @ StoreError::BadOffset { .. }) => {
                tracing::error!(op_offset = from + i as i64, error = %e, "transaction op entry points at no record; skipped");
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Ok(rec) = message::decode_record(&raw, false) {
            out.push((from + i as i64, op_offsets(rec.body)));
        }
    }
    Ok((out, next))
}

impl Checker {
    async fn round(&mut self, state: &Arc<BrokerState>) -> Result<(), String> {
        let (timeout, check_max) = {
            let c = state.config.read();
            (c.transaction_timeout, c.transaction_check_max)
        };
        let mut progress = state.offsets.query(TRANS_GROUP, HALF_TOPIC, 0).unwrap_or(0);
        if !self.loaded {
            self.resolved.clear();
            self.op_read_to = state.offsets.query(TRANS_GROUP, OP_TOPIC, 0).unwrap_or(0);
            self.loaded = true;
        }
        // Every resolution recorded so far.
        while state.store.max_offset_in_queue(OP_TOPIC, 0) > self.op_read_to {
            let store = state.store.clone();
            let from = self.op_read_to;
            let (ops, next) = tokio::task::spawn_blocking(move || read_ops(&store, from))
                .await
                .map_err(|e| format!("read task failed: {e}"))?
                .map_err(|e| e.to_string())?;
            if next <= from {
                break;
            }
            for (op, halves) in ops {
                for h in halves.into_iter().filter(|h| *h >= progress) {
                    self.resolved.insert(h, op);
                }
            }
            self.op_read_to = next;
        }
        // The halves present now (copies made below land after them).
        let end = state.store.max_offset_in_queue(HALF_TOPIC, 0);
        let mut offset = progress;
        let now = now_ms();
        while offset < end && offset < progress + CHECK_BATCH as i64 {
            if self.resolved.contains_key(&offset) {
                offset += 1;
                continue;
            }
            // The queue entry and the record, both off the runtime's threads.
            let store = state.store.clone();
            let raw = tokio::task::spawn_blocking(move || {
                let unit = store.consume_queue(HALF_TOPIC, 0).and_then(|cq| cq.get(offset));
                match unit.map(|u| store.read_record(u.physical_offset)).transpose() {
                    // A damaged entry: nothing left to check, as if gone.
                    Err(e @ StoreError::BadOffset { .. }) => {
                        tracing::error!(offset, error = %e, "half queue entry points at no record; skipped");
                        Ok(None)
                    }
                    other => other,
                }
            })
            .await
            .map_err(|e| format!("read task failed: {e}"))?
            .map_err(|e| e.to_string())?;
            let Some(raw) = raw else {
                offset += 1; // gone (retention): nothing left to check
                continue;
            };
            let rec = match message::decode_record(&raw, false) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(offset, error = %e, "unreadable half message skipped");
                    offset += 1;
                    continue;
                }
            };
            if now - rec.born_timestamp < timeout.as_millis() as i64 {
                break; // this and every later half is too young to check
            }
            let times: i32 = rec.property(CHECK_TIMES).and_then(|t| t.parse().ok()).unwrap_or(0);
            self.check_one(state, &rec, offset, times, check_max).await?;
            offset += 1;
        }
        // Everything before `offset` is resolved, handled above, or gone.
        progress = offset;
        self.resolved = self.resolved.split_off(&progress);
        state.offsets.commit(TRANS_GROUP, HALF_TOPIC, 0, progress);
        let op_mark = self.resolved.values().min().copied().unwrap_or(self.op_read_to);
        state.offsets.commit(TRANS_GROUP, OP_TOPIC, 0, op_mark);
        Ok(())
    }

    /// One unresolved, old-enough half: give up on it, or store it again
    /// and ask its producer group about the new copy.
    async fn check_one(
        &mut self,
        state: &Arc<BrokerState>,
        rec: &message::Record<'_>,
        offset: i64,
        times: i32,
        check_max: i32,
    ) -> Result<(), String> {
        let group = rec.property(PGROUP).unwrap_or_default().to_string();
        let mut copy = NewMessage {
            topic: HALF_TOPIC.to_string(),
            queue_id: 0,
            flag: rec.flag,
            body: bytes::Bytes::copy_from_slice(rec.body),
            properties: String::new(),
            sys_flag: rec.sys_flag,
            born_timestamp: rec.born_timestamp,
            born_host: rec.born_host,
            store_host: state.broker_addr,
            reconsume_times: rec.reconsume_times,
            prepared_tx_offset: 0,
        };
        let next_times = times.max(0).saturating_add(1).to_string();
        let pairs = message::properties(rec.properties).filter(|(k, _)| *k != CHECK_TIMES);
        if times >= check_max {
            // Given up on, kept where an operator can find it.
            copy.topic = CHECK_MAX_TOPIC.to_string();
            copy.properties = message::encode_properties(pairs).map_err(|e| e.to_string())?;
            crate::schedule::ensure_topic(state, &copy).await?;
            match crate::send::put_one(state, copy.clone()).await {
                Ok(_) => {}
                Err(e) if crate::undeliverable::is_poison(&e) => {
                    crate::undeliverable::set_aside(state, copy, Source::Transaction, &put_error_text(&e)).await?;
                }
                Err(e) => return Err(put_error_text(&e)),
            }
            tracing::warn!(group, offset, times, "transaction never resolved: moved to {CHECK_MAX_TOPIC}");
        } else {
            copy.properties = message::encode_properties(pairs.chain([(CHECK_TIMES, next_times.as_str())]))
                .map_err(|e| e.to_string())?;
            match crate::send::put_one(state, copy.clone()).await {
                Ok(put) => {
                    let a = put.append;
                    ask_producer(state, rec, &group, a.queue_offset, a.physical_offset as i64);
                }
                Err(e) if crate::undeliverable::is_poison(&e) => {
                    crate::undeliverable::set_aside(state, copy, Source::Transaction, &put_error_text(&e)).await?;
                }
                Err(e) => return Err(put_error_text(&e)),
            }
        }
        // The old copy is done with either way.
        let op = crate::send::put_one(state, op_message(state, offset)).await.map_err(|e| put_error_text(&e))?;
        self.resolved.insert(offset, op.append.queue_offset);
        Ok(())
    }
}

/// Sends CHECK_TRANSACTION_STATE about the half copy at
/// (`half_offset`, `commit_log_offset`) to one producer of `group`, with
/// the message (real topic restored) as the body. No producer online: it
/// is asked again next time.
fn ask_producer(state: &BrokerState, rec: &message::Record<'_>, group: &str, half_offset: i64, commit_log_offset: i64) {
    let conn = state.clients.producer_connection(group);
    let mut msg = match crate::schedule::to_due(rec, state.broker_addr) {
        Ok(m) => m,
        Err(why) => {
            tracing::error!(group, why, "half message without its real topic");
            return;
        }
    };
    msg.sys_flag = (msg.sys_flag & !SYSFLAG_TX_MASK) | SYSFLAG_TX_PREPARED;
    let mut body = Vec::new();
    if let Err(e) = message::encode_record(&msg, usize::MAX, &mut body) {
        tracing::error!(group, error = %e, "half message cannot be encoded for a check");
        return;
    }
    let uniq = rec.property(property::UNIQ_KEY).unwrap_or_default().to_string();
    let offset_id = message::offset_msg_id(state.broker_addr, commit_log_offset as u64);
    let Some(conn) = conn else {
        // RocketMQ 5 producers (gRPC) name no group: one publishing the
        // topic is asked on its Telemetry stream.
        if !crate::grpc::service::ask_transaction(state, &body, &offset_id, half_offset) {
            tracing::debug!(group, "no producer of the group online to check a transaction");
        }
        return;
    };
    let req = RemotingCommand::request(request::CHECK_TRANSACTION_STATE)
        .with("topic", &msg.topic)
        .with("tranStateTableOffset", half_offset)
        .with("commitLogOffset", commit_log_offset)
        .with("msgId", if uniq.is_empty() { offset_id.clone() } else { uniq.clone() })
        .with("transactionId", &uniq)
        .with("offsetMsgId", &offset_id)
        .with("brokerName", &state.broker_name)
        .with_body(body);
    if let Err(e) = send_oneway(&conn, req) {
        tracing::debug!(group, error = %e, "transaction check not sent");
    }
}

fn send_oneway(conn: &Connection, req: RemotingCommand) -> Result<(), spate_remoting::RemotingError> {
    conn.try_oneway(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send() -> NewMessage {
        NewMessage {
            topic: "Pay".into(),
            queue_id: 2,
            flag: 0,
            body: bytes::Bytes::from_static(b"order-1"),
            properties: message::encode_properties([("TRAN_MSG", "true"), ("PGROUP", "pg"), ("TAGS", "T")]).unwrap(),
            sys_flag: SYSFLAG_TX_PREPARED,
            born_timestamp: 5,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        }
    }

    #[test]
    fn half_is_hidden_in_the_half_topic_and_commits_back_to_the_real_one() {
        let mut m = send();
        assert!(is_half(m.sys_flag, &m.properties));
        to_half(&mut m);
        assert_eq!((m.topic.as_str(), m.queue_id), (HALF_TOPIC, 0));
        assert_eq!(m.sys_flag & SYSFLAG_TX_MASK, 0, "dispatched like any message");
        let mut buf = Vec::new();
        message::encode_record(&m, 1 << 20, &mut buf).unwrap();
        buf[message::PHYSICAL_OFFSET_POS..message::PHYSICAL_OFFSET_POS + 8].copy_from_slice(&77i64.to_be_bytes());
        let rec = message::decode_record(&buf, false).unwrap();
        let c = committed(&rec, "127.0.0.1:3".parse().unwrap()).unwrap();
        assert_eq!((c.topic.as_str(), c.queue_id), ("Pay", 2));
        assert_eq!(c.sys_flag & SYSFLAG_TX_MASK, SYSFLAG_TX_COMMIT);
        assert_eq!(c.prepared_tx_offset, 77);
        assert_eq!(message::property(&c.properties, "TRAN_MSG"), None);
        assert_eq!(message::property(&c.properties, "PGROUP"), Some("pg"));
        assert_eq!(message::property(&c.properties, "TAGS"), Some("T"));
        assert!(!is_half(0, ""));
    }

    #[test]
    fn op_bodies_hold_one_or_several_offsets() {
        assert_eq!(op_offsets(b"42"), vec![42]);
        assert_eq!(op_offsets(b"1,2, 3"), vec![1, 2, 3]);
        assert!(op_offsets(b"junk").is_empty());
    }
}
