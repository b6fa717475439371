//! The `spate` binary: command line, configuration loading, signals.
//!
//! - `spate standalone`: name server and broker in one process (the zero-setup default).
//! - `spate namesrv`: a name server.
//! - `spate broker -c broker.conf`: a broker.
//! - `spate admin ...`: operator commands (see `admin.rs`).
//! - `spate bench ...`: load generators and latency reports (see `bench/`).

mod admin;
mod admin_auth;
mod bench;
mod credentials;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use spate_broker::{Broker, BrokerConfig};
use spate_namesrv::{NameServer, NamesrvConfig};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long shutdown waits for requests in progress (held pulls included).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long `spate standalone` waits for its broker to register with its
/// own name server before saying ready anyway (the registration retries).
const STANDALONE_REGISTER_WAIT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(name = "spate", version, about = "Spate: a RocketMQ-compatible message engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Name server and broker in one process, data under ./spate-data.
    Standalone {
        /// Store root (RocketMQ's storePathRootDir).
        #[arg(long, default_value = "spate-data")]
        data_dir: PathBuf,
        /// Name server port.
        #[arg(long, default_value_t = 9876)]
        namesrv_port: u16,
        /// Broker port (listenPort).
        #[arg(long, default_value_t = 10911)]
        broker_port: u16,
        /// A broker.conf with further settings (the flags above win).
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
        /// HTTP port of the broker's Prometheus `/metrics` (0: off; broker.conf's metricsPromExporterPort).
        #[arg(long)]
        metrics_port: Option<u16>,
        /// Port of RocketMQ 5's gRPC clients (broker.conf's grpcServerPort; default 8081, skipped
        /// with a warning when taken; 0: none). The broker port serves gRPC too.
        #[arg(long)]
        grpc_port: Option<u16>,
    },
    /// A name server.
    Namesrv {
        #[arg(long, default_value_t = 9876)]
        port: u16,
        /// Drop a broker silent for this long (brokerChannelExpiredTime), in ms.
        #[arg(long, default_value_t = 10_000)]
        broker_expired_millis: u64,
        /// HTTP port of Prometheus `/metrics` (0: off).
        #[arg(long, default_value_t = 0)]
        metrics_port: u16,
        /// Connections open at once (serverMaxConnections).
        #[arg(long, default_value_t = spate_remoting::server::DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Connections open at once from one client address (serverMaxConnectionsPerAddress).
        #[arg(long, default_value_t = spate_remoting::server::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
        max_connections_per_address: usize,
        /// A namesrv.conf: `authenticationEnabled`, `authorizationEnabled`,
        /// `authenticationWhitelist`, `initAuthenticationUser`, `listenPort`.
        #[arg(short = 'c', long)]
        config: Option<PathBuf>,
        /// Where the name server keeps its users and ACLs (`auth.json`).
        #[arg(long, default_value = "spate-namesrv")]
        data_dir: PathBuf,
    },
    /// A broker configured by a broker.conf file.
    Broker {
        #[arg(short = 'c', long)]
        config: PathBuf,
        /// Overrides namesrvAddr.
        #[arg(short = 'n', long)]
        namesrv_addr: Option<String>,
    },
    /// Operator commands (mqadmin's jobs): `spate admin -n HOST:PORT topic create T`.
    Admin(admin::AdminArgs),
    /// The HA controller: drives every replica group's state machine in
    /// ZooKeeper. Several may run; one leads, the others stand by.
    Controller {
        /// ZooKeeper connect string, `host:port[,host:port...]`.
        #[arg(long = "zk")]
        zk: String,
        /// This controller's name (default: host name and process id).
        #[arg(long)]
        id: Option<String>,
        /// ZooKeeper session timeout in ms: a dead leader is replaced after it.
        #[arg(long, default_value_t = 3000)]
        session_timeout_ms: u64,
        /// How often the leader re-reads every group, in ms.
        #[arg(long, default_value_t = 100)]
        scan_interval_ms: u64,
        /// A slave within this many bytes of its master is semi-sync (`haMaxGapNotInSync`).
        #[arg(long, default_value_t = 256 << 20)]
        semi_sync_max_lag: u64,
        /// Elect a live broker outside the in-sync set when no member is alive
        /// (`enableUncleanMasterElection`): acknowledged messages may be lost.
        #[arg(long)]
        unclean_election: bool,
        /// Name servers to tell at once when a broker's session ends,
        /// `host:port;host:port` (`namesrvAddr`).
        #[arg(short = 'n', long = "namesrv-addr")]
        namesrv_addr: Option<String>,
        /// Port of the Prometheus endpoint (`/metrics`); 0 turns it off.
        #[arg(long, default_value_t = 0)]
        metrics_port: u16,
        /// Credentials of a Super user of the name servers (when they run
        /// with authenticationEnabled=true).
        #[command(flatten)]
        credentials: credentials::SecurityArgs,
    },
    /// Load generators and latency reports.
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,zookeeper_client=warn".into()),
        )
        // Logs go to stderr: stdout is for command output (bench JSON, admin tables).
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // A broker's settings are read before the runtime is built: they size it.
    let broker_cfg = match &cli.command {
        Command::Standalone { data_dir, config, .. } => Some(load_broker_config(data_dir, config.as_deref())?),
        Command::Broker { config, .. } => Some(load_broker_config(Path::new("spate-data"), Some(config))?),
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(cfg) = &broker_cfg {
        builder.worker_threads(cfg.worker_threads());
    }
    let runtime = builder.enable_all().thread_name("spate").build()?;
    runtime.block_on(async move {
        match (cli.command, broker_cfg) {
            (
                Command::Standalone { data_dir, namesrv_port, broker_port, metrics_port, grpc_port, .. },
                Some(mut cfg),
            ) => {
                if grpc_port.is_some() {
                    cfg.grpc_server_port = grpc_port;
                }
                standalone(cfg, data_dir, namesrv_port, broker_port, metrics_port).await
            }
            (
                Command::Namesrv {
                    port,
                    broker_expired_millis,
                    metrics_port,
                    max_connections,
                    max_connections_per_address,
                    config,
                    data_dir,
                },
                _,
            ) => {
                let mut cfg = NamesrvConfig {
                    listen_addr: SocketAddr::from(([0, 0, 0, 0], port)),
                    broker_expired_time: Duration::from_millis(broker_expired_millis),
                    metrics_port,
                    limits: spate_remoting::AcceptLimits {
                        max_connections,
                        max_connections_per_address: max_connections_per_address.min(max_connections),
                    },
                    auth_file: Some(data_dir.join("config").join("auth.json")),
                    ..NamesrvConfig::default()
                };
                if let Some(path) = config {
                    apply_namesrv_config(&mut cfg, &path)?;
                }
                namesrv(cfg).await
            }
            (Command::Broker { namesrv_addr, .. }, Some(cfg)) => broker(cfg, namesrv_addr).await,
            (Command::Admin(args), _) => admin::run(args).await,
            (Command::Bench { command }, _) => bench::run(command).await,
            (
                Command::Controller {
                    zk,
                    id,
                    session_timeout_ms,
                    scan_interval_ms,
                    semi_sync_max_lag,
                    unclean_election,
                    namesrv_addr,
                    metrics_port,
                    credentials,
                },
                _,
            ) => {
                let cfg = spate_controller::controller::ControllerConfig {
                    zk_addrs: zk,
                    id: id.unwrap_or_else(|| format!("controller-{}", std::process::id())),
                    session_timeout: Duration::from_millis(session_timeout_ms),
                    scan_interval: Duration::from_millis(scan_interval_ms.max(1)),
                    policy: spate_controller::fsm::Policy { semi_sync_max_lag, unclean_election },
                    namesrv_addrs: namesrv_addr
                        .unwrap_or_default()
                        .split(';')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(String::from)
                        .collect(),
                    namesrv_credentials: credentials.credentials()?,
                };
                let snapshot = Arc::new(parking_lot::Mutex::new(spate_controller::controller::Snapshot::default()));
                if metrics_port != 0 {
                    let snap = snapshot.clone();
                    let render = Arc::new(move || {
                        spate_controller::metrics::render(&snap.lock(), spate_controller::controller::now_ms())
                    });
                    let addr: SocketAddr = ([0, 0, 0, 0], metrics_port).into();
                    let (bound, _task) = spate_metrics::serve(addr, render)
                        .await
                        .with_context(|| format!("metrics port {metrics_port}"))?;
                    tracing::info!(%bound, "controller metrics at /metrics");
                }
                tokio::select! {
                    r = spate_controller::controller::run(cfg, snapshot) => r.context("controller"),
                    r = wait_for_signal() => r,
                }
            }
            (Command::Standalone { .. } | Command::Broker { .. }, None) => unreachable!("read above"),
        }
    })
}

fn load_broker_config(data_dir: &Path, file: Option<&Path>) -> Result<BrokerConfig> {
    let mut cfg = BrokerConfig::new(data_dir);
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        for key in cfg.apply_properties(&text, &path.display().to_string())? {
            tracing::warn!(key = %key, file = %path.display(), "unknown setting ignored");
        }
    }
    Ok(cfg)
}

async fn standalone(
    mut cfg: BrokerConfig,
    data_dir: PathBuf,
    namesrv_port: u16,
    broker_port: u16,
    metrics_port: Option<u16>,
) -> Result<()> {
    let started = Instant::now();
    cfg.store.store_path_root_dir = data_dir.clone();
    cfg.listen_port = broker_port;
    if let Some(p) = metrics_port {
        cfg.metrics_prom_exporter_port = p;
    }
    cfg.validate().context("broker.conf")?;
    // One process, one set of network limits: broker.conf's apply to the
    // name server's listener too.
    let namesrv = NameServer::start(NamesrvConfig {
        listen_addr: SocketAddr::from(([0, 0, 0, 0], namesrv_port)),
        connection: cfg.connection_config(),
        limits: cfg.accept_limits(),
        // broker.conf's authentication settings and first users guard the
        // name server too; its users live beside the broker's.
        access: cfg.access.clone(),
        first_users: [&cfg.init_authentication_user, &cfg.inner_credentials].into_iter().flatten().cloned().collect(),
        auth_file: Some(data_dir.join("namesrv").join("auth.json")),
        tls: cfg.tls_server.clone(),
        ..NamesrvConfig::default()
    })
    .await
    .with_context(|| format!("starting the name server on port {namesrv_port}"))?;
    cfg.namesrv_addr = vec![format!("127.0.0.1:{}", namesrv.local_addr().port())];
    let broker = Broker::start(cfg).await.context("starting the broker")?;
    // Ready means a client can send: the routes must be in the name server.
    if !broker.registered(STANDALONE_REGISTER_WAIT).await {
        tracing::warn!(waited = ?STANDALONE_REGISTER_WAIT, "broker not yet registered with the name server");
    }
    let r = broker.state().store.recovery();
    tracing::info!(
        data_dir = %data_dir.display(),
        namesrv = %namesrv.local_addr(),
        broker = %broker.local_addr(),
        grpc = %broker.grpc_addr().map_or_else(|| "the broker port".to_string(), |a| a.to_string()),
        end_offset = r.end_offset,
        after_crash = r.after_crash,
        ready_ms = started.elapsed().as_millis() as u64,
        "spate standalone ready"
    );
    wait_for_signal().await?;
    tracing::info!("shutting down: answering requests in progress, flushing, checkpointing");
    broker.shutdown(SHUTDOWN_GRACE).await.context("broker shutdown")?;
    namesrv.shutdown(Duration::from_millis(200)).await;
    tracing::info!("stopped");
    Ok(())
}

/// Reads a namesrv.conf (properties); unknown keys warn.
fn apply_namesrv_config(cfg: &mut NamesrvConfig, path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            anyhow::bail!("{}:{}: expected key=value", path.display(), n + 1);
        };
        match cfg.set(k.trim(), v.trim()) {
            Ok(true) => {}
            Ok(false) => tracing::warn!(key = k.trim(), "unknown namesrv.conf key ignored"),
            Err(e) => anyhow::bail!("{}:{}: {e}", path.display(), n + 1),
        }
    }
    Ok(())
}

async fn namesrv(cfg: NamesrvConfig) -> Result<()> {
    let port = cfg.listen_addr.port();
    let namesrv = NameServer::start(cfg).await.with_context(|| format!("starting the name server on port {port}"))?;
    tracing::info!(addr = %namesrv.local_addr(), "name server ready");
    wait_for_signal().await?;
    namesrv.shutdown(SHUTDOWN_GRACE).await;
    Ok(())
}

async fn broker(mut cfg: BrokerConfig, namesrv_addr: Option<String>) -> Result<()> {
    if let Some(addrs) = namesrv_addr {
        cfg.set("namesrvAddr", &addrs)?;
    }
    if cfg.namesrv_addr.is_empty() {
        tracing::warn!("namesrvAddr is not set: clients will not find this broker");
    }
    let broker = Broker::start(cfg).await.context("starting the broker")?;
    tracing::info!(addr = %broker.local_addr(), "broker ready");
    wait_for_signal().await?;
    broker.shutdown(SHUTDOWN_GRACE).await.context("broker shutdown")?;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
