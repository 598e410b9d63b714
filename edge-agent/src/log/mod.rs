//! The partitioned log: topics of partitions of records with dense offsets.
//!
//! # Model
//! A topic has `partitions` partitions; a partition is a sequence of records numbered by dense
//! `u64` offsets starting at 0. A record has an offset, a timestamp (ms since the Unix epoch), an
//! optional key, a value and headers — Kafka's record, so the bridge maps it 1:1.
//!
//! Records are stored in **chunks**: every append writes, per partition, one chunk holding all of
//! that append's records for the partition (Kafka's record batch, keyed by base offset). Group
//! commit therefore costs one insert per partition, not one per record. Retention removes whole
//! chunks, oldest first, and never the newest chunk of a partition; compaction rewrites chunks.
//!
//! # The `LogStore` contract (every implementation MUST)
//! - make an [`LogStore::append`] durable before it returns `Ok` (redb: `Durability::Immediate`);
//! - apply an append atomically: all records and all stream states, or nothing;
//! - assign offsets densely and monotonically per partition, never reusing one, even after
//!   retention or compaction removed records;
//! - return records from [`LogStore::read`] in offset order, starting at the first offset
//!   `>= from` that still exists;
//! - never fail a read because records were removed: the reader just sees later offsets.
//!
//! [`suite::test_all`] checks these rules; the redb store and the in-memory twin both pass it.

pub mod chunk;
pub mod mem;
pub mod policy;
pub mod redb_store;
#[cfg(any(test, feature = "testing"))]
pub mod suite;

use serde::{Deserialize, Serialize};

/// Errors of the log store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// The partition does not exist.
    #[error("topic {topic:?} has no partition {partition}")]
    UnknownPartition {
        /// Topic name.
        topic: String,
        /// Requested partition.
        partition: u32,
    },
    /// A topic spec is invalid or conflicts with the stored one.
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    /// Stored data failed to decode: the store is damaged (never caused by caller input).
    #[error("corrupt log data: {0}")]
    Corrupt(String),
    /// The storage engine failed (I/O, disk full). Retryable: nothing was half-applied.
    #[error("storage: {0}")]
    Storage(String),
    /// The log file holds less than it had acknowledged (it rolled back); refused until an
    /// operator accepts it (fatal for the open).
    #[error("{0}")]
    RolledBack(String),
    /// The log file is of a layout this build does not read (fatal; the file was left as it
    /// was).
    #[error("{0}")]
    Layout(String),
}

impl LogError {
    /// Whether retrying the same operation later may succeed (I/O trouble, full disk).
    pub fn is_retryable(&self) -> bool {
        matches!(self, LogError::Storage(_))
    }
}

/// A topic's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// Number of partitions (fixed once created).
    pub partitions: u32,
    /// Drop chunks whose newest record is older than this, ms.
    pub retention_ms: Option<u64>,
    /// Drop the oldest chunks while a partition holds more than this many bytes.
    pub retention_bytes: Option<u64>,
    /// Keep only the latest record per key (Kafka's `cleanup.policy=compact`).
    pub compact: bool,
}

impl TopicSpec {
    /// A plain topic with `partitions` partitions and no retention limits.
    pub fn new(name: &str, partitions: u32) -> Self {
        TopicSpec {
            name: name.into(),
            partitions,
            retention_ms: None,
            retention_bytes: None,
            compact: false,
        }
    }

    /// Checks name and partition count.
    pub fn validate(&self) -> Result<(), LogError> {
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 249
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok_name {
            return Err(LogError::InvalidTopic(format!("bad topic name {:?}", self.name)));
        }
        if self.partitions == 0 || self.partitions > 1024 {
            return Err(LogError::InvalidTopic(format!(
                "{}: partitions must be 1..=1024, got {}",
                self.name, self.partitions
            )));
        }
        Ok(())
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Optional key (the device id for telemetry).
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Offset within its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Optional key.
    pub key: Option<Vec<u8>>,
    /// The value.
    pub value: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A stored record borrowed from the store's pages (see [`LogStore::read_with`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    /// Offset within its partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Optional key.
    pub key: Option<&'a [u8]>,
    /// The value.
    pub value: &'a [u8],
    /// Headers, in order.
    pub headers: &'a [(&'a str, &'a [u8])],
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_owned(&self) -> Record {
        Record {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.to_vec(),
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect(),
        }
    }
}

/// Records for one partition within an [`Append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionAppend {
    /// Topic name.
    pub topic: String,
    /// Partition number.
    pub partition: u32,
    /// Records, in order.
    pub records: Vec<NewRecord>,
}

/// The receive state of one device boot (see `firmware::receiver::Stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamState {
    /// Device id.
    pub device: String,
    /// Boot id.
    pub boot: u32,
    /// Next sequence number expected.
    pub next_expected: u64,
}

/// One atomic, durable write: records for any partitions plus stream states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Append {
    /// Records per partition. A partition may appear at most once.
    pub partitions: Vec<PartitionAppend>,
    /// Stream states to store with the records (dedup state).
    pub streams: Vec<StreamState>,
}

impl Append {
    /// Records in this append.
    pub fn record_count(&self) -> usize {
        self.partitions.iter().map(|p| p.records.len()).sum()
    }
}

/// Where a partition stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStats {
    /// Lowest offset still stored (equals `next_offset` when empty).
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Records stored.
    pub records: u64,
    /// Bytes stored (encoded chunks).
    pub bytes: u64,
}

/// What one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Chunks removed.
    pub chunks: u64,
    /// Records removed.
    pub records: u64,
    /// Bytes removed.
    pub bytes: u64,
}

/// The log store. Implementations are internally synchronised.
pub trait LogStore: Send + Sync + std::fmt::Debug + 'static {
    /// Creates the topic if missing; an existing topic keeps its partition count (a different
    /// count is an error) and takes the new retention and compaction settings.
    fn ensure_topic(&self, spec: &TopicSpec) -> Result<(), LogError>;
    /// All topics.
    fn topics(&self) -> Result<Vec<TopicSpec>, LogError>;
    /// Appends atomically and durably; returns the base offset assigned per partition append,
    /// in the order given.
    fn append(&self, append: &Append) -> Result<Vec<u64>, LogError>;
    /// Up to `max_records` records from offset `from` (the first stored offset `>= from`),
    /// stopping before `max_bytes` of values would be exceeded (at least one record is
    /// returned if any exists).
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, LogError>;
    /// Calls `f` with the stored records from the first offset `>= from` on, in order,
    /// borrowed rather than copied, until `f` returns `false` or `max_records` were visited.
    /// Returns the number visited. (The bridge's drain: no allocation per record.)
    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&RecordRef<'_>) -> bool,
    ) -> Result<usize, LogError> {
        let records = self.read(topic, partition, from, max_records, usize::MAX)?;
        let mut n = 0;
        for r in &records {
            let headers: Vec<(&str, &[u8])> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_slice()))
                .collect();
            n += 1;
            if !f(&RecordRef {
                offset: r.offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key.as_deref(),
                value: &r.value,
                headers: &headers,
            }) {
                break;
            }
        }
        Ok(n)
    }
    /// Calls `f(offset, key)` for the stored records with offsets in `from..to`, in order,
    /// without copying values (the bridge's backlog scan). Returns how many were visited.
    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> Result<u64, LogError> {
        let mut next = from;
        let mut n = 0;
        while next < to {
            let batch = self.read(topic, partition, next, 10_000, usize::MAX)?;
            let Some(last) = batch.last().map(|r| r.offset) else {
                break;
            };
            for r in batch.iter().filter(|r| r.offset < to) {
                f(r.offset, r.key.as_deref());
                n += 1;
            }
            next = last + 1;
        }
        Ok(n)
    }
    /// The partition's offsets and size.
    fn partition_stats(&self, topic: &str, partition: u32) -> Result<PartitionStats, LogError>;
    /// The stored next-expected sequence of a device boot.
    fn stream_state(&self, device: &str, boot: u32) -> Result<Option<u64>, LogError>;
    /// Applies every topic's retention at time `now_ms`.
    fn apply_retention(&self, now_ms: i64) -> Result<RetentionReport, LogError>;
    /// Removes the oldest chunks of a partition whose records all lie below `below` (the
    /// bridge's disk quota for unforwarded data). Offsets are never reused afterwards.
    fn truncate(&self, topic: &str, partition: u32, below: u64) -> Result<RetentionReport, LogError>;
    /// Compacts a topic: keeps only the latest record per key (records without a key stay).
    /// The newest chunk of each partition is left as is. Returns records removed.
    fn compact(&self, topic: &str) -> Result<u64, LogError>;
    /// A small metadata value (gateway id, checkpoints).
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>, LogError>;
    /// Stores a small metadata value durably.
    fn set_meta(&self, key: &str, value: &[u8]) -> Result<(), LogError>;
    /// Damaged stored data met since the store was opened (or last repaired), if any: the
    /// health check reports it until it is dealt with.
    fn damage(&self) -> Option<StoreDamage> {
        None
    }
    /// Where reading can go on after a damaged chunk: the first offset after the chunk that
    /// holds `from` (`None` if no chunk follows). For readers that can do without the damaged
    /// records (the device registry's preload); the bridge does not skip, it waits for
    /// `log verify --quarantine`.
    fn skip_damaged(&self, topic: &str, partition: u32, from: u64) -> Result<Option<u64>, LogError> {
        let _ = (topic, partition, from);
        Ok(None)
    }
    /// Why the last write failed, while none has succeeded since (a full disk, the disk
    /// reserve, an I/O error).
    fn write_failure(&self) -> Option<String> {
        None
    }
    /// Whether opening the store needed a full repair of its file (see
    /// [`redb_store::RedbLog::opened_with_repair`]).
    fn opened_with_repair(&self) -> bool {
        false
    }
    /// Checks every stored row and chunk ([`redb_store::RedbLog::verify`]).
    fn verify(&self) -> Result<redb_store::VerifyReport, LogError> {
        Err(LogError::Storage("this store has nothing to verify".into()))
    }
    /// Puts damaged items aside ([`redb_store::RedbLog::quarantine`]).
    fn quarantine(&self) -> Result<redb_store::VerifyReport, LogError> {
        Err(LogError::Storage("this store has nothing to quarantine".into()))
    }
}

/// Damage a store met while reading (checksum failures, undecodable rows).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StoreDamage {
    /// Reads that met damaged data.
    pub failures: u64,
    /// The last one: what was damaged (topic, partition, offset) and how.
    pub last: String,
}

/// Keeps records while their values fit in `max_bytes`; always keeps the first record, so a
/// reader with a small limit still makes progress.
pub(crate) fn cap_bytes(mut records: Vec<Record>, max_bytes: usize) -> Vec<Record> {
    let mut total = 0usize;
    let keep = records
        .iter()
        .position(|r| {
            total += r.value.len();
            total > max_bytes
        })
        .unwrap_or(records.len())
        .max(1)
        .min(records.len());
    records.truncate(keep);
    records
}

/// The bridge reads the log through its own trait; a log error is its retryable `Log` error.
impl From<LogError> for bridge::Error {
    fn from(e: LogError) -> Self {
        bridge::Error::log(e)
    }
}

impl From<foundation::redb::OpenError> for LogError {
    fn from(e: foundation::redb::OpenError) -> Self {
        match e {
            foundation::redb::OpenError::Layout { .. } | foundation::redb::OpenError::Migrate { .. } => {
                LogError::Layout(e.to_string())
            }
            foundation::redb::OpenError::Panicked { .. } => LogError::Corrupt(e.to_string()),
            e => LogError::Storage(e.to_string()),
        }
    }
}
