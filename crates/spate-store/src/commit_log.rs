//! The commit log: every message of every topic, appended in one sequence of
//! pre-allocated segments.
//!
//! One writer at a time holds [`CommitLog::lock_writer`] for the length of a
//! memory copy; it never does file I/O under that lock (segments come ready
//! from the [`Allocator`], flushing happens on the flusher thread). Readers
//! find segments under a short read lock and copy bytes below the published
//! readable offset; they never wait for the writer.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};

use crate::pi_mutex::{PiGuard, PiMutex};
use spate_common::message::{self, MessageError, NewMessage, Probe, RecordSlots, BLANK_MIN_LEN};

use crate::allocator::{Allocator, WriteBuffer, WriteBufferPool};
use crate::error::{Result, StoreError};
use crate::segment::{self, Segment};
use crate::signal::{DispatchWake, Signal};

/// Highest queue id the store accepts (queues per topic are far fewer).
pub const MAX_QUEUE_ID: i32 = 65_535;

/// Where one appended message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// Offset of the record in the commit log.
    pub physical_offset: u64,
    /// Record size in bytes.
    pub size: u32,
    /// Offset in its consume queue.
    pub queue_offset: i64,
    /// Store time (ms since the epoch) written into the record.
    pub store_timestamp: i64,
}

impl AppendResult {
    /// Offset just past the record: durable once the flushed offset reaches it.
    pub fn end_offset(&self) -> u64 {
        self.physical_offset + self.size as u64
    }
}

/// State owned by whoever holds the writer lock.
pub struct Writer {
    current: Option<Arc<Segment>>,
    buffer: Option<Arc<WriteBuffer>>,
    /// Next queue offset per topic and queue id.
    pub(crate) queue_offsets: HashMap<String, HashMap<i32, i64>>,
}

impl Writer {
    fn next_queue_offset(&self, topic: &str, queue_id: i32) -> i64 {
        self.queue_offsets.get(topic).and_then(|q| q.get(&queue_id)).copied().unwrap_or(0)
    }

    pub(crate) fn set_next_queue_offset(&mut self, topic: &str, queue_id: i32, next: i64) {
        if !valid_queue_id(queue_id) {
            tracing::error!(topic, queue_id, "queue id out of range ignored");
            return;
        }
        let queues = match self.queue_offsets.get_mut(topic) {
            Some(q) => q,
            None => self.queue_offsets.entry(topic.to_string()).or_default(),
        };
        queues.insert(queue_id, next);
    }
}

/// A segment the committer still has to copy from its write buffer (or a
/// direct segment queued behind one, to keep the readable offset in order).
type PendingCommit = (Arc<Segment>, Option<Arc<WriteBuffer>>);

/// The segmented commit log.
pub struct CommitLog {
    dir: PathBuf,
    segment_size: u64,
    segments: RwLock<Vec<Arc<Segment>>>,
    /// Priority-inheriting: the broker's real-time core lane appends under
    /// it too (`pi_mutex.rs`).
    writer: PiMutex<Writer>,
    allocator: Arc<Allocator>,
    allocate_timeout: Duration,
    pool: Option<WriteBufferPool>,
    pending_commit: Mutex<VecDeque<PendingCommit>>,
    commit_lock: Mutex<()>,
    /// Held by a flush pass and by truncation, so a flush that started
    /// before a cut cannot publish a flushed offset past it.
    flush_lock: Mutex<()>,
    /// Truncation generation: odd while a truncation runs. Readers copy
    /// bytes between two loads of it and discard the copy if it moved.
    truncations: AtomicU64,
    /// Offset of the last truncation.
    last_cut: AtomicU64,
    max_offset: AtomicU64,
    readable_offset: AtomicU64,
    flushed_offset: AtomicU64,
    clock: Instant,
    append_started_ns: AtomicU64,
    writable: AtomicBool,
    failure: Mutex<Option<String>>,
    segments_rolled: AtomicU64,
    /// Syncs done by `flush`, and the time they took in total (us).
    syncs: AtomicU64,
    sync_us_total: AtomicU64,
    /// Told when bytes become readable (dispatcher).
    pub(crate) readable_wake: Arc<DispatchWake>,
    /// Woken after bytes are written into a write buffer (committer).
    pub(crate) commit_signal: Arc<Signal>,
}

/// What recovery found at the end of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanEnd {
    /// First offset past the last intact record.
    pub end_offset: u64,
    /// Why the scan stopped before the written data ended, if it did.
    pub damage: Option<String>,
    /// Intact records (size, magic, body CRC, own offset) that fail a check
    /// the append path makes today, kept in place: (offset, why), at most
    /// [`KEPT_REPORT_MAX`] of them; readers skip what they cannot use.
    pub kept_damaged: Vec<(u64, String)>,
}

/// Most kept-but-damaged records one recovery names (the rest are counted
/// in the log only).
pub const KEPT_REPORT_MAX: usize = 100;

impl CommitLog {
    /// Opens the commit log in `dir`, validates records from the segment
    /// holding `scan_from` to the end, and cuts off a torn or corrupt tail.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        dir: &Path,
        segment_size: u64,
        scan_from: u64,
        allocator: Arc<Allocator>,
        allocate_timeout: Duration,
        pool: Option<WriteBufferPool>,
        readable_wake: Arc<DispatchWake>,
        commit_signal: Arc<Signal>,
    ) -> Result<(CommitLog, ScanEnd)> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut starts = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let entry = entry.map_err(|e| StoreError::io(dir, e))?;
            match entry.file_name().to_str().and_then(segment::parse_file_name) {
                Some(start) => starts.push(start),
                None => tracing::warn!(file = ?entry.path(), "ignoring unknown file in commit-log directory"),
            }
        }
        starts.sort_unstable();
        let mut segments: Vec<Arc<Segment>> = Vec::with_capacity(starts.len());
        for start in starts {
            let path = dir.join(segment::file_name(start));
            let follows = segments.last().map_or(start % segment_size == 0, |l| l.end_offset() == start);
            if follows {
                segments.push(Arc::new(Segment::create(dir, start, segment_size, false, false)?));
                continue;
            }
            // Past a gap only files the allocator prepared and nobody wrote
            // may lie (left by a truncation); anything else is real damage.
            let head = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
            if head.iter().take(8).all(|b| *b == 0) {
                tracing::warn!(path = %path.display(), "removing unused prepared segment past a gap");
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            } else {
                return Err(StoreError::Corrupt {
                    path,
                    reason: format!("segment {start} holds data but does not follow the previous segment"),
                });
            }
        }
        let scan = scan(&segments, scan_from);
        if let Some(reason) = &scan.damage {
            tracing::warn!(end_offset = scan.end_offset, reason = %reason, "commit log tail cut off during recovery");
        }
        let end = scan.end_offset;
        let scanned_from = segments.iter().find(|s| s.end_offset() > scan_from).map_or(end, |s| s.start_offset());
        // Cut: zero the tail of the segment holding the end, drop later ones.
        // What was scanned may only be in the page cache (a crashed process
        // leaves it there): sync it before it counts as flushed.
        let mut kept = Vec::new();
        for seg in segments {
            if seg.start_offset() > end {
                let path = seg.path().to_path_buf();
                drop(seg);
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
                continue;
            }
            let rel = (end - seg.start_offset()).min(seg.size());
            if rel < seg.size() {
                seg.zero_from(rel);
            }
            seg.set_wrote(rel, true);
            if seg.start_offset() >= scanned_from || rel < seg.size() {
                seg.flush()?;
            } else {
                seg.set_flushed(rel);
            }
            kept.push(seg);
        }
        segment::sync_dir(dir)?;
        let current = kept.last().cloned();
        // The segment appends continue in was not warmed by this process:
        // warm what is left of it now, before any append (the writer would
        // otherwise fault in each of those pages itself, a whole segment's
        // worth of faults after a restart).
        if let Some(seg) = &current {
            if seg.wrote() < seg.size() {
                seg.expect_cold_writes();
                let warm = allocator.warm_policy();
                if warm.touch {
                    seg.warm_from(seg.wrote(), false, warm.through_file, || false);
                }
            }
        }
        // With read/write separation the committer publishes the readable
        // offset; it must know the segment appends continue in (written
        // directly: its buffer, if it had one, died with the last process).
        let mut pending = VecDeque::new();
        if let (Some(seg), true) = (&current, pool.is_some()) {
            pending.push_back((seg.clone(), None));
        }
        let log = CommitLog {
            dir: dir.to_path_buf(),
            segment_size,
            segments: RwLock::new(kept),
            writer: PiMutex::new(Writer { current, buffer: None, queue_offsets: HashMap::new() }),
            allocator,
            allocate_timeout,
            pool,
            pending_commit: Mutex::new(pending),
            commit_lock: Mutex::new(()),
            flush_lock: Mutex::new(()),
            truncations: AtomicU64::new(0),
            last_cut: AtomicU64::new(u64::MAX),
            max_offset: AtomicU64::new(end),
            readable_offset: AtomicU64::new(end),
            flushed_offset: AtomicU64::new(end),
            clock: Instant::now(),
            append_started_ns: AtomicU64::new(0),
            writable: AtomicBool::new(true),
            failure: Mutex::new(None),
            segments_rolled: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_us_total: AtomicU64::new(0),
            readable_wake,
            commit_signal,
        };
        let next = log.current_segment_end().unwrap_or(0);
        log.allocator.request(next);
        // An empty log takes its first segment on the first append, which
        // would otherwise find it barely warmed and fault in the rest of it
        // on the append path: wait for it here, as long as a roll would.
        if log.current_segment_end().is_none() && log.allocator.warm_policy().touch {
            let began = Instant::now();
            if !log.allocator.wait_ready(next, log.allocate_timeout) {
                tracing::warn!(start = next, "first commit-log segment not prepared within allocateMappedFileTimeout");
            }
            tracing::debug!(elapsed_ms = began.elapsed().as_millis() as u64, "first commit-log segment prepared");
        }
        Ok((log, scan))
    }

    fn current_segment_end(&self) -> Option<u64> {
        self.segments.read().last().map(|s| s.end_offset())
    }

    /// Bytes left in the current segment (0 when there is none yet).
    pub fn room_in_current_segment(&self) -> u64 {
        self.current_segment_end().map_or(0, |end| end.saturating_sub(self.max_offset()))
    }

    /// Takes the writer lock (appends, truncation).
    pub fn lock_writer(&self) -> PiGuard<'_, Writer> {
        self.writer.lock()
    }

    /// Appends one message. Encoding happens before the lock; under it, only
    /// the offsets are patched and the bytes copied.
    pub fn append(&self, msg: &NewMessage, max_body: usize) -> Result<AppendResult> {
        let mut record = Vec::new();
        let slots = encode(msg, max_body, &mut record)?;
        let mut w = self.writer.lock();
        let mut results = self.append_locked(&mut w, &mut [(msg, slots, record.as_mut_slice())])?;
        results.pop().ok_or(StoreError::Busy("empty append"))
    }

    /// Appends messages contiguously in one segment, each with the next
    /// offset of its queue.
    pub fn append_batch(&self, msgs: &[NewMessage], max_body: usize) -> Result<Vec<AppendResult>> {
        let mut encoded = Vec::with_capacity(msgs.len());
        for msg in msgs {
            let mut record = Vec::new();
            let slots = encode(msg, max_body, &mut record)?;
            encoded.push((slots, record));
        }
        let mut parts: Vec<(&NewMessage, RecordSlots, &mut [u8])> =
            msgs.iter().zip(encoded.iter_mut()).map(|(m, (s, r))| (m, *s, r.as_mut_slice())).collect();
        let mut w = self.writer.lock();
        self.append_locked(&mut w, &mut parts)
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        parts: &mut [(&NewMessage, RecordSlots, &mut [u8])],
    ) -> Result<Vec<AppendResult>> {
        self.check_writable()?;
        let total: u64 = parts.iter().map(|(_, s, _)| s.len as u64).sum();
        if total + BLANK_MIN_LEN as u64 > self.segment_size {
            return Err(StoreError::InvalidMessage(MessageError::BodyTooLarge {
                size: total as usize,
                max: (self.segment_size as usize).saturating_sub(BLANK_MIN_LEN),
            }));
        }
        let started = self.clock.elapsed().as_nanos() as u64;
        self.append_started_ns.store(started.max(1), Ordering::Relaxed);
        // Cleared on every exit, a panic included, so the store never
        // reports itself busy forever.
        struct Clear<'a>(&'a AtomicU64);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                self.0.store(0, Ordering::Relaxed);
            }
        }
        let _clear = Clear(&self.append_started_ns);
        self.append_inner(w, parts, total)
    }

    fn append_inner(
        &self,
        w: &mut Writer,
        parts: &mut [(&NewMessage, RecordSlots, &mut [u8])],
        total: u64,
    ) -> Result<Vec<AppendResult>> {
        let seg = match &w.current {
            Some(seg) if seg.remaining() >= total + BLANK_MIN_LEN as u64 => seg.clone(),
            _ => self.roll(w)?,
        };
        let store_timestamp = now_ms();
        let mut pos = seg.wrote();
        let mut results = Vec::with_capacity(parts.len());
        for (msg, slots, record) in parts.iter_mut() {
            let queue_offset = w.next_queue_offset(&msg.topic, msg.queue_id);
            let physical_offset = seg.start_offset() + pos;
            message::patch_record(record, *slots, queue_offset, physical_offset as i64, store_timestamp);
            match &w.buffer {
                Some(buf) => buf.write_at(pos, record),
                None => seg.write_record_at(pos, record),
            }
            w.set_next_queue_offset(&msg.topic, msg.queue_id, queue_offset + 1);
            pos += slots.len as u64;
            results.push(AppendResult { physical_offset, size: slots.len as u32, queue_offset, store_timestamp });
        }
        self.publish(w, &seg, pos);
        Ok(results)
    }

    /// Publishes the writer's position after bytes are in place.
    fn publish(&self, w: &Writer, seg: &Segment, pos: u64) {
        let direct = self.pool.is_none();
        seg.set_wrote(pos, w.buffer.is_none());
        self.max_offset.store(seg.start_offset() + pos, Ordering::Release);
        if direct {
            self.readable_offset.store(seg.start_offset() + pos, Ordering::Release);
            self.readable_wake.on_readable();
        } else {
            self.commit_signal.notify();
        }
    }

    /// Seals the current segment with a blank marker and switches to the next
    /// one, already prepared by the allocator.
    fn roll(&self, w: &mut Writer) -> Result<Arc<Segment>> {
        let next_start = match w.current.clone() {
            Some(cur) => {
                let pos = cur.wrote();
                if pos < cur.size() {
                    let marker = message::blank_marker((cur.size() - pos) as usize);
                    match &w.buffer {
                        Some(buf) => buf.write_at(pos, &marker),
                        None => cur.write_at(pos, &marker),
                    }
                }
                self.publish(w, &cur, cur.size());
                cur.end_offset()
            }
            None => self.max_offset.load(Ordering::Acquire),
        };
        debug_assert_eq!(next_start % self.segment_size, 0);
        // The first segment of an empty log is taken here too (no current
        // one): that is not yet a roll, and asks for one segment ahead.
        let seg = match self.allocator.roll_into(next_start, self.allocate_timeout, w.current.clone()) {
            Ok(seg) => Arc::new(seg),
            Err(e @ StoreError::Io { .. }) => {
                self.fail(format!("cannot create commit-log segment at {next_start}: {e}"));
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        w.buffer = match &self.pool {
            Some(pool) => {
                let buf = pool.borrow();
                if buf.is_none() {
                    tracing::warn!(start = next_start, "write buffer pool exhausted; writing this segment directly");
                }
                self.pending_commit.lock().push_back((seg.clone(), buf.clone()));
                buf
            }
            None => None,
        };
        self.segments.write().push(seg.clone());
        w.current = Some(seg.clone());
        self.segments_rolled.fetch_add(1, Ordering::Relaxed);
        Ok(seg)
    }

    /// Copies written bytes from write buffers into their files and advances
    /// the readable offset (read/write separation). Committer thread, and
    /// truncation; returns whether anything was committed.
    pub fn commit_pending(&self) -> Result<bool> {
        let _guard = self.commit_lock.lock();
        let mut progressed = false;
        loop {
            let Some((seg, buf)) = self.pending_commit.lock().front().cloned() else { break };
            let wrote = seg.wrote();
            let done = seg.readable();
            if let Some(buf) = &buf {
                if wrote > done {
                    if let Err(e) = seg.pwrite(done, buf.slice(done, wrote)) {
                        self.fail(format!("commit of write buffer failed: {e}"));
                        return Err(e);
                    }
                    seg.set_readable(wrote);
                    progressed = true;
                }
            }
            let readable = seg.start_offset() + seg.readable();
            if readable > self.readable_offset.fetch_max(readable, Ordering::AcqRel) {
                progressed = true;
            }
            if wrote == seg.size() && seg.readable() == wrote {
                self.pending_commit.lock().pop_front();
                if let (Some(pool), Some(buf)) = (&self.pool, buf) {
                    pool.give_back(buf);
                }
                continue;
            }
            break;
        }
        if progressed {
            self.readable_wake.on_readable();
        }
        Ok(progressed)
    }

    /// Flushes every segment with readable, unflushed bytes (one fdatasync
    /// each) and returns the new flushed offset. Flusher thread only.
    pub fn flush(&self) -> Result<u64> {
        let _flushing = self.flush_lock.lock();
        let target = self.readable_offset.load(Ordering::Acquire);
        let flushed = self.flushed_offset.load(Ordering::Acquire);
        if target <= flushed {
            return Ok(flushed);
        }
        let dirty: Vec<Arc<Segment>> = self
            .segments
            .read()
            .iter()
            .filter(|s| s.end_offset() > flushed && s.start_offset() < target)
            .cloned()
            .collect();
        let began = Instant::now();
        for seg in dirty {
            if let Err(e) = seg.flush() {
                self.fail(format!("flush failed: {e}"));
                return Err(e);
            }
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_us_total.fetch_add(began.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.flushed_offset.fetch_max(target, Ordering::AcqRel);
        Ok(target)
    }

    /// Reads `len` bytes at `offset`; the range must be readable.
    pub fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let generation = self.read_begin(offset)?;
        let seg = self.segment_for(offset)?;
        let rel = offset - seg.start_offset();
        if rel + len as u64 > seg.readable() {
            return Err(StoreError::BadOffset { offset, reason: "range not readable" });
        }
        let bytes = seg.read(rel, len);
        self.read_end(offset, generation)?;
        Ok(bytes)
    }

    /// Whether `offset..offset + len` lies in one segment and in the page
    /// cache, so reading it cannot wait for the disk.
    pub fn is_resident(&self, offset: u64, len: usize) -> bool {
        match self.segment_for(offset) {
            Ok(seg) => {
                let rel = offset - seg.start_offset();
                rel + len as u64 <= seg.readable() && seg.is_resident(rel, len)
            }
            Err(_) => false,
        }
    }

    /// Starts a read: the truncation generation, refusing while one runs.
    pub fn read_begin(&self, offset: u64) -> Result<u64> {
        let generation = self.truncations.load(Ordering::Acquire);
        if generation % 2 == 1 {
            return Err(StoreError::BadOffset { offset, reason: "log is being truncated" });
        }
        Ok(generation)
    }

    /// Ends a read begun at `generation`: fails if a truncation ran since,
    /// because the bytes copied may be half zeroed.
    pub fn read_end(&self, offset: u64, generation: u64) -> Result<()> {
        std::sync::atomic::fence(Ordering::Acquire);
        if self.truncations.load(Ordering::Relaxed) != generation {
            return Err(StoreError::BadOffset { offset, reason: "log was truncated during the read" });
        }
        Ok(())
    }

    /// The truncation generation and the offset of the last cut, for
    /// answering flush waiters queued before a truncation.
    pub fn truncation(&self) -> (u64, u64) {
        (self.truncations.load(Ordering::Acquire), self.last_cut.load(Ordering::Acquire))
    }

    /// Reads the whole record at `offset`.
    pub fn read_record(&self, offset: u64) -> Result<Vec<u8>> {
        let head = self.read(offset, 8)?;
        match message::probe(&head) {
            Probe::Record(size) => self.read(offset, size),
            _ => Err(StoreError::BadOffset { offset, reason: "no record starts here" }),
        }
    }

    /// Whole records from `offset` (a record boundary), about `max_len`
    /// bytes of them but at least one, never crossing a segment end; a blank
    /// marker comes with the rest of its segment. Empty at the readable end.
    /// This is what a master ships to a slave.
    pub fn read_raw(&self, offset: u64, max_len: usize) -> Result<Vec<u8>> {
        if offset == self.readable_offset() {
            return Ok(Vec::new());
        }
        let generation = self.read_begin(offset)?;
        let seg = self.segment_for(offset)?;
        let rel = offset - seg.start_offset();
        let avail = seg.readable().saturating_sub(rel);
        let mut bytes = seg.read(rel, avail.min(max_len.max(BLANK_MIN_LEN) as u64) as usize);
        let mut at = 0usize;
        while at + BLANK_MIN_LEN <= bytes.len() {
            match message::probe(&bytes[at..]) {
                Probe::Record(size) if at + size <= bytes.len() => at += size,
                Probe::Record(size) if at == 0 && (size as u64) <= avail => {
                    bytes = seg.read(rel, size);
                    at = size;
                }
                Probe::Blank if at == 0 => {
                    // Only the marker: the rest of the segment is unused.
                    at = BLANK_MIN_LEN;
                    break;
                }
                Probe::Record(_) | Probe::Blank => break,
                Probe::End | Probe::Invalid => {
                    return Err(StoreError::BadOffset { offset: offset + at as u64, reason: "no record starts here" })
                }
            }
        }
        bytes.truncate(at);
        self.read_end(offset, generation)?;
        Ok(bytes)
    }

    /// The segment holding `offset`.
    pub fn segment_for(&self, offset: u64) -> Result<Arc<Segment>> {
        let segs = self.segments.read();
        let idx = segs.partition_point(|s| s.end_offset() <= offset);
        match segs.get(idx) {
            Some(seg) if seg.start_offset() <= offset => Ok(seg.clone()),
            _ if offset < segs.first().map(|s| s.start_offset()).unwrap_or(0) => {
                Err(StoreError::BadOffset { offset, reason: "below the oldest segment" })
            }
            _ => Err(StoreError::BadOffset { offset, reason: "beyond the end of the log" }),
        }
    }

    /// Appends bytes copied from a master's log at `offset`, which must be
    /// this log's end (a slave's write path). The bytes must be whole,
    /// intact records whose stored offsets match their positions, optionally
    /// ending with the blank marker that closes a segment, all within one
    /// segment. Returns the new end offset.
    pub fn append_raw(&self, offset: u64, bytes: &[u8]) -> Result<u64> {
        let mut w = self.writer.lock();
        self.check_writable()?;
        let end = self.max_offset.load(Ordering::Acquire);
        if offset != end {
            return Err(StoreError::BadOffset { offset, reason: "raw append must start at the end of the log" });
        }
        if bytes.is_empty() {
            return Ok(end);
        }
        let seg = match &w.current {
            Some(seg) if seg.wrote() < seg.size() => seg.clone(),
            _ => self.roll(&mut w)?,
        };
        let pos = seg.wrote();
        if pos + bytes.len() as u64 > seg.size() {
            return Err(StoreError::BadOffset { offset, reason: "raw bytes cross a segment end" });
        }
        let mut next_offsets = Vec::new();
        let mut at = 0usize;
        let mut end_rel = pos + bytes.len() as u64;
        while at < bytes.len() {
            let rel = pos + at as u64;
            match message::probe(&bytes[at..]) {
                // The writer's own rule: a record leaves room for a blank marker.
                Probe::Record(size) if rel + size as u64 + BLANK_MIN_LEN as u64 <= seg.size() => {
                    let rec = message::decode_intact(bytes.get(at..at + size).unwrap_or(&[]), true)?;
                    if !valid_queue_id(rec.queue_id) {
                        return Err(StoreError::InvalidMessage(MessageError::QueueIdIllegal {
                            queue_id: rec.queue_id,
                        }));
                    }
                    if rec.physical_offset as u64 != offset + at as u64 {
                        return Err(StoreError::BadOffset {
                            offset,
                            reason: "record offset does not match its position",
                        });
                    }
                    next_offsets.push((rec.topic.to_string(), rec.queue_id, rec.queue_offset + 1));
                    at += size;
                }
                // A blank marker closes the segment: it must be last and its
                // size must be exactly the space left.
                Probe::Blank
                    if at + BLANK_MIN_LEN == bytes.len()
                        && i32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as u64
                            == seg.size() - rel =>
                {
                    end_rel = seg.size();
                    at = bytes.len();
                }
                _ => {
                    return Err(StoreError::InvalidMessage(MessageError::Malformed("raw bytes are not whole records")))
                }
            }
        }
        match &w.buffer {
            Some(buf) => buf.write_at(pos, bytes),
            None => seg.write_at(pos, bytes),
        }
        for (topic, queue_id, next) in next_offsets {
            w.set_next_queue_offset(&topic, queue_id, next);
        }
        self.publish(&w, &seg, end_rel);
        Ok(self.max_offset())
    }

    /// Cuts the log at `offset` (a record boundary at or below the end, or
    /// where a blank marker starts): zeroes the rest of its segment durably
    /// and deletes later segments. The caller holds the writer lock and has
    /// stopped the dispatcher. Waits for a running flush; blocking.
    pub fn truncate_locked(&self, w: &mut Writer, offset: u64) -> Result<()> {
        self.commit_pending()?;
        let _committing = self.commit_lock.lock();
        let _flushing = self.flush_lock.lock();
        let end = self.max_offset();
        if offset > end {
            return Err(StoreError::BadOffset { offset, reason: "beyond the end of the log" });
        }
        if offset < end {
            let head = self.read(offset, BLANK_MIN_LEN)?;
            let boundary = match message::probe(&head) {
                Probe::Blank => true,
                Probe::Record(size) => self
                    .read(offset, size)
                    .ok()
                    .and_then(|b| message::decode_intact(&b, true).ok().map(|r| r.physical_offset as u64 == offset))
                    .unwrap_or(false),
                _ => false,
            };
            if !boundary {
                return Err(StoreError::BadOffset { offset, reason: "not a record boundary" });
            }
        }
        self.truncations.fetch_add(1, Ordering::AcqRel);
        let outcome = self.cut(w, offset);
        self.last_cut.store(offset, Ordering::Release);
        self.truncations.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    fn cut(&self, w: &mut Writer, offset: u64) -> Result<()> {
        let mut segs = self.segments.write();
        let mut removed = Vec::new();
        while segs.last().is_some_and(|s| s.start_offset() > offset || (s.start_offset() == offset && segs.len() > 1)) {
            if let Some(s) = segs.pop() {
                removed.push(s);
            }
        }
        let current = segs.last().cloned();
        drop(segs);
        // Withdraw everything the allocator prepared or is preparing before
        // any file is deleted, so that no early return below leaves it
        // offering a segment whose file is gone. What is wanted next is
        // asked for once the files past the cut are gone (asked for now,
        // the thread could reopen a file about to be deleted).
        self.allocator.withdraw();
        self.max_offset.store(offset, Ordering::Release);
        self.readable_offset.store(offset, Ordering::Release);
        self.flushed_offset.store(self.flushed_offset().min(offset), Ordering::Release);
        if let Some(seg) = &current {
            seg.truncate_to(offset - seg.start_offset())?;
        }
        for seg in removed {
            let path = seg.path().to_path_buf();
            drop(seg);
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
        }
        // Files the allocator prepared past the new end would leave a gap.
        let new_end = current.as_ref().map_or(offset, |s| s.end_offset());
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                if entry.file_name().to_str().and_then(segment::parse_file_name).is_some_and(|s| s > new_end) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        segment::sync_dir(&self.dir)?;
        // Write buffers: keep the current segment's, return the others.
        let mut pending = self.pending_commit.lock();
        let mut kept_buffer = None;
        for (seg, buf) in pending.drain(..) {
            match (&current, buf) {
                (Some(c), buf) if Arc::ptr_eq(&seg, c) => kept_buffer = Some(buf),
                (_, Some(buf)) => {
                    if let Some(pool) = &self.pool {
                        pool.give_back(buf);
                    }
                }
                _ => {}
            }
        }
        w.buffer = None;
        if let (Some(c), true) = (&current, self.pool.is_some()) {
            // Without an entry the committer would never advance this
            // segment's readable offset again.
            let buf = kept_buffer.flatten();
            w.buffer = buf.clone();
            pending.push_back((c.clone(), buf));
        }
        drop(pending);
        // Appends continue in a segment that may already be retired.
        if let Some(c) = &current {
            c.expect_cold_writes();
        }
        w.current = current;
        self.allocator.request(self.current_segment_end().unwrap_or(0));
        Ok(())
    }

    /// Removes the oldest segments for retention: those `pick` accepts, in
    /// order, never the newest one and never past `limit_offset`. Returns the
    /// removed segments (the caller deletes the files after dropping them).
    pub fn remove_oldest(
        &self,
        limit_offset: u64,
        max: usize,
        mut pick: impl FnMut(&Segment) -> bool,
    ) -> Vec<Arc<Segment>> {
        let mut segs = self.segments.write();
        let mut n = 0;
        while n < max && n + 1 < segs.len() && segs[n].end_offset() <= limit_offset && pick(&segs[n]) {
            n += 1;
        }
        segs.drain(..n).collect()
    }

    /// Oldest offset still stored.
    pub fn min_offset(&self) -> u64 {
        self.segments.read().first().map(|s| s.start_offset()).unwrap_or_else(|| self.max_offset())
    }

    /// Offset just past the last written byte.
    pub fn max_offset(&self) -> u64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// Offset up to which readers may read.
    pub fn readable_offset(&self) -> u64 {
        self.readable_offset.load(Ordering::Acquire)
    }

    /// Offset up to which everything is on disk.
    pub fn flushed_offset(&self) -> u64 {
        self.flushed_offset.load(Ordering::Acquire)
    }

    /// Segment size.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Flush passes that synced data since open, and their total time (us).
    pub fn sync_stats(&self) -> (u64, u64) {
        (self.syncs.load(Ordering::Relaxed), self.sync_us_total.load(Ordering::Relaxed))
    }

    /// Segments rolled over since open.
    pub fn segments_rolled(&self) -> u64 {
        self.segments_rolled.load(Ordering::Relaxed)
    }

    /// Number of segments on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.read().len()
    }

    /// Waits (bounded) until the segment after the current one is prepared,
    /// asking for it if nobody has; true at once before the first segment.
    pub fn wait_next_segment(&self, timeout: Duration) -> bool {
        match self.current_segment_end() {
            Some(end) => self.allocator.wait_ready(end, timeout),
            None => true,
        }
    }

    /// Longest wait of an append for the next segment, in microseconds.
    pub fn roll_wait_us_max(&self) -> u64 {
        self.allocator.wait_us_max.load(Ordering::Relaxed)
    }

    /// Write buffers free in the pool (read/write separation), if enabled.
    pub fn write_buffers_available(&self) -> Option<usize> {
        self.pool.as_ref().map(|p| p.available())
    }

    /// How long the append in progress has held the writer, if one does.
    pub fn append_in_progress_for(&self) -> Option<Duration> {
        let started = self.append_started_ns.load(Ordering::Relaxed);
        (started != 0).then(|| self.clock.elapsed().saturating_sub(Duration::from_nanos(started)))
    }

    /// Refuses writes after `fail` was called.
    pub fn check_writable(&self) -> Result<()> {
        if self.writable.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(StoreError::NotWritable(self.failure.lock().clone().unwrap_or_default()))
        }
    }

    /// Marks the log not writable, keeping the first reason.
    pub fn fail(&self, reason: String) {
        let mut failure = self.failure.lock();
        if failure.is_none() {
            tracing::error!(reason = %reason, "commit log is no longer writable");
            *failure = Some(reason);
        }
        self.writable.store(false, Ordering::Release);
    }

    /// The reason writes are refused, if they are.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }
}

/// Whether the store would have written this queue id.
pub fn valid_queue_id(queue_id: i32) -> bool {
    (0..=MAX_QUEUE_ID).contains(&queue_id)
}

fn encode(msg: &NewMessage, max_body: usize, out: &mut Vec<u8>) -> Result<RecordSlots> {
    if msg.queue_id > MAX_QUEUE_ID {
        return Err(StoreError::InvalidMessage(MessageError::QueueIdIllegal { queue_id: msg.queue_id }));
    }
    Ok(message::encode_record(msg, max_body, out)?)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Validates records from the segment holding `from` onwards; returns the
/// offset past the last intact record and why it stopped early, if it did.
///
/// Only a torn tail is cut. A record intact as bytes (size, magic, body CRC,
/// its own offset, a queue id the writer could give) that fails a semantic
/// check ([`message::Record::semantic_problem`]: older builds appended such
/// records) is kept when a valid record or the segment's end follows it, or
/// when its bytes show no sign of a torn write; only at the tail, ending in
/// zeros, is it taken for a torn write and cut.
pub fn scan(segments: &[Arc<Segment>], from: u64) -> ScanEnd {
    let first = segments.partition_point(|s| s.end_offset() <= from).min(segments.len().saturating_sub(1));
    let mut out = ScanEnd { end_offset: 0, damage: None, kept_damaged: Vec::new() };
    let Some(start) = segments.get(first) else { return out };
    out.end_offset = start.start_offset();
    for (i, seg) in segments.iter().enumerate().skip(first) {
        let mut pos = 0u64;
        loop {
            out.end_offset = seg.start_offset() + pos;
            match scan_one(seg, pos, i + 1 < segments.len()) {
                Step::Record(size) => pos += size,
                Step::Kept(size, why) => {
                    tracing::warn!(
                        offset = out.end_offset,
                        reason = why,
                        "recovery kept an intact record that readers skip"
                    );
                    if out.kept_damaged.len() < KEPT_REPORT_MAX {
                        out.kept_damaged.push((out.end_offset, why.to_string()));
                    }
                    pos += size;
                }
                Step::NextSegment => break,
                Step::End(None) => return out,
                Step::End(Some(at_end)) => {
                    out.end_offset = at_end;
                    return out;
                }
                Step::Damage(why) => {
                    out.damage = Some(format!("{why} at {}", out.end_offset));
                    return out;
                }
            }
        }
    }
    out
}

/// What the scan found at one position of a segment.
enum Step {
    /// An intact record of this size.
    Record(u64),
    /// An intact record that fails a semantic check but is not a torn tail.
    Kept(u64, &'static str),
    /// The segment's blank marker, with segments after it.
    NextSegment,
    /// The written data ends here, or (`Some`) at this offset.
    End(Option<u64>),
    /// A torn or corrupt record: the log is cut here.
    Damage(String),
}

fn scan_one(seg: &Segment, pos: u64, more_segments: bool) -> Step {
    let offset = seg.start_offset() + pos;
    if pos + BLANK_MIN_LEN as u64 > seg.size() {
        return Step::Damage("record runs into the segment end".into());
    }
    match message::probe(&seg.read(pos, BLANK_MIN_LEN)) {
        Probe::Record(size) if pos + size as u64 + BLANK_MIN_LEN as u64 <= seg.size() => {
            let bytes = seg.read(pos, size);
            match message::decode_intact(&bytes, true) {
                Ok(rec) if rec.physical_offset as u64 == offset && valid_queue_id(rec.queue_id) => {
                    match rec.semantic_problem() {
                        None => Step::Record(size as u64),
                        Some(why) if !looks_torn(&bytes) || followed_by_data(seg, pos + size as u64) => {
                            Step::Kept(size as u64, why)
                        }
                        Some(why) => Step::Damage(why.to_string()),
                    }
                }
                Ok(_) => Step::Damage("stale record".into()),
                Err(e) => Step::Damage(e.to_string()),
            }
        }
        Probe::Record(_) => Step::Damage("record size out of range".into()),
        Probe::Blank if more_segments => Step::NextSegment,
        Probe::Blank => Step::End(Some(seg.end_offset())),
        Probe::End => Step::End(None),
        Probe::Invalid => Step::Damage("bad record header".into()),
    }
}

/// A write torn by a power loss leaves the record's last bytes (where the
/// topic and properties are) as the zeros the segment was created with.
fn looks_torn(record: &[u8]) -> bool {
    record.last().is_none_or(|b| *b == 0)
}

/// Whether an intact record or a blank marker starts at `pos`: then the
/// record before it was not the last one written.
fn followed_by_data(seg: &Segment, pos: u64) -> bool {
    if pos + BLANK_MIN_LEN as u64 > seg.size() {
        return false;
    }
    match message::probe(&seg.read(pos, BLANK_MIN_LEN)) {
        Probe::Blank => true,
        Probe::Record(size) if pos + size as u64 <= seg.size() => {
            let bytes = seg.read(pos, size);
            message::decode_intact(&bytes, true).is_ok_and(|r| r.physical_offset as u64 == seg.start_offset() + pos)
        }
        _ => false,
    }
}
