//! The benchmarks' RocketMQ 5 (gRPC) clients: a producer (SendMessage)
//! and simple consumers (ReceiveMessage + AckMessage), generated from the
//! same protos the broker serves. Enough client for load, not a full SDK:
//! no routes (one endpoint), no retries.
//!
//! Calls go straight onto one HTTP/2 connection, without tonic's `Channel`
//! (whose buffer task adds a task hop to every call, and reconnection this
//! benchmark does not want): the client side costs what a lean gRPC client
//! costs, so a send's latency is mostly the broker's and the protocol's.
//! - Sends ([`Unary`]) are framed here over `h2` directly: HEADERS and one
//!   DATA frame that ends the stream, queued together, so each call is one
//!   write (with the one runtime worker a pinned benchmark has), as
//!   grpc-java's batched writes make it. Through hyper's client
//!   the same call took three writes (HEADERS; DATA; an empty DATA ending
//!   the stream) and three segments for the broker to wake up for.
//! - Receives and acks ([`Conn`]) go through tonic's generated client over
//!   hyper's HTTP/2 connection (server streaming needs its decoder).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use spate_client::ClientError;
use spate_grpc::pb::{self, messaging_service_client::MessagingServiceClient, receive_message_response::Content, Code};
use tonic::service::interceptor::InterceptedService;

type Intercept = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;
pub type Client = MessagingServiceClient<InterceptedService<Conn, Intercept>>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One HTTP/2 connection (hyper's client, h2c) as the service tonic's
/// generated client calls: each call is handed to hyper by the caller's
/// own task, with `timeout` on its answer's headers.
#[derive(Clone)]
pub struct Conn {
    send: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    authority: http::uri::Authority,
    timeout: Duration,
}

impl tower_service::Service<http::Request<tonic::body::Body>> for Conn {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        // tonic gives the path; HTTP/2 also needs the scheme and authority.
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        let answer = self.send.send_request(req);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, answer).await {
                Ok(r) => r.map(|resp| resp.map(tonic::body::Body::new)).map_err(Into::into),
                Err(_) => Err(format!("no answer within {timeout:?}").into()),
            }
        })
    }
}

/// Every call names this process as its client.
fn client_id(mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    static ID: std::sync::OnceLock<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> = std::sync::OnceLock::new();
    let id = ID.get_or_init(|| {
        format!("spate-bench@{}", std::process::id())
            .parse()
            .unwrap_or_else(|_| tonic::metadata::MetadataValue::from_static("spate-bench"))
    });
    req.metadata_mut().insert("x-mq-client-id", id.clone());
    req.metadata_mut().insert("x-mq-language", tonic::metadata::MetadataValue::from_static("RUST"));
    Ok(req)
}

/// One HTTP/2 connection to `endpoint`, with `timeout` on every call.
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Client> {
    let authority: http::uri::Authority = endpoint.parse().with_context(|| format!("gRPC endpoint {endpoint}"))?;
    let tcp = tokio::net::TcpStream::connect(endpoint).await.with_context(|| format!("connecting to {endpoint}"))?;
    tcp.set_nodelay(true)?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "gRPC connection ended");
        }
    });
    let conn = Conn { send, authority, timeout };
    Ok(MessagingServiceClient::with_interceptor(conn, client_id as Intercept)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20))
}

fn resource(name: &str) -> Option<pb::Resource> {
    Some(pb::Resource { name: name.to_string(), ..Default::default() })
}

/// The outcome of a unary call that got no answer message.
#[derive(Debug)]
pub enum CallError {
    /// The connection or the stream failed, or no answer came in time.
    Transport(String),
    /// The server answered with this gRPC status (`grpc-status`, `grpc-message`).
    Status(i32, String),
}

/// Most bytes of one answer message this client takes.
const MAX_ANSWER: usize = 4 << 20;

/// Unary gRPC calls over one HTTP/2 connection driven by `h2` directly:
/// each call queues its HEADERS and a single DATA frame that ends the
/// stream before the connection's task next writes, so it goes out in one
/// write. Its answer is one length-prefixed message and the trailers.
#[derive(Clone)]
pub struct Unary {
    send: h2::client::SendRequest<Bytes>,
    authority: http::uri::Authority,
    client_id: http::HeaderValue,
    timeout: Duration,
}

impl Unary {
    pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Unary> {
        let authority: http::uri::Authority = endpoint.parse().with_context(|| format!("gRPC endpoint {endpoint}"))?;
        let tcp =
            tokio::net::TcpStream::connect(endpoint).await.with_context(|| format!("connecting to {endpoint}"))?;
        tcp.set_nodelay(true)?;
        let (send, connection) =
            h2::client::handshake(tcp).await.with_context(|| format!("HTTP/2 handshake with {endpoint}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gRPC connection ended");
            }
        });
        let client_id = http::HeaderValue::from_str(&format!("spate-bench@{}", std::process::id()))
            .unwrap_or_else(|_| http::HeaderValue::from_static("spate-bench"));
        Ok(Unary { send, authority, client_id, timeout })
    }

    /// Calls `path` (`/package.Service/Method`) with `request`.
    pub async fn call<Q: prost::Message, A: prost::Message + Default>(
        &self,
        path: &str,
        request: &Q,
    ) -> Result<A, CallError> {
        let transport = |e: &dyn std::fmt::Display| CallError::Transport(e.to_string());
        let len = request.encoded_len();
        let mut framed = Vec::with_capacity(5 + len);
        framed.push(0); // not compressed
        framed.extend_from_slice(&u32::try_from(len).map_err(|e| transport(&e))?.to_be_bytes());
        request.encode(&mut framed).map_err(|e| transport(&e))?;
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| transport(&e))?;
        let head = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .header("x-mq-client-id", self.client_id.clone())
            .header("x-mq-language", "RUST")
            .body(())
            .map_err(|e| transport(&e))?;
        let answer = async {
            let mut send = self.send.clone().ready().await.map_err(|e| transport(&e))?;
            let (response, mut body) = send.send_request(head, false).map_err(|e| transport(&e))?;
            body.send_data(Bytes::from(framed), true).map_err(|e| transport(&e))?;
            let response = response.await.map_err(|e| transport(&e))?;
            if response.status() != http::StatusCode::OK {
                return Err(CallError::Transport(format!("HTTP status {}", response.status())));
            }
            // A status in the headers is a trailers-only answer: no message.
            match grpc_status(response.headers()) {
                Some(CallError::Status(0, _)) => {
                    return Err(CallError::Transport("an OK answer without a message".into()))
                }
                Some(status) => return Err(status),
                None => {}
            }
            let mut incoming = response.into_body();
            let mut message = Vec::new();
            while let Some(chunk) = incoming.data().await {
                let chunk = chunk.map_err(|e| transport(&e))?;
                let _ = incoming.flow_control().release_capacity(chunk.len());
                if message.len() + chunk.len() > MAX_ANSWER + 5 {
                    return Err(CallError::Transport(format!("answer over {MAX_ANSWER} bytes")));
                }
                message.extend_from_slice(&chunk);
            }
            let trailers = incoming.trailers().await.map_err(|e| transport(&e))?.unwrap_or_default();
            match grpc_status(&trailers) {
                Some(CallError::Status(0, _)) => decode_message(&message),
                Some(status) => Err(status),
                None => Err(CallError::Transport("an answer without grpc-status".into())),
            }
        };
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Transport(format!("no answer within {:?}", self.timeout))),
        }
    }
}

/// `grpc-status` and `grpc-message` of an answer's headers or trailers.
fn grpc_status(headers: &http::HeaderMap) -> Option<CallError> {
    let code = headers.get("grpc-status")?.to_str().ok().and_then(|c| c.parse().ok()).unwrap_or(2);
    let message = headers.get("grpc-message").and_then(|m| m.to_str().ok()).unwrap_or_default();
    Some(CallError::Status(code, message.to_string()))
}

/// One uncompressed length-prefixed message.
fn decode_message<A: prost::Message + Default>(framed: &[u8]) -> Result<A, CallError> {
    let bad = |why: &str| CallError::Transport(format!("bad answer message: {why}"));
    let (prefix, rest) = framed.split_first_chunk::<5>().ok_or_else(|| bad("shorter than its prefix"))?;
    if prefix[0] != 0 {
        return Err(bad("compressed, and none was asked for"));
    }
    let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    let message = rest.get(..len).filter(|_| rest.len() == len).ok_or_else(|| bad("length does not match"))?;
    A::decode(message).map_err(|e| bad(&e.to_string()))
}

/// SendMessage's path on `MessagingService`.
const SEND_MESSAGE: &str = "/apache.rocketmq.v2.MessagingService/SendMessage";

/// A gRPC producer instance: its own connection.
pub struct GrpcProducer {
    conn: Unary,
    endpoint: String,
    /// This process's id, in every message id.
    pid: u32,
    instance: usize,
    next: AtomicU64,
}

impl GrpcProducer {
    pub async fn connect(endpoint: &str, instance: usize, timeout: Duration) -> Result<GrpcProducer> {
        Ok(GrpcProducer {
            conn: Unary::connect(endpoint, timeout).await?,
            endpoint: endpoint.to_string(),
            pid: std::process::id(),
            instance,
            next: AtomicU64::new(0),
        })
    }

    /// Sends `batch` messages of `body` in one SendMessage.
    pub async fn send(&self, topic: &str, batch: usize, body: &Bytes) -> Result<(), ClientError> {
        let messages = (0..batch)
            .map(|_| {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                pb::Message {
                    topic: resource(topic),
                    user_properties: Default::default(),
                    system_properties: Some(pb::SystemProperties {
                        message_id: format!("01{:08X}{:04X}{:016X}", self.pid, self.instance, n),
                        body_encoding: pb::Encoding::Identity as i32,
                        message_type: pb::MessageType::Normal as i32,
                        born_timestamp: Some(now_timestamp()),
                        ..Default::default()
                    }),
                    body: body.to_vec(),
                }
            })
            .collect();
        let answer: Result<pb::SendMessageResponse, _> =
            self.conn.call(SEND_MESSAGE, &pb::SendMessageRequest { messages }).await;
        let broker = |code: i32, remark: String| ClientError::Broker { addr: self.endpoint.clone(), code, remark };
        match answer {
            Ok(r) => match r.status {
                Some(st) if st.code == Code::Ok as i32 => Ok(()),
                Some(st) => Err(broker(st.code, st.message)),
                None => Err(broker(-1, "no status".into())),
            },
            // A gRPC status as -(code) - 1; anything else (the connection,
            // the stream, the answer's shape, no answer in time) as
            // UNKNOWN (2), as tonic's client reports most of those.
            Err(CallError::Status(code, message)) => Err(broker(-code - 1, message)),
            Err(CallError::Transport(why)) => Err(broker(-3, why)),
        }
    }
}

/// One receive and one ack of everything it got; each message's born and
/// store times (ms) and body size.
pub async fn receive_and_ack(
    c: &mut Client,
    topic: &str,
    group: &str,
    batch: i32,
    invisible: Duration,
    poll: Duration,
) -> Result<Vec<(i64, i64, usize)>> {
    let req = pb::ReceiveMessageRequest {
        group: resource(group),
        message_queue: Some(pb::MessageQueue { topic: resource(topic), id: -1, ..Default::default() }),
        filter_expression: Some(pb::FilterExpression { r#type: pb::FilterType::Tag as i32, expression: "*".into() }),
        batch_size: batch,
        invisible_duration: Some(prost_duration(invisible)),
        auto_renew: false,
        long_polling_timeout: Some(prost_duration(poll)),
        attempt_id: None,
    };
    let mut stream = c.receive_message(req).await.context("receive")?.into_inner();
    let mut entries = Vec::new();
    let mut got = Vec::new();
    let ms = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or(0, |t| t.seconds * 1000 + i64::from(t.nanos / 1_000_000))
    };
    while let Some(item) = stream.message().await.context("receive stream")? {
        if let Some(Content::Message(m)) = item.content {
            let sys = m.system_properties.unwrap_or_default();
            got.push((ms(&sys.born_timestamp), ms(&sys.store_timestamp), m.body.len()));
            entries.push(pb::AckMessageEntry {
                message_id: sys.message_id,
                receipt_handle: sys.receipt_handle.unwrap_or_default(),
                lite_topic: None,
            });
        }
    }
    if !entries.is_empty() {
        let r =
            c.ack_message(pb::AckMessageRequest { group: resource(group), topic: resource(topic), entries }).await?;
        let st = r.into_inner().status.unwrap_or_default();
        anyhow::ensure!(st.code == Code::Ok as i32, "ack answered {}: {}", st.code, st.message);
    }
    Ok(got)
}

fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }
}

fn prost_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}
