//! How a consumer group splits a topic's queues (upstream's
//! `AllocateMessageQueueAveragely`). Pure.

use spate_remoting::protocol::MessageQueue;

/// The queues `consumer_id` takes when `all_consumers` share `all_queues`:
/// contiguous ranges of near-equal size, the first `queues % consumers`
/// consumers taking one extra; with more consumers than queues, the surplus
/// consumers get none. Both lists are sorted here, so every member of the
/// group computes the same split from the same inputs. A consumer missing
/// from `all_consumers` gets nothing.
pub fn allocate_averagely(
    consumer_id: &str,
    all_queues: &[MessageQueue],
    all_consumers: &[String],
) -> Vec<MessageQueue> {
    let mut queues = all_queues.to_vec();
    queues.sort();
    queues.dedup();
    let mut consumers = all_consumers.to_vec();
    consumers.sort();
    consumers.dedup();
    let Some(index) = consumers.iter().position(|c| c == consumer_id) else {
        return Vec::new();
    };
    let (q, c) = (queues.len(), consumers.len());
    if q == 0 {
        return Vec::new();
    }
    let rem = q % c;
    let size = if q <= c {
        1
    } else if rem > 0 && index < rem {
        q / c + 1
    } else {
        q / c
    };
    let start = if rem > 0 && index < rem { index * size } else { index * size + rem };
    if start >= q {
        return Vec::new();
    }
    let range = size.min(q - start);
    let out: Vec<MessageQueue> = queues[start..start + range].to_vec();
    debug_assert!(out.len() <= q.div_ceil(c));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn queues(n: i32) -> Vec<MessageQueue> {
        (0..n).map(|i| MessageQueue::new("T", if i % 2 == 0 { "a" } else { "b" }, i / 2)).collect()
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}@x")).collect()
    }

    #[test]
    fn every_queue_goes_to_exactly_one_consumer() {
        for q in 0..20 {
            for c in 1..12 {
                let all = queues(q);
                let cids = ids(c);
                let mut seen = BTreeSet::new();
                let mut sizes = Vec::new();
                for cid in &cids {
                    let mine = allocate_averagely(cid, &all, &cids);
                    sizes.push(mine.len());
                    for m in mine {
                        assert!(seen.insert(m), "queue assigned twice with {q} queues, {c} consumers");
                    }
                }
                assert_eq!(seen.len(), q as usize, "{q} queues, {c} consumers: some queue unassigned");
                let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(max - min <= 1, "uneven split {sizes:?}");
            }
        }
    }

    #[test]
    fn matches_upstream_ranges() {
        let all = queues(8);
        let mut sorted = all.clone();
        sorted.sort();
        let cids = ids(3);
        // 8 queues over 3 consumers: 3, 3, 2 contiguous.
        assert_eq!(allocate_averagely(&cids[0], &all, &cids), sorted[0..3].to_vec());
        assert_eq!(allocate_averagely(&cids[1], &all, &cids), sorted[3..6].to_vec());
        assert_eq!(allocate_averagely(&cids[2], &all, &cids), sorted[6..8].to_vec());
    }

    #[test]
    fn more_consumers_than_queues_leaves_some_idle() {
        let all = queues(2);
        let cids = ids(5);
        let counts: Vec<usize> = cids.iter().map(|c| allocate_averagely(c, &all, &cids).len()).collect();
        assert_eq!(counts, vec![1, 1, 0, 0, 0]);
    }

    #[test]
    fn input_order_does_not_matter_and_strangers_get_nothing() {
        let all = queues(6);
        let mut rev = all.clone();
        rev.reverse();
        let cids = ids(2);
        let rcids: Vec<String> = cids.iter().rev().cloned().collect();
        assert_eq!(allocate_averagely(&cids[1], &all, &cids), allocate_averagely(&cids[1], &rev, &rcids));
        assert!(allocate_averagely("nobody", &all, &cids).is_empty());
    }
}
