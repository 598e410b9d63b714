//! The flash journal (`persist`, feature `flash`) over a simulated NOR flash: a model test
//! against a `VecDeque`, power loss at every point of random workloads, corrupt contents, and
//! the restored buffer going back out through the uplink.
#![cfg(feature = "flash")]
// `drop(journal)` is the device resetting: it ends the journal's borrow of the flash.
#![allow(clippy::drop_non_drop)]

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use embedded_storage_async::nor_flash::{
    ErrorType, MultiwriteNorFlash, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};
use firmware::buffer::{Buffer, OverflowPolicy};
use firmware::mqtt::codec::{self, Packet};
use firmware::mqtt::{Action, Config, Uplink};
use firmware::persist::{entry_footprint, Journal, Restored};
use firmware::wire::{self, Batch, Reading};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Simulated NOR flash
// ---------------------------------------------------------------------------------------------

/// NOR flash in a `Vec<u8>`: erase sets whole pages to 0xFF, a write can only clear bits (the
/// result is the AND of old and new, which is what `MultiwriteNorFlash` promises), and every
/// address and length must be word- (page-, for erase) aligned.
///
/// Power loss: `budget` counts word operations (one per word written or erased). The operation
/// that finds it at zero is torn: the words before it are done, the one in progress ends up
/// with only some of its bits changed (none, some or all, by the `tear` seed), the rest are
/// untouched, and every later call fails until [`SimFlash::power_cycle`].
#[derive(Debug, Clone)]
struct SimFlash<const W: usize, const PAGE: usize> {
    data: Vec<u8>,
    budget: Option<u64>,
    tear: u64,
    dead: bool,
    /// Word operations so far (to size countdowns).
    word_ops: u64,
    /// Writes that tried to turn a 0 bit back into 1 (a sign of writing over unerased data).
    set_bits: u64,
    /// Completed erases, per page.
    erases: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SimError {
    PowerLoss,
    NotAligned,
    OutOfBounds,
}

impl NorFlashError for SimError {
    fn kind(&self) -> NorFlashErrorKind {
        match self {
            SimError::PowerLoss => NorFlashErrorKind::Other,
            SimError::NotAligned => NorFlashErrorKind::NotAligned,
            SimError::OutOfBounds => NorFlashErrorKind::OutOfBounds,
        }
    }
}

impl<const W: usize, const PAGE: usize> SimFlash<W, PAGE> {
    fn new(pages: usize) -> Self {
        SimFlash {
            data: vec![0xFF; pages * PAGE],
            budget: None,
            tear: 0,
            dead: false,
            word_ops: 0,
            set_bits: 0,
            erases: vec![0; pages],
        }
    }

    /// The power comes back: the bytes stay as they are, a new countdown (if any) starts.
    fn power_cycle(&mut self, budget: Option<u64>, tear: u64) {
        self.dead = false;
        self.budget = budget;
        self.tear = tear;
    }

    fn check(&self, offset: u32, len: usize, align: usize) -> Result<Range<usize>, SimError> {
        if self.dead {
            return Err(SimError::PowerLoss);
        }
        let start = offset as usize;
        if !start.is_multiple_of(align) || !len.is_multiple_of(align) {
            return Err(SimError::NotAligned);
        }
        if start + len > self.data.len() {
            return Err(SimError::OutOfBounds);
        }
        Ok(start..start + len)
    }

    /// One word operation; `false` when the power goes now.
    fn tick(&mut self) -> bool {
        self.word_ops += 1;
        match &mut self.budget {
            Some(0) => {
                self.dead = true;
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
            None => true,
        }
    }

    /// Which bits of each byte of the torn word change: all, none, or pseudo-random ones
    /// (one choice per word, fresh random bits per byte).
    fn torn_masks(&mut self) -> [u8; W] {
        let mut next = || {
            self.tear = self
                .tear
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.tear >> 32
        };
        let mode = next() % 3;
        core::array::from_fn(|_| match mode {
            0 => 0xFF,
            1 => 0x00,
            _ => next() as u8,
        })
    }
}

impl<const W: usize, const PAGE: usize> ErrorType for SimFlash<W, PAGE> {
    type Error = SimError;
}

impl<const W: usize, const PAGE: usize> ReadNorFlash for SimFlash<W, PAGE> {
    const READ_SIZE: usize = W;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), SimError> {
        let r = self.check(offset, bytes.len(), W)?;
        bytes.copy_from_slice(&self.data[r]);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.data.len()
    }
}

impl<const W: usize, const PAGE: usize> NorFlash for SimFlash<W, PAGE> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = PAGE;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), SimError> {
        if to < from {
            return Err(SimError::OutOfBounds);
        }
        let r = self.check(from, (to - from) as usize, PAGE)?;
        for word in r.step_by(W) {
            if !self.tick() {
                // Torn: only the bits in the mask made it to 1.
                let masks = self.torn_masks();
                for (i, m) in (word..word + W).zip(masks) {
                    self.data[i] |= m;
                }
                return Err(SimError::PowerLoss);
            }
            self.data[word..word + W].fill(0xFF);
            if (word + W).is_multiple_of(PAGE) {
                self.erases[word / PAGE] += 1;
            }
        }
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), SimError> {
        let r = self.check(offset, bytes.len(), W)?;
        for (word, new) in r.step_by(W).zip(bytes.chunks_exact(W)) {
            let ok = self.tick();
            // Torn: only the bits in the mask made it to 0.
            let masks = if ok { [0xFF; W] } else { self.torn_masks() };
            for ((i, &b), m) in (word..word + W).zip(new).zip(masks) {
                let old = self.data[i];
                if ok && b & !old != 0 {
                    self.set_bits += 1;
                }
                self.data[i] = old & (b | !m);
            }
            if !ok {
                return Err(SimError::PowerLoss);
            }
        }
        Ok(())
    }
}

impl<const W: usize, const PAGE: usize> MultiwriteNorFlash for SimFlash<W, PAGE> {}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Counter in pages 0..2, queue in pages 2..2 + QUEUE_PAGES.
const COUNTER_PAGES: usize = 2;
const QUEUE_PAGES: usize = 6;
const BOOT: u32 = 0xB007;

fn ranges(page: usize) -> (Range<u32>, Range<u32>) {
    let p = page as u32;
    let counter = 0..COUNTER_PAGES as u32 * p;
    (counter.end..counter.end + QUEUE_PAGES as u32 * p, counter)
}

fn journal<const W: usize, const PAGE: usize>(
    flash: &mut SimFlash<W, PAGE>,
) -> Journal<&mut SimFlash<W, PAGE>> {
    let (queue, counter) = ranges(PAGE);
    Journal::new(flash, queue, counter).expect("valid layout")
}

fn new_flash<const W: usize, const PAGE: usize>() -> SimFlash<W, PAGE> {
    SimFlash::new(COUNTER_PAGES + QUEUE_PAGES)
}

fn reading(i: u64) -> Reading {
    Reading {
        channel: (i % 7) as u16,
        timestamp_ms: 1_700_000_000_000 + i,
        value: i as f32 * 0.25 - 3.0,
    }
}

/// Readings compared by bits, so NaN payloads count too.
fn key(r: &Reading) -> (u16, u64, u32) {
    (r.channel, r.timestamp_ms, r.value.to_bits())
}

/// The restored readings as `seq -> reading`, checking the shape of `Restored` on the way.
fn restored_map(r: &Restored, out: &[Reading]) -> BTreeMap<u64, Reading> {
    assert!(r.first_seq <= r.next_seq);
    assert_eq!(r.len() as u64, r.next_seq - r.first_seq);
    assert!(r.len() <= out.len());
    (r.first_seq..r.next_seq)
        .zip(out[..r.len()].iter().copied())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Fresh flash, restart, capacity, scratch space
// ---------------------------------------------------------------------------------------------

#[test]
fn fresh_flash_starts_a_new_boot_and_a_restart_resumes_it() {
    let mut flash = new_flash::<4, 256>();
    let mut out = [Reading::default(); 16];
    let r = journal(&mut flash).restore_blocking(BOOT, &mut out).unwrap();
    assert_eq!(
        r,
        Restored {
            boot_id: BOOT,
            first_seq: 0,
            next_seq: 0,
            resumed: false,
            discarded: 0
        }
    );

    let mut j = journal(&mut flash);
    let r = j.restore_blocking(1, &mut out).unwrap();
    assert_eq!(
        (r.boot_id, r.next_seq, r.resumed),
        (BOOT, 0, true),
        "the stored boot wins"
    );
    for seq in 0..5 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    j.release_below_blocking(2).unwrap();
    drop(j);

    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!(
        (r.boot_id, r.first_seq, r.next_seq, r.resumed, r.discarded),
        (BOOT, 2, 5, true, 0)
    );
    assert_eq!(
        out[..3].iter().map(key).collect::<Vec<_>>(),
        (2..5).map(|i| key(&reading(i))).collect::<Vec<_>>()
    );
}

/// The keeper a board image uses: a fresh journal starts the caller's boot; what was recorded
/// and not released comes back into the buffer after a reset, under its old numbers; a
/// journal that cannot be used leaves the node running in RAM with a report.
#[test]
fn the_keeper_restores_the_buffer_across_a_reset_and_reports_an_unusable_journal() {
    fn quiet(_: core::fmt::Arguments<'_>) {}
    let mut flash = new_flash::<4, 256>();
    let mut scratch = [Reading::default(); 16];
    let (mut keeper, boot, mut buffer) = firmware::persist::Keeper::boot(
        Ok(journal(&mut flash)),
        BOOT,
        &mut scratch,
        [Reading::default(); 16],
        OverflowPolicy::DropOldest,
        quiet,
    );
    assert_eq!((boot, buffer.len()), (BOOT, 0));
    assert!(keeper.journaling());
    for i in 0..5 {
        let seq = buffer.push(reading(i)).unwrap();
        keeper.record(seq, &reading(i));
    }
    buffer.mark_sent(5);
    buffer.ack(1); // readings 0 and 1 acknowledged
    keeper.release(buffer.low_seq());
    drop(keeper);

    let (mut keeper, boot, mut buffer) = firmware::persist::Keeper::boot(
        Ok(journal(&mut flash)),
        0x0EE,
        &mut scratch,
        [Reading::default(); 16],
        OverflowPolicy::DropOldest,
        quiet,
    );
    assert_eq!(boot, BOOT, "the interrupted boot goes on");
    assert_eq!((buffer.low_seq(), buffer.next_seq()), (2, 5));
    assert_eq!(
        (2..5).map(|s| key(buffer.get(s).unwrap())).collect::<Vec<_>>(),
        (2..5).map(|i| key(&reading(i))).collect::<Vec<_>>()
    );
    let seq = buffer.push(reading(5)).unwrap();
    assert_eq!(seq, 5, "numbering goes on");
    keeper.record(seq, &reading(5));

    static REPORTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    fn count(_: core::fmt::Arguments<'_>) {
        REPORTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let (keeper, boot, buffer) = firmware::persist::Keeper::<&mut SimFlash<4, 256>>::boot(
        Err(firmware::Error::Storage),
        0x0EE,
        &mut scratch,
        [Reading::default(); 16],
        OverflowPolicy::DropOldest,
        count,
    );
    assert!(!keeper.journaling());
    assert_eq!((boot, buffer.next_seq()), (0x0EE, 0), "a new boot in RAM");
    assert_eq!(
        REPORTS.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "and it says so"
    );
}

#[test]
fn an_empty_queue_still_restores_the_counter() {
    let mut flash = new_flash::<4, 256>();
    let mut out = [Reading::default(); 16];
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut out).unwrap();
    for seq in 0..40 {
        j.record_blocking(seq, &reading(seq)).unwrap();
        j.release_below_blocking(seq + 1).unwrap();
    }
    drop(j);
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.boot_id, r.first_seq, r.next_seq, r.len()), (BOOT, 40, 40, 0));
    assert_eq!(flash.set_bits, 0);
}

#[test]
fn record_and_release_need_a_restore_and_rising_seqs() {
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    assert_eq!(j.record_blocking(0, &reading(0)), Err(firmware::Error::Storage));
    assert_eq!(j.release_below_blocking(0), Err(firmware::Error::Storage));
    j.restore_blocking(BOOT, &mut []).unwrap();
    j.record_blocking(0, &reading(0)).unwrap();
    assert_eq!(
        j.record_blocking(0, &reading(0)),
        Err(firmware::Error::Storage),
        "seq reused"
    );
    j.record_blocking(1, &reading(1)).unwrap();
}

#[test]
fn bad_layouts_are_refused() {
    let mut flash = new_flash::<4, 256>();
    assert!(Journal::new(&mut flash, 0..512, 256..768).is_err(), "overlapping");
    assert!(
        Journal::new(&mut flash, 0..256, 512..1024).is_err(),
        "one-page queue"
    );
    assert!(
        Journal::new(&mut flash, 0..512, 600..1024).is_err(),
        "not page-aligned"
    );
    assert!(
        Journal::new(&mut flash, 0..512, 1024..4096).is_err(),
        "beyond the flash"
    );
    assert!(Journal::new(&mut flash, 0..512, 512..1024).is_ok());
    // Words under 4 bytes: a torn item header can be completed by the next item (module doc).
    let mut bytes = new_flash::<1, 256>();
    assert!(
        Journal::new(&mut bytes, 0..512, 512..1024).is_err(),
        "1-byte words"
    );
    let mut pairs = new_flash::<2, 256>();
    assert!(
        Journal::new(&mut pairs, 0..512, 512..1024).is_err(),
        "2-byte words"
    );
}

#[test]
fn capacity_holds_without_dropping_and_overflow_drops_the_oldest() {
    let mut flash = new_flash::<4, 256>();
    let mut out = vec![Reading::default(); 200];
    let mut j = journal(&mut flash);
    // (256 - 2 * 4) / 32 = 7 entries per page, 5 of the 6 pages usable without dropping.
    assert_eq!(entry_footprint::<SimFlash<4, 256>>(), 32);
    assert_eq!(j.capacity(), 35);
    j.restore_blocking(BOOT, &mut out).unwrap();
    // Release a few first so the queue wraps around the ring of pages.
    for seq in 0..10 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    j.release_below_blocking(10).unwrap();
    let cap = j.capacity() as u64;
    for seq in 10..10 + cap {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.first_seq, r.next_seq), (10, 10 + cap), "all {cap} kept");

    // Keep going: the oldest page goes, the rest stays consecutive and newest.
    let mut j = journal(&mut flash);
    j.restore_blocking(1, &mut out).unwrap();
    for seq in 10 + cap..10 + cap + 20 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!(r.next_seq, 10 + cap + 20);
    assert!(r.len() as u64 >= cap, "at least capacity kept, got {}", r.len());
    assert!(r.first_seq > 10, "the oldest were dropped");
    for (seq, got) in restored_map(&r, &out) {
        assert_eq!(key(&got), key(&reading(seq)));
    }
}

#[test]
fn small_scratch_keeps_the_newest_readings() {
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut []).unwrap();
    for seq in 0..11 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    let mut out = [Reading::default(); 4];
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.first_seq, r.next_seq, r.discarded), (7, 11, 7));
    assert_eq!(
        out.iter().map(key).collect::<Vec<_>>(),
        (7..11).map(|i| key(&reading(i))).collect::<Vec<_>>()
    );
    // No scratch at all: nothing restored, numbering intact.
    let r = journal(&mut flash).restore_blocking(1, &mut []).unwrap();
    assert_eq!((r.first_seq, r.next_seq, r.discarded), (11, 11, 11));
}

// ---------------------------------------------------------------------------------------------
// Corrupt contents: skipped, or a fresh boot — never a panic
// ---------------------------------------------------------------------------------------------

/// Address of queue entry `i` (counting from the first page of the queue, no wrap yet).
fn entry_addr(i: usize) -> usize {
    let (queue, _) = ranges(256);
    let per_page = (256 - 8) / 32;
    queue.start as usize + (i / per_page) * 256 + 4 + (i % per_page) * 32
}

#[test]
fn a_rotten_entry_cuts_the_run_and_only_readings_after_it_are_restored() {
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut []).unwrap();
    for seq in 0..6 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    // Bit rot in entry 2's data: its CRC no longer matches, so sequential-storage skips it.
    flash.data[entry_addr(2) + 8 + 13] ^= 0x10;
    let mut out = [Reading::default(); 16];
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.boot_id, r.resumed), (BOOT, true));
    assert_eq!(
        (r.first_seq, r.next_seq, r.discarded),
        (3, 6, 2),
        "0 and 1 are before the gap"
    );
    for (seq, got) in restored_map(&r, &out) {
        assert_eq!(key(&got), key(&reading(seq)));
    }
    // The journal carries on: releasing pops the stale entries too.
    let mut j = journal(&mut flash);
    j.restore_blocking(1, &mut out).unwrap();
    j.release_below_blocking(4).unwrap();
    drop(j);
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.first_seq, r.next_seq, r.discarded), (4, 6, 0));
}

#[test]
fn a_foreign_item_in_the_queue_is_skipped() {
    use sequential_storage::cache::Cache;
    use sequential_storage::queue::{QueueConfig, QueueStorage};
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut []).unwrap();
    for seq in 0..3 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    // A well-formed sequential-storage item that is not one of ours (wrong tag, wrong length).
    let (queue, _) = ranges(256);
    let mut q = QueueStorage::new(&mut flash, QueueConfig::new(queue), Cache::new_uncached());
    embassy_futures::block_on(q.push(&[0x55; 24], false)).unwrap();
    embassy_futures::block_on(q.push(&[1; 7], false)).unwrap();
    drop(q);
    let mut out = [Reading::default(); 16];
    let mut j = journal(&mut flash);
    let r = j.restore_blocking(1, &mut out).unwrap();
    assert_eq!((r.first_seq, r.next_seq, r.discarded), (0, 3, 2));
    j.record_blocking(3, &reading(3)).unwrap();
    drop(j);
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    assert_eq!(
        (r.first_seq, r.next_seq, r.discarded),
        (0, 4, 2),
        "foreign items skipped, run unbroken"
    );
    // An item too big for the journal's scratch cannot even be read past: nothing after it can
    // be trusted, so the restore starts a new boot (never the stored one).
    let (queue, _) = ranges(256);
    let mut q = QueueStorage::new(&mut flash, QueueConfig::new(queue), Cache::new_uncached());
    embassy_futures::block_on(q.push(&[7; 100], false)).unwrap();
    drop(q);
    let r = journal(&mut flash).restore_blocking(BOOT, &mut out).unwrap();
    assert_eq!((r.boot_id, r.resumed, r.next_seq), (BOOT + 1, false, 0));
}

#[test]
fn a_rotten_counter_starts_a_new_boot_from_scratch() {
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut []).unwrap();
    for seq in 0..4 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    drop(j);
    // The counter item is the first item of the counter range: corrupt its data.
    flash.data[4 + 8 + 2] ^= 0x01;
    let mut out = [Reading::default(); 16];
    let r = journal(&mut flash).restore_blocking(77, &mut out).unwrap();
    assert_eq!(
        r,
        Restored {
            boot_id: 77,
            first_seq: 0,
            next_seq: 0,
            resumed: false,
            discarded: 0
        }
    );
    // The old readings are gone for good, and the new boot is what resumes.
    let r = journal(&mut flash).restore_blocking(78, &mut out).unwrap();
    assert_eq!((r.boot_id, r.resumed, r.first_seq, r.next_seq), (77, true, 0, 0));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Random bytes splattered over a working image: restore never panics, always gives a
    /// consistent answer, and the journal works afterwards.
    #[test]
    fn garbage_in_flash_never_panics(
        flips in proptest::collection::vec((0usize..2048, any::<u8>()), 1..40),
        wipe in any::<bool>(),
    ) {
        let mut flash = new_flash::<4, 256>();
        let mut j = journal(&mut flash);
        j.restore_blocking(BOOT, &mut []).unwrap();
        for seq in 0..20 {
            j.record_blocking(seq, &reading(seq)).unwrap();
            if seq % 3 == 0 {
                j.release_below_blocking(seq).unwrap();
            }
        }
        drop(j);
        if wipe {
            flash.data.fill(0xFF);
        }
        for (at, b) in flips {
            flash.data[at] = b;
        }
        let mut out = [Reading::default(); 64];
        let mut j = journal(&mut flash);
        let r = j.restore_blocking(9, &mut out).unwrap();
        let got = restored_map(&r, &out);
        if r.resumed {
            prop_assert_eq!(r.boot_id, BOOT);
            for (seq, reading_) in &got {
                prop_assert_eq!(key(reading_), key(&reading(*seq)), "a restored reading is never altered");
            }
        } else {
            prop_assert_eq!((r.boot_id, r.next_seq), (9, 0));
        }
        // The journal keeps working (healing the queue if it must), and what it restores is
        // never altered. Numbering is not asserted: garbage where sequential-storage believes
        // the flash erased spoils the write that lands on it (read back as torn and skipped).
        let next = r.next_seq;
        for seq in next..next + 5 {
            let _ = j.record_blocking(seq, &reading(seq));
        }
        let _ = j.release_below_blocking(next + 2);
        drop(j);
        let r2 = journal(&mut flash).restore_blocking(10, &mut out).unwrap();
        for (seq, reading_) in restored_map(&r2, &out) {
            prop_assert_eq!(key(&reading_), key(&reading(seq)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Model test: the journal against a VecDeque, no faults
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Record the next reading (with this value seed).
    Record(u64),
    /// Release the `n` oldest unreleased readings (clamped).
    Release(u64),
    /// Reset without a power loss: a new journal over the same flash.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => any::<u64>().prop_map(Op::Record),
        3 => (0u64..12).prop_map(Op::Release),
        1 => Just(Op::Restart),
    ]
}

fn value_reading(seed: u64) -> Reading {
    Reading {
        channel: seed as u16,
        timestamp_ms: seed.rotate_left(17),
        value: f32::from_bits((seed >> 16) as u32),
    }
}

fn model_run<const W: usize, const PAGE: usize>(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut flash = new_flash::<W, PAGE>();
    let limit = journal(&mut flash).capacity();
    let mut out = vec![Reading::default(); limit + 8];
    let r = journal(&mut flash).restore_blocking(BOOT, &mut out).unwrap();
    prop_assert_eq!((r.boot_id, r.resumed), (BOOT, false));

    let mut model: VecDeque<(u64, Reading)> = VecDeque::new();
    let mut next = 0u64;
    let mut ops = ops.iter();
    loop {
        let mut j = journal(&mut flash);
        let r = j.restore_blocking(1, &mut out).unwrap();
        prop_assert_eq!(
            (r.boot_id, r.resumed, r.next_seq, r.discarded),
            (BOOT, true, next, 0)
        );
        let got: Vec<_> = restored_map(&r, &out)
            .into_iter()
            .map(|(s, r)| (s, key(&r)))
            .collect();
        let want: Vec<_> = model.iter().map(|(s, r)| (*s, key(r))).collect();
        prop_assert_eq!(got, want);

        let mut restart = false;
        for op in ops.by_ref() {
            match *op {
                Op::Record(v) => {
                    if model.len() >= limit {
                        continue;
                    }
                    let r = value_reading(v);
                    j.record_blocking(next, &r).unwrap();
                    model.push_back((next, r));
                    next += 1;
                }
                Op::Release(n) => {
                    let low = model.front().map_or(next, |f| (f.0 + n).min(next));
                    j.release_below_blocking(low).unwrap();
                    while model.front().is_some_and(|f| f.0 < low) {
                        model.pop_front();
                    }
                }
                Op::Restart => {
                    restart = true;
                    break;
                }
            }
        }
        drop(j);
        if !restart {
            break;
        }
    }
    // The loop ends with a restore after the last restart; one more checks the final state.
    let r = journal(&mut flash).restore_blocking(1, &mut out).unwrap();
    prop_assert_eq!((r.boot_id, r.resumed, r.next_seq), (BOOT, true, next));
    let got: Vec<_> = restored_map(&r, &out)
        .into_iter()
        .map(|(s, r)| (s, key(&r)))
        .collect();
    let want: Vec<_> = model.iter().map(|(s, r)| (*s, key(r))).collect();
    prop_assert_eq!(got, want);
    prop_assert_eq!(flash.set_bits, 0, "never wrote over unerased bits");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn journal_matches_vecdeque_model(ops in proptest::collection::vec(op(), 0..150), geometry in 0u8..3) {
        match geometry {
            0 => model_run::<4, 256>(&ops)?,
            1 => model_run::<8, 512>(&ops)?,
            _ => model_run::<4, 128>(&ops)?,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Power loss at any word of a random workload
// ---------------------------------------------------------------------------------------------

/// The operation the power loss interrupted.
#[derive(Debug, Clone, Copy)]
enum Pending {
    Record { seq: u64, reading: Reading },
    Release { low: u64 },
}

/// What the app knows for certain: the outcome of every operation that returned.
#[derive(Debug, Default)]
struct Truth {
    /// Recorded and not released, by operations that completed.
    live: BTreeMap<u64, Reading>,
    /// The next sequence number to hand out.
    next: u64,
    /// The boot, once a restore has returned.
    boot: Option<u32>,
}

/// What the power losses hit (per test thread), to show the tests reach the cases they claim.
#[derive(Debug, Default)]
struct Stats {
    crashes: u64,
    /// A release was interrupted and some of its readings came back.
    resurrected: u64,
    /// ... and only some of them (the release was torn midway).
    release_partial: u64,
    /// A torn record whose entry nevertheless made it (the torn word got all its bits).
    torn_record_kept: u64,
    torn_record_lost: u64,
}

thread_local! {
    static STATS: std::cell::RefCell<Stats> = Default::default();
}

impl Truth {
    /// Checks a restore after a reset against what was certain before it and the operation in
    /// progress, then adopts the restored state (as the app does).
    fn adopt(
        &mut self,
        pending: Option<Pending>,
        r: &Restored,
        out: &[Reading],
    ) -> Result<(), TestCaseError> {
        // (d) consecutive seqs is `restored_map`'s shape check; and nothing had to be thrown away.
        let got = restored_map(r, out);
        prop_assert_eq!(r.discarded, 0, "a power loss never leaves entries to discard");
        match self.boot {
            // The counter survives: same boot, resumed.
            Some(boot) => prop_assert_eq!((r.boot_id, r.resumed), (boot, true)),
            None => self.boot = Some(r.boot_id),
        }
        // (c) the counter never goes backwards, and never jumps ahead of what was handed out.
        match pending {
            Some(Pending::Record { seq, .. }) => {
                prop_assert_eq!(seq, self.next);
                prop_assert!(
                    r.next_seq == seq || r.next_seq == seq + 1,
                    "next {} around torn {}",
                    r.next_seq,
                    seq
                );
            }
            _ => prop_assert_eq!(r.next_seq, self.next),
        }
        // (a) nothing released reappears, unless its release was the one interrupted, and every
        // restored reading is exactly what was recorded under that seq.
        for (seq, got_reading) in &got {
            let want = match pending {
                Some(Pending::Record { seq: s, reading }) if s == *seq => reading,
                _ => match self.live.get(seq) {
                    Some(r) => *r,
                    None => {
                        return Err(TestCaseError::fail(format!(
                            "seq {seq} was released but came back"
                        )))
                    }
                },
            };
            prop_assert_eq!(key(got_reading), key(&want), "seq {}", seq);
        }
        // (b) everything recorded and not released is there, except what the interrupted
        // release was releasing.
        for seq in self.live.keys() {
            let may_miss = matches!(pending, Some(Pending::Release { low }) if *seq < low);
            prop_assert!(
                may_miss || got.contains_key(seq),
                "seq {} lost; restored {:?}",
                seq,
                r
            );
        }
        STATS.with(|st| {
            let mut st = st.borrow_mut();
            match pending {
                Some(Pending::Record { seq, .. }) => {
                    if got.contains_key(&seq) {
                        st.torn_record_kept += 1
                    } else {
                        st.torn_record_lost += 1
                    }
                }
                Some(Pending::Release { low }) => {
                    let back = got.keys().filter(|s| **s < low).count();
                    let was = self.live.keys().filter(|s| **s < low).count();
                    if back > 0 {
                        st.resurrected += 1;
                    }
                    if back > 0 && back < was {
                        st.release_partial += 1;
                    }
                }
                None => {}
            }
        });
        self.live = got;
        self.next = r.next_seq;
        Ok(())
    }
}

/// Runs `ops`, losing power after `crashes[i] * total` word operations (one countdown per
/// boot, `total` being what a fault-free run takes), and checks every restore.
fn crash_run<const W: usize, const PAGE: usize>(
    ops: &[Op],
    crashes: &[f64],
    tear: u64,
) -> Result<(), TestCaseError> {
    let mut flash = new_flash::<W, PAGE>();
    drive(&mut flash, ops, None)?;
    let total = flash.word_ops;
    let budgets: Vec<u64> = crashes.iter().map(|f| (f * total as f64) as u64).collect();
    drive(&mut new_flash::<W, PAGE>(), ops, Some((&budgets, tear)))
}

/// The app's main loop over the journal, rebooting after every power loss and at `Restart`.
/// `faults`: the countdown for each boot, and the seed for how torn words end up.
fn drive<const W: usize, const PAGE: usize>(
    flash: &mut SimFlash<W, PAGE>,
    ops: &[Op],
    faults: Option<(&[u64], u64)>,
) -> Result<(), TestCaseError> {
    let mut budgets = faults.map(|f| f.0).unwrap_or(&[]).iter().copied();
    let tear = faults.map_or(0, |f| f.1);
    flash.power_cycle(budgets.next(), tear);
    let limit = journal(flash).capacity() / 2;
    let mut out = vec![Reading::default(); limit + 8];
    let mut truth = Truth::default();
    let mut pending = None;
    let mut ops = ops.iter().peekable();
    let mut boots = 0u32;
    loop {
        let mut j = journal(flash);
        boots += 1;
        let crashed = 'boot: {
            let Ok(r) = j.restore_blocking(1000 + boots, &mut out) else {
                break 'boot true;
            };
            truth.adopt(pending.take(), &r, &out)?;
            while let Some(op) = ops.peek() {
                match **op {
                    Op::Record(v) if truth.live.len() < limit => {
                        let (seq, reading) = (truth.next, value_reading(v));
                        pending = Some(Pending::Record { seq, reading });
                        if j.record_blocking(seq, &reading).is_err() {
                            ops.next();
                            break 'boot true;
                        }
                        truth.live.insert(seq, reading);
                        truth.next += 1;
                    }
                    Op::Record(_) => {}
                    Op::Release(n) => {
                        let low = truth
                            .live
                            .keys()
                            .next()
                            .map_or(truth.next, |f| (f + n).min(truth.next));
                        pending = Some(Pending::Release { low });
                        if j.release_below_blocking(low).is_err() {
                            ops.next();
                            break 'boot true;
                        }
                        truth.live.retain(|s, _| *s >= low);
                    }
                    Op::Restart => {
                        ops.next();
                        break 'boot false;
                    }
                }
                pending = None;
                ops.next();
            }
            // Done: one last clean restart checks the final state.
            drop(j);
            flash.power_cycle(None, 0);
            let r = journal(flash)
                .restore_blocking(1, &mut out)
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            return truth.adopt(None, &r, &out);
        };
        if crashed {
            // The interrupted operation is not retried (the app forgot it); an interrupted
            // restore simply happens again.
            prop_assert!(flash.dead, "errors only from the power loss");
            STATS.with(|s| s.borrow_mut().crashes += 1);
            flash.power_cycle(budgets.next(), tear.rotate_left(boots));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// Power lost at a random word (1 to 3 times), the in-progress word torn: after every
    /// reboot, (a) no released reading reappears except those of an interrupted release,
    /// (b) every completed, unreleased reading is back with its value and seq, (c) the counter
    /// neither goes back nor jumps, (d) restore never fails or panics and its seqs are
    /// consecutive.
    #[test]
    fn power_loss_anywhere_keeps_the_promises(
        ops in proptest::collection::vec(op(), 1..60),
        crashes in proptest::collection::vec(0.0f64..1.0, 1..4),
        tear in any::<u64>(),
        geometry in 0u8..3,
    ) {
        match geometry {
            0 => crash_run::<4, 256>(&ops, &crashes, tear)?,
            1 => crash_run::<8, 512>(&ops, &crashes, tear)?,
            _ => crash_run::<4, 128>(&ops, &crashes, tear)?,
        };
    }
}

/// Every single crash point of one fixed workload, deterministically (the proptest samples),
/// on a workload that wraps the queue's ring of pages and migrates the counter map.
#[test]
fn power_loss_at_every_word_of_a_fixed_workload() {
    let ops: Vec<Op> = (0..48u64)
        .flat_map(|i| {
            let mut v = vec![Op::Record(i * 7919), Op::Record(i * 104729)];
            match i % 4 {
                0 => v.push(Op::Release(3)),
                1 | 3 => v.push(Op::Release(100)),
                _ => {}
            }
            if i % 13 == 12 {
                v.push(Op::Restart);
            }
            v
        })
        .collect();
    STATS.with(|s| *s.borrow_mut() = Stats::default());
    let mut flash = new_flash::<4, 256>();
    drive(&mut flash, &ops, None).unwrap();
    let total = flash.word_ops;
    let page_erases =
        |flash: &SimFlash<4, 256>, pages: Range<u32>| pages.map(|p| flash.erases[p as usize]).min();
    assert!(
        page_erases(&flash, 0..2) >= Some(2),
        "the counter map migrated between its pages"
    );
    assert!(
        page_erases(&flash, 2..8) >= Some(2),
        "the queue wrapped around its pages"
    );
    for at in 0..total {
        let mut flash = new_flash::<4, 256>();
        if let Err(e) = drive(&mut flash, &ops, Some((&[at], at))) {
            panic!("power loss after {at} of {total} word operations: {e}");
        }
    }
    STATS.with(|s| {
        let s = s.borrow();
        assert_eq!(s.crashes, total);
        assert!(
            s.resurrected > 0 && s.release_partial > 0 && s.torn_record_kept > 0 && s.torn_record_lost > 0,
            "{s:?}"
        );
    });
}

// ---------------------------------------------------------------------------------------------
// Back out through the uplink
// ---------------------------------------------------------------------------------------------

#[test]
fn restored_readings_go_out_again_under_their_old_seqs() {
    let mut flash = new_flash::<4, 256>();
    let mut j = journal(&mut flash);
    j.restore_blocking(BOOT, &mut []).unwrap();
    for seq in 0..6 {
        j.record_blocking(seq, &reading(seq)).unwrap();
    }
    j.release_below_blocking(2).unwrap();
    drop(j);

    // Reset: restore, rebuild the buffer and the uplink from it.
    let mut scratch = [Reading::default(); 8];
    let mut j = journal(&mut flash);
    let r = j.restore_blocking(1, &mut scratch).unwrap();
    assert_eq!((r.first_seq, r.next_seq), (2, 6));
    let buffer = Buffer::restore(
        vec![Reading::default(); 8],
        OverflowPolicy::DropOldest,
        r.first_seq,
        scratch[..r.len()].iter().copied(),
    );
    let mut up: Uplink<Vec<Reading>, 1024> =
        Uplink::with_buffer(Config::new("dev-1", r.boot_id).unwrap(), buffer, 0);

    let batch = first_batch(&mut up);
    assert_eq!((batch.boot_id, batch.first_seq, batch.low_seq), (BOOT, 2, 2));
    assert_eq!(
        batch.readings.iter().map(key).collect::<Vec<_>>(),
        (2..6).map(|i| key(&reading(i))).collect::<Vec<_>>()
    );
    assert_eq!(up.counters().resent, 4, "restored readings count as resends");
    // New readings continue the numbering, and the journal takes them.
    let seq = up.push(reading(6), 100).unwrap();
    assert_eq!(seq, 6);
    j.record_blocking(seq, &reading(6)).unwrap();
}

/// Runs the uplink against a broker that accepts everything until it publishes a batch.
fn first_batch(up: &mut Uplink<Vec<Reading>, 1024>) -> Batch {
    let mut now = 0;
    for _ in 0..50 {
        match up.poll(now) {
            Action::Connect => up.on_connected(now),
            Action::Transmit => {
                let bytes = up.transmit().to_vec();
                up.consume_tx(bytes.len());
                match bytes[0] >> 4 {
                    1 => up.on_received(&[0x20, 0x02, 0x00, 0x00], now),
                    8 => up.on_received(&[0x90, 0x03, bytes[2], bytes[3], 0x01], now),
                    3 => {
                        let Ok(Packet::Publish {
                            topic, pid, payload, ..
                        }) = codec::parse(&bytes)
                        else {
                            panic!("bad publish")
                        };
                        if topic.starts_with("sensors/") {
                            return wire::decode(payload).unwrap();
                        }
                        let pid = pid.unwrap().to_be_bytes();
                        up.on_received(&[0x40, 0x02, pid[0], pid[1]], now);
                    }
                    _ => {}
                }
            }
            Action::Wait(t) => now = t,
            Action::Close => panic!("session closed: {:?}", up.last_error()),
        }
    }
    panic!("no batch published");
}
