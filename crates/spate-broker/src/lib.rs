//! Spate's broker: RocketMQ's request processors on top of `spate-store`.
//!
//! - [`config`]: `broker.conf` keys.
//! - [`send`], [`pull`], [`consumer`], [`admin`]: the request processors.
//! - [`long_poll`]: pulls waiting for messages, woken by the dispatcher.
//! - [`topics`], [`offsets`], [`subscriptions`]: persisted tables under `config/`.
//! - [`clients`]: connected producer and consumer groups, orderly queue locks.
//! - [`register`]: registration with the name servers.
//! - [`ha`]: master/slave replication of the commit log.
//! - [`pop`]: POP consumption state and receipt handles.
//!
//! Blocking file work (store reads, table writes, the store's shutdown) runs
//! on the blocking pool; appends are memory copies into pre-faulted files.

pub mod admin;
pub mod auth;
pub mod capacity;
pub mod clients;
pub mod config;
pub mod consumer;
pub mod error;
pub mod grpc;
pub mod ha;
pub mod lane;
pub mod long_poll;
pub mod metrics;
pub mod names;
pub mod offsets;
pub mod origin;
pub mod persist;
pub mod pop;
pub mod pull;
pub mod refusal;
pub mod register;
pub mod schedule;
pub mod send;
pub mod sql_filter;
pub mod subscriptions;
pub mod timer;
pub mod topics;
pub mod transaction;
pub mod undeliverable;
pub mod vip;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use spate_remoting::{
    request, response, BoxFuture, Connection, ConnectionConfig, RemotingCommand, RemotingServer, RequestHandler,
};
use spate_store::MessageStore;

pub use config::{BrokerConfig, BrokerRole};
pub use error::BrokerError;

use clients::{Clients, QueueLocks};
use long_poll::LongPoll;
use offsets::ConsumerOffsets;
use subscriptions::SubscriptionGroups;
use topics::TopicTable;

/// `accessMessageInMemoryMaxRatio` (percent of physical memory).
pub const ACCESS_MESSAGE_IN_MEMORY_MAX_RATIO: u64 = 40;

/// Message and byte counters since start.
#[derive(Default)]
pub struct Stats {
    puts: AtomicU64,
    put_bytes: AtomicU64,
    gets: AtomicU64,
    get_bytes: AtomicU64,
}

impl Stats {
    pub fn record_put(&self, n: u64, bytes: u64) {
        self.puts.fetch_add(n, Ordering::Relaxed);
        self.put_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub fn record_get(&self, n: u64, bytes: u64) {
        self.gets.fetch_add(n, Ordering::Relaxed);
        self.get_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    /// (puts, put bytes, gets, get bytes).
    pub fn totals(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.puts), l(&self.put_bytes), l(&self.gets), l(&self.get_bytes))
    }
}

/// Everything the request processors share.
pub struct BrokerState {
    pub config: RwLock<BrokerConfig>,
    pub broker_name: String,
    /// The address written into records and registered with name servers.
    pub broker_addr: SocketAddr,
    pub store: Arc<MessageStore>,
    pub topics: TopicTable,
    /// The core lane's scheduling and connections (`lane.rs`).
    pub core_lane: Arc<lane::LaneStatus>,
    /// Rate limits and the send / pull stage queues (`capacity/`).
    pub capacity: capacity::Capacity,
    pub offsets: ConsumerOffsets,
    pub groups: SubscriptionGroups,
    pub clients: Clients,
    pub locks: QueueLocks,
    pub long_poll: Arc<LongPoll>,
    pub stats: Stats,
    pub started: Instant,
    /// Commit-log distance within which a message counts as in memory
    /// (`accessMessageInMemoryMaxRatio`, 40% of physical memory).
    pub hot_bytes: u64,
    pub metrics: metrics::BrokerMetrics,
    /// The configured `brokerId`: under a controller, this broker's name in
    /// its group (the registered id changes with the role).
    pub identity: i64,
    /// A master's view of its slaves (unused on a slave).
    pub replication: Arc<ha::Replication>,
    /// A slave's link to its master (unused on a master).
    pub slave: ha::slave::SlaveState,
    /// POP consumption (`pop/`): state, request codes, revive.
    pub pop: pop::service::PopService,
    /// gRPC clients' sessions (settings, Telemetry streams).
    pub grpc: grpc::sessions::GrpcSessions,
    /// gRPC push consumers' messages being renewed.
    pub grpc_renewals: grpc::renew::Renewals,
    /// Who may send what (`auth.rs`): users, ACLs and the request-code table.
    pub gate: spate_remoting::access::Gate,
    /// `config/auth.json`: saved after every change, read again when edited.
    pub auth_file: spate_auth::file::AuthFile,
    topic_change: tokio::sync::Notify,
    /// Counts topic-table changes; `registered_change` is the count the
    /// last finished registration round included.
    change_seq: std::sync::atomic::AtomicU64,
    registered_change: tokio::sync::watch::Sender<u64>,
    group_change: tokio::sync::Notify,
    /// Set once a name server has accepted a registration: from then on
    /// clients can find this broker's routes.
    registered: tokio::sync::watch::Sender<bool>,
}

impl BrokerState {
    /// The topic table changed: register with the name servers now and persist.
    pub fn topics_changed(&self) {
        self.change_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.topic_change.notify_one();
    }

    /// As [`Self::topics_changed`], then waits (up to
    /// `registerBrokerTimeoutMills`) until a registration round that
    /// includes the change has finished, so an admin who created a topic
    /// finds its route on the name servers at once, as with upstream. A
    /// round that failed is retried every `registerNameServerPeriod`; the
    /// wait ends either way.
    pub async fn topics_changed_and_registered(&self) {
        let seq = self.change_seq.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
        self.topic_change.notify_one();
        let (limit, any) = {
            let cfg = self.config.read();
            (cfg.register_broker_timeout, !cfg.namesrv_addr.is_empty())
        };
        if any {
            let mut rx = self.registered_change.subscribe();
            let _ = tokio::time::timeout(limit, rx.wait_for(|done| *done >= seq)).await;
        }
    }

    /// A subscription group was created implicitly; persist it soon.
    pub fn persist_groups_soon(&self) {
        self.group_change.notify_one();
    }

    /// Tells a group's members to rebalance (one-way, best effort).
    pub fn notify_consumer_ids_changed(&self, group: &str) {
        if !self.config.read().notify_consumer_ids_changed_enable {
            return;
        }
        for conn in self.clients.consumer_connections(group) {
            let req = RemotingCommand::request(request::NOTIFY_CONSUMER_IDS_CHANGED).with("consumerGroup", group);
            // Best effort and never waiting: a member that does not read
            // learns at its next periodic rebalance.
            if let Err(e) = conn.try_oneway(req) {
                tracing::debug!(peer = %conn.peer_addr(), error = %e, "notify failed");
            }
        }
    }
}

/// A running broker.
pub struct Broker {
    state: Arc<BrokerState>,
    server: RemotingServer,
    vip: Option<vip::VipChannel>,
    lane: lane::CoreLane,
    grpc: Arc<grpc::GrpcFrontEnd>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// RocketMQ's default `grpcServerPort` (the 5.x proxy's).
pub const DEFAULT_GRPC_PORT: u16 = 8081;

impl Broker {
    /// Opens the store (recovering it), loads the tables, binds `listenPort`
    /// and registers with the name servers.
    pub async fn start(cfg: BrokerConfig) -> Result<Broker, BrokerError> {
        cfg.validate()?;
        let store_cfg = cfg.store.clone();
        let store = tokio::task::spawn_blocking(move || MessageStore::open(store_cfg))
            .await
            .map_err(|e| BrokerError::Config(format!("store open task failed: {e}")))??;
        let store = Arc::new(store);
        let root = cfg.store.store_path_root_dir.clone();
        let (topics, offsets, groups, limits) = {
            let root = root.clone();
            tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
                Ok((
                    TopicTable::load(&root)?,
                    ConsumerOffsets::load(&root)?,
                    SubscriptionGroups::load(&root)?,
                    capacity::limits::LimitTable::load(&root)?,
                ))
            })
            .await
            .map_err(|e| BrokerError::Config(format!("table load task failed: {e}")))??
        };
        topics.ensure_system_topics(
            &cfg.broker_cluster_name,
            &cfg.broker_name,
            cfg.auto_create_topic_enable,
            cfg.default_topic_queue_nums,
        );
        let users = {
            let (root, cfg) = (root.clone(), cfg.clone());
            tokio::task::spawn_blocking(move || auth::load(&root, &cfg))
                .await
                .map_err(|e| BrokerError::Config(format!("auth table load task failed: {e}")))??
        };
        let (users, auth_file) = users;
        let gate = auth::gate(&cfg, users);
        let long_poll = LongPoll::new(cfg.max_held_pulls);
        let lp = long_poll.clone();
        store.set_dispatch_listener(Arc::new(move |topic: &str, queue_id: i32, max: i64| {
            lp.notify(topic, queue_id, max)
        }));

        let listen = SocketAddr::new([0, 0, 0, 0].into(), cfg.listen_port);
        let replication = Arc::new(ha::Replication::new(ha::ReplicationPolicy {
            required_slave_acks: cfg.in_sync_replicas.saturating_sub(1),
            max_gap_not_in_sync: cfg.ha_max_gap_not_in_sync,
            transfer_batch_size: cfg.ha_transfer_batch_size,
        }));
        let identity = cfg.broker_id;
        let controlled = !cfg.zk_addr.is_empty();
        let mut cfg = cfg;
        let send_gate = capacity::gate::Gate::new(cfg.send_message_thread_pool_nums);
        let pull_gate = capacity::gate::Gate::new(cfg.pull_message_thread_pool_nums);
        if controlled {
            // Until the controller says otherwise: a slave following nobody
            // (no client writes), registered under its own id.
            cfg.broker_role = BrokerRole::Slave;
        }
        let role = cfg.broker_role;
        if role != BrokerRole::Slave {
            // Every master incarnation writes in an epoch of its own, so a
            // slave can tell this log's new bytes from any other's. Epochs
            // only grow; taking the clock's seconds as well keeps two brokers
            // that were each restarted as master (an operator's mistake) from
            // picking the same number at the same offset.
            let s = store.clone();
            let now_secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs().min(u32::MAX as u64 - 1) as u32);
            let next = s.epochs().last().map_or(1, |e| e.epoch + 1).max(now_secs);
            let began = tokio::task::spawn_blocking(move || s.begin_epoch(next))
                .await
                .map_err(|e| BrokerError::Config(format!("epoch task failed: {e}")))??;
            tracing::info!(epoch = began.epoch, start = began.start_offset, "master epoch begun");
        }
        let ha_listen = SocketAddr::new([0, 0, 0, 0].into(), cfg.ha_port());
        let ha_port_chosen = cfg.ha_listen_port != 0;
        let lane = lane::CoreLane::start(cfg.core_lane_realtime_priority)
            .map_err(|e| BrokerError::Io { path: "core lane thread".into(), source: e })?;
        let pop_limits = pop::PopLimits {
            max_batch: pop::state::MAX_BATCH,
            inflight_per_queue: cfg.pop_inflight_message_threshold,
            max_invisible_ms: cfg.max_invisible_time_mills,
        };
        let state = Arc::new(BrokerState {
            pop: pop::service::PopService::new(pop_limits),
            grpc: grpc::sessions::GrpcSessions::default(),
            grpc_renewals: grpc::renew::Renewals::default(),
            core_lane: lane.status(),
            broker_name: cfg.broker_name.clone(),
            broker_addr: cfg.broker_addr(),
            config: RwLock::new(cfg),
            store,
            topics,
            capacity: capacity::Capacity { limits, send_gate, pull_gate, degrader: Default::default() },
            offsets,
            groups,
            clients: Clients::default(),
            locks: QueueLocks::default(),
            long_poll,
            stats: Stats::default(),
            started: Instant::now(),
            hot_bytes: config::total_memory_bytes() / 100 * ACCESS_MESSAGE_IN_MEMORY_MAX_RATIO,
            metrics: metrics::BrokerMetrics::new(),
            replication,
            identity,
            slave: ha::slave::SlaveState::default(),
            gate,
            auth_file,
            topic_change: tokio::sync::Notify::new(),
            change_seq: std::sync::atomic::AtomicU64::new(0),
            registered_change: tokio::sync::watch::Sender::new(0),
            group_change: tokio::sync::Notify::new(),
            registered: tokio::sync::watch::Sender::new(false),
        });
        state.topics.persist().await?;
        let handler = Arc::new(Processor { state: state.clone() });
        let (conn_cfg, limits, tls) = {
            let cfg = state.config.read();
            let tls = cfg.tls_server.server_tls().map_err(|e| BrokerError::Config(format!("TLS: {e}")))?;
            (
                ConnectionConfig { priority_lane: Some(lane.handle()), ..cfg.connection_config() },
                cfg.accept_limits(),
                tls,
            )
        };
        // The VIP channel first: once the main port answers, everything does.
        let vip = match vip::vip_port(listen.port()) {
            Some(port) => {
                match vip::VipChannel::start(
                    SocketAddr::new(listen.ip(), port),
                    conn_cfg.clone(),
                    limits,
                    handler.clone(),
                    tls.clone(),
                )
                .await
                {
                    Ok(v) => Some(v),
                    // Like the derived replication port: serving goes on without it.
                    Err(e) => {
                        tracing::warn!(port, error = %e, "VIP channel port (listenPort - 2) unavailable: clients with vipChannelEnabled cannot send here");
                        None
                    }
                }
            }
            None => None,
        };
        let grpc_port = state.config.read().grpc_server_port;
        let grpc_listener = match grpc_port {
            Some(0) => None,
            Some(port) => {
                let addr = SocketAddr::new(listen.ip(), port);
                Some(
                    tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| BrokerError::Io { path: format!("grpcServerPort {addr}"), source: e })?,
                )
            }
            None => {
                let addr = SocketAddr::new(listen.ip(), DEFAULT_GRPC_PORT);
                match tokio::net::TcpListener::bind(addr).await {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "default gRPC port unavailable: gRPC clients are served on the remoting port only; set grpcServerPort");
                        None
                    }
                }
            }
        };
        let grpc = grpc::GrpcFrontEnd::start(state.clone(), grpc_listener, tls.clone());
        let sink: Arc<dyn spate_remoting::server::Http2Sink> = grpc.clone();
        let server = RemotingServer::bind_serving(listen, conn_cfg, handler, limits, tls, Some(sink))
            .await
            .map_err(|e| BrokerError::Io { path: format!("listen {listen}"), source: e })?;
        let mut tasks = vec![register::spawn(state.clone())];
        tasks.push(spawn_housekeeping(state.clone()));
        tasks.push(tokio::spawn(capacity::run_degrader(state.clone())));
        tasks.push(tokio::spawn(capacity::run_lag_probe(state.clone())));
        tasks.push(tokio::spawn(schedule::run(state.clone())));
        tasks.push(tokio::spawn(timer::run(state.clone())));
        tasks.push(tokio::spawn(pop::service::run_revive(state.clone())));
        tasks.push(tokio::spawn(transaction::run(state.clone())));
        if controlled {
            // Roles change live: every side runs, each idle while not its role.
            let listener = tokio::net::TcpListener::bind(ha_listen)
                .await
                .map_err(|e| BrokerError::Io { path: format!("haListenPort {ha_listen}"), source: e })?;
            tasks.push(tokio::spawn(ha::master::serve(listener, state.clone())));
            tasks.push(tokio::spawn(ha::slave::run(state.clone())));
            tasks.push(tokio::spawn(ha::metadata::run(state.clone())));
            tasks.push(tokio::spawn(ha::controlled::run(state.clone())));
        } else if role == BrokerRole::Slave {
            tasks.push(tokio::spawn(ha::slave::run(state.clone())));
            tasks.push(tokio::spawn(ha::metadata::run(state.clone())));
        } else {
            match tokio::net::TcpListener::bind(ha_listen).await {
                Ok(listener) => tasks.push(tokio::spawn(ha::master::serve(listener, state.clone()))),
                Err(e) if ha_port_chosen => {
                    return Err(BrokerError::Io { path: format!("haListenPort {ha_listen}"), source: e })
                }
                // The derived port (listenPort + 1) is taken: a master
                // without slaves works on; say so for one that has some.
                Err(e) => {
                    tracing::warn!(addr = %ha_listen, error = %e, "replication port unavailable: no slave can follow this master; set haListenPort")
                }
            }
        }
        let metrics_port = state.config.read().metrics_prom_exporter_port;
        if metrics_port != 0 {
            let s = state.clone();
            let addr = SocketAddr::new([0, 0, 0, 0].into(), metrics_port);
            let (_, task) = spate_metrics::serve(addr, Arc::new(move || metrics::render(&s)))
                .await
                .map_err(|e| BrokerError::Io { path: format!("metrics port {addr}"), source: e })?;
            tasks.push(task);
        }
        tracing::info!(addr = %state.broker_addr, broker = %state.broker_name, "broker listening");
        if let Some(addr) = grpc.local_addr() {
            tracing::info!(%addr, "gRPC (RocketMQ 5 clients) listening; also served on the remoting port");
        }
        Ok(Broker { state, server, vip, lane, grpc, tasks })
    }

    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Waits until a name server has accepted this broker's registration,
    /// up to `limit`; returns whether one has. Until then a client asking a
    /// name server for routes finds none.
    pub async fn registered(&self, limit: Duration) -> bool {
        let mut rx = self.state.registered.subscribe();
        let waited = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// The VIP channel's address, when it could be bound.
    /// The dedicated gRPC port's address (`grpcServerPort`), if bound.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.local_addr()
    }

    pub fn vip_addr(&self) -> Option<SocketAddr> {
        self.vip.as_ref().map(vip::VipChannel::local_addr)
    }

    /// Stops accepting, answers requests in progress (long polls included,
    /// up to `grace`), unregisters, persists the tables, flushes and
    /// checkpoints the store.
    pub async fn shutdown(self, grace: Duration) -> Result<(), BrokerError> {
        // Leave the routes first so clients stop sending here, then drain.
        for t in &self.tasks {
            t.abort();
        }
        register::unregister_all(&self.state).await;
        self.state.long_poll.close();
        self.grpc.shutdown();
        self.server.shutdown(grace).await;
        if let Some(v) = self.vip {
            v.shutdown(grace).await;
        }
        self.lane.shutdown(grace).await;
        // Every step runs even if an earlier one failed; the first error is reported.
        let mut first_error = None;
        for result in
            [self.state.topics.persist().await, self.state.offsets.persist().await, self.state.groups.persist().await]
        {
            if let Err(e) = result {
                tracing::error!(error = %e, "persisting a table at shutdown failed");
                first_error.get_or_insert(e);
            }
        }
        let store = self.state.store.clone();
        let stored = tokio::task::spawn_blocking(move || store.shutdown())
            .await
            .map_err(|e| BrokerError::Config(format!("store shutdown task failed: {e}")))
            .and_then(|r| r.map_err(BrokerError::from));
        if let Err(e) = stored {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Persists offsets and tables, expires silent clients.
/// How often `auth.json` is checked for changes made outside the broker.
const AUTH_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

fn spawn_housekeeping(state: Arc<BrokerState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let interval = state.config.read().flush_consumer_offset_interval;
        let mut offsets_tick = tokio::time::interval(interval);
        let mut clients_tick = tokio::time::interval(Duration::from_secs(10));
        let mut auth_tick = tokio::time::interval(AUTH_FILE_CHECK_INTERVAL);
        loop {
            tokio::select! {
                _ = offsets_tick.tick() => {
                    if let Err(e) = state.offsets.persist().await {
                        tracing::error!(error = %e, "persisting consumer offsets failed");
                    }
                }
                _ = state.group_change.notified() => {
                    if let Err(e) = state.groups.persist().await {
                        tracing::error!(error = %e, "persisting subscription groups failed");
                    }
                }
                _ = auth_tick.tick() => auth::reload_if_changed(&state).await,
                _ = clients_tick.tick() => {
                    let timeout = state.config.read().channel_expired_timeout;
                    for group in state.clients.expire(Instant::now(), timeout) {
                        state.notify_consumer_ids_changed(&group);
                    }
                }
            }
        }
    })
}

struct Processor {
    state: Arc<BrokerState>,
}

impl RequestHandler for Processor {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let state = self.state.clone();
        Box::pin(async move {
            let started = Instant::now();
            let principal = match auth::check(&state, &req, conn.peer_addr().ip()) {
                Ok(p) => p,
                Err(failure) => return (!req.is_oneway()).then(|| auth::refusal(&req, &failure)),
            };
            let resp = match process(&state, &conn, &req, principal.as_ref()).await {
                Ok(r) => r,
                Err(e) => error_response(&req, &e),
            };
            // Pulls are timed in pull.rs (their hold time is not processing).
            if let Some(kind) = match req.code {
                request::SEND_MESSAGE | request::SEND_MESSAGE_V2 | request::SEND_BATCH_MESSAGE => {
                    Some(metrics::Kind::Send)
                }
                request::HEART_BEAT => Some(metrics::Kind::Heartbeat),
                request::QUERY_CONSUMER_OFFSET | request::UPDATE_CONSUMER_OFFSET => Some(metrics::Kind::Offset),
                _ => None,
            } {
                state.metrics.latency(kind, started.elapsed());
                if matches!(kind, metrics::Kind::Send) && resp.code != response::SUCCESS {
                    metrics::rejected(&state.metrics.registry, resp.code);
                }
            }
            Some(resp)
        })
    }

    fn is_priority(&self, req: &RemotingCommand) -> bool {
        is_core(&self.state, req)
    }

    fn on_priority_lane(&self, conn: &Arc<Connection>) {
        self.state.core_lane.moved(conn.peer_addr());
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        if conn.is_on_priority_lane() {
            self.state.core_lane.closed();
        }
        for group in self.state.clients.connection_closed(conn.id()) {
            tracing::info!(group = %group, peer = %conn.peer_addr(), "consumer connection closed");
            self.state.notify_consumer_ids_changed(&group);
        }
    }
}

/// Whether a request is `core` traffic, which the core lane serves
/// (`lane.rs`): a send or pull whose topic or group has class `core`.
fn is_core(state: &BrokerState, req: &RemotingCommand) -> bool {
    let (topic, group) = match req.code {
        request::SEND_MESSAGE | request::SEND_MESSAGE_V2 | request::SEND_BATCH_MESSAGE => {
            (req.field("topic").or_else(|| req.field("b")), req.field("producerGroup").or_else(|| req.field("a")))
        }
        request::PULL_MESSAGE | request::LITE_PULL_MESSAGE => (req.field("topic"), req.field("consumerGroup")),
        _ => return false,
    };
    if !state.config.read().core_lane_enable {
        return false;
    }
    let class = state.capacity.limits.class_of(topic.unwrap_or_default(), group.unwrap_or_default());
    class == capacity::degrade::Class::Core
}

fn error_response(req: &RemotingCommand, e: &BrokerError) -> RemotingCommand {
    match e {
        BrokerError::Header(_) | BrokerError::Body(_) => {
            RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string())
        }
        BrokerError::Store(se) => send::store_error_response(req, se),
        _ => RemotingCommand::error(req, response::SYSTEM_ERROR, e.to_string()),
    }
}

async fn process(
    state: &Arc<BrokerState>,
    conn: &Arc<Connection>,
    req: &RemotingCommand,
    principal: Option<&spate_auth::Principal>,
) -> Result<RemotingCommand, BrokerError> {
    use request as r;
    // A slave's topics and groups are its master's copy: changed there only.
    let metadata_write = matches!(
        req.code,
        r::UPDATE_AND_CREATE_TOPIC
            | r::DELETE_TOPIC_IN_BROKER
            | r::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP
            | r::SPATE_UPDATE_LIMIT
            | r::SPATE_DELETE_LIMIT
            | r::SPATE_SET_PRIORITY
    );
    if metadata_write && state.config.read().broker_role == BrokerRole::Slave {
        return Ok(RemotingCommand::error(
            req,
            response::NO_PERMISSION,
            format!("broker {} is a slave: topics, groups and limits are changed on its master", state.broker_name),
        ));
    }
    Ok(match req.code {
        r::SEND_MESSAGE | r::SEND_MESSAGE_V2 | r::SEND_BATCH_MESSAGE => {
            send::handle(state, &origin::Origin::remoting(state, conn), req).await?
        }
        r::END_TRANSACTION => transaction::handle_end(state, req).await?,
        r::RECALL_MESSAGE => timer::handle_recall(state, &origin::Origin::remoting(state, conn), req).await?,
        r::PULL_MESSAGE | r::LITE_PULL_MESSAGE => pull::pull(state, conn, req).await?,
        r::POP_MESSAGE => pop::service::handle_pop(state, &origin::Origin::remoting(state, conn), req).await?,
        r::ACK_MESSAGE => pop::service::handle_ack(state, req).await?,
        r::CHANGE_MESSAGE_INVISIBLETIME => pop::service::handle_change_invisible(state, req).await?,
        r::BATCH_ACK_MESSAGE => pop::service::batch_ack(state, req).await?,
        r::HEART_BEAT => consumer::heart_beat(state, conn, req).await?,
        r::UNREGISTER_CLIENT => consumer::unregister_client(state, req)?,
        r::GET_CONSUMER_LIST_BY_GROUP => consumer::consumer_list(state, req)?,
        r::QUERY_CONSUMER_OFFSET => consumer::query_offset(state, req)?,
        r::UPDATE_CONSUMER_OFFSET => consumer::update_offset(state, req)?,
        r::LOCK_BATCH_MQ | r::UNLOCK_BATCH_MQ => consumer::lock_batch(state, req)?,
        r::CHECK_CLIENT_CONFIG => consumer::check_client_config(state, req)?,
        r::CONSUMER_SEND_MSG_BACK => consumer::send_back(state, req).await?,
        r::GET_MAX_OFFSET | r::GET_MIN_OFFSET | r::SEARCH_OFFSET_BY_TIMESTAMP | r::GET_EARLIEST_MSG_STORETIME => {
            admin::queue_offset(state, req).await?
        }
        r::UPDATE_AND_CREATE_TOPIC => admin::create_topic(state, req).await?,
        r::DELETE_TOPIC_IN_BROKER => admin::delete_topic(state, req).await?,
        r::GET_ALL_TOPIC_CONFIG => admin::all_topic_config(state, req),
        r::GET_ALL_CONSUMER_OFFSET => RemotingCommand::success(req).with_body(state.offsets.to_json()),
        r::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => admin::create_group(state, req).await?,
        r::GET_ALL_SUBSCRIPTIONGROUP_CONFIG => admin::all_groups(state, req),
        r::GET_BROKER_CONFIG => admin::broker_config(state, req),
        r::UPDATE_BROKER_CONFIG => admin::update_broker_config(state, req)?,
        r::GET_BROKER_RUNTIME_INFO => admin::runtime_info(state, req),
        r::GET_BROKER_HA_STATUS => {
            RemotingCommand::success(req).with_body(serde_json::to_vec(&ha::status_json(state)).unwrap_or_default())
        }
        r::GET_CONSUME_STATS => admin::consume_stats(state, req)?,
        r::SPATE_GET_LIMITS => admin::limits(state, req),
        r::SPATE_GET_POP_PROGRESS => pop::service::progress(state, req).await?,
        r::SPATE_UPDATE_LIMIT => admin::update_limit(state, req).await?,
        r::SPATE_DELETE_LIMIT => admin::delete_limit(state, req).await?,
        r::SPATE_SET_PRIORITY => admin::set_priority(state, req).await?,
        r::GET_CONSUMER_CONNECTION_LIST => admin::consumer_connections(state, req)?,
        r::GET_PRODUCER_CONNECTION_LIST => admin::producer_connections(state, req)?,
        r::QUERY_MESSAGE => admin::query_message(state, req).await?,
        r::VIEW_MESSAGE_BY_ID => admin::view_message(state, req).await?,
        code if auth::is_admin_code(code) => auth::admin(state, principal, req).await?,
        code => RemotingCommand::error(
            req,
            response::REQUEST_CODE_NOT_SUPPORTED,
            format!("request code {code} is not supported by this broker"),
        ),
    })
}
