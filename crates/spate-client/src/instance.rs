//! The shared client instance (upstream's `MQClientInstance`): one set of
//! connections, the route cache, the broker address table, and the periodic
//! work every producer and consumer of the instance needs (route refresh,
//! heartbeats). It also answers requests brokers send to the client.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use spate_remoting::protocol::{
    json, ConsumerData, HeartbeatData, MessageQueue, ProducerData, TopicRouteData, DEFAULT_TOPIC,
};
use spate_remoting::{request, response, BoxFuture, Connection, RemotingClient, RemotingCommand, RequestHandler};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ClientConfig;
use crate::error::{ClientError, Result};
use crate::route::TopicRoute;
use crate::transaction::TransactionListener;

/// Most queues whose pull suggestion is remembered.
const MAX_PULL_FROM_ENTRIES: usize = 100_000;

/// What a consumer registered with the instance offers it.
pub(crate) trait ConsumerMember: Send + Sync {
    /// The consumer's part of the heartbeat.
    fn consumer_data(&self) -> ConsumerData;
    /// Asks for a rebalance as soon as possible (NOTIFY_CONSUMER_IDS_CHANGED).
    fn rebalance_now(&self);
}

/// Producers and consumers registered with the instance.
#[derive(Default)]
struct Members {
    producers: Mutex<BTreeSet<String>>,
    consumers: Mutex<BTreeMap<String, Weak<dyn ConsumerMember>>>,
    /// Producer group -> the listener that answers transaction checks.
    transaction_listeners: Mutex<HashMap<String, Arc<dyn TransactionListener>>>,
}

impl Members {
    fn consumer(&self, group: &str) -> Option<Arc<dyn ConsumerMember>> {
        self.consumers.lock().get(group).and_then(Weak::upgrade)
    }

    fn heartbeat(&self, client_id: &str) -> HeartbeatData {
        let consumers: Vec<Arc<dyn ConsumerMember>> =
            self.consumers.lock().values().filter_map(Weak::upgrade).collect();
        HeartbeatData {
            client_id: client_id.to_string(),
            producer_data_set: self.producers.lock().iter().map(|g| ProducerData { group_name: g.clone() }).collect(),
            consumer_data_set: consumers.iter().map(|c| c.consumer_data()).collect(),
        }
    }
}

/// Answers the requests brokers send to clients.
struct InboundHandler {
    members: Arc<Members>,
}

impl RequestHandler for InboundHandler {
    fn handle(&self, conn: Arc<Connection>, req: RemotingCommand) -> BoxFuture<Option<RemotingCommand>> {
        let resp = match req.code {
            request::CHECK_TRANSACTION_STATE => {
                check_transaction(self.members.clone(), conn, req);
                None
            }
            request::NOTIFY_CONSUMER_IDS_CHANGED => {
                let group = req.field("consumerGroup").unwrap_or_default();
                tracing::debug!(group, "broker says the consumer group changed");
                if let Some(c) = self.members.consumer(group) {
                    c.rebalance_now();
                }
                (!req.is_oneway()).then(|| RemotingCommand::success(&req))
            }
            code => {
                tracing::debug!(code, "request from a broker the client does not handle");
                (!req.is_oneway()).then(|| {
                    RemotingCommand::error(
                        &req,
                        response::REQUEST_CODE_NOT_SUPPORTED,
                        format!("code {code} not supported"),
                    )
                })
            }
        };
        Box::pin(async move { resp })
    }
}

/// CHECK_TRANSACTION_STATE: asks the group's listener about the half
/// message in the body and answers with END_TRANSACTION on the same
/// connection (in the background: the listener may block).
fn check_transaction(members: Arc<Members>, conn: Arc<Connection>, req: RemotingCommand) {
    let broker_name = req.field("brokerName").unwrap_or_default().to_string();
    let msg = match crate::message::decode_pull_body(&req.body, &broker_name) {
        Ok(mut v) if v.len() == 1 => v.remove(0),
        _ => {
            tracing::warn!(peer = %conn.peer_addr(), "transaction check without exactly one message; ignored");
            return;
        }
    };
    let group = msg.property("PGROUP").unwrap_or_default().to_string();
    let Some(listener) = members.transaction_listeners.lock().get(&group).cloned() else {
        tracing::debug!(group, "transaction check for a group without a listener here");
        return;
    };
    let half_offset = req.field("tranStateTableOffset").and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
    let commit_log_offset = req.field("commitLogOffset").and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
    let msg_id = req.field("msgId").unwrap_or_default().to_string();
    let transaction_id = req.field("transactionId").unwrap_or(&msg.msg_id).to_string();
    tokio::spawn(async move {
        let state = crate::transaction::run_listener(listener, move |l| l.check_local_transaction(&msg)).await;
        let end = crate::transaction::end_request(
            &group,
            half_offset,
            commit_log_offset,
            &msg_id,
            &transaction_id,
            state,
            true,
        );
        if let Err(e) = conn.oneway(end).await {
            tracing::debug!(group, error = %e, "END_TRANSACTION after a check not sent");
        }
    });
}

/// One client identity (`ip@instanceName`) shared by producers and consumers.
///
/// Created by [`ClientInstance::new`]; background work starts on first use by
/// a producer or consumer (or [`ClientInstance::start`]) and stops with
/// [`ClientInstance::shutdown`].
pub struct ClientInstance {
    config: ClientConfig,
    client_id: String,
    client_ip: String,
    remoting: RemotingClient,
    routes: RwLock<HashMap<String, Arc<TopicRoute>>>,
    // broker name -> broker id -> address
    brokers: RwLock<HashMap<String, BTreeMap<i64, String>>>,
    /// The broker id each queue's last pull answer suggested pulling from
    /// next (`suggestWhichBrokerId`, upstream's pullFromWhichNodeTable).
    pull_from: Mutex<HashMap<MessageQueue, i64>>,
    members: Arc<Members>,
    refreshing: Mutex<HashSet<String>>,
    namesrv_next: AtomicUsize,
    started: AtomicBool,
    shutdown: CancellationToken,
    /// A route named a broker address not seen before: heartbeat now, so
    /// it knows this client's producers (transaction checks go to them)
    /// and consumers without waiting for `heartbeatBrokerInterval`.
    new_broker: tokio::sync::Notify,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for ClientInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInstance").field("client_id", &self.client_id).finish()
    }
}

impl ClientInstance {
    /// A new instance; checks the configuration. Connects lazily.
    pub fn new(config: ClientConfig) -> Result<Arc<ClientInstance>> {
        config.validate()?;
        let client_ip = config.effective_client_ip();
        let client_id = format!("{client_ip}@{}", config.effective_instance_name());
        let members = Arc::new(Members::default());
        let handler: Arc<dyn RequestHandler> = Arc::new(InboundHandler { members: members.clone() });
        Ok(Arc::new(ClientInstance {
            remoting: RemotingClient::new(config.remoting.clone(), Some(handler)),
            config,
            client_id,
            client_ip,
            routes: RwLock::new(HashMap::new()),
            brokers: RwLock::new(HashMap::new()),
            pull_from: Mutex::new(HashMap::new()),
            members,
            refreshing: Mutex::new(HashSet::new()),
            namesrv_next: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
            new_broker: tokio::sync::Notify::new(),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    /// `clientIP@instanceName`, the id brokers know this client by.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client IP in use.
    pub fn client_ip(&self) -> &str {
        &self.client_ip
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Starts route refresh and heartbeats (idempotent). Must run inside a tokio runtime.
    pub fn start(self: &Arc<Self>) -> Result<()> {
        if self.shutdown.is_cancelled() {
            return Err(ClientError::State("client instance is shut down"));
        }
        if self.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let routes = spawn_periodic(weak.clone(), self.config.poll_name_server_interval, self.shutdown.clone(), |i| {
            Box::pin(async move { i.refresh_all_routes().await })
        });
        let heartbeats = spawn_periodic(weak, self.config.heartbeat_broker_interval, self.shutdown.clone(), |i| {
            Box::pin(async move { i.send_heartbeat_to_all_brokers().await })
        });
        let weak = Arc::downgrade(self);
        let stop = self.shutdown.clone();
        let on_new_broker = tokio::spawn(async move {
            loop {
                let Some(i) = weak.upgrade() else { break };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = i.new_broker.notified() => i.send_heartbeat_to_all_brokers().await,
                }
            }
        });
        self.tasks.lock().extend([routes, heartbeats, on_new_broker]);
        Ok(())
    }

    /// Stops background work and closes every connection.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let tasks: Vec<JoinHandle<()>> = self.tasks.lock().drain(..).collect();
        for t in tasks {
            let _ = t.await;
        }
        self.remoting.close_all();
    }

    /// Whether [`ClientInstance::shutdown`] has been called.
    pub fn is_shut_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    pub(crate) fn register_producer(&self, group: &str) -> Result<()> {
        if !self.members.producers.lock().insert(group.to_string()) {
            return Err(ClientError::GroupAlreadyRegistered(group.to_string()));
        }
        Ok(())
    }

    pub(crate) fn set_transaction_listener(&self, group: &str, listener: Arc<dyn TransactionListener>) {
        self.members.transaction_listeners.lock().insert(group.to_string(), listener);
    }

    pub(crate) fn transaction_listener(&self, group: &str) -> Option<Arc<dyn TransactionListener>> {
        self.members.transaction_listeners.lock().get(group).cloned()
    }

    pub(crate) fn unregister_producer(&self, group: &str) {
        self.members.producers.lock().remove(group);
        self.members.transaction_listeners.lock().remove(group);
    }

    pub(crate) fn register_consumer(&self, group: &str, member: Weak<dyn ConsumerMember>) -> Result<()> {
        let mut consumers = self.members.consumers.lock();
        if consumers.get(group).is_some_and(|w| w.upgrade().is_some()) {
            return Err(ClientError::GroupAlreadyRegistered(group.to_string()));
        }
        consumers.insert(group.to_string(), member);
        Ok(())
    }

    pub(crate) fn unregister_consumer(&self, group: &str) {
        self.members.consumers.lock().remove(group);
    }

    // ---- calls ----

    /// Sends a request and waits for the response (any code).
    pub(crate) async fn call(&self, addr: &str, req: RemotingCommand, timeout: Duration) -> Result<RemotingCommand> {
        Ok(self.remoting.invoke(addr, req, timeout).await?)
    }

    /// Sends a one-way request.
    pub(crate) async fn call_oneway(&self, addr: &str, req: RemotingCommand) -> Result<()> {
        Ok(self.remoting.oneway(addr, req).await?)
    }

    /// Sends a request with the control timeout (`mqClientApiTimeout`) and
    /// expects SUCCESS.
    pub(crate) async fn call_ok(&self, addr: &str, req: RemotingCommand) -> Result<RemotingCommand> {
        let resp = self.call(addr, req, self.config.request_timeout).await?;
        expect_success(addr, resp)
    }

    // ---- routes ----

    /// Asks the name servers for `topic`'s route, trying each in turn.
    /// `Ok(None)`: the name server knows no such topic.
    pub async fn fetch_route(&self, topic: &str) -> Result<Option<TopicRouteData>> {
        let addrs = &self.config.namesrv_addr;
        let first = self.namesrv_next.fetch_add(1, Ordering::Relaxed);
        let mut last_err = String::from("no name server configured");
        for i in 0..addrs.len() {
            let addr = &addrs[(first + i) % addrs.len()];
            let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic);
            match self.call(addr, req, self.config.request_timeout).await {
                Ok(resp) if resp.code == response::SUCCESS => {
                    let data: TopicRouteData = json::decode(&resp.body, "TopicRouteData")
                        .map_err(|e| ClientError::BadResponse { addr: addr.clone(), reason: e.to_string() })?;
                    return Ok(Some(data));
                }
                Ok(resp) if resp.code == response::TOPIC_NOT_EXIST => return Ok(None),
                Ok(resp) => {
                    last_err = format!("{addr} answered code {}: {}", resp.code, resp.remark.unwrap_or_default())
                }
                Err(e) => last_err = format!("{addr}: {e}"),
            }
        }
        Err(ClientError::NameServerUnavailable(last_err))
    }

    /// Fetches `topic`'s route now and updates the caches. `Ok(None)` when the
    /// name server has none (a cached route, if any, is kept).
    pub async fn update_route(&self, topic: &str) -> Result<Option<Arc<TopicRoute>>> {
        let Some(data) = self.fetch_route(topic).await? else {
            return Ok(None);
        };
        Ok(Some(self.install_route(topic, TopicRoute::from_data(topic, data))))
    }

    fn install_route(&self, topic: &str, route: TopicRoute) -> Arc<TopicRoute> {
        {
            let mut brokers = self.brokers.write();
            let mut new_addr = false;
            for b in &route.data.broker_datas {
                let known = brokers.get(&b.broker_name);
                new_addr |= b.broker_addrs.values().any(|a| !known.is_some_and(|k| k.values().any(|x| x == a)));
                brokers.insert(b.broker_name.clone(), b.broker_addrs.clone());
            }
            if new_addr {
                self.new_broker.notify_one();
            }
        }
        let route = Arc::new(route);
        let mut routes = self.routes.write();
        if routes.len() < self.config.route_cache_topics_max || routes.contains_key(topic) {
            routes.insert(topic.to_string(), route.clone());
        } else {
            tracing::warn!(topic, max = self.config.route_cache_topics_max, "route cache full; route not cached");
        }
        route
    }

    /// The cached route of `topic`, fetching it when not cached.
    pub async fn route(&self, topic: &str) -> Result<Option<Arc<TopicRoute>>> {
        if let Some(r) = self.routes.read().get(topic) {
            return Ok(Some(r.clone()));
        }
        self.update_route(topic).await
    }

    /// The route a producer sends with: the topic's own when it has writable
    /// queues, else one made from the auto-creation topic (`TBW102`) so the
    /// broker creates the topic on first send.
    pub(crate) async fn publish_route(&self, topic: &str, default_queue_nums: i32) -> Result<Arc<TopicRoute>> {
        if let Some(r) = self.routes.read().get(topic) {
            if !r.write_queues.is_empty() {
                return Ok(r.clone());
            }
        }
        if let Some(r) = self.update_route(topic).await? {
            if !r.write_queues.is_empty() {
                return Ok(r);
            }
        }
        match self.fetch_route(DEFAULT_TOPIC).await? {
            Some(template) => {
                let route = TopicRoute::from_default(topic, template, default_queue_nums);
                if route.write_queues.is_empty() {
                    return Err(ClientError::NoRoute { topic: topic.to_string() });
                }
                tracing::debug!(topic, "no route yet; sending with the auto-creation topic's route");
                Ok(self.install_route(topic, route))
            }
            None => Err(ClientError::NoRoute { topic: topic.to_string() }),
        }
    }

    /// Refreshes `topic`'s route in the background, at once; a refresh already
    /// running for the topic is not doubled.
    pub fn refresh_route_soon(self: &Arc<Self>, topic: &str) {
        if !self.refreshing.lock().insert(topic.to_string()) {
            return;
        }
        let this = self.clone();
        let topic = topic.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.update_route(&topic).await {
                tracing::debug!(topic, error = %e, "route refresh failed");
            }
            this.refreshing.lock().remove(&topic);
        });
    }

    async fn refresh_all_routes(&self) {
        let topics: Vec<String> = self.routes.read().keys().cloned().collect();
        for topic in topics {
            if let Err(e) = self.update_route(&topic).await {
                tracing::debug!(topic, error = %e, "periodic route refresh failed");
            }
        }
    }

    /// The master address of a broker group, if known.
    pub fn master_addr(&self, broker_name: &str) -> Option<String> {
        self.brokers.read().get(broker_name).and_then(|a| a.get(&spate_remoting::protocol::MASTER_ID)).cloned()
    }

    /// The master address of a broker group, refreshing `topic`'s route once if unknown.
    pub(crate) async fn master_addr_or_refresh(&self, broker_name: &str, topic: &str) -> Result<String> {
        if let Some(a) = self.master_addr(broker_name) {
            return Ok(a);
        }
        self.update_route(topic).await?;
        self.master_addr(broker_name).ok_or_else(|| ClientError::BrokerNotFound { broker: broker_name.to_string() })
    }

    /// An address of `broker_name` to read from: broker `preferred_id` if
    /// it is in the route, else the master, else its lowest-numbered slave
    /// (upstream's findBrokerAddressInSubscribe: a group whose master is
    /// gone is still read through its slaves).
    pub fn subscribe_addr(&self, broker_name: &str, preferred_id: i64) -> Option<String> {
        let brokers = self.brokers.read();
        let group = brokers.get(broker_name)?;
        group
            .get(&preferred_id)
            .or_else(|| group.get(&spate_remoting::protocol::MASTER_ID))
            .or_else(|| group.values().next())
            .cloned()
    }

    /// [`subscribe_addr`](Self::subscribe_addr), refreshing `topic`'s route once if unknown.
    pub(crate) async fn subscribe_addr_or_refresh(&self, broker_name: &str, topic: &str, id: i64) -> Result<String> {
        if let Some(a) = self.subscribe_addr(broker_name, id) {
            return Ok(a);
        }
        self.update_route(topic).await?;
        self.subscribe_addr(broker_name, id)
            .ok_or_else(|| ClientError::BrokerNotFound { broker: broker_name.to_string() })
    }

    /// Where the next pull of `mq` goes: the broker its last answer suggested.
    pub(crate) async fn pull_addr(&self, mq: &MessageQueue) -> Result<String> {
        let id = self.pull_from.lock().get(mq).copied().unwrap_or(spate_remoting::protocol::MASTER_ID);
        self.subscribe_addr_or_refresh(&mq.broker_name, &mq.topic, id).await
    }

    /// Records a pull answer's `suggestWhichBrokerId` for `mq`.
    pub(crate) fn suggest_pull_from(&self, mq: &MessageQueue, broker_id: i64) {
        let mut t = self.pull_from.lock();
        if t.len() < MAX_PULL_FROM_ENTRIES || t.contains_key(mq) {
            t.insert(mq.clone(), broker_id);
        }
    }

    /// Every known broker address, masters and slaves.
    pub(crate) fn all_broker_addrs(&self) -> Vec<String> {
        let brokers = self.brokers.read();
        let set: BTreeSet<String> = brokers.values().flat_map(|a| a.values().cloned()).collect();
        set.into_iter().collect()
    }

    /// Every known master address.
    pub(crate) fn master_addrs(&self) -> Vec<String> {
        let brokers = self.brokers.read();
        let set: BTreeSet<String> =
            brokers.values().filter_map(|a| a.get(&spate_remoting::protocol::MASTER_ID)).cloned().collect();
        set.into_iter().collect()
    }

    // ---- heartbeats ----

    /// Sends this instance's heartbeat (its producer and consumer groups) to
    /// every known master now, and to slaves too when it has consumers.
    pub async fn send_heartbeat_to_all_brokers(&self) {
        let hb = self.members.heartbeat(&self.client_id);
        if hb.producer_data_set.is_empty() && hb.consumer_data_set.is_empty() {
            return;
        }
        let body = match serde_json::to_vec(&hb) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat does not encode");
                return;
            }
        };
        // Consumers tell slaves too: a slave serving reads while its master
        // is away must know the group's members (upstream does the same).
        let addrs = if hb.consumer_data_set.is_empty() { self.master_addrs() } else { self.all_broker_addrs() };
        for addr in addrs {
            let req = RemotingCommand::request(request::HEART_BEAT).with_body(body.clone());
            if let Err(e) = self.call_ok(&addr, req).await {
                tracing::debug!(broker = addr, error = %e, "heartbeat failed");
            }
        }
    }

    /// Tells every known broker (slaves too) that this client left
    /// `producer_group` / `consumer_group`.
    pub(crate) async fn unregister_client(&self, producer_group: Option<&str>, consumer_group: Option<&str>) {
        for addr in self.all_broker_addrs() {
            let req = RemotingCommand::request(request::UNREGISTER_CLIENT)
                .with("clientID", &self.client_id)
                .with_opt("producerGroup", producer_group)
                .with_opt("consumerGroup", consumer_group);
            if let Err(e) = self.call_ok(&addr, req).await {
                tracing::debug!(broker = addr, error = %e, "unregister failed");
            }
        }
    }
}

/// Fails with [`ClientError::Broker`] unless `resp` is SUCCESS.
pub(crate) fn expect_success(addr: &str, resp: RemotingCommand) -> Result<RemotingCommand> {
    if resp.code == response::SUCCESS {
        Ok(resp)
    } else {
        Err(ClientError::Broker { addr: addr.to_string(), code: resp.code, remark: resp.remark.unwrap_or_default() })
    }
}

type PeriodicWork = fn(Arc<ClientInstance>) -> BoxFuture<()>;

fn spawn_periodic(
    instance: Weak<ClientInstance>,
    every: Duration,
    stop: CancellationToken,
    work: PeriodicWork,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let Some(i) = instance.upgrade() else { break };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = work(i) => {}
            }
        }
    })
}
