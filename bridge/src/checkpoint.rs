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

use std::collections::BTreeMap;

/// Delivery state of one edge partition.
///
/// Every outstanding offset (sent and unacknowledged, or acknowledged above a gap) carries the
/// **epoch** it was sent in: a numbered snapshot of how far each cloud partition had been
/// acknowledged at that moment. A record sent in epoch `e` lands in the cloud after every
/// offset of that snapshot, so a reconciliation scan that starts at the snapshot of the
/// oldest outstanding epoch finds every record that may be in the cloud beyond the
/// checkpoint ([`Tracker::min_epoch`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tracker {
    /// Every offset below this is acknowledged by the cloud (or skipped: removed from the
    /// edge log before it was sent).
    next_unacked: u64,
    /// Sent, not yet acknowledged: offset → epoch.
    in_flight: BTreeMap<u64, u64>,
    /// Acknowledged, above a gap: offset → epoch.
    acked_above: BTreeMap<u64, u64>,
    /// Ranges `start → end` no longer in the edge log, above the checkpoint.
    skipped: BTreeMap<u64, u64>,
}

impl Tracker {
    /// A tracker resuming at `next_unacked` (the checkpoint read from the edge log's metadata).
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

    /// Whether `offset` still has to be sent (not in flight, not acknowledged, not skipped).
    pub fn needs_send(&self, offset: u64) -> bool {
        offset >= self.next_unacked
            && !self.in_flight.contains_key(&offset)
            && !self.acked_above.contains_key(&offset)
            && self
                .skipped
                .range(..=offset)
                .next_back()
                .is_none_or(|(_, &end)| offset >= end)
    }

    /// Records a send made in `epoch`.
    pub fn sent(&mut self, offset: u64, epoch: u64) {
        if offset >= self.next_unacked {
            self.in_flight.insert(offset, epoch);
        }
    }

    /// Records a successful delivery report; returns whether the checkpoint moved.
    pub fn acked(&mut self, offset: u64) -> bool {
        let epoch = self.in_flight.remove(&offset);
        if offset < self.next_unacked {
            return false;
        }
        self.acked_above.insert(offset, epoch.unwrap_or(0));
        self.advance()
    }

    /// Records a failed delivery: the offset must be sent again.
    pub fn failed(&mut self, offset: u64) {
        self.in_flight.remove(&offset);
    }

    /// Marks `start..end` as gone from the edge log (quota, retention, compaction) and returns
    /// how many of those offsets had never been sent — records the cloud will never see.
    pub fn skip(&mut self, start: u64, end: u64) -> u64 {
        let start = start.max(self.next_unacked);
        if end <= start {
            return 0;
        }
        let sent = self.in_flight.range(start..end).count() + self.acked_above.range(start..end).count();
        let unsent = end - start - sent as u64;
        self.skipped.insert(start, end);
        self.advance();
        unsent
    }

    /// After a restart: `present` are edge offsets of this partition (any order, any
    /// duplicates) found in the cloud by a scan that started at the snapshot of `epoch`;
    /// those at or above the checkpoint count as acknowledged.
    pub fn reconcile(&mut self, present: impl IntoIterator<Item = u64>, epoch: u64) {
        for o in present {
            if o >= self.next_unacked {
                self.in_flight.remove(&o);
                self.acked_above.insert(o, epoch);
            }
        }
        self.advance();
    }

    /// The oldest epoch of any outstanding offset; `None` when nothing is outstanding.
    pub fn min_epoch(&self) -> Option<u64> {
        self.in_flight
            .values()
            .chain(self.acked_above.values())
            .min()
            .copied()
    }

    fn advance(&mut self) -> bool {
        let before = self.next_unacked;
        loop {
            if self.acked_above.remove(&self.next_unacked).is_some() {
                self.next_unacked += 1;
                continue;
            }
            if let Some((&start, &end)) = self.skipped.range(..=self.next_unacked).next_back() {
                self.skipped.remove(&start);
                if end > self.next_unacked {
                    // Anything still recorded inside a skipped range is settled with it.
                    let n = self.next_unacked;
                    self.in_flight.retain(|&o, _| o < n || o >= end);
                    self.acked_above.retain(|&o, _| o < n || o >= end);
                    self.next_unacked = end;
                }
                continue;
            }
            break;
        }
        self.next_unacked != before
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
            t.sent(o, 0);
        }
        assert!(!t.acked(12));
        assert!(!t.acked(11));
        assert_eq!(t.checkpoint(), 10);
        assert!(t.acked(10));
        assert_eq!(t.checkpoint(), 13);
        t.failed(13);
        assert!(t.needs_send(13));
        assert!(!t.needs_send(14), "still in flight");
        t.sent(13, 0);
        assert!(!t.acked(14));
        assert!(t.acked(13));
        assert_eq!((t.checkpoint(), t.in_flight()), (15, 0));
        assert!(!t.acked(3), "a stale report changes nothing");
    }

    #[test]
    fn reconcile_skips_what_the_cloud_already_has() {
        let mut t = Tracker::resume(100);
        t.reconcile([100, 101, 103, 99, 101], 0);
        assert_eq!(t.checkpoint(), 102);
        assert!(t.needs_send(102));
        assert!(!t.needs_send(103), "already in the cloud");
        t.sent(102, 0);
        t.acked(102);
        assert_eq!(t.checkpoint(), 104);
    }

    #[test]
    fn skipped_ranges_count_only_what_was_never_sent() {
        let mut t = Tracker::resume(0);
        t.sent(0, 1);
        t.sent(5, 2); // a live record sent ahead
        assert_eq!(t.min_epoch(), Some(1));
        // Offsets 2..8 vanished from the edge log before the drain reached them.
        assert_eq!(t.skip(2, 8), 5, "5 was sent, 2,3,4,6,7 never were");
        assert!(!t.needs_send(3));
        assert!(t.needs_send(1));
        t.sent(1, 3);
        t.acked(0);
        assert_eq!(t.checkpoint(), 1);
        t.acked(1);
        assert_eq!(
            t.checkpoint(),
            8,
            "the skipped range and the one inside it are settled"
        );
        assert_eq!((t.in_flight(), t.min_epoch()), (0, None));
        assert_eq!(t.skip(3, 6), 0, "below the checkpoint: nothing");
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
            for o in 0..n { t.sent(o, 0); }
            let mut acked = std::collections::BTreeSet::new();
            let mut pending: Vec<u64> = (0..n).collect();
            for (step, idx) in order.iter().enumerate() {
                if pending.is_empty() { break; }
                let i = idx.index(pending.len());
                let o = pending[i];
                if fail_mask[(o as usize + step) % 60] && step % 3 == 0 {
                    t.failed(o);
                    t.sent(o, 0); // retried at once
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
