//! The controller process: stateless. It competes for leadership through an
//! ephemeral node; the leader reads each replica group's durable state and
//! live brokers, runs [`fsm::decide`] and writes the result conditionally on
//! the version it read, so a stale or second leader can never overwrite a
//! newer decision. It scans when ZooKeeper reports a change under
//! `/spate/groups` (a persistent recursive watch) and at least every
//! `scan_interval` besides. Standbys retry leadership each interval and take
//! over when the leader's session ends.
//!
//! Besides the state, the leader keeps each group's availability record
//! (outages and state transitions, `availability.rs`), tells the name
//! servers at once when a broker's session ends (so clients stop routing to
//! it within the failover window, not after the name server's own scan),
//! and keeps a snapshot of every group for `/metrics` (`metrics.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use spate_remoting::{request, ClientConfig, RemotingClient, RemotingCommand};

use crate::availability::History;
use crate::fsm::{self, Change, GroupState, Liveness, Policy};
use crate::zk::{Zk, ZkError};

/// How long the controller waits for a name server to take an unregister.
const NAMESRV_TIMEOUT: Duration = Duration::from_secs(1);
/// Shortest pause between two scans, however often the watch fires.
const MIN_SCAN_GAP: Duration = Duration::from_millis(5);
/// Pause before trying again to open a ZooKeeper session that failed to
/// open, and the shortest a session may last before the next one opens
/// at once (one that keeps ending as soon as it opens must not spin).
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Settings of `spate controller`.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// ZooKeeper connect string, `host:port,host:port`.
    pub zk_addrs: String,
    /// This controller's name in the leader node.
    pub id: String,
    /// The controller's ZooKeeper session timeout: a dead leader is replaced
    /// after it.
    pub session_timeout: Duration,
    /// The longest gap between two scans when no watch fires.
    pub scan_interval: Duration,
    pub policy: Policy,
    /// Name servers told when a broker's session ends (`namesrvAddr`).
    pub namesrv_addrs: Vec<String>,
    /// What those requests are signed with: a Super user of the name
    /// servers when they run with `authenticationEnabled=true`.
    pub namesrv_credentials: Option<spate_remoting::Credentials>,
}

/// One decision that was written (for logs and tests).
#[derive(Debug, Clone)]
pub struct Applied {
    pub group: String,
    pub change: Change,
}

/// What the leader last saw of one group (for `/metrics`).
#[derive(Debug, Clone)]
pub struct GroupView {
    pub state: GroupState,
    pub live: BTreeMap<i64, Liveness>,
    pub history: History,
    pub serving: bool,
}

/// What `/metrics` shows: whether this controller leads, and every group
/// as its last scan saw it (empty on a standby).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub leading: bool,
    pub groups: BTreeMap<String, GroupView>,
    pub scans: u64,
    pub decisions: u64,
    pub unregistered: u64,
}

/// The leader's memory between scans (lost on restart, which only delays
/// an unregister or dates one outage from the next scan).
pub struct Scanner {
    policy: Policy,
    namesrv: Vec<String>,
    client: Option<Arc<RemotingClient>>,
    last_served: HashMap<String, u64>,
    last_live: HashMap<String, BTreeMap<i64, Liveness>>,
    /// Each group's availability record and its node version, as last read or written.
    history: HashMap<String, (History, Option<i32>)>,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Scanner {
    pub fn new(
        policy: Policy,
        namesrv: Vec<String>,
        credentials: Option<spate_remoting::Credentials>,
        snapshot: Arc<Mutex<Snapshot>>,
    ) -> Scanner {
        let mut client_cfg = ClientConfig::default();
        client_cfg.connection.credentials = credentials;
        let client = (!namesrv.is_empty()).then(|| Arc::new(RemotingClient::new(client_cfg, None)));
        Scanner {
            policy,
            namesrv,
            client,
            last_served: HashMap::new(),
            last_live: HashMap::new(),
            history: HashMap::new(),
            snapshot,
        }
    }

    /// One pass over every group; returns the decisions written. A write
    /// that lost its version race is skipped (the next pass re-reads).
    pub async fn scan_once(&mut self, zk: &Zk) -> Result<Vec<Applied>, ZkError> {
        let mut applied = Vec::new();
        let mut views = BTreeMap::new();
        for group in zk.groups().await? {
            let (mut state, version) = zk.read_group(&group).await?;
            let live = zk.read_live(&group).await?;
            let mut change = None;
            if let Some((next, c)) = fsm::decide(&state, &live, &self.policy) {
                if zk.write_group(&group, &next, version).await? {
                    tracing::info!(%group, change = ?c, master = ?next.master, epoch = next.master_epoch, "replica group changed");
                    applied.push(Applied { group: group.clone(), change: c.clone() });
                    state = next;
                    change = Some(c);
                } else {
                    tracing::debug!(%group, "group changed under us; re-reading next pass");
                }
            }
            self.unregister_gone(&group, &state, &live);
            let (history, serving) = self.account(zk, &group, &state, &live, change.as_ref()).await?;
            views.insert(group, GroupView { state, live, history, serving });
        }
        let mut snap = self.snapshot.lock();
        snap.leading = true;
        snap.groups = views;
        snap.scans += 1;
        snap.decisions += applied.len() as u64;
        Ok(applied)
    }

    /// Availability: is the group serving (its master alive and in the
    /// group's epoch)? Opens or closes an outage in the group's record, and
    /// records a written change as a transition.
    async fn account(
        &mut self,
        zk: &Zk,
        group: &str,
        state: &GroupState,
        live: &BTreeMap<i64, Liveness>,
        change: Option<&Change>,
    ) -> Result<(History, bool), ZkError> {
        let now = now_ms();
        let master = state.master.and_then(|m| live.get(&m));
        let serving = master.is_some_and(|l| l.epoch == state.master_epoch);
        // An outage starts at the serving master's last sign of life (its
        // liveness node's last update), not when its session expired.
        let seen = self.last_served.get(group).copied().unwrap_or(now);
        if let Some(l) = master.filter(|_| serving) {
            self.last_served.insert(group.to_string(), l.updated_ms.clamp(seen.min(now), now));
        }
        let cause = || match (change, state.master) {
            (Some(Change::Elected { previous: Some(p), .. }), _) => format!("master {p} lost"),
            (Some(Change::Leaderless { previous: Some(p) }), _) => format!("master {p} lost; no live in-sync broker"),
            (_, None) => "no master: no live in-sync broker".to_string(),
            (_, Some(m)) if !live.contains_key(&m) => format!("master {m} lost"),
            (_, Some(m)) => format!("broker {m} elected, not yet serving"),
        };
        // The record is cached between scans (only this leader writes it,
        // an operator's election aside); a write that loses its version
        // race is redone once on a fresh read.
        for fresh in [false, true] {
            let cached = if fresh { None } else { self.history.get(group).cloned() };
            let (mut history, version) = match cached {
                Some(h) => h,
                None => zk.read_history(group).await?,
            };
            let mut dirty = false;
            if let Some(c) = change {
                history.record(now, state, describe(c));
                dirty = true;
            }
            let was_open = history.open.is_some();
            dirty |= history.observe(now, serving, seen, cause);
            if !dirty {
                self.history.insert(group.to_string(), (history.clone(), version));
                return Ok((history, serving));
            }
            if zk.write_history(group, &history, version).await? {
                match (&history.open, history.outages.last()) {
                    (Some(open), _) if !was_open => tracing::warn!(%group, cause = %open.cause, "outage began"),
                    (None, Some(last)) if was_open => {
                        tracing::info!(%group, ms = last.end_ms - last.start_ms, "outage ended")
                    }
                    _ => {}
                }
                let next_version = Some(version.map_or(0, |v| v + 1));
                self.history.insert(group.to_string(), (history.clone(), next_version));
                return Ok((history, serving));
            }
            self.history.remove(group);
        }
        // Lost twice: the next scan reads it again.
        let (history, _) = zk.read_history(group).await?;
        Ok((history, serving))
    }

    /// Tells the name servers about brokers whose session ended since the
    /// last scan (unless the same address is live again, e.g. restarted).
    /// Fire and forget: a name server that misses it still expires the
    /// broker on its own scan.
    fn unregister_gone(&mut self, group: &str, state: &GroupState, live: &BTreeMap<i64, Liveness>) {
        let before = self.last_live.insert(group.to_string(), live.clone()).unwrap_or_default();
        let Some(client) = &self.client else { return };
        for (id, gone) in before.iter().filter(|(id, _)| !live.contains_key(id)) {
            if gone.addr.is_empty() || live.values().any(|l| l.addr == gone.addr) {
                continue;
            }
            // A master is registered as broker 0; a slave under its own id.
            let registered_id = if gone.role == "MASTER" || state.master == Some(*id) { 0 } else { *id };
            let req = RemotingCommand::request(request::UNREGISTER_BROKER)
                .with("brokerAddr", &gone.addr)
                .with("brokerName", group)
                .with("clusterName", &gone.cluster)
                .with("brokerId", registered_id);
            tracing::info!(%group, broker = id, addr = %gone.addr, "broker's session ended; unregistering it from the name servers");
            self.snapshot.lock().unregistered += 1;
            for ns in &self.namesrv {
                let (client, req, ns) = (client.clone(), req.clone(), ns.clone());
                tokio::spawn(async move {
                    if let Err(e) = client.invoke(&ns, req, NAMESRV_TIMEOUT).await {
                        tracing::debug!(namesrv = %ns, error = %e, "unregister failed");
                    }
                });
            }
        }
    }
}

/// A written change in a few words (the transition's `why`).
fn describe(c: &Change) -> String {
    match c {
        Change::Elected { broker_id, previous, unclean, .. } => format!(
            "broker {broker_id} elected{}{}",
            previous.map(|p| format!(" after {p}")).unwrap_or_default(),
            if *unclean { " (unclean)" } else { "" }
        ),
        Change::Leaderless { previous } => {
            format!("master {} lost; no live in-sync broker", previous.map_or("-".to_string(), |p| p.to_string()))
        }
        Change::Membership { .. } => "membership".to_string(),
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs until the task is dropped. A lost session is replaced by a fresh
/// one (as a standby) at once; a session that could not be opened
/// (ZooKeeper not yet up, slow or unreachable; an attempt lasts up to the
/// session timeout) is tried again [`RECONNECT_DELAY`] later rather than
/// exit. Only a connect string ZooKeeper's client rejects outright ends
/// it. `snapshot` is kept current for `/metrics`.
pub async fn run(cfg: ControllerConfig, snapshot: Arc<Mutex<Snapshot>>) -> Result<(), ZkError> {
    loop {
        let began = tokio::time::Instant::now();
        let result = session(&cfg, &snapshot).await;
        *snapshot.lock() = Snapshot::default();
        match result {
            // At once, a group may be waiting for its election (unless that
            // session lasted under RECONNECT_DELAY: no tight loop).
            Ok(()) => {
                tracing::warn!(id = %cfg.id, "controller session ended; reconnecting as a standby");
                tokio::time::sleep_until(began + RECONNECT_DELAY).await;
            }
            Err(e) if e.is_bad_address() => return Err(e),
            Err(e) => {
                tracing::warn!(id = %cfg.id, error = %e, "controller cannot reach ZooKeeper; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// One ZooKeeper session, until it ends (`Ok`) or cannot be opened.
async fn session(cfg: &ControllerConfig, snapshot: &Arc<Mutex<Snapshot>>) -> Result<(), ZkError> {
    let zk = Zk::connect(&cfg.zk_addrs, cfg.session_timeout).await?;
    tracing::info!(id = %cfg.id, zk = %cfg.zk_addrs, "controller connected");
    let mut scanner =
        Scanner::new(cfg.policy.clone(), cfg.namesrv_addrs.clone(), cfg.namesrv_credentials.clone(), snapshot.clone());
    let mut leading = false;
    let mut changes = None;
    let mut failed_attempts: u64 = 0;
    while zk.session_alive() {
        if !leading {
            // A failed attempt (connection loss, a slow server) is retried
            // next round on the same session: its ephemeral leader node, if
            // the create did land, is recognised as ours then. Logged at
            // the 1st, 2nd, 4th, 8th ... failure in a row, not every round.
            match zk.try_lead(&cfg.id).await {
                Ok(now) => {
                    leading = now;
                    failed_attempts = 0;
                }
                Err(e) => {
                    failed_attempts += 1;
                    if failed_attempts.is_power_of_two() {
                        tracing::warn!(id = %cfg.id, error = %e, failed_attempts, "leadership attempt failed; retrying");
                    }
                }
            }
            if leading {
                tracing::info!(id = %cfg.id, "controller leads");
                // Without watches (ZooKeeper before 3.6) the scan interval alone drives it.
                changes = zk
                    .watch_tree(crate::zk::GROUPS)
                    .await
                    .map_err(|e| tracing::warn!(error = %e, "no watch on the groups; polling only"))
                    .ok();
            }
        }
        if leading {
            if let Err(e) = scanner.scan_once(&zk).await {
                tracing::warn!(error = %e, "scan failed");
            }
        }
        match changes.as_mut() {
            Some(w) => {
                tokio::select! {
                    _ = w.changed() => {
                        // One scan answers every change queued so far.
                        while w.changed().now_or_never().is_some() {}
                        tokio::time::sleep(MIN_SCAN_GAP).await;
                    }
                    _ = tokio::time::sleep(cfg.scan_interval) => {}
                }
            }
            None => tokio::time::sleep(cfg.scan_interval).await,
        }
    }
    Ok(())
}
