//! The broker's topic table, persisted as `config/topics.json`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use spate_remoting::protocol::{
    perm, retry_topic, DataVersion, TopicConfig, TopicConfigSerializeWrapper, DEFAULT_TOPIC,
};

use crate::error::BrokerError;
use crate::persist;

/// Most queues a topic may have on one broker (shared with the name server,
/// which refuses to route more).
pub use spate_remoting::protocol::MAX_QUEUE_NUMS;
/// Most topics one broker holds: each queue costs files and mappings, and
/// the whole table must fit one REGISTER_BROKER frame (16 MiB, ~170 bytes a topic).
pub const MAX_TOPICS: usize = 50_000;

/// Topics and their queue counts and permissions.
pub struct TopicTable {
    table: Arc<RwLock<TopicConfigSerializeWrapper>>,
    path: PathBuf,
    writer: persist::TableWriter,
    counter: Mutex<i64>,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl TopicTable {
    /// Loads the table (blocking; at start-up).
    pub fn load(root: &std::path::Path) -> Result<TopicTable, BrokerError> {
        let path = persist::config_path(root, "topics.json");
        let mut table: TopicConfigSerializeWrapper = persist::load(&path)?.unwrap_or_default();
        // A file edited by hand (or written by an older build) may hold a
        // name or a queue count no request could set: left out, loudly.
        table.topic_config_table.retain(|name, tc| {
            let ok = acceptable(name, tc);
            if !ok {
                tracing::error!(topic = %name.chars().take(200).collect::<String>(), "invalid topic in topics.json ignored");
            }
            ok
        });
        let counter = table.data_version.counter;
        Ok(TopicTable {
            table: Arc::new(RwLock::new(table)),
            path,
            writer: Default::default(),
            counter: Mutex::new(counter),
        })
    }

    /// Creates the topics every broker has: TBW102 (when auto-creation is
    /// on), SELF_TEST_TOPIC, and topics named after the cluster and broker.
    pub fn ensure_system_topics(&self, cluster: &str, broker: &str, auto_create: bool, default_queues: i32) {
        let mut wanted = vec![
            TopicConfig::new(crate::names::SELF_TEST_TOPIC, 1, perm::READ | perm::WRITE),
            TopicConfig::new(cluster, 16, perm::READ | perm::WRITE),
            TopicConfig::new(broker, 1, perm::READ | perm::WRITE),
        ];
        if auto_create {
            wanted.push(TopicConfig::new(DEFAULT_TOPIC, default_queues, perm::READ | perm::WRITE | perm::INHERIT));
        }
        for tc in wanted {
            // A cluster or broker name with a character topics may not have
            // (a '.') has no topic of its own, as a name it is not.
            if spate_common::message::validate_topic(&tc.topic_name).is_err() {
                tracing::info!(name = %tc.topic_name, "no topic named after this cluster or broker: not a valid topic name");
                continue;
            }
            if self.get(&tc.topic_name).is_none() {
                self.upsert(tc);
            }
        }
        if !auto_create && self.delete(DEFAULT_TOPIC) {
            tracing::info!("autoCreateTopicEnable is off: TBW102 removed");
        }
    }

    pub fn get(&self, topic: &str) -> Option<TopicConfig> {
        self.table.read().topic_config_table.get(topic).cloned()
    }

    /// Adds or replaces a topic; false when the table is full, or when the
    /// name or queue counts are not ones a request may set (callers check
    /// first and say why; this is the last gate before a name can become a
    /// queue directory).
    pub fn upsert(&self, tc: TopicConfig) -> bool {
        if !acceptable(&tc.topic_name, &tc) {
            tracing::error!(topic = %tc.topic_name.chars().take(200).collect::<String>(), "invalid topic refused");
            return false;
        }
        let mut t = self.table.write();
        if !t.topic_config_table.contains_key(&tc.topic_name) && t.topic_config_table.len() >= MAX_TOPICS {
            return false;
        }
        t.topic_config_table.insert(tc.topic_name.clone(), tc);
        t.data_version = self.next_version();
        true
    }

    pub fn delete(&self, topic: &str) -> bool {
        let mut t = self.table.write();
        let removed = t.topic_config_table.remove(topic).is_some();
        if removed {
            t.data_version = self.next_version();
        }
        removed
    }

    fn next_version(&self) -> DataVersion {
        let mut c = self.counter.lock();
        *c += 1;
        DataVersion { timestamp: now_ms(), counter: *c }
    }

    /// Upstream's send-time creation: an unknown topic whose producer names a
    /// default topic with INHERIT permission is created with
    /// min(requested, default's) queues. Returns the new config.
    pub fn create_on_send(&self, topic: &str, default_topic: &str, requested_queues: i32) -> Option<TopicConfig> {
        if let Some(tc) = self.get(topic) {
            return Some(tc);
        }
        let template = self.get(default_topic)?;
        if template.perm & perm::INHERIT == 0 {
            return None;
        }
        let queues = requested_queues.clamp(1, template.write_queue_nums.max(1));
        let tc = TopicConfig::new(topic, queues, template.perm & !perm::INHERIT);
        self.upsert(tc.clone()).then_some(tc)
    }

    /// A consumer group's retry topic, created on first need.
    pub fn ensure_retry_topic(&self, group: &str, queues: i32) -> Option<TopicConfig> {
        let name = retry_topic(group);
        if let Some(tc) = self.get(&name) {
            return Some(tc);
        }
        let tc = TopicConfig::new(&name, queues.max(1), perm::READ | perm::WRITE);
        self.upsert(tc.clone()).then_some(tc)
    }

    /// A slave takes its master's table as is; returns whether it changed
    /// (a different data version), so the slave re-registers and persists.
    pub fn replace_from_master(&self, mut from_master: TopicConfigSerializeWrapper) -> bool {
        let mut t = self.table.write();
        if t.data_version == from_master.data_version {
            return false;
        }
        from_master.topic_config_table.retain(|name, tc| acceptable(name, tc));
        if from_master.topic_config_table.len() > MAX_TOPICS {
            let keep: Vec<String> = from_master.topic_config_table.keys().take(MAX_TOPICS).cloned().collect();
            from_master.topic_config_table.retain(|k, _| keep.contains(k));
        }
        *t = from_master;
        true
    }

    /// The table with its version, for registration and GET_ALL_TOPIC_CONFIG.
    pub fn snapshot(&self) -> TopicConfigSerializeWrapper {
        self.table.read().clone()
    }

    pub fn len(&self) -> usize {
        self.table.read().topic_config_table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the current table to disk off the async workers.
    pub async fn persist(&self) -> Result<(), BrokerError> {
        let table = self.table.clone();
        self.writer
            .write(self.path.clone(), move || Some(serde_json::to_vec_pretty(&*table.read()).unwrap_or_default()))
            .await
    }
}

/// Whether a topic entry is one a request could have made: a valid name
/// matching its key, and queue counts within 0..=[`MAX_QUEUE_NUMS`].
fn acceptable(name: &str, tc: &TopicConfig) -> bool {
    spate_common::message::validate_topic(name).is_ok()
        && tc.topic_name == name
        && (0..=MAX_QUEUE_NUMS).contains(&tc.read_queue_nums)
        && (0..=MAX_QUEUE_NUMS).contains(&tc.write_queue_nums)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_time_creation_follows_the_default_topic() {
        let dir = tempfile::tempdir().unwrap();
        let t = TopicTable::load(dir.path()).unwrap();
        t.ensure_system_topics("c", "b", true, 8);
        let tc = t.create_on_send("NewTopic", DEFAULT_TOPIC, 4).unwrap();
        assert_eq!((tc.read_queue_nums, tc.write_queue_nums, tc.perm), (4, 4, 6));
        let tc = t.create_on_send("Big", DEFAULT_TOPIC, 64).unwrap();
        assert_eq!(tc.write_queue_nums, 8, "capped by TBW102's queues");
        assert!(t.create_on_send("X", "NoSuchDefault", 4).is_none());
        assert!(t.create_on_send("Y", "SELF_TEST_TOPIC", 4).is_none(), "no INHERIT, no creation");
    }

    #[tokio::test]
    async fn table_survives_reload_and_version_moves() {
        let dir = tempfile::tempdir().unwrap();
        let t = TopicTable::load(dir.path()).unwrap();
        t.ensure_system_topics("c", "b", false, 8);
        let v1 = t.snapshot().data_version;
        t.upsert(TopicConfig::new("T", 3, 6));
        assert_ne!(t.snapshot().data_version, v1);
        t.persist().await.unwrap();
        let again = TopicTable::load(dir.path()).unwrap();
        assert_eq!(again.get("T").unwrap().write_queue_nums, 3);
        assert!(again.get(DEFAULT_TOPIC).is_none());
    }
}
