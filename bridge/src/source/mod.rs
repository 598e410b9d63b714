//! What the bridge needs from the edge log. The edge agent implements [`EdgeLog`] over its
//! redb store (the bridge cannot depend on the agent: the agent hosts the bridge).

/// A record read from the edge log, as the cloud will receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeRecord {
    /// Offset in its edge partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch (becomes the cloud record's timestamp).
    pub timestamp_ms: i64,
    /// Key (the device id for telemetry and device status).
    pub key: Option<Vec<u8>>,
    /// Value, forwarded unchanged.
    pub value: Vec<u8>,
    /// The edge record's own headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// For a device reading: its boot id and sequence number (sent as the `reading` header,
    /// `<boot>/<seq>`, so a cloud consumer can check a device's sequence without decoding
    /// values).
    pub reading: Option<(u32, u64)>,
}

/// A record borrowed from the edge log (see [`EdgeLog::read_with`]).
#[derive(Debug, Clone, Copy)]
pub struct EdgeRecordRef<'a> {
    /// Offset in its edge partition.
    pub offset: u64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: &'a [u8],
    /// The edge record's own headers.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// A reading's boot id and sequence number.
    pub reading: Option<(u32, u64)>,
}

impl EdgeRecord {
    /// Calls `f` with a borrowed view of this record.
    pub fn with_ref<T>(&self, f: impl FnOnce(&EdgeRecordRef<'_>) -> T) -> T {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        f(&EdgeRecordRef {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: &self.value,
            headers: &headers,
            reading: self.reading,
        })
    }
}

/// Where an edge partition stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgePartition {
    /// Lowest offset still stored (equals `next_offset` when empty).
    pub first_offset: u64,
    /// Offset the next record will get.
    pub next_offset: u64,
    /// Records stored.
    pub records: u64,
    /// Bytes stored.
    pub bytes: u64,
}

/// An edge topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeTopic {
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Compacted topics lose superseded records by design: gaps there are not drops.
    pub compacted: bool,
}

/// The edge log as the bridge uses it. Implementations are internally synchronised.
///
/// # What an implementation MUST do
/// - Offsets are dense per partition and never reused: the next record gets `next_offset`.
/// - A record is readable once the append that wrote it has committed durably, and reads
///   return records in offset order, starting at the first stored offset `>= from` (records
///   below `first_offset` are gone for good: retention, compaction or [`EdgeLog::truncate`]).
/// - [`EdgeLog::truncate`] removes only records below `below`, whole chunks at a time, and
///   says how many it removed; `first_offset` moves past them.
/// - [`EdgeLog::save_state`] is durable when it returns, and [`EdgeLog::load_state`] returns
///   the last state saved (or `None` if none ever was).
/// - Errors are for the call that met them; a later call may succeed (the bridge retries).
pub trait EdgeLog: Send + Sync + std::fmt::Debug + 'static {
    /// All topics.
    fn topics(&self) -> crate::Result<Vec<EdgeTopic>>;
    /// Up to `max_records` records from the first stored offset `>= from`, stopping near
    /// `max_bytes` of values (at least one record when any exists).
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> crate::Result<Vec<EdgeRecord>>;
    /// Calls `f` with the records from the first offset `>= from` on, borrowed, until it
    /// returns `false` or `max_records` were visited; returns the number visited.
    fn read_with(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        f: &mut dyn FnMut(&EdgeRecordRef<'_>) -> bool,
    ) -> crate::Result<usize>;
    /// Calls `f(offset, key)` for the records with offsets in `from..to` (the live-first
    /// backlog scan: only keys are needed). Returns records visited.
    fn scan_keys(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        to: u64,
        f: &mut dyn FnMut(u64, Option<&[u8]>),
    ) -> crate::Result<u64>;
    /// Blocks until something may have been appended since the log's append counter read
    /// `seen`, or `timeout` passes; returns the counter. The bridge waits here when idle, so
    /// a live record is forwarded as soon as it is committed and an idle bridge costs nothing.
    /// The default polls every few milliseconds.
    fn wait_for_append(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        std::thread::sleep(timeout.min(std::time::Duration::from_millis(5)));
        seen.wrapping_add(1)
    }
    /// Offsets and size of a partition.
    fn partition(&self, topic: &str, partition: u32) -> crate::Result<EdgePartition>;
    /// Removes whole chunks whose records all lie below `below` (the disk quota); returns
    /// records removed.
    fn truncate(&self, topic: &str, partition: u32, below: u64) -> crate::Result<u64>;
    /// The bridge's persisted state (checkpoints, cloud scan offsets, drop counts).
    fn load_state(&self) -> crate::Result<Option<Vec<u8>>>;
    /// Stores the bridge's state durably.
    fn save_state(&self, state: &[u8]) -> crate::Result<()>;
}

pub mod mem;
