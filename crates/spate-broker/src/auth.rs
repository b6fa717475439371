//! Authentication and authorization on the broker: the users and ACLs
//! (`<storePathRootDir>/config/auth.json`, owner-only), the first Super
//! users from `initAuthenticationUser` and
//! `innerClientAuthenticationCredentials`, the gate every request passes
//! (`spate_remoting::access`), and the user and ACL administration codes.
//! A slave's tables are its master's copy (`ha/metadata.rs`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use spate_auth::{AuthFailure, AuthStore, Principal};
use spate_remoting::access::{self, code};
use spate_remoting::{auth_admin, response, RemotingCommand};

use crate::config::{BrokerConfig, BrokerRole};
use crate::error::BrokerError;
use crate::{persist, BrokerState};

/// The auth table's file under `config/`.
pub const AUTH_FILE: &str = "auth.json";

/// Loads the tables and creates the configured first users when there are
/// none. Blocking (file I/O).
pub fn load(root: &Path, cfg: &BrokerConfig) -> Result<Arc<AuthStore>, BrokerError> {
    let path = persist::config_path(root, AUTH_FILE);
    let firsts: Vec<_> =
        [&cfg.init_authentication_user, &cfg.inner_credentials].into_iter().flatten().cloned().collect();
    let (users, created) = spate_auth::file::open(&path, &firsts)
        .map_err(|e| BrokerError::BadFile { path: path.display().to_string(), reason: e.to_string() })?;
    if !created.is_empty() {
        tracing::info!(users = ?created, "first Super users created from the configuration");
    }
    Ok(Arc::new(users))
}

/// Writes the tables (after a change).
pub async fn persist(state: &BrokerState) -> Result<(), BrokerError> {
    let users = state.gate.users().clone();
    let path = persist::config_path(&state.store.config().store_path_root_dir, AUTH_FILE);
    state.auth_writer.write(path, move || Some(users.to_json())).await
}

/// The gate's verdict on one request, counted and logged when it refuses.
pub fn check(state: &BrokerState, req: &RemotingCommand, source: IpAddr) -> Result<Option<Principal>, RemotingCommand> {
    state.gate.check(req, source).map_err(|failure| {
        state.gate.note_denied(&failure, req.code, source);
        refusal(req, &failure)
    })
}

/// RocketMQ 2.0's answer to a refused request: NO_PERMISSION, with a
/// remark naming the access key and what failed (never a secret).
pub fn refusal(req: &RemotingCommand, failure: &AuthFailure) -> RemotingCommand {
    RemotingCommand::error(req, response::NO_PERMISSION, failure.to_string())
}

/// Codes 3001-3010 and SPATE_GET_AUTH_SNAPSHOT.
pub async fn admin(
    state: &Arc<BrokerState>,
    by: Option<&Principal>,
    req: &RemotingCommand,
) -> Result<RemotingCommand, BrokerError> {
    if req.code == code::SPATE_GET_AUTH_SNAPSHOT {
        return Ok(auth_admin::snapshot(state.gate.users(), by, req));
    }
    let read_only =
        matches!(req.code, code::AUTH_GET_USER | code::AUTH_LIST_USER | code::AUTH_GET_ACL | code::AUTH_LIST_ACL);
    if !read_only && state.config.read().broker_role == BrokerRole::Slave {
        return Ok(RemotingCommand::error(
            req,
            response::NO_PERMISSION,
            format!("broker {} is a slave: users and ACLs are changed on its master", state.broker_name),
        ));
    }
    let handled = auth_admin::handle(state.gate.users(), by, req);
    if handled.changed {
        persist(state).await?;
    }
    Ok(handled.response)
}

/// Whether `code` is answered by [`admin`].
pub fn is_admin_code(code: i32) -> bool {
    auth_admin::is_auth_admin(code) || code == code::SPATE_GET_AUTH_SNAPSHOT
}

/// The gate of a broker with these settings over these users.
pub fn gate(cfg: &BrokerConfig, users: Arc<AuthStore>) -> access::Gate {
    access::Gate::new(cfg.access.clone(), users, access::broker_rule, &cfg.broker_cluster_name)
}
