//! Spate's name server: brokers register every few seconds; clients ask it
//! for topic routes. It keeps everything in memory; several may run side by
//! side, each told about every broker.
//!
//! - [`routes`]: the tables and their rules, driven by an explicit clock.
//! - [`NameServer`]: the request processor, the expiry task, the listener.

pub mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use spate_remoting::protocol::{json, RegisterBrokerBody};
use spate_remoting::{
    request, response, AcceptLimits, BoxFuture, Connection, ConnectionConfig, HeaderError, RemotingCommand,
    RemotingServer, RequestHandler,
};

use routes::{Registration, Routes};
use spate_auth::file::AuthFile;
use spate_auth::AuthStore;
use spate_remoting::access::{namesrv_rule, AccessSettings, Gate};
use spate_remoting::{auth_admin, Credentials, TlsServerSettings};

/// Name server settings.
#[derive(Debug, Clone)]
pub struct NamesrvConfig {
    /// Address to listen on (`listenPort`, default 9876).
    pub listen_addr: SocketAddr,
    /// A broker not heard from for this long is dropped from all routes
    /// (`brokerChannelExpiredTime`; upstream 120 s, Spate 10 s so clients
    /// stop using a dead broker quickly).
    pub broker_expired_time: Duration,
    /// How often expiry is checked (`scanNotActiveBrokerInterval`; upstream 5 s).
    pub scan_not_active_broker_interval: Duration,
    pub connection: ConnectionConfig,
    /// `serverMaxConnections` and `serverMaxConnectionsPerAddress`: one
    /// address must not lock every client out of routes.
    pub limits: AcceptLimits,
    /// HTTP port of Prometheus `/metrics` (0: off).
    pub metrics_port: u16,
    /// `authenticationEnabled` and the rest: with it on, every request is
    /// signed, and registration, unregistration and topic deletion need a
    /// Super user (a broker's inner credentials).
    pub access: AccessSettings,
    /// Super users created when the auth file holds none
    /// (`initAuthenticationUser`, `innerClientAuthenticationCredentials`).
    pub first_users: Vec<Credentials>,
    /// Where users and ACLs persist (`None`: memory only).
    pub auth_file: Option<PathBuf>,
    /// TLS on the port (`tlsMode`, `tls.server.*`).
    pub tls: TlsServerSettings,
}

impl NamesrvConfig {
    /// Applies one `namesrv.conf` key; `Ok(false)` when it is not a name server key.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        match key {
            "initAuthenticationUser" | "innerClientAuthenticationCredentials" => {
                let c = Credentials::from_json(value).map_err(|e| format!("invalid {key}: {e}"))?;
                self.first_users.push(c);
                Ok(true)
            }
            "listenPort" => {
                let port = value.trim().parse().map_err(|_| format!("invalid listenPort `{value}`"))?;
                self.listen_addr.set_port(port);
                Ok(true)
            }
            k if k.starts_with("tls") => self.tls.set(k, value).map_err(|e| e.to_string()),
            _ => self.access.set(key, value),
        }
    }
}

impl Default for NamesrvConfig {
    fn default() -> Self {
        NamesrvConfig {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 9876)),
            broker_expired_time: Duration::from_secs(10),
            scan_not_active_broker_interval: Duration::from_secs(1),
            connection: ConnectionConfig::default(),
            limits: AcceptLimits::default(),
            metrics_port: 0,
            access: AccessSettings::default(),
            first_users: Vec::new(),
            auth_file: None,
            tls: TlsServerSettings::default(),
        }
    }
}

/// A running name server.
pub struct NameServer {
    server: RemotingServer,
    routes: Arc<RwLock<Routes>>,
    expiry_task: tokio::task::JoinHandle<()>,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
}

impl NameServer {
    /// Binds and starts serving on the current runtime.
    pub async fn start(cfg: NamesrvConfig) -> Result<NameServer, NamesrvError> {
        cfg.access.validate().map_err(NamesrvError::Config)?;
        let tls = cfg.tls.server_tls().map_err(|e| NamesrvError::Config(format!("TLS: {e}")))?;
        let auth_file = cfg.auth_file.clone().map(|p| Arc::new(AuthFile::new(p)));
        let users = match auth_file.clone() {
            Some(file) => {
                let firsts = cfg.first_users.clone();
                let (users, created) = tokio::task::spawn_blocking(move || file.open(&firsts))
                    .await
                    .map_err(|e| NamesrvError::Config(format!("auth file task failed: {e}")))??;
                if !created.is_empty() {
                    tracing::info!(users = ?created, "first Super users created from the configuration");
                }
                users
            }
            None => {
                let users = AuthStore::new();
                users.init_super_users(&cfg.first_users)?;
                users
            }
        };
        if cfg.access.authentication_enabled && users.is_empty() {
            return Err(NamesrvError::Config(
                "authenticationEnabled=true with no user: set initAuthenticationUser".into(),
            ));
        }
        let routes = Arc::new(RwLock::new(Routes::default()));
        let gate = Arc::new(Gate::new(cfg.access.clone(), Arc::new(users), namesrv_rule, ""));
        let handler = Arc::new(Processor { routes: routes.clone(), gate: gate.clone(), auth_file: auth_file.clone() });
        let server =
            RemotingServer::bind_with_tls(cfg.listen_addr, cfg.connection.clone(), handler, cfg.limits, tls).await?;
        let expiry_routes = routes.clone();
        let (watched, watched_users) = (auth_file.clone(), gate.users().clone());
        let expiry_task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(cfg.scan_not_active_broker_interval);
            let mut auth_tick = tokio::time::interval(AUTH_FILE_CHECK_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        expiry_routes.write().expire(Instant::now(), cfg.broker_expired_time);
                    }
                    _ = auth_tick.tick() => {
                        if let Some(file) = watched.clone() {
                            let users = watched_users.clone();
                            match tokio::task::spawn_blocking(move || file.reload_if_changed(&users)).await {
                                Ok(Ok(true)) => tracing::info!("auth.json changed: users and ACLs reloaded"),
                                Ok(Ok(false)) => {}
                                Ok(Err(e)) => tracing::warn!(error = %e, "auth.json changed but does not load; the tables in force are kept"),
                                Err(e) => tracing::warn!(error = %e, "auth file task failed"),
                            }
                        }
                    }
                }
            }
        });
        let metrics_task = if cfg.metrics_port != 0 {
            let r = routes.clone();
            let registry = spate_metrics::Registry::new();
            let render = move || {
                let routes = r.read();
                registry
                    .gauge("rocketmq_brokers_alive", "Broker processes registered.", &[])
                    .set(routes.live_broker_count() as i64);
                registry
                    .gauge("rocketmq_topics", "Topics with a route.", &[])
                    .set(routes.topics().topic_list.len() as i64);
                for (reason, n) in gate.denied_counts() {
                    let c = registry.counter(
                        "spate_auth_denied_total",
                        "Requests refused by authentication or authorization.",
                        &[("reason", reason)],
                    );
                    c.add(n.saturating_sub(c.get()));
                }
                registry.render()
            };
            let addr = SocketAddr::new(cfg.listen_addr.ip(), cfg.metrics_port);
            Some(spate_metrics::serve(addr, Arc::new(render)).await?.1)
        } else {
            None
        };
        tracing::info!(addr = %server.local_addr(), "name server listening");
        Ok(NameServer { server, routes, expiry_task, metrics_task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// Brokers currently registered.
    pub fn live_broker_count(&self) -> usize {
        self.routes.read().live_broker_count()
    }

    /// Stops accepting and answers what is in progress.
    pub async fn shutdown(&self, grace: Duration) {
        self.expiry_task.abort();
        if let Some(t) = &self.metrics_task {
            t.abort();
        }
        self.server.shutdown(grace).await;
    }
}

/// Why a name server did not start.
#[derive(Debug, thiserror::Error)]
pub enum NamesrvError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Auth(#[from] spate_auth::AuthError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// How often `auth.json` is checked for changes made outside the name server.
const AUTH_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

struct Processor {
    routes: Arc<RwLock<Routes>>,
    gate: Arc<Gate>,
    /// Saved after every change (`None`: users live in memory only).
    auth_file: Option<Arc<AuthFile>>,
}

impl RequestHandler for Processor {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let source = conn.peer_addr().ip();
        let principal = match self.gate.check(&req, source) {
            Ok(p) => p,
            Err(failure) => {
                self.gate.note_denied(&failure, req.code, source);
                let refused = RemotingCommand::error(&req, response::NO_PERMISSION, failure.to_string());
                return Box::pin(async move { (!req.is_oneway()).then_some(refused) });
            }
        };
        if auth_admin::is_auth_admin(req.code) {
            let handled =
                auth_admin::handle(self.gate.users(), principal.as_ref(), self.gate.authentication_enabled(), &req);
            let persist = self.auth_file.clone().filter(|_| handled.changed);
            let users = self.gate.users().clone();
            return Box::pin(async move {
                let Some(file) = persist else { return Some(handled.response) };
                let saved = tokio::task::spawn_blocking(move || file.save(&users)).await;
                match saved {
                    Ok(Ok(())) => Some(handled.response),
                    Ok(Err(e)) => Some(RemotingCommand::error(&req, response::SYSTEM_ERROR, format!("auth file: {e}"))),
                    Err(e) => {
                        Some(RemotingCommand::error(&req, response::SYSTEM_ERROR, format!("auth file task: {e}")))
                    }
                }
            });
        }
        let resp = match self.process(&conn, &req) {
            Ok(resp) => resp,
            Err(e) => RemotingCommand::error(&req, response::INVALID_PARAMETER, e.to_string()),
        };
        Box::pin(async move { Some(resp) })
    }

    fn on_close(&self, conn: &Arc<Connection>) {
        let gone = self.routes.write().connection_closed(conn.id());
        if !gone.is_empty() {
            tracing::info!(brokers = ?gone, "broker connection closed");
        }
    }
}

/// A request that cannot be served as sent.
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error(transparent)]
    Body(#[from] json::BodyError),
}

impl Processor {
    fn process(&self, conn: &Arc<Connection>, req: &RemotingCommand) -> Result<RemotingCommand, BadRequest> {
        let ok = RemotingCommand::success(req);
        Ok(match req.code {
            request::REGISTER_BROKER => self.register(conn, req)?,
            request::UNREGISTER_BROKER => {
                self.routes.write().unregister(req.str_field("brokerAddr")?);
                ok
            }
            request::GET_ROUTEINFO_BY_TOPIC => {
                let topic = req.str_field("topic")?;
                match self.routes.read().route(topic) {
                    // Java 5.x clients may ask for standard JSON (quoted numeric keys).
                    Some(route) if req.opt_bool_field("acceptStandardJsonOnly")?.unwrap_or(false) => {
                        ok.with_body(to_json(&route))
                    }
                    Some(route) => ok.with_body(route.to_fastjson()),
                    None => RemotingCommand::error(
                        req,
                        response::TOPIC_NOT_EXIST,
                        format!("No topic route info in name server for the topic: {topic}"),
                    ),
                }
            }
            request::GET_BROKER_CLUSTER_INFO => ok.with_body(self.routes.read().cluster_info().to_fastjson()),
            request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER => ok.with_body(to_json(&self.routes.read().topics())),
            request::GET_TOPICS_BY_CLUSTER => {
                let cluster = req.str_field("cluster")?;
                ok.with_body(to_json(&self.routes.read().topics_of_cluster(cluster)))
            }
            request::DELETE_TOPIC_IN_NAMESRV => {
                let topic = req.str_field("topic")?;
                self.routes.write().delete_topic(topic, req.field("clusterName"));
                ok
            }
            code => RemotingCommand::error(
                req,
                response::REQUEST_CODE_NOT_SUPPORTED,
                format!("request code {code} is not supported by the name server"),
            ),
        })
    }

    fn register(&self, conn: &Arc<Connection>, req: &RemotingCommand) -> Result<RemotingCommand, BadRequest> {
        let body: RegisterBrokerBody = if req.body.is_empty() {
            RegisterBrokerBody::default()
        } else {
            json::decode(&req.body, "RegisterBrokerBody")?
        };
        let reg = Registration {
            cluster: req.str_field("clusterName")?.to_string(),
            broker_addr: req.str_field("brokerAddr")?.to_string(),
            broker_name: req.str_field("brokerName")?.to_string(),
            broker_id: req.i64_field("brokerId")?,
            ha_server_addr: req.field("haServerAddr").unwrap_or_default().to_string(),
            topics: body.topic_config_serialize_wrapper,
            connection_id: conn.id(),
        };
        let checked = match reg.check() {
            Ok(checked) => checked,
            Err(e) => {
                tracing::warn!(error = %e, "registration refused");
                return Ok(RemotingCommand::error(req, response::INVALID_PARAMETER, e.to_string()));
            }
        };
        let remark = skipped_remark(checked.skipped());
        if let Some(remark) = &remark {
            tracing::warn!(
                broker = req.field("brokerName").unwrap_or_default(),
                addr = req.field("brokerAddr").unwrap_or_default(),
                skipped = remark.as_str(),
                "registration carried topics that cannot be routed; the rest are routed"
            );
        }
        if conn.is_closed() {
            // Its close already removed this broker; do not bring it back.
            return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "connection closed during registration"));
        }
        let mut routes = self.routes.write();
        if routes.live_broker_count() >= routes::MAX_LIVE_BROKERS && !routes.is_live(req.str_field("brokerAddr")?) {
            return Ok(RemotingCommand::error(req, response::SYSTEM_ERROR, "the name server's broker table is full"));
        }
        let answer = routes.register(checked, Instant::now());
        drop(routes);
        let mut resp = RemotingCommand::success(req)
            .with_opt("masterAddr", answer.master_addr)
            .with_opt("haServerAddr", answer.ha_server_addr);
        resp.remark = remark;
        Ok(resp)
    }
}

/// Skipped topics named in a registration's answer and log line, at most this many.
const SKIPPED_TOPICS_NAMED_MAX: usize = 10;

/// The skipped entries as one line (the broker still succeeds: its other
/// topics are routed, and it logs nothing on success, so this is for operators).
fn skipped_remark(skipped: &[routes::SkippedTopic]) -> Option<String> {
    if skipped.is_empty() {
        return None;
    }
    let named: Vec<String> =
        skipped.iter().take(SKIPPED_TOPICS_NAMED_MAX).map(|s| format!("{}: {}", s.topic, s.reason)).collect();
    let more = skipped.len().saturating_sub(SKIPPED_TOPICS_NAMED_MAX);
    let tail = if more > 0 { format!("; and {more} more") } else { String::new() };
    Some(format!("{} topic(s) not routed: {}{tail}", skipped.len(), named.join("; ")))
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}
