//! The HA controller against a real ZooKeeper, as real `spate controller`
//! processes (two: one leads, one stands by). In the first test the
//! brokers' side is played by ZooKeeper sessions of the test that publish
//! liveness nodes the way brokers do (so every input is exact); in the
//! second, real brokers drive the group through every replication state.

mod common;

use std::collections::BTreeSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{call, free_port, raw_client, send_req, BrokerProc, Proc, ZooKeeper};
use spate_controller::fsm::{GroupState, Liveness, ReplState};
use spate_controller::zk::Zk;
use spate_remoting::response;

/// One test at a time: two clusters at once starve each other's
/// ZooKeeper sessions on a small machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Controller(Child);

impl Controller {
    fn start(zk: &str, id: &str) -> Controller {
        Controller::start_with(zk, id, &[])
    }

    fn start_with(zk: &str, id: &str, extra: &[&str]) -> Controller {
        let child = Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["controller", "--zk", zk, "--id", id, "--session-timeout-ms", "1000", "--scan-interval-ms", "50"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn controller");
        Controller(child)
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A broker's ZooKeeper session publishing its liveness node.
async fn broker(zk: &str, id: i64, max_offset: u64) -> (Zk, Liveness) {
    // A session this short may fail to open on a loaded machine: try
    // again, as a real broker does.
    let mut tries = 0;
    let s = loop {
        match Zk::connect(zk, Duration::from_millis(800)).await {
            Ok(s) => break s,
            Err(e) => {
                tries += 1;
                assert!(tries < 10, "broker {id} never opened a ZooKeeper session: {e}");
            }
        }
    };
    s.ensure_group("broker-a").await.unwrap();
    let live = Liveness {
        broker_id: id,
        addr: format!("127.0.0.1:{}", 10911 + id),
        max_offset,
        epoch: 0,
        ..Default::default()
    };
    s.publish_live("broker-a", &live).await.unwrap();
    (s, live)
}

/// Waits until the group's durable state satisfies `ok`.
async fn wait_group(zk: &Zk, what: &str, limit: Duration, ok: impl Fn(&GroupState) -> bool) -> (GroupState, Duration) {
    let start = Instant::now();
    loop {
        // The group's node appears with its first broker.
        let g = zk.read_group("broker-a").await.map(|(g, _)| g);
        if let Ok(g) = &g {
            if ok(g) {
                return (g.clone(), start.elapsed());
            }
        }
        assert!(start.elapsed() < limit, "{what}: group is {g:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controllers_elect_promote_an_in_sync_slave_and_take_over_from_each_other() {
    let _serial = SERIAL.lock().await;
    let zk = ZooKeeper::start();
    let addr = zk.addr();
    let c1 = Controller::start(&addr, "c1");
    let observer = Zk::connect(&addr, Duration::from_secs(5)).await.unwrap();
    // c1 leads once it is up; c2 stands by.
    let deadline = Instant::now() + Duration::from_secs(15);
    while observer.leader().await.unwrap().as_deref() != Some("c1") {
        assert!(Instant::now() < deadline, "c1 never led");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c2 = Some(Controller::start(&addr, "c2"));

    // The first broker up becomes master in epoch 1.
    let (b0, mut l0) = broker(&addr, 0, 0).await;
    let (g, _) = wait_group(&observer, "first election", Duration::from_secs(5), |g| g.master == Some(0)).await;
    assert_eq!((g.master_epoch, g.state, g.in_sync.clone()), (1, ReplState::SingleMaster, BTreeSet::from([0])));

    // Slaves join: far behind -> ASYNC; then slave 1 caught up and waited
    // for by the master -> SYNC with {0, 1}; slave 2 stays out.
    let (_b1, _) = broker(&addr, 1, 500).await;
    let (_b2, _) = broker(&addr, 2, 900).await;
    l0.max_offset = 1_000_000_000;
    l0.slave_lag = [(1, 999_999_500), (2, 999_999_100)].into();
    b0.publish_live("broker-a", &l0).await.unwrap();
    wait_group(&observer, "ASYNC", Duration::from_secs(5), |g| g.state == ReplState::Async).await;
    l0.slave_lag = [(1, 0), (2, 999_999_100)].into();
    l0.acking = BTreeSet::from([1]);
    b0.publish_live("broker-a", &l0).await.unwrap();
    let (g, _) = wait_group(&observer, "SYNC", Duration::from_secs(5), |g| g.state == ReplState::Sync).await;
    assert_eq!(g.in_sync, BTreeSet::from([0, 1]));

    // The master's session ends (crash): slave 1, in sync, is promoted in
    // epoch 2 -- not slave 2, although its log is longer.
    drop(b0);
    let (g, took) =
        wait_group(&observer, "failover", Duration::from_secs(10), |g| g.master_epoch == 2 && g.master.is_some()).await;
    assert_eq!((g.master, g.in_sync.clone()), (Some(1), BTreeSet::from([1])));
    // Elected alone (SINGLE_MASTER); the next scan may already see slave 2 alive (ASYNC).
    assert!(matches!(g.state, ReplState::SingleMaster | ReplState::Async), "{g:?}");
    assert!(took < Duration::from_secs(5), "failover took {took:?}");

    // The leading controller dies: c2 takes over and keeps driving the group.
    drop(c1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while observer.leader().await.unwrap().as_deref() != Some("c2") {
        assert!(Instant::now() < deadline, "c2 never took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (b1, mut l1) = broker(&addr, 1, 1_000_000_000).await;
    drop(_b1); // the old session of broker 1; its node is replaced by the new one
    l1.acking = BTreeSet::from([2]);
    l1.slave_lag = [(2, 0)].into();
    b1.publish_live("broker-a", &l1).await.unwrap();
    let (g, _) = wait_group(&observer, "SYNC under c2", Duration::from_secs(10), |g| g.in_sync.len() == 2).await;
    assert_eq!((g.master, g.in_sync.clone()), (Some(1), BTreeSet::from([1, 2])));

    // The operator's view, and an election by hand: only a live in-sync member.
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_spate")).args(["admin", "ha"]).args(args).output().expect("admin runs")
    };
    let out = admin(&["groups", "--zk", &addr, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["leader"], "c2");
    assert_eq!(v["groups"][0]["state"]["master"], 1);
    assert_eq!(v["groups"][0]["state"]["inSync"], serde_json::json!([1, 2]));
    assert_eq!(v["groups"][0]["state"]["state"], "SYNC");
    let out = admin(&["elect", "--zk", &addr, "broker-a", "0"]);
    assert!(!out.status.success(), "broker 0 is gone and out of the set");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not alive"));
    // (Replacing broker 1's node with its new session above leaves a gap
    // the controller may have seen -- master gone, then back in a new
    // epoch -- so the epoch is compared with the one just before.)
    let (before, _) = observer.read_group("broker-a").await.unwrap();
    let out = admin(&["elect", "--zk", &addr, "broker-a", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (g, _) = observer.read_group("broker-a").await.unwrap();
    assert_eq!((g.master, g.master_epoch, g.in_sync), (Some(2), before.master_epoch + 1, BTreeSet::from([2])));
    drop(c2.take());
}

/// A controller that cannot reach ZooKeeper (not up yet, or slow to open a
/// session on a loaded machine) keeps trying; it used to exit at the first
/// failed connect, leaving every group without a master for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_started_before_zookeeper_waits_for_it_and_then_leads() {
    let _serial = SERIAL.lock().await;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut early = Controller::start(&addr, "early");
    // Nothing listens: with a 1 s session timeout and a 500 ms pause, at
    // least one connect attempt fails in this time (the old controller
    // exited at the first).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(early.0.try_wait().unwrap().is_none(), "the controller exited while ZooKeeper was down");

    let _zk = ZooKeeper::start_on(port);
    let observer = Zk::connect(&addr, Duration::from_secs(5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while observer.leader().await.unwrap().as_deref() != Some("early") {
        assert!(Instant::now() < deadline, "the controller never led once ZooKeeper was up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And it does its work: the first broker up is elected.
    let (_b0, _) = broker(&addr, 0, 0).await;
    let (g, _) = wait_group(&observer, "first election", Duration::from_secs(5), |g| g.master == Some(0)).await;
    assert_eq!(g.master_epoch, 1);
}

/// With real brokers: a master alone is SINGLE_MASTER; a slave that joins
/// far behind makes the group ASYNC, nearly caught up SEMI_SYNC, holding
/// every acknowledged write SYNC; when it dies the group goes back to
/// SINGLE_MASTER. Replication is paced (`haTransferBytesPerSecond`) so each
/// state lasts long enough to be seen; every written state is in the
/// group's history, which `spate admin ha groups` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_brokers_walk_the_group_through_every_replication_state() {
    let _serial = SERIAL.lock().await;
    let zk = ZooKeeper::start();
    let ns = Proc::namesrv();
    let dir = tempfile::tempdir().unwrap();
    // Semi-sync within 4 MiB; the slave catches up 12 MiB at 4 MiB/s.
    let _c = Controller::start_with(&zk.addr(), "c1", &["--semi-sync-max-lag", "4194304"]);
    let observer = Zk::connect(&zk.addr(), Duration::from_secs(5)).await.unwrap();
    let lines = |id: i64| -> Vec<String> {
        vec![
            "brokerName=broker-a".into(),
            format!("brokerId={id}"),
            format!("zkAddr={}", zk.addr()),
            "zkSessionTimeoutMillis=1000".into(),
            "haTransferBytesPerSecond=4194304".into(),
        ]
    };
    let master = BrokerProc::start(dir.path(), "b1", &ns.addr(), &lines(1));
    let (g, _) = wait_group(&observer, "a master alone", Duration::from_secs(15), |g| g.master == Some(1)).await;
    assert_eq!(g.state, ReplState::SingleMaster);
    let c = raw_client();
    // Named in ZooKeeper first; takes the role a moment later.
    let deadline = Instant::now() + Duration::from_secs(15);
    while call(&c, &master.addr(), send_req("States", 0, b"first".to_vec())).await.code != response::SUCCESS {
        assert!(Instant::now() < deadline, "broker 1 never took writes as master");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..192 {
        let r = call(&c, &master.addr(), send_req("States", i % 4, vec![b's'; 64 << 10])).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }

    let mut slave = BrokerProc::start(dir.path(), "b2", &ns.addr(), &lines(2));
    let (g, _) =
        wait_group(&observer, "the slave in sync", Duration::from_secs(60), |g| g.state == ReplState::Sync).await;
    assert_eq!(g.in_sync, BTreeSet::from([1, 2]));
    slave.kill9();
    let (g, _) = wait_group(&observer, "back to the master alone", Duration::from_secs(15), |g| {
        g.state == ReplState::SingleMaster
    })
    .await;
    assert_eq!((g.master, g.in_sync), (Some(1), BTreeSet::from([1])));

    // Every state was written in order (and shown by admin).
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "ha", "groups", "--zk", &zk.addr(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<String> = v["groups"][0]["transitions"]
        .as_array()
        .expect("transitions in admin's view")
        .iter()
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect();
    let want = ["SINGLE_MASTER", "ASYNC", "SEMI_SYNC", "SYNC", "SINGLE_MASTER"];
    let mut it = states.iter();
    for w in want {
        assert!(it.any(|s| s == w), "{w} missing in order from the transitions {states:?}");
    }
    let text =
        Command::new(env!("CARGO_BIN_EXE_spate")).args(["admin", "ha", "groups", "--zk", &zk.addr()]).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("SemiSync") && text.contains("in-sync {1, 2}"), "{text}");
}
