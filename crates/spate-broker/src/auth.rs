//! Authentication and authorization on the broker: the users and ACLs
//! (`<storePathRootDir>/config/auth.json`, owner-only), the first Super
//! users from `initAuthenticationUser` and
//! `innerClientAuthenticationCredentials`, the gate every request passes
//! (`spate_remoting::access`), and the user and ACL administration codes.
//! A slave's tables are its master's copy (`ha/metadata.rs`).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use spate_auth::file::AuthFile;
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
pub fn load(root: &Path, cfg: &BrokerConfig) -> Result<(Arc<AuthStore>, AuthFile), BrokerError> {
    let file = AuthFile::new(persist::config_path(root, AUTH_FILE));
    let firsts: Vec<_> =
        [&cfg.init_authentication_user, &cfg.inner_credentials].into_iter().flatten().cloned().collect();
    let (users, created) = file
        .open(&firsts)
        .map_err(|e| BrokerError::BadFile { path: file.path().display().to_string(), reason: e.to_string() })?;
    if !created.is_empty() {
        tracing::info!(users = ?created, "first Super users created from the configuration");
    }
    Ok((Arc::new(users), file))
}

/// Writes the tables (after a change).
pub async fn persist(state: &Arc<BrokerState>) -> Result<(), BrokerError> {
    let s = state.clone();
    tokio::task::spawn_blocking(move || s.auth_file.save(s.gate.users()))
        .await
        .map_err(|e| BrokerError::Config(format!("auth file task failed: {e}")))?
        .map_err(|e| BrokerError::Io { path: state.auth_file.path().display().to_string(), source: e })
}

/// Reads `auth.json` again when someone else changed it.
pub async fn reload_if_changed(state: &Arc<BrokerState>) {
    let s = state.clone();
    match tokio::task::spawn_blocking(move || s.auth_file.reload_if_changed(s.gate.users())).await {
        Ok(Ok(true)) => {
            tracing::info!(version = state.gate.users().version(), "auth.json changed: users and ACLs reloaded")
        }
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "auth.json changed but does not load; the tables in force are kept"),
        Err(e) => tracing::warn!(error = %e, "auth file task failed"),
    }
}

/// The gate's verdict on one request, counted and logged when it refuses.
pub fn check(state: &BrokerState, req: &RemotingCommand, source: IpAddr) -> Result<Option<Principal>, AuthFailure> {
    state.gate.check(req, source).inspect_err(|failure| state.gate.note_denied(failure, req.code, source))
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
    let handled = auth_admin::handle(state.gate.users(), by, state.gate.authentication_enabled(), req);
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
