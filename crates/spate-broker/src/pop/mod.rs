//! POP consumption (RocketMQ 5's receive / ack / invisible-time model).
//!
//! - [`state`]: per (group, topic, queue) pop offset and held messages, pure
//!   logic with an explicit clock, revived from an ordered due index.
//! - [`handle`]: receipt handles in upstream's extraInfo layout.
//! - [`journal`]: the state's records in the commit log (`RMQ_SYS_SPATE_POP`)
//!   and their replay.
//! - [`service`]: the state behind one lock, loaded per master epoch;
//!   POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE,
//!   CHANGE_MESSAGE_INVISIBLETIME, the pop progress code; the revive task
//!   and snapshots.

pub mod handle;
pub mod journal;
pub mod service;
pub mod state;

pub use handle::{HandleError, ReceiptHandle, RetryKind};
pub use state::{
    Delivery, Next, PopError, PopLimits, PopRecord, PopRequest, PopState, QueueKey, QueueProgress, Revived,
};
