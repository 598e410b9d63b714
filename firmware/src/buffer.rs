//! The store of readings not yet acknowledged by the gateway.
//!
//! # Invariants
//! - The buffer holds the readings with sequence numbers `low_seq() .. next_seq()`, consecutive,
//!   oldest first. A reading leaves only when an [`Ack`](crate::wire::Ack) covers it, or when
//!   the buffer is full and the policy is [`OverflowPolicy::DropOldest`] (counted).
//! - `low_seq() <= send_seq() <= next_seq()`: readings below `send_seq()` have been handed to
//!   the transport (in flight); the rest wait to be sent. [`Buffer::rewind`] moves `send_seq()`
//!   back to `low_seq()` so everything unacknowledged goes out again.
//! - An ack never removes a reading that was not sent, so a bogus or early ack cannot lose data.
//!
//! Storage is anything that derefs to a slice of readings: a `[Reading; N]` in a `static` on
//! an MCU, a boxed slice on a host. The capacity is fixed at construction; nothing allocates.

use crate::wire::Reading;
use crate::Error;

/// What to do with a new reading when the buffer is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverflowPolicy {
    /// Drop the oldest unacknowledged reading to make room (keeps the freshest data).
    #[default]
    DropOldest,
    /// Refuse the new reading (keeps the oldest data). A refused reading gets no sequence
    /// number, so it leaves no gap; it is only counted.
    RefuseNewest,
}

/// Backing storage for a [`Buffer`].
pub trait Storage: AsRef<[Reading]> + AsMut<[Reading]> {}
impl<T: AsRef<[Reading]> + AsMut<[Reading]>> Storage for T {}

/// A fixed-capacity ring of unacknowledged readings.
#[derive(Debug)]
pub struct Buffer<S: Storage> {
    slots: S,
    /// Index of the oldest reading in `slots`.
    head: usize,
    len: usize,
    low_seq: u64,
    send_seq: u64,
    policy: OverflowPolicy,
    dropped: u64,
}

impl<S: Storage> Buffer<S> {
    /// An empty buffer whose first reading will get sequence number `next_seq`.
    pub fn new(slots: S, policy: OverflowPolicy, next_seq: u64) -> Self {
        Buffer {
            slots,
            head: 0,
            len: 0,
            low_seq: next_seq,
            send_seq: next_seq,
            policy,
            dropped: 0,
        }
    }

    /// A buffer holding `readings`, numbered `first_seq, first_seq + 1, ...`, none of them sent
    /// yet: the unacknowledged readings a reset interrupted, restored from flash.
    ///
    /// If there are more readings than slots, the oldest are dropped (counted, whatever the
    /// policy) and the newest kept; either way the next pushed reading gets the number after the
    /// last restored one, so no sequence number is used twice.
    pub fn restore(
        slots: S,
        policy: OverflowPolicy,
        first_seq: u64,
        readings: impl IntoIterator<Item = Reading>,
    ) -> Self {
        let mut b = Buffer::new(slots, OverflowPolicy::DropOldest, first_seq);
        for reading in readings {
            if b.push(reading).is_err() {
                // No slots at all: the reading is gone (counted by `push`), its number stays used.
                b.low_seq += 1;
                b.send_seq = b.low_seq;
            }
        }
        b.policy = policy;
        b
    }

    /// How many readings fit.
    pub fn capacity(&self) -> usize {
        self.slots.as_ref().len()
    }

    /// Readings held (in flight or waiting).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no reading is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sequence number of the oldest reading held (or of the next one, when empty).
    pub fn low_seq(&self) -> u64 {
        self.low_seq
    }

    /// Sequence number of the next reading to send.
    pub fn send_seq(&self) -> u64 {
        self.send_seq
    }

    /// Sequence number the next pushed reading will get.
    pub fn next_seq(&self) -> u64 {
        self.low_seq + self.len as u64
    }

    /// Readings sent but not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        (self.send_seq - self.low_seq) as usize
    }

    /// Readings waiting to be sent.
    pub fn unsent(&self) -> usize {
        (self.next_seq() - self.send_seq) as usize
    }

    /// Readings lost to overflow so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The overflow policy.
    pub fn policy(&self) -> OverflowPolicy {
        self.policy
    }

    /// Adds a reading and returns its sequence number.
    ///
    /// When full: with `DropOldest` the oldest reading is dropped (counted) and the push
    /// succeeds; with `RefuseNewest` the push fails with [`Error::BufferFull`] (counted).
    pub fn push(&mut self, reading: Reading) -> Result<u64, Error> {
        let cap = self.capacity();
        if cap == 0 {
            self.dropped += 1;
            return Err(Error::BufferFull);
        }
        if self.len == cap {
            match self.policy {
                OverflowPolicy::RefuseNewest => {
                    self.dropped += 1;
                    return Err(Error::BufferFull);
                }
                OverflowPolicy::DropOldest => {
                    self.head = (self.head + 1) % cap;
                    self.len -= 1;
                    self.low_seq += 1;
                    self.send_seq = self.send_seq.max(self.low_seq);
                    self.dropped += 1;
                }
            }
        }
        let seq = self.next_seq();
        let idx = (self.head + self.len) % cap;
        self.slots.as_mut()[idx] = reading;
        self.len += 1;
        Ok(seq)
    }

    /// Forgets every sent reading with `seq <= up_to_seq` and returns how many went.
    /// Acks for readings never sent, or already gone, are ignored.
    pub fn ack(&mut self, up_to_seq: u64) -> usize {
        let end = up_to_seq.saturating_add(1).min(self.send_seq);
        if end <= self.low_seq {
            return 0;
        }
        let n = (end - self.low_seq) as usize;
        self.head = (self.head + n) % self.capacity();
        self.len -= n;
        self.low_seq = end;
        n
    }

    /// The next run of at most `max` unsent readings as up to two slices, with the sequence
    /// number of the first. Does not mark them sent: call [`Buffer::mark_sent`] once they are.
    pub fn peek_unsent(&self, max: usize) -> (u64, &[Reading], &[Reading]) {
        let n = self.unsent().min(max);
        let cap = self.capacity();
        if n == 0 {
            return (self.send_seq, &[], &[]);
        }
        let start = (self.head + self.in_flight()) % cap;
        let slots = self.slots.as_ref();
        let first = n.min(cap - start);
        (self.send_seq, &slots[start..start + first], &slots[..n - first])
    }

    /// Marks the next `n` unsent readings as sent (clamped to what is unsent).
    pub fn mark_sent(&mut self, n: usize) {
        self.send_seq += n.min(self.unsent()) as u64;
    }

    /// Makes every unacknowledged reading unsent again; returns how many were in flight.
    pub fn rewind(&mut self) -> usize {
        let n = self.in_flight();
        self.send_seq = self.low_seq;
        n
    }

    /// The reading with sequence number `seq`, if held.
    pub fn get(&self, seq: u64) -> Option<&Reading> {
        if seq < self.low_seq || seq >= self.next_seq() {
            return None;
        }
        let idx = (self.head + (seq - self.low_seq) as usize) % self.capacity();
        Some(&self.slots.as_ref()[idx])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn r(v: u64) -> Reading {
        Reading {
            channel: 0,
            timestamp_ms: v,
            value: v as f32,
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Send(usize),
        Ack(u64),
        Rewind,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Push),
            2 => (0usize..10).prop_map(Op::Send),
            2 => (0u64..80).prop_map(Op::Ack),
            1 => Just(Op::Rewind),
        ]
    }

    /// The model: a VecDeque of (seq, reading) plus the send cursor.
    struct Model {
        q: VecDeque<(u64, Reading)>,
        next: u64,
        send: u64,
        cap: usize,
        policy: OverflowPolicy,
        dropped: u64,
    }

    proptest! {
        #[test]
        fn buffer_matches_vecdeque_model(
            cap in 1usize..12,
            refuse in any::<bool>(),
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let policy = if refuse { OverflowPolicy::RefuseNewest } else { OverflowPolicy::DropOldest };
            let mut b = Buffer::new(std::vec![Reading::default(); cap], policy, 0);
            let mut m = Model { q: VecDeque::new(), next: 0, send: 0, cap, policy, dropped: 0 };
            let mut stamp = 0;
            for op in ops {
                match op {
                    Op::Push => {
                        stamp += 1;
                        let got = b.push(r(stamp));
                        if m.q.len() == m.cap {
                            m.dropped += 1;
                            if m.policy == OverflowPolicy::RefuseNewest {
                                prop_assert_eq!(got, Err(Error::BufferFull));
                                continue;
                            }
                            m.q.pop_front();
                        }
                        prop_assert_eq!(got, Ok(m.next));
                        m.q.push_back((m.next, r(stamp)));
                        m.next += 1;
                        let low = m.q.front().map_or(m.next, |x| x.0);
                        m.send = m.send.max(low);
                    }
                    Op::Send(n) => {
                        let (first, a, c) = b.peek_unsent(n);
                        prop_assert_eq!(first, m.send);
                        let got: std::vec::Vec<_> = a.iter().chain(c).copied().collect();
                        let want: std::vec::Vec<_> = m.q.iter().filter(|x| x.0 >= m.send).take(n).map(|x| x.1).collect();
                        prop_assert_eq!(&got, &want);
                        b.mark_sent(got.len());
                        m.send += got.len() as u64;
                    }
                    Op::Ack(up) => {
                        let before = m.q.len();
                        while m.q.front().is_some_and(|x| x.0 <= up && x.0 < m.send) {
                            m.q.pop_front();
                        }
                        prop_assert_eq!(b.ack(up), before - m.q.len());
                    }
                    Op::Rewind => {
                        b.rewind();
                        m.send = m.q.front().map_or(m.next, |x| x.0);
                    }
                }
                prop_assert_eq!(b.len(), m.q.len());
                prop_assert_eq!(b.next_seq(), m.next);
                prop_assert_eq!(b.low_seq(), m.q.front().map_or(m.next, |x| x.0));
                prop_assert_eq!(b.send_seq(), m.send);
                prop_assert_eq!(b.dropped(), m.dropped);
                for (seq, want) in &m.q {
                    prop_assert_eq!(b.get(*seq), Some(want));
                }
            }
        }
    }

    #[test]
    fn restore_numbers_readings_from_first_seq_and_keeps_the_newest() {
        let b = Buffer::restore(
            std::vec![Reading::default(); 4],
            OverflowPolicy::RefuseNewest,
            10,
            (0..3).map(r),
        );
        assert_eq!(
            (b.low_seq(), b.send_seq(), b.next_seq(), b.dropped()),
            (10, 10, 13, 0)
        );
        assert_eq!(b.policy(), OverflowPolicy::RefuseNewest);
        assert_eq!(b.peek_unsent(8).1, &[r(0), r(1), r(2)]);

        // More readings than slots: the oldest go (counted), numbering is unchanged.
        let b = Buffer::restore(
            [Reading::default(); 2],
            OverflowPolicy::RefuseNewest,
            10,
            (0..5).map(r),
        );
        assert_eq!((b.low_seq(), b.next_seq(), b.dropped()), (13, 15, 3));
        assert_eq!((b.get(13), b.get(14)), (Some(&r(3)), Some(&r(4))));

        // No slots: nothing is kept, but the numbers stay used.
        let mut b = Buffer::restore([] as [Reading; 0], OverflowPolicy::DropOldest, 10, (0..2).map(r));
        assert_eq!((b.low_seq(), b.next_seq(), b.dropped(), b.len()), (12, 12, 2, 0));
        assert_eq!(b.push(r(9)), Err(Error::BufferFull));

        // Nothing to restore is an empty buffer resuming at `first_seq`.
        let mut b = Buffer::restore([Reading::default(); 2], OverflowPolicy::DropOldest, 7, []);
        assert_eq!(b.push(r(0)), Ok(7));
    }

    #[test]
    fn ack_never_removes_unsent_readings() {
        let mut b = Buffer::new([Reading::default(); 4], OverflowPolicy::DropOldest, 10);
        for i in 0..3 {
            b.push(r(i)).unwrap();
        }
        assert_eq!(b.ack(1_000), 0, "nothing was sent yet");
        b.mark_sent(2);
        assert_eq!(b.ack(1_000), 2);
        assert_eq!((b.low_seq(), b.len()), (12, 1));
        assert_eq!(b.ack(5), 0, "stale ack is harmless");
    }

    #[test]
    fn drop_oldest_skips_in_flight_cursor_forward() {
        let mut b = Buffer::new([Reading::default(); 2], OverflowPolicy::DropOldest, 0);
        b.push(r(0)).unwrap();
        b.mark_sent(1);
        b.push(r(1)).unwrap();
        b.push(r(2)).unwrap(); // drops seq 0, which was in flight
        assert_eq!((b.low_seq(), b.send_seq(), b.dropped()), (1, 1, 1));
        assert_eq!(b.peek_unsent(8).0, 1);
    }
}
