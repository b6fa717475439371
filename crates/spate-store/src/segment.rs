//! One pre-allocated, memory-mapped store file (RocketMQ's "mapped file").
//!
//! A segment is created at its full size (blocks allocated with
//! `fallocate`, so a later write through the mapping can never hit a full
//! disk), mapped shared, and optionally warmed: every page touched so the
//! append path never takes a page fault, then `mlock`ed and advised
//! `WILLNEED`.
//!
//! Concurrency contract: exactly one writer (the owner of the log this
//! segment belongs to) writes at or beyond `wrote`; readers read only below
//! the published `readable` position. Positions are published with
//! release stores after the bytes are in place and read with acquire loads,
//! so a reader that sees a position also sees the bytes below it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::Mutex;

use crate::error::{Result, StoreError};

/// Page size used for warming and dirty-page accounting.
pub const PAGE_SIZE: u64 = 4096;

/// Bytes [`Segment::flush`] writes back per step: small enough that the
/// kernel's after-I/O work for one step stays well under a millisecond.
const WRITE_BACK_STEP: u64 = 4 << 20;

/// File name of a segment: its start offset, zero-padded to 20 digits.
pub fn file_name(start_offset: u64) -> String {
    format!("{start_offset:020}")
}

/// Parses a segment file name back into its start offset.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

/// A pre-allocated, mapped store file.
pub struct Segment {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    start_offset: u64,
    size: u64,
    /// Bytes written by the writer (relative to the segment start).
    wrote: AtomicU64,
    /// Bytes visible to readers: equal to `wrote` for direct writes, behind
    /// it while a write buffer (read/write separation) is not yet committed.
    readable: AtomicU64,
    /// Bytes known durable on disk.
    flushed: AtomicU64,
    locked: AtomicBool,
    /// Read-ahead is off for this mapping (see [`Segment::expect_cold_writes`]).
    cold_writes: AtomicBool,
    /// Pages `mincore` last found resident (see [`Segment::is_resident`]).
    resident_seen: Mutex<ResidentSeen>,
}

/// A page range `mincore` found in the page cache, and when its oldest part
/// was checked.
#[derive(Clone, Copy)]
struct ResidentSeen {
    from_page: usize,
    to_page: usize,
    checked_at: Option<Instant>,
}

/// How long a page `mincore` found in the page cache is taken to be still
/// there without asking again. `mincore` itself answers only for the moment
/// it runs (a page may be reclaimed right after); a tail page read by every
/// pull of a busy queue is the last a kernel reclaims, and a wrong answer
/// costs one read from the disk on a runtime worker, not data.
const RESIDENT_FRESH: Duration = Duration::from_millis(5);

// SAFETY: the raw mapping is shared memory. Writes happen only through
// `write_at`, which the owning log calls from its single writer; readers read
// only below `readable`, which the writer publishes with release ordering
// after the bytes are in place. No two threads write the same range.
unsafe impl Sync for Segment {}
unsafe impl Send for Segment {}

impl Segment {
    /// Creates (or reopens) the file at `dir/<start_offset>` with `size` bytes
    /// allocated on disk, and maps it. `warm` pre-faults every page; `lock`
    /// additionally pins the pages with `mlock`.
    pub fn create(dir: &Path, start_offset: u64, size: u64, warm: bool, lock: bool) -> Result<Self> {
        let path = dir.join(file_name(start_offset));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        if len != size {
            if len > size {
                return Err(StoreError::Corrupt { path, reason: format!("file is {len} bytes, expected {size}") });
            }
            allocate(&file, size).map_err(|e| StoreError::io(&path, e))?;
        }
        let map = MmapOptions::new().len(size as usize).map_raw(&file).map_err(|e| StoreError::io(&path, e))?;
        let segment = Segment {
            path,
            file,
            map,
            start_offset,
            size,
            wrote: AtomicU64::new(0),
            readable: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            locked: AtomicBool::new(false),
            cold_writes: AtomicBool::new(false),
            resident_seen: Mutex::new(ResidentSeen { from_page: 0, to_page: 0, checked_at: None }),
        };
        if warm {
            segment.warm(lock, false, || false);
        }
        Ok(segment)
    }

    /// Touches every page so later writes do not fault, and optionally locks
    /// the mapping in memory. The pages become dirty zeros mapped writable;
    /// they are not written back: [`Segment::flush`] syncs only the range
    /// appended, and what the kernel writes of the rest on its own (after
    /// `dirty_expire_centisecs`, on a segment filling slowly) costs a fault
    /// per page later, which a slow writer does not feel.
    /// Runs off the append path (allocator thread),
    /// before the segment is handed to the writer. `abort` is polled every
    /// 16 MiB: when the writer is already waiting for this segment, a cold
    /// rest (page faults) costs it less than waiting for the whole warm-up.
    /// Returns whether every page was touched.
    pub fn warm(&self, lock: bool, through_file: bool, abort: impl Fn() -> bool) -> bool {
        self.warm_from(0, lock, through_file, abort)
    }

    /// [`Segment::warm`] from `from` (rounded up to a page: the page
    /// holding `from` may hold data) to the end: for the segment appends
    /// continue in after a restart, whose pages below `from` hold data
    /// that warming would only read in.
    ///
    /// `through_file`: write each chunk's zeros with `pwrite` before the
    /// populate (see [`WarmPolicy::through_file`](crate::allocator::WarmPolicy)).
    pub fn warm_from(&self, from: u64, lock: bool, through_file: bool, abort: impl Fn() -> bool) -> bool {
        /// `MADV_POPULATE_WRITE` (not in every libc crate version).
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        const CHUNK: u64 = 16 << 20;
        let ptr = self.map.as_mut_ptr();
        let mut pos = from.min(self.size).next_multiple_of(PAGE_SIZE).min(self.size);
        let mut populate = true;
        // Untouched pages of a calloc'd buffer: reading it costs no memory.
        let zeros = if through_file { vec![0u8; CHUNK.min(self.size) as usize] } else { Vec::new() };
        while pos < self.size {
            if abort() {
                return false;
            }
            let len = CHUNK.min(self.size - pos);
            // Zeros written through the file first: the page cache takes a
            // chunk in one call, about four times faster than the populate
            // below faults the same pages in one by one through the file
            // system (`page_mkwrite` per page), which then only maps them.
            // Nobody writes at or past `from` yet and the file is all zeros
            // there (see below), so this changes no byte. A failure leaves
            // the populate to do it all.
            if through_file {
                let _ = self.pwrite(pos, &zeros[..len as usize]);
            }
            // SAFETY: the range is inside our live mapping. The kernel
            // faults its pages in writable (Linux 5.14+) in one call, far
            // cheaper than a fault per page.
            if populate
                && unsafe { libc::madvise(ptr.add(pos as usize).cast(), len as usize, MADV_POPULATE_WRITE) } != 0
            {
                populate = false;
            }
            if !populate {
                let mut page = pos;
                while page < pos + len {
                    // SAFETY: in bounds of the mapping; nobody writes at or
                    // past `from` yet, and the file is all zeros there (a new
                    // file, or a recovered tail that was zeroed), so writing
                    // a zero byte changes nothing but the page tables.
                    unsafe { std::ptr::write_volatile(ptr.add(page as usize), 0u8) };
                    page += PAGE_SIZE;
                }
            }
            pos += len;
        }
        // SAFETY: advisory calls on our own live mapping.
        unsafe {
            libc::madvise(ptr.cast(), self.size as usize, libc::MADV_WILLNEED);
            if lock && libc::mlock(ptr.cast(), self.size as usize) == 0 {
                self.locked.store(true, Ordering::Relaxed);
            }
        }
        if lock && !self.locked.load(Ordering::Relaxed) {
            tracing::warn!(path = %self.path.display(), error = %io::Error::last_os_error(), "mlock failed; segment is warmed but not locked");
        }
        true
    }

    /// Prepares a segment for being written while some of its pages are
    /// cold (not yet warmed, or never). Otherwise the kernel takes a write
    /// fault on such a page for a read of the file and reads ahead
    /// `read_ahead_kb` (megabytes on many devices), so one append zeroes
    /// megabytes of page cache and the writer stalls for milliseconds
    /// (19 ms seen with 8 MiB read-ahead).
    /// With read-ahead off each cold page costs its own small fault.
    /// [`Segment::end_cold_writes`] turns read-ahead back on once the
    /// segment is full, for readers of old data.
    pub fn expect_cold_writes(&self) {
        // SAFETY: advisory call on our own live mapping.
        if unsafe { libc::madvise(self.map.as_mut_ptr().cast(), self.size as usize, libc::MADV_RANDOM) } == 0 {
            self.cold_writes.store(true, Ordering::Relaxed);
        }
    }

    /// Whether [`Segment::expect_cold_writes`] is in effect.
    pub fn has_cold_writes(&self) -> bool {
        self.cold_writes.load(Ordering::Relaxed)
    }

    /// Undoes [`Segment::expect_cold_writes`]. Takes the process's mapping
    /// lock for writing, so it is called off the append path.
    pub fn end_cold_writes(&self) {
        if self.cold_writes.swap(false, Ordering::Relaxed) {
            // SAFETY: advisory call on our own live mapping.
            unsafe { libc::madvise(self.map.as_mut_ptr().cast(), self.size as usize, libc::MADV_NORMAL) };
        }
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Offset of the first byte of this segment in the log.
    pub fn start_offset(&self) -> u64 {
        self.start_offset
    }

    /// Size of the file in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset just past this segment.
    pub fn end_offset(&self) -> u64 {
        self.start_offset + self.size
    }

    /// Bytes written (relative).
    pub fn wrote(&self) -> u64 {
        self.wrote.load(Ordering::Acquire)
    }

    /// Bytes readable (relative).
    pub fn readable(&self) -> u64 {
        self.readable.load(Ordering::Acquire)
    }

    /// Bytes flushed (relative).
    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    /// Whether the mapping is `mlock`ed.
    pub fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }

    /// Space left for the writer.
    pub fn remaining(&self) -> u64 {
        self.size - self.wrote.load(Ordering::Relaxed)
    }

    /// Copies `bytes` into the mapping at relative `pos`. Writer only.
    ///
    /// The caller guarantees it is the only writer and that `pos` is at or
    /// beyond every position published to readers.
    pub fn write_at(&self, pos: u64, bytes: &[u8]) {
        debug_assert!(pos >= self.readable.load(Ordering::Relaxed));
        self.copy_in(pos, bytes);
    }

    /// Rewrites bytes below the published position: only for an all-zero
    /// consume-queue unit being filled during re-dispatch (no reader can
    /// have used an empty unit).
    pub fn write_at_published(&self, pos: u64, bytes: &[u8]) {
        self.copy_in(pos, bytes);
    }

    /// Copies into the mapping without the writer-position check: for
    /// writer-exclusive work (truncation, recovery) that rewrites published
    /// bytes while no reader can look.
    fn copy_in(&self, pos: u64, bytes: &[u8]) {
        assert!(pos + bytes.len() as u64 <= self.size, "write past segment end");
        // SAFETY: bounds checked above; the single-writer contract means no
        // other thread writes this range and no reader reads it yet.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(pos as usize), bytes.len());
        }
    }

    /// Writes a record so that a crash mid-copy leaves its first four bytes
    /// (the size field) zero: everything after the size goes in first, then
    /// the size. Recovery sees a zero size as the end of the log, never a
    /// half-copied record.
    pub fn write_record_at(&self, pos: u64, record: &[u8]) {
        debug_assert!(record.len() >= 4);
        self.write_at(pos + 4, &record[4..]);
        std::sync::atomic::fence(Ordering::Release);
        self.write_at(pos, &record[..4]);
    }

    /// Publishes `wrote` (and `readable`, for direct writes). Writer only.
    pub fn set_wrote(&self, pos: u64, also_readable: bool) {
        debug_assert!(pos <= self.size);
        self.wrote.store(pos, Ordering::Release);
        if also_readable {
            self.readable.store(pos, Ordering::Release);
        }
    }

    /// Publishes `readable` (used by the committer of a write buffer, and by
    /// recovery).
    pub fn set_readable(&self, pos: u64) {
        debug_assert!(pos <= self.wrote.load(Ordering::Relaxed));
        self.readable.store(pos, Ordering::Release);
    }

    /// Marks everything below `pos` flushed (recovery, or after `flush`).
    pub fn set_flushed(&self, pos: u64) {
        self.flushed.fetch_max(pos, Ordering::AcqRel);
    }

    /// Zeroes `[pos, size)` wherever it is not zero already (recovery: stale
    /// bytes past a cut must never read back as records).
    pub fn zero_from(&self, pos: u64) {
        self.zero_range(pos, self.size);
    }

    /// Zeroes `[from, to)` in 64 KiB chunks, skipping chunks already zero
    /// (reading is cheaper than dirtying pages that need no change).
    fn zero_range(&self, from: u64, to: u64) {
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK as usize];
        let mut buf = vec![0u8; CHUNK as usize];
        let mut at = from;
        while at < to {
            let n = (to - at).min(CHUNK) as usize;
            self.read_into(at, &mut buf[..n]);
            if buf[..n].iter().any(|b| *b != 0) {
                self.copy_in(at, &zeros[..n]);
            }
            at += n as u64;
        }
    }

    /// Copies `len` bytes at relative `pos` out of the mapping. The range
    /// must be below `readable` (or the caller must own the segment).
    pub fn read(&self, pos: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.read_into(pos, &mut out);
        out
    }

    /// Whether every page of `pos..pos + len` is in the page cache, so that
    /// reading it cannot wait for the disk (at worst a minor fault). Pages
    /// found resident within the last [`RESIDENT_FRESH`] are not asked about
    /// again: a pull at a busy queue's tail reads the pages the one before
    /// it read, plus the newest, and the `mincore` per pull was 5 % of the
    /// broker's CPU at 10k messages/s. One `mincore` call at most; false on
    /// any error or a range past the end.
    pub fn is_resident(&self, pos: u64, len: usize) -> bool {
        self.is_resident_at(pos, len, Instant::now())
    }

    /// [`Segment::is_resident`] as of `now`.
    fn is_resident_at(&self, pos: u64, len: usize, now: Instant) -> bool {
        const PAGE: usize = PAGE_SIZE as usize;
        if len == 0 || pos + len as u64 > self.size {
            return len == 0;
        }
        let (from_page, to_page) = (pos as usize / PAGE, (pos as usize + len).div_ceil(PAGE));
        // A bounded check: longer ranges are not worth a syscall's vector.
        if to_page - from_page > 256 {
            return false;
        }
        let seen = *self.resident_seen.lock();
        let fresh = seen.checked_at.is_some_and(|at| now.saturating_duration_since(at) < RESIDENT_FRESH);
        // Only the pages past a fresh range that this one starts in need asking.
        let extends = fresh && seen.from_page <= from_page && from_page <= seen.to_page;
        let ask_from = if extends { seen.to_page } else { from_page };
        if ask_from >= to_page {
            return true;
        }
        if !self.mincore_all(ask_from, to_page) {
            return false;
        }
        let mut slot = self.resident_seen.lock();
        *slot = if extends && slot.checked_at == seen.checked_at {
            // The range grows; its age stays that of its oldest check.
            ResidentSeen { from_page: seen.from_page, to_page, checked_at: seen.checked_at }
        } else {
            ResidentSeen { from_page, to_page, checked_at: Some(now) }
        };
        true
    }

    /// One `mincore` over pages `from_page..to_page` (at most 256): whether
    /// all are in the page cache.
    fn mincore_all(&self, from_page: usize, to_page: usize) -> bool {
        const PAGE: usize = PAGE_SIZE as usize;
        #[cfg(test)]
        tests::MINCORE_CALLS.with(|c| c.set(c.get() + 1));
        let pages = to_page - from_page;
        let mut vec = [0u8; 256];
        if pages > vec.len() {
            return false;
        }
        // SAFETY: the pages lie inside this segment's mapping (the caller
        // checked the range against its size), the start is page aligned
        // (the mapping is), and `vec` holds one byte per page.
        let rc = unsafe {
            libc::mincore(self.map.as_ptr().add(from_page * PAGE) as *mut libc::c_void, pages * PAGE, vec.as_mut_ptr())
        };
        rc == 0 && vec[..pages].iter().all(|b| b & 1 == 1)
    }

    /// The bytes at `pos..pos + len`, borrowed from the mapping: for a range
    /// below the readable position, which nobody writes again while the
    /// segment lives (a truncation first stops every reader that uses this:
    /// the dispatcher, under its lock). The dispatcher reads a round of
    /// records this way; copying each round out cost a fifth of its CPU.
    pub fn bytes(&self, pos: u64, len: usize) -> &[u8] {
        assert!(pos + len as u64 <= self.size, "read past segment end");
        // SAFETY: bounds checked and the mapping lives as long as `self`;
        // the range is published and no longer written (see above).
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos as usize), len) }
    }

    /// Copies bytes at relative `pos` into `out`.
    pub fn read_into(&self, pos: u64, out: &mut [u8]) {
        assert!(pos + out.len() as u64 <= self.size, "read past segment end");
        // SAFETY: bounds checked; the range is below the published position,
        // so the writer no longer touches it.
        unsafe {
            std::ptr::copy_nonoverlapping(self.map.as_ptr().add(pos as usize), out.as_mut_ptr(), out.len());
        }
    }

    /// Writes through the file descriptor instead of the mapping (the
    /// committer of a write buffer uses this; the page cache is shared with
    /// the mapping, so readers see the bytes).
    pub fn pwrite(&self, pos: u64, bytes: &[u8]) -> Result<()> {
        self.file.write_all_at(bytes, pos).map_err(|e| StoreError::io(&self.path, e))
    }

    /// Makes everything written so far (through the mapping or the file)
    /// durable, and records the flushed position. Blocking: call from a
    /// store thread only.
    ///
    /// Only the range written since the last flush is synced: a warmed
    /// segment's pages beyond it are dirty zeros (see [`Segment::warm`]),
    /// and a whole-file `fdatasync` would write up to a gigabyte of them.
    /// The range goes out [`WRITE_BACK_STEP`] at a time first, then one
    /// `msync(MS_SYNC)` (`fdatasync` limited to the range) commits the
    /// metadata. The file was allocated with `posix_fallocate`, so its
    /// blocks are "unwritten" and ext4 marks them written after each
    /// write completes, in a kernel worker. For tens of megabytes at once
    /// that is one long piece of kernel work on whichever CPU it lands,
    /// which nothing, not even a real-time thread, can preempt on a kernel
    /// without full preemption (45 ms was once seen on the broker's CPU for
    /// a gigabyte). In steps, each piece is short.
    pub fn flush(&self) -> Result<u64> {
        let target = self.readable();
        let from = self.flushed();
        if target > from {
            let start = from - from % PAGE_SIZE;
            if target - start > WRITE_BACK_STEP {
                self.write_back(start, target)?;
            }
            self.map
                .flush_range(start as usize, (target - start) as usize)
                .map_err(|e| StoreError::io(&self.path, e))?;
            self.set_flushed(target);
        }
        Ok(self.flushed())
    }

    /// Writes the dirty pages of `[from, to)` back and waits for them,
    /// [`WRITE_BACK_STEP`] at a time. Metadata is not synced.
    fn write_back(&self, from: u64, to: u64) -> Result<()> {
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let mut pos = from;
        while pos < to {
            let len = WRITE_BACK_STEP.min(to - pos);
            // SAFETY: plain syscall on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::sync_file_range(self.file.as_raw_fd(), pos as i64, len as i64, flags) };
            if rc != 0 {
                return Err(StoreError::io(&self.path, io::Error::last_os_error()));
            }
            pos += len;
        }
        Ok(())
    }

    /// Zeroes `[pos, end of what was written)` so the tail reads as empty,
    /// makes the zeros durable, then resets positions to `pos`.
    /// Writer-exclusive (truncation). Blocking.
    pub fn truncate_to(&self, pos: u64) -> Result<()> {
        let end = self.wrote().max(pos).min(self.size);
        self.zero_range(pos, end);
        if end > pos {
            // Without this the cut records could come back after a power loss.
            let start = pos - pos % PAGE_SIZE;
            self.map.flush_range(start as usize, (end - start) as usize).map_err(|e| StoreError::io(&self.path, e))?;
        }
        self.wrote.store(pos, Ordering::Release);
        self.readable.store(pos, Ordering::Release);
        self.flushed.store(self.flushed().min(pos), Ordering::Release);
        Ok(())
    }

    /// Last-modified time of the file, for retention.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.file.metadata().and_then(|m| m.modified()).ok()
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: our own live mapping of `size` bytes; nothing can use it
        // once the segment is dropped, and MmapRaw unmaps it after this.
        unsafe { release_pages(self.map.as_mut_ptr(), self.size, self.is_locked()) };
    }
}

/// Bytes of a mapping [`release_pages`] lets go of per step.
const RELEASE_STEP: u64 = 4 << 20;

/// Drops a file mapping's page-table entries (and `mlock`) a few megabytes
/// at a time, so the `munmap` that follows has almost nothing left to do.
///
/// `munmap` holds the process's mapping lock for writing while it tears
/// down every page; for a resident gigabyte (retention deleting a segment)
/// that is 20-80 ms and more on a busy CPU. Any other thread that needs the
/// lock meanwhile waits, even a real-time one: the core lane, whose
/// allocator grew its heap with `mprotect`, waited 155 ms behind it.
/// `madvise(MADV_DONTNEED)` on a shared file mapping keeps the data (dirty
/// pages stay dirty in the page cache) and takes the lock for reading, for
/// one step at a time.
///
/// # Safety
/// `ptr..ptr + len` must be a live mapping of the caller's that nothing
/// else accesses any more.
pub(crate) unsafe fn release_pages(ptr: *mut u8, len: u64, locked: bool) {
    let mut pos = 0u64;
    while pos < len {
        let step = RELEASE_STEP.min(len - pos);
        // SAFETY: inside the caller's mapping (see the function's contract);
        // failures only leave the work to munmap.
        unsafe {
            let at = ptr.add(pos as usize).cast();
            if locked {
                libc::munlock(at, step as usize);
            }
            libc::madvise(at, step as usize, libc::MADV_DONTNEED);
        }
        pos += step;
    }
}

/// Reserves `size` bytes of disk for the file so writes through the mapping
/// cannot fail for lack of space later.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) };
    match rc {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Fsyncs a directory so a created, renamed or deleted entry is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(1073741824), "00000000001073741824");
        assert_eq!(parse_file_name("00000000001073741824"), Some(1073741824));
        assert_eq!(parse_file_name("0000000000107374182x"), None);
        assert_eq!(parse_file_name("123"), None);
    }

    #[test]
    fn write_read_flush_truncate() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 4096, 8192, true, false).unwrap();
        assert_eq!(std::fs::metadata(seg.path()).unwrap().len(), 8192);
        seg.write_record_at(0, b"abcdefgh");
        seg.set_wrote(8, true);
        assert_eq!(seg.read(0, 8), b"abcdefgh");
        assert_eq!(seg.flush().unwrap(), 8);
        seg.truncate_to(4).unwrap();
        assert_eq!(seg.read(0, 8), b"abcd\0\0\0\0");
        assert_eq!(seg.flushed(), 4);
        assert_eq!(seg.end_offset(), 12288);
    }

    /// The kernel's flags for the mapping starting at `addr`, from
    /// `/proc/self/smaps` ("rr": read-ahead off).
    fn vm_flags(addr: usize) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{addr:x}-")));
        lines.find_map(|l| l.strip_prefix("VmFlags:")).unwrap_or_default().to_string()
    }

    #[test]
    fn read_ahead_is_off_while_cold_pages_are_written_and_back_on_after() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 0, 1 << 20, false, false).unwrap();
        let addr = seg.map.as_mut_ptr() as usize;
        assert!(!vm_flags(addr).split_whitespace().any(|f| f == "rr"), "{}", vm_flags(addr));
        seg.expect_cold_writes();
        assert!(seg.has_cold_writes());
        assert!(vm_flags(addr).split_whitespace().any(|f| f == "rr"), "{}", vm_flags(addr));
        seg.write_at(0, b"abc");
        seg.end_cold_writes();
        assert!(!seg.has_cold_writes());
        assert!(!vm_flags(addr).split_whitespace().any(|f| f == "rr"), "{}", vm_flags(addr));
    }

    #[test]
    fn warming_stops_when_asked_and_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 0, 1 << 20, false, false).unwrap();
        assert!(!seg.warm(false, false, || true), "an abort before the first chunk leaves it cold");
        assert!(seg.warm(false, false, || false));
    }

    #[test]
    fn warming_the_rest_of_a_written_segment_keeps_its_data_and_maps_the_rest() {
        for through_file in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let size = 64 * PAGE_SIZE;
            let seg = Segment::create(dir.path(), 0, size, false, false).unwrap();
            seg.write_at(0, &[7u8; 5000]);
            seg.set_wrote(5000, true);
            let addr = seg.map.as_ptr() as usize;
            assert!(mapping_rss_kb(addr) <= 2 * PAGE_SIZE / 1024);
            assert!(seg.warm_from(5000, false, through_file, || false));
            assert!(mapping_rss_kb(addr) >= (size - 2 * PAGE_SIZE) / 1024, "{}", mapping_rss_kb(addr));
            assert_eq!(seg.read(0, 5000), vec![7u8; 5000], "through_file: {through_file}");
            assert_eq!(seg.read(5000, (size - 5000) as usize), vec![0u8; (size - 5000) as usize]);
            assert!(seg.warm_from(size + 1, false, through_file, || false), "past the end is nothing to do");
        }
    }

    #[test]
    fn a_flush_in_steps_covers_a_size_that_is_not_a_multiple_of_the_step() {
        let dir = tempfile::tempdir().unwrap();
        let size = 2 * WRITE_BACK_STEP + 2 * PAGE_SIZE;
        let seg = Segment::create(dir.path(), 0, size, true, false).unwrap();
        seg.write_at(size - 100, &[9u8; 100]);
        seg.set_wrote(size, true);
        assert_eq!(seg.flush().unwrap(), size);
        let path = seg.path().to_path_buf();
        drop(seg);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len() as u64, size);
        assert!(bytes[(size - 100) as usize..].iter().all(|b| *b == 9));
    }

    /// Resident size of the mapping that starts at `addr`, from smaps (per
    /// mapping, so other tests' files do not count).
    fn mapping_rss_kb(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let start = line.split('-').next().and_then(|h| usize::from_str_radix(h, 16).ok());
            if start == Some(addr) && line.contains(' ') {
                for l in lines.by_ref() {
                    if let Some(kb) = l.strip_prefix("Rss:") {
                        return kb.trim().trim_end_matches("kB").trim().parse().unwrap();
                    }
                }
            }
        }
        panic!("no mapping at {addr:#x}");
    }

    #[test]
    fn releasing_pages_empties_the_mapping_and_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let size = 3 * RELEASE_STEP + 2 * PAGE_SIZE;
        let seg = Segment::create(dir.path(), 0, size, true, false).unwrap();
        seg.write_at(size - 100, &[5u8; 100]);
        let addr = seg.map.as_ptr() as usize;
        let before = mapping_rss_kb(addr);
        assert!(before * 1024 >= size - PAGE_SIZE, "warmed, so resident: {before} kB");
        // SAFETY: the segment's own mapping; the read below faults back in.
        unsafe { release_pages(seg.map.as_mut_ptr(), size, false) };
        let after = mapping_rss_kb(addr);
        assert!(after <= 8, "{after} kB still mapped after the release");
        assert_eq!(seg.read(size - 100, 100), vec![5u8; 100], "the data stays in the file");
    }

    #[test]
    fn residency_follows_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 0, 64 << 20, false, false).unwrap();
        // Allocated but never touched: not in the page cache (far from the
        // write below, so its read-around cannot bring it in either).
        let far = 48 << 20;
        assert!(!seg.is_resident(far, 100));
        seg.write_at(4000, &[7u8; 200]);
        assert!(seg.is_resident(4000, 200), "both pages written just now");
        assert!(!seg.is_resident(far, 100));
        assert!(seg.is_resident(0, 0));
        assert!(!seg.is_resident((64 << 20) - 10, 20), "past the end");
        assert!(!seg.is_resident(0, 2 << 20), "longer than one check covers");
    }

    thread_local! {
        pub(super) static MINCORE_CALLS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_range_found_resident_is_not_asked_about_again_while_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let seg = Segment::create(dir.path(), 0, 64 << 20, false, false).unwrap();
        let calls = || MINCORE_CALLS.with(|c| c.get());
        // Through the file, not the mapping: a fault would read around it.
        seg.pwrite(0, &[1u8; 3 * 4096]).unwrap();
        let t0 = Instant::now();
        let before = calls();
        assert!(seg.is_resident_at(100, 4000, t0), "pages 0 and 1");
        assert!(seg.is_resident_at(5000, 100, t0), "inside the range just checked");
        assert!(seg.is_resident_at(0, 3 * 4096, t0), "extends it by page 2");
        assert_eq!(calls() - before, 2, "the first check, then one for the extension");
        let before = calls();
        assert!(seg.is_resident_at(4096, 8192, t0), "wholly inside the range found resident");
        assert!(seg.is_resident_at(0, 10, t0));
        assert_eq!(calls(), before, "nothing new to ask about");
        // An extension into pages never written is asked about, and refused.
        assert!(!seg.is_resident_at(2 * 4096, 257 * 4096, t0), "longer than one check: refused unasked");
        assert!(!seg.is_resident_at(2 * 4096, 3 * 4096, t0), "pages 3 and 4 were never written");
        assert!(seg.is_resident_at(4096, 100, t0), "a refusal does not spoil what was found");
        // A range the cache does not reach is asked about in full.
        let before = calls();
        assert!(!seg.is_resident_at(48 << 20, 100, t0));
        assert_eq!(calls(), before + 1);
        // Once stale, the same range is asked about again.
        let before = calls();
        assert!(seg.is_resident_at(4096, 100, t0 + RESIDENT_FRESH));
        assert_eq!(calls(), before + 1, "a stale answer is not trusted");
    }

    #[test]
    fn reopen_keeps_bytes_and_refuses_oversized_file() {
        let dir = tempfile::tempdir().unwrap();
        {
            let seg = Segment::create(dir.path(), 0, 4096, false, false).unwrap();
            seg.write_at(10, b"xyz");
            seg.set_wrote(13, true);
            seg.flush().unwrap();
        }
        let seg = Segment::create(dir.path(), 0, 4096, false, false).unwrap();
        assert_eq!(seg.read(10, 3), b"xyz");
        drop(seg);
        assert!(matches!(Segment::create(dir.path(), 0, 1024, false, false), Err(StoreError::Corrupt { .. })));
    }
}
