//! Message query (upstream's `MQAdmin` lookups): by offset message id, by
//! client unique id, by key within a time range, and every message of a
//! topic stored within a time range.

use spate_remoting::{request, response, RemotingCommand};

use crate::error::{ClientError, Result};
use crate::instance::{expect_success, ClientInstance};
use crate::message::{decode_pull_body, MessageExt};

/// The consumer group tools read with (upstream's tools group): it
/// commits nothing.
pub const TOOLS_GROUP: &str = "TOOLS_CONSUMER";
/// Most messages one pull of a time-range read asks for.
const RANGE_PULL_BATCH: usize = 32;

/// A non-blocking pull of up to `max` messages (at most one batch) from
/// `offset` of a queue, as the tools group: what time-range reads, here and
/// in `spate admin`, are made of.
pub fn tools_pull_request(topic: &str, queue_id: i32, offset: i64, max: usize) -> RemotingCommand {
    RemotingCommand::request(request::PULL_MESSAGE)
        .with("consumerGroup", TOOLS_GROUP)
        .with("topic", topic)
        .with("queueId", queue_id)
        .with("queueOffset", offset)
        .with("maxMsgNums", RANGE_PULL_BATCH.min(max))
        .with("sysFlag", 0)
        .with("commitOffset", 0)
        .with("suspendTimeoutMillis", 0)
        .with("subscription", "*")
        .with("subVersion", 0)
        .with("expressionType", "TAG")
}

impl ClientInstance {
    /// The message with this offset message id (the broker's `msgId`,
    /// which names its broker and commit-log offset; upstream's
    /// `viewMessage`).
    pub async fn view_message(&self, offset_msg_id: &str) -> Result<MessageExt> {
        let (host, offset) = spate_common::message::parse_offset_msg_id(offset_msg_id)
            .ok_or_else(|| ClientError::InvalidArgument(format!("{offset_msg_id} is not an offset message id")))?;
        let addr = host.to_string();
        let req = RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", offset);
        let resp = expect_success(&addr, self.call(&addr, req, self.config().request_timeout).await?)?;
        decode_pull_body(&resp.body, "")?
            .into_iter()
            .next()
            .ok_or_else(|| ClientError::InvalidArgument(format!("no message at {offset_msg_id}")))
    }

    /// Messages of `topic` whose KEYS (or unique key) include `key`, stored
    /// within `[begin_ms, end_ms]`, at most `max` per broker (upstream's
    /// `queryMessage`).
    pub async fn query_message(
        &self,
        topic: &str,
        key: &str,
        max: usize,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<MessageExt>> {
        let mut found = Vec::new();
        for (broker, addr, _) in self.masters_of(topic).await? {
            let req = RemotingCommand::request(request::QUERY_MESSAGE)
                .with("topic", topic)
                .with("key", key)
                .with("maxNum", max)
                .with("beginTimestamp", begin_ms)
                .with("endTimestamp", end_ms);
            let resp = self.call(&addr, req, self.config().request_timeout).await?;
            match resp.code {
                response::SUCCESS => found.extend(decode_pull_body(&resp.body, &broker)?),
                response::QUERY_NOT_FOUND => {}
                _ => {
                    expect_success(&addr, resp)?;
                }
            }
        }
        Ok(found)
    }

    /// The message of `topic` with this client unique id (`UNIQ_KEY`, what
    /// a send returns as `msg_id`; upstream's `viewMessage(topic, msgId)`).
    pub async fn query_message_by_unique_key(&self, topic: &str, unique_key: &str) -> Result<Option<MessageExt>> {
        let found = self.query_message(topic, unique_key, 32, 0, i64::MAX).await?;
        Ok(found.into_iter().find(|m| m.msg_id == unique_key))
    }

    /// Every message of `topic` stored within `[begin_ms, end_ms]`, at most
    /// `max_per_queue` from each queue, in queue order.
    pub async fn query_messages_by_time(
        &self,
        topic: &str,
        begin_ms: i64,
        end_ms: i64,
        max_per_queue: usize,
    ) -> Result<Vec<MessageExt>> {
        let timeout = self.config().request_timeout;
        let mut found = Vec::new();
        for (broker, addr, queues) in self.masters_of(topic).await? {
            for q in 0..queues {
                let req = RemotingCommand::request(request::SEARCH_OFFSET_BY_TIMESTAMP)
                    .with("topic", topic)
                    .with("queueId", q)
                    .with("timestamp", begin_ms);
                let resp = expect_success(&addr, self.call(&addr, req, timeout).await?)?;
                let mut offset: i64 = resp.field("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                let mut in_queue = 0;
                'queue: while in_queue < max_per_queue {
                    let req = tools_pull_request(topic, q, offset, max_per_queue - in_queue);
                    let resp = self.call(&addr, req, timeout).await?;
                    if resp.code != response::SUCCESS {
                        break; // the queue has nothing more
                    }
                    let next: i64 = resp.field("nextBeginOffset").and_then(|v| v.parse().ok()).unwrap_or(offset);
                    for m in decode_pull_body(&resp.body, &broker)? {
                        if m.store_timestamp > end_ms {
                            break 'queue;
                        }
                        found.push(m);
                        in_queue += 1;
                    }
                    if next <= offset {
                        break;
                    }
                    offset = next;
                }
            }
        }
        Ok(found)
    }

    /// (broker name, master address, read queues) of each broker serving `topic`.
    async fn masters_of(&self, topic: &str) -> Result<Vec<(String, String, i32)>> {
        let route = self.update_route(topic).await?.ok_or_else(|| ClientError::NoRoute { topic: topic.to_string() })?;
        Ok(route
            .data
            .queue_datas
            .iter()
            .filter_map(|q| {
                let b = route.data.broker_datas.iter().find(|b| b.broker_name == q.broker_name)?;
                Some((q.broker_name.clone(), b.master_addr()?.to_string(), q.read_queue_nums))
            })
            .collect())
    }
}
