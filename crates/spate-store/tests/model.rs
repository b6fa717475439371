//! Random sequences of appends, flushes, truncations, clean restarts and
//! simulated crashes, checked against a plain in-memory model of what the
//! store must hold.

mod common;

use common::{body, config, msg};
use proptest::prelude::*;
use spate_common::message::decode_record;
use spate_store::{FlushDiskType, MessageStore};

#[derive(Debug, Clone)]
enum Op {
    Append { queue: i32, len: usize },
    Batch { queue: i32, count: usize, len: usize },
    Flush,
    Truncate { keep_fraction: u8 },
    Restart,
    Crash { lose_unflushed: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3i32, 20..3000usize).prop_map(|(queue, len)| Op::Append { queue, len }),
        2 => (0..3i32, 1..20usize, 20..500usize).prop_map(|(queue, count, len)| Op::Batch { queue, count, len }),
        2 => Just(Op::Flush),
        1 => any::<u8>().prop_map(|keep_fraction| Op::Truncate { keep_fraction }),
        1 => Just(Op::Restart),
        2 => any::<bool>().prop_map(|lose_unflushed| Op::Crash { lose_unflushed }),
    ]
}

/// What the model knows of one stored message.
#[derive(Debug, Clone)]
struct Stored {
    queue: i32,
    seq: u64,
    len: usize,
    offset: u64,
    end: u64,
}

fn check(store: &MessageStore, model: &[Stored]) -> Result<(), TestCaseError> {
    prop_assert!(store.wait_dispatched(std::time::Duration::from_secs(5)));
    let end = model.last().map(|m| m.end).unwrap_or(0);
    let max = store.max_offset();
    let seg = store.config().mapped_file_size_commit_log;
    // The log ends where the last message ends, or at the end of its
    // segment when only a blank marker follows.
    prop_assert!(
        max == end || (max > end && max.is_multiple_of(seg) && max - end < seg),
        "log end {} vs model {}",
        max,
        end
    );
    for q in 0..3 {
        let expected: Vec<&Stored> = model.iter().filter(|m| m.queue == q).collect();
        prop_assert_eq!(store.max_offset_in_queue("M", q), expected.len() as i64, "queue {} length", q);
        let got = common::read_queue(store, "M", q, 0);
        prop_assert_eq!(got.len(), expected.len());
        for (rec, want) in got.iter().zip(&expected) {
            let r = decode_record(rec, true).unwrap();
            prop_assert_eq!(r.body, &body(want.seq, want.len)[..]);
            prop_assert_eq!(r.physical_offset as u64, want.offset);
        }
    }
    Ok(())
}

fn run(ops: Vec<Op>, flush: FlushDiskType, pool: bool) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.flush_disk_type = flush;
    cfg.transient_store_pool_enable = pool;
    cfg.transient_store_pool_size = 3;
    // Keep the background flusher out of the way: the model decides when
    // async data is flushed (explicit Flush ops and clean restarts).
    cfg.flush_interval_commit_log = std::time::Duration::from_secs(3600);
    cfg.flush_commit_log_thorough_interval = std::time::Duration::from_secs(3600);
    let mut store = Some(MessageStore::open(cfg.clone()).unwrap());
    let mut model: Vec<Stored> = Vec::new();
    let mut seq = 0u64;
    for op in ops {
        let s = store.as_ref().unwrap();
        match op {
            Op::Append { queue, len } => {
                let r = s.put_message(&msg("M", queue, &body(seq, len), None, None)).unwrap();
                r.flush.wait_blocking().unwrap();
                let a = r.append;
                model.push(Stored { queue, seq, len: len.max(20), offset: a.physical_offset, end: a.end_offset() });
                seq += 1;
            }
            Op::Batch { queue, count, len } => {
                let msgs: Vec<_> =
                    (0..count).map(|i| msg("M", queue, &body(seq + i as u64, len), None, None)).collect();
                let r = s.put_messages(&msgs).unwrap();
                r.flush.wait_blocking().unwrap();
                for a in r.appends {
                    model.push(Stored { queue, seq, len: len.max(20), offset: a.physical_offset, end: a.end_offset() });
                    seq += 1;
                }
            }
            Op::Flush => s.flush().unwrap(),
            Op::Truncate { keep_fraction } => {
                let keep = model.len() * keep_fraction as usize / 256;
                let cut = model.get(keep).map(|m| m.offset).unwrap_or_else(|| s.max_offset());
                s.truncate(cut).unwrap();
                model.truncate(keep);
            }
            Op::Restart => {
                drop(store.take());
                store = Some(MessageStore::open(cfg.clone()).unwrap());
                prop_assert!(!store.as_ref().unwrap().recovery().after_crash);
            }
            Op::Crash { lose_unflushed } => {
                let kept_end = store.take().unwrap().crash(lose_unflushed);
                if flush == FlushDiskType::Sync {
                    let acked_end = model.last().map(|m| m.end).unwrap_or(0);
                    prop_assert!(kept_end >= acked_end, "sync flush lost acknowledged data");
                }
                model.retain(|m| m.end <= kept_end);
                let reopened = MessageStore::open(cfg.clone()).unwrap();
                prop_assert!(reopened.recovery().after_crash);
                store = Some(reopened);
            }
        }
        check(store.as_ref().unwrap(), &model)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn async_store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FlushDiskType::Async, false)?;
    }

    #[test]
    fn sync_store_matches_model(ops in proptest::collection::vec(op(), 1..30)) {
        run(ops, FlushDiskType::Sync, false)?;
    }

    #[test]
    fn read_write_separated_store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(ops, FlushDiskType::Async, true)?;
    }
}
