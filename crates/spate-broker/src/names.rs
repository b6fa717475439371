//! Name rules applied where a name enters the broker: which topics a
//! client may write, which group names are accepted, and which names read
//! back from a stored message's properties may be used as a destination.
//!
//! Every topic and group name that reaches the store or the tables has
//! passed `spate_common::message::validate_topic` (letters, digits, `%|_-`,
//! at most 127 characters), so no name can become a path elsewhere.

use spate_common::message::{self, TIMER_TOPIC, TOPIC_MAX_LEN};
use spate_remoting::protocol::{DLQ_GROUP_TOPIC_PREFIX, RETRY_GROUP_TOPIC_PREFIX};

use crate::schedule::SCHEDULE_TOPIC;
use crate::transaction::{CHECK_MAX_TOPIC, HALF_TOPIC, OP_TOPIC};

/// Where background deliverers (delay, timer, transaction check) put a
/// message they cannot deliver, so it never blocks the ones behind it.
/// Read with `spate admin undeliverable list`; counted in
/// `spate_undeliverable_messages_total`.
pub const UNDELIVERABLE_TOPIC: &str = "RMQ_SYS_SPATE_UNDELIVERABLE";

/// The message-trace topic, which RocketMQ clients write directly.
pub const TRACE_TOPIC: &str = "RMQ_SYS_TRACE_TOPIC";

/// Longest group name (the topic rule, as before). A group longer than
/// [`RETRY_GROUP_MAX_LEN`] has no retry topic: its send-backs are refused
/// and its clients retry in place.
pub const GROUP_MAX_LEN: usize = TOPIC_MAX_LEN;

/// Longest group whose retry topic (`%RETRY%` + name) is still a name.
pub const RETRY_GROUP_MAX_LEN: usize = TOPIC_MAX_LEN - RETRY_GROUP_TOPIC_PREFIX.len();

/// Checks a producer or consumer group name: the topic-name rules (so no
/// `@`, which separates topic and group in the offset table).
pub fn validate_group(group: &str) -> Result<(), String> {
    if group.len() > GROUP_MAX_LEN || message::validate_topic(group).is_err() {
        return Err(format!(
            "invalid group name `{}`: letters, digits, %|_- only, 1 to {GROUP_MAX_LEN} characters",
            group.chars().take(GROUP_MAX_LEN + 1).collect::<String>()
        ));
    }
    Ok(())
}

/// Whether a client may send to `topic` directly. The broker's own system
/// topics are written only by the broker: halves, delays and timers are
/// moved there from their real topic, resolutions and dead letters by the
/// broker's own requests. The set is Spate's, wider than upstream's
/// not-allowed-send set (which lacks `%DLQ%*` and most of `RMQ_SYS_*`).
/// A retry topic may be written by a client only for a group this broker
/// knows (the stock clients' send-back fallback); the caller checks that.
pub fn client_may_send(topic: &str) -> Result<(), String> {
    let reserved = topic == SCHEDULE_TOPIC
        || topic == TIMER_TOPIC
        || topic == HALF_TOPIC
        || topic == OP_TOPIC
        || topic == CHECK_MAX_TOPIC
        || topic == UNDELIVERABLE_TOPIC
        || topic == SELF_TEST_TOPIC
        || topic.starts_with(DLQ_GROUP_TOPIC_PREFIX)
        || (topic.starts_with("RMQ_SYS_") && topic != TRACE_TOPIC)
        || topic.starts_with("rmq_sys_");
    if reserved {
        return Err(format!("sending message to topic[{topic}] is forbidden: it is a system topic"));
    }
    Ok(())
}

/// Whether `topic` is one of the broker's own topics, which admin requests
/// may neither create, change nor delete (upstream refuses its system
/// topics likewise): the topics closed to client sends (dead-letter topics
/// aside, which an operator may delete) and the auto-creation template
/// TBW102. The trace topic stays an operator's to create.
pub fn is_system_topic(topic: &str) -> bool {
    (client_may_send(topic).is_err() && !topic.starts_with(DLQ_GROUP_TOPIC_PREFIX))
        || topic == spate_remoting::protocol::DEFAULT_TOPIC
}

/// The topic every broker creates for self tests (upstream's name).
pub const SELF_TEST_TOPIC: &str = "SELF_TEST_TOPIC";

/// A destination topic read back from a stored message's properties
/// (`REAL_TOPIC`, `RETRY_TOPIC`): usable only if it is a valid name a
/// client could have sent to.
pub fn stored_destination(topic: Option<&str>) -> Result<&str, String> {
    let topic = topic.ok_or_else(|| "no destination topic in the message's properties".to_string())?;
    message::validate_topic(topic).map_err(|e| format!("destination topic is not usable: {e}"))?;
    if topic.starts_with(RETRY_GROUP_TOPIC_PREFIX) {
        return Ok(topic);
    }
    client_may_send(topic)?;
    Ok(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_topics_are_closed_to_clients() {
        for t in
            [SCHEDULE_TOPIC, TIMER_TOPIC, HALF_TOPIC, OP_TOPIC, CHECK_MAX_TOPIC, "%DLQ%g", "RMQ_SYS_X", "rmq_sys_x"]
        {
            assert!(client_may_send(t).is_err(), "{t} open to clients");
        }
        for t in ["Orders", TRACE_TOPIC, "%RETRY%g", "TBW102"] {
            assert!(client_may_send(t).is_ok(), "{t} closed to clients");
        }
    }

    #[test]
    fn system_topics_are_closed_to_admin_changes() {
        for t in ["TBW102", SCHEDULE_TOPIC, HALF_TOPIC, SELF_TEST_TOPIC, UNDELIVERABLE_TOPIC] {
            assert!(is_system_topic(t), "{t}");
        }
        for t in ["Orders", "%DLQ%g", "%RETRY%g", TRACE_TOPIC] {
            assert!(!is_system_topic(t), "{t}");
        }
    }

    #[test]
    fn stored_destinations_must_be_names_a_client_could_send_to() {
        for bad in [None, Some("/abs/path"), Some("../../x"), Some(""), Some(SCHEDULE_TOPIC), Some("%DLQ%g")] {
            assert!(stored_destination(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(stored_destination(Some("Orders")), Ok("Orders"));
        assert_eq!(stored_destination(Some("%RETRY%g")), Ok("%RETRY%g"));
    }

    #[test]
    fn group_names_follow_the_topic_rule() {
        assert!(validate_group(&"g".repeat(GROUP_MAX_LEN)).is_ok());
        assert!(validate_group(&"g".repeat(GROUP_MAX_LEN + 1)).is_err());
        assert!(validate_group("a/b").is_err());
        assert!(message::validate_topic(&format!("%RETRY%{}", "g".repeat(RETRY_GROUP_MAX_LEN))).is_ok());
        assert!(message::validate_topic(&format!("%RETRY%{}", "g".repeat(RETRY_GROUP_MAX_LEN + 1))).is_err());
    }
}
