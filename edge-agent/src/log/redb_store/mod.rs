//! The on-disk log: one redb database.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `topics` | name | JSON `{id, spec}`, sealed |
//! | `partitions` | `(topic id, partition)` | 32 bytes LE: first offset, next offset, records, bytes; sealed |
//! | `chunks` | `(topic id, partition, base offset)` | a chunk ([`super::chunk`], with its own checksum) |
//! | `streams_v2` | `(device, boot)` | next expected sequence (8 bytes LE), sealed |
//! | `meta` | key | bytes, sealed |
//! | `quarantine` | what was damaged (`chunks/3/0/1200`, `meta/k`, ...) | its bytes as found |
//! | `layout` | `"version"` | [`LAYOUT_VERSION`] |
//!
//! "Sealed" is `value ‖ CRC-32C(key ‖ value)` (`rows.rs`).
//!
//! # Layout version
//! The file records the version of this layout ([`foundation::redb`]'s `layout` table, apart
//! from `meta`, whose keys belong to the store's callers). A new file gets [`LAYOUT_VERSION`].
//! Layout 1 (no checksums; a file from before the record is layout 1 too) is upgraded on open,
//! in one transaction (`upgrade.rs`). A file of any other version is refused on open
//! ([`LogError::Layout`]), naming the file and both versions, before anything is written to it.
//!
//! Every write is one transaction committed with `Durability::Immediate` (one fsync); an
//! append's records, partition heads and stream states are in the same transaction, so the
//! dedup state can never disagree with the records after a crash.
//!
//! # Damaged data
//! redb checksums its B-tree pages but checks them only when it repairs a file after a crash
//! (measured: a bit flipped in a value is returned as data), so the store checks its own.
//! Every row and chunk is verified when read; one that fails answers [`LogError::Corrupt`]
//! naming topic, partition and offset (never other bytes, never fewer records in silence), is
//! logged, counted, and makes [`LogStore::damage`] report it (the agent's `/health` is then
//! degraded). Damage stays where it is: a read that starts past a damaged chunk, every other
//! partition, and appends go on (a damaged partition row is rebuilt from its chunks on the next
//! append; a damaged stream row reads as a new stream, which can let a re-sent reading in
//! twice but never drops one). [`RedbLog::verify`] scans everything and reports each damaged
//! item; [`RedbLog::quarantine`] moves them to the `quarantine` table and repairs what refers
//! to them, so the bridge forwards past the hole. The device buffers hold only what was not
//! acknowledged, so what a damaged chunk held is lost at the edge: `verify` says exactly which
//! offsets.
//!
//! # Rollbacks
//! After each append the store raises every touched partition's next offset in
//! `log.redb.acked` beside the file ([`foundation::watermarks`]). On open, a partition below
//! its mark means the file lost acknowledged commits: [`LogError::RolledBack`], until an
//! operator accepts it ([`RedbLog::open_with`]); a rebuilt partition row never starts below
//! its mark either.
//!
//! # Failing disks
//! After an I/O error redb refuses every further write until the database is reopened. The
//! store therefore reopens the file before the next operation after any storage error, so a
//! full disk that gets space again heals without restarting the agent. A failed commit may
//! still have been durable (redb's rule); callers only ack what a successful `append` returned,
//! and re-deliveries are deduplicated by the stream states, so that is safe.

mod rows;
#[cfg(test)]
mod tests;
mod upgrade;
mod verify;

pub use verify::{DamagedItem, VerifyReport};

use foundation::redb::Reopening;
use foundation::watermarks::Watermarks;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};
use tracing::error;

use super::policy::{self, ChunkInfo};
use super::{
    chunk, Append, LogError, LogStore, PartitionStats, Record, RetentionReport, StoreDamage, TopicSpec,
};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const PARTS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("partitions");
const CHUNKS: TableDefinition<(u32, u32, u64), &[u8]> = TableDefinition::new("chunks");
const STREAMS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("streams_v2");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const QUARANTINE: TableDefinition<&str, &[u8]> = TableDefinition::new("quarantine");

/// The on-disk layout this build reads and writes (2: every row and chunk checksummed).
pub const LAYOUT_VERSION: u64 = 2;

/// How [`foundation::redb::OpenError::Panicked`] reads.
const ENGINE_FAILED: &str = "the storage engine failed on damaged data";

/// redb's page cache (read cache and write buffer together): the agent is meant for small
/// gateways. Appends touch only the right edge of the trees, so a small cache costs no
/// throughput (`ingest-bench`), while 64 MiB filled up under load and showed as resident memory.
const CACHE_BYTES: usize = 8 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicRow {
    id: u32,
    spec: TopicSpec,
}

/// The redb-backed log store.
#[derive(Debug)]
pub struct RedbLog {
    db: Reopening,
    topics: RwLock<HashMap<String, TopicRow>>,
    damage: Mutex<Option<StoreDamage>>,
    /// Each partition's next offset as last committed, beside the file (`log.redb.acked`).
    marks: Watermarks,
    marks_failing: std::sync::atomic::AtomicBool,
    reserve: foundation::redb::Reserve,
}

/// A partition's key in the watermarks.
fn mark_key(id: u32, p: u32) -> u64 {
    (u64::from(id) << 32) | u64::from(p)
}

fn storage<E: std::fmt::Display>(e: E) -> LogError {
    LogError::Storage(e.to_string())
}

/// A topic row: its JSON, sealed under the topic's name.
fn topic_encode(name: &str, row: &TopicRow) -> Result<Vec<u8>, LogError> {
    Ok(rows::seal(
        name.as_bytes(),
        &serde_json::to_vec(row).map_err(storage)?,
    ))
}

fn topic_decode(name: &str, bytes: &[u8]) -> Result<TopicRow, LogError> {
    let json =
        rows::unseal(name.as_bytes(), bytes).ok_or_else(|| rows::damaged(format!("topic row {name:?}")))?;
    serde_json::from_slice(json).map_err(|e| LogError::Corrupt(format!("topic row {name:?}: {e}")))
}

/// Where a chunk is, for error messages and the damage report.
fn chunk_at(topic: &str, p: u32, base: u64) -> String {
    format!("topic {topic:?} partition {p}, chunk at offset {base}")
}

impl RedbLog {
    /// Closes the file for a clean stop, whoever still holds the store: later calls fail, and
    /// redb's "recovery required" mark is off, so the next start needs no repair.
    pub fn close(&self) {
        self.db.close();
        if let Err(e) = self.marks.sync() {
            error!(file = %self.marks.path().display(), error = %e, "syncing the log's watermarks");
        }
    }

    /// Opens (or creates) the log at `path`. Fails with a clear error if another process
    /// has it open (redb allows one), or if the file is of another layout version. A file of
    /// layout 1 is upgraded to this layout first (`upgrade.rs`).
    pub fn open(path: &Path) -> Result<Self, LogError> {
        Self::open_with(path, false)
    }

    /// Where the watermarks of the log at `path` are kept.
    pub fn marks_path(path: &Path) -> std::path::PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push(".acked");
        p.into()
    }

    /// [`RedbLog::open`]; with `accept_rollback`, a log found below its watermarks (see
    /// [`LogError::RolledBack`]) opens anyway: each rolled-back partition continues at its
    /// watermark, so no offset handed out before is given again, and the lost ranges are
    /// recorded in the quarantine table (`rollback/<topic id>/<partition>`).
    pub fn open_with(path: &Path, accept_rollback: bool) -> Result<Self, LogError> {
        let open = || {
            Reopening::open_migrating(
                path,
                CACHE_BYTES,
                "is the agent running? use its admin API",
                LAYOUT_VERSION,
                &[1],
                &upgrade::from_v1,
            )
        };
        use foundation::redb::Unopened;
        let db = match foundation::redb::open_or_recover(
            path,
            accept_rollback,
            "edge-agent log verify --accept-rollback",
            open,
        ) {
            Ok(db) => db,
            Err(Unopened::Open(e)) => return Err(e.into()),
            Err(Unopened::DamagedHeader(m) | Unopened::Unrecoverable(m)) => {
                return Err(LogError::RolledBack(m))
            }
        };
        Self::with_db(db, path, accept_rollback)
    }

    /// [`RedbLog::open`] on the storage `backend` makes rather than the file at `path` (whose
    /// name the watermarks file still takes): tests on a faulty disk.
    pub fn open_on(path: &Path, backend: foundation::redb::BackendFactory) -> Result<Self, LogError> {
        let db = Reopening::open_on(
            path,
            CACHE_BYTES,
            LAYOUT_VERSION,
            &[1],
            &upgrade::from_v1,
            backend,
        )?;
        Self::with_db(db, path, false)
    }

    fn with_db(db: Reopening, path: &Path, accept_rollback: bool) -> Result<Self, LogError> {
        let marks = Watermarks::open(&Self::marks_path(path))
            .map_err(|e| LogError::Storage(format!("{}: {e}", Self::marks_path(path).display())))?;
        let store = RedbLog {
            marks,
            marks_failing: std::sync::atomic::AtomicBool::new(false),
            reserve: foundation::redb::Reserve::new(0),
            db,
            topics: RwLock::new(HashMap::new()),
            damage: Mutex::new(None),
        };
        store.init()?;
        store.check_marks(accept_rollback)?;
        Ok(store)
    }

    /// Compares every partition with its watermark; see [`RedbLog::open_with`].
    fn check_marks(&self, accept: bool) -> Result<(), LogError> {
        let marks = self.marks.marks();
        if marks.is_empty() {
            return Ok(());
        }
        let names: HashMap<u32, String> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| (r.id, r.spec.name.clone()))
            .collect();
        let behind = self.read_db(|tx| {
            let Some(parts) = table_missing_ok(tx.open_table(PARTS))? else {
                return Ok(Vec::new());
            };
            let mut behind = Vec::new();
            for (&k, &mark) in &marks {
                let (id, p) = ((k >> 32) as u32, k as u32);
                // A damaged row is rebuilt on its next write, from the chunks and this mark.
                let Ok(next) = get_part(&parts, id, p).map(|s| s.next_offset) else {
                    continue;
                };
                if next < mark {
                    behind.push((id, p, next, mark));
                }
            }
            Ok(behind)
        })?;
        if behind.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = behind
            .iter()
            .map(|(id, p, next, mark)| {
                let topic = names.get(id).map_or("?", String::as_str);
                format!("{topic:?} partition {p}: offsets {next}..{mark}")
            })
            .collect();
        if !accept {
            return Err(LogError::RolledBack(format!(
                "{} holds less than it acknowledged ({}; the marks are in {}): the file rolled back \
                 (a damaged commit slot, a disk that lost confirmed writes, or an old copy restored). \
                 Those records are gone from this gateway; if they were not yet forwarded, they are \
                 lost. Run `edge-agent log verify --accept-rollback` to go on with the offsets after \
                 them, so none is handed out twice",
                self.path().display(),
                list.join(", "),
                self.marks.path().display()
            )));
        }
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut q = tx.open_table(QUARANTINE).map_err(storage)?;
            for &(id, p, next, mark) in &behind {
                let mut s = self.part_for_write(&parts, &chunks, names.get(&id).map_or("?", |n| n), id, p)?;
                s.next_offset = mark;
                if s.records == 0 {
                    s.first_offset = mark;
                }
                put_part(&mut parts, id, p, &s)?;
                let lost = format!("offsets {next}..{mark} lost to a rollback of the file");
                q.insert(format!("rollback/{id}/{p}").as_str(), lost.as_bytes())
                    .map_err(storage)?;
            }
            Ok(())
        })?;
        for l in &list {
            error!(lost = %l, "rollback accepted: the partition goes on after its watermark");
        }
        Ok(())
    }

    /// Raises the watermarks after a commit. A failure to write them is logged once; the commit
    /// stands (it is durable), only the rollback check is weaker until they are written again.
    fn raise_marks(&self, marks: impl IntoIterator<Item = (u64, u64)>) {
        use std::sync::atomic::Ordering;
        match self.marks.raise(marks) {
            Ok(()) => {
                if self.marks_failing.swap(false, Ordering::Relaxed) {
                    tracing::warn!("the log's watermarks are written again");
                }
            }
            Err(e) => {
                if !self.marks_failing.swap(true, Ordering::Relaxed) {
                    error!(file = %self.marks.path().display(), error = %e, "writing the log's watermarks failed");
                }
            }
        }
    }

    /// Records damage found while reading: logged, counted, reported by [`LogStore::damage`].
    /// Returns the error for the request that hit it, with `what` named in it.
    fn damaged(&self, what: &str, e: LogError) -> LogError {
        let LogError::Corrupt(why) = e else {
            return e;
        };
        let msg = format!("{what}: {why}");
        error!(damage = %msg, file = %self.db.path().display(), "damaged log data (run `edge-agent log verify`)");
        let mut d = self.damage.lock().unwrap_or_else(|e| e.into_inner());
        let d = d.get_or_insert_with(StoreDamage::default);
        d.failures += 1;
        d.last = msg.clone();
        LogError::Corrupt(msg)
    }

    /// Creates the tables and loads the topic directory. A damaged topic row is reported and
    /// left out (its topic reads as unknown until `log verify --quarantine`).
    fn init(&self) -> Result<(), LogError> {
        let rows = self.write(|tx| {
            tx.open_table(PARTS).map_err(storage)?;
            tx.open_table(CHUNKS).map_err(storage)?;
            tx.open_table(STREAMS).map_err(storage)?;
            tx.open_table(META).map_err(storage)?;
            tx.open_table(QUARANTINE).map_err(storage)?;
            let t = tx.open_table(TOPICS).map_err(storage)?;
            let mut rows = HashMap::new();
            let mut bad = Vec::new();
            for e in t.iter().map_err(storage)? {
                let (k, v) = e.map_err(storage)?;
                match topic_decode(k.value(), v.value()) {
                    Ok(row) => drop(rows.insert(k.value().to_string(), row)),
                    Err(e) => bad.push((k.value().to_string(), e)),
                }
            }
            Ok((rows, bad))
        });
        let (rows, bad) = rows?;
        for (name, e) in bad {
            self.damaged(&format!("topic {name:?}"), e);
        }
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = rows;
        Ok(())
    }

    /// Keeps `bytes` of disk free: appends of records are refused below it (see
    /// [`foundation::redb::Reserve`]); retention, truncation and quarantines still run.
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve.set(bytes);
    }

    /// Whether opening the file needed redb's full repair (a crash of a build without quick
    /// repair): a restart after a crash should not.
    pub fn opened_with_repair(&self) -> bool {
        self.db.repaired()
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        self.db.path()
    }

    /// Runs `f` in a durable write transaction; reopens the database first if an earlier
    /// storage error poisoned it.
    fn write<T>(&self, f: impl FnOnce(&mut WriteTransaction) -> Result<T, LogError>) -> Result<T, LogError> {
        let result = self.db.with(|db| {
            let mut tx = db.begin_write().map_err(storage)?;
            tx.set_durability(Durability::Immediate).map_err(storage)?;
            // Quick repair: the allocator state is saved with each commit and the commit is
            // two-phase. After a crash the file opens at once, without redb's full walk of its
            // pages, which refuses the whole file if any page is damaged ("All roots are
            // corrupted", measured); our checksums then find the damage row by row. And the
            // primary commit slot is trusted, so a damaged slot is an error, not a silent fall
            // back to the commit before. Costs a second fsync per commit (BENCHMARKS.md).
            tx.set_quick_repair(true);
            let value = f(&mut tx)?;
            tx.commit().map_err(storage)?;
            Ok(value)
        });
        match &result {
            Ok(_) => self.db.write_succeeded(),
            Err(e @ LogError::Storage(_)) => self.db.write_failed(e),
            Err(_) => {}
        }
        self.engine_damage(result)
    }

    fn read_db<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.engine_damage(self.db.with(|db| f(&db.begin_read().map_err(storage)?)))
    }

    /// Records a failure of redb itself on damaged pages (a caught panic) as damage.
    fn engine_damage<T>(&self, r: Result<T, LogError>) -> Result<T, LogError> {
        match r {
            Err(LogError::Corrupt(m)) if m.contains(ENGINE_FAILED) => {
                Err(self.damaged("the log file's pages", LogError::Corrupt(m)))
            }
            r => r,
        }
    }

    fn topic(&self, name: &str) -> Result<TopicRow, LogError> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.into()))
    }

    fn topic_partition(&self, name: &str, partition: u32) -> Result<TopicRow, LogError> {
        let row = self.topic(name)?;
        if partition >= row.spec.partitions {
            return Err(LogError::UnknownPartition {
                topic: name.into(),
                partition,
            });
        }
        Ok(row)
    }

    /// A partition's row for a write; a damaged one is reported and rebuilt from the chunks, so
    /// appends to the partition go on (its offsets continue after the last stored chunk).
    fn part_for_write(
        &self,
        parts: &impl ReadableTable<(u32, u32), &'static [u8]>,
        chunks: &impl ReadableTable<(u32, u32, u64), &'static [u8]>,
        topic: &str,
        id: u32,
        p: u32,
    ) -> Result<PartitionStats, LogError> {
        match get_part(parts, id, p) {
            Ok(s) => Ok(s),
            Err(e @ LogError::Corrupt(_)) => {
                self.damaged(&format!("topic {topic:?} partition {p}"), e);
                // Never below the watermark: no offset is handed out twice.
                let floor = self.marks.marks().get(&mark_key(id, p)).copied();
                let s = verify::rebuild_part(chunks, id, p, floor)?.stats;
                error!(
                    topic,
                    partition = p,
                    next_offset = s.next_offset,
                    "partition row rebuilt from its chunks"
                );
                Ok(s)
            }
            Err(e) => Err(e),
        }
    }
}

fn table_missing_ok<T>(r: Result<T, TableError>) -> Result<Option<T>, LogError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(storage(e)),
    }
}

/// Partition row, or an empty partition.
fn get_part(
    t: &impl ReadableTable<(u32, u32), &'static [u8]>,
    id: u32,
    p: u32,
) -> Result<PartitionStats, LogError> {
    match t.get((id, p)).map_err(storage)? {
        Some(v) => rows::part_decode(id, p, v.value(), true),
        None => Ok(PartitionStats::default()),
    }
}

fn put_part(
    t: &mut redb::Table<'_, (u32, u32), &'static [u8]>,
    id: u32,
    p: u32,
    s: &PartitionStats,
) -> Result<(), LogError> {
    t.insert((id, p), rows::part_encode(id, p, s).as_slice())
        .map_err(storage)?;
    Ok(())
}

/// Base offset of the chunk that holds `from` (the last chunk starting at or before it), or 0.
fn chunk_holding(
    chunks: &impl ReadableTable<(u32, u32, u64), &'static [u8]>,
    id: u32,
    p: u32,
    from: u64,
) -> Result<u64, LogError> {
    match chunks
        .range((id, p, 0)..=(id, p, from))
        .map_err(storage)?
        .next_back()
    {
        Some(e) => Ok(e.map_err(storage)?.0.value().2),
        None => Ok(0),
    }
}

/// The first stored offset of a partition (after retention or compaction), or `next`.
fn first_stored(
    chunks: &impl ReadableTable<(u32, u32, u64), &'static [u8]>,
    id: u32,
    p: u32,
    next: u64,
) -> Result<u64, LogError> {
    let mut range = chunks.range((id, p, 0)..=(id, p, u64::MAX)).map_err(storage)?;
    match range.next() {
        None => Ok(next),
        Some(e) => {
            let (k, v) = e.map_err(storage)?;
            let base = k.value().2;
            // A damaged first chunk still starts at its base: the records are there, unreadable.
            Ok(chunk::first_offset(base, v.value())
                .ok()
                .flatten()
                .unwrap_or(base))
        }
    }
}

/// The chunk facts of a partition for retention and truncation, oldest first.
fn chunk_infos<'a>(
    chunks: &'a impl ReadableTable<(u32, u32, u64), &'static [u8]>,
    id: u32,
    p: u32,
) -> Result<impl Iterator<Item = Result<ChunkInfo, LogError>> + 'a, LogError> {
    Ok(chunks
        .range((id, p, 0)..=(id, p, u64::MAX))
        .map_err(storage)?
        .map(|e| {
            let (k, v) = e.map_err(storage)?;
            let base = k.value().2;
            Ok(ChunkInfo {
                base,
                header: chunk::header(base, v.value())?,
                bytes: v.value().len() as u64,
            })
        }))
}

impl LogStore for RedbLog {
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        spec.validate()?;
        let row = self.write(|tx| {
            let mut t = tx.open_table(TOPICS).map_err(storage)?;
            let existing: Option<TopicRow> = match t.get(spec.name.as_str()).map_err(storage)? {
                Some(v) => Some(topic_decode(&spec.name, v.value()).map_err(|e| {
                    LogError::Corrupt(format!(
                        "{e} (run `edge-agent log verify --quarantine` with the agent stopped)"
                    ))
                })?),
                None => None,
            };
            let id = match &existing {
                Some(old) if old.spec.partitions != spec.partitions => {
                    return Err(LogError::InvalidTopic(format!(
                        "{} has {} partitions, not {}",
                        spec.name, old.spec.partitions, spec.partitions
                    )))
                }
                Some(old) => old.id,
                None => {
                    // Past every id in use: by a topic row, or by chunks whose topic row was
                    // quarantined (their records stay where `verify` reports them).
                    let mut max = match tx.open_table(CHUNKS).map_err(storage)?.last().map_err(storage)? {
                        Some((k, _)) => k.value().0 + 1,
                        None => 0,
                    };
                    for e in t.iter().map_err(storage)? {
                        let (k, v) = e.map_err(storage)?;
                        if let Ok(r) = topic_decode(k.value(), v.value()) {
                            max = max.max(r.id + 1);
                        }
                    }
                    max
                }
            };
            let row = TopicRow {
                id,
                spec: spec.clone(),
            };
            t.insert(spec.name.as_str(), topic_encode(&spec.name, &row)?.as_slice())
                .map_err(storage)?;
            Ok(row)
        })?;
        self.topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(spec.name.clone(), row);
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, LogError> {
        let mut v: Vec<TopicSpec> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.spec.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(v)
    }

    fn append(&self, append: &Append) -> Result<Vec<u64>, LogError> {
        let ids = append
            .partitions
            .iter()
            .map(|p| self.topic_partition(&p.topic, p.partition).map(|r| r.id))
            .collect::<Result<Vec<_>, _>>()?;
        let mut marks = Vec::with_capacity(append.partitions.len());
        let bases = self.write(|tx| {
            if append.partitions.iter().any(|p| !p.records.is_empty()) {
                self.reserve
                    .check(self.db.path(), tx)
                    .map_err(LogError::Storage)?;
            }
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut bases = Vec::with_capacity(append.partitions.len());
            for (p, id) in append.partitions.iter().zip(ids) {
                let mut stats = self.part_for_write(&parts, &chunks, &p.topic, id, p.partition)?;
                let base = stats.next_offset;
                bases.push(base);
                if p.records.is_empty() {
                    continue;
                }
                let bytes = chunk::encode(base, p.records.iter().enumerate().map(|(i, r)| (i as u64, r)));
                if stats.records == 0 {
                    stats.first_offset = base;
                }
                stats.next_offset += p.records.len() as u64;
                stats.records += p.records.len() as u64;
                stats.bytes += bytes.len() as u64;
                chunks
                    .insert((id, p.partition, base), bytes.as_slice())
                    .map_err(storage)?;
                put_part(&mut parts, id, p.partition, &stats)?;
                marks.push((mark_key(id, p.partition), stats.next_offset));
            }
            if !append.streams.is_empty() {
                let mut streams = tx.open_table(STREAMS).map_err(storage)?;
                for s in &append.streams {
                    streams
                        .insert(
                            (s.device.as_str(), s.boot),
                            rows::stream_encode(&s.device, s.boot, s.next_expected).as_slice(),
                        )
                        .map_err(storage)?;
                }
            }
            Ok(bases)
        })?;
        self.raise_marks(marks);
        Ok(bases)
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(Vec::new());
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut out = Vec::new();
            let mut value_bytes = 0usize;
            for e in chunks
                .range((id, partition, start)..=(id, partition, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                let before = out.len();
                chunk::decode(base, v.value(), from, &mut out, max_records)
                    .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
                value_bytes += out[before..].iter().map(|r| r.value.len()).sum::<usize>();
                if out.len() >= max_records || value_bytes > max_bytes {
                    break;
                }
            }
            Ok(super::cap_bytes(out, max_bytes))
        })
    }

    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&super::RecordRef<'_>) -> bool,
    ) -> Result<usize, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        if max_records == 0 {
            return Ok(0);
        }
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(0);
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut n = 0;
            for e in chunks
                .range((id, partition, start)..=(id, partition, u64::MAX))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                let stopped = chunk::visit(base, v.value(), from, &mut |r| {
                    n += 1;
                    f(r) && n < max_records
                })
                .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
                if stopped || n >= max_records {
                    break;
                }
            }
            Ok(n)
        })
    }

    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(0);
            };
            let start = chunk_holding(&chunks, id, partition, from)?;
            let mut n = 0;
            let mut count = |o: u64, k: Option<&[u8]>| {
                n += 1;
                f(o, k)
            };
            for e in chunks
                .range((id, partition, start)..(id, partition, to.max(start)))
                .map_err(storage)?
            {
                let (k, v) = e.map_err(storage)?;
                let base = k.value().2;
                chunk::scan_keys(base, v.value(), from, to, &mut count)
                    .map_err(|e| self.damaged(&chunk_at(topic, partition, base), e))?;
            }
            Ok(n)
        })
    }

    fn partition_stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| match table_missing_ok(tx.open_table(PARTS))? {
            Some(t) => get_part(&t, id, partition)
                .map_err(|e| self.damaged(&format!("topic {topic:?} partition {partition}"), e)),
            None => Ok(PartitionStats::default()),
        })
    }

    fn stream_state(&self, device: &str, boot: u32) -> Result<Option<u64>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(STREAMS))? {
            Some(t) => match t.get((device, boot)).map_err(storage)? {
                None => Ok(None),
                Some(v) => match rows::stream_decode(device, boot, v.value()) {
                    Ok(next) => Ok(Some(next)),
                    Err(e) => {
                        // Read as a new stream: a reading re-sent from before may enter twice,
                        // none is refused. Stalling the device instead would lose its readings.
                        self.damaged(&format!("device {device:?} boot {boot} (dedup state)"), e);
                        Ok(None)
                    }
                },
            },
            None => Ok(None),
        })
    }

    fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError> {
        let rows: Vec<TopicRow> = self
            .topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut total = RetentionReport::default();
        for row in rows {
            if row.spec.retention_ms.is_none() && row.spec.retention_bytes.is_none() {
                continue;
            }
            for p in 0..row.spec.partitions {
                let report = self.write(|tx| {
                    let mut parts = tx.open_table(PARTS).map_err(storage)?;
                    let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
                    let mut stats = self.part_for_write(&parts, &chunks, &row.spec.name, row.id, p)?;
                    let (drop, report) =
                        policy::retention(&row.spec, now_ms, chunk_infos(&chunks, row.id, p)?, stats.bytes)?;
                    let Some(&last) = drop.last() else {
                        return Ok(report);
                    };
                    chunks
                        .retain_in((row.id, p, 0)..=(row.id, p, last), |_, _| false)
                        .map_err(storage)?;
                    stats.records -= report.records.min(stats.records);
                    stats.bytes -= report.bytes.min(stats.bytes);
                    stats.first_offset = first_stored(&chunks, row.id, p, stats.next_offset)?;
                    put_part(&mut parts, row.id, p, &stats)?;
                    Ok(report)
                });
                let report = match report {
                    Ok(r) => r,
                    // One damaged partition does not stop retention elsewhere.
                    Err(e @ LogError::Corrupt(_)) => {
                        self.damaged(
                            &format!("retention of topic {:?} partition {p}", row.spec.name),
                            e,
                        );
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                total.chunks += report.chunks;
                total.records += report.records;
                total.bytes += report.bytes;
            }
        }
        if total.chunks > 0 {
            self.reserve.freed();
        }
        Ok(total)
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<RetentionReport, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut stats = self.part_for_write(&parts, &chunks, topic, id, partition)?;
            let (drop, report) =
                policy::truncate(below, chunk_infos(&chunks, id, partition)?).map_err(|e| {
                    self.damaged(&format!("truncation of topic {topic:?} partition {partition}"), e)
                })?;
            let Some(&last) = drop.last() else {
                return Ok(report);
            };
            chunks
                .retain_in((id, partition, 0)..=(id, partition, last), |_, _| false)
                .map_err(storage)?;
            stats.records -= report.records.min(stats.records);
            stats.bytes -= report.bytes.min(stats.bytes);
            stats.first_offset = first_stored(&chunks, id, partition, stats.next_offset)?;
            put_part(&mut parts, id, partition, &stats)?;
            self.reserve.freed();
            Ok(report)
        })
    }

    fn compact(&self, topic: &str) -> Result<u64, LogError> {
        let row = self.topic(topic)?;
        let mut removed = 0;
        for p in 0..row.spec.partitions {
            let n = self.write(|tx| {
                let mut parts = tx.open_table(PARTS).map_err(storage)?;
                let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
                let all = chunks
                    .range((row.id, p, 0)..=(row.id, p, u64::MAX))
                    .map_err(storage)?
                    .map(|e| e.map(|(k, v)| (k.value().2, v.value().to_vec())).map_err(storage))
                    .collect::<Result<Vec<_>, _>>()?;
                let rewrites = policy::compact(&all)?;
                if rewrites.is_empty() {
                    return Ok(0);
                }
                let mut stats = self.part_for_write(&parts, &chunks, topic, row.id, p)?;
                let mut n = 0;
                for rw in rewrites {
                    let old = chunks
                        .remove((row.id, p, rw.base))
                        .map_err(storage)?
                        .map_or(0, |v| v.value().len() as u64);
                    stats.bytes -= old.min(stats.bytes);
                    if let Some(bytes) = &rw.bytes {
                        chunks
                            .insert((row.id, p, rw.base), bytes.as_slice())
                            .map_err(storage)?;
                        stats.bytes += bytes.len() as u64;
                    }
                    stats.records -= rw.removed.min(stats.records);
                    n += rw.removed;
                }
                stats.first_offset = first_stored(&chunks, row.id, p, stats.next_offset)?;
                put_part(&mut parts, row.id, p, &stats)?;
                Ok(n)
            });
            removed += match n {
                Ok(n) => n,
                // A damaged chunk is left as it is (compaction would have to read it), and the
                // other partitions are compacted.
                Err(e @ LogError::Corrupt(_)) => {
                    self.damaged(&format!("compaction of topic {topic:?} partition {p}"), e);
                    0
                }
                Err(e) => return Err(e),
            };
        }
        Ok(removed)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(META))? {
            Some(t) => match t.get(key).map_err(storage)? {
                None => Ok(None),
                Some(v) => match rows::unseal(key.as_bytes(), v.value()) {
                    Some(value) => Ok(Some(value.to_vec())),
                    None => Err(self.damaged(&format!("metadata {key:?}"), rows::damaged("value"))),
                },
            },
            None => Ok(None),
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.write(|tx| {
            tx.open_table(META)
                .map_err(storage)?
                .insert(key, rows::seal(key.as_bytes(), value).as_slice())
                .map_err(storage)?;
            Ok(())
        })
    }

    fn damage(&self) -> Option<StoreDamage> {
        self.damage.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn verify(&self) -> Result<VerifyReport, LogError> {
        RedbLog::verify(self)
    }

    fn opened_with_repair(&self) -> bool {
        RedbLog::opened_with_repair(self)
    }

    fn write_failure(&self) -> Option<String> {
        self.db.write_failure()
    }

    fn skip_damaged(&self, topic: &str, partition: u32, from: u64) -> Result<Option<u64>, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| {
            let Some(chunks) = table_missing_ok(tx.open_table(CHUNKS))? else {
                return Ok(None);
            };
            let mut after = chunks
                .range((id, partition, from.saturating_add(1))..=(id, partition, u64::MAX))
                .map_err(storage)?;
            match after.next() {
                Some(e) => Ok(Some(e.map_err(storage)?.0.value().2)),
                None => Ok(None),
            }
        })
    }

    fn quarantine(&self) -> Result<VerifyReport, LogError> {
        RedbLog::quarantine(self)
    }
}
