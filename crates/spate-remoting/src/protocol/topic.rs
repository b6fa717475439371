//! Topic and subscription-group configuration as brokers persist and register them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::perm;

/// Most read or write queues a topic may have on one broker: the broker
/// refuses to create more, and the name server refuses to route more.
pub const MAX_QUEUE_NUMS: i32 = 1024;

/// One topic's configuration on a broker (`TopicConfig` upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfig {
    pub topic_name: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
    pub topic_filter_type: String,
    pub topic_sys_flag: i32,
    pub order: bool,
    /// Upstream 5's topic attributes; Spate knows `message.type`
    /// ([`MESSAGE_TYPE_ATTRIBUTE`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// The attribute that declares what messages a topic takes: `NORMAL`,
/// `FIFO`, `DELAY`, `TRANSACTION` or `MIXED` (all; also when absent).
pub const MESSAGE_TYPE_ATTRIBUTE: &str = "message.type";
/// The values `message.type` may take.
pub const MESSAGE_TYPES: [&str; 5] = ["NORMAL", "FIFO", "DELAY", "TRANSACTION", "MIXED"];

/// Reads UPDATE_AND_CREATE_TOPIC's `attributes` header (`+key=value`
/// pairs separated by commas, `-key` to remove), as upstream writes it;
/// only known attributes with known values are taken.
pub fn parse_topic_attributes(text: &str) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = if let Some(rest) = part.strip_prefix('+') {
            let (k, v) = rest.split_once('=').ok_or_else(|| format!("attribute {part:?} has no value"))?;
            (k.trim(), Some(v.trim().to_string()))
        } else if let Some(k) = part.strip_prefix('-') {
            (k.trim(), None)
        } else {
            return Err(format!("attribute {part:?} must start with + (set) or - (remove)"));
        };
        if key != MESSAGE_TYPE_ATTRIBUTE {
            return Err(format!("unknown topic attribute {key:?} (known: {MESSAGE_TYPE_ATTRIBUTE})"));
        }
        if let Some(v) = &value {
            if !MESSAGE_TYPES.contains(&v.as_str()) {
                return Err(format!("{key}={v} is not one of {}", MESSAGE_TYPES.join(", ")));
            }
        }
        out.push((key.to_string(), value));
    }
    Ok(out)
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            topic_name: String::new(),
            read_queue_nums: 16,
            write_queue_nums: 16,
            perm: perm::READ | perm::WRITE,
            topic_filter_type: "SINGLE_TAG".into(),
            topic_sys_flag: 0,
            order: false,
            attributes: BTreeMap::new(),
        }
    }
}

impl TopicConfig {
    /// The declared `message.type`, if one other than `MIXED` is.
    pub fn message_type(&self) -> Option<&str> {
        self.attributes.get(MESSAGE_TYPE_ATTRIBUTE).map(String::as_str).filter(|t| *t != "MIXED")
    }

    pub fn new(name: &str, queues: i32, perm: i32) -> Self {
        TopicConfig {
            topic_name: name.to_string(),
            read_queue_nums: queues,
            write_queue_nums: queues,
            perm,
            ..TopicConfig::default()
        }
    }
}

/// Version stamp of a broker's topic table. Spate's name server does not trust
/// it to skip work: a name-server-side change (a deletion, a namesake's
/// registration) leaves the broker's version alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct DataVersion {
    pub timestamp: i64,
    pub counter: i64,
}

/// A broker's topic table (GET_ALL_TOPIC_CONFIG body, inside REGISTER_BROKER's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigSerializeWrapper {
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    pub data_version: DataVersion,
}

/// The body of REGISTER_BROKER.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterBrokerBody {
    pub topic_config_serialize_wrapper: TopicConfigSerializeWrapper,
    pub filter_server_list: Vec<String>,
}

/// A consumer group's settings (`SubscriptionGroupConfig` upstream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SubscriptionGroupConfig {
    pub group_name: String,
    pub consume_enable: bool,
    pub consume_from_min_enable: bool,
    pub consume_broadcast_enable: bool,
    pub retry_queue_nums: i32,
    pub retry_max_times: i32,
    pub broker_id: i64,
    pub which_broker_when_consume_slowly: i64,
    pub notify_consumer_ids_changed_enable: bool,
    /// FIFO consumption (upstream's `consumeMessageOrderly`): gRPC
    /// consumers of the group are told `fifo` and pop orderly.
    pub consume_message_orderly: bool,
}

impl Default for SubscriptionGroupConfig {
    fn default() -> Self {
        SubscriptionGroupConfig {
            group_name: String::new(),
            consume_enable: true,
            consume_from_min_enable: true,
            consume_broadcast_enable: true,
            retry_queue_nums: 1,
            retry_max_times: 16,
            broker_id: 0,
            which_broker_when_consume_slowly: 1,
            notify_consumer_ids_changed_enable: true,
            consume_message_orderly: false,
        }
    }
}
