//! Small JSON tables kept under `<storePathRootDir>/config/` (topics,
//! consumer offsets, subscription groups). Writes go to a temporary file,
//! are synced, then renamed over the old one, so a crash leaves the old or
//! the new table, never a torn one. Callers run them off the async workers.

use std::fs;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::BrokerError;

/// `<root>/config/<name>`.
pub fn config_path(root: &Path, name: &str) -> PathBuf {
    root.join("config").join(name)
}

/// Reads a table; a missing file is `None`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, BrokerError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(BrokerError::Io { path: path.display().to_string(), source: e }),
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    spate_remoting::protocol::json::decode(&bytes, "table")
        .map(Some)
        .map_err(|e| BrokerError::BadFile { path: path.display().to_string(), reason: e.reason })
}

/// Replaces the table at `path` atomically and durably (owner-only, the
/// same writer as the auth table's). Blocking.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    spate_auth::file::write_atomic(path, bytes)
        .map_err(|e| BrokerError::Io { path: path.display().to_string(), source: e })
}

/// Serializes the writes of one table: snapshots are taken and written in
/// order, and a caller that gives up (a cancelled task) cannot release the
/// lock while its write is still running.
#[derive(Default)]
pub struct TableWriter {
    lock: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl TableWriter {
    /// Takes a snapshot with `snapshot` under the lock and writes it to
    /// `path` on the blocking pool.
    pub async fn write(
        &self,
        path: PathBuf,
        snapshot: impl FnOnce() -> Option<Vec<u8>> + Send + 'static,
    ) -> Result<(), BrokerError> {
        let lock = self.lock.clone();
        let task = tokio::spawn(async move {
            let _serial = lock.lock_owned().await;
            let Some(bytes) = snapshot() else { return Ok(()) };
            tokio::task::spawn_blocking(move || save(&path, &bytes))
                .await
                .map_err(|e| BrokerError::Config(format!("persist task failed: {e}")))?
        });
        task.await.map_err(|e| BrokerError::Config(format!("persist task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_then_load_and_missing_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = config_path(dir.path(), "t.json");
        assert_eq!(load::<serde_json::Value>(&p).unwrap(), None);
        save(&p, br#"{"a":1}"#).unwrap();
        let leftovers = fs::read_dir(p.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        assert_eq!(load::<serde_json::Value>(&p).unwrap().unwrap()["a"], 1);
        fs::write(&p, b"{broken").unwrap();
        assert!(load::<serde_json::Value>(&p).unwrap_err().to_string().contains("t.json"));
    }
}
