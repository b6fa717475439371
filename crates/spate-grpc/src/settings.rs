//! The settings a server answers a client's first Telemetry command with.
//!
//! Every 5.x client opens Telemetry to each endpoint it uses and sends its
//! own settings first; several wait for the answer before they start, and
//! break on missing fields: a producer needs an exponential backoff and a
//! `max_body_size` (0 would refuse every send), a push consumer a backoff,
//! `receive_batch_size`, `long_polling_timeout` and `fifo`. The answer is
//! the client's own settings with the server's part filled in, as
//! upstream's servers answer; metrics export is off.

use std::time::Duration;

use crate::pb::{
    self, retry_policy::Strategy, settings::PubSub, CustomizedBackoff, ExponentialBackoff, Metric, RetryPolicy,
};

/// Attempts a producer makes per send (upstream's server-side default).
pub const PRODUCER_MAX_ATTEMPTS: i32 = 3;
/// A producer's first retry delay.
pub const PRODUCER_BACKOFF_INITIAL: Duration = Duration::from_millis(10);
/// A producer's longest retry delay.
pub const PRODUCER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Consumers' redelivery delays by attempt: upstream's delay levels from
/// the third on (`1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h`).
pub const CONSUMER_BACKOFF_SECS: [u64; 18] =
    [1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200];
/// Messages one push-consumer receive asks for.
pub const RECEIVE_BATCH_SIZE: i32 = 32;
/// How long one push-consumer receive waits on the server.
pub const LONG_POLLING_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a client's settings were refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("settings carry neither publishing nor subscription")]
    NoPubSub,
    #[error("a subscription's settings name no consumer group")]
    NoGroup,
}

/// What the server knows that goes into its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    /// The broker's `maxMessageSize`: a producer refuses larger bodies itself.
    pub max_body_size: i32,
}

/// What the server knows of a consumer group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFacts {
    /// `consumeMessageOrderly`: FIFO consumption.
    pub fifo: bool,
    /// `retryMaxTimes`: deliveries after the first before the DLQ.
    pub retry_max_times: i32,
}

/// The consumer group a client's settings name, if they are a subscription's.
pub fn subscription_group(client: &pb::Settings) -> Option<&str> {
    match &client.pub_sub {
        Some(PubSub::Subscription(s)) => s.group.as_ref().map(|g| g.name.as_str()),
        _ => None,
    }
}

/// The answer to `client`'s settings. `group` is the facts of the group a
/// subscription names (ask [`subscription_group`]); ignored for producers.
pub fn answer(client: &pb::Settings, server: &ServerFacts, group: &GroupFacts) -> Result<pb::Settings, SettingsError> {
    let mut out = client.clone();
    match out.pub_sub.as_mut() {
        None => return Err(SettingsError::NoPubSub),
        Some(PubSub::Publishing(p)) => {
            p.max_body_size = server.max_body_size;
            p.validate_message_type = true;
            out.backoff_policy = Some(RetryPolicy {
                max_attempts: PRODUCER_MAX_ATTEMPTS,
                strategy: Some(Strategy::ExponentialBackoff(ExponentialBackoff {
                    initial: Some(duration(PRODUCER_BACKOFF_INITIAL)),
                    max: Some(duration(PRODUCER_BACKOFF_MAX)),
                    multiplier: 2.0,
                })),
            });
        }
        Some(PubSub::Subscription(s)) => {
            if s.group.as_ref().is_none_or(|g| g.name.is_empty()) {
                return Err(SettingsError::NoGroup);
            }
            s.fifo = Some(group.fifo);
            s.receive_batch_size = Some(RECEIVE_BATCH_SIZE);
            s.long_polling_timeout = Some(duration(LONG_POLLING_TIMEOUT));
            let next = CONSUMER_BACKOFF_SECS.iter().map(|s| duration(Duration::from_secs(*s))).collect();
            out.backoff_policy = Some(RetryPolicy {
                max_attempts: group.retry_max_times.max(0).saturating_add(1),
                strategy: Some(Strategy::CustomizedBackoff(CustomizedBackoff { next })),
            });
        }
    }
    out.metric = Some(Metric { on: false, endpoints: None });
    Ok(out)
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{ClientType, Publishing, Resource, Subscription};

    const SERVER: ServerFacts = ServerFacts { max_body_size: 4 << 20 };
    const GROUP: GroupFacts = GroupFacts { fifo: true, retry_max_times: 16 };

    fn resource(name: &str) -> Resource {
        Resource { name: name.into(), ..Default::default() }
    }

    #[test]
    fn a_producer_gets_an_exponential_backoff_and_the_body_limit() {
        let client = pb::Settings {
            client_type: Some(ClientType::Producer as i32),
            pub_sub: Some(PubSub::Publishing(Publishing { topics: vec![resource("T")], ..Default::default() })),
            ..Default::default()
        };
        let out = answer(&client, &SERVER, &GROUP).unwrap();
        let Some(PubSub::Publishing(p)) = &out.pub_sub else { panic!("publishing kept") };
        assert_eq!((p.max_body_size, p.validate_message_type, p.topics.len()), (4 << 20, true, 1));
        let policy = out.backoff_policy.unwrap();
        assert_eq!(policy.max_attempts, 3);
        let Some(Strategy::ExponentialBackoff(b)) = policy.strategy else { panic!("exponential backoff") };
        assert_eq!((b.initial.unwrap().nanos, b.max.unwrap().seconds, b.multiplier), (10_000_000, 1, 2.0));
        assert_eq!(out.metric, Some(Metric { on: false, endpoints: None }));
        assert_eq!(out.client_type, Some(ClientType::Producer as i32), "the client's own fields are echoed");
    }

    #[test]
    fn a_consumer_gets_its_groups_fifo_flag_batch_polling_and_retries() {
        let client = pb::Settings {
            client_type: Some(ClientType::PushConsumer as i32),
            pub_sub: Some(PubSub::Subscription(Subscription { group: Some(resource("G")), ..Default::default() })),
            ..Default::default()
        };
        assert_eq!(subscription_group(&client), Some("G"));
        let out = answer(&client, &SERVER, &GROUP).unwrap();
        let Some(PubSub::Subscription(s)) = &out.pub_sub else { panic!("subscription kept") };
        assert_eq!((s.fifo, s.receive_batch_size), (Some(true), Some(32)));
        assert_eq!(s.long_polling_timeout.as_ref().map(|d| d.seconds), Some(20));
        let policy = out.backoff_policy.unwrap();
        assert_eq!(policy.max_attempts, 17, "retryMaxTimes 16 plus the first delivery");
        let Some(Strategy::CustomizedBackoff(b)) = policy.strategy else { panic!("customized backoff") };
        assert_eq!((b.next.len(), b.next[0].seconds, b.next[17].seconds), (18, 1, 7200));
    }

    #[test]
    fn settings_without_a_role_or_group_are_refused() {
        assert_eq!(answer(&pb::Settings::default(), &SERVER, &GROUP), Err(SettingsError::NoPubSub));
        let no_group =
            pb::Settings { pub_sub: Some(PubSub::Subscription(Subscription::default())), ..Default::default() };
        assert_eq!(subscription_group(&no_group), None);
        assert_eq!(answer(&no_group, &SERVER, &GROUP), Err(SettingsError::NoGroup));
    }
}
