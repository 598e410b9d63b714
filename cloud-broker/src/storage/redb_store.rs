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
    /// Opens or creates the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let s = RedbStorage {
            db: Reopening::open(path, 256 << 20, "is a broker running?")?,
        };
        s.apply(&WriteSet::default())?; // creates the tables
        Ok(s)
    }

    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.db.with(|db| f(db))
    }
}

impl Storage for RedbStorage {
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
        if r.is_err() {
            self.db.poison();
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
