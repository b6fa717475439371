//! The broker and name server over real TCP in a real `spate standalone`
//! process: sends, pulls, long polling, offsets, topics, and bad input.

mod common;

use std::time::{Duration, Instant};

use common::{call, pull_req, raw_client, Standalone};
use spate_common::message::{decode_record, encode_properties};
use spate_remoting::protocol::{json, TopicRouteData};
use spate_remoting::{request, response, RemotingCommand, SerializeType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn send_req(topic: &str, queue_id: i32, body: &[u8], tags: &str) -> RemotingCommand {
    common::send_req_with(topic, queue_id, body.to_vec(), &[("TAGS", tags), ("KEYS", "k1")])
}

fn records(body: &[u8]) -> Vec<(Vec<u8>, String)> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let r = decode_record(rest, true).expect("pull body holds whole records");
        out.push((r.body.to_vec(), r.property("TAGS").unwrap_or_default().to_string()));
        rest = &rest[r.total_size..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_pull_offsets_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let broker = spate.broker();

    // First send auto-creates the topic from TBW102.
    let r = call(&c, &broker, send_req("Orders", 1, b"hello", "TagA")).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(r.field("queueOffset"), Some("0"));
    assert_eq!(r.field("msgId").map(str::len), Some(32));
    // The binary header encoding works too, and is answered in kind.
    let mut bin = send_req("Orders", 1, b"world", "TagB");
    bin.serialize_type = SerializeType::RocketMq;
    let r = call(&c, &broker, bin).await;
    assert_eq!((r.code, r.serialize_type), (response::SUCCESS, SerializeType::RocketMq));
    assert_eq!(r.field("queueOffset"), Some("1"));

    // The route appears on the name server soon after (registration on topic change).
    let deadline = Instant::now() + Duration::from_secs(5);
    let route = loop {
        let r = call(
            &c,
            &spate.namesrv(),
            RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Orders"),
        )
        .await;
        if r.code == response::SUCCESS {
            break json::decode::<TopicRouteData>(&r.body, "route").unwrap();
        }
        assert!(Instant::now() < deadline, "route never appeared: {:?}", r.remark);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(route.queue_datas[0].write_queue_nums, 4);
    assert!(String::from_utf8_lossy(
        &call(&c, &spate.namesrv(), RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", "Orders"))
            .await
            .body
    )
    .contains("{0:\""));

    // Pull both, then with a tag filter (spaces around ||).
    let r = call(&c, &broker, pull_req("Orders", 1, 0, 0, "*")).await;
    assert_eq!(r.code, response::SUCCESS);
    assert_eq!(records(&r.body), vec![(b"hello".to_vec(), "TagA".into()), (b"world".to_vec(), "TagB".into())]);
    assert_eq!(r.field("nextBeginOffset"), Some("2"));
    let r = call(&c, &broker, pull_req("Orders", 1, 0, 0, "TagB || TagC")).await;
    assert_eq!(records(&r.body), vec![(b"world".to_vec(), "TagB".into())]);

    // Offsets: max/min, commit and query.
    let r =
        call(&c, &broker, RemotingCommand::request(request::GET_MAX_OFFSET).with("topic", "Orders").with("queueId", 1))
            .await;
    assert_eq!(r.field("offset"), Some("2"));
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "cg")
        .with("topic", "Orders")
        .with("queueId", 1)
        .with("commitOffset", 2);
    assert_eq!(call(&c, &broker, commit).await.code, response::SUCCESS);
    let q = RemotingCommand::request(request::QUERY_CONSUMER_OFFSET)
        .with("consumerGroup", "cg")
        .with("topic", "Orders")
        .with("queueId", 1);
    assert_eq!(call(&c, &broker, q).await.field("offset"), Some("2"));

    // LITE_PULL_MESSAGE (Java's lite pull consumer) is a pull too.
    let mut lite = pull_req("Orders", 1, 0, 0, "*");
    lite.code = request::LITE_PULL_MESSAGE;
    assert_eq!(records(&call(&c, &broker, lite).await.body).len(), 2);

    // Query by key and view by id.
    let r = call(
        &c,
        &broker,
        RemotingCommand::request(request::QUERY_MESSAGE)
            .with("topic", "Orders")
            .with("key", "k1")
            .with("maxNum", 10)
            .with("beginTimestamp", 0)
            .with("endTimestamp", i64::MAX),
    )
    .await;
    assert_eq!((r.code, records(&r.body).len()), (response::SUCCESS, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_answers_within_milliseconds_of_a_store() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = std::sync::Arc::new(raw_client());
    let broker = spate.broker();
    assert_eq!(call(&c, &broker, send_req("LP", 0, b"first", "a")).await.code, response::SUCCESS);
    let mut took = Vec::new();
    for i in 1..=20i64 {
        let (c2, b2) = (c.clone(), broker.clone());
        let waiter = tokio::spawn(async move {
            let r = call(&c2, &b2, pull_req("LP", 0, i, 10_000, "*")).await;
            (r, Instant::now())
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        if waiter.is_finished() {
            let (r, _) = waiter.await.unwrap();
            panic!("pull {i} was answered before any message arrived: code {} {:?}", r.code, r.remark);
        }
        let sent_at = Instant::now();
        assert_eq!(call(&c, &broker, send_req("LP", 0, b"next", "a")).await.code, response::SUCCESS);
        let (r, answered_at) = waiter.await.unwrap();
        assert_eq!(r.code, response::SUCCESS);
        took.push(answered_at.saturating_duration_since(sent_at));
    }
    took.sort();
    let (median, worst) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("long-poll send-to-pull-answer: median {median:?}, worst {worst:?}");
    // Includes the send's own round trip; a periodic scan would put the
    // median near a second. Numbers: BENCHMARKS.md (e2e_latency).
    assert!(median < Duration::from_millis(50), "median wake-up {median:?}");
    // A held pull times out with PULL_NOT_FOUND.
    let t = Instant::now();
    let r = call(&c, &broker, pull_req("LP", 0, 21, 300, "*")).await;
    assert_eq!(r.code, response::PULL_NOT_FOUND);
    assert!(t.elapsed() >= Duration::from_millis(290));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_errors_and_the_broker_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let broker = spate.broker();
    let healthy = || send_req("Healthy", 0, b"ok", "t");
    assert_eq!(call(&c, &broker, healthy()).await.code, response::SUCCESS);

    // Garbage bytes, a frame claiming 2 GiB, a truncated header: connection closed.
    for garbage in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        (i32::MAX).to_be_bytes().to_vec(),
        [&40i32.to_be_bytes()[..], &[0, 0, 0, 30], b"{\"code\":10,"].concat(),
    ] {
        let mut s = tokio::net::TcpStream::connect(&broker).await.unwrap();
        s.write_all(&garbage).await.unwrap();
        let mut buf = [0u8; 64];
        // The truncated one waits for more bytes: close our side to finish it.
        let _ = s.shutdown().await;
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.expect("closed").unwrap_or(0);
        assert_eq!(n, 0);
        assert_eq!(call(&c, &broker, healthy()).await.code, response::SUCCESS);
    }

    // Unknown request code.
    let r = call(&c, &broker, RemotingCommand::request(9999)).await;
    assert_eq!(r.code, response::REQUEST_CODE_NOT_SUPPORTED);
    // Illegal topic name.
    let r = call(&c, &broker, send_req("bad topic!", 0, b"x", "t")).await;
    assert_eq!(r.code, response::INVALID_PARAMETER, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("bad topic!"));
    // A 5 MiB body: above maxMessageSize (4 MiB), below the frame limit.
    let r = call(&c, &broker, send_req("Healthy", 0, &vec![7u8; 5 * 1024 * 1024], "t")).await;
    assert_eq!(r.code, response::MESSAGE_ILLEGAL, "{:?}", r.remark);
    // Missing and malformed header fields, undecodable bodies.
    let r = call(&c, &broker, RemotingCommand::request(request::PULL_MESSAGE).with("topic", "Healthy")).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    assert!(r.remark.unwrap_or_default().contains("consumerGroup"));
    let r = call(&c, &broker, pull_req("Healthy", 0, 0, 0, "*").with("queueOffset", "zero")).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    let r = call(&c, &broker, RemotingCommand::request(request::HEART_BEAT).with_body(&b"{not json"[..])).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    let r = call(
        &c,
        &broker,
        RemotingCommand::request(request::SEND_BATCH_MESSAGE)
            .with("topic", "Healthy")
            .with("queueId", 0)
            .with_body(&[0u8, 0, 0, 99, 1][..]),
    )
    .await;
    assert_eq!(r.code, response::MESSAGE_ILLEGAL);
    // A transactional half message is stored but hidden (the count of
    // Healthy's messages below does not include it).
    let props = encode_properties([("TRAN_MSG", "true"), ("PGROUP", "pg")]).unwrap();
    let r = call(&c, &broker, send_req("Healthy", 0, b"half", "t").with("sysFlag", 4).with("properties", props)).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    // Ending a transaction that does not exist is a clear error.
    let end = RemotingCommand::request(request::END_TRANSACTION)
        .with("producerGroup", "pg")
        .with("tranStateTableOffset", 999)
        .with("commitLogOffset", 1i64 << 40)
        .with("commitOrRollback", 8)
        .with("fromTransactionCheck", false);
    let r = call(&c, &broker, end).await;
    assert_eq!(r.code, response::SYSTEM_ERROR, "{:?}", r.remark);
    // CHECK_CLIENT_CONFIG: a SQL92 subscription is checked before a consumer starts.
    let check = |sql: &str| {
        let body = serde_json::json!({"clientId": "c", "group": "g",
            "subscriptionData": {"topic": "Healthy", "subString": sql, "expressionType": "SQL92"}});
        RemotingCommand::request(request::CHECK_CLIENT_CONFIG).with_body(serde_json::to_vec(&body).unwrap())
    };
    assert_eq!(call(&c, &broker, check("a > 1 AND b = 'x'")).await.code, response::SUCCESS);
    let r = call(&c, &broker, check("a >")).await;
    assert_eq!(r.code, response::SUBSCRIPTION_PARSE_FAILED, "{:?}", r.remark);
    // A delayed message cannot travel in a batch (one queue, in order).
    let delayed = spate_client::Message::new("Healthy", "later").with_delay_level(3);
    let body = spate_client::message::encode_batch(&[delayed]).unwrap();
    let mut batch = send_req("Healthy", 0, b"", "t");
    batch.code = request::SEND_BATCH_MESSAGE;
    batch.body = body;
    let r = call(&c, &broker, batch).await;
    assert_eq!(r.code, response::MESSAGE_ILLEGAL, "{:?}", r.remark);
    assert!(r.remark.unwrap_or_default().contains("delayed"));
    // Group names with characters that would corrupt offset keys.
    let r = call(&c, &broker, pull_req("Healthy", 0, 0, 0, "*").with("consumerGroup", "a@b")).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    // A pull on a queue the topic does not have.
    let r = call(&c, &broker, pull_req("Healthy", 999, 0, 0, "*")).await;
    assert_eq!(r.code, response::SYSTEM_ERROR);
    assert!(r.remark.unwrap_or_default().contains("queueId[999] is illegal"));
    // Still serving, and nothing stored was damaged.
    assert_eq!(call(&c, &broker, healthy()).await.code, response::SUCCESS);
    // (Dispatch follows the acknowledgement closely; poll briefly.)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = call(&c, &broker, pull_req("Healthy", 0, 0, 0, "*")).await;
        let n = records(&r.body).len();
        if n == 5 {
            break;
        }
        assert!(n < 5 && Instant::now() < deadline, "expected 5 stored messages, pulled {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_lookup_requests() {
    use spate_remoting::protocol::{ConsumerListBody, HeartbeatData, KvTable};
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let c = raw_client();
    let b = spate.broker();
    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let mut msg_ids = Vec::new();
    for i in 0..4 {
        let r = call(&c, &b, send_req("Look", 0, format!("m{i}").as_bytes(), "t")).await;
        msg_ids.push(r.field("msgId").unwrap().to_string());
    }
    // Offsets and times (once the four are dispatched).
    let q = |code| RemotingCommand::request(code).with("topic", "Look").with("queueId", 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while call(&c, &b, q(request::GET_MAX_OFFSET)).await.field("offset") != Some("4") {
        assert!(Instant::now() < deadline, "messages never dispatched");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(call(&c, &b, q(request::GET_MIN_OFFSET)).await.field("offset"), Some("0"));
    let earliest: i64 =
        call(&c, &b, q(request::GET_EARLIEST_MSG_STORETIME)).await.field("timestamp").unwrap().parse().unwrap();
    assert!(earliest >= before - 1000, "earliest store time {earliest} vs {before}");
    let r = call(&c, &b, q(request::SEARCH_OFFSET_BY_TIMESTAMP).with("timestamp", before - 60_000)).await;
    assert_eq!(r.field("offset"), Some("0"));
    // View by id: the offset message id names the commit-log offset.
    let (_, phys) = spate_common::message::parse_offset_msg_id(&msg_ids[2]).unwrap();
    let r = call(&c, &b, RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", phys)).await;
    assert_eq!(decode_record(&r.body, true).unwrap().body, b"m2");

    // A consumer group: heartbeat, membership, connections, consume stats.
    let hb = HeartbeatData {
        client_id: "10.0.0.1@test".into(),
        consumer_data_set: vec![spate_remoting::protocol::ConsumerData {
            group_name: "look-group".into(),
            consume_type: "CONSUME_PASSIVELY".into(),
            message_model: "CLUSTERING".into(),
            consume_from_where: "CONSUME_FROM_FIRST_OFFSET".into(),
            subscription_data_set: vec![spate_remoting::protocol::TagFilter::parse("*").subscription("Look", "*", 1)],
            unit_mode: false,
        }],
        ..Default::default()
    };
    let r =
        call(&c, &b, RemotingCommand::request(request::HEART_BEAT).with_body(serde_json::to_vec(&hb).unwrap())).await;
    assert_eq!(r.code, response::SUCCESS);
    let r =
        call(&c, &b, RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP).with("consumerGroup", "look-group"))
            .await;
    let ids: ConsumerListBody = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(ids.consumer_id_list, vec!["10.0.0.1@test".to_string()]);
    let r = call(
        &c,
        &b,
        RemotingCommand::request(request::GET_CONSUMER_CONNECTION_LIST).with("consumerGroup", "look-group"),
    )
    .await;
    assert!(String::from_utf8_lossy(&r.body).contains("10.0.0.1@test"));
    let commit = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
        .with("consumerGroup", "look-group")
        .with("topic", "Look")
        .with("queueId", 0)
        .with("commitOffset", 1);
    assert_eq!(call(&c, &b, commit).await.code, response::SUCCESS);
    let r = call(
        &c,
        &b,
        RemotingCommand::request(request::GET_CONSUME_STATS).with("consumerGroup", "look-group").with("topic", "Look"),
    )
    .await;
    let text = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        text.contains(r#"{"brokerName":"broker-a","queueId":0,"topic":"Look"}:{"brokerOffset":4,"consumerOffset":1"#),
        "{text}"
    );
    // Unregistering empties the group.
    let un = RemotingCommand::request(request::UNREGISTER_CLIENT)
        .with("clientID", "10.0.0.1@test")
        .with("consumerGroup", "look-group");
    assert_eq!(call(&c, &b, un).await.code, response::SUCCESS);
    let r =
        call(&c, &b, RemotingCommand::request(request::GET_CONSUMER_LIST_BY_GROUP).with("consumerGroup", "look-group"))
            .await;
    assert_eq!(r.code, response::SYSTEM_ERROR);

    // Subscription groups.
    let group = br#"{"groupName":"made-group","retryMaxTimes":3}"#;
    let r = call(&c, &b, RemotingCommand::request(request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP).with_body(&group[..]))
        .await;
    assert_eq!(r.code, response::SUCCESS);
    let r = call(&c, &b, RemotingCommand::request(request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG)).await;
    assert!(String::from_utf8_lossy(&r.body).contains("\"made-group\""));

    // Broker config: read, change a runtime key, refuse a restart-only key.
    let r = call(&c, &b, RemotingCommand::request(request::GET_BROKER_CONFIG)).await;
    assert!(String::from_utf8_lossy(&r.body).contains("autoCreateTopicEnable=true"));
    let r = call(
        &c,
        &b,
        RemotingCommand::request(request::UPDATE_BROKER_CONFIG).with_body(&b"autoCreateTopicEnable=false\n"[..]),
    )
    .await;
    assert_eq!(r.code, response::SUCCESS);
    let r = call(&c, &b, send_req("NotAutoCreated", 0, b"x", "t")).await;
    assert_eq!(r.code, response::TOPIC_NOT_EXIST, "auto-creation is off now");
    let r =
        call(&c, &b, RemotingCommand::request(request::UPDATE_BROKER_CONFIG).with_body(&b"listenPort=1\n"[..])).await;
    assert_eq!(r.code, response::INVALID_PARAMETER);
    assert!(r.remark.unwrap_or_default().contains("listenPort"));

    // Runtime info.
    let r = call(&c, &b, RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO)).await;
    let kv: KvTable = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(kv.table["msgPutTotalTodayNow"], "4");
    assert!(kv.table["commitLogMaxOffset"].parse::<u64>().unwrap() > 0);
}

/// The VIP channel (`listenPort - 2`, what clients with `vipChannelEnabled`
/// send to) takes the same requests as the main port: a send through it is
/// stored and pulled through the main port, and a producer with
/// `vip_channel_enabled` sends through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_channel_two_ports_down_takes_sends() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start(&dir.path().join("data"));
    let broker = spate.broker();
    let vip = spate_client::producer::vip_channel_addr(&broker);
    assert_ne!(vip, broker);
    let c = raw_client();
    let r = call(&c, &vip, send_req("Vip", 0, b"through the vip channel", "T")).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}; log:\n{}", r.remark, spate.log_text());
    let r = call(&c, &broker, pull_req("Vip", 0, 0, 0, "*")).await;
    assert_eq!(records(&r.body), vec![(b"through the vip channel".to_vec(), "T".into())]);

    let mut opts = spate_client::ProducerOptions::new("vip_pg");
    opts.vip_channel_enabled = true;
    let cfg = spate_client::ClientConfig::new(&spate.namesrv()).with_instance_name("vip-p");
    let p = spate_client::Producer::start(cfg, opts).await.unwrap();
    let sent = p.send(spate_client::Message::new("Vip", "by a producer")).await.unwrap();
    assert_eq!(sent.status, spate_client::SendStatus::SendOk);
    p.shutdown().await;
    let r = call(&c, &broker, pull_req("Vip", sent.message_queue.queue_id, sent.queue_offset, 0, "*")).await;
    assert!(records(&r.body).iter().any(|(body, _)| body == b"by a producer"), "the producer's message is stored");
}
