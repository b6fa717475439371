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
struct Renewal {
    client_id: String,
    group: String,
    topic: String,
    received: Instant,
    /// The handle the last renewal made (the client's at first), and when
    /// its invisible time ends.
    current: Mutex<(String, Instant)>,
    /// Held while a renewal is under way, so a settle waits for its handle.
    renewing: tokio::sync::Mutex<()>,
}

/// The messages being renewed, by the handle the client holds.
#[derive(Default)]
pub struct Renewals {
    by_handle: Mutex<HashMap<String, Arc<Renewal>>>,
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
            Arc::new(Renewal {
                client_id: client_id.to_string(),
                group: group.to_string(),
                topic: topic.to_string(),
                received: now,
                current: Mutex::new((handle.to_string(), now + invisible)),
                renewing: tokio::sync::Mutex::new(()),
            }),
        );
        true
    }

    /// The client is done with the message (ack, change, forward): stops
    /// renewing it and gives the handle to use, the latest renewal's (one
    /// under way is waited for).
    pub async fn settle(&self, client_handle: &str) -> String {
        let entry = self.by_handle.lock().remove(client_handle);
        match entry {
            Some(r) => {
                let _renewal_done = r.renewing.lock().await;
                let current = r.current.lock().0.clone();
                current
            }
            None => client_handle.to_string(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_handle.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Those due for renewal now (their client's stream open, `alive`);
    /// forgets those past `max`, and those of a closed stream once their
    /// invisible time is over (until then an ack still maps to them).
    fn due(&self, now: Instant, ahead: Duration, max: Duration, alive: impl Fn(&str) -> bool) -> Vec<Arc<Renewal>> {
        let mut map = self.by_handle.lock();
        map.retain(|_, r| {
            now.saturating_duration_since(r.received) < max && (alive(&r.client_id) || now < r.current.lock().1)
        });
        map.values()
            .filter(|r| alive(&r.client_id) && r.current.lock().1.saturating_duration_since(now) <= ahead)
            .cloned()
            .collect()
    }

    fn forget(&self, r: &Arc<Renewal>) {
        self.by_handle.lock().retain(|_, e| !Arc::ptr_eq(e, r));
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
        for r in due {
            let _renewing = r.renewing.lock().await;
            let current = r.current.lock().0.clone();
            let slice_ms = slice.as_millis() as u64;
            match super::service::change_invisible(&state, &r.group, &r.topic, &current, slice_ms).await {
                Ok(new_handle) => *r.current.lock() = (new_handle, Instant::now() + slice),
                Err(st) => {
                    // Acked elsewhere, or already visible again: nothing to keep.
                    tracing::debug!(status = ?st, "push consumer's message not renewed");
                    state.grpc_renewals.forget(&r);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn renewal_follows_the_latest_handle_and_stops_with_the_stream() {
        let r = Renewals::default();
        assert!(r.track("c1", "g", "t", "h1", Duration::from_secs(1)));
        let now = Instant::now();
        assert!(r.due(now, Duration::from_millis(10), Duration::from_secs(60), |_| true).is_empty());
        let due = r.due(now + Duration::from_millis(995), Duration::from_millis(10), Duration::from_secs(60), |_| true);
        assert_eq!(due.len(), 1);
        *due[0].current.lock() = ("h1b".into(), now + Duration::from_secs(5));
        assert_eq!(r.settle("h1").await, "h1b", "an ack uses the latest renewal's handle");
        assert_eq!(r.settle("h1").await, "h1", "an unknown handle passes through");
        // A closed stream: no more renewals, but the mapping lasts until
        // the invisible time is over.
        assert!(r.track("c2", "g", "t", "h2", Duration::from_secs(1)));
        assert!(r.due(now, Duration::from_secs(5), Duration::from_secs(60), |c| c != "c2").is_empty());
        assert_eq!(r.len(), 1, "kept while still invisible");
        assert!(r.due(now + Duration::from_secs(2), Duration::ZERO, Duration::from_secs(60), |c| c != "c2").is_empty());
        assert!(r.is_empty(), "forgotten once visible again");
        assert!(r.track("c3", "g", "t", "h3", Duration::from_secs(1)));
        assert!(r.due(now + Duration::from_secs(61), Duration::ZERO, Duration::from_secs(60), |_| true).is_empty());
        assert!(r.is_empty(), "renewal stops after renewMaxTimeMillis");
    }

    #[tokio::test]
    async fn a_settle_waits_for_the_renewal_under_way() {
        let r = Arc::new(Renewals::default());
        assert!(r.track("c", "g", "t", "h", Duration::from_secs(1)));
        let entry = r.due(Instant::now() + Duration::from_secs(2), Duration::ZERO, Duration::from_secs(60), |_| true);
        let e = entry[0].clone();
        let renewing = e.renewing.lock().await;
        let settle = tokio::spawn({
            let r = r.clone();
            async move { r.settle("h").await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!settle.is_finished(), "the ack waits for the renewal");
        *e.current.lock() = ("h-renewed".into(), Instant::now());
        drop(renewing);
        assert_eq!(settle.await.unwrap(), "h-renewed");
    }
}
