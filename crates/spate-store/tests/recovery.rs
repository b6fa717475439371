//! Recovery from torn and corrupt tails, on real files.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{body, config, msg};
use spate_common::message::{decode_intact, decode_record};
use spate_store::MessageStore;

const WAIT: Duration = Duration::from_secs(5);

/// Writes `n` records to a fresh store, shuts it down cleanly, and returns
/// the (offset, size) of each.
fn populate(dir: &Path, n: u64) -> Vec<(u64, u32)> {
    let store = MessageStore::open(config(dir)).unwrap();
    let out = (0..n)
        .map(|i| {
            let a =
                store.put_message(&msg("Rec", (i % 2) as i32, &body(i, 90), Some("tag"), Some("k"))).unwrap().append;
            (a.physical_offset, a.size)
        })
        .collect();
    store.shutdown().unwrap();
    out
}

/// Copies a store directory, also a live one: a file that goes away while
/// the copy runs (a checkpoint's temporary file renamed into place) is
/// left out, as a crash at that moment would find the directory.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            match std::fs::copy(entry.path(), &target) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let _ = std::fs::remove_file(&target);
                }
                Err(e) => panic!("copying {}: {e}", entry.path().display()),
            }
        }
    }
}

fn segment_path(dir: &Path, offset: u64, segment_size: u64) -> std::path::PathBuf {
    dir.join("commitlog").join(format!("{:020}", offset - offset % segment_size))
}

/// Checks that the first `intact` records are all there, readable through
/// their queues with valid CRCs, and that nothing else is.
fn assert_exactly(store: &MessageStore, records: &[(u64, u32)], intact: usize) {
    assert!(store.wait_dispatched(WAIT));
    let expected_end =
        if intact == records.len() { records[intact - 1].0 + records[intact - 1].1 as u64 } else { records[intact].0 };
    assert_eq!(store.max_offset(), expected_end, "recovered end");
    let per_queue = [intact.div_ceil(2) as i64, (intact / 2) as i64];
    for q in 0..2 {
        assert_eq!(store.max_offset_in_queue("Rec", q), per_queue[q as usize], "queue {q} length");
        let got = common::read_queue(store, "Rec", q, 0);
        for (n, rec) in got.iter().enumerate() {
            let r = decode_record(rec, true).expect("served record is intact");
            assert_eq!(r.body, &body(n as u64 * 2 + q as u64, 90)[..]);
        }
    }
}

#[test]
fn last_record_cut_at_every_byte() {
    let pristine = tempfile::tempdir().unwrap();
    let records = populate(pristine.path(), 40);
    let (last_off, last_size) = *records.last().unwrap();
    let seg_size = config(pristine.path()).mapped_file_size_commit_log;
    for cut in 0..=last_size as u64 {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let seg = segment_path(work.path(), last_off, seg_size);
        let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        file.set_len(last_off % seg_size + cut).unwrap();
        std::fs::write(work.path().join("abort"), b"").unwrap();
        let store = MessageStore::open(config(work.path())).unwrap_or_else(|e| panic!("cut {cut}: {e}"));
        let intact = if cut == last_size as u64 { 40 } else { 39 };
        assert_exactly(&store, &records, intact);
        // The store takes new writes where the intact log ends.
        let r = store.put_message(&msg("Rec", 0, b"after-recovery-body", None, None)).unwrap();
        assert_eq!(r.append.physical_offset, store.max_offset() - r.append.size as u64);
    }
}

#[test]
fn flipped_bytes_in_the_tail_never_panic_and_keep_earlier_records() {
    let pristine = tempfile::tempdir().unwrap();
    let records = populate(pristine.path(), 30);
    let seg_size = config(pristine.path()).mapped_file_size_commit_log;
    let tail_start = records[25].0;
    let tail_end = records[29].0 + records[29].1 as u64;
    for pos in (tail_start..tail_end).step_by(3) {
        let work = tempfile::tempdir().unwrap();
        copy_dir(pristine.path(), work.path());
        let seg = segment_path(work.path(), pos, seg_size);
        let mut bytes = std::fs::read(&seg).unwrap();
        bytes[(pos % seg_size) as usize] ^= 0x5A;
        std::fs::write(&seg, bytes).unwrap();
        std::fs::write(work.path().join("abort"), b"").unwrap();
        std::fs::remove_file(work.path().join("checkpoint")).unwrap();
        let store = MessageStore::open(config(work.path())).unwrap_or_else(|e| panic!("flip at {pos}: {e}"));
        let damaged = records.iter().position(|(o, s)| pos < o + *s as u64).unwrap();
        assert!(store.wait_dispatched(WAIT));
        // Every record before the damaged one survives.
        assert!(store.max_offset() >= records[damaged].0, "flip at {pos} lost earlier records");
        for (o, _) in &records[..damaged] {
            decode_record(&store.read_record(*o).unwrap(), true).unwrap();
        }
        // Whatever is served is intact as bytes; a flip the body CRC does not
        // cover (topic, properties) is kept only where recovery reports it.
        for q in 0..2 {
            for rec in common::read_queue(&store, "Rec", q, 0) {
                let r =
                    decode_intact(&rec, true).unwrap_or_else(|e| panic!("flip at {pos}: damaged record served: {e}"));
                if r.semantic_problem().is_some() {
                    let reported = store.recovery().kept_damaged.iter().any(|(o, _)| *o == r.physical_offset as u64);
                    assert!(reported, "flip at {pos}: kept record not reported");
                }
            }
        }
    }
}

#[test]
fn consume_queue_entries_past_the_recovered_end_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let records = populate(dir.path(), 20);
    let seg_size = config(dir.path()).mapped_file_size_commit_log;
    // Lose the last five records from the commit log, keep the queues.
    let seg = segment_path(dir.path(), records[15].0, seg_size);
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    file.set_len(records[15].0 % seg_size).unwrap();
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert!(store.recovery().after_crash);
    assert_exactly(&store, &records, 15);
    let r = store.put_message(&msg("Rec", 1, b"next-after-recovery", None, None)).unwrap();
    assert_eq!(r.append.queue_offset, 7, "queue offsets continue from the recovered queue");
}

#[test]
fn missing_consume_queues_and_checkpoint_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let records = populate(dir.path(), 25);
    std::fs::remove_dir_all(dir.path().join("consumequeue")).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert_exactly(&store, &records, 25);
    assert_eq!(store.query_by_key("Rec", "k", 0, i64::MAX, 100).unwrap().len(), 25, "index rebuilt");
}

/// Sets the last byte of the record at `offset` (the properties' final
/// separator, which the body CRC does not cover).
fn set_last_byte(dir: &Path, (offset, size): (u64, u32), value: u8) {
    let seg_size = config(dir).mapped_file_size_commit_log;
    let seg = segment_path(dir, offset, seg_size);
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[(offset % seg_size) as usize + size as usize - 1] = value;
    std::fs::write(&seg, bytes).unwrap();
}

/// An intact record that fails a semantic check (as an older build could
/// append one) is never a reason to cut what follows it: kept, reported,
/// and every later record of every queue survives, after a clean stop and
/// after a crash alike. Only at the tail, ending in the zeros of a torn
/// write, is it cut.
#[test]
fn an_intact_record_failing_a_semantic_check_is_kept_not_cut() {
    for crashed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let records = populate(dir.path(), 30);
        set_last_byte(dir.path(), records[10], b'X');
        set_last_byte(dir.path(), records[29], b'Y');
        if crashed {
            std::fs::write(dir.path().join("abort"), b"").unwrap();
        }
        // Validate from the start, as a lost checkpoint forces.
        std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
        let store = MessageStore::open(config(dir.path())).unwrap();
        assert_eq!(store.recovery().damage, None, "crashed={crashed}");
        let kept: Vec<u64> = store.recovery().kept_damaged.iter().map(|(o, _)| *o).collect();
        assert_eq!(kept, vec![records[10].0, records[29].0], "crashed={crashed}");
        assert!(store.wait_dispatched(WAIT));
        assert_eq!(store.max_offset(), records[29].0 + records[29].1 as u64, "nothing cut (crashed={crashed})");
        for q in 0..2 {
            assert_eq!(common::read_queue(&store, "Rec", q, 0).len(), 15, "queue {q} complete (crashed={crashed})");
        }
        store.shutdown().unwrap();
    }
    // The same record at the tail, its last byte zero as a torn write leaves
    // it, is cut.
    let dir = tempfile::tempdir().unwrap();
    let records = populate(dir.path(), 30);
    set_last_byte(dir.path(), records[29], 0);
    std::fs::write(dir.path().join("abort"), b"").unwrap();
    let store = MessageStore::open(config(dir.path())).unwrap();
    assert!(store.recovery().damage.is_some());
    assert_eq!(store.max_offset(), records[29].0);
}

/// The periodic checkpoint never claims more dispatched than the index's
/// last flush (`flushIntervalIndex`): a crash then dispatches again from
/// there, every key is found exactly once and no queue unit is doubled.
/// An explicit flush moves the checkpoint to the end.
#[test]
fn the_checkpoint_waits_for_the_index_flush() {
    let dir = tempfile::tempdir().unwrap();
    let with_interval = |d: &Path| {
        let mut c = config(d);
        c.flush_interval_index = Duration::from_secs(3600);
        c
    };
    let store = MessageStore::open(with_interval(dir.path())).unwrap();
    for i in 0..30u64 {
        store.put_message(&msg("Rec", (i % 2) as i32, &body(i, 90), None, Some(&format!("key-{i}")))).unwrap();
    }
    assert!(store.wait_dispatched(WAIT));
    // Several periodic checkpoints (every 50 ms in these tests).
    std::thread::sleep(Duration::from_millis(400));
    let crashed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), crashed.path());
    let end = store.max_offset();
    store.flush().unwrap();
    let flushed = tempfile::tempdir().unwrap();
    copy_dir(dir.path(), flushed.path());
    store.shutdown().unwrap();

    let a = MessageStore::open(with_interval(crashed.path())).unwrap();
    assert!(a.recovery().after_crash);
    assert_eq!(a.recovery().redispatched_from, 0, "the index was last flushed when the store opened, empty");
    assert!(a.wait_dispatched(WAIT));
    assert_eq!(a.max_offset(), end);
    for q in 0..2 {
        assert_eq!(a.max_offset_in_queue("Rec", q), 15, "queue {q}: dispatched again, not doubled");
    }
    for i in 0..30u64 {
        let found = a.query_by_key("Rec", &format!("key-{i}"), 0, i64::MAX, 10).unwrap();
        assert_eq!(found.len(), 1, "key-{i} found once");
        assert_eq!(decode_record(&found[0], true).unwrap().body, &body(i, 90)[..]);
    }

    let b = MessageStore::open(with_interval(flushed.path())).unwrap();
    assert_eq!(b.recovery().redispatched_from, end, "an explicit flush covers the index");
}
