//! Crash test with real processes: a child appends under sync flush from
//! several threads and reports every acknowledged (durable) record on
//! stdout; the parent SIGKILLs it at a random moment, over and over, on the
//! same store. After every kill the store is recovered and every reported
//! record must be present and intact, and nothing torn may remain.
//!
//! `SPATE_CRASH_ITERATIONS` sets the number of kills (default 50; raise it
//! for a soak run).

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{body, msg, sync_config};
use rand::Rng;
use spate_common::message::decode_record;
use spate_store::MessageStore;

const QUEUES: i32 = 4;
const BODY_LEN: usize = 700;

fn child(dir: &Path) {
    let store = std::sync::Arc::new(MessageStore::open(sync_config(dir)).expect("child opens the store"));
    let stdout = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    println!("ready after_crash={}", store.recovery().after_crash);
    let threads: Vec<_> = (0..QUEUES)
        .map(|q| {
            let (store, stdout) = (store.clone(), stdout.clone());
            std::thread::spawn(move || {
                let mut n = store.max_offset_in_queue("Crash", q) as u64;
                loop {
                    let seq = n * QUEUES as u64 + q as u64;
                    let r = store.put_message(&msg("Crash", q, &body(seq, BODY_LEN), None, None)).expect("append");
                    r.flush.wait_blocking().expect("durable");
                    let a = r.append;
                    let mut out = stdout.lock().expect("stdout");
                    writeln!(out, "ack {} {} {} {}", a.physical_offset, q, a.queue_offset, seq).expect("report");
                    out.flush().expect("report");
                    n += 1;
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
}

/// (physical offset, queue, queue offset, seq) of an acknowledged record.
type Ack = (u64, i32, i64, u64);

fn parse_ack(line: &str) -> Option<Ack> {
    let mut it = line.strip_prefix("ack ")?.split(' ');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn run_child_until_killed(exe: &Path, dir: &Path, rng: &mut impl Rng) -> (Vec<Ack>, bool) {
    let mut child = Command::new(exe)
        .arg("child")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(30)).expect("child reports ready");
    let recovered_after_crash = ready == "ready after_crash=true";
    std::thread::sleep(Duration::from_millis(rng.gen_range(5..120)));
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    reader.join().expect("reader");
    let acks = rx.try_iter().filter_map(|l| parse_ack(&l)).collect();
    (acks, recovered_after_crash)
}

fn verify(dir: &Path, acked: &HashMap<u64, Ack>) -> usize {
    let store = MessageStore::open(sync_config(dir)).expect("recovery");
    assert!(store.wait_dispatched(Duration::from_secs(10)));
    for (offset, (_, q, qoff, seq)) in acked {
        let bytes = store.read_record(*offset).unwrap_or_else(|e| panic!("acked record at {offset} lost: {e}"));
        let r = decode_record(&bytes, true).unwrap_or_else(|e| panic!("acked record at {offset} damaged: {e}"));
        assert_eq!((r.queue_id, r.queue_offset), (*q, *qoff), "record at {offset} moved");
        assert_eq!(r.body, &body(*seq, BODY_LEN)[..], "record at {offset} altered");
    }
    // Nothing torn: every queue is dense and every record in it intact, and
    // the log ends exactly where its last record does.
    let mut last_end = 0;
    for q in 0..QUEUES {
        let max = store.max_offset_in_queue("Crash", q);
        let mut offset = 0;
        while offset < max {
            let got = store.get_messages("Crash", q, offset, 256, usize::MAX, None).expect("read");
            assert!(!got.messages.is_empty(), "queue {q} has a hole at {offset}");
            for rec in &got.messages {
                let r = decode_record(rec, true).expect("served record intact");
                assert_eq!(r.queue_offset, offset, "queue {q} out of order");
                assert_eq!(r.body, &body(offset as u64 * QUEUES as u64 + q as u64, BODY_LEN)[..]);
                last_end = last_end.max(r.physical_offset as u64 + r.total_size as u64);
                offset += 1;
            }
        }
    }
    let end = store.max_offset();
    let seg = store.config().mapped_file_size_commit_log;
    assert!(
        end == last_end || (end.is_multiple_of(seg) && end - last_end < seg),
        "log end {end}, last record ends {last_end}"
    );
    acked.len()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("child") {
        child(Path::new(&args[2]));
        return;
    }
    if args.iter().any(|a| a == "--list") {
        println!("crash_kill: test");
        return;
    }
    let iterations: usize = std::env::var("SPATE_CRASH_ITERATIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let exe = std::env::current_exe().expect("own path");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut rng = rand::thread_rng();
    let mut acked: HashMap<u64, Ack> = HashMap::new();
    let started = Instant::now();
    let mut recoveries_after_crash = 0;
    for i in 0..iterations {
        let (acks, after_crash) = run_child_until_killed(&exe, dir.path(), &mut rng);
        recoveries_after_crash += after_crash as usize;
        for a in acks {
            acked.insert(a.0, a);
        }
        if i % 10 == 9 || i + 1 == iterations {
            verify(dir.path(), &acked);
        }
    }
    assert!(recoveries_after_crash >= iterations - iterations / 10 - 1, "children saw the crashes");
    assert!(acked.len() > iterations, "the children made progress ({} records)", acked.len());
    println!(
        "crash_kill: {iterations} kills, {} acknowledged records all recovered intact in {:.1?}",
        acked.len(),
        started.elapsed()
    );
}
