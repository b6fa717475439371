//! Operator and lookup requests: topics, groups, broker config and runtime
//! info, consume stats, queue offsets, and message queries.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use spate_common::message::{self, parse_offset_msg_id};
use spate_remoting::protocol::{
    json, perm, ConsumeStats, KvTable, MessageQueue, OffsetWrapper, SubscriptionData, SubscriptionGroupConfig,
    TopicConfig,
};
use spate_remoting::{response, RemotingCommand};

use crate::config::RUNTIME_KEYS;
use crate::error::BrokerError;
use crate::topics::MAX_QUEUE_NUMS;
use crate::BrokerState;

pub async fn create_topic(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let topic = req.str_field("topic")?;
    if let Err(e) = message::validate_topic(topic) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string()));
    }
    if crate::names::is_system_topic(topic) {
        return Ok(RemotingCommand::error(
            req,
            response::SYSTEM_ERROR,
            format!("the topic[{topic}] is conflict with system topic"),
        ));
    }
    let default_queues = state.config.read().default_topic_queue_nums;
    let read = req.opt_i32_field("readQueueNums")?.unwrap_or(default_queues);
    let write = req.opt_i32_field("writeQueueNums")?.unwrap_or(default_queues);
    for (key, n) in [("readQueueNums", read), ("writeQueueNums", write)] {
        if !(1..=MAX_QUEUE_NUMS).contains(&n) {
            return Ok(RemotingCommand::error(
                req,
                response::INVALID_PARAMETER,
                format!("{key} {n} is out of range 1..={MAX_QUEUE_NUMS}"),
            ));
        }
    }
    let mut attributes = state.topics.get(topic).map(|t| t.attributes).unwrap_or_default();
    match spate_remoting::protocol::topic::parse_topic_attributes(req.field("attributes").unwrap_or_default()) {
        Ok(changes) => {
            for (k, v) in changes {
                match v {
                    Some(v) => attributes.insert(k, v),
                    None => attributes.remove(&k),
                };
            }
        }
        Err(why) => return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, why)),
    }
    let tc = TopicConfig {
        attributes,
        topic_name: topic.to_string(),
        read_queue_nums: read,
        write_queue_nums: write,
        perm: req.opt_i32_field("perm")?.unwrap_or(perm::READ | perm::WRITE)
            & (perm::READ | perm::WRITE | perm::INHERIT),
        topic_filter_type: req.field("topicFilterType").unwrap_or("SINGLE_TAG").to_string(),
        topic_sys_flag: req.opt_i32_field("topicSysFlag")?.unwrap_or(0),
        order: req.opt_bool_field("order")?.unwrap_or(false),
    };
    if !state.topics.upsert(tc) {
        return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "the broker's topic table is full"));
    }
    tracing::info!(topic, read, write, "topic created or updated");
    state.topics.persist().await?;
    state.topics_changed_and_registered().await;
    Ok(RemotingCommand::success(req))
}

pub async fn delete_topic(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let topic = req.str_field("topic")?.to_string();
    if let Err(e) = message::validate_topic(&topic) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string()));
    }
    if crate::names::is_system_topic(&topic) {
        return Ok(RemotingCommand::error(
            req,
            response::SYSTEM_ERROR,
            format!("the topic[{topic}] is conflict with system topic"),
        ));
    }
    if state.topics.delete(&topic) {
        state.topics.persist().await?;
        state.topics_changed_and_registered().await;
        // Its queues go too, so a topic made again with the same name starts
        // empty at offset 0, consistent with the offsets removed here.
        let store = state.store.clone();
        let t = topic.clone();
        tokio::task::spawn_blocking(move || store.delete_topic(&t))
            .await
            .map_err(|e| BrokerError::Config(format!("delete task failed: {e}")))??;
        state.offsets.remove_topic(&topic);
        crate::pop::service::forget_topic(state, &topic).await;
        state.long_poll.forget_topic(&topic);
        tracing::info!(topic = %topic, "topic deleted");
    }
    Ok(RemotingCommand::success(req))
}

pub fn all_topic_config(state: &Arc<BrokerState>, req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::success(req).with_body(serde_json::to_vec(&state.topics.snapshot()).unwrap_or_default())
}

pub async fn create_group(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let cfg: SubscriptionGroupConfig = json::decode(&req.body, "SubscriptionGroupConfig")?;
    if let Err(e) = crate::names::validate_group(&cfg.group_name) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e));
    }
    if !state.groups.upsert(cfg) {
        return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "the broker's group table is full"));
    }
    state.groups.persist().await?;
    Ok(RemotingCommand::success(req))
}

pub fn all_groups(state: &Arc<BrokerState>, req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::success(req).with_body(serde_json::to_vec(&state.groups.snapshot()).unwrap_or_default())
}

pub fn broker_config(state: &Arc<BrokerState>, req: &RemotingCommand) -> RemotingCommand {
    RemotingCommand::success(req).with_body(state.config.read().to_properties())
}

pub fn update_broker_config(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let text = String::from_utf8_lossy(&req.body).to_string();
    let mut updated = state.config.read().clone();
    let mut restart = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let Some((k, v)) = line.split_once('=') else {
            return Ok(RemotingCommand::error(
                req,
                response::INVALID_PARAMETER,
                format!("expected key=value, got `{line}`"),
            ));
        };
        let k = k.trim();
        if !RUNTIME_KEYS.contains(&k) {
            restart.push(k.to_string());
            continue;
        }
        if let Err(e) = updated.set(k, v) {
            return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string()));
        }
    }
    if !restart.is_empty() {
        return Ok(RemotingCommand::error(
            req,
            response::INVALID_PARAMETER,
            format!("keys {restart:?} cannot change at runtime (allowed: {RUNTIME_KEYS:?}); nothing was changed"),
        ));
    }
    if let Err(e) = updated.validate() {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string()));
    }
    let perm_changed = updated.broker_permission != state.config.read().broker_permission;
    *state.config.write() = updated;
    if perm_changed {
        // Registered topic perms are masked with it: register now, so routes
        // show it at once rather than after registerNameServerPeriod.
        state.topics_changed();
    }
    Ok(RemotingCommand::success(req))
}

pub fn runtime_info(state: &Arc<BrokerState>, req: &RemotingCommand) -> RemotingCommand {
    let s = state.store.stats();
    let (puts, put_bytes, gets, get_bytes) = state.stats.totals();
    let mut table = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        table.insert(k.to_string(), v);
    };
    put("brokerVersionDesc", format!("Spate {}", env!("CARGO_PKG_VERSION")));
    put("brokerVersion", spate_remoting::command::SPATE_VERSION.to_string());
    put("msgPutTotalTodayNow", puts.to_string());
    put("msgGetTotalTodayNow", gets.to_string());
    put("putMessageSizeTotal", put_bytes.to_string());
    put("getMessageSizeTotal", get_bytes.to_string());
    put("commitLogMinOffset", state.store.min_offset().to_string());
    put("commitLogMaxOffset", state.store.max_offset().to_string());
    put("commitLogFlushedOffset", state.store.flushed_offset().to_string());
    put("dispatchBehindBytes", state.store.max_offset().saturating_sub(state.store.dispatched_offset()).to_string());
    put("pageCacheLockTimeMills", if state.store.is_os_page_cache_busy() { "busy" } else { "0" }.to_string());
    put("degradeLevel", state.capacity.degrader.level().to_string());
    put("coreLaneConnections", state.core_lane.connections().to_string());
    put("coreLaneScheduling", state.core_lane.scheduling.describe());
    put("schedulingLagAvgMicros", state.capacity.degrader.lag_avg().as_micros().to_string());
    put("sendThreadPoolQueueSize", state.capacity.send_gate.queued().to_string());
    put("storeSyncs", s.syncs.to_string());
    put("runtime", format!("[ {} seconds ]", state.started.elapsed().as_secs()));
    put("heldPulls", state.long_poll.held_count().to_string());
    put("consumerGroups", state.clients.consumer_group_count().to_string());
    put("topics", state.topics.len().to_string());
    put("brokerRole", format!("{:?}", state.config.read().broker_role));
    RemotingCommand::success(req).with_body(serde_json::to_vec(&KvTable { table }).unwrap_or_default())
}

pub fn consume_stats(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?;
    let topics = match req.field("topic").filter(|t| !t.is_empty()) {
        Some(t) => vec![t.to_string()],
        None => state.offsets.topics_of_group(group),
    };
    let mut stats = ConsumeStats::default();
    for topic in topics {
        let Some(tc) = state.topics.get(&topic) else { continue };
        let committed = state.offsets.queues(group, &topic);
        for queue_id in 0..tc.read_queue_nums {
            let broker_offset = state.store.max_offset_in_queue(&topic, queue_id);
            let consumer_offset = committed.get(&queue_id).copied().unwrap_or(0);
            stats.offset_table.insert(
                MessageQueue::new(&topic, &state.broker_name, queue_id),
                OffsetWrapper { broker_offset, consumer_offset, last_timestamp: 0 },
            );
        }
    }
    if stats.offset_table.is_empty() {
        return Ok(RemotingCommand::error(
            req,
            response::CONSUMER_NOT_ONLINE,
            format!("group {group} has no offsets on this broker"),
        ));
    }
    Ok(RemotingCommand::success(req).with_body(stats.to_fastjson()))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ConsumerConnection {
    connection_set: Vec<spate_remoting::protocol::ClientConnection>,
    subscription_table: BTreeMap<String, SubscriptionData>,
    consume_type: String,
    message_model: String,
    consume_from_where: String,
}

pub fn consumer_connections(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("consumerGroup")?;
    // RocketMQ 5 clients (gRPC) pop: listed with their language and version.
    let grpc: Vec<spate_remoting::protocol::ClientConnection> =
        state.grpc.consumers_of(group).iter().map(crate::grpc::sessions::Session::connection).collect();
    let body = match state.clients.consumer_group(group) {
        Some(g) => {
            let mut connection_set = g.connections();
            connection_set.extend(grpc);
            ConsumerConnection {
                connection_set,
                subscription_table: g.subscriptions.clone(),
                consume_type: g.consume_type.clone(),
                message_model: g.message_model.clone(),
                consume_from_where: g.consume_from_where.clone(),
            }
        }
        None if !grpc.is_empty() => ConsumerConnection {
            connection_set: grpc,
            subscription_table: BTreeMap::new(),
            consume_type: "CONSUME_POP".into(),
            message_model: "CLUSTERING".into(),
            consume_from_where: "CONSUME_FROM_LAST_OFFSET".into(),
        },
        None => {
            return Ok(RemotingCommand::error(
                req,
                response::CONSUMER_NOT_ONLINE,
                format!("the consumer group[{group}] not online"),
            ))
        }
    };
    Ok(RemotingCommand::success(req).with_body(serde_json::to_vec(&body).unwrap_or_default()))
}

/// GET_PRODUCER_CONNECTION_LIST: the producers of a group, remoting
/// producers by the group their heartbeats name and RocketMQ 5 (gRPC)
/// producers under each topic they publish (they name no group).
pub fn producer_connections(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let group = req.str_field("producerGroup")?;
    let mut connection_set = state.clients.producer_connections(group);
    connection_set
        .extend(state.grpc.producers_publishing(group).iter().map(crate::grpc::sessions::Session::connection));
    if connection_set.is_empty() {
        return Ok(RemotingCommand::error(
            req,
            response::SYSTEM_ERROR,
            format!("the producer group[{group}] has no producer connected"),
        ));
    }
    let body = spate_remoting::protocol::ProducerConnection { connection_set };
    Ok(RemotingCommand::success(req).with_body(serde_json::to_vec(&body).unwrap_or_default()))
}

/// GET_MAX_OFFSET, GET_MIN_OFFSET, SEARCH_OFFSET_BY_TIMESTAMP, GET_EARLIEST_MSG_STORETIME.
pub async fn queue_offset(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    use spate_remoting::request as r;
    let topic = req.str_field("topic")?.to_string();
    let queue_id = req.i32_field("queueId")?;
    let store = state.store.clone();
    let code = req.code;
    let timestamp = if code == r::SEARCH_OFFSET_BY_TIMESTAMP { req.i64_field("timestamp")? } else { 0 };
    // A consumer starting at the end starts below what a failover could cut.
    let limit = crate::pull::read_limit(state);
    let answer = tokio::task::spawn_blocking(move || -> Result<(&'static str, i64), spate_store::StoreError> {
        Ok(match code {
            r::GET_MAX_OFFSET => match limit {
                Some(end) => ("offset", store.max_offset_in_queue_below(&topic, queue_id, end)),
                None => ("offset", store.max_offset_in_queue(&topic, queue_id)),
            },
            r::GET_MIN_OFFSET => ("offset", store.min_offset_in_queue(&topic, queue_id)),
            r::SEARCH_OFFSET_BY_TIMESTAMP => ("offset", store.offset_by_time(&topic, queue_id, timestamp)?),
            _ => ("timestamp", store.earliest_store_time(&topic, queue_id)?.unwrap_or(-1)),
        })
    })
    .await
    .map_err(|e| BrokerError::Config(format!("offset task failed: {e}")))?;
    match answer {
        Ok((key, v)) => Ok(RemotingCommand::success(req).with(key, v)),
        Err(e) => Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, e.to_string())),
    }
}

/// QUERY_MESSAGE: by key (KEYS or UNIQ_KEY) within a time range.
pub async fn query_message(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let topic = req.str_field("topic")?.to_string();
    let key = req.str_field("key")?.to_string();
    let max = req.opt_i32_field("maxNum")?.unwrap_or(32).clamp(1, 64) as usize;
    let begin = req.opt_i64_field("beginTimestamp")?.unwrap_or(0);
    let end = req.opt_i64_field("endTimestamp")?.unwrap_or(i64::MAX);
    let store = state.store.clone();
    let found = tokio::task::spawn_blocking(move || store.query_by_key(&topic, &key, begin, end, max))
        .await
        .map_err(|e| BrokerError::Config(format!("query task failed: {e}")))?;
    let records = match found {
        Ok(r) => r,
        Err(e) => return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, e.to_string())),
    };
    if records.is_empty() {
        return Ok(RemotingCommand::error(
            req,
            response::QUERY_NOT_FOUND,
            "can not find message, maybe time range not correct",
        ));
    }
    Ok(RemotingCommand::success(req)
        .with("indexLastUpdateTimestamp", 0)
        .with("indexLastUpdatePhyoffset", state.store.dispatched_offset())
        .with_body(records.concat()))
}

/// VIEW_MESSAGE_BY_ID: the header carries the commit-log offset.
pub async fn view_message(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    // A negative or overflowing offset is refused, never clamped to
    // another message; read_record checks that a record starts there.
    let offset: u64 = match req.opt_i64_field("offset")? {
        Some(o) => match u64::try_from(o) {
            Ok(o) => o,
            Err(_) => {
                return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("offset {o} is illegal")))
            }
        },
        None => match req.field("msgId").and_then(parse_offset_msg_id) {
            Some((_, o)) if i64::try_from(o).is_ok() => o,
            _ => {
                return Ok(RemotingCommand::error(
                    req,
                    response::INVALID_PARAMETER,
                    "header field `offset` (or a valid `msgId`) is missing",
                ))
            }
        },
    };
    let store = state.store.clone();
    let got = tokio::task::spawn_blocking(move || store.read_record(offset))
        .await
        .map_err(|e| BrokerError::Config(format!("read task failed: {e}")))?;
    match got {
        Ok(raw) => Ok(RemotingCommand::success(req).with_body(raw)),
        Err(e) => {
            Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, format!("no message at offset {offset}: {e}")))
        }
    }
}

/// SPATE_GET_LIMITS: every rate limit with its counters, and the table's version.
pub fn limits(state: &BrokerState, req: &RemotingCommand) -> RemotingCommand {
    let snapshot = state.capacity.limits.snapshot();
    let body = serde_json::json!({
        "version": snapshot.version,
        "rules": state.capacity.limits.status(),
        "priorities": snapshot.priorities,
        "degradeLevel": state.capacity.degrader.level(),
        "bulkSharePerMille": state.capacity.degrader.share(crate::capacity::degrade::Class::Bulk),
        "normalSharePerMille": state.capacity.degrader.share(crate::capacity::degrade::Class::Normal),
        "sendWaitAvgMicros": state.capacity.degrader.wait_avg().as_micros() as u64,
        "schedulingLagAvgMicros": state.capacity.degrader.lag_avg().as_micros() as u64,
        "coreLaneConnections": state.core_lane.connections(),
        "coreLaneScheduling": state.core_lane.scheduling.describe(),
    });
    RemotingCommand::success(req).with_body(serde_json::to_vec(&body).unwrap_or_default())
}

/// SPATE_UPDATE_LIMIT: adds or replaces a rule, in force at once and persisted.
pub async fn update_limit(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    let rule: crate::capacity::limits::LimitRule = match serde_json::from_slice(&req.body) {
        Ok(r) => r,
        Err(e) => return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("bad limit rule: {e}"))),
    };
    if let Err(why) = rule.validate() {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("bad limit rule: {why}")));
    }
    if !state.capacity.limits.upsert(rule.clone()) {
        return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "the broker's limit table is full"));
    }
    tracing::info!(?rule, "rate limit set");
    state.capacity.limits.persist().await?;
    Ok(RemotingCommand::success(req))
}

/// SPATE_DELETE_LIMIT: removes a rule.
pub async fn delete_limit(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    use crate::capacity::limits::{Op, Target};
    let parse = |field: &str| -> Result<String, BrokerError> { Ok(format!("\"{}\"", req.str_field(field)?)) };
    let (target, op) =
        match (serde_json::from_str::<Target>(&parse("target")?), serde_json::from_str::<Op>(&parse("op")?)) {
            (Ok(t), Ok(o)) => (t, o),
            _ => {
                return Ok(RemotingCommand::error(
                    req,
                    response::INVALID_PARAMETER,
                    "target must be topic, group or client; op send or pull",
                ))
            }
        };
    let name = req.str_field("name")?;
    if !state.capacity.limits.delete(target, name, op) {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, format!("no such limit on {name}")));
    }
    tracing::info!(?target, name, ?op, "rate limit removed");
    state.capacity.limits.persist().await?;
    Ok(RemotingCommand::success(req))
}

/// SPATE_SET_PRIORITY: a topic's or group's priority class under pressure.
pub async fn set_priority(state: &Arc<BrokerState>, req: &RemotingCommand) -> Result<RemotingCommand, BrokerError> {
    use crate::capacity::degrade::Class;
    use crate::capacity::limits::Target;
    let quoted = |field: &str| -> Result<String, BrokerError> { Ok(format!("\"{}\"", req.str_field(field)?)) };
    let (target, class) =
        match (serde_json::from_str::<Target>(&quoted("target")?), serde_json::from_str::<Class>(&quoted("class")?)) {
            (Ok(t @ (Target::Topic | Target::Group)), Ok(c)) => (t, c),
            _ => {
                return Ok(RemotingCommand::error(
                    req,
                    response::INVALID_PARAMETER,
                    "target must be topic or group; class core, normal or bulk",
                ))
            }
        };
    let name = req.str_field("name")?;
    if name.is_empty() || name.len() > 255 {
        return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, "name must be 1 to 255 characters"));
    }
    if !state.capacity.limits.set_class(target, name, class) {
        return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "the broker's priority table is full"));
    }
    tracing::info!(?target, name, class = class.name(), "priority class set");
    state.capacity.limits.persist().await?;
    Ok(RemotingCommand::success(req))
}
