//! Messages between gRPC's shape (`Message` with system and user
//! properties) and the stored record's (one property string, flags).
//!
//! Inbound, every system property a client may set becomes the property
//! upstream's broker stores for it (`message_id` -> `UNIQ_KEY`,
//! `message_group` -> `__SHARDINGKEY`, `delivery_timestamp` ->
//! `TIMER_DELIVER_MS`, a transaction -> `TRAN_MSG`); a user property may
//! not take a name the broker gives meaning to. Outbound, a stored record
//! becomes a `Message` whose user properties are exactly what the
//! producer set, whichever protocol it used.

use std::io::Read;

use prost_types::{Duration, Timestamp};
use spate_common::message::{self, property, Record};

use crate::pb::{self, Encoding, MessageType};

/// The property that carries a FIFO message's group (upstream's `__SHARDINGKEY`).
pub const SHARDING_KEY: &str = "__SHARDINGKEY";
/// Seconds before a half message's first check-back (upstream's `CHECK_IMMUNITY_TIME_IN_SECONDS`).
pub const CHECK_IMMUNITY_TIME: &str = "CHECK_IMMUNITY_TIME_IN_SECONDS";
/// Marks a transaction's half message.
pub const TRAN_MSG: &str = "TRAN_MSG";
/// The property a popped message's receipt handle travels in.
pub const POP_CK: &str = "POP_CK";

/// Names a user property may not take: the broker or clients read them.
const RESERVED: &[&str] = &[
    property::KEYS,
    property::TAGS,
    property::UNIQ_KEY,
    property::DELAY,
    property::WAIT,
    property::TRAN_MSG,
    property::REAL_TOPIC,
    property::REAL_QID,
    property::RETRY_TOPIC,
    property::ORIGIN_MESSAGE_ID,
    property::RECONSUME_TIME,
    property::MAX_RECONSUME_TIMES,
    property::MIN_OFFSET,
    property::MAX_OFFSET,
    property::CONSUME_START_TIME,
    property::TIMER_DELIVER_MS,
    property::TIMER_DELAY_SEC,
    property::TIMER_DELAY_MS,
    property::TIMER_OUT_MS,
    SHARDING_KEY,
    CHECK_IMMUNITY_TIME,
    POP_CK,
    "PGROUP",
    "BUYER_ID",
    "TRANSFER_FLAG",
    "CORRECTION_FLAG",
    "MQ2_FLAG",
    "MSG_REGION",
    "TRACE_ON",
    "TRAN_PREPARED_QUEUE_OFFSET",
    "TRANSACTION_CHECK_TIMES",
    "INSTANCE_ID",
    "CLUSTER",
    "__transactionId__",
    "TIMER_ENQUEUE_MS",
    "TIMER_DEQUEUE_MS",
    "TIMER_ROLL_TIMES",
    "TIMER_DEL_UNIQKEY",
    "INNER_NUM",
    "INNER_BASE",
    "1ST_POP_TIME",
    "POP_RETRY",
];

/// Why a message cannot be stored.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("the message names no topic")]
    NoTopic,
    #[error("the message has no system properties")]
    NoSystemProperties,
    #[error("the message id is missing or longer than 128 characters")]
    BadMessageId,
    #[error("user property {0:?} is reserved by the broker")]
    ReservedProperty(String),
    #[error("property {0:?}: names and values may not hold \\u0001 or \\u0002, and names may not be empty")]
    BadProperty(String),
    #[error("properties: {0}")]
    Properties(String),
    #[error("the GZIP body does not inflate: {0}")]
    BadGzip(String),
    #[error("the body inflates past maxMessageSize ({0} bytes)")]
    BodyTooLarge(usize),
    #[error("unknown body encoding {0}")]
    BadEncoding(i32),
    #[error("a {0} message cannot also carry {1}")]
    Mixed(&'static str, &'static str),
}

/// A gRPC message in the broker's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inbound {
    pub topic: String,
    pub body: Vec<u8>,
    /// Encoded properties (system ones included).
    pub properties: String,
    /// The client's id (`UNIQ_KEY`).
    pub message_id: String,
    /// The FIFO group, if any.
    pub message_group: Option<String>,
    pub born_timestamp: i64,
    /// A transaction's half message.
    pub transactional: bool,
    /// When a delayed message is due (epoch ms).
    pub delivery_ms: Option<i64>,
}

impl Inbound {
    /// The message's type, as a topic's `accept_message_types` names them.
    pub fn kind(&self) -> MessageType {
        if self.transactional {
            MessageType::Transaction
        } else if self.message_group.is_some() {
            MessageType::Fifo
        } else if self.delivery_ms.is_some() {
            MessageType::Delay
        } else {
            MessageType::Normal
        }
    }
}

/// Reads a message a producer sent; a GZIP body is inflated up to
/// `max_body` bytes (`maxMessageSize`), no further.
pub fn inbound(msg: &pb::Message, max_body: usize) -> Result<Inbound, ConvertError> {
    let topic = msg.topic.as_ref().map(|t| t.name.clone()).filter(|t| !t.is_empty()).ok_or(ConvertError::NoTopic)?;
    let sys = msg.system_properties.as_ref().ok_or(ConvertError::NoSystemProperties)?;
    if sys.message_id.is_empty() || sys.message_id.len() > 128 {
        return Err(ConvertError::BadMessageId);
    }
    let body = match Encoding::try_from(sys.body_encoding) {
        Ok(Encoding::Identity) | Ok(Encoding::Unspecified) => msg.body.clone(),
        Ok(Encoding::Gzip) => gunzip(&msg.body, max_body)?,
        Err(_) => return Err(ConvertError::BadEncoding(sys.body_encoding)),
    };
    let kind = MessageType::try_from(sys.message_type).unwrap_or(MessageType::Normal);
    let mut pairs: Vec<(String, String)> = Vec::with_capacity(msg.user_properties.len() + 6);
    // Sorted, so the stored bytes do not depend on a hash map's order.
    let mut user: Vec<(&String, &String)> = msg.user_properties.iter().collect();
    user.sort();
    for (k, v) in user {
        if RESERVED.contains(&k.as_str()) {
            return Err(ConvertError::ReservedProperty(k.clone()));
        }
        check_text(k, false)?;
        check_text(v, true)?;
        pairs.push((k.clone(), v.clone()));
    }
    if let Some(tag) = sys.tag.as_ref().filter(|t| !t.is_empty()) {
        check_text(tag, false)?;
        pairs.push((property::TAGS.into(), tag.clone()));
    }
    if !sys.keys.is_empty() {
        for k in &sys.keys {
            check_text(k, false)?;
        }
        pairs.push((property::KEYS.into(), sys.keys.join(" ")));
    }
    check_text(&sys.message_id, false)?;
    pairs.push((property::UNIQ_KEY.into(), sys.message_id.clone()));
    let message_group = sys.message_group.clone().filter(|g| !g.is_empty());
    if let Some(g) = &message_group {
        check_text(g, false)?;
        pairs.push((SHARDING_KEY.into(), g.clone()));
    }
    if let Some(at) = &sys.delivery_timestamp {
        if message_group.is_some() {
            return Err(ConvertError::Mixed("FIFO", "a delivery timestamp"));
        }
        pairs.push((property::TIMER_DELIVER_MS.into(), millis(at).to_string()));
    }
    let transactional = kind == MessageType::Transaction;
    if transactional {
        if sys.delivery_timestamp.is_some() {
            return Err(ConvertError::Mixed("transactional", "a delivery timestamp"));
        }
        pairs.push((TRAN_MSG.into(), "true".into()));
        if let Some(d) = &sys.orphaned_transaction_recovery_duration {
            pairs.push((CHECK_IMMUNITY_TIME.into(), d.seconds.max(0).to_string()));
        }
    }
    if let Some(trace) = sys.trace_context.as_ref().filter(|t| !t.is_empty()) {
        // Kept under the name upstream's proxy uses, never reserved.
        if check_text(trace, true).is_ok() {
            pairs.push(("TRACE_CONTEXT".into(), trace.clone()));
        }
    }
    let properties = message::encode_properties(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| ConvertError::Properties(e.to_string()))?;
    Ok(Inbound {
        topic,
        body,
        properties,
        message_id: sys.message_id.clone(),
        message_group,
        born_timestamp: sys.born_timestamp.as_ref().map_or(0, millis),
        transactional,
        delivery_ms: sys.delivery_timestamp.as_ref().map(millis),
    })
}

fn check_text(s: &str, empty_ok: bool) -> Result<(), ConvertError> {
    if (!empty_ok && s.is_empty()) || s.contains(['\u{1}', '\u{2}']) {
        return Err(ConvertError::BadProperty(s.chars().take(64).collect()));
    }
    Ok(())
}

fn gunzip(body: &[u8], max: usize) -> Result<Vec<u8>, ConvertError> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ConvertError::BadGzip(e.to_string()))?;
    if out.len() > max {
        return Err(ConvertError::BodyTooLarge(max));
    }
    Ok(out)
}

/// A timestamp in epoch milliseconds.
pub fn millis(t: &Timestamp) -> i64 {
    t.seconds.saturating_mul(1000).saturating_add(i64::from(t.nanos / 1_000_000))
}

/// Epoch milliseconds as a timestamp.
pub fn timestamp(ms: i64) -> Timestamp {
    Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A duration in milliseconds (negative as zero).
pub fn duration_ms(d: &Duration) -> u64 {
    let ms = d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos / 1_000_000));
    u64::try_from(ms).unwrap_or(0)
}

/// Milliseconds as a duration.
pub fn duration(ms: u64) -> Duration {
    Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// What a consumer is told of a delivery besides the stored record.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// The topic the consumer asked for (a retried message is stored in a
    /// retry topic; consumers see its original).
    pub topic: String,
    /// The receipt handle (from `POP_CK`), when popped.
    pub receipt_handle: Option<String>,
    pub invisible_ms: Option<u64>,
    /// 1 for the first delivery.
    pub attempt: i32,
    /// The id to use when the record has no `UNIQ_KEY`.
    pub fallback_id: String,
}

/// The body's digest a consumer checks. SHA-1 in upper-case hex: every
/// official client computes that one the same way (CRC32's hex is padded
/// by some clients and not by others).
fn sha1_digest(body: &[u8]) -> pb::Digest {
    use sha1::Digest;
    let sum = sha1::Sha1::digest(body);
    let checksum = spate_common::message::hex_upper(&sum);
    pb::Digest { r#type: pb::DigestType::Sha1 as i32, checksum }
}

/// A stored record as a consumer receives it.
pub fn outbound(rec: &Record<'_>, d: &Delivered) -> pb::Message {
    let mut user = std::collections::HashMap::new();
    let mut sys = pb::SystemProperties {
        body_encoding: Encoding::Identity as i32,
        message_type: MessageType::Normal as i32,
        queue_id: rec.queue_id,
        queue_offset: Some(rec.queue_offset),
        born_timestamp: Some(timestamp(rec.born_timestamp)),
        born_host: rec.born_host.ip().to_string(),
        store_timestamp: Some(timestamp(rec.store_timestamp)),
        store_host: rec.store_host.to_string(),
        receipt_handle: d.receipt_handle.clone(),
        invisible_duration: d.invisible_ms.map(duration),
        delivery_attempt: Some(d.attempt.max(1)),
        body_digest: Some(sha1_digest(rec.body)),
        ..Default::default()
    };
    for (k, v) in message::properties(rec.properties) {
        match k {
            property::TAGS => sys.tag = Some(v.to_string()),
            property::KEYS => sys.keys = v.split(' ').filter(|k| !k.is_empty()).map(str::to_string).collect(),
            property::UNIQ_KEY => sys.message_id = v.to_string(),
            SHARDING_KEY => {
                sys.message_group = Some(v.to_string());
                sys.message_type = MessageType::Fifo as i32;
            }
            property::TIMER_DELIVER_MS => {
                if let Ok(ms) = v.parse::<i64>() {
                    sys.delivery_timestamp = Some(timestamp(ms));
                    sys.message_type = MessageType::Delay as i32;
                }
            }
            property::DELAY | property::TIMER_DELAY_SEC | property::TIMER_DELAY_MS => {
                sys.message_type = MessageType::Delay as i32;
            }
            TRAN_MSG => sys.message_type = MessageType::Transaction as i32,
            "TRACE_CONTEXT" => sys.trace_context = Some(v.to_string()),
            k if RESERVED.contains(&k) => {}
            k => {
                user.insert(k.to_string(), v.to_string());
            }
        }
    }
    if sys.message_id.is_empty() {
        sys.message_id = d.fallback_id.clone();
    }
    pb::Message {
        topic: Some(pb::Resource { name: d.topic.clone(), ..Default::default() }),
        user_properties: user,
        system_properties: Some(sys),
        body: rec.body.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbound_(m: &pb::Message) -> Result<Inbound, ConvertError> {
        inbound(m, 1 << 20)
    }

    fn msg(user: &[(&str, &str)]) -> pb::Message {
        pb::Message {
            topic: Some(pb::Resource { name: "T".into(), ..Default::default() }),
            user_properties: user.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            system_properties: Some(pb::SystemProperties {
                tag: Some("tagA".into()),
                keys: vec!["k1".into(), "k2".into()],
                message_id: "01ABC".into(),
                message_group: Some("g1".into()),
                ..Default::default()
            }),
            body: vec![0, 1, 2, 0xff],
        }
    }

    #[test]
    fn system_properties_become_upstream_names_and_come_back() {
        let m = inbound_(&msg(&[("color", "blue"), ("empty", "")])).unwrap();
        assert_eq!(message::property(&m.properties, "TAGS"), Some("tagA"));
        assert_eq!(message::property(&m.properties, "KEYS"), Some("k1 k2"));
        assert_eq!(message::property(&m.properties, "UNIQ_KEY"), Some("01ABC"));
        assert_eq!(message::property(&m.properties, SHARDING_KEY), Some("g1"));
        assert_eq!(message::property(&m.properties, "color"), Some("blue"));
        assert_eq!(m.message_group.as_deref(), Some("g1"));
        let mut rec_bytes = Vec::new();
        let nm = message::NewMessage {
            topic: m.topic.clone(),
            queue_id: 1,
            flag: 0,
            body: m.body.clone().into(),
            properties: m.properties.clone(),
            sys_flag: 0,
            born_timestamp: 1_700_000_000_123,
            born_host: "127.0.0.1:5".parse().unwrap(),
            store_host: "127.0.0.1:6".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        };
        message::encode_record(&nm, usize::MAX, &mut rec_bytes).unwrap();
        let rec = message::decode_record(&rec_bytes, true).unwrap();
        let out = outbound(&rec, &Delivered { topic: "T".into(), attempt: 2, ..Default::default() });
        let sys = out.system_properties.unwrap();
        assert_eq!(out.body, vec![0, 1, 2, 0xff]);
        assert_eq!(sys.tag.as_deref(), Some("tagA"));
        assert_eq!(sys.keys, vec!["k1", "k2"]);
        assert_eq!(sys.message_id, "01ABC");
        assert_eq!(sys.message_group.as_deref(), Some("g1"));
        assert_eq!(sys.message_type, MessageType::Fifo as i32);
        assert_eq!(sys.delivery_attempt, Some(2));
        assert_eq!(out.user_properties.len(), 2);
        assert_eq!(out.user_properties["color"], "blue");
        assert_eq!(millis(sys.born_timestamp.as_ref().unwrap()), 1_700_000_000_123);
    }

    #[test]
    fn reserved_and_separator_properties_are_refused() {
        assert_eq!(inbound_(&msg(&[("TAGS", "x")])), Err(ConvertError::ReservedProperty("TAGS".into())));
        assert!(matches!(inbound_(&msg(&[("a\u{1}b", "x")])), Err(ConvertError::BadProperty(_))));
        assert!(matches!(inbound_(&msg(&[("a", "x\u{2}")])), Err(ConvertError::BadProperty(_))));
        let mut m = msg(&[]);
        m.system_properties.as_mut().unwrap().message_id.clear();
        assert_eq!(inbound_(&m), Err(ConvertError::BadMessageId));
        m.topic = None;
        assert_eq!(inbound_(&m), Err(ConvertError::NoTopic));
    }

    #[test]
    fn gzip_bodies_are_inflated_and_garbage_refused() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello hello hello").unwrap();
        let mut m = msg(&[]);
        m.body = enc.finish().unwrap();
        m.system_properties.as_mut().unwrap().body_encoding = Encoding::Gzip as i32;
        assert_eq!(inbound_(&m).unwrap().body, b"hello hello hello");
        m.body = b"not gzip".to_vec();
        assert!(matches!(inbound_(&m), Err(ConvertError::BadGzip(_))));
        // A bomb stops at maxMessageSize.
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 3 << 20]).unwrap();
        m.body = enc.finish().unwrap();
        assert_eq!(inbound_(&m), Err(ConvertError::BodyTooLarge(1 << 20)));
    }

    #[test]
    fn a_fifo_message_may_not_be_delayed() {
        let mut m = msg(&[]);
        m.system_properties.as_mut().unwrap().delivery_timestamp = Some(timestamp(5));
        assert_eq!(inbound_(&m), Err(ConvertError::Mixed("FIFO", "a delivery timestamp")));
    }
}
