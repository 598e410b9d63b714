//! The encodings of the store's rows, each sealed with a checksum.
//!
//! Every value is stored as `value ‖ crc` where `crc` is the CRC-32C of the row's key bytes
//! followed by `value`: a flipped bit in either is caught on read, and a row is never used
//! under another key. Chunks carry their own checksum ([`super::super::chunk`]), over their base
//! offset and their bytes, by the same rule.

use super::super::{LogError, PartitionStats};

pub use foundation::redb::{seal, unseal};

/// A row that failed its checksum or its decoding: what `verify` and the logs say.
pub fn damaged(what: impl std::fmt::Display) -> LogError {
    LogError::Corrupt(format!("{what}: checksum mismatch"))
}

/// The key bytes a partition row is sealed with.
pub fn part_key(id: u32, p: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&id.to_le_bytes());
    k[4..].copy_from_slice(&p.to_le_bytes());
    k
}

/// A partition row: first offset, next offset, records, bytes (8 bytes LE each), sealed.
pub fn part_encode(id: u32, p: u32, s: &PartitionStats) -> Vec<u8> {
    let mut b = [0u8; 32];
    b[0..8].copy_from_slice(&s.first_offset.to_le_bytes());
    b[8..16].copy_from_slice(&s.next_offset.to_le_bytes());
    b[16..24].copy_from_slice(&s.records.to_le_bytes());
    b[24..32].copy_from_slice(&s.bytes.to_le_bytes());
    seal(&part_key(id, p), &b)
}

/// The stats of a row written by [`part_encode`] or by layout 1 (`sealed == false`: 32 bytes,
/// no checksum).
pub fn part_decode(id: u32, p: u32, bytes: &[u8], sealed: bool) -> Result<PartitionStats, LogError> {
    let what = || format!("partition row (topic id {id}, partition {p})");
    let b = if sealed {
        unseal(&part_key(id, p), bytes).ok_or_else(|| damaged(what()))?
    } else {
        bytes
    };
    let b: &[u8; 32] = b
        .try_into()
        .map_err(|_| LogError::Corrupt(format!("{}: size", what())))?;
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or_default());
    let s = PartitionStats {
        first_offset: u(0),
        next_offset: u(8),
        records: u(16),
        bytes: u(24),
    };
    if s.first_offset > s.next_offset || s.records > s.next_offset - s.first_offset {
        return Err(LogError::Corrupt(format!("{}: offsets disagree", what())));
    }
    Ok(s)
}

/// The key bytes a stream row is sealed with: the device, a 0xff separator (never in UTF-8),
/// the boot.
pub fn stream_key(device: &str, boot: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(device.len() + 5);
    k.extend_from_slice(device.as_bytes());
    k.push(0xff);
    k.extend_from_slice(&boot.to_le_bytes());
    k
}

/// A stream row: the next expected sequence, sealed.
pub fn stream_encode(device: &str, boot: u32, next: u64) -> Vec<u8> {
    seal(&stream_key(device, boot), &next.to_le_bytes())
}

/// The next expected sequence of a stream row.
pub fn stream_decode(device: &str, boot: u32, bytes: &[u8]) -> Result<u64, LogError> {
    let what = || format!("stream row (device {device:?}, boot {boot})");
    let v = unseal(&stream_key(device, boot), bytes).ok_or_else(|| damaged(what()))?;
    Ok(u64::from_le_bytes(
        v.try_into()
            .map_err(|_| LogError::Corrupt(format!("{}: size", what())))?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn a_flipped_bit_in_key_or_value_is_caught(key in proptest::collection::vec(any::<u8>(), 0..16), value in proptest::collection::vec(any::<u8>(), 0..64), bit in any::<proptest::sample::Index>(), in_key in any::<bool>()) {
            let mut row = seal(&key, &value);
            prop_assert_eq!(unseal(&key, &row), Some(&value[..]));
            let mut key = key;
            if in_key && !key.is_empty() {
                let i = bit.index(key.len() * 8);
                key[i / 8] ^= 1 << (i % 8);
            } else {
                let i = bit.index(row.len() * 8);
                row[i / 8] ^= 1 << (i % 8);
            }
            prop_assert_eq!(unseal(&key, &row), None);
        }

        #[test]
        fn rows_round_trip(id in any::<u32>(), p in any::<u32>(), first in 0u64..1000, len in 0u64..1000, device in "[a-z0-9-]{0,12}", boot in any::<u32>(), next in any::<u64>()) {
            let s = PartitionStats { first_offset: first, next_offset: first + len, records: len / 2, bytes: len * 10 };
            prop_assert_eq!(part_decode(id, p, &part_encode(id, p, &s), true).unwrap(), s);
            prop_assert!(part_decode(id, p.wrapping_add(1), &part_encode(id, p, &s), true).is_err(), "not under another key");
            prop_assert_eq!(stream_decode(&device, boot, &stream_encode(&device, boot, next)).unwrap(), next);
            prop_assert!(stream_decode(&device, boot.wrapping_add(1), &stream_encode(&device, boot, next)).is_err());
        }
    }
}
