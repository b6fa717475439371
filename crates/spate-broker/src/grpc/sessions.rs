//! gRPC clients as the broker knows them: the settings each sent on its
//! Telemetry stream (the answer it got), its language and version, when it
//! was last heard from, and the stream's sender for server commands
//! (transaction check-back). Heartbeat needs the settings; admin lists the
//! sessions; the transaction checker finds a producer of a topic here.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spate_grpc::pb::{self, settings::PubSub};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::BrokerState;

/// Most gRPC client sessions kept (each is a few hundred bytes plus its
/// settings); new clients are refused past it.
pub const MAX_SESSIONS: usize = 10_000;
/// Commands queued for one client's Telemetry stream before further ones
/// are dropped (a check-back is asked again later).
pub const TELEMETRY_QUEUE: usize = 32;
/// A session silent this long is forgotten (clients heartbeat every 10 s
/// and keep their Telemetry stream open; upstream's `channelExpiredTimeout`).
pub const SESSION_EXPIRY: Duration = Duration::from_secs(120);

/// What the server pushes on a client's Telemetry stream.
pub type TelemetrySender = mpsc::Sender<Result<pb::TelemetryCommand, tonic::Status>>;

/// One gRPC client instance.
#[derive(Clone)]
pub struct Session {
    pub client_id: String,
    pub language: String,
    pub version: String,
    pub peer: SocketAddr,
    /// The settings as answered (the client's, completed by the server).
    pub settings: pb::Settings,
    pub last_seen: Instant,
    /// The user that set it up (authentication on), who alone may change
    /// or end it.
    pub owner: Option<String>,
    /// Set while the Telemetry stream is open; `stream` tells the stream
    /// apart from a later one of the same client.
    telemetry: Option<(u64, TelemetrySender)>,
}

impl Session {
    /// The consumer group, for a consumer.
    pub fn group(&self) -> Option<&str> {
        spate_grpc::settings::subscription_group(&self.settings)
    }

    /// The topics a producer said it publishes.
    pub fn topics(&self) -> Vec<&str> {
        match &self.settings.pub_sub {
            Some(PubSub::Publishing(p)) => p.topics.iter().map(|t| t.name.as_str()).collect(),
            Some(PubSub::Subscription(s)) => {
                s.subscriptions.iter().filter_map(|e| e.topic.as_ref()).map(|t| t.name.as_str()).collect()
            }
            None => Vec::new(),
        }
    }

    /// As admin lists a group's connections.
    pub fn connection(&self) -> spate_remoting::protocol::ClientConnection {
        spate_remoting::protocol::ClientConnection {
            client_id: self.client_id.clone(),
            client_addr: self.peer.to_string(),
            language: self.language.clone(),
            version: 0,
            protocol: "gRPC".into(),
            client_version: self.version.clone(),
        }
    }

    pub fn is_producer(&self) -> bool {
        matches!(self.settings.pub_sub, Some(PubSub::Publishing(_)))
    }
}

/// Most topics or subscriptions one client's settings may name.
pub const MAX_SETTINGS_ENTRIES: usize = 1024;
/// Most bytes of one client's settings, as kept.
pub const MAX_SETTINGS_BYTES: usize = 64 << 10;

/// Why a session was not kept.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("too many gRPC clients ({MAX_SESSIONS}); try again later")]
    TooMany,
    #[error(
        "settings name more than {MAX_SETTINGS_ENTRIES} topics or subscriptions, or exceed {MAX_SETTINGS_BYTES} bytes"
    )]
    TooLarge,
    #[error("client id {0} belongs to another user's session")]
    NotOwner(String),
}

impl Refused {
    /// RocketMQ's status code for it.
    pub fn code(&self) -> spate_grpc::pb::Code {
        match self {
            Refused::TooMany => spate_grpc::pb::Code::TooManyRequests,
            Refused::TooLarge => spate_grpc::pb::Code::BadRequest,
            Refused::NotOwner(_) => spate_grpc::pb::Code::Forbidden,
        }
    }
}

/// Every gRPC client session.
#[derive(Default)]
pub struct GrpcSessions {
    sessions: Mutex<HashMap<String, Session>>,
    next_stream: std::sync::atomic::AtomicU64,
}

impl GrpcSessions {
    /// Records a client's (answered) settings and, when the call is its
    /// Telemetry stream, the sender for commands; returns the stream's id.
    pub fn upsert(
        &self,
        client_id: &str,
        owner: Option<String>,
        headers: &spate_grpc::headers::ClientHeaders,
        peer: SocketAddr,
        settings: pb::Settings,
        telemetry: Option<TelemetrySender>,
    ) -> Result<u64, Refused> {
        use prost::Message;
        let entries = match &settings.pub_sub {
            Some(PubSub::Publishing(p)) => p.topics.len(),
            Some(PubSub::Subscription(s)) => s.subscriptions.len(),
            None => 0,
        };
        if entries > MAX_SETTINGS_ENTRIES || settings.encoded_len() > MAX_SETTINGS_BYTES {
            return Err(Refused::TooLarge);
        }
        let id = self.next_stream.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut map = self.sessions.lock();
        match map.get(client_id) {
            Some(s) if s.owner != owner => return Err(Refused::NotOwner(client_id.to_string())),
            None if map.len() >= MAX_SESSIONS => return Err(Refused::TooMany),
            _ => {}
        }
        let s = map.entry(client_id.to_string()).or_insert_with(|| Session {
            client_id: client_id.to_string(),
            language: String::new(),
            version: String::new(),
            peer,
            settings: pb::Settings::default(),
            last_seen: Instant::now(),
            owner: owner.clone(),
            telemetry: None,
        });
        s.language = headers.language.clone();
        s.version = headers.version.clone();
        s.peer = peer;
        s.settings = settings;
        s.last_seen = Instant::now();
        if let Some(tx) = telemetry {
            s.telemetry = Some((id, tx));
        }
        Ok(id)
    }

    /// Marks a client alive; false when it never sent settings.
    pub fn touch(&self, client_id: &str) -> bool {
        match self.sessions.lock().get_mut(client_id) {
            Some(s) => {
                s.last_seen = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Whether the client's Telemetry stream is open.
    pub fn stream_open(&self, client_id: &str) -> bool {
        self.sessions.lock().get(client_id).is_some_and(|s| s.telemetry.is_some())
    }

    pub fn get(&self, client_id: &str) -> Option<Session> {
        self.sessions.lock().get(client_id).cloned()
    }

    /// The Telemetry stream `stream` of a client ended.
    pub fn stream_closed(&self, client_id: &str, stream: u64) {
        if let Some(s) = self.sessions.lock().get_mut(client_id) {
            if s.telemetry.as_ref().is_some_and(|(id, _)| *id == stream) {
                s.telemetry = None;
            }
        }
    }

    /// NotifyClientTermination: the client is gone (only its owner may say so).
    pub fn remove(&self, client_id: &str, by: Option<&str>) -> Option<Session> {
        let mut map = self.sessions.lock();
        if map.get(client_id).is_some_and(|s| s.owner.as_deref() == by) {
            return map.remove(client_id);
        }
        None
    }

    /// Every session (admin).
    pub fn all(&self) -> Vec<Session> {
        let mut v: Vec<Session> = self.sessions.lock().values().cloned().collect();
        v.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        v
    }

    /// Sessions of a consumer group (admin, assignment).
    pub fn consumers_of(&self, group: &str) -> Vec<Session> {
        self.all().into_iter().filter(|s| s.group() == Some(group)).collect()
    }

    /// Sessions of producers that said they publish `topic` (admin: a
    /// RocketMQ 5 producer names no group; upstream's proxy lists it under
    /// the topic, as here).
    pub fn producers_publishing(&self, topic: &str) -> Vec<Session> {
        self.all().into_iter().filter(|s| s.is_producer() && s.topics().contains(&topic)).collect()
    }

    /// The command senders of producers publishing `topic` whose stream
    /// is open (transaction check-back), most recently heard from first.
    pub fn producers_of(&self, topic: &str) -> Vec<TelemetrySender> {
        let map = self.sessions.lock();
        let mut v: Vec<(Instant, TelemetrySender)> = map
            .values()
            .filter(|s| s.is_producer() && s.topics().contains(&topic))
            .filter_map(|s| s.telemetry.as_ref().map(|(_, tx)| (s.last_seen, tx.clone())))
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.0));
        v.into_iter().map(|(_, tx)| tx).collect()
    }

    /// Forgets sessions silent past `expiry` with no open stream.
    pub fn expire(&self, now: Instant, expiry: Duration) -> usize {
        let mut map = self.sessions.lock();
        let before = map.len();
        map.retain(|_, s| s.telemetry.is_some() || now.saturating_duration_since(s.last_seen) < expiry);
        before - map.len()
    }

    pub fn len(&self) -> usize {
        self.sessions.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Forgets silent sessions every few seconds until `stop`.
pub async fn run_expiry(state: Arc<BrokerState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(10));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gone = state.grpc.expire(Instant::now(), SESSION_EXPIRY);
        if gone > 0 {
            tracing::info!(gone, "silent gRPC clients forgotten");
        }
    }
}
