//! Smaller request and response bodies.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::json::string;

/// One queue of a topic on one broker group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct MessageQueue {
    pub topic: String,
    pub broker_name: String,
    pub queue_id: i32,
}

impl MessageQueue {
    pub fn new(topic: &str, broker_name: &str, queue_id: i32) -> Self {
        MessageQueue { topic: topic.to_string(), broker_name: broker_name.to_string(), queue_id }
    }

    /// fastjson's object form, used as a map key.
    pub fn to_fastjson(&self) -> String {
        format!(
            "{{\"brokerName\":{},\"queueId\":{},\"topic\":{}}}",
            string(&self.broker_name),
            self.queue_id,
            string(&self.topic)
        )
    }
}

/// The body of LOCK_BATCH_MQ and UNLOCK_BATCH_MQ.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct LockBatchRequestBody {
    pub consumer_group: String,
    pub client_id: String,
    pub only_this_broker: bool,
    pub mq_set: BTreeSet<MessageQueue>,
}

/// The response body of LOCK_BATCH_MQ: the queues now locked by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LockBatchResponseBody {
    #[serde(rename = "lockOKMQSet", default)]
    pub lock_ok_mq_set: BTreeSet<MessageQueue>,
}

/// The response body of GET_CONSUMER_LIST_BY_GROUP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ConsumerListBody {
    pub consumer_id_list: Vec<String>,
}

/// A string table (GET_BROKER_RUNTIME_INFO).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct KvTable {
    pub table: BTreeMap<String, String>,
}

/// One queue's offsets in GET_CONSUME_STATS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct OffsetWrapper {
    pub broker_offset: i64,
    pub consumer_offset: i64,
    pub last_timestamp: i64,
}

/// The response body of GET_CONSUME_STATS.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsumeStats {
    pub offset_table: BTreeMap<MessageQueue, OffsetWrapper>,
    pub consume_tps: f64,
}

impl ConsumeStats {
    /// fastjson's shape: the map keys are `MessageQueue` objects.
    pub fn to_fastjson(&self) -> String {
        let entries: Vec<String> = self
            .offset_table
            .iter()
            .map(|(mq, w)| format!("{}:{}", mq.to_fastjson(), serde_json::to_string(w).unwrap_or_default()))
            .collect();
        format!("{{\"consumeTps\":{},\"offsetTable\":{{{}}}}}", self.consume_tps, entries.join(","))
    }

    /// Total messages not yet consumed.
    pub fn lag(&self) -> i64 {
        self.offset_table.values().map(|w| (w.broker_offset - w.consumer_offset).max(0)).sum()
    }
}

/// One client connection of a consumer group (GET_CONSUMER_CONNECTION_LIST).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientConnection {
    pub client_id: String,
    pub client_addr: String,
    pub language: String,
    pub version: i32,
}
