//! The producer: picks a queue, sends with SEND_MESSAGE_V2 (or
//! SEND_BATCH_MESSAGE), retries on another broker, reports where the message
//! was stored.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use spate_common::message::{property, validate_topic};
use spate_remoting::protocol::{MessageQueue, DEFAULT_TOPIC};
use spate_remoting::{request, response, RemotingCommand};
use tokio::sync::Semaphore;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::fault::{FaultPolicy, FaultTable};
use crate::instance::ClientInstance;
use crate::message::{encode_batch, Message};
use crate::route::select_queue;
use crate::transaction::{self, LocalTransactionState, TransactionListener, TransactionSendResult};
use crate::uniq_id::{next_uniq_id, now_ms};

/// Producer settings (upstream `DefaultMQProducer`).
#[derive(Debug, Clone)]
pub struct ProducerOptions {
    /// `producerGroup`.
    pub group: String,
    /// `sendMsgTimeout`: the whole budget of one send, retries included (3000 ms).
    pub send_msg_timeout: Duration,
    /// `retryTimesWhenSendFailed`: further attempts after a failed one, each
    /// on another broker when there is one (2).
    pub retry_times_when_send_failed: u32,
    /// `retryAnotherBrokerWhenNotStoreOK`: also retry when the broker stored the
    /// message but answered FLUSH_DISK_TIMEOUT / FLUSH_SLAVE_TIMEOUT /
    /// SLAVE_NOT_AVAILABLE (false: such a result is returned as is).
    pub retry_another_broker_when_not_store_ok: bool,
    /// Spate's strict mode (no upstream counterpart): a result other than
    /// SEND_OK (flush or slave not confirmed) is returned as
    /// [`ClientError::NotStoredOk`], so "acknowledged" means "stored as the
    /// broker promises" (false).
    pub send_ok_required: bool,
    /// `maxMessageSize`: largest body (or batch body) sent (4 MiB).
    pub max_message_size: usize,
    /// `defaultTopicQueueNums`: queues per broker a topic gets when the broker
    /// auto-creates it on first send (4).
    pub default_topic_queue_nums: i32,
    /// `backPressureForAsyncSendNum`: asynchronous sends awaiting brokers at
    /// once; beyond it `send_async` fails at once (10000).
    pub back_pressure_for_async_send_num: usize,
    /// `compressMsgBodyOverHowmuch`: bodies longer than this are sent
    /// zlib-compressed (4096; batches are never compressed).
    pub compress_msg_body_over_howmuch: usize,
    /// `compressLevel`: zlib level 0-9 (5).
    pub compress_level: u32,
    /// The circuit breaker (`sendLatencyFaultEnable`, `latencyMax`,
    /// `notAvailableDuration`, `detectInterval`, `detectTimeout`; see `fault.rs`).
    pub fault: FaultPolicy,
    /// `vipChannelEnabled`: send to each broker's VIP channel (its port
    /// minus 2), a lane the broker keeps apart from other traffic (false).
    pub vip_channel_enabled: bool,
}

impl ProducerOptions {
    /// Defaults for `group`.
    pub fn new(group: impl Into<String>) -> Self {
        ProducerOptions {
            group: group.into(),
            send_msg_timeout: Duration::from_millis(3000),
            retry_times_when_send_failed: 2,
            retry_another_broker_when_not_store_ok: false,
            send_ok_required: false,
            max_message_size: 4 * 1024 * 1024,
            default_topic_queue_nums: 4,
            back_pressure_for_async_send_num: 10_000,
            compress_msg_body_over_howmuch: 4096,
            compress_level: 5,
            fault: FaultPolicy::default(),
            vip_channel_enabled: false,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.group.is_empty() {
            return Err(ClientError::Config { name: "producerGroup", reason: "empty".into() });
        }
        if self.send_msg_timeout.is_zero() {
            return Err(ClientError::Config { name: "sendMsgTimeout", reason: "must be greater than zero".into() });
        }
        if self.max_message_size == 0 {
            return Err(ClientError::Config { name: "maxMessageSize", reason: "must be greater than zero".into() });
        }
        if self.default_topic_queue_nums <= 0 {
            return Err(ClientError::Config { name: "defaultTopicQueueNums", reason: "must be positive".into() });
        }
        if self.compress_level > 9 {
            return Err(ClientError::Config { name: "compressLevel", reason: "must be 0..=9".into() });
        }
        if self.back_pressure_for_async_send_num == 0 {
            return Err(ClientError::Config { name: "backPressureForAsyncSendNum", reason: "must be positive".into() });
        }
        Ok(())
    }
}

/// How a stored message fared (upstream `SendStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStatus {
    /// Stored (and flushed/replicated as the broker is configured to wait for).
    SendOk,
    /// Stored, but the disk flush did not finish in time (code 10).
    FlushDiskTimeout,
    /// Stored, but the slave did not confirm in time (code 12).
    FlushSlaveTimeout,
    /// Stored, but no slave is available (code 11).
    SlaveNotAvailable,
}

impl SendStatus {
    /// The status for a send response code, `None` for an error code.
    pub fn from_code(code: i32) -> Option<SendStatus> {
        match code {
            response::SUCCESS => Some(SendStatus::SendOk),
            response::FLUSH_DISK_TIMEOUT => Some(SendStatus::FlushDiskTimeout),
            response::FLUSH_SLAVE_TIMEOUT => Some(SendStatus::FlushSlaveTimeout),
            response::SLAVE_NOT_AVAILABLE => Some(SendStatus::SlaveNotAvailable),
            _ => None,
        }
    }
}

/// Where a sent message was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResult {
    /// The outcome.
    pub status: SendStatus,
    /// The client-made id (`UNIQ_KEY`); for a batch, the ids joined by `,`.
    pub msg_id: String,
    /// The broker's offset message id (response header `msgId`).
    pub offset_msg_id: String,
    /// The queue it went to.
    pub message_queue: MessageQueue,
    /// Its offset in that queue (for a batch: the first message's).
    pub queue_offset: i64,
    /// Transaction id, when the broker returned one.
    pub transaction_id: Option<String>,
}

/// A message ready for the wire.
#[derive(Debug, Clone)]
struct Outgoing {
    topic: String,
    body: Bytes,
    flag: i32,
    sys_flag: i32,
    properties: String,
    msg_id: String,
    batch: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Sync,
    Oneway,
}

struct ProducerInner {
    instance: Arc<ClientInstance>,
    owns_instance: bool,
    options: ProducerOptions,
    queue_counter: AtomicUsize,
    async_permits: Arc<Semaphore>,
    runtime: tokio::runtime::Handle,
    shut_down: AtomicBool,
    /// Brokers the circuit breaker keeps new sends away from.
    faults: FaultTable,
}

/// Sends messages. Cheap to clone; clones share one producer.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<ProducerInner>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("group", &self.inner.options.group).finish()
    }
}

impl Producer {
    /// Starts a producer on its own client instance. Must run inside a tokio runtime.
    pub async fn start(config: ClientConfig, options: ProducerOptions) -> Result<Producer> {
        let instance = ClientInstance::new(config)?;
        Self::start_inner(instance, options, true).await
    }

    /// Starts a producer on a shared client instance.
    pub async fn start_with_instance(instance: Arc<ClientInstance>, options: ProducerOptions) -> Result<Producer> {
        Self::start_inner(instance, options, false).await
    }

    async fn start_inner(instance: Arc<ClientInstance>, options: ProducerOptions, owns: bool) -> Result<Producer> {
        options.validate()?;
        instance.start()?;
        instance.register_producer(&options.group)?;
        let permits = Arc::new(Semaphore::new(options.back_pressure_for_async_send_num));
        let inner = ProducerInner {
            instance,
            owns_instance: owns,
            options,
            queue_counter: AtomicUsize::new(rand::random::<u16>() as usize),
            async_permits: permits,
            runtime: tokio::runtime::Handle::current(),
            shut_down: AtomicBool::new(false),
            faults: FaultTable::default(),
        };
        let inner = Arc::new(inner);
        if inner.options.fault.enabled {
            tokio::spawn(probe_isolated(Arc::downgrade(&inner)));
        }
        Ok(Producer { inner })
    }

    /// The client instance this producer uses.
    pub fn instance(&self) -> &Arc<ClientInstance> {
        &self.inner.instance
    }

    /// The options in effect.
    pub fn options(&self) -> &ProducerOptions {
        &self.inner.options
    }

    /// Sends and waits for the broker. On failure retries up to
    /// `retryTimesWhenSendFailed` times on a queue of another broker, within
    /// `sendMsgTimeout` overall.
    pub async fn send(&self, msg: Message) -> Result<SendResult> {
        let out = self.prepare(msg)?;
        self.inner.send_with_retry(&out).await
    }

    /// Sends in the background and returns at once; `callback` gets the
    /// result. Fails at once when `backPressureForAsyncSendNum` sends are
    /// already in flight or the message is invalid.
    pub fn send_async<F>(&self, msg: Message, callback: F) -> Result<()>
    where
        F: FnOnce(Result<SendResult>) + Send + 'static,
    {
        let out = self.prepare(msg)?;
        let permit = self
            .inner
            .async_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ClientError::TooManyInFlight(self.inner.options.back_pressure_for_async_send_num))?;
        let inner = self.inner.clone();
        self.inner.runtime.spawn(async move {
            let result = inner.send_with_retry(&out).await;
            drop(permit);
            callback(result);
        });
        Ok(())
    }

    /// Sets the listener whose local transactions decide the fate of this
    /// producer's half messages, and that answers the brokers' checks for
    /// its group (upstream's `setTransactionListener`).
    pub fn set_transaction_listener(&self, listener: Arc<dyn TransactionListener>) {
        self.inner.instance.set_transaction_listener(&self.inner.options.group, listener);
    }

    /// Sends `msg` as a half message, runs the listener's local
    /// transaction, and commits or rolls the message back by its answer
    /// (upstream's `sendMessageInTransaction`). On `Unknow`, or if the
    /// END_TRANSACTION is lost, the broker checks back later.
    pub async fn send_message_in_transaction(&self, mut msg: Message) -> Result<TransactionSendResult> {
        let group = self.inner.options.group.clone();
        let listener = self
            .inner
            .instance
            .transaction_listener(&group)
            .ok_or(ClientError::State("no transaction listener set (set_transaction_listener)"))?;
        if msg.delay_level() > 0 {
            return Err(ClientError::State("a transactional message cannot be delayed"));
        }
        msg.properties.insert(property::TRAN_MSG.to_string(), "true".to_string());
        msg.properties.insert("PGROUP".to_string(), group.clone());
        let mut out = self.prepare(msg.clone())?;
        out.sys_flag |= spate_common::message::SYSFLAG_TX_PREPARED;
        let send = self.inner.send_with_retry(&out).await?;
        let local_state = if send.status == SendStatus::SendOk {
            let m = msg.clone();
            transaction::run_listener(listener, move |l| l.execute_local_transaction(&m)).await
        } else {
            // Not safely stored: never commit it.
            LocalTransactionState::RollbackMessage
        };
        let commit_log_offset = spate_common::message::parse_offset_msg_id(&send.offset_msg_id)
            .map(|(_, offset)| offset as i64)
            .unwrap_or(-1);
        let req = transaction::end_request(
            &group,
            send.queue_offset,
            commit_log_offset,
            &send.msg_id,
            &send.msg_id,
            local_state,
            false,
        );
        // One way, as upstream: a lost one is settled by the broker's check.
        match self.inner.instance.master_addr(&send.message_queue.broker_name) {
            Some(addr) => {
                if let Err(e) = self.inner.instance.call_oneway(&addr, req).await {
                    tracing::warn!(broker = %addr, error = %e, "END_TRANSACTION not sent; the broker will check back");
                }
            }
            None => tracing::warn!(broker = %send.message_queue.broker_name, "no master address for END_TRANSACTION"),
        }
        Ok(TransactionSendResult { send, local_state })
    }

    /// Sends without waiting for the broker's answer (one attempt).
    pub async fn send_oneway(&self, msg: Message) -> Result<()> {
        let out = self.prepare(msg)?;
        let route = self.inner.instance.publish_route(&out.topic, self.inner.options.default_topic_queue_nums).await?;
        let mq = {
            let mut c = self.inner.queue_counter.fetch_add(1, Ordering::Relaxed);
            select_queue(&route.write_queues, &mut c, &[]).cloned()
        }
        .ok_or_else(|| ClientError::NoRoute { topic: out.topic.clone() })?;
        self.inner.send_once(&out, &mq, Mode::Oneway, self.inner.options.send_msg_timeout).await.map(|_| ())
    }

    /// Sends to one given queue (no retry elsewhere).
    pub async fn send_to_queue(&self, msg: Message, mq: &MessageQueue) -> Result<SendResult> {
        if msg.topic != mq.topic {
            return Err(ClientError::Config {
                name: "messageQueue",
                reason: "queue topic differs from message topic".into(),
            });
        }
        let out = self.prepare(msg)?;
        let r = self
            .inner
            .send_once(&out, mq, Mode::Sync, self.inner.options.send_msg_timeout)
            .await?
            .ok_or(ClientError::State("no result for a synchronous send"))?;
        self.inner.finish(r)
    }

    /// Sends to the queue `selector` picks among the topic's writable queues,
    /// for ordered messages: the same `arg` should map to the same queue. No
    /// retry on another queue (that would break the order).
    pub async fn send_with_selector<A, F>(&self, msg: Message, selector: F, arg: A) -> Result<SendResult>
    where
        F: FnOnce(&[MessageQueue], &Message, &A) -> Option<MessageQueue>,
    {
        let route = self.inner.instance.publish_route(&msg.topic, self.inner.options.default_topic_queue_nums).await?;
        let mq = selector(&route.write_queues, &msg, &arg)
            .ok_or_else(|| ClientError::NoRoute { topic: msg.topic.clone() })?;
        self.send_to_queue(msg, &mq).await
    }

    /// Sends several messages of one topic as one SEND_BATCH_MESSAGE request;
    /// they land in one queue, in order. Retries like [`Producer::send`].
    pub async fn send_batch(&self, msgs: Vec<Message>) -> Result<SendResult> {
        let Some(first) = msgs.first() else {
            return Err(ClientError::InvalidBatch("no messages"));
        };
        let topic = first.topic.clone();
        validate_topic(&topic)?;
        let mut ids = Vec::with_capacity(msgs.len());
        let mut with_ids = Vec::with_capacity(msgs.len());
        for mut m in msgs {
            if m.topic != topic {
                return Err(ClientError::InvalidBatch("messages of different topics"));
            }
            if m.delay_level() > 0 {
                return Err(ClientError::InvalidBatch("delayed messages cannot be batched"));
            }
            if m.topic.starts_with(spate_remoting::protocol::RETRY_GROUP_TOPIC_PREFIX) {
                return Err(ClientError::InvalidBatch("retry-topic messages cannot be batched"));
            }
            if m.body.is_empty() {
                return Err(ClientError::EmptyBody);
            }
            let id = self.ensure_uniq_id(&mut m);
            ids.push(id);
            with_ids.push(m);
        }
        let body = encode_batch(&with_ids)?;
        check_size(body.len(), self.inner.options.max_message_size)?;
        let properties = spate_common::message::encode_properties([(property::WAIT, "true")])?;
        let out = Outgoing { topic, body, flag: 0, sys_flag: 0, properties, msg_id: ids.join(","), batch: true };
        self.inner.send_with_retry(&out).await
    }

    /// The queues this producer would send `topic`'s messages to.
    pub async fn fetch_publish_message_queues(&self, topic: &str) -> Result<Vec<MessageQueue>> {
        let route = self.inner.instance.publish_route(topic, self.inner.options.default_topic_queue_nums).await?;
        Ok(route.write_queues.clone())
    }

    /// Unregisters the group from the brokers; stops the client instance when
    /// the producer owns it. Sends already running finish on their own.
    pub async fn shutdown(&self) {
        if self.inner.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let i = &self.inner.instance;
        i.unregister_producer(&self.inner.options.group);
        i.unregister_client(Some(&self.inner.options.group), None).await;
        if self.inner.owns_instance {
            i.shutdown().await;
        }
    }

    fn ensure_uniq_id(&self, m: &mut Message) -> String {
        if let Some(id) = m.uniq_id() {
            return id.to_string();
        }
        let id = next_uniq_id(self.inner.instance.client_ip());
        m.properties.insert(property::UNIQ_KEY.to_string(), id.clone());
        id
    }

    fn prepare(&self, mut msg: Message) -> Result<Outgoing> {
        if self.inner.shut_down.load(Ordering::Relaxed) {
            return Err(ClientError::State("producer is shut down"));
        }
        validate_topic(&msg.topic)?;
        if msg.body.is_empty() {
            return Err(ClientError::EmptyBody);
        }
        check_size(msg.body.len(), self.inner.options.max_message_size)?;
        let msg_id = self.ensure_uniq_id(&mut msg);
        let properties = msg.encoded_properties()?;
        let (body, sys_flag) = self.maybe_compress(msg.body);
        Ok(Outgoing { topic: msg.topic, body, flag: msg.flag, sys_flag, properties, msg_id, batch: false })
    }

    /// zlib for bodies above `compressMsgBodyOverHowmuch`, when it pays.
    fn maybe_compress(&self, body: Bytes) -> (Bytes, i32) {
        let o = &self.inner.options;
        if body.len() <= o.compress_msg_body_over_howmuch {
            return (body, 0);
        }
        match crate::compress::zlib(&body, o.compress_level) {
            Ok(packed) if packed.len() < body.len() => (Bytes::from(packed), crate::compress::zlib_sys_flag(0)),
            _ => (body, 0),
        }
    }
}

fn check_size(size: usize, max: usize) -> Result<()> {
    if size > max {
        return Err(ClientError::MessageTooLarge { size, max });
    }
    Ok(())
}

/// Probes the brokers the breaker isolates, every `detectInterval`, with a
/// light request (GET_BROKER_RUNTIME_INFO) that must answer within
/// `detectTimeout`; one that does is trusted again. Ends with the producer.
async fn probe_isolated(producer: std::sync::Weak<ProducerInner>) {
    loop {
        let Some(p) = producer.upgrade() else { return };
        if p.shut_down.load(Ordering::Acquire) {
            return;
        }
        let policy = p.options.fault.clone();
        for broker in p.faults.due_probes(&policy, Instant::now()) {
            let Some(addr) = p.instance.master_addr(&broker) else { continue };
            let req = RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO);
            if let Ok(Ok(r)) =
                tokio::time::timeout(policy.detect_timeout, p.instance.call(&addr, req, policy.detect_timeout)).await
            {
                if r.code == response::SUCCESS {
                    p.faults.recovered(&broker);
                }
            }
        }
        drop(p);
        tokio::time::sleep(policy.detect_interval.min(Duration::from_secs(1)).max(Duration::from_millis(50))).await;
    }
}

/// Whether a failed attempt is worth another try on another broker
/// (network trouble, or a broker that cannot take the message right now).
pub(crate) fn send_retryable(err: &ClientError) -> bool {
    match err {
        ClientError::Remoting(_) | ClientError::BrokerNotFound { .. } | ClientError::NoRoute { .. } => true,
        ClientError::Broker { code, .. } => matches!(
            *code,
            response::TOPIC_NOT_EXIST
                | response::SERVICE_NOT_AVAILABLE
                | response::SYSTEM_ERROR
                | response::SYSTEM_BUSY
                | response::NO_PERMISSION
                | response::FLOW_CONTROL
                | 501 // NOT_LEADER_FOR_QUEUE
        ),
        _ => false,
    }
}

/// The error of a send whose sendMsgTimeout ran out.
fn budget_spent(budget: Duration) -> ClientError {
    ClientError::Remoting(spate_remoting::RemotingError::Timeout {
        addr: String::from("(sendMsgTimeout)"),
        timeout_ms: budget.as_millis() as u64,
    })
}

impl ProducerInner {
    async fn send_with_retry(self: &Arc<Self>, out: &Outgoing) -> Result<SendResult> {
        let started = Instant::now();
        let budget = self.options.send_msg_timeout;
        let attempts_max = 1 + self.options.retry_times_when_send_failed;
        // Brokers that failed this send; later attempts avoid all of them.
        let mut failed_brokers: Vec<String> = Vec::new();
        let mut attempts = 0;
        let mut last_err: Option<ClientError> = None;
        let mut last_not_ok: Option<SendResult> = None;
        while attempts < attempts_max {
            let Some(remaining) = budget.checked_sub(started.elapsed()).filter(|d| !d.is_zero()) else {
                break;
            };
            attempts += 1;
            // Route lookup, address lookup and the call all count against
            // what is left of sendMsgTimeout.
            let route = tokio::time::timeout(
                remaining,
                self.instance.publish_route(&out.topic, self.options.default_topic_queue_nums),
            )
            .await
            .unwrap_or_else(|_| Err(budget_spent(budget)));
            let route = match route {
                Ok(r) => r,
                Err(e) if send_retryable(&e) && attempts < attempts_max => {
                    last_err = Some(e);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mq = {
                let mut c = self.queue_counter.fetch_add(1, Ordering::Relaxed);
                // Brokers that failed this send, and those the breaker isolates.
                let mut avoid = failed_brokers.clone();
                avoid.extend(self.faults.avoided(Instant::now()));
                select_queue(&route.write_queues, &mut c, &avoid).cloned()
            };
            let Some(mq) = mq else {
                last_err = Some(ClientError::NoRoute { topic: out.topic.clone() });
                continue;
            };
            let remaining = budget.saturating_sub(started.elapsed());
            let attempt = self.timed_attempt(out, &mq, remaining, budget).await;
            match attempt {
                Ok(Some(r))
                    if r.status == SendStatus::SendOk || !self.options.retry_another_broker_when_not_store_ok =>
                {
                    return self.finish(r);
                }
                Ok(Some(r)) => {
                    failed_brokers.push(mq.broker_name.clone());
                    last_not_ok = Some(r);
                }
                Ok(None) => return Err(ClientError::State("no result for a synchronous send")),
                Err(e) if send_retryable(&e) => {
                    tracing::debug!(topic = out.topic, broker = mq.broker_name, queue = mq.queue_id, error = %e,
                        "send failed; retrying on another broker");
                    failed_brokers.push(mq.broker_name.clone());
                    // Refresh the route now, so the next attempt already sees
                    // a broker the name server dropped (bounded by the budget).
                    let left = budget.saturating_sub(started.elapsed());
                    if tokio::time::timeout(left, self.instance.update_route(&out.topic)).await.is_err() {
                        self.instance.refresh_route_soon(&out.topic);
                    }
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        if let Some(r) = last_not_ok {
            return self.finish(r);
        }
        let last = last_err.unwrap_or_else(|| budget_spent(budget));
        Err(ClientError::SendFailed { topic: out.topic.clone(), attempts, last: Box::new(last) })
    }

    /// One synchronous attempt within `remaining`, reported to the circuit
    /// breaker: its latency when it ends, and its broker isolated at once
    /// if it is still waiting after the breaker's slow-send latency.
    async fn timed_attempt(
        &self,
        out: &Outgoing,
        mq: &MessageQueue,
        remaining: Duration,
        budget: Duration,
    ) -> Result<Option<SendResult>> {
        let policy = &self.options.fault;
        let began = Instant::now();
        let attempt = tokio::time::timeout(remaining, self.send_once(out, mq, Mode::Sync, remaining));
        tokio::pin!(attempt);
        let slow = policy.slow_send();
        let outcome = if policy.enabled && slow < remaining {
            tokio::select! {
                r = &mut attempt => r,
                _ = tokio::time::sleep(slow) => {
                    self.faults.update(policy, &mq.broker_name, slow, false, Instant::now());
                    attempt.await
                }
            }
        } else {
            attempt.await
        };
        let outcome = outcome.unwrap_or_else(|_| Err(budget_spent(budget)));
        let failed = outcome.as_ref().err().is_some_and(send_retryable);
        self.faults.update(policy, &mq.broker_name, began.elapsed(), failed, Instant::now());
        outcome
    }

    /// Applies strict mode to a stored-but-not-confirmed result.
    fn finish(&self, r: SendResult) -> Result<SendResult> {
        if self.options.send_ok_required && r.status != SendStatus::SendOk {
            return Err(ClientError::NotStoredOk { result: Box::new(r) });
        }
        Ok(r)
    }

    /// One attempt on one queue. `Ok(None)` for one-way sends.
    async fn send_once(
        &self,
        out: &Outgoing,
        mq: &MessageQueue,
        mode: Mode,
        timeout: Duration,
    ) -> Result<Option<SendResult>> {
        let mut addr = self.instance.master_addr_or_refresh(&mq.broker_name, &out.topic).await?;
        if self.options.vip_channel_enabled {
            addr = vip_channel_addr(&addr);
        }
        let code = if out.batch { request::SEND_BATCH_MESSAGE } else { request::SEND_MESSAGE_V2 };
        let req = RemotingCommand::request(code)
            .with("a", &self.options.group)
            .with("b", &out.topic)
            .with("c", DEFAULT_TOPIC)
            .with("d", self.options.default_topic_queue_nums)
            .with("e", mq.queue_id)
            .with("f", out.sys_flag)
            .with("g", now_ms())
            .with("h", out.flag)
            .with("i", &out.properties)
            .with("j", 0)
            .with("k", false)
            .with("m", out.batch)
            .with("n", &mq.broker_name)
            .with_body(out.body.clone());
        if mode == Mode::Oneway {
            self.instance.call_oneway(&addr, req).await?;
            return Ok(None);
        }
        let resp = self.instance.call(&addr, req, timeout).await?;
        parse_send_response(&addr, resp, mq, &out.msg_id).map(Some)
    }
}

fn parse_send_response(addr: &str, resp: RemotingCommand, mq: &MessageQueue, msg_id: &str) -> Result<SendResult> {
    let Some(status) = SendStatus::from_code(resp.code) else {
        return Err(ClientError::Broker {
            addr: addr.to_string(),
            code: resp.code,
            remark: resp.remark.unwrap_or_default(),
        });
    };
    let bad = |reason: String| ClientError::BadResponse { addr: addr.to_string(), reason };
    let queue_offset = resp.i64_field("queueOffset").map_err(|e| bad(e.to_string()))?;
    let queue_id = resp.opt_i32_field("queueId").map_err(|e| bad(e.to_string()))?.unwrap_or(mq.queue_id);
    let mut message_queue = mq.clone();
    message_queue.queue_id = queue_id;
    Ok(SendResult {
        status,
        msg_id: msg_id.to_string(),
        offset_msg_id: resp.field("msgId").unwrap_or_default().to_string(),
        message_queue,
        queue_offset,
        transaction_id: resp.field("transactionId").map(str::to_string),
    })
}

/// Picks `queues[|key| % len]`, upstream's `SelectMessageQueueByHash` for an
/// integer argument; use with [`Producer::send_with_selector`].
pub fn queue_by_hash(queues: &[MessageQueue], key: i64) -> Option<MessageQueue> {
    if queues.is_empty() {
        return None;
    }
    queues.get((key.unsigned_abs() % queues.len() as u64) as usize).cloned()
}

/// A broker's VIP channel address, `host:(port - 2)` (upstream's
/// `brokerVIPChannel`); an address it cannot parse is used as it is.
pub fn vip_channel_addr(addr: &str) -> String {
    match addr.rsplit_once(':').and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?))) {
        Some((host, port)) if port > 2 => format!("{host}:{}", port - 2),
        _ => addr.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_remoting::RemotingError;

    #[test]
    fn the_vip_channel_is_two_ports_down() {
        assert_eq!(vip_channel_addr("10.0.0.1:10911"), "10.0.0.1:10909");
        assert_eq!(vip_channel_addr("broker-a"), "broker-a");
        assert_eq!(vip_channel_addr("h:1"), "h:1");
    }

    #[test]
    fn send_status_follows_response_codes() {
        assert_eq!(SendStatus::from_code(0), Some(SendStatus::SendOk));
        assert_eq!(SendStatus::from_code(10), Some(SendStatus::FlushDiskTimeout));
        assert_eq!(SendStatus::from_code(11), Some(SendStatus::SlaveNotAvailable));
        assert_eq!(SendStatus::from_code(12), Some(SendStatus::FlushSlaveTimeout));
        assert_eq!(SendStatus::from_code(13), None);
    }

    #[test]
    fn retry_only_what_another_broker_could_accept() {
        let broker = |code| ClientError::Broker { addr: "b".into(), code, remark: String::new() };
        assert!(send_retryable(&ClientError::Remoting(RemotingError::Closed("b".into()))));
        assert!(send_retryable(&broker(response::SYSTEM_BUSY)));
        assert!(send_retryable(&broker(response::TOPIC_NOT_EXIST)));
        assert!(!send_retryable(&broker(response::MESSAGE_ILLEGAL)));
        assert!(!send_retryable(&ClientError::MessageTooLarge { size: 2, max: 1 }));
    }

    #[test]
    fn send_response_parses_header_fields() {
        let req = RemotingCommand::request(request::SEND_MESSAGE_V2);
        let mq = MessageQueue::new("T", "b1", 3);
        let resp = RemotingCommand::response_to(&req, 12, None)
            .with("msgId", "0A0000010000297100000000000000FF")
            .with("queueId", 3)
            .with("queueOffset", 42);
        let r = parse_send_response("b", resp, &mq, "UNIQ").unwrap();
        assert_eq!(r.status, SendStatus::FlushSlaveTimeout);
        assert_eq!((r.queue_offset, r.msg_id.as_str(), r.message_queue), (42, "UNIQ", mq.clone()));
        let err = parse_send_response("b", RemotingCommand::error(&req, 13, "bad"), &mq, "U").unwrap_err();
        assert_eq!(err.response_code(), Some(13));
        let missing = RemotingCommand::success(&req);
        assert!(matches!(parse_send_response("b", missing, &mq, "U"), Err(ClientError::BadResponse { .. })));
    }

    #[tokio::test]
    async fn strict_mode_and_local_checks_fail_before_or_after_the_broker() {
        let mut o = ProducerOptions::new("g");
        o.send_ok_required = true;
        o.max_message_size = 8;
        let p = Producer::start(ClientConfig::new("127.0.0.1:1"), o).await.unwrap();
        let mut r = SendResult {
            status: SendStatus::FlushSlaveTimeout,
            msg_id: "U".into(),
            offset_msg_id: String::new(),
            message_queue: MessageQueue::new("T", "b", 0),
            queue_offset: 1,
            transaction_id: None,
        };
        assert!(matches!(p.inner.finish(r.clone()), Err(ClientError::NotStoredOk { .. })));
        r.status = SendStatus::SendOk;
        assert!(p.inner.finish(r).is_ok());
        assert!(matches!(p.send(Message::new("bad topic", "x")).await, Err(ClientError::Message(_))));
        assert!(matches!(p.send(Message::new("T", "")).await, Err(ClientError::EmptyBody)));
        assert!(matches!(p.send(Message::new("T", "123456789")).await, Err(ClientError::MessageTooLarge { .. })));
        let mixed = vec![Message::new("A", "x"), Message::new("B", "y")];
        assert!(matches!(p.send_batch(mixed).await, Err(ClientError::InvalidBatch(_))));
        p.shutdown().await;
        assert!(matches!(p.send(Message::new("T", "x")).await, Err(ClientError::State(_))));
    }

    #[test]
    fn hash_selector_is_stable() {
        let qs: Vec<_> = (0..4).map(|i| MessageQueue::new("T", "b", i)).collect();
        assert_eq!(queue_by_hash(&qs, 6).unwrap().queue_id, 2);
        assert_eq!(queue_by_hash(&qs, -6).unwrap().queue_id, 2);
        assert!(queue_by_hash(&[], 1).is_none());
    }
}
