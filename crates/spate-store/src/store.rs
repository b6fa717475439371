//! [`MessageStore`]: the store's public face. Opens (and recovers) the
//! commit log, consume queues and index, runs the background threads, and
//! offers the operations the broker and replication need.

use std::fs::File;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use spate_common::message::{self, property, NewMessage};

use crate::allocator::{Allocator, WriteBufferPool};
use crate::checkpoint::{Checkpoint, EpochEntry, EpochFile};
use crate::commit_log::{now_ms, AppendResult, CommitLog};
use crate::config::StoreConfig;
use crate::consume_queue::{ConsumeQueue, ConsumeQueueTable};
use crate::dispatch::{DispatchListener, Dispatcher};
use crate::error::{Result, StoreError};
use crate::flush::{FlushPolicy, FlushWait, Flusher};
use crate::index::IndexService;
use crate::retention::{self, RetentionTrigger};
use crate::signal::{DispatchWake, Signal, UrgentDispatch};

/// Outcome of storing one message: where it is, and its durability wait.
#[derive(Debug)]
pub struct PutResult {
    /// Offsets and store time.
    pub append: AppendResult,
    /// Resolves when the flush policy's promise holds.
    pub flush: FlushWait,
}

/// Outcome of storing a batch.
#[derive(Debug)]
pub struct PutBatchResult {
    /// One entry per message, in order.
    pub appends: Vec<AppendResult>,
    /// Resolves when the whole batch is durable.
    pub flush: FlushWait,
}

/// Why a read from a consume queue found what it found (RocketMQ's
/// GetMessageStatus; the broker maps these to pull response codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetStatus {
    /// Messages returned.
    Found,
    /// Units scanned, none passed the filter.
    NoMatchedMessage,
    /// The queue does not exist.
    NoMatchingQueue,
    /// The queue is empty.
    NoMessageInQueue,
    /// The offset is below the queue's minimum.
    OffsetTooSmall,
    /// The offset equals the maximum: nothing new yet.
    OffsetOverflowOne,
    /// The offset is beyond the maximum.
    OffsetOverflowBadly,
    /// The units point at commit-log data already deleted.
    OffsetFoundNull,
}

/// A filter on a whole stored record (e.g. a SQL92 property filter): false
/// drops it.
pub type RecordFilter = dyn Fn(&[u8]) -> bool;

/// How much one read may return.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// Most messages (also capped by `maxTransferCountOnMessageInMemory`).
    pub max_msgs: usize,
    /// About this many bytes at most (also capped by `maxTransferBytesOnMessageInMemory`).
    pub max_bytes: usize,
    /// Only messages ending at or below this commit-log offset (`u64::MAX`:
    /// no bound). Replication's confirm offset, so consumers never read a
    /// message a failover could still cut.
    pub physical_end: u64,
}

/// Messages read from a consume queue.
#[derive(Debug)]
pub struct GetResult {
    /// Outcome.
    pub status: GetStatus,
    /// Stored records, as bytes in the commit-log layout.
    pub messages: Vec<Vec<u8>>,
    /// Where the next read should begin.
    pub next_begin_offset: i64,
    /// Queue minimum at the time of the read.
    pub min_offset: i64,
    /// Queue maximum at the time of the read.
    pub max_offset: i64,
}

/// Counters and positions for metrics and tests.
#[derive(Debug, Clone)]
pub struct StoreStats {
    /// Oldest commit-log offset.
    pub min_offset: u64,
    /// Commit-log end.
    pub max_offset: u64,
    /// Offset below which readers may read.
    pub readable_offset: u64,
    /// Offset below which data is on disk.
    pub flushed_offset: u64,
    /// Offset below which consume queues and index are built.
    pub dispatched_offset: u64,
    /// Segments rolled over since open.
    pub segments_rolled: u64,
    /// Segments on disk.
    pub segment_count: usize,
    /// Longest wait of an append for a new segment (us).
    pub roll_wait_us_max: u64,
    /// Free write buffers, with read/write separation.
    pub write_buffers_available: Option<usize>,
    /// Why writes are refused, if they are.
    pub not_writable_reason: Option<String>,
    /// Commit-log flush passes that synced data.
    pub syncs: u64,
    /// Their total duration (us).
    pub sync_us_total: u64,
}

/// What recovery did on open.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The previous run did not shut down cleanly.
    pub after_crash: bool,
    /// Commit-log end after recovery.
    pub end_offset: u64,
    /// What was cut from the tail, if anything.
    pub damage: Option<String>,
    /// Intact records kept in place that fail a check appends make now
    /// (offset, why); readers skip what they cannot use.
    pub kept_damaged: Vec<(u64, String)>,
    /// Where validation started.
    pub scanned_from: u64,
    /// Where re-dispatch started.
    pub redispatched_from: u64,
}

/// How long [`MessageStore::read_record`] waits for a just-written record to
/// reach its consume queue (dispatch runs microseconds behind appends).
pub const READ_RECORD_DISPATCH_WAIT: Duration = Duration::from_millis(500);

struct Inner {
    config: StoreConfig,
    commit_log: Arc<CommitLog>,
    queues: Arc<ConsumeQueueTable>,
    index: Option<Arc<IndexService>>,
    dispatcher: Arc<Dispatcher>,
    flusher: Arc<Flusher>,
    allocator: Arc<Allocator>,
    epochs: Mutex<EpochFile>,
    checkpoint_path: PathBuf,
    abort_path: PathBuf,
    housekeeping: Signal,
    stopping: AtomicBool,
    /// Serializes checkpoints; holds the index's last flush they track.
    checkpoint_lock: Mutex<IndexFlushed>,
    _lock_file: File,
}

/// The index's last flush: when, and up to which dispatch point.
struct IndexFlushed {
    at: Instant,
    dispatched: u64,
}

/// Whether a checkpoint must flush the index whatever its interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexFlush {
    /// Only once `flushIntervalIndex` has passed (the periodic checkpoint).
    WhenDue,
    /// Now: opening, truncating, deleting a topic, an explicit flush, shutdown.
    Now,
}

/// The message store. Cloneable handles are not offered: share it in an
/// `Arc`. Dropping it shuts it down cleanly.
pub struct MessageStore {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    recovery: RecoveryReport,
    closed: AtomicBool,
}

impl MessageStore {
    /// Opens the store at `config.store_path_root_dir`, recovering after a
    /// crash, and starts its threads. Blocking; call it before serving.
    pub fn open(config: StoreConfig) -> Result<MessageStore> {
        config.validate()?;
        let root = config.store_path_root_dir.clone();
        std::fs::create_dir_all(&root).map_err(|e| StoreError::io(&root, e))?;
        let lock_file = lock_root(&root)?;
        let checkpoint_path = root.join("checkpoint");
        let abort_path = root.join("abort");
        let after_crash = abort_path.exists();
        let checkpoint = Checkpoint::load(&checkpoint_path);
        let scan_from = checkpoint.map(|c| c.commit_log_flushed.min(c.dispatched_flushed)).unwrap_or(0);

        // With read/write separation appends never touch the mapping, so
        // warming it would only dirty a segment of zeros for nothing.
        let warm = crate::allocator::WarmPolicy {
            touch: config.warm_mapped_file_enable && !config.transient_store_pool_enable,
            lock: config.lock_mapped_file_enable,
            through_file: config.flush_disk_type == crate::config::FlushDiskType::Async,
        };
        let allocator = Arc::new(Allocator::new(config.commit_log_dir(), config.mapped_file_size_commit_log, warm));
        let mut threads = Vec::new();
        let a = allocator.clone();
        threads.push(spawn("spate-allocator", move || a.run())?);
        let pool = if config.transient_store_pool_enable {
            // Pool buffers are always locked, as upstream's are: the point of
            // them is memory the writer can never fault on.
            Some(WriteBufferPool::new(
                config.transient_store_pool_size,
                config.mapped_file_size_commit_log as usize,
                true,
            )?)
        } else {
            None
        };
        let readable_wake = Arc::new(DispatchWake::default());
        let commit_signal = Arc::new(Signal::default());
        let (log, scan) = CommitLog::open(
            &config.commit_log_dir(),
            config.mapped_file_size_commit_log,
            scan_from,
            allocator.clone(),
            config.allocate_mapped_file_timeout,
            pool,
            readable_wake.clone(),
            commit_signal.clone(),
        )?;
        let commit_log = Arc::new(log);
        let end = scan.end_offset;

        let queues =
            Arc::new(ConsumeQueueTable::open(&config.consume_queue_dir(), config.mapped_file_size_consume_queue)?);
        for cq in queues.all() {
            cq.truncate_to_phys(end)?;
        }
        let index = if config.message_index_enable {
            let index = IndexService::open(&config.index_dir(), config.max_hash_slot_num, config.max_index_num)?;
            index.truncate_after(end)?;
            Some(Arc::new(index))
        } else {
            None
        };
        let redispatch_from =
            checkpoint.map(|c| c.dispatched_flushed).unwrap_or(0).min(end).max(commit_log.min_offset());
        let dispatcher = Arc::new(Dispatcher::new(
            commit_log.clone(),
            queues.clone(),
            index.clone(),
            redispatch_from,
            config.dispatch_batch_bytes,
        ));
        dispatcher.run_once()?;
        let weak = Arc::downgrade(&dispatcher);
        readable_wake.set_inline(Box::new(move || weak.upgrade().is_some_and(|d| d.dispatch_inline())));
        {
            let mut w = commit_log.lock_writer();
            for cq in queues.all() {
                w.set_next_queue_offset(cq.topic(), cq.queue_id(), cq.max_offset());
            }
        }
        let mut epochs = EpochFile::load(root.join("epochs"))?;
        epochs.truncate_after(end)?;

        let flusher = Arc::new(Flusher::new(FlushPolicy::from_config(&config), commit_log.clone()));
        let inner = Arc::new(Inner {
            config,
            commit_log,
            queues,
            index,
            dispatcher,
            flusher,
            allocator,
            epochs: Mutex::new(epochs),
            checkpoint_path,
            abort_path,
            housekeeping: Signal::default(),
            stopping: AtomicBool::new(false),
            // The old checkpoint vouched for the index up to where dispatch
            // starts again; the checkpoint below flushes it in any case.
            checkpoint_lock: Mutex::new(IndexFlushed { at: Instant::now(), dispatched: redispatch_from }),
            _lock_file: lock_file,
        });
        inner.write_checkpoint(IndexFlush::Now)?;
        File::create(&inner.abort_path).map_err(|e| StoreError::io(&inner.abort_path, e))?;
        crate::segment::sync_dir(&root)?;

        let recovery = RecoveryReport {
            after_crash,
            end_offset: end,
            damage: scan.damage,
            kept_damaged: scan.kept_damaged,
            scanned_from: scan_from,
            redispatched_from: redispatch_from,
        };
        if after_crash {
            tracing::warn!(?recovery, "store recovered after an unclean shutdown");
        }
        threads.extend(start_threads(&inner, commit_signal)?);
        Ok(MessageStore { inner, threads: Mutex::new(threads), recovery, closed: AtomicBool::new(false) })
    }

    /// What recovery did when this store was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The settings in force.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The durability policy in force.
    pub fn flush_policy(&self) -> FlushPolicy {
        self.inner.flusher.policy()
    }

    /// Stores one message. Returns once it is in memory; `flush` resolves
    /// when it is durable per the flush policy. An error means the message
    /// is not acknowledged (with sync flush it may still reach the disk).
    pub fn put_message(&self, msg: &NewMessage) -> Result<PutResult> {
        self.check_open()?;
        let append = self.inner.commit_log.append(msg, self.inner.config.max_message_size)?;
        let flush = self.inner.flusher.wait_for(append.end_offset())?;
        Ok(PutResult { append, flush })
    }

    /// Whether appending about `bytes` might have to wait for the next
    /// segment: the current one has less than `bytes` plus a margin of two
    /// largest messages left (or there is none yet). Callers on an async
    /// runtime hand such appends to a blocking thread; every other append
    /// is a memory copy. The margin covers appends racing this check.
    pub fn append_may_wait(&self, bytes: usize) -> bool {
        let margin = 2 * self.inner.config.max_message_size as u64;
        self.inner.commit_log.room_in_current_segment() < bytes as u64 + margin
    }

    /// Stores messages contiguously (all in one segment).
    pub fn put_messages(&self, msgs: &[NewMessage]) -> Result<PutBatchResult> {
        self.check_open()?;
        let appends = self.inner.commit_log.append_batch(msgs, self.inner.config.max_message_size)?;
        let end = appends.last().map(|a| a.end_offset()).unwrap_or(0);
        let flush = self.inner.flusher.wait_for(end)?;
        Ok(PutBatchResult { appends, flush })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(StoreError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Whether an append has held the writer longer than
    /// `osPageCacheBusyTimeOutMills` (the broker then rejects sends as busy).
    pub fn is_os_page_cache_busy(&self) -> bool {
        self.inner.commit_log.append_in_progress_for().is_some_and(|d| d > self.inner.config.os_page_cache_busy_timeout)
    }

    /// Tells `listener` about every queue that grows (long polling).
    pub fn set_dispatch_listener(&self, listener: DispatchListener) {
        self.inner.dispatcher.set_listener(listener);
    }

    /// [`get_messages`](Self::get_messages) when it can be served from
    /// memory, so it may run on an async worker thread: the reader is at the
    /// queue's tail (no more than `maxTransferCountOnMessageInMemory` units
    /// behind), and the units and the records they point to are in the page
    /// cache (checked with `mincore`, at most one commit-log segment and
    /// `inlineReadMaxBytes`). `None`: read on a blocking thread instead.
    /// Answers that touch no file (empty queue, offset out of range) are
    /// always given here.
    pub fn get_messages_if_resident(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        max_msgs: usize,
        max_bytes: usize,
        filter: Option<&dyn Fn(i64) -> bool>,
    ) -> Result<Option<GetResult>> {
        let limits = ReadLimits { max_msgs, max_bytes, physical_end: u64::MAX };
        self.get_messages_if_resident_within(topic, queue_id, offset, limits, filter, None)
    }

    /// [`get_messages_if_resident`](Self::get_messages_if_resident) within `limits`.
    pub fn get_messages_if_resident_within(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        limits: ReadLimits,
        filter: Option<&dyn Fn(i64) -> bool>,
        record_filter: Option<&RecordFilter>,
    ) -> Result<Option<GetResult>> {
        if let Some(cq) = self.inner.queues.get(topic, queue_id) {
            let (min, max) = (cq.min_offset(), cq.max_offset());
            if min <= offset && offset < max {
                let at_tail = (max - offset) as usize <= self.inner.config.max_transfer_count_on_message_in_memory;
                if !at_tail || !cq.is_resident_from(offset) {
                    return Ok(None);
                }
                let (Some(first), Some(last)) = (cq.get(offset), cq.get(max - 1)) else { return Ok(None) };
                let end = last.physical_offset + last.size as u64;
                let len = end.saturating_sub(first.physical_offset);
                if first.size == 0
                    || len > self.inner.config.inline_read_max_bytes as u64
                    || !self.inner.commit_log.is_resident(first.physical_offset, len as usize)
                {
                    return Ok(None);
                }
            }
        }
        self.get_messages_within(topic, queue_id, offset, limits, filter, record_filter).map(Some)
    }

    /// Reads up to `max_msgs` messages (and about `max_bytes`) from a queue,
    /// starting at `offset`, keeping those whose tag hash passes `filter`.
    /// Both limits are capped by `maxTransferCountOnMessageInMemory` and
    /// `maxTransferBytesOnMessageInMemory`.
    pub fn get_messages(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        max_msgs: usize,
        max_bytes: usize,
        filter: Option<&dyn Fn(i64) -> bool>,
    ) -> Result<GetResult> {
        let limits = ReadLimits { max_msgs, max_bytes, physical_end: u64::MAX };
        self.get_messages_within(topic, queue_id, offset, limits, filter, None)
    }

    /// [`get_messages`](Self::get_messages) within `limits`: the scan also
    /// stops at the first message ending past `limits.physical_end`, which
    /// is neither returned nor passed over (a filter that skips units does
    /// not carry the next offset past it). With nothing before it, the
    /// answer is `OffsetOverflowOne` at `offset`: nothing readable yet.
    ///
    /// `record_filter`, when given, sees each stored record that passed the
    /// tag filter and drops those it refuses (a property filter).
    pub fn get_messages_within(
        &self,
        topic: &str,
        queue_id: i32,
        offset: i64,
        limits: ReadLimits,
        filter: Option<&dyn Fn(i64) -> bool>,
        record_filter: Option<&RecordFilter>,
    ) -> Result<GetResult> {
        let ReadLimits { max_msgs, max_bytes, physical_end } = limits;
        let Some(cq) = self.inner.queues.get(topic, queue_id) else {
            return Ok(GetResult::empty(GetStatus::NoMatchingQueue, 0, 0, 0));
        };
        let (min, max) = (cq.min_offset(), cq.max_offset());
        let status = if max == 0 {
            Some((GetStatus::NoMessageInQueue, 0))
        } else if offset < min {
            Some((GetStatus::OffsetTooSmall, min))
        } else if offset == max {
            Some((GetStatus::OffsetOverflowOne, offset))
        } else if offset > max {
            Some((GetStatus::OffsetOverflowBadly, max))
        } else {
            None
        };
        if let Some((status, next)) = status {
            return Ok(GetResult::empty(status, next, min, max));
        }
        let max_msgs = max_msgs.min(self.inner.config.max_transfer_count_on_message_in_memory);
        let max_bytes = max_bytes.min(self.inner.config.max_transfer_bytes_on_message_in_memory);
        // A truncation racing this read could leave torn units or records:
        // then answer "nothing yet" and let the consumer come back.
        let log = &self.inner.commit_log;
        let Ok(generation) = log.read_begin(0) else {
            return Ok(GetResult::empty(GetStatus::NoMatchedMessage, offset, min, max));
        };
        // Bound the scan, as upstream does, so a filter matching nothing
        // cannot make one pull walk the whole queue.
        let scan_max = max_msgs.max(1).max(800);
        let log_min = self.inner.commit_log.min_offset();
        let mut messages = Vec::new();
        let (mut next, mut bytes, mut scanned, mut gone) = (offset, 0usize, 0usize, 0usize);
        let mut bounded = false;
        'outer: while scanned < scan_max && next < max {
            let units = cq.get_range(next, scan_max - scanned);
            if units.is_empty() {
                break;
            }
            for unit in units {
                if messages.len() >= max_msgs || (bytes > 0 && bytes + unit.size as usize > max_bytes) {
                    break 'outer;
                }
                if unit.size > 0 && unit.physical_offset + u64::from(unit.size) > physical_end {
                    bounded = true;
                    break 'outer;
                }
                next += 1;
                scanned += 1;
                if unit.size == 0 {
                    continue;
                }
                if unit.physical_offset < log_min {
                    gone += 1;
                    continue;
                }
                if filter.is_some_and(|f| !f(unit.tags_code)) {
                    continue;
                }
                match self.inner.commit_log.read(unit.physical_offset, unit.size as usize) {
                    Ok(rec) if record_filter.is_some_and(|f| !f(&rec)) => {}
                    Ok(rec) => {
                        bytes += rec.len();
                        messages.push(rec);
                    }
                    Err(_) => gone += 1,
                }
            }
        }
        if log.read_end(0, generation).is_err() {
            return Ok(GetResult::empty(GetStatus::NoMatchedMessage, offset, min, max));
        }
        let status = if !messages.is_empty() {
            GetStatus::Found
        } else if bounded && scanned == 0 {
            GetStatus::OffsetOverflowOne
        } else if gone > 0 && gone == scanned {
            GetStatus::OffsetFoundNull
        } else {
            GetStatus::NoMatchedMessage
        };
        Ok(GetResult { status, messages, next_begin_offset: next, min_offset: min, max_offset: max })
    }

    /// The queue offset of the first message of a queue ending past
    /// `physical_end` (the queue's max offset if none does): where a
    /// consumer may start when only bytes below `physical_end` count.
    pub fn max_offset_in_queue_below(&self, topic: &str, queue_id: i32, physical_end: u64) -> i64 {
        let Some(cq) = self.consume_queue(topic, queue_id) else { return 0 };
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        // Units ascend in physical offset: find the first one past the end.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match cq.get(mid) {
                Some(u) if u.physical_offset + u64::from(u.size) <= physical_end => lo = mid + 1,
                _ => hi = mid,
            }
        }
        lo
    }

    /// The consume queue of (topic, queue id), if it exists.
    pub fn consume_queue(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.inner.queues.get(topic, queue_id)
    }

    /// Removes a topic's consume queues and their files. Its records stay
    /// in the commit log until retention removes them; a later message to
    /// the topic starts its queues again at offset 0. An admin operation:
    /// it holds the writer lock while the files go (appends wait).
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let inner = &self.inner;
        let _dispatch = inner.dispatcher.lock.lock();
        let mut w = inner.commit_log.lock_writer();
        // Everything appended so far is dispatched first, so no unit of the
        // topic arrives after its queues are gone.
        inner.commit_log.commit_pending()?;
        inner.dispatcher.dispatch_locked()?;
        // A checkpoint past the topic's last record before its files go, so
        // recovery after a crash never dispatches its old records again
        // (into a topic of the same name made meanwhile, or bringing this
        // one back); a crash before it leaves the topic whole.
        inner.write_checkpoint(IndexFlush::Now)?;
        inner.queues.delete_topic(topic)?;
        w.queue_offsets.remove(topic);
        drop(w);
        tracing::info!(topic, "consume queues deleted");
        Ok(())
    }

    /// Every topic with a consume queue (what the log holds messages of).
    pub fn topics(&self) -> Vec<String> {
        self.inner.queues.topics()
    }

    /// Queue ids with a consume queue for `topic`.
    pub fn queue_ids(&self, topic: &str) -> Vec<i32> {
        self.inner.queues.queue_ids(topic)
    }

    /// Max logical offset of a queue (0 if it does not exist).
    pub fn max_offset_in_queue(&self, topic: &str, queue_id: i32) -> i64 {
        self.consume_queue(topic, queue_id).map(|q| q.max_offset()).unwrap_or(0)
    }

    /// Min logical offset of a queue (0 if it does not exist).
    pub fn min_offset_in_queue(&self, topic: &str, queue_id: i32) -> i64 {
        self.consume_queue(topic, queue_id).map(|q| q.min_offset()).unwrap_or(0)
    }

    /// Store time of the record at `physical_offset`.
    pub fn store_time_at(&self, physical_offset: u64) -> Result<i64> {
        let rec = self.inner.commit_log.read_record(physical_offset)?;
        Ok(message::decode_record(&rec, false)?.store_timestamp)
    }

    /// First logical offset of the queue whose message was stored at or
    /// after `timestamp_ms` (the max offset if none).
    pub fn offset_by_time(&self, topic: &str, queue_id: i32, timestamp_ms: i64) -> Result<i64> {
        let Some(cq) = self.consume_queue(topic, queue_id) else { return Ok(0) };
        let (mut lo, mut hi) = (cq.min_offset(), cq.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let before = match cq.get(mid) {
                Some(u) if u.size > 0 => {
                    self.store_time_at(u.physical_offset).map(|t| t < timestamp_ms).unwrap_or(true)
                }
                _ => true,
            };
            if before {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        Ok(lo)
    }

    /// Store time of the oldest message in a queue.
    pub fn earliest_store_time(&self, topic: &str, queue_id: i32) -> Result<Option<i64>> {
        let Some(cq) = self.consume_queue(topic, queue_id) else { return Ok(None) };
        match cq.get(cq.min_offset()) {
            Some(u) if u.size > 0 => self.store_time_at(u.physical_offset).map(Some),
            _ => Ok(None),
        }
    }

    /// The stored record at `physical_offset` (view by offset message id,
    /// send-back, a transaction's half). The offset comes from a client, so
    /// it is checked to be a record's start, not bytes inside a body that
    /// look like one: the record must be intact (body CRC), name its own
    /// offset, and be the one its consume queue's unit points at. A record
    /// above the dispatched offset is waited for up to
    /// [`READ_RECORD_DISPATCH_WAIT`]. Blocking.
    pub fn read_record(&self, physical_offset: u64) -> Result<Vec<u8>> {
        let bytes = self.inner.commit_log.read_record(physical_offset)?;
        let not_here = |reason| StoreError::BadOffset { offset: physical_offset, reason };
        let rec = message::decode_intact(&bytes, true).map_err(|_| not_here("no intact record starts here"))?;
        if rec.physical_offset as u64 != physical_offset {
            return Err(not_here("no record starts here"));
        }
        self.wait_dispatched_to(physical_offset + 1, READ_RECORD_DISPATCH_WAIT);
        let unit = self.consume_queue(rec.topic, rec.queue_id).and_then(|cq| cq.get(rec.queue_offset));
        if unit.is_none_or(|u| u.physical_offset != physical_offset) {
            return Err(not_here("no record starts here"));
        }
        Ok(bytes)
    }

    /// Messages of `topic` whose `KEYS` contain `key` or whose unique id is
    /// `key`, stored within `[begin_ms, end_ms]`, newest first, at most `max`
    /// (capped by `maxMsgsNumBatch`).
    pub fn query_by_key(&self, topic: &str, key: &str, begin_ms: i64, end_ms: i64, max: usize) -> Result<Vec<Vec<u8>>> {
        let Some(index) = &self.inner.index else { return Ok(Vec::new()) };
        let max = max.min(self.inner.config.max_msgs_num_batch);
        let candidates = index.query(topic, key, begin_ms, end_ms, max.saturating_mul(4).max(max));
        let mut out = Vec::new();
        for offset in candidates {
            if out.len() >= max {
                break;
            }
            let Ok(bytes) = self.inner.commit_log.read_record(offset) else { continue };
            let Ok(rec) = message::decode_record(&bytes, false) else { continue };
            let has_key = rec.property(property::KEYS).is_some_and(|ks| ks.split(' ').any(|k| k == key))
                || rec.property(property::UNIQ_KEY) == Some(key);
            if rec.topic == topic && has_key && (begin_ms..=end_ms).contains(&rec.store_timestamp) {
                out.push(bytes);
            }
        }
        Ok(out)
    }

    /// The epoch list, oldest first.
    pub fn epochs(&self) -> Vec<EpochEntry> {
        self.inner.epochs.lock().entries().to_vec()
    }

    /// Starts `epoch` at the current end of the log (a new master, or a
    /// slave reaching the first byte its master wrote in `epoch`).
    pub fn begin_epoch(&self, epoch: u32) -> Result<EpochEntry> {
        let _w = self.inner.commit_log.lock_writer();
        let start = self.inner.commit_log.max_offset();
        self.inner.epochs.lock().begin(epoch, start)?;
        Ok(EpochEntry { epoch, start_offset: start })
    }

    /// Cuts the log at `offset` (a record boundary): consume queues, index,
    /// epochs and the checkpoint follow. Blocks appends while it runs.
    pub fn truncate(&self, offset: u64) -> Result<()> {
        let inner = &self.inner;
        let _dispatch = inner.dispatcher.lock.lock();
        let mut w = inner.commit_log.lock_writer();
        inner.commit_log.commit_pending()?;
        inner.dispatcher.dispatch_locked()?;
        inner.commit_log.truncate_locked(&mut w, offset)?;
        for cq in inner.queues.all() {
            cq.truncate_to_phys(offset)?;
        }
        if let Some(index) = &inner.index {
            index.truncate_after(offset)?;
        }
        inner.dispatcher.reset_to(inner.dispatcher.dispatched().min(offset));
        w.queue_offsets.clear();
        for cq in inner.queues.all() {
            w.set_next_queue_offset(cq.topic(), cq.queue_id(), cq.max_offset());
        }
        inner.epochs.lock().truncate_after(offset)?;
        // The old checkpoint may name offsets past the cut: replace it
        // before any append can be acknowledged.
        inner.write_checkpoint(IndexFlush::Now)?;
        drop(w);
        tracing::info!(offset, "store truncated");
        Ok(())
    }

    /// Up to `max_len` bytes of the log from `offset`, within one segment.
    pub fn read_raw(&self, offset: u64, max_len: usize) -> Result<Vec<u8>> {
        self.inner.commit_log.read_raw(offset, max_len)
    }

    /// Where the next raw read starts after `chunk`, which `read_raw`
    /// returned for `offset`: past a blank marker, the next segment.
    pub fn raw_next_offset(&self, offset: u64, chunk: &[u8]) -> u64 {
        match spate_common::message::probe(chunk) {
            spate_common::message::Probe::Blank if chunk.len() >= 4 => {
                offset + i32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]).max(0) as u64
            }
            _ => offset + chunk.len() as u64,
        }
    }

    /// Whether the log's bytes `offset..offset + len` are in the page cache
    /// (one segment at most), so reading them cannot wait for the disk.
    pub fn log_is_resident(&self, offset: u64, len: usize) -> bool {
        self.inner.commit_log.is_resident(offset, len)
    }

    /// Appends bytes replicated from a master at `offset` (this log's end).
    /// Returns the new end and its durability wait.
    pub fn append_raw(&self, offset: u64, bytes: &[u8]) -> Result<(u64, FlushWait)> {
        self.check_open()?;
        let end = self.inner.commit_log.append_raw(offset, bytes)?;
        Ok((end, self.inner.flusher.wait_for(end)?))
    }

    /// Oldest commit-log offset.
    pub fn min_offset(&self) -> u64 {
        self.inner.commit_log.min_offset()
    }

    /// Commit-log end.
    pub fn max_offset(&self) -> u64 {
        self.inner.commit_log.max_offset()
    }

    /// Offset below which the log can be read (with read/write separation,
    /// what the committer has moved into the mapped file; else the end).
    /// A master replicates up to here.
    pub fn readable_offset(&self) -> u64 {
        self.inner.commit_log.readable_offset()
    }

    /// Offset below which everything is on disk.
    pub fn flushed_offset(&self) -> u64 {
        self.inner.commit_log.flushed_offset()
    }

    /// Offset below which consume queues and index are built.
    pub fn dispatched_offset(&self) -> u64 {
        self.inner.dispatcher.dispatched()
    }

    /// Positions and counters.
    pub fn stats(&self) -> StoreStats {
        let log = &self.inner.commit_log;
        StoreStats {
            min_offset: log.min_offset(),
            max_offset: log.max_offset(),
            readable_offset: log.readable_offset(),
            flushed_offset: log.flushed_offset(),
            dispatched_offset: self.inner.dispatcher.dispatched(),
            segments_rolled: log.segments_rolled(),
            segment_count: log.segment_count(),
            roll_wait_us_max: log.roll_wait_us_max(),
            write_buffers_available: log.write_buffers_available(),
            not_writable_reason: log.failure(),
            syncs: log.sync_stats().0,
            sync_us_total: log.sync_stats().1,
        }
    }

    /// Waits (bounded) until the commit log's next segment is prepared, so
    /// that a measurement starts with the allocator at rest rather than
    /// warming a segment beside the appends (`spate bench store`).
    pub fn wait_next_segment(&self, timeout: Duration) -> bool {
        self.inner.commit_log.wait_next_segment(timeout)
    }

    /// Waits (bounded) until consume queues and index cover everything
    /// readable now. For tests and orderly hand-overs.
    pub fn wait_dispatched(&self, timeout: Duration) -> bool {
        self.wait_dispatched_to(self.inner.commit_log.max_offset(), timeout)
    }

    /// Dispatches what is readable now rather than on the dispatcher's next
    /// round (a reader about to wait for it).
    pub fn wake_dispatcher(&self) {
        if self.inner.dispatcher.dispatched() < self.inner.commit_log.readable_offset() {
            self.inner.commit_log.readable_wake.wake();
        }
    }

    /// While the guard lives every append is dispatched at once (a pull
    /// waits for new messages), not on the dispatcher's next round.
    pub fn urgent_dispatch(&self) -> UrgentDispatch {
        let guard = self.inner.commit_log.readable_wake.urgent();
        // What arrived just before the guard existed is not left for the next round.
        self.wake_dispatcher();
        guard
    }

    /// Waits (polling every millisecond, blocking) until everything below
    /// `target` is dispatched; false on timeout.
    fn wait_dispatched_to(&self, target: u64, timeout: Duration) -> bool {
        self.wake_dispatcher();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.inner.dispatcher.dispatched() >= target {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    /// Flushes the commit log, consume queues and index now and writes the
    /// checkpoint. Blocking.
    pub fn flush(&self) -> Result<()> {
        let inner = &self.inner;
        inner.commit_log.commit_pending()?;
        inner.commit_log.flush()?;
        inner.dispatcher.run_once()?;
        inner.write_checkpoint(IndexFlush::Now)
    }

    /// Deletes expired (or, with a full disk, the oldest) commit-log
    /// segments, and what points into them. Returns segments deleted.
    pub fn run_retention(&self, now: SystemTime, trigger: RetentionTrigger) -> Result<usize> {
        self.inner.run_retention(now, trigger)
    }

    /// Stops the threads, flushes everything, writes the checkpoint and
    /// removes the abort marker. Idempotent.
    pub fn shutdown(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.stop_threads(false);
        self.flush()?;
        let inner = &self.inner;
        std::fs::remove_file(&inner.abort_path).map_err(|e| StoreError::io(&inner.abort_path, e))?;
        crate::segment::sync_dir(&inner.config.store_path_root_dir)?;
        Ok(())
    }

    fn stop_threads(&self, crash: bool) {
        let inner = &self.inner;
        inner.stopping.store(true, Ordering::Release);
        if crash {
            inner.flusher.skip_final_flush();
        }
        inner.flusher.shutdown();
        inner.allocator.shutdown();
        inner.housekeeping.notify();
        inner.commit_log.readable_wake.wake();
        inner.commit_log.commit_signal.notify();
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
    }

    /// Test support: stops like a killed process would (no final flush, no
    /// checkpoint, abort marker left). With `lose_unflushed`, also drops the
    /// commit-log bytes past the flushed offset, as a power loss would.
    /// Returns the end of the log as left behind (what recovery will find).
    #[doc(hidden)]
    pub fn crash(self, lose_unflushed: bool) -> u64 {
        self.closed.store(true, Ordering::Release);
        self.stop_threads(true);
        let log = &self.inner.commit_log;
        if lose_unflushed {
            let mut w = log.lock_writer();
            let flushed = log.flushed_offset();
            if let Err(e) = log.truncate_locked(&mut w, flushed) {
                tracing::error!(error = %e, "simulated power loss failed");
            }
        }
        // What a restarted process finds: committed bytes only (with
        // read/write separation, uncommitted buffer bytes die with it).
        log.readable_offset()
    }
}

impl Drop for MessageStore {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "store shutdown failed");
        }
    }
}

impl GetResult {
    fn empty(status: GetStatus, next: i64, min: i64, max: i64) -> Self {
        GetResult { status, messages: Vec::new(), next_begin_offset: next, min_offset: min, max_offset: max }
    }
}

impl Inner {
    /// Flushes consume queues (and the index when `index` says so or its
    /// interval has passed), then records how far they and the commit log
    /// are durable: the dispatch point is the lower of the two.
    fn write_checkpoint(&self, index: IndexFlush) -> Result<()> {
        let mut last = self.checkpoint_lock.lock();
        let dispatched = self.dispatcher.dispatched();
        for cq in self.queues.all() {
            cq.flush()?;
        }
        let dispatched_flushed = match &self.index {
            None => dispatched,
            Some(idx) => {
                if index == IndexFlush::Now || last.at.elapsed() >= self.config.flush_interval_index {
                    idx.flush()?;
                    *last = IndexFlushed { at: Instant::now(), dispatched };
                }
                last.dispatched.min(dispatched)
            }
        };
        let cp = Checkpoint {
            commit_log_flushed: self.commit_log.flushed_offset(),
            dispatched_flushed,
            written_at_ms: now_ms(),
        };
        cp.store(&self.checkpoint_path)
    }

    fn run_retention(&self, now: SystemTime, trigger: RetentionTrigger) -> Result<usize> {
        let c = &self.config;
        let used = retention::disk_used_percent(&c.store_path_root_dir);
        let Some(mode) =
            retention::plan(trigger, retention::local_hour(now), &c.delete_when, used, c.disk_max_used_space_ratio)
        else {
            return Ok(0);
        };
        let reserved = Duration::from_secs(c.file_reserved_time_hours * 3600);
        // Never delete what the consume queues have not caught up with.
        let limit = self.dispatcher.dispatched().min(self.commit_log.flushed_offset());
        const MAX_PER_RUN: usize = 10;
        let removed = self
            .commit_log
            .remove_oldest(limit, MAX_PER_RUN, |seg| retention::segment_expired(mode, seg.modified(), now, reserved));
        let count = removed.len();
        for seg in removed {
            let path = seg.path().to_path_buf();
            drop(seg);
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            tracing::info!(path = %path.display(), ?mode, "commit-log segment deleted by retention");
        }
        if count > 0 {
            let min = self.commit_log.min_offset();
            for cq in self.queues.all() {
                cq.correct_min_offset(min)?;
            }
            if let Some(index) = &self.index {
                index.delete_files_below(min)?;
            }
            self.epochs.lock().trim_before(min)?;
        }
        Ok(count)
    }
}

fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_string()).spawn(f).map_err(|e| StoreError::io(name, e))
}

/// Runs `step` until the store stops, parking on `signal` whenever a step
/// made no progress (the timeout only bounds a lost wake-up).
fn work_loop(inner: &Inner, signal: &Signal, mut step: impl FnMut() -> bool) {
    while !inner.stopping.load(Ordering::Acquire) {
        if !step() {
            signal.wait(Duration::from_millis(100));
        }
    }
}

fn start_threads(inner: &Arc<Inner>, commit: Arc<Signal>) -> Result<Vec<JoinHandle<()>>> {
    let mut threads = Vec::new();
    let i = inner.clone();
    threads.push(spawn("spate-flusher", move || i.flusher.run())?);
    let i = inner.clone();
    threads.push(spawn("spate-dispatcher", move || {
        let wake = i.commit_log.readable_wake.clone();
        wake.register_dispatcher();
        while !i.stopping.load(Ordering::Acquire) {
            match i.dispatcher.run_once() {
                // More may have come meanwhile: the next round after a nap
                // takes it all at once (see `DispatchWake`).
                Ok(true) => wake.nap(i.config.dispatch_batch_interval),
                Ok(false) => {
                    wake.park(Duration::from_millis(100), || i.commit_log.readable_offset() > i.dispatcher.dispatched())
                }
                Err(e) => {
                    // Without consume queues new messages cannot be consumed:
                    // refuse further writes with the reason, keep retrying.
                    i.commit_log.fail(format!("building consume queues failed: {e}"));
                    wake.park(Duration::from_millis(100), || false);
                }
            }
        }
    })?);
    if inner.config.transient_store_pool_enable {
        let i = inner.clone();
        threads.push(spawn("spate-committer", move || {
            // A commit failure already marked the log not writable.
            work_loop(&i, &commit, || matches!(i.commit_log.commit_pending(), Ok(true)))
        })?);
    }
    let i = inner.clone();
    threads.push(spawn("spate-housekeeping", move || {
        let mut last_clean = Instant::now();
        while !i.stopping.load(Ordering::Acquire) {
            i.housekeeping.wait(i.config.flush_interval_consume_queue);
            if i.stopping.load(Ordering::Acquire) {
                break;
            }
            if let Err(e) = i.write_checkpoint(IndexFlush::WhenDue) {
                tracing::error!(error = %e, "checkpoint failed");
            }
            if last_clean.elapsed() >= i.config.clean_resource_interval {
                last_clean = Instant::now();
                if let Err(e) = i.run_retention(SystemTime::now(), RetentionTrigger::Scheduled) {
                    tracing::error!(error = %e, "retention failed");
                }
            }
        }
    })?);
    Ok(threads)
}

/// Takes an exclusive lock on the store directory so two processes never
/// open the same store.
fn lock_root(root: &std::path::Path) -> Result<File> {
    let path = root.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::io(&path, e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(StoreError::io(&path, std::io::Error::last_os_error()));
    }
    Ok(file)
}
