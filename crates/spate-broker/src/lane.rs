//! The core lane: a thread of its own, with its own runtime, for the
//! connections that carry `core` traffic (a topic or group of class `core`,
//! `spate admin limit priority`).
//!
//! A connection's first core request moves it here for good (see
//! `spate_remoting::connection`): the lane reads its frames, runs its core
//! requests and writes its answers; its other requests go back to the main
//! runtime. Bulk work on the main runtime therefore never sits between a
//! core request and the CPU.
//!
//! A separate thread alone is not enough: on a saturated CPU it waits for
//! its turn like the others (measured with the VIP channel, BENCHMARKS.md,
//! issue 7). So the lane asks for `SCHED_FIFO` at `coreLaneRealtimePriority`:
//! whenever a core request is ready it runs before any ordinary thread.
//! The kernel's real-time throttling (`sched_rt_runtime_us`, 95% by
//! default) still leaves the rest of the broker some CPU if core traffic
//! alone floods the lane; rate limits on core topics are the tool for that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

/// The lane's thread name, as seen in `top -H` and `perf`.
pub const THREAD_NAME: &str = "spate-core-lane";

/// What the lane's thread got from the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduling {
    /// `SCHED_FIFO` at this priority.
    Realtime(u8),
    /// Ordinary scheduling: asked for (priority 0) or real-time refused.
    Ordinary,
}

impl Scheduling {
    /// As shown by admin and runtime info: `SCHED_FIFO 10` or `SCHED_OTHER`.
    pub fn describe(self) -> String {
        match self {
            Scheduling::Realtime(p) => format!("SCHED_FIFO {p}"),
            Scheduling::Ordinary => "SCHED_OTHER".to_string(),
        }
    }
}

/// What operators see of the lane (admin, runtime info, metrics).
#[derive(Debug)]
pub struct LaneStatus {
    pub scheduling: Scheduling,
    connections: AtomicUsize,
}

impl LaneStatus {
    /// Connections on the lane now.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// A connection moved to the lane.
    pub fn moved(&self, peer: SocketAddr) {
        let now = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(peer = %peer, connections = now, "connection carrying core traffic moved to the core lane");
    }

    /// A connection on the lane closed.
    pub fn closed(&self) {
        let _ = self.connections.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

/// A running core lane.
pub struct CoreLane {
    handle: tokio::runtime::Handle,
    status: Arc<LaneStatus>,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl CoreLane {
    /// Starts the lane's thread, asking for `SCHED_FIFO` at
    /// `realtime_priority` (0: ordinary scheduling).
    pub fn start(realtime_priority: u8) -> std::io::Result<CoreLane> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (told, scheduled) = std::sync::mpsc::sync_channel::<Scheduling>(1);
        let thread = std::thread::Builder::new().name(THREAD_NAME.into()).spawn(move || {
            let _ = told.send(ask_for_realtime(realtime_priority));
            // A dropped sender (the broker gone without a shutdown) stops it too.
            runtime.block_on(async move {
                let _ = stopped.await;
            });
        })?;
        let scheduling =
            scheduled.recv().map_err(|_| std::io::Error::other("the core lane's thread ended before it started"))?;
        match scheduling {
            Scheduling::Realtime(p) => {
                tracing::info!(priority = p, "core lane runs at real-time priority (SCHED_FIFO)")
            }
            Scheduling::Ordinary if realtime_priority > 0 => tracing::warn!(
                priority = realtime_priority,
                "core lane could not get real-time priority (needs CAP_SYS_NICE); it runs at ordinary priority, \
                 so bulk load on the same CPUs can delay core traffic"
            ),
            Scheduling::Ordinary => tracing::info!("core lane runs at ordinary priority (coreLaneRealtimePriority=0)"),
        }
        let status = Arc::new(LaneStatus { scheduling, connections: AtomicUsize::new(0) });
        Ok(CoreLane { handle, status, stop, thread })
    }

    /// Where connections that move to the lane are served.
    pub fn handle(&self) -> tokio::runtime::Handle {
        self.handle.clone()
    }

    pub fn status(&self) -> Arc<LaneStatus> {
        self.status.clone()
    }

    /// Ends the lane's thread. Its connections were closed before.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(());
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        if tokio::time::timeout(grace.max(Duration::from_secs(1)), joined).await.is_err() {
            tracing::warn!("core lane thread did not end in time");
        }
    }
}

/// Asks for `SCHED_FIFO` at `priority` for the calling thread.
fn ask_for_realtime(priority: u8) -> Scheduling {
    if priority == 0 {
        return Scheduling::Ordinary;
    }
    let param = libc::sched_param { sched_priority: i32::from(priority) };
    // SAFETY: sched_setscheduler(0, ..) changes only the calling thread's
    // policy; `param` is a valid sched_param that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Scheduling::Realtime(priority)
    } else {
        Scheduling::Ordinary
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lane_thread_runs_spawned_work_with_the_scheduling_it_reports() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for asked in [0u8, 10] {
                let lane = CoreLane::start(asked).unwrap();
                let (name, policy) = lane
                    .handle()
                    .spawn(async {
                        // SAFETY: reads the calling thread's policy.
                        let policy = unsafe { libc::sched_getscheduler(0) };
                        (std::thread::current().name().map(str::to_string), policy)
                    })
                    .await
                    .unwrap();
                assert_eq!(name.as_deref(), Some(THREAD_NAME));
                // What the kernel says is what the lane reports.
                match lane.status().scheduling {
                    Scheduling::Realtime(p) => {
                        assert_eq!(p, asked);
                        assert_eq!(policy, libc::SCHED_FIFO);
                    }
                    Scheduling::Ordinary => assert_eq!(policy, libc::SCHED_OTHER),
                }
                if asked == 0 {
                    assert_eq!(lane.status().scheduling, Scheduling::Ordinary);
                }
                lane.shutdown(Duration::from_secs(1)).await;
            }
        });
    }
}
