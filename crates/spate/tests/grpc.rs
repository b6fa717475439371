//! RocketMQ 5's gRPC protocol against a real `spate standalone`, with a
//! client generated from the same protos (the official SDKs are tested in
//! `interop/`). What a hostile or broken client sends gets a clear answer,
//! the server keeps serving everyone else, and what it acknowledged
//! survives a kill -9.

mod common;

use std::time::{Duration, Instant};

use common::grpc::{
    code, connect, connect_as, drain, message, open_telemetry, producer_settings, receive, receive_req, resource, send,
    with_other_client_id,
};
use common::{free_port, Standalone};
use spate_grpc::pb::{self, messaging_service_client::MessagingServiceClient, Code};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_grpc_calls_get_clear_answers_and_acknowledged_messages_survive() {
    let dir = tempfile::tempdir().unwrap();
    let grpc_port = free_port();
    let port_line = format!("grpcServerPort={grpc_port}");
    let mut spate = Standalone::start_with(&dir.path().join("d"), &[&port_line, "maxMessageSize=65536"]);
    let dedicated = format!("127.0.0.1:{grpc_port}");
    let mut c = connect(&dedicated).await;
    let topic = "GrpcHostile";

    // A call without x-mq-client-id is malformed: a gRPC error, not a status.
    let bare = Channel::from_shared(format!("http://{dedicated}")).unwrap().connect().await.unwrap();
    let err = MessagingServiceClient::new(bare)
        .query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: None })
        .await
        .expect_err("no client id");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");

    // Heartbeat before any settings: upstream's UNRECOGNIZED_CLIENT_TYPE.
    let hb = c.heartbeat(pb::HeartbeatRequest { group: None, client_type: 1 }).await.unwrap().into_inner();
    assert_eq!(code(&hb.status), Code::UnrecognizedClientType as i32);

    // The route (the topic is created on this first query) lists the
    // broker's remoting address as its gRPC endpoint.
    let route =
        c.query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: None }).await.unwrap().into_inner();
    assert_eq!(code(&route.status), Code::Ok as i32, "{route:?}");
    let ep = route.message_queues[0].broker.as_ref().and_then(|b| b.endpoints.as_ref()).expect("endpoints");
    assert_eq!(ep.addresses[0].port, i32::from(spate.broker_port));
    assert!(!route.message_queues[0].accept_message_types.is_empty());

    // Acknowledged sends, one through each port.
    let mut acked = Vec::new();
    let mut remoting_port = connect(&spate.broker()).await;
    for i in 0..20 {
        let id = format!("0100000000000000000000000000{i:04}");
        let body = format!("grpc-hostile-{i}").into_bytes();
        let client = if i % 2 == 0 { &mut c } else { &mut remoting_port };
        let r = send(client, message(topic, &id, &body, &[("k", "v")])).await;
        assert_eq!(code(&r.status), Code::Ok as i32, "send {i}: {r:?}");
        acked.push(body);
    }

    // Bad messages: a reserved property name, a body over maxMessageSize,
    // an empty body, no message id. Each answered with its own code.
    let r = send(&mut c, message(topic, "01AA", b"x", &[("TAGS", "forged")])).await;
    assert_eq!(code(&r.status), Code::IllegalMessagePropertyKey as i32, "{r:?}");
    let r = send(&mut c, message(topic, "01AB", &vec![7u8; 70_000], &[])).await;
    assert_eq!(code(&r.status), Code::MessageBodyTooLarge as i32, "{r:?}");
    let r = send(&mut c, message(topic, "01AC", b"", &[])).await;
    assert_eq!(code(&r.status), Code::MessageBodyEmpty as i32, "{r:?}");
    let r = send(&mut c, message(topic, "", b"x", &[])).await;
    assert_eq!(code(&r.status), Code::IllegalMessageId as i32, "{r:?}");
    let r = send(&mut c, message("%SYS%bad topic", "01AD", b"x", &[])).await;
    assert_ne!(code(&r.status), Code::Ok as i32, "an invalid topic name is refused: {r:?}");
    // Past the inbound frame limit (maxMessageSize plus 1 MiB): refused by
    // the transport, and the server goes on serving.
    let huge = c
        .send_message(pb::SendMessageRequest { messages: vec![message(topic, "01AE", &vec![1u8; 2 << 20], &[])] })
        .await;
    assert!(huge.is_err(), "a 2 MiB frame is refused");

    // Unknown and unserved RPCs: UNIMPLEMENTED.
    let mut raw =
        tonic::client::Grpc::new(Channel::from_shared(format!("http://{dedicated}")).unwrap().connect().await.unwrap());
    raw.ready().await.unwrap();
    let unknown: Result<tonic::Response<pb::HeartbeatResponse>, _> = raw
        .unary(
            tonic::Request::new(pb::HeartbeatRequest::default()),
            "/apache.rocketmq.v2.MessagingService/NoSuchCall".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(unknown.expect_err("unknown RPC").code(), tonic::Code::Unimplemented);
    let pull = c.get_offset(pb::GetOffsetRequest::default()).await.expect_err("GetOffset is not served");
    assert_eq!(pull.code(), tonic::Code::Unimplemented);

    // Receives: an absurd batch is refused; an absurd polling time is cut
    // to the call's deadline (it answers, it does not hang).
    let (st, _) = receive(&mut c, receive_req(topic, "g_hostile", 100_000, 30, 1), Duration::from_secs(5)).await;
    assert_eq!(st, Code::BadRequest as i32);
    c.query_route(pb::QueryRouteRequest { topic: resource("GrpcHostileEmpty"), endpoints: None }).await.unwrap();
    let started = Instant::now();
    let (st, msgs) =
        receive(&mut c, receive_req("GrpcHostileEmpty", "g_hostile", 8, 30, 3600), Duration::from_secs(2)).await;
    assert!(started.elapsed() < Duration::from_secs(4), "answered within its deadline: {:?}", started.elapsed());
    assert!(msgs.is_empty() && st == Code::MessageNotFound as i32, "status {st}");

    // Forged receipt handles: garbage, a well-formed one for no delivery,
    // one naming another broker. Each INVALID_RECEIPT_HANDLE.
    for (what, handle) in [
        ("garbage", "not a handle at all".to_string()),
        ("never handed out", "0 1 30000 0 0 broker-a 0 0".to_string()),
        ("another broker", "0 1 30000 0 0 elsewhere 0 0".to_string()),
        ("oversized", "9".repeat(100_000)),
    ] {
        let ack = c
            .ack_message(pb::AckMessageRequest {
                group: resource("g_hostile"),
                topic: resource(topic),
                entries: vec![pb::AckMessageEntry { message_id: "x".into(), receipt_handle: handle, lite_topic: None }],
            })
            .await
            .expect("ack call")
            .into_inner();
        assert_eq!(code(&ack.entries[0].status), Code::InvalidReceiptHandle as i32, "{what}: {ack:?}");
    }

    // A consumer gives up on a message: ForwardMessageToDeadLetterQueue
    // puts it in %DLQ%<group> and it is not delivered to the group again.
    let dlq_topic = "GrpcDlq";
    let r = send(&mut c, message(dlq_topic, "01D0", b"to-the-dlq", &[])).await;
    assert_eq!(code(&r.status), Code::Ok as i32);
    let (_, got) = receive(&mut c, receive_req(dlq_topic, "g_dlq", 1, 1, 5), Duration::from_secs(10)).await;
    let handle = got[0].system_properties.as_ref().and_then(|p| p.receipt_handle.clone()).expect("receipt handle");
    let forward = |receipt_handle: String| pb::ForwardMessageToDeadLetterQueueRequest {
        group: resource("g_dlq"),
        topic: resource(dlq_topic),
        receipt_handle,
        message_id: "01D0".into(),
        delivery_attempt: 1,
        max_delivery_attempts: 1,
        lite_topic: None,
    };
    let fwd = c.forward_message_to_dead_letter_queue(forward(handle.clone())).await.unwrap().into_inner();
    assert_eq!(code(&fwd.status), Code::Ok as i32, "{fwd:?}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, again) = receive(&mut c, receive_req(dlq_topic, "g_dlq", 8, 1, 1), Duration::from_secs(5)).await;
    assert!(again.is_empty(), "a forwarded message is not delivered again: {again:?}");
    let dead: Vec<Vec<u8>> = drain(&mut c, "%DLQ%g_dlq", "g_dlq_reader").await.into_iter().map(|m| m.body).collect();
    assert_eq!(dead, vec![b"to-the-dlq".to_vec()], "the message is in the group's DLQ");
    // The same handle again: already settled.
    let fwd = c.forward_message_to_dead_letter_queue(forward(handle)).await.unwrap().into_inner();
    assert_eq!(code(&fwd.status), Code::InvalidReceiptHandle as i32, "{fwd:?}");

    // A garbled HTTP/2 stream on the remoting port: that connection is
    // closed, nobody else notices.
    let mut tcp = tokio::net::TcpStream::connect(spate.broker()).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff garbage")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the garbled connection is closed");
    let r = send(&mut c, message(topic, "0100000000000000000000000000AFTER", b"after-garbage", &[])).await;
    assert_eq!(code(&r.status), Code::Ok as i32);
    acked.push(b"after-garbage".to_vec());
    let remoting = common::raw_client();
    let resp =
        common::call(&remoting, &spate.broker(), common::send_req(topic, 0, b"remoting-still-works".to_vec())).await;
    assert_eq!(resp.code, spate_remoting::response::SUCCESS, "{resp:?}");
    acked.push(b"remoting-still-works".to_vec());

    // kill -9 and restart: everything acknowledged is there.
    spate.kill9();
    spate.restart();
    let mut c = connect(&dedicated).await;
    let got: Vec<Vec<u8>> = drain(&mut c, topic, "g_after_restart").await.into_iter().map(|m| m.body).collect();
    for body in &acked {
        assert!(
            got.contains(body),
            "acknowledged {:?} lost; got {} messages",
            String::from_utf8_lossy(body),
            got.len()
        );
    }
    assert_eq!(got.len(), acked.len(), "nothing refused was stored");
}

/// A gRPC consumer that sent its settings on a Telemetry stream shows in
/// `spate admin group connections` with its protocol, language and
/// version; its settings answer carries what clients need; gRPC calls are
/// timed under `protocol_type="grpc"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_show_in_admin_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let metrics_port = free_port();
    let line = format!("metricsPromExporterPort={metrics_port}");
    let spate = Standalone::start_with(&dir.path().join("d"), &[&line]);
    let mut c = connect(&spate.broker()).await;
    let topic = "GrpcAdmin";
    c.query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: None }).await.unwrap();
    for i in 0..5 {
        let r = send(&mut c, message(topic, &format!("01000000000000000000000000000{i}"), b"m", &[])).await;
        assert_eq!(code(&r.status), Code::Ok as i32);
    }

    let settings = pb::Settings {
        client_type: Some(pb::ClientType::SimpleConsumer as i32),
        pub_sub: Some(pb::settings::PubSub::Subscription(pb::Subscription {
            group: resource("grpc_admin_group"),
            subscriptions: vec![pb::SubscriptionEntry {
                topic: resource(topic),
                expression: Some(pb::FilterExpression { r#type: pb::FilterType::Tag as i32, expression: "*".into() }),
            }],
            ..Default::default()
        })),
        ..Default::default()
    };
    let (first, tx) = open_telemetry(&mut c, settings, "5.1.2").await;
    assert_eq!(code(&first.status), Code::Ok as i32);
    let Some(pb::telemetry_command::Command::Settings(merged)) = first.command else {
        panic!("no settings: {first:?}")
    };
    let Some(pb::settings::PubSub::Subscription(sub)) = merged.pub_sub else { panic!("no subscription") };
    assert_eq!(sub.receive_batch_size, Some(32));
    assert!(sub.long_polling_timeout.is_some() && sub.fifo.is_some());
    assert!(merged.backoff_policy.is_some_and(|b| b.max_attempts == 17));
    assert!(merged.metric.is_some_and(|m| !m.on));
    let hb = c
        .heartbeat(pb::HeartbeatRequest {
            group: resource("grpc_admin_group"),
            client_type: pb::ClientType::SimpleConsumer as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&hb.status), Code::Ok as i32, "heartbeat after settings");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args(["admin", "-n", &spate.namesrv(), "group", "connections", "grpc_admin_group"])
        .output()
        .expect("spate admin");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("grpc-test@1@0@x") && text.contains("gRPC") && text.contains("RUST") && text.contains("5.1.2"),
        "{text}"
    );

    // Producers: a RocketMQ 5 producer names no group and is listed under
    // the topics it publishes; a remoting producer under its group (here
    // named as the topic, so one listing shows both kinds).
    let mut p = connect_as(&spate.broker(), with_other_client_id).await;
    let (first, _producer_stream) = open_telemetry(&mut p, producer_settings(&[topic]), "5.0.9").await;
    assert_eq!(code(&first.status), Code::Ok as i32);
    let cfg = spate_client::ClientConfig::new(&spate.namesrv()).with_instance_name("admin-remoting-p");
    let remoting = spate_client::Producer::start(cfg, spate_client::ProducerOptions::new(topic)).await.unwrap();
    remoting.send(spate_client::Message::new(topic, "r")).await.unwrap();
    // (The remoting producer's heartbeat follows its first route.)
    let listed = |text: &str| -> Vec<(String, String, String)> {
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["role"] == "producer")
            .map(|c| {
                let f = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (f("clientId"), f("protocol"), f("language"))
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let (text, producers) = loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["admin", "-n", &spate.namesrv(), "--json", "group", "connections", topic])
            .output()
            .expect("spate admin");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let producers = listed(&text);
        if producers.len() >= 2 || Instant::now() > deadline {
            break (text, producers);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let grpc_producer = ("grpc-test@2@0@y".to_string(), "gRPC".to_string(), "PYTHON".to_string());
    assert!(producers.contains(&grpc_producer), "{text}");
    assert!(producers.iter().any(|(id, proto, _)| id.contains("admin-remoting-p") && proto == "remoting"), "{text}");
    assert!(!producers.iter().any(|(id, _, _)| id == "grpc-test@1@0@x"), "a consumer is not a producer: {text}");
    remoting.shutdown().await;

    // A topic that declares its message type: the route says so, and a
    // message of another type is refused.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
        .args([
            "admin",
            "-n",
            &spate.namesrv(),
            "topic",
            "create",
            "GrpcFifoOnly",
            "-r",
            "2",
            "-w",
            "2",
            "--message-type",
            "FIFO",
        ])
        .output()
        .expect("spate admin");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let route = c
        .query_route(pb::QueryRouteRequest { topic: resource("GrpcFifoOnly"), endpoints: None })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(route.message_queues[0].accept_message_types, vec![pb::MessageType::Fifo as i32]);
    let r = send(&mut c, message("GrpcFifoOnly", "01F0", b"normal", &[])).await;
    assert_eq!(code(&r.status), Code::MessagePropertyConflictWithType as i32, "{r:?}");
    let mut fifo = message("GrpcFifoOnly", "01F1", b"fifo", &[]);
    fifo.system_properties.as_mut().unwrap().message_group = Some("g1".into());
    let r = send(&mut c, fifo).await;
    assert_eq!(code(&r.status), Code::Ok as i32, "{r:?}");

    let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).expect("metrics port");
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut scraped = String::new();
    std::io::Read::read_to_string(&mut s, &mut scraped).unwrap();
    let sends = scraped
        .lines()
        .find(|l| l.starts_with("rocketmq_rpc_latency_seconds_count{request=\"send\",protocol_type=\"grpc\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok());
    assert_eq!(sends, Some(7.0), "every gRPC send timed");
    drop(tx);
}

/// A receive whose caller went away frees its long-polling slot at once:
/// a client that opens receives and resets them cannot hold every slot
/// (`maxHeldPulls`) from everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_receives_free_their_long_polling_slots() {
    let dir = tempfile::tempdir().unwrap();
    let spate = Standalone::start_with(&dir.path().join("d"), &["maxHeldPulls=4"]);
    let mut c = connect(&spate.broker()).await;
    let topic = "GrpcAbandon";
    c.query_route(pb::QueryRouteRequest { topic: resource(topic), endpoints: None }).await.unwrap();
    for round in 0..3 {
        // Four receives that would wait 20 s each, abandoned after 300 ms.
        let mut calls = Vec::new();
        for _ in 0..4 {
            let mut cc = c.clone();
            calls.push(tokio::spawn(async move {
                // No deadline (the broker may hold it 20 s); dropped after
                // 300 ms, which resets the stream.
                let stream = cc.receive_message(receive_req(topic, "g_abandon", 8, 30, 20)).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(stream);
            }));
        }
        for call in calls {
            let _ = call.await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The slots are free: a new receive waits for its message instead
        // of being refused as full.
        let sender = {
            let mut s = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(500)).await;
                send(&mut s, message(topic, &format!("01AB{round}"), b"late", &[])).await
            })
        };
        let (st, msgs) = receive(&mut c, receive_req(topic, "g_abandon_next", 8, 30, 5), Duration::from_secs(8)).await;
        assert_eq!(st, Code::Ok as i32, "round {round}: a held receive got the message, not POLLING_FULL");
        assert_eq!(msgs.len(), 1);
        sender.await.unwrap();
    }
}

/// RECALL_MESSAGE on the remoting protocol (upstream 5.3.2's request, the
/// handle in the send's answer) and gRPC's RecallMessage sent to a broker
/// that does not hold the message (forwarded to the one that does, as
/// upstream's proxy does): the recalled messages are never delivered, the
/// one left alone is; forged and misdirected handles get ILLEGAL_OPERATION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recalls_by_remoting_and_across_brokers() {
    use spate_remoting::{request, response, RemotingCommand};
    let dir = tempfile::tempdir().unwrap();
    let ns = common::Proc::namesrv();
    let a = common::Proc::broker(dir.path(), "recall-a", &ns.addr());
    let b = common::Proc::broker(dir.path(), "recall-b", &ns.addr());
    let raw = common::raw_client();
    let topic = "RecallT";
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_spate"))
            .args(["admin", "-n", &ns.addr(), "topic", "create", topic, "-r", "1", "-w", "1"])
            .output()
            .unwrap();
        let route = common::call(
            &raw,
            &ns.addr(),
            RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic),
        )
        .await;
        let both = route.code == 0
            && spate_remoting::protocol::json::decode::<spate_remoting::protocol::TopicRouteData>(&route.body, "route")
                .unwrap()
                .queue_datas
                .len()
                == 2;
        if out.status.success() && both {
            break;
        }
        assert!(Instant::now() < deadline, "the route never listed both brokers");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Three timer messages on broker b, due in 4 s: one recalled over
    // remoting, one over gRPC through broker a, one left alone.
    let timer_send = |key: &str| {
        RemotingCommand::request(request::SEND_MESSAGE)
            .with("producerGroup", "recall_pg")
            .with("topic", topic)
            .with("defaultTopic", "TBW102")
            .with("defaultTopicQueueNums", 4)
            .with("queueId", 0)
            .with("sysFlag", 0)
            .with("bornTimestamp", 0)
            .with("flag", 0)
            .with("properties", format!("TIMER_DELAY_MS\u{1}4000\u{2}UNIQ_KEY\u{1}{key}\u{2}"))
            .with("reconsumeTimes", 0)
            .with_body(key.as_bytes().to_vec())
    };
    let mut handles = Vec::new();
    for key in ["RECALL_BY_REMOTING", "RECALL_BY_GRPC", "KEPT"] {
        let r = common::call(&raw, &b.addr(), timer_send(key)).await;
        assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
        handles.push(r.field("recallHandle").expect("a timer send answers a recall handle").to_string());
    }
    let recall = |to_topic: &str, handle: &str| {
        RemotingCommand::request(request::RECALL_MESSAGE)
            .with("producerGroup", "recall_pg")
            .with("topic", to_topic)
            .with("recallHandle", handle)
    };
    // Forged, another topic's, another broker's: refused, nothing recalled.
    for (to, t, handle) in [
        (b.addr(), topic, "bm90LWEtaGFuZGxl"),
        (b.addr(), "OtherTopic", handles[0].as_str()),
        (a.addr(), topic, handles[0].as_str()),
    ] {
        let r = common::call(&raw, &to, recall(t, handle)).await;
        assert_eq!(r.code, response::ILLEGAL_OPERATION, "{to} {t} {handle}: {:?}", r.remark);
    }
    let r = common::call(&raw, &b.addr(), recall(topic, &handles[0])).await;
    assert_eq!(r.code, response::SUCCESS, "{:?}", r.remark);
    assert_eq!(r.field("msgId"), Some("RECALL_BY_REMOTING"));

    // gRPC, on broker a's port: forwarded to broker b.
    let mut c = connect(&a.addr()).await;
    let answer = c
        .recall_message(pb::RecallMessageRequest { topic: resource(topic), recall_handle: handles[1].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&answer.status), Code::Ok as i32, "{answer:?}");
    assert_eq!(answer.message_id, "RECALL_BY_GRPC");
    // A handle that does not decode is the caller's mistake.
    let garbage = c
        .recall_message(pb::RecallMessageRequest { topic: resource(topic), recall_handle: "%%%".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&garbage.status), Code::BadRequest as i32, "{garbage:?}");

    // After the due time only the message left alone is delivered.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut on_b = connect(&b.addr()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got: Vec<String> = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got.extend(
            drain(&mut on_b, topic, "recall_group").await.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()),
        );
    }
    // A little longer, in case a recalled one were (wrongly) on its way.
    tokio::time::sleep(Duration::from_millis(500)).await;
    got.extend(
        drain(&mut on_b, topic, "recall_group").await.iter().map(|m| String::from_utf8_lossy(&m.body).to_string()),
    );
    assert_eq!(got, vec!["KEPT".to_string()], "only the message not recalled is delivered");
}
