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

use spate_remoting::response;
use tokio::sync::OwnedSemaphorePermit;

use crate::refusal::Refusal;
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
/// A send's time from being read to being stored (this drop) feeds the
/// degrader's pressure signal.
pub struct Admitted<'a> {
    _permit: Option<OwnedSemaphorePermit>,
    timed: Option<(&'a degrade::Degrader, Instant)>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some((degrader, received)) = self.timed {
            degrader.record_wait(received.elapsed());
        }
    }
}

fn refuse(state: &BrokerState, op: Op, reason: &'static str, remark: String) -> Refusal {
    let (op_label, code) = match op {
        Op::Send => ("send", response::SYSTEM_BUSY),
        Op::Pull => ("pull", response::FLOW_CONTROL),
    };
    state.metrics.throttled(op_label, reason);
    Refusal::new(code, remark)
}

/// The request's priority class, or the refusal of a request whose class
/// is being shed. Cheap: called before a batch's body is taken apart.
pub fn degraded_refusal(state: &BrokerState, op: Op, topic: &str, group: &str) -> Result<degrade::Class, Refusal> {
    let class = state.capacity.limits.class_of(topic, group);
    if state.capacity.degrader.admits(class) {
        return Ok(class);
    }
    let degrader = &state.capacity.degrader;
    let remark = format!(
        "[DEGRADED]broker busy: under pressure (degradation level {}, {} per mille of {} traffic taken), this {} request for {topic} is refused",
        degrader.level(),
        degrader.share(class),
        class.name(),
        match op {
            Op::Send => "send",
            Op::Pull => "pull",
        }
    );
    Err(refuse(state, op, "degraded", remark))
}

/// Admits a request for `n` messages (degradation, its rate limits, then
/// the stage's queue), or why not. `received_at` is when the request was
/// read: its wait in the stage's queue counts from then.
pub async fn admit<'a>(
    state: &'a BrokerState,
    received_at: Option<Instant>,
    op: Op,
    topic: &str,
    group: &str,
    client: &str,
    n: u32,
) -> Result<Admitted<'a>, Refusal> {
    let class = degraded_refusal(state, op, topic, group)?;
    admit_past_degradation(state, received_at, op, topic, group, client, n, class).await
}

/// [`admit`] for a request [`degraded_refusal`] already let through as `class`.
#[allow(clippy::too_many_arguments)]
pub async fn admit_past_degradation<'a>(
    state: &'a BrokerState,
    received_at: Option<Instant>,
    op: Op,
    topic: &str,
    group: &str,
    client: &str,
    n: u32,
    class: degrade::Class,
) -> Result<Admitted<'a>, Refusal> {
    let shaped = match state.capacity.limits.admit(op, topic, group, client, n).await {
        Ok(waited) => waited,
        Err(l) => return Err(refuse(state, op, "rate_limit", format!("[FLOW_CONTROL]{}; request refused", l.remark))),
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
    // A request a shaped limit held on purpose queues from its release on.
    let received = if shaped { Instant::now() } else { received_at.unwrap_or_else(Instant::now) };
    let timed = (op == Op::Send).then_some((&state.capacity.degrader, received));
    if !fast_fail {
        return Ok(Admitted { _permit: None, timed });
    }
    if op == Op::Send && state.store.is_os_page_cache_busy() {
        let b = Busy::PageCacheBusy;
        return Err(refuse(state, op, b.reason(), b.remark(received.elapsed(), state.capacity.send_gate.queued())));
    }
    let gate = match op {
        Op::Send => &state.capacity.send_gate,
        Op::Pull => &state.capacity.pull_gate,
    };
    match gate.enter(received, max_wait, capacity, class == degrade::Class::Core).await {
        Ok(p) => Ok(Admitted { _permit: Some(p), timed }),
        Err((b, waited, queued)) => {
            if let Some((degrader, received)) = timed {
                degrader.record_wait(received.elapsed());
            }
            Err(refuse(state, op, b.reason(), b.remark(waited, queued)))
        }
    }
}

/// Checks the pressure every `degradeCheckInterval` and moves the
/// degradation level (runs until aborted).
pub async fn run_degrader(state: std::sync::Arc<BrokerState>) {
    loop {
        let policy = {
            let c = state.config.read();
            degrade::DegradePolicy {
                enabled: c.degrade_enable,
                send_wait: c.degrade_send_wait,
                scheduling_lag: c.degrade_scheduling_lag,
                queue_depth: c.degrade_queue_depth,
                step: c.degrade_step,
                recover: c.degrade_recover,
                check_interval: c.degrade_check_interval,
            }
        };
        let level = state.capacity.degrader.tick(Instant::now(), &policy, state.capacity.send_gate.queued());
        state.metrics.degrade_level.set(i64::from(level));
        tokio::time::sleep(policy.check_interval).await;
    }
}

/// How often the scheduling lag is sampled.
const LAG_PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(5);

/// Measures the runtime's scheduling lag: how long a task that yields
/// waits to run again, i.e. what a request that just arrived waits before
/// its connection is read (runs until aborted).
pub async fn run_lag_probe(state: std::sync::Arc<BrokerState>) {
    let mut every = tokio::time::interval(LAG_PROBE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let before = Instant::now();
        tokio::task::yield_now().await;
        state.capacity.degrader.record_lag(before.elapsed());
    }
}
