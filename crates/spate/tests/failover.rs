//! Automatic failover with real processes: ZooKeeper, a name server, a
//! controller and three brokers under it (`zkAddr`). The controller picks a
//! master; both slaves join the in-sync set; the master is killed with
//! SIGKILL (or hung with SIGSTOP); an in-sync slave takes over in a new
//! epoch with every acknowledged message; a woken hung master acknowledges
//! nothing; the old master returns as a slave and ends up byte-identical to
//! the new master. Also: delayed, timer and transactional messages, orderly
//! consumption and consumer retries across a failover; pops (RocketMQ 5)
//! continued by the new master.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, raw_client, same_commit_log, send_req, BrokerProc, Proc, ZooKeeper};
use spate_controller::fsm::{GroupState, ReplState};
use spate_controller::zk::Zk;
use spate_remoting::protocol::{json, ClusterInfo};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One cluster at a time: two at once starve each other's ZooKeeper
/// sessions on a small machine (a master then fences itself, legitimately).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends until the broker acknowledges (a master may fence itself for a
/// moment when its ZooKeeper connection hiccups; a refused send is not
/// acknowledged, so it is simply sent again); the queue offset it got.
async fn send_acked(c: &RemotingClient, addr: &str, topic: &str, q: i32, body: &[u8]) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(c, addr, send_req(topic, q, body.to_vec())).await;
        if r.code == response::SUCCESS {
            return r.field("queueOffset").unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "{addr} never acknowledged: {:?}", r.remark);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The address the name server lists as broker-a's master (id 0).
async fn master_addr(c: &RemotingClient, ns: &str) -> Option<String> {
    let r =
        c.invoke(ns, RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO), Duration::from_secs(2)).await.ok()?;
    let info: ClusterInfo = json::decode(&r.body, "ClusterInfo").ok()?;
    info.broker_addr_table.get("broker-a")?.broker_addrs.get(&0).cloned()
}

/// Waits (up to 20 s) until the name server names a master other than `old`; its address.
async fn new_master_addr(c: &RemotingClient, ns: &str, old: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(addr) = master_addr(c, ns).await.filter(|a| a != old) {
            return addr;
        }
        assert!(Instant::now() < deadline, "no new master registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// ZooKeeper, a name server, one controller and three brokers of
/// broker-a under it (strict sync), up and in SYNC with all three in the
/// in-sync set, the master registered as broker 0.
struct Cluster {
    zk: ZooKeeper,
    ns: Proc,
    _controller: Controller,
    brokers: BTreeMap<i64, BrokerProc>,
    observer: Zk,
    first: GroupState,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(session_ms: u64) -> Cluster {
        Cluster::start_with(session_ms, 1000).await
    }

    /// With the brokers' `haSyncTimeout` in ms.
    async fn start_with(session_ms: u64, sync_timeout_ms: u64) -> Cluster {
        Cluster::start_conf(session_ms, sync_timeout_ms, &[]).await
    }

    /// With further broker.conf lines for every broker.
    async fn start_conf(session_ms: u64, sync_timeout_ms: u64, extra: &[&str]) -> Cluster {
        let zk = ZooKeeper::start();
        let ns = Proc::namesrv();
        // SPATE_FAILOVER_KEEP: the cluster's logs and stores outlive the run.
        let keep = std::env::var_os("SPATE_FAILOVER_KEEP").is_some();
        let dir = tempfile::Builder::new().disable_cleanup(keep).tempdir().unwrap();
        if keep {
            eprintln!("failover cluster in {}", dir.path().display());
        }
        let controller_log = dir.path().join("controller.log");
        let controller = Controller(
            Command::new(env!("CARGO_BIN_EXE_spate"))
                .args(["controller", "--zk", &zk.addr(), "--session-timeout-ms", "1000", "--scan-interval-ms", "50"])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&controller_log).unwrap())
                .spawn()
                .unwrap(),
        );
        let lines = |id: i64| -> Vec<String> {
            vec![
                "brokerName=broker-a".into(),
                format!("brokerId={id}"),
                format!("zkAddr={}", zk.addr()),
                format!("zkSessionTimeoutMillis={session_ms}"),
                "haStrictSync=true".into(),
                format!("haSyncTimeout={sync_timeout_ms}"),
            ]
            .into_iter()
            .chain(extra.iter().map(|l| l.to_string()))
            .collect()
        };
        let brokers: BTreeMap<i64, BrokerProc> =
            (1..=3).map(|id| (id, BrokerProc::start(dir.path(), &format!("b{id}"), &ns.addr(), &lines(id)))).collect();
        let observer = Zk::connect(&zk.addr(), Duration::from_secs(5)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let first = loop {
            // (Not there until the first broker creates it.)
            let group = observer.read_group("broker-a").await;
            if let Ok((g, _)) = &group {
                if g.state == ReplState::Sync && g.in_sync.len() == 3 {
                    break g.clone();
                }
            }
            if Instant::now() >= deadline {
                let g = group.map(|(g, _)| g);
                let live = observer.read_live("broker-a").await;
                let mut logs =
                    format!("--- controller:\n{}", std::fs::read_to_string(&controller_log).unwrap_or_default());
                for (id, b) in &brokers {
                    logs.push_str(&format!("--- broker {id}:\n{}", b.log_text()));
                }
                panic!("the group never reached SYNC with 3 members: {g:?}; live {live:?}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let master = brokers[&first.master.unwrap()].addr();
        let c = raw_client();
        let deadline = Instant::now() + Duration::from_secs(15);
        while master_addr(&c, &ns.addr()).await.as_deref() != Some(master.as_str()) {
            assert!(Instant::now() < deadline, "the master never registered as broker 0");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Cluster { zk, ns, _controller: controller, brokers, observer, first, _dir: dir }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_an_in_sync_slave_without_losing_acknowledged_messages() {
    let _serial = SERIAL.lock().await;
    // The brokers' ZooKeeper session timeout bounds how fast a crash is
    // noticed (SPATE_FAILOVER_ZK_SESSION_MS; ZooKeeper here allows >= 400).
    let session_ms: u64 =
        std::env::var("SPATE_FAILOVER_ZK_SESSION_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    // Every field bound: the ones not used here keep their processes alive.
    let Cluster { zk, ns, _controller, mut brokers, observer, first, _dir } = Cluster::start(session_ms).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();

    // Trials: acknowledged sends, then SIGKILL the master; an in-sync slave
    // takes writes again in a new epoch with every acknowledged message; the
    // old master comes back as a slave and matches the new one byte for
    // byte. SPATE_FAILOVER_TRIALS repeats it (scripts/bench-failover.sh).
    let trials: usize = std::env::var("SPATE_FAILOVER_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(1);
    let mut acked: BTreeMap<i32, i64> = BTreeMap::new();
    let mut outages = Vec::new();
    let (mut master_id, mut master) = (old_id, old_addr);
    let mut epoch = first.master_epoch;
    for trial in 0..trials {
        for i in 0..300 {
            let q = i % 4;
            let off = send_acked(&c, &master, "Fail", q, &[b'a'; 200]).await;
            acked.insert(q, acked.get(&q).copied().unwrap_or(-1).max(off));
        }
        // Both slaves in sync again before the fault (the previous old
        // master has rejoined), so the group can lose its master safely.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (g, _) = observer.read_group("broker-a").await.unwrap();
            if g.in_sync.len() == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "trial {trial}: in-sync set never refilled: {g:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        brokers.get_mut(&master_id).unwrap().kill9();
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(20);
        let new_addr = loop {
            if let Some(addr) = master_addr(&c, &ns.addr()).await.filter(|a| *a != master) {
                if let Ok(r) = c.invoke(&addr, send_req("Fail", 0, vec![b'b'; 200]), Duration::from_secs(2)).await {
                    if r.code == response::SUCCESS {
                        let off: i64 = r.field("queueOffset").unwrap().parse().unwrap();
                        acked.insert(0, acked.get(&0).copied().unwrap_or(-1).max(off));
                        break addr;
                    }
                }
            }
            assert!(Instant::now() < deadline, "trial {trial}: no new master took writes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let outage = killed.elapsed();
        outages.push(outage.as_secs_f64() * 1000.0);
        let (g, _) = observer.read_group("broker-a").await.unwrap();
        assert_ne!(g.master, Some(master_id));
        assert!(g.master_epoch > epoch, "trial {trial}: {g:?}");
        assert!(outage < Duration::from_secs(10), "trial {trial}: writes were back after {outage:?}");
        eprintln!("failover trial {trial}: writes back {outage:?} after the kill");

        // Every acknowledged message so far is on the new master.
        for (q, last) in &acked {
            let r = call(
                &c,
                &new_addr,
                RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Fail").with("queueId", *q),
            )
            .await;
            let max: i64 = r.field("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            assert!(max > *last, "trial {trial} queue {q}: new master has {max}, {last} was acknowledged");
        }

        // The old master returns as a slave and catches up byte for byte.
        let new_id = g.master.unwrap();
        brokers.get_mut(&master_id).unwrap().spawn();
        for i in 0..50 {
            let off = send_acked(&c, &new_addr, "Fail", i % 4, &[b'c'; 200]).await;
            acked.insert(i % 4, acked.get(&(i % 4)).copied().unwrap_or(-1).max(off));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match same_commit_log(&brokers[&new_id].commit_log_files(), &brokers[&master_id].commit_log_files()) {
                Ok(()) => break,
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "trial {trial}: old master never matched the new one: {e}\n{}",
                    brokers[&master_id].log_text()
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        (master_id, master, epoch) = (new_id, new_addr, g.master_epoch);
    }
    // The controller recorded each outage, and admin shows the figures.
    let deadline = Instant::now() + Duration::from_secs(10);
    let history = loop {
        let (h, _) = observer.read_history("broker-a").await.unwrap();
        if h.outages.len() >= trials && h.open.is_none() {
            break h;
        }
        assert!(Instant::now() < deadline, "outages recorded: {h:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(history.outages.len(), trials, "{history:?}");
    for (o, measured) in history.outages.iter().zip(&outages) {
        let recorded = (o.end_ms - o.start_ms) as f64;
        // Dated from the master's last liveness update (every 100 ms) to the
        // scan that saw the new master serve: close to what clients saw.
        assert!(
            recorded <= measured + 1000.0 && recorded >= measured / 2.0,
            "recorded {recorded} ms against {measured} ms measured"
        );
        assert!(o.cause.contains("lost"), "{o:?}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "ha", "groups", "--zk", &zk.addr(), "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["groups"][0]["availability"]["failures"], trials as u64);
    assert!(v["groups"][0]["availability"]["availability"].as_f64().unwrap() < 1.0);
    outages.sort_by(|a, b| a.total_cmp(b));
    let p50 = outages[outages.len() / 2];
    let max = outages[outages.len() - 1];
    println!(
        "{{\"trials\":{trials},\"outage_ms_p50\":{p50:.0},\"outage_ms_max\":{max:.0},\"outages_ms\":{outages:?}}}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_master_is_replaced_and_fenced_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let Cluster { zk: _zk, ns: _ns, _controller, brokers, observer, first, _dir } = Cluster::start(800).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();
    for i in 0..100 {
        send_acked(&c, &old_addr, "Fail", i % 4, &[b'a'; 200]).await;
    }

    // The master hangs: its session expires and an in-sync slave takes over.
    brokers[&old_id].pause(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (new_id, new_addr) = loop {
        let (g, _) = observer.read_group("broker-a").await.unwrap();
        if let Some(m) = g.master.filter(|m| *m != old_id) {
            let addr = brokers[&m].addr();
            if let Ok(r) = c.invoke(&addr, send_req("Fail", 0, vec![b'b'; 200]), Duration::from_secs(2)).await {
                if r.code == response::SUCCESS {
                    break (m, addr);
                }
            }
        }
        assert!(Instant::now() < deadline, "no new master while the old one hung");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    // It wakes up: it must not acknowledge anything now (it is fenced, and
    // its slaves follow the new master). Sends race its wake-up on purpose.
    brokers[&old_id].pause(false);
    for i in 0..20 {
        let r = call(&c, &old_addr, send_req("Fail", i % 4, vec![b'z'; 200])).await;
        if r.code == response::SUCCESS {
            let (g, _) = observer.read_group("broker-a").await.unwrap();
            let logs: Vec<String> =
                brokers.iter().map(|(id, b)| format!("--- broker {id}:\n{}", b.log_text())).collect();
            panic!(
                "the old master {old_id} acknowledged send {i} after the failover; group {g:?}\n{}",
                logs.join("\n")
            );
        }
    }
    // And it comes back as a slave of the new master, byte for byte.
    for i in 0..50 {
        send_acked(&c, &new_addr, "Fail", i % 4, &[b'c'; 200]).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match same_commit_log(&brokers[&new_id].commit_log_files(), &brokers[&old_id].commit_log_files()) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the woken master never matched the new one: {e}\n{}",
                brokers[&old_id].log_text()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A consumer never reads a write the in-sync set does not hold yet (the
/// confirm offset): with both slaves hung, a send is stored on the master
/// but not acknowledged, and a pull does not return it; once the slaves
/// hold it, the pull does (a held pull is woken by the acknowledgement).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_read_only_what_the_in_sync_set_holds() {
    let _serial = SERIAL.lock().await;
    // Sessions long enough that the hung slaves stay in the in-sync set.
    let Cluster { zk: _zk, ns: _ns, _controller, brokers, observer: _o, first, _dir } = Cluster::start(4000).await;
    let c = raw_client();
    let master = brokers[&first.master.unwrap()].addr();
    let r = call(&c, &master, send_req("Confirm", 0, b"held by all".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    // Right after the cluster starts a slave may still be joining the
    // in-sync set: a send acknowledged before it joined is served once the
    // joining slave holds it too (it is only ever hidden, never lost).
    let deadline = Instant::now() + Duration::from_secs(5);
    let r = loop {
        let r = call(&c, &master, common::pull_req("Confirm", 0, 0, 0, "*")).await;
        if r.code == response::SUCCESS || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.code, response::SUCCESS, "the acknowledged message is readable: {:?}", r.remark);
    assert_eq!(r.field("nextBeginOffset"), Some("1"));

    let slaves: Vec<&BrokerProc> =
        brokers.iter().filter(|(id, _)| Some(**id) != first.master).map(|(_, b)| b).collect();
    for s in &slaves {
        s.pause(true);
    }
    let r = call(&c, &master, send_req("Confirm", 0, b"on the master only".to_vec())).await;
    assert_ne!(r.code, response::SUCCESS, "no slave holds it: it must not be acknowledged");
    let r = call(&c, &master, common::pull_req("Confirm", 0, 1, 0, "*")).await;
    assert_eq!(r.code, response::PULL_NOT_FOUND, "a write the in-sync set lacks was served: {:?}", r.remark);
    assert_eq!(r.field("nextBeginOffset"), Some("1"));
    // A tag filter that matches nothing does not carry the offset past it,
    // and a consumer starting at the end starts before it.
    let r = call(&c, &master, common::pull_req("Confirm", 0, 1, 0, "NoSuchTag")).await;
    assert_eq!(r.field("nextBeginOffset"), Some("1"), "{:?} {:?}", r.code, r.remark);
    let req = RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Confirm").with("queueId", 0);
    assert_eq!(call(&c, &master, req).await.field("offset"), Some("1"));

    // A held pull is answered once the slaves wake and hold the write.
    let held = {
        let (c, master) = (raw_client(), master.clone());
        tokio::spawn(async move { call(&c, &master, common::pull_req("Confirm", 0, 1, 5000, "*")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for s in &slaves {
        s.pause(false);
    }
    let r = held.await.unwrap();
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(r.field("nextBeginOffset"), Some("2"));
}

/// A master fenced while sends wait for its slaves acknowledges none of
/// them, even when a slave outside the group's in-sync set holds them: one
/// in-sync slave hangs (the sends wait for it), ZooKeeper dies (the master
/// fences itself at once), and the other slave's acknowledgements must not
/// release the waiting sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_fenced_while_sends_wait_acknowledges_none() {
    let _serial = SERIAL.lock().await;
    let Cluster { zk, ns: _ns, _controller, brokers, observer: _o, first, _dir } =
        Cluster::start_with(1000, 8000).await;
    let c = raw_client();
    let master = brokers[&first.master.unwrap()].addr();
    let r = call(&c, &master, send_req("Fence", 0, b"before".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let hung = brokers.iter().find(|(id, _)| Some(**id) != first.master).map(|(_, b)| b).unwrap();
    hung.pause(true);
    let waiting: Vec<_> = (0..5)
        .map(|i| {
            let (c, master) = (raw_client(), master.clone());
            tokio::spawn(async move { call(&c, &master, send_req("Fence", 0, vec![b'w'; 100 + i])).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(zk);
    for (i, w) in waiting.into_iter().enumerate() {
        let r = w.await.unwrap();
        assert_ne!(r.code, response::SUCCESS, "send {i} was acknowledged by a fenced master");
    }
    hung.pause(false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_timer_and_transactional_messages_outlive_a_failover() {
    let _serial = SERIAL.lock().await;
    let Cluster { zk: _zk, ns, _controller, mut brokers, observer: _observer, first, _dir } =
        Cluster::start_conf(1000, 1000, &["messageDelayLevel=3s"]).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();
    // Acknowledged (so on the in-sync slaves too), none due before the kill.
    let mut sent_ms: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..100 {
        // Half delay level 1, half timer messages 3 s out.
        let (body, prop) = if i < 50 {
            (format!("later-{i}"), ("DELAY", "1"))
        } else {
            (format!("timer-{i}"), ("TIMER_DELAY_MS", "3000"))
        };
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let req = common::send_req_with("Later", 0, body.clone().into_bytes(), &[prop]);
            if call(&c, &old_addr, req).await.code == response::SUCCESS {
                break;
            }
            assert!(Instant::now() < deadline, "the master never acknowledged {body}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sent_ms.insert(body, now_ms);
    }
    // And a transactional half message, still undecided at the kill.
    let half = loop {
        let props = [("TRAN_MSG", "true"), ("PGROUP", "pg"), ("KEYS", "tx-key")];
        let req = common::send_req_with("Later", 0, b"tx-commit".to_vec(), &props).with("sysFlag", 4);
        let r = call(&c, &old_addr, req).await;
        if r.code == response::SUCCESS {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    brokers.get_mut(&old_id).unwrap().kill9();
    let new_addr = new_master_addr(&c, &ns.addr(), &old_addr).await;
    // The half is in the new master's log: the producer commits it there.
    let (_, commit_log_offset) =
        spate_common::message::parse_offset_msg_id(half.field("msgId").unwrap()).expect("offset message id");
    let end = RemotingCommand::request(request::END_TRANSACTION)
        .with("producerGroup", "pg")
        .with("tranStateTableOffset", half.field("queueOffset").unwrap())
        .with("commitLogOffset", commit_log_offset)
        .with("commitOrRollback", 8)
        .with("fromTransactionCheck", false);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(&c, &new_addr, end.clone()).await;
        if r.code == response::SUCCESS {
            break;
        }
        assert!(Instant::now() < deadline, "commit on the new master refused: {:?}", r.remark);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sent_ms.insert("tx-commit".into(), 0);
    // The new master delivers every one, none before it was due.
    let mut delivered: BTreeMap<String, i64> = BTreeMap::new();
    let mut next = 0i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered.len() < sent_ms.len() {
        assert!(Instant::now() < deadline, "delivered {} of {}", delivered.len(), sent_ms.len());
        let r = call(&c, &new_addr, common::pull_req("Later", 0, next, 0, "*")).await;
        if r.code == response::SUCCESS {
            let mut rest = &r.body[..];
            while !rest.is_empty() {
                let rec = spate_common::message::decode_record(rest, true).unwrap();
                delivered.insert(String::from_utf8_lossy(rec.body).into_owned(), rec.store_timestamp);
                rest = &rest[rec.total_size..];
            }
            next = r.field("nextBeginOffset").and_then(|v| v.parse().ok()).unwrap_or(next);
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The committed message is found by its key on the new master.
    let query = RemotingCommand::request(request::QUERY_MESSAGE)
        .with("topic", "Later")
        .with("key", "tx-key")
        .with("maxNum", 32)
        .with("beginTimestamp", 0)
        .with("endTimestamp", i64::MAX);
    let r = call(&c, &new_addr, query).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let found = spate_common::message::decode_record(&r.body, true).unwrap();
    assert_eq!((found.topic, found.body), ("Later", &b"tx-commit"[..]));
    for (body, stored) in delivered.iter().filter(|(b, _)| *b != "tx-commit") {
        let sent = sent_ms.get(body).unwrap_or_else(|| panic!("{body} was never sent"));
        assert!(*stored >= sent + 3000, "{body} delivered {} ms after it was sent", stored - sent);
    }
}

/// Orderly consumption and consumer retries, with Spate's client, carry on
/// when the controller replaces a killed master: per-key order holds (a
/// replay from the last committed offset is allowed, a gap is not), and a
/// message sent back for retry before the kill comes back after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_consumers_and_retries_carry_on_across_a_failover() {
    use spate_client::{
        queue_by_hash, ClientConfig, ConsumeFromWhere, ConsumeOrderlyStatus, ConsumeStatus, Message, MessageListener,
        Producer, ProducerOptions, PushConsumer, PushConsumerOptions,
    };
    use std::sync::{Arc, Mutex};
    let _serial = SERIAL.lock().await;
    // A first retry waits level 3: 3 s, long enough to kill the master first.
    let levels = "messageDelayLevel=200ms 400ms 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s 3s";
    let Cluster { zk: _zk, ns, _controller, mut brokers, observer: _observer, first, _dir } =
        Cluster::start_conf(1000, 1000, &[levels]).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();
    for (topic, queues) in [("OrdFail", 4), ("RetryFail", 1)] {
        let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
            .with("topic", topic)
            .with("readQueueNums", queues)
            .with("writeQueueNums", queues)
            .with("perm", 6);
        assert_eq!(call(&c, &old_addr, req).await.code, response::SUCCESS);
    }
    let client = |name: &str| {
        let mut cfg = ClientConfig::new(&ns.addr()).with_instance_name(name);
        cfg.heartbeat_broker_interval = Duration::from_millis(500);
        cfg.poll_name_server_interval = Duration::from_millis(500);
        cfg
    };
    let options = |group: &str| {
        let mut o = PushConsumerOptions::new(group);
        o.consume_from_where = ConsumeFromWhere::FirstOffset;
        o.rebalance_interval = Duration::from_millis(500);
        o.pull_time_delay_when_broker_unreachable = Duration::from_millis(50);
        o.offset_store_dir = std::env::temp_dir().join(format!("spate-fo-offsets-{group}-{}", std::process::id()));
        o
    };
    const KEYS: usize = 8;
    const PER_KEY: usize = 60;
    let p = Producer::start(client("p"), ProducerOptions::new("fo_pg")).await.unwrap();
    let send_ordered = |p: Producer, from: usize, to: usize| async move {
        for seq in from..to {
            for k in 0..KEYS {
                let msg = Message::new("OrdFail", format!("{k}:{seq}"));
                // Retried through the failover: an unacknowledged send is sent again.
                let deadline = Instant::now() + Duration::from_secs(20);
                while p
                    .send_with_selector(msg.clone(), |qs, _, key: &usize| queue_by_hash(qs, *key as i64), k)
                    .await
                    .is_err()
                {
                    assert!(Instant::now() < deadline, "send {k}:{seq} never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    };
    send_ordered(p.clone(), 0, PER_KEY / 2).await;
    p.send(Message::new("RetryFail", "again")).await.unwrap();

    let log: Arc<Mutex<BTreeMap<usize, Vec<usize>>>> = Arc::default();
    let l2 = log.clone();
    let oc = PushConsumer::new(client("oc"), options("fo_orderly")).unwrap();
    oc.subscribe("OrdFail", "*").unwrap();
    oc.start(MessageListener::orderly(move |msgs, _| {
        let mut log = l2.lock().unwrap();
        for m in msgs {
            let b = String::from_utf8_lossy(&m.body).into_owned();
            let (k, seq) = b.split_once(':').map(|(k, s)| (k.parse().unwrap(), s.parse().unwrap())).unwrap();
            log.entry(k).or_default().push(seq);
        }
        ConsumeOrderlyStatus::Success
    }))
    .await
    .unwrap();
    // (reconsume times, when) of each delivery of the retried message.
    let retries: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
    let r2 = retries.clone();
    let rc = PushConsumer::new(client("rc"), options("fo_retry")).unwrap();
    rc.subscribe("RetryFail", "*").unwrap();
    rc.start(MessageListener::concurrently(move |msgs, _| {
        let mut r = r2.lock().unwrap();
        r.extend(msgs.iter().map(|m| (m.reconsume_times, Instant::now())));
        // The first delivery fails: back through the retry topic.
        if msgs.iter().any(|m| m.reconsume_times == 0) {
            ConsumeStatus::ReconsumeLater
        } else {
            ConsumeStatus::ConsumeSuccess
        }
    }))
    .await
    .unwrap();
    let consumed =
        |log: &Arc<Mutex<BTreeMap<usize, Vec<usize>>>>| log.lock().unwrap().values().map(Vec::len).sum::<usize>();
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumed(&log) < KEYS * PER_KEY / 4 || retries.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "consumption never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The master dies while the retry waits in the schedule topic (level 3:
    // queue 2), acknowledged there and so on the in-sync slaves too.
    let waiting =
        RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "SCHEDULE_TOPIC_XXXX").with("queueId", 2);
    let deadline = Instant::now() + Duration::from_secs(10);
    while call(&c, &old_addr, waiting.clone()).await.field("offset").and_then(|v| v.parse::<i64>().ok()).unwrap_or(0)
        < 1
    {
        assert!(Instant::now() < deadline, "the retry never reached the schedule topic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    brokers.get_mut(&old_id).unwrap().kill9();
    let killed = Instant::now();
    new_master_addr(&c, &ns.addr(), &old_addr).await;
    send_ordered(p.clone(), PER_KEY / 2, PER_KEY).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = {
            let log = log.lock().unwrap();
            (0..KEYS).all(|k| log.get(&k).is_some_and(|v| v.contains(&(PER_KEY - 1))))
        };
        if done && retries.lock().unwrap().iter().any(|(t, _)| *t >= 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the failover: ordered {:?}, retries {:?}",
            consumed(&log),
            retries.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    oc.shutdown().await;
    rc.shutdown().await;
    p.shutdown().await;
    let retried = retries.lock().unwrap().clone();
    assert!(
        retried.iter().filter(|(t, _)| *t >= 1).all(|(_, at)| *at > killed),
        "the retry came back only after the kill (from the new master): {retried:?}"
    );
    for (k, seqs) in log.lock().unwrap().iter() {
        for w in seqs.windows(2) {
            assert!(w[1] == w[0] + 1 || w[1] <= w[0], "key {k}: {} after {}", w[1], w[0]);
        }
        let mut all = seqs.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..PER_KEY).collect::<Vec<_>>(), "key {k}: every message");
    }
}

/// A pop request (RocketMQ 5's POP_MESSAGE) of queue 0 of `topic` for
/// group `g`; the (queue offset, reconsume times, receipt handle) of each
/// message, empty when none or refused (a master fencing itself a moment).
async fn pop_some(c: &RemotingClient, addr: &str, topic: &str, max: i32, invisible_ms: i64) -> Vec<(i64, i32, String)> {
    let req = RemotingCommand::request(request::POP_MESSAGE)
        .with("consumerGroup", "popfg")
        .with("topic", topic)
        .with("queueId", 0)
        .with("maxMsgNums", max)
        .with("invisibleTime", invisible_ms)
        .with("pollTime", 0)
        .with("bornTime", 0)
        .with("initMode", 0);
    let Ok(r) = c.invoke(addr, req, Duration::from_secs(5)).await else { return Vec::new() };
    if r.code != response::SUCCESS {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut rest = &r.body[..];
    while !rest.is_empty() {
        let rec = spate_common::message::decode_record(rest, false).unwrap();
        out.push((rec.queue_offset, rec.reconsume_times, rec.property("POP_CK").unwrap().to_string()));
        rest = &rest[rec.total_size..];
    }
    out
}

async fn pop_ack(c: &RemotingClient, addr: &str, topic: &str, m: &(i64, i32, String)) -> i32 {
    let req = RemotingCommand::request(request::ACK_MESSAGE)
        .with("consumerGroup", "popfg")
        .with("topic", topic)
        .with("queueId", 0)
        .with("extraInfo", m.2.clone())
        .with("offset", m.0);
    c.invoke(addr, req, Duration::from_secs(5)).await.map_or(-1, |r| r.code)
}

/// Pop state rides the commit log: after the controller replaces a killed
/// master, the new one continues the same pops. What was acked is never
/// handed out again, what was in flight comes back when its invisible time
/// passes, with its attempt raised, and handles from the old master still
/// ack there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pops_carry_on_across_a_failover() {
    let _serial = SERIAL.lock().await;
    let Cluster { zk: _zk, ns, _controller, mut brokers, observer: _observer, first, _dir } =
        Cluster::start(1000).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();
    for i in 0..20 {
        send_acked(&c, &old_addr, "PopFail", 0, format!("m{i}").as_bytes()).await;
    }
    // Pops and acks answered by the master (so on its in-sync slaves too).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut popped = Vec::new();
    while popped.len() < 10 {
        popped.extend(pop_some(&c, &old_addr, "PopFail", 10 - popped.len() as i32, 4000).await);
        assert!(Instant::now() < deadline, "the master never answered the pops");
    }
    let mut acked = Vec::new();
    for m in &popped[..5] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pop_ack(&c, &old_addr, "PopFail", m).await != response::SUCCESS {
            assert!(Instant::now() < deadline, "ack of {} never answered", m.0);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked.push(m.0);
    }
    brokers.get_mut(&old_id).unwrap().kill9();
    let new_addr = new_master_addr(&c, &ns.addr(), &old_addr).await;
    // The old master's handles work on the new one: ack one more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let code = pop_ack(&c, &new_addr, "PopFail", &popped[5]).await;
        if code == response::SUCCESS {
            break;
        }
        assert_ne!(code, response::NO_MESSAGE, "the new master does not know the pop of {}", popped[5].0);
        assert!(Instant::now() < deadline, "the new master never took the ack: {code}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    acked.push(popped[5].0);
    // Nothing acked is handed out again; the rest of the in-flight ones come
    // back once their 4 s pass (attempt 2), and the 10 never popped once.
    let mut seen: BTreeMap<i64, i32> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 14 {
        for m in pop_some(&c, &new_addr, "PopFail", 32, 60_000).await {
            assert!(!acked.contains(&m.0), "acked message {} handed out again", m.0);
            assert!(seen.insert(m.0, m.1).is_none(), "{} handed out twice", m.0);
        }
        assert!(Instant::now() < deadline, "only {:?} came back", seen.keys().collect::<Vec<_>>());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for m in &popped[6..] {
        assert_eq!(seen.get(&m.0), Some(&1), "in flight at the kill: {} comes back as a redelivery", m.0);
    }
    for o in 10..20 {
        assert_eq!(seen.get(&o), Some(&0), "never popped before: {o}");
    }
}

/// RocketMQ 5's clients (gRPC) follow a failover: asked through a broker
/// that stays up, QueryRoute names the master, then, once it is killed,
/// the new one; the client's Telemetry session is set up again there and
/// sends go on; every send acknowledged before or after is read back from
/// the new master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_follow_a_failover_without_losing_acknowledged_messages() {
    use common::grpc::{code, connect, drain, message, open_telemetry, producer_settings, resource, send};
    use spate_grpc::pb::{self, Code};
    let _serial = SERIAL.lock().await;
    let Cluster { zk: _zk, ns, _controller, mut brokers, observer: _observer, first, _dir } =
        Cluster::start(1000).await;
    let c = raw_client();
    let old_id = first.master.unwrap();
    let old_addr = brokers[&old_id].addr();
    let access_id = *brokers.keys().find(|id| **id != old_id).unwrap();
    let access = brokers[&access_id].addr();
    let topic = "GrpcFail";
    // The topic exists on the master (and, copied, on the slaves).
    send_acked(&c, &old_addr, topic, 0, b"remoting-first").await;
    let mut acked: Vec<Vec<u8>> = vec![b"remoting-first".to_vec()];

    let route_master = |addr: String| async move {
        let mut a = connect(&addr).await;
        let r =
            a.query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: None }).await.ok()?.into_inner();
        let ep = r.message_queues.first()?.broker.as_ref()?.endpoints.as_ref()?.addresses.first()?.clone();
        Some(format!("{}:{}", ep.host, ep.port))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let endpoint = loop {
        match route_master(access.clone()).await {
            Some(e) if e == old_addr => break e,
            _ => assert!(Instant::now() < deadline, "the route never named the master"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut g = connect(&endpoint).await;
    let (answer, _session) = open_telemetry(&mut g, producer_settings(&[topic]), "test").await;
    assert_eq!(code(&answer.status), Code::Ok as i32);
    for i in 0..20 {
        let body = format!("grpc-before-{i}").into_bytes();
        let r = send(&mut g, message(topic, &format!("01B{i:04}"), &body, &[])).await;
        if code(&r.status) == Code::Ok as i32 {
            acked.push(body);
        }
    }
    assert!(acked.len() > 10, "the master acknowledged gRPC sends");

    brokers.get_mut(&old_id).unwrap().kill9();
    let new_addr = new_master_addr(&c, &ns.addr(), &old_addr).await;
    // The route through the surviving access point names the new master.
    let deadline = Instant::now() + Duration::from_secs(20);
    let endpoint = loop {
        match route_master(access.clone()).await {
            Some(e) if e != old_addr => break e,
            _ => assert!(Instant::now() < deadline, "the route never moved off the dead master"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(endpoint, new_addr, "QueryRoute names the master the name server knows");
    let mut g = connect(&endpoint).await;
    let (answer, _session) = open_telemetry(&mut g, producer_settings(&[topic]), "test").await;
    assert_eq!(code(&answer.status), Code::Ok as i32, "Telemetry set up again on the new master");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = 0;
    while after < 20 {
        let body = format!("grpc-after-{after}").into_bytes();
        let r = send(&mut g, message(topic, &format!("01A{after:04}"), &body, &[])).await;
        if code(&r.status) == Code::Ok as i32 {
            acked.push(body);
            after += 1;
        } else {
            assert!(Instant::now() < deadline, "the new master never acknowledged: {r:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let got: Vec<Vec<u8>> = drain(&mut g, topic, "grpc_failover_reader").await.into_iter().map(|m| m.body).collect();
    for body in &acked {
        assert!(got.contains(body), "acknowledged {:?} lost in the failover", String::from_utf8_lossy(body));
    }
}
