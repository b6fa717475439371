//! `RemotingCommand`: one request or response, and its two header encodings.
//!
//! Frame layout (all integers big-endian):
//! `total_len i32 | (serialize_type << 24 | header_len) i32 | header | body`,
//! where `total_len` counts everything after itself.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::Value;

use crate::code::{response, LanguageCode};
use crate::error::{BadHeader, FrameError, HeaderError};

/// Flag bit 0: this command is a response.
pub const FLAG_RESPONSE: i32 = 1;
/// Flag bit 1: the sender expects no response.
pub const FLAG_ONEWAY: i32 = 1 << 1;
/// The header length shares its field with the serialize type: 24 bits.
const HEADER_LEN_MAX: usize = 0x00FF_FFFF;
/// The protocol version Spate announces (upstream's V4_9_4 ordinal); peers ignore it.
pub const SPATE_VERSION: i32 = 435;

/// How the header is serialized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerializeType {
    Json = 0,
    RocketMq = 1,
}

/// A command's custom header fields. Keys come from peers, so the hash is
/// keyed at random per process (no chosen collisions), as std's is, but
/// several times cheaper on short keys.
pub type ExtFields = HashMap<String, String, ahash::RandomState>;

/// One request or response.
#[derive(Debug, Clone, PartialEq)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: LanguageCode,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    /// The command's custom header fields (`extFields`).
    pub ext_fields: ExtFields,
    /// The header encoding; a response is sent in its request's encoding.
    pub serialize_type: SerializeType,
    pub body: Bytes,
    /// When a server read this request off its connection (not on the
    /// wire): the broker's fast-fail back-pressure counts queueing from here.
    pub received_at: Option<std::time::Instant>,
}

impl RemotingCommand {
    /// A new request; the connection assigns `opaque` when it is sent.
    pub fn request(code: i32) -> Self {
        RemotingCommand {
            code,
            language: LanguageCode::Rust,
            version: SPATE_VERSION,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: ExtFields::with_capacity_and_hasher(TYPICAL_FIELDS, Default::default()),
            serialize_type: SerializeType::Json,
            body: Bytes::new(),
            received_at: None,
        }
    }

    /// A response to `req`: same opaque, same header encoding.
    pub fn response_to(req: &RemotingCommand, code: i32, remark: impl Into<Option<String>>) -> Self {
        RemotingCommand {
            code,
            language: LanguageCode::Rust,
            version: SPATE_VERSION,
            opaque: req.opaque,
            flag: FLAG_RESPONSE,
            remark: remark.into(),
            ext_fields: ExtFields::default(),
            serialize_type: req.serialize_type,
            body: Bytes::new(),
            received_at: None,
        }
    }

    /// A SUCCESS response to `req`.
    pub fn success(req: &RemotingCommand) -> Self {
        Self::response_to(req, response::SUCCESS, None)
    }

    /// An error response to `req` with a remark saying why.
    pub fn error(req: &RemotingCommand, code: i32, remark: impl Into<String>) -> Self {
        Self::response_to(req, code, Some(remark.into()))
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }

    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }

    pub fn mark_oneway(mut self) -> Self {
        self.flag |= FLAG_ONEWAY;
        self
    }

    /// Sets one header field.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.ext_fields.insert(key.to_string(), value.to_string());
        self
    }

    /// Sets one header field when `value` is present.
    pub fn with_opt(self, key: &str, value: Option<impl ToString>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    pub fn with_body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    pub fn with_remark(mut self, remark: impl Into<String>) -> Self {
        self.remark = Some(remark.into());
        self
    }

    /// A header field, if present.
    pub fn field(&self, key: &str) -> Option<&str> {
        self.ext_fields.get(key).map(String::as_str)
    }

    /// A required string field.
    pub fn str_field(&self, key: &str) -> Result<&str, HeaderError> {
        self.field(key).ok_or_else(|| HeaderError::Missing(key.to_string()))
    }

    /// A required integer field; accepts surrounding spaces.
    pub fn i64_field(&self, key: &str) -> Result<i64, HeaderError> {
        parse_i64(key, self.str_field(key)?)
    }

    /// A required `i32` field.
    pub fn i32_field(&self, key: &str) -> Result<i32, HeaderError> {
        let v = self.i64_field(key)?;
        i32::try_from(v).map_err(|_| HeaderError::Invalid(key.to_string(), v.to_string()))
    }

    /// An optional integer field: missing or empty is `None`, garbage is an error.
    pub fn opt_i64_field(&self, key: &str) -> Result<Option<i64>, HeaderError> {
        match self.field(key).map(str::trim) {
            None | Some("") | Some("null") => Ok(None),
            Some(v) => parse_i64(key, v).map(Some),
        }
    }

    /// An optional `i32` field.
    pub fn opt_i32_field(&self, key: &str) -> Result<Option<i32>, HeaderError> {
        match self.opt_i64_field(key)? {
            None => Ok(None),
            Some(v) => i32::try_from(v).map(Some).map_err(|_| HeaderError::Invalid(key.to_string(), v.to_string())),
        }
    }

    /// An optional boolean field; accepts `true`/`false` in any case and `1`/`0`.
    pub fn opt_bool_field(&self, key: &str) -> Result<Option<bool>, HeaderError> {
        match self.field(key).map(str::trim) {
            None | Some("") | Some("null") => Ok(None),
            Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => Ok(Some(true)),
            Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => Ok(Some(false)),
            Some(v) => Err(HeaderError::Invalid(key.to_string(), v.to_string())),
        }
    }

    /// Encodes the whole frame, length prefix included.
    pub fn encode(&self, dst: &mut BytesMut) {
        // The binary header holds `code` and `version` in 16 bits and keys
        // in 16-bit lengths; a command that does not fit goes as JSON
        // (peers read either) rather than with a wrapped value.
        let serialize_type = match self.serialize_type {
            SerializeType::RocketMq if self.fits_binary_header() => SerializeType::RocketMq,
            _ => SerializeType::Json,
        };
        let header = match serialize_type {
            SerializeType::Json => self.encode_json_header(),
            SerializeType::RocketMq => self.encode_binary_header(),
        };
        debug_assert!(header.len() <= HEADER_LEN_MAX, "a header of {} bytes does not fit 24 bits", header.len());
        let total = 4 + header.len() + self.body.len();
        debug_assert!(total <= i32::MAX as usize, "a frame of {total} bytes does not fit its length field");
        dst.reserve(4 + total);
        dst.put_i32(total as i32);
        dst.put_i32(((serialize_type as i32) << 24) | header.len() as i32);
        dst.put_slice(&header);
        dst.put_slice(&self.body);
    }

    /// Whether every field fits the binary header's widths.
    fn fits_binary_header(&self) -> bool {
        i16::try_from(self.code).is_ok()
            && i16::try_from(self.version).is_ok()
            && self.remark.as_ref().is_none_or(|r| i32::try_from(r.len()).is_ok())
            && self.ext_fields.keys().all(|k| i16::try_from(k.len()).is_ok())
    }

    /// Encodes into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(&mut b);
        b.freeze()
    }

    /// Decodes one frame without its leading `total_len` (the codec strips
    /// it). The outer error is a frame that cannot be read at all (its
    /// connection must close); the inner one a whole frame whose header
    /// fields do not fit their types (the request can be answered).
    pub fn decode(frame: Bytes) -> Result<Result<RemotingCommand, BadHeader>, FrameError> {
        if frame.len() < 4 {
            return Err(FrameError::Malformed("frame shorter than its header length field".into()));
        }
        let meta = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let kind = (meta >> 24) & 0xFF;
        let header_len = (meta & 0x00FF_FFFF) as usize;
        if 4 + header_len > frame.len() {
            return Err(FrameError::Malformed(format!(
                "header length {header_len} exceeds frame length {}",
                frame.len()
            )));
        }
        let header = &frame[4..4 + header_len];
        let mut cmd = match kind {
            0 => match decode_json_header(header)? {
                Ok(cmd) => cmd,
                Err(bad) => return Ok(Err(bad)),
            },
            1 => decode_binary_header(header)?,
            other => return Err(FrameError::Malformed(format!("unknown header serialize type {other}"))),
        };
        cmd.body = frame.slice(4 + header_len..);
        Ok(Ok(cmd))
    }

    /// Writes the JSON header directly (no intermediate map): this runs
    /// for every request and response.
    fn encode_json_header(&self) -> Vec<u8> {
        use std::io::Write;
        let mut b = Vec::with_capacity(128 + self.ext_fields.len() * 32);
        let _ = write!(
            b,
            "{{\"code\":{},\"language\":\"{}\",\"version\":{},\"opaque\":{},\"flag\":{}",
            self.code,
            self.language.name(),
            self.version,
            self.opaque,
            self.flag
        );
        if let Some(r) = &self.remark {
            b.extend_from_slice(b",\"remark\":");
            let _ = serde_json::to_writer(&mut b, r);
        }
        if !self.ext_fields.is_empty() {
            b.extend_from_slice(b",\"extFields\":{");
            for (i, (k, v)) in self.ext_fields.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                let _ = serde_json::to_writer(&mut b, k);
                b.push(b':');
                let _ = serde_json::to_writer(&mut b, v);
            }
            b.push(b'}');
        }
        b.extend_from_slice(b",\"serializeTypeCurrentRPC\":\"JSON\"}");
        b
    }

    /// Only for commands that pass [`Self::fits_binary_header`].
    fn encode_binary_header(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64);
        b.put_i16(i16::try_from(self.code).unwrap_or(i16::MAX));
        b.put_u8(self.language.code());
        b.put_i16(i16::try_from(self.version).unwrap_or(i16::MAX));
        b.put_i32(self.opaque);
        b.put_i32(self.flag);
        match &self.remark {
            Some(r) => {
                b.put_i32(i32::try_from(r.len()).unwrap_or(i32::MAX));
                b.put_slice(r.as_bytes());
            }
            None => b.put_i32(0),
        }
        let mut ext = Vec::new();
        for (k, v) in &self.ext_fields {
            ext.put_i16(i16::try_from(k.len()).unwrap_or(i16::MAX));
            ext.put_slice(k.as_bytes());
            ext.put_i32(i32::try_from(v.len()).unwrap_or(i32::MAX));
            ext.put_slice(v.as_bytes());
        }
        b.put_i32(i32::try_from(ext.len()).unwrap_or(i32::MAX));
        b.put_slice(&ext);
        b
    }
}

impl BadHeader {
    /// The error answer to the request that carried this header: only when
    /// its `opaque` and `flag` were readable and say it is a request that
    /// wants an answer. `None`: nothing can be answered (close instead, or
    /// ignore a one-way request or a response).
    pub fn answer(&self) -> Option<RemotingCommand> {
        let (opaque, flag) = (self.opaque?, self.flag?);
        if flag & (FLAG_RESPONSE | FLAG_ONEWAY) != 0 {
            return None;
        }
        let mut r = RemotingCommand::request(response::SYSTEM_ERROR);
        r.flag = FLAG_RESPONSE;
        r.opaque = opaque;
        r.serialize_type = self.serialize_type;
        r.remark = Some(self.reason.clone());
        Some(r)
    }
}

fn parse_i64(key: &str, v: &str) -> Result<i64, HeaderError> {
    v.trim().parse::<i64>().map_err(|_| HeaderError::Invalid(key.to_string(), v.to_string()))
}

/// Reads a numeric header field leniently in form (peers send numbers
/// where others send strings; absent or null is upstream's 0) but strictly
/// in range: a value that is not an `i32` is refused, never wrapped.
fn json_i32(field: &str, v: Option<&Value>) -> Result<i32, String> {
    let bad =
        |v: &dyn std::fmt::Display| format!("header field `{field}` has invalid value `{v}`: not a 32-bit integer");
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(|| bad(n)),
        Some(Value::String(s)) => s.trim().parse::<i32>().map_err(|_| bad(s)),
        Some(other) => Err(bad(other)),
    }
}

/// The JSON header as peers send it. Fields are read leniently: numbers
/// may come as strings and strings as numbers; every field may be absent.
#[derive(serde::Deserialize)]
struct JsonHeader {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    language: Option<Value>,
    #[serde(default)]
    version: Option<Value>,
    #[serde(default)]
    opaque: Option<Value>,
    #[serde(default)]
    flag: Option<Value>,
    #[serde(default)]
    remark: Option<FieldValue>,
    #[serde(default, rename = "extFields")]
    ext_fields: Option<FieldMap>,
}

/// Header fields a request usually carries (a V2 send: 14, signed: 16);
/// maps start this large so that decoding or building one never rehashes.
const TYPICAL_FIELDS: usize = 16;

/// `extFields` read straight into the command's map: each value as the
/// string a Java peer's `toString()` gives (numbers and booleans as JSON
/// writes them, nested JSON as its text), `null` dropped. No intermediate
/// `Value` map: this runs for every request and response.
struct FieldMap(ExtFields);

impl<'de> serde::Deserialize<'de> for FieldMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor;
        impl<'de> serde::de::Visitor<'de> for MapVisitor {
            type Value = FieldMap;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a map of header fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<FieldMap, A::Error> {
                let mut fields = ExtFields::with_capacity_and_hasher(
                    map.size_hint().unwrap_or(0).max(TYPICAL_FIELDS),
                    Default::default(),
                );
                while let Some((k, FieldValue(v))) = map.next_entry::<String, FieldValue>()? {
                    match v {
                        Some(v) => fields.insert(k, v),
                        // A repeated key keeps its last value; a last null
                        // leaves the field absent.
                        None => fields.remove(&k),
                    };
                }
                Ok(FieldMap(fields))
            }
        }
        d.deserialize_map(MapVisitor)
    }
}

/// One header value (in `extFields`, or the remark) as a string; `None`
/// for JSON `null`.
struct FieldValue(Option<String>);

impl<'de> serde::Deserialize<'de> for FieldValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> serde::de::Visitor<'de> for ValueVisitor {
            type Value = FieldValue;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a header field value")
            }
            fn visit_str<E>(self, v: &str) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<FieldValue, E> {
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<FieldValue, E> {
                // As a JSON value prints it (1.0 stays "1.0").
                Ok(FieldValue(Some(Value::from(v).to_string())))
            }
            fn visit_unit<E>(self) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_none<E>(self) -> Result<FieldValue, E> {
                Ok(FieldValue(None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<FieldValue, A::Error> {
                let v: Value = serde::Deserialize::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
                Ok(FieldValue(Some(v.to_string())))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<FieldValue, A::Error> {
                let v: Value = serde::Deserialize::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(FieldValue(Some(v.to_string())))
            }
        }
        d.deserialize_any(ValueVisitor)
    }
}

/// The outer error: the header is not JSON (the connection closes). The
/// inner one: a numeric field out of range, with the opaque and flag when
/// they were readable, so the request can be answered.
fn decode_json_header(header: &[u8]) -> Result<Result<RemotingCommand, BadHeader>, FrameError> {
    let h: JsonHeader = serde_json::from_slice(header)
        .map_err(|e| FrameError::Malformed(format!("JSON header does not parse: {e}")))?;
    let code = json_i32("code", h.code.as_ref());
    let version = json_i32("version", h.version.as_ref());
    let opaque = json_i32("opaque", h.opaque.as_ref());
    let flag = json_i32("flag", h.flag.as_ref());
    let (Ok(code), Ok(version), Ok(&opaque_ok), Ok(&flag_ok)) = (&code, &version, opaque.as_ref(), flag.as_ref())
    else {
        let reason = [&code, &version, &opaque, &flag].into_iter().find_map(|r| r.as_ref().err()).cloned();
        return Ok(Err(BadHeader {
            reason: reason.unwrap_or_default(),
            opaque: opaque.ok(),
            flag: flag.ok(),
            serialize_type: SerializeType::Json,
        }));
    };
    let (code, version, opaque, flag) = (*code, *version, opaque_ok, flag_ok);
    let language = match &h.language {
        Some(Value::String(s)) => LanguageCode::from_name(s),
        Some(Value::Number(n)) => {
            n.as_u64().and_then(|c| u8::try_from(c).ok()).map_or(LanguageCode::Other, LanguageCode::from_code)
        }
        _ => LanguageCode::Other,
    };
    let ext_fields = h.ext_fields.map(|f| f.0).unwrap_or_default();
    Ok(Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark: h.remark.and_then(|r| r.0),
        ext_fields,
        serialize_type: SerializeType::Json,
        body: Bytes::new(),
        received_at: None,
    }))
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Malformed(format!("binary header truncated in {what}")));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn i16(&mut self, what: &str) -> Result<i16, FrameError> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32, FrameError> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn string(&mut self, len: i64, what: &str) -> Result<String, FrameError> {
        if len < 0 {
            return Err(FrameError::Malformed(format!("negative length in {what}")));
        }
        let b = self.take(len as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Malformed(format!("{what} is not UTF-8")))
    }
}

fn decode_binary_header(header: &[u8]) -> Result<RemotingCommand, FrameError> {
    let mut r = Reader { buf: header };
    let code = r.i16("code")? as i32;
    let language = LanguageCode::from_code(r.take(1, "language")?[0]);
    let version = r.i16("version")? as i32;
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let remark_len = r.i32("remark length")?;
    let remark = if remark_len > 0 { Some(r.string(remark_len as i64, "remark")?) } else { None };
    let ext_len = r.i32("extFields length")?;
    if ext_len < 0 {
        return Err(FrameError::Malformed("negative extFields length".into()));
    }
    let mut ext = Reader { buf: r.take(ext_len as usize, "extFields")? };
    let mut ext_fields = ExtFields::with_capacity_and_hasher(TYPICAL_FIELDS, Default::default());
    while !ext.buf.is_empty() {
        let klen = ext.i16("extFields key length")?;
        let key = ext.string(klen as i64, "extFields key")?;
        let vlen = ext.i32("extFields value length")?;
        let val = ext.string(vlen as i64, "extFields value")?;
        ext_fields.insert(key, val);
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        serialize_type: SerializeType::RocketMq,
        body: Bytes::new(),
        received_at: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(cmd: &RemotingCommand) -> RemotingCommand {
        let frame = cmd.to_bytes();
        let total = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
        assert_eq!(total, frame.len() - 4);
        RemotingCommand::decode(frame.slice(4..)).expect("own frame decodes").expect("own header fits")
    }

    #[test]
    fn json_header_accepts_numbers_and_missing_optional_fields() {
        let header = br#"{"code":10,"language":"GO","opaque":7,"flag":0,"extFields":{"queueId":3,"batch":false,"topic":"T","x":null}}"#;
        let mut frame = BytesMut::new();
        frame.put_i32(header.len() as i32);
        frame.put_slice(header);
        frame.put_slice(b"body");
        let cmd = RemotingCommand::decode(frame.freeze()).unwrap().unwrap();
        assert_eq!(cmd.code, 10);
        assert_eq!(cmd.language, LanguageCode::Go);
        assert_eq!(cmd.i32_field("queueId").unwrap(), 3);
        assert_eq!(cmd.opt_bool_field("batch").unwrap(), Some(false));
        assert_eq!(cmd.field("x"), None);
        assert_eq!(cmd.remark, None);
        assert_eq!(&cmd.body[..], b"body");
    }

    #[test]
    fn json_header_fields_read_as_the_strings_a_java_peer_would_see() {
        let header = r#"{"code":10,"opaque":1,"flag":0,"extFields":{"n":-12,"big":18446744073709551615,"f":1.0,
            "t":true,"o":{"a":[1,"x"]},"l":[],"s":"caf\u00e9","dup":"first","dup":"second","gone":"x","gone":null}}"#;
        let cmd = RemotingCommand::decode(json_frame(header)).unwrap().unwrap();
        let got = |k: &str| cmd.field(k).map(str::to_string);
        assert_eq!(got("n").as_deref(), Some("-12"));
        assert_eq!(got("big").as_deref(), Some("18446744073709551615"));
        assert_eq!(got("f").as_deref(), Some("1.0"));
        assert_eq!(got("t").as_deref(), Some("true"));
        assert_eq!(got("o").as_deref(), Some(r#"{"a":[1,"x"]}"#));
        assert_eq!(got("l").as_deref(), Some("[]"));
        assert_eq!(got("s").as_deref(), Some("café"));
        assert_eq!(got("dup").as_deref(), Some("second"), "a repeated key keeps its last value");
        assert_eq!(got("gone"), None, "a later null removes the field");
        assert_eq!(cmd.ext_fields.len(), 8);
        // Not a map, or a map with a non-string key: the header does not parse.
        for bad in [r#"{"code":10,"extFields":[1]}"#, r#"{"code":10,"extFields":"x"}"#] {
            assert!(RemotingCommand::decode(json_frame(bad)).is_err(), "{bad}");
        }
    }

    fn json_frame(header: &str) -> Bytes {
        let mut frame = BytesMut::new();
        frame.put_i32(header.len() as i32);
        frame.put_slice(header.as_bytes());
        frame.freeze()
    }

    #[test]
    fn out_of_range_numeric_header_fields_are_refused_not_wrapped() {
        for (field, value) in [
            ("code", "2147483648"),
            ("code", "-2147483649"),
            ("code", "\"4294967296\""),
            ("code", "1.5"),
            ("version", "9223372036854775808"),
            ("flag", "2147483648"),
        ] {
            let mut fields = vec![("code", "10"), ("opaque", "7"), ("flag", "0"), ("version", "1")];
            fields.retain(|(k, _)| *k != field);
            fields.push((field, value));
            let body: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            let header = format!("{{{}}}", body.join(","));
            let bad = RemotingCommand::decode(json_frame(&header)).expect("the frame is whole").unwrap_err();
            assert!(bad.reason.contains(field), "{field}={value}: {}", bad.reason);
            if field == "flag" {
                assert_eq!(bad.answer(), None, "without a flag nobody knows whether an answer is wanted");
            } else {
                let answer = bad.answer().expect("a request with a readable opaque is answered");
                assert_eq!((answer.opaque, answer.code, answer.is_response()), (7, response::SYSTEM_ERROR, true));
            }
        }
        // The largest values that fit still decode.
        let cmd = RemotingCommand::decode(json_frame(r#"{"code":2147483647,"opaque":-2147483648,"flag":0}"#))
            .unwrap()
            .unwrap();
        assert_eq!((cmd.code, cmd.opaque), (i32::MAX, i32::MIN));
        // An unreadable opaque cannot be answered: the connection closes.
        let bad =
            RemotingCommand::decode(json_frame(r#"{"code":10,"opaque":4294967297,"flag":0}"#)).unwrap().unwrap_err();
        assert_eq!(bad.opaque, None);
        assert_eq!(bad.answer(), None);
        // A one-way request is not answered.
        let bad =
            RemotingCommand::decode(json_frame(r#"{"code":2147483648,"opaque":3,"flag":2}"#)).unwrap().unwrap_err();
        assert_eq!(bad.answer(), None);
    }

    #[test]
    fn typed_getters_refuse_out_of_range_values() {
        let cmd = RemotingCommand::request(10)
            .with("a", "2147483648")
            .with("b", "9223372036854775808")
            .with("c", " -2147483648 ");
        assert!(cmd.i32_field("a").is_err());
        assert!(cmd.opt_i32_field("a").is_err());
        assert_eq!(cmd.i64_field("a").unwrap(), 2_147_483_648);
        assert!(cmd.i64_field("b").is_err());
        assert!(cmd.opt_i64_field("b").is_err());
        assert_eq!(cmd.i32_field("c").unwrap(), i32::MIN);
    }

    #[test]
    fn a_command_too_wide_for_the_binary_header_goes_as_json() {
        let mut cmd = RemotingCommand::request(200_050).with("k", "v");
        cmd.serialize_type = SerializeType::RocketMq;
        let frame = cmd.to_bytes();
        assert_eq!(frame[4], SerializeType::Json as u8, "200050 does not fit 16 bits");
        let back = RemotingCommand::decode(frame.slice(4..)).unwrap().unwrap();
        assert_eq!(back.code, 200_050);
    }

    #[test]
    fn header_field_errors_name_the_field() {
        let cmd = RemotingCommand::request(10).with("queueId", "abc");
        assert_eq!(cmd.i32_field("queueId").unwrap_err().to_string(), "header field `queueId` has invalid value `abc`");
        assert_eq!(cmd.str_field("topic").unwrap_err().to_string(), "header field `topic` is missing");
    }

    #[test]
    fn binary_header_matches_upstream_layout() {
        let cmd = RemotingCommand {
            serialize_type: SerializeType::RocketMq,
            ..RemotingCommand::request(105).with("topic", "T")
        };
        let frame = cmd.to_bytes();
        // meta: type 1 in the top byte
        assert_eq!(frame[4], 1);
        let h = &frame[8..];
        assert_eq!(&h[0..2], &105i16.to_be_bytes());
        assert_eq!(h[2], LanguageCode::Rust.code());
        // remark length 0, then extFields length 2+5+4+1
        assert_eq!(&h[13..17], &0i32.to_be_bytes());
        assert_eq!(&h[17..21], &12i32.to_be_bytes());
        assert_eq!(&h[21..23], &5i16.to_be_bytes());
        assert_eq!(&h[23..28], b"topic");
    }

    #[test]
    fn truncated_binary_header_is_an_error() {
        let cmd = RemotingCommand {
            serialize_type: SerializeType::RocketMq,
            ..RemotingCommand::request(105).with("topic", "T").with_remark("hello")
        };
        let frame = cmd.to_bytes().slice(4..);
        let header_len = (i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) & 0xFFFFFF) as usize;
        for cut in 0..header_len {
            let mut f = BytesMut::new();
            f.put_i32((1 << 24) | cut as i32);
            f.put_slice(&frame[4..4 + cut]);
            assert!(RemotingCommand::decode(f.freeze()).is_err(), "cut at {cut}");
        }
    }

    fn arb_cmd() -> impl Strategy<Value = RemotingCommand> {
        (
            any::<i16>(),
            0u8..14,
            any::<i16>(),
            any::<i32>(),
            0i32..4,
            proptest::option::of("[ -~é]{1,20}"),
            proptest::collection::hash_map("[a-zA-Z]{1,8}", "[ -~]{0,12}", 0..6),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(code, lang, version, opaque, flag, remark, ext, binary, body)| RemotingCommand {
                code: code as i32,
                language: LanguageCode::from_code(lang),
                version: version as i32,
                opaque,
                flag,
                remark,
                ext_fields: ext.into_iter().collect(),
                serialize_type: if binary { SerializeType::RocketMq } else { SerializeType::Json },
                body: Bytes::from(body),
                received_at: None,
            })
    }

    proptest! {
        #[test]
        fn both_header_encodings_round_trip(cmd in arb_cmd()) {
            prop_assert_eq!(roundtrip(&cmd), cmd);
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = RemotingCommand::decode(Bytes::from(data));
        }
    }
}
