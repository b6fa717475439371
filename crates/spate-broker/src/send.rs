//! Sending: [`send`], one message or a batch, for both front ends; [`handle`]
//! decodes and answers SEND_MESSAGE, SEND_MESSAGE_V2 and SEND_BATCH_MESSAGE.

use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, Bytes};
use spate_common::message::{self, offset_msg_id, property, NewMessage};
use spate_remoting::protocol::{perm, DEFAULT_TOPIC, DLQ_GROUP_TOPIC_PREFIX, RETRY_GROUP_TOPIC_PREFIX};
use spate_remoting::{request, response, RemotingCommand};
use spate_store::{MessageStore, PutBatchResult, PutResult, StoreError};

use crate::capacity::{self, limits::Op};
use crate::error::BrokerError;
use crate::ha::ReplicaWait;
use crate::origin::Origin;
use crate::refusal::Refusal;
use crate::{schedule, timer, transaction};
use crate::{BrokerRole, BrokerState};

/// The request header of a send, whichever code carried it.
#[derive(Debug, Clone)]
pub struct SendHeader {
    pub producer_group: String,
    pub topic: String,
    pub default_topic: String,
    pub default_topic_queue_nums: i32,
    pub queue_id: i32,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub flag: i32,
    pub properties: String,
    pub reconsume_times: i32,
    pub max_reconsume_times: Option<i32>,
    /// The body holds a batch of encoded messages (SEND_BATCH_MESSAGE).
    pub batch: bool,
}

/// SEND_MESSAGE_V2's one-letter keys, by long name.
const V2_KEYS: &[(&str, &str)] = &[
    ("producerGroup", "a"),
    ("topic", "b"),
    ("defaultTopic", "c"),
    ("defaultTopicQueueNums", "d"),
    ("queueId", "e"),
    ("sysFlag", "f"),
    ("bornTimestamp", "g"),
    ("flag", "h"),
    ("properties", "i"),
    ("reconsumeTimes", "j"),
    ("unitMode", "k"),
    ("maxReconsumeTimes", "l"),
    ("batch", "m"),
];

impl SendHeader {
    pub fn parse(req: &RemotingCommand) -> Result<SendHeader, BrokerError> {
        // SEND_MESSAGE_V2 (and batches sent with its header) use one-letter
        // keys: look each field up under the name this header form uses,
        // without copying the request.
        let v2 =
            req.code == request::SEND_MESSAGE_V2 || req.code == request::SEND_BATCH_MESSAGE && req.field("b").is_some();
        let k = |long: &'static str| -> &'static str {
            if v2 {
                V2_KEYS.iter().find(|(l, _)| *l == long).map_or(long, |(_, short)| short)
            } else {
                long
            }
        };
        Ok(SendHeader {
            producer_group: req.field(k("producerGroup")).unwrap_or_default().to_string(),
            topic: req.str_field(k("topic"))?.to_string(),
            default_topic: req.field(k("defaultTopic")).unwrap_or(DEFAULT_TOPIC).to_string(),
            default_topic_queue_nums: req.opt_i32_field(k("defaultTopicQueueNums"))?.unwrap_or(4),
            queue_id: req.opt_i32_field(k("queueId"))?.unwrap_or(-1),
            sys_flag: req.opt_i32_field(k("sysFlag"))?.unwrap_or(0),
            born_timestamp: req.opt_i64_field(k("bornTimestamp"))?.unwrap_or(0),
            flag: req.opt_i32_field(k("flag"))?.unwrap_or(0),
            properties: req.field(k("properties")).unwrap_or_default().to_string(),
            reconsume_times: req.opt_i32_field(k("reconsumeTimes"))?.unwrap_or(0),
            max_reconsume_times: req.opt_i32_field(k("maxReconsumeTimes"))?,
            batch: req.code == request::SEND_BATCH_MESSAGE || req.opt_bool_field(k("batch"))?.unwrap_or(false),
        })
    }
}

/// Stores one message (see [`append`]).
pub async fn put_one(state: &Arc<BrokerState>, msg: NewMessage) -> Result<PutResult, PutError> {
    let bytes = approx_record_len(&msg);
    append(state, bytes, move |store| store.put_message(&msg)).await
}

/// The append is a memory copy and runs inline, except near the end of a
/// segment, where it might wait for the next one: then it runs on the
/// blocking pool so no runtime worker waits.
async fn append<T: Send + 'static>(
    state: &Arc<BrokerState>,
    bytes: usize,
    put: impl FnOnce(&MessageStore) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, PutError> {
    writable_here(state)?;
    let stored = if !state.store.append_may_wait(bytes) {
        put(&state.store)
    } else {
        let store = state.store.clone();
        tokio::task::spawn_blocking(move || put(&store)).await.unwrap_or(Err(StoreError::Busy("append task failed")))
    };
    state.replication.notify_appended();
    Ok(stored?)
}

/// Why an append did not happen.
#[derive(Debug)]
pub enum PutError {
    /// This broker does not take the append (role, replication); nothing stored.
    Refused {
        code: i32,
        remark: String,
    },
    Store(StoreError),
}

impl From<StoreError> for PutError {
    fn from(e: StoreError) -> PutError {
        PutError::Store(e)
    }
}

impl From<PutError> for crate::error::BrokerError {
    fn from(e: PutError) -> Self {
        match e {
            PutError::Store(e) => e.into(),
            PutError::Refused { remark, .. } => crate::error::BrokerError::AppendRefused(remark),
        }
    }
}

impl PutError {
    pub fn refusal(&self) -> Refusal {
        match self {
            PutError::Refused { code, remark } => Refusal::new(*code, remark.clone()),
            PutError::Store(e) => Refusal::from_store(e),
        }
    }

    pub fn response(&self, req: &RemotingCommand) -> RemotingCommand {
        self.refusal().response(req)
    }
}

/// Refuses an append this broker must not take: it is a slave, or it is a
/// strict SYNC_MASTER without enough slaves to replicate to.
fn writable_here(state: &BrokerState) -> Result<(), PutError> {
    let c = state.config.read();
    match c.broker_role {
        // Upstream's answer for a put on a slave.
        BrokerRole::Slave => Err(PutError::Refused {
            code: response::SERVICE_NOT_AVAILABLE,
            remark: format!(
                "broker {} (brokerId {}) is a slave: messages are sent to its master",
                c.broker_name, c.broker_id
            ),
        }),
        // Upstream answers IN_SYNC_REPLICAS_NOT_ENOUGH with SYSTEM_ERROR.
        BrokerRole::SyncMaster if c.ha_strict_sync && !state.replication.enough_slaves() => Err(PutError::Refused {
            code: response::SYSTEM_ERROR,
            remark: format!(
                "in-sync replicas not enough: {} of {} slaves in sync (haStrictSync); the message was not stored",
                state.replication.in_sync_slaves(),
                c.in_sync_replicas.saturating_sub(1)
            ),
        }),
        _ => Ok(()),
    }
}

/// On a SYNC_MASTER, waits until the required slaves hold everything below
/// `end`; sets the response's code when they do not (see [`replicated`]).
/// A response that is already a failure is left as it is.
pub async fn await_replication(state: &BrokerState, end: u64, resp: &mut RemotingCommand) {
    if resp.code != response::SUCCESS {
        return;
    }
    if let Err(r) = replicated(state, end).await {
        resp.code = r.code;
        resp.remark = Some(r.remark);
    }
}

/// On a SYNC_MASTER, waits until the required slaves hold everything below
/// `end`. The refusal is what the client is told when they do not
/// (upstream's SLAVE_NOT_AVAILABLE / FLUSH_SLAVE_TIMEOUT, or a failure with
/// `haStrictSync`), or when this broker stopped being the master.
pub async fn replicated(state: &BrokerState, end: u64) -> Result<(), Refusal> {
    let (role, timeout, strict) = {
        let c = state.config.read();
        (c.broker_role, c.ha_sync_timeout, c.ha_strict_sync)
    };
    if role == BrokerRole::Slave {
        // Stored while this broker was master, but it was fenced or demoted
        // before the send could be acknowledged: it no longer speaks for the
        // group, and its tail may be cut. Never acknowledged.
        return Err(Refusal::new(
            response::SYSTEM_ERROR,
            "this broker stopped being the master before the send was acknowledged",
        ));
    }
    if role != BrokerRole::SyncMaster {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let outcome = state.replication.wait_replicated(end, timeout).await;
    state.metrics.latency(crate::metrics::Kind::Replication, started.elapsed());
    // Fenced or demoted while waiting: whatever the slaves hold now, this
    // broker no longer speaks for the group.
    let demoted = state.config.read().broker_role == BrokerRole::Slave;
    let outcome = if demoted { ReplicaWait::RuleChanged } else { outcome };
    let (code, remark) = match outcome {
        ReplicaWait::Replicated => return Ok(()),
        ReplicaWait::RuleChanged => {
            return Err(Refusal::new(
                response::SYSTEM_ERROR,
                "this broker stopped being the master while the send waited for its slaves; not acknowledged",
            ))
        }
        ReplicaWait::NoSlave => (response::SLAVE_NOT_AVAILABLE, "no slave in sync to replicate to"),
        ReplicaWait::Timeout => (response::FLUSH_SLAVE_TIMEOUT, "slaves did not acknowledge in time (haSyncTimeout)"),
    };
    Err(if strict {
        Refusal::new(
            response::SYSTEM_ERROR,
            format!("{remark}; stored on the master only, not acknowledged (haStrictSync)"),
        )
    } else {
        Refusal::new(code, remark)
    })
}

/// Stores a batch contiguously, like [`put_one`].
pub async fn put_many(state: &Arc<BrokerState>, msgs: Vec<NewMessage>) -> Result<PutBatchResult, PutError> {
    let bytes: usize = msgs.iter().map(approx_record_len).sum();
    append(state, bytes, move |store| store.put_messages(&msgs)).await
}

/// A record's size give or take its fixed header (at most ~120 bytes).
fn approx_record_len(m: &NewMessage) -> usize {
    m.body.len() + m.properties.len() + m.topic.len() + 128
}

/// Maps a store failure to the response a client understands.
pub fn store_error_response(req: &RemotingCommand, e: &StoreError) -> RemotingCommand {
    Refusal::from_store(e).response(req)
}

/// A send, decoded by whichever front end carried it.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub header: SendHeader,
    /// One message's body, or a batch's encoded messages.
    pub body: Bytes,
    /// When the request was read: its wait for the send stage counts from then.
    pub received_at: Option<Instant>,
}

/// What a send stored.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The offset message id; a batch's, one per message, joined by commas.
    pub msg_id: String,
    pub queue_id: i32,
    /// The (first) message's offset in its queue.
    pub queue_offset: i64,
    /// Stored, but not made durable or replicated as this broker is set to
    /// (flush or slave timeout, ...): what to answer instead of success.
    pub unconfirmed: Option<Refusal>,
    /// A timer message's recall handle (`timer::RecallHandle`).
    pub recall_handle: Option<String>,
}

impl Stored {
    /// The remoting answer to the send `req`.
    pub fn response(self, req: &RemotingCommand) -> RemotingCommand {
        let mut resp = RemotingCommand::success(req);
        if let Some(u) = self.unconfirmed {
            resp.code = u.code;
            resp.remark = Some(u.remark);
        }
        let resp = resp
            .with("msgId", self.msg_id)
            .with("queueId", self.queue_id)
            .with("queueOffset", self.queue_offset)
            .with("MSG_REGION", "DefaultRegion")
            .with("TRACE_ON", "true");
        match self.recall_handle {
            Some(h) => resp.with("recallHandle", h),
            None => resp,
        }
    }
}

/// SEND_MESSAGE, SEND_MESSAGE_V2 and SEND_BATCH_MESSAGE: the remoting
/// front end of [`send`].
pub async fn handle(
    state: &Arc<BrokerState>,
    origin: &Origin<'_>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    let header = SendHeader::parse(req)?;
    let sent = send(state, origin, SendRequest { header, body: req.body.clone(), received_at: req.received_at }).await;
    Ok(match sent {
        Ok(stored) => stored.response(req),
        Err(refusal) => refusal.response(req),
    })
}

/// Stores one message or a batch, whichever front end sent it: checks the
/// topic and queue, routes a half, delayed or timer message to where it
/// waits, admits it past the capacity limits, appends it, and waits for the
/// flush and the slaves as this broker is set to.
pub async fn send(state: &Arc<BrokerState>, origin: &Origin<'_>, req: SendRequest) -> Result<Stored, Refusal> {
    let SendRequest { header: mut h, body, received_at } = req;
    if let Err(e) = message::validate_topic(&h.topic) {
        return Err(Refusal::new(response::INVALID_PARAMETER, e.to_string()));
    }
    if let Err(why) = crate::names::client_may_send(&h.topic) {
        return Err(Refusal::new(response::NO_PERMISSION, why));
    }
    if let Some(group) = h.topic.strip_prefix(RETRY_GROUP_TOPIC_PREFIX) {
        // Upstream's rule: a retry topic is written only for a known group.
        if state.groups.get(group).is_none() {
            return Err(Refusal::new(
                response::SUBSCRIPTION_GROUP_NOT_EXIST,
                format!("subscription group {group} not exist; retry topic {} cannot be written", h.topic),
            ));
        }
    }
    if h.queue_id < -1 {
        return Err(Refusal::new(response::INVALID_PARAMETER, format!("queueId {} is illegal", h.queue_id)));
    }
    if h.reconsume_times < 0 {
        return Err(Refusal::new(
            response::INVALID_PARAMETER,
            format!("reconsumeTimes {} is illegal", h.reconsume_times),
        ));
    }
    // Stored as upstream's broker stores it: parsed and written again, so
    // what is acknowledged is always what recovery keeps.
    if let std::borrow::Cow::Owned(p) = message::canonical_properties(&h.properties) {
        h.properties = p;
    }
    if !perm::writeable(state.config.read().broker_permission) {
        return Err(Refusal::new(
            response::NO_PERMISSION,
            format!("the broker[{}] sending message is forbidden", state.broker_name),
        ));
    }
    // A retry-topic message past its group's retry budget goes to the DLQ.
    if let Some(group) = h.topic.strip_prefix(RETRY_GROUP_TOPIC_PREFIX) {
        let max = h.max_reconsume_times.unwrap_or(16);
        if h.reconsume_times > max {
            h.topic = spate_remoting::protocol::dlq_topic(group);
            h.queue_id = 0;
        }
    }
    let mut received_at = received_at;
    let topic_config = match state.topics.get(&h.topic) {
        Some(tc) => tc,
        None => match auto_create(state, &h).await? {
            Some(tc) => {
                // Creating the topic persisted the topic table: that wait
                // is the broker's, not time the request spent queued for
                // the send stage.
                received_at = Some(Instant::now());
                tc
            }
            None => {
                return Err(Refusal::new(
                    response::TOPIC_NOT_EXIST,
                    format!("topic[{}] not exist, apply first please!", h.topic),
                ))
            }
        },
    };
    if !perm::writeable(topic_config.perm) {
        return Err(Refusal::new(
            response::NO_PERMISSION,
            format!("the topic[{}] sending message is forbidden", h.topic),
        ));
    }
    let queue_id =
        if h.queue_id < 0 { (rand_index() % topic_config.write_queue_nums.max(1) as u64) as i32 } else { h.queue_id };
    if queue_id >= topic_config.write_queue_nums.max(topic_config.read_queue_nums) {
        // SYSTEM_ERROR as upstream: clients retry it after refreshing the
        // route (a producer still on TBW102's route may pick a queue the
        // real topic does not have).
        return Err(Refusal::new(
            response::SYSTEM_ERROR,
            format!(
                "queueId[{queue_id}] is illegal, topic[{}] has {} write queues",
                h.topic, topic_config.write_queue_nums
            ),
        ));
    }
    let base = NewMessage {
        topic: h.topic.clone(),
        queue_id,
        flag: h.flag,
        body,
        // Moved, not copied: the header's string is not needed again.
        properties: std::mem::take(&mut h.properties),
        sys_flag: h.sys_flag,
        born_timestamp: h.born_timestamp,
        born_host: origin.peer,
        store_host: state.broker_addr,
        reconsume_times: h.reconsume_times,
        prepared_tx_offset: 0,
    };
    let client = origin.client_id.as_str();
    if h.batch && transaction::is_half(base.sys_flag, &base.properties) {
        return Err(Refusal::new(
            response::MESSAGE_ILLEGAL,
            "transactional messages cannot be sent in a batch; nothing was stored",
        ));
    }
    if h.batch {
        return send_batch(state, received_at, base, &h.producer_group, client).await;
    }
    // A half, delayed or timer message waits in a system topic; the checks
    // above were on its real topic.
    let mut base = base;
    let recall_handle = route_special(state, &mut base, &h.producer_group)
        .map_err(|why| Refusal::new(response::MESSAGE_ILLEGAL, why))?;
    let queue_id = base.queue_id;
    // Rate limits and the send queue; the stage is held only for the append.
    let admitted = capacity::admit(state, received_at, Op::Send, &h.topic, &h.producer_group, client, 1).await?;
    let put = put_one(state, base).await;
    drop(admitted);
    let put = put.map_err(|e| e.refusal())?;
    let a = put.append;
    let unconfirmed = match put.flush.wait().await {
        Err(e) => Some(Refusal::from_store(&e)),
        Ok(()) => replicated(state, a.physical_offset + a.size as u64).await.err(),
    };
    state.stats.record_put(1, a.size as u64);
    state.metrics.stored(&h.topic, 1, a.size as u64);
    Ok(Stored {
        msg_id: offset_msg_id(state.broker_addr, a.physical_offset),
        queue_id,
        queue_offset: a.queue_offset,
        unconfirmed,
        recall_handle,
    })
}

async fn send_batch(
    state: &Arc<BrokerState>,
    received_at: Option<Instant>,
    base: NewMessage,
    group: &str,
    client: &str,
) -> Result<Stored, Refusal> {
    // A shed class is refused before its body is taken apart.
    let class = capacity::degraded_refusal(state, Op::Send, &base.topic, group)?;
    let msgs = decode_batch(&base.body, &base).map_err(|why| Refusal::new(response::MESSAGE_ILLEGAL, why))?;
    if msgs.is_empty() {
        return Err(Refusal::new(response::MESSAGE_ILLEGAL, "batch has no messages"));
    }
    let queue_id = base.queue_id;
    let base_topic = base.topic.clone();
    let n = u32::try_from(msgs.len()).unwrap_or(u32::MAX);
    let admitted =
        capacity::admit_past_degradation(state, received_at, Op::Send, &base_topic, group, client, n, class).await?;
    let put = put_many(state, msgs).await;
    drop(admitted);
    let put = put.map_err(|e| e.refusal())?;
    let mut unconfirmed = put.flush.wait().await.err().map(|e| Refusal::from_store(&e));
    if let (None, Some(last)) = (&unconfirmed, put.appends.last()) {
        unconfirmed = replicated(state, last.physical_offset + last.size as u64).await.err();
    }
    let ids: Vec<String> = put.appends.iter().map(|a| offset_msg_id(state.broker_addr, a.physical_offset)).collect();
    let bytes: u64 = put.appends.iter().map(|a| a.size as u64).sum();
    state.stats.record_put(put.appends.len() as u64, bytes);
    state.metrics.stored(&base_topic, put.appends.len() as u64, bytes);
    Ok(Stored {
        msg_id: ids.join(","),
        queue_id,
        queue_offset: put.appends.first().map_or(0, |a| a.queue_offset),
        unconfirmed,
        recall_handle: None,
    })
}

/// Splits a batch body (upstream's encodeMessages layout):
/// `totalSize i32 | magic i32 | bodyCRC i32 | flag i32 | bodyLen i32 | body | propLen i16 | props`.
pub fn decode_batch(body: &Bytes, base: &NewMessage) -> Result<Vec<NewMessage>, String> {
    const MAX_BATCH: usize = 10_000;
    let mut buf = body.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        if out.len() >= MAX_BATCH {
            return Err(format!("batch has more than {MAX_BATCH} messages"));
        }
        if buf.remaining() < 20 {
            return Err(format!("batch entry {} is truncated", out.len()));
        }
        let total = buf.get_i32();
        if total < 22 || total as usize - 4 > buf.remaining() {
            return Err(format!("batch entry {} has bad size {total}", out.len()));
        }
        let mut entry = buf.split_to(total as usize - 4);
        let _magic = entry.get_i32();
        let _crc = entry.get_i32();
        let flag = entry.get_i32();
        let body_len = entry.get_i32();
        if body_len < 0 || body_len as usize + 2 > entry.remaining() {
            return Err(format!("batch entry {} has bad body length {body_len}", out.len()));
        }
        let msg_body = entry.split_to(body_len as usize);
        let prop_len = entry.get_i16();
        if prop_len < 0 || prop_len as usize > entry.remaining() {
            return Err(format!("batch entry {} has bad properties length {prop_len}", out.len()));
        }
        let props = std::str::from_utf8(&entry[..prop_len as usize])
            .map_err(|_| format!("batch entry {} properties are not UTF-8", out.len()))?;
        let props = message::canonical_properties(props).into_owned();
        // A batch lands contiguously in one queue; a delayed message cannot
        // (upstream's clients refuse to batch them too).
        if routed_elsewhere(&props)
            && (schedule::requested_level(&props).is_some()
                || TIMER_PROPERTIES.iter().any(|k| message::property(&props, k).is_some()))
        {
            return Err(format!(
                "batch entry {} is delayed (DELAY or TIMER_*); delayed messages are sent one by one",
                out.len()
            ));
        }
        let mut m = base.clone();
        m.flag = flag;
        m.body = msg_body;
        m.properties = props;
        out.push(m);
    }
    Ok(out)
}

/// Sends a transaction's half, a delayed or a timer message where it waits
/// (transaction.rs, schedule.rs, timer.rs); an ordinary message is left
/// as it is after one pass over its properties. A timer message's recall
/// handle comes back; the error is a timer property that cannot be used.
fn route_special(state: &BrokerState, msg: &mut NewMessage, producer_group: &str) -> Result<Option<String>, String> {
    let prepared = msg.sys_flag & message::SYSFLAG_TX_MASK == message::SYSFLAG_TX_PREPARED;
    if !prepared && !routed_elsewhere(&msg.properties) {
        return Ok(None);
    }
    if transaction::is_half(msg.sys_flag, &msg.properties) {
        if message::property(&msg.properties, transaction::PGROUP).is_none() {
            let with_group =
                message::properties(&msg.properties).chain([(transaction::PGROUP, producer_group)]).collect::<Vec<_>>();
            if let Ok(p) = message::encode_properties(with_group) {
                msg.properties = p;
            }
        }
        transaction::to_half(msg);
    } else if let Some(level) = schedule::requested_level(&msg.properties) {
        let levels = state.config.read().message_delay_levels.len();
        schedule::to_waiting(msg, level, levels);
    } else {
        let max_delay = state.config.read().timer_max_delay;
        if let Some(due) = timer::requested_due(&msg.properties, schedule::now_ms(), max_delay)? {
            let handle = message::property(&msg.properties, property::UNIQ_KEY).map(|key| timer::RecallHandle {
                topic: msg.topic.clone(),
                broker_name: state.broker_name.clone(),
                due_ms: due,
                key: key.to_string(),
            });
            timer::to_waiting(msg, due);
            return Ok(handle.filter(timer::RecallHandle::encodable).map(|h| h.encode()));
        }
    }
    Ok(None)
}

const TIMER_PROPERTIES: [&str; 3] = [property::TIMER_DELIVER_MS, property::TIMER_DELAY_SEC, property::TIMER_DELAY_MS];

/// Whether a message carries a property that sends it somewhere other than
/// its topic for now (a transaction's half, a delay, a timer): one pass.
fn routed_elsewhere(properties: &str) -> bool {
    message::properties(properties)
        .any(|(k, _)| k == property::TRAN_MSG || k == property::DELAY || TIMER_PROPERTIES.contains(&k))
}

/// Creates the topic of a first send, and persists the table before the
/// message is stored: an acknowledged message's topic survives a crash.
async fn auto_create(
    state: &Arc<BrokerState>,
    h: &SendHeader,
) -> Result<Option<spate_remoting::protocol::TopicConfig>, BrokerError> {
    if !state.config.read().auto_create_topic_enable {
        return Ok(None);
    }
    let created = if h.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) || h.topic.starts_with(DLQ_GROUP_TOPIC_PREFIX) {
        let tc = spate_remoting::protocol::TopicConfig::new(&h.topic, 1, perm::READ | perm::WRITE);
        state.topics.upsert(tc.clone()).then_some(tc)
    } else {
        state.topics.create_on_send(&h.topic, &h.default_topic, h.default_topic_queue_nums)
    };
    let Some(tc) = created else { return Ok(None) };
    tracing::info!(topic = %h.topic, queues = tc.write_queue_nums, "topic created on first send");
    state.topics.persist().await?;
    state.topics_changed();
    Ok(Some(tc))
}

fn rand_index() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The properties of a message sent back for retry: the original ones plus
/// where it came from.
pub fn retry_properties(original: &str, origin_topic: &str, origin_msg_id: &str) -> String {
    let mut pairs: Vec<(&str, &str)> = message::properties(original)
        .filter(|(k, _)| *k != property::RETRY_TOPIC && *k != property::ORIGIN_MESSAGE_ID)
        .collect();
    pairs.push((property::RETRY_TOPIC, origin_topic));
    pairs.push((property::ORIGIN_MESSAGE_ID, origin_msg_id));
    message::encode_properties(pairs).unwrap_or_else(|_| original.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn base() -> NewMessage {
        NewMessage {
            topic: "T".into(),
            queue_id: 0,
            flag: 0,
            body: Bytes::new(),
            properties: String::new(),
            sys_flag: 0,
            born_timestamp: 0,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        }
    }

    fn entry(body: &[u8], props: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.put_i32((4 + 4 + 4 + 4 + 4 + body.len() + 2 + props.len()) as i32);
        b.put_i32(0);
        b.put_i32(0);
        b.put_i32(7);
        b.put_i32(body.len() as i32);
        b.put_slice(body);
        b.put_i16(props.len() as i16);
        b.put_slice(props.as_bytes());
        b
    }

    #[test]
    fn batch_bodies_split_and_bad_sizes_are_refused() {
        let mut all = entry(b"one", "KEYS\u{1}a\u{2}");
        all.extend(entry(b"two!", ""));
        let msgs = decode_batch(&Bytes::from(all.clone()), &base()).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(&msgs[0].body[..], b"one");
        assert_eq!(msgs[0].flag, 7);
        assert_eq!(msgs[0].properties, "KEYS\u{1}a\u{2}");
        assert_eq!(&msgs[1].body[..], b"two!");
        for cut in 1..all.len() {
            assert!(
                decode_batch(&Bytes::from(all[..cut].to_vec()), &base()).is_err()
                    || cut == entry(b"one", "KEYS\u{1}a\u{2}").len()
            );
        }
    }

    #[test]
    fn v2_header_maps_one_letter_keys() {
        let req = RemotingCommand::request(request::SEND_MESSAGE_V2)
            .with("a", "pg")
            .with("b", "T")
            .with("e", "3")
            .with("i", "TAGS\u{1}x\u{2}")
            .with("m", "false");
        let h = SendHeader::parse(&req).unwrap();
        assert_eq!((h.producer_group.as_str(), h.topic.as_str(), h.queue_id), ("pg", "T", 3));
        assert_eq!(h.properties, "TAGS\u{1}x\u{2}");
        assert!(!h.batch);
        let missing = RemotingCommand::request(request::SEND_MESSAGE).with("queueId", "1");
        assert!(SendHeader::parse(&missing).unwrap_err().to_string().contains("topic"));
    }
}
