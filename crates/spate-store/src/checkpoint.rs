//! Small metadata files written atomically: the checkpoint, the abort
//! marker and the epoch list.
//!
//! Each is written to a temporary file, fsynced, renamed over the old one,
//! and the directory fsynced, so a crash leaves either the old or the new
//! version, never a mix.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::segment::sync_dir;

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| StoreError::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| StoreError::io(path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

const CHECKPOINT_MAGIC: u32 = 0x5350_4350; // "SPCP"

/// Positions recovery can trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    /// Everything in the commit log below this was on disk.
    pub commit_log_flushed: u64,
    /// Consume queues and the index held every record below this, on disk.
    pub dispatched_flushed: u64,
    /// When it was written (ms since the epoch).
    pub written_at_ms: i64,
}

impl Checkpoint {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(32);
        b.extend_from_slice(&CHECKPOINT_MAGIC.to_be_bytes());
        b.extend_from_slice(&self.commit_log_flushed.to_be_bytes());
        b.extend_from_slice(&self.dispatched_flushed.to_be_bytes());
        b.extend_from_slice(&self.written_at_ms.to_be_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.len() != 32 || b[..4] != CHECKPOINT_MAGIC.to_be_bytes() {
            return None;
        }
        if crc32fast::hash(&b[..28]).to_be_bytes() != b[28..32] {
            return None;
        }
        let u = |r: std::ops::Range<usize>| b[r].try_into().map(u64::from_be_bytes).ok();
        Some(Checkpoint {
            commit_log_flushed: u(4..12)?,
            dispatched_flushed: u(12..20)?,
            written_at_ms: u(20..28)? as i64,
        })
    }

    /// Reads the checkpoint; a missing or damaged file reads as `None`
    /// (recovery then validates the whole log).
    pub fn load(path: &Path) -> Option<Checkpoint> {
        let bytes = std::fs::read(path).ok()?;
        let cp = Checkpoint::decode(&bytes);
        if cp.is_none() {
            tracing::warn!(path = %path.display(), "checkpoint unreadable; recovering from the start of the log");
        }
        cp
    }

    /// Writes the checkpoint atomically.
    pub fn store(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.encode())
    }
}

/// One entry of the epoch list: from `start_offset` on, the log was written
/// by the master of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    /// Master epoch.
    pub epoch: u32,
    /// First commit-log offset written in it.
    pub start_offset: u64,
}

/// The persisted list of epochs (replication compares these to find where
/// two logs diverge). Text file, one `epoch start_offset` per line.
#[derive(Debug)]
pub struct EpochFile {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl EpochFile {
    /// Loads the list (empty if the file does not exist).
    pub fn load(path: PathBuf) -> Result<EpochFile> {
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(StoreError::io(&path, e)),
        };
        let mut entries: Vec<EpochEntry> = Vec::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let mut it = line.split_whitespace();
            let parsed =
                (|| Some(EpochEntry { epoch: it.next()?.parse().ok()?, start_offset: it.next()?.parse().ok()? }))();
            let Some(entry) = parsed else {
                return Err(StoreError::Corrupt { path, reason: format!("line {} is not 'epoch offset'", n + 1) });
            };
            if entries.last().is_some_and(|l| l.epoch >= entry.epoch || l.start_offset > entry.start_offset) {
                return Err(StoreError::Corrupt { path, reason: format!("line {} is out of order", n + 1) });
            }
            entries.push(entry);
        }
        Ok(EpochFile { path, entries })
    }

    /// All entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// The newest entry.
    pub fn last(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// Starts `epoch` at `start_offset`. The epoch must be newer than the
    /// last and the offset not before the last start.
    pub fn begin(&mut self, epoch: u32, start_offset: u64) -> Result<()> {
        if let Some(last) = self.last() {
            if epoch <= last.epoch {
                return Err(StoreError::BadOffset {
                    offset: start_offset,
                    reason: "epoch is not newer than the last one",
                });
            }
            if start_offset < last.start_offset {
                return Err(StoreError::BadOffset { offset: start_offset, reason: "epoch starts before the last one" });
            }
        }
        self.entries.push(EpochEntry { epoch, start_offset });
        self.persist()
    }

    /// Drops epochs that start at or after `offset` (the log was cut there).
    pub fn truncate_after(&mut self, offset: u64) -> Result<()> {
        let before = self.entries.len();
        // An epoch starting at the cut has no bytes left: it goes too, so a
        // slave cut back to a master's history can take the master's epoch
        // there (a kept one would outrank it).
        self.entries.retain(|e| e.start_offset < offset);
        if self.entries.len() != before {
            self.persist()?;
        }
        Ok(())
    }

    /// Drops epochs wholly below `min_offset` except the one covering it
    /// (retention deleted their bytes).
    pub fn trim_before(&mut self, min_offset: u64) -> Result<()> {
        let keep_from = self.entries.iter().rposition(|e| e.start_offset <= min_offset).unwrap_or(0);
        if keep_from > 0 {
            self.entries.drain(..keep_from);
            self.persist()?;
        }
        Ok(())
    }

    fn persist(&self) -> Result<()> {
        let text: String = self.entries.iter().map(|e| format!("{} {}\n", e.epoch, e.start_offset)).collect();
        write_atomic(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint");
        assert_eq!(Checkpoint::load(&path), None);
        let cp = Checkpoint { commit_log_flushed: 10, dispatched_flushed: 7, written_at_ms: 99 };
        cp.store(&path).unwrap();
        assert_eq!(Checkpoint::load(&path), Some(cp));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[6] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(Checkpoint::load(&path), None);
    }

    #[test]
    fn epochs_persist_and_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("epochs");
        let mut e = EpochFile::load(path.clone()).unwrap();
        e.begin(1, 0).unwrap();
        e.begin(2, 500).unwrap();
        e.begin(4, 900).unwrap();
        assert!(e.begin(4, 950).is_err());
        assert!(e.begin(5, 100).is_err());
        e.truncate_after(600).unwrap();
        let e2 = EpochFile::load(path.clone()).unwrap();
        assert_eq!(
            e2.entries(),
            &[EpochEntry { epoch: 1, start_offset: 0 }, EpochEntry { epoch: 2, start_offset: 500 }]
        );
        std::fs::write(&path, "2 10\n1 20\n").unwrap();
        assert!(matches!(EpochFile::load(path), Err(StoreError::Corrupt { .. })));
    }
}
