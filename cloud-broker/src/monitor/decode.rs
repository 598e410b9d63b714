//! Record values as JSON for people and scripts (`cloud-broker consume --format json`):
//! readings and device status decoded from the device wire format, heartbeats and other JSON
//! as they are, text as text, anything else as hex.

use serde_json::{json, Value};
use vocab::wire::{DeviceStatus, ReadingRecord};

/// `payload` of a record of `topic`, as JSON. The topic says what to try first (a status
/// could in rare cases also decode as a reading); a value that is neither is shown as it is.
pub fn value(topic: &str, payload: Option<&[u8]>) -> Value {
    let Some(p) = payload else {
        return Value::Null;
    };
    let status = || vocab::wire::decode_status(p).ok().map(|s| status_json(&s));
    let reading = || {
        vocab::wire::decode::<ReadingRecord>(p)
            .ok()
            .map(|r| reading_json(&r))
    };
    let wire = if topic == vocab::topics::DEVICE_STATUS {
        status().or_else(reading)
    } else {
        reading().or_else(status)
    };
    if let Some(v) = wire {
        return v;
    }
    // JSON, or Confluent's wire format around it (the schema id is left out).
    if let Some(v) = vocab::json::json_part(p).and_then(|(_, j)| serde_json::from_slice::<Value>(j).ok()) {
        return v;
    }
    match std::str::from_utf8(p) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "hex": p.iter().map(|b| format!("{b:02x}")).collect::<String>() }),
    }
}

/// A reading as JSON.
pub fn reading_json(r: &ReadingRecord) -> Value {
    json!({
        "boot_id": r.boot_id,
        "seq": r.seq,
        "channel": r.reading.channel,
        "timestamp_ms": r.reading.timestamp_ms,
        "value": r.reading.value,
    })
}

/// A device status as JSON.
pub fn status_json(s: &DeviceStatus) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vocab::wire::{Counters, Reading};

    #[test]
    fn each_kind_of_value_reads_back() {
        let r = ReadingRecord {
            boot_id: 7,
            seq: 42,
            reading: Reading {
                channel: 1,
                timestamp_ms: 1_700_000_000_000,
                value: 21.5,
            },
        };
        let mut buf = [0u8; 64];
        let bytes = vocab::wire::encode(&r, &mut buf).unwrap().to_vec();
        let v = value("telemetry", Some(&bytes));
        assert_eq!((v["seq"].as_u64(), v["value"].as_f64()), (Some(42), Some(21.5)));
        let s = DeviceStatus {
            device_id: "dev-1".try_into().unwrap(),
            boot_id: 7,
            online: false,
            firmware_version: "0.1".try_into().unwrap(),
            buffer_capacity: 8,
            uptime_ms: 5,
            counters: Counters::default(),
        };
        let bytes = vocab::wire::encode(&s, &mut buf).unwrap().to_vec();
        let v = value("device-status", Some(&bytes));
        assert_eq!(
            (v["device_id"].as_str(), v["online"].as_bool()),
            (Some("dev-1"), Some(false))
        );
        assert_eq!(value("gateways", Some(br#"{"a":1}"#))["a"], 1);
        assert_eq!(value("x", Some(b"plain")), Value::String("plain".into()));
        assert_eq!(value("x", Some(&[0xff, 0x00])), json!({ "hex": "ff00" }));
        assert_eq!(value("x", None), Value::Null);
    }
}
