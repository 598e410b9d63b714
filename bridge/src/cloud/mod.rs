//! The cloud as the engine sees it: a Kafka-compatible cluster reached through a
//! [`Cloud`] (topics, watermarks, the reconcile scan) and, per session, a [`CloudSession`]
//! (an idempotent producer: send, delivery reports). [`kafka`] is librdkafka; [`twin`] an
//! in-memory cluster with injectable faults, so the engine's guarantees are tested in
//! milliseconds.
//!
//! # What an implementation MUST do
//! - **acks=all, idempotent**: a record reported delivered is durable in the cloud; within one
//!   cloud partition and one session, what the cloud holds of the records sent is a prefix of
//!   their send order (a failed record is never followed by a later one of the same session
//!   and partition that succeeded — librdkafka's idempotent producer fails those too).
//! - **one report per accepted send** ([`Sent::Ok`]), eventually, unless the session is dropped
//!   (then the records may or may not have arrived; the engine reconciles).
//! - [`Sent::Full`] sends nothing and reports nothing: the engine tries again later.
//! - A scan sees every record at offsets `from..to` of the partitions it was given, once.

pub mod kafka;
pub mod twin;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Result;

/// What a delivery report is about; travels through librdkafka packed in a `usize`
/// (no allocation per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// A record of the engine's source `src` (an edge partition).
    Record {
        /// Index of the edge partition among the forwarded ones.
        src: usize,
        /// Edge offset.
        offset: u64,
    },
    /// A replay record; `slot` names the replay range.
    Replay {
        /// The replay range's slot.
        slot: usize,
        /// Edge offset.
        offset: u64,
    },
    /// A gateway heartbeat.
    Heartbeat,
}

/// Edge offsets must fit this many bits to travel in a [`Tag`].
pub const OFFSET_BITS: u32 = 48;
/// Sources (and replay slots) must fit this many bits.
pub const SRC_BITS: u32 = 14;

impl Tag {
    /// Packs into a `usize`.
    pub fn pack(self) -> usize {
        let v: u64 = match self {
            Tag::Record { src, offset } => {
                ((src as u64) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
            }
            Tag::Replay { slot, offset } => {
                (1 << 62) | ((slot as u64) << OFFSET_BITS) | (offset & ((1 << OFFSET_BITS) - 1))
            }
            Tag::Heartbeat => 2 << 62,
        };
        v as usize
    }

    /// The tag [`Tag::pack`] packed.
    pub fn unpack(v: usize) -> Tag {
        let v = v as u64;
        match v >> 62 {
            0 => Tag::Record {
                src: (v >> OFFSET_BITS) as usize,
                offset: v & ((1 << OFFSET_BITS) - 1),
            },
            1 => Tag::Replay {
                slot: ((v >> OFFSET_BITS) & ((1 << SRC_BITS) - 1)) as usize,
                offset: v & ((1 << OFFSET_BITS) - 1),
            },
            _ => Tag::Heartbeat,
        }
    }
}

/// A record to produce. The identity headers are passed apart from the edge record's own
/// so an implementation can build its header list once, without an intermediate copy.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Cloud topic.
    pub topic: &'a str,
    /// Cloud partition; `None`: the murmur2 partition of the key.
    pub partition: Option<i32>,
    /// Key.
    pub key: Option<&'a [u8]>,
    /// Value.
    pub value: &'a [u8],
    /// Timestamp, ms since the Unix epoch; `None`: the producer's clock.
    pub timestamp_ms: Option<i64>,
    /// The edge record's own headers, then these.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Value of the `edge` header, if any.
    pub edge: Option<&'a [u8]>,
    /// Value of the `reading` header, if any.
    pub reading: Option<&'a [u8]>,
    /// Value of the `replay` header, if any.
    pub replay: Option<&'a [u8]>,
}

impl OutRecord<'_> {
    /// Bytes of keys, values and headers (what the bandwidth cap counts).
    pub fn size(&self) -> usize {
        let h = |k: &str, v: Option<&[u8]>| v.map_or(0, |v| k.len() + v.len());
        self.value.len()
            + self.key.map_or(0, <[u8]>::len)
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
            + h(crate::headers::EDGE, self.edge)
            + h(crate::headers::READING, self.reading)
            + h(crate::headers::REPLAY, self.replay)
    }
}

/// The outcome of a send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// Accepted; a report will follow.
    Ok,
    /// The producer's queue is full: nothing was sent.
    Full,
    /// Refused locally for good (e.g. larger than the producer's size limit); no report.
    Refused(String),
}

/// Why a record was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No retry can fix it (the record is too large for the cloud, or invalid).
    Permanent(String),
    /// It may succeed in a new session.
    Retriable(String),
}

/// A delivery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The send it answers.
    pub tag: Tag,
    /// Cloud partition and offset, or why not.
    pub result: std::result::Result<(i32, i64), Failure>,
}

/// What the producer's own statistics say (counters start at 0 per session).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ProducerStats {
    /// Requests retried.
    pub retries: u64,
    /// Broker connections lost.
    pub disconnects: u64,
    /// Records queued in the producer.
    pub queued: u64,
}

/// One session's producer.
pub trait CloudSession {
    /// Queues a record.
    fn send(&mut self, rec: &OutRecord<'_>, tag: Tag) -> Sent;
    /// Serves the producer for up to `timeout`; returns the delivery reports that arrived.
    fn poll(&mut self, timeout: Duration) -> Vec<Report>;
    /// A fatal producer error (the session must end), if any.
    fn fatal_error(&self) -> Option<String>;
    /// The latest statistics.
    fn stats(&self) -> ProducerStats;
    /// Waits up to `timeout` for what is queued to be delivered; returns the reports.
    fn flush(&mut self, timeout: Duration) -> Vec<Report>;
}

/// What a topic creation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Made with the partition count asked for.
    Yes,
    /// It exists already (maybe with another count).
    Exists,
    /// The cluster refused (e.g. it forbids creating topics).
    Refused(String),
}

/// A cloud record seen by the reconcile scan: only what identifies it.
#[derive(Debug, Clone, Copy)]
pub struct Seen<'a> {
    /// Cloud topic.
    pub topic: &'a str,
    /// Cloud partition.
    pub partition: i32,
    /// Cloud offset.
    pub offset: i64,
    /// Value of its `edge` header.
    pub edge: Option<&'a [u8]>,
    /// It carries a `replay` header.
    pub replay: bool,
}

/// The cloud cluster.
pub trait Cloud {
    /// A session's producer.
    type Session: CloudSession;
    /// Partition counts of those of `topics` that exist.
    fn partition_counts(&mut self, topics: &[String]) -> Result<BTreeMap<String, u32>>;
    /// Creates a topic.
    fn create_topic(&mut self, topic: &str, partitions: u32) -> Result<Created>;
    /// Low and high watermarks of a partition.
    fn watermarks(&mut self, topic: &str, partition: i32) -> Result<(i64, i64)>;
    /// Reads `(topic, partition, from, to)` ranges, calling `f` for every record;
    /// `stopping` ends the scan early (an error).
    fn scan(
        &mut self,
        ranges: &[(String, i32, i64, i64)],
        stopping: &dyn Fn() -> bool,
        f: &mut dyn FnMut(Seen<'_>),
    ) -> Result<()>;
    /// A new producer session.
    fn session(&mut self) -> Result<Self::Session>;
}
