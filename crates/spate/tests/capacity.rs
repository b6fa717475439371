//! The capacity guarantee with a real broker (`spate standalone`): rate
//! limits set at runtime with `spate admin limit`, kept across a restart;
//! a topic limited to 1,000 msg/s offered 5,000 msg/s; leaky-bucket
//! shaping; fast-fail back-pressure when the send queue is full; core
//! traffic moving to the core lane.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{call, raw_client, send_req, Standalone};
use spate_remoting::{request, response, RemotingCommand};

fn admin(ns: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", ns, "--json", "limit"])
        .args(args)
        .output()
        .expect("admin runs");
    assert!(out.status.success(), "admin limit {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("admin JSON")
}

/// The broker's limits (its SPATE_GET_LIMITS body).
async fn limits(broker: &str) -> serde_json::Value {
    let r = call(&raw_client(), broker, RemotingCommand::request(request::SPATE_GET_LIMITS)).await;
    assert_eq!(r.code, response::SUCCESS);
    serde_json::from_slice(&r.body).unwrap()
}

/// Creates the topic (a send auto-creates it) and waits for its route.
async fn ready(spate: &Standalone, topic: &str) {
    let r = call(&raw_client(), &spate.broker(), send_req(topic, 0, b"hello".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_limited_to_1000_a_second_takes_1000_of_5000_and_refuses_the_rest_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(dir.path());
    ready(&spate, "Limited").await;
    let set = admin(
        &spate.namesrv(),
        &["set", "--target", "topic", "--name", "Limited", "--op", "send", "--rate", "1000", "--burst", "100"],
    );
    assert_eq!(set.as_array().map(Vec::len), Some(1), "{set}");

    // 5,000 sends a second for 10 s, open loop (5 every millisecond).
    let (ok, busy, other) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let refusal_us = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let client = Arc::new(raw_client());
    let slots = Arc::new(tokio::sync::Semaphore::new(2000));
    let started = Instant::now();
    let run_for = Duration::from_secs(10);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut tasks = Vec::new();
    while started.elapsed() < run_for {
        tick.tick().await;
        for _ in 0..5 {
            let permit = slots.clone().acquire_owned().await.unwrap();
            let (client, addr) = (client.clone(), spate.broker());
            let (ok, busy, other, refusal_us) = (ok.clone(), busy.clone(), other.clone(), refusal_us.clone());
            tasks.push(tokio::spawn(async move {
                let sent = Instant::now();
                let r = client.invoke(&addr, send_req("Limited", 0, vec![b'l'; 100]), Duration::from_secs(5)).await;
                let took = sent.elapsed();
                match r {
                    Ok(r) if r.code == response::SUCCESS => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(r) if r.code == response::SYSTEM_BUSY => {
                        assert!(
                            r.remark.as_deref().unwrap_or("").contains("topic Limited is limited"),
                            "{:?}",
                            r.remark
                        );
                        refusal_us.lock().push(took.as_micros() as u64);
                        busy.fetch_add(1, Ordering::Relaxed)
                    }
                    _ => other.fetch_add(1, Ordering::Relaxed),
                };
                drop(permit);
            }));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        t.await.unwrap();
    }
    let (ok, busy, other) = (ok.load(Ordering::Relaxed), busy.load(Ordering::Relaxed), other.load(Ordering::Relaxed));
    let rate = ok as f64 / elapsed;
    let mut us = std::mem::take(&mut *refusal_us.lock());
    us.sort_unstable();
    let p50 = us.get(us.len() / 2).copied().unwrap_or(0);
    let p99 = us.get(us.len() * 99 / 100).copied().unwrap_or(0);
    println!(
        "{{\"offered\":{},\"accepted\":{ok},\"refused\":{busy},\"other\":{other},\"seconds\":{elapsed:.2},\
         \"accepted_per_s\":{rate:.0},\"refusal_p50_us\":{p50},\"refusal_p99_us\":{p99}}}",
        ok + busy + other
    );
    assert_eq!(other, 0, "every send is stored or refused as busy");
    // On a loaded machine the generator may fall short of 5,000/s; the limit is
    // still tested as long as it offered well over it, and whatever it offered
    // beyond 1,000/s must have been refused.
    let offered_per_s = (ok + busy) as f64 / elapsed;
    assert!(offered_per_s >= 2500.0, "the test offered only {offered_per_s:.0}/s, too little to test a 1,000/s limit");
    assert!((900.0..=1100.0).contains(&rate), "accepted {rate:.0}/s, want 1000 +-10%");
    assert!(busy > ok, "most of what was offered must be refused: {busy} refused, {ok} accepted");
    // The broker counted what it refused, by reason.
    let metrics = limits(&spate.broker()).await;
    assert_eq!(metrics["rules"][0]["rejected"], busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_at_runtime_survive_a_restart_and_shape_at_their_rate() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start(dir.path());
    ready(&spate, "Shaped").await;
    let ns = spate.namesrv();
    let c = raw_client();
    // 2 a second, bursts of 2: the third send in a row is refused.
    admin(&ns, &["set", "--target", "topic", "--name", "Shaped", "--op", "send", "--rate", "2", "--burst", "2"]);
    let codes: Vec<i32> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(call(&c, &spate.broker(), send_req("Shaped", 0, b"x".to_vec())).await.code);
        }
        v
    };
    assert_eq!(codes, vec![response::SUCCESS, response::SUCCESS, response::SYSTEM_BUSY]);

    // Changed at runtime: shaping at 50 a second, holding requests up to 5 s.
    admin(
        &ns,
        &[
            "set",
            "--target",
            "topic",
            "--name",
            "Shaped",
            "--op",
            "send",
            "--rate",
            "50",
            "--shape-max-wait-ms",
            "5000",
            "--shape-max-queue",
            "1000",
        ],
    );
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let addr = spate.broker();
            tokio::spawn(async move {
                let r = call(&raw_client(), &addr, send_req("Shaped", 0, b"s".to_vec())).await;
                (r.code, Instant::now())
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        let (code, at) = t.await.unwrap();
        assert_eq!(code, response::SUCCESS, "a shaped send within its wait is stored, not refused");
        done.push(at - started);
    }
    done.sort();
    // 100 sends at 50 a second leave over about 2 s, evenly.
    let spread = done[99] - done[0];
    assert!(spread >= Duration::from_millis(1700) && spread <= Duration::from_millis(3000), "{spread:?}");
    let first_half = done.iter().filter(|d| **d < done[0] + spread / 2).count();
    assert!((35..=65).contains(&first_half), "{first_half} of 100 in the first half of the spread");

    // A pull limit as well, then a restart: both are still there.
    admin(&ns, &["set", "--target", "group", "--name", "cg", "--op", "pull", "--rate", "1", "--burst", "1"]);
    let pull = || common::pull_req("Shaped", 0, 0, 0, "*");
    assert_eq!(call(&c, &spate.broker(), pull()).await.code, response::SUCCESS);
    let r = call(&c, &spate.broker(), pull()).await;
    assert_eq!(r.code, response::FLOW_CONTROL, "{:?}", r.remark);
    spate.restart();
    let after = limits(&spate.broker()).await;
    let rules = after["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 2, "{after}");
    assert!(rules.iter().any(|r| r["name"] == "Shaped" && r["rate"] == 50 && r["shape"]["maxWaitMs"] == 5000));
    // And removed at runtime.
    admin(&spate.namesrv(), &["delete", "--target", "group", "--name", "cg", "--op", "pull"]);
    for _ in 0..3 {
        assert_eq!(call(&c, &spate.broker(), pull()).await.code, response::SUCCESS);
    }
    let listed = admin(&spate.namesrv(), &["list"]);
    assert_eq!(listed[0]["limits"]["rules"].as_array().map(Vec::len), Some(1), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_send_queue_refuses_at_once_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // One send stored at a time, nobody may wait behind it.
    let spate = Standalone::start_with(dir.path(), &["sendMessageThreadPoolNums=1", "sendThreadPoolQueueCapacity=0"]);
    ready(&spate, "Busy").await;
    let tasks: Vec<_> = (0..300)
        .map(|_| {
            let addr = spate.broker();
            tokio::spawn(async move {
                let r = call(&raw_client(), &addr, send_req("Busy", 0, vec![b'b'; 256 << 10])).await;
                (r.code, r.remark)
            })
        })
        .collect();
    let (mut ok, mut busy) = (0i64, 0);
    for t in tasks {
        let (code, remark) = t.await.unwrap();
        match code {
            response::SUCCESS => ok += 1,
            response::SYSTEM_BUSY => {
                assert!(remark.as_deref().unwrap_or("").starts_with("[REJECTREQUEST]system busy"), "{remark:?}");
                busy += 1;
            }
            other => panic!("unexpected code {other}: {remark:?}"),
        }
    }
    assert!(busy > 0, "300 concurrent 256 KiB sends through one slot with no queue: some must be refused");
    // Exactly the acknowledged sends are stored (plus the first one).
    let max = call(
        &raw_client(),
        &spate.broker(),
        RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Busy").with("queueId", 0),
    )
    .await;
    assert_eq!(max.field("offset").and_then(|v| v.parse::<i64>().ok()), Some(ok + 1));
    println!("{{\"sent\":300,\"stored\":{ok},\"refused_busy\":{busy}}}");
}

/// Degradation by priority with a real broker, its pressure threshold set
/// to zero so that any send counts as pressure: bulk's admitted share and
/// then normal's are cut to nothing while core is stored throughout, and
/// the shares grow back by themselves once the sends stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_pressure_bulk_then_normal_are_refused_and_core_kept_until_it_passes() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start_with(
        dir.path(),
        &["degradeSendWaitMicros=0", "degradeStepMillis=50", "degradeRecoverMillis=300", "degradeCheckInterval=10"],
    );
    for t in ["Core", "Norm", "Bulk"] {
        ready(&spate, t).await;
    }
    let ns = spate.namesrv();
    admin(&ns, &["priority", "--target", "topic", "--name", "Core", "--class", "core"]);
    admin(&ns, &["priority", "--target", "topic", "--name", "Bulk", "--class", "bulk"]);
    let c = raw_client();
    let level = |v: &serde_json::Value| v["degradeLevel"].as_u64().unwrap();
    let normal_share = |v: &serde_json::Value| v["normalSharePerMille"].as_u64().unwrap();

    // Core traffic is the pressure here; it is stored throughout. Bulk is
    // halved away first, then normal.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = limits(&spate.broker()).await;
        if normal_share(&v) == 0 {
            assert_eq!((level(&v), v["bulkSharePerMille"].as_u64()), (2, Some(0)), "{v}");
            break;
        }
        let r = call(&c, &spate.broker(), send_req("Core", 0, b"c".to_vec())).await;
        assert_eq!(r.code, response::SUCCESS, "core traffic is never degraded: {:?}", r.remark);
        assert!(Instant::now() < deadline, "the level never reached 2");
    }
    for (topic, want) in [("Bulk", response::SYSTEM_BUSY), ("Norm", response::SYSTEM_BUSY), ("Core", response::SUCCESS)]
    {
        let r = call(&c, &spate.broker(), send_req(topic, 0, b"x".to_vec())).await;
        assert_eq!(r.code, want, "{topic}: {:?}", r.remark);
        if want == response::SYSTEM_BUSY {
            assert!(r.remark.as_deref().unwrap_or("").starts_with("[DEGRADED]"), "{:?}", r.remark);
        }
    }

    // The pressure passes: the level steps down and bulk is taken again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while level(&limits(&spate.broker()).await) > 0 {
        assert!(Instant::now() < deadline, "the degradation never lifted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(&c, &spate.broker(), send_req("Bulk", 0, b"b".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let listed = admin(&ns, &["list"]);
    assert_eq!(listed[0]["limits"]["priorities"].as_array().map(Vec::len), Some(2), "{listed}");
}

/// The scheduling policy of the broker's thread named `name`, from
/// /proc/<pid>/task/*/stat (field 41: 0 SCHED_OTHER, 1 SCHED_FIFO).
fn thread_policy(pid: u32, name: &str) -> Option<u32> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
        let (open, close) = (stat.find('(')?, stat.rfind(')')?);
        if &stat[open + 1..close] != name {
            continue;
        }
        // Fields after the name start at field 3 (state).
        return stat[close + 1..].split_whitespace().nth(41 - 3)?.parse().ok();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_carrying_core_traffic_move_to_the_core_lane_and_keep_their_other_traffic() {
    let dir = tempfile::tempdir().unwrap();
    // Which runtime serves what is the subject here, not shedding: a burst
    // on a debug build would otherwise have bulk refused.
    let spate = Standalone::start_with(dir.path(), &["degradeEnable=false"]);
    for t in ["Core", "Bulk"] {
        ready(&spate, t).await;
    }
    let ns = spate.namesrv();
    admin(&ns, &["priority", "--target", "topic", "--name", "Core", "--class", "core"]);
    admin(&ns, &["priority", "--target", "topic", "--name", "Bulk", "--class", "bulk"]);
    let on_lane = || async { limits(&spate.broker()).await["coreLaneConnections"].as_u64() };

    // Bulk alone does not move a connection.
    let mixed = Arc::new(raw_client());
    for i in 0..3 {
        let r = call(&mixed, &spate.broker(), send_req("Bulk", i, b"b".to_vec())).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }
    assert_eq!(on_lane().await, Some(0));

    // A core send moves its connection; a second client's too.
    let core_only = raw_client();
    let r = call(&core_only, &spate.broker(), send_req("Core", 0, b"c".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(on_lane().await, Some(1));
    let r = call(&mixed, &spate.broker(), send_req("Core", 1, b"c".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(on_lane().await, Some(2));

    // The moved connection still carries everything, pipelined: bulk sends
    // and pulls go back to the main runtime, core ones stay on the lane.
    let mut sends = Vec::new();
    for i in 0..200 {
        let topic = if i % 2 == 0 { "Core" } else { "Bulk" };
        let (c, broker) = (mixed.clone(), spate.broker());
        sends.push(tokio::spawn(async move {
            c.invoke(&broker, send_req(topic, 2, vec![i as u8; 64]), Duration::from_secs(5)).await
        }));
    }
    for s in sends {
        let r = s.await.unwrap().expect("answered");
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    }
    // Bulk's queue 2 also holds one of the first three sends.
    for (topic, want) in [("Core", 100), ("Bulk", 101)] {
        let r = call(&mixed, &spate.broker(), common::pull_req(topic, 2, 0, 0, "*")).await;
        assert_eq!(r.code, response::SUCCESS, "{topic}: {:?}", r.remark);
        assert_eq!(r.field("maxOffset"), Some(want.to_string().as_str()), "{topic}");
    }

    // A closed lane connection is counted out.
    drop(core_only);
    let deadline = Instant::now() + Duration::from_secs(5);
    while on_lane().await != Some(1) {
        assert!(Instant::now() < deadline, "the closed connection is still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // What the broker reports is what the kernel has for the lane's thread.
    let v = limits(&spate.broker()).await;
    let policy = thread_policy(spate.pid().unwrap(), "spate-core-lane").expect("the lane thread exists");
    match v["coreLaneScheduling"].as_str() {
        Some("SCHED_FIFO 10") => assert_eq!(policy, 1),
        Some("SCHED_OTHER") => assert_eq!(policy, 0),
        other => panic!("unexpected coreLaneScheduling {other:?}"),
    }
}
