//! Consume queues: per (topic, queue id), a dense array of 20-byte units
//! pointing into the commit log, addressed by logical (queue) offset.
//!
//! Unit layout (big-endian): commit-log offset i64 | size i32 | tag hash
//! code i64. A unit with size 0 is empty. Files are named by the byte
//! offset of their first unit, like commit-log segments.
//!
//! Written only by the dispatcher thread (and recovery / truncation, which
//! stop it first); read by any thread below the published max offset.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Result, StoreError};
use crate::segment::{self, Segment};

/// Bytes per unit.
pub const UNIT_SIZE: u64 = 20;

/// One consume-queue entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqUnit {
    /// Offset of the record in the commit log.
    pub physical_offset: u64,
    /// Record size.
    pub size: u32,
    /// Tag hash code (0 when untagged).
    pub tags_code: i64,
}

impl CqUnit {
    fn encode(&self) -> [u8; UNIT_SIZE as usize] {
        let mut b = [0u8; UNIT_SIZE as usize];
        b[..8].copy_from_slice(&(self.physical_offset as i64).to_be_bytes());
        b[8..12].copy_from_slice(&(self.size as i32).to_be_bytes());
        b[12..].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    fn decode(b: &[u8]) -> CqUnit {
        let mut o = [0u8; 8];
        o.copy_from_slice(&b[..8]);
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[12..20]);
        CqUnit {
            physical_offset: i64::from_be_bytes(o).max(0) as u64,
            size: i32::from_be_bytes([b[8], b[9], b[10], b[11]]).max(0) as u32,
            tags_code: i64::from_be_bytes(t),
        }
    }

    /// Offset just past the record.
    pub fn end_offset(&self) -> u64 {
        self.physical_offset + self.size as u64
    }
}

/// The consume queue of one (topic, queue id).
pub struct ConsumeQueue {
    topic: String,
    queue_id: i32,
    dir: PathBuf,
    file_size: u64,
    segments: RwLock<Vec<Arc<Segment>>>,
    min_offset: AtomicI64,
    max_offset: AtomicI64,
}

impl ConsumeQueue {
    /// Opens (or creates) the queue in `dir` and finds its end by scanning
    /// the last file for the first empty unit.
    pub fn open(topic: &str, queue_id: i32, dir: PathBuf, file_size: u64) -> Result<ConsumeQueue> {
        if !dir.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
            // Make the new directories durable: the checkpoint will claim
            // this queue's units are on disk.
            let mut d = dir.parent();
            for _ in 0..2 {
                if let Some(p) = d {
                    segment::sync_dir(p)?;
                    d = p.parent();
                }
            }
        }
        let mut starts: Vec<u64> = std::fs::read_dir(&dir)
            .map_err(|e| StoreError::io(&dir, e))?
            .filter_map(|e| e.ok()?.file_name().to_str().and_then(segment::parse_file_name))
            .filter(|s| s % file_size == 0)
            .collect();
        starts.sort_unstable();
        let segments = starts
            .iter()
            .map(|s| Segment::create(&dir, *s, file_size, false, false).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        let cq = ConsumeQueue {
            topic: topic.to_string(),
            queue_id,
            dir,
            file_size,
            segments: RwLock::new(segments),
            min_offset: AtomicI64::new(0),
            max_offset: AtomicI64::new(0),
        };
        cq.recover_positions();
        Ok(cq)
    }

    fn recover_positions(&self) {
        let segs = self.segments.read();
        let (Some(first), Some(last)) = (segs.first(), segs.last()) else { return };
        let mut end = 0u64;
        let mut pos = 0u64;
        while pos + UNIT_SIZE <= last.size() {
            if CqUnit::decode(&last.read(pos, UNIT_SIZE as usize)).size == 0 {
                break;
            }
            end = pos + UNIT_SIZE;
            pos += UNIT_SIZE;
        }
        for seg in segs.iter() {
            let rel = if Arc::ptr_eq(seg, last) { end } else { seg.size() };
            // Not marked flushed: after a crash these pages may exist only
            // in the page cache; the first checkpoint syncs them.
            seg.set_wrote(rel, true);
        }
        self.min_offset.store((first.start_offset() / UNIT_SIZE) as i64, Ordering::Release);
        self.max_offset.store(((last.start_offset() + end) / UNIT_SIZE) as i64, Ordering::Release);
    }

    /// Topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Queue id.
    pub fn queue_id(&self) -> i32 {
        self.queue_id
    }

    /// Logical offset of the oldest unit kept.
    pub fn min_offset(&self) -> i64 {
        self.min_offset.load(Ordering::Acquire)
    }

    /// Logical offset one past the newest unit.
    pub fn max_offset(&self) -> i64 {
        self.max_offset.load(Ordering::Acquire)
    }

    /// Stores the unit for `queue_offset`. Units already present are kept
    /// (re-dispatch after recovery); an offset past the end is refused and
    /// logged (it can only come from a damaged record).
    /// Dispatcher only.
    pub fn put(&self, queue_offset: i64, unit: CqUnit) -> Result<()> {
        let max = self.max_offset();
        if queue_offset < max {
            // Re-dispatch after recovery: keep what is there, but fill a unit
            // a power loss left empty (a hole below the queue's end).
            if queue_offset >= self.min_offset() && self.get(queue_offset).is_some_and(|u| u.size == 0) {
                let byte = queue_offset as u64 * UNIT_SIZE;
                let seg = self.segment_for_write(byte)?;
                seg.write_at_published(byte - seg.start_offset(), &unit.encode());
            }
            return Ok(());
        }
        if queue_offset > max {
            // Offsets are dense by construction; a jump means the record's
            // header is damaged. Keep the queue consistent and say so.
            tracing::error!(topic = %self.topic, queue_id = self.queue_id, expected = max, got = queue_offset, physical_offset = unit.physical_offset, "record skipped: queue offset out of sequence");
            return Ok(());
        }
        let byte = queue_offset as u64 * UNIT_SIZE;
        let seg = self.segment_for_write(byte)?;
        let rel = byte - seg.start_offset();
        seg.write_at(rel, &unit.encode());
        seg.set_wrote(rel + UNIT_SIZE, true);
        self.max_offset.store(queue_offset + 1, Ordering::Release);
        Ok(())
    }

    /// Whether the unit at `queue_offset` is the next one and its file is
    /// already there: putting it then creates no file.
    pub(crate) fn has_room_for(&self, queue_offset: i64) -> bool {
        if queue_offset != self.max_offset() {
            return false;
        }
        let byte = queue_offset as u64 * UNIT_SIZE;
        self.segments.read().last().is_some_and(|s| s.start_offset() <= byte && byte + UNIT_SIZE <= s.end_offset())
    }

    fn segment_for_write(&self, byte: u64) -> Result<Arc<Segment>> {
        if let Some(seg) = self.segments.read().last() {
            if seg.start_offset() <= byte && byte < seg.end_offset() {
                return Ok(seg.clone());
            }
        }
        {
            let segs = self.segments.read();
            let idx = segs.partition_point(|s| s.end_offset() <= byte);
            if let Some(seg) = segs.get(idx).filter(|s| s.start_offset() <= byte) {
                return Ok(seg.clone());
            }
        }
        let start = byte - byte % self.file_size;
        let seg = Arc::new(Segment::create(&self.dir, start, self.file_size, false, false)?);
        // Units are written a page at a time; a fault must not read the
        // whole file ahead (see `Segment::expect_cold_writes`).
        seg.expect_cold_writes();
        segment::sync_dir(&self.dir)?;
        let mut segs = self.segments.write();
        if segs.is_empty() {
            self.min_offset.store((start / UNIT_SIZE) as i64, Ordering::Release);
        }
        segs.push(seg.clone());
        Ok(seg)
    }

    /// The unit at `queue_offset`, if stored.
    pub fn get(&self, queue_offset: i64) -> Option<CqUnit> {
        self.get_range(queue_offset, 1).pop()
    }

    /// Up to `max` units from `queue_offset` on (never crossing a file, so
    /// possibly fewer). Empty units (gaps) come back with size 0.
    pub fn get_range(&self, queue_offset: i64, max: usize) -> Vec<CqUnit> {
        let end = self.max_offset();
        if queue_offset < self.min_offset() || queue_offset >= end || max == 0 {
            return Vec::new();
        }
        let byte = queue_offset as u64 * UNIT_SIZE;
        let seg = {
            let segs = self.segments.read();
            let idx = segs.partition_point(|s| s.end_offset() <= byte);
            match segs.get(idx) {
                Some(s) if s.start_offset() <= byte => s.clone(),
                _ => return Vec::new(),
            }
        };
        let rel = byte - seg.start_offset();
        let last_byte = (end as u64 * UNIT_SIZE).min(seg.end_offset());
        let count = (((last_byte - seg.start_offset() - rel) / UNIT_SIZE) as usize).min(max);
        let bytes = seg.read(rel, count * UNIT_SIZE as usize);
        bytes.chunks_exact(UNIT_SIZE as usize).map(CqUnit::decode).collect()
    }

    /// Whether the units from `queue_offset` to the queue's end lie in one
    /// file and in the page cache (see [`Segment::is_resident`]).
    pub fn is_resident_from(&self, queue_offset: i64) -> bool {
        let end = self.max_offset();
        if queue_offset < self.min_offset() || queue_offset >= end {
            return false;
        }
        let (first, last) = (queue_offset as u64 * UNIT_SIZE, end as u64 * UNIT_SIZE);
        let segs = self.segments.read();
        let idx = segs.partition_point(|s| s.end_offset() <= first);
        match segs.get(idx) {
            Some(seg) if seg.start_offset() <= first && last <= seg.end_offset() => {
                seg.is_resident(first - seg.start_offset(), (last - first) as usize)
            }
            _ => false,
        }
    }

    /// Drops every unit whose record does not end at or below `phys_end`.
    /// Writer-exclusive (recovery, truncation).
    pub fn truncate_to_phys(&self, phys_end: u64) -> Result<()> {
        let (min, max) = (self.min_offset(), self.max_offset());
        // Units are in commit-log order: binary search the first one past the end.
        let (mut lo, mut hi) = (min, max);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(u) if u.size == 0 || u.end_offset() <= phys_end => lo = mid + 1,
                _ => hi = mid,
            }
        }
        if lo == max {
            return Ok(());
        }
        let byte = lo as u64 * UNIT_SIZE;
        let mut segs = self.segments.write();
        while segs.len() > 1 && segs.last().is_some_and(|s| s.start_offset() > byte) {
            if let Some(seg) = segs.pop() {
                let path = seg.path().to_path_buf();
                drop(seg);
                std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            }
        }
        if let Some(seg) = segs.last() {
            let rel = byte.saturating_sub(seg.start_offset()).min(seg.size());
            seg.truncate_to(rel)?;
        }
        self.max_offset.store(lo, Ordering::Release);
        tracing::info!(topic = %self.topic, queue_id = self.queue_id, from = max, to = lo, "consume queue truncated");
        Ok(())
    }

    /// Retention: deletes whole files whose units all point below
    /// `min_phys`, and moves the min offset to the first unit at or above it.
    pub fn correct_min_offset(&self, min_phys: u64) -> Result<()> {
        loop {
            let first = {
                let segs = self.segments.read();
                if segs.len() < 2 {
                    break;
                }
                segs[0].clone()
            };
            let last_unit = first.read(first.size() - UNIT_SIZE, UNIT_SIZE as usize);
            if CqUnit::decode(&last_unit).end_offset() > min_phys {
                break;
            }
            self.segments.write().remove(0);
            let path = first.path().to_path_buf();
            drop(first);
            std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
            self.min_offset.store((self.segments.read()[0].start_offset() / UNIT_SIZE) as i64, Ordering::Release);
        }
        let (mut lo, mut hi) = (self.min_offset(), self.max_offset());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.get(mid) {
                Some(u) if u.physical_offset < min_phys => lo = mid + 1,
                _ => hi = mid,
            }
        }
        self.min_offset.fetch_max(lo, Ordering::AcqRel);
        Ok(())
    }

    /// Flushes written units to disk. Blocking.
    pub fn flush(&self) -> Result<()> {
        let segs: Vec<_> = self.segments.read().iter().filter(|s| s.flushed() < s.wrote()).cloned().collect();
        for seg in segs {
            seg.flush()?;
        }
        Ok(())
    }
}

/// Topic -> queue id -> queue.
type QueueMap = HashMap<String, HashMap<i32, Arc<ConsumeQueue>, ahash::RandomState>, ahash::RandomState>;

/// All consume queues, created on first use.
pub struct ConsumeQueueTable {
    root: PathBuf,
    file_size: u64,
    /// Hashed with ahash: every dispatched record and every pull looks a
    /// queue up here (SipHash was several per cent of the dispatcher).
    queues: RwLock<QueueMap>,
}

impl ConsumeQueueTable {
    /// Loads every queue under `root/<topic>/<queue id>/`.
    pub fn open(root: &Path, file_size: u64) -> Result<ConsumeQueueTable> {
        std::fs::create_dir_all(root).map_err(|e| StoreError::io(root, e))?;
        let mut queues = QueueMap::default();
        for topic in std::fs::read_dir(root).map_err(|e| StoreError::io(root, e))? {
            let topic = topic.map_err(|e| StoreError::io(root, e))?;
            let Some(name) = topic.file_name().to_str().map(str::to_string) else { continue };
            if spate_common::message::validate_topic(&name).is_err() || !topic.path().is_dir() {
                tracing::warn!(path = ?topic.path(), "ignoring unknown entry in consume-queue directory");
                continue;
            }
            for q in std::fs::read_dir(topic.path()).map_err(|e| StoreError::io(topic.path(), e))? {
                let q = q.map_err(|e| StoreError::io(topic.path(), e))?;
                let Some(id) = q.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
                let cq = ConsumeQueue::open(&name, id, q.path(), file_size)?;
                queues.entry(name.clone()).or_default().insert(id, Arc::new(cq));
            }
        }
        Ok(ConsumeQueueTable { root: root.to_path_buf(), file_size, queues: RwLock::new(queues) })
    }

    /// The queue, if it exists.
    pub fn get(&self, topic: &str, queue_id: i32) -> Option<Arc<ConsumeQueue>> {
        self.queues.read().get(topic).and_then(|q| q.get(&queue_id)).cloned()
    }

    /// The queue, created if needed.
    pub fn get_or_create(&self, topic: &str, queue_id: i32) -> Result<Arc<ConsumeQueue>> {
        if let Some(cq) = self.get(topic, queue_id) {
            return Ok(cq);
        }
        let dir = self.topic_dir(topic)?.join(queue_id.to_string());
        let cq = Arc::new(ConsumeQueue::open(topic, queue_id, dir, self.file_size)?);
        let mut queues = self.queues.write();
        Ok(queues.entry(topic.to_string()).or_default().entry(queue_id).or_insert(cq).clone())
    }

    /// The directory of a topic's queues. The name must be a valid topic
    /// name (no separator, no `..`), and the path is checked once more to
    /// be a direct child of the root: nothing a client names may become a
    /// path elsewhere.
    fn topic_dir(&self, topic: &str) -> Result<PathBuf> {
        spate_common::message::validate_topic(topic)?;
        let dir = self.root.join(topic);
        if dir.parent() != Some(self.root.as_path()) || dir.file_name() != Some(std::ffi::OsStr::new(topic)) {
            return Err(StoreError::InvalidMessage(spate_common::message::MessageError::TopicIllegal {
                topic: topic.to_string(),
            }));
        }
        Ok(dir)
    }

    /// Every queue.
    pub fn all(&self) -> Vec<Arc<ConsumeQueue>> {
        self.queues.read().values().flat_map(|q| q.values().cloned()).collect()
    }

    /// Every topic with at least one queue.
    pub fn topics(&self) -> Vec<String> {
        let mut t: Vec<String> = self.queues.read().keys().cloned().collect();
        t.sort_unstable();
        t
    }

    /// Queue ids of a topic.
    pub fn queue_ids(&self, topic: &str) -> Vec<i32> {
        let mut ids: Vec<i32> = self.queues.read().get(topic).map(|q| q.keys().copied().collect()).unwrap_or_default();
        ids.sort_unstable();
        ids
    }

    /// Removes a topic's queues and their files.
    pub fn delete_topic(&self, topic: &str) -> Result<()> {
        let dir = self.topic_dir(topic)?;
        self.queues.write().remove(topic);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(StoreError::io(&dir, e)),
            _ => {}
        }
        // The removal itself made durable: an old queue directory must not
        // come back after a power loss behind a checkpoint past it.
        match dir.parent() {
            Some(root) => crate::segment::sync_dir(root),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(phys: u64) -> CqUnit {
        CqUnit { physical_offset: phys, size: 100, tags_code: 7 }
    }

    #[test]
    fn names_never_become_paths_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("cq");
        let outside = dir.path().join("canary");
        std::fs::create_dir_all(outside.join("inner")).unwrap();
        let table = ConsumeQueueTable::open(&root, 4 * UNIT_SIZE).unwrap();
        for name in ["../canary", "/abs", outside.to_str().unwrap(), "..", ".", "a/b", ""] {
            assert!(table.delete_topic(name).is_err(), "{name:?} accepted for deletion");
            assert!(table.get_or_create(name, 0).is_err(), "{name:?} accepted for creation");
        }
        assert!(outside.join("inner").is_dir(), "canary directory survived");
        table.get_or_create("T", 0).unwrap();
        table.delete_topic("T").unwrap();
    }

    #[test]
    fn put_get_roll_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("T/0");
        {
            let cq = ConsumeQueue::open("T", 0, path.clone(), 5 * UNIT_SIZE).unwrap();
            for i in 0..12 {
                cq.put(i, unit(i as u64 * 100)).unwrap();
            }
            assert_eq!(cq.max_offset(), 12);
            assert_eq!(cq.get(7), Some(unit(700)));
            assert_eq!(cq.get_range(3, 10).len(), 2, "a range stops at the file end");
            cq.put(3, unit(999)).unwrap();
            assert_eq!(cq.get(3), Some(unit(300)), "re-dispatch keeps what is there");
        }
        let cq = ConsumeQueue::open("T", 0, path, 5 * UNIT_SIZE).unwrap();
        assert_eq!((cq.min_offset(), cq.max_offset()), (0, 12));
        assert_eq!(cq.get(11), Some(unit(1100)));
        assert_eq!(cq.get(12), None);
    }

    #[test]
    fn truncate_and_retention() {
        let dir = tempfile::tempdir().unwrap();
        let cq = ConsumeQueue::open("T", 1, dir.path().join("T/1"), 4 * UNIT_SIZE).unwrap();
        for i in 0..10 {
            cq.put(i, unit(i as u64 * 100)).unwrap();
        }
        cq.truncate_to_phys(650).unwrap();
        assert_eq!(cq.max_offset(), 6, "unit 6 ends at 700 > 650");
        assert_eq!(cq.get(6), None);
        cq.put(6, unit(600)).unwrap();
        assert_eq!(cq.max_offset(), 7);
        cq.correct_min_offset(450).unwrap();
        assert_eq!(cq.min_offset(), 5);
        assert_eq!(cq.get(4), None);
        assert_eq!(std::fs::read_dir(dir.path().join("T/1")).unwrap().count(), 1, "first file deleted");
    }

    #[test]
    fn table_loads_queues() {
        let dir = tempfile::tempdir().unwrap();
        {
            let t = ConsumeQueueTable::open(dir.path(), 100).unwrap();
            t.get_or_create("A", 0).unwrap().put(0, unit(0)).unwrap();
            t.get_or_create("A", 3).unwrap().put(0, unit(100)).unwrap();
        }
        let t = ConsumeQueueTable::open(dir.path(), 100).unwrap();
        assert_eq!(t.queue_ids("A"), vec![0, 3]);
        assert_eq!(t.get("A", 3).unwrap().get(0), Some(unit(100)));
        t.delete_topic("A").unwrap();
        assert!(t.get("A", 0).is_none());
    }
}
