//! The controller process: stateless. It competes for leadership through an
//! ephemeral node; the leader, every `scan_interval`, reads each replica
//! group's durable state and live brokers, runs [`fsm::decide`] and writes
//! the result conditionally on the version it read, so a stale or second
//! leader can never overwrite a newer decision. Standbys retry leadership
//! each interval and take over when the leader's session ends.

use std::collections::HashMap;
use std::time::Duration;

use crate::fsm::{self, Change, Policy};
use crate::zk::{Zk, ZkError};

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
    /// How often the leader re-reads every group (and standbys retry).
    pub scan_interval: Duration,
    pub policy: Policy,
}

/// One decision that was written (for logs and tests).
#[derive(Debug, Clone)]
pub struct Applied {
    pub group: String,
    pub change: Change,
}

/// One pass over every group; returns the decisions written. A write that
/// lost its version race is skipped (the next pass re-reads).
pub async fn scan_once(
    zk: &Zk,
    policy: &Policy,
    last_served: &mut HashMap<String, u64>,
) -> Result<Vec<Applied>, ZkError> {
    let mut applied = Vec::new();
    for group in zk.groups().await? {
        let (mut state, version) = zk.read_group(&group).await?;
        let live = zk.read_live(&group).await?;
        if let Some((next, change)) = fsm::decide(&state, &live, policy) {
            if !zk.write_group(&group, &next, version).await? {
                tracing::debug!(%group, "group changed under us; re-reading next pass");
                continue;
            }
            tracing::info!(%group, ?change, master = ?next.master, epoch = next.master_epoch, "replica group changed");
            applied.push(Applied { group: group.clone(), change: change.clone() });
            state = next;
            account(zk, &group, &state, &live, Some(&change), last_served).await?;
            continue;
        }
        account(zk, &group, &state, &live, None, last_served).await?;
    }
    Ok(applied)
}

/// Availability: is the group serving (its master alive and in the
/// group's epoch)? Opens or closes an outage in the group's record.
async fn account(
    zk: &Zk,
    group: &str,
    state: &fsm::GroupState,
    live: &std::collections::BTreeMap<i64, fsm::Liveness>,
    change: Option<&Change>,
    last_served: &mut HashMap<String, u64>,
) -> Result<(), ZkError> {
    let now = now_ms();
    let master = state.master.and_then(|m| live.get(&m));
    let serving = master.is_some_and(|l| l.epoch == state.master_epoch);
    // An outage starts at the serving master's last sign of life (its
    // liveness node's last update), not when its session expired.
    let seen = last_served.get(group).copied().unwrap_or(now);
    if let Some(l) = master.filter(|_| serving) {
        last_served.insert(group.to_string(), l.updated_ms.clamp(seen.min(now), now));
    }
    let (mut history, version) = zk.read_history(group).await?;
    let cause = || match (change, state.master) {
        (Some(Change::Elected { previous: Some(p), .. }), _) => format!("master {p} lost"),
        (Some(Change::Leaderless { previous: Some(p) }), _) => format!("master {p} lost; no live in-sync broker"),
        (_, None) => "no master: no live in-sync broker".to_string(),
        (_, Some(m)) if !live.contains_key(&m) => format!("master {m} lost"),
        (_, Some(m)) => format!("broker {m} elected, not yet serving"),
    };
    let was_open = history.open.is_some();
    if history.observe(now, serving, seen, cause) && zk.write_history(group, &history, version).await? {
        match (&history.open, history.outages.last()) {
            (Some(open), _) => tracing::warn!(%group, cause = %open.cause, "outage began"),
            (None, Some(last)) if was_open => tracing::info!(%group, ms = last.end_ms - last.start_ms, "outage ended"),
            _ => {}
        }
    }
    Ok(())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Runs until the ZooKeeper session cannot be re-established (then the
/// caller restarts it, as a fresh standby).
pub async fn run(cfg: ControllerConfig) -> Result<(), ZkError> {
    loop {
        let zk = Zk::connect(&cfg.zk_addrs, cfg.session_timeout).await?;
        tracing::info!(id = %cfg.id, zk = %cfg.zk_addrs, "controller connected");
        let mut leading = false;
        let mut last_served = HashMap::new();
        while zk.session_alive() {
            if !leading {
                leading = zk.try_lead(&cfg.id).await?;
                if leading {
                    tracing::info!(id = %cfg.id, "controller leads");
                }
            }
            if leading {
                if let Err(e) = scan_once(&zk, &cfg.policy, &mut last_served).await {
                    tracing::warn!(error = %e, "scan failed");
                }
            }
            tokio::time::sleep(cfg.scan_interval).await;
        }
        tracing::warn!(id = %cfg.id, "controller session ended; reconnecting as a standby");
    }
}
