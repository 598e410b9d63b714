//! The node-wide Raft store: every group's log, vote and state machine state in one redb file,
//! written by one thread.
//!
//! | table | key | value |
//! |---|---|---|
//! | `raft_log` | `(group, index)` | a postcard-encoded openraft entry, sealed |
//! | `offset_index` | `(group, first offset of an Append entry)` | the entry's index |
//! | `group_state` | `(group, slot)` | vote, committed id, purged id, machine state, snapshot; sealed |
//! | `sealed` | `(group, base offset)` | a batch that arrived in a snapshot (not in the log) |
//! | `layout` | `"version"` | [`LAYOUT_VERSION`] |
//!
//! "Sealed" is [`foundation::redb::seal`]: the value and a CRC-32C over its key and bytes,
//! checked on every read (redb returns a flipped bit as data). A value that fails, and an
//! `offset_index` row that points at an entry not starting at its offset, fail the read that
//! met them, are logged and reported ([`NodeStore::damage`], `/health`): openraft stops that
//! group on this node (its other replicas hold the data), the node's other groups go on.
//!
//! # Never a rolled-back log
//! A node whose storage lost entries it had acknowledged must not vote or lead with that log
//! (how Jepsen's NATS report lost committed data): a quorum may have counted those entries. So
//! after each durable commit the store raises, per group, the end of the log it holds
//! (`node.redb.acked`; lowered only by Raft's own truncation of uncommitted entries) and the
//! term of its vote (`node.redb.voted`) ([`foundation::watermarks`]). A node whose file opens
//! below either refuses to start, naming the groups: it is replaced (`cluster replace`) by a
//! node that catches up from its peers. Unlike the single-node stores, commits here do not use
//! redb's quick repair (a second fsync per commit: p99 at 50,000 records/s went from 31 to 44 ms
//! in `cloud-bench`, BENCHMARKS.md): a node's safety comes from its peers, so a restart after a
//! crash walks the file, and a file that walk refuses (a damaged page) or that rolled back (a
//! damaged commit slot, caught by the marks) means replacing the node.
//!
//! # Group commit
//! Writes are jobs on a queue. The writer thread takes every job waiting, applies them in order
//! in one write transaction, and commits it once: with `Durability::Immediate` (one fsync) when
//! any job must be durable (log appends, votes, truncation), with `Durability::None` otherwise
//! (machine state, which the log can rebuild). A later immediate commit makes earlier
//! non-durable ones durable too. Only then are the jobs answered, so an append is reported
//! flushed to openraft strictly after its fsync (openraft loses committed entries on a leader
//! change otherwise), and many groups' appends share one fsync.
//!
//! # The MUST rules this store keeps for openraft
//! - `append` returns once the entries are readable and durable; its callback fires after that;
//! - `save_vote` is durable before it returns;
//! - writes of one group are applied in the order they were made (one FIFO queue).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc};

use foundation::redb::Reopening;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;
use tracing::warn;

use super::{io_err, Command, TypeConfig};
use crate::batch;
use crate::sm::partition::PartitionCommand;

mod marks;

use marks::Marks;

/// The on-disk layout this build writes: 2 added the metadata's record of replaced nodes; 3
/// sealed every log entry and group state value with a checksum; 4 added each partition's
/// transactions to its state, and transaction states and pending offsets to the offsets logs'.
pub const LAYOUT_VERSION: u64 = 4;

/// Older layouts this build reads and upgrades on open (in the transaction that records
/// [`LAYOUT_VERSION`]): layouts 1 and 2 have their values sealed; states of layouts 1 to 3
/// are then decoded by their own shape (see the state machine) and written back in this one
/// at the group's next apply.
pub const READS_LAYOUTS: &[u64] = &[1, 2, 3];

pub(super) const LOG: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("raft_log");
pub(super) const OFFSET_INDEX: TableDefinition<(u64, i64), u64> = TableDefinition::new("offset_index");
pub(super) const GROUP_STATE: TableDefinition<(u64, u8), &[u8]> = TableDefinition::new("group_state");
pub(super) const SEALED: TableDefinition<(u64, i64), &[u8]> = TableDefinition::new("sealed");

/// Slots of `group_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Slot {
    /// The group's vote.
    Vote = 0,
    /// The last committed log id openraft told us.
    Committed = 1,
    /// The last purged log id.
    Purged = 2,
    /// The state machine's applied state.
    Machine = 3,
    /// The current snapshot (meta and state).
    Snapshot = 4,
}

/// Whether durable commits use redb's quick repair (see the module doc: not on a cluster node).
const QUICK_REPAIR: bool = false;

/// Most jobs committed in one transaction.
const MAX_JOBS_PER_COMMIT: usize = 4096;

/// A change to the store.
#[derive(Debug)]
enum Op {
    Append {
        group: u64,
        /// `(index, encoded entry, first offset of its batches if it appends any)`.
        entries: Vec<(u64, Vec<u8>, Option<i64>)>,
    },
    Put {
        group: u64,
        slot: Slot,
        value: Vec<u8>,
    },
    /// Delete entries after `after` (all when `None`) and their index rows.
    TruncateAfter {
        group: u64,
        after: Option<u64>,
    },
    /// Delete entries up to `upto` and their index rows; record the purged id.
    Purge {
        group: u64,
        upto: u64,
        purged: Vec<u8>,
    },
    /// Replace the sealed batches (a snapshot up to entry `upto` arrived): drop the group's
    /// entries up to it, their index rows and its sealed batches first.
    Seal {
        group: u64,
        upto: Option<u64>,
        batches: Vec<(i64, Vec<u8>)>,
    },
    /// Forget a group entirely.
    Drop {
        group: u64,
    },
    /// Nothing: a durable commit of everything before it.
    Sync,
}

struct Job {
    op: Op,
    durable: bool,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The store shared by every group on a node.
#[derive(Debug, Clone)]
pub struct NodeStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Reopening>,
    jobs: std::sync::Mutex<mpsc::Sender<Job>>,
    /// Damaged data met (the first, and how many).
    damage: Arc<std::sync::Mutex<Option<(String, u64)>>>,
}

/// The key bytes a log entry is sealed under.
fn log_key(group: u64, index: u64) -> [u8; 16] {
    let mut k = [0; 16];
    k[..8].copy_from_slice(&group.to_le_bytes());
    k[8..].copy_from_slice(&index.to_le_bytes());
    k
}

/// The key bytes a group state value is sealed under.
pub(super) fn state_key(group: u64, slot: u8) -> [u8; 9] {
    let mut k = [0; 9];
    k[..8].copy_from_slice(&group.to_le_bytes());
    k[8] = slot;
    k
}

/// A sealed value's bytes, or the error for damaged data naming `what`.
fn unsealed<'a>(key: &[u8], bytes: &'a [u8], what: impl FnOnce() -> String) -> io::Result<&'a [u8]> {
    foundation::redb::unseal(key, bytes).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{DAMAGED}: {}: checksum mismatch", what()),
        )
    })
}

/// How an error for damaged stored data starts.
const DAMAGED: &str = "damaged raft store data";

/// Layouts 1 and 2 → 3: every log entry and group state value sealed, in one transaction
/// (layout 3's are sealed already).
fn seal_all(tx: &redb::WriteTransaction, found: u64) -> Result<(), String> {
    if !READS_LAYOUTS.contains(&found) {
        return Err(format!("no upgrade from layout {found}"));
    }
    if found >= 3 {
        return Ok(());
    }
    let run = || -> io::Result<()> {
        let mut log = tx.open_table(LOG).map_err(io_err)?;
        let mut after = Bound::Unbounded;
        loop {
            let mut step = Vec::new();
            for e in log
                .range::<(u64, u64)>((after, Bound::Unbounded))
                .map_err(io_err)?
            {
                let (k, v) = e.map_err(io_err)?;
                step.push((k.value(), v.value().to_vec()));
                if step.len() >= 4096 {
                    break;
                }
            }
            let Some(&(last, _)) = step.last() else { break };
            for ((g, i), v) in step {
                log.insert((g, i), foundation::redb::seal(&log_key(g, i), &v).as_slice())
                    .map_err(io_err)?;
            }
            after = Bound::Excluded(last);
        }
        let mut state = tx.open_table(GROUP_STATE).map_err(io_err)?;
        let rows: Vec<((u64, u8), Vec<u8>)> = state
            .iter()
            .map_err(io_err)?
            .map(|e| e.map(|(k, v)| (k.value(), v.value().to_vec())).map_err(io_err))
            .collect::<io::Result<_>>()?;
        for ((g, slot), v) in rows {
            state
                .insert(
                    (g, slot),
                    foundation::redb::seal(&state_key(g, slot), &v).as_slice(),
                )
                .map_err(io_err)?;
        }
        Ok(())
    };
    run().map_err(|e| e.to_string())
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

/// A stored log entry: its seal checked, then decoded.
pub(super) fn dec_entry((group, index): (u64, u64), bytes: &[u8]) -> io::Result<EntryOf<TypeConfig>> {
    dec(unsealed(&log_key(group, index), bytes, || {
        format!("group {group:#x} log entry {index}")
    })?)
}

fn enc<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(v).map_err(io_err)
}

/// `Reopening::with` for `io::Result`s.
fn with_db<T>(db: &Reopening, f: impl FnOnce(&Database) -> io::Result<T>) -> io::Result<T> {
    struct E(io::Error);
    impl From<foundation::redb::OpenError> for E {
        fn from(e: foundation::redb::OpenError) -> Self {
            E(io_err(e))
        }
    }
    db.with(|d| f(d).map_err(E)).map_err(|E(e)| e)
}

fn missing_ok<T>(r: Result<T, TableError>) -> io::Result<Option<T>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

/// The first offset an entry appends, if it appends batches.
pub(super) fn first_offset(entry: &EntryOf<TypeConfig>) -> Option<i64> {
    match &entry.payload {
        EntryPayload::Normal(Command::Partition(PartitionCommand::Append { batches })) => batches
            .first()
            .and_then(|b| batch::header(b).ok())
            .map(|h| h.base_offset),
        _ => None,
    }
}

impl NodeStore {
    /// Opens (or creates) the store at `path` and starts its writer thread. A file of another
    /// layout version is refused with a message saying so.
    pub fn open(path: &Path) -> io::Result<NodeStore> {
        // The layout version is checked through a read-only handle before anything writes.
        let db = Arc::new(
            Reopening::open_migrating(
                path,
                256 << 20,
                "is a broker node running?",
                LAYOUT_VERSION,
                READS_LAYOUTS,
                &seal_all,
            )
            .map_err(|e| {
                let msg = e.to_string();
                if foundation::redb::is_damaged_header(&msg) {
                    io::Error::other(format!(
                        "{msg}: the newest commit of {} is damaged, and a node may not go on \
                         with less than it acknowledged. Replace it: start a new node with an \
                         empty data directory and --join, then `cloud-broker cluster replace`",
                        path.display()
                    ))
                } else {
                    io_err(e)
                }
            })?,
        );
        let marks = Marks::open(path)?;
        with_db(&db, |db| -> io::Result<()> {
            let tx = db.begin_write().map_err(io_err)?;
            {
                tx.open_table(LOG).map_err(io_err)?;
                tx.open_table(OFFSET_INDEX).map_err(io_err)?;
                tx.open_table(GROUP_STATE).map_err(io_err)?;
                tx.open_table(SEALED).map_err(io_err)?;
            }
            tx.commit().map_err(io_err)
        })?;
        let (tx, rx) = mpsc::channel();
        let store = NodeStore {
            inner: Arc::new(Inner {
                db: db.clone(),
                jobs: std::sync::Mutex::new(tx),
                damage: Arc::new(std::sync::Mutex::new(None)),
            }),
        };
        store.check_marks(path, &marks)?;
        std::thread::Builder::new()
            .name("raft-store".into())
            .spawn(move || writer(db, rx, marks))?;
        Ok(store)
    }

    /// A read transaction over the store, for a whole-store scan.
    pub(super) fn read_tx<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> io::Result<T>,
    ) -> io::Result<T> {
        self.read(f)
    }

    /// redb's check of every page (see [`foundation::redb::Reopening::check_pages`]).
    pub(super) fn check_pages(&self) -> Result<(), String> {
        self.inner.db.check_pages()
    }

    /// Whether opening the file needed redb's full repair.
    pub fn opened_with_repair(&self) -> bool {
        self.inner.db.repaired()
    }

    /// Damaged data the store met, if any: what and how many times.
    pub fn damage(&self) -> Option<String> {
        let d = self.inner.damage.lock().unwrap_or_else(|e| e.into_inner());
        d.as_ref().map(|(what, n)| match n {
            1 => what.clone(),
            n => format!("{what} (and {} more)", n - 1),
        })
    }

    /// Records damage met by a read (an error starting with [`DAMAGED`]).
    fn noted<T>(&self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            let msg = e.to_string();
            if msg.contains(DAMAGED) {
                tracing::error!(damage = %msg, "damaged raft store data: this group stops on this node; its other replicas hold the data");
                let mut d = self.inner.damage.lock().unwrap_or_else(|e| e.into_inner());
                match d.as_mut() {
                    Some((_, n)) => *n += 1,
                    None => *d = Some((msg, 1)),
                }
            }
        }
        r
    }

    fn submit(&self, op: Op, durable: bool) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let job = Job {
            op,
            durable,
            done: Some(tx),
        };
        let jobs = self.inner.jobs.lock().unwrap_or_else(|e| e.into_inner());
        // A send fails only when the writer is gone; the dropped sender then answers the caller.
        let _ = jobs.send(job);
        rx
    }

    async fn write(&self, op: Op, durable: bool) -> io::Result<()> {
        match self.submit(op, durable).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(io::Error::other(e)),
            Err(_) => Err(io::Error::other("the raft store's writer stopped")),
        }
    }

    /// Saves a value of a group without waiting (state the log can rebuild).
    pub fn put_soon(&self, group: u64, slot: Slot, value: Vec<u8>) {
        drop(self.submit(Op::Put { group, slot, value }, false));
    }

    /// Saves a value of a group and waits until it is durable.
    pub async fn put(&self, group: u64, slot: Slot, value: Vec<u8>) -> io::Result<()> {
        self.write(Op::Put { group, slot, value }, true).await
    }

    /// Replaces a group's sealed batches and drops its log up to `upto` (a snapshot of the
    /// state at that entry was installed).
    pub async fn seal(&self, group: u64, upto: Option<u64>, batches: Vec<(i64, Vec<u8>)>) -> io::Result<()> {
        self.write(Op::Seal { group, upto, batches }, true).await
    }

    /// Makes every earlier write durable (before a clean stop).
    pub async fn sync(&self) -> io::Result<()> {
        self.write(Op::Sync, true).await
    }

    /// Why the last write failed, while none has succeeded since (`None`: healthy).
    pub fn write_failure(&self) -> Option<String> {
        self.inner.db.write_failure()
    }

    /// Closes the file for a clean stop (after [`NodeStore::sync`]): later writes and reads
    /// fail.
    pub fn close(&self) {
        self.inner.db.close();
    }

    /// Forgets a group: its log, state and batches.
    pub async fn drop_group(&self, group: u64) -> io::Result<()> {
        self.write(Op::Drop { group }, true).await
    }

    fn read<T>(&self, f: impl FnOnce(&redb::ReadTransaction) -> io::Result<T>) -> io::Result<T> {
        self.noted(with_db(&self.inner.db, |db: &Database| {
            let tx = db.begin_read().map_err(io_err)?;
            f(&tx)
        }))
    }

    /// A value of a group.
    pub fn get(&self, group: u64, slot: Slot) -> io::Result<Option<Vec<u8>>> {
        self.read(|tx| {
            let Some(t) = missing_ok(tx.open_table(GROUP_STATE))? else {
                return Ok(None);
            };
            match t.get((group, slot as u8)).map_err(io_err)? {
                None => Ok(None),
                Some(v) => Ok(Some(
                    unsealed(&state_key(group, slot as u8), v.value(), || {
                        format!("group {group:#x} state slot {slot:?}")
                    })?
                    .to_vec(),
                )),
            }
        })
    }

    /// Log entries of a group in `range`.
    pub fn entries(&self, group: u64, range: impl RangeBounds<u64>) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        let lo = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let hi = match range.end_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        if hi.is_some_and(|hi| hi < lo) {
            return Ok(Vec::new());
        }
        self.read(|tx| {
            let Some(t) = missing_ok(tx.open_table(LOG))? else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for e in t
                .range((group, lo)..=(group, hi.unwrap_or(u64::MAX)))
                .map_err(io_err)?
            {
                let (k, v) = e.map_err(io_err)?;
                out.push(dec_entry(k.value(), v.value())?);
            }
            Ok(out)
        })
    }

    /// The last entry of a group's log.
    fn last_entry(&self, group: u64) -> io::Result<Option<EntryOf<TypeConfig>>> {
        self.read(|tx| {
            let Some(t) = missing_ok(tx.open_table(LOG))? else {
                return Ok(None);
            };
            let last = t
                .range((group, 0)..=(group, u64::MAX))
                .map_err(io_err)?
                .next_back();
            match last {
                Some(e) => {
                    let (k, v) = e.map_err(io_err)?;
                    Ok(Some(dec_entry(k.value(), v.value())?))
                }
                None => Ok(None),
            }
        })
    }

    /// Whole batches of a partition group from the one holding `from`, below `end` (the high
    /// watermark), up to about `max_bytes` (at least one batch if any): sealed batches first,
    /// then the log's.
    pub fn batches(&self, group: u64, from: i64, end: i64, max_bytes: usize) -> io::Result<Vec<u8>> {
        self.read(|tx| {
            let mut out = Vec::new();
            let mut full = false;
            let take = |b: &[u8], out: &mut Vec<u8>| -> bool {
                match batch::header(b) {
                    Ok(h) if h.base_offset >= end => false,
                    _ => crate::storage::gather_batch(out, b, from, max_bytes),
                }
            };
            if let Some(t) = missing_ok(tx.open_table(SEALED))? {
                let start = t
                    .range((group, i64::MIN)..=(group, from))
                    .map_err(io_err)?
                    .next_back()
                    .map(|e| e.map(|(k, _)| k.value().1))
                    .transpose()
                    .map_err(io_err)?
                    .unwrap_or(from);
                for e in t.range((group, start)..=(group, i64::MAX)).map_err(io_err)? {
                    let (k, v) = e.map_err(io_err)?;
                    // Kafka's CRC (checked by the broker) does not cover the base offset.
                    if batch::header(v.value()).map(|h| h.base_offset).ok() != Some(k.value().1) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{DAMAGED}: group {group:#x} sealed batch at offset {}: header disagrees", k.value().1),
                        ));
                    }
                    if !take(v.value(), &mut out) {
                        full = true;
                        break;
                    }
                }
            }
            if full {
                return Ok(out);
            }
            let (Some(index), Some(log)) = (
                missing_ok(tx.open_table(OFFSET_INDEX))?,
                missing_ok(tx.open_table(LOG))?,
            ) else {
                return Ok(out);
            };
            let found = match index
                .range((group, i64::MIN)..=(group, from))
                .map_err(io_err)?
                .next_back()
            {
                Some(e) => e.map(|(k, v)| (k.value().1, v.value())).map_err(io_err)?,
                None => match index
                    .range((group, i64::MIN)..=(group, i64::MAX))
                    .map_err(io_err)?
                    .next()
                {
                    Some(e) => e.map(|(k, v)| (k.value().1, v.value())).map_err(io_err)?,
                    None => return Ok(out),
                },
            };
            let (at, first) = found;
            let mut checked = false;
            'entries: for e in log.range((group, first)..=(group, u64::MAX)).map_err(io_err)? {
                let (k, v) = e.map_err(io_err)?;
                let entry: EntryOf<TypeConfig> = dec_entry(k.value(), v.value())?;
                if !checked {
                    // An index row that points elsewhere would make the read skip records.
                    checked = true;
                    if first_offset(&entry) != Some(at) {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{DAMAGED}: group {group:#x} offset index: offset {at} points at entry {first}, which does not start there"),
                        ));
                    }
                }
                if let EntryPayload::Normal(Command::Partition(PartitionCommand::Append { batches })) =
                    &entry.payload
                {
                    for b in batches {
                        if !take(b, &mut out) {
                            break 'entries;
                        }
                    }
                }
            }
            Ok(out)
        })
    }

    /// The last log index that retention may purge when the partition starts at `log_start`:
    /// the entry before the one holding `log_start` (`None`: nothing may go).
    pub fn purge_point(&self, group: u64, log_start: i64) -> io::Result<Option<u64>> {
        self.read(|tx| {
            let Some(index) = missing_ok(tx.open_table(OFFSET_INDEX))? else {
                return Ok(None);
            };
            let holding = index
                .range((group, i64::MIN)..=(group, log_start))
                .map_err(io_err)?
                .next_back()
                .map(|e| e.map(|(_, v)| v.value()))
                .transpose()
                .map_err(io_err)?;
            Ok(holding.and_then(|i| i.checked_sub(1)))
        })
    }

    /// A handle for one group's log.
    pub fn log(&self, group: u64) -> GroupLog {
        GroupLog {
            store: self.clone(),
            group,
        }
    }
}

fn writer(db: Arc<Reopening>, rx: mpsc::Receiver<Job>, marks: Marks) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_JOBS_PER_COMMIT {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let durable = jobs.iter().any(|j| j.durable);
        let r = with_db(&db, |db: &Database| -> io::Result<()> {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(if durable {
                Durability::Immediate
            } else {
                Durability::None
            })
            .map_err(io_err)?;
            if durable && QUICK_REPAIR {
                tx.set_quick_repair(true);
            }
            {
                let mut log = tx.open_table(LOG).map_err(io_err)?;
                let mut index = tx.open_table(OFFSET_INDEX).map_err(io_err)?;
                let mut state = tx.open_table(GROUP_STATE).map_err(io_err)?;
                let mut sealed = tx.open_table(SEALED).map_err(io_err)?;
                for j in &jobs {
                    apply_op(&j.op, &mut log, &mut index, &mut state, &mut sealed)?;
                }
            }
            tx.commit().map_err(io_err)
        });
        match &r {
            Ok(()) => {
                db.write_succeeded();
                if durable {
                    let ops: Vec<&Op> = jobs.iter().map(|j| &j.op).collect();
                    if let Err(e) = marks.committed(&ops) {
                        warn!(error = %e, "writing the raft store's rollback marks failed");
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, jobs = jobs.len(), "raft store write failed");
                db.write_failed(e);
            }
        }
        for j in jobs {
            if let Some(done) = j.done {
                let _ = done.send(r.as_ref().map(|_| ()).map_err(|e| e.to_string()));
            }
        }
    }
}

type Table<'t, K, V> = redb::Table<'t, K, V>;

fn apply_op(
    op: &Op,
    log: &mut Table<'_, (u64, u64), &'static [u8]>,
    index: &mut Table<'_, (u64, i64), u64>,
    state: &mut Table<'_, (u64, u8), &'static [u8]>,
    sealed: &mut Table<'_, (u64, i64), &'static [u8]>,
) -> io::Result<()> {
    match op {
        Op::Append { group, entries } => {
            for (i, bytes, offset) in entries {
                log.insert(
                    (*group, *i),
                    foundation::redb::seal(&log_key(*group, *i), bytes).as_slice(),
                )
                .map_err(io_err)?;
                if let Some(o) = offset {
                    index.insert((*group, *o), *i).map_err(io_err)?;
                }
            }
        }
        Op::Put { group, slot, value } => {
            let sealed = foundation::redb::seal(&state_key(*group, *slot as u8), value);
            state
                .insert((*group, *slot as u8), sealed.as_slice())
                .map_err(io_err)?;
        }
        Op::TruncateAfter { group, after } => {
            let from = after.map_or(0, |a| a + 1);
            log.retain_in((*group, from)..=(*group, u64::MAX), |_, _| false)
                .map_err(io_err)?;
            index
                .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, i| i < from)
                .map_err(io_err)?;
        }
        Op::Purge { group, upto, purged } => {
            log.retain_in((*group, 0)..=(*group, *upto), |_, _| false)
                .map_err(io_err)?;
            index
                .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, i| i > *upto)
                .map_err(io_err)?;
            let sealed = foundation::redb::seal(&state_key(*group, Slot::Purged as u8), purged);
            state
                .insert((*group, Slot::Purged as u8), sealed.as_slice())
                .map_err(io_err)?;
        }
        Op::Seal { group, upto, batches } => {
            if let Some(upto) = upto {
                log.retain_in((*group, 0)..=(*group, *upto), |_, _| false)
                    .map_err(io_err)?;
                index
                    .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, i| i > *upto)
                    .map_err(io_err)?;
            }
            sealed
                .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, _| false)
                .map_err(io_err)?;
            for (base, b) in batches {
                sealed.insert((*group, *base), b.as_slice()).map_err(io_err)?;
            }
        }
        Op::Sync => {}
        Op::Drop { group } => {
            log.retain_in((*group, 0)..=(*group, u64::MAX), |_, _| false)
                .map_err(io_err)?;
            index
                .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, _| false)
                .map_err(io_err)?;
            sealed
                .retain_in((*group, i64::MIN)..=(*group, i64::MAX), |_, _| false)
                .map_err(io_err)?;
            state
                .retain_in((*group, 0)..=(*group, u8::MAX), |_, _| false)
                .map_err(io_err)?;
        }
    }
    Ok(())
}

/// One group's view of the node store: what openraft calls the log storage.
#[derive(Debug, Clone)]
pub struct GroupLog {
    store: NodeStore,
    group: u64,
}

impl GroupLog {
    fn purged(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        self.store
            .get(self.group, Slot::Purged)?
            .map(|b| dec(&b))
            .transpose()
    }
}

impl RaftLogReader<TypeConfig> for GroupLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<EntryOf<TypeConfig>>> {
        self.store.entries(self.group, range)
    }

    async fn read_vote(&mut self) -> io::Result<Option<VoteOf<TypeConfig>>> {
        self.store
            .get(self.group, Slot::Vote)?
            .map(|b| dec(&b))
            .transpose()
    }
}

impl RaftLogStorage<TypeConfig> for GroupLog {
    type LogReader = GroupLog;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged = self.purged()?;
        let last = self.store.last_entry(self.group)?.map(|e| e.log_id);
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> GroupLog {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> io::Result<()> {
        self.store.put(self.group, Slot::Vote, enc(vote)?).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        // Not needed for safety (openraft learns the commit from the leader): saved with the
        // next durable write so that a restart re-applies what was applied before.
        self.store.put_soon(self.group, Slot::Committed, enc(&committed)?);
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        Ok(self
            .store
            .get(self.group, Slot::Committed)?
            .map(|b| dec::<Option<LogIdOf<TypeConfig>>>(&b))
            .transpose()?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, enc(&e)?, first_offset(&e)));
        }
        let r = self
            .store
            .write(
                Op::Append {
                    group: self.group,
                    entries: rows,
                },
                true,
            )
            .await;
        let report = match &r {
            Ok(()) => Ok(()),
            Err(e) => Err(io::Error::other(e.to_string())),
        };
        callback.io_completed(report);
        r
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<TypeConfig>>) -> io::Result<()> {
        self.store
            .write(
                Op::TruncateAfter {
                    group: self.group,
                    after: last_log_id.map(|l| l.index),
                },
                true,
            )
            .await
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> io::Result<()> {
        self.store
            .write(
                Op::Purge {
                    group: self.group,
                    upto: log_id.index,
                    purged: enc(&log_id)?,
                },
                true,
            )
            .await
    }
}

/// Groups with anything stored on this node (to start them again after a restart).
pub fn stored_groups(store: &NodeStore) -> io::Result<Vec<u64>> {
    store.read(|tx| {
        let Some(t) = missing_ok(tx.open_table(GROUP_STATE))? else {
            return Ok(Vec::new());
        };
        let mut groups = BTreeMap::new();
        for e in t.iter().map_err(io_err)? {
            let (k, _) = e.map_err(io_err)?;
            groups.insert(k.value().0, ());
        }
        Ok(groups.into_keys().collect())
    })
}
