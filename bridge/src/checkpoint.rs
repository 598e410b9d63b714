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

/// Disjoint runs of offsets, each run with the epoch its offsets were recorded in:
/// `start → (end, epoch)`, `end` exclusive.
///
/// Sends and delivery reports come mostly in offset order, so a handful of runs stands for
/// thousands of outstanding offsets and every operation works on a map of a few entries (a
/// map entry per offset cost the bridge thread ~18 % of its time in the drain benchmark).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Runs {
    map: BTreeMap<u64, (u64, u64)>,
    len: u64,
}

impl Runs {
    /// The run holding `o`: `(start, end, epoch)`.
    fn run_at(&self, o: u64) -> Option<(u64, u64, u64)> {
        let (&start, &(end, epoch)) = self.map.range(..=o).next_back()?;
        (o < end).then_some((start, end, epoch))
    }

    fn contains(&self, o: u64) -> bool {
        self.run_at(o).is_some()
    }

    /// Records `o` with `epoch` (replacing its epoch if already recorded), joining the
    /// neighbouring runs of the same epoch.
    fn insert(&mut self, o: u64, epoch: u64) {
        self.remove(o);
        self.len += 1;
        let before = self
            .map
            .range(..o)
            .next_back()
            .filter(|&(_, &(end, e))| end == o && e == epoch)
            .map(|(&start, _)| start);
        let after = o.checked_add(1).and_then(|n| {
            self.map
                .get(&n)
                .filter(|&&(_, e)| e == epoch)
                .map(|&(end, _)| (n, end))
        });
        let end = match after {
            Some((n, end)) => {
                self.map.remove(&n);
                end
            }
            None => o + 1,
        };
        self.map.insert(before.unwrap_or(o), (end, epoch));
    }

    /// Forgets `o`; its epoch if it was recorded.
    fn remove(&mut self, o: u64) -> Option<u64> {
        let (start, end, epoch) = self.run_at(o)?;
        self.len -= 1;
        if start == o {
            self.map.remove(&start);
        } else if let Some(run) = self.map.get_mut(&start) {
            run.0 = o;
        }
        if o + 1 < end {
            self.map.insert(o + 1, (end, epoch));
        }
        Some(epoch)
    }

    /// The runs overlapping `a..b`, last first.
    fn overlapping(&self, a: u64, b: u64) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        self.map
            .range(..b)
            .rev()
            .take_while(move |&(_, &(end, _))| end > a)
            .map(|(&s, &(e, ep))| (s, e, ep))
    }

    /// How many recorded offsets lie in `a..b`.
    fn count_range(&self, a: u64, b: u64) -> u64 {
        self.overlapping(a, b).map(|(s, e, _)| e.min(b) - s.max(a)).sum()
    }

    /// Forgets every offset in `a..b`.
    fn remove_range(&mut self, a: u64, b: u64) {
        let runs: Vec<_> = self.overlapping(a, b).collect();
        for (s, e, epoch) in runs {
            self.map.remove(&s);
            self.len -= e.min(b) - s.max(a);
            if s < a {
                self.map.insert(s, (a, epoch));
            }
            if e > b {
                self.map.insert(b, (e, epoch));
            }
        }
    }

    /// The lowest recorded offset `>= o`.
    fn first_at_or_after(&self, o: u64) -> Option<u64> {
        if self.contains(o) {
            return Some(o);
        }
        self.map.range(o..).next().map(|(&s, _)| s)
    }

    /// The first run: `(start, end)`.
    fn first(&self) -> Option<(u64, u64)> {
        self.map.first_key_value().map(|(&s, &(e, _))| (s, e))
    }

    fn min_epoch(&self) -> Option<u64> {
        self.map.values().map(|&(_, epoch)| epoch).min()
    }
}

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
    /// Sent, not yet acknowledged.
    in_flight: Runs,
    /// Acknowledged, above a gap.
    acked_above: Runs,
    /// Disjoint ranges `start → end` no longer in the edge log, above the checkpoint.
    skipped: BTreeMap<u64, u64>,
    /// Offsets the checkpoint passed that the cloud never acknowledged: gone from the edge
    /// log before they were sent, or while in flight and then not delivered.
    dropped: u64,
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
        self.in_flight.len as usize
    }

    /// Whether `offset` still has to be sent (not in flight, not acknowledged, not skipped).
    pub fn needs_send(&self, offset: u64) -> bool {
        offset >= self.next_unacked
            && !self.in_flight.contains(offset)
            && !self.acked_above.contains(offset)
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
        let epoch = self.in_flight.remove(offset);
        if offset < self.next_unacked {
            return false;
        }
        if offset == self.next_unacked {
            // The common case: reports in send order extend the prefix directly.
            self.acked_above.remove(offset);
            self.next_unacked += 1;
            self.advance();
            return true;
        }
        self.acked_above.insert(offset, epoch.unwrap_or(0));
        self.advance()
    }

    /// Records a failed delivery: the offset must be sent again (or, if it is gone from the
    /// edge log meanwhile, it is dropped).
    pub fn failed(&mut self, offset: u64) {
        self.in_flight.remove(offset);
        self.advance();
    }

    /// Everything in flight must be sent again (its delivery reports will never come);
    /// returns how many offsets that is. Those gone from the edge log are dropped.
    pub fn forget_in_flight(&mut self) -> u64 {
        let n = std::mem::take(&mut self.in_flight).len;
        self.advance();
        n
    }

    /// Marks `start..end` as gone from the edge log (quota, retention, compaction). What the
    /// cloud never acknowledged there counts as [`Tracker::dropped`] once the checkpoint
    /// passes it (an offset in flight is waited for: it may yet be delivered).
    pub fn skip(&mut self, start: u64, end: u64) {
        let (mut start, mut end) = (start.max(self.next_unacked), end);
        if end <= start {
            return;
        }
        // Keep the ranges disjoint: merge those overlapping or touching this one.
        let touching: Vec<(u64, u64)> = self
            .skipped
            .range(..=end)
            .filter(|&(_, &e)| e >= start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.skipped.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.skipped.insert(start, end);
        self.advance();
    }

    /// Offsets passed by the checkpoint without an acknowledgement, since this tracker began.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// After a restart: `present` are edge offsets of this partition (any order, any
    /// duplicates) found in the cloud by a scan that started at the snapshot of `epoch`;
    /// those at or above the checkpoint count as acknowledged.
    pub fn reconcile(&mut self, present: impl IntoIterator<Item = u64>, epoch: u64) {
        for o in present {
            if o >= self.next_unacked {
                self.in_flight.remove(o);
                self.acked_above.insert(o, epoch);
            }
        }
        self.advance();
    }

    /// The oldest epoch of any outstanding offset; `None` when nothing is outstanding.
    pub fn min_epoch(&self) -> Option<u64> {
        match (self.in_flight.min_epoch(), self.acked_above.min_epoch()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn advance(&mut self) -> bool {
        let before = self.next_unacked;
        loop {
            if let Some((start, end)) = self.acked_above.first() {
                if start == self.next_unacked {
                    self.acked_above.remove_range(start, end);
                    self.next_unacked = end;
                    continue;
                }
            }
            let n = self.next_unacked;
            if let Some((&start, &end)) = self.skipped.range(..=n).next_back() {
                if end <= n {
                    self.skipped.remove(&start);
                    continue;
                }
                // Gone from the log: pass it up to the first offset still in flight, counting
                // what the cloud never acknowledged as dropped.
                let stop = self
                    .in_flight
                    .first_at_or_after(n)
                    .filter(|&f| f < end)
                    .unwrap_or(end);
                if stop == n {
                    break; // in flight: its report decides
                }
                let acked = self.acked_above.count_range(n, stop);
                self.acked_above.remove_range(n, stop);
                self.dropped += (stop - n) - acked;
                self.next_unacked = stop;
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
    use std::collections::BTreeMap;

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
    fn skipped_ranges_count_only_what_never_reached_the_cloud() {
        let mut t = Tracker::resume(0);
        t.sent(0, 1);
        t.sent(5, 2); // a live record sent ahead
        t.sent(6, 2);
        assert_eq!(t.min_epoch(), Some(1));
        // Offsets 2..8 vanished from the edge log before the drain reached them.
        t.skip(2, 8);
        assert!(!t.needs_send(3));
        assert!(t.needs_send(1));
        t.sent(1, 3);
        t.acked(0);
        assert_eq!(t.checkpoint(), 1);
        t.acked(1);
        assert_eq!(
            (t.checkpoint(), t.dropped()),
            (5, 3),
            "2, 3, 4 dropped; 5 is in flight"
        );
        t.acked(5);
        assert_eq!((t.checkpoint(), t.dropped()), (6, 3));
        t.failed(6);
        assert_eq!(
            (t.checkpoint(), t.dropped()),
            (8, 5),
            "6 failed and is gone; 7 never sent"
        );
        assert_eq!((t.in_flight(), t.min_epoch()), (0, None));
        t.skip(3, 6);
        assert_eq!(
            (t.checkpoint(), t.dropped()),
            (8, 5),
            "below the checkpoint: nothing"
        );
        // Overlapping skips count each offset once.
        t.skip(10, 14);
        t.skip(12, 16);
        t.skip(8, 11);
        assert_eq!((t.checkpoint(), t.dropped()), (16, 13));
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

    proptest! {
        /// The run-length tracker behaves exactly like the per-offset reference model under
        /// any sequence of sends, reports, failures, skips and reconciliations.
        #[test]
        fn runs_match_the_per_offset_model(
            start in 0u64..5,
            ops in proptest::collection::vec((0u8..6, 0u64..48, 0u64..48, 0u64..4), 1..300),
        ) {
            let (mut t, mut m) = (Tracker::resume(start), Model::resume(start));
            for (op, a, b, epoch) in ops {
                match op {
                    // The engine sends only what needs sending.
                    0 | 1 => if m.needs_send(a) { t.sent(a, epoch); m.sent(a, epoch); }
                    2 => prop_assert_eq!(t.acked(a), m.acked(a)),
                    3 if b == 0 => prop_assert_eq!(t.forget_in_flight(), m.forget_in_flight()),
                    3 => { t.failed(a); m.failed(a); }
                    4 => { t.skip(a.min(b), a.max(b) + 1); m.skip(a.min(b), a.max(b) + 1); }
                    _ => {
                        let present = [a, b, a + 1, a];
                        t.reconcile(present, epoch);
                        m.reconcile(present, epoch);
                    }
                }
                prop_assert_eq!(t.checkpoint(), m.checkpoint());
                prop_assert_eq!(t.in_flight(), m.in_flight());
                prop_assert_eq!(t.min_epoch(), m.min_epoch());
                prop_assert_eq!(t.dropped(), m.dropped);
                for o in 0..52 {
                    prop_assert_eq!(t.needs_send(o), m.needs_send(o), "needs_send({})", o);
                }
            }
        }
    }

    /// The tracker as first written: one map entry per offset. The reference for `Runs`.
    #[derive(Debug, Clone, Default)]
    struct Model {
        next_unacked: u64,
        in_flight: BTreeMap<u64, u64>,
        acked_above: BTreeMap<u64, u64>,
        skipped: BTreeMap<u64, u64>,
        dropped: u64,
    }

    impl Model {
        fn resume(next_unacked: u64) -> Self {
            Model {
                next_unacked,
                ..Model::default()
            }
        }

        fn checkpoint(&self) -> u64 {
            self.next_unacked
        }

        fn in_flight(&self) -> usize {
            self.in_flight.len()
        }

        fn needs_send(&self, offset: u64) -> bool {
            offset >= self.next_unacked
                && !self.in_flight.contains_key(&offset)
                && !self.acked_above.contains_key(&offset)
                && !self.gone(offset)
        }

        fn gone(&self, o: u64) -> bool {
            self.skipped.iter().any(|(&s, &e)| s <= o && o < e)
        }

        fn sent(&mut self, offset: u64, epoch: u64) {
            if offset >= self.next_unacked {
                self.in_flight.insert(offset, epoch);
            }
        }

        fn acked(&mut self, offset: u64) -> bool {
            let epoch = self.in_flight.remove(&offset);
            if offset < self.next_unacked {
                return false;
            }
            self.acked_above.insert(offset, epoch.unwrap_or(0));
            self.advance()
        }

        fn forget_in_flight(&mut self) -> u64 {
            let n = std::mem::take(&mut self.in_flight).len() as u64;
            self.advance();
            n
        }

        fn failed(&mut self, offset: u64) {
            self.in_flight.remove(&offset);
            self.advance();
        }

        /// Overlapping ranges kept as given (the model asks "is it in any").
        fn skip(&mut self, start: u64, end: u64) {
            let start = start.max(self.next_unacked);
            if end > start {
                let e = self.skipped.entry(start).or_insert(end);
                *e = (*e).max(end);
                self.advance();
            }
        }

        fn reconcile(&mut self, present: impl IntoIterator<Item = u64>, epoch: u64) {
            for o in present {
                if o >= self.next_unacked {
                    self.in_flight.remove(&o);
                    self.acked_above.insert(o, epoch);
                }
            }
            self.advance();
        }

        fn min_epoch(&self) -> Option<u64> {
            self.in_flight
                .values()
                .chain(self.acked_above.values())
                .min()
                .copied()
        }

        fn advance(&mut self) -> bool {
            let before = self.next_unacked;
            loop {
                let n = self.next_unacked;
                if self.acked_above.remove(&n).is_some() {
                    self.next_unacked += 1;
                    continue;
                }
                if self.gone(n) && !self.in_flight.contains_key(&n) {
                    self.dropped += 1;
                    self.next_unacked += 1;
                    continue;
                }
                break;
            }
            self.next_unacked != before
        }
    }
}
