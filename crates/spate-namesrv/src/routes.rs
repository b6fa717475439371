//! The name server's tables: which brokers are alive, what topics they
//! serve. Pure data with an explicit clock, so expiry is tested without
//! waiting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use spate_remoting::protocol::{
    BrokerData, ClusterInfo, DataVersion, QueueData, TopicConfigSerializeWrapper, TopicList, TopicRouteData, MASTER_ID,
};

/// Most broker processes one name server tracks.
pub const MAX_LIVE_BROKERS: usize = 10_000;

/// One live broker process, keyed by its address.
#[derive(Debug, Clone)]
struct LiveBroker {
    cluster: String,
    broker_name: String,
    broker_id: i64,
    last_update: Instant,
    data_version: DataVersion,
    ha_server_addr: String,
    /// The connection it registered over; its close removes the broker at once.
    connection_id: u64,
}

/// A REGISTER_BROKER call.
#[derive(Debug, Clone)]
pub struct Registration {
    pub cluster: String,
    pub broker_addr: String,
    pub broker_name: String,
    pub broker_id: i64,
    pub ha_server_addr: String,
    pub topics: TopicConfigSerializeWrapper,
    pub connection_id: u64,
}

/// What REGISTER_BROKER answers: the group's master, for slaves to follow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterAnswer {
    pub master_addr: Option<String>,
    pub ha_server_addr: Option<String>,
}

/// Routes and liveness.
#[derive(Debug, Default)]
pub struct Routes {
    topic_queues: BTreeMap<String, BTreeMap<String, QueueData>>,
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    live: HashMap<String, LiveBroker>,
}

impl Routes {
    /// Records a registration (new broker or periodic refresh).
    pub fn register(&mut self, reg: Registration, now: Instant) -> RegisterAnswer {
        self.clusters.entry(reg.cluster.clone()).or_default().insert(reg.broker_name.clone());
        let data = self.brokers.entry(reg.broker_name.clone()).or_insert_with(|| BrokerData {
            cluster: reg.cluster.clone(),
            broker_name: reg.broker_name.clone(),
            broker_addrs: BTreeMap::new(),
            enable_acting_master: false,
        });
        data.cluster = reg.cluster.clone();
        // One address holds one id: a broker that changed role (slave promoted
        // to master) must not keep its old id entry.
        data.broker_addrs.retain(|id, addr| *addr != reg.broker_addr || *id == reg.broker_id);
        data.broker_addrs.insert(reg.broker_id, reg.broker_addr.clone());

        let changed = self
            .live
            .get(&reg.broker_addr)
            .is_none_or(|l| l.data_version != reg.topics.data_version || l.broker_id != reg.broker_id);
        if reg.broker_id == MASTER_ID && changed {
            self.apply_topics(&reg.broker_name, &reg.topics);
        }
        self.live.insert(
            reg.broker_addr.clone(),
            LiveBroker {
                cluster: reg.cluster.clone(),
                broker_name: reg.broker_name.clone(),
                broker_id: reg.broker_id,
                last_update: now,
                data_version: reg.topics.data_version,
                ha_server_addr: reg.ha_server_addr.clone(),
                connection_id: reg.connection_id,
            },
        );
        if reg.broker_id == MASTER_ID {
            return RegisterAnswer::default();
        }
        let master = self.brokers.get(&reg.broker_name).and_then(|b| b.master_addr()).map(str::to_string);
        let ha = master.as_ref().and_then(|m| self.live.get(m)).map(|l| l.ha_server_addr.clone());
        RegisterAnswer { master_addr: master, ha_server_addr: ha }
    }

    /// The master's topic table replaces what the group served before.
    fn apply_topics(&mut self, broker_name: &str, topics: &TopicConfigSerializeWrapper) {
        for queues in self.topic_queues.values_mut() {
            queues.remove(broker_name);
        }
        for (name, tc) in &topics.topic_config_table {
            let qd = QueueData {
                broker_name: broker_name.to_string(),
                read_queue_nums: tc.read_queue_nums,
                write_queue_nums: tc.write_queue_nums,
                perm: tc.perm,
                topic_sys_flag: tc.topic_sys_flag,
            };
            self.topic_queues.entry(name.clone()).or_default().insert(broker_name.to_string(), qd);
        }
        self.topic_queues.retain(|_, q| !q.is_empty());
    }

    /// Removes one broker process; returns whether it was known.
    pub fn unregister(&mut self, broker_addr: &str) -> bool {
        let Some(live) = self.live.remove(broker_addr) else { return false };
        tracing::info!(broker = %live.broker_name, addr = broker_addr, id = live.broker_id, "broker removed");
        let mut group_empty = false;
        if let Some(data) = self.brokers.get_mut(&live.broker_name) {
            data.broker_addrs.retain(|_, a| a != broker_addr);
            group_empty = data.broker_addrs.is_empty();
        }
        if group_empty {
            self.brokers.remove(&live.broker_name);
            if let Some(names) = self.clusters.get_mut(&live.cluster) {
                names.remove(&live.broker_name);
                if names.is_empty() {
                    self.clusters.remove(&live.cluster);
                }
            }
            for queues in self.topic_queues.values_mut() {
                queues.remove(&live.broker_name);
            }
            self.topic_queues.retain(|_, q| !q.is_empty());
        }
        true
    }

    /// Removes brokers silent for longer than `expiry`; returns their addresses.
    pub fn expire(&mut self, now: Instant, expiry: Duration) -> Vec<String> {
        let dead: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.last_update) > expiry)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in &dead {
            tracing::warn!(addr = %addr, expiry_ms = expiry.as_millis() as u64, "broker expired");
            self.unregister(addr);
        }
        dead
    }

    /// Removes the brokers that registered over a connection that closed.
    pub fn connection_closed(&mut self, connection_id: u64) -> Vec<String> {
        let gone: Vec<String> =
            self.live.iter().filter(|(_, l)| l.connection_id == connection_id).map(|(a, _)| a.clone()).collect();
        for addr in &gone {
            self.unregister(addr);
        }
        gone
    }

    /// The route of `topic`, or `None` when no live broker serves it.
    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let queues = self.topic_queues.get(topic)?;
        let queue_datas: Vec<QueueData> = queues.values().cloned().collect();
        let broker_datas: Vec<BrokerData> = queues
            .keys()
            .filter_map(|name| self.brokers.get(name))
            .filter(|b| !b.broker_addrs.is_empty())
            .cloned()
            .collect();
        if broker_datas.is_empty() {
            return None;
        }
        Some(TopicRouteData { order_topic_conf: None, queue_datas, broker_datas, filter_server_table: BTreeMap::new() })
    }

    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo { broker_addr_table: self.brokers.clone(), cluster_addr_table: self.clusters.clone() }
    }

    pub fn topics(&self) -> TopicList {
        TopicList { topic_list: self.topic_queues.keys().cloned().collect(), broker_addr: None }
    }

    pub fn topics_of_cluster(&self, cluster: &str) -> TopicList {
        let names = self.clusters.get(cluster).cloned().unwrap_or_default();
        let topic_list = self
            .topic_queues
            .iter()
            .filter(|(_, q)| q.keys().any(|b| names.contains(b)))
            .map(|(t, _)| t.clone())
            .collect();
        TopicList { topic_list, broker_addr: None }
    }

    /// Deletes a topic's routes, from one cluster's brokers or from all.
    pub fn delete_topic(&mut self, topic: &str, cluster: Option<&str>) -> bool {
        match cluster.filter(|c| !c.is_empty()) {
            None => self.topic_queues.remove(topic).is_some(),
            Some(c) => {
                let names = self.clusters.get(c).cloned().unwrap_or_default();
                let Some(queues) = self.topic_queues.get_mut(topic) else { return false };
                let before = queues.len();
                queues.retain(|b, _| !names.contains(b));
                let removed = queues.len() != before;
                if queues.is_empty() {
                    self.topic_queues.remove(topic);
                }
                removed
            }
        }
    }

    pub fn is_live(&self, broker_addr: &str) -> bool {
        self.live.contains_key(broker_addr)
    }

    pub fn live_broker_count(&self) -> usize {
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_remoting::protocol::TopicConfig;

    fn reg(addr: &str, name: &str, id: i64, topics: &[&str], version: i64, conn: u64) -> Registration {
        let mut w = TopicConfigSerializeWrapper::default();
        for t in topics {
            w.topic_config_table.insert(t.to_string(), TopicConfig::new(t, 4, 6));
        }
        w.data_version = DataVersion { timestamp: 1, counter: version };
        Registration {
            cluster: "c".into(),
            broker_addr: addr.into(),
            broker_name: name.into(),
            broker_id: id,
            ha_server_addr: format!("{addr}-ha"),
            topics: w,
            connection_id: conn,
        }
    }

    #[test]
    fn master_and_slave_share_one_route_and_slave_learns_master() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        assert_eq!(r.register(reg("m:1", "b", 0, &["T"], 1, 1), t0), RegisterAnswer::default());
        let ans = r.register(reg("s:1", "b", 1, &["T"], 1, 2), t0);
        assert_eq!(ans.master_addr.as_deref(), Some("m:1"));
        assert_eq!(ans.ha_server_addr.as_deref(), Some("m:1-ha"));
        let route = r.route("T").unwrap();
        assert_eq!(route.queue_datas.len(), 1);
        assert_eq!(route.broker_datas[0].broker_addrs.len(), 2);
        assert!(r.route("nope").is_none());
    }

    #[test]
    fn silent_brokers_expire_and_take_their_routes_along() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m1:1", "b1", 0, &["T", "U"], 1, 1), t0);
        r.register(reg("m2:1", "b2", 0, &["T"], 1, 2), t0);
        r.register(reg("m2:1", "b2", 0, &["T"], 1, 2), t0 + Duration::from_secs(8));
        let gone = r.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(gone, vec!["m1:1".to_string()]);
        assert!(r.route("U").is_none());
        assert_eq!(r.route("T").unwrap().broker_datas.len(), 1);
        assert_eq!(r.cluster_info().cluster_addr_table["c"], BTreeSet::from(["b2".to_string()]));
    }

    #[test]
    fn closed_connection_removes_at_once_and_new_topic_table_replaces_old() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &["T", "U"], 1, 7), t0);
        r.register(reg("m:1", "b", 0, &["T"], 2, 7), t0);
        assert!(r.route("U").is_none(), "a topic the master dropped leaves the route");
        assert_eq!(r.topics().topic_list.len(), 1);
        assert_eq!(r.connection_closed(7), vec!["m:1".to_string()]);
        assert!(r.route("T").is_none());
        assert_eq!(r.live_broker_count(), 0);
    }

    #[test]
    fn delete_topic_by_cluster_and_topics_of_cluster() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &["T", "U"], 1, 1), t0);
        assert_eq!(r.topics_of_cluster("c").topic_list.len(), 2);
        assert!(r.topics_of_cluster("other").topic_list.is_empty());
        assert!(r.delete_topic("T", Some("c")));
        assert!(!r.delete_topic("T", None));
        assert!(r.delete_topic("U", None));
        assert!(r.topics().topic_list.is_empty());
    }
}
