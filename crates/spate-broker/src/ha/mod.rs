//! Master/slave replication: a slave copies its master's commit log byte
//! for byte over a stream of its own (`protocol.rs`), after cutting any
//! tail the two logs do not share (`divergence.rs`). The master side
//! (`master.rs`) serves slaves on `haListenPort` and tracks what each has
//! acknowledged; the slave side (`slave.rs`) connects, truncates, appends
//! and acknowledges. A send on a `SYNC_MASTER` waits here
//! ([`Replication::wait_replicated`]) until enough slaves have its bytes.

pub mod controlled;
pub mod divergence;
pub mod master;
pub mod metadata;
pub mod protocol;
pub mod slave;
pub mod slave_auth;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

/// Why a replication link ended.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("replication I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] protocol::FrameError),
    #[error("replication peer silent for {0:?}")]
    Silent(Duration),
    #[error("replication protocol: {0}")]
    Protocol(String),
    #[error("master refused this slave: {0}")]
    Refused(String),
    /// A peer on `haListenPort` failed authentication (already counted and
    /// logged at a bounded rate).
    #[error("replication peer not authenticated: {0}")]
    Unauthenticated(slave_auth::SlaveAuthFailure),
    #[error("no random bytes for a replication nonce: {0}")]
    Random(#[from] rand::Error),
    #[error(transparent)]
    Store(#[from] spate_store::StoreError),
}

/// How a slave is being treated right now (visible in admin and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum SlaveMode {
    /// Behind by more than `haMaxGapNotInSync`: sends do not wait for it.
    Async,
    /// Within `haMaxGapNotInSync` but still catching up: a send waits until
    /// the slave has everything up to it, so the gap closes into sync.
    SemiSync,
    /// Caught up (behind by at most one transfer batch).
    Sync,
}

/// One connected slave, as its master sees it.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaveStatus {
    pub broker_id: i64,
    pub addr: String,
    /// Highest offset the slave has acknowledged (it holds everything below).
    pub acked_offset: u64,
    /// When that acknowledgement arrived.
    #[serde(skip)]
    pub acked_at: Instant,
    /// The last time the slave held everything the master had then: the
    /// lag in time is how long ago that was (zero while caught up).
    #[serde(skip)]
    pub caught_up_at: Instant,
    pub mode: SlaveMode,
}

impl SlaveStatus {
    /// How far behind a master whose log ends at `end` this slave is: in
    /// bytes, and in milliseconds since it last held everything (0 when
    /// caught up).
    pub fn lag(&self, end: u64, now: Instant) -> (u64, u64) {
        let bytes = end.saturating_sub(self.acked_offset);
        let ms = if bytes == 0 { 0 } else { now.saturating_duration_since(self.caught_up_at).as_millis() as u64 };
        (bytes, ms)
    }
}

/// Settings of the master side, from broker.conf.
#[derive(Debug, Clone)]
pub struct ReplicationPolicy {
    /// Slaves that must hold a message before a `SYNC_MASTER` acks it
    /// (`inSyncReplicas` minus the master itself).
    pub required_slave_acks: usize,
    /// `haMaxGapNotInSync`: a slave further behind than this is async.
    pub max_gap_not_in_sync: u64,
    /// `haTransferBatchSize`: a slave within one batch counts as in sync.
    pub transfer_batch_size: usize,
}

/// Why a send on a `SYNC_MASTER` was not replicated in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaWait {
    Replicated,
    /// Not enough slaves in (semi-)sync to wait for: SLAVE_NOT_AVAILABLE.
    NoSlave,
    /// They were there but did not acknowledge in time: FLUSH_SLAVE_TIMEOUT.
    Timeout,
    /// The master was fenced or demoted meanwhile: never acknowledged.
    RuleChanged,
}

/// The master's view of its slaves, shared by the HA sessions and the
/// send path.
pub struct Replication {
    policy: ReplicationPolicy,
    slaves: Mutex<BTreeMap<u64, SlaveStatus>>,
    /// The offset that `required_slave_acks` in-sync slaves all hold. Sends
    /// wait on it: one update releases every send at or below it at once.
    replicated: watch::Sender<u64>,
    /// New bytes were appended: sessions waiting for data wake.
    appended: Notify,
    next_session: std::sync::atomic::AtomicU64,
    /// Under a controller: the set-based acknowledgement rule (see [`AckSet`]).
    controlled: Mutex<Option<AckSet>>,
    /// Bumped whenever the acknowledgement rule changes hands (controlled
    /// mode starts or stops): a send that began waiting under one rule is
    /// never acknowledged under another (a fenced master's static rule
    /// could count a slave the group's in-sync set does not name).
    rule_generation: std::sync::atomic::AtomicU64,
}

/// A controlled master's acknowledgement rule (the protocol in
/// `spate_controller::fsm`): every send waits for every slave in `acking`.
/// A slave joins `acking` once it has caught up; it leaves only after the
/// controller's in-sync set no longer names it (`wants_out` asks for that),
/// so no write is acknowledged without a member of the durable set.
#[derive(Debug, Clone, Default)]
pub struct AckSet {
    pub acking: BTreeSet<i64>,
    pub wants_out: BTreeSet<i64>,
    /// Highest offset each slave (by broker id) has acknowledged, kept
    /// across its reconnections.
    pub acked: BTreeMap<i64, u64>,
    /// Slaves waited for since the master's end was at the given offset,
    /// not yet holding everything below it: reported as members only once
    /// they do (then they hold every acknowledged write).
    pub joining: BTreeMap<i64, u64>,
}

impl AckSet {
    /// The slaves reported to the controller as waited for.
    pub fn reported(&self) -> BTreeSet<i64> {
        self.acking.iter().copied().filter(|id| !self.joining.contains_key(id)).collect()
    }
}

/// A slave within this many transfer batches of a controlled master starts
/// being waited for (semi-sync): sends then wait until it has the rest.
pub const JOIN_MAX_LAG_BATCHES: u64 = 4;

impl Replication {
    pub fn new(policy: ReplicationPolicy) -> Replication {
        Replication {
            policy,
            slaves: Mutex::new(BTreeMap::new()),
            replicated: watch::channel(0).0,
            appended: Notify::new(),
            next_session: std::sync::atomic::AtomicU64::new(1),
            controlled: Mutex::new(None),
            rule_generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Becomes a controlled master whose durable in-sync set is `in_sync`:
    /// it waits for every other member from now on.
    pub fn start_controlled(&self, me: i64, in_sync: &BTreeSet<i64>) {
        let acking: BTreeSet<i64> = in_sync.iter().copied().filter(|id| *id != me).collect();
        self.rule_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.controlled.lock() = Some(AckSet { acking, ..AckSet::default() });
        self.recompute();
    }

    /// No longer a controlled master (demoted, fenced). Sends waiting for
    /// replication are not acknowledged (see `rule_generation`).
    pub fn stop_controlled(&self) {
        self.rule_generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *self.controlled.lock() = None;
        self.recompute();
    }

    /// Called with the controller's in-sync set each round: asks to drop
    /// members without a link, and stops waiting for slaves this master
    /// asked to drop once the set no longer names them.
    pub fn apply_in_sync(&self, in_sync: &BTreeSet<i64>) {
        let connected: BTreeSet<i64> = self.slaves.lock().values().map(|s| s.broker_id).collect();
        if let Some(c) = self.controlled.lock().as_mut() {
            // A member with no link is asked out (it cannot acknowledge).
            let absent: Vec<i64> = c.acking.iter().copied().filter(|id| !connected.contains(id)).collect();
            c.wants_out.extend(absent);
            let dropped: Vec<i64> = c.wants_out.iter().copied().filter(|id| !in_sync.contains(id)).collect();
            for id in dropped {
                c.acking.remove(&id);
                c.wants_out.remove(&id);
                c.joining.remove(&id);
            }
        }
        self.recompute();
    }

    /// A controlled master's acknowledgement rule, for its liveness report.
    pub fn ack_set(&self) -> Option<AckSet> {
        self.controlled.lock().clone()
    }

    pub fn policy(&self) -> &ReplicationPolicy {
        &self.policy
    }

    /// Called after every append on a master: wakes idle sessions.
    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    pub(crate) fn appended(&self) -> &Notify {
        &self.appended
    }

    /// A slave connected.
    pub(crate) fn add_slave(&self, broker_id: i64, addr: SocketAddr, start: u64, master_end: u64) -> u64 {
        let id = self.next_session.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let status = SlaveStatus {
            broker_id,
            addr: addr.to_string(),
            acked_offset: start,
            acked_at: Instant::now(),
            caught_up_at: Instant::now(),
            mode: self.mode_for(master_end.saturating_sub(start)),
        };
        {
            // One session per broker: a reconnecting slave's stale session
            // must not count twice towards the acknowledgements.
            let mut slaves = self.slaves.lock();
            slaves.retain(|_, s| s.broker_id != broker_id);
            slaves.insert(id, status);
        }
        self.recompute();
        id
    }

    pub(crate) fn remove_slave(&self, session: u64) {
        let gone = self.slaves.lock().remove(&session);
        if let (Some(gone), Some(c)) = (gone, self.controlled.lock().as_mut()) {
            if c.acking.contains(&gone.broker_id) {
                c.wants_out.insert(gone.broker_id);
            }
        }
        self.recompute();
    }

    /// A slave acknowledged `offset` while the master's log ended at `master_end`.
    pub(crate) fn ack(&self, session: u64, offset: u64, master_end: u64) {
        let mode = self.mode_for(master_end.saturating_sub(offset));
        let mut who = None;
        if let Some(s) = self.slaves.lock().get_mut(&session) {
            s.acked_offset = s.acked_offset.max(offset);
            s.acked_at = Instant::now();
            if s.acked_offset >= master_end {
                s.caught_up_at = s.acked_at;
            }
            s.mode = mode;
            who = Some((s.broker_id, s.acked_offset));
        }
        if let (Some((id, acked)), Some(c)) = (who, self.controlled.lock().as_mut()) {
            let e = c.acked.entry(id).or_insert(0);
            *e = (*e).max(acked);
            let lag = master_end.saturating_sub(acked);
            if c.wants_out.contains(&id) {
                // Waiting for the controller to drop it.
            } else if c.acking.contains(&id) {
                if c.joining.get(&id).is_some_and(|from| acked >= *from) {
                    c.joining.remove(&id); // holds every acknowledged write now
                }
                if mode == SlaveMode::Async {
                    c.wants_out.insert(id); // fell too far behind: ask to drop it
                }
            } else if lag <= self.policy.transfer_batch_size as u64 * JOIN_MAX_LAG_BATCHES {
                // Semi-sync: waited for from now on; a member once it has the rest.
                c.acking.insert(id);
                if lag > 0 {
                    c.joining.insert(id, master_end);
                }
            }
        }
        self.recompute();
    }

    fn mode_for(&self, lag: u64) -> SlaveMode {
        if lag > self.policy.max_gap_not_in_sync {
            SlaveMode::Async
        } else if lag > self.policy.transfer_batch_size as u64 {
            SlaveMode::SemiSync
        } else {
            SlaveMode::Sync
        }
    }

    /// The offset held by the required number of (semi-)sync slaves.
    fn recompute(&self) {
        if let Some(c) = self.controlled.lock().as_ref() {
            // Every member of the acking set must hold it; none: nothing to wait for.
            let held = c.acking.iter().map(|id| c.acked.get(id).copied().unwrap_or(0)).min().unwrap_or(u64::MAX);
            self.replicated.send_if_modified(|v| {
                let changed = *v != held;
                *v = held;
                changed
            });
            return;
        }
        let k = self.policy.required_slave_acks.max(1);
        let mut acked: Vec<u64> = {
            let slaves = self.slaves.lock();
            slaves.values().filter(|s| s.mode != SlaveMode::Async).map(|s| s.acked_offset).collect()
        };
        acked.sort_unstable_by(|a, b| b.cmp(a));
        let held = acked.get(k - 1).copied().unwrap_or(0);
        self.replicated.send_if_modified(|v| {
            let changed = *v != held;
            *v = held;
            changed
        });
    }

    /// Under the controller, the end of what every member of the acking set
    /// holds (upstream's *confirm offset*): consumers are served only below
    /// it, so nobody reads a message that a failover could still cut.
    /// `None` outside the controller (static roles serve everything, as
    /// upstream) and when no slave is waited for.
    pub fn confirm_offset(&self) -> Option<u64> {
        self.controlled_confirm().filter(|held| *held != u64::MAX)
    }

    /// The controlled rule's watermark (`u64::MAX` with no slave to wait
    /// for); `None` when this master is not controlled.
    pub fn controlled_confirm(&self) -> Option<u64> {
        self.controlled.lock().as_ref()?;
        Some(*self.replicated.borrow())
    }

    /// A receiver that changes whenever the confirm offset (the replication
    /// watermark) moves: held pulls wait on it.
    pub fn watch_confirm(&self) -> watch::Receiver<u64> {
        self.replicated.subscribe()
    }

    /// Slaves that count for a `SYNC_MASTER` send right now.
    pub fn in_sync_slaves(&self) -> usize {
        self.slaves.lock().values().filter(|s| s.mode != SlaveMode::Async).count()
    }

    /// Whether a send could be replicated now: enough slaves in (semi-)sync.
    pub fn enough_slaves(&self) -> bool {
        // A controlled master waits for its acking set, whatever its size.
        self.controlled.lock().is_some() || self.in_sync_slaves() >= self.policy.required_slave_acks.max(1)
    }

    /// Waits until the required slaves hold everything below `end`.
    pub async fn wait_replicated(&self, end: u64, timeout: Duration) -> ReplicaWait {
        let generation = self.rule_generation.load(std::sync::atomic::Ordering::SeqCst);
        if !self.enough_slaves() {
            return ReplicaWait::NoSlave;
        }
        let mut rx = self.replicated.subscribe();
        let reached = tokio::time::timeout(timeout, rx.wait_for(|held| *held >= end)).await.map(|r| r.is_ok());
        if self.rule_generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return ReplicaWait::RuleChanged;
        }
        match reached {
            Ok(true) => ReplicaWait::Replicated,
            Ok(false) => ReplicaWait::NoSlave,
            Err(_) if !self.enough_slaves() => ReplicaWait::NoSlave,
            Err(_) => ReplicaWait::Timeout,
        }
    }

    /// Every connected slave.
    pub fn slaves(&self) -> Vec<SlaveStatus> {
        self.slaves.lock().values().cloned().collect()
    }

    /// The offset the required slaves hold.
    pub fn replicated_offset(&self) -> u64 {
        *self.replicated.borrow()
    }
}

/// GET_BROKER_HA_STATUS's body: this broker's replication as JSON (role,
/// log end, epochs; a master's slaves with their lag and mode; a slave's
/// link to its master).
pub fn status_json(state: &crate::BrokerState) -> serde_json::Value {
    let (role, name, id) = {
        let c = state.config.read();
        (c.broker_role, c.broker_name.clone(), c.broker_id)
    };
    let end = state.store.max_offset();
    let epochs: Vec<serde_json::Value> = state
        .store
        .epochs()
        .iter()
        .map(|e| serde_json::json!({"epoch": e.epoch, "startOffset": e.start_offset}))
        .collect();
    let now = Instant::now();
    let mut v = serde_json::json!({
        "brokerName": name,
        "brokerId": id,
        "role": format!("{role:?}"),
        "maxOffset": end,
        "epochs": epochs,
    });
    if role == crate::BrokerRole::Slave {
        let link = state.slave.link();
        let lag = link.master_max_offset.saturating_sub(end);
        v["link"] = serde_json::json!({
            "masterHaAddr": link.master_ha_addr,
            "connected": link.master_ha_addr.is_some(),
            "masterMaxOffset": link.master_max_offset,
            "lagBytes": lag,
            "lastHeardMsAgo": link.last_heard.map(|t| now.saturating_duration_since(t).as_millis() as u64),
            "lastError": link.last_error,
        });
    } else {
        let slaves: Vec<serde_json::Value> = state
            .replication
            .slaves()
            .iter()
            .map(|s| {
                let (lag_bytes, lag_ms) = s.lag(end, now);
                serde_json::json!({
                    "brokerId": s.broker_id,
                    "addr": s.addr,
                    "ackedOffset": s.acked_offset,
                    "lagBytes": lag_bytes,
                    "lagMs": lag_ms,
                    "mode": s.mode,
                })
            })
            .collect();
        v["slaves"] = serde_json::json!(slaves);
        v["replicatedOffset"] = serde_json::json!(state.replication.replicated_offset());
        v["inSyncSlaves"] = serde_json::json!(state.replication.in_sync_slaves());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(k: usize) -> ReplicationPolicy {
        ReplicationPolicy { required_slave_acks: k, max_gap_not_in_sync: 1000, transfer_batch_size: 100 }
    }

    #[tokio::test]
    async fn sends_wait_for_the_kth_slave_and_are_released_together() {
        let r = std::sync::Arc::new(Replication::new(policy(2)));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(r.wait_replicated(10, Duration::from_millis(10)).await, ReplicaWait::NoSlave);
        let s1 = r.add_slave(1, a, 0, 0);
        let s2 = r.add_slave(2, a, 0, 0);
        let waiters: Vec<_> = (1..=5u64)
            .map(|i| {
                let r = r.clone();
                tokio::spawn(async move { r.wait_replicated(i * 100, Duration::from_secs(5)).await })
            })
            .collect();
        r.ack(s1, 500, 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()), "one slave of two is not enough");
        r.ack(s2, 300, 500);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let done: Vec<bool> = waiters.iter().map(|w| w.is_finished()).collect();
        assert_eq!(done, [true, true, true, false, false]);
        r.ack(s2, 500, 500);
        for w in waiters {
            assert_eq!(w.await.unwrap(), ReplicaWait::Replicated);
        }
        assert_eq!(r.wait_replicated(600, Duration::from_millis(20)).await, ReplicaWait::Timeout);
        r.remove_slave(s1);
        assert_eq!(r.wait_replicated(600, Duration::from_millis(20)).await, ReplicaWait::NoSlave);
    }

    #[tokio::test]
    async fn a_controlled_master_waits_for_its_whole_set_and_drops_members_only_with_the_controller() {
        let r = Replication::new(policy(1));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        // Resuming with {0, 1} in sync: slave 1 is waited for before it even connects.
        r.start_controlled(0, &BTreeSet::from([0, 1]));
        assert_eq!(r.wait_replicated(10, Duration::from_millis(20)).await, ReplicaWait::Timeout);
        let s1 = r.add_slave(1, a, 0, 10);
        r.ack(s1, 10, 10);
        assert_eq!(r.wait_replicated(10, Duration::from_millis(20)).await, ReplicaWait::Replicated);
        // Slave 2 comes within reach: waited for at once, reported once it has the rest.
        let s2 = r.add_slave(2, a, 0, 50);
        r.ack(s2, 45, 50);
        let set = r.ack_set().unwrap();
        assert!(set.acking.contains(&2) && !set.reported().contains(&2), "{set:?}");
        r.ack(s1, 50, 50);
        assert_eq!(
            r.wait_replicated(50, Duration::from_millis(20)).await,
            ReplicaWait::Timeout,
            "slave 2 lacks 45..50"
        );
        r.ack(s2, 50, 50);
        assert_eq!(r.wait_replicated(50, Duration::from_millis(20)).await, ReplicaWait::Replicated);
        assert!(r.ack_set().unwrap().reported().contains(&2));
        // Slave 1's link drops: still waited for until the controller's set drops it.
        r.remove_slave(s1);
        assert_eq!(r.wait_replicated(60, Duration::from_millis(20)).await, ReplicaWait::Timeout);
        r.apply_in_sync(&BTreeSet::from([0, 1, 2]));
        assert!(r.ack_set().unwrap().acking.contains(&1), "the set still names it");
        r.apply_in_sync(&BTreeSet::from([0, 2]));
        assert_eq!(r.ack_set().unwrap().acking, BTreeSet::from([2]));
        r.ack(s2, 60, 60);
        assert_eq!(r.wait_replicated(60, Duration::from_millis(20)).await, ReplicaWait::Replicated);
    }

    #[test]
    fn modes_follow_the_lag() {
        let r = Replication::new(policy(1));
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let s = r.add_slave(1, a, 0, 5000);
        assert_eq!(r.slaves()[0].mode, SlaveMode::Async);
        assert!(!r.enough_slaves());
        r.ack(s, 4500, 5000);
        assert_eq!(r.slaves()[0].mode, SlaveMode::SemiSync);
        assert!(r.enough_slaves());
        r.ack(s, 4950, 5000);
        assert_eq!(r.slaves()[0].mode, SlaveMode::Sync);
        assert_eq!(r.replicated_offset(), 4950);
    }
}
