//! Unacknowledged readings and the sequence counter in NOR flash, so a reset loses neither.
//!
//! A [`Journal`] mirrors the uplink's [`Buffer`] in flash through
//! [`sequential-storage`](https://docs.rs/sequential-storage) 8 over any
//! `embedded-storage-async` [`MultiwriteNorFlash`]. The app drives it with three calls:
//!
//! ```text
//! boot:   let r = journal.restore(random_boot_id, &mut scratch).await?;
//!         let buffer = Buffer::restore(slots, policy, r.first_seq, scratch[..r.len()].iter().copied());
//!         let uplink = Uplink::with_buffer(Config::new(id, r.boot_id)?, buffer, now);
//! sample: let seq = uplink.push(reading, now)?;  journal.record(seq, &reading).await?;
//!         (before the next `poll`, so nothing goes on the wire before it is in flash)
//! ack:    journal.release_below(uplink.buffer().low_seq()).await?;
//!         (after every ack, and after an overflow drop)
//! ```
//!
//! # Flash layout
//! Two disjoint, page-aligned ranges of the same flash:
//!
//! - **queue** (a `sequential_storage::queue`, at least 2 pages): one item per recorded reading,
//!   oldest first, each [`ENTRY_LEN`] bytes of fixed little-endian fields:
//!
//!   | bytes | field |
//!   |---|---|
//!   | 0 | format tag, `1` |
//!   | 1 | reserved, `0` |
//!   | 2..4 | `channel` (u16) |
//!   | 4..12 | `seq` (u64) |
//!   | 12..20 | `timestamp_ms` (u64) |
//!   | 20..24 | `value` (f32 bits) |
//!
//!   sequential-storage adds an 8-byte header (data CRC, length, length CRC) and pads both to
//!   the flash word, so an entry takes 32 bytes on flash with words of up to 8 bytes. Releasing
//!   a reading overwrites its header CRC with zeros, which is why the flash must be
//!   [`MultiwriteNorFlash`]. When the queue is full, recording drops the oldest page of entries,
//!   like [`OverflowPolicy::DropOldest`](crate::buffer::OverflowPolicy) does in RAM; size the
//!   range with [`Journal::capacity`] so that it never happens before the RAM buffer overflows.
//! - **counter** (a `sequential_storage::map`, at least 2 pages): one key, `0`, whose value is
//!   13 bytes: tag `1`, `boot_id` (u32), `next_seq` (u64), little-endian.
//!
//! # Invariants
//! - After a reset, `next_seq = max(counter.next_seq, highest queued seq + 1)`. The counter is
//!   written only when a release is about to empty the queue (and the stored value is behind),
//!   so an empty queue still knows where numbering stands; while the queue holds anything, its
//!   newest entry does. The counter never goes backwards and never runs ahead of the numbers
//!   handed out, so a reset makes no gap the gateway would count as a device-side drop.
//! - A power loss tears at most the one operation in progress: a torn record is absent after
//!   the reset (its sequence number is then handed out again, which is safe because it never
//!   left the device); a torn release leaves a suffix of the readings it was releasing, which
//!   are sent again (at-least-once; the gateway drops duplicates by `(device, boot, seq)`).
//! - [`Journal::restore`] returns consecutive readings ending at `next_seq - 1`. Entries that
//!   break that run (a gap left by a failed record, an entry whose bytes do not decode) are
//!   skipped and counted in [`Restored::discarded`], never trusted.
//! - If the counter is missing (fresh flash), or restore meets anything sequential-storage
//!   cannot repair, nothing is trusted: both ranges are erased and a new boot starts at seq 0
//!   with the caller's boot id ([`Restored::resumed`] is `false`). If `record` or
//!   `release_below` meets such damage later, the queue alone starts over: the counter is
//!   brought up to date first, the boot is kept, and the queued readings keep only their RAM
//!   copy.
//! - Nothing panics on flash contents and nothing allocates.
//!
//! # Flash words
//! The flash word (the larger of its read and write sizes) must be at least [`MIN_WORD`], 4
//! bytes; [`Journal::new`] refuses smaller. A power loss can tear an item's 8-byte header, and
//! sequential-storage writes the next item at the first erased header-sized window, which can
//! start inside the torn header: the next item's first word then completes it. With 1-byte
//! words the power-loss proptest found it (a header torn before its last byte, completed by the
//! next header's first byte, one chance in 256): the completed header claimed a length that
//! swallowed the reading recorded after it, which was lost, and the counter went back. With
//! 4-byte words completing a header takes a 32-bit collision. Flash that programs single bytes
//! (an RP2040's QSPI flash, say) is given to the journal through a driver that writes 4-byte
//! words.
//!
//! # Costs and limits
//! - No sequential-storage cache: each call reads the page markers and walks the items it
//!   needs (a record scans the page being filled, a restore the whole queue). No RAM beyond a
//!   32-byte scratch, nothing that can go stale; a cache is a later optimisation.
//! - Wear: one counter item (24 bytes with 4-byte words) per release that empties the queue
//!   and finds the counter behind, i.e. at most one per ack; the map erases one of its pages
//!   every `page / 24` of them. Give the counter more pages for more endurance.
//! - A record that fails with a flash error (power still on) leaves its reading in RAM only;
//!   if the device resets before a later record or an emptying release, that sequence number
//!   can be handed out again after the reset.
//! - Bit rot in the newest counter copy makes sequential-storage's map return the previous
//!   copy; with an empty queue that too can hand a number out again. Garbage in space the
//!   crate believes erased spoils the write that lands there (read back as torn, skipped).

use core::ops::Range;

use embedded_storage_async::nor_flash::{MultiwriteNorFlash, NorFlash};
use sequential_storage::cache::{Cache, Uncached};
use sequential_storage::map::{MapConfig, MapStorage, SerializationError, Value};
use sequential_storage::queue::{QueueConfig, QueueStorage};

use crate::buffer::{Buffer, OverflowPolicy, Storage};
use crate::wire::Reading;
use crate::Error;

/// The smallest flash word the journal accepts (see the module doc, "Flash words").
pub const MIN_WORD: usize = 4;

/// Bytes of one queue entry before sequential-storage's header and padding.
pub const ENTRY_LEN: usize = 24;
const ENTRY_TAG: u8 = 1;
const COUNTER_KEY: u8 = 0;
const COUNTER_LEN: usize = 13;
const COUNTER_TAG: u8 = 1;
/// sequential-storage's item header, before padding to the flash word.
const ITEM_HEADER: usize = 8;

/// Scratch for one item as sequential-storage reads and writes it: the longest item rounded up
/// to the largest flash word the crate supports (32 bytes). Aligned because some flash drivers
/// write straight from the buffer and want it word-aligned in RAM.
#[repr(C, align(8))]
struct ItemBuf([u8; 32]);

impl ItemBuf {
    fn new() -> Self {
        ItemBuf([0; 32])
    }
}

/// The queue of entries, over the journal's flash. Uncached: every operation reads the page
/// states and items it needs from flash, which costs reads but no RAM and cannot go stale.
type Queue<'a, F> = QueueStorage<&'a mut F, Cache<Uncached, Uncached, Uncached>>;
/// The map holding the counter, over the journal's flash.
type CounterMap<'a, F> = MapStorage<u8, &'a mut F, Cache<Uncached, Uncached, Uncached, u8>>;

/// What [`Journal::restore`] found: the boot to continue and the readings to send again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The boot to stamp on batches: the stored one when resumed, else the caller's new one.
    pub boot_id: u32,
    /// Sequence number of the first restored reading (`== next_seq` when none).
    pub first_seq: u64,
    /// Sequence number the next new reading gets.
    pub next_seq: u64,
    /// `true` when the state came from flash; `false` when a new boot was started.
    pub resumed: bool,
    /// Entries found in flash but not restored: not part of the consecutive run ending at
    /// `next_seq - 1`, undecodable, or beyond the caller's scratch space.
    pub discarded: u64,
}

impl Restored {
    /// How many readings were restored into the caller's slice (its first `len()` items).
    pub fn len(&self) -> usize {
        (self.next_seq - self.first_seq) as usize
    }

    /// Whether no reading was restored.
    pub fn is_empty(&self) -> bool {
        self.first_seq == self.next_seq
    }
}

/// What the journal knows about the flash since [`Journal::restore`].
#[derive(Debug, Clone, Copy)]
struct State {
    boot_id: u32,
    /// `next_seq` as stored in the counter.
    counter: u64,
    /// Sequence number after the highest one ever handed to `record` (even if it failed).
    high: u64,
    /// Sequence number of the newest entry in the queue, `None` when the queue is empty.
    newest: Option<u64>,
    /// A lower bound of the oldest entry's sequence number, `None` when the queue is empty:
    /// a release below it has nothing to pop.
    oldest: Option<u64>,
}

/// The flash mirror of the unacknowledged readings and the sequence counter.
///
/// `F` is the whole flash (or a partition of it); the two ranges are addresses in it. Call
/// [`Journal::restore`] once after every reset before [`Journal::record`] or
/// [`Journal::release_below`]; until then they fail with [`Error::Storage`].
///
/// Every method returns [`Error::Storage`] if the flash fails. The RAM buffer is unaffected,
/// so the device can keep going; what is durable is decided by the next `restore`.
#[derive(Debug)]
pub struct Journal<F> {
    flash: F,
    queue: Range<u32>,
    counter: Range<u32>,
    state: Option<State>,
}

/// How an error from sequential-storage is treated.
enum Fault {
    /// The flash itself failed (or is misconfigured): report it.
    Io,
    /// The contents cannot be trusted: start over.
    Corrupt,
}

fn fault<E>(e: &sequential_storage::Error<E>) -> Fault {
    use sequential_storage::Error as E;
    match e {
        E::Corrupted { .. } | E::LogicBug { .. } | E::BufferTooSmall(_) | E::SerializationError(_) => {
            Fault::Corrupt
        }
        _ => Fault::Io,
    }
}

fn storage_err<E>(_: sequential_storage::Error<E>) -> Error {
    Error::Storage
}

/// The flash word as sequential-storage sees it: the larger of the read and write sizes.
const fn word<F: NorFlash>() -> usize {
    if F::WRITE_SIZE > F::READ_SIZE {
        F::WRITE_SIZE
    } else {
        F::READ_SIZE
    }
}

/// Bytes one recorded reading occupies in the queue range on flash `F`.
pub const fn entry_footprint<F: NorFlash>() -> usize {
    ITEM_HEADER.next_multiple_of(word::<F>()) + ENTRY_LEN.next_multiple_of(word::<F>())
}

impl<F: MultiwriteNorFlash> Journal<F> {
    /// A journal keeping readings in `queue` and the counter in `counter`, two disjoint ranges
    /// of whole pages (at least two each) inside `flash`. Touches no flash.
    pub fn new(flash: F, queue: Range<u32>, counter: Range<u32>) -> Result<Self, Error> {
        let page = F::ERASE_SIZE as u32;
        let fits = |r: &Range<u32>| {
            r.start < r.end && r.end - r.start >= 2 * page && r.end as usize <= flash.capacity()
        };
        if QueueConfig::<F>::try_new(queue.clone()).is_err()
            || MapConfig::<F>::try_new(counter.clone()).is_err()
            || !fits(&queue)
            || !fits(&counter)
            || (queue.start < counter.end && counter.start < queue.end)
            || word::<F>() > 32
            || word::<F>() < MIN_WORD
            || Self::per_page() == 0
        {
            return Err(Error::Storage);
        }
        Ok(Journal {
            flash,
            queue,
            counter,
            state: None,
        })
    }

    /// Entries that fit in one queue page.
    fn per_page() -> usize {
        F::ERASE_SIZE.saturating_sub(2 * word::<F>()) / entry_footprint::<F>()
    }

    /// How many unreleased readings the queue holds without dropping any: every page but one
    /// (the one being filled when the oldest page would have to be erased). Torn writes after
    /// a power loss waste a little of it until their page is reused.
    pub fn capacity(&self) -> usize {
        let pages = (self.queue.end - self.queue.start) as usize / F::ERASE_SIZE;
        (pages - 1) * Self::per_page()
    }

    /// The flash back, e.g. to hand it to something else.
    pub fn into_inner(self) -> F {
        self.flash
    }

    fn queue_storage(&mut self) -> Result<Queue<'_, F>, Error> {
        let config = QueueConfig::try_new(self.queue.clone()).map_err(|_| Error::Storage)?;
        Ok(QueueStorage::new(&mut self.flash, config, Cache::new_uncached()))
    }

    fn counter_storage(&mut self) -> Result<CounterMap<'_, F>, Error> {
        let config = MapConfig::try_new(self.counter.clone()).map_err(|_| Error::Storage)?;
        Ok(MapStorage::new(&mut self.flash, config, Cache::new_uncached()))
    }

    /// Reads back the state a reset left: the boot to continue, the next sequence number and
    /// the unreleased readings, written oldest first into `out` (its first [`Restored::len`]
    /// items; if more are stored than `out` holds, the newest are kept).
    ///
    /// On fresh flash, or flash whose contents cannot be trusted, it erases both ranges and
    /// starts a new boot with `fresh_boot_id` (changed if it equals the untrusted stored one)
    /// at seq 0. It returns [`Error::Storage`] only if the flash itself fails; call it again.
    pub async fn restore(&mut self, fresh_boot_id: u32, out: &mut [Reading]) -> Result<Restored, Error> {
        self.state = None;
        let mut buf = ItemBuf::new();
        let stored = match self
            .counter_storage()?
            .fetch_item::<Counter>(&mut buf.0, &COUNTER_KEY)
            .await
        {
            Ok(c) => c,
            Err(e) => match fault(&e) {
                Fault::Io => return Err(Error::Storage),
                Fault::Corrupt => None,
            },
        };
        let Some(counter) = stored else {
            return self.start_fresh(fresh_boot_id).await;
        };
        let scan = match self.scan(out).await {
            Ok(scan) => scan,
            Err(Fault::Io) => return Err(Error::Storage),
            Err(Fault::Corrupt) => {
                let boot_id = if fresh_boot_id == counter.boot_id {
                    fresh_boot_id.wrapping_add(1)
                } else {
                    fresh_boot_id
                };
                return self.start_fresh(boot_id).await;
            }
        };
        let next_seq = scan
            .highest
            .map_or(counter.next_seq, |h| counter.next_seq.max(h.saturating_add(1)));
        let mut discarded = scan.discarded;
        let first_seq = match scan.run {
            // The run ends exactly where numbering resumes: restore it.
            Some(run) if run.end == next_seq => {
                let n = run.end - run.start;
                let cap = out.len() as u64;
                let kept = n.min(cap);
                discarded += n - kept;
                // `scan` filled `out` as a ring indexed by `(seq - run.start) % cap`: when it
                // wrapped, the oldest kept reading sits at `n % cap`.
                if n > cap && cap > 0 {
                    out.rotate_left((n % cap) as usize);
                }
                run.end - kept
            }
            Some(run) => {
                discarded += run.end - run.start;
                next_seq
            }
            None => next_seq,
        };
        self.state = Some(State {
            boot_id: counter.boot_id,
            counter: counter.next_seq,
            high: next_seq,
            newest: scan.highest,
            oldest: scan.front,
        });
        Ok(Restored {
            boot_id: counter.boot_id,
            first_seq,
            next_seq,
            resumed: true,
            discarded,
        })
    }

    /// Erases everything and stores a new boot at seq 0. The counter range is erased first, so
    /// a power loss anywhere in here leaves "no counter": the next restore starts fresh again.
    async fn start_fresh(&mut self, boot_id: u32) -> Result<Restored, Error> {
        self.counter_storage()?.erase_all().await.map_err(storage_err)?;
        self.queue_storage()?.erase_all().await.map_err(storage_err)?;
        let counter = Counter { boot_id, next_seq: 0 };
        let mut buf = ItemBuf::new();
        self.counter_storage()?
            .store_item(&mut buf.0, &COUNTER_KEY, &counter)
            .await
            .map_err(storage_err)?;
        self.state = Some(State {
            boot_id,
            counter: 0,
            high: 0,
            newest: None,
            oldest: None,
        });
        Ok(Restored {
            boot_id,
            first_seq: 0,
            next_seq: 0,
            resumed: false,
            discarded: 0,
        })
    }

    /// Reads the whole queue, tracking the last run of consecutive entries into `out`.
    async fn scan(&mut self, out: &mut [Reading]) -> Result<Scan, Fault> {
        let mut scan = Scan {
            run: None,
            highest: None,
            front: None,
            discarded: 0,
        };
        let mut first = true;
        let mut buf = ItemBuf::new();
        let mut queue = self.queue_storage().map_err(|_| Fault::Io)?;
        let mut iter = queue.iter().await.map_err(|e| fault(&e))?;
        while let Some(entry) = iter.next(&mut buf.0).await.map_err(|e| fault(&e))? {
            let decoded = decode_entry(&entry);
            if first {
                // Undecodable at the front: any release should look at it (and pop it).
                scan.front = Some(decoded.map_or(0, |(seq, _)| seq));
                first = false;
            }
            let Some((seq, reading)) = decoded else {
                scan.discarded += 1;
                continue;
            };
            scan.highest = Some(scan.highest.map_or(seq, |h| h.max(seq)));
            let run = match scan.run {
                Some(run) if run.end == seq => run.start..seq + 1,
                Some(run) => {
                    scan.discarded += run.end - run.start;
                    seq..seq + 1
                }
                None => seq..seq + 1,
            };
            if !out.is_empty() {
                out[((seq - run.start) % out.len() as u64) as usize] = reading;
            }
            scan.run = Some(run);
        }
        Ok(scan)
    }

    /// Appends a reading the uplink accepted as `seq` (the value `Uplink::push` returned).
    /// If the queue is full, its oldest page of entries is dropped to make room.
    ///
    /// `seq` must be above every sequence number recorded since the restore (and at least the
    /// restored `next_seq`); anything else is refused with [`Error::Storage`]. If recording
    /// fails, the reading lives only in RAM: a reset before its release loses it, and the gap
    /// it leaves makes the next restore discard the entries before it.
    pub async fn record(&mut self, seq: u64, reading: &Reading) -> Result<(), Error> {
        let state = self.state.as_mut().ok_or(Error::Storage)?;
        if seq < state.high || seq == u64::MAX {
            return Err(Error::Storage);
        }
        state.high = seq + 1;
        let mut buf = ItemBuf::new();
        encode_entry(seq, reading, &mut buf.0);
        let pushed = self.queue_storage()?.push(&buf.0[..ENTRY_LEN], true).await;
        if let Err(e) = pushed {
            let Fault::Corrupt = fault(&e) else {
                return Err(Error::Storage);
            };
            self.heal(seq + 1).await?;
            self.queue_storage()?
                .push(&buf.0[..ENTRY_LEN], true)
                .await
                .map_err(storage_err)?;
        }
        if let Some(state) = self.state.as_mut() {
            state.newest = Some(seq);
            state.oldest.get_or_insert(seq);
        }
        Ok(())
    }

    /// Forgets every recorded reading with `seq < low_seq` (call it with
    /// `uplink.buffer().low_seq()` after acks and after overflow drops).
    ///
    /// If that empties the queue, the counter is brought up to date first, so the numbering
    /// survives a reset with nothing queued. A power loss in here leaves some of these readings
    /// in flash; they are restored and sent again.
    pub async fn release_below(&mut self, low_seq: u64) -> Result<(), Error> {
        let state = *self.state.as_ref().ok_or(Error::Storage)?;
        let empties = state.newest.is_none_or(|newest| newest < low_seq);
        if empties {
            self.store_counter(state.boot_id, low_seq.max(state.high)).await?;
        }
        if state.oldest.is_none_or(|oldest| oldest >= low_seq) {
            return Ok(());
        }
        match self.pop_below(low_seq).await {
            Ok(oldest) => {
                if let Some(s) = self.state.as_mut() {
                    s.oldest = oldest;
                    if oldest.is_none() {
                        s.newest = None;
                    }
                }
                Ok(())
            }
            Err(Fault::Corrupt) => self.heal(low_seq.max(state.high)).await,
            Err(Fault::Io) => Err(Error::Storage),
        }
    }

    /// Pops entries from the front while they are below `low_seq`; returns the first one kept.
    async fn pop_below(&mut self, low_seq: u64) -> Result<Option<u64>, Fault> {
        let mut buf = ItemBuf::new();
        let mut queue = self.queue_storage().map_err(|_| Fault::Io)?;
        let mut iter = queue.iter().await.map_err(|e| fault(&e))?;
        while let Some(entry) = iter.next(&mut buf.0).await.map_err(|e| fault(&e))? {
            match decode_entry(&entry) {
                Some((seq, _)) if seq >= low_seq => return Ok(Some(seq)),
                // Released, or garbage at the front: either way it goes.
                _ => {
                    entry.pop().await.map_err(|e| fault(&e))?;
                }
            }
        }
        Ok(None)
    }

    /// The queue is damaged beyond what sequential-storage repairs by itself (only seen with
    /// flash corrupted from outside, e.g. a flipped page marker): start the queue over, keeping
    /// the boot. The counter is brought up to `next_seq` first, so the numbering is safe; the
    /// readings that were queued stay in RAM but lose their flash copy.
    async fn heal(&mut self, next_seq: u64) -> Result<(), Error> {
        let state = self.state.ok_or(Error::Storage)?;
        self.store_counter(state.boot_id, next_seq).await?;
        self.queue_storage()?.erase_all().await.map_err(storage_err)?;
        if let Some(s) = self.state.as_mut() {
            s.newest = None;
            s.oldest = None;
        }
        Ok(())
    }

    /// Stores the counter unless the stored one is already at `next_seq` or beyond.
    async fn store_counter(&mut self, boot_id: u32, next_seq: u64) -> Result<(), Error> {
        if self.state.is_some_and(|s| s.counter >= next_seq) {
            return Ok(());
        }
        let mut buf = ItemBuf::new();
        let counter = Counter { boot_id, next_seq };
        self.counter_storage()?
            .store_item(&mut buf.0, &COUNTER_KEY, &counter)
            .await
            .map_err(storage_err)?;
        if let Some(s) = self.state.as_mut() {
            s.counter = next_seq;
        }
        Ok(())
    }

    /// [`Journal::restore`] for callers without an executor (busy-polls the flash futures).
    pub fn restore_blocking(&mut self, fresh_boot_id: u32, out: &mut [Reading]) -> Result<Restored, Error> {
        embassy_futures::block_on(self.restore(fresh_boot_id, out))
    }

    /// [`Journal::record`] for callers without an executor.
    pub fn record_blocking(&mut self, seq: u64, reading: &Reading) -> Result<(), Error> {
        embassy_futures::block_on(self.record(seq, reading))
    }

    /// [`Journal::release_below`] for callers without an executor.
    pub fn release_below_blocking(&mut self, low_seq: u64) -> Result<(), Error> {
        embassy_futures::block_on(self.release_below(low_seq))
    }
}

/// A journal as a board image's main loop uses it (blocking calls, from the sampling step):
/// [`Keeper::boot`] restores the buffer, [`Keeper::record`] journals each pushed reading before
/// the uplink can send it, [`Keeper::release`] forgets what the gateway acknowledged. A journal
/// that cannot be used is reported through `report` (the serial log) and set aside: the node
/// goes on with its readings in RAM only.
pub struct Keeper<F> {
    journal: Option<Journal<F>>,
    released: u64,
    report: fn(core::fmt::Arguments<'_>),
}

impl<F> core::fmt::Debug for Keeper<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keeper")
            .field("journaling", &self.journal.is_some())
            .field("released", &self.released)
            .finish_non_exhaustive()
    }
}

impl<F: MultiwriteNorFlash> Keeper<F> {
    /// Restores what `journal` holds into a buffer over `slots` (through `scratch`, which
    /// bounds how many readings come back); returns the keeper, the boot id to stamp on
    /// batches (the journal's when it resumed one, else `fresh_boot_id`) and the buffer.
    pub fn boot<S: Storage>(
        journal: Result<Journal<F>, Error>,
        fresh_boot_id: u32,
        scratch: &mut [Reading],
        slots: S,
        policy: OverflowPolicy,
        report: fn(core::fmt::Arguments<'_>),
    ) -> (Self, u32, Buffer<S>) {
        let restored = journal.and_then(|mut j| j.restore_blocking(fresh_boot_id, scratch).map(|r| (j, r)));
        match restored {
            Ok((j, r)) => {
                if r.resumed {
                    report(format_args!(
                        "journal: boot {:#x} resumed at reading {}, {} to send again ({} discarded)",
                        r.boot_id,
                        r.next_seq,
                        r.len(),
                        r.discarded
                    ));
                }
                let buffer = Buffer::restore(slots, policy, r.first_seq, scratch[..r.len()].iter().copied());
                let keeper = Keeper {
                    journal: Some(j),
                    released: r.first_seq,
                    report,
                };
                (keeper, r.boot_id, buffer)
            }
            Err(e) => {
                report(format_args!("journal: {e:?}: readings are kept in RAM only"));
                let keeper = Keeper {
                    journal: None,
                    released: 0,
                    report,
                };
                (keeper, fresh_boot_id, Buffer::new(slots, policy, 0))
            }
        }
    }

    /// Journals a reading the uplink accepted as `seq`. Call it before the uplink is polled
    /// again. If it fails, the reading lives in RAM only (reported).
    pub fn record(&mut self, seq: u64, reading: &Reading) {
        let Some(j) = self.journal.as_mut() else { return };
        if let Err(e) = j.record_blocking(seq, reading) {
            (self.report)(format_args!(
                "journal: recording reading {seq}: {e:?} (kept in RAM only)"
            ));
        }
    }

    /// Forgets the readings below `low_seq` (the buffer's `low_seq()`: acknowledged, or dropped
    /// for overflow) if it moved since the last call.
    pub fn release(&mut self, low_seq: u64) {
        if low_seq <= self.released {
            return;
        }
        self.released = low_seq;
        let Some(j) = self.journal.as_mut() else { return };
        if let Err(e) = j.release_below_blocking(low_seq) {
            (self.report)(format_args!("journal: releasing below {low_seq}: {e:?}"));
        }
    }

    /// Whether readings are journaled (false once the journal was set aside at boot).
    pub fn journaling(&self) -> bool {
        self.journal.is_some()
    }
}

/// What a pass over the queue found.
struct Scan {
    /// The last run of consecutive sequence numbers, as `first..last + 1`.
    run: Option<Range<u64>>,
    /// The highest sequence number of any decodable entry.
    highest: Option<u64>,
    /// The first entry's sequence number (0 if it does not decode), `None` if the queue is empty.
    front: Option<u64>,
    /// Entries that are not part of `run`.
    discarded: u64,
}

fn encode_entry(seq: u64, r: &Reading, out: &mut [u8; 32]) {
    out[0] = ENTRY_TAG;
    out[1] = 0;
    out[2..4].copy_from_slice(&r.channel.to_le_bytes());
    out[4..12].copy_from_slice(&seq.to_le_bytes());
    out[12..20].copy_from_slice(&r.timestamp_ms.to_le_bytes());
    out[20..24].copy_from_slice(&r.value.to_bits().to_le_bytes());
}

fn decode_entry(bytes: &[u8]) -> Option<(u64, Reading)> {
    let b: &[u8; ENTRY_LEN] = bytes.try_into().ok()?;
    if b[0] != ENTRY_TAG || b[1] != 0 {
        return None;
    }
    let seq = u64_at(b, 4);
    if seq == u64::MAX {
        // Never recorded (`record` refuses it), and `seq + 1` must not overflow.
        return None;
    }
    let reading = Reading {
        channel: u16::from_le_bytes([b[2], b[3]]),
        timestamp_ms: u64_at(b, 12),
        value: f32::from_bits(u32::from_le_bytes([b[20], b[21], b[22], b[23]])),
    };
    Some((seq, reading))
}

fn u64_at(b: &[u8; ENTRY_LEN], i: usize) -> u64 {
    let mut x = [0; 8];
    x.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(x)
}

/// The counter record: which boot, and where its numbering stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counter {
    boot_id: u32,
    next_seq: u64,
}

impl<'a> Value<'a> for Counter {
    fn serialize_into(&self, buffer: &mut [u8]) -> Result<usize, SerializationError> {
        let out = buffer
            .get_mut(..COUNTER_LEN)
            .ok_or(SerializationError::BufferTooSmall)?;
        out[0] = COUNTER_TAG;
        out[1..5].copy_from_slice(&self.boot_id.to_le_bytes());
        out[5..13].copy_from_slice(&self.next_seq.to_le_bytes());
        Ok(COUNTER_LEN)
    }

    fn deserialize_from(buffer: &'a [u8]) -> Result<(Self, usize), SerializationError> {
        let b: &[u8; COUNTER_LEN] = buffer.try_into().map_err(|_| SerializationError::InvalidFormat)?;
        if b[0] != COUNTER_TAG {
            return Err(SerializationError::InvalidFormat);
        }
        let boot_id = u32::from_le_bytes([b[1], b[2], b[3], b[4]]);
        let next_seq = u64::from_le_bytes([b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12]]);
        Ok((Counter { boot_id, next_seq }, COUNTER_LEN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entries_round_trip(seq in any::<u64>(), channel in any::<u16>(), ts in any::<u64>(), bits in any::<u32>()) {
            let r = Reading { channel, timestamp_ms: ts, value: f32::from_bits(bits) };
            let mut buf = [0xAA; 32];
            encode_entry(seq, &r, &mut buf);
            let (s, got) = decode_entry(&buf[..ENTRY_LEN]).unwrap();
            prop_assert_eq!(s, seq);
            prop_assert_eq!((got.channel, got.timestamp_ms, got.value.to_bits()), (channel, ts, bits));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = decode_entry(&bytes);
            let _ = Counter::deserialize_from(&bytes);
        }
    }

    #[test]
    fn foreign_entries_are_rejected() {
        let mut buf = [0; 32];
        encode_entry(5, &Reading::default(), &mut buf);
        assert!(decode_entry(&buf[..ENTRY_LEN - 1]).is_none(), "short");
        assert!(decode_entry(&buf[..ENTRY_LEN + 1]).is_none(), "long");
        buf[0] = 2;
        assert!(decode_entry(&buf[..ENTRY_LEN]).is_none(), "unknown tag");
    }

    #[test]
    fn counter_round_trips_and_rejects_foreign_values() {
        let c = Counter {
            boot_id: 0xDEAD_BEEF,
            next_seq: u64::MAX - 1,
        };
        let mut buf = [0; 32];
        let n = c.serialize_into(&mut buf).unwrap();
        assert_eq!(Counter::deserialize_from(&buf[..n]).unwrap(), (c, COUNTER_LEN));
        assert!(Counter::deserialize_from(&buf[..n - 1]).is_err());
        buf[0] = 9;
        assert!(Counter::deserialize_from(&buf[..n]).is_err());
        assert_eq!(
            c.serialize_into(&mut [0; 12]),
            Err(SerializationError::BufferTooSmall)
        );
    }
}
