//! The ingest pipeline: MQTT publishes in, one durable commit per batch, Acks out.
//!
//! [`Ingest::process`] takes a batch of publishes (group commit: whatever arrived within the
//! configured bounds) and:
//! 1. decodes each with the firmware's wire types and validates it (topic device id = payload
//!    device id, size); a failure becomes a `dead-letter` record with the reason in a header;
//! 2. deduplicates readings by `(device, boot, seq)` with [`firmware::receiver::Stream`]; the
//!    changed stream states go into the same transaction as the records;
//! 3. writes everything in **one** durable [`LogStore::append`];
//! 4. only if that succeeded, returns the Acks `{boot_id, up_to_seq}` to publish on
//!    `devices/<id>/ack`. If it failed, it returns the error, acks nothing, and forgets the
//!    staged stream states: devices keep their readings and re-send them.
//!
//! It does no I/O of its own besides the store, so it is tested with the in-memory twin.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use firmware::receiver::Stream;
use firmware::wire::{self, Ack, Reading, ReadingRecord};
use tracing::{debug, warn};

use crate::config::{DEAD_LETTER, DEVICE_STATUS, TELEMETRY};
use crate::devices::Registry;
use crate::log::{Append, LogError, LogStore, NewRecord, PartitionAppend, StreamState};
use crate::metrics::{add, Metrics};
use crate::partitioner::partition_for;

/// One MQTT publish handed over by the broker.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Topic name.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// A publish as the pipeline reads it. The agent hands over rumqttd's own publishes (no copy
/// between the link reader and this thread); tests and tools use [`Publish`].
pub trait Message {
    /// Topic name.
    fn topic(&self) -> &str;
    /// Payload bytes.
    fn payload(&self) -> &[u8];
}

impl Message for Publish {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// An Ack to publish after a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckOut {
    /// `devices/<id>/ack`.
    pub topic: String,
    /// Encoded [`Ack`].
    pub payload: Vec<u8>,
}

/// Dead letters stored per MQTT topic per second; beyond that they are only counted, so one
/// client flooding garbage cannot fill the log or slow the commits of everyone else.
pub const DEAD_LETTERS_PER_TOPIC_PER_S: u32 = 20;

/// A [`wire::Batch`] decoded in place: the device id borrowed from the payload and the readings
/// in a vector sized to the batch, instead of the 1.5 KiB fixed-capacity struct the firmware's
/// decoder returns (moving that struct through the decode layers took a quarter of the ingest
/// thread at peak). Accepts exactly what [`wire::decode_batch`] accepts, with the same values
/// (the tests below compare the two); on a rejection `decode_batch` names the error.
#[derive(Debug, serde::Deserialize)]
struct BatchView<'a> {
    device_id: &'a str,
    boot_id: u32,
    first_seq: u64,
    low_seq: u64,
    readings: Readings,
}

/// At most [`wire::MAX_BATCH_READINGS`] readings; a longer declared length is refused before
/// anything is allocated for it.
#[derive(Debug)]
struct Readings(Vec<Reading>);

impl<'de> serde::Deserialize<'de> for Readings {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Readings;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "at most {} readings", wire::MAX_BATCH_READINGS)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Readings, A::Error> {
                use serde::de::Error;
                let declared = seq.size_hint().unwrap_or(0);
                if declared > wire::MAX_BATCH_READINGS {
                    return Err(A::Error::invalid_length(declared, &self));
                }
                let mut v = Vec::with_capacity(declared);
                while let Some(r) = seq.next_element::<Reading>()? {
                    if v.len() == wire::MAX_BATCH_READINGS {
                        return Err(A::Error::invalid_length(v.len() + 1, &self));
                    }
                    v.push(r);
                }
                Ok(Readings(v))
            }
        }
        d.deserialize_seq(Visitor)
    }
}

impl<'a> BatchView<'a> {
    /// The batch, or `None` wherever [`wire::decode_batch`] returns an error.
    fn decode(bytes: &'a [u8]) -> Option<Self> {
        let b: BatchView<'a> = wire::decode(bytes).ok()?;
        let valid = wire::is_valid_device_id(b.device_id)
            && b.low_seq <= b.first_seq
            && b.first_seq.checked_add(b.readings.0.len() as u64).is_some();
        valid.then_some(b)
    }
}

/// Timestamps below this (2000-01-01) are device uptimes, not wall-clock times.
const EPOCH_2000_MS: u64 = 946_684_800_000;

/// The pipeline state: partition counts, the committed stream states (a cache of the store's),
/// the device registry and the metrics.
#[derive(Debug)]
pub struct Ingest<S: LogStore> {
    store: Arc<S>,
    telemetry_partitions: u32,
    max_payload: usize,
    /// Committed stream states by device, then boot.
    streams: HashMap<String, HashMap<u32, Stream>>,
    devices: Arc<Mutex<Registry>>,
    metrics: Arc<Metrics>,
    /// Dead letters stored this second, per topic: (second, count).
    dead_budget: HashMap<String, (i64, u32)>,
}

/// What a batch adds before it is committed. Borrows device ids from the batch, so staging
/// a publish allocates nothing but its records.
struct Staged<'b> {
    /// Records per telemetry partition (`None`: no publish for that partition).
    telemetry: Vec<Option<Vec<NewRecord>>>,
    status: Vec<NewRecord>,
    dead: Vec<NewRecord>,
    /// Every `(device, boot)` the batch touched, in first-seen order; each is acked.
    slots: Vec<Slot<'b>>,
    index: HashMap<(&'b str, u32), usize>,
    readings: u64,
    duplicates: u64,
    gaps: u64,
    out_of_order: u64,
}

/// One device boot within a batch: its staged stream and what to add to the registry.
struct Slot<'b> {
    device: &'b str,
    boot: u32,
    stream: Stream,
    /// The committed state before the batch (`None`: not cached, so it is written).
    before: Option<Stream>,
    partition: u32,
    readings: u64,
    duplicates: u64,
    gaps: u64,
    out_of_order: u64,
}

impl<S: LogStore> Ingest<S> {
    /// A pipeline writing to `store` (whose topics must exist).
    pub fn new(
        store: Arc<S>,
        telemetry_partitions: u32,
        max_payload: usize,
        devices: Arc<Mutex<Registry>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Ingest {
            store,
            telemetry_partitions,
            max_payload,
            streams: HashMap::new(),
            devices,
            metrics,
            dead_budget: HashMap::new(),
        }
    }

    /// The device registry.
    pub fn devices(&self) -> &Arc<Mutex<Registry>> {
        &self.devices
    }

    /// The batch's slot for `(device, boot)`, created from the cache or the store on first use.
    fn slot<'b>(
        &self,
        st: &mut Staged<'b>,
        device: &'b str,
        boot: u32,
        low_seq: u64,
    ) -> Result<usize, LogError> {
        if let Some(&i) = st.index.get(&(device, boot)) {
            return Ok(i);
        }
        let before = self.streams.get(device).and_then(|m| m.get(&boot)).copied();
        let stream = match before {
            Some(s) => s,
            None => match self.store.stream_state(device, boot)? {
                Some(next) => Stream::resume(next),
                None => Stream::start(low_seq),
            },
        };
        st.slots.push(Slot {
            device,
            boot,
            stream,
            before,
            partition: partition_for(device.as_bytes(), self.telemetry_partitions),
            readings: 0,
            duplicates: 0,
            gaps: 0,
            out_of_order: 0,
        });
        st.index.insert((device, boot), st.slots.len() - 1);
        Ok(st.slots.len() - 1)
    }

    /// Processes one group-commit batch. `now_ms` is the wall clock (record timestamps of
    /// dead letters and of readings whose device does not know the time).
    pub fn process<M: Message>(&mut self, batch: &[M], now_ms: i64) -> Result<Vec<AckOut>, LogError> {
        let mut st = Staged {
            telemetry: vec![None; self.telemetry_partitions.max(1) as usize],
            status: Vec::new(),
            dead: Vec::new(),
            slots: Vec::new(),
            index: HashMap::new(),
            readings: 0,
            duplicates: 0,
            gaps: 0,
            out_of_order: 0,
        };
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let second = now_ms.div_euclid(1000);
        if self.dead_budget.len() > 10_000 {
            self.dead_budget.retain(|_, (s, _)| *s == second);
        }
        let mut suppressed = 0;
        for p in batch {
            if let Err(reason) = self.one(p.topic(), p.payload(), now_ms, &mut st, &mut devices) {
                let budget = self
                    .dead_budget
                    .entry(p.topic().to_string())
                    .or_insert((second, 0));
                if budget.0 != second {
                    *budget = (second, 0);
                }
                if budget.1 >= DEAD_LETTERS_PER_TOPIC_PER_S {
                    suppressed += 1;
                    continue;
                }
                budget.1 += 1;
                debug!(topic = %p.topic(), %reason, "dead letter");
                st.dead.push(NewRecord {
                    timestamp_ms: now_ms,
                    key: Some(p.topic().as_bytes().to_vec()),
                    value: p.payload().to_vec(),
                    headers: vec![
                        (vocab::headers::REASON.into(), reason.into_bytes()),
                        (vocab::headers::MQTT_TOPIC.into(), p.topic().as_bytes().to_vec()),
                    ],
                });
            }
        }
        // The registry learns what the batch brought (as each publish did before: before the
        // commit), once per device boot rather than once per publish.
        for slot in &st.slots {
            let d = devices.entry(slot.device);
            d.last_seen_ms = now_ms;
            d.readings += slot.readings;
            d.gaps += slot.gaps;
            d.duplicates += slot.duplicates;
            d.out_of_order += slot.out_of_order;
        }
        drop(devices);
        add(&self.metrics.publishes, batch.len() as u64);
        let mut append = Append::default();
        for (partition, records) in st.telemetry.into_iter().enumerate() {
            if let Some(records) = records {
                append.partitions.push(PartitionAppend {
                    topic: TELEMETRY.into(),
                    partition: partition as u32,
                    records,
                });
            }
        }
        if !st.status.is_empty() {
            append.partitions.push(PartitionAppend {
                topic: DEVICE_STATUS.into(),
                partition: 0,
                records: st.status,
            });
        }
        let dead = st.dead.len() as u64;
        if dead > 0 {
            append.partitions.push(PartitionAppend {
                topic: DEAD_LETTER.into(),
                partition: 0,
                records: st.dead,
            });
        }
        for slot in &st.slots {
            if slot.before != Some(slot.stream) {
                append.streams.push(StreamState {
                    device: slot.device.to_string(),
                    boot: slot.boot,
                    next_expected: slot.stream.next_expected(),
                });
            }
        }
        let records = append.record_count() as u64;
        if records > 0 || !append.streams.is_empty() {
            let t = Instant::now();
            match self.store.append(&append) {
                Ok(_) => {
                    self.metrics.commit_seconds.observe(t.elapsed().as_secs_f64());
                    self.metrics.batch_records.observe(records as f64);
                    add(&self.metrics.commits, 1);
                    if self.metrics.degraded.swap(0, std::sync::atomic::Ordering::SeqCst) == 1 {
                        warn!("log writes succeed again; acking resumed");
                    }
                }
                Err(e) => {
                    add(&self.metrics.commit_errors, 1);
                    if self.metrics.degraded.swap(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                        warn!(error = %e, records, "log write failed; acking stopped, devices keep their readings");
                    }
                    return Err(e);
                }
            }
        }
        add(&self.metrics.readings, st.readings);
        add(&self.metrics.duplicates, st.duplicates);
        add(&self.metrics.dead_letters, dead);
        add(&self.metrics.dead_letters_suppressed, suppressed);
        add(&self.metrics.device_dropped, st.gaps);
        add(&self.metrics.lag_detected, st.out_of_order);
        let mut acks = Vec::with_capacity(st.slots.len());
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        for slot in &st.slots {
            match self.streams.get_mut(slot.device) {
                Some(boots) => {
                    boots.insert(slot.boot, slot.stream);
                }
                None => {
                    self.streams
                        .insert(slot.device.to_string(), HashMap::from([(slot.boot, slot.stream)]));
                }
            }
            let Some(up_to_seq) = slot.stream.ack_up_to() else {
                continue;
            };
            let d = devices.entry(slot.device);
            if d.boot_id == Some(slot.boot) || d.boot_id.is_none() {
                d.boot_id = Some(slot.boot);
                d.last_seq = Some(up_to_seq);
            }
            let mut buf = [0u8; wire::MAX_ACK_ENCODED];
            if let Ok(bytes) = wire::encode(
                &Ack {
                    boot_id: slot.boot,
                    up_to_seq,
                },
                &mut buf,
            ) {
                acks.push(AckOut {
                    topic: format!("devices/{}/ack", slot.device),
                    payload: bytes.to_vec(),
                });
            }
        }
        add(&self.metrics.acks, acks.len() as u64);
        Ok(acks)
    }

    /// Stages one publish; `Err(reason)` sends it to the dead-letter topic.
    fn one<'b>(
        &self,
        topic: &'b str,
        payload: &[u8],
        now_ms: i64,
        st: &mut Staged<'b>,
        devices: &mut Registry,
    ) -> Result<(), String> {
        if payload.len() > self.max_payload {
            return Err(format!(
                "payload of {} bytes exceeds {}",
                payload.len(),
                self.max_payload
            ));
        }
        if let Some(id) = topic.strip_prefix("sensors/") {
            let Some(b) = BatchView::decode(payload) else {
                return Err(match wire::decode_batch(payload) {
                    Err(e) => format!("batch: {e}"),
                    Ok(_) => "batch: refused by the in-place decoder".into(),
                });
            };
            if b.device_id != id {
                return Err(format!(
                    "device id {:?} in payload does not match topic",
                    b.device_id
                ));
            }
            let readings = &b.readings.0;
            let i = self
                .slot(st, id, b.boot_id, b.low_seq)
                .map_err(|e| format!("stream state: {e}"))?;
            let mut s = st.slots[i].stream;
            let o = s.accept(b.first_seq, b.low_seq, readings.len());
            let out = st.telemetry[st.slots[i].partition as usize].get_or_insert_with(Vec::new);
            for i in o.new.clone() {
                let reading = readings[i];
                let record = ReadingRecord {
                    boot_id: b.boot_id,
                    seq: b.first_seq + i as u64,
                    reading,
                };
                let mut buf = [0u8; wire::MAX_READING_RECORD_ENCODED];
                let value = wire::encode(&record, &mut buf)
                    .map_err(|e| format!("encode: {e}"))?
                    .to_vec();
                let ts = if reading.timestamp_ms >= EPOCH_2000_MS && reading.timestamp_ms <= i64::MAX as u64 {
                    reading.timestamp_ms as i64
                } else {
                    now_ms
                };
                out.push(NewRecord {
                    timestamp_ms: ts,
                    key: Some(id.as_bytes().to_vec()),
                    value,
                    headers: Vec::new(),
                });
            }
            let new = o.new.len() as u64;
            let slot = &mut st.slots[i];
            slot.stream = s;
            st.readings += new;
            st.gaps += o.gap;
            slot.readings += new;
            slot.gaps += o.gap;
            if o.out_of_order {
                st.out_of_order += 1;
                slot.out_of_order += 1;
            } else {
                let dup = readings.len() as u64 - new;
                st.duplicates += dup;
                slot.duplicates += dup;
            }
            Ok(())
        } else if let Some(rest) = topic.strip_prefix("devices/") {
            let Some(id) = rest.strip_suffix("/status") else {
                return Err("unexpected topic".into());
            };
            let s = wire::decode_status(payload).map_err(|e| format!("status: {e}"))?;
            if s.device_id.as_str() != id {
                return Err(format!(
                    "device id {:?} in status does not match topic",
                    s.device_id.as_str()
                ));
            }
            devices.status(&s, now_ms);
            st.status.push(NewRecord {
                timestamp_ms: now_ms,
                key: Some(id.as_bytes().to_vec()),
                value: payload.to_vec(),
                headers: vec![(vocab::headers::ONLINE.into(), vec![u8::from(s.online)])],
            });
            Ok(())
        } else {
            Err("unexpected topic".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use firmware::wire::{self, Batch, Reading};
    use proptest::prelude::*;

    use super::BatchView;

    fn batch() -> impl Strategy<Value = Batch> {
        (
            "[A-Za-z0-9_.+/-]{0,34}",
            any::<u32>(),
            prop_oneof![0u64..1000, any::<u64>()],
            0u64..2000,
            proptest::collection::vec(
                (any::<u16>(), any::<u64>(), any::<u32>()),
                0..=wire::MAX_BATCH_READINGS,
            ),
        )
            .prop_map(|(id, boot_id, first_seq, back, rs)| Batch {
                device_id: id[..id.len().min(wire::MAX_DEVICE_ID)].try_into().unwrap(),
                boot_id,
                first_seq,
                // Sometimes above first_seq: decode_batch refuses that.
                low_seq: first_seq.wrapping_sub(back).min(first_seq.wrapping_add(back % 3)),
                readings: rs
                    .into_iter()
                    .map(|(channel, timestamp_ms, v)| Reading {
                        channel,
                        timestamp_ms,
                        value: f32::from_bits(v),
                    })
                    .collect(),
            })
    }

    /// Both decoders accept the same bytes and read the same values.
    fn same(bytes: &[u8]) -> Result<(), TestCaseError> {
        let view = BatchView::decode(bytes);
        match wire::decode_batch(bytes) {
            Ok(b) => {
                let v = view.ok_or_else(|| TestCaseError::fail("the view refused a valid batch"))?;
                prop_assert_eq!(v.device_id, b.device_id.as_str());
                prop_assert_eq!(
                    (v.boot_id, v.first_seq, v.low_seq),
                    (b.boot_id, b.first_seq, b.low_seq)
                );
                prop_assert_eq!(v.readings.0.len(), b.readings.len());
                for (x, y) in v.readings.0.iter().zip(&b.readings) {
                    prop_assert_eq!((x.channel, x.timestamp_ms), (y.channel, y.timestamp_ms));
                    prop_assert_eq!(x.value.to_bits(), y.value.to_bits());
                }
            }
            Err(_) => prop_assert!(view.is_none(), "the view accepted what decode_batch refuses"),
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn view_decodes_exactly_like_decode_batch(b in batch(), cut in any::<prop::sample::Index>(),
                                                  at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut buf = [0u8; wire::MAX_BATCH_ENCODED];
            let bytes = wire::encode(&b, &mut buf).unwrap().to_vec();
            same(&bytes)?;
            same(&bytes[..cut.index(bytes.len() + 1)])?;
            let mut flipped = bytes.clone();
            let i = at.index(flipped.len());
            flipped[i] = byte;
            same(&flipped)?;
            let mut longer = bytes.clone();
            longer.push(byte);
            same(&longer)?;
        }

        #[test]
        fn view_refuses_like_decode_batch_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            same(&bytes)?;
        }
    }

    #[test]
    fn view_refuses_more_than_64_readings_without_reading_them() {
        // Declares 65 readings and carries them: decode_batch refuses, so must the view.
        let mut big = vec![wire::FORMAT_VERSION, 1, b'd', 1, 0, 0, 65];
        for _ in 0..65 {
            big.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        assert!(wire::decode_batch(&big).is_err());
        assert!(BatchView::decode(&big).is_none());
        // Declares a huge count with no bytes behind it: refused before any allocation.
        let huge = [
            wire::FORMAT_VERSION,
            1,
            b'd',
            1,
            0,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0x0f,
        ];
        assert!(BatchView::decode(&huge).is_none());
    }
}
