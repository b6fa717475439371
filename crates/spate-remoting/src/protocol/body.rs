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

/// The body of CHECK_CLIENT_CONFIG: a consumer asks whether the broker
/// can serve a subscription (SQL92 ones, before it starts).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct CheckClientRequestBody {
    pub client_id: String,
    pub group: String,
    pub subscription_data: super::SubscriptionData,
    pub namespace: Option<String>,
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

    /// Reads fastjson's shape back (object keys in `offsetTable`), as
    /// written by [`ConsumeStats::to_fastjson`] and by upstream brokers.
    pub fn from_fastjson(body: &[u8]) -> Result<ConsumeStats, super::json::BodyError> {
        let bad = |reason: &str| super::json::BodyError { what: "ConsumeStats", reason: reason.to_string() };
        let text = std::str::from_utf8(body).map_err(|_| bad("not UTF-8"))?;
        let mut stats = ConsumeStats::default();
        if let Some(i) = text.find("\"consumeTps\":") {
            let rest = &text[i + 13..];
            let end = rest.find([',', '}']).unwrap_or(rest.len());
            stats.consume_tps = rest[..end].trim().parse().unwrap_or(0.0);
        }
        let Some(i) = text.find("\"offsetTable\":{") else { return Ok(stats) };
        // Entries are `{MessageQueue}:{OffsetWrapper}`; neither nests braces.
        let mut rest = &text[i + 15..];
        loop {
            rest = rest.trim_start_matches([',', ' ', '\n', '\r', '\t']);
            if rest.starts_with('}') || rest.is_empty() {
                break;
            }
            let key_end = rest.find('}').ok_or_else(|| bad("unterminated queue key"))? + 1;
            let mq: MessageQueue =
                serde_json::from_str(&rest[..key_end]).map_err(|e| bad(&format!("queue key: {e}")))?;
            rest =
                rest[key_end..].trim_start().strip_prefix(':').ok_or_else(|| bad("missing ':' after a queue key"))?;
            let val_end = rest.find('}').ok_or_else(|| bad("unterminated offsets"))? + 1;
            let w: OffsetWrapper = serde_json::from_str(&rest[..val_end]).map_err(|e| bad(&format!("offsets: {e}")))?;
            stats.offset_table.insert(mq, w);
            rest = &rest[val_end..];
        }
        Ok(stats)
    }

    /// Total messages not yet consumed.
    pub fn lag(&self) -> i64 {
        self.offset_table.values().map(|w| (w.broker_offset - w.consumer_offset).max(0)).sum()
    }
}

/// A producer group's connected clients (GET_PRODUCER_CONNECTION_LIST's answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ProducerConnection {
    pub connection_set: Vec<ClientConnection>,
}

/// One client connection of a consumer or producer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ClientConnection {
    pub client_id: String,
    pub client_addr: String,
    pub language: String,
    pub version: i32,
    /// `remoting` or `gRPC` (Spate's; absent from upstream's answers).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    /// A gRPC client's `x-mq-client-version` (its version is text, not
    /// remoting's number).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub client_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consume_stats_round_trip_through_fastjson_object_keys() {
        let mut s = ConsumeStats { consume_tps: 1.5, ..Default::default() };
        s.offset_table.insert(
            MessageQueue::new("T", "b", 0),
            OffsetWrapper { broker_offset: 9, consumer_offset: 4, last_timestamp: 0 },
        );
        s.offset_table.insert(
            MessageQueue::new("T", "b", 1),
            OffsetWrapper { broker_offset: 3, consumer_offset: 3, last_timestamp: 7 },
        );
        let back = ConsumeStats::from_fastjson(s.to_fastjson().as_bytes()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.lag(), 5);
        assert!(ConsumeStats::from_fastjson(b"{\"offsetTable\":{{\"topic\":").is_err());
        assert!(ConsumeStats::from_fastjson(b"{}").unwrap().offset_table.is_empty());
    }
}
