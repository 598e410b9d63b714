//! `log verify` and `log verify --quarantine`: every stored byte checked, damage listed with
//! what it costs, and put aside so the rest of the log goes on.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadableDatabase, ReadableTable};
use serde::Serialize;
use tracing::warn;

use super::{
    chunk, get_part, rows, storage, table_missing_ok, topic_decode, RedbLog, TopicRow, CHUNKS, META, PARTS,
    QUARANTINE, STREAMS, TOPICS,
};
use crate::log::{LogError, PartitionStats};

/// One damaged item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedItem {
    /// Its name in the store (and in the `quarantine` table once put aside), e.g.
    /// `chunks/0/2/1200`, `partitions/0/2`, `streams/dev-7/3`, `meta/checkpoint.telemetry.2`.
    pub key: String,
    /// What it is, in words.
    pub what: String,
    /// The topic it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// The partition it belongs to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// The offsets whose records it held, `[from, to)`, for a chunk: what is lost at the edge.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsets: Option<[u64; 2]>,
    /// Why it failed.
    pub error: String,
}

/// What a scan of the whole log found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Topic rows read.
    pub topics: u64,
    /// Partitions checked.
    pub partitions: u64,
    /// Chunks read.
    pub chunks: u64,
    /// Records in the good chunks.
    pub records: u64,
    /// Bytes of chunks read.
    pub bytes: u64,
    /// Dedup states read.
    pub streams: u64,
    /// Metadata values read.
    pub meta: u64,
    /// What is damaged.
    pub damaged: Vec<DamagedItem>,
    /// Chunks stored under a topic id no topic row names (after a topic row was quarantined).
    pub orphan_chunks: u64,
    /// Items already in the quarantine table.
    pub quarantined: Vec<String>,
    /// What redb's own check of its B-tree pages found, if they are damaged (a damaged page
    /// that none of the rows above shows, e.g. in a branch, can hide rows from lookups).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_damage: Option<String>,
}

impl VerifyReport {
    /// Whether nothing damaged was found.
    pub fn is_clean(&self) -> bool {
        self.damaged.is_empty() && self.page_damage.is_none()
    }
}

/// A partition's stats worked out from its chunks.
#[derive(Debug)]
pub struct Rebuilt {
    /// The stats.
    pub stats: PartitionStats,
    /// The damaged chunks: base, and why.
    pub damaged: Vec<(u64, LogError)>,
    /// Every chunk's base, oldest first.
    pub bases: Vec<u64>,
}

/// Works a partition's row out from its chunks: records and bytes of the good ones (a damaged
/// chunk counts its bytes only), offsets continuing after the last chunk and never below `floor`
/// (the old row's next offset, when it could be read: offsets are never reused).
pub fn rebuild_part(
    chunks: &impl ReadableTable<(u32, u32, u64), &'static [u8]>,
    id: u32,
    p: u32,
    floor: Option<u64>,
) -> Result<Rebuilt, LogError> {
    let mut s = PartitionStats::default();
    let (mut first, mut next) = (None, 0u64);
    let mut damaged = Vec::new();
    let mut bases = Vec::new();
    for e in chunks.range((id, p, 0)..=(id, p, u64::MAX)).map_err(storage)? {
        let (k, v) = e.map_err(storage)?;
        let base = k.value().2;
        bases.push(base);
        s.bytes += v.value().len() as u64;
        match chunk::verify(base, v.value()) {
            Ok(h) => {
                s.records += h.count;
                if h.count > 0 {
                    let f = chunk::first_offset(base, v.value())?.unwrap_or(base);
                    first.get_or_insert(f);
                    next = next.max(base.saturating_add(h.last_delta) + 1);
                }
            }
            Err(e) => {
                first.get_or_insert(base);
                next = next.max(base + 1);
                damaged.push((base, e));
            }
        }
    }
    s.next_offset = next.max(floor.unwrap_or(0));
    s.first_offset = first.unwrap_or(s.next_offset);
    Ok(Rebuilt {
        stats: s,
        damaged,
        bases,
    })
}

type Topics = HashMap<u32, (String, TopicRow)>;
type Partitions = BTreeMap<(u32, u32), Rebuilt>;

fn scan(
    topics_t: &impl ReadableTable<&'static str, &'static [u8]>,
    parts_t: &impl ReadableTable<(u32, u32), &'static [u8]>,
    chunks_t: &impl ReadableTable<(u32, u32, u64), &'static [u8]>,
    streams_t: &impl ReadableTable<(&'static str, u32), &'static [u8]>,
    meta_t: &impl ReadableTable<&'static str, &'static [u8]>,
    quarantine_t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<(VerifyReport, Partitions, Topics), LogError> {
    let mut r = VerifyReport::default();
    let mut topics: Topics = HashMap::new();
    for e in topics_t.iter().map_err(storage)? {
        let (k, v) = e.map_err(storage)?;
        let name = k.value().to_string();
        r.topics += 1;
        match topic_decode(&name, v.value()) {
            Ok(row) => drop(topics.insert(row.id, (name, row))),
            Err(e) => r.damaged.push(DamagedItem {
                key: format!("topics/{name}"),
                what: format!("the row of topic {name:?} (its chunks become orphans)"),
                topic: Some(name),
                partition: None,
                offsets: None,
                error: e.to_string(),
            }),
        }
    }
    let mut rebuilt = BTreeMap::new();
    let mut ids: Vec<&u32> = topics.keys().collect();
    ids.sort();
    for &id in ids {
        let (name, row) = &topics[&id];
        for p in 0..row.spec.partitions {
            r.partitions += 1;
            let stored = get_part(parts_t, id, p);
            let floor = stored.as_ref().ok().map(|s| s.next_offset);
            let rb = rebuild_part(chunks_t, id, p, floor)?;
            r.chunks += rb.bases.len() as u64;
            r.bytes += rb.stats.bytes;
            r.records += rb.stats.records;
            for (base, e) in &rb.damaged {
                let i = rb.bases.iter().position(|b| b == base).unwrap_or(0);
                let to = rb.bases.get(i + 1).copied().unwrap_or(rb.stats.next_offset);
                r.damaged.push(DamagedItem {
                    key: format!("chunks/{id}/{p}/{base}"),
                    what: format!("the records of topic {name:?} partition {p} at offsets {base}..{to}"),
                    topic: Some(name.clone()),
                    partition: Some(p),
                    offsets: Some([*base, to]),
                    error: e.to_string(),
                });
            }
            let row_problem = match &stored {
                Err(e) => Some(e.to_string()),
                Ok(s) if rb.damaged.is_empty() && !agrees(s, &rb.stats) => Some(format!(
                    "row says records {} bytes {} offsets {}..{}, the chunks hold records {} bytes {} offsets {}..{}",
                    s.records,
                    s.bytes,
                    s.first_offset,
                    s.next_offset,
                    rb.stats.records,
                    rb.stats.bytes,
                    rb.stats.first_offset,
                    rb.stats.next_offset
                )),
                Ok(_) => None,
            };
            if let Some(error) = row_problem {
                r.damaged.push(DamagedItem {
                    key: format!("partitions/{id}/{p}"),
                    what: format!(
                        "the offsets and counts of topic {name:?} partition {p} (rebuilt from its chunks)"
                    ),
                    topic: Some(name.clone()),
                    partition: Some(p),
                    offsets: None,
                    error,
                });
            }
            rebuilt.insert((id, p), rb);
        }
    }
    for e in chunks_t.iter().map_err(storage)? {
        let (k, _) = e.map_err(storage)?;
        if !topics.contains_key(&k.value().0) {
            r.orphan_chunks += 1;
        }
    }
    for e in streams_t.iter().map_err(storage)? {
        let (k, v) = e.map_err(storage)?;
        let (device, boot) = k.value();
        r.streams += 1;
        if let Err(e) = rows::stream_decode(device, boot, v.value()) {
            r.damaged.push(DamagedItem {
                key: format!("streams/{device}/{boot}"),
                what: format!(
                    "the dedup state of device {device:?} boot {boot} (a re-sent reading may enter twice)"
                ),
                topic: None,
                partition: None,
                offsets: None,
                error: e.to_string(),
            });
        }
    }
    for e in meta_t.iter().map_err(storage)? {
        let (k, v) = e.map_err(storage)?;
        r.meta += 1;
        if rows::unseal(k.value().as_bytes(), v.value()).is_none() {
            r.damaged.push(DamagedItem {
                key: format!("meta/{}", k.value()),
                what: format!(
                    "the metadata value {:?} (checkpoints are found again from the cloud)",
                    k.value()
                ),
                topic: None,
                partition: None,
                offsets: None,
                error: rows::damaged("value").to_string(),
            });
        }
    }
    for e in quarantine_t.iter().map_err(storage)? {
        r.quarantined.push(e.map_err(storage)?.0.value().to_string());
    }
    Ok((r, rebuilt, topics))
}

/// Whether a row agrees with what its chunks hold (the next offset may run ahead: retention and
/// compaction keep it).
fn agrees(row: &PartitionStats, chunks: &PartitionStats) -> bool {
    row.records == chunks.records
        && row.bytes == chunks.bytes
        && row.next_offset >= chunks.next_offset
        && (chunks.records == 0 || row.first_offset == chunks.first_offset)
}

impl RedbLog {
    /// Reads every row and chunk of the log and checks it: checksums, decoding, and that each
    /// partition's row agrees with its chunks; then runs redb's check of its pages. Changes
    /// nothing.
    pub fn verify(&self) -> Result<VerifyReport, LogError> {
        let mut r = self.scan_rows()?;
        r.page_damage = self.db.check_pages().err();
        Ok(r)
    }

    fn scan_rows(&self) -> Result<VerifyReport, LogError> {
        self.db.with(|db| {
            let tx = db.begin_read().map_err(storage)?;
            let (Some(topics), Some(parts), Some(chunks), Some(streams), Some(meta), Some(q)) = (
                table_missing_ok(tx.open_table(TOPICS))?,
                table_missing_ok(tx.open_table(PARTS))?,
                table_missing_ok(tx.open_table(CHUNKS))?,
                table_missing_ok(tx.open_table(STREAMS))?,
                table_missing_ok(tx.open_table(META))?,
                table_missing_ok(tx.open_table(QUARANTINE))?,
            ) else {
                return Ok(VerifyReport::default());
            };
            Ok(scan(&topics, &parts, &chunks, &streams, &meta, &q)?.0)
        })
    }

    /// [`RedbLog::verify`], then, in one transaction, moves every damaged item to the
    /// `quarantine` table (its bytes as found) and rebuilds the rows that counted it: the
    /// partition reads past the hole, offsets are never reused, the bridge forwards what
    /// follows. Returns the report of what was found (and is now put aside); the store's
    /// damage record is cleared.
    pub fn quarantine(&self) -> Result<VerifyReport, LogError> {
        let (report, dropped_topics) = self.write(|tx| {
            let mut topics = tx.open_table(TOPICS).map_err(storage)?;
            let mut parts = tx.open_table(PARTS).map_err(storage)?;
            let mut chunks = tx.open_table(CHUNKS).map_err(storage)?;
            let mut streams = tx.open_table(STREAMS).map_err(storage)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            let mut q = tx.open_table(QUARANTINE).map_err(storage)?;
            let (report, rebuilt, _) = scan(&topics, &parts, &chunks, &streams, &meta, &q)?;
            let mut dropped_topics = Vec::new();
            let mut touched = std::collections::BTreeSet::new();
            for item in &report.damaged {
                let mut path = item.key.splitn(2, '/');
                let (kind, rest) = (path.next().unwrap_or(""), path.next().unwrap_or(""));
                let num = |s: &str| {
                    s.parse::<u64>()
                        .map_err(|_| LogError::Corrupt(format!("key {s}")))
                };
                let bytes: Option<Vec<u8>> = match kind {
                    "chunks" => {
                        let f: Vec<&str> = rest.split('/').collect();
                        let key = (num(f[0])? as u32, num(f[1])? as u32, num(f[2])?);
                        touched.insert((key.0, key.1));
                        let v = chunks.remove(key).map_err(storage)?.map(|v| v.value().to_vec());
                        v
                    }
                    "partitions" => {
                        let f: Vec<&str> = rest.split('/').collect();
                        let key = (num(f[0])? as u32, num(f[1])? as u32);
                        touched.insert(key);
                        let v = parts.get(key).map_err(storage)?.map(|v| v.value().to_vec());
                        v
                    }
                    "streams" => {
                        let (device, boot) = rest.rsplit_once('/').unwrap_or((rest, "0"));
                        let v = streams
                            .remove((device, num(boot)? as u32))
                            .map_err(storage)?
                            .map(|v| v.value().to_vec());
                        v
                    }
                    "meta" => {
                        let v = meta.remove(rest).map_err(storage)?.map(|v| v.value().to_vec());
                        v
                    }
                    "topics" => {
                        dropped_topics.push(rest.to_string());
                        let v = topics.remove(rest).map_err(storage)?.map(|v| v.value().to_vec());
                        v
                    }
                    _ => None,
                };
                if let Some(b) = bytes {
                    q.insert(item.key.as_str(), b.as_slice()).map_err(storage)?;
                }
                warn!(item = %item.key, what = %item.what, error = %item.error, "quarantined");
            }
            for (id, p) in touched {
                let floor = rebuilt.get(&(id, p)).map(|r| r.stats.next_offset);
                let s = rebuild_part(&chunks, id, p, floor)?.stats;
                parts
                    .insert((id, p), rows::part_encode(id, p, &s).as_slice())
                    .map_err(storage)?;
            }
            Ok((report, dropped_topics))
        })?;
        {
            let mut t = self.topics.write().unwrap_or_else(|e| e.into_inner());
            for name in dropped_topics {
                t.remove(&name);
            }
        }
        *self.damage.lock().unwrap_or_else(|e| e.into_inner()) = None;
        // Removing a damaged value rewrote the page that held it; what redb finds now is what
        // is left.
        let mut report = report;
        report.page_damage = self.db.check_pages().err();
        Ok(report)
    }
}
