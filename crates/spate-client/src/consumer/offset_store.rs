//! Consumer offsets: kept in memory, persisted to the brokers (clustering,
//! upstream `RemoteBrokerOffsetStore`) or to a local file (broadcasting,
//! upstream `LocalFileOffsetStore`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use spate_remoting::protocol::MessageQueue;

use crate::error::Result;
use crate::instance::ClientInstance;

/// Where offsets are persisted.
#[derive(Debug, Clone)]
pub(crate) enum OffsetBackend {
    /// On the broker of each queue.
    Remote,
    /// In this JSON file.
    LocalFile(PathBuf),
}

impl OffsetBackend {
    /// Clustering keeps offsets on the brokers; broadcasting in
    /// `<dir>/<clientId>/<group>/offsets.json`.
    pub(crate) fn for_model(model: super::MessageModel, dir: &std::path::Path, client_id: &str, group: &str) -> Self {
        match model {
            super::MessageModel::Clustering => OffsetBackend::Remote,
            super::MessageModel::Broadcasting => {
                OffsetBackend::LocalFile(dir.join(client_id).join(group).join("offsets.json"))
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct OffsetFile {
    offset_table: Vec<OffsetEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OffsetEntry {
    #[serde(flatten)]
    mq: MessageQueue,
    offset: i64,
}

/// The offsets of one consumer group.
pub(crate) struct OffsetStore {
    group: String,
    instance: Arc<ClientInstance>,
    backend: OffsetBackend,
    table: Mutex<HashMap<MessageQueue, i64>>,
    // The file's content when loaded (local backend).
    stored: Mutex<HashMap<MessageQueue, i64>>,
}

impl OffsetStore {
    /// A store; a local file is read now (a missing file is an empty table).
    pub fn new(group: &str, instance: Arc<ClientInstance>, backend: OffsetBackend) -> Result<Self> {
        let mut stored = HashMap::new();
        if let OffsetBackend::LocalFile(path) = &backend {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let file: OffsetFile = serde_json::from_slice(&bytes).map_err(|e| {
                        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
                    })?;
                    stored = file.offset_table.into_iter().map(|e| (e.mq, e.offset)).collect();
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(OffsetStore {
            group: group.to_string(),
            instance,
            backend,
            table: Mutex::new(HashMap::new()),
            stored: Mutex::new(stored),
        })
    }

    /// The offset in memory, if any.
    pub fn read_memory(&self, mq: &MessageQueue) -> Option<i64> {
        self.table.lock().get(mq).copied()
    }

    /// The persisted offset (broker or file); also cached in memory.
    pub async fn read_stored(&self, mq: &MessageQueue) -> Result<Option<i64>> {
        let off = match &self.backend {
            OffsetBackend::Remote => self.instance.query_consumer_offset(&self.group, mq).await?,
            OffsetBackend::LocalFile(_) => self.stored.lock().get(mq).copied(),
        };
        if let Some(o) = off {
            self.update(mq, o, false);
        }
        Ok(off)
    }

    /// Sets the in-memory offset; with `increase_only`, never moves it back.
    pub fn update(&self, mq: &MessageQueue, offset: i64, increase_only: bool) {
        let mut t = self.table.lock();
        let e = t.entry(mq.clone()).or_insert(offset);
        if !increase_only || offset > *e {
            *e = offset;
        }
    }

    /// Forgets a queue's in-memory offset (after it was persisted and dropped).
    pub fn remove(&self, mq: &MessageQueue) {
        self.table.lock().remove(mq);
    }

    /// Persists the in-memory offsets of `mqs`.
    pub async fn persist(&self, mqs: &[MessageQueue]) -> Result<()> {
        let offsets: Vec<(MessageQueue, i64)> = {
            let t = self.table.lock();
            mqs.iter().filter_map(|mq| t.get(mq).map(|o| (mq.clone(), *o))).collect()
        };
        match &self.backend {
            OffsetBackend::Remote => {
                let mut first_err = None;
                for (mq, off) in offsets {
                    if let Err(e) = self.instance.update_consumer_offset(&self.group, &mq, off).await {
                        tracing::debug!(group = self.group, topic = mq.topic, queue = mq.queue_id, error = %e,
                            "offset update failed");
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
            OffsetBackend::LocalFile(path) => {
                let file = {
                    let mut stored = self.stored.lock();
                    stored.extend(offsets);
                    OffsetFile {
                        offset_table: stored.iter().map(|(mq, o)| OffsetEntry { mq: mq.clone(), offset: *o }).collect(),
                    }
                };
                write_atomically(path, &serde_json::to_vec_pretty(&file).unwrap_or_default()).await
            }
        }
    }
}

async fn write_atomically(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await?;
    }
    let tmp = path.with_extension("json.tmp");
    tokio::fs::write(&tmp, bytes).await?;
    tokio::fs::rename(&tmp, path).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;

    #[tokio::test]
    async fn local_file_round_trip_and_increase_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g").join("offsets.json");
        let instance = ClientInstance::new(ClientConfig::new("127.0.0.1:1")).unwrap();
        let mq = MessageQueue::new("T", "b", 1);
        let store = OffsetStore::new("g", instance.clone(), OffsetBackend::LocalFile(path.clone())).unwrap();
        assert_eq!(store.read_stored(&mq).await.unwrap(), None);
        store.update(&mq, 10, false);
        store.update(&mq, 5, true);
        assert_eq!(store.read_memory(&mq), Some(10), "increase-only update ignored a lower offset");
        store.update(&mq, 5, false);
        assert_eq!(store.read_memory(&mq), Some(5));
        store.persist(std::slice::from_ref(&mq)).await.unwrap();
        let again = OffsetStore::new("g", instance, OffsetBackend::LocalFile(path)).unwrap();
        assert_eq!(again.read_memory(&mq), None);
        assert_eq!(again.read_stored(&mq).await.unwrap(), Some(5));
        assert_eq!(again.read_memory(&mq), Some(5));
    }
}
