//! Topic routes and cluster membership as the name server serves them.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::json::string;

/// Broker id of a replica group's master.
pub const MASTER_ID: i64 = 0;

/// One broker group's queues for a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct QueueData {
    pub broker_name: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
    pub topic_sys_flag: i32,
}

/// One replica group: its cluster, name and the address of each broker id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    pub broker_addrs: BTreeMap<i64, String>,
    /// Upstream 5.x field; some clients refuse a route without it.
    pub enable_acting_master: bool,
}

impl BrokerData {
    /// The master's address, if the group has one registered.
    pub fn master_addr(&self) -> Option<&str> {
        self.broker_addrs.get(&MASTER_ID).map(String::as_str)
    }

    /// fastjson's shape: `brokerAddrs` keys are bare numbers.
    pub fn to_fastjson(&self) -> String {
        let addrs: Vec<String> = self.broker_addrs.iter().map(|(id, a)| format!("{id}:{}", string(a))).collect();
        format!(
            "{{\"brokerAddrs\":{{{}}},\"brokerName\":{},\"cluster\":{},\"enableActingMaster\":{}}}",
            addrs.join(","),
            string(&self.broker_name),
            string(&self.cluster),
            self.enable_acting_master
        )
    }
}

/// The body of GET_ROUTEINFO_BY_TOPIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicRouteData {
    pub order_topic_conf: Option<String>,
    pub queue_datas: Vec<QueueData>,
    pub broker_datas: Vec<BrokerData>,
    pub filter_server_table: BTreeMap<String, Vec<String>>,
}

impl TopicRouteData {
    /// Encodes as upstream does, numeric `brokerAddrs` keys included.
    pub fn to_fastjson(&self) -> String {
        let brokers: Vec<String> = self.broker_datas.iter().map(BrokerData::to_fastjson).collect();
        let queues = serde_json::to_string(&self.queue_datas).unwrap_or_else(|_| "[]".into());
        let mut out = format!("{{\"brokerDatas\":[{}],\"filterServerTable\":{{}},", brokers.join(","));
        if let Some(conf) = &self.order_topic_conf {
            out.push_str(&format!("\"orderTopicConf\":{},", string(conf)));
        }
        out.push_str(&format!("\"queueDatas\":{queues}}}"));
        out
    }
}

/// The body of GET_BROKER_CLUSTER_INFO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct ClusterInfo {
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

impl ClusterInfo {
    /// Encodes as upstream does, numeric `brokerAddrs` keys included.
    pub fn to_fastjson(&self) -> String {
        let brokers: Vec<String> =
            self.broker_addr_table.iter().map(|(name, b)| format!("{}:{}", string(name), b.to_fastjson())).collect();
        let clusters = serde_json::to_string(&self.cluster_addr_table).unwrap_or_else(|_| "{}".into());
        format!("{{\"brokerAddrTable\":{{{}}},\"clusterAddrTable\":{clusters}}}", brokers.join(","))
    }
}

/// The body of the topic-list requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicList {
    pub topic_list: BTreeSet<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broker_addr: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::json::decode;

    fn sample() -> TopicRouteData {
        TopicRouteData {
            order_topic_conf: None,
            queue_datas: vec![QueueData {
                broker_name: "b1".into(),
                read_queue_nums: 4,
                write_queue_nums: 4,
                perm: 6,
                topic_sys_flag: 0,
            }],
            broker_datas: vec![BrokerData {
                cluster: "c".into(),
                broker_name: "b1".into(),
                broker_addrs: BTreeMap::from([(0, "127.0.0.1:10911".into()), (1, "127.0.0.1:10921".into())]),
                enable_acting_master: false,
            }],
            filter_server_table: BTreeMap::new(),
        }
    }

    #[test]
    fn route_data_uses_bare_numeric_keys_and_decodes_back() {
        let text = sample().to_fastjson();
        assert!(text.contains(r#""brokerAddrs":{0:"127.0.0.1:10911",1:"127.0.0.1:10921"}"#), "{text}");
        let back: TopicRouteData = decode(text.as_bytes(), "route").unwrap();
        assert_eq!(back, sample());
        assert_eq!(back.broker_datas[0].master_addr(), Some("127.0.0.1:10911"));
    }

    #[test]
    fn cluster_info_round_trips() {
        let mut info = ClusterInfo::default();
        info.broker_addr_table.insert("b1".into(), sample().broker_datas[0].clone());
        info.cluster_addr_table.insert("c".into(), BTreeSet::from(["b1".to_string()]));
        let back: ClusterInfo = decode(info.to_fastjson().as_bytes(), "cluster").unwrap();
        assert_eq!(back, info);
    }
}
