//! Errors of the remoting layer.

use std::io;

/// A frame that cannot be read; the connection that sent it is closed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max} (frameMaxLength)")]
    TooLarge { len: i64, max: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A whole frame whose header fields do not fit their types (a numeric
/// field out of range). Unlike a [`FrameError`], the stream is still in
/// step: the request is answered with an error when its `opaque` and
/// `flag` were readable, and only otherwise is the connection closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad header: {reason}")]
pub struct BadHeader {
    /// Which field and why.
    pub reason: String,
    /// The request's `opaque`, when it was readable.
    pub opaque: Option<i32>,
    /// The request's `flag`, when it was readable.
    pub flag: Option<i32>,
    /// The header's encoding, for the answer.
    pub serialize_type: crate::command::SerializeType,
}

/// A request header field that is missing or does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header field `{0}` is missing")]
    Missing(String),
    #[error("header field `{0}` has invalid value `{1}`")]
    Invalid(String, String),
}

/// A failed remote call.
#[derive(Debug, thiserror::Error)]
pub enum RemotingError {
    #[error("connect to {addr} failed: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("request to {addr} timed out after {timeout_ms} ms")]
    Timeout { addr: String, timeout_ms: u64 },
    #[error("connection to {0} is closed")]
    Closed(String),
    #[error("too many requests in flight to {0}")]
    TooManyInFlight(String),
    #[error("invalid address `{0}`")]
    BadAddress(String),
}
