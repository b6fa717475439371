//! Who is connected: producer and consumer groups from HEART_BEAT, their
//! connections (so the broker can call them), and the queue locks of
//! orderly consumers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use spate_remoting::protocol::{ClientConnection, ConsumerData, MessageQueue, SubscriptionData};
use spate_remoting::Connection;

/// One client process in a group.
#[derive(Clone)]
pub struct ClientChannel {
    pub client_id: String,
    pub conn: Arc<Connection>,
    pub language: String,
    pub version: i32,
    pub last_update: Instant,
}

/// A consumer group as its members last described it.
#[derive(Clone, Default)]
pub struct ConsumerGroup {
    pub consume_type: String,
    pub message_model: String,
    pub consume_from_where: String,
    pub subscriptions: BTreeMap<String, SubscriptionData>,
    pub channels: BTreeMap<String, ClientChannel>,
}

impl ClientChannel {
    /// As admin lists a group's connections.
    pub fn connection(&self) -> ClientConnection {
        ClientConnection {
            client_id: self.client_id.clone(),
            client_addr: self.conn.peer_addr().to_string(),
            language: self.language.clone(),
            version: self.version,
            protocol: "remoting".into(),
            client_version: String::new(),
        }
    }
}

impl ConsumerGroup {
    pub fn connections(&self) -> Vec<ClientConnection> {
        self.channels.values().map(ClientChannel::connection).collect()
    }
}

/// Most clients one group may have on one broker.
pub const MAX_CLIENTS_PER_GROUP: usize = 10_000;
/// Most consumer (and, separately, producer) groups one broker tracks.
pub const MAX_GROUPS: usize = 100_000;

/// Consumer and producer groups.
#[derive(Default)]
pub struct Clients {
    consumers: Mutex<HashMap<String, ConsumerGroup>>,
    producers: Mutex<HashMap<String, BTreeMap<String, ClientChannel>>>,
    /// The client id each connection gave in its heartbeats (rate limits
    /// per client); bounded by the server's connection limit.
    ids: Mutex<HashMap<u64, String>>,
}

impl Clients {
    /// Records a consumer's heartbeat. Returns true when the group's member
    /// list changed (the members must be told to rebalance).
    pub fn register_consumer(&self, channel: ClientChannel, data: &ConsumerData) -> bool {
        let mut groups = self.consumers.lock();
        if !groups.contains_key(&data.group_name) && groups.len() >= MAX_GROUPS {
            tracing::warn!(group = %data.group_name, "too many consumer groups; heartbeat ignored");
            return false;
        }
        let g = groups.entry(data.group_name.clone()).or_default();
        g.consume_type = data.consume_type.clone();
        g.message_model = data.message_model.clone();
        g.consume_from_where = data.consume_from_where.clone();
        for sub in &data.subscription_data_set {
            g.subscriptions.insert(sub.topic.clone(), sub.clone());
        }
        let known = g.channels.get(&channel.client_id).map(|c| c.conn.id());
        if known.is_none() && g.channels.len() >= MAX_CLIENTS_PER_GROUP {
            tracing::warn!(group = %data.group_name, "consumer group full; heartbeat ignored");
            return false;
        }
        let changed = known != Some(channel.conn.id());
        g.channels.insert(channel.client_id.clone(), channel);
        changed && known.is_none()
    }

    pub fn register_producer(&self, group: &str, channel: ClientChannel) {
        let mut p = self.producers.lock();
        if !p.contains_key(group) && p.len() >= MAX_GROUPS {
            return;
        }
        let members = p.entry(group.to_string()).or_default();
        if members.len() < MAX_CLIENTS_PER_GROUP || members.contains_key(&channel.client_id) {
            members.insert(channel.client_id.clone(), channel);
        }
    }

    /// Removes a consumer; true when it was a member.
    pub fn unregister_consumer(&self, group: &str, client_id: &str) -> bool {
        let mut groups = self.consumers.lock();
        let Some(g) = groups.get_mut(group) else { return false };
        let removed = g.channels.remove(client_id).is_some();
        if g.channels.is_empty() {
            groups.remove(group);
        }
        removed
    }

    /// The producers of `group` (admin).
    pub fn producer_connections(&self, group: &str) -> Vec<ClientConnection> {
        let p = self.producers.lock();
        p.get(group).into_iter().flat_map(BTreeMap::values).map(ClientChannel::connection).collect()
    }

    /// A live connection of one producer of `group` (for transaction checks).
    pub fn producer_connection(&self, group: &str) -> Option<Arc<Connection>> {
        let p = self.producers.lock();
        p.get(group)?.values().map(|c| c.conn.clone()).find(|c| !c.is_closed())
    }

    pub fn unregister_producer(&self, group: &str, client_id: &str) {
        let mut p = self.producers.lock();
        if let Some(m) = p.get_mut(group) {
            m.remove(client_id);
            if m.is_empty() {
                p.remove(group);
            }
        }
    }

    /// Drops every client on a closed connection; returns consumer groups that changed.
    pub fn connection_closed(&self, connection_id: u64) -> Vec<String> {
        self.ids.lock().remove(&connection_id);
        self.remove_where(|c| c.conn.id() == connection_id)
    }

    /// Records the client id a connection's heartbeat gave.
    pub fn note_client_id(&self, conn: &Connection, client_id: &str) {
        if conn.is_closed() {
            return;
        }
        let mut ids = self.ids.lock();
        if ids.get(&conn.id()).map(String::as_str) != Some(client_id) {
            ids.insert(conn.id(), client_id.to_string());
        }
    }

    /// The client id a connection gave in its heartbeats, or its IP before
    /// any (what a per-client rate limit names).
    pub fn client_id_of(&self, conn: &Connection) -> String {
        match self.ids.lock().get(&conn.id()) {
            Some(id) => id.clone(),
            None => conn.peer_addr().ip().to_string(),
        }
    }

    /// Drops clients silent for longer than `timeout`; returns consumer groups that changed.
    pub fn expire(&self, now: Instant, timeout: Duration) -> Vec<String> {
        self.remove_where(|c| now.saturating_duration_since(c.last_update) > timeout || c.conn.is_closed())
    }

    fn remove_where(&self, dead: impl Fn(&ClientChannel) -> bool) -> Vec<String> {
        let mut changed = Vec::new();
        {
            let mut groups = self.consumers.lock();
            for (name, g) in groups.iter_mut() {
                let before = g.channels.len();
                g.channels.retain(|_, c| !dead(c));
                if g.channels.len() != before {
                    changed.push(name.clone());
                }
            }
            groups.retain(|_, g| !g.channels.is_empty());
        }
        let mut producers = self.producers.lock();
        for members in producers.values_mut() {
            members.retain(|_, c| !dead(c));
        }
        producers.retain(|_, m| !m.is_empty());
        changed
    }

    pub fn consumer_group(&self, group: &str) -> Option<ConsumerGroup> {
        self.consumers.lock().get(group).cloned()
    }

    /// Client ids of a group, sorted.
    pub fn consumer_ids(&self, group: &str) -> Vec<String> {
        self.consumers.lock().get(group).map(|g| g.channels.keys().cloned().collect()).unwrap_or_default()
    }

    /// Connections of a group's members, to notify them.
    pub fn consumer_connections(&self, group: &str) -> Vec<Arc<Connection>> {
        self.consumers
            .lock()
            .get(group)
            .map(|g| g.channels.values().map(|c| c.conn.clone()).collect())
            .unwrap_or_default()
    }

    pub fn subscription(&self, group: &str, topic: &str) -> Option<SubscriptionData> {
        self.consumers.lock().get(group).and_then(|g| g.subscriptions.get(topic).cloned())
    }

    pub fn consumer_group_count(&self) -> usize {
        self.consumers.lock().len()
    }
}

/// How long a queue lock lives without renewal (`rebalance.lockMaxLiveTime`, 60 s).
pub const LOCK_MAX_LIVE_TIME: Duration = Duration::from_secs(60);

/// A group's locks: queue -> (holding client, last renewal).
type GroupLocks = HashMap<MessageQueue, (String, Instant)>;

/// Queue locks of orderly consumers: one client per queue per group.
#[derive(Default)]
pub struct QueueLocks {
    locks: Mutex<HashMap<String, GroupLocks>>,
}

impl QueueLocks {
    /// Locks what is free, expired or already ours; returns what the client now holds.
    pub fn lock(
        &self,
        group: &str,
        client_id: &str,
        mqs: &BTreeSet<MessageQueue>,
        now: Instant,
    ) -> BTreeSet<MessageQueue> {
        let mut all = self.locks.lock();
        if !all.contains_key(group) && all.len() >= MAX_GROUPS {
            return BTreeSet::new();
        }
        let table = all.entry(group.to_string()).or_default();
        // Expired locks of the group go first, so the table cannot only grow.
        table.retain(|_, (_, at)| now.saturating_duration_since(*at) <= LOCK_MAX_LIVE_TIME);
        let mut held = BTreeSet::new();
        for mq in mqs {
            let free = match table.get(mq) {
                None => true,
                Some((owner, at)) => owner == client_id || now.saturating_duration_since(*at) > LOCK_MAX_LIVE_TIME,
            };
            if free {
                table.insert(mq.clone(), (client_id.to_string(), now));
                held.insert(mq.clone());
            }
        }
        held
    }

    /// Releases the client's locks on `mqs`.
    pub fn unlock(&self, group: &str, client_id: &str, mqs: &BTreeSet<MessageQueue>) {
        let mut all = self.locks.lock();
        if let Some(table) = all.get_mut(group) {
            for mq in mqs {
                if table.get(mq).is_some_and(|(owner, _)| owner == client_id) {
                    table.remove(mq);
                }
            }
            if table.is_empty() {
                all.remove(group);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_exclusive_until_released_or_expired() {
        let l = QueueLocks::default();
        let t0 = Instant::now();
        let mqs: BTreeSet<_> = (0..2).map(|i| MessageQueue::new("T", "b", i)).collect();
        assert_eq!(l.lock("g", "c1", &mqs, t0).len(), 2);
        assert!(l.lock("g", "c2", &mqs, t0).is_empty());
        assert_eq!(l.lock("other", "c2", &mqs, t0).len(), 2, "groups lock independently");
        let one: BTreeSet<_> = mqs.iter().take(1).cloned().collect();
        l.unlock("g", "c1", &one);
        assert_eq!(l.lock("g", "c2", &mqs, t0).len(), 1);
        assert_eq!(l.lock("g", "c2", &mqs, t0 + LOCK_MAX_LIVE_TIME + Duration::from_secs(1)).len(), 2);
    }
}
