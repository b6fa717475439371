//! The client's error type.

use spate_common::message::MessageError;
use spate_remoting::RemotingError;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An option has a value the client cannot work with.
    #[error("option {name} is invalid: {reason}")]
    Config {
        /// The option's RocketMQ name.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The network call failed (connect, timeout, closed connection).
    #[error(transparent)]
    Remoting(#[from] RemotingError),
    /// The message breaks a rule (topic name, property characters, sizes).
    #[error("invalid message: {0}")]
    Message(#[from] MessageError),
    /// The message (or batch) is larger than `maxMessageSize`.
    #[error("message body is {size} bytes, more than maxMessageSize {max}")]
    MessageTooLarge {
        /// Encoded body size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The message has an empty body (upstream refuses those too).
    #[error("message body is empty")]
    EmptyBody,
    /// A batch mixes topics, carries delayed messages or is empty.
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    /// Neither the topic nor the auto-creation template (`TBW102`) has a route.
    #[error("no route for topic {topic}")]
    NoRoute {
        /// The topic.
        topic: String,
    },
    /// Every name server failed to answer.
    #[error("no name server answered: {0}")]
    NameServerUnavailable(String),
    /// No master address is known for a broker group.
    #[error("no master address known for broker {broker}")]
    BrokerNotFound {
        /// The broker name.
        broker: String,
    },
    /// A broker or name server answered with an error code.
    #[error("{addr} answered code {code}: {remark}")]
    Broker {
        /// Who answered.
        addr: String,
        /// The response code (see `spate_remoting::response`).
        code: i32,
        /// The peer's remark.
        remark: String,
    },
    /// A response that does not parse (missing header field, bad body).
    #[error("bad response from {addr}: {reason}")]
    BadResponse {
        /// Who answered.
        addr: String,
        /// What was wrong.
        reason: String,
    },
    /// The send budget (`sendMsgTimeout`) ran out before a broker accepted the message.
    #[error("send to topic {topic} gave up after {attempts} attempt(s): {last}")]
    SendFailed {
        /// The topic.
        topic: String,
        /// Attempts made.
        attempts: u32,
        /// The last attempt's error.
        last: Box<ClientError>,
    },
    /// Strict mode (`ProducerOptions::send_ok_required`): the broker stored the
    /// message but did not confirm the flush or replication it waits for.
    #[error("message stored but not confirmed: {:?}", result.status)]
    NotStoredOk {
        /// What the broker answered; the message is in the queue at this offset.
        result: Box<crate::producer::SendResult>,
    },
    /// Too many asynchronous sends are awaiting their brokers (`backPressureForAsyncSendNum`).
    #[error("too many asynchronous sends in flight ({0})")]
    TooManyInFlight(usize),
    /// A consumer or producer group is already registered in this client instance.
    #[error("group {0} is already registered in this client instance")]
    GroupAlreadyRegistered(String),
    /// The call is not allowed in the object's current state (not started, shut down).
    #[error("{0}")]
    State(&'static str),
    /// An argument cannot be used (a malformed message id, nothing found at it).
    #[error("{0}")]
    InvalidArgument(String),
    /// A local offset file could not be read or written.
    #[error("offset store i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// The broker could not be reached at all (refused, unreachable, or the
    /// connection closed): it is likely gone, and a fresh route may name
    /// its successor. A timeout or a full in-flight window is not this (the
    /// broker may only be slow, and must not be hammered).
    pub fn broker_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Remoting(
                RemotingError::Connect { .. } | RemotingError::ConnectTimeout(_) | RemotingError::Closed(_)
            )
        )
    }

    /// The broker's response code, if a broker answered with an error.
    pub fn response_code(&self) -> Option<i32> {
        match self {
            ClientError::Broker { code, .. } => Some(*code),
            ClientError::SendFailed { last, .. } => last.response_code(),
            _ => None,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_broker_that_cannot_be_reached_counts_as_gone() {
        let refused = ClientError::Remoting(RemotingError::Connect {
            addr: "127.0.0.1:1".into(),
            source: std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        });
        assert!(refused.broker_unreachable());
        assert!(ClientError::Remoting(RemotingError::Closed("x".into())).broker_unreachable());
        let slow = ClientError::Remoting(RemotingError::Timeout { addr: "x".into(), timeout_ms: 1 });
        assert!(!slow.broker_unreachable());
        assert!(!ClientError::Remoting(RemotingError::TooManyInFlight("x".into())).broker_unreachable());
    }
}
