//! The on-disk storage of a single-node broker: one redb database.
//!
//! | table | key | value |
//! |---|---|---|
//! | `batches` | `(topic id, partition, base offset)` | the record batch, base offset written in |
//! | `topics` | topic id | JSON [`TopicMeta`], sealed |
//! | `heads` | `(topic id, partition)` | JSON [`PartitionHead`], sealed |
//! | `producers` | `(topic id, partition, producer id)` | JSON [`ProducerState`], sealed |
//! | `txns` | `(topic id, partition)` | JSON [`TxnIndex`](crate::sm::partition::TxnIndex) (open and aborted transactions), sealed |
//! | `txn_states` | transactional id | JSON [`TxnState`](crate::sm::txn::TxnState), sealed |
//! | `txn_offsets` | `(group, producer id)` | JSON offsets a transaction commits, pending, sealed |
//! | `offsets` | `(group, topic, partition)` | JSON [`CommittedOffset`], sealed |
//! | `meta` | key | bytes, sealed |
//! | `quarantine` | what was damaged (`batches/3/0/1200`, `offsets/g/t/0`, ...) | its bytes as found |
//! | `layout` | `"version"` | [`LAYOUT_VERSION`] |
//!
//! "Sealed" is [`foundation::redb::seal`]: `value ‖ CRC-32C(key ‖ value)`. A batch carries
//! Kafka's CRC-32C (checked on produce, and by the broker on every read), which does not cover
//! its first 21 bytes; the base offset and length among them are checked against the key the
//! batch is stored under and the bytes stored.
//!
//! # Layout version
//! The file records the version of this layout ([`foundation::redb`]'s `layout` table, apart
//! from `meta`, whose keys are the broker's). A new file gets [`LAYOUT_VERSION`]. Layout 1 (rows
//! without checksums; a file from before the record is layout 1 too) is upgraded on open in
//! one transaction; a row that does not decode goes to `quarantine` instead of being sealed. A
//! file of any other version is refused on open, naming the file and both versions, before
//! anything is written to it.
//!
//! # Damage, rollbacks, crashes
//! - A damaged row found at start is reported ([`Storage::damage`]: `/health` is degraded) and
//!   left out, never read as something else: a partition head is rebuilt from the batches (its
//!   next offset never below its watermark), an idempotent producer's state or a group's
//!   offset is forgotten (the producer is fenced into a new sequence, the consumer resets),
//!   a topic row leaves the topic out. A damaged batch fails the read that meets it.
//!   [`RedbStorage::verify`] lists everything damaged; [`RedbStorage::quarantine`] puts it
//!   aside (`cloud-broker storage verify [--quarantine]`, broker stopped).
//! - After every commit the partitions' next offsets are raised in `broker.redb.acked`
//!   ([`foundation::watermarks`]); a file that opens below them lost acknowledged records and
//!   is refused ([`StoreError::RolledBack`]) until an operator accepts it.
//! - Every commit is written with redb's quick repair: after a crash the file opens without a
//!   walk of every page, and a damaged commit slot is an error, never a silent fall back to
//!   the commit before (what lost 6,786 acknowledged records once).
//!
//! Each [`Storage::apply`] is one write transaction with `Durability::Immediate`. After an I/O
//! error redb refuses further writes until reopened; the store reopens before the next write.

mod upgrade;
mod verify;

pub use verify::{DamagedItem, VerifyReport};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use foundation::redb::{seal, unseal, Reopening};
use foundation::watermarks::Watermarks;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;
use tracing::error;

use super::{
    CommittedOffset, PartitionHead, ProducerState, Snapshot, Storage, StoreError, TopicMeta, WriteSet,
};
use crate::batch::{self, BatchHeader};

const BATCHES: TableDefinition<(u32, u32, i64), &[u8]> = TableDefinition::new("batches");
const TOPICS: TableDefinition<u32, &[u8]> = TableDefinition::new("topics");
const HEADS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("heads");
const PRODUCERS: TableDefinition<(u32, u32, i64), &[u8]> = TableDefinition::new("producers");
const TXNS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("txns");
const TXN_STATES: TableDefinition<&str, &[u8]> = TableDefinition::new("txn_states");
const TXN_OFFSETS: TableDefinition<(&str, i64), &[u8]> = TableDefinition::new("txn_offsets");
const OFFSETS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("offsets");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// The on-disk layout this build reads and writes (2: every row sealed with a checksum; 3:
/// the `txns`, `txn_states` and `txn_offsets` tables).
pub const LAYOUT_VERSION: u64 = 3;

/// Older layouts this build upgrades on open: layout 1's rows are sealed, layout 2 needs
/// nothing (its files have no transactions).
const READS_LAYOUTS: &[u64] = &[1, 2];

/// redb-backed storage.
#[derive(Debug)]
pub struct RedbStorage {
    db: Reopening,
    marks: Watermarks,
    damage: Mutex<Vec<String>>,
    reserve: foundation::redb::Reserve,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The keys rows are sealed under.
pub(crate) mod keys {
    /// A topic row's.
    pub fn topic(id: u32) -> [u8; 4] {
        id.to_le_bytes()
    }
    /// A head's.
    pub fn head(t: u32, p: u32) -> [u8; 8] {
        let mut k = [0; 8];
        k[..4].copy_from_slice(&t.to_le_bytes());
        k[4..].copy_from_slice(&p.to_le_bytes());
        k
    }
    /// A producer state's.
    pub fn producer(t: u32, p: u32, pid: i64) -> [u8; 16] {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&head(t, p));
        k[8..].copy_from_slice(&pid.to_le_bytes());
        k
    }
    /// A partition's transactions row: `txns` and the head's key (so that the row cannot
    /// pass for a head).
    pub fn txns(t: u32, p: u32) -> [u8; 12] {
        let mut k = [0; 12];
        k[..4].copy_from_slice(b"txns");
        k[4..].copy_from_slice(&head(t, p));
        k
    }
    /// A transactional id's state: `txn`, 0xff, the id.
    pub fn txn_state(id: &str) -> Vec<u8> {
        let mut k = b"txn\xff".to_vec();
        k.extend_from_slice(id.as_bytes());
        k
    }
    /// A transaction's pending offsets of a group: `txo`, 0xff, the group, 0xff, producer id.
    pub fn txn_offsets(g: &str, pid: i64) -> Vec<u8> {
        let mut k = b"txo\xff".to_vec();
        k.extend_from_slice(g.as_bytes());
        k.push(0xff);
        k.extend_from_slice(&pid.to_le_bytes());
        k
    }
    /// A committed offset's: group, 0xff, topic, 0xff, partition (0xff never occurs in UTF-8).
    pub fn offset(g: &str, t: &str, p: u32) -> Vec<u8> {
        let mut k = Vec::with_capacity(g.len() + t.len() + 6);
        k.extend_from_slice(g.as_bytes());
        k.push(0xff);
        k.extend_from_slice(t.as_bytes());
        k.push(0xff);
        k.extend_from_slice(&p.to_le_bytes());
        k
    }
}

/// A sealed JSON row: its value, or why not (`what` names it).
fn open_row<T: DeserializeOwned>(key: &[u8], bytes: &[u8], what: &str) -> Result<T, String> {
    let v = unseal(key, bytes).ok_or_else(|| format!("{what}: checksum mismatch"))?;
    serde_json::from_slice(v).map_err(|e| format!("{what}: {e}"))
}

/// A partition's key in the watermarks.
fn mark_key(t: u32, p: u32) -> u64 {
    (u64::from(t) << 32) | u64::from(p)
}

/// The key offset of the batch holding `from`: the last batch starting at or below it (or
/// `from` when none does).
fn batch_holding(
    t: &impl ReadableTable<(u32, u32, i64), &'static [u8]>,
    topic: u32,
    partition: u32,
    from: i64,
) -> Result<i64, StoreError> {
    match t
        .range((topic, partition, i64::MIN)..=(topic, partition, from))
        .map_err(io)?
        .next_back()
    {
        Some(e) => Ok(e.map_err(io)?.0.value().2),
        None => Ok(from),
    }
}

/// Checks what Kafka's CRC does not cover: the batch stored under `base` says that base
/// offset, and its length is the bytes stored.
fn check_batch(base: i64, b: &[u8]) -> Result<BatchHeader, String> {
    let h = batch::header(b).map_err(|e| format!("batch at offset {base}: {e}"))?;
    if h.base_offset != base {
        return Err(format!(
            "batch stored at offset {base} reads as offset {}",
            h.base_offset
        ));
    }
    if h.size != b.len() {
        return Err(format!(
            "batch at offset {base}: length {} of {} bytes stored",
            h.size,
            b.len()
        ));
    }
    Ok(h)
}

/// A partition's head worked out from its batches, never below `floor` (offsets are never
/// handed out twice).
fn rebuild_head(
    t: &impl ReadableTable<(u32, u32, i64), &'static [u8]>,
    topic: u32,
    partition: u32,
    floor: i64,
) -> Result<PartitionHead, StoreError> {
    let mut h = PartitionHead::default();
    let mut first = None;
    for e in t
        .range((topic, partition, i64::MIN)..=(topic, partition, i64::MAX))
        .map_err(io)?
    {
        let (k, v) = e.map_err(io)?;
        let base = k.value().2;
        first.get_or_insert(base);
        h.bytes += v.value().len() as u64;
        let end = match batch::header(v.value()) {
            Ok(b) if b.base_offset == base => b.last_offset() + 1,
            _ => base + 1,
        };
        h.next_offset = h.next_offset.max(end);
    }
    h.next_offset = h.next_offset.max(floor);
    h.log_start = first.unwrap_or(h.next_offset);
    Ok(h)
}

fn missing_ok<T>(r: Result<T, TableError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

impl RedbStorage {
    /// Opens or creates the database at `path`. A file of another layout version is refused
    /// ([`StoreError::Layout`]), and so is one that holds less than it acknowledged
    /// ([`StoreError::RolledBack`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, false)
    }

    /// Where the watermarks of the store at `path` are kept.
    pub fn marks_path(path: &Path) -> PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".acked");
        p.into()
    }

    /// [`RedbStorage::open`]; with `accept_rollback`, a store below its watermarks opens
    /// anyway: each rolled-back partition goes on at its watermark (no offset is handed out
    /// twice) and the lost ranges are recorded in the quarantine table.
    pub fn open_with(path: &Path, accept_rollback: bool) -> Result<Self, StoreError> {
        let open = || {
            Reopening::open_migrating(
                path,
                256 << 20,
                "is a broker running?",
                LAYOUT_VERSION,
                READS_LAYOUTS,
                &upgrade::migrate,
            )
        };
        use foundation::redb::Unopened;
        let flag = "cloud-broker storage verify --accept-rollback";
        let db = match foundation::redb::open_or_recover(path, accept_rollback, flag, open) {
            Ok(db) => db,
            Err(Unopened::Open(e)) => return Err(e.into()),
            Err(Unopened::DamagedHeader(m) | Unopened::Unrecoverable(m)) => {
                return Err(StoreError::RolledBack(m))
            }
        };
        Self::from_db(db, path, accept_rollback)
    }

    /// [`RedbStorage::open`] on the storage `backend` makes rather than the file at `path`
    /// (whose name the watermarks file still takes): tests on a faulty disk.
    pub fn open_on(path: &Path, backend: foundation::redb::BackendFactory) -> Result<Self, StoreError> {
        let db = Reopening::open_on(
            path,
            4 << 20,
            LAYOUT_VERSION,
            READS_LAYOUTS,
            &upgrade::migrate,
            backend,
        )?;
        Self::from_db(db, path, false)
    }

    fn from_db(db: Reopening, path: &Path, accept_rollback: bool) -> Result<Self, StoreError> {
        let marks = Watermarks::open(&Self::marks_path(path))
            .map_err(|e| StoreError::Io(format!("{}: {e}", Self::marks_path(path).display())))?;
        let s = RedbStorage {
            db,
            marks,
            damage: Mutex::new(Vec::new()),
            reserve: foundation::redb::Reserve::new(0),
        };
        s.apply(&WriteSet::default())?; // creates the tables
        s.check_marks(accept_rollback)?;
        Ok(s)
    }

    /// Keeps `bytes` of disk free: writes that add batches are refused below it (see
    /// [`foundation::redb::Reserve`]).
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.set(bytes);
    }

    /// Whether opening the file needed redb's full repair (see
    /// [`foundation::redb::Reopening::repaired`]).
    pub fn opened_with_repair(&self) -> bool {
        self.db.repaired()
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.db.with(|db| f(db))
    }

    /// Records damage met (logged; reported by [`Storage::damage`]).
    fn damaged(&self, what: String) {
        error!(damage = %what, file = %self.db.path().display(), "damaged broker data (run `cloud-broker storage verify` with the broker stopped)");
        let mut d = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        if d.len() < 100 {
            d.push(what);
        }
    }

    /// Compares every partition's head with its watermark; see [`RedbStorage::open_with`].
    fn check_marks(&self, accept: bool) -> Result<(), StoreError> {
        let marks = self.marks.marks();
        if marks.is_empty() {
            return Ok(());
        }
        let snap = self.load()?;
        let names: BTreeMap<u32, String> = snap.topics.iter().map(|t| (t.id, t.name.clone())).collect();
        let behind: Vec<(u32, u32, i64, i64)> = marks
            .iter()
            .filter_map(|(&k, &mark)| {
                let (t, p) = ((k >> 32) as u32, k as u32);
                let next = snap.heads.get(&(t, p)).map_or(0, |h| h.next_offset);
                (names.contains_key(&t) && next < mark as i64).then_some((t, p, next, mark as i64))
            })
            .collect();
        if behind.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = behind
            .iter()
            .map(|(t, p, next, mark)| format!("{:?} partition {p}: offsets {next}..{mark}", names[t]))
            .collect();
        if !accept {
            return Err(StoreError::RolledBack(format!(
                "{} holds less than it acknowledged ({}; the marks are in {}): the file rolled back \
                 (a damaged commit slot, a disk that lost confirmed writes, or an old copy restored), \
                 and those records are gone. Run `cloud-broker storage verify --accept-rollback` \
                 (broker stopped) to go on with the offsets after them, so none is handed out twice",
                self.db.path().display(),
                list.join(", "),
                self.marks.path().display()
            )));
        }
        let mut w = WriteSet::default();
        for &(t, p, _, mark) in &behind {
            let mut h = snap.heads.get(&(t, p)).copied().unwrap_or_default();
            h.next_offset = mark;
            if h.bytes == 0 {
                h.log_start = mark;
            }
            w.heads.push((t, p, h));
        }
        self.apply(&w)?;
        self.with_db(|db| {
            let tx = db.begin_write().map_err(io)?;
            {
                let mut q = tx.open_table(QUARANTINE).map_err(io)?;
                for &(t, p, next, mark) in &behind {
                    let lost = format!("offsets {next}..{mark} lost to a rollback of the file");
                    q.insert(format!("rollback/{t}/{p}").as_str(), lost.as_bytes())
                        .map_err(io)?;
                }
            }
            tx.commit().map_err(io)
        })?;
        for l in &list {
            error!(lost = %l, "rollback accepted: the partition goes on after its watermark");
        }
        Ok(())
    }

    /// Raises the watermarks after a commit (a failure to write them only weakens the rollback
    /// check; the commit stands).
    fn raise_marks(&self, w: &WriteSet) {
        if !w.delete_topics.is_empty() {
            let gone: Vec<u32> = w.delete_topics.iter().map(|t| t.id).collect();
            let kept = self
                .marks
                .marks()
                .into_iter()
                .filter(|(k, _)| !gone.contains(&((k >> 32) as u32)))
                .collect();
            if let Err(e) = self.marks.reset(kept) {
                error!(error = %e, "writing the broker's watermarks failed");
            }
        }
        let up = w
            .heads
            .iter()
            .map(|(t, p, h)| (mark_key(*t, *p), h.next_offset.max(0) as u64));
        if let Err(e) = self.marks.raise(up) {
            error!(error = %e, "writing the broker's watermarks failed");
        }
    }
}

impl Storage for RedbStorage {
    fn close(&self) {
        self.db.close();
        if let Err(e) = self.marks.sync() {
            error!(error = %e, "syncing the broker's watermarks");
        }
    }

    fn write_failure(&self) -> Option<String> {
        self.db.write_failure()
    }

    fn opened_with_repair(&self) -> bool {
        self.db.repaired()
    }

    fn damage(&self) -> Option<String> {
        let d = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        match d.len() {
            0 => None,
            1 => Some(d[0].clone()),
            n => Some(format!("{} (and {} more)", d[0], n - 1)),
        }
    }

    fn apply(&self, w: &WriteSet) -> Result<(), StoreError> {
        let r = self.with_db(|db| {
            let mut tx = db.begin_write().map_err(io)?;
            tx.set_durability(Durability::Immediate).map_err(io)?;
            // Quick repair: no walk of the whole file after a crash (which refuses the file
            // outright if one page is damaged), and a damaged commit slot is an error rather
            // than a silent fall back to the commit before.
            tx.set_quick_repair(true);
            if !w.batches.is_empty() {
                self.reserve.check(self.db.path(), &tx).map_err(StoreError::Io)?;
            }
            {
                let mut batches = tx.open_table(BATCHES).map_err(io)?;
                let mut topics = tx.open_table(TOPICS).map_err(io)?;
                let mut heads = tx.open_table(HEADS).map_err(io)?;
                let mut producers = tx.open_table(PRODUCERS).map_err(io)?;
                let mut offsets = tx.open_table(OFFSETS).map_err(io)?;
                let mut meta = tx.open_table(META).map_err(io)?;
                let mut txns = tx.open_table(TXNS).map_err(io)?;
                let mut txn_states = tx.open_table(TXN_STATES).map_err(io)?;
                let mut txn_offsets = tx.open_table(TXN_OFFSETS).map_err(io)?;
                tx.open_table(QUARANTINE).map_err(io)?;
                for t in &w.delete_topics {
                    topics.remove(t.id).map_err(io)?;
                    batches
                        .retain_in((t.id, 0, i64::MIN)..=(t.id, u32::MAX, i64::MAX), |_, _| false)
                        .map_err(io)?;
                    heads
                        .retain_in((t.id, 0)..=(t.id, u32::MAX), |_, _| false)
                        .map_err(io)?;
                    producers
                        .retain_in((t.id, 0, i64::MIN)..=(t.id, u32::MAX, i64::MAX), |_, _| false)
                        .map_err(io)?;
                    txns.retain_in((t.id, 0)..=(t.id, u32::MAX), |_, _| false)
                        .map_err(io)?;
                    offsets.retain(|k, _| k.1 != t.name).map_err(io)?;
                }
                for t in &w.put_topics {
                    topics
                        .insert(t.id, seal(&keys::topic(t.id), &json(t)?).as_slice())
                        .map_err(io)?;
                }
                for k in &w.remove_batches {
                    batches.remove(*k).map_err(io)?;
                }
                for (t, p, base, bytes) in &w.batches {
                    batches.insert((*t, *p, *base), bytes.as_slice()).map_err(io)?;
                }
                for (t, p, before) in &w.truncate {
                    // The batch holding `before` stays (DeleteRecords may cut inside one).
                    batches
                        .retain_in((*t, *p, i64::MIN)..(*t, *p, *before), |_, v| {
                            crate::batch::header(v).is_ok_and(|h| h.last_offset() >= *before)
                        })
                        .map_err(io)?;
                }
                for (t, p, h) in &w.heads {
                    heads
                        .insert((*t, *p), seal(&keys::head(*t, *p), &json(h)?).as_slice())
                        .map_err(io)?;
                }
                for (t, p, pid, s) in &w.producers {
                    producers
                        .insert(
                            (*t, *p, *pid),
                            seal(&keys::producer(*t, *p, *pid), &json(s)?).as_slice(),
                        )
                        .map_err(io)?;
                }
                for (g, t, p, o) in &w.offsets {
                    match o {
                        Some(o) => {
                            offsets
                                .insert(
                                    (g.as_str(), t.as_str(), *p),
                                    seal(&keys::offset(g, t, *p), &json(o)?).as_slice(),
                                )
                                .map_err(io)?;
                        }
                        None => {
                            offsets.remove((g.as_str(), t.as_str(), *p)).map_err(io)?;
                        }
                    }
                }
                for (k, v) in &w.meta {
                    meta.insert(k.as_str(), seal(k.as_bytes(), v).as_slice())
                        .map_err(io)?;
                }
                for (id, st) in &w.txn_states {
                    match st {
                        Some(st) => {
                            txn_states
                                .insert(id.as_str(), seal(&keys::txn_state(id), &json(st)?).as_slice())
                                .map_err(io)?;
                        }
                        None => {
                            txn_states.remove(id.as_str()).map_err(io)?;
                        }
                    }
                }
                for (g, pid, o) in &w.txn_offsets {
                    match o {
                        Some(o) => {
                            // JSON maps need string keys: the offsets go as a list.
                            let list: Vec<(&(String, u32), &CommittedOffset)> = o.iter().collect();
                            txn_offsets
                                .insert(
                                    (g.as_str(), *pid),
                                    seal(&keys::txn_offsets(g, *pid), &json(&list)?).as_slice(),
                                )
                                .map_err(io)?;
                        }
                        None => {
                            txn_offsets.remove((g.as_str(), *pid)).map_err(io)?;
                        }
                    }
                }
                for (t, p, x) in &w.txns {
                    if x.is_empty() {
                        txns.remove((*t, *p)).map_err(io)?;
                    } else {
                        txns.insert((*t, *p), seal(&keys::txns(*t, *p), &json(x)?).as_slice())
                            .map_err(io)?;
                    }
                }
            }
            tx.commit().map_err(io)
        });
        match &r {
            Ok(()) => {
                self.db.write_succeeded();
                self.raise_marks(w);
                if !w.delete_topics.is_empty() || !w.truncate.is_empty() || !w.remove_batches.is_empty() {
                    self.reserve.freed();
                }
            }
            Err(e) => self.db.write_failed(e),
        }
        r
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        let marks = self.marks.marks();
        let (snap, bad) = self.with_db(|db| {
            let tx = db.begin_read().map_err(io)?;
            let mut s = Snapshot::default();
            let mut bad = Vec::new();
            if let Some(t) = missing_ok(tx.open_table(TOPICS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let id = k.value();
                    match open_row::<TopicMeta>(&keys::topic(id), v.value(), &format!("topic row #{id}")) {
                        Ok(m) => s.topics.push(m),
                        Err(e) => bad.push(format!("{e} (the topic is left out)")),
                    }
                }
            }
            let batches = missing_ok(tx.open_table(BATCHES))?;
            if let Some(t) = missing_ok(tx.open_table(HEADS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (tid, p) = k.value();
                    let what = format!("head of topic #{tid} partition {p}");
                    let head = match open_row::<PartitionHead>(&keys::head(tid, p), v.value(), &what) {
                        Ok(h) => h,
                        Err(e) => {
                            bad.push(format!("{e} (rebuilt from the batches)"));
                            let floor = marks.get(&mark_key(tid, p)).map_or(0, |&m| m as i64);
                            match &batches {
                                Some(b) => rebuild_head(b, tid, p, floor)?,
                                None => PartitionHead {
                                    log_start: floor,
                                    next_offset: floor,
                                    bytes: 0,
                                },
                            }
                        }
                    };
                    s.heads.insert((tid, p), head);
                }
            }
            if let Some(t) = missing_ok(tx.open_table(PRODUCERS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (tid, p, pid) = k.value();
                    let what = format!("producer {pid} state on topic #{tid} partition {p}");
                    match open_row::<ProducerState>(&keys::producer(tid, p, pid), v.value(), &what) {
                        Ok(st) => drop(s.producers.insert((tid, p, pid), st)),
                        Err(e) => bad.push(format!(
                            "{e} (forgotten: the producer is fenced into a new sequence)"
                        )),
                    }
                }
            }
            if let Some(t) = missing_ok(tx.open_table(TXNS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (tid, p) = k.value();
                    let what = format!("transactions of topic #{tid} partition {p}");
                    match open_row::<crate::sm::partition::TxnIndex>(&keys::txns(tid, p), v.value(), &what) {
                        Ok(x) => drop(s.txns.insert((tid, p), x)),
                        Err(e) => bad.push(format!(
                            "{e} (forgotten: read_committed consumers may read its aborted records)"
                        )),
                    }
                }
            }
            if let Some(t) = missing_ok(tx.open_table(TXN_STATES))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let id = k.value();
                    let what = format!("transactional id {id:?}'s state");
                    match open_row::<crate::sm::txn::TxnState>(&keys::txn_state(id), v.value(), &what) {
                        Ok(st) => drop(s.txn_states.insert(id.to_string(), st)),
                        Err(e) => bad.push(format!(
                            "{e} (forgotten: its producer is fenced at its next request)"
                        )),
                    }
                }
            }
            if let Some(t) = missing_ok(tx.open_table(TXN_OFFSETS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (g, pid) = k.value();
                    let what = format!("group {g:?} offsets pending in producer {pid}'s transaction");
                    type List = Vec<((String, u32), CommittedOffset)>;
                    match open_row::<List>(&keys::txn_offsets(g, pid), v.value(), &what) {
                        Ok(list) => drop(
                            s.txn_offsets
                                .insert((g.to_string(), pid), list.into_iter().collect()),
                        ),
                        Err(e) => bad.push(format!(
                            "{e} (forgotten: the transaction commits no offsets of it)"
                        )),
                    }
                }
            }
            if let Some(t) = missing_ok(tx.open_table(OFFSETS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (g, topic, p) = k.value();
                    let what = format!("group {g:?} offset of {topic} partition {p}");
                    match open_row::<CommittedOffset>(&keys::offset(g, topic, p), v.value(), &what) {
                        Ok(o) => drop(s.offsets.insert((g.to_string(), topic.to_string(), p), o)),
                        Err(e) => bad.push(format!("{e} (forgotten: the consumer resets)")),
                    }
                }
            }
            if let Some(t) = missing_ok(tx.open_table(META))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    match unseal(k.value().as_bytes(), v.value()) {
                        Some(v) => drop(s.meta.insert(k.value().to_string(), v.to_vec())),
                        None => bad.push(format!("metadata value {:?}: checksum mismatch", k.value())),
                    }
                }
            }
            Ok((s, bad))
        })?;
        let mut snap = snap;
        if !snap.meta.contains_key("next_producer_id") && !snap.producers.is_empty() {
            // Its row was damaged: never hand out a producer id in use.
            let next = snap.producers.keys().map(|k| k.2).max().unwrap_or(0) + 1;
            snap.meta
                .insert("next_producer_id".into(), next.to_be_bytes().to_vec());
        }
        for b in bad {
            self.damaged(b);
        }
        Ok(snap)
    }

    fn read(&self, topic: u32, partition: u32, from: i64, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(io)?;
            let Some(t) = missing_ok(tx.open_table(BATCHES))? else {
                return Ok(Vec::new());
            };
            let start = batch_holding(&t, topic, partition, from)?;
            let mut out = Vec::new();
            for e in t
                .range((topic, partition, start)..=(topic, partition, i64::MAX))
                .map_err(io)?
            {
                let (k, v) = e.map_err(io)?;
                if let Err(why) = check_batch(k.value().2, v.value()) {
                    // The batches before it are served; a read that starts at it fails.
                    if out.is_empty() {
                        return Err(StoreError::Corrupt(why));
                    }
                    break;
                }
                if !super::gather_batch(&mut out, v.value(), from, max_bytes) {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn headers(
        &self,
        topic: u32,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<BatchHeader>, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(io)?;
            let Some(t) = missing_ok(tx.open_table(BATCHES))? else {
                return Ok(Vec::new());
            };
            let start = batch_holding(&t, topic, partition, from)?;
            let mut out = Vec::new();
            for e in t
                .range((topic, partition, start)..=(topic, partition, i64::MAX))
                .map_err(io)?
                .take(limit)
            {
                let (k, v) = e.map_err(io)?;
                out.push(check_batch(k.value().2, v.value()).map_err(StoreError::Corrupt)?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod faults;
#[cfg(test)]
mod tests;
