//! PULL_MESSAGE with long polling, tag filtering and SQL92 property filters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spate_common::message::{self, PHYSICAL_OFFSET_POS};
use spate_remoting::protocol::MASTER_ID;
use spate_remoting::protocol::{perm, TagFilter};
use spate_remoting::{response, Connection, OutboundReservation, RemotingCommand};
use spate_store::{GetStatus, ReadLimits};

use crate::capacity::{self, limits::Op};
use crate::error::BrokerError;
use crate::sql_filter::SqlFilter;
use crate::BrokerState;

/// Pull request flag bits (`PullSysFlag`).
pub const FLAG_COMMIT_OFFSET: i32 = 0x1;
pub const FLAG_SUSPEND: i32 = 0x2;
pub const FLAG_SUBSCRIPTION: i32 = 0x4;

/// Room set aside for a pull answer's header beside its records.
pub(crate) const ANSWER_HEADER_BYTES: usize = 1024;

/// Longest a pull waits for the dispatcher before deciding an offset moved.
const DISPATCH_WAIT_MAX: Duration = Duration::from_millis(100);

/// Longest a pull may be held, whatever the client asks (`brokerSuspendMaxTimeMillis` is the client's side).
pub const MAX_SUSPEND: Duration = Duration::from_secs(60);

struct PullHeader {
    group: String,
    topic: String,
    queue_id: i32,
    queue_offset: i64,
    max_msgs: usize,
    max_bytes: usize,
    sys_flag: i32,
    commit_offset: i64,
    suspend: Duration,
    subscription: Option<String>,
    expression_type: String,
}

fn parse(req: &RemotingCommand) -> Result<PullHeader, BrokerError> {
    Ok(PullHeader {
        group: req.str_field("consumerGroup")?.to_string(),
        topic: req.str_field("topic")?.to_string(),
        queue_id: req.i32_field("queueId")?,
        queue_offset: req.i64_field("queueOffset")?,
        max_msgs: req.opt_i32_field("maxMsgNums")?.unwrap_or(32).max(1) as usize,
        max_bytes: req.opt_i32_field("maxMsgBytes")?.filter(|b| *b > 0).unwrap_or(i32::MAX) as usize,
        sys_flag: req.opt_i32_field("sysFlag")?.unwrap_or(0),
        commit_offset: req.opt_i64_field("commitOffset")?.unwrap_or(-1),
        suspend: Duration::from_millis(req.opt_i64_field("suspendTimeoutMillis")?.unwrap_or(0).max(0) as u64),
        subscription: req.field("subscription").map(str::to_string),
        expression_type: req.field("expressionType").unwrap_or("TAG").to_string(),
    })
}

/// The topic's config if this broker and the topic may be read (pulls and
/// pops alike); else the response code and remark refusing it.
pub(crate) fn readable_topic(
    state: &BrokerState,
    topic: &str,
) -> Result<spate_remoting::protocol::TopicConfig, (i32, String)> {
    if !perm::readable(state.config.read().broker_permission) {
        return Err((response::NO_PERMISSION, "the broker pulling message is forbidden".into()));
    }
    let Some(tc) = state.topics.get(topic) else {
        return Err((response::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist, apply first please!")));
    };
    if !perm::readable(tc.perm) {
        return Err((response::NO_PERMISSION, format!("the topic[{topic}] pulling message is forbidden")));
    }
    Ok(tc)
}

pub async fn pull(
    state: &Arc<BrokerState>,
    conn: &Arc<Connection>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    let h = parse(req)?;
    if let Err(e) = crate::names::validate_group(&h.group) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e));
    }
    let tc = match readable_topic(state, &h.topic) {
        Ok(tc) => tc,
        Err((code, remark)) => return Ok(RemotingCommand::error(req, code, remark)),
    };
    if h.queue_id < 0 || h.queue_id >= tc.read_queue_nums {
        return Ok(RemotingCommand::error(
            req,
            response::SYSTEM_ERROR,
            format!("queueId[{}] is illegal, topic[{}] has {} read queues", h.queue_id, h.topic, tc.read_queue_nums),
        ));
    }
    // The request's own expression when the client sends one, else what the
    // group registered by heartbeat, else everything.
    let (expression, expression_type) = match &h.subscription {
        Some(s) if h.sys_flag & FLAG_SUBSCRIPTION != 0 || !s.trim().is_empty() => {
            (s.clone(), h.expression_type.clone())
        }
        _ => match state.clients.subscription(&h.group, &h.topic) {
            Some(sub) => (sub.sub_string, sub.expression_type.unwrap_or_else(|| "TAG".into())),
            None => ("*".into(), "TAG".into()),
        },
    };
    let codes = match selector(state, &expression, &expression_type) {
        Ok(s) => s,
        Err((code, remark)) => return Ok(RemotingCommand::error(req, code, remark)),
    };
    // The answer's bytes are set aside in the connection's outbound budget
    // (`writeBufferHighWaterMark`) before it is read, and before a place in
    // the pull queue is taken: a peer that pipelines pulls and does not
    // read its answers waits here, on its own connection, holding neither
    // our memory nor the queue. Not held while the pull waits for messages.
    let answer_bytes =
        h.max_bytes.min(state.store.config().max_transfer_bytes_on_message_in_memory) + ANSWER_HEADER_BYTES;
    let mut reserved = Some(set_aside(conn, answer_bytes).await?);
    // Rate limits and the pull queue; the stage is held for the first read only.
    let client = state.clients.client_id_of(conn);
    let mut admitted = match capacity::admit(state, req.received_at, Op::Pull, &h.topic, &h.group, &client, 1).await {
        Ok(a) => Some(a),
        Err(refused) => return Ok(refused.response(req)),
    };
    state.groups.ensure(&h.group, state.config.read().auto_create_subscription_group);
    // A slave takes offsets from its master, not from pulls (as upstream).
    let on_slave = state.config.read().broker_role == crate::BrokerRole::Slave;
    if h.sys_flag & FLAG_COMMIT_OFFSET != 0 && h.commit_offset >= 0 && !on_slave {
        state.offsets.commit(&h.group, &h.topic, h.queue_id, h.commit_offset);
    }

    let suspend = h.sys_flag & FLAG_SUSPEND != 0 && !h.suspend.is_zero();
    let hold_for = if state.config.read().long_polling_enable {
        h.suspend.min(MAX_SUSPEND)
    } else {
        state.config.read().short_polling_time
    };
    let deadline = Instant::now() + hold_for;
    let mut slot = None;
    // While held, each append is dispatched at once, not on the dispatcher's next round.
    let mut _urgent = None;
    loop {
        // Subscribe before reading so a message stored (or confirmed) in between wakes us.
        let mut rx = state.long_poll.subscribe(&h.topic, h.queue_id);
        let mut confirmed = watch_read_limit(state);
        confirmed.borrow_and_update();
        if reserved.is_none() {
            reserved = Some(set_aside(conn, answer_bytes).await?);
        }
        let result = read(state, &h, codes.clone()).await?;
        admitted.take();
        let waiting = matches!(result.code, response::PULL_NOT_FOUND) && suspend;
        let left = deadline.saturating_duration_since(Instant::now());
        if !waiting || left.is_zero() {
            hold_for_answer(conn, req, reserved.take());
            return Ok(finish(state, &h.group, req, result));
        }
        if slot.is_none() {
            state.metrics.held_pulls.inc();
            slot = state.long_poll.hold();
            if slot.is_none() {
                // Too many waiting pulls: answer now, the client pulls again.
                hold_for_answer(conn, req, reserved.take());
                return Ok(finish(state, &h.group, req, result));
            }
            _urgent = Some(state.store.urgent_dispatch());
        }
        drop(reserved.take());
        let changed = tokio::select! {
            c = state.long_poll.wait(&mut rx, left) => c,
            // Messages were there but not yet held by the in-sync set: read again once they are.
            r = confirmed.changed(), if result.unconfirmed => r.is_ok(),
            // The client is gone: nobody to answer, free the slot now.
            _ = conn.closed() => return Ok(finish(state, &h.group, req, result)),
        };
        if !changed {
            // Timed out: one last read, then answer whatever it says.
            let reserved = set_aside(conn, answer_bytes).await?;
            let result = read(state, &h, codes.clone()).await?;
            hold_for_answer(conn, req, Some(reserved));
            return Ok(finish(state, &h.group, req, result));
        }
    }
}

/// Hands the answer's reservation to the connection, which gives it back
/// once the answer itself is counted as queued: no gap in between for
/// another pull to fill.
pub(crate) fn hold_for_answer(conn: &Arc<Connection>, req: &RemotingCommand, reserved: Option<OutboundReservation>) {
    if let Some(r) = reserved {
        conn.hold_until_answered(req.opaque, r);
    }
}

/// Waits for room in `conn`'s outbound budget; an error once it closed
/// (nobody is left to answer).
pub(crate) async fn set_aside(conn: &Arc<Connection>, bytes: usize) -> Result<OutboundReservation, BrokerError> {
    conn.reserve_outbound(bytes).await.map_err(BrokerError::from)
}

struct PullResult {
    code: i32,
    body: Option<BytesMut>,
    next_begin: i64,
    min: i64,
    max: i64,
    remark: Option<&'static str>,
    /// The records lie further back than `accessMessageInMemoryMaxRatio` of
    /// memory from the log's end: the consumer is slow and reads from disk.
    from_disk: bool,
    /// Messages past the confirm offset were held back.
    unconfirmed: bool,
}

/// Which broker of the group the consumer should pull this queue from next
/// (`suggestWhichBrokerId`). With `slaveReadEnable`, a master whose reads
/// go to disk sends the consumer to the group's `whichBrokerWhenConsumeSlowly`
/// slave, and a slave sends it back once it reads from memory again.
fn suggest_broker(state: &BrokerState, group: &str, r: &PullResult) -> i64 {
    let (role, slave_read, own_id) = {
        let c = state.config.read();
        (c.broker_role, c.slave_read_enable, c.broker_id)
    };
    match role {
        crate::BrokerRole::Slave if slave_read && r.from_disk => own_id,
        crate::BrokerRole::Slave => MASTER_ID,
        _ if slave_read && r.from_disk && state.replication.in_sync_slaves() > 0 => {
            state.groups.get(group).map_or(1, |g| g.which_broker_when_consume_slowly)
        }
        _ => MASTER_ID,
    }
}

fn finish(state: &BrokerState, group: &str, req: &RemotingCommand, r: PullResult) -> RemotingCommand {
    let mut resp = RemotingCommand::response_to(req, r.code, r.remark.map(str::to_string))
        .with("suggestWhichBrokerId", suggest_broker(state, group, &r))
        .with("nextBeginOffset", r.next_begin)
        .with("minOffset", r.min)
        .with("maxOffset", r.max);
    if let Some(body) = r.body {
        resp.body = body.freeze();
    }
    resp
}

/// Waits until the dispatcher has indexed everything below `log_end`, up to
/// `DISPATCH_WAIT_MAX`: a few yields first (it is usually microseconds
/// behind), then millisecond sleeps.
pub(crate) async fn wait_dispatched(state: &BrokerState, log_end: u64) {
    // A no-op unless the dispatcher is behind.
    state.store.wake_dispatcher();
    let deadline = Instant::now() + DISPATCH_WAIT_MAX;
    let mut spins = 0;
    while state.store.dispatched_offset() < log_end && Instant::now() < deadline {
        if spins < 64 {
            spins += 1;
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The selector of a subscription, or the response code and remark
/// refusing it (also what CHECK_CLIENT_CONFIG answers).
pub(crate) fn selector(
    state: &BrokerState,
    expression: &str,
    expression_type: &str,
) -> Result<Selector, (i32, String)> {
    if expression_type.eq_ignore_ascii_case("TAG") || expression_type.is_empty() {
        return Ok(Selector { codes: TagFilter::parse(expression).codes(), sql: None });
    }
    if !expression_type.eq_ignore_ascii_case("SQL92") {
        return Err((
            response::SUBSCRIPTION_PARSE_FAILED,
            format!("expression type {expression_type} is not supported; use TAG or SQL92"),
        ));
    }
    if !state.config.read().enable_property_filter {
        return Err((
            response::SYSTEM_ERROR,
            "The broker does not support consumer to filter message by SQL92 (enablePropertyFilter=false)".into(),
        ));
    }
    match SqlFilter::parse(expression) {
        Ok(f) => Ok(Selector { codes: Default::default(), sql: Some(Arc::new(f)) }),
        Err(why) => Err((
            response::SUBSCRIPTION_PARSE_FAILED,
            format!("parse the consumer's subscription[{expression}] failed: {why}"),
        )),
    }
}

/// What a pull selects: tag hash codes (empty: every tag) and, for a SQL92
/// subscription, a filter on the message's properties.
#[derive(Clone)]
pub(crate) struct Selector {
    codes: std::collections::BTreeSet<i32>,
    sql: Option<Arc<SqlFilter>>,
}

impl Selector {
    /// The tag-code filter and the record filter, as the store takes them.
    pub(crate) fn filters(self) -> (impl Fn(i64) -> bool, impl Fn(&[u8]) -> bool) {
        let Selector { codes, sql } = self;
        let by_code = move |code: i64| codes.is_empty() || codes.contains(&(code as i32));
        let by_properties = move |rec: &[u8]| {
            sql.as_ref().is_none_or(|f| message::decode_record(rec, false).is_ok_and(|r| f.matches(r.properties)))
        };
        (by_code, by_properties)
    }
}

async fn read(state: &Arc<BrokerState>, h: &PullHeader, selector: Selector) -> Result<PullResult, BrokerError> {
    let codes_again = selector.clone();
    let (filter, by_properties) = selector.filters();
    let store = state.store.clone();
    let (topic, queue_id, offset, max_msgs, max_bytes) =
        (h.topic.clone(), h.queue_id, h.queue_offset, h.max_msgs, h.max_bytes);
    // A pull sees every message whose send was acknowledged before it
    // began: wait (briefly, bounded) for the dispatcher to index them,
    // woken now if it was napping between rounds: rarely more than a few yields.
    let log_end = state.store.max_offset();
    let read_started = Instant::now();
    wait_dispatched(state, log_end).await;
    // A consumer at the queue's tail reads what is in the page cache: read
    // it here. Anything else may fault pages in from disk: keep that off
    // the async workers.
    // Under the controller, only what the in-sync set holds (see `read_limit`).
    let limit = read_limit(state);
    let limits = ReadLimits { max_msgs, max_bytes, physical_end: limit.unwrap_or(u64::MAX) };
    let inline =
        store.get_messages_if_resident_within(&topic, queue_id, offset, limits, Some(&filter), Some(&by_properties))?;
    let got = match inline {
        Some(got) => got,
        None => tokio::task::spawn_blocking(move || {
            store.get_messages_within(&topic, queue_id, offset, limits, Some(&filter), Some(&by_properties))
        })
        .await
        .map_err(|e| BrokerError::Config(format!("pull task failed: {e}")))??,
    };
    state.metrics.latency(crate::metrics::Kind::PullRead, read_started.elapsed());
    let from_disk =
        got.messages.first().and_then(|m| m.get(PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8)).is_some_and(|b| {
            let at = u64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
            state.store.max_offset().saturating_sub(at) > state.hot_bytes
        });
    // A queue that looks short while the dispatcher has not yet caught up
    // with what was appended before this pull is not a moved offset: wait
    // briefly for the dispatch and read again.
    let short =
        matches!(got.status, GetStatus::NoMessageInQueue | GetStatus::NoMatchingQueue | GetStatus::OffsetOverflowBadly);
    if short && state.store.dispatched_offset() < log_end {
        let deadline = Instant::now() + DISPATCH_WAIT_MAX;
        while state.store.dispatched_offset() < log_end && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if state.store.dispatched_offset() >= log_end {
            return Box::pin(read(state, h, codes_again)).await;
        }
        // Still behind: answer "nothing new" without moving the offset.
        return Ok(PullResult {
            code: response::PULL_NOT_FOUND,
            body: None,
            next_begin: h.queue_offset,
            min: got.min_offset,
            max: got.max_offset,
            remark: None,
            from_disk,
            unconfirmed: false,
        });
    }
    // Bytes past the limit exist: a held pull also waits for the limit to move.
    let unconfirmed = limit.is_some_and(|l| l < state.store.max_offset());
    let next_begin = got.next_begin_offset;
    let (code, remark) = match got.status {
        GetStatus::Found => (response::SUCCESS, None),
        GetStatus::NoMatchedMessage => (response::PULL_RETRY_IMMEDIATELY, Some("no message matched the filter")),
        GetStatus::NoMessageInQueue | GetStatus::NoMatchingQueue if h.queue_offset != 0 => {
            (response::PULL_OFFSET_MOVED, Some("the queue is empty"))
        }
        GetStatus::NoMessageInQueue | GetStatus::NoMatchingQueue => (response::PULL_NOT_FOUND, None),
        GetStatus::OffsetOverflowOne => (response::PULL_NOT_FOUND, None),
        GetStatus::OffsetTooSmall | GetStatus::OffsetOverflowBadly => {
            (response::PULL_OFFSET_MOVED, Some("offset is outside the queue"))
        }
        // Units pointing at deleted data: move on at once, do not hold.
        GetStatus::OffsetFoundNull => (response::PULL_RETRY_IMMEDIATELY, Some("messages were deleted; skipping ahead")),
    };
    // A slave may lag its master: an offset it does not have is not a moved
    // one (upstream's offsetCheckInSlave=false). Keep the consumer where it is.
    let (code, remark, next_begin) =
        if code == response::PULL_OFFSET_MOVED && state.config.read().broker_role == crate::BrokerRole::Slave {
            (response::PULL_RETRY_IMMEDIATELY, Some("this slave does not have that offset yet"), h.queue_offset)
        } else {
            (code, remark, next_begin)
        };
    let body = if got.messages.is_empty() {
        None
    } else {
        let total: usize = got.messages.iter().map(Vec::len).sum();
        let mut b = BytesMut::with_capacity(total);
        for m in &got.messages {
            b.extend_from_slice(m);
        }
        state.stats.record_get(got.messages.len() as u64, total as u64);
        state.metrics.delivered(&h.topic, got.messages.len() as u64, total as u64);
        Some(b)
    };
    Ok(PullResult { code, body, next_begin, min: got.min_offset, max: got.max_offset, remark, from_disk, unconfirmed })
}

/// Where reads stop, under the controller: a master serves below its
/// confirm offset, a slave below the one its master last sent, and a
/// fenced broker (following nobody) serves nothing new, as its tail may be
/// cut when it rejoins. `None`: no limit (static roles, as upstream).
pub(crate) fn read_limit(state: &BrokerState) -> Option<u64> {
    let (controlled, role, following) = {
        let c = state.config.read();
        (!c.zk_addr.is_empty(), c.broker_role, !c.ha_master_address.is_empty())
    };
    if !controlled {
        return None;
    }
    match role {
        crate::BrokerRole::Slave if following => Some(*state.slave.confirm.borrow()).filter(|c| *c != u64::MAX),
        crate::BrokerRole::Slave => Some(0),
        _ => state.replication.confirm_offset(),
    }
}

/// Changes when [`read_limit`] may have moved.
fn watch_read_limit(state: &BrokerState) -> tokio::sync::watch::Receiver<u64> {
    if state.config.read().broker_role == crate::BrokerRole::Slave {
        state.slave.confirm.subscribe()
    } else {
        state.replication.watch_confirm()
    }
}
