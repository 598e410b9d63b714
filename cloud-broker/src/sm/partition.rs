//! The partition state machine: one partition's head and its idempotent producers.
//!
//! It is fed [`PartitionCommand`]s, the payload a partition's Raft log carries, and is
//! deterministic: the same commands in the same order give the same state on every replica.
//! Time comes in as arguments; nothing here draws an id, reads a clock or touches storage.
//!
//! Two halves:
//! - **deciding** (the leader, or the single node): [`Partition::prepare`] applies Kafka's
//!   produce rules (batch shape, idempotent-producer sequence and epoch) and assigns offsets,
//!   giving the `Append` command to log; [`Partition::retention`] and [`Partition::compaction`]
//!   decide what retention and compaction remove, from batch headers or bytes the caller reads;
//! - **applying** (every replica): [`Partition::apply`] moves the head and the producer windows
//!   by a command. It checks only what must hold for any command the deciding half made
//!   (offsets dense from the head); a violation is a corrupt log, never a client error.
//!
//! The deciding half runs against the leader's *tip*: the applied state plus every command it
//! proposed and has not yet seen applied, so that pipelined produces get consecutive offsets.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::batch::{self, BatchError, BatchHeader};
use crate::errors::Code;
use crate::storage::{PartitionHead, ProducerState, SeqEntry, TopicConfig};

/// How many recent batches per producer and partition are remembered for dedup (Kafka's
/// `max.in.flight.requests.per.connection` limit for idempotence).
pub const PRODUCER_WINDOW: usize = 5;
/// Largest record batch accepted.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most records in one batch (a compressed batch could otherwise claim any count).
pub const MAX_BATCH_RECORDS: i32 = 1_000_000;

/// A change to one partition: the payload of one entry in the partition's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartitionCommand {
    /// Batches with their offsets written in, dense from the head, in offset order.
    Append {
        /// The stored bytes of each batch.
        batches: Vec<Vec<u8>>,
    },
    /// Every batch wholly below `log_start` is gone (retention, DeleteRecords; the batch
    /// holding `log_start`, if it starts below, stays); `bytes` remain.
    Truncate {
        /// The new log start offset.
        log_start: i64,
        /// Bytes left in the partition.
        bytes: u64,
    },
    /// Compaction removed batches (by base offset) and stored rewritten ones in their place.
    Compact {
        /// Base offsets of the batches taken out.
        remove: Vec<i64>,
        /// Rewritten batches (offsets written in), replacing some of the removed ones.
        rewrite: Vec<Vec<u8>>,
        /// The log start offset after compaction.
        log_start: i64,
        /// Bytes left in the partition.
        bytes: u64,
    },
}

/// A command that cannot be applied: the log holding it is corrupt or was not made by
/// [`Partition::prepare`]. Fatal for the partition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("partition command does not fit the partition: {0}")]
pub struct ApplyError(pub String);

/// What the deciding half made of a produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// What to log; `None` when every batch was a duplicate of one already logged.
    pub command: Option<PartitionCommand>,
    /// The offset to answer with: the first batch's, or for a duplicate the original's.
    pub base_offset: i64,
}

/// One partition's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Offsets and bytes.
    pub head: PartitionHead,
    /// Idempotent producers by producer id.
    pub producers: BTreeMap<i64, ProducerState>,
    /// Transactions on this partition.
    pub txns: TxnIndex,
}

/// One partition's transactions: those still open (which hold back the last stable offset)
/// and the aborted ones a `read_committed` consumer must skip.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnIndex {
    /// Open transactions: producer id → offset of its first record here.
    pub open: BTreeMap<i64, i64>,
    /// Aborted transactions whose marker is at or past the log start, in marker order:
    /// `(producer id, first offset, marker offset)`.
    pub aborted: Vec<(i64, i64, i64)>,
}

impl TxnIndex {
    /// Whether there is nothing to keep.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.aborted.is_empty()
    }
}

/// [`Partition`] before transactions: read from stores written then.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PartitionV1 {
    head: PartitionHead,
    producers: BTreeMap<i64, ProducerState>,
}

impl From<PartitionV1> for Partition {
    fn from(p: PartitionV1) -> Self {
        Partition {
            head: p.head,
            producers: p.producers,
            txns: TxnIndex::default(),
        }
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

/// Remembers a logged batch in its producer's window (a new epoch starts a new window).
fn remember(st: &mut ProducerState, h: &BatchHeader, base: i64) {
    if st.epoch != h.producer_epoch {
        st.epoch = h.producer_epoch;
        st.batches.clear();
    }
    st.batches.push(SeqEntry {
        first_seq: h.base_sequence,
        last_seq: h.last_sequence(),
        base_offset: base,
    });
    if st.batches.len() > PRODUCER_WINDOW {
        st.batches.remove(0);
    }
}

impl Partition {
    /// Kafka's produce rules for a record set against this state: every batch well formed, dense
    /// and not a control batch, each idempotent batch next in its producer's sequence (a retry of
    /// one of its last [`PRODUCER_WINDOW`] batches is a duplicate, answered with the original
    /// offset and not logged again). Offsets are assigned from the head. All or nothing: a
    /// refusal part-way logs none of the record set. Does not change `self`.
    pub fn prepare(&self, records: &[u8]) -> Result<Prepared, Code> {
        let batches = match batch::split(records, MAX_BATCH_BYTES) {
            Ok(b) => b,
            Err(BatchError::TooLarge(_)) => return Err(Code::MessageTooLarge),
            Err(BatchError::Magic(_)) => return Err(Code::UnsupportedForMessageFormat),
            Err(_) => return Err(Code::CorruptMessage),
        };
        let mut next = self.head.next_offset;
        let mut first_base = None;
        // Producer windows as they would be after the batches accepted so far.
        let mut touched: HashMap<i64, Option<ProducerState>> = HashMap::new();
        let mut out = Vec::new();
        for (h, bytes) in batches {
            // Producers write dense batches; a count the header cannot back is refused here so
            // that nothing downstream (compaction, timestamp lookups) sizes work by an unchecked
            // count.
            // Transactional batches need a producer id; control batches (markers) come only
            // from the transaction coordinator (`prepare_marker`), never from a producer.
            if (h.is_transactional() && h.producer_id < 0)
                || h.is_control()
                || h.record_count < 1
                || h.record_count > MAX_BATCH_RECORDS
                || h.last_offset_delta != h.record_count - 1
            {
                return Err(Code::InvalidRecord);
            }
            if h.producer_id >= 0 {
                let st = touched
                    .entry(h.producer_id)
                    .or_insert_with(|| self.producers.get(&h.producer_id).cloned());
                match check_sequence(st.as_ref(), h.producer_epoch, h.base_sequence, h.last_sequence()) {
                    Seq::Ok => {}
                    Seq::Duplicate(orig) => {
                        first_base.get_or_insert(orig);
                        continue;
                    }
                    Seq::Error(code) => return Err(code),
                }
                remember(st.get_or_insert_with(ProducerState::default), &h, next);
            }
            let mut stored = bytes.to_vec();
            batch::set_base_offset(&mut stored, next);
            first_base.get_or_insert(next);
            next += h.offset_count() as i64;
            out.push(stored);
        }
        Ok(Prepared {
            base_offset: first_base.unwrap_or(next),
            command: (!out.is_empty()).then_some(PartitionCommand::Append { batches: out }),
        })
    }

    /// Applies a command. On error nothing changed.
    pub fn apply(&mut self, cmd: &PartitionCommand) -> Result<(), ApplyError> {
        match cmd {
            PartitionCommand::Append { batches } => {
                let mut head = self.head;
                let mut headers = Vec::with_capacity(batches.len());
                for b in batches {
                    let h = batch::header(b).map_err(|e| ApplyError(e.to_string()))?;
                    if h.base_offset != head.next_offset {
                        return Err(ApplyError(format!(
                            "batch at offset {} where the partition continues at {}",
                            h.base_offset, head.next_offset
                        )));
                    }
                    if head.next_offset == head.log_start && head.bytes == 0 {
                        head.log_start = h.base_offset;
                    }
                    head.next_offset = h.last_offset() + 1;
                    head.bytes += h.size as u64;
                    headers.push(h);
                }
                for (h, b) in headers.iter().zip(batches).filter(|(h, _)| h.producer_id >= 0) {
                    if h.is_control() {
                        let st = self.producers.entry(h.producer_id).or_default();
                        if h.producer_epoch > st.epoch {
                            st.epoch = h.producer_epoch;
                            st.batches.clear();
                        }
                        if let Some(first) = self.txns.open.remove(&h.producer_id) {
                            if batch::marker_commits(b) == Some(false) {
                                self.txns.aborted.push((h.producer_id, first, h.base_offset));
                            }
                        }
                        continue;
                    }
                    if h.is_transactional() {
                        self.txns.open.entry(h.producer_id).or_insert(h.base_offset);
                    }
                    remember(self.producers.entry(h.producer_id).or_default(), h, h.base_offset);
                }
                self.head = head;
            }
            PartitionCommand::Truncate { log_start, bytes } => {
                if *log_start > self.head.next_offset {
                    return Err(ApplyError(format!(
                        "truncate to {log_start} past the end {}",
                        self.head.next_offset
                    )));
                }
                self.head.log_start = self.head.log_start.max(*log_start);
                self.head.bytes = *bytes;
                self.forget_aborted_below_start();
            }
            PartitionCommand::Compact { log_start, bytes, .. } => {
                self.head.log_start = self.head.log_start.max(*log_start).min(self.head.next_offset);
                self.head.bytes = *bytes;
                self.forget_aborted_below_start();
            }
        }
        Ok(())
    }

    fn forget_aborted_below_start(&mut self) {
        let start = self.head.log_start;
        self.txns.aborted.retain(|a| a.2 >= start);
    }

    /// The last stable offset: the first offset of the oldest open transaction, or the end
    /// of the log when none is open. `read_committed` consumers read below it.
    pub fn last_stable_offset(&self) -> i64 {
        self.txns
            .open
            .values()
            .copied()
            .min()
            .unwrap_or(self.head.next_offset)
            .min(self.head.next_offset)
    }

    /// The aborted transactions a fetch of `[from, to)` must name: those whose records
    /// reach into it, as `(producer id, first offset)`.
    pub fn aborted_between(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        self.txns
            .aborted
            .iter()
            .filter(|(_, first, marker)| *marker >= from && *first < to)
            .map(|(pid, first, _)| (*pid, *first))
            .collect()
    }

    /// The marker ending producer `producer_id`'s transaction on this partition (`commit` or
    /// abort), written by its transaction coordinator at `timestamp`. `None` when no
    /// transaction of that producer is open here (a marker written again after a coordinator
    /// moved); `INVALID_PRODUCER_EPOCH` for an epoch older than the producer's.
    pub fn prepare_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        coordinator_epoch: i32,
        timestamp: i64,
    ) -> Result<Option<PartitionCommand>, Code> {
        if self
            .producers
            .get(&producer_id)
            .is_some_and(|st| producer_epoch < st.epoch)
        {
            return Err(Code::InvalidProducerEpoch);
        }
        if !self.txns.open.contains_key(&producer_id) {
            return Ok(None);
        }
        let mut b = batch::marker(producer_id, producer_epoch, commit, coordinator_epoch, timestamp);
        batch::set_base_offset(&mut b, self.head.next_offset);
        Ok(Some(PartitionCommand::Append { batches: vec![b] }))
    }

    /// Producer ids whose state `cmd` changes when applied.
    pub fn producers_touched(cmd: &PartitionCommand) -> Vec<i64> {
        let mut pids: Vec<i64> = match cmd {
            PartitionCommand::Append { batches } => batches
                .iter()
                .filter_map(|b| batch::header(b).ok())
                .filter(|h| h.producer_id >= 0)
                .map(|h| h.producer_id)
                .collect(),
            _ => Vec::new(),
        };
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Where Kafka's DeleteRecords for `offset` puts the log start (`-1`: the high watermark),
    /// or `OFFSET_OUT_OF_RANGE` for an offset past the high watermark or another negative one.
    /// An offset at or below the log start changes nothing (the answer is the log start).
    pub fn delete_records_to(&self, offset: i64) -> Result<i64, Code> {
        let end = self.head.next_offset;
        match offset {
            -1 => Ok(end.max(self.head.log_start)),
            o if o < 0 || o > end => Err(Code::OffsetOutOfRange),
            o => Ok(o.max(self.head.log_start)),
        }
    }

    /// The command that moves the log start to `log_start` (from
    /// [`Partition::delete_records_to`]): every batch wholly below it goes; the one holding
    /// it stays, its records below the log start no longer served. `None` when the log
    /// start is there already. `headers` are the partition's batches from its log start.
    pub fn cut_to<E>(
        &self,
        log_start: i64,
        headers: impl IntoIterator<Item = Result<BatchHeader, E>>,
    ) -> Result<Option<PartitionCommand>, E> {
        if log_start <= self.head.log_start {
            return Ok(None);
        }
        let mut bytes = self.head.bytes;
        for h in headers {
            let h = h?;
            if h.last_offset() < self.head.log_start {
                continue;
            }
            if h.last_offset() >= log_start {
                break;
            }
            bytes -= (h.size as u64).min(bytes);
        }
        Ok(Some(PartitionCommand::Truncate { log_start, bytes }))
    }

    /// Retention by time and bytes over the partition's batch headers, oldest first: whole
    /// batches go while they are older than `retention.ms` or the partition is over
    /// `retention.bytes`, never the newest one (so a partition's offsets stay visible).
    /// `headers` may stop early (a caller paging through storage); the cut is then partial.
    pub fn retention<E>(
        &self,
        config: &TopicConfig,
        now_ms: i64,
        headers: impl IntoIterator<Item = Result<BatchHeader, E>>,
    ) -> Result<Option<PartitionCommand>, E> {
        let (max_age, max_bytes) = (config.retention_ms, config.retention_bytes);
        if max_age.is_none() && max_bytes.is_none() {
            return Ok(None);
        }
        let mut bytes = self.head.bytes;
        let mut new_start = None;
        let stable = self.last_stable_offset();
        for h in headers {
            let h = h?;
            if h.last_offset() < self.head.log_start {
                continue;
            }
            // Never the newest batch, nor into a transaction still open.
            let newest = h.last_offset() + 1 >= self.head.next_offset || h.last_offset() >= stable;
            let expired = max_age.is_some_and(|age| h.max_timestamp < now_ms.saturating_sub(age));
            let over = max_bytes.is_some_and(|max| bytes > max as u64);
            if newest || !(expired || over) {
                break;
            }
            bytes -= (h.size as u64).min(bytes);
            new_start = Some(h.last_offset() + 1);
        }
        Ok(new_start.map(|log_start| PartitionCommand::Truncate { log_start, bytes }))
    }

    /// Compaction (`cleanup.policy=compact`) over `raw`, the partition's stored batches from
    /// its log start: every record whose key appears again later is dropped; keyless records
    /// stay; the newest batch is left alone (it is where producers append). Batches that lose
    /// records are rewritten uncompressed under the offset of their first kept record, offsets
    /// kept (so they become sparse, as in Kafka). `None` when nothing would change.
    pub fn compaction(&self, raw: &[u8]) -> Result<Option<PartitionCommand>, ApplyError> {
        use kafka_protocol::records::{
            Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
        };
        // Transactional and control batches are left as they are (an aborted record must not
        // supersede a committed one, and markers are what read_committed consumers rely on),
        // and so is everything from the last stable offset on.
        let stable = self.last_stable_offset();
        let mut decoded = Vec::new();
        // The first batch left untouched that way: the log start never moves past it.
        let mut untouched: Option<i64> = None;
        for (h, bytes) in batch::iter(raw) {
            if h.last_offset() >= stable {
                untouched.get_or_insert(h.base_offset);
                break;
            }
            if h.is_transactional() || h.is_control() {
                untouched.get_or_insert(h.base_offset);
                continue;
            }
            let mut b = bytes::Bytes::copy_from_slice(bytes);
            let set = RecordBatchDecoder::decode(&mut b)
                .map_err(|e| ApplyError(format!("batch at {}: {e:#}", h.base_offset)))?;
            decoded.push((h, set.records));
        }
        let Some(newest) = decoded.len().checked_sub(1) else {
            return Ok(None);
        };
        let mut latest: HashMap<bytes::Bytes, i64> = HashMap::new();
        for (_, recs) in &decoded {
            for r in recs {
                if let Some(k) = &r.key {
                    latest.insert(k.clone(), r.offset);
                }
            }
        }
        let mut bytes = self.head.bytes;
        let (mut remove, mut rewrite) = (Vec::new(), Vec::new());
        let mut first_left = None;
        for (i, (h, recs)) in decoded.into_iter().enumerate() {
            let before = recs.len();
            let mut kept: Vec<_> = recs
                .into_iter()
                .filter(|r| i == newest || r.key.as_ref().is_none_or(|k| latest.get(k) == Some(&r.offset)))
                .collect();
            if kept.len() == before {
                first_left.get_or_insert(h.base_offset);
                continue;
            }
            remove.push(h.base_offset);
            bytes -= (h.size as u64).min(bytes);
            let Some(first) = kept.first().map(|r| r.offset) else {
                continue;
            };
            first_left.get_or_insert(first);
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
            .map_err(|e| ApplyError(format!("re-encoding a compacted batch: {e:#}")))?;
            bytes += out.len() as u64;
            rewrite.push(out.to_vec());
        }
        if remove.is_empty() {
            return Ok(None);
        }
        // The log start moves past batches that compaction emptied entirely.
        let log_start = first_left
            .into_iter()
            .chain(untouched)
            .min()
            .unwrap_or(self.head.next_offset)
            .max(self.head.log_start);
        Ok(Some(PartitionCommand::Compact {
            remove,
            rewrite,
            log_start,
            bytes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::tests::make_batch;

    fn produce(p: &mut Partition, records: Vec<u8>) -> Result<i64, Code> {
        let prepared = p.prepare(&records)?;
        if let Some(cmd) = &prepared.command {
            p.apply(cmd).unwrap();
        }
        Ok(prepared.base_offset)
    }

    #[test]
    fn offsets_are_dense_from_the_head() {
        let mut p = Partition::default();
        assert_eq!(produce(&mut p, make_batch(3, -1, -1, -1, 10)), Ok(0));
        assert_eq!(produce(&mut p, make_batch(2, -1, -1, -1, 20)), Ok(3));
        assert_eq!(p.head.next_offset, 5);
        assert_eq!(produce(&mut p, vec![1, 2, 3]), Err(Code::CorruptMessage));
    }

    #[test]
    fn idempotent_producer_dedups_orders_and_fences() {
        let mut p = Partition::default();
        let pid = 1000;
        assert_eq!(produce(&mut p, make_batch(3, pid, 0, 0, 1)), Ok(0));
        // A retry of the same batch: the original offset, nothing logged.
        let dup = p.prepare(&make_batch(3, pid, 0, 0, 1)).unwrap();
        assert_eq!((dup.command, dup.base_offset), (None, 0));
        assert_eq!(produce(&mut p, make_batch(2, pid, 0, 3, 1)), Ok(3));
        assert_eq!(
            produce(&mut p, make_batch(1, pid, 0, 9, 1)),
            Err(Code::OutOfOrderSequenceNumber)
        );
        assert_eq!(
            produce(&mut p, make_batch(1, pid, 0, 1, 1)),
            Err(Code::DuplicateSequenceNumber)
        );
        // A new epoch starts at sequence 0 and fences the old one.
        assert_eq!(produce(&mut p, make_batch(1, pid, 1, 0, 1)), Ok(5));
        assert_eq!(
            produce(&mut p, make_batch(1, pid, 0, 5, 1)),
            Err(Code::InvalidProducerEpoch)
        );
        // A producer id unknown on this partition must start at 0.
        assert_eq!(
            produce(&mut p, make_batch(1, pid + 1, 0, 7, 1)),
            Err(Code::OutOfOrderSequenceNumber)
        );
    }

    /// Regression: a record set whose third batch was refused left its first two batches in
    /// the write set at offsets the partition head never took, so the next produce reused
    /// those offsets and readers saw overlapping batches.
    #[test]
    fn a_refused_record_set_logs_nothing() {
        let mut p = Partition::default();
        let mut set = make_batch(1, -1, -1, -1, 1);
        set.extend(make_batch(1, -1, -1, -1, 2));
        // A batch whose offset span its record count cannot back: refused.
        let mut sparse = make_batch(2, -1, -1, -1, 3);
        sparse[23..27].copy_from_slice(&5i32.to_be_bytes());
        let crc = crc32c::crc32c(&sparse[21..]);
        sparse[17..21].copy_from_slice(&crc.to_be_bytes());
        set.extend(sparse);
        assert_eq!(p.prepare(&set), Err(Code::InvalidRecord));
        let mut set = make_batch(2, 7, 0, 0, 4);
        set.extend(make_batch(1, 7, 0, 7, 5)); // a sequence gap: refused
        assert_eq!(p.prepare(&set), Err(Code::OutOfOrderSequenceNumber));
        assert_eq!(p, Partition::default(), "prepare changes nothing");
        assert_eq!(produce(&mut p, make_batch(3, -1, -1, -1, 6)), Ok(0));
        // The producer's refused batch left no state: it starts again at sequence 0.
        assert_eq!(produce(&mut p, make_batch(1, 7, 0, 0, 7)), Ok(3));
    }

    #[test]
    fn a_record_set_mixing_a_duplicate_and_new_batches_logs_only_the_new() {
        let mut p = Partition::default();
        assert_eq!(produce(&mut p, make_batch(2, 5, 0, 0, 1)), Ok(0));
        let mut set = make_batch(2, 5, 0, 0, 1);
        set.extend(make_batch(1, 5, 0, 2, 1));
        let prepared = p.prepare(&set).unwrap();
        assert_eq!(
            prepared.base_offset, 0,
            "answered with the duplicate's original offset"
        );
        let Some(PartitionCommand::Append { batches }) = &prepared.command else {
            panic!("expected an append: {prepared:?}");
        };
        assert_eq!(batches.len(), 1);
        assert_eq!(batch::header(&batches[0]).unwrap().base_offset, 2);
    }

    #[test]
    fn apply_refuses_a_gap_and_changes_nothing() {
        let mut p = Partition::default();
        produce(&mut p, make_batch(2, -1, -1, -1, 1)).unwrap();
        let mut b = make_batch(1, -1, -1, -1, 1);
        batch::set_base_offset(&mut b, 7);
        let before = p.clone();
        assert!(p.apply(&PartitionCommand::Append { batches: vec![b] }).is_err());
        assert_eq!(p, before);
    }

    #[test]
    fn the_tip_and_the_applied_state_agree() {
        // The leader decides against its tip; a follower applies the same commands.
        let mut leader = Partition::default();
        let mut follower = Partition::default();
        for (n, pid, seq) in [(2, 9, 0), (1, -1, -1), (3, 9, 2), (1, 9, 5)] {
            let prepared = leader.prepare(&make_batch(n, pid, 0, seq, 1)).unwrap();
            let cmd = prepared.command.unwrap();
            leader.apply(&cmd).unwrap();
            follower.apply(&cmd).unwrap();
        }
        assert_eq!(leader, follower);
        assert_eq!(follower.head.next_offset, 7);
        assert_eq!(follower.producers[&9].batches.len(), 3);
    }

    fn headers(p: &Partition, batches: &[Vec<u8>]) -> Vec<Result<BatchHeader, ()>> {
        let _ = p;
        batches.iter().map(|b| Ok(batch::header(b).unwrap())).collect()
    }

    #[test]
    fn retention_drops_old_batches_but_never_the_newest() {
        let mut p = Partition::default();
        let mut stored = Vec::new();
        for ts in [100, 200, 5_000, 9_000] {
            let prepared = p.prepare(&make_batch(2, -1, -1, -1, ts)).unwrap();
            let cmd = prepared.command.unwrap();
            p.apply(&cmd).unwrap();
            if let PartitionCommand::Append { batches } = cmd {
                stored.extend(batches);
            }
        }
        let config = TopicConfig {
            retention_ms: Some(1_000),
            ..TopicConfig::default()
        };
        let cut = p
            .retention(&config, 5_500, headers(&p, &stored))
            .unwrap()
            .unwrap();
        let one = stored[0].len() as u64;
        assert_eq!(
            cut,
            PartitionCommand::Truncate {
                log_start: 4,
                bytes: 2 * one
            }
        );
        p.apply(&cut).unwrap();
        let cut = p
            .retention(&config, 1_000_000, headers(&p, &stored))
            .unwrap()
            .unwrap();
        p.apply(&cut).unwrap();
        assert_eq!(
            (p.head.log_start, p.head.next_offset, p.head.bytes),
            (6, 8, one),
            "everything but the newest batch"
        );
        assert_eq!(
            p.retention(&TopicConfig::default(), 1 << 40, headers(&p, &stored)),
            Ok(None)
        );
    }

    #[test]
    fn retention_by_bytes() {
        let mut p = Partition::default();
        let mut stored = Vec::new();
        for _ in 0..5 {
            let cmd = p.prepare(&make_batch(1, -1, -1, -1, 0)).unwrap().command.unwrap();
            p.apply(&cmd).unwrap();
            if let PartitionCommand::Append { batches } = cmd {
                stored.extend(batches);
            }
        }
        let one = stored[0].len() as i64;
        let config = TopicConfig {
            retention_bytes: Some(one * 2),
            ..TopicConfig::default()
        };
        let cut = p.retention(&config, 0, headers(&p, &stored)).unwrap().unwrap();
        p.apply(&cut).unwrap();
        assert_eq!(p.head.log_start, 3);
    }

    #[test]
    fn delete_records_moves_the_log_start_inside_a_batch_and_counts_the_bytes_left() {
        let mut p = Partition::default();
        let mut stored = Vec::new();
        for n in [3, 3, 2] {
            let cmd = p.prepare(&make_batch(n, -1, -1, -1, 0)).unwrap().command.unwrap();
            p.apply(&cmd).unwrap();
            if let PartitionCommand::Append { batches } = cmd {
                stored.extend(batches);
            }
        }
        // Offsets 0..3, 3..6, 6..8.
        let size = |i: usize| stored[i].len() as u64;
        assert_eq!(
            p.delete_records_to(9),
            Err(Code::OffsetOutOfRange),
            "past the end"
        );
        assert_eq!(p.delete_records_to(-2), Err(Code::OffsetOutOfRange));
        assert_eq!(p.delete_records_to(-1), Ok(8), "-1 is the high watermark");
        let cut = p.cut_to(4, headers(&p, &stored)).unwrap().unwrap();
        assert_eq!(
            cut,
            PartitionCommand::Truncate {
                log_start: 4,
                bytes: size(1) + size(2)
            },
            "the first batch goes; the one holding 4 stays"
        );
        p.apply(&cut).unwrap();
        assert_eq!(
            p.delete_records_to(2),
            Ok(4),
            "below the log start: nothing moves"
        );
        assert_eq!(p.cut_to(4, headers(&p, &stored)), Ok(None));
        let cut = p.cut_to(8, headers(&p, &stored)).unwrap().unwrap();
        p.apply(&cut).unwrap();
        assert_eq!((p.head.log_start, p.head.next_offset, p.head.bytes), (8, 8, 0));
        // Appends go on from the end.
        let cmd = p.prepare(&make_batch(1, -1, -1, -1, 0)).unwrap();
        assert_eq!(cmd.base_offset, 8);
    }

    /// A transactional batch of `n` records from producer `pid`.
    fn txn_batch(n: i32, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
        let mut b = make_batch(n, pid, epoch, seq, 0);
        b[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    fn append(p: &mut Partition, records: &[u8]) -> i64 {
        let prepared = p.prepare(records).unwrap();
        p.apply(&prepared.command.unwrap()).unwrap();
        prepared.base_offset
    }

    fn end(p: &mut Partition, pid: i64, epoch: i16, commit: bool) -> i64 {
        let cmd = p.prepare_marker(pid, epoch, commit, 0, 77).unwrap().unwrap();
        let at = p.head.next_offset;
        p.apply(&cmd).unwrap();
        at
    }

    #[test]
    fn transactions_hold_the_last_stable_offset_and_aborts_are_indexed() {
        let mut p = Partition::default();
        append(&mut p, &make_batch(2, -1, -1, -1, 0)); // 0..2, no transaction
        assert_eq!(p.last_stable_offset(), 2);
        let a = append(&mut p, &txn_batch(2, 7, 0, 0)); // 2..4, producer 7
        let b = append(&mut p, &txn_batch(1, 8, 0, 0)); // 4, producer 8
        append(&mut p, &txn_batch(1, 7, 0, 2)); // 5, producer 7 again
        assert_eq!((a, b), (2, 4));
        assert_eq!(p.last_stable_offset(), 2, "held at the oldest open transaction");
        assert_eq!(p.txns.open, BTreeMap::from([(7, 2), (8, 4)]));

        let marker = end(&mut p, 7, 0, false);
        assert_eq!(marker, 6);
        assert_eq!(p.last_stable_offset(), 4, "producer 8's is still open");
        assert_eq!(p.txns.aborted, vec![(7, 2, 6)]);
        assert_eq!(p.aborted_between(0, 3), vec![(7, 2)]);
        assert_eq!(p.aborted_between(7, 10), vec![], "past the marker");
        end(&mut p, 8, 0, true);
        assert_eq!(p.last_stable_offset(), p.head.next_offset);
        assert_eq!(p.txns.aborted.len(), 1, "a commit is not indexed");
        assert_eq!(
            p.prepare_marker(8, 0, true, 0, 1),
            Ok(None),
            "no transaction open: nothing to mark"
        );

        // The producer's sequence goes on after a marker; a fenced epoch's marker is refused.
        append(&mut p, &txn_batch(1, 7, 0, 3));
        assert_eq!(p.prepare_marker(7, 1, false, 0, 1).map(|c| c.is_some()), Ok(true));
        let bumped = p.prepare_marker(7, 1, false, 0, 1).unwrap().unwrap();
        p.apply(&bumped).unwrap();
        assert_eq!(
            p.producers[&7].epoch, 1,
            "the abort marker of a bumped epoch fences the old one"
        );
        assert_eq!(p.prepare(&txn_batch(1, 7, 0, 4)), Err(Code::InvalidProducerEpoch));
        assert_eq!(
            p.prepare_marker(7, 0, true, 0, 1),
            Err(Code::InvalidProducerEpoch)
        );

        // Retention past an abort marker forgets it.
        let to = p.head.next_offset;
        p.apply(&PartitionCommand::Truncate {
            log_start: to,
            bytes: 0,
        })
        .unwrap();
        assert!(p.txns.aborted.is_empty());
        // A producer may not send markers itself.
        let mut forged = crate::batch::marker(9, 0, true, 0, 1);
        forged[21..23].copy_from_slice(&0x30i16.to_be_bytes());
        assert_eq!(p.prepare(&forged), Err(Code::InvalidRecord));
    }

    #[test]
    fn compaction_leaves_transactions_alone() {
        use crate::batch::tests::keyed_batch;
        use kafka_protocol::records::Compression;
        let mut p = Partition::default();
        let mut stored: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        let mut put = |p: &mut Partition, b: Vec<u8>| {
            let prepared = p.prepare(&b).unwrap();
            if let Some(PartitionCommand::Append { batches }) = &prepared.command {
                for b in batches {
                    stored.insert(batch::header(b).unwrap().base_offset, b.clone());
                }
            }
            p.apply(&prepared.command.unwrap()).unwrap();
        };
        put(&mut p, keyed_batch(&[(Some("a"), "a1")], Compression::None)); // 0
                                                                           // An open transaction at 1 writes key a again.
        let mut t = keyed_batch(&[(Some("a"), "a2")], Compression::None);
        t[43..51].copy_from_slice(&5i64.to_be_bytes());
        t[51..53].copy_from_slice(&0i16.to_be_bytes());
        t[53..57].copy_from_slice(&0i32.to_be_bytes());
        t[21..23].copy_from_slice(&0x10i16.to_be_bytes());
        let crc = crc32c::crc32c(&t[21..]);
        t[17..21].copy_from_slice(&crc.to_be_bytes());
        put(&mut p, t);
        put(&mut p, keyed_batch(&[(Some("a"), "a3")], Compression::None)); // 2
        put(&mut p, keyed_batch(&[(Some("b"), "b1")], Compression::None)); // 3
        let raw: Vec<u8> = stored.values().flatten().copied().collect();
        assert_eq!(
            p.compaction(&raw).unwrap(),
            None,
            "nothing at or past the open transaction (offset 1) is compacted, and a1 is alone below it"
        );
        let cmd = p.prepare_marker(5, 0, false, 0, 1).unwrap().unwrap();
        p.apply(&cmd).unwrap();
        if let PartitionCommand::Append { batches } = &cmd {
            stored.insert(4, batches[0].clone());
        }
        let raw: Vec<u8> = stored.values().flatten().copied().collect();
        let Some(PartitionCommand::Compact {
            remove, log_start, ..
        }) = p.compaction(&raw).unwrap()
        else {
            panic!("a3 supersedes a1 once the transaction ended")
        };
        assert_eq!(
            remove,
            vec![0],
            "only a1 goes; the aborted a2 and the marker stay"
        );
        assert_eq!(log_start, 1, "the log start stops at the transactional batch");
    }

    #[test]
    fn compaction_keeps_the_latest_record_per_key() {
        use crate::batch::tests::{keyed_batch, values};
        use kafka_protocol::records::Compression;
        let mut p = Partition::default();
        let mut stored: BTreeMap<i64, Vec<u8>> = BTreeMap::new();
        for set in [
            keyed_batch(
                &[(Some("a"), "a1"), (Some("b"), "b1"), (None, "n1")],
                Compression::Lz4,
            ),
            keyed_batch(&[(Some("a"), "a2")], Compression::None),
            keyed_batch(&[(Some("b"), "b2"), (Some("a"), "a3")], Compression::None),
        ] {
            let cmd = p.prepare(&set).unwrap().command.unwrap();
            p.apply(&cmd).unwrap();
            if let PartitionCommand::Append { batches } = cmd {
                for b in batches {
                    stored.insert(batch::header(&b).unwrap().base_offset, b);
                }
            }
        }
        let raw: Vec<u8> = stored.values().flatten().copied().collect();
        let cmd = p.compaction(&raw).unwrap().unwrap();
        p.apply(&cmd).unwrap();
        let PartitionCommand::Compact { remove, rewrite, .. } = &cmd else {
            panic!("{cmd:?}");
        };
        for r in remove {
            stored.remove(r);
        }
        for b in rewrite {
            stored.insert(batch::header(b).unwrap().base_offset, b.clone());
        }
        let raw: Vec<u8> = stored.values().flatten().copied().collect();
        assert_eq!(
            values(&raw),
            vec![
                (2, "n1".to_string()),
                (4, "b2".to_string()),
                (5, "a3".to_string())
            ]
        );
        assert_eq!((p.head.log_start, p.head.next_offset), (2, 6));
        let total: u64 = stored.values().map(|b| b.len() as u64).sum();
        assert_eq!(p.head.bytes, total, "the byte count follows the rewrite");
        assert_eq!(p.compaction(&raw), Ok(None), "compaction is idempotent");
    }
}
