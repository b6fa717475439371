//! Store settings, named as RocketMQ's `broker.conf` names them.

use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Result, StoreError};

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushDiskType {
    /// `ASYNC_FLUSH`: acknowledged once in memory; a background thread
    /// flushes every `flushIntervalCommitLog` when enough pages are dirty.
    Async,
    /// `SYNC_FLUSH`: acknowledged once on disk; concurrent appenders share
    /// one `fdatasync` (group commit).
    Sync,
}

impl std::str::FromStr for FlushDiskType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ASYNC_FLUSH" | "async" => Ok(FlushDiskType::Async),
            "SYNC_FLUSH" | "sync" => Ok(FlushDiskType::Sync),
            other => Err(format!("{other:?} is not ASYNC_FLUSH or SYNC_FLUSH")),
        }
    }
}

/// Every size and timeout the store uses. Field docs give the RocketMQ key;
/// [`StoreConfig::set`] takes those keys.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// `storePathRootDir`: root of all store files.
    pub store_path_root_dir: PathBuf,
    /// `mappedFileSizeCommitLog`: size of one commit-log segment (1 GiB).
    pub mapped_file_size_commit_log: u64,
    /// `mappedFileSizeConsumeQueue`: size of one consume-queue file
    /// (300,000 units of 20 bytes).
    pub mapped_file_size_consume_queue: u64,
    /// `flushDiskType`.
    pub flush_disk_type: FlushDiskType,
    /// `flushIntervalCommitLog`: async flush period.
    pub flush_interval_commit_log: Duration,
    /// `flushCommitLogLeastPages`: async flush waits for this many dirty pages.
    pub flush_commit_log_least_pages: u64,
    /// `flushCommitLogThoroughInterval`: async flush flushes anything dirty
    /// at least this often.
    pub flush_commit_log_thorough_interval: Duration,
    /// `syncFlushTimeout`: longest wait for a sync flush (FLUSH_DISK_TIMEOUT).
    pub sync_flush_timeout: Duration,
    /// `syncFlushMaxWaiters` (Spate): bound on appenders waiting for one
    /// group commit; beyond it appends fail fast as busy.
    pub sync_flush_max_waiters: usize,
    /// `syncFlushSpinMicros` (Spate): how long the idle sync flusher polls
    /// for the next waiter before it parks (trades idle CPU for latency).
    pub sync_flush_spin: Duration,
    /// `transientStorePoolEnable`: read/write separation. Appends go into
    /// pre-locked memory buffers and a committer thread writes them to the
    /// file; readers see committed bytes. Async flush only, as upstream.
    pub transient_store_pool_enable: bool,
    /// `transientStorePoolSize`: number of segment-sized buffers.
    pub transient_store_pool_size: usize,
    /// `warmMapedFileEnable`: pre-fault every page of a new segment in the
    /// background (Spate defaults this on: the append path must not fault).
    pub warm_mapped_file_enable: bool,
    /// `lockMappedFileEnable` (Spate): also `mlock` warmed segments (pool
    /// buffers are always locked).
    pub lock_mapped_file_enable: bool,
    /// `maxMessageSize`: largest message body accepted (4 MiB).
    pub max_message_size: usize,
    /// `flushIntervalConsumeQueue`: how often consume queues are flushed
    /// and the checkpoint written.
    pub flush_interval_consume_queue: Duration,
    /// `flushIntervalIndex` (Spate; upstream flushes an index file only once
    /// it is full): how often the index is flushed. Each flush write-protects
    /// the index's pages again, and its hash slots are written at random,
    /// so after a flush nearly every indexed message takes a page fault in
    /// the dispatcher. The checkpoint's dispatch point never passes the last
    /// index flush; after a crash up to this much is dispatched again.
    pub flush_interval_index: Duration,
    /// `dispatchBatchIntervalMillis` (Spate; upstream's reput service polls
    /// every millisecond): while messages keep coming and no pull waits for
    /// them, the dispatcher takes them in rounds this far apart instead of
    /// being woken for each one. 0: woken for every append.
    pub dispatch_batch_interval: Duration,
    /// `messageIndexEnable`: build the key / unique-id index.
    pub message_index_enable: bool,
    /// `maxHashSlotNum`: hash slots per index file.
    pub max_hash_slot_num: u32,
    /// `maxIndexNum`: entries per index file.
    pub max_index_num: u32,
    /// `fileReservedTime`: hours a commit-log segment is kept.
    pub file_reserved_time_hours: u64,
    /// `deleteWhen`: local hours (`04` or `04;16`) at which expired segments
    /// are deleted.
    pub delete_when: Vec<u32>,
    /// `diskMaxUsedSpaceRatio`: disk usage percentage above which the oldest
    /// segments are deleted at any hour.
    pub disk_max_used_space_ratio: u32,
    /// `cleanResourceInterval`: how often retention runs.
    pub clean_resource_interval: Duration,
    /// `osPageCacheBusyTimeOutMills`: an append in progress longer than this
    /// makes the store report itself busy.
    pub os_page_cache_busy_timeout: Duration,
    /// `allocateMappedFileTimeout` (Spate): longest an append waits for the
    /// background allocator to hand over the next segment.
    pub allocate_mapped_file_timeout: Duration,
    /// `dispatchBatchBytes` (Spate): bytes the dispatcher reads per batch.
    pub dispatch_batch_bytes: usize,
    /// `maxTransferCountOnMessageInMemory`: most messages one read returns.
    pub max_transfer_count_on_message_in_memory: usize,
    /// `inlineReadMaxBytes` (Spate): the largest commit-log range a pull at a
    /// queue's tail reads on the async worker when it is all in the page
    /// cache (checked with `mincore`); other reads go to a blocking thread.
    pub inline_read_max_bytes: usize,
    /// `maxTransferBytesOnMessageInMemory`: about the most bytes one read
    /// returns (at least one message is always returned).
    pub max_transfer_bytes_on_message_in_memory: usize,
    /// `maxMsgsNumBatch`: most messages one key query returns.
    pub max_msgs_num_batch: usize,
}

impl StoreConfig {
    /// Defaults (RocketMQ's where it has one) rooted at `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StoreConfig {
            store_path_root_dir: dir.into(),
            mapped_file_size_commit_log: 1 << 30,
            mapped_file_size_consume_queue: 300_000 * 20,
            flush_disk_type: FlushDiskType::Async,
            flush_interval_commit_log: Duration::from_millis(500),
            flush_commit_log_least_pages: 4,
            flush_commit_log_thorough_interval: Duration::from_secs(10),
            sync_flush_timeout: Duration::from_secs(5),
            sync_flush_max_waiters: 65_536,
            sync_flush_spin: Duration::from_micros(50),
            transient_store_pool_enable: false,
            transient_store_pool_size: 5,
            warm_mapped_file_enable: true,
            lock_mapped_file_enable: false,
            max_message_size: 4 * 1024 * 1024,
            flush_interval_consume_queue: Duration::from_secs(1),
            flush_interval_index: Duration::from_secs(10),
            dispatch_batch_interval: Duration::from_millis(1),
            message_index_enable: true,
            max_hash_slot_num: 5_000_000,
            max_index_num: 20_000_000,
            file_reserved_time_hours: 72,
            delete_when: vec![4],
            disk_max_used_space_ratio: 75,
            clean_resource_interval: Duration::from_secs(10),
            os_page_cache_busy_timeout: Duration::from_millis(1000),
            allocate_mapped_file_timeout: Duration::from_secs(5),
            dispatch_batch_bytes: 1 << 20,
            max_transfer_count_on_message_in_memory: 32,
            inline_read_max_bytes: 1 << 20,
            max_transfer_bytes_on_message_in_memory: 256 * 1024,
            max_msgs_num_batch: 64,
        }
    }

    /// The RocketMQ keys [`StoreConfig::set`] understands.
    pub const KEYS: &'static [&'static str] = &[
        "storePathRootDir",
        "mappedFileSizeCommitLog",
        "mappedFileSizeConsumeQueue",
        "flushDiskType",
        "flushIntervalCommitLog",
        "flushCommitLogLeastPages",
        "flushCommitLogThoroughInterval",
        "syncFlushTimeout",
        "syncFlushMaxWaiters",
        "syncFlushSpinMicros",
        "transientStorePoolEnable",
        "transientStorePoolSize",
        "warmMapedFileEnable",
        "lockMappedFileEnable",
        "maxMessageSize",
        "flushIntervalConsumeQueue",
        "flushIntervalIndex",
        "messageIndexEnable",
        "maxHashSlotNum",
        "maxIndexNum",
        "fileReservedTime",
        "deleteWhen",
        "diskMaxUsedSpaceRatio",
        "cleanResourceInterval",
        "osPageCacheBusyTimeOutMills",
        "allocateMappedFileTimeout",
        "dispatchBatchBytes",
        "dispatchBatchIntervalMillis",
        "maxTransferCountOnMessageInMemory",
        "maxTransferBytesOnMessageInMemory",
        "maxMsgsNumBatch",
    ];

    /// Sets one setting by its RocketMQ key. Returns `Ok(false)` for a key
    /// the store does not know (the caller decides whether to warn), and a
    /// [`StoreError::Config`] naming the key for a value that does not parse.
    pub fn set(&mut self, key: &str, value: &str) -> Result<bool> {
        let v = value.trim();
        match key {
            "storePathRootDir" => self.store_path_root_dir = PathBuf::from(v),
            "mappedFileSizeCommitLog" => self.mapped_file_size_commit_log = parse(key, v)?,
            "mappedFileSizeConsumeQueue" => self.mapped_file_size_consume_queue = parse(key, v)?,
            "flushDiskType" => {
                self.flush_disk_type =
                    v.parse().map_err(|reason| StoreError::Config { key: "flushDiskType", reason })?
            }
            "flushIntervalCommitLog" => self.flush_interval_commit_log = millis(key, v)?,
            "flushCommitLogLeastPages" => self.flush_commit_log_least_pages = parse(key, v)?,
            "flushCommitLogThoroughInterval" => self.flush_commit_log_thorough_interval = millis(key, v)?,
            "syncFlushTimeout" => self.sync_flush_timeout = millis(key, v)?,
            "syncFlushMaxWaiters" => self.sync_flush_max_waiters = parse(key, v)?,
            "syncFlushSpinMicros" => self.sync_flush_spin = Duration::from_micros(parse(key, v)?),
            "transientStorePoolEnable" => self.transient_store_pool_enable = parse(key, v)?,
            "transientStorePoolSize" => self.transient_store_pool_size = parse(key, v)?,
            "warmMapedFileEnable" => self.warm_mapped_file_enable = parse(key, v)?,
            "lockMappedFileEnable" => self.lock_mapped_file_enable = parse(key, v)?,
            "maxMessageSize" => self.max_message_size = parse(key, v)?,
            "flushIntervalConsumeQueue" => self.flush_interval_consume_queue = millis(key, v)?,
            "flushIntervalIndex" => self.flush_interval_index = millis(key, v)?,
            "dispatchBatchIntervalMillis" => self.dispatch_batch_interval = millis(key, v)?,
            "messageIndexEnable" => self.message_index_enable = parse(key, v)?,
            "maxHashSlotNum" => self.max_hash_slot_num = parse(key, v)?,
            "maxIndexNum" => self.max_index_num = parse(key, v)?,
            "fileReservedTime" => self.file_reserved_time_hours = parse(key, v)?,
            "deleteWhen" => {
                self.delete_when = v
                    .split(';')
                    .map(|h| h.trim().parse::<u32>().ok().filter(|h| *h < 24))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(key, v, "hours 00-23 separated by ';'"))?
            }
            "diskMaxUsedSpaceRatio" => self.disk_max_used_space_ratio = parse(key, v)?,
            "cleanResourceInterval" => self.clean_resource_interval = millis(key, v)?,
            "osPageCacheBusyTimeOutMills" => self.os_page_cache_busy_timeout = millis(key, v)?,
            "allocateMappedFileTimeout" => self.allocate_mapped_file_timeout = millis(key, v)?,
            "dispatchBatchBytes" => self.dispatch_batch_bytes = parse(key, v)?,
            "maxTransferCountOnMessageInMemory" => self.max_transfer_count_on_message_in_memory = parse(key, v)?,
            "inlineReadMaxBytes" => self.inline_read_max_bytes = parse(key, v)?,
            "maxTransferBytesOnMessageInMemory" => self.max_transfer_bytes_on_message_in_memory = parse(key, v)?,
            "maxMsgsNumBatch" => self.max_msgs_num_batch = parse(key, v)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Checks ranges and combinations; `MessageStore::open` calls it.
    pub fn validate(&self) -> Result<()> {
        let check = |ok: bool, key: &'static str, reason: &str| {
            if ok {
                Ok(())
            } else {
                Err(StoreError::Config { key, reason: reason.to_string() })
            }
        };
        let seg = self.mapped_file_size_commit_log;
        check(
            seg >= 64 * 1024 && seg.is_multiple_of(crate::segment::PAGE_SIZE),
            "mappedFileSizeCommitLog",
            "must be a multiple of 4096 and at least 64 KiB",
        )?;
        check(
            self.mapped_file_size_consume_queue >= 20 && self.mapped_file_size_consume_queue.is_multiple_of(20),
            "mappedFileSizeConsumeQueue",
            "must be a positive multiple of 20",
        )?;
        check(self.max_message_size >= 1, "maxMessageSize", "must be positive")?;
        check(
            (self.max_message_size as u64) + 64 * 1024 <= seg,
            "maxMessageSize",
            "a largest message must fit in one commit-log segment with room to spare",
        )?;
        check(
            !(self.transient_store_pool_enable && self.flush_disk_type == FlushDiskType::Sync),
            "transientStorePoolEnable",
            "read/write separation works with ASYNC_FLUSH only",
        )?;
        check(
            !self.transient_store_pool_enable || self.transient_store_pool_size >= 2,
            "transientStorePoolSize",
            "at least 2 buffers",
        )?;
        check(self.sync_flush_max_waiters >= 1, "syncFlushMaxWaiters", "must be positive")?;
        check(self.max_hash_slot_num >= 1 && self.max_index_num >= 2, "maxIndexNum", "index needs slots and entries")?;
        check((1..=95).contains(&self.disk_max_used_space_ratio), "diskMaxUsedSpaceRatio", "must be 1..=95")?;
        check(self.dispatch_batch_bytes >= 4096, "dispatchBatchBytes", "at least 4096")?;
        // Longer rounds would hold consume-queue readers (timers, offsets by
        // time) back for no gain: one wake-up per round is already rare.
        check(
            self.dispatch_batch_interval <= Duration::from_millis(100),
            "dispatchBatchIntervalMillis",
            "at most 100",
        )?;
        Ok(())
    }

    /// Directory of commit-log segments.
    pub fn commit_log_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("commitlog")
    }

    /// Directory of consume queues.
    pub fn consume_queue_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("consumequeue")
    }

    /// Directory of index files.
    pub fn index_dir(&self) -> PathBuf {
        self.store_path_root_dir.join("index")
    }
}

fn bad(key: &str, value: &str, want: &str) -> StoreError {
    let key = StoreConfig::KEYS.iter().find(|k| **k == key).copied().unwrap_or("unknown");
    StoreError::Config { key, reason: format!("{value:?} is not {want}") }
}

fn parse<T: std::str::FromStr>(key: &str, value: &str) -> Result<T> {
    let want = match std::any::type_name::<T>() {
        "bool" => "true or false",
        _ => "a whole number",
    };
    value.parse().map_err(|_| bad(key, value, want))
}

fn millis(key: &str, value: &str) -> Result<Duration> {
    parse::<u64>(key, value).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_by_rocketmq_keys() {
        let mut c = StoreConfig::new("/tmp/x");
        assert!(c.set("flushDiskType", "SYNC_FLUSH").unwrap());
        assert_eq!(c.flush_disk_type, FlushDiskType::Sync);
        assert!(c.set("syncFlushTimeout", "250").unwrap());
        assert_eq!(c.sync_flush_timeout, Duration::from_millis(250));
        assert!(c.set("deleteWhen", "04;16").unwrap());
        assert_eq!(c.delete_when, vec![4, 16]);
        assert!(!c.set("noSuchKey", "1").unwrap());
        let err = c.set("maxMessageSize", "big").unwrap_err();
        assert!(err.to_string().contains("maxMessageSize"), "{err}");
        assert!(c.set("deleteWhen", "25").is_err());
    }

    #[test]
    fn validate_refuses_contradictions() {
        let mut c = StoreConfig::new("/tmp/x");
        c.validate().unwrap();
        c.transient_store_pool_enable = true;
        c.flush_disk_type = FlushDiskType::Sync;
        assert!(c.validate().is_err());
        let mut c = StoreConfig::new("/tmp/x");
        c.mapped_file_size_commit_log = 1 << 20;
        assert!(c.validate().is_err(), "4 MiB messages cannot fit 1 MiB segments");
    }
}
