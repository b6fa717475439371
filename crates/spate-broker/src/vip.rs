//! The VIP channel: upstream's second listener on `listenPort - 2`, which
//! RocketMQ clients send to when `vipChannelEnabled` is set (the default
//! of older Java clients, which cannot send to a broker without it). The
//! requests are the same, handled by the same processor; the listener has
//! its own runtime on its own thread (`spate-vip`), a lane apart from the
//! main runtime's connections.
//!
//! Measured (BENCHMARKS.md, issue 7): with the broker on one saturated CPU
//! the separate thread does not lower core latency -- it waits for CPU
//! like any other thread -- so it is a compatibility feature, not a QoS
//! one. Core traffic is shielded by the core lane (`lane.rs`) instead,
//! which VIP connections move to as well when they carry core requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use spate_remoting::{AcceptLimits, ConnectionConfig, RemotingServer, RequestHandler};
use tokio::sync::oneshot;

/// The VIP port for a listen port (upstream: `listenPort - 2`).
pub fn vip_port(listen_port: u16) -> Option<u16> {
    listen_port.checked_sub(2).filter(|p| *p != 0)
}

/// A running VIP listener and its thread.
pub struct VipChannel {
    addr: SocketAddr,
    stop: oneshot::Sender<Duration>,
    thread: std::thread::JoinHandle<()>,
}

impl VipChannel {
    /// Binds `addr` on a new thread with its own runtime. Its connection
    /// limits are its own (a second listener, as upstream's).
    pub async fn start(
        addr: SocketAddr,
        cfg: ConnectionConfig,
        limits: AcceptLimits,
        handler: Arc<dyn RequestHandler>,
        tls: spate_remoting::ServerTls,
    ) -> std::io::Result<VipChannel> {
        let (bound_tx, bound_rx) = oneshot::channel::<std::io::Result<SocketAddr>>();
        let (stop, stop_rx) = oneshot::channel::<Duration>();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("spate-vip".into()).spawn(move || {
            runtime.block_on(async move {
                let server = match RemotingServer::bind_with_tls(addr, cfg, handler, limits, tls).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                        return;
                    }
                };
                let _ = bound_tx.send(Ok(server.local_addr()));
                // A dropped sender (the broker gone without a shutdown) stops it too.
                let grace = stop_rx.await.unwrap_or(Duration::ZERO);
                server.shutdown(grace).await;
            });
        })?;
        match bound_rx.await {
            Ok(Ok(addr)) => Ok(VipChannel { addr, stop, thread }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(std::io::Error::other("the VIP channel thread ended before binding")),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, answers requests in progress (up to `grace`), and
    /// ends the thread.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(grace);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vip_port_is_two_below_the_listen_port() {
        assert_eq!(vip_port(10911), Some(10909));
        assert_eq!(vip_port(2), None);
        assert_eq!(vip_port(1), None);
    }
}
