//! The controller process: stateless. It competes for leadership through an
//! ephemeral node; the leader, every `scan_interval`, reads each replica
//! group's durable state and live brokers, runs [`fsm::decide`] and writes
//! the result conditionally on the version it read, so a stale or second
//! leader can never overwrite a newer decision. Standbys retry leadership
//! each interval and take over when the leader's session ends.

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
pub async fn scan_once(zk: &Zk, policy: &Policy) -> Result<Vec<Applied>, ZkError> {
    let mut applied = Vec::new();
    for group in zk.groups().await? {
        let (state, version) = zk.read_group(&group).await?;
        let live = zk.read_live(&group).await?;
        let Some((next, change)) = fsm::decide(&state, &live, policy) else { continue };
        if zk.write_group(&group, &next, version).await? {
            tracing::info!(%group, ?change, master = ?next.master, epoch = next.master_epoch, "replica group changed");
            applied.push(Applied { group, change });
        } else {
            tracing::debug!(%group, "group changed under us; re-reading next pass");
        }
    }
    Ok(applied)
}

/// Runs until the ZooKeeper session cannot be re-established (then the
/// caller restarts it, as a fresh standby).
pub async fn run(cfg: ControllerConfig) -> Result<(), ZkError> {
    loop {
        let zk = Zk::connect(&cfg.zk_addrs, cfg.session_timeout).await?;
        tracing::info!(id = %cfg.id, zk = %cfg.zk_addrs, "controller connected");
        let mut leading = false;
        while zk.session_alive() {
            if !leading {
                leading = zk.try_lead(&cfg.id).await?;
                if leading {
                    tracing::info!(id = %cfg.id, "controller leads");
                }
            }
            if leading {
                if let Err(e) = scan_once(&zk, &cfg.policy).await {
                    tracing::warn!(error = %e, "scan failed");
                }
            }
            tokio::time::sleep(cfg.scan_interval).await;
        }
        tracing::warn!(id = %cfg.id, "controller session ended; reconnecting as a standby");
    }
}
