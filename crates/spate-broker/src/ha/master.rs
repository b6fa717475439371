//! The master side of replication: accepts slaves on `haListenPort`,
//! agrees with each where their logs part (`divergence.rs`), then streams
//! its commit log in batches that never cross an epoch boundary, and
//! records what each slave acknowledges ([`Replication`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};

use super::protocol::{read_frame, read_frame_within, write_frame, Frame, PROTOCOL_VERSION};
use super::{divergence, HaError};
use crate::config::BrokerRole;
use crate::BrokerState;

/// Slaves served at once; more are refused.
pub const MAX_SLAVES: usize = 32;

/// How often a session looks again while appended bytes wait for the
/// committer (read/write separation).
const COMMIT_POLL: Duration = Duration::from_millis(1);

/// Largest frame accepted from a peer before its Hello (a Hello is small).
const MAX_HELLO_FRAME: usize = 2 << 20;

/// Accepts slaves until the task is aborted; its sessions end with it.
pub async fn serve(listener: TcpListener, state: Arc<BrokerState>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SLAVES));
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
                let (state, slots) = (state.clone(), slots.clone());
                sessions.spawn(async move {
                    match session(stream, peer, &state, &slots).await {
                        Ok(()) => tracing::info!(%peer, "replication: slave disconnected"),
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
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = BytesMut::new();
    let Some(hello) = read_frame_within(&mut rd, &mut buf, housekeeping, MAX_HELLO_FRAME).await? else {
        return Ok(());
    };
    let Frame::Hello { broker_name, broker_id, max_offset: slave_end, epochs: slave_epochs, segment_size, version } =
        hello
    else {
        return Err(HaError::Protocol(format!("expected Hello, got {hello:?}")));
    };
    // A slot is taken only by a peer that said a valid Hello.
    let slot = slots.clone().try_acquire_owned().ok();
    let store = &state.store;
    let refusal = {
        let c = state.config.read();
        if version != PROTOCOL_VERSION {
            Some(format!("this master speaks replication protocol version {PROTOCOL_VERSION}, the slave {version}"))
        } else if c.broker_role == BrokerRole::Slave {
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
        tracing::warn!(%peer, broker_id, %reason, "replication: slave refused");
        write_frame(&mut wr, &Frame::Refuse { reason: reason.clone() }, housekeeping).await?;
        return Err(HaError::Refused(reason));
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
}
