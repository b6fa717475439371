//! Consumers: the push consumer ([`PushConsumer`]), the lite pull consumer
//! ([`LitePullConsumer`]), RocketMQ 5's pop-based [`SimpleConsumer`], and
//! what the first two share: queue allocation, the process
//! queue, offset stores, rebalancing, broker requests.

pub mod allocate;
pub(crate) mod api;
pub mod lite_pull;
pub(crate) mod offset_store;
pub(crate) mod process_queue;
pub mod push;
pub(crate) mod rebalance;
pub mod simple;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use spate_remoting::protocol::MessageQueue;

use crate::message::MessageExt;

pub use lite_pull::{LitePullConsumer, LitePullConsumerOptions};
pub use push::{PushConsumer, PushConsumerOptions};
pub use simple::{ReceivedMessage, SimpleConsumer, SimpleConsumerOptions};

/// A boxed, sendable future (what async listeners return).
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// How a group shares messages (upstream `MessageModel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageModel {
    /// Each message goes to one consumer of the group; queues are split.
    #[default]
    Clustering,
    /// Each consumer gets every message; offsets are kept locally.
    Broadcasting,
}

impl MessageModel {
    /// The upstream name sent in heartbeats.
    pub fn name(self) -> &'static str {
        match self {
            MessageModel::Clustering => "CLUSTERING",
            MessageModel::Broadcasting => "BROADCASTING",
        }
    }
}

/// Where a group with no committed offset for a queue starts (upstream `ConsumeFromWhere`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsumeFromWhere {
    /// At the queue's end (GET_MAX_OFFSET); retry topics start at 0.
    #[default]
    LastOffset,
    /// At offset 0 (the broker moves a stale offset forward).
    FirstOffset,
    /// At the first message stored at or after `consumeTimestamp` (SEARCH_OFFSET_BY_TIMESTAMP).
    Timestamp,
}

impl ConsumeFromWhere {
    /// The upstream name sent in heartbeats.
    pub fn name(self) -> &'static str {
        match self {
            ConsumeFromWhere::LastOffset => "CONSUME_FROM_LAST_OFFSET",
            ConsumeFromWhere::FirstOffset => "CONSUME_FROM_FIRST_OFFSET",
            ConsumeFromWhere::Timestamp => "CONSUME_FROM_TIMESTAMP",
        }
    }
}

/// A concurrent listener's verdict (upstream `ConsumeConcurrentlyStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeStatus {
    /// Consumed; the offset may move past these messages.
    ConsumeSuccess,
    /// Failed; deliver again later (through the retry topic in clustering mode).
    ReconsumeLater,
}

/// An orderly listener's verdict (upstream `ConsumeOrderlyStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumeOrderlyStatus {
    /// Consumed; go on with the queue's next messages.
    Success,
    /// Failed; retry the same messages after `suspendCurrentQueueTimeMillis`, holding the queue.
    SuspendCurrentQueueAMoment,
}

/// What a listener is told about the messages it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeContext {
    /// The queue the messages came from.
    pub message_queue: MessageQueue,
}

type SyncConcurrent = dyn Fn(&[MessageExt], &ConsumeContext) -> ConsumeStatus + Send + Sync;
type AsyncConcurrent = dyn Fn(Vec<MessageExt>, ConsumeContext) -> BoxFuture<ConsumeStatus> + Send + Sync;
type SyncOrderly = dyn Fn(&[MessageExt], &ConsumeContext) -> ConsumeOrderlyStatus + Send + Sync;
type AsyncOrderly = dyn Fn(Vec<MessageExt>, ConsumeContext) -> BoxFuture<ConsumeOrderlyStatus> + Send + Sync;

/// The user's message handler. Blocking listeners run on tokio's blocking
/// pool; async ones on the runtime. A panicking listener counts as a failure.
#[derive(Clone)]
pub enum MessageListener {
    /// Concurrent, blocking.
    Concurrently(Arc<SyncConcurrent>),
    /// Concurrent, async.
    ConcurrentlyAsync(Arc<AsyncConcurrent>),
    /// One queue at a time in offset order, blocking.
    Orderly(Arc<SyncOrderly>),
    /// One queue at a time in offset order, async.
    OrderlyAsync(Arc<AsyncOrderly>),
}

impl std::fmt::Debug for MessageListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            MessageListener::Concurrently(_) => "Concurrently",
            MessageListener::ConcurrentlyAsync(_) => "ConcurrentlyAsync",
            MessageListener::Orderly(_) => "Orderly",
            MessageListener::OrderlyAsync(_) => "OrderlyAsync",
        };
        f.write_str(kind)
    }
}

impl MessageListener {
    /// A concurrent, blocking listener.
    pub fn concurrently<F>(f: F) -> Self
    where
        F: Fn(&[MessageExt], &ConsumeContext) -> ConsumeStatus + Send + Sync + 'static,
    {
        MessageListener::Concurrently(Arc::new(f))
    }

    /// A concurrent, async listener.
    pub fn concurrently_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Vec<MessageExt>, ConsumeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeStatus> + Send + 'static,
    {
        MessageListener::ConcurrentlyAsync(Arc::new(move |m, c| Box::pin(f(m, c))))
    }

    /// An orderly, blocking listener.
    pub fn orderly<F>(f: F) -> Self
    where
        F: Fn(&[MessageExt], &ConsumeContext) -> ConsumeOrderlyStatus + Send + Sync + 'static,
    {
        MessageListener::Orderly(Arc::new(f))
    }

    /// An orderly, async listener.
    pub fn orderly_async<F, Fut>(f: F) -> Self
    where
        F: Fn(Vec<MessageExt>, ConsumeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ConsumeOrderlyStatus> + Send + 'static,
    {
        MessageListener::OrderlyAsync(Arc::new(move |m, c| Box::pin(f(m, c))))
    }

    /// Whether this listener consumes each queue serially.
    pub fn is_orderly(&self) -> bool {
        matches!(self, MessageListener::Orderly(_) | MessageListener::OrderlyAsync(_))
    }

    /// Runs a concurrent listener; an orderly one is mapped (Success -> ConsumeSuccess).
    pub(crate) async fn consume(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ConsumeStatus {
        match self {
            MessageListener::Concurrently(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f(&msgs, &ctx)).await.unwrap_or(ConsumeStatus::ReconsumeLater)
            }
            MessageListener::ConcurrentlyAsync(f) => {
                tokio::spawn(f(msgs, ctx)).await.unwrap_or(ConsumeStatus::ReconsumeLater)
            }
            MessageListener::Orderly(_) | MessageListener::OrderlyAsync(_) => {
                match self.consume_orderly(msgs, ctx).await {
                    ConsumeOrderlyStatus::Success => ConsumeStatus::ConsumeSuccess,
                    ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => ConsumeStatus::ReconsumeLater,
                }
            }
        }
    }

    /// Runs an orderly listener; a concurrent one is mapped.
    pub(crate) async fn consume_orderly(&self, msgs: Vec<MessageExt>, ctx: ConsumeContext) -> ConsumeOrderlyStatus {
        match self {
            MessageListener::Orderly(f) => {
                let f = f.clone();
                tokio::task::spawn_blocking(move || f(&msgs, &ctx))
                    .await
                    .unwrap_or(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment)
            }
            MessageListener::OrderlyAsync(f) => {
                tokio::spawn(f(msgs, ctx)).await.unwrap_or(ConsumeOrderlyStatus::SuspendCurrentQueueAMoment)
            }
            MessageListener::Concurrently(_) | MessageListener::ConcurrentlyAsync(_) => {
                match Box::pin(self.consume(msgs, ctx)).await {
                    ConsumeStatus::ConsumeSuccess => ConsumeOrderlyStatus::Success,
                    ConsumeStatus::ReconsumeLater => ConsumeOrderlyStatus::SuspendCurrentQueueAMoment,
                }
            }
        }
    }
}

/// `rocketmq.client.localOffsetStoreDir`: `$HOME/.rocketmq_offsets`, or
/// `./.rocketmq_offsets` without a home directory.
pub fn default_offset_store_dir() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".")).join(".rocketmq_offsets")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::process_queue::tests::msg;

    fn ctx() -> ConsumeContext {
        ConsumeContext { message_queue: MessageQueue::new("T", "b", 0) }
    }

    #[tokio::test]
    async fn listeners_of_every_kind_run_and_panics_count_as_failure() {
        let ok = MessageListener::concurrently(|m, _| {
            assert_eq!(m.len(), 1);
            ConsumeStatus::ConsumeSuccess
        });
        assert_eq!(ok.consume(vec![msg(0, 1)], ctx()).await, ConsumeStatus::ConsumeSuccess);
        let boom = MessageListener::concurrently(|_, _| panic!("listener bug"));
        assert_eq!(boom.consume(vec![msg(0, 1)], ctx()).await, ConsumeStatus::ReconsumeLater);
        let a = MessageListener::concurrently_async(|_, _| async { ConsumeStatus::ReconsumeLater });
        assert_eq!(a.consume(vec![], ctx()).await, ConsumeStatus::ReconsumeLater);
        let o = MessageListener::orderly_async(|_, _| async { ConsumeOrderlyStatus::Success });
        assert!(o.is_orderly());
        assert_eq!(o.consume_orderly(vec![], ctx()).await, ConsumeOrderlyStatus::Success);
        let o2 = MessageListener::orderly(|_, _| ConsumeOrderlyStatus::SuspendCurrentQueueAMoment);
        assert_eq!(o2.consume(vec![], ctx()).await, ConsumeStatus::ReconsumeLater);
    }
}
