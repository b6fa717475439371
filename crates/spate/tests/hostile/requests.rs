//! What the hostile client sends: proptest strategies for malformed and
//! semantically abusive requests. Pure generation; `hostile.rs` runs them.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::{select, Index};
use spate_remoting::request as r;

/// Where half messages wait (upstream's name).
pub const HALF_TOPIC: &str = "RMQ_SYS_TRANS_HALF_TOPIC";
/// Topics the broker owns; a hostile client names them anyway.
pub const SYSTEM_TOPICS: &[&str] = &[
    HALF_TOPIC,
    "RMQ_SYS_TRANS_OP_HALF_TOPIC",
    "SCHEDULE_TOPIC_XXXX",
    "rmq_sys_wheel_timer",
    "TBW102",
    "TRANS_CHECK_MAX_TIME_TOPIC",
    "%RETRY%hg0",
    "%DLQ%hg0",
    "%RETRY%%DLQ%x",
    "RMQ_SYS_TRACE_TOPIC",
    "SELF_TEST_TOPIC",
];
/// Producer and consumer groups the hostile client uses (so an
/// END_TRANSACTION can name the group its half was sent with).
pub const GROUPS: &[&str] = &["hg0", "hg1", "%RETRY%hg0", "CID_RMQ_SYS_TRANS", "%SCHEDULE%"];
/// How many plain topics the hostile client owns (`hostile_t0`..).
/// Probes and checks use other names, so nothing hostile touches them.
pub const OWN_TOPICS: usize = 5;
/// The topic of the pull flood: a few large acknowledged messages.
pub const FAT_TOPIC: &str = "hostile_fat";

/// Path-like names aimed at the canaries outside the data dir.
#[derive(Debug, Clone)]
pub struct Targets {
    pub paths: Vec<String>,
    /// End every generated `properties` string with 0x02 (exploration only,
    /// `SPATE_HOSTILE_SKIP=unterminated-properties`: gets past the known
    /// recovery bug to whatever lies behind it; same draws, same replay).
    pub terminate_properties: bool,
}

/// One hostile step.
#[derive(Debug, Clone)]
pub enum Action {
    /// A request framed by the client library (fields and body are hostile).
    Call { code: i32, fields: Vec<(String, String)>, body: Vec<u8>, binary_header: bool, to_namesrv: bool },
    /// A request aimed at an acknowledged message, filled in when run:
    /// `code` is END_TRANSACTION, CONSUMER_SEND_MSG_BACK or VIEW_MESSAGE_BY_ID;
    /// the header carries that message's offsets plus `offset_delta`.
    /// With `own_group`, END_TRANSACTION names the group the half was sent
    /// with; DELETE_TOPIC_IN_BROKER deletes the message's REAL_TOPIC (or topic).
    AtAcked {
        code: i32,
        target: Index,
        half_only: bool,
        own_group: bool,
        offset_delta: i64,
        fields: Vec<(String, String)>,
    },
    /// Raw bytes on a throwaway connection.
    Raw { bytes: Vec<u8> },
    /// Pulls of the fat topic written back to back on a connection that
    /// never reads; held open until the batch's check.
    PullFlood { pulls: usize },
}

impl Action {
    /// A short name for the totals.
    pub fn kind(&self) -> String {
        match self {
            Action::Call { code, to_namesrv: true, .. } => format!("namesrv:{}", code_name(*code)),
            Action::Call { code, .. } => code_name(*code).to_string(),
            Action::AtAcked { code, .. } => format!("{}@acked", code_name(*code)),
            Action::Raw { .. } => "raw-frame".into(),
            Action::PullFlood { .. } => "pull-flood".into(),
        }
    }
}

pub fn code_name(code: i32) -> &'static str {
    match code {
        r::SEND_MESSAGE => "SEND_MESSAGE",
        r::SEND_MESSAGE_V2 => "SEND_MESSAGE_V2",
        r::SEND_BATCH_MESSAGE => "SEND_BATCH_MESSAGE",
        r::PULL_MESSAGE => "PULL_MESSAGE",
        r::LITE_PULL_MESSAGE => "LITE_PULL_MESSAGE",
        r::QUERY_MESSAGE => "QUERY_MESSAGE",
        r::VIEW_MESSAGE_BY_ID => "VIEW_MESSAGE_BY_ID",
        r::HEART_BEAT => "HEART_BEAT",
        r::CONSUMER_SEND_MSG_BACK => "CONSUMER_SEND_MSG_BACK",
        r::END_TRANSACTION => "END_TRANSACTION",
        r::UPDATE_AND_CREATE_TOPIC => "UPDATE_AND_CREATE_TOPIC",
        r::DELETE_TOPIC_IN_BROKER => "DELETE_TOPIC_IN_BROKER",
        r::DELETE_TOPIC_IN_NAMESRV => "DELETE_TOPIC_IN_NAMESRV",
        r::GET_MAX_OFFSET => "GET_MAX_OFFSET",
        r::GET_MIN_OFFSET => "GET_MIN_OFFSET",
        r::SEARCH_OFFSET_BY_TIMESTAMP => "SEARCH_OFFSET_BY_TIMESTAMP",
        r::GET_EARLIEST_MSG_STORETIME => "GET_EARLIEST_MSG_STORETIME",
        r::QUERY_CONSUMER_OFFSET => "QUERY_CONSUMER_OFFSET",
        r::UPDATE_CONSUMER_OFFSET => "UPDATE_CONSUMER_OFFSET",
        r::UNREGISTER_CLIENT => "UNREGISTER_CLIENT",
        r::LOCK_BATCH_MQ => "LOCK_BATCH_MQ",
        r::UNLOCK_BATCH_MQ => "UNLOCK_BATCH_MQ",
        r::CHECK_CLIENT_CONFIG => "CHECK_CLIENT_CONFIG",
        r::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => "UPDATE_AND_CREATE_SUBSCRIPTIONGROUP",
        r::DELETE_SUBSCRIPTIONGROUP => "DELETE_SUBSCRIPTIONGROUP",
        r::GET_ROUTEINFO_BY_TOPIC => "GET_ROUTEINFO_BY_TOPIC",
        r::GET_CONSUME_STATS => "GET_CONSUME_STATS",
        _ => "other-code",
    }
}

/// Text with the characters that matter to RocketMQ's encodings.
fn text(max: usize) -> BoxedStrategy<String> {
    let ch = prop_oneof![
        6 => any::<char>(),
        3 => proptest::char::range('a', 'z'),
        1 => Just('\u{1}'),
        1 => Just('\u{2}'),
        1 => Just('\0'),
        1 => Just('/'),
        1 => Just('.'),
        1 => Just('\n'),
        1 => Just('%'),
    ];
    vec(ch, 0..max).prop_map(|c| c.into_iter().collect()).boxed()
}

/// Numbers as header text: edges, small values, and non-numbers.
fn num(small: std::ops::Range<i64>) -> BoxedStrategy<String> {
    prop_oneof![
        6 => small.prop_map(|n| n.to_string()),
        1 => select(vec![-1i64, i64::from(i32::MAX), i64::from(i32::MIN), i64::MAX, i64::MIN, 1 << 40, 2147483648])
            .prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => select(vec!["", "zero", "1e9", " 1", "0x10", "-", "99999999999999999999999"]).prop_map(str::to_string),
    ]
    .boxed()
}

pub fn topic(t: &Targets) -> BoxedStrategy<String> {
    prop_oneof![
        8 => (0..OWN_TOPICS).prop_map(|i| format!("hostile_t{i}")),
        3 => select(SYSTEM_TOPICS).prop_map(str::to_string),
        2 => select(t.paths.clone()),
        1 => select(vec!["", ".", "..", "a/b", "../x", "con", "topic with space", "x\u{0}y", "ÿ"]).prop_map(str::to_string),
        1 => (128usize..400).prop_map(|n| "t".repeat(n)),
        1 => text(24),
    ]
    .boxed()
}

fn group() -> BoxedStrategy<String> {
    prop_oneof![
        6 => select(GROUPS).prop_map(str::to_string),
        1 => select(vec!["", "a@b", "../g", "g/h", "%RETRY%", "%DLQ%"]).prop_map(str::to_string),
        1 => text(16),
    ]
    .boxed()
}

/// One property pair, keyed by the names the broker acts on.
fn pair(t: &Targets) -> BoxedStrategy<(String, String)> {
    let s = |k: &'static str, v: BoxedStrategy<String>| v.prop_map(move |v| (k.to_string(), v)).boxed();
    let timer = || {
        prop_oneof![num(0..5000), select(vec!["-1", "9223372036854775807", "1e3", "", "now"]).prop_map(str::to_string)]
            .boxed()
    };
    prop_oneof![
        3 => s("TAGS", prop_oneof![Just("a".to_string()), text(8)].boxed()),
        2 => s("KEYS", text(12)),
        2 => s("DELAY", prop_oneof![(1i64..19).prop_map(|n| n.to_string()), num(-2..40)].boxed()),
        2 => s("REAL_TOPIC", topic(t)),
        1 => s("REAL_QID", num(-1..5)),
        2 => s("TRAN_MSG", select(vec!["true", "false", "TRUE", ""]).prop_map(str::to_string).boxed()),
        2 => s("PGROUP", group()),
        1 => s("TIMER_DELIVER_MS", timer()),
        1 => s("TIMER_DELAY_SEC", timer()),
        1 => s("TIMER_DELAY_MS", timer()),
        1 => s("RETRY_TOPIC", topic(t)),
        1 => s("WAIT", select(vec!["true", "false", "yes"]).prop_map(str::to_string).boxed()),
        1 => s("UNIQ_KEY", text(32)),
        1 => s("TRANSACTION_CHECK_TIMES", num(0..20)),
        1 => (text(8), text(16)).boxed(),
    ]
    .boxed()
}

/// A `properties` header: mostly well-formed pairs, then the broken forms
/// (no final 0x02, stray separators, very long).
pub fn properties(t: &Targets) -> BoxedStrategy<String> {
    let terminate = t.terminate_properties;
    raw_properties(t)
        .prop_map(move |p| if terminate && !p.is_empty() && !p.ends_with('\u{2}') { p + "\u{2}" } else { p })
        .boxed()
}

fn raw_properties(t: &Targets) -> BoxedStrategy<String> {
    let encode =
        |pairs: Vec<(String, String)>| pairs.iter().map(|(k, v)| format!("{k}\u{1}{v}\u{2}")).collect::<String>();
    prop_oneof![
        6 => vec(pair(t), 0..5).prop_map(encode),
        2 => (vec(pair(t), 0..4), text(24)).prop_map(move |(p, tail)| encode(p) + &tail),
        1 => select(vec!["TAGS", "a\u{1}b", "\u{2}", "\u{1}\u{2}", "WAIT\u{1}true", "DELAY\u{1}3"]).prop_map(str::to_string),
        1 => text(64),
        1 => (1000usize..70_000).prop_map(|n| format!("KEYS\u{1}{}\u{2}", "k".repeat(n))),
    ]
    .boxed()
}

fn body() -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        8 => vec(any::<u8>(), 0..200),
        1 => Just(Vec::new()),
        1 => (4096usize..70_000).prop_map(|n| vec![0x5a; n]),
        1 => select(vec![(4 << 20) - 512, (4 << 20) + 1, 5 << 20]).prop_map(|n| vec![0xa5; n]),
    ]
    .boxed()
}

/// A batch body in upstream's layout, honest or with lying lengths.
fn batch_body(t: &Targets) -> BoxedStrategy<Vec<u8>> {
    let entry = (vec(any::<u8>(), 0..64), properties(t), any::<i32>(), 0i32..8).prop_map(|(b, p, flag, lie)| {
        let p = p.into_bytes();
        let honest = 20 + b.len() + 2 + p.len();
        let total = match lie {
            0 => i32::MAX,
            1 => honest as i32 + 9,
            2 => 3,
            _ => honest as i32,
        };
        let mut e = Vec::new();
        e.extend_from_slice(&total.to_be_bytes());
        e.extend_from_slice(&0i32.to_be_bytes());
        e.extend_from_slice(&crc32(&b).to_be_bytes());
        e.extend_from_slice(&flag.to_be_bytes());
        e.extend_from_slice(&(b.len() as i32).to_be_bytes());
        e.extend_from_slice(&b);
        e.extend_from_slice(&(p.len() as i16).to_be_bytes());
        e.extend_from_slice(&p);
        e
    });
    prop_oneof![
        6 => vec(entry, 1..5).prop_map(|es| es.concat()),
        1 => vec(any::<u8>(), 0..100),
    ]
    .boxed()
}

fn crc32(b: &[u8]) -> u32 {
    // Upstream clients send it; the broker does not check it: any value does.
    b.iter().fold(0u32, |h, x| h.rotate_left(5) ^ u32::from(*x))
}

/// Numbers that parse (edges of the field's type included).
fn int(small: std::ops::Range<i64>, edges: Vec<i64>) -> BoxedStrategy<String> {
    prop_oneof![8 => small.prop_map(|n| n.to_string()), 1 => select(edges).prop_map(|n| n.to_string())].boxed()
}

/// A send: three in four with numbers that parse, so most are stored.
fn send(t: &Targets) -> BoxedStrategy<Action> {
    prop_oneof![3 => send_with(t, true), 1 => send_with(t, false)].boxed()
}

fn send_with(t: &Targets, plausible: bool) -> BoxedStrategy<Action> {
    let i32_edges = vec![-1i64, i64::from(i32::MAX), i64::from(i32::MIN)];
    let n32 = |small: std::ops::Range<i64>| if plausible { int(small, i32_edges.clone()) } else { num(small) };
    let n64 = |small: std::ops::Range<i64>| {
        if plausible {
            int(small, vec![-1, i64::MAX, i64::MIN, 0])
        } else {
            num(small)
        }
    };
    let code = select(vec![r::SEND_MESSAGE, r::SEND_MESSAGE_V2, r::SEND_BATCH_MESSAGE]);
    let queue = prop_oneof![8 => (0i64..4).prop_map(|n| n.to_string()), 1 => n32(-3..20)];
    let fields = (
        group(),
        topic(t),
        prop_oneof![6 => Just("TBW102".to_string()), 1 => topic(t)],
        prop_oneof![6 => Just("4".to_string()), 1 => n32(-1..2000)],
        queue,
        prop_oneof![6 => Just("0".to_string()), 1 => (0i64..64).prop_map(|n| n.to_string()), 1 => n32(0..1)],
        n64(0..2_000_000_000_000),
        n32(0..4),
        properties(t),
        prop_oneof![6 => Just("0".to_string()), 1 => n32(0..20)],
        proptest::option::weighted(0.2, n32(0..20)),
        proptest::option::weighted(0.2, select(vec!["true", "false", "1"])),
    );
    (code, fields, body(), batch_body(t), any::<bool>(), vec(proptest::bool::weighted(0.1), 12))
        .prop_map(|(code, f, body, batch, binary, drop)| {
            let v2 = code == r::SEND_MESSAGE_V2 || code == r::SEND_BATCH_MESSAGE && binary;
            let named: Vec<(&str, &str, Option<String>)> = vec![
                ("producerGroup", "a", Some(f.0)),
                ("topic", "b", Some(f.1)),
                ("defaultTopic", "c", Some(f.2)),
                ("defaultTopicQueueNums", "d", Some(f.3)),
                ("queueId", "e", Some(f.4)),
                ("sysFlag", "f", Some(f.5)),
                ("bornTimestamp", "g", Some(f.6)),
                ("flag", "h", Some(f.7)),
                ("properties", "i", Some(f.8)),
                ("reconsumeTimes", "j", Some(f.9)),
                ("maxReconsumeTimes", "l", f.10),
                ("batch", "m", f.11.map(str::to_string)),
            ];
            // Each field is left out now and then (topic rarely).
            let fields = named
                .into_iter()
                .zip(drop)
                .filter(|((long, _, _), d)| !*d || *long == "topic" || *long == "properties" || *long == "queueId")
                .filter_map(|((long, short, v), _)| Some(((if v2 { short } else { long }).to_string(), v?)))
                .collect();
            let body = if code == r::SEND_BATCH_MESSAGE { batch } else { body };
            Action::Call { code, fields, body, binary_header: binary, to_namesrv: false }
        })
        .boxed()
}

/// A message stored straight into a system topic (half, schedule, timer)
/// with a path-like REAL_TOPIC: what END_TRANSACTION, the schedule or the
/// timer would later deliver to a topic of that name.
fn system_with_path(t: &Targets) -> BoxedStrategy<Action> {
    let extra = select(vec![
        (HALF_TOPIC, ""),
        ("SCHEDULE_TOPIC_XXXX", "DELAY\u{1}1\u{2}"),
        ("rmq_sys_wheel_timer", "TIMER_OUT_MS\u{1}1\u{2}TIMER_DELIVER_MS\u{1}1\u{2}"),
    ]);
    (select(t.paths.clone()), select(GROUPS), extra, vec(any::<u8>(), 1..32))
        .prop_map(|(path, group, (topic, extra), body)| Action::Call {
            code: r::SEND_MESSAGE,
            fields: vec![
                ("producerGroup".into(), group.to_string()),
                ("topic".into(), topic.into()),
                ("queueId".into(), "0".into()),
                ("sysFlag".into(), "0".into()),
                ("bornTimestamp".into(), "1".into()),
                (
                    "properties".into(),
                    format!("REAL_TOPIC\u{1}{path}\u{2}REAL_QID\u{1}0\u{2}PGROUP\u{1}{group}\u{2}{extra}"),
                ),
            ],
            body,
            binary_header: false,
            to_namesrv: false,
        })
        .boxed()
}

fn call(code: i32, fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<Action> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    // Each field is left out one time in ten.
    (values, vec(proptest::bool::weighted(0.9), names.len()), any::<bool>())
        .prop_map(move |(vals, keep, binary)| Action::Call {
            code,
            fields: names
                .iter()
                .zip(vals)
                .zip(keep)
                .filter(|(_, k)| *k)
                .map(|((n, v), _)| (n.to_string(), v))
                .collect(),
            body: Vec::new(),
            binary_header: binary,
            to_namesrv: false,
        })
        .boxed()
}

fn with_body(a: BoxedStrategy<Action>, body: BoxedStrategy<Vec<u8>>) -> BoxedStrategy<Action> {
    (a, body)
        .prop_map(|(mut a, b)| {
            if let Action::Call { body, .. } = &mut a {
                *body = b;
            }
            a
        })
        .boxed()
}

fn offset() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0i64..20).prop_map(|n| n.to_string()),
        2 => select(vec![-1i64, i64::MAX, i64::MIN, 1 << 40, 1 << 62, 33_554_432, 33_554_431]).prop_map(|n| n.to_string()),
        1 => num(0..1),
    ]
    .boxed()
}

fn pull(t: &Targets) -> BoxedStrategy<Action> {
    let code = select(vec![r::PULL_MESSAGE, r::LITE_PULL_MESSAGE]);
    let a = call(
        r::PULL_MESSAGE,
        vec![
            ("consumerGroup", group()),
            ("topic", topic(t)),
            ("queueId", num(-1..5)),
            ("queueOffset", offset()),
            ("maxMsgNums", num(0..100)),
            ("sysFlag", prop_oneof![Just("4".to_string()), num(0..16)].boxed()),
            ("commitOffset", offset()),
            ("suspendTimeoutMillis", prop_oneof![Just("0".to_string()), Just("50".to_string()), num(0..300)].boxed()),
            ("subscription", prop_oneof![Just("*".to_string()), Just("a || b".to_string()), text(20)].boxed()),
            ("expressionType", select(vec!["TAG", "SQL92", "sql92", "XPATH", ""]).prop_map(str::to_string).boxed()),
            ("maxMsgBytes", num(-1..100_000)),
        ],
    );
    (a, code)
        .prop_map(|(mut a, c)| {
            if let Action::Call { code, .. } = &mut a {
                *code = c;
            }
            a
        })
        .boxed()
}

fn heartbeat_body() -> BoxedStrategy<Vec<u8>> {
    let names = vec(prop_oneof![4 => group(), 1 => (0u32..100_000).prop_map(|n| format!("g{n}"))], 0..300);
    prop_oneof![
        4 => (text(12), names.clone(), names).prop_map(|(client, producers, consumers)| {
            let body = serde_json::json!({
                "clientID": client,
                "producerDataSet": producers.iter().map(|g| serde_json::json!({"groupName": g})).collect::<Vec<_>>(),
                "consumerDataSet": consumers.iter().map(|g| serde_json::json!({
                    "groupName": g, "consumeType": "CONSUME_PASSIVELY", "messageModel": "CLUSTERING",
                    "consumeFromWhere": "CONSUME_FROM_LAST_OFFSET", "unitMode": false,
                    "subscriptionDataSet": [{"topic": format!("hostile_t{}", g.len() % OWN_TOPICS), "subString": "*", "expressionType": "TAG"}],
                })).collect::<Vec<_>>(),
            });
            serde_json::to_vec(&body).unwrap_or_default()
        }),
        1 => text(64).prop_map(String::into_bytes),
        1 => Just(b"{\"clientID\":5,\"consumerDataSet\":{}}".to_vec()),
    ]
    .boxed()
}

fn group_config_body() -> BoxedStrategy<Vec<u8>> {
    (group(), num(-1..20), any::<bool>())
        .prop_map(|(g, retry, enable)| {
            format!(
                "{{\"groupName\":{},\"retryMaxTimes\":{retry:?},\"consumeEnable\":{enable},\"retryQueueNums\":{retry:?}}}",
                serde_json::Value::String(g)
            )
            .into_bytes()
        })
        .boxed()
}

/// Frames whose bytes lie: lengths, header types, JSON and binary headers.
fn raw_frame() -> BoxedStrategy<Action> {
    let frame = |meta: u32, header: Vec<u8>, body: Vec<u8>, total_lie: Option<i32>| {
        let total = total_lie.unwrap_or((4 + header.len() + body.len()) as i32);
        [&total.to_be_bytes()[..], &meta.to_be_bytes(), &header, &body].concat()
    };
    let json_text = prop_oneof![
        Just(r#"{"code":2147483648,"language":"JAVA","version":1,"opaque":1,"flag":0}"#.to_string()),
        Just(r#"{"code":-1,"opaque":-9223372036854775808,"flag":1}"#.to_string()),
        Just(r#"{"code":10,"opaque":7,"flag":0,"extFields":{"topic":5,"queueId":null}}"#.to_string()),
        Just(r#"{"code":"10","language":7}"#.to_string()),
        Just(r#"{"code":11,"opaque":3,"flag":2,"extFields":{"topic":"hostile_t0"}}"#.to_string()),
        Just("[]".to_string()),
        Just("null".to_string()),
        (1usize..5000).prop_map(|n| "[".repeat(n)),
        text(80),
    ];
    let binary = (any::<i16>(), any::<i32>(), any::<i32>(), any::<i32>(), vec(any::<u8>(), 0..40)).prop_map(
        |(code, remark_len, ext_len, flag, tail)| {
            let mut h = Vec::new();
            h.extend_from_slice(&code.to_be_bytes());
            h.push(12);
            h.extend_from_slice(&1i16.to_be_bytes());
            h.extend_from_slice(&1i32.to_be_bytes());
            h.extend_from_slice(&flag.to_be_bytes());
            h.extend_from_slice(&remark_len.to_be_bytes());
            h.extend_from_slice(&ext_len.to_be_bytes());
            h.extend_from_slice(&tail);
            h
        },
    );
    prop_oneof![
        2 => vec(any::<u8>(), 0..64),
        1 => select(vec![i32::MAX, -1, 0, 1, 3, 16 << 20, (16 << 20) + 1, i32::MIN]).prop_map(|n| n.to_be_bytes().to_vec()),
        3 => (json_text, vec(any::<u8>(), 0..16)).prop_map(move |(h, b)| frame(h.len() as u32, h.into_bytes(), b, None)),
        2 => (binary, vec(any::<u8>(), 0..16)).prop_map(move |(h, b)| frame((1 << 24) | h.len() as u32, h, b, None)),
        // Header length larger than the frame, or a serialize type that does not exist.
        2 => (any::<u32>(), vec(any::<u8>(), 0..32)).prop_map(move |(meta, h)| frame(meta, h, Vec::new(), None)),
        // The total length lies about what follows.
        1 => (any::<i32>(), vec(any::<u8>(), 0..32)).prop_map(move |(lie, h)| frame(h.len() as u32, h, Vec::new(), Some(lie))),
    ]
    .prop_map(|bytes| Action::Raw { bytes })
    .boxed()
}

fn at_acked() -> BoxedStrategy<Action> {
    let delta = prop_oneof![8 => Just(0i64), 1 => -64i64..64, 1 => select(vec![1i64, -1, 1 << 40, i64::MIN / 2])];
    let outcome = prop_oneof![6 => Just("8"), 2 => Just("12"), 1 => select(vec!["0", "4", "13", "-1", "x"])];
    let end_fields = (select(GROUPS), outcome, any::<bool>()).prop_map(|(g, kind, check)| {
        vec![
            ("producerGroup".to_string(), g.to_string()),
            ("commitOrRollback".to_string(), kind.to_string()),
            ("fromTransactionCheck".to_string(), check.to_string()),
        ]
    });
    let back_fields = (group(), num(-1..20), num(-2..20), text(8)).prop_map(|(g, max, level, origin)| {
        vec![
            ("group".to_string(), g),
            ("maxReconsumeTimes".to_string(), max),
            ("delayLevel".to_string(), level),
            ("originMsgId".to_string(), origin),
        ]
    });
    prop_oneof![
        4 => (any::<Index>(), any::<bool>(), proptest::bool::weighted(0.8), delta.clone(), end_fields).prop_map(
            |(target, half_only, own_group, offset_delta, fields)| Action::AtAcked {
                code: r::END_TRANSACTION,
                target,
                half_only: half_only || offset_delta == 0,
                own_group,
                offset_delta,
                fields,
            }
        ),
        2 => (any::<Index>(), delta.clone(), back_fields).prop_map(|(target, offset_delta, fields)| Action::AtAcked {
            code: r::CONSUMER_SEND_MSG_BACK, target, half_only: false, own_group: false, offset_delta, fields
        }),
        2 => (any::<Index>(), delta).prop_map(|(target, offset_delta)| Action::AtAcked {
            code: r::VIEW_MESSAGE_BY_ID, target, half_only: false, own_group: false, offset_delta, fields: Vec::new()
        }),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(target, half_only)| Action::AtAcked {
            code: r::DELETE_TOPIC_IN_BROKER, target, half_only, own_group: false, offset_delta: 0, fields: Vec::new()
        }),
    ]
    .boxed()
}

/// Every hostile step, weighted.
pub fn action(t: &Targets) -> BoxedStrategy<Action> {
    let queue_fields = |code| call(code, vec![("topic", topic(t)), ("queueId", num(-1..5)), ("timestamp", offset())]);
    let topic_admin = call(
        r::UPDATE_AND_CREATE_TOPIC,
        vec![
            ("topic", topic(t)),
            ("readQueueNums", num(0..10)),
            ("writeQueueNums", num(0..10)),
            ("perm", num(0..8)),
            ("topicFilterType", text(8)),
            ("order", select(vec!["true", "false", "1"]).prop_map(str::to_string).boxed()),
        ],
    );
    let offsets = (
        select(vec![r::QUERY_CONSUMER_OFFSET, r::UPDATE_CONSUMER_OFFSET]),
        call(
            r::UPDATE_CONSUMER_OFFSET,
            vec![("consumerGroup", group()), ("topic", topic(t)), ("queueId", num(-1..5)), ("commitOffset", offset())],
        ),
    )
        .prop_map(|(c, mut a)| {
            if let Action::Call { code, .. } = &mut a {
                *code = c;
            }
            a
        })
        .boxed();
    let namesrv = (
        select(vec![r::DELETE_TOPIC_IN_NAMESRV, r::GET_ROUTEINFO_BY_TOPIC, r::GET_BROKER_CLUSTER_INFO, 206, 224, 9999]),
        topic(t),
    )
        .prop_map(|(code, topic)| Action::Call {
            code,
            fields: vec![("topic".into(), topic.clone()), ("cluster".into(), topic)],
            body: Vec::new(),
            binary_header: false,
            to_namesrv: true,
        })
        .boxed();
    let unknown = (
        prop_oneof![any::<i32>(), 1000i32..1020, 200_000i32..200_100],
        vec((text(8), text(16)), 0..4),
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(code, fields, body)| {
            let code = if matches!(code, 25 | 103 | 104 | 921 | 922 | 923) { 9999 } else { code };
            Action::Call { code, fields, body, binary_header: false, to_namesrv: false }
        })
        .boxed();
    prop_oneof![
        30 => send(t),
        4 => system_with_path(t),
        8 => pull(t),
        8 => at_acked(),
        2 => call(r::VIEW_MESSAGE_BY_ID, vec![("offset", offset()), ("msgId", text(40))]),
        2 => call(r::QUERY_MESSAGE, vec![("topic", topic(t)), ("key", text(12)), ("maxNum", num(-1..100)),
            ("beginTimestamp", offset()), ("endTimestamp", offset())]),
        1 => queue_fields(r::GET_MAX_OFFSET),
        1 => queue_fields(r::GET_MIN_OFFSET),
        1 => queue_fields(r::SEARCH_OFFSET_BY_TIMESTAMP),
        1 => queue_fields(r::GET_EARLIEST_MSG_STORETIME),
        3 => with_body(call(r::HEART_BEAT, vec![]), heartbeat_body()),
        1 => call(r::UNREGISTER_CLIENT, vec![("clientID", text(12)), ("producerGroup", group()), ("consumerGroup", group())]),
        3 => topic_admin,
        3 => call(r::DELETE_TOPIC_IN_BROKER, vec![("topic", topic(t))]),
        2 => offsets,
        1 => with_body(call(r::LOCK_BATCH_MQ, vec![]), prop_oneof![text(40).prop_map(String::into_bytes), heartbeat_body()].boxed()),
        1 => with_body(call(r::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP, vec![]), group_config_body()),
        1 => call(r::DELETE_SUBSCRIPTIONGROUP, vec![("groupName", group())]),
        1 => with_body(call(r::CHECK_CLIENT_CONFIG, vec![]), text(60).prop_map(String::into_bytes).boxed()),
        1 => call(r::GET_CONSUME_STATS, vec![("consumerGroup", group()), ("topic", topic(t))]),
        2 => namesrv,
        2 => unknown,
        8 => raw_frame(),
        1 => (8usize..64).prop_map(|pulls| Action::PullFlood { pulls }),
    ]
    .boxed()
}
