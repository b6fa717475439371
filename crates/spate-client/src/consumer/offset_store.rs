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
    /// `<dir>/<ip>@<instanceName>/<group>/offsets.json`, where the instance
    /// name is the configured one or `DEFAULT` (as upstream), never the
    /// generated per-process name: the file must be found after a restart.
    pub(crate) fn for_model(
        model: super::MessageModel,
        dir: &std::path::Path,
        instance: &ClientInstance,
        group: &str,
    ) -> Self {
        match model {
            super::MessageModel::Clustering => OffsetBackend::Remote,
            super::MessageModel::Broadcasting => {
                let name = instance.config().instance_name.clone().unwrap_or_else(|| "DEFAULT".to_string());
                let stable_id = format!("{}@{name}", instance.client_ip());
                OffsetBackend::LocalFile(dir.join(stable_id).join(group).join("offsets.json"))
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
    // Serializes writes of the local file.
    file_writes: tokio::sync::Mutex<()>,
}

impl OffsetStore {
    /// A store; a local file is read now (a missing file is an empty table).
    pub fn new(group: &str, instance: Arc<ClientInstance>, backend: OffsetBackend) -> Result<Self> {
        let mut stored = HashMap::new();
        if let OffsetBackend::LocalFile(path) = &backend {
            // The file, or its backup when the file is missing or torn.
            let file = match read_offset_file(path)? {
                Some(f) => Some(f),
                None => read_offset_file(&backup_path(path))?,
            };
            if let Some(file) = file {
                stored = file.offset_table.into_iter().map(|e| (e.mq, e.offset)).collect();
            }
        }
        Ok(OffsetStore {
            group: group.to_string(),
            instance,
            backend,
            table: Mutex::new(HashMap::new()),
            stored: Mutex::new(stored),
            file_writes: tokio::sync::Mutex::new(()),
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
                // One writer at a time, each writing the latest table.
                let _serial = self.file_writes.lock().await;
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

/// `offsets.json.bak`: the previous good file.
fn backup_path(path: &std::path::Path) -> PathBuf {
    path.with_extension("json.bak")
}

/// Reads an offset file; `None` when missing or unreadable (logged).
fn read_offset_file(path: &std::path::Path) -> Result<Option<OffsetFile>> {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(f) => Ok(Some(f)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "offset file does not parse; trying its backup");
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Keeps the previous file as `.bak`, then replaces it durably (temporary
/// file, sync, rename, directory sync), on the blocking pool.
async fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let (path, bytes) = (path.to_path_buf(), bytes.to_vec());
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        use std::io::Write;
        let dir = path.parent().map(std::path::Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)?;
        if path.exists() {
            std::fs::copy(&path, backup_path(&path))?;
        }
        let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    })
    .await
    .map_err(|e| std::io::Error::other(format!("offset write task failed: {e}")))??;
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
        // A torn file falls back to the backup of the previous write.
        again.update(&mq, 7, false);
        again.persist(std::slice::from_ref(&mq)).await.unwrap();
        let file = dir.path().join("g").join("offsets.json");
        std::fs::write(&file, b"{\"offsetTa").unwrap();
        let recovered = OffsetStore::new("g", instance_for_test(), OffsetBackend::LocalFile(file)).unwrap();
        assert_eq!(recovered.read_stored(&mq).await.unwrap(), Some(5), "the backup holds the write before the last");
    }

    fn instance_for_test() -> Arc<ClientInstance> {
        ClientInstance::new(ClientConfig::new("127.0.0.1:1")).unwrap()
    }
}
