//! `spate admin`: the first of mqadmin's jobs (the rest arrive with the
//! admin issue). Talks to name servers and brokers over the remoting protocol.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use spate_remoting::protocol::{json, ClusterInfo, TopicRouteData};
use spate_remoting::{request, response, ClientConfig, RemotingClient, RemotingCommand};

const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Subcommand)]
pub enum AdminCommand {
    /// Create or update a topic on every master of a cluster (mqadmin updateTopic).
    #[command(name = "updateTopic")]
    UpdateTopic {
        /// Name server address(es), `host:port;host:port`.
        #[arg(short = 'n', long = "namesrvAddr", default_value = "127.0.0.1:9876")]
        namesrv: String,
        /// Topic name.
        #[arg(short = 't', long)]
        topic: String,
        /// Cluster (default: every cluster the name server knows).
        #[arg(short = 'c', long)]
        cluster: Option<String>,
        /// Read queues.
        #[arg(short = 'r', long = "readQueueNums", default_value_t = 8)]
        read_queues: i32,
        /// Write queues.
        #[arg(short = 'w', long = "writeQueueNums", default_value_t = 8)]
        write_queues: i32,
        /// Permission: 2 write, 4 read, 6 both.
        #[arg(short = 'p', long, default_value_t = 6)]
        perm: i32,
    },
    /// Show a topic's route (mqadmin topicRoute).
    #[command(name = "topicRoute")]
    TopicRoute {
        #[arg(short = 'n', long = "namesrvAddr", default_value = "127.0.0.1:9876")]
        namesrv: String,
        #[arg(short = 't', long)]
        topic: String,
    },
    /// List clusters and their brokers (mqadmin clusterList).
    #[command(name = "clusterList")]
    ClusterList {
        #[arg(short = 'n', long = "namesrvAddr", default_value = "127.0.0.1:9876")]
        namesrv: String,
    },
}

fn first_namesrv(addrs: &str) -> Result<String> {
    addrs.split(';').map(str::trim).find(|a| !a.is_empty()).map(str::to_string).context("no name server address given")
}

async fn cluster_info(client: &RemotingClient, namesrv: &str) -> Result<ClusterInfo> {
    let r = client.invoke(namesrv, RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO), TIMEOUT).await?;
    if r.code != response::SUCCESS {
        bail!("name server answered code {}: {}", r.code, r.remark.unwrap_or_default());
    }
    Ok(json::decode(&r.body, "ClusterInfo")?)
}

pub async fn run(cmd: AdminCommand) -> Result<()> {
    let client = RemotingClient::new(ClientConfig::default(), None);
    match cmd {
        AdminCommand::UpdateTopic { namesrv, topic, cluster, read_queues, write_queues, perm } => {
            let info = cluster_info(&client, &first_namesrv(&namesrv)?).await?;
            let masters: Vec<(String, String)> = info
                .broker_addr_table
                .values()
                .filter(|b| cluster.as_deref().is_none_or(|c| b.cluster == c))
                .filter_map(|b| b.master_addr().map(|a| (b.broker_name.clone(), a.to_string())))
                .collect();
            if masters.is_empty() {
                bail!("no master broker found{}", cluster.map(|c| format!(" in cluster {c}")).unwrap_or_default());
            }
            for (name, addr) in masters {
                let req = RemotingCommand::request(request::UPDATE_AND_CREATE_TOPIC)
                    .with("topic", &topic)
                    .with("readQueueNums", read_queues)
                    .with("writeQueueNums", write_queues)
                    .with("perm", perm)
                    .with("topicFilterType", "SINGLE_TAG")
                    .with("topicSysFlag", 0)
                    .with("order", false);
                let r = client.invoke(&addr, req, TIMEOUT).await.with_context(|| format!("broker {name} at {addr}"))?;
                if r.code != response::SUCCESS {
                    bail!("broker {name} at {addr} refused: code {} {}", r.code, r.remark.unwrap_or_default());
                }
                println!("create topic {topic} on {name} ({addr}) success");
            }
        }
        AdminCommand::TopicRoute { namesrv, topic } => {
            let req = RemotingCommand::request(request::GET_ROUTEINFO_BY_TOPIC).with("topic", &topic);
            let r = client.invoke(&first_namesrv(&namesrv)?, req, TIMEOUT).await?;
            if r.code != response::SUCCESS {
                bail!("{}", r.remark.unwrap_or_else(|| format!("code {}", r.code)));
            }
            let route: TopicRouteData = json::decode(&r.body, "TopicRouteData")?;
            println!("{}", serde_json::to_string_pretty(&route)?);
        }
        AdminCommand::ClusterList { namesrv } => {
            let info = cluster_info(&client, &first_namesrv(&namesrv)?).await?;
            println!("{:<20} {:<20} {:<6} #Addr", "#Cluster", "#Broker", "#BID");
            for (cluster, names) in &info.cluster_addr_table {
                for name in names {
                    if let Some(b) = info.broker_addr_table.get(name) {
                        for (id, addr) in &b.broker_addrs {
                            println!("{cluster:<20} {name:<20} {id:<6} {addr}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
