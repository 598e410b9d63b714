//! The single-node shell around the state machines in [`crate::sm`]: one writer thread takes
//! [`Request`]s, decides and applies them against the state machines, writes what they changed
//! as one durable [`WriteSet`] per group of requests (group commit across producers and
//! partitions), and answers once the write is durable.
//!
//! Requests carry reply channels; the state machines never see them. Within a group commit the
//! writer decides against a staged copy of only the partitions and logs it touches (the
//! leader's "tip"); the copy replaces the applied state once the write is durable, and is
//! dropped if the write fails, so a failed write changes nothing.
//!
//! Readers never block on the writer: they see each partition's high watermark through
//! [`PartitionView`] (moved only after the data is durable) and read batches from storage.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};

use tokio::sync::{oneshot, Notify};
use tracing::warn;

use crate::batch::{self, BatchHeader};
use crate::errors::Code;
use crate::sm::metadata::{MetaCommand, MetaOutcome, Metadata, ProducerIdBlock};
use crate::sm::offsets::{self, GroupOffsets, OffsetsCommand};
use crate::sm::partition::{Partition, PartitionCommand};
use crate::storage::{OffsetTable, Storage, StoreError, TopicConfig, TopicMeta, WriteSet};

/// What readers see of a partition.
#[derive(Debug, Default)]
pub struct PartitionView {
    /// High watermark: offsets below it are durable and readable.
    pub hw: AtomicI64,
    /// First offset still stored.
    pub log_start: AtomicI64,
    /// Bytes of the batches stored (DescribeLogDirs).
    pub bytes: AtomicU64,
    /// Last stable offset: `read_committed` consumers read below it (the high watermark
    /// while no transaction is open).
    pub lso: AtomicI64,
    /// Aborted transactions whose marker is at or past the log start:
    /// `(producer id, first offset, marker offset)`.
    pub aborted: std::sync::Mutex<Vec<(i64, i64, i64)>>,
}

impl PartitionView {
    /// Publishes what readers see of `p`: watermarks, size, and transactions. Returns the
    /// previous high watermark.
    pub fn publish(&self, p: &crate::sm::partition::Partition) -> i64 {
        let old = self.hw.swap(p.head.next_offset, Ordering::SeqCst);
        self.log_start.store(p.head.log_start, Ordering::SeqCst);
        self.bytes.store(p.head.bytes, Ordering::SeqCst);
        self.lso.store(p.last_stable_offset(), Ordering::SeqCst);
        let mut aborted = self.aborted.lock().unwrap_or_else(|e| e.into_inner());
        // It only grows at its end and shrinks at its front: its ends tell a change.
        let ends = |v: &[(i64, i64, i64)]| (v.len(), v.first().copied(), v.last().copied());
        if ends(&aborted) != ends(&p.txns.aborted) {
            aborted.clone_from(&p.txns.aborted);
        }
        old
    }

    /// The aborted transactions reaching into `[from, to)`: `(producer id, first offset)`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        self.aborted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, first, marker)| *marker >= from && *first < to)
            .map(|(pid, first, _)| (*pid, *first))
            .collect()
    }
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

impl ProduceResult {
    /// A refusal.
    pub fn failed(code: Code) -> Self {
        ProduceResult {
            code,
            base_offset: -1,
            log_start: -1,
        }
    }
}

/// A request to the writer.
#[derive(Debug)]
pub enum Request {
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
        offsets: Vec<offsets::Commit>,
        /// Per entry result.
        reply: oneshot::Sender<Vec<Code>>,
    },
    /// Delete a consumer group's committed offsets.
    DeleteGroup {
        /// Group.
        group: String,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// Allocate a producer id.
    InitProducerId {
        /// `(code, producer id, epoch)`.
        reply: oneshot::Sender<(Code, i64, i16)>,
    },
    /// A metadata change (partitions added, configs set).
    Meta {
        /// The change.
        cmd: MetaCommand,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// Move a partition's log start (Kafka's DeleteRecords; `-1`: to the high watermark).
    DeleteRecords {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The offset.
        offset: i64,
        /// `(code, the log start after)`.
        reply: oneshot::Sender<(Code, i64)>,
    },
    /// Forget some of a group's committed offsets (Kafka's OffsetDelete).
    DeleteOffsets {
        /// Group.
        group: String,
        /// `(topic, partition)` of each.
        partitions: Vec<(String, u32)>,
        /// Result.
        reply: oneshot::Sender<Code>,
    },
    /// A transaction coordinator request (the single node coordinates every transaction).
    Txn(TxnOp),
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
    Low(oneshot::Sender<(Code, i64)>, (Code, i64)),
}

impl Reply {
    /// Sends the reply, or a storage error for every part of it when the write failed.
    fn send(self, durable: bool) {
        let failed = Code::KafkaStorageError;
        match self {
            Reply::Produce(tx, res) => {
                if let Some(tx) = tx {
                    let _ = tx.send(if durable {
                        res
                    } else {
                        ProduceResult { code: failed, ..res }
                    });
                }
            }
            Reply::Code(tx, c) => {
                let _ = tx.send(if durable { c } else { failed });
            }
            Reply::Codes(tx, cs) => {
                let _ = tx.send(if durable { cs } else { vec![failed; cs.len()] });
            }
            Reply::Pid(tx, v) => {
                let _ = tx.send(if durable { v } else { (failed, -1, -1) });
            }
            Reply::Low(tx, v) => {
                let _ = tx.send(if durable { v } else { (failed, -1) });
            }
        }
    }
}

/// Applied state of the node: every state machine it hosts.
#[derive(Debug, Clone, Default)]
struct Applied {
    meta: Metadata,
    partitions: BTreeMap<(u32, u32), Partition>,
    offsets: BTreeMap<u32, GroupOffsets>,
    pids: ProducerIdBlock,
}

/// What one group commit changed, staged over the applied state.
#[derive(Default)]
struct Changes {
    meta: Option<Metadata>,
    /// `None`: the partition was deleted.
    partitions: BTreeMap<(u32, u32), Option<Partition>>,
    offsets: BTreeMap<u32, GroupOffsets>,
    pids: Option<ProducerIdBlock>,
    w: WriteSet,
    replies: Vec<Reply>,
}

impl Applied {
    /// Folds a durable group commit in.
    fn merge(&mut self, ch: Changes) -> (WriteSet, Vec<Reply>) {
        if let Some(m) = ch.meta {
            self.meta = m;
        }
        for (k, p) in ch.partitions {
            match p {
                Some(p) => self.partitions.insert(k, p),
                None => self.partitions.remove(&k),
            };
        }
        self.offsets.extend(ch.offsets);
        if let Some(pids) = ch.pids {
            self.pids = pids;
        }
        (ch.w, ch.replies)
    }
}

/// One group commit: the state machines it touched, staged over the applied state (the
/// decisions of a group commit see the requests before them in it).
struct Staged<'a> {
    base: &'a Applied,
    ch: Changes,
}

impl<'a> Staged<'a> {
    fn new(base: &'a Applied) -> Self {
        Staged {
            base,
            ch: Changes::default(),
        }
    }

    fn meta(&self) -> &Metadata {
        self.ch.meta.as_ref().unwrap_or(&self.base.meta)
    }

    fn meta_mut(&mut self) -> &mut Metadata {
        self.ch.meta.get_or_insert_with(|| self.base.meta.clone())
    }

    /// The partition as staged so far (`None`: deleted in this group commit, or never written).
    fn partition(&self, key: (u32, u32)) -> Option<&Partition> {
        match self.ch.partitions.get(&key) {
            Some(p) => p.as_ref(),
            None => self.base.partitions.get(&key),
        }
    }

    fn partition_mut(&mut self, key: (u32, u32)) -> &mut Partition {
        let base = self.base;
        self.ch
            .partitions
            .entry(key)
            .or_insert_with(|| base.partitions.get(&key).cloned())
            .get_or_insert_with(Partition::default)
    }

    fn offsets_mut(&mut self, log: u32) -> &mut GroupOffsets {
        let base = self.base;
        self.ch
            .offsets
            .entry(log)
            .or_insert_with(|| base.offsets.get(&log).cloned().unwrap_or_default())
    }

    /// Applies a partition command to the staged partition and records what it changed.
    fn apply_partition(&mut self, key: (u32, u32), cmd: PartitionCommand) -> Result<(), StoreError> {
        let p = self.partition_mut(key);
        // (Cloning an empty index allocates nothing: most partitions never see a transaction.)
        let txns_before = p.txns.clone();
        p.apply(&cmd).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let head = p.head;
        let txns = (txns_before != p.txns).then(|| p.txns.clone());
        let producers: Vec<_> = Partition::producers_touched(&cmd)
            .into_iter()
            .filter_map(|pid| p.producers.get(&pid).map(|s| (pid, s.clone())))
            .collect();
        let (t, part) = key;
        match cmd {
            PartitionCommand::Append { batches } => {
                for b in batches {
                    let base = batch::header(&b).map_or(-1, |h| h.base_offset);
                    self.ch.w.batches.push((t, part, base, b));
                }
            }
            PartitionCommand::Truncate { log_start, .. } => self.ch.w.truncate.push((t, part, log_start)),
            PartitionCommand::Compact { remove, rewrite, .. } => {
                self.ch
                    .w
                    .remove_batches
                    .extend(remove.into_iter().map(|b| (t, part, b)));
                for b in rewrite {
                    let base = batch::header(&b).map_or(-1, |h| h.base_offset);
                    self.ch.w.batches.push((t, part, base, b));
                }
            }
        }
        self.ch.w.heads.retain(|x| (x.0, x.1) != key);
        self.ch.w.heads.push((t, part, head));
        if let Some(txns) = txns {
            self.ch.w.txns.retain(|x| (x.0, x.1) != key);
            self.ch.w.txns.push((t, part, txns));
        }
        for (pid, s) in producers {
            self.ch.w.producers.retain(|x| (x.0, x.1, x.2) != (t, part, pid));
            self.ch.w.producers.push((t, part, pid, s));
        }
        Ok(())
    }

    fn apply_offsets(&mut self, group_log: u32, cmd: &OffsetsCommand) {
        let log = self.offsets_mut(group_log);
        // Pending transaction offsets an end drops (or turns into committed ones).
        let ended: Vec<(String, i64)> = match cmd {
            OffsetsCommand::EndTxnOffsets { producer_id, .. } => log
                .pending
                .keys()
                .filter(|(_, pid)| pid == producer_id)
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let changed = log.apply(cmd);
        let pending: Vec<(String, i64, Option<offsets::Pending>)> = match cmd {
            OffsetsCommand::TxnOffsets {
                group, producer_id, ..
            } => {
                let now = log.pending.get(&(group.clone(), *producer_id)).cloned();
                vec![(group.clone(), *producer_id, now)]
            }
            OffsetsCommand::EndTxnOffsets { .. } => {
                ended.into_iter().map(|(g, pid)| (g, pid, None)).collect()
            }
            OffsetsCommand::DeleteTopic { .. } => log
                .pending
                .iter()
                .map(|((g, pid), o)| (g.clone(), *pid, Some(o.clone())))
                .collect(),
            _ => Vec::new(),
        };
        let w = &mut self.ch.w;
        if let OffsetsCommand::PutTxn { id, state } = cmd {
            w.txn_states.push((id.clone(), state.clone()));
        }
        w.txn_offsets.extend(pending);
        for ((g, t, p), v) in changed {
            w.offsets.push((g, t, p, v));
        }
    }

    fn apply_meta(&mut self, cmd: &MetaCommand) -> MetaOutcome {
        let out = self.meta_mut().apply(cmd);
        match &out {
            MetaOutcome::Created(t) => self.ch.w.put_topics.push(t.clone()),
            MetaOutcome::Deleted(t) => {
                let gone: Vec<(u32, u32)> = (0..t.partitions).map(|p| (t.id, p)).collect();
                for key in gone {
                    self.ch.partitions.insert(key, None);
                }
                self.ch.w.batches.retain(|b| b.0 != t.id);
                self.ch.w.heads.retain(|h| h.0 != t.id);
                self.ch.w.producers.retain(|p| p.0 != t.id);
                self.ch.w.delete_topics.push(t.clone());
                let cmd = OffsetsCommand::DeleteTopic { name: t.name.clone() };
                for log in 0..offsets::OFFSETS_PARTITIONS {
                    self.apply_offsets(log, &cmd);
                }
            }
            MetaOutcome::ProducerIds { first, count } => {
                let next = first + i64::from(*count);
                self.ch
                    .w
                    .meta
                    .push(("next_producer_id".into(), next.to_be_bytes().to_vec()));
            }
            MetaOutcome::Altered(t) => self.ch.w.put_topics.push(t.clone()),
            MetaOutcome::Registered | MetaOutcome::Replaced | MetaOutcome::Refused(_) => {}
        }
        out
    }
}

/// Handle to the writer thread.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Request>,
}

impl Writer {
    /// Sends a request.
    pub fn send(&self, r: Request) -> bool {
        self.tx.send(r).is_ok()
    }
}

/// Loads state from storage, builds the catalog and starts the writer thread.
pub fn start(
    storage: Arc<dyn Storage>,
) -> Result<(Writer, Catalog, OffsetTable, crate::storage::PendingTable), StoreError> {
    let snap = storage.load()?;
    let next_pid = snap
        .meta
        .get("next_producer_id")
        .and_then(|v| v.as_slice().try_into().ok())
        .map(i64::from_be_bytes);
    let mut applied = Applied {
        meta: Metadata::restore(snap.topics, next_pid),
        ..Applied::default()
    };
    for (key, head) in snap.heads {
        applied.partitions.entry(key).or_default().head = head;
    }
    for (key, txns) in snap.txns {
        applied.partitions.entry(key).or_default().txns = txns;
    }
    for ((t, p, pid), st) in snap.producers {
        applied
            .partitions
            .entry((t, p))
            .or_default()
            .producers
            .insert(pid, st);
    }
    for (id, st) in snap.txn_states {
        applied
            .offsets
            .entry(offsets::partition_for(&id))
            .or_default()
            .txns
            .insert(id, st);
    }
    for ((g, pid), o) in snap.txn_offsets {
        applied
            .offsets
            .entry(offsets::partition_for(&g))
            .or_default()
            .pending
            .insert((g, pid), o);
    }
    for ((g, t, p), o) in &snap.offsets {
        applied
            .offsets
            .entry(offsets::partition_for(g))
            .or_default()
            .offsets
            .insert((g.clone(), t.clone(), *p), o.clone());
    }
    let catalog: Catalog = Arc::new(CatalogInner::default());
    let offsets = Arc::new(RwLock::new(snap.offsets));
    let pending = crate::storage::PendingTable::default();
    publish_pending(&applied, &pending);
    publish_catalog(&applied, &catalog, true);
    let (tx, rx) = mpsc::channel();
    let (c2, o2, p2) = (catalog.clone(), offsets.clone(), pending.clone());
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || run(rx, storage, applied, c2, o2, p2))
        .map_err(|e| StoreError::Io(e.to_string()))?;
    Ok((Writer { tx }, catalog, offsets, pending))
}

/// Which group offsets transactions hold pending, for OffsetFetch's `require_stable`.
fn publish_pending(state: &Applied, pending: &crate::storage::PendingTable) {
    let mut p = pending.write().unwrap_or_else(|e| e.into_inner());
    p.clear();
    for log in state.offsets.values() {
        for ((g, _), offsets) in &log.pending {
            p.extend(offsets.keys().map(|(t, part)| (g.clone(), t.clone(), *part)));
        }
    }
}

/// Brings the readers' catalog in line with the state: new topics, removed topics, watermarks.
fn publish_catalog(state: &Applied, catalog: &Catalog, wake: bool) {
    let mut moved = false;
    let mut cat = catalog.topics.write().unwrap_or_else(|e| e.into_inner());
    cat.retain(|name, v| state.meta.topics.get(name).is_some_and(|m| m.id == v.meta.id));
    for (name, meta) in &state.meta.topics {
        let view = cat.entry(name.clone()).or_insert_with(|| {
            Arc::new(TopicView {
                meta: meta.clone(),
                partitions: (0..meta.partitions)
                    .map(|_| Arc::new(PartitionView::default()))
                    .collect(),
            })
        });
        if view.meta != *meta {
            // Configs changed, or partitions were added (their views join the ones readers hold).
            let mut parts = view.partitions.clone();
            parts.resize_with(meta.partitions as usize, || Arc::new(PartitionView::default()));
            *view = Arc::new(TopicView {
                meta: meta.clone(),
                partitions: parts,
            });
        }
        let empty = Partition::default();
        for (p, pv) in view.partitions.iter().enumerate() {
            let part = state.partitions.get(&(meta.id, p as u32)).unwrap_or(&empty);
            moved |= pv.publish(part) != part.head.next_offset;
        }
    }
    drop(cat);
    if wake && moved {
        catalog.appended.notify_waiters();
    }
}

fn run(
    rx: mpsc::Receiver<Request>,
    storage: Arc<dyn Storage>,
    mut applied: Applied,
    catalog: Catalog,
    offsets: OffsetTable,
    pending: crate::storage::PendingTable,
) {
    let mut backoff_ms = 10;
    while let Ok(first) = rx.recv() {
        let mut staged = Staged::new(&applied);
        let mut req = Some(first);
        let mut n = 0;
        while let Some(r) = req.take() {
            handle(&mut staged, r, &*storage);
            n += 1;
            if n < 4096 && staged.ch.w.batches.iter().map(|b| b.3.len()).sum::<usize>() < (64 << 20) {
                req = rx.try_recv().ok();
            }
        }
        let durable = staged.ch.w.is_empty() || storage.apply(&staged.ch.w).is_ok();
        let changes = staged.ch;
        let replies = if durable {
            let (w, replies) = applied.merge(changes);
            publish_catalog(&applied, &catalog, true);
            if !w.txn_offsets.is_empty() {
                publish_pending(&applied, &pending);
            }
            if !w.offsets.is_empty() {
                let mut table = offsets.write().unwrap_or_else(|e| e.into_inner());
                for (g, t, p, v) in w.offsets {
                    match v {
                        Some(v) => table.insert((g, t, p), v),
                        None => table.remove(&(g, t, p)),
                    };
                }
            }
            backoff_ms = 10;
            replies
        } else {
            warn!(
                requests = changes.replies.len(),
                "durable write failed; requests answered with an error"
            );
            changes.replies
        };
        for r in replies {
            r.send(durable);
        }
        if !durable {
            std::thread::sleep(std::time::Duration::from_millis(backoff_ms));
            backoff_ms = (backoff_ms * 2).min(1000);
        }
    }
}

/// A topic id drawn at random (version 4 UUID): the shell's job, so that the metadata state
/// machine stays deterministic.
pub fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&foundation::ids::random_u64().to_be_bytes());
    u[8..].copy_from_slice(&foundation::ids::random_u64().to_be_bytes());
    u[6] = (u[6] & 0x0f) | 0x40; // version 4
    u[8] = (u[8] & 0x3f) | 0x80; // variant
    u
}

fn handle(s: &mut Staged<'_>, r: Request, storage: &dyn Storage) {
    match r {
        Request::Produce {
            topic,
            partition,
            records,
            reply,
        } => {
            let res = produce(s, &topic, partition, &records);
            s.ch.replies.push(Reply::Produce(reply, res));
        }
        Request::CreateTopic {
            name,
            partitions,
            config,
            reply,
        } => {
            let code = match s.apply_meta(&MetaCommand::CreateTopic {
                name,
                partitions,
                config,
                uuid: new_uuid(),
                replicas: Vec::new(),
            }) {
                MetaOutcome::Refused(c) => c,
                _ => Code::None,
            };
            s.ch.replies.push(Reply::Code(reply, code));
        }
        Request::DeleteTopic { name, reply } => {
            let code = match s.apply_meta(&MetaCommand::DeleteTopic { name }) {
                MetaOutcome::Refused(c) => c,
                _ => Code::None,
            };
            s.ch.replies.push(Reply::Code(reply, code));
        }
        Request::CommitOffsets {
            group,
            offsets,
            reply,
        } => {
            let meta = s.meta();
            let codes: Vec<Code> = offsets
                .iter()
                .map(|(topic, partition, ..)| match meta.topics.get(topic) {
                    Some(t) if *partition < t.partitions => Code::None,
                    _ => Code::UnknownTopicOrPartition,
                })
                .collect();
            let valid: Vec<offsets::Commit> = offsets
                .into_iter()
                .zip(&codes)
                .filter(|(_, c)| **c == Code::None)
                .map(|(o, _)| o)
                .collect();
            if !valid.is_empty() {
                let log = offsets::partition_for(&group);
                s.apply_offsets(
                    log,
                    &OffsetsCommand::Commit {
                        group,
                        offsets: valid,
                    },
                );
            }
            s.ch.replies.push(Reply::Codes(reply, codes));
        }
        Request::DeleteGroup { group, reply } => {
            let log = offsets::partition_for(&group);
            s.apply_offsets(log, &OffsetsCommand::DeleteGroup { group });
            s.ch.replies.push(Reply::Code(reply, Code::None));
        }
        Request::InitProducerId { reply } => {
            let pid = s_new_producer_id(s);
            let v = pid.map_or((Code::KafkaStorageError, -1, -1), |pid| (Code::None, pid, 0));
            s.ch.replies.push(Reply::Pid(reply, v));
        }
        Request::Meta { cmd, reply } => {
            let code = match s.apply_meta(&cmd) {
                MetaOutcome::Refused(c) => c,
                _ => Code::None,
            };
            s.ch.replies.push(Reply::Code(reply, code));
        }
        Request::DeleteRecords {
            topic,
            partition,
            offset,
            reply,
        } => {
            let v = delete_records(s, &topic, partition, offset, storage);
            s.ch.replies.push(Reply::Low(reply, v));
        }
        Request::DeleteOffsets {
            group,
            partitions,
            reply,
        } => {
            let log = offsets::partition_for(&group);
            s.apply_offsets(log, &OffsetsCommand::DeletePartitions { group, partitions });
            s.ch.replies.push(Reply::Code(reply, Code::None));
        }
        Request::Txn(op) => txn::txn(s, op),
        Request::Compact => {
            let topics: Vec<TopicMeta> = s
                .meta()
                .topics
                .values()
                .filter(|t| t.config.compact)
                .cloned()
                .collect();
            for t in topics {
                for p in 0..t.partitions {
                    if let Err(e) = compact(s, &t, p, storage) {
                        warn!(topic = %t.name, partition = p, error = %e, "compaction failed");
                    }
                }
            }
        }
        Request::Retention { now_ms } => {
            let topics: Vec<TopicMeta> = s.meta().topics.values().cloned().collect();
            for t in topics {
                for p in 0..t.partitions {
                    if let Err(e) = retention(s, &t, p, now_ms, storage) {
                        warn!(topic = %t.name, partition = p, error = %e, "retention failed");
                    }
                }
            }
        }
    }
}

fn produce(s: &mut Staged<'_>, topic: &str, partition: u32, records: &[u8]) -> ProduceResult {
    let Some(meta) = s.meta().topics.get(topic) else {
        return ProduceResult::failed(Code::UnknownTopicOrPartition);
    };
    if partition >= meta.partitions {
        return ProduceResult::failed(Code::UnknownTopicOrPartition);
    }
    let key = (meta.id, partition);
    let prepared = match s.partition(key) {
        Some(p) => p.prepare(records),
        None => Partition::default().prepare(records),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(code) => return ProduceResult::failed(code),
    };
    if let Some(cmd) = prepared.command {
        if let Err(e) = s.apply_partition(key, cmd) {
            warn!(topic, partition, error = %e, "a prepared append did not apply");
            return ProduceResult::failed(Code::KafkaStorageError);
        }
    }
    ProduceResult {
        code: Code::None,
        base_offset: prepared.base_offset,
        log_start: s.partition(key).map_or(0, |p| p.head.log_start),
    }
}

/// Stored batch headers of a partition from `from` on, read from storage a page at a time.
fn stored_headers<'a>(
    storage: &'a dyn Storage,
    key: (u32, u32),
    mut from: i64,
) -> impl Iterator<Item = Result<BatchHeader, StoreError>> + 'a {
    const PAGE: usize = 1024;
    let mut page: std::vec::IntoIter<BatchHeader> = Vec::new().into_iter();
    let mut done = false;
    std::iter::from_fn(move || loop {
        if let Some(h) = page.next() {
            from = h.last_offset() + 1;
            return Some(Ok(h));
        }
        if done {
            return None;
        }
        match storage.headers(key.0, key.1, from, PAGE) {
            Ok(hs) => {
                done = hs.len() < PAGE;
                page = hs.into_iter();
            }
            Err(e) => {
                done = true;
                return Some(Err(e));
            }
        }
    })
}

/// A new producer id from the staged block (a new block through the metadata when it runs out).
fn s_new_producer_id(s: &mut Staged<'_>) -> Option<i64> {
    let mut block = s.ch.pids.unwrap_or(s.base.pids);
    let pid = match block.take() {
        Some(pid) => Some(pid),
        None => match s.apply_meta(&MetaCommand::AllocateProducerIds {
            count: ProducerIdBlock::SIZE,
        }) {
            MetaOutcome::ProducerIds { first, count } => {
                block.refill(first, count);
                block.take()
            }
            _ => None,
        },
    };
    s.ch.pids = Some(block);
    pid
}

/// DeleteRecords on one partition: `(code, log start after)`.
fn delete_records(
    s: &mut Staged<'_>,
    topic: &str,
    partition: u32,
    offset: i64,
    storage: &dyn Storage,
) -> (Code, i64) {
    let Some(t) = s.meta().topics.get(topic).filter(|t| partition < t.partitions) else {
        return (Code::UnknownTopicOrPartition, -1);
    };
    let key = (t.id, partition);
    let part = s.partition(key).cloned().unwrap_or_default();
    let to = match part.delete_records_to(offset) {
        Ok(to) => to,
        Err(code) => return (code, -1),
    };
    // Batches of this group commit are not in storage yet: they follow the stored ones.
    let staged: Vec<BatchHeader> =
        s.ch.w
            .batches
            .iter()
            .filter(|b| (b.0, b.1) == key)
            .filter_map(|b| batch::header(&b.3).ok())
            .collect();
    let headers = stored_headers(storage, key, part.head.log_start).chain(staged.into_iter().map(Ok));
    match part.cut_to(to, headers) {
        Ok(None) => (Code::None, part.head.log_start),
        Ok(Some(cmd)) => match s.apply_partition(key, cmd) {
            Ok(()) => (Code::None, to),
            Err(e) => {
                warn!(topic, partition, error = %e, "DeleteRecords did not apply");
                (Code::KafkaStorageError, -1)
            }
        },
        Err(e) => {
            warn!(topic, partition, error = %e, "DeleteRecords could not read the batch headers");
            (Code::KafkaStorageError, -1)
        }
    }
}

fn retention(
    s: &mut Staged<'_>,
    t: &TopicMeta,
    p: u32,
    now_ms: i64,
    storage: &dyn Storage,
) -> Result<(), StoreError> {
    let key = (t.id, p);
    let Some(part) = s.partition(key) else {
        return Ok(());
    };
    let headers = stored_headers(storage, key, part.head.log_start);
    if let Some(cmd) = part.retention(&t.config, now_ms, headers)? {
        s.apply_partition(key, cmd)?;
    }
    Ok(())
}

fn compact(s: &mut Staged<'_>, t: &TopicMeta, p: u32, storage: &dyn Storage) -> Result<(), StoreError> {
    let key = (t.id, p);
    let Some(part) = s.partition(key) else {
        return Ok(());
    };
    // Batches staged in this group commit are not in storage yet; compaction sees the durable
    // ones only (it then keeps a little more, never less).
    let raw = storage.read(t.id, p, part.head.log_start, usize::MAX)?;
    let cmd = part
        .compaction(&raw)
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(cmd) = cmd {
        s.apply_partition(key, cmd)?;
    }
    Ok(())
}

mod txn;
pub use txn::TxnOp;

#[cfg(test)]
mod tests;
