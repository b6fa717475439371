//! The slave side of replication: connect to the master's HA port
//! (`haMasterAddress`, or the address the name servers report), say where
//! this log stands, answer the master's challenge if it sends one (with
//! `innerClientAuthenticationCredentials`, `slave_auth.rs`), cut the tail
//! the master does not share, then append what the master streams and
//! acknowledge it. Reconnects after any error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::Mutex;
use tokio::net::TcpStream;

use super::protocol::{read_frame, write_frame, Frame, Nonce, PROOF_LEN, PROTOCOL_VERSION};
use super::slave_auth::{self, Transcript};
use super::HaError;
use crate::BrokerState;

/// Pause before reconnecting after a failed or lost link.
pub const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// How often an idle follower (this broker is master) looks at its role.
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// What a slave knows about its link (admin and metrics).
#[derive(Debug, Clone, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SlaveLink {
    /// The master's HA address in use, if connected.
    pub master_ha_addr: Option<String>,
    /// The master's log end, as last reported.
    pub master_max_offset: u64,
    /// When the link last carried anything.
    #[serde(skip)]
    pub last_heard: Option<Instant>,
    /// The last error that ended a link.
    pub last_error: Option<String>,
}

/// The slave's link state, shared with admin.
#[derive(Default)]
pub struct SlaveState {
    link: Mutex<SlaveLink>,
    /// The master's HA address the name servers reported at registration.
    learned_master: Mutex<Option<String>>,
    /// The master's request address, from the same answer (metadata sync).
    learned_master_addr: Mutex<Option<String>>,
    /// Role or master changed: a following session ends at once (between
    /// batches, never in the middle of an append).
    changed: tokio::sync::Notify,
    /// A session is following a master right now.
    following: std::sync::atomic::AtomicBool,
    /// The master's confirm offset as last received (`u64::MAX`: no limit).
    pub confirm: tokio::sync::watch::Sender<u64>,
}

impl SlaveState {
    pub fn link(&self) -> SlaveLink {
        self.link.lock().clone()
    }

    /// Called with each registration answer (`haServerAddr`, `masterAddr`).
    pub fn learn_master(&self, ha_addr: Option<String>, master_addr: Option<String>) {
        *self.learned_master.lock() = ha_addr.filter(|a| !a.is_empty());
        *self.learned_master_addr.lock() = master_addr.filter(|a| !a.is_empty());
    }

    /// Tells a following session to stop (role or master changed).
    pub fn role_changed(&self) {
        self.changed.notify_waiters();
    }

    /// Whether a session is following a master right now.
    pub fn is_following(&self) -> bool {
        self.following.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The master's request address, as the name servers last reported it.
    pub fn master_addr_for_requests(&self) -> Option<String> {
        self.learned_master_addr.lock().clone()
    }

    fn master_addr(&self, configured: &str) -> Option<String> {
        if !configured.is_empty() {
            return Some(configured.to_string());
        }
        self.learned_master.lock().clone()
    }
}

/// Runs the slave's replication until the task is aborted.
pub async fn run(state: Arc<BrokerState>) {
    loop {
        let (configured, role, controlled) = {
            let c = state.config.read();
            (c.ha_master_address.clone(), c.broker_role, !c.zk_addr.is_empty())
        };
        if role != crate::BrokerRole::Slave {
            // A master (under a controller, roles change live): idle.
            tokio::time::sleep(IDLE_CHECK).await;
            continue;
        }
        // Under a controller only the master it names is followed, never
        // one a name server still lists.
        let addr =
            if controlled { Some(configured).filter(|a| !a.is_empty()) } else { state.slave.master_addr(&configured) };
        let Some(addr) = addr else {
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        };
        // Nothing is confirmed until this master says so (and nothing once it is gone).
        state.slave.confirm.send_replace(0);
        state.slave.following.store(true, std::sync::atomic::Ordering::Release);
        let result = session(&state, &addr).await;
        state.slave.following.store(false, std::sync::atomic::Ordering::Release);
        state.slave.confirm.send_replace(0);
        {
            let mut link = state.slave.link.lock();
            link.master_ha_addr = None;
            if let Err(e) = &result {
                link.last_error = Some(e.to_string());
            }
        }
        match result {
            Ok(()) => tracing::info!(master = %addr, "replication: link closed"),
            Err(e) => tracing::warn!(master = %addr, error = %e, "replication: link ended"),
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

async fn session(state: &Arc<BrokerState>, addr: &str) -> Result<(), HaError> {
    let (broker_name, broker_id, housekeeping) = {
        let c = state.config.read();
        (c.broker_name.clone(), state.identity, c.ha_housekeeping_interval)
    };
    let stream = tokio::time::timeout(housekeeping, TcpStream::connect(addr))
        .await
        .map_err(|_| HaError::Silent(housekeeping))??;
    stream.set_nodelay(true)?;
    let (mut rd, mut wr) = stream.into_split();
    let store = state.store.clone();
    let segment_size = store.config().mapped_file_size_commit_log;
    let hello = Frame::Hello {
        broker_name,
        broker_id,
        max_offset: store.max_offset(),
        segment_size,
        epochs: store.epochs(),
        version: PROTOCOL_VERSION,
    };
    write_frame(&mut wr, &hello, housekeeping).await?;
    let mut buf = BytesMut::new();
    let mut welcome = read_frame(&mut rd, &mut buf, housekeeping).await?;
    // Only a master with authentication on challenges; one without goes
    // straight to Welcome.
    if let Some(Frame::Challenge { nonce }) = welcome {
        write_frame(&mut wr, &proof(state, &nonce, &hello.encoded())?, housekeeping).await?;
        welcome = read_frame(&mut rd, &mut buf, housekeeping).await?;
    }
    let (start, master_max) = match welcome {
        Some(Frame::Welcome { version, .. }) if version != PROTOCOL_VERSION => {
            return Err(HaError::Refused(format!(
                "the master speaks replication protocol version {version}, this slave {PROTOCOL_VERSION}"
            )));
        }
        Some(Frame::Welcome { start_offset, master_max, .. }) => (start_offset, master_max),
        Some(Frame::Refuse { reason }) => return Err(HaError::Refused(reason)),
        Some(other) => return Err(HaError::Protocol(format!("expected Welcome, got {}", other.kind_name()))),
        None => return Err(HaError::Protocol("master closed the link".into())),
    };
    let end = store.max_offset();
    if start > end {
        return Err(HaError::Protocol(format!("master would stream from {start}, past this log's end {end}")));
    }
    if start < end {
        tracing::warn!(master = %addr, from = end, to = start, "replication: cutting a tail the master does not have");
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.truncate(start))
            .await
            .map_err(|e| HaError::Protocol(format!("truncate task failed: {e}")))??;
    }
    tracing::info!(master = %addr, start, master_max, "replication: following");
    {
        let mut link = state.slave.link.lock();
        link.master_ha_addr = Some(addr.to_string());
        link.master_max_offset = master_max;
        link.last_heard = Some(Instant::now());
    }
    write_frame(&mut wr, &Frame::Ack { max_offset: start }, housekeeping).await?;
    loop {
        {
            let c = state.config.read();
            let moved = !c.ha_master_address.is_empty() && c.ha_master_address != addr;
            if c.broker_role != crate::BrokerRole::Slave || moved {
                return Ok(()); // promoted, or told to follow another master
            }
        }
        let frame = tokio::select! {
            f = read_frame(&mut rd, &mut buf, housekeeping) => f?,
            _ = state.slave.changed.notified() => return Ok(()),
        };
        let Some(frame) = frame else { return Ok(()) };
        let (master_max, confirm) = match frame {
            Frame::Data { offset, epoch, epoch_start, master_max, confirm, bytes } => {
                append(state, offset, epoch, epoch_start, bytes).await?;
                (master_max, confirm)
            }
            Frame::Heartbeat { master_max, confirm } => (master_max, confirm),
            Frame::Refuse { reason } => return Err(HaError::Refused(reason)),
            other => return Err(HaError::Protocol(format!("unexpected {other:?}"))),
        };
        {
            let mut link = state.slave.link.lock();
            link.master_max_offset = master_max;
            link.last_heard = Some(Instant::now());
        }
        state.slave.confirm.send_if_modified(|c| std::mem::replace(c, confirm) != confirm);
        write_frame(&mut wr, &Frame::Ack { max_offset: store.max_offset() }, housekeeping).await?;
    }
}

/// The answer to a master's challenge, made with this broker's inner
/// credentials. Without any, an empty one: the master refuses it with a
/// reason that says what to set.
fn proof(state: &BrokerState, master_nonce: &Nonce, hello: &[u8]) -> Result<Frame, HaError> {
    let credentials = state.config.read().inner_client_credentials().cloned();
    let nonce = slave_auth::nonce()?;
    let Some(c) = credentials else {
        return Ok(Frame::Proof { access_key: String::new(), nonce, mac: [0; PROOF_LEN] });
    };
    let t = Transcript { master_nonce, slave_nonce: &nonce, access_key: &c.access_key, hello };
    Ok(Frame::Proof { mac: slave_auth::prove(&c.secret_key, &t), access_key: c.access_key, nonce })
}

/// Appends one batch at this log's end, beginning its epoch first if it is new here.
async fn append(
    state: &Arc<BrokerState>,
    offset: u64,
    epoch: u32,
    epoch_start: u64,
    bytes: bytes::Bytes,
) -> Result<(), HaError> {
    let store = state.store.clone();
    let end = store.max_offset();
    if offset != end {
        return Err(HaError::Protocol(format!("batch at {offset}, but this log ends at {end}")));
    }
    let last = store.epochs().last().map_or(0, |e| e.epoch);
    if epoch > last {
        // Batches never cross an epoch boundary, so a new epoch's first batch starts where it does.
        if epoch_start != offset {
            return Err(HaError::Protocol(format!(
                "epoch {epoch} starts at {epoch_start}, but its first batch here is at {offset}"
            )));
        }
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.begin_epoch(epoch))
            .await
            .map_err(|e| HaError::Protocol(format!("epoch task failed: {e}")))??;
    } else if epoch < last {
        return Err(HaError::Protocol(format!("batch of epoch {epoch} after epoch {last}")));
    }
    // A plain copy runs here; one that may wait for the next segment runs
    // on the blocking pool, as sends do.
    if store.append_may_wait(bytes.len()) {
        tokio::task::spawn_blocking(move || store.append_raw(offset, &bytes).map(|_| ()))
            .await
            .map_err(|e| HaError::Protocol(format!("append task failed: {e}")))??;
    } else {
        store.append_raw(offset, &bytes)?;
    }
    Ok(())
}
