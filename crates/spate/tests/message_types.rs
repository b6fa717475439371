//! RocketMQ's message types against a real `spate standalone` process:
//! delayed messages per level and timer messages at arbitrary times (across
//! a clean restart and a kill -9), consumer retries through growing delays
//! into the dead-letter queue and back out with `spate admin dlq`,
//! transactions (commit, rollback, check-back, restart), SQL92 filters,
//! message query by id, key and time, and ordered consumption by two
//! orderly consumers with one leaving. Failover cases are in failover.rs.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use spate_client::{
    ClientConfig, ConsumeFromWhere, ConsumeStatus, Message, MessageExt, MessageListener, Producer, ProducerOptions,
    PushConsumer, PushConsumerOptions,
};

/// Eighteen short levels, 100 ms apart, so every level can be waited for.
const SHORT_LEVELS: &str =
    "messageDelayLevel=100ms 200ms 300ms 400ms 500ms 600ms 700ms 800ms 900ms 1s 1100ms 1200ms 1300ms 1400ms 1500ms 1600ms 1700ms 1800ms";

fn level_delay(level: i32) -> Duration {
    Duration::from_millis(100 * level.clamp(1, 18) as u64)
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}_{}", nanos % 1_000_000_000_000)
}

fn config(ns: &str, instance: &str) -> ClientConfig {
    ClientConfig::new(ns).with_instance_name(instance)
}

fn consumer_options(group: &str) -> PushConsumerOptions {
    let mut o = PushConsumerOptions::new(group);
    o.consume_from_where = ConsumeFromWhere::FirstOffset;
    o.rebalance_interval = Duration::from_secs(1);
    o.offset_store_dir = std::env::temp_dir().join(unique("spate-offsets"));
    o
}

/// Each message received, with when it arrived.
type Arrivals = Arc<Mutex<Vec<(MessageExt, Instant)>>>;

async fn collect(ns: &str, topic: &str) -> (PushConsumer, Arrivals) {
    let got: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    let c = PushConsumer::new(config(ns, &unique("c")), consumer_options(&unique("g"))).unwrap();
    c.subscribe(topic, "*").unwrap();
    c.start(MessageListener::concurrently(move |msgs, _| {
        let now = Instant::now();
        g.lock().extend(msgs.iter().map(|m| (m.clone(), now)));
        ConsumeStatus::ConsumeSuccess
    }))
    .await
    .unwrap();
    (c, got)
}

async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn body(m: &MessageExt) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_delay_level_arrives_no_earlier_than_due() {
    let dir = tempfile::tempdir().unwrap();
    let spate = common::Standalone::start_with(&dir.path().join("data"), &[SHORT_LEVELS]);
    let ns = spate.namesrv();
    let topic = unique("Delay");
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    // The consumer is running first, so an early delivery would be seen.
    p.send(Message::new(&topic, "create")).await.unwrap();
    let (c, got) = collect(&ns, &topic).await;
    wait_until("the plain message", Duration::from_secs(20), || got.lock().len() == 1).await;

    // Three per level, plus a level past the highest (capped to it).
    let mut sent: HashMap<String, (i32, Instant, String)> = HashMap::new();
    for level in (1..=18).chain([40]) {
        for k in 0..3 {
            let text = format!("L{level}-{k}");
            let before = Instant::now();
            let r =
                p.send(Message::new(&topic, text.clone()).with_tags("Later").with_delay_level(level)).await.unwrap();
            sent.insert(text, (level, before, r.msg_id));
        }
    }
    wait_until("every delayed message", Duration::from_secs(30), || got.lock().len() == 1 + sent.len()).await;
    // Nothing more comes (no duplicates).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = got.lock().clone();
    assert_eq!(got.len(), 1 + sent.len());
    let mut late_ms = Vec::new();
    for (m, at) in got.iter().filter(|(m, _)| body(m) != "create") {
        let (level, before, msg_id) = &sent[&body(m)];
        let waited = at.duration_since(*before);
        assert!(
            waited >= level_delay(*level),
            "{} arrived after {waited:?}, due after {:?}",
            body(m),
            level_delay(*level)
        );
        late_ms.push((waited - level_delay(*level)).as_millis());
        // Delivered as the message that was sent, in its real topic.
        assert_eq!(m.topic, topic);
        assert_eq!(&m.msg_id, msg_id, "the client's message id is kept");
        assert_eq!(m.tags(), Some("Later"));
        assert_eq!(m.property("DELAY"), None);
        assert_eq!(m.property("REAL_TOPIC"), Some(topic.as_str()));
    }
    late_ms.sort_unstable();
    // Generous for a loaded CI machine; BENCHMARKS.md has the real numbers.
    assert!(late_ms[late_ms.len() / 2] < 1000, "median lateness {} ms", late_ms[late_ms.len() / 2]);
    c.shutdown().await;
    p.shutdown().await;
}

fn epoch_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_messages_arrive_at_their_own_time_whatever_the_send_order() {
    let dir = tempfile::tempdir().unwrap();
    let spate = common::Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let topic = unique("Timer");
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    p.send(Message::new(&topic, "create")).await.unwrap();
    let arrived: Arc<Mutex<HashMap<String, (i64, MessageExt)>>> = Arc::default();
    let a2 = arrived.clone();
    let deliveries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = deliveries.clone();
    let c = PushConsumer::new(config(&ns, "c"), consumer_options(&unique("g"))).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::concurrently(move |msgs, _| {
        let mut a = a2.lock();
        for m in msgs {
            // A second arrival keeps the first's time but still counts.
            a.entry(body(m)).or_insert_with(|| (epoch_ms(), m.clone()));
            n2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        ConsumeStatus::ConsumeSuccess
    }))
    .await
    .unwrap();
    wait_until("the plain message", Duration::from_secs(20), || arrived.lock().len() == 1).await;

    // Due 3 s down to 100 ms ahead, sent latest first, in each of the three forms.
    let mut due: HashMap<String, (i64, String)> = HashMap::new();
    for i in (1..=30i64).rev() {
        let text = format!("t{i}");
        let delay_ms = 100 * i;
        let before = epoch_ms();
        let msg = Message::new(&topic, text.clone()).with_tags("Timed");
        let (msg, at) = match i % 3 {
            0 => (msg.with_deliver_time_ms(before + delay_ms), before + delay_ms),
            1 => (msg.with_delay_time(Duration::from_millis(delay_ms as u64)), before + delay_ms),
            _ => {
                let sec = delay_ms / 1000 + 1;
                (msg.with_property("TIMER_DELAY_SEC", sec.to_string()), before + 1000 * sec)
            }
        };
        let r = p.send(msg).await.unwrap();
        due.insert(text, (at, r.msg_id));
    }
    // A time already past is an ordinary message; one too far ahead is refused.
    p.send(Message::new(&topic, "past").with_deliver_time_ms(epoch_ms() - 5000)).await.unwrap();
    let far = p.send(Message::new(&topic, "far").with_property("TIMER_DELAY_SEC", "400000")).await.unwrap_err();
    assert!(far.to_string().contains("timerMaxDelaySec"), "{far}");

    wait_until("every timer message", Duration::from_secs(30), || arrived.lock().len() == 2 + due.len()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let arrived = arrived.lock().clone();
    assert_eq!(arrived.len(), 2 + due.len());
    assert_eq!(deliveries.load(std::sync::atomic::Ordering::Relaxed), 2 + due.len(), "each delivered once");
    let mut late = Vec::new();
    for (text, (at, msg_id)) in &due {
        let (when, m) = &arrived[text];
        assert!(when >= at, "{text} arrived {} ms early", at - when);
        late.push(when - at);
        assert_eq!(&m.msg_id, msg_id);
        assert_eq!(m.topic, topic);
        assert_eq!(m.tags(), Some("Timed"));
        assert_eq!(m.property("TIMER_OUT_MS"), None);
    }
    late.sort_unstable();
    assert!(late[late.len() / 2] < 1000, "median lateness {} ms", late[late.len() / 2]);
    c.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_messages_survive_a_clean_restart_and_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let levels = "messageDelayLevel=2s 3s";
    let mut spate = common::Standalone::start_with(&dir.path().join("data"), &[levels]);
    let ns = spate.namesrv();
    let topic = unique("Durable");
    let sent_at = Instant::now();
    {
        let p = Producer::start(config(&ns, "p1"), ProducerOptions::new(unique("pg"))).await.unwrap();
        for i in 0..100 {
            let level = if i < 50 { 1 } else { 2 };
            p.send(Message::new(&topic, format!("m{i}")).with_delay_level(level)).await.unwrap();
        }
        // And timer messages, 2.5 s out.
        for i in 0..100 {
            p.send(Message::new(&topic, format!("t{i}")).with_delay_time(Duration::from_millis(2500))).await.unwrap();
        }
        p.shutdown().await;
    }
    // Clean restart before any is due.
    spate.restart();
    let (c, got) = collect(&ns, &topic).await;
    wait_until("all 200 after the restart", Duration::from_secs(30), || got.lock().len() >= 200).await;
    for (m, at) in got.lock().iter() {
        let b = body(m);
        let delay = match (&b[..1], b[1..].parse::<usize>().unwrap()) {
            ("t", _) => Duration::from_millis(2500),
            (_, i) if i < 50 => Duration::from_secs(2),
            _ => Duration::from_secs(3),
        };
        assert!(at.duration_since(sent_at) >= delay, "{b} early");
    }
    // A clean restart after delivery delivers nothing again.
    c.shutdown().await;
    spate.restart();
    let (c, again) = collect(&ns, &topic).await;
    wait_until("the first 200 again (new group)", Duration::from_secs(30), || again.lock().len() >= 200).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(again.lock().len(), 200, "nothing delivered twice after a clean restart");
    c.shutdown().await;

    // kill -9 while messages wait: all of them still come (at least once).
    {
        let p = Producer::start(config(&ns, "p2"), ProducerOptions::new(unique("pg"))).await.unwrap();
        for i in 0..100 {
            p.send(Message::new(&topic, format!("k{i}")).with_delay_level(2)).await.unwrap();
            p.send(Message::new(&topic, format!("kt{i}")).with_delay_time(Duration::from_secs(2))).await.unwrap();
        }
        p.shutdown().await;
    }
    spate.kill9();
    spate.restart();
    let (c, got) = collect(&ns, &topic).await;
    wait_until("the 200 sent before the kill", Duration::from_secs(30), || {
        got.lock()
            .iter()
            .filter(|(m, _)| body(m).starts_with('k'))
            .map(|(m, _)| body(m))
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 200
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_listener_sees_max_retries_with_growing_delays_then_the_dlq() {
    let dir = tempfile::tempdir().unwrap();
    let spate = common::Standalone::start_with(&dir.path().join("data"), &[SHORT_LEVELS]);
    let ns = spate.namesrv();
    let topic = unique("Fails");
    let group = unique("g");
    const RETRIES: i32 = 3;
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    let sent = p.send(Message::new(&topic, "poison").with_keys(["poison-key"])).await.unwrap();
    let seen: Arc<Mutex<Vec<(i32, Instant, MessageExt)>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let mut o = consumer_options(&group);
    o.max_reconsume_times = RETRIES;
    let c = PushConsumer::new(config(&ns, "c"), o).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::concurrently(move |msgs, _| {
        let mut s = s2.lock();
        for m in msgs {
            s.push((m.reconsume_times, Instant::now(), m.clone()));
        }
        ConsumeStatus::ReconsumeLater
    }))
    .await
    .unwrap();
    wait_until("first delivery and every retry", Duration::from_secs(30), || seen.lock().len() as i32 > RETRIES).await;
    // Nothing after the last retry: the message is dead.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = seen.lock().clone();
    let times: Vec<i32> = seen.iter().map(|(t, _, _)| *t).collect();
    assert_eq!(times, (0..=RETRIES).collect::<Vec<_>>(), "one delivery, then one per retry");
    for w in seen.windows(2) {
        let (t, at, _) = &w[0];
        // Retry k + 1 waits level 3 + k.
        let due = level_delay(3 + t);
        assert!(w[1].1.duration_since(*at) >= due, "retry {} came after {:?}, due after {due:?}", t + 1, w[1].1 - *at);
    }
    for (_, _, m) in &seen {
        assert_eq!(m.topic, topic, "retries are delivered under the original topic");
        assert_eq!(m.msg_id, sent.msg_id, "retries keep the client's message id");
        assert_eq!(body(m), "poison");
    }
    c.shutdown().await;

    // The dead letter: readable, with the original topic, id and count.
    let dlq = format!("%DLQ%{group}");
    let (dc, dead) = collect(&ns, &dlq).await;
    wait_until("the dead letter", Duration::from_secs(20), || !dead.lock().is_empty()).await;
    let dead = dead.lock().clone();
    assert_eq!(dead.len(), 1);
    let m = &dead[0].0;
    assert_eq!(body(m), "poison");
    assert_eq!(m.property("RETRY_TOPIC"), Some(topic.as_str()));
    assert_eq!(m.msg_id, sent.msg_id);
    assert_eq!(m.reconsume_times, RETRIES + 1);
    assert!(m.keys().contains(&"poison-key"));
    dc.shutdown().await;

    // The operator lists the group's dead letters and resends them.
    let listed = admin(&ns, &["dlq", "list", &group]).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["origin_topic"], topic.as_str());
    assert_eq!(listed[0]["uniq_key"], sent.msg_id.as_str());
    assert_eq!(listed[0]["reconsume_times"], RETRIES + 1);
    assert!(admin(&ns, &["dlq", "resend", &group]).unwrap_err().contains("--all"));
    let resent = admin(&ns, &["dlq", "resend", &group, "--msg-id", &sent.msg_id]).unwrap();
    assert_eq!(resent.as_array().unwrap().len(), 1);
    // The group (now healthy) gets it once more, under its original topic.
    let again: Arrivals = Arc::default();
    let a2 = again.clone();
    let c = PushConsumer::new(config(&ns, "c2"), consumer_options(&group)).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::concurrently(move |msgs, _| {
        a2.lock().extend(msgs.iter().map(|m| (m.clone(), Instant::now())));
        ConsumeStatus::ConsumeSuccess
    }))
    .await
    .unwrap();
    wait_until("the resent dead letter", Duration::from_secs(20), || !again.lock().is_empty()).await;
    let back = again.lock()[0].0.clone();
    assert_eq!(
        (body(&back), back.topic.as_str(), back.msg_id.as_str()),
        ("poison".into(), topic.as_str(), sent.msg_id.as_str())
    );
    c.shutdown().await;
    p.shutdown().await;
}

/// `spate admin --json ...`: its JSON output, or its error text.
fn admin(ns: &str, args: &[&str]) -> Result<serde_json::Value, String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", ns, "--json"])
        .args(args)
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).to_string());
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e})")))
}

/// Decides by body prefix: `commit-` / `rollback-` at once; `late-commit-`
/// / `late-rollback-` only when checked; `never-` stays unknown.
struct Ledger {
    checks: Mutex<HashMap<String, usize>>,
}

impl spate_client::TransactionListener for Ledger {
    fn execute_local_transaction(&self, msg: &Message) -> spate_client::LocalTransactionState {
        use spate_client::LocalTransactionState::*;
        let body = String::from_utf8_lossy(&msg.body).into_owned();
        if body.starts_with("commit-") {
            CommitMessage
        } else if body.starts_with("rollback-") {
            RollbackMessage
        } else {
            Unknow
        }
    }

    fn check_local_transaction(&self, msg: &MessageExt) -> spate_client::LocalTransactionState {
        use spate_client::LocalTransactionState::*;
        let b = body(msg);
        *self.checks.lock().entry(b.clone()).or_default() += 1;
        if b.starts_with("late-commit-") {
            CommitMessage
        } else if b.starts_with("late-rollback-") {
            RollbackMessage
        } else {
            Unknow
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_commit_roll_back_and_settle_on_check_back() {
    let dir = tempfile::tempdir().unwrap();
    let conf = ["transactionCheckInterval=200", "transactionTimeOut=1000", "transactionCheckMax=3"];
    let mut spate = common::Standalone::start_with(&dir.path().join("data"), &conf);
    let ns = spate.namesrv();
    let topic = unique("Tx");
    let group = unique("txg");
    // Heartbeats often, so the restarted broker soon knows whom to check with.
    let mut pc = config(&ns, "p");
    pc.heartbeat_broker_interval = Duration::from_millis(500);
    let p = Producer::start(pc, ProducerOptions::new(group.clone())).await.unwrap();
    let ledger = Arc::new(Ledger { checks: Mutex::default() });
    p.set_transaction_listener(ledger.clone());
    p.send(Message::new(&topic, "create")).await.unwrap();
    let (c, got) = collect(&ns, &topic).await;
    wait_until("the plain message", Duration::from_secs(20), || got.lock().len() == 1).await;

    let sent_at = Instant::now();
    for kind in ["commit", "rollback", "late-commit", "late-rollback", "never"] {
        for i in 0..5 {
            let r = p.send_message_in_transaction(Message::new(&topic, format!("{kind}-{i}"))).await.unwrap();
            assert_eq!(r.send.status, spate_client::SendStatus::SendOk);
        }
    }
    let arrived = |prefix: &str| got.lock().iter().filter(|(m, _)| body(m).starts_with(prefix)).count();
    wait_until("committed at once", Duration::from_secs(10), || arrived("commit-") == 5).await;
    wait_until("committed on check", Duration::from_secs(20), || arrived("late-commit-") == 5).await;
    // Settled on check only: not before the transaction timeout.
    for (m, at) in got.lock().iter().filter(|(m, _)| body(m).starts_with("late-commit-")) {
        assert!(at.duration_since(sent_at) >= Duration::from_millis(1000), "{} committed before any check", body(m));
    }
    // `never-` is asked transactionCheckMax times, then given up on.
    wait_until("never- checked 3 times each", Duration::from_secs(20), || {
        let checks = ledger.checks.lock();
        (0..5).all(|i| checks.get(&format!("never-{i}")).copied().unwrap_or(0) >= 3)
    })
    .await;
    let (mc, given_up) = collect(&ns, "TRANS_CHECK_MAX_TIME_TOPIC").await;
    wait_until("never- moved aside", Duration::from_secs(20), || given_up.lock().len() == 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    {
        let checks = ledger.checks.lock();
        assert!(
            (0..5).all(|i| checks[&format!("never-{i}")] == 3),
            "asked exactly transactionCheckMax times: {checks:?}"
        );
        assert!((0..5).all(|i| !checks.contains_key(&format!("commit-{i}"))), "decided ones are never checked");
    }
    let got_now = got.lock().clone();
    assert_eq!(got_now.len(), 1 + 10, "exactly the committed ones, once each");
    assert!(got_now.iter().all(|(m, _)| !body(m).contains("rollback") && !body(m).starts_with("never")));
    for (m, _) in &got_now {
        assert_eq!(m.topic, topic);
        assert_eq!(m.property("TRAN_MSG"), None);
    }
    mc.shutdown().await;

    // A half left unknown across a broker restart is still checked and committed.
    p.send_message_in_transaction(Message::new(&topic, "late-commit-after-restart")).await.unwrap();
    spate.restart();
    wait_until("committed after the restart", Duration::from_secs(30), || arrived("late-commit-after-restart") == 1)
        .await;
    c.shutdown().await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql92_filters_deliver_exactly_the_matching_messages() {
    let dir = tempfile::tempdir().unwrap();
    let spate = common::Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let topic = unique("Sql");
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    // 120 messages: a = i (every fifth without it), region alternating, tag by thirds.
    let mut sent = Vec::new();
    for i in 0..120 {
        let region = if i % 2 == 0 { "hz" } else { "sh" };
        let tag = ["TagA", "TagB", "TagC"][i % 3];
        let mut m = Message::new(&topic, format!("m{i}")).with_tags(tag).with_property("region", region);
        let a = (i % 5 != 0).then_some(i);
        if let Some(a) = a {
            m = m.with_property("a", a.to_string());
        }
        p.send(m).await.unwrap();
        sent.push((format!("m{i}"), a, region, tag));
    }
    type Pick = fn(Option<usize>, &str, &str) -> bool;
    let cases: [(&str, Pick); 4] = [
        ("region = 'hz' AND a BETWEEN 10 AND 59", |a, r, _| r == "hz" && a.is_some_and(|a| (10..=59).contains(&a))),
        ("a IS NULL OR TAGS IN ('TagC')", |a, _, t| a.is_none() || t == "TagC"),
        ("NOT (region = 'sh') AND a > 100", |a, r, _| r != "sh" && a.is_some_and(|a| a > 100)),
        ("a <> 7 AND a < 12", |a, _, _| a.is_some_and(|a| a != 7 && a < 12)),
    ];
    let mut consumers = Vec::new();
    for (sql, _) in &cases {
        let got: Arrivals = Arc::default();
        let g = got.clone();
        let c = PushConsumer::new(config(&ns, &unique("c")), consumer_options(&unique("g"))).unwrap();
        c.subscribe_sql(&topic, sql).unwrap();
        c.start(MessageListener::concurrently(move |msgs, _| {
            g.lock().extend(msgs.iter().map(|m| (m.clone(), Instant::now())));
            ConsumeStatus::ConsumeSuccess
        }))
        .await
        .unwrap();
        consumers.push((c, got));
    }
    for ((sql, pick), (_, got)) in cases.iter().zip(&consumers) {
        let mut want: Vec<String> =
            sent.iter().filter(|(_, a, r, t)| pick(*a, r, t)).map(|(b, ..)| b.clone()).collect();
        want.sort();
        assert!(!want.is_empty() && want.len() < sent.len(), "{sql}: a case that selects some, not all");
        wait_until(sql, Duration::from_secs(20), || got.lock().len() >= want.len()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut have: Vec<String> = got.lock().iter().map(|(m, _)| body(m)).collect();
        have.sort();
        assert_eq!(have, want, "{sql}");
    }
    for (c, _) in consumers {
        c.shutdown().await;
    }
    p.shutdown().await;

    // An invalid expression is refused with the reason.
    use spate_remoting::{request, response, RemotingCommand};
    let raw = common::raw_client();
    let pull = |sql: &str| {
        RemotingCommand::request(request::PULL_MESSAGE)
            .with("consumerGroup", "cg")
            .with("topic", &topic)
            .with("queueId", 0)
            .with("queueOffset", 0)
            .with("maxMsgNums", 32)
            .with("sysFlag", 2)
            .with("commitOffset", 0)
            .with("suspendTimeoutMillis", 0)
            .with("subscription", sql)
            .with("subVersion", 1)
            .with("expressionType", "SQL92")
    };
    let r = common::call(&raw, &spate.broker(), pull("a > AND")).await;
    assert_eq!(r.code, response::SUBSCRIPTION_PARSE_FAILED, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("a > AND"));
    let r = common::call(&raw, &spate.broker(), pull("a LIKE 'x%'")).await;
    assert_eq!(r.code, response::SUBSCRIPTION_PARSE_FAILED);
    assert!(r.remark.unwrap_or_default().contains("unsupported"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_by_id_key_and_time_in_the_client_and_admin() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = common::Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let topic = unique("Query");
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    let mut early = Vec::new();
    for i in 0..10 {
        early.push(
            p.send(Message::new(&topic, format!("early-{i}")).with_keys([format!("order-{}", i % 3)])).await.unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let begin = epoch_ms();
    let mut late = Vec::new();
    for i in 0..10 {
        late.push(p.send(Message::new(&topic, format!("late-{i}")).with_keys(["late-key"])).await.unwrap());
    }
    let end = epoch_ms();
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.send(Message::new(&topic, "after")).await.unwrap();
    // The index is written by the dispatcher, just after the acknowledgement.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let check = |spate_restarted: bool| {
        let (early, late, topic, ns) = (early.clone(), late.clone(), topic.clone(), ns.clone());
        async move {
            let q = Producer::start(config(&ns, &unique("q")), ProducerOptions::new(unique("qg"))).await.unwrap();
            let i = q.instance();
            let by_offset = i.view_message(&early[4].offset_msg_id).await.unwrap();
            assert_eq!(body(&by_offset), "early-4");
            let by_uniq = i.query_message_by_unique_key(&topic, &late[7].msg_id).await.unwrap().unwrap();
            assert_eq!(body(&by_uniq), "late-7");
            let mut by_key: Vec<String> =
                i.query_message(&topic, "order-1", 32, 0, i64::MAX).await.unwrap().iter().map(body).collect();
            by_key.sort();
            assert_eq!(by_key, ["early-1", "early-4", "early-7"], "restarted: {spate_restarted}");
            let mut by_time: Vec<String> =
                i.query_messages_by_time(&topic, begin, end, 100).await.unwrap().iter().map(body).collect();
            by_time.sort();
            let mut want: Vec<String> = (0..10).map(|i| format!("late-{i}")).collect();
            want.sort();
            assert_eq!(by_time, want, "exactly the messages stored in the range");
            assert!(i.view_message("nonsense").await.is_err());
            q.shutdown().await;

            // The same through the admin tool.
            let v = admin(&ns, &["message", "id", &early[4].offset_msg_id]).unwrap();
            assert_eq!(v[0]["body"], "early-4");
            let v = admin(&ns, &["message", "id", &late[7].msg_id, "--topic", &topic]).unwrap();
            assert_eq!(v[0]["body"], "late-7");
            let v = admin(&ns, &["message", "key", &topic, "late-key"]).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 10);
            let (b, e) = (begin.to_string(), end.to_string());
            let v = admin(&ns, &["message", "range", &topic, "--begin", &b, "--end", &e, "--max", "100"]).unwrap();
            assert_eq!(v.as_array().unwrap().len(), 10);
            assert!(v.as_array().unwrap().iter().all(|m| m["body"].as_str().unwrap().starts_with("late-")));
            assert!(admin(&ns, &["message", "key", &topic, "no-such-key"]).is_err());
        }
    };
    check(false).await;
    // The indexes outlive a restart.
    p.shutdown().await;
    spate.restart();
    check(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_ordered_messages_keep_per_key_order_across_two_orderly_consumers() {
    use spate_client::{queue_by_hash, ConsumeOrderlyStatus};
    let dir = tempfile::tempdir().unwrap();
    let spate = common::Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let topic = unique("Ordered");
    admin(&ns, &["topic", "create", &topic, "-r", "8", "-w", "8"]).unwrap();
    const KEYS: usize = 50;
    const PER_KEY: usize = 200;
    let p = Producer::start(config(&ns, "p"), ProducerOptions::new(unique("pg"))).await.unwrap();
    for seq in 0..PER_KEY {
        for k in 0..KEYS {
            let msg = Message::new(&topic, format!("{k}:{seq}")).with_keys([format!("k{k}")]);
            p.send_with_selector(msg, |qs, _, key: &usize| queue_by_hash(qs, *key as i64), k).await.unwrap();
        }
    }

    // (consumer, queue, key, seq, when) for each message a listener accepted.
    type Log = Arc<Mutex<Vec<(usize, i32, usize, usize, Instant)>>>;
    let log: Log = Arc::default();
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let group = unique("og");
    let start = |who: usize| {
        let (log, failed_once, ns, topic, group) =
            (log.clone(), failed_once.clone(), ns.clone(), topic.clone(), group.clone());
        async move {
            let c = PushConsumer::new(config(&ns, &format!("oc{who}")), consumer_options(&group)).unwrap();
            c.subscribe(&topic, "*").unwrap();
            c.start(MessageListener::orderly(move |msgs, _| {
                let mut batch = Vec::new();
                for m in msgs {
                    let (k, seq) =
                        body(m).split_once(':').map(|(k, s)| (k.parse().unwrap(), s.parse().unwrap())).unwrap();
                    // One failure, retried in place: the queue waits, nothing is skipped.
                    if (k, seq) == (7, 50) && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
                        return ConsumeOrderlyStatus::SuspendCurrentQueueAMoment;
                    }
                    batch.push((who, m.queue_id, k, seq, Instant::now()));
                }
                log.lock().extend(batch);
                ConsumeOrderlyStatus::Success
            }))
            .await
            .unwrap();
            c
        }
    };
    let c1 = start(1).await;
    let c2 = start(2).await;
    let total = KEYS * PER_KEY;
    wait_until("a third consumed", Duration::from_secs(60), || log.lock().len() >= total / 3).await;
    // One consumer leaves mid-way; the other takes its queues over.
    c1.shutdown().await;
    let left_at = Instant::now();
    let seen =
        |log: &Log| log.lock().iter().map(|&(_, _, k, s, _)| (k, s)).collect::<std::collections::HashSet<_>>().len();
    wait_until("everything consumed", Duration::from_secs(90), || seen(&log) == total).await;
    c2.shutdown().await;
    p.shutdown().await;

    let log = log.lock().clone();
    assert!(failed_once.load(std::sync::atomic::Ordering::SeqCst), "the failure was injected");
    assert!(log.iter().any(|e| e.0 == 1) && log.iter().any(|e| e.0 == 2), "both consumers took part");
    assert!(log.iter().all(|e| e.0 == 2 || e.4 <= left_at), "nothing consumed by the one that left, after it left");
    // Per key, in each consumer's own stream, strictly increasing; where the
    // second takes over it may replay from the last committed offset, never
    // skipping one.
    let mut per_key: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
    for &(who, _, k, seq, _) in &log {
        per_key.entry(k).or_default().push((who, seq));
    }
    for (k, events) in &per_key {
        for who in [1, 2] {
            let own: Vec<usize> = events.iter().filter(|e| e.0 == who).map(|e| e.1).collect();
            assert!(
                own.windows(2).all(|w| w[1] == w[0] + 1),
                "key {k}, consumer {who}: out of order or a gap: {own:?}"
            );
        }
        let mut all: Vec<usize> = events.iter().map(|e| e.1).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..PER_KEY).collect::<Vec<_>>(), "key {k}: every message");
    }
    // A queue is never worked by both at once: per queue, consumer 1's
    // events all come before consumer 2's.
    let mut per_queue: HashMap<i32, Vec<(Instant, usize)>> = HashMap::new();
    for &(who, q, _, _, at) in &log {
        per_queue.entry(q).or_default().push((at, who));
    }
    for (q, mut events) in per_queue {
        events.sort();
        let switches = events.windows(2).filter(|w| w[0].1 != w[1].1).count();
        assert!(switches <= 1, "queue {q} changed hands {switches} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orderly_consumption_keeps_per_key_order_across_a_broker_restart() {
    use spate_client::{queue_by_hash, ConsumeOrderlyStatus};
    let dir = tempfile::tempdir().unwrap();
    let mut spate = common::Standalone::start(&dir.path().join("data"));
    let ns = spate.namesrv();
    let topic = unique("OrderedRestart");
    admin(&ns, &["topic", "create", &topic, "-r", "4", "-w", "4"]).unwrap();
    const KEYS: usize = 20;
    const PER_KEY: usize = 100;
    let send_round = |from: usize, to: usize| {
        let (ns, topic) = (ns.clone(), topic.clone());
        async move {
            let p = Producer::start(config(&ns, &unique("p")), ProducerOptions::new(unique("pg"))).await.unwrap();
            for seq in from..to {
                for k in 0..KEYS {
                    let msg = Message::new(&topic, format!("{k}:{seq}"));
                    p.send_with_selector(msg, |qs, _, key: &usize| queue_by_hash(qs, *key as i64), k).await.unwrap();
                }
            }
            p.shutdown().await;
        }
    };
    send_round(0, PER_KEY / 2).await;
    // Per key, the seqs in the order the listener accepted them.
    let log: Arc<Mutex<HashMap<usize, Vec<usize>>>> = Arc::default();
    let l2 = log.clone();
    let mut o = consumer_options(&unique("og"));
    o.pull_time_delay_when_broker_unreachable = Duration::from_millis(50);
    let c = PushConsumer::new(config(&ns, "oc"), o).unwrap();
    c.subscribe(&topic, "*").unwrap();
    c.start(MessageListener::orderly(move |msgs, _| {
        let mut log = l2.lock();
        for m in msgs {
            let (k, seq) = body(m).split_once(':').map(|(k, s)| (k.parse().unwrap(), s.parse().unwrap())).unwrap();
            log.entry(k).or_default().push(seq);
        }
        ConsumeOrderlyStatus::Success
    }))
    .await
    .unwrap();
    let consumed = |log: &Arc<Mutex<HashMap<usize, Vec<usize>>>>| log.lock().values().map(Vec::len).sum::<usize>();
    wait_until("some consumed", Duration::from_secs(30), || consumed(&log) >= KEYS * PER_KEY / 4).await;
    // The broker restarts under the consumer; the second half is sent after.
    spate.restart();
    send_round(PER_KEY / 2, PER_KEY).await;
    wait_until("every message after the restart", Duration::from_secs(90), || {
        let log = log.lock();
        (0..KEYS).all(|k| log.get(&k).is_some_and(|v| v.contains(&(PER_KEY - 1))))
    })
    .await;
    c.shutdown().await;
    for (k, seqs) in log.lock().iter() {
        // In order; a replay from the last committed offset may repeat a
        // stretch, but never reorders or skips.
        for w in seqs.windows(2) {
            assert!(w[1] == w[0] + 1 || w[1] <= w[0], "key {k}: {} after {}", w[1], w[0]);
        }
        let mut all = seqs.clone();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all, (0..PER_KEY).collect::<Vec<_>>(), "key {k}: every message");
    }
}
