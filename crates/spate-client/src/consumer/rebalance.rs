//! Which queues a consumer should hold, and where it starts in a new one.

use std::collections::BTreeSet;

use rand::seq::SliceRandom;
use spate_remoting::protocol::{MessageQueue, RETRY_GROUP_TOPIC_PREFIX};

use crate::consumer::allocate::allocate_averagely;
use crate::consumer::offset_store::OffsetStore;
use crate::consumer::{ConsumeFromWhere, MessageModel};
use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;

/// The queues of `topic` this client should consume now. Broadcasting: all
/// of them. Clustering: its averaged share among the group's consumers as a
/// broker of the topic knows them. No route yet: none.
pub(crate) async fn target_queues(
    instance: &ClientInstance,
    group: &str,
    topic: &str,
    model: MessageModel,
) -> Result<Vec<MessageQueue>> {
    let Some(route) = instance.route(topic).await? else {
        // Not routed yet (e.g. just auto-created): the caller retries soon.
        return Err(ClientError::NoRoute { topic: topic.to_string() });
    };
    if model == MessageModel::Broadcasting || route.read_queues.is_empty() {
        return Ok(route.read_queues.clone());
    }
    // Each group's master, or a slave of a group whose master is away.
    let mut masters: Vec<String> = route
        .data
        .broker_datas
        .iter()
        .filter_map(|b| b.master_addr().or_else(|| b.broker_addrs.values().next().map(String::as_str)))
        .map(str::to_string)
        .collect();
    masters.shuffle(&mut rand::thread_rng());
    let mut last_err = None;
    for addr in masters {
        match instance.consumer_ids(&addr, group).await {
            // A broker that has not seen our heartbeat yet would leave us
            // without queues: keep the current assignment and retry soon.
            Ok(ids) if !ids.iter().any(|id| id == instance.client_id()) => {
                last_err = Some(ClientError::State("this client is not yet in the group's consumer list"));
            }
            Ok(ids) => return Ok(allocate_averagely(instance.client_id(), &route.read_queues, &ids)),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or(ClientError::BrokerNotFound { broker: format!("any master of topic {topic}") }))
}

/// Queues to start and to stop to go from `current` to `target`.
pub(crate) fn plan(
    current: &BTreeSet<MessageQueue>,
    target: &BTreeSet<MessageQueue>,
) -> (Vec<MessageQueue>, Vec<MessageQueue>) {
    let add = target.difference(current).cloned().collect();
    let remove = current.difference(target).cloned().collect();
    (add, remove)
}

/// The offset a newly assigned queue starts at: the stored one, else per
/// `consumeFromWhere` (upstream `computePullFromWhere`).
pub(crate) async fn start_offset(
    instance: &ClientInstance,
    offsets: &OffsetStore,
    mq: &MessageQueue,
    from: ConsumeFromWhere,
    timestamp_ms: i64,
) -> Result<i64> {
    if let Some(o) = offsets.read_stored(mq).await? {
        return Ok(o);
    }
    let retry = mq.topic.starts_with(RETRY_GROUP_TOPIC_PREFIX);
    let offset = match from {
        ConsumeFromWhere::LastOffset if retry => 0,
        ConsumeFromWhere::LastOffset => instance.max_offset(mq).await?,
        ConsumeFromWhere::FirstOffset => 0,
        ConsumeFromWhere::Timestamp if retry => instance.max_offset(mq).await?,
        ConsumeFromWhere::Timestamp => instance.search_offset(mq, timestamp_ms).await?,
    };
    offsets.update(mq, offset, false);
    Ok(offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_starts_new_and_stops_lost_queues() {
        let q = |i| MessageQueue::new("T", "b", i);
        let current: BTreeSet<_> = [q(0), q(1), q(2)].into();
        let target: BTreeSet<_> = [q(2), q(3)].into();
        let (add, remove) = plan(&current, &target);
        assert_eq!(add, vec![q(3)]);
        assert_eq!(remove, vec![q(0), q(1)]);
        let (add, remove) = plan(&target, &target);
        assert!(add.is_empty() && remove.is_empty());
    }
}
