//! Records of a Fetch response, walked in place: batch headers, decompression, each record's
//! offset, timestamp, key, value and headers as slices of the batch, without an allocation per
//! record (a consumer's per-record cost is what bounds a monitor reading a million a second).
//!
//! The bytes come from a broker over the network: every length is checked, a batch that does
//! not read is an error for its partition (never a panic), a trailing partial batch (a fetch
//! cut at its byte limit) is simply where the walk stops, and decompression is bounded.
//!
//! Read-committed: batches of aborted transactions (the response's `aborted_transactions`)
//! are skipped, as are control batches (transaction markers).

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::batch::{self, BatchHeader, HEADER_LEN};

/// Most bytes one batch may decompress to.
pub const MAX_DECOMPRESSED: usize = 64 << 20;

/// Why records did not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordsError {
    /// A batch header or record that does not parse.
    #[error("corrupt records at offset {0}: {1}")]
    Corrupt(i64, &'static str),
    /// A compression codec this reader does not know.
    #[error("batch at offset {0}: unknown compression codec {1}")]
    Codec(i64, i16),
    /// Decompression failed or exceeded [`MAX_DECOMPRESSED`].
    #[error("batch at offset {0}: {1}")]
    Decompress(i64, String),
}

/// One record, borrowed from its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms since the Unix epoch).
    pub timestamp_ms: i64,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: Option<&'a [u8]>,
    /// Its headers, still encoded: see [`RecordView::header`].
    headers: &'a [u8],
    header_count: i64,
}

impl<'a> RecordView<'a> {
    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        let b = self.headers;
        let mut at = 0;
        for _ in 0..self.header_count {
            let k = bytes_at(b, &mut at).ok()??;
            let v = bytes_at(b, &mut at).ok()?;
            if k == name.as_bytes() {
                return v;
            }
        }
        None
    }
}

/// What a walk over one partition's records found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Walked {
    /// The offset to fetch next: past the last whole batch (records below the fetch offset,
    /// skipped records and control batches included).
    pub next: Option<i64>,
    /// Records handed over.
    pub records: u64,
    /// Batches skipped as part of an aborted transaction.
    pub aborted_batches: u64,
}

/// Walks `records` (one partition's record set from a Fetch response), calling `f` for each
/// record at or past `fetch_offset` that is not part of an aborted transaction. `aborted` is
/// the response's `(producer id, first offset)` list. Records already handed to `f` stay
/// handed over when a later batch fails; `Walked::next` is not returned then, and the error
/// names the batch's offset.
pub fn walk(
    records: &[u8],
    fetch_offset: i64,
    aborted: &[(i64, i64)],
    scratch: &mut Vec<u8>,
    mut f: impl FnMut(RecordView<'_>),
) -> Result<Walked, (Walked, RecordsError)> {
    let mut out = Walked::default();
    // Aborted transactions by producer, in first-offset order; those whose first offset has
    // been reached are "aborting" until their abort marker.
    let mut pending: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for &(pid, first) in aborted {
        pending.entry(pid).or_default().push(first);
    }
    for v in pending.values_mut() {
        v.sort_unstable();
        v.reverse();
    }
    let mut aborting: HashSet<i64> = HashSet::new();
    let mut rest = records;
    while rest.len() >= HEADER_LEN {
        let declared = i32::from_be_bytes(rest[8..12].try_into().unwrap_or_default());
        if declared >= 0 && 12 + declared as usize > rest.len() {
            break; // a partial batch at the end of the fetch
        }
        let h = match batch::header(rest) {
            Ok(h) => h,
            Err(_) => {
                let base = i64::from_be_bytes(rest[0..8].try_into().unwrap_or_default());
                return Err((out, RecordsError::Corrupt(base, "batch header")));
            }
        };
        let (b, tail) = rest.split_at(h.size);
        rest = tail;
        let next = h.last_offset().saturating_add(1);
        if h.is_transactional() {
            if let Some(firsts) = pending.get_mut(&h.producer_id) {
                while firsts.last().is_some_and(|&first| first <= h.last_offset()) {
                    firsts.pop();
                    aborting.insert(h.producer_id);
                }
            }
        }
        if h.is_control() {
            if batch::marker_commits(b) == Some(false) {
                aborting.remove(&h.producer_id);
            }
            out.next = Some(next);
            continue;
        }
        if h.is_transactional() && aborting.contains(&h.producer_id) {
            out.aborted_batches += 1;
            out.next = Some(next);
            continue;
        }
        if h.last_offset() < fetch_offset {
            out.next = Some(next);
            continue;
        }
        let body = match decompress(&h, &b[HEADER_LEN..], scratch) {
            Ok(body) => body,
            Err(e) => return Err((out, e)),
        };
        if let Err(e) = each_record(&h, body, fetch_offset, &mut f, &mut out.records) {
            return Err((out, e));
        }
        out.next = Some(next);
    }
    Ok(out)
}

/// The offset after the last whole batch of `records` (where the next fetch starts), if
/// there is one whose header reads.
pub fn next_offset(records: &[u8]) -> Option<i64> {
    let mut rest = records;
    let mut next = None;
    while rest.len() >= HEADER_LEN {
        let declared = i32::from_be_bytes(rest[8..12].try_into().unwrap_or_default());
        if declared < 0 || 12 + declared as usize > rest.len() {
            break;
        }
        let Ok(h) = batch::header(rest) else { break };
        next = Some(h.last_offset().saturating_add(1));
        rest = &rest[h.size..];
    }
    next
}

/// The batch's records, decompressed into `scratch` if they are compressed.
fn decompress<'s>(
    h: &BatchHeader,
    data: &'s [u8],
    scratch: &'s mut Vec<u8>,
) -> Result<&'s [u8], RecordsError> {
    let codec = h.attributes & 0x07;
    let at = h.base_offset;
    let err = |e: String| RecordsError::Decompress(at, e);
    let limit = MAX_DECOMPRESSED as u64 + 1;
    scratch.clear();
    match codec {
        0 => return Ok(data),
        1 => {
            flate2::read::GzDecoder::new(data)
                .take(limit)
                .read_to_end(scratch)
                .map_err(|e| err(format!("gzip: {e}")))?;
        }
        2 => snappy(data, scratch).map_err(err)?,
        3 => {
            lz4::Decoder::new(data)
                .map_err(|e| err(format!("lz4: {e}")))?
                .take(limit)
                .read_to_end(scratch)
                .map_err(|e| err(format!("lz4: {e}")))?;
        }
        4 => {
            zstd::stream::read::Decoder::with_buffer(data)
                .map_err(|e| err(format!("zstd: {e}")))?
                .take(limit)
                .read_to_end(scratch)
                .map_err(|e| err(format!("zstd: {e}")))?;
        }
        c => return Err(RecordsError::Codec(at, c)),
    }
    if scratch.len() > MAX_DECOMPRESSED {
        return Err(err(format!("decompresses past {MAX_DECOMPRESSED} bytes")));
    }
    Ok(scratch)
}

/// Kafka's snappy: the Java clients' xerial framing (a magic header, then length-prefixed
/// blocks), or one raw block (librdkafka writes either).
fn snappy(data: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    const XERIAL: &[u8] = b"\x82SNAPPY\x00";
    let block = |b: &[u8], out: &mut Vec<u8>| -> Result<(), String> {
        let n = snap::raw::decompress_len(b).map_err(|e| format!("snappy: {e}"))?;
        if out.len() + n > MAX_DECOMPRESSED {
            return Err(format!("decompresses past {MAX_DECOMPRESSED} bytes"));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(b, &mut out[start..])
            .map_err(|e| format!("snappy: {e}"))?;
        Ok(())
    };
    if data.len() >= 16 && &data[..8] == XERIAL {
        let mut rest = &data[16..];
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err("snappy: a truncated block length".into());
            }
            let n = u32::from_be_bytes(rest[..4].try_into().unwrap_or_default()) as usize;
            if rest.len() < 4 + n {
                return Err("snappy: a truncated block".into());
            }
            block(&rest[4..4 + n], out)?;
            rest = &rest[4 + n..];
        }
        Ok(())
    } else {
        block(data, out)
    }
}

/// Calls `f` for each record of a batch at or past `from`, counting them in `n`.
fn each_record(
    h: &BatchHeader,
    body: &[u8],
    from: i64,
    f: &mut impl FnMut(RecordView<'_>),
    n: &mut u64,
) -> Result<(), RecordsError> {
    let corrupt = |what| RecordsError::Corrupt(h.base_offset, what);
    let log_append_time = h.attributes & 0x08 != 0;
    let mut at = 0;
    for _ in 0..h.record_count {
        let len = varint(body, &mut at).ok_or(corrupt("record length"))?;
        let start = at;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= body.len())
            .ok_or(corrupt("record length past the batch"))?;
        let r = &body[..end];
        at += 1; // attributes
        let ts_delta = varint(r, &mut at).ok_or(corrupt("timestamp delta"))?;
        let off_delta = varint(r, &mut at).ok_or(corrupt("offset delta"))?;
        let key = bytes_at(r, &mut at).map_err(corrupt)?;
        let value = bytes_at(r, &mut at).map_err(corrupt)?;
        let header_count = varint(r, &mut at).ok_or(corrupt("header count"))?;
        if header_count < 0 {
            return Err(corrupt("negative header count"));
        }
        let headers = r.get(at..).ok_or(corrupt("record past its length"))?;
        at = end;
        let offset = h.base_offset.saturating_add(off_delta);
        if offset < from {
            continue;
        }
        *n += 1;
        f(RecordView {
            offset,
            timestamp_ms: if log_append_time {
                h.max_timestamp
            } else {
                h.base_timestamp.saturating_add(ts_delta)
            },
            key,
            value,
            headers,
            header_count,
        });
    }
    Ok(())
}

/// A zigzag varint-length-prefixed byte string (-1: null).
fn bytes_at<'b>(b: &'b [u8], at: &mut usize) -> Result<Option<&'b [u8]>, &'static str> {
    let len = varint(b, at).ok_or("a length")?;
    if len < 0 {
        return Ok(None);
    }
    let end = at
        .checked_add(len as usize)
        .filter(|&e| e <= b.len())
        .ok_or("bytes past the record")?;
    let s = &b[*at..end];
    *at = end;
    Ok(Some(s))
}

fn varint(b: &[u8], at: &mut usize) -> Option<i64> {
    batch::varint(b, at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::indexmap::IndexMap;
    use kafka_protocol::protocol::StrBytes;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn record(offset: i64, key: &str, value: &[u8], edge: Option<&str>) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(StrBytes::from_static_str("other"), Some(Bytes::from_static(b"x")));
        if let Some(e) = edge {
            headers.insert(
                StrBytes::from_string("edge".into()),
                Some(Bytes::from(e.as_bytes().to_vec())),
            );
        }
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            // offset - sequence constant: the encoder keeps the records in one batch.
            sequence: offset as i32,
            timestamp: 1_000 + offset,
            key: Some(Bytes::from(key.as_bytes().to_vec())),
            value: Some(Bytes::from(value.to_vec())),
            headers,
        }
    }

    fn encode(records: &[Record], compression: Compression) -> Vec<u8> {
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    /// Offset, timestamp, key, value, the `edge` header.
    type Seen = (i64, i64, String, Vec<u8>, Option<String>);

    fn collect(bytes: &[u8], from: i64) -> (Walked, Vec<Seen>) {
        let mut scratch = Vec::new();
        let mut seen = Vec::new();
        let w = walk(bytes, from, &[], &mut scratch, |r| {
            seen.push((
                r.offset,
                r.timestamp_ms,
                String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                r.value.unwrap().to_vec(),
                r.header("edge").map(|e| String::from_utf8(e.to_vec()).unwrap()),
            ))
        })
        .unwrap();
        (w, seen)
    }

    #[test]
    fn every_codec_reads_back_what_the_encoder_wrote() {
        let recs: Vec<Record> = (10..20)
            .map(|o| {
                record(
                    o,
                    &format!("dev-{o}"),
                    &[o as u8; 30],
                    (o % 2 == 0).then_some("gw/0/5"),
                )
            })
            .collect();
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let (w, seen) = collect(&encode(&recs, c), 0);
            assert_eq!(w.records, 10, "{c:?}");
            assert_eq!(w.next, Some(20), "{c:?}");
            for (r, s) in recs.iter().zip(&seen) {
                assert_eq!(s.0, r.offset);
                assert_eq!(s.1, r.timestamp);
                assert_eq!(s.2.as_bytes(), &r.key.as_ref().unwrap()[..]);
                assert_eq!(&s.3[..], &r.value.as_ref().unwrap()[..]);
                assert_eq!(s.4.as_deref(), (r.offset % 2 == 0).then_some("gw/0/5"));
            }
        }
    }

    #[test]
    fn records_below_the_fetch_offset_are_skipped_and_a_partial_batch_ends_the_walk() {
        let a: Vec<Record> = (0..5).map(|o| record(o, "k", b"v", None)).collect();
        let b: Vec<Record> = (5..9).map(|o| record(o, "k", b"v", None)).collect();
        let mut bytes = encode(&a, Compression::Lz4);
        bytes.extend(encode(&b, Compression::None));
        let (w, seen) = collect(&bytes, 3);
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![3, 4, 5, 6, 7, 8]
        );
        assert_eq!(w.next, Some(9));
        // Cut inside the second batch: the first is read, the walk stops before the second.
        let cut = &bytes[..bytes.len() - 7];
        let (w, seen) = collect(cut, 0);
        assert_eq!((w.next, seen.len()), (Some(5), 5));
        // Nothing whole at all.
        let (w, seen) = collect(&bytes[..40], 0);
        assert_eq!((w.next, seen.len()), (None, 0));
    }

    #[test]
    fn aborted_transactions_and_markers_are_skipped() {
        let txn = |offsets: std::ops::Range<i64>, pid: i64| {
            let recs: Vec<Record> = offsets
                .map(|o| {
                    let mut r = record(o, "k", b"v", None);
                    r.transactional = true;
                    r.producer_id = pid;
                    r.producer_epoch = 0;
                    r.sequence = o as i32;
                    r
                })
                .collect();
            encode(&recs, Compression::None)
        };
        let marker = |at: i64, pid: i64, commit: bool| {
            let mut m = batch::marker(pid, 0, commit, 0, 1);
            batch::set_base_offset(&mut m, at);
            m
        };
        // Producer 7 aborts offsets 0..3 (marker at 3); producer 8 commits 4..6 (marker at 6);
        // producer 7 commits 7..9 (marker at 9).
        let mut bytes = txn(0..3, 7);
        bytes.extend(marker(3, 7, false));
        bytes.extend(txn(4..6, 8));
        bytes.extend(marker(6, 8, true));
        bytes.extend(txn(7..9, 7));
        bytes.extend(marker(9, 7, true));
        let mut scratch = Vec::new();
        let mut seen = Vec::new();
        let w = walk(&bytes, 0, &[(7, 0)], &mut scratch, |r| seen.push(r.offset)).unwrap();
        assert_eq!(seen, vec![4, 5, 7, 8]);
        assert_eq!((w.next, w.aborted_batches), (Some(10), 1));
        // Read uncommitted (no aborted list): every data record.
        seen.clear();
        walk(&bytes, 0, &[], &mut scratch, |r| seen.push(r.offset)).unwrap();
        assert_eq!(seen, vec![0, 1, 2, 4, 5, 7, 8]);
    }

    #[test]
    fn damaged_bytes_are_an_error_never_a_panic() {
        let recs: Vec<Record> = (0..4)
            .map(|o| record(o, "key", b"value", Some("g/1/2")))
            .collect();
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let good = encode(&recs, c);
            for i in 0..good.len() {
                for bit in [0x01u8, 0x80] {
                    let mut b = good.clone();
                    b[i] ^= bit;
                    let mut scratch = Vec::new();
                    let _ = walk(&b, 0, &[(1, 0)], &mut scratch, |r| {
                        let _ = r.header("edge");
                    });
                }
            }
        }
        let mut b = encode(&recs, Compression::None);
        b[16] = 1; // magic
        let mut scratch = Vec::new();
        let e = walk(&b, 0, &[], &mut scratch, |_| {}).unwrap_err();
        assert!(matches!(e.1, RecordsError::Corrupt(0, _)), "{e:?}");
    }
}
