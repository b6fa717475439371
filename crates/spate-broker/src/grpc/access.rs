//! Who may make a gRPC call: the same users, policies and switches
//! (`authenticationEnabled`, `authorizationEnabled`) as the remoting
//! front end's gate. A call proves its access key with the
//! `MQv2-HMAC-SHA1` signature of its `x-mq-date-time` header (checked over
//! the raw value, no freshness window, as upstream); each RPC names the
//! topics and groups it touches. Refusals are counted and logged with the
//! remoting ones (`spate_auth_denied_total`).

use std::net::IpAddr;

use spate_auth::{AuthFailure, Need, Principal, Proof, ResourceType};
use spate_grpc::headers::{AUTHORIZATION, DATE_TIME};
use spate_grpc::pb::{self, Code};
use tonic::metadata::MetadataMap;

use crate::BrokerState;

pub use spate_auth::Action;

/// A topic the call touches with any one of `actions`.
pub fn topic<'a>(name: &'a str, actions: &'a [Action]) -> Need<'a> {
    Need { kind: ResourceType::Topic, name, actions }
}

/// A consumer group the call touches with any one of `actions`.
pub fn group<'a>(name: &'a str, actions: &'a [Action]) -> Need<'a> {
    Need { kind: ResourceType::Group, name, actions }
}

pub const PUB: &[Action] = &[Action::Pub];
pub const SUB: &[Action] = &[Action::Sub];
/// A route lookup serves producers and consumers alike.
pub const ROUTE: &[Action] = &[Action::Pub, Action::Sub, Action::Get];

/// Decides one call from `source` that touches `needs`; `Ok(None)` when
/// authentication is off. The refusal is RocketMQ's status to answer with.
pub fn check(
    state: &BrokerState,
    md: &MetadataMap,
    source: IpAddr,
    needs: &[Need<'_>],
) -> Result<Option<Principal>, pb::Status> {
    let settings = state.gate.settings();
    if !settings.authentication_enabled {
        return Ok(None);
    }
    let decided = decide(state, md, source, needs, settings.authorization_enabled);
    decided.map(Some).map_err(|failure| {
        state.gate.note_denied(&failure, 0, source);
        let code = match failure {
            AuthFailure::Denied { .. } | AuthFailure::NeedsSuper { .. } | AuthFailure::NoRule { .. } => Code::Forbidden,
            _ => Code::Unauthorized,
        };
        spate_grpc::status::with(code, failure.to_string())
    })
}

/// Whether the call may touch `needs`, without counting or logging a
/// refusal (for what a call may do besides what it asked).
pub fn permits(state: &BrokerState, md: &MetadataMap, source: IpAddr, needs: &[Need<'_>]) -> bool {
    let settings = state.gate.settings();
    !settings.authentication_enabled || decide(state, md, source, needs, settings.authorization_enabled).is_ok()
}

fn decide(
    state: &BrokerState,
    md: &MetadataMap,
    source: IpAddr,
    needs: &[Need<'_>],
    authorization: bool,
) -> Result<Principal, AuthFailure> {
    let header = md.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let date_time = md.get(DATE_TIME).and_then(|v| v.to_str().ok());
    let (Some(auth), Some(date_time)) = (header.and_then(spate_auth::sign::parse_mqv2_authorization), date_time) else {
        return Err(AuthFailure::MissingGrpcAuthorization);
    };
    let users = state.gate.users();
    let who = users.authenticate(&auth.access_key, Proof::Mqv2 { date_time, signature: &auth.signature })?;
    if who.is_super() || !authorization {
        return Ok(who);
    }
    users.authorize(&who, needs, source)?;
    Ok(who)
}
