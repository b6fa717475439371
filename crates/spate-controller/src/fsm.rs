//! The replica group's state machine: what the controller decides, given
//! what it observes. Pure: no I/O, no clock, so it is tested over random
//! event sequences (`tests` below) and every controller runs the same
//! decision.
//!
//! What ZooKeeper holds per group (the *durable* state, one persistent node,
//! written only with a version check): the master's broker id and epoch,
//! the replication state, and the **in-sync set** (the master and the
//! slaves known to hold every acknowledged message) with its own epoch.
//! What each broker reports (its *ephemeral* node, gone with its session):
//! its log end and last epoch; a master adds which slaves it currently
//! waits for before acknowledging (`acking`), which it wants out of the
//! in-sync set (`wants_out`), and each slave's lag.
//!
//! The in-sync set only ever names brokers that hold every acknowledged
//! message, because it changes in step with the master:
//! - **a slave joins** only when the master reports it in `acking`: the
//!   master put it there once it had caught up, and waits for it for every
//!   later write;
//! - **a slave leaves** when the master asks (`wants_out`) or is dead; the
//!   master keeps waiting for it until it sees the new set in ZooKeeper, so
//!   no write is acknowledged without it meanwhile (sends stall for that
//!   moment instead).
//!
//! - **a broker taking or resuming the master role** (after an election,
//!   a restart or a lost session) waits for every other member of the
//!   durable in-sync set until the set says otherwise.
//!
//! So promoting any live member of the in-sync set loses nothing. A master
//! that dies with no live in-sync slave is not replaced unless
//! `unclean_election` allows it (then data may be lost, as upstream).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The design's replication states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReplState {
    /// Only the master: it writes alone.
    SingleMaster,
    /// A slave is alive but far behind: replication is asynchronous.
    Async,
    /// A slave is nearly caught up: the master holds acks until it has the rest.
    SemiSync,
    /// At least one slave is in the in-sync set: every ack is on it too.
    Sync,
}

/// The durable state of one replica group (its persistent node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupState {
    /// The master's broker id; `None` while the group has none.
    pub master: Option<i64>,
    /// Bumped at every election; a broker that sees a higher one stops
    /// acting as master (fencing).
    pub master_epoch: u32,
    pub state: ReplState,
    /// The master and the slaves holding every acknowledged message.
    pub in_sync: BTreeSet<i64>,
    /// Bumped at every change of `in_sync`.
    pub sync_epoch: u32,
}

impl GroupState {
    /// A group nobody has led yet.
    pub fn new() -> GroupState {
        GroupState {
            master: None,
            master_epoch: 0,
            state: ReplState::SingleMaster,
            in_sync: BTreeSet::new(),
            sync_epoch: 0,
        }
    }
}

impl Default for GroupState {
    fn default() -> Self {
        GroupState::new()
    }
}

/// What a live broker reports (its ephemeral node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Liveness {
    pub broker_id: i64,
    pub addr: String,
    /// `brokerClusterName` (the controller unregisters a dead broker from
    /// the name servers under it).
    #[serde(default)]
    pub cluster: String,
    /// The role it acts in now: `MASTER`, `SLAVE` or `FENCED`.
    #[serde(default)]
    pub role: String,
    /// Where it serves slaves when master (`haListenPort`).
    #[serde(default)]
    pub ha_addr: String,
    /// End of its commit log.
    pub max_offset: u64,
    /// The last epoch in its log.
    pub epoch: u32,
    /// As master: the slaves it waits for before acknowledging.
    #[serde(default)]
    pub acking: BTreeSet<i64>,
    /// As master: slaves it wants out of the in-sync set (dead or too slow).
    #[serde(default)]
    pub wants_out: BTreeSet<i64>,
    /// As master: each connected slave's lag in bytes.
    #[serde(default)]
    pub slave_lag: BTreeMap<i64, u64>,
    /// When ZooKeeper last saw this node updated (ms since the epoch; filled
    /// in when read, not stored): the broker's last sign of life.
    #[serde(skip)]
    pub updated_ms: u64,
}

/// The controller's settings for every group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// A slave within this many bytes is semi-sync (`haMaxGapNotInSync`).
    pub semi_sync_max_lag: u64,
    /// Elect a live broker outside the in-sync set when no member is alive
    /// (`enableUncleanMasterElection` upstream): may lose acknowledged data.
    pub unclean_election: bool,
}

/// Why the durable state changes (recorded as the outage cause and logged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Change {
    /// A broker became master (first start, or failover).
    Elected { broker_id: i64, epoch: u32, previous: Option<i64>, unclean: bool },
    /// The master is gone and no eligible broker is alive.
    Leaderless { previous: Option<i64> },
    /// The in-sync set or the replication state changed.
    Membership { in_sync: BTreeSet<i64>, state: ReplState },
}

/// The decision for one group: the state to write (conditionally on the
/// version read) and why, or nothing to do.
pub fn decide(current: &GroupState, live: &BTreeMap<i64, Liveness>, policy: &Policy) -> Option<(GroupState, Change)> {
    let master_alive = current.master.is_some_and(|m| live.contains_key(&m));
    if !master_alive {
        return elect(current, live, policy);
    }
    let master = current.master?;
    let report = live.get(&master)?;
    // Membership: leave on the master's request or death; join only from
    // the master's acking set.
    let mut in_sync: BTreeSet<i64> = current
        .in_sync
        .iter()
        .copied()
        .filter(|id| *id == master || (live.contains_key(id) && !report.wants_out.contains(id)))
        .collect();
    in_sync.insert(master);
    for id in &report.acking {
        if live.contains_key(id) && !report.wants_out.contains(id) && *id != master {
            in_sync.insert(*id);
        }
    }
    let slaves_alive = live.keys().any(|id| *id != master);
    let near = report
        .slave_lag
        .iter()
        .any(|(id, lag)| live.contains_key(id) && *id != master && *lag <= policy.semi_sync_max_lag);
    let state = if in_sync.len() > 1 {
        ReplState::Sync
    } else if near {
        ReplState::SemiSync
    } else if slaves_alive {
        ReplState::Async
    } else {
        ReplState::SingleMaster
    };
    if in_sync == current.in_sync && state == current.state {
        return None;
    }
    let sync_epoch = if in_sync == current.in_sync { current.sync_epoch } else { current.sync_epoch + 1 };
    let next = GroupState { in_sync: in_sync.clone(), state, sync_epoch, ..current.clone() };
    Some((next, Change::Membership { in_sync, state }))
}

/// The master is gone (or there never was one): pick the most caught-up
/// live in-sync member (highest epoch, then log end, then lowest id), or a
/// live outsider when unclean election is allowed, or nobody.
fn elect(current: &GroupState, live: &BTreeMap<i64, Liveness>, policy: &Policy) -> Option<(GroupState, Change)> {
    let best = |ids: &mut dyn Iterator<Item = &Liveness>| {
        ids.max_by(|a, b| (a.epoch, a.max_offset, -a.broker_id).cmp(&(b.epoch, b.max_offset, -b.broker_id)))
            .map(|l| l.broker_id)
    };
    // A group never led: every live broker is eligible (nothing acknowledged yet).
    let first_election = current.master.is_none() && current.master_epoch == 0;
    let clean = if first_election {
        best(&mut live.values())
    } else {
        best(&mut live.values().filter(|l| current.in_sync.contains(&l.broker_id)))
    };
    let (chosen, unclean) = match clean {
        Some(id) => (id, false),
        None if policy.unclean_election => match best(&mut live.values()) {
            Some(id) => (id, true),
            None => return leaderless(current),
        },
        None => return leaderless(current),
    };
    // Above every epoch any live broker has written in, so the new
    // master's epoch is new to every log (brokers may carry epochs from
    // before this controller, e.g. from static roles).
    let epoch = live.values().map(|l| l.epoch).max().unwrap_or(0).max(current.master_epoch) + 1;
    let next = GroupState {
        master: Some(chosen),
        master_epoch: epoch,
        state: ReplState::SingleMaster,
        in_sync: BTreeSet::from([chosen]),
        sync_epoch: current.sync_epoch + 1,
    };
    Some((next, Change::Elected { broker_id: chosen, epoch, previous: current.master, unclean }))
}

/// An operator's election of `broker_id`: allowed only for a live member
/// of the in-sync set (it holds every acknowledged message). Returns the
/// new state, or why not.
pub fn elect_by_hand(
    current: &GroupState,
    live: &BTreeMap<i64, Liveness>,
    broker_id: i64,
) -> Result<(GroupState, Change), String> {
    if current.master == Some(broker_id) {
        return Err(format!("broker {broker_id} is already the master"));
    }
    if !live.contains_key(&broker_id) {
        return Err(format!("broker {broker_id} is not alive"));
    }
    if !current.in_sync.contains(&broker_id) {
        return Err(format!(
            "broker {broker_id} is not in the in-sync set {:?}: it may lack acknowledged messages",
            current.in_sync
        ));
    }
    let epoch = live.values().map(|l| l.epoch).max().unwrap_or(0).max(current.master_epoch) + 1;
    let next = GroupState {
        master: Some(broker_id),
        master_epoch: epoch,
        state: ReplState::SingleMaster,
        in_sync: BTreeSet::from([broker_id]),
        sync_epoch: current.sync_epoch + 1,
    };
    Ok((next, Change::Elected { broker_id, epoch, previous: current.master, unclean: false }))
}

/// No eligible broker: record that the group has no master (once). The
/// in-sync set is kept: its members are the ones that may lead again.
fn leaderless(current: &GroupState) -> Option<(GroupState, Change)> {
    current.master?;
    let next = GroupState { master: None, ..current.clone() };
    Some((next, Change::Leaderless { previous: current.master }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy() -> Policy {
        Policy { semi_sync_max_lag: 1000, unclean_election: false }
    }

    fn live(id: i64, epoch: u32, max_offset: u64) -> Liveness {
        Liveness { broker_id: id, addr: format!("b{id}"), max_offset, epoch, ..Default::default() }
    }

    fn map(ls: Vec<Liveness>) -> BTreeMap<i64, Liveness> {
        ls.into_iter().map(|l| (l.broker_id, l)).collect()
    }

    #[test]
    fn the_state_follows_slaves_joining_catching_up_and_dying() {
        let p = policy();
        // First election: the only live broker.
        let (g, c) = decide(&GroupState::new(), &map(vec![live(0, 0, 0)]), &p).unwrap();
        assert_eq!((g.master, g.master_epoch, g.state), (Some(0), 1, ReplState::SingleMaster));
        assert!(matches!(c, Change::Elected { broker_id: 0, epoch: 1, .. }));
        // A slave joins far behind: ASYNC.
        let mut m = live(0, 1, 50_000);
        m.slave_lag.insert(1, 40_000);
        let (g, _) = decide(&g, &map(vec![m.clone(), live(1, 1, 10_000)]), &p).unwrap();
        assert_eq!(g.state, ReplState::Async);
        // Within the semi-sync gap: SEMI_SYNC, not yet in the set.
        m.slave_lag.insert(1, 500);
        let (g, _) = decide(&g, &map(vec![m.clone(), live(1, 1, 49_500)]), &p).unwrap();
        assert_eq!((g.state, g.in_sync.len()), (ReplState::SemiSync, 1));
        // The master waits for it now: SYNC, in the set.
        m.slave_lag.insert(1, 0);
        m.acking.insert(1);
        let (g, _) = decide(&g, &map(vec![m.clone(), live(1, 1, 50_000)]), &p).unwrap();
        assert_eq!((g.state, g.in_sync.clone()), (ReplState::Sync, BTreeSet::from([0, 1])));
        assert_eq!(decide(&g, &map(vec![m.clone(), live(1, 1, 50_000)]), &p), None, "stable");
        // The slave dies: out of the set, back to SINGLE_MASTER.
        m.acking.clear();
        m.slave_lag.clear();
        let (g2, _) = decide(&g, &map(vec![m.clone()]), &p).unwrap();
        assert_eq!((g2.state, g2.in_sync.len(), g2.sync_epoch), (ReplState::SingleMaster, 1, g.sync_epoch + 1));
    }

    #[test]
    fn a_dead_master_is_replaced_by_an_in_sync_slave_only() {
        let p = policy();
        let g = GroupState {
            master: Some(0),
            master_epoch: 3,
            state: ReplState::Sync,
            in_sync: BTreeSet::from([0, 1]),
            sync_epoch: 5,
        };
        // Slave 2 is further ahead in bytes but not in sync: slave 1 wins.
        let (n, c) = decide(&g, &map(vec![live(1, 3, 100), live(2, 3, 900)]), &p).unwrap();
        assert_eq!((n.master, n.master_epoch, n.in_sync.clone()), (Some(1), 4, BTreeSet::from([1])));
        assert!(matches!(c, Change::Elected { broker_id: 1, unclean: false, .. }));
        // Only an outsider alive: leaderless, unless unclean election.
        let (n, c) = decide(&g, &map(vec![live(2, 3, 900)]), &p).unwrap();
        assert_eq!((n.master, n.in_sync.clone()), (None, BTreeSet::from([0, 1])));
        assert!(matches!(c, Change::Leaderless { previous: Some(0) }));
        assert_eq!(decide(&n, &map(vec![live(2, 3, 900)]), &p), None, "recorded once");
        let unclean = Policy { unclean_election: true, ..p.clone() };
        let (u, c) = decide(&n, &map(vec![live(2, 3, 900)]), &unclean).unwrap();
        assert_eq!(u.master, Some(2));
        assert!(matches!(c, Change::Elected { unclean: true, .. }));
        // The old master returns while leaderless: it may lead again.
        let (n2, _) = decide(&n, &map(vec![live(0, 3, 1000), live(2, 3, 900)]), &p).unwrap();
        assert_eq!((n2.master, n2.master_epoch), (Some(0), 4));
    }

    #[test]
    fn an_operator_may_elect_only_a_live_in_sync_member() {
        let g = GroupState {
            master: Some(0),
            master_epoch: 2,
            state: ReplState::Sync,
            in_sync: BTreeSet::from([0, 1]),
            sync_epoch: 4,
        };
        let all = map(vec![live(0, 2, 10), live(1, 2, 10), live(2, 2, 10)]);
        let (n, _) = elect_by_hand(&g, &all, 1).unwrap();
        assert_eq!((n.master, n.master_epoch, n.in_sync), (Some(1), 3, BTreeSet::from([1])));
        assert!(elect_by_hand(&g, &all, 2).unwrap_err().contains("in-sync"));
        assert!(elect_by_hand(&g, &all, 0).unwrap_err().contains("already"));
        assert!(elect_by_hand(&g, &map(vec![live(0, 2, 10)]), 1).unwrap_err().contains("not alive"));
    }

    // ---- simulation: random events against the safety properties ----

    /// One broker in the simulation.
    #[derive(Clone, Debug, Default)]
    struct Node {
        /// The write ids its log holds, in order.
        log: Vec<u64>,
        alive: bool,
        /// Its ZooKeeper session is up (its ephemeral node exists).
        in_zk: bool,
        /// The durable state it last read; `None` after a restart or a lost
        /// session (a broker without a valid view never acts as master).
        seen: Option<GroupState>,
        /// As master: the slaves it waits for, and those it wants dropped.
        acking: BTreeSet<i64>,
        wants_out: BTreeSet<i64>,
    }

    #[derive(Clone, Debug)]
    enum Ev {
        /// Broker `i`, if it believes it is master, appends a write.
        Write(usize),
        /// Slave `i` copies one more entry from the master it follows.
        Copy(usize),
        Kill(usize),
        Start(usize),
        /// Broker `i` loses its ZooKeeper session (and fences itself at once).
        Partition(usize),
        Heal(usize),
        /// Every live broker reads the durable state (a watch fired).
        Watch,
        /// The controller runs `decide` on what the brokers report.
        Decide,
        /// The master of the moment wants slave `i` dropped (it is slow).
        Slow(usize),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            5 => (0usize..3).prop_map(Ev::Write),
            5 => (0usize..3).prop_map(Ev::Copy),
            1 => (0usize..3).prop_map(Ev::Kill),
            1 => (0usize..3).prop_map(Ev::Start),
            1 => (0usize..3).prop_map(Ev::Partition),
            1 => (0usize..3).prop_map(Ev::Heal),
            3 => Just(Ev::Watch),
            3 => Just(Ev::Decide),
            1 => (0usize..3).prop_map(Ev::Slow),
        ]
    }

    /// Three brokers following the protocol the module describes; the
    /// invariants are checked after every step.
    struct Sim {
        nodes: Vec<Node>,
        group: GroupState,
        acked: Vec<u64>,
        next_write: u64,
        /// Which broker acknowledged writes in each master epoch.
        ack_epochs: BTreeMap<u32, usize>,
    }

    impl Sim {
        fn new() -> Sim {
            let nodes = (0..3).map(|_| Node { alive: true, in_zk: true, ..Default::default() }).collect();
            Sim { nodes, group: GroupState::new(), acked: Vec::new(), next_write: 1, ack_epochs: BTreeMap::new() }
        }

        /// Whether broker `i` acts as master: alive, with a view naming it.
        fn believes_master(&self, i: usize) -> bool {
            let n = &self.nodes[i];
            n.alive && n.seen.as_ref().is_some_and(|g| g.master == Some(i as i64))
        }

        /// The master broker `s` follows, if that one acts as master.
        fn followed(&self, s: usize) -> Option<usize> {
            let m = self.nodes[s].seen.as_ref()?.master? as usize;
            (m != s && self.nodes[s].alive && self.believes_master(m)).then_some(m)
        }

        fn liveness(&self) -> BTreeMap<i64, Liveness> {
            (0..3)
                .filter(|&i| self.nodes[i].alive && self.nodes[i].in_zk)
                .map(|i| {
                    let n = &self.nodes[i];
                    let mut l = live(i as i64, 0, n.log.len() as u64);
                    if self.believes_master(i) {
                        l.acking = n.acking.clone();
                        l.wants_out = n.wants_out.clone();
                        for j in (0..3).filter(|&j| j != i && self.followed(j) == Some(i)) {
                            let lag = n.log.len().saturating_sub(self.nodes[j].log.len()) as u64;
                            l.slave_lag.insert(j as i64, lag);
                        }
                    }
                    (i as i64, l)
                })
                .collect()
        }

        fn step(&mut self, e: &Ev) -> Result<(), String> {
            match *e {
                Ev::Write(m) => {
                    if !self.believes_master(m) {
                        return Ok(());
                    }
                    let epoch = self.nodes[m].seen.as_ref().map_or(0, |g| g.master_epoch);
                    let w = self.next_write;
                    self.next_write += 1;
                    self.nodes[m].log.push(w);
                    // Slaves it waits for copy it if they follow it and are caught up.
                    let waits: Vec<usize> = self.nodes[m].acking.iter().map(|s| *s as usize).collect();
                    for &s in &waits {
                        if self.followed(s) == Some(m) && self.nodes[s].log.len() + 1 == self.nodes[m].log.len() {
                            self.nodes[s].log.push(w);
                        }
                    }
                    // Acknowledged only when every one of them has it.
                    if waits.iter().all(|&s| self.nodes[s].log.last() == Some(&w)) {
                        self.acked.push(w);
                        let by = *self.ack_epochs.entry(epoch).or_insert(m);
                        if by != m {
                            return Err(format!("brokers {by} and {m} both acknowledged in epoch {epoch}"));
                        }
                    }
                }
                Ev::Copy(s) => {
                    let Some(m) = self.followed(s) else { return Ok(()) };
                    // Joining cuts a diverged tail first (the agreed prefix stays).
                    let common = self.nodes[s].log.iter().zip(&self.nodes[m].log).take_while(|(a, b)| a == b).count();
                    self.nodes[s].log.truncate(common);
                    if let Some(&w) = self.nodes[m].log.get(common) {
                        self.nodes[s].log.push(w);
                    }
                    // Caught up: the master waits for it from now on.
                    if self.nodes[s].log == self.nodes[m].log && !self.nodes[m].wants_out.contains(&(s as i64)) {
                        self.nodes[m].acking.insert(s as i64);
                    }
                }
                Ev::Kill(i) => {
                    self.nodes[i].alive = false;
                    let masters: Vec<usize> = (0..3).filter(|&m| m != i && self.believes_master(m)).collect();
                    for m in masters {
                        if self.nodes[m].acking.contains(&(i as i64)) {
                            self.nodes[m].wants_out.insert(i as i64);
                        }
                    }
                }
                Ev::Start(i) => {
                    if !self.nodes[i].alive {
                        let log = std::mem::take(&mut self.nodes[i].log);
                        self.nodes[i] = Node { log, alive: true, in_zk: true, ..Default::default() };
                    }
                }
                Ev::Partition(i) => {
                    // Fencing: a broker that lost its session stops acting at once.
                    self.nodes[i].in_zk = false;
                    self.nodes[i].seen = None;
                    self.nodes[i].acking.clear();
                    self.nodes[i].wants_out.clear();
                }
                Ev::Heal(i) => self.nodes[i].in_zk = true,
                Ev::Slow(i) => {
                    let masters: Vec<usize> = (0..3).filter(|&m| m != i && self.believes_master(m)).collect();
                    for m in masters {
                        if self.nodes[m].acking.contains(&(i as i64)) {
                            self.nodes[m].wants_out.insert(i as i64);
                        }
                    }
                }
                Ev::Watch => {
                    for i in 0..3 {
                        let n = &mut self.nodes[i];
                        if !n.alive || !n.in_zk {
                            continue;
                        }
                        let was = n.seen.as_ref().is_some_and(|g| g.master == Some(i as i64));
                        n.seen = Some(self.group.clone());
                        let is = self.group.master == Some(i as i64);
                        if is != was {
                            // A broker taking (or resuming) the master role waits
                            // for every other member of the durable in-sync set;
                            // a demoted one waits for nobody.
                            n.acking = if is {
                                self.group.in_sync.iter().copied().filter(|s| *s != i as i64).collect()
                            } else {
                                BTreeSet::new()
                            };
                            n.wants_out.clear();
                        }
                        // A master stops waiting only for slaves the durable set dropped.
                        let keep: Vec<i64> =
                            n.wants_out.iter().copied().filter(|s| self.group.in_sync.contains(s)).collect();
                        let dropped: Vec<i64> =
                            n.wants_out.iter().copied().filter(|s| !self.group.in_sync.contains(s)).collect();
                        for s in dropped {
                            n.acking.remove(&s);
                        }
                        n.wants_out = keep.into_iter().collect();
                    }
                }
                Ev::Decide => {
                    let before = self.group.clone();
                    if let Some((next, change)) = decide(&before, &self.liveness(), &policy()) {
                        if next.master_epoch < before.master_epoch || next.sync_epoch < before.sync_epoch {
                            return Err("an epoch went backwards".into());
                        }
                        if next.master != before.master
                            && next.master.is_some()
                            && next.master_epoch <= before.master_epoch
                        {
                            return Err("a new master without a new epoch".into());
                        }
                        if let Change::Elected { broker_id, .. } = change {
                            let log = &self.nodes[broker_id as usize].log;
                            if let Some(w) = self.acked.iter().find(|w| !log.contains(w)) {
                                return Err(format!("electing {broker_id} loses acknowledged write {w}"));
                            }
                        }
                        for id in &next.in_sync {
                            let log = &self.nodes[*id as usize].log;
                            if let Some(w) = self.acked.iter().find(|w| !log.contains(w)) {
                                return Err(format!("in-sync member {id} lacks acknowledged write {w}"));
                            }
                        }
                        self.group = next;
                    }
                }
            }
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
        #[test]
        fn no_acknowledged_write_is_lost_and_epochs_only_grow(events in proptest::collection::vec(ev(), 1..120)) {
            let mut sim = Sim::new();
            for e in &events {
                if let Err(why) = sim.step(e) {
                    prop_assert!(false, "{} after {:?}", why, events);
                }
            }
        }
    }
}
