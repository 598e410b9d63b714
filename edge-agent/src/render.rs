//! Log records as readable JSON (for `edge-agent log tail` and the admin API).

use firmware::wire::{self, ReadingRecord};
use serde_json::{json, Value};

use crate::config::{DEAD_LETTER, DEVICE_STATUS, TELEMETRY};
use crate::log::Record;

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// An `f32` as the shortest decimal that reads back to it (21.947092, not 21.947092056274414).
fn shortest(v: f32) -> Value {
    format!("{v}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A record of `topic` as JSON, its value decoded with the wire types where the topic has them.
pub fn record(topic: &str, r: &Record) -> Value {
    let key = r.key.as_deref().map(lossy);
    let mut v = json!({ "offset": r.offset, "timestamp_ms": r.timestamp_ms, "key": key });
    let decoded = match topic {
        TELEMETRY => match wire::decode::<ReadingRecord>(&r.value) {
            Ok(rr) => json!({
                "device": key,
                "boot_id": rr.boot_id,
                "seq": rr.seq,
                "channel": rr.reading.channel,
                "reading_timestamp_ms": rr.reading.timestamp_ms,
                "value": shortest(rr.reading.value),
            }),
            Err(e) => json!({ "undecodable": e.to_string(), "value_hex": hex(&r.value) }),
        },
        DEVICE_STATUS => match wire::decode_status(&r.value) {
            Ok(s) => serde_json::to_value(&s).unwrap_or(Value::Null),
            Err(e) => json!({ "undecodable": e.to_string(), "value_hex": hex(&r.value) }),
        },
        DEAD_LETTER => json!({
            "reason": r.header(vocab::headers::REASON).map(lossy),
            "mqtt_topic": r.header(vocab::headers::MQTT_TOPIC).map(lossy),
            "payload_len": r.value.len(),
            "payload_hex": hex(&r.value[..r.value.len().min(64)]),
        }),
        _ => json!({ "value_hex": hex(&r.value) }),
    };
    v["value"] = decoded;
    v
}
