//! `spate admin`: what RocketMQ operators do with mqadmin, as
//! `spate admin -n HOST:PORT <noun> <verb>`. Every command prints a table
//! by default or one JSON value with `--json`, and exits non-zero with a
//! clear message on errors (unreachable name server, unknown topic, ...).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use spate_common::message::{decode_record, parse_offset_msg_id, Record};
use spate_remoting::protocol::{json as fastjson, ClusterInfo, ConsumeStats, KvTable, TopicList, TopicRouteData};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct AdminArgs {
    /// Name server address(es), `host:port;host:port`.
    #[arg(short = 'n', long = "namesrv", default_value = "127.0.0.1:9876", global = true)]
    namesrv: String,
    /// One JSON value instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    credentials: crate::credentials::SecurityArgs,
    #[command(subcommand)]
    command: Noun,
}

#[derive(Subcommand)]
enum Noun {
    /// Topics: create, update, delete, list, route, status.
    Topic {
        #[command(subcommand)]
        verb: TopicVerb,
    },
    /// Clusters and their brokers.
    Cluster {
        #[command(subcommand)]
        verb: ClusterVerb,
    },
    /// One broker: runtime status and configuration.
    Broker {
        #[command(subcommand)]
        verb: BrokerVerb,
    },
    /// Consumer groups: create, list, progress (lag), connections, offset reset.
    Group {
        #[command(subcommand)]
        verb: GroupVerb,
    },
    /// Look messages up by id or key.
    Message {
        #[command(subcommand)]
        verb: MessageVerb,
    },
    /// Rate limits per topic, group or client: set, list, delete (on every
    /// master of a cluster; slaves copy them).
    Limit {
        #[command(subcommand)]
        verb: LimitVerb,
    },
    /// A consumer group's dead letters (`%DLQ%<group>`): list, resend.
    Dlq {
        #[command(subcommand)]
        verb: DlqVerb,
    },
    /// Messages a background deliverer (delay, timer, transaction) could
    /// not deliver and set aside, with why.
    Undeliverable {
        #[command(subcommand)]
        verb: UndeliverableVerb,
    },
    /// Replica groups: roles, offsets, replication lag and mode, epochs.
    Ha {
        #[command(subcommand)]
        verb: HaVerb,
    },
    /// Users (ACL 2.0): create, update, delete, get, list.
    User {
        #[command(subcommand)]
        verb: crate::admin_auth::UserVerb,
    },
    /// Access policies (ACL 2.0): create, update, delete, get, list, import a 1.0 plain_acl.yml.
    Acl {
        #[command(subcommand)]
        verb: crate::admin_auth::AclVerb,
    },
}

#[derive(Subcommand)]
enum HaVerb {
    /// Every replica group (of a cluster): each broker's role, log end and
    /// epochs; each slave's lag in bytes and time and its mode.
    Status {
        #[arg(short = 'c', long)]
        cluster: Option<String>,
    },
    /// The controller's view in ZooKeeper: per replica group the master,
    /// its epoch, the replication state, the in-sync set, the live brokers,
    /// and which controller leads.
    Groups {
        /// ZooKeeper connect string.
        #[arg(long = "zk")]
        zk: String,
    },
    /// Make a live in-sync slave the master of its group by hand (epoch + 1).
    Elect {
        #[arg(long = "zk")]
        zk: String,
        /// The replica group (brokerName).
        group: String,
        /// The broker id to elect.
        broker_id: i64,
    },
}

#[derive(Args)]
struct LimitWho {
    /// What is limited: topic, group (producer group for sends, consumer
    /// group for pulls) or client (its clientId).
    #[arg(long, value_parser = ["topic", "group", "client"])]
    target: String,
    /// The topic, group or client id.
    #[arg(long)]
    name: String,
    /// Which requests: send or pull.
    #[arg(long, value_parser = ["send", "pull"])]
    op: String,
    /// Only the masters of this cluster (default: every cluster).
    #[arg(short = 'c', long)]
    cluster: Option<String>,
}

#[derive(Subcommand)]
enum LimitVerb {
    /// Set (or replace) a limit: a token bucket of `--rate` a second with
    /// bursts of `--burst`; with `--shape-max-wait-ms`, a leaky bucket that
    /// holds requests up to that long and releases them at the rate.
    Set {
        #[command(flatten)]
        who: LimitWho,
        /// Permits a second (messages for sends, requests for pulls).
        #[arg(long)]
        rate: u32,
        /// Bucket size (default: one second's worth).
        #[arg(long)]
        burst: Option<u32>,
        /// Shape instead of rejecting: the longest a request waits its turn.
        #[arg(long)]
        shape_max_wait_ms: Option<u64>,
        /// Shape: the most requests waiting at once.
        #[arg(long, default_value_t = 1000)]
        shape_max_queue: u32,
    },
    /// Remove a limit.
    Delete {
        #[command(flatten)]
        who: LimitWho,
    },
    /// A topic's or group's priority class under pressure: bulk is refused
    /// first, then normal; core is kept.
    Priority {
        #[arg(long, value_parser = ["topic", "group"])]
        target: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["core", "normal", "bulk"])]
        class: String,
        #[arg(short = 'c', long)]
        cluster: Option<String>,
    },
    /// Every limit on every master, with admitted and rejected counts.
    List {
        #[arg(short = 'c', long)]
        cluster: Option<String>,
    },
}

#[derive(Args)]
struct TopicSpec {
    topic: String,
    /// Read queues per broker.
    #[arg(short = 'r', long = "readQueueNums", default_value_t = 8)]
    read_queues: i32,
    /// Write queues per broker.
    #[arg(short = 'w', long = "writeQueueNums", default_value_t = 8)]
    write_queues: i32,
    /// Permission: 2 write, 4 read, 6 both.
    #[arg(short = 'p', long, default_value_t = 6)]
    perm: i32,
    /// Only the brokers of this cluster (default: every cluster).
    #[arg(short = 'c', long)]
    cluster: Option<String>,
    /// The messages the topic takes (attribute `message.type`, which RocketMQ 5
    /// clients check before they send): NORMAL, FIFO, DELAY, TRANSACTION or
    /// MIXED. Default: not declared (every type).
    #[arg(long = "message-type", value_parser = ["NORMAL", "FIFO", "DELAY", "TRANSACTION", "MIXED"])]
    message_type: Option<String>,
}

#[derive(Subcommand)]
enum TopicVerb {
    /// Create a topic on every master (of a cluster).
    Create(TopicSpec),
    /// Change a topic's queues or permission on every master (of a cluster).
    Update(TopicSpec),
    /// Delete a topic from every master and from the name server.
    Delete {
        topic: String,
        #[arg(short = 'c', long)]
        cluster: Option<String>,
    },
    /// Every topic the name server knows.
    List,
    /// The topic's route: brokers and queue counts.
    Route { topic: String },
    /// Per queue: minimum and maximum offsets.
    Status { topic: String },
}

#[derive(Subcommand)]
enum ClusterVerb {
    /// Clusters, brokers, ids and addresses.
    List,
}

#[derive(Subcommand)]
enum BrokerVerb {
    /// Runtime figures of the broker at ADDR.
    Status { addr: String },
    /// Read or change the broker's configuration.
    Config {
        #[command(subcommand)]
        verb: ConfigVerb,
    },
}

#[derive(Subcommand)]
enum ConfigVerb {
    /// The broker's settings.
    Get { addr: String },
    /// Change a runtime setting (others need a restart).
    Set { addr: String, key: String, value: String },
}

#[derive(Subcommand)]
enum GroupVerb {
    /// Create (or update) a consumer group on every master (of a cluster).
    Create {
        group: String,
        #[arg(short = 'c', long)]
        cluster: Option<String>,
        /// Retries before the dead-letter queue.
        #[arg(long, default_value_t = 16)]
        retry_max_times: i32,
    },
    /// Consumer groups known to the masters.
    List,
    /// Per queue: broker offset, consumer offset and lag.
    Progress {
        group: String,
        /// Only this topic.
        #[arg(short = 't', long)]
        topic: Option<String>,
    },
    /// The group's connected clients: its consumers, and the producers of
    /// a producer group (RocketMQ 5 producers are listed under each topic
    /// they publish).
    Connections { group: String },
    /// Move the group's offsets on a topic to the first message stored at or
    /// after a time (stop the group's consumers first: they commit their own).
    ResetOffset {
        group: String,
        #[arg(short = 't', long)]
        topic: String,
        /// Milliseconds since the epoch.
        #[arg(long)]
        timestamp: i64,
    },
}

#[derive(Subcommand)]
enum MessageVerb {
    /// By offset message id (the broker's msgId), or by unique key with --topic.
    Id {
        id: String,
        #[arg(short = 't', long)]
        topic: Option<String>,
    },
    /// By key (KEYS property) within a time range.
    Key {
        topic: String,
        key: String,
        /// Range start, ms since the epoch (default: 0).
        #[arg(long, default_value_t = 0)]
        begin: i64,
        /// Range end, ms since the epoch (default: now and beyond).
        #[arg(long, default_value_t = i64::MAX)]
        end: i64,
        /// Most messages per broker.
        #[arg(long, default_value_t = 32)]
        max: i32,
    },
    /// Every message of a topic stored within a time range (mqadmin's printMsg).
    Range {
        topic: String,
        /// Range start, ms since the epoch.
        #[arg(long)]
        begin: i64,
        /// Range end, ms since the epoch (default: now and beyond).
        #[arg(long, default_value_t = i64::MAX)]
        end: i64,
        /// Most messages per queue.
        #[arg(long, default_value_t = 32)]
        max: usize,
    },
}

#[derive(Subcommand)]
enum UndeliverableVerb {
    /// Every set-aside message: where it was going, which deliverer set it
    /// aside and why.
    List {
        /// Most messages per broker.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

#[derive(Subcommand)]
enum DlqVerb {
    /// The group's dead letters, with their original topic, message id and
    /// reconsume count.
    List {
        group: String,
        /// Most messages per queue.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
    /// Sends dead letters back to the group's retry topic, so only this
    /// group consumes them again (its retry count starts over).
    Resend {
        group: String,
        /// The message to resend (its unique key or offset id); without it,
        /// --all is required.
        #[arg(long, conflicts_with = "all")]
        msg_id: Option<String>,
        /// Resend every dead letter of the group.
        #[arg(long)]
        all: bool,
        /// Most messages per queue looked at.
        #[arg(long, default_value_t = 1000)]
        max: usize,
    },
}

use spate_client::query::{tools_pull_request, TOOLS_GROUP};

pub(crate) struct Admin {
    client: RemotingClient,
    namesrv: String,
    /// Every name server given with `-n`.
    pub(crate) namesrvs: Vec<String>,
}

impl Admin {
    /// A call that must succeed; a failure names the peer and its remark.
    pub(crate) async fn call(&self, addr: &str, req: RemotingCommand) -> Result<RemotingCommand> {
        let r = self.client.invoke(addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
        if r.code != response::SUCCESS {
            bail!("{addr} answered code {}: {}", r.code, r.remark.unwrap_or_default());
        }
        Ok(r)
    }

    async fn cluster(&self) -> Result<ClusterInfo> {
        let r = self.call(&self.namesrv, RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO)).await?;
        Ok(fastjson::decode(&r.body, "ClusterInfo")?)
    }

    /// (broker name, master address) of every master, optionally of one cluster.
    pub(crate) async fn masters(&self, cluster: Option<&str>) -> Result<Vec<(String, String)>> {
        let info = self.cluster().await?;
        let masters: Vec<_> = info
            .broker_addr_table
            .values()
            .filter(|b| cluster.is_none_or(|c| b.cluster == c))
            .filter_map(|b| b.master_addr().map(|a| (b.broker_name.clone(), a.to_string())))
            .collect();
        if masters.is_empty() {
            bail!("no master broker registered{}", cluster.map(|c| format!(" in cluster {c}")).unwrap_or_default());
        }
        Ok(masters)
    }

    async fn route(&self, topic: &str) -> Result<TopicRouteData> {
        let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", topic);
        let r = self
            .client
            .invoke(&self.namesrv, req, TIMEOUT)
            .await
            .with_context(|| format!("calling {}", self.namesrv))?;
        if r.code == response::TOPIC_NOT_EXIST {
            bail!("topic {topic} does not exist (no route on {})", self.namesrv);
        }
        if r.code != response::SUCCESS {
            bail!("{} answered code {}: {}", self.namesrv, r.code, r.remark.unwrap_or_default());
        }
        Ok(fastjson::decode(&r.body, "TopicRouteData")?)
    }

    /// (broker name, master address, read queues) of a topic's masters.
    async fn topic_masters(&self, topic: &str) -> Result<Vec<(String, String, i32)>> {
        let route = self.route(topic).await?;
        Ok(route
            .queue_datas
            .iter()
            .filter_map(|q| {
                let b = route.broker_datas.iter().find(|b| b.broker_name == q.broker_name)?;
                Some((q.broker_name.clone(), b.master_addr()?.to_string(), q.read_queue_nums))
            })
            .collect())
    }
}

fn first_namesrv(addrs: &str) -> Result<String> {
    addrs.split(';').map(str::trim).find(|a| !a.is_empty()).map(str::to_string).context("no name server address given")
}

pub async fn run(args: AdminArgs) -> Result<()> {
    let namesrvs: Vec<String> =
        args.namesrv.split(';').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect();
    let admin = Admin {
        client: RemotingClient::new(args.credentials.client_config()?, None),
        namesrv: first_namesrv(&args.namesrv)?,
        namesrvs,
    };
    let (value, table) = match args.command {
        Noun::Topic { verb } => topic(&admin, verb).await?,
        Noun::Cluster { verb: ClusterVerb::List } => cluster_list(&admin).await?,
        Noun::Broker { verb } => broker(&admin, verb).await?,
        Noun::Group { verb } => group(&admin, verb).await?,
        Noun::Message { verb } => message(&admin, verb).await?,
        Noun::Dlq { verb } => dlq(&admin, verb).await?,
        Noun::Undeliverable { verb: UndeliverableVerb::List { max } } => undeliverable(&admin, max).await?,
        Noun::Limit { verb } => limit(&admin, verb).await?,
        Noun::Ha { verb: HaVerb::Status { cluster } } => ha_status(&admin, cluster.as_deref()).await?,
        Noun::Ha { verb: HaVerb::Groups { zk } } => ha_groups(&zk).await?,
        Noun::Ha { verb: HaVerb::Elect { zk, group, broker_id } } => ha_elect(&zk, &group, broker_id).await?,
        Noun::User { verb } => crate::admin_auth::user(&admin, verb).await?,
        Noun::Acl { verb } => crate::admin_auth::acl(&admin, verb).await?,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print!("{table}");
    }
    Ok(())
}

pub(crate) type Output = (Value, String);

async fn limit(admin: &Admin, verb: LimitVerb) -> Result<Output> {
    let (cluster, req, what) = match verb {
        LimitVerb::Set { who, rate, burst, shape_max_wait_ms, shape_max_queue } => {
            let rule = json!({
                "target": who.target,
                "name": who.name,
                "op": who.op,
                "rate": rate,
                "burst": burst.unwrap_or(rate),
                "shape": shape_max_wait_ms.map(|w| json!({"maxWaitMs": w, "maxQueue": shape_max_queue})),
            });
            let req = RemotingCommand::request(request::SPATE_UPDATE_LIMIT).with_body(serde_json::to_vec(&rule)?);
            (who.cluster, Some(req), format!("{} {} {}: {rate}/s", who.target, who.name, who.op))
        }
        LimitVerb::Delete { who } => {
            let req = RemotingCommand::request(request::SPATE_DELETE_LIMIT)
                .with("target", &who.target)
                .with("name", &who.name)
                .with("op", &who.op);
            (who.cluster, Some(req), format!("{} {} {}: removed", who.target, who.name, who.op))
        }
        LimitVerb::Priority { target, name, class, cluster } => {
            let req = RemotingCommand::request(request::SPATE_SET_PRIORITY)
                .with("target", &target)
                .with("name", &name)
                .with("class", &class);
            (cluster, Some(req), format!("{target} {name}: {class}"))
        }
        LimitVerb::List { cluster } => (cluster, None, String::new()),
    };
    let mut out = Vec::new();
    let mut table = String::new();
    for (name, addr) in admin.masters(cluster.as_deref()).await? {
        if let Some(req) = &req {
            admin.call(&addr, req.clone()).await?;
            table.push_str(&format!("{name} ({addr}): {what}\n"));
            out.push(json!({"broker": name, "addr": addr}));
            continue;
        }
        let r = admin.call(&addr, RemotingCommand::request(request::SPATE_GET_LIMITS)).await?;
        let v: Value = serde_json::from_slice(&r.body).context("limits body")?;
        table.push_str(&format!(
            "{name} ({addr}): degradation level {}; core lane: {} connections, {}\n",
            v["degradeLevel"],
            v["coreLaneConnections"],
            v["coreLaneScheduling"].as_str().unwrap_or("?")
        ));
        for p in v["priorities"].as_array().into_iter().flatten() {
            table.push_str(&format!(
                "  {} {} is {}\n",
                p["target"].as_str().unwrap_or("?"),
                p["name"].as_str().unwrap_or("?"),
                p["class"].as_str().unwrap_or("?")
            ));
        }
        for rule in v["rules"].as_array().into_iter().flatten() {
            table.push_str(&format!(
                "  {} {} {} {}/s burst {}{}: admitted {}, rejected {}, waiting {}\n",
                rule["target"].as_str().unwrap_or("?"),
                rule["name"].as_str().unwrap_or("?"),
                rule["op"].as_str().unwrap_or("?"),
                rule["rate"],
                rule["burst"],
                if rule["shape"].is_object() {
                    format!(", shaped (wait up to {} ms)", rule["shape"]["maxWaitMs"])
                } else {
                    String::new()
                },
                rule["admitted"],
                rule["rejected"],
                rule["waiting"],
            ));
        }
        out.push(json!({"broker": name, "addr": addr, "limits": v}));
    }
    Ok((json!(out), table))
}

async fn topic(admin: &Admin, verb: TopicVerb) -> Result<Output> {
    match verb {
        TopicVerb::Create(spec) | TopicVerb::Update(spec) => {
            let mut done = Vec::new();
            let mut table = String::new();
            for (name, addr) in admin.masters(spec.cluster.as_deref()).await? {
                let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
                    .with("topic", &spec.topic)
                    .with("readQueueNums", spec.read_queues)
                    .with("writeQueueNums", spec.write_queues)
                    .with("perm", spec.perm)
                    .with("topicFilterType", "SINGLE_TAG")
                    .with("topicSysFlag", 0)
                    .with("order", false)
                    .with_opt("attributes", spec.message_type.as_ref().map(|t| format!("+message.type={t}")));
                admin.call(&addr, req).await.with_context(|| format!("broker {name}"))?;
                table.push_str(&format!("topic {} set on {name} ({addr})\n", spec.topic));
                done.push(json!({"broker": name, "addr": addr}));
            }
            Ok((json!({"topic": spec.topic, "brokers": done}), table))
        }
        TopicVerb::Delete { topic, cluster } => {
            let mut table = String::new();
            let mut done = Vec::new();
            for (name, addr) in admin.masters(cluster.as_deref()).await? {
                let req = RemotingCommand::request(request::DELETE_TOPIC_IN_BROKER).with("topic", &topic);
                admin.call(&addr, req).await.with_context(|| format!("broker {name}"))?;
                table.push_str(&format!("topic {topic} deleted on {name} ({addr})\n"));
                done.push(json!({"broker": name, "addr": addr}));
            }
            let req = RemotingCommand::request(request::DELETE_TOPIC_IN_NAMESRV)
                .with("topic", &topic)
                .with_opt("clusterName", cluster);
            admin.call(&admin.namesrv, req).await?;
            table.push_str(&format!("topic {topic} deleted on the name server\n"));
            Ok((json!({"topic": topic, "brokers": done}), table))
        }
        TopicVerb::List => {
            let r = admin
                .call(&admin.namesrv, RemotingCommand::request(request::GET_ALL_TOPIC_LIST_FROM_NAMESERVER))
                .await?;
            let list: TopicList = fastjson::decode(&r.body, "TopicList")?;
            let table = list.topic_list.iter().map(|t| format!("{t}\n")).collect();
            Ok((json!(list.topic_list), table))
        }
        TopicVerb::Route { topic } => {
            let route = admin.route(&topic).await?;
            let mut table = format!("{:<20} {:>6} {:>6} {:>5}  {}\n", "#Broker", "#Read", "#Write", "#Perm", "#Addrs");
            for q in &route.queue_datas {
                let addrs = route
                    .broker_datas
                    .iter()
                    .find(|b| b.broker_name == q.broker_name)
                    .map(|b| b.broker_addrs.iter().map(|(id, a)| format!("{id}={a}")).collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                table.push_str(&format!(
                    "{:<20} {:>6} {:>6} {:>5}  {addrs}\n",
                    q.broker_name, q.read_queue_nums, q.write_queue_nums, q.perm
                ));
            }
            Ok((serde_json::to_value(&route)?, table))
        }
        TopicVerb::Status { topic } => {
            let mut rows = Vec::new();
            let mut table = format!("{:<20} {:>6} {:>12} {:>12}\n", "#Broker", "#Queue", "#MinOffset", "#MaxOffset");
            for (name, addr, queues) in admin.topic_masters(&topic).await? {
                for q in 0..queues {
                    let off = |code| RemotingCommand::request(code).with("topic", &topic).with("queueId", q);
                    let min = offset_field(&admin.call(&addr, off(request::GET_MIN_OFFSET)).await?, "offset")?;
                    let max = offset_field(&admin.call(&addr, off(request::GET_MAX_OFFSET)).await?, "offset")?;
                    table.push_str(&format!("{name:<20} {q:>6} {min:>12} {max:>12}\n"));
                    rows.push(json!({"broker": name, "queue_id": q, "min_offset": min, "max_offset": max}));
                }
            }
            Ok((json!(rows), table))
        }
    }
}

fn offset_field(r: &RemotingCommand, key: &str) -> Result<i64> {
    r.field(key).and_then(|v| v.trim().parse().ok()).with_context(|| format!("answer without a valid `{key}`"))
}

async fn cluster_list(admin: &Admin) -> Result<Output> {
    let info = admin.cluster().await?;
    let mut rows = Vec::new();
    let mut table = format!("{:<20} {:<20} {:<6} #Addr\n", "#Cluster", "#Broker", "#BID");
    for (cluster, names) in &info.cluster_addr_table {
        for name in names {
            if let Some(b) = info.broker_addr_table.get(name) {
                for (id, addr) in &b.broker_addrs {
                    table.push_str(&format!("{cluster:<20} {name:<20} {id:<6} {addr}\n"));
                    rows.push(json!({"cluster": cluster, "broker": name, "broker_id": id, "addr": addr}));
                }
            }
        }
    }
    Ok((json!(rows), table))
}

async fn broker(admin: &Admin, verb: BrokerVerb) -> Result<Output> {
    match verb {
        BrokerVerb::Status { addr } => {
            let r = admin.call(&addr, RemotingCommand::request(request::GET_BROKER_RUNTIME_INFO)).await?;
            let kv: KvTable = fastjson::decode(&r.body, "KVTable")?;
            let table = kv.table.iter().map(|(k, v)| format!("{k:<32} {v}\n")).collect();
            Ok((json!(kv.table), table))
        }
        BrokerVerb::Config { verb: ConfigVerb::Get { addr } } => {
            let r = admin.call(&addr, RemotingCommand::request(request::GET_BROKER_CONFIG)).await?;
            let text = String::from_utf8_lossy(&r.body).to_string();
            let map: BTreeMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim().to_string())))
                .collect();
            Ok((json!(map), text))
        }
        BrokerVerb::Config { verb: ConfigVerb::Set { addr, key, value } } => {
            let req = RemotingCommand::request(request::UPDATE_BROKER_CONFIG).with_body(format!("{key}={value}\n"));
            admin.call(&addr, req).await?;
            Ok((json!({"addr": addr, key.clone(): value}), format!("{key} set on {addr}\n")))
        }
    }
}

async fn group(admin: &Admin, verb: GroupVerb) -> Result<Output> {
    match verb {
        GroupVerb::Create { group, cluster, retry_max_times } => {
            let body = json!({"groupName": group, "consumeEnable": true, "retryMaxTimes": retry_max_times});
            let mut table = String::new();
            for (name, addr) in admin.masters(cluster.as_deref()).await? {
                let req =
                    RemotingCommand::request(request::UPDATE_AND_CREATE_SUBSCRIPTIONGROUP).with_body(body.to_string());
                admin.call(&addr, req).await.with_context(|| format!("broker {name}"))?;
                table.push_str(&format!("group {group} set on {name} ({addr})\n"));
            }
            Ok((json!({"group": group}), table))
        }
        GroupVerb::List => {
            let mut groups = std::collections::BTreeSet::new();
            for (_, addr) in admin.masters(None).await? {
                let r = admin.call(&addr, RemotingCommand::request(request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG)).await?;
                let v: Value = fastjson::decode(&r.body, "SubscriptionGroupWrapper")?;
                if let Some(t) = v.get("subscriptionGroupTable").and_then(Value::as_object) {
                    groups.extend(t.keys().cloned());
                }
            }
            let table = groups.iter().map(|g| format!("{g}\n")).collect();
            Ok((json!(groups), table))
        }
        GroupVerb::Progress { group, topic } => {
            let mut rows = Vec::new();
            let mut total_lag = 0;
            let mut table = format!(
                "{:<24} {:<16} {:>5} {:>12} {:>12} {:>8}\n",
                "#Topic", "#Broker", "#QID", "#BrokerOffset", "#ConsumerOffset", "#Lag"
            );
            for (name, addr) in admin.masters(None).await? {
                let req = RemotingCommand::request(request::GET_CONSUME_STATS)
                    .with("consumerGroup", &group)
                    .with_opt("topic", topic.clone());
                let r = admin.client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
                if r.code == response::CONSUMER_NOT_ONLINE {
                    continue; // no offsets of this group on that broker
                }
                if r.code != response::SUCCESS {
                    bail!("{addr} answered code {}: {}", r.code, r.remark.unwrap_or_default());
                }
                let stats =
                    ConsumeStats::from_fastjson(&r.body).with_context(|| format!("stats from broker {name}"))?;
                for (mq, w) in &stats.offset_table {
                    let lag = (w.broker_offset - w.consumer_offset).max(0);
                    total_lag += lag;
                    table.push_str(&format!(
                        "{:<24} {:<16} {:>5} {:>12} {:>12} {:>8}\n",
                        mq.topic, mq.broker_name, mq.queue_id, w.broker_offset, w.consumer_offset, lag
                    ));
                    rows.push(json!({"topic": mq.topic, "broker": mq.broker_name, "queue_id": mq.queue_id,
                        "broker_offset": w.broker_offset, "consumer_offset": w.consumer_offset, "lag": lag}));
                }
            }
            // A pop group (RocketMQ 5's consumers): what is in flight too.
            let mut pop = Vec::new();
            for (name, addr) in admin.masters(None).await? {
                let req = RemotingCommand::request(request::SPATE_GET_POP_PROGRESS).with("consumerGroup", &group);
                let r = admin.client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
                if r.code != response::SUCCESS {
                    continue; // no pop state of this group there (or an older broker)
                }
                let v: Value = serde_json::from_slice(&r.body).with_context(|| format!("pop progress from {name}"))?;
                if pop.is_empty() {
                    table.push_str(&format!(
                        "{:<24} {:<16} {:>5} {:>12} {:>12} {:>9} {:>8} {:>12}\n",
                        "#Topic",
                        "#Broker",
                        "#QID",
                        "#BrokerOffset",
                        "#PopOffset",
                        "#InFlight",
                        "#Visible",
                        "#OldestAgeMs"
                    ));
                }
                for q in v["queues"].as_array().into_iter().flatten() {
                    table.push_str(&format!(
                        "{:<24} {:<16} {:>5} {:>12} {:>12} {:>9} {:>8} {:>12}\n",
                        q["topic"].as_str().unwrap_or_default(),
                        name,
                        q["queueId"],
                        q["brokerOffset"],
                        q["popOffset"],
                        q["inFlight"],
                        q["visibleAgain"],
                        q["oldestInFlightAgeMs"].as_u64().map_or("-".to_string(), |a| a.to_string()),
                    ));
                }
                table.push_str(&format!(
                    "{name}: redelivered {}, dead-lettered {}\n",
                    v["redelivered"], v["deadLettered"]
                ));
                for c in v.get("clients").and_then(Value::as_array).into_iter().flatten() {
                    table.push_str(&format!(
                        "{name}: client {} at {} ({} {} {})\n",
                        c["clientId"].as_str().unwrap_or_default(),
                        c["addr"].as_str().unwrap_or_default(),
                        c["protocol"].as_str().unwrap_or_default(),
                        c["language"].as_str().unwrap_or_default(),
                        c["version"].as_str().unwrap_or_default()
                    ));
                }
                pop.push(v);
            }
            if rows.is_empty() && pop.is_empty() {
                bail!("consumer group {group} has no offsets on any broker");
            }
            table.push_str(&format!("total lag: {total_lag}\n"));
            Ok((json!({"group": group, "queues": rows, "total_lag": total_lag, "pop": pop}), table))
        }
        GroupVerb::Connections { group } => {
            let mut all = Vec::new();
            let mut table = String::new();
            // Consumers of the group, then producers of it (a RocketMQ 5
            // producer is listed under each topic it publishes).
            let asks = [
                ("consumer", request::GET_CONSUMER_CONNECTION_LIST, "consumerGroup", "ConsumerConnection"),
                ("producer", request::GET_PRODUCER_CONNECTION_LIST, "producerGroup", "ProducerConnection"),
            ];
            for (_, addr) in admin.masters(None).await? {
                for (role, code, key, what) in asks {
                    let req = RemotingCommand::request(code).with(key, &group);
                    let r =
                        admin.client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
                    if r.code != response::SUCCESS {
                        continue;
                    }
                    let v: Value = fastjson::decode(&r.body, what)?;
                    for c in v.get("connectionSet").and_then(Value::as_array).into_iter().flatten() {
                        table.push_str(&format!(
                            "{:<8} {:<40} {:<24} {:<8} {:<9} {}\n",
                            role,
                            c["clientId"].as_str().unwrap_or_default(),
                            c["clientAddr"].as_str().unwrap_or_default(),
                            c["language"].as_str().unwrap_or_default(),
                            c["protocol"].as_str().unwrap_or("remoting"),
                            c["clientVersion"].as_str().map_or_else(|| c["version"].to_string(), str::to_string)
                        ));
                        let mut c = c.clone();
                        c["role"] = json!(role);
                        all.push(c);
                    }
                }
            }
            if all.is_empty() {
                bail!("group {group} has no client connected");
            }
            Ok((json!(all), table))
        }
        GroupVerb::ResetOffset { group, topic, timestamp } => {
            let mut rows = Vec::new();
            let mut table = String::new();
            for (name, addr, queues) in admin.topic_masters(&topic).await? {
                for q in 0..queues {
                    let search = RemotingCommand::request(request::SEARCH_OFFSET_BY_TIMESTAMP)
                        .with("topic", &topic)
                        .with("queueId", q)
                        .with("timestamp", timestamp);
                    let offset = offset_field(&admin.call(&addr, search).await?, "offset")?;
                    let update = RemotingCommand::request(request::UPDATE_CONSUMER_OFFSET)
                        .with("consumerGroup", &group)
                        .with("topic", &topic)
                        .with("queueId", q)
                        .with("commitOffset", offset);
                    admin.call(&addr, update).await?;
                    table.push_str(&format!("{topic} {name} queue {q}: offset {offset}\n"));
                    rows.push(json!({"broker": name, "queue_id": q, "offset": offset}));
                }
            }
            Ok((json!(rows), table))
        }
    }
}

fn describe(r: &Record<'_>) -> Value {
    json!({
        "topic": r.topic,
        "queue_id": r.queue_id,
        "queue_offset": r.queue_offset,
        "commit_log_offset": r.physical_offset,
        "store_timestamp": r.store_timestamp,
        "born_timestamp": r.born_timestamp,
        "born_host": r.born_host.to_string(),
        "store_host": r.store_host.to_string(),
        "reconsume_times": r.reconsume_times,
        "tags": r.property("TAGS"),
        "keys": r.property("KEYS"),
        "uniq_key": r.property("UNIQ_KEY"),
        "properties": r.properties.replace(['\u{1}'], "=").replace(['\u{2}'], "; "),
        "body_len": r.body.len(),
        "body": String::from_utf8_lossy(&r.body[..r.body.len().min(256)]),
    })
}

fn records(body: &[u8]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let r = decode_record(rest, false).context("a stored record does not decode")?;
        out.push(describe(&r));
        rest = &rest[r.total_size..];
    }
    Ok(out)
}

fn message_table(found: &[Value]) -> String {
    found.iter().map(|m| format!("{}\n", serde_json::to_string_pretty(m).unwrap_or_default())).collect()
}

async fn message(admin: &Admin, verb: MessageVerb) -> Result<Output> {
    let found = match verb {
        // Unique keys and offset ids are both 32 hex characters: with a
        // topic, the unique-key index is asked first, as mqadmin does.
        MessageVerb::Id { id, topic } => {
            let by_key = match &topic {
                Some(t) => query_key(admin, t, &id, 0, i64::MAX, 32).await?,
                None => Vec::new(),
            };
            match (by_key.is_empty(), parse_offset_msg_id(&id)) {
                (false, _) => by_key,
                (true, Some((host, offset))) => {
                    let req = RemotingCommand::request(request::VIEW_MESSAGE_BY_ID).with("offset", offset);
                    records(&admin.call(&host.to_string(), req).await?.body)?
                }
                (true, None) if topic.is_none() => {
                    bail!("`{id}` is not an offset message id; give --topic to look it up as a unique key")
                }
                (true, None) => Vec::new(),
            }
        }
        MessageVerb::Key { topic, key, begin, end, max } => query_key(admin, &topic, &key, begin, end, max).await?,
        MessageVerb::Range { topic, begin, end, max } => query_range(admin, &topic, begin, end, max).await?,
    };
    if found.is_empty() {
        bail!("no message found");
    }
    let table = message_table(&found);
    Ok((json!(found), table))
}

async fn query_range(admin: &Admin, topic: &str, begin: i64, end: i64, max: usize) -> Result<Vec<Value>> {
    let raw = range_records(admin, topic, begin, end, max).await?;
    raw.iter()
        .map(|(_, r)| decode_record(r, false).map(|r| describe(&r)).context("a stored record does not decode"))
        .collect()
}

/// Per queue: from the first offset stored at or after `begin`, pull until
/// `end` is passed, the queue ends, or `max` messages were found. Each
/// record comes with the address of the master that holds it.
async fn range_records(admin: &Admin, topic: &str, begin: i64, end: i64, max: usize) -> Result<Vec<(String, Vec<u8>)>> {
    let mut found = Vec::new();
    for (_, addr, queues) in admin.topic_masters(topic).await? {
        for q in 0..queues {
            let req = RemotingCommand::request(request::SEARCH_OFFSET_BY_TIMESTAMP)
                .with("topic", topic)
                .with("queueId", q)
                .with("timestamp", begin);
            let mut offset: i64 =
                admin.call(&addr, req).await?.field("offset").and_then(|v| v.parse().ok()).unwrap_or(0);
            let mut in_queue = 0;
            'queue: while in_queue < max {
                let req = tools_pull_request(topic, q, offset, max - in_queue);
                let r = admin.client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
                if r.code != response::SUCCESS {
                    break; // nothing more in this queue (or a moved offset)
                }
                let next: i64 = r.field("nextBeginOffset").and_then(|v| v.parse().ok()).unwrap_or(offset);
                let mut rest = &r.body[..];
                while !rest.is_empty() {
                    let m = decode_record(rest, false).context("a stored record does not decode")?;
                    if m.store_timestamp > end {
                        break 'queue;
                    }
                    found.push((addr.clone(), rest[..m.total_size].to_vec()));
                    in_queue += 1;
                    rest = &rest[m.total_size..];
                }
                if next <= offset {
                    break;
                }
                offset = next;
            }
        }
    }
    Ok(found)
}

/// `admin undeliverable list`.
async fn undeliverable(admin: &Admin, max: usize) -> Result<Output> {
    let topic = spate_broker::undeliverable::UNDELIVERABLE_TOPIC;
    let aside = range_records(admin, topic, 0, i64::MAX, max).await.with_context(|| format!("reading {topic}"))?;
    let rows: Vec<Value> = aside
        .iter()
        .filter_map(|(_, raw)| decode_record(raw, false).ok())
        .map(|r| {
            let mut v = describe(&r);
            v["real_topic"] = json!(r.property("REAL_TOPIC"));
            v["from"] = json!(r.property(spate_broker::undeliverable::SOURCE_PROPERTY));
            v["reason"] = json!(r.property(spate_broker::undeliverable::REASON_PROPERTY));
            v
        })
        .collect();
    let table = message_table(&rows);
    Ok((json!(rows), table))
}

/// `admin dlq list` / `admin dlq resend`.
async fn dlq(admin: &Admin, verb: DlqVerb) -> Result<Output> {
    let (group, max) = match &verb {
        DlqVerb::List { group, max } | DlqVerb::Resend { group, max, .. } => (group.clone(), *max),
    };
    let topic = format!("%DLQ%{group}");
    let dead = range_records(admin, &topic, 0, i64::MAX, max).await.with_context(|| format!("reading {topic}"))?;
    match verb {
        DlqVerb::List { .. } => {
            let rows: Vec<Value> = dead
                .iter()
                .filter_map(|(_, raw)| decode_record(raw, false).ok())
                .map(|r| {
                    let mut v = describe(&r);
                    v["origin_topic"] = json!(r.property("RETRY_TOPIC"));
                    v["origin_msg_id"] = json!(r.property("ORIGIN_MESSAGE_ID"));
                    v
                })
                .collect();
            let table = message_table(&rows);
            Ok((json!(rows), table))
        }
        DlqVerb::Resend { msg_id, all, .. } => {
            if msg_id.is_none() && !all {
                bail!("name the message with --msg-id, or resend them all with --all");
            }
            let retry = format!("%RETRY%{group}");
            let mut resent = Vec::new();
            for (addr, raw) in &dead {
                let r = decode_record(raw, false).context("a stored record does not decode")?;
                let offset_id = spate_common::message::offset_msg_id(r.store_host, r.physical_offset as u64);
                let chosen = msg_id.as_deref().is_none_or(|id| r.property("UNIQ_KEY") == Some(id) || offset_id == id);
                if !chosen {
                    continue;
                }
                let req = RemotingCommand::request(request::SEND_MESSAGE)
                    .with("producerGroup", TOOLS_GROUP)
                    .with("topic", &retry)
                    .with("defaultTopic", "TBW102")
                    .with("defaultTopicQueueNums", 1)
                    .with("queueId", 0)
                    .with("sysFlag", r.sys_flag & !spate_common::message::SYSFLAG_TX_MASK)
                    .with("bornTimestamp", r.born_timestamp)
                    .with("flag", r.flag)
                    .with("properties", r.properties)
                    .with("reconsumeTimes", 0)
                    .with_body(r.body.to_vec());
                let resp = admin.call(addr, req).await.with_context(|| format!("resending {offset_id}"))?;
                resent.push(json!({
                    "msg_id": r.property("UNIQ_KEY"),
                    "from": offset_id,
                    "to": retry,
                    "new_offset_msg_id": resp.field("msgId"),
                }));
            }
            if resent.is_empty() {
                bail!("no dead letter of {group} matched");
            }
            let table = format!("resent {} message(s) to {retry}\n", resent.len());
            Ok((json!(resent), table))
        }
    }
}

async fn query_key(admin: &Admin, topic: &str, key: &str, begin: i64, end: i64, max: i32) -> Result<Vec<Value>> {
    let mut found = Vec::new();
    for (_, addr, _) in admin.topic_masters(topic).await? {
        let req = RemotingCommand::request(request::QUERY_MESSAGE)
            .with("topic", topic)
            .with("key", key)
            .with("maxNum", max)
            .with("beginTimestamp", begin)
            .with("endTimestamp", end);
        let r = admin.client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("calling {addr}"))?;
        match r.code {
            response::SUCCESS => found.extend(records(&r.body)?),
            response::QUERY_NOT_FOUND => {}
            code => bail!("{addr} answered code {code}: {}", r.remark.unwrap_or_default()),
        }
    }
    Ok(found)
}

/// `ha status`: asks every broker of every replica group for its replication state.
async fn ha_status(admin: &Admin, cluster: Option<&str>) -> Result<Output> {
    let info = admin.cluster().await?;
    let mut groups = Vec::new();
    let mut table = String::new();
    for b in info.broker_addr_table.values().filter(|b| cluster.is_none_or(|c| b.cluster == c)) {
        table.push_str(&format!("{} ({})\n", b.broker_name, b.cluster));
        let mut members = Vec::new();
        for (id, addr) in &b.broker_addrs {
            let r = admin.call(addr, RemotingCommand::request(request::GET_BROKER_HA_STATUS)).await;
            let v: Value = match r {
                Ok(r) => serde_json::from_slice(&r.body).with_context(|| format!("{addr}: HA status is not JSON"))?,
                Err(e) => json!({"brokerId": id, "addr": addr, "error": e.to_string()}),
            };
            table.push_str(&ha_rows(*id, addr, &v));
            members.push(json!({"brokerId": id, "addr": addr, "status": v}));
        }
        groups.push(json!({"brokerName": b.broker_name, "cluster": b.cluster, "brokers": members}));
    }
    if groups.is_empty() {
        bail!("no broker registered{}", cluster.map(|c| format!(" in cluster {c}")).unwrap_or_default());
    }
    Ok((json!(groups), table))
}

fn ha_rows(id: i64, addr: &str, v: &Value) -> String {
    if let Some(e) = v.get("error") {
        return format!("  #{id} {addr}: unreachable: {}\n", e.as_str().unwrap_or_default());
    }
    let epochs: Vec<String> = v["epochs"]
        .as_array()
        .map(|a| a.iter().map(|e| format!("{}@{}", e["epoch"], e["startOffset"])).collect())
        .unwrap_or_default();
    let mut out = format!(
        "  #{id} {addr} {} maxOffset {} epochs [{}]\n",
        v["role"].as_str().unwrap_or("?"),
        v["maxOffset"],
        epochs.join(" ")
    );
    if let Some(slaves) = v["slaves"].as_array() {
        for s in slaves {
            out.push_str(&format!(
                "    slave #{} {} acked {} lag {} bytes / {} ms, {}\n",
                s["brokerId"],
                s["addr"].as_str().unwrap_or("?"),
                s["ackedOffset"],
                s["lagBytes"],
                s["lagMs"],
                s["mode"].as_str().unwrap_or("?")
            ));
        }
    }
    if let Some(link) = v.get("link") {
        out.push_str(&format!(
            "    following {} (master at {}, lag {} bytes){}\n",
            link["masterHaAddr"].as_str().unwrap_or("nobody"),
            link["masterMaxOffset"],
            link["lagBytes"],
            link["lastError"].as_str().map(|e| format!(", last error: {e}")).unwrap_or_default()
        ));
    }
    out
}

async fn zk_session(addr: &str) -> Result<spate_controller::zk::Zk> {
    spate_controller::zk::Zk::connect(addr, Duration::from_secs(5))
        .await
        .with_context(|| format!("connecting to ZooKeeper at {addr}"))
}

/// `ha groups`: every replica group as the controller sees it in ZooKeeper.
async fn ha_groups(zk_addr: &str) -> Result<Output> {
    let zk = zk_session(zk_addr).await?;
    let leader = zk.leader().await?;
    let mut table = format!("leading controller: {}\n", leader.as_deref().unwrap_or("none"));
    let mut groups = Vec::new();
    for name in zk.groups().await? {
        let (g, version) = zk.read_group(&name).await?;
        let live = zk.read_live(&name).await?;
        table.push_str(&format!(
            "{name}: master {} epoch {} {:?} in-sync {:?} (set epoch {})\n",
            g.master.map_or("none".to_string(), |m| m.to_string()),
            g.master_epoch,
            g.state,
            g.in_sync,
            g.sync_epoch
        ));
        for l in live.values() {
            table.push_str(&format!("  #{} {} maxOffset {} epoch {}\n", l.broker_id, l.addr, l.max_offset, l.epoch));
        }
        let (history, _) = zk.read_history(&name).await?;
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let stats = history.stats(now);
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.0} ms", v));
        table.push_str(&format!(
            "  availability {:.6} ({} nines), {} outages, MTBF {}, MTTR {}{}\n",
            stats.availability,
            stats.nines.map_or("no outage, so no".to_string(), |n| format!("{n:.2}")),
            stats.failures,
            ms(stats.mtbf_ms),
            ms(stats.mttr_ms),
            history
                .open
                .as_ref()
                .map(|o| format!("; DOWN since {} ms ago: {}", now.saturating_sub(o.start_ms), o.cause))
                .unwrap_or_default()
        ));
        for o in history.outages.iter().rev().take(5) {
            table.push_str(&format!("    outage {} ms: {}\n", o.end_ms - o.start_ms, o.cause));
        }
        for t in history.transitions.iter().rev().take(8) {
            table.push_str(&format!(
                "    {} ms ago: epoch {} master {} {:?} in-sync {:?} ({})\n",
                now.saturating_sub(t.at_ms),
                t.epoch,
                t.master.map_or("none".to_string(), |m| m.to_string()),
                t.state,
                t.in_sync,
                t.why
            ));
        }
        groups.push(json!({
            "group": name,
            "state": g,
            "version": version,
            "live": live.values().collect::<Vec<_>>(),
            "availability": stats,
            "outages": history.outages,
            "openOutage": history.open,
            "transitions": history.transitions,
        }));
    }
    Ok((json!({"leader": leader, "groups": groups}), table))
}

/// `ha elect`: an operator's election, written only if nobody changed the group meanwhile.
async fn ha_elect(zk_addr: &str, group: &str, broker_id: i64) -> Result<Output> {
    let zk = zk_session(zk_addr).await?;
    let (current, version) = zk.read_group(group).await?;
    let live = zk.read_live(group).await?;
    let (next, _) = spate_controller::fsm::elect_by_hand(&current, &live, broker_id)
        .map_err(|why| anyhow::anyhow!("cannot elect broker {broker_id} in {group}: {why}"))?;
    if !zk.write_group(group, &next, version).await? {
        bail!("{group} changed while electing; nothing written, try again");
    }
    // The group's history records the operator's election (best effort:
    // the leading controller may be writing the record at the same moment).
    let (mut history, hv) = zk.read_history(group).await?;
    history.record(spate_controller::controller::now_ms(), &next, format!("broker {broker_id} elected by an operator"));
    if !zk.write_history(group, &history, hv).await? {
        tracing::warn!(group, "the election is not in the group's history: the record changed meanwhile");
    }
    let table = format!("{group}: broker {broker_id} is master in epoch {}\n", next.master_epoch);
    Ok((json!({"group": group, "state": next}), table))
}
