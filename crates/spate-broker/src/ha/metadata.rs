//! A slave's copy of its master's metadata: every
//! `slaveSyncMetadataInterval` it fetches the topic table, the subscription
//! groups, the consumer offsets and the rate limits (GET_ALL_TOPIC_CONFIG,
//! GET_ALL_SUBSCRIPTIONGROUP_CONFIG, GET_ALL_CONSUMER_OFFSET,
//! SPATE_GET_LIMITS) and takes
//! them, so it can serve reads with the master's topics if the master goes
//! away. Topics and groups are replaced and offsets overwritten (upstream's
//! rule), only while the slave follows that master. A topic deleted on the
//! master leaves this slave's table and its queues (its records stay in
//! the commit log until retention, as on the master).

use std::sync::Arc;
use std::time::Duration;

use spate_remoting::protocol::{json, TopicConfigSerializeWrapper};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

use crate::subscriptions::SubscriptionGroupFile;
use crate::BrokerState;

/// Runs on a slave until the task is aborted.
pub async fn run(state: Arc<BrokerState>) {
    let client = RemotingClient::new(state.config.read().inner_client_config(), None);
    loop {
        let (interval, timeout) = {
            let c = state.config.read();
            (c.slave_sync_metadata_interval, c.register_broker_timeout)
        };
        // Only from a master this slave follows (one that refused it, e.g.
        // with an empty store, is not a source of truth).
        let following =
            state.slave.link().master_ha_addr.is_some() && state.config.read().broker_role == crate::BrokerRole::Slave;
        if let Some(master) = state.slave.master_addr_for_requests().filter(|_| following) {
            if let Err(e) = sync_once(&state, &client, &master, timeout).await {
                tracing::warn!(%master, error = %e, "copying metadata from the master failed");
            }
        }
        tokio::time::sleep(interval).await;
    }
}

async fn fetch(client: &RemotingClient, master: &str, code: i32, timeout: Duration) -> Result<bytes::Bytes, String> {
    let r = client.invoke(master, RemotingCommand::request(code), timeout).await.map_err(|e| e.to_string())?;
    if r.code != response::SUCCESS {
        return Err(format!("request {code} answered {}: {:?}", r.code, r.remark));
    }
    Ok(r.body)
}

/// One round: topics, groups, offsets.
pub async fn sync_once(
    state: &Arc<BrokerState>,
    client: &RemotingClient,
    master: &str,
    timeout: Duration,
) -> Result<(), String> {
    let body = fetch(client, master, request::GET_ALL_TOPIC_CONFIG, timeout).await?;
    let topics: TopicConfigSerializeWrapper =
        json::decode(&body, "TopicConfigSerializeWrapper").map_err(|e| e.to_string())?;
    let before = state.topics.snapshot().topic_config_table;
    let kept: std::collections::HashSet<String> = topics.topic_config_table.keys().cloned().collect();
    if state.topics.replace_from_master(topics) {
        tracing::info!(topics = state.topics.len(), "topic table copied from the master");
        state.topics.persist().await.map_err(|e| e.to_string())?;
        state.topics_changed();
        // A topic the master deleted (it was here and is gone) loses its
        // queues here too, as on the master: a promoted slave must not
        // serve it again (`controlled.rs` adopts topics its queues hold),
        // and a re-created topic starts its queues at 0 here as there.
        for topic in before.keys().filter(|t| !kept.contains(*t)) {
            if state.store.queue_ids(topic).is_empty() {
                continue;
            }
            let (store, name) = (state.store.clone(), topic.clone());
            match tokio::task::spawn_blocking(move || store.delete_topic(&name)).await {
                Ok(Ok(())) => tracing::info!(%topic, "topic deleted on the master: its queues here are gone too"),
                Ok(Err(e)) => tracing::warn!(%topic, error = %e, "could not delete the queues of a deleted topic"),
                Err(e) => tracing::warn!(%topic, error = %e, "queue deletion task failed"),
            }
        }
    }
    let body = fetch(client, master, request::GET_ALL_SUBSCRIPTIONGROUP_CONFIG, timeout).await?;
    let groups: SubscriptionGroupFile = json::decode(&body, "SubscriptionGroupWrapper").map_err(|e| e.to_string())?;
    if state.groups.replace_from_master(groups) {
        state.persist_groups_soon();
    }
    let body = fetch(client, master, request::GET_ALL_CONSUMER_OFFSET, timeout).await?;
    state.offsets.merge_from_master(&body).map_err(|e| e.to_string())?;
    let body = fetch(client, master, request::SPATE_GET_LIMITS, timeout).await?;
    let limits: crate::capacity::limits::LimitFile = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    if state.capacity.limits.replace_from_master(limits) {
        tracing::info!("rate limits copied from the master");
        state.capacity.limits.persist().await.map_err(|e| e.to_string())?;
    }
    copy_users(state, client, master, timeout).await
}

/// The master's users and ACLs, sealed with the inner credentials' secret
/// (the only way passwords leave a broker), taken when their version differs.
async fn copy_users(
    state: &Arc<BrokerState>,
    client: &RemotingClient,
    master: &str,
    timeout: Duration,
) -> Result<(), String> {
    let Some(inner) = state.config.read().inner_client_credentials().cloned() else { return Ok(()) };
    let req = RemotingCommand::request(spate_remoting::access::code::SPATE_GET_AUTH_SNAPSHOT);
    let r = client.invoke(master, req, timeout).await.map_err(|e| e.to_string())?;
    if r.code != response::SUCCESS {
        // A master with authentication off has no signed-in user to seal for.
        tracing::debug!(code = r.code, remark = ?r.remark, "the master sent no auth snapshot");
        return Ok(());
    }
    let version = r.field("version").and_then(|v| v.parse::<u64>().ok());
    if version == Some(state.gate.users().version()) {
        return Ok(());
    }
    state.gate.users().load_sealed(&inner.secret_key, &r.body).map_err(|e| format!("auth snapshot: {e}"))?;
    tracing::info!(version = ?version, "users and ACLs copied from the master");
    crate::auth::persist(state).await.map_err(|e| e.to_string())
}
