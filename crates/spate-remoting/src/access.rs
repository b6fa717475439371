//! Who may send which remoting request: authentication (a valid signature
//! from a known, enabled user) and authorization (the resources a request
//! code touches, and the actions any one of which lets it through).
//!
//! One table per server ([`broker_rule`], [`namesrv_rule`]) maps every
//! request code the server handles to a [`Rule`]. A code with no rule is
//! refused to everyone but Super users, so a handler added without an
//! entry fails closed; the tests walk the tables against the handlers.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use spate_auth::{Action, AuthFailure, AuthStore, Need, Principal, ResourceType};

use crate::code::request as r;
use crate::command::RemotingCommand;
use crate::protocol::{json, HeartbeatData, LockBatchRequestBody};

/// The user and ACL codes, where the other request codes live.
pub use crate::code::request as code;

/// `authenticationEnabled` (`aclEnable` is 1.0's spelling) and the rest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessSettings {
    /// Every request needs a valid signature, except whitelisted codes.
    pub authentication_enabled: bool,
    /// Normal users need a policy for what they touch.
    pub authorization_enabled: bool,
    /// Codes that need no signature (`authenticationWhitelist`).
    pub authentication_whitelist: Vec<i32>,
    /// Codes that need a signature but no policy (`authorizationWhitelist`).
    pub authorization_whitelist: Vec<i32>,
}

impl AccessSettings {
    /// Applies one configuration key; `Ok(false)` when the key is not one of these.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool, String> {
        let flag = |v: &str| match v.trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(format!("invalid value `{other}` for {key}: expected true or false")),
        };
        let codes = |v: &str| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<i32>().map_err(|_| format!("invalid request code `{s}` in {key}")))
                .collect::<Result<Vec<_>, _>>()
        };
        match key {
            "authenticationEnabled" | "aclEnable" => self.authentication_enabled = flag(value)?,
            "authorizationEnabled" => self.authorization_enabled = flag(value)?,
            "authenticationWhitelist" => self.authentication_whitelist = codes(value)?,
            "authorizationWhitelist" => self.authorization_whitelist = codes(value)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Authorization decides on an authenticated user, so it needs authentication.
    pub fn validate(&self) -> Result<(), String> {
        if self.authorization_enabled && !self.authentication_enabled {
            return Err("authorizationEnabled=true needs authenticationEnabled=true: a policy applies to a \
                        signed-in user"
                .into());
        }
        Ok(())
    }
}

/// A resource a request touches: its name borrowed from the request's
/// header, or owned when read from its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Touch<'a> {
    pub kind: ResourceType,
    pub name: Cow<'a, str>,
    pub actions: &'static [Action],
}

/// What a request code needs.
#[derive(Clone, Copy)]
pub enum Rule {
    /// The resources it touches (read from its header or body), each with
    /// the actions any one of which is enough. An empty list: any signed-in user.
    Touches(for<'a> fn(&'a RemotingCommand, &'a str) -> Result<Vec<Touch<'a>>, String>),
    /// Only a Super user (route registration, user administration).
    SuperOnly,
}

const PUB: &[Action] = &[Action::Pub];
const SUB: &[Action] = &[Action::Sub];
const SUB_OR_GET: &[Action] = &[Action::Sub, Action::Get];
const SUB_OR_UPDATE: &[Action] = &[Action::Sub, Action::Update];
const ROUTE: &[Action] = &[Action::Pub, Action::Sub, Action::Get];
const GET: &[Action] = &[Action::Get];
const GET_OR_LIST: &[Action] = &[Action::Get, Action::List];
const CREATE_OR_UPDATE: &[Action] = &[Action::Create, Action::Update];
const UPDATE: &[Action] = &[Action::Update];
const DELETE: &[Action] = &[Action::Delete];

fn field<'a>(cmd: &'a RemotingCommand, key: &str) -> Result<&'a str, String> {
    cmd.field(key).ok_or_else(|| format!("request code {} needs header field {key}", cmd.code))
}

/// A topic a request names. A consumer group's own topics
/// (`%RETRY%<group>`, `%DLQ%<group>`) are covered by the group's grant (as
/// upstream's `DefaultAuthorizationContextBuilder`): Sub or Get on the
/// group instead of a grant on a topic nobody creates by hand. Without this
/// a stock push consumer, which subscribes to its retry topic, never gets a
/// failed message back.
fn named_topic<'a>(name: &'a str, actions: &'static [Action]) -> Touch<'a> {
    let own_group = name
        .strip_prefix(crate::protocol::RETRY_GROUP_TOPIC_PREFIX)
        .or_else(|| name.strip_prefix(crate::protocol::DLQ_GROUP_TOPIC_PREFIX));
    match own_group {
        Some(g) => Touch { kind: ResourceType::Group, name: Cow::Borrowed(g), actions: SUB_OR_GET },
        None => Touch { kind: ResourceType::Topic, name: Cow::Borrowed(name), actions },
    }
}

/// [`named_topic`] of a name read from a request's body.
fn named_topic_owned(name: &str, actions: &'static [Action]) -> Touch<'static> {
    let t = named_topic(name, actions);
    Touch { kind: t.kind, name: Cow::Owned(t.name.into_owned()), actions: t.actions }
}

/// [`named_topic`] of a header field.
fn topic<'a>(cmd: &'a RemotingCommand, key: &str, actions: &'static [Action]) -> Result<Touch<'a>, String> {
    Ok(named_topic(field(cmd, key)?, actions))
}

fn group<'a>(cmd: &'a RemotingCommand, key: &str, actions: &'static [Action]) -> Result<Touch<'a>, String> {
    Ok(Touch { kind: ResourceType::Group, name: Cow::Borrowed(field(cmd, key)?), actions })
}

fn cluster<'a>(name: &'a str, actions: &'static [Action]) -> Vec<Touch<'a>> {
    vec![Touch { kind: ResourceType::Cluster, name: Cow::Borrowed(name), actions }]
}

/// A send: Pub on its topic (`topic`, or `b` in the V2 header); a send to
/// `%RETRY%<group>` is the group's consumer at work, so Sub on the group.
fn send<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    let key = if cmd.field("topic").is_some() { "topic" } else { "b" };
    Ok(vec![topic(cmd, key, PUB)?])
}

/// A 5.x client names the topic; a 4.x one only its producer group, on
/// which it then needs Pub.
fn end_transaction<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    match cmd.field("topic") {
        Some(_) => Ok(vec![topic(cmd, "topic", PUB)?]),
        None => Ok(vec![group(cmd, "producerGroup", PUB)?]),
    }
}

fn pull<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    Ok(vec![topic(cmd, "topic", SUB)?, group(cmd, "consumerGroup", SUB)?])
}

/// Sub on every consumer group and subscribed topic; producer groups need nothing.
fn heartbeat<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    let hb: HeartbeatData = json::decode(&cmd.body, "HeartbeatData").map_err(|e| e.to_string())?;
    let mut touches = Vec::new();
    for c in &hb.consumer_data_set {
        touches.push(Touch { kind: ResourceType::Group, name: Cow::Owned(c.group_name.clone()), actions: SUB });
        for s in &c.subscription_data_set {
            // Its own retry topic is covered by its group.
            touches.push(named_topic_owned(&s.topic, SUB));
        }
    }
    Ok(touches)
}

fn consumer_group<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    Ok(cmd
        .field("consumerGroup")
        .map(|g| Touch { kind: ResourceType::Group, name: Cow::Borrowed(g), actions: SUB_OR_GET })
        .into_iter()
        .collect())
}

fn lock_batch<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    let body: LockBatchRequestBody = json::decode(&cmd.body, "LockBatchRequestBody").map_err(|e| e.to_string())?;
    let mut touches = vec![Touch { kind: ResourceType::Group, name: Cow::Owned(body.consumer_group), actions: SUB }];
    for mq in body.mq_set {
        touches.push(named_topic_owned(&mq.topic, SUB));
    }
    Ok(touches)
}

/// A batch ack (its JSON body): Sub on every group and topic it names.
fn batch_ack<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    let body: serde_json::Value = serde_json::from_slice(&cmd.body).map_err(|e| e.to_string())?;
    let mut touches = Vec::new();
    for ack in body.get("acks").and_then(serde_json::Value::as_array).into_iter().flatten() {
        let field = |short: &str, long: &str| ack.get(short).or_else(|| ack.get(long)).and_then(|v| v.as_str());
        let (Some(group), Some(topic)) = (field("c", "consumerGroup"), field("t", "topic")) else {
            return Err("a batch ack entry without its group or topic".into());
        };
        touches.push(Touch { kind: ResourceType::Group, name: Cow::Owned(group.to_string()), actions: SUB });
        touches.push(named_topic_owned(topic, SUB));
    }
    if touches.is_empty() {
        return Err("a batch ack without entries".into());
    }
    Ok(touches)
}

fn check_client_config<'a>(cmd: &'a RemotingCommand, _: &'a str) -> Result<Vec<Touch<'a>>, String> {
    let body: crate::protocol::CheckClientRequestBody =
        json::decode(&cmd.body, "CheckClientRequestBody").map_err(|e| e.to_string())?;
    Ok(vec![
        Touch { kind: ResourceType::Group, name: Cow::Owned(body.group), actions: SUB },
        Touch { kind: ResourceType::Topic, name: Cow::Owned(body.subscription_data.topic), actions: SUB },
    ])
}

fn group_offset<'a>(cmd: &'a RemotingCommand, actions: &'static [Action]) -> Result<Vec<Touch<'a>>, String> {
    Ok(vec![topic(cmd, "topic", actions)?, group(cmd, "consumerGroup", actions)?])
}

/// Reading one message by offset: its topic when the client names it (5.x),
/// else the whole cluster's Get.
fn view_message<'a>(cmd: &'a RemotingCommand, cluster_name: &'a str) -> Result<Vec<Touch<'a>>, String> {
    match cmd.field("topic") {
        Some(_) => Ok(vec![topic(cmd, "topic", SUB_OR_GET)?]),
        None => Ok(cluster(cluster_name, GET)),
    }
}

/// The broker's table: every code `spate-broker` handles.
pub fn broker_rule(code: i32) -> Option<Rule> {
    use code::*;
    use Rule::{SuperOnly, Touches};
    Some(match code {
        r::SEND_MESSAGE | r::SEND_MESSAGE_V2 | r::SEND_BATCH_MESSAGE => Touches(send),
        r::END_TRANSACTION => Touches(end_transaction),
        r::RECALL_MESSAGE => Touches(|c, _| Ok(vec![topic(c, "topic", PUB)?])),
        r::PULL_MESSAGE | r::LITE_PULL_MESSAGE => Touches(pull),
        r::POP_MESSAGE | r::ACK_MESSAGE | r::CHANGE_MESSAGE_INVISIBLETIME => Touches(|c, _| group_offset(c, SUB)),
        r::BATCH_ACK_MESSAGE => Touches(batch_ack),
        r::HEART_BEAT => Touches(heartbeat),
        r::UNREGISTER_CLIENT | r::GET_CONSUMER_LIST_BY_GROUP => Touches(consumer_group),
        r::QUERY_CONSUMER_OFFSET => Touches(|c, _| group_offset(c, SUB_OR_GET)),
        r::UPDATE_CONSUMER_OFFSET => Touches(|c, _| group_offset(c, SUB_OR_UPDATE)),
        r::LOCK_BATCH_MQ | r::UNLOCK_BATCH_MQ => Touches(lock_batch),
        r::CHECK_CLIENT_CONFIG => Touches(check_client_config),
        r::CONSUMER_SEND_MSG_BACK => Touches(|c, _| Ok(vec![group(c, "group", SUB)?])),
        r::GET_MAX_OFFSET | r::GET_MIN_OFFSET | r::SEARCH_OFFSET_BY_TIMESTAMP | r::GET_EARLIEST_MSG_STORETIME => {
            Touches(|c, _| Ok(vec![topic(c, "topic", SUB_OR_GET)?]))
        }
        r::QUERY_MESSAGE => Touches(|c, _| Ok(vec![topic(c, "topic", SUB_OR_GET)?])),
        r::VIEW_MESSAGE_BY_ID => Touches(view_message),
        r::UPDATE_AND_CREATE_TOPIC => Touches(|c, _| Ok(vec![topic(c, "topic", CREATE_OR_UPDATE)?])),
        r::DELETE_TOPIC_IN_BROKER => Touches(|c, _| Ok(vec![topic(c, "topic", DELETE)?])),
        r::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP => Touches(|c, _| {
            let g: crate::protocol::SubscriptionGroupConfig =
                json::decode(&c.body, "SubscriptionGroupConfig").map_err(|e| e.to_string())?;
            Ok(vec![Touch { kind: ResourceType::Group, name: Cow::Owned(g.group_name), actions: CREATE_OR_UPDATE }])
        }),
        r::GET_CONSUME_STATS | r::SPATE_GET_POP_PROGRESS => Touches(|c, _| Ok(vec![group(c, "consumerGroup", GET)?])),
        r::GET_CONSUMER_CONNECTION_LIST => Touches(|c, _| Ok(vec![group(c, "consumerGroup", GET)?])),
        // The answer lists the group's producers and the gRPC producers of
        // the topic of that name: Get on both.
        r::GET_PRODUCER_CONNECTION_LIST => {
            Touches(|c, _| Ok(vec![group(c, "producerGroup", GET)?, topic(c, "producerGroup", GET)?]))
        }
        r::GET_ALL_TOPIC_CONFIG
        | r::GET_ALL_CONSUMER_OFFSET
        | r::GET_ALL_SUBSCRIPTIONGROUP_CONFIG
        | r::GET_BROKER_CONFIG
        | r::GET_BROKER_RUNTIME_INFO
        | r::GET_BROKER_HA_STATUS
        | r::SPATE_GET_LIMITS => Touches(|_, cl| Ok(cluster(cl, GET_OR_LIST))),
        r::UPDATE_BROKER_CONFIG | r::SPATE_UPDATE_LIMIT | r::SPATE_DELETE_LIMIT | r::SPATE_SET_PRIORITY => {
            Touches(|_, cl| Ok(cluster(cl, UPDATE)))
        }
        AUTH_GET_USER | AUTH_LIST_USER | AUTH_GET_ACL | AUTH_LIST_ACL => Touches(|_, cl| Ok(cluster(cl, GET_OR_LIST))),
        AUTH_CREATE_USER
        | AUTH_UPDATE_USER
        | AUTH_DELETE_USER
        | AUTH_CREATE_ACL
        | AUTH_UPDATE_ACL
        | AUTH_DELETE_ACL
        | SPATE_GET_AUTH_SNAPSHOT => SuperOnly,
        _ => return None,
    })
}

/// The name server's table: every code `spate-namesrv` handles.
pub fn namesrv_rule(code: i32) -> Option<Rule> {
    use code::*;
    use Rule::{SuperOnly, Touches};
    Some(match code {
        // Brokers register with the inner credentials: nobody else can
        // point a route at another address or take one away.
        r::REGISTER_BROKER | r::UNREGISTER_BROKER | r::DELETE_TOPIC_IN_NAMESRV => SuperOnly,
        r::GET_ROUTEINFO_BY_TOPIC => Touches(|c, _| Ok(vec![topic(c, "topic", ROUTE)?])),
        r::GET_BROKER_CLUSTER_INFO | r::GET_ALL_TOPIC_LIST_FROM_NAMESERVER | r::GET_TOPICS_BY_CLUSTER => {
            Touches(|_, cl| Ok(cluster(cl, GET_OR_LIST)))
        }
        AUTH_GET_USER | AUTH_LIST_USER | AUTH_GET_ACL | AUTH_LIST_ACL => Touches(|_, cl| Ok(cluster(cl, GET_OR_LIST))),
        AUTH_CREATE_USER | AUTH_UPDATE_USER | AUTH_DELETE_USER | AUTH_CREATE_ACL | AUTH_UPDATE_ACL
        | AUTH_DELETE_ACL => SuperOnly,
        _ => return None,
    })
}

/// The check every request passes before its handler, on one server.
pub struct Gate {
    settings: RwLock<AccessSettings>,
    users: Arc<AuthStore>,
    rule: fn(i32) -> Option<Rule>,
    /// The name `Cluster` resources are matched against.
    cluster: String,
    denied: [AtomicU64; AuthFailure::REASONS.len()],
    log: Mutex<(Option<Instant>, u64)>,
}

/// Refusals are logged at most once per this interval, with a count.
const DENIED_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Gate {
    pub fn new(settings: AccessSettings, users: Arc<AuthStore>, rule: fn(i32) -> Option<Rule>, cluster: &str) -> Self {
        Gate {
            settings: RwLock::new(settings),
            users,
            rule,
            cluster: cluster.to_string(),
            denied: Default::default(),
            log: Mutex::new((None, 0)),
        }
    }

    pub fn users(&self) -> &Arc<AuthStore> {
        &self.users
    }

    pub fn settings(&self) -> AccessSettings {
        self.settings.read().clone()
    }

    pub fn authentication_enabled(&self) -> bool {
        self.settings.read().authentication_enabled
    }

    /// Decides one request from `source`. `Ok(None)`: authentication is off
    /// (or the code is whitelisted) and the request goes on anonymously.
    pub fn check(&self, cmd: &RemotingCommand, source: IpAddr) -> Result<Option<Principal>, AuthFailure> {
        let settings = self.settings.read();
        let rule = (self.rule)(cmd.code);
        // A Super-only code is never whitelisted: route registration and
        // user administration stay signed whatever the list says.
        let whitelisted =
            settings.authentication_whitelist.contains(&cmd.code) && !matches!(rule, Some(Rule::SuperOnly));
        if !settings.authentication_enabled || whitelisted {
            return Ok(None);
        }
        let who = crate::signing::authenticate(&self.users, cmd)?;
        if who.is_super() {
            return Ok(Some(who));
        }
        match rule {
            None => Err(AuthFailure::NoRule { code: cmd.code, user: who.username }),
            Some(Rule::SuperOnly) => {
                Err(AuthFailure::NeedsSuper { user: who.username, what: format!("request code {}", cmd.code) })
            }
            Some(Rule::Touches(_)) if !settings.authorization_enabled => Ok(Some(who)),
            Some(Rule::Touches(_)) if settings.authorization_whitelist.contains(&cmd.code) => Ok(Some(who)),
            Some(Rule::Touches(touches)) => {
                let touched = touches(cmd, &self.cluster).map_err(|why| AuthFailure::Denied {
                    user: who.username.clone(),
                    resource: "the request".into(),
                    actions: format!("code {}", cmd.code),
                    source_ip: source.to_string(),
                    why,
                })?;
                let needs: Vec<Need<'_>> =
                    touched.iter().map(|t| Need { kind: t.kind, name: &t.name, actions: t.actions }).collect();
                self.users.authorize(&who, &needs, source)?;
                Ok(Some(who))
            }
        }
    }

    /// Counts and logs (at a bounded rate) a refusal.
    pub fn note_denied(&self, failure: &AuthFailure, code: i32, source: IpAddr) {
        if let Some(i) = AuthFailure::REASONS.iter().position(|r| *r == failure.reason()) {
            self.denied[i].fetch_add(1, Ordering::Relaxed);
        }
        let mut log = self.log.lock();
        let now = Instant::now();
        if log.0.is_some_and(|t| now.duration_since(t) < DENIED_LOG_INTERVAL) {
            log.1 += 1;
            return;
        }
        let unlogged = std::mem::take(&mut log.1);
        log.0 = Some(now);
        drop(log);
        tracing::warn!(%source, code, reason = failure.reason(), refused_unlogged = unlogged, "{failure}");
    }

    /// Refusals so far, by reason label.
    pub fn denied_counts(&self) -> Vec<(&'static str, u64)> {
        AuthFailure::REASONS.iter().zip(&self.denied).map(|(r, n)| (*r, n.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_auth::Credentials;

    fn gate(authorization: bool) -> Gate {
        let users = Arc::new(AuthStore::new());
        users.init_super_user("root", "rootsecret").unwrap();
        let root = Principal { username: "root".into(), user_type: spate_auth::UserType::Super };
        users
            .create_user(&root, serde_json::from_str(r#"{"username":"alice","password":"alicesecret"}"#).unwrap())
            .unwrap();
        users
            .put_acl(
                serde_json::from_str(
                    r#"{"subject":"User:alice","policies":[{"entries":[
                        {"resource":"Topic:T","actions":["Pub","Sub"]},{"resource":"Group:G","actions":["Sub"]}]}]}"#,
                )
                .unwrap(),
                true,
            )
            .unwrap();
        let settings = AccessSettings {
            authentication_enabled: true,
            authorization_enabled: authorization,
            authentication_whitelist: vec![],
            authorization_whitelist: vec![],
        };
        Gate::new(settings, users, broker_rule, "DefaultCluster")
    }

    fn signed(mut cmd: RemotingCommand, ak: &str, sk: &str) -> RemotingCommand {
        crate::signing::sign(&mut cmd, &Credentials::new(ak, sk));
        cmd
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn normal_users_get_what_their_policies_grant_and_nothing_else() {
        let g = gate(true);
        let send = |t: &str| RemotingCommand::request(r::SEND_MESSAGE).with("topic", t);
        assert!(g.check(&signed(send("T"), "alice", "alicesecret"), IP).is_ok());
        assert_eq!(g.check(&signed(send("U"), "alice", "alicesecret"), IP).unwrap_err().reason(), "denied");
        let pull = RemotingCommand::request(r::PULL_MESSAGE).with("topic", "T").with("consumerGroup", "H");
        assert_eq!(g.check(&signed(pull, "alice", "alicesecret"), IP).unwrap_err().reason(), "denied");
        let config = RemotingCommand::request(r::UPDATE_BROKER_CONFIG);
        assert_eq!(g.check(&signed(config.clone(), "alice", "alicesecret"), IP).unwrap_err().reason(), "denied");
        assert!(g.check(&signed(config, "root", "rootsecret"), IP).unwrap().unwrap().is_super());
        let unknown = RemotingCommand::request(12345);
        assert_eq!(g.check(&signed(unknown, "alice", "alicesecret"), IP).unwrap_err().reason(), "no_rule");
        let user_admin = RemotingCommand::request(code::AUTH_CREATE_USER);
        assert_eq!(g.check(&signed(user_admin, "alice", "alicesecret"), IP).unwrap_err().reason(), "needs_super");
        assert_eq!(g.check(&send("T"), IP).unwrap_err().reason(), "missing_access_key");
        assert_eq!(g.check(&signed(send("T"), "alice", "wrong"), IP).unwrap_err().reason(), "bad_signature");
    }

    #[test]
    fn a_groups_own_topics_need_sub_on_the_group() {
        let g = gate(true);
        let retry = |grp: &str| RemotingCommand::request(r::SEND_MESSAGE_V2).with("b", format!("%RETRY%{grp}"));
        assert!(g.check(&signed(retry("G"), "alice", "alicesecret"), IP).is_ok());
        assert!(g.check(&signed(retry("H"), "alice", "alicesecret"), IP).is_err());
        let pull = |t: &str| RemotingCommand::request(r::PULL_MESSAGE).with("topic", t).with("consumerGroup", "G");
        assert!(g.check(&signed(pull("%RETRY%G"), "alice", "alicesecret"), IP).is_ok());
        assert!(g.check(&signed(pull("%RETRY%H"), "alice", "alicesecret"), IP).is_err());
        let offset =
            |t: &str| RemotingCommand::request(r::UPDATE_CONSUMER_OFFSET).with("topic", t).with("consumerGroup", "G");
        assert!(g.check(&signed(offset("%RETRY%G"), "alice", "alicesecret"), IP).is_ok());
    }

    #[test]
    fn a_groups_retry_topic_is_covered_by_sub_on_the_group() {
        let g = gate(true);
        let ok = |cmd: RemotingCommand| g.check(&signed(cmd, "alice", "alicesecret"), IP).is_ok();
        let pull =
            |t: &str, grp: &str| RemotingCommand::request(r::PULL_MESSAGE).with("topic", t).with("consumerGroup", grp);
        assert!(ok(pull("%RETRY%G", "G")), "pull of the own retry topic");
        assert!(!ok(pull("%RETRY%H", "G")), "another group's retry topic needs Sub on that group");
        let offset = |code: i32, t: &str| RemotingCommand::request(code).with("topic", t).with("consumerGroup", "G");
        assert!(ok(offset(r::QUERY_CONSUMER_OFFSET, "%RETRY%G")));
        assert!(ok(offset(r::UPDATE_CONSUMER_OFFSET, "%RETRY%G")));
        assert!(!ok(offset(r::UPDATE_CONSUMER_OFFSET, "%RETRY%H")));
        assert!(ok(RemotingCommand::request(r::GET_MAX_OFFSET).with("topic", "%RETRY%G").with("queueId", "0")));
        assert!(!ok(RemotingCommand::request(r::GET_MAX_OFFSET).with("topic", "%RETRY%H").with("queueId", "0")));

        let ns = Gate::new(g.settings(), g.users().clone(), namesrv_rule, "DefaultCluster");
        let route = |t: &str| {
            signed(RemotingCommand::request(r::GET_ROUTEINFO_BY_TOPIC).with("topic", t), "alice", "alicesecret")
        };
        assert!(ns.check(&route("T"), IP).is_ok());
        assert!(ns.check(&route("%RETRY%G"), IP).is_ok(), "a consumer looks up its retry topic's route");
        assert_eq!(ns.check(&route("%RETRY%H"), IP).unwrap_err().reason(), "denied");
        assert_eq!(ns.check(&route("U"), IP).unwrap_err().reason(), "denied");
    }

    #[test]
    fn without_authorization_any_signed_user_passes_but_super_only_codes_stay_closed() {
        let g = gate(false);
        let config = RemotingCommand::request(r::UPDATE_BROKER_CONFIG);
        assert!(g.check(&signed(config, "alice", "alicesecret"), IP).is_ok());
        let snapshot = RemotingCommand::request(code::SPATE_GET_AUTH_SNAPSHOT);
        assert!(g.check(&signed(snapshot, "alice", "alicesecret"), IP).is_err());
        assert!(g.check(&signed(RemotingCommand::request(54321), "alice", "alicesecret"), IP).is_err());
    }

    #[test]
    fn the_whitelist_skips_signatures_but_never_for_super_only_codes() {
        let mut g = gate(true);
        g.settings.get_mut().authentication_whitelist = vec![r::GET_BROKER_RUNTIME_INFO, code::AUTH_CREATE_USER];
        assert_eq!(g.check(&RemotingCommand::request(r::GET_BROKER_RUNTIME_INFO), IP), Ok(None));
        let create = RemotingCommand::request(code::AUTH_CREATE_USER);
        assert_eq!(g.check(&create, IP).unwrap_err().reason(), "missing_access_key");
    }

    #[test]
    fn settings_read_upstream_keys_and_refuse_authorization_alone() {
        let mut s = AccessSettings::default();
        assert_eq!(s.set("aclEnable", "true"), Ok(true));
        assert!(s.authentication_enabled);
        assert_eq!(s.set("authenticationWhitelist", "105, 106"), Ok(true));
        assert_eq!(s.authentication_whitelist, vec![105, 106]);
        assert!(s.set("authorizationEnabled", "yes").is_err());
        assert_eq!(s.set("listenPort", "1"), Ok(false));
        let alone = AccessSettings { authorization_enabled: true, ..AccessSettings::default() };
        assert!(alone.validate().is_err());
    }
}
