//! The hardening issue's findings, each against a real `spate standalone`
//! process over real TCP: what an attacker or a buggy client sends must
//! not lose acknowledged messages, touch paths outside the data dir, stop
//! background delivery, or read back a message other than the one asked.

mod common;

use std::time::{Duration, Instant};

use common::{call, pull_req, raw_client, Standalone};
use spate_common::message::{decode_record, encode_properties, offset_msg_id, parse_offset_msg_id, NewMessage};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

/// A SEND_MESSAGE whose properties string is sent exactly as given.
fn send_raw_props(topic: &str, body: &[u8], props: &str) -> RemotingCommand {
    let mut req = common::send_req(topic, 0, body.to_vec());
    req.ext_fields.insert("properties".into(), props.into());
    req
}

/// Reads the record at an offset message id back (VIEW_MESSAGE_BY_ID).
async fn view(c: &RemotingClient, broker: &str, msg_id: &str) -> RemotingCommand {
    let (_, offset) = parse_offset_msg_id(msg_id).expect("an offset message id");
    call(c, broker, RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", offset as i64)).await
}

/// Every acknowledged (msg id, body) is readable with that body.
async fn assert_all_readable(c: &RemotingClient, broker: &str, acked: &[(String, Vec<u8>)], when: &str) {
    for (id, body) in acked {
        let r = view(c, broker, id).await;
        assert_eq!(r.code, response::SUCCESS, "{when}: acknowledged {id} is gone: {:?}", r.remark);
        let rec = decode_record(&r.body, false).expect("a record");
        assert_eq!(rec.body, &body[..], "{when}: {id} holds another body");
    }
}

/// Finding 1: a properties string that does not end in the separator used
/// to be acknowledged, then make recovery cut the log there at the next
/// start. Now it is stored in canonical form, and every message after it,
/// of every topic, survives a kill -9 and a clean stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_property_strings_never_cut_the_log_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let mut acked = Vec::new();
    let odd = ["TAGS", "a\u{1}b", "\u{2}\u{2}x", "k\u{1}v\u{2}tail", "\u{1}\u{1}\u{1}", "KEYS\u{1}a b\u{2}TAGS"];
    for (i, props) in odd.iter().enumerate() {
        for topic in ["OddA", "OddB"] {
            let body = format!("odd-{topic}-{i}").into_bytes();
            let r = call(&c, &spate.broker(), send_raw_props(topic, &body, props)).await;
            assert_eq!(r.code, response::SUCCESS, "{props:?}: {:?}", r.remark);
            acked.push((r.field("msgId").unwrap().to_string(), body));
            let body = format!("plain-{topic}-{i}").into_bytes();
            let r = call(&c, &spate.broker(), common::send_req("Plain", i as i32 % 4, body.clone())).await;
            assert_eq!(r.code, response::SUCCESS);
            acked.push((r.field("msgId").unwrap().to_string(), body));
        }
    }
    // What was stored is what upstream's broker stores: the pairs it parses.
    let first = view(&c, &spate.broker(), &acked[0].0).await;
    assert_eq!(decode_record(&first.body, true).expect("stored canonical").properties, "");
    assert_all_readable(&c, &spate.broker(), &acked, "before restart").await;
    spate.kill9();
    spate.restart();
    assert_all_readable(&c, &spate.broker(), &acked, "after kill -9").await;
    spate.restart();
    assert_all_readable(&c, &spate.broker(), &acked, "after a clean restart").await;
    assert!(!spate.log_text().contains("tail cut off"), "recovery cut the log");
}

/// Finding 2: a name sent in a property (REAL_TOPIC) or a header must never
/// become a path. Sends to system topics are refused; DELETE_TOPIC_IN_BROKER
/// refuses names that are not topic names; a canary directory outside the
/// data dir survives everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_names_never_reach_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let canary = dir.path().join("canary");
    std::fs::create_dir_all(canary.join("inner")).unwrap();
    std::fs::write(canary.join("inner/file"), b"keep me").unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let broker = spate.broker();
    let canary_path = canary.to_str().unwrap().to_string();
    for system in ["RMQ_SYS_TRANS_HALF_TOPIC", "SCHEDULE_TOPIC_XXXX", "rmq_sys_wheel_timer", "%DLQ%g", "RMQ_SYS_X"] {
        let props = [("REAL_TOPIC", canary_path.as_str()), ("REAL_QID", "0"), ("PGROUP", "pg"), ("TIMER_OUT_MS", "1")];
        let r = call(&c, &broker, common::send_req_with(system, 0, b"x".to_vec(), &props)).await;
        assert_eq!(r.code, response::NO_PERMISSION, "{system}: {:?}", r.remark);
    }
    // A retry topic only for a group the broker knows.
    let r = call(&c, &broker, common::send_req("%RETRY%nobody", 0, b"x".to_vec())).await;
    assert_eq!(r.code, response::SUBSCRIPTION_GROUP_NOT_EXIST, "{:?}", r.remark);
    // A half sent the proper way carries the broker's own REAL_TOPIC, whatever
    // the client put there; its commit lands in the real topic.
    let props = [("TRAN_MSG", "true"), ("PGROUP", "pg"), ("REAL_TOPIC", canary_path.as_str())];
    let r = call(&c, &broker, common::send_req_with("TxReal", 0, b"half".to_vec(), &props)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let (_, half_offset) = parse_offset_msg_id(r.field("msgId").unwrap()).unwrap();
    let end = |commit_log_offset: i64, queue_offset: i64| {
        RemotingCommand::request(request::END_TRANSACTION)
            .with("producerGroup", "pg")
            .with("tranStateTableOffset", queue_offset)
            .with("commitLogOffset", commit_log_offset)
            .with("commitOrRollback", 8)
    };
    // Forged offsets: negative, inside the record, past the end.
    for forged in [-1, half_offset as i64 + 7, i64::MAX] {
        let r = call(&c, &broker, end(forged, 0)).await;
        assert_ne!(r.code, response::SUCCESS, "END_TRANSACTION at forged offset {forged} accepted");
    }
    let r = call(&c, &broker, end(half_offset as i64, r.field("queueOffset").map_or(0, |q| q.parse().unwrap()))).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = call(&c, &broker, pull_req("TxReal", 0, 0, 0, "*")).await;
        if p.code == response::SUCCESS {
            break;
        }
        assert!(Instant::now() < deadline, "the committed message never reached its real topic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in [canary_path.as_str(), "../canary", "../../canary", "..", "a/b", ""] {
        let r = call(&c, &broker, RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", name)).await;
        assert_ne!(r.code, response::SUCCESS, "DELETE_TOPIC_IN_BROKER {name:?} accepted");
    }
    assert_eq!(std::fs::read(canary.join("inner/file")).unwrap(), b"keep me", "canary touched");
    let topics = call(&c, &broker, RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG)).await;
    assert!(!String::from_utf8_lossy(&topics.body).contains("canary"), "a path became a topic");
}

/// Finding 3: a poison message waiting in the schedule topic (one an older
/// build let in, planted here through the store while the broker is down)
/// is set aside with why, and delayed delivery goes on behind it, across
/// a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_never_stops_delayed_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let mut cfg = spate_store::StoreConfig::new(&data);
        cfg.mapped_file_size_commit_log = 33554432;
        let store = spate_store::MessageStore::open(cfg).unwrap();
        for (i, real) in ["/abs/path", "../../x", "SCHEDULE_TOPIC_XXXX"].iter().enumerate() {
            let props = encode_properties([("REAL_TOPIC", *real), ("REAL_QID", "0"), ("DELAY", "1")]).unwrap();
            let poison = NewMessage {
                topic: "SCHEDULE_TOPIC_XXXX".into(),
                queue_id: 0,
                flag: 0,
                body: bytes::Bytes::from(format!("poison-{i}")),
                properties: props,
                sys_flag: 0,
                born_timestamp: 1,
                born_host: "127.0.0.1:1".parse().unwrap(),
                store_host: "127.0.0.1:2".parse().unwrap(),
                reconsume_times: 0,
                prepared_tx_offset: 0,
            };
            store.put_message(&poison).unwrap();
        }
        store.shutdown().unwrap();
    }
    let mut spate = Standalone::start(&data);
    let c = raw_client();
    let broker = spate.broker();
    let delayed = |body: &str| common::send_req_with("Later", 0, body.as_bytes().to_vec(), &[("DELAY", "1")]);
    let r = call(&c, &broker, delayed("after-poison")).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let delivered = |n: usize| {
        let c = &c;
        let broker = broker.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let p = call(c, &broker, pull_req("Later", 0, 0, 0, "*")).await;
                let got = if p.code == response::SUCCESS { common_records(&p.body) } else { 0 };
                if got >= n {
                    return;
                }
                assert!(Instant::now() < deadline, "delayed delivery stopped: {got} of {n} delivered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    delivered(1).await;
    let aside = call(&c, &broker, pull_req("RMQ_SYS_SPATE_UNDELIVERABLE", 0, 0, 0, "*")).await;
    assert_eq!(aside.code, response::SUCCESS, "nothing set aside: {:?}", aside.remark);
    assert_eq!(common_records(&aside.body), 3, "every poison message kept aside");
    let first = decode_record(&aside.body, false).unwrap();
    assert_eq!(first.body, b"poison-0");
    assert!(first.property("SPATE_UNDELIVERABLE_REASON").is_some_and(|r| !r.is_empty()));
    // Still flowing after a restart: the poison is behind the progress mark.
    spate.restart();
    let r = call(&c, &spate.broker(), delayed("after-restart")).await;
    assert_eq!(r.code, response::SUCCESS);
    delivered(2).await;
    assert!(spate.log_text().contains("undeliverable message set aside"), "set-aside not logged");
    // An operator sees them, with where they were going and why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", &spate.namesrv(), "--json", "undeliverable", "list"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().expect("a list");
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!(rows[0]["real_topic"], "/abs/path");
    assert_eq!(rows[0]["from"], "schedule");
    assert!(rows[0]["reason"].as_str().is_some_and(|r| r.contains("destination")), "{:?}", rows[0]);
}

fn common_records(mut body: &[u8]) -> usize {
    let mut n = 0;
    while let Ok(r) = decode_record(body, false) {
        n += 1;
        body = &body[r.total_size..];
    }
    n
}

/// Finding 6 (tables): one HEART_BEAT naming thousands of groups creates a
/// bounded number; names that are not names are refused whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_heartbeat_cannot_fill_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let broker = spate.broker();
    let group = |name: &str| {
        serde_json::json!({"groupName": name, "consumeType": "CONSUME_PASSIVELY", "messageModel": "CLUSTERING",
            "consumeFromWhere": "CONSUME_FROM_LAST_OFFSET", "subscriptionDataSet": [], "unitMode": false})
    };
    let hb = |groups: Vec<serde_json::Value>| {
        let body = serde_json::json!({"clientID": "hostile@1", "producerDataSet": [], "consumerDataSet": groups});
        RemotingCommand::request(request::HEART_BEAT).with_body(serde_json::to_vec(&body).unwrap())
    };
    // Any number of groups may be named, but one heartbeat creates at most
    // heartbeatMaxNewGroups (64) of them and their retry topics.
    let many: Vec<_> = (0..2000).map(|i| group(&format!("flood{i}"))).collect();
    let r = call(&c, &broker, hb(many)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let count = |body: &[u8], prefix: &str| String::from_utf8_lossy(body).matches(prefix).count();
    let groups = call(&c, &broker, RemotingCommand::request(request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG)).await;
    // Each group appears as a key and as its groupName.
    assert_eq!(count(&groups.body, "\"flood"), 2 * 64, "groups created by one heartbeat");
    let topics = call(&c, &broker, RemotingCommand::request(request::GET_ALL_TOPIC_CONFIG)).await;
    assert_eq!(count(&topics.body, "\"%RETRY%flood"), 2 * 64, "retry topics created by one heartbeat");
    for bad in ["../x", "/abs", &"g".repeat(128)] {
        let r = call(&c, &broker, hb(vec![group(bad)])).await;
        assert_eq!(r.code, response::INVALID_PARAMETER, "{bad:?}: {:?}", r.remark);
    }
    let r = call(&c, &broker, hb(vec![group("fine")])).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let groups = call(&c, &broker, RemotingCommand::request(request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG)).await;
    let text = String::from_utf8_lossy(&groups.body);
    assert!(text.contains("fine") && !text.contains("../x"), "{text}");
}

/// Finding 7: forged offsets are refused, not clamped to another message or
/// read as a record planted inside a body; a reconsume count at i32::MAX
/// does not wrap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_offsets_and_counts_read_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let broker = spate.broker();
    let r = call(&c, &broker, common::send_req("First", 0, b"the first message".to_vec())).await;
    assert_eq!(r.code, response::SUCCESS);
    let first_id = r.field("msgId").unwrap().to_string();
    let (_, first_offset) = parse_offset_msg_id(&first_id).unwrap();
    let first_size = view(&c, &broker, &first_id).await.body.len() as u64;
    // The next message (nothing else writes meanwhile) starts right after
    // the first; its body 88 bytes into it (IPv4 hosts). A record planted
    // there is intact and names its own offset: only the consume queue can
    // tell it from a real one (its unit for First/0/0 points elsewhere).
    let carrier_at = first_offset + first_size;
    let planted_at = carrier_at + 88;
    let mut planted = Vec::new();
    let fake = NewMessage {
        topic: "First".into(),
        queue_id: 0,
        flag: 0,
        body: bytes::Bytes::from_static(b"forged record"),
        properties: String::new(),
        sys_flag: 0,
        born_timestamp: 1,
        born_host: "127.0.0.1:1".parse().unwrap(),
        store_host: "127.0.0.1:2".parse().unwrap(),
        reconsume_times: i32::MAX,
        prepared_tx_offset: 0,
    };
    let slots = spate_common::message::encode_record(&fake, 1024, &mut planted).unwrap();
    spate_common::message::patch_record(&mut planted, slots, 0, planted_at as i64, 1);
    let r = call(&c, &broker, common::send_req("Carrier", 0, planted.clone())).await;
    assert_eq!(r.code, response::SUCCESS);
    let (_, carrier) = parse_offset_msg_id(r.field("msgId").unwrap()).unwrap();
    assert_eq!(carrier, carrier_at, "the carrier landed where the test planned");
    let whole = view(&c, &broker, r.field("msgId").unwrap()).await;
    let body_at = whole.body.windows(planted.len()).position(|w| w == &planted[..]).unwrap() as u64;
    assert_eq!(carrier + body_at, planted_at, "the planted record sits where it says it does");
    for forged in [-1i64, i64::MAX, planted_at as i64, carrier as i64 + 1] {
        let r = call(&c, &broker, RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", forged)).await;
        assert_ne!(r.code, response::SUCCESS, "VIEW_MESSAGE_BY_ID {forged} returned a message");
        let back = RemotingCommand::request(request::CONSUMER_SEND_MSG_BACK)
            .with("offset", forged)
            .with("group", "cg")
            .with("delayLevel", 0)
            .with("maxReconsumeTimes", 16);
        let r = call(&c, &broker, back).await;
        assert_ne!(r.code, response::SUCCESS, "CONSUMER_SEND_MSG_BACK {forged} stored something");
    }
    let id = offset_msg_id(spate.broker().parse().unwrap(), u64::MAX);
    let r = call(&c, &broker, RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("msgId", id)).await;
    assert_ne!(r.code, response::SUCCESS, "an overflowing msgId offset was read");

    // A message whose reconsume count is i32::MAX goes to the DLQ on its
    // next failure; the stored count does not wrap negative.
    let mut max = common::send_req("Retried", 0, b"tired".to_vec());
    max.ext_fields.insert("reconsumeTimes".into(), i32::MAX.to_string());
    let r = call(&c, &broker, max).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let (_, offset) = parse_offset_msg_id(r.field("msgId").unwrap()).unwrap();
    let back = RemotingCommand::request(request::CONSUMER_SEND_MSG_BACK)
        .with("offset", offset as i64)
        .with("group", "cg")
        .with("delayLevel", 0)
        .with("maxReconsumeTimes", 16);
    let r = call(&c, &broker, back).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    let dlq = call(&c, &broker, pull_req("%DLQ%cg", 0, 0, 0, "*")).await;
    assert_eq!(dlq.code, response::SUCCESS, "{:?}", dlq.remark);
    assert_eq!(decode_record(&dlq.body, false).unwrap().reconsume_times, i32::MAX);
    // Negative counts in a header are refused.
    let mut neg = common::send_req("Retried", 0, b"x".to_vec());
    neg.ext_fields.insert("reconsumeTimes".into(), "-5".into());
    assert_eq!(call(&c, &broker, neg).await.code, response::INVALID_PARAMETER);
}

/// Finding 7 (first send): creating a topic persists the topic table; that
/// wait is the broker's, and must not count against the request's
/// `waitTimeMillsInSendQueue`, or the first send to every new topic is
/// refused SYSTEM_BUSY on a disk whose sync takes longer than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_send_is_not_refused_for_the_topic_tables_sync() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start_with(&dir.path().join("data"), &["waitTimeMillsInSendQueue=1"]);
    let c = raw_client();
    let mut busy = 0;
    for i in 0..20 {
        let r = call(&c, &spate.broker(), common::send_req(&format!("Fresh{i}"), 0, b"first".to_vec())).await;
        if r.code == response::SYSTEM_BUSY {
            busy += 1;
        } else {
            assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
        }
    }
    // A loaded test machine may stall a request past 1 ms now and then;
    // before the fix every first send waited for an fsync.
    assert!(busy <= 3, "{busy} of 20 first sends refused SYSTEM_BUSY");
}
