//! Consumer offsets committed by clustering consumers, persisted as
//! `config/consumerOffset.json` every `flushConsumerOffsetInterval` and at
//! shutdown. Keys are `topic@group`, as upstream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::BrokerError;
use crate::persist;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct OffsetFile {
    offset_table: BTreeMap<String, BTreeMap<i32, i64>>,
}

/// Committed offsets by group, topic and queue.
pub struct ConsumerOffsets {
    table: Arc<Mutex<OffsetFile>>,
    dirty: Arc<AtomicBool>,
    path: PathBuf,
    writer: persist::TableWriter,
}

/// Most `topic@group` entries a slave takes from its master.
pub const MAX_OFFSET_KEYS: usize = 1_000_000;

fn key(topic: &str, group: &str) -> String {
    format!("{topic}@{group}")
}

impl ConsumerOffsets {
    /// Loads the offsets (blocking; at start-up).
    pub fn load(root: &std::path::Path) -> Result<ConsumerOffsets, BrokerError> {
        let path = persist::config_path(root, "consumerOffset.json");
        let table = persist::load(&path)?.unwrap_or_default();
        Ok(ConsumerOffsets {
            table: Arc::new(Mutex::new(table)),
            dirty: Arc::new(AtomicBool::new(false)),
            path,
            writer: Default::default(),
        })
    }

    pub fn commit(&self, group: &str, topic: &str, queue_id: i32, offset: i64) {
        self.table.lock().offset_table.entry(key(topic, group)).or_default().insert(queue_id, offset);
        self.dirty.store(true, Ordering::Release);
    }

    pub fn query(&self, group: &str, topic: &str, queue_id: i32) -> Option<i64> {
        self.table.lock().offset_table.get(&key(topic, group)).and_then(|q| q.get(&queue_id).copied())
    }

    /// Every queue's offset for `group` on `topic`.
    pub fn queues(&self, group: &str, topic: &str) -> BTreeMap<i32, i64> {
        self.table.lock().offset_table.get(&key(topic, group)).cloned().unwrap_or_default()
    }

    /// Topics `group` has committed offsets for.
    pub fn topics_of_group(&self, group: &str) -> Vec<String> {
        let suffix = format!("@{group}");
        self.table.lock().offset_table.keys().filter_map(|k| k.strip_suffix(&suffix).map(str::to_string)).collect()
    }

    /// Every committed offset as (group, topic, queue id, offset).
    pub fn all(&self) -> Vec<(String, String, i32, i64)> {
        let t = self.table.lock();
        let mut out = Vec::new();
        for (key, queues) in &t.offset_table {
            let Some((topic, group)) = key.split_once('@') else { continue };
            for (q, o) in queues {
                out.push((group.to_string(), topic.to_string(), *q, *o));
            }
        }
        out
    }

    /// The whole table as GET_ALL_CONSUMER_OFFSET's body (`offsetTable`).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.table.lock()).unwrap_or_default()
    }

    /// A slave takes its master's offsets: every queue the master has is
    /// overwritten with the master's value (a reset there reaches the
    /// slave); queues only this slave knows are kept. Returns how many changed.
    pub fn merge_from_master(&self, body: &[u8]) -> Result<usize, BrokerError> {
        let theirs: OffsetFile = serde_json::from_slice(body)
            .map_err(|e| BrokerError::Config(format!("master's consumer offsets are not valid JSON: {e}")))?;
        let mut changed = 0;
        let mut t = self.table.lock();
        for (k, queues) in theirs.offset_table {
            if !t.offset_table.contains_key(&k) && t.offset_table.len() >= MAX_OFFSET_KEYS {
                continue;
            }
            let mine = t.offset_table.entry(k).or_default();
            for (q, o) in queues {
                if mine.insert(q, o) != Some(o) {
                    changed += 1;
                }
            }
        }
        drop(t);
        if changed > 0 {
            self.dirty.store(true, Ordering::Release);
        }
        Ok(changed)
    }

    /// Forgets a deleted topic's offsets.
    pub fn remove_topic(&self, topic: &str) {
        let prefix = format!("{topic}@");
        self.table.lock().offset_table.retain(|k, _| !k.starts_with(&prefix));
        self.dirty.store(true, Ordering::Release);
    }

    /// Writes the table when it changed since the last write.
    pub async fn persist(&self) -> Result<(), BrokerError> {
        let (table, dirty) = (self.table.clone(), self.dirty.clone());
        let result = self
            .writer
            .write(self.path.clone(), move || {
                // Cleared before the snapshot: a commit after it marks dirty again.
                dirty.swap(false, Ordering::AcqRel).then(|| serde_json::to_vec(&*table.lock()).unwrap_or_default())
            })
            .await;
        if result.is_err() {
            // Not on disk: the next round must write again.
            self.dirty.store(true, Ordering::Release);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offsets_survive_reload() {
        let dir = tempfile::tempdir().unwrap();
        let o = ConsumerOffsets::load(dir.path()).unwrap();
        o.commit("g", "T", 0, 5);
        o.commit("g", "T", 3, 9);
        o.commit("g2", "U", 0, 1);
        o.persist().await.unwrap();
        let again = ConsumerOffsets::load(dir.path()).unwrap();
        assert_eq!(again.query("g", "T", 3), Some(9));
        assert_eq!(again.query("g", "T", 1), None);
        assert_eq!(again.topics_of_group("g"), vec!["T".to_string()]);
    }
}
