//! The receiving side's rule for one device boot: which readings of a batch are new.
//!
//! Shared by everything that acknowledges readings (the edge agent, test ackers) so they all
//! agree on what a batch means:
//! - readings arrive in sequence order; an ack is cumulative (`up_to_seq`);
//! - a batch that starts beyond the next expected sequence is **out of order** (an earlier batch
//!   is still in flight or was lost between broker and receiver): none of it is taken and the ack
//!   does not move, so the device's resend timer sends the missing run again (go-back-N);
//! - `low_seq` tells what the device no longer holds: readings below it that were never received
//!   were dropped on the device for overflow. They are a **gap**, counted, never waited for.

use core::ops::Range;

/// Per (device, boot) receive state. `Copy`, so a receiver can stage it with a write
/// transaction and keep the old value if the transaction fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stream {
    next_expected: u64,
}

/// What one batch contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Index range of the batch's readings that are new and in order: store exactly these.
    pub new: Range<usize>,
    /// Readings the device dropped before this batch that were never received.
    pub gap: u64,
    /// The batch started past the next expected reading; nothing of it was taken.
    pub out_of_order: bool,
}

impl Stream {
    /// State for a boot first seen with this batch's `low_seq`.
    pub fn start(low_seq: u64) -> Self {
        Stream {
            next_expected: low_seq,
        }
    }

    /// State restored from a stored "next expected" sequence number.
    pub fn resume(next_expected: u64) -> Self {
        Stream { next_expected }
    }

    /// The next sequence number this stream waits for.
    pub fn next_expected(&self) -> u64 {
        self.next_expected
    }

    /// The cumulative ack to send: everything below `next_expected` is received (or gone).
    pub fn ack_up_to(&self) -> Option<u64> {
        self.next_expected.checked_sub(1)
    }

    /// Applies a batch of `len` readings starting at `first_seq`, sent while the device held
    /// nothing below `low_seq`.
    pub fn accept(&mut self, first_seq: u64, low_seq: u64, len: usize) -> Outcome {
        let gap = low_seq.saturating_sub(self.next_expected);
        self.next_expected += gap;
        let expected = self.next_expected;
        if first_seq > expected {
            return Outcome {
                new: 0..0,
                gap,
                out_of_order: true,
            };
        }
        let end = first_seq.saturating_add(len as u64);
        if end <= expected {
            return Outcome {
                new: 0..0,
                gap,
                out_of_order: false,
            };
        }
        let skip = (expected - first_seq) as usize;
        self.next_expected = end;
        Outcome {
            new: skip..len,
            gap,
            out_of_order: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_duplicate_overlap_and_gap() {
        let mut s = Stream::start(0);
        assert_eq!(s.ack_up_to(), None);
        assert_eq!(s.accept(0, 0, 4).new, 0..4);
        assert_eq!(s.ack_up_to(), Some(3));
        // exact duplicate
        let o = s.accept(0, 0, 4);
        assert_eq!((o.new, o.out_of_order), (0..0, false));
        // overlapping resend: only the tail is new
        assert_eq!(s.accept(2, 2, 4).new, 2..4);
        assert_eq!(s.next_expected(), 6);
        // out of order: batch at 8 while 6..8 is missing and the device still holds it
        let o = s.accept(8, 6, 2);
        assert!(o.out_of_order);
        assert_eq!(s.next_expected(), 6);
        // device dropped 6..10 for overflow: the gap is counted, the batch accepted
        let o = s.accept(10, 10, 2);
        assert_eq!((o.new, o.gap, o.out_of_order), (0..2, 4, false));
        assert_eq!(s.ack_up_to(), Some(11));
    }
}
