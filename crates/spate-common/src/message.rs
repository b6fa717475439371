//! RocketMQ's stored-message record, byte for byte.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! TOTALSIZE 4 | MAGICCODE 4 | BODYCRC 4 | QUEUEID 4 | FLAG 4 | QUEUEOFFSET 8 |
//! PHYSICALOFFSET 8 | SYSFLAG 4 | BORNTIMESTAMP 8 | BORNHOST 8 or 20 |
//! STORETIMESTAMP 8 | STOREHOST 8 or 20 | RECONSUMETIMES 4 |
//! PREPAREDTRANSACTIONOFFSET 8 | BODYLEN 4 | BODY | TOPICLEN 1 (v1) or 2 (v2) |
//! TOPIC | PROPLEN 2 | PROPERTIES
//! ```
//!
//! A host is an IPv4 address and a port (4 + 4 bytes), or IPv6 (16 + 4) when
//! the matching system flag is set. Properties are `key 0x01 value 0x02`
//! pairs. A segment's unused tail starts with a blank marker: a size and the
//! blank magic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Magic of a record with a one-byte topic length.
pub const MAGIC_V1: u32 = 0xDAA3_20A7;
/// Magic of a record with a two-byte topic length.
pub const MAGIC_V2: u32 = 0xDAA3_20AB;
/// Magic of the blank marker that fills the end of a segment.
pub const BLANK_MAGIC: u32 = 0xCBD4_3194;
/// Smallest blank marker: size and magic.
pub const BLANK_MIN_LEN: usize = 8;

/// System flag: body is compressed.
pub const SYSFLAG_COMPRESSED: i32 = 0x1;
/// System flag: several tags.
pub const SYSFLAG_MULTI_TAGS: i32 = 0x2;
/// System flag mask for the transaction state.
pub const SYSFLAG_TX_MASK: i32 = 0xC;
/// System flag: transaction prepared.
pub const SYSFLAG_TX_PREPARED: i32 = 0x4;
/// System flag: transaction committed.
pub const SYSFLAG_TX_COMMIT: i32 = 0x8;
/// System flag: transaction rolled back.
pub const SYSFLAG_TX_ROLLBACK: i32 = 0xC;
/// System flag: born host is IPv6.
pub const SYSFLAG_BORNHOST_V6: i32 = 0x10;
/// System flag: store host is IPv6.
pub const SYSFLAG_STOREHOST_V6: i32 = 0x20;

/// Property key separator (between key and value).
pub const NAME_VALUE_SEPARATOR: char = '\u{1}';
/// Property separator (after each value).
pub const PROPERTY_SEPARATOR: char = '\u{2}';

/// Property keys RocketMQ clients and brokers use.
pub mod property {
    /// Space-separated business keys; indexed.
    pub const KEYS: &str = "KEYS";
    /// The tag (or tags) used for filtering.
    pub const TAGS: &str = "TAGS";
    /// Client-made unique message id; indexed.
    pub const UNIQ_KEY: &str = "UNIQ_KEY";
    /// Delay level of a scheduled message.
    pub const DELAY: &str = "DELAY";
    /// Whether the producer waits for the store.
    pub const WAIT: &str = "WAIT";
    /// Transaction half message marker.
    pub const TRAN_MSG: &str = "TRAN_MSG";
    /// Original topic of a rewritten message.
    pub const REAL_TOPIC: &str = "REAL_TOPIC";
    /// Original queue of a rewritten message.
    pub const REAL_QID: &str = "REAL_QID";
    /// Original topic of a retried message.
    pub const RETRY_TOPIC: &str = "RETRY_TOPIC";
    /// Original message id of a retried message.
    pub const ORIGIN_MESSAGE_ID: &str = "ORIGIN_MESSAGE_ID";
    /// Times a message has been consumed again (on retry-topic messages).
    pub const RECONSUME_TIME: &str = "RECONSUME_TIME";
    /// Retry limit carried with a retried message.
    pub const MAX_RECONSUME_TIMES: &str = "MAX_RECONSUME_TIMES";
    /// Lowest offset of the queue when the message was pulled.
    pub const MIN_OFFSET: &str = "MIN_OFFSET";
    /// Highest offset of the queue when the message was pulled.
    pub const MAX_OFFSET: &str = "MAX_OFFSET";
    /// When consumption of the message started (ms since the epoch).
    pub const CONSUME_START_TIME: &str = "CONSUME_START_TIME";
    /// Deliver at this time (ms since the epoch): a timer message.
    pub const TIMER_DELIVER_MS: &str = "TIMER_DELIVER_MS";
    /// Deliver this many seconds after it is stored: a timer message.
    pub const TIMER_DELAY_SEC: &str = "TIMER_DELAY_SEC";
    /// Deliver this many milliseconds after it is stored: a timer message.
    pub const TIMER_DELAY_MS: &str = "TIMER_DELAY_MS";
    /// When a waiting timer message is due (ms since the epoch), set by
    /// the broker.
    pub const TIMER_OUT_MS: &str = "TIMER_OUT_MS";
}

/// The system topic timer messages wait in (upstream's name). Its queue
/// entries carry the due time (ms) where others carry the tag hash, so
/// the due ones are found without reading the messages.
pub const TIMER_TOPIC: &str = "rmq_sys_wheel_timer";

/// The consume-queue tag code of a stored message: its tag's hash, or
/// for a waiting timer message its due time.
pub fn queue_tags_code(topic: &str, properties: &str) -> i64 {
    let [tags, timer_out] = find_properties(properties, [property::TAGS, property::TIMER_OUT_MS]);
    queue_tags_code_of(topic, tags, timer_out)
}

/// [`queue_tags_code`] from the `TAGS` and `TIMER_OUT_MS` values already
/// looked up (by a caller that wants other properties of the same record).
pub fn queue_tags_code_of(topic: &str, tags: Option<&str>, timer_out_ms: Option<&str>) -> i64 {
    if topic == TIMER_TOPIC {
        return timer_out_ms.and_then(|v| v.parse().ok()).unwrap_or(0);
    }
    tags_code(tags)
}

/// Longest topic name RocketMQ accepts.
pub const TOPIC_MAX_LEN: usize = 127;
/// Longest encoded properties string (the length field is a signed 16-bit).
pub const PROPERTIES_MAX_LEN: usize = i16::MAX as usize;

/// Why a message or record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Empty topic name.
    #[error("topic name is empty")]
    TopicEmpty,
    /// Topic name longer than [`TOPIC_MAX_LEN`].
    #[error("topic name is {len} characters, more than {TOPIC_MAX_LEN}")]
    TopicTooLong {
        /// Its length.
        len: usize,
    },
    /// Topic name with a character outside letters, digits and `%|_-`.
    #[error("topic name {topic:?} has an illegal character (allowed: letters, digits, %|_-)")]
    TopicIllegal {
        /// The refused name.
        topic: String,
    },
    /// Body larger than the store's `maxMessageSize`.
    #[error("message body is {size} bytes, more than maxMessageSize {max}")]
    BodyTooLarge {
        /// Body size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// Encoded properties longer than [`PROPERTIES_MAX_LEN`].
    #[error("message properties are {size} bytes, more than {PROPERTIES_MAX_LEN}")]
    PropertiesTooLarge {
        /// Encoded size.
        size: usize,
    },
    /// A property key or value contains a separator character.
    #[error("property {key:?} contains a reserved separator character")]
    PropertyIllegal {
        /// The key involved.
        key: String,
    },
    /// Non-empty properties that do not end with [`PROPERTY_SEPARATOR`]:
    /// recovery could not tell such a record from a torn one.
    #[error("message properties do not end with the property separator")]
    PropertiesUnterminated,
    /// Queue id out of range.
    #[error("queue id {queue_id} is out of range")]
    QueueIdIllegal {
        /// The refused id.
        queue_id: i32,
    },
    /// A stored or received record does not parse.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
}

/// Checks a topic name against RocketMQ's rules.
pub fn validate_topic(topic: &str) -> Result<(), MessageError> {
    if topic.is_empty() {
        return Err(MessageError::TopicEmpty);
    }
    if topic.len() > TOPIC_MAX_LEN {
        return Err(MessageError::TopicTooLong { len: topic.len() });
    }
    if !topic.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'%' | b'|' | b'_' | b'-')) {
        return Err(MessageError::TopicIllegal { topic: topic.to_string() });
    }
    Ok(())
}

/// Encodes properties as `key 0x01 value 0x02` pairs.
pub fn encode_properties<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<String, MessageError> {
    let mut out = String::new();
    for (k, v) in pairs {
        if k.contains([NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR])
            || v.contains([NAME_VALUE_SEPARATOR, PROPERTY_SEPARATOR])
        {
            return Err(MessageError::PropertyIllegal { key: k.to_string() });
        }
        out.push_str(k);
        out.push(NAME_VALUE_SEPARATOR);
        out.push_str(v);
        out.push(PROPERTY_SEPARATOR);
    }
    if out.len() > PROPERTIES_MAX_LEN {
        return Err(MessageError::PropertiesTooLarge { size: out.len() });
    }
    Ok(out)
}

/// The one rule on a stored properties string that the append path and
/// recovery share: empty, or ending with [`PROPERTY_SEPARATOR`].
pub fn properties_terminated(encoded: &str) -> bool {
    encoded.is_empty() || encoded.ends_with(PROPERTY_SEPARATOR)
}

/// A client's properties string as upstream's broker stores it: parsed
/// into pairs (a piece without a key/value separator is dropped, as
/// upstream's decoder drops it) and written again, each pair terminated.
/// A string already in that form is returned as it is, without copying.
pub fn canonical_properties(encoded: &str) -> std::borrow::Cow<'_, str> {
    let canonical = properties_terminated(encoded)
        && encoded
            .strip_suffix(PROPERTY_SEPARATOR)
            .is_none_or(|body| body.split(PROPERTY_SEPARATOR).all(|pair| pair.contains(NAME_VALUE_SEPARATOR)));
    if canonical {
        return std::borrow::Cow::Borrowed(encoded);
    }
    let mut out = String::with_capacity(encoded.len() + 1);
    for (k, v) in properties(encoded) {
        out.push_str(k);
        out.push(NAME_VALUE_SEPARATOR);
        out.push_str(v);
        out.push(PROPERTY_SEPARATOR);
    }
    std::borrow::Cow::Owned(out)
}

/// Iterates over the `(key, value)` pairs of an encoded properties string.
/// Pairs without a separator are skipped, as upstream's decoder does.
pub fn properties(encoded: &str) -> impl Iterator<Item = (&str, &str)> {
    // Split on bytes: both separators are ASCII, so every cut falls on a
    // char boundary. `str::split(char)` confirms each candidate with a
    // call to `memcmp`, which was an eighth of the dispatcher's CPU.
    const PAIR_END: u8 = PROPERTY_SEPARATOR as u8;
    const NAME_END: u8 = NAME_VALUE_SEPARATOR as u8;
    let mut rest = encoded;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let pair = match rest.bytes().position(|b| b == PAIR_END) {
            Some(end) => {
                let pair = &rest[..end];
                rest = &rest[end + 1..];
                pair
            }
            None => std::mem::take(&mut rest),
        };
        if let Some(at) = pair.bytes().position(|b| b == NAME_END) {
            return Some((&pair[..at], &pair[at + 1..]));
        }
    })
}

/// Looks one property up in an encoded properties string.
pub fn property<'a>(encoded: &'a str, key: &str) -> Option<&'a str> {
    properties(encoded).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Looks several properties up in one pass over an encoded properties
/// string: the value of each of `keys`, in their order (the first pair
/// with that key, as [`property`] finds it).
pub fn find_properties<'a, const N: usize>(encoded: &'a str, keys: [&str; N]) -> [Option<&'a str>; N] {
    let mut found = [None; N];
    let mut missing = N;
    for (k, v) in properties(encoded) {
        if let Some(i) = keys.iter().position(|want| *want == k) {
            if found[i].is_none() {
                found[i] = Some(v);
                missing -= 1;
                if missing == 0 {
                    break;
                }
            }
        }
    }
    found
}

/// Java's `String.hashCode` (over UTF-16 code units), which RocketMQ uses
/// as the tag hash code in consume-queue units and subscriptions.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16().fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(c as i32))
}

/// The tag hash code stored in a consume-queue unit (0 when untagged).
pub fn tags_code(tags: Option<&str>) -> i64 {
    match tags {
        Some(t) if !t.is_empty() => java_string_hash(t) as i64,
        _ => 0,
    }
}

/// A message as a producer hands it to the store (everything but the
/// fields the store assigns: queue offset, physical offset, store time).
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Topic name.
    pub topic: String,
    /// Queue within the topic.
    pub queue_id: i32,
    /// User flag.
    pub flag: i32,
    /// Payload.
    pub body: bytes::Bytes,
    /// Encoded properties (see [`encode_properties`]).
    pub properties: String,
    /// System flags; the host-v6 bits are set by the encoder.
    pub sys_flag: i32,
    /// When the producer made the message (ms since the epoch).
    pub born_timestamp: i64,
    /// The producer's address.
    pub born_host: SocketAddr,
    /// The storing broker's address.
    pub store_host: SocketAddr,
    /// How often this message was consumed again.
    pub reconsume_times: i32,
    /// Offset of the prepared half message (transactions).
    pub prepared_tx_offset: i64,
}

/// Where the store-assigned fields sit inside an encoded record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordSlots {
    /// Total size of the record.
    pub len: usize,
    /// Position of STORETIMESTAMP.
    pub store_timestamp_pos: usize,
}

/// Position of QUEUEOFFSET in every record.
pub const QUEUE_OFFSET_POS: usize = 20;
/// Position of PHYSICALOFFSET in every record.
pub const PHYSICAL_OFFSET_POS: usize = 28;
/// Position of SYSFLAG in every record.
pub const SYSFLAG_POS: usize = 36;
/// Position of BORNHOST in every record.
pub const BORN_HOST_POS: usize = 48;

fn host_len(v6: bool) -> usize {
    if v6 {
        20
    } else {
        8
    }
}

/// Encodes `msg` as a stored record (magic v1 when the topic fits one length
/// byte, else v2) with zero queue offset, physical offset and store time,
/// to be patched by the store with [`patch_record`]. Checks the topic, body
/// size against `max_body`, and properties size.
pub fn encode_record(msg: &NewMessage, max_body: usize, out: &mut Vec<u8>) -> Result<RecordSlots, MessageError> {
    validate_topic(&msg.topic)?;
    if msg.queue_id < 0 {
        return Err(MessageError::QueueIdIllegal { queue_id: msg.queue_id });
    }
    if msg.body.len() > max_body {
        return Err(MessageError::BodyTooLarge { size: msg.body.len(), max: max_body });
    }
    if msg.properties.len() > PROPERTIES_MAX_LEN {
        return Err(MessageError::PropertiesTooLarge { size: msg.properties.len() });
    }
    // What recovery accepts, and nothing else (see `Record::semantic_problem`).
    if !properties_terminated(&msg.properties) {
        return Err(MessageError::PropertiesUnterminated);
    }
    let mut sys_flag = msg.sys_flag & !(SYSFLAG_BORNHOST_V6 | SYSFLAG_STOREHOST_V6);
    if msg.born_host.is_ipv6() {
        sys_flag |= SYSFLAG_BORNHOST_V6;
    }
    if msg.store_host.is_ipv6() {
        sys_flag |= SYSFLAG_STOREHOST_V6;
    }
    let v2 = msg.topic.len() > u8::MAX as usize;
    let len = 4
        + 4
        + 4
        + 4
        + 4
        + 8
        + 8
        + 4
        + 8
        + host_len(msg.born_host.is_ipv6())
        + 8
        + host_len(msg.store_host.is_ipv6())
        + 4
        + 8
        + 4
        + msg.body.len()
        + if v2 { 2 } else { 1 }
        + msg.topic.len()
        + 2
        + msg.properties.len();
    out.clear();
    out.reserve(len);
    out.extend_from_slice(&(len as i32).to_be_bytes());
    out.extend_from_slice(&(if v2 { MAGIC_V2 } else { MAGIC_V1 }).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&msg.body).to_be_bytes());
    out.extend_from_slice(&msg.queue_id.to_be_bytes());
    out.extend_from_slice(&msg.flag.to_be_bytes());
    out.extend_from_slice(&0i64.to_be_bytes()); // queue offset, patched
    out.extend_from_slice(&0i64.to_be_bytes()); // physical offset, patched
    out.extend_from_slice(&sys_flag.to_be_bytes());
    out.extend_from_slice(&msg.born_timestamp.to_be_bytes());
    put_host(out, msg.born_host);
    let store_timestamp_pos = out.len();
    out.extend_from_slice(&0i64.to_be_bytes()); // store timestamp, patched
    put_host(out, msg.store_host);
    out.extend_from_slice(&msg.reconsume_times.to_be_bytes());
    out.extend_from_slice(&msg.prepared_tx_offset.to_be_bytes());
    out.extend_from_slice(&(msg.body.len() as i32).to_be_bytes());
    out.extend_from_slice(&msg.body);
    if v2 {
        out.extend_from_slice(&(msg.topic.len() as u16).to_be_bytes());
    } else {
        out.push(msg.topic.len() as u8);
    }
    out.extend_from_slice(msg.topic.as_bytes());
    out.extend_from_slice(&(msg.properties.len() as u16).to_be_bytes());
    out.extend_from_slice(msg.properties.as_bytes());
    debug_assert_eq!(out.len(), len);
    Ok(RecordSlots { len, store_timestamp_pos })
}

fn put_host(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => out.extend_from_slice(&ip.octets()),
    }
    out.extend_from_slice(&(addr.port() as i32).to_be_bytes());
}

/// Fills the store-assigned fields of an encoded record.
pub fn patch_record(
    record: &mut [u8],
    slots: RecordSlots,
    queue_offset: i64,
    physical_offset: i64,
    store_timestamp: i64,
) {
    record[QUEUE_OFFSET_POS..QUEUE_OFFSET_POS + 8].copy_from_slice(&queue_offset.to_be_bytes());
    record[PHYSICAL_OFFSET_POS..PHYSICAL_OFFSET_POS + 8].copy_from_slice(&physical_offset.to_be_bytes());
    record[slots.store_timestamp_pos..slots.store_timestamp_pos + 8].copy_from_slice(&store_timestamp.to_be_bytes());
}

/// What sits at a position in a segment, judged from its first 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A record of this total size (not yet validated beyond its magic).
    Record(usize),
    /// A blank marker filling the rest of the segment.
    Blank,
    /// Zeros: nothing written here.
    End,
    /// Anything else: garbage or a torn write.
    Invalid,
}

/// Reads the size and magic at the start of `buf`.
pub fn probe(buf: &[u8]) -> Probe {
    if buf.len() < 8 {
        return if buf.iter().all(|b| *b == 0) { Probe::End } else { Probe::Invalid };
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let magic = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    match magic {
        MAGIC_V1 | MAGIC_V2 if size > 0 => Probe::Record(size as usize),
        BLANK_MAGIC if size >= BLANK_MIN_LEN as i32 => Probe::Blank,
        0 if size == 0 => Probe::End,
        _ => Probe::Invalid,
    }
}

/// Writes a blank marker of `len` bytes' extent into `out` (only its first
/// 8 bytes; the rest of the extent is left as is).
pub fn blank_marker(len: usize) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&(len as i32).to_be_bytes());
    b[4..].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
    b
}

/// A decoded record, borrowing from the buffer it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Total size.
    pub total_size: usize,
    /// Magic (v1 or v2).
    pub magic: u32,
    /// Stored CRC32 of the body.
    pub body_crc: u32,
    /// Queue id.
    pub queue_id: i32,
    /// User flag.
    pub flag: i32,
    /// Offset in the consume queue.
    pub queue_offset: i64,
    /// Offset in the commit log.
    pub physical_offset: i64,
    /// System flags.
    pub sys_flag: i32,
    /// Producer time.
    pub born_timestamp: i64,
    /// Producer address.
    pub born_host: SocketAddr,
    /// Store time.
    pub store_timestamp: i64,
    /// Broker address.
    pub store_host: SocketAddr,
    /// Times consumed again.
    pub reconsume_times: i32,
    /// Prepared transaction offset.
    pub prepared_tx_offset: i64,
    /// Payload.
    pub body: &'a [u8],
    /// Topic.
    pub topic: &'a str,
    /// Encoded properties.
    pub properties: &'a str,
}

impl Record<'_> {
    /// Looks a property up.
    pub fn property(&self, key: &str) -> Option<&str> {
        property(self.properties, key)
    }

    /// Whether the stored body CRC matches the body.
    pub fn crc_ok(&self) -> bool {
        crc32fast::hash(self.body) == self.body_crc
    }

    /// What the append path would have refused in a record that is
    /// otherwise intact: a topic that is not a valid name, or properties
    /// that do not end with a separator. The CRC covers only the body, so
    /// at the log's tail these are also the marks of a torn write.
    pub fn semantic_problem(&self) -> Option<&'static str> {
        if validate_topic(self.topic).is_err() {
            return Some("topic is not a valid name");
        }
        if !properties_terminated(self.properties) {
            return Some("properties do not end with a separator");
        }
        None
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let end =
            self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(MessageError::Malformed("truncated"))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
    fn i32(&mut self) -> Result<i32, MessageError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(self.i32()? as u32)
    }
    fn i64(&mut self) -> Result<i64, MessageError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }
    fn host(&mut self, v6: bool) -> Result<SocketAddr, MessageError> {
        let ip: IpAddr = if v6 {
            let b = self.take(16)?;
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ipv6Addr::from(a).into()
        } else {
            let b = self.take(4)?;
            Ipv4Addr::new(b[0], b[1], b[2], b[3]).into()
        };
        let port = self.i32()?;
        Ok(SocketAddr::new(ip, port as u16))
    }
}

/// Decodes one record from the start of `buf` and checks its structure:
/// magic, every length consistent with the total size, UTF-8 topic and
/// properties. With `check_crc`, also the body CRC and
/// [`Record::semantic_problem`]: everything the append path guarantees.
pub fn decode_record(buf: &[u8], check_crc: bool) -> Result<Record<'_>, MessageError> {
    let record = decode_intact(buf, check_crc)?;
    if check_crc {
        if let Some(why) = record.semantic_problem() {
            return Err(MessageError::Malformed(why));
        }
    }
    Ok(record)
}

/// Decodes one record and checks its structure and, with `check_crc`, its
/// body CRC, but not [`Record::semantic_problem`]: whether the record is
/// intact as bytes, which is what decides that recovery keeps it.
pub fn decode_intact(buf: &[u8], check_crc: bool) -> Result<Record<'_>, MessageError> {
    let mut c = Cursor { buf, pos: 0 };
    let total = c.i32()?;
    if total <= 0 || total as usize > buf.len() {
        return Err(MessageError::Malformed("total size out of range"));
    }
    let total_size = total as usize;
    c.buf = &buf[..total_size];
    let magic = c.u32()?;
    if magic != MAGIC_V1 && magic != MAGIC_V2 {
        return Err(MessageError::Malformed("bad magic"));
    }
    let body_crc = c.u32()?;
    let queue_id = c.i32()?;
    let flag = c.i32()?;
    let queue_offset = c.i64()?;
    let physical_offset = c.i64()?;
    let sys_flag = c.i32()?;
    let born_timestamp = c.i64()?;
    let born_host = c.host(sys_flag & SYSFLAG_BORNHOST_V6 != 0)?;
    let store_timestamp = c.i64()?;
    let store_host = c.host(sys_flag & SYSFLAG_STOREHOST_V6 != 0)?;
    let reconsume_times = c.i32()?;
    let prepared_tx_offset = c.i64()?;
    let body_len = c.i32()?;
    if body_len < 0 {
        return Err(MessageError::Malformed("negative body length"));
    }
    let body = c.take(body_len as usize)?;
    let topic_len = if magic == MAGIC_V2 {
        let b = c.take(2)?;
        u16::from_be_bytes([b[0], b[1]]) as usize
    } else {
        c.take(1)?[0] as usize
    };
    let topic = std::str::from_utf8(c.take(topic_len)?).map_err(|_| MessageError::Malformed("topic is not UTF-8"))?;
    let b = c.take(2)?;
    let prop_len = u16::from_be_bytes([b[0], b[1]]) as usize;
    let properties =
        std::str::from_utf8(c.take(prop_len)?).map_err(|_| MessageError::Malformed("properties are not UTF-8"))?;
    if c.pos != total_size {
        return Err(MessageError::Malformed("total size does not match fields"));
    }
    let record = Record {
        total_size,
        magic,
        body_crc,
        queue_id,
        flag,
        queue_offset,
        physical_offset,
        sys_flag,
        born_timestamp,
        born_host,
        store_timestamp,
        store_host,
        reconsume_times,
        prepared_tx_offset,
        body,
        topic,
        properties,
    };
    if check_crc && !record.crc_ok() {
        return Err(MessageError::Malformed("body CRC mismatch"));
    }
    Ok(record)
}

/// RocketMQ's offset message id: store host IPv4 (4) + port (4) + commit-log
/// offset (8), upper-case hex; IPv6 hosts use 16 address bytes (40 chars).
pub fn offset_msg_id(store_host: SocketAddr, physical_offset: u64) -> String {
    let mut bytes = Vec::with_capacity(28);
    match store_host.ip() {
        IpAddr::V4(ip) => bytes.extend_from_slice(&ip.octets()),
        IpAddr::V6(ip) => bytes.extend_from_slice(&ip.octets()),
    }
    bytes.extend_from_slice(&(store_host.port() as i32).to_be_bytes());
    bytes.extend_from_slice(&physical_offset.to_be_bytes());
    hex_upper(&bytes)
}

/// Upper-case hex of `bytes`, as RocketMQ's message ids and digests are
/// written: one allocation, no formatting machinery (a send answers with
/// two such ids).
pub fn hex_upper(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0x0f)] as char);
    }
    out
}

/// Parses an offset message id back into the store host and offset.
pub fn parse_offset_msg_id(id: &str) -> Option<(SocketAddr, u64)> {
    if !(id.len() == 32 || id.len() == 56) || !id.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..id.len()).step_by(2).map(|i| u8::from_str_radix(&id[i..i + 2], 16).ok()).collect();
    let bytes = bytes?;
    let ip_len = if bytes.len() == 16 { 4 } else { 16 };
    let ip: IpAddr = if ip_len == 4 {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).into()
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&bytes[..16]);
        Ipv6Addr::from(a).into()
    };
    let port = i32::from_be_bytes(bytes[ip_len..ip_len + 4].try_into().ok()?);
    let offset = u64::from_be_bytes(bytes[ip_len + 4..ip_len + 12].try_into().ok()?);
    Some((SocketAddr::new(ip, port as u16), offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hex_upper_matches_formatting_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        let want: String = all.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(hex_upper(&all), want);
        assert_eq!(hex_upper(&[]), "");
    }

    fn sample(topic: &str, body: &[u8], props: &str, v6: bool) -> NewMessage {
        let host: SocketAddr = if v6 { "[::1]:10911".parse().unwrap() } else { "127.0.0.1:10911".parse().unwrap() };
        NewMessage {
            topic: topic.to_string(),
            queue_id: 3,
            flag: 7,
            body: bytes::Bytes::copy_from_slice(body),
            properties: props.to_string(),
            sys_flag: 0,
            born_timestamp: 1_700_000_000_000,
            born_host: "10.0.0.1:5555".parse().unwrap(),
            store_host: host,
            reconsume_times: 2,
            prepared_tx_offset: 0,
        }
    }

    #[test]
    fn topic_rules() {
        assert!(validate_topic("Topic_A-1%|x").is_ok());
        assert_eq!(validate_topic(""), Err(MessageError::TopicEmpty));
        assert!(matches!(validate_topic("a b"), Err(MessageError::TopicIllegal { .. })));
        assert!(matches!(validate_topic("a/b"), Err(MessageError::TopicIllegal { .. })));
        assert!(validate_topic(&"a".repeat(127)).is_ok());
        assert_eq!(validate_topic(&"a".repeat(128)), Err(MessageError::TopicTooLong { len: 128 }));
    }

    #[test]
    fn java_hash_matches_known_values() {
        // Values of "TagA".hashCode() and "".hashCode() in Java.
        assert_eq!(java_string_hash("TagA"), 2_598_919);
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("hello world"), 1_794_106_052);
        assert_eq!(tags_code(None), 0);
    }

    #[test]
    fn record_layout_positions() {
        let props = encode_properties([(property::TAGS, "TagA"), (property::KEYS, "k1 k2")]).unwrap();
        let msg = sample("TopicTest", b"hello", &props, false);
        let mut buf = Vec::new();
        let slots = encode_record(&msg, 1024, &mut buf).unwrap();
        patch_record(&mut buf, slots, 42, 4096, 1_700_000_000_123);
        assert_eq!(slots.store_timestamp_pos, 56);
        assert_eq!(&buf[4..8], &MAGIC_V1.to_be_bytes());
        assert_eq!(probe(&buf), Probe::Record(buf.len()));
        let r = decode_record(&buf, true).unwrap();
        assert_eq!(r.queue_offset, 42);
        assert_eq!(r.physical_offset, 4096);
        assert_eq!(r.store_timestamp, 1_700_000_000_123);
        assert_eq!(r.topic, "TopicTest");
        assert_eq!(r.body, b"hello");
        assert_eq!(r.property(property::KEYS), Some("k1 k2"));
        assert_eq!(r.store_host, "127.0.0.1:10911".parse().unwrap());
    }

    #[test]
    fn refuses_bad_messages() {
        let mut buf = Vec::new();
        let big = sample("T", &[0u8; 100], "", false);
        assert_eq!(encode_record(&big, 99, &mut buf), Err(MessageError::BodyTooLarge { size: 100, max: 99 }));
        let bad_topic = sample("bad topic", b"x", "", false);
        assert!(matches!(encode_record(&bad_topic, 99, &mut buf), Err(MessageError::TopicIllegal { .. })));
        let long_value = "v".repeat(PROPERTIES_MAX_LEN);
        assert!(matches!(
            encode_properties([("k", long_value.as_str())]),
            Err(MessageError::PropertiesTooLarge { .. })
        ));
        assert!(matches!(encode_properties([("k", "a\u{1}b")]), Err(MessageError::PropertyIllegal { .. })));
    }

    #[test]
    fn decode_detects_damage() {
        let msg = sample("T", b"payload", "", false);
        let mut buf = Vec::new();
        encode_record(&msg, 1024, &mut buf).unwrap();
        let mut flipped = buf.clone();
        let body_at = buf.len() - 1 - 1 - 2 - 7;
        flipped[body_at] ^= 0xFF;
        assert_eq!(decode_record(&flipped, true), Err(MessageError::Malformed("body CRC mismatch")));
        for cut in 0..buf.len() {
            assert!(decode_record(&buf[..cut], true).is_err(), "prefix of {cut} bytes accepted");
        }
        assert_eq!(probe(&[0u8; 8]), Probe::End);
        assert_eq!(probe(&blank_marker(100)), Probe::Blank);
        assert_eq!(probe(&[1, 2, 3, 4, 5, 6, 7, 8]), Probe::Invalid);
    }

    #[test]
    fn offset_msg_id_round_trip() {
        let host: SocketAddr = "192.168.0.1:10911".parse().unwrap();
        let id = offset_msg_id(host, 0x1234);
        assert_eq!(id, "C0A8000100002A9F0000000000001234");
        assert_eq!(parse_offset_msg_id(&id), Some((host, 0x1234)));
        assert_eq!(parse_offset_msg_id("nothex"), None);
        let v6: SocketAddr = "[fe80::1]:9".parse().unwrap();
        assert_eq!(parse_offset_msg_id(&offset_msg_id(v6, 77)), Some((v6, 77)));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), check in any::<bool>()) {
            let _ = probe(&bytes);
            let _ = decode_record(&bytes, check);
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_offset_msg_id(&text);
            let _ = properties(&text).count();
        }

        #[test]
        fn damaged_records_never_panic(pos in 0usize..400, val in any::<u8>(), cut in 0usize..400) {
            let msg = sample("TopicDamage", &[9u8; 120], "KEYS\u{1}a b\u{2}", false);
            let mut buf = Vec::new();
            encode_record(&msg, 4096, &mut buf).unwrap();
            let pos = pos % buf.len();
            buf[pos] = val;
            buf.truncate(cut.max(1).min(buf.len()));
            if let Ok(r) = decode_record(&buf, true) {
                prop_assert!(r.total_size <= buf.len() && r.body.len() <= r.total_size);
            }
        }

        #[test]
        fn encode_decode_round_trip(topic in "[a-zA-Z0-9_%|-]{1,300}", body in proptest::collection::vec(any::<u8>(), 0..512),
                                    key in "[a-z]{1,8}", value in "[ -~]{0,40}", v6 in any::<bool>(), qoff in any::<i64>()) {
            let topic = &topic[..topic.len().min(TOPIC_MAX_LEN)];
            let props = encode_properties([(key.as_str(), value.as_str())]).unwrap();
            let msg = sample(topic, &body, &props, v6);
            let mut buf = Vec::new();
            let slots = encode_record(&msg, 4096, &mut buf).unwrap();
            patch_record(&mut buf, slots, qoff, 99, 5);
            let r = decode_record(&buf, true).unwrap();
            prop_assert_eq!(r.topic, topic);
            prop_assert_eq!(r.body, &body[..]);
            prop_assert_eq!(r.property(&key), Some(value.as_str()));
            prop_assert_eq!(r.queue_offset, qoff);
            prop_assert_eq!(r.store_host, msg.store_host);
        }

        /// The byte-wise split keeps upstream's reading of a properties
        /// string: split on the pair separator, keep pieces with a name
        /// separator, cut at the first. One pass finds what `property` finds.
        #[test]
        fn properties_split_as_upstream_reads_them(props in "[\\x00-\\x03AKEGSTYa=\\u{80}-\\u{10ffff}]{0,60}") {
            let by_chars: Vec<_> = props
                .split(PROPERTY_SEPARATOR)
                .filter_map(|pair| pair.split_once(NAME_VALUE_SEPARATOR))
                .collect();
            prop_assert_eq!(properties(&props).collect::<Vec<_>>(), by_chars);
            let keys = ["KEYS", "TAGS", "A", ""];
            let found = find_properties(&props, keys);
            for (key, value) in keys.iter().zip(found) {
                prop_assert_eq!(value, property(&props, key));
            }
        }

        /// One codec, one truth: whatever the append path encodes, recovery's
        /// full check accepts; and any client string, made canonical as the
        /// broker does, is encodable and keeps every pair upstream would keep.
        #[test]
        fn append_accepts_only_what_recovery_keeps(props in "[\\x00-\\x03a-zA-Z=/.\\u{80}-\\u{10ffff}]{0,60}",
                                                    body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = Vec::new();
            let raw = sample("T", &body, &props, false);
            match encode_record(&raw, 4096, &mut buf) {
                Ok(_) => prop_assert!(decode_record(&buf, true).is_ok()),
                Err(e) => prop_assert_eq!(e, MessageError::PropertiesUnterminated),
            }
            let canonical = canonical_properties(&props);
            prop_assert!(properties_terminated(&canonical));
            let kept: Vec<_> = properties(&props).collect();
            prop_assert_eq!(properties(&canonical).collect::<Vec<_>>(), kept);
            let msg = sample("T", &body, &canonical, false);
            encode_record(&msg, 4096, &mut buf).unwrap();
            prop_assert_eq!(decode_record(&buf, true).unwrap().properties, &*canonical);
        }
    }

    #[test]
    fn canonical_properties_drop_unpaired_pieces() {
        assert_eq!(canonical_properties("TAGS"), "");
        assert_eq!(canonical_properties("a\u{1}b"), "a\u{1}b\u{2}");
        assert_eq!(canonical_properties("x\u{2}a\u{1}b\u{2}"), "a\u{1}b\u{2}");
        assert!(matches!(canonical_properties("a\u{1}b\u{2}"), std::borrow::Cow::Borrowed(_)));
        assert!(matches!(canonical_properties(""), std::borrow::Cow::Borrowed(_)));
    }
}
