//! A topic's route turned into the queue lists producers and consumers use,
//! and the producer's queue choice. Pure: no I/O here.

use spate_remoting::protocol::{perm, MessageQueue, TopicRouteData};

/// One topic's route with its writable and readable queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRoute {
    /// Topic name.
    pub topic: String,
    /// The route as the name server served it.
    pub data: TopicRouteData,
    /// Queues a producer may send to, ordered by broker name then queue id.
    pub write_queues: Vec<MessageQueue>,
    /// Queues a consumer may pull from, ordered by broker name then queue id.
    pub read_queues: Vec<MessageQueue>,
    /// Made from the auto-creation topic's route because the topic has none yet.
    pub from_default_topic: bool,
}

impl TopicRoute {
    /// Builds the queue lists as upstream does: only brokers with a master
    /// take writes; every readable queue data gives read queues.
    pub fn from_data(topic: &str, data: TopicRouteData) -> Self {
        let mut qds = data.queue_datas.clone();
        qds.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
        let has_master =
            |name: &str| data.broker_datas.iter().any(|b| b.broker_name == name && b.master_addr().is_some());
        let mut write_queues = Vec::new();
        let mut read_queues = Vec::new();
        for qd in &qds {
            if perm::writeable(qd.perm) && has_master(&qd.broker_name) {
                write_queues
                    .extend((0..qd.write_queue_nums.max(0)).map(|i| MessageQueue::new(topic, &qd.broker_name, i)));
            }
            if perm::readable(qd.perm) {
                read_queues
                    .extend((0..qd.read_queue_nums.max(0)).map(|i| MessageQueue::new(topic, &qd.broker_name, i)));
            }
        }
        TopicRoute { topic: topic.to_string(), data, write_queues, read_queues, from_default_topic: false }
    }

    /// A route for `topic` made from the auto-creation topic's route, each
    /// broker offering `min(default_queue_nums, its queue count)` queues
    /// (upstream's `defaultTopicQueueNums` behaviour).
    pub fn from_default(topic: &str, mut template: TopicRouteData, default_queue_nums: i32) -> Self {
        for qd in &mut template.queue_datas {
            let n = default_queue_nums.min(qd.read_queue_nums);
            qd.read_queue_nums = n;
            qd.write_queue_nums = n;
        }
        let mut route = TopicRoute::from_data(topic, template);
        route.from_default_topic = true;
        route
    }
}

/// Picks a write queue round robin, skipping queues of the brokers in
/// `avoid` (those that already failed this send) while another broker has
/// one. `counter` is the producer's rotating index and is advanced.
pub fn select_queue<'a>(queues: &'a [MessageQueue], counter: &mut usize, avoid: &[String]) -> Option<&'a MessageQueue> {
    if queues.is_empty() {
        return None;
    }
    if !avoid.is_empty() {
        for _ in 0..queues.len() {
            let mq = &queues[*counter % queues.len()];
            *counter = counter.wrapping_add(1);
            if !avoid.contains(&mq.broker_name) {
                return Some(mq);
            }
        }
    }
    let mq = &queues[*counter % queues.len()];
    *counter = counter.wrapping_add(1);
    Some(mq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_remoting::protocol::{BrokerData, QueueData};
    use std::collections::BTreeMap;

    fn data(brokers: &[(&str, i32, i32, bool)]) -> TopicRouteData {
        TopicRouteData {
            queue_datas: brokers
                .iter()
                .map(|(b, n, perm, _)| QueueData {
                    broker_name: b.to_string(),
                    read_queue_nums: *n,
                    write_queue_nums: *n,
                    perm: *perm,
                    topic_sys_flag: 0,
                })
                .collect(),
            broker_datas: brokers
                .iter()
                .map(|(b, _, _, master)| BrokerData {
                    cluster: "c".into(),
                    broker_name: b.to_string(),
                    broker_addrs: if *master { BTreeMap::from([(0, format!("{b}:1"))]) } else { BTreeMap::new() },
                    ..BrokerData::default()
                })
                .collect(),
            ..TopicRouteData::default()
        }
    }

    #[test]
    fn queues_follow_perm_and_master_presence() {
        let r = TopicRoute::from_data("T", data(&[("b2", 2, 6, true), ("b1", 1, 4, true), ("b3", 2, 6, false)]));
        let w: Vec<_> = r.write_queues.iter().map(|q| (q.broker_name.as_str(), q.queue_id)).collect();
        assert_eq!(w, vec![("b2", 0), ("b2", 1)], "b1 read-only, b3 without master");
        assert_eq!(r.read_queues.len(), 5);
        assert_eq!(r.read_queues[0].broker_name, "b1", "sorted by broker");
    }

    #[test]
    fn default_route_caps_queue_count() {
        let r = TopicRoute::from_default("New", data(&[("b1", 8, 6, true), ("b2", 2, 6, true)]), 4);
        assert!(r.from_default_topic);
        assert_eq!(r.write_queues.len(), 6);
        assert!(r.write_queues.iter().all(|q| q.topic == "New"));
    }

    #[test]
    fn round_robin_and_retry_on_another_broker() {
        let qs = vec![MessageQueue::new("T", "a", 0), MessageQueue::new("T", "a", 1), MessageQueue::new("T", "b", 0)];
        let mut c = 0;
        let picks: Vec<_> = (0..4).map(|_| select_queue(&qs, &mut c, &[]).unwrap().clone()).collect();
        assert_eq!(picks[0], qs[0]);
        assert_eq!(picks[3], qs[0]);
        // After a failure on "a", the next pick is on "b" whatever the counter.
        for start in 0..3 {
            let mut c = start;
            assert_eq!(select_queue(&qs, &mut c, &["a".to_string()]).unwrap().broker_name, "b");
        }
        // Only one broker: fall back to it.
        let one = vec![MessageQueue::new("T", "a", 0)];
        assert_eq!(select_queue(&one, &mut c, &["a".to_string()]).unwrap().broker_name, "a");
        assert!(select_queue(&[], &mut c, &[]).is_none());
        let three: Vec<MessageQueue> = ["a", "b", "c"].iter().map(|b| MessageQueue::new("T", b, 0)).collect();
        let avoid = ["a".to_string(), "b".to_string()];
        for _ in 0..3 {
            assert_eq!(
                select_queue(&three, &mut c, &avoid).unwrap().broker_name,
                "c",
                "every failed broker is avoided"
            );
        }
    }
}
