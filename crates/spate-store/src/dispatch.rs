//! The dispatcher: turns newly readable commit-log records into consume-queue
//! units and index entries, then tells listeners (long-polling pulls) which
//! queues grew.
//!
//! It reads the log itself rather than taking notes from the writer, so the
//! same code serves appends, a slave's replicated bytes and recovery. When
//! it is idle, or a pull waits for messages, the writer wakes it the moment
//! bytes become readable, so there is no delay on the path from append to a
//! waiting pull; while messages stream in and nobody waits it takes them in
//! rounds `dispatchBatchIntervalMillis` apart (`signal::DispatchWake`), so
//! a send does not cost a thread wake-up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use spate_common::message::{self, property, Probe};

use crate::commit_log::CommitLog;
use crate::consume_queue::{ConsumeQueueTable, CqUnit};
use crate::error::Result;
use crate::index::IndexService;

/// Called after a batch is dispatched with each queue that grew and its new
/// max offset. Must not block: it runs on the dispatcher thread.
pub type DispatchListener = Arc<dyn Fn(&str, i32, i64) + Send + Sync>;

/// Queues that grew in a batch: topic -> queue id -> new max offset.
type Grown = HashMap<String, HashMap<i32, i64, ahash::RandomState>, ahash::RandomState>;

/// Builds consume queues and the index from the commit log.
pub struct Dispatcher {
    pub(crate) commit_log: Arc<CommitLog>,
    pub(crate) queues: Arc<ConsumeQueueTable>,
    pub(crate) index: Option<Arc<IndexService>>,
    listener: Mutex<Option<DispatchListener>>,
    /// Held while a batch is dispatched; truncation takes it to pause us.
    pub(crate) lock: Mutex<()>,
    dispatched: AtomicU64,
    batch_bytes: usize,
}

impl Dispatcher {
    /// A dispatcher that starts at `from`.
    pub fn new(
        commit_log: Arc<CommitLog>,
        queues: Arc<ConsumeQueueTable>,
        index: Option<Arc<IndexService>>,
        from: u64,
        batch_bytes: usize,
    ) -> Self {
        Dispatcher {
            commit_log,
            queues,
            index,
            listener: Mutex::new(None),
            lock: Mutex::new(()),
            dispatched: AtomicU64::new(from),
            batch_bytes,
        }
    }

    /// Installs the listener told about grown queues.
    pub fn set_listener(&self, listener: DispatchListener) {
        *self.listener.lock() = Some(listener);
    }

    /// Offset up to which every record is in its consume queue and index.
    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Moves the dispatched offset back after a truncation. Caller holds `lock`.
    pub(crate) fn reset_to(&self, offset: u64) {
        self.dispatched.store(offset, Ordering::Release);
    }

    /// Dispatches everything readable now; returns whether it did anything.
    pub fn run_once(&self) -> Result<bool> {
        let _guard = self.lock.lock();
        self.dispatch_locked()
    }

    /// Dispatches what is readable on the calling thread, unless the
    /// dispatcher thread is at it, and only as far as that creates no file
    /// (a new queue, queue file or index file is left to that thread) and
    /// within one round of `dispatchBatchBytes`.
    /// Returns whether everything readable was dispatched; if not, the
    /// caller wakes the thread. Used while a pull waits, right after a send
    /// is answered, instead of a switch to the dispatcher thread and back.
    pub fn dispatch_inline(&self) -> bool {
        let Some(_guard) = self.lock.try_lock() else { return false };
        match self.dispatch_rounds(Mode::Inline) {
            Ok(Rounds { stopped, .. }) => !stopped,
            Err(e) => {
                // The thread meets the same error and handles it.
                tracing::debug!(error = %e, "inline dispatch stopped");
                false
            }
        }
    }

    /// As [`Dispatcher::run_once`], with `lock` already held.
    pub(crate) fn dispatch_locked(&self) -> Result<bool> {
        self.dispatch_rounds(Mode::Thread).map(|r| r.any)
    }

    fn dispatch_rounds(&self, mode: Mode) -> Result<Rounds> {
        let mut stopped = false;
        let mut grown = Grown::default();
        let mut any = false;
        loop {
            let from = self.dispatched();
            let readable = self.commit_log.readable_offset();
            if from >= readable {
                break;
            }
            let seg = self.commit_log.segment_for(from)?;
            let rel = from - seg.start_offset();
            let avail = seg.readable().saturating_sub(rel);
            // Borrowed, not copied: below the readable offset nothing is
            // written again, and truncation waits for our lock.
            let mut chunk = seg.bytes(rel, avail.min(self.batch_bytes as u64) as usize);
            let mut at = 0usize;
            let mut next = from;
            while at < chunk.len() {
                match message::probe(&chunk[at..]) {
                    Probe::Record(size) => {
                        if at + size > chunk.len() {
                            if at == 0 {
                                // A record bigger than the batch: read it whole.
                                chunk = seg.bytes(rel, size.min(avail as usize));
                                if size > chunk.len() {
                                    break;
                                }
                                continue;
                            }
                            break;
                        }
                        if !self.dispatch_record(&chunk[at..at + size], next, &mut grown, mode)? {
                            stopped = true;
                            break;
                        }
                        at += size;
                        next += size as u64;
                    }
                    Probe::Blank => {
                        next = seg.end_offset();
                        break;
                    }
                    Probe::End | Probe::Invalid => {
                        tracing::error!(offset = next, "dispatcher found no record below the readable offset");
                        self.commit_log.fail(format!("commit log unreadable at {next}"));
                        return Ok(Rounds { any, stopped: true });
                    }
                }
            }
            if next == from {
                break;
            }
            // Listeners hear of a batch before the dispatched offset covers
            // it: "dispatched past X" then implies "told about X".
            self.notify(&mut grown);
            self.dispatched.store(next, Ordering::Release);
            any = true;
            if stopped {
                break;
            }
            if mode == Mode::Inline {
                // One round (`dispatchBatchBytes`) at most on a runtime
                // worker; a backlog beyond it is the thread's.
                stopped = self.commit_log.readable_offset() > next;
                break;
            }
        }
        Ok(Rounds { any, stopped })
    }

    fn notify(&self, grown: &mut Grown) {
        if grown.is_empty() {
            return;
        }
        let listener = self.listener.lock().clone();
        for (topic, queues) in grown.drain() {
            for (queue_id, max) in queues {
                if let Some(listener) = &listener {
                    listener(&topic, queue_id, max);
                }
            }
        }
    }

    /// Puts one record's unit and index entries. Inline, returns false
    /// having done nothing when that would create a file.
    fn dispatch_record(&self, bytes: &[u8], offset: u64, grown: &mut Grown, mode: Mode) -> Result<bool> {
        let rec = message::decode_record(bytes, false)?;
        debug_assert_eq!(rec.physical_offset as u64, offset);
        if !crate::commit_log::valid_queue_id(rec.queue_id) {
            tracing::error!(offset, queue_id = rec.queue_id, "record with an impossible queue id not dispatched");
            return Ok(true);
        }
        // Only an older build could have appended it; its name must never
        // become a consume-queue path.
        if message::validate_topic(rec.topic).is_err() {
            tracing::error!(offset, "record whose topic is not a valid name not dispatched");
            return Ok(true);
        }
        let found = message::find_properties(
            rec.properties,
            [property::KEYS, property::UNIQ_KEY, property::TAGS, property::TIMER_OUT_MS],
        );
        let [keys, uniq, tags, timer_out] = found;
        let queue = match mode {
            Mode::Thread => self.queues.get_or_create(rec.topic, rec.queue_id)?,
            Mode::Inline => {
                let entries =
                    keys.map_or(0, |k| k.split(' ').filter(|k| !k.is_empty()).count()) + usize::from(uniq.is_some());
                let index_fits = match &self.index {
                    Some(index) => index.has_room_for(u32::try_from(entries).unwrap_or(u32::MAX)),
                    None => true,
                };
                match self.queues.get(rec.topic, rec.queue_id) {
                    Some(q) if index_fits && q.has_room_for(rec.queue_offset) => q,
                    _ => return Ok(false),
                }
            }
        };
        let tags_code = message::queue_tags_code_of(rec.topic, tags, timer_out);
        let unit = CqUnit { physical_offset: offset, size: rec.total_size as u32, tags_code };
        queue.put(rec.queue_offset, unit)?;
        // Looked up by &str: no allocation per record once a topic is seen.
        match grown.get_mut(rec.topic) {
            Some(queues) => {
                queues.insert(rec.queue_id, rec.queue_offset + 1);
            }
            None => {
                let mut queues = HashMap::default();
                queues.insert(rec.queue_id, rec.queue_offset + 1);
                grown.insert(rec.topic.to_string(), queues);
            }
        }
        if let Some(index) = &self.index {
            if let Some(keys) = keys {
                for key in keys.split(' ').filter(|k| !k.is_empty()) {
                    index.put(rec.topic, key, offset, rec.store_timestamp)?;
                }
            }
            if let Some(uniq) = uniq {
                index.put(rec.topic, uniq, offset, rec.store_timestamp)?;
            }
        }
        Ok(true)
    }
}

/// Where a dispatch runs: the dispatcher thread does everything; inline
/// (on a runtime worker) it must not create a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Thread,
    Inline,
}

/// What a dispatch did: anything, and whether it stopped short of the
/// readable end (inline, before a record that needs a file).
struct Rounds {
    any: bool,
    stopped: bool,
}
