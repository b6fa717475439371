//! The master side of replication: accepts slaves on `haListenPort`,
//! authenticates them when `authenticationEnabled` is on (`slave_auth.rs`),
//! agrees with each where their logs part (`divergence.rs`), then streams
//! its commit log in batches that never cross an epoch boundary, and
//! records what each slave acknowledges ([`Replication`]).
//!
//! The handshake, from accept to the last byte of the slave's `Proof`, is
//! bounded by one `haHousekeepingInterval`, and a peer takes one of the
//! [`MAX_SLAVES`] slots only after its Hello and, with authentication on,
//! its proof: a silent or unauthenticated peer holds a connection for at
//! most that long and never holds a slot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};

use super::protocol::{read_frame, read_frame_within, write_frame, Frame, Nonce, PROTOCOL_VERSION};
use super::slave_auth::{self, SlaveAuthFailure, Transcript};
use super::{divergence, HaError};
use crate::config::BrokerRole;
use crate::BrokerState;

/// Slaves served at once; more are refused.
pub const MAX_SLAVES: usize = 32;

/// How often a session looks again while appended bytes wait for the
/// committer (read/write separation).
const COMMIT_POLL: Duration = Duration::from_millis(1);

/// Largest frame accepted from a peer before it is admitted (a Hello or a
/// Proof is small).
const MAX_HELLO_FRAME: usize = 2 << 20;

/// Authentication refusals are logged at most once per this interval, with
/// a count of those left unlogged (each is counted in the metrics).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Accepts slaves until the task is aborted; its sessions end with it.
pub async fn serve(listener: TcpListener, state: Arc<BrokerState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SLAVES));
    let refusals = Arc::new(parking_lot::Mutex::new(LogBudget::default()));
    // Owned here: aborting `serve` (shutdown, role change) drops the set,
    // which aborts every session.
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "replication accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                if sessions.len() >= MAX_SLAVES * 2 {
                    tracing::warn!(%peer, "replication: too many connections, refused");
                    continue;
                }
                let (state, slots, refusals) = (state.clone(), slots.clone(), refusals.clone());
                sessions.spawn(async move {
                    match session(stream, peer, &state, &slots, &refusals).await {
                        Ok(()) => tracing::info!(%peer, "replication: slave disconnected"),
                        // Logged at a bounded rate where it was refused.
                        Err(HaError::Unauthenticated(_)) => {}
                        Err(e) => tracing::warn!(%peer, error = %e, "replication: slave link ended"),
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// The epoch containing `offset` and where the next one starts (the batch
/// must stop there), from an epoch list oldest first.
fn epoch_at(epochs: &[spate_store::EpochEntry], offset: u64) -> (u32, u64, u64) {
    let i = epochs.partition_point(|e| e.start_offset <= offset);
    let (epoch, start) = match i.checked_sub(1).and_then(|i| epochs.get(i)) {
        Some(e) => (e.epoch, e.start_offset),
        None => (0, 0),
    };
    let next = epochs.get(i).map_or(u64::MAX, |e| e.start_offset);
    (epoch, start, next)
}

async fn session(
    stream: TcpStream,
    peer: SocketAddr,
    state: &Arc<BrokerState>,
    slots: &Arc<tokio::sync::Semaphore>,
    refusals: &parking_lot::Mutex<LogBudget>,
) -> Result<(), HaError> {
    stream.set_nodelay(true)?;
    let (heartbeat, housekeeping, batch, rate) = {
        let c = state.config.read();
        (
            c.ha_send_heartbeat_interval,
            c.ha_housekeeping_interval,
            c.ha_transfer_batch_size,
            c.ha_transfer_bytes_per_second,
        )
    };
    let handshake_until = Instant::now() + housekeeping;
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::new();
    let Some(hello) = read_frame_within(&mut rd, &mut buf, housekeeping, MAX_HELLO_FRAME).await? else {
        return Ok(());
    };
    // What a proof covers, when one is asked for.
    let authenticate = state.gate.authentication_enabled();
    let hello_bytes = if authenticate { hello.encoded() } else { Bytes::new() };
    let Frame::Hello { broker_name, broker_id, max_offset: slave_end, epochs: slave_epochs, segment_size, version } =
        hello
    else {
        return Err(HaError::Protocol(format!("expected Hello, got {}", hello.kind_name())));
    };
    if version != PROTOCOL_VERSION {
        let reason = format!("this master speaks replication protocol version {PROTOCOL_VERSION}, the slave {version}");
        return refuse(&mut wr, peer, broker_id, reason, housekeeping).await;
    }
    // Before anything about this master is said or done for the peer.
    if authenticate {
        let nonce = slave_auth::nonce()?;
        let shake = Handshake { until: handshake_until, hello: &hello_bytes, nonce };
        if let Err(failure) = challenge(&mut rd, &mut wr, &mut buf, state.gate.users(), &shake).await {
            state.metrics.replication_auth_refused(failure.reason());
            if let Some(unlogged) = refusals.lock().take(Instant::now()) {
                tracing::warn!(%peer, broker_id, reason = failure.reason(), refused_unlogged = unlogged, "replication: {failure}");
            }
            // Bounded by what is left of the handshake. The write is tried
            // before the clock is read, so a peer whose socket has room
            // gets the reason even when no time is left.
            let left = handshake_until.saturating_duration_since(Instant::now());
            let _ = write_frame(&mut wr, &Frame::Refuse { reason: failure.to_string() }, left).await;
            return Err(HaError::Unauthenticated(failure));
        }
    }
    // A slot is taken only by a peer that said a valid Hello (and proved its secret).
    let slot = slots.clone().try_acquire_owned().ok();
    let store = &state.store;
    let refusal = {
        let c = state.config.read();
        if c.broker_role == BrokerRole::Slave {
            Some("this broker is a slave".to_string())
        } else if broker_name != c.broker_name {
            Some(format!("this broker is {}, not {broker_name}", c.broker_name))
        } else if broker_id <= 0 {
            Some(format!("brokerId {broker_id} is not a slave's"))
        } else if slot.is_none() {
            Some(format!("this master already serves {MAX_SLAVES} slaves"))
        } else if segment_size != c.store.mapped_file_size_commit_log {
            Some(format!(
                "mappedFileSizeCommitLog differs: the slave's is {segment_size}, this master's {}; \
                 a slave's log must be laid out like its master's",
                c.store.mapped_file_size_commit_log
            ))
        } else {
            None
        }
    };
    let master_epochs = store.epochs();
    let master_end = store.max_offset();
    // An empty master (a new or wiped store) would have the slave erase
    // everything it holds, possibly the only copy: refuse instead.
    let refusal = refusal.or_else(|| {
        (master_end == 0 && slave_end > 0).then(|| {
            format!(
                "this master's log is empty but the slave holds {slave_end} bytes: refusing to erase them; \
                 restore the master from the slave (or empty the slave deliberately)"
            )
        })
    });
    let start = divergence::agreed_end(&master_epochs, master_end, &slave_epochs, slave_end);
    let refusal = refusal.or_else(|| {
        (start < store.min_offset()).then(|| {
            format!(
                "the slave's log agrees only up to {start}, before this master's oldest offset {}: \
                 empty the slave's store and restart it",
                store.min_offset()
            )
        })
    });
    if let Some(reason) = refusal {
        return refuse(&mut wr, peer, broker_id, reason, housekeeping).await;
    }
    write_frame(
        &mut wr,
        &Frame::Welcome {
            start_offset: start,
            master_max: master_end,
            epochs: master_epochs,
            version: PROTOCOL_VERSION,
        },
        housekeeping,
    )
    .await?;
    tracing::info!(%peer, broker_id, slave_end, start, master_end, "replication: slave joined");
    let rep = state.replication.clone();
    let id = rep.add_slave(broker_id, peer, start, master_end);
    let _gone = Gone(rep.clone(), id);

    // Acknowledgements arrive on their own task; the stream below never waits for them.
    let acks = {
        let (rep, state) = (rep.clone(), state.clone());
        tokio::spawn(async move {
            loop {
                match read_frame(&mut rd, &mut buf, housekeeping).await {
                    Ok(Some(Frame::Ack { max_offset })) => rep.ack(id, max_offset, state.store.max_offset()),
                    Ok(Some(other)) => return HaError::Protocol(format!("expected Ack, got {other:?}")),
                    Ok(None) => return HaError::Protocol("slave closed the link".into()),
                    Err(e) => return e,
                }
            }
        })
    };
    let mut acks = acks;
    // However this session ends (an error, or aborted with its accept
    // task), its acknowledgement reader ends with it.
    let _stop_acks = StopOnDrop(acks.abort_handle());
    let pace = Pace { bytes_per_second: rate, until: Instant::now() };
    let how = Streaming { batch, pace, heartbeat, write_timeout: housekeeping };
    stream_log(state, &mut wr, start, how, &mut acks).await
}

/// Tells the slave why it is refused, and ends the session.
async fn refuse<W: tokio::io::AsyncWrite + Unpin>(
    wr: &mut W,
    peer: SocketAddr,
    broker_id: i64,
    reason: String,
    timeout: Duration,
) -> Result<(), HaError> {
    tracing::warn!(%peer, broker_id, %reason, "replication: slave refused");
    write_frame(wr, &Frame::Refuse { reason: reason.clone() }, timeout).await?;
    Err(HaError::Refused(reason))
}

/// One authentication: the slave's Hello as received, this connection's
/// nonce, and when the handshake must be over.
struct Handshake<'a> {
    until: Instant,
    hello: &'a [u8],
    nonce: Nonce,
}

/// Sends the challenge and checks the proof that answers it; the user the
/// slave proved to be.
async fn challenge<R, W>(
    rd: &mut R,
    wr: &mut W,
    buf: &mut BytesMut,
    users: &spate_auth::AuthStore,
    shake: &Handshake<'_>,
) -> Result<String, SlaveAuthFailure>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let left = || shake.until.saturating_duration_since(Instant::now());
    let no_proof = |e: HaError| match e {
        HaError::Silent(_) => SlaveAuthFailure::NoProof("none within haHousekeepingInterval".into()),
        e => SlaveAuthFailure::NoProof(e.to_string()),
    };
    write_frame(wr, &Frame::Challenge { nonce: shake.nonce }, left()).await.map_err(no_proof)?;
    match read_frame_within(rd, buf, left(), MAX_HELLO_FRAME).await.map_err(no_proof)? {
        Some(Frame::Proof { access_key, nonce, mac }) => {
            let t = Transcript {
                master_nonce: &shake.nonce,
                slave_nonce: &nonce,
                access_key: &access_key,
                hello: shake.hello,
            };
            slave_auth::verify(users, &t, &mac)
        }
        Some(other) => Err(SlaveAuthFailure::NoProof(format!("expected Proof, got {}", other.kind_name()))),
        None => Err(SlaveAuthFailure::NoProof("the peer closed the connection".into())),
    }
}

/// A bounded log: at most one line per [`REFUSAL_LOG_INTERVAL`].
#[derive(Debug, Default)]
struct LogBudget {
    last: Option<Instant>,
    unlogged: u64,
}

impl LogBudget {
    /// `Some(n)`: log this one now, saying `n` went unlogged since the last
    /// line; `None`: counted, not logged.
    fn take(&mut self, now: Instant) -> Option<u64> {
        if self.last.is_some_and(|t| now.saturating_duration_since(t) < REFUSAL_LOG_INTERVAL) {
            self.unlogged += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// How a session streams: batch size, pace, heartbeat, write timeout.
struct Streaming {
    batch: usize,
    pace: Pace,
    heartbeat: Duration,
    write_timeout: Duration,
}

/// `haTransferBytesPerSecond`: after each batch, the stream waits until the
/// bytes sent so far fit the rate.
struct Pace {
    bytes_per_second: u64,
    until: Instant,
}

impl Pace {
    async fn sent(&mut self, bytes: usize) {
        if self.bytes_per_second == 0 {
            return;
        }
        let now = Instant::now();
        self.until = self.until.max(now) + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        if self.until > now {
            tokio::time::sleep_until(self.until.into()).await;
        }
    }
}

/// Sends the log from `next` on, then new appends as they come, and a
/// heartbeat whenever the link has been idle for `heartbeat`.
async fn stream_log(
    state: &Arc<BrokerState>,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
    mut next: u64,
    how: Streaming,
    acks: &mut tokio::task::JoinHandle<HaError>,
) -> Result<(), HaError> {
    let Streaming { batch, mut pace, heartbeat, write_timeout } = how;
    let store = state.store.clone();
    let rep = state.replication.clone();
    let mut last_sent = Instant::now();
    loop {
        if acks.is_finished() {
            return Err(HaError::Protocol("the slave's acknowledgements stopped".into()));
        }
        if state.config.read().broker_role == BrokerRole::Slave {
            return Err(HaError::Protocol("this broker is no longer a master".into()));
        }
        // Register for the next append before looking, so none is missed.
        let appended = rep.appended().notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        // Up to what is readable: with transientStorePoolEnable the
        // committer moves appended bytes into the file a little later.
        let end = store.readable_offset();
        if next < end {
            let (epoch, epoch_start, epoch_next) = epoch_at(&store.epochs(), next);
            let want = batch.min((epoch_next.min(end) - next) as usize);
            let chunk = if store.log_is_resident(next, want) {
                store.read_raw(next, want)?
            } else {
                let s = store.clone();
                tokio::task::spawn_blocking(move || s.read_raw(next, want))
                    .await
                    .map_err(|e| HaError::Protocol(format!("read task failed: {e}")))??
            };
            if chunk.is_empty() {
                return Err(HaError::Protocol(format!("nothing readable at {next} below the end {end}")));
            }
            let after = store.raw_next_offset(next, &chunk);
            let confirm = confirm_for_slaves(state);
            let frame =
                Frame::Data { offset: next, epoch, epoch_start, master_max: end, confirm, bytes: Bytes::from(chunk) };
            write_frame(wr, &frame, write_timeout).await?;
            pace.sent((after - next) as usize).await;
            next = after;
            last_sent = Instant::now();
            continue;
        }
        let idle_until = last_sent + heartbeat;
        // Appended but not yet readable (read/write separation): look again soon.
        let pending = store.max_offset() > end;
        tokio::select! {
            _ = tokio::time::sleep(COMMIT_POLL), if pending => {}
            ended = &mut *acks => {
                return Err(ended.unwrap_or_else(|e| HaError::Protocol(format!("ack task failed: {e}"))));
            }
            _ = &mut appended => {}
            _ = tokio::time::sleep_until(idle_until.into()) => {
                let confirm = confirm_for_slaves(state);
                write_frame(wr, &Frame::Heartbeat { master_max: store.max_offset(), confirm }, write_timeout).await?;
                last_sent = Instant::now();
            }
        }
    }
}

/// The confirm offset streamed to slaves: a controlled master's watermark
/// (`u64::MAX`: it waits for nobody, everything is confirmed); 0 from a
/// broker under the controller that is not a controlled master (fenced or
/// demoted: nothing it has is confirmed any more); unlimited under static
/// roles, where slaves serve everything (as upstream).
fn confirm_for_slaves(state: &BrokerState) -> u64 {
    match state.replication.controlled_confirm() {
        Some(held) => held,
        None if !state.config.read().zk_addr.is_empty() => 0,
        None => u64::MAX,
    }
}

/// Aborts a task when dropped.
struct StopOnDrop(tokio::task::AbortHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Removes the slave from the master's view when its session ends, however it ends.
struct Gone(Arc<super::Replication>, u64);

impl Drop for Gone {
    fn drop(&mut self) {
        self.0.remove_slave(self.1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate_store::EpochEntry;

    #[test]
    fn batches_stop_at_the_next_epoch() {
        let epochs = [EpochEntry { epoch: 1, start_offset: 0 }, EpochEntry { epoch: 4, start_offset: 1000 }];
        assert_eq!(epoch_at(&epochs, 0), (1, 0, 1000));
        assert_eq!(epoch_at(&epochs, 999), (1, 0, 1000));
        assert_eq!(epoch_at(&epochs, 1000), (4, 1000, u64::MAX));
        assert_eq!(epoch_at(&[], 50), (0, 0, u64::MAX));
        assert_eq!(epoch_at(&epochs[1..], 10), (0, 0, 1000), "bytes before the first epoch are epoch 0");
    }

    /// The master's side of one challenge against a slave played by `slave`
    /// over an in-memory pipe, with `within` to answer.
    async fn challenged<F, Fut>(within: Duration, slave: F) -> Result<String, SlaveAuthFailure>
    where
        F: FnOnce(tokio::io::DuplexStream, Bytes) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let users = spate_auth::AuthStore::new();
        users.init_super_user("inner", "inner-secret").unwrap();
        let hello = Frame::Hello {
            broker_name: "broker-a".into(),
            broker_id: 1,
            max_offset: 0,
            segment_size: 1 << 30,
            epochs: vec![],
            version: PROTOCOL_VERSION,
        }
        .encoded();
        let (here, there) = tokio::io::duplex(4096);
        let peer = tokio::spawn(slave(there, hello.clone()));
        let (mut rd, mut wr) = tokio::io::split(here);
        let shake = Handshake { until: Instant::now() + within, hello: &hello, nonce: slave_auth::nonce().unwrap() };
        let verdict = challenge(&mut rd, &mut wr, &mut BytesMut::new(), &users, &shake).await;
        peer.abort();
        verdict
    }

    /// Reads the Challenge, then answers with `answer(nonce, hello)`.
    async fn answer(mut s: tokio::io::DuplexStream, hello: Bytes, answer: impl FnOnce(Nonce, &[u8]) -> Option<Frame>) {
        let mut buf = BytesMut::new();
        let Ok(Some(Frame::Challenge { nonce })) = read_frame(&mut s, &mut buf, Duration::from_secs(5)).await else {
            panic!("no Challenge");
        };
        if let Some(f) = answer(nonce, &hello) {
            write_frame(&mut s, &f, Duration::from_secs(5)).await.unwrap();
        }
        // Stay connected (silent) until the master is done.
        std::future::pending::<()>().await;
    }

    fn proof_with(secret: &str, master_nonce: Nonce, hello: &[u8]) -> Frame {
        let nonce = [9; super::super::protocol::NONCE_LEN];
        let t = Transcript { master_nonce: &master_nonce, slave_nonce: &nonce, access_key: "inner", hello };
        Frame::Proof { access_key: "inner".into(), nonce, mac: slave_auth::prove(secret, &t) }
    }

    #[tokio::test]
    async fn a_challenge_admits_the_right_secret_only() {
        let right = |s, h| answer(s, h, |n, h| Some(proof_with("inner-secret", n, h)));
        assert_eq!(challenged(Duration::from_secs(5), right).await, Ok("inner".into()));
        let wrong = |s, h| answer(s, h, |n, h| Some(proof_with("guess", n, h)));
        assert_eq!(challenged(Duration::from_secs(5), wrong).await, Err(SlaveAuthFailure::BadProof("inner".into())));
        let ack = |s, h| answer(s, h, |_, _| Some(Frame::Ack { max_offset: 0 }));
        assert_eq!(
            challenged(Duration::from_secs(5), ack).await,
            Err(SlaveAuthFailure::NoProof("expected Proof, got Ack".into()))
        );
    }

    #[tokio::test]
    async fn a_silent_or_departed_peer_is_refused_when_the_handshake_time_is_up() {
        let started = Instant::now();
        let silent = |s, h| answer(s, h, |_, _| None);
        assert_eq!(
            challenged(Duration::from_millis(200), silent).await,
            Err(SlaveAuthFailure::NoProof("none within haHousekeepingInterval".into()))
        );
        assert!(started.elapsed() < Duration::from_secs(2), "held {:?}", started.elapsed());
        let gone = |s: tokio::io::DuplexStream, _| async move { drop(s) };
        let verdict = challenged(Duration::from_secs(5), gone).await;
        assert!(matches!(verdict, Err(SlaveAuthFailure::NoProof(_))), "{verdict:?}");
    }

    #[test]
    fn refusals_are_logged_once_per_interval_with_a_count_of_the_rest() {
        let mut b = LogBudget::default();
        let t0 = Instant::now();
        assert_eq!(b.take(t0), Some(0));
        for i in 1..=3 {
            assert_eq!(b.take(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(b.take(t0 + REFUSAL_LOG_INTERVAL), Some(3));
        assert_eq!(b.take(t0 + REFUSAL_LOG_INTERVAL), None);
        assert_eq!(b.take(t0 + REFUSAL_LOG_INTERVAL * 3), Some(1));
    }
}
