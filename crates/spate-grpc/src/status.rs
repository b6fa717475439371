//! RocketMQ's status envelope: every answer of MessagingService carries a
//! `Status{code, message}` with one of RocketMQ's own codes (OK is 20000);
//! business failures travel as a gRPC OK with such a status, as upstream's
//! servers answer, so clients read the code they expect.

use crate::pb::{Code, Status};

/// `Status{OK}`.
pub fn ok() -> Status {
    Status { code: Code::Ok as i32, message: "OK".to_string() }
}

/// A status with `code` and a message for people.
pub fn with(code: Code, message: impl Into<String>) -> Status {
    Status { code: code as i32, message: message.into() }
}

/// Whether `status` says OK.
pub fn is_ok(status: &Status) -> bool {
    status.code == Code::Ok as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_rocketmqs_own() {
        assert_eq!(ok().code, 20000);
        assert!(is_ok(&ok()));
        let s = with(Code::InvalidReceiptHandle, "stale");
        assert_eq!((s.code, s.message.as_str()), (40013, "stale"));
        assert!(!is_ok(&s));
        assert_eq!(Code::ClientIdRequired as i32, 40017);
        assert_eq!(Code::TooManyRequests as i32, 42900);
    }
}
