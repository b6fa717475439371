//! Background preparation of what the append path will need next: the next
//! commit-log segment (created, sized, warmed) and, with read/write
//! separation, pre-locked write buffers.
//!
//! The writer asks for segment `start` as soon as it begins the one before,
//! so by the time it rolls over the file is ready and taking it is a mutex
//! hand-off, not a file creation. Once the writer has rolled, the thread
//! prepares the one after it as well (upstream's "next" and "next next"
//! files): on a machine whose every new page costs the hypervisor a fault
//! (BENCHMARKS.md), warming one segment took most of the time a fast writer
//! needs to fill one, and any hiccup made the writer wait at the roll. Not
//! before the first roll: a store that has just opened, and may fill its
//! segment slowly, is not made to warm two segments' worth of memory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use parking_lot::{Condvar, Mutex};

use crate::error::{Result, StoreError};
use crate::segment::Segment;

/// Segments prepared ahead of the writer: the one it rolls into next and
/// the one after.
pub const SEGMENTS_AHEAD: usize = 2;

#[derive(Default)]
struct Slot {
    /// Starts wanted, the nearest first; at most [`SEGMENTS_AHEAD`].
    wanted: Vec<u64>,
    /// The start the thread is preparing now.
    in_progress: Option<u64>,
    /// The start in progress stopped being wanted while it was prepared
    /// (a truncation asked for an earlier one, and may have deleted its
    /// file): what the thread made of it is dropped, even if the same
    /// start is wanted again by the time it is done.
    cancelled: bool,
    /// The start a writer is blocked on.
    waiting: Option<u64>,
    /// Prepared segments not yet taken; only wanted starts, so at most
    /// [`SEGMENTS_AHEAD`].
    ready: Vec<(u64, Result<Segment>)>,
    /// Full segments whose read-ahead is to be turned back on.
    retired: Vec<Arc<Segment>>,
    shutdown: bool,
}

/// Retired segments waiting for [`Segment::end_cold_writes`] at most; one
/// is added per roll, and the thread drains them before anything else.
const MAX_RETIRED: usize = 8;

/// How new segments are pre-faulted.
#[derive(Debug, Clone, Copy, Default)]
pub struct WarmPolicy {
    /// Touch every page (`warmMapedFileEnable`).
    pub touch: bool,
    /// Also `mlock` (`lockMappedFileEnable`).
    pub lock: bool,
    /// Write the zeros through the file (`pwrite`) before mapping them in:
    /// about four times faster to warm, so the allocator keeps ahead of a
    /// fast writer, and the periodic async flush of the range appended
    /// took a seventh of the time in the same runs. Only with
    /// asynchronous flush: a synchronous flush of one record in pages
    /// dirtied that way took 3-4 times as long (BENCHMARKS.md).
    pub through_file: bool,
}

/// Creates commit-log segments ahead of need on its own thread.
pub struct Allocator {
    dir: PathBuf,
    size: u64,
    warm: WarmPolicy,
    slot: Mutex<Slot>,
    changed: Condvar,
    /// Longest time an append waited for a segment, in microseconds.
    pub wait_us_max: AtomicU64,
}

impl Allocator {
    /// A new allocator for segments of `size` bytes in `dir`.
    pub fn new(dir: PathBuf, size: u64, warm: WarmPolicy) -> Self {
        Allocator {
            dir,
            size,
            warm,
            slot: Mutex::new(Slot::default()),
            changed: Condvar::new(),
            wait_us_max: AtomicU64::new(0),
        }
    }

    /// Asks for the segment starting at `start` to be prepared. Replaces
    /// any earlier request that was not taken (a prepared file for it is
    /// left on disk; recovery removes empty files past the end).
    pub fn request(&self, start: u64) {
        let mut slot = self.slot.lock();
        self.want_from(&mut slot, start, 1);
    }

    /// Forgets every prepared segment and cancels the one in progress, and
    /// wants none until asked again (a truncation is about to delete the
    /// files past its cut).
    pub fn withdraw(&self) {
        let mut slot = self.slot.lock();
        self.set_wanted(&mut slot, Vec::new());
    }

    /// Makes `start` and the `count - 1` segments after it the wanted ones.
    fn want_from(&self, slot: &mut Slot, start: u64, count: usize) {
        let count = count.clamp(1, SEGMENTS_AHEAD) as u64;
        self.set_wanted(slot, (0..count).map(|i| start + i * self.size).collect());
    }

    /// Makes `wanted` the wanted starts: forgets prepared segments no longer
    /// among them and cancels the one in progress if it is not.
    fn set_wanted(&self, slot: &mut Slot, wanted: Vec<u64>) {
        if slot.in_progress.is_some_and(|s| !wanted.contains(&s)) {
            slot.cancelled = true;
        }
        slot.ready.retain(|(s, _)| wanted.contains(s));
        slot.wanted = wanted;
        self.changed.notify_all();
    }

    /// The nearest wanted start that is neither prepared nor being prepared.
    fn next_to_prepare(slot: &Slot) -> Option<u64> {
        slot.wanted.iter().copied().find(|s| slot.in_progress != Some(*s) && !slot.ready.iter().any(|(r, _)| r == s))
    }

    /// Takes the segment starting at `start`, waiting up to `timeout` for
    /// the background thread. Requests it first if nobody did.
    pub fn take(&self, start: u64, timeout: Duration) -> Result<Segment> {
        let mut slot = self.slot.lock();
        self.take_locked(&mut slot, start, timeout)
    }

    /// The writer's roll-over, in one hold of the lock: takes the segment
    /// at `start` (as [`Allocator::take`]), hands over the segment it
    /// filled (`full`), so read-ahead is turned back on for it here rather
    /// than on the append path if it wrote over cold pages, and asks for
    /// the segments after `start`: [`SEGMENTS_AHEAD`] of them once the
    /// writer has rolled, one for a log's first segment (`full` is `None`:
    /// a store that has just opened, and may fill it slowly, is not made
    /// to warm two).
    /// Taking the lock once matters: the wake-up of the thread comes with
    /// the last of it, so the writer never waits for the lock behind the
    /// thread it has just woken. That thread runs at a low priority on a
    /// busy CPU; taken three times per roll, the writer queued behind it
    /// at every roll, for 0.04-0.25 ms and in some runs 40-60 ms
    /// (BENCHMARKS.md). Nothing is asked for or handed over when the take
    /// fails.
    pub fn roll_into(&self, start: u64, timeout: Duration, full: Option<Arc<Segment>>) -> Result<Segment> {
        let mut slot = self.slot.lock();
        let seg = self.take_locked(&mut slot, start, timeout)?;
        let ahead = match full {
            Some(full) => {
                if full.has_cold_writes() && slot.retired.len() < MAX_RETIRED {
                    slot.retired.push(full);
                }
                SEGMENTS_AHEAD
            }
            None => 1,
        };
        // Wakes the thread (`set_wanted` notifies): the lock is released
        // right after, and the writer does not take it again this roll.
        self.want_from(&mut slot, start + self.size, ahead);
        Ok(seg)
    }

    fn take_locked(
        &self,
        slot: &mut parking_lot::MutexGuard<'_, Slot>,
        start: u64,
        timeout: Duration,
    ) -> Result<Segment> {
        let began = Instant::now();
        let deadline = began + timeout;
        loop {
            if let Some(i) = slot.ready.iter().position(|(s, _)| *s == start) {
                slot.waiting = None;
                let (_, seg) = slot.ready.swap_remove(i);
                // Taken: no longer to be prepared. Left wanted, the thread
                // could pick it again before the writer asks for the next
                // ones, and warm (zero) the file the writer is filling.
                slot.wanted.retain(|s| *s != start);
                let waited = began.elapsed().as_micros() as u64;
                self.wait_us_max.fetch_max(waited, Ordering::Relaxed);
                return seg;
            }
            if slot.shutdown {
                slot.waiting = None;
                return Err(StoreError::ShutDown);
            }
            if !slot.wanted.contains(&start) {
                self.want_from(slot, start, 1);
            }
            // Tells the thread to cut warming short: we are blocked on it.
            slot.waiting = Some(start);
            if self.changed.wait_until(slot, deadline).timed_out() {
                slot.waiting = None;
                return Err(StoreError::Busy("next commit-log segment not ready within allocateMappedFileTimeout"));
            }
        }
    }

    /// Whether and how segments are warmed before hand-over.
    pub fn warm_policy(&self) -> WarmPolicy {
        self.warm
    }

    /// Waits up to `timeout` until the segment starting at `start` is
    /// prepared, without taking it; requests it first if nobody did.
    /// Returns whether it is ready.
    pub fn wait_ready(&self, start: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut slot = self.slot.lock();
        loop {
            if slot.ready.iter().any(|(s, _)| *s == start) {
                return true;
            }
            if slot.shutdown {
                return false;
            }
            if !slot.wanted.contains(&start) {
                self.want_from(&mut slot, start, 1);
            }
            if self.changed.wait_until(&mut slot, deadline).timed_out() {
                return false;
            }
        }
    }

    /// The allocator thread's loop; returns on [`Allocator::shutdown`].
    pub fn run(&self) {
        lower_this_threads_priority();
        loop {
            let start = {
                let mut slot = self.slot.lock();
                loop {
                    if slot.shutdown {
                        return;
                    }
                    if !slot.retired.is_empty() {
                        let retired = std::mem::take(&mut slot.retired);
                        drop(slot);
                        for seg in retired {
                            seg.end_cold_writes();
                        }
                        slot = self.slot.lock();
                        continue;
                    }
                    if let Some(start) = Self::next_to_prepare(&slot) {
                        slot.in_progress = Some(start);
                        break start;
                    }
                    self.changed.wait(&mut slot);
                }
            };
            let began = Instant::now();
            // The directory entry is made durable here, off the append path:
            // a synced record in a segment whose name was lost is lost too.
            let seg = Segment::create(&self.dir, start, self.size, false, false)
                .and_then(|seg| crate::segment::sync_dir(&self.dir).map(|_| seg));
            match &seg {
                Ok(seg) => {
                    // Before warming too: a read-ahead of megabytes runs in
                    // one kernel call that this (low-priority) thread cannot
                    // be preempted out of, and the writer shares its CPU.
                    seg.expect_cold_writes();
                    let complete = !self.warm.touch
                        || seg.warm(self.warm.lock, self.warm.through_file, || {
                            let slot = self.slot.lock();
                            slot.shutdown || slot.cancelled || slot.waiting == Some(start)
                        });
                    // The warmed pages stay dirty zeros, mapped writable:
                    // the writer then takes no fault on them, and only the
                    // range it wrote is ever flushed (`Segment::flush`).
                    // Writing the zeros back here instead doubled the disk
                    // traffic and left every page clean and write-protected,
                    // a fault per page on the append path.
                    if !complete {
                        tracing::warn!(
                            start,
                            "warming cut short: the writer caught up with it, or it is no longer wanted"
                        );
                    }
                    tracing::debug!(start, elapsed_ms = began.elapsed().as_millis() as u64, "next segment ready");
                }
                Err(e) => tracing::error!(start, error = %e, "cannot prepare next commit-log segment"),
            }
            self.prepared(start, seg);
        }
    }

    /// Offers what the thread made of `start`, if it is still wanted.
    fn prepared(&self, start: u64, seg: Result<Segment>) {
        let mut slot = self.slot.lock();
        slot.in_progress = None;
        // A newer request may have superseded this one; keep only what is
        // wanted and was never withdrawn meanwhile (the file stays on disk,
        // empty, or was deleted by the truncation that withdrew it).
        let cancelled = std::mem::take(&mut slot.cancelled);
        if !cancelled && slot.wanted.contains(&start) {
            slot.ready.push((start, seg));
        }
        self.changed.notify_all();
    }

    /// Stops the thread; waiting takers get [`StoreError::ShutDown`].
    pub fn shutdown(&self) {
        self.slot.lock().shutdown = true;
        self.changed.notify_all();
    }
}

/// One pre-locked, segment-sized memory buffer for read/write separation.
pub struct WriteBuffer {
    map: MmapRaw,
    len: usize,
}

// SAFETY: same contract as `Segment`: one writer writes at or beyond the
// segment's `wrote`, the committer reads below it.
unsafe impl Sync for WriteBuffer {}
unsafe impl Send for WriteBuffer {}

impl WriteBuffer {
    fn new(len: usize, lock: bool) -> Result<Self> {
        let map = memmap2::MmapOptions::new()
            .len(len)
            .map_anon()
            .map(MmapRaw::from)
            .map_err(|e| StoreError::io("<write buffer>", e))?;
        let ptr = map.as_mut_ptr();
        // Touch every page so writes never fault, then pin if asked.
        for pos in (0..len).step_by(crate::segment::PAGE_SIZE as usize) {
            // SAFETY: in bounds; nobody else has the buffer yet.
            unsafe { std::ptr::write_volatile(ptr.add(pos), 0u8) };
        }
        // SAFETY: our own live mapping.
        if lock && unsafe { libc::mlock(ptr.cast(), len) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "mlock of write buffer failed");
        }
        Ok(WriteBuffer { map, len })
    }

    /// Copies `bytes` in at `pos`. Writer only.
    pub fn write_at(&self, pos: u64, bytes: &[u8]) {
        assert!(pos as usize + bytes.len() <= self.len, "write past buffer end");
        // SAFETY: bounds checked; single writer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(pos as usize), bytes.len()) }
    }

    /// The bytes in `[from, to)`. Committer only, below the writer.
    pub fn slice(&self, from: u64, to: u64) -> &[u8] {
        assert!(from <= to && to as usize <= self.len);
        // SAFETY: bounds checked; the writer no longer writes below `to`.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(from as usize), (to - from) as usize) }
    }

    fn clear(&self) {
        // SAFETY: the buffer is back in the pool: no writer or committer.
        unsafe { std::ptr::write_bytes(self.map.as_mut_ptr(), 0, self.len) }
    }
}

/// RocketMQ's transient store pool: a fixed set of write buffers.
pub struct WriteBufferPool {
    free: Mutex<Vec<Arc<WriteBuffer>>>,
}

impl WriteBufferPool {
    /// Allocates `count` buffers of `len` bytes up front.
    pub fn new(count: usize, len: usize, lock: bool) -> Result<Self> {
        let free = (0..count).map(|_| WriteBuffer::new(len, lock).map(Arc::new)).collect::<Result<Vec<_>>>()?;
        Ok(WriteBufferPool { free: Mutex::new(free) })
    }

    /// Borrows a buffer, if any is free.
    pub fn borrow(&self) -> Option<Arc<WriteBuffer>> {
        self.free.lock().pop()
    }

    /// Returns a buffer, cleared, so a stale tail never reaches a file.
    pub fn give_back(&self, buf: Arc<WriteBuffer>) {
        buf.clear();
        self.free.lock().push(buf);
    }

    /// Buffers available now.
    pub fn available(&self) -> usize {
        self.free.lock().len()
    }
}

/// Niceness of the preparing thread: warming a segment touches a whole
/// file's pages, and on a busy machine that CPU time must come from idle
/// time, not from the threads answering requests. When it falls behind,
/// the writer takes a partly warmed segment (see `take`) rather than wait.
const BACKGROUND_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority (Linux nice values are
/// per thread). Failing to is harmless: logged, and the thread runs on.
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority take plain integers and touch no memory.
    let tid = unsafe { libc::gettid() };
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the allocator's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a roll asks for ([`SEGMENTS_AHEAD`] from `start`), without a take.
    fn want_ahead(alloc: &Allocator, start: u64) {
        let mut slot = alloc.slot.lock();
        alloc.want_from(&mut slot, start, SEGMENTS_AHEAD);
    }

    #[test]
    fn prepares_ahead_and_times_out_when_asked_for_the_impossible() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Arc::new(Allocator::new(
            dir.path().to_path_buf(),
            65536,
            WarmPolicy { touch: true, lock: false, through_file: true },
        ));
        let runner = alloc.clone();
        let t = std::thread::spawn(move || runner.run());
        alloc.request(0);
        let seg = alloc.take(0, Duration::from_secs(5)).unwrap();
        assert_eq!(seg.start_offset(), 0);
        // Handed over with read-ahead off; once full and retired by the
        // roll into the next one, the thread turns it back on.
        let full = Arc::new(seg);
        assert!(full.has_cold_writes());
        let seg2 = alloc.roll_into(65536, Duration::from_secs(5), Some(full.clone())).unwrap();
        assert_eq!(seg2.start_offset(), 65536);
        assert!(seg2.has_cold_writes());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while full.has_cold_writes() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!full.has_cold_writes());
        alloc.shutdown();
        t.join().unwrap();
        assert!(matches!(alloc.take(1 << 40, Duration::from_millis(10)), Err(StoreError::ShutDown)));
    }

    #[test]
    fn waiting_until_ready_leaves_the_segment_to_take() {
        let dir = tempfile::tempdir().unwrap();
        let alloc = Arc::new(Allocator::new(
            dir.path().to_path_buf(),
            65536,
            WarmPolicy { touch: true, lock: false, through_file: false },
        ));
        assert!(!alloc.wait_ready(0, Duration::from_millis(20)), "nobody prepares it without the thread");
        let runner = alloc.clone();
        let t = std::thread::spawn(move || runner.run());
        assert!(alloc.wait_ready(0, Duration::from_secs(5)));
        assert!(alloc.wait_ready(0, Duration::ZERO), "still there");
        assert_eq!(alloc.take(0, Duration::ZERO).unwrap().start_offset(), 0);
        alloc.shutdown();
        t.join().unwrap();
        assert!(!alloc.wait_ready(65536, Duration::from_secs(5)));
    }

    #[test]
    fn prepares_the_next_two_once_rolled_and_forgets_what_a_new_request_passes_over() {
        const SIZE: u64 = 65536;
        let dir = tempfile::tempdir().unwrap();
        let alloc = Arc::new(Allocator::new(
            dir.path().to_path_buf(),
            SIZE,
            WarmPolicy { touch: true, lock: false, through_file: true },
        ));
        let runner = alloc.clone();
        let t = std::thread::spawn(move || runner.run());
        // Opening: the first segment only.
        alloc.request(0);
        assert!(alloc.wait_ready(0, Duration::from_secs(5)));
        {
            let slot = alloc.slot.lock();
            assert_eq!(slot.wanted, vec![0], "nothing past the one asked for");
            assert_eq!(Allocator::next_to_prepare(&slot), None);
        }
        assert_eq!(alloc.take(0, Duration::ZERO).unwrap().start_offset(), 0);
        // Rolled: the next and the one after it.
        want_ahead(&alloc, SIZE);
        assert!(alloc.wait_ready(SIZE, Duration::from_secs(5)));
        assert!(alloc.wait_ready(2 * SIZE, Duration::from_secs(5)), "the one after is prepared too");
        // Rolling into the next: it is there at once, and the one after it
        // is prepared in turn.
        assert_eq!(alloc.take(SIZE, Duration::ZERO).unwrap().start_offset(), SIZE);
        want_ahead(&alloc, 2 * SIZE);
        assert!(alloc.wait_ready(3 * SIZE, Duration::from_secs(5)));
        assert!(alloc.wait_ready(2 * SIZE, Duration::ZERO));
        // A truncation asks for an earlier start: what lies past it is no
        // longer offered (its file stays, empty, for recovery).
        alloc.request(SIZE);
        assert!(alloc.wait_ready(SIZE, Duration::from_secs(5)));
        assert!(!alloc.slot.lock().ready.iter().any(|(s, _)| *s >= 2 * SIZE));
        assert!(alloc.slot.lock().ready.len() <= SEGMENTS_AHEAD);
        alloc.shutdown();
        t.join().unwrap();
    }

    #[test]
    fn a_roll_takes_asks_ahead_and_retires_at_once_and_nothing_when_the_take_fails() {
        // No thread: the state machine alone, as the thread would see it.
        const SIZE: u64 = 65536;
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::new(dir.path().to_path_buf(), SIZE, WarmPolicy::default());
        alloc.request(0);
        alloc.slot.lock().in_progress = Some(0);
        alloc.prepared(0, Segment::create(dir.path(), 0, SIZE, false, false));
        let first = alloc.roll_into(0, Duration::ZERO, None).unwrap();
        assert_eq!(first.start_offset(), 0);
        assert_eq!(alloc.slot.lock().wanted, vec![SIZE], "a log's first segment asks for one ahead");
        first.expect_cold_writes();
        let full = Arc::new(first);
        // Not prepared yet: the take times out, and the roll leaves the
        // wanted starts and the full segment as they were.
        assert!(matches!(
            alloc.roll_into(SIZE, Duration::from_millis(5), Some(full.clone())),
            Err(StoreError::Busy(_))
        ));
        {
            let slot = alloc.slot.lock();
            assert_eq!(slot.wanted, vec![SIZE]);
            assert!(slot.retired.is_empty());
        }
        alloc.slot.lock().in_progress = Some(SIZE);
        alloc.prepared(SIZE, Segment::create(dir.path(), SIZE, SIZE, false, false));
        let next = alloc.roll_into(SIZE, Duration::ZERO, Some(full.clone())).unwrap();
        assert_eq!(next.start_offset(), SIZE);
        let slot = alloc.slot.lock();
        assert_eq!(slot.wanted, vec![2 * SIZE, 3 * SIZE], "rolled: the next two");
        assert_eq!(slot.retired.len(), 1, "the full segment is handed over for its read-ahead");
        assert!(Arc::ptr_eq(&slot.retired[0], &full));
        assert_eq!(Allocator::next_to_prepare(&slot), Some(2 * SIZE));
    }

    #[test]
    fn a_taken_segment_is_never_prepared_again() {
        // No thread: the state machine alone, as the thread would see it.
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::new(dir.path().to_path_buf(), 65536, WarmPolicy::default());
        want_ahead(&alloc, 0);
        alloc.slot.lock().in_progress = Some(0);
        alloc.prepared(0, Segment::create(dir.path(), 0, 65536, false, false));
        assert_eq!(alloc.take(0, Duration::ZERO).unwrap().start_offset(), 0);
        // Between the take and the writer's next request the thread must
        // not pick the segment the writer is now filling.
        let slot = alloc.slot.lock();
        assert_eq!(Allocator::next_to_prepare(&slot), Some(65536));
        assert!(!slot.wanted.contains(&0));
    }

    #[test]
    fn a_segment_withdrawn_while_prepared_is_dropped_even_if_wanted_again() {
        const SIZE: u64 = 65536;
        let dir = tempfile::tempdir().unwrap();
        let alloc = Allocator::new(dir.path().to_path_buf(), SIZE, WarmPolicy::default());
        // Preparing 2 * SIZE, the second one ahead...
        want_ahead(&alloc, SIZE);
        alloc.slot.lock().in_progress = Some(2 * SIZE);
        let seg = Segment::create(dir.path(), 2 * SIZE, SIZE, false, false);
        // ...when a truncation withdraws it (and deletes its file), then
        // the writer rolls and wants it again before the thread is done.
        alloc.withdraw();
        std::fs::remove_file(dir.path().join(crate::segment::file_name(2 * SIZE))).unwrap();
        alloc.request(SIZE);
        want_ahead(&alloc, SIZE);
        alloc.prepared(2 * SIZE, seg);
        let slot = alloc.slot.lock();
        assert!(slot.ready.is_empty(), "a deleted file must not be handed to the writer");
        assert_eq!(Allocator::next_to_prepare(&slot), Some(SIZE));
        assert!(!slot.cancelled);
    }

    #[test]
    fn pool_lends_and_clears() {
        let pool = WriteBufferPool::new(2, 8192, false).unwrap();
        let a = pool.borrow().unwrap();
        let _b = pool.borrow().unwrap();
        assert!(pool.borrow().is_none());
        a.write_at(10, b"abc");
        assert_eq!(a.slice(10, 13), b"abc");
        pool.give_back(a);
        let c = pool.borrow().unwrap();
        assert_eq!(c.slice(10, 13), &[0, 0, 0]);
    }
}
