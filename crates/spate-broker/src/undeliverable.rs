//! Poison isolation for the background deliverers (delay, timer,
//! transaction check): a message one of them cannot deliver (its stored
//! destination is not a usable name, its queue id is out of range, the
//! store refuses it as a message) is stored again in
//! [`UNDELIVERABLE_TOPIC`] with why, counted, and the deliverer goes on.
//! It never blocks the messages behind it, and nothing is dropped: an
//! operator reads them with `spate admin undeliverable list`.

use spate_common::message::{self, NewMessage};
use spate_store::StoreError;

use crate::send::PutError;
use crate::BrokerState;

pub use crate::names::UNDELIVERABLE_TOPIC;

/// Property naming the deliverer that set the message aside.
pub const SOURCE_PROPERTY: &str = "SPATE_UNDELIVERABLE_FROM";
/// Property saying why it could not be delivered.
pub const REASON_PROPERTY: &str = "SPATE_UNDELIVERABLE_REASON";
/// Longest reason kept in the property.
const REASON_MAX_LEN: usize = 256;

/// Which background deliverer set a message aside (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Delayed messages (schedule.rs).
    Schedule,
    /// Timer messages (timer.rs).
    Timer,
    /// Transaction commits and checks (transaction.rs).
    Transaction,
}

impl Source {
    /// The label in metrics and in the stored property.
    pub fn name(self) -> &'static str {
        match self {
            Source::Schedule => "schedule",
            Source::Timer => "timer",
            Source::Transaction => "transaction",
        }
    }
}

/// Whether a failed put means the message itself can never be stored as it
/// is (set it aside), rather than a passing condition (retry later).
pub fn is_poison(e: &PutError) -> bool {
    matches!(e, PutError::Store(StoreError::InvalidMessage(_)))
}

/// The set-aside form of `msg`: the same body, flags and properties in
/// [`UNDELIVERABLE_TOPIC`] queue 0, with where it was going (`REAL_TOPIC`
/// and `REAL_QID` when the destination was a name at all), the deliverer
/// and the reason added.
pub fn aside(mut msg: NewMessage, source: Source, reason: &str) -> NewMessage {
    let reason: String = reason
        .chars()
        .map(|c| if c == message::NAME_VALUE_SEPARATOR || c == message::PROPERTY_SEPARATOR { ' ' } else { c })
        .take(REASON_MAX_LEN)
        .collect();
    let canonical = message::canonical_properties(&msg.properties).into_owned();
    let pairs = message::properties(&canonical)
        .filter(|(k, _)| *k != SOURCE_PROPERTY && *k != REASON_PROPERTY)
        .chain([(SOURCE_PROPERTY, source.name()), (REASON_PROPERTY, reason.as_str())]);
    // The pairs come from a canonical string and a cleaned reason, so they
    // encode; if the total grew past the limit, the reason is what is kept.
    msg.properties = message::encode_properties(pairs)
        .or_else(|_| message::encode_properties([(SOURCE_PROPERTY, source.name()), (REASON_PROPERTY, reason.as_str())]))
        .unwrap_or_default();
    msg.topic = UNDELIVERABLE_TOPIC.to_string();
    msg.queue_id = 0;
    msg
}

/// Stores the set-aside form of `msg` and counts it. Returns the store's
/// answer so the caller can wait for its flush with the rest of its round.
/// If even the set-aside form is refused as a message (a body over a since
/// lowered `maxMessageSize`), it is stored without its body; if that is
/// refused too, the message is given up with an error log and the metric
/// (`None`): nothing may stop the deliverer. A passing failure is an error.
pub async fn set_aside(
    state: &std::sync::Arc<BrokerState>,
    msg: NewMessage,
    source: Source,
    reason: &str,
) -> Result<Option<spate_store::PutResult>, String> {
    tracing::error!(
        source = source.name(),
        topic = %msg.topic.chars().take(200).collect::<String>(),
        reason,
        "undeliverable message set aside in {UNDELIVERABLE_TOPIC}"
    );
    ensure_topic(state).await?;
    let body_len = msg.body.len();
    let mut bare = msg.clone();
    bare.body = bytes::Bytes::new();
    let put = match crate::send::put_one(state, aside(msg, source, reason)).await {
        Ok(put) => Some(put),
        Err(e) if is_poison(&e) => {
            let why =
                format!("{reason}; its body of {body_len} bytes was dropped: {}", crate::schedule::put_error_text(&e));
            match crate::send::put_one(state, aside(bare, source, &why)).await {
                Ok(put) => Some(put),
                Err(e) if is_poison(&e) => {
                    tracing::error!(source = source.name(), error = %crate::schedule::put_error_text(&e), "undeliverable message could not be kept either; given up");
                    None
                }
                Err(e) => return Err(crate::schedule::put_error_text(&e)),
            }
        }
        Err(e) => return Err(crate::schedule::put_error_text(&e)),
    };
    state.metrics.undeliverable(source.name());
    Ok(put)
}

async fn ensure_topic(state: &BrokerState) -> Result<(), String> {
    if state.topics.get(UNDELIVERABLE_TOPIC).is_some() {
        return Ok(());
    }
    // Readable, so admin can list it; written only by the broker
    // (names::client_may_send refuses it to clients).
    let tc = spate_remoting::protocol::TopicConfig::new(
        UNDELIVERABLE_TOPIC,
        1,
        spate_remoting::protocol::perm::READ | spate_remoting::protocol::perm::WRITE,
    );
    if state.topics.upsert(tc) {
        state.topics.persist().await.map_err(|e| e.to_string())?;
        state.topics_changed();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aside_keeps_the_message_and_says_why() {
        let props = message::encode_properties([("REAL_TOPIC", "/abs/path"), ("TAGS", "a")]).unwrap();
        let msg = NewMessage {
            topic: "/abs/path".into(),
            queue_id: 3,
            flag: 1,
            body: bytes::Bytes::from_static(b"body"),
            properties: props,
            sys_flag: 0,
            born_timestamp: 1,
            born_host: "127.0.0.1:1".parse().unwrap(),
            store_host: "127.0.0.1:2".parse().unwrap(),
            reconsume_times: 0,
            prepared_tx_offset: 0,
        };
        let m = aside(msg, Source::Schedule, "bad\u{1}name\u{2}");
        assert_eq!((m.topic.as_str(), m.queue_id), (UNDELIVERABLE_TOPIC, 0));
        assert_eq!(&m.body[..], b"body");
        assert_eq!(message::property(&m.properties, "REAL_TOPIC"), Some("/abs/path"));
        assert_eq!(message::property(&m.properties, SOURCE_PROPERTY), Some("schedule"));
        assert_eq!(message::property(&m.properties, REASON_PROPERTY), Some("bad name "));
        let mut buf = Vec::new();
        message::encode_record(&m, 1 << 20, &mut buf).unwrap();
    }
}
