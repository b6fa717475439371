//! RocketMQ 5's simple consumer on the remoting protocol's pop codes:
//! [`SimpleConsumer::receive`] pops messages that stay invisible to every
//! other consumer of the group for a while, [`SimpleConsumer::ack`] finishes
//! one, [`SimpleConsumer::change_invisible_duration`] gives it more (or less)
//! time. What is not acked in time is delivered again, to anyone, with its
//! delivery attempt raised; no rebalancing, no queue ownership.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use spate_remoting::{request, response, RemotingCommand};

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::instance::ClientInstance;
use crate::message::{decode_pull_body, MessageExt};

/// The property a popped message's receipt handle arrives in.
pub const POP_CK: &str = "POP_CK";

/// A broker's acks: (topic, queue, stamp) to the offsets acked.
type AcksOfBroker = BTreeMap<(String, i32, u64), Vec<i64>>;

/// Offsets one batch-ack entry covers (its bit set, well inside the broker's bound).
const BATCH_ACK_BITS: i64 = 1024;

/// Largest batch one receive may ask for (the broker's bound).
pub const MAX_RECEIVE_BATCH: usize = 32;

/// Options of a [`SimpleConsumer`], named as RocketMQ 5's.
#[derive(Debug, Clone)]
pub struct SimpleConsumerOptions {
    /// `consumerGroup`.
    pub group: String,
    /// `awaitDuration`: how long a receive waits on the broker for messages (long polling).
    pub await_duration: Duration,
    /// FIFO group: a queue hands out its next batch only once the last is acked.
    pub fifo: bool,
    /// Where a group with no position in a queue starts: its first message
    /// (`initMode` MIN, the default) or its end (MAX: only new messages).
    pub from_first: bool,
}

impl SimpleConsumerOptions {
    /// Defaults for `group`: `awaitDuration` 5 s, not FIFO, from the first message.
    pub fn new(group: impl Into<String>) -> Self {
        SimpleConsumerOptions {
            group: group.into(),
            await_duration: Duration::from_secs(5),
            fifo: false,
            from_first: true,
        }
    }
}

/// A message handed out by [`SimpleConsumer::receive`].
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The message.
    pub message: MessageExt,
    /// Opaque: what [`SimpleConsumer::ack`] and
    /// [`SimpleConsumer::change_invisible_duration`] send back.
    pub receipt_handle: String,
    /// 1 for the first delivery.
    pub delivery_attempt: u32,
    /// The broker address that handed it out.
    pub broker_addr: String,
    /// Its broker group: acks go to the group's master as the route names
    /// it now (after a failover, the promoted slave, which carries on the
    /// old master's pops), else to [`broker_addr`](Self::broker_addr).
    pub broker_name: String,
}

/// See the module docs.
pub struct SimpleConsumer {
    instance: Arc<ClientInstance>,
    owns_instance: bool,
    options: SimpleConsumerOptions,
    /// Topic to tag expression.
    subscriptions: RwLock<BTreeMap<String, String>>,
    next: AtomicUsize,
    attempt: AtomicUsize,
}

impl std::fmt::Debug for SimpleConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimpleConsumer").field("group", &self.options.group).finish()
    }
}

impl SimpleConsumer {
    /// A consumer on its own client instance.
    pub fn new(config: ClientConfig, options: SimpleConsumerOptions) -> Result<SimpleConsumer> {
        Self::build(ClientInstance::new(config)?, options, true)
    }

    /// A consumer on a shared client instance.
    pub fn with_instance(instance: Arc<ClientInstance>, options: SimpleConsumerOptions) -> Result<SimpleConsumer> {
        Self::build(instance, options, false)
    }

    fn build(instance: Arc<ClientInstance>, options: SimpleConsumerOptions, owns: bool) -> Result<Self> {
        if options.group.is_empty() {
            return Err(ClientError::Config { name: "consumerGroup", reason: "empty".into() });
        }
        Ok(SimpleConsumer {
            instance,
            owns_instance: owns,
            options,
            subscriptions: RwLock::new(BTreeMap::new()),
            next: AtomicUsize::new(0),
            attempt: AtomicUsize::new(0),
        })
    }

    /// Receives from `topic`, messages whose tag matches `expression` (`*` or `a || b`).
    pub fn subscribe(&self, topic: &str, expression: &str) -> Result<()> {
        spate_common::message::validate_topic(topic)?;
        self.subscriptions.write().insert(topic.to_string(), expression.to_string());
        Ok(())
    }

    /// Starts the client instance (route refresh) if this consumer owns it.
    pub async fn start(&self) -> Result<()> {
        if self.owns_instance {
            self.instance.start()?;
        }
        Ok(())
    }

    /// Up to `max` messages (1..=32), invisible to the group's other
    /// consumers for `invisible`; empty when none arrived within
    /// `awaitDuration`. Each call asks one broker of one subscribed topic,
    /// in turn.
    pub async fn receive(&self, max: usize, invisible: Duration) -> Result<Vec<ReceivedMessage>> {
        if max == 0 || max > MAX_RECEIVE_BATCH {
            return Err(ClientError::InvalidArgument(format!("max {max} is out of range 1..={MAX_RECEIVE_BATCH}")));
        }
        let subs: Vec<(String, String)> =
            self.subscriptions.read().iter().map(|(t, e)| (t.clone(), e.clone())).collect();
        if subs.is_empty() {
            return Err(ClientError::State("subscribe to a topic before receiving"));
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let (topic, expression) = &subs[turn % subs.len()];
        let route = self.instance.route(topic).await?.ok_or_else(|| ClientError::NoRoute { topic: topic.clone() })?;
        let mut brokers: Vec<&str> = route.read_queues.iter().map(|q| q.broker_name.as_str()).collect();
        brokers.dedup();
        if brokers.is_empty() {
            return Err(ClientError::NoRoute { topic: topic.clone() });
        }
        let broker = brokers[(turn / subs.len()) % brokers.len()].to_string();
        let addr = self.instance.master_addr_or_refresh(&broker, topic).await?;
        let poll = self.options.await_duration;
        let mut req = RemotingCommand::request(request::POP_MESSAGE)
            .with("consumerGroup", &self.options.group)
            .with("topic", topic)
            .with("queueId", -1)
            .with("maxMsgNums", max)
            .with("invisibleTime", invisible.as_millis() as u64)
            .with("pollTime", poll.as_millis() as u64)
            .with("bornTime", crate::uniq_id::now_ms())
            .with("initMode", if self.options.from_first { 0 } else { 1 })
            .with("expType", "TAG")
            .with("exp", expression);
        if self.options.fifo {
            let attempt = format!("{}-{}", self.instance.client_id(), self.attempt.fetch_add(1, Ordering::Relaxed));
            req = req.with("order", true).with("attemptId", attempt);
        }
        let timeout = poll + self.instance.config().request_timeout;
        // A broker that is gone or no longer master (a failover) sends the
        // next receive to a fresh route.
        let resp = match self.instance.call(&addr, req, timeout).await {
            Ok(r) => r,
            Err(e) => {
                self.instance.refresh_route_soon(topic);
                return Err(e);
            }
        };
        match resp.code {
            response::SUCCESS => {}
            response::POLLING_TIMEOUT | response::PULL_NOT_FOUND => return Ok(Vec::new()),
            code => {
                if code == response::SERVICE_NOT_AVAILABLE {
                    self.instance.refresh_route_soon(topic);
                }
                return Err(ClientError::Broker { addr, code, remark: resp.remark.unwrap_or_default() });
            }
        }
        let messages = decode_pull_body(&resp.body, &broker)?;
        let mut out = Vec::with_capacity(messages.len());
        for m in messages {
            let Some(handle) = m.property(POP_CK).map(str::to_string) else {
                return Err(ClientError::BadResponse {
                    addr: addr.clone(),
                    reason: format!("popped message at offset {} has no receipt handle", m.queue_offset),
                });
            };
            let attempt = u32::try_from(m.reconsume_times.max(0)).unwrap_or(0).saturating_add(1);
            out.push(ReceivedMessage {
                message: m,
                receipt_handle: handle,
                delivery_attempt: attempt,
                broker_addr: addr.clone(),
                broker_name: broker.clone(),
            });
        }
        Ok(out)
    }

    /// Finishes a received message: it is never delivered to the group again.
    pub async fn ack(&self, msg: &ReceivedMessage) -> Result<()> {
        let req = self.handle_request(request::ACK_MESSAGE, msg);
        let r = self.instance.call_ok(&self.ack_addr(msg), req).await;
        self.refresh_on_failover(&msg.message.topic, r).map(|_| ())
    }

    /// Where a received message's ack or invisible-time change goes.
    fn ack_addr(&self, msg: &ReceivedMessage) -> String {
        self.instance.master_addr(&msg.broker_name).unwrap_or_else(|| msg.broker_addr.clone())
    }

    /// `r`, after asking for a fresh route of `topic` when the broker was
    /// unreachable or is no longer master (so a retried ack finds the new one).
    fn refresh_on_failover<T>(&self, topic: &str, r: Result<T>) -> Result<T> {
        match &r {
            Err(ClientError::Broker { code, .. }) if *code != response::SERVICE_NOT_AVAILABLE => {}
            Err(_) => self.instance.refresh_route_soon(topic),
            Ok(_) => {}
        }
        r
    }

    /// Acks many received messages in as few requests as there are brokers
    /// (BATCH_ACK_MESSAGE, upstream's batch ack body). A message whose
    /// handle went stale is skipped by the broker, not reported.
    pub async fn ack_many(&self, msgs: &[ReceivedMessage]) -> Result<()> {
        use base64::Engine as _;
        let mut by_broker: BTreeMap<String, AcksOfBroker> = BTreeMap::new();
        for m in msgs {
            let stamp = m.receipt_handle.split(' ').nth(1).and_then(|t| t.parse::<u64>().ok());
            let Some(stamp) = stamp else {
                return Err(ClientError::InvalidArgument(format!("malformed receipt handle {:?}", m.receipt_handle)));
            };
            by_broker
                .entry(self.ack_addr(m))
                .or_default()
                .entry((m.message.topic.clone(), m.message.queue_id, stamp))
                .or_default()
                .push(m.message.queue_offset);
        }
        for (addr, groups) in by_broker {
            let mut acks = Vec::new();
            for ((topic, queue_id, stamp), mut offsets) in groups {
                offsets.sort_unstable();
                // One entry per run of offsets a bit set of BATCH_ACK_BITS covers.
                let mut runs: Vec<Vec<i64>> = Vec::new();
                for o in offsets {
                    match runs.last_mut() {
                        Some(run) if o - run[0] < BATCH_ACK_BITS => run.push(o),
                        _ => runs.push(vec![o]),
                    }
                }
                for run in runs {
                    let start = run[0];
                    let mut bits = vec![0u8; ((run[run.len() - 1] - start) / 8 + 1) as usize];
                    for o in &run {
                        let i = (o - start) as usize;
                        bits[i / 8] |= 1 << (i % 8);
                    }
                    acks.push(serde_json::json!({
                        "c": self.options.group, "t": topic, "r": "0", "so": start, "q": queue_id,
                        "rq": 0, "pt": stamp, "it": 0,
                        "b": base64::engine::general_purpose::STANDARD.encode(&bits),
                    }));
                }
            }
            let body = serde_json::json!({"acks": acks, "brokerName": ""}).to_string();
            let req = RemotingCommand::request(request::BATCH_ACK_MESSAGE).with_body(body);
            let topic = msgs.first().map(|m| m.message.topic.as_str()).unwrap_or_default();
            let r = self.instance.call_ok(&addr, req).await;
            self.refresh_on_failover(topic, r)?;
        }
        Ok(())
    }

    /// Makes a received message visible again `invisible` from now (zero:
    /// at once, a nack); the returned message carries the new handle, the
    /// old one no longer works.
    pub async fn change_invisible_duration(
        &self,
        msg: &ReceivedMessage,
        invisible: Duration,
    ) -> Result<ReceivedMessage> {
        let req = self
            .handle_request(request::CHANGE_MESSAGE_INVISIBLETIME, msg)
            .with("invisibleTime", invisible.as_millis() as u64);
        let addr = &self.ack_addr(msg);
        let r = self.instance.call_ok(addr, req).await;
        let resp = self.refresh_on_failover(&msg.message.topic, r)?;
        let bad = |reason: String| ClientError::BadResponse { addr: addr.clone(), reason };
        let pop_time = resp.i64_field("popTime").map_err(|e| bad(e.to_string()))?;
        let revive = resp.opt_i32_field("reviveQid").map_err(|e| bad(e.to_string()))?.unwrap_or(0);
        // RocketMQ's clients rebuild the handle from the answer the same way.
        let fields: Vec<&str> = msg.receipt_handle.split(' ').collect();
        if fields.len() < 8 {
            return Err(ClientError::InvalidArgument("receipt handle has too few fields".into()));
        }
        let offset = msg.message.queue_offset;
        let handle = format!(
            "{offset} {pop_time} {} {revive} {} {} {} {offset}",
            invisible.as_millis(),
            fields[4],
            fields[5],
            fields[6]
        );
        Ok(ReceivedMessage { receipt_handle: handle, ..msg.clone() })
    }

    fn handle_request(&self, code: i32, msg: &ReceivedMessage) -> RemotingCommand {
        RemotingCommand::request(code)
            .with("consumerGroup", &self.options.group)
            .with("topic", &msg.message.topic)
            .with("queueId", msg.message.queue_id)
            .with("extraInfo", &msg.receipt_handle)
            .with("offset", msg.message.queue_offset)
    }

    /// Stops the client instance if this consumer owns it.
    pub async fn shutdown(&self) {
        if self.owns_instance {
            self.instance.shutdown().await;
        }
    }
}
