//! The byte format of a chunk: the records of one append to one partition.
//!
//! ```text
//! chunk   := body crc:u32le
//! body    := version:u8(=2) min_ts:i64le max_ts:i64le count:varint last_delta:varint record*
//! record  := offset_delta:varint ts_delta:varint key value headers
//! key     := 0 | (len+1):varint bytes          (0 = no key)
//! value   := len:varint bytes
//! headers := count:varint (name_len:varint name value_len:varint value)*
//! ```
//! `offset_delta` is the record's offset minus the chunk's base offset (its key in the store);
//! deltas rise strictly (compaction leaves holes). `ts_delta` is the timestamp minus `min_ts`.
//! The header (`count`, `last_delta`, `min_ts`, `max_ts`) lets retention and stats work without
//! decoding records.
//!
//! `crc` is the CRC-32C of the chunk's base offset (8 bytes LE: its key in the store) followed
//! by `body`, so a flipped bit in the value *or* in the key it is stored under is caught. Every
//! function here checks it before reading anything else, and answers [`LogError::Corrupt`]
//! (never wrong records) when it does not match. Version 1 chunks (layout 1 of the store) had
//! no `crc`; [`upgrade_v1`] seals one when the store upgrades its file. Decoding still checks
//! every length against the bytes left, and caps counts by the bytes left, so even a chunk
//! whose checksum happens to match cannot make the decoder allocate wildly.

use super::{LogError, NewRecord, Record, RecordRef};

const VERSION: u8 = 2;
const V1: u8 = 1;
const HEADER_MIN: usize = 1 + 8 + 8 + 1 + 1;
const CRC: usize = 4;

fn crc(base: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&base.to_le_bytes()), body)
}

/// The body of a chunk stored at `base`, once its checksum matched.
fn body(base: u64, bytes: &[u8]) -> Result<&[u8], LogError> {
    if bytes.len() < HEADER_MIN + CRC {
        return Err(corrupt("shorter than a chunk"));
    }
    let (body, tail) = bytes.split_at(bytes.len() - CRC);
    let stored = u32::from_le_bytes(tail.try_into().map_err(|_| corrupt("crc"))?);
    if crc(base, body) != stored {
        return Err(corrupt("checksum mismatch"));
    }
    Ok(body)
}

/// Checks a chunk stored at `base` without decoding its records: its checksum, header and
/// every record's lengths. What `log verify` runs over every chunk.
pub fn verify(base: u64, bytes: &[u8]) -> Result<ChunkHeader, LogError> {
    let h = header(base, bytes)?;
    let mut n = 0u64;
    let end = scan_keys(base, bytes, 0, u64::MAX, &mut |_, _| n += 1)?;
    if n != h.count || end.is_some_and(|e| e != base.saturating_add(h.last_delta) + 1) {
        return Err(corrupt("header disagrees with the records"));
    }
    Ok(h)
}

/// A version 1 chunk (no checksum) stored at `base` as the same chunk in version 2: the store's
/// upgrade from layout 1. The records are decoded first, so a chunk already damaged is refused
/// rather than sealed as good.
pub fn upgrade_v1(base: u64, v1: &[u8]) -> Result<Vec<u8>, LogError> {
    if v1.first() != Some(&V1) {
        return Err(corrupt("not a version 1 chunk"));
    }
    let mut out = Vec::with_capacity(v1.len() + CRC);
    out.push(VERSION);
    out.extend_from_slice(&v1[1..]);
    seal(base, &mut out);
    verify(base, &out).map(|_| out)
}

fn seal(base: u64, body: &mut Vec<u8>) {
    let c = crc(base, body);
    body.extend_from_slice(&c.to_le_bytes());
}

/// Chunk facts readable without decoding records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Records in the chunk.
    pub count: u64,
    /// Offset of the last record minus the base offset.
    pub last_delta: u64,
    /// Oldest timestamp.
    pub min_ts: i64,
    /// Newest timestamp.
    pub max_ts: i64,
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, LogError> {
        // Most varints here (offset deltas, lengths, header counts) are one byte.
        if let [b, rest @ ..] = self.0 {
            if *b < 0x80 {
                self.0 = rest;
                return Ok(u64::from(*b));
            }
        }
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = self.0.split_first().ok_or_else(|| corrupt("varint truncated"))?;
            self.0 = rest;
            if i == 9 && b > 1 {
                return Err(corrupt("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(corrupt("varint too long"))
    }
    fn bytes(&mut self, n: u64) -> Result<&'a [u8], LogError> {
        let n = usize::try_from(n).map_err(|_| corrupt("length"))?;
        if n > self.0.len() {
            return Err(corrupt("length past end"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn i64(&mut self) -> Result<i64, LogError> {
        let b = self.bytes(8)?;
        Ok(i64::from_le_bytes(b.try_into().map_err(|_| corrupt("i64"))?))
    }
}

fn corrupt(what: &str) -> LogError {
    LogError::Corrupt(format!("chunk: {what}"))
}

/// Encodes records at `base + deltas[i]` (deltas strictly rising) as the chunk stored at `base`.
pub fn encode<'a, I>(base: u64, records: I) -> Vec<u8>
where
    I: IntoIterator<Item = (u64, &'a NewRecord)> + Clone,
{
    let (mut min_ts, mut max_ts, mut count, mut last) = (i64::MAX, i64::MIN, 0u64, 0u64);
    let mut size = HEADER_MIN + 16 + CRC;
    for (d, r) in records.clone() {
        min_ts = min_ts.min(r.timestamp_ms);
        max_ts = max_ts.max(r.timestamp_ms);
        count += 1;
        last = d;
        size += 24 + r.value.len() + r.key.as_ref().map_or(0, Vec::len);
    }
    if count == 0 {
        (min_ts, max_ts) = (0, 0);
    }
    let mut out = Vec::with_capacity(size);
    out.push(VERSION);
    out.extend_from_slice(&min_ts.to_le_bytes());
    out.extend_from_slice(&max_ts.to_le_bytes());
    put_varint(&mut out, count);
    put_varint(&mut out, last);
    for (d, r) in records {
        put_varint(&mut out, d);
        put_varint(&mut out, r.timestamp_ms.wrapping_sub(min_ts) as u64);
        match &r.key {
            None => put_varint(&mut out, 0),
            Some(k) => {
                put_varint(&mut out, k.len() as u64 + 1);
                out.extend_from_slice(k);
            }
        }
        put_varint(&mut out, r.value.len() as u64);
        out.extend_from_slice(&r.value);
        put_varint(&mut out, r.headers.len() as u64);
        for (name, v) in &r.headers {
            put_varint(&mut out, name.len() as u64);
            out.extend_from_slice(name.as_bytes());
            put_varint(&mut out, v.len() as u64);
            out.extend_from_slice(v);
        }
    }
    seal(base, &mut out);
    out
}

/// Reads the header of the chunk stored at `base`.
pub fn header(base: u64, bytes: &[u8]) -> Result<ChunkHeader, LogError> {
    read_header(&mut Reader(body(base, bytes)?))
}

fn read_header(r: &mut Reader<'_>) -> Result<ChunkHeader, LogError> {
    if r.bytes(1)?[0] != VERSION {
        return Err(corrupt("unknown version"));
    }
    let min_ts = r.i64()?;
    let max_ts = r.i64()?;
    let count = r.varint()?;
    let last_delta = r.varint()?;
    Ok(ChunkHeader {
        count,
        last_delta,
        min_ts,
        max_ts,
    })
}

/// Decodes the records of a chunk stored at `base`, skipping those below `from`, until `out`
/// holds `max` records: [`visit`], copying.
pub fn decode(base: u64, bytes: &[u8], from: u64, out: &mut Vec<Record>, max: usize) -> Result<(), LogError> {
    visit(base, bytes, from, &mut |r| {
        if out.len() >= max {
            return false;
        }
        out.push(r.to_owned());
        out.len() < max
    })?;
    Ok(())
}

/// Calls `f` with each record of a chunk stored at `base` from offset `from` on, borrowed from
/// the chunk's bytes (no copies), until `f` returns `false`. Returns whether `f` asked to stop.
pub fn visit(
    base: u64,
    bytes: &[u8],
    from: u64,
    f: &mut dyn FnMut(&RecordRef<'_>) -> bool,
) -> Result<bool, LogError> {
    let mut r = Reader(body(base, bytes)?);
    let h = read_header(&mut r)?;
    if h.count > (r.0.len() as u64) / 4 + 1 {
        return Err(corrupt("count larger than the chunk"));
    }
    let mut headers = Vec::new();
    for _ in 0..h.count {
        let offset = base
            .checked_add(r.varint()?)
            .ok_or_else(|| corrupt("offset overflow"))?;
        let ts = h.min_ts.wrapping_add(r.varint()? as i64);
        let key = match r.varint()? {
            0 => None,
            n => Some(r.bytes(n - 1)?),
        };
        let value_len = r.varint()?;
        let value = r.bytes(value_len)?;
        let nh = r.varint()?;
        if nh > r.0.len() as u64 / 2 {
            return Err(corrupt("header count larger than the chunk"));
        }
        headers.clear();
        for _ in 0..nh {
            let nl = r.varint()?;
            let name = std::str::from_utf8(r.bytes(nl)?).map_err(|_| corrupt("header name utf8"))?;
            let vl = r.varint()?;
            headers.push((name, r.bytes(vl)?));
        }
        if offset >= from
            && !f(&RecordRef {
                offset,
                timestamp_ms: ts,
                key,
                value,
                headers: &headers,
            })
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Calls `f(offset, key)` for the records of a chunk stored at `base` with offsets in
/// `from..to`, without copying values or headers (the bridge's backlog scan). Returns the
/// offset after the last record visited, or `None` if the chunk holds nothing in range.
pub fn scan_keys(
    base: u64,
    bytes: &[u8],
    from: u64,
    to: u64,
    f: &mut dyn FnMut(u64, Option<&[u8]>),
) -> Result<Option<u64>, LogError> {
    let mut r = Reader(body(base, bytes)?);
    let h = read_header(&mut r)?;
    if h.count > (r.0.len() as u64) / 4 + 1 {
        return Err(corrupt("count larger than the chunk"));
    }
    let mut last = None;
    for _ in 0..h.count {
        let offset = base
            .checked_add(r.varint()?)
            .ok_or_else(|| corrupt("offset overflow"))?;
        if offset >= to {
            break;
        }
        r.varint()?; // timestamp
        let key = match r.varint()? {
            0 => None,
            n => Some(r.bytes(n - 1)?),
        };
        let value_len = r.varint()?;
        r.bytes(value_len)?;
        let nh = r.varint()?;
        if nh > r.0.len() as u64 / 2 {
            return Err(corrupt("header count larger than the chunk"));
        }
        for _ in 0..nh {
            let nl = r.varint()?;
            r.bytes(nl)?;
            let vl = r.varint()?;
            r.bytes(vl)?;
        }
        if offset >= from {
            f(offset, key);
            last = Some(offset + 1);
        }
    }
    Ok(last)
}

/// Offset of the first record in a chunk stored at `base` (compaction may have removed the
/// chunk's first records, so the base alone is not enough). `None` for an empty chunk.
pub fn first_offset(base: u64, bytes: &[u8]) -> Result<Option<u64>, LogError> {
    let mut one = Vec::with_capacity(1);
    decode(base, bytes, 0, &mut one, 1)?;
    Ok(one.first().map(|r| r.offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec() -> impl Strategy<Value = NewRecord> {
        (
            any::<i64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
            proptest::collection::vec(any::<u8>(), 0..32),
            proptest::collection::vec(("[a-z]{0,6}", proptest::collection::vec(any::<u8>(), 0..6)), 0..3),
        )
            .prop_map(|(timestamp_ms, key, value, headers)| NewRecord {
                timestamp_ms,
                key,
                value,
                headers,
            })
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(rec(), 0..20), base in 0u64..1_000_000, skip in 0usize..4) {
            let with_offsets: Vec<(u64, &NewRecord)> =
                records.iter().enumerate().map(|(i, r)| ((i * (skip + 1)) as u64, r)).collect();
            let bytes = encode(base, with_offsets.iter().copied());
            let h = header(base, &bytes).unwrap();
            prop_assert_eq!(verify(base, &bytes).unwrap(), h);
            prop_assert_eq!(h.count, records.len() as u64);
            let mut out = Vec::new();
            decode(base, &bytes, 0, &mut out, usize::MAX).unwrap();
            prop_assert_eq!(out.len(), records.len());
            for ((d, r), got) in with_offsets.iter().zip(&out) {
                prop_assert_eq!(got.offset, base + d);
                prop_assert_eq!(got.timestamp_ms, r.timestamp_ms);
                prop_assert_eq!(&got.key, &r.key);
                prop_assert_eq!(&got.value, &r.value);
                prop_assert_eq!(&got.headers, &r.headers);
            }
        }

        #[test]
        fn visit_agrees_with_decode(records in proptest::collection::vec(rec(), 0..20), from in 0u64..25, stop_after in 0usize..25) {
            let with_offsets: Vec<(u64, &NewRecord)> = records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
            let bytes = encode(0, with_offsets.iter().copied());
            let mut all = Vec::new();
            decode(0, &bytes, from, &mut all, usize::MAX).unwrap();
            let limit = stop_after.max(1);
            let mut got = Vec::new();
            let stopped = visit(0, &bytes, from, &mut |r| {
                got.push(r.to_owned());
                got.len() < limit
            }).unwrap();
            prop_assert_eq!(stopped, all.len() >= limit);
            all.truncate(limit);
            prop_assert_eq!(got, all);
        }

        #[test]
        fn scan_keys_agrees_with_decode(records in proptest::collection::vec(rec(), 0..20), from in 0u64..25, to in 0u64..25) {
            let with_offsets: Vec<(u64, &NewRecord)> = records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
            let bytes = encode(0, with_offsets.iter().copied());
            let mut all = Vec::new();
            decode(0, &bytes, from, &mut all, usize::MAX).unwrap();
            let want: Vec<(u64, Option<Vec<u8>>)> =
                all.into_iter().filter(|r| r.offset < to).map(|r| (r.offset, r.key)).collect();
            let mut got = Vec::new();
            scan_keys(0, &bytes, from, to, &mut |o, k| got.push((o, k.map(<[u8]>::to_vec)))).unwrap();
            prop_assert_eq!(got, want);
        }

        #[test]
        fn damaged_chunks_error_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = Vec::new();
            let _ = header(0, &bytes);
            let _ = verify(0, &bytes);
            let _ = upgrade_v1(0, &bytes);
            let _ = decode(0, &bytes, 0, &mut out, usize::MAX);
            let _ = scan_keys(0, &bytes, 0, u64::MAX, &mut |_, _| {});
        }

        /// CRC-32C catches every single-bit error: a flipped bit anywhere in a chunk, or in the
        /// base offset it is stored under, is an error, never other records.
        #[test]
        fn any_flipped_bit_is_refused(records in proptest::collection::vec(rec(), 1..8), base in 0u64..1_000, bit in any::<proptest::sample::Index>(), in_key in any::<bool>()) {
            let with_offsets: Vec<(u64, &NewRecord)> = records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
            let mut bytes = encode(base, with_offsets.iter().copied());
            let mut at = base;
            if in_key {
                at ^= 1 << bit.index(64);
            } else {
                let i = bit.index(bytes.len() * 8);
                bytes[i / 8] ^= 1 << (i % 8);
            }
            let mut out = Vec::new();
            prop_assert!(header(at, &bytes).is_err());
            prop_assert!(verify(at, &bytes).is_err());
            prop_assert!(decode(at, &bytes, 0, &mut out, usize::MAX).is_err());
            prop_assert!(out.is_empty(), "nothing is returned from a damaged chunk");
            let scanned = scan_keys(at, &bytes, 0, u64::MAX, &mut |_, _| ());
            prop_assert!(scanned.is_err());
        }

        #[test]
        fn a_version_1_chunk_upgrades_to_the_same_records(records in proptest::collection::vec(rec(), 0..8), base in 0u64..1_000) {
            let with_offsets: Vec<(u64, &NewRecord)> = records.iter().enumerate().map(|(i, r)| (i as u64, r)).collect();
            let v2 = encode(base, with_offsets.iter().copied());
            // Layout 1 wrote the same body with version 1 and no checksum.
            let mut v1 = v2[..v2.len() - CRC].to_vec();
            v1[0] = V1;
            prop_assert_eq!(upgrade_v1(base, &v1).unwrap(), v2);
            prop_assert!(header(base, &v1).is_err(), "an unsealed chunk is not read as a sealed one");
        }
    }
}
