//! Durable state of the broker: record batches per partition and the metadata around them.
//!
//! The broker core is a single-writer state machine (see `state`): it decides everything a
//! group commit changes — batches with assigned offsets, partition heads, producer states,
//! topic changes, committed group offsets — as one [`WriteSet`], and the [`Storage`] applies
//! it atomically and durably. Replication slots in here: a replicated storage ships the same
//! `WriteSet` through a Raft log and applies it on every node.
//!
//! # The `Storage` contract (every implementation MUST)
//! - make [`Storage::apply`] durable before it returns `Ok` (redb: `Durability::Immediate`);
//! - apply a `WriteSet` atomically: all of it or nothing;
//! - return from [`Storage::read`] whole batches, in offset order, starting with the batch that
//!   contains `from` (or the first one after it), and at least one batch if any exists even
//!   when it is larger than `max_bytes`.
//!
//! The `suite` module (tests) checks these rules against every implementation.

pub mod mem;
pub mod redb_store;
#[cfg(test)]
pub mod suite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::batch::BatchHeader;

/// Storage failures. Nothing of a failed write was applied; `Io` is worth retrying.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The engine failed (I/O, disk full).
    #[error("storage: {0}")]
    Io(String),
    /// Stored data failed to decode.
    #[error("corrupt storage: {0}")]
    Corrupt(String),
    /// The file is of a layout this build does not read (fatal; the file was left as it was).
    #[error("{0}")]
    Layout(String),
    /// The file holds less than it acknowledged (it rolled back); refused until an operator
    /// accepts it (fatal for the open).
    #[error("{0}")]
    RolledBack(String),
}

/// Per-topic settings (the Kafka topic configs we honour).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// `retention.ms` (None = forever).
    pub retention_ms: Option<i64>,
    /// `retention.bytes` per partition (None = unlimited).
    pub retention_bytes: Option<i64>,
    /// `cleanup.policy=compact`.
    pub compact: bool,
}

/// A topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    /// Internal id (storage key).
    pub id: u32,
    /// Kafka topic id (UUID).
    pub uuid: [u8; 16],
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Configs.
    pub config: TopicConfig,
    /// The nodes holding each partition, the preferred leader first (empty on one node).
    #[serde(default)]
    pub replicas: Vec<Vec<u64>>,
}

/// Where a partition stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionHead {
    /// First offset still stored (Kafka's log start offset).
    pub log_start: i64,
    /// Offset of the next batch (Kafka's log end offset; the high watermark on one node).
    pub next_offset: i64,
    /// Bytes stored.
    pub bytes: u64,
}

/// One batch the idempotent producer sent recently (for duplicate detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqEntry {
    /// First sequence number.
    pub first_seq: i32,
    /// Last sequence number.
    pub last_seq: i32,
    /// Offset its first record got.
    pub base_offset: i64,
}

/// An idempotent producer's state on one partition: its epoch and its last (up to 5) batches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerState {
    /// Current epoch.
    pub epoch: i16,
    /// Most recent batches, oldest first (at most 5, Kafka's in-flight limit).
    pub batches: Vec<SeqEntry>,
}

/// A committed consumer-group offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    /// Offset.
    pub offset: i64,
    /// Client metadata string.
    pub metadata: String,
}

/// Everything one durable write changes.
#[derive(Debug, Clone, Default)]
pub struct WriteSet {
    /// Topics created or reconfigured.
    pub put_topics: Vec<TopicMeta>,
    /// Topics deleted, with all their data.
    pub delete_topics: Vec<TopicMeta>,
    /// Batches: `(topic id, partition, base offset, bytes)` (base offset already written in).
    pub batches: Vec<(u32, u32, i64, Vec<u8>)>,
    /// Batches removed by retention and DeleteRecords: `(topic id, partition, offset)`: every
    /// batch wholly below `offset` goes (one holding it stays).
    pub truncate: Vec<(u32, u32, i64)>,
    /// Single batches removed (compaction rewrites): `(topic id, partition, base offset)`.
    /// Applied before `batches`, so a rewrite can remove a batch and insert its replacement.
    pub remove_batches: Vec<(u32, u32, i64)>,
    /// New partition heads.
    pub heads: Vec<(u32, u32, PartitionHead)>,
    /// Producer states: `(topic id, partition, producer id, state)`.
    pub producers: Vec<(u32, u32, i64, ProducerState)>,
    /// Group offsets: `(group, topic, partition, offset or None to delete)`.
    pub offsets: Vec<(String, String, u32, Option<CommittedOffset>)>,
    /// Small metadata values (next producer id, cluster id).
    pub meta: Vec<(String, Vec<u8>)>,
    /// Partitions' transactions: `(topic id, partition, index)`; an empty index removes the row.
    pub txns: Vec<(u32, u32, crate::sm::partition::TxnIndex)>,
    /// Transactional ids' states (`None`: forget it).
    pub txn_states: Vec<(String, Option<crate::sm::txn::TxnState>)>,
    /// Transactions' pending group offsets: `(group, producer id, offsets or None to drop)`.
    pub txn_offsets: Vec<(String, i64, Option<crate::sm::offsets::Pending>)>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.put_topics.is_empty()
            && self.delete_topics.is_empty()
            && self.batches.is_empty()
            && self.truncate.is_empty()
            && self.remove_batches.is_empty()
            && self.heads.is_empty()
            && self.producers.is_empty()
            && self.offsets.is_empty()
            && self.meta.is_empty()
            && self.txns.is_empty()
            && self.txn_states.is_empty()
            && self.txn_offsets.is_empty()
    }
}

/// The `(group, topic, partition)`s a transaction has offsets pending for (OffsetFetch with
/// `require_stable` answers `UNSTABLE_OFFSET_COMMIT` for them).
pub type PendingTable = std::sync::Arc<std::sync::RwLock<std::collections::BTreeSet<(String, String, u32)>>>;

/// Committed offsets by (group, topic, partition), shared with the group handlers.
pub type OffsetTable = std::sync::Arc<std::sync::RwLock<BTreeMap<(String, String, u32), CommittedOffset>>>;

/// What the broker loads at start.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Topics.
    pub topics: Vec<TopicMeta>,
    /// Partition heads by (topic id, partition).
    pub heads: BTreeMap<(u32, u32), PartitionHead>,
    /// Producer states by (topic id, partition, producer id).
    pub producers: BTreeMap<(u32, u32, i64), ProducerState>,
    /// Group offsets by (group, topic, partition).
    pub offsets: BTreeMap<(String, String, u32), CommittedOffset>,
    /// Metadata values.
    pub meta: BTreeMap<String, Vec<u8>>,
    /// Partitions' transactions (none stored: none open, none aborted) by (topic id, partition).
    pub txns: BTreeMap<(u32, u32), crate::sm::partition::TxnIndex>,
    /// Transactional ids' states.
    pub txn_states: BTreeMap<String, crate::sm::txn::TxnState>,
    /// Transactions' pending group offsets by (group, producer id).
    pub txn_offsets: BTreeMap<(String, i64), crate::sm::offsets::Pending>,
}

/// Durable storage of the broker. Implementations are internally synchronised.
pub trait Storage: Send + Sync + std::fmt::Debug + 'static {
    /// Applies a write set atomically and durably.
    fn apply(&self, w: &WriteSet) -> Result<(), StoreError>;
    /// Loads all metadata (not the batches).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Whole batches from the one containing `from`, up to about `max_bytes` (at least one).
    fn read(&self, topic: u32, partition: u32, from: i64, max_bytes: usize) -> Result<Vec<u8>, StoreError>;
    /// Headers of the batches from the one containing `from`, at most `limit`.
    fn headers(
        &self,
        topic: u32,
        partition: u32,
        from: i64,
        limit: usize,
    ) -> Result<Vec<BatchHeader>, StoreError>;
    /// Closes the store for a clean stop: later calls fail. (Nothing to do in memory.)
    fn close(&self) {}
    /// Why the last write failed, while none has succeeded since (`None`: healthy).
    fn write_failure(&self) -> Option<String> {
        None
    }
    /// Damaged stored data found (at start, or by a read), if any: `/health` reports it.
    fn damage(&self) -> Option<String> {
        None
    }
    /// Whether opening the store needed a full repair of its file.
    fn opened_with_repair(&self) -> bool {
        false
    }
}

/// [`Storage::read`]'s rule for one stored batch `b`, in offset order: skipped while it ends
/// below `from`, appended while `out` stays within `max_bytes` (the first always is). Returns
/// `false` once `out` is full.
pub(crate) fn gather_batch(out: &mut Vec<u8>, b: &[u8], from: i64, max_bytes: usize) -> bool {
    if crate::batch::header(b).is_ok_and(|h| h.last_offset() < from) {
        return true;
    }
    if !out.is_empty() && out.len() + b.len() > max_bytes {
        return false;
    }
    out.extend_from_slice(b);
    true
}

impl From<foundation::redb::OpenError> for StoreError {
    fn from(e: foundation::redb::OpenError) -> Self {
        match e {
            foundation::redb::OpenError::Layout { .. } | foundation::redb::OpenError::Migrate { .. } => {
                StoreError::Layout(e.to_string())
            }
            foundation::redb::OpenError::Panicked { .. } => StoreError::Corrupt(e.to_string()),
            e => StoreError::Io(e.to_string()),
        }
    }
}
