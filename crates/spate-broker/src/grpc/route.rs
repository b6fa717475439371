//! QueryRoute and QueryAssignment: a topic's queues as gRPC clients see
//! them. The route comes from the name servers (every broker group of the
//! topic, with its current master), or from this broker's own table when
//! no name server answers. A broker's gRPC endpoint is its remoting
//! address: every Spate broker serves gRPC there too, so the address the
//! name server knows after a failover is the one clients follow.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spate_grpc::pb::{self, AddressScheme, MessageType, Permission};
use spate_remoting::protocol::{json, perm, route::TopicRouteData, DEFAULT_TOPIC};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

use crate::BrokerState;

/// How long a route lookup waits for a name server.
const NAMESRV_TIMEOUT: Duration = Duration::from_secs(3);

/// One broker group's queues of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupQueues {
    pub broker_name: String,
    /// The master's address (remoting and gRPC).
    pub addr: String,
    pub read_queue_nums: i32,
    pub write_queue_nums: i32,
    pub perm: i32,
}

/// Why a route could not be given.
#[derive(Debug)]
pub enum RouteError {
    NotFound,
    Unavailable(String),
}

/// The topic's broker groups with a master, from the name servers, else
/// from this broker alone; `may_create`: an unknown topic may be created
/// here (the caller could send to it).
pub async fn lookup(
    state: &Arc<BrokerState>,
    client: &RemotingClient,
    topic: &str,
    may_create: bool,
) -> Result<Vec<GroupQueues>, RouteError> {
    let namesrvs = state.config.read().namesrv_addr.clone();
    let mut last = String::from("no name server configured");
    for addr in &namesrvs {
        let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic);
        match client.invoke(addr, req, NAMESRV_TIMEOUT).await {
            Ok(resp) if resp.code == response::SUCCESS => {
                match json::decode::<TopicRouteData>(&resp.body, "TopicRouteData") {
                    Ok(data) => {
                        let groups = from_route(&data);
                        if groups.is_empty() {
                            // Known, but no group has a master now (a
                            // failover under way): clients try again.
                            return Err(RouteError::Unavailable(format!("topic {topic} has no master at the moment")));
                        }
                        return Ok(groups);
                    }
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            Ok(resp) if resp.code == response::TOPIC_NOT_EXIST => return local(state, topic, may_create).await,
            Ok(resp) => last = format!("{addr} answered {}: {}", resp.code, resp.remark.unwrap_or_default()),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    tracing::debug!(topic, reason = %last, "no name server route; answering with this broker's queues");
    local(state, topic, may_create).await
}

async fn create(state: &Arc<BrokerState>, topic: &str) -> Result<spate_remoting::protocol::TopicConfig, RouteError> {
    let (auto, queues, role) = {
        let c = state.config.read();
        (c.auto_create_topic_enable, c.default_topic_queue_nums, c.broker_role)
    };
    if !auto || role == crate::BrokerRole::Slave || crate::names::client_may_send(topic).is_err() {
        return Err(RouteError::NotFound);
    }
    let tc = state.topics.create_on_send(topic, DEFAULT_TOPIC, queues).ok_or(RouteError::NotFound)?;
    tracing::info!(topic, queues = tc.write_queue_nums, "topic created on a gRPC client's first route query");
    state.topics.persist().await.map_err(|e| RouteError::Unavailable(e.to_string()))?;
    // Registered before the answer, so the client's next route query
    // (at the name server's view) finds it too.
    state.topics_changed_and_registered().await;
    Ok(tc)
}

/// This broker's own queues of the topic; an unknown topic a client may
/// write is created here when `autoCreateTopicEnable` is on, as a remoting
/// producer's first send creates it (gRPC producers ask for the route
/// before they send).
async fn local(state: &Arc<BrokerState>, topic: &str, may_create: bool) -> Result<Vec<GroupQueues>, RouteError> {
    let tc = match state.topics.get(topic) {
        Some(tc) => tc,
        None if may_create => create(state, topic).await?,
        None => return Err(RouteError::NotFound),
    };
    if state.config.read().broker_role == crate::BrokerRole::Slave {
        return Err(RouteError::Unavailable("this broker is a slave and no name server answered".into()));
    }
    Ok(vec![GroupQueues {
        broker_name: state.broker_name.clone(),
        addr: state.broker_addr.to_string(),
        read_queue_nums: tc.read_queue_nums,
        write_queue_nums: tc.write_queue_nums,
        perm: tc.perm & state.config.read().broker_permission,
    }])
}

/// The groups of a name server's route that have a master.
pub fn from_route(data: &TopicRouteData) -> Vec<GroupQueues> {
    let mut out = Vec::new();
    for q in &data.queue_datas {
        let Some(b) = data.broker_datas.iter().find(|b| b.broker_name == q.broker_name) else { continue };
        let Some(addr) = b.master_addr() else { continue };
        out.push(GroupQueues {
            broker_name: q.broker_name.clone(),
            addr: addr.to_string(),
            read_queue_nums: q.read_queue_nums,
            write_queue_nums: q.write_queue_nums,
            perm: q.perm,
        });
    }
    out.sort_by(|a, b| a.broker_name.cmp(&b.broker_name));
    out
}

/// An address as gRPC's `Endpoints`.
pub fn endpoints(addr: &str) -> pb::Endpoints {
    let (host, port) = match addr.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip().to_string(), i32::from(sa.port())),
        Err(_) => match addr.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().unwrap_or(0)),
            None => (addr.to_string(), 0),
        },
    };
    let scheme = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(_)) => AddressScheme::IPv4,
        Ok(std::net::IpAddr::V6(_)) => AddressScheme::IPv6,
        Err(_) => AddressScheme::DomainName,
    };
    pb::Endpoints { scheme: scheme as i32, addresses: vec![pb::Address { host, port }] }
}

fn broker(g: &GroupQueues) -> pb::Broker {
    pb::Broker { name: g.broker_name.clone(), id: 0, endpoints: Some(endpoints(&g.addr)) }
}

/// The message types a topic takes: the one its `message.type` attribute
/// declares, or every type when it declares none (or `MIXED`).
pub fn accepted_types(declared: Option<&str>) -> Vec<i32> {
    let all = [MessageType::Normal, MessageType::Fifo, MessageType::Delay, MessageType::Transaction];
    let one = match declared {
        Some("NORMAL") => Some(MessageType::Normal),
        Some("FIFO") => Some(MessageType::Fifo),
        Some("DELAY") => Some(MessageType::Delay),
        Some("TRANSACTION") => Some(MessageType::Transaction),
        _ => None,
    };
    match one {
        Some(t) => vec![t as i32],
        None => all.into_iter().map(|t| t as i32).collect(),
    }
}

/// The queues of a route as QueryRoute lists them: ids below both counts
/// read-write, the rest read-only or write-only, each under the topic's
/// permission.
pub fn message_queues(topic: &pb::Resource, groups: &[GroupQueues], types: &[i32]) -> Vec<pb::MessageQueue> {
    let mut out = Vec::new();
    for g in groups {
        let n = g.read_queue_nums.max(g.write_queue_nums).max(0);
        for id in 0..n {
            let r = id < g.read_queue_nums && perm::readable(g.perm);
            let w = id < g.write_queue_nums && perm::writeable(g.perm);
            let permission = match (r, w) {
                (true, true) => Permission::ReadWrite,
                (true, false) => Permission::Read,
                (false, true) => Permission::Write,
                (false, false) => Permission::None,
            };
            out.push(pb::MessageQueue {
                topic: Some(topic.clone()),
                id,
                permission: permission as i32,
                broker: Some(broker(g)),
                accept_message_types: types.to_vec(),
            });
        }
    }
    out
}

/// QueryAssignment's answer: for a FIFO group every readable queue (one
/// batch per queue in flight keeps the order); otherwise one entry per
/// broker group with queue id -1, pops from any of its queues.
pub fn assignments(topic: &pb::Resource, groups: &[GroupQueues], fifo: bool, types: &[i32]) -> Vec<pb::Assignment> {
    let mut out = Vec::new();
    for g in groups.iter().filter(|g| perm::readable(g.perm) && g.read_queue_nums > 0) {
        let ids: Vec<i32> = if fifo { (0..g.read_queue_nums).collect() } else { vec![-1] };
        for id in ids {
            out.push(pb::Assignment {
                message_queue: Some(pb::MessageQueue {
                    topic: Some(topic.clone()),
                    id,
                    permission: Permission::Read as i32,
                    broker: Some(broker(g)),
                    accept_message_types: types.to_vec(),
                }),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(r: i32, w: i32, p: i32) -> GroupQueues {
        GroupQueues {
            broker_name: "b".into(),
            addr: "10.0.0.1:10911".into(),
            read_queue_nums: r,
            write_queue_nums: w,
            perm: p,
        }
    }

    #[test]
    fn queues_split_by_counts_and_permission() {
        let t = pb::Resource { name: "T".into(), ..Default::default() };
        let qs = message_queues(&t, &[group(2, 3, perm::READ | perm::WRITE)], &accepted_types(None));
        let perms: Vec<i32> = qs.iter().map(|q| q.permission).collect();
        assert_eq!(perms, vec![Permission::ReadWrite as i32, Permission::ReadWrite as i32, Permission::Write as i32]);
        let ep = qs[0].broker.as_ref().unwrap().endpoints.as_ref().unwrap();
        assert_eq!(ep.addresses[0].host, "10.0.0.1");
        assert_eq!(ep.addresses[0].port, 10911);
        assert_eq!(ep.scheme, AddressScheme::IPv4 as i32);
        let ro = message_queues(&t, &[group(1, 1, perm::READ)], &accepted_types(Some("FIFO")));
        assert_eq!(ro[0].accept_message_types, vec![MessageType::Fifo as i32]);
        assert_eq!(qs[0].accept_message_types.len(), 4);
        assert_eq!(ro[0].permission, Permission::Read as i32);
    }

    #[test]
    fn assignments_are_per_broker_unless_fifo() {
        let t = pb::Resource { name: "T".into(), ..Default::default() };
        let g = [group(4, 4, perm::READ | perm::WRITE)];
        let a = assignments(&t, &g, false, &[]);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].message_queue.as_ref().unwrap().id, -1);
        assert_eq!(assignments(&t, &g, true, &[]).len(), 4);
        assert!(assignments(&t, &[group(4, 4, perm::WRITE)], false, &[]).is_empty());
    }
}
