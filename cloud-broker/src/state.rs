//! The broker's single writer: every change to the log goes through one thread that decides
//! offsets, checks idempotent-producer sequences, and applies the result as one durable
//! [`WriteSet`] per group of requests (group commit across producers and partitions).
//!
//! Readers never block on it: they see each partition's high watermark through
//! [`PartitionView`] (updated only after the data is durable) and read batches from storage.
//!
//! On one node the writer applies straight to storage. Replication puts a Raft log in front
//! of `Storage::apply`; everything decided here is deterministic given the commands' order.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use tokio::sync::{oneshot, Notify};
use tracing::warn;

use crate::batch::{self, BatchError};
use crate::errors::Code;
use crate::storage::{
    CommittedOffset, OffsetTable, PartitionHead, ProducerState, SeqEntry, Storage, StoreError, TopicConfig,
    TopicMeta, WriteSet,
};

/// How many recent batches per producer and partition are remembered for dedup (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const PRODUCER_WINDOW: usize = 5;
/// Largest record batch accepted.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most records in one batch (a compressed batch could otherwise claim any count).
pub const MAX_BATCH_RECORDS: i32 = 1_000_000;

/// What readers see of a partition.
#[derive(Debug, Default)]
pub struct PartitionView {
    /// High watermark: offsets below it are durable and readable.
    pub hw: AtomicI64,
    /// First offset still stored.
    pub log_start: AtomicI64,
}

/// A topic as readers see it.
#[derive(Debug)]
pub struct TopicView {
    /// Metadata.
    pub meta: TopicMeta,
    /// Partitions.
    pub partitions: Vec<Arc<PartitionView>>,
}

/// What readers see: topics by name, and a wake-up for long-polling fetches.
#[derive(Debug, Default)]
pub struct CatalogInner {
    /// Topics by name.
    pub topics: RwLock<BTreeMap<String, Arc<TopicView>>>,
    /// Notified after every durable append (fetches waiting for data re-check).
    pub appended: Notify,
}

impl CatalogInner {
    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<TopicView>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }
    /// All topics.
    pub fn all(&self) -> Vec<Arc<TopicView>> {
        self.topics
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// Shared catalog.
pub type Catalog = Arc<CatalogInner>;

/// Result of producing to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProduceResult {
    /// Error code (0 = none).
    pub code: Code,
    /// Base offset of the first batch (or of the original, for a duplicate).
    pub base_offset: i64,
    /// Log start offset.
    pub log_start: i64,
}

/// A request to the writer.
#[derive(Debug)]
pub enum Command {
    /// Append a record set to a partition.
    Produce {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// Raw record set.
        records: Vec<u8>,
        /// Where the result goes (dropped for acks=0).
        reply: Option<oneshot::Sender<ProduceResult>>,
    },
    /// Create a topic.
    CreateTopic {
        /// Name.
        name: String,
        /// Partitions.
        partitions: u32,
        /// Configs.
        config: TopicConfig,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// Delete a topic.
    DeleteTopic {
        /// Name.
        name: String,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// Commit consumer-group offsets.
    CommitOffsets {
        /// Group.
        group: String,
        /// `(topic, partition, offset, metadata)`.
        offsets: Vec<(String, u32, i64, String)>,
        /// Per entry result.
        reply: oneshot::Sender<Vec<Code>>,
    },
    /// Allocate a producer id.
    InitProducerId {
        /// `(code, producer id, epoch)`.
        reply: oneshot::Sender<(Code, i64, i16)>,
    },
    /// Compact every `cleanup.policy=compact` topic (latest record per key).
    Compact,
    /// Apply retention at this time (ms).
    Retention {
        /// Now.
        now_ms: i64,
    },
}

/// Replies to send once the write set is durable.
enum Reply {
    Produce(Option<oneshot::Sender<ProduceResult>>, ProduceResult),
    Code(oneshot::Sender<Code>, Code),
    Codes(oneshot::Sender<Vec<Code>>, Vec<Code>),
    Pid(oneshot::Sender<(Code, i64, i16)>, (Code, i64, i16)),
}

/// The writer's state (a copy is staged per group commit).
#[derive(Debug, Clone, Default)]
struct Core {
    topics: BTreeMap<String, TopicMeta>,
    heads: BTreeMap<(u32, u32), PartitionHead>,
    producers: BTreeMap<(u32, u32, i64), ProducerState>,
    offsets: BTreeMap<(String, String, u32), CommittedOffset>,
    next_producer_id: i64,
    next_topic_id: u32,
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Command>,
}

impl Writer {
    /// Sends a command.
    pub fn send(&self, c: Command) -> bool {
        self.tx.send(c).is_ok()
    }
}

/// Loads state from storage, builds the catalog and starts the writer thread.
pub fn start(storage: Arc<dyn Storage>) -> Result<(Writer, Catalog, OffsetTable), StoreError> {
    let snap = storage.load()?;
    let mut core = Core {
        next_producer_id: snap
            .meta
            .get("next_producer_id")
            .and_then(|v| v.as_slice().try_into().ok())
            .map(i64::from_be_bytes)
            .unwrap_or(1000),
        next_topic_id: snap.topics.iter().map(|t| t.id + 1).max().unwrap_or(0),
        heads: snap.heads,
        producers: snap.producers,
        offsets: snap.offsets.clone(),
        ..Core::default()
    };
    for t in snap.topics {
        core.topics.insert(t.name.clone(), t);
    }
    let catalog: Catalog = Arc::new(CatalogInner::default());
    let offsets = Arc::new(RwLock::new(snap.offsets));
    publish_catalog(&core, &catalog, true);
    let (tx, rx) = mpsc::channel();
    let (c2, o2) = (catalog.clone(), offsets.clone());
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || run(rx, storage, core, c2, o2))
        .map_err(|e| StoreError::Io(e.to_string()))?;
    Ok((Writer { tx }, catalog, offsets))
}

/// Brings the readers' catalog in line with the core: new topics, removed topics, watermarks.
fn publish_catalog(core: &Core, catalog: &Catalog, wake: bool) {
    let mut moved = false;
    let mut cat = catalog.topics.write().unwrap_or_else(|e| e.into_inner());
    cat.retain(|name, v| core.topics.get(name).is_some_and(|m| m.id == v.meta.id));
    for (name, meta) in &core.topics {
        let view = cat.entry(name.clone()).or_insert_with(|| {
            Arc::new(TopicView {
                meta: meta.clone(),
                partitions: (0..meta.partitions)
                    .map(|_| Arc::new(PartitionView::default()))
                    .collect(),
            })
        });
        if view.meta != *meta {
            let parts = view.partitions.clone();
            *view = Arc::new(TopicView {
                meta: meta.clone(),
                partitions: parts,
            });
        }
        for (p, pv) in view.partitions.iter().enumerate() {
            let h = core.heads.get(&(meta.id, p as u32)).copied().unwrap_or_default();
            let old = pv.hw.swap(h.next_offset, Ordering::SeqCst);
            pv.log_start.store(h.log_start, Ordering::SeqCst);
            moved |= old != h.next_offset;
        }
    }
    drop(cat);
    if wake && moved {
        catalog.appended.notify_waiters();
    }
}

fn run(
    rx: mpsc::Receiver<Command>,
    storage: Arc<dyn Storage>,
    mut core: Core,
    catalog: Catalog,
    offsets: OffsetTable,
) {
    let mut backoff_ms = 10;
    while let Ok(first) = rx.recv() {
        let mut staged = core.clone();
        let mut w = WriteSet::default();
        let mut replies = Vec::new();
        let mut cmd = Some(first);
        let mut n = 0;
        while let Some(c) = cmd.take() {
            apply_command(&mut staged, &mut w, &mut replies, c, &*storage);
            n += 1;
            if n < 4096 && w.batches.iter().map(|b| b.3.len()).sum::<usize>() < (64 << 20) {
                cmd = rx.try_recv().ok();
            }
        }
        let ok = w.is_empty() || storage.apply(&w).is_ok();
        if ok {
            backoff_ms = 10;
            let offsets_changed = !w.offsets.is_empty();
            core = staged;
            publish_catalog(&core, &catalog, true);
            if offsets_changed {
                *offsets.write().unwrap_or_else(|e| e.into_inner()) = core.offsets.clone();
            }
        } else {
            warn!(
                requests = replies.len(),
                "durable write failed; requests answered with an error"
            );
        }
        for r in replies {
            match r {
                Reply::Produce(tx, res) => {
                    if let Some(tx) = tx {
                        let res = if ok {
                            res
                        } else {
                            ProduceResult {
                                code: Code::KafkaStorageError,
                                ..res
                            }
                        };
                        let _ = tx.send(res);
                    }
                }
                Reply::Code(tx, c) => {
                    let _ = tx.send(if ok { c } else { Code::KafkaStorageError });
                }
                Reply::Codes(tx, cs) => {
                    let _ = tx.send(if ok {
                        cs
                    } else {
                        cs.iter().map(|_| Code::KafkaStorageError).collect()
                    });
                }
                Reply::Pid(tx, v) => {
                    let _ = tx.send(if ok { v } else { (Code::KafkaStorageError, -1, -1) });
                }
            }
        }
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms * 2).min(1000);
        }
    }
}

fn new_uuid(id: u32) -> [u8; 16] {
    let a = foundation::ids::random_u64().to_be_bytes();
    let b = (foundation::ids::random_u64() ^ u64::from(id)).to_be_bytes();
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&a);
    u[8..].copy_from_slice(&b);
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // variant
    u
}

/// Kafka's legal topic names.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn apply_command(
    core: &mut Core,
    w: &mut WriteSet,
    replies: &mut Vec<Reply>,
    c: Command,
    storage: &dyn Storage,
) {
    match c {
        Command::Produce {
            topic,
            partition,
            records,
            reply,
        } => {
            let res = produce(core, w, &topic, partition, records);
            replies.push(Reply::Produce(reply, res));
        }
        Command::CreateTopic {
            name,
            partitions,
            config,
            reply,
        } => {
            let code = if !valid_topic_name(&name) {
                Code::InvalidTopicException
            } else if !(1..=10_000).contains(&partitions) {
                Code::InvalidPartitions
            } else if core.topics.contains_key(&name) {
                Code::TopicAlreadyExists
            } else {
                let id = core.next_topic_id;
                core.next_topic_id += 1;
                let meta = TopicMeta {
                    id,
                    uuid: new_uuid(id),
                    name: name.clone(),
                    partitions,
                    config,
                };
                w.put_topics.push(meta.clone());
                core.topics.insert(name, meta);
                Code::None
            };
            replies.push(Reply::Code(reply, code));
        }
        Command::DeleteTopic { name, reply } => {
            let code = match core.topics.remove(&name) {
                None => Code::UnknownTopicOrPartition,
                Some(meta) => {
                    core.heads.retain(|k, _| k.0 != meta.id);
                    core.producers.retain(|k, _| k.0 != meta.id);
                    core.offsets.retain(|k, _| k.1 != meta.name);
                    w.batches.retain(|b| b.0 != meta.id);
                    w.heads.retain(|h| h.0 != meta.id);
                    w.producers.retain(|p| p.0 != meta.id);
                    w.delete_topics.push(meta);
                    Code::None
                }
            };
            replies.push(Reply::Code(reply, code));
        }
        Command::CommitOffsets {
            group,
            offsets,
            reply,
        } => {
            let codes = offsets
                .into_iter()
                .map(|(topic, partition, offset, metadata)| {
                    let Some(meta) = core.topics.get(&topic) else {
                        return Code::UnknownTopicOrPartition;
                    };
                    if partition >= meta.partitions {
                        return Code::UnknownTopicOrPartition;
                    }
                    let o = CommittedOffset { offset, metadata };
                    core.offsets
                        .insert((group.clone(), topic.clone(), partition), o.clone());
                    w.offsets.push((group.clone(), topic, partition, Some(o)));
                    Code::None
                })
                .collect();
            replies.push(Reply::Codes(reply, codes));
        }
        Command::InitProducerId { reply } => {
            let id = core.next_producer_id;
            core.next_producer_id += 1;
            w.meta.retain(|m| m.0 != "next_producer_id");
            w.meta.push((
                "next_producer_id".into(),
                core.next_producer_id.to_be_bytes().to_vec(),
            ));
            replies.push(Reply::Pid(reply, (Code::None, id, 0)));
        }
        Command::Compact => {
            if let Err(e) = compact(core, w, storage) {
                warn!(error = %e, "compaction pass failed");
            }
        }
        Command::Retention { now_ms } => {
            if let Err(e) = retention(core, w, now_ms, storage) {
                warn!(error = %e, "retention pass failed");
            }
        }
    }
}

fn produce(
    core: &mut Core,
    w: &mut WriteSet,
    topic: &str,
    partition: u32,
    records: Vec<u8>,
) -> ProduceResult {
    let fail = |code| ProduceResult {
        code,
        base_offset: -1,
        log_start: -1,
    };
    let Some(meta) = core.topics.get(topic) else {
        return fail(Code::UnknownTopicOrPartition);
    };
    if partition >= meta.partitions {
        return fail(Code::UnknownTopicOrPartition);
    }
    let tid = meta.id;
    let batches = match batch::split(&records, MAX_BATCH_BYTES) {
        Ok(b) => b,
        Err(BatchError::TooLarge(_)) => return fail(Code::MessageTooLarge),
        Err(BatchError::Magic(_)) => return fail(Code::UnsupportedForMessageFormat),
        Err(_) => return fail(Code::CorruptMessage),
    };
    let mut head = core.heads.get(&(tid, partition)).copied().unwrap_or_default();
    let mut first_base = None;
    let mut touched = HashMap::new();
    // Nothing reaches the write set until every batch of the record set is accepted: a refusal
    // part-way must not leave batches at offsets the head never took.
    let mut accepted = Vec::new();
    for (h, bytes) in batches {
        // Producers write dense batches; a count the header cannot back is refused here so that
        // nothing downstream (compaction, timestamp lookups) sizes work by an unchecked count.
        if h.is_transactional()
            || h.is_control()
            || h.record_count < 1
            || h.record_count > MAX_BATCH_RECORDS
            || h.last_offset_delta != h.record_count - 1
        {
            return fail(Code::InvalidRecord);
        }
        let base = head.next_offset;
        if h.producer_id >= 0 {
            let key = (tid, partition, h.producer_id);
            let st = touched
                .entry(key)
                .or_insert_with(|| core.producers.get(&key).cloned());
            match check_sequence(st.as_ref(), h.producer_epoch, h.base_sequence, h.last_sequence()) {
                Seq::Ok => {}
                Seq::Duplicate(orig) => {
                    first_base.get_or_insert(orig);
                    continue;
                }
                Seq::Error(code) => return fail(code),
            }
            let s = st.get_or_insert_with(ProducerState::default);
            if s.epoch != h.producer_epoch {
                s.epoch = h.producer_epoch;
                s.batches.clear();
            }
            s.batches.push(SeqEntry {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                base_offset: base,
            });
            if s.batches.len() > PRODUCER_WINDOW {
                s.batches.remove(0);
            }
        }
        let mut stored = bytes.to_vec();
        batch::set_base_offset(&mut stored, base);
        if head.next_offset == head.log_start && head.bytes == 0 {
            head.log_start = base;
        }
        head.next_offset += h.offset_count() as i64;
        head.bytes += stored.len() as u64;
        accepted.push((tid, partition, base, stored));
        first_base.get_or_insert(base);
    }
    w.batches.extend(accepted);
    for (key, st) in touched {
        if let Some(st) = st {
            w.producers.retain(|p| (p.0, p.1, p.2) != key);
            w.producers.push((key.0, key.1, key.2, st.clone()));
            core.producers.insert(key, st);
        }
    }
    if head != core.heads.get(&(tid, partition)).copied().unwrap_or_default() {
        w.heads.retain(|x| (x.0, x.1) != (tid, partition));
        w.heads.push((tid, partition, head));
        core.heads.insert((tid, partition), head);
    }
    ProduceResult {
        code: Code::None,
        base_offset: first_base.unwrap_or(head.next_offset),
        log_start: head.log_start,
    }
}

enum Seq {
    Ok,
    Duplicate(i64),
    Error(Code),
}

/// Kafka's idempotent-producer rules for one batch.
fn check_sequence(st: Option<&ProducerState>, epoch: i16, first: i32, last: i32) -> Seq {
    let Some(st) = st else {
        return if first == 0 {
            Seq::Ok
        } else {
            Seq::Error(Code::OutOfOrderSequenceNumber)
        };
    };
    if epoch < st.epoch {
        return Seq::Error(Code::InvalidProducerEpoch);
    }
    if epoch > st.epoch {
        return if first == 0 {
            Seq::Ok
        } else {
            Seq::Error(Code::OutOfOrderSequenceNumber)
        };
    }
    if let Some(e) = st
        .batches
        .iter()
        .find(|e| e.first_seq == first && e.last_seq == last)
    {
        return Seq::Duplicate(e.base_offset);
    }
    let expected = st
        .batches
        .last()
        .map_or(0, |e| if e.last_seq == i32::MAX { 0 } else { e.last_seq + 1 });
    if first == expected {
        Seq::Ok
    } else if st
        .batches
        .iter()
        .any(|e| first <= e.last_seq && first >= st.batches[0].first_seq)
    {
        Seq::Error(Code::DuplicateSequenceNumber)
    } else {
        Seq::Error(Code::OutOfOrderSequenceNumber)
    }
}

/// Compaction of `cleanup.policy=compact` topics: every record whose key appears again later
/// in the partition is dropped; keyless records stay; the newest batch is left alone (it is
/// where producers append). Batches that lose records are rewritten (uncompressed, offsets
/// kept, so offsets become sparse as in Kafka) under the offset of their first kept record.
fn compact(core: &mut Core, w: &mut WriteSet, storage: &dyn Storage) -> Result<(), StoreError> {
    use kafka_protocol::records::{Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions};
    let topics: Vec<TopicMeta> = core
        .topics
        .values()
        .filter(|t| t.config.compact)
        .cloned()
        .collect();
    for t in topics {
        for p in 0..t.partitions {
            let Some(mut head) = core.heads.get(&(t.id, p)).copied() else {
                continue;
            };
            let raw = storage.read(t.id, p, head.log_start, usize::MAX)?;
            let mut decoded = Vec::new();
            for (h, bytes) in batch::iter(&raw) {
                let mut b = bytes::Bytes::copy_from_slice(bytes);
                let set = RecordBatchDecoder::decode(&mut b)
                    .map_err(|e| StoreError::Corrupt(format!("batch at {}: {e:#}", h.base_offset)))?;
                decoded.push((h, set.records));
            }
            let Some(newest) = decoded.len().checked_sub(1) else {
                continue;
            };
            let mut latest: HashMap<bytes::Bytes, i64> = HashMap::new();
            for (_, recs) in &decoded {
                for r in recs {
                    if let Some(k) = &r.key {
                        latest.insert(k.clone(), r.offset);
                    }
                }
            }
            for (h, recs) in decoded.into_iter().take(newest) {
                let before = recs.len();
                let mut kept: Vec<_> = recs
                    .into_iter()
                    .filter(|r| r.key.as_ref().is_none_or(|k| latest.get(k) == Some(&r.offset)))
                    .collect();
                if kept.len() == before {
                    continue;
                }
                w.remove_batches.push((t.id, p, h.base_offset));
                head.bytes -= (h.size as u64).min(head.bytes);
                let Some(first) = kept.first().map(|r| r.offset) else {
                    continue;
                };
                for r in &mut kept {
                    r.producer_id = -1;
                    r.producer_epoch = -1;
                    r.transactional = false;
                    r.sequence = (r.offset - first) as i32;
                }
                let mut out = bytes::BytesMut::new();
                RecordBatchEncoder::encode(
                    &mut out,
                    &kept,
                    &RecordEncodeOptions {
                        version: 2,
                        compression: Compression::None,
                    },
                )
                .map_err(|e| StoreError::Corrupt(format!("re-encoding a compacted batch: {e:#}")))?;
                head.bytes += out.len() as u64;
                w.batches.push((t.id, p, first, out.to_vec()));
            }
            // The log start moves past batches that compaction emptied entirely.
            let removed: std::collections::HashSet<i64> = w
                .remove_batches
                .iter()
                .filter(|k| (k.0, k.1) == (t.id, p))
                .map(|k| k.2)
                .collect();
            let rewritten: Vec<i64> = w
                .batches
                .iter()
                .filter(|b| (b.0, b.1) == (t.id, p))
                .map(|b| b.2)
                .collect();
            let first_left = batch::iter(&raw)
                .map(|(h, _)| h.base_offset)
                .filter(|b| !removed.contains(b))
                .chain(rewritten)
                .min();
            head.log_start = first_left.unwrap_or(head.next_offset).max(head.log_start);
            w.heads.retain(|x| (x.0, x.1) != (t.id, p));
            w.heads.push((t.id, p, head));
            core.heads.insert((t.id, p), head);
        }
    }
    Ok(())
}

/// Retention by time and bytes: removes whole batches, oldest first, never the newest one
/// (so a partition's offsets stay visible). Reads batch headers only.
fn retention(
    core: &mut Core,
    w: &mut WriteSet,
    now_ms: i64,
    storage: &dyn Storage,
) -> Result<(), StoreError> {
    let topics: Vec<TopicMeta> = core.topics.values().cloned().collect();
    for t in topics {
        let (max_age, max_bytes) = (t.config.retention_ms, t.config.retention_bytes);
        if max_age.is_none() && max_bytes.is_none() {
            continue;
        }
        for p in 0..t.partitions {
            let Some(mut head) = core.heads.get(&(t.id, p)).copied() else {
                continue;
            };
            let mut bytes = head.bytes;
            let mut new_start = None;
            let mut from = head.log_start;
            'scan: loop {
                let headers = storage.headers(t.id, p, from, 1024)?;
                let n = headers.len();
                for (i, h) in headers.iter().enumerate() {
                    let newest = h.last_offset() + 1 >= head.next_offset;
                    let expired = max_age.is_some_and(|age| h.max_timestamp < now_ms.saturating_sub(age));
                    let over = max_bytes.is_some_and(|max| bytes > max as u64);
                    if newest || !(expired || over) {
                        break 'scan;
                    }
                    bytes -= (h.size as u64).min(bytes);
                    new_start = Some(h.last_offset() + 1);
                    if i + 1 == n {
                        from = h.last_offset() + 1;
                    }
                }
                if n < 1024 {
                    break;
                }
            }
            if let Some(start) = new_start {
                w.truncate.push((t.id, p, start));
                head.log_start = start;
                head.bytes = bytes;
                w.heads.retain(|x| (x.0, x.1) != (t.id, p));
                w.heads.push((t.id, p, head));
                core.heads.insert((t.id, p), head);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;
    use crate::storage::mem::MemStorage;

    fn call<T>(w: &Writer, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (tx, rx) = oneshot::channel();
        assert!(w.send(f(tx)));
        rx.blocking_recv().unwrap()
    }

    fn produce(w: &Writer, topic: &str, records: Vec<u8>) -> ProduceResult {
        call(w, |tx| Command::Produce {
            topic: topic.into(),
            partition: 0,
            records,
            reply: Some(tx),
        })
    }

    fn started() -> (Writer, Catalog, Arc<MemStorage>) {
        let storage = Arc::new(MemStorage::new());
        let (w, c, _) = start(storage.clone()).unwrap();
        (w, c, storage)
    }

    #[test]
    fn offsets_are_dense_and_watermarks_move_after_the_write() {
        let (w, cat, _) = started();
        let code = call(&w, |tx| Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            config: TopicConfig::default(),
            reply: tx,
        });
        assert_eq!(code, Code::None);
        assert_eq!(produce(&w, "t", make_batch(3, -1, -1, -1, 10)).base_offset, 0);
        assert_eq!(produce(&w, "t", make_batch(2, -1, -1, -1, 20)).base_offset, 3);
        assert_eq!(cat.topic("t").unwrap().partitions[0].hw.load(Ordering::SeqCst), 5);
        assert_eq!(
            produce(&w, "nope", make_batch(1, -1, -1, -1, 0)).code,
            Code::UnknownTopicOrPartition
        );
        assert_eq!(produce(&w, "t", vec![1, 2, 3]).code, Code::CorruptMessage);
    }

    #[test]
    fn idempotent_producer_dedups_orders_and_fences() {
        let (w, _, _) = started();
        call(&w, |tx| Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            config: TopicConfig::default(),
            reply: tx,
        });
        let (code, pid, epoch) = call(&w, |tx| Command::InitProducerId { reply: tx });
        assert_eq!((code, epoch), (Code::None, 0));
        assert_eq!(produce(&w, "t", make_batch(3, pid, 0, 0, 1)).base_offset, 0);
        // A retry of the same batch: success with the original offset, nothing appended.
        let dup = produce(&w, "t", make_batch(3, pid, 0, 0, 1));
        assert_eq!((dup.code, dup.base_offset), (Code::None, 0));
        assert_eq!(produce(&w, "t", make_batch(2, pid, 0, 3, 1)).base_offset, 3);
        assert_eq!(
            produce(&w, "t", make_batch(1, pid, 0, 9, 1)).code,
            Code::OutOfOrderSequenceNumber
        );
        assert_eq!(
            produce(&w, "t", make_batch(1, pid, 0, 1, 1)).code,
            Code::DuplicateSequenceNumber
        );
        // A new epoch starts at sequence 0 and fences the old one.
        assert_eq!(produce(&w, "t", make_batch(1, pid, 1, 0, 1)).base_offset, 5);
        assert_eq!(
            produce(&w, "t", make_batch(1, pid, 0, 5, 1)).code,
            Code::InvalidProducerEpoch
        );
        // A producer id unknown on this partition must start at 0.
        assert_eq!(
            produce(&w, "t", make_batch(1, pid + 1, 0, 7, 1)).code,
            Code::OutOfOrderSequenceNumber
        );
    }

    /// Regression: a record set whose third batch was refused left its first two batches in
    /// the write set at offsets the partition head never took, so the next produce reused those
    /// offsets and readers saw overlapping batches.
    #[test]
    fn a_refused_record_set_writes_nothing() {
        let (w, cat, storage) = started();
        call(&w, |tx| Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            config: TopicConfig::default(),
            reply: tx,
        });
        let mut set = make_batch(1, -1, -1, -1, 1);
        set.extend(make_batch(1, -1, -1, -1, 2));
        // A batch whose offset span its record count cannot back: refused.
        let mut sparse = make_batch(2, -1, -1, -1, 3);
        sparse[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&sparse[21..]);
        sparse[17..21].copy_from_slice(&crc.to_be_bytes());
        set.extend(sparse);
        assert_eq!(produce(&w, "t", set).code, Code::InvalidRecord);
        let pid = call(&w, |tx| Command::InitProducerId { reply: tx }).1;
        let mut set = make_batch(2, pid, 0, 0, 4);
        set.extend(make_batch(1, pid, 0, 7, 5)); // a sequence gap: refused
        assert_eq!(produce(&w, "t", set).code, Code::OutOfOrderSequenceNumber);
        let ok = produce(&w, "t", make_batch(3, -1, -1, -1, 6));
        assert_eq!((ok.code, ok.base_offset), (Code::None, 0));
        let tid = cat.topic("t").unwrap().meta.id;
        let stored: Vec<(i64, i32)> = storage
            .headers(tid, 0, 0, 10)
            .unwrap()
            .iter()
            .map(|h| (h.base_offset, h.record_count))
            .collect();
        assert_eq!(stored, vec![(0, 3)], "only the accepted batch is stored");
        // The producer's refused batch left no state: it starts again at sequence 0.
        assert_eq!(produce(&w, "t", make_batch(1, pid, 0, 0, 7)).base_offset, 3);
    }

    #[test]
    fn producer_state_survives_a_restart() {
        let storage = Arc::new(MemStorage::new());
        let pid;
        {
            let (w, _, _) = start(storage.clone()).unwrap();
            call(&w, |tx| Command::CreateTopic {
                name: "t".into(),
                partitions: 1,
                config: TopicConfig::default(),
                reply: tx,
            });
            pid = call(&w, |tx| Command::InitProducerId { reply: tx }).1;
            produce(&w, "t", make_batch(2, pid, 0, 0, 1));
        }
        let (w, _, _) = start(storage).unwrap();
        let dup = produce(&w, "t", make_batch(2, pid, 0, 0, 1));
        assert_eq!(
            (dup.code, dup.base_offset),
            (Code::None, 0),
            "a retry after a restart is still a duplicate"
        );
        assert_ne!(
            call(&w, |tx| Command::InitProducerId { reply: tx }).1,
            pid,
            "producer ids are not reused"
        );
    }

    #[test]
    fn retention_drops_old_batches_but_never_the_newest() {
        let (w, cat, storage) = started();
        let config = TopicConfig {
            retention_ms: Some(1_000),
            retention_bytes: None,
            compact: false,
        };
        call(&w, |tx| Command::CreateTopic {
            name: "r".into(),
            partitions: 1,
            config,
            reply: tx,
        });
        for ts in [100, 200, 5_000, 9_000] {
            produce(&w, "r", make_batch(2, -1, -1, -1, ts));
        }
        let pv = cat.topic("r").unwrap().partitions[0].clone();
        assert!(w.send(Command::Retention { now_ms: 5_500 }));
        produce(&w, "r", make_batch(1, -1, -1, -1, 9_500)); // a round trip: the retention write is done
        assert_eq!(
            pv.log_start.load(Ordering::SeqCst),
            4,
            "the two batches older than 1 s are gone"
        );
        let tid = cat.topic("r").unwrap().meta.id;
        assert_eq!(storage.headers(tid, 0, 0, 10).unwrap()[0].base_offset, 4);
        assert!(w.send(Command::Retention { now_ms: 1_000_000 }));
        produce(&w, "other-topic-missing", make_batch(1, -1, -1, -1, 0));
        assert_eq!(
            pv.log_start.load(Ordering::SeqCst),
            8,
            "everything but the newest batch"
        );
        assert_eq!(pv.hw.load(Ordering::SeqCst), 9);
    }

    #[test]
    fn compaction_keeps_the_latest_record_per_key() {
        use kafka_protocol::records::{
            Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let (w, cat, storage) = started();
        let config = TopicConfig {
            compact: true,
            ..TopicConfig::default()
        };
        call(&w, |tx| Command::CreateTopic {
            name: "c".into(),
            partitions: 1,
            config,
            reply: tx,
        });
        let rec = |k: Option<&'static str>, v: &'static str| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1,
            key: k.map(|k| bytes::Bytes::from_static(k.as_bytes())),
            value: Some(bytes::Bytes::from_static(v.as_bytes())),
            headers: Default::default(),
        };
        let encode = |recs: Vec<Record>, compression| {
            let recs: Vec<Record> = recs
                .into_iter()
                .enumerate()
                .map(|(i, mut r)| {
                    r.offset = i as i64;
                    r.sequence = i as i32;
                    r
                })
                .collect();
            let mut out = bytes::BytesMut::new();
            RecordBatchEncoder::encode(
                &mut out,
                &recs,
                &RecordEncodeOptions {
                    version: 2,
                    compression,
                },
            )
            .unwrap();
            out.to_vec()
        };
        produce(
            &w,
            "c",
            encode(
                vec![rec(Some("a"), "a1"), rec(Some("b"), "b1"), rec(None, "n1")],
                Compression::Lz4,
            ),
        );
        produce(&w, "c", encode(vec![rec(Some("a"), "a2")], Compression::None));
        produce(
            &w,
            "c",
            encode(
                vec![rec(Some("b"), "b2"), rec(Some("a"), "a3")],
                Compression::None,
            ),
        );
        assert!(w.send(Command::Compact));
        produce(&w, "none", make_batch(1, -1, -1, -1, 0));
        let tid = cat.topic("c").unwrap().meta.id;
        let mut raw = bytes::Bytes::from(storage.read(tid, 0, 0, usize::MAX).unwrap());
        let mut got = Vec::new();
        while !raw.is_empty() {
            for r in RecordBatchDecoder::decode(&mut raw).unwrap().records {
                got.push((r.offset, String::from_utf8(r.value.unwrap().to_vec()).unwrap()));
            }
        }
        assert_eq!(
            got,
            vec![
                (2, "n1".to_string()),
                (4, "b2".to_string()),
                (5, "a3".to_string())
            ]
        );
        let pv = &cat.topic("c").unwrap().partitions[0];
        assert_eq!(
            (pv.log_start.load(Ordering::SeqCst), pv.hw.load(Ordering::SeqCst)),
            (2, 6)
        );
    }

    #[test]
    fn retention_by_bytes() {
        let (w, cat, _) = started();
        let one = make_batch(1, -1, -1, -1, 0).len() as i64;
        let config = TopicConfig {
            retention_ms: None,
            retention_bytes: Some(one * 2),
            compact: false,
        };
        call(&w, |tx| Command::CreateTopic {
            name: "b".into(),
            partitions: 1,
            config,
            reply: tx,
        });
        for _ in 0..5 {
            produce(&w, "b", make_batch(1, -1, -1, -1, 0));
        }
        assert!(w.send(Command::Retention { now_ms: 0 }));
        produce(&w, "none", make_batch(1, -1, -1, -1, 0));
        assert_eq!(
            cat.topic("b").unwrap().partitions[0]
                .log_start
                .load(Ordering::SeqCst),
            3
        );
    }
}
