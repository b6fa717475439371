//! Persistent hash index from message keys to commit-log offsets (the
//! equivalent of RocketMQ's index files).
//!
//! Files live in one directory and are named by a sequence number, 20 digits
//! zero-padded (`00000000000000000000`, `00000000000000000001`, ...); a new
//! file always gets a number above every name seen in the directory, so name
//! order is creation order. Each file is pre-allocated to its full size and
//! memory-mapped. Layout (all integers big-endian):
//!
//! - header, 40 bytes: begin timestamp ms (i64), end timestamp ms (i64),
//!   begin physical offset (i64), end physical offset (i64), slots in use
//!   (i32), entry count (i32, starts at 1 so that entry number 0 means
//!   "none");
//! - `max_hash_slots` slots of 4 bytes: number of the newest entry whose key
//!   hashes to the slot, 0 when empty;
//! - `max_index_count` entries of 20 bytes: key hash (i32), physical offset
//!   (i64), seconds since the file's begin timestamp (i32), number of the
//!   previous entry in the same slot (i32, 0 ends the chain).
//!
//! Concurrency: one writer (serialised by an internal mutex) appends; any
//! number of readers query without blocking it. Entries are immutable once
//! written. The writer fills an entry, publishes the new count (release),
//! then points the slot at the entry (release); a reader loads the slot
//! (acquire) and then the count, so every entry it can reach is complete,
//! and a slot value at or above the count (left by a crash) is ignored.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use memmap2::{MmapOptions, MmapRaw};
use parking_lot::{Mutex, RwLock};

use crate::error::{Result, StoreError};
use crate::segment::sync_dir;

const HEADER_SIZE: usize = 40;
const SLOT_SIZE: usize = 4;
const ENTRY_SIZE: usize = 20;
/// Slack applied to time filters: entry times are stored in whole seconds.
const TIME_SLACK_MS: i64 = 1000;

/// Stable 32-bit hash of a message key within its topic: the CRC-32 of
/// `topic#key`, computed in pieces so no string is built per entry (the
/// dispatcher puts one or more entries per message).
fn key_hash(topic: &str, key: &str) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(topic.as_bytes());
    h.update(b"#");
    h.update(key.as_bytes());
    h.finalize()
}

fn file_size(slots: u32, capacity: u32) -> u64 {
    HEADER_SIZE as u64 + slots as u64 * SLOT_SIZE as u64 + capacity as u64 * ENTRY_SIZE as u64
}

fn parse_name(name: &str) -> Option<u64> {
    if name.len() == 20 && name.bytes().all(|b| b.is_ascii_digit()) {
        name.parse().ok()
    } else {
        None
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}

/// One decoded entry.
struct Entry {
    hash: u32,
    phys: u64,
    time_diff_s: i32,
    prev: u32,
}

/// One mapped index file.
struct IndexFile {
    path: PathBuf,
    seq: u64,
    map: MmapRaw,
    slots: u32,
    capacity: u32,
    /// Next entry number; entries `1..count` are complete.
    count: AtomicU32,
    /// `count` as of the last successful flush.
    flushed: AtomicU32,
    used_slots: AtomicU32,
    begin_ts: AtomicI64,
    end_ts: AtomicI64,
    begin_phys: AtomicU64,
    end_phys: AtomicU64,
}

impl Drop for IndexFile {
    fn drop(&mut self) {
        // SAFETY: our own live mapping; nothing uses it once the file is
        // dropped, and MmapRaw unmaps it after this.
        unsafe { crate::segment::release_pages(self.map.as_mut_ptr(), self.map.len() as u64, false) };
    }
}

impl IndexFile {
    /// Creates a new, empty file (never overwrites an existing one).
    fn create(dir: &Path, seq: u64, slots: u32, capacity: u32) -> Result<IndexFile> {
        let path = dir.join(format!("{seq:020}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        allocate(&file, file_size(slots, capacity)).map_err(|e| StoreError::io(&path, e))?;
        let f = Self::map(path, seq, &file, slots, capacity)?;
        f.write_header();
        Ok(f)
    }

    /// Opens an existing file. `Ok(Err(reason))` means the file is not a
    /// valid index file for these settings.
    fn load(path: PathBuf, seq: u64, slots: u32, capacity: u32) -> Result<Result<IndexFile, String>> {
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| StoreError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StoreError::io(&path, e))?.len();
        let want = file_size(slots, capacity);
        if len != want {
            return Ok(Err(format!("file is {len} bytes, expected {want}")));
        }
        let f = Self::map(path, seq, &file, slots, capacity)?;
        let mut h = [0u8; HEADER_SIZE];
        f.read(0, &mut h);
        let (begin_ts, end_ts) = (be_i64(&h, 0), be_i64(&h, 8));
        let (begin_phys, end_phys) = (be_i64(&h, 16), be_i64(&h, 24));
        let (used, count) = (be_i32(&h, 32), be_i32(&h, 36));
        // A zero count is a header never written (crash right after creation).
        let count = if count == 0 { 1 } else { count };
        if count < 1 || count as u32 > capacity {
            return Ok(Err(format!("entry count {count} outside 1..={capacity}")));
        }
        if used < 0 || used as u32 > slots {
            return Ok(Err(format!("used slot count {used} outside 0..={slots}")));
        }
        if count > 1 && (begin_phys < 0 || end_phys < begin_phys || end_ts < begin_ts) {
            return Ok(Err(format!("bad ranges: time {begin_ts}..{end_ts}, offsets {begin_phys}..{end_phys}")));
        }
        f.count.store(count as u32, Ordering::Relaxed);
        f.flushed.store(count as u32, Ordering::Relaxed);
        f.used_slots.store(used as u32, Ordering::Relaxed);
        if count > 1 {
            f.begin_ts.store(begin_ts, Ordering::Relaxed);
            f.end_ts.store(end_ts, Ordering::Relaxed);
            f.begin_phys.store(begin_phys as u64, Ordering::Relaxed);
            f.end_phys.store(end_phys as u64, Ordering::Relaxed);
        }
        Ok(Ok(f))
    }

    fn map(path: PathBuf, seq: u64, file: &File, slots: u32, capacity: u32) -> Result<IndexFile> {
        let size = file_size(slots, capacity) as usize;
        let map = MmapOptions::new().len(size).map_raw(file).map_err(|e| StoreError::io(&path, e))?;
        // Slots are hit at random: a fault on one must not read megabytes
        // ahead (see `Segment::expect_cold_writes`).
        // SAFETY: advisory call on our own live mapping.
        unsafe { libc::madvise(map.as_mut_ptr().cast(), size, libc::MADV_RANDOM) };
        Ok(IndexFile {
            path,
            seq,
            map,
            slots,
            capacity,
            count: AtomicU32::new(1),
            flushed: AtomicU32::new(1),
            used_slots: AtomicU32::new(0),
            begin_ts: AtomicI64::new(0),
            end_ts: AtomicI64::new(0),
            begin_phys: AtomicU64::new(0),
            end_phys: AtomicU64::new(0),
        })
    }

    fn read(&self, pos: usize, out: &mut [u8]) {
        assert!(pos + out.len() <= self.map.len(), "index read out of bounds");
        // SAFETY: in bounds; callers only read bytes that are no longer
        // written (complete entries, or the header during load).
        unsafe { std::ptr::copy_nonoverlapping(self.map.as_ptr().add(pos), out.as_mut_ptr(), out.len()) }
    }

    fn write(&self, pos: usize, bytes: &[u8]) {
        assert!(pos + bytes.len() <= self.map.len(), "index write out of bounds");
        // SAFETY: in bounds; only the single writer calls this, on the header
        // (never read by queries) or on an entry no reader can reach yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.map.as_mut_ptr().add(pos), bytes.len()) }
    }

    fn slot(&self, i: u32) -> &AtomicU32 {
        assert!(i < self.slots, "slot out of range");
        // SAFETY: in bounds; the mapping is page-aligned and the offset is a
        // multiple of 4, so the word is aligned; all concurrent access to
        // slot words goes through this atomic view. The reference lives no
        // longer than `self`, which owns the mapping.
        unsafe { &*(self.map.as_ptr().add(HEADER_SIZE + i as usize * SLOT_SIZE) as *const AtomicU32) }
    }

    fn entry_pos(&self, n: u32) -> usize {
        HEADER_SIZE + self.slots as usize * SLOT_SIZE + n as usize * ENTRY_SIZE
    }

    fn read_entry(&self, n: u32) -> Entry {
        let mut b = [0u8; ENTRY_SIZE];
        self.read(self.entry_pos(n), &mut b);
        Entry {
            hash: be_i32(&b, 0) as u32,
            phys: be_i64(&b, 4) as u64,
            time_diff_s: be_i32(&b, 12),
            prev: be_i32(&b, 16) as u32,
        }
    }

    /// Rewrites the header bytes from the in-memory fields. Writer only.
    fn write_header(&self) {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(&self.begin_ts.load(Ordering::Relaxed).to_be_bytes());
        h[8..16].copy_from_slice(&self.end_ts.load(Ordering::Relaxed).to_be_bytes());
        h[16..24].copy_from_slice(&(self.begin_phys.load(Ordering::Relaxed) as i64).to_be_bytes());
        h[24..32].copy_from_slice(&(self.end_phys.load(Ordering::Relaxed) as i64).to_be_bytes());
        h[32..36].copy_from_slice(&(self.used_slots.load(Ordering::Relaxed) as i32).to_be_bytes());
        h[36..40].copy_from_slice(&(self.count.load(Ordering::Relaxed) as i32).to_be_bytes());
        self.write(0, &h);
    }

    fn is_full(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= self.capacity
    }

    fn has_entries(&self) -> bool {
        self.count.load(Ordering::Acquire) > 1
    }

    /// Appends one entry. Writer only; the file must not be full.
    fn put(&self, hash: u32, phys: u64, ts: i64) {
        let n = self.count.load(Ordering::Relaxed);
        debug_assert!(n < self.capacity);
        let slot = self.slot(hash % self.slots);
        let raw = u32::from_be(slot.load(Ordering::Relaxed));
        // A slot value at or past the count is a leftover from a crash.
        let prev = if raw >= n { 0 } else { raw };
        if raw == 0 {
            self.used_slots.fetch_add(1, Ordering::Relaxed);
        }
        if n == 1 {
            self.begin_ts.store(ts, Ordering::Relaxed);
            self.end_ts.store(ts, Ordering::Relaxed);
            self.begin_phys.store(phys, Ordering::Relaxed);
        }
        let diff = (ts.saturating_sub(self.begin_ts.load(Ordering::Relaxed)) / 1000).clamp(0, i32::MAX as i64);
        let mut e = [0u8; ENTRY_SIZE];
        e[0..4].copy_from_slice(&hash.to_be_bytes());
        e[4..12].copy_from_slice(&(phys as i64).to_be_bytes());
        e[12..16].copy_from_slice(&(diff as i32).to_be_bytes());
        e[16..20].copy_from_slice(&prev.to_be_bytes());
        self.write(self.entry_pos(n), &e);
        self.end_ts.fetch_max(ts, Ordering::Relaxed);
        self.end_phys.fetch_max(phys, Ordering::Relaxed);
        self.count.store(n + 1, Ordering::Release);
        self.write_header();
        slot.store(n.to_be(), Ordering::Release);
    }

    /// Walks the chain for `hash`, appending matches within `[lo, hi]` ms.
    fn collect(&self, hash: u32, lo: i64, hi: i64, max: usize, seen: &mut HashSet<u64>, out: &mut Vec<u64>) {
        let mut cur = u32::from_be(self.slot(hash % self.slots).load(Ordering::Acquire));
        let count = self.count.load(Ordering::Acquire);
        let begin_ts = self.begin_ts.load(Ordering::Relaxed);
        let mut steps = 0u32;
        while cur != 0 && cur < count && steps < self.capacity && out.len() < max {
            let e = self.read_entry(cur);
            let t = begin_ts.saturating_add(e.time_diff_s as i64 * 1000);
            if e.hash == hash && t >= lo && t <= hi && seen.insert(e.phys) {
                out.push(e.phys);
            }
            if e.prev >= cur {
                tracing::warn!(path = %self.path.display(), entry = cur, prev = e.prev, "index chain loops; stopping walk");
                break;
            }
            cur = e.prev;
            steps += 1;
        }
    }
}

/// Reserves the file's blocks so writes through the mapping cannot hit a
/// full disk later.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) } {
        0 => Ok(()),
        libc::EOPNOTSUPP | libc::EINVAL => file.set_len(size),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Writer-side state, guarded by a mutex queries never take.
struct Writer {
    next_seq: u64,
}

/// The key index: a directory of fixed-size hash-index files, newest last.
pub struct IndexService {
    dir: PathBuf,
    slots: u32,
    capacity: u32,
    files: RwLock<Vec<Arc<IndexFile>>>,
    writer: Mutex<Writer>,
}

impl IndexService {
    /// Opens (or creates) the index directory and loads its files. Files
    /// whose size or header does not fit the settings are logged and
    /// deleted: the index can be rebuilt from the commit log.
    pub fn open(dir: &Path, max_hash_slots: u32, max_index_count: u32) -> Result<IndexService> {
        if max_hash_slots == 0 || max_hash_slots > i32::MAX as u32 {
            return Err(StoreError::Config {
                key: "maxHashSlotNum",
                reason: format!("{max_hash_slots} is out of range"),
            });
        }
        if max_index_count < 2 || max_index_count > i32::MAX as u32 {
            return Err(StoreError::Config {
                key: "maxIndexNum",
                reason: format!("{max_index_count} is out of range"),
            });
        }
        if file_size(max_hash_slots, max_index_count) > isize::MAX as u64 {
            return Err(StoreError::Config { key: "maxIndexNum", reason: "index file would be too large".into() });
        }
        std::fs::create_dir_all(dir).map_err(|e| StoreError::io(dir, e))?;
        let mut found = Vec::new();
        for ent in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
            let ent = ent.map_err(|e| StoreError::io(dir, e))?;
            if let Some(seq) = ent.file_name().to_str().and_then(parse_name) {
                found.push((seq, ent.path()));
            }
        }
        found.sort();
        let next_seq = found.last().map_or(0, |(s, _)| s + 1);
        let mut files = Vec::with_capacity(found.len());
        let mut removed = false;
        for (seq, path) in found {
            match IndexFile::load(path.clone(), seq, max_hash_slots, max_index_count)? {
                Ok(f) => files.push(Arc::new(f)),
                Err(reason) => {
                    tracing::warn!(path = %path.display(), %reason, "deleting unusable index file");
                    if let Err(e) = std::fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not delete index file; ignoring it");
                    }
                    removed = true;
                }
            }
        }
        if removed {
            sync_dir(dir)?;
        }
        Ok(IndexService {
            dir: dir.to_path_buf(),
            slots: max_hash_slots,
            capacity: max_index_count,
            files: RwLock::new(files),
            writer: Mutex::new(Writer { next_seq }),
        })
    }

    /// Adds one key of a topic (a message key or unique id) pointing at
    /// `phys_offset`. Meant for the single dispatcher thread; keys arrive in
    /// increasing offset order. Creates the next file when the current one
    /// is full.
    pub fn put(&self, topic: &str, key: &str, phys_offset: u64, store_timestamp_ms: i64) -> Result<()> {
        let mut w = self.writer.lock();
        let current = self.files.read().last().cloned();
        let file = match current {
            Some(f) if !f.is_full() => f,
            _ => {
                // Allocate before taking the lock that queries share.
                let f = Arc::new(IndexFile::create(&self.dir, w.next_seq, self.slots, self.capacity)?);
                w.next_seq += 1;
                sync_dir(&self.dir)?;
                self.files.write().push(Arc::clone(&f));
                f
            }
        };
        file.put(key_hash(topic, key), phys_offset, store_timestamp_ms);
        Ok(())
    }

    /// Whether `keys` more entries fit the current file, so adding them
    /// creates no file.
    pub(crate) fn has_room_for(&self, keys: u32) -> bool {
        self.files.read().last().is_some_and(|f| f.count.load(Ordering::Relaxed).saturating_add(keys) <= f.capacity)
    }

    /// Newest-first offsets of entries whose key hash matches `key` of `topic` and whose
    /// time lies in `[begin_ms, end_ms]` (with one second of slack either
    /// way), at most `max`, without duplicates. Hash collisions can yield
    /// offsets of other keys: callers verify against the record.
    pub fn query(&self, topic: &str, key: &str, begin_ms: i64, end_ms: i64, max: usize) -> Vec<u64> {
        let mut out = Vec::new();
        if max == 0 || begin_ms > end_ms {
            return out;
        }
        let (lo, hi) = (begin_ms.saturating_sub(TIME_SLACK_MS), end_ms.saturating_add(TIME_SLACK_MS));
        let hash = key_hash(topic, key);
        let files = self.files.read().clone();
        let mut seen = HashSet::new();
        for f in files.iter().rev() {
            if out.len() >= max {
                break;
            }
            if !f.has_entries() {
                continue;
            }
            if f.end_ts.load(Ordering::Relaxed) < lo || f.begin_ts.load(Ordering::Relaxed) > hi {
                continue;
            }
            f.collect(hash, lo, hi, max, &mut seen, &mut out);
        }
        out
    }

    /// Makes every file with unflushed entries durable (`msync`). Blocking.
    /// Does not block the writer.
    pub fn flush(&self) -> Result<()> {
        let files = self.files.read().clone();
        for f in files {
            let count = f.count.load(Ordering::Acquire);
            if count > f.flushed.load(Ordering::Acquire) {
                f.map.flush().map_err(|e| StoreError::io(&f.path, e))?;
                f.flushed.fetch_max(count, Ordering::AcqRel);
            }
        }
        Ok(())
    }

    /// Deletes whole files whose newest offset is below `min_phys_offset`,
    /// never the newest file. Returns how many were deleted.
    pub fn delete_files_below(&self, min_phys_offset: u64) -> Result<usize> {
        let _w = self.writer.lock();
        let victims: Vec<Arc<IndexFile>> = {
            let files = self.files.read();
            let keep_from = files.len().saturating_sub(1);
            files[..keep_from]
                .iter()
                .filter(|f| f.end_phys.load(Ordering::Relaxed) < min_phys_offset)
                .cloned()
                .collect()
        };
        self.remove(&victims)?;
        Ok(victims.len())
    }

    /// After the commit log was cut back to `phys_offset`: deletes files
    /// whose first entry lies at or past it. Surviving files keep entries
    /// past the end (callers verify records), but their end offset is capped
    /// at `phys_offset` so [`max_phys_offset`](Self::max_phys_offset) stays
    /// within the log.
    pub fn truncate_after(&self, phys_offset: u64) -> Result<()> {
        let _w = self.writer.lock();
        let files = self.files.read().clone();
        let victims: Vec<Arc<IndexFile>> = files
            .iter()
            .filter(|f| f.has_entries() && f.begin_phys.load(Ordering::Relaxed) >= phys_offset)
            .cloned()
            .collect();
        self.remove(&victims)?;
        for f in &files {
            let survives = f.begin_phys.load(Ordering::Relaxed) < phys_offset;
            if survives && f.has_entries() && f.end_phys.load(Ordering::Relaxed) > phys_offset {
                f.end_phys.store(phys_offset, Ordering::Relaxed);
                f.write_header();
            }
        }
        Ok(())
    }

    /// Takes `victims` out of the list, then unlinks them (queries still
    /// holding one keep its mapping alive). Writer lock must be held.
    fn remove(&self, victims: &[Arc<IndexFile>]) -> Result<()> {
        if victims.is_empty() {
            return Ok(());
        }
        self.files.write().retain(|f| !victims.iter().any(|v| v.seq == f.seq));
        let mut first_err = None;
        for v in victims {
            if let Err(e) = std::fs::remove_file(&v.path) {
                tracing::warn!(path = %v.path.display(), error = %e, "could not delete index file");
                first_err.get_or_insert(StoreError::io(&v.path, e));
            }
        }
        sync_dir(&self.dir)?;
        first_err.map_or(Ok(()), Err)
    }

    /// Largest end offset over all files (0 when there are none): how far
    /// the index got, for recovery.
    pub fn max_phys_offset(&self) -> u64 {
        let files = self.files.read();
        files.iter().filter(|f| f.has_entries()).map(|f| f.end_phys.load(Ordering::Relaxed)).max().unwrap_or(0)
    }

    /// Number of index files.
    pub fn file_count(&self) -> usize {
        self.files.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        v.sort();
        v
    }

    #[test]
    fn put_query_newest_first_with_time_range_and_max() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexService::open(dir.path(), 1024, 64).unwrap();
        assert_eq!(idx.query("T", "a", 0, i64::MAX, 10), Vec::<u64>::new());
        for i in 0..10u64 {
            idx.put("T", "a", 100 * i, T0 + 10_000 * i as i64).unwrap();
            idx.put("T", "b", 100 * i + 50, T0 + 10_000 * i as i64).unwrap();
        }
        let all: Vec<u64> = (0..10).rev().map(|i| 100 * i).collect();
        assert_eq!(idx.query("T", "a", T0, T0 + 100_000, 100), all);
        assert_eq!(idx.query("T", "a", 0, i64::MAX, 3), vec![900, 800, 700]);
        assert_eq!(idx.query("T", "a", T0 + 29_000, T0 + 41_000, 10), vec![400, 300]);
        assert_eq!(idx.query("T", "b", T0 + 50_000, T0 + 50_000, 10), vec![550]);
        assert!(idx.query("T", "a", T0 + 200_000, T0 + 300_000, 10).is_empty());
        assert!(idx.query("T", "zzz", 0, i64::MAX, 10).is_empty());
        assert_eq!(idx.query("T", "a", 0, i64::MAX, 0), Vec::<u64>::new());
        assert_eq!(idx.max_phys_offset(), 950);
        assert_eq!(idx.file_count(), 1);
    }

    #[test]
    fn files_roll_when_full_and_queries_span_them() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexService::open(dir.path(), 16, 8).unwrap();
        for i in 0..20u64 {
            idx.put("T", "k", i * 10, T0 + i as i64 * 1000).unwrap();
        }
        // Entry number 0 is reserved, so each file holds 7 entries.
        assert_eq!(idx.file_count(), 3);
        assert_eq!(names(dir.path()), vec!["00000000000000000000", "00000000000000000001", "00000000000000000002"]);
        let want: Vec<u64> = (0..20).rev().map(|i| i * 10).collect();
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 100), want);
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 9), want[..9].to_vec());
        // Only the middle file overlaps this range.
        assert_eq!(idx.query("T", "k", T0 + 9_000, T0 + 10_000, 100), vec![110, 100, 90, 80]);
        idx.flush().unwrap();
    }

    #[test]
    fn reopen_finds_the_same_entries_and_keeps_appending() {
        let dir = tempfile::tempdir().unwrap();
        {
            let idx = IndexService::open(dir.path(), 16, 8).unwrap();
            for i in 0..10u64 {
                idx.put("T", &(i % 3).to_string(), i, T0 + i as i64).unwrap();
            }
            idx.flush().unwrap();
        }
        let idx = IndexService::open(dir.path(), 16, 8).unwrap();
        assert_eq!(idx.file_count(), 2);
        assert_eq!(idx.max_phys_offset(), 9);
        assert_eq!(idx.query("T", "0", 0, i64::MAX, 10), vec![9, 6, 3, 0]);
        assert_eq!(idx.query("T", "1", 0, i64::MAX, 10), vec![7, 4, 1]);
        idx.put("T", "1", 10, T0 + 10).unwrap();
        assert_eq!(idx.file_count(), 2);
        assert_eq!(idx.query("T", "1", 0, i64::MAX, 10), vec![10, 7, 4, 1]);
        drop(idx);
        // Different settings: the files no longer fit and are discarded.
        let idx = IndexService::open(dir.path(), 32, 8).unwrap();
        assert_eq!(idx.file_count(), 0);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn delete_below_and_truncate_after() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexService::open(dir.path(), 16, 8).unwrap();
        for i in 0..21u64 {
            idx.put("T", "k", 1000 + i * 100, T0).unwrap();
        }
        // Files: [1000..=1600], [1700..=2300], [2400..=3000].
        assert_eq!(idx.file_count(), 3);
        assert_eq!(idx.delete_files_below(1600).unwrap(), 0);
        assert_eq!(idx.delete_files_below(1601).unwrap(), 1);
        assert_eq!(idx.file_count(), 2);
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 100).last(), Some(&1700));
        // The newest file is never deleted by retention.
        assert_eq!(idx.delete_files_below(u64::MAX).unwrap(), 1);
        assert_eq!(idx.file_count(), 1);
        assert_eq!(names(dir.path()), vec!["00000000000000000002"]);

        let idx2dir = tempfile::tempdir().unwrap();
        let idx = IndexService::open(idx2dir.path(), 16, 8).unwrap();
        for i in 0..21u64 {
            idx.put("T", "k", 1000 + i * 100, T0).unwrap();
        }
        idx.truncate_after(2000).unwrap();
        assert_eq!(idx.file_count(), 2);
        assert_eq!(idx.max_phys_offset(), 2000);
        // Entries past the cut in a surviving file remain (callers verify).
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 100).len(), 14);
        idx.truncate_after(1000).unwrap();
        assert_eq!(idx.file_count(), 0);
        assert_eq!(idx.max_phys_offset(), 0);
        idx.put("T", "k", 1000, T0).unwrap();
        assert_eq!(names(idx2dir.path()), vec!["00000000000000000003"]);
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 100), vec![1000]);
    }

    #[test]
    fn garbage_files_do_not_break_open() {
        let dir = tempfile::tempdir().unwrap();
        let size = file_size(16, 8) as usize;
        let garbage: Vec<u8> = (0..size).map(|i| (i * 31 + 7) as u8 | 0x80).collect();
        std::fs::write(dir.path().join("00000000000000000005"), &garbage).unwrap();
        std::fs::write(dir.path().join("00000000000000000007"), b"short").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"not an index file").unwrap();
        let idx = IndexService::open(dir.path(), 16, 8).unwrap();
        assert_eq!(idx.file_count(), 0);
        idx.put("T", "k", 1, T0).unwrap();
        assert_eq!(names(dir.path()), vec!["00000000000000000008", "notes.txt"]);
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 10), vec![1]);
        assert!(IndexService::open(dir.path(), 0, 8).is_err());
        assert!(IndexService::open(dir.path(), 16, 1).is_err());
    }

    #[test]
    fn looping_chain_is_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let idx = IndexService::open(dir.path(), 4, 64).unwrap();
            for i in 0..5u64 {
                idx.put("T", "k", i, T0).unwrap();
            }
        }
        // Entry n holds offset n - 1. Point entry 3 back at entry 4: a cycle.
        let path = dir.path().join("00000000000000000000");
        let mut bytes = std::fs::read(&path).unwrap();
        let at = HEADER_SIZE + 4 * SLOT_SIZE + 3 * ENTRY_SIZE + 16;
        bytes[at..at + 4].copy_from_slice(&4i32.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let idx = IndexService::open(dir.path(), 4, 64).unwrap();
        assert_eq!(idx.query("T", "k", 0, i64::MAX, 100), vec![4, 3, 2]);
    }

    #[test]
    fn slot_collisions_still_separate_keys() {
        let dir = tempfile::tempdir().unwrap();
        let idx = IndexService::open(dir.path(), 1, 64).unwrap();
        let mut want: Vec<Vec<u64>> = vec![Vec::new(); 5];
        for i in 0..40u64 {
            let k = (i * 7 % 5) as usize;
            idx.put("T", &format!("key-{k}"), i, T0 + i as i64 * 100).unwrap();
            want[k].insert(0, i);
        }
        for (k, offsets) in want.iter().enumerate() {
            let got = idx.query("T", &format!("key-{k}"), 0, i64::MAX, 100);
            // Any extra candidate would be a full 32-bit hash collision;
            // the expected offsets must all be there, newest first.
            let mine: Vec<u64> = got.iter().copied().filter(|o| offsets.contains(o)).collect();
            assert_eq!(&mine, offsets);
        }
    }

    #[test]
    fn queries_run_while_the_writer_appends() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Arc::new(IndexService::open(dir.path(), 8, 32).unwrap());
        let reader = {
            let idx = Arc::clone(&idx);
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let got = idx.query("T", "even", 0, i64::MAX, 1000);
                    assert!(got.iter().all(|o| o % 2 == 0));
                    assert!(got.windows(2).all(|w| w[0] > w[1]), "not newest first: {got:?}");
                }
            })
        };
        for i in 0..2000u64 {
            let key = if i % 2 == 0 { "even" } else { "odd" };
            idx.put("T", key, i, T0 + i as i64).unwrap();
        }
        reader.join().unwrap();
        assert_eq!(idx.query("T", "even", 0, i64::MAX, 10_000).len(), 1000);
    }

    #[test]
    fn a_key_hashes_as_its_topic_and_key_joined_by_a_hash_sign() {
        // Index files written before the hash was computed in pieces hold
        // the CRC-32 of the joined string; both must find the same slots.
        for (topic, key) in [("T", "k"), ("TopicA", "order-17"), ("", ""), ("t", "a#b")] {
            assert_eq!(key_hash(topic, key), crc32fast::hash(format!("{topic}#{key}").as_bytes()));
        }
    }
}
