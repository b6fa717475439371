//! Receipt handles in RocketMQ's "extraInfo" layout, so 5.x remoting
//! clients (which read the queue id and offset out of it) work unchanged:
//! eight fields separated by one space,
//! `startOffset popTime invisibleTime reviveQid retryKind brokerName queueId offset`.
//!
//! Spate puts its own meaning into two of them: `popTime` is the message's
//! *stamp*, which grows with every pop or invisible-time change of that
//! message, so a handle older than the latest is stale; `reviveQid` is
//! always 0 (Spate has no revive topic). Everything else is what upstream
//! writes. A handle is checked field by field; a forged one is refused
//! with the field that is wrong, never half-applied.

use std::fmt;

/// What `retryKind` says about the topic the message was popped from:
/// `0` the topic itself, `1` its `%RETRY%group_topic`, `2` its
/// `%RETRY%group+topic`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryKind {
    Normal,
    Retry,
    RetryV2,
}

impl RetryKind {
    fn as_str(self) -> &'static str {
        match self {
            RetryKind::Normal => "0",
            RetryKind::Retry => "1",
            RetryKind::RetryV2 => "2",
        }
    }
}

/// Longest handle accepted: eight numbers and a broker name.
pub const MAX_HANDLE_LEN: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptHandle {
    /// First offset of the batch the message was popped in.
    pub start_offset: i64,
    /// The message's stamp at this pop or change (milliseconds, never
    /// smaller than the wall clock at the time, strictly growing per message).
    pub stamp: u64,
    pub invisible_ms: u64,
    pub retry: RetryKind,
    pub broker_name: String,
    pub queue_id: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("receipt handle is longer than {MAX_HANDLE_LEN} bytes")]
    TooLong,
    #[error("receipt handle has {0} fields, expected 8")]
    FieldCount(usize),
    #[error("receipt handle field {field} is not valid: {value:?}")]
    Field { field: &'static str, value: String },
}

const FIELDS: [&str; 8] =
    ["startOffset", "popTime", "invisibleTime", "reviveQid", "retryKind", "brokerName", "queueId", "offset"];

impl fmt::Display for ReceiptHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} 0 {} {} {} {}",
            self.start_offset,
            self.stamp,
            self.invisible_ms,
            self.retry.as_str(),
            self.broker_name,
            self.queue_id,
            self.offset
        )
    }
}

impl ReceiptHandle {
    /// Parses a handle a client sent back.
    pub fn parse(text: &str) -> Result<ReceiptHandle, HandleError> {
        if text.len() > MAX_HANDLE_LEN {
            return Err(HandleError::TooLong);
        }
        let parts: Vec<&str> = text.split(' ').collect();
        if parts.len() != FIELDS.len() {
            return Err(HandleError::FieldCount(parts.len()));
        }
        let bad = |i: usize| HandleError::Field { field: FIELDS[i], value: parts[i].chars().take(64).collect() };
        let non_negative = |i: usize| parts[i].parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| bad(i));
        let start_offset = non_negative(0)?;
        let stamp = parts[1].parse::<u64>().map_err(|_| bad(1))?;
        let invisible_ms = parts[2].parse::<u64>().map_err(|_| bad(2))?;
        if parts[3].parse::<i32>().is_err() {
            return Err(bad(3));
        }
        let retry = match parts[4] {
            "0" => RetryKind::Normal,
            "1" => RetryKind::Retry,
            "2" => RetryKind::RetryV2,
            _ => return Err(bad(4)),
        };
        let broker_name = parts[5];
        if broker_name.is_empty() || !broker_name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(5));
        }
        let queue_id = parts[6].parse::<i32>().ok().filter(|q| *q >= 0).ok_or_else(|| bad(6))?;
        let offset = non_negative(7)?;
        if offset < start_offset {
            return Err(bad(7));
        }
        Ok(ReceiptHandle {
            start_offset,
            stamp,
            invisible_ms,
            retry,
            broker_name: broker_name.to_string(),
            queue_id,
            offset,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReceiptHandle {
        ReceiptHandle {
            start_offset: 40,
            stamp: 1_765_000_000_123,
            invisible_ms: 60_000,
            retry: RetryKind::Normal,
            broker_name: "broker-a".into(),
            queue_id: 3,
            offset: 42,
        }
    }

    #[test]
    fn the_layout_is_upstreams_extra_info() {
        let h = sample();
        let text = h.to_string();
        assert_eq!(text, "40 1765000000123 60000 0 0 broker-a 3 42");
        // What a 4.x/5.x remoting client reads out of it: queue id at 6, offset at 7.
        let parts: Vec<&str> = text.split(' ').collect();
        assert_eq!((parts[5], parts[6], parts[7]), ("broker-a", "3", "42"));
        assert_eq!(ReceiptHandle::parse(&text), Ok(h));
    }

    #[test]
    fn forged_and_malformed_handles_name_what_is_wrong() {
        let cases = [
            ("", HandleError::FieldCount(1)),
            ("1 2 3 0 0 b 1", HandleError::FieldCount(7)),
            ("1 2 3 0 0 b 1 2 9", HandleError::FieldCount(9)),
            ("-1 2 3 0 0 b 1 2", HandleError::Field { field: "startOffset", value: "-1".into() }),
            ("1 x 3 0 0 b 1 2", HandleError::Field { field: "popTime", value: "x".into() }),
            ("1 2 -3 0 0 b 1 2", HandleError::Field { field: "invisibleTime", value: "-3".into() }),
            ("1 2 3 0 7 b 1 2", HandleError::Field { field: "retryKind", value: "7".into() }),
            ("1 2 3 0 0 b -1 2", HandleError::Field { field: "queueId", value: "-1".into() }),
            ("5 2 3 0 0 b 1 2", HandleError::Field { field: "offset", value: "2".into() }),
            (
                "1 2 3 0 0 b 1 99999999999999999999",
                HandleError::Field { field: "offset", value: "99999999999999999999".into() },
            ),
            ("1  3 0 0 b 1 2", HandleError::Field { field: "popTime", value: "".into() }),
        ];
        for (text, want) in cases {
            assert_eq!(ReceiptHandle::parse(text), Err(want), "{text:?}");
        }
        assert_eq!(ReceiptHandle::parse(&"9".repeat(MAX_HANDLE_LEN + 1)), Err(HandleError::TooLong));
        assert!(matches!(
            ReceiptHandle::parse("1 2 3 0 0 b\u{7f} 1 2"),
            Err(HandleError::Field { field: "brokerName", .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_what_parses_prints_back(text in "[0-9a-z \\-]{0,60}") {
            if let Ok(h) = ReceiptHandle::parse(&text) {
                proptest::prop_assert_eq!(ReceiptHandle::parse(&h.to_string()), Ok(h));
            }
        }
    }
}
