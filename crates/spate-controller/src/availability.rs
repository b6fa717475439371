//! Availability accounting (the design's MTBF / MTTR): per replica group,
//! every outage the controller saw (start, end, cause) and the figures
//! derived from them. Pure; the controller keeps one [`History`] per group
//! in ZooKeeper (`/spate/outages/<group>`).
//!
//! A group is *serving* while its master is alive and has published the
//! group's current epoch (it took the role). An outage opens when a group
//! that served stops serving — dated from the last scan that saw it serve —
//! and closes at the first scan that sees it serve again.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::fsm::{GroupState, ReplState};

/// Closed outages kept in full; older ones are folded into the totals.
pub const MAX_OUTAGES: usize = 1000;

/// State changes kept (the group's epoch and state history); the oldest
/// are dropped first.
pub const MAX_TRANSITIONS: usize = 200;

/// One change of a group's durable state, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub at_ms: u64,
    pub master: Option<i64>,
    pub epoch: u32,
    pub state: ReplState,
    pub in_sync: BTreeSet<i64>,
    /// Who or what made the change (`elected 2 ...`, `membership`, `operator`).
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Outage {
    pub start_ms: u64,
    pub end_ms: u64,
    pub cause: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OpenOutage {
    pub start_ms: u64,
    pub cause: String,
}

/// One group's record.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct History {
    /// When the group first served (the clock starts there).
    pub since_ms: Option<u64>,
    pub outages: Vec<Outage>,
    pub open: Option<OpenOutage>,
    /// Outages dropped from `outages` (over [`MAX_OUTAGES`]) and their downtime.
    pub folded: u64,
    pub folded_downtime_ms: u64,
    /// The group's state changes, oldest first (at most [`MAX_TRANSITIONS`]).
    pub transitions: Vec<Transition>,
}

/// Figures over a group's whole history.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub failures: u64,
    pub downtime_ms: u64,
    pub observed_ms: u64,
    /// Mean time between failures: serving time per failure.
    pub mtbf_ms: Option<f64>,
    /// Mean time to repair: downtime per failure.
    pub mttr_ms: Option<f64>,
    /// Serving time over observed time.
    pub availability: f64,
    /// The same as a count of nines (0.999 -> 3); `None` with no downtime.
    pub nines: Option<f64>,
}

impl History {
    /// Records a written change of the group's durable state.
    pub fn record(&mut self, at_ms: u64, g: &GroupState, why: String) {
        if self.transitions.len() >= MAX_TRANSITIONS {
            self.transitions.remove(0);
        }
        self.transitions.push(Transition {
            at_ms,
            master: g.master,
            epoch: g.master_epoch,
            state: g.state,
            in_sync: g.in_sync.clone(),
            why,
        });
    }

    /// Records one scan: whether the group serves now, and when it last
    /// did before. Returns whether the record changed.
    pub fn observe(&mut self, now_ms: u64, serving: bool, last_served_ms: u64, cause: impl FnOnce() -> String) -> bool {
        match (serving, self.since_ms, &self.open) {
            (true, None, _) => {
                self.since_ms = Some(now_ms);
                true
            }
            (true, Some(_), Some(open)) => {
                let o =
                    Outage { start_ms: open.start_ms, end_ms: now_ms.max(open.start_ms), cause: open.cause.clone() };
                self.open = None;
                self.outages.push(o);
                if self.outages.len() > MAX_OUTAGES {
                    let old = self.outages.remove(0);
                    self.folded += 1;
                    self.folded_downtime_ms += old.end_ms - old.start_ms;
                }
                true
            }
            (false, Some(since), None) => {
                self.open = Some(OpenOutage { start_ms: last_served_ms.clamp(since, now_ms), cause: cause() });
                true
            }
            _ => false,
        }
    }

    pub fn stats(&self, now_ms: u64) -> Stats {
        let Some(since) = self.since_ms else {
            return Stats {
                failures: 0,
                downtime_ms: 0,
                observed_ms: 0,
                mtbf_ms: None,
                mttr_ms: None,
                availability: 1.0,
                nines: None,
            };
        };
        let open_down = self.open.as_ref().map_or(0, |o| now_ms.saturating_sub(o.start_ms));
        let closed_down: u64 = self.outages.iter().map(|o| o.end_ms - o.start_ms).sum();
        let downtime_ms = closed_down + self.folded_downtime_ms + open_down;
        let failures = self.outages.len() as u64 + self.folded + u64::from(self.open.is_some());
        let observed_ms = now_ms.saturating_sub(since).max(downtime_ms);
        let up = (observed_ms - downtime_ms) as f64;
        let availability = if observed_ms == 0 { 1.0 } else { up / observed_ms as f64 };
        let per = |v: f64| (failures > 0).then(|| v / failures as f64);
        Stats {
            failures,
            downtime_ms,
            observed_ms,
            mtbf_ms: per(up),
            mttr_ms: per(downtime_ms as f64),
            availability,
            nines: (availability < 1.0).then(|| -(1.0 - availability).log10()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outages_open_and_close_and_the_figures_follow() {
        let mut h = History::default();
        assert!(!h.observe(0, false, 0, || "no master yet".into()), "not serving before the first master is no outage");
        assert!(h.observe(1_000, true, 0, String::new));
        assert!(!h.observe(2_000, true, 1_000, String::new));
        // The master dies: down from the last scan that saw it serve.
        assert!(h.observe(10_500, false, 10_000, || "master 1 lost".into()));
        assert!(!h.observe(10_800, false, 10_000, || unreachable!()));
        assert!(h.observe(11_000, true, 10_000, String::new));
        assert_eq!(h.outages, vec![Outage { start_ms: 10_000, end_ms: 11_000, cause: "master 1 lost".into() }]);
        let s = h.stats(101_000);
        assert_eq!((s.failures, s.downtime_ms, s.observed_ms), (1, 1_000, 100_000));
        assert_eq!(s.mttr_ms, Some(1_000.0));
        assert_eq!(s.mtbf_ms, Some(99_000.0));
        assert!((s.availability - 0.99).abs() < 1e-9);
        assert!((s.nines.unwrap() - 2.0).abs() < 1e-9);
        // An open outage counts up to now.
        h.observe(200_000, false, 199_000, || "master 2 lost".into());
        assert_eq!(h.stats(201_000).downtime_ms, 3_000);
    }

    #[test]
    fn transitions_are_bounded_and_keep_the_newest() {
        let mut h = History::default();
        let mut g = GroupState::new();
        for epoch in 0..(MAX_TRANSITIONS as u32 + 3) {
            g.master_epoch = epoch;
            h.record(u64::from(epoch), &g, format!("change {epoch}"));
        }
        assert_eq!(h.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(h.transitions[0].epoch, 3);
        assert_eq!(h.transitions.last().unwrap().why, format!("change {}", MAX_TRANSITIONS + 2));
    }

    #[test]
    fn old_outages_fold_into_the_totals() {
        let mut h = History::default();
        h.observe(0, true, 0, String::new);
        for i in 0..(MAX_OUTAGES as u64 + 5) {
            h.observe(i * 100 + 10, false, i * 100, || "x".into());
            h.observe(i * 100 + 20, true, i * 100, String::new);
        }
        assert_eq!(h.outages.len(), MAX_OUTAGES);
        assert_eq!(h.folded, 5);
        assert_eq!(h.stats(1_000_000).failures, MAX_OUTAGES as u64 + 5);
        assert_eq!(h.stats(1_000_000).downtime_ms, (MAX_OUTAGES as u64 + 5) * 20);
    }
}
