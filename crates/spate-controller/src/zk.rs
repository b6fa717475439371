//! The controller's and brokers' view of ZooKeeper: where each piece of
//! state lives, and the few operations on it. JSON in every node.
//!
//! ```text
//! /spate/groups/<brokerName>              persistent  GroupState (written with a version check)
//! /spate/groups/<brokerName>/live/<id>    ephemeral   Liveness of broker <id> (gone with its session)
//! /spate/controller/leader                ephemeral   the leading controller's id
//! /spate/outages/<brokerName>             persistent  History: outages and state transitions
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use zookeeper_client as zk;

use crate::availability::History;
use crate::fsm::{GroupState, Liveness};

pub const GROUPS: &str = "/spate/groups";
pub const LEADER: &str = "/spate/controller/leader";
pub const OUTAGES: &str = "/spate/outages";

/// Rounds of create / replace before publishing liveness gives up.
const PUBLISH_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ZkError {
    #[error("ZooKeeper at {addr}: {source}")]
    Connect { addr: String, source: zk::Error },
    #[error("ZooKeeper {op} {path}: {source}")]
    Op { op: &'static str, path: String, source: zk::Error },
    #[error("ZooKeeper node {path} holds invalid JSON: {reason}")]
    BadData { path: String, reason: String },
    #[error("invalid replica group name `{0}`")]
    BadName(String),
}

pub type Result<T> = std::result::Result<T, ZkError>;

impl ZkError {
    /// A connect string the client refuses as such (not a server that is
    /// down or slow): retrying cannot help.
    pub fn is_bad_address(&self) -> bool {
        matches!(self, ZkError::Connect { source: zk::Error::BadArguments(_), .. })
    }
}

fn op<'a>(op: &'static str, path: &'a str) -> impl FnOnce(zk::Error) -> ZkError + 'a {
    move |source| ZkError::Op { op, path: path.to_string(), source }
}

fn group_path(group: &str) -> Result<String> {
    if group.is_empty() || group.contains('/') || group.len() > 127 {
        return Err(ZkError::BadName(group.to_string()));
    }
    Ok(format!("{GROUPS}/{group}"))
}

/// One ZooKeeper session.
#[derive(Clone)]
pub struct Zk {
    client: zk::Client,
}

impl Zk {
    /// Opens a session (`host:port,host:port`); ephemeral nodes created
    /// through it vanish `session_timeout` after it stops heartbeating.
    pub async fn connect(addrs: &str, session_timeout: Duration) -> Result<Zk> {
        let client = zk::Client::connector()
            .with_session_timeout(session_timeout)
            .connect(addrs)
            .await
            .map_err(|source| ZkError::Connect { addr: addrs.to_string(), source })?;
        Ok(Zk { client })
    }

    /// Whether the session is still valid (not expired or closed).
    pub fn session_alive(&self) -> bool {
        !self.client.state().is_terminated()
    }

    /// A watcher of the session's state (fencing waits on it).
    pub fn state_watcher(&self) -> zk::StateWatcher {
        self.client.state_watcher()
    }

    async fn mkdir(&self, path: &str) -> Result<()> {
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        match self.client.mkdir(path, &opts).await {
            Ok(()) | Err(zk::Error::NodeExists) => Ok(()),
            Err(e) => Err(op("mkdir", path)(e)),
        }
    }

    /// Creates the group's node (a group nobody led yet) if it is missing.
    pub async fn ensure_group(&self, group: &str) -> Result<()> {
        let path = group_path(group)?;
        self.mkdir(&format!("{path}/live")).await?;
        let (data, stat) = self.client.get_data(&path).await.map_err(op("get", &path))?;
        if data.is_empty() && stat.version == 0 {
            let body = serde_json::to_vec(&GroupState::new()).unwrap_or_default();
            match self.client.set_data(&path, &body, Some(0)).await {
                Ok(_) | Err(zk::Error::BadVersion) => {}
                Err(e) => return Err(op("set", &path)(e)),
            }
        }
        Ok(())
    }

    /// Replica groups known to ZooKeeper.
    pub async fn groups(&self) -> Result<Vec<String>> {
        match self.client.list_children(GROUPS).await {
            Ok(mut v) => {
                v.sort();
                Ok(v)
            }
            Err(zk::Error::NoNode) => Ok(Vec::new()),
            Err(e) => Err(op("list", GROUPS)(e)),
        }
    }

    /// The group's durable state and its node version (for the conditional write).
    pub async fn read_group(&self, group: &str) -> Result<(GroupState, i32)> {
        let path = group_path(group)?;
        let (data, stat) = self.client.get_data(&path).await.map_err(op("get", &path))?;
        if data.is_empty() {
            return Ok((GroupState::new(), stat.version));
        }
        let state = serde_json::from_slice(&data).map_err(|e| ZkError::BadData { path, reason: e.to_string() })?;
        Ok((state, stat.version))
    }

    /// Writes the group's state if its node is still at `version`; false
    /// when another writer got there first (nothing written).
    pub async fn write_group(&self, group: &str, state: &GroupState, version: i32) -> Result<bool> {
        let path = group_path(group)?;
        let body = serde_json::to_vec(state).unwrap_or_default();
        match self.client.set_data(&path, &body, Some(version)).await {
            Ok(_) => Ok(true),
            Err(zk::Error::BadVersion) => Ok(false),
            Err(e) => Err(op("set", &path)(e)),
        }
    }

    /// The live brokers of a group, by id (unreadable entries are skipped).
    pub async fn read_live(&self, group: &str) -> Result<BTreeMap<i64, Liveness>> {
        let dir = format!("{}/live", group_path(group)?);
        let ids = match self.client.list_children(&dir).await {
            Ok(v) => v,
            Err(zk::Error::NoNode) => return Ok(BTreeMap::new()),
            Err(e) => return Err(op("list", &dir)(e)),
        };
        let mut out = BTreeMap::new();
        for id in ids {
            let path = format!("{dir}/{id}");
            let (data, stat) = match self.client.get_data(&path).await {
                Ok(x) => x,
                Err(zk::Error::NoNode) => continue, // gone meanwhile
                Err(e) => return Err(op("get", &path)(e)),
            };
            match serde_json::from_slice::<Liveness>(&data) {
                Ok(mut l) => {
                    l.updated_ms = stat.mtime.max(0) as u64;
                    out.insert(l.broker_id, l);
                }
                Err(e) => tracing::warn!(%path, error = %e, "unreadable liveness node skipped"),
            }
        }
        Ok(out)
    }

    /// Creates or updates this session's ephemeral liveness node. A node
    /// left by an earlier session of the same broker (a quick restart, its
    /// session not yet expired) is replaced, so the node lives and dies
    /// with this session.
    pub async fn publish_live(&self, group: &str, live: &Liveness) -> Result<()> {
        let path = format!("{}/live/{}", group_path(group)?, live.broker_id);
        let body = serde_json::to_vec(live).unwrap_or_default();
        let opts = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let mine = self.client.session_id().0;
        for _ in 0..PUBLISH_ATTEMPTS {
            match self.client.create(&path, &body, &opts).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => {}
                Err(e) => return Err(op("create", &path)(e)),
            }
            let stat = match self.client.check_stat(&path).await.map_err(op("stat", &path))? {
                Some(stat) => stat,
                None => continue, // gone meanwhile: create again
            };
            let result = if stat.ephemeral_owner == mine {
                self.client.set_data(&path, &body, Some(stat.version)).await.map(|_| ())
            } else {
                self.client.delete(&path, Some(stat.version)).await.and(Err(zk::Error::NodeExists))
            };
            match result {
                Ok(()) => return Ok(()),
                // Replaced, changed or gone meanwhile: look again.
                Err(zk::Error::NodeExists | zk::Error::NoNode | zk::Error::BadVersion) => continue,
                Err(e) => return Err(op("publish", &path)(e)),
            }
        }
        Err(op("publish", &path)(zk::Error::NodeExists))
    }

    /// A persistent watch on `path` and everything under it: fires on every
    /// create, delete and data change there (ZooKeeper 3.6 and later).
    pub async fn watch_tree(&self, path: &str) -> Result<zk::PersistentWatcher> {
        self.mkdir(path).await?;
        self.client.watch(path, zk::AddWatchMode::PersistentRecursive).await.map_err(op("watch", path))
    }

    /// A persistent watch on one node (its data and its direct children).
    pub async fn watch_node(&self, path: &str) -> Result<zk::PersistentWatcher> {
        self.client.watch(path, zk::AddWatchMode::Persistent).await.map_err(op("watch", path))
    }

    /// The group's node path (`/spate/groups/<group>`).
    pub fn group_node(group: &str) -> Result<String> {
        group_path(group)
    }

    /// Tries to become the leading controller; true when this session leads.
    pub async fn try_lead(&self, controller_id: &str) -> Result<bool> {
        self.mkdir("/spate/controller").await?;
        let opts = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        match self.client.create(LEADER, controller_id.as_bytes(), &opts).await {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => {
                let (data, stat) = match self.client.get_data(LEADER).await {
                    Ok(x) => x,
                    Err(zk::Error::NoNode) => return Ok(false), // gone meanwhile: next round
                    Err(e) => return Err(op("get", LEADER)(e)),
                };
                // Our own node from this session (a retried create).
                Ok(data == controller_id.as_bytes() && stat.ephemeral_owner == self.client.session_id().0)
            }
            Err(e) => Err(op("create", LEADER)(e)),
        }
    }

    /// A group's availability record and its node version (`None`: no record yet).
    pub async fn read_history(&self, group: &str) -> Result<(History, Option<i32>)> {
        group_path(group)?;
        let path = format!("{OUTAGES}/{group}");
        match self.client.get_data(&path).await {
            Ok((data, stat)) => {
                let h = serde_json::from_slice(&data).map_err(|e| ZkError::BadData { path, reason: e.to_string() })?;
                Ok((h, Some(stat.version)))
            }
            Err(zk::Error::NoNode) => Ok((History::default(), None)),
            Err(e) => Err(op("get", &path)(e)),
        }
    }

    /// Writes the record if it is still at `version` (or still absent);
    /// false when another writer got there first.
    pub async fn write_history(&self, group: &str, h: &History, version: Option<i32>) -> Result<bool> {
        group_path(group)?;
        let path = format!("{OUTAGES}/{group}");
        let body = serde_json::to_vec(h).unwrap_or_default();
        let result = match version {
            Some(v) => self.client.set_data(&path, &body, Some(v)).await.map(|_| ()),
            None => {
                self.mkdir(OUTAGES).await?;
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                self.client.create(&path, &body, &opts).await.map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(zk::Error::BadVersion | zk::Error::NodeExists) => Ok(false),
            Err(e) => Err(op("write", &path)(e)),
        }
    }

    /// The leading controller's id, if any.
    pub async fn leader(&self) -> Result<Option<String>> {
        match self.client.get_data(LEADER).await {
            Ok((d, _)) => Ok(Some(String::from_utf8_lossy(&d).to_string())),
            Err(zk::Error::NoNode) => Ok(None),
            Err(e) => Err(op("get", LEADER)(e)),
        }
    }
}
