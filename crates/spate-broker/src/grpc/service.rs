//! `apache.rocketmq.v2.MessagingService`'s RPCs. Each decodes its request
//! into the typed request of the broker operation the remoting front end
//! calls for the same job (`send::send`, `pop::service::{pop, ack,
//! change_invisible, forward_to_dlq}`, `transaction::end`,
//! `timer::recall_by_handle`), and encodes the outcome (or the operation's
//! `Refusal`) in gRPC's shape. Business outcomes travel as RocketMQ status
//! codes in a gRPC OK, as upstream's servers answer; only a malformed call
//! (no client id) is a gRPC error.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use spate_common::message::{self, offset_msg_id, parse_offset_msg_id};
use spate_grpc::convert::{self, Delivered};
use spate_grpc::headers::ClientHeaders;
use spate_grpc::pb::{self, receive_message_response::Content, telemetry_command::Command, Code};
use spate_grpc::settings::{self, GroupFacts, ServerFacts};
use spate_remoting::protocol::DEFAULT_TOPIC;
use spate_remoting::{response, RemotingClient};

use crate::pop::service::{PopMessageRequest, ReceiptRequest};
use crate::refusal::Refusal;
use crate::send::{SendRequest, Stored};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use super::access::{self, PUB, ROUTE, SUB};
use super::route::{self, RouteError};
use super::sessions::TELEMETRY_QUEUE;
use crate::origin::Origin;
use crate::BrokerState;

/// Most messages one SendMessage may carry.
pub const MAX_SEND_ENTRIES: usize = 1024;
/// Most entries one AckMessage may carry.
pub const MAX_ACK_ENTRIES: usize = 1024;
/// Longest a receive is held waiting for messages (upstream's
/// `grpcClientConsumerMaxLongPollingTimeoutMillis`).
pub const MAX_LONG_POLLING: Duration = Duration::from_secs(20);
/// How long a recall forwarded to the broker holding the message may take
/// (upstream's proxy allows 2 s).
const RECALL_FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Time kept back from a receive's deadline to answer in.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// The producer group a gRPC producer's transactional messages carry:
/// 5.x producers name none, and check-back goes to a producer of the topic.
pub fn grpc_producer_group(topic: &str) -> String {
    topic.to_string()
}

/// Records a call's processing time (`rocketmq_rpc_latency_seconds`,
/// `protocol_type="grpc"`) when dropped.
struct Timed<'a> {
    state: &'a BrokerState,
    rpc: &'static str,
    started: Instant,
}

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.state.metrics.grpc_latency(self.rpc, self.started.elapsed());
    }
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The service, over the broker's state.
pub struct Messaging {
    state: Arc<BrokerState>,
    /// For route lookups at the name servers.
    namesrv: RemotingClient,
}

impl Messaging {
    pub fn new(state: Arc<BrokerState>) -> Messaging {
        let namesrv = RemotingClient::new(state.config.read().inner_client_config(), None);
        Messaging { state, namesrv }
    }

    /// The caller's headers and address; the client id is required.
    fn caller<T>(&self, req: &Request<T>) -> Result<(ClientHeaders, SocketAddr), Status> {
        let headers =
            ClientHeaders::from_metadata(req.metadata()).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let peer = req.remote_addr().unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        self.state.grpc.touch(&headers.client_id);
        Ok((headers, peer))
    }

    /// Whether the caller may touch `needs` (see [`access`]).
    fn allowed<T>(&self, req: &Request<T>, peer: SocketAddr, needs: &[spate_auth::Need<'_>]) -> Result<(), pb::Status> {
        access::check(&self.state, req.metadata(), peer.ip(), needs).map(|_| ())
    }

    /// What `topic` takes, by its `message.type` attribute on this broker.
    fn accepted_types(&self, topic: &str) -> Vec<i32> {
        let tc = self.state.topics.get(topic);
        route::accepted_types(tc.as_ref().and_then(|t| t.message_type()))
    }

    fn group_facts(&self, group: &str) -> GroupFacts {
        let g = self.state.groups.get(group).unwrap_or_default();
        GroupFacts { fifo: g.consume_message_orderly, retry_max_times: g.retry_max_times }
    }

    /// RECALL_MESSAGE to the master of `broker_name` (from the topic's route).
    async fn forward_recall(&self, topic: &str, broker_name: &str, handle: &str) -> Result<String, Refusal> {
        let groups = route::lookup(&self.state, &self.namesrv, topic, false).await.map_err(|e| {
            Refusal::new(response::SERVICE_NOT_AVAILABLE, format!("no route to the broker holding the message: {e:?}"))
        })?;
        // Not in the route now (a failover under way, or the name servers
        // unreachable): the client may try again.
        let Some(target) = groups.iter().find(|g| g.broker_name == broker_name) else {
            return Err(Refusal::new(
                response::SERVICE_NOT_AVAILABLE,
                format!("broker {broker_name} named by the recall handle has no master in {topic}'s route now"),
            ));
        };
        let req = spate_remoting::RemotingCommand::request(spate_remoting::request::RECALL_MESSAGE)
            .with("producerGroup", grpc_producer_group(topic))
            .with("topic", topic)
            .with("recallHandle", handle);
        let resp = self
            .namesrv
            .invoke(&target.addr, req, RECALL_FORWARD_TIMEOUT)
            .await
            .map_err(|e| Refusal::new(response::SYSTEM_ERROR, format!("broker {broker_name}: {e}")))?;
        if resp.code != response::SUCCESS {
            return Err(Refusal::new(resp.code, resp.remark.unwrap_or_default()));
        }
        Ok(resp.field("msgId").unwrap_or_default().to_string())
    }

    async fn send_one(&self, origin: &Origin<'_>, m: pb::Message) -> pb::SendResultEntry {
        let mut entry = pb::SendResultEntry::default();
        let max = self.state.store.config().max_message_size;
        let inbound = match convert::inbound(&m, max) {
            Ok(i) => i,
            Err(e) => {
                let code = match e {
                    convert::ConvertError::NoTopic => Code::IllegalTopic,
                    convert::ConvertError::BadMessageId => Code::IllegalMessageId,
                    convert::ConvertError::ReservedProperty(_) | convert::ConvertError::BadProperty(_) => {
                        Code::IllegalMessagePropertyKey
                    }
                    convert::ConvertError::Mixed(..) => Code::MessagePropertyConflictWithType,
                    convert::ConvertError::Properties(_) => Code::MessagePropertiesTooLarge,
                    convert::ConvertError::BodyTooLarge(_) => Code::MessageBodyTooLarge,
                    _ => Code::BadRequest,
                };
                entry.status = Some(status(code, e.to_string()));
                return entry;
            }
        };
        entry.message_id = inbound.message_id.clone();
        // A topic that declares its message type takes only that type.
        let tc = self.state.topics.get(&inbound.topic);
        let declared = tc.as_ref().and_then(|t| t.message_type());
        let kind = inbound.kind();
        if !route::accepted_types(declared).contains(&(kind as i32)) {
            entry.status = Some(status(
                Code::MessagePropertyConflictWithType,
                format!(
                    "topic {} takes {} messages, not {}",
                    inbound.topic,
                    declared.unwrap_or_default(),
                    kind.as_str_name()
                ),
            ));
            return entry;
        }
        if inbound.body.is_empty() {
            entry.status = Some(status(Code::MessageBodyEmpty, "the message body is empty"));
            return entry;
        }
        if inbound.body.len() > max {
            entry.status = Some(status(
                Code::MessageBodyTooLarge,
                format!("the body is {} bytes, over maxMessageSize {max}", inbound.body.len()),
            ));
            return entry;
        }
        // A FIFO message goes to the queue its group hashes to, so one
        // group's messages stay in one queue, in order.
        let queue_id = match (&inbound.message_group, &tc) {
            (Some(g), Some(tc)) if tc.write_queue_nums > 0 => {
                (message::java_string_hash(g).unsigned_abs() % tc.write_queue_nums as u32) as i32
            }
            _ => -1,
        };
        let sys_flag = if inbound.transactional { message::SYSFLAG_TX_PREPARED } else { 0 };
        let header = crate::send::SendHeader {
            producer_group: grpc_producer_group(&inbound.topic),
            topic: inbound.topic.clone(),
            default_topic: DEFAULT_TOPIC.to_string(),
            default_topic_queue_nums: 4,
            queue_id,
            sys_flag,
            born_timestamp: inbound.born_timestamp,
            flag: 0,
            properties: inbound.properties,
            reconsume_times: 0,
            max_reconsume_times: None,
            batch: false,
        };
        let req = SendRequest { header, body: Bytes::from(inbound.body), received_at: Some(Instant::now()) };
        let stored = match crate::send::send(&self.state, origin, req).await {
            Ok(Stored { unconfirmed: Some(r), .. }) | Err(r) => {
                entry.status = Some(status(send_code(r.code), r.remark));
                return entry;
            }
            Ok(stored) => stored,
        };
        entry.offset = stored.queue_offset;
        if inbound.transactional {
            entry.transaction_id = format!("{}-{}", stored.msg_id, stored.queue_offset);
        }
        entry.recall_handle = stored.recall_handle.unwrap_or_default();
        entry.status = Some(spate_grpc::status::ok());
        entry
    }
}

/// A RocketMQ status.
fn status(code: Code, message: impl Into<String>) -> pb::Status {
    spate_grpc::status::with(code, message)
}

/// A send's remoting outcome as gRPC's code.
fn send_code(code: i32) -> Code {
    match code {
        response::SUCCESS => Code::Ok,
        response::FLUSH_DISK_TIMEOUT => Code::MasterPersistenceTimeout,
        response::FLUSH_SLAVE_TIMEOUT => Code::SlavePersistenceTimeout,
        response::SLAVE_NOT_AVAILABLE => Code::HaNotAvailable,
        response::TOPIC_NOT_EXIST => Code::TopicNotFound,
        response::NO_PERMISSION => Code::Forbidden,
        response::MESSAGE_ILLEGAL => Code::BadRequest,
        response::SYSTEM_BUSY => Code::TooManyRequests,
        response::INVALID_PARAMETER => Code::BadRequest,
        response::SUBSCRIPTION_GROUP_NOT_EXIST => Code::ConsumerGroupNotFound,
        _ => Code::InternalServerError,
    }
}

/// A pop, ack or change's remoting outcome as gRPC's code.
fn consume_code(code: i32) -> Code {
    match code {
        response::SUCCESS => Code::Ok,
        response::NO_MESSAGE => Code::InvalidReceiptHandle,
        response::PULL_NOT_FOUND | response::POLLING_TIMEOUT => Code::MessageNotFound,
        response::POLLING_FULL | response::SYSTEM_BUSY => Code::TooManyRequests,
        response::TOPIC_NOT_EXIST => Code::TopicNotFound,
        response::SUBSCRIPTION_GROUP_NOT_EXIST => Code::ConsumerGroupNotFound,
        response::NO_PERMISSION => Code::Forbidden,
        response::SUBSCRIPTION_PARSE_FAILED => Code::IllegalFilterExpression,
        response::INVALID_PARAMETER => Code::BadRequest,
        response::SLAVE_NOT_AVAILABLE | response::SERVICE_NOT_AVAILABLE => Code::HaNotAvailable,
        _ => Code::InternalServerError,
    }
}

/// The time a call's `grpc-timeout` header leaves, if it has one.
fn deadline_of(md: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn resource_name(r: &Option<pb::Resource>) -> String {
    r.as_ref().map(|r| r.name.clone()).unwrap_or_default()
}

#[tonic::async_trait]
impl pb::messaging_service_server::MessagingService for Messaging {
    async fn query_route(
        &self,
        req: Request<pb::QueryRouteRequest>,
    ) -> Result<Response<pb::QueryRouteResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "query_route", started: Instant::now() };
        let (_, peer) = self.caller(&req)?;
        let name = req.get_ref().topic.as_ref().map(|t| t.name.clone()).unwrap_or_default();
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&name, ROUTE)]) {
            return Ok(Response::new(pb::QueryRouteResponse { status: Some(st), message_queues: vec![] }));
        }
        // A topic is created on a route query only for a caller that may
        // send to it (as a remoting send creates one).
        let may_create = access::permits(&self.state, req.metadata(), peer.ip(), &[access::topic(&name, PUB)]);
        let r = req.into_inner();
        let topic = r.topic.unwrap_or_default();
        if let Err(e) = message::validate_topic(&topic.name) {
            return Ok(Response::new(pb::QueryRouteResponse {
                status: Some(status(Code::IllegalTopic, e.to_string())),
                message_queues: vec![],
            }));
        }
        let answer = match route::lookup(&self.state, &self.namesrv, &topic.name, may_create).await {
            Ok(groups) => pb::QueryRouteResponse {
                status: Some(spate_grpc::status::ok()),
                message_queues: route::message_queues(&topic, &groups, &self.accepted_types(&topic.name)),
            },
            Err(RouteError::NotFound) => pb::QueryRouteResponse {
                status: Some(status(Code::TopicNotFound, format!("topic {} not found", topic.name))),
                message_queues: vec![],
            },
            Err(RouteError::Unavailable(why)) => {
                pb::QueryRouteResponse { status: Some(status(Code::InternalServerError, why)), message_queues: vec![] }
            }
        };
        Ok(Response::new(answer))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "heartbeat", started: Instant::now() };
        let (h, peer) = self.caller(&req)?;
        let group = resource_name(&req.get_ref().group);
        let needs: Vec<_> = if group.is_empty() { vec![] } else { vec![access::group(&group, SUB)] };
        if let Err(st) = self.allowed(&req, peer, &needs) {
            return Ok(Response::new(pb::HeartbeatResponse { status: Some(st) }));
        }
        let st = if self.state.grpc.get(&h.client_id).is_some() {
            spate_grpc::status::ok()
        } else {
            status(Code::UnrecognizedClientType, "cannot find client settings: send them on the Telemetry stream first")
        };
        Ok(Response::new(pb::HeartbeatResponse { status: Some(st) }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "send", started: Instant::now() };
        let (h, peer) = self.caller(&req)?;
        let topics: Vec<String> = req.get_ref().messages.iter().map(|m| resource_name(&m.topic)).collect();
        let needs: Vec<_> = topics.iter().map(|t| access::topic(t, PUB)).collect();
        if let Err(st) = self.allowed(&req, peer, &needs) {
            return Ok(Response::new(pb::SendMessageResponse { status: Some(st), entries: vec![] }));
        }
        let messages = req.into_inner().messages;
        if messages.is_empty() || messages.len() > MAX_SEND_ENTRIES {
            let st = status(Code::BadRequest, format!("a send carries 1..={MAX_SEND_ENTRIES} messages"));
            return Ok(Response::new(pb::SendMessageResponse { status: Some(st), entries: vec![] }));
        }
        let origin = Origin::remote(peer, h.client_id);
        let mut entries = Vec::with_capacity(messages.len());
        for m in messages {
            entries.push(self.send_one(&origin, m).await);
        }
        let overall = overall_status(entries.iter().filter_map(|e| e.status.as_ref()));
        Ok(Response::new(pb::SendMessageResponse { status: Some(overall), entries }))
    }

    async fn query_assignment(
        &self,
        req: Request<pb::QueryAssignmentRequest>,
    ) -> Result<Response<pb::QueryAssignmentResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "query_assignment", started: Instant::now() };
        let (_, peer) = self.caller(&req)?;
        let (t, g) = (resource_name(&req.get_ref().topic), resource_name(&req.get_ref().group));
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, SUB), access::group(&g, SUB)]) {
            return Ok(Response::new(pb::QueryAssignmentResponse { status: Some(st), assignments: vec![] }));
        }
        let r = req.into_inner();
        let topic = r.topic.unwrap_or_default();
        let group = resource_name(&r.group);
        if let Err(e) = crate::names::validate_group(&group) {
            let st = status(Code::IllegalConsumerGroup, e);
            return Ok(Response::new(pb::QueryAssignmentResponse { status: Some(st), assignments: vec![] }));
        }
        if let Err(e) = message::validate_topic(&topic.name) {
            let st = status(Code::IllegalTopic, e.to_string());
            return Ok(Response::new(pb::QueryAssignmentResponse { status: Some(st), assignments: vec![] }));
        }
        let fifo = self.group_facts(&group).fifo;
        let answer = match route::lookup(&self.state, &self.namesrv, &topic.name, false).await {
            Ok(groups) => {
                let assignments = route::assignments(&topic, &groups, fifo, &self.accepted_types(&topic.name));
                let st = if assignments.is_empty() {
                    status(Code::Forbidden, format!("no readable queue of topic {}", topic.name))
                } else {
                    spate_grpc::status::ok()
                };
                pb::QueryAssignmentResponse { status: Some(st), assignments }
            }
            Err(RouteError::NotFound) => pb::QueryAssignmentResponse {
                status: Some(status(Code::TopicNotFound, format!("topic {} not found", topic.name))),
                assignments: vec![],
            },
            Err(RouteError::Unavailable(why)) => pb::QueryAssignmentResponse {
                status: Some(status(Code::InternalServerError, why)),
                assignments: vec![],
            },
        };
        Ok(Response::new(answer))
    }

    type ReceiveMessageStream = ResponseStream<pb::ReceiveMessageResponse>;

    async fn receive_message(
        &self,
        req: Request<pb::ReceiveMessageRequest>,
    ) -> Result<Response<Self::ReceiveMessageStream>, Status> {
        let (h, peer) = self.caller(&req)?;
        let t = req.get_ref().message_queue.as_ref().map(|q| resource_name(&q.topic)).unwrap_or_default();
        let g = resource_name(&req.get_ref().group);
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, SUB), access::group(&g, SUB)]) {
            let item = pb::ReceiveMessageResponse { content: Some(Content::Status(st)) };
            return Ok(Response::new(Box::pin(futures_util::stream::iter([Ok(item)]))));
        }
        let deadline = deadline_of(req.metadata());
        let r = req.into_inner();
        let (tx, rx) = mpsc::channel(spate_grpc::settings::RECEIVE_BATCH_SIZE as usize + 2);
        let state = self.state.clone();
        let fifo = self.group_facts(&resource_name(&r.group)).fifo;
        // The pop runs to its end on a task of its own even if the client
        // goes away (what it handed out is journaled and comes back after
        // its invisible time), but a wait for messages ends with the call.
        let gone = tokio_util::sync::CancellationToken::new();
        let (watch, cancel) = (tx.clone(), gone.clone());
        let watcher = tokio::spawn(async move {
            watch.closed().await;
            cancel.cancel();
        });
        tokio::spawn(async move {
            let answer = receive(&state, peer, h.client_id, r, deadline, fifo, gone).await;
            for item in answer {
                if tx.send(Ok(item)).await.is_err() {
                    break;
                }
            }
            // The watcher holds a sender too: the stream ends only once
            // both are gone.
            watcher.abort();
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn ack_message(
        &self,
        req: Request<pb::AckMessageRequest>,
    ) -> Result<Response<pb::AckMessageResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "ack", started: Instant::now() };
        let (_, peer) = self.caller(&req)?;
        let (t, g) = (resource_name(&req.get_ref().topic), resource_name(&req.get_ref().group));
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, SUB), access::group(&g, SUB)]) {
            return Ok(Response::new(pb::AckMessageResponse { status: Some(st), entries: vec![] }));
        }
        let r = req.into_inner();
        let group = resource_name(&r.group);
        let topic = resource_name(&r.topic);
        if r.entries.is_empty() || r.entries.len() > MAX_ACK_ENTRIES {
            let st = status(Code::BadRequest, format!("an ack carries 1..={MAX_ACK_ENTRIES} entries"));
            return Ok(Response::new(pb::AckMessageResponse { status: Some(st), entries: vec![] }));
        }
        let mut entries = Vec::with_capacity(r.entries.len());
        for e in r.entries {
            let current = self.state.grpc_renewals.settle(&e.receipt_handle).await;
            let acked = match ReceiptRequest::of_handle(&group, &topic, &current) {
                Ok(target) => crate::pop::service::ack(&self.state, &target).await,
                Err(refusal) => Err(refusal),
            };
            let st = acked.map_or_else(handle_status, |()| spate_grpc::status::ok());
            entries.push(pb::AckMessageResultEntry {
                message_id: e.message_id,
                receipt_handle: e.receipt_handle,
                status: Some(st),
            });
        }
        let overall = overall_status(entries.iter().filter_map(|e| e.status.as_ref()));
        Ok(Response::new(pb::AckMessageResponse { status: Some(overall), entries }))
    }

    async fn forward_message_to_dead_letter_queue(
        &self,
        req: Request<pb::ForwardMessageToDeadLetterQueueRequest>,
    ) -> Result<Response<pb::ForwardMessageToDeadLetterQueueResponse>, Status> {
        let (_, peer) = self.caller(&req)?;
        let (t, g) = (resource_name(&req.get_ref().topic), resource_name(&req.get_ref().group));
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, SUB), access::group(&g, SUB)]) {
            return Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse { status: Some(st) }));
        }
        let r = req.into_inner();
        let group = resource_name(&r.group);
        let topic = resource_name(&r.topic);
        let handle = self.state.grpc_renewals.settle(&r.receipt_handle).await;
        let attempts = r.delivery_attempt.max(1) as u32;
        let forwarded = match ReceiptRequest::of_handle(&group, &topic, &handle) {
            Ok(target) => crate::pop::service::forward_to_dlq(&self.state, &target, attempts).await,
            Err(refusal) => Err(refusal),
        };
        let st = forwarded.map_or_else(handle_status, |()| spate_grpc::status::ok());
        Ok(Response::new(pb::ForwardMessageToDeadLetterQueueResponse { status: Some(st) }))
    }

    async fn pull_message(
        &self,
        _req: Request<pb::PullMessageRequest>,
    ) -> Result<Response<Self::PullMessageStream>, Status> {
        Err(Status::unimplemented("PullMessage is not served: receive with ReceiveMessage"))
    }

    type PullMessageStream = ResponseStream<pb::PullMessageResponse>;

    async fn update_offset(
        &self,
        _req: Request<pb::UpdateOffsetRequest>,
    ) -> Result<Response<pb::UpdateOffsetResponse>, Status> {
        Err(Status::unimplemented("UpdateOffset is not served"))
    }

    async fn get_offset(&self, _req: Request<pb::GetOffsetRequest>) -> Result<Response<pb::GetOffsetResponse>, Status> {
        Err(Status::unimplemented("GetOffset is not served"))
    }

    async fn query_offset(
        &self,
        _req: Request<pb::QueryOffsetRequest>,
    ) -> Result<Response<pb::QueryOffsetResponse>, Status> {
        Err(Status::unimplemented("QueryOffset is not served"))
    }

    async fn end_transaction(
        &self,
        req: Request<pb::EndTransactionRequest>,
    ) -> Result<Response<pb::EndTransactionResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "end_transaction", started: Instant::now() };
        let (_, peer) = self.caller(&req)?;
        let t = resource_name(&req.get_ref().topic);
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, PUB)]) {
            return Ok(Response::new(pb::EndTransactionResponse { status: Some(st) }));
        }
        let r = req.into_inner();
        let topic = resource_name(&r.topic);
        let st = match end_transaction(&self.state, &topic, &r).await {
            Ok(()) => spate_grpc::status::ok(),
            Err(st) => st,
        };
        Ok(Response::new(pb::EndTransactionResponse { status: Some(st) }))
    }

    type TelemetryStream = ResponseStream<pb::TelemetryCommand>;

    async fn telemetry(
        &self,
        req: Request<tonic::Streaming<pb::TelemetryCommand>>,
    ) -> Result<Response<Self::TelemetryStream>, Status> {
        let (h, peer) = self.caller(&req)?;
        let metadata = req.metadata().clone();
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(TELEMETRY_QUEUE);
        let state = self.state.clone();
        tokio::spawn(async move {
            let mut stream_id = None;
            loop {
                let cmd = match inbound.message().await {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => break,
                };
                match cmd.command {
                    Some(Command::Settings(s)) => {
                        let answer = match settings_needs(&s) {
                            Ok(named) => {
                                let needs: Vec<_> = named
                                    .iter()
                                    .map(|(k, n, a)| spate_auth::Need { kind: *k, name: n, actions: a })
                                    .collect();
                                match access::check(&state, &metadata, peer.ip(), &needs) {
                                    Ok(who) => settings_answer(&state, &s)
                                        .map(|merged| (merged, who.map(|p| p.username)))
                                        .map_err(|e| status(Code::BadRequest, e.to_string())),
                                    Err(st) => Err(st),
                                }
                            }
                            Err(e) => Err(status(Code::BadRequest, e.to_string())),
                        };
                        let reply = match answer {
                            Ok((merged, owner)) => {
                                let upserted =
                                    state.grpc.upsert(&h.client_id, owner, &h, peer, merged.clone(), Some(tx.clone()));
                                match upserted {
                                    Ok(id) => {
                                        stream_id = Some(id);
                                        pb::TelemetryCommand {
                                            status: Some(spate_grpc::status::ok()),
                                            command: Some(Command::Settings(merged)),
                                        }
                                    }
                                    Err(e) => pb::TelemetryCommand {
                                        status: Some(status(e.code(), e.to_string())),
                                        command: None,
                                    },
                                }
                            }
                            Err(st) => pb::TelemetryCommand { status: Some(st), command: None },
                        };
                        if tx.send(Ok(reply)).await.is_err() {
                            break;
                        }
                    }
                    // Answers to commands the server never sends; nothing to do.
                    Some(_) | None => {
                        state.grpc.touch(&h.client_id);
                    }
                }
            }
            if let Some(id) = stream_id {
                state.grpc.stream_closed(&h.client_id, id);
            }
        });
        Ok(Response::new(Box::pin(tokio_stream_from(rx))))
    }

    async fn notify_client_termination(
        &self,
        req: Request<pb::NotifyClientTerminationRequest>,
    ) -> Result<Response<pb::NotifyClientTerminationResponse>, Status> {
        let (h, peer) = self.caller(&req)?;
        let who = match access::check(&self.state, req.metadata(), peer.ip(), &[]) {
            Ok(who) => who,
            Err(st) => return Ok(Response::new(pb::NotifyClientTerminationResponse { status: Some(st) })),
        };
        // Only the user that set a session up may end it.
        self.state.grpc.remove(&h.client_id, who.map(|p| p.username).as_deref());
        Ok(Response::new(pb::NotifyClientTerminationResponse { status: Some(spate_grpc::status::ok()) }))
    }

    async fn change_invisible_duration(
        &self,
        req: Request<pb::ChangeInvisibleDurationRequest>,
    ) -> Result<Response<pb::ChangeInvisibleDurationResponse>, Status> {
        let _timed = Timed { state: &self.state, rpc: "change_invisible", started: Instant::now() };
        let (_, peer) = self.caller(&req)?;
        let (t, g) = (resource_name(&req.get_ref().topic), resource_name(&req.get_ref().group));
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, SUB), access::group(&g, SUB)]) {
            return Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(st),
                receipt_handle: String::new(),
            }));
        }
        let r = req.into_inner();
        let group = resource_name(&r.group);
        let topic = resource_name(&r.topic);
        let Some(invisible) = r.invisible_duration.as_ref().map(convert::duration_ms) else {
            return Ok(Response::new(pb::ChangeInvisibleDurationResponse {
                status: Some(status(Code::IllegalInvisibleTime, "invisible_duration is required")),
                receipt_handle: String::new(),
            }));
        };
        // A push consumer's message: the broker stops renewing it.
        let handle = self.state.grpc_renewals.settle(&r.receipt_handle).await;
        let (st, new_handle) = match change_invisible(&self.state, &group, &topic, &handle, invisible).await {
            Ok(h) => (spate_grpc::status::ok(), h),
            Err(st) => (st, String::new()),
        };
        Ok(Response::new(pb::ChangeInvisibleDurationResponse { status: Some(st), receipt_handle: new_handle }))
    }

    async fn recall_message(
        &self,
        req: Request<pb::RecallMessageRequest>,
    ) -> Result<Response<pb::RecallMessageResponse>, Status> {
        let (h, peer) = self.caller(&req)?;
        let t = resource_name(&req.get_ref().topic);
        if let Err(st) = self.allowed(&req, peer, &[access::topic(&t, PUB)]) {
            return Ok(Response::new(pb::RecallMessageResponse { status: Some(st), message_id: String::new() }));
        }
        let origin = Origin::remote(peer, h.client_id);
        let r = req.into_inner();
        let topic = resource_name(&r.topic);
        let answer = |st: pb::Status, id: String| {
            Ok(Response::new(pb::RecallMessageResponse { status: Some(st), message_id: id }))
        };
        let Some(h) = crate::timer::RecallHandle::decode(&r.recall_handle).filter(|h| h.topic == topic) else {
            return answer(
                status(Code::BadRequest, "the recall handle is not one this topic's sends returned"),
                String::new(),
            );
        };
        // The broker the handle names holds the message: here, or another
        // master of the topic, asked with RECALL_MESSAGE under this
        // broker's inner credentials, as upstream's proxy asks (so the
        // caller's Pub on the topic is checked here, by this broker's
        // policies, and the handle's topic must be the same).
        let recalled = if h.broker_name == self.state.broker_name {
            let group = grpc_producer_group(&topic);
            crate::timer::recall_by_handle(&self.state, &origin, &group, &topic, &r.recall_handle).await
        } else {
            self.forward_recall(&topic, &h.broker_name, &r.recall_handle).await
        };
        match recalled {
            Ok(_) => answer(spate_grpc::status::ok(), h.key),
            // Too late, or no such pending message.
            Err(e) if e.code == response::ILLEGAL_OPERATION => answer(status(Code::NotFound, e.remark), h.key),
            Err(e) if e.code == response::SERVICE_NOT_AVAILABLE => {
                answer(status(Code::HaNotAvailable, e.remark), h.key)
            }
            Err(e) => answer(status(send_code(e.code), e.remark), h.key),
        }
    }

    async fn sync_lite_subscription(
        &self,
        _req: Request<pb::SyncLiteSubscriptionRequest>,
    ) -> Result<Response<pb::SyncLiteSubscriptionResponse>, Status> {
        Err(Status::unimplemented("lite topics are not served"))
    }
}

/// An ack, change or forward refused: a stale or foreign handle is
/// INVALID_RECEIPT_HANDLE (clients stop retrying on it).
fn handle_status(r: Refusal) -> pb::Status {
    let code = if r.code == response::INVALID_PARAMETER && r.remark.contains("receipt handle") {
        Code::InvalidReceiptHandle
    } else {
        consume_code(r.code)
    };
    status(code, r.remark)
}

/// The whole call's status: the entries' one outcome when they agree,
/// else MULTIPLE_RESULTS.
fn overall_status<'a>(mut each: impl Iterator<Item = &'a pb::Status>) -> pb::Status {
    let Some(first) = each.next() else { return spate_grpc::status::ok() };
    if each.all(|s| s.code == first.code) {
        first.clone()
    } else {
        status(Code::MultipleResults, "entries have different outcomes; see each")
    }
}

/// A resource a call touches, owned: its type, name and acceptable actions.
type NamedNeed = (spate_auth::ResourceType, String, &'static [access::Action]);

/// What a client's settings touch: a producer's topics (Pub), a
/// consumer's group and topics (Sub).
fn settings_needs(s: &pb::Settings) -> Result<Vec<NamedNeed>, settings::SettingsError> {
    use spate_auth::ResourceType;
    match &s.pub_sub {
        Some(pb::settings::PubSub::Publishing(p)) => {
            Ok(p.topics.iter().map(|t| (ResourceType::Topic, t.name.clone(), PUB)).collect())
        }
        Some(pb::settings::PubSub::Subscription(sub)) => {
            let group = sub
                .group
                .as_ref()
                .map(|g| g.name.clone())
                .filter(|g| !g.is_empty())
                .ok_or(settings::SettingsError::NoGroup)?;
            let mut v = vec![(ResourceType::Group, group, SUB)];
            for e in &sub.subscriptions {
                if let Some(t) = &e.topic {
                    v.push((ResourceType::Topic, t.name.clone(), SUB));
                }
            }
            Ok(v)
        }
        None => Err(settings::SettingsError::NoPubSub),
    }
}

fn settings_answer(state: &BrokerState, s: &pb::Settings) -> Result<pb::Settings, settings::SettingsError> {
    let server =
        ServerFacts { max_body_size: i32::try_from(state.store.config().max_message_size).unwrap_or(i32::MAX) };
    let group = settings::subscription_group(s)
        .and_then(|g| state.groups.get(g))
        .map(|g| GroupFacts { fifo: g.consume_message_orderly, retry_max_times: g.retry_max_times })
        .unwrap_or(GroupFacts { fifo: false, retry_max_times: 16 });
    settings::answer(s, &server, &group)
}

/// One ReceiveMessage: the items of its stream (a status, then the
/// messages, or a status alone).
async fn receive(
    state: &Arc<BrokerState>,
    peer: SocketAddr,
    client_id: String,
    r: pb::ReceiveMessageRequest,
    deadline: Option<Duration>,
    fifo: bool,
    gone: tokio_util::sync::CancellationToken,
) -> Vec<pb::ReceiveMessageResponse> {
    let only = |code: Code, msg: String| {
        vec![pb::ReceiveMessageResponse { content: Some(Content::Status(status(code, msg))) }]
    };
    let group = resource_name(&r.group);
    let Some(mq) = r.message_queue else {
        return only(Code::BadRequest, "message_queue is required".into());
    };
    let topic = resource_name(&mq.topic);
    let batch = r.batch_size;
    if !(1..=settings::RECEIVE_BATCH_SIZE).contains(&batch) {
        return only(
            Code::BadRequest,
            format!("batch_size {batch} is out of range 1..={}", settings::RECEIVE_BATCH_SIZE),
        );
    }
    let push_invisible = state.config.read().default_invisible_time;
    let invisible = match (&r.invisible_duration, r.auto_renew) {
        // A push consumer's messages are renewed while it lives (`renew`).
        (_, true) => push_invisible.as_millis() as u64,
        (Some(d), false) => convert::duration_ms(d),
        (None, false) => return only(Code::IllegalInvisibleTime, "invisible_duration is required".into()),
    };
    let requested =
        r.long_polling_timeout.as_ref().map_or(MAX_LONG_POLLING, |d| Duration::from_millis(convert::duration_ms(d)));
    // A missing deadline is treated as the longest poll.
    let room = deadline.map_or(MAX_LONG_POLLING, |d| d.saturating_sub(DEADLINE_MARGIN));
    let poll = requested.min(MAX_LONG_POLLING).min(room);
    let (exp, exp_type) = match &r.filter_expression {
        Some(f) if f.r#type == pb::FilterType::Sql as i32 => (f.expression.clone(), "SQL92"),
        Some(f) => (f.expression.clone(), "TAG"),
        None => ("*".to_string(), "TAG"),
    };
    // Clients name queues in turn; unless the group is FIFO (one batch per
    // queue in flight keeps the order), any queue of the topic here will
    // do, so a receive is not held on an empty queue while others have
    // messages (as upstream's proxy pops).
    let queue_id = if fifo { mq.id } else { -1 };
    let pop = PopMessageRequest {
        group: group.clone(),
        topic: topic.clone(),
        queue_id,
        max_msgs: usize::try_from(batch).unwrap_or(0),
        invisible_ms: invisible,
        poll,
        init_mode: 0,
        expression: if exp.trim().is_empty() { "*".to_string() } else { exp },
        expression_type: exp_type.to_string(),
        order: fifo,
        attempt_id: r.attempt_id.clone().filter(|a| !a.is_empty()),
    };
    let origin = Origin { gone: Some(gone), ..Origin::remote(peer, client_id.clone()) };
    let popped = match crate::pop::service::pop(state, &origin, pop).await {
        Ok(p) => p,
        Err(refusal) => return only(consume_code(refusal.code), refusal.remark),
    };
    let mut out = vec![pb::ReceiveMessageResponse { content: Some(Content::Status(spate_grpc::status::ok())) }];
    let mut rest: &[u8] = &popped.body;
    while !rest.is_empty() {
        let rec = match message::decode_record(rest, false) {
            Ok(rec) => rec,
            Err(e) => {
                tracing::error!(error = %e, "a popped message does not decode; its handle expires and it comes back");
                break;
            }
        };
        let handle = rec.property(convert::POP_CK).map(str::to_string);
        if let Some(h) = handle.as_deref().filter(|_| r.auto_renew) {
            state.grpc_renewals.track(&client_id, &group, &topic, h, push_invisible);
        }
        let d = Delivered {
            topic: topic.clone(),
            receipt_handle: handle,
            invisible_ms: Some(invisible),
            attempt: rec.reconsume_times.saturating_add(1),
            fallback_id: offset_msg_id(rec.store_host, rec.physical_offset.max(0) as u64),
        };
        out.push(pb::ReceiveMessageResponse { content: Some(Content::Message(convert::outbound(&rec, &d))) });
        rest = rest.get(rec.total_size..).unwrap_or_default();
    }
    out.push(pb::ReceiveMessageResponse {
        content: Some(Content::DeliveryTimestamp(convert::timestamp(crate::schedule::now_ms()))),
    });
    out
}

/// EndTransaction as END_TRANSACTION: the transaction id names the half
/// message (its offset id and queue offset, as the send answered).
async fn end_transaction(
    state: &Arc<BrokerState>,
    topic: &str,
    r: &pb::EndTransactionRequest,
) -> Result<(), pb::Status> {
    let bad = || {
        status(Code::InvalidTransactionId, format!("transaction id {:?} is not one this broker gave", r.transaction_id))
    };
    let (msg_id, queue_offset) = r.transaction_id.rsplit_once('-').ok_or_else(bad)?;
    let queue_offset: i64 = queue_offset.parse().map_err(|_| bad())?;
    let (_, commit_log_offset) = parse_offset_msg_id(msg_id).ok_or_else(bad)?;
    let kind = match pb::TransactionResolution::try_from(r.resolution) {
        Ok(pb::TransactionResolution::Commit) => message::SYSFLAG_TX_COMMIT,
        Ok(pb::TransactionResolution::Rollback) => message::SYSFLAG_TX_ROLLBACK,
        _ => return Err(status(Code::BadRequest, "resolution must be COMMIT or ROLLBACK")),
    };
    let from_check = r.source == pb::TransactionSource::SourceServerCheck as i32;
    let end = crate::transaction::EndRequest {
        producer_group: grpc_producer_group(topic),
        half_queue_offset: queue_offset,
        commit_log_offset: commit_log_offset as i64,
        kind,
        from_check,
    };
    crate::transaction::end(state, &end).await.map_err(|r| status(send_code(r.code), r.remark))
}

fn tokio_stream_from<T: Send + 'static>(mut rx: mpsc::Receiver<T>) -> impl Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// Asks a gRPC producer of the half message's topic to resolve it
/// (RecoverOrphanedTransactionCommand on its Telemetry stream); false
/// when none is connected. `record` is the half message, its real topic
/// restored; `offset_id` and `half_offset` name the copy to end.
pub fn ask_transaction(state: &BrokerState, record: &[u8], offset_id: &str, half_offset: i64) -> bool {
    let Ok(rec) = message::decode_record(record, false) else { return false };
    let producers = state.grpc.producers_of(rec.topic);
    let transaction_id = format!("{offset_id}-{half_offset}");
    let d = Delivered {
        topic: rec.topic.to_string(),
        attempt: 1,
        fallback_id: offset_id.to_string(),
        ..Default::default()
    };
    let command = pb::TelemetryCommand {
        status: None,
        command: Some(Command::RecoverOrphanedTransactionCommand(pb::RecoverOrphanedTransactionCommand {
            message: Some(convert::outbound(&rec, &d)),
            transaction_id,
        })),
    };
    // The most recently heard-from producer whose queue has room.
    producers.into_iter().any(|tx| tx.try_send(Ok(command.clone())).is_ok())
}

/// Changes a popped message's invisible time (CHANGE_MESSAGE_INVISIBLETIME)
/// and gives its new handle; shared by ChangeInvisibleDuration and the
/// push consumers' renewals.
pub async fn change_invisible(
    state: &Arc<BrokerState>,
    group: &str,
    topic: &str,
    handle_text: &str,
    invisible_ms: u64,
) -> Result<String, pb::Status> {
    let target = ReceiptRequest::of_handle(group, topic, handle_text).map_err(handle_status)?;
    let invisible_ms = i64::try_from(invisible_ms).unwrap_or(i64::MAX);
    match crate::pop::service::change_invisible(state, &target, invisible_ms).await {
        Ok(renewed) => Ok(renewed.to_string()),
        Err(refusal) => Err(handle_status(refusal)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let mut md = tonic::metadata::MetadataMap::new();
        assert_eq!(deadline_of(&md), None);
        for (v, d) in
            [("3S", Duration::from_secs(3)), ("250m", Duration::from_millis(250)), ("2M", Duration::from_secs(120))]
        {
            md.insert("grpc-timeout", v.parse().unwrap());
            assert_eq!(deadline_of(&md), Some(d), "{v}");
        }
        md.insert("grpc-timeout", "9X".parse().unwrap());
        assert_eq!(deadline_of(&md), None);
    }
}
