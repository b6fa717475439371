//! Registration with every name server: at start, every
//! `registerNameServerPeriod`, and at once when the topic table changes.

use std::sync::Arc;
use std::time::Duration;

use spate_remoting::protocol::{perm, RegisterBrokerBody};
use spate_remoting::{request, response, RemotingClient, RemotingCommand};

use crate::BrokerState;

/// Shortest gap between two registrations triggered by topic changes, so a
/// burst of topic creations costs one registration.
const CHANGE_DEBOUNCE: Duration = Duration::from_millis(20);

pub fn spawn(state: Arc<BrokerState>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = RemotingClient::new(state.config.read().inner_client_config(), None);
        loop {
            register_all(&state, &client).await;
            let period = state.config.read().register_name_server_period;
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = state.topic_change.notified() => tokio::time::sleep(CHANGE_DEBOUNCE).await,
            }
        }
    })
}

fn registration(state: &BrokerState) -> RemotingCommand {
    let cfg = state.config.read();
    let mut topics = state.topics.snapshot();
    for tc in topics.topic_config_table.values_mut() {
        tc.perm = advertised_perm(tc.perm, cfg.broker_permission);
    }
    let body = RegisterBrokerBody { topic_config_serialize_wrapper: topics, filter_server_list: Vec::new() };
    RemotingCommand::request(request::REGISTER_BROKER)
        .with("brokerAddr", state.broker_addr)
        .with("brokerName", &cfg.broker_name)
        .with("clusterName", &cfg.broker_cluster_name)
        .with("brokerId", cfg.broker_id)
        .with("haServerAddr", format!("{}:{}", cfg.broker_ip1, cfg.ha_port()))
        .with("compressed", false)
        .with_body(serde_json::to_vec(&body).unwrap_or_default())
}

/// The perm a topic is registered with. As upstream does, a broker that is
/// not both readable and writable masks every topic's perm with its
/// `brokerPermission`, so routes show a read-only broker as read-only and
/// producers stop choosing its queues; a full-permission broker sends each
/// topic's own bits (PRIORITY and INHERIT included) unchanged.
fn advertised_perm(topic_perm: i32, broker_permission: i32) -> i32 {
    if perm::readable(broker_permission) && perm::writeable(broker_permission) {
        topic_perm
    } else {
        topic_perm & broker_permission
    }
}

async fn register_all(state: &Arc<BrokerState>, client: &RemotingClient) {
    let (addrs, timeout) = {
        let cfg = state.config.read();
        (cfg.namesrv_addr.clone(), cfg.register_broker_timeout)
    };
    // Read before the snapshot: every change counted so far is in it.
    let seq = state.change_seq.load(std::sync::atomic::Ordering::Acquire);
    let req = registration(state);
    let calls = addrs.iter().map(|addr| {
        let req = req.clone();
        async move { (addr, client.invoke(addr, req, timeout).await) }
    });
    for (addr, result) in futures_util::future::join_all(calls).await {
        match result {
            Ok(r) if r.code == response::SUCCESS => {
                // A slave learns its master's replication address here.
                state.slave.learn_master(
                    r.field("haServerAddr").map(str::to_string),
                    r.field("masterAddr").map(str::to_string),
                );
                state.registered.send_replace(true);
            }
            Ok(r) => tracing::warn!(namesrv = %addr, code = r.code, remark = ?r.remark, "registration refused"),
            Err(e) => tracing::warn!(namesrv = %addr, error = %e, "registration failed"),
        }
    }
    state.registered_change.send_if_modified(|done| {
        let newer = seq > *done;
        *done = (*done).max(seq);
        newer
    });
}

/// Tells every name server this broker is leaving (clean shutdown).
pub async fn unregister_all(state: &BrokerState) {
    let client = RemotingClient::new(state.config.read().inner_client_config(), None);
    let (addrs, req) = {
        let cfg = state.config.read();
        let req = RemotingCommand::request(request::UNREGISTER_BROKER)
            .with("brokerAddr", state.broker_addr)
            .with("brokerName", &cfg.broker_name)
            .with("clusterName", &cfg.broker_cluster_name)
            .with("brokerId", cfg.broker_id);
        (cfg.namesrv_addr.clone(), req)
    };
    for addr in addrs {
        if let Err(e) = client.invoke(&addr, req.clone(), Duration::from_secs(1)).await {
            tracing::debug!(namesrv = %addr, error = %e, "unregister failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_permission_masks_each_topic_perm_unless_read_write() {
        let rw = perm::READ | perm::WRITE;
        assert_eq!(advertised_perm(rw, perm::READ), perm::READ);
        assert_eq!(advertised_perm(rw, perm::WRITE), perm::WRITE);
        assert_eq!(advertised_perm(perm::READ, perm::WRITE), 0);
        assert_eq!(advertised_perm(rw | perm::PRIORITY, rw), rw | perm::PRIORITY);
        assert_eq!(advertised_perm(perm::READ, rw), perm::READ, "a read-only topic stays read-only");
    }
}
