//! Where a slave's log stops agreeing with its master's: the offset the
//! slave truncates to before the master streams to it. Pure; no I/O.
//!
//! Each log carries an epoch list, (epoch, first offset written in it).
//! Only one master ever writes in a given epoch, so two logs that both
//! hold epoch `e` starting at the same offset hold the same bytes there,
//! up to the shorter of the two. Walking the slave's epochs newest first,
//! the first one the master also has (same epoch, same start) is where
//! they agree, up to the smaller of that epoch's two ends; everything
//! after it on the slave is a tail the group never agreed on.

use spate_store::EpochEntry;

/// Bytes written before any epoch was recorded (a store older than
/// replication) count as epoch 0 from offset 0.
fn with_epoch_zero(epochs: &[EpochEntry]) -> Vec<EpochEntry> {
    let mut v = Vec::with_capacity(epochs.len() + 1);
    if epochs.first().is_none_or(|e| e.start_offset > 0) {
        v.push(EpochEntry { epoch: 0, start_offset: 0 });
    }
    v.extend_from_slice(epochs);
    v
}

/// The end of entry `i` of `epochs` in a log ending at `end`.
fn epoch_end(epochs: &[EpochEntry], i: usize, end: u64) -> u64 {
    epochs.get(i + 1).map_or(end, |next| next.start_offset)
}

/// The offset up to which the slave's log equals the master's: the slave
/// keeps `[.., result)` and the master streams from `result` on.
pub fn agreed_end(master: &[EpochEntry], master_end: u64, slave: &[EpochEntry], slave_end: u64) -> u64 {
    let (m, s) = (with_epoch_zero(master), with_epoch_zero(slave));
    for (i, se) in s.iter().enumerate().rev() {
        if se.start_offset > slave_end {
            continue; // an epoch begun at the end and never written: nothing to keep
        }
        if let Some(j) = m.iter().position(|me| me.epoch == se.epoch && me.start_offset == se.start_offset) {
            if se.start_offset > master_end {
                continue;
            }
            return epoch_end(&s, i, slave_end).min(epoch_end(&m, j, master_end));
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e(epoch: u32, start_offset: u64) -> EpochEntry {
        EpochEntry { epoch, start_offset }
    }

    #[test]
    fn a_slave_behind_in_the_same_epoch_keeps_everything() {
        assert_eq!(agreed_end(&[e(1, 0)], 500, &[e(1, 0)], 300), 300);
        assert_eq!(agreed_end(&[e(1, 0), e(2, 400)], 500, &[e(1, 0)], 300), 300);
    }

    #[test]
    fn an_old_masters_tail_from_the_older_epoch_is_cut() {
        // The old master wrote epoch 1 up to 700; the new one began epoch 2 at 400.
        assert_eq!(agreed_end(&[e(1, 0), e(2, 400)], 900, &[e(1, 0)], 700), 400);
        // The old master had even begun an epoch of its own the group never saw.
        assert_eq!(agreed_end(&[e(1, 0), e(3, 400)], 900, &[e(1, 0), e(2, 600)], 700), 400);
    }

    #[test]
    fn empty_and_epochless_logs() {
        assert_eq!(agreed_end(&[e(1, 0)], 900, &[], 0), 0);
        // Bytes from before epochs were recorded count as epoch 0.
        assert_eq!(agreed_end(&[e(1, 200)], 900, &[], 150), 150);
        assert_eq!(agreed_end(&[e(1, 200)], 900, &[], 300), 200);
        // Nothing in common: start over.
        assert_eq!(agreed_end(&[e(2, 0)], 900, &[e(1, 0)], 300), 0);
    }

    /// One history: the epoch that wrote each unit of the log, in order.
    fn labels(parts: &[(u32, u64)]) -> Vec<u32> {
        parts.iter().flat_map(|&(ep, len)| std::iter::repeat_n(ep, len as usize)).collect()
    }

    fn epochs_of(parts: &[(u32, u64)]) -> Vec<EpochEntry> {
        let mut at = 0;
        let mut out: Vec<EpochEntry> = Vec::new();
        for &(ep, len) in parts {
            if out.last().is_none_or(|l| l.epoch != ep) {
                out.push(e(ep, at));
            }
            at += len;
        }
        out
    }

    proptest! {
        /// Random shared history, then each side goes on alone: extending the
        /// last shared epoch (the same writer, so one is a prefix of the
        /// other) and then epochs of its own (distinct numbers, as only one
        /// master writes in an epoch). The answer is the true common prefix.
        #[test]
        fn agreed_end_is_the_common_prefix(
            shared in proptest::collection::vec(1u64..50, 0..5),
            master_extra in 0u64..50,
            slave_extra in 0u64..50,
            master_new in proptest::collection::vec(1u64..50, 0..3),
            slave_new in proptest::collection::vec(1u64..50, 0..3),
        ) {
            let shared: Vec<(u32, u64)> = shared.iter().enumerate().map(|(i, l)| (i as u32 * 10 + 1, *l)).collect();
            let top = shared.len() as u32 * 10 + 1;
            let mut m = shared.clone();
            let mut s = shared.clone();
            if let Some(&(ep, _)) = shared.last() {
                m.push((ep, master_extra));
                s.push((ep, slave_extra));
            }
            // Master's own epochs are even-numbered above `top`, the slave's odd.
            m.extend(master_new.iter().enumerate().map(|(i, l)| (top + 2 * i as u32 + 2, *l)));
            s.extend(slave_new.iter().enumerate().map(|(i, l)| (top + 2 * i as u32 + 3, *l)));
            let (lm, ls) = (labels(&m), labels(&s));
            let truth = lm.iter().zip(&ls).take_while(|(a, b)| a == b).count() as u64;
            let got = agreed_end(&epochs_of(&m), lm.len() as u64, &epochs_of(&s), ls.len() as u64);
            prop_assert_eq!(got, truth, "master {:?} slave {:?}", m, s);
        }
    }
}
