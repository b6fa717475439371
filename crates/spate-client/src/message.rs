//! Messages as producers build them ([`Message`]) and as consumers receive
//! them ([`MessageExt`]), and the two body layouts the client writes or reads:
//! batch bodies (SEND_BATCH_MESSAGE) and pull bodies (stored records).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use spate_common::message::{self as wire, property, MessageError, SYSFLAG_COMPRESSED};

use crate::error::{ClientError, Result};

/// Property names (kept in `spate_common`, the one place for them).
pub use spate_common::message::property as property_name;

/// Separator of several keys in the `KEYS` property.
pub const KEY_SEPARATOR: &str = " ";

fn split_keys(keys: Option<&str>) -> Vec<&str> {
    keys.map(|k| k.split(KEY_SEPARATOR).filter(|s| !s.is_empty()).collect()).unwrap_or_default()
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Payload.
    pub body: Bytes,
    /// User flag, stored as is.
    pub flag: i32,
    /// Properties, tags, keys and delay level included (upstream keeps them all in one map).
    pub properties: BTreeMap<String, String>,
}

impl Message {
    /// A message with `WAIT=true` set, as upstream's constructor does.
    pub fn new(topic: impl Into<String>, body: impl Into<Bytes>) -> Self {
        let mut properties = BTreeMap::new();
        properties.insert(property::WAIT.to_string(), "true".to_string());
        Message { topic: topic.into(), body: body.into(), flag: 0, properties }
    }

    /// Sets the tag (the `TAGS` property) that consumers filter on.
    pub fn with_tags(mut self, tags: impl Into<String>) -> Self {
        self.properties.insert(property::TAGS.to_string(), tags.into());
        self
    }

    /// Sets the business keys (the `KEYS` property, space separated), which the broker indexes.
    pub fn with_keys<I, S>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let joined: Vec<String> = keys.into_iter().map(|k| k.as_ref().to_string()).collect();
        self.properties.insert(property::KEYS.to_string(), joined.join(KEY_SEPARATOR));
        self
    }

    /// Sets the delay level (1..=18: 1s 5s 10s 30s 1m ... 2h); 0 clears it.
    pub fn with_delay_level(mut self, level: i32) -> Self {
        if level > 0 {
            self.properties.insert(property::DELAY.to_string(), level.to_string());
        } else {
            self.properties.remove(property::DELAY);
        }
        self
    }

    /// Delivers at `epoch_ms` (ms since the epoch; upstream's
    /// `setDeliverTimeMs`): a timer message.
    pub fn with_deliver_time_ms(mut self, epoch_ms: i64) -> Self {
        self.properties.insert(property::TIMER_DELIVER_MS.to_string(), epoch_ms.to_string());
        self
    }

    /// Delivers `delay` after the broker stores it (upstream's
    /// `setDelayTimeMs`): a timer message.
    pub fn with_delay_time(mut self, delay: std::time::Duration) -> Self {
        self.properties.insert(property::TIMER_DELAY_MS.to_string(), delay.as_millis().to_string());
        self
    }

    /// Sets a user property.
    pub fn with_property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }

    /// Sets the user flag.
    pub fn with_flag(mut self, flag: i32) -> Self {
        self.flag = flag;
        self
    }

    /// The tag, if any.
    pub fn tags(&self) -> Option<&str> {
        self.property(property::TAGS)
    }

    /// The keys, if any.
    pub fn keys(&self) -> Vec<&str> {
        split_keys(self.property(property::KEYS))
    }

    /// The delay level (0 when not delayed).
    pub fn delay_level(&self) -> i32 {
        self.property(property::DELAY).and_then(|d| d.parse().ok()).unwrap_or(0)
    }

    /// A property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// The client-made unique id (`UNIQ_KEY`), once the producer has set it.
    pub fn uniq_id(&self) -> Option<&str> {
        self.property(property::UNIQ_KEY)
    }

    /// The properties in wire form (`key 0x01 value 0x02` pairs).
    pub(crate) fn encoded_properties(&self) -> Result<String, MessageError> {
        wire::encode_properties(self.properties.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    }
}

/// Encodes messages as upstream's `MessageDecoder.encodeMessages` does, the
/// body of SEND_BATCH_MESSAGE. Per message:
///
/// ```text
/// totalSize i32 | magic i32 (0) | bodyCRC i32 (0) | flag i32 | bodyLen i32 | body | propertiesLen i16 | properties
/// ```
///
/// Upstream writes zero for magic and CRC; the broker computes its own.
pub fn encode_batch(messages: &[Message]) -> Result<Bytes, MessageError> {
    let mut out = BytesMut::new();
    for m in messages {
        let props = m.encoded_properties()?;
        let total = 4 + 4 + 4 + 4 + 4 + m.body.len() + 2 + props.len();
        out.reserve(total);
        let start = out.len();
        out.put_i32(total as i32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(m.flag);
        out.put_i32(m.body.len() as i32);
        out.put_slice(&m.body);
        out.put_i16(props.len() as i16);
        out.put_slice(props.as_bytes());
        debug_assert_eq!(out.len() - start, total);
    }
    Ok(out.freeze())
}

/// A received message with everything the broker stored about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageExt {
    /// Topic (for messages from the retry topic: the original topic, as upstream resets it).
    pub topic: String,
    /// Payload; zlib bodies are inflated, others stay compressed (see [`MessageExt::is_compressed`]).
    pub body: Bytes,
    /// User flag.
    pub flag: i32,
    /// Properties.
    pub properties: BTreeMap<String, String>,
    /// `UNIQ_KEY` when present, else the offset message id.
    pub msg_id: String,
    /// Store host + commit-log offset, 32 hex characters.
    pub offset_msg_id: String,
    /// The broker group the message was pulled from.
    pub broker_name: String,
    /// Queue id.
    pub queue_id: i32,
    /// Offset in the consume queue.
    pub queue_offset: i64,
    /// Offset in the commit log.
    pub commit_log_offset: i64,
    /// Stored record size.
    pub store_size: i32,
    /// Body CRC32 as stored.
    pub body_crc: u32,
    /// System flags.
    pub sys_flag: i32,
    /// When the producer made it (ms since the epoch).
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// When the broker stored it (ms since the epoch).
    pub store_timestamp: i64,
    /// The broker's address.
    pub store_host: SocketAddr,
    /// Times it has been consumed again.
    pub reconsume_times: i32,
    /// Prepared transaction offset.
    pub prepared_transaction_offset: i64,
}

impl MessageExt {
    /// The tag, if any.
    pub fn tags(&self) -> Option<&str> {
        self.property(property::TAGS)
    }

    /// The keys, if any.
    pub fn keys(&self) -> Vec<&str> {
        split_keys(self.property(property::KEYS))
    }

    /// A property.
    pub fn property(&self, key: &str) -> Option<&str> {
        self.properties.get(key).map(String::as_str)
    }

    /// Whether the body is still compressed (an algorithm other than zlib, or
    /// a body that did not inflate).
    pub fn is_compressed(&self) -> bool {
        self.sys_flag & SYSFLAG_COMPRESSED != 0
    }

    fn from_record(record: &wire::Record<'_>, body: Bytes, broker_name: &str) -> Self {
        let properties: BTreeMap<String, String> =
            wire::properties(record.properties).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let offset_msg_id = wire::offset_msg_id(record.store_host, record.physical_offset as u64);
        let msg_id = properties.get(property::UNIQ_KEY).cloned().unwrap_or_else(|| offset_msg_id.clone());
        let mut topic = record.topic.to_string();
        // A retried message comes back on %RETRY%<group>; users see the original topic.
        if topic.starts_with(spate_remoting::protocol::RETRY_GROUP_TOPIC_PREFIX) {
            if let Some(original) = properties.get(property::RETRY_TOPIC) {
                topic = original.clone();
            }
        }
        // Inflate zlib bodies as upstream clients do; keep others as sent.
        let (body, sys_flag) = crate::compress::inflate(record.sys_flag, &body).unwrap_or((body, record.sys_flag));
        MessageExt {
            topic,
            body,
            flag: record.flag,
            properties,
            msg_id,
            offset_msg_id,
            broker_name: broker_name.to_string(),
            queue_id: record.queue_id,
            queue_offset: record.queue_offset,
            commit_log_offset: record.physical_offset,
            store_size: record.total_size as i32,
            body_crc: record.body_crc,
            sys_flag,
            born_timestamp: record.born_timestamp,
            born_host: record.born_host,
            store_timestamp: record.store_timestamp,
            store_host: record.store_host,
            reconsume_times: record.reconsume_times,
            prepared_transaction_offset: record.prepared_tx_offset,
        }
    }
}

/// Splits a PULL_MESSAGE response body (stored records back to back) into
/// messages. Bodies share `body`'s buffer.
pub fn decode_pull_body(body: &Bytes, broker_name: &str) -> Result<Vec<MessageExt>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < body.len() {
        let record = wire::decode_record(&body[pos..], false).map_err(ClientError::Message)?;
        debug_assert!(record.total_size > 0);
        let payload = body.slice_ref(record.body);
        out.push(MessageExt::from_record(&record, payload, broker_name));
        pos += record.total_size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_common::message::{encode_record, NewMessage};

    #[test]
    fn batch_body_layout_matches_upstream_encode_messages() {
        let a = Message::new("T", &b"hello"[..]).with_tags("A").with_flag(7);
        let b = Message::new("T", Bytes::new());
        let body = encode_batch(&[a.clone(), b.clone()]).unwrap();
        let props_a = a.encoded_properties().unwrap();
        let total_a = 20 + 5 + 2 + props_a.len();
        assert_eq!(i32::from_be_bytes(body[0..4].try_into().unwrap()) as usize, total_a);
        assert_eq!(&body[4..12], &[0u8; 8], "magic and CRC are zero");
        assert_eq!(i32::from_be_bytes(body[12..16].try_into().unwrap()), 7, "flag");
        assert_eq!(i32::from_be_bytes(body[16..20].try_into().unwrap()), 5, "body length");
        assert_eq!(&body[20..25], b"hello");
        assert_eq!(i16::from_be_bytes(body[25..27].try_into().unwrap()) as usize, props_a.len());
        assert_eq!(&body[27..total_a], props_a.as_bytes());
        let props_b = b.encoded_properties().unwrap();
        assert_eq!(body.len(), total_a + 20 + 2 + props_b.len());
        assert_eq!(i32::from_be_bytes(body[total_a + 16..total_a + 20].try_into().unwrap()), 0);
    }

    #[test]
    fn message_accessors_use_upstream_property_names() {
        let m = Message::new("T", "x").with_tags("TagA").with_keys(["k1", "k2"]).with_delay_level(3);
        assert_eq!(m.property("TAGS"), Some("TagA"));
        assert_eq!(m.property("KEYS"), Some("k1 k2"));
        assert_eq!(m.keys(), vec!["k1", "k2"]);
        assert_eq!(m.property("DELAY"), Some("3"));
        assert_eq!(m.property("WAIT"), Some("true"));
        assert_eq!(m.with_delay_level(0).delay_level(), 0);
    }

    fn record(topic: &str, qoff: i64, props: &str, body: &'static [u8]) -> Vec<u8> {
        let msg = NewMessage {
            topic: topic.into(),
            queue_id: 2,
            flag: 1,
            body: Bytes::from_static(body),
            properties: props.into(),
            sys_flag: 0,
            born_timestamp: 1000,
            born_host: "10.0.0.1:5000".parse().unwrap(),
            store_host: "10.0.0.2:10911".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        };
        let mut out = Vec::new();
        let slots = encode_record(&msg, 1 << 20, &mut out).unwrap();
        spate_common::message::patch_record(&mut out, slots, qoff, 4096 + qoff, 2000);
        out
    }

    #[test]
    fn pull_body_decodes_records_back_to_back() {
        let p1 = wire::encode_properties([("TAGS", "A"), ("UNIQ_KEY", "ABC")]).unwrap();
        let p2 = wire::encode_properties([("RETRY_TOPIC", "Orig")]).unwrap();
        let mut buf = record("T", 5, &p1, b"one");
        buf.extend(record("%RETRY%g", 6, &p2, b"two"));
        let msgs = decode_pull_body(&Bytes::from(buf), "b1").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].queue_offset, msgs[0].tags(), msgs[0].msg_id.as_str()), (5, Some("A"), "ABC"));
        assert_eq!(&msgs[0].body[..], b"one");
        assert_eq!(msgs[0].broker_name, "b1");
        assert_eq!(msgs[1].topic, "Orig", "retry topic replaced by the original");
        assert_eq!(msgs[1].msg_id, msgs[1].offset_msg_id, "no UNIQ_KEY: offset id");
        assert_eq!(msgs[1].offset_msg_id.len(), 32);
        assert!(decode_pull_body(&Bytes::from_static(&[0, 0, 0, 9, 1]), "b").is_err());
    }
}
