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

mod marks;
mod ops;
mod rows;
#[cfg(test)]
mod tests;
mod upgrade;
mod verify;

pub use verify::{DamagedItem, VerifyReport};

use marks::mark_key;

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
