//! The on-disk log: one redb database.
//!
//! # Tables
//! | table | key | value |
//! |---|---|---|
//! | `topics` | name | JSON `{id, spec}` |
//! | `partitions` | `(topic id, partition)` | 32 bytes LE: first offset, next offset, records, bytes |
//! | `chunks` | `(topic id, partition, base offset)` | a chunk ([`super::chunk`]) |
//! | `streams` | `(device, boot)` | next expected sequence |
//! | `meta` | key | bytes |
//! | `layout` | `"version"` | [`LAYOUT_VERSION`] |
//!
//! # Layout version
//! The file records the version of this layout ([`foundation::redb`]'s `layout` table, apart
//! from `meta`, whose keys belong to the store's callers). A new file gets [`LAYOUT_VERSION`];
//! a file from before the record (tables, no version) is version 1 and is stamped on open; a
//! file of any other version is refused on open ([`LogError::Layout`]), naming the file and
//! both versions, before anything is written to it.
//!
//! Every write is one transaction committed with `Durability::Immediate` (one fsync); an
//! append's records, partition heads and stream states are in the same transaction, so the
//! dedup state can never disagree with the records after a crash.
//!
//! # Failing disks
//! After an I/O error redb refuses every further write until the database is reopened. The
//! store therefore reopens the file before the next operation after any storage error, so a
//! full disk that gets space again heals without restarting the agent. A failed commit may
//! still have been durable (redb's rule); callers only ack what a successful `append` returned,
//! and re-deliveries are deduplicated by the stream states, so that is safe.

use foundation::redb::Reopening;
use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;

use redb::{Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::policy::{self, ChunkInfo};
use super::{chunk, Append, LogError, LogStore, PartitionStats, Record, RetentionReport, TopicSpec};

const TOPICS: TableDefinition<&str, &[u8]> = TableDefinition::new("topics");
const PARTS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("partitions");
const CHUNKS: TableDefinition<(u32, u32, u64), &[u8]> = TableDefinition::new("chunks");
const STREAMS: TableDefinition<(&str, u32), u64> = TableDefinition::new("streams");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The on-disk layout this build reads and writes.
pub const LAYOUT_VERSION: u64 = 1;

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
}

fn storage<E: std::fmt::Display>(e: E) -> LogError {
    LogError::Storage(e.to_string())
}

fn parts_encode(s: &PartitionStats) -> [u8; 32] {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&s.first_offset.to_le_bytes());
    b[8..16].copy_from_slice(&s.next_offset.to_le_bytes());
    b[16..24].copy_from_slice(&s.records.to_le_bytes());
    b[24..32].copy_from_slice(&s.bytes.to_le_bytes());
    b
}

fn parts_decode(b: &[u8]) -> Result<PartitionStats, LogError> {
    let b: &[u8; 32] = b
        .try_into()
        .map_err(|_| LogError::Corrupt("partition row size".into()))?;
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    Ok(PartitionStats {
        first_offset: u(0),
        next_offset: u(8),
        records: u(16),
        bytes: u(24),
    })
}

impl RedbLog {
    /// Closes the file for a clean stop, whoever still holds the store: later calls fail, and
    /// redb's "recovery required" mark is off, so the next start needs no repair.
    pub fn close(&self) {
        self.db.close();
    }

    /// Opens (or creates) the log at `path`. Fails with a clear error if another process
    /// has it open (redb allows one), or if the file is of another layout version.
    pub fn open(path: &Path) -> Result<Self, LogError> {
        let store = RedbLog {
            db: Reopening::open_versioned(
                path,
                CACHE_BYTES,
                "is the agent running? use its admin API",
                LAYOUT_VERSION,
            )?,
            topics: RwLock::new(HashMap::new()),
        };
        store.init()?;
        Ok(store)
    }

    /// Creates the tables and loads the topic directory.
    fn init(&self) -> Result<(), LogError> {
        let rows = self.write(|tx| {
            tx.open_table(PARTS).map_err(storage)?;
            tx.open_table(CHUNKS).map_err(storage)?;
            tx.open_table(STREAMS).map_err(storage)?;
            tx.open_table(META).map_err(storage)?;
            let t = tx.open_table(TOPICS).map_err(storage)?;
            let mut rows = HashMap::new();
            for e in t.iter().map_err(storage)? {
                let (k, v) = e.map_err(storage)?;
                let row: TopicRow = serde_json::from_slice(v.value())
                    .map_err(|e| LogError::Corrupt(format!("topic row: {e}")))?;
                rows.insert(k.value().to_string(), row);
            }
            Ok(rows)
        })?;
        *self.topics.write().unwrap_or_else(|e| e.into_inner()) = rows;
        Ok(())
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
            let value = f(&mut tx)?;
            tx.commit().map_err(storage)?;
            Ok(value)
        });
        match &result {
            Ok(_) => self.db.write_succeeded(),
            Err(e @ LogError::Storage(_)) => self.db.write_failed(e),
            Err(_) => {}
        }
        result
    }

    fn read_db<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.db.with(|db| f(&db.begin_read().map_err(storage)?))
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
        Some(v) => parts_decode(v.value()),
        None => Ok(PartitionStats::default()),
    }
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
            Ok(chunk::first_offset(base, v.value())?.unwrap_or(base))
        }
    }
}

impl LogStore for RedbLog {
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        spec.validate()?;
        let row = self.write(|tx| {
            let mut t = tx.open_table(TOPICS).map_err(storage)?;
            let existing: Option<TopicRow> = match t.get(spec.name.as_str()).map_err(storage)? {
                Some(v) => Some(
                    serde_json::from_slice(v.value())
                        .map_err(|e| LogError::Corrupt(format!("topic row: {e}")))?,
                ),
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
                    let mut max = 0;
                    for e in t.iter().map_err(storage)? {
                        let (_, v) = e.map_err(storage)?;
                        let r: TopicRow = serde_json::from_slice(v.value())
                            .map_err(|e| LogError::Corrupt(format!("topic row: {e}")))?;
                        max = max.max(r.id + 1);
                    }
                    max
                }
            };
            let row = TopicRow {
                id,
                spec: spec.clone(),
            };
            let json = serde_json::to_vec(&row).map_err(storage)?;
            t.insert(spec.name.as_str(), json.as_slice()).map_err(storage)?;
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
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut bases = Vec::with_capacity(append.partitions.len());
            for (p, id) in append.partitions.iter().zip(ids) {
                let mut stats = get_part(&parts, id, p.partition)?;
                let base = stats.next_offset;
                bases.push(base);
                if p.records.is_empty() {
                    continue;
                }
                let bytes = chunk::encode(p.records.iter().enumerate().map(|(i, r)| (i as u64, r)));
                if stats.records == 0 {
                    stats.first_offset = base;
                }
                stats.next_offset += p.records.len() as u64;
                stats.records += p.records.len() as u64;
                stats.bytes += bytes.len() as u64;
                chunks
                    .insert((id, p.partition, base), bytes.as_slice())
                    .map_err(storage)?;
                parts
                    .insert((id, p.partition), parts_encode(&stats).as_slice())
                    .map_err(storage)?;
            }
            if !append.streams.is_empty() {
                let mut streams = tx.open_table(STREAMS).map_err(storage)?;
                for s in &append.streams {
                    streams
                        .insert((s.device.as_str(), s.boot), s.next_expected)
                        .map_err(storage)?;
                }
            }
            Ok(bases)
        })
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
                let before = out.len();
                chunk::decode(k.value().2, v.value(), from, &mut out, max_records)?;
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
                let stopped = chunk::visit(k.value().2, v.value(), from, &mut |r| {
                    n += 1;
                    f(r) && n < max_records
                })?;
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
                chunk::scan_keys(k.value().2, v.value(), from, to, &mut count)?;
            }
            Ok(n)
        })
    }

    fn partition_stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.read_db(|tx| match table_missing_ok(tx.open_table(PARTS))? {
            Some(t) => get_part(&t, id, partition),
            None => Ok(PartitionStats::default()),
        })
    }

    fn stream_state(&self, device: &str, boot: u32) -> Result<Option<u64>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(STREAMS))? {
            Some(t) => Ok(t.get((device, boot)).map_err(storage)?.map(|v| v.value())),
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
                    let mut stats = get_part(&parts, row.id, p)?;
                    let (drop, report) = {
                        let infos = chunks
                            .range((row.id, p, 0)..=(row.id, p, u64::MAX))
                            .map_err(storage)?
                            .map(|e| {
                                let (k, v) = e.map_err(storage)?;
                                Ok(ChunkInfo {
                                    base: k.value().2,
                                    header: chunk::header(v.value())?,
                                    bytes: v.value().len() as u64,
                                })
                            });
                        policy::retention(&row.spec, now_ms, infos, stats.bytes)?
                    };
                    let Some(&last) = drop.last() else {
                        return Ok(report);
                    };
                    chunks
                        .retain_in((row.id, p, 0)..=(row.id, p, last), |_, _| false)
                        .map_err(storage)?;
                    stats.records -= report.records.min(stats.records);
                    stats.bytes -= report.bytes.min(stats.bytes);
                    stats.first_offset = first_stored(&chunks, row.id, p, stats.next_offset)?;
                    parts
                        .insert((row.id, p), parts_encode(&stats).as_slice())
                        .map_err(storage)?;
                    Ok(report)
                })?;
                total.chunks += report.chunks;
                total.records += report.records;
                total.bytes += report.bytes;
            }
        }
        Ok(total)
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<RetentionReport, LogError> {
        let id = self.topic_partition(topic, partition)?.id;
        self.write(|tx| {
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut stats = get_part(&parts, id, partition)?;
            let (drop, report) = {
                let infos = chunks
                    .range((id, partition, 0)..=(id, partition, u64::MAX))
                    .map_err(storage)?
                    .map(|e| {
                        let (k, v) = e.map_err(storage)?;
                        Ok(ChunkInfo {
                            base: k.value().2,
                            header: chunk::header(v.value())?,
                            bytes: v.value().len() as u64,
                        })
                    });
                policy::truncate(below, infos)?
            };
            let Some(&last) = drop.last() else {
                return Ok(report);
            };
            chunks
                .retain_in((id, partition, 0)..=(id, partition, last), |_, _| false)
                .map_err(storage)?;
            stats.records -= report.records.min(stats.records);
            stats.bytes -= report.bytes.min(stats.bytes);
            stats.first_offset = first_stored(&chunks, id, partition, stats.next_offset)?;
            parts
                .insert((id, partition), parts_encode(&stats).as_slice())
                .map_err(storage)?;
            Ok(report)
        })
    }

    fn compact(&self, topic: &str) -> Result<u64, LogError> {
        let row = self.topic(topic)?;
        let mut removed = 0;
        for p in 0..row.spec.partitions {
            removed += self.write(|tx| {
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
                let mut stats = get_part(&parts, row.id, p)?;
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
                parts
                    .insert((row.id, p), parts_encode(&stats).as_slice())
                    .map_err(storage)?;
                Ok(n)
            })?;
        }
        Ok(removed)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        self.read_db(|tx| match table_missing_ok(tx.open_table(META))? {
            Some(t) => Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec())),
            None => Ok(None),
        })
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.write(|tx| {
            tx.open_table(META)
                .map_err(storage)?
                .insert(key, value)
                .map_err(storage)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use foundation::redb::LAYOUT;
    use redb::Database;

    use super::*;
    use crate::log::suite::{one, rec};

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("edge-layout-{}", foundation::ids::unique_tag()))
    }

    /// A log holding one record and one metadata value.
    fn log_with_data(path: &Path) {
        let s = RedbLog::open(path).unwrap();
        s.ensure_topic(&TopicSpec::new("t", 1)).unwrap();
        s.append(&one("t", 0, vec![rec(5, Some("k"), "v")])).unwrap();
        s.set_meta("gateway_id", b"gw-1").unwrap();
    }

    fn recorded_layout(path: &Path) -> Option<u64> {
        let db = redb::ReadOnlyDatabase::open(path).unwrap();
        let tx = db.begin_read().unwrap();
        let v = tx
            .open_table(LAYOUT)
            .ok()?
            .get("version")
            .unwrap()
            .map(|v| v.value());
        v
    }

    /// Sets (`Some`) or removes with its table (`None`) the version record.
    fn rewrite_layout(path: &Path, version: Option<u64>) {
        let db = Database::create(path).unwrap();
        let tx = db.begin_write().unwrap();
        match version {
            Some(v) => drop(tx.open_table(LAYOUT).unwrap().insert("version", v).unwrap()),
            None => assert!(tx.delete_table(LAYOUT).unwrap()),
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_new_log_records_the_current_layout() {
        let dir = scratch();
        let path = dir.join("log.redb");
        drop(RedbLog::open(&path).unwrap());
        assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_log_without_a_layout_record_opens_with_its_data_and_is_stamped() {
        let dir = scratch();
        let path = dir.join("log.redb");
        log_with_data(&path);
        // What an agent before layout versions left: its tables, no `layout`.
        rewrite_layout(&path, None);
        assert_eq!(recorded_layout(&path), None);

        let s = RedbLog::open(&path).unwrap();
        let got = s.read("t", 0, 0, 10, usize::MAX).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].value, b"v");
        assert_eq!(s.meta("gateway_id").unwrap().as_deref(), Some(&b"gw-1"[..]));
        drop(s);
        assert_eq!(recorded_layout(&path), Some(1), "stamped as today's layout");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_log_of_an_unknown_layout_is_refused_and_left_untouched() {
        let dir = scratch();
        let path = dir.join("log.redb");
        log_with_data(&path);
        rewrite_layout(&path, Some(999));
        let before = std::fs::read(&path).unwrap();

        let e = RedbLog::open(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, LogError::Layout(_)), "{e:?}");
        assert!(!e.is_retryable());
        assert!(msg.contains(&path.display().to_string()), "names the file: {msg}");
        assert!(msg.contains("version 999"), "names its version: {msg}");
        assert!(
            msg.contains(&format!("reads version {LAYOUT_VERSION}")),
            "names ours: {msg}"
        );
        assert!(msg.contains("backup"), "says what to do: {msg}");
        assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was written");
        std::fs::remove_dir_all(dir).ok();
    }
}
