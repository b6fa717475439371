//! Consumer-side broker requests: pull, offsets, group membership, queue
//! locks, send-back.

use std::collections::BTreeSet;
use std::time::Duration;

use spate_remoting::protocol::{
    json, ConsumerListBody, LockBatchRequestBody, LockBatchResponseBody, MessageQueue, SubscriptionData, MASTER_ID,
};
use spate_remoting::{request, response, RemotingCommand};

use crate::error::{ClientError, Result};
use crate::instance::{expect_success, ClientInstance};
use crate::message::{decode_pull_body, property_name, MessageExt};

/// Pull `sysFlag` bit: the request carries the consumer's commit offset.
pub(crate) const PULL_FLAG_COMMIT_OFFSET: i32 = 1;
/// Pull `sysFlag` bit: the broker may hold the request (long polling).
pub(crate) const PULL_FLAG_SUSPEND: i32 = 1 << 1;
/// Pull `sysFlag` bit: the request carries the subscription expression.
pub(crate) const PULL_FLAG_SUBSCRIPTION: i32 = 1 << 2;

/// How a pull went (upstream `PullStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PullStatus {
    Found,
    NoNewMsg,
    NoMatchedMsg,
    OffsetIllegal,
}

/// A pull's outcome, messages already filtered by tag.
#[derive(Debug)]
pub(crate) struct PullOutcome {
    pub status: PullStatus,
    pub next_begin_offset: i64,
    pub messages: Vec<MessageExt>,
}

/// One pull request.
pub(crate) struct PullArgs<'a> {
    pub group: &'a str,
    pub mq: &'a MessageQueue,
    pub offset: i64,
    pub max_msgs: i32,
    pub commit_offset: Option<i64>,
    pub subscription: &'a SubscriptionData,
    pub suspend: Option<Duration>,
    pub timeout: Duration,
}

/// Pull status for a response code; `None` for an error.
pub(crate) fn pull_status(code: i32) -> Option<PullStatus> {
    match code {
        response::SUCCESS => Some(PullStatus::Found),
        response::PULL_NOT_FOUND => Some(PullStatus::NoNewMsg),
        response::PULL_RETRY_IMMEDIATELY => Some(PullStatus::NoMatchedMsg),
        response::PULL_OFFSET_MOVED => Some(PullStatus::OffsetIllegal),
        _ => None,
    }
}

/// The client-side tag check: the broker filters by tag hash only, so a
/// colliding tag can slip through.
pub(crate) fn tag_matches(sub: &SubscriptionData, msg: &MessageExt) -> bool {
    sub.tags_set.is_empty() || sub.class_filter_mode || msg.tags().is_some_and(|t| sub.tags_set.contains(t))
}

impl ClientInstance {
    pub(crate) async fn pull(&self, addr: &str, a: PullArgs<'_>) -> Result<PullOutcome> {
        let mut sys_flag = PULL_FLAG_SUBSCRIPTION;
        if a.commit_offset.is_some() {
            sys_flag |= PULL_FLAG_COMMIT_OFFSET;
        }
        if a.suspend.is_some() {
            sys_flag |= PULL_FLAG_SUSPEND;
        }
        let req = RemotingCommand::request(request::PULL_MESSAGE)
            .with("consumerGroup", a.group)
            .with("topic", &a.mq.topic)
            .with("queueId", a.mq.queue_id)
            .with("queueOffset", a.offset)
            .with("maxMsgNums", a.max_msgs)
            .with("sysFlag", sys_flag)
            .with("commitOffset", a.commit_offset.unwrap_or(0))
            .with("suspendTimeoutMillis", a.suspend.map_or(0, |d| d.as_millis() as u64))
            .with("subscription", &a.subscription.sub_string)
            .with("subVersion", a.subscription.sub_version)
            .with("expressionType", a.subscription.expression_type.as_deref().unwrap_or("TAG"));
        let resp = self.call(addr, req, a.timeout).await?;
        if let Ok(Some(id)) = resp.opt_i64_field("suggestWhichBrokerId") {
            self.suggest_pull_from(a.mq, id);
        }
        let Some(status) = pull_status(resp.code) else {
            return Err(ClientError::Broker {
                addr: addr.into(),
                code: resp.code,
                remark: resp.remark.unwrap_or_default(),
            });
        };
        let bad = |reason: String| ClientError::BadResponse { addr: addr.to_string(), reason };
        let next_begin_offset = resp.i64_field("nextBeginOffset").map_err(|e| bad(e.to_string()))?;
        let min = resp.opt_i64_field("minOffset").map_err(|e| bad(e.to_string()))?;
        let max = resp.opt_i64_field("maxOffset").map_err(|e| bad(e.to_string()))?;
        let mut messages = Vec::new();
        if status == PullStatus::Found && !resp.body.is_empty() {
            messages = decode_pull_body(&resp.body, &a.mq.broker_name)?;
            messages.retain(|m| tag_matches(a.subscription, m));
            for m in &mut messages {
                if let Some(min) = min {
                    m.properties.insert(property_name::MIN_OFFSET.into(), min.to_string());
                }
                if let Some(max) = max {
                    m.properties.insert(property_name::MAX_OFFSET.into(), max.to_string());
                }
            }
        }
        Ok(PullOutcome { status, next_begin_offset, messages })
    }

    /// The group's committed offset of `mq` on its broker; `None` when it has none.
    pub(crate) async fn query_consumer_offset(&self, group: &str, mq: &MessageQueue) -> Result<Option<i64>> {
        // The master, or a slave while the master is away (it holds a copy).
        let addr = self.subscribe_addr_or_refresh(&mq.broker_name, &mq.topic, MASTER_ID).await?;
        let req = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
            .with("consumerGroup", group)
            .with("topic", &mq.topic)
            .with("queueId", mq.queue_id);
        let resp = self.call(&addr, req, self.config().request_timeout).await?;
        if resp.code == response::QUERY_NOT_FOUND {
            return Ok(None);
        }
        let resp = expect_success(&addr, resp)?;
        let off = resp.i64_field("offset").map_err(|e| ClientError::BadResponse { addr, reason: e.to_string() })?;
        Ok((off >= 0).then_some(off))
    }

    pub(crate) async fn update_consumer_offset(&self, group: &str, mq: &MessageQueue, offset: i64) -> Result<()> {
        let addr = self.subscribe_addr_or_refresh(&mq.broker_name, &mq.topic, MASTER_ID).await?;
        let req = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
            .with("consumerGroup", group)
            .with("topic", &mq.topic)
            .with("queueId", mq.queue_id)
            .with("commitOffset", offset);
        self.call_ok(&addr, req).await.map(|_| ())
    }

    async fn queue_offset_request(&self, code: i32, mq: &MessageQueue, timestamp: Option<i64>) -> Result<i64> {
        let addr = self.subscribe_addr_or_refresh(&mq.broker_name, &mq.topic, MASTER_ID).await?;
        let req = RemotingCommand::request(code)
            .with("topic", &mq.topic)
            .with("queueId", mq.queue_id)
            .with_opt("timestamp", timestamp);
        let resp = self.call_ok(&addr, req).await?;
        resp.i64_field("offset").map_err(|e| ClientError::BadResponse { addr, reason: e.to_string() })
    }

    /// One past the last message of `mq` (GET_MAX_OFFSET).
    pub async fn max_offset(&self, mq: &MessageQueue) -> Result<i64> {
        self.queue_offset_request(request::GET_MAX_OFFSET, mq, None).await
    }

    /// The first offset still stored in `mq` (GET_MIN_OFFSET).
    pub async fn min_offset(&self, mq: &MessageQueue) -> Result<i64> {
        self.queue_offset_request(request::GET_MIN_OFFSET, mq, None).await
    }

    /// The offset of the first message stored at or after `timestamp_ms` (SEARCH_OFFSET_BY_TIMESTAMP).
    pub async fn search_offset(&self, mq: &MessageQueue, timestamp_ms: i64) -> Result<i64> {
        self.queue_offset_request(request::SEARCH_OFFSET_BY_TIMESTAMP, mq, Some(timestamp_ms)).await
    }

    /// The readable queues of `topic` (from the name server's route).
    pub async fn fetch_message_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        match self.update_route(topic).await? {
            Some(r) => Ok(r.read_queues.clone()),
            None => Err(ClientError::NoRoute { topic: topic.to_string() }),
        }
    }

    /// The client ids of `group` as the broker at `addr` knows them.
    pub(crate) async fn consumer_ids(&self, addr: &str, group: &str) -> Result<Vec<String>> {
        let req = RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP).with("consumerGroup", group);
        let resp = self.call_ok(addr, req).await?;
        let body: ConsumerListBody = json::decode(&resp.body, "ConsumerListBody")
            .map_err(|e| ClientError::BadResponse { addr: addr.to_string(), reason: e.to_string() })?;
        Ok(body.consumer_id_list)
    }

    /// The body of LOCK_BATCH_MQ and UNLOCK_BATCH_MQ.
    fn lock_body(&self, group: &str, mqs: BTreeSet<MessageQueue>) -> Vec<u8> {
        let body = LockBatchRequestBody {
            consumer_group: group.to_string(),
            client_id: self.client_id().to_string(),
            only_this_broker: false,
            mq_set: mqs,
        };
        // Plain structs: encoding cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// Locks `mqs` (all on the broker at `addr`) for this client; returns those now held.
    pub(crate) async fn lock_batch(
        &self,
        addr: &str,
        group: &str,
        mqs: BTreeSet<MessageQueue>,
    ) -> Result<BTreeSet<MessageQueue>> {
        let req = RemotingCommand::request(request::LOCK_BATCH_MQ).with_body(self.lock_body(group, mqs));
        let resp = self.call_ok(addr, req).await?;
        let out: LockBatchResponseBody = json::decode(&resp.body, "LockBatchResponseBody")
            .map_err(|e| ClientError::BadResponse { addr: addr.to_string(), reason: e.to_string() })?;
        Ok(out.lock_ok_mq_set)
    }

    /// Releases this client's locks on `mqs` (all on the broker at `addr`).
    pub(crate) async fn unlock_batch(&self, addr: &str, group: &str, mqs: BTreeSet<MessageQueue>) -> Result<()> {
        let req = RemotingCommand::request(request::UNLOCK_BATCH_MQ).with_body(self.lock_body(group, mqs));
        self.call_ok(addr, req).await.map(|_| ())
    }

    /// Hands a message that failed consumption back to its broker, which
    /// redelivers it through the group's retry topic after a delay
    /// (`delay_level` 0: the broker picks 3 + reconsume times).
    pub(crate) async fn send_back(
        &self,
        msg: &MessageExt,
        group: &str,
        delay_level: i32,
        max_reconsume_times: i32,
    ) -> Result<()> {
        let addr = match self.master_addr(&msg.broker_name) {
            Some(a) => a,
            None => msg.store_host.to_string(),
        };
        let req = RemotingCommand::request(request::CONSUMER_SEND_MSG_BACK)
            .with("offset", msg.commit_log_offset)
            .with("group", group)
            .with("delayLevel", delay_level)
            .with("originMsgId", &msg.msg_id)
            .with("originTopic", &msg.topic)
            .with("unitMode", false)
            .with("maxReconsumeTimes", max_reconsume_times);
        self.call_ok(&addr, req).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::process_queue::tests::msg;
    use spate_remoting::protocol::TagFilter;

    #[test]
    fn pull_codes_map_to_statuses() {
        assert_eq!(pull_status(0), Some(PullStatus::Found));
        assert_eq!(pull_status(19), Some(PullStatus::NoNewMsg));
        assert_eq!(pull_status(20), Some(PullStatus::NoMatchedMsg));
        assert_eq!(pull_status(21), Some(PullStatus::OffsetIllegal));
        assert_eq!(pull_status(1), None);
        assert_eq!(PULL_FLAG_COMMIT_OFFSET | PULL_FLAG_SUSPEND | PULL_FLAG_SUBSCRIPTION, 7);
    }

    #[test]
    fn tags_are_rechecked_on_the_client() {
        let expr = "TagA || TagB";
        let sub = TagFilter::parse(expr).subscription("T", expr, 1);
        let mut a = msg(0, 1);
        a.properties.insert("TAGS".into(), "TagA".into());
        let mut c = msg(1, 1);
        c.properties.insert("TAGS".into(), "TagC".into());
        let untagged = msg(2, 1);
        assert!(tag_matches(&sub, &a));
        assert!(!tag_matches(&sub, &c));
        assert!(!tag_matches(&sub, &untagged));
        let all = TagFilter::parse(" * ").subscription("T", "*", 1);
        assert!(tag_matches(&all, &untagged));
    }
}
