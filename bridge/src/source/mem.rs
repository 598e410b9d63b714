//! An in-memory [`EdgeLog`] for the engine's tests: each append is one chunk (truncation
//! removes whole chunks, as the redb log does).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use super::{EdgeLog, EdgePartition, EdgeRecord, EdgeRecordRef, EdgeTopic};
use crate::Result;

#[derive(Debug, Default)]
struct Partition {
    /// Chunks by first offset.
    chunks: BTreeMap<u64, Vec<EdgeRecord>>,
    next: u64,
}

impl Partition {
    fn records_from(&self, from: u64) -> impl Iterator<Item = &EdgeRecord> {
        let start = self.chunks.range(..=from).next_back().map_or(0, |(&k, _)| k);
        self.chunks
            .range(start..)
            .flat_map(|(_, c)| c.iter())
            .filter(move |r| r.offset >= from)
    }

    fn size(r: &EdgeRecord) -> u64 {
        (r.value.len() + r.key.as_ref().map_or(0, Vec::len) + 16) as u64
    }
}

#[derive(Debug, Default)]
struct Inner {
    topics: BTreeMap<String, (bool, Vec<Partition>)>,
    state: Option<Vec<u8>>,
    /// Partitions whose reads fail (a damaged chunk, as the redb log reports it).
    failing: std::collections::BTreeSet<(String, u32)>,
}

/// A record to append: key, value, and a reading's (boot, seq).
pub type NewRecord = (Option<Vec<u8>>, Vec<u8>, Option<(u32, u64)>);

/// The in-memory edge log.
#[derive(Debug, Default)]
pub struct MemLog {
    inner: Mutex<Inner>,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates a topic.
    pub fn create(&self, name: &str, partitions: u32, compacted: bool) {
        let parts = (0..partitions).map(|_| Partition::default()).collect();
        self.lock()
            .topics
            .entry(name.into())
            .or_insert((compacted, parts));
    }

    /// Appends records (key, value, reading) to a partition as one chunk; returns their
    /// first offset.
    pub fn append(&self, topic: &str, partition: u32, records: Vec<NewRecord>, ts: i64) -> u64 {
        let mut g = self.lock();
        let p = &mut g.topics.get_mut(topic).expect("a created topic").1[partition as usize];
        let first = p.next;
        let chunk: Vec<EdgeRecord> = records
            .into_iter()
            .enumerate()
            .map(|(i, (key, value, reading))| EdgeRecord {
                offset: first + i as u64,
                timestamp_ms: ts,
                key,
                value,
                headers: Vec::new(),
                reading,
            })
            .collect();
        p.next += chunk.len() as u64;
        if !chunk.is_empty() {
            p.chunks.insert(first, chunk);
        }
        first
    }

    /// Makes every read of a partition fail (`true`), as a damaged chunk does, or work again.
    pub fn fail_reads(&self, topic: &str, partition: u32, fail: bool) {
        let mut g = self.lock();
        if fail {
            g.failing.insert((topic.into(), partition));
        } else {
            g.failing.remove(&(topic.into(), partition));
        }
    }

    /// A read of a partition made to fail: its error.
    fn check_reads(&self, topic: &str, partition: u32) -> Result<()> {
        if self.lock().failing.contains(&(topic.to_string(), partition)) {
            return Err(crate::Error::log(format!(
                "corrupt log data: topic {topic:?} partition {partition}, chunk at offset 0: checksum mismatch"
            )));
        }
        Ok(())
    }

    fn with_partition<T>(
        &self,
        topic: &str,
        partition: u32,
        f: impl FnOnce(&mut Partition) -> T,
    ) -> Result<T> {
        let mut g = self.lock();
        let p = g
            .topics
            .get_mut(topic)
            .and_then(|t| t.1.get_mut(partition as usize))
            .ok_or_else(|| crate::Error::log(format!("no partition {topic}/{partition}")))?;
        Ok(f(p))
    }
}

impl EdgeLog for MemLog {
    fn topics(&self) -> Result<Vec<EdgeTopic>> {
        Ok(self
            .lock()
            .topics
            .iter()
            .map(|(n, (c, p))| EdgeTopic {
                name: n.clone(),
                partitions: p.len() as u32,
                compacted: *c,
            })
            .collect())
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<EdgeRecord>> {
        self.check_reads(topic, partition)?;
        self.with_partition(topic, partition, |p| {
            let mut bytes = 0;
            let mut out = Vec::new();
            for r in p.records_from(from).take(max_records) {
                if !out.is_empty() && bytes + r.value.len() > max_bytes {
                    break;
                }
                bytes += r.value.len();
                out.push(r.clone());
            }
            out
        })
    }

    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&EdgeRecordRef<'_>) -> bool,
    ) -> Result<usize> {
        // Copied out first: `f` may call back into the log.
        let recs = self.read(topic, partition, from, max_records, usize::MAX)?;
        let mut n = 0;
        for r in &recs {
            n += 1;
            if !r.with_ref(|r| f(r)) {
                break;
            }
        }
        Ok(n)
    }

    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64> {
        self.check_reads(topic, partition)?;
        let keys: Vec<(u64, Option<Vec<u8>>)> = self.with_partition(topic, partition, |p| {
            p.records_from(from)
                .take_while(|r| r.offset < to)
                .map(|r| (r.offset, r.key.clone()))
                .collect()
        })?;
        for (o, k) in &keys {
            f(*o, k.as_deref());
        }
        Ok(keys.len() as u64)
    }

    fn wait_for_append(&self, seen: u64, _timeout: std::time::Duration) -> u64 {
        seen.wrapping_add(1)
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<EdgePartition> {
        self.with_partition(topic, partition, |p| {
            let records: u64 = p.chunks.values().map(|c| c.len() as u64).sum();
            EdgePartition {
                first_offset: p.chunks.keys().next().copied().unwrap_or(p.next),
                next_offset: p.next,
                records,
                bytes: p.chunks.values().flatten().map(Partition::size).sum(),
            }
        })
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<u64> {
        self.with_partition(topic, partition, |p| {
            let gone: Vec<u64> = p
                .chunks
                .iter()
                .filter(|(&k, c)| k + c.len() as u64 <= below)
                .map(|(&k, _)| k)
                .collect();
            gone.iter()
                .filter_map(|k| p.chunks.remove(k))
                .map(|c| c.len() as u64)
                .sum()
        })
    }

    fn load_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().state.clone())
    }

    fn save_state(&self, state: &[u8]) -> Result<()> {
        self.lock().state = Some(state.to_vec());
        Ok(())
    }
}
