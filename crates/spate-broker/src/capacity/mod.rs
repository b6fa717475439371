//! The capacity guarantee: under a burst the broker protects itself and
//! answers at once instead of queueing until every request times out.
//!
//! - [`limits`]: rate limits per topic, group and client (token bucket, or
//!   leaky-bucket shaping), set at runtime, persisted, copied to slaves.
//! - [`gate`]: fast-fail back-pressure in front of the send and pull stages.
//! - [`degrade`]: degradation by priority class under pressure.
//!
//! Both answer a refused send with SYSTEM_BUSY (clients retry it on another
//! broker, as upstream's) and a refused pull with FLOW_CONTROL, each with a
//! remark saying which limit or queue, and count it in
//! `spate_broker_throttled_total{op, reason}`.

pub mod degrade;
pub mod gate;
pub mod limits;

use std::time::Instant;

use spate_remoting::{response, RemotingCommand};
use tokio::sync::OwnedSemaphorePermit;

use crate::BrokerState;
use gate::{Busy, Gate};
use limits::{LimitTable, Op};

/// The broker's limits and stage queues.
pub struct Capacity {
    pub limits: LimitTable,
    pub send_gate: Gate,
    pub pull_gate: Gate,
    pub degrader: degrade::Degrader,
}

/// A request allowed into its stage; the stage is held until this drops.
pub struct Admitted(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

fn refuse(state: &BrokerState, req: &RemotingCommand, op: Op, reason: &'static str, remark: String) -> RemotingCommand {
    let (op_label, code) = match op {
        Op::Send => ("send", response::SYSTEM_BUSY),
        Op::Pull => ("pull", response::FLOW_CONTROL),
    };
    state.metrics.throttled(op_label, reason);
    RemotingCommand::error(req, code, remark)
}

/// Admits a send of `n` messages (its rate limits, then the send queue),
/// or the response refusing it.
pub async fn admit(
    state: &BrokerState,
    req: &RemotingCommand,
    op: Op,
    topic: &str,
    group: &str,
    client: &str,
    n: u32,
) -> Result<Admitted, RemotingCommand> {
    let class = state.capacity.limits.class_of(topic, group);
    if !state.capacity.degrader.admits(class) {
        let level = state.capacity.degrader.level();
        let remark = format!(
            "[DEGRADED]broker busy: under pressure (degradation level {level}), {} traffic of {topic} is refused for a while",
            class.name()
        );
        return Err(refuse(state, req, op, "degraded", remark));
    }
    let shaped = match state.capacity.limits.admit(op, topic, group, client, n).await {
        Ok(waited) => waited,
        Err(l) => {
            return Err(refuse(state, req, op, "rate_limit", format!("[FLOW_CONTROL]{}; request refused", l.remark)))
        }
    };
    let (fast_fail, capacity, max_wait) = {
        let c = state.config.read();
        match op {
            Op::Send => {
                (c.broker_fast_failure_enable, c.send_thread_pool_queue_capacity, c.wait_time_mills_in_send_queue)
            }
            Op::Pull => {
                (c.broker_fast_failure_enable, c.pull_thread_pool_queue_capacity, c.wait_time_mills_in_pull_queue)
            }
        }
    };
    if !fast_fail {
        return Ok(Admitted(None));
    }
    // A request a shaped limit held on purpose queues from its release on.
    let received = if shaped { Instant::now() } else { req.received_at.unwrap_or_else(Instant::now) };
    if op == Op::Send && state.store.is_os_page_cache_busy() {
        let b = Busy::PageCacheBusy;
        return Err(refuse(
            state,
            req,
            op,
            b.reason(),
            b.remark(received.elapsed(), state.capacity.send_gate.queued()),
        ));
    }
    let gate = match op {
        Op::Send => &state.capacity.send_gate,
        Op::Pull => &state.capacity.pull_gate,
    };
    let entered = gate.enter(received, max_wait, capacity).await;
    if op == Op::Send {
        state.capacity.degrader.record_wait(received.elapsed());
    }
    match entered {
        Ok(p) => Ok(Admitted(Some(p))),
        Err((b, waited, queued)) => Err(refuse(state, req, op, b.reason(), b.remark(waited, queued))),
    }
}

/// Checks the pressure every `degradeCheckInterval` and moves the
/// degradation level (runs until aborted).
pub async fn run_degrader(state: std::sync::Arc<BrokerState>) {
    loop {
        let (policy, every) = {
            let c = state.config.read();
            (
                degrade::DegradePolicy {
                    enabled: c.degrade_enable,
                    queue_wait: c.degrade_queue_wait,
                    queue_depth: c.degrade_queue_depth,
                    step: c.degrade_step,
                    recover: c.degrade_recover,
                },
                c.degrade_check_interval,
            )
        };
        let level = state.capacity.degrader.tick(Instant::now(), &policy, state.capacity.send_gate.queued());
        state.metrics.degrade_level.set(i64::from(level));
        tokio::time::sleep(every).await;
    }
}
