//! A broker under the HA controller (`zkAddr` set): it publishes its
//! liveness in ZooKeeper every `zkPollIntervalMillis`, reads its group's
//! durable state (at once when a watch on the group's node fires, and at
//! every poll besides), and takes the role that state gives it:
//!
//! - **master** when the group names it: it stops following, begins the
//!   group's epoch, waits for the durable in-sync set (`Replication`'s
//!   controlled rule), takes writes and registers with the name servers as
//!   broker 0;
//! - **slave** of the named master otherwise, cutting any tail that master
//!   does not have when it joins (`divergence.rs`), registered under its own
//!   id;
//! - **fenced** (a slave following nobody: no client writes) when the group
//!   has no master, when it sees a newer epoch than its own as master, and
//!   the moment its ZooKeeper connection is lost — before the session can
//!   expire and another master be elected, so a cut-off old master never
//!   acknowledges a write the new one lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use spate_controller::fsm::{GroupState, Liveness};
use spate_controller::zk::{Zk, ZkError};

use spate_remoting::protocol::{perm, TopicConfig};

use crate::{BrokerRole, BrokerState};

/// Pause before a new ZooKeeper session after one ended.
pub const RECONNECT_DELAY: Duration = Duration::from_millis(500);

/// Longest wait for a following session to end before taking the master role.
const FOLLOW_STOP_WAIT: Duration = Duration::from_secs(5);

/// Runs until the task is aborted.
pub async fn run(state: Arc<BrokerState>) {
    loop {
        let result = session(&state).await;
        fence(&state, "ZooKeeper session ended");
        if let Err(e) = result {
            tracing::warn!(error = %e, "controller session failed");
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn session(state: &Arc<BrokerState>) -> Result<(), ZkError> {
    let (addrs, timeout, poll, group) = {
        let c = state.config.read();
        (c.zk_addr.clone(), c.zk_session_timeout, c.zk_poll_interval, c.broker_name.clone())
    };
    let zk = Zk::connect(&addrs, timeout).await?;
    zk.ensure_group(&group).await?;
    tracing::info!(zk = %addrs, %group, id = state.identity, "under the controller");
    // Fencing must not wait for the next poll: watch the connection itself.
    let mut states = zk.state_watcher();
    let watcher = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let s = states.changed().await;
                if s != zookeeper_client::SessionState::SyncConnected {
                    fence(&state, "ZooKeeper connection lost");
                    if s.is_terminated() {
                        return;
                    }
                }
            }
        })
    };
    let _stop_watcher = AbortOnDrop(watcher);
    // A new decision is acted on when ZooKeeper reports it, not at the next poll.
    // (Without watches -- ZooKeeper before 3.6 -- the poll alone drives it.)
    let mut decisions = zk
        .watch_node(&Zk::group_node(&group)?)
        .await
        .map_err(|e| tracing::warn!(error = %e, "no watch on the group; polling only"))
        .ok();
    while zk.session_alive() {
        zk.publish_live(&group, &liveness(state)).await?;
        let (g, _) = zk.read_group(&group).await?;
        let live = zk.read_live(&group).await?;
        apply(state, &g, &live).await;
        match decisions.as_mut() {
            Some(w) => {
                tokio::select! {
                    _ = w.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                }
            }
            None => tokio::time::sleep(poll).await,
        }
    }
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What this broker tells the controller about itself.
fn liveness(state: &BrokerState) -> Liveness {
    let (addr, ha_addr, cluster, role) = {
        let c = state.config.read();
        let role = match c.broker_role {
            BrokerRole::Slave if c.ha_master_address.is_empty() => "FENCED",
            BrokerRole::Slave => "SLAVE",
            _ => "MASTER",
        };
        (
            state.broker_addr.to_string(),
            format!("{}:{}", c.broker_ip1, c.ha_port()),
            c.broker_cluster_name.clone(),
            role,
        )
    };
    let end = state.store.max_offset();
    let mut live = Liveness {
        broker_id: state.identity,
        addr,
        ha_addr,
        cluster,
        role: role.to_string(),
        max_offset: end,
        epoch: state.store.epochs().last().map_or(0, |e| e.epoch),
        ..Liveness::default()
    };
    if let Some(set) = state.replication.ack_set() {
        live.acking = set.reported();
        live.wants_out = set.wants_out.clone();
        for s in state.replication.slaves() {
            live.slave_lag.insert(s.broker_id, end.saturating_sub(s.acked_offset));
        }
    }
    live
}

/// Takes the role the group's durable state gives this broker.
async fn apply(state: &Arc<BrokerState>, g: &GroupState, live: &BTreeMap<i64, Liveness>) {
    let me = state.identity;
    match g.master {
        Some(m) if m == me => become_master(state, g).await,
        Some(m) => match live.get(&m).map(|l| l.ha_addr.clone()).filter(|a| !a.is_empty()) {
            Some(ha) => become_slave(state, &ha),
            None => fence(state, "the group's master is not alive"),
        },
        None => fence(state, "the group has no master"),
    }
}

async fn become_master(state: &Arc<BrokerState>, g: &GroupState) {
    let already = state.config.read().broker_role != BrokerRole::Slave;
    let last_epoch = state.store.epochs().last().map_or(0, |e| e.epoch);
    if already && last_epoch == g.master_epoch {
        state.replication.apply_in_sync(&g.in_sync);
        return;
    }
    if last_epoch > g.master_epoch {
        // Our log has an epoch the group never gave: not safe to lead on it.
        fence(state, "this log holds a newer epoch than the group's");
        return;
    }
    // Stop following first: no replicated batch may land after the epoch begins.
    state.slave.role_changed();
    let deadline = tokio::time::Instant::now() + FOLLOW_STOP_WAIT;
    while state.slave.is_following() && tokio::time::Instant::now() < deadline {
        state.slave.role_changed();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if state.slave.is_following() {
        tracing::warn!("the follower did not stop; not taking the master role yet");
        return;
    }
    if last_epoch < g.master_epoch {
        let (store, epoch) = (state.store.clone(), g.master_epoch);
        match tokio::task::spawn_blocking(move || store.begin_epoch(epoch)).await {
            Ok(Ok(e)) => tracing::info!(epoch = e.epoch, start = e.start_offset, "master epoch begun"),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot begin the master epoch");
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "epoch task failed");
                return;
            }
        }
    }
    adopt_logged_topics(state);
    state.replication.start_controlled(state.identity, &g.in_sync);
    {
        let mut c = state.config.write();
        c.broker_role = BrokerRole::SyncMaster;
        c.broker_id = 0;
    }
    tracing::info!(epoch = g.master_epoch, in_sync = ?g.in_sync, "now master");
    state.topics_changed(); // register as broker 0 at once
}

/// A slave copies its master's topic table only every
/// `slaveSyncMetadataInterval`, so a topic created just before a failover
/// can be in the replicated log but not in the table. The new master
/// serves every topic its log holds: a missing one is added with as many
/// queues as the log has for it, so it is routed and its messages consumable.
fn adopt_logged_topics(state: &BrokerState) {
    for topic in state.store.topics() {
        if state.topics.get(&topic).is_some() {
            continue;
        }
        let queues = state.store.queue_ids(&topic).last().map_or(1, |q| q + 1);
        let tc = TopicConfig::new(&topic, queues, perm::READ | perm::WRITE);
        if state.topics.upsert(tc) {
            tracing::info!(%topic, queues, "topic found in the log but not in the table: added");
        }
    }
}

fn become_slave(state: &Arc<BrokerState>, master_ha: &str) {
    let changed = {
        let mut c = state.config.write();
        let changed = c.broker_role != BrokerRole::Slave || c.ha_master_address != master_ha;
        c.broker_role = BrokerRole::Slave;
        c.broker_id = state.identity;
        c.ha_master_address = master_ha.to_string();
        changed
    };
    if changed {
        state.replication.stop_controlled();
        state.slave.role_changed();
        tracing::info!(master = %master_ha, "now slave");
        state.topics_changed();
    }
}

/// Stops taking writes at once (a slave following nobody).
fn fence(state: &BrokerState, why: &str) {
    let was_master = {
        let mut c = state.config.write();
        let was = c.broker_role != BrokerRole::Slave;
        c.broker_role = BrokerRole::Slave;
        c.broker_id = state.identity;
        c.ha_master_address.clear();
        was
    };
    if was_master {
        state.replication.stop_controlled();
        tracing::warn!(reason = why, "fenced: no longer taking writes");
        state.topics_changed();
    }
}
