//! Chaos runs with real processes: ZooKeeper, a name server, two
//! controllers, and one replica group of three brokers under them (strict
//! sync replication). A producer (Spate's client) sends at a fixed rate and
//! a push consumer reads along, while one kind of fault is injected again
//! and again:
//!
//! - `kill -9` of the master;
//! - SIGSTOP of the master (hung), SIGCONT after a new master took over;
//! - the master cut off from ZooKeeper (a fault proxy in front of its
//!   ZooKeeper link stops passing bytes, as a dropped-packet partition
//!   would), healed after a new master took over; clients still reach it,
//!   which is the case fencing exists for;
//! - `kill -9` of the leading controller;
//! - `kill -9` of a slave.
//!
//! A simple consumer group reads along by pop (RocketMQ 5's model): it
//! leaves every tenth message un-acked on its first delivery and acks the
//! rest.
//!
//! After the run a checker proves: every acknowledged message was consumed
//! (0 lost) and sits at the queue offset it was acknowledged with; each
//! queue was consumed in offset order; duplicates are counted; the pop group
//! acked every acknowledged message, got each one left un-acked back with a
//! raised attempt, and was never handed a message after its ack was
//! answered (pops and acks carry across failovers); and no two
//! brokers acknowledged writes in the same epoch (each acknowledgement's
//! commit-log offset, from its offset message id, falls in an epoch of the
//! final log, and every epoch has one acknowledging broker). Each fault's
//! outage window (the longest gap between two acknowledgements around it)
//! and, for master faults, the time to a new master in ZooKeeper, are
//! printed as one JSON line per fault.
//!
//! `SPATE_CHAOS_TRIALS` (default 3) repeats each fault; with
//! `SPATE_CHAOS_ZK_SESSION_MS` (brokers' session timeout, default 1000) and
//! `SPATE_CHAOS_RATE` (sends per second, default 200) this is the chaos
//! runner behind BENCHMARKS.md (`scripts/bench-chaos.sh`).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, free_port, raw_client, send_req, BrokerProc, Proc, ZooKeeper};
use parking_lot::Mutex;
use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageListener, Producer, ProducerOptions, PushConsumer,
    PushConsumerOptions, ReceivedMessage, SimpleConsumer, SimpleConsumerOptions,
};
use spate_controller::fsm::GroupState;
use spate_controller::zk::Zk;
use spate_remoting::{request, response, RemotingCommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream as AsyncTcpStream};
use tokio::sync::{Notify, Semaphore};

const GROUP: &str = "broker-a";
const TOPIC: &str = "Chaos";
/// Sends in flight at most; a tick that finds none free is counted as skipped.
const MAX_IN_FLIGHT: usize = 64;

/// One cluster at a time: the runs are timing-sensitive and the machine is small.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whether this run's servers require signed requests (set under SERIAL).
static AUTH: AtomicBool = AtomicBool::new(false);
/// The Super user of an authenticated run: every broker's and the name
/// server's first user, the brokers' inner credentials, and what the
/// controller, the load and the consumers sign with.
const ROOT: (&str, &str) = ("chaos-root", "chaos-root-secret");

fn auth_lines() -> Vec<String> {
    if !AUTH.load(Ordering::SeqCst) {
        return Vec::new();
    }
    let creds = format!(r#"{{"accessKey":"{}","secretKey":"{}"}}"#, ROOT.0, ROOT.1);
    vec![
        "authenticationEnabled=true".into(),
        "authorizationEnabled=true".into(),
        format!("initAuthenticationUser={creds}"),
        format!("innerClientAuthenticationCredentials={creds}"),
    ]
}

/// A protocol client signing as [`ROOT`] in an authenticated run.
fn chaos_client() -> spate_remoting::RemotingClient {
    if !AUTH.load(Ordering::SeqCst) {
        return raw_client();
    }
    let mut c = spate_remoting::ClientConfig::default();
    c.connection.credentials = Some(spate_remoting::Credentials::new(ROOT.0, ROOT.1));
    spate_remoting::RemotingClient::new(c, None)
}

/// Client settings for the load and the consumers.
fn client_config(ns: &str, instance: &str) -> ClientConfig {
    let c = ClientConfig::new(ns).with_instance_name(instance);
    if AUTH.load(Ordering::SeqCst) {
        c.with_credentials(ROOT.0, ROOT.1)
    } else {
        c
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------
// Fault proxy: passes bytes both ways until cut; while cut it passes nothing
// (connections stay open, as with dropped packets); healing closes every
// connection that lived through the cut, and new ones pass again.

#[derive(Default)]
struct Cut {
    on: AtomicBool,
    healed: Notify,
}

struct FaultProxy {
    addr: String,
    cut: Arc<Cut>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    async fn start(target: String) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let cut = Arc::new(Cut::default());
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let (c, target) = (c.clone(), target.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = AsyncTcpStream::connect(&target).await else { return };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        _ = pump(ri, wo, &c) => {}
                        _ = pump(ro, wi, &c) => {}
                    }
                });
            }
        });
        FaultProxy { addr, cut, task }
    }

    fn set_cut(&self, on: bool) {
        self.cut.on.store(on, Ordering::SeqCst);
        if !on {
            self.cut.healed.notify_waiters();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one direction; while cut, holds the bytes and, once healed, ends
/// (closing the connection).
async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, cut: &Cut) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if cut.on.load(Ordering::SeqCst) {
            let healed = cut.healed.notified();
            if cut.on.load(Ordering::SeqCst) {
                healed.await;
            }
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
            _ = wait_cut(cut) => continue,
        };
        if cut.on.load(Ordering::SeqCst) {
            continue; // dropped, like the packet would be
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_cut(cut: &Cut) {
    while !cut.on.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---------------------------------------------------------------------------
// The cluster.

/// A `spate controller` child that can be killed and started again.
struct Controller {
    id: String,
    zk: String,
    ns: String,
    metrics_port: u16,
    child: Option<Child>,
}

impl Controller {
    fn start(id: &str, zk: &str, ns: &str) -> Controller {
        let mut c = Controller { id: id.into(), zk: zk.into(), ns: ns.into(), metrics_port: free_port(), child: None };
        c.spawn();
        c
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["controller", "--zk", &self.zk, "--id", &self.id, "--session-timeout-ms", "1000"])
            .args(["--scan-interval-ms", "100", "--namesrv-addr", &self.ns])
            .args(["--metrics-port", &self.metrics_port.to_string()])
            .args(if AUTH.load(Ordering::SeqCst) {
                vec!["--access-key", ROOT.0, "--secret-key", ROOT.1]
            } else {
                vec![]
            })
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn controller");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Its `/metrics` text (empty when it does not answer).
    fn metrics(&self) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.metrics_port)) else { return String::new() };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Cluster {
    _zk: ZooKeeper,
    ns: Proc,
    controllers: Vec<Controller>,
    brokers: BTreeMap<i64, BrokerProc>,
    proxies: BTreeMap<i64, FaultProxy>,
    observer: Zk,
    session_ms: u64,
    _dir: Option<tempfile::TempDir>,
}

impl Cluster {
    async fn start() -> Cluster {
        let session_ms: u64 = env_or("SPATE_CHAOS_ZK_SESSION_MS", 1000);
        let zk = ZooKeeper::start();
        let ns = Proc::namesrv_with(&auth_lines());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        // SPATE_CHAOS_KEEP: logs and stores stay for a look after the run.
        let dir = if std::env::var_os("SPATE_CHAOS_KEEP").is_some() {
            eprintln!("chaos cluster in {}", dir.keep().display());
            None
        } else {
            Some(dir)
        };
        let controllers = vec![Controller::start("c1", &zk.addr(), &ns.addr())];
        let observer = Zk::connect(&zk.addr(), Duration::from_secs(5)).await.unwrap();
        let mut proxies = BTreeMap::new();
        let mut brokers = BTreeMap::new();
        for id in 1..=3 {
            let proxy = FaultProxy::start(zk.addr()).await;
            let mut lines = auth_lines();
            lines.extend([
                format!("brokerName={GROUP}"),
                format!("brokerId={id}"),
                format!("zkAddr={}", proxy.addr),
                format!("zkSessionTimeoutMillis={session_ms}"),
                "haStrictSync=true".into(),
                "haSyncTimeout=1000".into(),
            ]);
            brokers.insert(id, BrokerProc::start(&path, &format!("b{id}"), &ns.addr(), &lines));
            proxies.insert(id, proxy);
        }
        let mut c = Cluster { _zk: zk, ns, controllers, brokers, proxies, observer, session_ms, _dir: dir };
        // c1 leads; c2 stands by.
        c.wait_leader(&["c1"], Duration::from_secs(15)).await;
        let (zk_addr, ns_addr) = (c.controllers[0].zk.clone(), c.ns.addr());
        c.controllers.push(Controller::start("c2", &zk_addr, &ns_addr));
        c.wait_full_sync(Duration::from_secs(30)).await;
        // The topic exists on the master (and so on its slaves and in the routes).
        let master = c.master_addr().await;
        let client = chaos_client();
        let r = call(&client, &master, send_req(TOPIC, 0, b"create".to_vec())).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", TOPIC);
            if let Ok(r) = client.invoke(&c.ns.addr(), req, Duration::from_secs(2)).await {
                if r.code == response::SUCCESS {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "the topic never reached the name server");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        c
    }

    async fn group(&self) -> GroupState {
        self.observer.read_group(GROUP).await.unwrap().0
    }

    async fn master_id(&self) -> i64 {
        self.group().await.master.expect("a master")
    }

    async fn master_addr(&self) -> String {
        self.brokers[&self.master_id().await].addr()
    }

    async fn wait_leader(&self, ids: &[&str], limit: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Ok(Some(l)) = self.observer.leader().await {
                if ids.contains(&l.as_str()) {
                    return start.elapsed();
                }
            }
            assert!(start.elapsed() < limit, "none of {ids:?} led");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Until all three brokers are in the in-sync set under a master.
    async fn wait_full_sync(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let g = self.group().await;
            if g.master.is_some() && g.in_sync.len() == 3 {
                return;
            }
            assert!(start.elapsed() < limit, "the group never had all three in sync: {g:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Until ZooKeeper names a master other than `old`; how long it took.
    async fn wait_new_master(&self, old: i64, since: Instant, limit: Duration) -> (i64, Duration) {
        loop {
            if let Some(m) = self.group().await.master.filter(|m| *m != old) {
                return (m, since.elapsed());
            }
            assert!(since.elapsed() < limit, "no new master after {limit:?}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Load and the ledger of what happened.

#[derive(Debug, Clone)]
struct Ack {
    seq: u64,
    queue: i32,
    queue_offset: i64,
    /// Store host port and commit-log offset, from the offset message id.
    store_port: u16,
    commit_offset: u64,
    at: Instant,
}

#[derive(Default)]
struct Ledger {
    acks: Vec<Ack>,
    failures: Vec<(u64, Instant, String)>,
    skipped: u64,
}

/// Decodes an offset message id: 4 bytes IPv4, 4 bytes port, 8 bytes
/// commit-log offset, as 32 hex digits.
fn decode_offset_msg_id(id: &str) -> Option<(u16, u64)> {
    if id.len() != 32 {
        return None;
    }
    let port = u32::from_str_radix(&id[8..16], 16).ok()?;
    let offset = u64::from_str_radix(&id[16..32], 16).ok()?;
    Some((u16::try_from(port).ok()?, offset))
}

struct Load {
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    producer: Arc<Producer>,
}

impl Load {
    async fn start(ns: &str, rate: u64) -> Load {
        let mut opts = ProducerOptions::new("chaos-producer");
        opts.send_msg_timeout = Duration::from_secs(3);
        let producer = Arc::new(Producer::start(client_config(ns, "chaos-p"), opts).await.unwrap());
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s, p) = (ledger.clone(), stop.clone(), producer.clone());
        let task = tokio::spawn(async move {
            let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let seq = AtomicU64::new(0);
            while !s.load(Ordering::SeqCst) {
                tick.tick().await;
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    l.lock().skipped += 1;
                    continue;
                };
                let n = seq.fetch_add(1, Ordering::SeqCst);
                let (l, p) = (l.clone(), p.clone());
                tokio::spawn(async move {
                    let body = format!("{n:012}-{}", "x".repeat(100));
                    let r = p.send(Message::new(TOPIC, body)).await;
                    let at = Instant::now();
                    match r {
                        Ok(r) => {
                            let (store_port, commit_offset) =
                                decode_offset_msg_id(&r.offset_msg_id).expect("an offset message id");
                            l.lock().acks.push(Ack {
                                seq: n,
                                queue: r.message_queue.queue_id,
                                queue_offset: r.queue_offset,
                                store_port,
                                commit_offset,
                                at,
                            });
                        }
                        Err(e) => l.lock().failures.push((n, at, e.to_string())),
                    }
                    drop(permit);
                });
            }
            // Wait for every send in flight.
            let _ = slots.acquire_many(MAX_IN_FLIGHT as u32).await;
        });
        Load { ledger, stop, task, producer }
    }

    /// The last acknowledgement's time.
    fn last_ack(&self) -> Option<Instant> {
        self.ledger.lock().acks.iter().map(|a| a.at).max()
    }

    /// Until an acknowledgement completed after `t`.
    async fn wait_ack_after(&self, t: Instant, limit: Duration) -> Duration {
        loop {
            if self.last_ack().is_some_and(|a| a > t) {
                return t.elapsed();
            }
            if t.elapsed() >= limit {
                let l = self.ledger.lock();
                let last: Vec<&String> = l.failures.iter().rev().take(3).map(|(_, _, e)| e).collect();
                panic!("no acknowledged send within {limit:?} of the fault; last failures: {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The longest gap between consecutive acknowledgements in `[from, to]`
    /// (including the gap spanning `from`), and the failures there.
    fn window(&self, from: Instant, to: Instant) -> (Duration, usize) {
        let l = self.ledger.lock();
        let mut times: Vec<Instant> = l.acks.iter().map(|a| a.at).collect();
        times.sort();
        let before = times.iter().rev().find(|t| **t <= from).copied().unwrap_or(from);
        let mut gap = Duration::ZERO;
        let mut prev = before;
        for t in times.into_iter().filter(|t| *t > before && *t <= to) {
            gap = gap.max(t - prev);
            prev = t;
        }
        let failures = l.failures.iter().filter(|(_, at, _)| *at >= from && *at <= to).count();
        (gap, failures)
    }

    async fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.producer.shutdown().await;
        let l = std::mem::take(&mut *self.ledger.lock());
        l
    }
}

/// What a consumer saw: per queue, the offsets in delivery order; per
/// sequence number, how often.
#[derive(Default)]
struct Seen {
    by_queue: BTreeMap<i32, Vec<(i64, u64)>>,
    count: HashMap<u64, u32>,
}

async fn consumer(ns: &str, group: &str, instance: &str) -> (PushConsumer, Arc<Mutex<Seen>>) {
    let mut o = PushConsumerOptions::new(group);
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    o.rebalance_interval = Duration::from_secs(1);
    // One listener thread, one message per call: per queue, deliveries are in pull order.
    o.consume_thread_min = 1;
    o.consume_thread_max = 1;
    o.offset_store_dir = std::env::temp_dir().join(format!("spate-chaos-{}-{group}", std::process::id()));
    let c = PushConsumer::new(client_config(ns, instance), o).unwrap();
    c.subscribe(TOPIC, "*").unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    c.start(MessageListener::concurrently(move |msgs, _| {
        let mut s = s.lock();
        for m in msgs {
            let Some(seq) = seq_of(&m.body) else {
                continue; // the topic-creating message
            };
            s.by_queue.entry(m.queue_id).or_default().push((m.queue_offset, seq));
            *s.count.entry(seq).or_default() += 1;
        }
        ConsumeStatus::ConsumeSuccess
    }))
    .await
    .unwrap();
    (c, seen)
}

/// The load's sequence number in a message body (`None`: the topic-creating message).
fn seq_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok().and_then(|b| b.get(..12)).and_then(|d| d.parse().ok())
}

/// How long a popped message stays invisible to the pop group.
const POP_INVISIBLE: Duration = Duration::from_secs(3);
/// Pop readers in the group.
const POP_READERS: usize = 2;

/// Where a delivered message was read: its queue and queue offset. A
/// sequence number stored twice (a send retried after the master that
/// stored it first was fenced) has two, both delivered.
type Copy = (i32, i64);

/// What the pop group saw.
#[derive(Default)]
struct PopLog {
    /// Per sequence number: each delivery's (receive request sent, attempt, copy).
    deliveries: HashMap<u64, Vec<(Instant, u32, Copy)>>,
    /// Per sequence number: when the first successful ack was answered, and
    /// of which copy.
    acked: HashMap<u64, (Instant, Copy)>,
    /// Acks lost with a dying master, whose retry the new master refused:
    /// the message is no longer in flight with that handle (the first ack
    /// landed, or it was revived and comes back).
    settled: HashMap<u64, Instant>,
    failed_receives: usize,
    failed_acks: usize,
}

enum AckOutcome {
    Acked { retried: bool },
    Settled,
    NoAnswer,
}

/// Acks `m`, again and again while no broker answers (a master died with
/// the ack in flight; the route moves to the new one), for a while.
async fn ack_until_answered(c: &SimpleConsumer, m: &ReceivedMessage) -> AckOutcome {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut retried = false;
    loop {
        match c.ack(m).await {
            Ok(()) => return AckOutcome::Acked { retried },
            Err(spate_client::ClientError::Broker { code, .. }) if code == response::NO_MESSAGE => {
                return AckOutcome::Settled
            }
            Err(_) if Instant::now() < deadline => {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => return AckOutcome::NoAnswer,
        }
    }
}

/// The pop group: [`POP_READERS`] tasks receiving and acking; every tenth
/// message is left un-acked on its first delivery, so it must come back.
struct PopReader {
    consumer: Arc<SimpleConsumer>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    log: Arc<Mutex<PopLog>>,
}

impl PopReader {
    async fn start(ns: &str) -> PopReader {
        let mut o = SimpleConsumerOptions::new("chaos-pop");
        o.await_duration = Duration::from_secs(1);
        let consumer = Arc::new(SimpleConsumer::new(client_config(ns, "chaos-pop"), o).unwrap());
        consumer.subscribe(TOPIC, "*").unwrap();
        consumer.start().await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(PopLog::default()));
        let tasks = (0..POP_READERS)
            .map(|_| {
                let (c, s, l) = (consumer.clone(), stop.clone(), log.clone());
                tokio::spawn(async move {
                    while !s.load(Ordering::SeqCst) {
                        let sent = Instant::now();
                        let msgs = match c.receive(16, POP_INVISIBLE).await {
                            Ok(m) => m,
                            Err(e) => {
                                if std::env::var_os("SPATE_CHAOS_DEBUG").is_some() {
                                    eprintln!("pop receive failed: {e}");
                                }
                                l.lock().failed_receives += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                        let mut to_ack: Vec<(Option<u64>, ReceivedMessage)> = Vec::new();
                        for m in msgs {
                            let seq = seq_of(&m.message.body);
                            if let Some(seq) = seq {
                                let copy = (m.message.queue_id, m.message.queue_offset);
                                l.lock().deliveries.entry(seq).or_default().push((sent, m.delivery_attempt, copy));
                                if seq % 10 == 0 && m.delivery_attempt == 1 {
                                    continue;
                                }
                            }
                            to_ack.push((seq, m));
                        }
                        for (seq, m) in to_ack {
                            let outcome = ack_until_answered(&c, &m).await;
                            let (Some(seq), mut l) = (seq, l.lock()) else { continue };
                            let copy = (m.message.queue_id, m.message.queue_offset);
                            match outcome {
                                AckOutcome::Acked { retried } => {
                                    l.acked.entry(seq).or_insert_with(|| (Instant::now(), copy));
                                    l.failed_acks += usize::from(retried);
                                }
                                AckOutcome::Settled => {
                                    l.failed_acks += 1;
                                    l.settled.entry(seq).or_insert_with(Instant::now);
                                }
                                AckOutcome::NoAnswer => l.failed_acks += 1,
                            }
                        }
                    }
                })
            })
            .collect();
        PopReader { consumer, stop, tasks, log }
    }

    /// Waits until the group acked every sequence number in `acked` (or the limit).
    async fn wait_acked(&self, acked: &BTreeSet<u64>, limit: Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            let done = {
                let l = self.log.lock();
                acked.iter().all(|s| l.acked.contains_key(s) || l.settled.contains_key(s))
            };
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn finish(self) -> PopLog {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.consumer.shutdown().await;
        let l = std::mem::take(&mut *self.log.lock());
        l
    }
}

/// The pop group's violations: acknowledged messages it never acked, and
/// messages handed out by a receive sent after their ack was answered.
/// Returns them with the number of messages left un-acked that came back.
/// A sequence number in `stored_twice` is two messages: a delivery of the
/// copy not acked is not one after its ack (either copy acked is enough).
fn check_pops(log: &PopLog, acked: &BTreeSet<u64>, stored_twice: &HashSet<u64>) -> (Vec<u64>, Vec<String>, usize) {
    let never_acked: Vec<u64> =
        acked.iter().filter(|s| !log.acked.contains_key(s) && !log.settled.contains_key(s)).copied().collect();
    let mut after_ack = Vec::new();
    let mut came_back = 0;
    for (seq, deliveries) in &log.deliveries {
        if let Some((at, acked_copy)) = log.acked.get(seq) {
            for (sent, attempt, copy) in deliveries {
                if sent > at && (copy == acked_copy || !stored_twice.contains(seq)) {
                    after_ack.push(format!(
                        "{seq}: attempt {attempt} (queue {}, offset {}) received after its ack (of queue {}, offset {}; stored twice: {})",
                        copy.0,
                        copy.1,
                        acked_copy.0,
                        acked_copy.1,
                        stored_twice.contains(seq)
                    ));
                }
            }
        }
        if seq % 10 == 0 && acked.contains(seq) && deliveries.iter().any(|(_, a, _)| *a >= 2) {
            came_back += 1;
        }
    }
    (never_acked, after_ack, came_back)
}

// ---------------------------------------------------------------------------
// The faults and the run.

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    KillMaster,
    HangMaster,
    CutMaster,
    KillController,
    KillSlave,
}

#[derive(Default)]
struct Measured {
    /// Longest gap between acknowledgements around each fault (ms).
    outage_ms: Vec<f64>,
    /// Fault to a new master (or a new leading controller) in ZooKeeper (ms).
    takeover_ms: Vec<f64>,
    /// Failed sends around each fault.
    failed: Vec<usize>,
}

async fn trial(c: &mut Cluster, load: &Load, fault: Fault, m: &mut Measured) {
    c.wait_full_sync(Duration::from_secs(30)).await;
    let ready = Instant::now();
    load.wait_ack_after(ready, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let master = c.master_id().await;
    let limit = Duration::from_secs(20);
    let t0 = Instant::now();
    match fault {
        Fault::KillMaster => {
            c.brokers.get_mut(&master).unwrap().kill9();
            let (_, took) = c.wait_new_master(master, t0, limit).await;
            m.takeover_ms.push(took.as_secs_f64() * 1e3);
            load.wait_ack_after(t0, limit).await;
            c.brokers.get_mut(&master).unwrap().spawn();
        }
        Fault::HangMaster | Fault::CutMaster => {
            if fault == Fault::HangMaster {
                c.brokers[&master].pause(true);
            } else {
                c.proxies[&master].set_cut(true);
            }
            let (_, took) = c.wait_new_master(master, t0, limit).await;
            m.takeover_ms.push(took.as_secs_f64() * 1e3);
            load.wait_ack_after(t0, limit).await;
            // Let it stay hung / cut off a little longer, with traffic flowing
            // elsewhere, then bring it back (it must rejoin as a slave).
            tokio::time::sleep(Duration::from_millis(500)).await;
            if fault == Fault::HangMaster {
                c.brokers[&master].pause(false);
            } else {
                c.proxies[&master].set_cut(false);
            }
        }
        Fault::KillController => {
            let leader = c.observer.leader().await.unwrap().expect("a leader");
            let i = c.controllers.iter().position(|x| x.id == leader).unwrap();
            c.controllers[i].kill9();
            let other = if leader == "c1" { "c2" } else { "c1" };
            let took = c.wait_leader(&[other], limit).await;
            m.takeover_ms.push(took.as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(500)).await;
            c.controllers[i].spawn();
        }
        Fault::KillSlave => {
            let slave = *c.group().await.in_sync.iter().find(|id| **id != master).unwrap();
            c.brokers.get_mut(&slave).unwrap().kill9();
            load.wait_ack_after(t0, limit).await;
            let start = Instant::now();
            while c.group().await.in_sync.contains(&slave) {
                assert!(start.elapsed() < limit, "the dead slave stayed in the in-sync set");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            m.takeover_ms.push(t0.elapsed().as_secs_f64() * 1e3);
            c.brokers.get_mut(&slave).unwrap().spawn();
        }
    }
    // Traffic after the fault, then the window's figures.
    let after = Instant::now();
    load.wait_ack_after(after, limit).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (gap, failed) = load.window(t0, Instant::now());
    m.outage_ms.push(gap.as_secs_f64() * 1e3);
    m.failed.push(failed);
    eprintln!("chaos {fault:?}: outage {gap:?}, {failed} failed sends");
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s.get(((s.len() as f64 - 1.0) * p).floor() as usize).copied().unwrap_or(0.0)
}

/// The epochs of the final master's log: `(epoch, start offset)`.
async fn epochs(addr: &str) -> Vec<(u32, u64)> {
    let r = call(&chaos_client(), addr, RemotingCommand::request(request::GET_BROKER_HA_STATUS)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["epochs"]
        .as_array()
        .expect("epochs in the HA status")
        .iter()
        .map(|e| (e["epoch"].as_u64().unwrap() as u32, e["startOffset"].as_u64().unwrap()))
        .collect()
}

/// Waits until `seen` holds every acknowledged sequence number (or the limit).
async fn wait_consumed(seen: &Mutex<Seen>, acked: &BTreeSet<u64>, limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if acked.iter().all(|s| seen.lock().count.contains_key(s)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Per queue, the offsets a consumer saw first-time must come in order
/// with no gap; an offset at or below one already seen is a redelivery,
/// and must carry the same message as before. Returns the violations and
/// the redeliveries.
fn check_order(seen: &Seen) -> (Vec<String>, usize) {
    let mut bad = Vec::new();
    let mut redelivered = 0;
    for (q, offs) in &seen.by_queue {
        let mut next: Option<i64> = None;
        let mut at: HashMap<i64, u64> = HashMap::new();
        for (off, seq) in offs {
            match next {
                Some(n) if *off < n => redelivered += 1,
                Some(n) if *off > n => bad.push(format!("queue {q}: offset {off} consumed before {n}")),
                _ => {}
            }
            if let Some(before) = at.insert(*off, *seq).filter(|b| b != seq) {
                bad.push(format!("queue {q} offset {off}: consumed as {before}, later as {seq}"));
            }
            next = Some(next.map_or(off + 1, |n| n.max(off + 1)));
        }
    }
    (bad, redelivered)
}

async fn run(fault: Fault) {
    run_with(fault, false, env_or("SPATE_CHAOS_TRIALS", 3)).await
}

/// A Normal user made on the first master only, with Pub on the topic.
const ALICE: (&str, &str) = ("alice", "alice-secret");

/// Creates [`ALICE`] on the master and the name server, and waits until
/// every slave has copied her.
async fn create_alice(c: &Cluster) {
    use spate_remoting::auth_admin;
    let root = chaos_client();
    let user: spate_auth::User =
        serde_json::from_value(serde_json::json!({"username": ALICE.0, "password": ALICE.1})).unwrap();
    let acl: spate_auth::Acl = serde_json::from_value(serde_json::json!({
        "subject": format!("User:{}", ALICE.0),
        "policies": [{"entries": [{"resource": format!("Topic:{TOPIC}"), "actions": ["Pub"]}]}]
    }))
    .unwrap();
    for addr in [c.master_addr().await, c.ns.addr()] {
        for req in [auth_admin::create_user_request(&user), auth_admin::put_acl_request(&acl, true)] {
            let r = call(&root, &addr, req).await;
            assert_eq!(r.code, response::SUCCESS, "{addr}: {:?}", r.remark);
        }
    }
    // Slaves copy every slaveSyncMetadataInterval (3 s) while they follow;
    // a slave that lost its ZooKeeper session on a busy machine resumes later.
    let deadline = Instant::now() + Duration::from_secs(45);
    for b in c.brokers.values() {
        loop {
            let get = RemotingCommand::request(spate_remoting::access::code::AUTH_GET_ACL)
                .with("subject", format!("User:{}", ALICE.0));
            if call(&root, &b.addr(), get).await.code == response::SUCCESS {
                break;
            }
            assert!(Instant::now() < deadline, "broker {} never copied the master's users", b.addr());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn run_with(fault: Fault, auth: bool, trials: usize) {
    let _serial = SERIAL.lock().await;
    AUTH.store(auth, Ordering::SeqCst);
    let rate: u64 = env_or("SPATE_CHAOS_RATE", 200);
    let mut c = Cluster::start().await;
    let first_master = c.master_id().await;
    if auth {
        create_alice(&c).await;
    }
    let ns = c.ns.addr();
    let (live_consumer, seen) = consumer(&ns, "chaos-live", "chaos-c").await;
    let pops = PopReader::start(&ns).await;
    let load = Load::start(&ns, rate).await;
    let mut m = Measured::default();
    for _ in 0..trials {
        trial(&mut c, &load, fault, &mut m).await;
    }
    c.wait_full_sync(Duration::from_secs(30)).await;
    let ledger = load.finish().await;
    let acked: BTreeSet<u64> = ledger.acks.iter().map(|a| a.seq).collect();
    assert!(acked.len() > trials * 100, "too little traffic: {} acknowledged", acked.len());

    // 1. The live consumer got every acknowledged message, in queue order.
    wait_consumed(&seen, &acked, Duration::from_secs(60)).await;
    live_consumer.shutdown().await;
    let (lost, duplicates, order, redelivered) = {
        let s = seen.lock();
        let lost: Vec<u64> = acked.iter().filter(|q| !s.count.contains_key(q)).copied().collect();
        let duplicates: u64 = s.count.values().map(|n| u64::from(n.saturating_sub(1))).sum();
        let (order, redelivered) = check_order(&s);
        (lost, duplicates, order, redelivered)
    };
    assert!(
        lost.is_empty(),
        "{fault:?}: {} acknowledged messages never consumed: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    assert!(order.is_empty(), "{fault:?}: queue order broken: {order:?}");

    // 1b. The pop group acked every acknowledged message; none was handed
    //     out after its ack was answered; the ones left un-acked came back.
    pops.wait_acked(&acked, Duration::from_secs(60)).await;
    let pop_log = pops.finish().await;
    // 2. A fresh consumer reads the final log from the start: each
    //    acknowledged message sits at the queue offset it was acknowledged with.
    let (check_consumer, stored) = consumer(&ns, "chaos-check", "chaos-k").await;
    wait_consumed(&stored, &acked, Duration::from_secs(60)).await;
    check_consumer.shutdown().await;
    let at: HashMap<(i32, i64), u64> = {
        let s = stored.lock();
        s.by_queue.iter().flat_map(|(q, v)| v.iter().map(move |(off, seq)| ((*q, *off), *seq))).collect()
    };
    let misplaced: Vec<&Ack> =
        ledger.acks.iter().filter(|a| at.get(&(a.queue, a.queue_offset)) != Some(&a.seq)).collect();
    assert!(
        misplaced.is_empty(),
        "{fault:?}: acknowledged messages not where they were acknowledged: {:?}",
        &misplaced[..misplaced.len().min(5)]
    );
    let stored_twice: u64 = stored.lock().count.values().map(|n| u64::from(n.saturating_sub(1))).sum();
    // The pop group's check (1. above), now that the final log tells which
    // sequence numbers were stored twice.
    let twice: HashSet<u64> = stored.lock().count.iter().filter(|(_, n)| **n > 1).map(|(s, _)| *s).collect();
    let (never_acked, after_ack, came_back) = check_pops(&pop_log, &acked, &twice);
    assert!(
        never_acked.is_empty(),
        "{fault:?}: {} acknowledged messages never acked by the pop group: {:?}",
        never_acked.len(),
        never_acked
            .iter()
            .take(20)
            .map(|s| {
                let a = ledger.acks.iter().find(|a| a.seq == *s).map(|a| (a.queue, a.queue_offset));
                (s, a, pop_log.deliveries.get(s).map(|d| d.iter().map(|(_, n, _)| *n).collect::<Vec<_>>()))
            })
            .collect::<Vec<_>>()
    );
    assert!(after_ack.is_empty(), "{fault:?}: pops after acks: {:?}", &after_ack[..after_ack.len().min(10)]);
    let held_back = acked.iter().filter(|s| *s % 10 == 0).count();
    assert_eq!(came_back, held_back, "{fault:?}: messages left un-acked that came back");
    let pop_redeliveries: usize =
        pop_log.deliveries.iter().filter(|(s, _)| *s % 10 != 0).map(|(_, d)| d.len().saturating_sub(1)).sum();

    // Everything the live consumer read -- acknowledged or not -- is in the
    // final log where it read it: nobody consumed a message later cut.
    let phantom: Vec<String> = seen
        .lock()
        .by_queue
        .iter()
        .flat_map(|(q, v)| v.iter().map(move |(off, seq)| (*q, *off, *seq)))
        .filter(|(q, off, seq)| at.get(&(*q, *off)) != Some(seq))
        .map(|(q, off, seq)| format!("queue {q} offset {off}: consumed {seq}"))
        .collect();
    assert!(
        phantom.is_empty(),
        "{fault:?}: consumed messages not in the final log: {:?}",
        &phantom[..phantom.len().min(5)]
    );

    // 3. One acknowledging broker per epoch of the final log.
    let final_master = c.master_addr().await;
    let epochs = epochs(&final_master).await;
    let mut ackers: BTreeMap<u32, BTreeSet<u16>> = BTreeMap::new();
    for a in &ledger.acks {
        let epoch = epochs.iter().rev().find(|(_, start)| *start <= a.commit_offset).map_or(0, |(e, _)| *e);
        ackers.entry(epoch).or_default().insert(a.store_port);
    }
    for (epoch, ports) in &ackers {
        assert_eq!(ports.len(), 1, "{fault:?}: brokers {ports:?} all acknowledged writes in epoch {epoch}");
    }
    let masters = ackers.len();
    if auth {
        // The user made on the first master signs in on the promoted one.
        assert_ne!(c.master_id().await, first_master, "{fault:?}: the first master leads again; nothing was shown");
        let mut cfg = spate_remoting::ClientConfig::default();
        cfg.connection.credentials = Some(spate_remoting::Credentials::new(ALICE.0, ALICE.1));
        let alice = spate_remoting::RemotingClient::new(cfg, None);
        let r = call(&alice, &final_master, send_req(TOPIC, 0, b"alice after failover".to_vec())).await;
        assert_eq!(r.code, response::SUCCESS, "alice on the promoted master: {:?}", r.remark);
        let anonymous = call(&raw_client(), &final_master, send_req(TOPIC, 0, b"anonymous".to_vec())).await;
        assert_eq!(anonymous.code, response::NO_PERMISSION, "anonymous send on the promoted master");
    }

    // 4. The controller exported the group's availability.
    let metrics: String = c.controllers.iter().map(Controller::metrics).collect();
    assert!(metrics.contains("spate_controller_leading 1"), "no controller reports leading:\n{metrics}");
    let failures: f64 = metrics
        .lines()
        .find(|l| l.starts_with("spate_ha_group_failures_total{group=\"broker-a\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .expect("the group's failures in /metrics");
    if matches!(fault, Fault::KillMaster | Fault::HangMaster | Fault::CutMaster) {
        assert!(failures >= trials as f64, "{fault:?}: {failures} outages recorded for {trials} master faults");
    }
    if fault == Fault::KillController {
        let failed: usize = m.failed.iter().sum();
        assert_eq!(failed, 0, "{fault:?}: sends failed while a controller died");
        let worst = m.outage_ms.iter().copied().fold(0.0, f64::max);
        assert!(worst < 1000.0, "{fault:?}: traffic stalled {worst} ms while a controller died");
    }

    println!(
        "{{\"fault\":\"{fault:?}\",\"trials\":{trials},\"rate\":{rate},\"zk_session_ms\":{},\
         \"outage_ms_p50\":{:.0},\"outage_ms_max\":{:.0},\"takeover_ms_p50\":{:.0},\"takeover_ms_max\":{:.0},\
         \"acked\":{},\"failed_sends\":{},\"skipped_ticks\":{},\"lost\":0,\"consumer_duplicates\":{duplicates},\
         \"consumer_redeliveries\":{redelivered},\"stored_twice\":{stored_twice},\"epochs_with_acks\":{masters},\
         \"outages_recorded\":{failures},\"pop_redeliveries\":{pop_redeliveries},\"pop_failed_acks\":{},\"pop_settled\":{},\
         \"pop_failed_receives\":{}}}",
        c.session_ms,
        percentile(&m.outage_ms, 0.5),
        percentile(&m.outage_ms, 1.0),
        percentile(&m.takeover_ms, 0.5),
        percentile(&m.takeover_ms, 1.0),
        acked.len(),
        ledger.failures.len(),
        ledger.skipped,
        pop_log.failed_acks,
        pop_log.settled.len(),
        pop_log.failed_receives,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_master() {
    run(Fault::KillMaster).await;
}

/// The kill -9 trial with authentication and authorization on: brokers
/// replicate and fail over with their inner credentials, the controller
/// signs its unregistrations, and a user made on the first master works
/// on the promoted slave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_master_with_authentication() {
    run_with(Fault::KillMaster, true, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_hang_the_master() {
    run(Fault::HangMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_cut_the_master_off_from_zookeeper() {
    run(Fault::CutMaster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_the_leading_controller() {
    run(Fault::KillController).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_kill_a_slave() {
    run(Fault::KillSlave).await;
}

#[test]
fn offset_message_ids_decode() {
    // 127.0.0.1:10911, commit-log offset 0x1234.
    assert_eq!(decode_offset_msg_id("7F00000100002A9F0000000000001234"), Some((10911, 0x1234)));
    assert_eq!(decode_offset_msg_id("short"), None);
}

#[test]
fn queue_order_check_tells_redelivery_from_disorder() {
    let mut s = Seen::default();
    s.by_queue.insert(0, vec![(0, 0), (1, 1), (2, 2), (1, 1), (2, 2), (3, 3)]);
    assert_eq!(check_order(&s), (vec![], 2));
    s.by_queue.insert(1, vec![(0, 0), (2, 2), (1, 1)]);
    let (bad, _) = check_order(&s);
    assert_eq!(bad.len(), 1, "{bad:?}");
    // The same offset delivered again with another message: a cut message was read.
    s.by_queue.remove(&1);
    s.by_queue.insert(2, vec![(0, 10), (1, 11), (1, 12), (2, 13)]);
    let (bad, redelivered) = check_order(&s);
    assert_eq!((bad.len(), redelivered), (1, 3), "{bad:?}");
}

#[test]
fn pop_check_finds_lost_and_after_ack_deliveries() {
    let t0 = Instant::now();
    let t = |ms| t0 + Duration::from_millis(ms);
    let mut log = PopLog::default();
    // 10: left un-acked, back with attempt 2, acked; 11: acked at once.
    log.deliveries.insert(10, vec![(t(0), 1, (0, 5)), (t(50), 2, (0, 5))]);
    log.deliveries.insert(11, vec![(t(0), 1, (1, 7))]);
    log.acked.insert(10, (t(60), (0, 5)));
    log.acked.insert(11, (t(10), (1, 7)));
    let acked: BTreeSet<u64> = [10, 11].into();
    let none = HashSet::new();
    assert_eq!(check_pops(&log, &acked, &none), (vec![], vec![], 1));
    // 11 handed out again by a receive sent after its ack; 12 never acked.
    log.deliveries.get_mut(&11).unwrap().push((t(20), 2, (1, 7)));
    let acked: BTreeSet<u64> = [10, 11, 12].into();
    let (never, after, back) = check_pops(&log, &acked, &none);
    assert_eq!((never, after.len(), back), (vec![12], 1, 1));
    // 13 stored twice (queue 2 offsets 3 and 4): its second copy comes
    // after the first copy's ack, and is no violation; the acked copy again is.
    log.deliveries.get_mut(&11).unwrap().pop();
    log.deliveries.insert(13, vec![(t(0), 1, (2, 3)), (t(30), 1, (2, 4))]);
    log.acked.insert(13, (t(10), (2, 3)));
    let acked: BTreeSet<u64> = [10, 11, 13].into();
    let twice: HashSet<u64> = [13].into();
    assert_eq!(check_pops(&log, &acked, &twice), (vec![], vec![], 1));
    assert_eq!(check_pops(&log, &acked, &none).1.len(), 1, "not stored twice: a violation");
    log.deliveries.get_mut(&13).unwrap().push((t(40), 2, (2, 3)));
    assert_eq!(check_pops(&log, &acked, &twice).1.len(), 1, "the acked copy again");
}
