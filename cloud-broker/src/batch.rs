//! Kafka record batches (magic 2) as opaque bytes: header parsing, validation, offset rewrite.
//!
//! The broker never decompresses a producer's records. It reads the fixed 61-byte header of
//! each batch, checks the CRC, and rewrites the base offset in place (the CRC covers the bytes
//! from `attributes` on, so the offset — and the partition leader epoch — can change freely).
//!
//! ```text
//! offset  size  field
//!      0     8  baseOffset
//!      8     4  batchLength          (bytes after this field)
//!     12     4  partitionLeaderEpoch
//!     16     1  magic (= 2)
//!     17     4  crc (CRC-32C of bytes 21..)
//!     21     2  attributes           (bits 0-2 compression, 3 timestamp type, 4 transactional, 5 control)
//!     23     4  lastOffsetDelta
//!     27     8  baseTimestamp
//!     35     8  maxTimestamp
//!     43     8  producerId
//!     51     2  producerEpoch
//!     53     4  baseSequence
//!     57     4  recordCount
//!     61        records...
//! ```

/// Size of the batch header.
pub const HEADER_LEN: usize = 61;
/// Smallest valid `batchLength`: everything after the length field up to the records.
const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - 12) as i32;

/// Why a record set was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Truncated or inconsistent lengths.
    #[error("corrupt record batch: {0}")]
    Corrupt(&'static str),
    /// Not magic 2 (the only format modern clients produce).
    #[error("unsupported record batch magic {0}")]
    Magic(i8),
    /// CRC mismatch.
    #[error("record batch CRC mismatch")]
    Crc,
    /// A batch larger than the broker accepts.
    #[error("record batch of {0} bytes is too large")]
    TooLarge(usize),
}

/// The parsed header of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    /// Base offset as stored (after assignment) or as sent (usually 0).
    pub base_offset: i64,
    /// Total size of the batch in bytes.
    pub size: usize,
    /// Attributes.
    pub attributes: i16,
    /// Offset of the last record minus the base offset.
    pub last_offset_delta: i32,
    /// Timestamp of the first record.
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent producer id, or -1.
    pub producer_id: i64,
    /// Producer epoch, or -1.
    pub producer_epoch: i16,
    /// Sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Records in the batch.
    pub record_count: i32,
}

impl BatchHeader {
    /// Offsets the batch spans: `last_offset_delta + 1`.
    pub fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }
    /// Part of a transaction.
    pub fn is_transactional(&self) -> bool {
        self.attributes & 0x10 != 0
    }
    /// A control batch (transaction markers).
    pub fn is_control(&self) -> bool {
        self.attributes & 0x20 != 0
    }
    /// Sequence of the last record (wrapping as Kafka does).
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        ((i64::from(self.base_sequence) + i64::from(self.last_offset_delta)) % (i64::from(i32::MAX) + 1))
            as i32
    }
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().unwrap_or_default())
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().unwrap_or_default())
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().unwrap_or_default())
}

/// Parses the header of the batch at the start of `bytes` without checking the CRC.
pub fn header(bytes: &[u8]) -> Result<BatchHeader, BatchError> {
    if bytes.len() < HEADER_LEN {
        return Err(BatchError::Corrupt("shorter than a batch header"));
    }
    let batch_length = be_i32(bytes, 8);
    if batch_length < MIN_BATCH_LENGTH {
        return Err(BatchError::Corrupt("batch length too small"));
    }
    let size = 12 + batch_length as usize;
    if size > bytes.len() {
        return Err(BatchError::Corrupt("batch length past the end"));
    }
    let magic = bytes[16] as i8;
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let last_offset_delta = be_i32(bytes, 23);
    let record_count = be_i32(bytes, 57);
    if last_offset_delta < 0 || record_count < 0 || record_count > last_offset_delta.saturating_add(1) {
        return Err(BatchError::Corrupt("record count and offset delta disagree"));
    }
    Ok(BatchHeader {
        base_offset: be_i64(bytes, 0),
        size,
        attributes: be_i16(bytes, 21),
        last_offset_delta,
        base_timestamp: be_i64(bytes, 27),
        max_timestamp: be_i64(bytes, 35),
        producer_id: be_i64(bytes, 43),
        producer_epoch: be_i16(bytes, 51),
        base_sequence: be_i32(bytes, 53),
        record_count,
    })
}

/// Splits a produce request's record set into batches, checking lengths, magic and CRC.
/// An empty record set is an error (Kafka answers CORRUPT_MESSAGE / INVALID_RECORD).
pub fn split(mut bytes: &[u8], max_batch: usize) -> Result<Vec<(BatchHeader, &[u8])>, BatchError> {
    if bytes.is_empty() {
        return Err(BatchError::Corrupt("empty record set"));
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = header(bytes)?;
        if h.size > max_batch {
            return Err(BatchError::TooLarge(h.size));
        }
        let (batch, rest) = bytes.split_at(h.size);
        let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap_or_default());
        if crc32c::crc32c(&batch[21..]) != crc {
            return Err(BatchError::Crc);
        }
        out.push((h, batch));
        bytes = rest;
    }
    Ok(out)
}

/// Sets the base offset of a batch in place.
pub fn set_base_offset(batch: &mut [u8], base: i64) {
    batch[0..8].copy_from_slice(&base.to_be_bytes());
}

/// Checks batches read back from storage: the length of the prefix of whole batches whose
/// CRC-32C still holds, and the base offset of the first that does not, if any (`Some(None)`
/// when not even its header reads). The store does not checksum its pages (redb returns a
/// flipped bit in a data page as data): the batch's own CRC, checked on produce, is what tells
/// damaged bytes from records.
pub fn check_stored(bytes: &[u8]) -> (usize, Option<Option<i64>>) {
    let mut good = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let Ok(h) = header(rest) else {
            return (good, Some(None));
        };
        let b = &rest[..h.size];
        let crc = u32::from_be_bytes(b[17..21].try_into().unwrap_or_default());
        if crc32c::crc32c(&b[21..]) != crc {
            return (good, Some(Some(h.base_offset)));
        }
        good += h.size;
        rest = &rest[h.size..];
    }
    (good, None)
}

/// A transaction marker as Kafka writes it: a control batch (transactional and control
/// attributes, no sequence) of one record whose key is `(version 0, type)` (0 abort,
/// 1 commit) and whose value is `(version 0, coordinator epoch)`. Base offset 0.
pub fn marker(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
) -> Vec<u8> {
    // The record: length, attributes, timestamp delta, offset delta, key length, key, value
    // length, value, header count (lengths and deltas as zigzag varints, all below 64).
    let mut record = vec![0u8, 0, 0, 4 << 1, 0, 0, 0, u8::from(commit), 6 << 1, 0, 0];
    record.extend_from_slice(&coordinator_epoch.to_be_bytes());
    record.push(0);
    let mut b = Vec::with_capacity(HEADER_LEN + 1 + record.len());
    b.extend_from_slice(&0i64.to_be_bytes());
    b.extend_from_slice(&((HEADER_LEN - 12 + 1 + record.len()) as i32).to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.push(2);
    b.extend_from_slice(&0u32.to_be_bytes());
    b.extend_from_slice(&0x30i16.to_be_bytes());
    b.extend_from_slice(&0i32.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&timestamp.to_be_bytes());
    b.extend_from_slice(&producer_id.to_be_bytes());
    b.extend_from_slice(&producer_epoch.to_be_bytes());
    b.extend_from_slice(&(-1i32).to_be_bytes());
    b.extend_from_slice(&1i32.to_be_bytes());
    b.push((record.len() as u8) << 1);
    b.extend_from_slice(&record);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Reads a zigzag varint at `at`, moving `at` past it.
pub(crate) fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((v >> 1) as i64 ^ -((v & 1) as i64));
        }
    }
    None
}

/// Whether the control batch `b` (uncompressed, as markers are) commits (`Some(true)`) or
/// aborts (`Some(false)`) its transaction; `None` for anything else.
pub fn marker_commits(b: &[u8]) -> Option<bool> {
    let h = header(b).ok()?;
    if !h.is_control() || h.record_count < 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    varint(b, &mut at)?; // record length
    at += 1; // attributes
    varint(b, &mut at)?; // timestamp delta
    varint(b, &mut at)?; // offset delta
    let key_len = varint(b, &mut at)?;
    if key_len < 4 {
        return None;
    }
    match i16::from_be_bytes(b.get(at + 2..at + 4)?.try_into().ok()?) {
        0 => Some(false),
        1 => Some(true),
        _ => None,
    }
}

/// Walks stored batches (already validated on the way in): yields each header and its bytes.
/// Stops at the first inconsistency instead of failing, since a reader cannot fix the log.
pub fn iter(mut bytes: &[u8]) -> impl Iterator<Item = (BatchHeader, &[u8])> {
    std::iter::from_fn(move || {
        let h = header(bytes).ok()?;
        let (b, rest) = bytes.split_at(h.size);
        bytes = rest;
        Some((h, b))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn markers_are_control_batches_kafka_clients_read() {
        use kafka_protocol::records::RecordBatchDecoder;
        for commit in [false, true] {
            let m = marker(42, 3, commit, 9, 1234);
            let h = header(&m).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence, h.record_count),
                (42, 3, -1, 1)
            );
            assert_eq!(split(&m, 1 << 20).unwrap().len(), 1, "length and CRC hold");
            assert_eq!(marker_commits(&m), Some(commit));
            let set = RecordBatchDecoder::decode(&mut bytes::Bytes::from(m)).unwrap();
            let r = &set.records[0];
            assert!(r.control && r.transactional);
            assert_eq!(r.key.as_deref(), Some(&[0u8, 0, 0, u8::from(commit)][..]));
            assert_eq!(r.value.as_deref(), Some(&[0u8, 0, 0, 0, 0, 9][..]));
            assert_eq!(r.timestamp, 1234);
        }
        assert_eq!(marker_commits(&make_batch(1, -1, -1, -1, 0)), None);
    }

    /// A valid batch of `n` records (uncompressed, records are opaque filler) for tests.
    pub fn make_batch(n: i32, pid: i64, epoch: i16, seq: i32, ts: i64) -> Vec<u8> {
        let records = vec![0u8; n as usize * 8];
        let mut b = Vec::with_capacity(HEADER_LEN + records.len());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - 12 + records.len()) as i32).to_be_bytes());
        b.extend_from_slice(&0i32.to_be_bytes());
        b.push(2);
        b.extend_from_slice(&0u32.to_be_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&(n - 1).to_be_bytes());
        b.extend_from_slice(&ts.to_be_bytes());
        b.extend_from_slice(&(ts + i64::from(n) - 1).to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&n.to_be_bytes());
        b.extend_from_slice(&records);
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// A batch of keyed records `(key, value)` (offsets and sequences from 0) for tests.
    pub fn keyed_batch(
        recs: &[(Option<&str>, &str)],
        compression: kafka_protocol::records::Compression,
    ) -> Vec<u8> {
        use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
        let recs: Vec<Record> = recs
            .iter()
            .enumerate()
            .map(|(i, (k, v))| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i as i64,
                sequence: i as i32,
                timestamp: 1,
                key: k.map(|k| bytes::Bytes::copy_from_slice(k.as_bytes())),
                value: Some(bytes::Bytes::copy_from_slice(v.as_bytes())),
                headers: Default::default(),
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
        .expect("encodes");
        out.to_vec()
    }

    /// `(offset, value)` of every record in stored batches, in order.
    pub fn values(raw: &[u8]) -> Vec<(i64, String)> {
        let mut raw = bytes::Bytes::copy_from_slice(raw);
        let mut got = Vec::new();
        while !raw.is_empty() {
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut raw).expect("decodes");
            for r in set.records {
                let v = r
                    .value
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .unwrap_or_default();
                got.push((r.offset, v));
            }
        }
        got
    }

    #[test]
    fn stored_batches_are_checked_up_to_the_first_damaged_one() {
        let (a, b) = (make_batch(2, -1, -1, -1, 1), make_batch(3, -1, -1, -1, 1));
        let all = [a.clone(), b.clone()].concat();
        assert_eq!(check_stored(&all), (all.len(), None));
        let mut bad = all.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x10;
        assert_eq!(check_stored(&bad), (a.len(), Some(Some(0))));
        let mut bad = all.clone();
        bad[30] ^= 0x01;
        assert_eq!(check_stored(&bad), (0, Some(Some(0))));
        assert_eq!(check_stored(&all[..a.len() + 5]), (a.len(), Some(None)));
    }

    #[test]
    fn split_validates_and_offsets_rewrite_keeps_crc() {
        let mut set = make_batch(3, 7, 0, 10, 1000);
        set.extend(make_batch(2, 7, 0, 13, 2000));
        let parts = split(&set, 1 << 20).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((parts[0].0.record_count, parts[0].0.last_sequence()), (3, 12));
        let mut first = parts[0].1.to_vec();
        set_base_offset(&mut first, 42);
        let again = split(&first, 1 << 20).unwrap();
        assert_eq!(again[0].0.base_offset, 42);
        let mut bad = set.clone();
        bad[70] ^= 1;
        assert_eq!(split(&bad, 1 << 20), Err(BatchError::Crc));
        assert!(matches!(
            split(&set[..set.len() - 1], 1 << 20),
            Err(BatchError::Corrupt(_))
        ));
        assert_eq!(split(&set, 60), Err(BatchError::TooLarge(85)));
        assert!(split(&[], 100).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = split(&bytes, 1 << 20);
            let _ = iter(&bytes).count();
        }
    }
}
