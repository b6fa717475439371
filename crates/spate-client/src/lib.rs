//! Spate's client for RocketMQ's remoting protocol.
//!
//! - [`ClientInstance`]: one client identity (`ip@instanceName`) with its
//!   connections, route cache, periodic route refresh and heartbeats; shared
//!   by producers and consumers, or made for each one.
//! - [`Producer`]: sends, with retries on another broker, ordered sends via a
//!   queue selector, batches, async and one-way sends.
//! - [`PushConsumer`]: long-polling pulls per assigned queue, rebalancing,
//!   concurrent or orderly listeners, offsets on the broker or in a file.
//! - [`LitePullConsumer`]: the application polls; assignment by hand or by
//!   subscription.
//! - [`SimpleConsumer`]: RocketMQ 5's receive / ack / change invisible
//!   duration, on the broker's pop codes; no queue ownership.
//!
//! Everything is async on tokio. Every limit and timeout is an option named
//! after its RocketMQ counterpart. Bodies above
//! `compressMsgBodyOverHowmuch` are sent zlib-compressed and zlib bodies are
//! inflated on receipt, as upstream clients do; bodies compressed with other
//! algorithms (LZ4, ZSTD) are handed over as they are (see
//! [`MessageExt::is_compressed`]).

#![warn(missing_docs)]

pub mod compress;
pub mod config;
pub mod consumer;
pub mod error;
pub mod fault;
pub mod instance;
pub mod message;
pub mod producer;
pub mod query;
pub mod route;
pub mod transaction;
pub mod uniq_id;

pub use config::ClientConfig;
pub use consumer::allocate::allocate_averagely;
pub use consumer::{
    ConsumeContext, ConsumeFromWhere, ConsumeOrderlyStatus, ConsumeStatus, LitePullConsumer, LitePullConsumerOptions,
    MessageListener, MessageModel, PushConsumer, PushConsumerOptions, ReceivedMessage, SimpleConsumer,
    SimpleConsumerOptions,
};
pub use error::ClientError;
pub use fault::FaultPolicy;
pub use instance::ClientInstance;
pub use message::{Message, MessageExt};
pub use producer::{queue_by_hash, Producer, ProducerOptions, SendResult, SendStatus};
pub use spate_remoting::protocol::MessageQueue;
pub use transaction::{LocalTransactionState, TransactionListener, TransactionSendResult};
