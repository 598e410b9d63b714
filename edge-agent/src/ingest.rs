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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use firmware::receiver::Stream;
use firmware::wire::{self, Ack, ReadingRecord};
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

/// Timestamps below this (2000-01-01) are device uptimes, not wall-clock times.
const EPOCH_2000_MS: u64 = 946_684_800_000;

/// The pipeline state: partition counts, the committed stream states (a cache of the store's),
/// the device registry and the metrics.
#[derive(Debug)]
pub struct Ingest<S: LogStore> {
    store: Arc<S>,
    telemetry_partitions: u32,
    max_payload: usize,
    streams: HashMap<(String, u32), Stream>,
    devices: Arc<Mutex<Registry>>,
    metrics: Arc<Metrics>,
    /// Dead letters stored this second, per topic: (second, count).
    dead_budget: HashMap<String, (i64, u32)>,
}

/// What a batch adds before it is committed.
struct Staged {
    telemetry: HashMap<u32, Vec<NewRecord>>,
    status: Vec<NewRecord>,
    dead: Vec<NewRecord>,
    streams: HashMap<(String, u32), Stream>,
    ack: HashSet<(String, u32)>,
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

    fn stream(&self, staged: &Staged, device: &str, boot: u32, low_seq: u64) -> Result<Stream, LogError> {
        let key = (device.to_string(), boot);
        if let Some(s) = staged.streams.get(&key).or_else(|| self.streams.get(&key)) {
            return Ok(*s);
        }
        Ok(match self.store.stream_state(device, boot)? {
            Some(next) => Stream::resume(next),
            None => Stream::start(low_seq),
        })
    }

    /// Processes one group-commit batch. `now_ms` is the wall clock (record timestamps of
    /// dead letters and of readings whose device does not know the time).
    pub fn process(&mut self, batch: &[Publish], now_ms: i64) -> Result<Vec<AckOut>, LogError> {
        let mut st = Staged {
            telemetry: HashMap::new(),
            status: Vec::new(),
            dead: Vec::new(),
            streams: HashMap::new(),
            ack: HashSet::new(),
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
            if let Err(reason) = self.one(p, now_ms, &mut st, &mut devices) {
                let budget = self.dead_budget.entry(p.topic.clone()).or_insert((second, 0));
                if budget.0 != second {
                    *budget = (second, 0);
                }
                if budget.1 >= DEAD_LETTERS_PER_TOPIC_PER_S {
                    suppressed += 1;
                    continue;
                }
                budget.1 += 1;
                debug!(topic = %p.topic, %reason, "dead letter");
                st.dead.push(NewRecord {
                    timestamp_ms: now_ms,
                    key: Some(p.topic.as_bytes().to_vec()),
                    value: p.payload.clone(),
                    headers: vec![
                        ("reason".into(), reason.into_bytes()),
                        ("mqtt_topic".into(), p.topic.as_bytes().to_vec()),
                    ],
                });
            }
        }
        drop(devices);
        add(&self.metrics.publishes, batch.len() as u64);
        let mut append = Append::default();
        let mut parts: Vec<_> = st.telemetry.into_iter().collect();
        parts.sort_by_key(|(p, _)| *p);
        for (partition, records) in parts {
            append.partitions.push(PartitionAppend {
                topic: TELEMETRY.into(),
                partition,
                records,
            });
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
        for ((device, boot), s) in &st.streams {
            if self.streams.get(&(device.clone(), *boot)) != Some(s) {
                append.streams.push(StreamState {
                    device: device.clone(),
                    boot: *boot,
                    next_expected: s.next_expected(),
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
        self.streams.extend(st.streams);
        let mut acks = Vec::with_capacity(st.ack.len());
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        for (device, boot) in st.ack {
            let Some(s) = self.streams.get(&(device.clone(), boot)) else {
                continue;
            };
            let Some(up_to_seq) = s.ack_up_to() else { continue };
            let d = devices.entry(&device);
            if d.boot_id == Some(boot) || d.boot_id.is_none() {
                d.boot_id = Some(boot);
                d.last_seq = Some(up_to_seq);
            }
            let mut buf = [0u8; wire::MAX_ACK_ENCODED];
            if let Ok(bytes) = wire::encode(
                &Ack {
                    boot_id: boot,
                    up_to_seq,
                },
                &mut buf,
            ) {
                acks.push(AckOut {
                    topic: format!("devices/{device}/ack"),
                    payload: bytes.to_vec(),
                });
            }
        }
        add(&self.metrics.acks, acks.len() as u64);
        Ok(acks)
    }

    /// Stages one publish; `Err(reason)` sends it to the dead-letter topic.
    fn one(&self, p: &Publish, now_ms: i64, st: &mut Staged, devices: &mut Registry) -> Result<(), String> {
        if p.payload.len() > self.max_payload {
            return Err(format!(
                "payload of {} bytes exceeds {}",
                p.payload.len(),
                self.max_payload
            ));
        }
        if let Some(id) = p.topic.strip_prefix("sensors/") {
            let b = wire::decode_batch(&p.payload).map_err(|e| format!("batch: {e}"))?;
            if b.device_id.as_str() != id {
                return Err(format!(
                    "device id {:?} in payload does not match topic",
                    b.device_id.as_str()
                ));
            }
            let mut s = self
                .stream(st, id, b.boot_id, b.low_seq)
                .map_err(|e| format!("stream state: {e}"))?;
            let o = s.accept(b.first_seq, b.low_seq, b.readings.len());
            let d = devices.entry(id);
            d.last_seen_ms = now_ms;
            let partition = partition_for(id.as_bytes(), self.telemetry_partitions);
            let out = st.telemetry.entry(partition).or_default();
            for i in o.new.clone() {
                let reading = b.readings[i];
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
            st.readings += new;
            st.gaps += o.gap;
            d.readings += new;
            d.gaps += o.gap;
            if o.out_of_order {
                st.out_of_order += 1;
                d.out_of_order += 1;
            } else {
                let dup = b.readings.len() as u64 - new;
                st.duplicates += dup;
                d.duplicates += dup;
            }
            let key = (id.to_string(), b.boot_id);
            st.streams.insert(key.clone(), s);
            st.ack.insert(key);
            Ok(())
        } else if let Some(rest) = p.topic.strip_prefix("devices/") {
            let Some(id) = rest.strip_suffix("/status") else {
                return Err("unexpected topic".into());
            };
            let s = wire::decode_status(&p.payload).map_err(|e| format!("status: {e}"))?;
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
                value: p.payload.clone(),
                headers: vec![("online".into(), vec![u8::from(s.online)])],
            });
            Ok(())
        } else {
            Err("unexpected topic".into())
        }
    }
}
