//! Types that Spate's servers and clients share.
//!
//! - [`message`]: RocketMQ's stored-message record layout (the commit-log
//!   record that a pull response also carries), message properties, offset
//!   message ids, topic-name rules and tag hash codes.
//!
//! This crate does no I/O.

#![deny(missing_docs)]

pub mod message;
pub mod wake;
