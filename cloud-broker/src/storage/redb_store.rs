//! The on-disk storage: one redb database.
//!
//! | table | key | value |
//! |---|---|---|
//! | `batches` | `(topic id, partition, base offset)` | the record batch, base offset written in |
//! | `topics` | topic id | JSON [`TopicMeta`] |
//! | `heads` | `(topic id, partition)` | JSON [`PartitionHead`] |
//! | `producers` | `(topic id, partition, producer id)` | JSON [`ProducerState`] |
//! | `offsets` | `(group, topic, partition)` | JSON [`CommittedOffset`] |
//! | `meta` | key | bytes |
//! | `layout` | `"version"` | [`LAYOUT_VERSION`] |
//!
//! # Layout version
//! The file records the version of this layout ([`foundation::redb`]'s `layout` table, apart
//! from `meta`, whose keys are the broker's). A new file gets [`LAYOUT_VERSION`]; a file from
//! before the record (tables, no version) is version 1 and is stamped on open; a file of any
//! other version is refused on open, naming the file and both versions, before anything is
//! written to it.
//!
//! Each [`Storage::apply`] is one write transaction with `Durability::Immediate`. After an I/O
//! error redb refuses further writes until reopened; the store reopens before the next write.

use std::path::Path;

use foundation::redb::Reopening;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, TableError};
use serde::de::DeserializeOwned;

use super::{
    CommittedOffset, PartitionHead, ProducerState, Snapshot, Storage, StoreError, TopicMeta, WriteSet,
};
use crate::batch::{self, BatchHeader};

const BATCHES: TableDefinition<(u32, u32, i64), &[u8]> = TableDefinition::new("batches");
const TOPICS: TableDefinition<u32, &[u8]> = TableDefinition::new("topics");
const HEADS: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("heads");
const PRODUCERS: TableDefinition<(u32, u32, i64), &[u8]> = TableDefinition::new("producers");
const OFFSETS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("offsets");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The on-disk layout this build reads and writes.
pub const LAYOUT_VERSION: u64 = 1;

/// redb-backed storage.
#[derive(Debug)]
pub struct RedbStorage {
    db: Reopening,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn parse<T: DeserializeOwned>(b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
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

fn missing_ok<T>(r: Result<T, TableError>) -> Result<Option<T>, StoreError> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

impl RedbStorage {
    /// Opens or creates the database at `path`. A file of another layout version is refused
    /// ([`StoreError::Layout`]).
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let s = RedbStorage {
            db: Reopening::open_versioned(path, 256 << 20, "is a broker running?", LAYOUT_VERSION)?,
        };
        s.apply(&WriteSet::default())?; // creates the tables
        Ok(s)
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.db.with(|db| f(db))
    }
}

impl Storage for RedbStorage {
    fn close(&self) {
        self.db.close();
    }

    fn write_failure(&self) -> Option<String> {
        self.db.write_failure()
    }

    fn apply(&self, w: &WriteSet) -> Result<(), StoreError> {
        let r = self.with_db(|db| {
            let mut tx = db.begin_write().map_err(io)?;
            tx.set_durability(Durability::Immediate).map_err(io)?;
            {
                let mut batches = tx.open_table(BATCHES).map_err(io)?;
                let mut topics = tx.open_table(TOPICS).map_err(io)?;
                let mut heads = tx.open_table(HEADS).map_err(io)?;
                let mut producers = tx.open_table(PRODUCERS).map_err(io)?;
                let mut offsets = tx.open_table(OFFSETS).map_err(io)?;
                let mut meta = tx.open_table(META).map_err(io)?;
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
                    offsets.retain(|k, _| k.1 != t.name).map_err(io)?;
                }
                for t in &w.put_topics {
                    topics.insert(t.id, json(t)?.as_slice()).map_err(io)?;
                }
                for k in &w.remove_batches {
                    batches.remove(*k).map_err(io)?;
                }
                for (t, p, base, bytes) in &w.batches {
                    batches.insert((*t, *p, *base), bytes.as_slice()).map_err(io)?;
                }
                for (t, p, before) in &w.truncate {
                    batches
                        .retain_in((*t, *p, i64::MIN)..(*t, *p, *before), |_, _| false)
                        .map_err(io)?;
                }
                for (t, p, h) in &w.heads {
                    heads.insert((*t, *p), json(h)?.as_slice()).map_err(io)?;
                }
                for (t, p, pid, s) in &w.producers {
                    producers
                        .insert((*t, *p, *pid), json(s)?.as_slice())
                        .map_err(io)?;
                }
                for (g, t, p, o) in &w.offsets {
                    match o {
                        Some(o) => {
                            offsets
                                .insert((g.as_str(), t.as_str(), *p), json(o)?.as_slice())
                                .map_err(io)?;
                        }
                        None => {
                            offsets.remove((g.as_str(), t.as_str(), *p)).map_err(io)?;
                        }
                    }
                }
                for (k, v) in &w.meta {
                    meta.insert(k.as_str(), v.as_slice()).map_err(io)?;
                }
            }
            tx.commit().map_err(io)
        });
        match &r {
            Ok(()) => self.db.write_succeeded(),
            Err(e) => self.db.write_failed(e),
        }
        r
    }

    fn load(&self) -> Result<Snapshot, StoreError> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(io)?;
            let mut s = Snapshot::default();
            if let Some(t) = missing_ok(tx.open_table(TOPICS))? {
                for e in t.iter().map_err(io)? {
                    let (_, v) = e.map_err(io)?;
                    s.topics.push(parse::<TopicMeta>(v.value())?);
                }
            }
            if let Some(t) = missing_ok(tx.open_table(HEADS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    s.heads.insert(k.value(), parse::<PartitionHead>(v.value())?);
                }
            }
            if let Some(t) = missing_ok(tx.open_table(PRODUCERS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    s.producers.insert(k.value(), parse::<ProducerState>(v.value())?);
                }
            }
            if let Some(t) = missing_ok(tx.open_table(OFFSETS))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    let (g, topic, p) = k.value();
                    s.offsets.insert(
                        (g.to_string(), topic.to_string(), p),
                        parse::<CommittedOffset>(v.value())?,
                    );
                }
            }
            if let Some(t) = missing_ok(tx.open_table(META))? {
                for e in t.iter().map_err(io)? {
                    let (k, v) = e.map_err(io)?;
                    s.meta.insert(k.value().to_string(), v.value().to_vec());
                }
            }
            Ok(s)
        })
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
                let (_, v) = e.map_err(io)?;
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
                let (_, v) = e.map_err(io)?;
                out.push(batch::header(v.value()).map_err(|e| StoreError::Corrupt(e.to_string()))?);
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use foundation::redb::LAYOUT;

    use super::*;
    use crate::storage::TopicConfig;

    fn scratch() -> PathBuf {
        std::env::temp_dir().join(format!("cloud-layout-{}", foundation::ids::unique_tag()))
    }

    /// A store holding one topic and one metadata value.
    fn store_with_data(path: &Path) {
        let s = RedbStorage::open(path).unwrap();
        let mut w = WriteSet::default();
        w.put_topics.push(TopicMeta {
            id: 3,
            uuid: [3; 16],
            name: "t".into(),
            partitions: 2,
            config: TopicConfig::default(),
            replicas: Vec::new(),
        });
        w.meta.push(("next_producer_id".into(), b"7".to_vec()));
        s.apply(&w).unwrap();
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
    fn a_new_store_records_the_current_layout() {
        let dir = scratch();
        let path = dir.join("broker.redb");
        drop(RedbStorage::open(&path).unwrap());
        assert_eq!(recorded_layout(&path), Some(LAYOUT_VERSION));
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_store_without_a_layout_record_opens_with_its_data_and_is_stamped() {
        let dir = scratch();
        let path = dir.join("broker.redb");
        store_with_data(&path);
        // What a broker before layout versions left: its tables, no `layout`.
        rewrite_layout(&path, None);
        assert_eq!(recorded_layout(&path), None);

        let s = RedbStorage::open(&path).unwrap();
        let snap = s.load().unwrap();
        assert_eq!(snap.topics.len(), 1);
        assert_eq!(snap.topics[0].name, "t");
        assert_eq!(
            snap.meta.get("next_producer_id").map(Vec::as_slice),
            Some(&b"7"[..])
        );
        drop(s);
        assert_eq!(recorded_layout(&path), Some(1), "stamped as today's layout");
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_store_of_an_unknown_layout_is_refused_and_left_untouched() {
        let dir = scratch();
        let path = dir.join("broker.redb");
        store_with_data(&path);
        rewrite_layout(&path, Some(999));
        let before = std::fs::read(&path).unwrap();

        let e = RedbStorage::open(&path).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StoreError::Layout(_)), "{e:?}");
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
