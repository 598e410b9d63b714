//! Monitoring devices from the cloud (issue 10): what the `telemetry`, `device-status` and
//! `gateways` topics say about every device and gateway.
//!
//! - [`registry`] — the rules, sans I/O: per device and boot the readings that arrived, the
//!   gaps, duplicates, the device's own overflow count, online or not;
//! - [`gateways`] — gateways from their heartbeats: online, backlog, drops, send rate;
//! - [`Monitor`] — both, fed one record at a time ([`Monitor::apply`]) from any source, with
//!   the records it could not read counted; [`view`] — what the JSON API and the CLI show;
//! - [`feed`] — an ordinary Kafka consumer (the crate's own [`crate::client`], or librdkafka
//!   with feature `monitor-feed`) that reads the three topics from the beginning into a
//!   [`Monitor`], against this broker or any Kafka-compatible cluster;
//! - [`decode`] — record values as JSON (`cloud-broker consume`);
//! - [`http`] — `/api/devices`, `/api/devices/{id}`, `/api/gateways`, `/api/monitor`.

pub mod decode;
pub mod feed;
pub mod gateways;
pub mod http;
#[cfg(feature = "monitor-feed")]
mod rdkafka_feed;
pub mod registry;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use vocab::wire::ReadingRecord;

use gateways::Gateways;
use registry::Registry;

/// The `[monitor]` section of the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Run the monitor in `cloud-broker run`.
    pub enabled: bool,
    /// The consumer group it reads as (default: `iot-monitor-<node id>`; `iot-monitor` for
    /// `cloud-broker monitor`). Each monitor reads every partition: give each its own group.
    pub group_id: Option<String>,
    /// The cloud topic of device readings.
    pub telemetry_topic: String,
    /// The cloud topic of device status.
    pub status_topic: String,
    /// The cloud topic of gateway heartbeats.
    pub gateways_topic: String,
    /// A device unheard of for this long is offline, seconds.
    pub device_timeout_s: u64,
    /// A gateway without a heartbeat for this long is offline, seconds.
    pub gateway_timeout_s: u64,
    /// Most devices tracked; records of more are counted (`untracked`) and not kept.
    pub max_devices: usize,
    /// Devices with their own series on `/metrics` (the most readings missing first).
    pub metrics_devices: usize,
    /// The Kafka client that reads the topics: `native` (the cheapest per record; TLS and
    /// SASL from `properties`) or `librdkafka`.
    pub client: feed::Client,
    /// Where the monitor in `cloud-broker run` (and its schema registry) connects: default
    /// the node's own plaintext listener; a secured listener's address with `properties`.
    pub bootstrap: Option<String>,
    /// librdkafka properties for that connection: `security.protocol`, `sasl.mechanism`,
    /// `sasl.username`, `sasl.password`, `ssl.ca.location` (the native client takes these).
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            group_id: None,
            telemetry_topic: vocab::topics::TELEMETRY.into(),
            status_topic: vocab::topics::DEVICE_STATUS.into(),
            gateways_topic: vocab::topics::GATEWAYS.into(),
            device_timeout_s: 60,
            gateway_timeout_s: 30,
            max_devices: 200_000,
            metrics_devices: 100,
            client: feed::Client::Native,
            bootstrap: None,
            properties: Default::default(),
        }
    }
}

impl Settings {
    /// Checks what parsing cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.device_timeout_s > 0, "monitor.device_timeout_s must be > 0");
        anyhow::ensure!(
            self.gateway_timeout_s > 0,
            "monitor.gateway_timeout_s must be > 0"
        );
        anyhow::ensure!(self.max_devices > 0, "monitor.max_devices must be > 0");
        for t in [&self.telemetry_topic, &self.status_topic, &self.gateways_topic] {
            anyhow::ensure!(
                !t.is_empty()
                    && t.len() <= 249
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
                "monitor: bad topic name {t:?}"
            );
        }
        Ok(())
    }

    /// The topics read.
    pub fn topics(&self) -> [&str; 3] {
        [&self.telemetry_topic, &self.status_topic, &self.gateways_topic]
    }

    /// [`Settings::topics`], owned.
    pub fn topic_names(&self) -> Vec<String> {
        self.topics().iter().map(|t| t.to_string()).collect()
    }
}

/// A monitor shared by its feed and its readers.
pub type Shared = Arc<Mutex<Monitor>>;

/// Locks a shared monitor (a panic while it was held leaves counts, not broken invariants).
pub fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Monitor> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One record as the feed hands it over.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rec<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp (ms since the Unix epoch), if it has one.
    pub timestamp_ms: Option<i64>,
    /// Its key.
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: Option<&'a [u8]>,
    /// Its [`vocab::headers::EDGE`] header.
    pub edge: Option<&'a [u8]>,
}

/// Largest heartbeat read (a gateway with a few hundred partitions stays far below).
pub const MAX_HEARTBEAT_BYTES: usize = 256 << 10;

/// Where the monitor stands on one partition.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// The next offset to read.
    pub next: i64,
    /// The partition's end as last seen (-1: unknown).
    pub end: i64,
}

/// The registry, the gateways, and how far the monitor has read.
#[derive(Debug)]
pub struct Monitor {
    /// What it reads and its bounds.
    pub settings: Settings,
    /// Devices.
    pub registry: Registry,
    /// Gateways.
    pub gateways: Gateways,
    /// Records read.
    pub records: u64,
    /// Records that could not be read (not a reading, status or heartbeat).
    pub undecodable: u64,
    /// Why the last of them could not be read.
    pub last_error: Option<String>,
    /// Per topic, per partition.
    pub positions: BTreeMap<String, BTreeMap<i32, Position>>,
    /// The feed's connection state, as it last said.
    pub feed: String,
}

impl Monitor {
    /// An empty monitor.
    pub fn new(settings: Settings) -> Self {
        Monitor {
            registry: Registry::new(settings.max_devices),
            settings,
            gateways: Gateways::default(),
            records: 0,
            undecodable: 0,
            last_error: None,
            positions: BTreeMap::new(),
            feed: "starting".into(),
        }
    }

    /// Applies one record at `now_ms` (the wall clock). A record's own timestamp says when
    /// its device or gateway was heard from (so a replayed backlog does not make a device
    /// look online), clamped to `now_ms`.
    pub fn apply(&mut self, r: &Rec<'_>, now_ms: i64) {
        let parts = match self.positions.get_mut(r.topic) {
            Some(p) => p,
            None => self.positions.entry(r.topic.to_string()).or_default(),
        };
        let pos = parts.entry(r.partition).or_insert(Position { next: 0, end: -1 });
        pos.next = pos.next.max(r.offset.saturating_add(1));
        pos.end = pos.end.max(pos.next);
        self.apply_unpositioned(r, now_ms);
    }

    /// [`Monitor::apply`] without moving the partition's position: for a feed that moves it
    /// once per fetch ([`Monitor::advance`], under the same lock).
    pub fn apply_unpositioned(&mut self, r: &Rec<'_>, now_ms: i64) {
        self.records += 1;
        let at = r.timestamp_ms.unwrap_or(now_ms).min(now_ms);
        if let Err(e) = self.read(r, at, now_ms) {
            self.undecodable += 1;
            self.last_error = Some(format!("{}/{}@{}: {e}", r.topic, r.partition, r.offset));
        }
    }

    fn read(&mut self, r: &Rec<'_>, at: i64, now_ms: i64) -> Result<(), String> {
        let value = r.value.ok_or("no value")?;
        if r.topic == self.settings.telemetry_topic {
            let id = device_key(r.key)?;
            // As the bridge's value_format wrote it: postcard, JSON, or Confluent-framed JSON.
            let rec: ReadingRecord = match vocab::json::json_part(value) {
                Some((_, json)) => {
                    let j: vocab::json::ReadingJson =
                        serde_json::from_slice(json).map_err(|e| format!("reading (JSON): {e}"))?;
                    if j.device_id != id {
                        return Err(format!("a reading of {:?} under key {id:?}", j.device_id));
                    }
                    j.record()
                }
                None => vocab::wire::decode(value).map_err(|e| format!("reading: {e}"))?,
            };
            self.registry.reading_via(id, r.edge, &rec, at);
        } else if r.topic == self.settings.status_topic {
            let id = device_key(r.key)?;
            let s = vocab::wire::decode_status(value).map_err(|e| format!("status: {e}"))?;
            if s.device_id.as_str() != id {
                return Err(format!("status of {:?} under key {id:?}", s.device_id.as_str()));
            }
            self.registry.status(&s, at);
        } else if r.topic == self.settings.gateways_topic {
            if value.len() > MAX_HEARTBEAT_BYTES {
                return Err(format!("a heartbeat of {} bytes", value.len()));
            }
            let hb: vocab::heartbeat::Heartbeat =
                serde_json::from_slice(value).map_err(|e| format!("heartbeat: {e}"))?;
            self.gateways.heartbeat(hb, now_ms);
        } else {
            return Err("not a monitored topic".into());
        }
        Ok(())
    }

    /// Where the feed stands on a partition after a fetch (control records and skipped
    /// transactions included) and the partition's end (-1: unchanged).
    pub fn advance(&mut self, topic: &str, partition: i32, next: i64, end: i64) {
        let p = match self.positions.get_mut(topic) {
            Some(p) => p,
            None => self.positions.entry(topic.to_string()).or_default(),
        }
        .entry(partition)
        .or_insert(Position { next: 0, end: -1 });
        p.next = p.next.max(next);
        p.end = if end >= 0 { end } else { p.end }.max(p.next);
    }

    /// The partition ends the feed last saw (for the lag).
    pub fn set_end(&mut self, topic: &str, partition: i32, end: i64) {
        let p = self
            .positions
            .entry(topic.to_string())
            .or_default()
            .entry(partition)
            .or_insert(Position { next: 0, end: -1 });
        p.end = end.max(p.next);
    }

    /// Records in the topics not read yet (over the partitions whose end is known).
    pub fn lag(&self) -> u64 {
        self.positions
            .values()
            .flat_map(BTreeMap::values)
            .filter(|p| p.end >= 0)
            .map(|p| (p.end - p.next).max(0) as u64)
            .sum()
    }

    fn device_timeout_ms(&self) -> i64 {
        (self.settings.device_timeout_s as i64).saturating_mul(1000)
    }

    fn gateway_timeout_ms(&self) -> i64 {
        (self.settings.gateway_timeout_s as i64).saturating_mul(1000)
    }
}

fn device_key(key: Option<&[u8]>) -> Result<&str, String> {
    let k = key.ok_or("no key (the device id)")?;
    let id = std::str::from_utf8(k).map_err(|_| "a key that is not UTF-8".to_string())?;
    if !vocab::wire::is_valid_device_id(id) {
        return Err(format!("{id:?} is not a device id"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests;
