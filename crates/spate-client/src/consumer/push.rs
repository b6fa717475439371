//! The push consumer (upstream `DefaultMQPushConsumer`): one long-polling pull
//! loop per assigned queue feeds the listener; rebalancing assigns queues;
//! offsets are committed as messages are consumed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use spate_remoting::protocol::{retry_topic, ConsumerData, MessageQueue, SubscriptionData, TagFilter};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::consumer::api::{PullArgs, PullStatus};
use crate::consumer::offset_store::{OffsetBackend, OffsetStore};
use crate::consumer::process_queue::{FlowDecision, FlowLimits, QueueSlot};
use crate::consumer::rebalance::{plan, start_offset, target_queues};
use crate::consumer::{
    default_offset_store_dir, BoxFuture, ConsumeContext, ConsumeFromWhere, ConsumeOrderlyStatus, ConsumeStatus,
    MessageListener, MessageModel,
};
use crate::error::{ClientError, Result};
use crate::instance::{ClientInstance, ConsumerMember};
use crate::message::MessageExt;
use crate::uniq_id::now_ms;

/// Rebalance retry while some topic has no route or some queue no start
/// offset (rocketmq-client-rust's minimum rebalance interval).
const REBALANCE_RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Push consumer settings (upstream `DefaultMQPushConsumer`).
#[derive(Debug, Clone)]
pub struct PushConsumerOptions {
    /// `consumerGroup`.
    pub group: String,
    /// `messageModel` (CLUSTERING).
    pub message_model: MessageModel,
    /// `consumeFromWhere` (CONSUME_FROM_LAST_OFFSET).
    pub consume_from_where: ConsumeFromWhere,
    /// `consumeTimestamp` as ms since the epoch, for [`ConsumeFromWhere::Timestamp`] (default: half an hour ago).
    pub consume_timestamp_ms: i64,
    /// `consumeThreadMin`: kept for familiarity; the worker count is `consumeThreadMax` (20).
    pub consume_thread_min: usize,
    /// `consumeThreadMax`: listener calls running at once (20).
    pub consume_thread_max: usize,
    /// `consumeMessageBatchMaxSize`: messages per listener call (1).
    pub consume_message_batch_max_size: usize,
    /// `pullBatchSize`: messages asked for per pull (32).
    pub pull_batch_size: i32,
    /// `pullThresholdForQueue`: cached messages per queue before pulling pauses (1000).
    pub pull_threshold_for_queue: usize,
    /// `pullThresholdSizeForQueue` in MiB: cached body size per queue before pulling pauses (100).
    pub pull_threshold_size_for_queue_mib: usize,
    /// `consumeConcurrentlyMaxSpan`: offset span of a queue's cache before pulling pauses (2000).
    pub consume_concurrently_max_span: i64,
    /// `pullInterval`: pause between pulls of one queue (0).
    pub pull_interval: Duration,
    /// `brokerSuspendMaxTimeMillis`: how long the broker may hold a pull (15 s).
    pub broker_suspend_max_time: Duration,
    /// `consumerTimeoutMillisWhenSuspend`: timeout of a held pull (30 s).
    pub consumer_timeout_when_suspend: Duration,
    /// `pullTimeDelayMillsWhenException`: pause after a failed pull (3 s).
    pub pull_time_delay_when_exception: Duration,
    /// Pause after a pull that could not reach its broker (Spate's own,
    /// 100 ms): the route is refreshed at once, so after a failover the
    /// next pull goes to the new master instead of waiting out
    /// `pullTimeDelayMillsWhenException`.
    pub pull_time_delay_when_broker_unreachable: Duration,
    /// `pullTimeDelayMillsWhenFlowControl`: pause while flow control holds (50 ms).
    pub pull_time_delay_when_flow_control: Duration,
    /// Rebalance period (`rocketmq.client.rebalance.waitInterval`, 20 s).
    pub rebalance_interval: Duration,
    /// `maxReconsumeTimes`: retries before the broker moves a message to the DLQ (16).
    pub max_reconsume_times: i32,
    /// Delay before a locally retried batch is consumed again, when handing it
    /// back to the broker failed (upstream's 5 s).
    pub reconsume_later_delay: Duration,
    /// `suspendCurrentQueueTimeMillis`: pause of an orderly queue after a failure (1 s).
    pub suspend_current_queue_time: Duration,
    /// Orderly: how often queue locks are renewed (`rocketmq.client.rebalance.lockInterval`, 20 s).
    pub lock_interval: Duration,
    /// Orderly: a lock not renewed for this long is treated as lost
    /// (`rocketmq.client.rebalance.lockMaxLiveTime`, 30 s).
    pub lock_max_live_time: Duration,
    /// `awaitTerminationMillisWhenShutdown`: how long shutdown waits for running listeners (5 s).
    pub await_termination_when_shutdown: Duration,
    /// Broadcasting: directory of the offset files (`rocketmq.client.localOffsetStoreDir`,
    /// `$HOME/.rocketmq_offsets`); the file is `<dir>/<ip>@<instanceName or DEFAULT>/<group>/offsets.json`.
    pub offset_store_dir: PathBuf,
}

impl PushConsumerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        PushConsumerOptions {
            group: group.into(),
            message_model: MessageModel::Clustering,
            consume_from_where: ConsumeFromWhere::LastOffset,
            consume_timestamp_ms: now_ms() - 30 * 60 * 1000,
            consume_thread_min: 20,
            consume_thread_max: 20,
            consume_message_batch_max_size: 1,
            pull_batch_size: 32,
            pull_threshold_for_queue: 1000,
            pull_threshold_size_for_queue_mib: 100,
            consume_concurrently_max_span: 2000,
            pull_interval: Duration::ZERO,
            broker_suspend_max_time: Duration::from_millis(15_000),
            consumer_timeout_when_suspend: Duration::from_millis(30_000),
            pull_time_delay_when_exception: Duration::from_millis(3000),
            pull_time_delay_when_broker_unreachable: Duration::from_millis(100),
            pull_time_delay_when_flow_control: Duration::from_millis(50),
            rebalance_interval: Duration::from_secs(20),
            max_reconsume_times: 16,
            reconsume_later_delay: Duration::from_secs(5),
            suspend_current_queue_time: Duration::from_secs(1),
            lock_interval: Duration::from_secs(20),
            lock_max_live_time: Duration::from_secs(30),
            await_termination_when_shutdown: Duration::from_secs(5),
            offset_store_dir: default_offset_store_dir(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |name, reason: &str| Err(ClientError::Config { name, reason: reason.to_string() });
        if self.group.is_empty() {
            return bad("consumerGroup", "empty");
        }
        if self.consume_thread_max == 0 || self.consume_thread_min > self.consume_thread_max {
            return bad("consumeThreadMax", "must be positive and at least consumeThreadMin");
        }
        if self.consume_thread_max > u32::MAX as usize {
            return bad("consumeThreadMax", "too large");
        }
        if !(1..=1024).contains(&self.consume_message_batch_max_size) {
            return bad("consumeMessageBatchMaxSize", "must be in 1..=1024");
        }
        if !(1..=1024).contains(&self.pull_batch_size) {
            return bad("pullBatchSize", "must be in 1..=1024");
        }
        if self.pull_threshold_for_queue == 0 || self.pull_threshold_size_for_queue_mib == 0 {
            return bad("pullThresholdForQueue", "thresholds must be positive");
        }
        if self.consumer_timeout_when_suspend <= self.broker_suspend_max_time {
            return bad("consumerTimeoutMillisWhenSuspend", "must exceed brokerSuspendMaxTimeMillis");
        }
        if self.rebalance_interval.is_zero() || self.lock_interval.is_zero() {
            return bad("rebalanceInterval", "intervals must be positive");
        }
        Ok(())
    }

    fn flow_limits(&self, orderly: bool) -> FlowLimits {
        FlowLimits {
            messages_max: self.pull_threshold_for_queue,
            bytes_max: self.pull_threshold_size_for_queue_mib.saturating_mul(1024 * 1024),
            span_max: (!orderly).then_some(self.consume_concurrently_max_span),
        }
    }
}

const CREATED: u8 = 0;
const RUNNING: u8 = 1;
const STOPPED: u8 = 2;

struct PushInner {
    instance: Arc<ClientInstance>,
    owns_instance: bool,
    options: PushConsumerOptions,
    subscriptions: RwLock<BTreeMap<String, SubscriptionData>>,
    listener: RwLock<Option<MessageListener>>,
    offsets: OffsetStore,
    slots: Mutex<HashMap<MessageQueue, Arc<QueueSlot>>>,
    heartbeated: Mutex<HashSet<String>>,
    rebalance_signal: Notify,
    stop: CancellationToken,
    workers: Arc<Semaphore>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    state: AtomicU8,
}

/// Receives messages pushed to a listener. Create, [`subscribe`](PushConsumer::subscribe),
/// [`start`](PushConsumer::start), and [`shutdown`](PushConsumer::shutdown) when done
/// (dropping it without shutdown stops its tasks but persists nothing).
pub struct PushConsumer {
    inner: Arc<PushInner>,
}

impl std::fmt::Debug for PushConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushConsumer")
            .field("group", &self.inner.options.group)
            .field("client_id", &self.inner.instance.client_id())
            .finish()
    }
}

impl Drop for PushConsumer {
    fn drop(&mut self) {
        self.inner.stop.cancel();
    }
}

impl PushConsumer {
    /// A consumer on its own client instance.
    pub fn new(config: ClientConfig, options: PushConsumerOptions) -> Result<PushConsumer> {
        Self::build(ClientInstance::new(config)?, options, true)
    }

    /// A consumer on a shared client instance.
    pub fn with_instance(instance: Arc<ClientInstance>, options: PushConsumerOptions) -> Result<PushConsumer> {
        Self::build(instance, options, false)
    }

    fn build(instance: Arc<ClientInstance>, options: PushConsumerOptions, owns: bool) -> Result<PushConsumer> {
        options.validate()?;
        let backend =
            OffsetBackend::for_model(options.message_model, &options.offset_store_dir, &instance, &options.group);
        let offsets = OffsetStore::new(&options.group, instance.clone(), backend)?;
        let workers = Arc::new(Semaphore::new(options.consume_thread_max));
        Ok(PushConsumer {
            inner: Arc::new(PushInner {
                instance,
                owns_instance: owns,
                options,
                subscriptions: RwLock::new(BTreeMap::new()),
                listener: RwLock::new(None),
                offsets,
                slots: Mutex::new(HashMap::new()),
                heartbeated: Mutex::new(HashSet::new()),
                rebalance_signal: Notify::new(),
                stop: CancellationToken::new(),
                workers,
                tasks: Mutex::new(Vec::new()),
                state: AtomicU8::new(CREATED),
            }),
        })
    }

    /// Subscribes to `topic` with a tag expression: `*`, or tags joined by
    /// `||` (spaces allowed). Call before or after [`start`](PushConsumer::start);
    /// a later call for the same topic replaces the expression.
    pub fn subscribe(&self, topic: &str, expression: &str) -> Result<()> {
        spate_common::message::validate_topic(topic)?;
        let sub = TagFilter::parse(expression).subscription(topic, expression, now_ms());
        self.inner.subscriptions.write().insert(topic.to_string(), sub);
        if self.inner.state.load(Ordering::Acquire) == RUNNING {
            self.inner.rebalance_signal.notify_one();
        }
        Ok(())
    }

    /// Subscribes to `topic` with a SQL92 filter on message properties
    /// (upstream's `MessageSelector.bySql`), e.g. `region = 'hz' AND a > 5`.
    /// The broker evaluates it: unmatched messages are never sent here. An
    /// invalid expression is refused by the broker on the first pull.
    pub fn subscribe_sql(&self, topic: &str, expression: &str) -> Result<()> {
        spate_common::message::validate_topic(topic)?;
        let sub = SubscriptionData {
            class_filter_mode: false,
            topic: topic.to_string(),
            sub_string: expression.to_string(),
            tags_set: Default::default(),
            code_set: Default::default(),
            sub_version: now_ms(),
            expression_type: Some("SQL92".into()),
        };
        self.inner.subscriptions.write().insert(topic.to_string(), sub);
        if self.inner.state.load(Ordering::Acquire) == RUNNING {
            self.inner.rebalance_signal.notify_one();
        }
        Ok(())
    }

    /// Starts pulling and feeding `listener`. Must run inside a tokio runtime.
    pub async fn start(&self, listener: MessageListener) -> Result<()> {
        let inner = &self.inner;
        if inner.state.compare_exchange(CREATED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(ClientError::State("push consumer was already started"));
        }
        if inner.subscriptions.read().is_empty() {
            inner.state.store(CREATED, Ordering::Release);
            return Err(ClientError::Config { name: "subscription", reason: "subscribe to a topic first".into() });
        }
        *inner.listener.write() = Some(listener.clone());
        if inner.options.message_model == MessageModel::Clustering {
            let retry = retry_topic(&inner.options.group);
            let sub = TagFilter::All.subscription(&retry, "*", now_ms());
            inner.subscriptions.write().entry(retry).or_insert(sub);
        }
        let weak: Weak<PushInner> = Arc::downgrade(inner);
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
        let mut tasks = vec![tokio::spawn(inner.clone().rebalance_loop()), tokio::spawn(inner.clone().persist_loop())];
        if listener.is_orderly() && inner.options.message_model == MessageModel::Clustering {
            tasks.push(tokio::spawn(inner.clone().lock_loop()));
        }
        inner.tasks.lock().extend(tasks);
        tracing::info!(group = inner.options.group, client_id = inner.instance.client_id(), "push consumer started");
        Ok(())
    }

    /// Asks for a rebalance now (it also runs every `rebalance_interval` and
    /// when a broker reports a change of the group).
    pub fn rebalance_now(&self) {
        self.inner.rebalance_signal.notify_one();
    }

    /// The queues this consumer currently pulls from, sorted.
    pub fn assigned_queues(&self) -> Vec<MessageQueue> {
        let mut v: Vec<MessageQueue> = self.inner.slots.lock().keys().cloned().collect();
        v.sort();
        v
    }

    /// The client instance in use.
    pub fn instance(&self) -> &Arc<ClientInstance> {
        &self.inner.instance
    }

    /// Stops pulling, waits up to `awaitTerminationMillisWhenShutdown` for
    /// running listeners, persists offsets, releases orderly locks and
    /// unregisters from the brokers.
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
        let all = inner.options.consume_thread_max as u32;
        if tokio::time::timeout(inner.options.await_termination_when_shutdown, inner.workers.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!(group = inner.options.group, "listeners still running at shutdown");
        }
        let slots: Vec<Arc<QueueSlot>> = inner.slots.lock().drain().map(|(_, s)| s).collect();
        for s in &slots {
            s.drop_queue();
        }
        let mqs: Vec<MessageQueue> = slots.iter().map(|s| s.mq.clone()).collect();
        if let Err(e) = inner.offsets.persist(&mqs).await {
            tracing::warn!(group = inner.options.group, error = %e, "offsets not persisted at shutdown");
        }
        if inner.is_orderly_clustering() {
            inner.unlock(mqs.into_iter().collect()).await;
        }
        inner.instance.unregister_consumer(&inner.options.group);
        inner.instance.unregister_client(None, Some(&inner.options.group)).await;
        if inner.owns_instance {
            inner.instance.shutdown().await;
        }
        tracing::info!(group = inner.options.group, "push consumer shut down");
    }
}

impl ConsumerMember for PushInner {
    fn consumer_data(&self) -> ConsumerData {
        ConsumerData {
            group_name: self.options.group.clone(),
            consume_type: "CONSUME_PASSIVELY".into(),
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

impl PushInner {
    fn listener(&self) -> Option<MessageListener> {
        self.listener.read().clone()
    }

    fn is_orderly_clustering(&self) -> bool {
        self.options.message_model == MessageModel::Clustering && self.listener().is_some_and(|l| l.is_orderly())
    }

    async fn sleep(&self, slot: Option<&QueueSlot>, d: Duration) -> bool {
        let slot_cancel = async {
            match slot {
                Some(s) => s.cancel.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = slot_cancel => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    /// Heartbeats brokers this consumer has not told about itself yet, so they
    /// list it among the group before it asks for the group's members.
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
            // Until every topic is routed and every queue started, try again
            // soon instead of waiting out the full interval.
            let wait = if settled {
                self.options.rebalance_interval
            } else {
                self.options.rebalance_interval.min(REBALANCE_RETRY_INTERVAL)
            };
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                _ = self.rebalance_signal.notified() => {}
            }
        }
    }

    /// Rebalances every subscribed topic; false when some topic or queue
    /// could not be settled.
    async fn rebalance(self: &Arc<Self>) -> bool {
        let topics: Vec<String> = self.subscriptions.read().keys().cloned().collect();
        let mut settled = true;
        for topic in topics {
            if self.stop.is_cancelled() {
                return true;
            }
            self.heartbeat_new_brokers().await;
            let target = target_queues(&self.instance, &self.options.group, &topic, self.options.message_model).await;
            match target {
                Ok(target) => settled &= self.apply_assignment(&topic, target).await,
                Err(e) => {
                    tracing::debug!(group = self.options.group, topic, error = %e, "rebalance skipped");
                    settled = false;
                }
            }
        }
        settled
    }

    /// Starts and stops queues; false when a queue could not be started.
    async fn apply_assignment(self: &Arc<Self>, topic: &str, target: Vec<MessageQueue>) -> bool {
        let current: BTreeSet<MessageQueue> = self.slots.lock().keys().filter(|q| q.topic == topic).cloned().collect();
        let target: BTreeSet<MessageQueue> = target.into_iter().collect();
        let (add, remove) = plan(&current, &target);
        if !add.is_empty() || !remove.is_empty() {
            tracing::info!(group = self.options.group, topic, added = add.len(), removed = remove.len(), "rebalanced");
        }
        for mq in remove {
            self.remove_queue(&mq).await;
        }
        let wanted = add.len();
        let add = if self.is_orderly_clustering() { self.lock(add.into_iter().collect()).await } else { add };
        let mut settled = add.len() == wanted;
        for mq in add {
            settled &= self.add_queue(mq).await;
        }
        settled
    }

    /// Starts pulling a queue; false when its start offset is not known yet.
    async fn add_queue(self: &Arc<Self>, mq: MessageQueue) -> bool {
        let Some(listener) = self.listener() else { return true };
        let o = &self.options;
        let offset = match start_offset(
            &self.instance,
            &self.offsets,
            &mq,
            o.consume_from_where,
            o.consume_timestamp_ms,
        )
        .await
        {
            Ok(off) => off,
            Err(e) => {
                tracing::debug!(topic = mq.topic, broker = mq.broker_name, queue = mq.queue_id, error = %e,
                    "no start offset; queue left for the next rebalance");
                return false;
            }
        };
        let slot = Arc::new(QueueSlot::new(mq.clone()));
        if self.is_orderly_clustering() {
            slot.set_locked(true, now_ms());
        }
        self.slots.lock().insert(mq, slot.clone());
        tokio::spawn(self.clone().pull_loop(slot.clone(), offset));
        if listener.is_orderly() {
            tokio::spawn(self.clone().orderly_loop(slot));
        }
        true
    }

    async fn remove_queue(&self, mq: &MessageQueue) {
        let Some(slot) = self.slots.lock().remove(mq) else { return };
        slot.drop_queue();
        let orderly = self.is_orderly_clustering();
        // Orderly: let a running listener finish before the offset is saved and
        // another consumer may lock the queue (bounded wait, as upstream).
        let guard = if orderly {
            tokio::time::timeout(Duration::from_secs(1), slot.consume_lock.lock()).await.ok()
        } else {
            None
        };
        if let Err(e) = self.offsets.persist(std::slice::from_ref(mq)).await {
            tracing::debug!(topic = mq.topic, queue = mq.queue_id, error = %e, "offset of a dropped queue not persisted");
        }
        self.offsets.remove(mq);
        if orderly && guard.is_some() {
            self.unlock(BTreeSet::from([mq.clone()])).await;
        } else if orderly {
            // A listener is still running on this queue: keep the broker's
            // lock (not renewed any more, it expires) so no other consumer
            // starts on the queue while ours is mid-message.
            tracing::debug!(
                topic = mq.topic,
                queue = mq.queue_id,
                "queue dropped while consuming; lock left to expire"
            );
        }
        drop(guard);
    }

    fn by_broker(mqs: BTreeSet<MessageQueue>) -> BTreeMap<String, BTreeSet<MessageQueue>> {
        let mut out: BTreeMap<String, BTreeSet<MessageQueue>> = BTreeMap::new();
        for mq in mqs {
            out.entry(mq.broker_name.clone()).or_default().insert(mq);
        }
        out
    }

    /// Locks `mqs` on their brokers; returns those now held.
    async fn lock(&self, mqs: BTreeSet<MessageQueue>) -> Vec<MessageQueue> {
        let mut held = Vec::new();
        for (broker, set) in Self::by_broker(mqs) {
            let Some(addr) = self.instance.master_addr(&broker) else { continue };
            match self.instance.lock_batch(&addr, &self.options.group, set).await {
                Ok(ok) => held.extend(ok),
                Err(e) => tracing::debug!(broker, error = %e, "queue lock failed"),
            }
        }
        held
    }

    async fn unlock(&self, mqs: BTreeSet<MessageQueue>) {
        for (broker, set) in Self::by_broker(mqs) {
            let Some(addr) = self.instance.master_addr(&broker) else { continue };
            if let Err(e) = self.instance.unlock_batch(&addr, &self.options.group, set).await {
                tracing::debug!(broker, error = %e, "queue unlock failed");
            }
        }
    }

    async fn lock_loop(self: Arc<Self>) {
        while self.sleep(None, self.options.lock_interval).await {
            let slots: Vec<Arc<QueueSlot>> = self.slots.lock().values().cloned().collect();
            let held: BTreeSet<MessageQueue> =
                self.lock(slots.iter().map(|s| s.mq.clone()).collect()).await.into_iter().collect();
            let now = now_ms();
            for s in slots {
                s.set_locked(held.contains(&s.mq), now);
            }
        }
    }

    async fn persist_loop(self: Arc<Self>) {
        while self.sleep(None, self.instance.config().persist_consumer_offset_interval).await {
            let mqs: Vec<MessageQueue> = self.slots.lock().keys().cloned().collect();
            if let Err(e) = self.offsets.persist(&mqs).await {
                tracing::debug!(group = self.options.group, error = %e, "periodic offset persist failed");
            }
        }
    }

    async fn pull_loop(self: Arc<Self>, slot: Arc<QueueSlot>, mut next_offset: i64) {
        let Some(listener) = self.listener() else { return };
        let orderly = listener.is_orderly();
        let limits = self.options.flow_limits(orderly);
        let mq = slot.mq.clone();
        let mut flow_logged = 0u64;
        loop {
            if slot.is_dropped() || self.stop.is_cancelled() {
                break;
            }
            let decision = slot.pq.lock().flow_control(&limits);
            if decision != FlowDecision::Pull {
                flow_logged += 1;
                if flow_logged % 1000 == 1 {
                    tracing::debug!(topic = mq.topic, queue = mq.queue_id, ?decision, "flow control: pull delayed");
                }
                if !self.sleep(Some(&slot), self.options.pull_time_delay_when_flow_control).await {
                    break;
                }
                continue;
            }
            if orderly
                && self.options.message_model == MessageModel::Clustering
                && !slot.holds_lock(now_ms(), self.options.lock_max_live_time.as_millis() as i64)
            {
                if !self.sleep(Some(&slot), self.options.pull_time_delay_when_exception).await {
                    break;
                }
                continue;
            }
            let Some(sub) = self.subscriptions.read().get(&mq.topic).cloned() else { break };
            let result = self.pull_once(&slot, &sub, next_offset).await;
            let delay = match result {
                Ok(Some((status, next, msgs))) => {
                    debug_assert!(next >= 0);
                    match status {
                        PullStatus::Found | PullStatus::NoNewMsg | PullStatus::NoMatchedMsg => {
                            next_offset = next;
                            if msgs.is_empty() {
                                // Nothing to consume in this range: move the committed offset past it.
                                if slot.pq.lock().count() == 0 {
                                    self.offsets.update(&mq, next, true);
                                }
                            } else if !self.dispatch(&listener, &slot, msgs).await {
                                break;
                            }
                        }
                        PullStatus::OffsetIllegal => {
                            tracing::warn!(
                                topic = mq.topic,
                                queue = mq.queue_id,
                                from = next_offset,
                                to = next,
                                "pull offset moved"
                            );
                            // As upstream: drop this queue's state (in-flight
                            // consumption of the old range must not commit),
                            // save the new position, and let a rebalance start
                            // the queue afresh from it.
                            slot.drop_queue();
                            slot.pq.lock().clear();
                            self.offsets.update(&mq, next, false);
                            let _ = self.offsets.persist(std::slice::from_ref(&mq)).await;
                            {
                                let mut slots = self.slots.lock();
                                if slots.get(&mq).is_some_and(|s| Arc::ptr_eq(s, &slot)) {
                                    slots.remove(&mq);
                                }
                            }
                            self.rebalance_now();
                            break;
                        }
                    }
                    self.options.pull_interval
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(topic = mq.topic, broker = mq.broker_name, queue = mq.queue_id, error = %e,
                        "pull failed");
                    if e.broker_unreachable() {
                        self.instance.refresh_route_soon(&mq.topic);
                        self.options.pull_time_delay_when_broker_unreachable
                    } else {
                        self.options.pull_time_delay_when_exception
                    }
                }
            };
            if !delay.is_zero() && !self.sleep(Some(&slot), delay).await {
                break;
            }
        }
    }

    /// One long-polling pull; `Ok(None)` when stopped meanwhile.
    async fn pull_once(
        &self,
        slot: &QueueSlot,
        sub: &SubscriptionData,
        offset: i64,
    ) -> Result<Option<(PullStatus, i64, Vec<MessageExt>)>> {
        let mq = &slot.mq;
        let addr = self.instance.pull_addr(mq).await?;
        let commit_offset = match self.options.message_model {
            MessageModel::Clustering => self.offsets.read_memory(mq).filter(|o| *o > 0),
            MessageModel::Broadcasting => None,
        };
        let args = PullArgs {
            group: &self.options.group,
            mq,
            offset,
            max_msgs: self.options.pull_batch_size,
            commit_offset,
            subscription: sub,
            suspend: Some(self.options.broker_suspend_max_time),
            timeout: self.options.consumer_timeout_when_suspend,
        };
        tokio::select! {
            _ = self.stop.cancelled() => Ok(None),
            _ = slot.cancel.cancelled() => Ok(None),
            r = self.instance.pull(&addr, args) => {
                let r = r?;
                Ok(Some((r.status, r.next_begin_offset, r.messages)))
            }
        }
    }

    /// Caches pulled messages and hands them to the listener; false when stopped.
    async fn dispatch(
        self: &Arc<Self>,
        listener: &MessageListener,
        slot: &Arc<QueueSlot>,
        msgs: Vec<MessageExt>,
    ) -> bool {
        // Only messages the cache did not already hold are handed out: one
        // already cached (a repeated pull) is being consumed elsewhere.
        let msgs: Vec<MessageExt> = {
            let mut pq = slot.pq.lock();
            msgs.into_iter().filter(|m| pq.put(std::iter::once(m.clone())) == 1).collect()
        };
        if listener.is_orderly() {
            slot.arrived.notify_one();
            return true;
        }
        for chunk in msgs.chunks(self.options.consume_message_batch_max_size) {
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = slot.cancel.cancelled() => return false,
                p = self.workers.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
            };
            let fut = self.clone().consume_concurrently(slot.clone(), chunk.to_vec());
            tokio::spawn(async move {
                fut.await;
                drop(permit);
            });
        }
        true
    }

    fn consume_concurrently(self: Arc<Self>, slot: Arc<QueueSlot>, msgs: Vec<MessageExt>) -> BoxFuture<()> {
        Box::pin(async move {
            let Some(listener) = self.listener() else { return };
            if slot.is_dropped() {
                return;
            }
            let ctx = ConsumeContext { message_queue: slot.mq.clone() };
            let status = listener.consume(msgs.clone(), ctx).await;
            if slot.is_dropped() {
                // Another consumer owns the queue now; it will deliver these again.
                return;
            }
            let mut done: Vec<i64> = Vec::with_capacity(msgs.len());
            let mut failed = Vec::new();
            match (status, self.options.message_model) {
                (ConsumeStatus::ConsumeSuccess, _) | (ConsumeStatus::ReconsumeLater, MessageModel::Broadcasting) => {
                    done.extend(msgs.iter().map(|m| m.queue_offset));
                }
                (ConsumeStatus::ReconsumeLater, MessageModel::Clustering) => {
                    for m in msgs {
                        let sent =
                            self.instance.send_back(&m, &self.options.group, 0, self.options.max_reconsume_times).await;
                        match sent {
                            Ok(()) => done.push(m.queue_offset),
                            Err(e) => {
                                tracing::debug!(msg_id = m.msg_id, error = %e, "send back failed; retrying locally");
                                failed.push(m);
                            }
                        }
                    }
                }
            }
            let commit = slot.pq.lock().remove(&done);
            if let Some(off) = commit {
                self.offsets.update(&slot.mq, off, true);
            }
            if !failed.is_empty() {
                self.clone().retry_later(slot, failed);
            }
        })
    }

    fn retry_later(self: Arc<Self>, slot: Arc<QueueSlot>, mut msgs: Vec<MessageExt>) {
        for m in &mut msgs {
            m.reconsume_times += 1;
        }
        tokio::spawn(async move {
            if !self.sleep(Some(&slot), self.options.reconsume_later_delay).await {
                return;
            }
            let permit = tokio::select! {
                _ = self.stop.cancelled() => return,
                p = self.workers.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            };
            self.clone().consume_concurrently(slot, msgs).await;
            drop(permit);
        });
    }

    async fn orderly_loop(self: Arc<Self>, slot: Arc<QueueSlot>) {
        let Some(listener) = self.listener() else { return };
        let clustering = self.options.message_model == MessageModel::Clustering;
        let lock_live_ms = self.options.lock_max_live_time.as_millis() as i64;
        loop {
            if slot.is_dropped() || self.stop.is_cancelled() {
                break;
            }
            if clustering && !slot.holds_lock(now_ms(), lock_live_ms) {
                if !self.sleep(Some(&slot), Duration::from_millis(100)).await {
                    break;
                }
                continue;
            }
            // Take the queue's consume lock and a worker first, then check the
            // queue is still ours, and only then take messages: a queue
            // dropped or unlocked meanwhile is never consumed here.
            let guard = slot.consume_lock.lock().await;
            let permit = tokio::select! {
                _ = self.stop.cancelled() => break,
                p = self.workers.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            if slot.is_dropped() || self.stop.is_cancelled() {
                break;
            }
            if clustering && !slot.holds_lock(now_ms(), lock_live_ms) {
                continue;
            }
            let msgs = slot.pq.lock().take(self.options.consume_message_batch_max_size);
            if msgs.is_empty() {
                drop((permit, guard));
                tokio::select! {
                    _ = self.stop.cancelled() => break,
                    _ = slot.cancel.cancelled() => break,
                    _ = slot.arrived.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
            let ctx = ConsumeContext { message_queue: slot.mq.clone() };
            // Messages that already used up their retries (upstream's
            // checkReconsumeTimes) go to the dead-letter queue, not round again.
            let exhausted = clustering && msgs.iter().all(|m| m.reconsume_times >= self.options.max_reconsume_times);
            let batch = if exhausted { msgs.clone() } else { Vec::new() };
            let status = listener.consume_orderly(msgs, ctx).await;
            let status = match status {
                ConsumeOrderlyStatus::SuspendCurrentQueueAMoment if exhausted => {
                    let mut all_sent = true;
                    for m in &batch {
                        let sent =
                            self.instance.send_back(m, &self.options.group, -1, self.options.max_reconsume_times).await;
                        if let Err(e) = sent {
                            tracing::debug!(msg_id = m.msg_id, error = %e, "dead-lettering failed; retrying locally");
                            all_sent = false;
                            break;
                        }
                    }
                    if all_sent {
                        ConsumeOrderlyStatus::Success
                    } else {
                        ConsumeOrderlyStatus::SuspendCurrentQueueAMoment
                    }
                }
                other => other,
            };
            drop(permit);
            if slot.is_dropped() {
                break;
            }
            match status {
                ConsumeOrderlyStatus::Success => {
                    let commit = slot.pq.lock().commit();
                    if let Some(off) = commit {
                        self.offsets.update(&slot.mq, off, false);
                    }
                }
                ConsumeOrderlyStatus::SuspendCurrentQueueAMoment => {
                    slot.pq.lock().make_again();
                    drop(guard);
                    if !self.sleep(Some(&slot), self.options.suspend_current_queue_time).await {
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

    #[test]
    fn options_are_checked_by_upstream_name() {
        let mut o = PushConsumerOptions::new("g");
        assert!(o.validate().is_ok());
        o.consumer_timeout_when_suspend = Duration::from_secs(10);
        assert!(o.validate().unwrap_err().to_string().contains("consumerTimeoutMillisWhenSuspend"));
        let mut o = PushConsumerOptions::new("g");
        o.consume_thread_min = 30;
        assert!(o.validate().unwrap_err().to_string().contains("consumeThreadMax"));
        let limits = PushConsumerOptions::new("g").flow_limits(false);
        assert_eq!((limits.messages_max, limits.bytes_max, limits.span_max), (1000, 100 << 20, Some(2000)));
        assert_eq!(PushConsumerOptions::new("g").flow_limits(true).span_max, None);
    }

    #[tokio::test]
    async fn start_requires_a_subscription_and_shutdown_is_idempotent() {
        let c = PushConsumer::new(ClientConfig::new("127.0.0.1:1"), PushConsumerOptions::new("g")).unwrap();
        assert!(c.subscribe("bad topic!", "*").is_err());
        let listener = MessageListener::concurrently(|_, _| ConsumeStatus::ConsumeSuccess);
        assert!(matches!(c.start(listener).await, Err(ClientError::Config { name: "subscription", .. })));
        c.shutdown().await;
        c.shutdown().await;
    }
}
