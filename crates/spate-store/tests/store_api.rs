//! The store's behaviour through its public API, on real files.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{body, config, msg, sync_config};

#[allow(unused_imports)]
use common::read_queue;
use spate_common::message::{decode_record, java_string_hash, offset_msg_id, parse_offset_msg_id, MessageError};
use spate_store::{GetStatus, MessageStore, ReadLimits, RetentionTrigger, StoreError};

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn append_read_and_roll_over_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut last_end = 0;
    for i in 0..2000u64 {
        let r = store.put_message(&msg("TopicA", (i % 4) as i32, &body(i, 300), None, None)).unwrap();
        assert_eq!(r.append.queue_offset, (i / 4) as i64, "queue offsets are dense per queue");
        assert!(r.append.physical_offset >= last_end, "offsets only grow");
        last_end = r.append.end_offset();
        r.flush.wait_blocking().unwrap();
    }
    assert!(store.stats().segments_rolled >= 3, "2000 x ~400 B must roll 256 KiB segments: {:?}", store.stats());
    assert!(store.wait_dispatched(WAIT));
    for q in 0..4 {
        assert_eq!(store.max_offset_in_queue("TopicA", q), 500);
        let mut offset = 0;
        let mut n = 0u64;
        while offset < 500 {
            let got = store.get_messages("TopicA", q, offset, 32, 1 << 20, None).unwrap();
            assert_eq!(got.status, GetStatus::Found);
            for rec in &got.messages {
                let r = decode_record(rec, true).unwrap();
                assert_eq!(r.body, &body(n * 4 + q as u64, 300)[..], "queue {q} message {n}");
                assert_eq!(r.queue_offset, n as i64);
                n += 1;
            }
            offset = got.next_begin_offset;
        }
        assert_eq!(n, 500);
    }
}

#[test]
fn get_statuses_and_tag_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert_eq!(store.get_messages("None", 0, 0, 1, 1024, None).unwrap().status, GetStatus::NoMatchingQueue);
    for i in 0..10u64 {
        let tag = if i % 2 == 0 { "TagA" } else { "TagB" };
        store.put_message(&msg("T", 0, &body(i, 50), Some(tag), None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT));
    let a = java_string_hash("TagA") as i64;
    let only_a = move |code: i64| code == a;
    let got = store.get_messages("T", 0, 0, 32, 1 << 20, Some(&only_a)).unwrap();
    assert_eq!(got.status, GetStatus::Found);
    assert_eq!(got.messages.len(), 5);
    assert_eq!(got.next_begin_offset, 10);
    let got = store.get_messages("T", 0, 9, 32, 1 << 20, Some(&only_a)).unwrap();
    assert_eq!(got.status, GetStatus::NoMatchedMessage);
    assert_eq!(got.next_begin_offset, 10);
    assert_eq!(store.get_messages("T", 0, 10, 1, 1024, None).unwrap().status, GetStatus::OffsetOverflowOne);
    let bad = store.get_messages("T", 0, 99, 1, 1024, None).unwrap();
    assert_eq!((bad.status, bad.next_begin_offset), (GetStatus::OffsetOverflowBadly, 10));
    let small = store.get_messages("T", 0, 0, 32, 100, None).unwrap();
    assert_eq!(small.messages.len(), 1, "max bytes caps the batch but returns at least one");
}

/// A read bounded by a commit-log offset (replication's confirm offset)
/// returns nothing ending past it, and a tag filter skipping units never
/// carries the next offset past the bound.
#[test]
fn reads_stop_at_a_physical_bound_even_with_a_filter() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut ends = Vec::new();
    for i in 0..10u64 {
        let tag = if i < 8 { "TagA" } else { "TagB" };
        ends.push(store.put_message(&msg("T", 0, &body(i, 50), Some(tag), None)).unwrap().append.end_offset());
    }
    assert!(store.wait_dispatched(WAIT));
    let bound = ends[5]; // messages 0..=5 are within it
    let limits = ReadLimits { max_msgs: 32, max_bytes: 1 << 20, physical_end: bound };
    let got = store.get_messages_within("T", 0, 0, limits, None, None).unwrap();
    assert_eq!((got.status, got.messages.len(), got.next_begin_offset), (GetStatus::Found, 6, 6));
    // Only TagB matches (messages 8 and 9, past the bound): the filter
    // passes over 0..=5 and the scan stops at 6, the first past the bound.
    let b = java_string_hash("TagB") as i64;
    let only_b = move |code: i64| code == b;
    let got = store.get_messages_within("T", 0, 0, limits, Some(&only_b), None).unwrap();
    assert_eq!((got.status, got.next_begin_offset), (GetStatus::NoMatchedMessage, 6));
    let got = store.get_messages_within("T", 0, 6, limits, None, None).unwrap();
    assert_eq!((got.status, got.next_begin_offset), (GetStatus::OffsetOverflowOne, 6));
    // A record filter (properties) drops records after they are read;
    // the offsets of the dropped ones are passed over.
    let odd_offsets = |rec: &[u8]| decode_record(rec, false).is_ok_and(|r| r.queue_offset % 2 == 1);
    let got = store.get_messages_within("T", 0, 0, limits, None, Some(&odd_offsets)).unwrap();
    let offsets: Vec<i64> = got.messages.iter().map(|m| decode_record(m, false).unwrap().queue_offset).collect();
    assert_eq!((got.status, offsets, got.next_begin_offset), (GetStatus::Found, vec![1, 3, 5], 6));
    assert_eq!(store.max_offset_in_queue_below("T", 0, bound), 6);
    assert_eq!(store.max_offset_in_queue_below("T", 0, u64::MAX), 10);
    assert_eq!(store.max_offset_in_queue_below("T", 0, 0), 0);
}

#[test]
fn resident_reads_are_offered_only_at_a_queue_tail() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.inline_read_max_bytes = 64 << 10;
    let store = MessageStore::open(cfg).unwrap();
    let read = |offset: i64| store.get_messages_if_resident("T", 0, offset, 32, 1 << 20, None).unwrap();
    assert_eq!(read(0).map(|g| g.status), Some(GetStatus::NoMatchingQueue), "no file touched: answered");
    for i in 0..100u64 {
        store.put_message(&msg("T", 0, &body(i, 100), None, None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT));
    // At the tail, just written: served, and the same as the ordinary read.
    let hot = read(90).expect("the last ten records were just written");
    let plain = store.get_messages("T", 0, 90, 32, 1 << 20, None).unwrap();
    assert_eq!((hot.status, hot.messages.len(), hot.next_begin_offset), (GetStatus::Found, 10, 100));
    assert_eq!(hot.messages, plain.messages);
    // Far behind the tail: left to a blocking thread.
    assert!(read(0).is_none(), "a reader 100 units behind is not at the tail");
    assert_eq!(read(100).map(|g| g.status), Some(GetStatus::OffsetOverflowOne));
    // A tail range longer than inlineReadMaxBytes is left to a blocking thread too.
    for i in 0..10u64 {
        store.put_message(&msg("T", 0, &body(i, 20_000), None, None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT));
    assert!(read(100).is_none(), "ten 20 KB records exceed 64 KiB");
    assert!(read(107).is_some());
}

#[test]
fn batch_is_contiguous_with_consecutive_queue_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    store.put_message(&msg("B", 1, b"first-message-body-x", None, None)).unwrap();
    let batch: Vec<_> = (0..50u64).map(|i| msg("B", 1, &body(i, 100), None, None)).collect();
    let r = store.put_messages(&batch).unwrap();
    for (i, a) in r.appends.iter().enumerate() {
        assert_eq!(a.queue_offset, 1 + i as i64);
        if i > 0 {
            assert_eq!(a.physical_offset, r.appends[i - 1].end_offset());
        }
    }
    // A batch bigger than a segment is refused whole.
    let huge: Vec<_> = (0..10u64).map(|i| msg("B", 1, &body(i, 60_000), None, None)).collect();
    assert!(matches!(store.put_messages(&huge), Err(StoreError::InvalidMessage(_))));
}

#[test]
fn bad_messages_get_typed_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let before = store.max_offset();
    let too_big = msg("T", 0, &vec![7u8; 64 * 1024 + 1], None, None);
    assert!(matches!(
        store.put_message(&too_big),
        Err(StoreError::InvalidMessage(MessageError::BodyTooLarge { size: 65537, max: 65536 }))
    ));
    assert!(matches!(
        store.put_message(&msg("bad/topic", 0, b"x", None, None)),
        Err(StoreError::InvalidMessage(MessageError::TopicIllegal { .. }))
    ));
    assert!(matches!(
        store.put_message(&msg(&"t".repeat(128), 0, b"x", None, None)),
        Err(StoreError::InvalidMessage(MessageError::TopicTooLong { len: 128 }))
    ));
    assert!(matches!(
        store.put_message(&msg("T", -1, b"x", None, None)),
        Err(StoreError::InvalidMessage(MessageError::QueueIdIllegal { .. }))
    ));
    let mut big_props = msg("T", 0, b"x", None, None);
    big_props.properties = "k\u{1}".to_string() + &"v".repeat(40_000) + "\u{2}";
    assert!(matches!(
        store.put_message(&big_props),
        Err(StoreError::InvalidMessage(MessageError::PropertiesTooLarge { .. }))
    ));
    assert_eq!(store.max_offset(), before, "refused messages wrote nothing");
    store.put_message(&msg("T", 0, b"still-works-after-errors", None, None)).unwrap();
}

#[test]
fn query_by_key_unique_id_and_offset_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut offsets = Vec::new();
    for i in 0..100u64 {
        let keys = format!("order-{} common", i % 10);
        let mut m = msg("Q", 0, &body(i, 40), None, Some(&keys));
        m.properties.push_str(&format!("UNIQ_KEY\u{1}UNIQ{i:04}\u{2}"));
        offsets.push(store.put_message(&m).unwrap().append);
    }
    store.put_message(&msg("Other", 0, b"other-topic-message-x", None, Some("order-3"))).unwrap();
    assert!(store.wait_dispatched(WAIT));
    let hits = store.query_by_key("Q", "order-3", 0, i64::MAX, 32).unwrap();
    assert_eq!(hits.len(), 10, "ten messages carry order-3 in topic Q");
    for h in &hits {
        let r = decode_record(h, true).unwrap();
        assert_eq!(r.topic, "Q");
        assert!(r.property("KEYS").unwrap().contains("order-3"));
    }
    assert_eq!(store.query_by_key("Q", "common", 0, i64::MAX, 7).unwrap().len(), 7, "max bounds the result");
    let uniq = store.query_by_key("Q", "UNIQ0042", 0, i64::MAX, 5).unwrap();
    assert_eq!(uniq.len(), 1);
    assert_eq!(decode_record(&uniq[0], true).unwrap().body, &body(42, 40)[..]);
    let ts = offsets[0].store_timestamp;
    assert!(store.query_by_key("Q", "order-3", ts + 3_600_000, i64::MAX, 5).unwrap().is_empty(), "time range filters");
    let id = offset_msg_id("127.0.0.1:10911".parse().unwrap(), offsets[17].physical_offset);
    let (_, phys) = parse_offset_msg_id(&id).unwrap();
    let rec = store.read_record(phys).unwrap();
    assert_eq!(decode_record(&rec, true).unwrap().body, &body(17, 40)[..]);
}

#[test]
fn offset_by_time_and_earliest() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut stamps = Vec::new();
    for i in 0..6u64 {
        stamps.push(store.put_message(&msg("S", 2, &body(i, 30), None, None)).unwrap().append.store_timestamp);
        std::thread::sleep(Duration::from_millis(3));
    }
    assert!(store.wait_dispatched(WAIT));
    assert_eq!(store.earliest_store_time("S", 2).unwrap(), Some(stamps[0]));
    assert_eq!(store.offset_by_time("S", 2, 0).unwrap(), 0);
    assert_eq!(
        store.offset_by_time("S", 2, stamps[3]).unwrap(),
        stamps.iter().position(|t| *t >= stamps[3]).unwrap() as i64
    );
    assert_eq!(store.offset_by_time("S", 2, i64::MAX).unwrap(), 6);
}

#[test]
fn reopen_after_clean_shutdown_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let store = MessageStore::open(config(dir.path())).unwrap();
        for i in 0..700u64 {
            store.put_message(&msg("R", 0, &body(i, 500), None, Some(&format!("k{i}")))).unwrap();
        }
        store.shutdown().unwrap();
        store.max_offset()
    };
    assert!(!dir.path().join("abort").exists(), "clean shutdown removes the abort marker");
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert!(!store.recovery().after_crash);
    assert_eq!(store.max_offset(), end);
    assert_eq!(store.max_offset_in_queue("R", 0), 700);
    let r = store.put_message(&msg("R", 0, b"after-reopen-message", None, None)).unwrap();
    assert_eq!(r.append.queue_offset, 700);
    assert_eq!(r.append.physical_offset, end);
    assert!(store.wait_dispatched(WAIT));
    assert_eq!(store.query_by_key("R", "k650", 0, i64::MAX, 4).unwrap().len(), 1);
}

#[test]
fn sync_flush_acknowledges_only_durable_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(sync_config(dir.path())).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let r = store.put_message(&msg("Sync", t, &body(i, 200), None, None)).unwrap();
                    r.flush.wait_blocking().unwrap();
                    assert!(store.flushed_offset() >= r.append.end_offset(), "acked before flushed");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(store.flushed_offset(), store.max_offset());
}

#[test]
fn read_write_separation_serves_committed_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.transient_store_pool_enable = true;
    c.transient_store_pool_size = 3;
    let store = MessageStore::open(c.clone()).unwrap();
    for i in 0..3000u64 {
        store.put_message(&msg("W", 0, &body(i, 300), None, None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT), "committer and dispatcher catch up: {:?}", store.stats());
    // flush() takes the committer's lock, so a buffer being returned is back.
    store.flush().unwrap();
    let stats = store.stats();
    assert!(stats.segments_rolled >= 4);
    assert_eq!(stats.write_buffers_available.map(|n| n >= 2), Some(true), "sealed segments return their buffers");
    let got = store.get_messages("W", 0, 2990, 32, 1 << 20, None).unwrap();
    assert_eq!(decode_record(&got.messages[9], true).unwrap().body, &body(2999, 300)[..]);
    let end = store.max_offset();
    drop(store);
    let store = MessageStore::open(c).unwrap();
    assert_eq!(store.max_offset(), end, "committed bytes survive a restart");
}

#[test]
fn raw_copy_gives_byte_identical_log_and_truncation_follows() {
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let master = MessageStore::open(config(dir_a.path())).unwrap();
    let slave = MessageStore::open(config(dir_b.path())).unwrap();
    master.begin_epoch(1).unwrap();
    slave.begin_epoch(1).unwrap();
    for i in 0..1500u64 {
        master.put_message(&msg("Rep", (i % 3) as i32, &body(i, 333), Some("t"), Some("key"))).unwrap();
    }
    let mut at = 0;
    while at < master.max_offset() {
        let chunk = master.read_raw(at, 50_000).unwrap();
        assert!(!chunk.is_empty());
        let (end, _) = slave.append_raw(at, &chunk).unwrap();
        at = end;
    }
    assert_eq!(slave.max_offset(), master.max_offset());
    // Both dispatch in their own time (rounds of dispatchBatchIntervalMillis).
    assert!(master.wait_dispatched(WAIT));
    assert!(slave.wait_dispatched(WAIT));
    for q in 0..3 {
        assert_eq!(slave.max_offset_in_queue("Rep", q), master.max_offset_in_queue("Rep", q));
    }
    master.flush().unwrap();
    slave.flush().unwrap();
    for entry in std::fs::read_dir(dir_a.path().join("commitlog")).unwrap() {
        let entry = entry.unwrap();
        let theirs = std::fs::read(dir_b.path().join("commitlog").join(entry.file_name()));
        if let Ok(theirs) = theirs {
            assert!(std::fs::read(entry.path()).unwrap() == theirs, "segment {:?} differs", entry.file_name());
        }
    }
    // Raw appends that do not fit are refused.
    assert!(matches!(slave.append_raw(at + 1, b"x"), Err(StoreError::BadOffset { .. })));
    assert!(slave.append_raw(at, &[0xAB; 64]).is_err(), "garbage is not whole records");

    // Cut the slave back to message 1000 of queue 0 and let it diverge.
    let cut = {
        let got = slave.get_messages("Rep", 0, 333, 1, 1 << 20, None).unwrap();
        decode_record(&got.messages[0], false).unwrap().physical_offset as u64
    };
    slave.begin_epoch(2).unwrap();
    slave.truncate(cut).unwrap();
    assert_eq!(slave.max_offset(), cut);
    assert_eq!(slave.epochs().len(), 1, "the epoch that began past the cut is gone");
    assert_eq!(slave.max_offset_in_queue("Rep", 0), 333);
    assert!(slave.max_offset_in_queue("Rep", 1) <= 334);
    assert!(slave.truncate(cut + 1).is_err(), "beyond the end");
    let r = slave.put_message(&msg("Rep", 0, b"after-truncation-xx", None, None)).unwrap();
    assert_eq!((r.append.physical_offset, r.append.queue_offset), (cut, 333));
    assert!(slave.wait_dispatched(WAIT));
    let got = slave.get_messages("Rep", 0, 333, 4, 1 << 20, None).unwrap();
    assert_eq!(got.messages.len(), 1);
    assert_eq!(decode_record(&got.messages[0], true).unwrap().body, b"after-truncation-xx");
}

#[test]
fn retention_deletes_old_segments_and_queues_follow() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.file_reserved_time_hours = 0;
    let store = MessageStore::open(c).unwrap();
    for i in 0..3000u64 {
        store.put_message(&msg("Old", 0, &body(i, 300), None, None)).unwrap();
    }
    store.flush().unwrap();
    let before = store.stats().segment_count;
    let deleted = store.run_retention(SystemTime::now(), RetentionTrigger::Manual).unwrap();
    assert!(deleted >= 1 && deleted < before, "deleted {deleted} of {before}; the newest stays");
    let min = store.min_offset();
    assert!(min > 0);
    let cq_min = store.min_offset_in_queue("Old", 0);
    assert!(cq_min > 0, "consume queue minimum follows the commit log");
    let got = store.get_messages("Old", 0, 0, 4, 1 << 20, None).unwrap();
    assert_eq!((got.status, got.next_begin_offset), (GetStatus::OffsetTooSmall, cq_min));
    let got = store.get_messages("Old", 0, cq_min, 1, 1 << 20, None).unwrap();
    assert!(decode_record(&got.messages[0], true).unwrap().physical_offset as u64 >= min);
}

#[test]
fn dispatch_listener_hears_every_grown_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let seen = Arc::new(AtomicI64::new(0));
    let heard = seen.clone();
    store.set_dispatch_listener(Arc::new(move |topic: &str, q: i32, max: i64| {
        if topic == "L" && q == 5 {
            heard.fetch_max(max, Ordering::SeqCst);
        }
    }));
    for i in 0..20u64 {
        store.put_message(&msg("L", 5, &body(i, 30), None, None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT));
    assert_eq!(seen.load(Ordering::SeqCst), 20);
}

/// While a pull waits (`urgent_dispatch`), an append made inside a
/// `hold_wakeups` scope is dispatched by the appending thread when the scope
/// ends; one that needs a file (a queue seen for the first time) is left to
/// the dispatcher thread. Without a waiting pull the thread does it all.
#[test]
fn while_a_pull_waits_the_appending_thread_dispatches_what_needs_no_file() {
    use std::sync::Mutex;
    use std::thread::ThreadId;
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let heard: Arc<Mutex<Vec<(i64, ThreadId)>>> = Arc::default();
    let h = heard.clone();
    store.set_dispatch_listener(Arc::new(move |topic: &str, _q: i32, max: i64| {
        if topic == "In" {
            h.lock().unwrap().push((max, std::thread::current().id()));
        }
    }));
    let me = std::thread::current().id();
    let put = |i: u64| {
        spate_common::wake::hold_wakeups(|| store.put_message(&msg("In", 0, &body(i, 40), None, Some("k"))).unwrap());
    };
    let thread_of = |max: i64| -> Option<ThreadId> {
        let deadline = std::time::Instant::now() + WAIT;
        while std::time::Instant::now() < deadline {
            if let Some(&(_, t)) = heard.lock().unwrap().iter().find(|(m, _)| *m == max) {
                return Some(t);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        None
    };

    let waiting = store.urgent_dispatch();
    put(0);
    let first = thread_of(1).expect("first message dispatched");
    assert_ne!(first, me, "the queue's first unit creates its file: the dispatcher thread's work");
    assert!(store.wait_dispatched(WAIT));
    // The dispatcher thread looks in every 100 ms while parked and holds
    // its lock for microseconds; an inline dispatch that finds it held
    // leaves the work to it. Allow one such meeting in four.
    std::thread::sleep(Duration::from_millis(20));
    let mut inline = 0;
    for i in 1..5 {
        put(i);
        // Dispatched before the scope returned, on this thread.
        if heard.lock().unwrap().last().copied() == Some((i as i64 + 1, me)) {
            inline += 1;
        }
    }
    assert!(inline >= 3, "{inline} of 4 dispatched by the appending thread");
    assert!(store.wait_dispatched(WAIT));
    drop(waiting);
    put(5);
    assert_ne!(thread_of(6).expect("dispatched"), me, "nobody waits: the dispatcher thread's round");
    assert_eq!(store.query_by_key("In", "k", 0, i64::MAX, 100).unwrap().len(), 6, "index entries made inline too");
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = MessageStore::open(config(dir.path())).unwrap();
    assert!(matches!(MessageStore::open(config(dir.path())), Err(StoreError::Io { .. })));
}

#[test]
fn distinct_offsets_under_concurrent_appenders() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(config(dir.path())).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..500u64)
                    .map(|i| store.put_message(&msg("C", 0, &body(i, 100), None, None)).unwrap().append)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let all: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    let qoffs: HashSet<_> = all.iter().map(|a| a.queue_offset).collect();
    let phys: HashSet<_> = all.iter().map(|a| a.physical_offset).collect();
    assert_eq!((qoffs.len(), phys.len()), (2000, 2000));
    assert_eq!(*qoffs.iter().max().unwrap(), 1999);
}

#[test]
fn truncation_into_an_older_segment_with_read_write_separation() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.transient_store_pool_enable = true;
    c.transient_store_pool_size = 3;
    let store = MessageStore::open(c.clone()).unwrap();
    let mut appended = Vec::new();
    for i in 0..2000u64 {
        appended.push(store.put_message(&msg("P", 0, &body(i, 300), None, None)).unwrap().append);
    }
    assert!(store.wait_dispatched(WAIT));
    assert!(store.stats().segment_count >= 3);
    // Cut inside the first segment, then keep writing past several rolls.
    let cut = appended[100].physical_offset;
    store.truncate(cut).unwrap();
    assert_eq!(store.max_offset(), cut);
    for i in 0..2000u64 {
        store.put_message(&msg("P", 0, &body(10_000 + i, 300), None, None)).unwrap();
    }
    assert!(store.wait_dispatched(WAIT), "committer and dispatcher keep up after the cut: {:?}", store.stats());
    store.flush().unwrap();
    assert_eq!(store.stats().write_buffers_available.map(|n| n >= 2), Some(true), "no buffer leaked");
    let all = common::read_queue(&store, "P", 0, 0);
    assert_eq!(all.len(), 2100);
    assert_eq!(decode_record(&all[100], true).unwrap().body, &body(10_000, 300)[..]);
    let end = store.max_offset();
    drop(store);
    let store = MessageStore::open(c).unwrap();
    assert_eq!(store.max_offset(), end, "everything written after the cut survives a restart");
    assert_eq!(common::read_queue(&store, "P", 0, 0).len(), 2100);
}

#[test]
fn reopen_after_truncation_and_crash_ignores_prepared_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut appended = Vec::new();
    for i in 0..3000u64 {
        appended.push(store.put_message(&msg("G", 0, &body(i, 300), None, None)).unwrap().append);
    }
    assert!(store.stats().segment_count >= 4);
    store.truncate(appended[50].physical_offset).unwrap();
    // Whatever the allocator prepared, a crash now must not block the next open.
    let kept = store.crash(false);
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert_eq!(store.max_offset(), kept);
    assert_eq!(store.max_offset_in_queue("G", 0), 50);
    store.put_message(&msg("G", 0, b"after-reopen-message", None, None)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_callers_await_group_commit_without_blocking_workers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(MessageStore::open(sync_config(dir.path())).unwrap());
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut ends = Vec::new();
                for i in 0..20u64 {
                    let r = store.put_message(&msg("Async", t % 4, &body(i, 100), None, None)).unwrap();
                    r.flush.wait().await.unwrap();
                    ends.push(r.append.end_offset());
                }
                ends
            })
        })
        .collect();
    let mut max_end = 0;
    for t in tasks {
        max_end = max_end.max(t.await.unwrap().into_iter().max().unwrap());
    }
    assert!(store.flushed_offset() >= max_end, "every awaited append is on disk");
    assert!(store.wait_dispatched(WAIT));
    let stored: i64 = (0..4).map(|q| store.max_offset_in_queue("Async", q)).sum();
    assert_eq!(stored, 32 * 20);
}

#[test]
fn deleted_topic_starts_again_at_offset_zero_and_others_are_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(common::config(dir.path())).unwrap();
    for i in 0..5 {
        store.put_message(&common::msg("Gone", 0, format!("g{i}").as_bytes(), None, None)).unwrap();
        store.put_message(&common::msg("Kept", 0, format!("k{i}").as_bytes(), None, None)).unwrap();
    }
    store.delete_topic("Gone").unwrap();
    assert_eq!(store.max_offset_in_queue("Gone", 0), 0);
    let again = store.put_message(&common::msg("Gone", 0, b"new", None, None)).unwrap();
    assert_eq!(again.append.queue_offset, 0);
    assert!(store.wait_dispatched(std::time::Duration::from_secs(5)));
    assert_eq!(store.max_offset_in_queue("Gone", 0), 1);
    assert_eq!(store.max_offset_in_queue("Kept", 0), 5);
    // The store keeps accepting both topics.
    store.put_message(&common::msg("Kept", 0, b"k5", None, None)).unwrap();
    assert!(store.wait_dispatched(std::time::Duration::from_secs(5)));
    assert_eq!(store.max_offset_in_queue("Kept", 0), 6);
}

/// A crash after a topic was deleted and made again: recovery must not
/// dispatch the old topic's records into the new topic's queue (the old
/// messages would come back, after the new ones, at offsets of their own).
#[test]
fn a_crash_after_a_topic_was_deleted_and_recreated_does_not_bring_its_old_messages_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(common::config(dir.path())).unwrap();
    for i in 0..5 {
        store.put_message(&common::msg("Gone", 0, format!("g{i}").as_bytes(), None, None)).unwrap();
    }
    store.delete_topic("Gone").unwrap();
    store.put_message(&common::msg("Gone", 0, b"new", None, None)).unwrap();
    assert!(store.wait_dispatched(std::time::Duration::from_secs(5)));
    assert_eq!(store.max_offset_in_queue("Gone", 0), 1);
    store.crash(false);
    let store = MessageStore::open(common::config(dir.path())).unwrap();
    assert!(store.recovery().after_crash);
    assert!(store.wait_dispatched(std::time::Duration::from_secs(5)));
    assert_eq!(store.max_offset_in_queue("Gone", 0), 1, "the recreated topic holds its own message only");
    let got = store.get_messages("Gone", 0, 0, 32, 1 << 20, None).unwrap();
    let bodies: Vec<Vec<u8>> =
        got.messages.iter().map(|r| spate_common::message::decode_record(r, false).unwrap().body.to_vec()).collect();
    assert_eq!(bodies, [b"new".to_vec()]);
}

#[test]
fn append_may_wait_only_near_a_segment_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    // 256 KiB segments, 64 KiB max message: the margin is 128 KiB.
    store.put_message(&msg("T", 0, b"first", None, None)).unwrap();
    assert!(!store.append_may_wait(1024), "plenty of room at the start of a segment");
    let body = vec![7u8; 30 * 1024];
    while !store.append_may_wait(1024) {
        store.put_message(&msg("T", 0, &body, None, None)).unwrap();
    }
    // Within the margin of the segment end now; the first record of the
    // next segment brings the room back.
    loop {
        let put = store.put_message(&msg("T", 0, &body, None, None)).unwrap();
        if put.append.physical_offset >= 256 * 1024 {
            break;
        }
        assert!(store.append_may_wait(1024), "still near the end of the first segment");
    }
    assert!(!store.append_may_wait(1024));
}

#[test]
fn the_next_segment_can_be_awaited_and_is_then_taken_without_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    store.put_message(&msg("N", 0, &body(0, 300), None, None)).unwrap();
    assert!(store.wait_next_segment(WAIT));
    // Fill past the first segment: the roll finds the next one prepared.
    let mut i = 1;
    while store.stats().segments_rolled == 0 {
        store.put_message(&msg("N", 0, &body(i, 300), None, None)).unwrap();
        i += 1;
    }
    assert!(store.stats().roll_wait_us_max < 100_000, "{:?}", store.stats());
    assert!(store.wait_next_segment(WAIT), "and the one after it too");
}
