//! A full disk, for real: the store runs on a 2 MiB tmpfs until it fills.
//! Needs root (to mount); CI runs as root.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{body, config, msg};
use spate_common::message::decode_record;
use spate_store::{MessageStore, StoreError};

struct Mount<'a>(&'a Path);

impl Drop for Mount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn full_disk_fails_appends_clearly_and_keeps_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"]).arg(dir.path()).status();
    assert!(
        status.map(|s| s.success()).unwrap_or(false),
        "this test mounts a 2 MiB tmpfs and must run as root (CI does)"
    );
    let _mount = Mount(dir.path());
    let store = MessageStore::open(config(dir.path())).unwrap();
    let mut acked = Vec::new();
    let failure = loop {
        match store.put_message(&msg("Full", 0, &body(acked.len() as u64, 1000), None, None)) {
            Ok(r) => acked.push(r.append),
            Err(e) => break e,
        }
        assert!(acked.len() < 10_000, "a 2 MiB disk cannot hold 10 MB");
    };
    assert!(acked.len() > 100, "the disk held some messages first");
    let reason = failure.to_string();
    assert!(
        matches!(failure, StoreError::Io { .. } | StoreError::NotWritable(_)) && reason.contains("No space left"),
        "unexpected failure: {reason}"
    );
    // From now on every append is refused with the reason, at once.
    match store.put_message(&msg("Full", 0, b"one-more-message-x", None, None)) {
        Err(StoreError::NotWritable(why)) => assert!(why.contains("No space left"), "{why}"),
        other => panic!("expected NotWritable, got {other:?}"),
    }
    assert!(store.stats().not_writable_reason.is_some());
    // Nothing stored was damaged: every acknowledged message reads back.
    assert!(store.wait_dispatched(Duration::from_secs(5)));
    for (i, a) in acked.iter().enumerate() {
        let r = store.read_record(a.physical_offset).unwrap();
        assert_eq!(decode_record(&r, true).unwrap().body, &body(i as u64, 1000)[..]);
    }
    let got = common::read_queue(&store, "Full", 0, 0);
    assert_eq!(got.len(), acked.len(), "all acknowledged messages are consumable");
    drop(store);
}
