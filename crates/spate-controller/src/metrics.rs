//! The controller's `/metrics`: every replica group as the leader's last
//! scan saw it — role, epoch, replication state, in-sync set, slave lag —
//! and its availability (failures, downtime, MTBF, MTTR, availability
//! ratio). Pure text rendering of a [`Snapshot`]; the binary serves it.
//! A standby reports `spate_controller_leading 0` and no groups, so a
//! scraper of every controller sums to one view.

use std::fmt::Write;

use crate::controller::Snapshot;
use crate::fsm::ReplState;

const STATES: [ReplState; 4] = [ReplState::SingleMaster, ReplState::Async, ReplState::SemiSync, ReplState::Sync];

fn state_name(s: ReplState) -> &'static str {
    match s {
        ReplState::SingleMaster => "SINGLE_MASTER",
        ReplState::Async => "ASYNC",
        ReplState::SemiSync => "SEMI_SYNC",
        ReplState::Sync => "SYNC",
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        if labels.is_empty() {
            let _ = writeln!(self.text, "{name} {value}");
        } else {
            let _ = writeln!(self.text, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

/// Prometheus text exposition (0.0.4) of `snap` at `now_ms`.
pub fn render(snap: &Snapshot, now_ms: u64) -> String {
    let mut o = Out { text: String::with_capacity(2048) };
    o.family("spate_controller_leading", "gauge", "1 when this controller leads (only the leader reports groups).");
    o.line("spate_controller_leading", &[], if snap.leading { 1.0 } else { 0.0 });
    o.family("spate_controller_scans_total", "counter", "Scans of every group by this controller.");
    o.line("spate_controller_scans_total", &[], snap.scans as f64);
    o.family("spate_controller_decisions_total", "counter", "Group state changes this controller wrote.");
    o.line("spate_controller_decisions_total", &[], snap.decisions as f64);
    o.family(
        "spate_controller_unregistered_total",
        "counter",
        "Brokers whose session ended that this controller unregistered from the name servers.",
    );
    o.line("spate_controller_unregistered_total", &[], snap.unregistered as f64);
    if snap.groups.is_empty() {
        return o.text;
    }

    type Value = fn(&crate::controller::GroupView, u64) -> Option<f64>;
    let per_group: [(&str, &str, &str, Value); 10] = [
        ("spate_ha_group_master", "gauge", "The master's broker id (-1: none).", |g, _| {
            Some(g.state.master.map_or(-1.0, |m| m as f64))
        }),
        ("spate_ha_group_epoch", "gauge", "The group's master epoch.", |g, _| Some(f64::from(g.state.master_epoch))),
        ("spate_ha_group_in_sync", "gauge", "Members of the in-sync set, master included.", |g, _| {
            Some(g.state.in_sync.len() as f64)
        }),
        ("spate_ha_group_live_brokers", "gauge", "Brokers of the group with a live ZooKeeper session.", |g, _| {
            Some(g.live.len() as f64)
        }),
        ("spate_ha_group_serving", "gauge", "1 while the group's master is alive and in the group's epoch.", |g, _| {
            Some(if g.serving { 1.0 } else { 0.0 })
        }),
        ("spate_ha_group_failures_total", "counter", "Outages recorded, the open one included.", |g, now| {
            Some(g.history.stats(now).failures as f64)
        }),
        ("spate_ha_group_downtime_seconds_total", "counter", "Time without a serving master.", |g, now| {
            Some(g.history.stats(now).downtime_ms as f64 / 1000.0)
        }),
        ("spate_ha_group_availability_ratio", "gauge", "Serving time over observed time.", |g, now| {
            Some(g.history.stats(now).availability)
        }),
        ("spate_ha_group_mtbf_seconds", "gauge", "Mean time between failures (serving time per failure).", |g, now| {
            g.history.stats(now).mtbf_ms.map(|v| v / 1000.0)
        }),
        ("spate_ha_group_mttr_seconds", "gauge", "Mean time to repair (downtime per failure).", |g, now| {
            g.history.stats(now).mttr_ms.map(|v| v / 1000.0)
        }),
    ];
    for (name, kind, help, value) in per_group {
        o.family(name, kind, help);
        for (group, view) in &snap.groups {
            if let Some(v) = value(view, now_ms) {
                o.line(name, &[("group", group)], v);
            }
        }
    }
    o.family("spate_ha_group_state", "gauge", "The group's replication state (1 for the current one).");
    for (group, view) in &snap.groups {
        for s in STATES {
            o.line(
                "spate_ha_group_state",
                &[("group", group), ("state", state_name(s))],
                (view.state.state == s) as u8 as f64,
            );
        }
    }
    o.family(
        "spate_ha_slave_lag_bytes",
        "gauge",
        "Each connected slave's lag behind the master, as the master reports it.",
    );
    for (group, view) in &snap.groups {
        let Some(report) = view.state.master.and_then(|m| view.live.get(&m)) else { continue };
        for (slave, lag) in &report.slave_lag {
            o.line("spate_ha_slave_lag_bytes", &[("group", group), ("broker", &slave.to_string())], *lag as f64);
        }
    }
    o.text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::availability::History;
    use crate::controller::GroupView;
    use crate::fsm::{GroupState, Liveness};

    #[test]
    fn a_leader_reports_each_group_and_its_availability() {
        let mut history = History::default();
        history.observe(1_000, true, 1_000, String::new);
        history.observe(10_000, false, 9_000, || "master 1 lost".into());
        history.observe(10_500, true, 9_000, String::new);
        let mut state = GroupState::new();
        state.master = Some(2);
        state.master_epoch = 7;
        state.state = ReplState::Sync;
        state.in_sync = [2, 3].into();
        let mut master = Liveness { broker_id: 2, ..Default::default() };
        master.slave_lag.insert(3, 42);
        let live = BTreeMap::from([(2, master), (3, Liveness { broker_id: 3, ..Default::default() })]);
        let mut snap = Snapshot { leading: true, scans: 5, ..Default::default() };
        snap.groups.insert("broker-\"a\"".into(), GroupView { state, live, history, serving: true });
        let text = render(&snap, 101_000);
        let g = "group=\"broker-\\\"a\\\"\"";
        for want in [
            "spate_controller_leading 1".to_string(),
            "spate_controller_scans_total 5".to_string(),
            format!("spate_ha_group_master{{{g}}} 2"),
            format!("spate_ha_group_epoch{{{g}}} 7"),
            format!("spate_ha_group_in_sync{{{g}}} 2"),
            format!("spate_ha_group_failures_total{{{g}}} 1"),
            format!("spate_ha_group_downtime_seconds_total{{{g}}} 1.5"),
            format!("spate_ha_group_mttr_seconds{{{g}}} 1.5"),
            format!("spate_ha_group_state{{{g},state=\"SYNC\"}} 1"),
            format!("spate_ha_group_state{{{g},state=\"ASYNC\"}} 0"),
            format!("spate_ha_slave_lag_bytes{{{g},broker=\"3\"}} 42"),
        ] {
            assert!(text.lines().any(|l| l == want), "missing `{want}` in\n{text}");
        }
        let ratio = text.lines().find(|l| l.starts_with("spate_ha_group_availability_ratio")).unwrap();
        let v: f64 = ratio.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((v - 0.985).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn a_standby_reports_no_groups() {
        let text = render(&Snapshot::default(), 0);
        assert!(text.contains("spate_controller_leading 0"));
        assert!(!text.contains("spate_ha_group"), "{text}");
    }
}
