//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use spate_common::message::{encode_properties, property, NewMessage};
use spate_store::{FlushDiskType, StoreConfig};

/// Small segments so tests roll over often.
pub fn config(dir: &Path) -> StoreConfig {
    let mut c = StoreConfig::new(dir);
    c.mapped_file_size_commit_log = 256 * 1024;
    c.mapped_file_size_consume_queue = 20 * 1000;
    c.max_message_size = 64 * 1024;
    c.max_hash_slot_num = 1024;
    c.max_index_num = 4096;
    c.flush_interval_consume_queue = Duration::from_millis(50);
    c.flush_interval_commit_log = Duration::from_millis(20);
    c.warm_mapped_file_enable = true;
    c
}

pub fn sync_config(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    c.flush_disk_type = FlushDiskType::Sync;
    c
}

/// A message with `body`, an optional tag and keys.
pub fn msg(topic: &str, queue_id: i32, body: &[u8], tag: Option<&str>, keys: Option<&str>) -> NewMessage {
    let mut props = Vec::new();
    if let Some(t) = tag {
        props.push((property::TAGS, t));
    }
    if let Some(k) = keys {
        props.push((property::KEYS, k));
    }
    NewMessage {
        topic: topic.to_string(),
        queue_id,
        flag: 0,
        body: Bytes::copy_from_slice(body),
        properties: encode_properties(props).unwrap(),
        sys_flag: 0,
        born_timestamp: 1_700_000_000_000,
        born_host: "127.0.0.1:50000".parse().unwrap(),
        store_host: "127.0.0.1:10911".parse().unwrap(),
        reconsume_times: 0,
        prepared_tx_offset: 0,
    }
}

/// A body that says which message it is, padded to `len`.
pub fn body(n: u64, len: usize) -> Vec<u8> {
    let mut b = format!("message-{n:010}-").into_bytes();
    while b.len() < len {
        b.push(b'a' + (b.len() % 26) as u8);
    }
    b.truncate(len.max(20));
    b
}

/// Every record of a queue from `from` on, read in capped batches the way a
/// consumer pulls.
pub fn read_queue(store: &spate_store::MessageStore, topic: &str, queue_id: i32, from: i64) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut offset = from;
    while offset < store.max_offset_in_queue(topic, queue_id) {
        let got = store.get_messages(topic, queue_id, offset, 32, usize::MAX, None).unwrap();
        if got.next_begin_offset <= offset {
            break;
        }
        out.extend(got.messages);
        offset = got.next_begin_offset;
    }
    out
}
