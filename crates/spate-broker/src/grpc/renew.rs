//! Push consumers' messages, kept invisible while they are being consumed.
//!
//! A gRPC push consumer receives with `auto_renew` and no invisible time:
//! its messages are hidden for `defaultInvisibleTimeMills`, and renewed
//! (a change of invisible time by `renewSliceTimeMillis`) once less than
//! `renewAheadTimeMillis` is left, as long as the client's Telemetry
//! stream is open and for at most `renewMaxTimeMillis`. The client keeps
//! the handle it received; its ack, change or forward is translated here
//! to the handle the last renewal made. When the stream closes, renewal
//! stops and the messages come back after their invisible time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::BrokerState;

/// Most messages renewed at once; receives past it are not renewed (their
/// messages come back after `defaultInvisibleTimeMills`).
pub const MAX_RENEWALS: usize = 100_000;
/// How often the renewer looks for messages to renew.
const RENEW_TICK: Duration = Duration::from_millis(500);

/// One message being renewed.
#[derive(Debug, Clone)]
struct Renewal {
    client_id: String,
    group: String,
    topic: String,
    /// The handle the last renewal made (the client's at first).
    current: String,
    /// When its invisible time ends.
    until: Instant,
    received: Instant,
}

/// The messages being renewed, by the handle the client holds.
#[derive(Default)]
pub struct Renewals {
    by_handle: Mutex<HashMap<String, Renewal>>,
}

impl Renewals {
    /// Starts renewing a message a push consumer received; false when at
    /// [`MAX_RENEWALS`].
    pub fn track(&self, client_id: &str, group: &str, topic: &str, handle: &str, invisible: Duration) -> bool {
        let mut map = self.by_handle.lock();
        if map.len() >= MAX_RENEWALS {
            return false;
        }
        let now = Instant::now();
        map.insert(
            handle.to_string(),
            Renewal {
                client_id: client_id.to_string(),
                group: group.to_string(),
                topic: topic.to_string(),
                current: handle.to_string(),
                until: now + invisible,
                received: now,
            },
        );
        true
    }

    /// The client is done with the message (ack, change, forward): stops
    /// renewing it and gives the handle to use, the latest renewal's.
    pub fn settle(&self, client_handle: &str) -> String {
        match self.by_handle.lock().remove(client_handle) {
            Some(r) => r.current,
            None => client_handle.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_handle.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Those due for renewal now, and drops those past `max` or whose
    /// client's stream closed (`alive` says which are open).
    fn due(
        &self,
        now: Instant,
        ahead: Duration,
        max: Duration,
        alive: impl Fn(&str) -> bool,
    ) -> Vec<(String, Renewal)> {
        let mut map = self.by_handle.lock();
        map.retain(|_, r| alive(&r.client_id) && now.saturating_duration_since(r.received) < max);
        map.iter()
            .filter(|(_, r)| r.until.saturating_duration_since(now) <= ahead)
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect()
    }

    fn renewed(&self, client_handle: &str, previous: &str, current: String, until: Instant) {
        let mut map = self.by_handle.lock();
        // Settled meanwhile: nothing to update (its ack used `previous`,
        // which the renewal just replaced, and fails as stale; the client
        // acks again or the message comes back).
        if let Some(r) = map.get_mut(client_handle).filter(|r| r.current == previous) {
            r.current = current;
            r.until = until;
        }
    }

    fn drop_handle(&self, client_handle: &str) {
        self.by_handle.lock().remove(client_handle);
    }
}

/// Renews due messages until `stop`.
pub async fn run(state: Arc<BrokerState>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(RENEW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (ahead, slice, max) = {
            let c = state.config.read();
            (c.renew_ahead_time, c.renew_slice_time, c.renew_max_time)
        };
        let due = state.grpc_renewals.due(Instant::now(), ahead, max, |client| state.grpc.stream_open(client));
        for (client_handle, r) in due {
            let slice_ms = slice.as_millis() as u64;
            match super::service::change_invisible(&state, &r.group, &r.topic, &r.current, slice_ms).await {
                Ok(new_handle) => {
                    state.grpc_renewals.renewed(&client_handle, &r.current, new_handle, Instant::now() + slice);
                }
                Err(st) => {
                    // Acked elsewhere, or already visible again: nothing to keep.
                    tracing::debug!(handle = %client_handle, status = ?st, "push consumer's message not renewed");
                    state.grpc_renewals.drop_handle(&client_handle);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_follows_the_latest_handle_and_stops_with_the_stream() {
        let r = Renewals::default();
        assert!(r.track("c1", "g", "t", "h1", Duration::from_secs(1)));
        let now = Instant::now();
        assert!(r.due(now, Duration::from_millis(10), Duration::from_secs(60), |_| true).is_empty());
        let due = r.due(now + Duration::from_millis(995), Duration::from_millis(10), Duration::from_secs(60), |_| true);
        assert_eq!(due.len(), 1);
        r.renewed("h1", "h1", "h1b".into(), now + Duration::from_secs(5));
        assert_eq!(r.settle("h1"), "h1b", "an ack uses the latest renewal's handle");
        assert_eq!(r.settle("h1"), "h1", "an unknown handle passes through");
        assert!(r.track("c2", "g", "t", "h2", Duration::from_secs(1)));
        assert!(r.due(now, Duration::ZERO, Duration::from_secs(60), |c| c != "c2").is_empty());
        assert!(r.is_empty(), "a closed stream stops renewal");
        assert!(r.track("c3", "g", "t", "h3", Duration::from_secs(1)));
        assert!(r.due(now + Duration::from_secs(61), Duration::ZERO, Duration::from_secs(60), |_| true).is_empty());
        assert!(r.is_empty(), "renewal stops after renewMaxTimeMillis");
    }
}
