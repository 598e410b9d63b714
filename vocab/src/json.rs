//! Readings as JSON, for the Kafka ecosystem: the shape the bridge sends when its
//! `value_format` is `json` or `registry` (then in Confluent's wire format: a zero byte, the
//! schema id as 4 big-endian bytes, the JSON), and the JSON Schema it registers for it.

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::wire::{Reading, ReadingRecord};

/// The JSON Schema of [`ReadingJson`], registered as `<telemetry topic>-value`.
pub const READING_SCHEMA: &str = r#"{"$schema":"http://json-schema.org/draft-07/schema#","title":"Reading","description":"One sensor reading, identified by device, boot and sequence number","type":"object","properties":{"device_id":{"type":"string"},"boot_id":{"type":"integer","minimum":0},"seq":{"type":"integer","minimum":0},"channel":{"type":"integer","minimum":0,"maximum":65535},"timestamp_ms":{"type":"integer","minimum":0},"value":{"type":"number"}},"required":["device_id","boot_id","seq","channel","timestamp_ms","value"],"additionalProperties":false}"#;

/// Confluent's wire format starts with this byte, then the schema id (4 bytes, big-endian).
pub const CONFLUENT_MAGIC: u8 = 0;

/// A reading as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingJson {
    /// The device.
    pub device_id: String,
    /// Its boot.
    pub boot_id: u32,
    /// The reading's sequence number within the boot.
    pub seq: u64,
    /// Its channel.
    pub channel: u16,
    /// When it was taken, ms.
    pub timestamp_ms: u64,
    /// The value.
    pub value: f32,
}

impl ReadingJson {
    /// The JSON form of device `device_id`'s reading `r`.
    pub fn new(device_id: &str, r: &ReadingRecord) -> Self {
        ReadingJson {
            device_id: device_id.into(),
            boot_id: r.boot_id,
            seq: r.seq,
            channel: r.reading.channel,
            timestamp_ms: r.reading.timestamp_ms,
            value: r.reading.value,
        }
    }

    /// The stored form.
    pub fn record(&self) -> ReadingRecord {
        ReadingRecord {
            boot_id: self.boot_id,
            seq: self.seq,
            reading: Reading {
                channel: self.channel,
                timestamp_ms: self.timestamp_ms,
                value: self.value,
            },
        }
    }
}

/// The JSON inside a value in any of the formats: Confluent's wire format (the schema id and
/// the JSON) or plain JSON (`None` for the id). `None` for anything else (postcard).
pub fn json_part(value: &[u8]) -> Option<(Option<u32>, &[u8])> {
    match value {
        [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => Some((Some(u32::from_be_bytes([*a, *b, *c, *d])), rest)),
        [b'{', ..] => Some((None, value)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_formats_are_told_apart() {
        assert_eq!(json_part(b"{\"a\":1}"), Some((None, &b"{\"a\":1}"[..])));
        assert_eq!(
            json_part(&[0, 0, 0, 1, 7, b'{', b'}']),
            Some((Some(263), &b"{}"[..]))
        );
        // A postcard value starts with its format version byte.
        assert_eq!(json_part(&[crate::wire::FORMAT_VERSION, 1, 2]), None);
        assert_eq!(json_part(&[0, 1]), None);
    }
}
