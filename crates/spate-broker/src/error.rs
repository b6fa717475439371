//! The broker's errors.

use spate_remoting::protocol::json::BodyError;
use spate_remoting::{HeaderError, RemotingError};
use spate_store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A setting is missing or does not parse; the message names the key.
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} does not parse: {reason}")]
    BadFile { path: String, reason: String },
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Body(#[from] BodyError),
    /// This broker does not take an append now (a slave, or too few slaves in sync).
    #[error("append refused: {0}")]
    AppendRefused(String),
    /// The requesting connection failed or closed while its request ran.
    #[error(transparent)]
    Remoting(#[from] RemotingError),
}
