//! POP consumption (RocketMQ 5's receive / ack / invisible-time model).
//!
//! - [`state`]: per (group, topic, queue) pop offset and held messages, pure
//!   logic with an explicit clock, revived from an ordered due index.
//! - [`handle`]: receipt handles in upstream's extraInfo layout.
//!
//! Being built (issue 21): the request codes, durability through the commit
//! log and replay, and the revive task are not wired yet.

pub mod handle;
pub mod state;

pub use handle::{HandleError, ReceiptHandle, RetryKind};
pub use state::{
    Delivery, Next, PopError, PopLimits, PopRecord, PopRequest, PopState, QueueKey, QueueProgress, Revived,
};
