//! What the agent knows about each device: when it was last seen, its boot and sequence,
//! anomalies, and the counters from its last status.

use std::collections::BTreeMap;

use firmware::wire::{Counters, DeviceStatus};
use serde::Serialize;

/// One device as seen by the gateway.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeviceInfo {
    /// Last time anything arrived from it, ms since the Unix epoch.
    pub last_seen_ms: i64,
    /// Current boot id.
    pub boot_id: Option<u32>,
    /// Highest sequence number durably received in the current boot.
    pub last_seq: Option<u64>,
    /// Readings stored (all boots, since the agent started).
    pub readings: u64,
    /// Duplicate readings dropped.
    pub duplicates: u64,
    /// Readings the device dropped for overflow (sequence gaps it reported via `low_seq`).
    pub gaps: u64,
    /// Batches that arrived out of order (broker-side loss; re-sent by the device).
    pub out_of_order: u64,
    /// Online according to its last status (birth = true, last will = false).
    pub online: Option<bool>,
    /// Firmware version from its last status.
    pub firmware_version: Option<String>,
    /// Counters from its last status.
    pub counters: Option<Counters>,
}

/// All devices, by id.
#[derive(Debug, Default)]
pub struct Registry {
    devices: BTreeMap<String, DeviceInfo>,
}

impl Registry {
    /// The entry for `id`, created on first sight.
    pub fn entry(&mut self, id: &str) -> &mut DeviceInfo {
        self.devices.entry(id.to_owned()).or_default()
    }

    /// Applies a status message.
    pub fn status(&mut self, s: &DeviceStatus, now_ms: i64) {
        let d = self.entry(&s.device_id);
        d.last_seen_ms = now_ms;
        d.online = Some(s.online);
        d.firmware_version = Some(s.firmware_version.to_string());
        d.counters = Some(s.counters);
        if d.boot_id != Some(s.boot_id) && s.online {
            d.boot_id = Some(s.boot_id);
            d.last_seq = None;
        }
    }

    /// Devices whose last status said online.
    pub fn online(&self) -> usize {
        self.devices.values().filter(|d| d.online == Some(true)).count()
    }

    /// All devices.
    pub fn all(&self) -> &BTreeMap<String, DeviceInfo> {
        &self.devices
    }
}
