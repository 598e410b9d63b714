//! Checkpoints: the highest edge offset below which the cloud has acknowledged everything.
//!
//! The bridge may have many records of a partition in flight, and delivery reports can come
//! back in any order (different cloud partitions, retries). [`Tracker`] records sends and
//! reports and advances the checkpoint only over a **contiguous** run of acknowledged offsets,
//! so a crash can only make the bridge re-send, never skip.
//!
//! After a crash the bridge does not trust its memory: it re-reads from `checkpoint + 1`, but
//! first asks the cloud which of those offsets it already holds (from the identity headers of
//! the records at the tail of the cloud partitions) and marks them acknowledged
//! ([`Tracker::reconcile`]). So nothing that reached the cloud is sent twice.

use std::collections::BTreeSet;

/// Delivery state of one edge partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Every offset below this is acknowledged by the cloud.
    next_unacked: u64,
    /// Sent, not yet acknowledged.
    in_flight: BTreeSet<u64>,
    /// Acknowledged, above a gap.
    acked_above: BTreeSet<u64>,
    /// Failed sends waiting to be retried, in order.
    retry: BTreeSet<u64>,
}

impl Tracker {
    /// A tracker resuming after `checkpoint` (the next offset to forward), e.g. read from the
    /// edge log's metadata.
    pub fn resume(next_unacked: u64) -> Self {
        Tracker {
            next_unacked,
            ..Tracker::default()
        }
    }

    /// Every offset below this is in the cloud: the checkpoint to persist.
    pub fn checkpoint(&self) -> u64 {
        self.next_unacked
    }

    /// Offsets sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `offset` still has to be sent (not in flight, not acknowledged).
    pub fn needs_send(&self, offset: u64) -> bool {
        offset >= self.next_unacked
            && !self.in_flight.contains(&offset)
            && !self.acked_above.contains(&offset)
    }

    /// Records a send.
    pub fn sent(&mut self, offset: u64) {
        if offset >= self.next_unacked {
            self.retry.remove(&offset);
            self.in_flight.insert(offset);
        }
    }

    /// Records a successful delivery report; returns whether the checkpoint moved.
    pub fn acked(&mut self, offset: u64) -> bool {
        self.in_flight.remove(&offset);
        self.retry.remove(&offset);
        if offset < self.next_unacked {
            return false;
        }
        self.acked_above.insert(offset);
        let before = self.next_unacked;
        while self.acked_above.remove(&self.next_unacked) {
            self.next_unacked += 1;
        }
        self.next_unacked != before
    }

    /// Records a failed delivery: the offset must be sent again.
    pub fn failed(&mut self, offset: u64) {
        if self.in_flight.remove(&offset) && offset >= self.next_unacked {
            self.retry.insert(offset);
        }
    }

    /// The oldest offset waiting for a retry.
    pub fn next_retry(&self) -> Option<u64> {
        self.retry.first().copied()
    }

    /// After a restart: `present` are edge offsets of this partition (any order, any
    /// duplicates) found in the cloud; those at or above the checkpoint count as acknowledged.
    pub fn reconcile(&mut self, present: impl IntoIterator<Item = u64>) {
        for o in present {
            if o >= self.next_unacked {
                self.in_flight.remove(&o);
                self.acked(o);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_checkpoint_moves_only_over_a_contiguous_prefix() {
        let mut t = Tracker::resume(10);
        for o in 10..15 {
            t.sent(o);
        }
        assert!(!t.acked(12));
        assert!(!t.acked(11));
        assert_eq!(t.checkpoint(), 10);
        assert!(t.acked(10));
        assert_eq!(t.checkpoint(), 13);
        t.failed(13);
        assert_eq!(t.next_retry(), Some(13));
        assert!(t.needs_send(13));
        assert!(!t.needs_send(14), "still in flight");
        t.sent(13);
        assert!(!t.acked(14));
        assert!(t.acked(13));
        assert_eq!((t.checkpoint(), t.in_flight()), (15, 0));
        assert!(!t.acked(3), "a stale report changes nothing");
    }

    #[test]
    fn reconcile_skips_what_the_cloud_already_has() {
        let mut t = Tracker::resume(100);
        t.reconcile([100, 101, 103, 99, 101]);
        assert_eq!(t.checkpoint(), 102);
        assert!(t.needs_send(102));
        assert!(!t.needs_send(103), "already in the cloud");
        t.sent(102);
        t.acked(102);
        assert_eq!(t.checkpoint(), 104);
    }

    proptest! {
        /// Whatever the order of reports and failures, the checkpoint never passes an offset
        /// that was not acknowledged, and ends at the end once everything is.
        #[test]
        fn checkpoint_is_safe_under_any_report_order(
            n in 1u64..60,
            order in proptest::collection::vec(any::<prop::sample::Index>(), 1..200),
            fail_mask in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut t = Tracker::resume(0);
            for o in 0..n { t.sent(o); }
            let mut acked = std::collections::BTreeSet::new();
            let mut pending: Vec<u64> = (0..n).collect();
            for (step, idx) in order.iter().enumerate() {
                if pending.is_empty() { break; }
                let i = idx.index(pending.len());
                let o = pending[i];
                if fail_mask[(o as usize + step) % 60] && step % 3 == 0 {
                    t.failed(o);
                    t.sent(o); // retried at once
                } else {
                    pending.remove(i);
                    t.acked(o);
                    acked.insert(o);
                }
                let cp = t.checkpoint();
                prop_assert!((0..cp).all(|x| acked.contains(&x)), "checkpoint {cp} passed an unacked offset");
            }
            for o in pending { t.acked(o); }
            prop_assert_eq!(t.checkpoint(), n);
            prop_assert_eq!(t.in_flight(), 0);
        }
    }
}
