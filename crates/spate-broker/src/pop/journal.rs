//! Where the pop state lives: every [`PopRecord`] is a message of the
//! system topic `RMQ_SYS_SPATE_POP` (queue 0) in the commit log, appended
//! under the pop lock (so the log's order is the order of the changes) and
//! flushed under the broker's flush policy before the request that made it
//! is answered. The log carries it to slaves like any message; a broker
//! that becomes master, or starts, replays the topic from its latest
//! snapshot (the whole state as `Queue` records, written by the revive task
//! every `popSnapshotIntervalMillis` or `popSnapshotRecords`), or from its
//! first retained message.
//!
//! Retention may delete the oldest records: what is left is always a
//! suffix. Each queue then starts from the group's committed offset, which
//! the pop path keeps at the queue's first unfinished message
//! ([`crate::pop::state::QueueProgress::done_below`]), so a lost prefix can
//! only cause redelivery, never a lost message.

use std::net::SocketAddr;

use spate_common::message::{self, NewMessage};
use spate_store::{GetStatus, MessageStore, ReadLimits};

use super::state::{PopLimits, PopRecord, PopState};
use crate::offsets::ConsumerOffsets;

/// The journal's topic (refused to clients with every other `RMQ_SYS_*`).
pub const JOURNAL_TOPIC: &str = "RMQ_SYS_SPATE_POP";

/// The offset-table group whose offset on the journal is where the latest
/// durable snapshot begins: a replay starts there. In the consumer-offset
/// table so it is persisted and copied to slaves with the others.
pub const SNAPSHOT_GROUP: &str = "%SPATE_POP%";

/// Records read per step of a replay.
const REPLAY_BATCH: usize = 512;

/// The record as the message that stores it.
pub fn to_message(record: &PopRecord, host: SocketAddr, now_ms: i64) -> NewMessage {
    // A record is plain data: its encoding cannot fail.
    let body = serde_json::to_vec(record).unwrap_or_default();
    NewMessage {
        topic: JOURNAL_TOPIC.to_string(),
        queue_id: 0,
        flag: 0,
        body: body.into(),
        properties: String::new(),
        sys_flag: 0,
        born_timestamp: now_ms,
        born_host: host,
        store_host: host,
        reconsume_times: 0,
        prepared_tx_offset: 0,
    }
}

/// What a replay found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    pub records: usize,
    /// Records that did not decode (skipped, logged).
    pub unreadable: usize,
}

/// Rebuilds the pop state from the journal. Blocking: run it off the
/// async workers, after the store has dispatched what it holds.
pub fn replay(
    store: &MessageStore,
    limits: PopLimits,
    offsets: &ConsumerOffsets,
) -> Result<(PopState, Replayed), spate_store::StoreError> {
    let mut state = PopState::new(limits);
    let mut seen = Replayed::default();
    let first = store.min_offset_in_queue(JOURNAL_TOPIC, 0).max(0);
    let snapshot_at = offsets
        .query(SNAPSHOT_GROUP, JOURNAL_TOPIC, 0)
        .filter(|at| *at > first && begins_snapshot(store, *at))
        .unwrap_or(first);
    if snapshot_at > first {
        tracing::info!(at = snapshot_at, "pop journal replay starts at its latest snapshot");
    }
    let mut offset = snapshot_at;
    loop {
        let limits = ReadLimits { max_msgs: REPLAY_BATCH, max_bytes: 8 << 20, physical_end: u64::MAX };
        let got = store.get_messages_within(JOURNAL_TOPIC, 0, offset, limits, None, None)?;
        for raw in &got.messages {
            match message::decode_record(raw, false)
                .map_err(|e| e.to_string())
                .and_then(|r| serde_json::from_slice::<PopRecord>(r.body).map_err(|e| e.to_string()))
            {
                Ok(record) => {
                    let key = record.key();
                    if !state.is_known(&key) {
                        // The group's committed offset: where this queue
                        // stood if the records before these were retained away.
                        if let Some(at) = offsets.query(&key.group, &key.topic, key.queue_id) {
                            state.start_at(&key, at);
                        }
                    }
                    state.apply(&record);
                    seen.records += 1;
                }
                Err(why) => {
                    seen.unreadable += 1;
                    tracing::warn!(offset, %why, "an unreadable pop journal record was skipped");
                }
            }
        }
        // Units whose data retention deleted are passed over.
        let done =
            got.next_begin_offset <= offset || !matches!(got.status, GetStatus::Found | GetStatus::OffsetFoundNull);
        offset = got.next_begin_offset.max(offset);
        if done {
            return Ok((state, seen));
        }
    }
}

/// Whether the journal's record at `at` is the first of a snapshot. The
/// pointer to a snapshot is written once the snapshot is flushed, but a
/// log cut by a failover may have lost it, or hold another record there:
/// then the replay starts at the first retained record instead.
fn begins_snapshot(store: &MessageStore, at: i64) -> bool {
    let limits = ReadLimits { max_msgs: 1, max_bytes: 8 << 20, physical_end: u64::MAX };
    let Ok(got) = store.get_messages_within(JOURNAL_TOPIC, 0, at, limits, None, None) else {
        return false;
    };
    got.messages.first().is_some_and(|raw| {
        message::decode_record(raw, false).ok().is_some_and(|r| {
            r.queue_offset == at
                && matches!(serde_json::from_slice::<PopRecord>(r.body), Ok(PopRecord::Queue { part: 0, .. }))
        })
    })
}
