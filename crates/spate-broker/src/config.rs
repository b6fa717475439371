//! `broker.conf`: RocketMQ's properties format and key names. Broker keys
//! are read here; store keys go to [`StoreConfig::set`]. Unknown keys warn;
//! a value that does not parse refuses to start with the key named.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use spate_store::StoreConfig;

use crate::error::BrokerError;

/// The replication role (`brokerRole`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    AsyncMaster,
    SyncMaster,
    Slave,
}

/// Broker settings, by RocketMQ key.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// `brokerClusterName` (DefaultCluster).
    pub broker_cluster_name: String,
    /// `brokerName` (broker-a): the replica group.
    pub broker_name: String,
    /// `brokerId`: 0 is the master.
    pub broker_id: i64,
    /// `namesrvAddr`: `host:port` list separated by `;`.
    pub namesrv_addr: Vec<String>,
    /// `brokerIP1`: the address clients are told to use (detected when unset).
    pub broker_ip1: IpAddr,
    /// `listenPort` (10911).
    pub listen_port: u16,
    /// `haListenPort`: where a master serves its slaves (0: `listenPort` + 1,
    /// upstream's rule; 10912 with the default listen port).
    pub ha_listen_port: u16,
    /// `brokerRole` (ASYNC_MASTER).
    pub broker_role: BrokerRole,
    /// `brokerPermission` (6: read and write).
    pub broker_permission: i32,
    /// `autoCreateTopicEnable` (true): a send naming TBW102 as its default topic creates the topic.
    pub auto_create_topic_enable: bool,
    /// `autoCreateSubscriptionGroup` (true).
    pub auto_create_subscription_group: bool,
    /// `heartbeatMaxNewGroups` (64, Spate's): most consumer groups (with
    /// their retry topics) one HEART_BEAT may create; it may name any number
    /// that exist, and the groups past the bound are created by the next
    /// heartbeats.
    pub heartbeat_max_new_groups: usize,
    /// `defaultTopicQueueNums` (8): queues of an auto-created or default topic.
    pub default_topic_queue_nums: i32,
    /// `registerNameServerPeriod`: re-registration interval (upstream 30 s; Spate 5 s).
    pub register_name_server_period: Duration,
    /// `registerBrokerTimeoutMills` (6000).
    pub register_broker_timeout: Duration,
    /// `longPollingEnable` (true).
    pub long_polling_enable: bool,
    /// `shortPollingTimeMills` (1000): hold time when long polling is off.
    pub short_polling_time: Duration,
    /// `flushConsumerOffsetInterval` (5000 ms).
    pub flush_consumer_offset_interval: Duration,
    /// `channelExpiredTimeout` (120 s): a client silent this long is dropped.
    pub channel_expired_timeout: Duration,
    /// `notifyConsumerIdsChangedEnable` (true).
    pub notify_consumer_ids_changed_enable: bool,
    /// `maxHeldPulls`: suspended pulls across all connections (Spate).
    pub max_held_pulls: usize,
    /// `popInflightMessageThreshold`: messages a pop group may hold per queue (10000).
    pub pop_inflight_message_threshold: usize,
    /// `maxInvisibleTimeMills`: longest invisible time a pop or change may ask (12 h).
    pub max_invisible_time_mills: u64,
    /// `popSnapshotIntervalMillis`: how often the pop state is written whole
    /// to its journal when it changed (Spate; bounds the replay at start).
    pub pop_snapshot_interval: Duration,
    /// `popSnapshotRecords`: journal records after which a snapshot is due sooner (Spate).
    pub pop_snapshot_records: u64,
    /// `metricsPromExporterPort`: HTTP port of `/metrics` (0: off).
    pub metrics_prom_exporter_port: u16,
    /// `grpcServerPort`: the port RocketMQ 5's gRPC clients dial besides
    /// the remoting port (which serves gRPC too). `None`: the default
    /// 8081, skipped with a warning when taken; `Some(0)`: none.
    pub grpc_server_port: Option<u16>,
    /// `defaultInvisibleTimeMills`: what a gRPC push consumer's receive
    /// hides its messages for (it names no invisible time); renewed while
    /// its Telemetry stream lives.
    pub default_invisible_time: Duration,
    /// `renewAheadTimeMillis`: a push consumer's message is renewed once
    /// less than this is left of its invisible time.
    pub renew_ahead_time: Duration,
    /// `renewSliceTimeMillis`: the invisible time each renewal sets.
    pub renew_slice_time: Duration,
    /// `renewMaxTimeMillis`: how long after its receive a message stops
    /// being renewed (it comes back then).
    pub renew_max_time: Duration,
    /// `serverMaxConnections`: connections open at once across all client
    /// addresses; more are closed at accept (10,000).
    pub server_max_connections: usize,
    /// `serverMaxConnectionsPerAddress` (Spate): connections open at once
    /// from one client IP address, loopback included; more are closed at
    /// accept, so one address cannot use up `serverMaxConnections` (1,000).
    pub server_max_connections_per_address: usize,
    /// `writeBufferHighWaterMark`: encoded answer bytes (bodies included)
    /// queued on one connection at which it stops reading requests, and the
    /// budget a pull sets its answer aside in (4 MiB).
    pub write_buffer_high_water_mark: usize,
    /// `writeBufferLowWaterMark`: a paused connection reads again once its
    /// queued bytes fall below this (2 MiB).
    pub write_buffer_low_water_mark: usize,
    /// `serverChannelWriteTimeoutMillis` (Spate): an answer not written this
    /// long after it was queued closes its connection, so a peer that stops
    /// reading is let go (30 s).
    pub server_channel_write_timeout: Duration,
    /// `serverChannelMaxIdleTimeSeconds`: a connection silent this long is
    /// closed (120 s).
    pub server_channel_max_idle_time: Duration,
    /// `serverWorkerThreads`: async worker threads serving connections and
    /// requests (0: one per CPU). The store's threads (dispatcher, flusher,
    /// allocator) come on top. Fewer workers mean fewer cross-CPU wake-ups
    /// per request but no second worker to take over while one is
    /// descheduled (BENCHMARKS.md measured both on 2 CPUs).
    pub server_worker_threads: usize,
    /// `brokerFastFailureEnable`: refuse sends and pulls that waited too
    /// long or find their queue full, at once (SYSTEM_BUSY), instead of
    /// letting them time out (true).
    pub broker_fast_failure_enable: bool,
    /// `sendMessageThreadPoolNums`: sends being stored at once (min(CPUs, 4)).
    pub send_message_thread_pool_nums: usize,
    /// `sendThreadPoolQueueCapacity`: sends waiting to be stored (10,000).
    pub send_thread_pool_queue_capacity: usize,
    /// `waitTimeMillsInSendQueue`: longest a send may wait before it is
    /// stored, counted from when it was read (200 ms).
    pub wait_time_mills_in_send_queue: Duration,
    /// `pullMessageThreadPoolNums`: pulls being read at once (16 + 2 x CPUs).
    pub pull_message_thread_pool_nums: usize,
    /// `pullThreadPoolQueueCapacity`: pulls waiting to be read (100,000).
    pub pull_thread_pool_queue_capacity: usize,
    /// `waitTimeMillsInPullQueue`: longest a pull may wait to be read (5 s).
    pub wait_time_mills_in_pull_queue: Duration,
    /// `degradeEnable` (Spate): refuse `bulk`, then `normal` traffic under
    /// pressure (true).
    pub degrade_enable: bool,
    /// `degradeSendWaitMicros` (Spate): sends taking longer than this on
    /// average from being read to being stored is pressure (1 ms).
    pub degrade_send_wait: Duration,
    /// `degradeSchedulingLagMicros` (Spate): ready tasks waiting longer
    /// than this on average for a runtime worker is pressure (500 us).
    pub degrade_scheduling_lag: Duration,
    /// `degradeQueueDepth` (Spate): more sends waiting than this is pressure (1,000).
    pub degrade_queue_depth: usize,
    /// `degradeStepMillis` (Spate): under pressure a class's admitted share
    /// is halved at most this often (100 ms).
    pub degrade_step: Duration,
    /// `degradeRecoverMillis` (Spate): without pressure a share grows back
    /// from nothing to whole in this long (2 s).
    pub degrade_recover: Duration,
    /// `degradeCheckInterval` (Spate): how often the pressure is checked (50 ms).
    pub degrade_check_interval: Duration,
    /// `coreLaneEnable` (Spate): a connection's first request for a `core`
    /// topic or group moves it to the core lane, a thread of its own that
    /// reads it, runs its core requests and writes its answers (true).
    pub core_lane_enable: bool,
    /// `coreLaneRealtimePriority` (Spate): the `SCHED_FIFO` priority (1-99)
    /// asked for the core lane's thread, so bulk work on the shared CPUs
    /// cannot delay it; 0 keeps ordinary scheduling. Needs `CAP_SYS_NICE`;
    /// without it the lane runs at ordinary priority and says so (10).
    pub core_lane_realtime_priority: u8,
    /// `messageDelayLevel`: the delay of each level a `DELAY` property may
    /// name, level 1 first (upstream's 18, 1 s to 2 h). Units ms, s, m, h, d.
    pub message_delay_levels: Vec<Duration>,
    /// `messageDelayLevel` as written (for display).
    pub message_delay_level: String,
    /// `enablePropertyFilter`: SQL92 subscriptions are served (true here;
    /// upstream's default is false).
    pub enable_property_filter: bool,
    /// `transactionCheckInterval`: how often unresolved half messages are
    /// looked at (30 s).
    pub transaction_check_interval: Duration,
    /// `transactionTimeOut`: a half message younger than this is not
    /// checked yet (6 s).
    pub transaction_timeout: Duration,
    /// `transactionCheckMax`: checks before a half message is given up on
    /// (15).
    pub transaction_check_max: i32,
    /// `timerMaxDelaySec`: a timer message may be due at most this far
    /// ahead (3 days).
    pub timer_max_delay: Duration,
    /// `timerMaxPendingInMemory` (Spate): most timer messages held in the
    /// delivery wheel (16 bytes each; 20 million). Past it, later timer
    /// messages are read in as earlier ones leave.
    pub timer_max_pending_in_memory: usize,
    /// `haMasterAddress`: a slave's master HA address (`host:haListenPort`).
    /// Empty: the one the name servers report at registration.
    pub ha_master_address: String,
    /// `haSendHeartbeatInterval`: an idle replication link exchanges a
    /// heartbeat this often (1 s; upstream 5 s).
    pub ha_send_heartbeat_interval: Duration,
    /// `haHousekeepingInterval`: a replication peer silent this long is
    /// dead and its link is closed (3 s; upstream 20 s).
    pub ha_housekeeping_interval: Duration,
    /// `haTransferBatchSize`: most bytes per replication batch (256 KiB;
    /// upstream 32 KiB).
    pub ha_transfer_batch_size: usize,
    /// `haTransferBytesPerSecond` (Spate's own): most bytes per second a
    /// master streams to each slave, so rebuilding a slave cannot take the
    /// whole network; 0 is unlimited (the default). It paces the live tail
    /// too, so it must exceed the write rate.
    pub ha_transfer_bytes_per_second: u64,
    /// `haMaxGapNotInSync`: a slave further behind than this is async; a
    /// send on a SYNC_MASTER does not wait for it (256 MiB).
    pub ha_max_gap_not_in_sync: u64,
    /// `inSyncReplicas`: copies, the master's included, a SYNC_MASTER send
    /// needs before it is acknowledged (2: the master and one slave).
    pub in_sync_replicas: usize,
    /// `haSyncTimeout` (Spate; upstream waits `syncFlushTimeout`): how long a
    /// SYNC_MASTER send waits for its slaves (3 s).
    pub ha_sync_timeout: Duration,
    /// `haStrictSync` (Spate): a SYNC_MASTER send that cannot be replicated
    /// fails (SYSTEM_ERROR, "in-sync replicas not enough" / "replication
    /// timed out") instead of succeeding with SLAVE_NOT_AVAILABLE or
    /// FLUSH_SLAVE_TIMEOUT; with too few slaves it is refused before it is
    /// stored. So an acknowledged send is always a replicated one.
    pub ha_strict_sync: bool,
    /// `slaveSyncMetadataInterval` (Spate): how often a slave copies topics,
    /// groups and consumer offsets from its master (3 s).
    pub slave_sync_metadata_interval: Duration,
    /// `slaveReadEnable`: consumers reading far behind (from disk) are sent
    /// to a slave, and a slave keeps them while they are (false). A group
    /// whose master is down is read from its slaves either way.
    pub slave_read_enable: bool,
    /// `zkAddr`: ZooKeeper of the HA controller (`host:port,...`). Set, the
    /// broker takes its role from the controller (`brokerRole` is ignored),
    /// `brokerId` names it in its group (1, 2, ...) and the master
    /// registers with the name servers as 0. Empty: static roles.
    pub zk_addr: String,
    /// `zkSessionTimeoutMillis` (Spate): the broker's ZooKeeper session
    /// timeout; a dead master is replaced after it (2 s).
    pub zk_session_timeout: Duration,
    /// `zkPollIntervalMillis` (Spate): how often a controlled broker
    /// publishes its liveness and re-reads its group (100 ms).
    pub zk_poll_interval: Duration,
    /// `authenticationEnabled` (`aclEnable`), `authorizationEnabled` and
    /// their whitelists.
    pub access: spate_remoting::access::AccessSettings,
    /// `initAuthenticationUser`: the Super user created at first start
    /// (when no user exists yet).
    pub init_authentication_user: Option<spate_remoting::Credentials>,
    /// `innerClientAuthenticationCredentials`: what this broker signs its
    /// own requests with (name servers, its master); created as a Super
    /// user at first start. Never shown by GET_BROKER_CONFIG.
    pub inner_credentials: Option<spate_remoting::Credentials>,
    /// TLS on the client port and the VIP channel (`tlsMode`,
    /// `tls.server.*`, `tls.test.mode.enable`).
    pub tls_server: spate_remoting::TlsServerSettings,
    /// TLS of this broker's own connections to name servers and its master
    /// (`tls.enable`, `tls.client.*`); on whenever `tlsMode=enforcing`.
    pub tls_client: spate_remoting::TlsClientSettings,
    /// The store's settings (`storePathRootDir`, `flushDiskType`, ...).
    pub store: StoreConfig,
}

/// Broker keys, for the unknown-key check and `GET_BROKER_CONFIG`.
pub const BROKER_KEYS: &[&str] = &[
    "brokerClusterName",
    "brokerName",
    "brokerId",
    "namesrvAddr",
    "brokerIP1",
    "listenPort",
    "haListenPort",
    "brokerRole",
    "brokerPermission",
    "autoCreateTopicEnable",
    "autoCreateSubscriptionGroup",
    "heartbeatMaxNewGroups",
    "defaultTopicQueueNums",
    "registerNameServerPeriod",
    "registerBrokerTimeoutMills",
    "longPollingEnable",
    "shortPollingTimeMills",
    "flushConsumerOffsetInterval",
    "channelExpiredTimeout",
    "notifyConsumerIdsChangedEnable",
    "maxHeldPulls",
    "popInflightMessageThreshold",
    "maxInvisibleTimeMills",
    "grpcServerPort",
    "defaultInvisibleTimeMills",
    "renewAheadTimeMillis",
    "renewSliceTimeMillis",
    "renewMaxTimeMillis",
    "popSnapshotIntervalMillis",
    "popSnapshotRecords",
    "metricsPromExporterPort",
    "serverMaxConnections",
    "serverMaxConnectionsPerAddress",
    "writeBufferHighWaterMark",
    "writeBufferLowWaterMark",
    "serverChannelWriteTimeoutMillis",
    "serverChannelMaxIdleTimeSeconds",
];

impl BrokerConfig {
    /// What this broker signs its own requests with:
    /// `innerClientAuthenticationCredentials`, else `initAuthenticationUser`.
    pub fn inner_client_credentials(&self) -> Option<&spate_remoting::Credentials> {
        self.inner_credentials.as_ref().or(self.init_authentication_user.as_ref())
    }

    /// The worker-thread count `serverWorkerThreads` asks for on this machine.
    pub fn worker_threads(&self) -> usize {
        match self.server_worker_threads {
            0 => cpus(),
            n => n,
        }
    }

    /// Defaults with the store under `store_root`.
    pub fn new(store_root: impl Into<PathBuf>) -> Self {
        BrokerConfig {
            broker_cluster_name: "DefaultCluster".into(),
            broker_name: "broker-a".into(),
            broker_id: 0,
            namesrv_addr: Vec::new(),
            broker_ip1: detect_local_ip(),
            listen_port: 10911,
            ha_listen_port: 0,
            broker_role: BrokerRole::AsyncMaster,
            broker_permission: 6,
            auto_create_topic_enable: true,
            auto_create_subscription_group: true,
            heartbeat_max_new_groups: 64,
            default_topic_queue_nums: 8,
            register_name_server_period: Duration::from_secs(5),
            register_broker_timeout: Duration::from_millis(6000),
            long_polling_enable: true,
            short_polling_time: Duration::from_millis(1000),
            flush_consumer_offset_interval: Duration::from_millis(5000),
            channel_expired_timeout: Duration::from_secs(120),
            notify_consumer_ids_changed_enable: true,
            max_held_pulls: 100_000,
            pop_inflight_message_threshold: 10_000,
            max_invisible_time_mills: 12 * 3600 * 1000,
            pop_snapshot_interval: Duration::from_secs(60),
            pop_snapshot_records: 100_000,
            metrics_prom_exporter_port: 0,
            grpc_server_port: None,
            default_invisible_time: Duration::from_secs(60),
            renew_ahead_time: Duration::from_secs(10),
            renew_slice_time: Duration::from_secs(60),
            renew_max_time: Duration::from_secs(3 * 3600),
            server_max_connections: spate_remoting::server::DEFAULT_MAX_CONNECTIONS,
            server_max_connections_per_address: spate_remoting::server::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            write_buffer_high_water_mark: spate_remoting::connection::DEFAULT_WRITE_BUFFER_HIGH_WATER_MARK,
            write_buffer_low_water_mark: spate_remoting::connection::DEFAULT_WRITE_BUFFER_LOW_WATER_MARK,
            server_channel_write_timeout: Duration::from_secs(30),
            server_channel_max_idle_time: Duration::from_secs(120),
            server_worker_threads: 0,
            broker_fast_failure_enable: true,
            send_message_thread_pool_nums: cpus().min(4),
            send_thread_pool_queue_capacity: 10_000,
            wait_time_mills_in_send_queue: Duration::from_millis(200),
            pull_message_thread_pool_nums: 16 + 2 * cpus(),
            pull_thread_pool_queue_capacity: 100_000,
            wait_time_mills_in_pull_queue: Duration::from_millis(5000),
            degrade_enable: true,
            degrade_send_wait: Duration::from_millis(1),
            degrade_scheduling_lag: Duration::from_micros(500),
            degrade_queue_depth: 1000,
            degrade_step: Duration::from_millis(100),
            degrade_recover: Duration::from_secs(2),
            degrade_check_interval: Duration::from_millis(50),
            core_lane_enable: true,
            core_lane_realtime_priority: 10,
            message_delay_levels: crate::schedule::parse_delay_levels(crate::schedule::DEFAULT_DELAY_LEVELS)
                .unwrap_or_default(),
            message_delay_level: crate::schedule::DEFAULT_DELAY_LEVELS.to_string(),
            timer_max_delay: Duration::from_secs(3 * 86_400),
            transaction_check_interval: Duration::from_secs(30),
            enable_property_filter: true,
            transaction_timeout: Duration::from_secs(6),
            transaction_check_max: 15,
            timer_max_pending_in_memory: 20_000_000,
            ha_master_address: String::new(),
            ha_send_heartbeat_interval: Duration::from_secs(1),
            ha_housekeeping_interval: Duration::from_secs(3),
            ha_transfer_batch_size: 256 << 10,
            ha_transfer_bytes_per_second: 0,
            ha_max_gap_not_in_sync: 256 << 20,
            in_sync_replicas: 2,
            ha_sync_timeout: Duration::from_secs(3),
            ha_strict_sync: false,
            slave_sync_metadata_interval: Duration::from_secs(3),
            slave_read_enable: false,
            zk_addr: String::new(),
            zk_session_timeout: Duration::from_secs(2),
            zk_poll_interval: Duration::from_millis(100),
            access: Default::default(),
            init_authentication_user: None,
            inner_credentials: None,
            tls_server: Default::default(),
            tls_client: Default::default(),
            store: StoreConfig::new(store_root),
        }
    }

    /// Sets one key. `Ok(false)`: neither the broker nor the store knows it.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, BrokerError> {
        let v = value.trim();
        match key {
            "brokerClusterName" => self.broker_cluster_name = nonempty(key, v)?,
            "brokerName" => self.broker_name = nonempty(key, v)?,
            "brokerId" => self.broker_id = parse(key, v)?,
            "namesrvAddr" => self.namesrv_addr = split_addrs(v),
            "brokerIP1" => self.broker_ip1 = parse(key, v)?,
            "listenPort" => self.listen_port = parse(key, v)?,
            "haListenPort" => self.ha_listen_port = parse(key, v)?,
            "grpcServerPort" => self.grpc_server_port = Some(parse(key, v)?),
            "defaultInvisibleTimeMills" => self.default_invisible_time = Duration::from_millis(parse(key, v)?),
            "renewAheadTimeMillis" => self.renew_ahead_time = Duration::from_millis(parse(key, v)?),
            "renewSliceTimeMillis" => self.renew_slice_time = Duration::from_millis(parse(key, v)?),
            "renewMaxTimeMillis" => self.renew_max_time = Duration::from_millis(parse(key, v)?),
            "brokerRole" => {
                self.broker_role = match v {
                    "ASYNC_MASTER" => BrokerRole::AsyncMaster,
                    "SYNC_MASTER" => BrokerRole::SyncMaster,
                    "SLAVE" => BrokerRole::Slave,
                    _ => return Err(invalid(key, v, "ASYNC_MASTER, SYNC_MASTER or SLAVE")),
                }
            }
            "brokerPermission" => self.broker_permission = parse(key, v)?,
            "autoCreateTopicEnable" => self.auto_create_topic_enable = parse_bool(key, v)?,
            "autoCreateSubscriptionGroup" => self.auto_create_subscription_group = parse_bool(key, v)?,
            "heartbeatMaxNewGroups" => self.heartbeat_max_new_groups = parse(key, v)?,
            "defaultTopicQueueNums" => self.default_topic_queue_nums = parse(key, v)?,
            "registerNameServerPeriod" => self.register_name_server_period = millis(key, v)?,
            "registerBrokerTimeoutMills" => self.register_broker_timeout = millis(key, v)?,
            "longPollingEnable" => self.long_polling_enable = parse_bool(key, v)?,
            "shortPollingTimeMills" => self.short_polling_time = millis(key, v)?,
            "flushConsumerOffsetInterval" => self.flush_consumer_offset_interval = millis(key, v)?,
            "channelExpiredTimeout" => self.channel_expired_timeout = millis(key, v)?,
            "notifyConsumerIdsChangedEnable" => self.notify_consumer_ids_changed_enable = parse_bool(key, v)?,
            "maxHeldPulls" => self.max_held_pulls = parse(key, v)?,
            "popInflightMessageThreshold" => self.pop_inflight_message_threshold = parse(key, v)?,
            "maxInvisibleTimeMills" => self.max_invisible_time_mills = parse(key, v)?,
            "popSnapshotIntervalMillis" => self.pop_snapshot_interval = millis(key, v)?,
            "popSnapshotRecords" => self.pop_snapshot_records = parse(key, v)?,
            "metricsPromExporterPort" => self.metrics_prom_exporter_port = parse(key, v)?,
            "serverWorkerThreads" => self.server_worker_threads = parse(key, v)?,
            "serverMaxConnections" => self.server_max_connections = parse(key, v)?,
            "serverMaxConnectionsPerAddress" => self.server_max_connections_per_address = parse(key, v)?,
            "writeBufferHighWaterMark" => self.write_buffer_high_water_mark = parse(key, v)?,
            "writeBufferLowWaterMark" => self.write_buffer_low_water_mark = parse(key, v)?,
            "serverChannelWriteTimeoutMillis" => self.server_channel_write_timeout = millis(key, v)?,
            "serverChannelMaxIdleTimeSeconds" => {
                self.server_channel_max_idle_time = Duration::from_secs(parse(key, v)?)
            }
            "brokerFastFailureEnable" => self.broker_fast_failure_enable = parse_bool(key, v)?,
            "sendMessageThreadPoolNums" => self.send_message_thread_pool_nums = parse(key, v)?,
            "sendThreadPoolQueueCapacity" => self.send_thread_pool_queue_capacity = parse(key, v)?,
            "waitTimeMillsInSendQueue" => self.wait_time_mills_in_send_queue = millis(key, v)?,
            "pullMessageThreadPoolNums" => self.pull_message_thread_pool_nums = parse(key, v)?,
            "pullThreadPoolQueueCapacity" => self.pull_thread_pool_queue_capacity = parse(key, v)?,
            "waitTimeMillsInPullQueue" => self.wait_time_mills_in_pull_queue = millis(key, v)?,
            "degradeEnable" => self.degrade_enable = parse_bool(key, v)?,
            "degradeSendWaitMicros" => self.degrade_send_wait = Duration::from_micros(parse(key, v)?),
            "degradeSchedulingLagMicros" => self.degrade_scheduling_lag = Duration::from_micros(parse(key, v)?),
            "degradeQueueDepth" => self.degrade_queue_depth = parse(key, v)?,
            "degradeStepMillis" => self.degrade_step = millis(key, v)?,
            "degradeRecoverMillis" => self.degrade_recover = millis(key, v)?,
            "degradeCheckInterval" => self.degrade_check_interval = millis(key, v)?,
            "coreLaneEnable" => self.core_lane_enable = parse_bool(key, v)?,
            "coreLaneRealtimePriority" => self.core_lane_realtime_priority = parse(key, v)?,
            "messageDelayLevel" => {
                self.message_delay_levels = crate::schedule::parse_delay_levels(v)
                    .map_err(|why| BrokerError::Config(format!("{key}: {why}")))?;
                self.message_delay_level = v.trim().to_string();
            }
            "enablePropertyFilter" => self.enable_property_filter = parse_bool(key, v)?,
            "transactionCheckInterval" => self.transaction_check_interval = millis(key, v)?,
            "transactionTimeOut" => self.transaction_timeout = millis(key, v)?,
            "transactionCheckMax" => self.transaction_check_max = parse(key, v)?,
            "timerMaxDelaySec" => self.timer_max_delay = Duration::from_secs(parse(key, v)?),
            "timerMaxPendingInMemory" => self.timer_max_pending_in_memory = parse(key, v)?,
            "haMasterAddress" => self.ha_master_address = v.trim().to_string(),
            "haSendHeartbeatInterval" => self.ha_send_heartbeat_interval = millis(key, v)?,
            "haHousekeepingInterval" => self.ha_housekeeping_interval = millis(key, v)?,
            "haTransferBatchSize" => self.ha_transfer_batch_size = parse(key, v)?,
            "haTransferBytesPerSecond" => self.ha_transfer_bytes_per_second = parse(key, v)?,
            "haMaxGapNotInSync" => self.ha_max_gap_not_in_sync = parse(key, v)?,
            "inSyncReplicas" => self.in_sync_replicas = parse(key, v)?,
            "haSyncTimeout" => self.ha_sync_timeout = millis(key, v)?,
            "haStrictSync" => self.ha_strict_sync = parse_bool(key, v)?,
            "slaveSyncMetadataInterval" => self.slave_sync_metadata_interval = millis(key, v)?,
            "slaveReadEnable" => self.slave_read_enable = parse_bool(key, v)?,
            "zkAddr" | "controllerAddr" => self.zk_addr = v.trim().to_string(),
            "zkSessionTimeoutMillis" => self.zk_session_timeout = millis(key, v)?,
            "zkPollIntervalMillis" => self.zk_poll_interval = millis(key, v)?,
            "initAuthenticationUser" => self.init_authentication_user = Some(credentials(key, v)?),
            "innerClientAuthenticationCredentials" => self.inner_credentials = Some(credentials(key, v)?),
            k if self.access.set(k, v).map_err(BrokerError::Config)? => {}
            k if k.starts_with("tls") => {
                // `tls.test.mode.enable` belongs to both sides.
                let server = self.tls_server.set(k, v).map_err(|e| BrokerError::Config(e.to_string()))?;
                let client = self.tls_client.set(k, v).map_err(|e| BrokerError::Config(e.to_string()))?;
                if !(server || client) {
                    return Ok(false);
                }
            }
            _ => return self.store.set(key, v).map_err(|e| BrokerError::Config(e.to_string())),
        }
        Ok(true)
    }

    /// Reads a properties file: `key=value` lines, `#`/`!` comments.
    pub fn apply_properties(&mut self, text: &str, origin: &str) -> Result<Vec<String>, BrokerError> {
        let mut unknown = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let Some((key, value)) = line.split_once('=').or_else(|| line.split_once(':')) else {
                return Err(BrokerError::Config(format!("{origin}:{}: expected key=value", n + 1)));
            };
            let key = key.trim();
            match self.set(key, value) {
                Ok(true) => {}
                Ok(false) => unknown.push(key.to_string()),
                Err(e) => return Err(BrokerError::Config(format!("{origin}:{}: {e}", n + 1))),
            }
        }
        Ok(unknown)
    }

    /// Checks settings that only make sense together.
    pub fn validate(&self) -> Result<(), BrokerError> {
        self.access.validate().map_err(BrokerError::Config)?;
        self.tls_server.server_tls().map_err(|e| BrokerError::Config(format!("TLS server settings: {e}")))?;
        self.tls_client.client_config().map_err(|e| BrokerError::Config(format!("TLS client settings: {e}")))?;
        if self.access.authentication_enabled && self.inner_client_credentials().is_none() {
            return Err(BrokerError::Config(
                "authenticationEnabled=true needs innerClientAuthenticationCredentials (or initAuthenticationUser): \
                 the broker signs its registrations and its slave's requests with them"
                    .into(),
            ));
        }
        if self.default_topic_queue_nums < 1 || self.default_topic_queue_nums > 1024 {
            return Err(invalid("defaultTopicQueueNums", &self.default_topic_queue_nums.to_string(), "1..=1024"));
        }
        for (key, d) in [
            ("registerNameServerPeriod", self.register_name_server_period),
            ("registerBrokerTimeoutMills", self.register_broker_timeout),
            ("shortPollingTimeMills", self.short_polling_time),
            ("flushConsumerOffsetInterval", self.flush_consumer_offset_interval),
            ("channelExpiredTimeout", self.channel_expired_timeout),
            ("haSendHeartbeatInterval", self.ha_send_heartbeat_interval),
            ("haHousekeepingInterval", self.ha_housekeeping_interval),
            ("haSyncTimeout", self.ha_sync_timeout),
            ("slaveSyncMetadataInterval", self.slave_sync_metadata_interval),
            ("serverChannelWriteTimeoutMillis", self.server_channel_write_timeout),
            ("serverChannelMaxIdleTimeSeconds", self.server_channel_max_idle_time),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "0", "a positive number of milliseconds"));
            }
        }
        if self.register_name_server_period >= NAMESRV_BROKER_EXPIRY {
            return Err(invalid(
                "registerNameServerPeriod",
                &self.register_name_server_period.as_millis().to_string(),
                "less than the name server's broker expiry (10000 ms), or routes would flap",
            ));
        }
        if self.server_max_connections == 0 {
            return Err(invalid("serverMaxConnections", "0", "at least 1"));
        }
        if self.server_max_connections_per_address == 0
            || self.server_max_connections_per_address > self.server_max_connections
        {
            return Err(invalid(
                "serverMaxConnectionsPerAddress",
                &self.server_max_connections_per_address.to_string(),
                "1..=serverMaxConnections",
            ));
        }
        if self.write_buffer_high_water_mark == 0 {
            return Err(invalid("writeBufferHighWaterMark", "0", "at least 1 byte"));
        }
        if self.write_buffer_low_water_mark == 0 || self.write_buffer_low_water_mark > self.write_buffer_high_water_mark
        {
            return Err(invalid(
                "writeBufferLowWaterMark",
                &self.write_buffer_low_water_mark.to_string(),
                "1..=writeBufferHighWaterMark",
            ));
        }
        if self.max_held_pulls == 0 {
            return Err(invalid("maxHeldPulls", "0", "at least 1"));
        }
        if self.pop_inflight_message_threshold == 0 {
            return Err(invalid("popInflightMessageThreshold", "0", "at least 1"));
        }
        if self.max_invisible_time_mills == 0 {
            return Err(invalid("maxInvisibleTimeMills", "0", "at least 1"));
        }
        for (key, d) in [
            ("defaultInvisibleTimeMills", self.default_invisible_time),
            ("renewSliceTimeMillis", self.renew_slice_time),
        ] {
            if d.is_zero() || d.as_millis() > u128::from(self.max_invisible_time_mills) {
                return Err(invalid(key, &d.as_millis().to_string(), "1..=maxInvisibleTimeMills"));
            }
        }
        if self.renew_ahead_time >= self.renew_slice_time {
            return Err(invalid(
                "renewAheadTimeMillis",
                &self.renew_ahead_time.as_millis().to_string(),
                "less than renewSliceTimeMillis",
            ));
        }
        if self.pop_snapshot_interval.is_zero() {
            return Err(invalid("popSnapshotIntervalMillis", "0", "at least 1"));
        }
        if self.pop_snapshot_records == 0 {
            return Err(invalid("popSnapshotRecords", "0", "at least 1"));
        }
        if self.core_lane_realtime_priority > 99 {
            return Err(invalid(
                "coreLaneRealtimePriority",
                &self.core_lane_realtime_priority.to_string(),
                "0 (ordinary scheduling) or a SCHED_FIFO priority 1..=99",
            ));
        }
        if self.ha_housekeeping_interval <= self.ha_send_heartbeat_interval {
            return Err(invalid(
                "haHousekeepingInterval",
                &self.ha_housekeeping_interval.as_millis().to_string(),
                "longer than haSendHeartbeatInterval, or idle links would be closed",
            ));
        }
        if !(4096..=(16 << 20)).contains(&self.ha_transfer_batch_size) {
            return Err(invalid("haTransferBatchSize", &self.ha_transfer_batch_size.to_string(), "4096..=16777216"));
        }
        // A paced stream must still send a batch well within the slave's
        // housekeeping timeout, or the slave drops the link between batches.
        let rate = self.ha_transfer_bytes_per_second as f64;
        let per_batch = self.ha_transfer_batch_size as f64 / rate.max(1.0);
        if rate > 0.0 && per_batch > self.ha_housekeeping_interval.as_secs_f64() / 2.0 {
            return Err(invalid(
                "haTransferBytesPerSecond",
                &self.ha_transfer_bytes_per_second.to_string(),
                "0 (unlimited) or enough for one haTransferBatchSize within half of haHousekeepingInterval",
            ));
        }
        if self.degrade_check_interval.is_zero() {
            return Err(invalid("degradeCheckInterval", "0", "at least 1 ms"));
        }
        if self.in_sync_replicas == 0 {
            return Err(invalid("inSyncReplicas", "0", "at least 1 (the master)"));
        }
        if !self.zk_addr.is_empty() {
            if self.broker_id <= 0 {
                return Err(invalid(
                    "brokerId",
                    &self.broker_id.to_string(),
                    "under a controller (zkAddr) brokerId names the broker in its group: 1, 2, ...; \
                     the master registers as 0",
                ));
            }
            for (key, d) in
                [("zkSessionTimeoutMillis", self.zk_session_timeout), ("zkPollIntervalMillis", self.zk_poll_interval)]
            {
                if d.is_zero() {
                    return Err(invalid(key, "0", "a positive number of milliseconds"));
                }
            }
        } else if self.broker_role == BrokerRole::Slave && self.broker_id == 0 {
            return Err(invalid("brokerId", "0", "a slave's brokerId must be greater than 0"));
        } else if self.broker_role != BrokerRole::Slave && self.broker_id != 0 {
            return Err(invalid("brokerId", &self.broker_id.to_string(), "a master's brokerId must be 0"));
        }
        self.store.validate().map_err(|e| BrokerError::Config(e.to_string()))
    }

    /// The address written into records and given to clients.
    /// The replication port in use (`haListenPort`, or `listenPort` + 1).
    pub fn ha_port(&self) -> u16 {
        match self.ha_listen_port {
            0 => self.listen_port.wrapping_add(1),
            p => p,
        }
    }

    /// Per-connection limits of the client-facing listeners (the main port
    /// and the VIP channel; `spate standalone`'s name server too).
    pub fn connection_config(&self) -> spate_remoting::ConnectionConfig {
        spate_remoting::ConnectionConfig {
            idle_timeout: self.server_channel_max_idle_time,
            write_timeout: self.server_channel_write_timeout,
            write_buffer_high_water_mark: self.write_buffer_high_water_mark,
            write_buffer_low_water_mark: self.write_buffer_low_water_mark,
            ..spate_remoting::ConnectionConfig::default()
        }
    }

    /// Settings of this broker's own client connections (name servers, its
    /// master): they sign with the inner credentials.
    pub fn inner_client_config(&self) -> spate_remoting::ClientConfig {
        let mut c = spate_remoting::ClientConfig::default();
        c.connection.credentials = self.inner_client_credentials().cloned();
        // Validated at start (`validate`), so a failure here cannot happen;
        // plaintext is never chosen silently over a TLS that was asked for.
        let mut tls = self.tls_client.clone();
        tls.enable |= self.tls_server.mode == spate_remoting::TlsMode::Enforcing;
        c.tls = tls.client_tls().unwrap_or_else(|e| {
            tracing::error!(error = %e, "TLS client settings do not load");
            None
        });
        c
    }

    /// How many connections the client-facing listeners accept.
    pub fn accept_limits(&self) -> spate_remoting::AcceptLimits {
        spate_remoting::AcceptLimits {
            max_connections: self.server_max_connections,
            max_connections_per_address: self.server_max_connections_per_address,
        }
    }

    pub fn broker_addr(&self) -> SocketAddr {
        SocketAddr::new(self.broker_ip1, self.listen_port)
    }

    /// The current settings as `key=value` lines (GET_BROKER_CONFIG).
    pub fn to_properties(&self) -> String {
        let role = match self.broker_role {
            BrokerRole::AsyncMaster => "ASYNC_MASTER",
            BrokerRole::SyncMaster => "SYNC_MASTER",
            BrokerRole::Slave => "SLAVE",
        };
        let lines = [
            ("brokerClusterName", self.broker_cluster_name.clone()),
            ("brokerName", self.broker_name.clone()),
            ("brokerId", self.broker_id.to_string()),
            ("namesrvAddr", self.namesrv_addr.join(";")),
            ("brokerIP1", self.broker_ip1.to_string()),
            ("listenPort", self.listen_port.to_string()),
            ("haListenPort", self.ha_port().to_string()),
            ("brokerRole", role.to_string()),
            ("brokerPermission", self.broker_permission.to_string()),
            ("autoCreateTopicEnable", self.auto_create_topic_enable.to_string()),
            ("autoCreateSubscriptionGroup", self.auto_create_subscription_group.to_string()),
            ("heartbeatMaxNewGroups", self.heartbeat_max_new_groups.to_string()),
            ("defaultTopicQueueNums", self.default_topic_queue_nums.to_string()),
            ("registerNameServerPeriod", self.register_name_server_period.as_millis().to_string()),
            ("registerBrokerTimeoutMills", self.register_broker_timeout.as_millis().to_string()),
            ("longPollingEnable", self.long_polling_enable.to_string()),
            ("shortPollingTimeMills", self.short_polling_time.as_millis().to_string()),
            ("flushConsumerOffsetInterval", self.flush_consumer_offset_interval.as_millis().to_string()),
            ("channelExpiredTimeout", self.channel_expired_timeout.as_millis().to_string()),
            ("notifyConsumerIdsChangedEnable", self.notify_consumer_ids_changed_enable.to_string()),
            ("maxHeldPulls", self.max_held_pulls.to_string()),
            ("popInflightMessageThreshold", self.pop_inflight_message_threshold.to_string()),
            ("maxInvisibleTimeMills", self.max_invisible_time_mills.to_string()),
            (
                "grpcServerPort",
                self.grpc_server_port
                    .map_or_else(|| "8081 (default; skipped when taken)".to_string(), |p| p.to_string()),
            ),
            ("defaultInvisibleTimeMills", self.default_invisible_time.as_millis().to_string()),
            ("renewAheadTimeMillis", self.renew_ahead_time.as_millis().to_string()),
            ("renewSliceTimeMillis", self.renew_slice_time.as_millis().to_string()),
            ("renewMaxTimeMillis", self.renew_max_time.as_millis().to_string()),
            ("popSnapshotIntervalMillis", self.pop_snapshot_interval.as_millis().to_string()),
            ("popSnapshotRecords", self.pop_snapshot_records.to_string()),
            ("metricsPromExporterPort", self.metrics_prom_exporter_port.to_string()),
            ("serverWorkerThreads", self.server_worker_threads.to_string()),
            ("serverMaxConnections", self.server_max_connections.to_string()),
            ("serverMaxConnectionsPerAddress", self.server_max_connections_per_address.to_string()),
            ("writeBufferHighWaterMark", self.write_buffer_high_water_mark.to_string()),
            ("writeBufferLowWaterMark", self.write_buffer_low_water_mark.to_string()),
            ("serverChannelWriteTimeoutMillis", self.server_channel_write_timeout.as_millis().to_string()),
            ("serverChannelMaxIdleTimeSeconds", self.server_channel_max_idle_time.as_secs().to_string()),
            ("brokerFastFailureEnable", self.broker_fast_failure_enable.to_string()),
            ("sendMessageThreadPoolNums", self.send_message_thread_pool_nums.to_string()),
            ("sendThreadPoolQueueCapacity", self.send_thread_pool_queue_capacity.to_string()),
            ("waitTimeMillsInSendQueue", self.wait_time_mills_in_send_queue.as_millis().to_string()),
            ("pullMessageThreadPoolNums", self.pull_message_thread_pool_nums.to_string()),
            ("pullThreadPoolQueueCapacity", self.pull_thread_pool_queue_capacity.to_string()),
            ("waitTimeMillsInPullQueue", self.wait_time_mills_in_pull_queue.as_millis().to_string()),
            ("degradeEnable", self.degrade_enable.to_string()),
            ("degradeSendWaitMicros", self.degrade_send_wait.as_micros().to_string()),
            ("degradeSchedulingLagMicros", self.degrade_scheduling_lag.as_micros().to_string()),
            ("degradeQueueDepth", self.degrade_queue_depth.to_string()),
            ("degradeStepMillis", self.degrade_step.as_millis().to_string()),
            ("degradeRecoverMillis", self.degrade_recover.as_millis().to_string()),
            ("degradeCheckInterval", self.degrade_check_interval.as_millis().to_string()),
            ("coreLaneEnable", self.core_lane_enable.to_string()),
            ("coreLaneRealtimePriority", self.core_lane_realtime_priority.to_string()),
            ("messageDelayLevel", self.message_delay_level.clone()),
            ("enablePropertyFilter", self.enable_property_filter.to_string()),
            ("transactionCheckInterval", self.transaction_check_interval.as_millis().to_string()),
            ("transactionTimeOut", self.transaction_timeout.as_millis().to_string()),
            ("transactionCheckMax", self.transaction_check_max.to_string()),
            ("timerMaxDelaySec", self.timer_max_delay.as_secs().to_string()),
            ("timerMaxPendingInMemory", self.timer_max_pending_in_memory.to_string()),
            ("haMasterAddress", self.ha_master_address.clone()),
            ("haSendHeartbeatInterval", self.ha_send_heartbeat_interval.as_millis().to_string()),
            ("haHousekeepingInterval", self.ha_housekeeping_interval.as_millis().to_string()),
            ("haTransferBatchSize", self.ha_transfer_batch_size.to_string()),
            ("haTransferBytesPerSecond", self.ha_transfer_bytes_per_second.to_string()),
            ("haMaxGapNotInSync", self.ha_max_gap_not_in_sync.to_string()),
            ("inSyncReplicas", self.in_sync_replicas.to_string()),
            ("haSyncTimeout", self.ha_sync_timeout.as_millis().to_string()),
            ("haStrictSync", self.ha_strict_sync.to_string()),
            ("slaveSyncMetadataInterval", self.slave_sync_metadata_interval.as_millis().to_string()),
            ("slaveReadEnable", self.slave_read_enable.to_string()),
            ("zkAddr", self.zk_addr.clone()),
            ("zkSessionTimeoutMillis", self.zk_session_timeout.as_millis().to_string()),
            ("zkPollIntervalMillis", self.zk_poll_interval.as_millis().to_string()),
            ("storePathRootDir", self.store.store_path_root_dir.display().to_string()),
        ];
        lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// Spate's name servers drop a broker silent for this long (`brokerChannelExpiredTime`).
pub const NAMESRV_BROKER_EXPIRY: Duration = Duration::from_secs(10);

/// Physical memory in bytes (`MemTotal`), or 8 GiB when it cannot be read.
pub fn total_memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8 << 30, |kb| kb * 1024)
}

/// Keys that may change at runtime through UPDATE_BROKER_CONFIG; others need a restart.
pub const RUNTIME_KEYS: &[&str] = &[
    "autoCreateTopicEnable",
    "autoCreateSubscriptionGroup",
    "defaultTopicQueueNums",
    "brokerPermission",
    "longPollingEnable",
    "shortPollingTimeMills",
    "notifyConsumerIdsChangedEnable",
    "slaveReadEnable",
];

fn credentials(key: &str, v: &str) -> Result<spate_remoting::Credentials, BrokerError> {
    spate_remoting::Credentials::from_json(v).map_err(|e| BrokerError::Config(format!("invalid {key}: {e}")))
}

fn split_addrs(v: &str) -> Vec<String> {
    v.split(';').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// CPUs this process may use.
fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn invalid(key: &str, value: &str, expected: &str) -> BrokerError {
    BrokerError::Config(format!("invalid value `{value}` for {key}: expected {expected}"))
}

fn nonempty(key: &str, v: &str) -> Result<String, BrokerError> {
    if v.is_empty() {
        return Err(invalid(key, v, "a non-empty name"));
    }
    Ok(v.to_string())
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, BrokerError> {
    v.parse().map_err(|_| invalid(key, v, std::any::type_name::<T>()))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, BrokerError> {
    match v.to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(key, v, "true or false")),
    }
}

fn millis(key: &str, v: &str) -> Result<Duration, BrokerError> {
    parse::<u64>(key, v).map(Duration::from_millis)
}

/// The first non-loopback IPv4 address (no packet is sent), else loopback.
fn detect_local_ip() -> IpAddr {
    UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("10.255.255.255:1").map(|_| s))
        .and_then(|s| s.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_set_broker_and_store_keys_and_report_unknown_ones() {
        let mut c = BrokerConfig::new("/tmp/x");
        let text = "# comment\nbrokerName = b1\nnamesrvAddr=127.0.0.1:9876;127.0.0.1:9877\nflushDiskType=SYNC_FLUSH\nlistenPort=10999\nbogusKey=1\n";
        let unknown = c.apply_properties(text, "broker.conf").unwrap();
        assert_eq!(unknown, vec!["bogusKey".to_string()]);
        assert_eq!(c.broker_name, "b1");
        assert_eq!(c.namesrv_addr.len(), 2);
        assert_eq!(c.listen_port, 10999);
        assert!(c.to_properties().contains("brokerName=b1\n"));
    }

    #[test]
    fn worker_threads_default_to_one_per_cpu() {
        let mut c = BrokerConfig::new("/tmp/x");
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.worker_threads(), cpus);
        c.apply_properties("serverWorkerThreads=3\ninlineReadMaxBytes=4096\n", "broker.conf").unwrap();
        assert_eq!(c.worker_threads(), 3);
        assert_eq!(c.store.inline_read_max_bytes, 4096);
    }

    #[test]
    fn bad_values_name_the_key() {
        let mut c = BrokerConfig::new("/tmp/x");
        let err = c.apply_properties("listenPort=abc\n", "broker.conf").unwrap_err().to_string();
        assert!(err.contains("listenPort") && err.contains("broker.conf:1"), "{err}");
        let err = c.apply_properties("brokerRole=LEADER\n", "b").unwrap_err().to_string();
        assert!(err.contains("brokerRole"), "{err}");
        let err = c.apply_properties("maxMessageSize=-1\n", "b").unwrap_err().to_string();
        assert!(err.contains("maxMessageSize"), "{err}");
        let mut z = BrokerConfig::new("/tmp/x");
        z.set("flushConsumerOffsetInterval", "0").unwrap();
        assert!(z.validate().unwrap_err().to_string().contains("flushConsumerOffsetInterval"));
        let mut slow = BrokerConfig::new("/tmp/x");
        slow.set("registerNameServerPeriod", "30000").unwrap();
        assert!(slow.validate().unwrap_err().to_string().contains("registerNameServerPeriod"));
        // 256 KiB batches at 64 KiB/s: 4 s a batch, past half of the 3 s housekeeping.
        let mut paced = BrokerConfig::new("/tmp/x");
        paced.set("haTransferBytesPerSecond", "65536").unwrap();
        assert!(paced.validate().unwrap_err().to_string().contains("haTransferBytesPerSecond"));
        paced.set("haTransferBytesPerSecond", "4194304").unwrap();
        assert!(paced.validate().is_ok());
        assert!(total_memory_bytes() > 0);
        let mut net = BrokerConfig::new("/tmp/x");
        net.apply_properties("serverMaxConnections=100\nserverMaxConnectionsPerAddress=101\n", "b").unwrap();
        assert!(net.validate().unwrap_err().to_string().contains("serverMaxConnectionsPerAddress"));
        net.set("serverMaxConnectionsPerAddress", "20").unwrap();
        net.set("writeBufferLowWaterMark", "8388608").unwrap();
        assert!(net.validate().unwrap_err().to_string().contains("writeBufferLowWaterMark"));
        net.set("writeBufferHighWaterMark", "8388608").unwrap();
        net.set("serverChannelWriteTimeoutMillis", "1500").unwrap();
        assert!(net.validate().is_ok());
        assert_eq!(net.accept_limits().max_connections_per_address, 20);
        assert_eq!(net.connection_config().write_timeout, Duration::from_millis(1500));
        c.set("brokerRole", "SLAVE").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("brokerId"));
    }
}
