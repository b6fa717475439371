//! Requests about consumers: heartbeats and membership, offsets, orderly
//! queue locks, and messages sent back for retry.

use std::sync::Arc;
use std::time::Instant;

use spate_common::message::{self, decode_record, NewMessage};
use spate_remoting::protocol::{
    dlq_topic, json, perm, retry_topic, CheckClientRequestBody, ConsumerListBody, HeartbeatData, LockBatchRequestBody,
    LockBatchResponseBody, TopicConfig,
};
use spate_remoting::{request, response, Connection, RemotingCommand};

use crate::clients::ClientChannel;
use crate::error::BrokerError;
use crate::send::{retry_properties, store_error_response};
use crate::BrokerState;

pub async fn heart_beat(
    state: &Arc<BrokerState>,
    conn: &Arc<Connection>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    let hb: HeartbeatData = json::decode(&req.body, "HeartbeatData")?;
    state.clients.note_client_id(conn, &hb.client_id);
    let channel = |client_id: &str| ClientChannel {
        client_id: client_id.to_string(),
        conn: conn.clone(),
        language: req.language.name().to_string(),
        version: req.version,
        last_update: Instant::now(),
    };
    let (auto_group, max_new_groups) = {
        let c = state.config.read();
        (c.auto_create_subscription_group, c.heartbeat_max_new_groups)
    };
    // Names are checked whole before anything is created: a request with a
    // bad name is refused, never half applied.
    let names =
        hb.consumer_data_set.iter().map(|d| &d.group_name).chain(hb.producer_data_set.iter().map(|p| &p.group_name));
    for name in names {
        if let Err(e) = crate::names::validate_group(name) {
            return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e));
        }
    }
    for topic in hb.consumer_data_set.iter().flat_map(|d| d.subscription_data_set.iter().map(|s| &s.topic)) {
        if let Err(e) = message::validate_topic(topic) {
            return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("subscription topic: {e}")));
        }
    }
    // A heartbeat may name any number of groups that exist (one client
    // instance carries all its process's groups), but creates at most
    // `heartbeatMaxNewGroups` (with their retry topics); the rest are
    // created by its next heartbeats.
    let mut created = 0usize;
    let mut topics_changed = false;
    for data in &hb.consumer_data_set {
        let exists = state.groups.get(&data.group_name).is_some();
        if !exists && auto_group && created >= max_new_groups {
            tracing::warn!(
                group = %data.group_name,
                client = %hb.client_id,
                max_new_groups,
                "heartbeat creates more groups than heartbeatMaxNewGroups; this one waits for the next heartbeat"
            );
            continue;
        }
        let group_cfg_changed = state.groups.ensure(&data.group_name, auto_group);
        if group_cfg_changed {
            created += 1;
            state.persist_groups_soon();
        }
        // The retry topic of a known group (upstream creates it here too).
        let has_retry_topic = data.group_name.len() <= crate::names::RETRY_GROUP_MAX_LEN;
        if !data.is_broadcasting() && has_retry_topic && state.groups.get(&data.group_name).is_some() {
            let queues = state.groups.get(&data.group_name).map_or(1, |g| g.retry_queue_nums);
            if state.topics.get(&retry_topic(&data.group_name)).is_none() {
                topics_changed |= state.topics.ensure_retry_topic(&data.group_name, queues).is_some();
            }
        }
        let changed = state.clients.register_consumer(channel(&hb.client_id), data);
        if changed {
            tracing::info!(group = %data.group_name, client = %hb.client_id, "consumer joined");
            state.notify_consumer_ids_changed(&data.group_name);
        }
    }
    for p in &hb.producer_data_set {
        state.clients.register_producer(&p.group_name, channel(&hb.client_id));
    }
    if topics_changed {
        state.topics.persist().await?;
        state.topics_changed();
    }
    Ok(RemotingCommand::success(req))
}

pub fn unregister_client(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let client_id = req.str_field("clientID")?;
    if let Some(group) = req.field("producerGroup").filter(|g| !g.is_empty()) {
        state.clients.unregister_producer(group, client_id);
    }
    if let Some(group) = req.field("consumerGroup").filter(|g| !g.is_empty()) {
        if state.clients.unregister_consumer(group, client_id) {
            tracing::info!(group, client = client_id, "consumer left");
            state.notify_consumer_ids_changed(group);
        }
    }
    Ok(RemotingCommand::success(req))
}

pub fn consumer_list(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?;
    let ids = state.clients.consumer_ids(group);
    if ids.is_empty() {
        return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, format!("no consumer for this group, {group}")));
    }
    let body = ConsumerListBody { consumer_id_list: ids };
    Ok(RemotingCommand::success(req).with_body(serde_json::to_vec(&body).unwrap_or_default()))
}

pub fn query_offset(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?;
    let topic = req.str_field("topic")?;
    let queue_id = req.i32_field("queueId")?;
    if let Some(offset) = state.offsets.query(group, topic, queue_id) {
        return Ok(RemotingCommand::success(req).with("offset", offset));
    }
    // Upstream: a new group on a queue that still starts at 0, whose first
    // message is still "hot" (within accessMessageInMemoryMaxRatio of memory
    // behind the log end), begins there; otherwise its consumeFromWhere rules.
    let zero_if_not_found = req.opt_bool_field("setZeroIfNotFound")?.unwrap_or(true);
    if zero_if_not_found && state.store.min_offset_in_queue(topic, queue_id) <= 0 {
        let hot = match state.store.consume_queue(topic, queue_id).and_then(|cq| cq.get(0)) {
            None => true,
            Some(unit) => state.store.max_offset().saturating_sub(unit.physical_offset) <= state.hot_bytes,
        };
        if hot {
            return Ok(RemotingCommand::success(req).with("offset", 0));
        }
    }
    Ok(RemotingCommand::error(req, response::QUERY_NOT_FOUND, "Not found, maybe this group consumer boot first"))
}

pub fn update_offset(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?;
    let topic = req.str_field("topic")?;
    let queue_id = req.i32_field("queueId")?;
    let offset = req.i64_field("commitOffset")?;
    if let Err(e) = crate::names::validate_group(group) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e));
    }
    match state.topics.get(topic) {
        None => return Ok(RemotingCommand::error(req, response::TOPIC_NOT_EXIST, format!("topic[{topic}] not exist"))),
        Some(tc) if queue_id < 0 || queue_id >= tc.read_queue_nums.max(tc.write_queue_nums) => {
            return Ok(RemotingCommand::error(
                req,
                response::INVALID_PARAMETER,
                format!("queueId {queue_id} is out of range for topic {topic}"),
            ))
        }
        Some(_) => {}
    }
    if offset < 0 {
        return Ok(RemotingCommand::error(
            req,
            response::INVALID_PARAMETER,
            format!("commitOffset {offset} is negative"),
        ));
    }
    state.offsets.commit(group, topic, queue_id, offset);
    Ok(RemotingCommand::success(req))
}

pub fn lock_batch(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let body: LockBatchRequestBody = json::decode(&req.body, "LockBatchRequestBody")?;
    let now = Instant::now();
    let held = if req.code == request::LOCK_BATCH_MQ {
        state.locks.lock(&body.consumer_group, &body.client_id, &body.mq_set, now)
    } else {
        state.locks.unlock(&body.consumer_group, &body.client_id, &body.mq_set);
        return Ok(RemotingCommand::success(req));
    };
    let resp = LockBatchResponseBody { lock_ok_mq_set: held };
    Ok(RemotingCommand::success(req).with_body(serde_json::to_vec(&resp).unwrap_or_default()))
}

/// CHECK_CLIENT_CONFIG: whether this broker can serve a subscription (a
/// consumer with a SQL92 one asks before it starts).
pub fn check_client_config(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let body: CheckClientRequestBody = json::decode(&req.body, "CheckClientRequestBody")?;
    let sub = &body.subscription_data;
    let kind = sub.expression_type.as_deref().unwrap_or("TAG");
    Ok(match crate::pull::selector(state, &sub.sub_string, kind) {
        Ok(_) => RemotingCommand::success(req),
        Err((code, remark)) => RemotingCommand::error(req, code, remark),
    })
}

/// CONSUMER_SEND_MSG_BACK: a message the consumer failed to process goes to
/// the group's retry topic, or to its dead-letter topic after
/// `maxReconsumeTimes`. A retry waits in the schedule topic first
/// (schedule.rs) for its delay level.
pub async fn send_back(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let offset = req.i64_field("offset")?;
    let group = req.str_field("group")?.to_string();
    let max_times = req.opt_i32_field("maxReconsumeTimes")?.unwrap_or(16);
    if let Err(e) = crate::names::validate_group(&group) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e));
    }
    // A forged offset is refused, never clamped to another message.
    let Ok(offset) = u64::try_from(offset) else {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("offset {offset} is illegal")));
    };
    let store = state.store.clone();
    let raw = tokio::task::spawn_blocking(move || store.read_record(offset))
        .await
        .map_err(|e| BrokerError::Config(format!("read task failed: {e}")))?;
    let raw = match raw {
        Ok(r) => r,
        Err(e) => {
            return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, format!("look back message failed: {e}")))
        }
    };
    let rec = match decode_record(&raw, false) {
        Ok(r) => r,
        Err(e) => {
            return Ok(RemotingCommand::error(
                req,
                response::SYSTEM_ERROR,
                format!("stored message is unreadable: {e}"),
            ))
        }
    };
    // RETRY_TOPIC came from the stored message: used only if it is a name a
    // client could have sent to.
    let origin_topic =
        crate::names::stored_destination(rec.property(message::property::RETRY_TOPIC)).unwrap_or(rec.topic).to_string();
    let origin_id = req
        .field("originMsgId")
        .map(str::to_string)
        .unwrap_or_else(|| message::offset_msg_id(rec.store_host, rec.physical_offset as u64));
    // Saturating: a stored count at i32::MAX stays there (and is dead).
    let times = rec.reconsume_times.max(0).saturating_add(1);
    let dead = times > max_times || req.opt_i32_field("delayLevel")?.is_some_and(|l| l < 0);
    let target = if dead { dlq_topic(&group) } else { retry_topic(&group) };
    if let Err(e) = message::validate_topic(&target) {
        return Ok(RemotingCommand::error(
            req,
            response::SYSTEM_ERROR,
            format!("group {group} has no retry or dead-letter topic ({e}); the message is retried by its consumer"),
        ));
    }
    if state.topics.get(&target).is_none() {
        // Readable, as upstream 5.x: dead letters can be consumed and listed.
        let p = perm::READ | perm::WRITE;
        if !state.topics.upsert(TopicConfig::new(&target, 1, p)) {
            return Ok(RemotingCommand::error(
                req,
                response::SYSTEM_ERROR,
                format!("cannot create {target}: topic table full"),
            ));
        }
        state.topics.persist().await?;
        state.topics_changed();
    }
    let msg = NewMessage {
        topic: target.clone(),
        queue_id: 0,
        flag: rec.flag,
        body: bytes::Bytes::copy_from_slice(rec.body),
        properties: retry_properties(rec.properties, &origin_topic, &origin_id),
        sys_flag: rec.sys_flag,
        born_timestamp: rec.born_timestamp,
        born_host: rec.born_host,
        store_host: state.broker_addr,
        reconsume_times: times,
        prepared_tx_offset: 0,
    };
    // Back after a delay that grows with each retry: the request's level,
    // or upstream's 3 + times already retried (10 s, 30 s, 1 min, ...).
    let mut msg = msg;
    if !dead {
        let level = match req.opt_i32_field("delayLevel")? {
            Some(l) if l > 0 => l,
            _ => rec.reconsume_times.max(0).saturating_add(3),
        };
        let levels = state.config.read().message_delay_levels.len();
        crate::schedule::to_waiting(&mut msg, level, levels);
    }
    let put = match crate::send::put_one(state, msg).await {
        Ok(p) => p,
        Err(e) => return Ok(e.response(req)),
    };
    if let Err(e) = put.flush.wait().await {
        return Ok(store_error_response(req, &e));
    }
    // On a SYNC_MASTER the retry message is replicated like any send
    // before the consumer may move past the original.
    let mut resp = RemotingCommand::success(req);
    let a = put.append;
    crate::send::await_replication(state, a.physical_offset + a.size as u64, &mut resp).await;
    tracing::debug!(group = %group, topic = %target, times, code = resp.code, "message sent back");
    Ok(resp)
}
