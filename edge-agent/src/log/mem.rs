//! The in-memory twin of the redb store: the same chunks, in a `BTreeMap`, behind a mutex.
//! Nothing survives the process; used to test the layers above the log without a disk, and
//! with [`MemLog::fail_writes`] to test how they react to a failing disk.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::policy::{self, ChunkInfo};
use super::{chunk, Append, LogError, LogStore, PartitionStats, Record, RetentionReport, TopicSpec};

#[derive(Debug, Default)]
struct Part {
    chunks: BTreeMap<u64, Vec<u8>>,
    stats: PartitionStats,
}

#[derive(Debug, Default)]
struct Inner {
    topics: BTreeMap<String, TopicSpec>,
    parts: HashMap<(String, u32), Part>,
    streams: HashMap<(String, u32), u64>,
    meta: HashMap<String, Vec<u8>>,
}

/// The in-memory log store.
#[derive(Debug, Default)]
pub struct MemLog {
    inner: Mutex<Inner>,
    fail: AtomicBool,
}

impl MemLog {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// While set, every write fails with a retryable storage error and changes nothing (a
    /// full or failing disk).
    pub fn fail_writes(&self, fail: bool) {
        self.fail.store(fail, Ordering::SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_writable(&self) -> Result<(), LogError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LogError::Storage("simulated write failure".into()));
        }
        Ok(())
    }
}

/// The topic exists and has this partition.
fn check(inner: &Inner, topic: &str, partition: u32) -> Result<(), LogError> {
    let spec = inner
        .topics
        .get(topic)
        .ok_or_else(|| LogError::UnknownTopic(topic.into()))?;
    if partition >= spec.partitions {
        return Err(LogError::UnknownPartition {
            topic: topic.into(),
            partition,
        });
    }
    Ok(())
}

fn part_mut<'a>(inner: &'a mut Inner, topic: &str, partition: u32) -> Result<&'a mut Part, LogError> {
    check(inner, topic, partition)?;
    Ok(inner.parts.entry((topic.to_string(), partition)).or_default())
}

impl LogStore for MemLog {
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError> {
        spec.validate()?;
        self.check_writable()?;
        let mut inner = self.lock();
        if let Some(old) = inner.topics.get(&spec.name) {
            if old.partitions != spec.partitions {
                return Err(LogError::InvalidTopic(format!(
                    "{} has {} partitions, not {}",
                    spec.name, old.partitions, spec.partitions
                )));
            }
        }
        inner.topics.insert(spec.name.clone(), spec.clone());
        Ok(())
    }

    fn topics(&self) -> Result<Vec<TopicSpec>, LogError> {
        Ok(self.lock().topics.values().cloned().collect())
    }

    fn append(&self, append: &Append) -> Result<Vec<u64>, LogError> {
        self.check_writable()?;
        let mut inner = self.lock();
        // Validate everything first so a bad partition changes nothing.
        for p in &append.partitions {
            part_mut(&mut inner, &p.topic, p.partition)?;
        }
        let mut bases = Vec::with_capacity(append.partitions.len());
        for p in &append.partitions {
            let part = part_mut(&mut inner, &p.topic, p.partition)?;
            let base = part.stats.next_offset;
            bases.push(base);
            if p.records.is_empty() {
                continue;
            }
            let bytes = chunk::encode(base, p.records.iter().enumerate().map(|(i, r)| (i as u64, r)));
            if part.stats.records == 0 {
                part.stats.first_offset = base;
            }
            part.stats.next_offset += p.records.len() as u64;
            part.stats.records += p.records.len() as u64;
            part.stats.bytes += bytes.len() as u64;
            part.chunks.insert(base, bytes);
        }
        for s in &append.streams {
            inner.streams.insert((s.device.clone(), s.boot), s.next_expected);
        }
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
        let inner = self.lock();
        check(&inner, topic, partition)?;
        let Some(part) = inner.parts.get(&(topic.to_string(), partition)) else {
            return Ok(Vec::new());
        };
        let start = part.chunks.range(..=from).next_back().map_or(0, |(b, _)| *b);
        let mut out = Vec::new();
        for (base, bytes) in part.chunks.range(start..) {
            chunk::decode(*base, bytes, from, &mut out, max_records)?;
            if out.len() >= max_records {
                break;
            }
        }
        Ok(super::cap_bytes(out, max_bytes))
    }

    fn partition_stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, LogError> {
        let inner = self.lock();
        check(&inner, topic, partition)?;
        Ok(inner
            .parts
            .get(&(topic.to_string(), partition))
            .map_or_else(PartitionStats::default, |p| p.stats))
    }

    fn stream_state(&self, device: &str, boot: u32) -> Result<Option<u64>, LogError> {
        Ok(self.lock().streams.get(&(device.to_string(), boot)).copied())
    }

    fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError> {
        self.check_writable()?;
        let mut inner = self.lock();
        let inner = &mut *inner;
        let mut total = RetentionReport::default();
        for ((topic, _), part) in inner.parts.iter_mut() {
            let Some(spec) = inner.topics.get(topic) else {
                continue;
            };
            let infos = part.chunks.iter().map(|(b, bytes)| {
                Ok(ChunkInfo {
                    base: *b,
                    header: chunk::header(*b, bytes)?,
                    bytes: bytes.len() as u64,
                })
            });
            let (drop, report) = policy::retention(spec, now_ms, infos, part.stats.bytes)?;
            for b in drop {
                part.chunks.remove(&b);
            }
            part.stats.records -= report.records;
            part.stats.bytes -= report.bytes;
            part.stats.first_offset = first_offset(&part.chunks, part.stats.next_offset)?;
            total.chunks += report.chunks;
            total.records += report.records;
            total.bytes += report.bytes;
        }
        Ok(total)
    }

    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<RetentionReport, LogError> {
        self.check_writable()?;
        let mut inner = self.lock();
        let part = part_mut(&mut inner, topic, partition)?;
        let infos = part.chunks.iter().map(|(b, bytes)| {
            Ok(ChunkInfo {
                base: *b,
                header: chunk::header(*b, bytes)?,
                bytes: bytes.len() as u64,
            })
        });
        let (drop, report) = policy::truncate(below, infos)?;
        for b in drop {
            part.chunks.remove(&b);
        }
        part.stats.records -= report.records.min(part.stats.records);
        part.stats.bytes -= report.bytes.min(part.stats.bytes);
        part.stats.first_offset = first_offset(&part.chunks, part.stats.next_offset)?;
        Ok(report)
    }

    fn compact(&self, topic: &str) -> Result<u64, LogError> {
        self.check_writable()?;
        let mut inner = self.lock();
        let spec = inner
            .topics
            .get(topic)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(topic.into()))?;
        let mut removed = 0;
        for p in 0..spec.partitions {
            let Some(part) = inner.parts.get_mut(&(topic.to_string(), p)) else {
                continue;
            };
            let all: Vec<(u64, Vec<u8>)> = part.chunks.iter().map(|(b, v)| (*b, v.clone())).collect();
            for rw in policy::compact(&all)? {
                let old = part.chunks.remove(&rw.base).map_or(0, |v| v.len() as u64);
                part.stats.bytes -= old;
                if let Some(bytes) = rw.bytes {
                    part.stats.bytes += bytes.len() as u64;
                    part.chunks.insert(rw.base, bytes);
                }
                part.stats.records -= rw.removed;
                removed += rw.removed;
            }
            part.stats.first_offset = first_offset(&part.chunks, part.stats.next_offset)?;
        }
        Ok(removed)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError> {
        Ok(self.lock().meta.get(key).cloned())
    }

    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError> {
        self.check_writable()?;
        self.lock().meta.insert(key.into(), value.to_vec());
        Ok(())
    }
}

/// The first offset stored in a partition's chunks, or `next` when there are none.
fn first_offset(chunks: &BTreeMap<u64, Vec<u8>>, next: u64) -> Result<u64, LogError> {
    match chunks.iter().next() {
        None => Ok(next),
        Some((b, bytes)) => Ok(chunk::first_offset(*b, bytes)?.unwrap_or(*b)),
    }
}
