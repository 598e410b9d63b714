//! The wire format: the one vocabulary every component decodes.
//!
//! # Byte format
//! Every message is one format-version byte ([`FORMAT_VERSION`]) followed by the
//! [postcard](https://docs.rs/postcard) encoding of the value. postcard writes integers as
//! LEB128 varints (zig-zag for signed), `f32` as 4 little-endian bytes, strings and sequences as
//! a varint length followed by the items, `bool` as one byte.
//!
//! | message | MQTT topic | max encoded size |
//! |---|---|---|
//! | [`Batch`] | `sensors/<device>` (QoS 1) | [`MAX_BATCH_ENCODED`] |
//! | [`DeviceStatus`] | `devices/<device>/status` (QoS 1, retained; also the last will) | [`MAX_STATUS_ENCODED`] |
//! | [`Ack`] | `devices/<device>/ack` | [`MAX_ACK_ENCODED`] |
//! | [`ReadingRecord`] | value of a `telemetry` log record (key = device id) | [`MAX_READING_RECORD_ENCODED`] |
//!
//! # Decoding untrusted bytes
//! [`decode`] never panics and never allocates: strings and sequences land in fixed-capacity
//! `heapless` containers, and a declared length larger than the capacity is an error before any
//! item beyond the capacity is read. Trailing bytes are an error, so one payload is one value.

use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

use crate::Error;

/// Leading byte of every encoded message. Bumped on any incompatible change.
pub const FORMAT_VERSION: u8 = 1;
/// Longest device id, in bytes.
pub const MAX_DEVICE_ID: usize = 32;
/// Longest firmware version string, in bytes.
pub const MAX_FIRMWARE_VERSION: usize = 16;
/// Most readings in one [`Batch`].
pub const MAX_BATCH_READINGS: usize = 64;

/// Upper bound of one encoded [`Reading`]: channel (u16 varint, 3) + timestamp (u64 varint, 10)
/// + value (f32, 4).
pub const MAX_READING_ENCODED: usize = 3 + 10 + 4;
/// Upper bound of an encoded [`Batch`] holding `n` readings.
pub const fn max_batch_encoded(n: usize) -> usize {
    // version + device id (len 1 + bytes) + boot_id (5) + first_seq (10) + low_seq (10)
    // + readings length (1: n <= 127) + readings
    1 + 1 + MAX_DEVICE_ID + 5 + 10 + 10 + 1 + n * MAX_READING_ENCODED
}
/// Upper bound of an encoded [`Batch`]: 1,146 bytes.
pub const MAX_BATCH_ENCODED: usize = max_batch_encoded(MAX_BATCH_READINGS);
/// Upper bound of an encoded [`DeviceStatus`]: 147 bytes.
pub const MAX_STATUS_ENCODED: usize =
    1 + (1 + MAX_DEVICE_ID) + 5 + 1 + (1 + MAX_FIRMWARE_VERSION) + 5 + 10 + 6 * 10;
/// Upper bound of an encoded [`Ack`]: 16 bytes.
pub const MAX_ACK_ENCODED: usize = 1 + 5 + 10;

/// One sample of one sensor channel.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reading {
    /// Which sensor or channel on the device produced the value.
    pub channel: u16,
    /// Milliseconds since the Unix epoch when the device knows the time, else since boot.
    pub timestamp_ms: u64,
    /// The measured value, in the channel's unit.
    pub value: f32,
}

/// Readings published together, numbered `first_seq, first_seq + 1, ...` within one boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The device's id; must equal the `<device>` level of the topic.
    pub device_id: String<MAX_DEVICE_ID>,
    /// Changes whenever the device's sequence counter restarts without persisted state.
    pub boot_id: u32,
    /// Sequence number of `readings[0]`.
    pub first_seq: u64,
    /// Lowest sequence number the device still holds. Everything below it was either acked
    /// or dropped by the device for overflow, so a receiver that has not seen those readings
    /// knows they are gone (a device-side drop), not in flight.
    pub low_seq: u64,
    /// Consecutive readings.
    pub readings: Vec<Reading, MAX_BATCH_READINGS>,
}

impl Batch {
    /// Sequence number of the last reading, or `None` for an empty batch.
    pub fn last_seq(&self) -> Option<u64> {
        let n = self.readings.len() as u64;
        (n > 0).then(|| self.first_seq + n - 1)
    }
}

/// Serializes exactly like a [`Batch`], from borrowed parts (a ring buffer's two slices), so a
/// device encodes straight from its buffer without copying readings onto the stack.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    /// See [`Batch::device_id`].
    pub device_id: &'a str,
    /// See [`Batch::boot_id`].
    pub boot_id: u32,
    /// See [`Batch::first_seq`].
    pub first_seq: u64,
    /// See [`Batch::low_seq`].
    pub low_seq: u64,
    /// The readings, as up to two contiguous runs.
    pub readings: (&'a [Reading], &'a [Reading]),
}

struct Chain<'a>(&'a [Reading], &'a [Reading]);

impl Serialize for Chain<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(Some(self.0.len() + self.1.len()))?;
        for r in self.0.iter().chain(self.1) {
            seq.serialize_element(r)?;
        }
        seq.end()
    }
}

impl Serialize for BatchRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Batch", 5)?;
        st.serialize_field("device_id", self.device_id)?;
        st.serialize_field("boot_id", &self.boot_id)?;
        st.serialize_field("first_seq", &self.first_seq)?;
        st.serialize_field("low_seq", &self.low_seq)?;
        st.serialize_field("readings", &Chain(self.readings.0, self.readings.1))?;
        st.end()
    }
}

/// Running totals a device reports about itself. All counters only grow within a boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Counters {
    /// Readings sampled (including any later dropped).
    pub generated: u64,
    /// Readings lost because the buffer was full (oldest dropped, or newest refused).
    pub dropped_overflow: u64,
    /// Readings published, counting each first send once.
    pub sent: u64,
    /// Readings published again (after an ack timeout or a reconnect).
    pub resent: u64,
    /// Readings acknowledged as durable by the gateway.
    pub acked: u64,
    /// Successful MQTT connections after the first.
    pub reconnects: u64,
}

/// The device's birth record (retained) and, with `online == false`, its last will.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// The device's id.
    pub device_id: String<MAX_DEVICE_ID>,
    /// Current boot.
    pub boot_id: u32,
    /// `false` in the last will: the broker publishes it when the device vanishes.
    pub online: bool,
    /// Firmware version string.
    pub firmware_version: String<MAX_FIRMWARE_VERSION>,
    /// How many readings the device can hold unacknowledged.
    pub buffer_capacity: u32,
    /// Milliseconds since boot when this status was made.
    pub uptime_ms: u64,
    /// Running totals.
    pub counters: Counters,
}

/// The gateway's application acknowledgement: every reading of `boot_id` with
/// `seq <= up_to_seq` is durable and may be forgotten by the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The boot the acknowledgement is for; acks for another boot are ignored.
    pub boot_id: u32,
    /// Highest acknowledged sequence number (cumulative).
    pub up_to_seq: u64,
}

/// One reading as stored: the value of a `telemetry` record at the edge and in the cloud. The
/// record's key is the device id; together they carry the reading's identity
/// `(device_id, boot_id, seq)` end to end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ReadingRecord {
    /// Boot the reading was taken in.
    pub boot_id: u32,
    /// Its sequence number within the boot.
    pub seq: u64,
    /// The reading.
    pub reading: Reading,
}

/// Upper bound of an encoded [`ReadingRecord`]: 33 bytes.
pub const MAX_READING_RECORD_ENCODED: usize = 1 + 5 + 10 + MAX_READING_ENCODED;

/// Whether `id` may be used as a device id: 1..=32 bytes of `[A-Za-z0-9_.-]`, so it is a
/// single, wildcard-free MQTT topic level.
pub fn is_valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_DEVICE_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Encodes `value` with its version byte into `buf`, returning the used prefix.
pub fn encode<'b, T: Serialize + ?Sized>(value: &T, buf: &'b mut [u8]) -> Result<&'b mut [u8], Error> {
    let (first, rest) = buf.split_first_mut().ok_or(Error::BufferTooSmall)?;
    *first = FORMAT_VERSION;
    let n = postcard::to_slice(value, rest)
        .map_err(|_| Error::BufferTooSmall)?
        .len();
    Ok(&mut buf[..n + 1])
}

/// Decodes one versioned value that must fill `bytes` exactly.
pub fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, Error> {
    let (&version, body) = bytes.split_first().ok_or(Error::Truncated)?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| match e {
        postcard::Error::DeserializeUnexpectedEnd => Error::Truncated,
        _ => Error::Malformed,
    })?;
    if !rest.is_empty() {
        return Err(Error::TrailingBytes);
    }
    Ok(value)
}

/// Decodes a [`Batch`] and checks what the type alone cannot: a valid device id and a
/// `low_seq` not above `first_seq`, and no sequence overflow.
pub fn decode_batch(bytes: &[u8]) -> Result<Batch, Error> {
    let b: Batch = decode(bytes)?;
    if !is_valid_device_id(&b.device_id) {
        return Err(Error::InvalidDeviceId);
    }
    if b.low_seq > b.first_seq || b.first_seq.checked_add(b.readings.len() as u64).is_none() {
        return Err(Error::Malformed);
    }
    Ok(b)
}

/// Decodes a [`DeviceStatus`] and checks its device id.
pub fn decode_status(bytes: &[u8]) -> Result<DeviceStatus, Error> {
    let s: DeviceStatus = decode(bytes)?;
    if !is_valid_device_id(&s.device_id) {
        return Err(Error::InvalidDeviceId);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reading() -> impl Strategy<Value = Reading> {
        (any::<u16>(), any::<u64>(), any::<f32>()).prop_map(|(channel, timestamp_ms, value)| Reading {
            channel,
            timestamp_ms,
            value,
        })
    }

    fn device_id() -> impl Strategy<Value = String<MAX_DEVICE_ID>> {
        "[A-Za-z0-9_.-]{1,32}".prop_map(|s| String::try_from(s.as_str()).unwrap())
    }

    fn batch() -> impl Strategy<Value = Batch> {
        (
            device_id(),
            any::<u32>(),
            0u64..u64::MAX / 2,
            0u64..1000,
            proptest::collection::vec(reading(), 0..=MAX_BATCH_READINGS),
        )
            .prop_map(|(device_id, boot_id, first_seq, back, rs)| Batch {
                device_id,
                boot_id,
                first_seq,
                low_seq: first_seq.saturating_sub(back),
                readings: Vec::from_slice(&rs).unwrap(),
            })
    }

    fn status() -> impl Strategy<Value = DeviceStatus> {
        (
            device_id(),
            any::<u32>(),
            any::<bool>(),
            "[ -~]{0,16}",
            any::<u32>(),
            any::<u64>(),
            any::<[u64; 6]>(),
        )
            .prop_map(|(device_id, boot_id, online, fw, cap, up, c)| DeviceStatus {
                device_id,
                boot_id,
                online,
                firmware_version: String::try_from(fw.as_str()).unwrap(),
                buffer_capacity: cap,
                uptime_ms: up,
                counters: Counters {
                    generated: c[0],
                    dropped_overflow: c[1],
                    sent: c[2],
                    resent: c[3],
                    acked: c[4],
                    reconnects: c[5],
                },
            })
    }

    /// f32 NaN != NaN, so compare readings bit for bit.
    fn same_readings(a: &[Reading], b: &[Reading]) -> bool {
        a.len() == b.len()
            && a.iter().zip(b).all(|(x, y)| {
                x.channel == y.channel
                    && x.timestamp_ms == y.timestamp_ms
                    && x.value.to_bits() == y.value.to_bits()
            })
    }

    proptest! {
        #[test]
        fn batch_round_trips_within_max(b in batch()) {
            let mut buf = [0u8; MAX_BATCH_ENCODED];
            let bytes = encode(&b, &mut buf).unwrap();
            prop_assert!(bytes.len() <= max_batch_encoded(b.readings.len()));
            let back = decode_batch(bytes).unwrap();
            prop_assert_eq!(&back.device_id, &b.device_id);
            prop_assert_eq!((back.boot_id, back.first_seq, back.low_seq), (b.boot_id, b.first_seq, b.low_seq));
            prop_assert!(same_readings(&back.readings, &b.readings));
        }

        #[test]
        fn batch_ref_encodes_like_batch(b in batch(), split in 0usize..=MAX_BATCH_READINGS) {
            let split = split.min(b.readings.len());
            let r = BatchRef {
                device_id: &b.device_id,
                boot_id: b.boot_id,
                first_seq: b.first_seq,
                low_seq: b.low_seq,
                readings: b.readings.split_at(split),
            };
            let mut x = [0u8; MAX_BATCH_ENCODED];
            let mut y = [0u8; MAX_BATCH_ENCODED];
            prop_assert_eq!(&*encode(&b, &mut x).unwrap(), &*encode(&r, &mut y).unwrap());
        }

        #[test]
        fn status_round_trips_within_max(s in status()) {
            let mut buf = [0u8; MAX_STATUS_ENCODED];
            let bytes = encode(&s, &mut buf).unwrap();
            prop_assert_eq!(decode_status(bytes).unwrap(), s);
        }

        #[test]
        fn ack_round_trips_within_max(boot_id in any::<u32>(), up_to_seq in any::<u64>()) {
            let a = Ack { boot_id, up_to_seq };
            let mut buf = [0u8; MAX_ACK_ENCODED];
            let bytes = encode(&a, &mut buf).unwrap();
            prop_assert_eq!(decode::<Ack>(bytes).unwrap(), a);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_batch(&bytes);
            let _ = decode_status(&bytes);
            let _ = decode::<Ack>(&bytes);
        }

        #[test]
        fn every_truncation_of_a_batch_is_an_error(b in batch()) {
            let mut buf = [0u8; MAX_BATCH_ENCODED];
            let bytes = encode(&b, &mut buf).unwrap();
            for cut in 0..bytes.len() {
                prop_assert!(decode_batch(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn maximal_values_fit_the_documented_bounds() {
        let r = Reading {
            channel: u16::MAX,
            timestamp_ms: u64::MAX,
            value: f32::MAX,
        };
        let id = String::try_from("x".repeat(MAX_DEVICE_ID).as_str()).unwrap();
        let b = Batch {
            device_id: id.clone(),
            boot_id: u32::MAX,
            first_seq: u64::MAX - MAX_BATCH_READINGS as u64,
            low_seq: u64::MAX - MAX_BATCH_READINGS as u64,
            readings: Vec::from_slice(&[r; MAX_BATCH_READINGS]).unwrap(),
        };
        let mut buf = [0u8; MAX_BATCH_ENCODED];
        assert_eq!(encode(&b, &mut buf).unwrap().len(), MAX_BATCH_ENCODED);
        let s = DeviceStatus {
            device_id: id,
            boot_id: u32::MAX,
            online: true,
            firmware_version: String::try_from("v".repeat(16).as_str()).unwrap(),
            buffer_capacity: u32::MAX,
            uptime_ms: u64::MAX,
            counters: Counters {
                generated: u64::MAX,
                dropped_overflow: u64::MAX,
                sent: u64::MAX,
                resent: u64::MAX,
                acked: u64::MAX,
                reconnects: u64::MAX,
            },
        };
        let mut buf = [0u8; MAX_STATUS_ENCODED];
        assert_eq!(encode(&s, &mut buf).unwrap().len(), MAX_STATUS_ENCODED);
        let a = Ack {
            boot_id: u32::MAX,
            up_to_seq: u64::MAX,
        };
        let mut buf = [0u8; MAX_ACK_ENCODED];
        assert_eq!(encode(&a, &mut buf).unwrap().len(), MAX_ACK_ENCODED);
    }

    #[test]
    fn rejects_wrong_version_trailing_bytes_and_oversized_lengths() {
        let a = Ack {
            boot_id: 7,
            up_to_seq: 9,
        };
        let mut buf = [0u8; 32];
        let n = encode(&a, &mut buf).unwrap().len();
        buf[0] = 99;
        assert_eq!(decode::<Ack>(&buf[..n]), Err(Error::UnsupportedVersion(99)));
        buf[0] = FORMAT_VERSION;
        assert_eq!(decode::<Ack>(&buf[..n + 1]), Err(Error::TrailingBytes));
        // A batch that claims 100 readings (more than MAX_BATCH_READINGS) with the bytes present.
        let mut big = std::vec![FORMAT_VERSION, 1, b'd', 1, 0, 0, 100];
        for _ in 0..100 {
            big.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        assert_eq!(decode_batch(&big), Err(Error::Malformed));
        // A device id that is not a valid topic level.
        let bad = Batch {
            device_id: String::try_from("a/+").unwrap(),
            boot_id: 1,
            first_seq: 0,
            low_seq: 0,
            readings: Vec::new(),
        };
        let mut buf = [0u8; 128];
        let bytes = encode(&bad, &mut buf).unwrap();
        assert_eq!(decode_batch(bytes), Err(Error::InvalidDeviceId));
    }
}
