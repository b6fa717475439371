//! Spate's message store: everything that puts messages on disk and gets
//! them back. No networking, no RocketMQ request codes.
//!
//! # Durability promise
//!
//! An append is *acknowledged* when [`PutResult::flush`] resolves `Ok`:
//!
//! - with [`FlushPolicy::Sync`] (`SYNC_FLUSH`), the record was on disk
//!   (`fdatasync` returned) before the acknowledgement; it survives a process
//!   crash and a power loss;
//! - with [`FlushPolicy::Async`] (`ASYNC_FLUSH`), the record was in the page
//!   cache; it survives a crash of the process (recovery finds it), and is
//!   on disk within `flushIntervalCommitLog` unless the machine loses power.
//!   With read/write separation (`transientStorePoolEnable`) the record was
//!   in a write buffer: the committer moves it to the page cache within
//!   microseconds, but a process crash in that window loses it (as upstream).
//!
//! Recovery (on every open after an unclean stop) validates the commit log
//! from the last checkpoint: sizes, magic, body CRC and each record's own
//! offset. It cuts the log at the first record that fails, zeroes what lies
//! beyond, drops consume-queue units pointing past the cut and rebuilds the
//! missing ones. So every acknowledged record is kept, and no torn or
//! corrupt record is ever served.
//!
//! Disk assumptions: a successful `fdatasync` means the bytes are stable;
//! files are pre-allocated, so a write through a mapping never needs new
//! blocks; a crash may lose or tear any write not covered by a completed
//! `fdatasync`.
//!
//! # Threads
//!
//! The append path ([`MessageStore::put_message`]) is a memory copy under the
//! writer lock; it does no file I/O. Blocking work runs on the store's own
//! threads: allocator (next segments), flusher (fdatasync / group commit),
//! committer (read/write separation), dispatcher (consume queues, index)
//! and housekeeping (checkpoint, retention).

#![deny(missing_docs)]

pub mod allocator;
pub mod checkpoint;
pub mod commit_log;
pub mod config;
pub mod consume_queue;
pub mod dispatch;
pub mod error;
pub mod flush;
pub mod index;
mod pi_mutex;
pub mod retention;
pub mod segment;
mod signal;
pub mod store;

pub use checkpoint::EpochEntry;
pub use commit_log::AppendResult;
pub use config::{FlushDiskType, StoreConfig};
pub use error::StoreError;
pub use flush::{FlushPolicy, FlushWait};
pub use retention::RetentionTrigger;
pub use signal::UrgentDispatch;
pub use store::{GetResult, GetStatus, MessageStore, PutBatchResult, PutResult, ReadLimits, StoreStats};
