//! A client of RocketMQ 5's gRPC protocol for the tests, generated from the
//! protos the broker serves (the official SDKs are tested in `interop/`).

use std::collections::HashMap;
use std::time::Duration;

use spate_grpc::pb::{self, messaging_service_client::MessagingServiceClient, receive_message_response::Content, Code};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Client = MessagingServiceClient<
    InterceptedService<Channel, fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>>,
>;

/// Every call says who it is, as the official clients do.
pub fn with_client_id(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert("x-mq-client-id", "grpc-test@1@0@x".parse().expect("header"));
    req.metadata_mut().insert("x-mq-language", "RUST".parse().expect("header"));
    Ok(req)
}

/// Another client instance: its own session on the broker.
pub fn with_other_client_id(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    req.metadata_mut().insert("x-mq-client-id", "grpc-test@2@0@y".parse().expect("header"));
    req.metadata_mut().insert("x-mq-language", "PYTHON".parse().expect("header"));
    Ok(req)
}

pub async fn connect(addr: &str) -> Client {
    connect_as(addr, with_client_id).await
}

/// A client whose calls `identify` names.
pub async fn connect_as(
    addr: &str,
    identify: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}")).expect("uri").connect().await.expect("connect");
    MessagingServiceClient::with_interceptor(channel, identify)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

pub fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource { name: name.to_string(), ..Default::default() })
}

pub fn message(topic: &str, id: &str, body: &[u8], user: &[(&str, &str)]) -> pb::Message {
    pb::Message {
        topic: resource(topic),
        user_properties: user.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>(),
        system_properties: Some(pb::SystemProperties {
            message_id: id.to_string(),
            tag: Some("TagA".into()),
            body_encoding: pb::Encoding::Identity as i32,
            message_type: pb::MessageType::Normal as i32,
            ..Default::default()
        }),
        body: body.to_vec(),
    }
}

pub fn code(st: &Option<pb::Status>) -> i32 {
    st.as_ref().map_or(-1, |s| s.code)
}

pub async fn send(c: &mut Client, m: pb::Message) -> pb::SendMessageResponse {
    c.send_message(pb::SendMessageRequest { messages: vec![m] }).await.expect("send call").into_inner()
}

/// One ReceiveMessage: its status and messages.
pub async fn receive(c: &mut Client, req: pb::ReceiveMessageRequest, deadline: Duration) -> (i32, Vec<pb::Message>) {
    let mut r = tonic::Request::new(req);
    r.set_timeout(deadline);
    let mut stream = c.receive_message(r).await.expect("receive call").into_inner();
    let (mut st, mut msgs) = (-1, Vec::new());
    while let Some(item) = stream.message().await.expect("receive stream") {
        match item.content {
            Some(Content::Status(s)) => st = s.code,
            Some(Content::Message(m)) => msgs.push(m),
            _ => {}
        }
    }
    (st, msgs)
}

pub fn receive_req(topic: &str, group: &str, batch: i32, invisible_s: i64, poll_s: i64) -> pb::ReceiveMessageRequest {
    pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(pb::MessageQueue { topic: resource(topic), id: -1, ..Default::default() }),
        filter_expression: Some(pb::FilterExpression { r#type: pb::FilterType::Tag as i32, expression: "*".into() }),
        batch_size: batch,
        invisible_duration: Some(prost_types::Duration { seconds: invisible_s, nanos: 0 }),
        auto_renew: false,
        long_polling_timeout: Some(prost_types::Duration { seconds: poll_s, nanos: 0 }),
        attempt_id: None,
    }
}

/// Everything `group` can receive of `topic` until a poll comes back empty.
pub async fn drain(c: &mut Client, topic: &str, group: &str) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let (st, msgs) = receive(c, receive_req(topic, group, 32, 60, 1), Duration::from_secs(10)).await;
        if msgs.is_empty() {
            assert!(st == Code::MessageNotFound as i32 || st == Code::Ok as i32, "receive status {st}");
            return all;
        }
        all.extend(msgs);
    }
}

/// Opens a Telemetry stream, sends `settings` and returns the server's
/// first answer; the stream stays open while the returned sender lives.
pub async fn open_telemetry(
    c: &mut Client,
    settings: pb::Settings,
    version: &str,
) -> (pb::TelemetryCommand, tokio::sync::mpsc::Sender<pb::TelemetryCommand>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::TelemetryCommand { status: None, command: Some(pb::telemetry_command::Command::Settings(settings)) })
        .await
        .expect("queue settings");
    let mut req = tonic::Request::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    req.metadata_mut().insert("x-mq-client-version", version.parse().expect("header"));
    let mut answers = c.telemetry(req).await.expect("telemetry").into_inner();
    let first = answers.message().await.expect("telemetry answer").expect("settings answer");
    // Keep reading (server commands) so the stream stays open.
    tokio::spawn(async move { while let Ok(Some(_)) = answers.message().await {} });
    (first, tx)
}

/// A producer's settings for `topics`.
pub fn producer_settings(topics: &[&str]) -> pb::Settings {
    pb::Settings {
        client_type: Some(pb::ClientType::Producer as i32),
        pub_sub: Some(pb::settings::PubSub::Publishing(pb::Publishing {
            topics: topics.iter().map(|t| pb::Resource { name: t.to_string(), ..Default::default() }).collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}
