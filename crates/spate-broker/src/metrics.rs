//! The broker's Prometheus metrics: counters and latency histograms updated
//! on the request paths, and gauges computed from the store and the tables
//! at each scrape. Names follow RocketMQ 5's exporter where one exists.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use spate_metrics::{Counter, Histogram, Registry};

use crate::BrokerState;

pub const MESSAGES_IN: &str = "rocketmq_messages_in_total";
pub const BYTES_IN: &str = "rocketmq_throughput_in_total";
pub const MESSAGES_OUT: &str = "rocketmq_messages_out_total";
pub const BYTES_OUT: &str = "rocketmq_throughput_out_total";
pub const RPC_LATENCY: &str = "rocketmq_rpc_latency_seconds";
pub const REJECTED: &str = "rocketmq_send_rejected_total";
pub const HELD_PULLS: &str = "rocketmq_pull_held_total";
pub const UNDELIVERABLE: &str = "spate_undeliverable_messages_total";
pub const REPLICATION_AUTH_REFUSED: &str = "spate_replication_auth_refused_total";
const CONSUMER_LAG: &str = "rocketmq_consumer_lag_messages";
const REPLICATION_LAG_BYTES: &str = "spate_replication_lag_bytes";
const REPLICATION_LAG_MS: &str = "spate_replication_lag_milliseconds";

/// One topic's traffic counters, looked up once per topic, not per message.
struct TopicCounters {
    messages_in: Arc<Counter>,
    bytes_in: Arc<Counter>,
    messages_out: Arc<Counter>,
    bytes_out: Arc<Counter>,
}

/// The registry plus handles of the series the request paths update, so a
/// send costs a hash lookup and two atomic adds.
pub struct BrokerMetrics {
    pub registry: Arc<Registry>,
    topics: RwLock<HashMap<String, Arc<TopicCounters>>>,
    send: Arc<Histogram>,
    pull_read: Arc<Histogram>,
    heartbeat: Arc<Histogram>,
    offset: Arc<Histogram>,
    replication: Arc<Histogram>,
    /// gRPC calls, by RPC (`protocol_type="grpc"`).
    grpc: Vec<(&'static str, Arc<Histogram>)>,
    pub held_pulls: Arc<Counter>,
    /// How late popped messages became visible again, past their invisible time.
    pub pop_revive_lateness: Arc<Histogram>,
    /// 0 none, 1 bulk refused, 2 bulk and normal refused (`capacity/degrade.rs`).
    pub degrade_level: Arc<spate_metrics::Gauge>,
}

/// gRPC calls timed (`request` label); a receive's long poll is waiting,
/// not processing, so it is not among them.
pub const GRPC_RPCS: [&str; 7] =
    ["send", "ack", "change_invisible", "heartbeat", "query_route", "query_assignment", "end_transaction"];

/// Request kinds with a latency histogram.
#[derive(Clone, Copy)]
pub enum Kind {
    Send,
    PullRead,
    Heartbeat,
    Offset,
    /// A SYNC_MASTER send's wait for its slaves.
    Replication,
}

impl BrokerMetrics {
    pub fn new() -> BrokerMetrics {
        let registry = Registry::new();
        // `protocol_type` as upstream 5's exporter: remoting or grpc.
        let help = "Request processing time, by request kind and protocol.";
        let h = |kind| registry.histogram(RPC_LATENCY, help, &[("request", kind), ("protocol_type", "remoting")]);
        let grpc = GRPC_RPCS
            .iter()
            .map(|rpc| (*rpc, registry.histogram(RPC_LATENCY, help, &[("request", rpc), ("protocol_type", "grpc")])))
            .collect();
        BrokerMetrics {
            send: h("send"),
            pull_read: h("pull_read"),
            heartbeat: h("heartbeat"),
            offset: h("offset"),
            replication: h("replication_wait"),
            grpc,
            held_pulls: registry.counter(HELD_PULLS, "Pulls held by long polling.", &[]),
            pop_revive_lateness: registry.histogram(
                "spate_pop_revive_lateness_seconds",
                "How long after its invisible time ran out a popped, un-acked message was revived.",
                &[],
            ),
            degrade_level: registry.gauge(
                "spate_broker_degrade_level",
                "Degradation by priority: 0 none, 1 bulk refused, 2 bulk and normal refused.",
                &[],
            ),
            topics: RwLock::new(HashMap::new()),
            registry,
        }
    }

    fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(t) = self.topics.read().get(topic) {
            return t.clone();
        }
        let m = &self.registry;
        let label = [("topic", topic)];
        let t = Arc::new(TopicCounters {
            messages_in: m.counter(MESSAGES_IN, "Messages stored, by topic.", &label),
            bytes_in: m.counter(BYTES_IN, "Bytes of messages stored, by topic.", &label),
            messages_out: m.counter(MESSAGES_OUT, "Messages returned by pulls, by topic.", &label),
            bytes_out: m.counter(BYTES_OUT, "Bytes of messages returned by pulls, by topic.", &label),
        });
        let mut topics = self.topics.write();
        // Bounded like the topic table (only topics that stored or served messages).
        if topics.len() < crate::topics::MAX_TOPICS {
            topics.insert(topic.to_string(), t.clone());
        }
        t
    }

    /// Counts a stored message batch on `topic`.
    pub fn stored(&self, topic: &str, messages: u64, bytes: u64) {
        let t = self.topic(topic);
        t.messages_in.add(messages);
        t.bytes_in.add(bytes);
    }

    /// Counts messages handed to consumers from `topic`.
    pub fn delivered(&self, topic: &str, messages: u64, bytes: u64) {
        let t = self.topic(topic);
        t.messages_out.add(messages);
        t.bytes_out.add(bytes);
    }

    /// Counts a send or pull refused by a rate limit or a full / slow queue.
    pub fn throttled(&self, op: &'static str, reason: &'static str) {
        self.registry
            .counter(
                "spate_broker_throttled_total",
                "Requests refused at once by a rate limit or back-pressure, by operation and reason.",
                &[("op", op), ("reason", reason)],
            )
            .inc();
    }

    /// Counts a message a background deliverer set aside as undeliverable.
    pub fn undeliverable(&self, source: &'static str) {
        self.registry
            .counter(
                UNDELIVERABLE,
                "Messages a background deliverer could not deliver and set aside, by deliverer.",
                &[("source", source)],
            )
            .inc();
    }

    /// Counts a peer refused on `haListenPort` for failing authentication.
    pub fn replication_auth_refused(&self, reason: &'static str) {
        self.registry
            .counter(
                REPLICATION_AUTH_REFUSED,
                "Peers on haListenPort refused for failing authentication, by reason.",
                &[("reason", reason)],
            )
            .inc();
    }

    /// Records how long a gRPC call took; `rpc` is one of [`GRPC_RPCS`].
    pub fn grpc_latency(&self, rpc: &'static str, took: Duration) {
        if let Some((_, h)) = self.grpc.iter().find(|(r, _)| *r == rpc) {
            h.observe(took);
        }
    }

    /// Records how long a request of `kind` took.
    pub fn latency(&self, kind: Kind, took: Duration) {
        match kind {
            Kind::Send => &self.send,
            Kind::PullRead => &self.pull_read,
            Kind::Heartbeat => &self.heartbeat,
            Kind::Offset => &self.offset,
            Kind::Replication => &self.replication,
        }
        .observe(took);
    }
}

impl Default for BrokerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a refused send by its response code's name.
pub fn rejected(m: &Registry, code: i32) {
    use spate_remoting::response as r;
    let reason = match code {
        r::SYSTEM_ERROR => "system_error",
        r::SYSTEM_BUSY => "system_busy",
        r::FLUSH_DISK_TIMEOUT => "flush_disk_timeout",
        r::MESSAGE_ILLEGAL => "message_illegal",
        r::SERVICE_NOT_AVAILABLE => "service_not_available",
        r::NO_PERMISSION => "no_permission",
        r::TOPIC_NOT_EXIST => "topic_not_exist",
        r::INVALID_PARAMETER => "invalid_parameter",
        _ => "other",
    };
    m.counter(REJECTED, "Sends refused, by reason.", &[("reason", reason)]).inc();
}

/// The whole exposition, with the gauges recomputed now.
pub fn render(state: &Arc<BrokerState>) -> String {
    let m = &state.metrics.registry;
    let s = state.store.stats();
    let g = |name: &'static str, help: &'static str, v: i64| m.gauge(name, help, &[]).set(v);
    for (reason, n) in state.gate.denied_counts() {
        let c = m.counter(
            "spate_auth_denied_total",
            "Requests refused by authentication or authorization.",
            &[("reason", reason)],
        );
        c.add(n.saturating_sub(c.get()));
    }
    g(
        "spate_store_commitlog_bytes",
        "Commit-log bytes kept (max minus min offset).",
        (s.max_offset - s.min_offset) as i64,
    );
    g(
        "spate_store_flush_behind_bytes",
        "Bytes appended but not yet on disk.",
        s.max_offset.saturating_sub(s.flushed_offset) as i64,
    );
    g(
        "spate_store_dispatch_behind_bytes",
        "Bytes appended but not yet in consume queues.",
        s.max_offset.saturating_sub(s.dispatched_offset) as i64,
    );
    g("spate_store_segments", "Commit-log segments on disk.", s.segment_count as i64);
    let pop = &state.pop;
    g("spate_pop_inflight", "Messages held by pop groups (in flight or visible again).", pop.held.load(Relaxed) as i64);
    for (name, help, n) in [
        ("spate_pop_acked_total", "Popped messages acked.", &pop.counters.acked),
        ("spate_pop_revived_total", "Popped messages whose invisible time passed unacked.", &pop.counters.revived),
        ("spate_pop_dead_lettered_total", "Popped messages moved to their group's DLQ.", &pop.counters.dead_lettered),
    ] {
        let c = m.counter(name, help, &[]);
        c.add(n.load(Relaxed).saturating_sub(c.get()));
    }
    g("spate_store_syncs", "Commit-log flush passes that synced data.", s.syncs as i64);
    g("spate_store_sync_microseconds", "Total time of those syncs in microseconds.", s.sync_us_total as i64);
    g(
        "spate_store_roll_wait_microseconds_max",
        "Longest wait of an append for a new segment.",
        s.roll_wait_us_max as i64,
    );
    g("spate_store_writable", "1 while the store accepts writes.", i64::from(s.not_writable_reason.is_none()));
    let root = state.store.config().store_path_root_dir.clone();
    g(
        "spate_store_disk_used_percent",
        "Disk usage of the store's file system.",
        spate_store::retention::disk_used_percent(&root) as i64,
    );
    g("rocketmq_pull_held", "Pulls held by long polling now.", state.long_poll.held_count() as i64);
    g(
        "spate_broker_core_lane_connections",
        "Connections carrying core traffic, served by the core lane.",
        state.core_lane.connections() as i64,
    );
    g(
        "spate_broker_core_lane_realtime",
        "1 while the core lane's thread runs at real-time priority.",
        i64::from(matches!(state.core_lane.scheduling, crate::lane::Scheduling::Realtime(_))),
    );
    g("rocketmq_topics", "Topics on this broker.", state.topics.len() as i64);
    g(
        "rocketmq_consumer_groups_online",
        "Consumer groups with a connected member.",
        state.clients.consumer_group_count() as i64,
    );
    // Lag per group and queue, from committed offsets.
    m.clear(CONSUMER_LAG);
    for (group, topic, queue_id, committed) in state.offsets.all() {
        let max = state.store.max_offset_in_queue(&topic, queue_id);
        let q = queue_id.to_string();
        m.gauge(
            CONSUMER_LAG,
            "Messages not yet consumed, by group, topic and queue.",
            &[("group", &group), ("topic", &topic), ("queue_id", &q)],
        )
        .set((max - committed).max(0));
    }
    // Replication lag: a master's view of each slave; a slave's own.
    m.clear(REPLICATION_LAG_BYTES);
    m.clear(REPLICATION_LAG_MS);
    let end = state.store.max_offset();
    let now = std::time::Instant::now();
    if state.config.read().broker_role == crate::BrokerRole::Slave {
        let link = state.slave.link();
        let id = state.identity.to_string();
        m.gauge(REPLICATION_LAG_BYTES, "Bytes a slave is behind its master, by slave.", &[("slave_id", &id)])
            .set(link.master_max_offset.saturating_sub(end) as i64);
        g(
            "spate_replication_connected",
            "1 while this slave follows its master.",
            i64::from(link.master_ha_addr.is_some()),
        );
        g(
            "spate_replication_last_heard_milliseconds",
            "Time since this slave last heard from its master (-1: never).",
            link.last_heard.map_or(-1, |t| now.saturating_duration_since(t).as_millis() as i64),
        );
    } else {
        for s in state.replication.slaves() {
            let (bytes, ms) = s.lag(end, now);
            let id = s.broker_id.to_string();
            let label = [("slave_id", id.as_str())];
            m.gauge(REPLICATION_LAG_BYTES, "Bytes a slave is behind its master, by slave.", &label).set(bytes as i64);
            m.gauge(REPLICATION_LAG_MS, "How long ago a slave last held everything its master had, by slave.", &label)
                .set(ms as i64);
        }
        g(
            "spate_replication_in_sync_slaves",
            "Slaves in sync or semi-sync (a SYNC_MASTER send waits for them).",
            state.replication.in_sync_slaves() as i64,
        );
    }
    m.render()
}
