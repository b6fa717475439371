//! The lite pull consumer (upstream `DefaultLitePullConsumer`): background
//! pulls fill a bounded cache; the application takes messages with
//! [`LitePullConsumer::poll`] and commits their offsets (by hand or
//! automatically every `autoCommitIntervalMillis`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use spate_remoting::protocol::{ConsumerData, MessageQueue, SubscriptionData, TagFilter};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::consumer::api::{PullArgs, PullStatus};
use crate::consumer::offset_store::{OffsetBackend, OffsetStore};
use crate::consumer::process_queue::{FlowDecision, FlowLimits, QueueSlot};
use crate::consumer::rebalance::{plan, start_offset, target_queues};
use crate::consumer::{default_offset_store_dir, ConsumeFromWhere, MessageModel};
use crate::error::{ClientError, Result};
use crate::instance::{ClientInstance, ConsumerMember};
use crate::message::MessageExt;
use crate::uniq_id::now_ms;

/// Lite pull consumer settings (upstream `DefaultLitePullConsumer`).
#[derive(Debug, Clone)]
pub struct LitePullConsumerOptions {
    /// `consumerGroup`.
    pub group: String,
    /// `messageModel` (CLUSTERING).
    pub message_model: MessageModel,
    /// `consumeFromWhere` (CONSUME_FROM_LAST_OFFSET).
    pub consume_from_where: ConsumeFromWhere,
    /// `consumeTimestamp` as ms since the epoch (default: half an hour ago).
    pub consume_timestamp_ms: i64,
    /// `autoCommit` (true): `poll` commits what earlier polls returned, every `auto_commit_interval`.
    pub auto_commit: bool,
    /// `autoCommitIntervalMillis` (5 s).
    pub auto_commit_interval: Duration,
    /// `pullBatchSize` (10).
    pub pull_batch_size: i32,
    /// `pullThresholdForQueue`: cached messages per queue before pulling pauses (1000).
    pub pull_threshold_for_queue: usize,
    /// `pullThresholdSizeForQueue` in MiB (100).
    pub pull_threshold_size_for_queue_mib: usize,
    /// `pullThresholdForAll`: pulled batches waiting for `poll`, over all queues, in
    /// messages; the cache holds this many divided by `pullBatchSize` batches (10000).
    pub pull_threshold_for_all: usize,
    /// `brokerSuspendMaxTimeMillis` (15 s).
    pub broker_suspend_max_time: Duration,
    /// `consumerTimeoutMillisWhenSuspend` (30 s).
    pub consumer_timeout_when_suspend: Duration,
    /// `pullTimeDelayMillsWhenException` (1 s).
    pub pull_time_delay_when_exception: Duration,
    /// Pause after a pull that could not reach its broker; the route is
    /// refreshed at once (Spate's own, 100 ms).
    pub pull_time_delay_when_broker_unreachable: Duration,
    /// Pause while flow control holds (50 ms).
    pub pull_time_delay_when_flow_control: Duration,
    /// Rebalance period in subscribe mode (20 s).
    pub rebalance_interval: Duration,
    /// Broadcasting: directory of the offset files (`rocketmq.client.localOffsetStoreDir`).
    pub offset_store_dir: PathBuf,
}

impl LitePullConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        LitePullConsumerOptions {
            group: group.into(),
            message_model: MessageModel::Clustering,
            consume_from_where: ConsumeFromWhere::LastOffset,
            consume_timestamp_ms: now_ms() - 30 * 60 * 1000,
            auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            pull_batch_size: 10,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue_mib: 100,
            pull_threshold_for_all: 10_000,
            broker_suspend_max_time: Duration::from_secs(15),
            consumer_timeout_when_suspend: Duration::from_secs(30),
            pull_time_delay_when_exception: Duration::from_secs(1),
            pull_time_delay_when_broker_unreachable: Duration::from_millis(100),
            pull_time_delay_when_flow_control: Duration::from_millis(50),
            rebalance_interval: Duration::from_secs(20),
            offset_store_dir: default_offset_store_dir(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| Err(ClientError::Config { name, reason: reason.to_string() });
        if self.group.is_empty() {
            return bad("consumerGroup", "empty");
        }
        if !(1..=1024).contains(&self.pull_batch_size) {
            return bad("pullBatchSize", "must be in 1..=1024");
        }
        if self.pull_threshold_for_queue == 0 || self.pull_threshold_for_all == 0 {
            return bad("pullThresholdForAll", "thresholds must be positive");
        }
        if self.consumer_timeout_when_suspend <= self.broker_suspend_max_time {
            return bad("consumerTimeoutMillisWhenSuspend", "must exceed brokerSuspendMaxTimeMillis");
        }
        if self.auto_commit_interval.is_zero() || self.rebalance_interval.is_zero() {
            return bad("autoCommitIntervalMillis", "intervals must be positive");
        }
        Ok(())
    }

    fn cache_batches(&self) -> usize {
        (self.pull_threshold_for_all / self.pull_batch_size.max(1) as usize).max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Unset,
    Assign,
    Subscribe,
}

struct LiteQueue {
    slot: Arc<QueueSlot>,
    generation: u64,
    // One past the last message `poll` returned; what `commit` persists.
    consumed: Option<i64>,
}

struct Batch {
    mq: MessageQueue,
    generation: u64,
    msgs: Vec<MessageExt>,
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

struct LiteInner {
    instance: Arc<ClientInstance>,
    owns_instance: bool,
    options: LitePullConsumerOptions,
    mode: Mutex<Mode>,
    subscriptions: RwLock<BTreeMap<String, SubscriptionData>>,
    assigned: Mutex<BTreeSet<MessageQueue>>,
    queues: Mutex<HashMap<MessageQueue, LiteQueue>>,
    offsets: OffsetStore,
    tx: mpsc::Sender<Batch>,
    rx: tokio::sync::Mutex<mpsc::Receiver<Batch>>,
    next_generation: AtomicU64,
    next_auto_commit_ms: AtomicI64,
    heartbeated: Mutex<HashSet<String>>,
    rebalance_signal: Notify,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    state: AtomicU8,
}

/// A consumer the application pulls from with [`poll`](LitePullConsumer::poll).
pub struct LitePullConsumer {
    inner: Arc<LiteInner>,
}

impl std::fmt::Debug for LitePullConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LitePullConsumer").field("group", &self.inner.options.group).finish()
    }
}

impl Drop for LitePullConsumer {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl LitePullConsumer {
    /// A consumer on its own client instance.
    pub fn new(config: ClientConfig, options: LitePullConsumerOptions) -> Result<LitePullConsumer> {
        Self::build(ClientInstance::new(config)?, options, true)
    }

    /// A consumer on a shared client instance.
    pub fn with_instance(instance: Arc<ClientInstance>, options: LitePullConsumerOptions) -> Result<LitePullConsumer> {
        Self::build(instance, options, false)
    }

    fn build(instance: Arc<ClientInstance>, options: LitePullConsumerOptions, owns: bool) -> Result<Self> {
        options.validate()?;
        let backend =
            OffsetBackend::for_model(options.message_model, &options.offset_store_dir, &instance, &options.group);
        let offsets = OffsetStore::new(&options.group, instance.clone(), backend)?;
        let (tx, rx) = mpsc::channel(options.cache_batches());
        Ok(LitePullConsumer {
            inner: Arc::new(LiteInner {
                instance,
                owns_instance: owns,
                options,
                mode: Mutex::new(Mode::Unset),
                subscriptions: RwLock::new(BTreeMap::new()),
                assigned: Mutex::new(BTreeSet::new()),
                queues: Mutex::new(HashMap::new()),
                offsets,
                tx,
                rx: tokio::sync::Mutex::new(rx),
                next_generation: AtomicU64::new(1),
                next_auto_commit_ms: AtomicI64::new(0),
                heartbeated: Mutex::new(HashSet::new()),
                rebalance_signal: Notify::new(),
                stop: CancellationToken::new(),
                tasks: Mutex::new(Vec::new()),
                state: AtomicU8::new(CREATED),
            }),
        })
    }

    fn set_mode(&self, want: Mode) -> Result<()> {
        let mut mode = self.inner.mode.lock();
        if *mode != Mode::Unset && *mode != want {
            return Err(ClientError::State("assign and subscribe cannot be mixed on one consumer"));
        }
        *mode = want;
        Ok(())
    }

    /// Subscribes to `topic` (`*` or `a || b`); queues are assigned by rebalancing.
    pub fn subscribe(&self, topic: &str, expression: &str) -> Result<()> {
        spate_common::message::validate_topic(topic)?;
        self.set_mode(Mode::Subscribe)?;
        let sub = TagFilter::parse(expression).subscription(topic, expression, now_ms());
        self.inner.subscriptions.write().insert(topic.to_string(), sub);
        self.inner.rebalance_signal.notify_one();
        Ok(())
    }

    /// Consumes exactly these queues (replacing an earlier assignment).
    pub fn assign(&self, queues: Vec<MessageQueue>) -> Result<()> {
        self.set_mode(Mode::Assign)?;
        {
            let mut subs = self.inner.subscriptions.write();
            for q in &queues {
                subs.entry(q.topic.clone()).or_insert_with(|| TagFilter::All.subscription(&q.topic, "*", now_ms()));
            }
        }
        *self.inner.assigned.lock() = queues.into_iter().collect();
        self.inner.rebalance_signal.notify_one();
        Ok(())
    }

    /// Starts pulling. Must run inside a tokio runtime.
    pub async fn start(&self) -> Result<()> {
        let inner = &self.inner;
        if inner.state.compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(ClientError::State("lite pull consumer was already started"));
        }
        let weak: Weak<LiteInner> = Arc::downgrade(inner);
        if let Err(e) =
            inner.instance.start().and_then(|_| inner.instance.register_consumer(&inner.options.group, weak))
        {
            inner.state.store(STOPPED, Ordering::Release);
            return Err(e);
        }
        let topics: Vec<String> = inner.subscriptions.read().keys().cloned().collect();
        for topic in &topics {
            if let Err(e) = inner.instance.update_route(topic).await {
                tracing::debug!(topic, error = %e, "route not available at start");
            }
        }
        inner.heartbeat_new_brokers().await;
        inner
            .next_auto_commit_ms
            .store(now_ms() + inner.options.auto_commit_interval.as_millis() as i64, Ordering::Relaxed);
        inner.tasks.lock().push(tokio::spawn(inner.clone().rebalance_loop()));
        Ok(())
    }

    /// Waits up to `timeout` for pulled messages (upstream `pollTimeoutMillis`
    /// is the usual value, 5 s); empty when none arrived. With auto-commit,
    /// first commits what earlier polls returned once the interval has passed.
    pub async fn poll(&self, timeout: Duration) -> Vec<MessageExt> {
        let inner = &self.inner;
        if inner.state.load(Ordering::Acquire) != RUNNING {
            return Vec::new();
        }
        if inner.options.auto_commit && now_ms() >= inner.next_auto_commit_ms.load(Ordering::Relaxed) {
            inner
                .next_auto_commit_ms
                .store(now_ms() + inner.options.auto_commit_interval.as_millis() as i64, Ordering::Relaxed);
            if let Err(e) = self.commit().await {
                tracing::debug!(group = inner.options.group, error = %e, "auto commit failed");
            }
        }
        let deadline = Instant::now() + timeout;
        let mut rx = inner.rx.lock().await;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let batch = tokio::select! {
                _ = inner.stop.cancelled() => return Vec::new(),
                b = tokio::time::timeout(remaining, rx.recv()) => match b {
                    Ok(Some(b)) => b,
                    _ => return Vec::new(),
                },
            };
            let mut queues = inner.queues.lock();
            let Some(q) = queues.get_mut(&batch.mq) else { continue };
            if q.generation != batch.generation || q.slot.is_dropped() {
                continue; // from before a seek or a reassignment
            }
            let offsets: Vec<i64> = batch.msgs.iter().map(|m| m.queue_offset).collect();
            if let Some(off) = q.slot.pq.lock().remove(&offsets) {
                q.consumed = Some(off);
            }
            return batch.msgs;
        }
    }

    /// Persists the offsets of what `poll` has returned so far.
    pub async fn commit(&self) -> Result<()> {
        let inner = &self.inner;
        let consumed: Vec<(MessageQueue, i64)> =
            inner.queues.lock().iter().filter_map(|(mq, q)| q.consumed.map(|o| (mq.clone(), o))).collect();
        for (mq, off) in &consumed {
            inner.offsets.update(mq, *off, false);
        }
        let mqs: Vec<MessageQueue> = consumed.into_iter().map(|(mq, _)| mq).collect();
        inner.offsets.persist(&mqs).await
    }

    /// Restarts consumption of an assigned queue at `offset`; messages pulled
    /// before are discarded. The next commit stores `offset`.
    pub async fn seek(&self, mq: &MessageQueue, offset: i64) -> Result<()> {
        let inner = &self.inner;
        if offset < 0 {
            return Err(ClientError::Config { name: "offset", reason: "negative".into() });
        }
        if !inner.queues.lock().contains_key(mq) {
            return Err(ClientError::State("seek on a queue not assigned to this consumer"));
        }
        let min = inner.instance.min_offset(mq).await?;
        let max = inner.instance.max_offset(mq).await?;
        if offset < min || offset > max {
            return Err(ClientError::Config { name: "offset", reason: format!("{offset} outside [{min}, {max}]") });
        }
        // A rebalance may have taken the queue away while we asked the
        // broker: only a queue still assigned is restarted.
        let old = inner.queues.lock().remove(mq);
        let Some(old) = old else {
            return Err(ClientError::State("seek on a queue not assigned to this consumer"));
        };
        old.slot.drop_queue();
        inner.start_queue(mq.clone(), offset, Some(offset));
        Ok(())
    }

    /// The offset committed for `mq` (on the broker, or in the local file); `None` if none.
    pub async fn committed(&self, mq: &MessageQueue) -> Result<Option<i64>> {
        self.inner.offsets.read_stored(mq).await
    }

    /// The readable queues of `topic`.
    pub async fn fetch_message_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        self.inner.instance.fetch_message_queues(topic).await
    }

    /// The queues currently pulled from, sorted.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        let mut v: Vec<MessageQueue> = self.inner.queues.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// Stops pulling, commits (with auto-commit), persists and unregisters.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        let was = inner.state.swap(STOPPED, Ordering::AcqRel);
        inner.stop.cancel();
        if was != RUNNING {
            return;
        }
        let tasks: Vec<JoinHandle<()>> = inner.tasks.lock().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        if inner.options.auto_commit {
            if let Err(e) = self.commit().await {
                tracing::warn!(group = inner.options.group, error = %e, "final commit failed");
            }
        }
        for (_, q) in inner.queues.lock().drain() {
            q.slot.drop_queue();
        }
        inner.instance.unregister_consumer(&inner.options.group);
        inner.instance.unregister_client(None, Some(&inner.options.group)).await;
        if inner.owns_instance {
            inner.instance.shutdown().await;
        }
    }
}

impl ConsumerMember for LiteInner {
    fn consumer_data(&self) -> ConsumerData {
        ConsumerData {
            group_name: self.options.group.clone(),
            consume_type: "CONSUME_ACTIVELY".into(),
            message_model: self.options.message_model.name().into(),
            consume_from_where: self.options.consume_from_where.name().into(),
            subscription_data_set: self.subscriptions.read().values().cloned().collect(),
            unit_mode: false,
        }
    }

    fn rebalance_now(&self) {
        self.rebalance_signal.notify_one();
    }
}

impl LiteInner {
    async fn sleep(&self, slot: &QueueSlot, d: Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = slot.cancel.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn heartbeat_new_brokers(&self) {
        // Slaves too: a group whose master is away is read through them.
        let brokers = self.instance.all_broker_addrs();
        let fresh = {
            let mut seen = self.heartbeated.lock();
            brokers.into_iter().filter(|m| seen.insert(m.clone())).count()
        };
        if fresh > 0 {
            self.instance.send_heartbeat_to_all_brokers().await;
        }
    }

    async fn rebalance_loop(self: Arc<Self>) {
        loop {
            let settled = self.rebalance().await;
            // A topic without a route yet (just created) is retried soon.
            let wait = if settled {
                self.options.rebalance_interval
            } else {
                self.options.rebalance_interval.min(Duration::from_secs(1))
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.rebalance_signal.notified() => {}
            }
        }
    }

    /// False when some subscribed topic could not be rebalanced.
    async fn rebalance(self: &Arc<Self>) -> bool {
        let mode = *self.mode.lock();
        let mut settled = true;
        let target: BTreeSet<MessageQueue> = match mode {
            Mode::Unset => return true,
            Mode::Assign => self.assigned.lock().clone(),
            Mode::Subscribe => {
                let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
                let mut all = BTreeSet::new();
                for topic in topics {
                    self.heartbeat_new_brokers().await;
                    let t =
                        target_queues(&self.instance, &self.options.group, &topic, self.options.message_model).await;
                    match t {
                        Ok(t) => all.extend(t),
                        Err(e) => {
                            tracing::debug!(topic, error = %e, "rebalance skipped");
                            settled = false;
                            // Keep the topic's current queues.
                            all.extend(self.queues.lock().keys().filter(|q| q.topic == topic).cloned());
                        }
                    }
                }
                all
            }
        };
        let current: BTreeSet<MessageQueue> = self.queues.lock().keys().cloned().collect();
        let (add, remove) = plan(&current, &target);
        for mq in remove {
            let q = self.queues.lock().remove(&mq);
            if let Some(q) = q {
                q.slot.drop_queue();
                let _ = self.offsets.persist(std::slice::from_ref(&mq)).await;
                self.offsets.remove(&mq);
            }
        }
        for mq in add {
            let o = &self.options;
            match start_offset(&self.instance, &self.offsets, &mq, o.consume_from_where, o.consume_timestamp_ms).await {
                Ok(off) => self.start_queue(mq, off, None),
                Err(e) => {
                    tracing::debug!(topic = mq.topic, queue = mq.queue_id, error = %e, "no start offset yet");
                    settled = false;
                }
            }
        }
        settled
    }

    fn start_queue(self: &Arc<Self>, mq: MessageQueue, offset: i64, consumed: Option<i64>) {
        let slot = Arc::new(QueueSlot::new(mq.clone()));
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        self.queues.lock().insert(mq, LiteQueue { slot: slot.clone(), generation, consumed });
        tokio::spawn(self.clone().pull_loop(slot, generation, offset));
    }

    async fn pull_loop(self: Arc<Self>, slot: Arc<QueueSlot>, generation: u64, mut next_offset: i64) {
        let o = &self.options;
        let limits = FlowLimits {
            messages_max: o.pull_threshold_for_queue,
            bytes_max: o.pull_threshold_size_for_queue_mib.saturating_mul(1024 * 1024),
            span_max: None,
        };
        let mq = slot.mq.clone();
        loop {
            if slot.is_dropped() || self.stop.is_cancelled() {
                break;
            }
            if slot.pq.lock().flow_control(&limits) != FlowDecision::Pull {
                if !self.sleep(&slot, o.pull_time_delay_when_flow_control).await {
                    break;
                }
                continue;
            }
            let Some(sub) = self.subscriptions.read().get(&mq.topic).cloned() else { break };
            let addr = match self.instance.pull_addr(&mq).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(broker = mq.broker_name, error = %e, "no broker address");
                    if !self.sleep(&slot, o.pull_time_delay_when_exception).await {
                        break;
                    }
                    continue;
                }
            };
            let args = PullArgs {
                group: &o.group,
                mq: &mq,
                offset: next_offset,
                max_msgs: o.pull_batch_size,
                commit_offset: None,
                subscription: &sub,
                suspend: Some(o.broker_suspend_max_time),
                timeout: o.consumer_timeout_when_suspend,
            };
            let result = tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = slot.cancel.cancelled() => break,
                r = self.instance.pull(&addr, args) => r,
            };
            match result {
                Ok(r) => {
                    if r.status == PullStatus::OffsetIllegal {
                        tracing::warn!(
                            topic = mq.topic,
                            queue = mq.queue_id,
                            to = r.next_begin_offset,
                            "pull offset moved"
                        );
                        slot.pq.lock().clear();
                    }
                    next_offset = r.next_begin_offset;
                    if !r.messages.is_empty() {
                        slot.pq.lock().put(r.messages.iter().cloned());
                        let batch = Batch { mq: mq.clone(), generation, msgs: r.messages };
                        tokio::select! {
                            _ = self.stop.cancelled() => break,
                            _ = slot.cancel.cancelled() => break,
                            sent = self.tx.send(batch) => if sent.is_err() { break },
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(topic = mq.topic, queue = mq.queue_id, error = %e, "pull failed");
                    let delay = if e.broker_unreachable() {
                        self.instance.refresh_route_soon(&mq.topic);
                        o.pull_time_delay_when_broker_unreachable
                    } else {
                        o.pull_time_delay_when_exception
                    };
                    if !self.sleep(&slot, delay).await {
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn assign_and_subscribe_do_not_mix_and_poll_before_start_is_empty() {
        let c = LitePullConsumer::new(ClientConfig::new("127.0.0.1:1"), LitePullConsumerOptions::new("g")).unwrap();
        c.assign(vec![MessageQueue::new("T", "b", 0)]).unwrap();
        assert!(matches!(c.subscribe("T", "*"), Err(ClientError::State(_))));
        assert!(c.poll(Duration::from_millis(10)).await.is_empty());
        let opts = LitePullConsumerOptions::new("g");
        assert_eq!(opts.cache_batches(), 1000);
        c.shutdown().await;
    }
}
