//! The name server's tables: which brokers are alive, what topics they
//! serve. Pure data with an explicit clock, so expiry is tested without
//! waiting.
//!
//! A group's topics are derived, not patched: every registration of the
//! group's master replaces them with the table it carries. Nothing is
//! skipped because the broker's data version is unchanged, so whatever
//! disturbed the routes (a DELETE_TOPIC_IN_NAMESRV, a registration under the
//! same name from elsewhere that then went away) lasts at most until the
//! master's next registration (`registerNameServerPeriod`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use spate_common::message::{validate_topic, TOPIC_MAX_LEN};
use spate_remoting::protocol::{
    perm, BrokerData, ClusterInfo, QueueData, TopicConfig, TopicConfigSerializeWrapper, TopicList, TopicRouteData,
    MASTER_ID, MAX_QUEUE_NUMS,
};

/// Most broker processes one name server tracks.
pub const MAX_LIVE_BROKERS: usize = 10_000;
/// Longest broker or cluster name accepted (the same bound as a topic name).
pub const MAX_NAME_LEN: usize = 127;
/// Longest `host:port` accepted (a DNS name is at most 253 characters).
pub const MAX_ADDR_LEN: usize = 261;

/// One live broker process, keyed by its address.
#[derive(Debug, Clone)]
struct LiveBroker {
    cluster: String,
    broker_name: String,
    broker_id: i64,
    last_update: Instant,
    ha_server_addr: String,
    /// The connection it registered over; its close removes the broker at once.
    connection_id: u64,
}

/// A REGISTER_BROKER call as it arrived; [`Registration::check`] turns it
/// into something [`Routes::register`] accepts.
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

/// A registration that cannot be accepted at all: the broker's identity is
/// malformed, so nothing it says can be filed under it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {reason}")]
pub struct RegistrationError {
    /// The request field at fault (`brokerName`, `clusterName`, ...).
    pub field: &'static str,
    pub reason: String,
}

/// A topic entry left out of a registration, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedTopic {
    /// The name as sent, cut to [`TOPIC_MAX_LEN`] characters and escaped,
    /// fit for a log line.
    pub topic: String,
    pub reason: String,
}

/// A registration whose identity is well formed and whose topic table
/// holds only entries fit to hand to clients.
#[derive(Debug, Clone)]
pub struct CheckedRegistration {
    reg: Registration,
    skipped: Vec<SkippedTopic>,
}

impl CheckedRegistration {
    /// The topic entries that were dropped; the rest of the table stands.
    pub fn skipped(&self) -> &[SkippedTopic] {
        &self.skipped
    }
}

impl Registration {
    /// Validates the identity (refused whole when bad) and each topic entry
    /// (a bad one is dropped, so one malformed entry never takes a real
    /// broker's valid topics off the routes).
    pub fn check(mut self) -> Result<CheckedRegistration, RegistrationError> {
        check_name("brokerName", &self.broker_name)?;
        check_name("clusterName", &self.cluster)?;
        check_addr("brokerAddr", &self.broker_addr)?;
        if !self.ha_server_addr.is_empty() {
            check_addr("haServerAddr", &self.ha_server_addr)?;
        }
        let mut skipped = Vec::new();
        self.topics.topic_config_table.retain(|name, tc| match check_topic(name, tc) {
            Ok(()) => true,
            Err(reason) => {
                let shown = name.chars().take(TOPIC_MAX_LEN).collect::<String>().escape_default().to_string();
                skipped.push(SkippedTopic { topic: shown, reason });
                false
            }
        });
        Ok(CheckedRegistration { reg: self, skipped })
    }
}

/// Broker and cluster names: what RocketMQ deployments use (host-like
/// names), nothing that could confuse a log line or a `;`-separated list.
fn check_name(field: &'static str, name: &str) -> Result<(), RegistrationError> {
    let bad = |reason: String| Err(RegistrationError { field, reason });
    if name.is_empty() {
        return bad("is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return bad(format!("is {} characters, more than {MAX_NAME_LEN}", name.len()));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return bad(format!("`{}` may hold only letters, digits, '-', '_' and '.'", name.escape_default()));
    }
    Ok(())
}

/// `host:port`, the host a name, an IPv4 address or a bracketed IPv6 one.
fn check_addr(field: &'static str, addr: &str) -> Result<(), RegistrationError> {
    let bad = |reason: String| Err(RegistrationError { field, reason });
    if addr.is_empty() {
        return bad("is empty".into());
    }
    if addr.len() > MAX_ADDR_LEN {
        return bad(format!("is {} characters, more than {MAX_ADDR_LEN}", addr.len()));
    }
    let shown = addr.escape_default();
    let Some((host, port)) = addr.rsplit_once(':') else {
        return bad(format!("`{shown}` is not host:port"));
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
        return bad(format!("`{shown}` has no valid port"));
    }
    if host.is_empty()
        || !host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'[' | b']'))
    {
        return bad(format!("`{shown}` has no valid host"));
    }
    Ok(())
}

/// One topic entry: a name clients can use, queue counts a client can
/// iterate, a perm made of defined bits.
fn check_topic(name: &str, tc: &TopicConfig) -> Result<(), String> {
    validate_topic(name).map_err(|e| e.to_string())?;
    for (field, n) in [("readQueueNums", tc.read_queue_nums), ("writeQueueNums", tc.write_queue_nums)] {
        if !(0..=MAX_QUEUE_NUMS).contains(&n) {
            return Err(format!("{field} {n} is out of range 0..={MAX_QUEUE_NUMS}"));
        }
    }
    if tc.perm & !perm::ALL != 0 || tc.perm < 0 {
        return Err(format!("perm {} has bits outside {}", tc.perm, perm::ALL));
    }
    Ok(())
}

/// Whether a group's queue entry already says what `tc` says.
fn same_queues(qd: &QueueData, tc: &TopicConfig) -> bool {
    qd.read_queue_nums == tc.read_queue_nums
        && qd.write_queue_nums == tc.write_queue_nums
        && qd.perm == tc.perm
        && qd.topic_sys_flag == tc.topic_sys_flag
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
    /// topic -> group -> queues: what routes are read from.
    topic_queues: BTreeMap<String, BTreeMap<String, QueueData>>,
    /// group -> the topics its master last registered, so the next
    /// registration knows what it drops without scanning every topic.
    group_topics: HashMap<String, BTreeSet<String>>,
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    live: HashMap<String, LiveBroker>,
}

impl Routes {
    /// Records a registration (new broker or periodic refresh).
    pub fn register(&mut self, checked: CheckedRegistration, now: Instant) -> RegisterAnswer {
        let reg = checked.reg;
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

        // Every master registration, changed version or not: the version is
        // the broker's, and cannot tell that the name server's copy was
        // disturbed since.
        if reg.broker_id == MASTER_ID {
            self.apply_topics(&reg.broker_name, &reg.topics.topic_config_table);
        }
        self.live.insert(
            reg.broker_addr.clone(),
            LiveBroker {
                cluster: reg.cluster.clone(),
                broker_name: reg.broker_name.clone(),
                broker_id: reg.broker_id,
                last_update: now,
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

    /// Makes the group's queues exactly `table`. Runs every few seconds per
    /// group with up to tens of thousands of topics, so it writes only what
    /// differs: an unchanged table costs lookups, no allocation.
    fn apply_topics(&mut self, broker_name: &str, table: &BTreeMap<String, TopicConfig>) {
        let mut served = self.group_topics.remove(broker_name).unwrap_or_default();
        // Usually the same names as last time: one sorted walk proves it and
        // saves a set lookup per topic.
        let same_names = served.iter().eq(table.keys());
        if !same_names {
            served.retain(|topic| {
                let kept = table.contains_key(topic);
                if !kept {
                    self.remove_queues(topic, broker_name);
                }
                kept
            });
        }
        for (topic, tc) in table {
            let queues = match self.topic_queues.get_mut(topic) {
                Some(q) => q,
                None => self.topic_queues.entry(topic.clone()).or_default(),
            };
            if !queues.get(broker_name).is_some_and(|qd| same_queues(qd, tc)) {
                queues.insert(
                    broker_name.to_string(),
                    QueueData {
                        broker_name: broker_name.to_string(),
                        read_queue_nums: tc.read_queue_nums,
                        write_queue_nums: tc.write_queue_nums,
                        perm: tc.perm,
                        topic_sys_flag: tc.topic_sys_flag,
                    },
                );
            }
            if !same_names && !served.contains(topic) {
                served.insert(topic.clone());
            }
        }
        debug_assert_eq!(served.len(), table.len());
        if !served.is_empty() {
            self.group_topics.insert(broker_name.to_string(), served);
        }
    }

    /// Drops one group's queues of `topic`, and the topic once no group serves it.
    fn remove_queues(&mut self, topic: &str, broker_name: &str) {
        if let Some(queues) = self.topic_queues.get_mut(topic) {
            queues.remove(broker_name);
            if queues.is_empty() {
                self.topic_queues.remove(topic);
            }
        }
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
            for topic in self.group_topics.remove(&live.broker_name).unwrap_or_default() {
                self.remove_queues(&topic, &live.broker_name);
            }
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
    use spate_remoting::protocol::DataVersion;

    fn table(topics: &[&str], version: i64) -> TopicConfigSerializeWrapper {
        let mut w = TopicConfigSerializeWrapper::default();
        for t in topics {
            w.topic_config_table.insert(t.to_string(), TopicConfig::new(t, 4, 6));
        }
        w.data_version = DataVersion { timestamp: 1, counter: version };
        w
    }

    fn raw(addr: &str, name: &str, id: i64, topics: TopicConfigSerializeWrapper, conn: u64) -> Registration {
        Registration {
            cluster: "c".into(),
            broker_addr: addr.into(),
            broker_name: name.into(),
            broker_id: id,
            ha_server_addr: format!("ha-{addr}"),
            topics,
            connection_id: conn,
        }
    }

    fn reg(addr: &str, name: &str, id: i64, topics: &[&str], version: i64, conn: u64) -> CheckedRegistration {
        raw(addr, name, id, table(topics, version), conn).check().expect("a valid registration")
    }

    #[test]
    fn master_and_slave_share_one_route_and_slave_learns_master() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        assert_eq!(r.register(reg("m:1", "b", 0, &["T"], 1, 1), t0), RegisterAnswer::default());
        let ans = r.register(reg("s:1", "b", 1, &["T"], 1, 2), t0);
        assert_eq!(ans.master_addr.as_deref(), Some("m:1"));
        assert_eq!(ans.ha_server_addr.as_deref(), Some("ha-m:1"));
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

    #[test]
    fn a_topic_deleted_on_the_name_server_returns_with_the_next_registration_at_the_same_version() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &["T", "U"], 1, 1), t0);
        assert!(r.delete_topic("T", None));
        assert!(r.route("T").is_none());
        r.register(reg("m:1", "b", 0, &["T", "U"], 1, 1), t0 + Duration::from_secs(5));
        assert_eq!(r.route("T").expect("T routed again").queue_datas[0].broker_name, "b");
        assert!(r.delete_topic("U", Some("c")));
        r.register(reg("m:1", "b", 0, &["T", "U"], 1, 1), t0 + Duration::from_secs(10));
        assert!(r.route("U").is_some(), "a cluster-scoped deletion heals the same way");
    }

    #[test]
    fn a_namesake_that_registers_and_disconnects_loses_the_routes_for_one_period_only() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("real:1", "b", 0, &["T"], 7, 1), t0);
        // Same group name, another address and connection, no topics.
        r.register(reg("fake:1", "b", 0, &[], 1, 2), t0);
        assert!(r.route("T").is_none(), "the namesake's empty table replaced the group's");
        assert_eq!(r.connection_closed(2), vec!["fake:1".to_string()]);
        assert!(r.route("T").is_none());
        // The real master's periodic registration, its version unchanged.
        r.register(reg("real:1", "b", 0, &["T"], 7, 1), t0 + Duration::from_secs(5));
        let route = r.route("T").expect("routes restored by the real master");
        assert_eq!(route.broker_datas[0].master_addr(), Some("real:1"));
        assert_eq!(r.cluster_info().cluster_addr_table["c"], BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn a_perm_change_at_the_same_version_reaches_the_route() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &["T"], 3, 1), t0);
        let mut read_only = table(&["T"], 3);
        read_only.topic_config_table.values_mut().for_each(|tc| tc.perm = perm::READ);
        r.register(raw("m:1", "b", 0, read_only, 1).check().unwrap(), t0);
        assert_eq!(r.route("T").unwrap().queue_datas[0].perm, perm::READ);
        r.register(reg("m:1", "b", 0, &["T"], 3, 1), t0);
        assert_eq!(r.route("T").unwrap().queue_datas[0].perm, perm::READ | perm::WRITE);
    }

    #[test]
    fn a_slave_registration_does_not_replace_the_group_topics() {
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &["T"], 1, 1), t0);
        r.register(reg("s:1", "b", 1, &[], 1, 2), t0);
        assert!(r.route("T").is_some());
    }

    #[test]
    fn bad_topic_entries_are_skipped_and_the_rest_routed() {
        let mut w = table(&["Good"], 1);
        let mut put = |name: &str, read: i32, write: i32, p: i32| {
            let mut tc = TopicConfig::new(name, write, p);
            tc.read_queue_nums = read;
            w.topic_config_table.insert(name.to_string(), tc);
        };
        put("NegativeRead", -5, 4, 6);
        put("HugeWrite", 4, i32::MAX, 6);
        put("AtTheMax", MAX_QUEUE_NUMS, 0, perm::ALL);
        put("OddPerm", 4, 4, 16);
        put("NegativePerm", 4, 4, -1);
        put("bad name", 4, 4, 6);
        put("", 4, 4, 6);
        let checked = raw("m:1", "b", 0, w, 1).check().expect("the identity is fine");
        let mut skipped: Vec<&str> = checked.skipped().iter().map(|s| s.topic.as_str()).collect();
        skipped.sort();
        assert_eq!(skipped, ["", "HugeWrite", "NegativePerm", "NegativeRead", "OddPerm", "bad name"]);
        let reason = |t: &str| checked.skipped().iter().find(|s| s.topic == t).unwrap().reason.clone();
        assert!(reason("NegativeRead").contains("readQueueNums -5"), "{}", reason("NegativeRead"));
        assert!(reason("HugeWrite").contains("writeQueueNums 2147483647"), "{}", reason("HugeWrite"));
        assert!(reason("OddPerm").contains("perm 16"), "{}", reason("OddPerm"));
        let mut r = Routes::default();
        r.register(checked, Instant::now());
        let mut routed = r.topics().topic_list.into_iter().collect::<Vec<_>>();
        routed.sort();
        assert_eq!(routed, ["AtTheMax", "Good"]);
    }

    #[test]
    fn a_malformed_identity_is_refused_naming_the_field() {
        let field = |f: fn(&mut Registration)| {
            let mut reg = raw("m:1", "b", 0, table(&["T"], 1), 1);
            f(&mut reg);
            reg.check().map(|_| ()).map_err(|e| e.field)
        };
        assert_eq!(field(|_| ()), Ok(()));
        assert_eq!(field(|r| r.broker_name.clear()), Err("brokerName"));
        assert_eq!(field(|r| r.broker_name = "b\nforged log line".into()), Err("brokerName"));
        assert_eq!(field(|r| r.broker_name = "x".repeat(MAX_NAME_LEN + 1)), Err("brokerName"));
        assert_eq!(field(|r| r.cluster = "a;b".into()), Err("clusterName"));
        assert_eq!(field(|r| r.broker_addr.clear()), Err("brokerAddr"));
        assert_eq!(field(|r| r.broker_addr = "nohost".into()), Err("brokerAddr"));
        assert_eq!(field(|r| r.broker_addr = "h:0".into()), Err("brokerAddr"));
        assert_eq!(field(|r| r.broker_addr = ":10911".into()), Err("brokerAddr"));
        assert_eq!(field(|r| r.broker_addr = "h o:1".into()), Err("brokerAddr"));
        assert_eq!(field(|r| r.ha_server_addr = "h:70000".into()), Err("haServerAddr"));
        assert_eq!(field(|r| r.ha_server_addr.clear()), Ok(()));
        assert_eq!(field(|r| r.broker_addr = "[::1]:10911".into()), Ok(()));
        assert_eq!(field(|r| r.broker_name = "broker-a_1.x".into()), Ok(()));
    }

    /// Every registration now re-applies the table, so it must stay cheap at
    /// the broker's topic maximum; this measures it roughly (debug build).
    #[test]
    fn re_registering_fifty_thousand_unchanged_topics_is_cheap() {
        let names: Vec<String> = (0..50_000).map(|i| format!("topic-{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut r = Routes::default();
        let t0 = Instant::now();
        r.register(reg("m:1", "b", 0, &refs, 1, 1), t0);
        let again = reg("m:1", "b", 0, &refs, 1, 1);
        let started = Instant::now();
        r.register(again, t0);
        let took = started.elapsed();
        eprintln!("re-registration of {} unchanged topics took {took:?}", refs.len());
        assert_eq!(r.topics().topic_list.len(), 50_000);
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
}
