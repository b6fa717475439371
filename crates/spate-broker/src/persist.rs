//! Small JSON tables kept under `<storePathRootDir>/config/` (topics,
//! consumer offsets, subscription groups). Writes go to a temporary file,
//! are synced, then renamed over the old one, so a crash leaves the old or
//! the new table, never a torn one. Callers run them off the async workers.

use std::fs;
use std::io::Write;
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

/// Replaces the table at `path` atomically and durably. Blocking.
pub fn save(path: &Path, bytes: &[u8]) -> Result<(), BrokerError> {
    let io = |e| BrokerError::Io { path: path.display().to_string(), source: e };
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_data().map_err(io)?;
    drop(f);
    fs::rename(&tmp, path).map_err(io)?;
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)
}

/// Runs [`save`] on the blocking pool.
pub async fn save_async(path: PathBuf, bytes: Vec<u8>) -> Result<(), BrokerError> {
    tokio::task::spawn_blocking(move || save(&path, &bytes))
        .await
        .map_err(|e| BrokerError::Config(format!("persist task failed: {e}")))?
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
        assert_eq!(load::<serde_json::Value>(&p).unwrap().unwrap()["a"], 1);
        fs::write(&p, b"{broken").unwrap();
        assert!(load::<serde_json::Value>(&p).unwrap_err().to_string().contains("t.json"));
    }
}
