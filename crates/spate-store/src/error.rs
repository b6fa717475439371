//! The store's typed errors.

use std::io;
use std::path::PathBuf;

use spate_common::message::MessageError;

/// Everything the store can refuse or fail with. Each variant names its cause
/// so the broker can map it to a RocketMQ response code.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The message itself is not acceptable (size, topic name, properties).
    #[error("invalid message: {0}")]
    InvalidMessage(#[from] MessageError),

    /// The store stopped accepting writes after a failure; the reason says why.
    #[error("store is not writable: {0}")]
    NotWritable(String),

    /// A bounded queue on the write path is full or a wait ran past its limit:
    /// the caller should fail fast (SYSTEM_BUSY) instead of queueing.
    #[error("store is busy: {0}")]
    Busy(&'static str),

    /// A sync-flush wait passed `syncFlushTimeout` (FLUSH_DISK_TIMEOUT).
    #[error("flush did not complete within {timeout_ms} ms")]
    FlushTimeout {
        /// The configured limit.
        timeout_ms: u64,
    },

    /// An operating-system call on a store file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A file on disk does not have the shape the store wrote.
    #[error("corrupt store file {path}: {reason}")]
    Corrupt {
        /// The file involved.
        path: PathBuf,
        /// What did not match.
        reason: String,
    },

    /// An offset passed by the caller does not fit the log (not a record
    /// boundary, beyond the end, below the start, ...).
    #[error("bad offset {offset}: {reason}")]
    BadOffset {
        /// The offset passed.
        offset: u64,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A configuration value is out of range or contradicts another one.
    #[error("invalid store setting {key}: {reason}")]
    Config {
        /// RocketMQ's name for the setting.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The store has been shut down.
    #[error("store is shut down")]
    ShutDown,
}

impl StoreError {
    /// Wraps an I/O error with the path it happened on.
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }
}

/// Shorthand used across the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
