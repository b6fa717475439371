//! The put path as a property: arbitrary property strings, bodies, flags
//! and header values sent to a real broker over TCP; whatever it
//! acknowledges must be readable, with the same body, after every restart,
//! clean (SIGTERM) and unclean (kill -9) in turn.
//!
//! Seeded: `SPATE_PUT_PATH_SEED` replays a run, `SPATE_PUT_PATH_CASES` sets
//! how many messages are sent (default 240, in batches of 40 with a restart
//! after each).

mod common;

use common::{call, raw_client, Standalone};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use spate_common::message::{canonical_properties, decode_record, parse_offset_msg_id};
use spate_remoting::{request, response, RemotingCommand};

/// One generated send.
#[derive(Debug, Clone)]
struct Send {
    v2: bool,
    topic: &'static str,
    queue_id: i32,
    properties: String,
    body: Vec<u8>,
    flag: i32,
    sys_flag: i32,
    born_timestamp: i64,
    reconsume_times: i32,
}

/// Property strings as an attacker writes them: separators anywhere, keys
/// the broker acts on, long values, any Unicode.
fn properties() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\u{1}".to_string()),
        Just("\u{2}".to_string()),
        Just("\u{0}".to_string()),
        Just("TAGS".to_string()),
        Just("KEYS".to_string()),
        Just("UNIQ_KEY".to_string()),
        Just("REAL_TOPIC\u{1}/abs/path\u{2}".to_string()),
        Just("REAL_QID\u{1}99999\u{2}".to_string()),
        Just("DELAY\u{1}".to_string()),
        Just("TIMER_DELIVER_MS\u{1}".to_string()),
        "[a-zA-Z0-9 ]{0,12}",
        "\\PC{0,8}",
        "[0-9-]{1,20}",
    ];
    proptest::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

fn send() -> impl Strategy<Value = Send> {
    (
        any::<bool>(),
        prop_oneof![Just("PutA"), Just("PutB"), Just("PutC")],
        prop_oneof![4 => Just(-1), 4 => 0..4, 1 => Just(i32::MAX), 1 => Just(i32::MIN)],
        properties(),
        proptest::collection::vec(any::<u8>(), 0..300),
        any::<i32>(),
        prop_oneof![Just(0), any::<i32>()],
        any::<i64>(),
        prop_oneof![3 => Just(0), 1 => 0..i32::MAX, 1 => Just(i32::MAX), 1 => any::<i32>()],
    )
        .prop_map(|(v2, topic, queue_id, properties, body, flag, sys_flag, born_timestamp, reconsume_times)| {
            Send { v2, topic, queue_id, properties, body, flag, sys_flag, born_timestamp, reconsume_times }
        })
}

fn request(s: &Send) -> RemotingCommand {
    let fields: [(&str, &str, String); 10] = [
        ("producerGroup", "a", "pg".into()),
        ("topic", "b", s.topic.into()),
        ("defaultTopic", "c", "TBW102".into()),
        ("defaultTopicQueueNums", "d", "4".into()),
        ("queueId", "e", s.queue_id.to_string()),
        ("sysFlag", "f", s.sys_flag.to_string()),
        ("bornTimestamp", "g", s.born_timestamp.to_string()),
        ("flag", "h", s.flag.to_string()),
        ("properties", "i", s.properties.clone()),
        ("reconsumeTimes", "j", s.reconsume_times.to_string()),
    ];
    let code = if s.v2 { request::SEND_MESSAGE_V2 } else { request::SEND_MESSAGE };
    let mut req = RemotingCommand::request(code).with_body(s.body.clone());
    for (long, short, v) in fields {
        req = req.with(if s.v2 { short } else { long }, v);
    }
    req
}

/// What was acknowledged: the offset message id and what was sent.
struct Acked {
    msg_id: String,
    sent: Send,
}

async fn check_all(spate: &Standalone, acked: &[Acked], seed: u64, when: &str) {
    let c = raw_client();
    for a in acked {
        let (_, offset) = parse_offset_msg_id(&a.msg_id).expect("an offset msg id");
        let r = call(
            &c,
            &spate.broker(),
            RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", offset as i64),
        )
        .await;
        assert_eq!(
            r.code,
            response::SUCCESS,
            "seed {seed}, {when}: acknowledged {} gone ({:?}); it was {:?}",
            a.msg_id,
            r.remark,
            a.sent
        );
        let rec = decode_record(&r.body, true)
            .unwrap_or_else(|e| panic!("seed {seed}, {when}: {} unreadable: {e}; it was {:?}", a.msg_id, a.sent));
        assert_eq!(rec.body, &a.sent.body[..], "seed {seed}, {when}: {} holds another body", a.msg_id);
        assert_eq!(rec.flag, a.sent.flag, "seed {seed}, {when}: flag of {}", a.msg_id);
        // Where no property moved it elsewhere, what is kept is exactly what
        // upstream's broker keeps of the string sent.
        if rec.topic == a.sent.topic {
            assert_eq!(rec.properties, canonical_properties(&a.sent.properties), "seed {seed}, {when}: properties");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whatever_is_acknowledged_survives_restarts() {
    let seed: u64 = std::env::var("SPATE_PUT_PATH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261205);
    let cases: usize = std::env::var("SPATE_PUT_PATH_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(240);
    eprintln!("put-path property: seed {seed}, {cases} sends (SPATE_PUT_PATH_SEED replays)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes));
    let dir = tempfile::tempdir().unwrap();
    let mut spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let mut acked = Vec::new();
    let mut codes = std::collections::BTreeMap::new();
    for batch in 0..cases.div_ceil(40) {
        for _ in 0..40 {
            let s = send().new_tree(&mut runner).expect("a value").current();
            let r = call(&c, &spate.broker(), request(&s)).await;
            *codes.entry(r.code).or_insert(0u32) += 1;
            if r.code == response::SUCCESS {
                let msg_id = r.field("msgId").expect("an acknowledged send names its message").to_string();
                acked.push(Acked { msg_id, sent: s });
            }
        }
        check_all(&spate, &acked, seed, &format!("batch {batch} before restart")).await;
        if batch % 2 == 0 {
            spate.kill9();
            spate.restart();
        } else {
            spate.restart();
        }
        check_all(&spate, &acked, seed, &format!("batch {batch} after {} restart", ["kill -9", "clean"][batch % 2]))
            .await;
    }
    eprintln!("answers by code: {codes:?}; acknowledged {}", acked.len());
    // The generator must reach the put path, not only its refusals.
    assert!(acked.len() * 3 >= cases, "only {} of {cases} sends acknowledged: {codes:?}", acked.len());
}
