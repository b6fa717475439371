//! Request signatures, as RocketMQ's clients compute them.
//!
//! **Remoting** (ACL 1.0 and 2.0 alike): the signed content is the UTF-8 of
//! the *values* of every header field but `Signature`, in the order of their
//! keys compared as UTF-16 code units (Java's `TreeMap<String, _>`), followed
//! by the body. The signature is Base64 of HMAC-SHA1 keyed by the secret.
//! No time or nonce is signed, so a captured request can be replayed: the
//! threat model in the README says so.
//!
//! **gRPC** (RocketMQ 5's `MQv2-HMAC-SHA1`): the signature is the hex of
//! HMAC-SHA1 over the `x-mq-date-time` value exactly as sent.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

type HmacSha1 = Hmac<Sha1>;

/// Header field carrying the user name (RocketMQ's `SessionCredentials`).
pub const ACCESS_KEY: &str = "AccessKey";
/// Header field carrying the Base64 signature.
pub const SIGNATURE: &str = "Signature";
/// Optional header field carrying a session token; signed like any field.
pub const SECURITY_TOKEN: &str = "SecurityToken";
/// A field old clients added after signing (upstream drops it for requests
/// of version V4_9_3 and older when checking).
pub const UNIQUE_KEY_QUERY: &str = "_UNIQUE_KEY_QUERY";
/// Upstream's V4_9_3 ordinal: requests at or below it may carry an unsigned
/// [`UNIQUE_KEY_QUERY`].
pub const VERSION_V4_9_3: i32 = 399;

/// The header fields of one request in signing order, `Signature` left out
/// (and [`UNIQUE_KEY_QUERY`] for old clients that add it after signing).
pub fn signing_order<'a, I>(fields: I, request_version: i32) -> Vec<(&'a str, &'a str)>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut signed: Vec<(&str, &str)> = fields.into_iter().collect();
    order_for_signing(&mut signed, request_version);
    signed
}

/// [`signing_order`] in place.
pub fn order_for_signing(fields: &mut Vec<(&str, &str)>, request_version: i32) {
    fields.retain(|(k, _)| *k != SIGNATURE && !(*k == UNIQUE_KEY_QUERY && request_version <= VERSION_V4_9_3));
    // Below U+E000, UTF-16 code units order strings as code points do, and
    // so as UTF-8 bytes do; every such key starts with a byte below 0xEE.
    // Header keys are almost always ASCII: compare bytes then, by their
    // first eight at once (most keys differ there, many are one letter).
    if fields.iter().all(|(k, _)| k.is_ascii() || k.bytes().all(|b| b < 0xEE)) {
        fields.sort_unstable_by(|a, b| byte_prefix(a.0).cmp(&byte_prefix(b.0)).then_with(|| a.0.cmp(b.0)));
    } else {
        fields.sort_unstable_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    }
}

/// A key's first eight bytes as a big-endian number, zero-padded: two keys
/// whose numbers differ are ordered as their bytes are (a shorter key is
/// padded with zeros, which sort first, as a prefix does).
fn byte_prefix(key: &str) -> u64 {
    let bytes = key.as_bytes();
    match bytes.first_chunk::<8>() {
        Some(first) => u64::from_be_bytes(*first),
        None => bytes.iter().enumerate().fold(0, |p, (i, &b)| p | u64::from(b) << (56 - 8 * i)),
    }
}

/// A secret made ready for HMAC once (its inner and outer pads hashed), so
/// each request only hashes its own content. The secret is not kept.
#[derive(Clone)]
pub struct SigningKey(HmacSha1);

impl SigningKey {
    pub fn new(secret: &str) -> Self {
        // HMAC takes a key of any length: this cannot fail.
        SigningKey(<HmacSha1 as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!()))
    }

    /// HMAC-SHA1 over the values in this order, then the body. The short
    /// values are gathered into whole blocks on the stack first: one MAC
    /// update per field cost more than hashing them.
    fn remoting_mac(&self, ordered: &[(&str, &str)], body: &[u8]) -> HmacSha1 {
        let mut mac = self.0.clone();
        let mut gathered = [0u8; 512];
        let mut len = 0;
        for (_, v) in ordered {
            let v = v.as_bytes();
            if len + v.len() > gathered.len() {
                mac.update(&gathered[..len]);
                len = 0;
            }
            if v.len() > gathered.len() {
                mac.update(v);
            } else {
                gathered[len..len + v.len()].copy_from_slice(v);
                len += v.len();
            }
        }
        mac.update(&gathered[..len]);
        mac.update(body);
        mac
    }

    /// The Base64 signature a client puts in `Signature`.
    pub fn remoting_signature<'a, I>(&self, fields: I, body: &[u8]) -> String
    where
        I: IntoIterator<Item = (&'a str, &'a str)>,
    {
        let ordered = signing_order(fields, i32::MAX);
        let tag = self.remoting_mac(&ordered, body).finalize().into_bytes();
        base64::engine::general_purpose::STANDARD.encode(tag)
    }

    /// Whether `signature` (Base64, as received) signs these fields and
    /// body; the fields are reordered in place. The comparison takes the
    /// same time wherever the bytes differ.
    pub fn verify_remoting(
        &self,
        fields: &mut Vec<(&str, &str)>,
        body: &[u8],
        request_version: i32,
        signature: &str,
    ) -> bool {
        // An HMAC-SHA1 tag is 20 bytes; anything that decodes longer is wrong.
        let mut claimed = [0u8; 32];
        let Ok(n) = base64::engine::general_purpose::STANDARD.decode_slice(signature.trim(), &mut claimed) else {
            return false;
        };
        order_for_signing(fields, request_version);
        self.remoting_mac(fields, body).verify_slice(&claimed[..n]).is_ok()
    }

    /// Whether an MQv2 signature signs `date_time` (the `x-mq-date-time`
    /// value exactly as sent); constant-time.
    pub fn verify_mqv2(&self, date_time: &str, signature: &[u8]) -> bool {
        let mut mac = self.0.clone();
        mac.update(date_time.as_bytes());
        mac.verify_slice(signature).is_ok()
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// The Base64 signature a client puts in `Signature`.
pub fn remoting_signature<'a, I>(secret: &str, fields: I, body: &[u8]) -> String
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    SigningKey::new(secret).remoting_signature(fields, body)
}

/// Whether `signature` (Base64, as received) signs these fields and body
/// with `secret`. The comparison takes the same time wherever the bytes
/// differ.
pub fn verify_remoting<'a, I>(secret: &str, fields: I, body: &[u8], request_version: i32, signature: &str) -> bool
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    let mut fields: Vec<(&str, &str)> = fields.into_iter().collect();
    SigningKey::new(secret).verify_remoting(&mut fields, body, request_version, signature)
}

/// The parts of a gRPC `authorization` header:
/// `MQv2-HMAC-SHA1 Credential=<AK>[/...], SignedHeaders=x-mq-date-time, Signature=<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mqv2Authorization {
    pub access_key: String,
    pub signature: Vec<u8>,
}

/// The algorithm name that opens an MQv2 `authorization` header.
pub const MQV2_ALGORITHM: &str = "MQv2-HMAC-SHA1";

/// Parses an MQv2 `authorization` header; `None` when it is not one.
pub fn parse_mqv2_authorization(header: &str) -> Option<Mqv2Authorization> {
    let rest = header.trim().strip_prefix(MQV2_ALGORITHM)?.trim_start();
    let mut access_key = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k.trim() {
            // Older Java sends AK/region/service, Go and C++ AK//Rocketmq.
            "Credential" => access_key = v.split('/').next().map(|s| s.trim().to_string()),
            "Signature" => signature = decode_hex(v.trim()),
            _ => {}
        }
    }
    Some(Mqv2Authorization { access_key: access_key.filter(|a| !a.is_empty())?, signature: signature? })
}

/// Whether an MQv2 signature signs `date_time` (the `x-mq-date-time` value
/// exactly as sent) with `secret`; constant-time.
pub fn verify_mqv2(secret: &str, date_time: &str, signature: &[u8]) -> bool {
    SigningKey::new(secret).verify_mqv2(date_time, signature)
}

/// Lower-case hex of an MQv2 signature, as clients send it.
pub fn mqv2_signature_hex(secret: &str, date_time: &str) -> String {
    let mut mac = <HmacSha1 as Mac>::new_from_slice(secret.as_bytes()).unwrap_or_else(|_| unreachable!());
    mac.update(date_time.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vector_from_the_java_client() {
        let fields = [("a", "first"), ("z", "last"), (ACCESS_KEY, "ak"), (SECURITY_TOKEN, "token")];
        let sig = remoting_signature("secret", fields, b"body");
        assert_eq!(sig, "wuJkFDNRMKY6aFXTDwT/vg0UC8M=");
        assert!(verify_remoting("secret", fields, b"body", 0, &sig));
    }

    #[test]
    fn the_signature_field_itself_is_not_signed_and_any_change_breaks_it() {
        let fields = [("a", "first"), (ACCESS_KEY, "ak")];
        let sig = remoting_signature("secret", fields, b"");
        let with_sig = [("a", "first"), (ACCESS_KEY, "ak"), (SIGNATURE, sig.as_str())];
        assert!(verify_remoting("secret", with_sig, b"", 0, &sig));
        assert!(!verify_remoting("secret", [("a", "firsT"), (ACCESS_KEY, "ak")], b"", 0, &sig));
        assert!(!verify_remoting("secret", fields, b"x", 0, &sig));
        assert!(!verify_remoting("Secret", fields, b"", 0, &sig));
        assert!(!verify_remoting(
            "secret",
            [("a", "first"), (ACCESS_KEY, "ak"), ("OnsChannel", "ALIYUN")],
            b"",
            0,
            &sig
        ));
        assert!(!verify_remoting("secret", fields, b"", 0, "not base64!"));
    }

    #[test]
    fn keys_sort_as_utf16_code_units() {
        // U+1F600 is the surrogate pair D83D DE00, so in UTF-16 it sorts
        // before U+FF21; in UTF-8 byte order it would sort after.
        let order = signing_order([("\u{1F600}", "smile"), ("\u{FF21}", "wide"), ("B", "b")], 0);
        let keys: Vec<_> = order.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["B", "\u{1F600}", "\u{FF21}"]);
        // Below U+E000 the byte order is the same, and taken.
        let order = signing_order([("\u{00E9}", "e"), ("z", "z"), ("\u{4E2D}", "zh"), ("A", "a")], 0);
        let keys: Vec<_> = order.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, ["A", "z", "\u{00E9}", "\u{4E2D}"]);
    }

    #[test]
    fn keys_that_share_or_end_within_eight_bytes_sort_as_bytes() {
        let keys =
            ["bornTimestamp", "born", "bornTimestampX", "a", "a\u{0}", "", "defaultTopicQueueNums", "defaultTopic"];
        let order = signing_order(keys.iter().map(|k| (*k, "v")), 0);
        let got: Vec<_> = order.iter().map(|(k, _)| *k).collect();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn old_clients_may_add_the_unique_key_query_after_signing() {
        let sig = remoting_signature("s", [(ACCESS_KEY, "ak")], b"");
        let fields = [(ACCESS_KEY, "ak"), (UNIQUE_KEY_QUERY, "x")];
        assert!(verify_remoting("s", fields, b"", VERSION_V4_9_3, &sig));
        assert!(!verify_remoting("s", fields, b"", VERSION_V4_9_3 + 1, &sig));
    }

    #[test]
    fn mqv2_header_round_trip() {
        let hex = mqv2_signature_hex("sk", "20261205T120000Z");
        let header = format!(
            "MQv2-HMAC-SHA1 Credential=ak//Rocketmq, SignedHeaders=x-mq-date-time, Signature={}",
            hex.to_uppercase()
        );
        let parsed = parse_mqv2_authorization(&header).unwrap();
        assert_eq!(parsed.access_key, "ak");
        assert!(verify_mqv2("sk", "20261205T120000Z", &parsed.signature));
        assert!(!verify_mqv2("sk", "20261205T120001Z", &parsed.signature));
        assert_eq!(parse_mqv2_authorization("Basic abc"), None);
        assert_eq!(parse_mqv2_authorization("MQv2-HMAC-SHA1 Credential=, Signature=00"), None);
        assert_eq!(parse_mqv2_authorization("MQv2-HMAC-SHA1 Credential=a, Signature=0g"), None);
    }
}
